//! The postmortem: `report.md` in the run directory, written at the end of every run and
//! printed by `costguard report RUN`. Built from the ledger, the event log and `series.json`
//! (for the timeline), so it can be written again at any time.

use std::fmt::Write;
use std::time::Duration;

use crate::events::{Event, EventKind};
use crate::ledger::Ledger;
use crate::units::{format_duration, format_money, format_secs};

/// Rounds a suggested limit up to a readable step.
fn round_up_secs(secs: f64) -> Duration {
    let step = match secs {
        s if s < 120.0 => 10.0,
        s if s < 3600.0 => 60.0,
        _ => 600.0,
    };
    Duration::from_secs_f64(((secs / step).ceil() * step).max(step))
}

fn round_up_money(d: f64) -> f64 {
    let step = if d < 10.0 {
        0.5
    } else if d < 100.0 {
        5.0
    } else {
        50.0
    };
    ((d / step).ceil() * step).max(step)
}

/// The whole report: header, planned against actual, kills, cost, surprises, suggestions.
/// Writes `timeline.svg` (from `series.json` and the event log) and `report.md`, which embeds
/// the timeline when it could be written. Returns the report's text and whether it was saved.
pub fn write_report(dir: &std::path::Path, l: &Ledger) -> (String, std::io::Result<()>) {
    let series = crate::series::Series::load(dir).unwrap_or_default();
    write_with(dir, l, &series)
}

/// [`write_report`] with the run's series at hand (the run that just ended has it in
/// memory: nothing is read back).
pub fn write_with(
    dir: &std::path::Path,
    l: &Ledger,
    series: &crate::series::Series,
) -> (String, std::io::Result<()>) {
    let events = crate::ledger::read_events(dir);
    let title = format!("costguard run {}: {}", l.run_id, l.state.as_str());
    let marks: Vec<_> = events.iter().filter_map(crate::series::Mark::of).collect();
    let svg = crate::timeline::render(series, &marks, l.budget_dollars, &title);
    let pictured = crate::fsutil::write_replace(&dir.join("timeline.svg"), svg.as_bytes()).is_ok();
    let mut text = render(l, &events);
    if pictured {
        // After the title line: the picture first, the words after.
        if let Some(at) = text.find("\n\n") {
            text.insert_str(at + 2, "![timeline: spend against the budget, GPU utilization, kills and warnings](timeline.svg)\n\n");
        }
    }
    let saved = crate::fsutil::write_replace(&dir.join("report.md"), text.as_bytes());
    (text, saved)
}

pub fn render(l: &Ledger, events: &[Event]) -> String {
    let mut o = String::new();
    header(&mut o, l);
    planned(&mut o, l);
    kills(&mut o, l);
    cost(&mut o, l);
    release(&mut o, l);
    surprises(&mut o, l, events);
    suggestions(&mut o, l);
    o
}

/// Spend in words: dollars, or "unknown" when the run was not priced.
fn spend_text(l: &Ledger) -> String {
    if l.priced {
        format_money(l.spend_dollars)
    } else {
        "unknown".into()
    }
}

fn header(o: &mut String, l: &Ledger) {
    let outcome = if l.state == crate::ledger::RecordState::Running {
        "unfinished (costguard died)"
    } else {
        l.state.as_str()
    };
    let _ = writeln!(o, "# costguard report: {}\n", l.run_id);
    let _ = writeln!(
        o,
        "- **Outcome:** {outcome}{}",
        l.outcome_detail
            .as_deref()
            .map(|d| format!(" — {d}"))
            .unwrap_or_default()
    );
    if let Some(c) = l.exit_code {
        let _ = writeln!(o, "- **Exit status:** {c}");
    }
    let _ = writeln!(o, "- **Command:** `{}`", l.command);
    let _ = writeln!(
        o,
        "- **Host:** {} · **started** {} · **last update** {}",
        l.host, l.started_at, l.updated_at
    );
    if l.sessions > 1 && l.phases_total.is_none() {
        let _ = writeln!(
            o,
            "- **Sessions:** {} (costguard was restarted with the same run id; spend carried over)",
            l.sessions
        );
    }
    let _ = writeln!(
        o,
        "- **Watchdogs:** {}",
        if l.watchdogs.is_empty() {
            "none".into()
        } else {
            l.watchdogs.join(", ")
        }
    );
    if l.no_preflight {
        let _ = writeln!(o, "- **Preflight:** skipped with --no-preflight");
    }
    if let Some(h) = &l.on_exit {
        let _ = writeln!(o, "- **Exit hook:** `{h}`");
    }
}

