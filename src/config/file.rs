//! The TOML config file: its keys (the long flags without `--`, dashes or underscores, as
//! `spec` derives them), each value kept with its line, and the errors a person can fix
//! (line, key, the nearest known key).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use toml_edit::{ImDocument, Item, TableLike, Value};

use super::origin::{Given, Origin};
use super::spec::{FileType, Spec, Table};
use super::ConfigError;

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

/// A config file's values by flag id, each with its origin (the file, the line, the key).
#[derive(Debug, Default)]
pub(crate) struct FileValues {
    pub values: BTreeMap<String, Given<String>>,
    /// `[prices]`: dollars per GPU-hour by model name.
    pub prices: BTreeMap<String, f64>,
    /// `[notify.on-channel]`: each channel's kinds (still to be checked).
    pub on_channel: Vec<(String, Given<String>)>,
}

/// One key of a table, with its line.
struct At<'a> {
    path: &'a Path,
    text: &'a str,
    line: usize,
}

impl At<'_> {
    fn new<'a>(path: &'a Path, text: &'a str, span: Option<std::ops::Range<usize>>) -> At<'a> {
        let line = span.map_or(1, |s| {
            text[..s.start.min(text.len())].matches('\n').count() + 1
        });
        At { path, text, line }
    }

    /// An error at this line, quoting it (as `explain` does for the parser's own errors).
    fn error(&self, msg: impl std::fmt::Display) -> ConfigError {
        let quoted = self
            .text
            .lines()
            .nth(self.line - 1)
            .map(str::trim)
            .unwrap_or_default();
        ConfigError::Parse {
            path: self.path.to_path_buf(),
            message: format!("line {}: `{quoted}`: {msg}", self.line),
        }
    }

    fn unknown(&self, key: &str, known: &[&str], hint: &str) -> ConfigError {
        let near = known
            .iter()
            .map(|k| (strsim::levenshtein(&key.replace('_', "-"), k), *k))
            .filter(|(d, _)| *d <= 3)
            .min();
        let hint = match near {
            Some((_, k)) => format!("; did you mean `{k}`?"),
            None => format!("; {hint}"),
        };
        ConfigError::Parse {
            path: self.path.to_path_buf(),
            message: format!("line {}: unknown key `{key}`{hint}", self.line),
        }
    }

    fn origin(&self, key: String) -> Origin {
        Origin::File {
            path: self.path.to_path_buf(),
            line: self.line,
            key,
        }
    }
}

/// What a TOML item is, for a type error: "integer `10`".
fn what(item: &Item) -> String {
    match item.as_value() {
        Some(Value::String(_)) => "string".into(),
        Some(Value::Integer(i)) => format!("integer `{}`", i.value()),
        Some(Value::Float(f)) => format!("floating point `{}`", f.value()),
        Some(Value::Boolean(b)) => format!("boolean `{}`", b.value()),
        Some(Value::Datetime(d)) => format!("a date or time of day `{}`", d.value()),
        Some(Value::Array(_)) => "an array".into(),
        Some(Value::InlineTable(_)) | None => "a table".into(),
    }
}

/// A value of the file as the flag's text, checked against what the key holds.
fn leaf(item: &Item, ty: FileType, at: &At) -> Result<String, ConfigError> {
    let v = item.as_value();
    let got = match (ty, v) {
        (_, Some(Value::String(s))) if ty != FileType::Bool => Some(s.value().clone()),
        (FileType::Number, Some(Value::Integer(i))) => Some(i.value().to_string()),
        (FileType::Number, Some(Value::Float(f))) => Some(f.value().to_string()),
        (FileType::Bool, Some(Value::Boolean(b))) => Some(b.value().to_string()),
        (FileType::List, Some(Value::Array(a))) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(|l| l.join(",")),
        _ => None,
    };
    if let Some(got) = got {
        return Ok(got);
    }
    let expected = match ty {
        FileType::Text => "a string",
        FileType::Number => "a number or a string",
        FileType::Bool => "true or false",
        FileType::List => "a string or a list of strings",
    };
    let hint = match v {
        Some(Value::Integer(_) | Value::Float(_)) => {
            " (durations and sizes need their unit, in quotes: max-wall = \"10m\")"
        }
        // TOML reads an unquoted 01:30:00 as a time of day.
        Some(Value::Datetime(_)) => " (a clock duration goes in quotes: max-wall = \"01:30:00\")",
        _ => "",
    };
    Err(at.error(format!(
        "invalid type: {}, expected {expected}{hint}",
        what(item)
    )))
}

impl FileValues {
    /// Reads and checks the file: every key known, every value of its type, none given twice.
    /// `origin` names the file's own setting (`--config`, `COSTGUARD_CONFIG`) when it
    /// cannot be read.
    pub fn load(path: &Path, origin: Origin, spec: &Spec) -> Result<FileValues, ConfigError> {
        // Bounded and a regular file (links followed): /dev/zero or a FIFO is an error.
        let text =
            crate::fsutil::read_given(path, MAX_FILE).map_err(|source| ConfigError::Read {
                origin,
                path: path.to_path_buf(),
                source,
            })?;
        // The parser's own errors first, as it words them.
        if let Err(e) = toml::from_str::<toml::Table>(&text) {
            return Err(ConfigError::Parse {
                path: path.to_path_buf(),
                message: explain(&text, &e, KEYS_HINT),
            });
        }
        let doc = ImDocument::parse(text.as_str()).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
        let mut out = FileValues::default();
        out.table(doc.as_table(), Table::Top, path, &text, spec)?;
        Ok(out)
    }

