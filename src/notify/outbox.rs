//! The durable outbox: `<state-dir>/outbox/<event id>.<channel>[.resolve-N].json`, one file
//! per delivery, written atomically before the first attempt and removed once delivered. A
//! delivery refused for good (a 4xx other than 429, a permanent redirect, an SMTP 5xx, a
//! channel no longer configured) moves to `outbox/failed/`. Files hold the
//! channel's name, never its URL or key: those stay in the configuration.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ChannelKind;
use crate::events::Event;
use crate::fsutil::{private_dir, write_atomic};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Item {
    pub channel: ChannelKind,
    pub event: Event,
    /// PagerDuty only: the incident key this item resolves instead of triggering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolve: Option<String>,
}

impl Item {
    /// Stable across retries and restarts: receivers can drop duplicates by it.
    pub fn delivery_id(&self) -> String {
        match &self.resolve {
            Some(k) => format!(
                "{}.{}.resolve-{}",
                self.event.id,
                self.channel.as_str(),
                k.rsplit('/').next().unwrap_or("")
            ),
            None => format!("{}.{}", self.event.id, self.channel.as_str()),
        }
    }

    fn file_name(&self) -> String {
        let safe: String = self
            .delivery_id()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{safe}.json")
    }
}

#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
}

impl Outbox {
    pub fn open(state_dir: &Path) -> std::io::Result<Outbox> {
        let dir = state_dir.join("outbox");
        private_dir(&dir)?;
        Ok(Outbox { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes the item durably; returns its path.
    pub fn put(&self, item: &Item) -> std::io::Result<PathBuf> {
        let path = self.dir.join(item.file_name());
        let bytes = serde_json::to_vec_pretty(item).map_err(std::io::Error::other)?;
        write_atomic(&path, &bytes)?;
        Ok(path)
    }

    pub fn delivered(&self, path: &Path) -> std::io::Result<()> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Moves a delivery the receiver refused for good out of the way, with the reason.
    pub fn refused(&self, path: &Path, item: &Item, why: &str) -> std::io::Result<()> {
        let failed = self.dir.join("failed");
        private_dir(&failed)?;
        let mut doc = serde_json::to_value(item).map_err(std::io::Error::other)?;
        doc["refused"] = serde_json::json!(why);
        let name = path.file_name().map(PathBuf::from).unwrap_or_default();
        write_atomic(
            &failed.join(name),
            &serde_json::to_vec_pretty(&doc).map_err(std::io::Error::other)?,
        )?;
        self.delivered(path)
    }

    /// Everything not yet delivered, oldest name first. Unreadable files are reported, kept.
    pub fn pending(&self) -> (Vec<(PathBuf, Item)>, Vec<String>) {
        let mut items = Vec::new();
        let mut bad = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return (items, bad);
        };
        let mut paths: Vec<PathBuf> = rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|x| x == "json")
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        paths.sort();
        for p in paths {
            // The state directory is not trusted: a FIFO or a link to /dev/zero is refused.
            match crate::fsutil::read_bounded(&p, 1 << 20)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Item>(&b).map_err(|e| e.to_string()))
            {
                Ok(i) => items.push((p, i)),
                Err(e) => bad.push(format!("{}: {e}", p.display())),
            }
        }
        (items, bad)
    }
}
