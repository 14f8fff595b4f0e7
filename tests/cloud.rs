//! The provider's dollars, on boxes simulated as the providers run them: costguard in a
//! network namespace of its own (`unshare --net --mount`) where 169.254.169.254 sits on
//! loopback and `tests/cloud/fake_box.py` answers as AWS IMDSv2, GCP or Azure IMDS does
//! (headers enforced, the others' paths 404), or never answers; RunPod and Vast price APIs
//! as local servers through COSTGUARD_RUNPOD_API_URL / COSTGUARD_VAST_API_URL; DMI files in
//! a private mount namespace. The namespaces need root, as CI has: these tests fail, not
//! skip, without it.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::boxes::{fake, in_box, Ran};
use common::*;

/// The rate costguard metered a finished run at, from its ledger.
fn metered(r: &Ran, id: &str) -> f64 {
    r.ledger(id)["rate_dollars_per_hour"]
        .as_f64()
        .unwrap_or_else(|| panic!("no rate on record: {}", r.stderr()))
}

const RUN_1S: &str = "$CG --max-wall 1s --run-id box -- sleep 30";

#[test]
#[ignore = "root (network and mount namespaces) and python3 (the fake metadata server): scripts/test runs it"]
fn an_aws_box_is_metered_at_its_instance_price_with_imdsv2() {
    let dir = tempdir();
    let r = in_box(
        dir.path(),
        Some("aws --type p4d.24xlarge --region us-west-2"),
        &format!("{RUN_1S} 2>\"$D/run.err\"; echo $? > \"$D/rc\"; $CG check --max-usd 40 --notify-command true --on-exit : -- true > \"$D/check.out\" 2>&1"),
        &[],
    );
    assert_eq!(r.file("rc").trim(), "124", "{}", r.file("run.err"));
    let rate = metered(&r, "box");
    assert!(
        (rate - 21.95764).abs() < 1e-6,
        "the catalog's p4d us-west-2: {rate}"
    );
    let l = r.ledger("box");
    assert_eq!(l["provider"], "aws");
    assert_eq!(l["instance_type"], "p4d.24xlarge");
    assert_eq!(l["region"], "us-west-2");
    assert_eq!(l["spot"], false);
    let err = r.file("run.err");
    assert!(
        err.contains("rate: $21.96/h from aws p4d.24xlarge us-west-2 on-demand (catalog "),
        "the rate and its source reach the console: {err}"
    );
    let check = r.file("check.out");
    assert!(
        check.contains("price:")
            && check.contains("aws p4d.24xlarge us-west-2 on-demand (from the metadata")
            && check.contains("dollar ceiling $40.00 (at $21.96/h from aws p4d.24xlarge"),
        "{check}"
    );
    // IMDSv2: a token first, then every GET carries it; nothing of GCP's or Azure's asked
    // at this address was answered with data.
    // Without DMI the three providers' servers are asked at once: AWS's own requests start
    // with the token.
    let reqs: Vec<_> = r
        .requests()
        .into_iter()
        .filter(|q| q["path"].as_str().unwrap_or("").starts_with("/latest/"))
        .collect();
    assert_eq!(reqs[0]["method"], "PUT", "{reqs:?}");
    assert_eq!(reqs[0]["path"], "/latest/api/token");
    let gets: Vec<_> = reqs
        .iter()
        .filter(|q| {
            q["path"]
                .as_str()
                .unwrap_or("")
                .starts_with("/latest/meta-data/")
        })
        .collect();
    assert!(gets.len() >= 4, "{reqs:?}");
    assert!(
        gets.iter()
            .all(|q| q["headers"]["x-aws-ec2-metadata-token"].as_str().is_some()),
        "every IMDSv2 GET carries the token: {gets:?}"
    );
    // The token is a secret: never on record.
    for f in ["run.err", "check.out"] {
        assert!(!r.file(f).contains("SEKRET"), "{f}: {}", r.file(f));
    }
    let run_dir = dir.path().join("state/runs/box");
    for f in ["ledger.json", "events.jsonl", "report.md"] {
        let t = std::fs::read_to_string(run_dir.join(f)).unwrap_or_default();
        assert!(!t.contains("SEKRET"), "{f}");
    }
    let report = std::fs::read_to_string(run_dir.join("report.md")).unwrap_or_default();
    assert!(
        report.contains("- Rate: $21.96/h from aws p4d.24xlarge us-west-2 on-demand")
            && report.contains("- Box: aws p4d.24xlarge us-west-2 on-demand"),
        "{report}"
    );
}

