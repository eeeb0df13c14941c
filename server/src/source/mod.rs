//! Sources: what one file holds and where its bytes are.
//!
//! Opening a file uses libnetcdf/libhdf5 (behind their global lock) *once*, to learn the
//! logical model (dimensions, variables, attributes) and the physical layout (chunk byte
//! ranges, filters). Everything here is plain data afterwards, so the request path can read
//! bytes with `pread` and decode them in Rust on every core.

pub mod classic;
pub mod ffi;
pub mod icechunk;
pub mod kerchunk;
pub mod kerchunk_parquet;
pub mod native;
pub mod nc3;
pub mod netcdf;
pub mod refset;
pub mod remote;
pub mod tree;
pub mod zarr_store;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::attrs::Attrs;
pub use crate::codec::Filter;
use crate::dtype::{DType, Endian};
pub use crate::storage::file::{Inode, SourceFile};

/// Byte location of one stored chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkLoc {
    /// Byte offset of the stored chunk in the file.
    pub offset: u64,
    /// Stored (compressed) size; 0 means "never written": the chunk is all fill value.
    pub size: u64,
    /// HDF5 filter mask: bit i set = filter i was skipped for this chunk.
    pub filter_mask: u32,
}

/// Where and how a variable's values are stored in one file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Layout {
    /// HDF5 chunked layout; `locs` is dense, row-major over the chunk grid.
    Chunked {
        /// Shape of every chunk (edge chunks are stored full size, padded).
        chunk_shape: Vec<u64>,
        /// HDF5 filter pipeline in encode order (decoding applies it in reverse, skipping masked
        /// filters).
        filters: Vec<Filter>,
        /// One location per chunk of the grid, row-major (shared, hence `Arc`: the index can be
        /// large).
        locs: Arc<Vec<ChunkLoc>>,
    },
    /// The whole array as one C-ordered byte run (HDF5 contiguous, netCDF-3 fixed variables).
    Contiguous {
        /// Byte offset of the first element in the file.
        offset: u64,
    },
    /// netCDF-3 record variable: record `r` is a C-ordered slab at `begin + r * recsize`.
    Records {
        /// Byte offset of record 0 of this variable in the file.
        begin: u64,
        /// Bytes from one record to the next: the sum of all record variables' slab sizes (padded),
        /// not this variable's alone.
        recsize: u64,
    },
    /// Layout never allocated: every value is the fill value.
    Unallocated,
    /// Values read at open time (compact layout, strings): little-endian bytes, or strings.
    Memory(Arc<MemValues>),
    /// Chunks listed one by one, each in any file or held inline (kerchunk references, Zarr
    /// stores); `filters` is the encode-order pipeline, as for `Chunked`. (Named `Refs` in
    /// the index cache.)
    #[serde(rename = "Refs")]
    Listed {
        /// Shape of every chunk (edge chunks are stored full size, as Zarr does).
        chunk_shape: Vec<u64>,
        /// Codec pipeline in encode order, as for `Chunked`.
        filters: Vec<Filter>,
        /// Where each chunk is (shared, hence `Arc`: the table can be large).
        table: Arc<ChunkTable>,
    },
}

impl Layout {
    /// Chunk shape and filter pipeline of chunk-addressed storage.
    pub fn chunking(&self) -> Option<(&Vec<u64>, &[Filter])> {
        match self {
            Layout::Chunked {
                chunk_shape, filters, ..
            }
            | Layout::Listed {
                chunk_shape, filters, ..
            } => Some((chunk_shape, filters)),
            _ => None,
        }
    }
}

/// Where each chunk of a `Layout::Listed` variable is.
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
    /// numcodecs `filters` JSON as the source declared it (`null` for none), repeated verbatim on
    /// `/kerchunk`; empty when the pipeline has no numcodecs spelling (the variable is then left
    /// out of `/kerchunk`).
    pub numcodecs_filters: String,
    /// Little-endian bytes missing chunks read as (Zarr's `fill_value`, which need not be
    /// the CF `_FillValue`); `None`: the netCDF rule.
    pub fill: Option<Vec<u8>>,
}

/// One chunk of a `Layout::Listed` variable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ChunkRef {
    /// Not stored: reads as the fill value.
    Missing,
    /// Bytes `[offset, offset+size)` of `files[file]`.
    Range {
        /// Index into [`ChunkTable::files`].
        file: u32,
        /// Byte offset of the chunk in that file.
        offset: u64,
        /// Stored (compressed) size in bytes.
        size: u64,
    },
    /// All of `files[file]` (Zarr chunk files, `[url]` references).
    Whole {
        /// Index into [`ChunkTable::files`].
        file: u32,
    },
    /// Bytes held in the reference set.
    Inline(#[serde(with = "base64_bytes")] Vec<u8>),
}

