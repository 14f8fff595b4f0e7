//! The session's ending driven on simulated time through `RunState::handle`: each effect's
//! result goes back as a `Done`, and the state answers with the next effects — the kill
//! that escalates, the holder lost, a stop from outside, the armed agent stopped, a plan
//! phase killed at its cap, a completed run with its release.

use std::time::Duration;

use nix::sys::signal::Signal;

use super::action::{Action, Done, LoopEvent};
use super::state::{Carried, EndRules, Init, PlanRules, ReleaseRules, RunState, Stage, TargetKind};
use super::state_tests::{
    fixed, init_of, limits, phase_info, run_until, s, sample, state, unpriced,
};
use crate::cloud::release::On;
use crate::events::{Event, EventKind};
use crate::exit::JobStatus;
use crate::ledger::{Ledger, RecordState};
use crate::policy::Limits;
use crate::supervise::kill::KillReport;

/// An action in short: `emit:killed/wall`, `alert`, `Kill`, `Exit`.
fn name(a: &Action) -> String {
    match a {
        Action::Emit(e) => format!(
            "emit:{}/{}",
            e.kind.as_str(),
            e.reason.as_deref().unwrap_or("-")
        ),
        Action::Alert(_) => "alert".into(),
        Action::Say(_) => "say".into(),
        other => {
            let d = format!("{other:?}");
            d.split(['(', ' ', '{'])
                .next()
                .unwrap_or_default()
                .to_string()
        }
    }
}

fn names(acts: &[Action]) -> Vec<String> {
    acts.iter().map(name).collect()
}

fn alerts(acts: &[Action]) -> Vec<String> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Alert(t) | Action::Say(t) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

fn emitted(acts: &[Action]) -> Vec<Event> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Emit(e) => Some(e.as_ref().clone()),
            _ => None,
        })
        .collect()
}

fn done(st: &mut RunState, d: Done, at: f64) -> Vec<Action> {
    st.handle(LoopEvent::Done(d), s(at))
}

fn rules(release: Option<On>, linger: Option<Duration>) -> EndRules {
    EndRules {
        grace: s(10.0),
        program: Some("\"train\"".into()),
        release: release.map(|on| ReleaseRules {
            on,
            describe: "aws StopInstances i-1".into(),
        }),
        linger,
        ..EndRules::default()
    }
}

fn closed_ledger() -> Done {
    Done::RecordClosed(Some(Box::new(Ledger {
        report_path: Some("/runs/r/report.md".into()),
        ..Ledger::default()
    })))
}

#[test]
fn a_completed_run_concludes_records_flushes_and_releases_the_box() {
    let mut st = unpriced(limits(), TargetKind::Job);
    st.set_rules(rules(Some(On::End), None));
    let a = st.handle(LoopEvent::LeaderEnded(JobStatus::Exited(0)), s(1.0));
    assert!(matches!(st.stage(), Stage::Settling), "{a:?}");
    assert_eq!(
        names(&done(&mut st, Done::LoopStopped, 1.0)),
        ["FinishLeftovers"]
    );
    assert_eq!(names(&done(&mut st, Done::Leftovers, 1.1)), ["CloseTarget"]);
    let a = done(&mut st, Done::TargetClosed(Some("loss 0.1".into())), 1.2);
    assert_eq!(
        names(&a),
        [
            "StopSources",
            "alert",
            "emit:completed/-",
            "Publish",
            "CloseRecord"
        ]
    );
    assert!(alerts(&a)[0].starts_with("completed: exit status 0; ran 1.200s, spend unknown"));
    assert!(
        !alerts(&a).iter().any(|l| l.starts_with("last output")),
        "a completed run shows no last line"
    );
    assert!(matches!(
        a.last(),
        Some(Action::CloseRecord {
            state: RecordState::Completed,
            code: 0,
            ..
        })
    ));
    let a = done(&mut st, closed_ledger(), 1.3);
    assert_eq!(names(&a), ["PublishEnd", "alert", "Flush"]);
    assert_eq!(alerts(&a), ["report: /runs/r/report.md"]);
    assert_eq!(names(&done(&mut st, Done::Flushed, 1.4)), ["Release"]);
    assert!(matches!(st.stage(), Stage::Releasing));
    let a = done(
        &mut st,
        Done::Released(Some((Ok("stopped".into()), 1))),
        2.0,
    );
    assert!(
        matches!(&a[..], [Action::RecordRelease { failed: None, .. }]),
        "a success makes no event: {a:?}"
    );
    let a = done(&mut st, Done::ReleaseRecorded, 2.1);
    assert_eq!(
        a,
        [
            Action::MarkEnded,
            Action::Exit {
                code: 0,
                ended: true
            }
        ]
    );
    assert!(matches!(st.stage(), Stage::Over));
}

