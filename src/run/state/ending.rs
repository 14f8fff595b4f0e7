//! The session's ending, decided by the state: the verdict (outcome, exit code, detail), the
//! phase's record and whether the run ends with this session, a plan's own verdict, and the
//! ending events. Pure like the rest of `RunState`: the session performs what it says.

use std::time::Duration;

use super::{RunState, TargetKind};
use crate::events::EventKind;
use crate::exit::{self, JobStatus};
use crate::ledger::{Outcome, PhaseRecord, RecordState, StepRecord};
use crate::run::action::{Action, Ending};

/// How the session ended, decided once.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub code: u8,
    pub outcome: Outcome,
    pub detail: String,
}

/// What the ending needs to know of the run beyond this session, fixed for the session.
#[derive(Debug, Clone, Default)]
pub struct EndRules {
    /// The run's own ceilings (a plan phase's caps are the engine's).
    pub run_max_usd: Option<f64>,
    pub run_max_wall: Option<Duration>,
    /// A plan's phase: where it stands in the plan.
    pub plan: Option<PlanRules>,
    /// The kill's grace (`--kill-grace`).
    pub grace: Duration,
    /// The job's program as the summary names it when it cannot run (`"train.py"`).
    pub program: Option<String>,
    /// How the box is released after the run (None: it is not).
    pub release: Option<ReleaseRules>,
    /// An exit hook runs with the final ledger (`--on-exit`).
    pub hook: bool,
    /// How long the endpoint serves the end (`--linger`; None: no linger or no endpoint).
    pub linger: Option<Duration>,
}

/// The release as the state decides it.
#[derive(Debug, Clone)]
pub struct ReleaseRules {
    pub on: crate::cloud::release::On,
    /// "aws StopInstances i-…", for the kill alert and a failure's event.
    pub describe: String,
}

/// A plan phase's place in the plan.
#[derive(Debug, Clone, Default)]
pub struct PlanRules {
    pub total: usize,
    /// The plan's last phase.
    pub last: bool,
    /// `on_kill = abort`: a killed phase ends the plan.
    pub abort_on_kill: bool,
    pub expected: Option<Duration>,
    /// The phases already on record (earlier sessions of the run).
    pub done: Vec<PhaseRecord>,
}

/// The session's conclusion: whether the run ends, its exit status, its state and words.
#[derive(Debug, Clone, PartialEq)]
pub struct Conclusion {
    pub ended: bool,
    pub code: u8,
    pub detail: String,
    pub overall: RecordState,
    /// The phase on record (a plan's phase only).
    pub phase: Option<PhaseRecord>,
    /// A plan's last word ("plan completed: …; exit status 0"), when the plan ends.
    pub plan_line: Option<String>,
}

impl RunState {
    /// The verdict on the session from how the loop ended, the job leader's status (when
    /// known) and the pids the kill reached.
    pub fn verdict(&self, ending: &Ending, leader: Option<JobStatus>, pids: &[i32]) -> Verdict {
        let v = |code, outcome, detail: String| Verdict {
            code,
            outcome,
            detail,
        };
        match (self.kind, ending, leader) {
            (TargetKind::Agent, Ending::Kill { evidence, .. }, _) => v(
                exit::CEILING_KILLED,
                Outcome::Killed,
                format!("{evidence}; ended pids {pids:?}"),
            ),
            (TargetKind::Agent, Ending::Stop(d), _) => v(0, Outcome::Completed, d.clone()),
            // Over budget and stopped before it could kill: never "completed", never 0.
            (_, Ending::Disarmed { signal, detail }, _) => v(
                JobStatus::Signaled(*signal as i32).code(),
                Outcome::Stopped,
                detail.clone(),
            ),
            (
                _,
                Ending::Kill {
                    reason, evidence, ..
                },
                _,
            ) if reason.is_ceiling() => v(exit::CEILING_KILLED, Outcome::Killed, evidence.clone()),
            (_, Ending::Kill { evidence, .. }, Some(s)) => v(
                s.code(),
                Outcome::Stopped,
                format!("{evidence}; job {}", s.describe()),
            ),
            (_, Ending::Kill { evidence, .. }, None) => {
                v(exit::OWN_FAILURE, Outcome::Stopped, evidence.clone())
            }
            (_, Ending::HolderLost, _) => v(
                exit::OWN_FAILURE,
                Outcome::Stopped,
                format!(
                    "the holder process was lost; the job was ended ({} processes {pids:?}), its own status unknown",
                    pids.len()
                ),
            ),
            (_, _, Some(s @ JobStatus::Exited(0))) => v(s.code(), Outcome::Completed, s.describe()),
            (_, _, Some(s)) => v(s.code(), Outcome::Failed, s.describe()),
            (_, _, None) => v(
                exit::OWN_FAILURE,
                Outcome::Failed,
                "the holder process was lost; the job's status is unknown".into(),
            ),
        }
    }

