//! What enters the run loop ([`LoopEvent`]) and what the run state answers with ([`Action`]).
//! The loop's sources produce the first, `RunState::handle` turns each into the second, and
//! the session and its sinks perform the actions. Both modes — the wrapped job and the
//! agent's GPU processes — speak exactly this vocabulary.

use nix::sys::signal::Signal;

use super::output::LineProgress;
use super::sampler::SampleMsg;
use crate::events::{Event, KillReason};
use crate::exit::JobStatus;
use crate::fleet::FleetMsg;
use crate::policy::WarnReason;

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
    /// A notice for the person at the terminal.
    Notice(String),
    /// A plain line of information for the person at the terminal.
    Say(String),
    /// Redraw the live line.
    Redraw,
}
