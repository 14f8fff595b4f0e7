//! `RunState` on simulated time: the loop's decisions without a process, a socket or a disk.

use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;

use super::action::{Action, Ending, LoopEvent};
use super::sampler::SampleMsg;
use super::start::Pricing;
use super::state::{Carried, FleetView, Identity, Init, PhaseInfo, RunState, TargetKind};
use crate::events::{EventKind, KillReason};
use crate::fleet::FleetMsg;
use crate::policy::{Engine, Limits, WarnReason};
use crate::spend::SpendMeter;
use crate::telemetry::{GpuSample, HostSample};

pub(super) fn s(x: f64) -> Duration {
    Duration::from_secs_f64(x)
}

pub(super) fn limits() -> Limits {
    Limits {
        idle_below: 5.0,
        stale_after: s(3.0),
        ..Limits::default()
    }
}

pub(super) fn state(
    limits: Limits,
    pricing: Pricing,
    carried: Carried,
    kind: TargetKind,
) -> RunState {
    let rate = match &pricing {
        Pricing::Fixed { per_hour, .. } => *per_hour,
        _ => 0.0,
    };
    RunState::new(Init {
        t0: Instant::now(),
        id: Identity {
            run_id: "r".into(),
            host: "h".into(),
            command_line: "train".into(),
            started_wall: SystemTime::UNIX_EPOCH,
            run_dir: None,
            notify_channels: Vec::new(),
            page_url: None,
        },
        kind,
        engine: Engine::new(limits, SpendMeter::new(carried.spend, rate)),
        pricing,
        visible: vec![0],
        carried,
        seq: 7,
        phase: None,
        fleet: None,
        warn_signal: None,
        record_grace: Some(Duration::from_secs(60)),
        tracks_progress: true,
        whole_gpus: true,
        exit_when_done: false,
        idle_box: None,
    })
}

/// A fresh run with no price and nothing carried over.
pub(super) fn unpriced(limits: Limits, kind: TargetKind) -> RunState {
    state(limits, Pricing::Unknown, Carried::default(), kind)
}

pub(super) fn fixed(per_hour: f64) -> Pricing {
    Pricing::Fixed {
        per_hour,
        source: "test".into(),
        origin: super::start::RateOrigin::Flag,
    }
}

/// Runs the state's own deadlines up to `until`, collecting every action.
pub(super) fn run_until(st: &mut RunState, until: Duration) -> Vec<Action> {
    let mut out = Vec::new();
    while let Some(t) = st.next_wakeup(Duration::ZERO).filter(|t| *t <= until) {
        let acts = st.handle(LoopEvent::Deadline, t);
        let end = acts.iter().any(|a| matches!(a, Action::End(_)));
        out.extend(acts);
        if end {
            break;
        }
    }
    out
}

pub(super) fn kill_of(acts: &[Action]) -> Option<(KillReason, String)> {
    acts.iter().find_map(|a| match a {
        Action::End(Ending::Kill {
            reason, evidence, ..
        }) => Some((*reason, evidence.clone())),
        _ => None,
    })
}

pub(super) fn events(acts: &[Action]) -> Vec<(EventKind, Option<String>)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Emit(e) => Some((e.kind, e.reason.clone())),
            _ => None,
        })
        .collect()
}

pub(super) fn sample(
    st: &RunState,
    at: Duration,
    util: f64,
    watts: Option<f64>,
    joules: Option<f64>,
) -> SampleMsg {
    SampleMsg {
        at: st.t0() + at,
        wall: SystemTime::UNIX_EPOCH + at,
        gpus: Some(Ok(vec![GpuSample {
            index: 0,
            util_gpu_pct: Some(util),
            power_watts: watts,
            energy_joules: joules,
            procs: Some(Vec::new()),
            ..GpuSample::default()
        }])),
        host: HostSample::default(),
        pids: vec![42],
        holders: Vec::new(),
        gpu_processes: 0,
        logged_in: false,
    }
}

