//! Where costguard runs and what the box costs: the provider and instance type learnt from
//! the box itself (the environment, DMI, the metadata server at 169.254.169.254), priced by
//! the provider's own API where the box has one (RunPod, Vast), else the shipped catalog,
//! and the spot reclaim notices of a spot box.
//!
//! Detection runs once per process on its own task beside the start; the start waits for it
//! (bounded) only when `--max-usd` has no local price or `--release` needs the box. Every
//! probe is bounded, and the run loop takes its answer as an event that corrects the
//! meter from the run's first instant.

pub(crate) mod catalog;
mod metadata;
mod pods;
pub(crate) mod preempt;
pub(crate) mod release;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::OnceCell;

use crate::units::format_money;
use catalog::Catalog;

/// The most the metadata probes may take together.
pub const PROBE_BUDGET: Duration = Duration::from_millis(1000);
/// The most a provider's price API may take (it is on the internet, not on the box).
pub const API_BUDGET: Duration = Duration::from_millis(2500);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Aws,
    Gcp,
    Azure,
    Runpod,
    Vast,
    Lambda,
}

impl Provider {
    pub const ALL: [Provider; 6] = [
        Provider::Aws,
        Provider::Gcp,
        Provider::Azure,
        Provider::Runpod,
        Provider::Vast,
        Provider::Lambda,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Aws => "aws",
            Provider::Gcp => "gcp",
            Provider::Azure => "azure",
            Provider::Runpod => "runpod",
            Provider::Vast => "vast",
            Provider::Lambda => "lambda",
        }
    }

    pub fn parse(s: &str) -> Option<Provider> {
        Provider::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

/// `--provider`: detect, name one (skipping detection of the others), or none at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Choice {
    #[default]
    Auto,
    None,
    Only(Provider),
}

impl Choice {
    pub fn parse(s: &str) -> Option<Choice> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(Choice::Auto),
            "none" | "off" => Some(Choice::None),
            other => Provider::parse(other).map(Choice::Only),
        }
    }
    fn allows(self, p: Provider) -> bool {
        matches!(self, Choice::Auto) || self == Choice::Only(p)
    }
}

/// What the box said about itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BoxInfo {
    pub provider: Option<Provider>,
    pub instance_type: Option<String>,
    pub region: Option<String>,
    pub zone: Option<String>,
    pub instance_id: Option<String>,
    /// The instance's name (GCP, Azure), its project (GCP), its ARM id (Azure): what the
    /// provider's stop call names it by.
    pub name: Option<String>,
    pub project: Option<String>,
    pub resource_id: Option<String>,
    /// A spot / preemptible box (its price is an estimate, and it can be reclaimed).
    pub spot: bool,
    /// Where it was learnt: "metadata", "environment", "dmi", "--provider".
    pub via: String,
    /// Schedulers around the job that change what stops the meter (kubernetes, slurm).
    pub context: Vec<&'static str>,
}

impl BoxInfo {
    /// "aws p4d.24xlarge us-west-2 on-demand", as much as is known.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if let Some(p) = self.provider {
            parts.push(p.as_str().into());
        }
        parts.extend(self.instance_type.clone());
        parts.extend(self.region.clone());
        if self
            .provider
            .is_some_and(|p| p != Provider::Runpod && p != Provider::Vast)
        {
            parts.push(if self.spot { "spot" } else { "on-demand" }.into());
        }
        parts.join(" ")
    }
}

/// How the rate of the box was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RateKind {
    /// The provider's own live price for this box (RunPod costPerHr, Vast dph_total).
    Live,
    /// The shipped catalog (or a --price-table) by instance type and region.
    Catalog,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BoxRate {
    pub per_hour: f64,
    pub kind: RateKind,
    /// The rest of "$21.96/h from …": provider, type, region, and the table it came from.
    pub source: String,
}

/// Everything detection found, said once per process.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Detection {
    pub info: BoxInfo,
    pub rate: Option<BoxRate>,
    /// Things a person should know (an API that failed, a price that is an estimate).
    pub notes: Vec<String>,
    /// How long detection took.
    pub took_ms: u64,
}

impl Detection {
    pub fn found(&self) -> bool {
        self.info.provider.is_some()
    }
}

/// The inputs of detection, fixed for the process.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    pub choice: Choice,
    pub price_table: Option<PathBuf>,
    /// The NVML model names of the GPUs the job sees (rented boxes are priced by them when
    /// their API gives no price).
    pub gpus: Vec<String>,
}

