//! Telemetry: GPU samples (NVML, on a thread of its own) and host samples (sysinfo).
//!
//! Nothing here is on the enforcement path: the run loop receives finished samples over a
//! channel, and a sample that does not come back in time is "unknown", never zero.

pub(crate) mod devfiles;
pub(crate) mod host;
pub(crate) mod nvml;
pub(crate) mod price;

use serde::Serialize;

/// What a GPU is, read once at start.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuInfo {
    pub index: u32,
    pub uuid: String,
    pub model: String,
    pub mem_total: Option<u64>,
}

/// A GPU process as NVML lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuProc {
    pub pid: u32,
    pub used_bytes: Option<u64>,
    /// SM utilization of this process, percent, where the driver has it.
    pub sm_util: Option<u32>,
}

/// One reading of one GPU. Every value is optional: `None` is "unknown" (not supported,
/// timed out, lost), which is never the same as zero.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct GpuSample {
    pub index: u32,
    pub uuid: String,
    pub model: String,
    pub util_gpu_pct: Option<f64>,
    pub util_mem_pct: Option<f64>,
    pub mem_used: Option<u64>,
    pub mem_total: Option<u64>,
    pub power_watts: Option<f64>,
    pub energy_joules: Option<f64>,
    pub temperature_c: Option<f64>,
    pub throttle_reasons: Option<u64>,
    pub procs: Option<Vec<GpuProc>>,
    /// The device's minor number: the `<N>` of `/dev/nvidia<N>` (ties a process holding that
    /// file to this GPU where NVML's pids mean nothing, in a container).
    pub minor: Option<u32>,
    /// Set when NVML answered GPU_IS_LOST for this device.
    pub lost: bool,
}

/// A process holding NVIDIA device files open, as this process's /proc shows it (its own
/// PID namespace): what makes it a GPU process where NVML's host pids do not resolve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DevHolder {
    pub pid: i32,
    /// Minor numbers of the `/dev/nvidia<N>` files it holds.
    pub minors: Vec<u32>,
    /// Whether it holds `/dev/nvidiactl` or `/dev/nvidia-uvm` (every CUDA process does).
    pub ctl: bool,
}

/// The host and the job's process tree.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct HostSample {
    pub job_rss_bytes: Option<u64>,
    pub job_cpu_pct: Option<f64>,
    pub job_processes: usize,
    pub host_mem_used: Option<u64>,
    pub host_mem_total: Option<u64>,
}
