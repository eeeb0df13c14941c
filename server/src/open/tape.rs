//! netCDF sources in a tape archive: indexed from their staged copies, once.
//!
//! A dataset whose `sources` are netCDF files in a tape archive (`storage.tape`, sources
//! named by their archive paths) cannot be indexed without the files' bytes. An index made
//! earlier — by an earlier start, or by any run that indexed the file at that same path
//! before it went to tape, with the same cache directory — is in the index cache under the
//! archive path: then the dataset opens with no recall at
//! all (archived files do not change in place; a new version is a new path). Files without
//! an entry are recalled together (one batch: per tape, as the driver allows), indexed from
//! their staged copies while those are pinned, and their entries written, so the next start
//! needs no recall. Reads then go through the stager like those of any tape reference.
//!
//! Opening waits at most `tape.indexWaitSeconds` for the recalls: a recall that takes longer
//! fails the dataset, naming the file and the job (the recall goes on); a failed recall fails
//! it with the archive's reason. The server does not wait for such an opening to listen:
//! [`needs_recall`] tells `app` before opening which datasets will wait on the archive, and
//! those open in the background while the others serve.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudify_crds::{DatasetSpec, TapeSpec};

use super::OpenError;
use super::cache::IndexCache;
use crate::source::{SourceFile, SourceIndex, rebind};
use crate::storage::tape::{Stager, stager_for};
use crate::storage::{RemoteObject, Store};

/// The archive path source `s` (number `index`) names, or why it names none.
fn archive_path(index: usize, s: &str) -> Result<&str, OpenError> {
    let p = s.strip_prefix("file://").unwrap_or(s);
    let why = if !p.starts_with('/') {
        "a source on tape is an archive path (absolute, starting with '/')"
    } else if p.contains(['*', '?', '[']) {
        "a source on tape is named in full: archives are not listed, so a glob cannot be expanded without recalls"
    } else {
        return Ok(p);
    };
    Err(OpenError::Source {
        index,
        pattern: s.to_string(),
        reason: why.into(),
    })
}

/// Whether opening `spec` will recall files from tape before it can finish: netCDF sources
/// on tape, all named correctly (else the opening fails at once), at least one without an
/// index in `cache`. Such an opening waits on the archive for minutes to hours, so the
/// server opens the dataset in the background instead of holding its start for it.
pub fn needs_recall(spec: &DatasetSpec, cache: Option<&IndexCache>) -> bool {
    if spec.storage.as_ref().and_then(|s| s.tape.as_ref()).is_none()
        || super::formats::kind_of(spec) != super::formats::Kind::Netcdf
    {
        return false;
    }
    let mut paths = Vec::with_capacity(spec.sources.len());
    for (index, s) in spec.sources.iter().enumerate() {
        match archive_path(index, s) {
            Ok(p) => paths.push(p),
            Err(_) => return false,
        }
    }
    paths
        .iter()
        .any(|p| cache.is_none_or(|c| !c.has_archived(Path::new(p))))
}

/// `Retry-After` for requests to a dataset whose opening waits on a recall: the archive's
/// configured estimate (`tape.retryAfterSeconds`), as for a chunk whose file is nearline.
pub fn retry_after(tape: &TapeSpec) -> u64 {
    crate::storage::tape::Limits::of(tape).retry_after
}

/// A live estimate of how long an opening still waits: the tape driver's estimate of the
/// recall in progress. Asked each time an answer is made, since it changes as the recall
/// proceeds (and is unknown while the recall is queued). Defined here, below `state` (which
/// keeps one per opening dataset), because opening is what knows the recall.
pub trait Estimate: Send + Sync + std::fmt::Debug {
    /// Seconds until the awaited work should be done, if the one doing it says.
    fn seconds_left(&self) -> Option<u64>;
}

/// The recall an opening of `spec` waits on, as an [`Estimate`]: the tape driver's estimate
/// for the dataset's files (the longest, as the opening waits for all of them).
#[derive(Debug)]
struct RecallEstimate {
    stager: Arc<Stager>,
    paths: Vec<String>,
}

impl Estimate for RecallEstimate {
    fn seconds_left(&self) -> Option<u64> {
        self.stager.eta(&self.paths)
    }
}

