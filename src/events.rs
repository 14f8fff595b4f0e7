//! The one event vocabulary: metrics, notifications, status and the report are views of it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    Started,
    Warning,
    Idle,
    Stalled,
    Killed,
    PhaseCompleted,
    Completed,
    Failed,
    AgentError,
    /// A test notification (`notify test`, the preflight): never a run's event.
    Test,
}

impl EventKind {
    pub const ALL: [EventKind; 9] = [
        EventKind::Started,
        EventKind::Warning,
        EventKind::Idle,
        EventKind::Stalled,
        EventKind::Killed,
        EventKind::PhaseCompleted,
        EventKind::Completed,
        EventKind::Failed,
        EventKind::AgentError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Started => "started",
            EventKind::Warning => "warning",
            EventKind::Idle => "idle",
            EventKind::Stalled => "stalled",
            EventKind::Killed => "killed",
            EventKind::PhaseCompleted => "phase-completed",
            EventKind::Completed => "completed",
            EventKind::Failed => "failed",
            EventKind::AgentError => "agent-error",
            EventKind::Test => "test",
        }
    }
}

/// Why a job was killed. Bounded: these are the only values of the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KillReason {
    Usd,
    Wall,
    Idle,
    Stall,
    GpuMem,
    HostMem,
    Fleet,
    /// The run record stopped being written for --record-grace (fail-closed for money).
    Record,
    Signal,
}

impl KillReason {
    pub const ALL: [KillReason; 9] = [
        KillReason::Usd,
        KillReason::Wall,
        KillReason::Idle,
        KillReason::Stall,
        KillReason::GpuMem,
        KillReason::HostMem,
        KillReason::Fleet,
        KillReason::Record,
        KillReason::Signal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KillReason::Usd => "usd",
            KillReason::Wall => "wall",
            KillReason::Idle => "idle",
            KillReason::Stall => "stall",
            KillReason::GpuMem => "gpu_mem",
            KillReason::HostMem => "host_mem",
            KillReason::Fleet => "fleet",
            KillReason::Record => "record",
            KillReason::Signal => "signal",
        }
    }

    /// A ceiling kill exits 124; a kill asked for by a signal passes on the job's status.
    pub fn is_ceiling(self) -> bool {
        !matches!(self, KillReason::Signal)
    }
}

/// One thing that happened, with a stable id so receivers can drop duplicates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    pub run_id: String,
    pub kind: EventKind,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    pub message: String,
    /// Wall-clock time, RFC 3339.
    pub at: String,
    pub elapsed_seconds: f64,
    pub spend_dollars: f64,
    pub rate_dollars_per_hour: Option<f64>,
    pub budget_dollars: Option<f64>,
    pub host: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub phase: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub report_path: Option<String>,
    /// The job's command line, secret-looking values masked.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub command: Option<String>,
    /// The run's page (`http://ADDR/`), when costguard serves one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub page_url: Option<String>,
    /// Sent by `costguard notify test`, not by a run.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub test: bool,
}

/// This machine's name, as events and notifications report it.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Seconds since the Unix epoch, for arithmetic on recorded times.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Seconds on CLOCK_BOOTTIME: steady across wall-clock steps and counting suspend, so a gap
/// between two readings of the same boot is the time that really passed.
pub fn boot_clock() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut t) } != 0 {
        return 0.0;
    }
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`): boot-clock readings compare only
/// within one boot.
pub fn boot_id() -> Option<&'static str> {
    static ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    })
    .as_deref()
}

/// UTC, to the millisecond: `2026-11-24T12:00:00.123Z`.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_795_521_600_123);
        assert_eq!(rfc3339(t), "2026-11-24T12:00:00.123Z");
    }
}
