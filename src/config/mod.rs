//! Settings layered as built-in defaults < config file < environment < flags, validated once.
//!
//! clap already gives flags precedence over the environment; this module fills what neither
//! gave from the TOML file, then turns every string into a checked value. Any error names the
//! bad value and where it came from, and maps to exit 125 before anything starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;
use regex::Regex;

use crate::cli::GuardArgs;
use crate::notify::config::resolve_notify;
use crate::notify::NotifySettings;
use crate::units::{self, MemLimit, UnitError};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9947";

mod file;
pub(crate) use file::{explain, MAX_FILE};
pub use file::{FileConfig, Scalar};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{source} (from {origin})")]
    Value {
        origin: String,
        #[source]
        source: UnitError,
    },
    #[error("cannot read --config {path}: {source}")]
    Read {
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

/// Picks flag/env (already merged by clap) over the file value, and remembers the origin.
pub(crate) fn pick(
    cli: &Option<String>,
    file: Option<String>,
    flag: &str,
) -> Option<(String, String)> {
    match (cli, file) {
        (Some(v), _) => Some((v.clone(), format!("--{flag}"))),
        (None, Some(v)) => Some((v, format!("config key {flag}"))),
        (None, None) => None,
    }
}

/// How an error names a flag's value: `--flag`, or `--flag (COSTGUARD_FLAG)` when the
/// environment gave it (clap merged the two; the variable holding this very value tells).
pub(crate) fn flag_origin(flag: &str, value: impl AsRef<std::ffi::OsStr>) -> String {
    let var = format!("COSTGUARD_{}", flag.to_ascii_uppercase().replace('-', "_"));
    if std::env::var_os(&var).is_some_and(|v| v == value.as_ref()) {
        format!("--{flag} ({var})")
    } else {
        format!("--{flag}")
    }
}

/// `pick` for a URL, the file's value named by its `key` (`notify.pagerduty-url`).
pub(crate) fn pick_url(
    cli: &Option<String>,
    file: Option<String>,
    flag: &str,
    key: &str,
) -> Option<(String, String)> {
    match (cli, file) {
        (Some(v), _) => Some((v.clone(), flag_origin(flag, v))),
        (None, Some(v)) => Some((v, format!("config key {key}"))),
        (None, None) => None,
    }
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

pub(crate) fn conv<T>(
    v: Option<(String, String)>,
    parse: impl Fn(&str) -> Result<T, UnitError>,
) -> Result<Option<T>, ConfigError> {
    v.map(|(s, origin)| parse(&s).map_err(|source| ConfigError::Value { origin, source }))
        .transpose()
}

pub(crate) fn positive(d: Option<Duration>, flag: &str) -> Result<Option<Duration>, ConfigError> {
    match d {
        Some(d) if d.is_zero() => Err(ConfigError::Invalid(format!(
            "invalid --{flag} 0s: must be greater than zero"
        ))),
        other => Ok(other),
    }
}

type Picked = Option<(String, String)>;

fn gpu_mode(p: Picked) -> Result<GpuMode, ConfigError> {
    let Some((v, origin)) = p else {
        return Ok(GpuMode::Auto);
    };
    match v.as_str() {
        "auto" => Ok(GpuMode::Auto),
        "nvml" => Ok(GpuMode::Nvml),
        "none" => Ok(GpuMode::None),
        _ => Err(ConfigError::Invalid(format!(
            "invalid {origin} value {v:?}: expected auto, nvml or none"
        ))),
    }
}

fn provider_choice(p: Picked) -> Result<crate::cloud::Choice, ConfigError> {
    let Some((v, origin)) = p else {
        return Ok(crate::cloud::Choice::Auto);
    };
    crate::cloud::Choice::parse(&v).ok_or_else(|| {
        ConfigError::Invalid(format!(
            "invalid {origin} value {v:?}: expected auto, none, aws, gcp, azure, runpod, vast or lambda"
        ))
    })
}

fn progress_regex(p: Picked) -> Result<Option<Regex>, ConfigError> {
    let Some((v, origin)) = p else {
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

fn progress_total(p: Picked) -> Result<Option<f64>, ConfigError> {
    let Some((v, origin)) = p else {
        return Ok(None);
    };
    match v.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 => Ok(Some(n)),
        _ => Err(ConfigError::Invalid(format!(
            "invalid {origin} {v:?}: expected a positive number of steps"
        ))),
    }
}

/// The listen address and whether the user chose it (a default that is taken is a notice).
fn listen_addr(p: Picked) -> Result<(Option<SocketAddr>, bool), ConfigError> {
    let Some((v, origin)) = p else {
        return Ok((DEFAULT_LISTEN.parse().ok(), false));
    };
    let addr = v.parse::<SocketAddr>().map_err(|_| {
        ConfigError::Invalid(format!(
            "invalid {origin} {v:?}: expected HOST:PORT such as 127.0.0.1:9947"
        ))
    })?;
    Ok((Some(addr), true))
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
fn resolve_release(
    args: &GuardArgs,
    f: &mut FileConfig,
) -> Result<crate::cloud::release::Settings, ConfigError> {
    use crate::cloud::release::{Mode, On, Settings};
    let allowed = args.allow_side_effects || f.allow_side_effects.unwrap_or(false);
    let mode = match pick(&args.release, f.release.take(), "release") {
        None => Mode::None,
        Some((v, origin)) => Mode::parse(&v).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "invalid {origin} value {v:?}: expected none, stop or terminate"
            ))
        })?,
    };
    let on = match pick(&args.release_on, f.release_on.take(), "release-on") {
        None => On::Kill,
        Some((v, origin)) => On::parse(&v).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "invalid {origin} value {v:?}: expected kill or end"
            ))
        })?,
    };
    let retry_for = conv(
        pick(
            &args.release_retry_for,
            f.release_retry_for.take(),
            "release-retry-for",
        ),
        units::parse_duration,
    )?
    .unwrap_or(Duration::from_secs(120));
    if mode == Mode::Terminate && !allowed {
        return Err(ConfigError::Invalid(
            "--release terminate destroys the box and its disks: it needs --allow-side-effects too (or use --release stop)".into(),
        ));
    }
    let command = args
        .release_command
        .clone()
        .or(f.release_command.take())
        .filter(|c| !c.trim().is_empty());
    Ok(Settings {
        mode,
        command,
        on,
        retry_for,
    })
}