#[test]
fn a_failed_release_is_an_event_of_the_run_with_the_next_id() {
    let mut st = unpriced(limits(), TargetKind::Job);
    st.set_rules(rules(Some(On::End), None));
    st.handle(LoopEvent::LeaderEnded(JobStatus::Exited(0)), s(1.0));
    for d in [Done::LoopStopped, Done::Leftovers, Done::TargetClosed(None)] {
        done(&mut st, d, 1.0);
    }
    done(&mut st, closed_ledger(), 1.0);
    done(&mut st, Done::Flushed, 1.0);
    let a = done(
        &mut st,
        Done::Released(Some((Err("denied".into()), 3))),
        9.0,
    );
    let Some(Action::RecordRelease {
        failed: Some(ev), ..
    }) = a.first()
    else {
        panic!("{a:?}")
    };
    assert_eq!(
        (ev.kind, ev.reason.as_deref()),
        (EventKind::AgentError, Some("release"))
    );
    // r-0008 was `completed`; the seeded sequence (7) goes on.
    assert_eq!(ev.id, "r-0009");
    assert!(
        ev.message
            .contains("NOT released after 3 attempts (denied)"),
        "{}",
        ev.message
    );
}

#[test]
fn a_kill_that_escalates_to_kill_is_said_and_the_gpu_check_follows_a_ceiling() {
    let lim = Limits {
        max_wall: Some(s(5.0)),
        ..limits()
    };
    let mut st = state(lim, fixed(3600.0), Carried::default(), TargetKind::Job);
    st.set_rules(rules(Some(On::Kill), Some(s(30.0))));
    let a = run_until(&mut st, s(60.0));
    assert!(a.iter().any(|a| matches!(a, Action::End(_))), "{a:?}");
    assert_eq!(
        names(&done(&mut st, Done::LoopStopped, 5.0)),
        ["FindOutside"]
    );
    let a = done(&mut st, Done::OutsideLeaf(vec!["pid 9 (x)".into()]), 5.0);
    assert_eq!(
        names(&a),
        ["emit:killed/wall", "Publish", "RecordKill", "Kill"]
    );
    let killed = &emitted(&a)[0];
    assert!(
        killed.message.contains("; outside costguard's cgroup: pid 9 (x); then the box is released: aws StopInstances i-1"),
        "{}",
        killed.message
    );
    assert!(matches!(st.stage(), Stage::Killing));
    let report = KillReport {
        escalated: true,
        took: s(10.0),
        pids: vec![5, 9, 11],
        escaped: vec![9, 11],
        ..KillReport::default()
    };
    let a = done(&mut st, Done::Killed(report), 15.0);
    assert_eq!(
        names(&a),
        [
            "alert",
            "emit:agent-error/escaped",
            "Publish",
            "CloseTarget"
        ]
    );
    assert_eq!(
        alerts(&a)[0],
        "the job did not end within 10.000s of SIGTERM: killed with SIGKILL"
    );
    assert!(
        emitted(&a)[0].message.ends_with("[11]"),
        "pid 9 was named already"
    );
    let a = done(&mut st, Done::TargetClosed(Some("epoch 3".into())), 15.0);
    assert_eq!(names(&a), ["AwaitLeader"]);
    let a = done(&mut st, Done::Leader(Some(JobStatus::Signaled(9))), 15.0);
    assert_eq!(names(&a), ["StopSources", "CheckGpuFreed"]);
    let held = vec!["after the kill, pid 5 still holds 1.0 GiB on GPU 0".to_string()];
    let a = done(&mut st, Done::GpuHeld(held), 16.0);
    assert_eq!(
        names(&a),
        [
            "emit:agent-error/gpu-not-freed",
            "Publish",
            "say",
            "alert",
            "CloseRecord"
        ]
    );
    assert_eq!(alerts(&a)[0], "last output: epoch 3");
    assert!(
        alerts(&a)[1].starts_with("killed: wall"),
        "{:?}",
        alerts(&a)
    );
    done(&mut st, closed_ledger(), 16.0);
    assert_eq!(names(&done(&mut st, Done::Flushed, 16.0)), ["Release"]);
    let a = done(&mut st, Done::Released(None), 16.0);
    assert_eq!(a, [Action::MarkEnded, Action::Linger(s(30.0))]);
    assert!(matches!(st.stage(), Stage::Lingering));
    let a = done(&mut st, Done::Lingered, 46.0);
    assert_eq!(
        a,
        [Action::Exit {
            code: 124,
            ended: true
        }]
    );
}

