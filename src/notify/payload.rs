//! What each channel receives, built from one event. Pure functions, checked against the
//! documented shapes of Slack incoming webhooks, Alertmanager API v2 and PagerDuty Events v2.

use std::time::Duration;

use serde_json::{json, Value};

use crate::events::{Event, EventKind};
use crate::units::{format_duration, format_money};

/// Schema name of the generic webhook body (documented in README, "Notifications").
pub const WEBHOOK_SCHEMA: &str = "costguard.event.v1";
/// One-shot events sent to Alertmanager resolve by themselves after this long.
pub const ALERT_TTL: Duration = Duration::from_secs(3600);

fn spend_text(e: &Event) -> String {
    match (e.rate_dollars_per_hour, e.budget_dollars) {
        (None, _) => "spend unknown".into(),
        (Some(_), Some(b)) => format!("{} of {}", format_money(e.spend_dollars), format_money(b)),
        (Some(r), None) => format!("{} at {}/h", format_money(e.spend_dollars), format_money(r)),
    }
}

fn elapsed(e: &Event) -> String {
    format_duration(Duration::from_secs_f64(e.elapsed_seconds.max(0.0)))
}

/// The event's kind as a person reads it: `killed`, `phase completed`, `costguard error`.
pub fn kind_word(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Killed => "killed",
        EventKind::Failed => "failed",
        EventKind::Completed => "completed",
        EventKind::Warning => "warning",
        EventKind::Idle => "idle",
        EventKind::Stalled => "stalled",
        EventKind::Started => "started",
        EventKind::PhaseCompleted => "phase completed",
        EventKind::AgentError => "costguard error",
        EventKind::Test => "test",
    }
}

fn headline(e: &Event) -> String {
    let what = kind_word(e.kind);
    let reason = e
        .reason
        .as_deref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    let test = if e.test { "TEST: " } else { "" };
    format!("{test}{} {what}{reason} on {}", e.run_id, e.host)
}

/// One line that says what happened, why, spend against budget and elapsed: the preview.
pub fn summary(e: &Event) -> String {
    format!(
        "costguard: {}: {} | {} | ran {}",
        headline(e),
        e.message,
        spend_text(e),
        elapsed(e)
    )
}

/// How urgent an event is, by what it asks of a person. `critical`: money burns and nobody
/// stopped it (a stall seen but not killed, costguard unable to guard). `error`: the job
/// failed by itself. `warning`: a ceiling did its job (the spend stopped; look when you can),
/// a budget or idle warning. `info`: expected ends, a stop somebody asked for, starts.
pub fn severity(e: &Event) -> &'static str {
    if e.test {
        return "info";
    }
    match e.kind {
        EventKind::Stalled | EventKind::AgentError => "critical",
        EventKind::Failed => "error",
        EventKind::Killed if e.reason.as_deref() == Some("signal") => "info",
        EventKind::Killed | EventKind::Warning | EventKind::Idle => "warning",
        EventKind::Started | EventKind::Completed | EventKind::PhaseCompleted | EventKind::Test => {
            "info"
        }
    }
}

/// The generic webhook body and the notify command's stdin.
pub fn webhook(e: &Event) -> Value {
    json!({
        "schema": WEBHOOK_SCHEMA,
        "id": e.id,
        "run_id": e.run_id,
        "kind": e.kind.as_str(),
        "reason": e.reason,
        "evidence": e.message,
        "at": e.at,
        "spend_dollars": e.spend_dollars,
        "rate_dollars_per_hour": e.rate_dollars_per_hour,
        "budget_dollars": e.budget_dollars,
        "elapsed_seconds": e.elapsed_seconds,
        "host": e.host,
        "phase": e.phase,
        "report_path": e.report_path,
        "command": e.command,
        "test": e.test,
    })
}

/// A Slack incoming-webhook message: `text` is what the notification preview shows.
pub fn slack(e: &Event) -> Value {
    let report = e
        .report_path
        .as_deref()
        .map_or("no report written".to_string(), |p| {
            format!("report: `{p}`")
        });
    json!({
        "text": summary(e),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": truncate(&format!("costguard: {}", headline(e)), 150)}},
            {"type": "section", "text": {"type": "mrkdwn", "text": truncate(&format!("*Why:* {}", e.message), 3000)}},
            {"type": "section", "fields": [
                {"type": "mrkdwn", "text": format!("*Spend*\n{}", spend_text(e))},
                {"type": "mrkdwn", "text": format!("*Elapsed*\n{}", elapsed(e))},
                {"type": "mrkdwn", "text": format!("*Host*\n{}", e.host)},
                {"type": "mrkdwn", "text": format!("*Run*\n`{}`", e.run_id)},
            ]},
            {"type": "context", "elements": [
                {"type": "mrkdwn", "text": format!("event `{}` · {} · {}", e.id, report, e.at)}
            ]},
        ],
    })
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

