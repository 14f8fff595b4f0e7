//! Shared helpers for the end-to-end tests: the real binary, temp dirs, polling with deadlines.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod boxes;
pub mod receiver;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_costguard")
}

/// Signals a test's processes depend on, back to their defaults and unblocked: the suite may
/// be started under `nohup` (HUP ignored) or by a script's `&` (INT and QUIT ignored), and a
/// shell cannot trap a signal ignored on entry.
pub fn default_signals(c: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(|| {
            for s in [
                libc::SIGHUP,
                libc::SIGINT,
                libc::SIGQUIT,
                libc::SIGTERM,
                libc::SIGUSR1,
                libc::SIGUSR2,
                libc::SIGALRM,
                libc::SIGCHLD,
                libc::SIGPIPE,
            ] {
                libc::signal(s, libc::SIG_DFL);
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
}

/// A costguard command with no HTTP listener and no inherited settings.
pub fn costguard() -> Command {
    let mut c = Command::new(bin());
    default_signals(&mut c);
    for (k, _) in std::env::vars() {
        if k.starts_with("COSTGUARD_")
            || k == "CUDA_VISIBLE_DEVICES"
            || k == "NVIDIA_VISIBLE_DEVICES"
        {
            c.env_remove(k);
        }
    }
    c.env("COSTGUARD_GPU", "none");
    // Never ask this machine's network about itself: the metadata address is reached only
    // inside the network namespaces of tests/cloud.rs.
    c.env("COSTGUARD_PROVIDER", "none");
    // An ephemeral port: tests run in parallel and never fight over the default one.
    c.env("COSTGUARD_LISTEN", "127.0.0.1:0");
    // Never the user's state: run records of tests that give no directory of their own land
    // under target/ (ignored by git, gone with `cargo clean`).
    c.env(
        "COSTGUARD_STATE_DIR",
        repo_root()
            .join("target/test-state")
            .join(std::process::id().to_string()),
    );
    c.stdin(Stdio::null());
    c
}

/// A costguard command with its state in `state`.
pub fn guard(state: &Path) -> Command {
    let mut c = costguard();
    c.env("COSTGUARD_STATE_DIR", state);
    c
}

/// A run's ledger as JSON (null when it cannot be read).
pub fn ledger(state: &Path, id: &str) -> serde_json::Value {
    let p = state.join("runs").join(id).join("ledger.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_default()).unwrap_or_default()
}

/// What a command printed on stdout.
pub fn out_text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn run(mut c: Command) -> Output {
    c.output().expect("run costguard")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Polls `cond` every 10 ms until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` is a live process (zombies count as dead).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s
                .rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

/// Reads a pid a job wrote into `path`, waiting for it to appear.
pub fn read_pid(path: &Path) -> i32 {
    let mut pid = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            pid = std::fs::read_to_string(path)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            pid.is_some()
        }),
        "no pid in {}",
        path.display()
    );
    pid.unwrap_or_default()
}

/// A job script that starts a `setsid` grandchild and a grandchild that ignores TERM, writes
/// their pids (and its own) into `dir`, then sleeps.
pub fn escaping_job(dir: &Path) -> String {
    format!(
        "echo $$ > {d}/leader; \
         setsid sh -c 'echo $$ > {d}/setsid; exec sleep 300' & \
         sh -c 'trap \"\" TERM; echo $$ > {d}/stubborn; while :; do sleep 1; done' & \
         sleep 300",
        d = dir.display()
    )
}

pub fn job_pids(dir: &Path) -> Vec<i32> {
    ["leader", "setsid", "stubborn"]
        .iter()
        .map(|f| read_pid(&dir.join(f)))
        .collect()
}

/// Kills `child` (a process the test started) by its pid and reaps it.
pub fn end(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The fake libnvidia-ml.so of `tests/fake-nvml`: a dev-dependency of costguard, so `cargo
/// test` has built it (fresh) beside the other dependencies before any test started — never
/// built here, where the build would take a test's time and the machine's cores.
pub fn fake_nvml() -> PathBuf {
    let deps = Path::new(bin()).parent().expect("target dir").join("deps");
    let lib = deps.join("libnvidia_ml.so");
    assert!(
        lib.exists(),
        "no fake NVML at {} (tests/fake-nvml is a dev-dependency: `cargo test` builds it)",
        lib.display()
    );
    lib
}

/// A costguard command on the fake NVML with `scenario` (JSON) written into `dir`.
pub fn costguard_on_gpus(dir: &Path, scenario: &serde_json::Value) -> Command {
    let path = dir.join("scenario.json");
    std::fs::write(&path, scenario.to_string()).expect("write scenario");
    let mut c = costguard();
    c.env("COSTGUARD_GPU", "nvml")
        .env("COSTGUARD_NVML_LIB", fake_nvml())
        .env("FAKE_NVML_SCENARIO", &path);
    c
}

/// `n` GPUs of `model` with a flat utilization.
pub fn gpus(n: usize, model: &str, util: u32) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| {
            serde_json::json!({
                "name": model,
                "uuid": format!("GPU-{i:08x}-1111-2222-3333-444455556666"),
                "timeline": [{"at": 0, "util": util, "mem_used": 1u64 << 30, "power_mw": 300000, "temp": 55}]
            })
        })
        .collect()
}

/// A loopback port held for the test while it lives: a socket bound to it with
/// `SO_REUSEADDR`, never listening. Connections to it are refused; no ephemeral bind and no
/// outbound connection on this machine can take it (the kernel skips a port with a bound
/// socket); only a process told the number and binding it with `SO_REUSEADDR` can listen on
/// it (costguard does, as Rust's std does; so do slurmctld and slurmd). For a port that must
/// be known before its server starts: a watcher started first, a receiver that refuses and
/// then answers, daemons that must be told their port. Never a port picked, let go and passed
/// on (anything may take it in between): costguard itself is started on `127.0.0.1:0` and
/// asked (`bound_port`), as are servers that say where they listen (`logged_port`).
pub struct HeldPort {
    sock: std::os::fd::OwnedFd,
    pub port: u16,
}

pub fn hold_port() -> HeldPort {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let fail =
        |what: &str| -> ! { panic!("hold a port: {what}: {}", std::io::Error::last_os_error()) };
    // SAFETY: plain socket calls on a descriptor owned here, with buffers of the sizes given.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            fail("socket");
        }
        let sock = OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        if libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) != 0
        {
            fail("SO_REUSEADDR");
        }
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_in).cast(),
            len,
        ) != 0
        {
            fail("bind");
        }
        if libc::getsockname(
            sock.as_raw_fd(),
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        ) != 0
        {
            fail("getsockname");
        }
        HeldPort {
            sock,
            port: u16::from_be(addr.sin_port),
        }
    }
}