#[test]
fn a_lost_holder_ends_what_is_left_and_the_run_is_stopped_with_125() {
    let mut st = unpriced(limits(), TargetKind::Job);
    st.set_rules(rules(Some(On::End), None));
    st.handle(LoopEvent::HolderLost, s(3.0));
    let a = done(&mut st, Done::LoopStopped, 3.0);
    assert_eq!(names(&a), ["alert", "KillLost"]);
    let report = KillReport {
        pids: vec![5, 6],
        survivors: vec![6],
        ..KillReport::default()
    };
    let a = done(&mut st, Done::Killed(report), 4.0);
    assert_eq!(
        names(&a),
        ["emit:agent-error/holder-lost", "Publish", "CloseTarget"]
    );
    assert_eq!(
        emitted(&a)[0].message,
        "the holder process was lost; the kill protocol ended 2 processes of the job [5, 6]; survivors [6]"
    );
    assert_eq!(
        names(&done(&mut st, Done::TargetClosed(None), 4.0)),
        ["AwaitLeader"]
    );
    let a = done(&mut st, Done::Leader(None), 6.0);
    assert_eq!(names(&a), ["StopSources", "alert", "CloseRecord"]);
    assert!(matches!(
        a.last(),
        Some(Action::CloseRecord {
            state: RecordState::Stopped,
            code: 125,
            ..
        })
    ));
    // The record could not be written: no report is claimed.
    let a = done(&mut st, Done::RecordClosed(None), 6.0);
    assert_eq!(names(&a), ["PublishEnd", "Flush"]);
    // A stop is not released (--release-on end: every ending but a stop by a person).
    let a = done(&mut st, Done::Flushed, 6.0);
    assert_eq!(
        a,
        [
            Action::MarkEnded,
            Action::Exit {
                code: 125,
                ended: true
            }
        ]
    );
}

#[test]
fn a_leader_killed_from_outside_with_costguard_is_a_stop_and_alone_is_its_own_status() {
    let together = |sig: Option<Signal>| {
        let mut st = unpriced(limits(), TargetKind::Job);
        st.set_rules(rules(None, None));
        st.handle(LoopEvent::LeaderEnded(JobStatus::Signaled(15)), s(1.0));
        let a = done(&mut st, Done::LoopStopped, 1.0);
        assert_eq!(a, [Action::AwaitStop(super::state::STOPPED_TOGETHER)]);
        (done(&mut st, Done::StopSignal(sig), 1.2), st)
    };
    let (a, mut st) = together(Some(Signal::SIGTERM));
    assert_eq!(names(&a), ["FindOutside"]);
    let a = done(&mut st, Done::OutsideLeaf(Vec::new()), 1.2);
    assert_eq!(
        names(&a),
        [
            "emit:killed/signal",
            "Publish",
            "RecordKill",
            "alert",
            "Kill"
        ]
    );
    assert!(emitted(&a)[0]
        .message
        .contains("costguard and the job both received SIGTERM"));
    assert!(alerts(&a)[0].starts_with("waiting up to 10.000s for the job to end after SIGTERM"));
    let (a, _) = together(None);
    assert_eq!(names(&a), ["FinishLeftovers"]);
}

#[test]
fn an_armed_agent_stopped_by_a_signal_concludes_stopped_with_its_signals_code() {
    let lim = Limits {
        max_wall: Some(s(2.0)),
        ..limits()
    };
    let mut st = state(lim, fixed(3600.0), Carried::default(), TargetKind::Agent);
    st.set_rules(rules(Some(On::End), None));
    let mut none = sample(&st, s(1.0), 50.0, None, None);
    none.pids.clear();
    st.handle(LoopEvent::Sample(none), s(1.0));
    run_until(&mut st, s(10.0));
    assert!(matches!(st.stage(), Stage::Armed(_)));
    // Still metering while armed.
    assert!(st
        .handle(LoopEvent::Tick, s(11.0))
        .contains(&Action::Meters));
    st.handle(LoopEvent::Signal(Signal::SIGTERM), s(12.0));
    assert!(matches!(st.stage(), Stage::Settling));
    assert_eq!(
        names(&done(&mut st, Done::LoopStopped, 12.0)),
        ["CloseTarget"]
    );
    let a = done(&mut st, Done::TargetClosed(None), 12.0);
    assert_eq!(names(&a), ["StopSources", "alert", "CloseRecord"]);
    assert!(
        alerts(&a)[0].starts_with(
            "agent stopped: stopped by SIGTERM while over budget with no GPU process to kill"
        ),
        "{:?}",
        alerts(&a)
    );
    assert!(
        alerts(&a)[0].ends_with("ran 12.000s, spent $12.00"),
        "{:?}",
        alerts(&a)
    );
    done(&mut st, closed_ledger(), 12.0);
    let a = done(&mut st, Done::Flushed, 12.0);
    assert_eq!(
        a,
        [
            Action::MarkEnded,
            Action::Exit {
                code: 143,
                ended: true
            }
        ]
    );
}

