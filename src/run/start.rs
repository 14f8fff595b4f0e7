//! Before the job starts: GPU telemetry, the rate and where it came from, the run id.
//! Everything that can be wrong with the user's input is found here, before any process runs.

use std::time::Duration;

use crate::config::{GpuMode, Settings};
use crate::telemetry::nvml::NvmlSource;
use crate::telemetry::price;
use crate::units::format_money;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `--gpu nvml` (as given) and why NVML is not there.
    #[error("{0}: {1}")]
    NvmlRequired(String, String),
    /// `--max-usd $40.00` (as given) and no rate.
    #[error("{budget} needs a price: give --usd-per-hour RATE (or COSTGUARD_USD_PER_HOUR), or --usd-per-kwh PRICE with NVML available, or run where NVML shows GPUs from the price table or on a cloud box whose price costguard knows (costguard prices){why}")]
    NoRate { budget: String, why: String },
    #[error("{0}")]
    Price(#[from] price::PriceError),
    /// `--usd-per-kwh $0.30` (as given) and why NVML is not there.
    #[error("{0} needs GPU energy readings from NVML, but {1}")]
    NoEnergy(String, String),
    #[error("{0}")]
    Invalid(String),
}

/// Where a fixed rate came from (`rate_source` in /status and the metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateOrigin {
    /// `--usd-per-hour` (it wins over everything the box says).
    Flag,
    /// The per-GPU table (or a `[prices]` model override).
    GpuTable,
    /// The box's provider: its live price, or the instance catalog.
    Box(crate::cloud::RateKind),
}

impl RateOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            RateOrigin::Flag => "flag",
            RateOrigin::GpuTable => "gpu-table",
            RateOrigin::Box(crate::cloud::RateKind::Live) => "live",
            RateOrigin::Box(crate::cloud::RateKind::Catalog) => "catalog",
        }
    }
}

/// How the job is priced.
#[derive(Debug, Clone, PartialEq)]
pub enum Pricing {
    /// A fixed rate in dollars per hour.
    Fixed {
        per_hour: f64,
        source: String,
        origin: RateOrigin,
    },
    /// Energy of the visible GPUs at this many dollars per kWh.
    Energy { per_kwh: f64 },
    /// Nothing known: spend is not metered (allowed only without --max-usd).
    Unknown,
}

pub struct Started {
    pub gpu: Option<NvmlSource>,
    /// Indices of the GPUs the job can see.
    pub visible: Vec<u32>,
    pub pricing: Pricing,
    pub notices: Vec<String>,
    /// What to ask the box (None: `--provider none`).
    pub probe: Option<crate::cloud::Probe>,
    /// How the box is released after the run (checked here, before anything starts).
    pub release: Option<crate::cloud::release::Plan>,
}

