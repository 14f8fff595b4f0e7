//! One session of a run — the whole run, one phase of a plan, or the agent's life — in three
//! steps: [`open`] (prices and NVML, the run record, metrics and the endpoint, notifications,
//! the state, the `started` event), [`Session::drive`] (sources → `LoopEvent` →
//! `RunState::handle` → `Action`s performed here and by the sinks) and `close` (the ending's
//! effects the state asks for one at a time — the kill protocol or the leftovers, the GPU
//! check, the record, the hook, the flush, the release, the linger — each result handed
//! back to it as a `LoopEvent::Done`).
//! The wrapper and the agent run exactly this code; they differ only in their [`Target`].

mod close;
mod conclude;
mod open;
mod release;

use std::collections::VecDeque;
use std::ffi::OsString;
use std::time::{Duration, SystemTime};

use super::action::{Action, Ending, LoopEvent};
use super::live::LiveLine;
use super::output::LineJudge;
use super::sinks::Sinks;
use super::sources::{self, Sources};
use super::start;
use super::state::{EndRules, PlanRules, ReleaseRules, RunState, TargetKind};
use super::target::{JobTarget, Target};
use crate::config::Settings;
use crate::events::{EventKind, KillReason};
use crate::telemetry::nvml::NvmlSource;

#[cfg(test)]
pub use open::limits_of;
pub use open::{open, GuardError};

pub struct Session {
    settings: Settings,
    state: RunState,
    sinks: Sinks,
    gpu: Option<NvmlSource>,
    live: Option<LiveLine>,
    /// The record's write failures (handed to the sources at the start of the loop).
    record_errors: Option<sources::Rx<super::record::RecordNews>>,
    /// What to ask the box about itself (None: `--provider none`).
    probe: Option<crate::cloud::Probe>,
    /// How the box is released after the run (None: it is not).
    release: Option<crate::cloud::release::Plan>,
    /// When the kill began (the release is timed from it).
    kill_started: Option<std::time::Instant>,
}

/// What the state's ending needs beyond the session: the run's own ceilings, a plan
/// phase's place in the plan with the phases already on record, the kill's grace, the
/// release, the hook and the linger.
fn end_rules(s: &Session, command: &[OsString]) -> EndRules {
    let done = s
        .sinks
        .recorder
        .as_ref()
        .map(|r| r.snapshot().phases)
        .unwrap_or_default();
    let st = &s.settings;
    EndRules {
        run_max_usd: st.max_usd,
        run_max_wall: st.max_wall,
        plan: st.phase.as_ref().map(|p| PlanRules {
            total: p.total,
            last: p.last,
            abort_on_kill: p.abort_on_kill,
            expected: p.expected,
            done,
        }),
        grace: st.kill_grace,
        program: command.first().map(|p| format!("{p:?}")),
        release: s.release.as_ref().map(|p| ReleaseRules {
            on: st.release.on,
            describe: p.describe(),
        }),
        hook: st.on_exit.is_some(),
        linger: (!st.linger.is_zero() && st.listen.is_some()).then_some(st.linger),
    }
}

impl Session {
    fn now(&self) -> Duration {
        self.state.t0().elapsed()
    }

    /// An event made now and handed to every sink.
    fn emit(&mut self, kind: EventKind, reason: Option<&str>, message: String) {
        let now = self.now();
        let ev = self.state.event(kind, reason, message, now);
        self.sinks.emit(&ev);
        self.publish(now);
    }

    fn publish(&mut self, now: Duration) {
        let snap = self.state.snapshot(now);
        self.sinks.publish(&self.state, &snap);
    }

