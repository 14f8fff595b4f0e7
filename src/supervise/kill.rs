//! The one kill protocol, used by every caller: the wrapper's job, the holder when costguard
//! died, the agent's GPU processes, and a crashed session's leftovers.
//!
//! First signal and SIGCONT to every member (a stopped process cannot handle TERM), the
//! grace (cut short by a forced second Ctrl-C, or by the scope ending), then SIGKILL and
//! the scope's atomic kill (`cgroup.kill`) every 10 ms until nothing is left. What counts as
//! a member and as "nothing left" is the [`Scope`]'s; the steps are [`Protocol`]'s, driven
//! by [`terminate`] on the runtime or [`terminate_blocking`] where there is none (the holder).

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;

/// How often the members are looked at while waiting, and the SIGKILL round period.
const ROUND: Duration = Duration::from_millis(10);
/// SIGKILL rounds before giving up (10 s): the scope is reported with its survivors.
const MAX_ROUNDS: u32 = 1000;

/// What is being killed.
pub trait Scope {
    /// The live processes now (never zombies).
    fn members(&mut self) -> Vec<i32>;
    /// Kills everything at once where the scope can (a cgroup leaf); done after each round.
    fn kill_atomically(&mut self) {}
    /// Whether nothing is left. By default: no members.
    fn gone(&mut self) -> bool {
        self.members().is_empty()
    }
    /// Called between rounds (the holder reaps its children here).
    fn between_rounds(&mut self) {}
}

/// How a kill went.
#[derive(Debug, Clone, Default)]
pub struct KillReport {
    /// Distinct processes signalled.
    pub signalled: usize,
    /// Whether the grace ran out and SIGKILL was needed.
    pub escalated: bool,
    /// From the first signal until the whole scope was gone.
    pub took: Duration,
    /// Processes still alive when the protocol gave up (should always be empty).
    pub survivors: Vec<i32>,
    /// Every pid that was signalled.
    pub pids: Vec<i32>,
    /// Members found outside the scope's cgroup leaf (they moved themselves out of it).
    pub escaped: Vec<i32>,
}

/// What the driver does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Wait at most this long (less if the scope ends or a force comes), then step again.
    Wait(Duration),
    /// Nothing is left (or the protocol gave up): see the report.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    Start,
    Grace(Instant),
    Killing(u32),
}

/// The protocol's steps as a small state machine; the drivers only wait.
pub struct Protocol {
    first: Signal,
    grace: Duration,
    stage: Stage,
    started: Instant,
    report: KillReport,
}

fn signal_each(pids: &[i32], sig: Signal, then: Option<Signal>, seen: &mut Vec<i32>) -> usize {
    let mut reached = 0;
    for p in pids {
        if kill(Pid::from_raw(*p), sig).is_ok() {
            reached += 1;
            if !seen.contains(p) {
                seen.push(*p);
            }
        }
        if let Some(t) = then {
            let _ = kill(Pid::from_raw(*p), t);
        }
    }
    reached
}

impl Protocol {
    pub fn new(first: Signal, grace: Duration, now: Instant) -> Protocol {
        Protocol {
            first,
            grace,
            stage: Stage::Start,
            started: now,
            report: KillReport::default(),
        }
    }

    /// One step at `now`; `forced` skips what is left of the grace.
    pub fn step(&mut self, scope: &mut dyn Scope, now: Instant, forced: bool) -> Next {
        scope.between_rounds();
        match self.stage {
            Stage::Start => {
                // The first signal goes out even when the scope looks empty: a process that
                // is being created can still be reached through the atomic kill later.
                let members = scope.members();
                let n = signal_each(
                    &members,
                    self.first,
                    Some(Signal::SIGCONT),
                    &mut self.report.pids,
                );
                self.report.signalled = n;
                if self.first == Signal::SIGKILL {
                    scope.kill_atomically();
                }
                self.stage = Stage::Grace(now + self.grace);
                self.wait_or_done(scope, self.grace)
            }
            Stage::Grace(until) if now < until && !forced && self.first != Signal::SIGKILL => {
                self.wait_or_done(scope, until - now)
            }
            Stage::Grace(_) => self.kill_round(scope, 0),
            Stage::Killing(n) => self.kill_round(scope, n),
        }
    }

