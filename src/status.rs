//! The `/status` document as a type: what the loop publishes, the endpoint serializes and the
//! page reads by field. Its JSON names are the wire format (`/status`, the page's script,
//! `costguard watch`), so a field renamed here is a field renamed for every client.

use serde::Serialize;

use crate::checkin::Checkin;
use crate::events::Event;
use crate::ledger::PhaseRecord;
use crate::telemetry::{GpuSample, HostSample};

/// One instant of a run, as `/status` serves it. `None` is `null` on the wire.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RunView {
    pub run_id: String,
    /// "running" while the loop runs; the run's ending state after it.
    pub state: String,
    pub command: String,
    pub hostname: String,
    pub notify_channels: Vec<&'static str>,
    pub phase: Option<String>,
    pub phases: Option<PhasesView>,
    pub sessions: u32,
    pub kills: usize,
    pub started_at: String,
    /// This session's run time.
    pub elapsed_seconds: f64,
    /// The whole run's (earlier sessions included).
    pub run_elapsed_seconds: f64,
    pub spend_dollars: f64,
    pub wasted_dollars: f64,
    pub rate_dollars_per_hour: Option<f64>,
    /// `rate_source`, `rate_text`, `provider`, `instance_type`, `region`, `spot`.
    #[serde(flatten)]
    pub rate: RateView,
    pub preempted: Option<String>,
    pub budget_dollars: Option<f64>,
    pub budget_remaining_dollars: Option<f64>,
    pub seconds_to_usd_ceiling: Option<f64>,
    pub usd_ceiling_at: Option<String>,
    pub seconds_to_wall_ceiling: Option<f64>,
    pub wall_ceiling_at: Option<String>,
    pub limits: LimitsView,
    pub idle_seconds: f64,
    pub seconds_since_progress: f64,
    pub last_progress: Option<String>,
    pub waiting_on: String,
    pub projection: ProjectionView,
    pub telemetry_error: Option<String>,
    pub fleet_spend_dollars: Option<f64>,
    pub fleet_error: Option<String>,
    pub gpus: Vec<GpuSample>,
    /// The indices of the GPUs the job may use (`CUDA_VISIBLE_DEVICES`); all when unset.
    pub visible_gpus: Vec<u32>,
    /// Whether anything reports the job's progress (output lines, a heartbeat file).
    pub progress_tracked: bool,
    pub host: HostSample,
    /// Newest first, at most 20.
    pub recent_events: Vec<Event>,
    pub updated_at: String,
    pub page_url: Option<String>,
    /// A plan phase's step running, in words ("seed 2 of 3").
    pub step: Option<String>,
    pub checkin: Option<Checkin>,
    /// The ending (absent from the document while the run runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome_detail: Option<String>,
    /// `null` once ended without a report; absent while running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_path: Option<Option<String>>,
}

/// Where the rate comes from and the box it was found on.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct RateView {
    /// flag, live, catalog, gpu-table, energy, none.
    pub rate_source: &'static str,
    /// "$21.96/h from aws p4d.24xlarge us-west-2 on-demand (catalog 2026-11)".
    pub rate_text: Option<String>,
    pub provider: Option<&'static str>,
    pub instance_type: Option<String>,
    pub region: Option<String>,
    pub spot: Option<bool>,
    /// Whether detection has answered yet.
    #[serde(skip)]
    pub detected: bool,
}

/// A plan's phase and the phases on record.
#[derive(Debug, Clone, Serialize)]
pub struct PhasesView {
    pub index: usize,
    pub total: usize,
    pub name: String,
    pub done: Vec<PhaseRecord>,
}

/// The ceilings in force (seconds and bytes; `None` is off).
#[derive(Debug, Clone, Serialize, Default)]
pub struct LimitsView {
    pub max_usd: Option<f64>,
    pub max_wall_seconds: Option<f64>,
    pub idle_seconds: Option<f64>,
    pub idle_below_pct: f64,
    pub stall_seconds: Option<f64>,
    pub max_host_mem_bytes: Option<u64>,
}

/// Where the run is heading, from its progress.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ProjectionView {
    pub progress_total: Option<f64>,
    pub last_step: Option<f64>,
    pub steps_per_second: Option<f64>,
    pub eta_seconds: Option<f64>,
    pub projected_spend_dollars: Option<f64>,
}

