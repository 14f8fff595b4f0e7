//! Plans: a TOML file of ordered phases run one after another under one run id, one budget
//! and one ledger. Each phase is a session of the run with its own caps; a watchdog kill of a
//! phase is recorded and the plan goes on (`on_kill = "continue"`, the default) or stops
//! (`"abort"`). A phase that fails by itself, a stop, or the run's own ceiling ends the plan.
//! Started again with the same `--run-id`, a plan skips the phases its ledger records and
//! resumes the rest with the spend carried over.
//!
//! A matrix: `for_each = { arch = ["A", "B"] }` makes one phase per value (two keys: their
//! product, in the order written), `steps = { seed = [1, 2, 3] }` runs the command once per
//! value, in order, inside the phase (its caps and `expected` cover all its steps; a killed
//! or failed step ends the phase). `{arch}` and `{seed}` are replaced in `name` and
//! `command` (single-quoted in a shell line).
//!
//! ```toml
//! on_kill = "continue"
//! [[phase]]
//! name = "prep"
//! command = "python prep.py"        # a shell line, or ["python", "prep.py"]
//! max_wall = "10m"
//! max_usd = 5
//! idle = "5m"
//! stall = "10m"
//! expected = "8m"
//! on_kill = "abort"
//!
//! [[phase]]
//! name = "{arch}"
//! for_each = { arch = ["LSTM", "BiGRU"] }
//! steps = { seed = [1, 2, 3] }
//! command = "python train.py --arch {arch} --seed {seed}"
//! max_wall = "60m"
//! ```

use std::ffi::OsString;
use std::path::Path;

use serde::Deserialize;

use super::session::{run_session, GuardError};
use crate::config::{PhaseCtx, Scalar, Settings};
use crate::units;

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum CommandSpec {
    Line(String),
    Argv(Vec<String>),
}

type Matrix = toml::Spanned<toml::Table>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct PhaseFile {
    name: String,
    command: CommandSpec,
    #[serde(alias = "for_each")]
    for_each: Option<Matrix>,
    steps: Option<Matrix>,
    #[serde(alias = "max_wall")]
    max_wall: Option<String>,
    #[serde(alias = "max_usd")]
    max_usd: Option<Scalar>,
    idle: Option<String>,
    stall: Option<String>,
    expected: Option<String>,
    #[serde(alias = "on_kill")]
    on_kill: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct PlanFile {
    #[serde(alias = "on_kill")]
    on_kill: Option<String>,
    #[serde(default)]
    phase: Vec<PhaseFile>,
}

/// A validated phase.
pub struct Phase {
    pub ctx: PhaseCtx,
    /// The command of a phase without steps.
    pub command: Vec<OsString>,
    /// Each step's command (its value in `ctx.step_values`), run in order in one job.
    pub steps: Vec<Vec<OsString>>,
    pub idle: Option<std::time::Duration>,
    pub stall: Option<std::time::Duration>,
}

impl Phase {
    /// What the phase's job runs: its command, or its steps one after another, each first
    /// writing its number into `step_file` (how costguard learns which step runs), stopping
    /// at the first that fails.
    pub fn job(&self, step_file: &Path) -> Vec<OsString> {
        if self.steps.is_empty() {
            return self.command.clone();
        }
        let q = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
        let mut script = format!("f={}", q(&step_file.to_string_lossy()));
        for (i, argv) in self.steps.iter().enumerate() {
            let words: Vec<String> = argv.iter().map(|w| q(&w.to_string_lossy())).collect();
            script += &format!(" && echo {} >\"$f\" && {}", i + 1, words.join(" "));
        }
        vec!["sh".into(), "-c".into(), script.into()]
    }
}

fn abort_of(v: Option<&str>, default: bool, origin: &str) -> Result<bool, String> {
    match v {
        None => Ok(default),
        Some("abort") => Ok(true),
        Some("continue") => Ok(false),
        Some(other) => Err(format!(
            "invalid {origin} {other:?}: expected \"continue\" or \"abort\""
        )),
    }
}

/// "line N: " for `key` in the `i`-th `[[phase]]` table (or before the first one when `i`
/// is None), as config errors name it; empty when it cannot be found.
fn key_line(text: &str, i: Option<usize>, key: &str) -> String {
    let dashed = key.replace('_', "-");
    let mut table: Option<usize> = None;
    for (n, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with("[[phase]]") {
            table = Some(table.map_or(0, |x| x + 1));
            continue;
        }
        if table != i {
            continue;
        }
        for k in [key, dashed.as_str()] {
            if let Some(rest) = t.strip_prefix(k) {
                if rest.trim_start().starts_with('=') {
                    return format!("line {}: ", n + 1);
                }
            }
        }
    }
    String::new()
}

/// The line of a byte offset, 1-based.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// A matrix table's keys in the order written (a TOML table is read sorted), each with its
/// values as text. Errors name the line and the key.
fn matrix(text: &str, m: &Matrix, key: &str) -> Result<Vec<(String, Vec<String>)>, String> {
    let span = m.span();
    let line = line_of(text, span.start);
    let src = &text[span.start.min(text.len())..span.end.min(text.len())];
    let at = |k: &str| {
        // The key's first appearance as a key: after `{`, `,` or a space, before `=`.
        src.match_indices(k)
            .find(|(i, _)| {
                let before = src[..*i].chars().next_back();
                let after = src[i + k.len()..].trim_start();
                matches!(before, None | Some('{' | ',' | ' ' | '\t' | '\n'))
                    && after.starts_with('=')
            })
            .map_or(usize::MAX, |(i, _)| i)
    };
    let mut keys: Vec<(usize, String)> = m.get_ref().keys().map(|k| (at(k), k.clone())).collect();
    keys.sort();
    if keys.is_empty() {
        return Err(format!(
            "line {line}: {key} has no keys: give {key} = {{ NAME = [VALUES] }}"
        ));
    }
    let mut out = Vec::new();
    for (_, k) in keys {
        let bad = |why: &str| format!("line {line}: {key}.{k}: {why}");
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(bad(
                "a name of letters, digits and _ (it is used as {NAME})",
            ));
        }
        let Some(list) = m.get_ref()[&k].as_array() else {
            return Err(bad("expected a list of values, like [1, 2, 3]"));
        };
        if list.is_empty() {
            return Err(bad("the list is empty: nothing to run"));
        }
        let mut values = Vec::new();
        for v in list {
            values.push(match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => {
                    v.to_string()
                }
                other => return Err(bad(&format!("{other} is not a string, number or boolean"))),
            });
        }
        if values
            .iter()
            .enumerate()
            .any(|(i, v)| values[..i].contains(v))
        {
            return Err(bad("a value is given twice"));
        }
        out.push((k, values));
    }
    Ok(out)
}

