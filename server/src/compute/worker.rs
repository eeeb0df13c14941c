//! `cloudify worker`: a stateless HTTP service executing units of processing work for
//! servers started with `--compute`. It loads the same dataset configuration as
//! `cloudify serve` (and shares or rebuilds the index cache), reads the sources itself and
//! answers one [`protocol::Request`] per `POST /v1/task` with the output of
//! [`crate::processing::dispatch::execute`] — the code the server runs in-process.
//!
//! Tasks are taken only from the server: with a [`SharedSecret`], a task without the
//! secret in `Authorization: Bearer` is answered 401 (JSON) before its body is looked at;
//! without one (`--secret-file` not given) the worker listens on a loopback address only
//! (`main` refuses anything else).
//!
//! Routes: `/v1/task`, `/healthz`, `/readyz` (the server's: ready when a dataset opened,
//! not while shutting down), `/metrics` (`cloudify_worker_*`: tasks, seconds, bytes read,
//! in flight).

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};

use super::protocol::{self, Failure, Request, VERSION, VERSION_HEADER};
use super::secret::SharedSecret;
use crate::http::error::ApiError;
use crate::processing::exec::{Locator, Output, Task};
use crate::processing::select::Selection;
use crate::state::{AppState, Entry, Opening};

/// The worker's own metrics (in the registry `/metrics` renders).
#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    /// Tasks by kind (`chunk`, `partial`) and outcome (`ok`, `failed`, `refused`,
    /// `unauthorized`, `opening`: its dataset is still opening here).
    pub tasks: IntCounterVec,
    /// Seconds per task.
    pub seconds: Histogram,
    /// Source bytes read by this process.
    pub bytes_read: IntCounter,
    /// Tasks running now.
    pub in_flight: IntGauge,
}

impl WorkerMetrics {
    fn new(r: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            tasks: IntCounterVec::new(
                Opts::new(
                    "cloudify_worker_tasks_total",
                    "Tasks executed, by kind and outcome",
                ),
                &["kind", "outcome"],
            )?,
            seconds: Histogram::with_opts(HistogramOpts::new(
                "cloudify_worker_task_seconds",
                "Time to execute one task",
            ))?,
            bytes_read: IntCounter::new(
                "cloudify_worker_bytes_read_total",
                "Bytes of source data read by this worker",
            )?,
            in_flight: IntGauge::new("cloudify_worker_in_flight", "Tasks executing now")?,
        };
        r.register(Box::new(m.tasks.clone()))?;
        r.register(Box::new(m.seconds.clone()))?;
        r.register(Box::new(m.bytes_read.clone()))?;
        r.register(Box::new(m.in_flight.clone()))?;
        Ok(m)
    }

    /// Brings `bytes_read` up to the process's count of source bytes read.
    fn sync_bytes(&self) {
        let total = crate::storage::read::BYTES_READ.load(std::sync::atomic::Ordering::Relaxed);
        let seen = self.bytes_read.get();
        if total > seen {
            self.bytes_read.inc_by(total - seen);
        }
    }
}

#[derive(Debug, Clone)]
struct Worker {
    state: Arc<AppState>,
    metrics: WorkerMetrics,
    secret: Option<Arc<SharedSecret>>,
}

/// The worker's routes over the loaded datasets in `state`; tasks must carry `secret` when
/// one is given.
pub fn router(state: Arc<AppState>, secret: Option<Arc<SharedSecret>>) -> anyhow::Result<Router> {
    let metrics = WorkerMetrics::new(&state.metrics.registry)?;
    let w = Worker {
        state: state.clone(),
        metrics,
        secret,
    };
    let m = w.metrics.clone();
    Ok(Router::new()
        .route(protocol::TASK_PATH, post(task).with_state(w))
        .route("/healthz", get(crate::http::meta::healthz))
        .route(
            "/readyz",
            get(crate::http::meta::readyz).with_state(state.clone()),
        )
        .route(
            "/metrics",
            get(move |s: State<Arc<AppState>>| {
                m.sync_bytes();
                crate::http::meta::metrics(s)
            })
            .with_state(state),
        )
        // the server's span (W3C traceparent of the task request) is the parent of ours
        .layer(axum::middleware::from_fn(crate::http::middleware::trace)))
}

fn answer(status: StatusCode, body: Vec<u8>) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(protocol::CONTENT_TYPE),
    );
    r.headers_mut().insert(VERSION_HEADER, HeaderValue::from(VERSION));
    r
}

fn respond(result: Result<Output, Failure>) -> Response {
    match protocol::encode_response(&protocol::Response {
        version: VERSION,
        result,
    }) {
        Ok(b) => answer(StatusCode::OK, b),
        Err(m) => answer(StatusCode::INTERNAL_SERVER_ERROR, m.into_bytes()),
    }
}

/// The id of the configured dataset a task reads: a product's parent (products are built
/// on request from it), else the dataset or view itself.
fn dataset_id(at: &Locator) -> &str {
    match at {
        Locator::Dataset(id) => id,
        Locator::Product { parent, .. } => parent,
    }
}

