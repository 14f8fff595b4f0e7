//! The run loop: timers, samples, progress, the holder's messages and signals become events;
//! the pure policy decides; the loop acts (warn, kill) and reports.

use std::collections::HashSet;
use std::ffi::OsString;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use serde_json::json;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

use super::ending::{conclude, finish, limits_of, watchdogs_of};
use super::live::LiveLine;
use super::output::{self, LineJudge, LineProgress, Tail};
use super::record::{RecordError, Recorder};
use super::sampler::{self, SampleMsg};
use super::start::{self, Pricing, StartError};
use super::state::State;
use crate::config::Settings;
use crate::events::{EventKind, KillReason};
use crate::exit::{self, JobStatus};
use crate::http;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::policy::{Decision, Engine};
use crate::spend::SpendMeter;
use crate::supervise::{HolderMsg, Job, SpawnError};
use crate::telemetry::HostSample;
use crate::units::{format_duration, format_money};

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("failed to listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the notification outbox {dir} (set --state-dir or COSTGUARD_STATE_DIR): {source}")]
    Outbox {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("{0}")]
    Plan(String),
    #[error("{0}")]
    Agent(String),
    #[error("nothing to run: give the command after `--`, e.g. costguard --max-wall 1h -- python train.py")]
    NoCommand,
}

