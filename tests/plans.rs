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
        "2 of 3 phases completed; train killed at its wall cap"
    );
    let events =
        std::fs::read_to_string(state.path().join("runs/sweep/events.jsonl")).expect("events");
    assert_eq!(events.matches("\"phase-completed\"").count(), 3, "{events}");
    let mut c = guard(state.path());
    c.args(["status", "sweep"]);
    let st = out_text(&run(c));
    assert!(
        st.contains("phases:    2 of 3 completed, 1 killed (train wall at 0.8s)\n"),
        "{st}"
    );
    assert_eq!(
        l["state"], "completed",
        "every phase ran to its end or its cap"
    );
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

/// The worked example compressed: 7 architectures × 3 seeds, a 4 s cap per architecture,
/// BiGRU and GcnLite hanging until their caps kill them, SqueezeformerSmall's seed 2 held
/// until the check-in has been read.
#[test]
fn a_matrix_plan_checks_in_pings_each_phase_and_ends_completed_with_its_kills() {
    let state = tempdir();
    let dir = state.path();
    let (plan, notes, release) = (
        dir.join("sweep.toml"),
        dir.join("notes.jsonl"),
        dir.join("release"),
    );
    std::fs::write(
        &plan,
        format!(
            "on_kill = \"continue\"\n\
             [[phase]]\n\
             name = \"{{arch}}\"\n\
             for_each = {{ arch = [\"LSTM\", \"BiGRU\", \"TCN\", \"GcnLite\", \"Conformer\", \"SqueezeformerSmall\", \"Mamba\"] }}\n\
             steps = {{ seed = [1, 2, 3] }}\n\
             command = \"case {{arch}}-{{seed}} in BiGRU-*|GcnLite-*) sleep 60;; SqueezeformerSmall-2) while [ ! -e {r} ]; do sleep 0.05; done;; esac; echo {{arch}} seed {{seed}}\"\n\
             max_wall = \"4s\"\n\
             expected = \"1s\"\n",
            r = release.display()
        ),
    )
    .expect("plan");
    let notify = format!("cat >> {}; echo >> {}", notes.display(), notes.display());

    // The expansion, as `check --plan` prints it.
    let mut c = guard(dir);
    c.args(["check", "--plan", &path_str(&plan), "--on-exit", ":"]);
    let text = out_text(&run(c));
    assert!(text.starts_with("plan: 7 phases, 21 commands\n"), "{text}");
    assert!(
        text.contains(
            "  6. SqueezeformerSmall (max_wall 4.000s, expected 1.000s, on_kill continue)\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("       seed 2: case 'SqueezeformerSmall'-'2' in "),
        "{text}"
    );

    let mut c = guard(dir);
    c.args(["--plan", &path_str(&plan), "--run-id", "sweep"])
        .args(["--usd-per-hour", "36", "--kill-grace", "200ms"])
        .args(["--notify-command", &notify, "--on-exit", ":"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = c.spawn().expect("spawn");
    let status = || {
        let mut c = guard(dir);
        c.args(["status", "sweep"]);
        out_text(&run(c))
    };
    let mut st = String::new();
    let seen = wait_until(Duration::from_secs(60), || {
        st = status();
        st.contains("running:   SqueezeformerSmall (seed 2 of 3)")
    });
    std::fs::write(&release, "").expect("release");
    assert!(seen, "{st}");
    let lines: Vec<&str> = st.lines().collect();
    assert!(
        lines.contains(
            &"phases:    3 of 7 completed, 2 killed (BiGRU wall at 4s, GcnLite wall at 4s)"
        ),
        "{st}"
    );
    assert!(
        lines.contains(&"running:   SqueezeformerSmall (seed 2 of 3), phase 6 of 7"),
        "{st}"
    );
    let line = |p: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(p))
            .copied()
            .unwrap_or("")
    };
    let elapsed = line("elapsed:   ");
    assert!(
        elapsed.contains("; this phase ") && elapsed.ends_with(" of its 4.000s wall cap"),
        "no run ceiling, so no 'of X' for the run: {st}"
    );
    assert!(!elapsed.contains("of the run's"), "{st}");
    assert!(
        line("eta:       ").ends_with(" more, no budget") || line("eta:       ").contains(" more"),
        "{st}"
    );
    assert!(line("spend:     ").starts_with("spend:     $"), "{st}");
    assert!(
        line("next:      ").starts_with(
            "next:      a ping when SqueezeformerSmall ends (at the latest: the wall ceiling in "
        ),
        "{st}"
    );

    let out = child.wait_with_output().expect("wait");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(124), "a cap was hit: {err}");
    let summary = "5 of 7 phases completed; BiGRU, GcnLite killed at their wall caps";
    assert!(
        err.contains(&format!(
            "costguard: plan completed: {summary}; exit status 124"
        )),
        "{err}"
    );
    let l = ledger(dir, "sweep");
    assert_eq!(l["state"], "completed");
    assert_eq!(l["outcome_detail"], summary);

    // One notification per phase end, the kills, and the summary last — in the order the
    // events were made (deliveries run concurrently, so arrival order may differ).
    let mut sent: Vec<serde_json::Value> = std::fs::read_to_string(&notes)
        .expect("notes")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    sent.sort_by_key(|e| e["id"].as_str().unwrap_or_default().to_string());
    let kinds: Vec<String> = sent
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["kind"].as_str().unwrap_or(""),
                e["reason"].as_str().unwrap_or("-")
            )
        })
        .collect();
    let want = [
        "phase-completed completed",
        "killed wall",
        "phase-completed wall",
        "phase-completed completed",
        "killed wall",
        "phase-completed wall",
        "phase-completed completed",
        "phase-completed completed",
        "phase-completed completed",
        "completed -",
    ];
    assert_eq!(kinds, want, "{sent:?}");
    assert_eq!(sent[9]["evidence"], format!("plan: {summary}"));
    let bigru = sent[2]["evidence"].as_str().unwrap_or("");
    assert!(
        bigru.starts_with("phase 2/7 BiGRU: killed (at seed 1 of 3) after 4."),
        "{bigru}"
    );

    // The postmortem: per phase and step, the kills as surprises, what to change.
    let report = std::fs::read_to_string(dir.join("runs/sweep/report.md")).expect("report");
    for want in [
        "- **Outcome:** completed — 5 of 7 phases completed; BiGRU, GcnLite killed at their wall caps",
        "| BiGRU | 1.000s | 4.",
        "| phase | step | outcome | time |",
        "| LSTM | seed 3 | completed | ",
        "| BiGRU | seed 1 | killed | 4.",
        "| BiGRU | seed 2 | not run | — |",
        "- phase BiGRU was killed at its wall cap after 4.",
        ", in seed 1; not run: seed 2, seed 3",
        "- phase GcnLite: killed (wall) after 4.",
        "- Notifications: each phase's end was sent",
        "- Exit hook: none (`--on-exit :`)",
    ] {
        assert!(report.contains(want), "{want}\n{report}");
    }
    assert!(!report.contains("Nothing stood out"), "{report}");
}

