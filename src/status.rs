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
