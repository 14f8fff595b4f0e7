//! Runs you can walk away from: the ledger, resume after a crash, detach/status/stop, the
//! report, the preflight and the exit-hook guard.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[test]
fn sigkilled_costguard_resumes_its_budget_and_ends_the_old_tree() {
    let state = tempdir();
    let pid_file = state.path().join("job.pid");
    // A job that survives TERM, so only the next session's kill ends it.
    let job = format!(
        "trap '' TERM; echo $$ > {}; while :; do sleep 0.1; done",
        pid_file.display()
    );
    let mut c = guard(state.path());
    c.args([
        "--run-id",
        "resume-me",
        "--usd-per-hour",
        "3600",
        "--max-usd",
        "4",
    ])
    .args(["--interval", "200ms", "--", "sh", "-c", &job])
    .stderr(Stdio::null());
    let first = c.spawn().expect("spawn");
    let old_job = read_pid(&pid_file);
    // Spend about $1.5, with the job's processes on record.
    assert!(wait_until(Duration::from_secs(5), || {
        let l = ledger(state.path(), "resume-me");
        l["spend_dollars"].as_f64().unwrap_or(0.0) > 1.5
            && l["members"].as_array().is_some_and(|m| !m.is_empty())
    }));
    let l = ledger(state.path(), "resume-me");
    let holder = l["holder"]["pid"].as_i64().expect("holder pid") as i32;
    // costguard and its holder die together: nothing is left to end the job.
    let kill9 = |pid: i32| {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    };
    kill9(first.id() as i32);
    kill9(holder);
    let mut first = first;
    let _ = first.wait();
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(old_job), "the old job outlived both, as intended");
    let spent_before = ledger(state.path(), "resume-me")["spend_dollars"]
        .as_f64()
        .expect("spend");

    std::fs::remove_file(&pid_file).expect("rm pid");
    let mut c = guard(state.path());
    c.args([
        "--run-id",
        "resume-me",
        "--usd-per-hour",
        "3600",
        "--max-usd",
        "4",
    ])
    .args([
        "--interval",
        "200ms",
        "--kill-grace",
        "300ms",
        "--",
        "sh",
        "-c",
        &job,
    ]);
    let start = std::time::Instant::now();
    let out = run(c);
    let took = start.elapsed();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(124), "{err}");
    assert!(!alive(old_job), "the old tree was killed: {err}");
    assert!(err.contains("died without ending its job; killed"), "{err}");
    assert!(err.contains("resuming run resume-me"), "{err}");
    // The budget continued: about $4 - spent_before at $1/s, not a fresh $4.
    let left = 4.0 - spent_before;
    // The time the old job ran unguarded (since the last record) is charged too.
    assert!(err.contains("ran unguarded"), "{err}");
    assert!(
        took.as_secs_f64() < left + 1.5 && took.as_secs_f64() > left - 2.5,
        "{took:?} for ${left:.2} left"
    );
    let l = ledger(state.path(), "resume-me");
    assert_eq!(l["sessions"], 2);
    assert_eq!(l["state"], "killed");
    let total = l["spend_dollars"].as_f64().expect("spend");
    // $4 at the kill, plus what the 300 ms grace accrued at $1/s.
    assert!((4.0..4.5).contains(&total), "spend never reset: {total}");
}

