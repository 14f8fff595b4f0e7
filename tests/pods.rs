//! Real pods, simulated as root (as CI runs): a PID namespace whose PID 1 is a long-lived
//! shell (the pause container), a private /dev holding regular files named `nvidia0` and
//! `nvidiactl` that the "trainer" keeps open, a bystander that holds none, and the fake NVML
//! speaking host pids that mean nothing inside. Fails, not skips, where namespaces cannot be
//! made: these tests need root, as CI has.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// The pod's PID 1: sets up the private /dev, then runs `body` (costguard is `$CG`).
fn pod(dir: &std::path::Path, scenario: &serde_json::Value, body: &str) -> Command {
    let path = dir.join("scenario.json");
    std::fs::write(&path, scenario.to_string()).expect("scenario");
    let script = format!(
        "set -u; mount -t tmpfs none /dev || exit 97; mknod -m 666 /dev/null c 1 3 || exit 97; \
         : > /dev/nvidia0; : > /dev/nvidiactl; {body}"
    );
    let mut c = Command::new("unshare");
    c.args(["--pid", "--fork", "--mount-proc", "sh", "-c", &script])
        .env("CG", bin())
        .env("COSTGUARD_PROVIDER", "none")
        .env("COSTGUARD_GPU", "nvml")
        .env("COSTGUARD_NVML_LIB", fake_nvml())
        .env("FAKE_NVML_SCENARIO", &path)
        .env("COSTGUARD_STATE_DIR", dir.join("state"))
        .env("COSTGUARD_LISTEN", "127.0.0.1:0")
        .env_remove("CUDA_VISIBLE_DEVICES")
        .env_remove("NVIDIA_VISIBLE_DEVICES")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn finish(c: &mut Command) -> (Output, String, String) {
    let out = c
        .output()
        .expect("unshare (util-linux) must be installed: scripts/test runs as root, as CI does");
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr(&out),
    );
    assert_ne!(
        out.status.code(),
        Some(97),
        "no private /dev (needs root): {e}"
    );
    assert!(
        !e.contains("unshare failed"),
        "PID namespaces need root: {e}"
    );
    (out, o, e)
}

/// One GPU, minor 0, whose NVML process list holds a pid from another namespace.
fn gpu_with_host_process(pid: serde_json::Value, mem: u64) -> serde_json::Value {
    let mut g = gpus(1, "NVIDIA H100 80GB HBM3", 90);
    g[0]["minor"] = json!(0);
    g[0]["processes"] = json!([{ "mem": mem }]);
    match pid {
        serde_json::Value::String(f) => g[0]["processes"][0]["pid_file"] = json!(f),
        p => g[0]["processes"][0]["pid"] = p,
    }
    json!({ "gpus": g })
}

/// The trainer: holds the GPU's device files for life (as CUDA does).
const TRAINER: &str = "sh -c 'exec 7</dev/nvidia0 8</dev/nvidiactl; exec sleep 4711'";

#[test]
#[ignore = "root (PID and mount namespaces): scripts/test runs it"]
fn the_wrappers_gpu_memory_ceiling_fires_inside_a_pid_namespace() {
    let dir = tempdir();
    let pid_file = dir.path().join("host.pid");
    let scenario = gpu_with_host_process(json!(pid_file.display().to_string()), 60 << 30);
    // Its own sleep number: tests run in parallel, and the host pid is found by it.
    let body = "$CG --interval 100ms --max-gpu-mem 50GiB --kill-grace 1s --max-wall 30s -- \
                sh -c 'exec 7</dev/nvidia0 8</dev/nvidiactl; exec sleep 4721'";
    let mut c = pod(dir.path(), &scenario, body);
    let child = c.spawn().expect("unshare");
    // NVML answers with the trainer's pid as the host sees it: find it from out here.
    let mut host_pid = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            host_pid = find_cmdline("sleep\u{0}4721\u{0}");
            host_pid.is_some()
        }),
        "the trainer started"
    );
    let host_pid = host_pid.unwrap_or_default();
    std::fs::write(&pid_file, host_pid.to_string()).expect("pid file");
    let out = child.wait_with_output().expect("wait");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(124), "{err}");
    assert!(err.contains("killed (gpu_mem)"), "{err}");
    assert!(
        err.contains("1 processes outside this PID namespace still hold 60.0GiB on GPU 0"),
        "{err}"
    );
    assert!(!alive(host_pid), "the trainer is gone");
}

/// Every event the pod's costguard recorded (its state directory is outside the pod).
fn events(dir: &std::path::Path) -> String {
    let runs = dir.join("state/runs");
    std::fs::read_dir(&runs)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path().join("events.jsonl")).unwrap_or_default())
        .collect()
}

