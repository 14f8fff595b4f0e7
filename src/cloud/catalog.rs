//! The shipped price catalog: hourly prices of GPU instance types by (provider, instance
//! type, region), distilled from the public SkyPilot catalog (`scripts/prices` rebuilds
//! `catalog.csv` from it). The shipped table is parsed once, by detection (on the start path
//! only when the start waits for it) or by `costguard prices`.
//!
//! GCP bills a GPU VM as two rows — the machine type (vCPU and memory) and its GPUs — so a
//! GCP price is composed from both. A price of 0 or an empty cell is "no price", never $0.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use super::Provider;

/// Where the shipped table comes from, and when it was taken.
pub const CATALOG_DATE: &str = "2026-11";
pub const CATALOG_SOURCE: &str =
    "public SkyPilot catalog (skypilot-org/skypilot-catalog, Apache-2.0), late 2026";

const EMBEDDED: &str = include_str!("catalog.csv");
/// A price table file given with --price-table is read bounded.
const MAX_TABLE: u64 = 16 << 20;

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub provider: String,
    pub instance_type: String,
    pub region: String,
    pub gpu_model: String,
    pub gpu_count: f64,
    pub usd_per_hour: Option<f64>,
    pub spot_min: Option<f64>,
    pub spot_max: Option<f64>,
    /// The row came from a --price-table file, not the shipped catalog.
    pub from_file: bool,
}

/// A price found in the catalog, with what it is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct Quote {
    pub usd_per_hour: f64,
    /// The catalog's spot range for the box (an estimate), when it has one.
    pub spot: Option<(f64, f64)>,
    /// How the number was composed, e.g. "9.46 machine + 33.61 for 8 × H100".
    pub detail: Option<String>,
    /// The region the price is for; differs from the box's when the catalog lacks it.
    pub region: String,
    /// Whether the price is the box's own region's (false: the highest region's).
    pub region_exact: bool,
    /// Where the row came from: the shipped catalog or a --price-table file.
    pub origin: String,
}

pub struct Catalog {
    rows: Vec<Row>,
    origin: String,
}

