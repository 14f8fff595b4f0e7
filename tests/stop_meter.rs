//! Stop the meter: after a kill, costguard releases the box once, with the credential the box
//! already has — on boxes simulated in network namespaces (tests/common/boxes.rs): the
//! metadata server at 169.254.169.254 hands out the instance's credentials, and the
//! provider's API (EC2, Compute, ARM, RunPod) is a local fake that records every call. EC2's
//! SigV4 signature is checked by botocore's signer (the test venv scripts/test makes).

mod common;

use common::boxes::{in_box_with_api, log_lines, Ran};
use common::*;

/// The calls the provider API fake received (its own log, minus the signature checks).
fn calls(r: &Ran) -> Vec<serde_json::Value> {
    log_lines(&r.dir.join("api.jsonl"))
        .into_iter()
        .filter(|c| c["method"] != "SIGV4")
        .collect()
}

fn sigv4_checks(r: &Ran) -> Vec<String> {
    log_lines(&r.dir.join("api.jsonl"))
        .into_iter()
        .filter(|c| c["method"] == "SIGV4")
        .map(|c| c["body"].as_str().unwrap_or_default().to_string())
        .collect()
}

const AWS: &str = "aws --type p4d.24xlarge --region us-west-2";
const NOTIFY: &str = "--notify-command 'cat >> $D/notified.jsonl; date +%s.%N >> $D/notified.at'";

fn secrets_absent(r: &Ran, id: &str) {
    let run = r.dir.join("state/runs").join(id);
    let mut texts = vec![("stderr".to_string(), r.stderr())];
    for f in ["ledger.json", "events.jsonl", "report.md"] {
        texts.push((
            f.into(),
            std::fs::read_to_string(run.join(f)).unwrap_or_default(),
        ));
    }
    texts.push(("notified".into(), r.file("notified.jsonl")));
    for (what, t) in texts {
        assert!(!t.contains("SEKRET"), "a credential in {what}: {t}");
    }
}

#[test]
#[ignore = "root (network namespaces) and python3 with botocore (the fake box, its provider API, target/test-venv): scripts/test runs it"]
fn an_aws_box_is_stopped_once_with_a_signed_call_after_the_alert() {
    let dir = tempdir();
    let script = format!(
        "AWS_ENDPOINT_URL_EC2=$API $CG --max-wall 1s --release stop --run-id r {NOTIFY} -- sleep 30; echo $? > $D/rc
AWS_ENDPOINT_URL_EC2=$API $CG --max-wall 1s --release stop --run-id r {NOTIFY} -- sleep 30 2> $D/again.err; echo $? > $D/rc2"
    );
    let r = in_box_with_api(dir.path(), Some(AWS), Some("ec2"), &script, &[]);
    let e = r.stderr();
    assert_eq!(r.file("rc").trim(), "124", "{e}");
    let c = calls(&r);
    assert_eq!(
        c.len(),
        1,
        "one call, across the restart of the spent run: {c:?}"
    );
    assert_eq!(c[0]["method"], "POST");
    assert_eq!(
        c[0]["body"],
        "Action=StopInstances&InstanceId.1=i-0123456789abcdef0&Version=2016-11-15"
    );
    assert_eq!(
        sigv4_checks(&r),
        vec!["True"],
        "botocore agrees with the signature"
    );
    let auth = c[0]["headers"]["authorization"].as_str().unwrap();
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=ASIATESTACCESSKEY01/")
            && auth.contains("/us-west-2/ec2/aws4_request"),
        "{auth}"
    );
    // The spent run started again starts nothing and releases nothing.
    assert_eq!(r.file("rc2").trim(), "124");
    assert!(
        r.file("again.err").contains("nothing started"),
        "{}",
        r.file("again.err")
    );
    // The kill alert announced the release and left before the call.
    let sent = r.file("notified.jsonl");
    let kill = sent
        .lines()
        .find(|l| l.contains("\"kind\":\"killed\""))
        .unwrap_or_else(|| panic!("{sent}"));
    assert!(
        kill.contains(
            "then the box is released: aws StopInstances i-0123456789abcdef0 in us-west-2"
        ),
        "{kill}"
    );
    let notified_at: f64 = r
        .file("notified.at")
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let called_at = c[0]["t"].as_f64().unwrap();
    assert!(
        notified_at < called_at,
        "the alert leaves before the box dies"
    );
    let l = r.ledger("r");
    assert_eq!(l["release"]["state"], "released", "{l}");
    assert_eq!(l["release"]["attempts"], 1);
    let report = std::fs::read_to_string(dir.path().join("state/runs/r/report.md")).unwrap();
    assert!(
        report.contains("## Release")
            && report.contains("- Released: aws StopInstances i-0123456789abcdef0 in us-west-2")
            && report.contains("- Still billing: the instance's EBS volumes"),
        "{report}"
    );
    assert!(
        e.contains("release: box released: aws StopInstances"),
        "{e}"
    );
    secrets_absent(&r, "r");
}

