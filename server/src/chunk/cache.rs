//! Decoded stored chunks, kept for reuse across requests within a byte budget.
//!
//! Why: a served chunk that is not a stored chunk (a rechunked grid, a reduction's slab, an
//! OPeNDAP hyperslab) reads *parts* of many stored chunks, and its neighbours read the other
//! parts of the same ones. Rechunking daily 0.5° fields to time series
//! (`{time: 365, lat: 30, lon: 30}`) decodes the same 365 stored chunks for each of the 288
//! spatial tiles; keeping the decoded chunks turns 288 decodes of each into one while a
//! client walks the tiles (or several clients walk them at once).
//!
//! What is kept: the decoded (filters undone, little-endian) bytes of whole stored chunks of
//! HDF5-chunked variables in *local* files, keyed by the file's identity as indexed (path,
//! size, mtime, inode, ctime) and the chunk's byte range in it — a chunk's bytes are fixed by where they
//! are in which version of which file. A hit still checks that the file is the version
//! indexed ([`crate::storage::read::check_unchanged`]: one `stat`), so a replaced file is reported as changed
//! exactly as an uncached read reports it, never answered from the cache. Object-store
//! sources are not cached here: a hit could not tell a changed object without a request.
//!
//! Eviction drops a kept chunk chosen at random until the budget holds. The common access
//! is a scan repeated over the same stored chunks (tile after tile of one time block); when
//! those do not all fit, least-recently-used and first-in-first-out evict each chunk just
//! before it is needed again and never hit, while random eviction keeps about the budget's
//! share of them, and still follows a client that moves on to other data. Whole stored chunks only pass through [`crate::pipeline`]'s fast path, which
//! does not use the cache: a plain Zarr read of stored chunks costs no copies and no budget.
//!
//! Sizing: random eviction only softens a budget smaller than the stored chunks one served
//! chunk reads (the chunks every neighbouring tile reads again); measured on the bench's
//! `{time: 365, lat: 30, lon: 30}` grid over daily 0.5° chunks (365 × 1 MiB), a 256 MiB
//! budget decoded each stored chunk 15 times for 48 tiles, one holding them all once — 7×
//! the chunks/s. So unless `--decoded-cache-bytes` is given, the budget starts at
//! [`DEFAULT_BYTES`] and [`DecodedCache::fit`] raises it to hold that working set of every
//! dataset opened, up to a quarter of the memory the process may use.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use crate::storage::SourceFile;

/// Default budget: 256 MiB of decoded chunks (`cloudify serve --decoded-cache-bytes`).
pub const DEFAULT_BYTES: u64 = 256 << 20;

/// What identifies a decoded stored chunk.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// The file's identity as indexed (its `Eq`/`Hash`: path, size, mtime, inode, ctime).
    file: SourceFile,
    offset: u64,
    stored_len: u64,
    decoded_len: usize,
}

impl Key {
    /// The key of the stored chunk at `offset..offset+stored_len` of `file`, decoding to
    /// `decoded_len` bytes; `None` for files this cache does not keep (object stores).
    pub fn new(file: &SourceFile, offset: u64, stored_len: u64, decoded_len: usize) -> Option<Self> {
        file.remote.is_none().then(|| Self {
            file: file.clone(),
            offset,
            stored_len,
            decoded_len,
        })
    }

    fn cost(&self) -> u64 {
        self.decoded_len as u64
    }
}

/// One key's entry: empty while the first reader decodes it (later readers of the same key
/// wait on its lock rather than decode it again), then the decoded bytes.
type Slot = Arc<Mutex<Option<Arc<Vec<u8>>>>>;

#[derive(Default)]
struct Inner {
    map: HashMap<Key, Slot>,
    /// Filled keys (what eviction picks from).
    filled: Vec<Key>,
    /// Each filled key's place in `filled`.
    place: HashMap<Key, usize>,
    bytes: u64,
}