#[test]
fn resume_carries_spend_into_the_dollar_deadline_and_skips_passed_warnings() {
    // $3 of a $4 budget already spent; $3600/h is $1 a second: the kill comes at 1 s, and
    // the 50 % warning (at $2) is not repeated.
    let lim = Limits {
        max_usd: Some(4.0),
        warn_at: vec![0.5, 0.9],
        ..limits()
    };
    let carried = Carried {
        spend: 3.0,
        wasted: 0.5,
        elapsed: 100.0,
    };
    let mut st = state(lim, fixed(3600.0), carried, TargetKind::Job);
    let acts = run_until(&mut st, s(10.0));
    let warned: Vec<_> = events(&acts);
    assert_eq!(
        warned,
        vec![(EventKind::Warning, Some("budget".to_string()))],
        "only the 90 % warning: {acts:?}"
    );
    let (reason, evidence) = kill_of(&acts).expect("a kill");
    assert_eq!(reason, KillReason::Usd);
    assert!(evidence.contains("$4.00"), "{evidence}");
    let t = st.engine().usd_deadline(Duration::ZERO).expect("deadline");
    assert!((t.as_secs_f64() - 1.0).abs() < 1e-6, "{t:?}");
    // The event ids go on from the resumed run's count.
    let Action::Emit(e) = &acts[0] else { panic!() };
    assert_eq!(e.id, "r-0008");
}

