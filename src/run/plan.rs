//! Plans: a TOML file of ordered phases run one after another under one run id, one budget
//! and one ledger. Each phase is a session of the run with its own caps; a watchdog kill of a
//! phase is recorded and the plan goes on (`on_kill = "continue"`, the default) or stops
//! (`"abort"`). A phase that fails by itself, a stop, or the run's own ceiling ends the plan.
//! Started again with the same `--run-id`, a plan skips the phases its ledger records and
//! resumes the rest with the spend carried over.
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
//! ```

use std::ffi::OsString;
use std::path::Path;

use serde::Deserialize;

use super::session::{run_session, GuardError};
use crate::config::{PhaseCtx, Scalar, Settings};
use crate::units;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum CommandSpec {
    Line(String),
    Argv(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct PhaseFile {
    name: String,
    command: CommandSpec,
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
    pub command: Vec<OsString>,
    pub idle: Option<std::time::Duration>,
    pub stall: Option<std::time::Duration>,
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

/// Reads and checks the plan; every error names the phase and the bad value.
pub fn load(path: &Path) -> Result<Vec<Phase>, String> {
    // Bounded and a regular file (links followed): /dev/zero or a FIFO is an error.
    let text = crate::fsutil::read_given(path, crate::config::MAX_FILE)
        .map_err(|e| format!("cannot read --plan {}: {e}", path.display()))?;
    let plan: PlanFile = toml::from_str(&text).map_err(|e| {
        let hint = "a plan's keys are on_kill and [[phase]] tables of name, command, max_wall, max_usd, idle, stall, expected, on_kill";
        format!(
            "invalid plan {}: {}",
            path.display(),
            crate::config::explain(&text, &e, hint)
        )
    })?;
    if plan.phase.is_empty() {
        return Err(format!(
            "plan {} has no [[phase]]: nothing to run",
            path.display()
        ));
    }
    let default_abort = abort_of(plan.on_kill.as_deref(), false, "on_kill")?;
    let total = plan.phase.len();
    let mut names = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (i, p) in plan.phase.into_iter().enumerate() {
        let at = format!("phase {} ({:?})", i + 1, p.name);
        if p.name.trim().is_empty() || !names.insert(p.name.clone()) {
            return Err(format!("{at}: each phase needs a name of its own"));
        }
        let dur = |v: &Option<String>, key: &str| -> Result<Option<std::time::Duration>, String> {
            v.as_deref()
                .map(|s| units::parse_duration(s).map_err(|e| format!("{at}: {key}: {e}")))
                .transpose()
        };
        let command: Vec<OsString> = match p.command {
            CommandSpec::Line(l) if !l.trim().is_empty() => {
                vec!["sh".into(), "-c".into(), l.into()]
            }
            CommandSpec::Argv(v) if !v.is_empty() => v.into_iter().map(Into::into).collect(),
            _ => return Err(format!("{at}: command is empty")),
        };
        // A TOML number goes through the same parser as a string: negatives and amounts
        // over a billion dollars are refused alike.
        let max_usd = p
            .max_usd
            .map(|v| {
                units::parse_money(&v.into_string()).map_err(|e| format!("{at}: max_usd: {e}"))
            })
            .transpose()?;
        if max_usd.is_some_and(|u| !u.is_finite() || u <= 0.0) {
            return Err(format!("{at}: max_usd must be above 0"));
        }
        out.push(Phase {
            ctx: PhaseCtx {
                name: p.name.clone(),
                index: i,
                total,
                expected: dur(&p.expected, "expected")?,
                max_wall: dur(&p.max_wall, "max_wall")?,
                max_usd,
                abort_on_kill: abort_of(
                    p.on_kill.as_deref(),
                    default_abort,
                    &format!("{at}: on_kill"),
                )?,
                last: i + 1 == total,
                expected_after: None,
                continues: false,
            },
            command,
            idle: dur(&p.idle, "idle")?,
            stall: dur(&p.stall, "stall")?,
        });
    }
    for i in 0..out.len() {
        out[i].ctx.expected_after = out[i + 1..]
            .iter()
            .map(|p| p.ctx.expected.map(|d| d.as_secs_f64()))
            .sum();
    }
    Ok(out)
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
        let mut s = settings.clone();
        s.run_id = Some(run_id.clone());
        s.idle = p.idle.or(s.idle);
        s.stall = p.stall.or(s.stall);
        s.phase = Some(PhaseCtx {
            continues: ran,
            ..p.ctx
        });
        ran = true;
        let (c, ended) = run_session(s, p.command).await?;
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
}
