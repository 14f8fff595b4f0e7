//! Plans: ordered phases under one run id and ledger, each with its own caps and on_kill;
//! a plan started again after a crash skips the phases its ledger records.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;

#[test]
fn a_plan_goes_on_after_a_phase_is_killed_by_its_own_cap() {
    let state = tempdir();
    let plan = state.path().join("sweep.toml");
    let write = |on_kill: &str| {
        std::fs::write(
            &plan,
            format!(
                "on_kill = \"{on_kill}\"\n\
                 [[phase]]\nname = \"prep\"\ncommand = \"echo prepping\"\nexpected = \"1s\"\n\
                 [[phase]]\nname = \"train\"\ncommand = [\"sh\", \"-c\", \"echo step 1; sleep 30\"]\nmax_wall = \"800ms\"\nexpected = \"10s\"\n\
                 [[phase]]\nname = \"eval\"\ncommand = \"echo evaluating\"\n"
            ),
        )
        .expect("plan");
    };
    write("continue");
    let mut c = guard(state.path());
    c.args([
        "--plan",
        &path_str(&plan),
        "--run-id",
        "sweep",
        "--usd-per-hour",
        "36",
    ])
    .args(["--max-usd", "10", "--kill-grace", "200ms"]);
    let out = run(c);
    let (text, err) = (out_text(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(124), "{err}");
    assert!(
        text.contains("prepping") && text.contains("evaluating"),
        "{text}"
    );
    assert!(
        err.contains("phase train killed; on_kill = continue"),
        "{err}"
    );
    let l = ledger(state.path(), "sweep");
    let phases: Vec<(String, String)> = l["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_string(),
                p["outcome"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        phases,
        [
            ("prep", "completed"),
            ("train", "killed"),
            ("eval", "completed")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    assert_eq!(l["phases"][1]["reason"], "wall");
    assert_eq!(l["kills"][0]["phase"], "train");
    assert_eq!(
        l["outcome_detail"],
        "2 of 3 phases completed; train killed (wall)"
    );
    let events =
        std::fs::read_to_string(state.path().join("runs/sweep/events.jsonl")).expect("events");
    assert_eq!(events.matches("\"phase-completed\"").count(), 3, "{events}");
    let mut c = guard(state.path());
    c.args(["status", "sweep"]);
    let st = out_text(&run(c));
    assert!(st.contains("phase:     3 of 3 (eval)"), "{st}");
    let report =
        std::fs::read_to_string(state.path().join("runs/sweep/report.md")).expect("report");
    assert!(report.contains("| train | 10.000s |"), "{report}");
    assert!(report.contains("phase train took"), "{report}");

    write("abort");
    let mut c = guard(state.path());
    c.args([
        "--plan",
        &path_str(&plan),
        "--run-id",
        "sweep2",
        "--usd-per-hour",
        "36",
    ])
    .args(["--kill-grace", "200ms"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(124));
    assert!(
        !out_text(&out).contains("evaluating"),
        "abort stops the plan"
    );
    let l = ledger(state.path(), "sweep2");
    assert_eq!(l["phases"].as_array().map(Vec::len), Some(2));
    assert_eq!(l["state"], "killed");

    // A bad plan is one clear line, and nothing runs.
    std::fs::write(
        &plan,
        "[[phase]]\nname = \"a\"\ncommand = \"true\"\nmax_wall = \"soon\"\n",
    )
    .expect("plan");
    let mut c = guard(state.path());
    c.args(["--plan", &path_str(&plan)]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("phase 1 (\"a\"): max_wall"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_plan_started_again_after_a_crash_skips_what_its_ledger_records() {
    let state = tempdir();
    let marker = state.path().join("second-time");
    let plan = state.path().join("p.toml");
    std::fs::write(
        &plan,
        format!(
            "[[phase]]\nname = \"prep\"\ncommand = \"echo prep-ran\"\n\
             [[phase]]\nname = \"train\"\ncommand = \"test -e {m} && echo train-resumed || {{ touch {m}; sleep 30; }}\"\n\
             [[phase]]\nname = \"eval\"\ncommand = \"echo eval-ran\"\n",
            m = marker.display()
        ),
    )
    .expect("plan");
    let mut c = guard(state.path());
    c.args([
        "--plan",
        &path_str(&plan),
        "--run-id",
        "crashy",
        "--usd-per-hour",
        "3600",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut first = c.spawn().expect("spawn");
    // In phase train, with spend on record (put there about once a second).
    assert!(wait_until(Duration::from_secs(10), || {
        let l = ledger(state.path(), "crashy");
        marker.exists() && l["phase"] == "train" && l["spend_dollars"].as_f64().unwrap_or(0.0) > 0.3
    }));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = first.wait();
    let spent = ledger(state.path(), "crashy")["spend_dollars"]
        .as_f64()
        .expect("spend");
    assert!(spent > 0.3, "{spent}");

    let mut c = guard(state.path());
    c.args([
        "--plan",
        &path_str(&plan),
        "--run-id",
        "crashy",
        "--usd-per-hour",
        "3600",
    ]);
    let out = run(c);
    let (text, err) = (out_text(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("phase prep already recorded (completed); skipping it"),
        "{err}"
    );
    assert!(!text.contains("prep-ran"), "prep did not run again: {text}");
    assert!(
        text.contains("train-resumed") && text.contains("eval-ran"),
        "{text}"
    );
    let l = ledger(state.path(), "crashy");
    assert_eq!(l["state"], "completed");
    assert_eq!(l["phases"].as_array().map(Vec::len), Some(3));
    assert!(
        l["spend_dollars"].as_f64().expect("spend") >= spent,
        "spend carried over"
    );
}