pub async fn prepare(settings: &Settings) -> Result<Started, StartError> {
    let mut notices = Vec::new();
    let gpu = open_gpu(settings, &mut notices).await?;
    let cuda = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    let nvidia = std::env::var("NVIDIA_VISIBLE_DEVICES").ok();
    let visible: Vec<&crate::telemetry::GpuInfo> = match &gpu {
        Some(g) => price::visible(&g.inventory, cuda.as_deref(), nvidia.as_deref()),
        None => Vec::new(),
    };
    let visible_idx: Vec<u32> = visible.iter().map(|g| g.index).collect();

    let probe = (settings.provider != crate::cloud::Choice::None).then(|| crate::cloud::Probe {
        choice: settings.provider,
        price_table: settings.price_table.clone(),
        gpus: visible.iter().map(|g| g.model.clone()).collect(),
    });
    if let Some(p) = probe.clone() {
        // Beside the start, never in its way: the loop takes the answer when it comes.
        tokio::spawn(async move {
            crate::cloud::detected(&p).await;
        });
    }
    let mut pricing = local_pricing(settings, &gpu, &visible, &mut notices)?;
    if let (Some(budget), Pricing::Unknown) = (settings.max_usd, &pricing) {
        // Nothing on the box prices the job: the dollar ceiling needs the provider's
        // price before anything starts (bounded; off a cloud this fails fast).
        let found = match &probe {
            Some(p) => box_pricing(p).await,
            None => None,
        };
        pricing = match found {
            Some(p) => p,
            None => {
                let gpus = if gpu.is_none() {
                    "no GPU telemetry here"
                } else {
                    "the job sees no GPU"
                };
                let boxed = match (&probe, crate::cloud::known()) {
                    (None, _) => ", --provider none".to_string(),
                    (Some(_), Some(d)) if d.found() => {
                        format!(", and {} has no price", d.info.describe())
                    }
                    _ => ", and the box named no provider".to_string(),
                };
                return Err(StartError::NoRate {
                    budget: settings.origins.shown("max_usd", &format_money(budget)),
                    why: format!(" ({gpus}{boxed})"),
                });
            }
        };
    }
    // The one check of the warning lead against the budget: here the rate is known,
    // whether it came from --usd-per-hour or the price table.
    if let (Some(lead), Some(budget), Pricing::Fixed { per_hour, .. }) =
        (settings.warn_before, settings.max_usd, &pricing)
    {
        let horizon = crate::spend::hours_to_duration(budget / per_hour);
        if *per_hour > 0.0 && lead >= horizon {
            return Err(StartError::Invalid(format!(
                "invalid --warn-before {}: the budget {} lasts only {} at {}/h",
                crate::units::format_duration(lead),
                format_money(budget),
                crate::units::format_duration(horizon),
                format_money(*per_hour)
            )));
        }
    }
    let release = release_plan(settings, probe.as_ref(), &mut notices).await?;
    Ok(Started {
        gpu,
        visible: visible_idx,
        pricing,
        notices,
        probe,
        release,
    })
}

/// `--release`: the box must name a provider whose stop call it can make with a credential
/// it holds (or a release command is given) — refused here, before anything starts.
async fn release_plan(
    settings: &Settings,
    probe: Option<&crate::cloud::Probe>,
    notices: &mut Vec<String>,
) -> Result<Option<crate::cloud::release::Plan>, StartError> {
    use crate::cloud::release;
    if !settings.release.enabled() {
        return Ok(None);
    }
    let none = crate::cloud::Detection::default();
    let d = match (probe, &settings.release.command) {
        (_, Some(_)) | (None, _) => &none,
        (Some(p), None) => {
            let limit = crate::cloud::PROBE_BUDGET + crate::cloud::API_BUDGET;
            tokio::time::timeout(limit, crate::cloud::detected(p))
                .await
                .unwrap_or(&none)
        }
    };
    let plan = release::plan(&settings.release, d).map_err(|e| {
        let hint = if probe.is_none() {
            " (--provider none: the box was not asked)"
        } else {
            ""
        };
        StartError::Invalid(format!("{e}{hint}"))
    })?;
    let Some(plan) = plan else { return Ok(None) };
    if let Err(f) = release::credential(&plan).await {
        if !f.retry {
            return Err(StartError::Invalid(format!(
                "{}: {}",
                settings.origins.named("release"),
                f.message
            )));
        }
        notices.push(format!(
            "release: the credential could not be checked now ({})",
            f.message
        ));
    }
    if let crate::cloud::release::Method::Scheduler(s) = &plan.method {
        notices.push(format!("release: {s}"));
    }
    Ok(Some(plan))
}