/// Everything before the job starts: prices and NVML, the run record, metrics and the
/// endpoint, notifications, the state and the `started` event. Shared by the guard and the
/// agent.
pub(super) async fn open(
    settings: &Settings,
    command: &[OsString],
    base_id: &str,
    capture: bool,
) -> Result<(State, start::Started), GuardError> {
    let started = start::prepare(settings).await?;
    let started_wall = SystemTime::now();
    let mut record_notices = Vec::new();
    let (run_id, rec) = Recorder::open(settings, base_id, &mut record_notices)?;
    let prev = rec.prev.clone().unwrap_or_default();
    rec.update(|l| {
        l.command = match &settings.plan {
            Some(p) if settings.phase.is_some() => format!("plan {}", p.display()),
            _ => crate::redact::command_line(command),
        };
        if l.started_at.is_empty() {
            l.started_at = crate::events::rfc3339(started_wall);
        }
        l.on_exit = settings
            .on_exit
            .as_deref()
            .map(|c| crate::redact::text(c).into_owned());
        l.watchdogs = watchdogs_of(settings);
        l.no_preflight = settings.no_preflight;
        if let Some(p) = &settings.phase {
            l.phase = Some(p.name.clone());
            l.phase_index = Some(p.index);
            l.phases_total = Some(p.total);
        }
    });
    super::record::write_config(&rec.run_dir, settings, command);
    let host = crate::events::hostname();
    rec.update(|l| l.host = host.clone());
    let rate = match &started.pricing {
        Pricing::Fixed { per_hour, .. } => *per_hour,
        _ => 0.0,
    };
    let channel_names: Vec<&str> = settings
        .notify
        .channels
        .iter()
        .map(|c| c.kind.as_str())
        .collect();
    let metrics = Arc::new(Metrics::new(&channel_names));
    let mut notify_notices = Vec::new();
    let has_outbox = settings.state_dir.join("outbox").is_dir();
    let notifier = if settings.notify.channels.is_empty() && !has_outbox {
        None
    } else {
        Some(
            Notifier::start(
                settings.notify.clone(),
                &settings.state_dir,
                metrics.clone(),
                settings.quiet,
                &mut notify_notices,
            )
            .map_err(|source| GuardError::Outbox {
                dir: settings.state_dir.join("outbox").display().to_string(),
                source,
            })?,
        )
    };
    let status = Arc::new(RwLock::new(json!({})));
    let mut listening = None;
    if let Some(addr) = settings.listen {
        match http::serve(addr, http::Shared { metrics: metrics.clone(), status: status.clone() }).await {
            Ok(a) => listening = Some(a),
            Err(source) if settings.listen_explicit => {
                return Err(GuardError::Listen { addr: addr.to_string(), source })
            }
            Err(e) => eprintln!("costguard: notice: not serving metrics on {addr} ({e}); use --listen to pick another address"),
        }
    }
    let quiet = settings.quiet;
    if !quiet {
        for n in record_notices
            .iter()
            .chain(&started.notices)
            .chain(&notify_notices)
        {
            eprintln!("costguard: notice: {n}");
        }
    }

    let t0 = Instant::now();
    let mut st = State {
        t0,
        started_wall,
        run_id,
        host,
        engine: Engine::new(
            limits_of(settings, prev.elapsed_seconds, prev.spend_dollars),
            SpendMeter::new(prev.spend_dollars, rate),
        ),
        metrics,
        status,
        pricing: started.pricing.clone(),
        visible: started.visible.clone(),
        seq: prev.events,
        recent: Vec::new(),
        last_energy: None,
        telemetry_error: None,
        lost: HashSet::new(),
        last_gpus: Vec::new(),
        last_host: HostSample::default(),
        job_pids: HashSet::new(),
        command_line: crate::redact::command_line(command),
        notifier,
        notify_channels: settings
            .notify
            .channels
            .iter()
            .map(|c| c.kind.as_str())
            .collect(),
        quiet,
        tracks_progress: capture || settings.heartbeat_file.is_some(),
        rec: Some(rec),
        recorded_at: Duration::ZERO,
        wasted_carried: prev.wasted_dollars,
        spent_carried: prev.spend_dollars,
        phase_name: settings
            .phase
            .as_ref()
            .map(|p| format!("{}/{} {}", p.index + 1, p.total, p.name)),
        phase_expected: settings
            .phase
            .as_ref()
            .and_then(|p| Some((p.expected?, p.expected_after?))),
        elapsed_carried: prev.elapsed_seconds,
        longest_idle: 0.0,
        waiting_on: None,
        fleet_total: None,
        fleet_error: None,
    };
    let rate_text = match &started.pricing {
        Pricing::Fixed { per_hour, source } => {
            format!("{}/h from {source}", format_money(*per_hour))
        }
        Pricing::Energy { per_kwh } => format!("GPU energy at {}/kWh", format_money(*per_kwh)),
        Pricing::Unknown => "rate unknown (spend not metered)".into(),
    };
    let phase_text = settings
        .phase
        .as_ref()
        .map(|p| format!(" phase {}/{} {}", p.index + 1, p.total, p.name))
        .unwrap_or_default();
    let mut start_msg = format!("run {}{phase_text} started: {rate_text}", st.run_id);
    if let Some(b) = settings.max_usd {
        start_msg += &format!(", budget {}", format_money(b));
    }
    if let Some(w) = settings.max_wall {
        start_msg += &format!(", wall {}", format_duration(w));
    }
    if let Some(a) = listening {
        start_msg += &format!(", metrics on http://{a}/metrics");
    }
    if !st.quiet {
        eprintln!("costguard: {start_msg}");
    }
    st.emit(EventKind::Started, None, start_msg);
    Ok((st, started))
}

/// Forwards TERM, INT and HUP to the loop; the second one sets `force` (KILL now).
fn watch_signals(tx: mpsc::UnboundedSender<Signal>, force: watch::Sender<bool>) {
    let kinds = [
        (SignalKind::terminate(), Signal::SIGTERM),
        (SignalKind::interrupt(), Signal::SIGINT),
        (SignalKind::hangup(), Signal::SIGHUP),
    ];
    let count = Arc::new(Mutex::new(0u32));
    let force = Arc::new(force);
    for (kind, sig) in kinds {
        let Ok(mut stream) = signal(kind) else {
            continue;
        };
        let (tx, count, force) = (tx.clone(), count.clone(), force.clone());
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                let n = count.lock().map(|mut c| {
                    *c += 1;
                    *c
                });
                if n.unwrap_or(1) >= 2 {
                    let _ = force.send(true);
                }
                let _ = tx.send(sig);
            }
        });
    }
}

