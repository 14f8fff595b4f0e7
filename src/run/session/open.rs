//! Everything before the target starts: prices and NVML, the run record, metrics and the
//! endpoint, the notifier, the state, and the `started` event.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use super::Session;
use crate::config::Settings;
use crate::events::EventKind;
use crate::http;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::policy::{Engine, Limits};
use crate::run::live::LiveLine;
use crate::run::record::{RecordError, Recorder};
use crate::run::sinks::Sinks;
use crate::run::start::{self, Pricing, StartError};
use crate::run::state::{Carried, FleetView, Identity, Init, PhaseInfo, RunState, TargetKind};
use crate::run::target::JobTarget;
use crate::spend::SpendMeter;
use crate::supervise::SpawnError;
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
    /// A resumed run already at a ceiling: nothing is started (exit 124).
    #[error("{0}")]
    Spent(String),
}

/// A plan's next phase in the same process continues the run: no "resuming" notice for it.
/// One earlier session is "1 earlier session".
fn tidy_resume_notice(settings: &Settings, notices: &mut Vec<String>) {
    if settings.phase.as_ref().is_some_and(|p| p.continues) {
        notices.retain(|n| !n.starts_with("resuming run "));
    }
    for n in notices.iter_mut() {
        if n.starts_with("resuming run ") {
            *n = n.replace(" over 1 earlier sessions;", " over 1 earlier session;");
        }
    }
}

fn no_gpu_for_agent(why: &str) -> String {
    format!(
        "costguard agent needs NVML to see the GPU processes it guards, and has none here \
         ({why}); nothing was started or recorded. Run it on a GPU node (--nvml-lib PATH for a \
         library elsewhere), or guard one command with costguard [flags] -- CMD"
    )
}

/// Why a resumed run may not start its job at all: a ceiling its earlier sessions reached.
fn spent(s: &Settings, prev: &Ledger) -> Option<String> {
    if let Some(b) = s.max_usd.filter(|b| prev.spend_dollars >= b - 1e-9) {
        return Some(format!(
            "budget already spent: {} of {}",
            format_money(prev.spend_dollars),
            format_money(b)
        ));
    }
    let w = s.max_wall?.as_secs_f64();
    (prev.elapsed_seconds >= w - 1e-3).then(|| {
        format!(
            "wall-clock limit already used: {} of {}",
            crate::units::format_secs(prev.elapsed_seconds),
            crate::units::format_secs(w)
        )
    })
}

/// The watchdogs in words, for status and the report.
fn watchdogs_of(s: &Settings) -> Vec<String> {
    let d = |x: Duration| format_duration(x);
    let mut w = Vec::new();
    if let Some(b) = s.max_usd {
        w.push(format!("usd {}", format_money(b)));
    }
    if let Some(x) = s.max_wall {
        w.push(format!("wall {}", d(x)));
    }
    w.push(match s.idle {
        Some(x) => format!("idle {} below {}%", d(x), s.idle_below),
        None => "idle off".into(),
    });
    w.push(match s.stall {
        Some(x) => format!("stall {}", d(x)),
        None => "stall off".into(),
    });
    if s.max_gpu_mem.is_some() {
        w.push("gpu memory".into());
    }
    if let Some(x) = s.max_host_mem {
        w.push(format!("host memory {}", crate::units::format_bytes(x)));
    }
    w
}

