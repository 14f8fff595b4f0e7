//! Parsing and printing of the values users type: money, durations, sizes, percentages, signals.
//!
//! Every parser returns a [`UnitError`] that quotes the bad input, and none of them panics on
//! any input (see the property tests in `tests/units_props.rs`).

use std::time::Duration;

use nix::sys::signal::Signal;

/// A bad value typed by a user; the message names the value and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("invalid amount {0:?}: expected dollars such as 40, 40.50 or $40")]
    Money(String),
    #[error("invalid amount {0:?}: must not be negative")]
    NegativeMoney(String),
    #[error("invalid duration {0:?}: expected e.g. 90s, 45m, 1h30m, 2d or 500ms")]
    Duration(String),
    #[error("invalid size {0:?}: expected e.g. 16GiB, 512MiB, 20G or 80%")]
    Size(String),
    #[error("invalid percentage {0:?}: expected a number from 0 to 100, e.g. 5 or 5%")]
    Percent(String),
    #[error("invalid signal {0:?}: expected a name such as USR1, SIGTERM or a number")]
    Signal(String),
}

/// Parses a dollar amount: `40`, `40.50`, `$40`, `0.01`. Rejects negatives, NaN and infinities.
pub fn parse_money(input: &str) -> Result<f64, UnitError> {
    let s = input.trim();
    let body = s.strip_prefix('$').unwrap_or(s).trim();
    let (negative, digits) = match body.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, body),
    };
    let digits = digits.strip_prefix('$').unwrap_or(digits);
    let valid = !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits.chars().filter(|c| *c == '.').count() <= 1
        && digits.chars().any(|c| c.is_ascii_digit());
    if !valid {
        return Err(UnitError::Money(input.to_string()));
    }
    let value: f64 = digits
        .parse()
        .map_err(|_| UnitError::Money(input.to_string()))?;
    if !value.is_finite() {
        return Err(UnitError::Money(input.to_string()));
    }
    if negative && value != 0.0 {
        return Err(UnitError::NegativeMoney(input.to_string()));
    }
    Ok(value)
}

/// Parses a duration such as `90s`, `45m`, `1h30m`, `2d`, `500ms`, `1h 30m`.
/// A bare number is refused: `10` could be seconds or minutes, and guessing costs money.
pub fn parse_duration(input: &str) -> Result<Duration, UnitError> {
    let s = input.trim();
    if s.is_empty() || s.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(UnitError::Duration(input.to_string()));
    }
    humantime::parse_duration(s).map_err(|_| UnitError::Duration(input.to_string()))
}

/// Prints a duration compactly and exactly enough for a summary line: `0.503s`, `4m05s`,
/// `1h30m00s`, `2d03h00m`.
pub fn format_duration(d: Duration) -> String {
    let total = d.as_secs();
    let (days, hours, mins, secs) = (
        total / 86_400,
        (total % 86_400) / 3600,
        (total % 3600) / 60,
        total % 60,
    );
    if days > 0 {
        format!("{days}d{hours:02}h{mins:02}m")
    } else if hours > 0 {
        format!("{hours}h{mins:02}m{secs:02}s")
    } else if mins > 0 {
        format!("{mins}m{secs:02}s")
    } else {
        format!("{}.{:03}s", secs, d.subsec_millis())
    }
}

/// `format_duration` of a number of seconds (negative or non-finite counts as zero).
pub fn format_secs(secs: f64) -> String {
    let s = if secs.is_finite() { secs.max(0.0) } else { 0.0 };
    format_duration(Duration::from_secs_f64(s.min(1e15)))
}

/// Prints dollars with cents, or with four decimals below one dollar so small spends show.
pub fn format_money(dollars: f64) -> String {
    if !dollars.is_finite() {
        return "unknown".to_string();
    }
    if dollars.abs() >= 1.0 {
        format!("${dollars:.2}")
    } else {
        format!("${dollars:.4}")
    }
}

/// A memory ceiling: an absolute number of bytes or a share of each GPU's total memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MemLimit {
    Bytes(u64),
    Percent(f64),
}

impl MemLimit {
    /// The ceiling in bytes against a device whose total is `total` (when known).
    pub fn bytes_of(&self, total: Option<u64>) -> Option<u64> {
        match *self {
            MemLimit::Bytes(b) => Some(b),
            MemLimit::Percent(p) => total.map(|t| (t as f64 * p / 100.0) as u64),
        }
    }
}

