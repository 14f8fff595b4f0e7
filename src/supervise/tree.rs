//! Finding every process of a job by walking /proc: parent links, states, start times.

use std::collections::{HashMap, HashSet};
use std::fs;

/// One line of /proc/PID/stat, the fields we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    pub ppid: i32,
    pub state: char,
    pub pgid: i32,
    /// Start time in clock ticks since boot: with the pid, identifies a process across reuse.
    pub start_ticks: u64,
}

impl ProcStat {
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z' || self.state == 'X'
    }
}

/// Parses /proc/PID/stat. The command name may hold spaces and parentheses: split at the last ')'.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let (head, rest) = text.rsplit_once(')')?;
    let pid = head.split_once('(')?.0.trim().parse().ok()?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field N is fields[N - 3].
    Some(ProcStat {
        pid,
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgid: fields.get(2)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// How long ago a process with this start time started, from the kernel's monotonic
/// evidence (seconds since boot and the process's start in clock ticks since boot): unlike
/// the wall clock, it cannot jump.
pub fn age_seconds(start_ticks: u64) -> Option<f64> {
    let uptime: f64 = fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| (uptime - start_ticks as f64 / hz as f64).max(0.0))
}

/// A process's command name (`/proc/PID/comm`), or "?" when it is gone.
pub fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// A process identified across pid reuse.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Proc {
    pub pid: i32,
    pub start_ticks: u64,
}

impl Proc {
    pub fn of(pid: i32) -> Option<Proc> {
        stat(pid).map(|s| Proc {
            pid,
            start_ticks: s.start_ticks,
        })
    }

    /// Whether this very process still exists (same pid, same start time, not a zombie).
    pub fn alive(&self) -> bool {
        stat(self.pid).is_some_and(|s| s.start_ticks == self.start_ticks && !s.is_zombie())
    }
}

pub fn stat(pid: i32) -> Option<ProcStat> {
    use std::io::Read;
    // One read into a buffer that holds any stat line (its 52 fields fit in well under
    // 1 KiB, the command name at most 64 bytes): a procfs file reports size 0, so a growing
    // read_to_string would take six reads of it, on every /proc walk of a kill.
    let mut buf = [0u8; 2048];
    let mut f = fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            // The line is whole once it ends: no second read for the end of file.
            Ok(k) => {
                n += k;
                if buf[n - 1] == b'\n' {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    parse_stat(&String::from_utf8_lossy(&buf[..n]))
}

/// Every process on the host (that we can see).
pub fn all() -> Vec<ProcStat> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(stat)
        .collect()
}

/// The descendants of `root` (not `root` itself), zombies included, from one /proc snapshot.
pub fn descendants(root: i32) -> Vec<ProcStat> {
    descendants_in(&all(), root)
}

pub fn descendants_in(procs: &[ProcStat], root: i32) -> Vec<ProcStat> {
    let mut children: HashMap<i32, Vec<&ProcStat>> = HashMap::new();
    for p in procs {
        children.entry(p.ppid).or_default().push(p);
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        for c in children.get(&pid).map(Vec::as_slice).unwrap_or_default() {
            if c.pid != root && seen.insert(c.pid) {
                out.push(**c);
                stack.push(c.pid);
            }
        }
    }
    out
}

/// The pids a process tree rooted at `root` has that are still alive (not zombies).
pub fn live_descendants(root: i32) -> Vec<i32> {
    if let Some(v) = descendants_by_children(root) {
        return v;
    }
    descendants(root)
        .into_iter()
        .filter(|p| !p.is_zombie())
        .map(|p| p.pid)
        .collect()
}

/// Children of `pid` from `/proc/PID/task/*/children` (CONFIG_PROC_CHILDREN); None when the
/// kernel has no such file or the process is gone.
fn children_of(pid: i32) -> Option<Vec<i32>> {
    let mut out = Vec::new();
    for t in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let text = fs::read_to_string(t.path().join("children")).ok()?;
        out.extend(
            text.split_whitespace()
                .filter_map(|x| x.parse::<i32>().ok()),
        );
    }
    Some(out)
}

/// The live descendants found by following children lists: a few reads for a small tree
/// instead of one per process on the machine. The lists can miss a process forked during the
/// read; callers that must be complete repeat (the kill loop) or check (the holder's exit).
fn descendants_by_children(root: i32) -> Option<Vec<i32>> {
    let mut out = Vec::new();
    let mut queue = children_of(root)?;
    let mut seen = HashSet::new();
    while let Some(p) = queue.pop() {
        if !seen.insert(p) {
            continue;
        }
        match stat(p) {
            Some(s) if !s.is_zombie() => out.push(p),
            Some(_) => {}
            None => continue,
        }
        if let Some(c) = children_of(p) {
            queue.extend(c);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_lists_find_the_same_tree_as_a_walk() {
        let mut c = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30 & wait"])
            .spawn()
            .expect("sh");
        let pid = c.id() as i32;
        let mut fast = Vec::new();
        for _ in 0..200 {
            fast = descendants_by_children(pid).unwrap_or_default();
            if fast.len() == 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut walk: Vec<i32> = descendants(pid)
            .into_iter()
            .filter(|p| !p.is_zombie())
            .map(|p| p.pid)
            .collect();
        fast.sort_unstable();
        walk.sort_unstable();
        for p in &fast {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = c.wait();
        assert_eq!(fast.len(), 2, "two sleeps");
        assert_eq!(fast, walk);
    }

    #[test]
    fn parses_names_with_parens() {
        let line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        let p = parse_stat(line).expect("parse");
        assert_eq!(
            (p.pid, p.ppid, p.state, p.pgid, p.start_ticks),
            (4242, 1, 'S', 4242, 987_654)
        );
    }

    #[test]
    fn walks_a_tree() {
        let mk = |pid, ppid| ProcStat {
            pid,
            ppid,
            state: 'S',
            pgid: 0,
            start_ticks: 0,
        };
        let procs = [mk(10, 1), mk(11, 10), mk(12, 11), mk(13, 1), mk(14, 12)];
        let mut d: Vec<i32> = descendants_in(&procs, 10).iter().map(|p| p.pid).collect();
        d.sort();
        assert_eq!(d, vec![11, 12, 14]);
    }

    #[test]
    fn sees_itself() {
        let me = stat(std::process::id() as i32).expect("own stat");
        assert_eq!(me.pid, std::process::id() as i32);
    }
}
