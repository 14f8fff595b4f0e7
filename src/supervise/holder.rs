//! Starting the holder: a fork of costguard that runs [`hold::main`](super::hold::main)
//! directly — no second exec of the costguard binary, whose loading and start-up cost the
//! job's start about as much as everything else costguard does before it
//! (`benches/start_cost.py`).
//!
//! The fork is made from the main thread (PDEATHSIG follows the thread that forked), while
//! the runtime's helper threads may hold locks: the child touches nothing of the runtime,
//! logs nothing, and uses the allocator (which glibc and musl both re-initialise in a
//! forked child) and plain system calls only. Before anything else it closes every
//! descriptor but its own, so it never holds costguard's run lock, listening socket or
//! event loop; it names itself `costguard-hold` (its command line stays costguard's).

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;

use super::hold;

/// The fd numbers the holder finds its status pipe, its deadline pipe and its record on.
pub const STATUS_FD: i32 = 3;
pub const CONTROL_FD: i32 = 4;
pub const RECORD_FD: i32 = 5;

/// What the holder's process shows as its name (`ps`, `/proc/PID/comm`).
pub const NAME: &std::ffi::CStr = c"costguard-hold";

/// The descriptors the holder gets, each numbered 10 or above (so that moving them to 1–5
/// in the child never overwrites one another) and close-on-exec.
pub struct Inherited {
    pub status: OwnedFd,
    pub control: OwnedFd,
    pub record: Option<OwnedFd>,
    /// The write ends of the job's stdout and stderr pipes, when its output is read.
    pub output: Option<(OwnedFd, OwnedFd)>,
}

/// What the holder runs.
pub struct Start {
    pub cgroup: Option<PathBuf>,
    pub command: Vec<OsString>,
}

/// Forks the holder; its pid. The child never returns from here.
pub fn fork(fds: &Inherited, start: &Start) -> std::io::Result<i32> {
    let parent = std::process::id() as i32;
    let raw = |f: Option<&OwnedFd>| f.map_or(-1, |f| f.as_raw_fd());
    let out = fds.output.as_ref();
    let moves = [
        (fds.status.as_raw_fd(), STATUS_FD),
        (fds.control.as_raw_fd(), CONTROL_FD),
        (raw(fds.record.as_ref()), RECORD_FD),
        (raw(out.map(|o| &o.0)), 1),
        (raw(out.map(|o| &o.1)), 2),
    ];
    let opts = hold::Opts {
        status_fd: STATUS_FD,
        control_fd: Some(CONTROL_FD),
        record_fd: fds.record.as_ref().map(|_| RECORD_FD),
        cgroup: start.cgroup.as_deref(),
        command: &start.command,
    };
    // SAFETY: see the module comment: the child runs only `holder_child`, which ends in
    // `_exit` and uses nothing another thread could have held at the fork but the allocator.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(std::io::Error::last_os_error()),
        // SAFETY: in the freshly forked child, as holder_child requires.
        0 => unsafe { holder_child(parent, &moves, &opts) },
        pid => Ok(pid),
    }
}

/// The holder's side of the fork: its descriptors in place, its own process group and
/// parent-death signal, then `hold::main` and `_exit` with its status.
///
/// # Safety
/// Only in a child just forked from costguard's main thread.
unsafe fn holder_child(parent: i32, moves: &[(i32, i32)], opts: &hold::Opts) -> ! {
    // A costguard that died before this line would not send the signal: then no job starts.
    if libc::prctl(
        libc::PR_SET_PDEATHSIG,
        hold::PARENT_DEATH_SIGNAL as libc::c_ulong,
    ) != 0
        || libc::getppid() != parent
    {
        libc::_exit(1);
    }
    libc::setpgid(0, 0);
    for &(from, to) in moves {
        if from >= 0 && libc::dup2(from, to) < 0 {
            libc::_exit(1);
        }
    }
    if opts.record_fd.is_none() {
        libc::close(RECORD_FD);
    }
    close_from(RECORD_FD + 1);
    libc::prctl(libc::PR_SET_NAME, NAME.as_ptr() as libc::c_ulong, 0, 0, 0);
    // Nothing of costguard's state below this frame may run in the holder: a panic ends
    // the holder here rather than unwinding into the runtime's frames.
    let code =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hold::main(opts))).unwrap_or(1);
    libc::_exit(code.into())
}