    /// The ceiling's kill deadline as the holder holds it (`supervise/deadman.rs`): the
    /// instant, the grace, and what it is. None once the engine has decided a kill (the
    /// kill itself re-arms the holder) or with no ceiling to reach.
    fn kill_deadline(&self) -> Option<(std::time::Instant, Duration, String)> {
        let e = self.state.engine();
        if e.killed().is_some() {
            return None;
        }
        let (at, reason) = e.ceiling_deadline(self.now())?;
        let what = match reason {
            KillReason::Usd => "the dollar ceiling (--max-usd)",
            _ => "the wall-clock ceiling (--max-wall)",
        };
        Some((
            self.state.t0() + at,
            self.settings.kill_grace,
            format!(
                "{what}, due {} into the session",
                crate::units::format_duration(at)
            ),
        ))
    }

    /// The loop: one event at a time through the state, its actions performed, until an
    /// action ends it. The holder is handed every new kill deadline (a rate correction
    /// moves the dollar one) before the loop waits again.
    pub async fn drive(&mut self, target: &mut Target, sources: &mut Sources) -> Ending {
        loop {
            target.hold_deadline(self.kill_deadline());
            let wake = self
                .state
                .next_wakeup(self.now())
                .map(|d| (self.state.t0() + d).into());
            let mut ev = sources.next(wake).await;
            if let LoopEvent::Sample(s) = &mut ev {
                if self.settings.keep_if_logged_in {
                    s.logged_in = crate::run::idle_box::someone_logged_in();
                }
                let mut seen: Vec<LoopEvent> = target
                    .refine(s)
                    .into_iter()
                    .map(|(pid, cmd)| LoopEvent::NewTarget(pid, cmd))
                    .collect();
                if target.all_ended() {
                    seen.push(LoopEvent::TargetsEnded);
                }
                for e in seen {
                    let now = self.now();
                    let acts = self.state.handle(e, now);
                    if let Some(end) = self.perform(acts, target, now) {
                        return end;
                    }
                }
            }
            let now = self.now();
            let acts = self.state.handle(ev, now);
            if let Some(end) = self.perform(acts, target, now) {
                return end;
            }
        }
    }

    /// Performs the loop's actions in order; returns the first ending among them. An
    /// action with a result (the warning signal's reach) hands it back to the state.
    fn perform(&mut self, acts: Vec<Action>, target: &mut Target, now: Duration) -> Option<Ending> {
        let mut queue: VecDeque<Action> = acts.into();
        let mut end = None;
        let mut publish = false;
        while let Some(a) = queue.pop_front() {
            match a {
                Action::Emit(ev) => self.sinks.emit(&ev),
                Action::WarnSignal {
                    signal,
                    reason,
                    message,
                } => {
                    let reached = target.signal(signal);
                    let warned = LoopEvent::Warned {
                        signal,
                        reason,
                        message,
                        reached,
                    };
                    queue.extend(self.state.handle(warned, now));
                }
                Action::Forward(sig) => {
                    let reached = target.forward(sig);
                    tracing::debug!(signal = sig.as_str(), reached, "forwarded");
                }
                Action::End(e) => end = end.or(Some(e)),
                Action::Publish => publish = true,
                Action::Meters => self.sinks.meters(&self.state, now),
                Action::Record => self.sinks.record(&self.state, now),
                Action::Members(pids) => self.sinks.record_members(&pids),
                Action::Alert(t) => crate::console::alert(t),
                Action::Notice(t) => crate::console::notice(t),
                Action::Say(t) => crate::console::say(t),
                Action::Redraw => {
                    if let Some(l) = self.live.as_mut() {
                        let view = self.sinks.view(&self.state, &self.state.snapshot(now));
                        l.draw(&view.live_text());
                    }
                }
                // The ending's effects come after the loop (close.rs).
                other => tracing::error!(action = ?other, "an ending's effect inside the loop"),
            }
        }
        if publish {
            self.publish(now);
        }
        end
    }
}

