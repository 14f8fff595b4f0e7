//! The run's events as `/events` serves them: a bounded ring of the recent ones (a client that
//! comes back with `Last-Event-ID` is replayed what it missed, as far as the ring reaches) and
//! a broadcast channel for the live ones. One feed per process (one process runs one run; a
//! plan's phases share it), filled by `Sinks::emit` and ended by the session's close with
//! the run's exit status and outcome.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;

use crate::events::Event;

/// How many recent events a resuming client can be replayed.
pub const RING: usize = 1000;
/// How far a slow client may fall behind the live events before it is replayed from the ring.
const LIVE: usize = 256;

/// One thing on the stream: an event of the run, or its end.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Event {
        id: String,
        kind: &'static str,
        /// The event as one line of JSON (messages are masked already).
        json: String,
    },
    /// `{"run_id", "exit_code", "outcome", "detail", "report_path"}`.
    End { json: String },
}

impl Item {
    fn id(&self) -> Option<&str> {
        match self {
            Item::Event { id, .. } => Some(id),
            Item::End { .. } => None,
        }
    }
}

#[derive(Default)]
struct Inner {
    ring: VecDeque<Item>,
    end: Option<Item>,
}

pub struct Feed {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Item>,
    /// Streams open now (the close waits a moment for them to send the end).
    open: Arc<AtomicUsize>,
}

impl Default for Feed {
    fn default() -> Self {
        Feed {
            inner: Mutex::default(),
            tx: broadcast::channel(LIVE).0,
            open: Arc::default(),
        }
    }
}

/// This process's feed.
pub fn global() -> &'static Feed {
    static FEED: LazyLock<Feed> = LazyLock::new(Feed::default);
    &FEED
}

/// Where the replay for a client that has seen `after` begins in `ring`.
fn start_after(ring: &VecDeque<Item>, after: &str) -> usize {
    if let Some(i) = ring.iter().position(|it| it.id() == Some(after)) {
        return i + 1;
    }
    let Some((run, seq)) = split_id(after) else {
        return 0;
    };
    // This run's sequence number of an item.
    let ours = |it: &Item| -> Option<u64> {
        let (r, s) = split_id(it.id()?)?;
        (r == run).then_some(s)
    };
    match ring.iter().position(|it| ours(it).is_some_and(|s| s > seq)) {
        Some(i) => i,
        // Everything here is older than what it has seen: nothing to replay.
        None if ring.iter().any(|it| ours(it).is_some()) => ring.len(),
        None => 0,
    }
}

/// The sequence number of an event id `<run-id>-<seq>`, and the run id.
fn split_id(id: &str) -> Option<(&str, u64)> {
    let (run, seq) = id.rsplit_once('-')?;
    Some((run, seq.parse().ok()?))
}

impl Feed {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds an event (to the ring, and to every stream open now).
    pub fn push(&self, ev: &Event) {
        let Ok(json) = serde_json::to_string(ev) else {
            return;
        };
        let item = Item::Event {
            id: ev.id.clone(),
            kind: ev.kind.as_str(),
            json,
        };
        let mut g = self.lock();
        if g.ring.len() == RING {
            g.ring.pop_front();
        }
        g.ring.push_back(item.clone());
        // Under the lock: a subscriber sees each item either in its replay or live, once.
        let _ = self.tx.send(item);
    }

    /// The run has ended: every stream gets its end, and so does every later one.
    pub fn end(&self, doc: &serde_json::Value) {
        let item = Item::End {
            json: doc.to_string(),
        };
        let mut g = self.lock();
        g.end = Some(item.clone());
        let _ = self.tx.send(item);
    }

    /// What a client resuming after `after` is owed now, and the live ones from here on (none
    /// once the run has ended: the end is in the replay). An id the ring no longer holds is
    /// placed by its sequence number when it is this run's; any other id replays the ring.
    fn subscribe(
        &self,
        after: Option<&str>,
    ) -> (VecDeque<Item>, Option<broadcast::Receiver<Item>>) {
        let g = self.lock();
        let start = after.map_or(0, |a| start_after(&g.ring, a));
        let mut replay: VecDeque<Item> = g.ring.iter().skip(start).cloned().collect();
        match &g.end {
            Some(end) => {
                replay.push_back(end.clone());
                (replay, None)
            }
            None => (replay, Some(self.tx.subscribe())),
        }
    }

    /// A stream of the items after `after`, ending with the run's end.
    pub fn tail(&'static self, after: Option<String>) -> Tail {
        let (backlog, rx) = self.subscribe(after.as_deref());
        self.open.fetch_add(1, Ordering::SeqCst);
        Tail {
            feed: self,
            backlog,
            rx,
            last: after,
            done: false,
        }
    }

