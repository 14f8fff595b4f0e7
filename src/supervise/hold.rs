//! The holder: a small single-threaded helper forked from costguard (`holder.rs`; named
//! `costguard-hold`) that is the job's parent.
//!
//! It is a child subreaper, so every orphan of the job (a `setsid` daemon, a double fork)
//! re-parents to it instead of to init, and it reaps them all. It reports the leader's pid
//! and exit status to costguard on a pipe, exits once it has no children left (so its exit
//! means "the whole tree is gone"), and when costguard dies — even by SIGKILL — it notices
//! (PDEATHSIG, and `getppid()` polled as a backstop) and kills the whole tree within a second.
//! It also holds costguard's current kill deadline (`deadman.rs`): when costguard has not
//! begun its kill by then (a blocked loop, a stopped process), the holder kills the tree
//! itself and, once the first signal is out, says why in a file it makes in the run
//! directory opened for it in advance.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::getppid;

use super::cgroup::Leaf;
use super::deadman::{self, Record, Switch};
use super::tree;

/// The signal costguard asks the kernel to send the holder when costguard dies.
pub const PARENT_DEATH_SIGNAL: Signal = Signal::SIGUSR2;

/// The status pipe to costguard: one line per message.
struct Status(File);

impl Status {
    fn say(&mut self, line: &str) {
        let _ = self.0.write_all(format!("{line}\n").as_bytes());
    }
}

/// What costguard handed the holder: descriptors (already open) and the job.
pub struct Opts<'a> {
    /// The status pipe to costguard.
    pub status_fd: i32,
    /// The deadline pipe from costguard (`deadman.rs`).
    pub control_fd: Option<i32>,
    /// The run directory, to record a deadline kill in.
    pub record_fd: Option<i32>,
    pub cgroup: Option<&'a Path>,
    pub command: &'a [OsString],
}

/// Takes over a descriptor costguard left open for us, closed on the job's exec.
fn adopt(fd: i32) -> File {
    // SAFETY: costguard dup2'd this descriptor for us before exec; we own it from here on and
    // nothing else in this process uses that number.
    let file = unsafe { File::from_raw_fd(fd) };
    let _ = nix::fcntl::fcntl(
        &file,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    file
}

/// Runs the holder; returns its exit code.
pub fn main(o: &Opts) -> u8 {
    crate::timing::mark("holder");
    let mut status = Status(adopt(o.status_fd));
    let control = o.control_fd.map(adopt);
    if let Some(c) = &control {
        let _ = nix::fcntl::fcntl(
            c,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
    }
    let mut guard = Guard {
        switch: Switch::new(control),
        record: Record::new(o.record_fd.map(adopt)),
        cgroup: o.cgroup,
    };
    let parent = getppid();
    if nix::sys::prctl::set_child_subreaper(true).is_err() {
        status.say("warn subreaper-unavailable");
    }
    let set = block_signals();
    let Some(leader) = spawn_job(o.command, o.cgroup, &mut status) else {
        return 1;
    };
    crate::timing::mark("job-spawned");
    status.say(&format!("spawned {leader}"));
    if let Some(dir) = o.cgroup {
        let leaf = Leaf {
            dir: dir.to_path_buf(),
        };
        // A leader that already exited is a zombie, no longer listed in cgroup.procs: that
        // is no failure to join.
        let procs = leaf.procs();
        if !procs.contains(&leader) && tree::stat(leader).is_some_and(|s| !s.is_zombie()) {
            status.say("warn cgroup-join-failed: the job runs outside its cgroup leaf");
        }
    }
    reap_until_done(leader, parent, &set, &mut guard, &mut status)
}

/// What the holder enforces on its own: the armed deadline and where to record a kill.
struct Guard<'a> {
    switch: Switch,
    record: Record,
    cgroup: Option<&'a Path>,
}

impl Guard<'_> {
    /// costguard has not begun its kill by the armed deadline: the kill protocol here, and
    /// the account of it in the record (and on the status pipe, should costguard read it).
    fn deadline_kill(&mut self, status: &mut Status) {
        let Some(arm) = self.switch.armed.take() else {
            return;
        };
        let when = crate::events::unix_now();
        status.say(&format!(
            "warn deadline-kill: costguard had not begun its kill after {}; the holder is killing the job",
            arm.why
        ));
        let why = format!(
            "at unix time {when:.3} the holder (pid {}) killed the job itself: costguard had not \
             begun its kill {}s after {}\n",
            std::process::id(),
            deadman::SLACK.as_secs(),
            arm.why
        );
        // The first signal before the record (a file made on a disk that may be full or
        // hung); the record before the grace is waited out, so a holder killed during it
        // has still said why.
        let record = &mut self.record;
        let r = kill_everything(self.cgroup, arm.grace, || record.write(&why));
        self.record.write(&format!(
            "SIGTERM to {} processes, then {} after {:.3}s; survivors: {:?}\n",
            r.signalled,
            if r.escalated { "SIGKILL" } else { "no SIGKILL" },
            r.took.as_secs_f64(),
            r.survivors
        ));
    }
}

