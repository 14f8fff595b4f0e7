//! The first hour with costguard, as a new user meets it: `docs/first-run.md` is produced by
//! `scripts/first-run` and must match what the binary says today; the points a new user
//! tripped on each have their check here.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Times, amounts, ports, dates and run-id stamps vary from run to run; nothing else may.
fn normalized(text: &str) -> Vec<String> {
    let stamp = regex::Regex::new(r"\d{4}-\d{2}-\d{2}[-T][\d:.\-Z]*").expect("re");
    let num = regex::Regex::new(r"\d+(\.\d+)?").expect("re");
    let space = regex::Regex::new(r" {2,}").expect("re");
    text.lines()
        .map(|l| {
            let l = stamp.replace_all(l, "STAMP");
            let l = num.replace_all(&l, "N");
            space.replace_all(l.trim_end(), " ").into_owned()
        })
        .collect()
}

#[test]
#[ignore = "~13 s (scripts/first-run waits for its detached runs): scripts/test runs it"]
fn the_first_run_transcript_is_what_costguard_says_today() {
    let out = repo_root().join("target/first-run.md");
    let st = Command::new(repo_root().join("scripts/first-run"))
        .arg(&out)
        .env("COSTGUARD_BIN", bin())
        .stdin(Stdio::null())
        .status()
        .expect("scripts/first-run");
    assert!(st.success());
    let fresh = std::fs::read_to_string(&out).expect("transcript");
    let committed =
        std::fs::read_to_string(repo_root().join("docs/first-run.md")).expect("docs/first-run.md");
    let (a, b) = (normalized(&committed), normalized(&fresh));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(
            x,
            y,
            "docs/first-run.md line {} is stale; regenerate it with scripts/first-run",
            i + 1
        );
    }
    assert_eq!(
        a.len(),
        b.len(),
        "docs/first-run.md is stale: scripts/first-run"
    );
    // What a new user must read there.
    for must in [
        "costguard: tip: put the job after `--`",
        "costguard: tip: did you mean `costguard list`?",
        "of $2.00; nothing started (a new --run-id starts a new budget)",
        "resuming run budget: $2.",
        "line 1: `max-wall = 10`",
        "unknown key `fleet-querry`; did you mean `fleet-query`?",
        "the dollar ceiling cannot work",
        "(metrics: /metrics)",
        "preflight: this would answer them: costguard run --detach",
        "killed: wall: ran",
        "(exit 124)",
        "would remove",
        "nothing was started or recorded",
        "the agent takes no command",
    ] {
        assert!(fresh.contains(must), "{must}\n{fresh}");
    }
}

#[test]
fn a_detached_run_that_cannot_start_says_why_and_fails() {
    let dir = tempdir();
    let out = costguard()
        .env("COSTGUARD_STATE_DIR", dir.path())
        .env("COSTGUARD_GPU", "auto")
        .args([
            "run",
            "--detach",
            "--no-preflight",
            "--max-usd",
            "40",
            "--",
            "sleep",
            "2",
        ])
        .output()
        .expect("costguard");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("needs a price"), "the reason: {err}");
    assert!(err.contains("the background run did not start"), "{err}");
    assert!(
        out.stdout.is_empty(),
        "no run id printed for a run that is not there"
    );
}

#[test]
fn a_detached_runs_report_keeps_its_last_output() {
    let dir = tempdir();
    let out = costguard()
        .env("COSTGUARD_STATE_DIR", dir.path())
        .args([
            "run",
            "--detach",
            "--no-preflight",
            "--max-wall",
            "1s",
            "--run-id",
            "bg",
        ])
        .args(["--", "sh", "-c", "echo the-last-line; sleep 30"])
        .output()
        .expect("costguard");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = dir.path().join("runs/bg/report.md");
    assert!(wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&report).is_ok_and(|r| r.contains("the-last-line"))
    }));
    // `logs` without a run id: the newest run.
    let logs = costguard()
        .env("COSTGUARD_STATE_DIR", dir.path())
        .arg("logs")
        .output()
        .expect("logs");
    assert!(String::from_utf8_lossy(&logs.stdout).contains("the-last-line"));
}

#[test]
fn ctrl_c_says_what_it_waits_for() {
    let mut child = costguard()
        .args([
            "--kill-grace",
            "2s",
            "--",
            "sh",
            "-c",
            "trap '' INT; sleep 30",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("costguard");
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("int");
    let out = {
        let _ = child.stdin.take();
        child.wait_with_output().expect("wait")
    };
    let err = stderr(&out);
    assert!(
        err.contains(
            "waiting up to 2.000s for the job to end after SIGINT; Ctrl-C again kills it now"
        ),
        "{err}"
    );
    assert!(
        err.contains("the job did not end within 2.000s of SIGINT: killed with SIGKILL"),
        "{err}"
    );
}

#[test]
fn a_plans_last_line_is_the_plans_and_a_finished_run_shows_no_eta() {
    let dir = tempdir();
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        "[[phase]]\nname = \"prep\"\ncommand = \"true\"\nexpected = \"1s\"\n\
         [[phase]]\nname = \"train\"\ncommand = \"sleep 30\"\nmax_wall = \"500ms\"\n",
    )
    .expect("plan");
    let out = costguard()
        .env("COSTGUARD_STATE_DIR", dir.path())
        .args(["--plan", &path_str(&plan), "--run-id", "p"])
        .output()
        .expect("costguard");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(124), "{err}");
    let last_lines: Vec<&str> = err.lines().rev().take(2).collect();
    assert!(
        last_lines.iter().any(|l| l.starts_with(
            "costguard: plan completed: 1 of 2 phases completed; train killed at its wall cap"
        ) && l.ends_with("exit status 124")),
        "{err}"
    );
    assert!(
        err.contains("of phase train's max_wall"),
        "the cap that fired: {err}"
    );
    let st = costguard()
        .env("COSTGUARD_STATE_DIR", dir.path())
        .args(["status", "p"])
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(!text.contains("eta:"), "{text}");
    // Not priced: a phase's spend is unknown, never $0.0000.
    let report = std::fs::read_to_string(dir.path().join("runs/p/report.md")).expect("report");
    assert!(report.contains("| prep |"), "{report}");
    assert!(!report.contains("$0.0000"), "{report}");
}

#[test]
fn test_notifications_are_marked_as_tests_and_one_per_line() {
    let dir = tempdir();
    let log = dir.path().join("events.log");
    let out = costguard()
        .args(["notify", "test", "--notify-command"])
        .arg(format!("cat >> {}", log.display()))
        .output()
        .expect("notify test");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.ends_with('\n'), "one event per line: {text:?}");
    let v: serde_json::Value = serde_json::from_str(text.trim()).expect("json");
    assert_eq!(v["kind"], "test", "{v}");
    assert!(
        v["evidence"]
            .as_str()
            .unwrap_or("")
            .contains("costguard notify test"),
        "{v}"
    );
}
