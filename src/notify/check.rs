//! `costguard notify test`: one test event to every configured channel, sent directly (not
//! through the outbox), each answered on its own line. How the preflight proves the path.

use std::time::SystemTime;

use super::deliver::{self, Outcome};
use super::outbox::Item;
use super::{ChannelKind, NotifySettings};
use crate::events::{rfc3339, Event, EventKind};
use crate::redact;

/// The test event: plainly marked (its own kind, `test`), so nobody acts on it. `origin`
/// says what sent it.
pub fn test_event(host: &str, origin: &str) -> Event {
    let now = SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let run_id = format!("notify-test-{secs}");
    Event {
        id: format!("{run_id}-0001"),
        run_id,
        kind: EventKind::Test,
        reason: Some("test".into()),
        message: format!(
            "test notification from {origin}, not a run's event: the notification path works"
        ),
        at: rfc3339(now),
        elapsed_seconds: 0.0,
        spend_dollars: 0.0,
        rate_dollars_per_hour: None,
        budget_dollars: None,
        host: host.into(),
        phase: None,
        report_path: None,
        command: None,
        page_url: None,
        test: true,
    }
}

/// Sends and reports; returns how many channels failed. `origin` says what sent it.
pub async fn run(set: &NotifySettings, host: &str, origin: &str, out: &mut Vec<String>) -> usize {
    let client = match deliver::client(set.timeout) {
        Ok(c) => c,
        Err(e) => {
            out.push(format!("cannot build an HTTP client: {e}"));
            return set.channels.len();
        }
    };
    let event = test_event(host, origin);
    let mut failed = 0;
    for ch in &set.channels {
        let item = Item {
            channel: ch.kind,
            event: event.clone(),
            resolve: None,
        };
        let mut outcome = deliver::send(&client, set, ch, &item).await;
        if outcome == Outcome::Delivered && ch.kind == ChannelKind::Pagerduty {
            // Close the test incident at once: a test must not leave anyone paged.
            let resolve = Item {
                resolve: Some(super::payload::pagerduty_dedup_key(&event)),
                ..item
            };
            outcome = deliver::send(&client, set, ch, &resolve).await;
        }
        let line = match outcome {
            Outcome::Delivered => format!("{}: ok", ch.kind.as_str()),
            Outcome::Retry { why, .. } | Outcome::Refused { why } => {
                failed += 1;
                format!("{}: FAILED: {}", ch.kind.as_str(), redact::text(&why))
            }
        };
        out.push(line);
    }
    failed
}
