//! GPU telemetry through the real nvml-wrapper path, loading this repo's fake libnvidia-ml.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn one_two_and_eight_gpus_are_priced_from_the_table() {
    let dir = tempdir();
    for (n, want) in [
        (1usize, "1 × NVIDIA H100 80GB HBM3 at $2.99/h"),
        (2, "2 × NVIDIA H100 80GB HBM3"),
        (8, "8 × NVIDIA H100 80GB HBM3"),
    ] {
        let mut c = costguard_on_gpus(
            dir.path(),
            &json!({"gpus": gpus(n, "NVIDIA H100 80GB HBM3", 50)}),
        );
        c.args(["--", "true"]);
        let out = run(c);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(want), "{n} GPUs: {err}");
        let total = format!("${:.2}/h", 2.99 * n as f64);
        assert!(err.contains(&total), "{n} GPUs should cost {total}: {err}");
    }
    let mut mixed = gpus(1, "NVIDIA H100 80GB HBM3", 50);
    mixed.extend(gpus(1, "NVIDIA A100-SXM4-80GB", 50));
    mixed[1]["uuid"] = json!("GPU-aaaaaaaa-mixed");
    let mut c = costguard_on_gpus(dir.path(), &json!({"gpus": mixed}));
    c.args(["--", "true"]);
    let err = stderr(&run(c));
    assert!(
        err.contains("$4.78/h from 1 × NVIDIA A100-SXM4-80GB at $1.79/h"),
        "{err}"
    );
}

#[test]
fn visible_devices_limit_the_rate() {
    let dir = tempdir();
    let mut c = costguard_on_gpus(
        dir.path(),
        &json!({"gpus": gpus(8, "NVIDIA H100 80GB HBM3", 50)}),
    );
    c.env("CUDA_VISIBLE_DEVICES", "3,GPU-00000005")
        .args(["--", "true"]);
    let err = stderr(&run(c));
    assert!(
        err.contains("$5.98/h from 2 × NVIDIA H100 80GB HBM3"),
        "{err}"
    );
}

