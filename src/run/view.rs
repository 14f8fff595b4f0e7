//! Views of the run state at an instant: the numbers every sink shows ([`Snapshot`], from
//! which `run/sinks.rs` builds the one [`crate::status::RunView`]) and what the run waits on
//! next. Pure, like the state.

use std::time::Duration;

use super::state::RunState;
use crate::units::format_duration;

/// The run's numbers at one instant; metrics, /status and the ledger are built from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Run time of this session.
    pub now: Duration,
    /// Total spend of the run (earlier sessions included).
    pub spend: f64,
    /// Wasted spend of this session.
    pub wasted: f64,
    /// Dollars per hour; `None` when the run is not priced.
    pub rate: Option<f64>,
    pub budget: Option<f64>,
    pub remaining: Option<f64>,
    /// This session's wall limit.
    pub wall_limit: Option<Duration>,
    pub idle: Duration,
    /// Time since progress, when a progress source exists.
    pub since_progress: Option<Duration>,
    pub since_progress_raw: Duration,
    pub to_usd: Option<Duration>,
    pub to_wall: Option<Duration>,
    pub eta: Option<Duration>,
    pub projected: Option<f64>,
    pub progress_total: Option<f64>,
    pub last_step: Option<f64>,
    pub steps_per_second: Option<f64>,
    pub last_progress: Option<String>,
    pub waiting_on: String,
    /// A plan phase's step running, in words ("seed 2 of 3").
    pub step: Option<String>,
}

impl RunState {
    pub fn snapshot(&self, now: Duration) -> Snapshot {
        let e = self.engine();
        let spend = e.spend(now);
        let priced = self.priced();
        let total = e.limits().progress_total;
        let eta = total.and_then(|t| e.progress().eta(t, now)).or_else(|| {
            let p = self.phase()?;
            let rest = p.expected?.1;
            Some(p.remaining(now)? + Duration::from_secs_f64(rest))
        });
        Snapshot {
            now,
            spend,
            wasted: e.wasted(now),
            rate: priced.then(|| e.meter().rate()),
            budget: e.limits().max_usd,
            remaining: e.limits().max_usd.map(|b| (b - spend).max(0.0)),
            wall_limit: e.limits().max_wall,
            idle: e.idle_for(now),
            since_progress: self.tracks_progress().then(|| e.since_progress(now)),
            since_progress_raw: e.since_progress(now),
            to_usd: e.usd_deadline(now).map(|t| t.saturating_sub(now)),
            to_wall: e.limits().max_wall.map(|w| w.saturating_sub(now)),
            eta,
            projected: eta
                .filter(|_| priced)
                .map(|eta| spend + e.meter().rate() * eta.as_secs_f64() / 3600.0),
            progress_total: total,
            last_step: e.progress().last_step(),
            steps_per_second: e.progress().step_rate(),
            last_progress: e.progress().last_label().map(str::to_string),
            waiting_on: self.waiting_text(now),
            step: self.phase().and_then(|p| p.step_text()),
        }
    }

    /// What ends the run first, in words: the nearest ceiling (dollar or wall: they fire
    /// whatever the job does), and a watchdog that would fire before it if its condition
    /// holds (GPUs idle now, no progress from now on). A stall timer that progress resets
    /// every few seconds is never named as the run's end.
    pub fn waiting_text(&self, now: Duration) -> String {
        if let Some(t) = self.armed_text() {
            return t;
        }
        let e = self.engine();
        let mut ceilings: Vec<(Duration, &'static str)> = Vec::new();
        if let Some(t) = e.usd_deadline(now) {
            ceilings.push((t.saturating_sub(now), "the dollar ceiling"));
        }
        if let Some(w) = e.limits().max_wall {
            ceilings.push((w.saturating_sub(now), "the wall ceiling"));
        }
        let mut watchdogs: Vec<(Duration, &'static str)> = Vec::new();
        if let Some(w) = e.limits().idle {
            let idle = e.idle_for(now);
            if !idle.is_zero() {
                watchdogs.push((w.saturating_sub(idle), "the idle kill (GPUs idle now)"));
            }
        }
        if let (Some(w), true) = (e.limits().stall, self.tracks_progress()) {
            watchdogs.push((
                w.saturating_sub(e.since_progress(now)),
                "the stall kill unless progress comes",
            ));
        }
        let first = |v: Vec<(Duration, &'static str)>| v.into_iter().min_by_key(|(d, _)| *d);
        let say = |(d, what): (Duration, &'static str)| format!("{what} in {}", format_duration(d));
        match (first(ceilings), first(watchdogs)) {
            (Some(c), Some(w)) if w.0 < c.0 => format!("{} (sooner: {})", say(c), say(w)),
            (Some(c), _) => say(c),
            (None, Some(w)) => say(w),
            (None, None) => "the job to finish (no ceiling or watchdog will end it)".into(),
        }
    }
}
