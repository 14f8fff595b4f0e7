//! One guarded run: start-up checks, the run loop, and what it reports.

pub mod agent;
mod ending;
mod exit_hook;
pub mod guard;
mod live;
pub mod output;
pub mod plan;
pub mod record;
pub mod sampler;
mod start;
mod state;

pub use guard::run;
pub use start::{default_run_id, reserve_run_id};

/// The entry point of a guarded run: a plan's phases, or one command.
pub async fn run_main(
    settings: crate::config::Settings,
    command: Vec<std::ffi::OsString>,
) -> Result<u8, guard::GuardError> {
    if let Some(path) = settings.plan.clone() {
        if !command.is_empty() {
            return Err(guard::GuardError::Plan(
                "give either --plan FILE or a command after `--`, not both".into(),
            ));
        }
        let phases = plan::load(&path).map_err(guard::GuardError::Plan)?;
        return plan::run(settings, phases, &path).await;
    }
    guard::run(settings, command).await
}
