//! The email channel: one plain-text mail per delivery, sent through an SMTP server with
//! lettre (maintained, async on tokio, STARTTLS and implicit TLS, SMTP AUTH; rustls with the
//! webpki roots, as reqwest uses, plus a private CA when one is given). `smtp://` upgrades
//! with STARTTLS when the server offers it; `smtps://` is TLS from the first byte. A 4xx reply
//! is retried, a 5xx (a wrong password, an unknown recipient) is refused for good.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::deliver::Outcome;
use super::outbox::Item;
use super::payload::{kind_word, severity};
use crate::events::{Event, EventKind};
use crate::redact::{self, Secret};
use crate::units::{format_duration, format_money};

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// `smtp://`: plain, upgraded with STARTTLS when the server offers it.
    StartTls,
    /// `smtps://`: TLS from the first byte.
    Implicit,
}

/// The server, the credentials and the addresses of the email channel.
#[derive(Debug, Clone)]
pub struct EmailSettings {
    pub to: Vec<Mailbox>,
    pub from: Mailbox,
    pub security: Security,
    pub host: String,
    pub port: u16,
    /// The user named in the URL (`smtp://user@host`), percent-decoded.
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// Roots to trust besides the public ones (PEM), for a server under a private CA.
    pub ca_pem: Option<Vec<u8>>,
}

/// The server part of `--smtp-url`: `smtp://[user@]host[:port]` (port 25 by default) or
/// `smtps://[user@]host[:port]` (465). A password in the URL is refused: it would show in
/// `ps`; it comes from COSTGUARD_SMTP_PASSWORD or a file. Errors never show the user.
pub fn parse_url(value: &str) -> Result<(Security, String, u16, Option<String>), String> {
    let u = reqwest::Url::parse(value.trim()).map_err(|e| e.to_string())?;
    let (security, default_port) = match u.scheme() {
        "smtp" => (Security::StartTls, 25),
        "smtps" => (Security::Implicit, 465),
        other => {
            return Err(format!(
                "expected smtp://host[:port] or smtps://host[:port], not {other}://"
            ))
        }
    };
    let host = u.host_str().unwrap_or("").trim_matches(['[', ']']);
    if host.is_empty() {
        return Err("the URL names no host".into());
    }
    if u.password().is_some() {
        return Err(
            "a password does not belong in the URL (it would show in `ps`): give it in \
             COSTGUARD_SMTP_PASSWORD or --smtp-password-file"
                .into(),
        );
    }
    if !matches!(u.path(), "" | "/") || u.query().is_some() || u.fragment().is_some() {
        return Err("expected no path or query after the host and port".into());
    }
    let port = u.port().unwrap_or(default_port);
    if port == 0 {
        return Err("port 0 is not a port to send to".into());
    }
    let user = match u.username() {
        "" => None,
        raw => Some(
            percent_encoding::percent_decode_str(raw)
                .decode_utf8()
                .map_err(|_| "the user is not UTF-8 once percent-decoded".to_string())?
                .into_owned(),
        ),
    };
    Ok((security, host.to_string(), port, user))
}

/// `ADDR[,ADDR]`: each `a@b` or `Name <a@b>`; at least one.
pub fn parse_addresses(list: &str) -> Result<Vec<Mailbox>, String> {
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let m = part
            .parse::<Mailbox>()
            .map_err(|e| format!("{part:?} is not an email address ({e})"))?;
        out.push(m);
    }
    if out.is_empty() {
        return Err("no address given".into());
    }
    Ok(out)
}

/// `costguard@<hostname>`, or `costguard@localhost` when the host's name makes no address.
pub fn default_from(host: &str) -> Mailbox {
    format!("costguard@{host}")
        .parse()
        .unwrap_or_else(|_| "costguard@localhost".parse().expect("valid address"))
}

/// Checks a PEM file of roots to trust, as the transport will read it.
pub fn check_ca(pem: &[u8]) -> Result<(), String> {
    Certificate::from_pem(pem)
        .map(|_| ())
        .map_err(|e| format!("no PEM certificate in it ({e})"))
}

fn money(e: &Event) -> Option<String> {
    e.rate_dollars_per_hour?;
    Some(match e.budget_dollars {
        Some(b) => format!("{} of {}", format_money(e.spend_dollars), format_money(b)),
        None => format_money(e.spend_dollars),
    })
}