fn num(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

fn positive(s: &str) -> Option<f64> {
    num(s).filter(|v| *v > 0.0)
}

/// Parses the catalog's CSV (the header names the columns; no quoted commas occur in it).
pub fn parse(text: &str, what: &str) -> Result<Vec<Row>, String> {
    let mut lines = text.lines().enumerate();
    let header: Vec<&str> = match lines.next() {
        Some((_, h)) => h.split(',').map(str::trim).collect(),
        None => return Err(format!("{what} is empty")),
    };
    let col = |name: &str| header.iter().position(|h| *h == name);
    let need = ["provider", "instance_type", "region", "usd_per_hour"];
    for n in need {
        if col(n).is_none() {
            return Err(format!(
                "{what}: the header has no column {n:?} (expected provider,instance_type,region,gpu_model,gpu_count,…,usd_per_hour,spot_usd_per_hour_min,spot_usd_per_hour_max)"
            ));
        }
    }
    let at = |cells: &[&str], name: &str| -> String {
        col(name)
            .and_then(|i| cells.get(i))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let mut rows = Vec::new();
    for (i, line) in lines {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let cells: Vec<&str> = line.split(',').collect();
        let usd = at(&cells, "usd_per_hour");
        if !usd.is_empty() && !num(&usd).is_some_and(|v| v >= 0.0) {
            return Err(format!(
                "{what} line {}: usd_per_hour {usd:?} is not a price",
                i + 1
            ));
        }
        rows.push(Row {
            provider: at(&cells, "provider").to_ascii_lowercase(),
            instance_type: at(&cells, "instance_type"),
            region: at(&cells, "region"),
            gpu_model: at(&cells, "gpu_model"),
            gpu_count: num(&at(&cells, "gpu_count")).unwrap_or(0.0),
            usd_per_hour: positive(&usd),
            spot_min: positive(&at(&cells, "spot_usd_per_hour_min")),
            spot_max: positive(&at(&cells, "spot_usd_per_hour_max")),
            from_file: false,
        });
    }
    Ok(rows)
}

impl Catalog {
    /// The catalog compiled into costguard.
    pub fn embedded() -> &'static Catalog {
        static C: OnceLock<Catalog> = OnceLock::new();
        C.get_or_init(|| Catalog {
            rows: parse(EMBEDDED, "the shipped catalog").unwrap_or_default(),
            origin: format!("catalog {CATALOG_DATE}"),
        })
    }

    /// The shipped catalog with the rows of `path` in front (they win where both have a
    /// price for the same instance type and region).
    pub fn with_table(path: &Path) -> Result<Catalog, String> {
        let bytes = crate::fsutil::read_bounded(path, MAX_TABLE)
            .map_err(|e| format!("cannot read --price-table {}: {e}", path.display()))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| format!("--price-table {}: not UTF-8 text", path.display()))?;
        let mut rows = parse(&text, &format!("--price-table {}", path.display()))?;
        for r in &mut rows {
            r.from_file = true;
        }
        rows.extend(Catalog::embedded().rows.iter().cloned());
        Ok(Catalog {
            rows,
            origin: format!("--price-table {}", path.display()),
        })
    }

    fn table_origin(&self, row: &Row) -> String {
        if row.from_file {
            self.origin.clone()
        } else {
            format!("catalog {CATALOG_DATE}")
        }
    }

    /// The rows of one instance type: the box's region first, else every region.
    fn of_type<'a>(&'a self, p: Provider, itype: &str) -> Vec<&'a Row> {
        self.rows
            .iter()
            .filter(|r| r.provider == p.as_str() && r.instance_type.eq_ignore_ascii_case(itype))
            .collect()
    }

    /// The price of `itype` in `region`: that region's row, else the highest price listed
    /// for the type in any region (when unsure, the ceiling fires early, never late).
    pub fn price(&self, p: Provider, itype: &str, region: Option<&str>) -> Option<Quote> {
        if p == Provider::Gcp {
            return self.gcp(itype, region);
        }
        let rows: Vec<&Row> = self
            .of_type(p, itype)
            .into_iter()
            .filter(|r| r.usd_per_hour.is_some())
            .collect();
        pick(&rows, region).map(|(row, exact)| Quote {
            usd_per_hour: row.usd_per_hour.unwrap_or_default(),
            spot: spot_of(row),
            detail: None,
            region: row.region.clone(),
            region_exact: exact,
            origin: self.table_origin(row),
        })
    }

    /// GCP: the machine type's row plus the row of its GPUs in the same region.
    fn gcp(&self, itype: &str, region: Option<&str>) -> Option<Quote> {
        let (model, count) = gcp_gpus(itype)?;
        let machines: Vec<&Row> = self
            .of_type(Provider::Gcp, itype)
            .into_iter()
            .filter(|r| r.usd_per_hour.is_some())
            .collect();
        // Compose per region, then pick the box's region (or the highest).
        let mut composed: Vec<(Row, String)> = Vec::new();
        for m in machines {
            let gpu = self.rows.iter().find(|r| {
                r.provider == "gcp"
                    && r.instance_type.is_empty()
                    && r.region == m.region
                    && r.gpu_model == model
                    && (r.gpu_count - count as f64).abs() < 0.5
                    && r.usd_per_hour.is_some()
            });
            let Some(gpu) = gpu else { continue };
            let (mu, gu) = (m.usd_per_hour?, gpu.usd_per_hour?);
            let spot = match (m.spot_min, gpu.spot_min, m.spot_max, gpu.spot_max) {
                (Some(a), Some(b), Some(c), Some(d)) => (Some(a + b), Some(c + d)),
                _ => (None, None),
            };
            composed.push((
                Row {
                    usd_per_hour: Some(mu + gu),
                    spot_min: spot.0,
                    spot_max: spot.1,
                    ..m.clone()
                },
                format!("{mu:.2} machine + {gu:.2} for {count} × {model}"),
            ));
        }
        let refs: Vec<&Row> = composed.iter().map(|(r, _)| r).collect();
        let (row, exact) = pick(&refs, region)?;
        let detail = composed
            .iter()
            .find(|(r, _)| r.region == row.region)
            .map(|(_, d)| d.clone());
        Some(Quote {
            usd_per_hour: row.usd_per_hour.unwrap_or_default(),
            spot: spot_of(row),
            detail,
            region: row.region.clone(),
            region_exact: exact,
            origin: self.table_origin(row),
        })
    }

    /// A box known only by its GPUs (RunPod without its API, Lambda): the instance type of
    /// that provider with this many GPUs of this model, at its highest listed price.
    pub fn by_gpus(&self, p: Provider, nvml_model: &str, count: usize) -> Option<(Quote, String)> {
        let model = self.model_key(p, nvml_model)?;
        let rows: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| {
                r.provider == p.as_str()
                    && r.gpu_model == model
                    && (r.gpu_count - count as f64).abs() < 0.5
                    && !r.instance_type.is_empty()
                    && r.usd_per_hour.is_some()
            })
            .collect();
        let (row, _) = pick(&rows, None)?;
        Some((
            Quote {
                usd_per_hour: row.usd_per_hour.unwrap_or_default(),
                spot: spot_of(row),
                detail: None,
                region: row.region.clone(),
                region_exact: false,
                origin: self.table_origin(row),
            },
            row.instance_type.clone(),
        ))
    }

    /// The catalog's name for an NVML model name ("NVIDIA A100-SXM4-80GB" → "A100-80GB"):
    /// the longest of the provider's GPU names whose every part appears in the NVML name.
    fn model_key(&self, p: Provider, nvml_model: &str) -> Option<String> {
        let name = nvml_model.to_ascii_uppercase().replace("HBM3", "SXM");
        let words: Vec<&str> = name
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        let mut models: Vec<&str> = self
            .rows
            .iter()
            .filter(|r| r.provider == p.as_str() && !r.gpu_model.is_empty())
            .map(|r| r.gpu_model.as_str())
            .collect();
        models.sort();
        models.dedup();
        models
            .into_iter()
            .filter(|m| {
                m.to_ascii_uppercase()
                    .split(|c: char| !c.is_ascii_alphanumeric())
                    .filter(|w| !w.is_empty())
                    .all(|part| {
                        words
                            .iter()
                            .any(|w| *w == part || w.starts_with(part) && part.len() >= 3)
                    })
            })
            .max_by_key(|m| m.len())
            .map(str::to_string)
    }

    /// Every priced row of a provider (or all), for `costguard prices`.
    pub fn list(&self, p: Option<Provider>, itype: Option<&str>) -> Vec<&Row> {
        let mut seen = BTreeMap::new();
        for r in &self.rows {
            if p.is_some_and(|p| r.provider != p.as_str()) {
                continue;
            }
            if let Some(t) = itype {
                let t = t.to_ascii_lowercase();
                if !r.instance_type.to_ascii_lowercase().contains(&t)
                    && !r.gpu_model.to_ascii_lowercase().contains(&t)
                {
                    continue;
                }
            }
            // The first row for a key wins (a --price-table row over the shipped one).
            seen.entry((
                &r.provider,
                &r.instance_type,
                &r.region,
                &r.gpu_model,
                r.gpu_count as u64,
            ))
            .or_insert(r);
        }
        seen.into_values().collect()
    }
}

