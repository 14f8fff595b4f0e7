//! `runs/<id>/timeline.svg`: the run in one picture. Top: spend against the budget line.
//! Bottom: mean GPU utilization. Shaded: idle (amber) and stalled (purple) stretches, phases as
//! bands, the time costguard was down (a resume) hatched grey. Marks: kills (red) and
//! warnings (amber). Plain SVG 1.1, no script, no external font: it renders the same in a
//! browser, a Markdown viewer and `rsvg-convert`.

use std::fmt::Write;

use crate::events::{Event, EventKind};
use crate::series::{Point, Series};

pub const WIDTH: f64 = 800.0;
pub const HEIGHT: f64 = 320.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const SPEND_TOP: f64 = 28.0;
const SPEND_BOTTOM: f64 = 168.0;
const UTIL_TOP: f64 = 188.0;
const UTIL_BOTTOM: f64 = 280.0;

struct Frame {
    t0: f64,
    t1: f64,
    usd_max: f64,
}

impl Frame {
    fn x(&self, t: f64) -> f64 {
        let span = (self.t1 - self.t0).max(1.0);
        LEFT + (t - self.t0) / span * (WIDTH - LEFT - RIGHT)
    }
    fn y_usd(&self, usd: f64) -> f64 {
        SPEND_BOTTOM - usd / self.usd_max.max(1e-9) * (SPEND_BOTTOM - SPEND_TOP)
    }
    fn y_util(&self, pct: f64) -> f64 {
        UTIL_BOTTOM - pct.clamp(0.0, 100.0) / 100.0 * (UTIL_BOTTOM - UTIL_TOP)
    }
}

fn unix_of(e: &Event) -> Option<f64> {
    let t = humantime::parse_rfc3339_weak(&e.at).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs_f64())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn clock(t: f64) -> String {
    let st = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(t.max(0.0));
    let s = humantime::format_rfc3339_seconds(st).to_string();
    // 2026-11-25T02:40:14Z -> 11-25 02:40
    s.get(5..16).unwrap_or(&s).replace('T', " ")
}

/// The picture for `series`, `events` (kills, warnings, phases) and the budget.
pub fn render(series: &Series, events: &[Event], budget: Option<f64>, title: &str) -> String {
    let pts = &series.points;
    let times = pts
        .iter()
        .map(|p| p.t)
        .chain(events.iter().filter_map(unix_of));
    let (t0, t1) = times.fold((f64::MAX, f64::MIN), |(a, b), t| (a.min(t), b.max(t)));
    let (t0, t1) = if t0 <= t1 {
        (t0, t1.max(t0 + 1.0))
    } else {
        (0.0, 1.0)
    };
    let spent = pts.iter().map(|p| p.usd).fold(0.0, f64::max);
    let f = Frame {
        t0,
        t1,
        usd_max: budget.unwrap_or(0.0).max(spent) * 1.1 + 1e-6,
    };
    let mut o = String::new();
    let _ = write!(
        o,
        r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="DejaVu Sans, Verdana, sans-serif" font-size="11">
<title>{}</title>
<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="#f2f2f2"/><line x1="0" y1="0" x2="0" y2="6" stroke="#9e9e9e" stroke-width="2"/></pattern></defs>
<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>
"##,
        esc(title)
    );
    phases(&mut o, &f, events);
    stretches(&mut o, &f, pts);
    axes(&mut o, &f, spent, budget);
    lines(&mut o, &f, pts);
    marks(&mut o, &f, events);
    o.push_str("</svg>\n");
    o
}

fn phases(o: &mut String, f: &Frame, events: &[Event]) {
    let starts: Vec<(f64, String)> = events
        .iter()
        .filter(|e| e.kind == EventKind::Started)
        .filter_map(|e| Some((unix_of(e)?, e.phase.clone()?)))
        .collect();
    for (i, (t, name)) in starts.iter().enumerate() {
        let end = starts.get(i + 1).map_or(f.t1, |n| n.0);
        let (x0, x1) = (f.x(*t), f.x(end));
        let fill = if i % 2 == 0 { "#eef3fb" } else { "#f7f9fd" };
        let _ = writeln!(
            o,
            r##"<g class="phase"><rect x="{x0:.1}" y="{SPEND_TOP}" width="{:.1}" height="{:.1}" fill="{fill}"/><text x="{:.1}" y="{:.1}" fill="#345">{}</text></g>"##,
            (x1 - x0).max(1.0),
            UTIL_BOTTOM - SPEND_TOP,
            x0 + 3.0,
            SPEND_TOP + 12.0,
            esc(name)
        );
    }
}

