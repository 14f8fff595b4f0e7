//! A real Prometheus scraping costguard, and `promtool check metrics` on a live scrape.
//! Both need Debian's `prometheus` package (scripts/test installs it); missing, they fail.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

/// Starts costguard guarding a long sleep on 8 fake GPUs; returns it and its port once
/// /metrics shows GPU series.
fn guarded_job(dir: &std::path::Path) -> (std::process::Child, u16) {
    let port = free_port();
    let mut c = costguard_on_gpus(dir, &json!({"gpus": gpus(8, "NVIDIA H100 80GB HBM3", 60)}));
    c.args([
        "-q",
        "--interval",
        "200ms",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--max-usd",
        "100",
        "--max-wall",
        "1h",
        "--",
        "sleep",
        "120",
    ])
    .stderr(Stdio::null());
    let child = c.spawn().expect("spawn costguard");
    let ready = wait_until(Duration::from_secs(15), || {
        http_get(port, "/metrics")
            .is_some_and(|m| m.contains("costguard_gpu_utilization_ratio{gpu=\"7\""))
    });
    assert!(ready, "costguard never served GPU metrics");
    (child, port)
}

#[test]
fn promtool_accepts_a_live_scrape() {
    let dir = tempdir();
    let (child, port) = guarded_job(dir.path());
    let body = http_get(port, "/metrics").unwrap_or_default();
    end(child);
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed: scripts/test installs it");
    p.stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write");
    let out = p.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for name in [
        "costguard_build_info{version=",
        "costguard_spend_dollars_total ",
        "costguard_kills_total{reason=\"usd\"} 0",
        "costguard_kills_total{reason=\"fleet\"} 0",
        "costguard_events_total{kind=\"started\"} 1",
        "costguard_budget_dollars 100",
        "costguard_wall_limit_seconds 3600",
        "costguard_gpu_energy_joules_total{gpu=\"0\"",
        "process_resident_memory_bytes ",
    ] {
        assert!(body.contains(name), "scrape lacks {name:?}");
    }
}

#[test]
fn prometheus_scrapes_costguard() {
    let dir = tempdir();
    let (child, port) = guarded_job(dir.path());
    let prom_port = free_port();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: costguard\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"),
    )
    .expect("write config");
    let prom = Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (Debian package) must be installed: scripts/test installs it");
    let query = |q: &str| -> serde_json::Value {
        let path = format!(
            "/api/v1/query?query={}",
            q.replace(' ', "%20")
                .replace('(', "%28")
                .replace(')', "%29")
        );
        http_get(prom_port, &path)
            .and_then(|b| serde_json::from_str(&b).ok())
            .unwrap_or_default()
    };
    let mut gpus_seen = 0;
    let scraped = wait_until(Duration::from_secs(40), || {
        let r = query("count(costguard_gpu_utilization_ratio)");
        gpus_seen = r["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        gpus_seen == 8
    });
    let spend = query("costguard_spend_dollars_total");
    let up = query("up");
    end(prom);
    end(child);
    assert!(scraped, "Prometheus saw {gpus_seen} GPU series, not 8");
    assert_eq!(
        spend["data"]["result"].as_array().map(Vec::len),
        Some(1),
        "{spend}"
    );
    assert_eq!(up["data"]["result"][0]["value"][1], json!("1"), "{up}");
}
