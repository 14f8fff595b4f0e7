//! The run's bounded time series (`runs/<id>/series.json`): spend, mean GPU utilization, each
//! GPU's utilization and memory, the job's host memory and the idle/stall flags, one point
//! per second at first. At [`CAP`] points, neighbours merge in pairs and the step doubles, so
//! a run of any length keeps at most `CAP` points (a week at one reading a second ends with a
//! step of 2048 s, ~400 points about 25 minutes apart: a reading folds into the last point
//! within 0.75 step of where that point began). 720 points is one per pixel
//! of the timeline's plot width; finer data would not show. Beside the points, the marks: the
//! run's kills, warnings, watchdog events and phase starts (at most [`MARKS`], kills and phase
//! starts kept first), so the live page and a resumed run draw them without the event log.
//! Carried across resume: a new session starts with `gap_before`, and the timeline draws the
//! time costguard was down as a gap.

use serde::{Deserialize, Serialize};

use crate::events::{Event, EventKind};

/// The most points kept.
pub const CAP: usize = 720;
/// The most marks kept.
pub const MARKS: usize = 200;

/// One GPU at one point: its index, utilization and memory used, both percent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GpuPoint {
    pub i: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub u: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub m: Option<f64>,
}

/// An event drawn on the timeline: a kill, a warning, a watchdog, a phase's start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mark {
    pub t: f64,
    pub kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    pub message: String,
}

impl Mark {
    /// The mark an event leaves on the timeline, if any.
    pub fn of(e: &Event) -> Option<Mark> {
        let drawn = match e.kind {
            EventKind::Killed | EventKind::Warning | EventKind::Idle | EventKind::Stalled => true,
            EventKind::Started => e.phase.is_some(),
            _ => false,
        };
        if !drawn {
            return None;
        }
        let t = humantime::parse_rfc3339_weak(&e.at).ok()?;
        let t = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64();
        Some(Mark {
            t,
            kind: e.kind,
            reason: e.reason.clone(),
            phase: e.phase.clone(),
            message: e.message.chars().take(200).collect(),
        })
    }

    /// Kept first when the marks are full.
    fn keeps(&self) -> bool {
        matches!(self.kind, EventKind::Killed | EventKind::Started)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Unix seconds (the end of the stretch this point stands for).
    pub t: f64,
    /// Spend so far, in dollars (the run's, across sessions).
    pub usd: f64,
    /// Mean utilization of the visible GPUs, percent (absent: unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub util: Option<f64>,
    /// The GPUs were idle at some moment of this stretch.
    #[serde(default, skip_serializing_if = "is_false")]
    pub idle: bool,
    /// No progress past the stall threshold at some moment of this stretch.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stall: bool,
    /// costguard was not running between the point before and this one (a resume).
    #[serde(default, skip_serializing_if = "is_false")]
    pub gap_before: bool,
    /// Each visible GPU (absent when unknown).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<GpuPoint>,
    /// The job's resident host memory, bytes (the most of the stretch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss: Option<f64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// Seconds between points (1, then doubling as the series fills).
    pub step: f64,
    pub points: Vec<Point>,
    #[serde(default)]
    pub marks: Vec<Mark>,
    /// When the run started (Unix seconds), spend $0: the spend line begins there, not at
    /// the first sample. Absent for a series begun by an older costguard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<f64>,
    /// A resume happened: the next point starts after a gap.
    #[serde(skip)]
    resumed: bool,
    /// When the last point's stretch began (readings within a step of it fold into it).
    #[serde(skip)]
    anchor: Option<f64>,
}

impl Default for Series {
    fn default() -> Self {
        Series {
            step: 1.0,
            points: Vec::new(),
            marks: Vec::new(),
            start: None,
            resumed: false,
            anchor: None,
        }
    }
}

impl Series {
    /// The series of an earlier session, continued after a gap.
    pub fn resumed(mut prev: Series) -> Series {
        prev.resumed = !prev.points.is_empty();
        prev
    }