/// The host pid of the process whose whole /proc/PID/cmdline is `cmdline`.
fn find_cmdline(cmdline: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let c = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        (String::from_utf8_lossy(&c) == cmdline).then_some(pid)
    })
}

#[test]
#[ignore = "root (PID and mount namespaces): scripts/test runs it"]
fn the_agent_kills_the_trainer_and_neither_the_bystander_nor_its_process_group() {
    let dir = tempdir();
    // NVML lists a host pid that does not exist in the pod.
    let scenario = gpu_with_host_process(json!(4_000_000u32), 10 << 30);
    // Trainer, bystander and agent all share PID 1's process group, as in a pod whose
    // shell starts them: the agent must take the trainer by pid, not the group.
    let body = format!(
        "sleep 4712 & by=$!; {TRAINER} & tr=$!; \
         $CG agent --interval 100ms --max-wall 2s --kill-grace 1s; rc=$?; \
         sleep 0.2; kill -0 $by 2>/dev/null && echo BYSTANDER-ALIVE; \
         kill -0 $tr 2>/dev/null || echo TRAINER-GONE; exit $rc"
    );
    let (out, stdout, err) = finish(&mut pod(dir.path(), &scenario, &body));
    assert_eq!(out.status.code(), Some(124), "{err}");
    assert!(stdout.contains("TRAINER-GONE"), "{stdout} {err}");
    assert!(stdout.contains("BYSTANDER-ALIVE"), "{stdout} {err}");
    assert!(events(dir.path()).contains("watching GPU process"), "{err}");
    assert!(err.contains("agent killed: wall"), "{err}");
    assert!(
        !err.contains("ended pids []"),
        "a kill names what it ended: {err}"
    );
}

#[test]
#[ignore = "root (PID and mount namespaces): scripts/test runs it"]
fn the_agent_exits_0_when_the_trainer_ends_by_itself() {
    let dir = tempdir();
    let scenario = gpu_with_host_process(json!(4_000_000u32), 10 << 30);
    let body = "sh -c 'exec 7</dev/nvidia0 8</dev/nvidiactl; exec sleep 1' & \
                $CG agent --interval 100ms --max-wall 30s --exit-when-done";
    let t = Instant::now();
    let (out, _, err) = finish(&mut pod(dir.path(), &scenario, body));
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    assert!(
        err.contains("agent completed: every GPU process it watched ended by itself"),
        "{err}"
    );
    assert!(
        !err.contains("killed"),
        "a job that succeeded is no kill: {err}"
    );
}

#[test]
#[ignore = "root (PID and mount namespaces): scripts/test runs it"]
fn an_agent_over_budget_from_the_start_kills_a_trainer_that_appears_later() {
    let dir = tempdir();
    let scenario = gpu_with_host_process(json!(4_000_000u32), 10 << 30);
    // $3600/h against $0.001: spent within a millisecond, before any GPU process exists.
    let body = format!(
        "(sleep 1; exec {TRAINER}) & \
         $CG agent --interval 100ms --usd-per-hour 3600 --max-usd 0.001 --kill-grace 1s; rc=$?; \
         sleep 0.2; pgrep -x sleep >/dev/null && echo SOMETHING-LEFT; exit $rc"
    );
    let (out, stdout, err) = finish(&mut pod(dir.path(), &scenario, &body));
    assert_eq!(out.status.code(), Some(124), "{err}");
    assert!(err.contains("over budget, no targets"), "{err}");
    assert!(events(dir.path()).contains("watching GPU process"), "{err}");
    assert!(!stdout.contains("SOMETHING-LEFT"), "{stdout} {err}");
}

#[test]
fn linger_keeps_metrics_up_so_the_kill_and_final_spend_are_scraped() {
    let state = tempdir();
    let mut child = guard(state.path())
        .args(["--run-id", "lingers"])
        .args([
            "--max-wall",
            "500ms",
            "--usd-per-hour",
            "36",
            "--linger",
            "20s",
        ])
        .args(["--listen", "127.0.0.1:0", "--", "sleep", "30"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("costguard");
    let port = bound_port(state.path(), "lingers", &mut child, Duration::from_secs(10));
    let mut metrics = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            metrics = http_get(port, "/metrics").unwrap_or_default();
            metrics.contains("costguard_kills_total{reason=\"wall\"} 1")
                && metrics.contains("costguard_run_ended 1")
        }),
        "the kill and the end of the run are scraped (CostguardDown keys on it): {metrics}"
    );
    assert!(
        child.try_wait().ok().flatten().is_none(),
        "still serving after the kill"
    );
    assert!(
        metrics.contains("costguard_spend_dollars_total 0.00"),
        "{metrics}"
    );
    // TERM (the kubelet) ends the linger early.
    let t = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("term");
    let out = child.wait_with_output().expect("wait");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("serving /metrics and /status for 20.000s more"),
        "{}",
        stderr(&out)
    );
}