#[test]
#[ignore = "root (network and mount namespaces) and python3 (the fake metadata server): scripts/test runs it"]
fn a_dollar_ceiling_fires_at_the_box_price_when_nothing_else_prices_the_job() {
    // No GPU, no --usd-per-hour: the run waits (bounded) for the box's price, then its
    // dollar deadline is what the provider bills: $0.02 at $55.04/h is 1.308 s.
    let dir = tempdir();
    let r = in_box(
        dir.path(),
        Some("aws --type p5.48xlarge --region us-east-1"),
        "$CG --max-usd 0.02 --run-id p5 -- sleep 30",
        &[],
    );
    let e = r.stderr();
    assert_eq!(r.out.status.code(), Some(124), "{e}");
    assert!(
        e.contains("started: $55.04/h from aws p5.48xlarge us-east-1 on-demand (catalog"),
        "the start line names the box's price: {e}"
    );
    assert!(
        e.contains("killed: usd: spent $0.02") && e.contains("of $0.0200 at $55.04/h"),
        "{e}"
    );
    let l = r.ledger("p5");
    let elapsed = l["elapsed_seconds"].as_f64().unwrap();
    assert!(
        (1.25..3.0).contains(&elapsed),
        "0.02/55.04 h = 1.308 s: {elapsed}"
    );
}

#[test]
#[ignore = "root (network and mount namespaces) and python3 (the fake metadata server): scripts/test runs it"]
fn a_gcp_box_is_machine_plus_gpus() {
    let dir = tempdir();
    let r = in_box(
        dir.path(),
        Some("gcp --type a3-highgpu-8g --region us-central1"),
        RUN_1S,
        &[],
    );
    assert_eq!(r.out.status.code(), Some(124), "{}", r.stderr());
    let rate = metered(&r, "box");
    assert!((rate - 43.06615).abs() < 1e-6, "9.46006 + 33.60609: {rate}");
    assert!(
        r.stderr()
            .contains("$43.07/h from gcp a3-highgpu-8g us-central1 on-demand = 9.46 machine + 33.61 for 8 × H100"),
        "{}",
        r.stderr()
    );
    // Google's header on every request to Google's paths (without DMI every provider's
    // server is asked at this address; the others' paths 404 here).
    let google: Vec<_> = r
        .requests()
        .into_iter()
        .filter(|q| {
            q["path"]
                .as_str()
                .unwrap_or("")
                .starts_with("/computeMetadata/")
        })
        .collect();
    assert!(!google.is_empty());
    assert!(google
        .iter()
        .all(|q| q["headers"]["metadata-flavor"] == "Google"));
}

#[test]
#[ignore = "root (network and mount namespaces) and python3 (the fake metadata server): scripts/test runs it"]
fn an_azure_box_is_priced_by_its_vm_size() {
    let dir = tempdir();
    let r = in_box(
        dir.path(),
        Some("azure --type Standard_ND96asr_v4 --region eastus"),
        RUN_1S,
        &[],
    );
    assert_eq!(r.out.status.code(), Some(124), "{}", r.stderr());
    assert!((metered(&r, "box") - 27.197).abs() < 1e-6);
    assert_eq!(r.ledger("box")["instance_type"], "Standard_ND96asr_v4");
    let azure: Vec<_> = r
        .requests()
        .into_iter()
        .filter(|q| q["path"].as_str().unwrap_or("").starts_with("/metadata/"))
        .collect();
    assert!(!azure.is_empty());
    assert!(azure.iter().all(|q| q["headers"]["metadata"] == "true"
        && q["path"].as_str().unwrap().contains("api-version=")));
}