fn planned(o: &mut String, l: &Ledger) {
    let _ = writeln!(o, "\n## Planned against actual\n");
    let _ = writeln!(o, "| | planned | actual |\n|---|---|---|");
    let spend = spend_text(l);
    match l.budget_dollars {
        Some(b) => {
            let _ = writeln!(
                o,
                "| spend | {} budget | {spend} ({:.0}%) |",
                format_money(b),
                100.0 * l.spend_dollars / b.max(1e-9)
            );
        }
        None => {
            let _ = writeln!(o, "| spend | no budget | {spend} |");
        }
    }
    match l.max_wall_seconds {
        Some(w) => {
            let _ = writeln!(
                o,
                "| time | {} wall | {} |",
                format_secs(w),
                format_secs(l.elapsed_seconds)
            );
        }
        None => {
            let _ = writeln!(
                o,
                "| time | no wall limit | {} |",
                format_secs(l.elapsed_seconds)
            );
        }
    }
    if let Some(total) = l.progress_total {
        let _ = writeln!(
            o,
            "| steps | {total} | {} |",
            l.last_step.map_or("none seen".into(), |s| s.to_string())
        );
    }
    if let Some(n) = l.phases_total {
        let done = l
            .phases
            .iter()
            .filter(|p| p.outcome == crate::ledger::Outcome::Completed)
            .count();
        let _ = writeln!(
            o,
            "| phases | {n} | {done} completed, {} recorded |",
            l.phases.len()
        );
    }
    phases(o, l);
}

fn phases(o: &mut String, l: &Ledger) {
    if !l.phases.is_empty() {
        let _ = writeln!(
            o,
            "\n| phase | expected | actual | spend | outcome |\n|---|---|---|---|---|"
        );
        for p in &l.phases {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {}{} |",
                p.name,
                p.expected_seconds.map_or("—".into(), format_secs),
                format_secs(p.elapsed_seconds),
                if l.priced {
                    format_money(p.spend_dollars)
                } else {
                    "unknown".into()
                },
                p.outcome,
                p.reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            );
        }
    }
    steps(o, l);
}

/// Each step of the phases that had steps: how it ended and how long it ran.
fn steps(o: &mut String, l: &Ledger) {
    if l.phases.iter().all(|p| p.steps.is_empty()) {
        return;
    }
    let _ = writeln!(o, "\n| phase | step | outcome | time |\n|---|---|---|---|");
    for p in &l.phases {
        for s in &p.steps {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} |",
                p.name,
                s.label,
                s.outcome,
                s.elapsed_seconds.map_or("—".into(), format_secs)
            );
        }
    }
}

/// A killed phase, in words: its cap, when, the step it cut and what did not run.
fn phase_kill_text(p: &crate::ledger::PhaseRecord) -> String {
    let why = p.reason.as_deref().unwrap_or("unknown");
    let how = match why {
        "wall" | "usd" => format!("at its {why} cap"),
        other => format!("by the {other} watchdog"),
    };
    let cut = p
        .steps
        .iter()
        .find(|s| s.outcome == "killed")
        .map(|s| format!(", in {}", s.label))
        .unwrap_or_default();
    let skipped: Vec<&str> = p
        .steps
        .iter()
        .filter(|s| s.outcome == "not run")
        .map(|s| s.label.as_str())
        .collect();
    let skipped = if skipped.is_empty() {
        String::new()
    } else {
        format!("; not run: {}", skipped.join(", "))
    };
    format!(
        "phase {} was killed {how} after {}{cut}{skipped}",
        p.name,
        format_secs(p.elapsed_seconds)
    )
}