/// One line to triage from a phone: what, why, spend against budget.
/// `costguard: train-0612 killed (wall) — $4.10 of $40.00`.
pub fn subject(e: &Event) -> String {
    if e.test {
        return format!("costguard: TEST notification from {}", e.host);
    }
    let reason = match (e.kind, e.reason.as_deref(), e.budget_dollars) {
        (EventKind::Warning, Some("budget"), Some(b)) if b > 0.0 => {
            format!(" (budget {:.0}%)", (e.spend_dollars / b * 100.0).floor())
        }
        (_, Some(r), _) => format!(" ({r})"),
        (_, None, _) => String::new(),
    };
    let money = money(e).map(|m| format!(" — {m}")).unwrap_or_default();
    format!(
        "costguard: {} {}{reason}{money}",
        e.run_id,
        kind_word(e.kind)
    )
}

/// The mail's text: the evidence first, then the facts, one per line.
pub fn body(e: &Event, delivery_id: &str) -> String {
    let mut lines = vec![e.message.clone(), String::new()];
    let mut fact = |k: &str, v: &str| lines.push(format!("{k:<9}{v}"));
    fact("Run:", &e.run_id);
    let reason = e
        .reason
        .as_deref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    let what = format!("{}{reason}, {}, {}", kind_word(e.kind), severity(e), e.at);
    fact("Event:", &what);
    fact("Host:", &e.host);
    let spend = match (money(e), e.rate_dollars_per_hour) {
        (Some(m), Some(r)) => format!("{m} (at {}/h)", format_money(r)),
        _ => "unknown (no price for this box)".into(),
    };
    fact("Spend:", &spend);
    let ran = format_duration(Duration::from_secs_f64(e.elapsed_seconds.max(0.0)));
    fact("Ran:", &ran);
    for (k, v) in [
        ("Phase:", &e.phase),
        ("Report:", &e.report_path),
        ("Page:", &e.page_url),
        ("Command:", &e.command),
    ] {
        if let Some(v) = v {
            fact(k, v);
        }
    }
    lines.push(String::new());
    lines.push("-- ".into());
    lines.push(format!(
        "costguard {}, delivery {delivery_id}",
        env!("CARGO_PKG_VERSION")
    ));
    lines.push("(a mail with the same delivery id is a repeat)".into());
    redact::text(&(lines.join("\n") + "\n")).into_owned()
}

/// The mail for one delivery. Its Message-ID is the delivery's id: a retry is the same mail.
pub fn message(s: &EmailSettings, item: &Item) -> Result<Message, String> {
    let id = item.delivery_id();
    let domain = s.from.email.domain().to_string();
    let mut b = Message::builder()
        .from(s.from.clone())
        .subject(redact::text(&subject(&item.event)).into_owned())
        .message_id(Some(format!("<{id}@{domain}>")))
        .header(ContentType::TEXT_PLAIN);
    for to in &s.to {
        b = b.to(to.clone());
    }
    b.body(body(&item.event, &id)).map_err(|e| e.to_string())
}

fn transport(
    s: &EmailSettings,
    timeout: Duration,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let mut tls = TlsParameters::builder(s.host.clone());
    if let Some(pem) = &s.ca_pem {
        tls = tls.add_root_certificate(Certificate::from_pem(pem).map_err(|e| e.to_string())?);
    }
    let tls = tls
        .build_rustls()
        .map_err(|e| format!("cannot set up TLS: {e}"))?;
    let tls = match s.security {
        Security::StartTls => Tls::Opportunistic(tls),
        Security::Implicit => Tls::Wrapper(tls),
    };
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(s.host.clone())
        .port(s.port)
        .timeout(Some(timeout))
        .tls(tls);
    if let (Some(u), Some(p)) = (&s.user, &s.password) {
        b = b.credentials(Credentials::new(u.clone(), p.0.clone()));
    }
    Ok(b.build())
}

/// What an SMTP failure means: a 5xx reply (a wrong password, a refused recipient) or a
/// client-side mismatch (credentials and no AUTH offered) is refused for good; a 4xx, a
/// network or TLS failure or a timeout is retried.
pub fn classify(e: &lettre::transport::smtp::Error, server: &str) -> Outcome {
    let why = redact::text(&format!("SMTP {server}: {e}")).into_owned();
    if e.is_permanent() || e.is_client() {
        Outcome::Refused { why }
    } else {
        Outcome::Retry { after: None, why }
    }
}