impl HeldPort {
    /// Listens on the held port itself: what connects from now on is accepted here.
    pub fn listen(self) -> std::net::TcpListener {
        use std::os::fd::AsRawFd;
        // SAFETY: listen on a bound socket this value owns.
        if unsafe { libc::listen(self.sock.as_raw_fd(), 128) } != 0 {
            panic!(
                "listen on {}: {}",
                self.port,
                std::io::Error::last_os_error()
            );
        }
        std::net::TcpListener::from(self.sock)
    }
}

/// The port of a page URL such as `http://127.0.0.1:PORT/`.
pub fn port_of_url(url: &str) -> Option<u16> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host_port = rest.split('/').next()?;
    host_port.rsplit_once(':')?.1.parse().ok()
}

/// The port costguard, started as `child` with an explicit `--listen 127.0.0.1:0` for run
/// `id` with its state in `state`, actually bound: the ledger's `page_url`, set right after
/// the bind and on disk at the record writer's first save (a second in, or the close). Waits
/// up to `within` for it. An error (what
/// went wrong, with the child's exit status) when costguard exited without writing it, or did
/// not within `within` (then it is killed). For a new run id: a resumed run's ledger still
/// holds its previous session's page until the new session binds.
pub fn try_bound_port(
    state: &Path,
    id: &str,
    child: &mut Child,
    within: Duration,
) -> Result<u16, String> {
    let path = state.join("runs").join(id).join("ledger.json");
    let start = Instant::now();
    loop {
        // Whether it had exited before the read: then the read saw all it ever wrote.
        let exited = child.try_wait();
        let l = ledger(state, id);
        if let Some(port) = l["page_url"].as_str().and_then(port_of_url) {
            return Ok(port);
        }
        let pid = child.id();
        match exited {
            Ok(Some(st)) => {
                return Err(format!(
                    "costguard (pid {pid}) exited ({st}) before serving run {id}: \
                     no page_url in {} (state {})",
                    path.display(),
                    l["state"]
                ))
            }
            Err(e) => return Err(format!("costguard (pid {pid}): wait: {e}")),
            Ok(None) => {}
        }
        if start.elapsed() > within {
            let _ = child.kill();
            let st = child.wait();
            return Err(format!(
                "costguard (pid {pid}) wrote no page_url for run {id} within {within:?} \
                 (killed: {st:?}); {} holds state {}",
                path.display(),
                l["state"]
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `try_bound_port`, failing the test on an error.
pub fn bound_port(state: &Path, id: &str, child: &mut Child, within: Duration) -> u16 {
    try_bound_port(state, id, child, within).unwrap_or_else(|e| panic!("{e}"))
}

/// The port a Prometheus-style server (Prometheus, Alertmanager: the exporter toolkit) started
/// with `--web.listen-address=127.0.0.1:0` logged in `log` (its stderr): `msg="Listening on"
/// address=127.0.0.1:PORT`. Fails the test if `child` exits first or nothing is logged within
/// `within` (then it is killed).
pub fn logged_port(log: &Path, child: &mut Child, within: Duration) -> u16 {
    let start = Instant::now();
    loop {
        let exited = child.try_wait();
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let port = text
            .lines()
            .filter(|l| l.contains("msg=\"Listening on\""))
            .find_map(|l| {
                let at = l.find("address=")? + "address=".len();
                port_of_url(l[at..].split_whitespace().next()?)
            });
        if let Some(p) = port.filter(|p| *p != 0) {
            return p;
        }
        if let Ok(Some(st)) = exited {
            panic!("{} exited ({st}) before listening:\n{text}", log.display());
        }
        if start.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "nothing listening within {within:?}; {}:\n{text}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A plain HTTP/1.0 GET on loopback; returns the body, or None when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.to_string())
}

/// Reads a pty's master end until every slave descriptor is closed (EIO), on a thread.
pub fn read_pty(master: std::os::fd::OwnedFd) -> std::thread::JoinHandle<String> {
    use std::io::Read;
    let mut master = std::fs::File::from(master);
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = master.read(&mut chunk) {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}
