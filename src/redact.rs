//! Secrets never leave costguard in clear: webhook URLs, routing keys and tokens given to it,
//! and the values of the job's own secret-looking flags and variables wherever its command
//! line is shown. The secret list is installed once at start; `text` masks it in every event
//! message, the job's command line wherever it is shown, notification errors and command
//! errors. The console itself does not mask: callers pass text through `text`.

use std::borrow::Cow;
use std::ffi::OsString;
use std::sync::{OnceLock, RwLock};

use regex::Regex;

pub const MASK: &str = "[redacted]";

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// A secret value: `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(MASK)
    }
}

/// Adds values to mask from now on (empty and very short values are ignored: masking "a"
/// would garble every line).
pub fn install<I: IntoIterator<Item = String>>(values: I) {
    if let Ok(mut s) = SECRETS.write() {
        for v in values {
            if v.len() >= 6 && !s.contains(&v) {
                s.push(v);
            }
        }
        // Longest first, so a secret containing another is masked whole.
        s.sort_by_key(|v| std::cmp::Reverse(v.len()));
    }
}

fn userinfo() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@").expect("regex"))
}

/// Masks every installed secret and any `user:password@` in a URL.
pub fn text(s: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(s);
    if let Ok(secrets) = SECRETS.read() {
        for v in secrets.iter() {
            if out.contains(v.as_str()) {
                out = Cow::Owned(out.replace(v.as_str(), MASK));
            }
        }
    }
    // Only text with a URL can hold a `user:password@`: the regex is built (on the start
    // path, for the first line masked) only when there is one.
    if out.contains("://") && userinfo().is_match(&out) {
        out = Cow::Owned(
            userinfo()
                .replace_all(&out, format!("${{1}}{MASK}@"))
                .into_owned(),
        );
    }
    out
}

/// A URL as an error may show it when the URL itself may be a secret (a webhook's path or
/// query is its credential): the scheme and the host and port as written, any
/// `user:password@` masked, everything after them masked. None when the value has no
/// `scheme://` to tell the parts apart: then nothing of it can be shown.
pub fn url_outline(s: &str) -> Option<String> {
    let (scheme, rest) = s.trim().split_once("://")?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("{MASK}@{host}"),
        None => authority.to_string(),
    };
    let tail = if tail.is_empty() || tail == "/" {
        tail.to_string()
    } else {
        format!("/{MASK}")
    };
    Some(text(&format!("{scheme}://{authority}{tail}")).into_owned())
}

/// Whether a flag or variable name looks like it holds a secret.
pub fn secret_name(name: &str) -> bool {
    let n = name.trim_start_matches('-').to_ascii_lowercase();
    ["key", "token", "secret", "password", "passwd", "credential"]
        .iter()
        .any(|w| n.contains(w))
}

fn inline() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(
            // The value ends at a shell separator: `KEY=S12; python` keeps its `;`.
            r"(?i)((?:--?|\b)[A-Za-z0-9_.-]*(?:key|token|secret|password|passwd|credential)[A-Za-z0-9_.-]*)(=|\s+)('[^']*'|[^\s;&|'\x22]+)",
        )
        .expect("regex")
    })
}

/// An HTTP credential in a header: `Authorization: Bearer T`, `Basic T`, `token T`.
fn auth_header() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"(?i)\b(bearer|basic|token)(\s+)([A-Za-z0-9._~+/=:-]{6,})").expect("regex")
    })
}

/// Masks credentials inside one argument that holds a script or a header.
fn mask_inline(a: &str) -> String {
    let a = inline().replace_all(a, format!("$1$2{MASK}"));
    auth_header()
        .replace_all(&a, format!("$1$2{MASK}"))
        .into_owned()
}

