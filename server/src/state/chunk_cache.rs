//! The compute cache (`--compute-cache-bytes`): encoded response bytes of computed chunks
//! (views, ad-hoc products, derived, BitRounded and rechunked variables), least recently
//! used first out, bounded by bytes.
//!
//! An entry is keyed by what makes its bytes: the dataset (its id and fingerprint: the
//! identities of its source files when they were indexed), the variable's pipeline
//! description ([`crate::pipeline::describe`]), the chunk key and the Zarr format. Files
//! that change under a running server keep the fingerprint they were indexed with, so a hit
//! is served only after the chunk's sources are checked unchanged (`http::zarr`), as a
//! `304 Not Modified` is: a changed file is never answered from here.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use bytes::Bytes;

use crate::zarr::key::Format;

/// Default of `--compute-cache-bytes`: 256 MiB.
pub const DEFAULT_COMPUTE_CACHE_BYTES: u64 = 256 << 20;

/// What identifies cached bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The served dataset's id (configured, view or product).
    pub dataset: String,
    /// Its fingerprint: the source files' identities when indexed.
    pub fingerprint: u64,
    /// Hash of the variable's pipeline description.
    pub pipeline: u64,
    /// The chunk key as requested.
    pub key: String,
    /// Zarr v2 or v3 (the encodings differ).
    pub format: Format,
}

impl CacheKey {
    /// Bytes an entry of this key costs besides its value (a rough account of the key and
    /// the bookkeeping, so that many tiny chunks cannot exceed the budget unseen).
    fn overhead(&self) -> u64 {
        (self.dataset.len() + self.key.len() + 128) as u64
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Key → (value, last use).
    map: HashMap<CacheKey, (Bytes, u64)>,
    /// Last use → key: the least recently used first.
    order: BTreeMap<u64, CacheKey>,
    /// Bytes held (values plus key overhead).
    bytes: u64,
    /// Use counter.
    tick: u64,
}

/// An LRU map of encoded chunks bounded by `budget` bytes (0: disabled).
#[derive(Debug, Default)]
pub struct ChunkCache {
    budget: u64,
    inner: Mutex<Inner>,
}

impl ChunkCache {
    /// A cache of at most `budget` bytes; 0 keeps nothing.
    pub fn new(budget: u64) -> Self {
        Self {
            budget,
            inner: Mutex::default(),
        }
    }

    /// Whether anything is ever kept.
    pub fn enabled(&self) -> bool {
        self.budget > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The bytes kept for `key`, marked as just used.
    pub fn get(&self, key: &CacheKey) -> Option<Bytes> {
        let mut g = self.lock();
        g.tick += 1;
        let tick = g.tick;
        let (value, old) = {
            let (v, t) = g.map.get_mut(key)?;
            let old = std::mem::replace(t, tick);
            (v.clone(), old)
        };
        if let Some(k) = g.order.remove(&old) {
            g.order.insert(tick, k);
        }
        Some(value)
    }

    /// Keeps `value` for `key`, evicting the least recently used entries until it fits.
    /// A value larger than the whole budget is not kept. Returns how many entries were
    /// evicted.
    pub fn insert(&self, key: CacheKey, value: Bytes) -> u64 {
        let cost = value.len() as u64 + key.overhead();
        if cost > self.budget {
            return 0;
        }
        let mut g = self.lock();
        if let Some((old, t)) = g.map.remove(&key) {
            g.order.remove(&t);
            g.bytes -= old.len() as u64 + key.overhead();
        }
        let mut evicted = 0;
        while g.bytes + cost > self.budget {
            let Some((_, k)) = g.order.pop_first() else {
                break;
            };
            if let Some((v, _)) = g.map.remove(&k) {
                g.bytes -= v.len() as u64 + k.overhead();
                evicted += 1;
            }
        }
        g.tick += 1;
        let tick = g.tick;
        g.order.insert(tick, key.clone());
        g.map.insert(key, (value, tick));
        g.bytes += cost;
        evicted
    }

    /// Forgets `key` (its sources changed).
    pub fn remove(&self, key: &CacheKey) {
        let mut g = self.lock();
        if let Some((v, t)) = g.map.remove(key) {
            g.order.remove(&t);
            g.bytes -= v.len() as u64 + key.overhead();
        }
    }

    /// Bytes held now (values plus key overhead).
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ds: &str, fingerprint: u64, k: &str) -> CacheKey {
        CacheKey {
            dataset: ds.into(),
            fingerprint,
            pipeline: 7,
            key: k.into(),
            format: Format::V2,
        }
    }

    fn val(n: usize, b: u8) -> Bytes {
        Bytes::from(vec![b; n])
    }

    #[test]
    fn evicts_least_recently_used_by_bytes() {
        let k = |i: u32| key("d", 1, &format!("tas/{i}.0"));
        let cost = 1000 + k(0).overhead();
        let cache = ChunkCache::new(3 * cost);
        for i in 0..3 {
            assert_eq!(cache.insert(k(i), val(1000, i as u8)), 0);
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.bytes(), 3 * cost);
        // use 0: 1 is now the least recently used
        assert_eq!(cache.get(&k(0)).expect("hit")[0], 0);
        assert_eq!(cache.insert(k(3), val(1000, 3)), 1);
        assert!(cache.get(&k(1)).is_none(), "the least recently used went first");
        assert!(cache.get(&k(0)).is_some() && cache.get(&k(2)).is_some() && cache.get(&k(3)).is_some());
        assert!(cache.bytes() <= 3 * cost);
        // a value twice as large evicts two
        assert_eq!(cache.insert(k(4), val(2000 + k(0).overhead() as usize, 4)), 2);
        assert!(cache.bytes() <= 3 * cost);
        assert_eq!(
            cache.get(&k(4)).expect("hit").len(),
            2000 + k(0).overhead() as usize
        );
        // larger than the budget: not kept, nothing evicted
        assert_eq!(cache.insert(k(5), val(4 * cost as usize, 5)), 0);
        assert!(cache.get(&k(5)).is_none());
        assert!(cache.get(&k(4)).is_some());
        // replacing a key does not count it twice
        let before = cache.bytes();
        cache.insert(k(4), val(2000 + k(0).overhead() as usize, 9));
        assert_eq!(cache.bytes(), before);
        assert_eq!(cache.get(&k(4)).expect("hit")[0], 9);
        cache.remove(&k(4));
        assert!(cache.get(&k(4)).is_none());
    }

    #[test]
    fn key_includes_source_identity_pipeline_and_format() {
        let cache = ChunkCache::new(1 << 20);
        cache.insert(key("d", 1, "tas/0.0"), val(10, 1));
        assert!(cache.get(&key("d", 1, "tas/0.0")).is_some());
        // the same chunk of the dataset opened from other file versions: a miss
        assert!(cache.get(&key("d", 2, "tas/0.0")).is_none());
        let mut other = key("d", 1, "tas/0.0");
        other.pipeline = 8;
        assert!(cache.get(&other).is_none(), "another pipeline");
        let mut v3 = key("d", 1, "tas/0.0");
        v3.format = Format::V3;
        assert!(cache.get(&v3).is_none(), "another format");
        assert!(cache.get(&key("e", 1, "tas/0.0")).is_none(), "another dataset");
    }

    #[test]
    fn disabled_keeps_nothing() {
        let cache = ChunkCache::new(0);
        assert!(!cache.enabled());
        cache.insert(key("d", 1, "x/0"), val(1, 1));
        assert!(cache.is_empty());
    }
}
