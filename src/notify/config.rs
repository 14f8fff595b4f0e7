//! The `[notify]` table of the config file and the notification flags, resolved into
//! `NotifySettings`. Secrets come from a flag or env value, a `*-file`, or the file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::email::{self, parse_addresses, EmailSettings};
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
    #[serde(alias = "email_to")]
    pub email_to: Option<StrOrList>,
    #[serde(alias = "smtp_url")]
    pub smtp_url: Option<String>,
    #[serde(alias = "smtp_password_file")]
    pub smtp_password_file: Option<PathBuf>,
    #[serde(alias = "email_from")]
    pub email_from: Option<String>,
    #[serde(alias = "smtp_ca_file")]
    pub smtp_ca_file: Option<PathBuf>,
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

/// `[notify.on-channel]`: each channel's own filter.
fn per_channel(
    table: BTreeMap<String, StrOrList>,
) -> Result<BTreeMap<ChannelKind, KindFilter>, ConfigError> {
    let mut per = BTreeMap::new();
    for (name, list) in table {
        let kind = ChannelKind::parse(&name).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "invalid channel {name:?} in [notify.on-channel]: expected slack, webhook, alertmanager, pagerduty, command or email"
            ))
        })?;
        let filter = KindFilter::parse(&list.joined(), &format!("notify.on-channel.{name}"))
            .map_err(ConfigError::Invalid)?;
        per.insert(kind, filter);
    }
    Ok(per)
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
    let per = per_channel(f.on_channel)?;
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
    let email = EmailFile {
        to: f.email_to.map(StrOrList::joined),
        url: f.smtp_url,
        password_file: f.smtp_password_file,
        from: f.email_from,
        ca_file: f.smtp_ca_file,
    };
    if let Some((email, url)) = resolve_email(args, email)? {
        set.email = Some(email);
        add(ChannelKind::Email, Some(Secret(url)));
    }
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

/// The email keys of the `[notify]` table.
struct EmailFile {
    to: Option<String>,
    url: Option<String>,
    password_file: Option<PathBuf>,
    from: Option<String>,
    ca_file: Option<PathBuf>,
}

/// The email channel, when `--email-to` and `--smtp-url` are both given (one alone is an
/// error); with the URL as given, to name the channel's target. Every address, the URL, the
/// sender and the CA file are checked here: a typo is exit 125, not a lost mail at the kill.
fn resolve_email(
    args: &GuardArgs,
    mut f: EmailFile,
) -> Result<Option<(EmailSettings, String)>, ConfigError> {
    let bad = |origin: &str, shown: &str, why: String| {
        ConfigError::Invalid(format!("invalid {origin} {shown:?}: {why}"))
    };
    let to = pick_url(&args.email_to, f.to.take(), "email-to", "notify.email-to");
    let url = pick_url(&args.smtp_url, f.url.take(), "smtp-url", "notify.smtp-url");
    let ((to, to_origin), (url, url_origin)) = match (to, url) {
        (None, None) => return unused_email_keys(args, &f),
        (Some(_), None) => return Err(ConfigError::Invalid(
            "--email-to needs an SMTP server: give --smtp-url (COSTGUARD_SMTP_URL, [notify] smtp-url), e.g. smtps://user@mail.example.com".into(),
        )),
        (None, Some(_)) => return Err(ConfigError::Invalid(
            "--smtp-url needs recipients: give --email-to (COSTGUARD_EMAIL_TO, [notify] email-to)".into(),
        )),
        (Some(t), Some(u)) => (t, u),
    };
    let to = parse_addresses(&to).map_err(|why| bad(&to_origin, &to, why))?;
    let shown = crate::redact::url_outline(&url).unwrap_or_else(|| "[not shown]".into());
    let (security, host, port, user) =
        email::parse_url(&url).map_err(|why| bad(&url_origin, &shown, why))?;
    let password = smtp_password(args, f.password_file)?;
    match (&user, &password) {
        (Some(_), None) => return Err(ConfigError::Invalid(format!(
            "{url_origin} names a user but no password is given: set COSTGUARD_SMTP_PASSWORD or --smtp-password-file"
        ))),
        (None, Some(_)) => return Err(ConfigError::Invalid(format!(
            "an SMTP password is given but {url_origin} names no user: smtp://USER@host[:port]"
        ))),
        _ => {}
    }
    let from = match pick_url(&args.email_from, f.from, "email-from", "notify.email-from") {
        Some((v, origin)) => match parse_addresses(&v) {
            Ok(mut one) if one.len() == 1 => one.remove(0),
            Ok(_) => return Err(bad(&origin, &v, "expected one address".into())),
            Err(why) => return Err(bad(&origin, &v, why)),
        },
        None => email::default_from(&crate::events::hostname()),
    };
    let ca_pem = smtp_ca(args, f.ca_file)?;
    let set = EmailSettings {
        to,
        from,
        security,
        host,
        port,
        user,
        password,
        ca_pem,
    };
    Ok(Some((set, url.trim().to_string())))
}

/// Without --email-to and --smtp-url, a sender, a password file or a CA file is a mistake to
/// say, not to ignore (COSTGUARD_SMTP_PASSWORD alone is left alone: a shared environment).
fn unused_email_keys(
    args: &GuardArgs,
    f: &EmailFile,
) -> Result<Option<(EmailSettings, String)>, ConfigError> {
    let given = [
        ("--smtp-password-file", args.smtp_password_file.is_some()),
        ("--email-from", args.email_from.is_some()),
        ("--smtp-ca-file", args.smtp_ca_file.is_some()),
        (
            "config key notify.smtp-password-file",
            f.password_file.is_some(),
        ),
        ("config key notify.email-from", f.from.is_some()),
        ("config key notify.smtp-ca-file", f.ca_file.is_some()),
    ];
    match given.iter().find(|(_, g)| *g) {
        Some((name, _)) => Err(ConfigError::Invalid(format!(
            "{name} is for the email channel: give --email-to and --smtp-url too"
        ))),
        None => Ok(None),
    }
}

/// COSTGUARD_SMTP_PASSWORD (never a flag: it would show in `ps`), else the file.
fn smtp_password(
    args: &GuardArgs,
    cfg_file: Option<PathBuf>,
) -> Result<Option<Secret>, ConfigError> {
    let env = std::env::var("COSTGUARD_SMTP_PASSWORD").ok();
    let got = secret(
        "smtp-password",
        &env,
        &args.smtp_password_file,
        None,
        cfg_file,
    )?;
    Ok(got.map(|(s, _)| s))
}

/// The private CA's PEM, read and checked.
fn smtp_ca(args: &GuardArgs, cfg_file: Option<PathBuf>) -> Result<Option<Vec<u8>>, ConfigError> {
    let (path, origin) = match (&args.smtp_ca_file, cfg_file) {
        (Some(p), _) => (p.clone(), flag_origin("smtp-ca-file", p)),
        (None, Some(p)) => (p, "config key notify.smtp-ca-file".to_string()),
        (None, None) => return Ok(None),
    };
    let pem = crate::fsutil::read_given(&path, 1 << 20).map_err(|e| {
        ConfigError::Invalid(format!("cannot read {origin} {}: {e}", path.display()))
    })?;
    email::check_ca(pem.as_bytes()).map_err(|why| {
        ConfigError::Invalid(format!("invalid {origin} {}: {why}", path.display()))
    })?;
    Ok(Some(pem.into_bytes()))
}