/// Every combination of the matrix's values, the first key varying slowest.
fn product(m: &[(String, Vec<String>)]) -> Vec<Vec<(String, String)>> {
    let mut out: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for (k, values) in m {
        out = out
            .into_iter()
            .flat_map(|pre| {
                values.iter().map(move |v| {
                    let mut c = pre.clone();
                    c.push((k.clone(), v.clone()));
                    c
                })
            })
            .collect();
    }
    out
}

/// `{key}` replaced by its value (quoted for the shell when `quote`); `${key}` is the
/// shell's and stays.
fn substitute(s: &str, vars: &[(String, String)], quote: bool) -> String {
    let mut out = s.to_string();
    for (k, v) in vars {
        let pat = format!("{{{k}}}");
        let value = if quote {
            format!("'{}'", v.replace('\'', "'\\''"))
        } else {
            v.clone()
        };
        let mut done = String::new();
        let mut rest = out.as_str();
        while let Some(i) = rest.find(&pat) {
            done.push_str(&rest[..i]);
            if rest[..i].ends_with('$') {
                done.push_str(&pat);
            } else {
                done.push_str(&value);
            }
            rest = &rest[i + pat.len()..];
        }
        done.push_str(rest);
        out = done;
    }
    out
}

fn command_of(c: &CommandSpec, vars: &[(String, String)]) -> Option<Vec<OsString>> {
    match c {
        CommandSpec::Line(l) if !l.trim().is_empty() => Some(vec![
            "sh".into(),
            "-c".into(),
            substitute(l, vars, true).into(),
        ]),
        CommandSpec::Argv(v) if !v.is_empty() => Some(
            v.iter()
                .map(|w| substitute(w, vars, false).into())
                .collect(),
        ),
        _ => None,
    }
}

