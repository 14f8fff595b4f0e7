//! `costguard watch --desktop`: the events a chat channel would get (the default notify
//! filter: kills, failures, completion, budget/checkpoint/preemption warnings, record and
//! release errors) as freedesktop notifications on the session D-Bus, through `notify-rust`
//! on zbus (pure Rust: no libdbus to link, and it runs on costguard's own tokio runtime).

use std::time::Duration;

use notify_rust::{Notification, Urgency};

use crate::events::{Event, EventKind};
use crate::notify::KindFilter;

/// How long one notification may take to be handed to the daemon.
const SHOW_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Desktop {
    filter: KindFilter,
    /// The first failure is said; later ones are not repeated.
    failed: bool,
}

/// A summary a person can read at a glance: `costguard: train-1 killed (wall)`.
pub fn summary(ev: &Event) -> String {
    let reason = ev
        .reason
        .as_deref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    format!("costguard: {} {}{reason}", ev.run_id, ev.kind.as_str())
}

/// Kills and failures stay on screen until seen.
pub fn urgency(kind: EventKind) -> Urgency {
    match kind {
        EventKind::Killed | EventKind::Failed => Urgency::Critical,
        EventKind::AgentError => Urgency::Critical,
        _ => Urgency::Normal,
    }
}

impl Desktop {
    pub fn new() -> Desktop {
        Desktop {
            filter: KindFilter::default(),
            failed: false,
        }
    }

    /// Shows `ev` when it is one a person is notified of.
    pub async fn show(&mut self, ev: &Event) {
        if !self.filter.matches(ev) {
            return;
        }
        let mut n = Notification::new();
        n.appname("costguard")
            .summary(&summary(ev))
            .body(&ev.message)
            .urgency(urgency(ev.kind));
        let err = match tokio::time::timeout(SHOW_TIMEOUT, n.show_async()).await {
            Ok(Ok(_)) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {}s", SHOW_TIMEOUT.as_secs()),
        };
        if !std::mem::replace(&mut self.failed, true) {
            crate::console::notice(format!(
                "desktop notification not shown ({err}); is a notification daemon running on the session bus?"
            ));
        }
    }
}

impl Default for Desktop {
    fn default() -> Self {
        Desktop::new()
    }
}
