//! Opening every configured dataset into the server state.
//!
//! Every dataset starts as [`Entry::Opening`] and is opened off the caller's thread; the
//! caller waits for them up to a bound ([`start`]) and then serves, so a dataset that is slow
//! to open (its files must first be recalled from tape, or there are very many of them) does
//! not hold the server's start: `/healthz` answers (the pod is not killed for not listening),
//! the other datasets serve, and the slow one answers 503 + `Retry-After` until it is ready
//! or failed.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cloudify_crds::DatasetSpec;
use rayon::prelude::*;

use crate::metrics::Metrics;
use crate::open::cache::IndexCache;
use crate::open::{OpenError, open_with_views};
use crate::state::{AppState, Datasets, Entry, Opening, Served};

/// Default of `--open-wait`: how long start-up waits for datasets to open before the
/// server listens anyway. Below Kubernetes' default liveness budget (three failed probes
/// 10 s apart, the first at start): a pod must answer `/healthz` before it is killed for
/// not listening, and killing it would only start the opening over.
pub const DEFAULT_OPEN_WAIT: Duration = Duration::from_secs(15);

/// `Retry-After` for a dataset still opening that does not wait on a tape archive: the
/// opening is reading many files or slow storage, which takes seconds to minutes.
pub const OPENING_RETRY_AFTER: u64 = 10;

/// The server state, and which failed datasets failed because their sources could not be
/// resolved at all.
pub struct Loaded {
    /// The datasets, each opened (`Ready`), kept with its failure reason (`Failed`), or
    /// still opening in the background (`Opening`).
    pub state: AppState,
    /// Datasets that failed before [`start`] returned because their sources could not be
    /// found, listed, reached or recognised (a missing file or object, a glob matching
    /// nothing, access denied): the command or config names something that is not there.
    /// Datasets whose files exist but cannot be read (truncated, corrupt, not aggregatable)
    /// are not listed.
    pub sources_not_found: Vec<String>,
}

/// Opens all datasets (in parallel) and returns once every one is ready or failed. A dataset
/// that fails is kept as `Failed` with its reason, so it is reported rather than silently
/// missing, and the others still serve.
pub fn load(specs: &[DatasetSpec], threads: usize, cache: Option<&IndexCache>) -> anyhow::Result<AppState> {
    Ok(load_all(specs, threads, cache)?.state)
}

/// [`load`], also telling which datasets failed for want of their sources.
pub fn load_all(specs: &[DatasetSpec], threads: usize, cache: Option<&IndexCache>) -> anyhow::Result<Loaded> {
    start(specs, threads, cache, None)
}

