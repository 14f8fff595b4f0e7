//! How a session's end is recorded: the phase's and the run's ending events, a plan's own
//! verdict, the final ledger and report, the exit hook and the notification flush.

use std::time::Duration;

use super::close::Verdict;
use super::Session;
use crate::events::EventKind;
use crate::exit;
use crate::ledger::{Outcome, PhaseRecord, RunState as LedgerState, StepRecord};
use crate::units::format_duration;

impl Session {
    /// Ending events, the record, the hook and the flush.
    pub(super) async fn conclude(&mut self, v: Verdict) -> (u8, bool) {
        let ended = self.run_ends(v.outcome);
        self.end_phase(&v, ended);
        let plan = (ended && self.settings.phase.is_some()).then(|| self.plan_summary());
        if ended {
            self.end_run(&v, plan.as_ref());
        }
        let (code, detail) = match &plan {
            Some(p) if p.killed && v.code == 0 => (exit::CEILING_KILLED, p.detail.clone()),
            Some(p) => (v.code, p.detail.clone()),
            None => (v.code, v.detail.clone()),
        };
        let overall = match (&plan, ended) {
            (Some(p), _) if p.whole => LedgerState::Completed,
            (Some(_), _) if v.outcome == Outcome::Completed => LedgerState::Failed,
            (_, true) => v.outcome.into(),
            (_, false) => LedgerState::Running,
        };
        let ledger = self.close_record(overall, code, &detail).await;
        if ended {
            let report = ledger.as_ref().and_then(|l| l.report_path.as_ref());
            let report = report.map(|p| p.display().to_string());
            self.sinks
                .publish_end(overall.as_str(), code, &detail, report.as_deref());
            // `/events` ends with the run: its exit status, outcome and words.
            crate::feed::global().end(&serde_json::json!({
                "run_id": self.state.id().run_id,
                "exit_code": code,
                "outcome": overall.as_str(),
                "detail": detail,
                "report_path": report,
            }));
        }
        if ended && self.settings.phase.is_some() {
            // The plan's own last word: not the last phase's.
            crate::console::alert(format!("plan {}: {detail}; exit status {code}", overall));
        }
        if ended {
            if let Some(p) = ledger.as_ref().and_then(|l| l.report_path.as_ref()) {
                // Where the postmortem is: shown even with --quiet.
                crate::console::alert(format!("report: {}", p.display()));
            }
            if let (Some(cmd), Some(l)) = (&self.settings.on_exit, &ledger) {
                crate::run::exit_hook::run(cmd, l, self.settings.on_exit_timeout).await;
            }
        }
        self.flush_notifications(ended).await;
        if ended {
            let outcome = match overall {
                LedgerState::Killed => Outcome::Killed,
                LedgerState::Stopped => Outcome::Stopped,
                LedgerState::Completed => Outcome::Completed,
                _ => Outcome::Failed,
            };
            self.release_box(outcome).await;
        }
        (code, ended)
    }

    /// Whether the run's own ceiling (not a phase's) is reached.
    fn run_cap_hit(&self) -> bool {
        let now = self.now();
        let spend = self.state.engine().spend(now);
        let elapsed = self.state.carried().elapsed + now.as_secs_f64();
        self.settings.max_usd.is_some_and(|b| spend >= b - 1e-9)
            || self
                .settings
                .max_wall
                .is_some_and(|w| elapsed >= w.as_secs_f64() - 1e-3)
    }

    /// Whether the run ends with this session (a plan's next phase follows otherwise).
    fn run_ends(&self, outcome: Outcome) -> bool {
        let Some(p) = &self.settings.phase else {
            return true;
        };
        p.last
            || self.run_cap_hit()
            || matches!(outcome, Outcome::Failed | Outcome::Stopped)
            || (outcome == Outcome::Killed && p.abort_on_kill)
    }

