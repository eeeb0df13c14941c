//! Opening: DatasetSpec → files → indexes → [`Dataset`].
//!
//! The one path every dataset is opened by: sources expanded once (globs, object listings,
//! reference sets, Zarr stores, Icechunk repositories), each file opened through the index
//! cache ([`cache`]) by its format's reader ([`file`], [`formats`]), then aggregated.

pub mod cache;
pub mod expand;
pub mod file;
pub mod formats;
pub mod tape;

use std::path::PathBuf;
use std::sync::Arc;

use rayon::prelude::*;

use crate::dataset::Dataset;
use crate::dataset::aggregate::{AggregateError, build};
use crate::source::{SourceError, SourceFile};
use cache::{IndexCache, store_in_background};
use expand::{Want, expand_local};
use file::open_cached_deferred;

/// Why a dataset cannot be opened. Messages name the source or file.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A source entry of the spec cannot be expanded into files (nothing matches, unreadable
    /// directory, unknown scheme).
    #[error("sources[{index}] '{pattern}': {reason}")]
    Source {
        /// Position of the entry in the spec's `sources`.
        index: usize,
        /// The entry as written (path, glob or URL).
        pattern: String,
        /// Why it cannot be expanded.
        reason: String,
    },
    /// A source file cannot be opened or indexed.
    #[error("{0}")]
    File(#[from] SourceError),
    /// The files cannot be combined into one dataset.
    #[error("{0}")]
    Aggregate(#[from] AggregateError),
    /// The spec's processing cannot be applied (names the field).
    #[error("{0}")]
    Processing(#[from] crate::processing::ProcessingError),
    /// netCDF files on tape cannot be indexed (still being recalled, recall failed,
    /// misconfigured driver): names the file and the archive's reason or job.
    #[error("{0}")]
    Tape(String),
}

/// Expands the spec's sources (paths, `file://` URLs, globs) into a sorted, de-duplicated
/// list of files. A pattern that matches nothing is an error: silently serving fewer files
/// than the provider meant would be lost data.
pub fn expand_sources(sources: &[String]) -> Result<Vec<PathBuf>, OpenError> {
    let mut out = Vec::new();
    for (index, s) in sources.iter().enumerate() {
        out.extend(expand_local(index, s, Want::Files)?);
    }
    Ok(dedup_local(out))
}

fn dedup_local(paths: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut seen = std::collections::HashSet::new();
    let mut uniq = Vec::new();
    // Canonical paths de-duplicate files named twice (overlapping patterns, symlinks).
    // Resolving each directory once instead of every path cuts thousands of syscalls from a
    // large aggregation's start-up; only symlinked files need a full resolution of their own.
    let mut dirs: std::collections::HashMap<PathBuf, PathBuf> = std::collections::HashMap::new();
    for p in paths {
        let canon = canonical(&p, &mut dirs).unwrap_or(p);
        if seen.insert(canon.clone()) {
            uniq.push(canon);
        }
    }
    uniq
}

/// A source file found by expanding the spec.
enum Found {
    Local(PathBuf),
    /// An object with the identity it was listed with.
    Remote(SourceFile),
}

/// Expands local and object-store sources, in order. Objects of one bucket/container/host
/// share one store (and its concurrency limit).
fn expand_all(spec: &cloudify_crds::DatasetSpec) -> Result<Vec<Found>, OpenError> {
    let mut stores: std::collections::HashMap<String, Arc<crate::storage::Store>> = Default::default();
    let mut local = Vec::new();
    let mut out = Vec::new();
    let mut seen_urls = std::collections::HashSet::new();
    for (index, s) in spec.sources.iter().enumerate() {
        let err = |reason: String| OpenError::Source {
            index,
            pattern: s.clone(),
            reason,
        };
        match crate::storage::parse_object_url(s).map_err(err)? {
            None => local.extend(expand_local(index, s, Want::Files)?),
            Some(url) => {
                let store = match stores.get(&url.base) {
                    Some(st) => st.clone(),
                    None => {
                        let st = crate::storage::build_store(&url, spec.storage.as_ref()).map_err(err)?;
                        stores.insert(url.base.clone(), st.clone());
                        st
                    }
                };
                for f in crate::storage::expand(&url, &store).map_err(err)? {
                    if seen_urls.insert(f.path.clone()) {
                        out.push(Found::Remote(f));
                    }
                }
            }
        }
    }
    // Local files first in their given order (as before), then objects in source order.
    let mut all: Vec<Found> = dedup_local(local).into_iter().map(Found::Local).collect();
    all.extend(out);
    Ok(all)
}

/// `std::fs::canonicalize(p)`, resolving each parent directory only once.
fn canonical(
    p: &std::path::Path,
    dirs: &mut std::collections::HashMap<PathBuf, PathBuf>,
) -> std::io::Result<PathBuf> {
    let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
        return std::fs::canonicalize(p);
    };
    if std::fs::symlink_metadata(p)?.file_type().is_symlink() {
        return std::fs::canonicalize(p);
    }
    let dir = match dirs.get(parent) {
        Some(d) => d.clone(),
        None => {
            let d = std::fs::canonicalize(if parent.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                parent
            })?;
            dirs.insert(parent.to_path_buf(), d.clone());
            d
        }
    };
    Ok(dir.join(name))
}

