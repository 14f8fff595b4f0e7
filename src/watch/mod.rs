//! `costguard watch TARGET [--desktop]`: a run's events on the operator's own machine. TARGET
//! is a costguard endpoint (through `ssh -L` or `kubectl port-forward`) or a run id in the
//! state directory. It follows `/events` (reconnecting with backoff and `Last-Event-ID`, so
//! nothing is printed twice), prints one line per event, keeps a live line (spend, elapsed,
//! what the run waits on: `/status` every few seconds) on a terminal, and exits with the
//! run's exit status when it ends.

pub(crate) mod desktop;
pub(crate) mod sse;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::events::Event;
use crate::exit::OWN_FAILURE;
use crate::ledger::{self, Ledger};
use crate::units::{format_money, format_secs};

/// A connection that says nothing for this long is dead (the server says something every
/// 15 s): dropped and made again.
const SILENCE: Duration = Duration::from_secs(45);
/// How often the live line asks `/status`.
const STATUS_EVERY: Duration = Duration::from_secs(3);

/// Where the events come from.
#[derive(Debug, PartialEq)]
enum Source {
    /// An endpoint's base URL (no trailing slash), and the run's directory when known.
    Live {
        base: String,
        run_dir: Option<PathBuf>,
    },
    /// A run that has ended: its ledger and directory.
    Ended {
        run_dir: PathBuf,
        ledger: Box<Ledger>,
    },
}

/// An address to connect to for an address served: a wildcard one is this machine's loopback.
fn base_of(listen: &str) -> Option<String> {
    let s = listen.trim().trim_end_matches('/');
    let s = s.strip_prefix("http://").unwrap_or(s);
    let addr: std::net::SocketAddr = s.parse().ok()?;
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v) if v.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v) if v.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    Some(format!(
        "http://{}",
        std::net::SocketAddr::new(ip, addr.port())
    ))
}

/// The page address a live run serves: the ledger's `page_url`, else `config.json`'s `listen`.
fn served_at(run_dir: &Path, l: &Ledger) -> Option<String> {
    if let Some(b) = l.page_url.as_deref().and_then(base_of) {
        return Some(b);
    }
    let bytes = crate::fsutil::read_bounded(&run_dir.join("config.json"), 1 << 20).ok()?;
    let doc: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    base_of(doc["listen"].as_str()?)
}

fn resolve(target: &str, state: &Path) -> Result<Source, String> {
    if target.starts_with("http://") || target.starts_with("https://") {
        let base = target.trim_end_matches('/');
        let base = base.strip_suffix("/events").unwrap_or(base);
        return Ok(Source::Live {
            base: base.to_string(),
            run_dir: None,
        });
    }
    let (run_dir, mut l) = crate::ledger::find(state, Some(target))?;
    // Reserved by `run --detach`: its costguard records itself within moments.
    let since = std::time::Instant::now();
    while l.state == ledger::RecordState::Starting && since.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
        l = crate::ledger::find(state, Some(target))?.1;
    }
    if !l.live() {
        return Ok(Source::Ended {
            run_dir,
            ledger: Box::new(l),
        });
    }
    match served_at(&run_dir, &l) {
        Some(base) => Ok(Source::Live {
            base,
            run_dir: Some(run_dir),
        }),
        None => Err(format!(
            "run {target} serves no endpoint (started with --listen none?): costguard logs -f {target} follows its output, costguard wait {target} its end"
        )),
    }
}

/// An RFC 3339 UTC time as this machine's local time of day (`HH:MM:SS`).
fn clock(at: &str) -> String {
    let local = (|| {
        let t = humantime::parse_rfc3339_weak(at).ok()?;
        let secs = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
        let t = libc::time_t::try_from(secs).ok()?;
        // SAFETY: localtime_r fills the tm we own from the time_t we own.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
        ok.then(|| format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec))
    })();
    local.unwrap_or_else(|| at.to_string())
}

/// One event as a line: time, kind, reason, message.
pub fn event_line(ev: &Event) -> String {
    format!(
        "{}  {:<15} {:<9} {}",
        clock(&ev.at),
        ev.kind.as_str(),
        ev.reason.as_deref().unwrap_or("-"),
        ev.message
    )
}

/// The run's end (`event: end`) as a line, and its exit status.
fn end_line(doc: &serde_json::Value) -> (String, u8) {
    let code = doc["exit_code"]
        .as_u64()
        .and_then(|c| u8::try_from(c).ok())
        .unwrap_or(OWN_FAILURE);
    let now = crate::events::rfc3339(std::time::SystemTime::now());
    let line = format!(
        "{}  {:<15} {:<9} run {} {}: {} (exit {code})",
        clock(&now),
        "end",
        "-",
        doc["run_id"].as_str().unwrap_or("?"),
        doc["outcome"].as_str().unwrap_or("ended"),
        doc["detail"].as_str().unwrap_or(""),
    );
    (line, code)
}

