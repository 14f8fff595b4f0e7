//! The run loop's state: events out, metrics and /status refreshed, samples turned into
//! observations for the policy.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

use super::sampler::SampleMsg;
use super::start::Pricing;
use crate::events::{rfc3339, Event, EventKind};
use crate::metrics::{set_opt, Metrics};
use crate::policy::{Decision, Engine, GpuObs, Observation};
use crate::telemetry::{GpuSample, HostSample};
use crate::units::{format_duration, format_money};

/// Everything the loop keeps between iterations.
pub(super) struct State {
    pub(super) t0: Instant,
    pub(super) started_wall: SystemTime,
    pub(super) run_id: String,
    pub(super) host: String,
    pub(super) engine: Engine,
    pub(super) metrics: Arc<Metrics>,
    pub(super) status: Arc<RwLock<serde_json::Value>>,
    pub(super) pricing: Pricing,
    pub(super) visible: Vec<u32>,
    pub(super) seq: u64,
    pub(super) recent: Vec<Event>,
    pub(super) last_energy: Option<(Instant, f64)>,
    pub(super) telemetry_error: Option<String>,
    pub(super) lost: HashSet<u32>,
    pub(super) last_gpus: Vec<GpuSample>,
    pub(super) last_host: HostSample,
    pub(super) job_pids: HashSet<i32>,
    /// The job's command line, secrets masked.
    pub(super) command_line: String,
    pub(super) notifier: Option<crate::notify::Notifier>,
    /// Names of the configured channels (never their URLs or keys).
    pub(super) notify_channels: Vec<&'static str>,
    pub(super) quiet: bool,
    /// Whether a progress source exists (output rules or a heartbeat): only then is "time
    /// since progress" worth showing.
    pub(super) tracks_progress: bool,
    /// The run's record on disk (None only after it was closed).
    pub(super) rec: Option<super::record::Recorder>,
    /// When spend was last put on record (run time).
    pub(super) recorded_at: Duration,
    /// Wasted dollars and elapsed seconds of earlier sessions of this run.
    pub(super) wasted_carried: f64,
    pub(super) spent_carried: f64,
    /// A plan's phase, "i/n name".
    pub(super) phase_name: Option<String>,
    /// A plan's phase: (expected duration of this phase, expected seconds of the rest).
    pub(super) phase_expected: Option<(Duration, f64)>,
    pub(super) elapsed_carried: f64,
    pub(super) longest_idle: f64,
    /// What the run waits on next, in words.
    pub(super) waiting_on: Option<String>,
    /// The fleet's total spend last read from Prometheus, and the current read error.
    pub(super) fleet_total: Option<f64>,
    pub(super) fleet_error: Option<String>,
}

impl State {
    pub(super) fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    pub(super) fn report_path(&self) -> Option<String> {
        self.rec
            .as_ref()
            .map(|r| r.run_dir.join("report.md").display().to_string())
    }

    /// A kill, with its evidence and the job's last lines, into the ledger.
    pub(super) fn record_kill(&self, reason: &str, evidence: &str, last_output: Vec<String>) {
        let now = self.now();
        let elapsed = self.elapsed_carried + now.as_secs_f64();
        if let Some(r) = &self.rec {
            r.update(|l| {
                l.kills.push(crate::ledger::Kill {
                    reason: reason.into(),
                    evidence: evidence.into(),
                    at: rfc3339(SystemTime::now()),
                    elapsed_seconds: elapsed,
                    phase: l.phase.clone(),
                    last_output,
                })
            });
        }
    }

    /// Brings the spend counters up to now (cheap: a few atomics), so a scrape is never more
    /// than one refresh tick behind the meter.
    /// Also puts spend and elapsed on record about once a second, whatever `--interval` is:
    /// a crash loses at most that much of the meter.
    pub(super) fn refresh_meters(&mut self) {
        let now = self.now();
        if self.pricing != Pricing::Unknown {
            Metrics::set_counter(&self.metrics.spend, Some(self.engine.spend(now)));
            Metrics::set_counter(&self.metrics.wasted, Some(self.engine.wasted(now)));
        }
        self.metrics.elapsed.set(now.as_secs_f64());
        if now.saturating_sub(self.recorded_at) >= Duration::from_secs(1) {
            self.recorded_at = now;
            let (spend, wasted, elapsed) = (
                self.engine.spend(now),
                self.wasted_carried + self.engine.wasted(now),
                self.elapsed_carried + now.as_secs_f64(),
            );
            if let Some(r) = &self.rec {
                r.update(|l| {
                    l.spend_dollars = spend;
                    l.wasted_dollars = wasted;
                    l.elapsed_seconds = elapsed;
                    l.updated_at = rfc3339(SystemTime::now());
                    l.updated_unix = crate::events::unix_now();
                    l.updated_unix = crate::events::unix_now();
                });
            }
        }
    }

