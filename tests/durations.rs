//! Durations as users type them, end to end through the real binary: a bare number is seconds
//! (as `timeout 5`), Slurm's `--time` clock forms work, and negative or absurd values stop
//! costguard with exit 125 and a message naming the value and the flag — never a panic.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// `costguard --max-wall WALL -- sleep 30`: killed by the wall ceiling about WALL in.
fn wall_kill_after(wall: &str, want: Duration) {
    let mut c = costguard();
    c.args([
        "--max-wall",
        wall,
        "--kill-grace",
        "1s",
        "--",
        "sleep",
        "30",
    ]);
    let start = Instant::now();
    let out = run(c);
    let took = start.elapsed();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(124), "--max-wall {wall}: {err}");
    assert!(err.contains("killed: wall"), "--max-wall {wall}: {err}");
    // Never before the ceiling; the upper bound leaves room for a loaded machine, far below
    // the job's own 30 s.
    assert!(
        took >= want && took < want + Duration::from_secs(10),
        "--max-wall {wall} ended after {took:?}"
    );
}

/// `costguard ARGS -- true`: refused before the job starts; returns stderr.
fn refused(args: &[&str]) -> String {
    let dir = tempdir();
    let marker = dir.path().join("ran");
    let mut c = costguard();
    c.args(args)
        .args(["--", "sh", "-c", &format!("touch {}", path_str(&marker))]);
    let out = run(c);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{args:?}: {err}");
    assert!(!marker.exists(), "{args:?}: the job ran");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    err
}

#[test]
fn a_bare_number_is_seconds() {
    wall_kill_after("1", Duration::from_secs(1));
}

#[test]
fn a_bare_fraction_is_seconds() {
    wall_kill_after("1.5", Duration::from_millis(1500));
}

#[test]
fn slurm_hours_minutes_seconds() {
    wall_kill_after("00:00:01", Duration::from_secs(1));
}

#[test]
fn slurm_days_hours_minutes_seconds() {
    wall_kill_after("0-00:00:01", Duration::from_secs(1));
}

#[test]
fn slurm_minutes_seconds() {
    wall_kill_after("0:01", Duration::from_secs(1));
}

#[test]
fn a_wall_over_100_years_is_refused() {
    let err = refused(&["--max-wall", "9223372036854775807s"]);
    assert!(
        err.contains(
            "invalid duration \"9223372036854775807s\": that is more than 100 years (from --max-wall)"
        ),
        "{err}"
    );
}

#[test]
fn an_interval_over_100_years_is_refused() {
    let err = refused(&["--interval", "9223372036854775807s"]);
    assert!(
        err.contains(
            "invalid duration \"9223372036854775807s\": that is more than 100 years (from --interval)"
        ),
        "{err}"
    );
}

#[test]
fn a_kill_grace_over_100_years_is_refused() {
    // It used to be taken, and panicked at the kill.
    let err = refused(&["--max-wall", "1s", "--kill-grace", "9223372036854775807s"]);
    assert!(
        err.contains("that is more than 100 years (from --kill-grace)"),
        "{err}"
    );
}

#[test]
fn a_negative_kill_grace_says_so() {
    let err = refused(&["--kill-grace", "-1s"]);
    assert!(
        err.contains("invalid duration \"-1s\": must not be negative (from --kill-grace)"),
        "{err}"
    );
    // Not clap's hint to pass `-1` after `--`.
    assert!(!err.contains("-- -1"), "{err}");
}

#[test]
fn a_negative_bare_number_says_so() {
    let err = refused(&["--idle", "-5"]);
    assert!(
        err.contains("invalid duration \"-5\": must not be negative (from --idle)"),
        "{err}"
    );
}

#[test]
fn a_negative_duration_from_the_environment_says_so() {
    let mut c = costguard();
    c.env("COSTGUARD_KILL_GRACE", "-1s").args(["--", "true"]);
    let out = run(c);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("must not be negative"), "{err}");
}

#[test]
fn a_negative_kill_grace_under_run_says_so() {
    let mut c = costguard();
    c.args(["run", "--no-preflight", "--kill-grace", "-1s", "--", "true"]);
    let out = run(c);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("must not be negative (from --kill-grace)"),
        "{err}"
    );
}

#[test]
fn a_malformed_clock_lists_the_forms() {
    for bad in ["1:2:3:4", "1-", ":30", "1:60:00"] {
        let err = refused(&["--max-wall", bad]);
        assert!(
            err.contains(&format!(
                "invalid duration {bad:?}: expected MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"
            )),
            "{err}"
        );
    }
}

#[test]
fn absurd_money_and_sizes_are_refused() {
    let err = refused(&["--max-usd", "2000000000", "--usd-per-hour", "1"]);
    assert!(
        err.contains("invalid amount \"2000000000\": that is more than $1,000,000,000"),
        "{err}"
    );
    let err = refused(&["--max-host-mem", "1048577TiB"]);
    assert!(
        err.contains("invalid size \"1048577TiB\": that is more than 1 EiB"),
        "{err}"
    );
}
