//! Spawning the job under the holder, and the job as a scope of the kill protocol.
//!
//! The job runs under the holder (`hold.rs`; a fork of costguard, not a second exec:
//! `holder.rs`) in its own process group, in a cgroup v2 leaf when one can be made (the job
//! is created inside it: `spawn.rs`). Its members are the tree walk below the holder ∪ the
//! cgroup's members; "nothing is left" is the holder's exit: it is a subreaper that exits
//! only when it has no children, so the leader exiting never counts. The kill itself is
//! `kill.rs`, the one protocol every caller uses.

pub(crate) mod cgroup;
pub(crate) mod deadman;
pub(crate) mod hold;
mod holder;
pub(crate) mod kill;
mod lost;
mod spawn;
pub(crate) mod tree;

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, watch};

use crate::exit::JobStatus;
use cgroup::Leaf;

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

/// How to start the job.
#[derive(Default)]
pub struct SpawnOpts {
    /// Pipe the job's stdout and stderr to us (for progress signals); otherwise they are
    /// inherited untouched.
    pub capture: bool,
    pub use_cgroup: bool,
    /// The run directory, where the holder records a kill it makes itself (opened here,
    /// before it starts).
    pub record: Option<std::path::PathBuf>,
    /// The kill deadline the holder holds from its first instant: (deadline, grace, why).
    pub deadline: Option<(std::time::Instant, Duration, String)>,
    /// Work of costguard's own done while the holder starts the job (which `spawn` waits
    /// for anyway): on the main thread, on the other CPU from the job's exec.
    pub meanwhile: Option<Box<dyn FnOnce() + Send>>,
}

pub struct Job {
    pub holder_pid: i32,
    pub leaf: Option<Leaf>,
    /// The holder's dead man's switch (`deadman.rs`).
    control: Option<deadman::Control>,
    /// Processes found below the holder but outside the cgroup leaf (escaped it).
    escaped: Vec<i32>,
    msgs: Option<mpsc::UnboundedReceiver<HolderMsg>>,
    /// The job's stdout and stderr, when captured (`SpawnOpts::capture`).
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    /// The holder's exit status, once it has exited (a task waits on it).
    exit: watch::Receiver<Option<std::process::ExitStatus>>,
    /// The job's leader, once the holder has said it started.
    leader: watch::Receiver<Option<i32>>,
}

/// Undoes what costguard's parent may have set that would blind it, as coreutils `timeout`
/// does: an ignored SIGCHLD (`(trap '' CHLD; exec costguard …)`) has the kernel reap the
/// holder unseen, so its end would never be noticed; a blocked mask would keep TERM, INT,
/// HUP and the forwarded signals from costguard's handlers. Other dispositions are left as
/// inherited: an ignore meant for the whole command (`nohup`'s HUP, a background job's INT
/// and QUIT) reaches the job, since the holder is spawned before costguard's own handlers
/// exist (and handlers, unlike ignores, do not survive exec). Call first, on the main thread.
pub fn reset_signals() {
    // SAFETY: SIG_DFL installs no handler code; sigprocmask on the only thread so far.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        let mut empty = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
}

/// The task that reads the holder's status pipe: its messages, and the leader once known.
fn read_status(
    rd: OwnedFd,
) -> Result<
    (
        mpsc::UnboundedReceiver<HolderMsg>,
        watch::Receiver<Option<i32>>,
    ),
    SpawnError,
> {
    let (tx, msgs) = mpsc::unbounded_channel();
    let (leader_tx, leader) = watch::channel(None);
    let receiver = tokio::net::unix::pipe::Receiver::from_owned_fd(rd).map_err(SpawnError::Pipe)?;
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
    Ok((msgs, leader))
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

/// The holder's descriptors and costguard's ends of them, each of the holder's numbered 10
/// or above and close-on-exec here.
struct HolderFds {
    status_rd: OwnedFd,
    control_wr: OwnedFd,
    /// The job's stdout and stderr, read here, when its output is captured.
    output: Option<(OwnedFd, OwnedFd)>,
    theirs: holder::Inherited,
}

fn high(fd: OwnedFd) -> std::io::Result<OwnedFd> {
    let n = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))?;
    // SAFETY: F_DUPFD_CLOEXEC just returned this new descriptor; nothing else owns it.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(n) })
}