#[test]
fn warnings_come_in_budget_order_before_the_checkpoint_signal_and_the_kill() {
    let lim = Limits {
        max_usd: Some(10.0),
        warn_at: vec![0.5, 0.8],
        warn_before: Some(s(1.0)),
        ..limits()
    };
    let mut st = state(lim, fixed(3600.0), Carried::default(), TargetKind::Job);
    let acts = run_until(&mut st, s(20.0));
    let order: Vec<String> = acts
        .iter()
        .filter_map(|a| match a {
            Action::Emit(e) => Some(format!(
                "{}@{:.0}",
                e.reason.clone().unwrap_or_default(),
                e.elapsed_seconds
            )),
            Action::End(Ending::Kill { reason, .. }) => Some(format!("kill:{}", reason.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(
        order,
        vec!["budget@5", "budget@8", "checkpoint@9", "kill:usd"],
        "{acts:?}"
    );
}

#[test]
fn the_warning_signal_is_an_action_in_both_modes() {
    for kind in [TargetKind::Job, TargetKind::Agent] {
        let lim = Limits {
            max_wall: Some(s(10.0)),
            warn_before: Some(s(2.0)),
            ..limits()
        };
        let mut st = state(lim, Pricing::Unknown, Carried::default(), kind);
        st = RunState::new(Init {
            warn_signal: Some(Signal::SIGUSR1),
            ..init_of(&st)
        });
        let acts = run_until(&mut st, s(9.0));
        assert!(
            acts.iter().any(|a| matches!(
                a,
                Action::WarnSignal {
                    signal: Signal::SIGUSR1,
                    reason: WarnReason::Checkpoint,
                    ..
                }
            )),
            "{kind:?}: {acts:?}"
        );
    }
}

#[test]
fn the_fleet_total_at_the_budget_kills_and_an_unreachable_fleet_warns_once() {
    let mut st = with_fleet(TargetKind::Agent, 100.0, "q at http://p");
    // A target to kill (an agent with none is armed instead: ending_tests.rs).
    let one = sample(&st, s(0.5), 50.0, None, None);
    st.handle(LoopEvent::Sample(one), s(0.5));
    let a = st.handle(LoopEvent::Fleet(FleetMsg::Error("refused".into())), s(1.0));
    assert_eq!(
        events(&a),
        vec![(EventKind::AgentError, Some("fleet-unreachable".into()))]
    );
    let a = st.handle(LoopEvent::Fleet(FleetMsg::Error("refused".into())), s(2.0));
    assert!(events(&a).is_empty(), "once: {a:?}");
    let a = st.handle(LoopEvent::Fleet(FleetMsg::Total(99.0)), s(3.0));
    assert!(kill_of(&a).is_none());
    assert!(a.contains(&Action::Say("fleet budget readable again".into())));
    let a = st.handle(LoopEvent::Fleet(FleetMsg::Total(100.5)), s(4.0));
    let (reason, evidence) = kill_of(&a).expect("fleet kill");
    assert_eq!(reason, KillReason::Fleet);
    assert!(evidence.contains("$100.50 of $100.00"), "{evidence}");
}

/// A run at $1/h with a fleet budget of `max_usd`.
fn with_fleet(kind: TargetKind, max_usd: f64, source: &str) -> RunState {
    let st = state(limits(), fixed(1.0), Carried::default(), kind);
    RunState::new(Init {
        fleet: Some(FleetView {
            max_usd,
            source: source.into(),
            total: None,
            error: None,
        }),
        ..init_of(&st)
    })
}

/// Phase `index` of `total`, named `name`, without steps or expectations.
pub(super) fn phase_info(name: &str, index: usize, total: usize) -> PhaseInfo {
    PhaseInfo {
        name: name.into(),
        index,
        total,
        expected: None,
        step_key: None,
        step_values: Vec::new(),
        step: None,
        step_times: Vec::new(),
    }
}

pub(super) fn init_of(st: &RunState) -> Init {
    Init {
        t0: st.t0(),
        id: st.id().clone(),
        kind: st.kind(),
        engine: st.engine().clone(),
        pricing: st.pricing().clone(),
        visible: vec![0],
        carried: st.carried(),
        seq: 0,
        phase: None,
        fleet: None,
        warn_signal: None,
        record_grace: Some(Duration::from_secs(60)),
        tracks_progress: true,
        whole_gpus: true,
        exit_when_done: false,
        idle_box: None,
    }
}

#[test]
fn a_phase_cap_kills_at_the_phase_wall_and_events_name_the_phase() {
    use clap::Parser;
    let cli = crate::cli::Cli::try_parse_from([
        "costguard",
        "--max-wall",
        "1h",
        "--usd-per-hour",
        "3600",
        "--max-usd",
        "100",
    ])
    .expect("args");
    let mut settings = crate::config::Settings::resolve(&cli.guard).expect("settings");
    settings.phase = Some(crate::config::PhaseCtx {
        name: "train".into(),
        index: 1,
        total: 3,
        expected: None,
        max_wall: Some(s(30.0)),
        max_usd: Some(5.0),
        abort_on_kill: false,
        last: false,
        expected_after: None,
        continues: false,
        step_key: None,
        step_values: Vec::new(),
        step_file: None,
    });
    // 10 s and $20 carried from the first phase: the phase's own $5 counts from $20.
    let lim = super::session::limits_of(&settings, 10.0, 20.0);
    assert_eq!(lim.max_wall, Some(s(30.0)));
    assert_eq!(lim.max_usd, Some(25.0));
    let carried = Carried {
        spend: 20.0,
        wasted: 0.0,
        elapsed: 10.0,
    };
    let mut st = state(lim, fixed(3600.0), carried, TargetKind::Job);
    st = RunState::new(Init {
        phase: Some(phase_info("train", 1, 3)),
        ..init_of(&st)
    });
    let acts = run_until(&mut st, s(60.0));
    let (reason, _) = kill_of(&acts).expect("kill");
    assert_eq!(reason, KillReason::Usd, "$5 at $1/s comes before 30 s");
    let e = st.event(EventKind::Killed, Some("usd"), "x".into(), s(5.0));
    assert_eq!(e.phase.as_deref(), Some("train"));
}

#[test]
fn energy_pricing_follows_the_energy_counter_then_power() {
    // $1000 per kWh: 3600 W is $1 a second.
    let mut st = state(
        limits(),
        Pricing::Energy { per_kwh: 1000.0 },
        Carried::default(),
        TargetKind::Job,
    );
    st.handle(
        LoopEvent::Sample(sample(&st, s(1.0), 90.0, Some(100.0), Some(0.0))),
        s(1.0),
    );
    // The first sample has no earlier counter: power sets the rate (100 W = $100/h).
    assert!((st.engine().meter().rate() - 100.0).abs() < 1e-9);
    // 3600 J over one second is 3600 W, whatever the instantaneous power says.
    st.handle(
        LoopEvent::Sample(sample(&st, s(2.0), 90.0, Some(100.0), Some(3600.0))),
        s(2.0),
    );
    assert!((st.engine().meter().rate() - 3600.0).abs() < 1e-6);
    // Unknown power and energy keep the last rate.
    st.handle(
        LoopEvent::Sample(sample(&st, s(3.0), 90.0, None, None)),
        s(3.0),
    );
    assert!((st.engine().meter().rate() - 3600.0).abs() < 1e-6);
}

#[test]
fn idle_time_is_wasted_spend_and_the_idle_kill_follows() {
    let lim = Limits {
        idle: Some(s(10.0)),
        ..limits()
    };
    let mut st = state(lim, fixed(3600.0), Carried::default(), TargetKind::Job);
    let mut all = Vec::new();
    for i in 1..=20 {
        let t = s(f64::from(i));
        let util = if i <= 5 { 90.0 } else { 0.0 };
        all.extend(st.handle(LoopEvent::Sample(sample(&st, t, util, None, None)), t));
        all.extend(run_until(&mut st, t));
        if kill_of(&all).is_some() {
            break;
        }
    }
    let (reason, _) = kill_of(&all).expect("idle kill");
    assert_eq!(reason, KillReason::Idle);
    let now = st.engine().idle_for(s(15.0));
    assert!(now >= s(9.0), "{now:?}");
    // Idle since 6 s at $1/s: about $9 wasted by 15 s.
    let w = st.engine().wasted(s(15.0));
    assert!((8.0..=10.0).contains(&w), "{w}");
    assert!(st.longest_idle() >= 9.0);
}

#[test]
fn signals_end_a_wrapped_job_with_a_kill_and_an_agent_with_a_stop() {
    let mut job = unpriced(limits(), TargetKind::Job);
    let a = job.handle(LoopEvent::Signal(Signal::SIGINT), s(1.0));
    assert!(matches!(
        &a[..],
        [Action::End(Ending::Kill {
            reason: KillReason::Signal,
            first: Signal::SIGINT,
            ..
        })]
    ));
    // The loop is over after its ending: nothing more is forwarded.
    assert!(job
        .handle(LoopEvent::Forward(Signal::SIGUSR1), s(1.0))
        .is_empty());
    let mut job = unpriced(limits(), TargetKind::Job);
    let a = job.handle(LoopEvent::Forward(Signal::SIGUSR1), s(1.0));
    assert_eq!(a, vec![Action::Forward(Signal::SIGUSR1)]);
    let mut agent = unpriced(limits(), TargetKind::Agent);
    let a = agent.handle(LoopEvent::Signal(Signal::SIGTERM), s(1.0));
    assert!(matches!(&a[..], [Action::End(Ending::Stop(_))]), "{a:?}");
}

#[test]
fn a_failed_sample_is_unknown_once_and_the_return_is_said() {
    let mut st = unpriced(limits(), TargetKind::Job);
    let bad = |st: &RunState, t: f64| SampleMsg {
        at: st.t0() + s(t),
        wall: SystemTime::UNIX_EPOCH,
        gpus: Some(Err(crate::telemetry::nvml::NvmlFailure::Busy)),
        host: HostSample::default(),
        pids: Vec::new(),
        holders: Vec::new(),
        gpu_processes: 0,
        logged_in: false,
    };
    let a = st.handle(LoopEvent::Sample(bad(&st, 1.0)), s(1.0));
    assert_eq!(
        events(&a),
        vec![(EventKind::AgentError, Some("telemetry".into()))]
    );
    let a = st.handle(LoopEvent::Sample(bad(&st, 2.0)), s(2.0));
    assert!(events(&a).is_empty());
    assert_eq!(st.telemetry().errors, 2);
    let a = st.handle(
        LoopEvent::Sample(sample(&st, s(3.0), 50.0, None, None)),
        s(3.0),
    );
    assert!(
        a.contains(&Action::Say("GPU telemetry is back".into())),
        "{a:?}"
    );
    assert!(st.telemetry().current);
}

#[test]
fn in_a_container_unresolved_gpu_memory_on_a_gpu_the_job_holds_is_the_jobs() {
    // NVML lists a host pid (nothing here); the job (pid 42) holds /dev/nvidia0.
    let in_pod = |st: &RunState, at: f64| SampleMsg {
        at: st.t0() + s(at),
        wall: SystemTime::UNIX_EPOCH,
        gpus: Some(Ok(vec![GpuSample {
            index: 0,
            minor: Some(0),
            util_gpu_pct: Some(90.0),
            mem_total: Some(80 << 30),
            procs: Some(vec![crate::telemetry::GpuProc {
                pid: 999_999_999,
                used_bytes: Some(60 << 30),
                sm_util: None,
            }]),
            ..GpuSample::default()
        }])),
        host: HostSample::default(),
        pids: vec![42],
        gpu_processes: 0,
        logged_in: false,
        holders: vec![crate::telemetry::DevHolder {
            pid: 42,
            minors: vec![0],
            ctl: true,
        }],
    };
    let lim = || Limits {
        max_gpu_mem: Some(crate::units::parse_mem_limit("50GiB").expect("limit")),
        ..limits()
    };
    let mut whole = unpriced(lim(), TargetKind::Job);
    let a = whole.handle(LoopEvent::Sample(in_pod(&whole, 1.0)), s(1.0));
    let (reason, evidence) = kill_of(&a).expect("the job's 60 GiB is over 50 GiB");
    assert_eq!(reason, KillReason::GpuMem, "{evidence}");
    assert_eq!(
        whole
            .telemetry()
            .job_gpus_seen
            .iter()
            .copied()
            .collect::<Vec<_>>(),
        vec![0]
    );
    // Shared GPUs (time-slicing, MPS): another container's memory is not the job's.
    let mut shared = RunState::new(Init {
        whole_gpus: false,
        ..init_of(&unpriced(lim(), TargetKind::Job))
    });
    let a = shared.handle(LoopEvent::Sample(in_pod(&shared, 1.0)), s(1.0));
    assert!(kill_of(&a).is_none(), "{a:?}");
}

#[test]
fn a_fleet_query_matching_nothing_is_unknown_spend_not_zero() {
    let mut st = with_fleet(TargetKind::Job, 10.0, "q");
    let what = "--fleet-selector {experiment=\"bert\"}".to_string();
    let a = st.handle(LoopEvent::Fleet(FleetMsg::NoSeries(what.clone())), s(1.0));
    let Some(Action::Emit(e)) = a.first() else {
        panic!("{a:?}")
    };
    assert_eq!(e.reason.as_deref(), Some("fleet-no-series"));
    assert!(e.message.contains("experiment=\"bert\""), "{}", e.message);
    assert_eq!(st.fleet().and_then(|f| f.total), None, "never $0");
    assert!(kill_of(&a).is_none());
}

#[test]
fn waiting_on_names_the_ceiling_that_ends_the_run_first() {
    // $3600/h and $1 left: the dollar ceiling in 1 s; the stall window is 10 min.
    let lim = Limits {
        max_usd: Some(1.0),
        max_wall: Some(s(3600.0)),
        stall: Some(s(600.0)),
        ..limits()
    };
    let st = state(lim, fixed(3600.0), Carried::default(), TargetKind::Job);
    assert_eq!(st.waiting_text(s(0.0)), "the dollar ceiling in 1.000s");
    // A stall window shorter than the ceiling is named second, as what comes sooner if
    // progress stops: the ceiling is what ends the run.
    let lim = Limits {
        max_wall: Some(s(3600.0)),
        stall: Some(s(60.0)),
        ..limits()
    };
    let st = state(lim, fixed(1.0), Carried::default(), TargetKind::Job);
    assert_eq!(
        st.waiting_text(s(0.0)),
        "the wall ceiling in 1h00m00s (sooner: the stall kill unless progress comes in 1m00s)"
    );
    // No ceiling: the watchdog is all there is.
    let lim = Limits {
        stall: Some(s(60.0)),
        ..limits()
    };
    let st = state(lim, fixed(1.0), Carried::default(), TargetKind::Job);
    assert_eq!(
        st.waiting_text(s(0.0)),
        "the stall kill unless progress comes in 1m00s"
    );
}

#[test]
fn a_record_unwritten_for_the_grace_kills_the_run_and_a_recovery_resets_it() {
    let mut st = unpriced(limits(), TargetKind::Job);
    let fail =
        |st: &mut RunState, at: f64| st.handle(LoopEvent::RecordFailed("disk full".into()), s(at));
    let ends = |acts: &[Action]| acts.iter().any(|a| matches!(a, Action::End(_)));
    assert!(!ends(&fail(&mut st, 0.0)));
    assert!(!ends(&fail(&mut st, 59.0)));
    st.handle(LoopEvent::RecordRecovered, s(59.5));
    assert!(
        !ends(&fail(&mut st, 70.0)),
        "the streak began again at 70 s"
    );
    assert!(!ends(&fail(&mut st, 129.0)));
    let acts = fail(&mut st, 130.0);
    let end = acts.iter().find_map(|a| match a {
        Action::End(Ending::Kill {
            reason, evidence, ..
        }) => Some((*reason, evidence.clone())),
        _ => None,
    });
    let (reason, evidence) = end.expect("killed at 60 s of failed writes");
    assert_eq!(reason, crate::events::KillReason::Record);
    assert!(
        evidence.contains("has not been written for 1m00s (disk full)"),
        "{evidence}"
    );
}