    /// The phase's steps on record: those done, the one the ending cut, the rest not run.
    fn step_records(&self, outcome: Outcome) -> Vec<StepRecord> {
        let Some(p) = self.state.phase() else {
            return Vec::new();
        };
        let key = p.step_key.as_deref().unwrap_or("step");
        let now = self.now();
        p.step_values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let (word, secs) = match (p.step_times.get(i), p.step) {
                    (Some(t), _) => ("completed", Some(*t)),
                    (None, Some((n, t0))) if n == i + 1 => {
                        (outcome.as_str(), Some(now.saturating_sub(t0).as_secs_f64()))
                    }
                    // Too quick for the poll: a completed phase ran them all.
                    (None, None) if outcome == Outcome::Completed => ("completed", None),
                    (None, None) if i == 0 => (outcome.as_str(), None),
                    _ => ("not run", None),
                };
                StepRecord {
                    label: format!("{key} {v}"),
                    outcome: word.into(),
                    elapsed_seconds: secs,
                }
            })
            .collect()
    }

    /// A plan's phase on record and its `phase-completed` event (the reason: the kill's,
    /// else the outcome), which names the step the phase ended in.
    fn end_phase(&mut self, v: &Verdict, ended: bool) {
        let Some(p) = self.settings.phase.clone() else {
            return;
        };
        let now = self.now();
        let reason = self.state.engine().killed().map(|r| r.as_str().to_string());
        let steps = self.step_records(v.outcome);
        let at_step = self
            .state
            .phase()
            .and_then(|ph| ph.step_text())
            .filter(|_| v.outcome != Outcome::Completed)
            .map(|s| format!(" (at {s})"))
            .unwrap_or_default();
        let record = PhaseRecord {
            name: p.name.clone(),
            outcome: v.outcome,
            elapsed_seconds: now.as_secs_f64(),
            expected_seconds: p.expected.map(|d| d.as_secs_f64()),
            spend_dollars: self.state.engine().spend(now) - self.state.carried().spend,
            reason: reason.clone(),
            steps,
        };
        if let Some(r) = &self.sinks.recorder {
            r.update(|l| {
                l.phases.push(record);
                l.step = None;
            });
        }
        let outcome = v.outcome.as_str();
        self.emit(
            EventKind::PhaseCompleted,
            reason.as_deref().or(Some(outcome)),
            format!(
                "phase {}/{} {}: {outcome}{at_step} after {}: {}",
                p.index + 1,
                p.total,
                p.name,
                crate::units::format_secs(now.as_secs_f64()),
                v.detail
            ),
        );
        if !ended {
            let next = if v.outcome == Outcome::Killed {
                "on_kill = continue: going on with the next phase"
            } else {
                "next phase"
            };
            crate::console::say(format!("phase {} {outcome}; {next}", p.name));
        }
    }

    /// The run's own ending event. A plan whose every phase ran to its end or its own cap
    /// is `completed`, with the summary; one cut short (a failure, a stop, on_kill = abort,
    /// the run's own ceiling) is `failed`, with the phase it ended at.
    fn end_run(&mut self, v: &Verdict, plan: Option<&PlanSummary>) {
        match (&self.settings.phase.clone(), plan) {
            (None, _) | (_, None) => match v.outcome {
                Outcome::Completed => self.emit(EventKind::Completed, None, v.detail.clone()),
                Outcome::Failed => self.emit(EventKind::Failed, None, v.detail.clone()),
                _ => {}
            },
            (Some(_), Some(s)) if s.whole => {
                self.emit(EventKind::Completed, None, format!("plan: {}", s.detail))
            }
            (Some(p), Some(s)) => self.emit(
                EventKind::Failed,
                Some(v.outcome.as_str()),
                format!(
                    "plan ended at phase {}/{} {}: {}: {}; {}",
                    p.index + 1,
                    p.total,
                    p.name,
                    v.outcome,
                    v.detail,
                    s.detail
                ),
            ),
        }
    }

    /// A plan's ending in words for the whole plan: "5 of 7 phases completed; BiGRU,
    /// GcnLite killed at their wall caps".
    fn plan_summary(&self) -> PlanSummary {
        let total = self.settings.phase.as_ref().map_or(0, |p| p.total);
        let recs = self
            .sinks
            .recorder
            .as_ref()
            .map(|r| r.snapshot().phases)
            .unwrap_or_default();
        let killed = recs.iter().any(|r| r.outcome == Outcome::Killed);
        let whole = recs.len() == total
            && !self.run_cap_hit()
            && recs
                .iter()
                .all(|r| matches!(r.outcome, Outcome::Completed | Outcome::Killed));
        PlanSummary {
            detail: summary_text(&recs, total),
            killed,
            whole,
        }
    }

    /// Final ledger state, then the report from the ledger and the event log.
    async fn close_record(
        &mut self,
        state: LedgerState,
        code: u8,
        detail: &str,
    ) -> Option<crate::ledger::Ledger> {
        let now = self.now();
        self.publish(now);
        self.sinks.sample_series(&self.state, now);
        self.sinks.save_series().await;
        let rec = self.sinks.recorder.take()?;
        let dir = rec.run_dir.clone();
        rec.update(|l| {
            l.state = state;
            l.exit_code = Some(code);
            l.outcome_detail = Some(detail.to_string());
            l.report_path = Some(dir.join("report.md"));
        });
        let (ledger, saved) = rec.close().await;
        if let Err(why) = saved {
            // The record is the budget: say so where it will be seen, and claim no report.
            crate::console::alert(format!(
                "error: the run record could not be written ({why}); a restart of run {} cannot know what it spent",
                ledger.run_id
            ));
            return None;
        }
        let (d, l) = (dir.clone(), ledger.clone());
        let written =
            tokio::task::spawn_blocking(move || crate::report::write_report(&d, &l).1).await;
        if !matches!(written, Ok(Ok(()))) {
            crate::console::alert(format!(
                "notice: could not write {}",
                dir.join("report.md").display()
            ));
            return Some(crate::ledger::Ledger {
                report_path: None,
                ..ledger
            });
        }
        Some(ledger)
    }

    /// What is not out within the flush time stays in the outbox for the next start.
    /// Between phases the next phase must not wait on a slow endpoint: at most a second.
    async fn flush_notifications(&mut self, ended: bool) {
        let Some(n) = self.sinks.notifier.take() else {
            return;
        };
        let flush = if ended {
            self.settings.notify.flush
        } else {
            self.settings.notify.flush.min(Duration::from_secs(1))
        };
        let report = n.finish(flush).await;
        if report.undelivered.is_empty() {
            return;
        }
        crate::console::alert(format!(
            "{} notifications not delivered within {}; they stay in {} and go out on the next start:",
            report.undelivered.len(),
            format_duration(flush),
            report.outbox.display()
        ));
        for u in &report.undelivered {
            crate::console::alert(format!("  {u}"));
        }
    }
}

