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
const FORMAT: u32 = 4;

#[derive(serde::Serialize, serde::Deserialize)]
struct Body {
    format: u32,
    index: SourceIndex,
}

#[derive(serde::Deserialize)]
struct Doc {
    cloudify: Body,
}

/// The indexes of all files of one aggregation, in one binary file.
///
/// Warm start-up of a 2000-file dataset spent most of its time reading and parsing 2000 JSON
/// entries. This entry holds the same indexes in one postcard blob, keyed by the dataset's
/// source patterns and valid only while the expanded file list — every path, size and mtime,
/// in order — is exactly the one it was made from. The per-file JSON entries stay the
/// interoperable form (kerchunk references); this one is only an accelerator, so any doubt
/// (other version, unreadable, different files) means "ignore it".
#[derive(serde::Serialize, serde::Deserialize)]
struct AggregateEntry {
    format: u32,
    version: String,
    files: Vec<SourceFile>,
    indexes: Vec<SourceIndex>,
}

/// A directory of per-file index entries (and per-aggregation accelerators).
#[derive(Debug, Clone)]
pub struct IndexCache {
    dir: PathBuf,
    aggregate_dir: PathBuf,
}

impl IndexCache {
    /// Uses `dir/index` and `dir/aggregate` (created on first write).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.join("index"),
            aggregate_dir: dir.join("aggregate"),
        }
    }

    fn aggregate_entry(&self, sources: &[String]) -> PathBuf {
        let mut h = Sha256::new();
        for s in sources {
            h.update(s.as_bytes());
            h.update([0]);
        }
        let hex: String = h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect();
        self.aggregate_dir.join(format!("{hex}.bin"))
    }

    /// The indexes of `files` (the expansion of `sources`), if an aggregate entry was made
    /// from exactly these file versions.
    pub fn load_aggregate(&self, sources: &[String], files: &[SourceFile]) -> Option<Vec<SourceIndex>> {
        let bytes = std::fs::read(self.aggregate_entry(sources)).ok()?;
        let entry: AggregateEntry = match postcard::from_bytes(&bytes) {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!("ignoring unreadable aggregate index entry: {e}");
                return None;
            }
        };
        let same = entry.format == FORMAT
            && entry.version == env!("CARGO_PKG_VERSION")
            && entry.files == files
            && entry.indexes.len() == files.len()
            && entry.indexes.iter().zip(files).all(|(i, f)| *i.file == *f);
        same.then_some(entry.indexes)
    }

    /// Stores the indexes of one aggregation (failures are logged, not fatal).
    pub fn store_aggregate(&self, sources: &[String], indexes: &[SourceIndex]) {
        let entry = AggregateEntry {
            format: FORMAT,
            version: env!("CARGO_PKG_VERSION").to_string(),
            files: indexes.iter().map(|i| (*i.file).clone()).collect(),
            indexes: indexes.to_vec(),
        };
        let target = self.aggregate_entry(sources);
        let result = (|| -> anyhow::Result<()> {
            std::fs::create_dir_all(&self.aggregate_dir)?;
            let bytes = postcard::to_allocvec(&entry)?;
            let tmp = target.with_extension(format!("{}.tmp", std::process::id()));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &target)?;
            Ok(())
        })();
        if let Err(e) = result {
            tracing::warn!(dir = %self.aggregate_dir.display(), "cannot write aggregate index cache: {e}");
        }
    }

    /// Where the dataset-level kerchunk Parquet references of dataset `name` with this
    /// fingerprint (sources' identities and server version) are kept: a changed source gives
    /// a new fingerprint, so a directory is never stale for the dataset it is looked up for.
    pub fn refs_dir(&self, name: &str, fingerprint: u64) -> PathBuf {
        self.dir
            .with_file_name("refs")
            .join(format!("{name}-{fingerprint:016x}.parq"))
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

/// Opens one file through the cache without writing its entry: `Ok((index, true))` when it
/// was indexed afresh and still needs [`IndexCache::store`] (see [`store_in_background`]).
pub fn open_cached_deferred(
    file: Arc<SourceFile>,
    cache: Option<&IndexCache>,
) -> Result<(SourceIndex, bool), super::SourceError> {
    if let Some(c) = cache
        && let Some(mut idx) = c.load(&file)
    {
        super::rebind(&mut idx, &file);
        return Ok((idx, false));
    }
    Ok((super::open_file(file)?, true))
}

/// Writes per-file entries on a background thread.
///
/// With the native HDF5 reader, creating 2000 small cache files (and building their kerchunk
/// references) took longer than indexing the files: the start-up wall time was the file
/// system's. The server is ready as soon as the indexes are in memory and the aggregate
/// entry is written (a restart is then warm); the per-file entries are the interoperable
/// form and the accelerator for partly changed file sets, and can follow. The process waits
/// for them before it exits (`background::wait`); each entry is written atomically.
pub fn store_in_background(cache: &IndexCache, indexes: Vec<SourceIndex>) {
    if indexes.is_empty() {
        return;
    }
    let c = cache.clone();
    crate::background::spawn("index-cache-writer", move || {
        for idx in &indexes {
            c.store(idx);
        }
    });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn copy_testfile(dir: &Path, name: &str) -> PathBuf {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/source/testdata/cdf2.nc");
        let dst = dir.join(name);
        std::fs::copy(src, &dst).expect("copy test file");
        dst
    }

    fn index(path: &Path) -> SourceIndex {
        let file = Arc::new(SourceFile::stat(path.to_path_buf()).expect("stat"));
        super::super::open_file(file).expect("open test file")
    }

    #[test]
    fn aggregate_entry_round_trips_and_is_only_valid_for_the_same_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = IndexCache::new(&tmp.path().join("cache"));
        let a = copy_testfile(tmp.path(), "a.nc");
        let b = copy_testfile(tmp.path(), "b.nc");
        let sources = vec![format!("{}/*.nc", tmp.path().display())];
        let indexes = vec![index(&a), index(&b)];
        let files: Vec<SourceFile> = indexes.iter().map(|i| (*i.file).clone()).collect();
        assert!(cache.load_aggregate(&sources, &files).is_none(), "empty cache");
        cache.store_aggregate(&sources, &indexes);

        let loaded = cache
            .load_aggregate(&sources, &files)
            .expect("hit for the same files");
        assert_eq!(loaded.len(), 2);
        // The binary form carries the whole index: compare through the JSON form.
        for (x, y) in loaded.iter().zip(&indexes) {
            assert_eq!(
                serde_json::to_value(x).expect("json"),
                serde_json::to_value(y).expect("json")
            );
        }

        // Other sources, fewer files, a changed file: all misses, never a stale index.
        assert!(cache.load_aggregate(&["other/*.nc".into()], &files).is_none());
        assert!(cache.load_aggregate(&sources, &files[..1]).is_none());
        let mut changed = files.clone();
        changed[1].mtime_ns += 1;
        assert!(cache.load_aggregate(&sources, &changed).is_none());
        changed[1].mtime_ns -= 1;
        changed[1].size += 1;
        assert!(cache.load_aggregate(&sources, &changed).is_none());

        // A damaged entry is ignored, not an error.
        let entry = cache.aggregate_entry(&sources);
        std::fs::write(&entry, b"\x01\x02garbage").expect("write");
        assert!(cache.load_aggregate(&sources, &files).is_none());
    }
}
