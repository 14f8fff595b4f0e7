//! The read-only HTTP endpoint: `/` (the page), `/metrics`, `/healthz`, `/status`, `/series`
//! and `/timeline.svg`. Handlers read the last snapshot, the series and the metric atomics;
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
    pub status: Arc<RwLock<serde_json::Value>>,
    /// The run's time series, grown by the run loop.
    pub series: Arc<RwLock<Series>>,
}

impl Shared {
    fn status(&self) -> serde_json::Value {
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
        .map(|v| v.to_string())
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
    let body = crate::page::render(&s.status(), &s.series());
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8"), NO_STORE],
        body,
    )
}

async fn timeline(State(c): State<Current>) -> impl IntoResponse {
    let s = c.get();
    let body = crate::page::timeline(&s.status(), &s.series());
    ([(header::CONTENT_TYPE, "image/svg+xml"), NO_STORE], body)
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