static DETECTED: OnceCell<Detection> = OnceCell::const_new();

/// The box's detection, run once per process (a plan's phases share it).
pub async fn detected(p: &Probe) -> &'static Detection {
    DETECTED.get_or_init(|| detect(p.clone())).await
}

/// The detection already made, if any (for commands that must not wait).
pub fn known() -> Option<&'static Detection> {
    DETECTED.get()
}

/// Reads the environment once: the variables that name rented pods and schedulers.
#[derive(Debug, Clone, Default)]
struct Env {
    runpod_pod: Option<String>,
    runpod_key: Option<String>,
    vast_id: Option<String>,
    vast_key: Option<String>,
    kubernetes: bool,
    slurm: bool,
}

impl Env {
    fn read() -> Env {
        let v = |k: &str| std::env::var(k).ok().filter(|s| !s.trim().is_empty());
        Env {
            runpod_pod: v("RUNPOD_POD_ID"),
            runpod_key: v("RUNPOD_API_KEY"),
            vast_id: v("CONTAINER_ID"),
            vast_key: v("CONTAINER_API_KEY"),
            kubernetes: v("KUBERNETES_SERVICE_HOST").is_some(),
            slurm: v("SLURM_JOB_ID").is_some(),
        }
    }
}

async fn detect(p: Probe) -> Detection {
    let t0 = Instant::now();
    let env = Env::read();
    // The keys the box holds are secrets: never in a line, an event or /status.
    crate::redact::install(env.runpod_key.iter().chain(env.vast_key.iter()).cloned());
    let mut d = Detection::default();
    if p.choice != Choice::None {
        let client = metadata::client();
        if let Some(info) = from_env(&env, p.choice) {
            d.info = info;
        } else if let Some(Provider::Lambda) = match p.choice {
            Choice::Only(x) => Some(x),
            _ => None,
        } {
            d.info.provider = Some(Provider::Lambda);
            d.info.via = "--provider".into();
        } else {
            let dmi = metadata::Dmi::read(std::path::Path::new("/sys/class/dmi/id"));
            d.info = metadata::probe(&client, p.choice, &dmi).await;
        }
        price(&client, &env, &p, &mut d).await;
    }
    if env.kubernetes {
        d.info.context.push("kubernetes");
    }
    if env.slurm {
        d.info.context.push("slurm");
    }
    d.took_ms = t0.elapsed().as_millis() as u64;
    tracing::debug!(?d, "box detection");
    d
}

/// RunPod and Vast name themselves in the environment.
fn from_env(env: &Env, choice: Choice) -> Option<BoxInfo> {
    if choice.allows(Provider::Runpod) {
        if let Some(pod) = &env.runpod_pod {
            return Some(BoxInfo {
                provider: Some(Provider::Runpod),
                instance_id: Some(pod.clone()),
                via: "environment".into(),
                ..BoxInfo::default()
            });
        }
    }
    if choice.allows(Provider::Vast) {
        if let (Some(id), Some(_)) = (&env.vast_id, &env.vast_key) {
            return Some(BoxInfo {
                provider: Some(Provider::Vast),
                instance_id: Some(id.clone()),
                via: "environment".into(),
                ..BoxInfo::default()
            });
        }
    }
    None
}

/// The box's rate: the provider's live price, else the catalog by instance type (or, for a
/// rented box known only by its GPUs, by GPU model and count).
async fn price(client: &reqwest::Client, env: &Env, p: &Probe, d: &mut Detection) {
    let Some(provider) = d.info.provider else {
        return;
    };
    match pods::live_price(client, provider, env).await {
        Ok(Some(rate)) => {
            d.rate = Some(rate);
            return;
        }
        Ok(None) => {}
        Err(e) => d.notes.push(format!(
            "{} price API failed ({e}); using the catalog instead",
            provider.as_str()
        )),
    }
    let table;
    let catalog = match &p.price_table {
        Some(path) => match Catalog::with_table(path) {
            Ok(c) => {
                table = c;
                &table
            }
            Err(e) => {
                d.notes.push(e);
                Catalog::embedded()
            }
        },
        None => Catalog::embedded(),
    };
    d.rate = catalog_rate(catalog, &mut d.info, &p.gpus, &mut d.notes);
}