#[test]
#[ignore = "root (network and mount namespaces) and python3 (the fake metadata server): scripts/test runs it"]
fn a_guess_from_the_gpu_table_is_corrected_from_the_first_instant() {
    // 8 × H100 priced by the per-GPU table at $23.92/h until the box says p5.48xlarge:
    // the run is then metered at $55.04/h from its start, not from the correction.
    let dir = tempdir();
    let scenario = serde_json::json!({"gpus": gpus(8, "NVIDIA H100 80GB HBM3", 90)});
    let path = dir.path().join("scenario.json");
    std::fs::write(&path, scenario.to_string()).unwrap();
    let nvml = fake_nvml();
    let r = in_box(
        dir.path(),
        Some("aws --type p5.48xlarge --region us-east-1"),
        "$CG --max-wall 2s --run-id gpus -- sleep 30",
        &[
            ("COSTGUARD_GPU", "nvml"),
            ("COSTGUARD_NVML_LIB", nvml.to_str().unwrap()),
            ("FAKE_NVML_SCENARIO", path.to_str().unwrap()),
        ],
    );
    let e = r.stderr();
    assert_eq!(r.out.status.code(), Some(124), "{e}");
    assert!(e.contains("started: $23.92/h from 8 × NVIDIA H100"), "{e}");
    assert!(
        e.contains("rate: $55.04/h from aws p5.48xlarge us-east-1 on-demand (catalog")
            && e.contains("counted from the run's start (was $23.92/h"),
        "{e}"
    );
    let l = r.ledger("gpus");
    let (spend, secs) = (
        l["spend_dollars"].as_f64().unwrap(),
        l["elapsed_seconds"].as_f64().unwrap(),
    );
    let expect = 55.04 * secs / 3600.0;
    assert!(
        (spend - expect).abs() < 0.002,
        "spend {spend} is the box's price over the whole {secs}s ({expect})"
    );
}

#[test]
#[ignore = "root (network and mount namespaces) and python3 (the fake metadata server): scripts/test runs it"]
fn an_explicit_rate_wins_with_one_notice_when_far_from_the_box() {
    let dir = tempdir();
    let r = in_box(
        dir.path(),
        Some("aws --type p4d.24xlarge --region us-west-2"),
        "$CG --usd-per-hour 10 --max-wall 1s --run-id flag -- sleep 30",
        &[],
    );
    let e = r.stderr();
    assert_eq!(r.out.status.code(), Some(124), "{e}");
    assert!((metered(&r, "flag") - 10.0).abs() < 1e-9);
    assert_eq!(
        e.matches("--usd-per-hour $10.00 is far from what this box bills: $21.96/h")
            .count(),
        1,
        "{e}"
    );
}

#[test]
#[ignore = "root (network and mount namespaces) and python3 (the fake metadata server): scripts/test runs it"]
fn no_metadata_server_and_one_that_never_answers_cost_the_job_nothing() {
    // No route to the address at all: detection ends at once, nothing is priced.
    let dir = tempdir();
    let r = in_box(
        dir.path(),
        None,
        "$CG --max-wall 1s --run-id none -- sleep 30 2>\"$D/run.err\"; $CG check --max-wall 1m --notify-command true --on-exit : -- true",
        &[],
    );
    assert!(
        out_text(&r.out).contains("price:") && out_text(&r.out).contains("no cloud provider found"),
        "{}",
        out_text(&r.out)
    );
    assert_eq!(r.ledger("none")["rate_source"], serde_json::Value::Null);
    assert_eq!(r.ledger("none")["provider"], serde_json::Value::Null);

    // A server that accepts and never answers: the job runs and costguard ends with it,
    // without waiting the probe budget out.
    let dir = tempdir();
    let r = in_box(
        dir.path(),
        Some("silent"),
        "s=$(date +%s%N); $CG --run-id quiet -- sh -c 'echo ran > \"$D/ran\"'; echo $? > \"$D/rc\"; e=$(date +%s%N); echo $(( (e - s) / 1000000 )) > \"$D/ms\"",
        &[],
    );
    assert_eq!(r.file("rc").trim(), "0", "{}", r.stderr());
    assert_eq!(r.file("ran").trim(), "ran");
    let ms: u64 = r.file("ms").trim().parse().unwrap();
    assert!(
        ms < crate_probe_budget_ms(),
        "the whole run took {ms} ms: it waited for a silent metadata server"
    );
    assert!(
        r.requests().iter().any(|q| q["method"] == "ACCEPT"),
        "costguard did ask the silent server"
    );
}

