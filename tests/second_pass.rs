//! The first hour, second pass: where the page is, waiting for a background run, keeping the
//! state directory, the agent on a box without a GPU, the preflight's passing line, and the
//! smaller things a timeout, pueue, Slurm or SkyPilot user trips over. Real processes only.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::*;

/// The port of the page the start line names: `page http://127.0.0.1:PORT/`.
fn page_port(err: &str) -> u16 {
    let re =
        regex::Regex::new(r"page http://127\.0\.0\.1:(\d+)/ \(metrics: /metrics\)").expect("re");
    re.captures(err)
        .and_then(|c| c[1].parse().ok())
        .unwrap_or_else(|| panic!("no page address in the start line:\n{err}"))
}

fn get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("send");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

/// A detached run in `state` (preflight skipped); its id.
fn detach(state: &Path, id: &str, flags: &[&str], job: &str) {
    let mut c = guard(state);
    c.args(["run", "--detach", "--no-preflight", "--run-id", id])
        .args(flags)
        .args(["--", "sh", "-c", job]);
    let out = run(c);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
}

#[test]
fn the_start_line_status_and_the_status_document_name_the_page() {
    let state = tempdir();
    let mut c = guard(state.path());
    c.args(["run", "--detach", "--no-preflight", "--run-id", "pg"])
        .args(["--max-wall", "1m", "--", "sleep", "30"]);
    let out = run(c);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let log = state.path().join("runs/pg/output.log");
    let mut text = String::new();
    assert!(wait_until(Duration::from_secs(10), || {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("page http://")
    }));
    let port = page_port(&text);
    let url = format!("http://127.0.0.1:{port}/");
    let doc = get(port, "/status");
    assert!(doc.contains(&format!("\"page_url\":\"{url}\"")), "{doc}");
    assert!(wait_until(Duration::from_secs(10), || {
        ledger(state.path(), "pg")["page_url"] == url.as_str()
    }));
    let mut c = guard(state.path());
    c.args(["status", "pg"]);
    let st = out_text(&run(c));
    assert!(st.contains(&format!("page:      {url}\n")), "{st}");
    let pid = ledger(state.path(), "pg")["costguard"]["pid"]
        .as_i64()
        .expect("pid") as i32;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    );
    assert!(wait_until(Duration::from_secs(20), || !alive(pid)));
    // An ended run's page is gone: status no longer offers it.
    let mut c = guard(state.path());
    c.args(["status", "pg"]);
    assert!(!out_text(&run(c)).contains("page:"));
}

#[test]
fn with_the_default_port_taken_config_json_records_the_port_served() {
    // Hold 9947 (another costguard, or this test, has it): costguard moves up its span.
    let _held = std::net::TcpListener::bind("127.0.0.1:9947");
    let state = tempdir();
    let mut c = guard(state.path());
    c.env_remove("COSTGUARD_LISTEN")
        .args(["--run-id", "moved", "--max-wall", "5s", "--", "true"]);
    let out = run(c);
    let err = stderr(&out);
    assert_eq!(code(&out), Some(0), "{err}");
    let port = page_port(&err);
    assert_ne!(port, 9947, "{err}");
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(state.path().join("runs/moved/config.json")).expect("config"),
    )
    .expect("json");
    assert_eq!(cfg["listen"], format!("127.0.0.1:{port}"), "{cfg}");
}

#[test]
fn help_mentions_the_page() {
    let mut c = costguard();
    c.arg("--help");
    let help = out_text(&run(c));
    assert!(
        help.contains("Address for the page (http://ADDR/)"),
        "{help}"
    );
    assert!(help.contains("http://127.0.0.1:9947/ shows it"), "{help}");
}