    /// A reading of the fleet's total spend (or why there is none).
    pub(super) fn on_fleet(
        &mut self,
        m: crate::fleet::FleetMsg,
        f: &crate::fleet::FleetSettings,
    ) -> Vec<Decision> {
        match m {
            crate::fleet::FleetMsg::Total(t) => {
                if self.fleet_error.take().is_some() && !self.quiet {
                    eprintln!("costguard: fleet budget readable again");
                }
                self.fleet_total = Some(t);
                if t >= f.max_usd {
                    return vec![Decision::Kill {
                        reason: crate::events::KillReason::Fleet,
                        evidence: format!(
                            "fleet: the fleet spent {} of {} ({} at {})",
                            format_money(t),
                            format_money(f.max_usd),
                            f.query(),
                            crate::redact::text(&f.prometheus_url)
                        ),
                    }];
                }
            }
            crate::fleet::FleetMsg::Error(e) => {
                if self.fleet_error.is_none() {
                    self.emit(
                        EventKind::AgentError,
                        Some("fleet-unreachable"),
                        format!("fleet budget unknown: {e}; the local ceilings still hold"),
                    );
                }
                self.fleet_error = Some(e);
            }
        }
        Vec::new()
    }

    /// The next thing that will happen on its own, in words: the nearest ceiling or window.
    pub(super) fn waiting_text(&self, now: Duration) -> String {
        let e = &self.engine;
        let mut next: Vec<(Duration, String)> = Vec::new();
        if let Some(t) = e.usd_deadline(now) {
            next.push((t.saturating_sub(now), "the dollar ceiling".into()));
        }
        if let Some(w) = e.limits().max_wall {
            next.push((w.saturating_sub(now), "the wall ceiling".into()));
        }
        if let Some(w) = e.limits().idle {
            let idle = e.idle_for(now);
            if !idle.is_zero() {
                next.push((
                    w.saturating_sub(idle),
                    "the idle kill (GPUs idle now)".into(),
                ));
            }
        }
        if let Some(w) = e.limits().stall {
            next.push((
                w.saturating_sub(e.since_progress(now)),
                "the stall kill unless progress comes".into(),
            ));
        }
        match next.into_iter().min_by_key(|(d, _)| *d) {
            Some((d, what)) => format!("{what} in {}", format_duration(d)),
            None => "the job to finish (no ceiling or watchdog will end it)".into(),
        }
    }

    /// The live status line: spend against budget, elapsed, GPU utilization, progress age.
    pub(super) fn live_text(&self, now: Duration) -> String {
        let e = &self.engine;
        let whole = |d: Duration| match d.as_secs() {
            s @ 0..60 => format!("{s}s"),
            s => format_duration(Duration::from_secs(s)),
        };
        let mut parts = Vec::new();
        let spend = e.spend(now);
        parts.push(match (&self.pricing, e.limits().max_usd) {
            (Pricing::Unknown, _) => "spend unknown".to_string(),
            (_, Some(b)) => format!("{} / {}", format_money(spend), format_money(b)),
            (_, None) => format!(
                "{} at {}/h",
                format_money(spend),
                format_money(e.meter().rate())
            ),
        });
        let mut elapsed = whole(now);
        if let Some(w) = e.limits().max_wall {
            elapsed += &format!(" / {}", whole(w));
        }
        parts.push(elapsed);
        let gpus: Vec<String> = self
            .last_gpus
            .iter()
            .filter(|g| self.visible.contains(&g.index))
            .map(|g| match g.util_gpu_pct {
                Some(u) => format!("{}:{u:.0}%", g.index),
                None => format!("{}:?", g.index),
            })
            .collect();
        if !gpus.is_empty() {
            parts.push(format!("GPU {}", gpus.join(" ")));
        }
        if self.tracks_progress {
            parts.push(match e.progress().last_label() {
                Some(_) => format!("progress {} ago", whole(e.since_progress(now))),
                None => format!("no progress in {}", whole(e.since_progress(now))),
            });
        }
        format!("costguard: {}", parts.join(" | "))
    }

