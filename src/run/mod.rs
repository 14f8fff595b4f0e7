//! One guarded run: start-up checks, the run loop, and what it reports.
//!
//! The loop's shape: `sources` turn signals, deadlines, the holder, progress, samples, the
//! fleet and ticks into a `LoopEvent`; `state::RunState::handle` answers each with
//! `Action`s; the `session` performs them and `sinks` apply them (metrics, /status, the
//! record, the notifier, the console). What is guarded is a `target`: the wrapped job's
//! tree or the agent's GPU processes.

pub(crate) mod action;
pub mod agent;
#[cfg(test)]
mod ending_tests;
pub(crate) mod exit_hook;
pub(crate) mod idle_box;
pub(crate) mod live;
#[cfg(test)]
mod machine_tests;
pub(crate) mod output;
pub mod plan;
pub(crate) mod record;
pub(crate) mod sampler;
pub mod session;
mod sinks;
pub(crate) mod sources;
mod start;
pub(crate) mod state;
#[cfg(test)]
mod state_tests;
pub(crate) mod target;
mod telemetry_cache;
mod view;

pub use session::GuardError;
pub use start::{default_run_id, reserve_run_id};

/// The rate a run would be metered at and where it comes from, and what the box said about
/// itself (the same start-up checks a run makes, NVML and detection included).
pub struct PriceCheck {
    /// "at $21.96/h from aws p4d.24xlarge us-west-2 on-demand (catalog 2026-11)".
    pub rate: String,
    /// "aws p4d.24xlarge us-west-2 on-demand (metadata, 3 ms)", or why none.
    pub found: String,
    pub notes: Vec<String>,
    pub priced: bool,
    /// What stops the meter after the run, with the credential proved where the provider
    /// allows it (None: no release asked).
    pub release: Option<Result<String, String>>,
}

pub async fn price_check(settings: &crate::config::Settings) -> Result<PriceCheck, String> {
    use crate::units::format_money;
    let started = start::prepare(settings).await.map_err(|e| e.to_string())?;
    let limit = crate::cloud::PROBE_BUDGET + crate::cloud::API_BUDGET;
    let d = match &started.probe {
        Some(p) => tokio::time::timeout(limit, crate::cloud::detected(p))
            .await
            .ok(),
        None => None,
    };
    let box_rate = d.and_then(|d| d.rate.as_ref());
    let mut notes: Vec<String> = d.map(|d| d.notes.clone()).unwrap_or_default();
    let rate = match (&started.pricing, box_rate) {
        (
            start::Pricing::Fixed {
                per_hour,
                source,
                origin: start::RateOrigin::Flag,
            },
            b,
        ) => {
            if let Some(b) = b.filter(|b| (per_hour - b.per_hour).abs() > 0.25 * b.per_hour) {
                notes.push(format!(
                    "--usd-per-hour {} is far from what this box bills: {}/h from {}",
                    format_money(*per_hour),
                    format_money(b.per_hour),
                    b.source
                ));
            }
            Some(format!("at {}/h from {source}", format_money(*per_hour)))
        }
        (start::Pricing::Energy { per_kwh }, _) => {
            Some(format!("at GPU energy, {}/kWh", format_money(*per_kwh)))
        }
        (_, Some(b)) => Some(format!(
            "at {}/h from {}",
            format_money(b.per_hour),
            b.source
        )),
        (
            start::Pricing::Fixed {
                per_hour, source, ..
            },
            None,
        ) => Some(format!("at {}/h from {source}", format_money(*per_hour))),
        (start::Pricing::Unknown, None) => None,
    };
    let found = match (&started.probe, d) {
        (None, _) => "not asked (--provider none)".to_string(),
        (Some(_), None) => "no answer in time".to_string(),
        (Some(_), Some(d)) if d.found() => {
            let mut t = format!(
                "{} (from the {}, {} ms)",
                d.info.describe(),
                d.info.via,
                d.took_ms
            );
            if !d.info.context.is_empty() {
                t += &format!("; inside {}", d.info.context.join(", "));
            }
            t
        }
        (Some(_), Some(d)) => format!("no cloud provider found ({} ms)", d.took_ms),
    };
    let release = match &started.release {
        None => None,
        Some(plan) => Some(release_answer(settings, plan).await),
    };
    Ok(PriceCheck {
        release,
        priced: rate.is_some(),
        rate: rate.unwrap_or_else(|| "with no price (spend not metered)".into()),
        found,
        notes,
    })
}

/// "aws StopInstances i-… — allowed (EC2 DryRun); on kill; still billing: …".
async fn release_answer(
    settings: &crate::config::Settings,
    plan: &crate::cloud::release::Plan,
) -> Result<String, String> {
    let proved = crate::cloud::release::prove(plan).await?;
    let on = match settings.release.on {
        crate::cloud::release::On::Kill => "after a ceiling or watchdog kill",
        crate::cloud::release::On::End => "at every ending but a stop by a person",
    };
    let mut t = format!(
        "{} — {proved}; {on}; still billing after it: {}",
        plan.describe(),
        plan.still_bills()
    );
    if let Some(d) = plan.destroys() {
        t += &format!("; terminate DESTROYS {d}");
    }
    Ok(t)
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
