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
