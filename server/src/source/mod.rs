//! Sources: what one file holds and where its bytes are.
//!
//! Opening a file uses libnetcdf/libhdf5 (behind their global lock) *once*, to learn the
//! logical model (dimensions, variables, attributes) and the physical layout (chunk byte
//! ranges, filters). Everything here is plain data afterwards, so the request path can read
//! bytes with `pread` and decode them in Rust on every core.

pub mod cache;
pub mod classic;
pub mod ffi;
pub mod formats;
pub mod icechunk;
pub mod kerchunk;
pub mod native;
pub mod nc3;
pub mod netcdf;
pub mod remote;
pub mod tree;
pub mod zarr_store;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::dataset::attrs::Attrs;
use crate::model::{DType, Endian};

/// Identity of one source file: used for ETags and to detect changed files.
///
/// For an object-store source, `path` holds its URL (`s3://bucket/key`), `mtime_ns` its
/// last-modified time and `etag` its ETag; `remote` is how to read it (not part of the
/// identity, not persisted). A local file also has its [`Inode`] (from [`SourceFile::stat`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceFile {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i64,
    /// Always written (no `skip_serializing_if`): the aggregate index cache uses postcard,
    /// a format in which every field must be present.
    #[serde(default)]
    pub etag: Option<String>,
    /// What `stat` said about a local file when it was indexed; `None` for objects and for
    /// identities not taken from one file's `stat` (temporary copies, reference sets).
    #[serde(default)]
    pub inode: Option<Inode>,
    #[serde(skip)]
    pub remote: Option<Arc<crate::storage::RemoteObject>>,
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
    pub ino: u64,
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

/// One step of an HDF5 filter pipeline that we can undo in Rust.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Filter {
    /// zlib stream (HDF5 "deflate"), with the level it was written with.
    Deflate(u8),
    /// Byte shuffle with the element size.
    Shuffle(usize),
    /// Fletcher-32 checksum appended to the chunk.
    Fletcher32,
    /// Zstandard frame (HDF5 plugin 32015, numcodecs/Zarr `zstd`).
    Zstd,
    /// gzip stream (numcodecs/Zarr `gzip`).
    Gzip,
    /// Blosc-1 frame (numcodecs/Zarr `blosc`; the frame says how to undo itself).
    Blosc,
    /// A Zarr v3 codec chain our own steps cannot express (crc32c, transpose, bitround,
    /// nested sharding...), decoded with `zarrs`: its JSON spec (`codec::zarr_v3::spec`).
    /// Always the only step; it yields little-endian elements.
    ZarrV3(String),
    /// A codec declared by a reference set or Zarr store that we cannot decode (its id):
    /// such chunks are still served as stored on `/kerchunk`, but `/zarr` answers 501.
    Unsupported(String),
}

/// Byte location of one stored chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkLoc {
    pub offset: u64,
    /// Stored (compressed) size; 0 means "never written": the chunk is all fill value.
    pub size: u64,
    /// HDF5 filter mask: bit i set = filter i was skipped for this chunk.
    pub filter_mask: u32,
}

/// Where and how a variable's values are stored in one file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Storage {
    /// HDF5 chunked layout; `locs` is dense, row-major over the chunk grid.
    Chunked {
        chunk_shape: Vec<u64>,
        filters: Vec<Filter>,
        locs: Arc<Vec<ChunkLoc>>,
    },
    /// The whole array as one C-ordered byte run (HDF5 contiguous, netCDF-3 fixed variables).
    Contiguous { offset: u64 },
    /// netCDF-3 record variable: record `r` is a C-ordered slab at `begin + r * recsize`.
    Records { begin: u64, recsize: u64 },
    /// Storage never allocated: every value is the fill value.
    Unallocated,
    /// Values read at open time (compact layout, strings): little-endian bytes, or strings.
    Memory(Arc<MemValues>),
    /// Chunks listed one by one, each in any file or held inline (kerchunk references, Zarr
    /// stores); `filters` is the encode-order pipeline, as for `Chunked`.
    Refs {
        chunk_shape: Vec<u64>,
        filters: Vec<Filter>,
        table: Arc<ChunkTable>,
    },
}