/// The exit hook, refused when it ships results somewhere unless side effects are allowed.
fn on_exit(cmd: Option<String>, allowed: bool) -> Result<Option<String>, ConfigError> {
    let Some(cmd) = cmd.filter(|c| !c.trim().is_empty()) else {
        return Ok(None);
    };
    if let (false, Some(pattern)) = (allowed, crate::hook::side_effect(&cmd)) {
        return Err(ConfigError::Invalid(format!(
            "refusing --on-exit {cmd:?}: it matches {pattern:?}, which pushes, deploys, publishes or sends; an exit hook should leave results somewhere known, not ship them (pass --allow-side-effects to run it anyway)"
        )));
    }
    Ok(Some(cmd))
}

/// The exit hook (checked for side effects) and how long it may run.
fn exit_hook(
    args: &GuardArgs,
    file: &mut FileConfig,
) -> Result<(Option<String>, Duration), ConfigError> {
    let cmd = on_exit(
        args.on_exit.clone().or(file.on_exit.take()),
        args.allow_side_effects || file.allow_side_effects.unwrap_or(false),
    )?;
    let timeout = positive(
        conv(
            pick(
                &args.on_exit_timeout,
                file.on_exit_timeout.take(),
                "on-exit-timeout",
            ),
            units::parse_duration,
        )?,
        "on-exit-timeout",
    )?
    .unwrap_or(Duration::from_secs(300));
    Ok((cmd, timeout))
}

