//! Keeping the state directory: `list` (with `--json`, `--state`, `--since`), `wait` for a
//! run to end, and `clean` of ended runs. They read the run directories; `clean` removes a
//! run only while holding its lock, never a live one and never one with notifications still
//! in the outbox.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use crate::exit::OWN_FAILURE;
use crate::ledger::find;
use crate::ledger::{self, Ledger};
use crate::units::{format_money, format_secs};

/// The words `list --state` takes: what `list` and `status` show.
pub const STATES: [&str; 9] = [
    "running",
    "starting",
    "completed",
    "failed",
    "killed",
    "stopped",
    "crashed",
    "preempted",
    "corrupted",
];

fn err(msg: impl std::fmt::Display) -> ExitCode {
    crate::console::error(crate::redact::text(&msg.to_string()));
    ExitCode::from(OWN_FAILURE)
}

/// `--state a,b`: the states asked for, each one checked.
fn parse_states(v: &str) -> Result<Vec<String>, String> {
    v.split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .map(|s| {
            if STATES.contains(&s.as_str()) {
                Ok(s)
            } else {
                Err(format!(
                    "invalid --state value {s:?}: expected one of {}",
                    STATES.join(", ")
                ))
            }
        })
        .collect()
}

/// A duration option: `flag`'s value parsed as every duration is.
fn parse_age(flag: &str, v: &str) -> Result<Duration, String> {
    crate::units::parse_duration(v).map_err(|e| format!("invalid {flag} {v:?}: {e}"))
}

/// `costguard list`: every run, or those in `--state` started within `--since`; a table, or
/// one JSON object per line with `--json`.
pub fn list(state: &Path, a: &crate::cli::ListArgs) -> ExitCode {
    let states = match a.state.as_deref().map(parse_states).transpose() {
        Ok(s) => s,
        Err(e) => return err(e),
    };
    let since = match a
        .since
        .as_deref()
        .map(|v| parse_age("--since", v))
        .transpose()
    {
        Ok(d) => d,
        Err(e) => return err(e),
    };
    // RFC 3339 stamps of one format order as the times do.
    let cutoff = since.map(|d| {
        crate::events::rfc3339(
            SystemTime::now()
                .checked_sub(d)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        )
    });
    let runs: Vec<(PathBuf, Ledger, String)> = ledger::list(state)
        .into_iter()
        .map(|(dir, l)| {
            let w = l.state_word();
            (dir, l, w)
        })
        .filter(|(_, _, w)| states.as_ref().is_none_or(|s| s.contains(w)))
        .filter(|(_, l, _)| cutoff.as_ref().is_none_or(|c| l.started_at >= *c))
        .collect();
    if a.json {
        for (dir, l, w) in runs {
            let mut v = serde_json::to_value(&l).unwrap_or_default();
            v["status"] = serde_json::json!(w);
            v["run_dir"] = serde_json::json!(dir);
            if !crate::console::outln(v.to_string()) {
                break;
            }
        }
        return ExitCode::SUCCESS;
    }
    if runs.is_empty() {
        let which = if states.is_some() || since.is_some() {
            "no matching runs"
        } else {
            "no runs"
        };
        crate::console::outln(format!("{which} in {}", state.display()));
        return ExitCode::SUCCESS;
    }
    print_table(&runs);
    ExitCode::SUCCESS
}

fn print_table(runs: &[(PathBuf, Ledger, String)]) {
    let header = format!(
        "{:<36} {:<9} {:>10} {:>11} {:<24}",
        "RUN", "STATE", "SPEND", "ELAPSED", "STARTED"
    );
    if !crate::console::outln(header) {
        return; // stdout closed (`| head`): nothing more to say
    }
    for (_, l, w) in runs {
        let spend = if l.priced {
            format_money(l.spend_dollars)
        } else {
            "unknown".into()
        };
        let line = format!(
            "{:<36} {:<9} {:>10} {:>11} {:<24}",
            l.run_id,
            w,
            spend,
            format_secs(l.elapsed_seconds),
            l.started_at
        );
        if !crate::console::outln(line) {
            break;
        }
    }
}

/// The exit status a finished run's costguard gave: its ledger's `exit_code`; 125 when
/// there is none (costguard died mid-run, or the ledger is unreadable), with the reason.
pub fn exit_of(l: &Ledger) -> (u8, String) {
    let detail = l.outcome_detail.as_deref().unwrap_or("ended");
    match l.exit_code {
        Some(c) if !l.crashed() => (c, format!("run {} {}: {detail}", l.run_id, l.state_word())),
        _ => (
            OWN_FAILURE,
            format!(
                "run {} is {}: {}",
                l.run_id,
                l.state_word(),
                l.outcome_detail
                    .as_deref()
                    .filter(|_| l.state == ledger::RecordState::Corrupted)
                    .unwrap_or("costguard died mid-run, so it has no exit status (resume it with --run-id)")
            ),
        ),
    }
}

