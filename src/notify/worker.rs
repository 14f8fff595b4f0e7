//! The delivery task. The run loop hands it events through an unbounded channel (never
//! waits); the task writes each delivery to the outbox, then sends, retries and finally
//! flushes within `--notify-flush` when the run is over.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::deliver::{self, Outcome};
use super::outbox::{Item, Outbox};
use super::{payload, ChannelKind, NotifySettings};
use crate::events::{Event, EventKind};
use crate::metrics::Metrics;
use crate::redact;

enum Msg {
    Event(Box<Event>),
    Flush(Duration),
}

/// What the flush achieved.
#[derive(Debug, Default)]
pub struct Report {
    pub delivered: usize,
    /// "channel: delivery id (last error)" for each delivery still in the outbox.
    pub undelivered: Vec<String>,
    pub outbox: PathBuf,
}

pub struct Notifier {
    tx: mpsc::UnboundedSender<Msg>,
    task: tokio::task::JoinHandle<Report>,
}

struct Pending {
    path: PathBuf,
    item: Item,
    /// Stable address of this delivery while the queue changes.
    serial: usize,
    due: Instant,
    attempts: u32,
    last_error: Option<String>,
    in_flight: bool,
}

impl Pending {
    fn new(path: PathBuf, item: Item, serial: usize) -> Pending {
        Pending {
            path,
            item,
            serial,
            due: Instant::now(),
            attempts: 0,
            last_error: None,
            in_flight: false,
        }
    }
}

