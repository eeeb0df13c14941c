//! Object-store traffic counters, process-wide.

use std::sync::OnceLock;

/// Object-store traffic, process-wide (stores are shared by datasets and built before any
/// server state exists); the server registers these collectors in its own registry.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    /// Operations by store (`scheme://bucket`), kind and outcome (ok, not_found, changed,
    /// denied, timeout, error), counted after object_store's own retries.
    pub operations: prometheus::IntCounterVec,
    /// Duration of one operation (including retries and coalesced range requests).
    pub seconds: prometheus::HistogramVec,
    /// Bytes fetched, by store.
    pub bytes: prometheus::IntCounterVec,
    /// Ranged GET requests sent, by store: one `get_ranges` operation may make several (or
    /// one for several ranges), and round trips are what indexing over a network costs.
    pub requests: prometheus::IntCounterVec,
}

/// The process's object-store metrics.
#[allow(
    clippy::expect_used,
    reason = "fixed metric names and label sets: construction fails only on a programming error, which the first test that reads a store finds"
)]
pub fn metrics() -> &'static StoreMetrics {
    static M: OnceLock<StoreMetrics> = OnceLock::new();
    M.get_or_init(|| {
        // Fixed names and label sets: construction cannot fail.
        let operations = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "cloudify_object_store_operations_total",
                "Object-store operations by store, kind and outcome (after retries)",
            ),
            &["store", "op", "outcome"],
        )
        .expect("object store metric definition");
        let seconds = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new(
                "cloudify_object_store_seconds",
                "Duration of one object-store operation, retries included",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["op"],
        )
        .expect("object store metric definition");
        let bytes = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "cloudify_object_store_bytes_total",
                "Bytes fetched from object stores (as transferred: coalesced gaps included)",
            ),
            &["store"],
        )
        .expect("object store metric definition");
        let requests = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "cloudify_object_store_range_requests_total",
                "Ranged GET requests sent to object stores (after coalescing, before retries)",
            ),
            &["store"],
        )
        .expect("object store metric definition");
        StoreMetrics {
            operations,
            seconds,
            bytes,
            requests,
        }
    })
}
