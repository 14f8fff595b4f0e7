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
    #[error("invalid amount {0:?}: that is more than $1,000,000,000")]
    MoneyTooLarge(String),
    #[error(
        "invalid duration {0:?}: expected e.g. 90s, 45m, 1h30m, 1h30, 2d, 500ms, \
         5 or 2.5 (seconds), 05:00, 01:30:00 or 1-00:00:00"
    )]
    Duration(String),
    #[error(
        "invalid duration {0:?}: expected MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS \
         (minutes and seconds below 60 after the first field, hours below 24 after D-)"
    )]
    Clock(String),
    #[error("invalid duration {0:?}: must not be negative")]
    NegativeDuration(String),
    #[error("invalid duration {0:?}: that is more than 100 years")]
    DurationTooLong(String),
    #[error("invalid size {0:?}: expected e.g. 16GiB, 512MiB, 20G or 80%")]
    Size(String),
    #[error("invalid size {0:?}: that is more than 1 EiB")]
    SizeTooLarge(String),
    #[error("invalid percentage {0:?}: expected a number from 0 to 100, e.g. 5 or 5%")]
    Percent(String),
    #[error("invalid signal {0:?}: expected a name such as USR1, SIGTERM or a number")]
    Signal(String),
}

/// The largest dollar amount accepted: a billion dollars is a typo, not a budget.
pub const MAX_MONEY: f64 = 1e9;

/// The longest duration accepted: 100 years of 365.25 days (humantime's `y`). Longer is a
/// typo, and deadlines past it would overflow the clocks they are added to.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// The largest size accepted: 1 EiB.
pub const MAX_SIZE: u64 = 1 << 60;

/// Parses a dollar amount: `40`, `40.50`, `$40`, `0.01`. Rejects negatives, NaN, infinities
/// and amounts over [`MAX_MONEY`].
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
    // Only digits and one '.' got here: an infinite value is a huge one.
    if !value.is_finite() {
        return Err(UnitError::MoneyTooLarge(input.to_string()));
    }
    if negative && value != 0.0 {
        return Err(UnitError::NegativeMoney(input.to_string()));
    }
    if value > MAX_MONEY {
        return Err(UnitError::MoneyTooLarge(input.to_string()));
    }
    Ok(value)
}

/// Parses a duration. Accepted forms:
///
/// - units, as humantime reads them: `90s`, `45m`, `1h30m`, `2d`, `500ms`, `1.5h`, `1h 30m`;
/// - a trailing bare number after hours is minutes, after minutes seconds: `1h30`, `2m30`;
/// - a bare number is seconds, as coreutils `timeout` reads it: `5`, `2.5`, `.5`. (Slurm's
///   `--time` reads a bare number as minutes; here it is seconds, like `timeout 5`.);
/// - Slurm's `--time` clock forms: `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`
///   (`05:00`, `01:30:00`, `1-00:00:00`); fields after the first must be below 60 (hours
///   after `D-` below 24), so `1:60:00` is refused rather than read as 2h.
///
/// Refused with an error naming the value: negatives (`-1s`, `-5`; `-0` is zero, as for
/// money), malformed clock forms (`1:2:3:4`, `1-`, `:30`), and anything over
/// [`MAX_DURATION`] (100 years).
pub fn parse_duration(input: &str) -> Result<Duration, UnitError> {
    let s = input.trim();
    let d = match s.strip_prefix('-') {
        Some(rest) => match parse_unsigned_duration(rest, input) {
            Ok(d) if d.is_zero() => d,
            Ok(_) | Err(UnitError::DurationTooLong(_)) => {
                return Err(UnitError::NegativeDuration(input.to_string()))
            }
            Err(e) => return Err(e),
        },
        None => parse_unsigned_duration(s, input)?,
    };
    if d > MAX_DURATION {
        return Err(UnitError::DurationTooLong(input.to_string()));
    }
    Ok(d)
}

