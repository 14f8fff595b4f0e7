//! One guarded run: start-up checks, the run loop, and what it reports.

mod exit_hook;
pub mod guard;
mod live;
pub mod output;
pub mod record;
pub mod sampler;
mod start;
mod state;

pub use guard::run;
pub use start::{default_run_id, reserve_run_id};
