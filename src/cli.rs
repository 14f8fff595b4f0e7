//! Command-line definitions (clap): each setting's one declaration (flag, variable, value
//! name, default, help), raw `Option`s here; `config` derives the file keys, layers and validates.

use std::ffi::OsString;
use std::path::PathBuf;

use std::collections::BTreeMap;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches, Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  costguard --max-usd 40 --usd-per-hour 24.5 -- python train.py
  costguard --max-wall 6h --kill-grace 30s -- ./train.sh
  COSTGUARD_USD_PER_HOUR=2.49 costguard --max-usd 5 --warn-signal USR1 --warn-before 2m -- make bench
  costguard run --detach --max-usd 40 --stall 20m --progress-regex 'step (\\d+)' \\
      --slack-webhook-file ~/.slack --on-exit 'cp -r out /data/runs/$COSTGUARD_RUN_ID' -- python train.py
  costguard status; costguard logs RUN -f; costguard wait RUN; costguard report RUN
  costguard list --state killed --since 2d; costguard clean --older-than 30d --dry-run
  costguard agent --target 'cmdline:^python train' --idle 15m --max-usd 40

Exit status: the job's own status when it ends by itself; 128+N when it died of signal N;
124 when a ceiling killed it; 125 for costguard's own failures (bad flags, values, config);
126 when the command cannot be executed; 127 when it is not found.

The page: while a run lives, http://127.0.0.1:9947/ shows it at a glance (spend, ceilings,
GPUs, timeline, events); the start line names its address (the next free port when 9947 is
taken), and costguard status shows it.";

/// Guards metered GPU time: meters spend, watches the GPUs, and kills the job's whole
/// process tree at a dollar, wall-clock, idle, stall or memory ceiling.
#[derive(Debug, Parser)]
#[command(
    name = "costguard",
    version,
    after_help = EXAMPLES,
    args_conflicts_with_subcommands = true,
    max_term_width = 110,
    term_width = 110,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub subcommand: Option<Sub>,

    #[command(flatten)]
    pub guard: Guard,

    /// The command to guard, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// `costguard [flags] -- CMD`, the wrapper's own form, parsed without building the
/// subcommands — `run`, `check` and `agent` each repeat the guard's fifty flags, so clap
/// builds them four times for the full command, on every job's start.
#[derive(Debug, Parser)]
#[command(name = "costguard", max_term_width = 110, term_width = 110)]
struct Wrapper {
    #[command(flatten)]
    guard: Guard,
    #[arg(last = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// Every word that names a subcommand (`Sub`, and clap's own `help`); a test holds it to
/// clap's list.
const SUBCOMMAND_WORDS: [&str; 14] = [
    "notify", "run", "check", "list", "status", "logs", "wait", "clean", "stop", "report", "watch",
    "agent", "prices", "help",
];

impl Cli {
    /// The command line, parsed. The wrapper's form (a command after `--`, no word before
    /// it that names a subcommand, help or the version) is parsed by [`Wrapper`] alone;
    /// anything else, and anything `Wrapper` refuses, by the full command, which words
    /// every error, help and version text.
    pub fn parse_args() -> Result<Cli, clap::Error> {
        Cli::parse_from_args(std::env::args_os().collect())
    }

