//! How a session ends: the kill protocol (or the leader's leftovers), the "GPU freed?"
//! check, the verdict (outcome, exit code, detail), the summary line, the phase's and the
//! run's ending events, the final ledger and report, the exit hook and the notification
//! flush.

use std::ffi::OsString;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::Session;
use crate::events::{EventKind, KillReason};
use crate::exit::{self, JobStatus};
use crate::ledger::{Outcome, PhaseRecord, RunState as LedgerState};
use crate::run::action::{Ending, LoopEvent};
use crate::run::sources::Sources;
use crate::run::state::TargetKind;
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

/// How the session ended, decided once.
struct Verdict {
    code: u8,
    outcome: Outcome,
    detail: String,
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
        self.live = None; // gives the terminal's bottom row back before the kill and summary
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
            Ending::HolderLost | Ending::Stop(_) => {}
        }
        target.close().await;
        let leader = match &ending {
            Ending::Leader(s) => Some(*s),
            _ if self.state.kind() == TargetKind::Job => {
                sources.leader_status(Duration::from_secs(2)).await
            }
            _ => None,
        };
        // From here on TERM or INT only cuts the linger short (listening before the sources
        // go, so a kubelet's TERM during the close is not lost).
        let stop = Stop::listen();
        drop(sources);
        if let Ending::Kill { reason, .. } = &ending {
            if reason.is_ceiling() {
                self.check_gpu_freed().await;
            }
        }
        let v = self.verdict(&ending, leader, &ended_pids);
        let last_line = target.tail().last().cloned();
        self.summary(&v, leader, command, last_line);
        let done = self.conclude(v).await;
        if done.1 {
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
        self.emit(
            EventKind::Killed,
            Some(reason.as_str()),
            evidence.to_string(),
        );
        let now = self.now();
        self.sinks
            .record_kill(&self.state, reason.as_str(), evidence, target.tail(), now);
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
                    return Ending::Stop(format!(
                        "stopped by {} while over budget with no GPU process to kill ({evidence})",
                        sig.as_str()
                    ))
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

    fn verdict(&self, ending: &Ending, leader: Option<JobStatus>, pids: &[i32]) -> Verdict {
        let v = |code, outcome, detail: String| Verdict {
            code,
            outcome,
            detail,
        };
        match (self.state.kind(), ending, leader) {
            (TargetKind::Agent, Ending::Kill { evidence, .. }, _) => v(
                exit::CEILING_KILLED,
                Outcome::Killed,
                format!("{evidence}; ended pids {pids:?}"),
            ),
            (TargetKind::Agent, Ending::Stop(d), _) => v(0, Outcome::Completed, d.clone()),
            (
                _,
                Ending::Kill {
                    reason, evidence, ..
                },
                _,
            ) if reason.is_ceiling() => v(exit::CEILING_KILLED, Outcome::Killed, evidence.clone()),
            (_, Ending::Kill { evidence, .. }, Some(s)) => v(
                s.code(),
                Outcome::Stopped,
                format!("{evidence}; job {}", s.describe()),
            ),
            (_, Ending::Kill { evidence, .. }, None) => {
                v(exit::OWN_FAILURE, Outcome::Stopped, evidence.clone())
            }
            (_, _, Some(s @ JobStatus::Exited(0))) => v(s.code(), Outcome::Completed, s.describe()),
            (_, _, Some(s)) => v(s.code(), Outcome::Failed, s.describe()),
            (_, _, None) => v(
                exit::OWN_FAILURE,
                Outcome::Failed,
                "the holder process was lost; the job's status is unknown".into(),
            ),
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

    /// Ending events, the record, the hook and the flush.
    async fn conclude(&mut self, v: Verdict) -> (u8, bool) {
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
                crate::run::exit_hook::run(cmd, l).await;
            }
        }
        self.flush_notifications(ended).await;
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
        let written = tokio::task::spawn_blocking(move || {
            let events = crate::ledger::read_events(&d);
            let text = crate::report::render(&l, &events);
            crate::fsutil::write_replace(&d.join("report.md"), text.as_bytes())
        })
        .await;
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
