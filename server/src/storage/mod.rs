//! Object-store sources: `s3://`, `gs://`, `az://`/`abfs://`, `http(s)://`, via `object_store`.
//!
//! Local files (plain paths and `file://`) never come here: they are read with `pread`, the
//! fast path. A remote object is indexed with ranged GETs of the bytes its metadata needs
//! (`source::remote`: the netCDF-3 header, the HDF5 metadata through the native reader),
//! or, when the native reader declines a netCDF-4 file, from a temporary local copy that
//! libnetcdf reads. The index is cached under the object's URL, size and ETag, so restarts
//! and other replicas do not read it again. Indexing and serving read with ranged GETs
//! conditional on the listed ETag (`If-Match`), so a replaced object is reported as changed
//! instead of being decoded with a stale index (or indexed from two versions).
//!
//! The request path is synchronous (worker threads decode what they read), so async store
//! calls run on one dedicated runtime and the calling thread waits for the answer. That works
//! from any thread (rayon, tokio's blocking pool, plain threads) and never nests runtimes.

pub mod config;
pub mod file;
pub mod metrics;
pub mod read;
pub mod tape;
pub mod url;

use std::future::Future;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path;
use object_store::{GetOptions, ObjectMeta, ObjectStore, ObjectStoreExt};

pub use config::{build_store, read_credentials_file};
pub use file::SourceFile;
pub use metrics::{StoreMetrics, metrics};
pub use url::{ObjectUrl, StoreKind, parse_object_url};

/// Why a remote read failed. Every message names the object.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The object does not exist (404).
    #[error("{url}: object not found")]
    NotFound {
        /// The object, for messages.
        url: String,
    },
    /// The object's ETag is not the one recorded when it was indexed: its chunks would be read at
    /// stale offsets.
    #[error("{url}: object changed since it was indexed (ETag differs); restart to re-index")]
    Changed {
        /// The object, for messages.
        url: String,
    },
    /// The store refused the credentials or the request (401/403).
    #[error("{url}: access denied: {reason}")]
    Denied {
        /// The object, for messages.
        url: String,
        /// What the store said.
        reason: String,
    },
    /// The store did not answer in time, retries included.
    #[error("{url}: no answer within {secs} s (after retries)")]
    Timeout {
        /// The object, for messages.
        url: String,
        /// The time limit, in seconds.
        secs: u64,
    },
    /// A tape-archived file that cannot be read now (still on tape, recall failed, staging
    /// cache full): the message names the file.
    #[error("{0}")]
    Tape(#[from] tape::TapeError),
    /// Any other store failure (server error, bad glob, connection refused).
    #[error("{url}: {reason}")]
    Other {
        /// The object, for messages.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

impl RemoteError {
    /// Short outcome label for metrics.
    fn outcome(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "not_found",
            Self::Changed { .. } => "changed",
            Self::Denied { .. } => "denied",
            Self::Timeout { .. } => "timeout",
            Self::Tape(_) => "tape",
            Self::Other { .. } => "error",
        }
    }

    /// True when the store did not answer in time (HTTP 504 rather than 502).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }

    fn from_store(url: &str, e: object_store::Error, secs: u64) -> Self {
        use object_store::Error as E;
        let url = url.to_string();
        match e {
            E::NotFound { .. } => Self::NotFound { url },
            E::Precondition { .. } => Self::Changed { url },
            E::PermissionDenied { source, .. } | E::Unauthenticated { source, .. } => Self::Denied {
                url,
                reason: source.to_string(),
            },
            other => {
                if is_timeout(&other) {
                    Self::Timeout { url, secs }
                } else {
                    Self::Other {
                        url,
                        reason: other.to_string(),
                    }
                }
            }
        }
    }
}

/// Looks through an error's causes for an HTTP timeout.
fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<object_store::client::HttpError>()
            && h.kind() == object_store::client::HttpErrorKind::Timeout
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// One configured store (a bucket, container or HTTP host) with its limits.
pub struct Store {
    /// `scheme://authority` of the store, for messages.
    pub base: String,
    inner: Arc<dyn ObjectStore>,
    /// Upper bound for one logical operation, retries included: nothing waits forever.
    op_timeout: Duration,
    /// For a tape archive: the stager every read goes through (`inner` is then never used:
    /// bytes are read from the staged copy).
    pub tape: Option<Arc<tape::Stager>>,
}

impl std::fmt::Debug for Store {
    // The inner store's Debug may print credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("base", &self.base).finish()
    }
}

