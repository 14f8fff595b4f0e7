//! How the holder starts the job: created directly inside its cgroup leaf with
//! `clone3(CLONE_INTO_CGROUP)`, then `execvp`.
//!
//! Joining a leaf by writing `cgroup.procs` takes the kernel's cgroup threadgroup lock for
//! writing, which waits out an RCU grace period: a few milliseconds on an idle machine, tens
//! on a busy one, on every job's start (`benches/start_cost.py` measures both). A process
//! created inside the leaf never migrates, so nothing waits. Where `clone3` or
//! `CLONE_INTO_CGROUP` is unavailable (kernels before 5.7, seccomp profiles that answer
//! ENOSYS, a leaf the kernel will not take) the child is forked and writes `cgroup.procs`
//! itself, as before; the holder checks the leaf's members either way.

use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `struct clone_args` as the kernel reads it (CLONE_ARGS_SIZE_VER2: up to `cgroup`).
#[repr(C, align(8))]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP` (linux/sched.h), not exported by libc for every target.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Everything the child needs, made before the fork: after it the child only makes
/// async-signal-safe calls and allocates nothing.
pub struct Prepared {
    program: CString,
    argv: Vec<CString>,
    /// The leaf's `cgroup.procs`, for a child that was not created inside the leaf.
    procs: Option<CString>,
    /// The leaf's directory, for `CLONE_INTO_CGROUP`.
    leaf: Option<OwnedFd>,
}

/// Why the job did not start: the errno of its exec (or of the fork).
pub type Errno = i32;

impl Prepared {
    pub fn new(command: &[OsString], cgroup: Option<&Path>) -> Result<Prepared, Errno> {
        let c = |s: &[u8]| CString::new(s).map_err(|_| libc::EINVAL);
        let Some(first) = command.first() else {
            return Err(libc::ENOENT);
        };
        let argv = command
            .iter()
            .map(|a| c(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let procs = cgroup.and_then(|d| c(d.join("cgroup.procs").as_os_str().as_bytes()).ok());
        let leaf = cgroup.and_then(open_dir);
        Ok(Prepared {
            program: c(first.as_bytes())?,
            argv,
            procs,
            leaf,
        })
    }

    /// Starts the job; its pid once its exec succeeded, or the errno of the failure (the
    /// failed child already reaped).
    pub fn spawn(&self) -> Result<i32, Errno> {
        let (err_rd, err_wr) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e as i32)?;
        let mut argv: Vec<*const libc::c_char> = self.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let (pid, joined) = self.fork();
        if pid == 0 {
            // SAFETY: in the child of a single-threaded holder; `exec_child` makes only
            // async-signal-safe calls on memory prepared before the fork, and never returns.
            unsafe { self.exec_child(joined, &argv, err_wr.as_raw_fd()) }
        }
        drop(err_wr);
        if pid < 0 {
            return Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EAGAIN));
        }
        // The child's exec closes the pipe: end of file is success, four bytes its errno.
        let mut buf = [0u8; 4];
        let n = read_full(&err_rd, &mut buf);
        if n == 4 {
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            return Err(i32::from_ne_bytes(buf));
        }
        Ok(pid)
    }

    /// A child process: created inside the leaf when the kernel allows (`joined` true), else
    /// a plain fork. Returns what fork returns.
    fn fork(&self) -> (i32, bool) {
        if let Some(leaf) = &self.leaf {
            let mut args = CloneArgs {
                flags: CLONE_INTO_CGROUP,
                exit_signal: libc::SIGCHLD as u64,
                cgroup: leaf.as_raw_fd() as u64,
                ..CloneArgs::default()
            };
            // SAFETY: clone3 without CLONE_VM is fork: the child runs on a copy of this
            // stack. `args` is a valid clone_args of the size given.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_clone3,
                    &mut args as *mut CloneArgs,
                    std::mem::size_of::<CloneArgs>(),
                )
            };
            if r >= 0 {
                return (r as i32, true);
            }
            // ENOSYS, EINVAL (no CLONE_INTO_CGROUP), E2BIG, EPERM, EBUSY…: fork and join.
        }
        // SAFETY: the child only makes async-signal-safe calls before its exec (exec_child).
        (unsafe { libc::fork() }, false)
    }

    /// In the child: join the leaf if not born in it, the dispositions and mask a job
    /// expects, exec; on failure the errno down the pipe and exit 127.
    ///
    /// # Safety
    /// Only in a freshly forked child; every pointer must come from `self` and `argv`.
    unsafe fn exec_child(&self, joined: bool, argv: &[*const libc::c_char], err: i32) -> ! {
        if let (false, Some(p)) = (joined, &self.procs) {
            let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
            }
        }
        // Rust ignores SIGPIPE and the holder blocks every signal: neither is the job's.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut empty = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::execvp(self.program.as_ptr(), argv.as_ptr());
        let errno = nix::errno::Errno::last_raw();
        let bytes = errno.to_ne_bytes();
        libc::write(err, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(127)
    }
}

/// A directory opened as a descriptor, close-on-exec (the job never has it): the leaf's for
/// `CLONE_INTO_CGROUP`, the run directory for the holder's record.
pub(super) fn open_dir(dir: &Path) -> Option<OwnedFd> {
    use nix::fcntl::OFlag;
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    nix::fcntl::open(dir, flags, nix::sys::stat::Mode::empty()).ok()
}

/// Reads until `buf` is full or end of file; how many bytes came.
fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(fd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    got
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(Into::into).collect()
    }

    #[test]
    fn a_job_runs_and_its_exec_failures_are_its_errno() {
        let p = Prepared::new(&os(&["sh", "-c", "exit 3"]), None).expect("prepared");
        let pid = p.spawn().expect("spawned");
        let st = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).expect("wait");
        assert_eq!(
            st,
            nix::sys::wait::WaitStatus::Exited(nix::unistd::Pid::from_raw(pid), 3)
        );
        let missing = Prepared::new(&os(&["costguard-no-such-program-x"]), None).expect("p");
        assert_eq!(missing.spawn(), Err(libc::ENOENT));
        let dir = tempfile::tempdir().expect("tempdir");
        let not_exec = dir.path().join("data");
        std::fs::write(&not_exec, "x").expect("write");
        let p = Prepared::new(&[not_exec.into_os_string()], None).expect("p");
        assert_eq!(p.spawn(), Err(libc::EACCES));
        assert_eq!(Prepared::new(&[], None).err(), Some(libc::ENOENT));
    }
}
