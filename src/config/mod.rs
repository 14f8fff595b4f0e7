//! Settings layered as the flags' defaults < config file < environment < flags, validated once.
//!
//! Each setting is declared once, as a flag of `cli::GuardArgs` (flag, variable, value name,
//! default, help); `spec` derives its file key, `layer` picks the layer that gives it and its
//! `Origin`, and the functions here turn every string into a checked value. Any error names
//! the bad value and its origin (`--x`, `--x (COSTGUARD_X)`, `config file F line N, key K`),
//! and maps to exit 125 before anything starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use nix::sys::signal::Signal;
use regex::Regex;

use crate::cli::{AgentArgs, Guard, Sourced};
use crate::cloud::Choice;
use crate::notify::NotifySettings;
use crate::units::{self, MemLimit, UnitError};

mod file;
mod layer;
mod notify;
mod origin;
mod spec;

pub use file::Scalar;
pub(crate) use file::{explain, MAX_FILE};
use layer::{path_of, switch, text, Layers};
use origin::Given;
pub use origin::Origin;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{source} (from {origin})")]
    Value {
        origin: Origin,
        #[source]
        source: UnitError,
    },
    #[error("cannot read {origin} {path}: {source}")]
    Read {
        origin: Origin,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to parse config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuMode {
    Auto,
    Nvml,
    None,
}

/// Validated settings of a guarded run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_usd: Option<f64>,
    pub usd_per_hour: Option<f64>,
    pub usd_per_kwh: Option<f64>,
    /// Which provider to detect (or none).
    pub provider: crate::cloud::Choice,
    /// Instance prices that win over the shipped catalog.
    pub price_table: Option<PathBuf>,
    pub max_wall: Option<Duration>,
    pub kill_grace: Duration,
    pub warn_signal: Option<Signal>,
    pub warn_before: Option<Duration>,
    /// Budget fractions in (0, 1], ascending.
    pub warn_at: Vec<f64>,
    pub gpu: GpuMode,
    pub nvml_lib: Option<PathBuf>,
    pub interval: Duration,
    pub idle: Option<Duration>,
    pub idle_below: f64,
    pub idle_grace: Duration,
    pub stall: Option<Duration>,
    pub progress_regex: Option<Regex>,
    pub progress_total: Option<f64>,
    pub heartbeat_file: Option<PathBuf>,
    pub max_gpu_mem: Option<MemLimit>,
    pub max_host_mem: Option<u64>,
    /// The cap on output.log (and on output.log.1 it rotates to).
    pub output_log_max: u64,
    /// GPUs are shared with other containers: unresolved GPU processes are not the job's.
    pub shared_gpus: bool,
    /// How long /metrics and /status keep serving after the run ends.
    pub linger: Duration,
    /// How long failed record writes are tolerated before the run is killed (None: off).
    pub record_grace: Option<Duration>,
    /// The agent ends (completed) once every GPU process it saw has ended by itself.
    pub exit_when_done: bool,
    /// The agent releases the box once idle this long (`--idle-box`).
    pub idle_box: Option<Duration>,
    /// ... unless someone is logged in (`--keep-if-logged-in`).
    pub keep_if_logged_in: bool,
    pub listen: Option<SocketAddr>,
    /// Whether the user named the address (a bind failure is then an error, not a notice).
    pub listen_explicit: bool,
    pub quiet: bool,
    pub prices: BTreeMap<String, f64>,
    pub state_dir: PathBuf,
    pub notify: NotifySettings,
    pub run_id: Option<String>,
    pub on_exit: Option<String>,
    /// Whether and how the box is released after the run.
    pub release: crate::cloud::release::Settings,
    /// How long the exit hook may run before its process group is ended.
    pub on_exit_timeout: Duration,
    /// Started with --no-preflight: recorded in status and the report.
    pub no_preflight: bool,
    /// Set by a plan for each of its phases.
    pub phase: Option<PhaseCtx>,
    pub plan: Option<PathBuf>,
    pub fleet: Option<crate::fleet::FleetSettings>,
    /// Where the settings that are checked again once the box is known came from: errors
    /// found then (no price for `--max-usd`, no NVML for `--gpu nvml`) name the same origin
    /// as the ones found here.
    pub origins: Origins,
}

