//! Prometheus metrics of the data server.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// The server's metrics, registered in their own registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders (this server's own, not prometheus' global default).
    pub registry: Registry,
    /// Requests by kind (metadata/chunk) and status code.
    pub requests: IntCounterVec,
    /// Time to produce one chunk (read + decode + encode).
    pub chunk_seconds: Histogram,
    /// Bytes of chunk payload sent.
    pub chunk_bytes: IntCounter,
    /// Configured datasets by state (ready/failed).
    pub datasets: IntGaugeVec,
    /// Computed chunks answered from the compute cache.
    pub compute_cache_hits: IntCounter,
    /// Computed chunks not in the compute cache (computed, then kept).
    pub compute_cache_misses: IntCounter,
    /// Entries evicted from the compute cache to make room.
    pub compute_cache_evictions: IntCounter,
    /// Bytes held by the compute cache.
    pub compute_cache_bytes: IntGauge,
    /// Entries held by the compute cache.
    pub compute_cache_entries: IntGauge,
    /// Computations of computed chunks actually run (concurrent misses of one chunk share one).
    pub chunk_computations: IntCounter,
    /// Requests that waited for another request's computation of the same chunk.
    pub chunk_computation_waits: IntCounter,
    /// Chunks of ad-hoc products computed ahead of their requests, when the product was opened.
    pub chunk_prefetches: IntCounter,
    /// Computed chunks refused (413) for reading more than `--max-source-bytes`.
    pub source_bytes_refused: IntCounter,
}

impl Metrics {
    /// Creates and registers every metric; fails only on an invalid or duplicate metric definition (a bug).
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("cloudify_requests_total", "Zarr requests by kind and HTTP status"),
            &["kind", "code"],
        )?;
        let chunk_seconds = Histogram::with_opts(
            HistogramOpts::new("cloudify_chunk_seconds", "Time to produce one chunk").buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )?;
        let chunk_bytes = IntCounter::new("cloudify_chunk_bytes_total", "Chunk payload bytes sent")?;
        let datasets = IntGaugeVec::new(
            Opts::new("cloudify_datasets", "Configured datasets by state"),
            &["state"],
        )?;
        let compute_cache_hits = IntCounter::new(
            "cloudify_compute_cache_hits_total",
            "Computed chunks answered from the compute cache",
        )?;
        let compute_cache_misses = IntCounter::new(
            "cloudify_compute_cache_misses_total",
            "Computed chunks not found in the compute cache",
        )?;
        let compute_cache_evictions = IntCounter::new(
            "cloudify_compute_cache_evictions_total",
            "Compute cache entries evicted to make room",
        )?;
        let compute_cache_bytes =
            IntGauge::new("cloudify_compute_cache_bytes", "Bytes held by the compute cache")?;
        let compute_cache_entries = IntGauge::new(
            "cloudify_compute_cache_entries",
            "Entries held by the compute cache",
        )?;
        let chunk_computations = IntCounter::new(
            "cloudify_chunk_computations_total",
            "Computations of computed chunks run (concurrent requests of one chunk share one)",
        )?;
        let chunk_computation_waits = IntCounter::new(
            "cloudify_chunk_computation_waits_total",
            "Requests answered by another request's computation of the same chunk",
        )?;
        let chunk_prefetches = IntCounter::new(
            "cloudify_chunk_prefetches_total",
            "Chunks of ad-hoc products computed ahead of their requests when the product was opened",
        )?;
        let source_bytes_refused = IntCounter::new(
            "cloudify_source_bytes_refused_total",
            "Computed chunks refused for reading more than --max-source-bytes",
        )?;
        for m in [
            &compute_cache_hits,
            &compute_cache_misses,
            &compute_cache_evictions,
            &source_bytes_refused,
            &chunk_computations,
            &chunk_computation_waits,
            &chunk_prefetches,
        ] {
            registry.register(Box::new(m.clone()))?;
        }
        registry.register(Box::new(compute_cache_bytes.clone()))?;
        registry.register(Box::new(compute_cache_entries.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(chunk_seconds.clone()))?;
        registry.register(Box::new(chunk_bytes.clone()))?;
        registry.register(Box::new(datasets.clone()))?;
        let store = crate::storage::metrics();
        registry.register(Box::new(store.operations.clone()))?;
        registry.register(Box::new(store.seconds.clone()))?;
        registry.register(Box::new(store.bytes.clone()))?;
        registry.register(Box::new(store.requests.clone()))?;
        let decoded = crate::chunk::cache::metrics();
        registry.register(Box::new(decoded.hits.clone()))?;
        registry.register(Box::new(decoded.misses.clone()))?;
        registry.register(Box::new(decoded.bytes.clone()))?;
        registry.register(Box::new(decoded.budget.clone()))?;
        let tape = crate::storage::tape::metrics();
        registry.register(Box::new(tape.queued.clone()))?;
        registry.register(Box::new(tape.jobs.clone()))?;
        registry.register(Box::new(tape.seconds.clone()))?;
        registry.register(Box::new(tape.cache_bytes.clone()))?;
        registry.register(Box::new(tape.evictions.clone()))?;
        registry.register(Box::new(tape.failures.clone()))?;
        registry.register(Box::new(tape.unavailable.clone()))?;
        registry.register(Box::new(tape.archives_failing.clone()))?;
        Ok(Self {
            registry,
            requests,
            chunk_seconds,
            chunk_bytes,
            datasets,
            compute_cache_hits,
            compute_cache_misses,
            compute_cache_evictions,
            compute_cache_bytes,
            compute_cache_entries,
            source_bytes_refused,
            chunk_computations,
            chunk_computation_waits,
            chunk_prefetches,
        })
    }

    /// Text exposition format.
    pub fn render(&self) -> String {
        let enc = prometheus::TextEncoder::new();
        enc.encode_to_string(&self.registry.gather()).unwrap_or_default()
    }
}
