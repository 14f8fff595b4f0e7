//! The session's ending as stages of the same machine: after the loop stops the state
//! settles how it ended (a leader killed from outside together with costguard is a stop),
//! asks for the kill (or the leftovers, or what a lost holder left), the leader's status and
//! the "GPU freed?" check, concludes (verdict, summary, ending events, plan verdict), then
//! the record, the hook, the flush, the release and the linger. Each effect is an
//! [`Action`] whose result comes back as a [`Done`]; every event is made here.

use std::time::Duration;

use nix::sys::signal::Signal;

use super::{RunState, Stage, TargetKind, Verdict};
use crate::events::{EventKind, KillReason};
use crate::exit::JobStatus;
use crate::ledger::{Ledger, Outcome, RecordState};
use crate::run::action::{Action, Done, Ending};
use crate::supervise::kill::KillReport;
use crate::units::{format_duration, format_money};

/// How long after the job's leader died of an outside TERM/INT/HUP a signal to costguard
/// still counts as the same stop (Slurm signals a step's processes one after another).
pub const STOPPED_TOGETHER: Duration = Duration::from_millis(300);

/// How long the leader's status is waited for after a kill.
const LEADER_WAIT: Duration = Duration::from_secs(2);

/// What the ending has learned so far.
#[derive(Debug, Clone, Default)]
pub(super) struct Closing {
    pub(super) ending: Option<Ending>,
    /// The target's processes found outside the cgroup leaf at the kill.
    outside: Vec<String>,
    /// The pids the kill reached.
    pids: Vec<i32>,
    leader: Option<JobStatus>,
    last_line: Option<String>,
    /// (exit code, whether the run ended, its state).
    concluded: Option<(u8, bool, RecordState)>,
    /// The conclusion's words, and a plan's last line.
    detail: String,
    plan_line: Option<String>,
}

impl RunState {
    /// The loop took `ending`: the ending begins at the next `Done::LoopStopped`.
    pub(super) fn begin_ending(&mut self, ending: Ending) {
        self.stage = Stage::Settling;
        self.closing.ending = Some(ending);
    }

    fn ending(&self) -> Ending {
        self.closing.ending.clone().unwrap_or(Ending::HolderLost)
    }

    /// An effect's result in, the next effects out.
    pub(super) fn on_done(&mut self, d: Done, now: Duration) -> Vec<Action> {
        match d {
            Done::LoopStopped => self.settle(),
            Done::StopSignal(sig) => {
                if let Some(sig) = sig {
                    self.closing.ending = Some(Ending::Kill {
                        reason: KillReason::Signal,
                        evidence: format!(
                            "signal: costguard and the job both received {} (stopped from outside, \
                             e.g. scancel or a scheduler's time limit)",
                            sig.as_str()
                        ),
                        first: sig,
                    });
                }
                self.start_kill()
            }
            Done::OutsideLeaf(out) => self.kill_now(out, now),
            Done::Killed(r) => self.after_kill(r, now),
            Done::Leftovers => vec![Action::CloseTarget],
            Done::TargetClosed(last) => {
                self.closing.last_line = last;
                match (self.ending(), self.kind) {
                    (Ending::Leader(s), _) => self.after_leader(Some(s), now),
                    (_, TargetKind::Job) => vec![Action::AwaitLeader(LEADER_WAIT)],
                    (_, TargetKind::Agent) => self.after_leader(None, now),
                }
            }
            Done::Leader(s) => self.after_leader(s, now),
            Done::GpuHeld(held) => {
                let mut acts = Vec::new();
                for h in held {
                    self.say_event(
                        EventKind::AgentError,
                        Some("gpu-not-freed"),
                        h,
                        now,
                        &mut acts,
                    );
                }
                acts.extend(self.conclude_now(now));
                acts
            }
            Done::RecordClosed(l) => self.after_record(l),
            Done::Flushed => self.after_flush(),
            Done::Released(None) | Done::ReleaseRecorded => self.finish(),
            Done::Released(Some((result, attempts))) => self.released(result, attempts, now),
            Done::Lingered => self.exit(),
        }
    }

