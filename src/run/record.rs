//! The run's record on disk while it runs: the run directory, resume of an earlier session,
//! and a writer task that keeps `ledger.json` and `events.jsonl` current without the run
//! loop ever waiting on a disk.

use std::ffi::OsString;
use std::fs::File;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use nix::fcntl::{Flock, FlockArg};
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
    task: tokio::task::JoinHandle<Result<(), String>>,
    /// Fired by the writer once every event sent is in the event log.
    drained: tokio::sync::oneshot::Receiver<()>,
    /// `config.json`, written beside the job's start; awaited at the close.
    config: Option<tokio::task::JoinHandle<()>>,
    /// `config.json` not yet handed to a writer: written at the close if nothing took it.
    config_pending: Option<ConfigWrite>,
    /// Write failures of the record, for the run loop to raise (taken once).
    errors: Option<mpsc::UnboundedReceiver<RecordNews>>,
    /// One costguard per run id: held until the record is closed; the kernel releases it
    /// however this process ends.
    _lock: Flock<File>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("invalid --run-id {0:?}: use letters, digits, '.', '_' and '-' (at most 100, not starting with '.')")]
    BadId(String),
    #[error("run {id} is already running ({who}); stop it first: costguard stop {id}")]
    Running { id: String, who: String },
    #[error("cannot write the run directory {dir}: {source}")]
    Io {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the ledger of run {id} is corrupted ({why}); costguard will not guess what it spent: look at {dir}, move it away, or use another --run-id")]
    Corrupted {
        id: String,
        dir: String,
        why: String,
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

/// A run directory this process holds the lock of, and what earlier sessions left there.
pub struct Claim {
    pub id: String,
    pub dir: PathBuf,
    /// The earlier sessions' ledger, its spend raised to what the event log shows and to
    /// the time a crashed session's leftovers ran unguarded.
    pub prev: Option<Ledger>,
    lock: Flock<File>,
}

/// Takes the run's lock before anything of it is read: a second costguard with the same run
/// id fails here, at once, whatever the timing.
fn lock(id: &str, dir: &std::path::Path) -> Result<Flock<File>, RecordError> {
    let io = |source| RecordError::Io {
        dir: dir.display().to_string(),
        source,
    };
    let f = crate::fsutil::open_record(&dir.join("lock"), false).map_err(io)?;
    Flock::lock(f, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            let who = match Ledger::load(dir).ok().flatten().and_then(|l| l.costguard) {
                Some(c) => format!("costguard pid {}", c.pid),
                None => "another costguard holds its lock".into(),
            };
            RecordError::Running {
                id: id.to_string(),
                who,
            }
        } else {
            io(errno.into())
        }
    })
}

/// Claims `<runs>/<id>` for a given run id: the lock, then the earlier record; refuses a
/// live or corrupted run, ends a crashed session's leftovers and charges the time they ran.
async fn resume(
    runs: &std::path::Path,
    id: &str,
    notices: &mut Vec<String>,
) -> Result<Claim, RecordError> {
    if !valid_id(id) {
        return Err(RecordError::BadId(id.to_string()));
    }
    let dir = runs.join(id);
    private_dir(&dir).map_err(|source| RecordError::Io {
        dir: dir.display().to_string(),
        source,
    })?;
    let lock = lock(id, &dir)?;
    let prev = Ledger::load(&dir).map_err(|e| RecordError::Corrupted {
        id: id.to_string(),
        dir: dir.display().to_string(),
        why: e.to_string(),
    })?;
    let mut prev = prev_with_events(id, &dir, prev, notices);
    holder_kill_notice(id, &dir, notices);
    if let Some(p) = prev.as_mut() {
        // Holding the lock, a "running" ledger means its costguard died.
        if p.state == ledger::RecordState::Running && p.costguard.is_none_or(|c| c.pid != me()) {
            if let Some(why) = &p.preempted {
                notices.push(format!(
                    "run {id}: its last session was preempted: the provider reclaimed the box ({why})"
                ));
            }
            p.spend_dollars += end_leftovers(id, p, notices).await;
        }
        notices.push(format!(
            "resuming run {id}: {} already spent over {} earlier sessions; spend continues from there",
            crate::units::format_money(p.spend_dollars),
            p.sessions
        ));
    }
    Ok(Claim {
        id: id.to_string(),
        dir,
        prev,
        lock,
    })
}

