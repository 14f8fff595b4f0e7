//! The guard end to end with real processes and signals: kill protocol, exit codes,
//! forwarding, the dollar deadline, bad input.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn ceiling_kill_takes_the_whole_tree() {
    let dir = tempdir();
    let mut c = costguard();
    c.args([
        "--max-wall",
        "1s",
        "--kill-grace",
        "500ms",
        "--",
        "sh",
        "-c",
        &escaping_job(dir.path()),
    ]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    for pid in job_pids(dir.path()) {
        assert!(!alive(pid), "pid {pid} survived the kill");
    }
    let err = stderr(&out);
    assert!(err.contains("killed: wall: ran 1."), "{err}");
}

#[test]
fn sigkill_of_costguard_leaves_no_survivor() {
    let dir = tempdir();
    let mut c = costguard();
    c.args(["--", "sh", "-c", &escaping_job(dir.path())])
        .stderr(Stdio::null());
    let child = c.spawn().expect("spawn");
    let pids = job_pids(dir.path());
    let guard = child.id() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(guard),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    let start = Instant::now();
    let gone = wait_until(Duration::from_secs(2), || pids.iter().all(|p| !alive(*p)));
    let took = start.elapsed();
    end(child);
    assert!(
        gone,
        "survivors after costguard was SIGKILLed: {:?}",
        pids.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
    );
    eprintln!("tree gone {took:?} after SIGKILL of costguard");
}

#[test]
fn exit_codes_follow_timeout() {
    let dir = tempdir();
    let not_exec = dir.path().join("not-executable");
    std::fs::write(&not_exec, "#!/bin/sh\n").expect("write");
    std::fs::set_permissions(&not_exec, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let cases: Vec<(Vec<String>, i32)> = vec![
        (vec!["--".into(), "true".into()], 0),
        (
            vec!["--".into(), "sh".into(), "-c".into(), "exit 3".into()],
            3,
        ),
        (
            vec!["--".into(), "sh".into(), "-c".into(), "kill -9 $$".into()],
            137,
        ),
        (
            vec!["--".into(), "sh".into(), "-c".into(), "kill -15 $$".into()],
            143,
        ),
        (vec!["--".into(), "no-such-command-here".into()], 127),
        (vec!["--".into(), path_str(&not_exec)], 126),
        (
            vec![
                "--max-wall".into(),
                "300ms".into(),
                "--".into(),
                "sleep".into(),
                "30".into(),
            ],
            124,
        ),
        (
            vec![
                "--max-wall".into(),
                "10x".into(),
                "--".into(),
                "true".into(),
            ],
            125,
        ),
        (vec!["--bogus-flag".into(), "--".into(), "true".into()], 125),
        (vec!["--".into()], 125),
        (vec![], 125),
    ];
    for (args, want) in cases {
        let mut c = costguard();
        c.args(&args);
        let out = run(c);
        assert_eq!(
            out.status.code(),
            Some(want),
            "costguard {args:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn job_output_passes_through_untouched() {
    let mut c = costguard();
    c.args([
        "-q",
        "--",
        "sh",
        "-c",
        "printf 'out\\n'; printf 'err\\n' >&2",
    ]);
    let out = run(c);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(stderr(&out).starts_with("err\n"), "{}", stderr(&out));
    // With a progress regex the output flows through costguard, still byte for byte.
    let mut c = costguard();
    c.args([
        "-q",
        "--stall",
        "1h",
        "--progress-regex",
        r"step (\d+)",
        "--",
        "sh",
        "-c",
        "printf 'step 1\\r\\nstep 2\\nno newline'",
    ]);
    let out = run(c);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "step 1\r\nstep 2\nno newline"
    );
}

#[test]
fn term_is_forwarded_and_status_passed_on() {
    let dir = tempdir();
    let mark = dir.path().join("got");
    let mut c = costguard();
    let script = format!(
        "trap 'echo TERM > {}; exit 7' TERM; echo $$ > {}/leader; while :; do sleep 0.05; done",
        mark.display(),
        dir.path().display()
    );
    c.args(["--", "sh", "-c", &script]).stderr(Stdio::piped());
    let child = c.spawn().expect("spawn");
    read_pid(&dir.path().join("leader"));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("term");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(&mark).unwrap_or_default().trim(),
        "TERM"
    );
    assert!(
        stderr(&out).contains("received SIGTERM"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn second_interrupt_kills_now() {
    let dir = tempdir();
    let mut c = costguard();
    let script = format!(
        "trap '' INT TERM; echo $$ > {}/leader; while :; do sleep 0.05; done",
        dir.path().display()
    );
    c.args(["--kill-grace", "60s", "--", "sh", "-c", &script])
        .stderr(Stdio::null());
    let child = c.spawn().expect("spawn");
    let leader = read_pid(&dir.path().join("leader"));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("int");
    // The job ignores INT: it is still there during the 60 s grace.
    std::thread::sleep(Duration::from_millis(200));
    assert!(alive(leader));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("int");
    let mut child = child;
    let mut status = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        }),
        "costguard still waiting out the grace after a second Ctrl-C"
    );
    assert!(!alive(leader));
    assert_eq!(status.and_then(|s| s.code()), Some(137));
}

#[test]
fn dollar_deadline_fires_at_the_computed_instant() {
    // $3600/h is a dollar a second: $0.50 lasts half a second.
    let mut c = costguard();
    c.args([
        "--usd-per-hour",
        "3600",
        "--max-usd",
        "0.50",
        "--",
        "sleep",
        "30",
    ]);
    let start = Instant::now();
    let out = run(c);
    let took = start.elapsed();
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    let err = stderr(&out);
    // A loaded machine may fire a few milliseconds (a few cents at this rate) late.
    assert!(err.contains("killed: usd: spent $0.5"), "{err}");
    let fired: f64 = err
        .split("at $3600.00/h after ")
        .nth(1)
        .and_then(|r| r.split('s').next())
        .and_then(|v| v.parse().ok())
        .expect("the kill evidence names when it fired");
    assert!(
        (0.5..1.5).contains(&fired),
        "the $0.50 deadline fired at {fired}s: {err}"
    );
    assert!(
        took < Duration::from_secs(10),
        "the sleep ran to its end: {took:?}"
    );
}

#[test]
fn warning_signal_before_the_ceiling() {
    let dir = tempdir();
    let mark = dir.path().join("warned");
    let script = format!(
        "trap 'echo USR1 >> {}' USR1; while :; do sleep 0.05; done",
        mark.display()
    );
    let mut c = costguard();
    c.args([
        "--max-wall",
        "1500ms",
        "--warn-signal",
        "USR1",
        "--warn-before",
        "1s",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(&mark).unwrap_or_default().trim(),
        "USR1"
    );
    assert!(
        stderr(&out).contains("warning (checkpoint)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_input_is_one_clear_line_and_125() {
    let dir = tempdir();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "max-wall = \"1h\"\nmax_usd_typo = 3\n").expect("write");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--max-usd".into(),
                "-5".into(),
                "--usd-per-hour".into(),
                "1".into(),
            ],
            "\"-5\"",
        ),
        (
            vec![
                "--max-usd".into(),
                "lots".into(),
                "--usd-per-hour".into(),
                "1".into(),
            ],
            "\"lots\"",
        ),
        (vec!["--max-wall".into(), "10x".into()], "\"10x\""),
        (
            vec![
                "--max-wall".into(),
                "1m".into(),
                "--warn-signal".into(),
                "USR1".into(),
                "--warn-before".into(),
                "2m".into(),
            ],
            "--warn-before 2m00s",
        ),
        (
            vec![
                "--max-usd".into(),
                "1".into(),
                "--usd-per-hour".into(),
                "60".into(),
                "--warn-signal".into(),
                "USR1".into(),
                "--warn-before".into(),
                "2m".into(),
            ],
            "--warn-before 2m00s",
        ),
        (
            vec![
                "--warn-signal".into(),
                "NOPE".into(),
                "--warn-before".into(),
                "1s".into(),
                "--max-wall".into(),
                "1h".into(),
            ],
            "\"NOPE\"",
        ),
        (vec!["--config".into(), path_str(&cfg)], "max_usd_typo"),
        (vec!["--kill-grace".into(), "soon".into()], "\"soon\""),
        (vec!["--max-usd".into(), "5".into()], "--usd-per-hour"),
    ];
    for (mut args, needle) in cases {
        args.extend(["--".into(), "true".into()]);
        let mut c = costguard();
        c.args(&args);
        let out = run(c);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: {err:?} does not name {needle:?}"
        );
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: not one line: {err}"
        );
    }
}

