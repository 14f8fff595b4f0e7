//! The job's output, when costguard must read it for progress signals: bytes are copied to
//! our own stdout/stderr unchanged, and each complete line is offered to the progress parser.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use regex::Regex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// A progress signal from the output.
#[derive(Debug, Clone, PartialEq)]
pub struct LineProgress {
    pub label: String,
    pub step: Option<f64>,
}

/// The last lines of output, for the kill report.
#[derive(Debug, Clone, Default)]
pub struct Tail {
    lines: Arc<Mutex<VecDeque<String>>>,
}

impl Tail {
    const KEEP: usize = 20;

    pub fn push(&self, line: String) {
        if let Ok(mut l) = self.lines.lock() {
            if l.len() == Self::KEEP {
                l.pop_front();
            }
            l.push_back(line);
        }
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.lines
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// Decides whether a line is progress: with a regex, only when its captured number grows.
#[derive(Debug, Clone)]
pub struct LineJudge {
    regex: Option<Regex>,
    last: Option<f64>,
}

impl LineJudge {
    pub fn new(regex: Option<Regex>) -> Self {
        LineJudge { regex, last: None }
    }

    pub fn judge(&mut self, line: &str) -> Option<LineProgress> {
        let label: String = line.trim_end().chars().take(120).collect();
        let Some(re) = &self.regex else {
            return Some(LineProgress { label, step: None });
        };
        let caps = re.captures(line)?;
        let v: f64 = caps.get(1)?.as_str().parse().ok()?;
        if self.last.is_some_and(|last| v <= last) {
            return None;
        }
        self.last = Some(v);
        Some(LineProgress {
            label,
            step: Some(v),
        })
    }
}

/// Copies `from` to `to` verbatim and reports lines. Both streams share one judge so a
/// step number printed on stderr and stdout alike counts once.
pub async fn pump<R, W>(
    mut from: R,
    mut to: W,
    judge: Arc<Mutex<LineJudge>>,
    tail: Tail,
    tx: mpsc::UnboundedSender<LineProgress>,
    log: Option<Arc<Mutex<std::fs::File>>>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    let mut partial: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // The job's bytes first: never hold them back for our own parsing.
        let _ = to.write_all(&buf[..n]).await;
        let _ = to.flush().await;
        if let Some(l) = &log {
            // The run's output.log: a page-cache write, no fsync.
            if let Ok(mut f) = l.lock() {
                let _ = std::io::Write::write_all(&mut *f, &buf[..n]);
            }
        }
        partial.extend_from_slice(&buf[..n]);
        while let Some(pos) = partial.iter().position(|b| *b == b'\n' || *b == b'\r') {
            let line: Vec<u8> = partial.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            if text.trim().is_empty() {
                continue;
            }
            tail.push(text.clone());
            let verdict = judge.lock().ok().and_then(|mut j| j.judge(&text));
            if let Some(p) = verdict {
                let _ = tx.send(p);
            }
        }
        if partial.len() > 64 * 1024 {
            partial.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_steps_must_grow() {
        let mut j = LineJudge::new(Some(Regex::new(r"step (\d+)").expect("re")));
        assert_eq!(j.judge("step 1 loss 3.2").and_then(|p| p.step), Some(1.0));
        assert_eq!(j.judge("loading…"), None);
        assert_eq!(j.judge("step 1 again"), None);
        assert_eq!(j.judge("step 2").and_then(|p| p.step), Some(2.0));
        let mut any = LineJudge::new(None);
        assert!(any.judge("anything").is_some());
    }
}