/// The detection's probe budget (src/cloud/mod.rs PROBE_BUDGET).
fn crate_probe_budget_ms() -> u64 {
    1000
}

#[test]
#[ignore = "root (network and mount namespaces) and python3 (the fake metadata server): scripts/test runs it"]
fn a_spot_box_reclaim_notice_reaches_the_job_and_the_record() {
    let dir = tempdir();
    let notified = dir.path().join("notified.jsonl");
    // The job traps the warning signal (its chance to checkpoint) and keeps running; once the
    // notice is on record the box "dies": costguard is SIGKILLed. The next start says so.
    let script = r#"
$CG --warn-signal USR1 --warn-before 10s --max-wall 120s --run-id spot \
    --notify-command "cat >> $D/notified.jsonl" -- \
    sh -c 'trap "echo checkpoint > $D/usr1" USR1; echo up > $D/up; while :; do sleep 0.05; done' \
    2>"$D/run.err" &
cg=$!
while [ ! -s "$D/up" ]; do sleep 0.02; done
touch "$D/notice"
n=0; while [ ! -s "$D/usr1" ] && [ $n -lt 400 ]; do sleep 0.05; n=$((n+1)); done
n=0; while ! grep -q '"preempted"' "$D/state/runs/spot/ledger.json" 2>/dev/null || grep -q '"preempted": null' "$D/state/runs/spot/ledger.json"; do
  [ $n -lt 200 ] || break; sleep 0.05; n=$((n+1)); done
kill -9 $cg
wait $cg 2>/dev/null
$CG list > "$D/list.out" 2>&1
$CG --max-wall 120s --run-id spot -- true 2> "$D/resume.err"
"#;
    let notice = dir.path().join("notice");
    let r = in_box(
        dir.path(),
        Some(&format!(
            "aws --spot --type p4d.24xlarge --region us-west-2 --notice-file {}",
            notice.display()
        )),
        script,
        &[],
    );
    assert_eq!(
        r.file("usr1").trim(),
        "checkpoint",
        "the warning signal reached the job: {}",
        r.file("run.err")
    );
    let err = r.file("run.err");
    assert!(
        err.contains("spot box: a spot price is an estimate"),
        "{err}"
    );
    assert!(
        err.contains("the aws box is being reclaimed (aws spot/instance-action:"),
        "{err}"
    );
    let sent = std::fs::read_to_string(&notified).unwrap_or_default();
    assert!(
        sent.lines()
            .any(|l| l.contains("\"reason\":\"preemption\"")),
        "a preemption warning is notified by default: {sent}"
    );
    assert!(
        r.file("list.out").contains("preempted"),
        "{}",
        r.file("list.out")
    );
    assert!(
        r.file("resume.err")
            .contains("its last session was preempted"),
        "{}",
        r.file("resume.err")
    );
}

#[test]
#[ignore = "root (network and mount namespaces) and python3 (the fake metadata server): scripts/test runs it"]
fn gcp_and_azure_reclaim_notices_are_read_too() {
    for (args, expect) in [
        (
            "gcp --spot --type a2-highgpu-1g --region us-central1",
            "gcp instance/preempted: TRUE",
        ),
        (
            "azure --spot --type Standard_NC24ads_A100_v4 --region eastus",
            "azure scheduled event Preempt",
        ),
    ] {
        let dir = tempdir();
        let notice = dir.path().join("notice");
        std::fs::write(&notice, "").unwrap();
        let r = in_box(
            dir.path(),
            Some(&format!("{args} --notice-file {}", notice.display())),
            // The pattern is bracketed so the job's own command line (in the started event)
            // does not match it.
            "$CG --max-wall 20s --run-id spot -- sh -c 'until grep -q \"being reclai[m]ed\" \"$D/state/runs/spot/events.jsonl\" 2>/dev/null; do sleep 0.05; done'",
            &[],
        );
        assert_eq!(r.out.status.code(), Some(0), "{}", r.stderr());
        let events = std::fs::read_to_string(dir.path().join("state/runs/spot/events.jsonl"))
            .unwrap_or_default();
        assert!(events.contains(expect), "{args}: {events}");
    }
}

