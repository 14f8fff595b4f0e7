//! Runs the `--on-exit` hook (already checked against the side-effect list at config time)
//! with the run's facts in its environment. Its failure is reported, never fatal: the run's
//! own exit status stands.

use std::process::Stdio;

use crate::ledger::Ledger;

pub async fn run(cmd: &str, l: &Ledger) {
    let mut c = command(cmd, l);
    match c.status().await {
        Ok(s) if s.success() => crate::console::say("exit hook done"),
        // The results may not have landed: seen even with --quiet.
        Ok(s) => crate::console::alert(format!("notice: exit hook failed: {s}")),
        Err(e) => crate::console::alert(format!("notice: exit hook could not start: {e}")),
    }
}

/// `sh -c CMD` with the run's facts as `COSTGUARD_*` variables (the exit hook's and the
/// release command's environment).
pub(crate) fn command(cmd: &str, l: &Ledger) -> tokio::process::Command {
    let reason = l.kills.last().map(|k| k.reason.clone()).unwrap_or_default();
    let report = l
        .report_path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let run_dir = l
        .report_path
        .as_ref()
        .and_then(|p| p.parent())
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut c = tokio::process::Command::new("sh");
    c.arg("-c")
        .arg(cmd)
        .env("COSTGUARD_RUN_ID", &l.run_id)
        .env("COSTGUARD_OUTCOME", l.state.as_str())
        .env("COSTGUARD_REASON", &reason)
        .env("COSTGUARD_EXIT_CODE", l.exit_code.unwrap_or(0).to_string())
        .env("COSTGUARD_REPORT", &report)
        .env("COSTGUARD_RUN_DIR", &run_dir)
        .env(
            "COSTGUARD_ELAPSED_SECONDS",
            format!("{:.3}", l.elapsed_seconds),
        )
        .stdin(Stdio::null());
    // Spend that was never metered (no price) is unknown, not $0: the variables are unset.
    if l.priced {
        c.env("COSTGUARD_SPEND_DOLLARS", format!("{:.4}", l.spend_dollars))
            .env(
                "COSTGUARD_WASTED_DOLLARS",
                format!("{:.4}", l.wasted_dollars),
            );
    } else {
        c.env_remove("COSTGUARD_SPEND_DOLLARS")
            .env_remove("COSTGUARD_WASTED_DOLLARS");
    }
    c
}