/// How the job is priced: an explicit rate, energy, and what to ask the box.
struct Rates {
    usd_per_hour: Option<f64>,
    usd_per_kwh: Option<f64>,
    provider: crate::cloud::Choice,
    price_table: Option<PathBuf>,
}

impl Rates {
    fn resolve(args: &GuardArgs, file: &mut FileConfig) -> Result<Rates, ConfigError> {
        let s = |x: Option<Scalar>| x.map(Scalar::into_string);
        let money = |v: &str| units::parse_money(v);
        Ok(Rates {
            usd_per_hour: conv(
                pick(
                    &args.usd_per_hour,
                    s(file.usd_per_hour.take()),
                    "usd-per-hour",
                ),
                money,
            )?,
            usd_per_kwh: conv(
                pick(&args.usd_per_kwh, s(file.usd_per_kwh.take()), "usd-per-kwh"),
                money,
            )?,
            provider: provider_choice(pick(&args.provider, file.provider.take(), "provider"))?,
            price_table: args.price_table.clone().or(file.price_table.take()),
        })
    }
}

/// The watchdogs' settings: sampling, idle, stall, progress and memory ceilings.
struct Watchdogs {
    interval: Duration,
    idle: Option<Duration>,
    idle_below: f64,
    idle_grace: Duration,
    stall: Option<Duration>,
    progress_regex: Option<Regex>,
    progress_total: Option<f64>,
    max_gpu_mem: Option<MemLimit>,
    max_host_mem: Option<u64>,
    output_log_max: u64,
    linger: Duration,
    record_grace: Option<Duration>,
}

impl Watchdogs {
    fn resolve(args: &GuardArgs, file: &mut FileConfig) -> Result<Watchdogs, ConfigError> {
        let s = |x: Option<Scalar>| x.map(Scalar::into_string);
        let dur = |v: &str| units::parse_duration(v);
        let interval = positive(
            conv(pick(&args.interval, file.interval.take(), "interval"), dur)?,
            "interval",
        )?
        .unwrap_or(Duration::from_secs(1));
        let idle = positive(
            conv(pick(&args.idle, file.idle.take(), "idle"), dur)?,
            "idle",
        )?;
        let idle_below = conv(
            pick(&args.idle_below, s(file.idle_below.take()), "idle-below"),
            units::parse_percent,
        )?
        .unwrap_or(5.0);
        let idle_grace = conv(
            pick(&args.idle_grace, file.idle_grace.take(), "idle-grace"),
            dur,
        )?
        .unwrap_or(Duration::ZERO);
        let stall = positive(
            conv(pick(&args.stall, file.stall.take(), "stall"), dur)?,
            "stall",
        )?;
        let progress_regex = progress_regex(pick(
            &args.progress_regex,
            file.progress_regex.take(),
            "progress-regex",
        ))?;
        let progress_total = progress_total(pick(
            &args.progress_total,
            s(file.progress_total.take()),
            "progress-total",
        ))?;
        let max_gpu_mem = conv(
            pick(&args.max_gpu_mem, s(file.max_gpu_mem.take()), "max-gpu-mem"),
            units::parse_mem_limit,
        )?;
        let max_host_mem = conv(
            pick(
                &args.max_host_mem,
                s(file.max_host_mem.take()),
                "max-host-mem",
            ),
            units::parse_size,
        )?;
        let output_log_max = conv(
            pick(
                &args.output_log_max,
                s(file.output_log_max.take()),
                "output-log-max",
            ),
            units::parse_size,
        )?
        .unwrap_or(64 << 20);
        let linger = conv(
            pick(&args.linger, file.linger.take(), "linger"),
            units::parse_duration,
        )?
        .unwrap_or(Duration::ZERO);
        let record_grace = match pick(&args.record_grace, file.record_grace.take(), "record-grace")
        {
            Some((v, _)) if v.trim() == "off" => None,
            p => positive(conv(p, units::parse_duration)?, "record-grace")?
                .or(Some(Duration::from_secs(60))),
        };
        Ok(Watchdogs {
            record_grace,
            linger,
            output_log_max,
            interval,
            idle,
            idle_below,
            idle_grace,
            stall,
            progress_regex,
            progress_total,
            max_gpu_mem,
            max_host_mem,
        })
    }
}