#[test]
fn detach_status_logs_and_stop() {
    let state = tempdir();
    let job = "i=0; while :; do i=$((i+1)); echo step $i; sleep 0.2; done";
    let mut c = guard(state.path());
    c.args(["run", "--detach", "--no-preflight", "--run-id", "bg"])
        .args(["--usd-per-hour", "36", "--max-wall", "1h", "--stall", "1m"])
        .args(["--progress-regex", r"step (\d+)", "--", "sh", "-c", job]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(out_text(&out).trim(), "bg", "prints the run id and returns");
    assert!(wait_until(Duration::from_secs(10), || {
        ledger(state.path(), "bg")["last_progress"]
            .as_str()
            .is_some_and(|p| p.starts_with("step"))
    }));
    let mut c = guard(state.path());
    c.args(["status", "bg"]);
    let st = out_text(&run(c));
    for want in [
        "run:       bg (running)",
        "phase:     single command",
        " of 1h00m00s",
        "at $36.00/h",
        "kills:     none",
        "progress:  step",
        // The wall ceiling ends the run; the stall window only if progress stops.
        "waiting:   the wall ceiling in ",
        "(sooner: the stall kill unless progress comes in ",
        "preflight: skipped (--no-preflight)",
    ] {
        assert!(st.contains(want), "{want:?} in\n{st}");
    }
    let mut c = guard(state.path());
    c.args(["status", "bg", "--json"]);
    let j: serde_json::Value = serde_json::from_str(&out_text(&run(c))).expect("json");
    assert_eq!(j["status"], "running");
    assert_eq!(j["no_preflight"], true);
    let mut c = guard(state.path());
    c.args(["logs", "bg"]);
    assert!(out_text(&run(c)).contains("step 2\n"));
    let mut c = guard(state.path());
    c.args(["list"]);
    assert!(out_text(&run(c)).contains("bg "));

    let mut c = guard(state.path());
    c.args(["stop", "bg"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        out_text(&out).contains("run bg stopped"),
        "{}",
        out_text(&out)
    );
    let l = ledger(state.path(), "bg");
    assert_eq!(l["state"], "stopped");
    assert!(state.path().join("runs/bg/report.md").is_file());
    // The job's tree is gone: no process of the group is left.
    let members: Vec<i64> = l["members"]
        .as_array()
        .map(|m| m.iter().filter_map(|p| p["pid"].as_i64()).collect())
        .unwrap_or_default();
    assert!(!members.is_empty());
    for p in members {
        assert!(
            wait_until(Duration::from_secs(2), || !alive(p as i32)),
            "pid {p} survived stop"
        );
    }
}

#[test]
fn the_report_is_a_postmortem() {
    let state = tempdir();
    let mut c = guard(state.path());
    c.args(["--run-id", "pm", "--usd-per-hour", "36", "--stall", "700ms"])
        .args(["--progress-regex", r"step (\d+)", "--"])
        .args([
            "sh",
            "-c",
            "echo step 1; echo step 2; echo loading shard 7; sleep 30",
        ]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    let report = std::fs::read_to_string(state.path().join("runs/pm/report.md")).expect("report");
    for want in [
        "# costguard report: pm",
        "**Outcome:** killed",
        "| spend | no budget |",
        "**stall** after 0.7",
        "   loading shard 7",
        "## Cost",
        "- Spend: $0.00",
        "## Suggested limits for the next similar run",
        "raise `--stall`",
    ] {
        assert!(report.contains(want), "{want:?} in\n{report}");
    }
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(state.path().join("runs/pm/config.json")).expect("config.json"),
    )
    .expect("json");
    assert_eq!(cfg["stall_seconds"], 0.7);
    assert!(state.path().join("runs/pm/output.log").is_file());
    let mut c = guard(state.path());
    c.args(["report", "pm"]);
    let printed = out_text(&run(c));
    assert!(printed.contains("**stall** after 0.7"), "{printed}");
    // The completion path of the notification names it too.
    let events =
        std::fs::read_to_string(state.path().join("runs/pm/events.jsonl")).expect("events");
    assert!(events.contains("report.md"), "{events}");
}

#[test]
fn detach_refuses_an_unanswered_preflight() {
    let state = tempdir();
    let mut c = guard(state.path());
    c.args(["run", "--detach", "--usd-per-hour", "1", "--", "sleep", "5"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(125));
    let text = out_text(&out);
    assert!(text.contains("notification path: NOT ANSWERED"), "{text}");
    assert!(text.contains("watchdog:          NOT ANSWERED"), "{text}");
    assert!(text.contains("exit hook:         NOT ANSWERED"), "{text}");
    assert!(stderr(&out).contains("refusing to start in the background"));
    let mut c = guard(state.path());
    c.args([
        "run",
        "--detach",
        "--no-preflight",
        "--run-id",
        "../escape",
        "--",
        "true",
    ]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("invalid --run-id \"../escape\""),
        "{}",
        stderr(&out)
    );
    assert!(!state.path().join("runs").exists(), "nothing started");

    let rx = common::receiver::Receiver::start(vec![]);
    let mut c = guard(state.path());
    c.args(["check", "--webhook", &rx.url("/h"), "--max-wall", "1h"])
        .args(["--on-exit", "cp -r out /mnt/results", "--", "true"]);
    let out = run(c);
    let text = out_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("notification path: ok — test event sent: webhook: ok"),
        "{text}"
    );
    assert!(text.contains("watchdog:          ok — wall ceiling 1h00m00s, idle off, stall off"));
    assert!(text.contains("exit hook:         ok — runs `cp -r out /mnt/results`"));
    assert_eq!(rx.accepted().len(), 1, "the check really sent a test");
}

#[test]
fn the_exit_hook_runs_with_the_facts_and_refuses_to_ship() {
    let state = tempdir();
    let facts = state.path().join("facts");
    let mut c = guard(state.path());
    c.args(["--run-id", "hooked", "--usd-per-hour", "36", "--max-wall", "300ms"])
        .args([
            "--on-exit",
            &format!(
                "echo \"$COSTGUARD_RUN_ID $COSTGUARD_OUTCOME $COSTGUARD_REASON $COSTGUARD_REPORT\" > {}",
                facts.display()
            ),
        ])
        .args(["--", "sleep", "5"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    let f = std::fs::read_to_string(&facts).expect("hook ran");
    assert!(f.starts_with("hooked killed wall "), "{f}");
    assert!(f.trim_end().ends_with("runs/hooked/report.md"), "{f}");

    for (cmd, pattern) in [
        ("make summary && git push origin results", "git push"),
        ("kubectl apply -f serve.yaml", "kubectl apply"),
        ("twine upload dist/*", "twine upload"),
        ("mail -s done team@example.com < r.md", "mail/sendmail"),
    ] {
        let mut c = guard(state.path());
        c.args(["--on-exit", cmd, "--", "true"]);
        let out = run(c);
        assert_eq!(out.status.code(), Some(125), "{cmd}");
        let err = stderr(&out);
        assert!(
            err.contains("refusing --on-exit") && err.contains(pattern),
            "{err}"
        );
    }
    let marker = state.path().join("pushed");
    let mut c = guard(state.path());
    c.args(["--allow-side-effects", "--on-exit"])
        .arg(format!("true git push; touch {}", marker.display()))
        .args(["--", "true"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(marker.exists(), "--allow-side-effects lets it run");
}

#[test]
fn a_detached_run_survives_its_terminal_closing() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let state = tempdir();
    let pty = nix::pty::openpty(None, None).expect("openpty");
    // Only this test holds the terminal's master side: closing it is the terminal closing.
    // SAFETY: F_SETFD on a descriptor we own.
    assert_eq!(
        unsafe { libc::fcntl(pty.master.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) },
        0
    );
    // A shell whose controlling terminal is the pty, as in a terminal window.
    let mut c = Command::new("sh");
    // HUP back to its default: under `nohup` the shell would inherit it ignored.
    default_signals(&mut c);
    c.env("COSTGUARD_PROVIDER", "none");
    c.arg("-c")
        .arg(format!(
            "{} run --detach --no-preflight --run-id hup --usd-per-hour 1 --max-wall 1h -- sleep 30; sleep 30",
            bin()
        ))
        .env("COSTGUARD_STATE_DIR", state.path())
        .env("COSTGUARD_GPU", "none")
        .env("COSTGUARD_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::from(pty.slave.try_clone().expect("dup")))
        .stdout(Stdio::from(pty.slave.try_clone().expect("dup")))
        .stderr(Stdio::from(pty.slave));
    // SAFETY: setsid and ioctl are async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if libc::ioctl(0, libc::TIOCSCTTY as _, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut sh = c.spawn().expect("sh on a pty");
    drop(c);
    assert!(wait_until(Duration::from_secs(10), || {
        ledger(state.path(), "hup")["state"] == "running"
    }));
    // The terminal goes away: its session gets SIGHUP.
    drop(pty.master);
    let st = sh.wait().expect("sh");
    assert_eq!(
        st.signal(),
        Some(libc::SIGHUP),
        "the terminal's shell got the hangup"
    );
    std::thread::sleep(Duration::from_millis(700));
    let l = ledger(state.path(), "hup");
    let pid = l["costguard"]["pid"].as_i64().expect("pid") as i32;
    assert!(alive(pid), "the detached run outlived its terminal");
    let mut c = guard(state.path());
    c.args(["status", "hup"]);
    assert!(out_text(&run(c)).contains("(running)"));
    let mut c = guard(state.path());
    c.args(["stop", "hup"]);
    assert_eq!(run(c).status.code(), Some(0));
    assert!(!alive(pid));
}

#[test]
fn logs_follow_a_detached_run_to_its_end() {
    let state = tempdir();
    let mut c = guard(state.path());
    c.args(["run", "--detach", "--no-preflight", "--run-id", "tail"])
        .args(["--usd-per-hour", "1", "--max-wall", "1h", "--"])
        .args([
            "sh",
            "-c",
            "for i in 1 2 3 4; do echo line $i; sleep 0.3; done",
        ]);
    assert_eq!(run(c).status.code(), Some(0));
    let start = std::time::Instant::now();
    let mut c = guard(state.path());
    c.args(["logs", "tail", "-f"]);
    let out = run(c);
    let text = out_text(&out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        text.contains("line 1\n") && text.contains("line 4\n"),
        "{text}"
    );
    assert!(
        text.contains("costguard: completed: exit status 0"),
        "costguard's own lines land in the same log: {text}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "-f ends with the run"
    );
    assert_eq!(ledger(state.path(), "tail")["state"], "completed");
}