fn camel(kind: EventKind) -> String {
    kind.as_str()
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// Alertmanager API v2 `POST /api/v2/alerts` body. Labels are bounded (kind, reason, run,
/// host, severity); the evidence goes into annotations. `endsAt` makes a one-shot event
/// resolve by itself.
pub fn alertmanager(e: &Event, now: std::time::SystemTime) -> Value {
    let mut labels = json!({
        "alertname": format!("Costguard{}", if e.test { "Test".to_string() } else { camel(e.kind) }),
        "severity": severity(e),
        "kind": e.kind.as_str(),
        "run": e.run_id,
        "host": e.host,
        "source": "costguard",
    });
    if let Some(r) = &e.reason {
        labels["reason"] = json!(r);
    }
    json!([{
        "labels": labels,
        "annotations": {
            "summary": summary(e),
            "description": e.message,
            "spend": spend_text(e),
            "event_id": e.id,
        },
        "startsAt": e.at,
        "endsAt": crate::events::rfc3339(now + ALERT_TTL),
    }])
}

/// PagerDuty's deduplication key: one incident per run and reason.
pub fn pagerduty_dedup_key(e: &Event) -> String {
    let what = e.reason.as_deref().unwrap_or(e.kind.as_str());
    format!("costguard/{}/{what}", e.run_id)
}

/// PagerDuty Events API v2: a trigger for the event, or a resolve of `dedup_key`.
pub fn pagerduty(e: &Event, routing_key: &str, resolve: Option<&str>) -> Value {
    if let Some(key) = resolve {
        return json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": key,
        });
    }
    let sev = severity(e);
    json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": pagerduty_dedup_key(e),
        "payload": {
            "summary": truncate(&summary(e), 1024),
            "source": e.host,
            "severity": sev,
            "timestamp": e.at,
            "component": "costguard",
            "group": e.run_id,
            "class": e.kind.as_str(),
            "custom_details": webhook(e),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn killed() -> Event {
        Event {
            id: "train-2026-11-24-1147-0007".into(),
            run_id: "train-2026-11-24-1147".into(),
            kind: EventKind::Killed,
            reason: Some("usd".into()),
            message: "usd: spent $40.00 of $40.00 at $24.50/h after 1h37m57s".into(),
            at: "2026-11-24T13:25:00.000Z".into(),
            elapsed_seconds: 5877.0,
            spend_dollars: 40.0,
            rate_dollars_per_hour: Some(24.5),
            budget_dollars: Some(40.0),
            host: "gpu-7".into(),
            phase: None,
            report_path: None,
            command: Some("python train.py".into()),
            page_url: None,
            test: false,
        }
    }

    #[test]
    fn slack_preview_says_what_why_spend_and_elapsed() {
        let s = slack(&killed());
        let text = s["text"].as_str().expect("text");
        assert!(text.contains("killed (usd) on gpu-7"), "{text}");
        assert!(text.contains("spent $40.00 of $40.00"), "{text}");
        assert!(text.contains("$40.00 of $40.00 | ran 1h37m57s"), "{text}");
        assert_eq!(s["blocks"][0]["type"], "header");
        assert_eq!(s["blocks"][0]["text"]["type"], "plain_text");
        assert!(s["blocks"][2]["fields"].as_array().expect("fields").len() <= 10);
    }

    #[test]
    fn alertmanager_alert_resolves_by_itself() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_795_526_700);
        let a = alertmanager(&killed(), now);
        assert_eq!(a[0]["labels"]["alertname"], "CostguardKilled");
        assert_eq!(a[0]["labels"]["reason"], "usd");
        // A ceiling kill stopped the spend: it asks for a look, not a page at night.
        assert_eq!(a[0]["labels"]["severity"], "warning");
        assert_eq!(a[0]["endsAt"], "2026-11-24T14:25:00.000Z");
        assert!(a[0]["labels"].as_object().expect("labels").len() <= 7);
    }

    #[test]
    fn pagerduty_trigger_and_resolve_share_the_key() {
        let e = killed();
        let t = pagerduty(&e, "R0UTINGKEY", None);
        assert_eq!(t["event_action"], "trigger");
        assert_eq!(t["dedup_key"], "costguard/train-2026-11-24-1147/usd");
        assert_eq!(t["payload"]["severity"], "warning");
        assert_eq!(t["payload"]["source"], "gpu-7");
        let r = pagerduty(
            &e,
            "R0UTINGKEY",
            Some("costguard/train-2026-11-24-1147/usd"),
        );
        assert_eq!(r["event_action"], "resolve");
        assert_eq!(r["dedup_key"], t["dedup_key"]);
    }
}