impl std::fmt::Display for MemLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemLimit::Bytes(b) => f.write_str(&format_bytes(*b)),
            MemLimit::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Parses `16GiB`, `512MiB`, `20G` (binary), `20GB` (decimal), `1048576` (bytes) or `80%`.
pub fn parse_mem_limit(input: &str) -> Result<MemLimit, UnitError> {
    let s = input.trim();
    if let Some(p) = s.strip_suffix('%') {
        return parse_percent(p)
            .map(MemLimit::Percent)
            .map_err(|_| UnitError::Size(input.to_string()));
    }
    parse_size(s).map(MemLimit::Bytes)
}

/// Parses a size in bytes; `K`, `M`, `G`, `T` and the `Ki`/`KiB` forms are binary, `KB`, `MB`,
/// `GB`, `TB` decimal.
pub fn parse_size(input: &str) -> Result<u64, UnitError> {
    let err = || UnitError::Size(input.to_string());
    let s = input.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() || num.chars().filter(|c| *c == '.').count() > 1 || num == "." {
        return Err(err());
    }
    let value: f64 = num.parse().map_err(|_| err())?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "ki" | "kib" => 1024.0,
        "m" | "mi" | "mib" => 1024.0 * 1024.0,
        "g" | "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "ti" | "tib" => 1024.0_f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => return Err(err()),
    };
    let bytes = value * mult;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(err());
    }
    Ok(bytes as u64)
}

/// Prints bytes in binary units: `1.5GiB`.
pub fn format_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[i])
    }
}

/// Parses `5`, `5%` or `12.5` as a percentage in 0..=100.
pub fn parse_percent(input: &str) -> Result<f64, UnitError> {
    let s = input.trim();
    let s = s.strip_suffix('%').unwrap_or(s).trim();
    let ok = !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == '.');
    let v: f64 = if ok { s.parse().ok() } else { None }
        .ok_or_else(|| UnitError::Percent(input.to_string()))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(UnitError::Percent(input.to_string()));
    }
    Ok(v)
}

/// Parses a signal by name (`USR1`, `SIGUSR1`, `usr1`) or number (`10`).
pub fn parse_signal(input: &str) -> Result<Signal, UnitError> {
    let err = || UnitError::Signal(input.to_string());
    let s = input.trim();
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| err());
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>().map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_forms() {
        assert_eq!(parse_money("40"), Ok(40.0));
        assert_eq!(parse_money("40.50"), Ok(40.5));
        assert_eq!(parse_money("$40"), Ok(40.0));
        assert_eq!(parse_money(" $0.01 "), Ok(0.01));
        assert!(matches!(
            parse_money("-1"),
            Err(UnitError::NegativeMoney(_))
        ));
        assert!(matches!(
            parse_money("-$1"),
            Err(UnitError::NegativeMoney(_))
        ));
        for bad in ["", "$", "abc", "1e9", "NaN", "inf", "4.0.1", "40x", "."] {
            assert!(parse_money(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("45m"), Ok(Duration::from_secs(2700)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        for bad in ["10x", "", "10", "h", "-5s", "5 parsecs"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        let msg = parse_duration("10x").unwrap_err().to_string();
        assert!(msg.contains("\"10x\""), "{msg}");
    }

    #[test]
    fn printing() {
        assert_eq!(format_duration(Duration::from_millis(503)), "0.503s");
        assert_eq!(format_duration(Duration::from_secs(245)), "4m05s");
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m00s");
        assert_eq!(format_money(40.0), "$40.00");
        assert_eq!(format_money(0.0123), "$0.0123");
        assert_eq!(format_bytes(3 * 1024 * 1024 * 1024 / 2), "1.5GiB");
    }

    #[test]
    fn sizes_and_percent() {
        assert_eq!(parse_size("16GiB"), Ok(16 << 30));
        assert_eq!(parse_size("20G"), Ok(20 << 30));
        assert_eq!(parse_size("20GB"), Ok(20_000_000_000));
        assert_eq!(parse_mem_limit("80%"), Ok(MemLimit::Percent(80.0)));
        assert!(parse_mem_limit("180%").is_err());
        assert!(parse_size("12XB").is_err());
        assert_eq!(parse_percent("5%"), Ok(5.0));
        assert!(parse_percent("-1").is_err());
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("USR1"), Ok(Signal::SIGUSR1));
        assert_eq!(parse_signal("sigterm"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("2"), Ok(Signal::SIGINT));
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("999").is_err());
    }
}
