//! Where a setting's value came from, carried with the value to every error about it.

use std::fmt;
use std::path::PathBuf;

/// The layer that gave a value: a flag, its environment variable, a config file key, or the
/// default declared with the flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `--max-wall` on the command line.
    Flag { flag: String },
    /// `COSTGUARD_MAX_WALL`, which sets `--max-wall`.
    Env { flag: String, var: String },
    /// A key of the `--config` file.
    File {
        path: PathBuf,
        line: usize,
        /// As a person finds it in the file: `max-wall`, `[notify] webhook`.
        key: String,
    },
    /// The default declared with the flag.
    Default { flag: String },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag { flag } => write!(f, "--{flag}"),
            Origin::Env { flag, var } => write!(f, "--{flag} ({var})"),
            Origin::File { path, line, key } => {
                write!(f, "config file {} line {line}, key {key}", path.display())
            }
            Origin::Default { flag } => write!(f, "the default of --{flag}"),
        }
    }
}

impl Origin {
    /// The setting with `value`, as the person gave it: `--max-usd $5.00`, `--max-usd $5.00
    /// (COSTGUARD_MAX_USD)`, `max-usd = $5.00 (config file costguard.toml line 4)`.
    pub fn with_value(&self, value: &str) -> String {
        match self {
            Origin::Flag { flag } => format!("--{flag} {value}"),
            Origin::Env { flag, var } => format!("--{flag} {value} ({var})"),
            Origin::File { path, line, key } => {
                format!(
                    "{key} = {value} (config file {} line {line})",
                    path.display()
                )
            }
            Origin::Default { flag } => format!("--{flag} {value} (the default)"),
        }
    }
}

/// A value with its origin.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Given<T> {
    pub value: T,
    pub origin: Origin,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_origin_reads_as_a_person_finds_it() {
        let shown = |o: Origin| o.to_string();
        assert_eq!(
            shown(Origin::Flag {
                flag: "webhook".into()
            }),
            "--webhook"
        );
        assert_eq!(
            shown(Origin::Env {
                flag: "webhook".into(),
                var: "COSTGUARD_WEBHOOK".into()
            }),
            "--webhook (COSTGUARD_WEBHOOK)"
        );
        assert_eq!(
            shown(Origin::File {
                path: "costguard.toml".into(),
                line: 4,
                key: "[notify] webhook".into()
            }),
            "config file costguard.toml line 4, key [notify] webhook"
        );
    }
}
