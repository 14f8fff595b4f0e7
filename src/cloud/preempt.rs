//! The box tells you it is going away: AWS `spot/instance-action` (two minutes ahead), GCP
//! `instance/preempted` (~30 s), Azure Scheduled Events `Preempt` (≥ 30 s). Polled every
//! few seconds, only on a spot box; the first notice is sent once.

use std::time::Duration;

use tokio::sync::mpsc;

use super::metadata::{self, Endpoints};
use super::{BoxInfo, Provider};

/// How often a spot box's notice is asked for.
pub const POLL: Duration = Duration::from_secs(5);

/// A reclaim notice, in words ("aws spot/instance-action: terminate at 2026-…").
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub provider: Provider,
    pub detail: String,
}

/// Polls until a notice comes (sent once) or the receiver is gone.
pub async fn watch(info: BoxInfo, tx: mpsc::UnboundedSender<Notice>) {
    let Some(provider) = info.provider.filter(|_| info.spot) else {
        return;
    };
    let client = metadata::client();
    let ep = Endpoints::from_env();
    let mut token: Option<String> = None;
    loop {
        let found = match provider {
            Provider::Aws => match &ep.aws {
                Some(base) => {
                    if token.is_none() {
                        token = metadata::aws_token(&client, base).await;
                        crate::redact::install(token.clone());
                    }
                    match &token {
                        Some(t) => metadata::aws_get(&client, base, t, "spot/instance-action")
                            .await
                            .map(|body| format!("aws spot/instance-action: {}", one_line(&body))),
                        None => None,
                    }
                }
                None => None,
            },
            Provider::Gcp => metadata::gcp_get(&client, &ep.gcp, "instance/preempted")
                .await
                .filter(|v| v.trim().eq_ignore_ascii_case("TRUE"))
                .map(|_| "gcp instance/preempted: TRUE".to_string()),
            Provider::Azure => azure(&client, &ep.azure).await,
            _ => return,
        };
        if let Some(detail) = found {
            let _ = tx.send(Notice { provider, detail });
            return;
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn azure(client: &reqwest::Client, base: &str) -> Option<String> {
    let v = metadata::azure_get(client, base, "scheduledevents?api-version=2020-07-01").await?;
    let ev = v["Events"]
        .as_array()?
        .iter()
        .find(|e| e["EventType"].as_str() == Some("Preempt"))?;
    Some(format!(
        "azure scheduled event Preempt (not before {})",
        ev["NotBefore"].as_str().unwrap_or("soon")
    ))
}

fn one_line(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(200)
        .collect()
}
