//! How a session's end is recorded: the phase's and the run's ending events, a plan's own
//! verdict, the final ledger and report, the exit hook and the notification flush.

use std::time::Duration;

use super::close::Verdict;
use super::Session;
use crate::events::EventKind;
use crate::exit;
use crate::ledger::{Outcome, PhaseRecord, RunState as LedgerState};
use crate::units::format_duration;

impl Session {
    /// Ending events, the record, the hook and the flush.
    pub(super) async fn conclude(&mut self, v: Verdict) -> (u8, bool) {
        let ended = self.run_ends(v.outcome);
        let all_completed = self.end_phase(&v, ended);
        if ended {
            self.end_run(&v, all_completed);
        }
        let (code, detail) = if ended && self.settings.phase.is_some() {
            self.plan_verdict(v.code)
        } else {
            (v.code, v.detail.clone())
        };
        let overall = match (&self.settings.phase, ended) {
            (Some(_), true) if all_completed => LedgerState::Completed,
            (Some(_), true) if v.outcome == Outcome::Completed => LedgerState::Failed,
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

    /// Whether the run ends with this session (a plan's next phase follows otherwise).
    fn run_ends(&self, outcome: Outcome) -> bool {
        let Some(p) = &self.settings.phase else {
            return true;
        };
        let now = self.now();
        let spend = self.state.engine().spend(now);
        let elapsed = self.state.carried().elapsed + now.as_secs_f64();
        let run_cap_hit = self.settings.max_usd.is_some_and(|b| spend >= b - 1e-9)
            || self
                .settings
                .max_wall
                .is_some_and(|w| elapsed >= w.as_secs_f64() - 1e-3);
        p.last
            || run_cap_hit
            || matches!(outcome, Outcome::Failed | Outcome::Stopped)
            || (outcome == Outcome::Killed && p.abort_on_kill)
    }

    /// A plan's phase on record and its `phase-completed` event. Returns whether every
    /// phase of the plan has completed (for a single command: whether it did).
    fn end_phase(&mut self, v: &Verdict, ended: bool) -> bool {
        let Some(p) = self.settings.phase.clone() else {
            return v.outcome == Outcome::Completed;
        };
        let now = self.now();
        let reason = self.state.engine().killed().map(|r| r.as_str().to_string());
        let record = PhaseRecord {
            name: p.name.clone(),
            outcome: v.outcome,
            elapsed_seconds: now.as_secs_f64(),
            expected_seconds: p.expected.map(|d| d.as_secs_f64()),
            spend_dollars: self.state.engine().spend(now) - self.state.carried().spend,
            reason: reason.clone(),
        };
        let mut phases = Vec::new();
        if let Some(r) = &self.sinks.recorder {
            r.update(|l| {
                l.phases.push(record);
                phases = l.phases.clone();
            });
        }
        let outcome = v.outcome.as_str();
        self.emit(
            EventKind::PhaseCompleted,
            reason.as_deref().or(Some(outcome)),
            format!(
                "phase {}/{} {}: {outcome}: {}",
                p.index + 1,
                p.total,
                p.name,
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
        phases.iter().all(|r| r.outcome == Outcome::Completed) && phases.len() == p.total
    }

    /// The run's own ending event: completed or failed (a kill already has its event).
    fn end_run(&mut self, v: &Verdict, all_completed: bool) {
        match (&self.settings.phase.clone(), v.outcome) {
            (None, Outcome::Completed) => self.emit(EventKind::Completed, None, v.detail.clone()),
            (None, Outcome::Failed) => self.emit(EventKind::Failed, None, v.detail.clone()),
            (None, _) => {}
            (Some(p), _) if all_completed => self.emit(
                EventKind::Completed,
                None,
                format!("all {} phases completed", p.total),
            ),
            (Some(p), o) => self.emit(
                EventKind::Failed,
                Some(o.as_str()),
                format!(
                    "plan ended at phase {}/{} {}: {o}: {}",
                    p.index + 1,
                    p.total,
                    p.name,
                    v.detail
                ),
            ),
        }
    }

    /// A plan's ending speaks for the whole plan: 124 if any phase was killed.
    fn plan_verdict(&self, code: u8) -> (u8, String) {
        let total = self.settings.phase.as_ref().map_or(0, |p| p.total);
        let recs = self
            .sinks
            .recorder
            .as_ref()
            .map(|r| r.snapshot().phases)
            .unwrap_or_default();
        let done = recs
            .iter()
            .filter(|r| r.outcome == Outcome::Completed)
            .count();
        let others: Vec<String> = recs
            .iter()
            .filter(|r| r.outcome != Outcome::Completed)
            .map(|r| {
                let why = r.reason.as_deref().map(|x| format!(" ({x})"));
                format!("{} {}{}", r.name, r.outcome, why.unwrap_or_default())
            })
            .collect();
        let killed = recs.iter().any(|r| r.outcome == Outcome::Killed);
        let code = if code == 0 && killed {
            exit::CEILING_KILLED
        } else {
            code
        };
        let mut d = format!("{done} of {total} phases completed");
        if !others.is_empty() {
            d += &format!("; {}", others.join(", "));
        }
        (code, d)
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
