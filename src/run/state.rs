//! `RunState`: what the run knows, and the one place where a loop event becomes actions.
//!
//! Pure: `handle(event, now)` reads no clock, file or socket and performs nothing; it updates
//! the policy engine, the telemetry cache, carried spend, the fleet reading and the phase, and
//! answers with [`Action`]s for the session and its sinks. `now` is the run's monotonic time
//! since this session started, so tests drive hours of a run on simulated time.
//!
//! The whole session is this one machine ([`Stage`]): running, an agent armed at a ceiling,
//! then the ending (`closing.rs`: settling, killing, concluding, releasing, lingering) whose
//! effects' results come back as `LoopEvent::Done`; the verdict and a plan's verdict are
//! `ending.rs`. Every event of the run is made here, on the sequence seeded from its log.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;

use super::action::{Action, Ending, LoopEvent};
use super::sampler::SampleMsg;
use super::start::{Pricing, RateOrigin};
use super::telemetry_cache::TelemetryCache;
use crate::events::{rfc3339, Event, EventKind, KillReason};
use crate::fleet::FleetMsg;
use crate::policy::{Decision, Engine, Observation};
use crate::units::format_money;

mod armed;
mod closing;
mod ending;
pub use armed::Stage;
#[cfg(test)]
pub use closing::STOPPED_TOGETHER;
pub use ending::{EndRules, PlanRules, ReleaseRules, Verdict};

pub use crate::status::RateView;

/// What is guarded: the wrapped job's tree, or the agent's GPU processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Job,
    Agent,
}

/// Who and what the run is; fixed for the session.
#[derive(Debug, Clone)]
pub struct Identity {
    pub run_id: String,
    pub host: String,
    /// The job's command line, secrets masked.
    pub command_line: String,
    pub started_wall: SystemTime,
    pub run_dir: Option<PathBuf>,
    /// Names of the configured channels (never their URLs or keys).
    pub notify_channels: Vec<&'static str>,
    /// The page's address as served (`http://ADDR/`), when there is an endpoint.
    pub page_url: Option<String>,
}

/// A plan's phase.
#[derive(Debug, Clone)]
pub struct PhaseInfo {
    pub name: String,
    pub index: usize,
    pub total: usize,
    /// (expected duration of this phase, expected seconds of the phases after it).
    pub expected: Option<(Duration, f64)>,
    /// `steps = { KEY = [VALUES] }`: the key and its values.
    pub step_key: Option<String>,
    pub step_values: Vec<String>,
    /// The step running (1-based) and when it started.
    pub step: Option<(usize, Duration)>,
    /// How long each finished step took, in seconds.
    pub step_times: Vec<f64>,
}

impl PhaseInfo {
    /// "i/n name", as status shows it.
    pub fn label(&self) -> String {
        format!("{}/{} {}", self.index + 1, self.total, self.name)
    }

    /// The step running, in words: "seed 2 of 3" (or "seed 42, 2 of 3").
    pub fn step_text(&self) -> Option<String> {
        let key = self.step_key.as_deref()?;
        let (n, _) = self.step?;
        let total = self.step_values.len();
        let value = self.step_values.get(n.checked_sub(1)?)?;
        Some(if *value == n.to_string() {
            format!("{key} {value} of {total}")
        } else {
            format!("{key} {value}, {n} of {total}")
        })
    }

    /// The job started step `n`: the steps before it are done (a poll that missed one
    /// shares the time between them).
    pub fn on_step(&mut self, n: usize, now: Duration) {
        if let Some((m, t0)) = self.step {
            if n > m {
                let each = now.saturating_sub(t0).as_secs_f64() / (n - m) as f64;
                self.step_times.extend(std::iter::repeat_n(each, n - m));
            }
        }
        // The job writes step 1 first thing: it began with the phase, not at the poll.
        let start = if self.step.is_none() && n == 1 {
            Duration::ZERO
        } else {
            now
        };
        self.step = Some((n, start));
    }

