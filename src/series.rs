//! The run's bounded time series (`runs/<id>/series.json`): spend, mean GPU utilization and
//! the idle/stall flags, one point per second at first. At [`CAP`] points, neighbours merge
//! in pairs and the step doubles, so a run of any length keeps at most `CAP` points: a
//! week-long run ends with a step of about 14 minutes in ~60 KB. 720 points is one per pixel
//! of the timeline's plot width; finer data would not show. Carried across resume: a new
//! session starts with `gap_before`, and the timeline draws the time costguard was down as
//! a gap.

use serde::{Deserialize, Serialize};

/// The most points kept.
pub const CAP: usize = 720;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
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
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// Seconds between points (1, then doubling as the series fills).
    pub step: f64,
    pub points: Vec<Point>,
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

    /// Adds a reading; readings closer than the step to the last point fold into it.
    pub fn push(&mut self, p: Point) {
        // A resume right after the last point (a plan's next phase) is no gap.
        let gap = std::mem::take(&mut self.resumed)
            && self
                .points
                .last()
                .is_some_and(|l| p.t - l.t > 2.0 * self.step + 0.5);
        if let (Some(last), Some(anchor)) = (self.points.last_mut(), self.anchor) {
            if !gap && p.t - anchor < self.step * 0.75 && p.t >= last.t {
                *last = fold(*last, p);
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
        let mut it = self.points.iter().copied().peekable();
        while let Some(a) = it.next() {
            match it.peek() {
                Some(b) if !b.gap_before => {
                    let b = *b;
                    it.next();
                    out.push(fold(a, b));
                }
                _ => out.push(a),
            }
        }
        self.points = out;
        self.step *= 2.0;
    }

    pub fn load(run_dir: &std::path::Path) -> Option<Series> {
        let text = crate::fsutil::read_bounded(&run_dir.join("series.json"), 4 << 20).ok()?;
        serde_json::from_slice(&text).ok()
    }

    pub fn save(&self, run_dir: &std::path::Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        crate::fsutil::write_replace(&run_dir.join("series.json"), &bytes)
    }
}

/// `a` then `b` as one point: `b`'s time and spend, the mean utilization, either flag.
fn fold(a: Point, b: Point) -> Point {
    let util = match (a.util, b.util) {
        (Some(x), Some(y)) => Some((x + y) / 2.0),
        (x, y) => x.or(y),
    };
    Point {
        t: b.t,
        usd: b.usd,
        util,
        idle: a.idle || b.idle,
        stall: a.stall || b.stall,
        gap_before: a.gap_before,
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
}
