//! How a session's end is recorded: the state's conclusion (the phase's and the run's
//! ending events, a plan's own verdict) performed — the final ledger and report, the exit
//! hook and the notification flush.

use std::time::Duration;

use super::Session;
use crate::ledger::{Outcome, RunState as LedgerState};
use crate::run::state::Verdict;
use crate::units::format_duration;

impl Session {
    /// Ending events, the record, the hook and the flush.
    pub(super) async fn conclude(&mut self, v: Verdict) -> (u8, bool) {
        let now = self.now();
        let mut acts = Vec::new();
        let c = self.state.conclude(&v, now, &mut acts);
        if let (Some(rec), Some(r)) = (&c.phase, &self.sinks.recorder) {
            r.update(|l| {
                l.phases.push(rec.clone());
                l.step = None;
            });
        }
        for a in acts {
            match a {
                crate::run::action::Action::Emit(ev) => {
                    self.sinks.emit(&ev);
                    self.publish(now);
                }
                crate::run::action::Action::Say(t) => crate::console::say(t),
                _ => {}
            }
        }
        let (code, detail, overall, ended) = (c.code, c.detail.clone(), c.overall, c.ended);
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
        if let Some(line) = c.plan_line {
            // The plan's own last word: not the last phase's.
            crate::console::alert(line);
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
