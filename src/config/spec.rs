//! The settings as declared: each flag of `cli::GuardArgs` (its id, long name, variable and
//! value name) and its key in the config file, derived from it — the long flag at the top
//! level, the notification flags in `[notify]` under the names of `NOTIFY_KEYS`.

use clap::{Args, Command};

use crate::cli::GuardArgs;

/// `[notify]` keys and the flag each one sets. Every other key of the file is a long flag.
const NOTIFY_KEYS: [(&str, &str); 17] = [
    ("slack-webhook", "slack-webhook"),
    ("slack-webhook-file", "slack-webhook-file"),
    ("webhook", "webhook"),
    ("webhook-file", "webhook-file"),
    ("alertmanager", "alertmanager"),
    ("pagerduty-routing-key", "pagerduty-routing-key"),
    ("pagerduty-routing-key-file", "pagerduty-routing-key-file"),
    ("pagerduty-url", "pagerduty-url"),
    ("command", "notify-command"),
    ("email-to", "email-to"),
    ("smtp-url", "smtp-url"),
    ("smtp-password-file", "smtp-password-file"),
    ("email-from", "email-from"),
    ("smtp-ca-file", "smtp-ca-file"),
    ("on", "notify-on"),
    ("flush", "notify-flush"),
    ("timeout", "notify-timeout"),
];

/// Flags with no key in the file: the file itself, one run's own id (a shared file would make
/// every run resume the same one), and the flags that overrule the file.
const NOT_IN_FILE: [&str; 4] = ["config", "run-id", "no-listen", "no-quiet"];

/// The table of the file a key is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    Top,
    Notify,
}

/// What the file may hold for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileType {
    /// A string: durations, paths, URLs, commands (a bare number is refused: `max-wall = 10`
    /// has no unit).
    Text,
    /// A number or a string: amounts, rates, sizes, percentages, counts, signals.
    Number,
    /// true or false.
    Bool,
    /// A string or a list of strings, joined with commas.
    List,
}

/// One flag of `GuardArgs` as the layers see it.
#[derive(Debug, Clone)]
pub(crate) struct Flag {
    /// clap's id: the field's name (`max_wall`).
    pub id: String,
    /// The long flag without `--` (`max-wall`).
    pub long: String,
    pub env: Option<String>,
    pub file: Option<(Table, String)>,
    pub ty: FileType,
}

impl Flag {
    /// The key as a person finds it in the file: `max-wall`, `[notify] webhook`.
    pub fn key_shown(&self) -> String {
        match &self.file {
            Some((Table::Notify, k)) => format!("[notify] {k}"),
            Some((Table::Top, k)) => k.clone(),
            None => format!("--{}", self.long),
        }
    }
}

/// Every flag of `GuardArgs`, read from clap's own definition.
#[derive(Debug)]
pub(crate) struct Spec {
    pub flags: Vec<Flag>,
}

fn file_type(a: &clap::Arg) -> FileType {
    let boolish = a.get_num_args().is_some_and(|n| n.min_values() == 0);
    if !a.get_action().takes_values() || boolish {
        return FileType::Bool;
    }
    let name = a
        .get_value_names()
        .and_then(|n| n.first())
        .map(|n| n.as_str())
        .unwrap_or_default();
    match name {
        "AMOUNT" | "RATE" | "PRICE" | "PCT" | "N" | "SIZE" | "SIZE|PCT" | "SIG" => FileType::Number,
        "KINDS" | "ADDR[,ADDR]" => FileType::List,
        _ => FileType::Text,
    }
}

impl Spec {
    pub fn new() -> Spec {
        let cmd = GuardArgs::augment_args(Command::new("costguard"));
        let flags = cmd
            .get_arguments()
            .filter_map(|a| {
                let long = a.get_long()?.to_string();
                let notify = NOTIFY_KEYS.iter().find(|(_, f)| *f == long);
                let file = match notify {
                    Some((k, _)) => Some((Table::Notify, k.to_string())),
                    None if NOT_IN_FILE.contains(&long.as_str()) => None,
                    None => Some((Table::Top, long.clone())),
                };
                Some(Flag {
                    id: a.get_id().to_string(),
                    env: a.get_env().map(|e| e.to_string_lossy().into_owned()),
                    ty: file_type(a),
                    file,
                    long,
                })
            })
            .collect();
        Spec { flags }
    }

    /// The flag with clap id `id`. The ids are the field names of `GuardArgs`, which the
    /// `text!`/`path!`/`switch!` macros pass: an unknown one is a bug, caught by the tests.
    pub fn by_id(&self, id: &str) -> &Flag {
        self.flags
            .iter()
            .find(|f| f.id == id)
            .unwrap_or_else(|| panic!("no flag with id {id}"))
    }

    /// The flag a file key sets (`_` and `-` alike).
    pub fn by_key(&self, table: Table, key: &str) -> Option<&Flag> {
        let key = key.replace('_', "-");
        self.flags.iter().find(|f| {
            f.file
                .as_ref()
                .is_some_and(|(t, k)| *t == table && *k == key)
        })
    }

    /// The keys of a table, for the nearest-key hint.
    pub fn keys(&self, table: Table) -> Vec<&str> {
        self.flags
            .iter()
            .filter_map(|f| match &f.file {
                Some((t, k)) if *t == table => Some(k.as_str()),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_notify_key_names_a_flag_and_the_file_types_follow_the_value_names() {
        let spec = Spec::new();
        for (key, flag) in NOTIFY_KEYS {
            let f = spec.by_key(Table::Notify, key).expect(key);
            assert_eq!(f.long, flag);
            assert!(spec.by_key(Table::Top, flag).is_none(), "{flag} at the top");
        }
        let ty = |key: &str| spec.by_key(Table::Top, key).expect(key).ty;
        assert_eq!(ty("max_wall"), FileType::Text);
        assert_eq!(ty("max-usd"), FileType::Number);
        assert_eq!(ty("quiet"), FileType::Bool);
        assert_eq!(ty("shared-gpus"), FileType::Bool);
        assert_eq!(
            spec.by_key(Table::Notify, "email_to").expect("email-to").ty,
            FileType::List
        );
        assert!(spec.by_key(Table::Top, "config").is_none());
        assert_eq!(spec.by_id("notify_on").key_shown(), "[notify] on");
    }
}