/// An object of a store, as a source file points to it.
pub struct RemoteObject {
    /// The store the object is in (shared by every object of the same bucket or host).
    pub store: Arc<Store>,
    /// The object's key within the store.
    pub location: Path,
}

impl std::fmt::Debug for RemoteObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.store.base, self.location)
    }
}

/// The runtime all store I/O runs on (two threads: the work is waiting, not computing).
fn runtime() -> Result<&'static tokio::runtime::Runtime, String> {
    static RT: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cloudify-store")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the object-store I/O runtime: {e}"))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Runs `fut` on the I/O runtime and waits for it, from any thread.
pub fn block_on<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> Result<T, String> {
    let rt = runtime()?;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let span = cloudify_telemetry::traced_span();
    rt.spawn(span.instrument(async move {
        let _ = tx.send(fut.await);
    }));
    rx.recv()
        .map_err(|_| "object-store I/O task failed (see server log)".to_string())
}

impl Store {
    /// Wraps any `object_store` implementation (tests use the in-memory store).
    pub fn new(base: impl Into<String>, inner: Arc<dyn ObjectStore>, op_timeout: Duration) -> Self {
        Self {
            base: base.into(),
            inner,
            op_timeout,
            tape: None,
        }
    }

    /// The store of a tape archive: archive paths are keys, read from the staging cache of
    /// `stager` (see [`tape`]).
    pub fn tape(stager: Arc<tape::Stager>) -> Self {
        Self {
            base: "tape:".into(),
            inner: Arc::new(object_store::memory::InMemory::new()),
            op_timeout: Duration::from_secs(60),
            tape: Some(stager),
        }
    }

    fn url_of(&self, location: &Path) -> String {
        format!("{}/{}", self.base, location)
    }

    /// Runs one store operation under the operation deadline and records it in the
    /// object-store metrics (`op`: head, list, get, get_ranges).
    async fn timed<T>(
        &self,
        op: &'static str,
        url: &str,
        fut: impl Future<Output = Result<T, object_store::Error>>,
    ) -> Result<T, RemoteError> {
        let secs = self.op_timeout.as_secs();
        let t0 = std::time::Instant::now();
        // the URL names the store and key (as the metrics and errors do), never credentials:
        // those are options, not part of it
        let span = tracing::debug_span!(
            "object_store",
            otel.kind = "client",
            op,
            url,
            outcome = tracing::field::Empty,
        );
        let fut = tracing::Instrument::instrument(fut, span.clone());
        let r = match tokio::time::timeout(self.op_timeout, fut).await {
            Ok(r) => r.map_err(|e| RemoteError::from_store(url, e, secs)),
            Err(_) => Err(RemoteError::Timeout {
                url: url.to_string(),
                secs,
            }),
        };
        let m = metrics();
        let outcome = r.as_ref().map_or_else(RemoteError::outcome, |_| "ok");
        span.record("outcome", outcome);
        m.operations.with_label_values(&[&self.base, op, outcome]).inc();
        m.seconds
            .with_label_values(&[op])
            .observe(t0.elapsed().as_secs_f64());
        r
    }

    /// Metadata of one object.
    pub async fn head(&self, location: &Path) -> Result<ObjectMeta, RemoteError> {
        let url = self.url_of(location);
        self.timed("head", &url, self.inner.head(location)).await
    }

    /// Objects matching a glob over keys, sorted by key. Lists the prefix up to the first
    /// wildcard (cut at a `/`: object stores list by path segments); `*` and `?` do not cross
    /// `/`, `**` does.
    pub async fn glob(&self, pattern: &str) -> Result<Vec<ObjectMeta>, RemoteError> {
        let pat = glob::Pattern::new(pattern).map_err(|e| RemoteError::Other {
            url: format!("{}/{pattern}", self.base),
            reason: format!("invalid glob: {e}"),
        })?;
        let opts = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        let mut out = self.list(url::list_prefix(pattern)).await?;
        out.retain(|m| pat.matches_with(m.location.as_ref(), opts));
        Ok(out)
    }

