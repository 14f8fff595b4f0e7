//! One delivery attempt to one channel, bounded by the timeout, and what it means for retries.

use std::process::Stdio;
use std::time::{Duration, SystemTime};

use tokio::io::AsyncWriteExt;

use super::outbox::Item;
use super::{payload, Channel, ChannelKind, NotifySettings};
use crate::redact;

#[derive(Debug, PartialEq)]
pub enum Outcome {
    Delivered,
    /// Network error, timeout, 5xx, 429, a temporary redirect (302, 303, 307), or a failing
    /// command: try again, after `after` when the receiver said (Retry-After).
    Retry {
        after: Option<Duration>,
        why: String,
    },
    /// Refused for good (4xx other than 429, 301, 308 and the other 3xx): logged, counted,
    /// not retried.
    Refused {
        why: String,
    },
}

/// The body sent for `item` on its channel.
pub fn body(ch: &Channel, item: &Item) -> serde_json::Value {
    let e = &item.event;
    match ch.kind {
        ChannelKind::Slack => payload::slack(e),
        // The mail is built by `email::message`; this JSON is what the webhook would get.
        ChannelKind::Webhook | ChannelKind::Command | ChannelKind::Email => payload::webhook(e),
        ChannelKind::Alertmanager => payload::alertmanager(e, SystemTime::now()),
        ChannelKind::Pagerduty => payload::pagerduty(e, &ch.target.0, item.resolve.as_deref()),
    }
}

fn url(set: &NotifySettings, ch: &Channel) -> String {
    match ch.kind {
        ChannelKind::Alertmanager => {
            let base = ch.target.0.trim_end_matches('/');
            if base.ends_with("/api/v2/alerts") {
                base.to_string()
            } else {
                format!("{base}/api/v2/alerts")
            }
        }
        ChannelKind::Pagerduty => set.pagerduty_url.clone(),
        _ => ch.target.0.clone(),
    }
}

/// Retry-After as seconds (the HTTP-date form is treated as absent).
fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    h.get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// The HTTP client of every notification. It follows no redirect: a followed redirect turns
/// the POST into an empty GET that the target answers 200, and the alert counted delivered
/// would be lost; it would also hand the secret URL to the target in `Referer`, which is
/// never sent either.
pub fn client(connect_timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("costguard/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .referer(false)
        .build()
}

/// What an answer means. 2xx: delivered. 429 and 5xx: the receiver cannot take it now,
/// retried. A 3xx is not delivered (the redirect is not followed): 302, 303 and 307 say
/// "elsewhere for now" (a proxy's login page, maintenance), so they are retried like a 5xx
/// (a receiver that did act on a 303 drops the repeat by its Idempotency-Key); 301 and 308
/// say the URL moved for good, and every other 3xx makes no sense for a POST: the URL must be
/// fixed, so they are refused like a 4xx (kept in outbox/failed, not retried).
pub fn classify(status: reqwest::StatusCode, after: Option<Duration>) -> Outcome {
    use reqwest::StatusCode as S;
    if status.is_success() {
        return Outcome::Delivered;
    }
    if status.is_redirection() {
        let why = format!("HTTP {status} (redirects are not followed)");
        return match status {
            S::FOUND | S::SEE_OTHER | S::TEMPORARY_REDIRECT => Outcome::Retry { after, why },
            _ => Outcome::Refused { why },
        };
    }
    let why = format!("HTTP {status}");
    if status == S::TOO_MANY_REQUESTS || status.is_server_error() {
        Outcome::Retry { after, why }
    } else {
        Outcome::Refused { why }
    }
}

pub async fn send(
    client: &reqwest::Client,
    set: &NotifySettings,
    ch: &Channel,
    item: &Item,
) -> Outcome {
    if ch.kind == ChannelKind::Email {
        return match &set.email {
            Some(s) => super::email::send(s, item, set.timeout).await,
            None => Outcome::Refused {
                why: "the email channel has no SMTP settings".into(),
            },
        };
    }
    let body = body(ch, item);
    if ch.kind == ChannelKind::Command {
        return run_command(&ch.target.0, &body, item, set.timeout).await;
    }
    let req = client
        .post(url(set, ch))
        .timeout(set.timeout)
        .header("Idempotency-Key", item.delivery_id())
        .json(&body);
    match req.send().await {
        Ok(resp) => classify(resp.status(), retry_after(resp.headers())),
        Err(e) => Outcome::Retry {
            after: None,
            why: redact::text(&describe(&e)).into_owned(),
        },
    }
}

/// A reqwest error without its URL (which may be the secret itself).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut src = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = src {
        detail = s.to_string();
        src = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}

