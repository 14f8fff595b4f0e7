//! The run-management commands: check, run --detach, status, logs, stop, report, prices
//! (list, wait and clean are in `manage.rs`). They
//! read the run directories under the state directory; only `stop` touches a live run (a
//! TERM to its costguard, which then ends the job as it would on Ctrl-C).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::config::{default_state_dir, Settings};
use crate::exit::OWN_FAILURE;
use crate::ledger::{self, find, Ledger};
use crate::shell::quote as shell_quote;
use crate::units::{format_duration, format_money, format_secs};

pub fn state_dir(p: &Option<PathBuf>) -> PathBuf {
    p.clone().unwrap_or_else(default_state_dir)
}

fn err(msg: impl std::fmt::Display) -> ExitCode {
    crate::console::error(crate::redact::text(&msg.to_string()));
    ExitCode::from(OWN_FAILURE)
}

pub fn status(state: &Path, id: Option<&str>, json: bool) -> ExitCode {
    let (dir, l) = match find(state, id) {
        Ok(x) => x,
        Err(e) => return err(e),
    };
    let st = l.state_word();
    let phase_text = match (l.phase_index, l.phases_total) {
        (Some(i), Some(n)) => format!(
            "{} of {n}{}",
            i + 1,
            l.phase
                .as_deref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default()
        ),
        _ => "single command".into(),
    };
    if json {
        let mut v = serde_json::to_value(&l).unwrap_or_default();
        v["status"] = serde_json::json!(st);
        v["run_dir"] = serde_json::json!(dir);
        v["phase_text"] = serde_json::json!(phase_text);
        v["checkin"] = serde_json::json!(crate::checkin::of(&l, st == "running", None));
        crate::console::outln(serde_json::to_string_pretty(&v).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    crate::console::out(status_text(&dir, &l, &st, &phase_text));
    ExitCode::SUCCESS
}

/// Spend against budget, rate and waste, in one line.
fn spend_text(l: &Ledger) -> String {
    if !l.priced {
        return "unknown (no price)".into();
    }
    let mut s = format_money(l.spend_dollars);
    if let Some(b) = l.budget_dollars {
        s += &format!(" of {}", format_money(b));
    }
    if let Some(r) = l.rate_dollars_per_hour {
        s += &format!(" at {}/h", format_money(r));
    }
    if l.wasted_dollars > 0.0 {
        s += &format!(", wasted {}", format_money(l.wasted_dollars));
    }
    s
}

fn eta_text(l: &Ledger) -> String {
    match l.eta_seconds.map(format_secs) {
        None => "unknown (give --progress-total, or expected phase durations)".into(),
        Some(e) => format!(
            "{e} more{}",
            l.projected_spend_dollars
                .map(|p| format!(", {}", projection_text(p, l.budget_dollars)))
                .unwrap_or_default()
        ),
    }
}

/// The projected spend at completion, flagged when it is over the budget: the run will be
/// killed at its dollar ceiling before it completes.
pub fn projection_text(projected: f64, budget: Option<f64>) -> String {
    match budget {
        Some(b) if projected > b + 1e-9 => format!(
            "projected {} — over the {} budget",
            format_money(projected),
            format_money(b)
        ),
        _ => format!("{} projected at completion", format_money(projected)),
    }
}

/// Text from the job (its last output line) made safe for a terminal: control characters
/// (escape sequences, NULs, carriage returns) shown as `\xNN`, never sent raw.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\t' => out.push(' '),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// Utilization and spend over the run from `series.json`: block-character sparklines on a
/// terminal, words otherwise (a log or a pipe may not show them). Only what was known: no
/// line for a run without a GPU reading or a price.
fn trend_text(dir: &Path, l: &Ledger) -> Option<String> {
    use crate::series::sparkline;
    use std::io::IsTerminal;
    let s = crate::series::Series::load(dir).filter(|s| s.points.len() >= 2)?;
    let (first, last) = (s.points.first()?, s.points.last()?);
    let over = format_secs(last.t - first.t);
    let utils: Vec<f64> = s.points.iter().filter_map(|p| p.util).collect();
    let mut parts = Vec::new();
    if std::io::stdout().is_terminal() {
        let width = s.points.len().min(24);
        if !utils.is_empty() {
            parts.push(format!(
                "util {}",
                sparkline(&s.buckets(width, |p| p.util), 100.0)
            ));
        }
        if l.priced {
            let top = l.budget_dollars.unwrap_or(0.0).max(last.usd);
            let line = sparkline(&s.buckets(width, |p| Some(p.usd)), top);
            parts.push(format!("spend {line}"));
        }
        return (!parts.is_empty()).then(|| format!("{}  (over {over})", parts.join("  ")));
    }
    if let Some(now) = utils.last() {
        let lo = utils.iter().copied().fold(f64::MAX, f64::min);
        let hi = utils.iter().copied().fold(f64::MIN, f64::max);
        parts.push(format!("util {lo:.0}–{hi:.0}% (last {now:.0}%)"));
    }
    if l.priced {
        let (a, b) = (format_money(first.usd), format_money(last.usd));
        parts.push(format!("spend {a} → {b}"));
    }
    (!parts.is_empty()).then(|| format!("{} over {over}", parts.join(", ")))
}

/// The check-in, as a person reads it.
fn status_text(dir: &Path, l: &Ledger, st: &str, phase_text: &str) -> String {
    use std::fmt::Write;
    let kills = if l.kills.is_empty() {
        "none".to_string()
    } else {
        l.kills
            .iter()
            .map(|k| format!("{} after {}", k.reason, format_secs(k.elapsed_seconds)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let wall = l
        .max_wall_seconds
        .map(|w| format!(" of {}", format_secs(w)));
    let mut o = String::new();
    let _ = writeln!(o, "run:       {} ({st})", l.run_id);
    let _ = writeln!(o, "command:   {}", printable(&l.command));
    if let Some(url) = l.page_url.as_deref().filter(|_| st == "running") {
        let _ = writeln!(o, "page:      {url}");
    }
    let checkin = crate::checkin::of(l, st == "running", None);
    match &checkin {
        Some(c) => {
            let _ = writeln!(o, "phases:    {}", c.phases);
            if let Some(r) = &c.running {
                let _ = writeln!(o, "running:   {r}");
            }
            let _ = writeln!(o, "elapsed:   {}", c.elapsed);
        }
        None => {
            let _ = writeln!(o, "phase:     {phase_text}");
            let _ = writeln!(
                o,
                "elapsed:   {}{}",
                format_secs(l.elapsed_seconds),
                wall.unwrap_or_default()
            );
        }
    }
    if st == "running" {
        let _ = writeln!(o, "eta:       {}", eta_text(l));
    }
    let _ = writeln!(o, "spend:     {}", spend_text(l));
    if let Some(t) = trend_text(dir, l) {
        let _ = writeln!(o, "trend:     {t}");
    }
    let _ = writeln!(o, "kills:     {kills}");
    let _ = writeln!(o, "warnings:  {}   errors: {}", l.warnings, l.errors);
    let progress = l.last_progress.as_deref().map(printable);
    let _ = writeln!(
        o,
        "progress:  {}",
        progress.as_deref().unwrap_or("no progress signal seen")
    );
    if let Some(next) = checkin.as_ref().and_then(|c| c.next.as_ref()) {
        let _ = writeln!(o, "next:      {next}");
    } else if st == "running" {
        let w = l.waiting_on.as_deref().unwrap_or("the first sample");
        let _ = writeln!(o, "waiting:   {w}");
    } else {
        let d = l.outcome_detail.as_deref();
        let d = d.unwrap_or("costguard died mid-run: resume with --run-id");
        let _ = writeln!(o, "outcome:   {d}");
    }
    let _ = writeln!(o, "watchdogs: {}", l.watchdogs.join(", "));
    if l.no_preflight {
        let _ = writeln!(o, "preflight: skipped (--no-preflight)");
    }
    let _ = writeln!(o, "directory: {}", dir.display());
    o
}

pub fn report(state: &Path, id: Option<&str>) -> ExitCode {
    let (dir, l) = match find(state, id) {
        Ok(x) => x,
        Err(e) => return err(e),
    };
    let (text, saved) = crate::report::write_report(&dir, &l);
    if let Err(e) = saved {
        crate::console::notice(format!("could not write report.md: {e}"));
    }
    crate::console::out(text);
    ExitCode::SUCCESS
}

pub fn logs(state: &Path, id: Option<&str>, follow: bool) -> ExitCode {
    let (dir, l) = match find(state, id) {
        Ok(x) => x,
        Err(e) => return err(e),
    };
    let id = l.run_id.as_str();
    let path = dir.join("output.log");
    let mut f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(_) => {
            return err(format!(
                "run {id} has no output.log: costguard keeps the output of detached runs, and of runs whose output it reads (--stall, --progress-regex)"
            ))
        }
    };
    let mut out = std::io::stdout();
    let mut buf = Vec::new();
    let started = std::time::Instant::now();
    loop {
        buf.clear();
        let _ = f.read_to_end(&mut buf);
        if out.write_all(&buf).and_then(|_| out.flush()).is_err() {
            return ExitCode::SUCCESS; // stdout closed (`| head`): stop quietly
        }
        if !follow {
            return ExitCode::SUCCESS;
        }
        let live = match Ledger::load(&dir).ok().flatten() {
            Some(l) => l.live(),
            // Not on record yet: a detached run just starting.
            None => started.elapsed() < Duration::from_secs(10),
        };
        if !live {
            // One last read after the end, then the run's own exit status.
            buf.clear();
            let _ = f.read_to_end(&mut buf);
            let _ = out.write_all(&buf);
            let (code, line) = crate::manage::exit_of(&crate::manage::await_end(&dir, id));
            crate::console::alert(format!("{line} (exit {code})"));
            return ExitCode::from(code);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn stop(state: &Path, id: Option<&str>) -> ExitCode {
    let Some(id) = id.filter(|i| !i.trim().is_empty()) else {
        return err("costguard stop needs a run id (costguard list shows them)");
    };
    let (dir, l) = match find(state, Some(id)) {
        Ok(x) => x,
        Err(e) => return err(e),
    };
    let Some(cg) = l.costguard.filter(|_| l.live()) else {
        crate::console::outln(format!("run {id} is not running ({})", l.state_word()));
        return ExitCode::SUCCESS;
    };
    // The ledger is a file anyone with the state directory can edit: signal the pid only
    // when it is this run's costguard.
    if let Err(why) = costguard_of(cg.pid, &dir, id) {
        return err(format!(
            "run {id}: not stopping pid {}: {why}; its ledger may have been edited",
            cg.pid
        ));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(cg.pid),
        nix::sys::signal::Signal::SIGTERM,
    );
    // costguard forwards TERM, waits its kill grace, then KILLs: allow for that.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while cg.alive() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if cg.alive() {
        return err(format!("run {id}: costguard pid {} did not stop", cg.pid));
    }
    let l = Ledger::load(&dir).ok().flatten().unwrap_or(l);
    crate::console::outln(format!(
        "run {id} stopped: {}",
        l.outcome_detail.as_deref().unwrap_or("ended")
    ));
    ExitCode::SUCCESS
}

/// What stops the meter after the run.
fn meter_answer(settings: &Settings, check: &Result<crate::run::PriceCheck, String>) -> Answer {
    let q = "stops the meter";
    match (check, settings.release.enabled()) {
        (Ok(p), _) => match &p.release {
            Some(Ok(t)) => Answer { question: q, ok: true, text: t.clone() },
            Some(Err(e)) => Answer { question: q, ok: false, text: format!("the release cannot work: {e}") },
            None => Answer {
                question: q,
                ok: true,
                text: "nothing: after a kill the box keeps billing until someone stops it (--release stop, or --release-command CMD)".into(),
            },
        },
        (Err(e), true) => Answer { question: q, ok: false, text: e.clone() },
        (Err(_), false) => Answer { question: q, ok: true, text: "nothing (no --release)".into() },
    }
}

/// Whether `pid` is a costguard of run `id`: its executable is this very binary (or one
/// named costguard), and it holds the run directory's lock, or names the run id on its
/// command line or in COSTGUARD_RUN_ID.
fn costguard_of(pid: i32, dir: &Path, id: &str) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let exe = std::fs::read_link(proc.join("exe"))
        .map_err(|e| format!("cannot read its executable: {e}"))?;
    let same = match (
        std::fs::metadata(proc.join("exe")),
        std::fs::metadata("/proc/self/exe"),
    ) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    let named = exe
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("costguard"));
    if !same && !named {
        return Err(format!("it is {}, not costguard", exe.display()));
    }
    let lock = std::fs::canonicalize(dir.join("lock")).ok();
    let holds_lock = lock.is_some_and(|lock| {
        std::fs::read_dir(proc.join("fd"))
            .map(|fds| {
                fds.flatten()
                    .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == lock))
            })
            .unwrap_or(false)
    });
    let words = |f: &str| std::fs::read(proc.join(f)).unwrap_or_default();
    let cmdline = words("cmdline");
    let environ = words("environ");
    let env_id = format!("COSTGUARD_RUN_ID={id}");
    let flag_id = format!("--run-id={id}");
    let names_id = cmdline
        .split(|b| *b == 0)
        .any(|w| w == id.as_bytes() || w == flag_id.as_bytes())
        || environ.split(|b| *b == 0).any(|w| w == env_id.as_bytes());
    if holds_lock || names_id {
        Ok(())
    } else {
        Err(format!("that costguard is not running run {id}"))
    }
}

/// One answer of the preflight.
pub struct Answer {
    pub question: &'static str,
    pub ok: bool,
    pub text: String,
}

/// The preflight's questions: notification path (with a real test send), what stops the
/// meter, the price, watchdog, exit hook.
pub async fn preflight(settings: &Settings, host: &str) -> Vec<Answer> {
    let mut out = Vec::new();
    if settings.notify.channels.is_empty() {
        out.push(Answer {
            question: "notification path",
            ok: false,
            text: "no channel configured: give --slack-webhook, --webhook, --alertmanager, --pagerduty-routing-key or --notify-command".into(),
        });
    } else {
        let mut lines = Vec::new();
        let origin = "the preflight of costguard check / run --detach";
        let failed = crate::notify::check::run(&settings.notify, host, origin, &mut lines).await;
        out.push(Answer {
            question: "notification path",
            ok: failed == 0,
            text: format!("test event sent: {}", lines.join(", ")),
        });
    }
    let mut w = Vec::new();
    if let Some(b) = settings.max_usd {
        w.push(format!("dollar ceiling {}", format_money(b)));
    }
    if let Some(x) = settings.max_wall {
        w.push(format!("wall ceiling {}", format_duration(x)));
    }
    let ceilings = !w.is_empty();
    w.push(match settings.idle {
        Some(x) => format!("idle on ({})", format_duration(x)),
        None => "idle off".into(),
    });
    w.push(match settings.stall {
        Some(x) => format!("stall on ({})", format_duration(x)),
        None => "stall off".into(),
    });
    // A dollar ceiling without a price cannot fire: the same check the run itself makes.
    let check = crate::run::price_check(settings).await;
    let priced = match (settings.max_usd, &check) {
        (Some(_), Ok(p)) if p.priced => {
            w[0] += &format!(" ({})", p.rate);
            Ok(())
        }
        (Some(_), Ok(p)) => Err(format!("no price: {}", p.found)),
        (Some(_), Err(e)) => Err(e.clone()),
        (None, _) => Ok(()),
    };
    out.push(meter_answer(settings, &check));
    if let Ok(p) = &check {
        let mut text = if p.priced {
            format!("{}; metered {}", p.found, p.rate)
        } else {
            format!("{}; spend not metered (no price)", p.found)
        };
        for n in &p.notes {
            text += &format!("; {n}");
        }
        out.push(Answer {
            question: "price",
            ok: true,
            text,
        });
    }
    out.push(Answer {
        question: "watchdog",
        ok: ceilings && priced.is_ok(),
        text: if let Err(why) = priced {
            format!("the dollar ceiling cannot work: {why}")
        } else if ceilings {
            w.join(", ")
        } else {
            format!(
                "{}: no dollar or wall ceiling, so nothing ends a forgotten run (give --max-usd or --max-wall)",
                w.join(", ")
            )
        },
    });
    let land = ledger::runs_dir(&settings.state_dir).join("<run id>");
    out.push(match &settings.on_exit {
        Some(cmd) => Answer {
            question: "exit hook",
            ok: true,
            text: format!(
                "runs `{}` after the run; the report, ledger and logs land in {}",
                crate::redact::text(cmd),
                land.display()
            ),
        },
        None => Answer {
            question: "exit hook",
            ok: false,
            text: format!(
                "none given: say where results go with --on-exit CMD (e.g. copy outputs somewhere known), or --on-exit : for none; the report lands in {}",
                land.display()
            ),
        },
    });
    out
}

/// The command line that would answer the preflight's open questions: this invocation with
/// the missing flags put before `--`. None when an answer needs more than a flag (a
/// configured channel that failed its test send, a release that cannot work).
pub fn passing_line(answers: &[Answer], settings: &Settings, args: &[OsString]) -> Option<String> {
    let open = |q: &str| answers.iter().any(|a| a.question == q && !a.ok);
    if open("stops the meter") {
        return None;
    }
    let mut add: Vec<String> = Vec::new();
    if open("notification path") {
        if !settings.notify.channels.is_empty() {
            return None;
        }
        let log = settings.state_dir.join("events.jsonl");
        add.push("--notify-command".into());
        add.push(format!(
            "cat >> {}",
            shell_quote(&log.display().to_string())
        ));
    }
    if open("watchdog") {
        if settings.max_usd.is_some() && settings.usd_per_hour.is_none() {
            add.extend(["--usd-per-hour".into(), "RATE".into()]);
        } else if settings.max_usd.is_none() && settings.max_wall.is_none() {
            add.extend(["--max-wall".into(), "24h".into()]);
        }
    }
    if open("exit hook") {
        add.extend(["--on-exit".into(), ":".into()]);
    }
    if add.is_empty() {
        return None;
    }
    let words: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let end = words.iter().position(|w| w == "--").unwrap_or(words.len());
    let mut line = vec!["costguard".to_string()];
    line.extend(words[..end].iter().map(|w| shell_quote(w)));
    line.extend(add.iter().map(|w| {
        if w == "RATE" {
            w.clone()
        } else {
            shell_quote(w)
        }
    }));
    line.extend(words[end..].iter().map(|w| shell_quote(w)));
    Some(line.join(" "))
}

pub fn print_preflight(answers: &[Answer]) -> bool {
    for a in answers {
        crate::console::outln(format!(
            "{:<18} {} — {}",
            format!("{}:", a.question),
            if a.ok { "ok" } else { "NOT ANSWERED" },
            a.text
        ));
    }
    answers.iter().all(|a| a.ok)
}

/// `run --detach`: reserve the id, start this binary again in a new session with output to
/// the run's output.log, print the id, return.
pub fn detach(settings: &Settings, command: &[OsString]) -> ExitCode {
    let base = crate::run::default_run_id(command, std::time::SystemTime::now());
    let (id, dir) = match &settings.run_id {
        Some(id) => {
            if !crate::run::record::valid_id(id) {
                return err(crate::run::record::RecordError::BadId(id.clone()));
            }
            let dir = ledger::runs_dir(&settings.state_dir).join(id);
            if let Err(e) = crate::fsutil::private_dir(&dir) {
                return err(format!("cannot create {}: {e}", dir.display()));
            }
            (id.clone(), dir)
        }
        None => match crate::run::reserve_run_id(&settings.state_dir, &base) {
            Ok(x) => x,
            Err(e) => return err(format!("cannot create a run directory: {e}")),
        },
    };
    let log = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("output.log"))
    {
        Ok(f) => f,
        Err(e) => {
            return err(format!(
                "cannot open {}: {e}",
                dir.join("output.log").display()
            ))
        }
    };
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    // Only costguard's own `--detach`: the job's arguments after `--` stay as they are.
    let end = args.iter().position(|a| a == "--").unwrap_or(args.len());
    if let Some(i) = args[..end].iter().position(|a| a == "--detach") {
        args.remove(i);
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let mut c = std::process::Command::new(exe);
    // The id and state directory reach the child through the environment (a flag the user
    // gave still wins, and names the same values).
    c.args(&args)
        .env("COSTGUARD_RUN_ID", &id)
        .env("COSTGUARD_STATE_DIR", &settings.state_dir)
        .env("COSTGUARD_OUTPUT_LOG_IS_STDOUT", "1")
        .stdin(std::process::Stdio::null())
        .stdout(
            log.try_clone()
                .map(Into::into)
                .unwrap_or_else(|_| std::process::Stdio::null()),
        )
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it gives the run its own session, away from the
    // terminal's hangup.
    unsafe {
        use std::os::unix::process::CommandExt;
        c.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let child = match c.spawn() {
        Ok(child) => child,
        Err(e) => return err(format!("cannot start the background run: {e}")),
    };
    if let Err(code) = confirm_started(child, &dir) {
        return code;
    }
    crate::console::outln(&id);
    crate::console::say(format!(
        "run {id} started in the background; costguard status {id} · costguard logs {id} -f · costguard stop {id}"
    ));
    ExitCode::SUCCESS
}

/// Waits until the background costguard has its run on record (it then guards the job),
/// or has failed: then its reason (from output.log) and its exit code are ours. Never
/// reports success for a run that died unseen.
fn confirm_started(mut child: std::process::Child, dir: &Path) -> Result<(), ExitCode> {
    let pid = child.id() as i32;
    // NVML's start can take seconds on a real GPU; a failed start is quicker than that.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(dir.join("output.log")).unwrap_or_default();
            let why: Vec<&str> = log
                .lines()
                .filter(|l| l.starts_with("costguard: error:"))
                .collect();
            let code = status.code().unwrap_or(i32::from(OWN_FAILURE));
            let started = Ledger::load(dir)
                .ok()
                .flatten()
                .is_some_and(|l| l.costguard.is_some_and(|c| c.pid == pid));
            if started && why.is_empty() {
                return Ok(()); // it ran, and already ended: status and report tell how
            }
            for w in &why {
                crate::console::alert(w.trim_start_matches("costguard: "));
            }
            crate::console::alert(format!(
                "error: the background run did not start (exit {code}); its output is in {}",
                dir.join("output.log").display()
            ));
            return Err(ExitCode::from(u8::try_from(code).unwrap_or(OWN_FAILURE)));
        }
        let on_record = Ledger::load(dir)
            .ok()
            .flatten()
            .is_some_and(|l| l.costguard.is_some_and(|c| c.pid == pid));
        if on_record || std::time::Instant::now() > deadline {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `costguard prices`: the catalog's rows, filtered; GCP machine types with their GPUs'
/// price composed as the box is billed.
pub fn prices(a: &crate::cli::PricesArgs) -> ExitCode {
    use crate::cloud::{catalog, Provider};
    let provider = match a.provider.as_deref().map(|p| (p, Provider::parse(p))) {
        None => None,
        Some((_, Some(p))) => Some(p),
        Some((bad, None)) => {
            return err(format!(
                "invalid --provider value {bad:?}: expected aws, gcp, azure, runpod, vast or lambda"
            ))
        }
    };
    let table;
    let cat = match &a.price_table {
        Some(path) => match catalog::Catalog::with_table(path) {
            Ok(c) => {
                table = c;
                &table
            }
            Err(e) => return err(e),
        },
        None => catalog::Catalog::embedded(),
    };
    let rows = cat.list(provider, a.instance_type.as_deref());
    if rows.is_empty() {
        crate::console::error(format!(
            "no catalog row matches{}{} (costguard prices lists them all)",
            provider
                .map(|p| format!(" provider {}", p.as_str()))
                .unwrap_or_default(),
            a.instance_type
                .as_deref()
                .map(|t| format!(" {t:?}"))
                .unwrap_or_default()
        ));
        return ExitCode::from(1);
    }
    if a.json {
        for r in rows {
            let (price, spot, detail) = row_price(cat, r);
            crate::console::outln(
                serde_json::json!({
                    "provider": r.provider, "instance_type": r.instance_type, "region": r.region,
                    "gpu_model": r.gpu_model, "gpu_count": r.gpu_count, "usd_per_hour": price,
                    "composed": detail, "spot_usd_per_hour_min": spot.map(|s| s.0),
                    "spot_usd_per_hour_max": spot.map(|s| s.1), "from_file": r.from_file,
                })
                .to_string(),
            );
        }
        return ExitCode::SUCCESS;
    }
    crate::console::outln(format!(
        "source: {}; {} rows. Spot prices are estimates: a spot box is metered at its on-demand price.",
        catalog::CATALOG_SOURCE,
        rows.len()
    ));
    crate::console::outln(format!(
        "{:<8} {:<26} {:<24} {:<16} {:>10} {:>17}",
        "PROVIDER", "INSTANCE TYPE", "REGION", "GPUS", "$/HOUR", "SPOT $/HOUR"
    ));
    for r in rows {
        crate::console::outln(price_line(cat, r));
    }
    ExitCode::SUCCESS
}

/// A row's hourly price and spot range as the box is billed (GCP: machine + GPUs).
type RowPrice = (Option<f64>, Option<(f64, f64)>, Option<String>);

fn row_price(cat: &crate::cloud::catalog::Catalog, r: &crate::cloud::catalog::Row) -> RowPrice {
    use crate::cloud::Provider;
    if r.provider == "gcp" && !r.instance_type.is_empty() {
        let q = cat.price(Provider::Gcp, &r.instance_type, Some(&r.region));
        return match q.filter(|q| q.region_exact) {
            Some(q) => (Some(q.usd_per_hour), q.spot, q.detail),
            None => (None, None, Some("no GPU row for this machine type".into())),
        };
    }
    let spot = match (r.spot_min, r.spot_max) {
        (Some(a), Some(b)) => Some((a.min(b), a.max(b))),
        (Some(a), None) | (None, Some(a)) => Some((a, a)),
        _ => None,
    };
    (r.usd_per_hour, spot, None)
}

fn price_line(cat: &crate::cloud::catalog::Catalog, r: &crate::cloud::catalog::Row) -> String {
    let (price, spot, _) = row_price(cat, r);
    let gpus = if r.gpu_model.is_empty() {
        crate::cloud::catalog::gcp_gpus(&r.instance_type)
            .map(|(m, n)| format!("{n} × {m}"))
            .unwrap_or_default()
    } else {
        format!("{} × {}", r.gpu_count, r.gpu_model)
    };
    let name = if r.instance_type.is_empty() {
        "(GPUs, added to a machine)"
    } else {
        &r.instance_type
    };
    let spot = match spot {
        Some((a, b)) if (a - b).abs() > 0.005 => format!("{a:.2}–{b:.2}"),
        Some((a, _)) => format!("{a:.2}"),
        None => "—".into(),
    };
    format!(
        "{:<8} {:<26} {:<24} {:<16} {:>10} {:>17}",
        r.provider,
        name,
        r.region,
        gpus,
        price.map_or("no price".into(), |p| format!("{p:.2}")),
        spot
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_projection_over_the_budget_is_flagged() {
        assert_eq!(
            projection_text(2.78, Some(1.0)),
            "projected $2.78 — over the $1.00 budget"
        );
        assert_eq!(
            projection_text(0.5, Some(1.0)),
            "$0.5000 projected at completion"
        );
        assert_eq!(
            projection_text(0.5, None),
            "$0.5000 projected at completion"
        );
    }

    #[test]
    fn the_jobs_text_reaches_the_terminal_without_control_characters() {
        assert_eq!(printable("a\x1b[31mred\0x\r"), "a\\x1b[31mred\\x00x\\x0d");
        assert_eq!(printable("step 5\tloss 1.2 ✓"), "step 5 loss 1.2 ✓");
    }
}