/// NVML, when it loads (or an error when `--gpu nvml` requires it).
async fn open_gpu(
    settings: &Settings,
    notices: &mut Vec<String>,
) -> Result<Option<NvmlSource>, StartError> {
    Ok(match settings.gpu {
        GpuMode::None => None,
        GpuMode::Auto if settings.nvml_lib.is_none() && !driver_visible() => {
            if settings.idle.is_some() || settings.max_gpu_mem.is_some() {
                notices.push(format!(
                    "no GPU telemetry (no NVIDIA driver on this machine: none of {}); idle and GPU memory watchdogs are off",
                    DRIVER_SIGNS.join(", ")
                ));
            }
            None
        }
        mode => {
            let loaded = match library_loads(settings.nvml_lib.as_deref()) {
                Ok(()) => {
                    NvmlSource::start(settings.nvml_lib.as_deref(), Duration::from_secs(10)).await
                }
                Err(e) => Err(e),
            };
            match loaded {
                Ok(src) => Some(src),
                Err(e) if mode == GpuMode::Nvml => {
                    return Err(StartError::NvmlRequired(
                        settings.origins.shown("gpu", "nvml"),
                        e.to_string(),
                    ))
                }
                // Said only where it matters (a library path or a GPU watchdog was asked
                // for); on a machine without a GPU it is the expected case, not news on
                // every run.
                Err(e)
                    if settings.nvml_lib.is_some()
                        || settings.idle.is_some()
                        || settings.max_gpu_mem.is_some() =>
                {
                    notices.push(format!(
                        "no GPU telemetry ({e}); idle and GPU memory watchdogs are off"
                    ));
                    None
                }
                Err(e) => {
                    tracing::debug!(error = %e, "no GPU telemetry");
                    None
                }
            }
        }
    })
}

/// What an NVIDIA driver leaves visible: its control device (which the container toolkit
/// puts into every GPU container), its procfs directory, its kernel module (seen where
/// /proc/driver is hidden), or WSL's GPU device (where NVML runs with none of the others).
const DRIVER_SIGNS: [&str; 4] = [
    "/dev/nvidiactl",
    "/proc/driver/nvidia",
    "/sys/module/nvidia",
    "/dev/dxg",
];

/// Whether an NVIDIA driver is visible here. Without one NVML cannot start, and the dynamic
/// loader's search for a library that is not there (a hundred failed opens through every
/// directory it knows) would sit on every job's start (`benches/start_cost.py`): `--gpu auto`
/// asks this first; a library path or `--gpu nvml` always tries the library.
fn driver_visible() -> bool {
    DRIVER_SIGNS
        .iter()
        .any(|p| std::path::Path::new(p).exists())
}

/// Whether NVML's library loads at all, asked here on the loop's thread: on a machine
/// without an NVIDIA driver (the common case for `--gpu auto`) the answer comes from the
/// dynamic loader in microseconds, with no NVML thread started and waited for. A library
/// that loads stays loaded: the NVML thread's own load then finds it in memory. Only
/// loading is done here — NVML's init, which can hang on a wedged driver, stays on its
/// thread with its timeout.
fn library_loads(lib: Option<&std::path::Path>) -> Result<(), crate::telemetry::nvml::NvmlFailure> {
    use std::os::unix::ffi::OsStrExt;
    let name = lib.map_or_else(
        || {
            std::ffi::OsStr::new("libnvidia-ml.so.1")
                .as_bytes()
                .to_vec()
        },
        |p| p.as_os_str().as_bytes().to_vec(),
    );
    let shown = String::from_utf8_lossy(&name).into_owned();
    let failure = |message: String| crate::telemetry::nvml::NvmlFailure::Load {
        lib: shown.clone(),
        message,
    };
    let c = std::ffi::CString::new(name)
        .map_err(|_| failure("the library could not be loaded: a NUL in its name".into()))?;
    // SAFETY: a valid NUL-terminated name; the handle is kept (never closed) on success.
    let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL) };
    if !handle.is_null() {
        return Ok(());
    }
    // SAFETY: dlerror returns the message of the dlopen that just failed on this thread
    // (or null), valid until the next dl* call here.
    let text = unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    };
    // The words NVML's own loader uses (`telemetry/nvml.rs`).
    Err(failure(
        if text.contains("No such file") || text.contains("cannot open shared object") {
            format!("the library was not found (no NVIDIA driver on this machine?): {text}")
        } else {
            format!("the library could not be loaded: {text}")
        },
    ))
}

