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
use crate::status::RunView;

mod format;

pub use format::fmt;
use format::{dur, esc, get};

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

fn gpus(d: &Value, v: &RunView, series: &Series) -> String {
    let mut o = String::from(
        r#"<section class="wide" id="gpus" data-swap><h2>GPUs</h2><div class="gpus">"#,
    );
    if v.gpus.is_empty() {
        let why = v.telemetry_error.as_deref().unwrap_or("no GPU seen yet");
        let _ = write!(o, "<p class=\"muted\">{}</p>", esc(why));
    }
    for (n, g) in v.gpus.iter().enumerate() {
        let idx = g.index;
        let p = |k: &str| format!("gpus.{n}.{k}");
        let util =
            move |pt: &crate::series::Point| pt.gpus.iter().find(|x| x.i == idx).and_then(|x| x.u);
        let mem =
            move |pt: &crate::series::Point| pt.gpus.iter().find(|x| x.i == idx).and_then(|x| x.m);
        let _ = write!(
            o,
            r#"<div class="gpu"><h3>GPU {idx} <small>{}</small></h3>{}{}<p class="legend"><b class="u">utilization</b> <b class="m">memory</b> over the run</p></div>"#,
            esc(&g.model),
            rows(&[
                ("utilization", val(d, &p("util_gpu_pct"), "pct")),
                (
                    "memory",
                    of(d, &p("mem_used"), "bytes", &p("mem_total"), ""),
                ),
                ("power", val(d, &p("power_watts"), "watts")),
                ("temperature", val(d, &p("temperature_c"), "celsius")),
            ]),
            spark(series, &[("#2e8b57", &util), ("#8e44ad", &mem)], 100.0),
        );
    }
    let rss_top = series.points.iter().filter_map(|p| p.rss).fold(
        v.limits.max_host_mem_bytes.map_or(0.0, |b| b as f64),
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
                of(d, "host.host_mem_used", "bytes", "host.host_mem_total", ""),
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

fn phases(v: &RunView) -> String {
    let Some(ph) = &v.phases else {
        return String::new();
    };
    let (index, total) = (ph.index as u64, ph.total as u64);
    let mut rows_: Vec<(String, String, f64, f64)> = ph
        .done
        .iter()
        .map(|r| {
            let why = r
                .reason
                .as_deref()
                .map(|w| format!(" ({w})"))
                .unwrap_or_default();
            (
                r.name.clone(),
                format!("{}{why}", r.outcome.as_str()),
                r.elapsed_seconds,
                r.spend_dollars,
            )
        })
        .collect();
    if v.state == "running" {
        rows_.push((
            ph.name.clone(),
            "running".into(),
            v.elapsed_seconds,
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

fn events(v: &RunView) -> String {
    let mut o = String::from(
        r#"<section class="wide" id="events" data-swap><h2>Recent events</h2><table class="list"><tr><th>time</th><th>event</th><th>message</th></tr>"#,
    );
    for e in &v.recent_events {
        let kind = e.kind.as_str();
        let reason = e
            .reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        let _ = write!(
            o,
            r#"<tr><td>{}</td><td><span class="state s-{}">{}{}</span></td><td>{}</td></tr>"#,
            fmt("time", &Value::from(e.at.as_str())),
            esc(kind),
            esc(kind),
            esc(&reason),
            esc(&e.message)
        );
    }
    o.push_str("</table></section>");
    o
}

/// The live timeline picture (the report's, drawn from the series and its marks).
pub fn timeline(v: Option<&RunView>, series: &Series) -> String {
    let (run, state, budget) = v.map_or(("?", "starting", None), |v| {
        (v.run_id.as_str(), v.state.as_str(), v.budget_dollars)
    });
    let title = format!("costguard run {run}: {state}");
    crate::timeline::render(series, &series.marks, budget, &title)
}

/// The whole page for the status document (`None` before the run's first) and the series.
pub fn render(v: Option<&RunView>, series: &Series) -> String {
    let starting = RunView {
        run_id: "?".into(),
        state: "starting".into(),
        ..RunView::default()
    };
    let v = v.unwrap_or(&starting);
    // The tables are drawn by path, the paths the page's script rewrites (`data-k`).
    let d = &serde_json::to_value(v).unwrap_or_default();
    let svg = timeline(Some(v), series);
    let svg = svg.find("<svg").map_or(&svg[..], |at| &svg[at..]);
    let state = v.state.as_str();
    let badge = format!(
        r#"<span class="state s-{s}" data-k="state" data-f="state">{s}</span>"#,
        s = esc(state)
    );
    let detail = v.outcome_detail.as_deref().map_or(Value::Null, Value::from);
    let ending = format!(
        r#"<span class="ending s-{}" data-k="outcome_detail" data-f="detail">{}</span>"#,
        esc(state),
        esc(&fmt("detail", &detail))
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
        esc(&v.command),
        esc(&v.hostname),
        fmt("clock", &Value::from(v.started_at.as_str())),
        val(d, "waiting_on", "text"),
        ending,
        val(d, "updated_at", "time"),
        cards(d),
        gpus(d, v, series),
        phases(v),
        events(v),
        val(d, "updated_at", "time"),
        run = esc(&v.run_id),
    );
    o
}

/// The page's style (inline in the page: nothing is fetched).
const CSS: &str = include_str!("page.css");

/// The live part: the formats mirror [`fmt`]; the paths are the data-k attributes.
const SCRIPT: &str = include_str!("page.js");

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_page_escapes_what_the_job_wrote() {
        let ev: crate::events::Event = serde_json::from_value(json!({
            "id": "r1-2", "run_id": "r1", "kind": "warning", "at": "2026-11-25T14:05:09Z",
            "message": "<script>alert(1)</script>", "elapsed_seconds": 1.0, "spend_dollars": 1.5,
            "rate_dollars_per_hour": null, "budget_dollars": 2.0, "host": "h",
        }))
        .expect("an event");
        let v = RunView {
            run_id: "r1".into(),
            state: "running".into(),
            command: "python <b>x</b>".into(),
            recent_events: vec![ev],
            spend_dollars: 1.5,
            budget_dollars: Some(2.0),
            ..RunView::default()
        };
        let page = render(Some(&v), &Series::default());
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

    #[test]
    fn before_the_first_publish_the_page_says_starting() {
        let page = render(None, &Series::default());
        assert!(
            page.contains(r#"data-k="state" data-f="state">starting</span>"#),
            "{page}"
        );
    }
}
