//! What the run knows of its GPUs and host between samples: the last readings, which GPUs
//! are lost, the current telemetry error, and the energy counter behind energy pricing.
//! Plain data, updated by `RunState` from each sample; no I/O.

use std::collections::HashSet;
use std::time::Duration;

use crate::policy::GpuObs;
use crate::telemetry::{GpuSample, HostSample};

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
}

impl TelemetryCache {
    pub fn new(visible: Vec<u32>) -> TelemetryCache {
        TelemetryCache {
            visible,
            ..TelemetryCache::default()
        }
    }

    /// The GPUs the job uses: those among the visible ones where NVML lists one of its
    /// processes; when none is listed (or the list is unsupported), all visible GPUs.
    pub fn job_gpus(&self, pids: &[i32]) -> Vec<GpuObs> {
        let visible: Vec<&GpuSample> = self
            .gpus
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
        let used: Vec<&GpuSample> = visible
            .iter()
            .copied()
            .filter(|g| mine(g).is_some())
            .collect();
        let chosen = if used.is_empty() { visible } else { used };
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
