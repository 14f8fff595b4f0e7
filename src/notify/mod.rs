//! Notifications: every configured channel gets the events it asked for, through a durable
//! outbox (written before it is sent, retried with backoff, flushed at exit, delivered by the
//! next start when something was left). Delivery runs in its own task: it never delays a kill.

pub mod check;
pub(crate) mod deliver;
pub(crate) mod email;
pub(crate) mod outbox;
pub(crate) mod payload;
pub(crate) mod worker;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::events::{Event, EventKind, KillReason};
use crate::redact::Secret;

pub use worker::Notifier;

/// Kinds sent when a channel does not say: kills, failures, completion, budget and checkpoint
/// warnings, the spot box's reclaim notice, a record or a release that failed. (Macros, so
/// `--notify-on`'s help shows these very lists.)
macro_rules! default_kinds {
    () => {
        "killed,failed,completed,warning:budget,warning:checkpoint,warning:preemption,agent-error:record,agent-error:release"
    };
}
/// PagerDuty's default: only what opens an incident (kills, failures, stalls, costguard unable
/// to guard); completion only resolves what the run opened. Budget warnings are not
/// incidents: they go to chat.
macro_rules! pager_kinds {
    () => {
        "killed,failed,stalled,agent-error,completed"
    };
}
pub(crate) use {default_kinds, pager_kinds};
pub const DEFAULT_KINDS: &str = default_kinds!();
pub const PAGER_KINDS: &str = pager_kinds!();

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    Slack,
    Webhook,
    Alertmanager,
    Pagerduty,
    Command,
    Email,
}

impl ChannelKind {
    pub const ALL: [ChannelKind; 6] = [
        ChannelKind::Slack,
        ChannelKind::Webhook,
        ChannelKind::Alertmanager,
        ChannelKind::Pagerduty,
        ChannelKind::Command,
        ChannelKind::Email,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Slack => "slack",
            ChannelKind::Webhook => "webhook",
            ChannelKind::Alertmanager => "alertmanager",
            ChannelKind::Pagerduty => "pagerduty",
            ChannelKind::Command => "command",
            ChannelKind::Email => "email",
        }
    }

    pub fn parse(s: &str) -> Option<ChannelKind> {
        ChannelKind::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// Which events a channel gets: `all`, a kind (`killed`), or a kind with a reason
/// (`warning:budget`). Kinds and reasons are checked: a typo would silently drop the events
/// it meant.
#[derive(Debug, Clone, PartialEq)]
pub struct KindFilter(Vec<String>);

/// The reasons events of a kind carry, as the code that makes them writes them (`run/state.rs`,
/// `run/session/`): a `KIND:REASON` entry naming another is refused.
fn reasons(kind: EventKind) -> Vec<&'static str> {
    const OUTCOMES: [&str; 4] = ["completed", "failed", "killed", "stopped"];
    let kills = || KillReason::ALL.iter().map(|r| r.as_str());
    match kind {
        EventKind::Started => vec!["target"],
        EventKind::Warning => vec![
            "checkpoint",
            "budget",
            "idle-suspected",
            "stall-suspected",
            "preemption",
        ],
        EventKind::Idle => vec!["idle"],
        EventKind::Stalled => vec!["stall"],
        EventKind::Killed => kills().collect(),
        // A phase's end carries the kill's reason, else its outcome.
        EventKind::PhaseCompleted => kills().chain(OUTCOMES).collect(),
        EventKind::Failed => OUTCOMES.to_vec(),
        EventKind::Completed | EventKind::Test => Vec::new(),
        EventKind::AgentError => vec![
            "record",
            "release",
            "telemetry",
            "gpu-lost",
            "gpu-not-freed",
            "escaped",
            "survivors",
            "holder-lost",
            "fleet-unreachable",
            "fleet-no-series",
        ],
    }
}

/// `; did you mean `x`?` for the nearest of `known` within two edits, else nothing.
fn nearest(word: &str, known: &[&str]) -> String {
    known
        .iter()
        .map(|k| (strsim::levenshtein(word, k), *k))
        .filter(|(d, k)| *d <= 2 && *d < k.len())
        .min()
        .map(|(_, k)| format!("; did you mean `{k}`?"))
        .unwrap_or_default()
}

/// One entry of a filter, checked: `all`, a kind, or a kind and one of its reasons.
fn check_entry(part: &str) -> Result<(), String> {
    if part == "all" {
        return Ok(());
    }
    let (kind, reason) = match part.split_once(':') {
        Some((k, r)) => (k, Some(r)),
        None => (part, None),
    };
    let kinds: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
    let Some(k) = EventKind::ALL.into_iter().find(|k| k.as_str() == kind) else {
        return Err(format!(
            "entry {part:?}: no event kind {kind:?}; expected all, or one of {} (optionally KIND:REASON){}",
            kinds.join(", "),
            nearest(kind, &kinds)
        ));
    };
    let Some(reason) = reason else {
        return Ok(());
    };
    let known = reasons(k);
    if known.contains(&reason) {
        return Ok(());
    }
    if known.is_empty() {
        return Err(format!(
            "entry {part:?}: {kind} events carry no reason; give {kind} alone"
        ));
    }
    Err(format!(
        "entry {part:?}: {kind} events have no reason {reason:?}; their reasons are {}{}",
        known.join(", "),
        nearest(reason, &known)
    ))
}

