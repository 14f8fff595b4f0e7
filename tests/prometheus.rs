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
    guarded(dir, &["--", "sleep", "120"])
}

fn guarded(dir: &std::path::Path, tail: &[&str]) -> (std::process::Child, u16) {
    let state = dir.join("state");
    let mut c = costguard_on_gpus(dir, &json!({"gpus": gpus(8, "NVIDIA H100 80GB HBM3", 60)}));
    c.env("COSTGUARD_STATE_DIR", &state)
        .args([
            "-q",
            "--run-id",
            "scraped",
            "--interval",
            "200ms",
            "--listen",
            "127.0.0.1:0",
            "--max-usd",
            "100",
            "--max-wall",
            "1h",
        ])
        .args(tail)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = c.spawn().expect("spawn costguard");
    let port = bound_port(&state, "scraped", &mut child, Duration::from_secs(15));
    let ready = wait_until(Duration::from_secs(15), || {
        http_get(port, "/metrics")
            .is_some_and(|m| m.contains("costguard_gpu_utilization_ratio{gpu=\"7\""))
    });
    assert!(ready, "costguard never served GPU metrics");
    (child, port)
}

#[test]
#[ignore = "promtool: scripts/test runs it"]
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
#[ignore = "prometheus: scripts/test runs it"]
fn prometheus_scrapes_costguard() {
    let dir = tempdir();
    let (child, port) = guarded_job(dir.path());
    let (prom, prom_port) = prometheus(dir.path(), port, None);
    let query = |q: &str| query(prom_port, q);
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

/// Starts Debian's Prometheus scraping costguard on `target` every second, with `rules`
/// loaded and evaluated every second; returns it and the port it listens on.
fn prometheus(
    dir: &std::path::Path,
    target: u16,
    rules: Option<&std::path::Path>,
) -> (std::process::Child, u16) {
    prometheus_of(dir, &[target], rules)
}

/// Prometheus as `prometheus` starts it, on every port of `targets` (file-based discovery:
/// `set_targets` changes them while it runs); it listens on a port of its choosing, read from
/// its log.
fn prometheus_of(
    dir: &std::path::Path,
    targets: &[u16],
    rules: Option<&std::path::Path>,
) -> (std::process::Child, u16) {
    set_targets(dir, targets);
    let cfg = dir.join("prometheus.yml");
    let rule_files = rules.map_or(String::new(), |r| {
        format!("rule_files:\n  - '{}'\n", r.display())
    });
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n{rule_files}scrape_configs:\n  - job_name: costguard\n    file_sd_configs:\n      - files: ['{}']\n        refresh_interval: 1s\n",
            dir.join("targets.json").display()
        ),
    )
    .expect("write config");
    let log = dir.join("prometheus.log");
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg("--web.listen-address=127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("prometheus (Debian package) must be installed: scripts/test installs it");
    let prom_port = logged_port(&log, &mut prom, Duration::from_secs(20));
    (prom, prom_port)
}

