//! The budget is never bypassed: signals meant for the job's step, two starts of one run id,
//! a spent run started again, a kill decided in the first milliseconds, closed pipes, floods
//! of output, and a state directory that is not to be trusted.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Every descendant of `pid` (children first found through /proc's parent links).
fn descendants(pid: i32) -> Vec<i32> {
    let mut all: Vec<(i32, i32)> = Vec::new();
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|x| x.parse().ok()) {
            all.push((p, ppid));
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(all.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    out.remove(0);
    out
}

fn lines(p: &Path, word: &str) -> usize {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == word)
        .count()
}

#[test]
fn signals_for_the_job_are_forwarded_and_a_slurm_step_signal_takes_nothing_down() {
    let dir = tempdir();
    let state = dir.path().join("state");
    let got = dir.path().join("got");
    let script = format!(
        "trap 'echo usr1 >> {g}' USR1; trap 'echo usr2 >> {g}' USR2; trap 'echo quit >> {g}' QUIT; \
         echo $$ > {d}/leader; while :; do sleep 0.05; done",
        g = got.display(),
        d = dir.path().display()
    );
    let child = costguard()
        .env("COSTGUARD_STATE_DIR", &state)
        .args(["--max-wall", "6s", "--kill-grace", "1s", "--run-id", "sig"])
        .args(["--", "sh", "-c", &script])
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("costguard");
    let cg = child.id() as i32;
    let leader = read_pid(&dir.path().join("leader"));
    // To costguard alone (`scancel --signal=USR1` of the batch shell's child, a user's kill):
    // each is passed on to the job, and costguard lives on.
    for (sig, word) in [
        (Signal::SIGUSR1, "usr1"),
        (Signal::SIGUSR2, "usr2"),
        (Signal::SIGQUIT, "quit"),
    ] {
        kill(Pid::from_raw(cg), sig).expect("signal costguard");
        assert!(
            wait_until(Duration::from_secs(3), || lines(&got, word) >= 1),
            "{word} reached the job"
        );
        assert!(alive(cg), "costguard survives {sig:?}");
    }
    // To every process of the step, as Slurm's `--signal=USR1@…` does: costguard, the
    // holder and the job each get it; nothing but the job's handler runs.
    let step: Vec<i32> = std::iter::once(cg).chain(descendants(cg)).collect();
    assert!(step.len() >= 3, "costguard, holder, job: {step:?}");
    for p in &step {
        let _ = kill(Pid::from_raw(*p), Signal::SIGUSR1);
    }
    assert!(wait_until(Duration::from_secs(3), || lines(&got, "usr1") >= 2));
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(cg), "costguard survives a step-wide USR1");
    assert!(alive(leader), "the job's handler ran; the job goes on");
    let holder_alive = step[1..].iter().any(|p| *p != leader && alive(*p));
    assert!(holder_alive, "the holder survives a step-wide USR1");
    let out = child.wait_with_output().expect("wait");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(124), "{err}");
    assert!(err.contains("killed (wall)"), "{err}");
    assert!(!alive(leader), "the job ended with the run");
    assert_eq!(ledger(&state, "sig")["state"], "killed");
    assert!(state.join("runs/sig/report.md").exists());
}

#[test]
fn two_costguards_with_one_run_id_never_both_run() {
    let dir = tempdir();
    let state = dir.path().join("state");
    for trial in 0..10 {
        let id = format!("race-{trial}");
        let started = dir.path().join(format!("started-{trial}"));
        let job = format!("echo $$ >> {}; sleep 0.3", started.display());
        let start = || {
            costguard()
                .env("COSTGUARD_STATE_DIR", &state)
                .args(["--run-id", &id, "--", "sh", "-c", &job])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("costguard")
        };
        let (a, b) = (start(), start());
        let (a, b) = (
            a.wait_with_output().expect("a"),
            b.wait_with_output().expect("b"),
        );
        let mut codes = [a.status.code(), b.status.code()];
        codes.sort();
        let both = format!("{}\n---\n{}", stderr(&a), stderr(&b));
        assert_eq!(codes, [Some(0), Some(125)], "trial {trial}: {both}");
        assert!(
            both.contains(&format!("run {id} is already running")),
            "{both}"
        );
        let n = std::fs::read_to_string(&started).unwrap_or_default();
        assert_eq!(n.lines().count(), 1, "trial {trial}: one job ran: {n:?}");
        let events = std::fs::read_to_string(state.join("runs").join(&id).join("events.jsonl"))
            .unwrap_or_default();
        let ids: Vec<String> = events
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|e| e["id"].as_str().unwrap_or_default().to_string())
            .collect();
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "no duplicated event ids: {ids:?}");
    }
}