fn kills(o: &mut String, l: &Ledger) {
    let _ = writeln!(o, "\n## Kills\n");
    if l.kills.is_empty() {
        let _ = writeln!(o, "None.");
    }
    for (i, k) in l.kills.iter().enumerate() {
        let phase = k
            .phase
            .as_deref()
            .map(|p| format!(" in phase {p}"))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "{}. **{}** after {}{phase}: {}",
            i + 1,
            k.reason,
            format_secs(k.elapsed_seconds),
            k.evidence
        );
        if k.last_output.is_empty() {
            let _ = writeln!(o, "   (the job's output was not read by costguard: give --stall or --progress-regex to keep its last lines)");
        } else {
            let _ = writeln!(o, "\n   Last output before the kill:\n\n   ```");
            for line in &k.last_output {
                let _ = writeln!(o, "   {line}");
            }
            let _ = writeln!(o, "   ```");
        }
    }
}

/// What was done to stop the box's meter, and what still bills.
fn release(o: &mut String, l: &Ledger) {
    let Some(r) = &l.release else { return };
    let _ = writeln!(o, "\n## Release\n");
    let when = r
        .seconds_after_kill
        .map(|s| format!(", {} after the kill began", format_secs(s)))
        .unwrap_or_default();
    let detail = r.detail.as_deref().unwrap_or("no answer on record");
    let _ = match r.state.as_str() {
        "released" => writeln!(
            o,
            "- Released: {} ({detail}; {} attempt(s){when})",
            r.how, r.attempts
        ),
        "failed" => writeln!(
            o,
            "- **NOT released** after {} attempt(s): {detail}. The box keeps billing until it is stopped by hand: {}",
            r.attempts, r.how
        ),
        _ => writeln!(
            o,
            "- Requested at {} and not confirmed (costguard ended during the call): check the box; {}",
            r.requested_at, r.how
        ),
    };
    let _ = writeln!(o, "- Still billing: {}", r.still_bills);
}

fn cost(o: &mut String, l: &Ledger) {
    let spend = spend_text(l);
    let _ = writeln!(o, "\n## Cost\n");
    let _ = writeln!(
        o,
        "- Spend: {spend}{}",
        l.rate_dollars_per_hour
            .map(|r| format!(" at {}/h at the end", format_money(r)))
            .unwrap_or_default()
    );
    if let Some(r) = &l.rate_source {
        let _ = writeln!(o, "- Rate: {r}");
    }
    if let Some(p) = &l.provider {
        let mut b = vec![p.clone()];
        b.extend(l.instance_type.clone());
        b.extend(l.region.clone());
        if let Some(spot) = l.spot {
            b.push(if spot { "spot" } else { "on-demand" }.into());
        }
        let _ = writeln!(o, "- Box: {}", b.join(" "));
    }
    if let Some(p) = &l.preempted {
        let _ = writeln!(o, "- Preempted: the provider reclaimed the box ({p})");
    }
    if l.priced {
        let share = if l.spend_dollars > 0.0 {
            100.0 * l.wasted_dollars / l.spend_dollars
        } else {
            0.0
        };
        let _ = writeln!(
            o,
            "- Wasted (GPUs idle or no progress): {} ({share:.0}% of spend)",
            format_money(l.wasted_dollars)
        );
    }
    let _ = writeln!(o, "- Time: {}", format_secs(l.elapsed_seconds));
}

fn surprises(o: &mut String, l: &Ledger, events: &[Event]) {
    let _ = writeln!(o, "\n## Surprises\n");
    let mut surprises = Vec::new();
    // A killed phase is always a surprise: the plan did not go as written.
    for p in l
        .phases
        .iter()
        .filter(|p| p.outcome == crate::ledger::Outcome::Killed)
    {
        surprises.push(phase_kill_text(p));
    }
    for p in &l.phases {
        if let Some(exp) = p.expected_seconds.filter(|e| *e > 0.0) {
            let r = p.elapsed_seconds / exp;
            if !(0.5..=1.5).contains(&r) {
                surprises.push(format!(
                    "phase {} took {} against {} expected ({r:.1}×)",
                    p.name,
                    format_secs(p.elapsed_seconds),
                    format_secs(exp)
                ));
            }
        }
    }
    if l.longest_idle_seconds >= 60.0 {
        surprises.push(format!(
            "the GPUs sat idle for {} at a stretch",
            format_secs(l.longest_idle_seconds)
        ));
    }
    if l.priced && l.spend_dollars > 0.0 && l.wasted_dollars / l.spend_dollars > 0.2 {
        surprises.push(format!(
            "{:.0}% of the spend was wasted",
            100.0 * l.wasted_dollars / l.spend_dollars
        ));
    }
    let errors: Vec<&Event> = events
        .iter()
        .filter(|e| e.kind == EventKind::AgentError)
        .collect();
    if !errors.is_empty() {
        surprises.push(format!(
            "{} costguard errors, the first: {}",
            errors.len(),
            errors[0].message
        ));
    }
    if surprises.is_empty() {
        let _ = writeln!(o, "Nothing stood out.");
    }
    for s in surprises {
        let _ = writeln!(o, "- {s}");
    }
}