impl KindFilter {
    /// Parses a comma-separated list; the error names the entry at fault and suggests the
    /// nearest kind or reason (the caller says where the list came from).
    pub fn parse(list: &str) -> Result<KindFilter, String> {
        let mut out = Vec::new();
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            check_entry(part)?;
            out.push(part.to_string());
        }
        if out.is_empty() {
            return Err(format!("{list:?}: no event kinds given"));
        }
        Ok(KindFilter(out))
    }

    /// Whether events of this kind (with some reason) reach the channel.
    pub fn takes(&self, kind: &str) -> bool {
        self.0
            .iter()
            .any(|f| f == "all" || f.split(':').next() == Some(kind))
    }

    pub fn matches(&self, e: &Event) -> bool {
        self.0.iter().any(|f| {
            f == "all"
                || f == e.kind.as_str()
                || f.split_once(':')
                    .is_some_and(|(k, r)| k == e.kind.as_str() && e.reason.as_deref() == Some(r))
        })
    }
}

impl KindFilter {
    /// The default with a plan: each phase's end too (completed or killed).
    pub fn for_plans() -> Self {
        KindFilter::parse(&format!("{DEFAULT_KINDS},phase-completed")).expect("valid default")
    }
}

impl Default for KindFilter {
    fn default() -> Self {
        KindFilter::parse(DEFAULT_KINDS).expect("valid default")
    }
}

/// One configured destination. `target` is the URL, routing key or command: a secret
/// (for email, the SMTP URL; its settings and password are in `NotifySettings::email`).
#[derive(Debug, Clone)]
pub struct Channel {
    pub kind: ChannelKind,
    pub target: Secret,
    pub on: KindFilter,
}

#[derive(Debug, Clone)]
pub struct NotifySettings {
    pub channels: Vec<Channel>,
    pub pagerduty_url: String,
    /// How long to keep delivering after the run ended.
    pub flush: Duration,
    /// Bound on one delivery attempt (an HTTP request, an SMTP session, or the notify command).
    pub timeout: Duration,
    /// The email channel's server, credentials and addresses, when it is configured.
    pub email: Option<email::EmailSettings>,
}

impl NotifySettings {
    pub fn channel(&self, kind: ChannelKind) -> Option<&Channel> {
        self.channels.iter().find(|c| c.kind == kind)
    }

    /// The secret values to mask everywhere: URLs and keys, and the SMTP password (the
    /// SMTP URL is not one: its user, the only private part, is masked as any `user@` is).
    pub fn secrets(&self) -> Vec<String> {
        self.channels
            .iter()
            .filter(|c| !matches!(c.kind, ChannelKind::Command | ChannelKind::Email))
            .map(|c| c.target.0.clone())
            .chain(
                self.email
                    .iter()
                    .filter_map(|e| e.password.as_ref().map(|p| p.0.clone())),
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind, reason: Option<&str>) -> Event {
        Event {
            id: "r-0001".into(),
            run_id: "r".into(),
            kind,
            reason: reason.map(str::to_string),
            message: String::new(),
            at: String::new(),
            elapsed_seconds: 0.0,
            spend_dollars: 0.0,
            rate_dollars_per_hour: None,
            budget_dollars: None,
            host: String::new(),
            phase: None,
            report_path: None,
            command: None,
            page_url: None,
            test: false,
        }
    }

    #[test]
    fn default_filter_is_kills_failures_completion_and_budget_warnings() {
        let f = KindFilter::default();
        assert!(f.matches(&ev(EventKind::Killed, Some("usd"))));
        assert!(f.matches(&ev(EventKind::Failed, None)));
        assert!(f.matches(&ev(EventKind::Completed, None)));
        assert!(f.matches(&ev(EventKind::Warning, Some("budget"))));
        assert!(!f.matches(&ev(EventKind::Warning, Some("idle-suspected"))));
        assert!(!f.matches(&ev(EventKind::Started, None)));
        let all = KindFilter::parse("all").expect("all");
        assert!(all.matches(&ev(EventKind::Started, None)));
        let pager = KindFilter::parse(PAGER_KINDS).expect("pager default");
        assert!(!pager.matches(&ev(EventKind::Warning, Some("budget"))));
        assert!(pager.matches(&ev(EventKind::Killed, Some("usd"))));
        assert!(pager.matches(&ev(EventKind::AgentError, Some("record"))));
        let err = KindFilter::parse("killed,kiled").unwrap_err();
        assert!(
            err.contains("\"kiled\"") && err.contains("did you mean `killed`?"),
            "{err}"
        );
    }

    #[test]
    fn every_reason_of_every_kind_is_taken_and_a_misspelt_one_is_refused() {
        for kind in EventKind::ALL {
            for reason in reasons(kind) {
                let entry = format!("{}:{reason}", kind.as_str());
                assert!(KindFilter::parse(&entry).is_ok(), "{entry}");
                let typo = format!("{entry}x");
                let err = KindFilter::parse(&typo).expect_err(&typo);
                assert!(err.contains(&format!("did you mean `{reason}`?")), "{err}");
            }
        }
        let err = KindFilter::parse("warning:budgett").unwrap_err();
        assert!(err.contains("did you mean `budget`?"), "{err}");
        let err = KindFilter::parse("completed:x").unwrap_err();
        assert!(err.contains("completed events carry no reason"), "{err}");
    }
}
