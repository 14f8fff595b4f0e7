//! Shell commands costguard builds: words quoted as a shell reads them back, and `sh -c`
//! with the run's facts in its environment (the exit hook's and the release command's).

use std::process::Stdio;

use crate::ledger::Ledger;

/// A word as a shell reads it back: bare when safe, else in single quotes.
pub fn quote(w: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_./:=@%+,-".contains(c);
    if !w.is_empty() && w.chars().all(safe) {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', "'\\''"))
    }
}

/// `sh -c CMD` with the run's facts as `COSTGUARD_*` variables (the exit hook's and the
/// release command's environment).
pub fn with_run_facts(cmd: &str, l: &Ledger) -> tokio::process::Command {
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

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(quote("--max-wall"), "--max-wall");
        assert_eq!(quote("cat >> x"), "'cat >> x'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote(""), "''");
    }
}