#[test]
#[ignore = "root (network and mount namespaces) and python3 (the fake metadata server): scripts/test runs it"]
fn dmi_alone_names_an_aws_box_in_a_private_mount_namespace() {
    // Nitro's firmware names the instance type; the metadata server is disabled here.
    let dir = tempdir();
    let r = in_box(
        dir.path(),
        None,
        "mount -t tmpfs none /sys/class || exit 97; mkdir -p /sys/class/dmi/id
printf 'Amazon EC2\n' > /sys/class/dmi/id/sys_vendor
printf 'g5.xlarge\n' > /sys/class/dmi/id/product_name
printf 'i-0abc\n' > /sys/class/dmi/id/board_asset_tag
$CG --max-wall 1s --run-id dmi -- sleep 30",
        &[("AWS_EC2_METADATA_DISABLED", "true")],
    );
    assert_eq!(r.out.status.code(), Some(124), "{}", r.stderr());
    let l = r.ledger("dmi");
    assert_eq!(l["instance_type"], "g5.xlarge");
    assert!(
        r.stderr().contains(
            "aws g5.xlarge on-demand (region unknown not in the catalog: its highest price"
        ),
        "{}",
        r.stderr()
    );
}

/// A rented pod's price API on loopback (no namespace needed: the environment names the
/// provider, so no metadata address is asked).
struct Api {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Api {
    fn start(mode: &str, key: &str, extra: &[&str]) -> Api {
        let dir = tempdir();
        let ready = dir.path().join("ready");
        let child = Command::new("python3")
            .arg(fake())
            .args([mode, "--type", key, "--region", "pod-abc123"])
            .args(extra)
            .arg("--log")
            .arg(dir.path().join("requests.jsonl"))
            .arg("--ready")
            .arg(&ready)
            .stdin(Stdio::null())
            .spawn()
            .expect("python3");
        assert!(
            wait_until(Duration::from_secs(20), || std::fs::read_to_string(&ready)
                .is_ok_and(|s| !s.is_empty())),
            "the fake API did not start"
        );
        let port = std::fs::read_to_string(&ready)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        Api { child, port, dir }
    }
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const KEY: &str = "rpa_SEKRET0123456789podkey";

fn pod_guard(state: &Path, api: &Api) -> Command {
    let mut c = guard(state);
    c.env("COSTGUARD_PROVIDER", "auto")
        .env("RUNPOD_POD_ID", "pod-abc123")
        .env("RUNPOD_API_KEY", KEY)
        .env("COSTGUARD_RUNPOD_API_URL", api.url());
    c
}

#[test]
#[ignore = "python3 (the fake provider price API): scripts/test runs it"]
fn a_runpod_pod_is_metered_at_its_own_cost_per_hour_and_its_key_stays_secret() {
    let api = Api::start("runpod", KEY, &["--price", "3.6"]);
    let dir = tempdir();
    let state = dir.path().join("state");
    let mut c = pod_guard(&state, &api);
    c.args(["--max-usd", "0.004", "--run-id", "pod", "--listen"])
        .arg("127.0.0.1:0")
        .args(["--linger", "30s", "--", "sleep", "30"]);
    let mut child = c.stderr(Stdio::piped()).spawn().expect("costguard");
    let port = bound_port(&state, "pod", &mut child, Duration::from_secs(20));
    // $0.004 at $3.60/h is 4 s: /status is read while the run is going.
    let mut status = String::new();
    assert!(wait_until(Duration::from_secs(20), || {
        status = http_get(port, "/status").unwrap_or_default();
        status.contains("\"rate_source\":\"live\"")
    }));
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["provider"], "runpod");
    assert_eq!(
        v["rate_text"],
        "$3.60/h from runpod pod pod-abc123 (live costPerHr from the RunPod API)"
    );
    let metrics = http_get(port, "/metrics").unwrap_or_default();
    assert!(
        metrics.contains("costguard_rate_info{instance_type=\"\",provider=\"runpod\",rate_source=\"live\",region=\"\",spot=\"false\"} 1"),
        "{metrics}"
    );
    let mut status_end = String::new();
    assert!(wait_until(Duration::from_secs(20), || {
        status_end = http_get(port, "/status").unwrap_or_default();
        status_end.contains("\"state\":\"killed\"")
    }));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let out = child.wait_with_output().unwrap();
    let e = stderr(&out);
    assert!(
        e.contains("killed: usd: spent $0.004") && e.contains("of $0.0040 at $3.60/h"),
        "{e}"
    );
    // One GraphQL query with the key as a bearer token, never in the URL.
    let reqs = api.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0]["headers"]["authorization"], format!("Bearer {KEY}"));
    assert!(reqs[0]["body"].as_str().unwrap().contains("pod-abc123"));
    assert!(!reqs[0]["path"].as_str().unwrap().contains("SEKRET"));
    // The key is nowhere a person or a scraper reads.
    let run = state.join("runs/pod");
    let mut texts = vec![
        ("stderr", e),
        ("status", status),
        ("final status", status_end),
        ("metrics", metrics),
    ];
    for f in ["ledger.json", "events.jsonl", "report.md", "config.json"] {
        texts.push((f, std::fs::read_to_string(run.join(f)).unwrap_or_default()));
    }
    for (what, t) in texts {
        assert!(!t.contains("SEKRET"), "the pod's key in {what}: {t}");
    }
}

