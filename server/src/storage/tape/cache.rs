//! The staging cache: recalled files under one directory, mirroring their archive paths,
//! within a byte budget.
//!
//! A recalled file is written under a temporary name and renamed when complete, so a file
//! under its archive name is always whole. Room is made by evicting the least recently used
//! files nobody is reading: a reader pins a file for the duration of its read, and a pinned
//! file is never evicted (a full cache with everything pinned refuses the new file instead).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Prefix of files being written (never taken for recalled files, removed at start-up).
pub const PART_PREFIX: &str = ".part-";

/// A new file does not fit: every byte of the budget is held by pinned files.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("staging cache full: {needed} bytes needed, {pinned} of {budget} bytes held by files being read")]
pub struct Full {
    /// Size of the file that did not fit.
    pub needed: u64,
    /// Bytes held by pinned files.
    pub pinned: u64,
    /// The budget.
    pub budget: u64,
}

#[derive(Debug)]
struct Entry {
    size: u64,
    /// Logical clock of the last use (higher: more recent).
    used: u64,
    pins: u32,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    bytes: u64,
    clock: u64,
    evictions: u64,
}

/// The staging directory and what it holds (keys: archive paths).
#[derive(Debug)]
pub struct StagingCache {
    dir: PathBuf,
    budget: u64,
    inner: Mutex<Inner>,
}

/// A file kept from eviction while it is read; unpinned when dropped.
#[derive(Debug)]
pub struct Pin {
    cache: Arc<StagingCache>,
    key: String,
    /// Where the staged copy is.
    pub path: PathBuf,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut g = self.cache.lock();
        if let Some(e) = g.entries.get_mut(&self.key) {
            e.pins = e.pins.saturating_sub(1);
        }
    }
}

