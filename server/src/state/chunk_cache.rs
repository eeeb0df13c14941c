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
//!
//! Concurrent misses of one key are computed once ([`Flights`]): a client opening a product
//! with many threads, or several clients opening the same view, ask for the same chunk at
//! the same time, and each computation may read hundreds of stored chunks.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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

/// A computation that failed, as every request that waited for it answers it.
#[derive(Clone, Debug)]
pub struct Failed {
    /// The HTTP status answered.
    pub status: axum::http::StatusCode,
    /// The message answered (names the dataset, key and problem).
    pub message: String,
    /// `Retry-After` seconds, when the failure will pass (a busy or unreachable compute
    /// service).
    pub retry_after: Option<u64>,
    /// Further members of the error body (a tape file's state and recall job).
    pub detail: Option<Box<serde_json::Value>>,
}

/// What one computation of a chunk gives every request that waited for it.
pub type Computed = Result<Bytes, Failed>;

/// An LRU map of encoded chunks bounded by `budget` bytes (0: disabled), and the
/// computations of chunks in flight.
#[derive(Debug, Default)]
pub struct ChunkCache {
    budget: u64,
    inner: Mutex<Inner>,
    /// Computations running now, shared by concurrent requests of the same chunk.
    pub flights: Flights<Computed>,
    /// Products whose chunks are being computed ahead of their requests now
    /// ([`ChunkCache::warm_permit`]).
    warming: Arc<AtomicUsize>,
}

/// At most this many products are computed ahead of their requests at once: opening a
/// product costs its client nothing, so a burst of openings (a crawler) must not queue
/// unbounded work in front of the requests that want data.
pub const MAX_WARMING: usize = 2;

/// Leave to compute one product ahead of its requests; released on drop.
#[derive(Debug)]
pub struct WarmPermit(Arc<AtomicUsize>);

impl Drop for WarmPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ChunkCache {
    /// A cache of at most `budget` bytes; 0 keeps nothing.
    pub fn new(budget: u64) -> Self {
        Self {
            budget,
            inner: Mutex::default(),
            flights: Flights::default(),
            warming: Arc::default(),
        }
    }

    /// Leave to compute a product's chunks ahead of their requests, unless the cache keeps
    /// nothing (the result would be thrown away) or [`MAX_WARMING`] products are already
    /// being computed ahead.
    pub fn warm_permit(&self) -> Option<WarmPermit> {
        if !self.enabled() {
            return None;
        }
        self.warming
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_WARMING).then_some(n + 1)
            })
            .ok()
            .map(|_| WarmPermit(self.warming.clone()))
    }

    /// The budget in bytes (0: nothing is kept).
    pub fn budget(&self) -> u64 {
        self.budget
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

/// Computations in flight, one per key: the first caller of [`Flights::run`] for a key runs
/// its computation, callers arriving while it runs wait for it and get a clone of its result.
///
/// A waiter whose leader is cancelled (its client went away) runs its own computation in
/// its place (`tokio::sync::OnceCell` semantics), so nobody waits for a computation that
/// will never finish. Entries live only while their computation runs; results are kept by
/// the [`ChunkCache`], not here.
#[derive(Debug)]
pub struct Flights<T> {
    map: Mutex<HashMap<CacheKey, Arc<tokio::sync::OnceCell<T>>>>,
}

impl<T> Default for Flights<T> {
    fn default() -> Self {
        Self {
            map: Mutex::default(),
        }
    }
}

impl<T: Clone> Flights<T> {
    /// The result of `compute` for `key`, computed once for all concurrent callers; the
    /// `bool` is true for the caller whose `compute` ran.
    pub async fn run<F: Future<Output = T>>(&self, key: &CacheKey, compute: F) -> (T, bool) {
        let cell = self
            .lock()
            .entry(key.clone())
            .or_insert_with(|| Arc::new(tokio::sync::OnceCell::new()))
            .clone();
        let mut led = false;
        let out = cell
            .get_or_init(|| {
                led = true;
                compute
            })
            .await
            .clone();
        // the first to finish forgets the flight; later callers find the result cached
        let mut map = self.lock();
        if map.get(key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            map.remove(key);
        }
        (out, led)
    }

    /// Computations in flight now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, Arc<tokio::sync::OnceCell<T>>>> {
        self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
    fn at_most_max_warming_products_are_computed_ahead_at_once() {
        let off = ChunkCache::new(0);
        assert!(
            off.warm_permit().is_none(),
            "a cache keeping nothing computes nothing ahead"
        );
        let c = ChunkCache::new(1 << 20);
        let held: Vec<WarmPermit> = (0..MAX_WARMING)
            .map(|_| c.warm_permit().expect("permit"))
            .collect();
        assert!(c.warm_permit().is_none());
        drop(held);
        assert!(c.warm_permit().is_some(), "permits are given back on drop");
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_runs_of_one_key_compute_once() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let flights: Arc<Flights<u32>> = Arc::default();
        let runs = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (f, r) = (flights.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                f.run(&key("d", 1, "tas/0.0"), async {
                    let n = r.fetch_add(1, Ordering::SeqCst) + 1;
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    n * 10
                })
                .await
            }));
        }
        let mut leaders = 0;
        for t in tasks {
            let (v, led) = t.await.expect("task");
            assert_eq!(v, 10, "every caller gets the one computation's result");
            leaders += u32::from(led);
        }
        assert_eq!((runs.load(Ordering::SeqCst), leaders), (1, 1));
        assert!(flights.is_empty(), "finished flights are forgotten");
        // another key, and the same key later, compute again
        let (v, led) = flights.run(&key("d", 1, "tas/0.0"), async { 7 }).await;
        assert_eq!((v, led), (7, true));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_leader_is_replaced_by_a_waiter() {
        let flights: Arc<Flights<u32>> = Arc::default();
        let f = flights.clone();
        let leader = tokio::spawn(async move {
            f.run(&key("d", 1, "k"), async {
                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                1
            })
            .await
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let f = flights.clone();
        let waiter = tokio::spawn(async move { f.run(&key("d", 1, "k"), async { 2 }).await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        leader.abort();
        let (v, led) = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiter does not wait for a cancelled leader")
            .expect("task");
        assert_eq!((v, led), (2, true));
    }
}