#[test]
#[ignore = "root (network namespaces) and python3 with botocore (the fake box, its provider API, target/test-venv): scripts/test runs it"]
fn a_plain_completion_releases_nothing_by_default_and_end_releases_it() {
    let dir = tempdir();
    let r = in_box_with_api(
        dir.path(),
        Some(AWS),
        Some("ec2"),
        "AWS_ENDPOINT_URL_EC2=$API $CG --max-wall 10s --release stop --run-id done -- true; echo $? > $D/rc
AWS_ENDPOINT_URL_EC2=$API $CG --max-wall 10s --release stop --release-on end --run-id end -- true; echo $? > $D/rc2",
        &[],
    );
    assert_eq!(r.file("rc").trim(), "0", "{}", r.stderr());
    assert_eq!(r.file("rc2").trim(), "0", "{}", r.stderr());
    let c = calls(&r);
    assert_eq!(c.len(), 1, "only the --release-on end run called: {c:?}");
    assert_eq!(r.ledger("done")["release"], serde_json::Value::Null);
    assert_eq!(r.ledger("end")["release"]["state"], "released");
}

#[test]
#[ignore = "root (network namespaces) and python3 with botocore (the fake box, its provider API, target/test-venv): scripts/test runs it"]
fn a_failing_api_is_retried_and_one_that_refuses_is_an_alarm() {
    // 500 once, then success.
    let dir = tempdir();
    let r = in_box_with_api(
        dir.path(),
        Some(AWS),
        Some("ec2 --fail 1"),
        "AWS_ENDPOINT_URL_EC2=$API $CG --max-wall 1s --release stop --run-id r -- sleep 30",
        &[],
    );
    assert_eq!(r.out.status.code(), Some(124), "{}", r.stderr());
    assert_eq!(calls(&r).len(), 2);
    let l = r.ledger("r");
    assert_eq!(l["release"]["state"], "released");
    assert_eq!(l["release"]["attempts"], 2);
    assert!(
        r.stderr().contains(
            "release: attempt 1 failed: aws StopInstances i-0123456789abcdef0 answered HTTP 500"
        ),
        "{}",
        r.stderr()
    );

    // 403 forever: given up after --release-retry-for, an agent-error that is notified and
    // written in the report; never a silent success.
    let dir = tempdir();
    let r = in_box_with_api(
        dir.path(),
        Some(AWS),
        Some("ec2 --deny"),
        &format!("AWS_ENDPOINT_URL_EC2=$API $CG --max-wall 1s --release stop --release-retry-for 3s --run-id r {NOTIFY} -- sleep 30"),
        &[],
    );
    let e = r.stderr();
    assert_eq!(
        r.out.status.code(),
        Some(124),
        "the run's verdict stands: {e}"
    );
    assert!(calls(&r).len() >= 2, "retried: {:?}", calls(&r));
    assert!(e.contains("error: the box is NOT released after"), "{e}");
    let l = r.ledger("r");
    assert_eq!(l["release"]["state"], "failed");
    let sent = r.file("notified.jsonl");
    assert!(
        sent.lines().any(|l| l.contains("\"kind\":\"agent-error\"") && l.contains("\"reason\":\"release\"")),
        "{sent}"
    );
    let events = std::fs::read_to_string(dir.path().join("state/runs/r/events.jsonl")).unwrap();
    assert!(events.contains("\"reason\":\"release\""), "{events}");
    let report = std::fs::read_to_string(dir.path().join("state/runs/r/report.md")).unwrap();
    assert!(report.contains("**NOT released**"), "{report}");
    secrets_absent(&r, "r");
}

