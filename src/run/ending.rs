//! How a session ends: the outcome's events (per phase and for the run), the summary line,
//! the final ledger and report, the exit hook and the notification flush.

use std::ffi::OsString;
use std::time::Duration;

use super::output::Tail;
use super::state::State;
use crate::config::Settings;
use crate::events::EventKind;
use crate::exit::JobStatus;
use crate::ledger::PhaseRecord;
use crate::policy::Limits;
use crate::units::{format_duration, format_money};

/// The watchdogs in words, for status and the report.
pub(super) fn watchdogs_of(s: &Settings) -> Vec<String> {
    let d = |x: Duration| format_duration(x);
    let mut w = Vec::new();
    if let Some(b) = s.max_usd {
        w.push(format!("usd {}", format_money(b)));
    }
    if let Some(x) = s.max_wall {
        w.push(format!("wall {}", d(x)));
    }
    w.push(match s.idle {
        Some(x) => format!("idle {} below {}%", d(x), s.idle_below),
        None => "idle off".into(),
    });
    w.push(match s.stall {
        Some(x) => format!("stall {}", d(x)),
        None => "stall off".into(),
    });
    if s.max_gpu_mem.is_some() {
        w.push("gpu memory".into());
    }
    if let Some(x) = s.max_host_mem {
        w.push(format!("host memory {}", crate::units::format_bytes(x)));
    }
    w
}

