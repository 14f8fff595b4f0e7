//! GPU telemetry through nvml-wrapper, on a dedicated thread.
//!
//! NVML calls can hang (a wedged driver) or take seconds (init without persistence mode).
//! All of them run on one thread that owns the `Nvml` handle; callers wait for an answer
//! with a timeout and get `NvmlFailure::Timeout` (unknown telemetry, never zero) when it
//! does not come. While a call hangs, no new
//! request is queued behind it: the next ones answer "busy" at once.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use tokio::sync::oneshot;

use super::{GpuInfo, GpuProc, GpuSample};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NvmlFailure {
    #[error("failed to load NVML from {lib}: {message}")]
    Load { lib: String, message: String },
    #[error("NVML did not answer within {0:?}")]
    Timeout(Duration),
    #[error("NVML is still busy with an earlier call (hung driver?)")]
    Busy,
    #[error("NVML error: {0}")]
    Call(String),
}

/// Why NVML did not load, in words: a library that is not there is named as such (no NVIDIA
/// driver on this machine), not as "a libloading error occurred".
fn load_message(e: &NvmlError) -> String {
    match e {
        NvmlError::LibloadingError(inner) => {
            let text = inner.to_string();
            if text.contains("No such file") || text.contains("cannot open shared object") {
                format!("the library was not found (no NVIDIA driver on this machine?): {text}")
            } else {
                format!("the library could not be loaded: {text}")
            }
        }
        other => other.to_string(),
    }
}

type Reply = oneshot::Sender<Result<Vec<GpuSample>, NvmlFailure>>;

/// A handle to the NVML thread.
#[derive(Clone)]
pub struct NvmlSource {
    tx: std::sync::mpsc::Sender<Reply>,
    busy: Arc<AtomicBool>,
    pub inventory: Vec<GpuInfo>,
}

impl NvmlSource {
    /// Loads NVML (from `lib` or the system's libnvidia-ml.so.1) and reads the inventory,
    /// waiting at most `timeout` for both.
    pub async fn start(lib: Option<&Path>, timeout: Duration) -> Result<NvmlSource, NvmlFailure> {
        let lib_name = lib
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "libnvidia-ml.so.1".into());
        let (init_tx, init_rx) = oneshot::channel();
        let (tx, rx) = std::sync::mpsc::channel::<Reply>();
        let busy = Arc::new(AtomicBool::new(false));
        let thread_busy = busy.clone();
        let lib_path: Option<PathBuf> = lib.map(Path::to_path_buf);
        let name = lib_name.clone();
        std::thread::Builder::new()
            .name("nvml".into())
            .spawn(move || {
                let mut b = Nvml::builder();
                if let Some(p) = &lib_path {
                    b.lib_path(OsStr::new(p.as_os_str()));
                }
                let nvml = match b.init() {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = init_tx.send(Err(NvmlFailure::Load {
                            message: load_message(&e),
                            lib: name,
                        }));
                        return;
                    }
                };
                let inv = inventory(&nvml);
                let _ = init_tx.send(inv.map_err(|e| NvmlFailure::Call(e.to_string())));
                let mut last_util_ts: Vec<u64> = Vec::new();
                while let Ok(reply) = rx.recv() {
                    let result = sample_all(&nvml, &mut last_util_ts);
                    thread_busy.store(false, Ordering::SeqCst);
                    let _ = reply.send(result);
                }
            })
            .map_err(|e| NvmlFailure::Call(e.to_string()))?;
        let inventory = match tokio::time::timeout(timeout, init_rx).await {
            Ok(Ok(r)) => r?,
            Ok(Err(_)) => return Err(NvmlFailure::Call("the NVML thread ended".into())),
            Err(_) => return Err(NvmlFailure::Timeout(timeout)),
        };
        Ok(NvmlSource {
            tx,
            busy,
            inventory,
        })
    }

    /// One sample of every GPU, or why there is none.
    pub async fn sample(&self, timeout: Duration) -> Result<Vec<GpuSample>, NvmlFailure> {
        if self.busy.swap(true, Ordering::SeqCst) {
            return Err(NvmlFailure::Busy);
        }
        let (reply, rx) = oneshot::channel();
        if self.tx.send(reply).is_err() {
            self.busy.store(false, Ordering::SeqCst);
            return Err(NvmlFailure::Call("the NVML thread ended".into()));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(NvmlFailure::Call("the NVML thread ended".into())),
            // busy stays set until the hung call returns.
            Err(_) => Err(NvmlFailure::Timeout(timeout)),
        }
    }
}