#[test]
fn config_file_env_and_flags_layer() {
    let dir = tempdir();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "max-wall = \"200ms\"\nusd-per-hour = 7200\n").expect("write");
    // The file alone: a 200 ms wall.
    let mut c = costguard();
    c.args(["--config", &path_str(&cfg), "--", "sleep", "30"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(124));
    assert!(
        stderr(&out).contains("of --max-wall 0.200s"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("$7200.00/h from --usd-per-hour"),
        "{}",
        stderr(&out)
    );
    // Env over file.
    let mut c = costguard();
    c.env("COSTGUARD_CONFIG", &cfg)
        .env("COSTGUARD_MAX_WALL", "300ms")
        .args(["--", "sleep", "30"]);
    let out = run(c);
    assert!(
        stderr(&out).contains("of --max-wall 0.300s"),
        "{}",
        stderr(&out)
    );
    // Flag over env.
    let mut c = costguard();
    c.env("COSTGUARD_CONFIG", &cfg)
        .env("COSTGUARD_MAX_WALL", "300ms")
        .args(["--max-wall", "400ms", "--", "sleep", "30"]);
    let out = run(c);
    assert!(
        stderr(&out).contains("of --max-wall 0.400s"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn leftover_processes_of_a_finished_job_are_ended() {
    let dir = tempdir();
    let mut c = costguard();
    let script = format!(
        "setsid sh -c 'echo $$ > {}/daemon; exec sleep 300' & sleep 0.2; exit 0",
        dir.path().display()
    );
    c.args(["--kill-grace", "1s", "--", "sh", "-c", &script]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let daemon = read_pid(&dir.path().join("daemon"));
    assert!(
        !alive(daemon),
        "the leader exited, but its daemon outlived costguard"
    );
}

#[test]
fn help_shows_the_examples() {
    let out = std::process::Command::new(bin())
        .arg("--help")
        .output()
        .expect("help");
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "costguard --max-usd 40 --usd-per-hour 24.5 -- python train.py",
        "costguard --max-wall 6h --kill-grace 30s -- ./train.sh",
        "COSTGUARD_USD_PER_HOUR=2.49 costguard --max-usd 5 --warn-signal USR1 --warn-before 2m -- make bench",
        "--kill-grace",
        "124 when a ceiling killed it",
    ] {
        assert!(text.contains(needle), "--help lacks {needle:?}");
    }
}
