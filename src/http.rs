//! The read-only HTTP endpoint: /metrics, /healthz, /status. Handlers read the last
//! snapshot and the metric atomics; they never call NVML or wait on the run loop.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;

#[derive(Clone)]
pub struct Shared {
    pub metrics: Arc<Metrics>,
    /// The /status document, replaced whole by the run loop.
    pub status: Arc<RwLock<serde_json::Value>>,
}

/// Binds `addr` and serves until the process ends. Returns the bound address.
pub async fn serve(addr: SocketAddr, shared: Shared) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let m = shared.metrics.clone();
    let st = shared.status.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        m.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/status",
            get(move || {
                let st = st.clone();
                async move {
                    let body = st
                        .read()
                        .map(|v| v.to_string())
                        .unwrap_or_else(|_| "{}".into());
                    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
                }
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(local)
}