#[test]
#[ignore = "root (network namespaces) and python3 with botocore (the fake box, its provider API, target/test-venv): scripts/test runs it"]
fn gcp_stops_and_azure_deallocates_with_the_box_token() {
    let dir = tempdir();
    let r = in_box_with_api(
        dir.path(),
        Some("gcp --type a2-highgpu-1g --region us-central1"),
        Some("compute"),
        "COSTGUARD_GCP_COMPUTE_URL=$API $CG --max-wall 1s --release stop --run-id g -- sleep 30",
        &[],
    );
    assert_eq!(r.out.status.code(), Some(124), "{}", r.stderr());
    let c = calls(&r);
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0]["method"], "POST");
    assert_eq!(
        c[0]["path"],
        "/compute/v1/projects/costguard-test-project/zones/us-central1-a/instances/trainer-1/stop"
    );
    assert_eq!(
        c[0]["headers"]["authorization"],
        "Bearer ya29.SEKRET-gcp-access-token"
    );
    assert_eq!(r.ledger("g")["release"]["state"], "released");
    secrets_absent(&r, "g");

    let dir = tempdir();
    let r = in_box_with_api(
        dir.path(),
        Some("azure --type Standard_ND96asr_v4 --region eastus"),
        Some("arm"),
        "COSTGUARD_AZURE_ARM_URL=$API $CG --max-wall 1s --release stop --run-id z -- sleep 30",
        &[],
    );
    assert_eq!(r.out.status.code(), Some(124), "{}", r.stderr());
    let c = calls(&r);
    assert_eq!(c.len(), 1, "{c:?}");
    let path = c[0]["path"].as_str().unwrap();
    assert!(
        path.starts_with("/subscriptions/sub/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/trainer-1/deallocate?api-version="),
        "deallocate, never powerOff: {path}"
    );
    assert_eq!(
        c[0]["headers"]["authorization"],
        "Bearer eyJ0eXAi.SEKRET-azure-access-token"
    );
    secrets_absent(&r, "z");
}

#[test]
#[ignore = "root (network namespaces) and python3 with botocore (the fake box, its provider API, target/test-venv): scripts/test runs it"]
fn a_runpod_pod_stops_itself_with_its_key() {
    let key = "rpa_SEKRET_release_key_0123";
    let dir = tempdir();
    let r = in_box_with_api(
        dir.path(),
        None,
        Some(&format!("runpod --type {key} --region pod-xyz --price 3.6")),
        "COSTGUARD_RUNPOD_API_URL=$API $CG --max-wall 1s --release stop --run-id p -- sleep 30",
        &[("RUNPOD_POD_ID", "pod-xyz"), ("RUNPOD_API_KEY", key)],
    );
    assert_eq!(r.out.status.code(), Some(124), "{}", r.stderr());
    let c = calls(&r);
    let stop: Vec<_> = c
        .iter()
        .filter(|q| q["body"].as_str().unwrap_or("").contains("mutation"))
        .collect();
    assert_eq!(stop.len(), 1, "{c:?}");
    assert!(
        stop[0]["body"]
            .as_str()
            .unwrap()
            .contains("podStop(input: {podId: \\\"pod-xyz\\\"})"),
        "{:?}",
        stop[0]
    );
    assert_eq!(stop[0]["headers"]["authorization"], format!("Bearer {key}"));
    assert_eq!(r.ledger("p")["release"]["state"], "released");
    secrets_absent(&r, "p");
}

