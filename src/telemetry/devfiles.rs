//! GPU processes by the device files they hold, in costguard's own PID namespace.
//!
//! The NVIDIA driver ignores PID namespaces: inside a container NVML lists the host's pids,
//! which name nothing (or another process) in the container's /proc. What works everywhere
//! is what `fuser -v /dev/nvidia*` shows: a CUDA process keeps `/dev/nvidiactl`,
//! `/dev/nvidia-uvm` and `/dev/nvidia<N>` open for its life, and `<N>` is the GPU's minor
//! number (NVML's `nvmlDeviceGetMinorNumber`). The fd's link target is read in this
//! namespace, so a private /dev (a pod's) is seen as the processes in it see it.

use std::fs;

use super::DevHolder;

/// What an fd link names, if it is an NVIDIA device file.
enum Dev {
    Gpu(u32),
    Ctl,
}

fn classify(target: &str) -> Option<Dev> {
    let rest = target.strip_prefix("/dev/nvidia")?;
    match rest {
        "ctl" | "-uvm" | "-uvm-tools" | "-modeset" => Some(Dev::Ctl),
        n => n.parse().ok().map(Dev::Gpu),
    }
}

/// The NVIDIA device files `pid` holds open: `Some` with nothing in it when its fds were read
/// and hold none; `None` when it is gone or its fds cannot be read (another user's process,
/// without the right to look).
pub fn scan(pid: i32) -> Option<DevHolder> {
    let dir = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let mut h = DevHolder {
        pid,
        minors: Vec::new(),
        ctl: false,
    };
    for e in dir.flatten() {
        let Ok(target) = fs::read_link(e.path()) else {
            continue;
        };
        match target.to_str().and_then(classify) {
            Some(Dev::Gpu(n)) if !h.minors.contains(&n) => h.minors.push(n),
            Some(Dev::Ctl) => h.ctl = true,
            _ => {}
        }
    }
    h.minors.sort_unstable();
    Some(h)
}

impl DevHolder {
    pub fn holds_any(&self) -> bool {
        self.ctl || !self.minors.is_empty()
    }
}

/// Whether NVML's `pid` (on the GPU with `minor`) names the GPU process it means in this
/// namespace: it exists here, and is not contradicted by the device files — a process that
/// holds no NVIDIA file while others here hold this GPU's is some other process with the
/// same number (a container: NVML speaks host pids). Without such evidence (bare metal, a
/// `hostPID` node agent, fds that cannot be read) NVML is taken at its word.
pub fn resolves(pid: i32, minor: Option<u32>, holders: &[DevHolder]) -> bool {
    if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return false;
    }
    match holders.iter().find(|h| h.pid == pid) {
        Some(h) if !h.holds_any() => {
            !minor.is_some_and(|m| holders.iter().any(|o| o.minors.contains(&m)))
        }
        _ => true,
    }
}

/// Every process of this namespace, with the NVIDIA device files it holds (the agent's view).
pub fn all_holders() -> Vec<DevHolder> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| *p != me)
        .filter_map(scan)
        .collect()
}

/// What `pids` hold (the wrapper's view: its job, and NVML's pids that exist here), the ones
/// read and holding nothing included: a pid that exists here but holds no NVIDIA file is
/// another process than the one NVML meant.
pub fn scan_all(pids: impl IntoIterator<Item = i32>) -> Vec<DevHolder> {
    pids.into_iter().filter_map(scan).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_are_classified() {
        assert!(matches!(classify("/dev/nvidia0"), Some(Dev::Gpu(0))));
        assert!(matches!(classify("/dev/nvidia13"), Some(Dev::Gpu(13))));
        assert!(matches!(classify("/dev/nvidiactl"), Some(Dev::Ctl)));
        assert!(matches!(classify("/dev/nvidia-uvm"), Some(Dev::Ctl)));
        assert!(classify("/dev/null").is_none());
        assert!(classify("/dev/nvidia-caps").is_none());
        assert!(classify("socket:[123]").is_none());
    }

    #[test]
    fn a_process_holding_a_file_named_like_a_gpu_is_found() {
        // Any file will do for the classification: the link target is what counts. A
        // process of ours holding /dev/null only is no GPU process.
        let me = scan(std::process::id() as i32).expect("our own fds are readable");
        assert!(!me.holds_any(), "{me:?}");
        assert!(scan(i32::MAX).is_none());
    }
}
