//! The run's record on disk while it runs: the run directory, resume of an earlier session,
//! and a writer task that keeps `ledger.json` and `events.jsonl` current without the run
//! loop ever waiting on a disk.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use tokio::sync::{mpsc, watch};

use super::start;
use crate::config::Settings;
use crate::events::Event;
use crate::fsutil::private_dir;
use crate::ledger::{self, Ledger, Proc};

pub struct Recorder {
    pub run_dir: PathBuf,
    /// The earlier session's ledger when this run resumes one.
    pub prev: Option<Ledger>,
    tx: watch::Sender<Ledger>,
    ev_tx: mpsc::UnboundedSender<Event>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("invalid --run-id {0:?}: use letters, digits, '.', '_' and '-' (at most 100, not starting with '.')")]
    BadId(String),
    #[error(
        "run {id} is already running (costguard pid {pid}); stop it first: costguard stop {id}"
    )]
    Running { id: String, pid: i32 },
    #[error("cannot write the run directory {dir}: {source}")]
    Io {
        dir: String,
        #[source]
        source: std::io::Error,
    },
}

/// Whether `id` can name a run directory (no path separators, no hidden names).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 100
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

impl Recorder {
    /// Opens (or resumes) the run directory. `notices` gets what the user should know.
    pub fn open(
        settings: &Settings,
        base_id: &str,
        notices: &mut Vec<String>,
    ) -> Result<(String, Recorder), RecordError> {
        let io = |dir: &std::path::Path| {
            let dir = dir.display().to_string();
            move |source| RecordError::Io { dir, source }
        };
        let runs = ledger::runs_dir(&settings.state_dir);
        let mut carried_gap = 0.0;
        let (id, run_dir, prev) = match &settings.run_id {
            Some(id) => {
                if !valid_id(id) {
                    return Err(RecordError::BadId(id.clone()));
                }
                let dir = runs.join(id);
                private_dir(&dir).map_err(io(&dir))?;
                let prev = Ledger::load(&dir).map_err(io(&dir))?;
                let me = std::process::id() as i32;
                // The next phase of a plan in this same process continues the record.
                let ours = prev
                    .as_ref()
                    .is_some_and(|p| p.costguard.is_some_and(|c| c.pid == me) && p.live());
                if let Some(p) = prev.as_ref().filter(|_| !ours) {
                    if p.live() {
                        return Err(RecordError::Running {
                            id: id.clone(),
                            pid: p.costguard.map_or(0, |c| c.pid),
                        });
                    }
                    if p.crashed() {
                        let hit = p.kill_leftovers();
                        if !hit.is_empty() {
                            notices.push(format!(
                                "run {id}: the previous costguard died without ending its job; killed {} leftover processes {:?} (a job cannot be adopted: its parent, output and exit status are gone)",
                                hit.len(),
                                hit
                            ));
                            // The job verifiably ran on unguarded since the last record: that
                            // time is spend too.
                            let gap = (crate::events::unix_now() - p.updated_unix).max(0.0);
                            if let (Some(rate), true) =
                                (p.rate_dollars_per_hour, p.updated_unix > 0.0)
                            {
                                let extra = rate * gap / 3600.0;
                                notices.push(format!(
                                    "run {id}: charging {} for the {} the leftovers ran unguarded",
                                    crate::units::format_money(extra),
                                    crate::units::format_duration(Duration::from_secs_f64(gap))
                                ));
                                carried_gap = extra;
                            }
                        }
                    }
                    notices.push(format!(
                        "resuming run {id}: {} spent over {} earlier sessions; spend continues from there",
                        crate::units::format_money(p.spend_dollars),
                        p.sessions
                    ));
                }
                (id.clone(), dir, prev)
            }
            None => {
                let (id, dir) =
                    start::reserve_run_id(&settings.state_dir, base_id).map_err(io(&runs))?;
                (id, dir, None)
            }
        };
        let mut l = prev.clone().unwrap_or_default();
        l.spend_dollars += carried_gap;
        let prev = prev.map(|mut p| {
            p.spend_dollars += carried_gap;
            p
        });
        l.run_id = id.clone();
        l.state = "running".into();
        l.sessions = l.sessions.saturating_add(1);
        l.costguard = Proc::of(std::process::id() as i32);
        l.holder = None;
        l.pgid = None;
        l.cgroup = None;
        l.exit_code = None;
        l.outcome_detail = None;
        // The first write goes through the writer task too: nothing is on record yet that a
        // crash in the next milliseconds could lose, and the job must not wait on a disk.
        let (tx, mut rx) = watch::channel(l);
        rx.mark_changed();
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<Event>();
        let dir = run_dir.clone();
        let task = tokio::spawn(async move {
            // The ledger is written at most once a second (the latest snapshot wins) and at
            // once when the run closes; every event is appended as it comes.
            let (mut ledger_open, mut events_open, mut pending) = (true, true, false);
            let mut next_save = tokio::time::Instant::now();
            let save = |l: Ledger, d: PathBuf| tokio::task::spawn_blocking(move || l.save(&d));
            while ledger_open || events_open {
                tokio::select! {
                    biased;
                    e = ev_rx.recv(), if events_open => match e {
                        Some(e) => {
                            let d = dir.clone();
                            let _ = tokio::task::spawn_blocking(move || ledger::append_event(&d, &e)).await;
                        }
                        None => events_open = false,
                    },
                    c = rx.changed(), if ledger_open => match c {
                        Ok(()) => {
                            rx.borrow_and_update();
                            pending = true;
                        }
                        Err(_) => ledger_open = false,
                    },
                    _ = tokio::time::sleep_until(next_save), if pending && ledger_open => {
                        let l = rx.borrow().clone();
                        let _ = save(l, dir.clone()).await;
                        pending = false;
                        next_save = tokio::time::Instant::now() + Duration::from_secs(1);
                    }
                }
                if !ledger_open && pending {
                    let l = rx.borrow().clone();
                    let _ = save(l, dir.clone()).await;
                    pending = false;
                }
            }
        });
        Ok((
            id,
            Recorder {
                run_dir,
                prev,
                tx,
                ev_tx,
                task,
            },
        ))
    }

