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
    let at = format!("config file {} line 1, key on-exit-timeout", cfg.display());
    assert!(stderr(&o).contains(&at), "{}", stderr(&o));
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
#[ignore = "~11 s (a 10 s dollar deadline under 1,100 connections): scripts/test runs it"]
fn a_thousand_idle_connections_do_not_stop_the_kill() {
    let d = tempdir();
    let state = d.path().join("state");
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
        .args(["--listen", "127.0.0.1:0"])
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
    let mut child = spawn_logged(c, d.path());
    let port = try_bound_port(&state, "conns", &mut child, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}\n{}", read(&d.path().join("err"))));
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
        !err.contains("Too many open files") && !err.contains("agent-error (record)"),
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

/// costguard with its address space capped: a file read without bound fails fast instead of
/// taking the machine's memory.
fn capped_costguard(state: &Path) -> Command {
    let mut c = Command::new("prlimit");
    c.args(["--as=2000000000", "--", bin()]);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("COSTGUARD_")) {
        c.env_remove(k);
    }
    c.env("COSTGUARD_GPU", "none")
        .env("COSTGUARD_PROVIDER", "none")
        .env("COSTGUARD_LISTEN", "127.0.0.1:0")
        .env("COSTGUARD_STATE_DIR", state)
        .stdin(Stdio::null());
    c
}

#[test]
fn special_files_given_as_config_plan_or_secret_are_refused_at_once() {
    let d = tempdir();
    let fifo = d.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let fifo = path_str(&fifo);
    let cases: &[(&str, &str)] = &[
        ("--config", "/dev/zero"),
        ("--config", &fifo),
        ("--plan", "/dev/zero"),
        ("--plan", &fifo),
        ("--webhook-file", "/dev/zero"),
        ("--slack-webhook-file", &fifo),
        ("--pagerduty-routing-key-file", "/dev/zero"),
    ];
    for (flag, path) in cases {
        let mut c = capped_costguard(&d.path().join("state"));
        c.args([flag, path]);
        if *flag != "--plan" {
            c.args(["--", "true"]);
        }
        let child = spawn_logged(c, d.path());
        let st = exits_within(child, Duration::from_secs(10), flag);
        let err = read(&d.path().join("err"));
        assert_eq!(st.code(), Some(125), "{flag} {path}: {err}");
        assert!(
            err.contains(&format!("{flag} {path}")) && err.contains("not a regular file"),
            "{flag} {path}: {err}"
        );
    }
}

#[test]
fn a_plan_error_names_the_line_and_the_key() {
    let d = tempdir();
    let plan = d.path().join("plan.toml");
    std::fs::write(
        &plan,
        "[[phase]]\nname = \"prep\"\ncommand = \"true\"\nmax_wal = \"1m\"\n",
    )
    .expect("plan");
    let mut c = guard(&d.path().join("state"));
    c.arg("--plan").arg(&plan);
    let o = run(c);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert!(
        err.contains("line 4: unknown key `max_wal`; did you mean `max-wall`?"),
        "{err}"
    );
}

/// The start time (clock ticks since boot) of `pid`, from /proc/PID/stat.
fn start_ticks(pid: u32) -> u64 {
    let stat = read(Path::new(&format!("/proc/{pid}/stat")));
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    after
        .split_whitespace()
        .nth(19)
        .and_then(|t| t.parse().ok())
        .expect("start time")
}

#[test]
fn stop_never_signals_a_process_a_tampered_ledger_names() {
    let d = tempdir();
    let state = d.path().join("state");
    let mut c = guard(&state);
    c.args(["--run-id", "tampered", "--", "true"]);
    assert_eq!(run(c).status.code(), Some(0));
    let victim = Command::new("sleep").arg("300").spawn().expect("sleep");
    let pid = victim.id();
    let path = state.join("runs/tampered/ledger.json");
    let mut l: serde_json::Value = serde_json::from_str(&read(&path)).expect("ledger");
    l["state"] = "running".into();
    l["costguard"] = serde_json::json!({"pid": pid, "start_ticks": start_ticks(pid)});
    std::fs::write(&path, l.to_string()).expect("tamper");
    let mut c = guard(&state);
    c.args(["stop", "tampered"]);
    let o = run(c);
    let err = stderr(&o);
    let survived = alive(pid as i32);
    end(victim);
    assert!(
        survived,
        "costguard stop signalled an unrelated process: {err}"
    );
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert!(
        err.contains(&format!("not stopping pid {pid}")) && err.contains("not costguard"),
        "{err}"
    );
}

#[test]
fn an_armed_agent_stopped_by_a_signal_records_stopped_not_completed() {
    let d = tempdir();
    let state = d.path().join("state");
    // One GPU and no process on it: over budget, the agent has nothing to kill.
    let mut c = costguard_on_gpus(
        d.path(),
        &serde_json::json!({ "gpus": gpus(1, "NVIDIA H100 80GB HBM3", 100) }),
    );
    c.env("COSTGUARD_STATE_DIR", &state).args([
        "agent",
        "--run-id",
        "armed",
        "--interval",
        "100ms",
        "--usd-per-hour",
        "3600",
        "--max-usd",
        "1",
    ]);
    let child = spawn_logged(c, d.path());
    let pid = child.id() as i32;
    let armed = wait_until(Duration::from_secs(15), || {
        read(&d.path().join("err")).contains("over budget, no targets")
    });
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    );
    let st = exits_within(child, Duration::from_secs(15), "armed agent");
    let err = read(&d.path().join("err"));
    assert!(armed, "{err}");
    assert_eq!(st.code(), Some(143), "{err}");
    let l = ledger(&state, "armed");
    assert_eq!(l["state"], "stopped", "{l}");
    assert_eq!(l["exit_code"], 143, "{l}");
    assert!(
        err.contains("agent stopped: stopped by SIGTERM while over budget"),
        "{err}"
    );
}

#[test]
fn the_agent_refuses_a_host_memory_ceiling_it_cannot_measure() {
    let d = tempdir();
    let mut c = costguard_on_gpus(
        d.path(),
        &serde_json::json!({ "gpus": gpus(1, "NVIDIA H100 80GB HBM3", 100) }),
    );
    c.env("COSTGUARD_STATE_DIR", d.path().join("state")).args([
        "agent",
        "--max-host-mem",
        "1GiB",
        "--max-wall",
        "2s",
    ]);
    let child = spawn_logged(c, d.path());
    let st = exits_within(child, Duration::from_secs(15), "agent --max-host-mem");
    let err = read(&d.path().join("err"));
    assert_eq!(st.code(), Some(125), "{err}");
    assert!(
        err.contains("--max-host-mem is not available to costguard agent"),
        "{err}"
    );
}