/// Opens a dataset without an index cache.
pub fn open_dataset(spec: &cloudify_crds::DatasetSpec) -> Result<Dataset, OpenError> {
    open_dataset_cached(spec, None)
}

/// Opens a dataset: expands its sources, indexes the files in parallel (or loads their
/// cached index), combines them and applies the spec's processing.
pub fn open_dataset_cached(
    spec: &cloudify_crds::DatasetSpec,
    cache: Option<&IndexCache>,
) -> Result<Dataset, OpenError> {
    let ds = open_sources(spec, cache)?;
    match &spec.processing {
        Some(p) => Ok(crate::processing::apply(ds, p)?),
        None => Ok(ds),
    }
}

/// [`open_dataset_cached`], and the dataset's views (`processing.views`), each a dataset
/// of its own (`{id}.{view}`). A view that cannot be built fails the dataset, naming it.
pub fn open_with_views(
    spec: &cloudify_crds::DatasetSpec,
    cache: Option<&IndexCache>,
) -> Result<(Dataset, Vec<Dataset>), OpenError> {
    let ds = open_dataset_cached(spec, cache)?;
    let views = match &spec.processing {
        Some(p) if !p.views.is_empty() => crate::processing::views(&ds, p)?,
        _ => Vec::new(),
    };
    Ok((ds, views))
}

/// The dataset as its sources hold it.
fn open_sources(spec: &cloudify_crds::DatasetSpec, cache: Option<&IndexCache>) -> Result<Dataset, OpenError> {
    let kind = crate::open::formats::kind_of(spec);
    if kind != crate::open::formats::Kind::Netcdf {
        // Reference sets and Zarr stores: no index cache (opening them reads no library).
        let indexes = crate::open::formats::open_other(spec, kind)?;
        return Ok(build(spec, indexes)?);
    }
    if let Some(tape) = spec.storage.as_ref().and_then(|s| s.tape.as_ref()) {
        // netCDF files in a tape archive: from the index cache, else indexed once staged.
        let indexes = tape::open_indexes(&spec.sources, tape, cache)?;
        return Ok(build(spec, indexes)?);
    }
    let t0 = std::time::Instant::now();
    let found = expand_all(spec)?;
    let t1 = std::time::Instant::now();
    let all_local = found.iter().all(|f| matches!(f, Found::Local(_)));
    let files = found
        .into_par_iter()
        .map(|f| match f {
            Found::Local(p) => SourceFile::stat(p).map_err(SourceError::from),
            Found::Remote(file) => Ok(file),
        })
        .collect::<Result<Vec<_>, SourceError>>()?;
    // The aggregate entry is for local files only: it cannot carry the object-store handles
    // remote sources are read through (those come from the listing, per start).
    let cached = cache
        .filter(|_| all_local)
        .and_then(|c| c.load_aggregate(&spec.sources, &files));
    let indexes = match cached {
        Some(indexes) => indexes,
        None => {
            let tmp_dir = cache.map_or_else(std::env::temp_dir, IndexCache::download_dir);
            let opened = files
                .into_par_iter()
                .map(|f| {
                    if f.remote.is_some() {
                        crate::open::file::open_remote(Arc::new(f), cache, &tmp_dir).map(|i| (i, false))
                    } else {
                        open_cached_deferred(Arc::new(f), cache)
                    }
                })
                .collect::<Result<Vec<_>, SourceError>>()?;
            let fresh: Vec<_> = opened
                .iter()
                .filter(|(_, f)| *f)
                .map(|(i, _)| i.clone())
                .collect();
            let indexes: Vec<_> = opened.into_iter().map(|(i, _)| i).collect();
            if let Some(c) = cache {
                if all_local {
                    c.store_aggregate(&spec.sources, &indexes);
                }
                store_in_background(c, fresh);
            }
            indexes
        }
    };
    let t2 = std::time::Instant::now();
    let ds = build(spec, indexes)?;
    tracing::debug!(
        dataset = %spec.name,
        expand_ms = (t1 - t0).as_millis() as u64,
        index_ms = (t2 - t1).as_millis() as u64,
        combine_ms = t2.elapsed().as_millis() as u64,
        "opened"
    );
    Ok(ds)
}