/// The origins of the settings checked after resolution, by flag id.
#[derive(Debug, Clone, Default)]
pub struct Origins(std::collections::BTreeMap<&'static str, Origin>);

impl Origins {
    /// The ids whose errors come after resolution (`run/start.rs`).
    const LATER: [&'static str; 4] = ["max_usd", "usd_per_kwh", "gpu", "release"];

    fn of(l: &Layers) -> Origins {
        Origins(Self::LATER.iter().map(|id| (*id, l.origin(id))).collect())
    }

    /// Where flag `id` came from: `--release`, `config file costguard.toml line 4, key release`.
    pub fn named(&self, id: &str) -> String {
        match self.0.get(id) {
            Some(o) => o.to_string(),
            None => format!("--{}", id.replace('_', "-")),
        }
    }

    /// Flag `id` with `value`, as the person gave it: `--max-usd $5.00`, `max-usd = $5.00
    /// (config file costguard.toml line 4)`.
    pub fn shown(&self, id: &str, value: &str) -> String {
        match self.0.get(id) {
            Some(o) => o.with_value(value),
            None => format!("--{} {value}", id.replace('_', "-")),
        }
    }
}

/// The phase a session runs, with its own caps (counted from the phase's start).
#[derive(Debug, Clone)]
pub struct PhaseCtx {
    pub name: String,
    pub index: usize,
    pub total: usize,
    pub expected: Option<Duration>,
    pub max_wall: Option<Duration>,
    pub max_usd: Option<f64>,
    pub abort_on_kill: bool,
    pub last: bool,
    /// Expected seconds of the phases after this one (None when any of them has none).
    pub expected_after: Option<f64>,
    /// This process ran an earlier phase of the plan: this one continues the run, it does
    /// not resume it.
    pub continues: bool,
    /// `steps = { KEY = [VALUES] }`: the key and its values, run in order in the phase.
    pub step_key: Option<String>,
    pub step_values: Vec<String>,
    /// Where the phase's job writes the number of the step it starts (set by the plan's
    /// run; costguard polls it).
    pub step_file: Option<PathBuf>,
}

type Text = Option<Given<String>>;

/// A value parsed by a `units` parser; the error names the value's origin.
fn conv<T>(
    v: Text,
    parse: impl Fn(&str) -> Result<T, UnitError>,
) -> Result<Option<T>, ConfigError> {
    v.map(|g| {
        parse(&g.value).map_err(|source| ConfigError::Value {
            origin: g.origin,
            source,
        })
    })
    .transpose()
}

/// A duration that must not be zero.
fn positive(v: Text) -> Result<Option<Duration>, ConfigError> {
    let origin = v.as_ref().map(|g| g.origin.clone());
    match (conv(v, units::parse_duration)?, origin) {
        (Some(d), Some(origin)) if d.is_zero() => Err(ConfigError::Invalid(format!(
            "invalid {origin} 0s: must be greater than zero"
        ))),
        (d, _) => Ok(d),
    }
}

fn duration(v: Text) -> Result<Option<Duration>, ConfigError> {
    conv(v, units::parse_duration)
}

/// The value of a flag declared with a default: some layer always gives one (the layer
/// tests resolve every default).
fn always<T>(v: Option<T>) -> T {
    v.expect("a flag declared with a default has a value")
}

/// A URL costguard will send to: it parses, its scheme is http or https, it names a host
/// and a port that is one. Checked at start, so a typo is exit 125 and not a lost kill alert
/// later. The error names `origin`; the value may be a secret (a webhook's path is its
/// credential), so only its scheme, host and port are shown, and nothing of a value that
/// has no `scheme://`.
pub(crate) fn check_url(origin: &str, value: &str) -> Result<(), ConfigError> {
    let why = match reqwest::Url::parse(value.trim()) {
        Ok(u) if !matches!(u.scheme(), "http" | "https") => {
            format!("expected an http:// or https:// URL, not {}://", u.scheme())
        }
        Ok(u) if u.host_str().unwrap_or("").is_empty() => "the URL names no host".into(),
        Ok(u) if u.port() == Some(0) => "port 0 is not a port to send to".into(),
        Ok(_) => return Ok(()),
        Err(e) => e.to_string(),
    };
    Err(ConfigError::Invalid(match crate::redact::url_outline(value) {
        Some(shown) => format!("invalid {origin} {shown:?}: {why}"),
        None => format!(
            "invalid {origin}: expected an http:// or https:// URL ({why}; the value is not shown: it may be a secret)"
        ),
    }))
}

/// A word from a fixed list, parsed by `parse`; the error lists the words.
fn choice<T>(
    v: Text,
    parse: impl Fn(&str) -> Option<T>,
    words: &str,
) -> Result<Option<T>, ConfigError> {
    v.map(|g| {
        parse(g.value.trim()).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "invalid {} value {:?}: expected {words}",
                g.origin, g.value
            ))
        })
    })
    .transpose()
}