    /// Whether the run's own ceiling (not a phase's) is reached.
    pub fn run_cap_hit(&self, now: Duration) -> bool {
        let spend = self.engine.spend(now);
        let elapsed = self.carried.elapsed + now.as_secs_f64();
        self.rules.run_max_usd.is_some_and(|b| spend >= b - 1e-9)
            || self
                .rules
                .run_max_wall
                .is_some_and(|w| elapsed >= w.as_secs_f64() - 1e-3)
    }

    /// Whether the run ends with this session (a plan's next phase follows otherwise).
    pub fn run_ends(&self, outcome: Outcome, now: Duration) -> bool {
        let Some(p) = &self.rules.plan else {
            return true;
        };
        p.last
            || self.run_cap_hit(now)
            || matches!(outcome, Outcome::Failed | Outcome::Stopped)
            || (outcome == Outcome::Killed && p.abort_on_kill)
    }

    /// The phase's steps on record: those done, the one the ending cut, the rest not run.
    fn step_records(&self, outcome: Outcome, now: Duration) -> Vec<StepRecord> {
        let Some(p) = &self.phase else {
            return Vec::new();
        };
        let key = p.step_key.as_deref().unwrap_or("step");
        p.step_values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let (word, secs) = match (p.step_times.get(i), p.step) {
                    (Some(t), _) => ("completed", Some(*t)),
                    (None, Some((n, t0))) if n == i + 1 => {
                        (outcome.as_str(), Some(now.saturating_sub(t0).as_secs_f64()))
                    }
                    // Too quick for the poll: a step before the one seen ran, and a
                    // completed phase ran them all.
                    (None, Some((n, _))) if i + 1 < n => ("completed", None),
                    (None, _) if outcome == Outcome::Completed => ("completed", None),
                    (None, None) if i == 0 => (outcome.as_str(), None),
                    _ => ("not run", None),
                };
                StepRecord {
                    label: format!("{key} {v}"),
                    outcome: word.into(),
                    elapsed_seconds: secs,
                }
            })
            .collect()
    }

    /// Concludes the session on its verdict: the phase on record and its `phase-completed`
    /// event, the run's own ending event, a plan's verdict. The events are in `acts`, in
    /// the order they happen.
    pub fn conclude(&mut self, v: &Verdict, now: Duration, acts: &mut Vec<Action>) -> Conclusion {
        let ended = self.run_ends(v.outcome, now);
        let phase = self.end_phase(v, ended, now, acts);
        let plan = (ended && self.rules.plan.is_some()).then(|| self.plan_summary(now));
        if ended {
            self.end_run(v, plan.as_ref(), now, acts);
        }
        let (code, detail) = match &plan {
            Some(p) if p.killed && v.code == 0 => (exit::CEILING_KILLED, p.detail.clone()),
            Some(p) => (v.code, p.detail.clone()),
            None => (v.code, v.detail.clone()),
        };
        let overall = match (&plan, ended) {
            (Some(p), _) if p.whole => RecordState::Completed,
            (Some(_), _) if v.outcome == Outcome::Completed => RecordState::Failed,
            (_, true) => v.outcome.into(),
            (_, false) => RecordState::Running,
        };
        Conclusion {
            ended,
            code,
            plan_line: plan
                .as_ref()
                .map(|_| format!("plan {overall}: {detail}; exit status {code}")),
            detail,
            overall,
            phase,
        }
    }

    /// A plan's phase on record and its `phase-completed` event (the reason: the kill's,
    /// else the outcome), which names the step the phase ended in.
    fn end_phase(
        &mut self,
        v: &Verdict,
        ended: bool,
        now: Duration,
        acts: &mut Vec<Action>,
    ) -> Option<PhaseRecord> {
        let p = self.phase.clone()?;
        let expected = self.rules.plan.as_ref().and_then(|r| r.expected);
        // The kill's own reason: the policy's ceilings and also a fleet, record or signal kill
        // that the policy never saw.
        let reason = match &self.closing.ending {
            Some(Ending::Kill { reason, .. }) => Some(reason.as_str().to_string()),
            _ => self.engine.killed().map(|r| r.as_str().to_string()),
        };
        let at_step = p
            .step_text()
            .filter(|_| v.outcome != Outcome::Completed)
            .map(|s| format!(" (at {s})"))
            .unwrap_or_default();
        let record = PhaseRecord {
            name: p.name.clone(),
            outcome: v.outcome,
            elapsed_seconds: now.as_secs_f64(),
            expected_seconds: expected.map(|d| d.as_secs_f64()),
            spend_dollars: self.engine.spend(now) - self.carried.spend,
            reason: reason.clone(),
            steps: self.step_records(v.outcome, now),
        };
        if let Some(r) = self.rules.plan.as_mut() {
            r.done.push(record.clone());
        }
        let outcome = v.outcome.as_str();
        let ev = self.event(
            EventKind::PhaseCompleted,
            reason.as_deref().or(Some(outcome)),
            format!(
                "phase {}/{} {}: {outcome}{at_step} after {}: {}",
                p.index + 1,
                p.total,
                p.name,
                crate::units::format_secs(now.as_secs_f64()),
                v.detail
            ),
            now,
        );
        acts.push(Action::Emit(Box::new(ev)));
        if !ended {
            let next = if v.outcome == Outcome::Killed {
                "on_kill = continue: going on with the next phase"
            } else {
                "next phase"
            };
            acts.push(Action::Say(format!("phase {} {outcome}; {next}", p.name)));
        }
        Some(record)
    }

    /// The run's own ending event. A plan whose every phase ran to its end or its own cap
    /// is `completed`, with the summary; one cut short (a failure, a stop, on_kill = abort,
    /// the run's own ceiling) is `failed`, with the phase it ended at.
    fn end_run(
        &mut self,
        v: &Verdict,
        plan: Option<&PlanSummary>,
        now: Duration,
        acts: &mut Vec<Action>,
    ) {
        let (kind, reason, text) = match (self.phase.clone(), plan) {
            (None, _) | (_, None) => match v.outcome {
                Outcome::Completed => (EventKind::Completed, None, v.detail.clone()),
                Outcome::Failed => (EventKind::Failed, None, v.detail.clone()),
                _ => return,
            },
            (Some(_), Some(s)) if s.whole => {
                (EventKind::Completed, None, format!("plan: {}", s.detail))
            }
            (Some(p), Some(s)) => (
                EventKind::Failed,
                Some(v.outcome.as_str()),
                format!(
                    "plan ended at phase {}/{} {}: {}: {}; {}",
                    p.index + 1,
                    p.total,
                    p.name,
                    v.outcome,
                    v.detail,
                    s.detail
                ),
            ),
        };
        let ev = self.event(kind, reason, text, now);
        acts.push(Action::Emit(Box::new(ev)));
    }

    /// A plan's ending in words for the whole plan: "5 of 7 phases completed; BiGRU,
    /// GcnLite killed at their wall caps".
    fn plan_summary(&self, now: Duration) -> PlanSummary {
        let (total, recs) = match &self.rules.plan {
            Some(p) => (p.total, p.done.as_slice()),
            None => (0, &[][..]),
        };
        let killed = recs.iter().any(|r| r.outcome == Outcome::Killed);
        let whole = recs.len() == total
            && !self.run_cap_hit(now)
            && recs
                .iter()
                .all(|r| matches!(r.outcome, Outcome::Completed | Outcome::Killed));
        PlanSummary {
            detail: summary_text(recs, total),
            killed,
            whole,
        }
    }
}

