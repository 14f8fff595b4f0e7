//! The loop's sources, and the one `select!` that turns them into [`LoopEvent`]s: signals,
//! the policy's deadline, the holder's messages, progress (output lines, the heartbeat
//! file), telemetry samples, the fleet poller and the two ticks. Nothing here decides.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::action::LoopEvent;
use super::output::LineProgress;
use super::sampler::{self, SampleMsg};
use crate::fleet::{FleetMsg, FleetSettings};
use crate::supervise::HolderMsg;
use crate::telemetry::nvml::NvmlSource;

/// Signals that end the run (the first is forwarded as the kill's first signal; a second
/// one means KILL now).
const ENDING: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];
/// Signals that belong to the job: passed on untouched, never fatal to costguard (Slurm's
/// `--signal=USR1@120`, a terminal resize, a user's QUIT for a stack dump).
const FORWARDED: [Signal; 5] = [
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGQUIT,
    Signal::SIGWINCH,
    Signal::SIGALRM,
];

pub type Rx<T> = mpsc::UnboundedReceiver<T>;

/// What the sources are made from.
pub struct Config {
    pub gpu: Option<NvmlSource>,
    pub interval: Duration,
    /// The holder's pid, whose descendants the sampler measures (0: none, the agent).
    pub root: i32,
    pub holder: Option<mpsc::UnboundedReceiver<HolderMsg>>,
    pub progress: Option<mpsc::Receiver<LineProgress>>,
    /// A file whose modification counts as progress, and the stall window it serves.
    pub heartbeat: Option<(PathBuf, Option<Duration>)>,
    pub fleet: Option<FleetSettings>,
    /// The record's write failures.
    pub record: Option<Rx<super::record::RecordNews>>,
    /// Whether the live line is drawn (a redraw tick every second).
    pub live: bool,
    /// What to ask the box about itself (None: `--provider none`).
    pub cloud: Option<crate::cloud::Probe>,
    /// A plan phase's step file: the number of the step its job has started.
    pub steps: Option<PathBuf>,
}

pub struct Sources {
    signals: mpsc::UnboundedReceiver<(Signal, bool)>,
    /// Turns true on a second ending signal: the kill skips the rest of its grace.
    pub force: watch::Receiver<bool>,
    holder: Option<mpsc::UnboundedReceiver<HolderMsg>>,
    progress: Option<mpsc::Receiver<LineProgress>>,
    samples: mpsc::Receiver<SampleMsg>,
    fleet: Option<mpsc::UnboundedReceiver<FleetMsg>>,
    record: Option<Rx<super::record::RecordNews>>,
    cloud: Option<Rx<LoopEvent>>,
    meters: Interval,
    redraw: Option<Interval>,
    deadline: Deadline,
    tasks: Vec<JoinHandle<()>>,
    /// The leader's end, held back until its last output lines are in (or `DRAIN` passed).
    ended: Option<(crate::exit::JobStatus, Instant)>,
}

/// How long the leader's end waits for the output it printed just before it ended (the
/// output stream usually closes at once: every writer is gone).
const DRAIN: Duration = Duration::from_millis(200);