fn gpu_mode(v: &str) -> Option<GpuMode> {
    match v {
        "auto" => Some(GpuMode::Auto),
        "nvml" => Some(GpuMode::Nvml),
        "none" => Some(GpuMode::None),
        _ => None,
    }
}

fn progress_regex(v: Text) -> Result<Option<Regex>, ConfigError> {
    let Some(Given { value: v, origin }) = v else {
        return Ok(None);
    };
    let re =
        Regex::new(&v).map_err(|e| ConfigError::Invalid(format!("invalid {origin} {v:?}: {e}")))?;
    if re.captures_len() < 2 {
        return Err(ConfigError::Invalid(format!(
            "invalid {origin} {v:?}: needs a capture group around the step number, e.g. 'step (\\d+)'"
        )));
    }
    Ok(Some(re))
}

fn progress_total(v: Text) -> Result<Option<f64>, ConfigError> {
    let Some(Given { value: v, origin }) = v else {
        return Ok(None);
    };
    match v.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 => Ok(Some(n)),
        _ => Err(ConfigError::Invalid(format!(
            "invalid {origin} {v:?}: expected a positive number of steps"
        ))),
    }
}

/// The listen address, and whether a person chose it (a default that is taken is a notice).
fn listen_addr(l: &Layers) -> Result<(Option<SocketAddr>, bool), ConfigError> {
    let no_listen = switch!(l, no_listen);
    let Some(Given { value: v, origin }) = text!(l, listen) else {
        return Ok((None, false));
    };
    if no_listen {
        return Ok((None, false));
    }
    let addr = v.parse::<SocketAddr>().map_err(|_| {
        ConfigError::Invalid(format!(
            "invalid {origin} {v:?}: expected HOST:PORT such as 127.0.0.1:9947"
        ))
    })?;
    Ok((Some(addr), !matches!(origin, Origin::Default { .. })))
}

fn check_prices(prices: &BTreeMap<String, f64>) -> Result<(), ConfigError> {
    for (model, price) in prices {
        if !price.is_finite() || *price < 0.0 {
            return Err(ConfigError::Invalid(format!(
                "invalid price {price} for {model:?} in [prices]: expected dollars per GPU-hour >= 0"
            )));
        }
        if *price > units::MAX_MONEY {
            return Err(ConfigError::Invalid(format!(
                "invalid price {price} for {model:?} in [prices]: that is more than $1,000,000,000 per GPU-hour"
            )));
        }
    }
    Ok(())
}

