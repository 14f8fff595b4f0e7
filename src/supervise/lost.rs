//! The job after its holder was killed from outside (`kill -9` of `costguard-hold`): the
//! holder can no longer report or reap, and the job's processes re-parent to costguard (a
//! subreaper) — they must be ended, never left running unguarded.
//!
//! Its members: the holder's process group (the job's, unless a process left it), the cgroup
//! leaf, the members last recorded (pid + start time, so a reused pid is never hit) with
//! everything below them, and costguard's own children outside costguard's process group
//! (orphans of the job; a notification command costguard runs stays in its group).

use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

use super::cgroup::Leaf;
use super::kill::{Procs, Scope};
use super::tree;

pub struct Lost {
    /// The holder's process group (its pid: it was started with `process_group(0)`).
    pub pgid: i32,
    /// The recorded members and the leaf.
    pub known: Procs,
    me: i32,
    my_pgid: i32,
}

impl Lost {
    pub fn new(holder_pid: i32, leaf: Option<Leaf>, recorded: Vec<super::tree::Proc>) -> Lost {
        let me = std::process::id() as i32;
        Lost {
            pgid: holder_pid,
            known: Procs {
                roots: recorded,
                leaf,
                spare: vec![me, 1],
            },
            me,
            my_pgid: nix::unistd::getpgrp().as_raw(),
        }
    }
}

impl Scope for Lost {
    fn members(&mut self) -> Vec<i32> {
        let all = tree::all();
        let mut pids = self.known.members();
        let ours = |p: &tree::ProcStat| {
            (p.pgid == self.pgid && self.pgid > 1) || (p.ppid == self.me && p.pgid != self.my_pgid)
        };
        for p in all.iter().filter(|p| ours(p) && !p.is_zombie()) {
            pids.push(p.pid);
            pids.extend(
                tree::descendants_in(&all, p.pid)
                    .iter()
                    .filter(|d| !d.is_zombie())
                    .map(|d| d.pid),
            );
        }
        pids.sort_unstable();
        pids.dedup();
        pids.retain(|p| *p > 1 && *p != self.me);
        pids
    }

    fn kill_atomically(&mut self) {
        self.known.kill_atomically();
    }

    /// Reaps the job's orphans that died as our children (only those: never the holder or
    /// another child that tokio::process waits on).
    fn between_rounds(&mut self) {
        for p in tree::all() {
            if p.ppid == self.me && p.is_zombie() && p.pgid != self.my_pgid && p.pid != self.pgid {
                let _ = waitpid(Pid::from_raw(p.pid), Some(WaitPidFlag::WNOHANG));
            }
        }
    }
}