fn catalog_rate(
    catalog: &Catalog,
    info: &mut BoxInfo,
    gpus: &[String],
    notes: &mut Vec<String>,
) -> Option<BoxRate> {
    let provider = info.provider?;
    let quote = match &info.instance_type {
        Some(t) => catalog.price(provider, t, info.region.as_deref()),
        None => {
            let model = gpus.first()?;
            let same = gpus.iter().all(|g| g == model);
            let found = same
                .then(|| catalog.by_gpus(provider, model, gpus.len()))
                .flatten();
            found.map(|(q, itype)| {
                info.instance_type = Some(itype);
                q
            })
        }
    };
    let Some(q) = quote else {
        notes.push(format!(
            "{} is not in the price catalog: give --usd-per-hour, or a row in --price-table",
            info.describe()
        ));
        return None;
    };
    let mut source = info.describe();
    if !q.region_exact {
        source = format!(
            "{source} (region {} not in the catalog: its highest price, {})",
            info.region.as_deref().unwrap_or("unknown"),
            q.region
        );
    }
    if let Some(detail) = &q.detail {
        source += &format!(" = {detail}");
    }
    if info.spot {
        let est = q
            .spot
            .map(|(a, b)| {
                if (a - b).abs() < 0.005 {
                    format!("; catalog spot estimate {}/h", format_money(a))
                } else {
                    format!(
                        "; catalog spot estimate {}–{}/h",
                        format_money(a),
                        format_money(b)
                    )
                }
            })
            .unwrap_or_default();
        source += &format!(", metered at the on-demand price (the most a spot box bills{est})");
        notes.push(format!(
            "spot box: a spot price is an estimate; metering at the on-demand {}/h so the ceiling fires early, never late (give --usd-per-hour to meter your own)",
            format_money(q.usd_per_hour)
        ));
    }
    source += &format!(" ({})", q.origin);
    Some(BoxRate {
        per_hour: q.usd_per_hour,
        kind: RateKind::Catalog,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse() {
        assert_eq!(Choice::parse("auto"), Some(Choice::Auto));
        assert_eq!(Choice::parse("none"), Some(Choice::None));
        assert_eq!(Choice::parse("AWS"), Some(Choice::Only(Provider::Aws)));
        assert_eq!(Choice::parse("awz"), None);
    }

    #[test]
    fn a_spot_box_is_metered_at_on_demand_and_says_so() {
        let mut info = BoxInfo {
            provider: Some(Provider::Aws),
            instance_type: Some("p4d.24xlarge".into()),
            region: Some("us-west-2".into()),
            spot: true,
            ..BoxInfo::default()
        };
        let mut notes = Vec::new();
        let r = catalog_rate(Catalog::embedded(), &mut info, &[], &mut notes).unwrap();
        assert!((r.per_hour - 21.95764).abs() < 1e-6, "{r:?}");
        assert!(
            r.source.starts_with("aws p4d.24xlarge us-west-2 spot"),
            "{}",
            r.source
        );
        assert!(r.source.contains("on-demand price"), "{}", r.source);
        assert!(notes[0].contains("estimate"), "{notes:?}");
    }

    #[test]
    fn the_start_line_source_reads_as_the_issue_asks() {
        let mut info = BoxInfo {
            provider: Some(Provider::Aws),
            instance_type: Some("p4d.24xlarge".into()),
            region: Some("us-west-2".into()),
            ..BoxInfo::default()
        };
        let r = catalog_rate(Catalog::embedded(), &mut info, &[], &mut Vec::new()).unwrap();
        assert_eq!(
            format!("{}/h from {}", format_money(r.per_hour), r.source),
            format!(
                "$21.96/h from aws p4d.24xlarge us-west-2 on-demand (catalog {})",
                catalog::CATALOG_DATE
            )
        );
    }

    #[test]
    fn a_rented_box_without_its_api_is_priced_by_its_gpus() {
        let mut info = BoxInfo {
            provider: Some(Provider::Runpod),
            ..BoxInfo::default()
        };
        let gpus = vec!["NVIDIA H100 80GB HBM3".to_string(); 8];
        let r = catalog_rate(Catalog::embedded(), &mut info, &gpus, &mut Vec::new()).unwrap();
        assert!((r.per_hour - 21.52).abs() < 1e-6, "{r:?}");
        assert_eq!(info.instance_type.as_deref(), Some("8x_H100-SXM_SECURE"));
        let mut unknown = BoxInfo {
            provider: Some(Provider::Aws),
            instance_type: Some("m5.large".into()),
            ..BoxInfo::default()
        };
        let mut notes = Vec::new();
        assert_eq!(
            catalog_rate(Catalog::embedded(), &mut unknown, &[], &mut notes),
            None
        );
        assert!(notes[0].contains("not in the price catalog"), "{notes:?}");
    }
}
