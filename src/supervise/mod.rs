//! Spawning the job under the holder and the kill protocol.
//!
//! The job runs under `costguard __hold` (see `hold.rs`) in its own process group, in a
//! cgroup v2 leaf when one can be made. A kill sends the first signal and SIGCONT to every
//! process of the job (tree walk ∪ cgroup members), waits out the grace, then sends SIGKILL
//! (and `cgroup.kill`) until nothing is left. "Nothing is left" is the holder's exit: it is a
//! subreaper that exits only when it has no children, so the leader exiting never counts.

pub mod cgroup;
pub mod hold;
pub mod tree;

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, ChildStderr, ChildStdout};
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

/// How a kill went.
#[derive(Debug, Clone, Default)]
pub struct KillReport {
    /// Distinct processes signalled.
    pub signalled: usize,
    /// Whether the grace ran out and SIGKILL was needed.
    pub escalated: bool,
    /// From the first signal until the whole tree was gone.
    pub took: Duration,
    /// Processes of the job still alive when we gave up (should always be 0).
    pub survivors: Vec<i32>,
    /// Every pid that was signalled.
    pub pids: Vec<i32>,
}

pub struct Job {
    holder: Child,
    pub holder_pid: i32,
    pub leaf: Option<Leaf>,
    msgs: Option<mpsc::UnboundedReceiver<HolderMsg>>,
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
    holder_exit: Option<std::process::ExitStatus>,
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
        let receiver =
            tokio::net::unix::pipe::Receiver::from_owned_fd(rd).map_err(SpawnError::Pipe)?;
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(receiver).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(m) = parse_msg(&line) {
                    if tx.send(m).is_err() {
                        break;
                    }
                }
            }
        });
        let stdout = holder.stdout.take();
        let stderr = holder.stderr.take();
        Ok(Job {
            holder,
            holder_pid,
            leaf,
            msgs: Some(msgs),
            stdout,
            stderr,
            holder_exit: None,
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
        self.signal_all_then(sig, None)
    }

    /// Sends `sig`, then `then` (e.g. SIGCONT after SIGTERM), to every process, from one
    /// enumeration.
    pub fn signal_all_then(&self, sig: Signal, then: Option<Signal>) -> Vec<i32> {
        let pids = self.members();
        pids.into_iter()
            .filter(|p| {
                let ok = kill(Pid::from_raw(*p), sig).is_ok();
                if let Some(t) = then {
                    let _ = kill(Pid::from_raw(*p), t);
                }
                ok
            })
            .collect()
    }

    /// Whether the holder has exited (so the whole tree is gone).
    pub fn gone(&mut self) -> bool {
        if self.holder_exit.is_some() {
            return true;
        }
        if let Ok(Some(st)) = self.holder.try_wait() {
            self.holder_exit = Some(st);
            return true;
        }
        false
    }

    /// Waits until the holder exits.
    pub async fn wait_gone(&mut self) -> std::process::ExitStatus {
        if let Some(st) = self.holder_exit {
            return st;
        }
        let st = self.holder.wait().await.unwrap_or_else(|_| {
            // Unknown is not success: a failed status makes `terminate` sweep for orphans.
            std::os::unix::process::ExitStatusExt::from_raw(1 << 8)
        });
        self.holder_exit = Some(st);
        st
    }

    /// The kill protocol: `first` and SIGCONT to everything, `grace`, then SIGKILL until the
    /// tree is gone. A `true` on `force` (a second Ctrl-C) skips the rest of the grace.
    pub async fn terminate(
        &mut self,
        first: Signal,
        grace: Duration,
        force: &mut watch::Receiver<bool>,
    ) -> KillReport {
        let start = Instant::now();
        let mut report = KillReport::default();
        let mut seen: Vec<i32> = self.signal_all_then(first, Some(Signal::SIGCONT));
        report.signalled = seen.len();
        if !*force.borrow() {
            let forced = async {
                while force.changed().await.is_ok() {
                    if *force.borrow() {
                        return;
                    }
                }
                std::future::pending::<()>().await
            };
            tokio::select! {
                _ = self.wait_gone() => {}
                _ = tokio::time::sleep(grace) => {}
                _ = forced => {}
            }
        }
        let mut kill_rounds = 0u32;
        while !self.gone() {
            report.escalated = true;
            if let Some(l) = &self.leaf {
                l.kill_all();
            }
            for p in self.signal_all(Signal::SIGKILL) {
                if !seen.contains(&p) {
                    seen.push(p);
                }
            }
            kill_rounds += 1;
            if kill_rounds > 1000 {
                // Ten seconds of SIGKILL did not empty the tree: kill the holder itself so
                // its orphans come to us, and report whatever is still there.
                let _ = kill(Pid::from_raw(self.holder_pid), Signal::SIGKILL);
                let _ = self.wait_gone().await;
                break;
            }
            tokio::select! {
                _ = self.wait_gone() => {}
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
        report.signalled = report.signalled.max(seen.len());
        report.took = start.elapsed();
        // A holder that exited by itself reaped everything; one that died leaves orphans
        // with us (we are a subreaper too).
        if !self.holder_exit.is_some_and(|s| s.success()) {
            report.survivors = sweep_orphans(&seen);
        }
        if let Some(l) = &self.leaf {
            report.survivors.extend(l.procs());
            l.remove();
        }
        report.pids = seen;
        report
    }

    /// After the job ended by itself: removes the cgroup leaf once empty.
    pub fn cleanup(&self) {
        if let Some(l) = &self.leaf {
            l.remove();
        }
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