#[test]
#[ignore = "root (network namespaces) and python3 with botocore (the fake box, its provider API, target/test-venv): scripts/test runs it"]
fn boxes_that_cannot_release_themselves_are_refused_at_start() {
    let dir = tempdir();
    let marker = dir.path().join("ran");
    let job = format!("touch {}", marker.display());
    let cases: Vec<(Option<&str>, String, &str)> = vec![
        (
            None,
            format!("$CG --provider lambda --release stop -- {job}"),
            "Lambda Cloud gives the box no credential to stop itself; or give --release-command",
        ),
        (
            None,
            format!("$CG --release stop -- {job}"),
            "this box named no provider",
        ),
        (
            Some(AWS),
            format!("$CG --release terminate -- {job}"),
            "--release terminate destroys the box and its disks: it needs --allow-side-effects",
        ),
        (
            Some("aws --no-role --type p4d.24xlarge --region us-west-2"),
            format!("$CG --release stop -- {job}"),
            "no instance role is attached",
        ),
        (
            Some("gcp --no-role --type a2-highgpu-1g --region us-central1"),
            format!("$CG --release stop -- {job}"),
            "no service-account token",
        ),
    ];
    for (fake, script, want) in cases {
        let d = tempdir();
        let r = in_box_with_api(d.path(), fake, None, &script, &[]);
        let e = r.stderr();
        assert_eq!(r.out.status.code(), Some(125), "{script}: {e}");
        assert!(e.contains(want), "{script}: {e}");
        assert!(!marker.exists(), "{script}: the job started");
    }
}

#[test]
#[ignore = "root (network namespaces) and python3 with botocore (the fake box, its provider API, target/test-venv): scripts/test runs it"]
fn a_release_command_works_on_any_box_with_the_run_facts() {
    let dir = tempdir();
    let r = in_box_with_api(
        dir.path(),
        None,
        None,
        "$CG --max-wall 1s --release-command 'echo $COSTGUARD_RUN_ID $COSTGUARD_OUTCOME > $D/released' --run-id cmd -- sleep 30",
        &[],
    );
    assert_eq!(r.out.status.code(), Some(124), "{}", r.stderr());
    assert_eq!(r.file("released").trim(), "cmd killed");
    assert_eq!(r.ledger("cmd")["release"]["state"], "released");
}

#[test]
#[ignore = "root (network namespaces) and python3 with botocore (the fake box, its provider API, target/test-venv): scripts/test runs it"]
fn check_answers_what_stops_the_meter_and_proves_the_credential() {
    let check =
        "AWS_ENDPOINT_URL_EC2=$API $CG check --max-wall 1h --notify-command true --on-exit :";
    let dir = tempdir();
    let r = in_box_with_api(
        dir.path(),
        Some(AWS),
        Some("ec2"),
        &format!("{check} --release stop -- true > $D/stop.out; {check} --release terminate --allow-side-effects -- true > $D/term.out; {check} -- true > $D/none.out"),
        &[],
    );
    let stop = r.file("stop.out");
    assert!(
        stop.contains("stops the meter:   ok — aws StopInstances i-0123456789abcdef0 in us-west-2 with the instance role's credentials — aws StopInstances i-0123456789abcdef0: allowed (EC2 DryRun)"),
        "{stop}"
    );
    let term = r.file("term.out");
    assert!(
        term.contains(
            "terminate DESTROYS the instance and its EBS volumes marked DeleteOnTermination"
        ),
        "{term}"
    );
    assert!(
        r.file("none.out")
            .contains("stops the meter:   ok — nothing: after a kill the box keeps billing"),
        "{}",
        r.file("none.out")
    );
    let dry: Vec<_> = calls(&r)
        .into_iter()
        .filter(|c| c["body"].as_str().unwrap_or("").contains("DryRun=true"))
        .collect();
    assert_eq!(
        dry.len(),
        2,
        "a DryRun per check with --release, nothing stopped"
    );
    assert!(calls(&r)
        .iter()
        .all(|c| c["body"].as_str().unwrap_or("").contains("DryRun=true")));

    let dir = tempdir();
    let r = in_box_with_api(
        dir.path(),
        Some(AWS),
        Some("ec2 --deny"),
        &format!("{check} --release stop -- true"),
        &[],
    );
    let o = out_text(&r.out);
    assert!(
        o.contains("stops the meter:   NOT ANSWERED — the release cannot work: aws StopInstances i-0123456789abcdef0: not allowed for the instance role (EC2 DryRun: UnauthorizedOperation)"),
        "{o}"
    );
}

