//! The sampling task: every interval, one GPU sample (bounded by a timeout) and one host
//! sample of the job's tree, sent to the run loop. It never blocks the loop.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use crate::supervise::tree;
use crate::telemetry::host::HostSource;
use crate::telemetry::nvml::{NvmlFailure, NvmlSource};
use crate::telemetry::{devfiles, DevHolder, GpuSample, HostSample};

pub struct SampleMsg {
    /// Monotonic instant the sample was asked for.
    pub at: Instant,
    pub wall: SystemTime,
    /// `None` when there is no GPU source at all.
    pub gpus: Option<Result<Vec<GpuSample>, NvmlFailure>>,
    pub host: HostSample,
    /// The job's live pids at sampling time.
    pub pids: Vec<i32>,
    /// Processes holding NVIDIA device files (see `telemetry::devfiles`): for the agent every
    /// one in this namespace; for the wrapper its job's and NVML's pids that exist here.
    pub holders: Vec<DevHolder>,
    /// GPU processes on the box, the agent's targets or not (set by the agent's target).
    pub gpu_processes: usize,
    /// An interactive session is open (only looked at with --keep-if-logged-in).
    pub logged_in: bool,
}

/// Runs until the receiver is dropped. `root` is the holder's pid, whose descendants are
/// the job (0 for the agent, whose targets come from the GPU processes instead).
pub async fn run(
    gpu: Option<NvmlSource>,
    interval: Duration,
    root: i32,
    tx: mpsc::Sender<SampleMsg>,
) {
    // Made on the first sample's blocking thread: sysinfo reads /proc as it starts, which
    // the job's start does not wait for.
    let host: Arc<Mutex<Option<HostSource>>> = Arc::new(Mutex::new(None));
    // The first sample comes one interval in: starting the job comes first.
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let at = Instant::now();
        let wall = SystemTime::now();
        let holder = root;
        let gpu_fut = async {
            match &gpu {
                Some(g) => Some(g.sample(interval.max(Duration::from_millis(200))).await),
                None => None,
            }
        };
        let h = host.clone();
        let host_fut = tokio::task::spawn_blocking(move || {
            let pids = if holder > 0 {
                tree::live_descendants(holder)
            } else {
                Vec::new()
            };
            let sample = h
                .lock()
                .map(|mut h| h.get_or_insert_with(HostSource::default).sample(&pids))
                .unwrap_or_default();
            (pids, sample)
        });
        let (gpus, host_res) = tokio::join!(gpu_fut, host_fut);
        let (pids, host) = host_res.unwrap_or_default();
        let holders = match &gpus {
            Some(Ok(gs)) => holders(root, &pids, gs).await,
            _ => Vec::new(),
        };
        if tx
            .send(SampleMsg {
                at,
                wall,
                gpus,
                host,
                pids,
                holders,
                gpu_processes: 0,
                logged_in: false,
            })
            .await
            .is_err()
        {
            return;
        }
    }
}

/// The device-file view of this sample, off the runtime's thread.
async fn holders(root: i32, pids: &[i32], gpus: &[GpuSample]) -> Vec<DevHolder> {
    let mut scan: Vec<i32> = pids.to_vec();
    scan.extend(
        gpus.iter()
            .flat_map(|g| g.procs.iter().flatten())
            .map(|p| p.pid as i32)
            .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists()),
    );
    scan.sort_unstable();
    scan.dedup();
    tokio::task::spawn_blocking(move || {
        if root > 0 {
            devfiles::scan_all(scan)
        } else {
            devfiles::all_holders()
        }
    })
    .await
    .unwrap_or_default()
}