/// How a plan ended, for its last event, its verdict and its state.
struct PlanSummary {
    detail: String,
    /// A phase was killed (exit 124 when nothing failed).
    killed: bool,
    /// Every phase ran to its end or its own cap: the plan completed.
    whole: bool,
}

/// "5 of 7 phases completed; BiGRU, GcnLite killed at their wall caps; eval not run".
pub fn summary_text(recs: &[PhaseRecord], total: usize) -> String {
    let done = recs
        .iter()
        .filter(|r| r.outcome == Outcome::Completed)
        .count();
    let mut parts = vec![format!("{done} of {total} phases completed")];
    // Kills grouped by reason, in the order they happened.
    let mut reasons: Vec<&str> = Vec::new();
    for r in recs.iter().filter(|r| r.outcome == Outcome::Killed) {
        let why = r.reason.as_deref().unwrap_or("unknown");
        if !reasons.contains(&why) {
            reasons.push(why);
        }
    }
    for why in reasons {
        let names: Vec<&str> = recs
            .iter()
            .filter(|r| {
                r.outcome == Outcome::Killed && r.reason.as_deref().unwrap_or("unknown") == why
            })
            .map(|r| r.name.as_str())
            .collect();
        let one = names.len() == 1;
        let how = match why {
            "wall" | "usd" => format!(
                "at {} {why} cap{}",
                if one { "its" } else { "their" },
                if one { "" } else { "s" }
            ),
            "signal" => "by a signal".to_string(),
            other => format!("by the {other} watchdog"),
        };
        parts.push(format!("{} killed {how}", names.join(", ")));
    }
    for r in recs
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Failed | Outcome::Stopped))
    {
        parts.push(format!("{} {}", r.name, r.outcome));
    }
    if recs.len() < total {
        parts.push(format!("{} not run", total - recs.len()));
    }
    parts.join("; ")
}