async fn run_command(
    cmd: &str,
    body: &serde_json::Value,
    item: &Item,
    timeout: Duration,
) -> Outcome {
    let mut c = tokio::process::Command::new("sh");
    c.arg("-c")
        .arg(cmd)
        .env("COSTGUARD_EVENT_ID", item.delivery_id())
        .env("COSTGUARD_EVENT_KIND", item.event.kind.as_str())
        .env("COSTGUARD_RUN_ID", &item.event.run_id)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match c.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Outcome::Retry {
                after: None,
                why: format!("cannot start the notify command: {e}"),
            }
        }
    };
    let pid = child.id();
    // Abandoned at the flush deadline (this future dropped), its whole group goes: a hanging
    // command must not outlive costguard.
    let mut group = GroupGuard(pid.map(|p| nix::unistd::Pid::from_raw(p as i32)));
    // One event per line: `cat >> log` keeps them apart.
    let mut bytes = serde_json::to_vec(body).unwrap_or_default();
    bytes.push(b'\n');
    let run = async {
        if let Some(mut stdin) = child.stdin.take() {
            // A command that does not read its stdin is not a failure.
            let _ = stdin.write_all(&bytes).await;
        }
        child.wait().await
    };
    let done = tokio::time::timeout(timeout, run).await;
    if matches!(done, Ok(Ok(_))) {
        // It ended by itself: whatever it left running in the background is its business.
        group.0 = None;
    }
    match done {
        Ok(Ok(s)) if s.success() => Outcome::Delivered,
        Ok(Ok(s)) => Outcome::Retry {
            after: None,
            why: format!("the notify command exited with {s}"),
        },
        Ok(Err(e)) => Outcome::Retry {
            after: None,
            why: format!("the notify command failed: {e}"),
        },
        // Its whole group goes with `group`: a shell's children too.
        Err(_) => Outcome::Retry {
            after: None,
            why: format!(
                "the notify command took longer than {}",
                crate::units::format_duration(timeout)
            ),
        },
    }
}

/// Kills the notify command's process group when dropped, unless it ended by itself.
struct GroupGuard(Option<nix::unistd::Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Capped exponential backoff with jitter: 0.5 s, 1 s, 2 s … up to 30 s, each drawn from
/// its upper half; a receiver's Retry-After wins when longer.
pub fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    let cap = Duration::from_secs(30);
    let base = Duration::from_millis(500)
        .saturating_mul(1u32 << attempt.min(10))
        .min(cap);
    let jittered = base.mul_f64(0.5 + fastrand::f64() / 2.0);
    match retry_after {
        Some(r) => r.min(Duration::from_secs(300)).max(jittered),
        None => jittered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_decide_retries() {
        use reqwest::StatusCode as S;
        assert_eq!(classify(S::OK, None), Outcome::Delivered);
        assert_eq!(classify(S::ACCEPTED, None), Outcome::Delivered);
        assert!(matches!(
            classify(S::SERVICE_UNAVAILABLE, None),
            Outcome::Retry { .. }
        ));
        assert_eq!(
            classify(S::TOO_MANY_REQUESTS, Some(Duration::from_secs(7))),
            Outcome::Retry {
                after: Some(Duration::from_secs(7)),
                why: "HTTP 429 Too Many Requests".into()
            }
        );
        assert!(matches!(
            classify(S::BAD_REQUEST, None),
            Outcome::Refused { .. }
        ));
        assert!(matches!(
            classify(S::NOT_FOUND, None),
            Outcome::Refused { .. }
        ));
    }

    #[test]
    fn a_redirect_is_a_failure_temporary_ones_retried() {
        use reqwest::StatusCode as S;
        for s in [S::FOUND, S::SEE_OTHER, S::TEMPORARY_REDIRECT] {
            let why = format!("HTTP {s} (redirects are not followed)");
            assert_eq!(classify(s, None), Outcome::Retry { after: None, why });
        }
        assert_eq!(
            classify(S::FOUND, None),
            Outcome::Retry {
                after: None,
                why: "HTTP 302 Found (redirects are not followed)".into()
            }
        );
        for s in [S::MOVED_PERMANENTLY, S::PERMANENT_REDIRECT, S::NOT_MODIFIED] {
            let why = format!("HTTP {s} (redirects are not followed)");
            assert_eq!(classify(s, None), Outcome::Refused { why });
        }
    }

    #[test]
    fn backoff_grows_to_a_cap_and_honours_retry_after() {
        for a in 0..20 {
            let d = backoff(a, None);
            assert!(d <= Duration::from_secs(30), "{a}: {d:?}");
            let floor = Duration::from_millis(250).saturating_mul(1u32 << a.min(10));
            assert!(d >= floor.min(Duration::from_secs(15)), "{a}: {d:?}");
        }
        assert!(backoff(0, Some(Duration::from_secs(5))) >= Duration::from_secs(5));
    }
}