/// The sources of a session: signals, samples of `root`'s tree, the holder's messages, the
/// job's output progress, the heartbeat, the fleet.
fn sources_of(
    s: &mut Session,
    root: i32,
    holder: Option<sources::Rx<crate::supervise::HolderMsg>>,
    progress: Option<tokio::sync::mpsc::Receiver<super::output::LineProgress>>,
) -> Sources {
    Sources::start(sources::Config {
        gpu: s.gpu.clone(),
        interval: s.settings.interval,
        root,
        holder,
        progress,
        heartbeat: s
            .settings
            .heartbeat_file
            .clone()
            .map(|p| (p, s.settings.stall)),
        fleet: s.settings.fleet.clone(),
        record: s.record_errors.take(),
        live: s.live.is_some(),
        cloud: s.probe.clone(),
        steps: s.settings.phase.as_ref().and_then(|p| p.step_file.clone()),
    })
}

/// Runs `command` under the guard; returns the exit code to leave with.
pub async fn run(settings: Settings, command: Vec<OsString>) -> Result<u8, GuardError> {
    run_session(settings, command).await.map(|(code, _)| code)
}

/// One session of a wrapped run (the whole run, or one phase of a plan). Returns the exit
/// code and whether the run ended with it (a plan goes on to its next phase otherwise).
pub async fn run_session(
    settings: Settings,
    command: Vec<OsString>,
) -> Result<(u8, bool), GuardError> {
    if command.is_empty() {
        return Err(GuardError::NoCommand);
    }
    let base_id = start::default_run_id(&command, SystemTime::now());
    // A detached run's stdout and stderr are its output.log: the job's output is always
    // read then, so it goes through the cap and its last lines reach the report.
    let detached = std::env::var_os("COSTGUARD_OUTPUT_LOG_IS_STDOUT").is_some();
    let capture = settings.needs_output() || detached;
    let mut s = open(settings, TargetKind::Job, &command, &base_id, capture).await?;
    s.state.set_rules(end_rules(&s, &command));
    let log = s
        .sinks
        .recorder
        .as_ref()
        .map(|r| r.run_dir.join("output.log"));
    let judge = LineJudge::new(s.settings.progress_regex.clone());
    let log = log.as_deref().map(|p| (p, s.settings.output_log_max));
    let opts = crate::supervise::SpawnOpts {
        capture,
        use_cgroup: true,
        record: s.sinks.recorder.as_ref().map(|r| r.run_dir.clone()),
        deadline: s.kill_deadline(),
        meanwhile: s
            .sinks
            .recorder
            .as_mut()
            .and_then(|r| r.take_config())
            .map(|w| Box::new(move || w.write()) as Box<dyn FnOnce() + Send>),
    };
    let (mut job, progress) = JobTarget::start(&command, opts, judge, log, !detached)?;
    s.note_job(&job);
    let log_error = job.log_error.take();
    let msgs = job.job.take_msgs();
    let mut sources = sources_of(&mut s, job.job.holder_pid, Some(msgs), progress);
    let mut target = Target::Job(job);
    if let Some(why) = log_error {
        let now = s.now();
        let acts = s.state.handle(LoopEvent::LogError(why), now);
        s.perform(acts, &mut target, now);
    }
    s.drive(&mut target, &mut sources).await;
    Ok(s.close(target, sources).await)
}

/// `costguard agent`: the same session over the GPU processes its selector picks.
pub async fn run_agent(
    settings: Settings,
    selector: super::agent::Selector,
) -> Result<u8, GuardError> {
    let host = crate::events::hostname();
    let base = format!("agent-{host}-{}", start::run_id_stamp(SystemTime::now()));
    let label = vec![OsString::from("costguard agent")];
    let mut s = open(settings, TargetKind::Agent, &label, &base, false).await?;
    if let Some(r) = s.sinks.recorder.as_mut() {
        r.write_config_in_background();
    }
    s.state.set_rules(end_rules(&s, &[]));
    if s.gpu.is_none() {
        return Err(GuardError::Agent(
            "costguard agent needs NVML to see GPU processes (--gpu nvml, --nvml-lib PATH)".into(),
        ));
    }
    let mut sources = sources_of(&mut s, 0, None, None);
    let mut target = Target::Gpus(super::target::GpuTargets::new(selector));
    s.drive(&mut target, &mut sources).await;
    Ok(s.close(target, sources).await.0)
}
