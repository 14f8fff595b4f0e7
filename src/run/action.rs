//! What enters the run loop ([`LoopEvent`]) and what the run state answers with ([`Action`]).
//! The loop's sources produce the first, `RunState::handle` turns each into the second, and
//! the session and its sinks perform the actions. Both modes — the wrapped job and the
//! agent's GPU processes — speak exactly this vocabulary.

use std::time::Duration;

use nix::sys::signal::Signal;

use super::output::LineProgress;
use super::sampler::SampleMsg;
use crate::events::{Event, KillReason};
use crate::exit::JobStatus;
use crate::fleet::FleetMsg;
use crate::ledger::{Ledger, PhaseRecord, RecordState};
use crate::policy::WarnReason;
use crate::supervise::kill::KillReport;

/// One thing the loop noticed.
pub enum LoopEvent {
    /// costguard received a signal that ends the run (TERM, INT, HUP).
    Signal(Signal),
    /// costguard received a signal that belongs to the job (USR1, USR2, QUIT, …).
    Forward(Signal),
    /// The policy's next deadline came.
    Deadline,
    /// The job's leader ended (the holder told us).
    LeaderEnded(JobStatus),
    /// A notice from the holder (e.g. it could not become a subreaper).
    HolderNotice(String),
    /// The holder's pipe closed without the leader's status.
    HolderLost,
    /// A line of output or a heartbeat counted as progress.
    Progress(LineProgress),
    /// A telemetry sample (its pids are the target's processes).
    Sample(SampleMsg),
    /// The agent saw a new target process (pid, its command line, masked).
    NewTarget(i32, String),
    /// Every target the agent has seen has ended by itself.
    TargetsEnded,
    /// A reading of the fleet's total spend.
    Fleet(FleetMsg),
    /// What the box said about itself (provider, instance, its price), once.
    Box(Box<crate::cloud::Detection>),
    /// The provider is reclaiming this spot box.
    Preempted(crate::cloud::preempt::Notice),
    /// A plan phase's job started its step N (1-based).
    Step(usize),
    /// The run record could not be written (the ledger or the event log).
    RecordFailed(String),
    /// The run record is written again after failures.
    RecordRecovered,
    /// Every 200 ms: keep the spend counters and the record current.
    Tick,
    /// Every second on a terminal: redraw the live line.
    Redraw,
    /// The job's output log could not be opened (the job runs on; said as a record error).
    LogError(String),
    /// The warning signal was sent: to how many processes.
    Warned {
        signal: Signal,
        reason: WarnReason,
        message: String,
        reached: usize,
    },
    /// An effect of the ending is done: its result.
    Done(Done),
}

/// The result of one of the ending's effects ([`Action`]s from `Action::AwaitStop` on).
#[derive(Debug, Clone)]
pub enum Done {
    /// The loop stopped on `Action::End`: the ending begins.
    LoopStopped,
    /// A stop signal to costguard within the moment after the leader died (or none).
    StopSignal(Option<Signal>),
    /// The target's processes outside costguard's cgroup leaf ("pid N (cmd)").
    OutsideLeaf(Vec<String>),
    /// The kill protocol ended (on the target, or on what a lost holder left).
    Killed(KillReport),
    /// What the leader left behind is gone.
    Leftovers,
    /// The target is closed; the job's last output line.
    TargetClosed(Option<String>),
    /// The leader's status, when the holder told it.
    Leader(Option<JobStatus>),
    /// What still holds GPU memory after a ceiling kill, in words.
    GpuHeld(Vec<String>),
    /// The record is closed: the final ledger (None: it could not be written).
    RecordClosed(Option<Box<Ledger>>),
    /// The notifications are flushed.
    Flushed,
    /// The release call's result (None: nothing was called — already released, or the
    /// ledger could not record it first) and its attempts.
    Released(Option<(Result<String, String>, u32)>),
    /// The release's result is on record.
    ReleaseRecorded,
    /// The linger is over.
    Lingered,
}