/// Whether any reference table of the group (or its subgroups) points into object stores.
pub fn refs_remote(g: &SourceGroup) -> bool {
    g.vars.iter().any(|v| match &v.data.layout {
        Layout::Listed { table, .. } => table.remote.iter().any(Option::is_some),
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
    /// The file the values are in (its identity is checked before serving inlined or cached
    /// values).
    pub file: Arc<SourceFile>,
    /// Length along each dimension in this file (for a concatenated variable, this file's piece).
    pub shape: Vec<u64>,
    /// Byte order of the stored elements.
    pub endian: Endian,
    /// (Named `storage` in the index cache.)
    #[serde(rename = "storage")]
    pub layout: Layout,
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
    At {
        /// Byte order of the stored elements.
        endian: Endian,
        /// Where the values are in the file.
        #[serde(rename = "storage")]
        layout: Layout,
    },
    /// Rewritten after reading (why), so no bytes in the file equal them.
    Rewritten(String),
}

/// A variable of one file, as the library describes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceVar {
    /// Variable name as in the file.
    pub name: String,
    /// Dimension names, outermost first.
    pub dims: Vec<String>,
    /// Element type of the values as served.
    pub dtype: DType,
    /// Attributes as in the file (including `_FillValue`).
    pub attrs: Attrs,
    /// Where and how the values are stored.
    pub data: FileVar,
}

/// A dimension of one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceDim {
    /// Dimension name.
    pub name: String,
    /// Current length (for an unlimited dimension: the number of records written).
    pub len: u64,
    /// True for a netCDF unlimited (record) dimension, the one files are usually concatenated
    /// along.
    pub unlimited: bool,
}

/// A group of one file (the root group has path "").
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceGroup {
    /// Path of the group in the file: `""` for the root, e.g. `g1/sub` below it.
    pub path: String,
    /// Dimensions defined in this group.
    pub dims: Vec<SourceDim>,
    /// Group attributes as in the file.
    pub attrs: Attrs,
    /// Variables that can be served.
    pub vars: Vec<SourceVar>,
    /// Child groups.
    pub groups: Vec<SourceGroup>,
    /// Variables that exist in the file but cannot be served (e.g. compound types), with why.
    pub skipped: Vec<(String, String)>,
}

/// Everything learnt from opening one file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceIndex {
    /// The file the index describes (its identity is the cache key and change check).
    pub file: Arc<SourceFile>,
    /// The file's root group.
    pub root: SourceGroup,
}

/// Why a source cannot be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The file, for messages.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is neither netCDF-3 nor HDF5 (no known signature).
    #[error("{path}: not a netCDF or HDF5 file")]
    NotNetcdf {
        /// The file, for messages.
        path: PathBuf,
    },
    /// The netCDF or HDF5 library cannot open or read the file.
    #[error("{path}: {message}")]
    Library {
        /// The file, for messages.
        path: PathBuf,
        /// What the library said.
        message: String,
    },
    /// The file has a known format but contents that contradict it (bad header, offsets beyond the
    /// end, unknown types).
    #[error("{path}: {message}")]
    Malformed {
        /// The file, for messages.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An object-store source cannot be listed or read, or has changed since it was indexed.
    #[error("{0}")]
    Remote(#[from] crate::storage::RemoteError),
}

impl From<crate::storage::file::StatError> for SourceError {
    fn from(e: crate::storage::file::StatError) -> Self {
        SourceError::Io {
            path: e.path,
            source: e.source,
        }
    }
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

/// Whether `open::file::inline_small` reads `v` into the index.
pub fn inlinable(v: &SourceVar) -> bool {
    let n: u64 = v.data.shape.iter().product();
    let bytes = n.saturating_mul(v.dtype.size() as u64);
    !(v.dtype == DType::Str || bytes > INLINE_BYTES || matches!(v.data.layout, Layout::Memory(_)))
}

/// The `(offset, len)` byte ranges `open::file::inline_small` will read for the group's variables, so
/// that a remote object can fetch them all at once first.
pub fn small_var_ranges(g: &SourceGroup, out: &mut Vec<(u64, u64)>) {
    for v in g.vars.iter().filter(|v| inlinable(v)) {
        let elem = v.dtype.size() as u64;
        let n: u64 = v.data.shape.iter().product();
        match &v.data.layout {
            Layout::Contiguous { offset } if n > 0 => out.push((*offset, n * elem)),
            Layout::Records { begin, recsize } => {
                let slab = v.data.shape.iter().skip(1).product::<u64>() * elem;
                let nrec = v.data.shape.first().copied().unwrap_or(0);
                if slab > 0 {
                    out.extend((0..nrec).map(|r| (begin + r * recsize, slab)));
                }
            }
            Layout::Chunked { locs, .. } => {
                out.extend(locs.iter().filter(|l| l.size > 0).map(|l| (l.offset, l.size)));
            }
            _ => {}
        }
    }
    for sub in &g.groups {
        small_var_ranges(sub, out);
    }
}
