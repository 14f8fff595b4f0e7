//! `runs/<id>/timeline.svg`: the run in one picture. Top: spend against the budget line.
//! Bottom: mean GPU utilization. Shaded: idle (amber) and stalled (purple) stretches, phases as
//! bands, the time costguard was down (a resume) hatched grey. Marks: kills (red) and
//! warnings (amber). Plain SVG 1.1, no script, no external font: it renders the same in a
//! browser, a Markdown viewer and `rsvg-convert`.

use std::fmt::Write;

use crate::events::EventKind;
use crate::series::{Mark, Point, Series};

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

/// Text for XML and HTML (elements and double-quoted attributes), escaped.
pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn rfc(t: f64) -> String {
    let st = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(t.max(0.0));
    humantime::format_rfc3339_seconds(st).to_string()
}

/// A tick label: "02:40" (or "02:40:15" for ticks under a minute apart; "11-25 02:40" for
/// runs longer than a day).
fn clock(t: f64, seconds: bool, long: bool) -> String {
    let s = rfc(t); // 2026-11-25T02:40:14Z
    let from = if long { 5 } else { 11 };
    let to = if seconds { 19 } else { 16 };
    s.get(from..to).unwrap_or(&s).replace('T', " ")
}

/// "2026-11-25 02:40".
fn clock_full(t: f64) -> String {
    let s = rfc(t);
    s.get(..16).unwrap_or(&s).replace('T', " ")
}

/// The picture for `series`, `marks` (kills, warnings, phases) and the budget.
pub fn render(series: &Series, marks: &[Mark], budget: Option<f64>, title: &str) -> String {
    let pts = &series.points;
    // The run's start (spend $0) opens the picture when it comes before the first sample.
    let start = series
        .start
        .filter(|s| pts.first().is_some_and(|p| p.t > *s));
    let times = pts
        .iter()
        .map(|p| p.t)
        .chain(marks.iter().map(|m| m.t))
        .chain(start);
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
        usd_max: nice_ceil(budget.unwrap_or(0.0).max(spent) * 1.05),
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
    phases(&mut o, &f, marks);
    stretches(&mut o, &f, pts);
    axes(&mut o, &f, spent, budget);
    lines(&mut o, &f, pts, start);
    draw_marks(&mut o, &f, marks);
    legend(&mut o);
    o.push_str("</svg>\n");
    o
}

/// The smallest round number (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 × 10^k) at or above `v`:
/// the top of the dollar axis, whose middle tick is then round too.
fn nice_ceil(v: f64) -> f64 {
    if v.is_nan() || v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|c| *c >= v * (1.0 - 1e-9))
        .unwrap_or(10.0 * mag)
}

/// Round seconds between time labels: at most six across `span`.
fn time_step(span: f64) -> f64 {
    const STEPS: [f64; 18] = [
        1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
        10800.0, 21600.0, 43200.0, 86400.0,
    ];
    STEPS
        .iter()
        .copied()
        .find(|s| span / s <= 6.0)
        .unwrap_or_else(|| (span / 6.0 / 86400.0).ceil() * 86400.0)
}

fn phases(o: &mut String, f: &Frame, marks: &[Mark]) {
    let starts: Vec<(f64, String)> = marks
        .iter()
        .filter(|m| m.kind == EventKind::Started)
        .filter_map(|m| Some((m.t, m.phase.clone()?)))
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
        let (a, b) = (&w[0], &w[1]);
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
<text x="8" y="{:.1}" fill="#555">GPU %</text>
<text x="{:.1}" y="{UTIL_TOP}" fill="#777" text-anchor="end" dy="4">100</text><text x="{:.1}" y="{UTIL_BOTTOM}" fill="#777" text-anchor="end" dy="4">0</text>"##,
        crate::units::format_money(spent),
        budget
            .map(|b| format!(" of {}", crate::units::format_money(b)))
            .unwrap_or_default(),
        (UTIL_TOP + UTIL_BOTTOM) / 2.0 + 4.0,
        LEFT - 4.0,
        LEFT - 4.0,
    );
    // Dollars: 0, the middle and the top of the axis, with faint grid lines.
    o.push_str(r##"<g class="usd-ticks" fill="#777" text-anchor="end">"##);
    for k in 0..=2 {
        let v = f.usd_max * f64::from(k) / 2.0;
        let y = f.y_usd(v);
        let _ = write!(
            o,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{y:.1}" dy="4">{}</text>"##,
            LEFT - 4.0,
            dollars(v)
        );
    }
    o.push_str("</g>\n");
    // Time: round clock times between the ends, UTC.
    let step = time_step(f.t1 - f.t0);
    let long = f.t1 - f.t0 > 86400.0;
    o.push_str(r##"<g class="time-ticks" fill="#555" text-anchor="middle">"##);
    let mut t = (f.t0 / step).ceil() * step;
    while t <= f.t1 + 1e-6 {
        let x = f.x(t);
        let _ = write!(
            o,
            r##"<line x1="{x:.1}" y1="{UTIL_BOTTOM}" x2="{x:.1}" y2="{:.1}" stroke="#999"/><text x="{x:.1}" y="298">{}</text>"##,
            UTIL_BOTTOM + 4.0,
            clock(t, step < 60.0, long)
        );
        t += step;
    }
    let _ = writeln!(
        o,
        r##"<text x="{right}" y="314" text-anchor="end">UTC, from {}</text></g>"##,
        clock_full(f.t0)
    );
    if let Some(b) = budget {
        let y = f.y_usd(b);
        let _ = writeln!(
            o,
            r##"<g class="budget"><line id="budget-line" x1="{LEFT}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="#c0392b" stroke-width="1.5" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}" fill="#c0392b">budget {}</text></g>"##,
            LEFT + 4.0,
            y + 13.0,
            crate::units::format_money(b)
        );
    }
}

/// Axis dollars: whole when round, cents otherwise.
fn dollars(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("${v:.0}")
    } else if v >= 0.1 {
        format!("${v:.2}")
    } else {
        format!("${v:.3}")
    }
}