    /// A leader dead of TERM, INT or HUP: did costguard get a stop signal with it?
    fn settle(&mut self) -> Vec<Action> {
        let outside = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];
        match self.ending() {
            Ending::Leader(JobStatus::Signaled(n)) if outside.iter().any(|s| *s as i32 == n) => {
                vec![Action::AwaitStop(STOPPED_TOGETHER)]
            }
            _ => self.start_kill(),
        }
    }

    fn start_kill(&mut self) -> Vec<Action> {
        self.stage = Stage::Killing;
        let grace = self.rules.grace;
        match self.ending() {
            Ending::Kill { .. } => vec![Action::FindOutside],
            Ending::Leader(_) => vec![Action::FinishLeftovers { grace }],
            Ending::HolderLost => vec![
                Action::Alert(
                    "the holder process was lost (killed from outside?): ending the job's processes"
                        .into(),
                ),
                Action::KillLost { grace },
            ],
            Ending::Stop(_) | Ending::Disarmed { .. } => vec![Action::CloseTarget],
        }
    }

    /// The killed event, the kill on record, then the one kill protocol on the target.
    fn kill_now(&mut self, outside: Vec<String>, now: Duration) -> Vec<Action> {
        let Ending::Kill {
            reason,
            evidence,
            first,
        } = self.ending()
        else {
            return vec![Action::CloseTarget];
        };
        // Processes that moved themselves out of the job's cgroup leaf are killed all the
        // same (they are still below the holder), and named: the leaf did not hold them.
        let evidence = if outside.is_empty() {
            evidence
        } else {
            format!(
                "{evidence}; outside costguard's cgroup: {}",
                outside.join(", ")
            )
        };
        self.closing.outside = outside;
        let then = if reason.is_ceiling() {
            self.release_announcement().unwrap_or_default()
        } else {
            String::new()
        };
        let mut acts = Vec::new();
        let text = format!("{evidence}{then}");
        self.say_event(
            EventKind::Killed,
            Some(reason.as_str()),
            text,
            now,
            &mut acts,
        );
        acts.push(Action::RecordKill { reason, evidence });
        let grace = self.rules.grace;
        if reason == KillReason::Signal && !grace.is_zero() {
            let again = if first == Signal::SIGINT {
                "Ctrl-C again"
            } else {
                "a second signal"
            };
            acts.push(Action::Alert(format!(
                "waiting up to {} for the job to end after {}; {again} kills it now",
                format_duration(grace),
                first.as_str()
            )));
        }
        acts.push(Action::Kill { first, grace });
        acts
    }

    /// What the kill protocol reported: said, and on record as events.
    fn after_kill(&mut self, r: KillReport, now: Duration) -> Vec<Action> {
        self.note_pids(&r.pids);
        self.closing.pids = r.pids.clone();
        let mut acts = Vec::new();
        let ending = self.ending();
        if ending == Ending::HolderLost {
            let mut text = format!(
                "the holder process was lost; the kill protocol ended {} processes of the job {:?}",
                r.pids.len(),
                r.pids
            );
            if !r.survivors.is_empty() {
                text += &format!("; survivors {:?}", r.survivors);
            }
            self.say_event(
                EventKind::AgentError,
                Some("holder-lost"),
                text,
                now,
                &mut acts,
            );
            acts.push(Action::CloseTarget);
            return acts;
        }
        let grace = self.rules.grace;
        if let (Ending::Kill { first, .. }, true) = (&ending, r.escalated && !grace.is_zero()) {
            acts.push(Action::Alert(if r.took >= grace {
                format!(
                    "the job did not end within {} of {}: killed with SIGKILL",
                    format_duration(grace),
                    first.as_str()
                )
            } else {
                "killed with SIGKILL at once, as asked".to_string()
            }));
        }
        let outside = &self.closing.outside;
        let late: Vec<i32> = r
            .escaped
            .iter()
            .copied()
            .filter(|p| !outside.iter().any(|o| o.starts_with(&format!("pid {p} "))))
            .collect();
        if !late.is_empty() {
            let text = format!("during the kill, processes of the job were found outside costguard's cgroup (killed all the same): {late:?}");
            self.say_event(EventKind::AgentError, Some("escaped"), text, now, &mut acts);
        }
        if !r.survivors.is_empty() {
            let text = format!(
                "{} processes of the job survived the kill: {:?}",
                r.survivors.len(),
                r.survivors
            );
            self.say_event(
                EventKind::AgentError,
                Some("survivors"),
                text,
                now,
                &mut acts,
            );
        }
        acts.push(Action::CloseTarget);
        acts
    }

    /// The leader's status is known (or will not be): the sources stop; after a ceiling
    /// kill, the "GPU freed?" check.
    fn after_leader(&mut self, leader: Option<JobStatus>, now: Duration) -> Vec<Action> {
        self.closing.leader = leader;
        let mut acts = vec![Action::StopSources];
        match self.ending() {
            Ending::Kill { reason, .. } if reason.is_ceiling() => acts.push(Action::CheckGpuFreed),
            _ => acts.extend(self.conclude_now(now)),
        }
        acts
    }

    /// The verdict, the summary, the phase and run ending events, then the record closes.
    fn conclude_now(&mut self, now: Duration) -> Vec<Action> {
        self.stage = Stage::Concluding;
        let c = &self.closing;
        let v = self.verdict(&self.ending(), c.leader, &c.pids);
        let mut acts = self.summary(&v, now);
        let mut evs = Vec::new();
        let c = self.conclude(&v, now, &mut evs);
        if let Some(p) = &c.phase {
            acts.push(Action::RecordPhase(Box::new(p.clone())));
        }
        for a in evs {
            let emitted = matches!(a, Action::Emit(_));
            acts.push(a);
            if emitted {
                acts.push(Action::Publish);
            }
        }
        self.closing.concluded = Some((c.code, c.ended, c.overall));
        self.closing.plan_line = c.plan_line.clone();
        acts.push(Action::CloseRecord {
            state: c.overall,
            code: c.code,
            detail: c.detail.clone(),
        });
        self.closing.detail = c.detail;
        acts
    }

    /// The record is closed: the end published, a plan's last word, the report's place,
    /// the exit hook, then the flush.
    fn after_record(&mut self, ledger: Option<Box<Ledger>>) -> Vec<Action> {
        let Some((code, ended, state)) = self.closing.concluded else {
            return self.exit();
        };
        if !ended {
            return vec![Action::Flush { ended }];
        }
        let report = ledger.as_ref().and_then(|l| l.report_path.clone());
        let mut acts = vec![Action::PublishEnd {
            state,
            code,
            detail: self.closing.detail.clone(),
            report: report.as_ref().map(|p| p.display().to_string()),
        }];
        if let Some(line) = self.closing.plan_line.take() {
            // The plan's own last word: not the last phase's.
            acts.push(Action::Alert(line));
        }
        if let Some(p) = report {
            // Where the postmortem is: shown even with --quiet.
            acts.push(Action::Alert(format!("report: {}", p.display())));
        }
        if let (true, Some(l)) = (self.rules.hook, ledger) {
            acts.push(Action::Hook(l));
        }
        acts.push(Action::Flush { ended });
        acts
    }

    fn after_flush(&mut self) -> Vec<Action> {
        match self.closing.concluded {
            Some((_, true, state)) if self.release_due(outcome_of(state)) => {
                self.stage = Stage::Releasing;
                vec![Action::Release]
            }
            _ => self.finish(),
        }
    }

    /// The release's result: a failure is an alarm that reaches a person (an event of its
    /// own, after the run's flush); a success is on record and was announced in the kill.
    fn released(
        &mut self,
        result: Result<String, String>,
        attempts: u32,
        now: Duration,
    ) -> Vec<Action> {
        let failed = result.as_ref().err().map(|e| {
            let text = format!(
                "the box is NOT released after {attempts} attempts ({e}): it keeps billing until stopped by hand ({})",
                self.rules.release.as_ref().map(|r| r.describe.as_str()).unwrap_or("")
            );
            Box::new(self.event(EventKind::AgentError, Some("release"), text, now))
        });
        vec![Action::RecordRelease {
            result,
            attempts,
            failed,
        }]
    }

    /// The run's end marked, then the linger (when it ended and there is an endpoint).
    fn finish(&mut self) -> Vec<Action> {
        let Some((_, true, _)) = self.closing.concluded else {
            return self.exit();
        };
        self.stage = Stage::Lingering;
        match self.rules.linger {
            Some(d) => vec![Action::MarkEnded, Action::Linger(d)],
            None => {
                let mut acts = vec![Action::MarkEnded];
                acts.extend(self.exit());
                acts
            }
        }
    }

    fn exit(&mut self) -> Vec<Action> {
        self.stage = Stage::Over;
        let (code, ended, _) =
            self.closing
                .concluded
                .unwrap_or((crate::exit::OWN_FAILURE, true, RecordState::Failed));
        vec![Action::Exit { code, ended }]
    }

    /// An event made now, handed to the sinks and published at once.
    fn say_event(
        &mut self,
        kind: EventKind,
        reason: Option<&str>,
        text: String,
        now: Duration,
        acts: &mut Vec<Action>,
    ) {
        let ev = self.event(kind, reason, text, now);
        acts.push(Action::Emit(Box::new(ev)));
        acts.push(Action::Publish);
    }

    /// Whether this ending releases the box (a plan: only its last ending).
    pub fn release_due(&self, outcome: Outcome) -> bool {
        let Some(r) = &self.rules.release else {
            return false;
        };
        if self.idle_box_fired() {
            return true;
        }
        match r.on {
            crate::cloud::release::On::Kill => outcome == Outcome::Killed,
            crate::cloud::release::On::End => outcome != Outcome::Stopped,
        }
    }

    /// What the kill alert says of the release to come (a plan's phase kill that goes on to
    /// the next phase releases nothing).
    fn release_announcement(&self) -> Option<String> {
        let r = self.rules.release.as_ref()?;
        if !self.release_due(Outcome::Killed) {
            return None;
        }
        let last = self
            .rules
            .plan
            .as_ref()
            .is_none_or(|p| p.last || p.abort_on_kill);
        last.then(|| format!("; then the box is released: {}", r.describe))
    }

    /// The one summary line (and the job's last output line after a kill).
    fn summary(&self, v: &Verdict, now: Duration) -> Vec<Action> {
        let e = &self.engine;
        if self.kind == TargetKind::Agent {
            return vec![Action::Alert(format!(
                "agent {}: {}; ran {}, spent {}",
                v.outcome,
                v.detail,
                format_duration(now),
                format_money(e.spend(now))
            ))];
        }
        let mut acts = Vec::new();
        if let (Some(JobStatus::ExecFailed(_)), Some(program)) =
            (self.closing.leader, &self.rules.program)
        {
            acts.push(Action::Alert(format!(
                "cannot run {program}: {}",
                v.detail.trim_start_matches("could not execute: ")
            )));
        }
        if matches!(v.outcome, Outcome::Killed | Outcome::Stopped) {
            if let Some(line) = &self.closing.last_line {
                acts.push(Action::Say(format!("last output: {line}")));
            }
        }
        let budget = self
            .rules
            .run_max_usd
            .map(|b| format!(" of {}", format_money(b)))
            .unwrap_or_default();
        let spent = if self.priced() {
            format!("spent {}{budget}", format_money(e.spend(now)))
        } else {
            "spend unknown".to_string()
        };
        let wasted = e.wasted(now);
        let wasted_text = if wasted > 0.0 {
            format!(", wasted {}", format_money(wasted))
        } else {
            String::new()
        };
        acts.push(Action::Alert(format!(
            "{}: {}; ran {}, {spent}{wasted_text}",
            v.outcome,
            v.detail,
            format_duration(now)
        )));
        acts
    }
}

/// The outcome a run's final state stands for (the release is decided on it).
fn outcome_of(s: RecordState) -> Outcome {
    match s {
        RecordState::Killed => Outcome::Killed,
        RecordState::Stopped => Outcome::Stopped,
        RecordState::Completed => Outcome::Completed,
        _ => Outcome::Failed,
    }
}
