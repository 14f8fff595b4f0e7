//! The policy on simulated time: hours of a run in microseconds.

use super::*;

fn s(x: u64) -> Duration {
    Duration::from_secs(x)
}

fn gpu(index: u32, util: Option<f64>) -> GpuObs {
    GpuObs {
        index,
        util_pct: util,
        job_mem: None,
        mem_total: Some(80 << 30),
    }
}

fn obs(at: u64, utils: &[Option<f64>]) -> Observation {
    Observation {
        at: s(at),
        gpus: utils
            .iter()
            .enumerate()
            .map(|(i, u)| gpu(i as u32, *u))
            .collect(),
        host_rss: None,
    }
}

fn limits() -> Limits {
    Limits {
        idle_below: 5.0,
        stale_after: s(3),
        ..Limits::default()
    }
}

fn kills(d: &[Decision]) -> Vec<KillReason> {
    d.iter()
        .filter_map(|d| match d {
            Decision::Kill { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

/// Drives the engine like the real loop: wake at each deadline, feed samples every second.
fn run(
    engine: &mut Engine,
    until: u64,
    mut sample: impl FnMut(u64) -> Option<Observation>,
) -> (Duration, Vec<Decision>) {
    let mut all = Vec::new();
    let mut now = Duration::ZERO;
    let mut next_sample = 0u64;
    while now <= s(until) {
        let wake = engine.next_wakeup(now).unwrap_or(s(u64::MAX / 4));
        let sample_at = s(next_sample);
        if wake < sample_at {
            now = wake.max(now);
            let d = engine.tick(now);
            let done = !kills(&d).is_empty();
            all.extend(d);
            if done {
                return (now, all);
            }
        } else {
            now = sample_at;
            next_sample += 1;
            if let Some(o) = sample(now.as_secs()) {
                let d = engine.observe(&o);
                let done = !kills(&d).is_empty();
                all.extend(d);
                if done {
                    return (now, all);
                }
            }
        }
    }
    (now, all)
}

#[test]
fn dollar_deadline_is_exact() {
    let l = Limits {
        max_usd: Some(0.5),
        ..limits()
    };
    let mut e = Engine::new(l, SpendMeter::new(0.0, 3600.0));
    let t = e.usd_deadline(Duration::ZERO).expect("deadline");
    assert_eq!(t, Duration::from_millis(500));
    assert!(kills(&e.tick(Duration::from_millis(499))).is_empty());
    assert_eq!(kills(&e.tick(t)), vec![KillReason::Usd]);
    assert!(e.tick(t + s(1)).is_empty(), "a kill is decided once");
}

#[test]
fn rate_change_moves_the_deadline() {
    let l = Limits {
        max_usd: Some(10.0),
        ..limits()
    };
    let mut e = Engine::new(l, SpendMeter::new(0.0, 3600.0));
    assert_eq!(e.usd_deadline(s(0)), Some(s(10)));
    e.set_rate(s(4), 7200.0); // $4 spent, $6 left at $2/s
    assert_eq!(e.usd_deadline(s(4)), Some(s(7)));
}

#[test]
fn budget_warnings_in_order_and_once() {
    let l = Limits {
        max_usd: Some(100.0),
        warn_at: vec![0.5, 0.8, 0.95],
        ..limits()
    };
    let mut e = Engine::new(l, SpendMeter::new(0.0, 3600.0));
    let (at, d) = run(&mut e, 200, |_| None);
    let warns: Vec<_> = d
        .iter()
        .filter_map(|d| match d {
            Decision::Warn {
                reason: WarnReason::Budget,
                message,
                ..
            } => Some(message.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(warns.len(), 3, "{warns:?}");
    assert!(warns[0].starts_with("50%"));
    assert!(warns[2].starts_with("95%"));
    assert_eq!(at, s(100));
    assert_eq!(kills(&d), vec![KillReason::Usd]);
}

#[test]
fn warn_signal_precedes_wall_kill() {
    let l = Limits {
        max_wall: Some(s(3600)),
        warn_before: Some(s(120)),
        ..limits()
    };
    let mut e = Engine::new(l, SpendMeter::new(0.0, 1.0));
    assert_eq!(e.next_wakeup(s(0)), Some(s(3480)));
    let d = e.tick(s(3480));
    assert!(
        matches!(d.as_slice(), [Decision::Warn { signal: true, .. }]),
        "{d:?}"
    );
    assert_eq!(e.next_wakeup(s(3480)), Some(s(3600)));
    assert_eq!(kills(&e.tick(s(3600))), vec![KillReason::Wall]);
}

#[test]
fn idle_kill_after_window_with_evidence() {
    let l = Limits {
        idle: Some(s(600)),
        ..limits()
    };
    let mut e = Engine::new(l, SpendMeter::new(0.0, 10.0));
    let (at, d) = run(&mut e, 10_000, |t| {
        Some(obs(t, &[Some(if t < 100 { 90.0 } else { 1.0 }); 2]))
    });
    assert_eq!(at, s(700), "idle from 100 s, window 600 s");
    assert_eq!(kills(&d), vec![KillReason::Idle]);
    let evidence = d.iter().find_map(|d| match d {
        Decision::Kill { evidence, .. } => Some(evidence.clone()),
        _ => None,
    });
    let evidence = evidence.expect("evidence");
    assert!(
        evidence.starts_with("idle: GPU 0,1 below 5% for 10m00s"),
        "{evidence}"
    );
    assert!(d.iter().any(|d| matches!(
        d,
        Decision::Warn {
            reason: WarnReason::IdleSuspected,
            ..
        }
    )));
    // Everything from the start of idleness is wasted: 600 s at $10/h.
    assert!(
        (e.wasted(at) - 600.0 * 10.0 / 3600.0).abs() < 1e-9,
        "{}",
        e.wasted(at)
    );
}

#[test]
fn unknown_utilization_never_counts_as_idle() {
    let l = Limits {
        idle: Some(s(60)),
        ..limits()
    };
    let mut e = Engine::new(l, SpendMeter::new(0.0, 1.0));
    // Idle, but every 30 s one sample is unknown: the streak restarts, no kill ever.
    let (_, d) = run(&mut e, 3600, |t| {
        Some(obs(t, &[if t % 30 == 0 { None } else { Some(0.0) }]))
    });
    assert!(kills(&d).is_empty(), "{d:?}");
    // No GPU telemetry at all: never idle.
    let mut e = Engine::new(
        Limits {
            idle: Some(s(60)),
            ..limits()
        },
        SpendMeter::new(0.0, 1.0),
    );
    let (_, d) = run(&mut e, 3600, |t| Some(obs(t, &[])));
    assert!(kills(&d).is_empty());
}

#[test]
fn stale_samples_do_not_support_an_idle_kill() {
    let l = Limits {
        idle: Some(s(60)),
        ..limits()
    };
    let mut e = Engine::new(l, SpendMeter::new(0.0, 1.0));
    // Idle samples until 30 s, then telemetry goes silent.
    let (_, d) = run(&mut e, 3600, |t| (t <= 30).then(|| obs(t, &[Some(0.0)])));
    assert!(kills(&d).is_empty(), "{d:?}");
}

#[test]
fn idle_sample_handled_after_the_deadline_still_kills_at_once() {
    let l = Limits {
        idle: Some(s(5)),
        ..limits()
    };
    let mut e = Engine::new(l, SpendMeter::new(0.0, 1.0));
    let sample = |ms: u64| Observation {
        at: Duration::from_millis(ms),
        ..obs(0, &[Some(0.0)])
    };
    // Idle since 0.003 s; samples are stamped when asked for, a little jittered.
    for ms in [3, 1_003, 2_003, 3_003, 4_003, 5_002] {
        assert!(kills(&e.observe(&sample(ms))).is_empty(), "{ms}");
    }
    // The 5.002 s sample (4.999 s of idleness) is handled at 5.010 s, past the 5.003 s
    // deadline: the kill is due now, not one sampling interval later.
    let now = Duration::from_millis(5_010);
    let wake = e.next_wakeup(now).expect("the idle deadline stays armed");
    assert!(wake <= now, "{wake:?}");
    assert_eq!(kills(&e.tick(now)), vec![KillReason::Idle]);
}

#[test]
fn setup_grace_is_respected() {
    let l = Limits {
        idle: Some(s(60)),
        idle_grace: s(300),
        ..limits()
    };
    let mut e = Engine::new(l, SpendMeter::new(0.0, 1.0));
    let (at, d) = run(&mut e, 10_000, |t| Some(obs(t, &[Some(0.0)])));
    assert_eq!(at, s(360), "idle clock starts when the grace ends");
    assert_eq!(kills(&d), vec![KillReason::Idle]);
}

#[test]
fn hung_at_full_utilization_is_a_stall() {
    let l = Limits {
        idle: Some(s(60)),
        stall: Some(s(300)),
        ..limits()
    };
    let mut e = Engine::new(l, SpendMeter::new(0.0, 1.0));
    // The GPU pegged at 100 % and no progress signal at all: a hang, not work.
    let (at, d) = run(&mut e, 10_000, |t| Some(obs(t, &[Some(100.0)])));
    // Without progress signals at all, the start counts as the last progress.
    assert_eq!(at, s(300));
    assert_eq!(kills(&d), vec![KillReason::Stall]);

    let l = Limits {
        stall: Some(s(300)),
        ..limits()
    };
    let mut e = Engine::new(l, SpendMeter::new(0.0, 1.0));
    for step in 1..=30u64 {
        e.on_progress(s(step * 10), format!("step {step}"), Some(step as f64));
        assert!(e
            .tick(s(step * 10))
            .iter()
            .all(|d| !matches!(d, Decision::Kill { .. })));
    }
    assert_eq!(
        e.next_wakeup(s(300)),
        Some(s(450)),
        "half-window warning first"
    );
    assert!(matches!(
        e.tick(s(450)).as_slice(),
        [Decision::Warn {
            reason: WarnReason::StallSuspected,
            ..
        }]
    ));
    let d = e.tick(s(600));
    assert_eq!(kills(&d), vec![KillReason::Stall]);
    let msg = d
        .iter()
        .find_map(|d| match d {
            Decision::Kill { evidence, .. } => Some(evidence.clone()),
            _ => None,
        })
        .unwrap_or_default();
    assert!(msg.contains("last progress \"step 30\" 5m00s ago"), "{msg}");
}

#[test]
fn steady_progress_is_never_killed() {
    let l = Limits {
        idle: Some(s(60)),
        stall: Some(s(120)),
        max_gpu_mem: Some(MemLimit::Percent(95.0)),
        ..limits()
    };
    let mut e = Engine::new(l, SpendMeter::new(0.0, 30.0));
    let mut all = Vec::new();
    for t in 0..36_000u64 {
        if t % 20 == 0 {
            e.on_progress(s(t), format!("step {t}"), Some(t as f64));
        }
        let mut o = obs(t, &[Some(60.0 + (t % 40) as f64), Some(97.0)]);
        o.gpus[0].job_mem = Some(70 << 30);
        all.extend(e.observe(&o));
    }
    assert!(kills(&all).is_empty());
    assert_eq!(e.wasted(s(36_000)), 0.0);
}

#[test]
fn memory_ceilings() {
    let l = Limits {
        max_gpu_mem: Some(MemLimit::Percent(50.0)),
        max_host_mem: Some(1 << 30),
        ..limits()
    };
    let mut e = Engine::new(l.clone(), SpendMeter::new(0.0, 1.0));
    let mut o = obs(5, &[Some(50.0), Some(50.0)]);
    o.gpus[1].job_mem = Some(41 << 30);
    let d = e.observe(&o);
    assert_eq!(kills(&d), vec![KillReason::GpuMem]);
    let mut e = Engine::new(l, SpendMeter::new(0.0, 1.0));
    let mut o = obs(5, &[Some(50.0)]);
    o.host_rss = Some(2 << 30);
    assert_eq!(kills(&e.observe(&o)), vec![KillReason::HostMem]);
}

#[test]
fn projection_from_progress_rate() {
    let mut p = Progress::default();
    p.record(s(10), "step 0".into(), Some(0.0));
    p.record(s(110), "step 100".into(), Some(100.0));
    assert_eq!(p.step_rate(), Some(1.0));
    assert_eq!(p.eta(1000.0, s(110)), Some(s(900)));
}