    fn wait_or_done(&mut self, scope: &mut dyn Scope, d: Duration) -> Next {
        if scope.gone() {
            return Next::Done;
        }
        Next::Wait(d.min(ROUND).max(Duration::from_millis(1)))
    }

    fn kill_round(&mut self, scope: &mut dyn Scope, n: u32) -> Next {
        if scope.gone() {
            return Next::Done;
        }
        self.report.escalated = true;
        scope.kill_atomically();
        let members = scope.members();
        signal_each(&members, Signal::SIGKILL, None, &mut self.report.pids);
        if n >= MAX_ROUNDS {
            self.report.survivors = scope.members();
            return Next::Done;
        }
        self.stage = Stage::Killing(n + 1);
        Next::Wait(ROUND)
    }

    /// The report, once `step` said `Done`.
    pub fn finish(mut self, now: Instant) -> KillReport {
        self.report.took = now.saturating_duration_since(self.started);
        self.report.signalled = self.report.signalled.max(self.report.pids.len());
        self.report
    }
}

/// Runs the protocol on the runtime. `gone` turns true when the scope is known to be gone
/// (the holder's exit), so a wait ends at once; `force` turns true on a second Ctrl-C.
pub async fn terminate(
    scope: &mut dyn Scope,
    first: Signal,
    grace: Duration,
    mut gone: Option<watch::Receiver<bool>>,
    mut force: Option<watch::Receiver<bool>>,
) -> KillReport {
    crate::timing::mark("terminate");
    let mut p = Protocol::new(first, grace, Instant::now());
    let mut forced = force.as_ref().is_some_and(|f| *f.borrow());
    while let Next::Wait(d) = p.step(scope, Instant::now(), forced) {
        tokio::select! {
            r = async { match gone.as_mut() { Some(g) => g.wait_for(|x| *x).await.is_ok(), None => std::future::pending().await } } => {
                if !r {
                    gone = None; // no one will say so any more: poll
                }
            }
            _ = tokio::time::sleep(d) => {}
            r = async { match force.as_mut() { Some(f) if !forced => f.wait_for(|x| *x).await.is_ok(), _ => std::future::pending().await } } => {
                if r { forced = true } else { force = None }
            }
        }
    }
    p.finish(Instant::now())
}

/// Runs the protocol on the calling thread (the holder has no runtime); `signalled` runs
/// once the first signal is out, before the grace is waited (or at the end when nothing was
/// left to signal).
pub fn terminate_blocking(
    scope: &mut dyn Scope,
    first: Signal,
    grace: Duration,
    signalled: impl FnOnce(),
) -> KillReport {
    let mut p = Protocol::new(first, grace, Instant::now());
    let mut signalled = Some(signalled);
    while let Next::Wait(d) = p.step(scope, Instant::now(), false) {
        if let Some(f) = signalled.take() {
            f();
        }
        std::thread::sleep(d.min(Duration::from_millis(5)));
    }
    if let Some(f) = signalled.take() {
        f();
    }
    p.finish(Instant::now())
}

/// A set of processes and everything below them, each identified by pid and start time so
/// a reused pid is never hit; optionally a cgroup leaf whose members all belong to it.
/// The agent's targets and a crashed session's leftovers are such scopes.
#[derive(Debug, Clone, Default)]
pub struct Procs {
    pub roots: Vec<super::tree::Proc>,
    pub leaf: Option<super::cgroup::Leaf>,
    /// Never touched, whatever the roots say (costguard itself, pid 1).
    pub spare: Vec<i32>,
}

impl Scope for Procs {
    fn members(&mut self) -> Vec<i32> {
        let all = super::tree::all();
        let mut out: Vec<i32> = Vec::new();
        for r in self.roots.iter().filter(|r| r.alive()) {
            out.push(r.pid);
            out.extend(
                super::tree::descendants_in(&all, r.pid)
                    .iter()
                    .filter(|p| !p.is_zombie())
                    .map(|p| p.pid),
            );
        }
        if let Some(l) = &self.leaf {
            out.extend(
                l.procs()
                    .into_iter()
                    .filter(|p| super::tree::stat(*p).is_some_and(|s| !s.is_zombie())),
            );
        }
        out.sort_unstable();
        out.dedup();
        out.retain(|p| *p > 1 && !self.spare.contains(p));
        out
    }