impl Storage {
    /// Chunk shape and filter pipeline of chunk-addressed storage.
    pub fn chunking(&self) -> Option<(&Vec<u64>, &[Filter])> {
        match self {
            Storage::Chunked {
                chunk_shape, filters, ..
            }
            | Storage::Refs {
                chunk_shape, filters, ..
            } => Some((chunk_shape, filters)),
            _ => None,
        }
    }
}

/// Where each chunk of a `Storage::Refs` variable is.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ChunkTable {
    /// Files the references point into: local paths, or object URLs (`s3://b/k`) whose
    /// handles are in `remote`.
    pub files: Arc<Vec<PathBuf>>,
    /// Same order as `files`: how to read an object-store file (`None`: a local file).
    /// Attached when the reference set is opened (handles are not persisted).
    #[serde(skip)]
    pub remote: Arc<Vec<Option<Arc<SourceFile>>>>,
    /// One entry per chunk of the grid, row-major.
    pub chunks: Vec<ChunkRef>,
    /// The pipeline as the source declared it (numcodecs `compressor` and `filters` JSON),
    /// repeated verbatim on `/kerchunk` so clients decode exactly what was stored.
    pub compressor: String,
    pub numcodecs_filters: String,
    /// Little-endian bytes missing chunks read as (Zarr's `fill_value`, which need not be
    /// the CF `_FillValue`); `None`: the netCDF rule.
    pub fill: Option<Vec<u8>>,
}

/// One chunk of a `Storage::Refs` variable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ChunkRef {
    /// Not stored: reads as the fill value.
    Missing,
    /// Bytes `[offset, offset+size)` of `files[file]`.
    Range { file: u32, offset: u64, size: u64 },
    /// All of `files[file]` (Zarr chunk files, `[url]` references).
    Whole { file: u32 },
    /// Bytes held in the reference set.
    Inline(#[serde(with = "base64_bytes")] Vec<u8>),
}

/// Whether any reference table of the group (or its subgroups) points into object stores.
pub fn refs_remote(g: &SourceGroup) -> bool {
    g.vars.iter().any(|v| match &v.data.storage {
        Storage::Refs { table, .. } => table.remote.iter().any(Option::is_some),
        _ => false,
    }) || g.groups.iter().any(refs_remote)
}

/// Values held in memory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MemValues {
    /// Little-endian element bytes in C order (base64 in the index cache: JSON arrays of
    /// byte values are several times larger and slower to parse).
    Bytes(#[serde(with = "base64_bytes")] Vec<u8>),
    /// Strings in C order (NC_STRING variables).
    Strings(Vec<String>),
}

mod base64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <&str>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

/// One variable as stored in one file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FileVar {
    pub file: Arc<SourceFile>,
    pub shape: Vec<u64>,
    /// Byte order of the stored elements.
    pub endian: Endian,
    pub storage: Storage,
    /// Where an inlined variable (`storage` is `Memory`, read at index time) is stored in
    /// the file. Serving uses the values in memory; references written without inline data
    /// (`cloudify index --inline-threshold 0`, for VirtualiZarr, which refuses inlined
    /// chunks) point here instead. `None` when not inlined, or when the values in memory no
    /// longer equal the stored bytes, with the reason.
    #[serde(default)]
    pub stored: Option<Box<Stored>>,
}

/// Where the values of a variable held in memory came from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Stored {
    /// Read as is from this storage.
    At { endian: Endian, storage: Storage },
    /// Rewritten after reading (why), so no bytes in the file equal them.
    Rewritten(String),
}

/// A variable of one file, as the library describes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceVar {
    pub name: String,
    pub dims: Vec<String>,
    pub dtype: DType,
    pub attrs: Attrs,
    pub data: FileVar,
}

/// A dimension of one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceDim {
    pub name: String,
    pub len: u64,
    pub unlimited: bool,
}

/// A group of one file (the root group has path "").
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceGroup {
    pub path: String,
    pub dims: Vec<SourceDim>,
    pub attrs: Attrs,
    pub vars: Vec<SourceVar>,
    pub groups: Vec<SourceGroup>,
    /// Variables that exist in the file but cannot be served (e.g. compound types), with why.
    pub skipped: Vec<(String, String)>,
}