    /// Every object under `prefix` (all pages), sorted by key.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, RemoteError> {
        let url = format!("{}/{prefix}", self.base);
        let prefix = (!prefix.is_empty()).then(|| Path::from(prefix));
        let listing = async {
            let mut stream = self.inner.list(prefix.as_ref());
            let mut out = Vec::new();
            while let Some(m) = stream.next().await {
                out.push(m?);
            }
            Ok::<_, object_store::Error>(out)
        };
        let mut out = self.timed("list", &url, listing).await?;
        out.sort_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()));
        Ok(out)
    }

    /// Whether anything exists under `prefix` (one page of one listing).
    pub async fn any_under(&self, prefix: &str) -> Result<bool, RemoteError> {
        let url = format!("{}/{prefix}", self.base);
        let prefix = Path::from(prefix);
        let first = async {
            let mut stream = self.inner.list(Some(&prefix));
            stream.next().await.transpose()
        };
        Ok(self.timed("list", &url, first).await?.is_some())
    }

    /// A whole object (metadata documents, reference files: small objects read at open).
    pub async fn get(&self, location: &Path) -> Result<Bytes, RemoteError> {
        let url = self.url_of(location);
        let fetch = async { self.inner.get(location).await?.bytes().await };
        let got = self.timed("get", &url, fetch).await?;
        metrics()
            .bytes
            .with_label_values(&[&self.base])
            .inc_by(got.len() as u64);
        Ok(got)
    }

    /// Copies an object to a local file with bounded memory, conditional on `etag` (the
    /// version that was listed). Returns the metadata of what was copied.
    pub async fn download(
        &self,
        location: &Path,
        etag: Option<String>,
        dest: &FsPath,
    ) -> Result<ObjectMeta, RemoteError> {
        use std::io::Write as _;
        let url = self.url_of(location);
        let io_err = |e: std::io::Error| RemoteError::Other {
            url: url.clone(),
            reason: format!("writing temporary copy {}: {e}", dest.display()),
        };
        let opts = GetOptions {
            if_match: etag,
            ..GetOptions::default()
        };
        let r = self
            .timed("get", &url, self.inner.get_opts(location, opts))
            .await?;
        let meta = r.meta.clone();
        let mut f = std::io::BufWriter::new(std::fs::File::create(dest).map_err(io_err)?);
        let mut stream = r.into_stream();
        // A large object may take longer than one operation's deadline: the deadline applies
        // to each part instead, i.e. the download fails when it stalls, not when it is long.
        let secs = self.op_timeout.as_secs();
        let mut n = 0u64;
        loop {
            let part = match tokio::time::timeout(self.op_timeout, stream.next()).await {
                Err(_) => return Err(RemoteError::Timeout { url, secs }),
                Ok(None) => break,
                Ok(Some(part)) => part.map_err(|e| RemoteError::from_store(&url, e, secs))?,
            };
            n += part.len() as u64;
            // Local disk writes are short next to network reads; this runtime only waits.
            f.write_all(&part).map_err(io_err)?;
        }
        f.flush().map_err(io_err)?;
        metrics().bytes.with_label_values(&[&self.base]).inc_by(n);
        if n != meta.size {
            return Err(RemoteError::Other {
                url,
                reason: format!("download ended after {n} of {} bytes", meta.size),
            });
        }
        Ok(meta)
    }

    /// Several byte ranges of one object; ranges less than 1 MiB apart are fetched with one
    /// request (`object_store::coalesce_ranges`), up to 10 requests run in parallel. Each
    /// request is conditional on `etag`.
    pub async fn get_ranges(
        &self,
        location: &Path,
        etag: Option<String>,
        ranges: &[Range<u64>],
    ) -> Result<Vec<Bytes>, RemoteError> {
        self.get_ranges_coalesced(
            location,
            etag,
            ranges,
            object_store::OBJECT_STORE_COALESCE_DEFAULT,
        )
        .await
        .map(|(got, _)| got)
    }

    /// [`Self::get_ranges`] merging only ranges at most `coalesce` bytes apart; also says
    /// how many requests were made (retries not counted) and how many bytes they
    /// transferred (gaps merged in included). Indexing uses a small gap: there the point is
    /// to read little of a large object, and the gaps between netCDF-3 records would
    /// otherwise merge into reading every record whole.
    pub async fn get_ranges_coalesced(
        &self,
        location: &Path,
        etag: Option<String>,
        ranges: &[Range<u64>],
        coalesce: u64,
    ) -> Result<(Vec<Bytes>, Fetched), RemoteError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        let url = self.url_of(location);
        let (requests, bytes) = (AtomicU64::new(0), AtomicU64::new(0));
        let fetch = |r: Range<u64>| {
            let opts = GetOptions {
                range: Some(r.into()),
                if_match: etag.clone(),
                ..GetOptions::default()
            };
            requests.fetch_add(1, Ordering::Relaxed);
            let bytes = &bytes;
            async move {
                let got = self.inner.get_opts(location, opts).await?.bytes().await?;
                bytes.fetch_add(got.len() as u64, Ordering::Relaxed);
                Ok::<_, object_store::Error>(got)
            }
        };
        let got = self
            .timed(
                "get_ranges",
                &url,
                object_store::coalesce_ranges(ranges, fetch, coalesce),
            )
            .await;
        let fetched = Fetched {
            requests: requests.into_inner(),
            bytes: bytes.into_inner(),
        };
        let m = metrics();
        m.requests
            .with_label_values(&[&self.base])
            .inc_by(fetched.requests);
        m.bytes.with_label_values(&[&self.base]).inc_by(fetched.bytes);
        let got = got?;
        for (r, b) in ranges.iter().zip(&got) {
            if (b.len() as u64) < r.end - r.start {
                return Err(RemoteError::Other {
                    url,
                    reason: format!(
                        "object ends before byte {} (truncated or replaced object?)",
                        r.end
                    ),
                });
            }
        }
        Ok((got, fetched))
    }
}