    fn parse_from_args(args: Vec<OsString>) -> Result<Cli, clap::Error> {
        if wrapper_form(&args) {
            if let Ok(w) = Wrapper::try_parse_from(&args) {
                return Ok(Cli {
                    subcommand: None,
                    guard: w.guard,
                    command: w.command,
                });
            }
        }
        Cli::try_parse_from(args)
    }
}

/// Whether `args` (the program's name first) has the wrapper's form.
fn wrapper_form(args: &[OsString]) -> bool {
    let Some(end) = args.iter().position(|a| a == "--") else {
        return false;
    };
    args.get(1..end).is_some_and(|before| {
        before.iter().all(|a| {
            let a = a.to_string_lossy();
            !SUBCOMMAND_WORDS.contains(&a.as_ref())
                && !matches!(a.as_ref(), "-h" | "--help" | "-V" | "--version")
        })
    })
}

#[derive(Debug, Subcommand)]
pub enum Sub {
    /// Notification tools.
    #[command(subcommand)]
    Notify(NotifyCmd),
    /// Run a job under the guard (as `costguard [flags] -- CMD`), optionally detached.
    Run(Box<RunArgs>),
    /// Preflight: is the run safe to leave? (notification path, watchdog, exit hook)
    Check(Box<RunArgs>),
    /// The runs in the state directory, newest first.
    List(ListArgs),
    /// One run's check-in: phase, elapsed, ETA, kills, spend, what it waits on.
    Status(RunRef),
    /// A run's output (output.log); -f follows it while the run lives, then exits with the
    /// run's exit status.
    Logs(LogsArgs),
    /// Wait for a run (e.g. one started with run --detach) to end; exit with its exit status.
    /// Without RUN, wait for every running run.
    Wait(WaitArgs),
    /// Remove ended runs from the state directory (never a running one, nor one whose
    /// notifications are still waiting in the outbox).
    Clean(CleanArgs),
    /// Stop a running run: TERM to its costguard, which ends the job's tree.
    Stop(RunRef),
    /// Print a run's postmortem (writing report.md again from its ledger).
    Report(RunRef),
    /// Follow a run's events from anywhere the endpoint reaches (a URL through ssh -L or
    /// kubectl port-forward, or a run id here); exit with the run's exit status.
    Watch(WatchArgs),
    /// Sidecar / node agent: guard the GPU processes it can see (no command of its own).
    #[command(
        mut_arg("plan", |a| a.hide(true)),
        mut_arg("progress_regex", |a| a.hide(true)),
        mut_arg("progress_total", |a| a.hide(true)),
        mut_arg("output_log_max", |a| a.hide(true)),
        mut_arg("stall", |a| a.help(
            "Kill when --heartbeat-file was not touched for this long (the agent cannot read \
             its targets' output)")),
        mut_arg("listen", |a| a.help(
            "Address for the page (/), /metrics, /healthz and /status")),
    )]
    Agent(Box<Sourced<AgentArgs>>),
    /// The shipped instance price catalog (what a box of a provider's type costs per hour).
    Prices(PricesArgs),
}

#[derive(Debug, Args)]
pub struct PricesArgs {
    /// Only this provider: aws, gcp, azure, runpod, lambda (vast prices come from its API).
    #[arg(long, value_name = "PROVIDER")]
    pub provider: Option<String>,
    /// Instance types (or GPU models) containing this text, e.g. p5.48xlarge, a3-highgpu, H100.
    #[arg(value_name = "TYPE")]
    pub instance_type: Option<String>,
    /// Rows that win over the shipped catalog (CSV with the catalog's columns).
    #[arg(long, env = "COSTGUARD_PRICE_TABLE", value_name = "FILE")]
    pub price_table: Option<PathBuf>,
    /// Machine-readable output (one JSON object per row).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub guard: Guard,
    /// Which GPU processes to guard: all, cgroup:TEXT (in /proc/PID/cgroup, e.g. a pod uid
    /// or container id), or cmdline:REGEX.
    #[arg(
        long,
        env = "COSTGUARD_TARGET",
        default_value = "all",
        value_name = "SELECTOR"
    )]
    pub target: String,
    /// Never touch processes whose command line matches (e.g. other sidecars).
    #[arg(long, env = "COSTGUARD_EXCLUDE", value_name = "REGEX")]
    pub exclude: Option<String>,
    /// Once every GPU process it has seen has ended by itself, record `completed` and exit 0,
    /// so a Job's pod completes and its node is freed.
    #[arg(long, env = "COSTGUARD_EXIT_WHEN_DONE", value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    pub exit_when_done: Option<bool>,
    /// The forgotten box: release it (--release stop, or --release-command) once, for this
    /// long, no GPU process exists and every GPU is below --idle-below.
    #[arg(
        long,
        env = "COSTGUARD_IDLE_BOX",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub idle_box: Option<String>,
    /// With --idle-box: keep the box while someone is logged in (an interactive session).
    #[arg(long, env = "COSTGUARD_KEEP_IF_LOGGED_IN", value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    pub keep_if_logged_in: Option<bool>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub guard: Guard,
    /// Start in the background: print the run id and return; the run survives the terminal.
    #[arg(long)]
    pub detach: bool,
    /// Start even when the preflight has unanswered questions (recorded in status and report).
    #[arg(long)]
    pub no_preflight: bool,
    /// The command to guard, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args, Clone)]
