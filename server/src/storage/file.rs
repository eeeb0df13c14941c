//! Identity of a source file: which version of its bytes an index describes.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::RemoteObject;

/// A local file that cannot be `stat`ed (missing, not a regular file, no permission).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct StatError {
    /// The file, for messages.
    pub path: PathBuf,
    /// What `stat` said.
    pub source: std::io::Error,
}

/// Identity of one source file: used for ETags and to detect changed files.
///
/// For an object-store source, `path` holds its URL (`s3://bucket/key`), `mtime_ns` its
/// last-modified time and `etag` its ETag; `remote` is how to read it (not part of the
/// identity, not persisted). A local file also has its [`Inode`] (from [`SourceFile::stat`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceFile {
    /// Local path, or the object's URL (`s3://bucket/key`) for an object-store source.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time in nanoseconds since the Unix epoch (an object's last-modified time).
    pub mtime_ns: i64,
    /// Always written (no `skip_serializing_if`): the aggregate index cache uses postcard,
    /// a format in which every field must be present.
    #[serde(default)]
    pub etag: Option<String>,
    /// What `stat` said about a local file when it was indexed; `None` for objects and for
    /// identities not taken from one file's `stat` (temporary copies, reference sets).
    #[serde(default)]
    pub inode: Option<Inode>,
    /// How to read an object-store source (`None` for a local file); attached at open, not part of
    /// the identity and not persisted.
    #[serde(skip)]
    pub remote: Option<Arc<RemoteObject>>,
}

/// The `stat` fields that tell one version of a local file from another beyond size and
/// mtime, which `touch -r`, `cp -p` or `rsync -t` reproduce on different bytes: a file
/// replaced by `mv` has another inode, and any write, `touch` or `utimes` moves the
/// status-change time (ctime), which no unprivileged call can set back.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Inode {
    /// `st_dev`. Checked while this process serves the file, but not part of the identity
    /// (equality, hash, so ETags and the index cache): another host mounting the same file
    /// system — a replica sharing the cache — numbers its devices differently.
    pub dev: u64,
    /// `st_ino`: a file replaced by `mv` (or re-created) has another.
    pub ino: u64,
    /// `st_ctime` in nanoseconds since the Unix epoch: moved by any write, `touch` or `utimes`.
    pub ctime_ns: i64,
}

impl PartialEq for SourceFile {
    fn eq(&self, o: &Self) -> bool {
        self.path == o.path
            && self.size == o.size
            && self.mtime_ns == o.mtime_ns
            && self.etag == o.etag
            && self.inode.map(|i| (i.ino, i.ctime_ns)) == o.inode.map(|i| (i.ino, i.ctime_ns))
    }
}

impl Eq for SourceFile {}

impl std::hash::Hash for SourceFile {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.path.hash(h);
        self.size.hash(h);
        self.mtime_ns.hash(h);
        self.etag.hash(h);
        self.inode.map(|i| (i.ino, i.ctime_ns)).hash(h);
    }
}

impl SourceFile {
    /// Identity of a local file from known size and mtime (no `stat`, so no [`Inode`]: it
    /// is never checked for changes).
    pub fn local(path: PathBuf, size: u64, mtime_ns: i64) -> Self {
        Self {
            path,
            size,
            mtime_ns,
            etag: None,
            inode: None,
            remote: None,
        }
    }

    /// Stats a file to record its identity.
    pub fn stat(path: PathBuf) -> Result<Self, StatError> {
        let meta = std::fs::metadata(&path).map_err(|source| StatError {
            path: path.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(StatError {
                path,
                source: std::io::Error::other("not a regular file"),
            });
        }
        let (size, mtime_ns, inode) = local_identity(&meta);
        Ok(Self {
            path,
            size,
            mtime_ns,
            etag: None,
            inode: Some(inode),
            remote: None,
        })
    }

    /// How the local file this identity was recorded from differs now, given a fresh
    /// `stat`/`fstat` of it (`None`: the same version, or an identity that is not a local
    /// file's `stat`, which cannot be checked).
    ///
    /// Serving reads chunks at the offsets found when the file was indexed; a file that was
    /// rewritten, replaced or even only touched since may hold other bytes there, so it is
    /// refused rather than decoded with a stale index (or served under its old ETag).
    pub fn local_change(&self, meta: &std::fs::Metadata) -> Option<String> {
        let was = self.inode.filter(|_| self.remote.is_none())?;
        let (size, mtime_ns, now) = local_identity(meta);
        let mut what = Vec::new();
        if (now.dev, now.ino) != (was.dev, was.ino) {
            what.push(format!(
                "replaced: device/inode {}/{} is now {}/{}",
                was.dev, was.ino, now.dev, now.ino
            ));
        }
        if size != self.size {
            what.push(format!("size {} is now {size}", self.size));
        }
        if mtime_ns != self.mtime_ns {
            what.push(format!("mtime {} ns is now {mtime_ns} ns", self.mtime_ns));
        }
        if now.ctime_ns != was.ctime_ns {
            what.push(format!("ctime {} ns is now {} ns", was.ctime_ns, now.ctime_ns));
        }
        (!what.is_empty()).then(|| what.join(", "))
    }
}

/// Nanoseconds since the epoch (0 before it, which no data file has).
fn epoch_ns(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec).max(0)
}

/// Size, mtime and [`Inode`] of a local file's metadata.
fn local_identity(meta: &std::fs::Metadata) -> (u64, i64, Inode) {
    use std::os::unix::fs::MetadataExt as _;
    let inode = Inode {
        dev: meta.dev(),
        ino: meta.ino(),
        ctime_ns: epoch_ns(meta.ctime(), meta.ctime_nsec()),
    };
    (meta.len(), epoch_ns(meta.mtime(), meta.mtime_nsec()), inode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(f: &SourceFile) -> u64 {
        use std::hash::{Hash as _, Hasher as _};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        f.hash(&mut h);
        h.finish()
    }

    /// ETags derive from this hash (the dataset fingerprint): a file of the same size and
    /// mtime but another inode or ctime gets new ones; another host's device number does not.
    #[test]
    fn identity_covers_inode_and_ctime_but_not_device() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").expect("write");
        let f = SourceFile::stat(p.clone()).expect("stat");
        let i = f.inode.expect("stat records the inode");
        let meta = std::fs::metadata(&p).expect("stat");
        assert_eq!(f.local_change(&meta), None);
        let with = |inode: Inode| SourceFile {
            inode: Some(inode),
            ..f.clone()
        };
        for other in [
            Inode { ino: i.ino + 1, ..i },
            Inode {
                ctime_ns: i.ctime_ns + 1,
                ..i
            },
        ] {
            assert_ne!(with(other), f);
            assert_ne!(hash(&with(other)), hash(&f));
            assert!(with(other).local_change(&meta).is_some());
        }
        let moved = with(Inode { dev: i.dev + 1, ..i });
        assert_eq!(moved, f);
        assert_eq!(hash(&moved), hash(&f));
        // ... but while serving, another device is another file
        assert!(moved.local_change(&meta).expect("changed").contains("replaced"));
        // identities not taken from a stat are never checked
        let plain = SourceFile::local(p, 3, 0);
        assert_eq!(plain.local_change(&meta), None);
    }
}