impl Drop for Sources {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The policy's next deadline, slept on one timerfd (CLOCK_MONOTONIC, absolute) for the
/// session's life: tokio's timer rounds a deadline up to its next millisecond tick, and a
/// ceiling's kill should land when it is due (as `timeout`'s does). The timer is set again
/// only when the deadline moves — a job streaming progress lines wakes the loop thousands of
/// times a second, and none of those wakes costs a descriptor. Where a timerfd cannot be
/// had, tokio's sleep.
#[derive(Default)]
struct Deadline {
    /// The timer (None: not made yet, or refused: then tokio's sleep).
    fd: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
    refused: bool,
    /// The instant the timer is set for; None once it has fired and been read.
    set_for: Option<Instant>,
}

impl Deadline {
    /// Returns at `at` (at once when it has passed).
    async fn wait(&mut self, at: Instant) {
        if self.fd.is_none() && !self.refused {
            self.fd = new_timer();
            self.refused = self.fd.is_none();
        }
        let Some(fd) = self.fd.as_ref() else {
            return tokio::time::sleep_until(at).await;
        };
        if self.set_for != Some(at) {
            if !set_timer(fd.get_ref(), at) {
                return tokio::time::sleep_until(at).await;
            }
            self.set_for = Some(at);
        }
        loop {
            let Ok(mut ready) = fd.readable().await else {
                return tokio::time::sleep_until(at).await;
            };
            let mut expirations = [0u8; 8];
            match ready.try_io(|f| {
                nix::unistd::read(f.get_ref(), &mut expirations).map_err(std::io::Error::from)
            }) {
                // Fired (or failed: never sleep past a deadline on a broken timer).
                Ok(_) => {
                    // Read: the next wait, even for the same instant, sets it again.
                    self.set_for = None;
                    return;
                }
                // Readiness left from before the timer was set again: wait on.
                Err(_would_block) => continue,
            }
        }
    }
}

/// A non-blocking timerfd on CLOCK_MONOTONIC, registered with the runtime.
fn new_timer() -> Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    use std::os::fd::FromRawFd;
    // SAFETY: timerfd_create returns a new descriptor or -1; nothing else owns it.
    let fd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` was just created and is owned by this value from here on.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: the OwnedFd is moved into the AsyncFd, which alone owns and closes it: the
    // descriptor stays open and the same for the AsyncFd's whole life.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)
    }
    .ok()
}

/// Sets the timer to expire at `at` (absolute; an instant passed expires at once).
fn set_timer(fd: &std::os::fd::OwnedFd, at: Instant) -> bool {
    use std::os::fd::AsRawFd;
    let left = at.saturating_duration_since(Instant::now());
    let ns = crate::supervise::deadman::mono_now_ns() + left.as_nanos() as i128;
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        // An expiry of zero would disarm the timer: one nanosecond is "now".
        it_value: libc::timespec {
            tv_sec: (ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (ns % 1_000_000_000).max(1) as libc::c_long,
        },
    };
    // SAFETY: a valid timerfd and a valid itimerspec on the stack.
    let set = unsafe {
        libc::timerfd_settime(
            fd.as_raw_fd(),
            libc::TFD_TIMER_ABSTIME,
            &spec,
            std::ptr::null_mut(),
        )
    };
    set == 0
}

fn every(d: Duration) -> Interval {
    let mut i = tokio::time::interval(d);
    i.set_missed_tick_behavior(MissedTickBehavior::Skip);
    i
}

impl Sources {
    pub fn start(c: Config) -> Sources {
        let mut tasks = Vec::new();
        let (sig_tx, signals) = mpsc::unbounded_channel();
        let (force_tx, force) = watch::channel(false);
        tasks.extend(watch_signals(sig_tx, force_tx));
        let (sample_tx, samples) = mpsc::channel::<SampleMsg>(4);
        tasks.push(tokio::spawn(sampler::run(
            c.gpu, c.interval, c.root, sample_tx,
        )));
        let mut progress = c.progress;
        if let Some((path, stall)) = c.heartbeat {
            let (tx, rx) = mpsc::channel(64);
            let poll = c
                .interval
                .min(Duration::from_secs(1))
                .min(stall.map_or(Duration::MAX, |s| s / 4))
                .max(Duration::from_millis(10));
            tasks.push(tokio::spawn(heartbeat(path, poll, tx.clone())));
            // Output progress and heartbeats share one stream.
            if let Some(mut out) = progress.take() {
                tasks.push(tokio::spawn(async move {
                    while let Some(p) = out.recv().await {
                        if tx.send(p).await.is_err() {
                            break;
                        }
                    }
                }));
            }
            progress = Some(rx);
        }
        let fleet = c.fleet.map(|f| {
            let (tx, rx) = mpsc::unbounded_channel();
            tasks.push(tokio::spawn(crate::fleet::poll(f, tx)));
            rx
        });
        // The box's answers and the phase's steps share one channel of loop events.
        let (tx, rx) = mpsc::unbounded_channel();
        let cloud = (c.cloud.is_some() || c.steps.is_some()).then_some(rx);
        if let Some(p) = c.cloud {
            tasks.push(tokio::spawn(cloud_watch(p, tx.clone())));
        }
        if let Some(path) = c.steps {
            tasks.push(tokio::spawn(step_watch(path, tx)));
        }
        Sources {
            cloud,
            signals,
            force,
            holder: c.holder,
            progress,
            samples,
            fleet,
            record: c.record,
            meters: every(Duration::from_millis(200)),
            redraw: c.live.then(|| every(Duration::from_secs(1))),
            deadline: Deadline::default(),
            tasks,
            ended: None,
        }
    }

    /// A signal that ends the run, if one arrives within `window`. The job's leader died of
    /// TERM, INT or HUP that costguard did not send: a scheduler that stops a whole step
    /// (Slurm's `scancel`, its time limit) signals every process of it at once, and which of
    /// them sees it first is a race. Within the window, that is a stop, not the job failing.
    pub async fn stop_signal_within(&mut self, window: Duration) -> Option<Signal> {
        let deadline = Instant::now() + window;
        loop {
            match tokio::time::timeout_at(deadline, self.signals.recv()).await {
                Ok(Some((sig, true))) => return Some(sig),
                Ok(Some((_, false))) => continue,
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Waits for the next event; `wake` is the policy's next deadline.
    pub async fn next(&mut self, wake: Option<Instant>) -> LoopEvent {
        loop {
            if let Some(until) = self.ended.as_ref().map(|e| e.1) {
                // The job's last lines come before its end, so a progress line printed just
                // before it exited is on record.
                if let Some(r) = self.progress.as_mut() {
                    match tokio::time::timeout_at(until, r.recv()).await {
                        Ok(Some(p)) => return LoopEvent::Progress(p),
                        Ok(None) => self.progress = None,
                        Err(_) => {}
                    }
                }
                if let Some((s, _)) = self.ended.take() {
                    return LoopEvent::LeaderEnded(s);
                }
            }
            let ev = tokio::select! {
                biased;
                Some((sig, ends)) = self.signals.recv() => Some(if ends {
                    LoopEvent::Signal(sig)
                } else {
                    LoopEvent::Forward(sig)
                }),
                _ = async { match wake { Some(w) => self.deadline.wait(w).await, None => std::future::pending().await } } => {
                    crate::timing::mark("deadline");
                    Some(LoopEvent::Deadline)
                }
                m = recv_opt(&mut self.holder) => match m {
                    Some(HolderMsg::Ended(s)) => {
                        self.ended = Some((s, Instant::now() + DRAIN));
                        None
                    }
                    Some(HolderMsg::Warn(w)) => Some(LoopEvent::HolderNotice(w)),
                    Some(HolderMsg::Spawned(pid)) => {
                        tracing::debug!(pid, "job leader started");
                        None
                    }
                    None => {
                        self.holder = None;
                        Some(LoopEvent::HolderLost)
                    }
                },
                p = async { match self.progress.as_mut() { Some(r) => r.recv().await, None => std::future::pending().await } } => match p {
                    Some(p) => Some(LoopEvent::Progress(p)),
                    None => {
                        self.progress = None;
                        None
                    }
                },
                Some(s) = self.samples.recv() => Some(LoopEvent::Sample(s)),
                f = recv_opt(&mut self.fleet) => f.map(LoopEvent::Fleet),
                c = recv_opt(&mut self.cloud) => match c {
                    Some(e) => Some(e),
                    None => {
                        self.cloud = None;
                        None
                    }
                },
                e = recv_opt(&mut self.record) => match e {
                    Some(super::record::RecordNews::Failed(e)) => Some(LoopEvent::RecordFailed(e)),
                    Some(super::record::RecordNews::Recovered) => Some(LoopEvent::RecordRecovered),
                    None => {
                        self.record = None;
                        None
                    }
                },
                _ = self.meters.tick() => Some(LoopEvent::Tick),
                _ = async { match self.redraw.as_mut() { Some(r) => { r.tick().await; } None => std::future::pending().await } } => {
                    Some(LoopEvent::Redraw)
                }
            };
            if let Some(ev) = ev {
                return ev;
            }
        }
    }

    /// After the loop: the leader's status if it is still in the holder's pipe (bounded).
    pub async fn leader_status(&mut self, within: Duration) -> Option<crate::exit::JobStatus> {
        if let Some((s, _)) = self.ended.take() {
            return Some(s);
        }
        let rx = self.holder.as_mut()?;
        let deadline = tokio::time::sleep(within);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(HolderMsg::Ended(s)) => return Some(s),
                    Some(_) => continue,
                    None => return None,
                },
                _ = &mut deadline => return None,
            }
        }
    }
}

/// A channel that may not exist: pending forever when it does not.
async fn recv_opt<T>(rx: &mut Option<mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx.as_mut() {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// Every ending and forwarded signal to the loop; the second ending one sets `force`.
fn watch_signals(
    tx: mpsc::UnboundedSender<(Signal, bool)>,
    force: watch::Sender<bool>,
) -> Vec<JoinHandle<()>> {
    let count = Arc::new(Mutex::new(0u32));
    let force = Arc::new(force);
    let all = ENDING
        .iter()
        .map(|s| (*s, true))
        .chain(FORWARDED.iter().map(|s| (*s, false)));
    let mut tasks = Vec::new();
    for (sig, ends) in all {
        let Ok(mut stream) = signal(SignalKind::from_raw(sig as i32)) else {
            continue;
        };
        let (tx, count, force) = (tx.clone(), count.clone(), force.clone());
        tasks.push(tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if ends {
                    let n = count.lock().map(|mut c| {
                        *c += 1;
                        *c
                    });
                    if n.unwrap_or(1) >= 2 {
                        let _ = force.send(true);
                    }
                }
                let _ = tx.send((sig, ends));
            }
        }));
    }
    tasks
}

/// The box's detection (made once per process), then — on a spot box — its reclaim notice.
async fn cloud_watch(p: crate::cloud::Probe, tx: mpsc::UnboundedSender<LoopEvent>) {
    let d = crate::cloud::detected(&p).await;
    if tx.send(LoopEvent::Box(Box::new(d.clone()))).is_err() || !d.info.spot {
        return;
    }
    let (ntx, mut nrx) = mpsc::unbounded_channel();
    let watch = tokio::spawn(crate::cloud::preempt::watch(d.info.clone(), ntx));
    if let Some(n) = nrx.recv().await {
        let _ = tx.send(LoopEvent::Preempted(n));
    }
    watch.abort();
}

/// Polls a phase's step file (200 ms): each new number is the step its job started.
async fn step_watch(path: PathBuf, tx: mpsc::UnboundedSender<LoopEvent>) {
    let mut last = 0;
    loop {
        // The job writes it: a regular file, a few bytes, no link followed.
        let p = path.clone();
        let read = tokio::task::spawn_blocking(move || crate::fsutil::read_bounded(&p, 64)).await;
        if let Ok(Ok(bytes)) = read {
            if let Ok(n) = String::from_utf8_lossy(&bytes).trim().parse::<usize>() {
                if n != last {
                    last = n;
                    if tx.send(LoopEvent::Step(n)).is_err() {
                        return;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `path`'s modification time; a newer one is progress.
async fn heartbeat(path: PathBuf, poll: Duration, tx: mpsc::Sender<LineProgress>) {
    let since = SystemTime::now();
    let mut last = None;
    loop {
        if let Ok(m) = tokio::fs::metadata(&path).await.and_then(|m| m.modified()) {
            if last.is_some_and(|l| m > l) || (last.is_none() && m > since) {
                let p = LineProgress {
                    label: format!("heartbeat {}", path.display()),
                    step: None,
                };
                if tx.send(p).await.is_err() {
                    return;
                }
            }
            last = Some(m);
        }
        tokio::time::sleep(poll).await;
    }
}
