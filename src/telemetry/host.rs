//! Host telemetry through sysinfo: the job tree's RSS and CPU, and the host's memory.

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, RefreshKind, System};

use super::HostSample;

pub struct HostSource {
    sys: System,
}

impl Default for HostSource {
    fn default() -> Self {
        HostSource {
            sys: System::new_with_specifics(RefreshKind::nothing()),
        }
    }
}

impl HostSource {
    /// Samples the given processes (the job's tree) and the host's memory.
    pub fn sample(&mut self, pids: &[i32]) -> HostSample {
        let list: Vec<Pid> = pids.iter().map(|p| Pid::from_u32(*p as u32)).collect();
        self.sys.refresh_memory();
        self.sys.refresh_processes_specifics(
            ProcessesToUpdate::Some(&list),
            true,
            ProcessRefreshKind::nothing().with_memory().with_cpu(),
        );
        let mut rss = 0u64;
        let mut cpu = 0f64;
        let mut seen = 0usize;
        for p in &list {
            if let Some(proc_) = self.sys.process(*p) {
                rss += proc_.memory();
                cpu += proc_.cpu_usage() as f64;
                seen += 1;
            }
        }
        HostSample {
            job_rss_bytes: (seen > 0 || pids.is_empty()).then_some(rss),
            job_cpu_pct: (seen > 0).then_some(cpu),
            job_processes: seen,
            host_mem_used: Some(self.sys.used_memory()),
            host_mem_total: Some(self.sys.total_memory()),
        }
    }
}
