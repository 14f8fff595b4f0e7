//! Spawning the job under the holder, and the job as a scope of the kill protocol.
//!
//! The job runs under `costguard __hold` (see `hold.rs`) in its own process group, in a
//! cgroup v2 leaf when one can be made. Its members are the tree walk below the holder ∪ the
//! cgroup's members; "nothing is left" is the holder's exit: it is a subreaper that exits
//! only when it has no children, so the leader exiting never counts. The kill itself is
//! `kill.rs`, the one protocol every caller uses.

pub mod cgroup;
pub mod hold;
pub mod kill;
pub mod tree;

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncBufReadExt;
use tokio::process::{ChildStderr, ChildStdout};
use tokio::sync::{mpsc, watch};

use crate::exit::JobStatus;
use cgroup::Leaf;

/// The fd number the holder finds its status pipe on.
const STATUS_FD: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("failed to create the holder's status pipe: {0}")]
    Pipe(#[source] std::io::Error),
    #[error("failed to start the holder ({exe}): {source}")]
    Holder {
        exe: String,
        #[source]
        source: std::io::Error,
    },
}

/// What the holder told us.
#[derive(Debug, Clone, PartialEq)]
pub enum HolderMsg {
    Spawned(i32),
    Ended(JobStatus),
    Warn(String),
}

fn parse_msg(line: &str) -> Option<HolderMsg> {
    let (word, arg) = line.trim().split_once(' ')?;
    let n = || arg.trim().parse::<i32>().ok();
    Some(match word {
        "spawned" => HolderMsg::Spawned(n()?),
        "exited" => HolderMsg::Ended(JobStatus::Exited(n()?)),
        "signaled" => HolderMsg::Ended(JobStatus::Signaled(n()?)),
        "execfailed" => HolderMsg::Ended(JobStatus::ExecFailed(n()?)),
        "warn" => HolderMsg::Warn(arg.to_string()),
        _ => return None,
    })
}

pub use kill::KillReport;

pub struct Job {
    pub holder_pid: i32,
    pub leaf: Option<Leaf>,
    msgs: Option<mpsc::UnboundedReceiver<HolderMsg>>,
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
    /// The holder's exit status, once it has exited (a task waits on it).
    exit: watch::Receiver<Option<std::process::ExitStatus>>,
    /// The job's leader, once the holder has said it started.
    leader: watch::Receiver<Option<i32>>,
}

/// Makes costguard a subreaper (orphans of a lost holder come to us) and keeps job control
/// from stopping it. Call once, early, on the main thread.
pub fn prepare_supervisor() {
    let _ = nix::sys::prctl::set_child_subreaper(true);
    for s in [Signal::SIGTTOU, Signal::SIGTTIN] {
        // SAFETY: SIG_IGN installs no handler code.
        let _ = unsafe { nix::sys::signal::signal(s, nix::sys::signal::SigHandler::SigIgn) };
    }
}

