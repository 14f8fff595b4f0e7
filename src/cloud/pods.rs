//! Rented boxes that know their own price: RunPod's `pod { costPerHr }` with the pod-scoped
//! `RUNPOD_API_KEY`, Vast's `dph_total` with `CONTAINER_API_KEY`. The key goes in a header,
//! never in a URL, and never into a message.

use serde_json::{json, Value};

use super::{BoxRate, Env, Provider, RateKind, API_BUDGET};

const RUNPOD_API: &str = "https://api.runpod.io/graphql";
const VAST_API: &str = "https://console.vast.ai";

pub fn runpod_url() -> String {
    std::env::var("COSTGUARD_RUNPOD_API_URL")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| RUNPOD_API.into())
}

pub fn vast_url() -> String {
    std::env::var("COSTGUARD_VAST_API_URL")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim_end_matches('/').to_string())
        .unwrap_or_else(|| VAST_API.into())
}

/// A positive, finite price (anything else is no price: never meter at $0).
fn price(v: &Value) -> Option<f64> {
    let n = v
        .as_f64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))?;
    (n.is_finite() && n > 0.0 && n < 100_000.0).then_some(n)
}

/// The provider's live price for this box: Ok(None) when it has no API for it (or no key),
/// Err when the API was asked and failed.
pub async fn live_price(
    client: &reqwest::Client,
    provider: Provider,
    env: &Env,
) -> Result<Option<BoxRate>, String> {
    let ask = async {
        match provider {
            Provider::Runpod => match (&env.runpod_pod, &env.runpod_key) {
                (Some(pod), Some(key)) => runpod(client, pod, key).await.map(Some),
                _ => Ok(None),
            },
            Provider::Vast => match (&env.vast_id, &env.vast_key) {
                (Some(id), Some(key)) => vast(client, id, key).await.map(Some),
                _ => Ok(None),
            },
            _ => Ok(None),
        }
    };
    let r = tokio::time::timeout(API_BUDGET, ask)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {:?}", API_BUDGET)));
    r.map_err(|e| crate::redact::text(&e).into_owned())
}

fn status_error(what: &str, s: reqwest::StatusCode) -> String {
    format!("{what} answered HTTP {}", s.as_u16())
}

async fn runpod(client: &reqwest::Client, pod: &str, key: &str) -> Result<BoxRate, String> {
    let q = format!(
        "query {{ pod(input: {{podId: {}}}) {{ id costPerHr }} }}",
        serde_json::to_string(pod).unwrap_or_default()
    );
    let r = client
        .post(runpod_url())
        .bearer_auth(key)
        .json(&json!({ "query": q }))
        .send()
        .await
        .map_err(|e| format!("RunPod API: {}", crate::redact::text(&e.to_string())))?;
    if !r.status().is_success() {
        return Err(status_error("RunPod API", r.status()));
    }
    let v: Value = r
        .json()
        .await
        .map_err(|e| format!("RunPod API: not JSON ({e})"))?;
    let per_hour = price(&v["data"]["pod"]["costPerHr"]).ok_or_else(|| {
        let err = v["errors"][0]["message"].as_str().unwrap_or("no costPerHr");
        format!("RunPod API: {err}")
    })?;
    Ok(BoxRate {
        per_hour,
        kind: RateKind::Live,
        source: format!("runpod pod {pod} (live costPerHr from the RunPod API)"),
    })
}

async fn vast(client: &reqwest::Client, id: &str, key: &str) -> Result<BoxRate, String> {
    let r = client
        .get(format!("{}/api/v0/instances/{id}/", vast_url()))
        .bearer_auth(key)
        .send()
        .await
        .map_err(|e| format!("Vast API: {}", crate::redact::text(&e.to_string())))?;
    if !r.status().is_success() {
        return Err(status_error("Vast API", r.status()));
    }
    let v: Value = r
        .json()
        .await
        .map_err(|e| format!("Vast API: not JSON ({e})"))?;
    let inst = if v["instances"].is_object() {
        &v["instances"]
    } else {
        &v
    };
    let per_hour = price(&inst["dph_total"]).ok_or("Vast API: no dph_total for the instance")?;
    Ok(BoxRate {
        per_hour,
        kind: RateKind::Live,
        source: format!("vast instance {id} (live dph_total from the Vast API)"),
    })
}