impl NvmlSource {
    /// Like `sample`, but when an earlier request is still in flight, waits for it (up to
    /// `timeout` in all) instead of answering "busy".
    pub async fn sample_when_free(&self, timeout: Duration) -> Result<Vec<GpuSample>, NvmlFailure> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.sample(left).await {
                Err(NvmlFailure::Busy) if !left.is_zero() => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => return other,
            }
        }
    }
}

fn inventory(nvml: &Nvml) -> Result<Vec<GpuInfo>, NvmlError> {
    let n = nvml.device_count()?;
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n {
        let d = nvml.device_by_index(i)?;
        out.push(GpuInfo {
            index: i,
            uuid: d.uuid().unwrap_or_else(|_| format!("unknown-{i}")),
            model: d.name().unwrap_or_else(|_| "unknown".into()),
            mem_total: d.memory_info().ok().map(|m| m.total),
        });
    }
    Ok(out)
}

fn ok<T>(r: Result<T, NvmlError>, lost: &mut bool) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(NvmlError::GpuLost) => {
            *lost = true;
            None
        }
        Err(_) => None,
    }
}

fn sample_all(nvml: &Nvml, last_ts: &mut Vec<u64>) -> Result<Vec<GpuSample>, NvmlFailure> {
    let n = nvml
        .device_count()
        .map_err(|e| NvmlFailure::Call(e.to_string()))?;
    last_ts.resize(n as usize, 0);
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n {
        let mut s = GpuSample {
            index: i,
            ..GpuSample::default()
        };
        let d = match nvml.device_by_index(i) {
            Ok(d) => d,
            Err(e) => {
                s.lost = matches!(e, NvmlError::GpuLost);
                out.push(s);
                continue;
            }
        };
        let lost = &mut s.lost;
        s.uuid = ok(d.uuid(), lost).unwrap_or_default();
        s.model = ok(d.name(), lost).unwrap_or_default();
        s.minor = ok(d.minor_number(), lost);
        if let Some(u) = ok(d.utilization_rates(), lost) {
            s.util_gpu_pct = Some(u.gpu as f64);
            s.util_mem_pct = Some(u.memory as f64);
        }
        if let Some(m) = ok(d.memory_info(), lost) {
            s.mem_used = Some(m.used);
            s.mem_total = Some(m.total);
        }
        s.power_watts = ok(d.power_usage(), lost).map(|mw| mw as f64 / 1000.0);
        s.energy_joules = ok(d.total_energy_consumption(), lost).map(|mj| mj as f64 / 1000.0);
        s.temperature_c = ok(d.temperature(TemperatureSensor::Gpu), lost).map(f64::from);
        s.throttle_reasons = ok(d.current_throttle_reasons(), lost).map(|r| r.bits());
        let utils = ok(d.process_utilization_stats(last_ts[i as usize]), lost);
        if let Some(samples) = &utils {
            if let Some(max) = samples.iter().map(|p| p.timestamp).max() {
                last_ts[i as usize] = max;
            }
        }
        s.procs = ok(d.running_compute_processes(), lost).map(|ps| {
            ps.into_iter()
                .map(|p| GpuProc {
                    pid: p.pid,
                    used_bytes: match p.used_gpu_memory {
                        UsedGpuMemory::Used(b) => Some(b),
                        UsedGpuMemory::Unavailable => None,
                    },
                    sm_util: utils
                        .as_ref()
                        .and_then(|u| {
                            u.iter()
                                .filter(|x| x.pid == p.pid)
                                .max_by_key(|x| x.timestamp)
                        })
                        .map(|x| x.sm_util),
                })
                .collect()
        });
        out.push(s);
    }
    Ok(out)
}