/// A byte-bounded map of decoded stored chunks.
pub struct DecodedCache {
    budget: AtomicU64,
    /// Whether [`Self::fit`] may raise the budget (none was given explicitly).
    auto: AtomicBool,
    /// The most [`Self::fit`] raises the budget to.
    cap: AtomicU64,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for DecodedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodedCache")
            .field("budget", &self.budget.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl DecodedCache {
    /// An empty cache holding at most `budget` decoded bytes (0: keeps nothing).
    pub fn new(budget: u64) -> Self {
        Self {
            budget: AtomicU64::new(budget),
            auto: AtomicBool::new(false),
            cap: AtomicU64::new(budget),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The budget as sized automatically: [`DEFAULT_BYTES`] (or `cap`, when less), raised by
    /// [`Self::fit`] up to `cap` (a quarter of the process's memory limit).
    pub fn set_auto(&self, cap: u64) {
        self.set_budget(DEFAULT_BYTES.min(cap));
        self.cap.store(cap, Ordering::Relaxed);
        self.auto.store(true, Ordering::Relaxed);
    }

    /// The budget now.
    pub fn budget(&self) -> u64 {
        self.budget.load(Ordering::Relaxed)
    }

    /// With an automatic budget, raises it to hold `working_set` bytes and a quarter more
    /// (the working sets of neighbouring blocks overlapping in time), at most to the cap; a
    /// working set that does not fit is logged once with the option to give. `what` names
    /// the variable, for the log. Returns the budget now.
    pub fn fit(&self, working_set: u64, what: &str) -> u64 {
        let budget = self.budget();
        if !self.auto.load(Ordering::Relaxed) || working_set <= budget {
            return budget;
        }
        let cap = self.cap.load(Ordering::Relaxed);
        let want = working_set.saturating_add(working_set / 4);
        let new = want.min(cap).max(budget);
        if new > budget {
            self.budget.store(new, Ordering::Relaxed);
            metrics().budget.set(i64::try_from(new).unwrap_or(i64::MAX));
            tracing::info!(
                "decoded-chunk cache budget raised to {} MiB: a served chunk of {what} reads {} MiB of stored chunks that its neighbours read again",
                new >> 20,
                working_set >> 20
            );
        }
        if working_set > new {
            tracing::warn!(
                "a served chunk of {what} reads {} MiB of stored chunks, more than the decoded-chunk cache may hold ({} MiB, a quarter of the memory limit): neighbouring chunks will decode them again; give more memory or --decoded-cache-bytes",
                working_set >> 20,
                new >> 20
            );
        }
        new
    }

    /// Whether anything is kept at all.
    pub fn enabled(&self) -> bool {
        self.budget.load(Ordering::Relaxed) > 0
    }

    /// Changes the budget, dropping what no longer fits.
    pub fn set_budget(&self, budget: u64) {
        self.budget.store(budget, Ordering::Relaxed);
        self.auto.store(false, Ordering::Relaxed);
        metrics().budget.set(i64::try_from(budget).unwrap_or(i64::MAX));
        let mut g = lock(&self.inner);
        evict(&mut g, budget);
    }

    /// The decoded chunk under `key`: kept, or made by `decode` and kept. Concurrent calls
    /// for one key decode it once: the others wait for the first and share its bytes
    /// (readers walking the same stored chunks in step, as clients fetching neighbouring
    /// tiles do, split the decoding instead of repeating it). An error is returned to the
    /// caller that met it and nothing is kept, so a later read tries again.
    pub fn get_or_decode<E>(
        &self,
        key: Key,
        decode: impl FnOnce() -> Result<Vec<u8>, E>,
    ) -> Result<Arc<Vec<u8>>, E> {
        // a trace span per stored chunk (DEBUG: nothing is created with traces off)
        let span = tracing::debug_span!(
            "chunk.decode",
            decoded_bytes = key.cost(),
            cache_hit = tracing::field::Empty
        );
        let _in = span.enter();
        let budget = self.budget.load(Ordering::Relaxed);
        if key.cost() > budget {
            span.record("cache_hit", false);
            return decode().map(Arc::new);
        }
        if SCAN.get() {
            // part of a scan: a kept chunk (or one being decoded) is used, nothing is added
            let kept = self.kept(&key);
            span.record("cache_hit", kept.is_some());
            return match kept {
                Some(v) => Ok(v),
                None => decode().map(Arc::new),
            };
        }
        let slot = lock(&self.inner).map.entry(key.clone()).or_default().clone();
        let mut value = lock(&slot);
        let m = metrics();
        if let Some(v) = value.as_ref() {
            m.hits.inc();
            span.record("cache_hit", true);
            return Ok(v.clone());
        }
        m.misses.inc();
        span.record("cache_hit", false);
        let decoded = match decode() {
            Ok(d) => Arc::new(d),
            Err(e) => {
                drop(value);
                let mut g = lock(&self.inner);
                if g.map
                    .get(&key)
                    .is_some_and(|s| Arc::ptr_eq(s, &slot) && lock(s).is_none())
                {
                    g.map.remove(&key);
                }
                return Err(e);
            }
        };
        *value = Some(decoded.clone());
        drop(value);
        let mut g = lock(&self.inner);
        // Evicted meanwhile (a smaller budget): still answered, not counted.
        if g.map.get(&key).is_some_and(|s| Arc::ptr_eq(s, &slot)) && !g.place.contains_key(&key) {
            g.bytes += key.cost();
            let at = g.filled.len();
            g.place.insert(key.clone(), at);
            g.filled.push(key);
            evict(&mut g, budget);
        }
        metrics().bytes.set(i64::try_from(g.bytes).unwrap_or(i64::MAX));
        Ok(decoded)
    }

    /// The decoded chunk under `key` if it is kept (or being decoded: then waits for it),
    /// counted as a hit or a miss; nothing is added. How a scan ([`scanning`]) reads.
    pub fn kept(&self, key: &Key) -> Option<Arc<Vec<u8>>> {
        let slot = lock(&self.inner).map.get(key).cloned();
        let v = slot.and_then(|s| lock(&s).clone());
        if v.is_some() {
            metrics().hits.inc();
        } else {
            metrics().misses.inc();
        }
        v
    }

    /// Decoded bytes kept now.
    pub fn bytes(&self) -> u64 {
        lock(&self.inner).bytes
    }
}

/// Locks `m`. A panic while holding one of these locks leaves consistent data (each update
/// is a few infallible steps; a slot is empty or filled), so a poisoned lock is taken over
/// rather than propagated.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn evict(g: &mut Inner, budget: u64) {
    while g.bytes > budget && !g.filled.is_empty() {
        let at = fastrand::usize(..g.filled.len());
        let old = g.filled.swap_remove(at);
        if let Some(moved) = g.filled.get(at) {
            g.place.insert(moved.clone(), at);
        }
        g.place.remove(&old);
        g.map.remove(&old);
        g.bytes -= old.cost();
    }
}

thread_local! {
    /// Whether reads on this thread are part of a scan ([`scanning`]).
    static SCAN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` (reads on this thread) as part of a scan: a read that decodes more stored
/// chunks than the cache holds, each once — a time series over a long axis. Kept chunks
/// are still used, but what the scan decodes is not added: kept, it would evict every
/// chunk other readers reuse (a rechunked grid's working set) for a few hits of its own
/// (random eviction keeps the budget's share of a repeated scan; measured on the bench's
/// OPeNDAP point series, 730 chunks against 256 MiB, 5 % of reads hit), and it would hold
/// the whole budget of memory for them. Nested calls keep the flag; it is restored after
/// `f`, also when `f` panics.
pub fn scanning<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            SCAN.set(self.0);
        }
    }
    let _restore = Restore(SCAN.replace(true));
    f()
}

/// Whether reads on this thread are now part of a scan ([`scanning`]).
pub fn is_scanning() -> bool {
    SCAN.get()
}

/// The process's cache (stored chunks are shared by every dataset and request that reads
/// the same file); its budget is set once at start-up by `cloudify serve`.
pub fn cache() -> &'static DecodedCache {
    static C: LazyLock<DecodedCache> = LazyLock::new(|| DecodedCache::new(DEFAULT_BYTES));
    &C
}

/// The cache's Prometheus collectors; the server registers them in its registry.
#[derive(Debug, Clone)]
pub struct CacheMetrics {
    /// Reads of a stored chunk answered from the cache.
    pub hits: prometheus::IntCounter,
    /// Reads of a stored chunk that had to fetch and decode it.
    pub misses: prometheus::IntCounter,
    /// Decoded bytes kept now.
    pub bytes: prometheus::IntGauge,
    /// The budget now (raised automatically for rechunked grids, see [`DecodedCache::fit`]).
    pub budget: prometheus::IntGauge,
}

/// The process's cache metrics.
#[allow(
    clippy::expect_used,
    reason = "fixed metric names: construction fails only on a programming error, which the first test that reads a chunk finds"
)]
pub fn metrics() -> &'static CacheMetrics {
    static M: OnceLock<CacheMetrics> = OnceLock::new();
    M.get_or_init(|| CacheMetrics {
        hits: prometheus::IntCounter::new(
            "cloudify_decoded_chunk_cache_hits_total",
            "Partial reads of a stored chunk answered from the decoded-chunk cache",
        )
        .expect("decoded cache metric definition"),
        misses: prometheus::IntCounter::new(
            "cloudify_decoded_chunk_cache_misses_total",
            "Partial reads of a stored chunk that fetched and decoded it",
        )
        .expect("decoded cache metric definition"),
        bytes: prometheus::IntGauge::new(
            "cloudify_decoded_chunk_cache_bytes",
            "Decoded stored-chunk bytes kept by the decoded-chunk cache",
        )
        .expect("decoded cache metric definition"),
        budget: prometheus::IntGauge::new(
            "cloudify_decoded_chunk_cache_budget_bytes",
            "Most decoded stored-chunk bytes the decoded-chunk cache keeps (raised automatically to hold what one served chunk of a rechunked grid reads)",
        )
        .expect("decoded cache metric definition"),
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn key(path: &str, offset: u64, len: usize) -> Key {
        Key::new(&SourceFile::local(PathBuf::from(path), 100, 7), offset, 10, len).expect("local")
    }

    /// Decodes `key` through the cache, counting decodes in `n`.
    fn get(c: &DecodedCache, k: Key, fill: u8, n: &AtomicUsize) -> Vec<u8> {
        let len = k.decoded_len;
        let v = c.get_or_decode(k, || {
            n.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(vec![fill; len])
        });
        v.expect("decoded").to_vec()
    }

    /// An automatic budget grows to hold a rechunked grid's working set (and a quarter
    /// more), never beyond its cap and never down; an explicit budget is never changed.
    #[test]
    fn an_automatic_budget_fits_working_sets_up_to_its_cap() {
        const MIB: u64 = 1 << 20;
        let c = DecodedCache::new(0);
        c.set_auto(1024 * MIB);
        assert_eq!(c.budget(), DEFAULT_BYTES);
        assert_eq!(c.fit(100 * MIB, "small"), DEFAULT_BYTES, "fits already");
        assert_eq!(c.fit(360 * MIB, "bench/tas"), 450 * MIB);
        assert_eq!(c.fit(300 * MIB, "smaller"), 450 * MIB, "never down");
        assert_eq!(c.fit(4096 * MIB, "huge"), 1024 * MIB, "capped");
        // a small memory limit: the default shrinks to the cap
        c.set_auto(64 * MIB);
        assert_eq!(c.budget(), 64 * MIB);
        assert_eq!(c.fit(360 * MIB, "bench/tas"), 64 * MIB);
        // given explicitly (0: off), the budget stays
        c.set_budget(0);
        assert_eq!(c.fit(360 * MIB, "bench/tas"), 0);
        assert!(!c.enabled());
        c.set_budget(10 * MIB);
        assert_eq!(c.fit(360 * MIB, "bench/tas"), 10 * MIB);
    }

    #[test]
    fn evicts_by_bytes_and_keeps_hits_decoded_once() {
        let c = DecodedCache::new(250);
        let n = AtomicUsize::new(0);
        assert_eq!(get(&c, key("/a.nc", 0, 100), 1, &n), vec![1; 100]);
        assert_eq!(get(&c, key("/a.nc", 10, 100), 2, &n), vec![2; 100]);
        assert_eq!(c.bytes(), 200);
        // A hit does not decode.
        assert_eq!(get(&c, key("/a.nc", 0, 100), 9, &n), vec![1; 100]);
        assert_eq!(n.load(Ordering::SeqCst), 2);
        // A third chunk does not fit: one of the first two goes.
        get(&c, key("/a.nc", 20, 100), 3, &n);
        assert_eq!(c.bytes(), 200);
        // Looked at directly: reading an evicted chunk again would evict another at random.
        let g = lock(&c.inner);
        let kept = |k: &Key| g.place.contains_key(k) && g.map.contains_key(k);
        let n_kept = [0, 10, 20]
            .iter()
            .filter(|o| kept(&key("/a.nc", **o, 100)))
            .count();
        assert_eq!(n_kept, 2, "exactly one of the three was evicted");
        assert_eq!((g.filled.len(), g.map.len()), (2, 2));
        drop(g);
        assert!(c.bytes() <= 250);
    }

    /// Reads made as part of a scan use what is kept but add nothing; outside the scan the
    /// same reads are kept again.
    #[test]
    fn a_scan_uses_kept_chunks_and_adds_none() {
        let c = DecodedCache::new(1000);
        let n = AtomicUsize::new(0);
        get(&c, key("/s.nc", 0, 10), 1, &n);
        let got: Vec<Vec<u8>> =
            scanning(|| (0..50).map(|off| get(&c, key("/s.nc", off, 10), 2, &n)).collect());
        assert_eq!(got[0], vec![1; 10], "the kept chunk is used");
        assert_eq!(got[1], vec![2; 10]);
        assert_eq!(n.load(Ordering::SeqCst), 50, "49 decoded by the scan");
        assert_eq!(c.bytes(), 10, "nothing added");
        assert!(!SCAN.get(), "flag restored");
        get(&c, key("/s.nc", 1, 10), 3, &n);
        assert_eq!(c.bytes(), 20);
    }

    /// A scan repeated over more chunks than fit still hits about the budget's share.
    #[test]
    fn a_repeated_scan_larger_than_the_budget_still_hits() {
        let c = DecodedCache::new(100 * 10);
        let n = AtomicUsize::new(0);
        for _ in 0..20 {
            for off in 0..150 {
                get(&c, key("/a.nc", off, 10), 1, &n);
            }
        }
        let decodes = n.load(Ordering::SeqCst);
        // LRU or FIFO would decode all 3000 (each chunk is evicted just before its turn).
        assert!(decodes < 20 * 150 * 3 / 4, "{decodes} decodes of 3000 reads");
        assert!(c.bytes() <= 1000);
    }

    #[test]
    fn a_file_version_is_part_of_the_key() {
        let c = DecodedCache::new(1000);
        let n = AtomicUsize::new(0);
        get(&c, key("/a.nc", 0, 10), 1, &n);
        let newer = Key::new(&SourceFile::local(PathBuf::from("/a.nc"), 100, 8), 0, 10, 10).expect("local");
        assert_eq!(get(&c, newer, 2, &n), vec![2; 10]);
        assert_eq!(get(&c, key("/b.nc", 0, 10), 3, &n), vec![3; 10]);
        assert_eq!(n.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn budget_zero_or_too_small_keeps_nothing() {
        let n = AtomicUsize::new(0);
        let c = DecodedCache::new(0);
        assert!(!c.enabled());
        get(&c, key("/a.nc", 0, 10), 1, &n);
        assert_eq!(c.bytes(), 0);
        let c = DecodedCache::new(50);
        get(&c, key("/a.nc", 0, 100), 1, &n);
        assert_eq!(c.bytes(), 0);
        get(&c, key("/a.nc", 1, 40), 1, &n);
        assert_eq!(c.bytes(), 40);
        assert_eq!(get(&c, key("/a.nc", 1, 40), 2, &n), vec![1; 40]);
        c.set_budget(10);
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn an_error_is_not_kept_and_concurrent_readers_decode_once() {
        let c = DecodedCache::new(1000);
        let e = c.get_or_decode(key("/a.nc", 0, 10), || Err::<Vec<u8>, _>("bad"));
        assert_eq!(e.err(), Some("bad"));
        assert_eq!(c.bytes(), 0);
        let n = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let v = c.get_or_decode(key("/a.nc", 0, 10), || {
                        n.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        Ok::<_, ()>(vec![5; 10])
                    });
                    assert_eq!(v.expect("decoded").as_slice(), &[5; 10]);
                });
            }
        });
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }
}
