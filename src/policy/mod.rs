//! The pure policy engine: observations and a clock in, decisions out, no I/O.
//!
//! Every ceiling is a deadline on the run's monotonic clock (`Duration` since start). The
//! driver asks [`Engine::next_wakeup`], sleeps until then or until an observation arrives,
//! and calls [`Engine::tick`] / [`Engine::observe`] / [`Engine::on_progress`]. Tests run hours
//! of a run in microseconds by passing the clock by hand.

use std::time::Duration;

use crate::events::KillReason;
use crate::spend::SpendMeter;
use crate::units::{format_bytes, format_duration, format_money, MemLimit};

mod progress;
#[cfg(test)]
mod tests;

pub use progress::Progress;

/// The ceilings and watchdog windows of a run (or of one phase).
#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub max_usd: Option<f64>,
    pub max_wall: Option<Duration>,
    /// Where the wall ceiling comes from, for the kill evidence (`--max-wall` when None).
    pub wall_source: Option<String>,
    pub warn_before: Option<Duration>,
    /// Budget fractions in (0, 1], ascending.
    pub warn_at: Vec<f64>,
    pub idle: Option<Duration>,
    /// Percent.
    pub idle_below: f64,
    pub idle_grace: Duration,
    pub stall: Option<Duration>,
    pub max_gpu_mem: Option<MemLimit>,
    pub max_host_mem: Option<u64>,
    /// A sample older than this is unknown: it can no longer support an idle kill.
    pub stale_after: Duration,
    pub progress_total: Option<f64>,
}

/// One GPU as the policy sees it; `None` is "unknown", never zero.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuObs {
    pub index: u32,
    pub util_pct: Option<f64>,
    /// GPU memory held by the job's processes on this GPU.
    pub job_mem: Option<u64>,
    pub mem_total: Option<u64>,
}

/// One telemetry sample reduced to what the policy needs: the GPUs the job uses.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observation {
    pub at: Duration,
    pub gpus: Vec<GpuObs>,
    pub host_rss: Option<u64>,
}

/// Why a `warning` event was raised. Serialized names are the events' `reason` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarnReason {
    /// `--warn-before`: the ceiling is this close; the job may checkpoint.
    Checkpoint,
    /// `--warn-at`: a fraction of the budget is spent.
    Budget,
    /// The GPUs went idle; the idle kill follows unless they get busy.
    IdleSuspected,
    /// No progress for part of the stall window.
    StallSuspected,
    /// The provider is reclaiming the spot box (its notice came): checkpoint now.
    Preemption,
}