/// Closes every descriptor from `first` up: close_range(2) where the kernel has it (5.9),
/// else each one listed in /proc/self/fd.
///
/// # Safety
/// Only where no descriptor at or above `first` is owned by live Rust objects that will
/// use it (the holder's child, before it adopts 3–5).
unsafe fn close_from(first: i32) {
    if libc::syscall(
        libc::SYS_close_range,
        first as libc::c_uint,
        libc::c_uint::MAX,
        0,
    ) == 0
    {
        return;
    }
    let open: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for fd in open.into_iter().filter(|fd| *fd >= first) {
        libc::close(fd);
    }
}

/// Waits for the holder and calls `done` with its status: unknown is reported as a failure
/// (exit 1), so a kill sweeps for orphans. On the runtime, the holder's pidfd (Linux 5.3)
/// turns readable when it has exited, and the status is then reaped at once; elsewhere (no
/// pidfd, no runtime) a thread of its own makes a blocking `waitpid` of that pid only —
/// a thread the start and the exit would otherwise pay for on every run.
pub fn watch_exit(
    pid: i32,
    done: impl FnOnce(std::process::ExitStatus) + Send + 'static,
) -> std::io::Result<()> {
    let done = match exited_on_runtime(pid) {
        Some(exited) => {
            tokio::spawn(async move {
                // Readable is not always reapable (a zombie another process traces is its
                // tracer's to see first): the loop's thread never blocks in waitpid.
                let st = match exited.await.then(|| reap_now(pid)).flatten() {
                    Some(st) => st,
                    None => tokio::task::spawn_blocking(move || reap(pid))
                        .await
                        .unwrap_or_else(|_| ExitStatusExt::from_raw(1 << 8)),
                };
                done(st);
            });
            return Ok(());
        }
        None => done,
    };
    std::thread::Builder::new()
        .name("holder-wait".into())
        .spawn(move || done(reap(pid)))
        .map(|_| ())
}

/// A future that ends once `pid` has exited, through its pidfd (true), or once the pidfd
/// could not be waited on (false); None where there is no pidfd or no runtime to wait on.
fn exited_on_runtime(pid: i32) -> Option<impl std::future::Future<Output = bool>> {
    use std::os::fd::FromRawFd;
    tokio::runtime::Handle::try_current().ok()?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a descriptor just returned to us, owned by nothing else.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: the OwnedFd is moved into the AsyncFd, which alone owns and closes it: the
    // descriptor stays open and the same for the AsyncFd's whole life.
    let fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    }
    .ok()?;
    // Readable: the process has exited.
    Some(async move { fd.readable().await.is_ok() })
}

/// The status of our child `pid` if it can be reaped now (`WNOHANG`).
fn reap_now(pid: i32) -> Option<std::process::ExitStatus> {
    wait_for(pid, libc::WNOHANG)
}

/// The status of our child `pid`, waited for (a blocking `waitpid` of that pid only);
/// unknown is a failure (exit 1).
fn reap(pid: i32) -> std::process::ExitStatus {
    wait_for(pid, 0).unwrap_or_else(|| std::process::ExitStatus::from_raw(1 << 8))
}

/// `waitpid` of `pid` with `flags`, retried when interrupted: its status, or None when it
/// could not be reaped (not yet, with WNOHANG, or not ours).
fn wait_for(pid: i32, flags: libc::c_int) -> Option<std::process::ExitStatus> {
    let mut status = 0;
    loop {
        // SAFETY: waiting on our own child by pid with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, flags) };
        if r == pid {
            return Some(std::process::ExitStatus::from_raw(status));
        }
        if r < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return None;
    }
}
