//! Prometheus metrics: one registry per process, written by the run loop, read by scrapes.
//!
//! Unknown GPU values are absent series, never zeros. Label values are bounded: reasons and
//! kinds are closed enums, GPUs are the machine's few devices; run ids are not labels.

use prometheus::{
    Counter, CounterVec, Encoder, Gauge, GaugeVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::events::{EventKind, KillReason};
use crate::telemetry::GpuSample;

pub struct Metrics {
    pub registry: Registry,
    /// The process collector (costguard's own CPU, memory, descriptors), registered at the
    /// first scrape: it reads /proc as it is made, which no job's start should wait for.
    process: std::sync::Once,
    pub spend: CounterVec,
    pub wasted: CounterVec,
    pub rate: GaugeVec,
    pub budget: GaugeVec,
    pub budget_remaining: GaugeVec,
    pub wall_limit: GaugeVec,
    pub elapsed: Gauge,
    pub idle_seconds: Gauge,
    pub since_progress: GaugeVec,
    pub kills: CounterVec,
    pub events: CounterVec,
    pub notifications_failed: CounterVec,
    pub telemetry_errors: Counter,
    /// Failed writes of the run record (ledger, event log).
    pub record_errors: Counter,
    /// 1 once the run has ended (seen by the scrapes during `--linger`): the alert rules
    /// tell a run that ended from a costguard that died.
    pub run_ended: Gauge,
    pub last_sample: GaugeVec,
    /// Per-GPU series.
    gpu: GpuSeries,
    pub job_rss: Gauge,
    /// Seconds until each ceiling at the current rate; `ceiling` is `usd` or `wall`.
    pub to_ceiling: GaugeVec,
    /// Projection from the progress rate (absent until --progress-total and a rate exist).
    pub eta: GaugeVec,
    pub projected_spend: GaugeVec,
    /// 1, labelled with where the rate comes from and the box it was found on.
    pub rate_info: GaugeVec,
}

const RATE_HELP: &str = "1, labelled with where the rate comes from (rate_source: flag, live, catalog, gpu-table, energy, none) and the box it was found on";
const RATE_LABELS: [&str; 5] = ["rate_source", "provider", "instance_type", "region", "spot"];

/// The per-GPU series, labelled gpu, uuid, model.
struct GpuSeries {
    util: GaugeVec,
    mem_used: GaugeVec,
    mem_total: GaugeVec,
    power: GaugeVec,
    energy: CounterVec,
    temp: GaugeVec,
}

impl GpuSeries {
    fn new(r: &Reg) -> GpuSeries {
        let g = |name: &str, help: &str| r.gauges(name, help, &GPU_LABELS);
        GpuSeries {
            util: g("costguard_gpu_utilization_ratio", "GPU utilization, 0 to 1"),
            mem_used: g("costguard_gpu_memory_used_bytes", "GPU memory in use"),
            mem_total: g("costguard_gpu_memory_total_bytes", "GPU memory installed"),
            power: g("costguard_gpu_power_watts", "GPU power draw"),
            energy: r.counters(
                "costguard_gpu_energy_joules_total",
                "GPU energy since the driver loaded",
                &GPU_LABELS,
                &[],
            ),
            temp: g("costguard_gpu_temperature_celsius", "GPU temperature"),
        }
    }
}

/// Sets a label-less optional gauge: present when known, absent when not.
pub fn set_opt(v: &GaugeVec, x: Option<f64>) {
    match x {
        Some(x) => v.with_label_values::<&str>(&[]).set(x),
        None => v.reset(),
    }
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    // Names are static and distinct: registration cannot collide.
    let _ = r.register(Box::new(c.clone()));
    c
}

/// Registers metrics on one registry; names are static and distinct.
struct Reg(Registry);

const GPU_LABELS: [&str; 3] = ["gpu", "uuid", "model"];

impl Reg {
    /// `costguard_build_info` (the process collector comes with the first scrape).
    fn standard(&self) {
        let build = reg(
            &self.0,
            IntGaugeVec::new(
                Opts::new("costguard_build_info", "costguard build, always 1"),
                &["version"],
            )
            .expect("valid metric"),
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    }

    fn gauge(&self, name: &str, help: &str) -> Gauge {
        reg(&self.0, Gauge::new(name, help).expect("valid metric"))
    }
    fn counter(&self, name: &str, help: &str) -> Counter {
        reg(&self.0, Counter::new(name, help).expect("valid metric"))
    }
    /// A gauge with labels; label-less, a series that is absent while unknown or unset.
    fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        let v = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
        reg(&self.0, v)
    }
    /// A counter with labels, each of `values` present from the start at 0.
    fn counters(&self, name: &str, help: &str, labels: &[&str], values: &[&str]) -> CounterVec {
        let v = reg(
            &self.0,
            CounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
        );
        for x in values {
            v.with_label_values(&[*x]);
        }
        v
    }
}

impl Metrics {
    pub fn new(channels: &[&str]) -> Metrics {
        let r = Reg(Registry::new());
        r.standard();
        let kill_reasons: Vec<&str> = KillReason::ALL.iter().map(|k| k.as_str()).collect();
        let kinds: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        let og = |n: &str, h: &str| r.gauges(n, h, &[]);
        let oc = |n: &str, h: &str| r.counters(n, h, &[], &[]);
        Metrics {
            spend: oc(
                "costguard_spend_dollars_total",
                "Dollars spent by the guarded job so far",
            ),
            wasted: oc(
                "costguard_wasted_dollars_total",
                "Dollars spent while the GPUs were idle or the job made no progress",
            ),
            rate: og(
                "costguard_spend_rate_dollars_per_hour",
                "Current price of the job in dollars per hour",
            ),
            budget: og(
                "costguard_budget_dollars",
                "The dollar ceiling (absent when there is none)",
            ),
            budget_remaining: og(
                "costguard_budget_remaining_dollars",
                "Dollars left before the dollar ceiling",
            ),
            wall_limit: og(
                "costguard_wall_limit_seconds",
                "The wall-clock ceiling (absent when none)",
            ),
            elapsed: r.gauge("costguard_elapsed_seconds", "Seconds since the job started"),
            idle_seconds: r.gauge(
                "costguard_idle_seconds",
                "Seconds the job's GPUs have been idle (0 when busy or unknown)",
            ),
            since_progress: og(
                "costguard_seconds_since_progress",
                "Seconds since the last progress signal",
            ),
            kills: r.counters(
                "costguard_kills_total",
                "Kills of the job, by reason",
                &["reason"],
                &kill_reasons,
            ),
            events: r.counters(
                "costguard_events_total",
                "Events raised, by kind",
                &["kind"],
                &kinds,
            ),
            notifications_failed: r.counters(
                "costguard_notifications_failed_total",
                "Notification deliveries that failed, by channel",
                &["channel"],
                channels,
            ),
            record_errors: r.counter(
                "costguard_record_errors_total",
                "Writes of the run record (ledger, event log) that failed",
            ),
            run_ended: r.gauge(
                "costguard_run_ended",
                "1 once the run has ended (its verdict is recorded), 0 while it runs",
            ),
            telemetry_errors: r.counter(
                "costguard_telemetry_errors_total",
                "GPU telemetry samples that failed or timed out",
            ),
            last_sample: og(
                "costguard_last_sample_timestamp_seconds",
                "Unix time of the last complete GPU sample",
            ),
            gpu: GpuSeries::new(&r),
            job_rss: r.gauge(
                "costguard_job_resident_memory_bytes",
                "RSS of the job's whole process tree",
            ),
            to_ceiling: r.gauges(
                "costguard_seconds_to_ceiling",
                "Seconds until a ceiling is reached at the current rate, by ceiling (usd, wall)",
                &["ceiling"],
            ),
            eta: og(
                "costguard_projected_seconds_remaining",
                "Seconds to completion projected from the progress rate and --progress-total",
            ),
            projected_spend: og(
                "costguard_projected_spend_dollars",
                "Spend at completion projected from the progress rate and the current price",
            ),
            rate_info: r.gauges("costguard_rate_info", RATE_HELP, &RATE_LABELS),
            registry: r.0,
            process: std::sync::Once::new(),
        }
    }

    /// The one `costguard_rate_info` series: the current source and box.
    pub fn set_rate_info(&self, labels: &[&str; 5]) {
        let current = self.rate_info.with_label_values(labels);
        if current.get() != 1.0 {
            self.rate_info.reset();
            self.rate_info.with_label_values(labels).set(1.0);
        }
    }

    /// Brings a label-less counter up to `total` (counters only go up); absent when None.
    pub fn set_counter(v: &CounterVec, total: Option<f64>) {
        let Some(total) = total else {
            v.reset();
            return;
        };
        let c = v.with_label_values::<&str>(&[]);
        let d = total - c.get();
        if d > 0.0 {
            c.inc_by(d);
        }
    }

    /// Per-GPU series; a value that is unknown in this sample is removed, not zeroed.
    pub fn observe_gpus(&self, gpus: &[GpuSample]) {
        for s in gpus {
            let idx = s.index.to_string();
            let labels = [idx.as_str(), s.uuid.as_str(), s.model.as_str()];
            let set = |v: &GaugeVec, x: Option<f64>| match x {
                Some(x) => v.with_label_values(&labels).set(x),
                None => {
                    let _ = v.remove_label_values(&labels);
                }
            };
            set(&self.gpu.util, s.util_gpu_pct.map(|u| u / 100.0));
            set(&self.gpu.mem_used, s.mem_used.map(|b| b as f64));
            set(&self.gpu.mem_total, s.mem_total.map(|b| b as f64));
            set(&self.gpu.power, s.power_watts);
            match s.energy_joules {
                // A counter that follows the driver's own: it only goes up; a smaller
                // reading means the driver reloaded, which is a counter reset.
                Some(j) => {
                    let c = self.gpu.energy.with_label_values(&labels);
                    let d = j - c.get();
                    if d >= 0.0 {
                        c.inc_by(d);
                    } else {
                        let _ = self.gpu.energy.remove_label_values(&labels);
                        self.gpu.energy.with_label_values(&labels).inc_by(j);
                    }
                }
                None => {
                    let _ = self.gpu.energy.remove_label_values(&labels);
                }
            }
            set(&self.gpu.temp, s.temperature_c);
        }
    }

    /// Drops every per-GPU series (telemetry went away: unknown, not zero).
    pub fn forget_gpus(&self) {
        for v in [
            &self.gpu.util,
            &self.gpu.mem_used,
            &self.gpu.mem_total,
            &self.gpu.power,
            &self.gpu.temp,
        ] {
            v.reset();
        }
        self.gpu.energy.reset();
    }

    pub fn render(&self) -> String {
        self.process.call_once(|| {
            let _ = self.registry.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ));
        });
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
