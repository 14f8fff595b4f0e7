//! The run's durable record under `<state-dir>/runs/<id>/`:
//!
//! - `ledger.json` — spend, wasted, elapsed (over every session of the run), kills with their
//!   evidence and last output lines, counts, what the run waits on, and the kill targets
//!   (costguard's and the holder's pid with their start times, the process group, the cgroup
//!   leaf). Rewritten atomically (`fsutil::write_atomic`) at most once a second and at the
//!   end, by a writer task that always writes the latest snapshot.
//! - `events.jsonl` — every event, appended.
//! - `output.log` — the job's output, when costguard reads it.
//! - `report.md` — the postmortem, written at the end of every run.
//!
//! A run id used again resumes: spend and elapsed carry over, never reset. A job tree left by
//! a costguard that died without its holder noticing is killed (not adopted) before the new
//! session starts: costguard cannot become its parent again, read its output or learn its
//! exit status, so the only safe continuation is to end it and run the job anew under guard.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::events::Event;
use crate::fsutil::write_atomic;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Kill {
    pub reason: String,
    pub evidence: String,
    pub at: String,
    pub elapsed_seconds: f64,
    #[serde(default)]
    pub phase: Option<String>,
    /// The job's last lines of output before the kill.
    #[serde(default)]
    pub last_output: Vec<String>,
}

/// The record names processes as the supervisor knows them (pid and start time).
pub use crate::supervise::tree::Proc;

/// How a session, a phase or a run ended. The serialized names are the ledger's and the
/// webhooks' vocabulary and never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The job exited 0 (a plan: every phase did).
    Completed,
    /// The job exited non-zero, could not start, or its status was lost.
    Failed,
    /// A ceiling or watchdog ended it.
    Killed,
    /// A signal to costguard (Ctrl-C, `costguard stop`, the scheduler) ended it.
    Stopped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
            Outcome::Killed => "killed",
            Outcome::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A run's state in its ledger: running, or how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordState {
    /// Reserved by `run --detach`, its costguard not yet on record (never written).
    Starting,
    /// The ledger could not be read or held impossible values (never written).
    Corrupted,
    #[default]
    Running,
    Completed,
    Failed,
    Killed,
    Stopped,
}

impl RecordState {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordState::Starting => "starting",
            RecordState::Corrupted => "corrupted",
            RecordState::Running => "running",
            RecordState::Completed => "completed",
            RecordState::Failed => "failed",
            RecordState::Killed => "killed",
            RecordState::Stopped => "stopped",
        }
    }
}

impl From<Outcome> for RecordState {
    fn from(o: Outcome) -> RecordState {
        match o {
            Outcome::Completed => RecordState::Completed,
            Outcome::Failed => RecordState::Failed,
            Outcome::Killed => RecordState::Killed,
            Outcome::Stopped => RecordState::Stopped,
        }
    }
}

impl std::fmt::Display for RecordState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PhaseRecord {
    pub name: String,
    pub outcome: Outcome,
    pub elapsed_seconds: f64,
    #[serde(default)]
    pub expected_seconds: Option<f64>,
    pub spend_dollars: f64,
    #[serde(default)]
    pub reason: Option<String>,
    /// Its steps (`steps = { KEY = [VALUES] }`), in order; empty without steps.
    #[serde(default)]
    pub steps: Vec<StepRecord>,
}