/// Traffic of one [`Store::get_ranges_coalesced`] call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Ranged GET requests made.
    pub requests: u64,
    /// Bytes they transferred.
    pub bytes: u64,
}

/// Identity of an object as indexed: URL, size, last-modified and ETag.
pub fn source_file(url: String, meta: &ObjectMeta, store: &Arc<Store>) -> SourceFile {
    SourceFile {
        path: PathBuf::from(url),
        size: meta.size,
        mtime_ns: meta.last_modified.timestamp_nanos_opt().unwrap_or(0),
        etag: meta.e_tag.clone(),
        inode: None,
        remote: Some(Arc::new(RemoteObject {
            store: store.clone(),
            location: meta.location.clone(),
        })),
    }
}

/// A whole object (a `[url]` reference: a chunk file in a bucket), synchronously.
pub fn read_whole(file: &SourceFile, obj: &RemoteObject) -> Result<Bytes, RemoteError> {
    if let Some(stager) = &obj.store.tape {
        return read_tape(stager, &file.path, None).map(|mut v| v.pop().unwrap_or_default());
    }
    let url = file.path.display().to_string();
    let store = obj.store.clone();
    let location = obj.location.clone();
    let etag = file.etag.clone();
    let u = url.clone();
    block_on(async move {
        let opts = GetOptions {
            if_match: etag,
            ..GetOptions::default()
        };
        let fetch = async { store.inner.get_opts(&location, opts).await?.bytes().await };
        let got = store.timed("get", &u, fetch).await?;
        metrics()
            .bytes
            .with_label_values(&[&store.base])
            .inc_by(got.len() as u64);
        Ok(got)
    })
    .map_err(|reason| RemoteError::Other { url, reason })?
}

/// A handle for reading the object at `url` (no request is made: references are not
/// listed or HEADed one by one at open time; a missing object fails when it is read).
pub fn object_handle(url: &str, store: &Arc<Store>) -> Result<SourceFile, String> {
    let parsed = parse_object_url(url)?.ok_or_else(|| format!("'{url}' is not an object URL"))?;
    if parsed.base != store.base {
        return Err(format!("'{url}' is not in store {}", store.base));
    }
    Ok(SourceFile {
        path: PathBuf::from(url),
        size: 0,
        mtime_ns: 0,
        etag: None,
        inode: None,
        remote: Some(Arc::new(RemoteObject {
            store: store.clone(),
            location: Path::from(parsed.key.as_str()),
        })),
    })
}

