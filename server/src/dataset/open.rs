//! DatasetSpec → files → indexes → [`Dataset`].

use std::path::PathBuf;
use std::sync::Arc;

use rayon::prelude::*;

use super::Dataset;
use super::aggregate::{AggregateError, build};
use crate::source::cache::{IndexCache, open_cached};
use crate::source::{SourceError, SourceFile};

/// Why a dataset cannot be opened. Messages name the source or file.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("sources[{index}] '{pattern}': {reason}")]
    Source {
        index: usize,
        pattern: String,
        reason: String,
    },
    #[error("{0}")]
    File(#[from] SourceError),
    #[error("{0}")]
    Aggregate(#[from] AggregateError),
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Expands the spec's sources (paths, `file://` URLs, globs) into a sorted, de-duplicated
/// list of files. A pattern that matches nothing is an error: silently serving fewer files
/// than the provider meant would be lost data.
pub fn expand_sources(sources: &[String]) -> Result<Vec<PathBuf>, OpenError> {
    let mut out = Vec::new();
    for (index, s) in sources.iter().enumerate() {
        let err = |reason: String| OpenError::Source {
            index,
            pattern: s.clone(),
            reason,
        };
        let p = if let Some(rest) = s.strip_prefix("file://") {
            rest.to_string()
        } else if let Some((scheme, _)) = s.split_once("://") {
            return Err(err(format!(
                "scheme '{scheme}://' is not supported yet (use a local path or file://)"
            )));
        } else {
            s.clone()
        };
        if has_glob(&p) {
            let paths = glob::glob(&p).map_err(|e| err(format!("invalid glob: {e}")))?;
            let mut matched: Vec<PathBuf> = Vec::new();
            for m in paths {
                let m = m.map_err(|e| err(e.to_string()))?;
                if m.is_file() {
                    matched.push(m);
                }
            }
            if matched.is_empty() {
                return Err(err("matched no files".into()));
            }
            matched.sort();
            out.extend(matched);
        } else {
            let pb = PathBuf::from(&p);
            if !pb.is_file() {
                return Err(err(if pb.exists() {
                    "is not a regular file".into()
                } else {
                    "no such file".into()
                }));
            }
            out.push(pb);
        }
    }
    let mut seen = std::collections::HashSet::new();
    let mut uniq = Vec::new();
    // Canonical paths de-duplicate files named twice (overlapping patterns, symlinks).
    // Resolving each directory once instead of every path cuts thousands of syscalls from a
    // large aggregation's start-up; only symlinked files need a full resolution of their own.
    let mut dirs: std::collections::HashMap<PathBuf, PathBuf> = std::collections::HashMap::new();
    for p in out {
        let canon = canonical(&p, &mut dirs).unwrap_or(p);
        if seen.insert(canon.clone()) {
            uniq.push(canon);
        }
    }
    Ok(uniq)
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
/// cached index) and combines them.
pub fn open_dataset_cached(
    spec: &cloudify_crds::DatasetSpec,
    cache: Option<&IndexCache>,
) -> Result<Dataset, OpenError> {
    let kind = crate::source::formats::kind_of(spec);
    if kind != crate::source::formats::Kind::Netcdf {
        // Reference sets and Zarr stores: no index cache (opening them reads no library).
        let indexes = crate::source::formats::open_other(spec, kind)?;
        return Ok(build(spec, indexes)?);
    }
    let t0 = std::time::Instant::now();
    let paths = expand_sources(&spec.sources)?;
    let t1 = std::time::Instant::now();
    let files = paths
        .into_par_iter()
        .map(SourceFile::stat)
        .collect::<Result<Vec<_>, SourceError>>()?;
    let cached = cache.and_then(|c| c.load_aggregate(&spec.sources, &files));
    let indexes = match cached {
        Some(indexes) => indexes,
        None => {
            let indexes = files
                .into_par_iter()
                .map(|f| open_cached(Arc::new(f), cache))
                .collect::<Result<Vec<_>, SourceError>>()?;
            if let Some(c) = cache {
                c.store_aggregate(&spec.sources, &indexes);
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