    /// What is left of this phase: per step, the mean of the steps done (else the
    /// expected duration shared among the steps), less the running step's time so far.
    pub fn remaining(&self, now: Duration) -> Option<Duration> {
        let (this, _) = self.expected?;
        let total = self.step_values.len();
        let Some((n, t0)) = self.step.filter(|_| total > 0) else {
            return Some(this.saturating_sub(now));
        };
        let per = if self.step_times.is_empty() {
            this.as_secs_f64() / total as f64
        } else {
            self.step_times.iter().sum::<f64>() / self.step_times.len() as f64
        };
        let left =
            per * (total + 1).saturating_sub(n) as f64 - now.saturating_sub(t0).as_secs_f64();
        Some(Duration::from_secs_f64(left.max(0.0)))
    }
}

/// What earlier sessions (or phases) of this run used.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Carried {
    pub spend: f64,
    pub wasted: f64,
    pub elapsed: f64,
}

/// The fleet budget as this run reads it.
#[derive(Debug, Clone)]
pub struct FleetView {
    pub max_usd: f64,
    /// The query and where it is asked, for the kill evidence (URL masked).
    pub source: String,
    pub total: Option<f64>,
    pub error: Option<String>,
}

/// Everything `RunState::new` needs.
pub struct Init {
    pub t0: Instant,
    pub id: Identity,
    pub kind: TargetKind,
    pub engine: Engine,
    pub pricing: Pricing,
    pub visible: Vec<u32>,
    pub carried: Carried,
    /// The event sequence number to continue from (a resumed run's event count).
    pub seq: u64,
    pub phase: Option<PhaseInfo>,
    pub fleet: Option<FleetView>,
    pub warn_signal: Option<Signal>,
    /// How long the record may go unwritten before the run is killed (None: never).
    pub record_grace: Option<Duration>,
    /// Whether a progress source exists (output rules or a heartbeat).
    pub tracks_progress: bool,
    /// GPUs are the job's alone (see `TelemetryCache::whole_gpus`).
    pub whole_gpus: bool,
    /// The agent ends, completed, once every target it saw has ended by itself.
    pub exit_when_done: bool,
    /// The agent releases the box once it has been idle this long (`--idle-box`).
    pub idle_box: Option<Duration>,
}

/// How the run behaves, fixed for the session.
#[derive(Debug, Clone, Copy)]
struct Conduct {
    warn_signal: Option<Signal>,
    record_grace: Option<Duration>,
    tracks_progress: bool,
    exit_when_done: bool,
}

/// The events so far: the sequence number and the recent ones for /status.
#[derive(Debug, Clone, Default)]
struct EventLog {
    seq: u64,
    recent: VecDeque<Event>,
}

const RECENT: usize = 50;

pub struct RunState {
    t0: Instant,
    id: Identity,
    kind: TargetKind,
    engine: Engine,
    pricing: Pricing,
    telemetry: TelemetryCache,
    carried: Carried,
    phase: Option<PhaseInfo>,
    fleet: Option<FleetView>,
    conduct: Conduct,
    events: EventLog,
    /// Every pid ever seen as the target's (for the "GPU freed?" check after a kill).
    job_pids: HashSet<i32>,
    marks: Marks,
    /// What the box said about itself, once it has.
    cloud: Option<crate::cloud::Detection>,
    /// The provider's reclaim notice, once one came.
    preempted: Option<String>,
    /// The forgotten-box watch of the agent.
    idle_box: Option<super::idle_box::IdleBox>,
    /// What the ending needs beyond this session (the run's ceilings, the plan).
    rules: EndRules,
    /// The agent's targets at the last sample (the job always has its tree).
    targets_now: usize,
    /// Where the session is: running, armed, or a stage of its ending.
    stage: Stage,
    /// What the ending has learned so far.
    closing: closing::Closing,
}

/// The run's own bookkeeping: when spend was last put on record, the longest idle streak,
/// and the health of the record itself.
#[derive(Debug, Clone, Default)]
struct Marks {
    recorded_at: Duration,
    longest_idle: f64,
    record_errors: u64,
    record_error: Option<String>,
    /// When the current streak of failed record writes began.
    record_failing_since: Option<Duration>,
}