pub struct StateArg {
    /// costguard's state directory [default: $XDG_STATE_HOME/costguard, else ~/.local/state/costguard].
    #[arg(long, env = "COSTGUARD_STATE_DIR", value_name = "PATH")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunRef {
    /// The run id [default for status: the newest run].
    pub run: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub state: StateArg,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// A costguard endpoint (http://127.0.0.1:9947) or a run id in the state directory.
    #[arg(value_name = "TARGET")]
    pub target: String,
    /// Also show kills, failures, completion and budget warnings as desktop notifications
    /// (freedesktop notifications on the session D-Bus).
    #[arg(long)]
    pub desktop: bool,
    #[command(flatten)]
    pub state: StateArg,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// One JSON object per run (the ledger, with `status` and `run_dir`), newest first.
    #[arg(long)]
    pub json: bool,
    /// Only runs in these states: running, completed, failed, killed, stopped, crashed,
    /// preempted, corrupted (a comma-separated list).
    #[arg(long, value_name = "STATES")]
    pub state: Option<String>,
    /// Only runs started within this long before now (90m, 2d, 1-00:00:00).
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub since: Option<String>,
    #[command(flatten)]
    pub dir: StateArg,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// The run id [default: every running run; exit with the first non-zero status].
    pub run: Option<String>,
    #[command(flatten)]
    pub state: StateArg,
}

#[derive(Debug, Args)]
pub struct CleanArgs {
    /// Only runs that ended at least this long ago (30d, 12h) [default: every ended run].
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub older_than: Option<String>,
    /// Say what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub state: StateArg,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The run id [default: the newest run].
    pub run: Option<String>,
    /// Keep printing new output until the run ends.
    #[arg(long, short = 'f')]
    pub follow: bool,
    #[command(flatten)]
    pub state: StateArg,
}

#[derive(Debug, Subcommand)]
pub enum NotifyCmd {
    /// Send a test event to every configured channel and report each one.
    /// Exit 0 when all delivered, 1 when any failed, 125 when none is configured.
    Test(Box<Guard>),
}

/// Flags as clap parsed them, with where clap took each one from: the command line, the
/// environment, or the default declared with the flag. `config` needs the difference: the
/// config file sits between a default and the environment, and errors name the layer.
#[derive(Debug, Clone, Default)]
pub struct Sourced<T> {
    pub args: T,
    sources: BTreeMap<String, ValueSource>,
}

/// A run's flags with their sources.
pub type Guard = Sourced<GuardArgs>;

impl<T> Sourced<T> {
    /// Where the value of the flag with clap id `id` (the field's name) came from; None when
    /// it has neither a value nor a default.
    pub fn source(&self, id: &str) -> Option<ValueSource> {
        self.sources.get(id).copied()
    }

    /// Whether a person gave this flag, on the command line or in the environment.
    pub fn given(&self, id: &str) -> bool {
        matches!(
            self.source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    }

    fn sources_of(m: &ArgMatches) -> BTreeMap<String, ValueSource> {
        m.ids()
            .filter_map(|id| Some((id.to_string(), m.value_source(id.as_str())?)))
            .collect()
    }
}

impl<T> std::ops::Deref for Sourced<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.args
    }
}

impl<T: FromArgMatches> FromArgMatches for Sourced<T> {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        Self::from_arg_matches_mut(&mut m.clone())
    }
    fn from_arg_matches_mut(m: &mut ArgMatches) -> Result<Self, clap::Error> {
        let sources = Self::sources_of(m);
        Ok(Sourced {
            args: T::from_arg_matches_mut(m)?,
            sources,
        })
    }
    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        self.update_from_arg_matches_mut(&mut m.clone())
    }
    fn update_from_arg_matches_mut(&mut self, m: &mut ArgMatches) -> Result<(), clap::Error> {
        self.sources.extend(Self::sources_of(m));
        self.args.update_from_arg_matches_mut(m)
    }
}

impl<T: Args> Args for Sourced<T> {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        T::augment_args(cmd)
    }
    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        T::augment_args_for_update(cmd)
    }
    fn group_id() -> Option<clap::Id> {
        T::group_id()
    }
}

// Every flag whose value is a number (a duration, amount, size, percentage or count) has
// `allow_hyphen_values`: `--kill-grace -1s` then reaches the value's parser, which says
// "must not be negative", instead of clap reading `-1` as a flag and suggesting `-- -1`.