/// One attempt, bounded by `timeout` as a whole.
pub async fn send(s: &EmailSettings, item: &Item, timeout: Duration) -> Outcome {
    let refused = |why: String| Outcome::Refused { why };
    let msg = match message(s, item) {
        Ok(m) => m,
        Err(e) => return refused(format!("cannot build the mail: {e}")),
    };
    let t = match transport(s, timeout) {
        Ok(t) => t,
        Err(e) => return refused(e),
    };
    let server = format!("{}:{}", s.host, s.port);
    match tokio::time::timeout(timeout, t.send(msg)).await {
        Ok(Ok(_)) => Outcome::Delivered,
        Ok(Err(e)) => classify(&e, &server),
        Err(_) => Outcome::Retry {
            after: None,
            why: format!(
                "SMTP {server}: took longer than {}",
                format_duration(timeout)
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind, reason: Option<&str>) -> Event {
        Event {
            id: "train-0612-0007".into(),
            run_id: "train-0612".into(),
            kind,
            reason: reason.map(str::to_string),
            message: "wall-clock ceiling 1s reached after 1s".into(),
            at: "2026-06-12T10:00:00.000Z".into(),
            elapsed_seconds: 1.2,
            spend_dollars: 4.1,
            rate_dollars_per_hour: Some(12.0),
            budget_dollars: Some(40.0),
            host: "gpu-box-1".into(),
            phase: None,
            report_path: Some("/state/runs/train-0612/report.md".into()),
            command: Some("python train.py".into()),
            page_url: Some("http://127.0.0.1:9400/".into()),
            test: false,
        }
    }

    #[test]
    fn subjects_say_what_why_and_the_money() {
        let k = ev(EventKind::Killed, Some("wall"));
        assert_eq!(
            subject(&k),
            "costguard: train-0612 killed (wall) — $4.10 of $40.00"
        );
        let mut c = ev(EventKind::Completed, None);
        c.budget_dollars = None;
        c.spend_dollars = 1.2;
        assert_eq!(subject(&c), "costguard: train-0612 completed — $1.20");
        let mut w = ev(EventKind::Warning, Some("budget"));
        w.spend_dollars = 32.5;
        assert_eq!(
            subject(&w),
            "costguard: train-0612 warning (budget 81%) — $32.50 of $40.00"
        );
        let mut unpriced = ev(EventKind::Failed, None);
        unpriced.rate_dollars_per_hour = None;
        assert_eq!(subject(&unpriced), "costguard: train-0612 failed");
    }

    #[test]
    fn the_body_holds_the_evidence_and_the_paths() {
        let b = body(
            &ev(EventKind::Killed, Some("wall")),
            "train-0612-0007.email",
        );
        assert!(
            b.starts_with("wall-clock ceiling 1s reached after 1s\n\n"),
            "{b}"
        );
        for want in [
            "Run:     train-0612",
            "Event:   killed (wall), warning,",
            "Host:    gpu-box-1",
            "Spend:   $4.10 of $40.00 (at $12.00/h)",
            "Report:  /state/runs/train-0612/report.md",
            "Page:    http://127.0.0.1:9400/",
            "delivery train-0612-0007.email\n",
        ] {
            assert!(b.contains(want), "{want:?} not in {b}");
        }
    }

    #[test]
    fn urls_and_addresses_are_checked() {
        let (sec, host, port, user) =
            parse_url("smtp://alerts%40example.com@mail.example:587").expect("valid");
        assert_eq!(
            (sec, host.as_str(), port, user.as_deref()),
            (
                Security::StartTls,
                "mail.example",
                587,
                Some("alerts@example.com")
            )
        );
        assert_eq!(parse_url("smtps://mx").expect("valid").2, 465);
        assert_eq!(parse_url("smtp://mx").expect("valid").2, 25);
        let err = parse_url("smtp://u:hunter22@mx").unwrap_err();
        assert!(
            err.contains("password") && !err.contains("hunter22"),
            "{err}"
        );
        assert!(parse_url("http://mx").unwrap_err().contains("not http://"));
        assert!(parse_url("smtp://mx/path").is_err());
        assert!(parse_url("smtp://mx:0").is_err());
        assert_eq!(
            parse_addresses("a@b.c, Ops <ops@b.c>").expect("ok").len(),
            2
        );
        assert!(parse_addresses("a@b.c,not-an-address")
            .unwrap_err()
            .contains("\"not-an-address\""));
        assert!(parse_addresses(" , ").is_err());
        assert_eq!(default_from("gpu-box-1").to_string(), "costguard@gpu-box-1");
        assert_eq!(default_from("").to_string(), "costguard@localhost");
    }
}