impl RunState {
    pub fn new(i: Init) -> RunState {
        let idle_below = i.engine.limits().idle_below;
        RunState {
            t0: i.t0,
            id: i.id,
            kind: i.kind,
            engine: i.engine,
            pricing: i.pricing,
            telemetry: TelemetryCache::new(i.visible, i.whole_gpus),
            carried: i.carried,
            phase: i.phase,
            fleet: i.fleet,
            conduct: Conduct {
                warn_signal: i.warn_signal,
                record_grace: i.record_grace,
                tracks_progress: i.tracks_progress,
                exit_when_done: i.exit_when_done,
            },
            events: EventLog {
                seq: i.seq,
                recent: VecDeque::new(),
            },
            job_pids: HashSet::new(),
            marks: Marks::default(),
            cloud: None,
            preempted: None,
            idle_box: i
                .idle_box
                .map(|d| super::idle_box::IdleBox::new(d, idle_below)),
            rules: EndRules::default(),
            targets_now: 0,
            stage: Stage::Running,
            closing: closing::Closing::default(),
        }
    }

    /// What the ending needs to know beyond this session, given once after the start.
    pub fn set_rules(&mut self, rules: EndRules) {
        self.rules = rules;
    }

    pub fn t0(&self) -> Instant {
        self.t0
    }
    pub fn id(&self) -> &Identity {
        &self.id
    }
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
    #[cfg(test)]
    pub fn kind(&self) -> TargetKind {
        self.kind
    }
    #[cfg(test)]
    pub fn pricing(&self) -> &Pricing {
        &self.pricing
    }
    /// Where the rate comes from and the box, as /status, the metrics and the ledger say it.
    pub fn rate_view(&self) -> RateView {
        let (source, text) = match &self.pricing {
            Pricing::Fixed {
                per_hour,
                source,
                origin,
            } => (
                origin.as_str(),
                Some(format!("{}/h from {source}", format_money(*per_hour))),
            ),
            Pricing::Energy { per_kwh } => (
                "energy",
                Some(format!("GPU energy at {}/kWh", format_money(*per_kwh))),
            ),
            Pricing::Unknown => ("none", None),
        };
        let info = self
            .cloud
            .as_ref()
            .map(|d| d.info.clone())
            .unwrap_or_default();
        RateView {
            rate_source: source,
            rate_text: text,
            provider: info.provider.map(|p| p.as_str()),
            instance_type: info.instance_type,
            region: info.region,
            spot: info.provider.map(|_| info.spot),
            detected: self.cloud.is_some(),
        }
    }

    /// Whether the agent ended because the box was idle (it is then released).
    pub fn idle_box_fired(&self) -> bool {
        self.idle_box.as_ref().is_some_and(|b| b.fired())
    }

    /// The provider's reclaim notice, if one came.
    pub fn preempted(&self) -> Option<&str> {
        self.preempted.as_deref()
    }
    pub fn priced(&self) -> bool {
        self.pricing != Pricing::Unknown
    }
    pub fn telemetry(&self) -> &TelemetryCache {
        &self.telemetry
    }
    pub fn carried(&self) -> Carried {
        self.carried
    }
    pub fn phase(&self) -> Option<&PhaseInfo> {
        self.phase.as_ref()
    }
    pub fn fleet(&self) -> Option<&FleetView> {
        self.fleet.as_ref()
    }
    pub fn tracks_progress(&self) -> bool {
        self.conduct.tracks_progress
    }
    pub fn recent(&self) -> impl DoubleEndedIterator<Item = &Event> {
        self.events.recent.iter()
    }
    pub fn job_pids(&self) -> &HashSet<i32> {
        &self.job_pids
    }
    pub fn longest_idle(&self) -> f64 {
        self.marks.longest_idle
    }
    /// Failed writes of the run record so far.
    pub fn record_errors(&self) -> u64 {
        self.marks.record_errors
    }

    /// Pids reached by the kill count as the job's too.
    pub fn note_pids(&mut self, pids: &[i32]) {
        self.job_pids.extend(pids.iter().copied());
    }

