//! costguard's entry point: parse, run, map the result to a documented exit code.

use std::process::ExitCode;

use costguard::cli::{Cli, NotifyCmd, Sub};
use costguard::config::Settings;
use costguard::{cmd, exit};

enum Mode {
    Run,
    Check,
    NotifyTest,
}

/// One thread: the job is spawned from the main thread, which lives as long as we do
/// (PDEATHSIG follows the spawning thread); NVML and disk writes have threads of their own.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Prints the three answers; true when all are answered.
fn preflight(settings: &Settings) -> bool {
    let Ok(rt) = runtime() else {
        return false;
    };
    let answers = rt.block_on(cmd::preflight(settings, &costguard::events::hostname()));
    let ok = cmd::print_preflight(&answers);
    costguard::console::outln(if ok {
        "preflight: every question answered: safe to leave"
    } else {
        "preflight: not safe to leave yet"
    });
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if let Some(line) = cmd::passing_line(&answers, settings, &args) {
        costguard::console::outln(format!("preflight: this would answer them: {line}"));
    }
    ok
}

/// One malloc arena for every thread. glibc gives each new thread that allocates an arena
/// of its own (a 64 MiB mapping, trimmed and re-protected as it grows), and the unmapping
/// interrupts the other CPU to flush its TLB: costguard's few threads (NVML, disk writes,
/// the sampler) each start on the run's start or end path, and allocate too little to
/// contend for one arena.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of the allocator; no thread has started yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

fn main() -> ExitCode {
    costguard::timing::started();
    costguard::timing::mark("main");
    one_malloc_arena();
    costguard::supervise::reset_signals();
    let cli = match Cli::parse_args() {
        Ok(c) => c,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => exit::OWN_FAILURE,
            };
            let _ = e.print();
            if let Some(hint) = hint_for(&e) {
                costguard::console::alert(hint);
            }
            return ExitCode::from(code);
        }
    };
    costguard::timing::mark("clap");
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("COSTGUARD_LOG"))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let sd = |a: &costguard::cli::StateArg| cmd::state_dir(&a.state_dir);
    let (args, command, detach, no_preflight, mode) = match cli.subcommand {
        Some(Sub::List(a)) => return costguard::manage::list(&sd(&a.dir), &a),
        Some(Sub::Wait(w)) => return costguard::manage::wait(&sd(&w.state), w.run.as_deref()),
        Some(Sub::Clean(c)) => return costguard::manage::clean(&sd(&c.state), &c),
        Some(Sub::Status(r)) => return cmd::status(&sd(&r.state), r.run.as_deref(), r.json),
        Some(Sub::Report(r)) => return cmd::report(&sd(&r.state), r.run.as_deref()),
        Some(Sub::Stop(r)) => return cmd::stop(&sd(&r.state), r.run.as_deref()),
        Some(Sub::Logs(l)) => return cmd::logs(&sd(&l.state), l.run.as_deref(), l.follow),
        Some(Sub::Agent(a)) => return agent(*a),
        Some(Sub::Prices(p)) => return cmd::prices(&p),
        Some(Sub::Watch(w)) => return costguard::watch::run(&w.target, w.desktop, &sd(&w.state)),
        Some(Sub::Notify(NotifyCmd::Test(a))) => (*a, Vec::new(), false, false, Mode::NotifyTest),
        Some(Sub::Run(r)) => (r.guard, r.command, r.detach, r.no_preflight, Mode::Run),
        Some(Sub::Check(r)) => (r.guard, r.command, false, false, Mode::Check),
        None => (cli.guard, cli.command, false, false, Mode::Run),
    };
    costguard::timing::mark("parsed");
    let settings = match Settings::resolve_run(&args, no_preflight) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    costguard::timing::mark("resolved");
    costguard::console::set_quiet(settings.quiet);
    costguard::redact::install(settings.notify.secrets());
    match mode {
        Mode::NotifyTest => return notify_test(&settings),
        Mode::Check => {
            // The plan expanded first: what would run, phase by phase and step by step.
            if let Some(plan) = &settings.plan {
                match costguard::run::plan::load(plan) {
                    Ok(phases) => {
                        costguard::console::out(costguard::run::plan::describe(&phases));
                    }
                    Err(e) => return fail(&costguard::run::GuardError::Plan(e)),
                }
            }
            let ok = preflight(&settings);
            return ExitCode::from(u8::from(!ok));
        }
        Mode::Run if detach => return detached(&settings, &command, no_preflight),
        Mode::Run => {}
    }
    guarded(settings, command)
}