/// The rate from what is on the box without asking anyone: the flag, energy, the per-GPU
/// table. A GPU the table does not know is an error only with a dollar ceiling and no
/// provider to ask.
fn local_pricing(
    settings: &Settings,
    gpu: &Option<NvmlSource>,
    visible: &[&crate::telemetry::GpuInfo],
    notices: &mut Vec<String>,
) -> Result<Pricing, StartError> {
    if let Some(r) = settings.usd_per_hour {
        return Ok(Pricing::Fixed {
            per_hour: r,
            source: "--usd-per-hour".into(),
            origin: RateOrigin::Flag,
        });
    }
    if let Some(k) = settings.usd_per_kwh {
        if gpu.is_none() {
            return Err(StartError::NoEnergy(
                settings.origins.shown("usd_per_kwh", &format_money(k)),
                "NVML is not available".into(),
            ));
        }
        return Ok(Pricing::Energy { per_kwh: k });
    }
    if visible.is_empty() {
        return Ok(Pricing::Unknown);
    }
    match price::quote(visible, &settings.prices) {
        Ok(q) => Ok(Pricing::Fixed {
            per_hour: q.dollars_per_hour,
            source: q.source,
            origin: RateOrigin::GpuTable,
        }),
        Err(e) if settings.max_usd.is_some() && settings.provider == crate::cloud::Choice::None => {
            Err(e.into())
        }
        Err(e) => {
            notices.push(format!(
                "spend is not metered until the box names its price: {e}"
            ));
            Ok(Pricing::Unknown)
        }
    }
}

/// The box's own price, waited for (bounded) when nothing else prices the job.
async fn box_pricing(p: &crate::cloud::Probe) -> Option<Pricing> {
    let limit = crate::cloud::PROBE_BUDGET + crate::cloud::API_BUDGET;
    let d = tokio::time::timeout(limit, crate::cloud::detected(p))
        .await
        .ok()?;
    d.rate.as_ref().map(|r| Pricing::Fixed {
        per_hour: r.per_hour,
        source: r.source.clone(),
        origin: RateOrigin::Box(r.kind),
    })
}

/// A readable run id: the job's name and the UTC start minute, e.g. `train-2026-11-24-1147`.
/// Inside a Slurm job it is the job's name and id instead (`bert-sweep-81234`, and
/// `bert-sweep-81234.2` for step 2), the names `squeue` and `sacct` show.
pub fn default_run_id(command: &[std::ffi::OsString], now: std::time::SystemTime) -> String {
    run_id_from(command, now, |k| std::env::var(k).ok())
}

fn run_id_from(
    command: &[std::ffi::OsString],
    now: std::time::SystemTime,
    env: impl Fn(&str) -> Option<String>,
) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .take(40)
            .collect()
    };
    let job =
        env("SLURM_JOB_ID").filter(|j| !j.is_empty() && j.bytes().all(|b| b.is_ascii_digit()));
    if let Some(job) = job {
        let name = env("SLURM_JOB_NAME")
            .filter(|n| !n.is_empty())
            .map(|n| clean(&n))
            .unwrap_or_else(|| clean(&job_name(command)));
        let step = env("SLURM_STEP_ID")
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()) && s.parse() != Ok(0u32))
            .map(|s| format!(".{s}"))
            .unwrap_or_default();
        return format!("{name}-{job}{step}");
    }
    format!("{}-{}", clean(&job_name(command)), run_id_stamp(now))
}

const INTERPRETERS: [&str; 10] = [
    "python",
    "python3",
    "bash",
    "sh",
    "env",
    "uv",
    "torchrun",
    "srun",
    "accelerate",
    "exec",
];
/// Shell words that start a script without naming its program.
const SHELL_WORDS: [&str; 19] = [
    "for", "while", "until", "if", "then", "do", "cd", "export", "set", "source", ".", "time",
    "nohup", "echo", "done", "fi", "esac", "elif", "case",
];

