//! What is guarded: the wrapped job's tree (spawned under the holder, its output read when
//! progress needs it) or the agent's GPU processes (found in each sample). The loop, the
//! state and the sinks are the same for both; only these few operations differ.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::{mpsc, watch};

use super::agent::{cmdline, Selector};
use super::output::{self, LineJudge, LineProgress, Tail};
use super::sampler::SampleMsg;
use crate::supervise::kill::{self as protocol, KillReport, Procs, Scope};
use crate::supervise::{tree, Job, SpawnError, SpawnOpts};
use crate::telemetry::devfiles;

/// The wrapped job: its holder, and the last lines of its output.
pub struct JobTarget {
    pub job: Job,
    pub tail: Tail,
    /// Why output.log is not kept (a FIFO or a link at its path), for the record's alarm.
    pub log_error: Option<String>,
}

/// The agent's targets: the GPU processes its selector picks from each sample.
pub struct GpuTargets {
    selector: Selector,
    /// This sample's targets.
    current: Vec<i32>,
    seen: HashSet<i32>,
}

pub enum Target {
    Job(JobTarget),
    Gpus(GpuTargets),
}

impl JobTarget {
    /// Spawns `command` under the holder. With `opts.capture`, its output is copied through
    /// costguard (to our stdout/stderr when `echo`, and to the capped `log`), and lines
    /// judged as progress come back on the returned channel. The holder holds
    /// `opts.deadline` before anything here (opening the log, say) could block.
    pub fn start(
        command: &[OsString],
        opts: SpawnOpts,
        judge: LineJudge,
        log: Option<(&Path, u64)>,
        echo: bool,
    ) -> Result<(JobTarget, Option<mpsc::Receiver<LineProgress>>), SpawnError> {
        let capture = opts.capture;
        let mut job = Job::spawn(command, opts)?;
        let tail = Tail::default();
        if !capture {
            return Ok((
                JobTarget {
                    job,
                    tail,
                    log_error: None,
                },
                None,
            ));
        }
        let (tx, rx) = mpsc::channel(64);
        // Never a hang (a FIFO there), never written through a link: an alarm instead.
        let mut log_error = None;
        let log = log
            .and_then(|(p, max)| match output::CappedLog::open(p, max) {
                Ok(l) => Some(l),
                Err(e) => {
                    log_error = Some(format!(
                        "the job's output is not kept in {}: {e}",
                        p.display()
                    ));
                    None
                }
            })
            .map(|l| Arc::new(Mutex::new(l)));
        let sinks = output::PumpSinks {
            judge: Arc::new(Mutex::new(judge)),
            tail: tail.clone(),
            progress: tx,
            log,
        };
        let streams = [(job.stdout.take(), 1), (job.stderr.take(), 2)];
        for (from, to) in streams {
            let Some(from) = from else { continue };
            let to = if echo { dup_fd(to).ok() } else { None };
            output::spawn_pump(from, to, sinks.clone()).map_err(SpawnError::Pipe)?;
        }
        Ok((
            JobTarget {
                job,
                tail,
                log_error,
            },
            Some(rx),
        ))
    }
}

/// Our own stdout or stderr, duplicated for a pump thread to own.
fn dup_fd(fd: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::BorrowedFd;
    // SAFETY: fds 1 and 2 are open for the life of the process; the borrow ends at once.
    let b = unsafe { BorrowedFd::borrow_raw(fd) };
    b.try_clone_to_owned()
}

impl GpuTargets {
    pub fn new(selector: Selector) -> GpuTargets {
        GpuTargets {
            selector,
            current: Vec::new(),
            seen: HashSet::new(),
        }
    }

    /// The kill scope: each target, everything below it, and the rest of its process group
    /// when that group is not the agent's own (a target in the agent's group is taken by
    /// pid and descendants, never skipped).
    fn scope(&self) -> Procs {
        let own_pgid = nix::unistd::getpgrp().as_raw();
        let all = tree::all();
        let mut roots: Vec<crate::ledger::Proc> = Vec::new();
        for pid in &self.current {
            let Some(st) = tree::stat(*pid) else { continue };
            roots.push(crate::ledger::Proc {
                pid: *pid,
                start_ticks: st.start_ticks,
            });
            if st.pgid > 1 && st.pgid != own_pgid {
                roots.extend(all.iter().filter(|p| p.pgid == st.pgid).map(|p| {
                    crate::ledger::Proc {
                        pid: p.pid,
                        start_ticks: p.start_ticks,
                    }
                }));
            }
        }
        Procs {
            roots,
            leaf: None,
            spare: vec![std::process::id() as i32, 1],
        }
    }
}

impl Target {
    /// Sends `sig` to every process of the target; returns how many it reached.
    pub fn signal(&mut self, sig: Signal) -> usize {
        let pids = match self {
            Target::Job(j) => j.job.members(),
            Target::Gpus(g) => g.scope().members(),
        };
        pids.iter()
            .filter(|p| kill(Pid::from_raw(**p), sig).is_ok())
            .count()
    }

    /// Hands the job's holder the current kill deadline (the agent has no holder).
    pub fn hold_deadline(&mut self, deadline: Option<(std::time::Instant, Duration, String)>) {
        if let Target::Job(j) = self {
            j.job.hold_deadline(deadline);
        }
    }

