//! `costguard agent`: which GPU processes it guards. The agent has no command of its own: it
//! watches the GPU processes it can see (NVML's running processes, with /proc for their
//! command lines, cgroups and process groups) on a pod with `shareProcessNamespace` or a
//! node with `hostPID`, and runs the same session as the wrapper over them
//! (`session::run_agent`, `target::GpuTargets`). Never itself, pid 1, or a process matching
//! `--exclude` (other sidecars).
//!
//! After a kill the agent records it, notifies, and exits 124 — as a sidecar's job is done;
//! restarted with the same `--run-id`, it resumes the spend.

use regex::Regex;

use crate::supervise::tree;

/// Which GPU processes the agent guards.
#[derive(Debug, Clone)]
pub enum Selection {
    All,
    /// Processes whose /proc/PID/cgroup contains this text (a pod or container id).
    Cgroup(String),
    Cmdline(Regex),
}

impl Selection {
    pub fn parse(s: &str) -> Result<Selection, String> {
        match s.split_once(':') {
            None if s == "all" => Ok(Selection::All),
            Some(("cgroup", c)) if !c.is_empty() => Ok(Selection::Cgroup(c.into())),
            Some(("cmdline", re)) => Regex::new(re)
                .map(Selection::Cmdline)
                .map_err(|e| format!("invalid --target {s:?}: {e}")),
            _ => Err(format!(
                "invalid --target {s:?}: expected all, cgroup:TEXT or cmdline:REGEX"
            )),
        }
    }
}

pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .split('\0')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn cgroup(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default()
}

pub struct Selector {
    pub target: Selection,
    pub exclude: Option<Regex>,
    own_pid: i32,
}

impl Selector {
    pub fn new(target: Selection, exclude: Option<Regex>) -> Selector {
        Selector {
            target,
            exclude,
            own_pid: std::process::id() as i32,
        }
    }

    /// Whether the agent may touch `pid`.
    pub fn selects(&self, pid: i32) -> bool {
        let Some(st) = tree::stat(pid) else {
            return false; // gone, or not in our pid namespace
        };
        // A process in the agent's own process group is still a target: the kill takes it
        // by pid and descendants (target.rs), never the whole group.
        if pid <= 1 || pid == self.own_pid || st.is_zombie() {
            return false;
        }
        let cmd = cmdline(pid);
        if self.exclude.as_ref().is_some_and(|re| re.is_match(&cmd)) {
            return false;
        }
        match &self.target {
            Selection::All => true,
            Selection::Cgroup(c) => cgroup(pid).contains(c.as_str()),
            Selection::Cmdline(re) => re.is_match(&cmd),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_agent_never_selects_itself_or_excluded_processes() {
        use std::os::unix::process::CommandExt;
        let me = std::process::id() as i32;
        let s = Selector::new(Selection::All, None);
        assert!(!s.selects(me), "never itself");
        assert!(!s.selects(1), "never init");
        assert!(!s.selects(i32::MAX), "never a pid that does not exist");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .expect("sleep");
        let pid = child.id() as i32;
        // Until the exec completes, /proc/PID/cmdline can still read empty.
        for _ in 0..200 {
            if !cmdline(pid).is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(Selector::new(Selection::All, None).selects(pid));
        let ex = Selector::new(Selection::All, Some(Regex::new("^sleep 30$").expect("re")));
        assert!(!ex.selects(pid), "--exclude wins: {:?}", cmdline(pid));
        let other = Selector::new(Selection::Cmdline(Regex::new("^python").expect("re")), None);
        assert!(!other.selects(pid), "cmdline selector");
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn targets_parse() {
        assert!(matches!(Selection::parse("all"), Ok(Selection::All)));
        assert!(matches!(
            Selection::parse("cgroup:pod1234"),
            Ok(Selection::Cgroup(_))
        ));
        assert!(matches!(
            Selection::parse("cmdline:^python"),
            Ok(Selection::Cmdline(_))
        ));
        assert!(Selection::parse("pid:3").unwrap_err().contains("\"pid:3\""));
    }
}