/// The limits and settings of one guarded run: each declared once here — its flag, variable,
/// value name, default and help; its config file key is the long flag (`config::file`).
/// Flags win over the environment, the environment over the file, the file over defaults.
#[derive(Debug, Args, Default, Clone)]
pub struct GuardArgs {
    /// TOML config file with the same settings (keys as the long flags, `-` or `_`; the
    /// notification ones in a [notify] table).
    #[arg(long, env = "COSTGUARD_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Dollar ceiling: kill the job when accrued spend reaches it (40, 40.50, $40).
    #[arg(
        long,
        env = "COSTGUARD_MAX_USD",
        value_name = "AMOUNT",
        allow_hyphen_values = true
    )]
    pub max_usd: Option<String>,

    /// Price of the whole job in dollars per hour; without it the box's own price is used
    /// (its provider's API, else the instance catalog), else the per-GPU table.
    #[arg(
        long,
        env = "COSTGUARD_USD_PER_HOUR",
        value_name = "RATE",
        allow_hyphen_values = true
    )]
    pub usd_per_hour: Option<String>,

    /// Which provider's box this is: auto (ask the box: environment, DMI, metadata server),
    /// none (ask nothing), or aws, gcp, azure, runpod, vast, lambda.
    #[arg(
        long,
        env = "COSTGUARD_PROVIDER",
        default_value = "auto",
        value_name = "PROVIDER"
    )]
    pub provider: Option<String>,

    /// A CSV of instance prices (the catalog's columns: provider,instance_type,region,…,
    /// usd_per_hour,…) whose rows win over the shipped catalog.
    #[arg(long, env = "COSTGUARD_PRICE_TABLE", value_name = "FILE")]
    pub price_table: Option<PathBuf>,

    /// Owned hardware: price the energy NVML reports at this many dollars per kWh.
    #[arg(
        long,
        env = "COSTGUARD_USD_PER_KWH",
        value_name = "PRICE",
        allow_hyphen_values = true
    )]
    pub usd_per_kwh: Option<String>,

    /// Wall-clock ceiling (90s, 45m, 1h30m, 1h30, 2d; 5 = 5s, 01:30:00, 1-00:00:00). A bare
    /// number is seconds, as for timeout(1), not minutes as in Slurm's --time; Slurm's
    /// MM:SS, HH:MM:SS, D-HH, D-HH:MM and D-HH:MM:SS are read as Slurm reads them.
    #[arg(
        long,
        env = "COSTGUARD_MAX_WALL",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub max_wall: Option<String>,

    /// Time between TERM and KILL when the job is stopped.
    #[arg(
        long,
        env = "COSTGUARD_KILL_GRACE",
        default_value = "10s",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub kill_grace: Option<String>,

    /// Signal sent to every process of the job --warn-before a ceiling kill (e.g. USR1).
    #[arg(long, env = "COSTGUARD_WARN_SIGNAL", value_name = "SIG")]
    pub warn_signal: Option<String>,

    /// How long before a dollar or wall ceiling kill the warning signal is sent.
    #[arg(
        long,
        env = "COSTGUARD_WARN_BEFORE",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub warn_before: Option<String>,

    /// Budget fractions that raise a warning event.
    #[arg(
        long,
        env = "COSTGUARD_WARN_AT",
        default_value = "50%,80%,95%",
        value_name = "PCTS"
    )]
    pub warn_at: Option<String>,

    /// GPU telemetry source: auto (NVML when it loads), nvml (required) or none.
    #[arg(
        long,
        env = "COSTGUARD_GPU",
        default_value = "auto",
        value_name = "auto|nvml|none"
    )]
    pub gpu: Option<String>,

    /// Load this NVML library instead of libnvidia-ml.so.1.
    #[arg(long, env = "COSTGUARD_NVML_LIB", value_name = "PATH")]
    pub nvml_lib: Option<PathBuf>,

    /// Sampling interval for GPU and host telemetry.
    #[arg(
        long,
        env = "COSTGUARD_INTERVAL",
        default_value = "1s",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub interval: Option<String>,

    /// Kill once the job's GPUs stay below --idle-below for this long.
    #[arg(
        long,
        env = "COSTGUARD_IDLE",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub idle: Option<String>,

    /// Utilization under which a GPU counts as idle.
    #[arg(
        long,
        env = "COSTGUARD_IDLE_BELOW",
        default_value = "5%",
        value_name = "PCT",
        allow_hyphen_values = true
    )]
    pub idle_below: Option<String>,

    /// Setup time at the start exempt from the idle and stall watchdogs.
    #[arg(
        long,
        env = "COSTGUARD_IDLE_GRACE",
        default_value = "0s",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub idle_grace: Option<String>,

    /// Kill when no progress signal (output line, regex step, heartbeat) came for this long.
    #[arg(
        long,
        env = "COSTGUARD_STALL",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub stall: Option<String>,

    /// A regex whose first capture group is a number that must increase, e.g. 'step (\d+)'.
    #[arg(long, env = "COSTGUARD_PROGRESS_REGEX", value_name = "RE")]
    pub progress_regex: Option<String>,

    /// The final value of the progress number, for ETA and projected spend.
    #[arg(
        long,
        env = "COSTGUARD_PROGRESS_TOTAL",
        value_name = "N",
        allow_hyphen_values = true
    )]
    pub progress_total: Option<String>,

    /// A file whose modification time advancing counts as progress.
    #[arg(long, env = "COSTGUARD_HEARTBEAT_FILE", value_name = "PATH")]
    pub heartbeat_file: Option<PathBuf>,

    /// Ceiling on the job's GPU memory on any one GPU (16GiB, 80%).
    #[arg(
        long,
        env = "COSTGUARD_MAX_GPU_MEM",
        value_name = "SIZE|PCT",
        allow_hyphen_values = true
    )]
    pub max_gpu_mem: Option<String>,

    /// Ceiling on the RSS of the job's whole process tree (e.g. 64GiB).
    #[arg(
        long,
        env = "COSTGUARD_MAX_HOST_MEM",
        value_name = "SIZE",
        allow_hyphen_values = true
    )]
    pub max_host_mem: Option<String>,

    /// Keep serving /metrics and /status this long after the run ends, so Prometheus scrapes
    /// the kill and the final spend (e.g. twice the scrape interval).
    #[arg(
        long,
        env = "COSTGUARD_LINGER",
        default_value = "0s",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub linger: Option<String>,

    /// Fail-closed for money: kill the run once its record (ledger, event log) has failed to
    /// be written for this long (a full or read-only disk), or `off` to run on unrecorded.
    #[arg(
        long,
        env = "COSTGUARD_RECORD_GRACE",
        default_value = "60s",
        value_name = "DURATION|off"
    )]
    pub record_grace: Option<String>,

    /// GPUs are shared with other containers (time-slicing, MPS): memory of GPU processes
    /// whose pids do not resolve in this PID namespace is then not counted as the job's.
    /// By default a GPU the job holds is the job's alone, as the Kubernetes device plugin and
    /// rented pods allocate them.
    #[arg(long, env = "COSTGUARD_SHARED_GPUS", value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    pub shared_gpus: Option<bool>,

    /// Cap on the run's output.log: past it the file rotates to output.log.1, so the job's
    /// output never takes more than twice this on disk.
    #[arg(
        long,
        env = "COSTGUARD_OUTPUT_LOG_MAX",
        default_value = "64MiB",
        value_name = "SIZE",
        allow_hyphen_values = true
    )]
    pub output_log_max: Option<String>,

    /// Address for the page (http://ADDR/), /metrics, /healthz and /status; when the default
    /// is taken, the next free port up to 9962.
    #[arg(
        long,
        env = "COSTGUARD_LISTEN",
        default_value = "127.0.0.1:9947",
        value_name = "ADDR"
    )]
    pub listen: Option<String>,

    /// Serve no HTTP endpoint (wins over --listen and COSTGUARD_LISTEN).
    #[arg(long)]
    pub no_listen: bool,

    /// No live status line and no start notice on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,

    /// Show the live status line and notices even where the config file says quiet.
    #[arg(long, conflicts_with = "quiet")]
    pub no_quiet: bool,

    /// Directory for costguard's durable state: the run records (runs/) and the
    /// notification outbox (outbox/)
    /// [default: $XDG_STATE_HOME/costguard, else ~/.local/state/costguard].
    #[arg(long, env = "COSTGUARD_STATE_DIR", value_name = "PATH")]
    pub state_dir: Option<PathBuf>,

    /// Run id: a new run, or an earlier one to resume (its spend carries over)
    /// [default: <program>-YYYY-MM-DD-HHMM].
    #[arg(long, env = "COSTGUARD_RUN_ID", value_name = "ID")]
    pub run_id: Option<String>,

    /// A plan file (TOML) of ordered phases, each with its command and caps, instead of CMD.
    #[arg(long, env = "COSTGUARD_PLAN", value_name = "FILE")]
    pub plan: Option<PathBuf>,

    /// Exit hook: run by `sh -c` after the run with its facts in COSTGUARD_* variables.
    /// Commands that push, deploy, publish or send are refused (see README).
    #[arg(long, env = "COSTGUARD_ON_EXIT", value_name = "CMD")]
    pub on_exit: Option<String>,

    /// How long the exit hook may run: then TERM, and KILL 5 s later, to its whole
    /// process group.
    #[arg(
        long,
        env = "COSTGUARD_ON_EXIT_TIMEOUT",
        default_value = "5m",
        value_name = "DURATION"
    )]
    pub on_exit_timeout: Option<String>,

    /// After a kill, stop what bills: stop (or terminate) this box through its provider's API
    /// with the credential the box already has. terminate destroys disks and
    /// needs --allow-side-effects.
    #[arg(
        long,
        env = "COSTGUARD_RELEASE",
        default_value = "none",
        value_name = "none|stop|terminate"
    )]
    pub release: Option<String>,

    /// Release the box with `sh -c CMD` (the run's COSTGUARD_* variables set) instead of a
    /// provider call, e.g. 'sudo shutdown -h now'; giving it turns release on.
    #[arg(long, env = "COSTGUARD_RELEASE_COMMAND", value_name = "CMD")]
    pub release_command: Option<String>,

    /// Which endings release the box: kill (any ceiling or watchdog kill) or end (every
    /// ending except a stop by a person: Ctrl-C, costguard stop).
    #[arg(
        long,
        env = "COSTGUARD_RELEASE_ON",
        default_value = "kill",
        value_name = "kill|end"
    )]
    pub release_on: Option<String>,

    /// How long a failing release is retried, with backoff.
    #[arg(
        long,
        env = "COSTGUARD_RELEASE_RETRY_FOR",
        default_value = "2m",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub release_retry_for: Option<String>,

    /// Let --on-exit run a command that pushes, deploys, publishes or sends; and let
    /// --release terminate destroy the box.
    #[arg(long)]
    pub allow_side_effects: bool,

    /// Fleet budget: kill this workload when the fleet's total spend (read from Prometheus)
    /// reaches this amount.
    #[arg(
        long,
        env = "COSTGUARD_FLEET_MAX_USD",
        value_name = "AMOUNT",
        help_heading = "Fleet",
        allow_hyphen_values = true
    )]
    pub fleet_max_usd: Option<String>,

    /// Prometheus base URL that scrapes every costguard of the fleet.
    #[arg(
        long,
        env = "COSTGUARD_PROMETHEUS_URL",
        value_name = "URL",
        help_heading = "Fleet"
    )]
    pub prometheus_url: Option<String>,

    /// Label selector of the fleet's costguards, e.g. '{experiment="bert"}' [default: all].
    #[arg(
        long,
        env = "COSTGUARD_FLEET_SELECTOR",
        value_name = "SELECTOR",
        help_heading = "Fleet"
    )]
    pub fleet_selector: Option<String>,

    /// A PromQL expression giving the fleet's total instead of the built-in query (for
    /// large fleets: a recording rule evaluated once by Prometheus).
    #[arg(
        long,
        env = "COSTGUARD_FLEET_QUERY",
        value_name = "PROMQL",
        help_heading = "Fleet"
    )]
    pub fleet_query: Option<String>,

    /// How often to read the fleet's total.
    #[arg(
        long,
        env = "COSTGUARD_FLEET_INTERVAL",
        default_value = "15s",
        value_name = "DURATION",
        help_heading = "Fleet",
        allow_hyphen_values = true
    )]
    pub fleet_interval: Option<String>,

    /// Slack incoming-webhook URL (a secret: prefer the env var or --slack-webhook-file).
    #[arg(
        long,
        env = "COSTGUARD_SLACK_WEBHOOK",
        value_name = "URL",
        hide_env_values = true,
        help_heading = "Notifications"
    )]
    pub slack_webhook: Option<String>,

    /// File holding the Slack webhook URL.
    #[arg(
        long,
        env = "COSTGUARD_SLACK_WEBHOOK_FILE",
        value_name = "PATH",
        help_heading = "Notifications"
    )]
    pub slack_webhook_file: Option<PathBuf>,

    /// Generic webhook URL: each event POSTed as JSON (schema costguard.event.v1).
    #[arg(
        long,
        env = "COSTGUARD_WEBHOOK",
        value_name = "URL",
        hide_env_values = true,
        help_heading = "Notifications"
    )]
    pub webhook: Option<String>,

    /// File holding the webhook URL.
    #[arg(
        long,
        env = "COSTGUARD_WEBHOOK_FILE",
        value_name = "PATH",
        help_heading = "Notifications"
    )]
    pub webhook_file: Option<PathBuf>,

    /// Alertmanager base URL (API v2): events become alerts that resolve by themselves.
    #[arg(
        long,
        env = "COSTGUARD_ALERTMANAGER",
        value_name = "URL",
        hide_env_values = true,
        help_heading = "Notifications"
    )]
    pub alertmanager: Option<String>,

    /// PagerDuty Events API v2 routing key (a secret: prefer the env var or the file).
    #[arg(
        long,
        env = "COSTGUARD_PAGERDUTY_ROUTING_KEY",
        value_name = "KEY",
        hide_env_values = true,
        help_heading = "Notifications"
    )]
    pub pagerduty_routing_key: Option<String>,

    /// File holding the PagerDuty routing key.
    #[arg(
        long,
        env = "COSTGUARD_PAGERDUTY_ROUTING_KEY_FILE",
        value_name = "PATH",
        help_heading = "Notifications"
    )]
    pub pagerduty_routing_key_file: Option<PathBuf>,

    /// PagerDuty events endpoint.
    #[arg(
        long,
        env = "COSTGUARD_PAGERDUTY_URL",
        default_value = "https://events.pagerduty.com/v2/enqueue",
        value_name = "URL",
        help_heading = "Notifications"
    )]
    pub pagerduty_url: Option<String>,

    /// Command run by `sh -c` for each event, the event's JSON on its stdin.
    #[arg(
        long,
        env = "COSTGUARD_NOTIFY_COMMAND",
        value_name = "CMD",
        help_heading = "Notifications"
    )]
    pub notify_command: Option<String>,

    /// Email the events to these addresses (ADDR[,ADDR]), through --smtp-url.
    #[arg(
        long,
        env = "COSTGUARD_EMAIL_TO",
        value_name = "ADDR[,ADDR]",
        help_heading = "Notifications"
    )]
    pub email_to: Option<String>,

    /// SMTP server for --email-to: smtp://[user@]host[:port] (STARTTLS when offered, port 25)
    /// or smtps://[user@]host[:port] (TLS, port 465). The password: COSTGUARD_SMTP_PASSWORD or
    /// --smtp-password-file.
    #[arg(
        long,
        env = "COSTGUARD_SMTP_URL",
        value_name = "URL",
        hide_env_values = true,
        help_heading = "Notifications"
    )]
    pub smtp_url: Option<String>,

    /// File holding the SMTP password (or give it in COSTGUARD_SMTP_PASSWORD).
    #[arg(
        long,
        env = "COSTGUARD_SMTP_PASSWORD_FILE",
        value_name = "PATH",
        help_heading = "Notifications"
    )]
    pub smtp_password_file: Option<PathBuf>,

    /// Sender of the mails [default: costguard@<hostname>].
    #[arg(
        long,
        env = "COSTGUARD_EMAIL_FROM",
        value_name = "ADDR",
        help_heading = "Notifications"
    )]
    pub email_from: Option<String>,

    /// PEM file of a private CA to trust for the SMTP server's certificate, besides the public
    /// roots.
    #[arg(
        long,
        env = "COSTGUARD_SMTP_CA_FILE",
        value_name = "PATH",
        help_heading = "Notifications"
    )]
    pub smtp_ca_file: Option<PathBuf>,

    // The default depends on the channel (and a plan), so it is said in the help, from the
    // very lists `notify` uses.
    #[arg(
        long,
        help = concat!(
            "Event kinds to send: all, or a list of kinds, KIND:REASON allowed [default: ",
            crate::notify::default_kinds!(),
            "; PagerDuty: ",
            crate::notify::pager_kinds!(),
            "]"
        ),
        env = "COSTGUARD_NOTIFY_ON",
        value_name = "KINDS",
        help_heading = "Notifications"
    )]
    pub notify_on: Option<String>,

    /// How long to keep delivering after the run ends.
    #[arg(
        long,
        env = "COSTGUARD_NOTIFY_FLUSH",
        default_value = "10s",
        value_name = "DURATION",
        help_heading = "Notifications",
        allow_hyphen_values = true
    )]
    pub notify_flush: Option<String>,

    /// Bound on one delivery attempt.
    #[arg(
        long,
        env = "COSTGUARD_NOTIFY_TIMEOUT",
        default_value = "10s",
        value_name = "DURATION",
        help_heading = "Notifications",
        allow_hyphen_values = true
    )]
    pub notify_timeout: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(Into::into).collect()
    }

    #[test]
    fn the_subcommand_words_are_clap_s() {
        let cmd = Cli::command();
        let mut words: Vec<String> = cmd
            .get_subcommands()
            .flat_map(|s| {
                std::iter::once(s.get_name().to_string())
                    .chain(s.get_all_aliases().map(str::to_string))
            })
            .chain(["help".to_string()])
            .collect();
        words.sort();
        let mut ours: Vec<String> = SUBCOMMAND_WORDS.iter().map(|w| w.to_string()).collect();
        ours.sort();
        assert_eq!(words, ours);
    }

    #[test]
    fn the_wrapper_form_parses_as_the_full_command_does() {
        for v in [
            &["costguard", "--", "true"][..],
            &[
                "costguard",
                "-q",
                "--no-listen",
                "--max-usd",
                "$40",
                "--",
                "python",
                "t.py",
                "--lr",
                "3",
            ],
            &[
                "costguard",
                "--max-wall=6h",
                "--notify-on",
                "killed",
                "--",
                "sh",
                "-c",
                "run -- x",
            ],
            &["costguard", "--kill-grace", "30s", "--", "--", "run"],
            &["costguard", "--on-exit", "cp out /x", "--", "run"],
            &["costguard", "--max-usd=5", "-q", "--", "-qV"],
        ] {
            assert!(wrapper_form(&args(v)), "{v:?}");
            let fast = Cli::parse_from_args(args(v)).expect("parses");
            let full = Cli::try_parse_from(args(v)).expect("parses");
            assert_eq!(format!("{fast:?}"), format!("{full:?}"), "{v:?}");
        }
    }

    #[test]
    fn other_forms_and_every_error_are_the_full_command_s() {
        for v in [
            &["costguard", "run", "--", "true"][..],
            &["costguard", "--help", "--", "true"],
            &["costguard", "-V"],
            &["costguard", "--max-usd", "5"],
            &["costguard", "list"],
        ] {
            assert!(!wrapper_form(&args(v)), "{v:?}");
        }
        let run = Cli::parse_from_args(args(&["costguard", "run", "--", "true"])).expect("run");
        assert!(matches!(run.subcommand, Some(Sub::Run(_))));
        for v in [
            &["costguard", "--no-listen=yes", "--", "true"][..],
            &["costguard", "--max-usdd", "5", "--", "true"],
            &["costguard", "lst", "--", "true"],
            // Help and version inside a cluster: the wrapper refuses, the full command answers.
            &["costguard", "-qh", "--", "true"],
            &["costguard", "-qV", "--", "true"],
        ] {
            // Where the wrapper's own answer differs from the full command's (help without
            // the subcommands, no version flag, no subcommand to suggest), the full one is
            // what comes back.
            let own = Wrapper::try_parse_from(args(v)).expect_err("the wrapper refuses");
            let full = Cli::try_parse_from(args(v)).expect_err("refused");
            if ["-qh", "-qV", "lst"].contains(&v[1]) {
                assert_ne!(own.to_string(), full.to_string(), "{v:?}");
            }
            let fast = Cli::parse_from_args(args(v)).expect_err("refused");
            assert_eq!(fast.to_string(), full.to_string(), "{v:?}");
        }
    }

    #[test]
    fn a_command_that_is_not_utf_8_passes_through_the_wrapper_form() {
        use std::os::unix::ffi::OsStringExt;
        let odd = OsString::from_vec(vec![b'x', 0xff, b'y']);
        let v = vec!["costguard".into(), "-q".into(), "--".into(), odd.clone()];
        assert!(wrapper_form(&v));
        let fast = Cli::parse_from_args(v.clone()).expect("parses");
        assert_eq!(fast.command, vec![odd]);
        assert_eq!(
            format!("{fast:?}"),
            format!("{:?}", Cli::try_parse_from(v).expect("parses"))
        );
    }
}