#[test]
fn wait_and_logs_follow_exit_with_the_runs_exit_status() {
    let state = tempdir();
    detach(
        state.path(),
        "ceiling",
        &["--max-wall", "1s"],
        "echo going; sleep 30",
    );
    detach(
        state.path(),
        "three",
        &["--max-wall", "1m"],
        "sleep 0.5; exit 3",
    );
    detach(state.path(), "fine", &["--max-wall", "1m"], "echo done");
    for (id, want) in [("ceiling", 124), ("three", 3), ("fine", 0)] {
        let mut c = guard(state.path());
        c.args(["wait", id]);
        let out = run(c);
        assert_eq!(code(&out), Some(want), "wait {id}: {}", stderr(&out));
        let mut c = guard(state.path());
        c.args(["logs", "-f", id]);
        let out = run(c);
        assert_eq!(code(&out), Some(want), "logs -f {id}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("(exit {want})")),
            "{}",
            stderr(&out)
        );
    }
    let mut c = guard(state.path());
    c.args(["logs", "ceiling"]);
    let out = run(c);
    assert_eq!(code(&out), Some(0), "plain logs print and succeed");
    assert!(out_text(&out).contains("going"));
    let mut c = guard(state.path());
    c.args(["wait", "nope"]);
    assert_eq!(code(&run(c)), Some(125));
}

#[test]
fn wait_without_a_run_waits_for_every_running_one() {
    let state = tempdir();
    detach(state.path(), "slow-ok", &["--max-wall", "1m"], "sleep 1");
    detach(
        state.path(),
        "quick-bad",
        &["--max-wall", "1m"],
        "sleep 0.3; exit 5",
    );
    let mut c = guard(state.path());
    c.arg("wait");
    let out = run(c);
    let err = stderr(&out);
    assert_eq!(code(&out), Some(5), "the first non-zero status: {err}");
    assert!(err.contains("run slow-ok completed"), "{err}");
    assert!(err.contains("run quick-bad failed"), "{err}");
}

#[test]
fn wait_for_a_crashed_run_has_no_exit_status_to_give() {
    let state = tempdir();
    let dir = state.path().join("runs/gone");
    std::fs::create_dir_all(&dir).expect("dir");
    // A ledger that says running, its costguard long gone (pid 1's start time is not 7).
    std::fs::write(
        dir.join("ledger.json"),
        r#"{"run_id":"gone","state":"running","command":"x","host":"h","started_at":"2026-01-01T00:00:00.000Z","updated_at":"","sessions":1,"costguard":{"pid":1,"start_ticks":7},"holder":null,"pgid":null,"cgroup":null,"spend_dollars":0,"wasted_dollars":0,"elapsed_seconds":1,"rate_dollars_per_hour":null,"budget_dollars":null,"max_wall_seconds":null,"priced":false,"kills":[],"warnings":0,"errors":0,"events":0,"waiting_on":null,"last_progress":null,"progress_total":null,"last_step":null,"eta_seconds":null,"projected_spend_dollars":null,"longest_idle_seconds":0,"exit_code":null,"outcome_detail":null,"phases_total":null,"phase_index":null,"phase":null,"phases":[],"no_preflight":false,"report_path":null,"watchdogs":[],"on_exit":null}"#,
    )
    .expect("ledger");
    let mut c = guard(state.path());
    c.args(["wait", "gone"]);
    let out = run(c);
    assert_eq!(code(&out), Some(125));
    assert!(
        stderr(&out).contains("run gone is crashed"),
        "{}",
        stderr(&out)
    );
}

fn list_ids(state: &Path, args: &[&str]) -> (Option<i32>, Vec<String>) {
    let mut c = guard(state);
    c.arg("list").args(args);
    let out = run(c);
    let ids = out_text(&out)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    (code(&out), ids)
}