#[test]
fn a_spent_run_starts_nothing_and_says_why() {
    let dir = tempdir();
    let state = dir.path().join("state");
    let marker = dir.path().join("ran");
    let job = format!("touch {}; sleep 30", marker.display());
    let go = || {
        let mut c = costguard();
        c.env("COSTGUARD_STATE_DIR", &state)
            .args(["--run-id", "spent", "--usd-per-hour", "3600"])
            .args(["--max-usd", "0.5", "--kill-grace", "1s"])
            .args(["--", "sh", "-c", &job]);
        c
    };
    let out = run(go());
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    assert!(marker.exists());
    std::fs::remove_file(&marker).expect("rm");
    let before = ledger(&state, "spent");
    for _ in 0..5 {
        let t = Instant::now();
        let out = run(go());
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(124), "{err}");
        assert!(err.contains("budget already spent: $0.5"), "{err}");
        assert!(err.contains("nothing started"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert!(!marker.exists(), "the job did not start");
    }
    let after = ledger(&state, "spent");
    assert_eq!(
        before["spend_dollars"], after["spend_dollars"],
        "no spend added"
    );
    assert_eq!(before["sessions"], after["sessions"], "no session recorded");
}

#[test]
fn a_kill_in_the_first_milliseconds_never_loses_its_first_signal() {
    // A budget that ends about 1 ms in, a job that exits on TERM: the TERM must reach it, so
    // the run never waits out the 10 s grace.
    for trial in 0..10 {
        let t = Instant::now();
        let out = run({
            let mut c = costguard();
            c.args(["--usd-per-hour", "3600000", "--max-usd", "0.001"])
                .args(["--kill-grace", "10s", "--", "sh", "-c"])
                .arg("trap 'exit 0' TERM; while :; do sleep 0.01; done");
            c
        });
        let took = t.elapsed();
        assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
        assert!(
            took < Duration::from_secs(5),
            "trial {trial}: the first signal was lost, the grace ran out ({took:?}): {}",
            stderr(&out)
        );
    }
}

#[test]
fn closed_stdout_or_stderr_never_crashes_a_run_or_a_command() {
    let dir = tempdir();
    let state = dir.path().join("state");
    let (r, w) = nix::unistd::pipe().expect("pipe");
    drop(r); // the reader is gone: every write to `w` is EPIPE
    let out = costguard()
        .env("COSTGUARD_STATE_DIR", &state)
        .args(["--max-wall", "1s", "--run-id", "closed", "--stall", "1m"])
        .args(["--", "sh", "-c", "while :; do echo flood; sleep 0.01; done"])
        .stdout(Stdio::from(w.try_clone().expect("dup")))
        .stderr(Stdio::from(w))
        .output()
        .expect("costguard");
    assert_eq!(out.status.code(), Some(124), "no panic (101)");
    assert_eq!(ledger(&state, "closed")["state"], "killed");
    assert!(state.join("runs/closed/report.md").exists());
    for args in [
        vec!["list"],
        vec!["status", "closed"],
        vec!["report", "closed"],
        vec!["logs", "closed"],
    ] {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        drop(r);
        let out = costguard()
            .env("COSTGUARD_STATE_DIR", &state)
            .args(&args)
            .stdout(Stdio::from(w))
            .output()
            .expect("costguard");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    }
    let out = costguard()
        .env("COSTGUARD_STATE_DIR", &state)
        .args(["stop", ""])
        .output()
        .expect("stop");
    assert_eq!(out.status.code(), Some(125), "stop '' is an error");
}

#[test]
fn a_flood_of_output_is_capped_on_disk() {
    let dir = tempdir();
    let state = dir.path().join("state");
    let out = costguard()
        .env("COSTGUARD_STATE_DIR", &state)
        .args(["--run-id", "flood", "--max-wall", "2s", "--stall", "1m"])
        .args(["--output-log-max", "64KiB", "--", "yes", "a line of output"])
        .stdout(Stdio::null())
        .output()
        .expect("costguard");
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    let size = |f: &str| {
        std::fs::metadata(state.join("runs/flood").join(f))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    assert!(size("output.log") <= 64 << 10, "{}", size("output.log"));
    assert!(size("output.log.1") <= 64 << 10, "{}", size("output.log.1"));
    assert!(size("output.log.1") > 0, "it rotated");
    let report = std::fs::read_to_string(state.join("runs/flood/report.md")).expect("report");
    assert!(
        report.contains("a line of output"),
        "the last lines are kept"
    );
}

/// Runs `script` as root in a private mount namespace (so a tmpfs mounted there vanishes
/// with it); `$CG` is the costguard binary. Fails, not skips, where that cannot be done:
/// CI runs as root.
fn in_mount_namespace(script: &str) -> std::process::Output {
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .env("CG", bin())
        .env("COSTGUARD_PROVIDER", "none")
        .env_remove("COSTGUARD_STATE_DIR")
        .env("COSTGUARD_GPU", "none")
        .env("COSTGUARD_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .output()
        .expect("unshare (util-linux) must be installed; these tests run as root, as CI does");
    assert!(
        !stderr(&out).contains("unshare failed"),
        "mount namespaces need root: {}",
        stderr(&out)
    );
    out
}

#[test]
#[ignore = "root (a tmpfs mounted in a mount namespace): scripts/test runs it"]
fn a_full_state_directory_refuses_to_start_and_a_filling_one_raises_the_alarm() {
    let dir = tempdir();
    let mnt = dir.path().join("mnt");
    let copy = dir.path().join("copy");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    std::fs::create_dir_all(&copy).expect("mkdir");
    let marker = dir.path().join("ran");
    // Full before the start: the run cannot be recorded, so it does not start.
    let out = in_mount_namespace(&format!(
        "mount -t tmpfs -o size=16k none {m} || exit 99; \
         dd if=/dev/zero of={m}/fill bs=1k count=64 2>/dev/null; \
         COSTGUARD_STATE_DIR={m}/state $CG --run-id full -- touch {k}",
        m = mnt.display(),
        k = marker.display()
    ));
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(99), "tmpfs mount failed: {err}");
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("cannot write the run directory"), "{err}");
    assert!(!marker.exists(), "nothing ran unrecorded");
    // Filling while it runs (the job's output fills the disk): the alarm at once, and no
    // report claimed that was not written.
    let out = in_mount_namespace(&format!(
        "mount -t tmpfs -o size=64k none {m} || exit 99; \
         COSTGUARD_STATE_DIR={m}/state $CG --run-id filling --max-wall 3s --stall 1m \
           --output-log-max 1MiB -- sh -c 'yes costguard-flood' >/dev/null; rc=$?; \
         cp -r {m}/state {c}/ 2>/dev/null; exit $rc",
        m = mnt.display(),
        c = copy.display()
    ));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(124), "{err}");
    assert!(
        err.contains("agent-error (record): the run record is not being written"),
        "{err}"
    );
    assert!(!err.contains("report: "), "no report claimed: {err}");
}