impl Settings {
    /// Layers the file under the flags/env and validates everything.
    pub fn resolve(args: &GuardArgs) -> Result<Settings, ConfigError> {
        let mut file = match &args.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        let w = Watchdogs::resolve(args, &mut file)?;
        let fleet = resolve_fleet(args, &mut file)?;
        let r = Rates::resolve(args, &mut file)?;
        let release = resolve_release(args, &mut file)?;
        let (on_exit, on_exit_timeout) = exit_hook(args, &mut file)?;
        let s = |x: Option<Scalar>| x.map(Scalar::into_string);
        let money = |v: &str| units::parse_money(v);
        let dur = |v: &str| units::parse_duration(v);

        let max_usd = conv(pick(&args.max_usd, s(file.max_usd), "max-usd"), money)?;
        let max_wall = positive(
            conv(pick(&args.max_wall, file.max_wall, "max-wall"), dur)?,
            "max-wall",
        )?;
        let kill_grace = conv(pick(&args.kill_grace, file.kill_grace, "kill-grace"), dur)?
            .unwrap_or(Duration::from_secs(10));
        let warn_signal = conv(
            pick(&args.warn_signal, s(file.warn_signal), "warn-signal"),
            units::parse_signal,
        )?;
        let warn_before = conv(
            pick(&args.warn_before, file.warn_before, "warn-before"),
            dur,
        )?;
        let warn_at = match pick(&args.warn_at, file.warn_at, "warn-at") {
            None => vec![0.5, 0.8, 0.95],
            Some((v, origin)) => parse_warn_at(&v, &origin)?,
        };
        let gpu = gpu_mode(pick(&args.gpu, file.gpu.take(), "gpu"))?;
        let (listen, listen_explicit) = if args.no_listen {
            (None, false)
        } else {
            listen_addr(pick(&args.listen, file.listen, "listen"))?
        };
        // --quiet and --no-quiet win over the file.
        let quiet = (args.quiet || file.quiet.unwrap_or(false)) && !args.no_quiet;
        check_prices(&file.prices)?;

        let state_dir = args
            .state_dir
            .clone()
            .or(file.state_dir)
            .unwrap_or_else(default_state_dir);
        // A plan pings at each phase's end unless the channels say otherwise.
        let has_plan = args.plan.is_some() || file.plan.is_some();
        let notify = resolve_notify(args, file.notify, has_plan)?;

        let settings = Settings {
            max_usd,
            usd_per_hour: r.usd_per_hour,
            usd_per_kwh: r.usd_per_kwh,
            provider: r.provider,
            price_table: r.price_table,
            max_wall,
            kill_grace,
            warn_signal,
            warn_before,
            warn_at,
            gpu,
            nvml_lib: args.nvml_lib.clone().or(file.nvml_lib),
            interval: w.interval,
            idle: w.idle,
            idle_below: w.idle_below,
            idle_grace: w.idle_grace,
            stall: w.stall,
            progress_regex: w.progress_regex,
            progress_total: w.progress_total,
            heartbeat_file: args.heartbeat_file.clone().or(file.heartbeat_file),
            max_gpu_mem: w.max_gpu_mem,
            max_host_mem: w.max_host_mem,
            output_log_max: w.output_log_max,
            shared_gpus: args.shared_gpus.or(file.shared_gpus).unwrap_or(false),
            linger: w.linger,
            record_grace: w.record_grace,
            exit_when_done: false,
            idle_box: None,
            keep_if_logged_in: false,
            listen,
            listen_explicit,
            quiet,
            prices: file.prices,
            state_dir,
            notify,
            run_id: args.run_id.clone(),
            on_exit,
            release,
            on_exit_timeout,
            no_preflight: false,
            phase: None,
            plan: args.plan.clone().or(file.plan),
            fleet,
        };
        settings.check_consistency()?;
        Ok(settings)
    }