/// A step of a phase: "seed 2", how it ended (completed, killed, failed, stopped, or
/// "not run" after an earlier step ended the phase) and how long it ran.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StepRecord {
    pub label: String,
    pub outcome: String,
    #[serde(default)]
    pub elapsed_seconds: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Ledger {
    pub run_id: String,
    /// `running`, then the outcome: `completed`, `failed`, `killed`, `stopped`.
    pub state: RecordState,
    pub command: String,
    pub host: String,
    pub started_at: String,
    pub updated_at: String,
    /// `updated_at` as Unix seconds, for arithmetic.
    #[serde(default)]
    pub updated_unix: f64,
    /// The boot clock (CLOCK_BOOTTIME) at `updated_at`, and the boot it belongs to: a crash
    /// gap within one boot is measured on it, whatever the wall clock did.
    #[serde(default)]
    pub updated_boottime: Option<f64>,
    #[serde(default)]
    pub boot_id: Option<String>,
    /// Sessions of this run (1 + number of resumes).
    pub sessions: u32,
    pub costguard: Option<Proc>,
    pub holder: Option<Proc>,
    pub pgid: Option<i32>,
    pub cgroup: Option<PathBuf>,
    /// The job's processes at the last sample, identified by start time.
    #[serde(default)]
    pub members: Vec<Proc>,
    /// Totals over every session.
    pub spend_dollars: f64,
    pub wasted_dollars: f64,
    pub elapsed_seconds: f64,
    pub rate_dollars_per_hour: Option<f64>,
    /// The rate and where it came from, in words ("$21.96/h from aws p4d.24xlarge …").
    #[serde(default)]
    pub rate_source: Option<String>,
    /// The box the run is on, as it named itself (absent when it named none).
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub instance_type: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub spot: Option<bool>,
    /// The provider's reclaim notice, when one came: a session that ends without a word
    /// after it was preempted (the box died under it).
    #[serde(default)]
    pub preempted: Option<String>,
    pub budget_dollars: Option<f64>,
    pub max_wall_seconds: Option<f64>,
    pub priced: bool,
    pub kills: Vec<Kill>,
    pub warnings: u32,
    pub errors: u32,
    pub events: u64,
    /// What the run waits on next, in words (e.g. "usd ceiling in 3m10s").
    pub waiting_on: Option<String>,
    pub last_progress: Option<String>,
    pub progress_total: Option<f64>,
    pub last_step: Option<f64>,
    pub eta_seconds: Option<f64>,
    pub projected_spend_dollars: Option<f64>,
    /// The longest idle streak of the run, in seconds.
    pub longest_idle_seconds: f64,
    pub exit_code: Option<u8>,
    pub outcome_detail: Option<String>,
    pub phases_total: Option<usize>,
    pub phase_index: Option<usize>,
    pub phase: Option<String>,
    pub phases: Vec<PhaseRecord>,
    /// The phase running: its own wall cap, how long it has run, and its step in words
    /// ("seed 2 of 3").
    #[serde(default)]
    pub phase_max_wall_seconds: Option<f64>,
    #[serde(default)]
    pub phase_elapsed_seconds: Option<f64>,
    #[serde(default)]
    pub step: Option<String>,
    /// The run's own --max-wall, in seconds (a phase's cap is `phase_max_wall_seconds`).
    #[serde(default)]
    pub run_max_wall_seconds: Option<f64>,
    /// Whether a notification channel takes each phase's end (`phase-completed`).
    #[serde(default)]
    pub pings_phase_ends: bool,
    pub no_preflight: bool,
    pub report_path: Option<PathBuf>,
    pub watchdogs: Vec<String>,
    pub on_exit: Option<String>,
    /// The page's address (`http://ADDR/`) as bound: the port actually served.
    #[serde(default)]
    pub page_url: Option<String>,
    /// The box's release, once per run id: on record before the call is made.
    #[serde(default)]
    pub release: Option<Release>,
}

/// What was done to stop the box's meter.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Release {
    /// "aws StopInstances i-0abc in us-west-2 with the instance role's credentials".
    pub how: String,
    /// requested (on record, call under way or interrupted), released, failed.
    pub state: String,
    pub requested_at: String,
    #[serde(default)]
    pub seconds_after_kill: Option<f64>,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub took_seconds: Option<f64>,
    #[serde(default)]
    pub detail: Option<String>,
    /// What keeps billing after it.
    #[serde(default)]
    pub still_bills: String,
}

pub fn path(run_dir: &Path) -> PathBuf {
    run_dir.join("ledger.json")
}

/// A ledger is small; anything bigger is not one.
const MAX_LEDGER: u64 = 4 << 20;
/// The event log is read whole for the report; past this it is not costguard's.
const MAX_EVENTS: u64 = 64 << 20;

impl Ledger {
    /// Loads and validates `ledger.json`. `None` when there is none; an error (kind
    /// InvalidData, saying what is wrong) when it is not a regular file, too big, not a
    /// ledger, or holds impossible values.
    pub fn load(run_dir: &Path) -> std::io::Result<Option<Ledger>> {
        let bytes = match crate::fsutil::read_bounded(&path(run_dir), MAX_LEDGER) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let bad = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let l: Ledger = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        l.validate().map_err(bad)?;
        Ok(Some(l))
    }

    /// Values no costguard writes: a negative or non-finite spend would hand a resumed run
    /// money it never had.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("spend_dollars", self.spend_dollars),
            ("wasted_dollars", self.wasted_dollars),
            ("elapsed_seconds", self.elapsed_seconds),
            ("updated_unix", self.updated_unix),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(format!("{name} is {v}"));
            }
        }
        Ok(())
    }

    /// A stand-in for a run whose ledger cannot be read, so it is listed, not hidden.
    pub fn corrupted(run_id: &str, why: String) -> Ledger {
        Ledger {
            run_id: run_id.to_string(),
            state: RecordState::Corrupted,
            outcome_detail: Some(format!("ledger.json is unreadable: {why}")),
            ..Ledger::default()
        }
    }

    pub fn save(&self, run_dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::timing::mark("ledger-save");
        let r = write_atomic(&path(run_dir), &bytes);
        crate::timing::mark("ledger-saved");
        r
    }

    /// A run whose costguard is gone while its ledger still says running: it crashed.
    pub fn crashed(&self) -> bool {
        self.state == RecordState::Running && !self.costguard.is_some_and(|p| p.alive())
    }

    pub fn live(&self) -> bool {
        self.state == RecordState::Running && self.costguard.is_some_and(|p| p.alive())
    }

    /// What a crashed session left, as a scope of the kill protocol: its holder, the job's
    /// recorded processes (checked by start time, so a reused pid is never hit) and their
    /// descendants, and the cgroup leaf. The ledger only describes; the caller kills.
    pub fn leftovers(&self) -> crate::supervise::kill::Procs {
        crate::supervise::kill::Procs {
            roots: self.holder.iter().chain(&self.members).copied().collect(),
            leaf: self
                .cgroup
                .clone()
                .map(|dir| crate::supervise::cgroup::Leaf { dir }),
            spare: vec![std::process::id() as i32],
        }
    }
}