    /// Adds a reading; one within 0.75 step of where the last point's stretch began folds into it.
    pub fn push(&mut self, p: Point) {
        // A resume right after the last point (a plan's next phase) is no gap.
        let gap = std::mem::take(&mut self.resumed)
            && self
                .points
                .last()
                .is_some_and(|l| p.t - l.t > 2.0 * self.step + 0.5);
        if let (Some(last), Some(anchor)) = (self.points.last_mut(), self.anchor) {
            if !gap && p.t - anchor < self.step * 0.75 && p.t >= last.t {
                *last = fold(last, p);
                return;
            }
        }
        self.anchor = Some(p.t);
        self.points.push(Point {
            gap_before: gap,
            ..p
        });
        if self.points.len() > CAP {
            self.halve();
        }
    }

    /// Merges neighbours in pairs (never across a gap) and doubles the step.
    fn halve(&mut self) {
        let mut out: Vec<Point> = Vec::with_capacity(self.points.len() / 2 + 1);
        let mut it = std::mem::take(&mut self.points).into_iter().peekable();
        while let Some(a) = it.next() {
            match it.next_if(|b| !b.gap_before) {
                Some(b) => out.push(fold(&a, b)),
                None => out.push(a),
            }
        }
        self.points = out;
        self.step *= 2.0;
    }

    /// Keeps `e`'s mark, if it leaves one; past [`MARKS`] the oldest warning goes first.
    pub fn mark(&mut self, e: &Event) {
        let Some(m) = Mark::of(e) else { return };
        self.marks.push(m);
        if self.marks.len() > MARKS {
            let at = self.marks.iter().position(|m| !m.keeps()).unwrap_or(0);
            self.marks.remove(at);
        }
    }

    /// `width` buckets of `pick` over the series (the mean of each; None where nothing
    /// was known), oldest first.
    pub fn buckets(&self, width: usize, pick: impl Fn(&Point) -> Option<f64>) -> Vec<Option<f64>> {
        let pts = &self.points;
        let (Some(first), Some(last)) = (pts.first(), pts.last()) else {
            return Vec::new();
        };
        let span = (last.t - first.t).max(1e-9);
        let n = width.max(1);
        let mut sums = vec![(0.0, 0u32); n];
        for p in pts {
            let Some(v) = pick(p) else { continue };
            let at = (((p.t - first.t) / span) * (n - 1) as f64).round() as usize;
            let b = &mut sums[at.min(n - 1)];
            *b = (b.0 + v, b.1 + 1);
        }
        sums.iter()
            .map(|(s, n)| (*n > 0).then(|| s / f64::from(*n)))
            .collect()
    }

