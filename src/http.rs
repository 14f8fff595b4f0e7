//! The read-only HTTP endpoint: `/` (the page), `/metrics`, `/healthz`, `/status`, `/series`,
//! `/timeline.svg` and `/events` (server-sent events, from `feed.rs`). Handlers read the last snapshot, the series and the metric atomics;
//! they never call NVML or wait on the run loop. One server per process (one process runs
//! one run): a plan's next phase gets the running server, now showing the new phase.
//! At most `MAX_CONNECTIONS` are open at once; the rest are closed as soon as they are
//! accepted, so no number of idle clients can take the descriptors the kill and the run
//! record need.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;
use crate::series::Series;

#[derive(Clone)]
pub struct Shared {
    pub metrics: Arc<Metrics>,
    /// The /status document, replaced whole by the run loop.
    pub status: crate::status::Published,
    /// The run's time series, grown by the run loop.
    pub series: Arc<RwLock<Series>>,
}

impl Shared {
    fn status(&self) -> Option<crate::status::RunView> {
        self.status.read().map(|v| v.clone()).unwrap_or_default()
    }
    fn series(&self) -> Series {
        self.series.read().map(|s| s.clone()).unwrap_or_default()
    }
}

/// What the running server shows; replaced whole when a plan's next phase opens.
#[derive(Clone)]
struct Current(Arc<RwLock<Shared>>);

impl Current {
    fn get(&self) -> Shared {
        match self.0.read() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// This process's server: the address it is bound to, what it shows.
static SERVING: Mutex<Option<(SocketAddr, Current)>> = Mutex::new(None);

/// Nothing here is cached by a browser or a proxy: every answer is the run as it is now.
const NO_STORE: (header::HeaderName, &str) = (header::CACHE_CONTROL, "no-store");

async fn metrics(State(c): State<Current>) -> impl IntoResponse {
    let s = c.get();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn status(State(c): State<Current>) -> impl IntoResponse {
    let s = c.get();
    let body = s
        .status
        .read()
        .map(|v| crate::status::to_json(&v))
        .unwrap_or_else(|_| "{}".into());
    ([(header::CONTENT_TYPE, "application/json"), NO_STORE], body)
}

async fn series(State(c): State<Current>) -> impl IntoResponse {
    let s = c.get();
    let body = s
        .series
        .read()
        .ok()
        .and_then(|v| serde_json::to_string(&*v).ok())
        .unwrap_or_else(|| "{}".into());
    ([(header::CONTENT_TYPE, "application/json"), NO_STORE], body)
}

async fn page(State(c): State<Current>) -> impl IntoResponse {
    let s = c.get();
    let body = crate::page::render(s.status().as_ref(), &s.series());
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8"), NO_STORE],
        body,
    )
}

async fn timeline(State(c): State<Current>) -> impl IntoResponse {
    let s = c.get();
    let body = crate::page::timeline(s.status().as_ref(), &s.series());
    ([(header::CONTENT_TYPE, "image/svg+xml"), NO_STORE], body)
}

/// How often an idle `/events` stream says it is still there (proxies and tunnels drop
/// connections that stay silent; a client notices a dead one).
pub const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// The id a client has seen: the `Last-Event-ID` header (an `EventSource` reconnecting), or
/// `?last_event_id=` (a page opening the stream after it was drawn).
fn last_event_id(headers: &axum::http::HeaderMap, uri: &axum::http::Uri) -> Option<String> {
    if let Some(v) = headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        return Some(v.trim().to_string()).filter(|v| !v.is_empty());
    }
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("last_event_id="))
        .map(percent_decode)
        .filter(|v| !v.is_empty())
}

/// `%XX` escapes and `+` decoded (an event id is `<run-id>-<seq>`: rarely anything to decode).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET /events`: every event of the run as `id:`/`event:`/`data:` (one line of JSON), from
/// after the id the client has seen; `event: end` with the exit status when the run ends, and
/// the stream closes. A `: keep-alive` comment every 15 s.
async fn events(headers: axum::http::HeaderMap, uri: axum::http::Uri) -> impl IntoResponse {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let tail = crate::feed::global().tail(last_event_id(&headers, &uri));
    let stream = futures_util::stream::unfold(tail, |mut t| async move {
        let ev = match t.next().await? {
            crate::feed::Item::Event { id, kind, json } => {
                Event::default().id(id).event(kind).data(json)
            }
            crate::feed::Item::End { json } => Event::default().event("end").data(json),
        };
        Some((Ok::<_, std::convert::Infallible>(ev), t))
    });
    (
        // nginx and friends: pass each event on as it comes.
        [("x-accel-buffering", "no")],
        Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive")),
    )
}

/// The most HTTP connections open at once (a scrape, a browser or two need a handful).
pub const MAX_CONNECTIONS: usize = 256;

/// A listener that holds at most `MAX_CONNECTIONS` connections: one accepted beyond the cap is
/// closed at once (the client sees the connection end, and may retry).
struct Capped {
    inner: tokio::net::TcpListener,
    permits: Arc<tokio::sync::Semaphore>,
}

/// An accepted connection with its place under the cap, given back when it closes.
struct CappedStream {
    stream: tokio::net::TcpStream,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl axum::serve::Listener for Capped {
    type Io = CappedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (CappedStream, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => match self.permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let _permit = permit;
                        return (CappedStream { stream, _permit }, addr);
                    }
                    // Closed here, before it costs more than the moment it took.
                    Err(_) => drop(stream),
                },
                // Out of descriptors (or the client gave up): wait a little, never spin.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl tokio::io::AsyncRead for CappedStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CappedStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Binds `addr` and serves until the process ends (or shows `shared` on the server already
/// running). Returns the bound address.
pub async fn serve(addr: SocketAddr, shared: Shared) -> std::io::Result<SocketAddr> {
    let mut serving = SERVING.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((bound, current)) = serving.as_ref() {
        *current.0.write().unwrap_or_else(|p| p.into_inner()) = shared;
        return Ok(*bound);
    }
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let local = listener.local_addr()?;
    let current = Current(Arc::new(RwLock::new(shared)));
    *serving = Some((local, current.clone()));
    drop(serving);
    let app = Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/status", get(status))
        .route("/series", get(series))
        .route("/timeline.svg", get(timeline))
        .route("/events", get(events))
        .with_state(current);
    let listener = Capped {
        inner: listener,
        permits: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
    };
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_event_id_comes_from_the_header_or_the_query() {
        let mut h = axum::http::HeaderMap::new();
        let uri: axum::http::Uri = "/events?x=1&last_event_id=train%2D1-0007".parse().unwrap();
        assert_eq!(last_event_id(&h, &uri).as_deref(), Some("train-1-0007"));
        h.insert("last-event-id", "train-1-0009".parse().unwrap());
        assert_eq!(last_event_id(&h, &uri).as_deref(), Some("train-1-0009"));
        let bare: axum::http::Uri = "/events".parse().unwrap();
        assert_eq!(last_event_id(&axum::http::HeaderMap::new(), &bare), None);
        assert_eq!(percent_decode("a%zz+b%41"), "a%zz bA");
    }
}