    pub fn update(&self, f: impl FnOnce(&mut Ledger)) {
        self.tx.send_modify(f);
    }

    pub fn snapshot(&self) -> Ledger {
        self.tx.borrow().clone()
    }

    pub fn event(&self, e: &Event) {
        let _ = self.ev_tx.send(e.clone());
    }

    /// Lets the writer drain the events and write the latest ledger, and waits for it.
    pub async fn close(self) -> Ledger {
        let last = self.tx.borrow().clone();
        drop(self.tx);
        drop(self.ev_tx);
        let _ = self.task.await;
        last
    }
}

pub(super) fn write_config(dir: &std::path::Path, s: &Settings, command: &[OsString]) {
    let d = |x: Option<Duration>| x.map(|x| x.as_secs_f64());
    let doc = json!({
        "command": crate::redact::command_line(command),
        "plan": s.plan,
        "phase": s.phase.as_ref().map(|p| &p.name),
        "max_usd": s.max_usd,
        "usd_per_hour": s.usd_per_hour,
        "usd_per_kwh": s.usd_per_kwh,
        "max_wall_seconds": d(s.max_wall),
        "kill_grace_seconds": s.kill_grace.as_secs_f64(),
        "warn_at": s.warn_at,
        "warn_before_seconds": d(s.warn_before),
        "interval_seconds": s.interval.as_secs_f64(),
        "idle_seconds": d(s.idle),
        "idle_below_percent": s.idle_below,
        "idle_grace_seconds": s.idle_grace.as_secs_f64(),
        "stall_seconds": d(s.stall),
        "progress_regex": s.progress_regex.as_ref().map(|r| r.as_str()),
        "progress_total": s.progress_total,
        "heartbeat_file": s.heartbeat_file,
        "max_host_mem_bytes": s.max_host_mem,
        "listen": s.listen.map(|a| a.to_string()),
        "notify_channels": s.notify.channels.iter().map(|c| c.kind.as_str()).collect::<Vec<_>>(),
        "on_exit": s.on_exit.as_deref().map(|c| crate::redact::text(c).into_owned()),
        "no_preflight": s.no_preflight,
    });
    let bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    if let Err(e) = crate::fsutil::write_replace(&dir.join("config.json"), &bytes) {
        eprintln!("costguard: notice: could not write config.json: {e}");
    }
}