/// Idle and stall stretches, and the gaps where costguard was down.
fn stretches(o: &mut String, f: &Frame, pts: &[Point]) {
    for w in pts.windows(2) {
        let (a, b) = (w[0], w[1]);
        let (x0, x1) = (f.x(a.t), f.x(b.t));
        let width = (x1 - x0).max(0.5);
        let h = UTIL_BOTTOM - SPEND_TOP;
        if b.gap_before {
            let _ = writeln!(
                o,
                r##"<g class="gap"><rect x="{x0:.1}" y="{SPEND_TOP}" width="{width:.1}" height="{h:.1}" fill="url(#hatch)"/><text x="{:.1}" y="{:.1}" fill="#555" text-anchor="middle">costguard down</text></g>"##,
                (x0 + x1) / 2.0,
                SPEND_TOP + h / 2.0
            );
            continue;
        }
        for (on, class, color) in [(b.idle, "idle", "#f5b041"), (b.stall, "stall", "#8e44ad")] {
            if on {
                let _ = writeln!(
                    o,
                    r#"<rect class="{class}" x="{x0:.1}" y="{SPEND_TOP}" width="{width:.1}" height="{h:.1}" fill="{color}" fill-opacity="0.22"/>"#
                );
            }
        }
    }
}

fn axes(o: &mut String, f: &Frame, spent: f64, budget: Option<f64>) {
    let right = WIDTH - RIGHT;
    let _ = writeln!(
        o,
        r##"<g class="axes" stroke="#bbb"><line x1="{LEFT}" y1="{SPEND_BOTTOM}" x2="{right}" y2="{SPEND_BOTTOM}"/><line x1="{LEFT}" y1="{UTIL_BOTTOM}" x2="{right}" y2="{UTIL_BOTTOM}"/><line x1="{LEFT}" y1="{UTIL_TOP}" x2="{right}" y2="{UTIL_TOP}" stroke-dasharray="2 3"/></g>
<text x="{LEFT}" y="16" font-weight="bold" fill="#222">spend {}{}</text>
<text x="8" y="{:.1}" fill="#555">$</text><text x="8" y="{:.1}" fill="#555">GPU %</text>
<text x="{:.1}" y="{UTIL_TOP}" fill="#777" text-anchor="end" dy="4">100</text><text x="{:.1}" y="{UTIL_BOTTOM}" fill="#777" text-anchor="end" dy="4">0</text>
<text x="{LEFT}" y="300" fill="#555">{}</text><text x="{right}" y="300" fill="#555" text-anchor="end">{} UTC</text>"##,
        crate::units::format_money(spent),
        budget
            .map(|b| format!(" of {}", crate::units::format_money(b)))
            .unwrap_or_default(),
        (SPEND_TOP + SPEND_BOTTOM) / 2.0,
        (UTIL_TOP + UTIL_BOTTOM) / 2.0 + 4.0,
        LEFT - 4.0,
        LEFT - 4.0,
        clock(f.t0),
        clock(f.t1),
    );
    if let Some(b) = budget {
        let y = f.y_usd(b);
        let _ = writeln!(
            o,
            r##"<g class="budget"><line id="budget-line" x1="{LEFT}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="#c0392b" stroke-width="1.5" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}" fill="#c0392b" text-anchor="end">budget {}</text></g>"##,
            right - 2.0,
            y - 4.0,
            crate::units::format_money(b)
        );
    }
}

/// The spend and utilization lines, broken at gaps and unknown readings.
fn lines(o: &mut String, f: &Frame, pts: &[Point]) {
    let mut spend = vec![String::new()];
    let mut util = vec![String::new()];
    for p in pts {
        if p.gap_before {
            spend.push(String::new());
            util.push(String::new());
        }
        let x = f.x(p.t);
        let _ = write!(
            spend.last_mut().expect("segment"),
            "{x:.1},{:.1} ",
            f.y_usd(p.usd)
        );
        match p.util {
            Some(u) => {
                let _ = write!(
                    util.last_mut().expect("segment"),
                    "{x:.1},{:.1} ",
                    f.y_util(u)
                );
            }
            None => util.push(String::new()),
        }
    }
    for (class, color, segs) in [("spend", "#1f6feb", spend), ("util", "#2e8b57", util)] {
        for s in segs.iter().filter(|s| !s.trim().is_empty()) {
            let _ = writeln!(
                o,
                r#"<polyline class="{class}" points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
                s.trim()
            );
        }
    }
}

fn marks(o: &mut String, f: &Frame, events: &[Event]) {
    for e in events {
        let (class, color, label) = match e.kind {
            EventKind::Killed => (
                "kill",
                "#c0392b",
                format!("killed ({})", e.reason.as_deref().unwrap_or("?")),
            ),
            EventKind::Warning => ("warning", "#d68910", String::new()),
            EventKind::Stalled => ("warning", "#8e44ad", String::new()),
            _ => continue,
        };
        let Some(t) = unix_of(e) else { continue };
        let x = f.x(t);
        let _ = write!(
            o,
            r#"<g class="mark {class}"><title>{}</title><line x1="{x:.1}" y1="{SPEND_TOP}" x2="{x:.1}" y2="{UTIL_BOTTOM}" stroke="{color}" stroke-width="{}"/>"#,
            esc(&e.message),
            if class == "kill" { 2 } else { 1 }
        );
        if !label.is_empty() {
            let _ = write!(
                o,
                r#"<text x="{:.1}" y="{:.1}" fill="{color}" text-anchor="end" font-weight="bold">{}</text>"#,
                x - 3.0,
                SPEND_TOP + 26.0,
                esc(&label)
            );
        }
        o.push_str("</g>\n");
    }
}