/// Everything learnt from opening one file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceIndex {
    pub file: Arc<SourceFile>,
    pub root: SourceGroup,
}

/// Why a source cannot be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a netCDF or HDF5 file")]
    NotNetcdf { path: PathBuf },
    #[error("{path}: {message}")]
    Library { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Malformed { path: PathBuf, message: String },
    #[error("{0}")]
    Remote(#[from] crate::storage::RemoteError),
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
    pub fn stat(path: PathBuf) -> Result<Self, SourceError> {
        let meta = std::fs::metadata(&path).map_err(|source| SourceError::Io {
            path: path.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(SourceError::Io {
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

/// File formats we recognise by their magic bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// netCDF classic (CDF-1), 64-bit offset (CDF-2) or 64-bit data (CDF-5).
    Nc3,
    /// HDF5, i.e. netCDF-4.
    Hdf5,
}

/// Sniffs the format from the first bytes of a file. HDF5 files may carry a user block, so
/// the signature is also looked for at 512, 1024, 2048, ... as the HDF5 spec says.
pub fn sniff(path: &std::path::Path) -> Result<Format, SourceError> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).map_err(|source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut head = [0u8; 8];
    let n = f.read_at(&mut head, 0).map_err(|source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if n >= 4 && &head[..3] == b"CDF" && matches!(head[3], 1 | 2 | 5) {
        return Ok(Format::Nc3);
    }
    const SIG: [u8; 8] = [0x89, b'H', b'D', b'F', b'\r', b'\n', 0x1a, b'\n'];
    let mut off = 0u64;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    while off + 8 <= len {
        let mut sig = [0u8; 8];
        if f.read_at(&mut sig, off).ok() == Some(8) && sig == SIG {
            return Ok(Format::Hdf5);
        }
        off = if off == 0 { 512 } else { off * 2 };
    }
    Err(SourceError::NotNetcdf {
        path: path.to_path_buf(),
    })
}

/// Variables up to this size are read at index time and kept with the index: coordinates,
/// bounds and other small arrays are then compared across files, sorted on and served
/// without touching the file again (the index cache is keyed by size and mtime, so the
/// values cannot go stale).
pub const INLINE_BYTES: u64 = 16 << 10;

/// Most chunks one variable's chunk table may hold. The table is dense (one entry per chunk
/// of the grid, written or not) and built when the source is opened, so the grid a few bytes
/// of metadata declare (an HDF5 dataspace, a `.zarray` shape) bounds the memory and time of
/// opening: 2^60 declared chunks would abort the process on allocation failure. 2^24 entries
/// are about 400 MB of index for one variable, far beyond the datasets served in practice
/// (a daily global field of 100 years in one-day chunks is 36 525).
pub const MAX_GRID_CHUNKS: u64 = 1 << 24;

/// Number of chunks of `grid` (chunks along each dimension), or why no chunk table is built
/// for it: more than [`MAX_GRID_CHUNKS`].
pub fn grid_chunks(grid: &[u64]) -> Result<usize, String> {
    if grid.contains(&0) {
        return Ok(0);
    }
    grid.iter()
        .try_fold(1u64, |acc, g| acc.checked_mul(*g))
        .filter(|n| *n <= MAX_GRID_CHUNKS)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| {
            format!(
                "chunk grid {grid:?} has more than {MAX_GRID_CHUNKS} chunks, the most one variable may have"
            )
        })
}

/// Points every variable of an index at `file`: after loading a cached index (whose file
/// entries are plain identities) or indexing a temporary copy of a remote object.
pub fn rebind(idx: &mut SourceIndex, file: &Arc<SourceFile>) {
    fn group(g: &mut SourceGroup, file: &Arc<SourceFile>) {
        for v in &mut g.vars {
            v.data.file = file.clone();
        }
        for sub in &mut g.groups {
            group(sub, file);
        }
    }
    idx.file = file.clone();
    group(&mut idx.root, file);
}

/// Opens and indexes one object-store source: from the index cache when it holds this
/// version (URL, size, ETag), else with ranged reads of the bytes the index needs
/// ([`remote::index`]); only a netCDF-4 file the native reader declines is copied to a
/// temporary local file (deleted afterwards) for libnetcdf.
pub fn open_remote(
    file: Arc<SourceFile>,
    cache: Option<&cache::IndexCache>,
    tmp_dir: &std::path::Path,
) -> Result<SourceIndex, SourceError> {
    if let Some(c) = cache
        && let Some(mut idx) = c.load(&file)
    {
        rebind(&mut idx, &file);
        return Ok(idx);
    }
    let Some(obj) = file.remote.clone() else {
        return open_file(file);
    };
    let t0 = std::time::Instant::now();
    let url = file.path.clone();
    let ranged = match remote::index(&file, &obj)? {
        remote::Ranged::Indexed { idx, fetched } => {
            tracing::info!(
                url = %url.display(),
                via = "ranged reads",
                size = file.size,
                bytes = fetched.bytes,
                requests = fetched.requests,
                ms = t0.elapsed().as_millis() as u64,
                "indexed remote object"
            );
            if let Some(c) = cache {
                c.store(&idx);
            }
            return Ok(idx);
        }
        remote::Ranged::Fallback { reason, fetched } => {
            tracing::info!(url = %url.display(), %reason, "native HDF5 reader declined the remote object; downloading it for libnetcdf");
            fetched
        }
    };
    let (tmp, meta) = crate::storage::fetch_temp(&file, &obj, tmp_dir)?;
    let local = Arc::new(SourceFile::local(tmp.path().to_path_buf(), meta.size, 0));
    let mut idx = open_file(local).map_err(|e| match e {
        // Name the object, not the temporary copy.
        SourceError::Io { source, .. } => SourceError::Io {
            path: url.clone(),
            source,
        },
        SourceError::NotNetcdf { .. } => SourceError::NotNetcdf { path: url.clone() },
        SourceError::Library { message, .. } => SourceError::Library {
            path: url.clone(),
            message,
        },
        SourceError::Malformed { message, .. } => SourceError::Malformed {
            path: url.clone(),
            message,
        },
        other => other,
    })?;
    drop(tmp);
    // The copy's identity is what was indexed.
    let file = Arc::new(SourceFile {
        size: meta.size,
        mtime_ns: meta.last_modified.timestamp_nanos_opt().unwrap_or(0),
        etag: meta.e_tag.clone(),
        ..(*file).clone()
    });
    rebind(&mut idx, &file);
    tracing::info!(
        url = %file.path.display(),
        via = "download",
        size = meta.size,
        bytes = meta.size + ranged.bytes,
        requests = ranged.requests + 1,
        ms = t0.elapsed().as_millis() as u64,
        "indexed remote object"
    );
    if let Some(c) = cache {
        c.store(&idx);
    }
    Ok(idx)
}

/// Opens and indexes one file, whatever its format.
///
/// A local file that changes while it is indexed fails as changed (like an object whose
/// ETag moves): its index could mix two versions. Reads of inlined values check this too.
pub fn open_file(file: Arc<SourceFile>) -> Result<SourceIndex, SourceError> {
    let mut idx = match sniff(&file.path)? {
        Format::Nc3 => classic::open_nc3(file.clone()),
        Format::Hdf5 => open_hdf5(file.clone()),
    }?;
    inline_small(&mut idx.root)?;
    if file.inode.is_some() {
        let meta = std::fs::metadata(&file.path).map_err(|source| SourceError::Io {
            path: file.path.clone(),
            source,
        })?;
        if let Some(what) = file.local_change(&meta) {
            return Err(SourceError::Malformed {
                path: file.path.clone(),
                message: format!("file changed while it was indexed ({what})"),
            });
        }
    }
    Ok(idx)
}

/// netCDF-4/HDF5: the native reader first (parallel, no global lock), the library when it
/// declines the file or is switched off (`CLOUDIFY_HDF5_READER=library`).
fn open_hdf5(file: Arc<SourceFile>) -> Result<SourceIndex, SourceError> {
    if native::enabled() {
        match native::open_native_declined(&file) {
            Ok(idx) => return Ok(idx),
            Err(t @ native::Declined::Truncated { .. }) => {
                // libhdf5 refuses it too, saying only "NetCDF: HDF error".
                return Err(SourceError::Malformed {
                    path: file.path.clone(),
                    message: t.to_string(),
                });
            }
            Err(native::Declined::Unsupported(why)) => native::log_fallback(&file.path, &why),
        }
    }
    library_hdf5(file)
}

/// The library path, saying "truncated" (with the sizes) where libnetcdf would only say
/// "NetCDF: HDF error".
fn library_hdf5(file: Arc<SourceFile>) -> Result<SourceIndex, SourceError> {
    let path = file.path.clone();
    netcdf::open_hdf5(file).map_err(|e| match native::truncation(&path) {
        Some(t) => SourceError::Malformed {
            path,
            message: t.to_string(),
        },
        None => e,
    })
}

/// Indexes an HDF5 file with the native reader only, as `open_file` would (small variables
/// inlined); the inner `Err` is why it declined. For the reader fidelity test.
pub fn index_native(file: Arc<SourceFile>) -> Result<Result<SourceIndex, native::Unsupported>, SourceError> {
    match native::open_native(&file) {
        Ok(mut idx) => {
            inline_small(&mut idx.root)?;
            Ok(Ok(idx))
        }
        Err(why) => Ok(Err(why)),
    }
}

/// Indexes an HDF5 file through libnetcdf/libhdf5 only, as `open_file` would.
pub fn index_library(file: Arc<SourceFile>) -> Result<SourceIndex, SourceError> {
    let mut idx = library_hdf5(file)?;
    inline_small(&mut idx.root)?;
    Ok(idx)
}

/// Whether [`inline_small`] reads `v` into the index.
fn inlinable(v: &SourceVar) -> bool {
    let n: u64 = v.data.shape.iter().product();
    let bytes = n.saturating_mul(v.dtype.size() as u64);
    !(v.dtype == DType::Str || bytes > INLINE_BYTES || matches!(v.data.storage, Storage::Memory(_)))
}

/// The `(offset, len)` byte ranges [`inline_small`] will read for the group's variables, so
/// that a remote object can fetch them all at once first.
pub(crate) fn small_var_ranges(g: &SourceGroup, out: &mut Vec<(u64, u64)>) {
    for v in g.vars.iter().filter(|v| inlinable(v)) {
        let elem = v.dtype.size() as u64;
        let n: u64 = v.data.shape.iter().product();
        match &v.data.storage {
            Storage::Contiguous { offset } if n > 0 => out.push((*offset, n * elem)),
            Storage::Records { begin, recsize } => {
                let slab = v.data.shape.iter().skip(1).product::<u64>() * elem;
                let nrec = v.data.shape.first().copied().unwrap_or(0);
                if slab > 0 {
                    out.extend((0..nrec).map(|r| (begin + r * recsize, slab)));
                }
            }
            Storage::Chunked { locs, .. } => {
                out.extend(locs.iter().filter(|l| l.size > 0).map(|l| (l.offset, l.size)));
            }
            _ => {}
        }
    }
    for sub in &g.groups {
        small_var_ranges(sub, out);
    }
}

pub(crate) fn inline_small(g: &mut SourceGroup) -> Result<(), SourceError> {
    for v in &mut g.vars {
        if !inlinable(v) {
            continue;
        }
        let fill = crate::dataset::aggregate::storage_fill(v);
        let buf =
            crate::chunk::read::read_whole(&v.data, v.dtype, &fill).map_err(|e| SourceError::Malformed {
                path: v.data.file.path.clone(),
                message: format!("variable '{}': {e}", v.name),
            })?;
        let storage = std::mem::replace(
            &mut v.data.storage,
            Storage::Memory(Arc::new(MemValues::Bytes(buf))),
        );
        let endian = std::mem::replace(&mut v.data.endian, Endian::Little);
        v.data.stored = Some(Box::new(Stored::At { endian, storage }));
    }
    for sub in &mut g.groups {
        inline_small(sub)?;
    }
    Ok(())
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