impl WarnReason {
    pub fn as_str(self) -> &'static str {
        match self {
            WarnReason::Checkpoint => "checkpoint",
            WarnReason::Budget => "budget",
            WarnReason::IdleSuspected => "idle-suspected",
            WarnReason::StallSuspected => "stall-suspected",
            WarnReason::Preemption => "preemption",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// A `warning` event; `signal` asks the driver to send the configured warning signal.
    Warn {
        reason: WarnReason,
        message: String,
        signal: bool,
    },
    /// The idle streak became a kill (an `idle` event precedes the kill).
    Idle { message: String },
    /// No progress for the stall window (a `stalled` event precedes the kill).
    Stalled { message: String },
    /// Kill the whole tree. Only ever decided once.
    Kill {
        reason: KillReason,
        evidence: String,
    },
}

#[derive(Debug, Clone)]
pub struct Engine {
    limits: Limits,
    meter: SpendMeter,
    warned_fracs: usize,
    warn_signal_sent: bool,
    idle_since: Option<Duration>,
    idle_gpus: Vec<u32>,
    idle_warned: bool,
    last_sample_at: Option<Duration>,
    last_sample_idle: bool,
    progress: Progress,
    stall_warned: bool,
    wasted: f64,
    wasted_accounted_to: Duration,
    killed: Option<KillReason>,
}

impl Engine {
    pub fn new(limits: Limits, meter: SpendMeter) -> Self {
        // A resumed run does not repeat the warnings its carried-over spend already passed.
        let carried = meter.spend_at(Duration::ZERO);
        let warned_fracs = match limits.max_usd {
            Some(b) => limits.warn_at.iter().filter(|f| **f * b <= carried).count(),
            None => 0,
        };
        Engine {
            limits,
            meter,
            warned_fracs,
            warn_signal_sent: false,
            idle_since: None,
            idle_gpus: Vec::new(),
            idle_warned: false,
            last_sample_at: None,
            last_sample_idle: false,
            progress: Progress::default(),
            stall_warned: false,
            wasted: 0.0,
            wasted_accounted_to: Duration::ZERO,
            killed: None,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }
    pub fn meter(&self) -> &SpendMeter {
        &self.meter
    }
    pub fn progress(&self) -> &Progress {
        &self.progress
    }
    pub fn killed(&self) -> Option<KillReason> {
        self.killed
    }

    pub fn spend(&self, now: Duration) -> f64 {
        self.meter.spend_at(now)
    }

    /// Spend accrued while the GPUs were idle or the job made no progress.
    pub fn wasted(&self, now: Duration) -> f64 {
        self.wasted + self.unaccounted_waste(now)
    }

    /// How long the job's GPUs have been idle (0 when busy or unknown).
    pub fn idle_for(&self, now: Duration) -> Duration {
        self.idle_since
            .map(|s| now.saturating_sub(s))
            .unwrap_or_default()
    }

    pub fn since_progress(&self, now: Duration) -> Duration {
        now.saturating_sub(self.progress.last_at())
    }

    /// Changes the price from `now` on (a GPU appeared, energy pricing moved).
    pub fn set_rate(&mut self, now: Duration, rate_per_hour: f64) {
        self.account_waste(now);
        self.meter.set_rate(now, rate_per_hour);
    }

    /// The rate was a guess until now: spend (and waste) from the session's first instant
    /// are recounted at `rate_per_hour`; the dollar deadline follows.
    pub fn correct_rate(&mut self, now: Duration, rate_per_hour: f64) {
        self.account_waste(now);
        let old = self.meter.rate();
        if old > 0.0 {
            self.wasted *= rate_per_hour / old;
        }
        self.meter.correct_from_start(rate_per_hour);
    }

    pub fn usd_deadline(&self, now: Duration) -> Option<Duration> {
        self.limits
            .max_usd
            .and_then(|b| self.meter.time_to_reach(b, now))
    }

    /// The earlier of the dollar and wall deadlines, with its reason.
    pub fn ceiling_deadline(&self, now: Duration) -> Option<(Duration, KillReason)> {
        let usd = self.usd_deadline(now).map(|t| (t, KillReason::Usd));
        let wall = self.limits.max_wall.map(|t| (t, KillReason::Wall));
        match (usd, wall) {
            (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    fn stall_base(&self) -> Duration {
        self.progress.last_at().max(self.limits.idle_grace)
    }

    /// The next instant at which `tick` may decide something.
    pub fn next_wakeup(&self, now: Duration) -> Option<Duration> {
        if self.killed.is_some() {
            return None;
        }
        let mut next: Option<Duration> = None;
        let mut consider = |t: Option<Duration>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        let ceiling = self.ceiling_deadline(now);
        consider(ceiling.map(|c| c.0));
        if let (Some(lead), false) = (self.limits.warn_before, self.warn_signal_sent) {
            consider(ceiling.map(|c| c.0.saturating_sub(lead)));
        }
        if let (Some(budget), Some(frac)) = (
            self.limits.max_usd,
            self.limits.warn_at.get(self.warned_fracs),
        ) {
            consider(self.meter.time_to_reach(budget * frac, now));
        }
        if let (Some(window), Some(since)) = (self.limits.idle, self.idle_since) {
            if !self.idle_warned {
                consider(Some(since + window / 2));
            }
            // Past the window with a fresh idle sample in hand, the kill is due now (a sample
            // is stamped when it was asked for and may be handled after the deadline). Without
            // one, the kill waits for the next sample: a stale one must not busy-loop.
            let fresh = self
                .last_sample_at
                .is_some_and(|t| now.saturating_sub(t) <= self.limits.stale_after);
            consider(Some(since + window).filter(|t| *t > now || (fresh && self.last_sample_idle)));
        }
        if let Some(window) = self.limits.stall {
            if !self.stall_warned {
                consider(Some(self.stall_base() + window / 2));
            }
            consider(Some(self.stall_base() + window));
        }
        next
    }

    /// Evaluates every deadline at `now`.
    pub fn tick(&mut self, now: Duration) -> Vec<Decision> {
        let mut out = Vec::new();
        if self.killed.is_some() {
            return out;
        }
        self.account_waste(now);
        self.budget_warnings(now, &mut out);
        if let Some((deadline, reason)) = self.ceiling_deadline(now) {
            if let (Some(lead), false) = (self.limits.warn_before, self.warn_signal_sent) {
                if now + lead >= deadline {
                    self.warn_signal_sent = true;
                    out.push(Decision::Warn {
                        reason: WarnReason::Checkpoint,
                        message: format!(
                            "{} ceiling in {}: sending the warning signal",
                            reason.as_str(),
                            format_duration(deadline.saturating_sub(now))
                        ),
                        signal: true,
                    });
                }
            }
            if now >= deadline {
                let evidence = self.ceiling_evidence(reason, now);
                return self.kill(out, reason, evidence);
            }
        }
        if let Some(d) = self.idle_check(now, &mut out) {
            out.push(Decision::Idle { message: d.clone() });
            return self.kill(out, KillReason::Idle, d);
        }
        if let Some(d) = self.stall_check(now, &mut out) {
            out.push(Decision::Stalled { message: d.clone() });
            return self.kill(out, KillReason::Stall, d);
        }
        out
    }

    /// A telemetry sample arrived.
    pub fn observe(&mut self, obs: &Observation) -> Vec<Decision> {
        let now = obs.at;
        self.account_waste(now);
        self.last_sample_at = Some(now);
        let known: Option<Vec<(u32, f64)>> = if obs.gpus.is_empty() {
            None
        } else {
            obs.gpus
                .iter()
                .map(|g| g.util_pct.map(|u| (g.index, u)))
                .collect()
        };
        let idle_now = match &known {
            Some(gpus) => gpus.iter().all(|(_, u)| *u < self.limits.idle_below),
            None => false, // unknown is never idle
        };
        self.last_sample_idle = idle_now;
        if idle_now {
            if self.idle_since.is_none() {
                self.idle_since = Some(now.max(self.limits.idle_grace));
                self.idle_gpus = obs.gpus.iter().map(|g| g.index).collect();
            }
        } else {
            self.idle_since = None;
            self.idle_warned = false;
        }
        let mut out = Vec::new();
        if self.killed.is_none() {
            if let Some(evidence) = self.memory_check(obs) {
                return self.kill(out, evidence.0, evidence.1);
            }
        }
        out.extend(self.tick(now));
        out
    }

    /// A progress signal: an output line, a regex step (`step` when it increased), a heartbeat.
    pub fn on_progress(&mut self, now: Duration, label: String, step: Option<f64>) {
        self.account_waste(now);
        self.progress.record(now, label, step);
        self.stall_warned = false;
    }

    fn kill(
        &mut self,
        mut out: Vec<Decision>,
        reason: KillReason,
        evidence: String,
    ) -> Vec<Decision> {
        self.killed = Some(reason);
        out.push(Decision::Kill { reason, evidence });
        out
    }

    fn budget_warnings(&mut self, now: Duration, out: &mut Vec<Decision>) {
        let Some(budget) = self.limits.max_usd else {
            return;
        };
        let spent = self.meter.spend_at(now);
        while let Some(frac) = self.limits.warn_at.get(self.warned_fracs).copied() {
            if spent + 1e-12 < budget * frac {
                break;
            }
            self.warned_fracs += 1;
            out.push(Decision::Warn {
                reason: WarnReason::Budget,
                message: format!(
                    "{:.0}% of the budget spent: {} of {}",
                    frac * 100.0,
                    format_money(spent),
                    format_money(budget)
                ),
                signal: false,
            });
        }
    }

    fn ceiling_evidence(&self, reason: KillReason, now: Duration) -> String {
        match reason {
            KillReason::Usd => format!(
                "usd: spent {} of {} at {}/h after {}",
                format_money(self.meter.spend_at(now)),
                format_money(self.limits.max_usd.unwrap_or_default()),
                format_money(self.meter.rate()),
                format_duration(now)
            ),
            _ => format!(
                "wall: ran {} of {} {}",
                format_duration(now),
                self.limits.wall_source.as_deref().unwrap_or("--max-wall"),
                format_duration(self.limits.max_wall.unwrap_or_default())
            ),
        }
    }

    fn last_progress_text(&self, now: Duration) -> String {
        match self.progress.last_label() {
            Some(l) => format!(
                "last progress {:?} {} ago",
                l,
                format_duration(now.saturating_sub(self.progress.last_at()))
            ),
            None => format!("no progress since the start {} ago", format_duration(now)),
        }
    }

    fn idle_check(&mut self, now: Duration, out: &mut Vec<Decision>) -> Option<String> {
        let (window, since) = (self.limits.idle?, self.idle_since?);
        let fresh = self
            .last_sample_at
            .is_some_and(|t| now.saturating_sub(t) <= self.limits.stale_after);
        let gpus = self
            .idle_gpus
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        if !self.idle_warned && now >= since + window / 2 {
            self.idle_warned = true;
            out.push(Decision::Warn {
                reason: WarnReason::IdleSuspected,
                message: format!(
                    "GPU {gpus} below {}% for {} (kill at {})",
                    self.limits.idle_below,
                    format_duration(now - since),
                    format_duration(window)
                ),
                signal: false,
            });
        }
        if now >= since + window && fresh && self.last_sample_idle {
            return Some(format!(
                "idle: GPU {gpus} below {}% for {}; {}",
                self.limits.idle_below,
                format_duration(now - since),
                self.last_progress_text(now)
            ));
        }
        None
    }

    fn stall_check(&mut self, now: Duration, out: &mut Vec<Decision>) -> Option<String> {
        let window = self.limits.stall?;
        let base = self.stall_base();
        if !self.stall_warned && now >= base + window / 2 {
            self.stall_warned = true;
            out.push(Decision::Warn {
                reason: WarnReason::StallSuspected,
                message: format!(
                    "no progress for {} (kill at {}); {}",
                    format_duration(now - self.progress.last_at()),
                    format_duration(window),
                    self.last_progress_text(now)
                ),
                signal: false,
            });
        }
        if now >= base + window {
            return Some(format!(
                "stall: no progress for {}; {}",
                format_duration(now.saturating_sub(base)),
                self.last_progress_text(now)
            ));
        }
        None
    }

    fn memory_check(&self, obs: &Observation) -> Option<(KillReason, String)> {
        if let Some(limit) = self.limits.max_gpu_mem {
            for g in &obs.gpus {
                if let (Some(used), Some(cap)) = (g.job_mem, limit.bytes_of(g.mem_total)) {
                    if used > cap {
                        return Some((
                            KillReason::GpuMem,
                            format!(
                                "gpu_mem: job holds {} on GPU {} (ceiling {limit})",
                                format_bytes(used),
                                g.index
                            ),
                        ));
                    }
                }
            }
        }
        if let (Some(cap), Some(rss)) = (self.limits.max_host_mem, obs.host_rss) {
            if rss > cap {
                return Some((
                    KillReason::HostMem,
                    format!(
                        "host_mem: job tree RSS {} (ceiling {})",
                        format_bytes(rss),
                        format_bytes(cap)
                    ),
                ));
            }
        }
        None
    }

    /// Start of the current waste interval: the idle streak or the stall-suspected silence.
    fn waste_from(&self, now: Duration) -> Option<Duration> {
        let idle = self.idle_since;
        let stall = self.limits.stall.and_then(|w| {
            let last = self.progress.last_at();
            (now >= self.stall_base() + w / 2).then_some(last)
        });
        match (idle, stall) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn unaccounted_waste(&self, now: Duration) -> f64 {
        match self.waste_from(now) {
            Some(from) => {
                let from = from.max(self.wasted_accounted_to);
                if now > from {
                    self.meter.spend_at(now) - self.meter.spend_at(from)
                } else {
                    0.0
                }
            }
            None => 0.0,
        }
    }

    fn account_waste(&mut self, now: Duration) {
        if now < self.wasted_accounted_to {
            return;
        }
        self.wasted += self.unaccounted_waste(now);
        self.wasted_accounted_to = now;
    }
}
