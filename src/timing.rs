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

/// The instant `main` began, once [`started`] has been called there.
static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Whether the first session has taken [`STARTED`] as its clock's zero.
static FIRST_TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Notes that the process begins now; called first thing in `main`.
pub fn started() {
    let _ = STARTED.set(std::time::Instant::now());
}

/// How long ago `main` began (zero without [`started`]): a resumed run's leftovers are
/// charged up to that instant, from which the new session's own clock counts.
pub fn since_main() -> std::time::Duration {
    STARTED
        .get()
        .map_or(std::time::Duration::ZERO, |t| t.elapsed())
}

/// Where a session's clock starts: for the process's first session, the instant `main`
/// began (as `timeout` counts from its own start, so the wall and dollar ceilings count
/// costguard's own start-up against the job — never later than the job's start); for any
/// later one (a plan's next phase) and without [`started`], now.
pub fn session_start() -> std::time::Instant {
    let first = !FIRST_TAKEN.swap(true, std::sync::atomic::Ordering::SeqCst);
    match STARTED.get() {
        Some(t) if first => *t,
        _ => std::time::Instant::now(),
    }
}
