//! `costguard agent` end to end: it kills a GPU process it did not spawn (a real pid the fake
//! NVML lists) and leaves the others alone.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// A process the test owns, in a process group of its own (the agent kills groups).
fn spawn_in_group(secs: &str) -> std::process::Child {
    Command::new("sleep")
        .arg(secs)
        .process_group(0)
        .stdin(Stdio::null())
        .spawn()
        .expect("sleep")
}

#[test]
fn the_agent_kills_the_selected_gpu_process_and_nothing_else() {
    let dir = tempdir();
    let mut victim = spawn_in_group("61");
    let mut other_gpu = spawn_in_group("62");
    let mut bystander = spawn_in_group("63");
    std::fs::write(dir.path().join("victim.pid"), victim.id().to_string()).expect("pid");
    std::fs::write(dir.path().join("other.pid"), other_gpu.id().to_string()).expect("pid");
    let mut g = gpus(1, "NVIDIA H100 80GB HBM3", 0);
    g[0]["processes"] = json!([
        {"pid_file": dir.path().join("victim.pid"), "mem": 10u64 << 30},
        {"pid_file": dir.path().join("other.pid"), "mem": 5u64 << 30},
    ]);
    let mut c = costguard_on_gpus(dir.path(), &json!({ "gpus": g }));
    c.env("COSTGUARD_STATE_DIR", dir.path().join("state"))
        .args([
            "agent",
            "--target",
            "cmdline:^sleep 61$",
            "--interval",
            "100ms",
        ])
        .args(["--idle", "1s", "--kill-grace", "1s"]);
    let start = Instant::now();
    let out = c.output().expect("agent");
    let took = start.elapsed();
    let err = stderr(&out);
    let victim_gone = wait_until(Duration::from_secs(2), || {
        victim.try_wait().ok().flatten().is_some()
    });
    let other_alive = other_gpu.try_wait().ok().flatten().is_none();
    let bystander_alive = bystander.try_wait().ok().flatten().is_none();
    for mut p in [victim, other_gpu, bystander] {
        let _ = p.kill();
        let _ = p.wait();
    }
    assert_eq!(out.status.code(), Some(124), "{err}");
    assert!(victim_gone, "the selected GPU process was killed: {err}");
    assert!(
        other_alive,
        "a GPU process the selector did not pick survives"
    );
    assert!(bystander_alive, "a process NVML does not list survives");
    assert!(err.contains("agent killed: idle: GPU 0 below 5%"), "{err}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let events = std::fs::read_dir(dir.path().join("state/runs"))
        .expect("runs")
        .flatten()
        .map(|e| std::fs::read_to_string(e.path().join("events.jsonl")).unwrap_or_default())
        .collect::<String>();
    assert!(events.contains("watching GPU process"), "{events}");
    assert!(events.contains("\"killed\""), "{events}");
}

#[test]
fn the_agent_needs_nvml_and_a_valid_selector() {
    let mut c = costguard();
    c.args(["agent", "--target", "pid:3"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("invalid --target \"pid:3\""));
    let mut c = costguard();
    c.args(["agent"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("needs NVML"), "{}", stderr(&out));
}

/// An agent over one GPU process, `victim`, listed by the fake NVML at full utilization (so
/// no idle kill interferes); returns the command, ready for the test's own flags.
fn agent_over(dir: &std::path::Path, victim: &std::process::Child, marker: &str) -> Command {
    std::fs::write(dir.join("victim.pid"), victim.id().to_string()).expect("pid");
    let mut g = gpus(1, "NVIDIA H100 80GB HBM3", 100);
    g[0]["processes"] = json!([{"pid_file": dir.join("victim.pid"), "mem": 1u64 << 30}]);
    let mut c = costguard_on_gpus(dir, &json!({ "gpus": g }));
    c.env("COSTGUARD_STATE_DIR", dir.join("state")).args([
        "agent",
        "--target",
        &format!("cmdline:{marker}"),
        "--interval",
        "100ms",
        "--kill-grace",
        "1s",
    ]);
    c
}

/// A stand-in for Prometheus' query API that always answers this fleet total.
fn fake_prometheus(total: f64) -> u16 {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let body = format!(
                r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[0,"{total}"]}}]}}}}"#
            );
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// A shell "trainer" with a marker in its command line, in a group of its own.
fn trainer(script: &str) -> std::process::Child {
    Command::new("sh")
        .args(["-c", script])
        .process_group(0)
        .stdin(Stdio::null())
        .spawn()
        .expect("sh")
}

