//! Runs the `--on-exit` hook (already checked against the side-effect list at config time)
//! with the run's facts in its environment. Its failure is reported, never fatal: the run's
//! own exit status stands. It is bounded: past `--on-exit-timeout` its process group gets
//! TERM, then KILL after `HOOK_GRACE`, so a hanging hook never keeps costguard (and the pod
//! or instance it holds) alive.

use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::ledger::Ledger;
use crate::units::format_duration;

/// How long the hook has between TERM and KILL.
const HOOK_GRACE: Duration = Duration::from_secs(5);

pub async fn run(cmd: &str, l: &Ledger, timeout: Duration) {
    let mut c = crate::shell::with_run_facts(cmd, l);
    // Its own group: what the shell starts is ended with it at the timeout.
    c.process_group(0).kill_on_drop(true);
    let mut child = match c.spawn() {
        Ok(c) => c,
        Err(e) => {
            return crate::console::alert(format!("notice: exit hook could not start: {e}"));
        }
    };
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(s) => s,
        Err(_) => return end_hook(child, timeout).await,
    };
    match status {
        Ok(s) if s.success() => crate::console::say("exit hook done"),
        // The results may not have landed: seen even with --quiet.
        Ok(s) => crate::console::alert(format!("notice: exit hook failed: {s}")),
        Err(e) => crate::console::alert(format!("notice: exit hook failed: {e}")),
    }
}

/// The hook ran past its time: TERM to its process group, KILL after the grace; said even
/// with --quiet (what it should have left may be missing).
async fn end_hook(mut child: tokio::process::Child, timeout: Duration) {
    let Some(pgid) = child.id().map(|p| Pid::from_raw(p as i32)) else {
        return;
    };
    let _ = killpg(pgid, Signal::SIGTERM);
    let how = match tokio::time::timeout(HOOK_GRACE, child.wait()).await {
        Ok(_) => "TERM",
        Err(_) => {
            let _ = killpg(pgid, Signal::SIGKILL);
            let _ = tokio::time::timeout(HOOK_GRACE, child.wait()).await;
            "KILL"
        }
    };
    // The shell's children in its group too, whatever the shell did with TERM.
    let _ = killpg(pgid, Signal::SIGKILL);
    crate::console::alert(format!(
        "notice: exit hook still running after --on-exit-timeout {}: ended its process group ({how})",
        format_duration(timeout)
    ));
}
