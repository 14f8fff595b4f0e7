//! The session's end on record: the final ledger, the series and the report, and the
//! notification flush (effects the state asks for in its ending).

use std::time::Duration;

use super::Session;
use crate::ledger::RecordState;
use crate::units::format_duration;

impl Session {
    /// Final ledger state, then the report from the ledger and the event log.
    pub(super) async fn close_record(
        &mut self,
        state: RecordState,
        code: u8,
        detail: &str,
    ) -> Option<crate::ledger::Ledger> {
        let now = self.now();
        self.publish(now);
        self.sinks.sample_series(&self.state, now);
        let series_saved = self.sinks.finish_series();
        let series = self.sinks.series_now();
        let Some(rec) = self.sinks.recorder.take() else {
            series_saved.await;
            return None;
        };
        let dir = rec.run_dir.clone();
        rec.update(|l| {
            l.state = state;
            l.exit_code = Some(code);
            l.outcome_detail = Some(detail.to_string());
            l.report_path = Some(dir.join("report.md"));
        });
        // The series, the ledger and the report are written at once: none waits on another's
        // disk. The ledger (two fsyncs) on the blocking pool; the report, once every event is
        // in the event log, and the series on this thread meanwhile (no fsync: neither makes
        // the ledger wait, and no thread is made for them at every run's end).
        let d = dir.clone();
        let report = |l: crate::ledger::Ledger| async move {
            // A panic in the report costs the report, never the rest of the close (the exit
            // code, the notifications, the hook, the release).
            let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                crate::report::write_with(&d, &l, &series)
            }));
            matches!(written, Ok((_, Ok(()))))
        };
        let (ledger, saved, reported) = rec.close_then(series_saved, report).await;
        if let Err(why) = saved {
            // The record is the budget: say so where it will be seen, and claim no report.
            crate::console::alert(format!(
                "error: the run record could not be written ({why}); a restart of run {} cannot know what it spent",
                ledger.run_id
            ));
            return None;
        }
        if !reported {
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
    pub(super) async fn flush_notifications(&mut self, ended: bool) {
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