    pub(super) fn emit(&mut self, kind: EventKind, reason: Option<&str>, message: String) -> Event {
        let message = crate::redact::text(&message).into_owned();
        self.seq += 1;
        let now = self.now();
        let ev = Event {
            id: format!("{}-{:04}", self.run_id, self.seq),
            run_id: self.run_id.clone(),
            kind,
            reason: reason.map(str::to_string),
            message,
            at: rfc3339(SystemTime::now()),
            elapsed_seconds: now.as_secs_f64(),
            spend_dollars: self.engine.spend(now),
            rate_dollars_per_hour: (self.pricing != Pricing::Unknown)
                .then(|| self.engine.meter().rate()),
            budget_dollars: self.engine.limits().max_usd,
            host: self.host.clone(),
            phase: None,
            report_path: matches!(
                kind,
                EventKind::Killed | EventKind::Completed | EventKind::Failed
            )
            .then(|| self.report_path())
            .flatten(),
            command: Some(self.command_line.clone()),
            test: false,
        };
        self.metrics
            .events
            .with_label_values(&[kind.as_str()])
            .inc();
        let loud = matches!(
            kind,
            EventKind::Warning
                | EventKind::Idle
                | EventKind::Stalled
                | EventKind::Killed
                | EventKind::AgentError
        );
        if loud {
            let r = reason.map(|r| format!(" ({r})")).unwrap_or_default();
            eprintln!("costguard: {}{r}: {}", kind.as_str(), ev.message);
        }
        if let Some(n) = &self.notifier {
            n.send(&ev);
        }
        if let Some(r) = &self.rec {
            r.event(&ev);
            r.update(|l| {
                l.events = self.seq;
                match kind {
                    EventKind::Warning => l.warnings += 1,
                    EventKind::AgentError => l.errors += 1,
                    _ => {}
                }
            });
        }
        self.recent.push(ev.clone());
        if self.recent.len() > 50 {
            self.recent.remove(0);
        }
        self.publish();
        ev
    }

