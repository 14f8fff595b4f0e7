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

/// Where cgroup v2 is mounted, from /proc/self/mountinfo (fstype `cgroup2`).
fn mount_point() -> Option<PathBuf> {
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
    /// Makes a fresh leaf below our own cgroup, or `None` where that is not allowed.
    pub fn create() -> Option<Leaf> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let base = own_dir()?;
        clean_stale(&base);
        let name = format!(
            "costguard-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = base.join(name);
        fs::create_dir(&dir).ok()?;
        if !dir.join("cgroup.kill").exists() {
            let _ = fs::remove_dir(&dir);
            return None;
        }
        Some(Leaf { dir })
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

/// Removes empty leaves left behind by earlier costguard processes that have exited.
fn clean_stale(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix("costguard-") else {
            continue;
        };
        let owner: Option<i32> = rest.split('-').next().and_then(|p| p.parse().ok());
        let alive = owner.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            let _ = fs::remove_dir(e.path());
        }
    }
}
