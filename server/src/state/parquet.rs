//! The kerchunk Parquet reference directory of a dataset in the index cache, and whether
//! it can be served.
//!
//! The directory is written in the background after start-up. It can also fail to be
//! written (the cache directory is not writable) or vanish later (someone cleans the
//! cache). The route then must neither say "retry shortly" forever nor log once per request:
//! a vanished directory is written again, once, on the next request; a failed write is
//! reported with its reason (503 + `Retry-After`) and tried again on a request at most once
//! per [`RETRY_INTERVAL`], so a cache made writable again recovers without a restart. Every
//! attempt logs one line.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::Served;

/// Least time between two attempts to write a dataset's Parquet references after one failed.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug)]
enum Phase {
    /// Not looked at yet.
    Unknown,
    /// A writer thread is running.
    Writing,
    /// The directory was complete when last looked at.
    Written,
    /// The last attempt failed: why and when.
    Failed { reason: String, at: Instant },
}

/// A dataset's Parquet reference directory in the index cache and whether it can be served.
#[derive(Debug)]
pub struct ParquetDir {
    /// Directory in the index cache the Parquet references are (to be) written to.
    pub dir: PathBuf,
    state: Mutex<Phase>,
    /// Least milliseconds between attempts after a failure ([`RETRY_INTERVAL`]).
    retry_ms: AtomicU64,
}

/// What the route can do now.
#[derive(Debug, PartialEq, Eq)]
pub enum Availability {
    /// Written and checked: requests are served from the directory.
    Ready,
    /// Being written; retry in about a second.
    Writing,
    /// Writing failed: the reason, and the seconds until a request tries again.
    Unavailable(String, u64),
}

impl ParquetDir {
    /// The directory `dir`, state not yet known (checked on the first request).
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            state: Mutex::new(Phase::Unknown),
            retry_ms: AtomicU64::new(RETRY_INTERVAL.as_millis() as u64),
        }
    }

    /// Changes the least time between attempts after a failure (tests: no waiting).
    pub fn set_retry_interval(&self, d: Duration) {
        self.retry_ms
            .store(d.as_millis().try_into().unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn retry(&self) -> Duration {
        Duration::from_millis(self.retry_ms.load(Ordering::Relaxed))
    }

    fn complete(&self) -> bool {
        self.dir.join(".zmetadata").is_file()
    }
}

/// Whether `s`'s Parquet references can be served, starting a writer when they are missing
/// (at start-up, after they vanished, or when the retry interval after a failure is over).
/// `None` when the server runs without a cache.
pub fn availability(s: &Arc<Served>) -> Option<Availability> {
    let p = s.refs_parquet.as_ref()?;
    let mut st = p.state.lock().unwrap_or_else(PoisonError::into_inner);
    match &*st {
        Phase::Writing => return Some(Availability::Writing),
        Phase::Written | Phase::Unknown if p.complete() => {
            *st = Phase::Written;
            return Some(Availability::Ready);
        }
        Phase::Written => {
            tracing::warn!(dataset = %s.ds.name, dir = %p.dir.display(), "Parquet references vanished from the cache; writing them again");
        }
        Phase::Unknown => {}
        Phase::Failed { reason, at } => {
            let waited = at.elapsed();
            if waited < p.retry() {
                let left = (p.retry() - waited).as_secs().max(1);
                return Some(Availability::Unavailable(reason.clone(), left));
            }
        }
    }
    *st = Phase::Writing;
    drop(st);
    let s2 = s.clone();
    if !crate::background::spawn("cloudify-refs", move || write(&s2)) {
        let reason = "cannot start a thread to write them".to_string();
        set(
            p,
            Phase::Failed {
                reason: reason.clone(),
                at: Instant::now(),
            },
        );
        return Some(Availability::Unavailable(reason, p.retry().as_secs().max(1)));
    }
    Some(Availability::Writing)
}

fn set(p: &ParquetDir, state: Phase) {
    *p.state.lock().unwrap_or_else(PoisonError::into_inner) = state;
}

/// Writes the references (on a background thread) and records the outcome, with one log line.
fn write(s: &Arc<Served>) {
    let Some(p) = &s.refs_parquet else { return };
    let t0 = Instant::now();
    match write_dir(s, &p.dir) {
        Ok(()) => {
            tracing::info!(dataset = %s.ds.name, dir = %p.dir.display(), ms = t0.elapsed().as_millis() as u64, "Parquet references written");
            set(p, Phase::Written);
        }
        Err(reason) => {
            tracing::warn!(dataset = %s.ds.name, retry_s = p.retry().as_secs(), "Parquet references unavailable: {reason}");
            set(
                p,
                Phase::Failed {
                    reason,
                    at: Instant::now(),
                },
            );
        }
    }
}

fn write_dir(s: &Served, dir: &Path) -> Result<(), String> {
    if let Some(parent) = dir.parent() {
        // create_dir_all says "File exists" when a path component is a file: name it
        if let Some(file) = parent.ancestors().find(|a| a.exists() && !a.is_dir()) {
            return Err(format!(
                "cannot create the cache directory {}: {} is not a directory",
                parent.display(),
                file.display()
            ));
        }
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create the cache directory {}: {e}", parent.display()))?;
    }
    s.refs
        .write_parquet(dir, crate::kerchunk::parquet::DEFAULT_RECORD_SIZE)
        .map_err(|e| format!("cannot write them into the cache: {e}"))
}
