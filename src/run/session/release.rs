//! Releasing the box at the run's end: after the report is written and the notifications
//! (the kill alert among them) are flushed, once per run id — the ledger says so before the
//! call — retried with backoff for a bounded time, its result in the ledger, the event log,
//! the report and, when it fails, an `agent-error` (reason `release`) that is notified.

use std::time::Instant;

use super::Session;
use crate::cloud::release::{self, On, Plan};
use crate::events::{rfc3339, EventKind};
use crate::ledger::{Ledger, Outcome, Release};

impl Session {
    /// Whether this ending releases the box (a plan: only its last ending).
    pub(super) fn release_due(&self, outcome: Outcome) -> Option<&Plan> {
        let plan = self.release.as_ref()?;
        if self.state.idle_box_fired() {
            return Some(plan);
        }
        let due = match self.settings.release.on {
            On::Kill => outcome == Outcome::Killed,
            On::End => outcome != Outcome::Stopped,
        };
        due.then_some(plan)
    }

    /// What the kill alert says of the release to come (a plan's phase kill that goes on to
    /// the next phase releases nothing).
    pub(super) fn release_announcement(&self) -> Option<String> {
        let plan = self.release_due(Outcome::Killed)?;
        let last = self
            .settings
            .phase
            .as_ref()
            .is_none_or(|p| p.last || p.abort_on_kill);
        last.then(|| format!("; then the box is released: {}", plan.describe()))
    }

    /// The release itself, at the very end of the run.
    pub(super) async fn release_box(&mut self, outcome: Outcome) {
        let Some(plan) = self.release_due(outcome).cloned() else {
            return;
        };
        let Some(dir) = self.state.id().run_dir.clone() else {
            return;
        };
        let mut ledger = match Ledger::load(&dir) {
            Ok(Some(l)) => l,
            _ => {
                crate::console::alert(
                    "error: the box is NOT released: the run's ledger cannot be read, so a release could not be recorded first",
                );
                return;
            }
        };
        if let Some(r) = &ledger.release {
            crate::console::alert(format!(
                "release: run {} already released its box ({}, {}); not again",
                ledger.run_id, r.how, r.state
            ));
            return;
        }
        let since_kill = self.kill_started.map(|k| k.elapsed().as_secs_f64());
        ledger.release = Some(Release {
            how: plan.describe(),
            state: "requested".into(),
            requested_at: rfc3339(std::time::SystemTime::now()),
            seconds_after_kill: since_kill,
            still_bills: plan.still_bills().into(),
            ..Release::default()
        });
        // Once per run id: on record before the call, or no call.
        if let Err(e) = ledger.save(&dir) {
            crate::console::alert(format!(
                "error: the box is NOT released: the release could not be recorded first ({e})"
            ));
            return;
        }
        crate::console::alert(format!("release: {}", plan.describe()));
        let t = Instant::now();
        let mut failures = Vec::new();
        let (result, attempts) =
            release::with_retries(&plan, &ledger, self.settings.release.retry_for, |f, n| {
                crate::console::alert(format!("release: attempt {n} failed: {}", f.message));
                failures.push(f.message.clone());
            })
            .await;
        self.record_release(&dir, &mut ledger, &plan, result, attempts, t)
            .await;
    }

    async fn record_release(
        &mut self,
        dir: &std::path::Path,
        ledger: &mut Ledger,
        plan: &Plan,
        result: Result<String, String>,
        attempts: u32,
        t: Instant,
    ) {
        let ok = result.is_ok();
        if let Some(r) = ledger.release.as_mut() {
            r.attempts = attempts;
            r.took_seconds = Some(t.elapsed().as_secs_f64());
            match &result {
                Ok(d) => {
                    r.state = "released".into();
                    r.detail = Some(d.clone());
                }
                Err(e) => {
                    r.state = "failed".into();
                    r.detail = Some(e.clone());
                }
            }
        }
        let text = match &result {
            Ok(d) => format!("box released: {d}; still billing: {}", plan.still_bills()),
            Err(e) => format!(
                "the box is NOT released after {attempts} attempts ({e}): it keeps billing until stopped by hand ({})",
                plan.describe()
            ),
        };
        // A failure is an alarm that reaches a person; a success is on record and was
        // announced in the kill alert.
        let failed = (!ok).then(|| {
            let now = self.now();
            let ev = self
                .state
                .event(EventKind::AgentError, Some("release"), text.clone(), now);
            ledger.events += 1;
            ev
        });
        if let Err(e) = ledger.save(dir) {
            crate::console::alert(format!("notice: the release result is not on record: {e}"));
        }
        if let Some(ev) = &failed {
            let _ = crate::ledger::append_event(dir, ev);
        }
        let (d, l) = (dir.to_path_buf(), ledger.clone());
        let _ = tokio::task::spawn_blocking(move || crate::report::write_report(&d, &l)).await;
        crate::console::alert(if ok {
            format!("release: {text}")
        } else {
            format!("error: {text}")
        });
        if let Some(ev) = failed {
            self.notify_after_end(&ev).await;
        }
    }

    /// An event after the run's notifications were flushed: a notifier of its own, flushed
    /// at once (what it cannot deliver stays in the outbox for the next start).
    async fn notify_after_end(&mut self, ev: &crate::events::Event) {
        let mut notices = Vec::new();
        let n = match crate::notify::Notifier::start(
            self.settings.notify.clone(),
            &self.settings.state_dir,
            self.sinks.metrics.clone(),
            &mut notices,
        ) {
            Ok(n) => n,
            Err(_) => return,
        };
        n.send(ev);
        let report = n.finish(self.settings.notify.flush).await;
        if !report.undelivered.is_empty() {
            crate::console::alert(format!(
                "{} notifications not delivered; they stay in {}",
                report.undelivered.len(),
                report.outbox.display()
            ));
        }
    }
}