/// The answer to a task whose dataset is still opening on this worker: HTTP 503 with
/// `Retry-After`, not a [`Failure`] in a 200. The task is fine and the data exists; this
/// worker cannot read it *yet* (its files are being recalled from tape, or many are being
/// indexed), so the server must take it as "try another worker, or tell the client when to
/// ask again" — never as data, never as a final error, and never as 404 (which a Zarr client
/// reads as a chunk never written, that is fill values). The body is the reason in words.
fn opening(id: &str, o: &Opening) -> Response {
    let secs = o.retry_after_now();
    let why = format!(
        "dataset '{id}' is still opening on this worker ({}, for {} s so far); retry in {secs} s",
        o.waiting_for,
        o.seconds()
    );
    let mut r = answer(StatusCode::SERVICE_UNAVAILABLE, why.into_bytes());
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

fn failure(status: u16, message: String) -> Failure {
    Failure {
        status,
        message,
        retry_after: None,
    }
}

/// The dataset a task names, as this worker loaded it.
fn dataset(state: &AppState, at: &Locator) -> Result<Arc<crate::state::Served>, Failure> {
    let entry = |id: &str| match state.entry(id) {
        Some(Entry::Ready(s)) => Ok(s),
        Some(Entry::Failed(why)) => Err(failure(
            503,
            format!("dataset '{id}' failed to open on this worker: {why}"),
        )),
        // `task` answers 503 + Retry-After before a task gets here, and an opening dataset
        // only ever becomes ready or failed: kept for completeness, never a 404
        Some(Entry::Opening(o)) => Err(failure(
            503,
            format!(
                "dataset '{id}' is still opening on this worker ({}, for {} s so far)",
                o.waiting_for,
                o.seconds()
            ),
        )),
        None => Err(failure(
            502,
            format!("this worker has no dataset '{id}' (start it with the same configuration as the server)"),
        )),
    };
    match at {
        Locator::Dataset(id) => entry(id),
        Locator::Product {
            parent,
            var,
            coord,
            action,
            select,
        } => {
            let p = entry(parent)?;
            let sel = if select.is_empty() {
                Selection::default()
            } else {
                Selection::parse_segment(select)
                    .map_err(|e| failure(400, format!("dataset '{parent}': {e}")))?
            };
            state
                .products
                .get(&p, var, coord, action, &sel)
                .map_err(|e| failure(400, format!("dataset '{parent}': {e}")))
        }
    }
}

async fn task(State(w): State<Worker>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(secret) = &w.secret {
        let presented = headers.get(header::AUTHORIZATION);
        if !secret.accepts(presented.map(HeaderValue::as_bytes)) {
            w.metrics
                .tasks
                .with_label_values(&["unknown", "unauthorized"])
                .inc();
            // the header's value is never logged
            tracing::warn!(
                credentials = if presented.is_some() { "wrong" } else { "none" },
                "task refused: not sent with this worker's compute secret"
            );
            let mut r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this worker takes tasks only from its cloudify server: the request does not carry the compute secret (serve --compute-secret-file, the same file as the worker's --secret-file)",
            )
            .into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="cloudify-compute""#),
            );
            return r;
        }
    }
    let theirs = headers
        .get(VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok());
    if theirs != Some(VERSION) {
        let why = match theirs {
            Some(v) => protocol::mismatch(v, VERSION),
            None => format!(
                "not a compute protocol request: no {VERSION_HEADER} header (this worker speaks version {VERSION})"
            ),
        };
        w.metrics.tasks.with_label_values(&["unknown", "refused"]).inc();
        return answer(StatusCode::CONFLICT, why.into_bytes());
    }
    let req: Request = match protocol::decode(&body) {
        Ok(r) => r,
        Err(m) => {
            w.metrics.tasks.with_label_values(&["unknown", "refused"]).inc();
            return answer(StatusCode::BAD_REQUEST, m.into_bytes());
        }
    };
    if req.version != VERSION {
        w.metrics.tasks.with_label_values(&["unknown", "refused"]).inc();
        return answer(
            StatusCode::CONFLICT,
            protocol::mismatch(req.version, VERSION).into_bytes(),
        );
    }
    if w.state.shutdown.is_set() {
        // the server tries another worker
        return answer(StatusCode::SERVICE_UNAVAILABLE, b"shutting down".to_vec());
    }
    let kind = match req.task {
        Task::Chunk { .. } => "chunk",
        Task::Partial { .. } => "partial",
    };
    let id = dataset_id(req.task.locator());
    if let Some(Entry::Opening(o)) = w.state.entry(id) {
        w.metrics.tasks.with_label_values(&[kind, "opening"]).inc();
        return opening(id, &o);
    }
    w.metrics.in_flight.inc();
    let t0 = Instant::now();
    let st = w.state.clone();
    let result = w
        .state
        .run(move || {
            let span =
                tracing::debug_span!("compute.task", task = kind, dataset = tracing::field::Empty).entered();
            let s = dataset(&st, req.task.locator())?;
            span.record("dataset", s.ds.name.as_str());
            crate::processing::dispatch::execute(&s.ds, &req.task).map_err(|e| {
                let e = ApiError::from(e);
                Failure {
                    status: e.status.as_u16(),
                    message: format!("dataset '{}': {}", s.ds.name, e.message),
                    // a chunk on tape: when its recall is expected to be done
                    retry_after: e.retry_after,
                }
            })
        })
        .await
        .unwrap_or_else(|| {
            Err(failure(
                500,
                "internal error while computing the task (see worker log)".into(),
            ))
        });
    w.metrics.in_flight.dec();
    w.metrics.seconds.observe(t0.elapsed().as_secs_f64());
    let outcome = if result.is_ok() { "ok" } else { "failed" };
    w.metrics.tasks.with_label_values(&[kind, outcome]).inc();
    respond(result)
}
