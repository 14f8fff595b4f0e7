//! `/` — the run at a glance, served by costguard itself. Server-rendered from the same two
//! documents the endpoint serves (`/status` and `/series`), so it shows nothing they do not
//! (no URL, token or environment reaches either) and reads as plain tables without
//! JavaScript or CSS. Every byte comes from here: no CDN, no web font, no external request.
//! A small script polls `/status` every 2 s and rewrites the numbers in place (each carries
//! `data-k`, its path in the document, and `data-f`, its format, which the script applies
//! the way [`fmt`] does); the charts, phases and events are re-fetched from `/` when an event
//! arrives and every 10 s. Without JavaScript the page refreshes itself every 10 s. Every
//! link and request is relative, so the page also works behind a path prefix (`kubectl proxy`,
//! an ingress).

use std::fmt::Write;

use serde_json::Value;

use crate::series::Series;

/// The value at `path` ("gpus.0.util_gpu_pct") in `doc`; null when absent.
fn get<'a>(doc: &'a Value, path: &str) -> &'a Value {
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

fn dur(v: f64) -> String {
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
/// with `F` in [`SCRIPT`]; the browser test compares the two renderings).
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

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A live value: `<span data-k=path data-f=kind>formatted</span>`.
fn val(doc: &Value, path: &str, kind: &str) -> String {
    format!(
        r#"<span data-k="{path}" data-f="{kind}">{}</span>"#,
        esc(&fmt(kind, get(doc, path)))
    )
}

/// How full `num` is of `den`, percent (None without a ceiling).
fn share(doc: &Value, num: &str, den: &str) -> Option<f64> {
    let (n, d) = (get(doc, num).as_f64()?, get(doc, den).as_f64()?);
    (d > 0.0).then(|| (n / d * 100.0).clamp(0.0, 100.0))
}

/// A bar of `num` against `den`: amber past 80 %, red past 95 %.
fn bar(doc: &Value, num: &str, den: &str) -> String {
    let (w, class) = match share(doc, num, den) {
        Some(p) if p >= 95.0 => (p, "bar hot"),
        Some(p) if p >= 80.0 => (p, "bar warm"),
        Some(p) => (p, "bar"),
        None => (0.0, "bar none"),
    };
    format!(r#"<div class="{class}" data-bar="{num}/{den}"><i style="width:{w:.1}%"></i></div>"#)
}

/// A table of label/value rows (what a browser without CSS shows as is).
fn rows(items: &[(&str, String)]) -> String {
    let mut o = String::from("<table class=\"kv\">");
    for (k, v) in items {
        let _ = write!(o, "<tr><th>{k}</th><td>{v}</td></tr>");
    }
    o.push_str("</table>");
    o
}

/// "held of ceiling", or "held (no ceiling: why)" when the run has none.
fn of(d: &Value, held: &str, kind: &str, ceiling: &str, none: &str) -> String {
    if get(d, ceiling).is_null() {
        return format!("{} <small>{none}</small>", val(d, held, kind));
    }
    format!(
        "{} <small>of {}</small>",
        val(d, held, kind),
        val(d, ceiling, kind)
    )
}

fn card(title: &str, big: String, bar: String, table: String) -> String {
    format!(
        r#"<section class="card"><h2>{title}</h2><p class="big">{big}</p>{bar}{table}</section>"#
    )
}

fn cards(d: &Value) -> String {
    let spend = card(
        "Spend",
        of(
            d,
            "spend_dollars",
            "money",
            "budget_dollars",
            "no --max-usd",
        ),
        bar(d, "spend_dollars", "budget_dollars"),
        rows(&[
            ("burn rate", val(d, "rate_dollars_per_hour", "rate")),
            ("budget left", val(d, "budget_remaining_dollars", "money")),
            (
                "dollar ceiling in",
                format!(
                    "{} <small>{}</small>",
                    val(d, "seconds_to_usd_ceiling", "dur"),
                    val(d, "usd_ceiling_at", "at")
                ),
            ),
            (
                "projected at the end",
                val(d, "projection.projected_spend_dollars", "money"),
            ),
            ("spent idle", val(d, "wasted_dollars", "money")),
        ]),
    );
    let wall = card(
        "Wall time",
        of(
            d,
            "elapsed_seconds",
            "dur",
            "limits.max_wall_seconds",
            "no --max-wall",
        ),
        bar(d, "elapsed_seconds", "limits.max_wall_seconds"),
        rows(&[
            (
                "wall ceiling in",
                format!(
                    "{} <small>{}</small>",
                    val(d, "seconds_to_wall_ceiling", "dur"),
                    val(d, "wall_ceiling_at", "at")
                ),
            ),
            ("ETA", val(d, "projection.eta_seconds", "dur")),
            ("whole run", val(d, "run_elapsed_seconds", "dur")),
            ("sessions", val(d, "sessions", "count")),
        ]),
    );
    format!("{spend}{wall}{}", watch_card(d))
}

/// One watchdog's row: how long the condition has held against its threshold, and a bar
/// of how close it is to firing; "off" when the run has no such watchdog.
/// One watchdog's row: how long the condition has held against its threshold, and a bar
/// of how close it is to firing; "off" when the run has no such watchdog.
fn watchdog(d: &Value, label: &str, held: &str, limit: &str, off: &str) -> String {
    if get(d, limit).is_null() {
        return rows(&[(label, format!("off <small>({off})</small>"))]);
    }
    rows(&[(label, of(d, held, "dur", limit, ""))]) + &bar(d, held, limit)
}

fn watch_card(d: &Value) -> String {
    let idle_off = "no --idle";
    let stall_off = "no --stall, or nothing reports progress";
    card(
        "Watchdogs",
        format!("{} <small>kills</small>", val(d, "kills", "count")),
        String::new(),
        watchdog(d, "idle", "idle_seconds", "limits.idle_seconds", idle_off)
            + &watchdog(
                d,
                "no progress",
                "seconds_since_progress",
                "limits.stall_seconds",
                stall_off,
            )
            + &rows(&[
                ("last progress", val(d, "last_progress", "text")),
                ("job memory", val(d, "host.job_rss_bytes", "bytes")),
                (
                    "its ceiling",
                    val(d, "limits.max_host_mem_bytes", "limit_bytes"),
                ),
            ]),
    )
}

/// A chart line: its colour and what it reads from each point.
type Line<'a> = (&'a str, &'a dyn Fn(&crate::series::Point) -> Option<f64>);

/// A small chart of `lines` (values over time) between 0 and `top`.
fn spark(series: &Series, lines: &[Line], top: f64) -> String {
    let (w, h) = (240.0, 44.0);
    let pts = &series.points;
    let (t0, t1) = match (pts.first(), pts.last()) {
        (Some(a), Some(b)) => (a.t, b.t.max(a.t + 1.0)),
        _ => (0.0, 1.0),
    };
    let mut o = format!(
        r##"<svg class="spark" viewBox="0 0 {w} {h}" width="{w}" height="{h}" preserveAspectRatio="none" role="img"><rect width="{w}" height="{h}" fill="#fafafa"/>"##
    );
    for (color, pick) in lines {
        let mut seg = String::new();
        let flush = |seg: &mut String, o: &mut String| {
            if seg.contains(' ') {
                let _ = write!(
                    o,
                    r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.5"/>"#,
                    seg.trim()
                );
            }
            seg.clear();
        };
        for p in pts {
            if p.gap_before {
                flush(&mut seg, &mut o);
            }
            match pick(p) {
                Some(v) => {
                    let x = (p.t - t0) / (t1 - t0) * w;
                    let y = h - 2.0 - (v / top.max(1e-9)).clamp(0.0, 1.0) * (h - 4.0);
                    let _ = write!(seg, "{x:.1},{y:.1} ");
                }
                None => flush(&mut seg, &mut o),
            }
        }
        flush(&mut seg, &mut o);
    }
    o.push_str("</svg>");
    o
}

fn gpus(d: &Value, series: &Series) -> String {
    let mut o = String::from(
        r#"<section class="wide" id="gpus" data-swap><h2>GPUs</h2><div class="gpus">"#,
    );
    let list = d["gpus"].as_array().map_or(&[][..], |v| &v[..]);
    if list.is_empty() {
        let why = d["telemetry_error"].as_str().unwrap_or("no GPU seen yet");
        let _ = write!(o, "<p class=\"muted\">{}</p>", esc(why));
    }
    for (n, g) in list.iter().enumerate() {
        let idx = g["index"].as_u64().unwrap_or(n as u64) as u32;
        let p = |k: &str| format!("gpus.{n}.{k}");
        let util =
            move |pt: &crate::series::Point| pt.gpus.iter().find(|x| x.i == idx).and_then(|x| x.u);
        let mem =
            move |pt: &crate::series::Point| pt.gpus.iter().find(|x| x.i == idx).and_then(|x| x.m);
        let _ = write!(
            o,
            r#"<div class="gpu"><h3>GPU {idx} <small>{}</small></h3>{}{}<p class="legend"><b class="u">utilization</b> <b class="m">memory</b> over the run</p></div>"#,
            esc(g["model"].as_str().unwrap_or("")),
            rows(&[
                ("utilization", val(d, &p("util_gpu_pct"), "pct")),
                (
                    "memory",
                    format!(
                        "{} <small>of {}</small>",
                        val(d, &p("mem_used"), "bytes"),
                        val(d, &p("mem_total"), "bytes")
                    ),
                ),
                ("power", val(d, &p("power_watts"), "watts")),
                ("temperature", val(d, &p("temperature_c"), "celsius")),
            ]),
            spark(series, &[("#2e8b57", &util), ("#8e44ad", &mem)], 100.0),
        );
    }
    let rss_top = series.points.iter().filter_map(|p| p.rss).fold(
        d["limits"]["max_host_mem_bytes"].as_f64().unwrap_or(0.0),
        f64::max,
    );
    let _ = write!(
        o,
        r#"<div class="gpu"><h3>Job host memory</h3>{}{}<p class="legend"><b class="r">resident memory</b> over the run</p></div></div></section>"#,
        rows(&[
            ("resident", val(d, "host.job_rss_bytes", "bytes")),
            ("processes", val(d, "host.job_processes", "count")),
            (
                "machine",
                format!(
                    "{} <small>of {}</small>",
                    val(d, "host.host_mem_used", "bytes"),
                    val(d, "host.host_mem_total", "bytes")
                )
            ),
        ]),
        spark(
            series,
            &[("#1f6feb", &|p: &crate::series::Point| p.rss)],
            rss_top
        ),
    );
    o
}

fn phases(d: &Value) -> String {
    let ph = &d["phases"];
    if ph.is_null() {
        return String::new();
    }
    let (index, total) = (
        ph["index"].as_u64().unwrap_or(0),
        ph["total"].as_u64().unwrap_or(0),
    );
    let done = ph["done"].as_array().map_or(&[][..], |v| &v[..]);
    let mut rows_: Vec<(String, String, f64, f64)> = done
        .iter()
        .map(|r| {
            let why = r["reason"]
                .as_str()
                .map(|w| format!(" ({w})"))
                .unwrap_or_default();
            (
                r["name"].as_str().unwrap_or("?").to_string(),
                format!("{}{why}", r["outcome"].as_str().unwrap_or("?")),
                r["elapsed_seconds"].as_f64().unwrap_or(0.0),
                r["spend_dollars"].as_f64().unwrap_or(0.0),
            )
        })
        .collect();
    let running = d["state"] == "running";
    if running {
        rows_.push((
            ph["name"].as_str().unwrap_or("?").to_string(),
            "running".into(),
            d["elapsed_seconds"].as_f64().unwrap_or(0.0),
            f64::NAN,
        ));
    }
    let longest = rows_.iter().map(|r| r.2).fold(1.0, f64::max);
    let mut o = format!(
        r#"<section class="wide" id="phases" data-swap><h2>Phases <small>{} of {total}</small></h2><table class="list"><tr><th>phase</th><th>outcome</th><th>elapsed</th><th>spend</th><th class="grow"></th></tr>"#,
        (index + 1).min(total.max(1))
    );
    for (name, outcome, secs, usd) in &rows_ {
        let spend = if usd.is_nan() {
            "—".into()
        } else {
            fmt("money", &Value::from(*usd))
        };
        let _ = write!(
            o,
            r#"<tr><td>{}</td><td><span class="state s-{}">{}</span></td><td>{}</td><td>{spend}</td><td class="grow"><div class="bar"><i style="width:{:.1}%"></i></div></td></tr>"#,
            esc(name),
            esc(outcome.split(' ').next().unwrap_or("")),
            esc(outcome),
            dur(*secs),
            secs / longest * 100.0
        );
    }
    let left = total.saturating_sub(rows_.len() as u64);
    if left > 0 {
        let _ = write!(
            o,
            r#"<tr><td colspan="5" class="muted">{left} more to run</td></tr>"#
        );
    }
    o.push_str("</table></section>");
    o
}

fn events(d: &Value) -> String {
    let mut o = String::from(
        r#"<section class="wide" id="events" data-swap><h2>Recent events</h2><table class="list"><tr><th>time</th><th>event</th><th>message</th></tr>"#,
    );
    for e in d["recent_events"].as_array().map_or(&[][..], |v| &v[..]) {
        let kind = e["kind"].as_str().unwrap_or("?");
        let reason = e["reason"]
            .as_str()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        let _ = write!(
            o,
            r#"<tr><td>{}</td><td><span class="state s-{}">{}{}</span></td><td>{}</td></tr>"#,
            fmt("time", &e["at"]),
            esc(kind),
            esc(kind),
            esc(&reason),
            esc(e["message"].as_str().unwrap_or(""))
        );
    }
    o.push_str("</table></section>");
    o
}

/// The live timeline picture (the report's, drawn from the series and its marks).
pub fn timeline(d: &Value, series: &Series) -> String {
    let title = format!(
        "costguard run {}: {}",
        d["run_id"].as_str().unwrap_or("?"),
        d["state"].as_str().unwrap_or("?")
    );
    crate::timeline::render(series, &series.marks, d["budget_dollars"].as_f64(), &title)
}

/// The whole page for the status document `d` and the series.
pub fn render(d: &Value, series: &Series) -> String {
    let svg = timeline(d, series);
    let svg = svg.find("<svg").map_or(&svg[..], |at| &svg[at..]);
    let state = d["state"].as_str().unwrap_or("starting");
    let badge = format!(
        r#"<span class="state s-{s}" data-k="state" data-f="state">{s}</span>"#,
        s = esc(state)
    );
    let ending = format!(
        r#"<span class="ending s-{}" data-k="outcome_detail" data-f="detail">{}</span>"#,
        esc(state),
        esc(&fmt("detail", &d["outcome_detail"]))
    );
    let mut o = String::with_capacity(32 << 10);
    let _ = write!(
        o,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>costguard · {run}</title>
<noscript><meta http-equiv="refresh" content="10"></noscript>
<style>{CSS}</style></head>
<body><header><p class="brand">costguard</p><h1>{run} {}</h1>
<p class="sub"><code>{}</code> on {} · started {} · <span class="wait">next: {}</span></p>
<p class="detail">{}</p><p id="stale" hidden>costguard is not answering; the numbers below are from {}</p></header>
<main><div class="cards">{}</div>
<section class="wide" id="timeline" data-swap><h2>Timeline</h2><div class="scroll">{svg}</div></section>
{}{}{}</main>
<footer>read-only · <a href="status">/status</a> · <a href="series">/series</a> · <a href="metrics">/metrics</a> · <a href="timeline.svg">/timeline.svg</a> · updated {}</footer>
<script>{SCRIPT}</script></body></html>
"#,
        badge,
        esc(d["command"].as_str().unwrap_or("")),
        esc(d["hostname"].as_str().unwrap_or("")),
        fmt("clock", &d["started_at"]),
        val(d, "waiting_on", "text"),
        ending,
        val(d, "updated_at", "time"),
        cards(d),
        gpus(d, series),
        phases(d),
        events(d),
        val(d, "updated_at", "time"),
        run = esc(d["run_id"].as_str().unwrap_or("?")),
    );
    o
}

const CSS: &str = r#"
:root{color-scheme:light;--ink:#1d2430;--muted:#6b7380;--line:#e3e6ea;--blue:#1f6feb;--red:#c0392b;--amber:#d68910}
*{box-sizing:border-box}body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--ink);background:#f6f7f9}
header{padding:14px 16px 6px;background:#fff;border-bottom:1px solid var(--line)}
.brand{margin:0;font-size:12px;letter-spacing:.08em;text-transform:uppercase;color:var(--muted)}
h1{margin:2px 0 4px;font-size:20px;word-break:break-all}h2{margin:0 0 8px;font-size:13px;text-transform:uppercase;letter-spacing:.06em;color:var(--muted)}
h3{margin:0 0 6px;font-size:15px}.sub,.detail{margin:2px 0;color:var(--muted);font-size:13px;overflow-wrap:anywhere}
.wait{color:var(--ink)}code{font-size:12px}
main{padding:12px;display:grid;gap:12px;max-width:1100px;margin:0 auto}
.cards{display:grid;gap:12px;grid-template-columns:repeat(auto-fit,minmax(260px,1fr))}
.card,.wide{background:#fff;border:1px solid var(--line);border-radius:8px;padding:12px 14px;min-width:0}
.big{margin:0 0 8px;font-size:28px;font-weight:600;font-variant-numeric:tabular-nums}.big small{font-size:15px;font-weight:400;color:var(--muted)}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
.kv th{text-align:left;font-weight:400;color:var(--muted);padding:2px 8px 2px 0;white-space:nowrap}.kv td{text-align:right;padding:2px 0}
.list th{text-align:left;font-weight:400;color:var(--muted);border-bottom:1px solid var(--line);padding:4px 6px}
.list td{padding:4px 6px;border-bottom:1px solid #f0f1f3;vertical-align:top;overflow-wrap:anywhere}
.grow{width:35%}
.bar{height:8px;background:#edf0f3;border-radius:4px;overflow:hidden;margin:4px 0 8px}.bar i{display:block;height:100%;background:var(--blue)}
.bar.warm i{background:var(--amber)}.bar.hot i{background:var(--red)}.bar.none i{width:0!important}
.state{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;background:#e8eef9;color:#1f4f9e;vertical-align:middle}
.s-killed,.s-failed,.s-stalled,.s-agent-error{background:#fbe9e7;color:var(--red)}.s-warning,.s-idle{background:#fdf2e0;color:#9a6200}
.s-completed,.s-phase-completed{background:#e6f4ea;color:#1e7b34}.s-stopped{background:#eee;color:#444}
.ending:not(:empty){display:inline-block;margin-top:6px;padding:4px 10px;border-radius:6px;font-size:14px}
#timeline .scroll{overflow-x:auto}#timeline svg{width:100%;min-width:640px;height:auto;display:block}
.list td:first-child,.state{white-space:nowrap}
.gpus{display:grid;gap:12px;grid-template-columns:repeat(auto-fit,minmax(250px,1fr))}
.gpu{border:1px solid var(--line);border-radius:6px;padding:8px 10px}.spark{width:100%;height:44px;display:block;margin-top:6px}
.legend{margin:2px 0 0;font-size:12px;color:var(--muted)}.legend b{font-weight:400}.legend b::before{content:"";display:inline-block;width:12px;height:3px;margin:0 4px 3px 0;vertical-align:middle}
.legend .u::before{background:#2e8b57}.legend .m::before{background:#8e44ad}.legend .r::before{background:var(--blue)}
.muted{color:var(--muted)}footer{padding:12px 16px 24px;color:var(--muted);font-size:12px;text-align:center}a{color:var(--blue)}
#stale{margin:6px 0 0;padding:6px 10px;background:#fbe9e7;color:var(--red);border-radius:6px}
"#;

/// The live part: the formats mirror [`fmt`]; the paths are the data-k attributes.
const SCRIPT: &str = r#"
(()=>{
const r=(v,d)=>{const m=10**d;return (Math.floor(v*m+0.5)/m).toFixed(d)};
const dur=v=>{const t=Math.floor(Math.max(0,v)),d=Math.floor(t/86400),h=Math.floor(t%86400/3600),m=Math.floor(t%3600/60),s=t%60,p=n=>String(n).padStart(2,'0');return d?`${d}d${p(h)}h${p(m)}m`:h?`${h}h${p(m)}m${p(s)}s`:m?`${m}m${p(s)}s`:`${s}s`};
const F={money:v=>'$'+r(v,Math.abs(v)>=1?2:4),rate:v=>F.money(v)+'/h',dur,limit:dur,pct:v=>r(v,0)+'%',
bytes:v=>v>=1073741824?r(v/1073741824,1)+' GiB':r(v/1048576,0)+' MiB',watts:v=>r(v,0)+' W',celsius:v=>r(v,0)+' °C'};
const fmt=(k,v)=>{if((k==='limit'||k==='limit_bytes')&&v==null)return'off';if(k==='limit_bytes')k='bytes';if((k==='detail'||k==='at')&&v==null)return'';if(k==='count')return String(typeof v==='number'?Math.floor(v):0);
if(v==null)return'—';if(typeof v==='string'){if(k==='clock')return v.length>=16?v.slice(11,16)+' UTC':v;if(k==='at')return v.length>=16?'at '+v.slice(11,16)+' UTC':v;if(k==='time')return v.length>=19?v.slice(11,19):v;return v}
if(typeof v==='number'&&F[k])return F[k](v);return String(v)};
const get=(d,p)=>{const v=p.split('.').reduce((o,k)=>o==null?undefined:o[k],d);return v===undefined?null:v};
let last=null,seen=0,state=null,polls=0;
function fill(d){
for(const el of document.querySelectorAll('[data-k]')){const v=get(d,el.dataset.k);el.textContent=fmt(el.dataset.f,v);
if(el.dataset.f==='state')el.className='state s-'+v}
for(const el of document.querySelectorAll('[data-bar]')){const [n,m]=el.dataset.bar.split('/'),a=get(d,n),b=get(d,m);
const p=(typeof a==='number'&&typeof b==='number'&&b>0)?Math.min(100,Math.max(0,a/b*100)):null;
el.className='bar'+(p==null?' none':p>=95?' hot':p>=80?' warm':'');el.firstElementChild.style.width=(p??0).toFixed(1)+'%'}}
async function swap(){try{const t=await (await fetch('./',{cache:'no-store'})).text();const doc=new DOMParser().parseFromString(t,'text/html');
for(const el of document.querySelectorAll('[data-swap]')){const n=doc.getElementById(el.id);if(n)el.replaceWith(n)}
const ph=doc.getElementById('phases');if(ph&&!document.getElementById('phases'))document.getElementById('gpus').after(ph)}catch(e){}}
async function tick(){try{const d=await (await fetch('status',{cache:'no-store'})).json();
document.getElementById('stale').hidden=true;
if(state!==null&&d.state!==state){location.reload();return}state=d.state;
const key=(d.recent_events&&d.recent_events[0]?d.recent_events[0].id:'')+d.state;
if(last!==null&&key!==last)await swap();last=key;fill(d);seen=Date.now();document.documentElement.dataset.polls=++polls}
catch(e){if(seen)document.getElementById('stale').hidden=false}}
tick();setInterval(tick,2000);setInterval(swap,10000);
})();
"#;

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

    #[test]
    fn the_page_escapes_what_the_job_wrote() {
        let d = json!({
            "run_id": "r1", "state": "running", "command": "python <b>x</b>",
            "recent_events": [{"kind": "warning", "at": "2026-11-25T14:05:09Z", "message": "<script>alert(1)</script>", "id": "r1-2"}],
            "gpus": [], "spend_dollars": 1.5, "budget_dollars": 2.0,
        });
        let page = render(&d, &Series::default());
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)"));
        assert!(page.contains("python &lt;b&gt;x&lt;/b&gt;"));
        assert!(
            page.contains(r#"data-bar="spend_dollars/budget_dollars"><i style="width:75.0%"#),
            "{page}"
        );
        for external in ["src=\"http", "href=\"http", "url(http", "@import", "//cdn"] {
            assert!(
                !page.contains(external),
                "no external reference: {external}"
            );
        }
    }
}