#[test]
fn list_filters_by_state_and_age_and_speaks_json() {
    let state = tempdir();
    for (id, job) in [("ok", "true"), ("bad", "exit 2")] {
        let mut c = guard(state.path());
        c.args(["--run-id", id, "--max-wall", "5s", "--", "sh", "-c", job]);
        run(c);
    }
    let mut c = guard(state.path());
    c.args([
        "--run-id",
        "cut",
        "--max-wall",
        "300ms",
        "--",
        "sleep",
        "30",
    ]);
    assert_eq!(code(&run(c)), Some(124));
    assert_eq!(
        list_ids(state.path(), &["--state", "killed"]),
        (Some(0), vec!["cut".to_string()])
    );
    let (_, both) = list_ids(state.path(), &["--state", "failed,completed"]);
    assert_eq!(both.len(), 2, "{both:?}");
    assert!(both.contains(&"ok".to_string()) && both.contains(&"bad".to_string()));
    let (_, recent) = list_ids(state.path(), &["--since", "1h"]);
    assert_eq!(recent.len(), 3, "{recent:?}");
    let mut c = guard(state.path());
    c.args(["list", "--since", "1h", "--state", "running"]);
    assert!(out_text(&run(c)).starts_with("no matching runs"));
    let mut c = guard(state.path());
    c.args(["list", "--json", "--state", "killed"]);
    let out = out_text(&run(c));
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(rows.len(), 1, "{out}");
    assert_eq!(rows[0]["run_id"], "cut");
    assert_eq!(rows[0]["status"], "killed");
    assert_eq!(rows[0]["exit_code"], 124);
    for bad in [["--state", "dead"], ["--since", "yesterday"]] {
        let mut c = guard(state.path());
        c.arg("list").args(bad);
        let out = run(c);
        assert_eq!(code(&out), Some(125), "{bad:?}");
        assert!(
            stderr(&out).contains(&format!("invalid {}", bad[0])),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn clean_removes_ended_runs_only() {
    let state = tempdir();
    for id in ["old", "owed", "demo"] {
        let mut c = guard(state.path());
        c.args(["--run-id", id, "--max-wall", "5s", "--", "true"]);
        assert_eq!(code(&run(c)), Some(0));
    }
    // run `demo-2`, whose notification is still in the outbox, and `demo` whose name is a
    // prefix of it: only `demo-2` is owed.
    let mut c = guard(state.path());
    c.args(["--run-id", "demo-2", "--max-wall", "5s", "--", "true"]);
    assert_eq!(code(&run(c)), Some(0));
    let outbox = state.path().join("outbox");
    std::fs::create_dir_all(&outbox).expect("outbox");
    std::fs::write(outbox.join("demo-2-3.webhook.json"), "{}").expect("item");
    std::fs::write(outbox.join("owed-12.command.json"), "{}").expect("item");
    detach(state.path(), "live", &["--max-wall", "1m"], "sleep 30");
    assert!(wait_until(Duration::from_secs(10), || {
        ledger(state.path(), "live")["state"] == "running"
    }));
    let mut c = guard(state.path());
    c.args(["clean", "--older-than", "1h"]);
    let out = out_text(&run(c));
    assert!(out.contains("removed 0 runs, kept 5"), "too recent:\n{out}");
    let mut c = guard(state.path());
    c.args(["clean", "--dry-run"]);
    let out = out_text(&run(c));
    assert!(out.contains("would remove old (completed)"), "{out}");
    assert!(out.contains("would remove demo (completed)"), "{out}");
    assert!(
        out.contains("kept owed (its notifications are not delivered yet"),
        "{out}"
    );
    assert!(out.contains("kept demo-2 (its notifications"), "{out}");
    assert!(out.contains("kept live (running)"), "{out}");
    assert!(
        state.path().join("runs/old").is_dir(),
        "a dry run removes nothing"
    );
    let mut c = guard(state.path());
    c.arg("clean");
    let o = run(c);
    assert_eq!(code(&o), Some(0), "{}", stderr(&o));
    assert!(
        out_text(&o).contains("removed 2 runs, kept 3"),
        "{}",
        out_text(&o)
    );
    for (id, there) in [
        ("old", false),
        ("demo", false),
        ("owed", true),
        ("demo-2", true),
        ("live", true),
    ] {
        assert_eq!(state.path().join("runs").join(id).is_dir(), there, "{id}");
    }
    let mut c = guard(state.path());
    c.args(["clean", "--older-than", "soon"]);
    assert_eq!(code(&run(c)), Some(125));
    let mut c = guard(state.path());
    c.args(["stop", "live"]);
    run(c);
}

#[test]
fn the_agent_on_a_box_without_a_gpu_records_nothing_and_says_why() {
    let state = tempdir();
    for gpu in ["auto", "none"] {
        let mut c = guard(state.path());
        c.env("COSTGUARD_GPU", gpu)
            .env(
                "COSTGUARD_NVML_LIB",
                state.path().join("no-libnvidia-ml.so.1"),
            )
            .args(["agent", "--max-wall", "5s"]);
        let out = run(c);
        let err = stderr(&out);
        assert_eq!(code(&out), Some(125), "{err}");
        assert!(err.contains("costguard agent needs NVML"), "{err}");
        assert!(err.contains("nothing was started or recorded"), "{err}");
        assert!(!err.contains("started:"), "no start line: {err}");
        if gpu == "auto" {
            assert!(err.contains("the library was not found"), "{err}");
            assert!(!err.contains("libloading"), "{err}");
        }
    }
    let (_, ids) = list_ids(state.path(), &[]);
    assert!(ids.is_empty(), "no crashed runs left behind: {ids:?}");
}

#[test]
fn the_agents_help_and_errors_fit_the_agent() {
    let mut c = costguard();
    c.args(["agent", "--help"]);
    let help = out_text(&run(c));
    for absent in [
        "--plan",
        "--progress-regex",
        "--progress-total",
        "--output-log-max",
    ] {
        assert!(
            !help.contains(absent),
            "{absent} in the agent's help:\n{help}"
        );
    }
    assert!(help.contains("--target"), "{help}");
    assert!(help.contains("--heartbeat-file was not touched"), "{help}");
    let mut c = costguard();
    c.args(["agent", "--", "sleep", "1"]);
    let out = run(c);
    assert_eq!(code(&out), Some(125));
    assert!(
        stderr(&out).contains("the agent takes no command"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("put the job after"),
        "{}",
        stderr(&out)
    );
    let mut c = costguard();
    c.args(["agent", "--plan", "p.toml"]);
    let out = run(c);
    assert_eq!(code(&out), Some(125));
    assert!(
        stderr(&out).contains("costguard agent cannot use --plan"),
        "{}",
        stderr(&out)
    );
}

/// `sh -c LINE` with costguard on PATH and the test's environment.
fn in_shell(state: &Path, line: &str) -> std::process::Command {
    let c = guard(state);
    let mut sh = std::process::Command::new("sh");
    sh.args(["-c", line]).stdin(std::process::Stdio::null());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    let dir = Path::new(bin())
        .parent()
        .expect("bin dir")
        .display()
        .to_string();
    let path = std::env::var("PATH").unwrap_or_default();
    sh.env("PATH", format!("{dir}:{path}"));
    sh
}

#[test]
fn an_unanswered_preflight_prints_the_line_that_passes() {
    let state = tempdir();
    for sub in [&["check"][..], &["run", "--detach"][..]] {
        let mut c = guard(state.path());
        c.args(sub).args(["--max-wall", "10s", "--", "true"]);
        let out = run(c);
        let text = out_text(&out);
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("preflight: this would answer them: "))
            .unwrap_or_else(|| panic!("no passing line:\n{text}"))
            .to_string();
        assert!(
            line.starts_with(&format!(
                "costguard {} --max-wall 10s --notify-command 'cat >> ",
                sub.join(" ")
            )),
            "{line}"
        );
        assert!(line.ends_with("--on-exit : -- true"), "{line}");
        // The line it printed passes, as printed.
        let passed = run(in_shell(state.path(), &line));
        assert_eq!(
            code(&passed),
            Some(0),
            "{line}\n{}{}",
            out_text(&passed),
            stderr(&passed)
        );
        if sub[0] == "run" {
            let id = out_text(&passed)
                .lines()
                .find(|l| !l.contains(':'))
                .unwrap_or_default()
                .trim()
                .to_string();
            let mut c = guard(state.path());
            c.args(["wait", &id]);
            assert_eq!(code(&run(c)), Some(0));
        }
    }
}

#[test]
fn a_plans_next_phase_is_no_resume_and_one_session_is_singular() {
    let state = tempdir();
    let plan = state.path().join("p.toml");
    std::fs::write(
        &plan,
        "[[phase]]\nname = \"a\"\ncommand = \"true\"\n[[phase]]\nname = \"b\"\ncommand = \"true\"\n",
    )
    .expect("plan");
    let mut c = guard(state.path());
    c.args([
        "--plan",
        &path_str(&plan),
        "--run-id",
        "pl",
        "--max-wall",
        "1m",
    ]);
    let out = run(c);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("resuming"), "{}", stderr(&out));
    let mut c = guard(state.path());
    c.args(["--run-id", "once", "--max-wall", "1m", "--", "true"]);
    run(c);
    let mut c = guard(state.path());
    c.args(["--run-id", "once", "--max-wall", "1m", "--", "true"]);
    let err = stderr(&run(c));
    assert!(err.contains("over 1 earlier session;"), "{err}");
}

#[test]
fn an_unpriced_runs_hook_gets_no_spend_and_a_priced_one_does() {
    let state = tempdir();
    for (id, rate) in [("free", None), ("paid", Some("36"))] {
        let out_file = state.path().join(format!("{id}.env"));
        let mut c = guard(state.path());
        c.env("COSTGUARD_SPEND_DOLLARS", "9.9")
            .args(["--run-id", id, "--max-wall", "5s"])
            .args([
                "--on-exit",
                &format!(
                    "echo \"spend=${{COSTGUARD_SPEND_DOLLARS-unset}}\" > {}",
                    out_file.display()
                ),
            ]);
        if let Some(r) = rate {
            c.args(["--usd-per-hour", r]);
        }
        c.args(["--", "true"]);
        let out = run(c);
        assert_eq!(code(&out), Some(0), "{}", stderr(&out));
        let got = std::fs::read_to_string(&out_file).expect("hook ran");
        if rate.is_none() {
            assert_eq!(got.trim(), "spend=unset");
        } else {
            assert!(got.starts_with("spend=0.0"), "{got}");
        }
    }
}

#[test]
fn status_shows_the_jobs_last_line_without_control_characters() {
    let state = tempdir();
    let mut c = guard(state.path());
    c.args(["--run-id", "esc", "--max-wall", "5s", "--stall", "1m"])
        .args([
            "--",
            "sh",
            "-c",
            r"printf 'step 1 \033[2J\033]0;owned\007 end\000x\n'",
        ]);
    assert_eq!(code(&run(c)), Some(0));
    let mut c = guard(state.path());
    c.args(["status", "esc"]);
    let st = out_text(&run(c));
    assert!(
        !st.contains('\u{1b}') && !st.contains('\0') && !st.contains('\u{7}'),
        "{st:?}"
    );
    assert!(
        st.contains(r"progress:  step 1 \x1b[2J\x1b]0;owned\x07 end\x00x"),
        "{st}"
    );
}

#[test]
fn a_run_id_starting_with_a_dash_is_refused() {
    let state = tempdir();
    for args in [
        &["--run-id=-x", "--", "true"][..],
        &[
            "run",
            "--detach",
            "--no-preflight",
            "--run-id=-x",
            "--",
            "true",
        ][..],
    ] {
        let mut c = guard(state.path());
        c.args(args);
        let out = run(c);
        assert_eq!(code(&out), Some(125));
        assert!(
            stderr(&out).contains("a run id may not start with `-`"),
            "{}",
            stderr(&out)
        );
    }
    assert!(!state.path().join("runs/-x").exists());
}

#[test]
fn a_missing_nvml_names_the_library_not_found() {
    let state = tempdir();
    let mut c = guard(state.path());
    c.env("COSTGUARD_GPU", "nvml")
        .env("COSTGUARD_NVML_LIB", state.path().join("libnvidia-ml.so.1"))
        .args(["--max-wall", "5s", "--", "true"]);
    let out = run(c);
    let err = stderr(&out);
    assert_eq!(code(&out), Some(125), "{err}");
    assert!(err.contains("the library was not found"), "{err}");
    assert!(!err.contains("libloading"), "{err}");
}
