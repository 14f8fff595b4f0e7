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
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{getppid, Pid};

use super::cgroup::Leaf;
use super::tree;

/// The signal costguard asks the kernel to send the holder when costguard dies.
pub const PARENT_DEATH_SIGNAL: Signal = Signal::SIGUSR2;

/// Runs the holder; returns its exit code. `parent` is costguard's pid as costguard saw it.
pub fn main(status_fd: i32, cgroup: Option<&Path>, command: &[OsString]) -> u8 {
    // SAFETY: costguard dup2'd the write end of its status pipe onto `status_fd` for us; we
    // own it from here on and nothing else in this process uses that descriptor.
    let mut status = unsafe { File::from_raw_fd(status_fd) };
    let _ = nix::fcntl::fcntl(
        &status,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    let parent = getppid();
    let mut say = |line: String| {
        let _ = status.write_all(format!("{line}\n").as_bytes());
    };

    if nix::sys::prctl::set_child_subreaper(true).is_err() {
        say("warn subreaper-unavailable".into());
    }
    // The job (not the holder) joins the cgroup leaf, in pre_exec below: `cgroup.kill` then
    // ends the whole job but never the holder, which must live to report the leader's status.
    let procs_path = cgroup.and_then(|d| {
        std::ffi::CString::new(d.join("cgroup.procs").as_os_str().as_encoded_bytes()).ok()
    });
    // Signals are taken synchronously with sigtimedwait; the job gets an empty mask (reset
    // in pre_exec below) and default dispositions.
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        PARENT_DEATH_SIGNAL,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        set.add(s);
    }
    let _ = set.thread_block();
    for s in [Signal::SIGTTOU, Signal::SIGTTIN] {
        // SAFETY: restoring the default disposition installs no handler code.
        let _ = unsafe { nix::sys::signal::signal(s, nix::sys::signal::SigHandler::SigDfl) };
    }

    let Some((program, args)) = command.split_first() else {
        say(format!("execfailed {}", libc::ENOENT));
        return 1;
    };
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
    let leader = match cmd.spawn() {
        Ok(child) => child.id() as i32,
        Err(e) => {
            say(format!(
                "execfailed {}",
                e.raw_os_error().unwrap_or(libc::EACCES)
            ));
            return 1;
        }
    };
    say(format!("spawned {leader}"));
    if let Some(dir) = cgroup {
        let leaf = Leaf {
            dir: dir.to_path_buf(),
        };
        if !leaf.procs().contains(&leader) && tree::stat(leader).is_some() {
            say("warn cgroup-join-failed: the job runs outside its cgroup leaf".into());
        }
    }

    let mut leader_done = false;
    loop {
        // Reap everything that has ended; remember the leader's status.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid.as_raw() == leader => {
                    leader_done = true;
                    say(format!("exited {code}"));
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid.as_raw() == leader => {
                    leader_done = true;
                    say(format!("signaled {}", sig as i32));
                }
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => continue,
                Err(Errno::ECHILD) => {
                    if leader_done {
                        return 0;
                    }
                    break;
                }
                Err(Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
        if getppid() != parent {
            kill_everything(cgroup);
            return 0;
        }
        // Wake on a child's end, on costguard's death, or every 200 ms to look again.
        let _ = sigtimedwait(&set, Duration::from_millis(200));
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

/// costguard is gone: TERM and CONT to every process of the job, up to a second's grace,
/// then KILL (and `cgroup.kill`) until nothing is left, reaping as they go.
fn kill_everything(cgroup: Option<&Path>) {
    let me = std::process::id() as i32;
    let leaf = cgroup.map(|d| Leaf {
        dir: d.to_path_buf(),
    });
    let members = || {
        let mut pids = tree::live_descendants(me);
        if let Some(l) = &leaf {
            for p in l.procs() {
                if p != me && !pids.contains(&p) {
                    pids.push(p);
                }
            }
        }
        pids
    };
    for pid in members() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
    }
    let start = Instant::now();
    loop {
        while let Ok(ws) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            if ws == WaitStatus::StillAlive {
                break;
            }
        }
        let left = members();
        if left.is_empty() {
            break;
        }
        if start.elapsed() >= Duration::from_millis(1000) {
            for pid in left {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            if let Some(l) = &leaf {
                // Catches anything forked between the walk and the kills (the holder itself
                // is outside the leaf).
                l.kill_all();
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    while waitpid(None, None).is_ok() {}
    if let Some(l) = &leaf {
        l.remove();
    }
}
