//! What the run knows of its GPUs and host between samples: the last readings, which GPUs
//! are lost, the current telemetry error, and the energy counter behind energy pricing.
//! Plain data, updated by `RunState` from each sample; no I/O.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use crate::policy::GpuObs;
use crate::telemetry::{devfiles, DevHolder, GpuSample, HostSample};

#[derive(Debug, Clone, Default)]
pub struct TelemetryCache {
    /// Indices of the GPUs the job can see (`CUDA_VISIBLE_DEVICES`).
    pub visible: Vec<u32>,
    pub gpus: Vec<GpuSample>,
    /// Whether `gpus` is this sample's (false after a failed sample: the metrics forget them).
    pub current: bool,
    /// Bumped with every sample, so a sink applies per-GPU series only when they changed.
    pub generation: u64,
    pub host: HostSample,
    pub lost: HashSet<u32>,
    pub error: Option<String>,
    /// Failed samples and lost GPUs, counted (the telemetry-errors counter).
    pub errors: u64,
    /// The last sample that had no lost GPU, as Unix seconds.
    pub last_good_unix: Option<f64>,
    /// The visible GPUs' energy counter at a run time, for the energy rate.
    last_energy: Option<(Duration, f64)>,
    /// GPUs are the job's alone (a device plugin's or a rented pod's whole GPUs): memory of
    /// NVML processes that do not resolve here counts as the job's. Off with --shared-gpus.
    pub whole_gpus: bool,
    /// Every GPU the job was seen using (for the check after a kill).
    pub job_gpus_seen: BTreeSet<u32>,
}

impl TelemetryCache {
    pub fn new(visible: Vec<u32>, whole_gpus: bool) -> TelemetryCache {
        TelemetryCache {
            visible,
            whole_gpus,
            ..TelemetryCache::default()
        }
    }

    /// The GPUs the job uses: those among the visible ones where NVML lists one of its
    /// processes or where one of its processes holds the GPU's `/dev/nvidia<minor>`; when
    /// none is known (or the lists are unsupported), all visible GPUs. On a GPU the job holds,
    /// NVML processes whose pids do not resolve here (a container: NVML speaks host pids) are
    /// the job's too, unless GPUs are shared.
    pub fn job_gpus(&mut self, pids: &[i32], holders: &[DevHolder]) -> Vec<GpuObs> {
        let held: BTreeSet<u32> = holders
            .iter()
            .filter(|h| pids.contains(&h.pid))
            .flat_map(|h| h.minors.iter().copied())
            .collect();
        let whole = self.whole_gpus;
        let resolves = |pid: i32, g: &GpuSample| devfiles::resolves(pid, g.minor, holders);
        let holds = |g: &GpuSample| g.minor.is_some_and(|m| held.contains(&m));
        let mine = |g: &GpuSample| -> Option<u64> {
            let procs = g.procs.as_ref()?;
            let mut total = None;
            for p in procs {
                let pid = p.pid as i32;
                let ours = pids.contains(&pid) || (whole && holds(g) && !resolves(pid, g));
                if ours {
                    total = Some(total.unwrap_or(0) + p.used_bytes.unwrap_or(0));
                }
            }
            total.or_else(|| holds(g).then_some(0))
        };
        let visible: Vec<&GpuSample> = self
            .gpus
            .iter()
            .filter(|g| self.visible.contains(&g.index))
            .collect();
        let used: Vec<&GpuSample> = visible
            .iter()
            .copied()
            .filter(|g| mine(g).is_some())
            .collect();
        let chosen = if used.is_empty() { visible } else { used };
        let obs: Vec<GpuObs> = chosen
            .into_iter()
            .map(|g| GpuObs {
                index: g.index,
                util_pct: if g.lost { None } else { g.util_gpu_pct },
                job_mem: mine(g).or(g.procs.as_ref().map(|_| 0)),
                mem_total: g.mem_total,
            })
            .collect();
        if obs.len() < self.visible.len() || !held.is_empty() {
            // Only GPUs known to be the job's (not the all-visible fallback) are remembered.
            self.job_gpus_seen.extend(obs.iter().map(|o| o.index));
        }
        obs
    }

    /// Every visible GPU as unknown (a failed sample).
    pub fn unknown_gpus(&self) -> Vec<GpuObs> {
        self.visible
            .iter()
            .map(|i| GpuObs {
                index: *i,
                util_pct: None,
                job_mem: None,
                mem_total: None,
            })
            .collect()
    }

    /// The visible GPUs' draw in watts since the last sample: from the energy counters when
    /// they moved forward, else from the power readings; `None` when neither is known.
    pub fn watts(&mut self, at: Duration) -> Option<f64> {
        let vis: Vec<&GpuSample> = self
            .gpus
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
        watts
    }

    /// GPUs reported lost in this sample that were not lost before.
    pub fn newly_lost(&mut self) -> Vec<u32> {
        let lost: Vec<u32> = self
            .gpus
            .iter()
            .filter(|g| g.lost)
            .map(|g| g.index)
            .collect();
        lost.into_iter().filter(|i| self.lost.insert(*i)).collect()
    }
}
