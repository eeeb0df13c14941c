//! A source that is a directory of files: a local directory or an object-store prefix.
//!
//! Zarr stores, Icechunk repositories and Parquet reference directories are trees of
//! small metadata documents next to (many) chunk objects. Their readers ask a [`Tree`] for
//! documents, byte ranges and "does this exist", so one reader serves both a directory on
//! a parallel file system and `s3://bucket/run.zarr`.
//!
//! Object stores have no directories and every request costs a round trip, so a remote tree
//! answers existence questions from one listing of its prefix when the reader asks for it
//! ([`Tree::preload`]: Zarr stores, where every chunk's existence matters), and otherwise
//! with single `HEAD`s and one-page listings (Icechunk, which names the objects it needs).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use cloudify_crds::StorageSpec;

use crate::storage::{RemoteError, Store};

/// A directory of source files.
pub enum Tree {
    /// A local directory.
    Local(PathBuf),
    /// An object-store prefix, listed once on first use.
    Remote(ObjectTree),
}

/// An object prefix read as a directory.
pub struct ObjectTree {
    store: Arc<Store>,
    /// Key of the root, without a trailing `/` (`""`: the bucket itself).
    prefix: String,
    /// Every object under the root by relative key, with its size, once loaded.
    listing: OnceLock<BTreeMap<String, u64>>,
}

impl Tree {
    /// The tree a dataset source names: a local path (or `file://` URL), or an object URL
    /// whose store is built from `storage`.
    pub fn open(source: &str, storage: Option<&StorageSpec>) -> Result<Tree, String> {
        match crate::storage::parse_object_url(source)? {
            None => Ok(Tree::Local(PathBuf::from(
                source.strip_prefix("file://").unwrap_or(source),
            ))),
            Some(url) => {
                if url.has_glob() {
                    return Err(format!(
                        "'{source}': globs are not supported for directory-like sources (Zarr stores, Icechunk repositories, Parquet references); name each one"
                    ));
                }
                let store = crate::storage::build_store(&url, storage)?;
                Ok(Tree::Remote(ObjectTree {
                    store,
                    prefix: url.key.trim_end_matches('/').to_string(),
                    listing: OnceLock::new(),
                }))
            }
        }
    }

    /// A remote tree over an existing store (tests).
    pub fn remote(store: Arc<Store>, prefix: &str) -> Tree {
        Tree::Remote(ObjectTree {
            store,
            prefix: prefix.trim_matches('/').to_string(),
            listing: OnceLock::new(),
        })
    }

    /// True for an object-store prefix (reads then go through the object store, not the file
    /// system).
    pub fn is_remote(&self) -> bool {
        matches!(self, Tree::Remote(_))
    }

    /// Where `rel` is, for messages and chunk references: a local path or an object URL.
    pub fn url(&self, rel: &str) -> String {
        match self {
            Tree::Local(root) => {
                if rel.is_empty() {
                    root.to_string_lossy().into_owned()
                } else {
                    root.join(rel).to_string_lossy().into_owned()
                }
            }
            Tree::Remote(t) => match (t.prefix.is_empty(), rel.is_empty()) {
                (_, true) if t.prefix.is_empty() => t.store.base.clone(),
                (_, true) => format!("{}/{}", t.store.base, t.prefix),
                (true, false) => format!("{}/{rel}", t.store.base),
                (false, false) => format!("{}/{}/{rel}", t.store.base, t.prefix),
            },
        }
    }

    /// [`Tree::url`] as a path: the form [`super::SourceError`] and source identities use
    /// (object sources keep their URL as the path).
    pub fn path(&self, rel: &str) -> PathBuf {
        PathBuf::from(self.url(rel))
    }

    /// Lists the whole remote prefix once, so that later existence and size questions cost
    /// no requests (local trees ask the file system, which is cheap).
    pub fn preload(&self) -> Result<(), String> {
        if let Tree::Remote(t) = self {
            t.listing()?;
        }
        Ok(())
    }

    /// Fails with the store's own error (access denied, unreachable...) when the root cannot
    /// be listed, so that a reader's existence probes ("is this a repository?", which answer
    /// no on any error) do not turn wrong credentials into "not a repository".
    pub fn check_reachable(&self) -> Result<(), String> {
        match self {
            Tree::Local(_) => Ok(()),
            Tree::Remote(t) => {
                let key = t.location_str("");
                let store = t.store.clone();
                crate::storage::block_on(async move { store.any_under(&key).await })??;
                Ok(())
            }
        }
    }

