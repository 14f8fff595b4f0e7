//! How the holder starts the job: created directly inside its cgroup leaf with
//! `clone3(CLONE_INTO_CGROUP)`, then `execvp` — on x86-64 by a child that shares the
//! holder's memory until its exec (`CLONE_VM | CLONE_VFORK`, as `posix_spawn` does), else
//! by a fork.
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
        let argv = self.argv_ptrs();
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        if let Some(started) = self.spawn_shared(&argv) {
            return started;
        }
        self.spawn_forked(&argv)
    }

    /// The argument vector as exec takes it: pointers into `self`, null-terminated.
    fn argv_ptrs(&self) -> Vec<*const libc::c_char> {
        self.argv
            .iter()
            .map(|a| a.as_ptr())
            .chain([std::ptr::null()])
            .collect()
    }

    /// The job started by a child that shares the holder's memory until its exec
    /// (`clone3(CLONE_VM | CLONE_VFORK)`, inside the leaf with `CLONE_INTO_CGROUP`), as
    /// glibc's `posix_spawn` starts one — which cannot name a cgroup in the glibc of most
    /// distributions: nothing of the holder's address space is copied for the child, nor
    /// torn down again by its exec. The holder waits, suspended, until the exec succeeded or
    /// the child exited; the child's errno comes back in the memory they share (as
    /// `posix_spawn`'s does). None without a leaf, or where the kernel refuses the clone (no
    /// `clone3`, no `CLONE_INTO_CGROUP`, a seccomp profile): then the fork below.
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    fn spawn_shared(&self, argv: &[*const libc::c_char]) -> Option<Result<i32, Errno>> {
        // Only with a leaf: CLONE_INTO_CGROUP means Linux 5.7, past the first clone3
        // kernels, which read `stack` differently.
        let leaf = self.leaf.as_ref()?;
        let stack = Stack::new(argv.len())?;
        let mut shared = Shared {
            prepared: self,
            argv: argv.as_ptr(),
            joined: true,
            errno: 0,
        };
        let mut args = CloneArgs {
            flags: (libc::CLONE_VM | libc::CLONE_VFORK) as u64 | CLONE_INTO_CGROUP,
            exit_signal: libc::SIGCHLD as u64,
            stack: stack.base,
            stack_size: stack.size,
            cgroup: leaf.as_raw_fd() as u64,
            ..CloneArgs::default()
        };
        let mut ret: i64 = libc::SYS_clone3;
        // SAFETY: clone3 with CLONE_VM starts the child on `stack` (its top page-aligned: a
        // call needs 16 bytes), sharing this memory: the child's first act is the call into
        // `shared_child`, which never returns and only makes async-signal-safe calls on
        // memory prepared before the clone; CLONE_VFORK suspends this thread until the child
        // has exec'd or exited, so `stack`, `shared`, `args` and `argv` outlive its use of
        // them. Only rax, rcx and r11 change here when the syscall returns to the parent.
        unsafe {
            std::arch::asm!(
                "syscall",
                "test rax, rax",
                "jnz 2f",
                "mov rdi, {shared}",
                "call {child}",
                "ud2",
                "2:",
                shared = in(reg) &mut shared as *mut Shared,
                child = sym shared_child,
                inlateout("rax") ret,
                in("rdi") &mut args as *mut CloneArgs,
                in("rsi") std::mem::size_of::<CloneArgs>(),
                // Not late: the syscall changes them before `shared` is read.
                out("rcx") _,
                out("r11") _,
            );
        }
        drop(stack);
        if ret < 0 {
            return None;
        }
        let pid = ret as i32;
        // SAFETY: `shared` is ours again: the child has exec'd or exited.
        let errno = unsafe { std::ptr::read_volatile(&shared.errno) };
        if errno != 0 {
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            return Some(Err(errno));
        }
        Some(Ok(pid))
    }

    /// The job started by a fork of the holder (inside the leaf with `clone3` where the
    /// kernel allows), then `execvp`; its errno comes back through a close-on-exec pipe.
    fn spawn_forked(&self, argv: &[*const libc::c_char]) -> Result<i32, Errno> {
        let (err_rd, err_wr) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e as i32)?;
        let (pid, joined) = self.fork();
        if pid == 0 {
            // SAFETY: in the child of a single-threaded holder; `exec_child` makes only
            // async-signal-safe calls on memory prepared before the fork, and never returns.
            unsafe { self.exec_child(joined, argv, err_wr.as_raw_fd()) }
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
        let errno = self.exec(joined, argv.as_ptr());
        let bytes = errno.to_ne_bytes();
        libc::write(err, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(127)
    }

    /// In a child: join the leaf if not born in it, the dispositions and mask a job expects,
    /// exec; returns only on failure, with the exec's errno.
    ///
    /// # Safety
    /// Only in a freshly forked or cloned child; `argv` null-terminated, its strings `self`'s.
    unsafe fn exec(&self, joined: bool, argv: *const *const libc::c_char) -> i32 {
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
        libc::execvp(self.program.as_ptr(), argv);
        // Never zero: zero is success to the parent of a shared-memory child.
        nix::errno::Errno::last_raw().max(1)
    }
}

