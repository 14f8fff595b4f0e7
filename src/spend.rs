//! The spend meter: spend is the integral of the rate over the monotonic clock, and the
//! dollar ceiling is a deadline computed from it — never a polling check.
//!
//! Times are `Duration`s since the run's start on the monotonic clock, so the meter is pure
//! and tests drive it with plain values.

use std::time::Duration;

/// Converts hours (possibly huge or non-finite) into a Duration without panicking.
pub fn hours_to_duration(hours: f64) -> Duration {
    let secs = hours * 3600.0;
    if !secs.is_finite() || secs >= 1e15 {
        Duration::from_secs(1_000_000_000_000)
    } else if secs <= 0.0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(secs)
    }
}

#[derive(Debug, Clone)]
pub struct SpendMeter {
    /// Spend carried in at the start (earlier sessions or phases).
    initial: f64,
    /// Spend accrued before the current rate segment began (resumed spend included).
    base: f64,
    seg_start: Duration,
    /// Dollars per hour for the current segment.
    rate: f64,
}

impl SpendMeter {
    /// A meter starting at `initial` dollars (spend carried over from an earlier attempt).
    pub fn new(initial: f64, rate_per_hour: f64) -> Self {
        SpendMeter {
            initial,
            base: initial,
            seg_start: Duration::ZERO,
            rate: rate_per_hour,
        }
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Dollars spent at `now`.
    pub fn spend_at(&self, now: Duration) -> f64 {
        let dt = now.saturating_sub(self.seg_start).as_secs_f64();
        self.base + self.rate * dt / 3600.0
    }

    /// Changes the rate from `now` on; what accrued so far is kept.
    pub fn set_rate(&mut self, now: Duration, rate_per_hour: f64) {
        if rate_per_hour == self.rate {
            return;
        }
        self.base = self.spend_at(now);
        self.seg_start = now.max(self.seg_start);
        self.rate = rate_per_hour;
    }

    /// The rate was wrong from the start (a guess, before the box named its price): spend
    /// is what `rate_per_hour` gives over the whole session, as if known from its first
    /// instant. Never below what was carried in.
    pub fn correct_from_start(&mut self, rate_per_hour: f64) {
        self.base = self.initial;
        self.seg_start = Duration::ZERO;
        self.rate = rate_per_hour;
    }

    /// The instant (since start) at which spend reaches `target`, at the current rate.
    /// `Some(now)`-or-earlier when already reached; `None` when it never will (rate 0).
    pub fn time_to_reach(&self, target: f64, now: Duration) -> Option<Duration> {
        let spent = self.spend_at(now);
        if spent >= target {
            return Some(now);
        }
        if self.rate <= 0.0 {
            return None;
        }
        let hours_left = (target - self.base) / self.rate;
        Some(self.seg_start + hours_to_duration(hours_left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integral_and_deadline() {
        let mut m = SpendMeter::new(0.0, 3600.0); // a dollar a second
        assert!((m.spend_at(Duration::from_millis(500)) - 0.5).abs() < 1e-9);
        assert_eq!(
            m.time_to_reach(0.5, Duration::ZERO),
            Some(Duration::from_millis(500))
        );
        m.set_rate(Duration::from_secs(1), 7200.0); // $1 spent, now $2/s
        let t = m
            .time_to_reach(3.0, Duration::from_secs(1))
            .expect("deadline");
        assert!((t.as_secs_f64() - 2.0).abs() < 1e-9, "{t:?}");
        m.set_rate(Duration::from_secs(2), 0.0);
        assert_eq!(m.time_to_reach(100.0, Duration::from_secs(3)), None);
        assert!((m.spend_at(Duration::from_secs(9)) - 3.0).abs() < 1e-9);
    }

    #[test]
    fn a_corrected_rate_counts_from_the_first_instant() {
        let mut m = SpendMeter::new(2.0, 3600.0);
        assert!((m.spend_at(Duration::from_secs(3)) - 5.0).abs() < 1e-9);
        m.correct_from_start(7200.0);
        assert!((m.spend_at(Duration::from_secs(3)) - 8.0).abs() < 1e-9);
        assert_eq!(
            m.time_to_reach(10.0, Duration::from_secs(3)),
            Some(Duration::from_secs(4))
        );
    }

    #[test]
    fn resumed_spend_counts() {
        let m = SpendMeter::new(4.0, 3600.0);
        assert_eq!(
            m.time_to_reach(5.0, Duration::ZERO),
            Some(Duration::from_secs(1))
        );
        assert_eq!(m.time_to_reach(3.0, Duration::ZERO), Some(Duration::ZERO));
    }
}
