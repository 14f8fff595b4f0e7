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

/// A run id used again: what its earlier sessions left.
struct Resumed {
    dir: PathBuf,
    prev: Option<Ledger>,
    /// Dollars for the time a crashed session's leftovers ran unguarded.
    gap: f64,
}

/// Opens `<runs>/<id>` for a given run id: refuses a live run, ends a crashed session's
/// leftovers and charges the time they ran unguarded.
async fn resume(
    runs: &std::path::Path,
    id: &str,
    notices: &mut Vec<String>,
) -> Result<Resumed, RecordError> {
    if !valid_id(id) {
        return Err(RecordError::BadId(id.to_string()));
    }
    let dir = runs.join(id);
    let io = |source| RecordError::Io {
        dir: dir.display().to_string(),
        source,
    };
    private_dir(&dir).map_err(io)?;
    let prev = Ledger::load(&dir).map_err(io)?;
    let me = std::process::id() as i32;
    // The next phase of a plan in this same process continues the record.
    let ours = prev
        .as_ref()
        .is_some_and(|p| p.costguard.is_some_and(|c| c.pid == me) && p.live());
    let mut gap = 0.0;
    if let Some(p) = prev.as_ref().filter(|_| !ours) {
        if p.live() {
            return Err(RecordError::Running {
                id: id.to_string(),
                pid: p.costguard.map_or(0, |c| c.pid),
            });
        }
        if p.crashed() {
            gap = end_leftovers(id, p, notices).await;
        }
        notices.push(format!(
            "resuming run {id}: {} spent over {} earlier sessions; spend continues from there",
            crate::units::format_money(p.spend_dollars),
            p.sessions
        ));
    }
    Ok(Resumed { dir, prev, gap })
}

/// Kills what a crashed session left (the one kill protocol, KILL at once: nothing of it can
/// be adopted — its parent, output and exit status are gone). Returns the dollars to charge
/// for the time it verifiably ran unguarded since the last record.
async fn end_leftovers(id: &str, p: &Ledger, notices: &mut Vec<String>) -> f64 {
    let mut scope = p.leftovers();
    let report = crate::supervise::kill::terminate(
        &mut scope,
        nix::sys::signal::Signal::SIGKILL,
        Duration::ZERO,
        None,
        None,
    )
    .await;
    if let Some(l) = &scope.leaf {
        l.remove();
    }
    let hit = report.pids;
    if hit.is_empty() {
        return 0.0;
    }
    notices.push(format!(
        "run {id}: the previous costguard died without ending its job; killed {} leftover processes {:?} (a job cannot be adopted: its parent, output and exit status are gone)",
        hit.len(),
        hit
    ));
    let gap = (crate::events::unix_now() - p.updated_unix).max(0.0);
    let (Some(rate), true) = (p.rate_dollars_per_hour, p.updated_unix > 0.0) else {
        return 0.0;
    };
    let extra = rate * gap / 3600.0;
    notices.push(format!(
        "run {id}: charging {} for the {} the leftovers ran unguarded",
        crate::units::format_money(extra),
        crate::units::format_duration(Duration::from_secs_f64(gap))
    ));
    extra
}

/// The writer task: the ledger at most once a second (the latest snapshot wins) and at once
/// when the run closes; every event appended as it comes.
fn spawn_writer(
    dir: PathBuf,
    mut rx: watch::Receiver<Ledger>,
    mut ev_rx: mpsc::UnboundedReceiver<Event>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
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
    })
}

impl Recorder {
    /// Opens (or resumes) the run directory. `notices` gets what the user should know.
    pub async fn open(
        settings: &Settings,
        base_id: &str,
        notices: &mut Vec<String>,
    ) -> Result<(String, Recorder), RecordError> {
        let runs = ledger::runs_dir(&settings.state_dir);
        let (id, r) = match &settings.run_id {
            Some(id) => (id.clone(), resume(&runs, id, notices).await?),
            None => {
                let (id, dir) =
                    start::reserve_run_id(&settings.state_dir, base_id).map_err(|source| {
                        RecordError::Io {
                            dir: runs.display().to_string(),
                            source,
                        }
                    })?;
                let r = Resumed {
                    dir,
                    prev: None,
                    gap: 0.0,
                };
                (id, r)
            }
        };
        let prev = r.prev.map(|mut p| {
            p.spend_dollars += r.gap;
            p
        });
        let mut l = prev.clone().unwrap_or_default();
        l.run_id = id.clone();
        l.state = ledger::RunState::Running;
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
        let (ev_tx, ev_rx) = mpsc::unbounded_channel::<Event>();
        let task = spawn_writer(r.dir.clone(), rx, ev_rx);
        let rec = Recorder {
            run_dir: r.dir,
            prev,
            tx,
            ev_tx,
            task,
        };
        Ok((id, rec))
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

pub fn write_config(dir: &std::path::Path, s: &Settings, command: &[OsString]) {
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
        crate::console::notice(format!("could not write config.json: {e}"));
    }
}