impl RunView {
    /// The live status line on the terminal's bottom row: spend against budget, elapsed,
    /// the visible GPUs' utilization, how long since progress.
    pub fn live_text(&self) -> String {
        use crate::units::{format_duration, format_money};
        let whole = |secs: f64| match secs.max(0.0) as u64 {
            s @ 0..60 => format!("{s}s"),
            s => format_duration(std::time::Duration::from_secs(s)),
        };
        let mut parts = Vec::new();
        if let Some(p) = &self.phases {
            parts.push(match &self.step {
                Some(step) => format!("{} ({step})", p.name),
                None => p.name.clone(),
            });
        }
        parts.push(match (self.rate_dollars_per_hour, self.budget_dollars) {
            (None, _) => "spend unknown".to_string(),
            (Some(_), Some(b)) => {
                format!("{} / {}", format_money(self.spend_dollars), format_money(b))
            }
            (Some(r), None) => format!(
                "{} at {}/h",
                format_money(self.spend_dollars),
                format_money(r)
            ),
        });
        let mut elapsed = whole(self.elapsed_seconds);
        if let Some(w) = self.limits.max_wall_seconds {
            elapsed += &format!(" / {}", whole(w));
        }
        parts.push(elapsed);
        let gpus: Vec<String> = self
            .gpus
            .iter()
            .filter(|g| self.visible_gpus.contains(&g.index))
            .map(|g| match g.util_gpu_pct {
                Some(u) => format!("{}:{u:.0}%", g.index),
                None => format!("{}:?", g.index),
            })
            .collect();
        if !gpus.is_empty() {
            parts.push(format!("GPU {}", gpus.join(" ")));
        }
        if self.progress_tracked {
            let since = whole(self.seconds_since_progress);
            parts.push(match self.last_progress {
                Some(_) => format!("progress {since} ago"),
                None => format!("no progress in {since}"),
            });
        }
        format!("costguard: {}", parts.join(" | "))
    }

    /// The ending, as the page and `/status` show it once the loop is over: no ceiling ahead.
    pub fn end(&mut self, state: &str, code: u8, detail: &str, report: Option<&str>) {
        self.state = state.to_string();
        self.exit_code = Some(code);
        self.outcome_detail = Some(detail.to_string());
        self.report_path = Some(report.map(str::to_string));
        self.waiting_on = "nothing: the run has ended".into();
        self.seconds_to_usd_ceiling = None;
        self.usd_ceiling_at = None;
        self.seconds_to_wall_ceiling = None;
        self.wall_ceiling_at = None;
    }
}

/// What the endpoint holds: nothing before the loop's first publish (served as `{}`).
pub type Published = std::sync::Arc<std::sync::RwLock<Option<RunView>>>;

/// The document as served.
pub fn to_json(p: &Option<RunView>) -> String {
    match p {
        Some(v) => serde_json::to_string(v).unwrap_or_else(|_| "{}".into()),
        None => "{}".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32, util: Option<f64>) -> GpuSample {
        GpuSample {
            index,
            util_gpu_pct: util,
            ..GpuSample::default()
        }
    }

    #[test]
    fn the_live_line_reads_the_view() {
        let mut v = RunView {
            elapsed_seconds: 75.4,
            spend_dollars: 1.5,
            rate_dollars_per_hour: Some(3.0),
            ..RunView::default()
        };
        assert_eq!(v.live_text(), "costguard: $1.50 at $3.00/h | 1m15s");
        v.budget_dollars = Some(40.0);
        v.limits.max_wall_seconds = Some(7200.0);
        v.gpus = vec![gpu(0, Some(87.4)), gpu(1, None), gpu(2, Some(5.0))];
        v.visible_gpus = vec![0, 1];
        v.progress_tracked = true;
        v.seconds_since_progress = 12.9;
        assert_eq!(
            v.live_text(),
            "costguard: $1.50 / $40.00 | 1m15s / 2h00m00s | GPU 0:87% 1:? | no progress in 12s"
        );
        v.last_progress = Some("step 3/10".into());
        v.phases = Some(PhasesView {
            index: 2,
            total: 7,
            name: "resnet".into(),
            done: Vec::new(),
        });
        v.step = Some("seed 2 of 3".into());
        v.rate_dollars_per_hour = None;
        assert_eq!(
            v.live_text(),
            "costguard: resnet (seed 2 of 3) | spend unknown | 1m15s / 2h00m00s | GPU 0:87% 1:? | progress 12s ago"
        );
    }
}
