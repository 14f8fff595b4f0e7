//! The session's stages, and the first one after running: an agent at a ceiling with
//! nothing to kill is armed, in the same loop.

use nix::sys::signal::Signal;

use super::{RunState, TargetKind};
use crate::run::action::{Action, Ending};

/// The session's stages, one machine from the start to the exit.
#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    /// The loop runs: sources in, actions out.
    Running,
    /// The agent at a ceiling with nothing to kill yet: the loop runs on (metering and
    /// recording) and the first target selected is killed with this kill.
    Armed(Box<Ending>),
    /// The loop stopped: how it ended is being settled (a stop from outside?).
    Settling,
    /// The kill protocol (or the leftovers, or what a lost holder left), the leader's
    /// status, the "GPU freed?" check.
    Killing,
    /// The verdict, the ending events, the record, the hook and the flush.
    Concluding,
    /// The box is being released.
    Releasing,
    /// The run is over; the endpoint serves its end (`--linger`).
    Lingering,
    /// Nothing left to do: the process exits.
    Over,
}

impl RunState {
    /// Where the session is: running, armed, or a stage of its ending (for the tests).
    #[cfg(test)]
    pub fn stage(&self) -> &Stage {
        &self.stage
    }

    /// The agent never claims a kill it did not make: at a ceiling with no target (none
    /// seen yet, or none running now) it stays armed — the loop goes on metering and
    /// recording — and the first GPU process its selector picks is killed at once. While
    /// armed nothing else ends it but a signal (`Ending::Disarmed`).
    pub(super) fn arming(&mut self, mut acts: Vec<Action>) -> Vec<Action> {
        if let Stage::Armed(kill) = &self.stage {
            acts.retain(|x| !matches!(x, Action::End(e) if !matches!(e, Ending::Disarmed { .. })));
            if self.targets_now > 0 {
                acts.push(Action::End(kill.as_ref().clone()));
            }
            return acts;
        }
        if self.kind != TargetKind::Agent || self.targets_now > 0 {
            return acts;
        }
        // The first ending is the one the loop would take.
        let first = acts.iter().find_map(|x| match x {
            Action::End(e) => Some(e),
            _ => None,
        });
        let Some(kill @ Ending::Kill { .. }) = first else {
            return acts;
        };
        self.stage = Stage::Armed(Box::new(kill.clone()));
        acts.retain(|x| !matches!(x, Action::End(_)));
        acts.push(Action::Alert(self.armed_text().unwrap_or_default()));
        acts.push(Action::Publish);
        acts
    }

    /// What an armed agent waits for, in words (None when it is not armed).
    pub fn armed_text(&self) -> Option<String> {
        let Stage::Armed(kill) = &self.stage else {
            return None;
        };
        let Ending::Kill { evidence, .. } = kill.as_ref() else {
            return None;
        };
        Some(format!(
            "over budget, no targets: the first GPU process selected is killed at once ({evidence})"
        ))
    }
}

/// A signal while armed: the run did not complete, it was stopped (recorded `stopped`,
/// exit 128+N), and says over what.
pub(super) fn disarmed(kill: &Ending, sig: Signal) -> Ending {
    let evidence = match kill {
        Ending::Kill { evidence, .. } => evidence.as_str(),
        _ => "",
    };
    Ending::Disarmed {
        signal: sig,
        detail: format!(
            "stopped by {} while over budget with no GPU process to kill ({evidence})",
            sig.as_str()
        ),
    }
}
