//! The persisted chunk index: one file per source, keyed by the source's path (or object
//! URL) and checked against its size and mtime (and ETag for objects), so restarts and other replicas skip the libraries entirely
//! and a changed file is always re-indexed.
//!
//! Each cache file is a kerchunk/fsspec reference document (JSON v1) for that one source —
//! usable as is with `fsspec.filesystem("reference", fo=...)` — plus a `cloudify` member
//! holding the exact index (attribute types, filter masks, storage layout) that references
//! cannot express.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::{SourceFile, SourceIndex};

/// Bump when the index layout changes: older entries are then ignored and rewritten.
const FORMAT: u32 = 3;

#[derive(serde::Serialize, serde::Deserialize)]
struct Body {
    format: u32,
    index: SourceIndex,
}

#[derive(serde::Deserialize)]
struct Doc {
    cloudify: Body,
}

/// A directory of per-file index entries.
#[derive(Debug, Clone)]
pub struct IndexCache {
    dir: PathBuf,
}

impl IndexCache {
    /// Uses `dir/index` (created on first write).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.join("index"),
        }
    }

    /// Where temporary copies of remote objects go while they are indexed (next to the
    /// cache, which has room for indexes; `/tmp` may be a small RAM disk).
    pub fn download_dir(&self) -> PathBuf {
        self.dir.with_file_name("downloads")
    }

    fn entry(&self, path: &Path) -> PathBuf {
        let h = Sha256::digest(path.as_os_str().as_encoded_bytes());
        let hex: String = h.iter().take(16).map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{hex}.json"))
    }

    /// The cached index of `file`, if present and made from the same file version.
    pub fn load(&self, file: &SourceFile) -> Option<SourceIndex> {
        let text = std::fs::read(self.entry(&file.path)).ok()?;
        let doc: Doc = match serde_json::from_slice(&text) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(path = %file.path.display(), "ignoring unreadable index cache entry: {e}");
                return None;
            }
        };
        if doc.cloudify.format != FORMAT || *doc.cloudify.index.file != *file {
            return None;
        }
        Some(doc.cloudify.index)
    }

    /// Stores the index of one file. Failures (read-only cache, full disk) only cost the
    /// next start some time, so they are logged, not fatal.
    pub fn store(&self, index: &SourceIndex) {
        if let Err(e) = self.try_store(index) {
            tracing::warn!(dir = %self.dir.display(), "cannot write index cache: {e}");
        }
    }

    fn try_store(&self, index: &SourceIndex) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let spec = cloudify_crds::DatasetSpec::new("file", vec![index.file.path.display().to_string()]);
        let ds = crate::dataset::aggregate::build(&spec, vec![index.clone()])?;
        let refs = crate::refs::build(&ds);
        let body = serde_json::to_string(&Body {
            format: FORMAT,
            index: index.clone(),
        })?;
        let doc = refs.to_json_with(&[("cloudify", body)]);
        let target = self.entry(&index.file.path);
        // Unique temp name: several replicas may share one cache directory.
        let tmp = target.with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(&tmp, doc)?;
        std::fs::rename(&tmp, &target)?;
        Ok(())
    }
}

/// Opens one file through the cache.
pub fn open_cached(
    file: Arc<SourceFile>,
    cache: Option<&IndexCache>,
) -> Result<SourceIndex, super::SourceError> {
    if let Some(c) = cache
        && let Some(mut idx) = c.load(&file)
    {
        super::rebind(&mut idx, &file);
        return Ok(idx);
    }
    let idx = super::open_file(file)?;
    if let Some(c) = cache {
        c.store(&idx);
    }
    Ok(idx)
}