/// How a plan ended, for its last event, its verdict and its state.
struct PlanSummary {
    detail: String,
    /// A phase was killed (exit 124 when nothing failed).
    killed: bool,
    /// Every phase ran to its end or its own cap: the plan completed.
    whole: bool,
}

/// "5 of 7 phases completed; BiGRU, GcnLite killed at their wall caps; eval not run".
fn summary_text(recs: &[PhaseRecord], total: usize) -> String {
    let done = recs
        .iter()
        .filter(|r| r.outcome == Outcome::Completed)
        .count();
    let mut parts = vec![format!("{done} of {total} phases completed")];
    // Kills grouped by reason, in the order they happened.
    let mut reasons: Vec<&str> = Vec::new();
    for r in recs.iter().filter(|r| r.outcome == Outcome::Killed) {
        let why = r.reason.as_deref().unwrap_or("unknown");
        if !reasons.contains(&why) {
            reasons.push(why);
        }
    }
    for why in reasons {
        let names: Vec<&str> = recs
            .iter()
            .filter(|r| {
                r.outcome == Outcome::Killed && r.reason.as_deref().unwrap_or("unknown") == why
            })
            .map(|r| r.name.as_str())
            .collect();
        let one = names.len() == 1;
        let how = match why {
            "wall" | "usd" => format!(
                "at {} {why} cap{}",
                if one { "its" } else { "their" },
                if one { "" } else { "s" }
            ),
            "signal" => "by a signal".to_string(),
            other => format!("by the {other} watchdog"),
        };
        parts.push(format!("{} killed {how}", names.join(", ")));
    }
    for r in recs
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Failed | Outcome::Stopped))
    {
        parts.push(format!("{} {}", r.name, r.outcome));
    }
    if recs.len() < total {
        parts.push(format!("{} not run", total - recs.len()));
    }
    parts.join("; ")
}