fn spot_of(r: &Row) -> Option<(f64, f64)> {
    match (r.spot_min, r.spot_max) {
        (Some(a), Some(b)) => Some((a.min(b), a.max(b))),
        (Some(a), None) | (None, Some(a)) => Some((a, a)),
        _ => None,
    }
}

/// The row for `region`, else the highest-priced row (and whether it was the region's own).
fn pick<'a>(rows: &[&'a Row], region: Option<&str>) -> Option<(&'a Row, bool)> {
    if let Some(region) = region {
        if let Some(r) = rows.iter().find(|r| r.region.eq_ignore_ascii_case(region)) {
            return Some((r, true));
        }
    }
    rows.iter()
        .max_by(|a, b| {
            a.usd_per_hour
                .unwrap_or_default()
                .total_cmp(&b.usd_per_hour.unwrap_or_default())
        })
        .map(|r| (*r, false))
}

/// The GPUs a GCP machine type comes with (model as the catalog names it, count).
pub fn gcp_gpus(machine_type: &str) -> Option<(&'static str, u32)> {
    let t = machine_type.to_ascii_lowercase();
    let count_g = |t: &str| -> Option<u32> {
        let last = t.rsplit('-').next()?;
        last.strip_suffix('g')?.parse().ok()
    };
    let family = t.split('-').take(2).collect::<Vec<_>>().join("-");
    let model = match family.as_str() {
        "a2-highgpu" | "a2-megagpu" => "A100",
        "a2-ultragpu" => "A100-80GB",
        "a3-highgpu" | "a3-edgegpu" => "H100",
        "a3-megagpu" => "H100-MEGA",
        "a3-ultragpu" => "H200",
        "a4-highgpu" => "B200",
        "g2-standard" => {
            let vcpus: u32 = t.rsplit('-').next()?.parse().ok()?;
            let n = match vcpus {
                4 | 8 | 12 | 16 | 32 => 1,
                24 => 2,
                48 => 4,
                96 => 8,
                _ => return None,
            };
            return Some(("L4", n));
        }
        _ => return None,
    };
    let core = t.trim_end_matches("-nolssd");
    Some((model, count_g(core)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn the_issue_boxes_price_as_the_catalog_says() {
        let c = Catalog::embedded();
        let q = c
            .price(Provider::Aws, "p5.48xlarge", Some("us-east-1"))
            .unwrap();
        assert!(close(q.usd_per_hour, 55.04) && q.region_exact, "{q:?}");
        let q = c
            .price(Provider::Aws, "p4d.24xlarge", Some("us-west-2"))
            .unwrap();
        assert!((q.usd_per_hour - 21.96).abs() < 0.01, "{q:?}");
        let q = c
            .price(Provider::Gcp, "a3-highgpu-8g", Some("us-central1"))
            .unwrap();
        assert!(close(q.usd_per_hour, 43.06615), "{q:?}");
        assert_eq!(
            q.detail.as_deref(),
            Some("9.46 machine + 33.61 for 8 × H100")
        );
        let q = c
            .price(Provider::Gcp, "a2-highgpu-1g", Some("us-central1"))
            .unwrap();
        assert!(close(q.usd_per_hour, 3.67339), "{q:?}");
        let q = c
            .price(Provider::Azure, "Standard_ND96asr_v4", Some("eastus"))
            .unwrap();
        assert!(close(q.usd_per_hour, 27.197), "{q:?}");
        let q = c
            .price(Provider::Gcp, "g2-standard-4", Some("us-central1"))
            .unwrap();
        assert!(close(q.usd_per_hour, 0.14679 + 0.56004), "{q:?}");
    }

    #[test]
    fn an_unknown_region_takes_the_highest_price_and_zero_is_no_price() {
        let c = Catalog::embedded();
        let q = c
            .price(Provider::Aws, "p5.48xlarge", Some("mars-1"))
            .unwrap();
        assert!(!q.region_exact);
        let max = c
            .of_type(Provider::Aws, "p5.48xlarge")
            .iter()
            .filter_map(|r| r.usd_per_hour)
            .fold(0.0, f64::max);
        assert!(close(q.usd_per_hour, max) && max > 55.04);
        // a4's catalog price is a 0.0 placeholder: no price, never $0.
        assert_eq!(
            c.price(Provider::Gcp, "a4-highgpu-8g", Some("us-central1")),
            None
        );
        // p5e has no on-demand price in the catalog.
        assert_eq!(
            c.price(Provider::Aws, "p5e.48xlarge", Some("us-east-1")),
            None
        );
        assert_eq!(c.price(Provider::Aws, "m5.large", Some("us-east-1")), None);
    }

    #[test]
    fn gpus_name_the_instance_of_rented_boxes() {
        let c = Catalog::embedded();
        let (q, t) = c
            .by_gpus(Provider::Runpod, "NVIDIA H100 80GB HBM3", 1)
            .unwrap();
        assert_eq!(t, "1x_H100-SXM_SECURE");
        assert!(close(q.usd_per_hour, 2.69), "{q:?}");
        let (_, t) = c
            .by_gpus(Provider::Lambda, "NVIDIA A100-SXM4-80GB", 8)
            .unwrap();
        assert_eq!(t, "gpu_8x_a100_80gb_sxm4");
        assert_eq!(c.by_gpus(Provider::Runpod, "Mystery 9000", 1), None);
    }

    #[test]
    fn gcp_machine_types_name_their_gpus() {
        assert_eq!(gcp_gpus("a3-highgpu-8g"), Some(("H100", 8)));
        assert_eq!(gcp_gpus("a2-ultragpu-2g"), Some(("A100-80GB", 2)));
        assert_eq!(gcp_gpus("a3-ultragpu-8g-nolssd"), Some(("H200", 8)));
        assert_eq!(gcp_gpus("g2-standard-48"), Some(("L4", 4)));
        assert_eq!(gcp_gpus("n1-standard-8"), None);
    }

    #[test]
    fn a_table_file_is_checked_and_wins() {
        let err = parse("provider,region\naws,x\n", "t").unwrap_err();
        assert!(err.contains("no column \"instance_type\""), "{err}");
        let err = parse(
            "provider,instance_type,region,usd_per_hour\naws,p5.48xlarge,us-east-1,lots\n",
            "t",
        )
        .unwrap_err();
        assert!(err.contains("line 2") && err.contains("lots"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.csv");
        std::fs::write(
            &p,
            "provider,instance_type,region,usd_per_hour\naws,p5.48xlarge,us-east-1,40.5\n",
        )
        .unwrap();
        let c = Catalog::with_table(&p).unwrap();
        let q = c
            .price(Provider::Aws, "p5.48xlarge", Some("us-east-1"))
            .unwrap();
        assert!(close(q.usd_per_hour, 40.5), "{q:?}");
        assert!(q.origin.starts_with("--price-table "), "{q:?}");
    }
}
