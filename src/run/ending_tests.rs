//! The session's ending on simulated time: the verdict, a plan's verdict and the ending
//! events, decided by `RunState` without a process, a socket or a disk.

use nix::sys::signal::Signal;

use super::action::{Action, Ending, LoopEvent};
use super::state::{Carried, EndRules, Init, PhaseInfo, PlanRules, RunState, TargetKind};
use super::state_tests::{
    events, fixed, init_of, limits, phase_info, run_until, s, sample, state, unpriced,
};
use crate::events::{EventKind, KillReason};
use crate::exit::JobStatus;
use crate::ledger::{Outcome, PhaseRecord, RecordState};
use crate::policy::Limits;

fn kill(reason: KillReason, evidence: &str) -> Ending {
    Ending::Kill {
        reason,
        evidence: evidence.into(),
        first: Signal::SIGTERM,
    }
}

/// A state, how its loop ended, the leader's status; the exit code, outcome and detail.
type Case<'a> = (
    &'a RunState,
    Ending,
    Option<JobStatus>,
    u8,
    Outcome,
    &'a str,
);

#[test]
fn the_verdict_follows_the_ending_and_the_leaders_status() {
    let job = unpriced(limits(), TargetKind::Job);
    let agent = unpriced(limits(), TargetKind::Agent);
    let cases: Vec<Case> = vec![
        (
            &job,
            Ending::Leader(JobStatus::Exited(0)),
            Some(JobStatus::Exited(0)),
            0,
            Outcome::Completed,
            "exit status 0",
        ),
        (
            &job,
            Ending::Leader(JobStatus::Exited(3)),
            Some(JobStatus::Exited(3)),
            3,
            Outcome::Failed,
            "exit status 3",
        ),
        (
            &job,
            kill(KillReason::Usd, "usd: spent $5"),
            Some(JobStatus::Signaled(15)),
            124,
            Outcome::Killed,
            "usd: spent $5",
        ),
        (
            &job,
            kill(KillReason::Stall, "stall: 10m"),
            Some(JobStatus::Signaled(15)),
            124,
            Outcome::Killed,
            "stall: 10m",
        ),
        (
            &job,
            kill(KillReason::Signal, "signal: TERM"),
            Some(JobStatus::Signaled(15)),
            143,
            Outcome::Stopped,
            "signal: TERM; job ",
        ),
        (
            &job,
            kill(KillReason::Signal, "signal: TERM"),
            None,
            125,
            Outcome::Stopped,
            "signal: TERM",
        ),
        (
            &job,
            Ending::HolderLost,
            None,
            125,
            Outcome::Stopped,
            "the holder process was lost; the job was ended (2 processes [7, 8])",
        ),
        (
            &agent,
            kill(KillReason::Wall, "wall: 1h"),
            None,
            124,
            Outcome::Killed,
            "wall: 1h; ended pids [7, 8]",
        ),
        (
            &agent,
            Ending::Stop("agent stopped by a signal (SIGTERM)".into()),
            None,
            0,
            Outcome::Completed,
            "agent stopped",
        ),
        (
            &agent,
            Ending::Disarmed {
                signal: Signal::SIGTERM,
                detail: "stopped by SIGTERM while over budget".into(),
            },
            None,
            143,
            Outcome::Stopped,
            "stopped by SIGTERM while over budget",
        ),
    ];
    for (st, ending, leader, code, outcome, detail) in cases {
        let v = st.verdict(&ending, leader, &[7, 8]);
        assert_eq!((v.code, v.outcome), (code, outcome), "{ending:?}: {v:?}");
        assert!(v.detail.starts_with(detail), "{ending:?}: {v:?}");
    }
}

/// Phase `index` of `total` ("p1", "p2", …) with the phases before it on record.
fn phase(index: usize, total: usize, done: Vec<PhaseRecord>, abort: bool, lim: Limits) -> RunState {
    let base = state(lim, fixed(3600.0), Carried::default(), TargetKind::Job);
    let mut st = RunState::new(Init {
        phase: Some(phase_info(&format!("p{}", index + 1), index, total)),
        ..init_of(&base)
    });
    st.set_rules(EndRules {
        run_max_usd: Some(100.0),
        run_max_wall: None,
        plan: Some(PlanRules {
            total,
            last: index + 1 == total,
            abort_on_kill: abort,
            expected: None,
            done,
        }),
        ..EndRules::default()
    });
    st
}