/// The live line from a `/status` document.
fn live_text(s: &serde_json::Value) -> String {
    let mut parts = vec![format!(
        "run {} {}",
        s["run_id"].as_str().unwrap_or("?"),
        s["state"].as_str().unwrap_or("?")
    )];
    if let Some(spend) = s["spend_dollars"].as_f64() {
        parts.push(match s["budget_dollars"].as_f64() {
            Some(b) => format!("{} of {}", format_money(spend), format_money(b)),
            None => format_money(spend),
        });
    }
    if let Some(e) = s["run_elapsed_seconds"].as_f64() {
        parts.push(format!("{} elapsed", format_secs(e.floor())));
    }
    if let Some(w) = s["waiting_on"].as_str().filter(|w| !w.is_empty()) {
        parts.push(format!("waiting on {w}"));
    }
    format!("costguard: {}", parts.join(" · "))
}

/// The delay before the next connection attempt: 250 ms doubling to 5 s, with jitter.
struct Backoff(u32);

impl Backoff {
    fn next(&mut self) -> Duration {
        let ms = (250u64 << self.0.min(5)).min(5000);
        self.0 += 1;
        Duration::from_millis(ms + fastrand::u64(0..=ms / 4))
    }
}

/// Whether `base` names this machine (no proxy is asked about it).
fn loopback(base: &str) -> bool {
    let host = base.split("://").nth(1).unwrap_or(base);
    let host = host.split('/').next().unwrap_or(host);
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `costguard watch`: the exit status is the run's (125 when the target cannot be found).
pub fn run(target: &str, desktop: bool, state: &Path) -> ExitCode {
    let source = match resolve(target, state) {
        Ok(s) => s,
        Err(e) => {
            crate::console::error(e);
            return ExitCode::from(OWN_FAILURE);
        }
    };
    let (base, run_dir) = match source {
        Source::Ended { run_dir, ledger } => {
            return ExitCode::from(finish(&run_dir, &ledger, None))
        }
        Source::Live { base, run_dir } => (base, run_dir),
    };
    let mut client = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
    if loopback(&base) {
        client = client.no_proxy();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let (client, rt) = match (client.build(), rt) {
        (Ok(c), Ok(rt)) => (c, rt),
        (Err(e), _) => return fail(format!("cannot make an HTTP client: {e}")),
        (_, Err(e)) => return fail(format!("cannot start the runtime: {e}")),
    };
    let w = Watcher {
        client,
        base,
        run_dir,
        last: None,
        desktop: desktop.then(desktop::Desktop::new),
    };
    ExitCode::from(rt.block_on(w.run()))
}

fn fail(msg: String) -> ExitCode {
    crate::console::error(msg);
    ExitCode::from(OWN_FAILURE)
}

/// Draws the live line from `/status` until aborted (which gives the row back).
async fn live_line(client: reqwest::Client, base: String, mut line: crate::run::live::LiveLine) {
    loop {
        let got = client
            .get(format!("{base}/status"))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        let doc = match got {
            Ok(r) => r.json::<serde_json::Value>().await.ok(),
            Err(_) => None,
        };
        match doc {
            Some(d) => line.draw(&live_text(&d)),
            None => line.draw(&format!("costguard: {base}: not answering; reconnecting")),
        }
        tokio::time::sleep(STATUS_EVERY).await;
    }
}

/// An ended run from its record: the events after `last` (all without it), then its end.
fn finish(run_dir: &Path, l: &Ledger, last: Option<&str>) -> u8 {
    let events = ledger::read_events(run_dir);
    let from = last
        .and_then(|id| events.iter().position(|e| e.id == id))
        .map_or(0, |i| i + 1);
    for e in &events[from.min(events.len())..] {
        crate::console::outln(event_line(e));
    }
    let (code, line) = crate::manage::exit_of(l);
    let now = crate::events::rfc3339(std::time::SystemTime::now());
    crate::console::outln(format!(
        "{}  {:<15} {:<9} {line} (exit {code})",
        clock(&now),
        "end",
        "-"
    ));
    code
}

struct Watcher {
    client: reqwest::Client,
    base: String,
    /// A run id's directory: when the endpoint is gone, the record says whether it ended.
    run_dir: Option<PathBuf>,
    /// The last event id printed (sent as `Last-Event-ID` on a reconnection).
    last: Option<String>,
    desktop: Option<desktop::Desktop>,
}

impl Watcher {
    /// Follows the run to its end, with the live line on a terminal.
    async fn run(mut self) -> u8 {
        let live = crate::run::live::LiveLine::new(false)
            .map(|l| tokio::spawn(live_line(self.client.clone(), self.base.clone(), l)));
        let code = self.follow().await;
        if let Some(h) = live {
            h.abort();
            let _ = h.await;
        }
        code
    }

    /// Follows the stream through every reconnection until the run's end; its exit status.
    async fn follow(&mut self) -> u8 {
        let mut backoff = Backoff(0);
        let mut lost: Option<String> = None;
        loop {
            match self.stream(&mut lost, &mut backoff).await {
                Ok(code) => return code,
                Err(why) => {
                    if let Some(code) = self.ended_on_record() {
                        return code;
                    }
                    if lost.is_none() {
                        crate::console::notice(format!(
                            "{}/events: {why}; reconnecting",
                            self.base
                        ));
                        lost = Some(why);
                    }
                    tokio::time::sleep(backoff.next()).await;
                }
            }
        }
    }

    /// A run id whose costguard is gone: its ending from the record.
    fn ended_on_record(&self) -> Option<u8> {
        let dir = self.run_dir.as_ref()?;
        let l = Ledger::load(dir).ok()??;
        (!l.live() && l.state != ledger::RecordState::Starting)
            .then(|| finish(dir, &l, self.last.as_deref()))
    }

    /// One connection: Ok(exit status) at the run's end, Err(why) when it drops first.
    async fn stream(
        &mut self,
        lost: &mut Option<String>,
        backoff: &mut Backoff,
    ) -> Result<u8, String> {
        let mut req = self
            .client
            .get(format!("{}/events", self.base))
            .header("accept", "text/event-stream");
        if let Some(id) = &self.last {
            req = req.header("last-event-id", id.as_str());
        }
        let mut resp = req.send().await.map_err(|e| reqwest_why(&e))?;
        if !resp.status().is_success() {
            return Err(format!(
                "HTTP {} (is this a costguard endpoint?)",
                resp.status()
            ));
        }
        if lost.take().is_some() {
            crate::console::notice(format!("{}/events: connected", self.base));
        }
        *backoff = Backoff(0);
        let mut parser = sse::Parser::default();
        loop {
            let chunk = match tokio::time::timeout(SILENCE, resp.chunk()).await {
                Err(_) => return Err(format!("nothing for {}s", SILENCE.as_secs())),
                Ok(Err(e)) => return Err(reqwest_why(&e)),
                Ok(Ok(None)) => return Err("the connection closed".into()),
                Ok(Ok(Some(c))) => c,
            };
            for m in parser.feed(&chunk) {
                if let Some(code) = self.message(m).await {
                    return Ok(code);
                }
            }
        }
    }

    /// One message: printed (and shown on the desktop); Some(exit status) at the end.
    async fn message(&mut self, m: sse::Message) -> Option<u8> {
        if m.event == "end" {
            let doc: serde_json::Value = serde_json::from_str(&m.data).unwrap_or_default();
            let (line, code) = end_line(&doc);
            crate::console::outln(line);
            return Some(code);
        }
        if let Some(id) = m.id {
            self.last = Some(id);
        }
        match serde_json::from_str::<Event>(&m.data) {
            Ok(ev) => {
                crate::console::outln(event_line(&ev));
                if let Some(d) = &mut self.desktop {
                    d.show(&ev).await;
                }
            }
            Err(_) => {
                crate::console::outln(format!("{}  {}", m.event, m.data));
            }
        }
        None
    }
}

/// A request error in a few words: its deepest cause (reqwest's chain repeats the URL).
fn reqwest_why(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut deepest: &dyn Error = e;
    while let Some(s) = deepest.source() {
        deepest = s;
    }
    match (e.is_connect(), e.is_timeout()) {
        (true, _) => format!("cannot connect ({deepest})"),
        (_, true) => "timed out".into(),
        _ => deepest.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_served_are_addresses_to_connect_to() {
        assert_eq!(
            base_of("http://127.0.0.1:9947/").as_deref(),
            Some("http://127.0.0.1:9947")
        );
        assert_eq!(
            base_of("0.0.0.0:9950").as_deref(),
            Some("http://127.0.0.1:9950")
        );
        assert_eq!(base_of("[::]:9947").as_deref(), Some("http://[::1]:9947"));
        assert_eq!(base_of("none"), None);
    }

    #[test]
    fn lines_for_a_person() {
        let doc = serde_json::json!({"run_id": "t-1", "exit_code": 124, "outcome": "killed",
            "detail": "wall-clock limit reached"});
        let (line, code) = end_line(&doc);
        assert_eq!(code, 124);
        assert!(
            line.ends_with(
                "end             -         run t-1 killed: wall-clock limit reached (exit 124)"
            ),
            "{line}"
        );
        let s = serde_json::json!({"run_id": "t-1", "state": "running", "spend_dollars": 1.5,
            "budget_dollars": 10.0, "run_elapsed_seconds": 312.4, "waiting_on": "wall in 3m"});
        let t = live_text(&s);
        assert!(
            t.starts_with("costguard: run t-1 running · $1.50 of $10.00 · "),
            "{t}"
        );
        assert!(t.ends_with(" elapsed · waiting on wall in 3m"), "{t}");
        assert_eq!(clock("garbage"), "garbage");
    }

    #[test]
    fn loopback_hosts() {
        assert!(loopback("http://127.0.0.1:9947"));
        assert!(loopback("http://[::1]:9947"));
        assert!(loopback("http://localhost:9947"));
        assert!(!loopback("http://10.0.0.5:9947"));
    }

    #[test]
    fn backoff_grows_to_five_seconds() {
        let mut b = Backoff(0);
        let first = b.next();
        assert!(first >= Duration::from_millis(250) && first <= Duration::from_millis(313));
        for _ in 0..10 {
            assert!(b.next() <= Duration::from_millis(6250));
        }
    }
}
