//! HTTP surface: thin handlers over the dataset registry.

pub mod error;
pub mod meta;
pub mod middleware;
pub mod openapi;
pub mod parquet;
pub mod range;
pub mod zarr;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderName, Method, header};
use axum::routing::get;
use tower_http::cors::{Any, CorsLayer};

use crate::dataset::Dataset;
use crate::metrics::Metrics;
use crate::zarr::ZarrMeta;

/// A dataset ready to serve, with its pre-rendered Zarr metadata.
#[derive(Debug)]
pub struct Served {
    pub ds: Dataset,
    pub meta: ZarrMeta,
    /// Byte-range references of the stored chunks (the `/kerchunk` route).
    pub refs: crate::refs::Refs,
    /// The same references persisted as a kerchunk Parquet directory in the index cache
    /// (`/kerchunk.parq/`); written in the background after start-up, `None` without a cache.
    pub refs_parquet: Option<parquet::ParquetDir>,
    /// Bounds of this dataset's chunk keys, so that parsing a key is linear in its length.
    pub key_limits: crate::zarr::key::KeyLimits,
}

impl Served {
    /// `refs_parquet`: where the Parquet references are kept (`None` without a cache).
    pub fn new(
        ds: Dataset,
        meta: ZarrMeta,
        refs: crate::refs::Refs,
        refs_parquet: Option<std::path::PathBuf>,
    ) -> Self {
        let key_limits = crate::zarr::key::KeyLimits::of(
            ds.root
                .walk()
                .iter()
                .flat_map(|g| g.vars.iter().map(|v| (v.path.as_str(), v.shape.len()))),
        );
        Self {
            ds,
            meta,
            refs,
            refs_parquet: refs_parquet.map(parquet::ParquetDir::new),
            key_limits,
        }
    }
}

/// State of one configured dataset.
#[derive(Debug, Clone)]
pub enum Entry {
    Ready(Arc<Served>),
    Failed(String),
}

/// Everything handlers need.
#[derive(Debug)]
pub struct AppState {
    /// Datasets in configuration order.
    pub datasets: Vec<(String, Entry)>,
    /// Pool for reading and decoding chunks, sized to the cores: decoding is CPU-bound and
    /// must not block the async runtime.
    pub pool: rayon::ThreadPool,
    pub metrics: Metrics,
    /// Set on SIGTERM/SIGINT: `/readyz` answers 503 while open connections drain.
    pub shutdown: crate::serve::ShutdownFlag,
}

impl AppState {
    pub fn entry(&self, id: &str) -> Option<&Entry> {
        self.datasets.iter().find(|(n, _)| n == id).map(|(_, e)| e)
    }

    /// Runs CPU/IO work on the pool and awaits it. A panic in `f` (a bug) is caught and
    /// reported as `None`, so one bad request can never take the server down.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pool.spawn(move || {
            if let Ok(v) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                let _ = tx.send(v);
            }
        });
        rx.await.ok()
    }

    /// Like [`AppState::run`], for work on `ds`. Reads from object stores mostly wait on
    /// the network, so they run on tokio's blocking pool (many threads) instead of occupying
    /// the few decode workers; the store's concurrency limit bounds the requests.
    pub async fn run_for<T: Send + 'static>(
        &self,
        ds: &Dataset,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        if ds.remote {
            tokio::task::spawn_blocking(f).await.ok()
        } else {
            self.run(f).await
        }
    }
}

/// Builds the router. Layers, outermost first: CORS (on every answer, errors included),
/// request size limits, JSON bodies for axum's own errors; the chunk and metadata routes
/// answer byte ranges.
pub fn router(state: Arc<AppState>) -> Router {
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::HEAD, Method::OPTIONS])
        .allow_headers(Any)
        .expose_headers([
            header::ETAG,
            header::CONTENT_LENGTH,
            HeaderName::from_static("content-encoding"),
            header::CONTENT_RANGE,
            header::ACCEPT_RANGES,
        ]);
    // Keys and documents a client may read in parts (netCDF-C's Zarr reader, GDAL, fsspec).
    let ranged = Router::new()
        .route("/datasets/{id}/zarr/{*key}", get(zarr::zarr_key))
        .route("/datasets/{id}/kerchunk/{*key}", get(zarr::kerchunk_key))
        .route("/datasets/{id}/kerchunk.json", get(zarr::kerchunk_refs))
        .route(
            "/datasets/{id}/kerchunk.parq/{*path}",
            get(parquet::kerchunk_parquet),
        )
        .route_layer(axum::middleware::from_fn(range::ranges));
    Router::new()
        .route("/", get(meta::root))
        .route("/datasets", get(meta::list))
        .route("/status", get(meta::status))
        .route("/datasets/{id}", get(meta::summary))
        .route("/datasets/{id}/", get(meta::summary))
        .route("/datasets/{id}/keys", get(meta::keys))
        .route("/datasets/{id}/dict", get(meta::dict))
        .route("/datasets/{id}/info", get(meta::info))
        .route("/datasets/{id}/zarr", get(zarr::zarr_root))
        .route("/datasets/{id}/zarr/", get(zarr::zarr_root))
        .merge(ranged)
        .route("/datasets/{id}/stac", get(crate::catalog::routes::stac_item))
        .route(
            "/datasets/{id}/catalog.yaml",
            get(crate::catalog::routes::intake_one),
        )
        .route(
            "/stac-collection-all.json",
            get(crate::catalog::routes::stac_collection),
        )
        .route("/intake.yaml", get(crate::catalog::routes::intake_all))
        .route("/versions", get(meta::versions))
        .route("/openapi.json", get(openapi::spec))
        .route("/docs", get(openapi::docs))
        .route("/healthz", get(meta::healthz))
        .route("/readyz", get(meta::readyz))
        .route("/metrics", get(meta::metrics))
        .fallback(meta::not_found)
        .layer(axum::middleware::from_fn(middleware::json_errors))
        .layer(axum::middleware::from_fn(middleware::limits))
        .layer(cors)
        .with_state(state)
}