/// A duration without a sign, in any accepted form; `input` is what the error quotes.
fn parse_unsigned_duration(s: &str, input: &str) -> Result<Duration, UnitError> {
    let bad = || UnitError::Duration(input.to_string());
    if s.is_empty() {
        return Err(bad());
    }
    if s.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return bare_seconds(s)
            .ok_or_else(bad)?
            .map_err(|_| too_long(input));
    }
    // A second sign (`--5`) is no clock form.
    if !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_digit() || c == ':' || c == '-')
    {
        return match parse_clock(s) {
            Ok(d) => Ok(d),
            Err(ClockError::TooLong) => Err(too_long(input)),
            Err(ClockError::Malformed) => Err(UnitError::Clock(input.to_string())),
        };
    }
    if s.starts_with(|c: char| !(c.is_ascii_digit() || c == '.')) {
        return Err(bad());
    }
    let spelled = with_trailing_unit(s).ok_or_else(bad)?;
    humantime::parse_duration(&spelled).map_err(|e| match e {
        // Too many digits for humantime: too long, unless it is a precision below 1ns.
        humantime::DurationError::NumberOverflow if !s.contains('.') => too_long(input),
        _ => bad(),
    })
}

fn too_long(input: &str) -> UnitError {
    UnitError::DurationTooLong(input.to_string())
}

/// A bare number of seconds (`5`, `2.5`, `.5`, `5.`), read exactly to the nanosecond (further
/// digits are dropped). None when it is not a number; Some(Err) when the seconds overflow.
fn bare_seconds(s: &str) -> Option<Result<Duration, ()>> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.contains('.') || (int.is_empty() && frac.is_empty()) {
        return None;
    }
    let secs = match int {
        "" => 0,
        _ => match int.parse::<u64>() {
            Ok(n) => n,
            Err(_) => return Some(Err(())),
        },
    };
    let nanos = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(9)
        .fold(0u32, |n, b| n * 10 + u32::from(b - b'0'));
    Some(Ok(Duration::new(secs, nanos)))
}

enum ClockError {
    Malformed,
    TooLong,
}

/// Slurm's `--time` clock forms: `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`.
fn parse_clock(s: &str) -> Result<Duration, ClockError> {
    let field = |f: &str| -> Result<u64, ClockError> {
        if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ClockError::Malformed);
        }
        f.parse().map_err(|_| ClockError::TooLong)
    };
    let (days, clock) = match s.split_once('-') {
        Some((d, rest)) => (Some(field(d)?), rest),
        None => (None, s),
    };
    let fields = clock.split(':').map(field).collect::<Result<Vec<_>, _>>()?;
    let (d, h, m, sec) = match (days, fields.as_slice()) {
        (None, [m, s]) => (0, 0, *m, *s),
        (None, [h, m, s]) => (0, *h, *m, *s),
        (Some(d), [h]) => (d, *h, 0, 0),
        (Some(d), [h, m]) => (d, *h, *m, 0),
        (Some(d), [h, m, s]) => (d, *h, *m, *s),
        _ => return Err(ClockError::Malformed),
    };
    // The first field may be as large as it likes (`90:00` is 90 minutes); the others are
    // positions on a clock.
    let minutes_bounded = days.is_some() || fields.len() == 3;
    if sec >= 60 || (minutes_bounded && m >= 60) || (days.is_some() && h >= 24) {
        return Err(ClockError::Malformed);
    }
    d.checked_mul(86_400)
        .and_then(|t| t.checked_add(h.checked_mul(3600)?))
        .and_then(|t| t.checked_add(m.checked_mul(60)?))
        .and_then(|t| t.checked_add(sec))
        .map(Duration::from_secs)
        .ok_or(ClockError::TooLong)
}

