//! The `[notify]` table of the config file and the notification flags, resolved into
//! `NotifySettings`. Secrets come from a flag or env value, a `*-file`, or the file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::{Channel, ChannelKind, KindFilter, NotifySettings};
use crate::cli::GuardArgs;
use crate::config::{check_url, conv, flag_origin, pick, pick_url, positive, ConfigError};
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
/// config file path; with where it came from (`--webhook`, `--webhook-file PATH`,
/// `config key notify.webhook` …). Errors never print the value.
fn secret(
    flag: &str,
    value: &Option<String>,
    file: &Option<PathBuf>,
    cfg_value: Option<String>,
    cfg_file: Option<PathBuf>,
) -> Result<Option<(Secret, String)>, ConfigError> {
    let read = |p: &PathBuf, origin: String| -> Result<Option<(Secret, String)>, ConfigError> {
        // A secret is a line: a regular file of at most 64 KiB (links followed), never a
        // FIFO or a device read until memory runs out.
        let text = crate::fsutil::read_given(p, 64 << 10).map_err(|e| {
            ConfigError::Invalid(format!("cannot read {origin} {}: {e}", p.display()))
        })?;
        let v = text.trim();
        if v.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "{origin} {} is empty",
                p.display()
            )));
        }
        Ok(Some((
            Secret(v.to_string()),
            format!("{origin} {}", p.display()),
        )))
    };
    if let Some(v) = value.as_ref().filter(|v| !v.trim().is_empty()) {
        return Ok(Some((Secret(v.trim().to_string()), flag_origin(flag, v))));
    }
    if let Some(p) = file {
        return read(p, flag_origin(&format!("{flag}-file"), p));
    }
    if let Some(v) = cfg_value.filter(|v| !v.trim().is_empty()) {
        let origin = format!("config key notify.{flag}");
        return Ok(Some((Secret(v.trim().to_string()), origin)));
    }
    if let Some(p) = cfg_file {
        return read(&p, format!("config key notify.{flag}-file"));
    }
    Ok(None)
}

/// A secret that is a URL: checked (see `check_url`), its origin named when it is not one.
fn url_secret(
    flag: &str,
    value: &Option<String>,
    file: &Option<PathBuf>,
    cfg_value: Option<String>,
    cfg_file: Option<PathBuf>,
) -> Result<Option<Secret>, ConfigError> {
    let Some((s, origin)) = secret(flag, value, file, cfg_value, cfg_file)? else {
        return Ok(None);
    };
    check_url(&origin, &s.0)?;
    Ok(Some(s))
}

pub(crate) fn resolve_notify(
    args: &GuardArgs,
    f: NotifyFile,
    plan: bool,
) -> Result<NotifySettings, ConfigError> {
    let dur = |v: &str| units::parse_duration(v);
    let mut set = NotifySettings::default();
    let (on, chosen) = match pick(&args.notify_on, f.on.map(StrOrList::joined), "notify-on") {
        Some((v, origin)) => (
            KindFilter::parse(&v, &origin).map_err(ConfigError::Invalid)?,
            true,
        ),
        None if plan => (KindFilter::for_plans(), false),
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
    let slack = url_secret(
        "slack-webhook",
        &args.slack_webhook,
        &args.slack_webhook_file,
        f.slack_webhook,
        f.slack_webhook_file,
    )?;
    add(ChannelKind::Slack, slack);
    let webhook = url_secret(
        "webhook",
        &args.webhook,
        &args.webhook_file,
        f.webhook,
        f.webhook_file,
    )?;
    add(ChannelKind::Webhook, webhook);
    let am = url_secret(
        "alertmanager",
        &args.alertmanager,
        &None,
        f.alertmanager,
        None,
    )?;
    add(ChannelKind::Alertmanager, am);
    let pd = secret(
        "pagerduty-routing-key",
        &args.pagerduty_routing_key,
        &args.pagerduty_routing_key_file,
        f.pagerduty_routing_key,
        f.pagerduty_routing_key_file,
    )?;
    add(ChannelKind::Pagerduty, pd.map(|(s, _)| s));
    let cmd = args
        .notify_command
        .clone()
        .or(f.command)
        .filter(|c| !c.trim().is_empty())
        .map(Secret);
    add(ChannelKind::Command, cmd);
    let pd_url = pick_url(
        &args.pagerduty_url,
        f.pagerduty_url,
        "pagerduty-url",
        "notify.pagerduty-url",
    );
    if let Some((v, origin)) = pd_url {
        check_url(&origin, &v)?;
        set.pagerduty_url = v.trim().to_string();
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
