//! Idle and stall watchdogs end to end on the fake NVML.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[test]
fn idle_gpus_are_killed_on_time() {
    let dir = tempdir();
    let mut g = gpus(2, "NVIDIA H100 80GB HBM3", 90);
    for x in g.iter_mut() {
        x["timeline"]
            .as_array_mut()
            .expect("timeline")
            .push(json!({"at": 1.0, "util": 1}));
    }
    let mut c = costguard_on_gpus(dir.path(), &json!({"gpus": g}));
    c.args([
        "--interval",
        "100ms",
        "--idle",
        "1s",
        "--kill-grace",
        "1s",
        "--",
        "sleep",
        "30",
    ]);
    let start = Instant::now();
    let out = run(c);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(124), "{err}");
    assert!(
        err.contains("killed: idle: GPU 0,1 below 5% for 1."),
        "{err}"
    );
    assert!(err.contains("warning (idle-suspected)"), "{err}");
    assert!(
        err.contains("wasted $"),
        "idle spend is counted as wasted: {err}"
    );
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn hang_at_full_utilization_is_killed_by_the_stall_watchdog() {
    let dir = tempdir();
    let mut c = costguard_on_gpus(
        dir.path(),
        &json!({"gpus": gpus(1, "NVIDIA H100 80GB HBM3", 100)}),
    );
    let script = "for i in 1 2 3 4 5; do echo \"step $i\"; sleep 0.1; done; sleep 30";
    c.args([
        "--interval",
        "100ms",
        "--idle",
        "1s",
        "--stall",
        "1s",
        "--progress-regex",
        r"step (\d+)",
        "--",
        "sh",
        "-c",
        script,
    ]);
    let out = run(c);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(124), "{err}");
    assert!(err.contains("killed: stall: no progress for 1."), "{err}");
    assert!(err.contains("last progress \"step 5\""), "{err}");
    assert!(!err.contains("killed: idle"), "{err}");
}

#[test]
fn busy_job_with_steady_progress_is_never_killed() {
    let dir = tempdir();
    let mut c = costguard_on_gpus(
        dir.path(),
        &json!({"gpus": gpus(2, "NVIDIA H100 80GB HBM3", 85)}),
    );
    let script = "i=0; while [ $i -lt 30 ]; do i=$((i+1)); echo \"step $i\"; sleep 0.1; done";
    c.args([
        "--interval",
        "100ms",
        "--idle",
        "500ms",
        "--stall",
        "1s",
        "--progress-regex",
        r"step (\d+)",
        "--max-gpu-mem",
        "90%",
        "--",
        "sh",
        "-c",
        script,
    ]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("killed"), "{}", stderr(&out));
}

#[test]
fn setup_grace_is_respected() {
    let dir = tempdir();
    let mut c = costguard_on_gpus(
        dir.path(),
        &json!({"gpus": gpus(1, "NVIDIA H100 80GB HBM3", 0)}),
    );
    c.args([
        "--interval",
        "100ms",
        "--idle",
        "500ms",
        "--idle-grace",
        "1500ms",
        "--",
        "sleep",
        "30",
    ]);
    let out = run(c);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(124), "{err}");
    let ran: f64 = err
        .rsplit("; ran ")
        .next()
        .and_then(|s| s.split('s').next())
        .and_then(|s| s.parse().ok())
        .expect("duration in the summary");
    assert!(
        ran >= 2.0,
        "killed at {ran}s, inside the 1.5 s grace plus the 0.5 s window: {err}"
    );
}

#[test]
fn gpu_going_unknown_never_causes_an_idle_kill() {
    let dir = tempdir();
    let scenario = json!({
        "gpus": gpus(1, "NVIDIA H100 80GB HBM3", 0),
        "hang": [{"call": "nvmlDeviceGetUtilizationRates", "after": 0.0, "secs": 60}]
    });
    let mut c = costguard_on_gpus(dir.path(), &scenario);
    c.args(["--interval", "100ms", "--idle", "300ms", "--", "sleep", "2"]);
    let out = run(c);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("killed"), "{err}");
}

#[test]
fn gpu_memory_ceiling_counts_the_jobs_processes() {
    let dir = tempdir();
    let pid_file = dir.path().join("job.pid");
    let mut g = gpus(1, "NVIDIA H100 80GB HBM3", 90);
    g[0]["processes"] =
        json!([{"pid_file": pid_file, "mem": 60u64 << 30}, {"pid": 1, "mem": 10u64 << 30}]);
    let mut c = costguard_on_gpus(dir.path(), &json!({"gpus": g}));
    let script = format!("echo $$ > {}; exec sleep 30", pid_file.display());
    c.args([
        "--interval",
        "100ms",
        "--max-gpu-mem",
        "50GiB",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let out = run(c);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(124), "{err}");
    assert!(
        err.contains("killed: gpu_mem: job holds 60.0GiB on GPU 0 (ceiling 50.0GiB)"),
        "{err}"
    );
}
