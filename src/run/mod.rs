//! One guarded run: start-up checks, the run loop, and what it reports.

pub mod guard;
mod live;
pub mod output;
pub mod sampler;
mod start;
mod state;

pub use guard::run;
