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
use crate::supervise::tree;

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

/// A process identified across pid reuse.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Proc {
    pub pid: i32,
    pub start_ticks: u64,
}

impl Proc {
    pub fn of(pid: i32) -> Option<Proc> {
        tree::stat(pid).map(|s| Proc {
            pid,
            start_ticks: s.start_ticks,
        })
    }

    /// Whether this very process still exists (same pid, same start time, not a zombie).
    pub fn alive(&self) -> bool {
        tree::stat(self.pid).is_some_and(|s| s.start_ticks == self.start_ticks && !s.is_zombie())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PhaseRecord {
    pub name: String,
    pub outcome: String,
    pub elapsed_seconds: f64,
    #[serde(default)]
    pub expected_seconds: Option<f64>,
    pub spend_dollars: f64,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Ledger {
    pub run_id: String,
    /// `running`, then the outcome: `completed`, `failed`, `killed`, `stopped`.
    pub state: String,
    pub command: String,
    pub host: String,
    pub started_at: String,
    pub updated_at: String,
    /// `updated_at` as Unix seconds, for arithmetic.
    #[serde(default)]
    pub updated_unix: f64,
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
    /// Idle time, summed per streak when it ends, and the longest streak.
    pub longest_idle_seconds: f64,
    pub exit_code: Option<u8>,
    pub outcome_detail: Option<String>,
    pub phases_total: Option<usize>,
    pub phase_index: Option<usize>,
    pub phase: Option<String>,
    pub phases: Vec<PhaseRecord>,
    pub no_preflight: bool,
    pub report_path: Option<PathBuf>,
    pub watchdogs: Vec<String>,
    pub on_exit: Option<String>,
}

pub fn path(run_dir: &Path) -> PathBuf {
    run_dir.join("ledger.json")
}

impl Ledger {
    pub fn load(run_dir: &Path) -> std::io::Result<Option<Ledger>> {
        match std::fs::read(path(run_dir)) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn save(&self, run_dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_atomic(&path(run_dir), &bytes)
    }

    /// A run whose costguard is gone while its ledger still says running: it crashed.
    pub fn crashed(&self) -> bool {
        self.state == "running" && !self.costguard.is_some_and(|p| p.alive())
    }

    pub fn live(&self) -> bool {
        self.state == "running" && self.costguard.is_some_and(|p| p.alive())
    }

    /// Kills what a crashed session left: its holder, the job's recorded processes (checked
    /// by start time, so a reused pid is never hit) and their descendants, and the cgroup
    /// leaf. Returns the pids signalled.
    pub fn kill_leftovers(&self) -> Vec<i32> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let mut targets: Vec<i32> = Vec::new();
        if let Some(cg) = &self.cgroup {
            if let Ok(t) = std::fs::read_to_string(cg.join("cgroup.procs")) {
                targets.extend(t.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
            let _ = std::fs::write(cg.join("cgroup.kill"), "1");
        }
        let roots: Vec<Proc> = self
            .holder
            .iter()
            .chain(&self.members)
            .copied()
            .filter(Proc::alive)
            .collect();
        let all = tree::all();
        for r in &roots {
            targets.push(r.pid);
            targets.extend(tree::descendants_in(&all, r.pid).iter().map(|p| p.pid));
        }
        targets.sort_unstable();
        targets.dedup();
        targets.retain(|p| *p > 1 && *p != std::process::id() as i32);
        for p in &targets {
            let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
        }
        if let Some(cg) = &self.cgroup {
            // Empty now (or soon): remove the leaf, as a clean exit would have.
            for _ in 0..50 {
                if std::fs::remove_dir(cg).is_ok() || !cg.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        targets
    }
}

/// Appends one event to `events.jsonl` (flushed; fsynced for kills and endings).
pub fn append_event(run_dir: &Path, e: &Event) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir.join("events.jsonl"))?;
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
    std::fs::read_to_string(run_dir.join("events.jsonl"))
        .map(|t| {
            t.lines()
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
        .filter_map(|e| {
            let dir = e.path();
            Ledger::load(&dir).ok().flatten().map(|l| (dir, l))
        })
        .collect();
    out.sort_by(|a, b| {
        b.1.started_at
            .cmp(&a.1.started_at)
            .then(b.1.run_id.cmp(&a.1.run_id))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_and_tells_crashed_from_live() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut l = Ledger {
            run_id: "r".into(),
            state: "running".into(),
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
