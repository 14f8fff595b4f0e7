//! The job's output, when costguard must read it for progress signals: bytes are copied to
//! our own stdout/stderr unchanged by a thread per stream, kept in a capped `output.log`, and
//! complete lines are offered to the progress parser — only as many as progress needs.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use regex::Regex;
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
    pub const KEEP: usize = 20;

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
    /// The same pattern over bytes, `^`/`$` at line ends: finds the chunk's last matching
    /// line without a string or a lock per line.
    lines: Option<regex::bytes::Regex>,
    last: Option<f64>,
}

impl LineJudge {
    pub fn new(regex: Option<Regex>) -> Self {
        let lines = regex.as_ref().and_then(|r| {
            regex::bytes::RegexBuilder::new(r.as_str())
                .multi_line(true)
                .crlf(true)
                .build()
                .ok()
        });
        LineJudge {
            regex,
            lines,
            last: None,
        }
    }

    /// The last line of `text` (complete lines, ended by `\n` or `\r`) the regex matches.
    /// The step number only has to grow, so the chunk's last step is the one that counts;
    /// a chunk without a match costs one scan of the regex, no work per line.
    pub fn last_match<'a>(&self, text: &'a [u8]) -> Option<&'a [u8]> {
        let re = self.lines.as_ref()?;
        // A match in a line is a match in the text (line ends are `^`/`$`): none here, none
        // in any line.
        if !re.is_match(text) {
            return None;
        }
        text.rsplit(|b| *b == b'\n' || *b == b'\r')
            .find(|line| re.is_match(line))
    }

    pub fn has_regex(&self) -> bool {
        self.regex.is_some()
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

/// `output.log` with a cap: past `max` bytes the file is rotated to `output.log.1` (the one
/// before it is dropped), so a run's output never takes more than twice the cap on disk,
/// and the newest output is always there to read.
pub struct CappedLog {
    path: std::path::PathBuf,
    file: std::fs::File,
    written: u64,
    max: u64,
}

impl CappedLog {
    pub fn open(path: &std::path::Path, max: u64) -> std::io::Result<CappedLog> {
        let file = crate::fsutil::open_record(path, true)?;
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(CappedLog {
            path: path.to_path_buf(),
            file,
            written,
            max: max.max(4096),
        })
    }

    /// Appends (a page-cache write, no fsync); a full disk drops output, never the job.
    pub fn write(&mut self, bytes: &[u8]) {
        if self.written + bytes.len() as u64 > self.max {
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            if std::fs::rename(&self.path, &old).is_ok() {
                if let Ok(f) = std::fs::File::create(&self.path) {
                    self.file = f;
                    self.written = 0;
                }
            }
        }
        if std::io::Write::write_all(&mut self.file, bytes).is_ok() {
            self.written += bytes.len() as u64;
        }
    }
}

/// Where a pump sends what it learns from the output.
#[derive(Clone)]
pub struct PumpSinks {
    pub judge: Arc<Mutex<LineJudge>>,
    pub tail: Tail,
    /// Bounded: when the loop is behind, a newer progress line replaces nothing and is
    /// dropped; progress is "something happened lately", and the next one comes.
    pub progress: mpsc::Sender<LineProgress>,
    pub log: Option<Arc<Mutex<CappedLog>>>,
}

/// The longest partial line kept while waiting for its end.
const MAX_PARTIAL: usize = 64 * 1024;

/// Copies the job's stream `from` to `to` (our own stdout or stderr) verbatim on a thread of
/// its own, with blocking reads and writes of whole chunks: the job is never throttled by
/// the runtime, and memory stays bounded whatever it prints. A closed `to` stops the copy,
/// never the draining: the job must not block on a full pipe.
pub fn spawn_pump(
    from: std::os::fd::OwnedFd,
    to: Option<std::os::fd::OwnedFd>,
    sinks: PumpSinks,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    use std::io::{Read, Write};
    // The runtime made the pipe non-blocking; this thread wants to block on it.
    let flags = nix::fcntl::fcntl(&from, nix::fcntl::FcntlArg::F_GETFL)?;
    let mut flags = nix::fcntl::OFlag::from_bits_truncate(flags);
    flags.remove(nix::fcntl::OFlag::O_NONBLOCK);
    nix::fcntl::fcntl(&from, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    std::thread::Builder::new()
        .name("costguard-output".into())
        .spawn(move || {
            let mut from = std::fs::File::from(from);
            let mut to = to.map(std::fs::File::from);
            let mut buf = vec![0u8; 256 * 1024];
            let mut lines = Lines::default();
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                let chunk = &buf[..n];
                // The job's bytes first: never hold them back for our own parsing.
                if to.as_mut().is_some_and(|t| t.write_all(chunk).is_err()) {
                    to = None;
                }
                if let Some(l) = &sinks.log {
                    if let Ok(mut l) = l.lock() {
                        l.write(chunk);
                    }
                }
                lines.take(chunk, &sinks);
            }
        })
}

/// The line-level view of the stream: only as much work per chunk as progress needs.
#[derive(Default)]
struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    fn take(&mut self, chunk: &[u8], sinks: &PumpSinks) {
        let is_end = |b: &u8| *b == b'\n' || *b == b'\r';
        let Some(last_end) = memchr::memrchr2(b'\n', b'\r', chunk) else {
            self.keep(chunk);
            return;
        };
        let first: std::borrow::Cow<[u8]> = if self.partial.is_empty() {
            std::borrow::Cow::Borrowed(&chunk[..=last_end])
        } else {
            let mut joined = std::mem::take(&mut self.partial);
            joined.extend_from_slice(&chunk[..=last_end]);
            std::borrow::Cow::Owned(joined)
        };
        // The tail needs the last lines only, however many the chunk holds.
        let mut last: Vec<&[u8]> = first
            .rsplit(is_end)
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .take(Tail::KEEP)
            .collect();
        last.reverse();
        for line in &last {
            sinks.tail.push(String::from_utf8_lossy(line).into_owned());
        }
        if let Ok(mut judge) = sinks.judge.lock() {
            // With a regex, the chunk's last matching line (its step is the highest that
            // counts: steps only grow); without one, any line is progress: the last.
            let line = if judge.has_regex() {
                judge.last_match(&first)
            } else {
                last.last().copied()
            };
            if let Some(p) = line.and_then(|l| judge.judge(&String::from_utf8_lossy(l))) {
                let _ = sinks.progress.try_send(p);
            }
        }
        self.keep(&chunk[last_end + 1..]);
    }

    /// Keeps the start of an unfinished line, bounded: a line without an end for megabytes
    /// is cut, not buffered.
    fn keep(&mut self, rest: &[u8]) {
        let room = MAX_PARTIAL.saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&rest[..rest.len().min(room)]);
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

    fn sinks(re: &str) -> (PumpSinks, mpsc::Receiver<LineProgress>) {
        let (tx, rx) = mpsc::channel(16);
        let judge = LineJudge::new(Some(Regex::new(re).expect("re")));
        let s = PumpSinks {
            judge: Arc::new(Mutex::new(judge)),
            tail: Tail::default(),
            progress: tx,
            log: None,
        };
        (s, rx)
    }

    fn steps(rx: &mut mpsc::Receiver<LineProgress>) -> Vec<f64> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .filter_map(|p| p.step)
            .collect()
    }

    #[test]
    fn the_last_step_of_a_chunk_is_what_counts() {
        let (s, mut rx) = sinks(r"^step (\d+)");
        let mut l = Lines::default();
        l.take(b"step 1\nstep 2\nnoise\nstep 3\nnoise\n", &s);
        assert_eq!(
            steps(&mut rx),
            vec![3.0],
            "one signal per chunk: its last step"
        );
        // A chunk whose last step is not above the one seen is no progress.
        l.take(b"step 9\nstep 2\n", &s);
        assert_eq!(steps(&mut rx), Vec::<f64>::new());
        l.take(b"nothing here\r\n", &s);
        assert_eq!(steps(&mut rx), Vec::<f64>::new());
        // `^` is a line start, not the chunk's: the anchored pattern finds "step 10".
        l.take(b"x\nstep 10\nx\n", &s);
        assert_eq!(steps(&mut rx), vec![10.0]);
        assert_eq!(s.tail.snapshot().last().map(String::as_str), Some("x"));
    }

    #[test]
    fn a_step_line_split_across_chunks_still_counts() {
        let (s, mut rx) = sinks(r"step (\d+)");
        let mut l = Lines::default();
        l.take(b"noise\nst", &s);
        assert_eq!(steps(&mut rx), Vec::<f64>::new());
        l.take(b"ep 4", &s);
        l.take(b"2 done\nmore noise\n", &s);
        assert_eq!(steps(&mut rx), vec![42.0]);
    }
}