/// Reads and checks the plan; every error names the phase and the bad value.
pub fn load(path: &Path) -> Result<Vec<Phase>, String> {
    // Bounded and a regular file (links followed): /dev/zero or a FIFO is an error.
    let text = crate::fsutil::read_given(path, crate::config::MAX_FILE)
        .map_err(|e| format!("cannot read --plan {}: {e}", path.display()))?;
    let plan: PlanFile = toml::from_str(&text).map_err(|e| {
        let hint = "a plan's keys are on_kill and [[phase]] tables of name, command, for_each, steps, max_wall, max_usd, idle, stall, expected, on_kill";
        format!(
            "invalid plan {}: {}",
            path.display(),
            crate::config::explain(&text, &e, hint)
        )
    })?;
    let invalid = |e: String| format!("invalid plan {}: {e}", path.display());
    if plan.phase.is_empty() {
        return Err(format!(
            "plan {} has no [[phase]]: nothing to run",
            path.display()
        ));
    }
    let default_abort = abort_of(
        plan.on_kill.as_deref(),
        false,
        &format!("{}on_kill", key_line(&text, None, "on_kill")),
    )?;
    let mut out = Vec::new();
    for (i, p) in plan.phase.iter().enumerate() {
        out.extend(expand(&text, i, p, default_abort).map_err(invalid)?);
    }
    let total = out.len();
    let mut names = std::collections::HashSet::new();
    for (i, p) in out.iter_mut().enumerate() {
        if p.ctx.name.trim().is_empty() || !names.insert(p.ctx.name.clone()) {
            return Err(invalid(format!(
                "phase {:?}: each phase needs a name of its own (with for_each, put {{KEY}} in the name)",
                p.ctx.name
            )));
        }
        p.ctx.index = i;
        p.ctx.total = total;
        p.ctx.last = i + 1 == total;
    }
    for i in 0..out.len() {
        out[i].ctx.expected_after = out[i + 1..]
            .iter()
            .map(|p| p.ctx.expected.map(|d| d.as_secs_f64()))
            .sum();
    }
    Ok(out)
}

/// One `[[phase]]` table: its caps checked once, then one phase per `for_each` combination.
fn expand(text: &str, i: usize, p: &PhaseFile, default_abort: bool) -> Result<Vec<Phase>, String> {
    let at = format!("phase {} ({:?})", i + 1, p.name);
    let line = |key: &str| key_line(text, Some(i), key);
    let dur = |v: &Option<String>, key: &str| -> Result<Option<std::time::Duration>, String> {
        v.as_deref()
            .map(|s| units::parse_duration(s).map_err(|e| format!("{}{at}: {key}: {e}", line(key))))
            .transpose()
    };
    // A TOML number goes through the same parser as a string: negatives and amounts
    // over a billion dollars are refused alike.
    let max_usd = p
        .max_usd
        .clone()
        .map(|v| {
            units::parse_money(&v.into_string())
                .map_err(|e| format!("{}{at}: max_usd: {e}", line("max_usd")))
        })
        .transpose()?;
    if max_usd.is_some_and(|u| !u.is_finite() || u <= 0.0) {
        return Err(format!("{}{at}: max_usd must be above 0", line("max_usd")));
    }
    let each = match &p.for_each {
        Some(m) => matrix(text, m, "for_each").map_err(|e| format!("{at}: {e}"))?,
        None => Vec::new(),
    };
    let steps = match &p.steps {
        Some(m) => matrix(text, m, "steps").map_err(|e| format!("{at}: {e}"))?,
        None => Vec::new(),
    };
    if steps.len() > 1 {
        return Err(format!(
            "{at}: line {}: steps takes one key (the values run in order); put the others in for_each",
            line_of(text, p.steps.as_ref().map_or(0, |m| m.span().start))
        ));
    }
    if let Some((k, _)) = steps
        .first()
        .filter(|(k, _)| each.iter().any(|(e, _)| e == k))
    {
        return Err(format!("{at}: {k} is in both for_each and steps"));
    }
    let template = PhaseCtx {
        name: p.name.clone(),
        index: i,
        total: 0,
        expected: dur(&p.expected, "expected")?,
        max_wall: dur(&p.max_wall, "max_wall")?,
        max_usd,
        abort_on_kill: abort_of(
            p.on_kill.as_deref(),
            default_abort,
            &format!("{}{at}: on_kill", line("on_kill")),
        )?,
        last: false,
        expected_after: None,
        continues: false,
        step_key: steps.first().map(|(k, _)| k.clone()),
        step_values: steps.first().map(|(_, v)| v.clone()).unwrap_or_default(),
        step_file: None,
    };
    let (idle, stall) = (dur(&p.idle, "idle")?, dur(&p.stall, "stall")?);
    let empty = || format!("{at}: command is empty");
    let mut out = Vec::new();
    for vars in product(&each) {
        let command = command_of(&p.command, &vars).ok_or_else(empty)?;
        let mut step_cmds = Vec::new();
        for v in &template.step_values {
            let mut all = vars.clone();
            all.extend(template.step_key.clone().map(|k| (k, v.clone())));
            step_cmds.push(command_of(&p.command, &all).ok_or_else(empty)?);
        }
        out.push(Phase {
            ctx: PhaseCtx {
                name: substitute(&p.name, &vars, false),
                ..template.clone()
            },
            command,
            steps: step_cmds,
            idle,
            stall,
        });
    }
    Ok(out)
}