/// What an earlier session's holder recorded when it killed the job itself because that
/// costguard had not begun its kill by the deadline (`supervise/deadman.rs`). The file is
/// emptied when the next job starts.
fn holder_kill_notice(id: &str, dir: &std::path::Path, notices: &mut Vec<String>) {
    let path = dir.join(crate::supervise::deadman::RECORD_FILE);
    let Ok(bytes) = crate::fsutil::read_bounded(&path, 64 * 1024) else {
        return;
    };
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    if !text.is_empty() {
        notices.push(format!(
            "run {id}: an earlier session's holder killed the job itself: {}",
            text.replace('\n', "; ")
        ));
    }
}

fn me() -> i32 {
    std::process::id() as i32
}

/// The ledger's spend, raised to what the event log shows: a ledger that stopped being
/// written (a full disk) never credits the run with money it spent.
fn prev_with_events(
    id: &str,
    dir: &std::path::Path,
    prev: Option<Ledger>,
    notices: &mut Vec<String>,
) -> Option<Ledger> {
    // Event ids go on from the log: a ledger saved once a second can be behind it.
    let seq = ledger::last_seq_in_events(dir);
    let prev = match prev {
        Some(mut p) => {
            p.events = p.events.max(seq);
            Some(p)
        }
        None if seq > 0 => Some(Ledger {
            run_id: id.to_string(),
            sessions: 1,
            events: seq,
            ..Ledger::default()
        }),
        None => None,
    };
    let logged = ledger::spend_in_events(dir);
    let on_record = prev.as_ref().map_or(0.0, |p| p.spend_dollars);
    if logged <= on_record {
        return prev;
    }
    notices.push(format!(
        "run {id}: the event log shows {} spent, more than the ledger's {}; resuming from the larger",
        crate::units::format_money(logged),
        crate::units::format_money(on_record)
    ));
    let mut p = prev.unwrap_or_else(|| Ledger {
        run_id: id.to_string(),
        sessions: 1,
        ..Ledger::default()
    });
    p.spend_dollars = logged;
    Some(p)
}

/// Kills what a crashed session left (the one kill protocol, KILL at once: nothing of it can
/// be adopted — its parent, output and exit status are gone). Returns the dollars to charge
/// for the time it ran unguarded since the last record: the wall-clock gap, but never more
/// than the leftovers' own age from the kernel's monotonic clock (a clock jump is no spend).
async fn end_leftovers(id: &str, p: &Ledger, notices: &mut Vec<String>) -> f64 {
    let mut scope = p.leftovers();
    let age = p
        .holder
        .iter()
        .chain(&p.members)
        .filter(|r| r.alive())
        .filter_map(|r| crate::supervise::tree::age_seconds(r.start_ticks))
        .fold(None, |m: Option<f64>, a| Some(m.map_or(a, |m| m.max(a))));
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
    let gap = crash_gap(p);
    let gap = age.map_or(gap, |a| gap.min(a));
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

/// How long the crashed session's leftovers ran unguarded: from its ledger's last write to
/// the instant this costguard began (from which the new session's own meter counts, so no
/// second is charged twice) — by the boot clock when it is the same boot (a wall-clock step
/// between crash and resume is then irrelevant), by wall time otherwise; never less than 0.
fn crash_gap(p: &Ledger) -> f64 {
    let same_boot = p.boot_id.is_some() && p.boot_id.as_deref() == crate::events::boot_id();
    let since_main = crate::timing::since_main().as_secs_f64();
    let gap = match (same_boot, p.updated_boottime) {
        (true, Some(then)) => crate::events::boot_clock() - then,
        _ => crate::events::unix_now() - p.updated_unix,
    };
    (gap - since_main).max(0.0)
}

/// What the writer tells the loop: a write failed, or writes succeed again after failing.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordNews {
    Failed(String),
    Recovered,
}