/// Opens the run directory the holder records a kill of its own in (`deadman::Record`),
/// after taking away what an earlier holder recorded there (the resume already read it).
fn open_record(dir: &std::path::Path) -> Option<OwnedFd> {
    let stale = dir.join(deadman::RECORD_FILE);
    // Only a file or a link is taken away; a directory in its place stays and fails the write.
    if std::fs::symlink_metadata(&stale).is_ok_and(|m| !m.is_dir()) {
        let _ = std::fs::remove_file(&stale);
    }
    spawn::open_dir(dir)
}

impl HolderFds {
    fn open(opts: &SpawnOpts) -> std::io::Result<HolderFds> {
        let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
        let (status_rd, status_wr) = nix::unistd::pipe2(cloexec)?;
        let (control_rd, control_wr) = nix::unistd::pipe2(cloexec)?;
        let (output, theirs_output) = if opts.capture {
            let (out_rd, out_wr) = nix::unistd::pipe2(cloexec)?;
            let (err_rd, err_wr) = nix::unistd::pipe2(cloexec)?;
            (Some((out_rd, err_rd)), Some((high(out_wr)?, high(err_wr)?)))
        } else {
            (None, None)
        };
        Ok(HolderFds {
            status_rd,
            control_wr,
            output,
            theirs: holder::Inherited {
                status: high(status_wr)?,
                control: high(control_rd)?,
                record: opts
                    .record
                    .as_deref()
                    .and_then(open_record)
                    .map(high)
                    .transpose()?,
                output: theirs_output,
            },
        })
    }

    /// costguard's end of the deadline pipe, non-blocking, with the first deadline already
    /// in it (so the holder holds it before anything here can block).
    fn control(&self, opts: &SpawnOpts) -> std::io::Result<deadman::Control> {
        let w = self.control_wr.try_clone()?;
        nix::fcntl::fcntl(
            &w,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        let mut c = deadman::Control::new(std::fs::File::from(w));
        if let Some((at, grace, why)) = &opts.deadline {
            c.arm(*at, *grace, why.clone());
        }
        Ok(c)
    }
}

impl Job {
    /// Starts `command` under the holder (a fork of costguard, `holder.rs`), which holds
    /// `opts.deadline` from its start.
    pub fn spawn(command: &[OsString], opts: SpawnOpts) -> Result<Job, SpawnError> {
        let fds = HolderFds::open(&opts).map_err(SpawnError::Pipe)?;
        let control = fds.control(&opts).map_err(SpawnError::Pipe)?;
        let leaf = if opts.use_cgroup {
            Leaf::create()
        } else {
            None
        };
        crate::timing::mark("leaf");
        let start = holder::Start {
            cgroup: leaf.as_ref().map(|l| l.dir.clone()),
            command: command.to_vec(),
        };
        let holder_pid =
            holder::fork(&fds.theirs, &start).map_err(|source| SpawnError::Holder {
                exe: "costguard (fork)".into(),
                source,
            })?;
        crate::timing::mark("holder-started");
        // While the holder starts the job.
        if let Some(l) = &leaf {
            l.tidy_stale_siblings();
        }
        if let Some(f) = opts.meanwhile {
            f();
        }
        // Our copies of the holder's ends go now: the status pipe's end of file must mean
        // the holder is gone.
        let HolderFds {
            status_rd,
            control_wr,
            output,
            theirs,
        } = fds;
        drop((control_wr, theirs));
        let (exit_tx, exit) = watch::channel(None);
        holder::watch_exit(holder_pid, move |st| {
            crate::timing::mark("holder-reaped");
            let _ = exit_tx.send(Some(st));
        })
        .map_err(SpawnError::Pipe)?;
        let (msgs, leader) = read_status(status_rd)?;
        let (stdout, stderr) = output.unzip();
        Ok(Job {
            holder_pid,
            leaf,
            control: Some(control),
            escaped: Vec::new(),
            msgs: Some(msgs),
            stdout,
            stderr,
            exit,
            leader,
        })
    }

