//! The deploy/ files, checked offline: YAML structure of the Kubernetes manifests (no
//! cluster or schema server here), the PrometheusRule against the rules file, the systemd
//! unit and Slurm script, and every costguard command line in them accepted by the binary.

mod common;

use std::path::PathBuf;

use common::*;
use yaml_rust2::{Yaml, YamlLoader};

fn deploy(p: &str) -> PathBuf {
    repo_root().join("deploy").join(p)
}

fn docs(p: &str) -> Vec<Yaml> {
    let text = std::fs::read_to_string(deploy(p)).expect("read manifest");
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn s<'a>(y: &'a Yaml, path: &[&str]) -> &'a Yaml {
    path.iter().fold(y, |y, k| &y[*k])
}

/// The costguard container of a pod spec (a container, or a native sidecar's init container).
fn costguard_container(spec: &Yaml) -> &Yaml {
    ["containers", "initContainers"]
        .iter()
        .filter_map(|k| spec[*k].as_vec())
        .flatten()
        .find(|c| c["command"][0].as_str() == Some("costguard"))
        .expect("a container running costguard")
}

fn args_of(c: &Yaml) -> Vec<String> {
    c["args"]
        .as_vec()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_string())
        .collect()
}

/// The binary accepts the flags (NVML, secrets and cluster addresses aside).
fn accepted(args: &[String]) {
    // Addresses and paths of the target machine are left out (with their values).
    let mut flags: Vec<String> = Vec::new();
    let mut skip = false;
    for a in args.iter().take_while(|a| *a != "--") {
        if std::mem::take(&mut skip) {
            continue;
        }
        if a == "--listen" || a == "--state-dir" {
            skip = true;
            continue;
        }
        // Addresses, paths, and the linger after the end (a parse check need not wait).
        if a.starts_with("--listen=") || a.starts_with("--state-dir=") || a.starts_with("--linger=")
        {
            continue;
        }
        flags.push(a.replace("$(NODE_NAME)", "node1"));
    }
    let agent = flags.first().is_some_and(|f| f == "agent");
    let dir = tempdir();
    let mut c = costguard();
    c.env("COSTGUARD_STATE_DIR", dir.path());
    // A stand-in price (on a GPU node the price table gives it); a Prometheus is not
    // needed to parse.
    flags.retain(|f| !f.starts_with("--fleet") && !f.starts_with("--prometheus-url"));
    if !flags.iter().any(|f| f.starts_with("--usd-per-hour")) {
        flags.push("--usd-per-hour=1".into());
    }
    if !agent {
        flags.extend(["--".into(), "true".into()]);
    }
    c.args(&flags);
    let out = c.output().expect("run costguard");
    let err = stderr(&out);
    if agent {
        assert!(
            err.contains("needs NVML"),
            "agent flags rejected: {flags:?}: {err}"
        );
    } else {
        assert_eq!(out.status.code(), Some(0), "{flags:?}: {err}");
    }
}

#[test]
fn the_job_runs_the_trainer_under_costguard() {
    let d = &docs("kubernetes/job/job.yaml")[0];
    assert_eq!(d["apiVersion"].as_str(), Some("batch/v1"));
    assert_eq!(d["kind"].as_str(), Some("Job"));
    assert_eq!(d["spec"]["backoffLimit"].as_i64(), Some(0));
    let spec = s(d, &["spec", "template", "spec"]);
    assert_eq!(spec["restartPolicy"].as_str(), Some("Never"));
    let c = costguard_container(spec);
    let args = args_of(c);
    let dash = args.iter().position(|a| a == "--").expect("--");
    assert_eq!(args[dash + 1], "python", "the trainer runs under costguard");
    assert!(args.iter().any(|a| a.starts_with("--max-usd=")));
    assert!(args.iter().any(|a| a.starts_with("--fleet-max-usd=")));
    assert!(
        c["env"]
            .as_vec()
            .expect("env")
            .iter()
            .any(|e| e["valueFrom"]["secretKeyRef"].is_hash()),
        "secrets come from a Secret, not the command line"
    );
    accepted(&args);
}