fn min_opt<T: PartialOrd>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b < a { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// The session's limits. `carried` seconds and `spent` dollars of earlier sessions (or
/// phases) count against the run's ceilings; a phase's own caps count from its start.
pub(super) fn limits_of(s: &Settings, carried: f64, spent: f64) -> Limits {
    let run_wall = s
        .max_wall
        .map(|w| w.saturating_sub(Duration::from_secs_f64(carried.max(0.0))));
    let phase = s.phase.as_ref();
    Limits {
        max_usd: min_opt(s.max_usd, phase.and_then(|p| p.max_usd).map(|u| spent + u)),
        max_wall: min_opt(run_wall, phase.and_then(|p| p.max_wall)),
        warn_before: s.warn_before,
        warn_at: s.warn_at.clone(),
        idle: s.idle,
        idle_below: s.idle_below,
        idle_grace: s.idle_grace,
        stall: s.stall,
        max_gpu_mem: s.max_gpu_mem,
        max_host_mem: s.max_host_mem,
        stale_after: s.interval * 3,
        progress_total: s.progress_total,
    }
}

/// Emits the ending events, closes the record, runs the hook and flushes notifications.
/// Returns the exit code (a plan's when it ends: 124 if any phase was killed) and whether the
/// run ended (false: a plan's next phase follows).
pub(super) async fn conclude(
    st: &mut State,
    settings: &Settings,
    outcome: &str,
    code: u8,
    detail: &str,
) -> (u8, bool) {
    let now = st.now();
    let spend = st.engine.spend(now);
    let elapsed = st.elapsed_carried + now.as_secs_f64();
    let run_cap_hit = settings.max_usd.is_some_and(|b| spend >= b - 1e-9)
        || settings
            .max_wall
            .is_some_and(|w| elapsed >= w.as_secs_f64() - 1e-3);
    let ended = match &settings.phase {
        None => true,
        Some(p) => {
            p.last
                || run_cap_hit
                || matches!(outcome, "failed" | "stopped")
                || (outcome == "killed" && p.abort_on_kill)
        }
    };
    let mut all_completed = outcome == "completed";
    if let Some(p) = &settings.phase {
        let reason = st.engine.killed().map(|r| r.as_str().to_string());
        let record = PhaseRecord {
            name: p.name.clone(),
            outcome: outcome.into(),
            elapsed_seconds: now.as_secs_f64(),
            expected_seconds: p.expected.map(|d| d.as_secs_f64()),
            spend_dollars: spend - st.spent_carried,
            reason: reason.clone(),
        };
        let mut phases = Vec::new();
        if let Some(r) = &st.rec {
            r.update(|l| {
                l.phases.push(record);
                phases = l.phases.clone();
            });
        }
        all_completed = phases.iter().all(|r| r.outcome == "completed") && phases.len() == p.total;
        st.emit(
            EventKind::PhaseCompleted,
            reason.as_deref().or(Some(outcome)),
            format!(
                "phase {}/{} {}: {outcome}: {detail}",
                p.index + 1,
                p.total,
                p.name
            ),
        );
        if !ended {
            let next = if outcome == "killed" {
                "on_kill = continue: going on with the next phase"
            } else {
                "next phase"
            };
            if !st.quiet {
                eprintln!("costguard: phase {} {outcome}; {next}", p.name);
            }
        }
    }
    if ended {
        match (&settings.phase, outcome) {
            (None, "completed") => {
                st.emit(EventKind::Completed, None, detail.to_string());
            }
            (None, "failed") => {
                st.emit(EventKind::Failed, None, detail.to_string());
            }
            (None, _) => {}
            (Some(p), _) if all_completed => {
                st.emit(
                    EventKind::Completed,
                    None,
                    format!("all {} phases completed", p.total),
                );
            }
            (Some(p), _) => {
                st.emit(
                    EventKind::Failed,
                    Some(outcome),
                    format!(
                        "plan ended at phase {}/{} {}: {outcome}: {detail}",
                        p.index + 1,
                        p.total,
                        p.name
                    ),
                );
            }
        }
    }
    let overall = match (&settings.phase, ended) {
        (Some(_), true) if all_completed => "completed",
        (Some(_), true) if outcome == "completed" => "failed",
        _ => outcome,
    };
    // A plan's ending speaks for the whole plan.
    let (code, detail) = match (&settings.phase, ended) {
        (Some(p), true) => {
            let recs = st
                .rec
                .as_ref()
                .map(|r| r.snapshot().phases)
                .unwrap_or_default();
            let done = recs.iter().filter(|r| r.outcome == "completed").count();
            let others: Vec<String> = recs
                .iter()
                .filter(|r| r.outcome != "completed")
                .map(|r| {
                    format!(
                        "{} {}{}",
                        r.name,
                        r.outcome,
                        r.reason
                            .as_deref()
                            .map(|x| format!(" ({x})"))
                            .unwrap_or_default()
                    )
                })
                .collect();
            let killed = recs.iter().any(|r| r.outcome == "killed");
            let code = if code == 0 && killed {
                crate::exit::CEILING_KILLED
            } else {
                code
            };
            let mut d = format!("{done} of {} phases completed", p.total);
            if !others.is_empty() {
                d += &format!("; {}", others.join(", "));
            }
            (code, d)
        }
        _ => (code, detail.to_string()),
    };
    let ledger = close_record(st, overall, code, &detail, ended).await;
    if ended {
        if let (Some(l), false) = (&ledger, st.quiet) {
            if let Some(p) = &l.report_path {
                eprintln!("costguard: report: {}", p.display());
            }
        }
        if let (Some(cmd), Some(l)) = (&settings.on_exit, &ledger) {
            super::exit_hook::run(cmd, l, st.quiet).await;
        }
    }
    if let Some(n) = st.notifier.take() {
        // Between phases the next phase must not wait on a slow endpoint: what is not out
        // within a second stays in the outbox, and the next phase's notifier sends it.
        let flush = if ended {
            settings.notify.flush
        } else {
            settings.notify.flush.min(Duration::from_secs(1))
        };
        let report = n.finish(flush).await;
        if !report.undelivered.is_empty() {
            eprintln!(
                "costguard: {} notifications not delivered within {}; they stay in {} and go out on the next start:",
                report.undelivered.len(),
                format_duration(flush),
                report.outbox.display()
            );
            for u in &report.undelivered {
                eprintln!("costguard:   {u}");
            }
        }
    }
    (code, ended)
}

/// Final ledger state, then the report from the ledger and the event log.
async fn close_record(
    st: &mut State,
    outcome: &str,
    code: u8,
    detail: &str,
    ended: bool,
) -> Option<crate::ledger::Ledger> {
    st.publish();
    let rec = st.rec.take()?;
    let dir = rec.run_dir.clone();
    let state = match outcome {
        _ if !ended => "running",
        "killed" | "stopped" | "completed" | "failed" => outcome,
        _ => "failed",
    };
    rec.update(|l| {
        l.state = state.into();
        l.exit_code = Some(code);
        l.outcome_detail = Some(detail.to_string());
        l.report_path = Some(dir.join("report.md"));
    });
    let ledger = rec.close().await;
    let d = dir.clone();
    let l = ledger.clone();
    let written = tokio::task::spawn_blocking(move || {
        let events = crate::ledger::read_events(&d);
        let text = crate::report::render(&l, &events);
        crate::fsutil::write_replace(&d.join("report.md"), text.as_bytes())
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        eprintln!(
            "costguard: notice: could not write {}",
            dir.join("report.md").display()
        );
    }
    Some(ledger)
}

/// The one summary line on stderr (and the last output line after a kill).
#[expect(clippy::too_many_arguments)]
pub(super) fn finish(
    st: &State,
    code: u8,
    outcome: &str,
    detail: &str,
    now: Duration,
    spent: &str,
    wasted_text: &str,
    tail: &Tail,
    command: &[OsString],
    leader: Option<JobStatus>,
) -> u8 {
    if let Some(JobStatus::ExecFailed(_)) = leader {
        eprintln!(
            "costguard: cannot run {:?}: {}",
            command[0],
            detail.trim_start_matches("could not execute: ")
        );
    }
    if outcome == "killed" || outcome == "stopped" {
        if let (Some(line), false) = (tail.snapshot().last(), st.quiet) {
            eprintln!("costguard: last output: {line}");
        }
    }
    eprintln!(
        "costguard: {outcome}: {detail}; ran {}, {spent}{wasted_text}",
        format_duration(now)
    );
    code
}