/// Appends one event to `events.jsonl` (written through; fsynced for kills).
pub fn append_event(run_dir: &Path, e: &Event) -> std::io::Result<()> {
    let mut f = crate::fsutil::open_record(&run_dir.join("events.jsonl"), true)?;
    let mut line = serde_json::to_vec(e).map_err(std::io::Error::other)?;
    line.push(b'\n');
    f.write_all(&line)?;
    use crate::events::EventKind as K;
    if matches!(e.kind, K::Killed) {
        f.sync_data()?;
    }
    Ok(())
}

pub fn read_events(run_dir: &Path) -> Vec<Event> {
    crate::fsutil::read_bounded(&run_dir.join("events.jsonl"), MAX_EVENTS)
        .map(|b| {
            String::from_utf8_lossy(&b)
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The most the event log says this run had spent (each event carries the run's total):
/// resume takes the larger of this and the ledger, so a ledger that stopped being written
/// never credits the run with money it spent.
pub fn spend_in_events(run_dir: &Path) -> f64 {
    tail_events(run_dir)
        .iter()
        .map(|e| e.spend_dollars)
        .filter(|s| s.is_finite())
        .fold(0.0, f64::max)
}

/// The highest event sequence number in the event log (`<run-id>-<seq>`): event ids go on
/// from there, never from a ledger that may be older than the log.
pub fn last_seq_in_events(run_dir: &Path) -> u64 {
    tail_events(run_dir)
        .iter()
        .filter_map(|e| e.id.rsplit('-').next()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
}

/// The events at the log's end (its last 4 MiB, whatever its size): each carries the run's
/// totals, so the tail is what a resume needs.
fn tail_events(run_dir: &Path) -> Vec<Event> {
    crate::fsutil::read_tail(&run_dir.join("events.jsonl"), 4 << 20)
        .map(|b| {
            String::from_utf8_lossy(&b)
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// `<state-dir>/runs`.
pub fn runs_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("runs")
}

/// Every run with a ledger, newest start first.
pub fn list(state_dir: &Path) -> Vec<(PathBuf, Ledger)> {
    let mut out: Vec<(PathBuf, Ledger)> = std::fs::read_dir(runs_dir(state_dir))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let dir = e.path();
            let id = e.file_name().to_string_lossy().into_owned();
            match Ledger::load(&dir) {
                Ok(l) => l.map(|l| (dir, l)),
                Err(err) => Some((dir, Ledger::corrupted(&id, err.to_string()))),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.1.started_at
            .cmp(&a.1.started_at)
            .then(b.1.run_id.cmp(&a.1.run_id))
    });
    out
}

/// The run directory of `id`, or of the newest run.
pub fn find(state: &Path, id: Option<&str>) -> Result<(PathBuf, Ledger), String> {
    match id {
        Some(id) => {
            let dir = runs_dir(state).join(id);
            match Ledger::load(&dir) {
                Ok(Some(l)) => Ok((dir, l)),
                // Reserved by `run --detach`, its costguard not yet on record.
                Ok(None) if dir.is_dir() => Ok((
                    dir,
                    Ledger {
                        run_id: id.to_string(),
                        state: RecordState::Starting,
                        ..Ledger::default()
                    },
                )),
                Ok(None) => Err(format!(
                    "no run {id:?} in {} (costguard list shows the runs)",
                    state.display()
                )),
                // Shown as corrupted, with the reason, rather than hidden behind an error.
                Err(e) => Ok((dir, Ledger::corrupted(id, e.to_string()))),
            }
        }
        None => list(state)
            .into_iter()
            .next()
            .ok_or_else(|| format!("no runs in {}", state.display())),
    }
}

impl Ledger {
    /// The run's state as `list` and `status` say it: a crashed run is "crashed" (or
    /// "preempted" when its box was reclaimed after the notice), whatever it last recorded.
    pub fn state_word(&self) -> String {
        if self.crashed() && self.preempted.is_some() {
            // Its box was reclaimed after the notice: costguard died with it.
            "preempted".into()
        } else if self.crashed() {
            "crashed".into()
        } else {
            self.state.as_str().into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_and_tells_crashed_from_live() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut l = Ledger {
            run_id: "r".into(),
            state: RecordState::Running,
            costguard: Proc::of(std::process::id() as i32),
            spend_dollars: 1.25,
            ..Ledger::default()
        };
        l.save(d.path()).expect("save");
        let back = Ledger::load(d.path()).expect("load").expect("some");
        assert_eq!(back, l);
        assert!(back.live() && !back.crashed());
        l.costguard = Some(Proc {
            pid: std::process::id() as i32,
            start_ticks: 1,
        });
        assert!(l.crashed(), "same pid, other start time: not us");
        assert!(Ledger::load(&d.path().join("none")).expect("ok").is_none());
    }
}
