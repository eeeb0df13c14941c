//! Prometheus metrics of the operator, served on `/metrics` by [`crate::probes`].

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// The operator's metrics, in their own registry (no process-global state, so tests can make
/// as many as they like).
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles started.
    pub reconciles: IntCounter,
    /// Reconciles that ended in an error (retried with backoff), by error kind.
    pub errors: IntCounterVec,
    /// Wall time of a reconcile.
    pub duration: Histogram,
    /// 1 while this replica holds the leader lease (or runs without leader election).
    pub leader: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounter::new(
            "cloudify_operator_reconciles_total",
            "Reconciles of CloudifyDatasets started",
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "cloudify_operator_reconcile_errors_total",
                "Reconciles that failed and are retried with backoff, by error kind",
            ),
            &["error"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "cloudify_operator_reconcile_duration_seconds",
                "Duration of a reconcile",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )?;
        let leader = IntGauge::new(
            "cloudify_operator_leader",
            "1 while this replica is the leader and reconciles",
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        Ok(Self {
            registry,
            reconciles,
            errors,
            duration,
            leader,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!("encoding metrics: {e}");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}