impl Notifier {
    /// Opens the outbox under `state_dir` and starts delivering, beginning with what an
    /// earlier run left there. `notices` gets one line per thing the user should know.
    pub fn start(
        settings: NotifySettings,
        state_dir: &Path,
        metrics: Arc<Metrics>,
        notices: &mut Vec<String>,
    ) -> std::io::Result<Notifier> {
        let outbox = Outbox::open(state_dir)?;
        let (left, bad) = outbox.pending();
        for b in bad {
            notices.push(format!("unreadable outbox file left in place: {b}"));
        }
        let mut queue = Vec::new();
        let mut unconfigured: BTreeSet<&str> = BTreeSet::new();
        for (path, item) in left {
            if settings.channel(item.channel).is_some() {
                let serial = queue.len();
                queue.push(Pending::new(path, item, serial));
            } else {
                unconfigured.insert(item.channel.as_str());
            }
        }
        if !queue.is_empty() {
            notices.push(format!(
                "delivering {} notifications left by an earlier run in {}",
                queue.len(),
                outbox.dir().display()
            ));
        }
        if !unconfigured.is_empty() {
            notices.push(format!(
                "undelivered notifications for channels not configured now ({}) stay in {}",
                unconfigured.into_iter().collect::<Vec<_>>().join(", "),
                outbox.dir().display()
            ));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let client = deliver::client(settings.timeout).map_err(std::io::Error::other)?;
        let task = tokio::spawn(run(settings, outbox, client, metrics, queue, rx));
        Ok(Notifier { tx, task })
    }

    /// Queues an event for every channel that wants it. Never blocks.
    pub fn send(&self, e: &Event) {
        let _ = self.tx.send(Msg::Event(Box::new(e.clone())));
    }

    /// Delivers what it can within `flush`, then reports.
    pub async fn finish(self, flush: Duration) -> Report {
        let _ = self.tx.send(Msg::Flush(flush));
        drop(self.tx);
        self.task.await.unwrap_or_default()
    }
}

fn items_for(set: &NotifySettings, e: &Event, triggered: &mut HashSet<String>) -> Vec<Item> {
    let mut out = Vec::new();
    for ch in set.channels.iter().filter(|c| c.on.matches(e)) {
        if ch.kind == ChannelKind::Pagerduty {
            if matches!(e.kind, EventKind::Completed | EventKind::PhaseCompleted) {
                // Completion resolves the incidents this run opened; it pages nobody.
                if e.kind == EventKind::Completed {
                    let mut keys: Vec<&String> = triggered.iter().collect();
                    keys.sort();
                    for k in keys {
                        out.push(Item {
                            channel: ch.kind,
                            event: e.clone(),
                            resolve: Some(k.clone()),
                        });
                    }
                }
                continue;
            }
            triggered.insert(payload::pagerduty_dedup_key(e));
        }
        out.push(Item {
            channel: ch.kind,
            event: e.clone(),
            resolve: None,
        });
    }
    out
}

/// The delivery task's state: the queue (each item addressed by a serial number, stable
/// while the queue changes), the deliveries in flight, and what the flush will report.
struct Worker {
    set: Arc<NotifySettings>,
    outbox: Outbox,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
    queue: Vec<Pending>,
    next_serial: usize,
    /// PagerDuty dedup keys this run triggered (completion resolves them).
    triggered: HashSet<String>,
    flights: JoinSet<(usize, Outcome)>,
    report: Report,
}

async fn run(
    set: NotifySettings,
    outbox: Outbox,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
    queue: Vec<Pending>,
    mut rx: mpsc::UnboundedReceiver<Msg>,
) -> Report {
    let mut w = Worker {
        report: Report {
            outbox: outbox.dir().to_path_buf(),
            ..Report::default()
        },
        set: Arc::new(set),
        outbox,
        client,
        metrics,
        next_serial: queue.len(),
        queue,
        triggered: HashSet::new(),
        flights: JoinSet::new(),
    };
    let mut deadline: Option<Instant> = None;
    let mut rx_open = true;
    loop {
        let idle = w.queue.iter().all(|p| !p.in_flight) && w.flights.is_empty();
        if deadline.is_some() && (w.queue.is_empty() || Some(Instant::now()) >= deadline) && idle {
            break;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            // Out of time: what is in flight is abandoned (and stays in the outbox).
            w.flights.abort_all();
            break;
        }
        w.start_due();
        let next_due = w
            .queue
            .iter()
            .filter(|p| !p.in_flight)
            .map(|p| p.due)
            .min()
            .into_iter()
            .chain(deadline)
            .min();
        tokio::select! {
            m = rx.recv(), if rx_open => match m {
                Some(Msg::Event(e)) => w.enqueue(&e).await,
                Some(Msg::Flush(d)) => deadline = Some(Instant::now() + d),
                None => {
                    rx_open = false;
                    deadline.get_or_insert_with(|| Instant::now() + w.set.flush);
                }
            },
            Some(done) = w.flights.join_next(), if !w.flights.is_empty() => {
                if let Ok((serial, outcome)) = done {
                    w.settle(serial, outcome).await;
                }
            }
            _ = async {
                match next_due {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
    w.finish()
}

impl Worker {
    /// Starts every due delivery.
    fn start_due(&mut self) {
        let now = Instant::now();
        for p in self
            .queue
            .iter_mut()
            .filter(|p| !p.in_flight && p.due <= now)
        {
            p.in_flight = true;
            let (set, client, item, serial) = (
                self.set.clone(),
                self.client.clone(),
                p.item.clone(),
                p.serial,
            );
            self.flights.spawn(async move {
                let Some(ch) = set.channel(item.channel) else {
                    let why = "channel not configured".into();
                    return (serial, Outcome::Refused { why });
                };
                (serial, deliver::send(&client, &set, ch, &item).await)
            });
        }
    }

    /// One event: a delivery per channel that wants it, each in the outbox before it goes.
    async fn enqueue(&mut self, e: &Event) {
        for item in items_for(&self.set, e, &mut self.triggered) {
            let (ob, it) = (self.outbox.clone(), item.clone());
            // The outbox write is a blocking fsync: off the runtime's thread.
            let path = match tokio::task::spawn_blocking(move || ob.put(&it)).await {
                Ok(Ok(p)) => p,
                Ok(Err(err)) => {
                    crate::console::notice(format!(
                        "cannot write the outbox ({err}); sending {} without it",
                        item.delivery_id()
                    ));
                    PathBuf::new()
                }
                Err(_) => PathBuf::new(),
            };
            self.queue.push(Pending::new(path, item, self.next_serial));
            self.next_serial += 1;
        }
    }

    /// A delivery's result: done, retried with backoff, or refused for good.
    async fn settle(&mut self, serial: usize, outcome: Outcome) {
        let Some(i) = self.queue.iter().position(|p| p.serial == serial) else {
            return;
        };
        let ch = self.queue[i].item.channel.as_str();
        match outcome {
            Outcome::Delivered => {
                let p = self.queue.remove(i);
                self.report.delivered += 1;
                let ob = self.outbox.clone();
                let _ = tokio::task::spawn_blocking(move || ob.delivered(&p.path)).await;
            }
            Outcome::Retry { after, why } => {
                self.metrics
                    .notifications_failed
                    .with_label_values(&[ch])
                    .inc();
                let p = &mut self.queue[i];
                let wait = deliver::backoff(p.attempts, after);
                if p.attempts == 0 {
                    crate::console::notice(format!(
                        "{ch}: delivery of {} failed ({}); retrying",
                        p.item.delivery_id(),
                        redact::text(&why)
                    ));
                }
                tracing::debug!(channel = ch, attempt = p.attempts, wait_ms = wait.as_millis() as u64, why = %redact::text(&why), "notification retry");
                p.attempts += 1;
                p.last_error = Some(why);
                p.due = Instant::now() + wait;
                p.in_flight = false;
            }
            Outcome::Refused { why } => {
                self.metrics
                    .notifications_failed
                    .with_label_values(&[ch])
                    .inc();
                let p = self.queue.remove(i);
                // A refusal is final: seen even with --quiet.
                crate::console::alert(format!(
                    "{ch} refused {} ({}); not retried, kept in {}",
                    p.item.delivery_id(),
                    redact::text(&why),
                    self.outbox.dir().join("failed").display()
                ));
                let ob = self.outbox.clone();
                let _ =
                    tokio::task::spawn_blocking(move || ob.refused(&p.path, &p.item, &why)).await;
            }
        }
    }

    fn finish(mut self) -> Report {
        for p in &self.queue {
            self.report.undelivered.push(format!(
                "{}: {} ({})",
                p.item.channel.as_str(),
                p.item.delivery_id(),
                redact::text(p.last_error.as_deref().unwrap_or("not attempted"))
            ));
        }
        self.report
    }
}