/// Why the loop stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// Kill the target: the reason, its evidence, the first signal of the protocol.
    Kill {
        reason: KillReason,
        evidence: String,
        first: Signal,
    },
    /// The job's leader ended by itself.
    Leader(JobStatus),
    /// The holder vanished: the job's status is unknown.
    HolderLost,
    /// The agent was told to stop (TERM from the kubelet, Ctrl-C).
    Stop(String),
    /// A signal ended an agent armed at a ceiling with nothing to kill yet: the run did not
    /// complete, it was stopped (recorded `stopped`, exit 128+N).
    Disarmed { signal: Signal, detail: String },
}

/// One thing to do, decided by the run state.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// An event: metrics, /status, the record, the console and the notifier each take it.
    Emit(Box<Event>),
    /// Send the warning signal to the target, then emit the warning saying how many it
    /// reached.
    WarnSignal {
        signal: Signal,
        reason: WarnReason,
        message: String,
    },
    /// Pass a signal on to the target, untouched.
    Forward(Signal),
    /// The loop ends.
    End(Ending),
    /// Refresh metrics, /status and the ledger from the state.
    Publish,
    /// Bring the spend counters up to now (cheap, several times a second).
    Meters,
    /// Put spend and elapsed on record (about once a second).
    Record,
    /// The target's processes at this sample, for the record (what a restart must kill).
    Members(Vec<i32>),
    /// A line for the person at the terminal that `--quiet` never hides.
    Alert(String),
    /// A notice for the person at the terminal.
    Notice(String),
    /// A plain line of information for the person at the terminal.
    Say(String),
    /// Redraw the live line.
    Redraw,
    // The ending's effects, each answered by a `LoopEvent::Done`.
    /// Wait this long for a stop signal to costguard (`Done::StopSignal`).
    AwaitStop(Duration),
    /// Look for the target's processes outside the cgroup leaf (`Done::OutsideLeaf`).
    FindOutside,
    /// The kill on record in the ledger, with the job's last lines.
    RecordKill {
        reason: KillReason,
        evidence: String,
    },
    /// The one kill protocol on the target (`Done::Killed`).
    Kill { first: Signal, grace: Duration },
    /// The kill protocol on what a lost holder left (`Done::Killed`).
    KillLost { grace: Duration },
    /// End what the leader left behind (`Done::Leftovers`).
    FinishLeftovers { grace: Duration },
    /// Wait for the holder and remove the cgroup leaf (`Done::TargetClosed`).
    CloseTarget,
    /// Wait this long for the leader's status (`Done::Leader`); the sources stop after it.
    AwaitLeader(Duration),
    /// The sources stop (the agent's: nothing to wait for).
    StopSources,
    /// Does anything of the job still hold GPU memory (`Done::GpuHeld`)?
    CheckGpuFreed,
    /// A plan's phase on record.
    RecordPhase(Box<PhaseRecord>),
    /// The final ledger, the series and the report (`Done::RecordClosed`).
    CloseRecord {
        state: RecordState,
        code: u8,
        detail: String,
    },
    /// The ending into /status, and `/events` ends.
    PublishEnd {
        state: RecordState,
        code: u8,
        detail: String,
        report: Option<String>,
    },
    /// The exit hook, with the final ledger.
    Hook(Box<Ledger>),
    /// Flush the notifications (`Done::Flushed`); between phases at most a second.
    Flush { ended: bool },
    /// Release the box (`Done::Released`).
    Release,
    /// The release's result on record, with the failure's event (`Done::ReleaseRecorded`).
    RecordRelease {
        result: Result<String, String>,
        attempts: u32,
        failed: Option<Box<Event>>,
    },
    /// The run ended: the metric says so, and watchers get the end (at most a second).
    MarkEnded,
    /// Keep the endpoint up this long (`Done::Lingered`; TERM or INT cuts it short).
    Linger(Duration),
    /// The session is over: the exit code, and whether the run ended with it.
    Exit { code: u8, ended: bool },
}