/// Blocks every signal in the holder: it takes them synchronously with sigtimedwait, and
/// none can kill it — not a USR1 that Slurm sends to every process of a step, nor a TERM
/// meant for the job — so the holder outlives the job it must report on. The job gets an
/// empty mask (reset in pre_exec) and default dispositions.
fn block_signals() -> SigSet {
    let set = SigSet::all();
    let _ = set.thread_block();
    // An ignored SIGCHLD (inherited through exec) would have the kernel reap every child
    // unseen: the leader's status would never come. Default, as coreutils `timeout` does.
    for s in [Signal::SIGTTOU, Signal::SIGTTIN, Signal::SIGCHLD] {
        // SAFETY: restoring the default disposition installs no handler code.
        let _ = unsafe { nix::sys::signal::signal(s, nix::sys::signal::SigHandler::SigDfl) };
    }
    set
}

/// Starts the job inside the cgroup leaf (`spawn.rs`); its pid, or None after saying why.
fn spawn_job(command: &[OsString], cgroup: Option<&Path>, status: &mut Status) -> Option<i32> {
    // The job (not the holder) is in the cgroup leaf: `cgroup.kill` then ends the whole job
    // but never the holder, which must live to report the leader's status.
    let started = super::spawn::Prepared::new(command, cgroup).and_then(|p| p.spawn());
    match started {
        Ok(pid) => Some(pid),
        Err(errno) => {
            status.say(&format!("execfailed {errno}"));
            None
        }
    }
}

/// Reaps everything, reports the leader's end, and returns once no child is left — or kills
/// the whole tree when costguard is gone, or has not begun its kill by the armed deadline.
fn reap_until_done(
    leader: i32,
    parent: nix::unistd::Pid,
    set: &SigSet,
    guard: &mut Guard,
    status: &mut Status,
) -> u8 {
    let mut leader_done = false;
    loop {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid.as_raw() == leader => {
                    crate::timing::mark("job-ended");
                    leader_done = true;
                    status.say(&format!("exited {code}"));
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid.as_raw() == leader => {
                    crate::timing::mark("job-ended");
                    leader_done = true;
                    status.say(&format!("signaled {}", sig as i32));
                }
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => continue,
                Err(Errno::ECHILD) if leader_done => return 0,
                Err(Errno::ECHILD) => break,
                Err(Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
        if getppid() != parent {
            kill_everything(guard.cgroup, Duration::from_secs(1), || {});
            return 0;
        }
        guard.switch.poll();
        let until = guard.switch.until(deadman::mono_now_ns());
        if until == Some(Duration::ZERO) {
            // Every child is reaped by the time the kill returns: the tree is gone.
            guard.deadline_kill(status);
            return 0;
        }
        // Wake on a child's end, on costguard's death, at the deadline, or every 200 ms to
        // look again (a new deadline comes on the pipe).
        let wait = until.map_or(Duration::from_millis(200), |u| {
            u.min(Duration::from_millis(200))
        });
        let _ = sigtimedwait(set, wait);
    }
}

fn sigtimedwait(set: &SigSet, timeout: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `set` is a valid sigset, the info pointer may be null, `ts` lives on the stack.
    let r = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    (r > 0).then_some(r)
}

/// The holder's view of the job when costguard is gone: everything below the holder and
/// in the leaf (the holder itself is outside it); reaped between rounds.
struct Orphaned {
    me: i32,
    leaf: Option<Leaf>,
}

impl super::kill::Scope for Orphaned {
    fn members(&mut self) -> Vec<i32> {
        let mut pids = tree::live_descendants(self.me);
        if let Some(l) = &self.leaf {
            for p in l.procs() {
                if p != self.me && !pids.contains(&p) {
                    pids.push(p);
                }
            }
        }
        pids
    }
    fn kill_atomically(&mut self) {
        if let Some(l) = &self.leaf {
            l.kill_all();
        }
    }
    fn between_rounds(&mut self) {
        while let Ok(ws) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            if ws == WaitStatus::StillAlive {
                break;
            }
        }
    }
}

/// costguard is gone (a second's grace) or late (its grace): the kill protocol, reaping as
/// it goes, then the leaf is removed.
fn kill_everything(
    cgroup: Option<&Path>,
    grace: Duration,
    signalled: impl FnOnce(),
) -> super::kill::KillReport {
    let mut scope = Orphaned {
        me: std::process::id() as i32,
        leaf: cgroup.map(|d| Leaf {
            dir: d.to_path_buf(),
        }),
    };
    let report = super::kill::terminate_blocking(&mut scope, Signal::SIGTERM, grace, signalled);
    while waitpid(None, None).is_ok() {}
    if let Some(l) = &scope.leaf {
        l.remove();
    }
    report
}
