//! The TOML config file: its keys (the long flags without `--`, dashes or underscores) and
//! the errors a person can fix (line, key, the nearest known key).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;
use crate::notify::config::NotifyFile;

/// A number or a string in the TOML file: `max_usd = 40` and `max_usd = "$40"` both work.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Int(i64),
    Float(f64),
    Str(String),
}

impl Scalar {
    pub(crate) fn into_string(self) -> String {
        match self {
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Str(s) => s,
        }
    }
}

/// The TOML config file. Unknown keys are errors, so a typo never silently drops a ceiling.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    #[serde(alias = "max_usd")]
    pub max_usd: Option<Scalar>,
    #[serde(alias = "usd_per_hour")]
    pub usd_per_hour: Option<Scalar>,
    pub provider: Option<String>,
    #[serde(alias = "price_table")]
    pub price_table: Option<PathBuf>,
    #[serde(alias = "usd_per_kwh")]
    pub usd_per_kwh: Option<Scalar>,
    #[serde(alias = "max_wall")]
    pub max_wall: Option<String>,
    #[serde(alias = "kill_grace")]
    pub kill_grace: Option<String>,
    #[serde(alias = "warn_signal")]
    pub warn_signal: Option<Scalar>,
    #[serde(alias = "warn_before")]
    pub warn_before: Option<String>,
    #[serde(alias = "warn_at")]
    pub warn_at: Option<String>,
    pub gpu: Option<String>,
    #[serde(alias = "nvml_lib")]
    pub nvml_lib: Option<PathBuf>,
    pub interval: Option<String>,
    pub idle: Option<String>,
    #[serde(alias = "idle_below")]
    pub idle_below: Option<Scalar>,
    #[serde(alias = "idle_grace")]
    pub idle_grace: Option<String>,
    pub stall: Option<String>,
    #[serde(alias = "progress_regex")]
    pub progress_regex: Option<String>,
    #[serde(alias = "progress_total")]
    pub progress_total: Option<Scalar>,
    #[serde(alias = "heartbeat_file")]
    pub heartbeat_file: Option<PathBuf>,
    #[serde(alias = "max_gpu_mem")]
    pub max_gpu_mem: Option<Scalar>,
    #[serde(alias = "max_host_mem")]
    pub max_host_mem: Option<Scalar>,
    #[serde(alias = "output_log_max")]
    pub output_log_max: Option<Scalar>,
    #[serde(alias = "shared_gpus")]
    pub shared_gpus: Option<bool>,
    pub linger: Option<String>,
    #[serde(alias = "record_grace")]
    pub record_grace: Option<String>,
    pub listen: Option<String>,
    pub quiet: Option<bool>,
    /// Per-model price overrides in dollars per GPU-hour: `[prices] "NVIDIA H100 80GB HBM3" = 2.5`.
    #[serde(default)]
    pub prices: BTreeMap<String, f64>,
    #[serde(alias = "state_dir")]
    pub state_dir: Option<PathBuf>,
    #[serde(alias = "on_exit")]
    pub on_exit: Option<String>,
    #[serde(alias = "on_exit_timeout")]
    pub on_exit_timeout: Option<String>,
    #[serde(alias = "fleet_max_usd")]
    pub fleet_max_usd: Option<Scalar>,
    #[serde(alias = "prometheus_url")]
    pub prometheus_url: Option<String>,
    #[serde(alias = "fleet_selector")]
    pub fleet_selector: Option<String>,
    #[serde(alias = "fleet_interval")]
    pub fleet_interval: Option<String>,
    #[serde(alias = "fleet_query")]
    pub fleet_query: Option<String>,
    pub plan: Option<PathBuf>,
    pub release: Option<String>,
    #[serde(alias = "release_command")]
    pub release_command: Option<String>,
    #[serde(alias = "release_on")]
    pub release_on: Option<String>,
    #[serde(alias = "release_retry_for")]
    pub release_retry_for: Option<String>,
    #[serde(alias = "allow_side_effects")]
    pub allow_side_effects: Option<bool>,
    #[serde(default)]
    pub notify: NotifyFile,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        // Bounded and a regular file (links followed): /dev/zero or a FIFO is an error.
        let text =
            crate::fsutil::read_given(path, MAX_FILE).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: explain(&text, &e, KEYS_HINT),
        })
    }
}

/// The largest config (or plan) file read: far more than any real one.
pub(crate) const MAX_FILE: u64 = 1 << 20;

const KEYS_HINT: &str = "the keys are the long flags without `--` (costguard --help)";

/// A TOML error as a person fixes it: the line, the key, and for an unknown key the nearest
/// known one (instead of the ~60 accepted names, twice), else `keys_hint`.
pub(crate) fn explain(text: &str, e: &toml::de::Error, keys_hint: &str) -> String {
    let line_no = e
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    let line = line_no
        .and_then(|n| text.lines().nth(n - 1))
        .map(str::trim)
        .unwrap_or_default();
    let msg = e.message().trim().replace('\n', "; ");
    let msg = msg.as_str();
    let at = line_no.map(|n| format!("line {n}: ")).unwrap_or_default();
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let key = rest.split('`').next().unwrap_or_default();
        let known: Vec<&str> = msg
            .split('`')
            .skip(3)
            .step_by(2)
            .filter(|k| !k.contains('_'))
            .collect();
        let near = known
            .iter()
            .map(|k| (strsim::levenshtein(key, k), *k))
            .filter(|(d, _)| *d <= 3)
            .min();
        let hint = match near {
            Some((_, k)) => format!("; did you mean `{k}`?"),
            None => format!("; {keys_hint}"),
        };
        return format!("{at}unknown key `{key}`{hint}");
    }
    let mut out = format!("{at}`{line}`: {msg}");
    if msg.contains("invalid type: integer") || msg.contains("invalid type: floating point") {
        out += " (durations and sizes need their unit, in quotes: max-wall = \"10m\")";
    } else if msg.contains("invalid type: map") && line.contains(':') {
        // TOML reads an unquoted 01:30:00 as a time of day.
        out += " (a clock duration goes in quotes: max-wall = \"01:30:00\")";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_error(text: &str) -> String {
        let e = toml::from_str::<FileConfig>(text).expect_err("refused");
        explain(text, &e, KEYS_HINT)
    }

    #[test]
    fn an_unquoted_clock_duration_is_explained() {
        let msg = parse_error("max-wall = 01:30:00\n");
        assert!(
            msg.ends_with("(a clock duration goes in quotes: max-wall = \"01:30:00\")"),
            "{msg}"
        );
    }

    #[test]
    fn quoted_clock_and_bare_durations_load() {
        let f: FileConfig =
            toml::from_str("max-wall = \"1-00:00:00\"\nkill-grace = \"5\"\n").expect("loads");
        assert_eq!(f.max_wall.as_deref(), Some("1-00:00:00"));
        assert_eq!(f.kill_grace.as_deref(), Some("5"));
    }
}