#[test]
fn the_sidecar_shares_the_pid_namespace_with_only_cap_kill() {
    let d = &docs("kubernetes/sidecar/sidecar-pod.yaml")[0];
    assert_eq!(d["kind"].as_str(), Some("Pod"));
    let spec = &d["spec"];
    assert_eq!(spec["shareProcessNamespace"].as_bool(), Some(true));
    let c = costguard_container(spec);
    let caps = s(c, &["securityContext", "capabilities"]);
    assert_eq!(caps["drop"][0].as_str(), Some("ALL"));
    assert_eq!(caps["add"].as_vec().map(Vec::len), Some(1));
    assert_eq!(caps["add"][0].as_str(), Some("KILL"));
    assert_eq!(
        s(c, &["securityContext", "allowPrivilegeEscalation"]).as_bool(),
        Some(false)
    );
    let args = args_of(c);
    assert_eq!(args[0], "agent");
    accepted(&args);
}

#[test]
fn the_sidecar_is_native_and_lets_the_pod_finish() {
    let d = &docs("kubernetes/sidecar/sidecar-pod.yaml")[0];
    let spec = &d["spec"];
    let init = spec["initContainers"].as_vec().expect("initContainers");
    let cg = init
        .iter()
        .find(|c| c["command"][0].as_str() == Some("costguard"))
        .expect("costguard is an init container");
    assert_eq!(
        cg["restartPolicy"].as_str(),
        Some("Always"),
        "a native sidecar (Kubernetes >= 1.29): TERM after the trainer ends"
    );
    let args = args_of(cg);
    assert!(args.contains(&"--exit-when-done".to_string()), "{args:?}");
    assert!(args.iter().any(|a| a.starts_with("--linger=")), "{args:?}");
    // The older variant is a plain container that must end by itself.
    let legacy = &docs("kubernetes/sidecar-legacy/sidecar-pod-legacy.yaml")[0];
    assert_eq!(
        legacy["spec"]["shareProcessNamespace"].as_bool(),
        Some(true)
    );
    let args = args_of(costguard_container(&legacy["spec"]));
    assert!(args.contains(&"--exit-when-done".to_string()), "{args:?}");
    accepted(&args);
}

#[test]
fn the_node_agent_sees_every_process_of_the_node() {
    let d = &docs("kubernetes/node-agent/node-agent-daemonset.yaml")[0];
    assert_eq!(d["kind"].as_str(), Some("DaemonSet"));
    let spec = s(d, &["spec", "template", "spec"]);
    assert_eq!(spec["hostPID"].as_bool(), Some(true));
    assert_eq!(
        s(d, &["spec", "selector", "matchLabels"]),
        s(d, &["spec", "template", "metadata", "labels"]),
        "the selector matches the pod labels"
    );
    let c = costguard_container(spec);
    let args = args_of(c);
    assert!(args.iter().any(|a| a == "--run-id=node-$(NODE_NAME)"));
    accepted(&args);
}