/// Programs that say nothing of what a shell script is for (`echo start; sleep 5`): a
/// script's name is never taken from them.
const TRIVIAL: [&str; 16] = [
    "sleep", "echo", "printf", "true", "false", "exit", "wait", "trap", "kill", "read", "test",
    "[", ":", "seq", "date", "exec",
];

/// A shell script without its redirections (`2>&1`, `>&2`, `> out.log`, `2>/dev/null`):
/// their numbers and targets are no program names.
fn without_redirects(text: &str) -> String {
    let mut out = Vec::new();
    let mut skip_target = false;
    for w in text.split(' ') {
        if std::mem::take(&mut skip_target) && !w.is_empty() {
            continue;
        }
        let Some(i) = w.find(['>', '<']) else {
            out.push(w);
            continue;
        };
        // What comes before the operator, without its descriptor number (`2>`).
        out.push(w[..i].trim_end_matches(|c: char| c.is_ascii_digit()));
        let op_end = w[i..]
            .find(|c: char| !"<>&".contains(c))
            .map_or(w.len(), |k| i + k);
        // `>&2`, `2>&1`, `>/dev/null`: the target is attached, up to a separator (kept);
        // `> file`: the target is the next word.
        let rest = &w[op_end..];
        skip_target = rest.is_empty() && !w[i..].ends_with('&');
        out.push(rest.find([';', '|', '&', '\n']).map_or("", |k| &rest[k..]));
    }
    out.join(" ")
}

/// The first program a command line or a shell script runs: each of its commands (split at
/// `;`, `&`, `|` and newlines) without its leading keywords (`do`, `then`); a command that
/// starts with a shell word (`cd data`, `for i in …`, `export X=1`) is skipped whole, and so
/// is, in a script, one that only sleeps or echoes.
fn program_of(text: &str, stem: &dyn Fn(&str) -> String, script: bool) -> Option<String> {
    let text = if script {
        without_redirects(text)
    } else {
        text.to_string()
    };
    for command in text.split(|c: char| ";&|\n".contains(c)) {
        let mut words = command
            .split_whitespace()
            .skip_while(|w| ["do", "then", "else", "{", "("].contains(w))
            .peekable();
        if words.peek().is_some_and(|w| SHELL_WORDS.contains(w)) {
            continue;
        }
        if script && words.peek().is_some_and(|w| TRIVIAL.contains(w)) {
            continue;
        }
        let found = words
            .filter(|w| !w.contains('=') && !w.starts_with('-'))
            .filter(|w| !w.bytes().all(|b| b.is_ascii_digit()))
            .map(stem)
            .find(|s| !s.is_empty() && !INTERPRETERS.contains(&s.as_str()));
        if found.is_some() {
            return found;
        }
    }
    None
}