#[test]
fn unknown_model_with_a_budget_is_an_error_naming_it() {
    let dir = tempdir();
    let mut c = costguard_on_gpus(
        dir.path(),
        &json!({"gpus": gpus(1, "Mystery Accelerator X", 50)}),
    );
    c.args(["--max-usd", "5", "--", "true"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("\"Mystery Accelerator X\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn missing_library_auto_falls_back_and_nvml_mode_refuses() {
    let mut c = costguard();
    c.env("COSTGUARD_GPU", "auto")
        .env("COSTGUARD_NVML_LIB", "/nonexistent/libnvidia-ml.so.1")
        .args(["--", "true"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert_eq!(
        err.matches("no GPU telemetry").count(),
        1,
        "one clear notice: {err}"
    );
    let mut c = costguard();
    c.env("COSTGUARD_GPU", "nvml")
        .env("COSTGUARD_NVML_LIB", "/nonexistent/libnvidia-ml.so.1")
        .args(["--", "true"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("/nonexistent/libnvidia-ml.so.1"),
        "{}",
        stderr(&out)
    );
    // A library whose init fails (driver not loaded).
    let dir = tempdir();
    let mut c = costguard_on_gpus(dir.path(), &json!({"init_error": 9, "gpus": []}));
    c.args(["--", "true"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
}

#[test]
fn lost_gpu_raises_an_agent_error_and_ceilings_still_fire() {
    let dir = tempdir();
    let mut g = gpus(2, "NVIDIA H100 80GB HBM3", 80);
    g[1]["lost_after"] = json!(0.5);
    let mut c = costguard_on_gpus(dir.path(), &json!({"gpus": g}));
    c.args([
        "--interval",
        "200ms",
        "--max-wall",
        "2s",
        "--idle",
        "500ms",
        "--",
        "sleep",
        "30",
    ]);
    let out = run(c);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(124), "{err}");
    assert!(
        err.contains("agent-error (gpu-lost): GPU 1 is lost"),
        "{err}"
    );
    assert!(
        err.contains("killed: wall: ran 2."),
        "the wall ceiling, not idle: {err}"
    );
}

#[test]
fn hung_nvml_call_is_unknown_and_never_delays_a_kill() {
    let dir = tempdir();
    let scenario = json!({
        "gpus": gpus(1, "NVIDIA H100 80GB HBM3", 0),
        "hang": [{"call": "nvmlDeviceGetUtilizationRates", "after": 0.3, "secs": 60}]
    });
    let mut c = costguard_on_gpus(dir.path(), &scenario);
    c.args([
        "--interval",
        "200ms",
        "--usd-per-hour",
        "3600",
        "--max-usd",
        "1.5",
        "--",
        "sleep",
        "30",
    ]);
    let start = std::time::Instant::now();
    let out = run(c);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(124), "{err}");
    assert!(
        err.contains("agent-error (telemetry): GPU telemetry unknown: NVML did not answer"),
        "{err}"
    );
    assert!(err.contains("killed: usd: spent $1.50"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "the kill waited for the hung call"
    );
}

#[test]
fn status_shows_unknown_not_zero_for_unsupported_values() {
    let dir = tempdir();
    let mut g = gpus(1, "NVIDIA A100-SXM4-80GB MIG 3g.40gb", 40);
    g[0]["unsupported"] = json!(["GetPowerUsage", "GetTotalEnergyConsumption"]);
    let mut c = costguard_on_gpus(dir.path(), &json!({"gpus": g}));
    c.env("COSTGUARD_STATE_DIR", dir.path().join("state"))
        .args([
            "--run-id",
            "unsupported",
            "--interval",
            "100ms",
            "--listen",
            "127.0.0.1:0",
            "--usd-per-hour",
            "1",
            "--",
            "sleep",
            "30",
        ]);
    let mut child = c.spawn().expect("spawn");
    let state = dir.path().join("state");
    let port = bound_port(&state, "unsupported", &mut child, Duration::from_secs(10));
    let mut doc = serde_json::Value::Null;
    let seen = wait_until(Duration::from_secs(10), || {
        doc = http_get(port, "/status")
            .and_then(|b| serde_json::from_str(&b).ok())
            .unwrap_or_default();
        doc["gpus"].as_array().is_some_and(|a| !a.is_empty())
    });
    let metrics = http_get(port, "/metrics").unwrap_or_default();
    end(child);
    assert!(seen, "no GPU sample in /status: {doc}");
    let gpu = &doc["gpus"][0];
    assert_eq!(gpu["util_gpu_pct"], json!(40.0));
    assert!(
        gpu["power_watts"].is_null(),
        "unsupported power must be unknown: {gpu}"
    );
    assert!(gpu["energy_joules"].is_null());
    assert!(
        metrics.contains("costguard_gpu_utilization_ratio{gpu=\"0\""),
        "{metrics}"
    );
    assert!(
        !metrics.contains("costguard_gpu_power_watts{"),
        "unknown power must be absent, not 0"
    );
}

#[test]
fn kill_that_did_not_free_the_gpu_is_reported() {
    let dir = tempdir();
    let pid_file = dir.path().join("job.pid");
    let mut g = gpus(1, "NVIDIA H100 80GB HBM3", 90);
    g[0]["processes"] = json!([{"pid_file": pid_file, "mem": 4u64 << 30}]);
    let script = format!("echo $$ > {}; exec sleep 30", pid_file.display());
    // The fake keeps listing the pid (a driver that has not cleaned up): reported.
    let mut c = costguard_on_gpus(dir.path(), &json!({"gpus": g.clone()}));
    c.args([
        "--interval",
        "100ms",
        "--max-wall",
        "1s",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let err = stderr(&run(c));
    assert!(
        err.contains("agent-error (gpu-not-freed): after the kill, pid"),
        "{err}"
    );
    assert!(err.contains("still holds 4.0GiB on GPU 0"), "{err}");
    // A driver that dropped the dead pid: nothing to report.
    let mut c = costguard_on_gpus(dir.path(), &json!({"only_live_pids": true, "gpus": g}));
    c.args([
        "--interval",
        "100ms",
        "--max-wall",
        "1s",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let err = stderr(&run(c));
    assert!(!err.contains("gpu-not-freed"), "{err}");
}

#[test]
fn usd_per_kwh_prices_the_energy_of_the_visible_gpus() {
    let dir = tempdir();
    let mut g = gpus(2, "Owned Box GPU", 90);
    g[0]["timeline"][0]["power_mw"] = json!(1_000_000); // 1 kW: $1/s at $3600/kWh
    g[1]["timeline"][0]["power_mw"] = json!(500_000); // not visible: not priced
    let state = dir.path().join("state");
    let mut c = costguard_on_gpus(dir.path(), &json!({ "gpus": g }));
    c.env("CUDA_VISIBLE_DEVICES", "0")
        .env("COSTGUARD_STATE_DIR", &state)
        .args(["--listen", "127.0.0.1:0", "--run-id", "kwh"])
        .args([
            "--interval",
            "200ms",
            "--usd-per-kwh",
            "3600",
            "--max-usd",
            "3",
            "--",
            "sleep",
            "30",
        ])
        .stderr(std::process::Stdio::piped());
    let start = std::time::Instant::now();
    let mut child = c.spawn().expect("spawn");
    let port = bound_port(&state, "kwh", &mut child, Duration::from_secs(5));
    let mut rate = None;
    assert!(wait_until(Duration::from_secs(5), || {
        let doc = http_get(port, "/status")
            .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok());
        rate = doc.and_then(|d| d["rate_dollars_per_hour"].as_f64());
        rate.is_some_and(|r| r > 0.0)
    }));
    let rate = rate.unwrap();
    assert!(
        (3400.0..3800.0).contains(&rate),
        "1 kW at $3600/kWh is $3600/h, GPU 1 left out; got {rate}"
    );
    let out = child.wait_with_output().expect("wait");
    let took = start.elapsed();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(124), "{err}");
    assert!(
        err.contains("energy"),
        "the start names energy pricing: {err}"
    );
    assert!(err.contains("killed: usd: spent $3.00"), "{err}");
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(8),
        "$3 at $1/s: {took:?}"
    );
}