    /// The job's processes now outside its cgroup leaf, with their names.
    pub fn outside_leaf(&self) -> Vec<String> {
        let Target::Job(j) = self else {
            return Vec::new();
        };
        j.job
            .outside_leaf()
            .into_iter()
            .map(|p| format!("pid {p} ({})", tree::comm(p)))
            .collect()
    }

    /// Passes a signal costguard does not act on to the job's leader, as tini does (its
    /// workers are the leader's to tell); the agent forwards nothing. Returns whether it
    /// reached a process.
    pub fn forward(&mut self, sig: Signal) -> bool {
        let Target::Job(j) = self else { return false };
        j.job
            .leader()
            .is_some_and(|pid| kill(Pid::from_raw(pid), sig).is_ok())
    }

    /// Whether every target the agent has seen has ended (never true for the job, nor for
    /// an agent that has seen none).
    pub fn all_ended(&self) -> bool {
        match self {
            Target::Job(_) => false,
            Target::Gpus(g) => !g.seen.is_empty() && g.current.is_empty(),
        }
    }

    /// The job's last lines of output (none for the agent: it cannot read them).
    pub fn tail(&self) -> Vec<String> {
        match self {
            Target::Job(j) => j.tail.snapshot(),
            Target::Gpus(_) => Vec::new(),
        }
    }

    /// For the agent, picks this sample's targets from the GPU processes and puts them in
    /// the sample's pids; returns the targets never seen before, with their command lines.
    pub fn refine(&mut self, s: &mut SampleMsg) -> Vec<(i32, String)> {
        let Target::Gpus(g) = self else {
            return Vec::new();
        };
        if !matches!(s.gpus, Some(Ok(_))) {
            // A failed sample shows no processes: the targets are unknown, not gone.
            s.pids = g.current.clone();
            return Vec::new();
        }
        // GPU processes: those holding NVIDIA device files here, and NVML's pids where they
        // resolve here (bare metal, a hostPID node agent).
        let mut gpu_procs: Vec<i32> = s
            .holders
            .iter()
            .filter(|h| h.holds_any())
            .map(|h| h.pid)
            .collect();
        if let Some(Ok(gs)) = s.gpus.as_ref() {
            for gpu in gs {
                gpu_procs.extend(
                    gpu.procs
                        .iter()
                        .flatten()
                        .map(|p| p.pid as i32)
                        .filter(|p| devfiles::resolves(*p, gpu.minor, &s.holders)),
                );
            }
        }
        s.gpu_processes = gpu_procs.len();
        let mut targets: Vec<i32> = gpu_procs
            .into_iter()
            .filter(|p| g.selector.selects(*p))
            .collect();
        targets.sort_unstable();
        targets.dedup();
        let new = targets
            .iter()
            .filter(|t| g.seen.insert(**t))
            .map(|t| (*t, crate::redact::command_line(&[cmdline(*t).into()])))
            .collect();
        g.current = targets.clone();
        s.pids = targets;
        new
    }

    /// The kill protocol on the target. For the agent, the report's pids name what ended.
    pub async fn kill(
        &mut self,
        first: Signal,
        grace: Duration,
        force: Option<watch::Receiver<bool>>,
    ) -> KillReport {
        match self {
            Target::Job(j) => j.job.terminate(first, grace, force).await,
            Target::Gpus(g) => {
                let mut scope = g.scope();
                protocol::terminate(&mut scope as &mut dyn Scope, first, grace, None, force).await
            }
        }
    }

    /// The holder was killed from outside: the kill protocol on the job's process group,
    /// cgroup leaf and `recorded` members (the agent has no holder to lose).
    pub async fn kill_lost(
        &mut self,
        recorded: Vec<crate::ledger::Proc>,
        grace: Duration,
        force: watch::Receiver<bool>,
    ) -> KillReport {
        match self {
            Target::Job(j) => {
                j.job
                    .terminate_lost(recorded, Signal::SIGTERM, grace, Some(force))
                    .await
            }
            Target::Gpus(_) => KillReport::default(),
        }
    }

    /// After the job's leader ended by itself: whatever it left behind goes too, and the
    /// holder (which exits once it has reaped its last child) is waited for.
    pub async fn finish_leftovers(&mut self, grace: Duration, force: watch::Receiver<bool>) {
        let Target::Job(j) = self else { return };
        if j.job.gone() {
            return;
        }
        let left = j.job.members();
        if !left.is_empty() {
            crate::console::notice(format!(
                "the job's leader exited; ending {} leftover processes",
                left.len()
            ));
            let _ = j.job.terminate(Signal::SIGTERM, grace, Some(force)).await;
        } else if tokio::time::timeout(Duration::from_millis(200), j.job.wait_gone())
            .await
            .is_err()
        {
            // Nothing seemed left, yet the holder is still there: something was missed;
            // end it the long way.
            let _ = j.job.terminate(Signal::SIGTERM, grace, Some(force)).await;
        }
    }

    /// Waits for the holder to exit and removes the cgroup leaf (the job only).
    pub async fn close(&mut self) {
        if let Target::Job(j) = self {
            j.job.wait_gone().await;
            j.job.cleanup();
        }
    }
}
