//! Progress bookkeeping: when the job last showed life, and the step rate for projections.

use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct Progress {
    last_at: Duration,
    last_label: Option<String>,
    first_step: Option<(Duration, f64)>,
    last_step: Option<(Duration, f64)>,
    count: u64,
}

impl Progress {
    pub fn record(&mut self, now: Duration, label: String, step: Option<f64>) {
        self.last_at = self.last_at.max(now);
        self.last_label = Some(label);
        self.count += 1;
        if let Some(v) = step {
            if self.first_step.is_none() {
                self.first_step = Some((now, v));
            }
            self.last_step = Some((now, v));
        }
    }

    /// When the last progress signal came (the start counts as one).
    pub fn last_at(&self) -> Duration {
        self.last_at
    }
    pub fn last_label(&self) -> Option<&str> {
        self.last_label.as_deref()
    }
    pub fn last_step(&self) -> Option<f64> {
        self.last_step.map(|s| s.1)
    }

    /// Steps per second between the first and the last step seen.
    pub fn step_rate(&self) -> Option<f64> {
        let ((t0, v0), (t1, v1)) = (self.first_step?, self.last_step?);
        let dt = t1.saturating_sub(t0).as_secs_f64();
        (dt > 0.0 && v1 > v0).then(|| (v1 - v0) / dt)
    }

    /// Time left until `total` steps at the observed rate, counted from the last step.
    pub fn eta(&self, total: f64, now: Duration) -> Option<Duration> {
        let rate = self.step_rate()?;
        let (t1, v1) = self.last_step?;
        let left = ((total - v1).max(0.0) / rate) - now.saturating_sub(t1).as_secs_f64();
        Some(Duration::from_secs_f64(left.clamp(0.0, 1e12)))
    }
}
