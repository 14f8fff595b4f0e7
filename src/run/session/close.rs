//! The session's ending, performed: the state decides each step (`state/closing.rs`) and
//! answers each effect's result with the next; this is the thin loop that performs them —
//! the kill protocol on the target, the leader's status, the "GPU freed?" check, the record,
//! the hook, the flush, the release and the linger.

use std::collections::VecDeque;
use std::time::Duration;

use super::Session;
use crate::run::action::{Action, Done, Ending, LoopEvent};
use crate::run::sources::Sources;
use crate::run::target::Target;
use crate::units::format_duration;

/// TERM or INT after the loop: ends the linger early (a kubelet stopping the pod).
struct Stop(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

impl Stop {
    fn listen() -> Stop {
        use tokio::signal::unix::{signal, SignalKind};
        Stop(
            signal(SignalKind::terminate())
                .ok()
                .zip(signal(SignalKind::interrupt()).ok()),
        )
    }

    async fn wait(&mut self) {
        match self.0.as_mut() {
            Some((term, int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            None => std::future::pending().await,
        }
    }
}

/// What the ending's effects work on.
pub(super) struct Effects {
    target: Target,
    /// The loop's sources, until the leader's status is known.
    sources: Option<Sources>,
    stop: Stop,
    force: tokio::sync::watch::Receiver<bool>,
    /// A release in flight: its plan, the ledger it is recorded in, when it began.
    pub(super) release: Option<super::release::InFlight>,
}

impl Session {
    /// Ends the session: the state's ending, one effect at a time, each result handed back
    /// to it, until it says exit. Returns the exit code and whether the run ended (false: a
    /// plan's next phase follows).
    pub async fn close(mut self, target: Target, sources: Sources) -> (u8, bool) {
        // Give the terminal's bottom row back before the kill and summary.
        self.live = None;
        // A TERM or INT from here on (a kubelet stopping the pod during the kill, say) also
        // cuts the linger short: listening from the first moment of the close, none is lost.
        let stop = Stop::listen();
        let force = sources.force.clone();
        let mut fx = Effects {
            target,
            sources: Some(sources),
            stop,
            force,
            release: None,
        };
        let mut queue: VecDeque<Action> = VecDeque::new();
        let mut next = Some(Done::LoopStopped);
        loop {
            if let Some(d) = next.take() {
                let now = self.now();
                queue.extend(self.state.handle(LoopEvent::Done(d), now));
            }
            let Some(a) = queue.pop_front() else {
                tracing::error!("the ending stopped without an exit");
                return (crate::exit::OWN_FAILURE, true);
            };
            if let Action::Exit { code, ended } = a {
                return (code, ended);
            }
            next = self.effect(a, &mut fx).await;
        }
    }

    /// One action of the ending performed; its result, when it has one.
    async fn effect(&mut self, a: Action, fx: &mut Effects) -> Option<Done> {
        let now = self.now();
        match a {
            Action::AwaitStop(d) => {
                let sig = match fx.sources.as_mut() {
                    Some(s) => s.stop_signal_within(d).await,
                    None => None,
                };
                Some(Done::StopSignal(sig))
            }
            Action::FindOutside => Some(Done::OutsideLeaf(fx.target.outside_leaf())),
            Action::RecordKill { reason, evidence } => {
                let tail = fx.target.tail();
                self.sinks
                    .record_kill(&self.state, reason.as_str(), &evidence, tail, now);
                None
            }
            Action::Kill { first, grace } => {
                self.kill_started = Some(std::time::Instant::now());
                let force = fx.force.clone();
                let report = fx.target.kill(first, grace, Some(force)).await;
                tracing::info!(
                    signalled = report.signalled,
                    escalated_to_kill = report.escalated,
                    took_ms = report.took.as_secs_f64() * 1000.0,
                    "the target is gone"
                );
                Some(Done::Killed(report))
            }
            Action::KillLost { grace } => {
                let recorded = self
                    .sinks
                    .recorder
                    .as_ref()
                    .map(|r| r.read(|l| l.members.clone()))
                    .unwrap_or_default();
                let force = fx.force.clone();
                Some(Done::Killed(
                    fx.target.kill_lost(recorded, grace, force).await,
                ))
            }
            Action::FinishLeftovers { grace } => {
                let force = fx.force.clone();
                fx.target.finish_leftovers(grace, force).await;
                Some(Done::Leftovers)
            }
            Action::CloseTarget => {
                fx.target.close().await;
                Some(Done::TargetClosed(fx.target.tail().last().cloned()))
            }
            Action::AwaitLeader(d) => {
                let s = match fx.sources.as_mut() {
                    Some(s) => s.leader_status(d).await,
                    None => None,
                };
                Some(Done::Leader(s))
            }
            Action::StopSources => {
                fx.sources = None;
                None
            }
            Action::CheckGpuFreed => Some(Done::GpuHeld(self.gpu_held().await)),
            other => self.record_effect(other, fx, now).await,
        }
    }

    /// The ending's effects on the record, the notifications, the box and the endpoint;
    /// the loop's own actions (events, lines, publishing) as in the loop.
    async fn record_effect(&mut self, a: Action, fx: &mut Effects, now: Duration) -> Option<Done> {
        match a {
            Action::RecordPhase(rec) => {
                if let Some(r) = &self.sinks.recorder {
                    r.update(|l| {
                        l.phases.push(*rec);
                        l.step = None;
                    });
                }
                None
            }
            Action::CloseRecord {
                state,
                code,
                detail,
            } => Some(Done::RecordClosed(
                self.close_record(state, code, &detail).await.map(Box::new),
            )),
            Action::PublishEnd {
                state,
                code,
                detail,
                report,
            } => {
                self.sinks
                    .publish_end(state.as_str(), code, &detail, report.as_deref());
                // `/events` ends with the run: its exit status, outcome and words.
                crate::feed::global().end(&serde_json::json!({
                    "run_id": self.state.id().run_id,
                    "exit_code": code,
                    "outcome": state.as_str(),
                    "detail": detail,
                    "report_path": report,
                }));
                None
            }
            Action::Hook(l) => {
                if let Some(cmd) = &self.settings.on_exit {
                    crate::run::exit_hook::run(cmd, &l, self.settings.on_exit_timeout).await;
                }
                None
            }
            Action::Flush { ended } => {
                self.flush_notifications(ended).await;
                Some(Done::Flushed)
            }
            Action::Release => Some(Done::Released(self.release_call(fx).await)),
            Action::RecordRelease {
                result,
                attempts,
                failed,
            } => {
                if let Some(r) = fx.release.take() {
                    self.record_release(r, result, attempts, failed).await;
                }
                Some(Done::ReleaseRecorded)
            }
            Action::MarkEnded => {
                self.sinks.metrics.run_ended.set(1.0);
                // Watchers get the end before the process goes (a lingering one keeps serving it).
                crate::feed::global().drain(Duration::from_secs(1)).await;
                None
            }
            Action::Linger(d) => {
                crate::console::say(format!(
                    "serving /metrics and /status for {} more (--linger)",
                    format_duration(d)
                ));
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = fx.stop.wait() => {}
                }
                Some(Done::Lingered)
            }
            other => {
                let end: Option<Ending> = self.perform(vec![other], &mut fx.target, now);
                if let Some(e) = end {
                    tracing::error!(ending = ?e, "an ending after the loop's");
                }
                None
            }
        }
    }

    /// After a ceiling kill: what of the job still holds GPU memory, in words.
    async fn gpu_held(&self) -> Vec<String> {
        let Some(gpu) = self.gpu.clone() else {
            return Vec::new();
        };
        let Ok(gpus) = gpu.sample_when_free(Duration::from_secs(2)).await else {
            return Vec::new();
        };
        let mut held = Vec::new();
        let existing = gpus
            .iter()
            .flat_map(|g| g.procs.iter().flatten())
            .map(|p| p.pid as i32)
            .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        let holders = crate::telemetry::devfiles::scan_all(existing.collect::<Vec<_>>());
        let t = self.state.telemetry();
        for g in &gpus {
            // Processes of another PID namespace (NVML's host pids) on a GPU the job held.
            if t.whole_gpus && t.job_gpus_seen.contains(&g.index) {
                let outside: Vec<u64> = g
                    .procs
                    .iter()
                    .flatten()
                    .filter(|p| {
                        !crate::telemetry::devfiles::resolves(p.pid as i32, g.minor, &holders)
                    })
                    .map(|p| p.used_bytes.unwrap_or(0))
                    .collect();
                if outside.iter().any(|b| *b > 0) {
                    held.push(format!(
                        "after the kill, {} processes outside this PID namespace still hold {} on GPU {}",
                        outside.len(),
                        crate::units::format_bytes(outside.iter().sum()),
                        g.index
                    ));
                }
            }
            for p in g.procs.iter().flatten() {
                if self.state.job_pids().contains(&(p.pid as i32)) && p.used_bytes.unwrap_or(1) > 0
                {
                    let what = p
                        .used_bytes
                        .map(crate::units::format_bytes)
                        .unwrap_or_else(|| "memory".into());
                    held.push(format!(
                        "after the kill, pid {} still holds {what} on GPU {}",
                        p.pid, g.index
                    ));
                }
            }
        }
        held
    }
}