    /// Refreshes the metrics and the /status document from the current state.
    pub(super) fn publish(&mut self) {
        let now = self.now();
        let e = &self.engine;
        let spend = e.spend(now);
        let m = &self.metrics;
        let priced = self.pricing != Pricing::Unknown;
        Metrics::set_counter(&m.spend, priced.then_some(spend));
        Metrics::set_counter(&m.wasted, priced.then(|| e.wasted(now)));
        set_opt(&m.rate, priced.then(|| e.meter().rate()));
        m.elapsed.set(now.as_secs_f64());
        m.idle_seconds.set(e.idle_for(now).as_secs_f64());
        set_opt(
            &m.since_progress,
            self.tracks_progress
                .then(|| e.since_progress(now).as_secs_f64()),
        );
        set_opt(&m.budget, e.limits().max_usd);
        set_opt(
            &m.budget_remaining,
            e.limits().max_usd.map(|b| (b - spend).max(0.0)),
        );
        set_opt(&m.wall_limit, e.limits().max_wall.map(|w| w.as_secs_f64()));
        if let Some(r) = self.last_host.job_rss_bytes {
            m.job_rss.set(r as f64);
        }
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
        let to_usd = e.usd_deadline(now).map(|t| t.saturating_sub(now));
        let to_wall = e.limits().max_wall.map(|w| w.saturating_sub(now));
        let total = e.limits().progress_total;
        let eta = total.and_then(|t| e.progress().eta(t, now)).or_else(|| {
            self.phase_expected
                .map(|(this, rest)| this.saturating_sub(now) + Duration::from_secs_f64(rest))
        });
        let projected = eta
            .filter(|_| self.pricing != Pricing::Unknown)
            .map(|eta| spend + e.meter().rate() * eta.as_secs_f64() / 3600.0);
        for (name, d) in [("usd", to_usd), ("wall", to_wall)] {
            match d {
                Some(d) => m.to_ceiling.with_label_values(&[name]).set(d.as_secs_f64()),
                None => {
                    let _ = m.to_ceiling.remove_label_values(&[name]);
                }
            }
        }
        set_opt(&m.eta, secs(eta));
        set_opt(&m.projected_spend, projected);
        let doc = json!({
            "run_id": self.run_id,
            "command": self.command_line,
            "notify_channels": self.notify_channels,
            "phase": self.phase_name,
            "started_at": rfc3339(self.started_wall),
            "elapsed_seconds": now.as_secs_f64(),
            "spend_dollars": spend,
            "wasted_dollars": e.wasted(now),
            "rate_dollars_per_hour": (self.pricing != Pricing::Unknown).then(|| e.meter().rate()),
            "budget_dollars": e.limits().max_usd,
            "budget_remaining_dollars": e.limits().max_usd.map(|b| (b - spend).max(0.0)),
            "seconds_to_usd_ceiling": secs(to_usd),
            "seconds_to_wall_ceiling": secs(to_wall),
            "idle_seconds": e.idle_for(now).as_secs_f64(),
            "seconds_since_progress": e.since_progress(now).as_secs_f64(),
            "last_progress": e.progress().last_label(),
            "projection": {
                "progress_total": total,
                "last_step": e.progress().last_step(),
                "steps_per_second": e.progress().step_rate(),
                "eta_seconds": secs(eta),
                "projected_spend_dollars": projected,
            },
            "telemetry_error": self.telemetry_error,
            "fleet_spend_dollars": self.fleet_total,
            "fleet_error": self.fleet_error,
            "gpus": self.last_gpus,
            "host": self.last_host,
            "recent_events": self.recent.iter().rev().take(20).collect::<Vec<_>>(),
        });
        if let Ok(mut s) = self.status.write() {
            *s = doc;
        }
        self.longest_idle = self.longest_idle.max(e.idle_for(now).as_secs_f64());
        self.waiting_on = Some(self.waiting_text(now));
        let e = &self.engine;
        if let Some(r) = &self.rec {
            let (wasted, elapsed) = (
                self.wasted_carried + e.wasted(now),
                self.elapsed_carried + now.as_secs_f64(),
            );
            let rate = priced.then(|| e.meter().rate());
            let (budget, wall) = (
                e.limits().max_usd,
                e.limits()
                    .max_wall
                    .map(|w| w.as_secs_f64() + self.elapsed_carried),
            );
            let last_progress = e.progress().last_label().map(str::to_string);
            let last_step = e.progress().last_step();
            let longest = self.longest_idle;
            let waiting = self.waiting_on.clone();
            r.update(|l| {
                l.updated_at = rfc3339(SystemTime::now());
                l.updated_unix = crate::events::unix_now();
                l.spend_dollars = spend;
                l.wasted_dollars = wasted;
                l.elapsed_seconds = elapsed;
                l.priced = priced;
                l.rate_dollars_per_hour = rate;
                l.budget_dollars = budget;
                l.max_wall_seconds = wall;
                l.last_progress = last_progress;
                l.last_step = last_step;
                l.progress_total = total;
                l.eta_seconds = secs(eta);
                l.projected_spend_dollars = projected;
                l.longest_idle_seconds = l.longest_idle_seconds.max(longest);
                l.waiting_on = waiting;
            });
        }
    }

