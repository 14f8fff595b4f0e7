//! A plan's check-in in plain words, from its ledger: how many phases completed and were
//! killed (each kill named), what runs now with its step, the next event. `costguard status`
//! prints it, `status --json` and `/status` carry it. Every number is one the ledger holds:
//! no "of X" without a ceiling X.

use serde::Serialize;

use crate::ledger::{Ledger, Outcome};
use crate::units::format_secs;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Checkin {
    /// "3 of 7 completed, 2 killed (BiGRU wall at 2m07s, GcnLite wall at 2m01s)".
    pub phases: String,
    /// "SqueezeformerSmall (seed 2 of 3), phase 6 of 7" while a phase runs.
    pub running: Option<String>,
    /// "6.2s; this phase 1.1s of its 2s wall cap".
    pub elapsed: String,
    /// "a ping when SqueezeformerSmall ends (at the latest: the wall ceiling in 0.9s)".
    pub next: Option<String>,
}

/// A kill's time as a person reads it, rounded down: "0.8s", "4s", "2m07s".
pub fn whole(secs: f64) -> String {
    let s = if secs.is_finite() { secs.max(0.0) } else { 0.0 };
    match s as u64 {
        0 => format!("{:.1}s", (s * 10.0).floor() / 10.0),
        n @ 1..60 => format!("{n}s"),
        n => format_secs(n as f64),
    }
}

/// The check-in of a plan's ledger (None for a single command). `step` is the step running
/// when it is fresher than the ledger's.
pub fn of(l: &Ledger, running: bool, step: Option<&str>) -> Option<Checkin> {
    let total = l.phases_total?;
    let count = |o: Outcome| l.phases.iter().filter(|p| p.outcome == o).count();
    let kills: Vec<String> = l
        .phases
        .iter()
        .filter(|p| p.outcome == Outcome::Killed)
        .map(|p| {
            let why = p.reason.as_deref().unwrap_or("killed");
            format!("{} {why} at {}", p.name, whole(p.elapsed_seconds))
        })
        .collect();
    let mut phases = format!("{} of {total} completed", count(Outcome::Completed));
    phases += &match kills.len() {
        0 => ", none killed".to_string(),
        n => format!(", {n} killed ({})", kills.join(", ")),
    };
    for o in [Outcome::Failed, Outcome::Stopped] {
        if count(o) > 0 {
            phases += &format!(", {} {o}", count(o));
        }
    }
    let current = l
        .phase
        .as_deref()
        .filter(|_| running && l.phases.len() < total)
        .filter(|name| !l.phases.iter().any(|p| p.name == *name));
    let step = step.or(l.step.as_deref());
    let running_text = current.map(|name| {
        let index = l.phase_index.map_or(0, |i| i + 1);
        match step {
            Some(s) => format!("{name} ({s}), phase {index} of {total}"),
            None => format!("{name}, phase {index} of {total}"),
        }
    });
    Some(Checkin {
        phases,
        running: running_text,
        elapsed: elapsed_text(l, current.is_some()),
        next: current.map(|name| next_text(l, name, total)),
    })
}

fn elapsed_text(l: &Ledger, in_phase: bool) -> String {
    let mut e = format_secs(l.elapsed_seconds);
    if let Some(w) = l.run_max_wall_seconds {
        e += &format!(" of the run's {} wall cap", format_secs(w));
    }
    if let (true, Some(t)) = (in_phase, l.phase_elapsed_seconds) {
        e += &format!("; this phase {}", format_secs(t));
        if let Some(w) = l.phase_max_wall_seconds {
            e += &format!(" of its {} wall cap", format_secs(w));
        }
    }
    e
}

/// The next event: the running phase's end, pinged or not, and the latest it comes.
fn next_text(l: &Ledger, name: &str, total: usize) -> String {
    let last = l.phase_index.is_some_and(|i| i + 1 == total);
    let mut n = match (l.pings_phase_ends, last) {
        (true, false) => format!("a ping when {name} ends"),
        (true, true) => format!("a ping when {name} ends, then the plan's summary"),
        (false, _) => format!("{name} ends (no notification channel takes phase ends)"),
    };
    if let Some(w) = l
        .waiting_on
        .as_deref()
        .filter(|w| w.starts_with("the ") && !w.starts_with("the job"))
    {
        n += &format!(" (at the latest: {w})");
    }
    n
}
