//! The email channel against a real SMTP server on loopback (Debian's python3-aiosmtpd,
//! started by tests/email/server.py): AUTH checked, STARTTLS offered or not (a private CA
//! trusted with --smtp-ca-file), implicit TLS, a wrong password refused, the password in no
//! output and no file.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::*;

const USER: &str = "alice";
const PASSWORD: &str = "s3cret-smtp-Pa55";
/// Debian's Python: the one python3-aiosmtpd installs for (another python3 may come first
/// on PATH).
const PYTHON: &str = "/usr/bin/python3";

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Plain,
    StartTls,
    Implicit,
}

/// The SMTP server, killed by its pid when dropped.
struct Smtp {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Smtp {
    fn start(tls: Mode) -> Smtp {
        let ok = Command::new(PYTHON)
            .args(["-c", "import aiosmtpd"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "{PYTHON} cannot import aiosmtpd: apt-get install python3-aiosmtpd (scripts/test does)"
        );
        let dir = tempdir();
        let log = dir.path().join("log");
        let mut c = Command::new(PYTHON);
        // Port 0: it listens where the kernel says and writes the port into log.ready.
        c.arg(repo_root().join("tests/email/server.py"))
            .arg("0")
            .arg(dir.path().join("Maildir"))
            .arg(&log)
            .args([USER, PASSWORD]);
        if tls != Mode::Plain {
            let (cert, key) = certs(dir.path());
            c.arg(cert).arg(key);
            if tls == Mode::Implicit {
                c.arg("implicit");
            }
        }
        let child = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr")).expect("stderr file"))
            .spawn()
            .expect("start the SMTP server");
        let mut smtp = Smtp {
            child,
            port: 0,
            dir,
        };
        let ready = smtp.dir.path().join("log.ready");
        let mut port = None;
        let mut exited = None;
        let started = wait_until(Duration::from_secs(20), || {
            exited = smtp.child.try_wait().ok().flatten();
            port = std::fs::read_to_string(&ready)
                .ok()
                .and_then(|s| s.trim().parse::<u16>().ok());
            port.is_some() || exited.is_some()
        });
        assert!(
            started && port.is_some(),
            "the SMTP server did not start (exited: {exited:?}): {}",
            smtp.file("stderr")
        );
        smtp.port = port.unwrap_or_default();
        smtp
    }

    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// The server's log: one JSON line per AUTH attempt and per message received.
    fn log(&self) -> Vec<serde_json::Value> {
        self.file("log")
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn mails(&self) -> Vec<serde_json::Value> {
        self.log()
            .into_iter()
            .filter(|l| l.get("subject").is_some())
            .collect()
    }

    fn auths(&self) -> Vec<serde_json::Value> {
        self.log()
            .into_iter()
            .filter(|l| l.get("auth").is_some())
            .collect()
    }

    /// The raw messages the Maildir holds.
    fn maildir(&self) -> Vec<String> {
        let new = self.dir.path().join("Maildir/new");
        std::fs::read_dir(new)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn url(&self) -> String {
        format!("smtp://{USER}@127.0.0.1:{}", self.port)
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private CA and a server certificate for 127.0.0.1 signed by it (openssl): the CA's
/// PEM is `ca.pem` in `dir`.
fn certs(dir: &Path) -> (PathBuf, PathBuf) {
    let ossl = |args: &[&str]| {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (apt-get install openssl)");
        assert!(o.status.success(), "openssl {args:?}: {}", stderr(&o));
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=costguard test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    ossl(&ca);
    let mut req = vec!["req", "-new"];
    req.extend(ec);
    req.extend([
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    ossl(&req);
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write ext");
    ossl(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
    (dir.join("srv.pem"), dir.join("srv.key"))
}

/// costguard with its state in `state`, the SMTP password in its environment.
fn mailer(state: &Path, password: &str) -> Command {
    let mut c = guard(state);
    c.env("COSTGUARD_SMTP_PASSWORD", password);
    c
}

fn text(o: &Output) -> String {
    format!("{}{}", out_text(o), stderr(o))
}

/// Every file under `dir`, as text.
fn all_files(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.filter_map(Result::ok) {
        let p = e.path();
        if p.is_dir() {
            out.extend(all_files(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p, String::from_utf8_lossy(&b).into_owned()));
        }
    }
    out
}

/// The password is in no output and in no file of the state directory (ledger, events,
/// report, outbox).
fn assert_never_shown(password: &str, out: &str, state: &Path) {
    assert!(!out.contains(password), "password in the output: {out}");
    let files = all_files(state);
    for (p, body) in files {
        assert!(!body.contains(password), "password in {}", p.display());
    }
}

/// The run id from `costguard: run ID started`.
fn run_id(out: &str) -> String {
    out.split("costguard: run ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no run id in {out}"))
        .to_string()
}

fn kill_at_one_second(smtp: &Smtp, state: &Path, password: &str) -> Output {
    let mut c = mailer(state, password);
    c.args([
        "--max-wall",
        "1s",
        "--email-to",
        "ops@example.com, oncall@example.com",
    ])
    .args(["--email-from", "costguard-test@example.com"])
    .args(["--smtp-url", &smtp.url(), "--", "sleep", "30"]);
    run(c)
}

#[test]
#[ignore = "Debian's python3 with aiosmtpd (the SMTP server): scripts/test runs it"]
fn a_kill_arrives_as_a_mail_authenticated_without_tls() {
    let smtp = Smtp::start(Mode::Plain);
    let state = tempdir();
    let o = kill_at_one_second(&smtp, state.path(), PASSWORD);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(124), "{out}");
    let id = run_id(&out);
    assert!(ledger(state.path(), &id).is_object(), "no ledger for {id}");
    assert!(
        wait_until(Duration::from_secs(20), || smtp.mails().len() == 1),
        "no mail: {:?}\n{out}",
        smtp.log()
    );
    let m = &smtp.mails()[0];
    let subject = m["subject"].as_str().expect("subject");
    assert_eq!(subject, format!("costguard: {id} killed (wall)"), "{m}");
    assert_eq!(m["from"], "costguard-test@example.com");
    assert_eq!(m["to"], "ops@example.com, oncall@example.com");
    assert_eq!(
        m["rcpt_tos"],
        serde_json::json!(["ops@example.com", "oncall@example.com"])
    );
    assert_eq!(m["tls"], false, "{m}");
    assert_eq!(m["authenticated"], true, "{m}");
    assert_eq!(m["message_id"], format!("<{id}-0002.email@example.com>"));
    // SMTP carries CRLF line ends.
    let body = m["body"].as_str().expect("body").replace("\r\n", "\n");
    // The evidence first: the killed event's message as events.jsonl has it.
    let run_dir = state.path().join("runs").join(&id);
    let events = std::fs::read_to_string(run_dir.join("events.jsonl")).expect("events.jsonl");
    let killed: serde_json::Value = events
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["kind"] == "killed")
        .expect("a killed event");
    let evidence = killed["message"].as_str().expect("message");
    assert!(evidence.contains("of --max-wall 1.000s"), "{evidence}");
    assert!(body.starts_with(&format!("{evidence}\n\n")), "{body}");
    let report = run_dir.join("report.md");
    assert!(
        body.contains(&format!("Report:  {}", report.display())),
        "{body}"
    );
    assert!(body.contains(&format!("Run:     {id}")), "{body}");
    assert_eq!(smtp.maildir().len(), 1);
    let auths = smtp.auths();
    assert_eq!(auths.len(), 1, "{auths:?}");
    assert_eq!(auths[0]["user"], USER);
    assert_eq!(auths[0]["ok"], true);
    // Delivered: nothing left in the outbox, nothing refused.
    let left: Vec<_> = all_files(&state.path().join("outbox"));
    assert!(left.is_empty(), "{left:?}");
    assert_never_shown(PASSWORD, &out, state.path());
}

#[test]
#[ignore = "Debian's python3 with aiosmtpd (the SMTP server): scripts/test runs it"]
fn a_wrong_password_is_refused_reported_and_kept() {
    let smtp = Smtp::start(Mode::Plain);
    let state = tempdir();
    let wrong = "not-the-Pa55word";
    let o = kill_at_one_second(&smtp, state.path(), wrong);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(124), "{out}");
    let id = run_id(&out);
    assert!(ledger(state.path(), &id).is_object(), "no ledger for {id}");
    assert!(
        out.contains(&format!("costguard: email refused {id}-0002.email (SMTP 127.0.0.1:{}: permanent error (535): 5.7.8 Authentication credentials invalid); not retried, kept in", smtp.port)),
        "{out}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || !smtp.auths().is_empty()),
        "{:?}",
        smtp.log()
    );
    assert!(smtp.auths().iter().all(|a| a["ok"] == false));
    // Refused for good: one attempt, no mail, the delivery kept in outbox/failed.
    assert_eq!(smtp.auths().len(), 1, "{:?}", smtp.log());
    assert!(smtp.mails().is_empty() && smtp.maildir().is_empty());
    let failed = state
        .path()
        .join("outbox/failed")
        .join(format!("{id}-0002.email.json"));
    let kept: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&failed).expect("kept in outbox/failed"))
            .expect("json");
    assert_eq!(kept["channel"], "email");
    assert!(
        kept["refused"].as_str().unwrap_or("").contains("535"),
        "{kept}"
    );
    assert_never_shown(wrong, &out, state.path());
}

#[test]
#[ignore = "Debian's python3 with aiosmtpd, and openssl (the SMTP server, its CA): scripts/test runs it"]
fn starttls_offered_is_used_with_a_private_ca_and_fails_without_it() {
    let smtp = Smtp::start(Mode::StartTls);
    let state = tempdir();
    let test = |ca: Option<&Path>| {
        let mut c = mailer(state.path(), PASSWORD);
        c.args(["notify", "test", "--email-to", "ops@example.com"])
            .args(["--smtp-url", &smtp.url()]);
        if let Some(ca) = ca {
            c.env("COSTGUARD_SMTP_CA_FILE", ca);
        }
        run(c)
    };
    // The public roots do not know this CA: the upgrade fails, nothing is sent in clear.
    let o = test(None);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("email: FAILED: SMTP 127.0.0.1:")
            && out.contains("invalid peer certificate: UnknownIssuer"),
        "{out}"
    );
    assert!(
        smtp.auths().is_empty() && smtp.mails().is_empty(),
        "{:?}",
        smtp.log()
    );
    let o = test(Some(&smtp.dir.path().join("ca.pem")));
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert_eq!(out.trim(), "email: ok");
    assert!(wait_until(Duration::from_secs(20), || smtp.mails().len() == 1));
    let m = &smtp.mails()[0];
    assert_eq!(m["tls"], true, "{m}");
    assert_eq!(m["authenticated"], true, "{m}");
    let host = hostname();
    assert_eq!(
        m["subject"],
        format!("costguard: TEST notification from {host}")
    );
    assert_eq!(m["from"], format!("costguard@{host}"));
    assert!(m["body"]
        .as_str()
        .unwrap_or("")
        .contains("the notification path works"));
    assert_eq!(smtp.auths()[0]["tls"], true, "AUTH went before STARTTLS");
    assert_never_shown(PASSWORD, &out, state.path());
}

#[test]
#[ignore = "Debian's python3 with aiosmtpd, and openssl (the SMTP server, its CA): scripts/test runs it"]
fn smtps_speaks_tls_from_the_first_byte() {
    let smtp = Smtp::start(Mode::Implicit);
    let state = tempdir();
    let url = format!("smtps://{USER}@127.0.0.1:{}", smtp.port);
    let mut c = mailer(state.path(), PASSWORD);
    c.args([
        "notify",
        "test",
        "--email-to",
        "ops@example.com",
        "--smtp-url",
        &url,
    ])
    .env("COSTGUARD_SMTP_CA_FILE", smtp.dir.path().join("ca.pem"));
    let o = run(c);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(wait_until(Duration::from_secs(20), || smtp.mails().len() == 1));
    assert_eq!(smtp.mails()[0]["tls"], true);
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Bad settings are refused at start (exit 125), naming the flag or key and the value.
#[test]
fn malformed_addresses_and_urls_are_refused_at_start() {
    let state = tempdir();
    let refuse = |args: &[&str], env: &[(&str, &str)], want: &[&str]| {
        let mut c = guard(state.path());
        c.args(["notify", "test"]).args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let o = run(c);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(125), "{args:?}: {err}");
        for w in want {
            assert!(err.contains(w), "{args:?}: {w:?} not in {err}");
        }
        assert!(!err.contains("hunter22"), "{err}");
    };
    let url = ["--smtp-url", "smtp://127.0.0.1:2525"];
    refuse(
        &[&["--email-to", "ops@example.com,not-an-address"][..], &url].concat(),
        &[],
        &[
            "invalid --email-to",
            "\"not-an-address\" is not an email address",
        ],
    );
    refuse(
        &[&url[..], &["--email-to", "a@b.c", "--email-from", "me"]].concat(),
        &[],
        &["invalid --email-from \"me\""],
    );
    refuse(
        &[],
        &[
            ("COSTGUARD_EMAIL_TO", "a@b.c"),
            ("COSTGUARD_SMTP_URL", "https://mail.example"),
        ],
        &[
            "invalid --smtp-url (COSTGUARD_SMTP_URL) \"https://mail.example\"",
            "not https://",
        ],
    );
    refuse(
        &[
            "--email-to",
            "a@b.c",
            "--smtp-url",
            "smtp://u:hunter22@mail.example",
        ],
        &[],
        &["--smtp-url", "a password does not belong in the URL"],
    );
    refuse(
        &["--email-to", "a@b.c", "--smtp-url", "smtp://u@mail.example"],
        &[],
        &["--smtp-url names a user but no password is given"],
    );
    refuse(
        &["--email-to", "a@b.c"],
        &[],
        &["--email-to needs an SMTP server"],
    );
    let cfg = state.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[notify]\nemail-to = [\"a@b.c\"]\nsmtp-url = \"smtp://mail.example:99999\"\n",
    )
    .expect("write config");
    let at = format!(
        "invalid config file {} line 3, key [notify] smtp-url",
        cfg.display()
    );
    refuse(&["--config", cfg.to_str().expect("utf-8")], &[], &[&at]);
    refuse(
        &["--email-from", "me@example.com"],
        &[],
        &["--email-from is for the email channel: give --email-to and --smtp-url too"],
    );
    // The project's bounded reader: a device or a FIFO is refused at once, never read.
    let fifo = state.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let fifo = path_str(&fifo);
    for (flag, path) in [
        ("--smtp-password-file", "/dev/zero"),
        ("--smtp-password-file", fifo.as_str()),
        ("--smtp-ca-file", fifo.as_str()),
    ] {
        refuse(
            &["--email-to", "a@b.c", "--smtp-url", "smtp://mx", flag, path],
            &[],
            &[&format!("{flag} {path}"), "not a regular file"],
        );
    }
    let empty = state.path().join("empty");
    std::fs::write(&empty, "\n").expect("write");
    refuse(
        &["--email-to", "a@b.c", "--smtp-url", "smtp://u@mail.example"],
        &[(
            "COSTGUARD_SMTP_PASSWORD_FILE",
            empty.to_str().expect("utf-8"),
        )],
        &["--smtp-password-file", "is empty"],
    );
}