/// `--release`, `--release-command`, `--release-on`, `--release-retry-for`: terminate needs
/// the second yes (`--allow-side-effects`).
fn resolve_release(l: &Layers) -> Result<crate::cloud::release::Settings, ConfigError> {
    use crate::cloud::release::{Mode, On, Settings};
    let allowed = switch!(l, allow_side_effects);
    let mode = choice(text!(l, release), Mode::parse, "none, stop or terminate")?;
    let on = choice(text!(l, release_on), On::parse, "kill or end")?;
    let retry_for = always(duration(text!(l, release_retry_for))?);
    let mode = mode.unwrap_or(Mode::None);
    if mode == Mode::Terminate && !allowed {
        return Err(ConfigError::Invalid(format!(
            "{} terminate destroys the box and its disks: it needs --allow-side-effects too (or use --release stop)",
            l.origin("release")
        )));
    }
    let command = text!(l, release_command)
        .map(|g| g.value)
        .filter(|c| !c.trim().is_empty());
    Ok(Settings {
        mode,
        command,
        on: on.unwrap_or(On::Kill),
        retry_for,
    })
}

/// The exit hook (refused when it ships results somewhere unless side effects are allowed)
/// and how long it may run.
fn exit_hook(l: &Layers) -> Result<(Option<String>, Duration), ConfigError> {
    let allowed = switch!(l, allow_side_effects);
    let timeout = always(positive(text!(l, on_exit_timeout))?);
    let Some(cmd) = text!(l, on_exit).filter(|c| !c.value.trim().is_empty()) else {
        return Ok((None, timeout));
    };
    if let (false, Some(pattern)) = (allowed, crate::hook::side_effect(&cmd.value)) {
        return Err(ConfigError::Invalid(format!(
            "refusing {} {:?}: it matches {pattern:?}, which pushes, deploys, publishes or sends; an exit hook should leave results somewhere known, not ship them (pass --allow-side-effects to run it anyway)",
            cmd.origin, cmd.value
        )));
    }
    Ok((Some(cmd.value), timeout))
}

/// `--record-grace`: a duration, or `off`.
fn record_grace(l: &Layers) -> Result<Option<Duration>, ConfigError> {
    match text!(l, record_grace) {
        Some(g) if g.value.trim() == "off" => Ok(None),
        g => positive(g),
    }
}

/// `--warn-at`: budget fractions in (0, 1], ascending.
fn warn_at(l: &Layers) -> Result<Vec<f64>, ConfigError> {
    let g = always(text!(l, warn_at));
    parse_warn_at(&g.value, &g.origin)
}

/// The agent's own flags, and what the agent cannot use.
struct AgentPart {
    exit_when_done: bool,
    idle_box: Option<Duration>,
    keep_if_logged_in: bool,
}

impl AgentPart {
    fn resolve(
        a: &Sourced<AgentArgs>,
        l: &Layers,
        release: bool,
    ) -> Result<AgentPart, ConfigError> {
        // Flags only a wrapped command can use (hidden from the agent's --help).
        let only_wrapped = ["plan", "progress_regex", "progress_total", "output_log_max"];
        if let Some(id) = only_wrapped.iter().find(|id| l.given(id)) {
            return Err(ConfigError::Invalid(format!(
                "costguard agent cannot use --{}: it runs no command of its own and cannot read \
                 its targets' output",
                id.replace('_', "-")
            )));
        }
        let idle_box = match &a.idle_box {
            None => None,
            Some(v) => {
                let flag = "idle-box".to_string();
                let origin = match a.source("idle_box") {
                    Some(ValueSource::EnvVariable) => Origin::Env {
                        flag,
                        var: "COSTGUARD_IDLE_BOX".into(),
                    },
                    _ => Origin::Flag { flag },
                };
                positive(Some(Given {
                    value: v.clone(),
                    origin,
                }))?
            }
        };
        if idle_box.is_some() && !release {
            return Err(ConfigError::Invalid(
                "--idle-box needs how to release the box: --release stop (or terminate), or --release-command CMD".into(),
            ));
        }
        Ok(AgentPart {
            exit_when_done: a.exit_when_done.unwrap_or(false),
            idle_box,
            keep_if_logged_in: a.keep_if_logged_in.unwrap_or(false),
        })
    }
}

