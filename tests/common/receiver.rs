//! A local HTTP receiver standing in for Slack, PagerDuty, webhooks and Alertmanager's own
//! webhook target: it answers each request from a script (a status, a 429, a hang, a redirect),
//! then 200, and records everything, headers included.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug)]
pub enum Reply {
    Status(u16),
    /// 429 with a Retry-After of this many seconds.
    TooMany(u64),
    /// Reads the request and never answers (for this long).
    Hang(Duration),
    /// A redirect: this 3xx status with this `Location`.
    Redirect(u16, String),
}

#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Every header as sent, names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// What the receiver answered (0 for a hang).
    pub answered: u16,
}

impl Request {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_default()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub struct Receiver {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<Request>>>,
}

impl Receiver {
    /// Listens on a fresh loopback port.
    pub fn start(script: Vec<Reply>) -> Receiver {
        Self::on(0, script)
    }

    /// Listens on `port` (0: any).
    pub fn on(port: u16, script: Vec<Reply>) -> Receiver {
        Self::listen(
            TcpListener::bind(("127.0.0.1", port)).expect("bind receiver"),
            script,
        )
    }

    /// Serves on `l` (a port held until now: `super::HeldPort::listen`).
    pub fn listen(l: TcpListener, script: Vec<Reply>) -> Receiver {
        let port = l.local_addr().expect("addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script.into_iter()));
        let rq = requests.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let (rq, script) = (rq.clone(), script.clone());
                std::thread::spawn(move || serve(s, rq, script));
            }
        });
        Receiver { port, requests }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn all(&self) -> Vec<Request> {
        self.requests.lock().expect("lock").clone()
    }

    /// Requests answered 2xx.
    pub fn accepted(&self) -> Vec<Request> {
        self.all()
            .into_iter()
            .filter(|r| (200..300).contains(&r.answered))
            .collect()
    }
}

fn serve(
    s: TcpStream,
    rq: Arc<Mutex<Vec<Request>>>,
    script: Arc<Mutex<std::vec::IntoIter<Reply>>>,
) {
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut w = s;
    // Several requests may come on one keep-alive connection.
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut words = line.split_whitespace();
        let method = words.next().unwrap_or("").to_string();
        let path = words.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let reply = script.lock().expect("lock").next();
        let (code, extra) = match reply {
            Some(Reply::Hang(d)) => {
                rq.lock().expect("lock").push(Request {
                    method,
                    path,
                    headers,
                    body: String::from_utf8_lossy(&body).into_owned(),
                    answered: 0,
                });
                std::thread::sleep(d);
                return;
            }
            Some(Reply::Status(c)) => (c, String::new()),
            Some(Reply::TooMany(secs)) => (429, format!("Retry-After: {secs}\r\n")),
            Some(Reply::Redirect(c, to)) => (c, format!("Location: {to}\r\n")),
            None => (200, String::new()),
        };
        rq.lock().expect("lock").push(Request {
            method,
            path,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            answered: code,
        });
        let _ = write!(
            w,
            "HTTP/1.1 {code} X\r\n{extra}Content-Length: 2\r\nContent-Type: application/json\r\n\r\n{{}}"
        );
        let _ = w.flush();
    }
}
