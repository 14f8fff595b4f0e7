//! `costguard agent`: no command of its own. It watches the GPU processes it can see (NVML's
//! running processes, with /proc for their command lines, cgroups and process groups) on a
//! pod with `shareProcessNamespace` or a node with `hostPID`, meters spend for its own life,
//! applies the same watchdogs, and kills the target process groups. Never itself, its own
//! process group or cgroup, or a process matching `--exclude` (other sidecars).
//!
//! After a kill the agent records it, notifies, and exits 124 — as a sidecar's job is done;
//! restarted with the same `--run-id`, it resumes the spend.

use std::collections::HashSet;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use regex::Regex;
use tokio::sync::{mpsc, watch};

use super::guard::{open, GuardError};
use super::sampler::{self, SampleMsg};
use crate::config::Settings;
use crate::events::{EventKind, KillReason};
use crate::exit;
use crate::policy::Decision;
use crate::supervise::tree;

/// Which GPU processes the agent guards.
#[derive(Debug, Clone)]
pub enum Target {
    All,
    /// Processes whose /proc/PID/cgroup contains this text (a pod or container id).
    Cgroup(String),
    Cmdline(Regex),
}

impl Target {
    pub fn parse(s: &str) -> Result<Target, String> {
        match s.split_once(':') {
            None if s == "all" => Ok(Target::All),
            Some(("cgroup", c)) if !c.is_empty() => Ok(Target::Cgroup(c.into())),
            Some(("cmdline", re)) => Regex::new(re)
                .map(Target::Cmdline)
                .map_err(|e| format!("invalid --target {s:?}: {e}")),
            _ => Err(format!(
                "invalid --target {s:?}: expected all, cgroup:TEXT or cmdline:REGEX"
            )),
        }
    }
}

fn cmdline(pid: i32) -> String {
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
    pub target: Target,
    pub exclude: Option<Regex>,
    own_pid: i32,
    own_pgid: i32,
}

impl Selector {
    pub fn new(target: Target, exclude: Option<Regex>) -> Selector {
        let own_pid = std::process::id() as i32;
        Selector {
            target,
            exclude,
            own_pid,
            own_pgid: nix::unistd::getpgrp().as_raw(),
        }
    }

    /// Whether the agent may touch `pid`.
    pub fn selects(&self, pid: i32) -> bool {
        let Some(st) = tree::stat(pid) else {
            return false; // gone, or not in our pid namespace
        };
        if pid <= 1 || pid == self.own_pid || st.pgid == self.own_pgid || st.is_zombie() {
            return false;
        }
        let cmd = cmdline(pid);
        if self.exclude.as_ref().is_some_and(|re| re.is_match(&cmd)) {
            return false;
        }
        match &self.target {
            Target::All => true,
            Target::Cgroup(c) => cgroup(pid).contains(c.as_str()),
            Target::Cmdline(re) => re.is_match(&cmd),
        }
    }
}

/// TERM (and CONT) to each target's process group, the grace, then KILL to what is left.
async fn kill_targets(pids: &[i32], grace: Duration) -> Vec<i32> {
    let mut groups: Vec<i32> = pids
        .iter()
        .filter_map(|p| tree::stat(*p).map(|s| s.pgid))
        .filter(|g| *g > 1)
        .collect();
    groups.sort_unstable();
    groups.dedup();
    for g in &groups {
        let _ = killpg(Pid::from_raw(*g), Signal::SIGTERM);
        let _ = killpg(Pid::from_raw(*g), Signal::SIGCONT);
    }
    let alive = |pid: &i32| tree::stat(*pid).is_some_and(|s| !s.is_zombie());
    let deadline = tokio::time::Instant::now() + grace;
    while pids.iter().any(alive) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for g in &groups {
        if tree::all().iter().any(|p| p.pgid == *g && !p.is_zombie()) {
            let _ = killpg(Pid::from_raw(*g), Signal::SIGKILL);
        }
    }
    groups
}

