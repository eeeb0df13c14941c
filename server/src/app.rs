//! Opening every configured dataset into the server state.

use std::sync::Arc;
use std::time::Instant;

use cloudify_crds::DatasetSpec;
use rayon::prelude::*;

use crate::metrics::Metrics;
use crate::open::cache::IndexCache;
use crate::open::{OpenError, open_with_views};
use crate::state::{AppState, Datasets, Entry, Served};

/// The server state, and which failed datasets failed because their sources could not be
/// resolved at all.
pub struct Loaded {
    /// The datasets, each opened (`Ready`) or kept with its failure reason (`Failed`).
    pub state: AppState,
    /// Failed datasets whose sources could not be found, listed, reached or recognised (a
    /// missing file or object, a glob matching nothing, access denied): the command or
    /// config names something that is not there. Datasets whose files exist but cannot be
    /// read (truncated, corrupt, not aggregatable) are not listed.
    pub sources_not_found: Vec<String>,
}

/// Opens all datasets (in parallel). A dataset that fails is kept as `Failed` with its
/// reason, so it is reported rather than silently missing, and the others still serve.
pub fn load(specs: &[DatasetSpec], threads: usize, cache: Option<&IndexCache>) -> anyhow::Result<AppState> {
    Ok(load_all(specs, threads, cache)?.state)
}

/// [`load`], also telling which datasets failed for want of their sources.
pub fn load_all(specs: &[DatasetSpec], threads: usize, cache: Option<&IndexCache>) -> anyhow::Result<Loaded> {
    hdf5::silence_errors(true);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("cloudify-io-{i}"))
        // libnetcdf probes optional attributes and lets HDF5 print each miss to stderr;
        // those are not errors. Real failures still come back as error codes.
        .start_handler(|_| hdf5::silence_errors(true))
        // Without a handler rayon aborts the process on a panic in a spawned job.
        .panic_handler(|_| {
            tracing::error!("a worker job panicked (bug); the request failed, the server keeps serving");
        })
        .build()?;
    let opened: Vec<(String, Entry, bool)> = pool.install(|| {
        specs
            .par_iter()
            .map(|spec| {
                let t0 = Instant::now();
                match open_with_views(spec, cache) {
                    Ok((ds, views)) => {
                        tracing::info!(dataset = %spec.name, files = ds.files.len(), views = views.len(), ms = t0.elapsed().as_millis() as u64, "dataset ready");
                        for (v, why) in &ds.skipped {
                            tracing::warn!(dataset = %spec.name, variable = %v, "not served: {why}");
                        }
                        // each view follows its dataset, as a dataset of its own
                        let mut out = vec![(spec.name.clone(), ready(ds, cache), false)];
                        out.extend(views.into_iter().map(|v| (v.name.clone(), ready(v, cache), false)));
                        out
                    }
                    Err(e) => {
                        tracing::error!(dataset = %spec.name, "failed to open: {e}");
                        let not_found = matches!(e, OpenError::Source { .. });
                        vec![(spec.name.clone(), Entry::Failed(e.to_string()), not_found)]
                    }
                }
            })
            .collect::<Vec<_>>()
            .into_iter()
            .flatten()
            .collect()
    });
    let sources_not_found = opened
        .iter()
        .filter(|(_, _, nf)| *nf)
        .map(|(n, _, _)| n.clone())
        .collect();
    let entries: Vec<(String, Entry)> = opened.into_iter().map(|(n, e, _)| (n, e)).collect();
    let access = crate::access::Access::from_specs(specs)?;
    let metrics = Metrics::new()?;
    let datasets = Datasets::new(entries).with_gauge(metrics.datasets.clone());
    Ok(Loaded {
        state: AppState {
            datasets: Arc::new(datasets),
            pool,
            metrics,
            shutdown: Default::default(),
            products: Default::default(),
            max_source_bytes: crate::state::DEFAULT_MAX_SOURCE_BYTES,
            compute_cache: crate::state::chunk_cache::ChunkCache::new(
                crate::state::chunk_cache::DEFAULT_COMPUTE_CACHE_BYTES,
            ),
            access,
            map_js_url: crate::state::DEFAULT_MAP_JS_URL.to_string(),
        },
        sources_not_found,
    })
}

/// A dataset ready to serve: its Zarr metadata and references rendered once.
pub fn ready(ds: crate::dataset::Dataset, cache: Option<&IndexCache>) -> Entry {
    let meta = crate::zarr::render(&ds);
    let refs = crate::kerchunk::build(&ds);
    let refs_parquet = cache.map(|c| c.refs_dir(&ds.name, ds.fingerprint));
    let served = Arc::new(Served::new(ds, meta, refs, refs_parquet));
    persist_refs(&served);
    Entry::Ready(served)
}

/// Writes the dataset's references as kerchunk Parquet into the index cache, unless this
/// version is there already, on a thread of its own: start-up does not wait for it (the
/// route answers 503 until it is complete; the directory appears atomically), exit does.
/// Failures and a directory that vanishes later are handled by the route
/// (`http::parquet`).
fn persist_refs(served: &Arc<Served>) {
    crate::state::parquet::availability(served);
}