/// Ranges (or, for `None`, all) of a tape-archived file, read from its staged copy while it
/// is pinned (recalled first, waiting a bounded time: see [`tape::Stager::acquire`]).
fn read_tape(
    stager: &Arc<tape::Stager>,
    archive: &FsPath,
    ranges: Option<&[(u64, u64)]>,
) -> Result<Vec<Bytes>, RemoteError> {
    let archive = archive.to_string_lossy();
    let pin = stager.acquire(&archive)?;
    let other = |reason: String| RemoteError::Other {
        url: format!("tape:{archive}"),
        reason,
    };
    let Some(ranges) = ranges else {
        return std::fs::read(&pin.path)
            .map(|b| vec![Bytes::from(b)])
            .map_err(|e| other(format!("staged copy {}: {e}", pin.path.display())));
    };
    ranges
        .iter()
        .map(|(o, n)| {
            read::pread(&pin.path, *o, *n)
                .map(Bytes::from)
                .map_err(|e| other(format!("staged copy: {e}")))
        })
        .collect()
}

/// Byte ranges `(offset, len)` of a remote source file, synchronously (see module docs).
pub fn read_ranges(
    file: &SourceFile,
    obj: &RemoteObject,
    ranges: &[(u64, u64)],
) -> Result<Vec<Bytes>, RemoteError> {
    if let Some(stager) = &obj.store.tape {
        return read_tape(stager, &file.path, Some(ranges));
    }
    let url = file.path.display().to_string();
    let store = obj.store.clone();
    let location = obj.location.clone();
    let etag = file.etag.clone();
    let ranges: Vec<Range<u64>> = ranges.iter().map(|(o, n)| *o..o + n).collect();
    block_on(async move { store.get_ranges(&location, etag, &ranges).await })
        .map_err(|reason| RemoteError::Other { url, reason })?
}

/// [`read_ranges`] merging only ranges at most `coalesce` bytes apart; also says what was
/// transferred (see [`Store::get_ranges_coalesced`]).
pub fn read_ranges_coalesced(
    file: &SourceFile,
    obj: &RemoteObject,
    ranges: &[(u64, u64)],
    coalesce: u64,
) -> Result<(Vec<Bytes>, Fetched), RemoteError> {
    if let Some(stager) = &obj.store.tape {
        return read_tape(stager, &file.path, Some(ranges)).map(|v| (v, Fetched::default()));
    }
    let url = file.path.display().to_string();
    let store = obj.store.clone();
    let location = obj.location.clone();
    let etag = file.etag.clone();
    let ranges: Vec<Range<u64>> = ranges.iter().map(|(o, n)| *o..o + n).collect();
    block_on(async move {
        store
            .get_ranges_coalesced(&location, etag, &ranges, coalesce)
            .await
    })
    .map_err(|reason| RemoteError::Other { url, reason })?
}

/// Expands one remote source (an object URL or a glob) into source files.
pub fn expand(url: &ObjectUrl, store: &Arc<Store>) -> Result<Vec<SourceFile>, String> {
    let s = store.clone();
    let key = url.key.clone();
    let globbing = url.has_glob();
    let metas = block_on(async move {
        if globbing {
            s.glob(&key).await
        } else {
            s.head(&Path::from(key.as_str())).await.map(|m| vec![m])
        }
    })??;
    let metas = match metas {
        m if m.is_empty() => {
            return Err(format!(
                "matched no objects (listed '{}')",
                url::list_prefix(&url.key)
            ));
        }
        m => m,
    };
    Ok(metas
        .iter()
        .map(|m| source_file(format!("{}/{}", store.base, m.location), m, store))
        .collect())
}

impl From<RemoteError> for String {
    fn from(e: RemoteError) -> Self {
        match e {
            RemoteError::NotFound { .. } => "no such object".into(),
            other => other.to_string(),
        }
    }
}

