//! Where actions land: metrics, the /status document, the run record, the notifier, the
//! `/events` feed and the console. Each takes the events and snapshots it cares about; none decides anything.

use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use super::record::Recorder;
use super::state::RunState;
use super::view::Snapshot;
use crate::events::{rfc3339, Event, EventKind};
use crate::metrics::{set_opt, Metrics};
use crate::notify::Notifier;
use crate::series::{GpuPoint, Point, Series};
use crate::status::{LimitsView, PhasesView, ProjectionView, Published, RunView};

pub struct Sinks {
    pub metrics: Arc<Metrics>,
    pub status: Published,
    /// The run's record on disk (None only after it was closed).
    pub recorder: Option<Recorder>,
    pub notifier: Option<Notifier>,
    /// The telemetry generation last applied to the per-GPU series.
    gpu_generation: u64,
    /// The bounded time series behind the timeline (carried from an earlier session); the
    /// endpoint reads it for `/series` and the page.
    pub series: Arc<RwLock<Series>>,
    /// When the series was last written to the run directory.
    series_saved: Option<std::time::Instant>,
    /// The write of series.json in progress, off the run loop.
    series_write: Option<tokio::task::JoinHandle<bool>>,
    /// What was last handed to a write of series.json (the close writes only what changed).
    series_bytes: Option<Vec<u8>>,
}

impl Sinks {
    pub fn new(
        metrics: Arc<Metrics>,
        status: Published,
        series: Arc<RwLock<Series>>,
        recorder: Recorder,
        notifier: Option<Notifier>,
    ) -> Sinks {
        Sinks {
            metrics,
            status,
            recorder: Some(recorder),
            notifier,
            gpu_generation: 0,
            series,
            // The first write comes ten seconds in, else at the close (`finish_series`),
            // beside the ledger's final save rather than ahead of it on the blocking pool.
            series_saved: Some(std::time::Instant::now()),
            series_write: None,
            series_bytes: None,
        }
    }

    /// One event to every sink.
    pub fn emit(&mut self, ev: &Event) {
        let kind = ev.kind;
        self.metrics
            .events
            .with_label_values(&[kind.as_str()])
            .inc();
        if let (EventKind::Killed, Some(r)) = (kind, ev.reason.as_deref()) {
            self.metrics.kills.with_label_values(&[r]).inc();
        }
        let loud = matches!(
            kind,
            EventKind::Warning
                | EventKind::Idle
                | EventKind::Stalled
                | EventKind::Killed
                | EventKind::AgentError
        );
        if loud {
            let r = ev
                .reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            crate::console::alert(format!("{}{r}: {}", kind.as_str(), ev.message));
        }
        if let Some(n) = &self.notifier {
            n.send(ev);
        }
        crate::feed::global().push(ev);
        if let Ok(mut s) = self.series.write() {
            s.mark(ev);
        }
        if let Some(r) = &self.recorder {
            r.event(ev);
            r.update(|l| {
                l.events += 1;
                match kind {
                    EventKind::Warning => l.warnings += 1,
                    EventKind::AgentError => l.errors += 1,
                    _ => {}
                }
            });
        }
    }

    /// Metrics, /status and the ledger from the state at `snap`.
    /// The run at this instant to every sink: the metrics, and the one view ([`RunView`])
    /// that `/status`, the page, the ledger and the live line read.
    pub fn publish(&mut self, st: &RunState, snap: &Snapshot) {
        self.publish_metrics(st, snap);
        let view = self.view(st, snap);
        self.publish_record(st, &view);
        if let Ok(mut w) = self.status.write() {
            *w = Some(view);
        }
    }

    /// The spend counters and elapsed only (cheap: a few atomics), so a scrape is never
    /// more than one refresh tick behind the meter.
    pub fn meters(&self, st: &RunState, now: std::time::Duration) {
        let m = &self.metrics;
        if st.priced() {
            Metrics::set_counter(&m.spend, Some(st.engine().spend(now)));
            Metrics::set_counter(&m.wasted, Some(st.engine().wasted(now)));
        }
        m.elapsed.set(now.as_secs_f64());
    }