impl Settings {
    /// Layers the file under the flags/env and validates everything (the tests' way in;
    /// `costguard run` and the agent have their own).
    #[cfg(test)]
    pub fn resolve(guard: &Guard) -> Result<Settings, ConfigError> {
        Settings::layered(&Layers::new(guard)?, false)
    }

    /// The settings of one phase of a plan: the run's, under the plan's run id, with the
    /// phase's own idle and stall watchdogs where it sets them.
    pub fn for_phase(
        &self,
        run_id: &str,
        phase: PhaseCtx,
        idle: Option<Duration>,
        stall: Option<Duration>,
    ) -> Settings {
        Settings {
            run_id: Some(run_id.to_string()),
            idle: idle.or(self.idle),
            stall: stall.or(self.stall),
            phase: Some(phase),
            ..self.clone()
        }
    }

    /// `costguard run`: as `resolve`, with `--no-preflight` recorded.
    pub fn resolve_run(guard: &Guard, no_preflight: bool) -> Result<Settings, ConfigError> {
        Settings::layered(&Layers::new(guard)?, no_preflight)
    }

    /// `costguard agent`: its own flags too; NVML required (the agent sees nothing without
    /// it); a host-memory ceiling refused (it measures no process tree).
    pub fn resolve_agent(a: &Sourced<AgentArgs>) -> Result<Settings, ConfigError> {
        let l = Layers::new(&a.guard)?;
        let base = Settings::layered(&l, false)?;
        let agent = AgentPart::resolve(a, &l, base.release.enabled())?;
        if base.max_host_mem.is_some() {
            return Err(ConfigError::Invalid(
                "--max-host-mem is not available to costguard agent: it measures no process tree (its targets are GPU processes it did not start); use --max-gpu-mem, or wrap the job with costguard run for a host-memory ceiling".into(),
            ));
        }
        let gpu = match base.gpu {
            GpuMode::Auto => GpuMode::Nvml,
            other => other,
        };
        let settings = Settings {
            exit_when_done: agent.exit_when_done,
            idle_box: agent.idle_box,
            keep_if_logged_in: agent.keep_if_logged_in,
            gpu,
            ..base
        };
        Ok(settings)
    }

    fn layered(l: &Layers, no_preflight: bool) -> Result<Settings, ConfigError> {
        let dur = |g| duration(g).map(always);
        let plan = path_of!(l, plan).map(|g| g.value);
        let (listen, listen_explicit) = listen_addr(l)?;
        let (on_exit, on_exit_timeout) = exit_hook(l)?;
        let provider_words = "auto, none, aws, gcp, azure, runpod, vast or lambda";
        check_prices(&l.file.prices)?;
        let settings = Settings {
            max_usd: conv(text!(l, max_usd), units::parse_money)?,
            usd_per_hour: conv(text!(l, usd_per_hour), units::parse_money)?,
            usd_per_kwh: conv(text!(l, usd_per_kwh), units::parse_money)?,
            provider: always(choice(text!(l, provider), Choice::parse, provider_words)?),
            price_table: path_of!(l, price_table).map(|g| g.value),
            max_wall: positive(text!(l, max_wall))?,
            kill_grace: dur(text!(l, kill_grace))?,
            warn_signal: conv(text!(l, warn_signal), units::parse_signal)?,
            warn_before: duration(text!(l, warn_before))?,
            warn_at: warn_at(l)?,
            gpu: always(choice(text!(l, gpu), gpu_mode, "auto, nvml or none")?),
            nvml_lib: path_of!(l, nvml_lib).map(|g| g.value),
            interval: always(positive(text!(l, interval))?),
            idle: positive(text!(l, idle))?,
            idle_below: always(conv(text!(l, idle_below), units::parse_percent)?),
            idle_grace: dur(text!(l, idle_grace))?,
            stall: positive(text!(l, stall))?,
            progress_regex: progress_regex(text!(l, progress_regex))?,
            progress_total: progress_total(text!(l, progress_total))?,
            heartbeat_file: path_of!(l, heartbeat_file).map(|g| g.value),
            max_gpu_mem: conv(text!(l, max_gpu_mem), units::parse_mem_limit)?,
            max_host_mem: conv(text!(l, max_host_mem), units::parse_size)?,
            output_log_max: always(conv(text!(l, output_log_max), units::parse_size)?),
            shared_gpus: switch!(l, shared_gpus),
            linger: dur(text!(l, linger))?,
            record_grace: record_grace(l)?,
            exit_when_done: false,
            idle_box: None,
            keep_if_logged_in: false,
            listen,
            listen_explicit,
            // --no-quiet wins over --quiet's other layers (clap refuses the two flags together).
            quiet: !switch!(l, no_quiet) && switch!(l, quiet),
            prices: l.file.prices.clone(),
            state_dir: path_of!(l, state_dir).map_or_else(default_state_dir, |g| g.value),
            // A plan pings at each phase's end unless the channels say otherwise.
            notify: notify::resolve(l, plan.is_some())?,
            run_id: text!(l, run_id).map(|g| g.value),
            on_exit,
            release: resolve_release(l)?,
            on_exit_timeout,
            no_preflight,
            origins: Origins::of(l),
            phase: None,
            plan,
            fleet: resolve_fleet(l)?,
        };
        settings.check_consistency(l)?;
        Ok(settings)
    }

