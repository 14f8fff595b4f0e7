//! The box asked about itself: DMI files, then the metadata servers at 169.254.169.254 —
//! AWS IMDSv2 (token first), GCP (`Metadata-Flavor: Google`), Azure IMDS (`Metadata: true`).
//! Reached by IP with short timeouts and no proxy, as the providers' own libraries do: off
//! a cloud the address has no route (fails at once) or drops packets (the timeout ends it).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::{BoxInfo, Choice, Provider, PROBE_BUDGET};

const IMDS: &str = "http://169.254.169.254";

/// A client for the metadata servers and the providers' APIs: no proxy (a proxy would send
/// 169.254.169.254 off the box), no redirects, short timeouts.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_millis(2000))
        .build()
        .unwrap_or_default()
}

/// Where each metadata server is, honouring the variables the providers' tools honour.
pub struct Endpoints {
    /// None: `AWS_EC2_METADATA_DISABLED=true`.
    pub aws: Option<String>,
    pub gcp: String,
    pub azure: String,
}

impl Endpoints {
    pub fn from_env() -> Endpoints {
        let v = |k: &str| std::env::var(k).ok().filter(|s| !s.trim().is_empty());
        let aws_off =
            v("AWS_EC2_METADATA_DISABLED").is_some_and(|s| s.eq_ignore_ascii_case("true"));
        let trim = |s: String| s.trim_end_matches('/').to_string();
        Endpoints {
            aws: (!aws_off)
                .then(|| v("AWS_EC2_METADATA_SERVICE_ENDPOINT").map_or(IMDS.into(), trim)),
            gcp: v("GCE_METADATA_HOST").map_or(IMDS.into(), |h| {
                if h.contains("://") {
                    trim(h)
                } else {
                    format!("http://{}", h.trim_end_matches('/'))
                }
            }),
            azure: v("COSTGUARD_AZURE_IMDS_URL").map_or(IMDS.into(), trim),
        }
    }
}

/// What `/sys/class/dmi/id` says (absent in many containers and VMs).
#[derive(Debug, Default, Clone)]
pub struct Dmi {
    pub present: bool,
    pub sys_vendor: String,
    pub product_name: String,
    pub board_asset_tag: String,
    pub chassis_asset_tag: String,
}

const AZURE_CHASSIS_TAG: &str = "7783-7084-3265-9085-8269-3286-77";

impl Dmi {
    pub fn read(dir: &Path) -> Dmi {
        let f = |name: &str| {
            crate::fsutil::read_bounded(&dir.join(name), 4096)
                .ok()
                .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        };
        let vendor = f("sys_vendor");
        Dmi {
            present: vendor.is_some(),
            sys_vendor: vendor.unwrap_or_default(),
            product_name: f("product_name").unwrap_or_default(),
            board_asset_tag: f("board_asset_tag").unwrap_or_default(),
            chassis_asset_tag: f("chassis_asset_tag").unwrap_or_default(),
        }
    }

    /// The cloud the firmware names, if any.
    pub fn provider(&self) -> Option<Provider> {
        let v = self.sys_vendor.to_ascii_lowercase();
        if v.contains("amazon") {
            Some(Provider::Aws)
        } else if v.contains("google") || self.product_name.contains("Google Compute Engine") {
            Some(Provider::Gcp)
        } else if self.chassis_asset_tag == AZURE_CHASSIS_TAG
            || v.contains("microsoft") && self.product_name.contains("Virtual Machine")
        {
            Some(Provider::Azure)
        } else if v == "xen" {
            // Older AWS instances run on Xen and say so only there.
            Some(Provider::Aws)
        } else {
            None
        }
    }
}