/// The expanded plan as `costguard check --plan` prints it: each phase, its caps, and each
/// step's command.
pub fn describe(phases: &[Phase]) -> String {
    use std::fmt::Write;
    let steps: usize = phases.iter().map(|p| p.steps.len().max(1)).sum();
    let mut o = format!("plan: {} phases, {steps} commands\n", phases.len());
    let words = |argv: &[OsString]| match argv {
        [sh, c, line] if sh == "sh" && c == "-c" => line.to_string_lossy().into_owned(),
        _ => argv
            .iter()
            .map(|w| crate::shell::quote(&w.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" "),
    };
    for p in phases {
        let c = &p.ctx;
        let mut caps = Vec::new();
        if let Some(w) = c.max_wall {
            caps.push(format!("max_wall {}", units::format_duration(w)));
        }
        if let Some(u) = c.max_usd {
            caps.push(format!("max_usd {}", units::format_money(u)));
        }
        if let Some(e) = c.expected {
            caps.push(format!("expected {}", units::format_duration(e)));
        }
        caps.push(format!(
            "on_kill {}",
            if c.abort_on_kill { "abort" } else { "continue" }
        ));
        let _ = writeln!(o, "  {}. {} ({})", c.index + 1, c.name, caps.join(", "));
        match &c.step_key {
            None => {
                let _ = writeln!(o, "       {}", words(&p.command));
            }
            Some(k) => {
                for (v, argv) in c.step_values.iter().zip(&p.steps) {
                    let _ = writeln!(o, "       {k} {v}: {}", words(argv));
                }
            }
        }
    }
    o
}

/// Runs the phases in order; returns the exit code of the run.
pub async fn run(settings: Settings, phases: Vec<Phase>, plan: &Path) -> Result<u8, GuardError> {
    let base = format!(
        "{}-{}",
        plan.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "plan".into()),
        super::start::run_id_stamp(std::time::SystemTime::now())
    );
    let run_id = match &settings.run_id {
        Some(id) => id.clone(),
        None => super::start::reserve_run_id(&settings.state_dir, &base)
            .map(|(id, _)| id)
            .map_err(|source| {
                GuardError::Record(super::record::RecordError::Io {
                    dir: crate::ledger::runs_dir(&settings.state_dir)
                        .display()
                        .to_string(),
                    source,
                })
            })?,
    };
    // A plan started again with the same run id (after a crash, say) skips the phases its
    // ledger already records: they ran, were killed, or failed once already.
    let done: Vec<(String, crate::ledger::Outcome)> =
        crate::ledger::Ledger::load(&crate::ledger::runs_dir(&settings.state_dir).join(&run_id))
            .ok()
            .flatten()
            .map(|l| l.phases.into_iter().map(|p| (p.name, p.outcome)).collect())
            .unwrap_or_default();
    let mut code = 0;
    let mut ran = false;
    for p in phases {
        if let Some((_, outcome)) = done.iter().find(|(n, _)| *n == p.ctx.name) {
            crate::console::say(format!(
                "run {run_id}: phase {} already recorded ({outcome}); skipping it",
                p.ctx.name
            ));
            continue;
        }
        let step_file = crate::ledger::runs_dir(&settings.state_dir)
            .join(&run_id)
            .join("step");
        // The job may change its directory: the path it writes is absolute.
        let step_file = std::path::absolute(&step_file).unwrap_or(step_file);
        // A step number left by an earlier phase is not this phase's.
        let _ = std::fs::remove_file(&step_file);
        let job = p.job(&step_file);
        let ctx = PhaseCtx {
            continues: ran,
            step_file: (!p.steps.is_empty()).then_some(step_file),
            ..p.ctx
        };
        let s = settings.for_phase(&run_id, ctx, p.idle, p.stall);
        ran = true;
        let (c, ended) = run_session(s, job).await?;
        code = c;
        if ended {
            break;
        }
    }
    if !ran {
        crate::console::alert(format!(
            "run {run_id}: every phase of the plan is already recorded; nothing to run"
        ));
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    fn load(text: &str) -> Result<Vec<super::Phase>, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("plan.toml");
        std::fs::write(&path, text).expect("write plan");
        super::load(&path)
    }

    fn refused(text: &str) -> String {
        match load(text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e,
        }
    }

    fn phase(extra: &str) -> String {
        format!("[[phase]]\nname = \"a\"\ncommand = \"true\"\n{extra}\n")
    }

    #[test]
    fn value_errors_name_the_line_and_the_key() {
        let text = format!(
            "{}{}",
            phase(""),
            phase("max-wall = \"soon\"\non_kill = \"stop\"")
        );
        let err = refused(&text);
        assert!(
            err.contains("line 8: phase 2 (\"a\"): max_wall: invalid duration \"soon\""),
            "{err}"
        );
        let err = refused(&phase("max_usd = -3"));
        assert!(err.contains("line 4: phase 1 (\"a\"): max_usd:"), "{err}");
        let err = refused(&format!("on_kill = \"never\"\n{}", phase("")));
        assert!(err.contains("line 1: on_kill"), "{err}");
    }

    #[test]
    fn a_phase_takes_the_new_duration_forms() {
        let phases = load(&phase(
            "max_wall = \"01:30:00\"\nidle = \"90\"\nstall = \"1h30\"",
        ))
        .expect("loads");
        let ctx = &phases[0].ctx;
        assert_eq!(ctx.max_wall, Some(std::time::Duration::from_secs(5400)));
        assert_eq!(phases[0].idle, Some(std::time::Duration::from_secs(90)));
        assert_eq!(phases[0].stall, Some(std::time::Duration::from_secs(5400)));
    }

    #[test]
    fn a_phase_refuses_a_century_and_a_billion_as_numbers_or_text() {
        let err = refused(&phase("max_wall = \"101y\""));
        assert!(
            err.ends_with("max_wall: invalid duration \"101y\": that is more than 100 years"),
            "{err}"
        );
        for v in ["2000000000", "2e9", "\"$2000000000\""] {
            let err = refused(&phase(&format!("max_usd = {v}")));
            assert!(
                err.contains("that is more than $1,000,000,000"),
                "{v}: {err}"
            );
        }
        let err = refused(&phase("max_usd = -5"));
        assert!(
            err.ends_with("max_usd: invalid amount \"-5\": must not be negative"),
            "{err}"
        );
    }

    #[test]
    fn a_matrix_expands_in_the_order_written_and_quotes_values_for_the_shell() {
        let phases = load(
            "[[phase]]\nname = \"{arch}-{lr}\"\nfor_each = { lr = [0.1, 0.01], arch = [\"it's\"] }\n\
             steps = { seed = [1, 2] }\ncommand = \"echo {arch} {lr} {seed} ${seed}\"\nexpected = \"4s\"\n",
        )
        .expect("loads");
        let names: Vec<&str> = phases.iter().map(|p| p.ctx.name.as_str()).collect();
        assert_eq!(names, ["it's-0.1", "it's-0.01"]);
        let p = &phases[0];
        assert_eq!(p.ctx.step_key.as_deref(), Some("seed"));
        assert_eq!(p.ctx.step_values, ["1", "2"]);
        assert_eq!(
            p.steps[1],
            ["sh", "-c", "echo 'it'\\''s' '0.1' '2' ${seed}"].map(std::ffi::OsString::from)
        );
        assert_eq!((p.ctx.index, p.ctx.total, p.ctx.last), (0, 2, false));
        assert_eq!(p.ctx.expected_after, Some(4.0));
        let job = p.job(std::path::Path::new("/run/x/step"));
        let script = job[2].to_string_lossy();
        assert!(
            script.starts_with("f='/run/x/step' && echo 1 >\"$f\" && 'sh' '-c' "),
            "{script}"
        );
        assert!(script.contains(" && echo 2 >\"$f\" && "), "{script}");
        let err =
            refused("[[phase]]\nname = \"x\"\ncommand = \"true\"\nsteps = { a = [1], b = [2] }\n");
        assert!(err.contains("line 4: steps takes one key"), "{err}");
    }
}