/// The shared-memory child's stack: its own mapping, a guard page below it, sized for what
/// `execvp` puts there — a path buffer, and for a script without an interpreter line a copy
/// of the whole argument vector (as glibc's `posix_spawn` sizes its own).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
struct Stack {
    map: *mut libc::c_void,
    len: usize,
    /// Lowest usable address and usable size, as clone3 takes them.
    base: u64,
    size: u64,
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
impl Stack {
    fn new(argc: usize) -> Option<Stack> {
        const PAGE: usize = 4096;
        let size = (64 * 1024 + (argc + 3) * std::mem::size_of::<usize>()).div_ceil(PAGE) * PAGE;
        let len = size + PAGE;
        // SAFETY: a fresh private anonymous mapping; its first page made the guard.
        unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
                -1,
                0,
            );
            if map == libc::MAP_FAILED {
                return None;
            }
            let stack = Stack {
                map,
                len,
                base: map as u64 + PAGE as u64,
                size: size as u64,
            };
            (libc::mprotect(map, PAGE, libc::PROT_NONE) == 0).then_some(stack)
        }
    }
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer used (the child exec'd or exited).
        unsafe { libc::munmap(self.map, self.len) };
    }
}

/// What the holder and its shared-memory child ([`Prepared::spawn_shared`]) pass each other.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
struct Shared<'a> {
    prepared: &'a Prepared,
    argv: *const *const libc::c_char,
    /// Whether the child was created inside the leaf.
    joined: bool,
    /// The exec's errno, written by the child when it fails.
    errno: i32,
}

/// The shared-memory child's whole life: the exec, or its errno handed back and exit 127.
///
/// # Safety
/// Only as the first call of a child cloned by [`Prepared::spawn_shared`], on its own stack.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
unsafe extern "C" fn shared_child(shared: *mut Shared) -> ! {
    let s = &mut *shared;
    // A handler the child inherited would run on the holder's memory once the mask is
    // emptied: back to the default, as posix_spawn does (ignored signals stay ignored).
    for sig in 1..=libc::SIGRTMAX() {
        let mut old = std::mem::zeroed::<libc::sigaction>();
        if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction != libc::SIG_DFL
            && old.sa_sigaction != libc::SIG_IGN
        {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    let errno = s.prepared.exec(s.joined, s.argv);
    std::ptr::write_volatile(&mut s.errno, errno);
    libc::_exit(127)
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

    fn exit_code(pid: i32) -> i32 {
        match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).expect("wait") {
            nix::sys::wait::WaitStatus::Exited(_, c) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_script_without_an_interpreter_line_runs_under_sh_and_both_starts_agree() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("plain");
        std::fs::write(&script, "exit 5\n").expect("write");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let p = Prepared::new(&[script.into_os_string()], None).expect("p");
        assert_eq!(exit_code(p.spawn().expect("spawned")), 5);
        // The fork that stands in where the shared-memory clone is refused.
        let argv = p.argv_ptrs();
        assert_eq!(exit_code(p.spawn_forked(&argv).expect("forked")), 5);
        let missing = Prepared::new(&os(&["costguard-no-such-program-y"]), None).expect("p");
        let argv = missing.argv_ptrs();
        assert_eq!(missing.spawn_forked(&argv), Err(libc::ENOENT));
    }

    #[test]
    #[ignore = "root (a cgroup leaf): scripts/test runs it"]
    fn inside_a_leaf_the_shared_memory_start_runs_the_job_there_and_reports_its_errno() {
        use std::os::unix::fs::PermissionsExt;
        let leaf = super::super::cgroup::Leaf::create().expect("a cgroup leaf (root, cgroup v2)");
        let dir = tempfile::tempdir().expect("tempdir");
        // Reports its own cgroup, so the test sees where it ran.
        let script = dir.path().join("plain");
        std::fs::write(&script, "cat /proc/self/cgroup > \"$0.cg\"; exit 5\n").expect("write");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        // Fifty thousand arguments: execvp copies them onto the child's stack when it hands a
        // script without an interpreter line to /bin/sh.
        let mut argv = vec![script.clone().into_os_string()];
        argv.extend((0..50_000).map(|i| OsString::from(format!("a{i}"))));
        let p = Prepared::new(&argv, Some(&leaf.dir)).expect("p");
        let argv_ptrs = p.argv_ptrs();
        let started = p
            .spawn_shared(&argv_ptrs)
            .expect("the shared-memory start was taken");
        assert_eq!(exit_code(started.expect("spawned")), 5);
        let cg = std::fs::read_to_string(dir.path().join("plain.cg")).expect("cgroup written");
        let leaf_name = leaf
            .dir
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        assert!(cg.contains(&leaf_name), "ran in {cg}, not in {leaf_name}");
        let missing =
            Prepared::new(&os(&["costguard-no-such-program-z"]), Some(&leaf.dir)).expect("p");
        assert_eq!(missing.spawn(), Err(libc::ENOENT));
        leaf.remove();
    }
}