    fn table(
        &mut self,
        t: &dyn TableLike,
        table: Table,
        path: &Path,
        text: &str,
        spec: &Spec,
    ) -> Result<(), ConfigError> {
        for (key, item) in t.iter() {
            let at = At::new(path, text, t.key(key).and_then(|k| k.span()));
            let name = key.replace('_', "-");
            match (table, name.as_str()) {
                (Table::Top, "notify") => {
                    let inner = item
                        .as_table_like()
                        .ok_or_else(|| at.error("`notify` is a table: [notify]"))?;
                    self.table(inner, Table::Notify, path, text, spec)?;
                }
                (Table::Top, "prices") => self.prices(item, &at)?,
                (Table::Notify, "on-channel") => self.on_channel(item, path, text)?,
                _ => self.value(key, item, table, &at, spec)?,
            }
        }
        Ok(())
    }

    fn value(
        &mut self,
        key: &str,
        item: &Item,
        table: Table,
        at: &At,
        spec: &Spec,
    ) -> Result<(), ConfigError> {
        let Some(flag) = spec.by_key(table, key) else {
            let mut known = spec.keys(table);
            known.extend(match table {
                Table::Top => ["notify", "prices"].as_slice(),
                Table::Notify => ["on-channel"].as_slice(),
            });
            return Err(at.unknown(key, &known, KEYS_HINT));
        };
        let value = leaf(item, flag.ty, at)?;
        let origin = at.origin(match table {
            Table::Top => key.to_string(),
            Table::Notify => format!("[notify] {key}"),
        });
        if let Some(earlier) = self.values.get(&flag.id) {
            return Err(at.error(format!(
                "sets {} again (already set at {})",
                flag.key_shown(),
                earlier.origin
            )));
        }
        self.values.insert(flag.id.clone(), Given { value, origin });
        Ok(())
    }

    fn prices(&mut self, item: &Item, at: &At) -> Result<(), ConfigError> {
        let t = item
            .as_table_like()
            .ok_or_else(|| at.error("`prices` is a table: [prices] \"MODEL\" = DOLLARS"))?;
        for (model, v) in t.iter() {
            let price = match v.as_value() {
                Some(Value::Integer(i)) => *i.value() as f64,
                Some(Value::Float(f)) => *f.value(),
                _ => {
                    return Err(at.error(format!(
                        "invalid type: {}, expected dollars per GPU-hour for {model:?}",
                        what(v)
                    )))
                }
            };
            self.prices.insert(model.to_string(), price);
        }
        Ok(())
    }

    fn on_channel(&mut self, item: &Item, path: &Path, text: &str) -> Result<(), ConfigError> {
        let Some(t) = item.as_table_like() else {
            let at = At::new(path, text, item.span());
            return Err(at.error("`on-channel` is a table: [notify.on-channel]"));
        };
        for (name, v) in t.iter() {
            let at = At::new(path, text, t.key(name).and_then(|k| k.span()));
            let value = leaf(v, FileType::List, &at)?;
            let origin = at.origin(format!("[notify.on-channel] {name}"));
            self.on_channel
                .push((name.to_string(), Given { value, origin }));
        }
        Ok(())
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

    fn load(text: &str) -> Result<FileValues, String> {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("c.toml");
        std::fs::write(&p, text).expect("write");
        FileValues::load(
            &p,
            Origin::Flag {
                flag: "config".into(),
            },
            &Spec::new(),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn an_unquoted_clock_duration_is_explained() {
        let msg = load("max-wall = 01:30:00\n").expect_err("refused");
        assert!(
            msg.ends_with("(a clock duration goes in quotes: max-wall = \"01:30:00\")"),
            "{msg}"
        );
    }

    #[test]
    fn quoted_clock_and_bare_durations_load_with_their_lines() {
        let f =
            load("max-wall = \"1-00:00:00\"\n\n[notify]\non = [\"killed\", \"warning:budget\"]\n")
                .expect("loads");
        assert_eq!(f.values["max_wall"].value, "1-00:00:00");
        let on = &f.values["notify_on"];
        assert_eq!(on.value, "killed,warning:budget");
        assert!(
            on.origin
                .to_string()
                .ends_with("c.toml line 4, key [notify] on"),
            "{}",
            on.origin
        );
    }

    #[test]
    fn a_key_given_twice_in_its_two_spellings_is_refused() {
        let msg = load("max-usd = 4\nmax_usd = 5\n").expect_err("refused");
        assert!(
            msg.contains("line 2: `max_usd = 5`: sets max-usd again"),
            "{msg}"
        );
        let msg = load("[notify]\nwebhok = \"x\"\n").expect_err("refused");
        assert!(
            msg.contains("line 2: unknown key `webhok`; did you mean `webhook`?"),
            "{msg}"
        );
    }
}