#[test]
#[ignore = "python3 (the fake provider price API): scripts/test runs it"]
fn a_failing_price_api_falls_back_and_says_so_never_zero() {
    let api = Api::start("runpod", KEY, &["--fail", "-1"]);
    // With the pod's GPUs seen: the catalog's 1 × H100 SXM price, and a notice.
    let dir = tempdir();
    let scenario = serde_json::json!({"gpus": gpus(1, "NVIDIA H100 80GB HBM3", 90)});
    let mut c = costguard_on_gpus(dir.path(), &scenario);
    c.env("COSTGUARD_STATE_DIR", dir.path().join("state"))
        .env("COSTGUARD_PROVIDER", "auto")
        .env("RUNPOD_POD_ID", "pod-abc123")
        .env("RUNPOD_API_KEY", KEY)
        .env("COSTGUARD_RUNPOD_API_URL", api.url())
        .args([
            "--max-wall",
            "1s",
            "--run-id",
            "fallback",
            "--",
            "sleep",
            "30",
        ]);
    let out = run(c);
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(124), "{e}");
    assert!(
        e.contains(
            "runpod price API failed (RunPod API answered HTTP 500); using the catalog instead"
        ),
        "{e}"
    );
    let l = ledger(&dir.path().join("state"), "fallback");
    assert!(
        (l["rate_dollars_per_hour"].as_f64().unwrap() - 2.69).abs() < 1e-9,
        "{l}"
    );
    assert!(l["rate_source"]
        .as_str()
        .unwrap()
        .contains("runpod 1x_H100-SXM_SECURE"));
    assert!(!e.contains("SEKRET"), "{e}");

    // Nothing to price the pod by: a dollar ceiling is refused, never metered at $0.
    let dir = tempdir();
    let out = run({
        let mut c = pod_guard(&dir.path().join("state"), &api);
        c.args(["--max-usd", "5", "--", "true"]);
        c
    });
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{e}");
    assert!(e.contains("--max-usd $5.00 needs a price"), "{e}");
    assert!(!e.contains("SEKRET"), "{e}");
}

#[test]
#[ignore = "python3 (the fake provider price API): scripts/test runs it"]
fn a_vast_instance_is_metered_at_its_dph_total() {
    let key = "vast_SEKRET_container_key_0123";
    let api = Api::start("vast", key, &["--price", "1.234"]);
    let dir = tempdir();
    let out = run({
        let mut c = guard(&dir.path().join("state"));
        c.env("COSTGUARD_PROVIDER", "auto")
            .env("CONTAINER_ID", "4242")
            .env("CONTAINER_API_KEY", key)
            .env("COSTGUARD_VAST_API_URL", api.url())
            .args(["--max-wall", "1s", "--run-id", "vast", "--", "sleep", "30"]);
        c
    });
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(124), "{e}");
    let l = ledger(&dir.path().join("state"), "vast");
    assert!((l["rate_dollars_per_hour"].as_f64().unwrap() - 1.234).abs() < 1e-9);
    assert_eq!(
        l["rate_source"],
        "$1.23/h from vast instance 4242 (live dph_total from the Vast API)"
    );
    let reqs = api.requests();
    assert_eq!(reqs[0]["path"], "/api/v0/instances/4242/");
    assert!(!e.contains("SEKRET"));
}