    /// The one way an event is made: a stable id, the run's numbers at `now`, masked text.
    pub fn event(
        &mut self,
        kind: EventKind,
        reason: Option<&str>,
        message: String,
        now: Duration,
    ) -> Event {
        self.events.seq += 1;
        let final_kind = matches!(
            kind,
            EventKind::Killed | EventKind::Completed | EventKind::Failed
        );
        let ev = Event {
            id: format!("{}-{:04}", self.id.run_id, self.events.seq),
            run_id: self.id.run_id.clone(),
            kind,
            reason: reason.map(str::to_string),
            message: crate::redact::text(&message).into_owned(),
            at: rfc3339(self.id.started_wall + now),
            elapsed_seconds: now.as_secs_f64(),
            spend_dollars: self.engine.spend(now),
            rate_dollars_per_hour: self.priced().then(|| self.engine.meter().rate()),
            budget_dollars: self.engine.limits().max_usd,
            host: self.id.host.clone(),
            phase: self.phase.as_ref().map(|p| p.name.clone()),
            report_path: self
                .id
                .run_dir
                .as_ref()
                .filter(|_| final_kind)
                .map(|d| d.join("report.md").display().to_string()),
            command: Some(self.id.command_line.clone()),
            page_url: self.id.page_url.clone(),
            test: false,
        };
        self.events.recent.push_back(ev.clone());
        if self.events.recent.len() > RECENT {
            self.events.recent.pop_front();
        }
        ev
    }

    fn emit(&mut self, kind: EventKind, reason: &str, message: String, now: Duration) -> Action {
        Action::Emit(Box::new(self.event(kind, Some(reason), message, now)))
    }

    /// The next instant (run time) at which the policy may decide something on its own.
    pub fn next_wakeup(&self, now: Duration) -> Option<Duration> {
        self.engine.next_wakeup(now)
    }

    /// One loop event in, the actions it calls for out.
    pub fn handle(&mut self, ev: LoopEvent, now: Duration) -> Vec<Action> {
        if let LoopEvent::Done(d) = ev {
            return self.on_done(d, now);
        }
        let acts = match (ev, &self.stage) {
            (LoopEvent::Signal(sig), Stage::Armed(kill)) => {
                vec![Action::End(armed::disarmed(kill, sig))]
            }
            (ev, Stage::Running | Stage::Armed(_)) => self.dispatch(ev, now),
            // The loop is over: its sources feed nothing more.
            _ => return Vec::new(),
        };
        let acts = self.arming(acts);
        let end = acts.iter().find_map(|a| match a {
            Action::End(e) => Some(e.clone()),
            _ => None,
        });
        if let Some(e) = end {
            self.begin_ending(e);
        }
        acts
    }

    fn dispatch(&mut self, ev: LoopEvent, now: Duration) -> Vec<Action> {
        let mut acts = match ev {
            LoopEvent::Signal(sig) => vec![Action::End(self.on_signal(sig))],
            LoopEvent::Forward(sig) => match self.kind {
                TargetKind::Job => vec![Action::Forward(sig)],
                TargetKind::Agent => Vec::new(),
            },
            LoopEvent::Deadline => {
                let d = self.engine.tick(now);
                self.decide(d, now)
            }
            LoopEvent::LeaderEnded(s) => vec![Action::End(Ending::Leader(s))],
            LoopEvent::HolderNotice(w) => vec![Action::Notice(format!("holder: {w}"))],
            LoopEvent::HolderLost => vec![Action::End(Ending::HolderLost)],
            LoopEvent::Progress(p) => {
                self.engine.on_progress(now, p.label, p.step);
                Vec::new()
            }
            LoopEvent::Sample(s) => self.on_sample(s),
            LoopEvent::TargetsEnded if self.conduct.exit_when_done => {
                vec![Action::End(Ending::Stop(
                    "every GPU process it watched ended by itself".into(),
                ))]
            }
            LoopEvent::TargetsEnded => Vec::new(),
            LoopEvent::NewTarget(pid, cmd) => vec![self.emit(
                EventKind::Started,
                "target",
                format!("watching GPU process {pid}: {cmd}"),
                now,
            )],
            LoopEvent::Fleet(m) => self.on_fleet(m, now),
            LoopEvent::RecordFailed(why) => self.on_record_failed(why, now),
            LoopEvent::RecordRecovered => self.on_record_recovered(),
            LoopEvent::Box(d) => self.on_box(*d, now),
            LoopEvent::Preempted(n) => self.on_preempted(n, now),
            LoopEvent::Step(n) => {
                if let Some(p) = self.phase.as_mut() {
                    p.on_step(n, now);
                }
                vec![Action::Publish]
            }
            LoopEvent::Tick => self.on_tick(now),
            LoopEvent::Redraw => vec![Action::Redraw],
            LoopEvent::LogError(why) => vec![self.emit(EventKind::AgentError, "record", why, now)],
            LoopEvent::Warned {
                signal,
                reason,
                message,
                reached,
            } => {
                let text = format!("{message} ({} to {reached} processes)", signal.as_str());
                vec![self.emit(EventKind::Warning, reason.as_str(), text, now)]
            }
            LoopEvent::Done(d) => self.on_done(d, now),
        };
        self.marks.longest_idle = self
            .marks
            .longest_idle
            .max(self.engine.idle_for(now).as_secs_f64());
        let emitted = acts.iter().any(|a| matches!(a, Action::Emit(_)));
        if emitted && !acts.contains(&Action::Publish) {
            acts.push(Action::Publish);
        }
        acts
    }

