//! How a session ends: the kill protocol (or the leader's leftovers), the "GPU freed?"
//! check, the verdict (outcome, exit code, detail), the summary line, the phase's and the
//! run's ending events, the final ledger and report, the exit hook and the notification
//! flush.

use std::ffi::OsString;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::Session;
use crate::events::{EventKind, KillReason};
use crate::exit::JobStatus;
use crate::ledger::Outcome;
use crate::run::action::{Ending, LoopEvent};
use crate::run::sources::Sources;
use crate::run::state::TargetKind;
use crate::run::state::Verdict;
use crate::run::target::Target;
use crate::units::{format_duration, format_money};

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

impl Session {
    /// Ends the session; returns the exit code and whether the run ended (false: a plan's
    /// next phase follows).
    pub async fn close(
        mut self,
        ending: Ending,
        mut target: Target,
        mut sources: Sources,
        command: &[OsString],
    ) -> (u8, bool) {
        // Give the terminal's bottom row back before the kill and summary.
        self.live = None;
        // A TERM or INT from here on (a kubelet stopping the pod during the kill, say) also
        // cuts the linger short: listening from the first moment of the close, none is lost.
        let stop = Stop::listen();
        let force = sources.force.clone();
        let grace = self.settings.kill_grace;
        let mut ended_pids = Vec::new();
        let ending = self.arm(ending, &mut target, &mut sources).await;
        match &ending {
            Ending::Kill {
                reason,
                evidence,
                first,
            } => {
                ended_pids = self
                    .kill(&mut target, *reason, evidence, *first, force)
                    .await;
            }
            Ending::Leader(_) => target.finish_leftovers(grace, force).await,
            Ending::HolderLost => ended_pids = self.kill_lost(&mut target, force).await,
            Ending::Stop(_) | Ending::Disarmed { .. } => {}
        }
        target.close().await;
        let leader = match &ending {
            Ending::Leader(s) => Some(*s),
            _ if self.state.kind() == TargetKind::Job => {
                sources.leader_status(Duration::from_secs(2)).await
            }
            _ => None,
        };
        drop(sources);
        if let Ending::Kill { reason, .. } = &ending {
            if reason.is_ceiling() {
                self.check_gpu_freed().await;
            }
        }
        let v = self.state.verdict(&ending, leader, &ended_pids);
        let last_line = target.tail().last().cloned();
        self.summary(&v, leader, command, last_line);
        let done = self.conclude(v).await;
        if done.1 {
            self.sinks.metrics.run_ended.set(1.0);
            // Watchers get the end before the process goes (a lingering one keeps serving it).
            crate::feed::global().drain(Duration::from_secs(1)).await;
            self.linger(stop).await;
        }
        done
    }