/// What the lines, shades and marks mean, in a row at the top right.
fn legend(o: &mut String) {
    let items: [(&str, &str); 6] = [
        (
            "spend",
            r##"<line x1="0" y1="-4" x2="14" y2="-4" stroke="#1f6feb" stroke-width="2"/>"##,
        ),
        (
            "GPU util",
            r##"<line x1="0" y1="-4" x2="14" y2="-4" stroke="#2e8b57" stroke-width="2"/>"##,
        ),
        (
            "idle",
            r##"<rect x="0" y="-9" width="14" height="10" fill="#f5b041" fill-opacity="0.35"/>"##,
        ),
        (
            "stalled",
            r##"<rect x="0" y="-9" width="14" height="10" fill="#8e44ad" fill-opacity="0.35"/>"##,
        ),
        (
            "warning",
            r##"<line x1="7" y1="-10" x2="7" y2="2" stroke="#d68910"/>"##,
        ),
        (
            "kill",
            r##"<line x1="7" y1="-10" x2="7" y2="2" stroke="#c0392b" stroke-width="2"/>"##,
        ),
    ];
    let mut x = 330.0;
    o.push_str(r##"<g class="legend" fill="#444">"##);
    for (label, swatch) in items {
        let _ = write!(
            o,
            r##"<g transform="translate({x:.0},16)">{swatch}<text x="18" y="0">{label}</text></g>"##
        );
        x += 24.0 + 6.5 * label.len() as f64 + 10.0;
    }
    o.push_str("</g>\n");
}

/// The spend and utilization lines, broken at gaps and unknown readings.
fn lines(o: &mut String, f: &Frame, pts: &[Point], start: Option<f64>) {
    let mut spend = vec![String::new()];
    if let Some(s) = start {
        let _ = write!(spend[0], "{:.1},{:.1} ", f.x(s), f.y_usd(0.0));
    }
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

fn draw_marks(o: &mut String, f: &Frame, marks: &[Mark]) {
    for e in marks {
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
        let x = f.x(e.t);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t: f64, usd: f64) -> Point {
        Point {
            t,
            usd,
            util: None,
            idle: false,
            stall: false,
            gap_before: false,
            gpus: Vec::new(),
            rss: None,
        }
    }

    fn spend_points(svg: &str) -> Vec<String> {
        let line = svg
            .lines()
            .find(|l| l.contains(r#"class="spend""#))
            .expect("a spend line");
        let pts = line.split("points=\"").nth(1).expect("points");
        pts[..pts.find('"').expect("end")]
            .split(' ')
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn the_spend_line_starts_at_zero_at_the_runs_start() {
        let mut s = Series::default();
        s.points = vec![point(1001.0, 0.5), point(1002.0, 1.0)];
        let without = spend_points(&render(&s, &[], Some(2.0), "t"));
        assert_eq!(without.len(), 2, "from the first sample only: {without:?}");
        s.start = Some(1000.0);
        let with = spend_points(&render(&s, &[], Some(2.0), "t"));
        assert_eq!(with.len(), 3, "{with:?}");
        // The first point is at the left edge at $0: the bottom of the spend axis.
        let f = Frame {
            t0: 1000.0,
            t1: 1002.0,
            usd_max: nice_ceil(2.0 * 1.05),
        };
        assert_eq!(with[0], format!("{:.1},{:.1}", f.x(1000.0), f.y_usd(0.0)));
    }
}