#[test]
fn costguard_prices_shows_the_catalog_and_takes_a_table() {
    let out = run({
        let mut c = costguard();
        c.args(["prices", "--provider", "gcp", "a3-highgpu-8g"]);
        c
    });
    let t = out_text(&out);
    assert!(t.contains("source: public SkyPilot catalog"), "{t}");
    let line = t
        .lines()
        .find(|l| l.contains("a3-highgpu-8g") && l.contains("us-central1"))
        .unwrap_or_else(|| panic!("{t}"));
    assert!(
        line.contains("43.07") && line.contains("8 × H100"),
        "{line}"
    );
    let dir = tempdir();
    let table = dir.path().join("t.csv");
    std::fs::write(
        &table,
        "provider,instance_type,region,usd_per_hour\naws,p5.48xlarge,us-east-1,40.5\n",
    )
    .unwrap();
    let out = run({
        let mut c = costguard();
        c.args([
            "prices",
            "--provider",
            "aws",
            "p5.48xlarge",
            "--price-table",
        ])
        .arg(&table);
        c
    });
    let t = out_text(&out);
    let line = t.lines().find(|l| l.contains("us-east-1")).unwrap();
    assert!(line.contains("40.50"), "{t}");
    let out = run({
        let mut c = costguard();
        c.args(["prices", "--provider", "ibm"]);
        c
    });
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("invalid --provider value \"ibm\""));
    let out = run({
        let mut c = costguard();
        c.args(["--provider", "awz", "--", "true"]);
        c
    });
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("invalid --provider value \"awz\""),
        "{}",
        stderr(&out)
    );
}

#[test]
#[ignore = "root (network and mount namespaces) and python3 (the fake metadata server): scripts/test runs it"]
fn detection_is_timed_by_its_own_budget_not_the_job() {
    // Sanity for the bench's claim: the check (which waits for detection) with a silent
    // server takes about the probe budget, where the run above did not.
    let dir = tempdir();
    let t = Instant::now();
    let r = in_box(
        dir.path(),
        Some("silent"),
        "$CG check --max-wall 1m --notify-command true --on-exit : -- true",
        &[],
    );
    let took = t.elapsed();
    let o = out_text(&r.out);
    assert!(o.contains("no cloud provider found"), "{o}");
    assert!(
        took >= Duration::from_millis(900),
        "the check waited for the probes: {took:?}"
    );
}

#[test]
#[ignore = "python3 (scripts/prices): scripts/test runs it"]
fn scripts_prices_distills_the_skypilot_format_into_a_table_costguard_reads() {
    // The fetch needs internet access; `--from` runs the same distillation on local copies.
    let dir = tempdir();
    let out = dir.path().join("catalog.csv");
    let st = Command::new(repo_root().join("scripts/prices"))
        .arg("--from")
        .arg(repo_root().join("tests/cloud/skypilot-sample"))
        .arg("--out")
        .arg(&out)
        .output()
        .expect("scripts/prices");
    assert!(st.status.success(), "{}", stderr(&st));
    let csv = std::fs::read_to_string(&out).unwrap();
    assert!(
        csv.contains("aws,p4d.24xlarge,us-east-2,A100,8.0,96.0,1152.0,21.957642,6.6,8.7"),
        "spot min and max across the zones: {csv}"
    );
    assert!(
        !csv.contains("m5.large") && !csv.contains("n2-standard"),
        "{csv}"
    );
    let shown = run({
        let mut c = costguard();
        c.args([
            "prices",
            "--provider",
            "gcp",
            "a3-highgpu-8g",
            "--price-table",
        ])
        .arg(&out);
        c
    });
    let t = out_text(&shown);
    let line = t.lines().find(|l| l.contains("us-central1")).unwrap();
    assert!(line.contains("43.07"), "machine + GPU rows composed: {t}");
}