fn suggestions(out: &mut String, l: &Ledger) {
    let _ = writeln!(out, "\n## Suggested limits for the next similar run\n");
    let mut o = String::new();
    suggestion_lines(&mut o, l);
    if o.is_empty() {
        // Never an empty section: say why there is nothing to suggest.
        let why = match l.state {
            crate::ledger::RecordState::Stopped => "it was stopped from outside",
            crate::ledger::RecordState::Failed => "the job failed by itself",
            _ => "it ended before telling how long and how much a complete run takes",
        };
        o = format!(
            "- None from this run: {why} after {}, so its time and spend are no guide.\n",
            format_secs(l.elapsed_seconds)
        );
    }
    out.push_str(&o);
}

fn suggestion_lines(o: &mut String, l: &Ledger) {
    let spend = spend_text(l);
    let killed_by = |r: &str| l.kills.iter().any(|k| k.reason == r);
    let completed = l.state == crate::ledger::RecordState::Completed;
    // Limits suggested from a run of seconds or cents would only be noise.
    if completed && l.elapsed_seconds < 60.0 {
        let _ = writeln!(
            o,
            "- The run was too short ({}) to suggest limits from.",
            format_secs(l.elapsed_seconds)
        );
    } else if completed {
        let wall = round_up_secs(l.elapsed_seconds * 1.3);
        let _ = writeln!(
            o,
            "- `--max-wall {}`: the observed {} plus 30%.",
            format_duration(wall),
            format_secs(l.elapsed_seconds)
        );
        if l.priced && l.spend_dollars >= 0.01 {
            let _ = writeln!(
                o,
                "- `--max-usd {}`: the observed {} plus 30%.",
                round_up_money(l.spend_dollars * 1.3),
                format_money(l.spend_dollars)
            );
        }
    } else if killed_by("wall") || killed_by("usd") {
        let _ = writeln!(o, "- A ceiling ended the run at {} ({}). If it was still progressing (last progress: {}), raise that ceiling; if not, the job needs fixing, not more budget.",
            format_secs(l.elapsed_seconds), spend, l.last_progress.as_deref().unwrap_or("none seen"));
    }
    if killed_by("idle") {
        let _ = writeln!(o, "- The idle watchdog fired: if the job loads data or compiles for long at the start, set `--idle-grace` past that; otherwise the job was stuck.");
    } else if !l
        .watchdogs
        .iter()
        .any(|w| w.starts_with("idle ") && !w.ends_with("off"))
        && l.longest_idle_seconds > 0.0
    {
        let _ = writeln!(
            o,
            "- `--idle {}`: twice the longest idle stretch seen ({}).",
            format_duration(round_up_secs(l.longest_idle_seconds * 2.0)),
            format_secs(l.longest_idle_seconds)
        );
    }
    if killed_by("stall") {
        let _ = writeln!(o, "- The stall watchdog fired: read the last output above; if a step can honestly take longer, raise `--stall`.");
    } else if l.watchdogs.iter().any(|w| w == "stall off") {
        let _ = writeln!(o, "- Turn on `--stall` (e.g. `--stall 15m`) with `--progress-regex`: a hang at 100% GPU is invisible to utilization.");
    }
    phase_suggestions(o, l);
}