    /// Hands the holder the current kill deadline (None: no ceiling is armed).
    pub fn hold_deadline(&mut self, deadline: Option<(std::time::Instant, Duration, String)>) {
        let Some(c) = self.control.as_mut() else {
            return;
        };
        match deadline {
            Some((at, grace, why)) => c.arm(at, grace, why),
            None => c.send(deadman::Msg::Disarm),
        }
    }

    /// The holder's messages (pid, exit status); can be taken once.
    pub fn take_msgs(&mut self) -> mpsc::UnboundedReceiver<HolderMsg> {
        self.msgs
            .take()
            .unwrap_or_else(|| mpsc::unbounded_channel().1)
    }

    /// Every live process of the job (the holder excluded): the cgroup leaf's members and
    /// the tree walk below the holder, both — a process that moved itself out of the leaf is
    /// still below the holder, and one that escaped the tree (setsid, double fork to a
    /// subreaper elsewhere) is still in the leaf.
    pub fn members(&self) -> Vec<i32> {
        self.members_and_outside().0
    }

    /// The members, and those of them found below the holder but outside the cgroup leaf.
    fn members_and_outside(&self) -> (Vec<i32>, Vec<i32>) {
        // The walk first: a process it finds existed before the leaf is read, so if it is
        // in the leaf, the leaf's list shows it (children are born in their parent's leaf).
        let walk = tree::live_descendants(self.holder_pid);
        let Some(l) = &self.leaf else {
            return (walk, Vec::new());
        };
        let inside = l.procs();
        // Alive (and no zombie) after the leaf was read means alive while it was read: a
        // process that died in between is gone, not escaped.
        let outside: Vec<i32> = walk
            .iter()
            .copied()
            .filter(|p| !inside.contains(p))
            .filter(|p| tree::stat(*p).is_some_and(|s| !s.is_zombie()))
            .collect();
        let mut pids: Vec<i32> = inside
            .into_iter()
            .filter(|p| *p != self.holder_pid && tree::stat(*p).is_some_and(|s| !s.is_zombie()))
            .collect();
        pids.extend(outside.iter().copied());
        (pids, outside)
    }

    /// Processes of the job now outside its cgroup leaf (empty without a leaf).
    pub fn outside_leaf(&self) -> Vec<i32> {
        self.members_and_outside().1
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
        // The holder finishes this kill should we stall in it: its switch is re-armed at the
        // end of our grace plus its slack (never earlier, so it never races us).
        self.hold_deadline(Some((
            std::time::Instant::now() + grace,
            Duration::from_secs(1),
            format!(
                "costguard began its own kill ({} first, {} grace)",
                first.as_str(),
                crate::units::format_duration(grace)
            ),
        )));
        self.wait_started(Duration::from_secs(2)).await;
        self.escaped.clear();
        let (gone_tx, gone_rx) = watch::channel(self.gone());
        let mut exit = self.exit.clone();
        let relay = tokio::spawn(async move {
            if exit.wait_for(|s| s.is_some()).await.is_ok() {
                let _ = gone_tx.send(true);
            }
        });
        let mut report = kill::terminate(self, first, grace, Some(gone_rx), force).await;
        relay.abort();
        report.escaped = std::mem::take(&mut self.escaped);
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

    /// The holder was killed from outside: the kill protocol on what is left of the job (see
    /// `lost.rs`), `recorded` being the members last written to the ledger.
    pub async fn terminate_lost(
        &mut self,
        recorded: Vec<tree::Proc>,
        first: Signal,
        grace: Duration,
        force: Option<watch::Receiver<bool>>,
    ) -> KillReport {
        let mut scope = lost::Lost::new(self.holder_pid, self.leaf.clone(), recorded);
        let mut report = kill::terminate(&mut scope, first, grace, None, force).await;
        // The last of them died as our children: reap them rather than leave zombies.
        kill::Scope::between_rounds(&mut scope);
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
        let (pids, outside) = self.members_and_outside();
        for p in outside {
            if !self.escaped.contains(&p) {
                self.escaped.push(p);
            }
        }
        pids
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