pub async fn run(settings: Settings, selector: Selector) -> Result<u8, GuardError> {
    let host = crate::events::hostname();
    let base = format!(
        "agent-{host}-{}",
        super::start::run_id_stamp(std::time::SystemTime::now())
    );
    let label = vec![std::ffi::OsString::from("costguard agent")];
    let (mut st, started) = open(&settings, &label, &base, false).await?;
    if started.gpu.is_none() {
        return Err(GuardError::Agent(
            "costguard agent needs NVML to see GPU processes (--gpu nvml, --nvml-lib PATH)".into(),
        ));
    }
    let (_root_tx, root_rx) = watch::channel(0);
    let (sample_tx, mut sample_rx) = mpsc::channel::<SampleMsg>(4);
    let sampler = tokio::spawn(sampler::run(
        started.gpu.clone(),
        settings.interval,
        root_rx,
        sample_tx,
    ));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| GuardError::Agent(format!("cannot watch signals: {e}")))?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| GuardError::Agent(format!("cannot watch signals: {e}")))?;
    let mut targets: Vec<i32> = Vec::new();
    let mut seen: HashSet<i32> = HashSet::new();
    let kill: Option<(KillReason, String)> = loop {
        let wake = st.engine.next_wakeup(st.now()).map(|d| st.t0 + d);
        let decisions = tokio::select! {
            biased;
            _ = term.recv() => break None,
            _ = int.recv() => break None,
            _ = async { match wake { Some(w) => tokio::time::sleep_until(w.into()).await, None => std::future::pending().await } } => {
                st.engine.tick(st.now())
            }
            Some(mut s) = sample_rx.recv() => {
                let pids: Vec<i32> = s.gpus.as_ref()
                    .and_then(|r| r.as_ref().ok())
                    .map(|gs| gs.iter().flat_map(|g| g.procs.iter().flatten()).map(|p| p.pid as i32).collect())
                    .unwrap_or_default();
                targets = pids.into_iter().filter(|p| selector.selects(*p)).collect();
                targets.sort_unstable();
                targets.dedup();
                for t in &targets {
                    if seen.insert(*t) {
                        st.emit(
                            EventKind::Started,
                            Some("target"),
                            format!("watching GPU process {t}: {}", crate::redact::command_line(&[cmdline(*t).into()])),
                        );
                    }
                }
                s.pids = targets.clone();
                st.on_sample(s)
            }
        };
        let mut kill = None;
        for d in decisions {
            match d {
                Decision::Warn {
                    reason, message, ..
                } => {
                    st.emit(EventKind::Warning, Some(reason), message);
                }
                Decision::Idle { message } => {
                    st.emit(EventKind::Idle, Some("idle"), message);
                }
                Decision::Stalled { message } => {
                    st.emit(EventKind::Stalled, Some("stall"), message);
                }
                Decision::Kill { reason, evidence } => kill = Some((reason, evidence)),
            }
        }
        if kill.is_some() {
            break kill;
        }
    };
    sampler.abort();
    let (code, outcome, detail) = match kill {
        Some((reason, evidence)) => {
            st.metrics.kills.with_label_values(&[reason.as_str()]).inc();
            st.emit(EventKind::Killed, Some(reason.as_str()), evidence.clone());
            st.record_kill(reason.as_str(), &evidence, Vec::new());
            let groups = kill_targets(&targets, settings.kill_grace).await;
            let detail = format!("{evidence}; process groups {groups:?} ended");
            (exit::CEILING_KILLED, "killed", detail)
        }
        None => (0, "completed", "agent stopped by a signal".to_string()),
    };
    let now = st.now();
    let spend = st.engine.spend(now);
    eprintln!(
        "costguard: agent {outcome}: {detail}; ran {}, spent {}",
        crate::units::format_duration(now),
        crate::units::format_money(spend)
    );
    super::ending::conclude(&mut st, &settings, outcome, code, &detail).await;
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_never_selects_itself_or_excluded_processes() {
        use std::os::unix::process::CommandExt;
        let me = std::process::id() as i32;
        let s = Selector::new(Target::All, None);
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
        assert!(Selector::new(Target::All, None).selects(pid));
        let ex = Selector::new(Target::All, Some(Regex::new("^sleep 30$").expect("re")));
        assert!(!ex.selects(pid), "--exclude wins: {:?}", cmdline(pid));
        let other = Selector::new(Target::Cmdline(Regex::new("^python").expect("re")), None);
        assert!(!other.selects(pid), "cmdline selector");
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn targets_parse() {
        assert!(matches!(Target::parse("all"), Ok(Target::All)));
        assert!(matches!(
            Target::parse("cgroup:pod1234"),
            Ok(Target::Cgroup(_))
        ));
        assert!(matches!(
            Target::parse("cmdline:^python"),
            Ok(Target::Cmdline(_))
        ));
        assert!(Target::parse("pid:3").unwrap_err().contains("\"pid:3\""));
    }
}