impl StagingCache {
    /// A cache over `dir` (created), holding at most `budget` bytes. Files already there
    /// (from an earlier run) are taken over, oldest first in eviction order; leftovers of
    /// interrupted writes are removed.
    pub fn open(dir: &Path, budget: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let cache = Self {
            dir: dir.to_path_buf(),
            budget,
            inner: Mutex::new(Inner::default()),
        };
        let mut found = Vec::new();
        walk(dir, &mut found)?;
        let mut g = cache.lock();
        for (p, size) in found {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.starts_with(PART_PREFIX) {
                let _ = std::fs::remove_file(&p);
                continue;
            }
            let Ok(rel) = p.strip_prefix(dir) else { continue };
            let key = format!("/{}", rel.to_string_lossy());
            g.bytes += size;
            g.entries.insert(
                key,
                Entry {
                    size,
                    used: 0,
                    pins: 0,
                },
            );
        }
        drop(g);
        Ok(cache)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent counters (every update is one
        // statement): keep serving.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The staged location of archive path `key` (the archive path below the staging dir).
    pub fn path_of(&self, key: &str) -> PathBuf {
        let rel: PathBuf = Path::new(key)
            .components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .collect();
        self.dir.join(rel)
    }

    /// A temporary name next to where `key` goes (parents created).
    pub fn part_path(&self, key: &str) -> std::io::Result<PathBuf> {
        let dest = self.path_of(key);
        let parent = dest.parent().unwrap_or(&self.dir).to_path_buf();
        std::fs::create_dir_all(&parent)?;
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(parent.join(format!("{PART_PREFIX}{}-{name}", std::process::id())))
    }

    /// Pins `key` if it is staged (and still on disk: a vanished copy is forgotten, so it
    /// is recalled again).
    pub fn pin(self: &Arc<Self>, key: &str) -> Option<Pin> {
        let mut g = self.lock();
        let path = self.path_of(key);
        if !g.entries.contains_key(key) {
            return None;
        }
        if !path.is_file() {
            if let Some(e) = g.entries.remove(key) {
                g.bytes -= e.size;
            }
            return None;
        }
        g.clock += 1;
        let now = g.clock;
        let e = g.entries.get_mut(key)?;
        e.pins += 1;
        e.used = now;
        drop(g);
        Some(Pin {
            cache: self.clone(),
            key: key.to_string(),
            path,
        })
    }

    /// True when `key` is staged (no pin taken).
    pub fn contains(&self, key: &str) -> bool {
        self.lock().entries.contains_key(key)
    }

    /// Moves the complete file `part` to `key`'s place, evicting least recently used
    /// unpinned files to stay within the budget. When it cannot fit, `part` is removed
    /// and nothing is evicted.
    pub fn admit(&self, key: &str, part: &Path) -> Result<Result<(), Full>, std::io::Error> {
        let size = std::fs::metadata(part)?.len();
        let mut g = self.lock();
        if let Some(old) = g.entries.remove(key) {
            g.bytes -= old.size;
        }
        let pinned: u64 = g.entries.values().filter(|e| e.pins > 0).map(|e| e.size).sum();
        if pinned + size > self.budget {
            drop(g);
            let _ = std::fs::remove_file(part);
            return Ok(Err(Full {
                needed: size,
                pinned,
                budget: self.budget,
            }));
        }
        while g.bytes + size > self.budget {
            let victim = g
                .entries
                .iter()
                .filter(|(_, e)| e.pins == 0)
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone());
            let Some(victim) = victim else { break };
            if let Some(e) = g.entries.remove(&victim) {
                g.bytes -= e.size;
                g.evictions += 1;
                let _ = std::fs::remove_file(self.path_of(&victim));
                tracing::debug!(file = %victim, bytes = e.size, "evicted from the tape staging cache");
            }
        }
        std::fs::rename(part, self.path_of(key))?;
        g.clock += 1;
        let used = g.clock;
        g.bytes += size;
        g.entries.insert(key.to_string(), Entry { size, used, pins: 0 });
        Ok(Ok(()))
    }

    /// Bytes held, files held, files evicted so far.
    pub fn usage(&self) -> (u64, usize, u64) {
        let g = self.lock();
        (g.bytes, g.entries.len(), g.evictions)
    }

    /// The budget in bytes.
    pub fn budget(&self) -> u64 {
        self.budget
    }
}

fn walk(dir: &Path, out: &mut Vec<(PathBuf, u64)>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let ft = e.file_type()?;
        if ft.is_dir() {
            walk(&e.path(), out)?;
        } else if ft.is_file() {
            out.push((e.path(), e.metadata()?.len()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(c: &StagingCache, key: &str, n: usize) -> Result<(), Full> {
        let part = c.part_path(key).expect("part");
        std::fs::write(&part, vec![1u8; n]).expect("write");
        c.admit(key, &part).expect("io")
    }

    #[test]
    fn budget_evicts_least_recently_used_and_never_a_pinned_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Arc::new(StagingCache::open(dir.path(), 100).expect("open"));
        put(&c, "/arch/a.nc", 40).expect("fits");
        put(&c, "/arch/b.nc", 40).expect("fits");
        assert_eq!(c.usage().0, 80);
        // a is used after b: b is the least recently used
        let pin_a = c.pin("/arch/a.nc").expect("staged");
        assert!(pin_a.path.ends_with("arch/a.nc") && pin_a.path.is_file());
        put(&c, "/arch/c.nc", 40).expect("fits after evicting b");
        assert!(!c.contains("/arch/b.nc") && c.contains("/arch/a.nc"));
        assert!(!dir.path().join("arch/b.nc").exists());
        assert_eq!(c.usage(), (80, 2, 1));
        // a is pinned, c is not: a file of 60 needs both gone, a stays
        let pin_c = c.pin("/arch/c.nc").expect("staged");
        let err = put(&c, "/arch/d.nc", 70).expect_err("everything pinned");
        assert_eq!(err.pinned, 80);
        assert!(c.contains("/arch/a.nc") && c.contains("/arch/c.nc"));
        assert!(!c.contains("/arch/d.nc"));
        // nothing left behind of the refused file
        let parts: Vec<_> = std::fs::read_dir(dir.path().join("arch"))
            .expect("dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(PART_PREFIX))
            .collect();
        assert!(parts.is_empty());
        drop(pin_c);
        put(&c, "/arch/d.nc", 60).expect("c unpinned: evicted");
        assert!(c.contains("/arch/a.nc") && !c.contains("/arch/c.nc") && c.contains("/arch/d.nc"));
        drop(pin_a);
        assert!(put(&c, "/arch/e.nc", 101).is_err(), "larger than the budget");
    }

    #[test]
    fn vanished_files_are_forgotten_and_restarts_keep_whole_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let c = Arc::new(StagingCache::open(dir.path(), 1000).expect("open"));
            put(&c, "/x/1.nc", 10).expect("fits");
            put(&c, "/x/2.nc", 10).expect("fits");
            std::fs::remove_file(dir.path().join("x/2.nc")).expect("rm");
            assert!(c.pin("/x/2.nc").is_none());
            assert_eq!(c.usage().0, 10);
            std::fs::write(c.part_path("/x/3.nc").expect("part"), b"half").expect("write");
        }
        let c = Arc::new(StagingCache::open(dir.path(), 1000).expect("reopen"));
        assert_eq!(c.usage().1, 1);
        assert!(c.pin("/x/1.nc").is_some());
        assert!(c.path_of("/../../etc/passwd").starts_with(dir.path()));
    }
}