    /// Keeps /metrics and /status serving after the end, so the last scrape sees the kill
    /// and the final spend.
    async fn linger(&self, mut stop: Stop) {
        let d = self.settings.linger;
        if d.is_zero() || self.settings.listen.is_none() {
            return;
        }
        crate::console::say(format!(
            "serving /metrics and /status for {} more (--linger)",
            format_duration(d)
        ));
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = stop.wait() => {}
        }
    }

    /// The killed event, the kill on record, then the one kill protocol on the target.
    /// Returns the pids it reached.
    async fn kill(
        &mut self,
        target: &mut Target,
        reason: KillReason,
        evidence: &str,
        first: Signal,
        force: tokio::sync::watch::Receiver<bool>,
    ) -> Vec<i32> {
        self.kill_started = Some(std::time::Instant::now());
        // Processes that moved themselves out of the job's cgroup leaf are killed all the
        // same (they are still below the holder), and named: the leaf did not hold them.
        let outside = target.outside_leaf();
        let evidence = if outside.is_empty() {
            evidence.to_string()
        } else {
            format!(
                "{evidence}; outside costguard's cgroup: {}",
                outside.join(", ")
            )
        };
        let then = if reason.is_ceiling() {
            self.release_announcement().unwrap_or_default()
        } else {
            String::new()
        };
        self.emit(
            EventKind::Killed,
            Some(reason.as_str()),
            format!("{evidence}{then}"),
        );
        let now = self.now();
        self.sinks
            .record_kill(&self.state, reason.as_str(), &evidence, target.tail(), now);
        let grace = self.settings.kill_grace;
        if reason == KillReason::Signal && !grace.is_zero() {
            let again = if first == Signal::SIGINT {
                "Ctrl-C again"
            } else {
                "a second signal"
            };
            crate::console::alert(format!(
                "waiting up to {} for the job to end after {}; {again} kills it now",
                format_duration(grace),
                first.as_str()
            ));
        }
        let report = target.kill(first, grace, Some(force)).await;
        self.state.note_pids(&report.pids);
        if report.escalated && !grace.is_zero() {
            crate::console::alert(if report.took >= grace {
                format!(
                    "the job did not end within {} of {}: killed with SIGKILL",
                    format_duration(grace),
                    first.as_str()
                )
            } else {
                "killed with SIGKILL at once, as asked".to_string()
            });
        }
        tracing::info!(
            reason = reason.as_str(),
            signalled = report.signalled,
            escalated_to_kill = report.escalated,
            took_ms = report.took.as_secs_f64() * 1000.0,
            "the target is gone"
        );
        let late: Vec<i32> = report
            .escaped
            .iter()
            .copied()
            .filter(|p| !outside.iter().any(|o| o.starts_with(&format!("pid {p} "))))
            .collect();
        if !late.is_empty() {
            self.emit(
                EventKind::AgentError,
                Some("escaped"),
                format!("during the kill, processes of the job were found outside costguard's cgroup (killed all the same): {late:?}"),
            );
        }
        if !report.survivors.is_empty() {
            self.emit(
                EventKind::AgentError,
                Some("survivors"),
                format!(
                    "{} processes of the job survived the kill: {:?}",
                    report.survivors.len(),
                    report.survivors
                ),
            );
        }
        report.pids
    }

    /// The holder was killed from outside: the job must not run on unguarded. The kill
    /// protocol on what is left of it; returns the pids it reached.
    async fn kill_lost(
        &mut self,
        target: &mut Target,
        force: tokio::sync::watch::Receiver<bool>,
    ) -> Vec<i32> {
        crate::console::alert(
            "the holder process was lost (killed from outside?): ending the job's processes",
        );
        let recorded = self
            .sinks
            .recorder
            .as_ref()
            .map(|r| r.read(|l| l.members.clone()))
            .unwrap_or_default();
        let report = target
            .kill_lost(recorded, self.settings.kill_grace, force)
            .await;
        self.state.note_pids(&report.pids);
        let mut text = format!(
            "the holder process was lost; the kill protocol ended {} processes of the job {:?}",
            report.pids.len(),
            report.pids
        );
        if !report.survivors.is_empty() {
            text += &format!("; survivors {:?}", report.survivors);
        }
        self.emit(EventKind::AgentError, Some("holder-lost"), text);
        report.pids
    }

    /// The agent never claims a kill it did not make: at a ceiling with no target (none
    /// seen yet, or none running now) it stays armed, and the first GPU process its
    /// selector picks is killed at once. A signal while armed stops it, said as such.
    async fn arm(&mut self, ending: Ending, target: &mut Target, sources: &mut Sources) -> Ending {
        let Ending::Kill { evidence, .. } = &ending else {
            return ending;
        };
        if self.state.kind() != TargetKind::Agent || target.has_targets() {
            return ending;
        }
        let waiting = format!("over budget, no targets: the first GPU process selected is killed at once ({evidence})");
        crate::console::alert(&waiting);
        if let Some(r) = &self.sinks.recorder {
            r.update(|l| l.waiting_on = Some(waiting.clone()));
        }
        loop {
            match sources.next(None).await {
                LoopEvent::Sample(mut s) => {
                    for (pid, cmd) in target.refine(&mut s) {
                        let msg = format!("watching GPU process {pid}: {cmd}");
                        self.emit(EventKind::Started, Some("target"), msg);
                    }
                    if target.has_targets() {
                        return ending;
                    }
                }
                LoopEvent::Signal(sig) => {
                    return Ending::Disarmed {
                        signal: sig,
                        detail: format!(
                        "stopped by {} while over budget with no GPU process to kill ({evidence})",
                        sig.as_str()
                    ),
                    }
                }
                _ => {}
            }
        }
    }

    /// After a ceiling kill: does any process of the job still hold GPU memory?
    async fn check_gpu_freed(&mut self) {
        let Some(gpu) = self.gpu.clone() else { return };
        let Ok(gpus) = gpu.sample_when_free(Duration::from_secs(2)).await else {
            return;
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
        for h in held {
            self.emit(EventKind::AgentError, Some("gpu-not-freed"), h);
        }
    }

    /// The one summary line (and the job's last output line after a kill).
    fn summary(
        &self,
        v: &Verdict,
        leader: Option<JobStatus>,
        command: &[OsString],
        last_line: Option<String>,
    ) {
        let now = self.now();
        let e = self.state.engine();
        if self.state.kind() == TargetKind::Agent {
            crate::console::alert(format!(
                "agent {}: {}; ran {}, spent {}",
                v.outcome,
                v.detail,
                format_duration(now),
                format_money(e.spend(now))
            ));
            return;
        }
        if let (Some(JobStatus::ExecFailed(_)), Some(program)) = (leader, command.first()) {
            crate::console::alert(format!(
                "cannot run {program:?}: {}",
                v.detail.trim_start_matches("could not execute: ")
            ));
        }
        if matches!(v.outcome, Outcome::Killed | Outcome::Stopped) {
            if let Some(line) = last_line {
                crate::console::say(format!("last output: {line}"));
            }
        }
        let budget = self
            .settings
            .max_usd
            .map(|b| format!(" of {}", format_money(b)))
            .unwrap_or_default();
        let spent = if self.state.priced() {
            format!("spent {}{budget}", format_money(e.spend(now)))
        } else {
            "spend unknown".to_string()
        };
        let wasted = e.wasted(now);
        let wasted_text = if wasted > 0.0 {
            format!(", wasted {}", format_money(wasted))
        } else {
            String::new()
        };
        crate::console::alert(format!(
            "{}: {}; ran {}, {spent}{wasted_text}",
            v.outcome,
            v.detail,
            format_duration(now)
        ));
    }
}
