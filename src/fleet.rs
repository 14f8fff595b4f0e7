//! Fleet budget: the fleet's total spend read from Prometheus, which already scrapes every
//! costguard. When the total reaches `--fleet-max-usd`, each costguard kills its own workload.
//! Prometheus unreachable: an agent-error, and the local ceilings still hold.
//!
//! The query counts each member's highest spend within a window of a week (finished members
//! too, while Prometheus keeps their series) and projects the live members' spend from their
//! last scrape to now at their current rate, which removes the scrape lag from the estimate.
//! Overshoot bound: what is left is the time between reads — one `--fleet-interval` plus the
//! query time plus 0.2 s of metric refresh — during which every member keeps spending:
//! about `sum(rates) × (fleet_interval + query_lag + 0.2 s)`, plus any rate change since the
//! last scrape (e.g. 100 pods × $30/h × 15.5 s = $13). Tests measure it on loopback.

use std::time::Duration;

use tokio::sync::mpsc;

#[derive(Debug, Clone)]
pub struct FleetSettings {
    pub max_usd: f64,
    pub prometheus_url: String,
    /// A PromQL label selector such as `{experiment="bert"}` (braces optional).
    pub selector: String,
    pub interval: Duration,
    /// How far back finished members' spend still counts.
    pub window: Duration,
    /// A PromQL expression that replaces the built-in query (e.g. a recording rule).
    pub query_override: Option<String>,
}

impl FleetSettings {
    pub fn query(&self) -> String {
        if let Some(q) = &self.query_override {
            return q.clone();
        }
        let sel = self.selector.trim();
        let sel = if sel.is_empty() {
            "{}".to_string()
        } else if sel.starts_with('{') {
            sel.to_string()
        } else {
            format!("{{{sel}}}")
        };
        let w = format!("{}s", self.window.as_secs().max(60));
        // Every member's highest spend within the window (finished members included), plus
        // what the live ones spent since their last scrape, projected at their current rate.
        format!(
            "sum(max_over_time(costguard_spend_dollars_total{sel}[{w}])) + (sum(costguard_spend_rate_dollars_per_hour{sel} / 3600 * (time() - timestamp(costguard_spend_dollars_total{sel}))) or vector(0))"
        )
    }
}

#[derive(Debug)]
pub enum FleetMsg {
    Total(f64),
    Error(String),
    /// The query matched no series: the fleet's spend is unknown, not $0 (nothing scraped
    /// yet, a selector that names nothing, a monitor Prometheus does not pick up).
    NoSeries(String),
}

/// Why a query answered, but with nothing.
enum Answer {
    Total(f64),
    NoSeries,
}

async fn once(client: &reqwest::Client, f: &FleetSettings) -> Result<Answer, String> {
    let url = format!("{}/api/v1/query", f.prometheus_url.trim_end_matches('/'));
    let resp = client
        .get(url)
        .query(&[("query", f.query())])
        .timeout(f.interval.max(Duration::from_secs(2)))
        .send()
        .await
        .map_err(|e| crate::redact::text(&e.without_url().to_string()).into_owned())?;
    if resp.status().is_redirection() {
        return Err(format!(
            "Prometheus answered HTTP {} (redirects are not followed)",
            resp.status()
        ));
    }
    if !resp.status().is_success() {
        return Err(format!("Prometheus answered HTTP {}", resp.status()));
    }
    let v: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
    match v["data"]["result"].as_array() {
        Some(r) if r.is_empty() => Ok(Answer::NoSeries),
        Some(r) => r[0]["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
            .map(Answer::Total)
            .ok_or_else(|| format!("unexpected answer: {v}")),
        None => Err(format!("unexpected answer: {v}")),
    }
}

/// Polls every interval until the receiver is gone.
pub async fn poll(f: FleetSettings, tx: mpsc::UnboundedSender<FleetMsg>) {
    // Like the notifications' client: no redirect followed (a redirected query would go
    // elsewhere unchecked), no Referer (the URL may hold credentials).
    let client = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .referer(false)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(FleetMsg::Error(format!("cannot build an HTTP client: {e}")));
            return;
        }
    };
    let mut tick = tokio::time::interval(f.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let msg = match once(&client, &f).await {
            Ok(Answer::Total(t)) => FleetMsg::Total(t),
            Ok(Answer::NoSeries) => FleetMsg::NoSeries(match &f.query_override {
                Some(q) => format!("--fleet-query {q}"),
                None => format!("--fleet-selector {}", f.selector.trim()),
            }),
            Err(e) => FleetMsg::Error(e),
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_becomes_a_sum_query() {
        let mut f = FleetSettings {
            max_usd: 1.0,
            prometheus_url: String::new(),
            selector: "experiment=\"bert\"".into(),
            interval: Duration::from_secs(1),
            window: Duration::from_secs(3600),
            query_override: None,
        };
        let q = f.query();
        assert!(
            q.starts_with(
                "sum(max_over_time(costguard_spend_dollars_total{experiment=\"bert\"}[3600s]))"
            ),
            "{q}"
        );
        f.selector = String::new();
        assert!(f
            .query()
            .contains("costguard_spend_rate_dollars_per_hour{} / 3600"));
    }
}