    fn on_signal(&self, sig: Signal) -> Ending {
        match self.kind {
            TargetKind::Job => Ending::Kill {
                reason: KillReason::Signal,
                evidence: format!(
                    "signal: costguard received {}; forwarded to the job",
                    sig.as_str()
                ),
                first: sig,
            },
            TargetKind::Agent => {
                Ending::Stop(format!("agent stopped by a signal ({})", sig.as_str()))
            }
        }
    }

    /// The policy's decisions as actions.
    fn decide(&mut self, decisions: Vec<Decision>, now: Duration) -> Vec<Action> {
        let mut acts = Vec::new();
        for d in decisions {
            acts.push(match d {
                Decision::Warn {
                    reason,
                    message,
                    signal,
                } => match (signal, self.conduct.warn_signal) {
                    (true, Some(signal)) => Action::WarnSignal {
                        signal,
                        reason,
                        message,
                    },
                    _ => self.emit(EventKind::Warning, reason.as_str(), message, now),
                },
                Decision::Idle { message } => self.emit(EventKind::Idle, "idle", message, now),
                Decision::Stalled { message } => {
                    self.emit(EventKind::Stalled, "stall", message, now)
                }
                Decision::Kill { reason, evidence } => Action::End(Ending::Kill {
                    reason,
                    evidence,
                    first: Signal::SIGTERM,
                }),
            });
        }
        acts
    }

    fn on_tick(&mut self, now: Duration) -> Vec<Action> {
        let mut acts = vec![Action::Meters];
        if now.saturating_sub(self.marks.recorded_at) >= Duration::from_secs(1) {
            self.marks.recorded_at = now;
            acts.push(Action::Record);
        }
        acts
    }

    /// The record is the budget: a failed write is an alarm at once (an event that reaches
    /// the console, the metrics and the notifiers), once per distinct failure.
    /// Fail-closed for money: after `--record-grace` of failed writes the run is killed
    /// (reason `record`); `--record-grace off` keeps it running, loudly.
    fn on_record_failed(&mut self, why: String, now: Duration) -> Vec<Action> {
        self.marks.record_errors += 1;
        let since = *self.marks.record_failing_since.get_or_insert(now);
        if let Some(grace) = self.conduct.record_grace {
            if now.saturating_sub(since) >= grace {
                return vec![Action::End(Ending::Kill {
                    reason: KillReason::Record,
                    evidence: format!(
                        "record: the run record has not been written for {} ({why}); killed so that no spend goes unrecorded (--record-grace {})",
                        crate::units::format_duration(now.saturating_sub(since)),
                        crate::units::format_duration(grace)
                    ),
                    first: Signal::SIGTERM,
                })];
            }
        }
        if self.marks.record_error.as_deref() == Some(why.as_str()) {
            return vec![Action::Publish];
        }
        self.marks.record_error = Some(why.clone());
        let then = match self.conduct.record_grace {
            Some(g) => format!(
                "; the run is killed if it stays unwritten for {} (--record-grace)",
                crate::units::format_duration(g)
            ),
            None => "; --record-grace off: the run goes on unrecorded".into(),
        };
        vec![self.emit(
            EventKind::AgentError,
            "record",
            format!("the run record is not being written: {why}; a restart cannot know what this run spent{then}"),
            now,
        )]
    }

