//! The scenario file's format: GPUs whose values step over time, their processes, hangs.

use serde::Deserialize;

use super::Ret;

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct Scenario {
    #[serde(default)]
    pub(crate) init_error: Ret,
    #[serde(default)]
    pub(crate) init_hang_secs: f64,
    /// List only processes whose pid exists in /proc (as a real driver does after cleanup).
    #[serde(default)]
    pub(crate) only_live_pids: bool,
    #[serde(default)]
    pub(crate) gpus: Vec<Gpu>,
    #[serde(default)]
    pub(crate) hang: Vec<Hang>,
    /// Unix time that timeline `at` values count from (default: nvmlInit), so a benchmark
    /// knows to the millisecond when a scripted change happens.
    #[serde(default)]
    pub(crate) epoch_unix: Option<f64>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct Gpu {
    pub(crate) name: String,
    pub(crate) uuid: String,
    #[serde(default = "default_total")]
    pub(crate) mem_total: u64,
    /// The device's minor number (`/dev/nvidia<minor>`); the GPU's index when not given.
    #[serde(default)]
    pub(crate) minor: Option<u32>,
    #[serde(default)]
    pub(crate) lost_after: Option<f64>,
    /// Function names (without the `nvmlDevice` prefix, e.g. "GetPowerUsage") that answer
    /// NOT_SUPPORTED on this device.
    #[serde(default)]
    pub(crate) unsupported: Vec<String>,
    #[serde(default)]
    pub(crate) timeline: Vec<Step>,
    #[serde(default)]
    pub(crate) processes: Vec<Proc>,
}

pub(crate) fn default_total() -> u64 {
    80 << 30
}

/// Values from `at` seconds on; fields not given carry over from the step before.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct Step {
    pub(crate) at: f64,
    pub(crate) util: Option<u32>,
    pub(crate) mem_util: Option<u32>,
    pub(crate) mem_used: Option<u64>,
    pub(crate) power_mw: Option<u32>,
    pub(crate) temp: Option<u32>,
    pub(crate) throttle: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct Proc {
    pub(crate) pid: Option<u32>,
    pub(crate) pid_file: Option<String>,
    #[serde(default)]
    pub(crate) mem: u64,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct Hang {
    /// Full function name, e.g. "nvmlDeviceGetUtilizationRates".
    pub(crate) call: String,
    #[serde(default)]
    pub(crate) after: f64,
    pub(crate) secs: f64,
}
