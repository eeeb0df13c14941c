//! `/metrics`, `/healthz` and `/readyz` of the operator process (`--probe-addr`).
//!
//! `/healthz` answers as long as the process's runtime serves requests (liveness);
//! `/readyz` once the operator has connected to the API server and found the CRD — a standby
//! replica waiting for the leader lease is ready too, since it is healthy and would take over.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// State of the probe endpoints.
#[derive(Clone, Debug)]
pub struct Probes {
    pub metrics: Metrics,
    pub ready: Arc<AtomicBool>,
}

/// The probe router.
pub fn router(probes: Probes) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(probes)
}

async fn metrics(State(p): State<Probes>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        p.metrics.render(),
    )
}

async fn readyz(State(p): State<Probes>) -> impl IntoResponse {
    if p.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

/// Binds `addr` and serves the probes until `shutdown` resolves. Binding happens before this
/// returns, so a taken port is an error at start, not a silent absence of probes.
pub async fn serve(
    addr: SocketAddr,
    probes: Probes,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = router(probes);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::error!("probe server: {e}");
        }
    });
    Ok((local, task))
}