    /// Settings that need each other; each named by its origin.
    fn check_consistency(&self, l: &Layers) -> Result<(), ConfigError> {
        let bad = |msg: String| Err(ConfigError::Invalid(msg));
        // `costguard status -x` would read it as a flag: such an id could not be named again.
        if let Some(id) = self.run_id.as_deref().filter(|id| id.starts_with('-')) {
            return bad(format!(
                "invalid {} {id:?}: a run id may not start with `-` (costguard status, \
                 logs and stop would read it as a flag)",
                l.origin("run_id")
            ));
        }
        let (signal, lead) = (l.origin("warn_signal"), l.origin("warn_before"));
        match (self.warn_signal, self.warn_before) {
            (Some(_), None) => {
                return bad(format!(
                    "{signal} needs --warn-before (how long before the kill to send it)"
                ))
            }
            (None, Some(_)) => {
                return bad(format!("{lead} needs --warn-signal (which signal to send)"))
            }
            _ => {}
        }
        if let (Some(before), Some(wall)) = (self.warn_before, self.max_wall) {
            if before >= wall {
                return bad(format!(
                    "invalid {lead} {}: the warning lead is not shorter than {} {}",
                    units::format_duration(before),
                    l.origin("max_wall"),
                    units::format_duration(wall)
                ));
            }
        }
        if self.warn_before.is_some() && self.max_wall.is_none() && self.max_usd.is_none() {
            return bad(format!(
                "{lead} needs a ceiling to warn before: give --max-usd or --max-wall"
            ));
        }
        if self.progress_total.is_some() && self.progress_regex.is_none() {
            return bad(format!(
                "{} needs --progress-regex (where the step number comes from)",
                l.origin("progress_total")
            ));
        }
        Ok(())
    }

    /// Whether the job's output must flow through costguard (progress signals read it).
    pub fn needs_output(&self) -> bool {
        self.stall.is_some() || self.progress_regex.is_some()
    }
}

fn parse_warn_at(v: &str, origin: &Origin) -> Result<Vec<f64>, ConfigError> {
    let mut out = Vec::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let pct = units::parse_percent(part).map_err(|source| ConfigError::Value {
            origin: origin.clone(),
            source,
        })?;
        if pct <= 0.0 {
            return Err(ConfigError::Invalid(format!(
                "invalid {origin} value {part:?}: a warning fraction must be above 0%"
            )));
        }
        out.push(pct / 100.0);
    }
    out.sort_by(|a, b| a.total_cmp(b));
    out.dedup();
    Ok(out)
}

