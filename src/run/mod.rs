//! One guarded run: start-up checks, the run loop, and what it reports.
//!
//! The loop's shape: `sources` turn signals, deadlines, the holder, progress, samples, the
//! fleet and ticks into a `LoopEvent`; `state::RunState::handle` answers each with
//! `Action`s; the `session` performs them and `sinks` apply them (metrics, /status, the
//! record, the notifier, the console). What is guarded is a `target`: the wrapped job's
//! tree or the agent's GPU processes.

pub mod action;
pub mod agent;
mod exit_hook;
mod live;
pub mod output;
pub mod plan;
pub mod record;
pub mod sampler;
pub mod session;
mod sinks;
pub mod sources;
mod start;
pub mod state;
#[cfg(test)]
mod state_tests;
pub mod target;
mod telemetry_cache;
mod view;

pub use session::{run, GuardError};
pub use start::{default_run_id, reserve_run_id};

/// Whether the run's dollar ceiling can work: the price it would be metered at, or why there
/// is none (the same start-up checks a run makes, NVML included).
pub async fn price_check(settings: &crate::config::Settings) -> Result<String, String> {
    let started = start::prepare(settings).await.map_err(|e| e.to_string())?;
    Ok(match started.pricing {
        start::Pricing::Fixed { per_hour, source } => {
            format!(
                "at {}/h from {source}",
                crate::units::format_money(per_hour)
            )
        }
        start::Pricing::Energy { per_kwh } => {
            format!("at GPU energy, {}/kWh", crate::units::format_money(per_kwh))
        }
        start::Pricing::Unknown => "with no price (spend not metered)".into(),
    })
}

/// The entry point of a guarded run: a plan's phases, or one command.
pub async fn run_main(
    settings: crate::config::Settings,
    command: Vec<std::ffi::OsString>,
) -> Result<u8, GuardError> {
    if let Some(path) = settings.plan.clone() {
        if !command.is_empty() {
            return Err(GuardError::Plan(
                "give either --plan FILE or a command after `--`, not both".into(),
            ));
        }
        let phases = plan::load(&path).map_err(GuardError::Plan)?;
        return plan::run(settings, phases, &path).await;
    }
    session::run(settings, command).await
}
