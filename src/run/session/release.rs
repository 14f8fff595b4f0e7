//! Releasing the box at the run's end: after the report is written and the notifications
//! (the kill alert among them) are flushed, once per run id — the ledger says so before the
//! call — retried with backoff for a bounded time, its result in the ledger, the event log,
//! the report and, when it fails, an `agent-error` (reason `release`, made by the state)
//! that is notified. The state decides whether the box is released (`state/closing.rs`).

use std::path::PathBuf;
use std::time::Instant;

use super::close::Effects;
use super::Session;
use crate::cloud::release::{self, Plan};
use crate::events::rfc3339;
use crate::ledger::{Ledger, Release};

/// A release called and not yet on record.
pub(super) struct InFlight {
    dir: PathBuf,
    ledger: Ledger,
    plan: Plan,
    began: Instant,
}

impl Session {
    /// The release call, on record first; its result and attempts (None: no call made —
    /// said why). What it needs to record the result is kept in `fx`.
    pub(super) async fn release_call(
        &mut self,
        fx: &mut Effects,
    ) -> Option<(Result<String, String>, u32)> {
        let plan = self.release.clone()?;
        let dir = self.state.id().run_dir.clone()?;
        let mut ledger = match Ledger::load(&dir) {
            Ok(Some(l)) => l,
            _ => {
                crate::console::alert(
                    "error: the box is NOT released: the run's ledger cannot be read, so a release could not be recorded first",
                );
                return None;
            }
        };
        if let Some(r) = &ledger.release {
            crate::console::alert(format!(
                "release: run {} already released its box ({}, {}); not again",
                ledger.run_id, r.how, r.state
            ));
            return None;
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
            return None;
        }
        crate::console::alert(format!("release: {}", plan.describe()));
        let began = Instant::now();
        let (result, attempts) =
            release::with_retries(&plan, &ledger, self.settings.release.retry_for, |f, n| {
                crate::console::alert(format!("release: attempt {n} failed: {}", f.message));
            })
            .await;
        fx.release = Some(InFlight {
            dir,
            ledger,
            plan,
            began,
        });
        Some((result, attempts))
    }

    /// The release's result into the ledger, the failure's event into the event log, the
    /// report again, the line for the person, and the failure notified.
    pub(super) async fn record_release(
        &mut self,
        r: InFlight,
        result: Result<String, String>,
        attempts: u32,
        failed: Option<Box<crate::events::Event>>,
    ) {
        let InFlight {
            dir,
            mut ledger,
            plan,
            began,
        } = r;
        if let Some(r) = ledger.release.as_mut() {
            r.attempts = attempts;
            r.took_seconds = Some(began.elapsed().as_secs_f64());
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
        if failed.is_some() {
            ledger.events += 1;
        }
        if let Err(e) = ledger.save(&dir) {
            crate::console::alert(format!("notice: the release result is not on record: {e}"));
        }
        if let Some(ev) = &failed {
            let _ = crate::ledger::append_event(&dir, ev);
        }
        let (d, l) = (dir.clone(), ledger.clone());
        let _ = tokio::task::spawn_blocking(move || crate::report::write_report(&d, &l)).await;
        crate::console::alert(match (&result, &failed) {
            (Ok(d), _) => format!(
                "release: box released: {d}; still billing: {}",
                plan.still_bills()
            ),
            (Err(_), Some(ev)) => format!("error: {}", ev.message),
            (Err(e), None) => format!("error: the box is NOT released ({e})"),
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