/// Runs `command` under the guard; returns the exit code to leave with.
pub async fn run(settings: Settings, command: Vec<OsString>) -> Result<u8, GuardError> {
    run_session(settings, command).await.map(|(code, _)| code)
}

/// One session of a run (the whole run, or one phase of a plan). Returns the exit code and
/// whether the run ended with it (a plan goes on to its next phase otherwise).
pub async fn run_session(
    settings: Settings,
    command: Vec<OsString>,
) -> Result<(u8, bool), GuardError> {
    if command.is_empty() {
        return Err(GuardError::NoCommand);
    }
    let base_id = start::default_run_id(&command, SystemTime::now());
    let capture = settings.needs_output();
    let (mut st, started) = open(&settings, &command, &base_id, capture).await?;
    let quiet = st.quiet;
    let mut job = Job::spawn(&command, capture, true)?;
    st.rec.as_ref().expect("open").update(|l| {
        l.holder = crate::ledger::Proc::of(job.holder_pid);
        l.pgid = Some(job.holder_pid);
        l.cgroup = job.leaf.as_ref().map(|x| x.dir.clone());
    });

    // Progress from output and heartbeat.
    let (progress_tx, mut progress_rx) = mpsc::unbounded_channel::<LineProgress>();
    let tail = Tail::default();
    let judge = Arc::new(Mutex::new(LineJudge::new(settings.progress_regex.clone())));
    let log = st
        .rec
        .as_ref()
        .filter(|_| capture && std::env::var_os("COSTGUARD_OUTPUT_LOG_IS_STDOUT").is_none())
        .and_then(|r| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(r.run_dir.join("output.log"))
                .ok()
        })
        .map(|f| Arc::new(Mutex::new(f)));
    if let Some(out) = job.stdout.take() {
        tokio::spawn(output::pump(
            out,
            tokio::io::stdout(),
            judge.clone(),
            tail.clone(),
            progress_tx.clone(),
            log.clone(),
        ));
    }
    if let Some(err) = job.stderr.take() {
        tokio::spawn(output::pump(
            err,
            tokio::io::stderr(),
            judge.clone(),
            tail.clone(),
            progress_tx.clone(),
            log.clone(),
        ));
    }
    if let Some(path) = settings.heartbeat_file.clone() {
        let tx = progress_tx.clone();
        // Polled several times per stall window, so a beat is never seen too late to count.
        let every = settings
            .interval
            .min(Duration::from_secs(1))
            .min(settings.stall.map_or(Duration::MAX, |s| s / 4))
            .max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut last = None;
            loop {
                if let Ok(m) = tokio::fs::metadata(&path).await.and_then(|m| m.modified()) {
                    if last.is_some_and(|l| m > l) || (last.is_none() && m > st.started_wall) {
                        let _ = tx.send(LineProgress {
                            label: format!("heartbeat {}", path.display()),
                            step: None,
                        });
                    }
                    last = Some(m);
                }
                tokio::time::sleep(every).await;
            }
        });
    }
    drop(progress_tx);

    let (_root_tx, root_rx) = watch::channel(job.holder_pid);
    let (sample_tx, mut sample_rx) = mpsc::channel::<SampleMsg>(4);
    let sampler = tokio::spawn(sampler::run(
        started.gpu.clone(),
        settings.interval,
        root_rx,
        sample_tx,
    ));
    let (sig_tx, mut sig_rx) = mpsc::unbounded_channel();
    let (force_tx, mut force_rx) = watch::channel(false);
    watch_signals(sig_tx, force_tx);
    let mut msgs = job.take_msgs();
    let (fleet_tx, mut fleet_rx) = mpsc::unbounded_channel();
    let fleet_task = settings
        .fleet
        .clone()
        .map(|f| tokio::spawn(crate::fleet::poll(f, fleet_tx)));

    let mut live = LiveLine::new(quiet);
    let mut meters = tokio::time::interval(Duration::from_millis(200));
    meters.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut redraw = tokio::time::interval(Duration::from_secs(1));
    redraw.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut leader: Option<JobStatus> = None;
    let mut kill: Option<(KillReason, String, Signal)> = None;
    let mut progress_open = true;
    let mut holder_gone = false;
    while kill.is_none() && leader.is_none() && !holder_gone {
        let wake = st.engine.next_wakeup(st.now()).map(|d| st.t0 + d);
        let decisions: Vec<Decision> = tokio::select! {
            biased;
            Some(sig) = sig_rx.recv() => {
                kill = Some((KillReason::Signal, format!("signal: costguard received {}; forwarded to the job", sig.as_str()), sig));
                Vec::new()
            }
            _ = async { match wake { Some(w) => tokio::time::sleep_until(w.into()).await, None => std::future::pending().await } } => {
                st.engine.tick(st.now())
            }
            m = msgs.recv() => {
                match m {
                    Some(HolderMsg::Ended(s)) => leader = Some(s),
                    Some(HolderMsg::Warn(w)) => eprintln!("costguard: notice: holder: {w}"),
                    Some(HolderMsg::Spawned(pid)) => tracing::debug!(pid, "job leader started"),
                    None => holder_gone = true,
                }
                Vec::new()
            }
            p = progress_rx.recv(), if progress_open => {
                match p {
                    Some(p) => st.engine.on_progress(st.now(), p.label, p.step),
                    None => progress_open = false,
                }
                Vec::new()
            }
            Some(s) = sample_rx.recv() => st.on_sample(s),
            Some(f) = fleet_rx.recv(), if fleet_task.is_some() => match &settings.fleet {
                Some(fs) => st.on_fleet(f, fs),
                None => Vec::new(),
            },
            _ = meters.tick() => {
                st.refresh_meters();
                Vec::new()
            }
            _ = redraw.tick(), if live.is_some() => {
                if let Some(l) = live.as_mut() {
                    l.draw(&st.live_text(st.now()));
                }
                Vec::new()
            }
        };
        for d in decisions {
            match d {
                Decision::Warn {
                    reason,
                    message,
                    signal,
                } => {
                    if let (true, Some(sig)) = (signal, settings.warn_signal) {
                        let n = job.signal_all(sig).len();
                        st.emit(
                            EventKind::Warning,
                            Some(reason),
                            format!("{message} ({} to {n} processes)", sig.as_str()),
                        );
                    } else {
                        st.emit(EventKind::Warning, Some(reason), message);
                    }
                }
                Decision::Idle { message } => {
                    st.emit(EventKind::Idle, Some("idle"), message);
                }
                Decision::Stalled { message } => {
                    st.emit(EventKind::Stalled, Some("stall"), message);
                }
                Decision::Kill { reason, evidence } => {
                    kill = Some((reason, evidence, Signal::SIGTERM))
                }
            }
        }
    }
    drop(live); // gives the terminal's bottom row back before the kill and summary lines
    let grace = settings.kill_grace;
    let mut killed_by: Option<(KillReason, String)> = None;
    if let Some((reason, evidence, first)) = kill {
        st.metrics.kills.with_label_values(&[reason.as_str()]).inc();
        st.emit(EventKind::Killed, Some(reason.as_str()), evidence.clone());
        st.record_kill(reason.as_str(), &evidence, tail.snapshot());
        let report = job.terminate(first, grace, &mut force_rx).await;
        st.job_pids.extend(report.pids.iter().copied());
        tracing::info!(
            reason = reason.as_str(),
            signalled = report.signalled,
            escalated_to_kill = report.escalated,
            took_ms = report.took.as_secs_f64() * 1000.0,
            "the job's tree is gone"
        );
        if !report.survivors.is_empty() {
            st.emit(
                EventKind::AgentError,
                Some("survivors"),
                format!(
                    "{} processes of the job survived the kill: {:?}",
                    report.survivors.len(),
                    report.survivors
                ),
            );
        }
        killed_by = Some((reason, evidence));
    } else if leader.is_some() && !job.gone() {
        // The leader is done; whatever it left behind goes too.
        let left = job.members();
        if !left.is_empty() {
            eprintln!(
                "costguard: notice: the job's leader exited; ending {} leftover processes",
                left.len()
            );
            let _ = job.terminate(Signal::SIGTERM, grace, &mut force_rx).await;
        } else if tokio::time::timeout(Duration::from_millis(200), job.wait_gone())
            .await
            .is_err()
        {
            // Nothing seemed left, yet the holder (which exits once it has reaped its last
            // child) is still there: something was missed; end it the long way.
            let _ = job.terminate(Signal::SIGTERM, grace, &mut force_rx).await;
        }
    }
    job.wait_gone().await;
    job.cleanup();
    // The leader's status may still be in the pipe.
    if leader.is_none() {
        let deadline = tokio::time::sleep(Duration::from_secs(2));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                m = msgs.recv() => match m {
                    Some(HolderMsg::Ended(s)) => { leader = Some(s); break; }
                    Some(_) => continue,
                    None => break,
                },
                _ = &mut deadline => break,
            }
        }
    }
    sampler.abort();
    if let Some(t) = &fleet_task {
        t.abort();
    }

    if let (Some((reason, _)), Some(gpu)) = (&killed_by, &started.gpu) {
        if reason.is_ceiling() {
            if let Ok(gpus) = gpu.sample_when_free(Duration::from_secs(2)).await {
                for g in &gpus {
                    for p in g.procs.iter().flatten() {
                        if st.job_pids.contains(&(p.pid as i32)) && p.used_bytes.unwrap_or(1) > 0 {
                            st.emit(
                                EventKind::AgentError,
                                Some("gpu-not-freed"),
                                format!(
                                    "after the kill, pid {} still holds {} on GPU {}",
                                    p.pid,
                                    p.used_bytes
                                        .map(crate::units::format_bytes)
                                        .unwrap_or_else(|| "memory".into()),
                                    g.index
                                ),
                            );
                        }
                    }
                }
            }
        }
    }

    let now = st.now();
    let spend = st.engine.spend(now);
    let budget = settings
        .max_usd
        .map(|b| format!(" of {}", format_money(b)))
        .unwrap_or_default();
    let wasted = st.engine.wasted(now);
    let wasted_text = if wasted > 0.0 {
        format!(", wasted {}", format_money(wasted))
    } else {
        String::new()
    };
    let spent = if st.pricing == Pricing::Unknown {
        "spend unknown".to_string()
    } else {
        format!("spent {}{budget}", format_money(spend))
    };
    let (code, outcome, detail) = match (&killed_by, leader) {
        (Some((reason, evidence)), status) if reason.is_ceiling() => {
            let _ = status;
            (exit::CEILING_KILLED, "killed", evidence.clone())
        }
        (Some((_, evidence)), Some(status)) => (
            status.code(),
            "stopped",
            format!("{evidence}; job {}", status.describe()),
        ),
        (Some((_, evidence)), None) => (exit::OWN_FAILURE, "stopped", evidence.clone()),
        (None, Some(s @ JobStatus::Exited(0))) => (s.code(), "completed", s.describe()),
        (None, Some(s)) => (s.code(), "failed", s.describe()),
        (None, None) => (
            exit::OWN_FAILURE,
            "failed",
            "the holder process was lost; the job's status is unknown".into(),
        ),
    };
    let code = finish(
        &st,
        code,
        outcome,
        &detail,
        now,
        &spent,
        &wasted_text,
        &tail,
        &command,
        leader,
    );
    Ok(conclude(&mut st, &settings, outcome, code, &detail).await)
}