    fn on_record_recovered(&mut self) -> Vec<Action> {
        self.marks.record_failing_since = None;
        self.marks.record_error = None;
        vec![Action::Say("the run record is written again".into())]
    }

    /// The box named itself: its rate replaces a guessed one from the run's first instant
    /// (the meter is corrected, not restarted); an explicit --usd-per-hour stays, with one
    /// notice when it is far from what the box says.
    fn on_box(&mut self, d: crate::cloud::Detection, now: Duration) -> Vec<Action> {
        let mut acts: Vec<Action> = d.notes.iter().cloned().map(Action::Notice).collect();
        if let Some(r) = &d.rate {
            let said = format!("{}/h from {}", format_money(r.per_hour), r.source);
            match &self.pricing {
                Pricing::Fixed {
                    per_hour,
                    origin: RateOrigin::Flag,
                    ..
                } => {
                    if (per_hour - r.per_hour).abs() > 0.25 * r.per_hour {
                        acts.push(Action::Notice(format!(
                            "--usd-per-hour {} is far from what this box bills: {said}; metering {} as told",
                            format_money(*per_hour),
                            format_money(*per_hour)
                        )));
                    }
                }
                Pricing::Energy { .. } => {}
                before => {
                    let was = match before {
                        Pricing::Fixed {
                            per_hour, source, ..
                        } => {
                            format!("{}/h from {source}", format_money(*per_hour))
                        }
                        _ => "not metered".into(),
                    };
                    self.engine.correct_rate(now, r.per_hour);
                    self.pricing = Pricing::Fixed {
                        per_hour: r.per_hour,
                        source: r.source.clone(),
                        origin: RateOrigin::Box(r.kind),
                    };
                    if was != said {
                        acts.push(Action::Say(format!(
                            "rate: {said}, counted from the run's start (was {was})"
                        )));
                    }
                }
            }
        }
        self.cloud = Some(d);
        acts.push(Action::Publish);
        acts
    }

    /// The provider is reclaiming the box: the job's chance to checkpoint (the warning
    /// signal, at once), and a warning that reaches a person.
    fn on_preempted(&mut self, n: crate::cloud::preempt::Notice, now: Duration) -> Vec<Action> {
        let message = format!(
            "the {} box is being reclaimed ({}): checkpoint now",
            n.provider.as_str(),
            n.detail
        );
        self.preempted = Some(n.detail);
        let reason = crate::policy::WarnReason::Preemption;
        match self.conduct.warn_signal {
            Some(signal) if self.kind == TargetKind::Job => vec![Action::WarnSignal {
                signal,
                reason,
                message,
            }],
            _ => vec![self.emit(EventKind::Warning, reason.as_str(), message, now)],
        }
    }

