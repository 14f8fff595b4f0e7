//! A cgroup v2 leaf for the job when the cgroup filesystem is writable: it holds every
//! process the job ever starts (setsid and double-fork escapees too), and `cgroup.kill`
//! ends them all at once. In most Kubernetes pods the filesystem is read-only: then `create`
//! returns `None` and the process-tree walk is the only enumeration.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Debug, Clone)]
pub struct Leaf {
    pub dir: PathBuf,
}

/// Where cgroup v2 is mounted: `/sys/fs/cgroup` when that is a cgroup2 filesystem (one
/// `statfs`), else the first `cgroup2` line of /proc/self/mountinfo.
fn mount_point() -> Option<PathBuf> {
    const USUAL: &str = "/sys/fs/cgroup";
    if nix::sys::statfs::statfs(USUAL)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
    {
        return Some(PathBuf::from(USUAL));
    }
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        pre.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// This process's own cgroup v2 directory.
pub fn own_dir() -> Option<PathBuf> {
    let mount = mount_point()?;
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(mount.join(rel.trim_start_matches('/')))
}

impl Leaf {
    /// Makes a fresh leaf below our own cgroup, or `None` where that is not allowed. Its
    /// name is unique to this costguard process — its pid *and* start time (a container's
    /// costguard is always pid 1, and a leaf an earlier one left must never be taken for
    /// ours) — and a name already taken is skipped, never a reason to go without a leaf.
    pub fn create() -> Option<Leaf> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let base = own_dir()?;
        let pid = std::process::id() as i32;
        let ticks = super::tree::stat(pid).map_or(0, |s| s.start_ticks);
        for _ in 0..16 {
            let seq = SEQ.fetch_add(1, Ordering::Relaxed);
            let dir = base.join(format!("costguard-{pid}-{ticks}-{seq}"));
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(_) => return None,
            }
            if !dir.join("cgroup.kill").exists() {
                let _ = fs::remove_dir(&dir);
                return None;
            }
            return Some(Leaf { dir });
        }
        None
    }

    /// Removes the empty leaves of costguards that are gone, beside this one: done once the
    /// job is starting, not before (a leaf's name is unique to its process, so a stale one
    /// never stands in the way of a new one).
    pub fn tidy_stale_siblings(&self) {
        if let Some(base) = self.dir.parent() {
            clean_stale(base, &self.dir);
        }
    }

    pub fn procs(&self) -> Vec<i32> {
        fs::read_to_string(self.dir.join("cgroup.procs"))
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// SIGKILLs every process in the leaf, atomically with respect to forks.
    pub fn kill_all(&self) -> bool {
        fs::write(self.dir.join("cgroup.kill"), "1").is_ok()
    }

    /// Removes the (empty) leaf; fails harmlessly while something is still in it.
    pub fn remove(&self) {
        let _ = fs::remove_dir(&self.dir);
    }
}

/// Removes empty leaves left behind by earlier costguard processes that have exited: the
/// owner named `costguard-PID-TICKS-SEQ` is alive only if that pid still has that start time
/// (older names, `costguard-PID-SEQ`, by the pid alone). A leaf with processes in it cannot
/// be removed, so only empty ones go.
fn clean_stale(base: &Path, ours: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        // Never our own leaf, however its owner is judged (a start time that could not be
        // read, a /proc of another PID namespace).
        if e.path() == ours {
            continue;
        }
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !owner_alive(name) {
            let _ = fs::remove_dir(e.path());
        }
    }
}

/// Whether the costguard that made the leaf `name` is still running (true for names that
/// are not costguard leaves: those are never touched).
fn owner_alive(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("costguard-") else {
        return true;
    };
    let parts: Vec<&str> = rest.split('-').collect();
    let Some(pid) = parts.first().and_then(|p| p.parse::<i32>().ok()) else {
        return true;
    };
    match parts.len() {
        3 => {
            let ticks = parts[1].parse::<u64>().ok();
            super::tree::stat(pid).is_some_and(|s| Some(s.start_ticks) == ticks)
        }
        _ => Path::new(&format!("/proc/{pid}")).exists(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaf_belongs_to_a_pid_and_its_start_time() {
        let me = std::process::id() as i32;
        let ticks = crate::supervise::tree::stat(me).expect("self").start_ticks;
        assert!(owner_alive(&format!("costguard-{me}-{ticks}-0")));
        assert!(
            !owner_alive(&format!("costguard-{me}-{}-0", ticks + 1)),
            "same pid, another start: an earlier costguard's (a container's pid 1)"
        );
        assert!(
            owner_alive(&format!("costguard-{me}-0")),
            "an older name: by pid"
        );
        assert!(owner_alive("system.slice"), "not ours: never touched");
        assert!(!owner_alive(&format!("costguard-{}-0", i32::MAX)));
    }
}