/// The job's command line for display, with secret-looking values masked: `--api-key V`,
/// `--token=V`, `WANDB_API_KEY=V`, and the same inside a `sh -c` script.
pub fn command_line(args: &[OsString]) -> String {
    let mut out: Vec<String> = Vec::with_capacity(args.len());
    let mut mask_next = false;
    for a in args {
        let a = a.to_string_lossy();
        if mask_next {
            out.push(MASK.into());
            mask_next = false;
            continue;
        }
        if a.chars().any(char::is_whitespace) {
            out.push(format!("'{}'", mask_inline(&a)));
        } else if ["bearer", "basic"].contains(&a.to_ascii_lowercase().as_str()) {
            // `-H Authorization: Bearer TOKEN` split into words: the word after is the secret.
            mask_next = true;
            out.push(a.into_owned());
        } else if let Some((name, _)) = a.split_once('=') {
            if secret_name(name) {
                out.push(format!("{name}={MASK}"));
            } else {
                out.push(a.into_owned());
            }
        } else {
            mask_next = a.starts_with('-') && secret_name(&a);
            out.push(a.into_owned());
        }
    }
    text(&out.join(" ")).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn job_flags_and_variables_are_masked() {
        let line = command_line(&os(&[
            "env",
            "WANDB_API_KEY=abc123456",
            "HOME=/root",
            "python",
            "train.py",
            "--api-key",
            "k-999999",
            "--hf-token=t-888888",
            "--lr",
            "3e-4",
        ]));
        assert_eq!(
            line,
            "env WANDB_API_KEY=[redacted] HOME=/root python train.py --api-key [redacted] \
             --hf-token=[redacted] --lr 3e-4"
        );
        let script = command_line(&os(&[
            "sh",
            "-c",
            "train --db-password hunter22 --epochs 3",
        ]));
        assert_eq!(script, "sh -c 'train --db-password [redacted] --epochs 3'");
    }

    #[test]
    fn bearer_tokens_are_masked_and_shell_separators_kept() {
        let line = command_line(&os(&[
            "curl",
            "-H",
            "Authorization: Bearer sk-live-1234567890",
            "https://x",
        ]));
        assert_eq!(line, "curl -H 'Authorization: Bearer [redacted]' https://x");
        let split = command_line(&os(&[
            "curl",
            "-H",
            "Authorization:",
            "Bearer",
            "sk-live-12345",
        ]));
        assert_eq!(split, "curl -H Authorization: Bearer [redacted]");
        let script = command_line(&os(&["sh", "-c", "OPENAI_API_KEY=S12; python train.py"]));
        assert_eq!(script, "sh -c 'OPENAI_API_KEY=[redacted]; python train.py'");
    }

    #[test]
    fn installed_secrets_and_url_passwords_are_masked() {
        install(["https://hooks.example/services/T1/B2/XYZSECRET".to_string()]);
        let s = text("POST https://hooks.example/services/T1/B2/XYZSECRET failed");
        assert_eq!(s, "POST [redacted] failed");
        assert_eq!(
            text("http://user:pw@am.local:9093/api"),
            "http://[redacted]@am.local:9093/api"
        );
        assert_eq!(format!("{:?}", Secret("x".repeat(10))), "[redacted]");
    }

    #[test]
    fn a_url_outline_keeps_scheme_host_and_port_only() {
        assert_eq!(
            url_outline("https://hooks.slack.com/services/T0/B0/SECRET").as_deref(),
            Some("https://hooks.slack.com/[redacted]")
        );
        assert_eq!(
            url_outline("http://host:99999/x?token=SECRET").as_deref(),
            Some("http://host:99999/[redacted]")
        );
        assert_eq!(
            url_outline("http://h?k=SECRET").as_deref(),
            Some("http://h/[redacted]")
        );
        assert_eq!(
            url_outline(" http://u:pw@am:9093/ ").as_deref(),
            Some("http://[redacted]@am:9093/")
        );
        assert_eq!(url_outline("http://[::1").as_deref(), Some("http://[::1"));
        assert_eq!(url_outline("ftp://x").as_deref(), Some("ftp://x"));
        assert_eq!(url_outline("not a url SECRET"), None);
        assert_eq!(url_outline("hooks.slack.com/services/T0/B0/SECRET"), None);
        assert_eq!(url_outline("://x/SECRET"), None);
    }
}