    fn check_consistency(&self) -> Result<(), ConfigError> {
        // `costguard status -x` would read it as a flag: such an id could not be named again.
        if let Some(id) = self.run_id.as_deref().filter(|id| id.starts_with('-')) {
            return Err(ConfigError::Invalid(format!(
                "invalid --run-id {id:?}: a run id may not start with `-` (costguard status, \
                 logs and stop would read it as a flag)"
            )));
        }
        match (self.warn_signal, self.warn_before) {
            (Some(_), None) => {
                return Err(ConfigError::Invalid(
                    "--warn-signal needs --warn-before (how long before the kill to send it)"
                        .into(),
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid(
                    "--warn-before needs --warn-signal (which signal to send)".into(),
                ))
            }
            _ => {}
        }
        if let (Some(lead), Some(wall)) = (self.warn_before, self.max_wall) {
            if lead >= wall {
                return Err(ConfigError::Invalid(format!(
                    "invalid --warn-before {}: the warning lead is not shorter than --max-wall {}",
                    units::format_duration(lead),
                    units::format_duration(wall)
                )));
            }
        }
        if self.warn_before.is_some() && self.max_wall.is_none() && self.max_usd.is_none() {
            return Err(ConfigError::Invalid(
                "--warn-before needs a ceiling to warn before: give --max-usd or --max-wall".into(),
            ));
        }
        if self.progress_total.is_some() && self.progress_regex.is_none() {
            return Err(ConfigError::Invalid(
                "--progress-total needs --progress-regex (where the step number comes from)".into(),
            ));
        }
        Ok(())
    }

    /// Whether the job's output must flow through costguard (progress signals read it).
    pub fn needs_output(&self) -> bool {
        self.stall.is_some() || self.progress_regex.is_some()
    }
}

fn parse_warn_at(v: &str, origin: &str) -> Result<Vec<f64>, ConfigError> {
    let mut out = Vec::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let pct = units::parse_percent(part).map_err(|source| ConfigError::Value {
            origin: origin.to_string(),
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

fn resolve_fleet(
    args: &GuardArgs,
    f: &mut FileConfig,
) -> Result<Option<crate::fleet::FleetSettings>, ConfigError> {
    let max = conv(
        pick(
            &args.fleet_max_usd,
            f.fleet_max_usd.take().map(Scalar::into_string),
            "fleet-max-usd",
        ),
        units::parse_money,
    )?;
    let url = pick_url(
        &args.prometheus_url,
        f.prometheus_url.take(),
        "prometheus-url",
        "prometheus-url",
    );
    let selector = pick(
        &args.fleet_selector,
        f.fleet_selector.take(),
        "fleet-selector",
    );
    let interval = positive(
        conv(
            pick(
                &args.fleet_interval,
                f.fleet_interval.take(),
                "fleet-interval",
            ),
            units::parse_duration,
        )?,
        "fleet-interval",
    )?;
    match (max, url) {
        (None, None) if selector.is_none() => Ok(None),
        (Some(max), Some((url, origin))) => {
            check_url(&origin, &url)?;
            Ok(Some(crate::fleet::FleetSettings {
                max_usd: max,
                prometheus_url: url,
                selector: selector.map(|s| s.0).unwrap_or_default(),
                interval: interval.unwrap_or(Duration::from_secs(15)),
                window: Duration::from_secs(7 * 86_400),
                query_override: args
                    .fleet_query
                    .clone()
                    .or(f.fleet_query.take())
                    .filter(|q| !q.trim().is_empty()),
            }))
        }
        (Some(_), None) => Err(ConfigError::Invalid(
            "--fleet-max-usd needs --prometheus-url (where the fleet's spend is read)".into(),
        )),
        _ => Err(ConfigError::Invalid(
            "--prometheus-url and --fleet-selector need --fleet-max-usd (the fleet's budget)"
                .into(),
        )),
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