/// The job's name: a script file it runs (`train.py`, even inside `sh -c '…'`), else a
/// module (`python -m pkg.train` → `train`), else its first program word that is not an
/// interpreter, a flag, an assignment (VAR=value may hold a secret) or a shell keyword, else
/// the interpreter (`python3 -c …` → `python3`), else `job`.
fn job_name(command: &[std::ffi::OsString]) -> String {
    let args: Vec<String> = command
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    // Every word, scripts split into words at spaces and shell separators.
    let words: Vec<&str> = args
        .iter()
        .flat_map(|a| a.split(|c: char| c.is_whitespace() || ";&|()'\"".contains(c)))
        .filter(|w| !w.is_empty())
        .collect();
    let stem = |w: &str| {
        std::path::Path::new(w)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let scripts = [".py", ".sh", ".ipynb", ".jl", ".R", ".lua", ".rb", ".pl"];
    if let Some(w) = words
        .iter()
        .find(|w| !w.contains('=') && scripts.iter().any(|x| w.ends_with(x)))
    {
        return stem(w);
    }
    if let Some(m) = words.windows(2).find(|p| p[0] == "-m").map(|p| p[1]) {
        return m.rsplit('.').next().unwrap_or(m).to_string();
    }
    let mut after_flag = false;
    let shells = ["sh", "bash", "dash", "zsh", "ksh"];
    let mut prev = "";
    for a in &args {
        let was_flag = std::mem::replace(&mut after_flag, a.starts_with('-') && !a.contains('='));
        // `python3 -c CODE`: the code is no shell script to take a program name from.
        let code = prev == "-c" && !args.iter().any(|x| shells.contains(&stem(x).as_str()));
        prev = a;
        if code {
            continue;
        }
        let script = a.contains(char::is_whitespace);
        if a.starts_with('-') || (a.contains('=') && !script) {
            continue;
        }
        // A flag's value (`--nproc 8`, `--api-key K`), unless it looks like a file or script.
        if was_flag && !script && !a.contains('.') && !a.contains('/') {
            continue;
        }
        if let Some(n) = program_of(a, &stem, script) {
            return n;
        }
    }
    // A script of sleeps and echoes: named after its shell (`bash-…`).
    if let Some(shell) = args
        .iter()
        .map(|a| stem(a))
        .find(|s| shells.contains(&s.as_str()))
    {
        return shell;
    }
    args.first()
        .map(|a| stem(a))
        .filter(|s| !s.is_empty() && s != "env" && s != "sh")
        .unwrap_or_else(|| "job".into())
}

/// The time part of a default run id: `YYYY-MM-DD-HHMM` (UTC).
pub fn run_id_stamp(now: std::time::SystemTime) -> String {
    // "2026-11-29T17:41:53Z" → "2026-11-29-1741"
    let t = humantime::format_rfc3339_seconds(now).to_string();
    format!("{}-{}{}", &t[..10], &t[11..13], &t[14..16])
}

/// Claims `<state-dir>/runs/<id>` for this run: `base`, else `base-2`, `base-3`, … so two
/// runs started in the same minute never share an id (nor event ids).
pub fn reserve_run_id(
    state_dir: &std::path::Path,
    base: &str,
) -> std::io::Result<(String, std::path::PathBuf)> {
    let runs = state_dir.join("runs");
    crate::fsutil::private_dir(&runs)?;
    let id = |n: u32| {
        if n == 1 {
            base.to_string()
        } else {
            format!("{base}-{n}")
        }
    };
    let mut n = first_free(|n| runs.join(id(n)).symlink_metadata().is_ok());
    loop {
        let dir = runs.join(id(n));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok((id(n), dir)),
            // Taken since it was looked at (another start of the same command): the next.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                n = n.checked_add(1).ok_or_else(|| {
                    std::io::Error::other(format!("run ids {base}-N are exhausted"))
                })?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A suffix that is not `taken`, in a few lookups however many runs of one minute there are
/// (a Slurm array starts hundreds): suffixes are handed out in order, so the first free one
/// is found by doubling then halving. A gap (a run cleaned away) may be found instead of the
/// end: any free suffix will do.
fn first_free(taken: impl Fn(u32) -> bool) -> u32 {
    if !taken(1) {
        return 1;
    }
    let (mut lo, mut hi) = (1u32, 2u32);
    while taken(hi) {
        lo = hi;
        hi = match hi.checked_mul(2) {
            Some(h) => h,
            None => return u32::MAX,
        };
    }
    // taken(lo), !taken(hi)
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if taken(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_free_suffix_is_found_in_few_lookups() {
        for used in [0u32, 1, 2, 3, 7, 8, 9, 100, 1000] {
            let looked = std::cell::Cell::new(0);
            let n = first_free(|n| {
                looked.set(looked.get() + 1);
                n <= used
            });
            assert_eq!(n, used + 1, "{used} taken");
            assert!(looked.get() <= 24, "{used} taken: {} lookups", looked.get());
        }
    }

    #[test]
    fn run_ids_are_readable() {
        let t = std::time::UNIX_EPOCH
            + Duration::from_secs(1_795_521_600 - 12 * 3600 + 11 * 3600 + 47 * 60);
        let cmd: Vec<std::ffi::OsString> = ["python", "-u", "scripts/train.py", "--lr", "3"]
            .iter()
            .map(Into::into)
            .collect();
        assert_eq!(default_run_id(&cmd, t), "train-2026-11-24-1147");
        let os = |v: &[&str]| -> Vec<std::ffi::OsString> { v.iter().map(Into::into).collect() };
        let secret = os(&["env", "HF_TOKEN=abc", "sh", "-c", "make bench --token x"]);
        assert_eq!(default_run_id(&secret, t), "make-2026-11-24-1147");
        let flagged = os(&["torchrun", "--nproc", "8", "fit.py"]);
        assert_eq!(default_run_id(&flagged, t), "fit-2026-11-24-1147");
        let slurm = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let job = slurm(&[("SLURM_JOB_ID", "81234"), ("SLURM_JOB_NAME", "bert sweep")]);
        assert_eq!(run_id_from(&cmd, t, job), "bert-sweep-81234");
        let step0 = slurm(&[("SLURM_JOB_ID", "7"), ("SLURM_STEP_ID", "0")]);
        assert_eq!(run_id_from(&cmd, t, step0), "train-7");
        let step2 = slurm(&[("SLURM_JOB_ID", "7"), ("SLURM_STEP_ID", "2")]);
        assert_eq!(run_id_from(&cmd, t, step2), "train-7.2");
        let odd = slurm(&[("SLURM_JOB_ID", "../7")]);
        assert_eq!(run_id_from(&cmd, t, odd), "train-2026-11-24-1147");
        let name = |v: &[&str]| job_name(&os(v));
        assert_eq!(
            name(&["sh", "-c", "for i in 1 2; do python3 train.py; done"]),
            "train"
        );
        assert_eq!(
            name(&["bash", "-c", "cd data && ./prepare.sh --fast"]),
            "prepare"
        );
        assert_eq!(name(&["bash", "-c", "cd data && make all"]), "make");
        assert_eq!(
            name(&["python3", "-m", "pkg.finetune", "--lr", "3"]),
            "finetune"
        );
        assert_eq!(name(&["python3", "-c", "import torch"]), "python3");
        assert_eq!(name(&["sleep", "30"]), "sleep");
        // Redirections are no program, and a script of sleeps is named after its shell.
        assert_eq!(name(&["bash", "-c", "echo hi >&2; sleep 1"]), "bash");
        assert_eq!(
            name(&[
                "bash",
                "-c",
                "for i in 1 2 3; do echo $i; sleep 1; done 2>&1"
            ]),
            "bash"
        );
        assert_eq!(name(&["sh", "-c", "sleep 1; exit 1"]), "sh");
        assert_eq!(
            name(&["bash", "-c", "echo start; python3 fit.x 2>/dev/null"]),
            "fit"
        );
        assert_eq!(
            name(&["bash", "-c", "echo start >&2; nvidia-smi > out.txt"]),
            "nvidia-smi"
        );
        assert_eq!(name(&["sh", "-c", "make 2> err.log"]), "make");
    }

    #[test]
    fn run_ids_are_reserved_once() {
        let d = tempfile::tempdir().expect("tempdir");
        let (a, da) = reserve_run_id(d.path(), "x-2026").expect("first");
        let (b, _) = reserve_run_id(d.path(), "x-2026").expect("second");
        assert_eq!((a.as_str(), b.as_str()), ("x-2026", "x-2026-2"));
        assert!(da.is_dir());
    }
}