/// Phase `index` of 2 with a $5 cap, the release on kill.
fn phase_of_two(index: usize, done: Vec<crate::ledger::PhaseRecord>) -> RunState {
    let lim = Limits {
        max_usd: Some(5.0),
        ..limits()
    };
    let base = state(lim, fixed(3600.0), Carried::default(), TargetKind::Job);
    let mut st = RunState::new(Init {
        phase: Some(phase_info(&format!("p{}", index + 1), index, 2)),
        ..init_of(&base)
    });
    st.set_rules(EndRules {
        plan: Some(PlanRules {
            total: 2,
            last: index == 1,
            abort_on_kill: false,
            expected: None,
            done,
        }),
        ..rules(Some(On::Kill), None)
    });
    st
}

#[test]
fn a_plan_phase_killed_at_its_cap_goes_on_and_the_last_phase_concludes_the_plan() {
    let mut st = phase_of_two(0, Vec::new());
    run_until(&mut st, s(60.0));
    done(&mut st, Done::LoopStopped, 5.0);
    let a = done(&mut st, Done::OutsideLeaf(Vec::new()), 5.0);
    assert!(
        !emitted(&a)[0].message.contains("released"),
        "a phase kill that goes on releases nothing: {}",
        emitted(&a)[0].message
    );
    done(&mut st, Done::Killed(KillReport::default()), 5.5);
    done(&mut st, Done::TargetClosed(None), 5.5);
    let a = done(&mut st, Done::Leader(Some(JobStatus::Signaled(15))), 5.5);
    assert_eq!(names(&a), ["StopSources", "CheckGpuFreed"]);
    let a = done(&mut st, Done::GpuHeld(Vec::new()), 5.5);
    assert_eq!(
        names(&a),
        [
            "alert",
            "RecordPhase",
            "emit:phase-completed/usd",
            "Publish",
            "say",
            "CloseRecord"
        ]
    );
    let Some(Action::RecordPhase(rec)) = a.iter().find(|a| matches!(a, Action::RecordPhase(_)))
    else {
        panic!("{a:?}")
    };
    assert!(matches!(
        a.last(),
        Some(Action::CloseRecord {
            state: RecordState::Running,
            code: 124,
            ..
        })
    ));
    assert_eq!(names(&done(&mut st, closed_ledger(), 5.5)), ["Flush"]);
    let a = done(&mut st, Done::Flushed, 5.6);
    assert_eq!(
        a,
        [Action::Exit {
            code: 124,
            ended: false
        }],
        "no release, no end mark"
    );
    // The next phase completes: the plan concludes completed, exit 124, and its last word.
    let mut st = phase_of_two(1, vec![rec.as_ref().clone()]);
    st.handle(LoopEvent::LeaderEnded(JobStatus::Exited(0)), s(2.0));
    for d in [Done::LoopStopped, Done::Leftovers] {
        done(&mut st, d, 2.0);
    }
    let a = done(&mut st, Done::TargetClosed(None), 2.0);
    assert_eq!(
        names(&a),
        [
            "StopSources",
            "alert",
            "RecordPhase",
            "emit:phase-completed/completed",
            "Publish",
            "emit:completed/-",
            "Publish",
            "CloseRecord"
        ]
    );
    let a = done(&mut st, closed_ledger(), 2.0);
    assert_eq!(
        alerts(&a),
        [
            "plan completed: 1 of 2 phases completed; p1 killed at its usd cap; exit status 124",
            "report: /runs/r/report.md"
        ]
    );
    // Completed, with --release-on kill: the box stays.
    let a = done(&mut st, Done::Flushed, 2.0);
    assert_eq!(
        a,
        [
            Action::MarkEnded,
            Action::Exit {
                code: 124,
                ended: true
            }
        ]
    );
}

#[test]
fn a_plan_phase_ended_by_a_kill_the_policy_never_saw_records_that_kill_as_its_reason() {
    let mut st = phase_of_two(0, Vec::new());
    st.handle(LoopEvent::Signal(Signal::SIGTERM), s(1.0));
    let mut acts = done(&mut st, Done::LoopStopped, 1.0);
    for d in [
        Done::OutsideLeaf(Vec::new()),
        Done::Killed(KillReport::default()),
        Done::TargetClosed(None),
        Done::Leader(Some(JobStatus::Signaled(15))),
        Done::GpuHeld(Vec::new()),
    ] {
        if acts.iter().any(|a| matches!(a, Action::RecordPhase(_))) {
            break;
        }
        acts = done(&mut st, d, 1.5);
    }
    let Some(Action::RecordPhase(rec)) = acts.iter().find(|a| matches!(a, Action::RecordPhase(_)))
    else {
        panic!("no phase on record: {acts:?}")
    };
    assert_eq!(rec.reason.as_deref(), Some("signal"), "{rec:?}");
}
