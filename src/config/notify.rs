//! The notification settings (`[notify]` in the file, the notification flags) resolved into
//! `NotifySettings`. Secrets come from a flag or env value, a `*-file`, or the file; every
//! error names the value's origin and never prints a secret.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::layer::{path_of, text, Layers};
use super::origin::{Given, Origin};
use super::{check_url, conv, positive, ConfigError};
use crate::notify::email::{self, parse_addresses, EmailSettings};
use crate::notify::{Channel, ChannelKind, KindFilter, NotifySettings, PAGER_KINDS};
use crate::redact::Secret;
use crate::units;

/// A filter from its list; the error names the list's origin.
fn filter(g: &Given<String>) -> Result<KindFilter, ConfigError> {
    KindFilter::parse(&g.value)
        .map_err(|why| ConfigError::Invalid(format!("invalid {} {why}", g.origin)))
}

/// Whether a person gave the value (flag or environment), which wins over the file.
fn by_person(o: &Origin) -> bool {
    matches!(o, Origin::Flag { .. } | Origin::Env { .. })
}

/// Reads a secret from the file a setting names. A secret is a line: a regular file of at
/// most 64 KiB (links followed), never a FIFO or a device read until memory runs out.
fn read_secret(p: Given<PathBuf>) -> Result<(Secret, String), ConfigError> {
    let (path, origin) = (p.value.display(), p.origin);
    let text = crate::fsutil::read_given(&p.value, 64 << 10)
        .map_err(|e| ConfigError::Invalid(format!("cannot read {origin} {path}: {e}")))?;
    let v = text.trim();
    if v.is_empty() {
        return Err(ConfigError::Invalid(format!("{origin} {path} is empty")));
    }
    Ok((Secret(v.to_string()), format!("{origin} {path}")))
}

/// A secret given as a value or as a file holding it: a person's value, else a person's
/// file, else the config file's value, else its file; with where it came from.
fn secret(
    value: Option<Given<String>>,
    file: Option<Given<PathBuf>>,
) -> Result<Option<(Secret, String)>, ConfigError> {
    let value = value.filter(|v| !v.value.trim().is_empty());
    let person_value = value.as_ref().is_some_and(|v| by_person(&v.origin));
    let person_file = file.as_ref().is_some_and(|f| by_person(&f.origin));
    if let Some(v) = value.filter(|_| person_value || !person_file) {
        return Ok(Some((
            Secret(v.value.trim().to_string()),
            v.origin.to_string(),
        )));
    }
    file.map(read_secret).transpose()
}

/// A secret that is a URL: checked (see `check_url`), its origin named when it is not one.
fn url_secret(
    value: Option<Given<String>>,
    file: Option<Given<PathBuf>>,
) -> Result<Option<Secret>, ConfigError> {
    let Some((s, origin)) = secret(value, file)? else {
        return Ok(None);
    };
    check_url(&origin, &s.0)?;
    Ok(Some(s))
}

/// `[notify.on-channel]`: each channel's own filter.
fn per_channel(l: &Layers) -> Result<BTreeMap<ChannelKind, KindFilter>, ConfigError> {
    let mut per = BTreeMap::new();
    for (name, list) in &l.file.on_channel {
        let kind = ChannelKind::parse(name).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "invalid channel {name:?} at {}: expected slack, webhook, alertmanager, pagerduty, command or email",
                list.origin
            ))
        })?;
        per.insert(kind, filter(list)?);
    }
    Ok(per)
}

pub(super) fn resolve(l: &Layers, plan: bool) -> Result<NotifySettings, ConfigError> {
    let (on, chosen) = match text!(l, notify_on) {
        Some(g) => (filter(&g)?, true),
        None if plan => (KindFilter::for_plans(), false),
        None => (KindFilter::default(), false),
    };
    let per = per_channel(l)?;
    let mut channels = Vec::new();
    let mut add = |kind: ChannelKind, target: Option<Secret>| {
        if let Some(target) = target {
            let on = match per.get(&kind) {
                Some(f) => f.clone(),
                None if kind == ChannelKind::Pagerduty && !chosen => {
                    KindFilter::parse(PAGER_KINDS).expect("valid default")
                }
                None => on.clone(),
            };
            channels.push(Channel { kind, target, on });
        }
    };
    add(
        ChannelKind::Slack,
        url_secret(text!(l, slack_webhook), path_of!(l, slack_webhook_file))?,
    );
    add(
        ChannelKind::Webhook,
        url_secret(text!(l, webhook), path_of!(l, webhook_file))?,
    );
    add(
        ChannelKind::Alertmanager,
        url_secret(text!(l, alertmanager), None)?,
    );
    let pd = secret(
        text!(l, pagerduty_routing_key),
        path_of!(l, pagerduty_routing_key_file),
    )?;
    add(ChannelKind::Pagerduty, pd.map(|(s, _)| s));
    let cmd = text!(l, notify_command)
        .map(|g| g.value)
        .filter(|c| !c.trim().is_empty())
        .map(Secret);
    add(ChannelKind::Command, cmd);
    let email = resolve_email(l)?;
    if let Some((_, url)) = &email {
        add(ChannelKind::Email, Some(Secret(url.clone())));
    }
    let pd_url = text!(l, pagerduty_url).expect("declared with a default");
    check_url(&pd_url.origin.to_string(), &pd_url.value)?;
    let dur = |v: &str| units::parse_duration(v);
    Ok(NotifySettings {
        channels,
        pagerduty_url: pd_url.value.trim().to_string(),
        flush: conv(text!(l, notify_flush), dur)?.expect("declared with a default"),
        timeout: positive(text!(l, notify_timeout))?.expect("declared with a default"),
        email: email.map(|(e, _)| e),
    })
}

