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
    due: Instant,
    attempts: u32,
    last_error: Option<String>,
    in_flight: bool,
}

impl Notifier {
    /// Opens the outbox under `state_dir` and starts delivering, beginning with what an
    /// earlier run left there. `notices` gets one line per thing the user should know.
    pub fn start(
        settings: NotifySettings,
        state_dir: &Path,
        metrics: Arc<Metrics>,
        quiet: bool,
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
                queue.push(Pending {
                    path,
                    item,
                    due: Instant::now(),
                    attempts: 0,
                    last_error: None,
                    in_flight: false,
                });
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
        let client = reqwest::Client::builder()
            .user_agent(concat!("costguard/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(settings.timeout)
            .build()
            .map_err(std::io::Error::other)?;
        let task = tokio::spawn(run(settings, outbox, client, metrics, queue, rx, quiet));
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

async fn run(
    set: NotifySettings,
    outbox: Outbox,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
    mut queue: Vec<Pending>,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    quiet: bool,
) -> Report {
    let set = Arc::new(set);
    let mut report = Report {
        outbox: outbox.dir().to_path_buf(),
        ..Report::default()
    };
    let mut triggered = HashSet::new();
    let mut flights: JoinSet<(usize, Outcome)> = JoinSet::new();
    let mut deadline: Option<Instant> = None;
    let mut rx_open = true;
    // Items are addressed by a serial number, stable while the queue changes.
    let mut serials: Vec<usize> = (0..queue.len()).collect();
    let mut next_serial = queue.len();
    loop {
        let idle = queue.iter().all(|p| !p.in_flight) && flights.is_empty();
        if deadline.is_some() && (queue.is_empty() || Some(Instant::now()) >= deadline) && idle {
            break;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            // Out of time: what is in flight is abandoned (and stays in the outbox).
            flights.abort_all();
            break;
        }
        // Start every due delivery.
        let now = Instant::now();
        for (i, p) in queue.iter_mut().enumerate() {
            if !p.in_flight && p.due <= now {
                p.in_flight = true;
                let (set, client, item, serial) =
                    (set.clone(), client.clone(), p.item.clone(), serials[i]);
                flights.spawn(async move {
                    let Some(ch) = set.channel(item.channel) else {
                        return (
                            serial,
                            Outcome::Refused {
                                why: "channel not configured".into(),
                            },
                        );
                    };
                    (serial, deliver::send(&client, &set, ch, &item).await)
                });
            }
        }
        let next_due = queue
            .iter()
            .filter(|p| !p.in_flight)
            .map(|p| p.due)
            .min()
            .into_iter()
            .chain(deadline)
            .min();
        tokio::select! {
            m = rx.recv(), if rx_open => match m {
                Some(Msg::Event(e)) => {
                    for item in items_for(&set, &e, &mut triggered) {
                        let ob = outbox.clone();
                        let it = item.clone();
                        // The outbox write is a blocking fsync: off the runtime's thread.
                        let path = tokio::task::spawn_blocking(move || ob.put(&it)).await;
                        let path = match path {
                            Ok(Ok(p)) => p,
                            Ok(Err(err)) => {
                                eprintln!("costguard: notice: cannot write the outbox ({err}); sending {} without it", item.delivery_id());
                                PathBuf::new()
                            }
                            Err(_) => PathBuf::new(),
                        };
                        queue.push(Pending { path, item, due: Instant::now(), attempts: 0, last_error: None, in_flight: false });
                        serials.push(next_serial);
                        next_serial += 1;
                    }
                }
                Some(Msg::Flush(d)) => deadline = Some(Instant::now() + d),
                None => {
                    rx_open = false;
                    deadline.get_or_insert_with(|| Instant::now() + set.flush);
                }
            },
            Some(done) = flights.join_next(), if !flights.is_empty() => {
                let Ok((serial, outcome)) = done else { continue };
                let Some(i) = serials.iter().position(|s| *s == serial) else { continue };
                let ch = queue[i].item.channel.as_str();
                match outcome {
                    Outcome::Delivered => {
                        let p = queue.remove(i);
                        serials.remove(i);
                        report.delivered += 1;
                        let ob = outbox.clone();
                        let _ = tokio::task::spawn_blocking(move || ob.delivered(&p.path)).await;
                    }
                    Outcome::Retry { after, why } => {
                        metrics.notifications_failed.with_label_values(&[ch]).inc();
                        let p = &mut queue[i];
                        let wait = deliver::backoff(p.attempts, after);
                        if p.attempts == 0 && !quiet {
                            eprintln!(
                                "costguard: notice: {ch}: delivery of {} failed ({}); retrying",
                                p.item.delivery_id(),
                                redact::text(&why)
                            );
                        }
                        tracing::debug!(channel = ch, attempt = p.attempts, wait_ms = wait.as_millis() as u64, why = %redact::text(&why), "notification retry");
                        p.attempts += 1;
                        p.last_error = Some(why);
                        p.due = Instant::now() + wait;
                        p.in_flight = false;
                    }
                    Outcome::Refused { why } => {
                        metrics.notifications_failed.with_label_values(&[ch]).inc();
                        let p = queue.remove(i);
                        serials.remove(i);
                        eprintln!(
                            "costguard: notice: {ch} refused {} ({}); not retried, kept in {}",
                            p.item.delivery_id(),
                            redact::text(&why),
                            outbox.dir().join("failed").display()
                        );
                        let ob = outbox.clone();
                        let _ = tokio::task::spawn_blocking(move || ob.refused(&p.path, &p.item, &why)).await;
                    }
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
    for p in &queue {
        report.undelivered.push(format!(
            "{}: {} ({})",
            p.item.channel.as_str(),
            p.item.delivery_id(),
            redact::text(p.last_error.as_deref().unwrap_or("not attempted"))
        ));
    }
    report
}
