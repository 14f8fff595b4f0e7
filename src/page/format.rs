//! How the page writes a value; `page.js` writes it the same way when it refreshes one.

use serde_json::Value;

/// The value at `path` ("gpus.0.util_gpu_pct") in `doc`; null when absent.
pub(super) fn get<'a>(doc: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(doc, |v, k| match k.parse::<usize>() {
        Ok(i) if v.is_array() => &v[i],
        _ => &v[k],
    })
}

/// `v` rounded half up to `d` decimals, as the page's script does it (`Math.floor(v*m+0.5)`).
fn fixed(v: f64, d: usize) -> String {
    let m = 10f64.powi(d as i32);
    format!("{:.*}", d, (v * m + 0.5).floor() / m)
}

pub(super) fn dur(v: f64) -> String {
    let t = v.max(0.0).floor() as u64;
    let (d, h, m, s) = (t / 86_400, t % 86_400 / 3600, t % 3600 / 60, t % 60);
    if d > 0 {
        format!("{d}d{h:02}h{m:02}m")
    } else if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// A value as the page shows it. `kind` names one of the script's formats (kept in step
/// with `F` in `page.js`; the browser test compares the two renderings).
pub fn fmt(kind: &str, v: &Value) -> String {
    let text = || match v {
        Value::String(s) => s.clone(),
        Value::Null => "—".into(),
        other => other.to_string(),
    };
    if kind == "limit" && v.is_null() {
        return "off".into();
    }
    if kind == "limit_bytes" {
        return if v.is_null() {
            "off".into()
        } else {
            fmt("bytes", v)
        };
    }
    if (kind == "detail" || kind == "at") && v.is_null() {
        return String::new();
    }
    if kind == "count" {
        return v.as_u64().unwrap_or(0).to_string();
    }
    if let Some(s) = v.as_str() {
        return match kind {
            "clock" => s.get(11..16).map_or(s.to_string(), |c| format!("{c} UTC")),
            "at" => s
                .get(11..16)
                .map_or(s.to_string(), |c| format!("at {c} UTC")),
            "time" => s.get(11..19).unwrap_or(s).to_string(),
            _ => s.to_string(),
        };
    }
    let Some(x) = v.as_f64() else {
        return text();
    };
    match kind {
        "money" if x.abs() >= 1.0 => format!("${}", fixed(x, 2)),
        "money" => format!("${}", fixed(x, 4)),
        "rate" => format!("{}/h", fmt("money", v)),
        "dur" | "limit" => dur(x),
        "pct" => format!("{}%", fixed(x, 0)),
        "bytes" if x >= 1073741824.0 => format!("{} GiB", fixed(x / 1073741824.0, 1)),
        "bytes" => format!("{} MiB", fixed(x / 1048576.0, 0)),
        "watts" => format!("{} W", fixed(x, 0)),
        "celsius" => format!("{} °C", fixed(x, 0)),
        _ => text(),
    }
}

pub(super) use crate::timeline::esc;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn formats_read_as_a_person_reads_them() {
        assert_eq!(fmt("money", &json!(12.345)), "$12.35");
        assert_eq!(fmt("money", &json!(0.00125)), "$0.0013");
        assert_eq!(fmt("rate", &json!(3.5)), "$3.50/h");
        assert_eq!(fmt("money", &Value::Null), "—");
        assert_eq!(fmt("dur", &json!(3725.9)), "1h02m05s");
        assert_eq!(fmt("dur", &json!(42.7)), "42s");
        assert_eq!(fmt("limit", &Value::Null), "off");
        assert_eq!(fmt("pct", &json!(62.5)), "63%");
        assert_eq!(fmt("bytes", &json!(17179869184u64)), "16.0 GiB");
        assert_eq!(fmt("bytes", &json!(52428800)), "50 MiB");
        assert_eq!(
            fmt("clock", &json!("2026-11-25T14:05:09.120Z")),
            "14:05 UTC"
        );
        assert_eq!(fmt("time", &json!("2026-11-25T14:05:09.120Z")), "14:05:09");
        assert_eq!(fmt("count", &Value::Null), "0");
        assert_eq!(
            fmt("at", &json!("2026-11-25T14:05:09.120Z")),
            "at 14:05 UTC"
        );
        assert_eq!(fmt("at", &Value::Null), "");
        assert_eq!(fmt("limit_bytes", &Value::Null), "off");
    }
}