/// The writer task: the ledger at most once a second (the latest snapshot wins) and at once
/// when the run closes; every event appended as it comes. A failed write is sent on
/// `errors` at once (the loop raises it); the task ends with the last write's result.
fn spawn_writer(
    dir: PathBuf,
    mut rx: watch::Receiver<Ledger>,
    mut ev_rx: mpsc::UnboundedReceiver<Event>,
    errors: mpsc::UnboundedSender<RecordNews>,
    drained: tokio::sync::oneshot::Sender<()>,
) -> tokio::task::JoinHandle<Result<(), String>> {
    tokio::spawn(async move {
        let mut drained = Some(drained);
        let (mut ledger_open, mut events_open, mut pending) = (true, true, false);
        let mut failing = false;
        // The first ledger is already on disk (written before the job started): the next
        // durable save comes a second in, or at the close, whichever is first.
        let mut next_save = tokio::time::Instant::now() + Duration::from_secs(1);
        let mut last: Result<(), String> = Ok(());
        let blocking = |f: Box<dyn FnOnce() -> std::io::Result<()> + Send>| async move {
            match tokio::task::spawn_blocking(f).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        };
        let save = |l: Ledger, d: PathBuf| Box::new(move || l.save(&d));
        while ledger_open || events_open {
            tokio::select! {
                biased;
                e = ev_rx.recv(), if events_open => match e {
                    Some(e) => {
                        let d = dir.clone();
                        match blocking(Box::new(move || ledger::append_event(&d, &e))).await {
                            Err(why) => {
                                failing = true;
                                let _ = errors.send(RecordNews::Failed(format!("cannot append to {}: {why}", dir.join("events.jsonl").display())));
                            }
                            Ok(()) if failing => {
                                failing = false;
                                let _ = errors.send(RecordNews::Recovered);
                            }
                            Ok(()) => {}
                        }
                    }
                    None => {
                        events_open = false;
                        if let Some(d) = drained.take() {
                            let _ = d.send(());
                        }
                    }
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
                    last = blocking(save(l, dir.clone())).await;
                    match &last {
                        Err(why) => {
                            failing = true;
                            let _ = errors.send(RecordNews::Failed(format!("cannot write {}: {why}", ledger::path(&dir).display())));
                        }
                        Ok(()) if failing => {
                            failing = false;
                            let _ = errors.send(RecordNews::Recovered);
                        }
                        Ok(()) => {}
                    }
                    pending = false;
                    next_save = tokio::time::Instant::now() + Duration::from_secs(1);
                }
            }
            if !ledger_open && pending {
                let l = rx.borrow().clone();
                last = blocking(save(l, dir.clone())).await;
                pending = false;
            }
        }
        last.map_err(|why| format!("cannot write {}: {why}", ledger::path(&dir).display()))
    })
}

impl Recorder {
    /// Claims the run directory: a given run id is locked and resumed; otherwise a fresh id
    /// is reserved and locked. Nothing is written yet but the lock file.
    pub async fn claim(
        settings: &Settings,
        base_id: &str,
        notices: &mut Vec<String>,
    ) -> Result<Claim, RecordError> {
        let runs = ledger::runs_dir(&settings.state_dir);
        if let Some(id) = &settings.run_id {
            return resume(&runs, id, notices).await;
        }
        let (id, dir) = start::reserve_run_id(&settings.state_dir, base_id).map_err(|source| {
            RecordError::Io {
                dir: runs.display().to_string(),
                source,
            }
        })?;
        let lock = lock(&id, &dir)?;
        Ok(Claim {
            id,
            dir,
            prev: None,
            lock,
        })
    }