/// Where an opening of `spec` that waits on a recall ([`needs_recall`]) finds the archive's
/// current estimate, so that `Retry-After` follows the recall rather than a configured guess;
/// `None` when the dataset is not on tape or its sources or driver are wrong (the opening
/// then fails at once, saying so).
pub fn recall_estimate(spec: &DatasetSpec) -> Option<Arc<dyn Estimate>> {
    let tape = spec.storage.as_ref()?.tape.as_ref()?;
    let paths = spec
        .sources
        .iter()
        .enumerate()
        .map(|(i, s)| archive_path(i, s).map(str::to_string))
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    // the stager of the staging directory, the one the opening recalls through
    let stager = stager_for(tape).ok()?;
    Some(Arc::new(RecallEstimate { stager, paths }))
}

/// The indexes of the archived netCDF files `sources` (archive paths), in source order.
pub fn open_indexes(
    sources: &[String],
    tape: &TapeSpec,
    cache: Option<&IndexCache>,
) -> Result<Vec<SourceIndex>, OpenError> {
    let mut paths = Vec::with_capacity(sources.len());
    for (index, s) in sources.iter().enumerate() {
        let p = archive_path(index, s)?;
        if !paths.iter().any(|q: &String| q == p) {
            paths.push(p.to_string());
        }
    }
    let stager = stager_for(tape).map_err(|e| OpenError::Tape(format!("storage.tape: {e}")))?;
    if let Some(p) = paths.first() {
        stager.watch(p);
    }
    let store = Arc::new(Store::tape(stager.clone()));
    let handle = |path: &str, size: u64, mtime_ns: i64| {
        Arc::new(SourceFile {
            path: PathBuf::from(path),
            size,
            mtime_ns,
            etag: None,
            inode: None,
            remote: Some(Arc::new(RemoteObject {
                store: store.clone(),
                location: object_store::path::Path::from(path),
            })),
        })
    };

    let mut found: Vec<Option<SourceIndex>> = paths
        .iter()
        .map(|p| {
            let mut idx = cache?.load_archived(Path::new(p))?;
            let file = handle(p, idx.file.size, idx.file.mtime_ns);
            rebind(&mut idx, &file);
            Some(idx)
        })
        .collect();
    let missing: Vec<String> = paths
        .iter()
        .zip(&found)
        .filter(|(_, f)| f.is_none())
        .map(|(p, _)| p.clone())
        .collect();
    if !missing.is_empty() {
        tracing::info!(
            files = missing.len(),
            indexed = paths.len() - missing.len(),
            "netCDF files on tape without an index: recalling them to index them"
        );
        // All at once, so the batcher plans them as one batch (per tape, few jobs).
        stager.stage(&missing);
        let deadline = Instant::now() + Duration::from_secs(tape.index_wait_seconds.unwrap_or(3600));
        for (p, slot) in paths.iter().zip(found.iter_mut()) {
            if slot.is_none() {
                *slot = Some(index_staged(&stager, p, deadline, cache, &handle)?);
            }
        }
    }
    Ok(found.into_iter().flatten().collect())
}

/// Waits (until `deadline`) for archived file `path` to be staged and indexes the staged
/// copy while it is pinned; the index names the archive path and reads through the stager.
fn index_staged(
    stager: &Arc<Stager>,
    path: &str,
    deadline: Instant,
    cache: Option<&IndexCache>,
    handle: &dyn Fn(&str, u64, i64) -> Arc<SourceFile>,
) -> Result<SourceIndex, OpenError> {
    let wait = deadline.saturating_duration_since(Instant::now());
    let pin = stager.acquire_within(path, wait).map_err(|e| {
        OpenError::Tape(match e {
            crate::storage::tape::TapeError::Nearline { .. } => {
                format!("not indexed yet, its files are on tape: {e}; the index is built when the recall is done (start again then)")
            }
            other => other.to_string(),
        })
    })?;
    let local = SourceFile::stat(pin.path.clone())
        .map_err(|e| OpenError::Tape(format!("{path}: staged copy {}: {e}", pin.path.display())))?;
    let (size, mtime_ns) = (local.size, local.mtime_ns);
    let mut idx = crate::open::file::open_file(Arc::new(local))
        .map_err(|e| OpenError::Tape(format!("{path} (indexed from its staged copy): {e}")))?;
    drop(pin);
    rebind(&mut idx, &handle(path, size, mtime_ns));
    if let Some(c) = cache {
        c.store(&idx);
    }
    tracing::info!(
        file = path,
        size,
        "indexed a netCDF file on tape from its staged copy"
    );
    Ok(idx)
}