    /// Waits (at most `limit`) for the open streams to have sent the end and closed.
    pub async fn drain(&self, limit: Duration) {
        let until = tokio::time::Instant::now() + limit;
        while self.open.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One client's place in the feed.
pub struct Tail {
    feed: &'static Feed,
    backlog: VecDeque<Item>,
    rx: Option<broadcast::Receiver<Item>>,
    /// The last event id handed out (where a lagging client is replayed from).
    last: Option<String>,
    done: bool,
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.feed.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Tail {
    /// The next item; None after the end.
    pub async fn next(&mut self) -> Option<Item> {
        loop {
            if self.done {
                return None;
            }
            if let Some(item) = self.backlog.pop_front() {
                match &item {
                    Item::End { .. } => self.done = true,
                    Item::Event { id, .. } => self.last = Some(id.clone()),
                }
                return Some(item);
            }
            let rx = self.rx.as_mut()?;
            match rx.recv().await {
                Ok(item) => self.backlog.push_back(item),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Fell behind the live channel: caught up from the ring instead.
                    let (backlog, rx) = self.feed.subscribe(self.last.as_deref());
                    self.backlog = backlog;
                    self.rx = rx;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventKind;

    fn ev(seq: u64) -> Event {
        Event {
            id: format!("r-1-{seq:04}"),
            run_id: "r-1".into(),
            kind: EventKind::Warning,
            reason: None,
            message: format!("m{seq}"),
            at: String::new(),
            elapsed_seconds: 0.0,
            spend_dollars: 0.0,
            rate_dollars_per_hour: None,
            budget_dollars: None,
            host: String::new(),
            phase: None,
            report_path: None,
            page_url: None,
            command: None,
            test: false,
        }
    }

    fn leak() -> &'static Feed {
        Box::leak(Box::default())
    }

    fn ids(items: &VecDeque<Item>) -> Vec<String> {
        items
            .iter()
            .map(|i| i.id().unwrap_or("end").to_string())
            .collect()
    }

    #[test]
    fn resumes_after_an_id_in_the_ring_or_by_its_sequence_number() {
        let f = leak();
        for s in 1..=RING as u64 + 5 {
            f.push(&ev(s));
        }
        assert_eq!(f.lock().ring.len(), RING);
        let (r, rx) = f.subscribe(Some("r-1-1003"));
        assert_eq!(ids(&r), ["r-1-1004", "r-1-1005"]);
        assert!(rx.is_some());
        // Fell out of the ring: placed by its number.
        let (r, _) = f.subscribe(Some("r-1-0002"));
        assert_eq!(r.len(), RING);
        // Newer than anything here (this run, a later session's id): nothing to replay.
        let (r, _) = f.subscribe(Some("r-1-9999"));
        assert!(r.is_empty());
        // Another run's id, or no id: the whole ring.
        assert_eq!(f.subscribe(Some("other-0003")).0.len(), RING);
        assert_eq!(f.subscribe(None).0.len(), RING);
    }

    #[tokio::test]
    async fn a_tail_gets_the_replay_then_live_events_then_the_end() {
        let f = leak();
        f.push(&ev(1));
        f.push(&ev(2));
        let mut t = f.tail(Some("r-1-0001".into()));
        assert_eq!(f.open.load(Ordering::SeqCst), 1);
        f.push(&ev(3));
        f.end(&serde_json::json!({"exit_code": 124}));
        let mut got = Vec::new();
        while let Some(i) = t.next().await {
            got.push(i.id().unwrap_or("end").to_string());
        }
        assert_eq!(got, ["r-1-0002", "r-1-0003", "end"]);
        drop(t);
        f.drain(Duration::from_secs(1)).await;
        assert_eq!(f.open.load(Ordering::SeqCst), 0);
        // A client arriving after the end: the replay and the end, then nothing.
        let (r, rx) = f.subscribe(Some("r-1-0002"));
        assert_eq!(ids(&r), ["r-1-0003", "end"]);
        assert!(rx.is_none());
    }

    #[tokio::test]
    async fn a_lagging_tail_catches_up_from_the_ring() {
        let f = leak();
        let mut t = f.tail(None);
        for s in 1..=(LIVE as u64 * 2) {
            f.push(&ev(s));
        }
        f.end(&serde_json::json!({}));
        let mut n = 0;
        let mut last = String::new();
        while let Some(i) = t.next().await {
            if let Some(id) = i.id() {
                assert!(id > last.as_str(), "{id} after {last}: in order, once");
                last = id.to_string();
                n += 1;
            }
        }
        assert_eq!(n, LIVE * 2);
    }
}