/// Asks the metadata servers the DMI points at (every one when DMI is absent; none when
/// DMI names hardware that is no cloud's), all at once, within [`PROBE_BUDGET`].
pub async fn probe(client: &reqwest::Client, choice: Choice, dmi: &Dmi) -> BoxInfo {
    let ep = Endpoints::from_env();
    let hint = dmi.provider();
    let ask = |p: Provider| match choice {
        Choice::Only(x) => x == p,
        Choice::None => false,
        Choice::Auto => match hint {
            Some(h) => h == p,
            None => !dmi.present,
        },
    };
    let aws = async {
        match (&ep.aws, ask(Provider::Aws)) {
            (Some(base), true) => aws(client, base).await,
            _ => None,
        }
    };
    let gcp = async {
        if ask(Provider::Gcp) {
            gcp(client, &ep.gcp).await
        } else {
            None
        }
    };
    let azure = async {
        if ask(Provider::Azure) {
            azure(client, &ep.azure).await
        } else {
            None
        }
    };
    let all = async { tokio::join!(aws, gcp, azure) };
    let found = match tokio::time::timeout(PROBE_BUDGET, all).await {
        Ok((a, g, z)) => a.or(g).or(z),
        Err(_) => None,
    };
    if let Some(f) = found {
        return f;
    }
    // Nitro's DMI names the instance type and id even when the metadata server is off.
    if hint == Some(Provider::Aws) && dmi.product_name.contains('.') {
        return BoxInfo {
            provider: Some(Provider::Aws),
            instance_type: Some(dmi.product_name.clone()),
            instance_id: Some(dmi.board_asset_tag.clone()).filter(|s| !s.is_empty()),
            via: "dmi".into(),
            ..BoxInfo::default()
        };
    }
    match (choice, hint) {
        (Choice::Only(p), _) | (Choice::Auto, Some(p)) => BoxInfo {
            provider: Some(p),
            via: if matches!(choice, Choice::Only(_)) {
                "--provider"
            } else {
                "dmi"
            }
            .into(),
            ..BoxInfo::default()
        },
        _ => BoxInfo::default(),
    }
}

/// An IMDSv2 session token (PUT, then every GET carries it).
pub async fn aws_token(client: &reqwest::Client, base: &str) -> Option<String> {
    let r = client
        .put(format!("{base}/latest/api/token"))
        .header("X-aws-ec2-metadata-token-ttl-seconds", "21600")
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    let t = r.text().await.ok()?.trim().to_string();
    (!t.is_empty()).then_some(t)
}

/// One IMDSv2 value (None when absent or refused).
pub async fn aws_get(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    key: &str,
) -> Option<String> {
    let r = client
        .get(format!("{base}/latest/meta-data/{key}"))
        .header("X-aws-ec2-metadata-token", token)
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    let t = r.text().await.ok()?.trim().to_string();
    (!t.is_empty()).then_some(t)
}

async fn aws(client: &reqwest::Client, base: &str) -> Option<BoxInfo> {
    let token = aws_token(client, base).await?;
    crate::redact::install([token.clone()]);
    let (itype, region, life, id) = tokio::join!(
        aws_get(client, base, &token, "instance-type"),
        aws_get(client, base, &token, "placement/region"),
        aws_get(client, base, &token, "instance-life-cycle"),
        aws_get(client, base, &token, "instance-id"),
    );
    Some(BoxInfo {
        provider: Some(Provider::Aws),
        instance_type: Some(itype?),
        region,
        spot: life.as_deref() == Some("spot"),
        instance_id: id,
        via: "metadata".into(),
        ..BoxInfo::default()
    })
}

/// A GCP metadata value under `/computeMetadata/v1/`; the answer must carry the flavor
/// header too (anything else is not Google's server).
pub async fn gcp_get(client: &reqwest::Client, base: &str, path: &str) -> Option<String> {
    let r = client
        .get(format!("{base}/computeMetadata/v1/{path}"))
        .header("Metadata-Flavor", "Google")
        .send()
        .await
        .ok()?;
    let flavor = r
        .headers()
        .get("metadata-flavor")
        .is_some_and(|v| v.as_bytes() == b"Google");
    if !r.status().is_success() || !flavor {
        return None;
    }
    r.text().await.ok()
}