    /// Starts the record: the first ledger is written before this returns (a run that
    /// cannot be recorded does not start), then a writer task keeps it current.
    pub fn start(c: Claim) -> Result<Recorder, RecordError> {
        let mut l = c.prev.clone().unwrap_or_default();
        l.run_id = c.id.clone();
        l.state = ledger::RecordState::Running;
        l.sessions = l.sessions.saturating_add(1);
        l.costguard = Proc::of(me());
        l.holder = None;
        l.pgid = None;
        l.cgroup = None;
        l.exit_code = None;
        l.outcome_detail = None;
        l.updated_unix = crate::events::unix_now();
        // Replaced, not fsynced: the writer makes it durable; the job must not wait on a disk
        // flush, but it must not start on a disk that cannot take its record at all.
        let bytes = serde_json::to_vec_pretty(&l).map_err(std::io::Error::other);
        bytes
            .and_then(|b| crate::fsutil::write_replace(&ledger::path(&c.dir), &b))
            .map_err(|source| RecordError::Io {
                dir: c.dir.display().to_string(),
                source,
            })?;
        let (tx, rx) = watch::channel(l);
        let (ev_tx, ev_rx) = mpsc::unbounded_channel::<Event>();
        let (err_tx, errors) = mpsc::unbounded_channel();
        let (drained_tx, drained) = tokio::sync::oneshot::channel();
        let task = spawn_writer(c.dir.clone(), rx, ev_rx, err_tx, drained_tx);
        Ok(Recorder {
            run_dir: c.dir,
            prev: c.prev,
            tx,
            ev_tx,
            task,
            drained,
            config: None,
            config_pending: None,
            errors: Some(errors),
            _lock: c.lock,
        })
    }

    /// The record's write failures, for the run loop (can be taken once).
    pub fn take_errors(&mut self) -> Option<mpsc::UnboundedReceiver<RecordNews>> {
        self.errors.take()
    }

    pub fn update(&self, f: impl FnOnce(&mut Ledger)) {
        self.tx.send_modify(f);
    }

    /// A look at the current ledger without copying it whole.
    pub fn read<R>(&self, f: impl FnOnce(&Ledger) -> R) -> R {
        f(&self.tx.borrow())
    }

    pub fn snapshot(&self) -> Ledger {
        self.tx.borrow().clone()
    }

    pub fn event(&self, e: &Event) {
        let _ = self.ev_tx.send(e.clone());
    }

    /// Lets the writer drain the events and write the latest ledger, and waits for it: the
    /// ledger as last written, or why it could not be — running `then` on that ledger as soon
    /// as every event is in the event log, beside the ledger's durable write, not after it.
    /// `beside` (the series' last write) runs alongside and is awaited too: nothing of the
    /// run is written after its lock is let go.
    pub async fn close_then<T, F>(
        self,
        beside: impl std::future::Future<Output = ()>,
        then: impl FnOnce(Ledger) -> F,
    ) -> (Ledger, Result<(), String>, T)
    where
        F: std::future::Future<Output = T>,
    {
        let last = self.tx.borrow().clone();
        let after = then(last.clone());
        drop(self.tx);
        drop(self.ev_tx);
        let drained = self.drained;
        if let Some(c) = self.config {
            let _ = c.await;
        }
        if let Some(w) = self.config_pending {
            let _ = tokio::task::spawn_blocking(move || w.write()).await;
        }
        let (written, t, ()) = tokio::join!(
            async {
                self.task
                    .await
                    .unwrap_or_else(|e| Err(format!("the record writer failed: {e}")))
            },
            async {
                // A writer that ended without saying so has nothing left to append either.
                let _ = drained.await;
                after.await
            },
            beside
        );
        (last, written, t)
    }
}

/// The settings' snapshot, made and waiting to be written: written when it is dropped
/// unwritten too (a spawn that failed before it ran the write drops it).
pub struct ConfigWrite {
    path: PathBuf,
    bytes: Option<Vec<u8>>,
}

impl ConfigWrite {
    /// Writes `config.json` (a failure is said, never fatal).
    pub fn write(mut self) {
        self.write_once();
    }