/// The email channel, when `--email-to` and `--smtp-url` are both given (one alone is an
/// error); with the URL as given, to name the channel's target. Every address, the URL, the
/// sender and the CA file are checked here: a typo is exit 125, not a lost mail at the kill.
fn resolve_email(l: &Layers) -> Result<Option<(EmailSettings, String)>, ConfigError> {
    let bad = |origin: &Origin, shown: &str, why: String| {
        ConfigError::Invalid(format!("invalid {origin} {shown:?}: {why}"))
    };
    let from = text!(l, email_from);
    let password_file = path_of!(l, smtp_password_file);
    let ca_file = path_of!(l, smtp_ca_file);
    let (to, url) = match (text!(l, email_to), text!(l, smtp_url)) {
        (None, None) => return unused_email_keys([&from.map(|g| g.origin), &password_file.map(|g| g.origin), &ca_file.map(|g| g.origin)]),
        (Some(t), None) => return Err(ConfigError::Invalid(format!(
            "{} needs an SMTP server: give --smtp-url (COSTGUARD_SMTP_URL, [notify] smtp-url), e.g. smtps://user@mail.example.com",
            t.origin
        ))),
        (None, Some(u)) => return Err(ConfigError::Invalid(format!(
            "{} needs recipients: give --email-to (COSTGUARD_EMAIL_TO, [notify] email-to)",
            u.origin
        ))),
        (Some(t), Some(u)) => (t, u),
    };
    let to_list = parse_addresses(&to.value).map_err(|why| bad(&to.origin, &to.value, why))?;
    let shown = crate::redact::url_outline(&url.value).unwrap_or_else(|| "[not shown]".into());
    let (security, host, port, user) =
        email::parse_url(&url.value).map_err(|why| bad(&url.origin, &shown, why))?;
    let password = smtp_password(password_file)?;
    let url_origin = &url.origin;
    match (&user, &password) {
        (Some(_), None) => return Err(ConfigError::Invalid(format!(
            "{url_origin} names a user but no password is given: set COSTGUARD_SMTP_PASSWORD or --smtp-password-file"
        ))),
        (None, Some(_)) => return Err(ConfigError::Invalid(format!(
            "an SMTP password is given but {url_origin} names no user: smtp://USER@host[:port]"
        ))),
        _ => {}
    }
    let from = match from {
        Some(g) => match parse_addresses(&g.value) {
            Ok(mut one) if one.len() == 1 => one.remove(0),
            Ok(_) => return Err(bad(&g.origin, &g.value, "expected one address".into())),
            Err(why) => return Err(bad(&g.origin, &g.value, why)),
        },
        None => email::default_from(&crate::events::hostname()),
    };
    let set = EmailSettings {
        to: to_list,
        from,
        security,
        host,
        port,
        user,
        password,
        ca_pem: smtp_ca(ca_file)?,
    };
    Ok(Some((set, url.value.trim().to_string())))
}

/// Without --email-to and --smtp-url, a sender, a password file or a CA file is a mistake to
/// say, not to ignore (COSTGUARD_SMTP_PASSWORD alone is left alone: a shared environment).
fn unused_email_keys(
    given: [&Option<Origin>; 3],
) -> Result<Option<(EmailSettings, String)>, ConfigError> {
    match given.into_iter().flatten().next() {
        Some(origin) => Err(ConfigError::Invalid(format!(
            "{origin} is for the email channel: give --email-to and --smtp-url too"
        ))),
        None => Ok(None),
    }
}

/// COSTGUARD_SMTP_PASSWORD (never a flag: it would show in `ps`), else the file.
fn smtp_password(file: Option<Given<PathBuf>>) -> Result<Option<Secret>, ConfigError> {
    let env = std::env::var("COSTGUARD_SMTP_PASSWORD")
        .ok()
        .map(|v| Given {
            value: v,
            origin: Origin::Env {
                flag: "smtp-password".into(),
                var: "COSTGUARD_SMTP_PASSWORD".into(),
            },
        });
    Ok(secret(env, file)?.map(|(s, _)| s))
}

/// The private CA's PEM, read and checked.
fn smtp_ca(file: Option<Given<PathBuf>>) -> Result<Option<Vec<u8>>, ConfigError> {
    let Some(Given {
        value: path,
        origin,
    }) = file
    else {
        return Ok(None);
    };
    let pem = crate::fsutil::read_given(&path, 1 << 20).map_err(|e| {
        ConfigError::Invalid(format!("cannot read {origin} {}: {e}", path.display()))
    })?;
    email::check_ca(pem.as_bytes()).map_err(|why| {
        ConfigError::Invalid(format!("invalid {origin} {}: {why}", path.display()))
    })?;
    Ok(Some(pem.into_bytes()))
}