    /// Spend and elapsed on record: a crash loses at most what came since. The time series
    /// gets a point, and reaches the run directory every 10 s.
    pub fn record(&mut self, st: &RunState, now: std::time::Duration) {
        self.sample_series(st, now);
        let Some(r) = &self.recorder else { return };
        let c = st.carried();
        let (spend, wasted, elapsed) = (
            st.engine().spend(now),
            c.wasted + st.engine().wasted(now),
            c.elapsed + now.as_secs_f64(),
        );
        r.update(|l| {
            l.spend_dollars = spend;
            l.wasted_dollars = wasted;
            l.elapsed_seconds = elapsed;
            l.updated_at = rfc3339(SystemTime::now());
            l.updated_unix = crate::events::unix_now();
            l.updated_boottime = Some(crate::events::boot_clock());
            l.boot_id = crate::events::boot_id().map(str::to_string);
        });
    }

    pub fn sample_series(&mut self, st: &RunState, now: std::time::Duration) {
        let e = st.engine();
        let t = st.telemetry();
        let utils: Vec<f64> = t.gpus.iter().filter_map(|g| g.util_gpu_pct).collect();
        let util = (t.current && !utils.is_empty())
            .then(|| utils.iter().sum::<f64>() / utils.len() as f64);
        let gpus = if t.current {
            t.gpus
                .iter()
                .map(|g| GpuPoint {
                    i: g.index,
                    u: g.util_gpu_pct,
                    m: g.mem_used
                        .zip(g.mem_total.filter(|t| *t > 0))
                        .map(|(u, t)| u as f64 * 100.0 / t as f64),
                })
                .collect()
        } else {
            Vec::new()
        };
        let stall = e
            .limits()
            .stall
            .is_some_and(|s| st.tracks_progress() && e.since_progress(now) >= s);
        let point = Point {
            t: crate::events::unix_now(),
            usd: e.spend(now),
            util,
            idle: !e.idle_for(now).is_zero(),
            stall,
            gap_before: false,
            gpus,
            rss: t.host.job_rss_bytes.map(|b| b as f64),
        };
        if let Ok(mut s) = self.series.write() {
            s.push(point);
        }
        let due = self
            .series_saved
            .is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(10));
        // Written on the blocking pool, never on the loop: a slow or full disk must not hold
        // up a kill. A write still going is not doubled; a lost one costs only resolution.
        if due && self.series_write.as_ref().is_none_or(|h| h.is_finished()) {
            self.series_saved = Some(std::time::Instant::now());
            self.series_write = self.series_job().map(tokio::task::spawn_blocking);
        }
    }

    /// The series as it is now, and the write of it to the run directory (true: written).
    fn series_job(&mut self) -> Option<impl FnOnce() -> bool + Send + 'static> {
        let dir = self.recorder.as_ref()?.run_dir.clone();
        let bytes = serde_json::to_vec(&*self.series.read().ok()?).ok()?;
        self.series_bytes = Some(bytes.clone());
        Some(move || match crate::series::Series::write(&dir, &bytes) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "series.json not written");
                false
            }
        })
    }

    /// The series written, after any write in progress (at the close: the run's record holds
    /// it) — unless that write succeeded with the series as it still is. Runs beside the
    /// ledger's close: nothing here borrows the sinks. The record's writer hands its next
    /// write to the blocking pool first (it runs on the first yield here; at a run's end that
    /// is the last event, then the final ledger with its two fsyncs), while the series (no
    /// fsync) is written meanwhile on this thread, which has nothing else to do at the close.
    pub fn finish_series(&mut self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let in_flight = self.series_write.take();
        self.series_saved = Some(std::time::Instant::now());
        let before = self.series_bytes.clone();
        let job = self.series_job();
        let after = self.series_bytes.clone();
        async move {
            tokio::task::yield_now().await;
            let written = match in_flight {
                Some(h) => h.await.unwrap_or(false),
                None => false,
            };
            if written && after.is_some() && after == before {
                return;
            }
            if let Some(job) = job {
                job();
            }
        }
    }

    /// The run's series as it is now.
    pub fn series_now(&self) -> crate::series::Series {
        self.series.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// The target's processes, identified by start time, for a restart to find.
    pub fn record_members(&self, pids: &[i32]) {
        let Some(r) = &self.recorder else { return };
        let members: Vec<crate::ledger::Proc> = pids
            .iter()
            .filter_map(|p| crate::ledger::Proc::of(*p))
            .collect();
        r.update(|l| l.members = members);
    }

    /// A kill, with its evidence and the job's last lines, into the ledger.
    pub fn record_kill(
        &self,
        st: &RunState,
        reason: &str,
        evidence: &str,
        last_output: Vec<String>,
        now: std::time::Duration,
    ) {
        let Some(r) = &self.recorder else { return };
        let elapsed = st.carried().elapsed + now.as_secs_f64();
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

    fn publish_metrics(&mut self, st: &RunState, s: &Snapshot) {
        let m = &self.metrics;
        let priced = st.priced();
        Metrics::set_counter(&m.spend, priced.then_some(s.spend));
        Metrics::set_counter(&m.wasted, priced.then_some(s.wasted));
        set_opt(&m.rate, s.rate);
        m.elapsed.set(s.now.as_secs_f64());
        m.idle_seconds.set(s.idle.as_secs_f64());
        set_opt(&m.since_progress, s.since_progress.map(|d| d.as_secs_f64()));
        set_opt(&m.budget, s.budget);
        set_opt(&m.budget_remaining, s.remaining);
        set_opt(&m.wall_limit, s.wall_limit.map(|w| w.as_secs_f64()));
        for (name, d) in [("usd", s.to_usd), ("wall", s.to_wall)] {
            match d {
                Some(d) => m.to_ceiling.with_label_values(&[name]).set(d.as_secs_f64()),
                None => {
                    let _ = m.to_ceiling.remove_label_values(&[name]);
                }
            }
        }
        let r = st.rate_view();
        m.set_rate_info(&[
            r.rate_source,
            r.provider.unwrap_or(""),
            r.instance_type.as_deref().unwrap_or(""),
            r.region.as_deref().unwrap_or(""),
            match r.spot {
                Some(true) => "true",
                Some(false) => "false",
                None => "",
            },
        ]);
        set_opt(&m.eta, s.eta.map(|d| d.as_secs_f64()));
        set_opt(&m.projected_spend, s.projected);
        let t = st.telemetry();
        if let Some(r) = t.host.job_rss_bytes {
            m.job_rss.set(r as f64);
        }
        for (c, n) in [
            (&m.telemetry_errors, t.errors),
            (&m.record_errors, st.record_errors()),
        ] {
            let d = n as f64 - c.get();
            if d > 0.0 {
                c.inc_by(d);
            }
        }
        if self.gpu_generation != t.generation {
            self.gpu_generation = t.generation;
            if t.current {
                m.observe_gpus(&t.gpus);
            } else {
                m.forget_gpus();
            }
            set_opt(&m.last_sample, t.last_good_unix);
        }
    }

    /// The view of the run at the snapshot's instant.
    pub fn view(&self, st: &RunState, s: &Snapshot) -> RunView {
        let secs = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64());
        let id = st.id();
        let t = st.telemetry();
        let lim = st.engine().limits();
        let at = |d: Option<std::time::Duration>| d.map(|d| rfc3339(SystemTime::now() + d));
        let (done, kills, sessions) = self.recorder.as_ref().map_or_else(Default::default, |r| {
            r.read(|l| (l.phases.clone(), l.kills.len(), l.sessions))
        });
        let rate = st.rate_view();
        let checkin = self
            .recorder
            .as_ref()
            .and_then(|r| r.read(|l| crate::checkin::of(l, true, s.step.as_deref())));
        RunView {
            run_id: id.run_id.clone(),
            state: "running".into(),
            command: id.command_line.clone(),
            hostname: id.host.clone(),
            notify_channels: id.notify_channels.clone(),
            phase: st.phase().map(|p| p.label()),
            phases: st.phase().map(|p| PhasesView {
                index: p.index,
                total: p.total,
                name: p.name.clone(),
                done,
            }),
            sessions,
            kills,
            started_at: rfc3339(id.started_wall),
            elapsed_seconds: s.now.as_secs_f64(),
            run_elapsed_seconds: st.carried().elapsed + s.now.as_secs_f64(),
            spend_dollars: s.spend,
            wasted_dollars: s.wasted,
            rate_dollars_per_hour: s.rate,
            rate,
            preempted: st.preempted().map(str::to_string),
            budget_dollars: s.budget,
            budget_remaining_dollars: s.remaining,
            seconds_to_usd_ceiling: secs(s.to_usd),
            usd_ceiling_at: at(s.to_usd),
            seconds_to_wall_ceiling: secs(s.to_wall),
            wall_ceiling_at: at(s.to_wall),
            limits: LimitsView {
                max_usd: lim.max_usd,
                max_wall_seconds: secs(lim.max_wall),
                idle_seconds: secs(lim.idle),
                idle_below_pct: lim.idle_below,
                stall_seconds: secs(lim.stall.filter(|_| st.tracks_progress())),
                max_host_mem_bytes: lim.max_host_mem,
            },
            idle_seconds: s.idle.as_secs_f64(),
            seconds_since_progress: s.since_progress_raw.as_secs_f64(),
            last_progress: s.last_progress.clone(),
            waiting_on: s.waiting_on.clone(),
            projection: ProjectionView {
                progress_total: s.progress_total,
                last_step: s.last_step,
                steps_per_second: s.steps_per_second,
                eta_seconds: secs(s.eta),
                projected_spend_dollars: s.projected,
            },
            telemetry_error: t.error.clone(),
            fleet_spend_dollars: st.fleet().and_then(|f| f.total),
            fleet_error: st.fleet().and_then(|f| f.error.clone()),
            gpus: t.gpus.clone(),
            visible_gpus: t.visible.clone(),
            progress_tracked: st.tracks_progress(),
            host: t.host.clone(),
            recent_events: st.recent().rev().take(20).cloned().collect(),
            updated_at: rfc3339(SystemTime::now()),
            page_url: id.page_url.clone(),
            step: s.step.clone(),
            checkin,
            ..RunView::default()
        }
    }

    /// The run's ending on /status (and so on the page): its state, exit status and words.
    pub fn publish_end(&self, state: &str, code: u8, detail: &str, report: Option<&str>) {
        if let Ok(mut w) = self.status.write() {
            w.get_or_insert_with(RunView::default)
                .end(state, code, detail, report);
        }
    }

    /// The ledger's live part, from the view (the rest is written by the events and the
    /// ending).
    fn publish_record(&self, st: &RunState, v: &RunView) {
        let Some(r) = &self.recorder else { return };
        let c = st.carried();
        let longest = st.longest_idle();
        r.update(|l| {
            l.updated_at = v.updated_at.clone();
            l.updated_unix = crate::events::unix_now();
            l.spend_dollars = v.spend_dollars;
            l.wasted_dollars = c.wasted + v.wasted_dollars;
            l.elapsed_seconds = v.run_elapsed_seconds;
            l.priced = v.rate_dollars_per_hour.is_some();
            l.rate_dollars_per_hour = v.rate_dollars_per_hour;
            l.rate_source = v.rate.rate_text.clone();
            if v.rate.detected {
                l.provider = v.rate.provider.map(str::to_string);
                l.instance_type = v.rate.instance_type.clone();
                l.region = v.rate.region.clone();
                l.spot = v.rate.spot;
            }
            if let Some(p) = &v.preempted {
                l.preempted = Some(p.clone());
            }
            l.budget_dollars = v.budget_dollars;
            l.max_wall_seconds = v.limits.max_wall_seconds.map(|w| w + c.elapsed);
            l.last_progress = v.last_progress.clone();
            l.last_step = v.projection.last_step;
            l.progress_total = v.projection.progress_total;
            l.eta_seconds = v.projection.eta_seconds;
            l.projected_spend_dollars = v.projection.projected_spend_dollars;
            l.longest_idle_seconds = l.longest_idle_seconds.max(longest);
            l.waiting_on = Some(v.waiting_on.clone());
            l.step = v.step.clone();
            if l.phases_total.is_some() {
                l.phase_elapsed_seconds = Some(v.elapsed_seconds);
            }
        });
    }
}