/// A guarded run (a command or a plan) on the one-thread runtime; its exit code.
fn guarded(settings: Settings, command: Vec<std::ffi::OsString>) -> ExitCode {
    costguard::supervise::prepare_supervisor();
    // One thread: the job is spawned from the main thread, which lives as long as we do
    // (PDEATHSIG follows the spawning thread).
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    costguard::timing::mark("runtime");
    let ran = rt.block_on(costguard::run::run_main(settings, command));
    costguard::timing::mark("returned");
    // Everything the run must finish (the record, the report, the outbox, the hook) was
    // awaited inside run_main; what is left are idle pool threads, which the exit ends
    // without waiting for each to wake up and be joined.
    rt.shutdown_background();
    costguard::timing::mark("exit");
    match ran {
        Ok(code) => ExitCode::from(code),
        // A resumed run already at its ceiling starts nothing: the ceiling's exit code.
        Err(costguard::run::GuardError::Spent(why)) => {
            costguard::console::alert(why);
            ExitCode::from(exit::CEILING_KILLED)
        }
        Err(e) => fail(&e),
    }
}

/// `run --detach`: the plan or command checked, the preflight answered, then the re-exec.
fn detached(settings: &Settings, command: &[std::ffi::OsString], no_preflight: bool) -> ExitCode {
    if let Some(plan) = &settings.plan {
        if let Err(e) = costguard::run::plan::load(plan) {
            return fail(&costguard::run::GuardError::Plan(e));
        }
    } else if command.is_empty() {
        return fail(&costguard::run::GuardError::NoCommand);
    }
    if !no_preflight && !preflight(settings) {
        costguard::console::error(
            "refusing to start in the background until the preflight is answered (or pass --no-preflight, which status and the report will show)",
        );
        return ExitCode::from(exit::OWN_FAILURE);
    }
    cmd::detach(settings, command)
}

/// `costguard notify test`: 0 when every channel took the test event, 1 when any failed,
/// 125 when none is configured.
fn notify_test(settings: &Settings) -> ExitCode {
    if settings.notify.channels.is_empty() {
        costguard::console::error(
            "no notification channel configured (give --slack-webhook, --webhook, \
             --alertmanager, --pagerduty-routing-key, --notify-command or --email-to with \
             --smtp-url, or their COSTGUARD_* \
             variables or [notify] config keys)",
        );
        return ExitCode::from(exit::OWN_FAILURE);
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    let host = costguard::events::hostname();
    let mut lines = Vec::new();
    let failed = rt.block_on(costguard::notify::check::run(
        &settings.notify,
        &host,
        "`costguard notify test`",
        &mut lines,
    ));
    for l in lines {
        costguard::console::outln(l);
    }
    ExitCode::from(u8::from(failed > 0))
}

/// `costguard agent`: the selector, then the agent loop on a one-thread runtime.
fn agent(a: costguard::cli::Sourced<costguard::cli::AgentArgs>) -> ExitCode {
    use costguard::run::agent::{Selection, Selector};
    let settings = match Settings::resolve_agent(&a) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    costguard::console::set_quiet(settings.quiet);
    costguard::redact::install(settings.notify.secrets());
    let target = match Selection::parse(&a.target) {
        Ok(t) => t,
        Err(e) => {
            costguard::console::error(e);
            return ExitCode::from(exit::OWN_FAILURE);
        }
    };
    let exclude = match a.exclude.as_deref().map(regex::Regex::new).transpose() {
        Ok(r) => r,
        Err(e) => {
            costguard::console::error(format!("invalid --exclude: {e}"));
            return ExitCode::from(exit::OWN_FAILURE);
        }
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    match rt.block_on(costguard::run::session::run_agent(
        settings,
        Selector::new(target, exclude),
    )) {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(&e),
    }
}

/// What a person most likely meant when clap found an argument it did not expect: a
/// subcommand with a typo (`costguard lst`), or a job given without `--`.
fn hint_for(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() != ErrorKind::UnknownArgument && e.kind() != ErrorKind::InvalidSubcommand {
        return None;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    if arg.starts_with('-') {
        return None; // clap already suggests similar flags
    }
    if e.render().to_string().contains("Usage: costguard agent") {
        return Some(
            "error: the agent takes no command: it guards the GPU processes it finds \
             (--target all | cgroup:TEXT | cmdline:REGEX); to guard one command, run \
             costguard [flags] -- CMD"
                .into(),
        );
    }
    const SUBCOMMANDS: [&str; 12] = [
        "run", "agent", "check", "list", "status", "logs", "stop", "report", "notify", "wait",
        "clean", "prices",
    ];
    let near = SUBCOMMANDS
        .iter()
        .map(|s| (strsim::levenshtein(arg, s), *s))
        .filter(|(d, s)| *d <= 2 && *d < s.len())
        .min();
    Some(match near {
        Some((_, s)) => format!("tip: did you mean `costguard {s}`?"),
        None => format!("tip: put the job after `--`, e.g. costguard --max-wall 1h -- {arg} …"),
    })
}

/// Prints the whole error chain on one line and exits 125.
fn fail(e: &dyn std::error::Error) -> ExitCode {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg += &format!(": {text}");
        }
        src = s.source();
    }
    costguard::console::error(costguard::redact::text(&msg));
    ExitCode::from(exit::OWN_FAILURE)
}