/// An overlay as `kubectl kustomize` renders it (offline), one YAML document per object.
fn rendered(overlay: &str) -> Vec<Yaml> {
    let out = std::process::Command::new("kubectl")
        .args(["kustomize"])
        .arg(deploy(&format!("kubernetes/{overlay}")))
        .output()
        .expect("kubectl (with kustomize v4 or later) must be installed, as scripts/test checks");
    assert!(
        out.status.success(),
        "kubectl kustomize {overlay}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    YamlLoader::load_from_str(&String::from_utf8_lossy(&out.stdout)).expect("rendered YAML")
}

#[test]
#[ignore = "kubectl with kustomize v4 or later: scripts/test runs it"]
fn every_overlay_renders_a_pod_monitor_that_finds_its_pods_in_any_namespace() {
    let rules = &docs("prometheus/costguard-rules.yml")[0];
    for overlay in ["job", "sidecar", "sidecar-legacy", "node-agent"] {
        let objs = rendered(overlay);
        let kind = |k: &str| {
            objs.iter()
                .find(|x| x["kind"].as_str() == Some(k))
                .unwrap_or_else(|| panic!("{overlay}: no {k}"))
        };
        let pm = kind("PodMonitor");
        let pr = kind("PrometheusRule");
        for o in [pm, pr] {
            assert_eq!(
                o["metadata"]["labels"]["release"].as_str(),
                Some("kube-prometheus-stack"),
                "{overlay}: kube-prometheus-stack picks up only objects with its release label"
            );
        }
        assert_eq!(
            json_of(&pr["spec"]["groups"]),
            json_of(&rules["groups"]),
            "{overlay}: the tested rules (key order aside: kustomize sorts keys)"
        );
        assert_eq!(pm["spec"]["namespaceSelector"]["any"].as_bool(), Some(true));
        assert_eq!(
            pm["spec"]["jobLabel"].as_str(),
            Some("app.kubernetes.io/name"),
            "the job label is \"costguard\", as the alert rules expect"
        );
        let workload = objs
            .iter()
            .find(|x| matches!(x["kind"].as_str(), Some("Job" | "Pod" | "DaemonSet")))
            .expect("the workload");
        let spec = if workload["kind"].as_str() == Some("Pod") {
            workload
        } else {
            s(workload, &["spec", "template"])
        };
        let labels = &spec["metadata"]["labels"];
        let selector = pm["spec"]["selector"]["matchLabels"]
            .as_hash()
            .expect("matchLabels");
        for (k, v) in selector {
            assert_eq!(
                &labels[k.as_str().expect("key")],
                v,
                "{overlay}: pod labels {labels:?}"
            );
        }
        let port = pm["spec"]["podMetricsEndpoints"][0]["port"]
            .as_str()
            .expect("port");
        let c = costguard_container(&spec["spec"]);
        let ports = c["ports"].as_vec().expect("ports");
        assert!(
            ports.iter().any(|p| p["name"].as_str() == Some(port)),
            "{overlay}: the costguard container names the {port} port"
        );
        // Images come from the overlay's `images:` (pinned, never :latest).
        for img in objs_images(&spec["spec"]) {
            assert!(
                !img.ends_with(":latest") && img.contains(':'),
                "{overlay}: {img}"
            );
        }
    }
}

/// A YAML value as JSON, whose maps compare without regard to key order.
fn json_of(y: &Yaml) -> serde_json::Value {
    match y {
        Yaml::Hash(h) => serde_json::Value::Object(
            h.iter()
                .map(|(k, v)| (k.as_str().unwrap_or_default().to_string(), json_of(v)))
                .collect(),
        ),
        Yaml::Array(a) => serde_json::Value::Array(a.iter().map(json_of).collect()),
        Yaml::String(s) => s.clone().into(),
        Yaml::Integer(i) => (*i).into(),
        Yaml::Boolean(b) => (*b).into(),
        Yaml::Real(r) => r.parse::<f64>().map(Into::into).unwrap_or_default(),
        _ => serde_json::Value::Null,
    }
}

fn objs_images(pod_spec: &Yaml) -> Vec<String> {
    ["containers", "initContainers"]
        .iter()
        .flat_map(|k| pod_spec[*k].as_vec().cloned().unwrap_or_default())
        .filter_map(|c| c["image"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn the_prometheus_rule_holds_the_tested_alert_rules() {
    let pr = &docs("kubernetes/base/prometheusrule.yaml")[0];
    assert_eq!(pr["kind"].as_str(), Some("PrometheusRule"));
    let rules = &docs("prometheus/costguard-rules.yml")[0];
    assert_eq!(
        pr["spec"]["groups"], rules["groups"],
        "in sync with the promtool-tested file"
    );
}

#[test]
fn the_systemd_unit_and_slurm_script_wrap_the_job() {
    let unit = std::fs::read_to_string(deploy("systemd/costguard@.service")).expect("unit");
    for want in [
        "[Service]",
        "KillMode=control-group",
        "Restart=no",
        "ExecStart=/usr/local/bin/costguard ",
    ] {
        assert!(unit.contains(want), "{want} in the unit");
    }
    // A ceiling kill (124) must show in `systemctl --failed`.
    assert!(!unit.contains("SuccessExitStatus"), "ceiling kills hidden");
    let exec = unit
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .expect("ExecStart");
    let mut args: Vec<String> = Vec::new();
    let mut skip = false;
    for a in exec.split_whitespace().skip(1) {
        if std::mem::take(&mut skip) {
            continue;
        }
        // Paths of the target machine: not here.
        if a == "--config" || a == "--state-dir" {
            skip = true;
            continue;
        }
        args.push(a.replace("%i", "job1"));
    }
    let dash = args.iter().position(|a| a == "--").expect("--");
    args.truncate(dash);
    accepted(&args);

    let sb = std::fs::read_to_string(deploy("slurm/train.sbatch")).expect("sbatch");
    assert!(sb.starts_with("#!/bin/bash"));
    assert!(sb.contains("#SBATCH --time="));
    let joined = sb.replace("\\\n", " ");
    let line = joined
        .lines()
        .find(|l| l.starts_with("srun "))
        .expect("srun line")
        .trim_end()
        .trim_end_matches('&');
    // Split the words as the shell will.
    let rest = line
        .split_once("costguard")
        .expect("costguard on the srun line")
        .1;
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("for a in {rest}; do printf '%s\\0' \"$a\"; done"))
        .env("SLURM_JOB_ID", "42")
        .output()
        .expect("sh");
    let args: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split('\0')
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    assert!(args.iter().any(|a| a == "--warn-signal"));
    accepted(&args);
}

/// The unit's security score from `systemd-analyze security --offline` (an instance name is
/// needed: the template is copied to `costguard@job1.service`).
#[test]
#[ignore = "systemd-analyze: scripts/test runs it"]
fn the_systemd_unit_is_hardened() {
    let dir = common::tempdir();
    let unit = dir.path().join("costguard@job1.service");
    std::fs::copy(deploy("systemd/costguard@.service"), &unit).expect("copy unit");
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian's systemd) must be installed");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("Unknown key") && !err.contains("Failed to parse"),
        "the unit has settings systemd does not know: {err}"
    );
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("costguard@job1.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure in:\n{text}{err}"));
    assert!(
        score <= 3.0,
        "exposure {score} (9.4 UNSAFE before hardening):\n{text}"
    );
    let unit_text = std::fs::read_to_string(&unit).expect("unit");
    for want in [
        "User=",
        "Delegate=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
    ] {
        assert!(unit_text.contains(want), "{want} in the unit");
    }
}

/// What the unit's sandbox leaves a job, emulated as root without systemd as PID 1: a private
/// mount namespace whose `/` is read-only but for the state and job directories, the
/// unprivileged user `nobody` with no capabilities and no new privileges, and a cgroup subtree
/// handed to that user (what `Delegate=yes` does). The job runs and writes its result, costguard
/// makes its cgroup leaf there, a ceiling kill exits 124 (a failure to systemd), and a write
/// anywhere else is refused.
#[test]
#[ignore = "root and a writable cgroup v2 (the unit's sandbox, emulated): scripts/test runs it"]
fn the_systemd_sandbox_still_lets_the_job_run() {
    let dir = common::tempdir();
    let state = dir.path().join("state");
    let job = dir.path().join("job");
    std::fs::create_dir_all(&state).expect("state");
    std::fs::create_dir_all(&job).expect("job");
    let script = r#"
set -eu
mnt=$(awk '$9 == "cgroup2" { print $5; exit }' /proc/self/mountinfo)
[ -n "$mnt" ] || { echo "no cgroup2 mount" >&2; exit 97; }
own=$mnt$(sed -n 's/^0:://p' /proc/self/cgroup)
cg="$own/cg-unit-test-$$"
mkdir "$cg"
chown -R 65534:65534 "$cg" "$STATE" "$JOB"
chmod 755 "$(dirname "$STATE")"
echo $$ > "$cg/cgroup.procs"
unshare --mount sh -c '
  set -eu
  mount --make-rprivate /
  mount -o remount,bind,ro /
  for d in "$STATE" "$JOB"; do mount --bind "$d" "$d"; mount -o remount,bind,rw "$d"; done
  exec setpriv --reuid=65534 --regid=65534 --clear-groups --no-new-privs \
    --bounding-set=-all --inh-caps=-all \
    "$CG" --run-id job1 --state-dir "$STATE" --usd-per-hour 1 --max-wall 2s --quiet \
    -- sh -c "echo trained > \"$JOB/result\"; if touch /var/tmp/costguard-escape-$$ 2>/dev/null; then echo ESCAPED; fi; sleep 60"
' && rc=0 || rc=$?
echo "exit $rc"
sleep 0.2
rmdir "$cg"/* 2>/dev/null || true
echo $$ > "$own/cgroup.procs"
rmdir "$cg" || true
"#;
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .env("CG", common::bin())
        .env("COSTGUARD_PROVIDER", "none")
        .env("STATE", &state)
        .env("JOB", &job)
        .env("COSTGUARD_GPU", "none")
        .env_remove("COSTGUARD_STATE_DIR")
        .env_remove("COSTGUARD_LISTEN")
        .output()
        .expect("sh");
    let o = String::from_utf8_lossy(&out.stdout);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "needs root and cgroup v2 (as CI has): {o}{e}"
    );
    assert!(
        o.contains("exit 124"),
        "a ceiling kill is exit 124, a failure to systemd: {o}{e}"
    );
    assert!(
        !o.contains("ESCAPED"),
        "the job wrote outside its directories: {o}"
    );
    assert_eq!(
        std::fs::read_to_string(job.join("result")).unwrap_or_default(),
        "trained\n",
        "{o}{e}"
    );
    let l = common::ledger(&state, "job1");
    assert_eq!(l["state"], "killed", "{l}\n{o}{e}");
    assert!(
        l["cgroup"]
            .as_str()
            .is_some_and(|c| c.contains("/cg-unit-test-")),
        "costguard's cgroup leaf in the delegated subtree: {l}"
    );
}

/// Every alert links a runbook section of this repository, and says how urgent it is.
#[test]
fn every_alert_has_a_runbook_and_a_severity() {
    let rules = &docs("prometheus/costguard-rules.yml")[0];
    let book =
        std::fs::read_to_string(common::repo_root().join("docs/runbooks.md")).expect("runbooks");
    let anchors: Vec<String> = book
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_lowercase())
        .collect();
    let alerts = rules["groups"][0]["rules"].as_vec().expect("rules");
    assert!(alerts.len() >= 6);
    for a in alerts {
        let name = a["alert"].as_str().expect("alert");
        let url = a["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no runbook_url"));
        let anchor = url.split_once("docs/runbooks.md#").map(|x| x.1);
        assert!(
            anchor.is_some_and(|x| anchors.iter().any(|h| h == x)),
            "{name}: {url} names no section of docs/runbooks.md ({anchors:?})"
        );
        let sev = a["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["critical", "warning", "info"].contains(&sev),
            "{name}: {sev}"
        );
        // Paging only for what burns money unattended: budget warnings are not incidents.
        if name.contains("Budget") {
            assert_ne!(sev, "critical", "{name}");
        }
    }
}