/// The agent on two fake H100s at `util` %, on an AWS box whose EC2 fake records calls.
fn agent_on_box(util: u32, script: &str) -> (Ran, tempfile::TempDir) {
    let dir = tempdir();
    let scenario = serde_json::json!({"gpus": gpus(2, "NVIDIA H100 80GB HBM3", util)});
    let path = dir.path().join("scenario.json");
    std::fs::write(&path, scenario.to_string()).unwrap();
    let nvml = fake_nvml();
    let r = in_box_with_api(
        dir.path(),
        Some(AWS),
        Some("ec2"),
        &format!("export AWS_ENDPOINT_URL_EC2=$API\n{script}"),
        &[
            ("COSTGUARD_GPU", "nvml"),
            ("COSTGUARD_NVML_LIB", nvml.to_str().unwrap()),
            ("FAKE_NVML_SCENARIO", path.to_str().unwrap()),
        ],
    );
    (r, dir)
}

const AGENT: &str = "$CG agent --interval 100ms --idle-box 1s --release stop";

#[test]
#[ignore = "root (network namespaces) and python3 with botocore (the fake box, its provider API, target/test-venv): scripts/test runs it"]
fn the_forgotten_box_is_released_by_the_agent_and_a_busy_one_is_kept() {
    let (r, _d) = agent_on_box(0, &format!("{AGENT} --run-id idle"));
    let e = r.stderr();
    assert_eq!(r.out.status.code(), Some(0), "{e}");
    assert!(e.contains("the box has been idle for"), "{e}");
    let c = calls(&r);
    assert_eq!(c.len(), 1, "{e} {c:?}");
    assert!(c[0]["body"]
        .as_str()
        .unwrap()
        .contains("Action=StopInstances"));
    assert_eq!(r.ledger("idle")["release"]["state"], "released");

    // Busy GPUs for three times the window: nothing is called (the agent is stopped by TERM).
    let (r, _d) = agent_on_box(90, &format!("timeout -s TERM 3 {AGENT} --run-id busy"));
    assert!(calls(&r).is_empty(), "{:?}", calls(&r));
    assert_eq!(
        r.ledger("busy")["run_id"],
        "busy",
        "the agent ran: {}",
        r.stderr()
    );
    assert_eq!(r.ledger("busy")["release"], serde_json::Value::Null);
}

#[test]
#[ignore = "root (network namespaces) and python3 with botocore (the fake box, its provider API, target/test-venv): scripts/test runs it"]
fn someone_logged_in_keeps_an_idle_box() {
    // A private /run with a utmp holding one live interactive session (this shell's).
    let utmp = "mount -t tmpfs none /run || exit 97
python3 -c 'import os,struct; open(\"/run/utmp\",\"wb\").write(struct.pack(\"<hxxi32s4s32s256shhiii4i20s\", 7, os.getppid(), b\"pts/0\", b\"ts/0\", b\"root\", b\"\", 0, 0, 0, 0, 0, 0, 0, 0, 0, b\"\"))'";
    let (r, _d) = agent_on_box(
        0,
        &format!("{utmp}\ntimeout -s TERM 3 {AGENT} --keep-if-logged-in --run-id kept"),
    );
    assert!(calls(&r).is_empty(), "{}: {:?}", r.stderr(), calls(&r));
    assert_eq!(
        r.ledger("kept")["run_id"],
        "kept",
        "the agent ran: {}",
        r.stderr()
    );
    let (r, _d) = agent_on_box(
        0,
        &format!("timeout -s TERM 10 {AGENT} --keep-if-logged-in --run-id alone"),
    );
    assert_eq!(
        calls(&r).len(),
        1,
        "nobody logged in: released: {}",
        r.stderr()
    );
}

#[test]
fn idle_box_needs_a_way_to_release() {
    let out = run({
        let mut c = costguard();
        c.args(["agent", "--idle-box", "30m"]);
        c
    });
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("--idle-box needs how to release the box: --release stop"),
        "{}",
        stderr(&out)
    );
}
