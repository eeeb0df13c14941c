//! The persisted chunk index: one file per source, keyed by the source's path (or object
//! URL) and checked against its size and mtime, and its inode and ctime for local files (ETag
//! for objects), so restarts and other replicas skip the libraries entirely and a changed
//! file is always re-indexed — also one replaced by a file of the same size and mtime
//! (`touch -r`, `cp -p`, `rsync -t`), which size and mtime alone would take for the old one.
//!
//! Each cache file is a kerchunk/fsspec reference document (JSON v1) for that one source —
//! usable as is with `fsspec.filesystem("reference", fo=...)` — plus a `cloudify` member
//! holding the exact index (attribute types, filter masks, storage layout) that references
//! cannot express.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::source::{SourceFile, SourceIndex, rebind};

/// Bump when the index layout changes: older entries are then ignored and rewritten.
/// 5: source identities carry the local file's inode and ctime.
/// 6: float32 attributes keep their width (`AttrValue::Floats32`); older entries widened them.
const FORMAT: u32 = 6;

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
/// source patterns and valid only while the expanded file list — every path, size, mtime,
/// inode and ctime, in order — is exactly the one it was made from. The per-file JSON entries stay the
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
        if !same {
            return None;
        }
        // Serve with the identities just taken (their device numbers are this host's, which
        // the changed-file checks compare with), one shared `Arc` per file.
        let mut indexes = entry.indexes;
        for (idx, f) in indexes.iter_mut().zip(files) {
            rebind(idx, &Arc::new(f.clone()));
        }
        Some(indexes)
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

    /// The cached index of the file at archive path `path` of a tape archive, whatever its
    /// size and time: archived files are not changed in place (a new version is a new path),
    /// and the point is to learn the layout without recalling the file to compare.
    pub fn load_archived(&self, path: &Path) -> Option<SourceIndex> {
        let text = std::fs::read(self.entry(path)).ok()?;
        let doc: Doc = match serde_json::from_slice(&text) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(path = %path.display(), "ignoring unreadable index cache entry: {e}");
                return None;
            }
        };
        (doc.cloudify.format == FORMAT && doc.cloudify.index.file.path == path).then_some(doc.cloudify.index)
    }

    /// Whether an entry for archive path `path` is there, without reading it: enough to tell
    /// at start-up which datasets on tape will have to recall files to open (an entry that
    /// turns out unreadable only makes that opening slower than expected).
    pub fn has_archived(&self, path: &Path) -> bool {
        self.entry(path).is_file()
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
        let refs = crate::kerchunk::build(&ds);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Inode;

    fn copy_testfile(dir: &Path, name: &str) -> PathBuf {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/source/testdata/cdf2.nc");
        let dst = dir.join(name);
        std::fs::copy(src, &dst).expect("copy test file");
        dst
    }

    fn index(path: &Path) -> SourceIndex {
        let file = Arc::new(SourceFile::stat(path.to_path_buf()).expect("stat"));
        crate::open::file::open_file(file).expect("open test file")
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

    fn set_mtime(path: &Path, t: std::time::SystemTime) {
        let f = std::fs::File::options().write(true).open(path).expect("open");
        f.set_times(std::fs::FileTimes::new().set_modified(t))
            .expect("set mtime");
    }

    /// Coarse file timestamps tick every few milliseconds: a change must come later.
    fn later() {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    /// A file replaced by one of the same size and mtime (`touch -r`, `cp -p`), in place or
    /// by `mv`, is not the version the entry was made from: a miss, also after a restart
    /// (a new `IndexCache` over the same directory), never the old index.
    #[test]
    fn per_file_entry_is_keyed_on_inode_and_ctime() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("cache");
        let a = copy_testfile(tmp.path(), "a.nc");
        let idx = index(&a);
        IndexCache::new(&dir).store(&idx);
        let stat = || SourceFile::stat(a.clone()).expect("stat");
        assert!(IndexCache::new(&dir).load(&stat()).is_some(), "same file: hit");
        let mtime = std::fs::metadata(&a).and_then(|m| m.modified()).expect("mtime");

        // in place, same size, mtime set back
        later();
        let bytes = std::fs::read(&a).expect("read");
        std::fs::write(&a, &bytes).expect("rewrite");
        set_mtime(&a, mtime);
        let now = stat();
        assert_eq!((now.size, now.mtime_ns), (idx.file.size, idx.file.mtime_ns));
        assert!(IndexCache::new(&dir).load(&now).is_none(), "touch -r: miss");

        // re-indexed: a hit again, for the new version
        IndexCache::new(&dir).store(&index(&a));
        assert!(IndexCache::new(&dir).load(&stat()).is_some());

        // a copy moved over it, same size and mtime
        later();
        let copy = copy_testfile(tmp.path(), "copy.nc");
        set_mtime(&copy, mtime);
        std::fs::rename(&copy, &a).expect("rename");
        let now = stat();
        assert_eq!((now.size, now.mtime_ns), (idx.file.size, idx.file.mtime_ns));
        assert!(IndexCache::new(&dir).load(&now).is_none(), "mv: miss");
    }

    #[test]
    fn aggregate_entry_is_keyed_on_inode_and_ctime_but_not_device() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = IndexCache::new(&tmp.path().join("cache"));
        let a = copy_testfile(tmp.path(), "a.nc");
        let sources = vec![a.display().to_string()];
        let indexes = vec![index(&a)];
        let files: Vec<SourceFile> = indexes.iter().map(|i| (*i.file).clone()).collect();
        cache.store_aggregate(&sources, &indexes);
        assert!(cache.load_aggregate(&sources, &files).is_some());

        let with_inode = |f: fn(&mut Inode)| {
            let mut changed = files.clone();
            let mut i = changed[0].inode.expect("a local file has an inode");
            f(&mut i);
            changed[0].inode = Some(i);
            changed
        };
        assert!(
            cache
                .load_aggregate(&sources, &with_inode(|i| i.ctime_ns += 1))
                .is_none()
        );
        assert!(
            cache
                .load_aggregate(&sources, &with_inode(|i| i.ino += 1))
                .is_none()
        );
        // Another host numbers the shared file system's device differently: still a hit,
        // and the indexes carry the identity given (this host's device).
        let other_dev = with_inode(|i| i.dev += 1);
        let loaded = cache
            .load_aggregate(&sources, &other_dev)
            .expect("hit on another device number");
        assert_eq!(
            loaded[0].file.inode.map(|i| i.dev),
            other_dev[0].inode.map(|i| i.dev)
        );

        // the real thing: rewritten with the same size and mtime
        let mtime = std::fs::metadata(&a).and_then(|m| m.modified()).expect("mtime");
        later();
        std::fs::write(&a, std::fs::read(&a).expect("read")).expect("rewrite");
        set_mtime(&a, mtime);
        let now = vec![SourceFile::stat(a.clone()).expect("stat")];
        assert!(cache.load_aggregate(&sources, &now).is_none());
    }
}