/// `$XDG_STATE_HOME/costguard`, else `~/.local/state/costguard`, else a per-user /tmp dir.
pub fn default_state_dir() -> PathBuf {
    let nonempty = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(x) = nonempty("XDG_STATE_HOME") {
        return x.join("costguard");
    }
    if let Some(h) = nonempty("HOME") {
        return h.join(".local/state/costguard");
    }
    PathBuf::from(format!("/tmp/costguard-{}", nix::unistd::getuid()))
}

fn resolve_fleet(l: &Layers) -> Result<Option<crate::fleet::FleetSettings>, ConfigError> {
    let max = conv(text!(l, fleet_max_usd), units::parse_money)?;
    let url = text!(l, prometheus_url);
    let selector = text!(l, fleet_selector);
    let interval = always(positive(text!(l, fleet_interval))?);
    let query = text!(l, fleet_query);
    match (max, url) {
        (None, None) if selector.is_none() => Ok(None),
        (Some(max), Some(url)) => {
            check_url(&url.origin.to_string(), &url.value)?;
            Ok(Some(crate::fleet::FleetSettings {
                max_usd: max,
                prometheus_url: url.value,
                selector: selector.map(|s| s.value).unwrap_or_default(),
                interval,
                window: Duration::from_secs(7 * 86_400),
                query_override: query.map(|q| q.value).filter(|q| !q.trim().is_empty()),
            }))
        }
        (Some(_), None) => Err(ConfigError::Invalid(format!(
            "{} needs --prometheus-url (where the fleet's spend is read)",
            l.origin("fleet_max_usd")
        ))),
        _ => Err(ConfigError::Invalid(
            "--prometheus-url and --fleet-selector need --fleet-max-usd (the fleet's budget)"
                .into(),
        )),
    }
}

#[cfg(test)]
mod layer_tests {
    use super::*;
    use clap::Parser;

    fn guard(args: &[&str]) -> Guard {
        let mut argv = vec!["costguard"];
        argv.extend(args);
        argv.extend(["--", "true"]);
        crate::cli::Cli::try_parse_from(argv).expect("parses").guard
    }

    #[test]
    fn every_declared_flag_reaches_the_settings() {
        let g = guard(&[]);
        let l = Layers::new(&g).expect("layers");
        Settings::layered(&l, false).expect("settings");
        assert_eq!(l.unread(), Vec::<String>::new());
    }

    #[test]
    fn the_declared_defaults_are_the_settings_defaults() {
        let s = Settings::resolve(&guard(&[])).expect("settings");
        assert_eq!(s.kill_grace, Duration::from_secs(10));
        assert_eq!(s.interval, Duration::from_secs(1));
        assert_eq!(s.warn_at, vec![0.5, 0.8, 0.95]);
        assert_eq!(s.output_log_max, 64 << 20);
        assert_eq!(s.record_grace, Some(Duration::from_secs(60)));
        assert_eq!(s.on_exit_timeout, Duration::from_secs(300));
        assert_eq!(s.listen, "127.0.0.1:9947".parse().ok());
        assert!(!s.listen_explicit);
        assert_eq!(s.notify.flush, Duration::from_secs(10));
        assert_eq!(
            s.notify.pagerduty_url,
            "https://events.pagerduty.com/v2/enqueue"
        );
        let s = Settings::resolve(&guard(&["--listen", "127.0.0.1:9947"])).expect("settings");
        assert!(s.listen_explicit);
    }
}

#[cfg(test)]
mod price_tests {
    use super::*;

    #[test]
    fn a_price_over_a_billion_is_refused() {
        let prices = |p: f64| BTreeMap::from([("H100".to_string(), p)]);
        assert!(check_prices(&prices(1e9)).is_ok());
        let msg = check_prices(&prices(2e9)).expect_err("refused").to_string();
        assert_eq!(
            msg,
            "invalid price 2000000000 for \"H100\" in [prices]: that is more than $1,000,000,000 per GPU-hour"
        );
    }
}
