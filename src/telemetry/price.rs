//! GPU prices and the job's rate: which GPUs the job can see, what each costs per hour.
//!
//! The built-in table holds approximate public on-demand list prices per GPU-hour, of the
//! kind the providers' price pages show (Lambda Cloud on-demand, RunPod secure cloud, the
//! per-GPU share of AWS p4d/p5 on-demand). They were written down from public listings, not
//! re-checked live on TABLE_DATE (this project's machines have no web access). Prices move:
//! override them in the config file under `[prices]`, or give `--usd-per-hour`.

use std::collections::BTreeMap;

use super::GpuInfo;

pub const TABLE_DATE: &str = "2026-11-01";

/// (substring of the NVML model name, dollars per GPU-hour). First match wins: the more
/// specific names come first.
const TABLE: &[(&str, f64)] = &[
    ("GB200", 6.50),
    ("B200", 5.99),
    ("GH200", 3.19),
    ("H200", 3.79),
    ("H100 PCIe", 2.49),
    ("H100 NVL", 2.79),
    ("H100", 2.99),
    ("A100-SXM4-80GB", 1.79),
    ("A100 80GB PCIe", 1.64),
    ("A100", 1.29),
    ("L40S", 0.99),
    ("L40", 0.89),
    ("L4", 0.44),
    ("A10G", 1.01),
    ("A10", 0.75),
    ("A6000", 0.79),
    ("RTX 6000 Ada", 0.89),
    ("V100", 0.55),
    ("T4", 0.35),
    ("RTX 4090", 0.69),
    ("RTX 3090", 0.29),
];

/// The price of one GPU of `model`: a config override (exact name) first, then the table.
pub fn price_of(model: &str, overrides: &BTreeMap<String, f64>) -> Option<(f64, String)> {
    if let Some(p) = overrides.get(model) {
        return Some((*p, "config [prices]".into()));
    }
    TABLE
        .iter()
        .find(|(k, _)| model.contains(k))
        .map(|(_, p)| (*p, format!("built-in table ({TABLE_DATE})")))
}

/// The GPUs the job can see: `CUDA_VISIBLE_DEVICES`, else `NVIDIA_VISIBLE_DEVICES`, by index
/// or UUID (`GPU-…` prefixes match too). Unset or `all` means every GPU; empty or `none`,
/// `void` means none.
pub fn visible<'a>(
    gpus: &'a [GpuInfo],
    cuda: Option<&str>,
    nvidia: Option<&str>,
) -> Vec<&'a GpuInfo> {
    let spec = cuda.or(nvidia).map(str::trim);
    let Some(spec) = spec else {
        return gpus.iter().collect();
    };
    match spec {
        "all" => return gpus.iter().collect(),
        "" | "none" | "void" | "NoDevFiles" => return Vec::new(),
        _ => {}
    }
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim) {
        // CUDA stops at the first invalid entry.
        let found = if let Ok(i) = item.parse::<u32>() {
            gpus.iter().find(|g| g.index == i)
        } else {
            gpus.iter()
                .find(|g| !item.is_empty() && g.uuid.starts_with(item))
        };
        match found {
            Some(g) if !out.iter().any(|o: &&GpuInfo| o.index == g.index) => out.push(g),
            Some(_) => {}
            None => break,
        }
    }
    out
}

/// How the rate was found, for the start notice.
#[derive(Debug, Clone, PartialEq)]
pub struct RateQuote {
    pub dollars_per_hour: f64,
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PriceError {
    #[error("no price for GPU model {0:?}: give --usd-per-hour, or add it under [prices] in the config file")]
    UnknownModel(String),
}

/// The job's rate from the table: the sum over the visible GPUs.
pub fn quote(
    gpus: &[&GpuInfo],
    overrides: &BTreeMap<String, f64>,
) -> Result<RateQuote, PriceError> {
    let mut total = 0.0;
    let mut parts: BTreeMap<String, (usize, f64, String)> = BTreeMap::new();
    for g in gpus {
        let (p, src) = price_of(&g.model, overrides)
            .ok_or_else(|| PriceError::UnknownModel(g.model.clone()))?;
        total += p;
        let e = parts.entry(g.model.clone()).or_insert((0, p, src));
        e.0 += 1;
    }
    let source = parts
        .iter()
        .map(|(m, (n, p, src))| format!("{n} × {m} at ${p:.2}/h ({src})"))
        .collect::<Vec<_>>()
        .join(" + ");
    Ok(RateQuote {
        dollars_per_hour: total,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(index: u32, model: &str) -> GpuInfo {
        GpuInfo {
            index,
            uuid: format!("GPU-{index:08x}-aaaa"),
            model: model.into(),
            mem_total: None,
        }
    }

    #[test]
    fn no_row_is_shadowed_by_an_earlier_one() {
        // First match wins, so every row must be found by its own name (a "GH200" row
        // after "H200" was never reached).
        let none = BTreeMap::new();
        for (name, dollars) in TABLE {
            let model = format!("NVIDIA {name} 96GB");
            assert_eq!(
                price_of(&model, &none).map(|p| p.0),
                Some(*dollars),
                "{model}"
            );
        }
        assert_eq!(
            price_of("NVIDIA GH200 480GB", &none).map(|p| p.0),
            Some(3.19)
        );
    }

    #[test]
    fn visibility() {
        let gpus = [g(0, "A"), g(1, "B"), g(2, "C")];
        let idx = |v: Vec<&GpuInfo>| v.iter().map(|g| g.index).collect::<Vec<_>>();
        assert_eq!(idx(visible(&gpus, None, None)), vec![0, 1, 2]);
        assert_eq!(idx(visible(&gpus, Some("2,0"), None)), vec![2, 0]);
        assert_eq!(
            idx(visible(&gpus, Some("1,7,2"), None)),
            vec![1],
            "stops at an invalid entry"
        );
        assert_eq!(idx(visible(&gpus, None, Some("GPU-00000001"))), vec![1]);
        assert_eq!(
            idx(visible(&gpus, Some(""), Some("all"))),
            Vec::<u32>::new()
        );
        assert_eq!(idx(visible(&gpus, None, Some("all"))), vec![0, 1, 2]);
    }

    #[test]
    fn quotes() {
        let gpus = [
            g(0, "NVIDIA H100 80GB HBM3"),
            g(1, "NVIDIA H100 80GB HBM3"),
            g(2, "NVIDIA A100-SXM4-80GB"),
        ];
        let refs: Vec<&GpuInfo> = gpus.iter().collect();
        let q = quote(&refs, &BTreeMap::new()).expect("quote");
        assert!((q.dollars_per_hour - (2.99 * 2.0 + 1.79)).abs() < 1e-9);
        assert!(
            q.source.contains("2 × NVIDIA H100 80GB HBM3"),
            "{}",
            q.source
        );
        let mut o = BTreeMap::new();
        o.insert("NVIDIA H100 80GB HBM3".to_string(), 1.0);
        assert!((quote(&refs, &o).expect("quote").dollars_per_hour - 3.79).abs() < 1e-9);
        let odd = [g(0, "Mystery GPU 9000")];
        let refs: Vec<&GpuInfo> = odd.iter().collect();
        assert_eq!(
            quote(&refs, &BTreeMap::new()),
            Err(PriceError::UnknownModel("Mystery GPU 9000".into()))
        );
    }
}