#[test]
fn the_agent_honours_the_fleet_budget() {
    let dir = tempdir();
    let mut victim = trainer("exec sleep 64");
    let port = fake_prometheus(150.0);
    let mut c = agent_over(dir.path(), &victim, "^sleep 64$");
    // --max-wall is only a backstop: without the fleet budget the test fails, not hangs.
    c.args([
        "--usd-per-hour",
        "1",
        "--fleet-max-usd",
        "100",
        "--max-wall",
        "20s",
    ])
    .args(["--prometheus-url", &format!("http://127.0.0.1:{port}")])
    .args(["--fleet-interval", "200ms"]);
    let out = c.output().expect("agent");
    let err = stderr(&out);
    let gone = wait_until(Duration::from_secs(3), || {
        victim.try_wait().ok().flatten().is_some()
    });
    let _ = victim.kill();
    let _ = victim.wait();
    assert_eq!(out.status.code(), Some(124), "{err}");
    assert!(err.contains("killed (fleet)"), "{err}");
    assert!(err.contains("the fleet spent $150.00 of $100.00"), "{err}");
    assert!(gone, "the fleet kill ended the target: {err}");
}

#[test]
fn the_agent_sends_the_warning_signal_to_its_targets_before_the_ceiling() {
    let dir = tempdir();
    let got = dir.path().join("got-usr1");
    // The trainer checkpoints on USR1 (writes a file) and goes on.
    let script = format!(
        "trap 'touch {}' USR1; while :; do sleep 0.05; done # agent-warn-marker",
        got.display()
    );
    let mut victim = trainer(&script);
    let mut c = agent_over(dir.path(), &victim, "agent-warn-marker");
    c.args([
        "--max-wall",
        "3s",
        "--warn-signal",
        "USR1",
        "--warn-before",
        "2s",
    ]);
    let out = c.output().expect("agent");
    let err = stderr(&out);
    let _ = victim.kill();
    let _ = victim.wait();
    assert_eq!(out.status.code(), Some(124), "{err}");
    assert!(got.exists(), "the target got USR1 before the kill: {err}");
    assert!(err.contains("warning (checkpoint)"), "{err}");
    assert!(err.contains("(SIGUSR1 to "), "{err}");
}

#[test]
fn the_agent_counts_heartbeats_as_progress_and_kills_when_they_stop() {
    let dir = tempdir();
    let beat = dir.path().join("beat");
    // Beats every 200 ms for 3 s, then silence: the 1.5 s stall window must not fire while
    // it beats, and must fire after.
    let script = format!(
        "i=0; while [ $i -lt 15 ]; do touch {}; sleep 0.2; i=$((i+1)); done; sleep 60 # agent-beat-marker",
        beat.display()
    );
    let mut victim = trainer(&script);
    let mut c = agent_over(dir.path(), &victim, "agent-beat-marker");
    c.args(["--stall", "1500ms"])
        .args(["--heartbeat-file", &beat.display().to_string()]);
    let start = Instant::now();
    let out = c.output().expect("agent");
    let took = start.elapsed();
    let err = stderr(&out);
    let _ = victim.kill();
    let _ = victim.wait();
    assert_eq!(out.status.code(), Some(124), "{err}");
    assert!(err.contains("killed (stall)"), "{err}");
    assert!(
        took >= Duration::from_secs(4),
        "no stall kill while the heartbeat went on ({took:?}): {err}"
    );
}