#[test]
fn the_state_directory_is_read_defensively() {
    let dir = tempdir();
    let state = dir.path().join("state");
    let outbox = state.join("outbox");
    std::fs::create_dir_all(&outbox).expect("outbox");
    nix::unistd::mkfifo(&outbox.join("x.json"), nix::sys::stat::Mode::S_IRWXU).expect("fifo");
    std::os::unix::fs::symlink("/dev/zero", outbox.join("zero.json")).expect("symlink");
    let fifo_run = state.join("runs/fifo");
    std::fs::create_dir_all(&fifo_run).expect("run dir");
    nix::unistd::mkfifo(&fifo_run.join("ledger.json"), nix::sys::stat::Mode::S_IRWXU)
        .expect("fifo");
    let neg = state.join("runs/negative");
    std::fs::create_dir_all(&neg).expect("run dir");
    std::fs::write(
        neg.join("ledger.json"),
        r#"{"run_id":"negative","state":"killed","command":"x","host":"h","started_at":"",
            "updated_at":"","sessions":1,"costguard":null,"holder":null,"pgid":null,"cgroup":null,
            "spend_dollars":-100.0,"wasted_dollars":0,"elapsed_seconds":1,"rate_dollars_per_hour":null,
            "budget_dollars":null,"max_wall_seconds":null,"priced":true,"kills":[],"warnings":0,
            "errors":0,"events":0,"waiting_on":null,"last_progress":null,"progress_total":null,
            "last_step":null,"eta_seconds":null,"projected_spend_dollars":null,
            "longest_idle_seconds":0,"exit_code":null,"outcome_detail":null,"phases_total":null,
            "phase_index":null,"phase":null,"phases":[],"no_preflight":false,"report_path":null,
            "watchdogs":[],"on_exit":null}"#,
    )
    .expect("ledger");
    let quick = |args: &[&str]| {
        let t = Instant::now();
        let out = costguard()
            .env("COSTGUARD_STATE_DIR", &state)
            .args(args)
            .output()
            .expect("costguard");
        assert!(t.elapsed() < Duration::from_secs(10), "{args:?} hung");
        out
    };
    // Startup with a FIFO and a /dev/zero link in the outbox: neither hangs nor fills memory.
    let out = quick(&["--", "true"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a regular file"),
        "{}",
        stderr(&out)
    );
    // list and status with a FIFO for a ledger: listed as corrupted, not hidden, no hang.
    let out = quick(&["list"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.lines()
            .any(|l| l.starts_with("fifo") && l.contains("corrupted")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("negative") && l.contains("corrupted")),
        "{text}"
    );
    let out = quick(&["status", "fifo"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("corrupted")
            || stderr(&out).contains("corrupted"),
        "{}",
        stderr(&out)
    );
    // A negative spend is never a credit: resuming it is refused with the reason.
    let out = quick(&[
        "--run-id",
        "negative",
        "--max-usd",
        "1",
        "--usd-per-hour",
        "1",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("corrupted (spend_dollars is -100)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn leftovers_are_charged_by_their_own_age_not_a_wall_clock_jump() {
    let dir = tempdir();
    let state = dir.path().join("state");
    let run_dir = state.join("runs/jump");
    std::fs::create_dir_all(&run_dir).expect("run dir");
    // A crashed session's job, still running: started just now.
    let mut leftover = Command::new("sleep")
        .arg("300")
        .process_group(0)
        .spawn()
        .expect("sleep");
    let pid = leftover.id() as i32;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let start_ticks: u64 = stat
        .rsplit_once(')')
        .and_then(|(_, r)| r.split_whitespace().nth(19)?.parse().ok())
        .expect("start time");
    // Its ledger was last written "an hour ago" (as after a wall-clock jump of +1 h).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs_f64();
    let l = serde_json::json!({
        "run_id": "jump", "state": "running", "command": "sleep 300", "host": "h",
        "started_at": "", "updated_at": "", "updated_unix": now - 3600.0, "sessions": 1,
        "costguard": {"pid": i32::MAX - 7, "start_ticks": 1}, "holder": {"pid": pid, "start_ticks": start_ticks},
        "pgid": null, "cgroup": null, "members": [], "spend_dollars": 1.0, "wasted_dollars": 0.0,
        "elapsed_seconds": 1.0, "rate_dollars_per_hour": 3600.0, "budget_dollars": 100.0,
        "max_wall_seconds": null, "priced": true, "kills": [], "warnings": 0, "errors": 0,
        "events": 0, "waiting_on": null, "last_progress": null, "progress_total": null,
        "last_step": null, "eta_seconds": null, "projected_spend_dollars": null,
        "longest_idle_seconds": 0.0, "exit_code": null, "outcome_detail": null,
        "phases_total": null, "phase_index": null, "phase": null, "phases": [],
        "no_preflight": false, "report_path": null, "watchdogs": [], "on_exit": null
    });
    std::fs::write(run_dir.join("ledger.json"), l.to_string()).expect("ledger");
    let out = run({
        let mut c = costguard();
        c.env("COSTGUARD_STATE_DIR", &state)
            .args([
                "--run-id",
                "jump",
                "--usd-per-hour",
                "3600",
                "--max-usd",
                "100",
            ])
            .args(["--", "true"]);
        c
    });
    let err = stderr(&out);
    let gone = wait_until(Duration::from_secs(3), || {
        leftover.try_wait().ok().flatten().is_some()
    });
    let _ = leftover.kill();
    let _ = leftover.wait();
    assert!(gone, "the leftover was killed: {err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
    let spend = ledger(&state, "jump")["spend_dollars"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(
        spend < 1.0 + 30.0,
        "charged by the leftover's age (seconds), not the jump (an hour = $3600): ${spend}: {err}"
    );
    assert!(spend > 1.0, "the time it ran is charged: ${spend}");
}