/// Waits until the run in `dir` is no longer live; a run reserved by `run --detach` but not
/// yet on record gets 20 s to appear. The ledger it ended with.
pub fn await_end(dir: &Path, id: &str) -> Ledger {
    let started = std::time::Instant::now();
    loop {
        match Ledger::load(dir) {
            Ok(Some(l)) if !l.live() => return l,
            Ok(Some(_)) => {}
            Ok(None) if started.elapsed() < Duration::from_secs(20) => {}
            Ok(None) => {
                return Ledger::corrupted(id, "no ledger.json: its costguard never started".into())
            }
            Err(e) => return Ledger::corrupted(id, e.to_string()),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `costguard wait [RUN]`: blocks until the run ends (without RUN: every live run, as
/// `pueue wait` does), says how each ended, and exits with the run's exit status (without
/// RUN: the first non-zero one).
pub fn wait(state: &Path, id: Option<&str>) -> ExitCode {
    let runs: Vec<(PathBuf, String)> = match id {
        Some(_) => match find(state, id) {
            Ok((dir, l)) => vec![(dir, l.run_id)],
            Err(e) => return err(e),
        },
        None => {
            let all = ledger::list(state);
            let live: Vec<(PathBuf, String)> = all
                .iter()
                .filter(|(_, l)| l.live())
                .map(|(d, l)| (d.clone(), l.run_id.clone()))
                .collect();
            match (live.is_empty(), all.into_iter().next()) {
                (false, _) => live,
                (true, Some((dir, l))) => vec![(dir, l.run_id)],
                (true, None) => return err(format!("no runs in {}", state.display())),
            }
        }
    };
    let mut code = 0;
    for (dir, run_id) in runs {
        let (c, line) = exit_of(&await_end(&dir, &run_id));
        crate::console::alert(format!("{line} (exit {c})"));
        if code == 0 {
            code = c;
        }
    }
    ExitCode::from(code)
}

/// Whether `<state-dir>/outbox/` still holds a delivery of run `id`. Deliveries are named
/// `<run-id>-<seq>.<channel>….json` (event ids), so a name is this run's when what follows
/// `<id>-` is the sequence number and a dot: `demo-2-0005.webhook.json` is run `demo-2`'s.
pub fn undelivered(state: &Path, id: &str) -> bool {
    let Ok(rd) = std::fs::read_dir(state.join("outbox")) else {
        return false;
    };
    let prefix = format!("{id}-");
    rd.flatten().any(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name.strip_prefix(&prefix).is_some_and(|rest| {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            digits > 0 && rest[digits..].starts_with('.')
        })
    })
}

/// Why a run is kept by `clean`, or None when it may go.
fn keep_reason(state: &Path, l: &Ledger, older_than: Option<Duration>) -> Option<String> {
    match l.state {
        ledger::RecordState::Running if l.live() => return Some("running".into()),
        ledger::RecordState::Running => {
            return Some("crashed: resume it with --run-id to end it properly".into())
        }
        ledger::RecordState::Starting | ledger::RecordState::Corrupted => {
            return Some(format!("{}: look at it first", l.state))
        }
        _ => {}
    }
    if undelivered(state, &l.run_id) {
        return Some("its notifications are not delivered yet (outbox/)".into());
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let age = (now - l.updated_unix).max(0.0);
    match older_than {
        Some(d) if age < d.as_secs_f64() => Some(format!("ended {} ago", format_secs(age))),
        _ => None,
    }
}

/// Removes one run directory while holding its lock (a costguard resuming it at the same
/// moment holds the lock first, and then the run is kept).
fn remove_locked(dir: &Path) -> Result<(), String> {
    use nix::fcntl::{Flock, FlockArg};
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .map_err(|e| e.to_string())?;
    let _lock = Flock::lock(f, FlockArg::LockExclusiveNonblock)
        .map_err(|_| "a costguard holds its lock".to_string())?;
    std::fs::remove_dir_all(dir).map_err(|e| e.to_string())
}

/// `costguard clean [--older-than D] [--dry-run]`: removes ended runs; says what it removed
/// and what it kept and why. Exit 1 when a removal failed.
pub fn clean(state: &Path, a: &crate::cli::CleanArgs) -> ExitCode {
    let older = match a
        .older_than
        .as_deref()
        .map(|v| parse_age("--older-than", v))
    {
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => return err(e),
        None => None,
    };
    let (mut removed, mut kept, mut failed) = (0usize, 0usize, 0usize);
    for (dir, l) in ledger::list(state) {
        let id = l.run_id.clone();
        if let Some(why) = keep_reason(state, &l, older) {
            kept += 1;
            crate::console::outln(format!("kept {id} ({why})"));
            continue;
        }
        if a.dry_run {
            removed += 1;
            crate::console::outln(format!("would remove {id} ({})", l.state_word()));
            continue;
        }
        match remove_locked(&dir) {
            Ok(()) => {
                removed += 1;
                crate::console::outln(format!("removed {id} ({})", l.state_word()));
            }
            Err(e) => {
                failed += 1;
                crate::console::error(format!("could not remove {}: {e}", dir.display()));
            }
        }
    }
    let verb = if a.dry_run { "would remove" } else { "removed" };
    let runs = |n: usize| format!("{n} run{}", if n == 1 { "" } else { "s" });
    crate::console::outln(format!("{verb} {}, kept {kept}", runs(removed)));
    ExitCode::from(u8::from(failed > 0))
}
