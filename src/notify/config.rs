//! The `[notify]` table of the config file and the notification flags, resolved into
//! `NotifySettings`. Secrets come from a flag or env value, a `*-file`, or the file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::{Channel, ChannelKind, KindFilter, NotifySettings};
use crate::cli::GuardArgs;
use crate::config::{conv, pick, positive, ConfigError};
use crate::redact::Secret;
use crate::units;

/// A list given as `"a,b"` or `["a", "b"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StrOrList {
    Str(String),
    List(Vec<String>),
}

impl StrOrList {
    fn joined(self) -> String {
        match self {
            StrOrList::Str(s) => s,
            StrOrList::List(v) => v.join(","),
        }
    }
}

/// The `[notify]` table. Secrets may be given as `*-file` paths instead of values.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NotifyFile {
    #[serde(alias = "slack_webhook")]
    pub slack_webhook: Option<String>,
    #[serde(alias = "slack_webhook_file")]
    pub slack_webhook_file: Option<PathBuf>,
    pub webhook: Option<String>,
    #[serde(alias = "webhook_file")]
    pub webhook_file: Option<PathBuf>,
    pub alertmanager: Option<String>,
    #[serde(alias = "pagerduty_routing_key")]
    pub pagerduty_routing_key: Option<String>,
    #[serde(alias = "pagerduty_routing_key_file")]
    pub pagerduty_routing_key_file: Option<PathBuf>,
    #[serde(alias = "pagerduty_url")]
    pub pagerduty_url: Option<String>,
    pub command: Option<String>,
    /// Kinds for every channel.
    pub on: Option<StrOrList>,
    /// Kinds per channel: `[notify.on-channel] slack = ["killed", "completed"]`.
    #[serde(default, alias = "on_channel")]
    pub on_channel: BTreeMap<String, StrOrList>,
    pub flush: Option<String>,
    pub timeout: Option<String>,
}

/// A secret from its flag/env, else its file flag/env, else the config value, else the
/// config file path. Errors never print the value.
fn secret(
    flag: &str,
    value: &Option<String>,
    file: &Option<PathBuf>,
    cfg_value: Option<String>,
    cfg_file: Option<PathBuf>,
) -> Result<Option<Secret>, ConfigError> {
    let read = |p: &PathBuf, origin: &str| -> Result<Option<Secret>, ConfigError> {
        let text = std::fs::read_to_string(p).map_err(|e| {
            ConfigError::Invalid(format!("cannot read {origin} {}: {e}", p.display()))
        })?;
        let v = text.trim();
        if v.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "{origin} {} is empty",
                p.display()
            )));
        }
        Ok(Some(Secret(v.to_string())))
    };
    if let Some(v) = value.as_ref().filter(|v| !v.trim().is_empty()) {
        return Ok(Some(Secret(v.trim().to_string())));
    }
    if let Some(p) = file {
        return read(p, &format!("--{flag}-file"));
    }
    if let Some(v) = cfg_value.filter(|v| !v.trim().is_empty()) {
        return Ok(Some(Secret(v.trim().to_string())));
    }
    if let Some(p) = cfg_file {
        return read(&p, &format!("config key notify.{flag}-file"));
    }
    Ok(None)
}

fn check_url(flag: &str, s: &Secret) -> Result<(), ConfigError> {
    let v = s.0.as_str();
    if (v.starts_with("http://") || v.starts_with("https://")) && v.len() > "https://".len() {
        Ok(())
    } else {
        // The value may be a secret: say what is wrong, not what it is.
        Err(ConfigError::Invalid(format!(
            "invalid --{flag}: expected an http:// or https:// URL (the value is not shown: it may be a secret)"
        )))
    }
}

pub(crate) fn resolve_notify(
    args: &GuardArgs,
    f: NotifyFile,
) -> Result<NotifySettings, ConfigError> {
    let dur = |v: &str| units::parse_duration(v);
    let mut set = NotifySettings::default();
    let (on, chosen) = match pick(&args.notify_on, f.on.map(StrOrList::joined), "notify-on") {
        Some((v, origin)) => (
            KindFilter::parse(&v, &origin).map_err(ConfigError::Invalid)?,
            true,
        ),
        None => (KindFilter::default(), false),
    };
    let mut per: BTreeMap<ChannelKind, KindFilter> = BTreeMap::new();
    for (name, list) in f.on_channel {
        let kind = ChannelKind::parse(&name).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "invalid channel {name:?} in [notify.on-channel]: expected slack, webhook, alertmanager, pagerduty or command"
            ))
        })?;
        let filter = KindFilter::parse(&list.joined(), &format!("notify.on-channel.{name}"))
            .map_err(ConfigError::Invalid)?;
        per.insert(kind, filter);
    }
    let mut add = |kind: ChannelKind, target: Option<Secret>| {
        if let Some(target) = target {
            let on = match per.get(&kind) {
                Some(f) => f.clone(),
                None if kind == ChannelKind::Pagerduty && !chosen => {
                    KindFilter::parse(super::PAGER_KINDS, "default").expect("valid default")
                }
                None => on.clone(),
            };
            set.channels.push(Channel { kind, target, on });
        }
    };
    let slack = secret(
        "slack-webhook",
        &args.slack_webhook,
        &args.slack_webhook_file,
        f.slack_webhook,
        f.slack_webhook_file,
    )?;
    if let Some(s) = &slack {
        check_url("slack-webhook", s)?;
    }
    add(ChannelKind::Slack, slack);
    let webhook = secret(
        "webhook",
        &args.webhook,
        &args.webhook_file,
        f.webhook,
        f.webhook_file,
    )?;
    if let Some(s) = &webhook {
        check_url("webhook", s)?;
    }
    add(ChannelKind::Webhook, webhook);
    let am = secret(
        "alertmanager",
        &args.alertmanager,
        &None,
        f.alertmanager,
        None,
    )?;
    if let Some(s) = &am {
        check_url("alertmanager", s)?;
    }
    add(ChannelKind::Alertmanager, am);
    let pd = secret(
        "pagerduty-routing-key",
        &args.pagerduty_routing_key,
        &args.pagerduty_routing_key_file,
        f.pagerduty_routing_key,
        f.pagerduty_routing_key_file,
    )?;
    add(ChannelKind::Pagerduty, pd);
    let cmd = args
        .notify_command
        .clone()
        .or(f.command)
        .filter(|c| !c.trim().is_empty())
        .map(Secret);
    add(ChannelKind::Command, cmd);
    if let Some((v, _)) = pick(&args.pagerduty_url, f.pagerduty_url, "pagerduty-url") {
        let s = Secret(v);
        check_url("pagerduty-url", &s)?;
        set.pagerduty_url = s.0;
    }
    if let Some(d) = conv(pick(&args.notify_flush, f.flush, "notify-flush"), dur)? {
        set.flush = d;
    }
    if let Some(d) = positive(
        conv(pick(&args.notify_timeout, f.timeout, "notify-timeout"), dur)?,
        "notify-timeout",
    )? {
        set.timeout = d;
    }
    Ok(set)
}