#[test]
fn a_phase_killed_at_its_cap_goes_on_and_the_plan_concludes_completed_with_124() {
    // Phase 1 of 2 hits its own $5 cap at 5 s: on_kill = continue, the run goes on.
    let lim = Limits {
        max_usd: Some(5.0),
        ..limits()
    };
    let mut st = phase(0, 2, Vec::new(), false, lim);
    let acts = run_until(&mut st, s(60.0));
    let end = acts.iter().find_map(|a| match a {
        Action::End(e) => Some(e.clone()),
        _ => None,
    });
    let end = end.expect("the phase cap kills");
    let v = st.verdict(&end, Some(JobStatus::Signaled(15)), &[]);
    assert_eq!((v.code, v.outcome), (124, Outcome::Killed));
    let mut acts = Vec::new();
    let c = st.conclude(&v, s(5.0), &mut acts);
    assert!(!c.ended, "on_kill = continue: {c:?}");
    assert_eq!(c.overall, RecordState::Running);
    assert!(c.plan_line.is_none());
    let rec = c.phase.expect("the phase on record");
    assert_eq!(
        (rec.outcome, rec.reason.as_deref()),
        (Outcome::Killed, Some("usd"))
    );
    assert_eq!(
        events(&acts),
        vec![(EventKind::PhaseCompleted, Some("usd".to_string()))]
    );
    assert!(acts.contains(&Action::Say(
        "phase p1 killed; on_kill = continue: going on with the next phase".into()
    )));
    // Phase 2 of 2 completes: the plan completed, exit 124 for the phase it killed.
    let mut st = phase(1, 2, vec![rec], false, limits());
    let v = st.verdict(
        &Ending::Leader(JobStatus::Exited(0)),
        Some(JobStatus::Exited(0)),
        &[],
    );
    let mut acts = Vec::new();
    let c = st.conclude(&v, s(3.0), &mut acts);
    assert!(c.ended);
    assert_eq!((c.overall, c.code), (RecordState::Completed, 124));
    assert_eq!(
        c.detail,
        "1 of 2 phases completed; p1 killed at its usd cap"
    );
    assert_eq!(
        c.plan_line.as_deref(),
        Some("plan completed: 1 of 2 phases completed; p1 killed at its usd cap; exit status 124")
    );
    let evs: Vec<_> = acts
        .iter()
        .filter_map(|a| match a {
            Action::Emit(e) => Some((e.kind, e.message.clone(), e.id.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(evs.len(), 2, "{evs:?}");
    assert_eq!(evs[0].0, EventKind::PhaseCompleted);
    assert_eq!(evs[1].0, EventKind::Completed);
    assert_eq!(
        evs[1].1,
        "plan: 1 of 2 phases completed; p1 killed at its usd cap"
    );
    // The ids go on in order from the seeded sequence.
    assert_eq!((evs[0].2.as_str(), evs[1].2.as_str()), ("r-0001", "r-0002"));
}

#[test]
fn a_killed_phase_with_on_kill_abort_ends_the_plan_failed_at_that_phase() {
    let lim = Limits {
        max_wall: Some(s(2.0)),
        ..limits()
    };
    let mut st = phase(0, 3, Vec::new(), true, lim);
    let acts = run_until(&mut st, s(60.0));
    let Some(Action::End(end)) = acts.last() else {
        panic!("{acts:?}")
    };
    let v = st.verdict(end, Some(JobStatus::Signaled(15)), &[]);
    let mut acts = Vec::new();
    let c = st.conclude(&v, s(2.0), &mut acts);
    assert!(c.ended);
    assert_eq!((c.overall, c.code), (RecordState::Killed, 124));
    assert_eq!(
        c.detail,
        "0 of 3 phases completed; p1 killed at its wall cap; 2 not run"
    );
    let Some(Action::Emit(last)) = acts.iter().rev().find(|a| matches!(a, Action::Emit(_))) else {
        panic!("{acts:?}")
    };
    assert_eq!(
        (last.kind, last.reason.as_deref()),
        (EventKind::Failed, Some("killed"))
    );
    assert!(
        last.message
            .starts_with("plan ended at phase 1/3 p1: killed: wall"),
        "{}",
        last.message
    );
}

#[test]
fn a_completed_phase_goes_on_unless_the_runs_own_ceiling_is_reached() {
    let done = || Ending::Leader(JobStatus::Exited(0));
    let mut st = phase(0, 2, Vec::new(), false, limits());
    let v = st.verdict(&done(), Some(JobStatus::Exited(0)), &[]);
    let c = st.conclude(&v, s(1.0), &mut Vec::new());
    assert!(!c.ended && c.overall == RecordState::Running, "{c:?}");
    // $3600/h: the run's own $100 is spent at 100 s; the plan ends there, failed.
    let mut st = phase(0, 2, Vec::new(), false, limits());
    assert!(!st.run_cap_hit(s(99.0)));
    assert!(st.run_cap_hit(s(100.0)));
    let c = st.conclude(&v, s(100.0), &mut Vec::new());
    assert!(c.ended, "{c:?}");
    assert_eq!((c.overall, c.code), (RecordState::Failed, 0));
}

#[test]
fn a_single_run_ends_with_its_event_and_a_kill_adds_none() {
    let mut st = unpriced(limits(), TargetKind::Job);
    let v = st.verdict(
        &Ending::Leader(JobStatus::Exited(2)),
        Some(JobStatus::Exited(2)),
        &[],
    );
    let mut acts = Vec::new();
    let c = st.conclude(&v, s(1.0), &mut acts);
    assert!(c.ended && c.phase.is_none() && c.plan_line.is_none());
    assert_eq!((c.overall, c.code), (RecordState::Failed, 2));
    assert_eq!(events(&acts), vec![(EventKind::Failed, None)]);
    // The killed event is the kill's own: the conclusion adds no second one.
    let mut st = unpriced(limits(), TargetKind::Job);
    let v = st.verdict(&kill(KillReason::Wall, "wall"), None, &[]);
    let mut acts = Vec::new();
    let c = st.conclude(&v, s(1.0), &mut acts);
    assert_eq!((c.overall, c.code), (RecordState::Killed, 124));
    assert!(events(&acts).is_empty(), "{acts:?}");
}

/// An agent over its 2 s wall ceiling with no GPU process to kill: armed.
fn armed_agent() -> (RunState, Vec<Action>) {
    let lim = Limits {
        max_wall: Some(s(2.0)),
        ..limits()
    };
    let mut st = state(lim, fixed(3600.0), Carried::default(), TargetKind::Agent);
    let mut none = sample(&st, s(1.0), 50.0, None, None);
    none.pids.clear();
    st.handle(LoopEvent::Sample(none), s(1.0));
    let acts = run_until(&mut st, s(10.0));
    (st, acts)
}

#[test]
fn an_agent_at_a_ceiling_with_no_target_is_armed_and_keeps_metering() {
    let (mut st, acts) = armed_agent();
    assert!(
        !acts.iter().any(|a| matches!(a, Action::End(_))),
        "no kill claimed with nothing to kill: {acts:?}"
    );
    let alert = acts.iter().find_map(|a| match a {
        Action::Alert(t) => Some(t.clone()),
        _ => None,
    });
    let alert = alert.expect("the arming is said");
    assert!(alert.starts_with("over budget, no targets"), "{alert}");
    assert_eq!(
        st.snapshot(s(5.0)).waiting_on,
        alert,
        "/status and the ledger say it"
    );
    // The loop goes on: the spend counters and the record stay current while armed.
    let mut recorded = 0;
    for i in 1..=10 {
        let acts = st.handle(LoopEvent::Tick, s(2.0 + 0.5 * f64::from(i)));
        assert!(acts.contains(&Action::Meters), "{acts:?}");
        recorded += acts.iter().filter(|a| **a == Action::Record).count();
    }
    assert!(recorded >= 2, "the ledger is written while armed");
    assert!(st.snapshot(s(7.0)).spend > st.snapshot(s(2.0)).spend + 4.9);
    // A fleet total at its budget or --exit-when-done does not end it: the kill is armed.
    let acts = st.handle(LoopEvent::TargetsEnded, s(7.0));
    assert!(
        !acts.iter().any(|a| matches!(a, Action::End(_))),
        "{acts:?}"
    );
}

#[test]
fn an_armed_agent_kills_the_first_target_with_the_kill_it_holds() {
    let (mut st, _) = armed_agent();
    let acts = st.handle(LoopEvent::NewTarget(42, "python train.py".into()), s(8.0));
    assert_eq!(
        events(&acts),
        vec![(EventKind::Started, Some("target".into()))]
    );
    assert!(!acts.iter().any(|a| matches!(a, Action::End(_))));
    let one = sample(&st, s(8.0), 50.0, None, None);
    let acts = st.handle(LoopEvent::Sample(one), s(8.0));
    let end = acts.iter().find_map(|a| match a {
        Action::End(e) => Some(e.clone()),
        _ => None,
    });
    let Some(Ending::Kill { reason, .. }) = end else {
        panic!("the armed kill: {acts:?}")
    };
    assert_eq!(reason, KillReason::Wall);
    let v = st.verdict(&end.expect("end"), None, &[42]);
    assert_eq!((v.code, v.outcome), (124, Outcome::Killed));
}

#[test]
fn an_armed_agent_stopped_by_a_signal_is_stopped_never_completed() {
    let (mut st, _) = armed_agent();
    let acts = st.handle(LoopEvent::Signal(Signal::SIGTERM), s(9.0));
    let Some(Action::End(end)) = acts.first() else {
        panic!("{acts:?}")
    };
    assert!(matches!(end, Ending::Disarmed { .. }), "{end:?}");
    let v = st.verdict(end, None, &[]);
    assert_eq!((v.code, v.outcome), (143, Outcome::Stopped));
    assert!(
        v.detail
            .starts_with("stopped by SIGTERM while over budget with no GPU process to kill (wall"),
        "{}",
        v.detail
    );
    // The same signal without arming is the agent's ordinary stop.
    let mut st = unpriced(limits(), TargetKind::Agent);
    let acts = st.handle(LoopEvent::Signal(Signal::SIGTERM), s(1.0));
    assert!(
        matches!(acts.first(), Some(Action::End(Ending::Stop(_)))),
        "{acts:?}"
    );
}

#[test]
fn an_agent_with_a_target_at_the_ceiling_kills_at_once() {
    let lim = Limits {
        max_wall: Some(s(2.0)),
        ..limits()
    };
    let mut st = state(lim, fixed(3600.0), Carried::default(), TargetKind::Agent);
    let one = sample(&st, s(1.0), 50.0, None, None);
    st.handle(LoopEvent::Sample(one), s(1.0));
    let acts = run_until(&mut st, s(10.0));
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::End(Ending::Kill { .. }))),
        "{acts:?}"
    );
    assert!(st.armed_text().is_none());
}

#[test]
fn steps_too_quick_for_the_poll_are_on_record_as_what_the_phase_says_they_did() {
    let steps = |seen: Option<usize>| {
        let base = state(limits(), fixed(3600.0), Carried::default(), TargetKind::Job);
        let mut st = RunState::new(Init {
            phase: Some(PhaseInfo {
                step_key: Some("seed".into()),
                step_values: vec!["1".into(), "2".into(), "3".into()],
                step: seen.map(|n| (n, s(1.0))),
                ..phase_info("p1", 0, 1)
            }),
            ..init_of(&base)
        });
        st.set_rules(EndRules {
            plan: Some(PlanRules {
                total: 1,
                last: true,
                ..PlanRules::default()
            }),
            ..EndRules::default()
        });
        st
    };
    let outcomes = |st: &mut RunState, leader: JobStatus| {
        let v = st.verdict(&Ending::Leader(leader), Some(leader), &[]);
        let c = st.conclude(&v, s(2.0), &mut Vec::new());
        let rec = c.phase.expect("the phase on record");
        rec.steps
            .iter()
            .map(|r| r.outcome.clone())
            .collect::<Vec<_>>()
    };
    // The poll saw only seed 1 start; the phase completed: every seed ran.
    let mut st = steps(Some(1));
    assert_eq!(
        outcomes(&mut st, JobStatus::Exited(0)),
        ["completed", "completed", "completed"]
    );
    // It saw seed 3 start and the phase failed there: seeds 1 and 2 ran before it.
    let mut st = steps(Some(3));
    assert_eq!(
        outcomes(&mut st, JobStatus::Exited(1)),
        ["completed", "completed", "failed"]
    );
    // It saw seed 1 and the phase failed: the later seeds never ran.
    let mut st = steps(Some(1));
    assert_eq!(
        outcomes(&mut st, JobStatus::Exited(1)),
        ["failed", "not run", "not run"]
    );
}