    fn write_once(&mut self) {
        if let Some(bytes) = self.bytes.take() {
            if let Err(e) = crate::fsutil::write_replace(&self.path, &bytes) {
                crate::console::notice(format!("could not write config.json: {e}"));
            }
        }
    }
}

impl Drop for ConfigWrite {
    fn drop(&mut self) {
        self.write_once();
    }
}

impl Recorder {
    /// The settings' snapshot, `config.json`, made now and written later: by whoever takes
    /// it ([`Recorder::take_config`]: the job's spawn, while the holder starts the job — or,
    /// when the spawn fails first, as it is dropped), in the background
    /// ([`Recorder::write_config_in_background`]), or at the latest at the close.
    pub fn prepare_config(&mut self, s: &Settings, command: &[OsString]) {
        self.config_pending = Some(ConfigWrite {
            path: self.run_dir.join("config.json"),
            bytes: Some(config_doc(s, command)),
        });
    }

    /// The snapshot's write, for a caller to run.
    pub fn take_config(&mut self) -> Option<ConfigWrite> {
        self.config_pending.take()
    }

    /// The snapshot written on the blocking pool (the start does not wait; the close does).
    pub fn write_config_in_background(&mut self) {
        if let Some(w) = self.config_pending.take() {
            self.config = Some(tokio::task::spawn_blocking(move || w.write()));
        }
    }
}

fn config_doc(s: &Settings, command: &[OsString]) -> Vec<u8> {
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
    serde_json::to_vec_pretty(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_write_never_run_is_written_when_dropped_and_once_when_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.json");
        // As a spawn that failed before running its `meanwhile` drops it.
        let unrun: Box<dyn FnOnce() + Send> = {
            let w = ConfigWrite {
                path: path.clone(),
                bytes: Some(b"{\"a\":1}".to_vec()),
            };
            Box::new(move || w.write())
        };
        drop(unrun);
        assert_eq!(std::fs::read(&path).expect("written"), b"{\"a\":1}");
        std::fs::remove_file(&path).expect("rm");
        let w = ConfigWrite {
            path: path.clone(),
            bytes: Some(b"{}".to_vec()),
        };
        w.write();
        assert_eq!(std::fs::read(&path).expect("written"), b"{}");
    }

    #[test]
    fn resume_takes_the_larger_of_the_ledger_and_the_event_log() {
        let d = tempfile::tempdir().expect("tempdir");
        // The ledger froze at $0.50 (the disk filled); the event log went on to $3.00.
        let frozen = Ledger {
            run_id: "r".into(),
            spend_dollars: 0.5,
            sessions: 1,
            ..Ledger::default()
        };
        let ev = |spend: f64| {
            let mut e: serde_json::Value = serde_json::json!({
                "id": "r-1", "run_id": "r", "kind": "killed", "message": "m",
                "at": "", "elapsed_seconds": 1.0, "spend_dollars": spend,
                "rate_dollars_per_hour": null, "budget_dollars": null, "host": "h",
                "phase": null, "command": null, "test": false
            });
            e["spend_dollars"] = serde_json::json!(spend);
            e.to_string()
        };
        std::fs::write(
            d.path().join("events.jsonl"),
            format!("{}\n{}\n", ev(1.0), ev(3.0)),
        )
        .expect("events");
        let mut notices = Vec::new();
        let p = prev_with_events("r", d.path(), Some(frozen.clone()), &mut notices);
        assert_eq!(p.map(|p| p.spend_dollars), Some(3.0));
        assert!(
            notices[0].contains("the event log shows $3.00"),
            "{notices:?}"
        );
        // No ledger at all (never written): the event log still counts.
        let p = prev_with_events("r", d.path(), None, &mut Vec::new());
        assert_eq!(p.map(|p| p.spend_dollars), Some(3.0));
        // A ledger ahead of the log is kept as it is.
        let ahead = Ledger {
            spend_dollars: 5.0,
            ..frozen
        };
        let p = prev_with_events("r", d.path(), Some(ahead), &mut Vec::new());
        assert_eq!(p.map(|p| p.spend_dollars), Some(5.0));
    }
}