#[test]
fn a_matrix_plan_names_the_line_and_key_of_its_mistakes() {
    let state = tempdir();
    let plan = state.path().join("p.toml");
    for (text, want) in [
        (
            "[[phase]]\nname = \"x\"\ncommand = \"true\"\nfor_each = { arch = [] }\n",
            "phase 1 (\"x\"): line 4: for_each.arch: the list is empty: nothing to run",
        ),
        (
            "[[phase]]\nname = \"x\"\ncommand = \"true\"\n\nsteps = { seed = 3 }\n",
            "line 5: steps.seed: expected a list of values",
        ),
        (
            "[[phase]]\nname = \"x\"\ncommand = \"true\"\nfor_each = { arch = [\"a\", \"b\"] }\n",
            "phase \"x\": each phase needs a name of its own (with for_each, put {KEY} in the name)",
        ),
        (
            "[[phase]]\nname = \"x\"\ncommand = \"true\"\nfor_eahc = { arch = [\"a\"] }\n",
            "line 4: unknown key `for_eahc`; did you mean `for-each`?",
        ),
    ] {
        std::fs::write(&plan, text).expect("plan");
        let mut c = guard(state.path());
        c.args(["--plan", &path_str(&plan)]);
        let out = run(c);
        assert_eq!(out.status.code(), Some(125), "{text}");
        assert!(stderr(&out).contains(want), "{want}\n{}", stderr(&out));
    }
}