    /// A reading of the fleet's total spend (or why there is none).
    fn on_fleet(&mut self, m: FleetMsg, now: Duration) -> Vec<Action> {
        let Some(f) = self.fleet.as_mut() else {
            return Vec::new();
        };
        match m {
            FleetMsg::Total(t) => {
                let mut acts = Vec::new();
                if f.error.take().is_some() {
                    acts.push(Action::Say("fleet budget readable again".into()));
                }
                f.total = Some(t);
                if t >= f.max_usd {
                    acts.push(Action::End(Ending::Kill {
                        reason: KillReason::Fleet,
                        evidence: format!(
                            "fleet: the fleet spent {} of {} ({})",
                            format_money(t),
                            format_money(f.max_usd),
                            f.source
                        ),
                        first: Signal::SIGTERM,
                    }));
                }
                acts
            }
            FleetMsg::Error(e) => {
                let first = f.error.is_none();
                f.error = Some(e.clone());
                if first {
                    vec![self.emit(
                        EventKind::AgentError,
                        "fleet-unreachable",
                        format!("fleet budget unknown: {e}; the local ceilings still hold"),
                        now,
                    )]
                } else {
                    Vec::new()
                }
            }
            FleetMsg::NoSeries(what) => {
                let why = format!("the query matches no series ({what})");
                let first = f.error.is_none();
                f.error = Some(why.clone());
                if first {
                    vec![self.emit(
                        EventKind::AgentError,
                        "fleet-no-series",
                        format!(
                            "fleet budget unknown: {why}: is Prometheus scraping costguard with that label yet? (the PodMonitor needs your Prometheus' `release` label); the local ceilings still hold"
                        ),
                        now,
                    )]
                } else {
                    Vec::new()
                }
            }
        }
    }

    /// A telemetry sample: the cache, events for what went wrong, the policy's verdict.
    fn on_sample(&mut self, s: SampleMsg) -> Vec<Action> {
        let now = s.at.saturating_duration_since(self.t0);
        self.job_pids.extend(s.pids.iter().copied());
        self.targets_now = s.pids.len();
        self.telemetry.host = s.host.clone();
        let mut acts = vec![Action::Members(s.pids.clone())];
        let mut obs = Observation {
            at: now,
            gpus: Vec::new(),
            host_rss: s.host.job_rss_bytes,
        };
        match s.gpus {
            None => {}
            Some(Err(e)) => {
                let t = &mut self.telemetry;
                t.errors += 1;
                t.current = false;
                t.generation += 1;
                let msg = e.to_string();
                if t.error.as_deref() != Some(msg.as_str()) {
                    t.error = Some(msg.clone());
                    acts.push(self.emit(
                        EventKind::AgentError,
                        "telemetry",
                        format!("GPU telemetry unknown: {msg}"),
                        now,
                    ));
                }
                obs.gpus = self.telemetry.unknown_gpus();
            }
            Some(Ok(gpus)) => {
                if let Some(why) = self
                    .idle_box
                    .as_mut()
                    .and_then(|b| b.observe(now, &gpus, s.gpu_processes, s.logged_in))
                {
                    acts.push(Action::End(Ending::Stop(why)));
                }
                self.take_gpus(gpus, s.wall, now, &mut acts);
                obs.gpus = self.telemetry.job_gpus(&s.pids, &s.holders);
                self.energy_rate(now);
            }
        }
        let d = self.engine.observe(&obs);
        acts.extend(self.decide(d, now));
        acts.push(Action::Publish);
        acts
    }

    fn take_gpus(
        &mut self,
        gpus: Vec<crate::telemetry::GpuSample>,
        wall: SystemTime,
        now: Duration,
        acts: &mut Vec<Action>,
    ) {
        let t = &mut self.telemetry;
        if t.error.take().is_some() {
            acts.push(Action::Say("GPU telemetry is back".into()));
        }
        let any_lost = gpus.iter().any(|g| g.lost);
        t.gpus = gpus;
        t.current = true;
        t.generation += 1;
        if !any_lost {
            t.last_good_unix = Some(
                wall.duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64(),
            );
        }
        for i in self.telemetry.newly_lost() {
            self.telemetry.errors += 1;
            acts.push(self.emit(
                EventKind::AgentError,
                "gpu-lost",
                format!("GPU {i} is lost (NVML_ERROR_GPU_IS_LOST): its values are unknown"),
                now,
            ));
        }
    }

    /// Energy pricing: the visible GPUs' draw sets the rate. Unknown power keeps the last
    /// rate: spend never stops accruing for lack of data.
    fn energy_rate(&mut self, now: Duration) {
        let Pricing::Energy { per_kwh } = self.pricing else {
            return;
        };
        if let Some(w) = self.telemetry.watts(now) {
            self.engine.set_rate(now, w / 1000.0 * per_kwh);
        }
    }
}