    fn kill_atomically(&mut self) {
        if let Some(l) = &self.leaf {
            l.kill_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scope of fake members that go away after `lives` KILL rounds.
    struct Fake {
        members: Vec<i32>,
        lives: u32,
    }
    impl Scope for Fake {
        fn members(&mut self) -> Vec<i32> {
            self.members.clone()
        }
        fn kill_atomically(&mut self) {
            if self.lives == 0 {
                self.members.clear();
            } else {
                self.lives -= 1;
            }
        }
    }

    #[test]
    fn grace_then_kill_rounds_until_gone() {
        // Pids far beyond pid_max: kill(2) fails harmlessly (ESRCH).
        let mut s = Fake {
            members: vec![i32::MAX - 1],
            lives: 2,
        };
        let t0 = Instant::now();
        let mut p = Protocol::new(Signal::SIGTERM, Duration::from_secs(10), t0);
        assert!(matches!(p.step(&mut s, t0, false), Next::Wait(_)));
        // Within the grace: only waiting.
        let mid = t0 + Duration::from_secs(5);
        assert!(matches!(p.step(&mut s, mid, false), Next::Wait(_)));
        assert_eq!(s.lives, 2, "no kill during the grace");
        let late = t0 + Duration::from_secs(11);
        assert!(matches!(p.step(&mut s, late, false), Next::Wait(_)));
        assert!(matches!(p.step(&mut s, late, false), Next::Wait(_)));
        assert!(matches!(p.step(&mut s, late, false), Next::Wait(_)));
        assert_eq!(p.step(&mut s, late, false), Next::Done);
        let r = p.finish(late);
        assert!(r.escalated);
        assert!(r.survivors.is_empty());
    }

    #[test]
    fn a_forced_second_signal_skips_the_grace() {
        let mut s = Fake {
            members: vec![i32::MAX - 1],
            lives: 0,
        };
        let t0 = Instant::now();
        let mut p = Protocol::new(Signal::SIGINT, Duration::from_secs(10), t0);
        p.step(&mut s, t0, false);
        assert!(matches!(p.step(&mut s, t0, true), Next::Wait(_)));
        assert_eq!(p.step(&mut s, t0, true), Next::Done);
        assert!(p.finish(t0).escalated);
    }

    #[test]
    fn an_empty_scope_is_done_at_once_and_never_escalates() {
        let mut s = Fake {
            members: vec![],
            lives: 0,
        };
        let t0 = Instant::now();
        let mut p = Protocol::new(Signal::SIGTERM, Duration::from_secs(10), t0);
        assert_eq!(p.step(&mut s, t0, false), Next::Done);
        assert!(!p.finish(t0).escalated);
    }

    #[test]
    fn procs_scope_kills_a_tree_by_identity_and_spares_what_it_must() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30; wait"])
            .process_group(0)
            .spawn()
            .expect("sh");
        let pid = child.id() as i32;
        let root = crate::supervise::tree::Proc::of(pid).expect("alive");
        let mut stale = root;
        stale.start_ticks += 1;
        let mut wrong = Procs {
            roots: vec![stale],
            ..Procs::default()
        };
        assert!(wrong.members().is_empty(), "a reused pid is not a member");
        let mut scope = Procs {
            roots: vec![root],
            spare: vec![std::process::id() as i32],
            ..Procs::default()
        };
        // The children appear once sh has forked them.
        for _ in 0..200 {
            if scope.members().len() >= 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(scope.members().len() >= 3, "{:?}", scope.members());
        // The child is ours: reap it from another thread so it does not stay a zombie.
        let reaper = std::thread::spawn(move || child.wait());
        let r = terminate_blocking(&mut scope, Signal::SIGTERM, Duration::from_secs(5), || {});
        let _ = reaper.join();
        assert!(scope.members().is_empty());
        assert!(r.signalled >= 3, "{r:?}");
        assert!(r.survivors.is_empty());
    }
}