    /// Turns a telemetry sample into an observation for the policy, plus events.
    pub(super) fn on_sample(&mut self, s: SampleMsg) -> Vec<Decision> {
        let now = s.at.saturating_duration_since(self.t0);
        self.job_pids.extend(s.pids.iter().copied());
        if let Some(r) = &self.rec {
            let members: Vec<crate::ledger::Proc> = s
                .pids
                .iter()
                .filter_map(|p| crate::ledger::Proc::of(*p))
                .collect();
            r.update(|l| l.members = members);
        }
        self.last_host = s.host.clone();
        let mut obs = Observation {
            at: now,
            gpus: Vec::new(),
            host_rss: s.host.job_rss_bytes,
        };
        match s.gpus {
            None => {}
            Some(Err(e)) => {
                self.metrics.telemetry_errors.inc();
                self.metrics.forget_gpus();
                let msg = e.to_string();
                if self.telemetry_error.as_deref() != Some(msg.as_str()) {
                    self.telemetry_error = Some(msg.clone());
                    self.emit(
                        EventKind::AgentError,
                        Some("telemetry"),
                        format!("GPU telemetry unknown: {msg}"),
                    );
                }
                obs.gpus = self
                    .visible
                    .iter()
                    .map(|i| GpuObs {
                        index: *i,
                        util_pct: None,
                        job_mem: None,
                        mem_total: None,
                    })
                    .collect();
            }
            Some(Ok(gpus)) => {
                if self.telemetry_error.take().is_some() {
                    eprintln!("costguard: GPU telemetry is back");
                }
                for g in gpus.iter().filter(|g| g.lost) {
                    if self.lost.insert(g.index) {
                        self.metrics.telemetry_errors.inc();
                        self.emit(
                            EventKind::AgentError,
                            Some("gpu-lost"),
                            format!(
                                "GPU {} is lost (NVML_ERROR_GPU_IS_LOST): its values are unknown",
                                g.index
                            ),
                        );
                    }
                }
                tracing::trace!(
                    at_ms = now.as_millis() as u64,
                    util = ?gpus.iter().map(|g| g.util_gpu_pct).collect::<Vec<_>>(),
                    "gpu sample"
                );
                self.metrics.observe_gpus(&gpus);
                if !gpus.iter().any(|g| g.lost) {
                    set_opt(
                        &self.metrics.last_sample,
                        Some(
                            s.wall
                                .duration_since(SystemTime::UNIX_EPOCH)
                                .unwrap_or_default()
                                .as_secs_f64(),
                        ),
                    );
                }
                obs.gpus = self.job_gpus(&gpus, &s.pids);
                self.energy_rate(now, s.at, &gpus);
                self.last_gpus = gpus;
            }
        }
        let d = self.engine.observe(&obs);
        self.publish();
        d
    }

    /// The GPUs the job uses: those among the visible ones where NVML lists one of its
    /// processes; when none is listed (or the list is unsupported), all visible GPUs.
    fn job_gpus(&self, gpus: &[GpuSample], pids: &[i32]) -> Vec<GpuObs> {
        let visible: Vec<&GpuSample> = gpus
            .iter()
            .filter(|g| self.visible.contains(&g.index))
            .collect();
        let mine = |g: &GpuSample| -> Option<u64> {
            let procs = g.procs.as_ref()?;
            let mut total = None;
            for p in procs.iter().filter(|p| pids.contains(&(p.pid as i32))) {
                total = Some(total.unwrap_or(0) + p.used_bytes.unwrap_or(0));
            }
            total
        };
        let used: Vec<&&GpuSample> = visible.iter().filter(|g| mine(g).is_some()).collect();
        let chosen: Vec<&GpuSample> = if used.is_empty() {
            visible.clone()
        } else {
            used.into_iter().copied().collect()
        };
        chosen
            .into_iter()
            .map(|g| GpuObs {
                index: g.index,
                util_pct: if g.lost { None } else { g.util_gpu_pct },
                job_mem: mine(g).or(g.procs.as_ref().map(|_| 0)),
                mem_total: g.mem_total,
            })
            .collect()
    }

    /// Energy pricing: the visible GPUs' energy counters (or power when no counter) set the rate.
    fn energy_rate(&mut self, now: Duration, at: Instant, gpus: &[GpuSample]) {
        let Pricing::Energy { per_kwh } = self.pricing else {
            return;
        };
        let vis: Vec<&GpuSample> = gpus
            .iter()
            .filter(|g| self.visible.contains(&g.index))
            .collect();
        let energy: Option<f64> = vis.iter().map(|g| g.energy_joules).sum();
        let watts = match (energy, self.last_energy) {
            (Some(e), Some((t, prev))) if at > t && e >= prev => {
                Some((e - prev) / (at - t).as_secs_f64())
            }
            _ => vis.iter().map(|g| g.power_watts).sum::<Option<f64>>(),
        };
        if let Some(e) = energy {
            self.last_energy = Some((at, e));
        }
        // Unknown power keeps the last rate: spend never stops accruing for lack of data.
        if let Some(w) = watts {
            self.engine.set_rate(now, w / 1000.0 * per_kwh);
        }
    }
}
