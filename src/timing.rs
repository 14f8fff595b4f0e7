//! Where a run's start and end spend their time: with `COSTGUARD_TIMING` set, each [`mark`]
//! writes `costguard-timing MONO_NS PID STEP` to stderr — CLOCK_MONOTONIC, the clock
//! `benches/start_cost.py` reads before it starts costguard, so every step is placed from
//! the moment of the exec. Unset (always, outside the benchmark), a mark is one atomic load.

use std::sync::atomic::{AtomicU8, Ordering};

/// 0: not looked at yet, 1: off, 2: on.
static STATE: AtomicU8 = AtomicU8::new(0);

fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let on = std::env::var_os("COSTGUARD_TIMING").is_some_and(|v| !v.is_empty());
            STATE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
    }
}

/// The CLOCK_MONOTONIC instant now, in nanoseconds.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec on the stack; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Notes that `step` is reached (only with `COSTGUARD_TIMING` set). One `write(2)` of a
/// whole line, with no lock taken: the holder and costguard's threads may mark at once.
pub fn mark(step: &str) {
    if !enabled() {
        return;
    }
    let line = format!(
        "costguard-timing {} {} {step}\n",
        mono_ns(),
        std::process::id()
    );
    // SAFETY: writing a valid buffer to fd 2; a closed or full stderr only loses the line.
    unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
}
