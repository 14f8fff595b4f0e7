//! The forgotten box (`costguard agent --idle-box DURATION`): released once, for DURATION,
//! no GPU process exists on it and every GPU is below `--idle-below` — SkyPilot's autostop,
//! judged on the GPUs rather than a job queue. A busy GPU process keeps the box; so does an
//! interactive session when `--keep-if-logged-in` is given. Pure: samples and a clock in.

use std::time::Duration;

use crate::telemetry::GpuSample;
use crate::units::format_duration;

#[derive(Debug, Clone)]
pub struct IdleBox {
    after: Duration,
    below: f64,
    since: Option<Duration>,
    fired: bool,
}

impl IdleBox {
    pub fn new(after: Duration, below: f64) -> IdleBox {
        IdleBox {
            after,
            below,
            since: None,
            fired: false,
        }
    }

    pub fn fired(&self) -> bool {
        self.fired
    }

    /// One complete sample: the box's GPUs, how many GPU processes exist (any, the agent's
    /// targets or not, here or only in NVML's list), whether someone is logged in (always
    /// false without --keep-if-logged-in). Returns why the box is released, once.
    pub fn observe(
        &mut self,
        now: Duration,
        gpus: &[GpuSample],
        gpu_processes: usize,
        logged_in: bool,
    ) -> Option<String> {
        let unknown = gpus.iter().any(|g| g.util_gpu_pct.is_none() || g.lost);
        let busy = gpus
            .iter()
            .any(|g| g.util_gpu_pct.is_some_and(|u| u >= self.below));
        let nvml_procs = gpus
            .iter()
            .any(|g| g.procs.as_ref().is_some_and(|p| !p.is_empty()));
        // Unknown telemetry is never idle: the streak starts again.
        if gpus.is_empty() || unknown || busy || nvml_procs || gpu_processes > 0 || logged_in {
            self.since = None;
            return None;
        }
        let since = *self.since.get_or_insert(now);
        if self.fired || now.saturating_sub(since) < self.after {
            return None;
        }
        self.fired = true;
        Some(format!(
            "the box has been idle for {}: no GPU process and every GPU below {}%",
            format_duration(now.saturating_sub(since)),
            self.below
        ))
    }
}

/// Whether an interactive session is open: a USER_PROCESS record in utmp whose process
/// still exists.
pub fn someone_logged_in() -> bool {
    for path in ["/run/utmp", "/var/run/utmp"] {
        if let Ok(b) = crate::fsutil::read_bounded(std::path::Path::new(path), 4 << 20) {
            return logged_in_records(&b);
        }
    }
    false
}

fn logged_in_records(b: &[u8]) -> bool {
    let size = std::mem::size_of::<libc::utmpx>();
    b.chunks_exact(size).any(|rec| {
        let ty = i16::from_ne_bytes([rec[0], rec[1]]);
        let pid = i32::from_ne_bytes([rec[4], rec[5], rec[6], rec[7]]);
        ty == libc::USER_PROCESS
            && pid > 0
            && std::path::Path::new(&format!("/proc/{pid}")).exists()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(util: f64) -> GpuSample {
        GpuSample {
            util_gpu_pct: Some(util),
            procs: Some(Vec::new()),
            ..GpuSample::default()
        }
    }

    #[test]
    fn idle_for_the_window_fires_once_and_anything_busy_restarts_it() {
        let s = Duration::from_secs;
        let mut b = IdleBox::new(s(60), 5.0);
        assert_eq!(b.observe(s(0), &[gpu(1.0)], 0, false), None);
        assert_eq!(b.observe(s(59), &[gpu(1.0)], 0, false), None);
        let why = b.observe(s(60), &[gpu(1.0)], 0, false).unwrap();
        assert!(why.contains("idle for 1m00s"), "{why}");
        assert_eq!(b.observe(s(200), &[gpu(1.0)], 0, false), None, "once");
        let mut b = IdleBox::new(s(60), 5.0);
        b.observe(s(0), &[gpu(1.0)], 0, false);
        assert_eq!(
            b.observe(s(30), &[gpu(1.0)], 1, false),
            None,
            "a GPU process"
        );
        assert_eq!(
            b.observe(s(70), &[gpu(1.0)], 0, false),
            None,
            "restarted at 70"
        );
        assert_eq!(b.observe(s(100), &[gpu(50.0)], 0, false), None, "busy");
        assert_eq!(b.observe(s(200), &[gpu(1.0)], 0, true), None, "logged in");
        let unknown = GpuSample::default();
        assert_eq!(
            b.observe(s(300), &[unknown], 0, false),
            None,
            "unknown is not idle"
        );
        assert_eq!(b.observe(s(301), &[], 0, false), None, "no GPU seen");
    }

    #[test]
    fn utmp_user_records_of_live_processes_count() {
        let size = std::mem::size_of::<libc::utmpx>();
        let mut rec = vec![0u8; size];
        rec[..2].copy_from_slice(&libc::USER_PROCESS.to_ne_bytes());
        rec[4..8].copy_from_slice(&(std::process::id() as i32).to_ne_bytes());
        assert!(logged_in_records(&rec));
        rec[4..8].copy_from_slice(&i32::MAX.to_ne_bytes());
        assert!(!logged_in_records(&rec), "a dead session");
        rec[..2].copy_from_slice(&libc::DEAD_PROCESS.to_ne_bytes());
        assert!(!logged_in_records(&rec));
    }
}