async fn gcp(client: &reqwest::Client, base: &str) -> Option<BoxInfo> {
    let text = gcp_get(client, base, "instance/?recursive=true").await?;
    let v: Value = serde_json::from_str(&text).ok()?;
    let last = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .and_then(|s| s.rsplit('/').next())
            .map(str::to_string)
    };
    let zone = last("zone");
    // us-central1-a → us-central1
    let region = zone
        .as_deref()
        .and_then(|z| z.rsplit_once('-'))
        .map(|(r, _)| r.to_string());
    let project = gcp_get(client, base, "project/project-id")
        .await
        .map(|p| p.trim().to_string())
        .or_else(|| {
            // "projects/123456789/zones/…": the project's number works in its place.
            v["zone"].as_str()?.split('/').nth(1).map(str::to_string)
        });
    let sched = &v["scheduling"];
    let spot = sched["provisioningModel"].as_str() == Some("SPOT")
        || sched["preemptible"].as_str() == Some("TRUE")
        || sched["preemptible"].as_bool() == Some(true);
    Some(BoxInfo {
        provider: Some(Provider::Gcp),
        instance_type: Some(last("machineType")?),
        region,
        zone,
        spot,
        instance_id: v
            .get("id")
            .map(|i| i.to_string().trim_matches('"').to_string()),
        name: v["name"].as_str().map(str::to_string),
        project,
        via: "metadata".into(),
        ..BoxInfo::default()
    })
}

/// An Azure IMDS document (the header and the api-version are required).
pub async fn azure_get(client: &reqwest::Client, base: &str, path_query: &str) -> Option<Value> {
    let r = client
        .get(format!("{base}/metadata/{path_query}"))
        .header("Metadata", "true")
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

async fn azure(client: &reqwest::Client, base: &str) -> Option<BoxInfo> {
    let v = azure_get(client, base, "instance?api-version=2021-02-01").await?;
    let c = &v["compute"];
    let s = |k: &str| c[k].as_str().map(str::to_string).filter(|s| !s.is_empty());
    Some(BoxInfo {
        provider: Some(Provider::Azure),
        instance_type: Some(s("vmSize")?),
        region: s("location"),
        zone: s("zone"),
        spot: s("priority").is_some_and(|p| p.eq_ignore_ascii_case("spot")),
        instance_id: s("vmId"),
        resource_id: match (s("subscriptionId"), s("resourceGroupName"), s("name")) {
            (Some(sub), Some(rg), Some(n)) => Some(format!(
                "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{n}"
            )),
            _ => None,
        },
        name: s("name"),
        via: "metadata".into(),
        ..BoxInfo::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dmi_names_the_clouds() {
        let d = |v: &str, p: &str, c: &str| Dmi {
            present: true,
            sys_vendor: v.into(),
            product_name: p.into(),
            chassis_asset_tag: c.into(),
            ..Dmi::default()
        };
        assert_eq!(
            d("Amazon EC2", "p5.48xlarge", "").provider(),
            Some(Provider::Aws)
        );
        assert_eq!(
            d("Google", "Google Compute Engine", "").provider(),
            Some(Provider::Gcp)
        );
        assert_eq!(
            d(
                "Microsoft Corporation",
                "Virtual Machine",
                AZURE_CHASSIS_TAG
            )
            .provider(),
            Some(Provider::Azure)
        );
        assert_eq!(d("Supermicro", "SYS-421GE", "").provider(), None);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("sys_vendor"), "Amazon EC2\n").unwrap();
        std::fs::write(dir.path().join("product_name"), "g5.xlarge\n").unwrap();
        let dmi = Dmi::read(dir.path());
        assert!(dmi.present && dmi.product_name == "g5.xlarge");
        assert!(!Dmi::read(&dir.path().join("absent")).present);
    }
}
