//! What the server holds while it runs: the configured datasets and their state (opening,
//! or ready to serve with their rendered metadata and references, or failed), the worker
//! pool, metrics and the shutdown flag.
//!
//! Below every protocol: the Zarr, kerchunk, catalog and operations routes all read it, and
//! `app` fills it at start-up (and, for datasets still opening when the server listens,
//! afterwards).

pub mod chunk_cache;
pub mod datasets;
pub mod parquet;
pub mod products;

pub use datasets::{Counts, Datasets, Entry, Estimate, MAX_RETRY_AFTER, Opening, TransitionError};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::dataset::Dataset;
use crate::metrics::Metrics;
use crate::zarr::ZarrMeta;
use parquet::ParquetDir;

/// A dataset ready to serve, with its pre-rendered Zarr metadata.
#[derive(Debug)]
pub struct Served {
    /// The opened dataset.
    pub ds: Dataset,
    /// Its Zarr metadata documents, rendered once when the dataset is opened.
    pub meta: ZarrMeta,
    /// Byte-range references of the stored chunks (the `/kerchunk` route).
    pub refs: crate::kerchunk::Refs,
    /// The same references persisted as a kerchunk Parquet directory in the index cache
    /// (`/kerchunk.parq/`); written in the background after start-up, `None` without a cache.
    pub refs_parquet: Option<ParquetDir>,
    /// Bounds of this dataset's chunk keys, so that parsing a key is linear in its length.
    pub key_limits: crate::zarr::key::KeyLimits,
}

impl Served {
    /// `refs_parquet`: where the Parquet references are kept (`None` without a cache).
    pub fn new(
        ds: Dataset,
        meta: ZarrMeta,
        refs: crate::kerchunk::Refs,
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
            refs_parquet: refs_parquet.map(ParquetDir::new),
            key_limits,
        }
    }
}

/// Everything handlers need.
#[derive(Debug)]
pub struct AppState {
    /// Datasets in configuration order, each with its state; shared with the threads that
    /// open datasets in the background.
    pub datasets: Arc<Datasets>,
    /// Pool for reading and decoding chunks, sized to the cores: decoding is CPU-bound and
    /// must not block the async runtime.
    pub pool: rayon::ThreadPool,
    /// Prometheus metrics of this server.
    pub metrics: Metrics,
    /// Set on SIGTERM/SIGINT: `/readyz` answers 503 while open connections drain.
    pub shutdown: ShutdownFlag,
    /// Ad-hoc groupby products built so far (bounded).
    pub products: products::Products,
    /// Most bytes of source data one computed chunk may read (`--max-source-bytes`; 0:
    /// no limit): a request for more is answered 413 without reading.
    pub max_source_bytes: u64,
    /// Encoded computed chunks kept for the next request (`--compute-cache-bytes`).
    pub compute_cache: chunk_cache::ChunkCache,
    /// Who may read which dataset (`DatasetSpec::access`); `http::auth` enforces it.
    pub access: crate::access::Access,
    /// Where the map page (`/datasets/{id}/map`) loads its JS map library (Leaflet) from
    /// (`--map-js-url`); its CSS is the same URL with `.css` for `.js`.
    pub map_js_url: String,
}

/// Default of `--map-js-url`: Leaflet from a public CDN (nothing third-party is served by
/// cloudify itself).
pub const DEFAULT_MAP_JS_URL: &str = "https://unpkg.com/leaflet@1.9.4/dist/leaflet.js";

/// Default of `--max-source-bytes`: 2 GiB of stored (compressed) source data per computed
/// chunk, a few seconds of decoding on a few cores.
pub const DEFAULT_MAX_SOURCE_BYTES: u64 = 2 << 30;

impl AppState {
    /// A snapshot of the state of dataset `id`; `None` if no dataset of that id is configured.
    pub fn entry(&self, id: &str) -> Option<Entry> {
        self.datasets.get(id)
    }

    /// Runs CPU/IO work on the pool and awaits it. A panic in `f` (a bug) is caught and
    /// reported as `None`, so one bad request can never take the server down.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let span = cloudify_telemetry::traced_span();
        self.pool.spawn(move || {
            let _in = span.entered();
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
            let span = cloudify_telemetry::traced_span();
            tokio::task::spawn_blocking(move || span.in_scope(f)).await.ok()
        } else {
            self.run(f).await
        }
    }
}

/// Whether the server is shutting down, shared with the handlers (`/readyz`).
#[derive(Debug, Clone, Default)]
pub struct ShutdownFlag(Arc<AtomicBool>);

impl ShutdownFlag {
    /// True once shutdown has started.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Marks the shutdown as started (the signal handler calls it); never reset.
    pub fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}