    pub fn load(run_dir: &std::path::Path) -> Option<Series> {
        let text = crate::fsutil::read_bounded(&run_dir.join("series.json"), 4 << 20).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Replaces `run_dir/series.json` with `bytes` (a serialized series).
    pub fn write(run_dir: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
        crate::fsutil::write_replace(&run_dir.join("series.json"), bytes)
    }
}

fn mean(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some((x + y) / 2.0),
        (x, y) => x.or(y),
    }
}

/// A row of block characters for `values` between 0 and `top` (a space where unknown).
pub fn sparkline(values: &[Option<f64>], top: f64) -> String {
    const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    values
        .iter()
        .map(|v| match v {
            Some(v) if top > 0.0 => {
                let k = (v / top * 7.0).round().clamp(0.0, 7.0) as usize;
                BLOCKS[k]
            }
            Some(_) => BLOCKS[0],
            None => ' ',
        })
        .collect()
}

/// `a` then `b` as one point: `b`'s time and spend, mean utilizations and memory, the most
/// host memory, either flag.
fn fold(a: &Point, b: Point) -> Point {
    let gpus = b
        .gpus
        .iter()
        .map(|g| match a.gpus.iter().find(|x| x.i == g.i) {
            Some(x) => GpuPoint {
                i: g.i,
                u: mean(x.u, g.u),
                m: mean(x.m, g.m),
            },
            None => *g,
        })
        .collect();
    Point {
        t: b.t,
        usd: b.usd,
        util: mean(a.util, b.util),
        idle: a.idle || b.idle,
        stall: a.stall || b.stall,
        gap_before: a.gap_before,
        gpus,
        rss: match (a.rss, b.rss) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(t: f64) -> Point {
        Point {
            t,
            usd: t / 100.0,
            util: Some(50.0),
            idle: false,
            stall: false,
            gap_before: false,
            gpus: vec![GpuPoint {
                i: 0,
                u: Some(50.0),
                m: Some(25.0),
            }],
            rss: Some(1e9),
        }
    }

    #[test]
    fn a_week_stays_within_the_cap_and_keeps_its_ends() {
        let mut s = Series::default();
        let week = 7 * 24 * 3600;
        for t in 0..week {
            s.push(p(t as f64));
        }
        assert!(s.points.len() <= CAP, "{}", s.points.len());
        assert!(s.points.len() > CAP / 2);
        assert_eq!(s.points.last().map(|x| x.t), Some((week - 1) as f64));
        assert!(s.step >= 840.0 && s.step <= 2048.0, "{}", s.step);
        let bytes = serde_json::to_vec(&s).expect("json");
        assert!(bytes.len() < 64 * 1024, "{} bytes", bytes.len());
    }

    #[test]
    fn a_resume_is_a_gap_that_merging_keeps() {
        let mut s = Series::default();
        for t in 0..100 {
            s.push(p(t as f64));
        }
        let mut s = Series::resumed(s);
        s.push(p(500.0));
        assert!(s.points.last().expect("point").gap_before);
        for t in 501..3000 {
            s.push(p(t as f64));
        }
        assert_eq!(s.points.iter().filter(|x| x.gap_before).count(), 1);
        let at = s.points.iter().position(|x| x.gap_before).expect("gap");
        assert!(s.points[at - 1].t < 100.0 && s.points[at].t >= 500.0);
    }

    #[test]
    fn flags_survive_folding() {
        let mut s = Series::default();
        s.push(p(0.0));
        s.push(Point {
            idle: true,
            ..p(0.5)
        });
        s.push(p(0.6));
        assert_eq!(s.points.len(), 1);
        assert!(s.points[0].idle);
    }

    #[test]
    fn a_sparkline_spans_the_run() {
        let mut s = Series::default();
        for t in 0..100 {
            let mut x = p(f64::from(t));
            x.util = (t >= 50).then_some(100.0);
            s.push(x);
        }
        let b = s.buckets(10, |p| p.util);
        assert_eq!(b.len(), 10);
        assert_eq!(sparkline(&b, 100.0), "     █████");
        let spend = s.buckets(4, |p| Some(p.usd));
        assert_eq!(
            sparkline(&spend, 1.0),
            "▂▃▆▇",
            "bucket means of a steady climb"
        );
        assert_eq!(Series::default().buckets(10, |p| p.util), Vec::new());
    }

    #[test]
    fn folding_keeps_each_gpu_and_the_most_host_memory() {
        let mut s = Series::default();
        let mut a = p(0.0);
        a.gpus.push(GpuPoint {
            i: 1,
            u: Some(100.0),
            m: None,
        });
        s.push(a);
        let mut b = p(0.5);
        b.gpus[0].u = Some(0.0);
        b.rss = Some(3e9);
        s.push(b);
        let got = &s.points[0];
        assert_eq!(got.gpus[0].u, Some(25.0), "{got:?}");
        assert_eq!(got.rss, Some(3e9));
        // A GPU missing from the newer reading keeps nothing stale.
        assert_eq!(got.gpus.len(), 1);
    }

    fn ev(kind: EventKind, at: &str) -> Event {
        Event {
            id: "r-1".into(),
            run_id: "r".into(),
            kind,
            reason: Some("usd".into()),
            message: "m".into(),
            at: at.into(),
            elapsed_seconds: 0.0,
            spend_dollars: 0.0,
            rate_dollars_per_hour: None,
            budget_dollars: None,
            host: "h".into(),
            phase: None,
            report_path: None,
            command: None,
            page_url: None,
            test: false,
        }
    }

    #[test]
    fn marks_are_bounded_and_keep_the_kills() {
        let mut s = Series::default();
        s.mark(&ev(EventKind::Killed, "2026-11-25T10:00:00Z"));
        s.mark(&ev(EventKind::Completed, "2026-11-25T10:00:01Z"));
        s.mark(&ev(EventKind::Started, "2026-11-25T10:00:01Z"));
        assert_eq!(s.marks.len(), 1, "no mark for completed or a plain start");
        for _ in 0..MARKS + 50 {
            s.mark(&ev(EventKind::Warning, "2026-11-25T10:00:02Z"));
        }
        assert_eq!(s.marks.len(), MARKS);
        assert_eq!(s.marks[0].kind, EventKind::Killed);
        assert_eq!(s.marks[0].t, 1_795_600_800.0);
    }
}