fn min_opt<T: PartialOrd>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b < a { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// The session's limits. `carried` seconds and `spent` dollars of earlier sessions (or
/// phases) count against the run's ceilings; a phase's own caps count from its start.
pub fn limits_of(s: &Settings, carried: f64, spent: f64) -> Limits {
    let run_wall = s
        .max_wall
        .map(|w| w.saturating_sub(Duration::from_secs_f64(carried.max(0.0))));
    let phase = s.phase.as_ref();
    let phase_wall = phase.and_then(|p| p.max_wall);
    let max_wall = min_opt(run_wall, phase_wall);
    // The evidence names the cap that binds: the phase's own, or the run's.
    let wall_source = phase
        .filter(|_| phase_wall.is_some() && max_wall == phase_wall && max_wall != run_wall)
        .map(|p| format!("phase {}'s max_wall", p.name));
    Limits {
        max_usd: min_opt(s.max_usd, phase.and_then(|p| p.max_usd).map(|u| spent + u)),
        max_wall,
        wall_source,
        warn_before: s.warn_before,
        warn_at: s.warn_at.clone(),
        idle: s.idle,
        idle_below: s.idle_below,
        idle_grace: s.idle_grace,
        stall: s.stall,
        max_gpu_mem: s.max_gpu_mem,
        max_host_mem: s.max_host_mem,
        stale_after: s.interval * 3,
        progress_total: s.progress_total,
    }
}

/// The wall time of the session clock's zero: events, the series' $0 point and the ledger's
/// start are all placed from the instant the ceilings count from.
fn wall_of(t0: std::time::Instant) -> SystemTime {
    SystemTime::now()
        .checked_sub(t0.elapsed())
        .unwrap_or_else(SystemTime::now)
}

/// Opens a session: nothing of the target runs yet.
pub async fn open(
    settings: Settings,
    kind: TargetKind,
    label: &[OsString],
    base_id: &str,
    capture: bool,
) -> Result<Session, GuardError> {
    let t0 = crate::timing::session_start();
    let started = match start::prepare(&settings).await {
        // The agent sees its targets through NVML only: without it nothing is recorded.
        Err(StartError::NvmlRequired(_, why)) if kind == TargetKind::Agent => {
            return Err(GuardError::Agent(no_gpu_for_agent(&why)))
        }
        r => r?,
    };
    crate::timing::mark("prepared");
    if kind == TargetKind::Agent && started.gpu.is_none() {
        return Err(GuardError::Agent(no_gpu_for_agent("--gpu none")));
    }
    let started_wall = wall_of(t0);
    let mut notices = Vec::new();
    let claim = Recorder::claim(&settings, base_id, &mut notices).await?;
    crate::timing::mark("claimed");
    tidy_resume_notice(&settings, &mut notices);
    if let (TargetKind::Job, Some(why)) =
        (kind, claim.prev.as_ref().and_then(|p| spent(&settings, p)))
    {
        for n in &notices {
            crate::console::notice(n);
        }
        return Err(GuardError::Spent(format!(
            "run {}: {why}; nothing started (a new --run-id starts a new budget)",
            claim.id
        )));
    }
    let run_id = claim.id.clone();
    let mut rec = Recorder::start(claim)?;
    crate::timing::mark("recorded");
    let record_errors = rec.take_errors();
    notices.extend(started.notices.iter().cloned());
    let prev = rec.prev.clone().unwrap_or_default();
    first_record(&rec, &settings, label, started_wall);
    let channel_names: Vec<&'static str> = settings
        .notify
        .channels
        .iter()
        .map(|c| c.kind.as_str())
        .collect();
    let metrics = Arc::new(Metrics::new(&channel_names));
    let notifier = open_notifier(&settings, &metrics, &mut notices)?;
    let status: crate::status::Published = Arc::new(RwLock::new(None));
    // A resumed run's series goes on from where it was.
    let mut series = crate::series::Series::load(&rec.run_dir)
        .map_or_else(Default::default, crate::series::Series::resumed);
    if series.points.is_empty() && prev.spend_dollars == 0.0 {
        // A new run: its spend line starts at $0 at this instant, not at the first sample.
        let t = started_wall.duration_since(std::time::UNIX_EPOCH);
        series.start = t.ok().map(|d| d.as_secs_f64());
    }
    let series = Arc::new(RwLock::new(series));
    let listening = open_endpoint(&settings, &metrics, &status, &series).await?;
    // The snapshot names the address actually served (the default port may have moved).
    let mut shown = settings.clone();
    shown.listen = listening;
    rec.prepare_config(&shown, label);
    rec.update(|l| l.page_url = listening.map(page_url));
    for n in &notices {
        crate::console::notice_once(n);
    }
    let id = Identity {
        run_id,
        host: crate::events::hostname(),
        command_line: crate::redact::command_line(label),
        started_wall,
        run_dir: Some(rec.run_dir.clone()),
        notify_channels: channel_names,
        page_url: listening.map(page_url),
    };
    rec.update(|l| l.host = id.host.clone());
    let state = RunState::new(init_of(&settings, kind, id, &started, &prev, capture, t0));
    let sinks = Sinks::new(metrics, status, series, rec, notifier);
    let live = LiveLine::new(settings.quiet);
    let mut s = Session {
        settings,
        state,
        sinks,
        gpu: started.gpu.clone(),
        live,
        record_errors,
        probe: started.probe.clone(),
        release: started.release.clone(),
        kill_started: None,
    };
    s.announce(&started.pricing, listening);
    crate::timing::mark("opened");
    Ok(s)
}

/// The state's starting point: limits, the meter carried over, the phase, the fleet.
fn init_of(
    settings: &Settings,
    kind: TargetKind,
    id: Identity,
    started: &start::Started,
    prev: &Ledger,
    capture: bool,
    t0: std::time::Instant,
) -> Init {
    let rate = match &started.pricing {
        Pricing::Fixed { per_hour, .. } => *per_hour,
        _ => 0.0,
    };
    Init {
        t0,
        id,
        kind,
        engine: Engine::new(
            limits_of(settings, prev.elapsed_seconds, prev.spend_dollars),
            SpendMeter::new(prev.spend_dollars, rate),
        ),
        pricing: started.pricing.clone(),
        visible: started.visible.clone(),
        carried: Carried {
            spend: prev.spend_dollars,
            wasted: prev.wasted_dollars,
            elapsed: prev.elapsed_seconds,
        },
        seq: prev.events,
        phase: settings.phase.as_ref().map(|p| PhaseInfo {
            name: p.name.clone(),
            index: p.index,
            total: p.total,
            expected: p.expected.zip(p.expected_after),
            step_key: p.step_key.clone(),
            step_values: p.step_values.clone(),
            step: None,
            step_times: Vec::new(),
        }),
        fleet: settings.fleet.as_ref().map(|f| FleetView {
            max_usd: f.max_usd,
            source: format!(
                "{} at {}",
                f.query(),
                crate::redact::text(&f.prometheus_url)
            ),
            total: None,
            error: None,
        }),
        warn_signal: settings.warn_signal,
        record_grace: settings.record_grace,
        tracks_progress: capture || settings.heartbeat_file.is_some(),
        whole_gpus: !settings.shared_gpus,
        exit_when_done: settings.exit_when_done,
        idle_box: settings.idle_box,
    }
}

/// What the ledger says before anything runs, and the config snapshot.
fn first_record(rec: &Recorder, settings: &Settings, label: &[OsString], wall: SystemTime) {
    rec.update(|l| {
        l.command = match &settings.plan {
            Some(p) if settings.phase.is_some() => format!("plan {}", p.display()),
            _ => crate::redact::command_line(label),
        };
        if l.started_at.is_empty() {
            l.started_at = crate::events::rfc3339(wall);
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
            l.phase_max_wall_seconds = p.max_wall.map(|w| w.as_secs_f64());
            l.phase_elapsed_seconds = Some(0.0);
            l.step = None;
        }
        l.run_max_wall_seconds = settings.max_wall.map(|w| w.as_secs_f64());
        l.pings_phase_ends = settings
            .notify
            .channels
            .iter()
            .any(|c| c.on.takes("phase-completed"));
    });
}

/// The page's address for a bound socket.
pub fn page_url(a: SocketAddr) -> String {
    format!("http://{a}/")
}

fn open_notifier(
    settings: &Settings,
    metrics: &Arc<Metrics>,
    notices: &mut Vec<String>,
) -> Result<Option<Notifier>, GuardError> {
    let has_outbox = settings.state_dir.join("outbox").is_dir();
    if settings.notify.channels.is_empty() && !has_outbox {
        return Ok(None);
    }
    Notifier::start(
        settings.notify.clone(),
        &settings.state_dir,
        metrics.clone(),
        notices,
    )
    .map(Some)
    .map_err(|source| GuardError::Outbox {
        dir: settings.state_dir.join("outbox").display().to_string(),
        source,
    })
}

/// How many ports after the default one are tried when it is taken (several jobs on one
/// node, e.g. Slurm steps sharing a machine): 9947–9962, a range a Prometheus file_sd or
/// static config can list.
const DEFAULT_PORT_SPAN: u16 = 16;

/// The read-only endpoint. An explicit address that is taken is an error; the default one
/// moves to the next free port of its span, and past it is a notice.
async fn open_endpoint(
    settings: &Settings,
    metrics: &Arc<Metrics>,
    status: &crate::status::Published,
    series: &Arc<RwLock<crate::series::Series>>,
) -> Result<Option<SocketAddr>, GuardError> {
    let Some(addr) = settings.listen else {
        return Ok(None);
    };
    let shared = http::Shared {
        metrics: metrics.clone(),
        status: status.clone(),
        series: series.clone(),
    };
    if settings.listen_explicit {
        return http::serve(addr, shared)
            .await
            .map(Some)
            .map_err(|source| GuardError::Listen {
                addr: addr.to_string(),
                source,
            });
    }
    let mut first_err = None;
    for k in 0..DEFAULT_PORT_SPAN {
        let Some(port) = addr.port().checked_add(k) else {
            break;
        };
        let a = SocketAddr::new(addr.ip(), port);
        match http::serve(a, shared.clone()).await {
            Ok(bound) => {
                if k > 0 {
                    crate::console::notice(format!(
                        "{addr} is taken (another costguard on this machine?); serving on {bound}"
                    ));
                }
                return Ok(Some(bound));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err = Some(e);
                break;
            }
        }
    }
    let e = first_err.map(|e| e.to_string()).unwrap_or_default();
    crate::console::notice(format!(
        "not serving metrics on {addr} ({e}); use --listen to pick another address"
    ));
    Ok(None)
}

impl Session {
    /// The `started` line and event.
    fn announce(&mut self, pricing: &Pricing, listening: Option<SocketAddr>) {
        let rate_text = match pricing {
            Pricing::Fixed {
                per_hour, source, ..
            } => {
                format!("{}/h from {source}", format_money(*per_hour))
            }
            Pricing::Energy { per_kwh } => {
                format!("GPU energy at {}/kWh", format_money(*per_kwh))
            }
            Pricing::Unknown => "rate unknown (spend not metered)".into(),
        };
        let phase_text = self
            .state
            .phase()
            .map(|p| format!(" phase {}", p.label()))
            .unwrap_or_default();
        let mut msg = format!(
            "run {}{phase_text} started: {rate_text}",
            self.state.id().run_id
        );
        if let Some(b) = self.settings.max_usd {
            msg += &format!(", budget {}", format_money(b));
        }
        if let Some(w) = self.settings.max_wall {
            msg += &format!(", wall {}", format_duration(w));
        }
        if let Some(a) = listening {
            msg += &format!(", page {} (metrics: /metrics)", page_url(a));
        }
        crate::console::say(&msg);
        self.emit(EventKind::Started, None, msg);
    }

    /// The job's identity on record, for a restart to find and kill.
    pub(super) fn note_job(&self, j: &JobTarget) {
        if let Some(r) = &self.sinks.recorder {
            r.update(|l| {
                l.holder = crate::ledger::Proc::of(j.job.holder_pid);
                l.pgid = Some(j.job.holder_pid);
                l.cgroup = j.job.leaf.as_ref().map(|x| x.dir.clone());
            });
        }
    }
}