/// The costguard ports Prometheus of `dir` scrapes: its file-discovery targets, replaced
/// whole (a rename, so it never reads half a file).
fn set_targets(dir: &std::path::Path, targets: &[u16]) {
    let list: Vec<String> = targets.iter().map(|t| format!("127.0.0.1:{t}")).collect();
    let tmp = dir.join("targets.json.new");
    std::fs::write(&tmp, json!([{ "targets": list }]).to_string()).expect("write targets");
    std::fs::rename(&tmp, dir.join("targets.json")).expect("targets.json");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn query(prom_port: u16, q: &str) -> serde_json::Value {
    http_get(prom_port, &format!("/api/v1/query?query={}", urlencode(q)))
        .and_then(|b| serde_json::from_str(&b).ok())
        .unwrap_or_default()
}

/// A panel query as Grafana would send it for one job, one instance and all GPUs.
fn as_grafana_sends_it(expr: &str, instance: &str) -> String {
    expr.replace("$job", "costguard")
        .replace("$instance", &instance.replace('.', "\\\\."))
        .replace("$gpu", ".*")
        .replace("$__rate_interval", "15s")
}

#[test]
#[ignore = "prometheus: scripts/test runs it"]
fn every_dashboard_query_and_alert_rule_evaluates_against_real_prometheus() {
    let dir = tempdir();
    let steps = "i=0; while :; do i=$((i+1)); echo step $i; sleep 0.2; done";
    let (child, port) = guarded(
        dir.path(),
        &[
            "--progress-regex",
            r"step (\d+)",
            "--progress-total",
            "100000",
            "--stall",
            "1h",
        ]
        .into_iter()
        .chain(["--idle", "1h", "--", "sh", "-c", steps])
        .collect::<Vec<_>>(),
    );
    let rules = repo_root().join("deploy/prometheus/costguard-rules.yml");
    let (prom, prom_port) = prometheus(dir.path(), port, Some(&rules));
    let instance = format!("127.0.0.1:{port}");

    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("dashboards/costguard.json")).expect("dashboard"),
    )
    .expect("dashboard is JSON");
    // Enough scrapes for 15 s rate windows.
    let warm = wait_until(Duration::from_secs(40), || {
        let r = query(prom_port, "count_over_time(costguard_build_info[1m])");
        r["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse::<u32>().ok())
            .is_some_and(|n| n >= 6)
    });
    let mut failures = Vec::new();
    let mut evaluated = 0;
    if !warm {
        failures.push("Prometheus never scraped costguard six times".to_string());
    }
    // Template variables: label_values(METRIC{SEL}, LABEL) as the matching PromQL.
    let re = regex::Regex::new(r"^label_values\((.*), (\w+)\)$").expect("regex");
    for v in dash["templating"]["list"].as_array().expect("variables") {
        let Some(q) = v["query"]["query"].as_str() else {
            continue;
        };
        let caps = re.captures(q).expect("label_values query");
        let promql = format!(
            "group by ({}) ({})",
            &caps[2],
            as_grafana_sends_it(&caps[1], &instance)
        );
        let r = query(prom_port, &promql);
        evaluated += 1;
        if r["status"] != "success" || r["data"]["result"].as_array().is_none_or(Vec::is_empty) {
            failures.push(format!("variable {}: {promql} -> {r}", v["name"]));
        }
    }
    // Every panel target must parse and run; every panel must show data.
    // The one target allowed to be empty: failed notifications, with no channel configured.
    let may_be_empty = ["costguard_notifications_failed_total"];
    let mut titles = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        let Some(targets) = p["targets"].as_array() else {
            continue;
        };
        let title = p["title"].as_str().unwrap_or_default().to_string();
        let mut panel_has_data = false;
        for t in targets {
            let expr = as_grafana_sends_it(t["expr"].as_str().expect("expr"), &instance);
            let r = query(prom_port, &expr);
            evaluated += 1;
            let rows = r["data"]["result"].as_array().map_or(0, Vec::len);
            if r["status"] != "success" {
                failures.push(format!("{title}: {expr} -> {r}"));
            } else if rows == 0 && !may_be_empty.iter().any(|m| expr.contains(m)) {
                failures.push(format!("{title}: no data from {expr}"));
            }
            panel_has_data |= rows > 0;
        }
        if !panel_has_data {
            failures.push(format!("panel {title} shows nothing"));
        }
        titles.push(title);
    }
    // Alert rules: Prometheus evaluated each; each expression also runs as a query, and this
    // healthy run raises no alert.
    let rules_doc: serde_json::Value = http_get(prom_port, "/api/v1/rules")
        .and_then(|b| serde_json::from_str(&b).ok())
        .unwrap_or_default();
    let mut alert_rules = 0;
    for g in rules_doc["data"]["groups"].as_array().into_iter().flatten() {
        for r in g["rules"].as_array().into_iter().flatten() {
            alert_rules += 1;
            let name = r["name"].as_str().unwrap_or_default();
            if r["health"] != "ok" {
                failures.push(format!(
                    "rule {name}: health {} {}",
                    r["health"], r["lastError"]
                ));
            }
            if r["state"] != "inactive" {
                failures.push(format!("rule {name} is {} in a healthy run", r["state"]));
            }
            let q = query(prom_port, r["query"].as_str().unwrap_or_default());
            evaluated += 1;
            if q["status"] != "success" {
                failures.push(format!("rule {name}: {q}"));
            }
        }
    }
    end(prom);
    end(child);
    assert_eq!(alert_rules, 6, "all six alert rules loaded: {rules_doc}");
    assert!(titles.len() >= 15, "{titles:?}");
    assert!(
        failures.is_empty(),
        "{evaluated} evaluated; failures:\n{}",
        failures.join("\n")
    );
}

#[test]
#[ignore = "promtool: scripts/test runs it"]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = repo_root().join("deploy/prometheus");
    for args in [
        &["check", "rules", "costguard-rules.yml"][..],
        &["test", "rules", "costguard-rules.test.yml"][..],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool (Debian package prometheus) must be installed");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn dashboard_is_import_ready() {
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("dashboards/costguard.json")).expect("read"),
    )
    .expect("JSON");
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(vars, ["datasource", "job", "instance", "gpu"]);
    assert_eq!(dash["templating"]["list"][0]["type"], "datasource");
    assert!(
        dash.get("id").is_none(),
        "no instance-specific id: imports as new"
    );
    let mut ids = std::collections::HashSet::new();
    for p in dash["panels"].as_array().expect("panels") {
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "panel ids unique"
        );
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{p}");
            for t in p["targets"].as_array().expect("targets") {
                let e = t["expr"].as_str().expect("expr");
                assert!(
                    e.contains("job=~\"$job\", instance=~\"$instance\""),
                    "every query follows the job and instance variables: {e}"
                );
            }
        }
    }
}