/// `1h30` → `1h30m`, `2m30` → `2m30s`: a trailing bare number after hours is minutes, after
/// minutes seconds. Other text is returned as it is; None when a trailing number follows
/// any other unit (`1d12`, `500ms3`), which would be a guess.
fn with_trailing_unit(s: &str) -> Option<String> {
    let head = s.trim_end_matches(|c: char| c.is_ascii_digit());
    if head.len() == s.len() {
        return Some(s.to_string());
    }
    let unit = head
        .trim_end()
        .rsplit(|c: char| !c.is_alphabetic())
        .next()
        .unwrap_or("");
    match unit {
        "h" | "hr" | "hrs" | "hour" | "hours" => Some(format!("{s}m")),
        "m" | "min" | "mins" | "minute" | "minutes" => Some(format!("{s}s")),
        _ => None,
    }
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
/// `GB`, `TB` decimal. Sizes over [`MAX_SIZE`] (1 EiB) are refused.
pub fn parse_size(input: &str) -> Result<u64, UnitError> {
    let err = || UnitError::Size(input.to_string());
    let too_large = || UnitError::SizeTooLarge(input.to_string());
    let s = input.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() || num.chars().filter(|c| *c == '.').count() > 1 || num == "." {
        return Err(err());
    }
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "ki" | "kib" => 1 << 10,
        "m" | "mi" | "mib" => 1 << 20,
        "g" | "gi" | "gib" => 1 << 30,
        "t" | "ti" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(err()),
    };
    // Whole numbers exactly (a float would round 2^60 + 1 down to 2^60); fractions in f64.
    if !num.contains('.') {
        return match num.parse::<u64>().ok().and_then(|n| n.checked_mul(mult)) {
            Some(b) if b <= MAX_SIZE => Ok(b),
            _ => Err(too_large()),
        };
    }
    let bytes = num.parse::<f64>().map_err(|_| err())? * mult as f64;
    // Only digits and one '.' got here: never NaN; an infinite value is a huge one.
    if bytes > MAX_SIZE as f64 {
        return Err(too_large());
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
    fn money_up_to_a_billion() {
        assert_eq!(parse_money("1000000000"), Ok(1e9));
        assert_eq!(parse_money("$999999999.99"), Ok(999_999_999.99));
        for big in ["1000000000.01", "$1000000001", &"9".repeat(400)] {
            assert_eq!(
                parse_money(big).map_err(|e| e.to_string()),
                Err(format!(
                    "invalid amount {big:?}: that is more than $1,000,000,000"
                ))
            );
        }
    }

    fn secs(n: u64) -> Result<Duration, UnitError> {
        Ok(Duration::from_secs(n))
    }

    fn err_text(input: &str) -> String {
        parse_duration(input)
            .expect_err(&format!("{input:?} accepted"))
            .to_string()
    }

    #[test]
    fn duration_units() {
        assert_eq!(parse_duration("90s"), secs(90));
        assert_eq!(parse_duration("45m"), secs(2700));
        assert_eq!(parse_duration("1h30m"), secs(5400));
        assert_eq!(parse_duration("1h 30m"), secs(5400));
        assert_eq!(parse_duration("2d"), secs(172_800));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5h"), secs(5400));
        assert_eq!(parse_duration(" 10m "), secs(600));
    }

    #[test]
    fn duration_bare_integer_is_seconds() {
        assert_eq!(parse_duration("5"), secs(5));
        assert_eq!(parse_duration("0"), secs(0));
        assert_eq!(parse_duration("3600"), secs(3600));
    }

    #[test]
    fn duration_bare_fraction_is_seconds() {
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration(".5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5."), secs(5));
        assert_eq!(parse_duration("0.1"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("0.000000001"), Ok(Duration::from_nanos(1)));
        // Past nanoseconds the digits are dropped, never rounded into a panic.
        assert_eq!(parse_duration("1.0000000019"), Ok(Duration::new(1, 1)));
    }

    #[test]
    fn duration_minutes_colon_seconds() {
        assert_eq!(parse_duration("05:00"), secs(300));
        assert_eq!(parse_duration("1:30"), secs(90));
        // The first field is not a clock position: 90 minutes.
        assert_eq!(parse_duration("90:00"), secs(5400));
    }

    #[test]
    fn duration_hours_minutes_seconds() {
        assert_eq!(parse_duration("01:30:00"), secs(5400));
        assert_eq!(parse_duration("0:00:01"), secs(1));
        assert_eq!(parse_duration("00:00:01"), secs(1));
        assert_eq!(parse_duration("100:00:00"), secs(360_000));
    }

    #[test]
    fn duration_days_hours() {
        assert_eq!(parse_duration("2-12"), secs(2 * 86_400 + 12 * 3600));
    }

    #[test]
    fn duration_days_hours_minutes() {
        assert_eq!(parse_duration("1-02:30"), secs(86_400 + 2 * 3600 + 30 * 60));
    }

    #[test]
    fn duration_days_hours_minutes_seconds() {
        assert_eq!(parse_duration("1-00:00:00"), secs(86_400));
        assert_eq!(parse_duration("0-00:00:01"), secs(1));
        assert_eq!(parse_duration("3-23:59:59"), secs(4 * 86_400 - 1));
    }

    #[test]
    fn duration_trailing_minutes_after_hours() {
        assert_eq!(parse_duration("1h30"), secs(5400));
        assert_eq!(parse_duration("1h 30"), secs(5400));
        assert_eq!(parse_duration("2hours5"), secs(7500));
    }

    #[test]
    fn duration_trailing_seconds_after_minutes() {
        assert_eq!(parse_duration("2m30"), secs(150));
        assert_eq!(parse_duration("1h2m3"), secs(3723));
        assert_eq!(parse_duration("2min30"), secs(150));
    }

    #[test]
    fn duration_trailing_number_after_other_units_is_refused() {
        for bad in ["1d12", "500ms3", "30s5", "1M30"] {
            assert_eq!(
                err_text(bad),
                format!(
                    "invalid duration {bad:?}: expected e.g. 90s, 45m, 1h30m, 1h30, 2d, 500ms, \
                     5 or 2.5 (seconds), 05:00, 01:30:00 or 1-00:00:00"
                )
            );
        }
    }

    #[test]
    fn duration_negative_seconds_refused() {
        assert_eq!(
            err_text("-1s"),
            "invalid duration \"-1s\": must not be negative"
        );
    }

    #[test]
    fn duration_negative_bare_number_refused() {
        assert_eq!(
            err_text("-5"),
            "invalid duration \"-5\": must not be negative"
        );
        assert_eq!(
            err_text(" -2.5 "),
            "invalid duration \" -2.5 \": must not be negative"
        );
    }

    #[test]
    fn duration_negative_clock_refused() {
        assert_eq!(
            err_text("-01:00:00"),
            "invalid duration \"-01:00:00\": must not be negative"
        );
        assert_eq!(
            parse_duration("-1-00:00:00"),
            Err(UnitError::NegativeDuration("-1-00:00:00".into()))
        );
    }

    #[test]
    fn duration_negative_and_huge_says_negative() {
        assert_eq!(
            parse_duration("-9223372036854775807s"),
            Err(UnitError::NegativeDuration("-9223372036854775807s".into()))
        );
    }

    #[test]
    fn duration_negative_zero_is_zero() {
        assert_eq!(parse_duration("-0"), secs(0));
        assert_eq!(parse_duration("-0s"), secs(0));
    }

    #[test]
    fn duration_doubled_sign_refused_as_malformed() {
        for bad in ["--5", "-", "- 5", "+5s", "--1:00"] {
            assert_eq!(parse_duration(bad), Err(UnitError::Duration(bad.into())));
        }
    }

    fn clock_err(input: &str) -> String {
        format!(
            "invalid duration {input:?}: expected MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS \
             (minutes and seconds below 60 after the first field, hours below 24 after D-)"
        )
    }

    #[test]
    fn duration_four_clock_fields_refused() {
        assert_eq!(err_text("1:2:3:4"), clock_err("1:2:3:4"));
        assert_eq!(err_text("1-2:3:4:5"), clock_err("1-2:3:4:5"));
    }

    #[test]
    fn duration_days_without_hours_refused() {
        assert_eq!(err_text("1-"), clock_err("1-"));
    }

    #[test]
    fn duration_empty_clock_field_refused() {
        for bad in [":30", "30:", "1::00", "-1", "1-:30", "1--2", "1-2-3", ":"] {
            if bad == "-1" {
                // A leading dash is a sign, not a day count.
                assert_eq!(
                    err_text(bad),
                    "invalid duration \"-1\": must not be negative"
                );
                continue;
            }
            assert_eq!(err_text(bad), clock_err(bad), "{bad:?}");
        }
    }

    #[test]
    fn duration_single_field_with_colon_refused() {
        assert_eq!(err_text("5:"), clock_err("5:"));
    }

    #[test]
    fn duration_minutes_of_sixty_refused() {
        assert_eq!(err_text("1:60:00"), clock_err("1:60:00"));
        assert_eq!(err_text("1-00:60"), clock_err("1-00:60"));
    }

    #[test]
    fn duration_seconds_of_sixty_refused() {
        assert_eq!(err_text("10:60"), clock_err("10:60"));
        assert_eq!(err_text("0:00:60"), clock_err("0:00:60"));
        assert_eq!(err_text("1-00:00:60"), clock_err("1-00:00:60"));
    }

    #[test]
    fn duration_hours_of_a_day_refused_after_days() {
        assert_eq!(err_text("1-24"), clock_err("1-24"));
        assert_eq!(err_text("1-24:00:00"), clock_err("1-24:00:00"));
        assert_eq!(parse_duration("1-23"), secs(86_400 + 23 * 3600));
    }

    #[test]
    fn duration_clock_with_fraction_refused() {
        // A '.' is not a clock character: the general message, which lists every form.
        assert_eq!(
            parse_duration("00:00:01.5"),
            Err(UnitError::Duration("00:00:01.5".into()))
        );
    }

    #[test]
    fn duration_malformed_refused() {
        for bad in [
            "10x",
            "",
            "  ",
            "h",
            "5 parsecs",
            ".",
            "1.2.3",
            "1e9",
            "nan",
            "inf",
            "1 30",
        ] {
            assert_eq!(
                parse_duration(bad),
                Err(UnitError::Duration(bad.into())),
                "{bad:?}"
            );
        }
        let msg = err_text("10x");
        assert!(msg.contains("\"10x\""), "{msg}");
    }

    fn too_long(input: &str) -> String {
        format!("invalid duration {input:?}: that is more than 100 years")
    }

    #[test]
    fn duration_of_100_years_accepted() {
        assert_eq!(parse_duration("100y"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("36525d"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("3155760000"), Ok(MAX_DURATION));
    }

    #[test]
    fn duration_over_100_years_refused_in_units() {
        assert_eq!(
            err_text("9223372036854775807s"),
            too_long("9223372036854775807s")
        );
        assert_eq!(err_text("36526d"), too_long("36526d"));
        assert_eq!(err_text("101y"), too_long("101y"));
        // More digits than humantime holds.
        assert_eq!(
            err_text("99999999999999999999999s"),
            too_long("99999999999999999999999s")
        );
    }

    #[test]
    fn duration_over_100_years_refused_bare() {
        assert_eq!(err_text("3155760001"), too_long("3155760001"));
        assert_eq!(err_text("3155760000.5"), too_long("3155760000.5"));
        assert_eq!(
            err_text("18446744073709551616"),
            too_long("18446744073709551616")
        );
    }

    #[test]
    fn duration_over_100_years_refused_on_the_clock() {
        assert_eq!(err_text("36526-00"), too_long("36526-00"));
        assert_eq!(err_text("876601:00:00"), too_long("876601:00:00"));
        assert_eq!(
            err_text("99999999999999999999-00"),
            too_long("99999999999999999999-00")
        );
        assert_eq!(
            err_text("18446744073709551615-00:00:00"),
            too_long("18446744073709551615-00:00:00")
        );
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
    fn sizes_up_to_an_exbibyte() {
        assert_eq!(parse_size("1048576T"), Ok(MAX_SIZE));
        assert_eq!(parse_size(&MAX_SIZE.to_string()), Ok(MAX_SIZE));
        assert_eq!(parse_size("0.5KiB"), Ok(512));
        assert_eq!(parse_size("1e3000"), Err(UnitError::Size("1e3000".into())));
        for big in [
            "1048577T",
            "1048576.5TiB",
            "1152921504606846977",
            "18446744073709551616",
        ] {
            assert_eq!(
                parse_size(big).map_err(|e| e.to_string()),
                Err(format!("invalid size {big:?}: that is more than 1 EiB"))
            );
        }
        assert_eq!(
            parse_mem_limit("2000000TiB"),
            Err(UnitError::SizeTooLarge("2000000TiB".into()))
        );
        assert_eq!(
            parse_size(&"9".repeat(400)),
            Err(UnitError::SizeTooLarge("9".repeat(400)))
        );
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
