//! Nothing can stop the kill: what costguard waits on is bounded (exit hook, notify command),
//! what it reads is bounded (config, plan and secret files), and it signals only its own.

mod common;

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use common::*;

/// Starts `c` with its stderr in `dir/err`.
fn spawn_logged(mut c: Command, dir: &Path) -> Child {
    let err = std::fs::File::create(dir.join("err")).expect("stderr file");
    c.stdout(Stdio::null()).stderr(err);
    c.spawn().expect("start costguard")
}

/// Waits up to `limit` for `child` to exit; kills it (by its pid) and fails otherwise.
fn exits_within(mut child: Child, limit: Duration, what: &str) -> ExitStatus {
    let mut status = None;
    let done = wait_until(limit, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if !done {
        end(child);
        panic!("{what}: costguard still running after {limit:?}");
    }
    status.expect("status")
}

/// Ends (by pid) whatever of `pids` is still alive, then says whether any was.
fn reap_leftovers(pids: &[i32]) -> bool {
    let left: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
    for p in &left {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    !left.is_empty()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[test]
fn a_hanging_exit_hook_is_ended_at_its_timeout() {
    let d = tempdir();
    let dir = path_str(d.path());
    // The shell ignores TERM and its child sleeps: only KILL to the group ends both.
    let hook = format!(
        "echo $$ > {dir}/hook; trap '' TERM; sleep 300 & echo $! > {dir}/child; wait; wait"
    );
    let mut c = guard(&d.path().join("state"));
    c.env("COSTGUARD_ON_EXIT_TIMEOUT", "1s")
        .args(["--on-exit", &hook, "--", "true"]);
    let child = spawn_logged(c, d.path());
    let hook_pid = read_pid(&d.path().join("hook"));
    let child_pid = read_pid(&d.path().join("child"));
    // 1 s, then TERM, then KILL 5 s later.
    let st = exits_within(child, Duration::from_secs(30), "exit hook");
    assert_eq!(st.code(), Some(0), "the run's own status stands");
    let err = read(&d.path().join("err"));
    assert!(
        err.contains("exit hook still running after --on-exit-timeout 1.000s")
            && err.contains("(KILL)"),
        "{err}"
    );
    let gone = wait_until(Duration::from_secs(5), || {
        !alive(hook_pid) && !alive(child_pid)
    });
    assert!(
        !reap_leftovers(&[hook_pid, child_pid]) && gone,
        "the hook's group survived"
    );
}

#[test]
fn an_exit_hook_timeout_is_a_setting_with_a_checked_value() {
    let d = tempdir();
    let cfg = d.path().join("c.toml");
    std::fs::write(&cfg, "on-exit-timeout = \"soon\"\n").expect("config");
    let mut c = guard(&d.path().join("state"));
    c.arg("--config").arg(&cfg).args(["--", "true"]);
    let o = run(c);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("config key on-exit-timeout"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_hanging_notify_command_does_not_outlive_costguard() {
    let d = tempdir();
    let dir = path_str(d.path());
    let cmd = format!(
        "cat > /dev/null; echo $$ >> {dir}/notify; sleep 300 & echo $! >> {dir}/child; wait"
    );
    let mut c = guard(&d.path().join("state"));
    c.args([
        "--notify-command",
        &cmd,
        "--notify-flush",
        "1s",
        "--",
        "true",
    ]);
    let child = spawn_logged(c, d.path());
    let st = exits_within(child, Duration::from_secs(20), "notify flush");
    assert_eq!(st.code(), Some(0));
    let pids: Vec<i32> = format!(
        "{}{}",
        read(&d.path().join("notify")),
        read(&d.path().join("child"))
    )
    .split_whitespace()
    .filter_map(|p| p.parse().ok())
    .collect();
    assert!(!pids.is_empty(), "the notify command never ran");
    let gone = wait_until(Duration::from_secs(5), || pids.iter().all(|p| !alive(*p)));
    assert!(
        !reap_leftovers(&pids) && gone,
        "the notify command's group outlived costguard: {pids:?}"
    );
}

#[test]
fn a_thousand_idle_connections_do_not_stop_the_kill() {
    let d = tempdir();
    let state = d.path().join("state");
    let port = free_port();
    // 1,024 descriptors, as a container often has: the connections must not take them all.
    let mut c = Command::new("prlimit");
    c.args(["--nofile=1024:1024", "--", bin()]);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("COSTGUARD_")) {
        c.env_remove(k);
    }
    c.env("COSTGUARD_GPU", "none")
        .env("COSTGUARD_PROVIDER", "none")
        .env("COSTGUARD_STATE_DIR", &state)
        .stdin(Stdio::null())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--run-id",
            "conns",
            "--usd-per-hour",
            "18",
            "--max-usd",
            "0.05",
        ])
        .args(["--kill-grace", "1s", "--", "sh", "-c"])
        .arg(escaping_job(d.path()));
    let child = spawn_logged(c, d.path());
    let pids = job_pids(d.path());
    assert!(
        wait_until(Duration::from_secs(5), || http_get(port, "/healthz")
            .is_some()),
        "no endpoint"
    );
    // Idle connections (never a request), held until costguard has ended.
    let mut conns = Vec::new();
    for _ in 0..1100 {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => conns.push(s),
            Err(_) => break,
        }
    }
    let opened = conns.len();
    // The $0.05 ceiling at $18/h is due 10 s after the start.
    let st = exits_within(child, Duration::from_secs(30), "dollar ceiling under load");
    drop(conns);
    let err = read(&d.path().join("err"));
    assert_eq!(
        opened, 1100,
        "the connections were opened before the kill: {err}"
    );
    assert_eq!(st.code(), Some(124), "{err}");
    assert!(
        !err.contains("Too many open files") && !err.contains("agent-error"),
        "{err}"
    );
    let l = ledger(&state, "conns");
    assert_eq!(l["state"], "killed", "{l}\n{err}");
    assert_eq!(l["kills"][0]["reason"], "usd", "{l}");
    let at = l["kills"][0]["elapsed_seconds"].as_f64().unwrap_or(99.0);
    assert!(at < 10.5, "the kill was late: {at} s");
    let gone = wait_until(Duration::from_secs(5), || pids.iter().all(|p| !alive(*p)));
    assert!(!reap_leftovers(&pids) && gone, "the job survived: {err}");
}