/// Starts opening every dataset and returns the state once the datasets have opened — all
/// of them with `wait` `None`. With `Some(wait)`, it returns at the latest after `wait`, and
/// at once for datasets whose opening has to recall files from tape first
/// ([`crate::open::tape::needs_recall`]): those, and any still opening after `wait`, go on
/// opening in the background as [`Entry::Opening`] and are swapped for `Ready` or `Failed`
/// when done.
///
/// Datasets open on a pool of their own (`threads` threads, ended once they are all open)
/// so that a long background opening never queues requests behind it on the serving pool;
/// openings that wait on tape run on a thread each, since they mostly sleep.
pub fn start(
    specs: &[DatasetSpec],
    threads: usize,
    cache: Option<&IndexCache>,
    wait: Option<Duration>,
) -> anyhow::Result<Loaded> {
    let t0 = Instant::now();
    hdf5::silence_errors(true);
    let pool = new_pool(threads, "cloudify-io")?;
    let metrics = Metrics::new()?;
    let access = crate::access::Access::from_specs(specs)?;

    let on_tape: Vec<bool> = specs
        .iter()
        .map(|s| crate::open::tape::needs_recall(s, cache))
        .collect();
    let mut entries = Vec::new();
    for (spec, &tape) in specs.iter().zip(&on_tape) {
        let opening = Opening {
            since: t0,
            waiting_for: if tape {
                "recalling its files from tape to index them".into()
            } else {
                "opening its files".into()
            },
            retry_after: match spec.storage.as_ref().and_then(|s| s.tape.as_ref()) {
                Some(t) if tape => crate::open::tape::retry_after(t),
                _ => OPENING_RETRY_AFTER,
            },
            estimate: if tape {
                crate::open::tape::recall_estimate(spec)
            } else {
                None
            },
        };
        for id in ids(spec) {
            entries.push((id, Entry::Opening(opening.clone())));
        }
    }
    let table = Arc::new(Datasets::new(entries).with_gauge(metrics.datasets.clone()));
    let not_found: Arc<Mutex<Vec<String>>> = Arc::default();

    let (mut slow, mut quick) = (Vec::new(), Vec::new());
    for (spec, tape) in specs.iter().zip(on_tape) {
        if tape { slow.push(spec) } else { quick.push(spec) }
    }
    let quick_ids: std::collections::HashSet<String> = quick.iter().flat_map(|s| ids(s)).collect();
    for spec in slow {
        tracing::info!(dataset = %spec.name, "netCDF files on tape without an index: the dataset opens in the background (503 + Retry-After until then)");
        let (spec, cache, table, nf) = (spec.clone(), cache.cloned(), table.clone(), not_found.clone());
        std::thread::Builder::new()
            .name(format!("cloudify-open-{}", spec.name))
            .spawn(move || {
                hdf5::silence_errors(true);
                open_into(&spec, cache.as_ref(), &table, &nf);
            })?;
    }
    if !quick.is_empty() {
        let open_pool = new_pool(threads, "cloudify-open")?;
        let specs: Vec<DatasetSpec> = quick.into_iter().cloned().collect();
        let (cache, table, nf) = (cache.cloned(), table.clone(), not_found.clone());
        std::thread::Builder::new()
            .name("cloudify-opener".into())
            .spawn(move || {
                open_pool.install(|| {
                    specs
                        .par_iter()
                        .for_each(|spec| open_into(spec, cache.as_ref(), &table, &nf));
                });
            })?;
    }
    match wait {
        None => {
            table.wait_until(None, |t| t.counts().opening == 0);
        }
        Some(w) => {
            let quick_settled = |t: &Datasets| !t.any_opening(|id| quick_ids.contains(id));
            if !table.wait_until(Some(t0 + w), quick_settled) {
                let still: Vec<&str> = table
                    .iter()
                    .filter(|(_, e)| !e.is_settled())
                    .map(|(n, _)| n)
                    .collect();
                tracing::warn!(
                    datasets = %still.join(", "),
                    waited_s = w.as_secs(),
                    "datasets still opening: serving the others; these answer 503 + Retry-After until they are open"
                );
            }
        }
    }
    let sources_not_found = not_found.lock().unwrap_or_else(PoisonError::into_inner).clone();
    Ok(Loaded {
        state: AppState {
            datasets: table,
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

/// A pool for reading, decoding or opening, `threads` wide, with HDF5's error printing off.
fn new_pool(threads: usize, name: &'static str) -> anyhow::Result<rayon::ThreadPool> {
    Ok(rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(move |i| format!("{name}-{i}"))
        // libnetcdf probes optional attributes and lets HDF5 print each miss to stderr;
        // those are not errors. Real failures still come back as error codes.
        .start_handler(|_| hdf5::silence_errors(true))
        // Without a handler rayon aborts the process on a panic in a spawned job.
        .panic_handler(|_| {
            tracing::error!("a worker job panicked (bug); the request failed, the server keeps serving");
        })
        .build()?)
}

/// The ids `spec` is served under: the dataset's, then its views' (`{id}.{view}`), as
/// [`crate::processing::views`] names them.
fn ids(spec: &DatasetSpec) -> Vec<String> {
    std::iter::once(spec.name.clone())
        .chain(
            spec.processing
                .iter()
                .flat_map(|p| p.views.keys())
                .map(|v| format!("{}.{v}", spec.name)),
        )
        .collect()
}

/// Opens `spec` (and its views) and settles their entries in `table`: ready, or failed with
/// the reason (the views with their dataset's). A panic while opening (a bug) fails the
/// dataset rather than leaving it opening for ever.
fn open_into(
    spec: &DatasetSpec,
    cache: Option<&IndexCache>,
    table: &Datasets,
    not_found: &Mutex<Vec<String>>,
) {
    let t0 = Instant::now();
    let settle = |id: &str, e: Entry| {
        if let Err(err) = table.settle(id, e) {
            tracing::error!(dataset = %id, "{err} (bug)");
        }
    };
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| open_with_views(spec, cache)));
    let why = match opened {
        Ok(Ok((ds, views))) => {
            tracing::info!(dataset = %spec.name, files = ds.files.len(), views = views.len(), ms = t0.elapsed().as_millis() as u64, "dataset ready");
            for (v, why) in &ds.skipped {
                tracing::warn!(dataset = %spec.name, variable = %v, "not served: {why}");
            }
            let mut pending = ids(spec);
            // each view follows its dataset, as a dataset of its own
            for d in std::iter::once(ds).chain(views) {
                pending.retain(|id| *id != d.name);
                let name = d.name.clone();
                settle(&name, ready(d, cache));
            }
            for id in pending {
                settle(
                    &id,
                    Entry::Failed("view not built (bug; see the server log)".into()),
                );
            }
            return;
        }
        Ok(Err(e)) => {
            tracing::error!(dataset = %spec.name, "failed to open: {e}");
            if matches!(e, OpenError::Source { .. }) {
                not_found
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(spec.name.clone());
            }
            e.to_string()
        }
        Err(_) => {
            tracing::error!(dataset = %spec.name, "opening panicked (bug)");
            "opening the dataset panicked (a bug; see the server log)".to_string()
        }
    };
    let mut ids = ids(spec).into_iter();
    if let Some(id) = ids.next() {
        settle(&id, Entry::Failed(why.clone()));
    }
    for id in ids {
        settle(
            &id,
            Entry::Failed(format!("its dataset '{}' failed to open: {why}", spec.name)),
        );
    }
}

/// A dataset ready to serve: its Zarr metadata and references rendered once.
pub fn ready(ds: crate::dataset::Dataset, cache: Option<&IndexCache>) -> Entry {
    // the decoded-chunk cache sized to hold what a served chunk of a rechunked grid reads
    // (its neighbours read the same stored chunks): the budget is process-wide
    for g in ds.root.walk() {
        for v in &g.vars {
            let ws = crate::pipeline::working_set(v);
            if ws > 0 {
                crate::chunk::cache::cache().fit(ws, &format!("'{}/{}'", ds.name, v.path));
            }
        }
    }
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
