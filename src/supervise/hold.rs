//! The holder: a small single-threaded helper (`costguard __hold`) that is the job's parent.
//!
//! It is a child subreaper, so every orphan of the job (a `setsid` daemon, a double fork)
//! re-parents to it instead of to init, and it reaps them all. It reports the leader's pid
//! and exit status to costguard on a pipe, exits once it has no children left (so its exit
//! means "the whole tree is gone"), and when costguard dies — even by SIGKILL — it notices
//! (PDEATHSIG, and `getppid()` polled as a backstop) and kills the whole tree within a second.

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

/// Runs the holder; returns its exit code.
pub fn main(status_fd: i32, cgroup: Option<&Path>, command: &[OsString]) -> u8 {
    // SAFETY: costguard dup2'd the write end of its status pipe onto `status_fd` for us; we
    // own it from here on and nothing else in this process uses that descriptor.
    let file = unsafe { File::from_raw_fd(status_fd) };
    let _ = nix::fcntl::fcntl(
        &file,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    let mut status = Status(file);
    let parent = getppid();
    if nix::sys::prctl::set_child_subreaper(true).is_err() {
        status.say("warn subreaper-unavailable");
    }
    let set = block_signals();
    let Some(leader) = spawn_job(command, cgroup, &mut status) else {
        return 1;
    };
    status.say(&format!("spawned {leader}"));
    if let Some(dir) = cgroup {
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
    reap_until_done(leader, parent, &set, cgroup, &mut status)
}

/// Blocks every signal in the holder: it takes them synchronously with sigtimedwait, and
/// none can kill it — not a USR1 that Slurm sends to every process of a step, nor a TERM
/// meant for the job — so the holder outlives the job it must report on. The job gets an
/// empty mask (reset in pre_exec) and default dispositions.
fn block_signals() -> SigSet {
    let set = SigSet::all();
    let _ = set.thread_block();
    for s in [Signal::SIGTTOU, Signal::SIGTTIN] {
        // SAFETY: restoring the default disposition installs no handler code.
        let _ = unsafe { nix::sys::signal::signal(s, nix::sys::signal::SigHandler::SigDfl) };
    }
    set
}

/// Starts the job (joining the cgroup leaf before exec); its pid, or None after saying why.
fn spawn_job(command: &[OsString], cgroup: Option<&Path>, status: &mut Status) -> Option<i32> {
    let Some((program, args)) = command.split_first() else {
        status.say(&format!("execfailed {}", libc::ENOENT));
        return None;
    };
    // The job (not the holder) joins the cgroup leaf: `cgroup.kill` then ends the whole job
    // but never the holder, which must live to report the leader's status.
    let procs_path = cgroup.and_then(|d| {
        std::ffi::CString::new(d.join("cgroup.procs").as_os_str().as_encoded_bytes()).ok()
    });
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    // SAFETY: between fork and exec we only make async-signal-safe calls (open, write,
    // close, sigemptyset, pthread_sigmask) on a path prepared before the fork.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            if let Some(p) = &procs_path {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd >= 0 {
                    libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                }
            }
            let mut empty = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut empty);
            libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            Ok(())
        });
    }
    match cmd.spawn() {
        Ok(child) => Some(child.id() as i32),
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(libc::EACCES);
            status.say(&format!("execfailed {errno}"));
            None
        }
    }
}

/// Reaps everything, reports the leader's end, and returns once no child is left — or kills
/// the whole tree when costguard is gone.
fn reap_until_done(
    leader: i32,
    parent: nix::unistd::Pid,
    set: &SigSet,
    cgroup: Option<&Path>,
    status: &mut Status,
) -> u8 {
    let mut leader_done = false;
    loop {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid.as_raw() == leader => {
                    leader_done = true;
                    status.say(&format!("exited {code}"));
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid.as_raw() == leader => {
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
            kill_everything(cgroup);
            return 0;
        }
        // Wake on a child's end, on costguard's death, or every 200 ms to look again.
        let _ = sigtimedwait(set, Duration::from_millis(200));
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

/// costguard is gone: the kill protocol with a second's grace, reaping as it goes, then
/// the leaf is removed.
fn kill_everything(cgroup: Option<&Path>) {
    let mut scope = Orphaned {
        me: std::process::id() as i32,
        leaf: cgroup.map(|d| Leaf {
            dir: d.to_path_buf(),
        }),
    };
    super::kill::terminate_blocking(&mut scope, Signal::SIGTERM, Duration::from_secs(1));
    while waitpid(None, None).is_ok() {}
    if let Some(l) = &scope.leaf {
        l.remove();
    }
}