/// A plan's next time: each phase's caps (a killed one: raise it or fix the job), the
/// notification cadence and the exit hook.
fn phase_suggestions(o: &mut String, l: &Ledger) {
    for p in &l.phases {
        if p.outcome == crate::ledger::Outcome::Killed {
            let _ = writeln!(
                o,
                "- phase {}: killed ({}) after {}: if its steps were progressing, raise its cap (`max_wall = \"{}\"`); if they hung, fix them before spending more on it.",
                p.name,
                p.reason.as_deref().unwrap_or("unknown"),
                format_secs(p.elapsed_seconds),
                format_duration(round_up_secs(p.elapsed_seconds * 2.0))
            );
            continue;
        }
        let _ = writeln!(
            o,
            "- phase {}: `expected = \"{}\"`, `max_wall = \"{}\"`.",
            p.name,
            format_duration(round_up_secs(p.elapsed_seconds)),
            format_duration(round_up_secs(p.elapsed_seconds * 1.5))
        );
    }
    if l.phases_total.is_none() {
        return;
    }
    let _ = writeln!(
        o,
        "- Notifications: {}",
        if l.pings_phase_ends {
            "each phase's end was sent (completed or killed) and the plan's summary last; `--notify-on killed,failed,completed` keeps only the kills and the summary."
        } else {
            "no channel took the phases' ends: the default with a plan does (`phase-completed`); give a channel, or add `phase-completed` to `--notify-on`."
        }
    );
    let _ = writeln!(
        o,
        "- Exit hook: {}",
        match l.on_exit.as_deref() {
            Some(":") => "none (`--on-exit :`): results stay where the phases wrote them.".into(),
            Some(c) => format!("`{c}` ran after the plan: check it left the results where you look for them."),
            None => "none ran: `--on-exit 'cp -r outputs /mnt/results/$COSTGUARD_RUN_ID'` leaves the results somewhere known when the plan ends.".into(),
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Kill, PhaseRecord};

    #[test]
    fn a_stopped_run_says_why_it_suggests_no_limits() {
        let l = Ledger {
            run_id: "s".into(),
            state: crate::ledger::RecordState::Stopped,
            elapsed_seconds: 42.0,
            watchdogs: vec![
                "wall 1h00m00s".into(),
                "idle off".into(),
                "stall 5m00s".into(),
            ],
            ..Ledger::default()
        };
        let r = render(&l, &[]);
        let (_, section) = r
            .split_once("## Suggested limits for the next similar run\n")
            .expect("the section");
        assert!(
            section
                .trim_start()
                .starts_with("- None from this run: it was stopped from outside after 42.000s"),
            "{r}"
        );
    }

    #[test]
    fn a_killed_run_reads_as_a_postmortem() {
        let l = Ledger {
            run_id: "sweep-1".into(),
            state: crate::ledger::RecordState::Killed,
            command: "python train.py --api-key [redacted]".into(),
            priced: true,
            spend_dollars: 10.0,
            wasted_dollars: 4.0,
            budget_dollars: Some(40.0),
            elapsed_seconds: 3600.0,
            longest_idle_seconds: 900.0,
            watchdogs: vec![
                "usd $40.00".into(),
                "idle off".into(),
                "stall 15m00s".into(),
            ],
            kills: vec![Kill {
                reason: "stall".into(),
                evidence: "stall: no progress for 15m00s; last progress \"step 4120\" 15m ago"
                    .into(),
                elapsed_seconds: 3600.0,
                phase: Some("train".into()),
                last_output: vec!["step 4120 loss 1.93".into()],
                ..Kill::default()
            }],
            phases: vec![PhaseRecord {
                name: "prep".into(),
                outcome: crate::ledger::Outcome::Completed,
                elapsed_seconds: 1800.0,
                expected_seconds: Some(600.0),
                spend_dollars: 5.0,
                reason: None,
                steps: Vec::new(),
            }],
            ..Ledger::default()
        };
        let r = render(&l, &[]);
        for want in [
            "| spend | $40.00 budget | $10.00 (25%) |",
            "**stall** after 1h00m00s in phase train",
            "   step 4120 loss 1.93",
            "Wasted (GPUs idle or no progress): $4.00 (40% of spend)",
            "phase prep took 30m00s against 10m00s expected (3.0×)",
            "the GPUs sat idle for 15m00s at a stretch",
            "raise `--stall`",
            "`--idle 30m00s`",
        ] {
            assert!(r.contains(want), "missing {want:?} in\n{r}");
        }
    }
}