/// The final "spent $X" of a summary line.
fn final_spend(err: &str) -> f64 {
    let re = regex::Regex::new(r"spent \$([0-9.]+)").expect("regex");
    re.captures_iter(err)
        .last()
        .and_then(|c| c[1].parse().ok())
        .unwrap_or(f64::NAN)
}

#[test]
#[ignore = "prometheus: scripts/test runs it"]
fn a_fleet_budget_read_from_prometheus_stops_every_member() {
    let dir = tempdir();
    let state = dir.path().join("state");
    // Prometheus first (the members are told its address), scraping nothing yet.
    let (prom, prom_port) = prometheus_of(dir.path(), &[], None);
    let ready = wait_until(Duration::from_secs(20), || {
        http_get(prom_port, "/-/ready").is_some()
    });
    let mut members: Vec<std::process::Child> = (0..3)
        .map(|i| {
            let mut c = guard(&state);
            c.args([
                "--run-id",
                &format!("member-{i}"),
                "--listen",
                "127.0.0.1:0",
                "--usd-per-hour",
                "3600",
            ])
            .args(["--fleet-max-usd", "15", "--fleet-interval", "500ms"])
            .args(["--prometheus-url", &format!("http://127.0.0.1:{prom_port}")])
            .args([
                "--fleet-selector",
                "{job=\"costguard\"}",
                "--max-wall",
                "60s",
            ])
            .args(["--", "sleep", "60"])
            .stderr(Stdio::piped());
            c.spawn().expect("spawn member")
        })
        .collect();
    // Then each member's port, as each bound it, for Prometheus to scrape.
    let ports: Vec<u16> = members
        .iter_mut()
        .enumerate()
        .map(|(i, m)| bound_port(&state, &format!("member-{i}"), m, Duration::from_secs(10)))
        .collect();
    set_targets(dir.path(), &ports);
    let outs: Vec<std::process::Output> = members
        .into_iter()
        .map(|m| m.wait_with_output().expect("wait"))
        .collect();
    end(prom);
    assert!(ready, "Prometheus never became ready");
    let mut total = 0.0;
    for o in &outs {
        let err = stderr(o);
        assert_eq!(o.status.code(), Some(124), "{err}");
        assert!(err.contains("killed: fleet: the fleet spent $"), "{err}");
        total += final_spend(&err);
    }
    // Three members at $1/s each reach $15 after 5 s, past Prometheus' first scrapes. The
    // query projects each member past its last scrape, so what is left is the fleet interval
    // (0.5 s), the metric refresh (0.2 s) and the query: 3 × $1/s × ~0.7 s, bounded here by
    // 3 × $1/s × 2 s.
    let overshoot = total - 15.0;
    eprintln!(
        "fleet budget $15.00: the members spent ${total:.2} in all (overshoot ${overshoot:.2})"
    );
    assert!(total >= 15.0 && overshoot < 6.0, "total ${total:.2}");

    // Prometheus unreachable: an agent-error, and the local ceiling still fires on time. (The
    // port held, never listening: refused, and no other process can take it meanwhile.)
    let held = hold_port();
    let closed = held.port;
    let mut c = costguard();
    c.args([
        "--usd-per-hour",
        "36",
        "--fleet-max-usd",
        "1",
        "--fleet-interval",
        "200ms",
    ])
    .args(["--prometheus-url", &format!("http://127.0.0.1:{closed}")])
    .args(["--max-wall", "1500ms", "--", "sleep", "30"]);
    let start = std::time::Instant::now();
    let out = run(c);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(124), "{err}");
    assert!(
        err.contains("agent-error (fleet-unreachable): fleet budget unknown"),
        "{err}"
    );
    assert!(err.contains("killed: wall"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_redirecting_prometheus_is_not_followed() {
    use common::receiver::{Receiver, Reply};
    let elsewhere = Receiver::start(vec![]);
    let prom = Receiver::start(vec![
        Reply::Redirect(302, elsewhere.url("/api/v1/query"));
        50
    ]);
    let mut c = costguard();
    c.args(["--usd-per-hour", "36", "--fleet-max-usd", "1"])
        .args(["--prometheus-url", &prom.url("/prom")])
        .args(["--max-wall", "1s", "--", "sleep", "30"]);
    let out = run(c);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(124), "{err}");
    assert!(
        err.contains(
            "fleet budget unknown: Prometheus answered HTTP 302 Found (redirects are not followed)"
        ),
        "{err}"
    );
    assert!(!prom.all().is_empty(), "Prometheus was asked");
    assert!(
        elsewhere.all().is_empty(),
        "followed: {:?}",
        elsewhere.all()
    );
}