impl Job {
    /// Starts `command` under the holder. `capture` pipes the job's stdout and stderr to us
    /// (for progress signals); otherwise they are inherited untouched.
    pub fn spawn(command: &[OsString], capture: bool, use_cgroup: bool) -> Result<Job, SpawnError> {
        let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
        let (rd, wr): (OwnedFd, OwnedFd) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| SpawnError::Pipe(e.into()))?;
        let leaf = if use_cgroup { Leaf::create() } else { None };
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("__hold")
            .arg("--status-fd")
            .arg(STATUS_FD.to_string());
        if let Some(l) = &leaf {
            cmd.arg("--cgroup").arg(&l.dir);
        }
        cmd.arg("--").args(command);
        cmd.process_group(0);
        if capture {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        let wr_fd = wr.as_raw_fd();
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // calls (prctl, dup2, signal) on values prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    hold::PARENT_DEATH_SIGNAL as libc::c_ulong,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::dup2(wr_fd, STATUS_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::signal(libc::SIGTTOU, libc::SIG_DFL);
                libc::signal(libc::SIGTTIN, libc::SIG_DFL);
                Ok(())
            });
        }
        let mut holder = cmd.spawn().map_err(|source| SpawnError::Holder {
            exe: exe.display().to_string(),
            source,
        })?;
        drop(wr);
        let holder_pid = holder.id().map(|p| p as i32).unwrap_or(-1);
        let (tx, msgs) = mpsc::unbounded_channel();
        let (leader_tx, leader) = watch::channel(None);
        let receiver =
            tokio::net::unix::pipe::Receiver::from_owned_fd(rd).map_err(SpawnError::Pipe)?;
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(receiver).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(m) = parse_msg(&line) {
                    if let HolderMsg::Spawned(pid) = m {
                        let _ = leader_tx.send(Some(pid));
                    }
                    let _ = tx.send(m);
                }
            }
        });
        let stdout = holder.stdout.take();
        let stderr = holder.stderr.take();
        let (exit_tx, exit) = watch::channel(None);
        tokio::spawn(async move {
            let st = holder.wait().await.unwrap_or_else(|_| {
                // Unknown is not success: a failed status makes the kill sweep for orphans.
                std::os::unix::process::ExitStatusExt::from_raw(1 << 8)
            });
            let _ = exit_tx.send(Some(st));
        });
        Ok(Job {
            holder_pid,
            leaf,
            msgs: Some(msgs),
            stdout,
            stderr,
            exit,
            leader,
        })
    }

    /// The holder's messages (pid, exit status); can be taken once.
    pub fn take_msgs(&mut self) -> mpsc::UnboundedReceiver<HolderMsg> {
        self.msgs
            .take()
            .unwrap_or_else(|| mpsc::unbounded_channel().1)
    }

    /// Every live process of the job (the holder excluded). With a cgroup leaf its member
    /// list is complete (the job joined it before exec) and no /proc walk is needed; an
    /// empty leaf (the join failed, or all is over) falls back to the walk.
    pub fn members(&self) -> Vec<i32> {
        if let Some(l) = &self.leaf {
            let procs: Vec<i32> = l
                .procs()
                .into_iter()
                .filter(|p| *p != self.holder_pid && tree::stat(*p).is_some_and(|s| !s.is_zombie()))
                .collect();
            if !procs.is_empty() {
                return procs;
            }
        }
        tree::live_descendants(self.holder_pid)
    }

    /// Sends `sig` to every process of the job; returns the pids it reached.
    pub fn signal_all(&self, sig: Signal) -> Vec<i32> {
        self.members()
            .into_iter()
            .filter(|p| kill(Pid::from_raw(*p), sig).is_ok())
            .collect()
    }

    /// The job's leader (the holder's first child), once it has started.
    pub fn leader(&self) -> Option<i32> {
        *self.leader.borrow()
    }

    /// Waits (at most `within`) until the leader has started or the holder is gone, so a
    /// signal sent right after the start is never lost on a job not yet there.
    pub async fn wait_started(&self, within: Duration) {
        let (mut leader, mut exit) = (self.leader.clone(), self.exit.clone());
        let _ = tokio::time::timeout(within, async {
            tokio::select! {
                _ = leader.wait_for(|l| l.is_some()) => {}
                _ = exit.wait_for(|s| s.is_some()) => {}
            }
        })
        .await;
    }

    /// Whether the holder has exited (so the whole tree is gone).
    pub fn gone(&self) -> bool {
        self.exit.borrow().is_some()
    }

    /// Waits until the holder exits.
    pub async fn wait_gone(&mut self) -> std::process::ExitStatus {
        let mut rx = self.exit.clone();
        let status = rx.wait_for(|s| s.is_some()).await.map(|s| *s);
        match status {
            Ok(s) => s.unwrap_or_default(),
            Err(_) => std::os::unix::process::ExitStatusExt::from_raw(1 << 8),
        }
    }

    /// The kill protocol on the job: `first` and SIGCONT to everything, `grace`, then
    /// SIGKILL and `cgroup.kill` until the holder has exited. A `true` on `force` (a second
    /// Ctrl-C) skips the rest of the grace.
    pub async fn terminate(
        &mut self,
        first: Signal,
        grace: Duration,
        force: Option<watch::Receiver<bool>>,
    ) -> KillReport {
        self.wait_started(Duration::from_secs(2)).await;
        let (gone_tx, gone_rx) = watch::channel(self.gone());
        let mut exit = self.exit.clone();
        let relay = tokio::spawn(async move {
            if exit.wait_for(|s| s.is_some()).await.is_ok() {
                let _ = gone_tx.send(true);
            }
        });
        let mut report = kill::terminate(self, first, grace, Some(gone_rx), force).await;
        relay.abort();
        if report.escalated && !self.gone() {
            // Ten seconds of SIGKILL did not empty the tree: kill the holder itself so its
            // orphans come to us, and report whatever is still there.
            let _ = kill(Pid::from_raw(self.holder_pid), Signal::SIGKILL);
            let _ = self.wait_gone().await;
        }
        // A holder that exited by itself reaped everything; one that died leaves orphans
        // with us (we are a subreaper too).
        let clean = self.exit.borrow().is_some_and(|s| s.success());
        if !clean {
            report.survivors = sweep_orphans(&report.pids);
        }
        if let Some(l) = &self.leaf {
            report.survivors.extend(l.procs());
            l.remove();
        }
        report
    }

    /// After the job ended by itself: removes the cgroup leaf once empty.
    pub fn cleanup(&self) {
        if let Some(l) = &self.leaf {
            l.remove();
        }
    }
}

impl kill::Scope for Job {
    fn members(&mut self) -> Vec<i32> {
        Job::members(self)
    }
    fn kill_atomically(&mut self) {
        if let Some(l) = &self.leaf {
            l.kill_all();
        }
    }
    fn gone(&mut self) -> bool {
        Job::gone(self)
    }
}

/// Processes of the job that re-parented to costguard itself (the holder was lost), and
/// everything below them: kill and reap them. Returns any still alive afterwards.
pub fn sweep_orphans(known: &[i32]) -> Vec<i32> {
    let me = std::process::id() as i32;
    let procs = tree::all();
    let mut doomed: Vec<tree::ProcStat> = Vec::new();
    for p in tree::descendants_in(&procs, me) {
        if known.contains(&p.pid) {
            doomed.push(p);
            doomed.extend(tree::descendants_in(&procs, p.pid));
        }
    }
    for p in &doomed {
        let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
    }
    for p in doomed.iter().filter(|p| p.ppid == me) {
        let _ = nix::sys::wait::waitpid(Pid::from_raw(p.pid), None);
    }
    doomed
        .iter()
        .map(|p| p.pid)
        .filter(|p| tree::stat(*p).is_some_and(|s| !s.is_zombie()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_messages() {
        assert_eq!(parse_msg("spawned 42"), Some(HolderMsg::Spawned(42)));
        assert_eq!(
            parse_msg("exited 3\n"),
            Some(HolderMsg::Ended(JobStatus::Exited(3)))
        );
        assert_eq!(
            parse_msg("signaled 9"),
            Some(HolderMsg::Ended(JobStatus::Signaled(9)))
        );
        assert_eq!(
            parse_msg("execfailed 2"),
            Some(HolderMsg::Ended(JobStatus::ExecFailed(2)))
        );
        assert_eq!(parse_msg("bogus"), None);
    }
}