/// Downloads a remote source to a temporary file under `tmp_dir` and returns it with the
/// identity of the copied version (which may be newer than the listed one only if the
/// store ignores `If-Match`; then the copy's identity is what gets indexed).
pub fn fetch_temp(
    file: &SourceFile,
    obj: &RemoteObject,
    tmp_dir: &FsPath,
) -> Result<(tempfile::NamedTempFile, ObjectMeta), RemoteError> {
    let url = file.path.display().to_string();
    let other = |reason: String| RemoteError::Other {
        url: url.clone(),
        reason,
    };
    std::fs::create_dir_all(tmp_dir).map_err(|e| other(format!("{}: {e}", tmp_dir.display())))?;
    let tmp = tempfile::Builder::new()
        .prefix(".download-")
        .suffix(".nc")
        .tempfile_in(tmp_dir)
        .map_err(|e| other(format!("temporary file in {}: {e}", tmp_dir.display())))?;
    let dest = tmp.path().to_path_buf();
    let store = obj.store.clone();
    let location = obj.location.clone();
    let etag = file.etag.clone();
    let meta = block_on(async move { store.download(&location, etag, &dest).await }).map_err(other)??;
    Ok((tmp, meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudify_crds::StorageSpec;
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};

    fn store_with(keys: &[&str]) -> Arc<Store> {
        let mem = InMemory::new();
        block_on({
            let keys: Vec<String> = keys.iter().map(std::string::ToString::to_string).collect();
            let mem2 = Arc::new(mem);
            let out = mem2.clone();
            async move {
                for (i, k) in keys.iter().enumerate() {
                    let body: Vec<u8> = (0..100u8).map(|b| b.wrapping_add(i as u8)).collect();
                    mem2.put(&Path::from(k.as_str()), PutPayload::from(body))
                        .await
                        .expect("put");
                }
                out
            }
        })
        .map(|m| Arc::new(Store::new("mem://b", m, Duration::from_secs(5))))
        .expect("runtime")
    }

    #[test]
    fn glob_over_listing_matches_segments_and_sorts() {
        let st = store_with(&[
            "cmip/tas_2001.nc",
            "cmip/tas_2000.nc",
            "cmip/pr_2000.nc",
            "cmip/sub/tas_1999.nc",
            "cmip2/tas_2000.nc",
            "other/tas_2000.nc",
        ]);
        let keys = |pat: &str| -> Vec<String> {
            let s = st.clone();
            let pat = pat.to_string();
            block_on(async move { s.glob(&pat).await })
                .expect("runtime")
                .expect("listing")
                .into_iter()
                .map(|m| m.location.to_string())
                .collect()
        };
        assert_eq!(keys("cmip/tas_*.nc"), ["cmip/tas_2000.nc", "cmip/tas_2001.nc"]);
        assert_eq!(keys("cmip/*/tas_*.nc"), ["cmip/sub/tas_1999.nc"]);
        assert_eq!(
            keys("cmip/**/tas_*.nc"),
            ["cmip/sub/tas_1999.nc", "cmip/tas_2000.nc", "cmip/tas_2001.nc"]
        );
        assert_eq!(
            keys("cmip*/tas_2000.nc"),
            ["cmip/tas_2000.nc", "cmip2/tas_2000.nc"]
        );
        assert!(keys("cmip/*.grib").is_empty());
    }

    #[test]
    fn ranges_are_read_and_a_changed_object_is_refused() {
        let st = store_with(&["x.nc"]);
        let s = st.clone();
        let (meta, got) = block_on(async move {
            let meta = s.head(&Path::from("x.nc")).await.expect("head");
            let got = s
                .get_ranges(&Path::from("x.nc"), meta.e_tag.clone(), &[0..4, 10..12, 90..100])
                .await
                .expect("ranges");
            (meta, got)
        })
        .expect("runtime");
        assert_eq!(got[0].as_ref(), &[0, 1, 2, 3]);
        assert_eq!(got[1].as_ref(), &[10, 11]);
        assert_eq!(got[2].len(), 10);
        let s = st.clone();
        let err = block_on(async move {
            s.get_ranges(
                &Path::from("x.nc"),
                Some("\"other\"".into()),
                std::slice::from_ref(&(0..4)),
            )
            .await
        })
        .expect("runtime")
        .expect_err("etag mismatch");
        assert!(matches!(err, RemoteError::Changed { .. }), "{err}");
        assert!(err.to_string().contains("mem://b/x.nc"), "{err}");
        let s = st.clone();
        let err = block_on(async move {
            s.get_ranges(&Path::from("gone.nc"), None, std::slice::from_ref(&(0..4)))
                .await
        })
        .expect("runtime")
        .expect_err("missing");
        assert!(matches!(err, RemoteError::NotFound { .. }), "{err}");
        // a range past the end is an error naming the object, not short data
        let s = st.clone();
        let err = block_on(async move {
            s.get_ranges(&Path::from("x.nc"), meta.e_tag, std::slice::from_ref(&(95..120)))
                .await
        })
        .expect("runtime")
        .expect_err("past the end");
        assert!(err.to_string().contains("mem://b/x.nc"), "{err}");
    }

    #[test]
    fn download_streams_to_a_file() {
        let st = store_with(&["d/x.nc"]);
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("copy");
        let (s, d) = (st.clone(), dest.clone());
        let meta = block_on(async move { s.download(&Path::from("d/x.nc"), None, &d).await })
            .expect("runtime")
            .expect("download");
        assert_eq!(meta.size, 100);
        assert_eq!(std::fs::read(&dest).expect("read").len(), 100);
    }

    #[test]
    fn credentials_files_key_value_and_json() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kv = dir.path().join("s3.env");
        std::fs::write(
            &kv,
            "# comment\n\nexport AWS_ACCESS_KEY_ID=AKIA123\naws_secret_access_key = 'se=cret'\nAWS_REGION=\"eu-west-1\"\n",
        )
        .expect("write");
        let got = read_credentials_file(&kv).expect("parse");
        assert_eq!(
            got,
            [
                ("AWS_ACCESS_KEY_ID".to_string(), "AKIA123".to_string()),
                ("aws_secret_access_key".to_string(), "se=cret".to_string()),
                ("AWS_REGION".to_string(), "eu-west-1".to_string()),
            ]
        );
        let js = dir.path().join("c.json");
        std::fs::write(&js, r#"{"aws_access_key_id": "AKIA", "aws_allow_http": true}"#).expect("write");
        assert_eq!(read_credentials_file(&js).expect("parse").len(), 2);
        std::fs::write(&kv, "no equals sign here\n").expect("write");
        let err = read_credentials_file(&kv).unwrap_err();
        assert!(err.contains("line 1") && !err.contains("equals sign"), "{err}");
        std::fs::write(&js, r#"{"k": {"nested": 1}}"#).expect("write");
        assert!(read_credentials_file(&js).unwrap_err().contains("'k'"));
    }

    #[test]
    fn store_options_are_checked() {
        let url = parse_object_url("s3://bucket/x.nc")
            .expect("valid")
            .expect("remote");
        let spec = StorageSpec {
            endpoint: Some("http://127.0.0.1:9".into()),
            allow_http: true,
            options: [("aws_acces_key_id".to_string(), "sekrit".to_string())].into(),
            ..StorageSpec::default()
        };
        let err = build_store(&url, Some(&spec)).unwrap_err();
        assert!(
            err.contains("aws_acces_key_id") && !err.contains("sekrit"),
            "{err}"
        );
        let spec = StorageSpec {
            options: [
                ("AWS_ACCESS_KEY_ID".to_string(), "AKIA".to_string()),
                ("Aws_Secret_Access_Key".to_string(), "s3cr3t".to_string()),
            ]
            .into(),
            anonymous: true,
            ..spec
        };
        let st = build_store(&url, Some(&spec)).expect("valid options");
        assert_eq!(st.base, "s3://bucket");
        assert!(!format!("{st:?}").contains("AKIA") && !format!("{st:?}").contains("s3cr3t"));
        let http = parse_object_url("https://example.org/a/b.nc")
            .expect("valid")
            .expect("remote");
        assert_eq!(
            build_store(&http, None).expect("http store").base,
            "https://example.org"
        );
    }
}