    /// The file `rel`; `Ok(None)` when it does not exist.
    pub fn read(&self, rel: &str) -> Result<Option<Vec<u8>>, String> {
        match self {
            Tree::Local(root) => match std::fs::read(root.join(rel)) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("{}: {e}", self.url(rel))),
            },
            Tree::Remote(t) => {
                if let Some(l) = t.listing.get()
                    && !l.contains_key(rel)
                {
                    return Ok(None);
                }
                let loc = t.location(rel);
                let store = t.store.clone();
                match crate::storage::block_on(async move { store.get(&loc).await })? {
                    Ok(b) => Ok(Some(b.to_vec())),
                    Err(RemoteError::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    }

    /// `len` bytes of `rel` from `offset`.
    pub fn read_range(&self, rel: &str, offset: u64, len: u64) -> Result<Vec<u8>, String> {
        match self {
            Tree::Local(root) => {
                use std::os::unix::fs::FileExt as _;
                let p = root.join(rel);
                let f = std::fs::File::open(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                let n = usize::try_from(len).map_err(|_| format!("{}: range too large", p.display()))?;
                let mut buf = vec![0u8; n];
                f.read_exact_at(&mut buf, offset)
                    .map_err(|e| format!("{}: {e}", p.display()))?;
                Ok(buf)
            }
            Tree::Remote(t) => {
                let loc = t.location(rel);
                let store = t.store.clone();
                let r = vec![std::ops::Range {
                    start: offset,
                    end: offset + len,
                }];
                let got = crate::storage::block_on(async move { store.get_ranges(&loc, None, &r).await })??;
                Ok(got.into_iter().next().map(|b| b.to_vec()).unwrap_or_default())
            }
        }
    }

    /// Size of the file `rel`; `Ok(None)` when it does not exist.
    pub fn size(&self, rel: &str) -> Result<Option<u64>, String> {
        match self {
            Tree::Local(root) => match std::fs::metadata(root.join(rel)) {
                Ok(m) if m.is_file() => Ok(Some(m.len())),
                Ok(_) => Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("{}: {e}", self.url(rel))),
            },
            Tree::Remote(t) => {
                if let Some(l) = t.listing.get() {
                    return Ok(l.get(rel).copied());
                }
                let loc = t.location(rel);
                let store = t.store.clone();
                match crate::storage::block_on(async move { store.head(&loc).await })? {
                    Ok(m) => Ok(Some(m.size)),
                    Err(RemoteError::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    }

    /// Whether the file `rel` exists (errors count as "no"; reading it will name them).
    pub fn is_file(&self, rel: &str) -> bool {
        matches!(self.size(rel), Ok(Some(_)))
    }

    /// Whether anything exists below `rel` (a directory, or a prefix with objects).
    pub fn is_dir(&self, rel: &str) -> bool {
        match self {
            Tree::Local(root) => root.join(rel).is_dir(),
            Tree::Remote(t) => {
                let under = format!("{rel}/");
                if let Some(l) = t.listing.get() {
                    return l
                        .range(under.clone()..)
                        .next()
                        .is_some_and(|(k, _)| k.starts_with(&under));
                }
                let key = t.location_str(&under);
                let store = t.store.clone();
                matches!(
                    crate::storage::block_on(async move { store.any_under(&key).await }),
                    Ok(Ok(true))
                )
            }
        }
    }

    /// Names of the subdirectories of `rel` (`""`: the root).
    pub fn subdirs(&self, rel: &str) -> Result<Vec<String>, String> {
        match self {
            Tree::Local(root) => {
                let dir = root.join(rel);
                let mut out = Vec::new();
                for entry in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
                    let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
                    if entry
                        .file_type()
                        .map_err(|e| format!("{}: {e}", dir.display()))?
                        .is_dir()
                    {
                        out.push(entry.file_name().to_string_lossy().into_owned());
                    }
                }
                out.sort();
                Ok(out)
            }
            Tree::Remote(t) => {
                let under = if rel.is_empty() {
                    String::new()
                } else {
                    format!("{rel}/")
                };
                let mut out: Vec<String> = t
                    .listing()?
                    .range(under.clone()..)
                    .take_while(|(k, _)| k.starts_with(&under))
                    .filter_map(|(k, _)| k[under.len()..].split_once('/').map(|(d, _)| d.to_string()))
                    .collect();
                out.dedup();
                Ok(out)
            }
        }
    }

    /// Every file below the root whose name is one of `names`, by relative path, not
    /// descending into directories for which `skip_dir` is true (local trees only: a remote
    /// listing holds everything anyway).
    pub fn find_named(&self, names: &[&str], skip_dir: impl Fn(&str) -> bool) -> Result<Vec<String>, String> {
        let named = |rel: &str| names.contains(&rel.rsplit('/').next().unwrap_or(rel));
        match self {
            Tree::Local(root) => {
                let mut out = Vec::new();
                let mut stack = vec![String::new()];
                while let Some(dir) = stack.pop() {
                    let abs = root.join(&dir);
                    for entry in std::fs::read_dir(&abs).map_err(|e| format!("{}: {e}", abs.display()))? {
                        let entry = entry.map_err(|e| format!("{}: {e}", abs.display()))?;
                        let name = entry.file_name().to_string_lossy().into_owned();
                        let rel = if dir.is_empty() {
                            name.clone()
                        } else {
                            format!("{dir}/{name}")
                        };
                        let ft = entry.file_type().map_err(|e| format!("{}: {e}", abs.display()))?;
                        if ft.is_dir() {
                            if !skip_dir(&name) {
                                stack.push(rel);
                            }
                        } else if named(&rel) {
                            out.push(rel);
                        }
                    }
                }
                out.sort();
                Ok(out)
            }
            Tree::Remote(t) => Ok(t.listing()?.keys().filter(|k| named(k)).cloned().collect()),
        }
    }

    /// Identity of the tree for ETags and caches: the stat (or object metadata) of its
    /// marker file `rel`, under the tree's own path.
    pub fn identity(&self, rel: &str) -> Result<super::SourceFile, super::SourceError> {
        let mut file = match self {
            Tree::Local(root) => super::SourceFile::stat(root.join(rel))?,
            Tree::Remote(t) => {
                let loc = t.location(rel);
                let store = t.store.clone();
                let meta = crate::storage::block_on(async move { store.head(&loc).await })
                    .and_then(|r| r.map_err(|e| e.to_string()))
                    .map_err(|message| super::SourceError::Malformed {
                        path: self.path(rel),
                        message,
                    })?;
                let mut f = crate::storage::source_file(self.url(rel), &meta, &t.store);
                f.remote = None;
                f
            }
        };
        file.path = self.path("");
        Ok(file)
    }
}

impl ObjectTree {
    fn location_str(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }

    fn location(&self, rel: &str) -> object_store::path::Path {
        object_store::path::Path::from(self.location_str(rel))
    }

    fn listing(&self) -> Result<&BTreeMap<String, u64>, String> {
        if let Some(l) = self.listing.get() {
            return Ok(l);
        }
        let store = self.store.clone();
        let under = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let key = under.clone();
        let metas = crate::storage::block_on(async move { store.list(&key).await })??;
        let map: BTreeMap<String, u64> = metas
            .into_iter()
            .filter_map(|m| {
                let k = m.location.as_ref().strip_prefix(under.as_str())?.to_string();
                Some((k, m.size))
            })
            .collect();
        tracing::debug!(url = %format!("{}/{}", self.store.base, self.prefix), objects = map.len(), "listed");
        Ok(self.listing.get_or_init(|| map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt as _;

    fn mem_tree() -> Tree {
        let mem = Arc::new(object_store::memory::InMemory::new());
        let m = mem.clone();
        crate::storage::block_on(async move {
            for (k, v) in [
                ("data/s.zarr/.zgroup", "{}"),
                ("data/s.zarr/x/.zarray", "{\"a\": 1}"),
                ("data/s.zarr/x/0.0", "0123456789"),
                ("data/s.zarr/y/z/.zattrs", "{}"),
                ("data/s.zarr2/.zgroup", "{}"),
            ] {
                m.put(&object_store::path::Path::from(k), v.as_bytes().to_vec().into())
                    .await
                    .unwrap();
            }
        })
        .unwrap();
        let store = Arc::new(Store::new("memory://b", mem, std::time::Duration::from_secs(5)));
        Tree::remote(store, "data/s.zarr/")
    }

    #[test]
    fn remote_tree_answers_like_a_directory() {
        let t = mem_tree();
        for preload in [false, true] {
            if preload {
                t.preload().unwrap();
            }
            assert_eq!(t.read("x/.zarray").unwrap().unwrap(), b"{\"a\": 1}");
            assert_eq!(t.read("x/.zattrs").unwrap(), None);
            assert_eq!(t.read_range("x/0.0", 2, 3).unwrap(), b"234");
            assert_eq!(t.size("x/0.0").unwrap(), Some(10));
            assert!(t.is_dir("y") && t.is_dir("y/z") && !t.is_dir("x/0.0") && !t.is_dir("w"));
            // the sibling store sharing a name prefix is not part of this one
            assert!(!t.is_file("../s.zarr2/.zgroup"));
            assert_eq!(t.subdirs("").unwrap(), ["x", "y"]);
            assert_eq!(
                t.find_named(&[".zarray", ".zgroup", ".zattrs"], |_| false)
                    .unwrap(),
                [".zgroup", "x/.zarray", "y/z/.zattrs"]
            );
            assert_eq!(t.url("x/0.0"), "memory://b/data/s.zarr/x/0.0");
        }
    }

    #[test]
    fn local_tree_answers_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s.zarr");
        std::fs::create_dir_all(root.join("x/0")).unwrap();
        std::fs::write(root.join(".zgroup"), "{}").unwrap();
        std::fs::write(root.join("x/.zarray"), "{}").unwrap();
        std::fs::write(root.join("x/0/0"), "0123456789").unwrap();
        let t = Tree::Local(root.clone());
        assert_eq!(t.read_range("x/0/0", 2, 3).unwrap(), b"234");
        assert_eq!(t.read("nope").unwrap(), None);
        assert_eq!(t.size("x").unwrap(), None);
        assert_eq!(t.subdirs("").unwrap(), ["x"]);
        assert_eq!(
            t.find_named(&[".zarray", ".zgroup"], |d| d.bytes().all(|b| b.is_ascii_digit()))
                .unwrap(),
            [".zgroup", "x/.zarray"]
        );
        assert_eq!(t.identity(".zgroup").unwrap().path, root);
    }
}
