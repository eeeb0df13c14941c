//! Indexing netCDF-4/HDF5 files in pure Rust, without libnetcdf/libhdf5.
//!
//! The C libraries serialise every call behind one global lock, so indexing a large
//! aggregation through them uses one core however many the machine has (issue #3: ~1.4 ms a
//! file, serial). This reader parses the same metadata with `netcdf-reader` (the netCDF-4
//! conventions: dimension scales, hidden attributes, `_nc4_non_coord_` names, creation order)
//! and `hdf5-reader` (the HDF5 format: object headers, layouts, chunk indexes), reading the
//! file with positional reads, on any number of threads at once.
//!
//! It must never produce a different index than the library path. Whenever the file holds
//! something it does not model exactly like libnetcdf (user-defined types, filters we do not
//! decode, user blocks, shared messages, any parse error), it answers [`Unsupported`] and the
//! caller falls back to the library; the fidelity test compares both readers file by file.

use std::path::Path;
use std::sync::Arc;

use hdf5_reader::messages::HdfMessage;
use hdf5_reader::storage::{BlockCacheStorage, DynStorage, FileStorage};
use hdf5_reader::{ByteOrder, Datatype, Hdf5File};
use netcdf_reader::NcFile;
use netcdf_reader::types::{NcAttrValue, NcAttribute, NcGroup, NcType, NcVariable};

use super::{
    ChunkLoc, FileVar, Filter, Layout, MemValues, SourceDim, SourceFile, SourceGroup, SourceIndex, SourceVar,
};
use crate::attrs::{AttrValue, Attrs};
use crate::dtype::{DType, Endian};

/// Why the native reader declined a file: the library path is used instead.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unsupported(pub String);

fn unsupported(e: impl std::fmt::Display) -> Unsupported {
    Unsupported(e.to_string())
}

/// Which reader indexes netCDF-4/HDF5 files, from `CLOUDIFY_HDF5_READER`: `library` forces
/// libnetcdf/libhdf5 (an escape hatch should a file index differently), anything else tries
/// the native reader first.
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        !std::env::var("CLOUDIFY_HDF5_READER").is_ok_and(|v| v.eq_ignore_ascii_case("library"))
    })
}

/// Why the native reader did not index a file.
#[derive(Debug, thiserror::Error)]
pub enum Declined {
    /// Something it does not model exactly like libnetcdf: the library indexes the file.
    #[error(transparent)]
    Unsupported(#[from] Unsupported),
    /// The file ends before the end-of-file address its superblock records: libhdf5 refuses
    /// it too (libnetcdf then says only "NetCDF: HDF error"), so it is reported as what it
    /// is, and a remote one is not downloaded for the library to refuse.
    #[error("truncated: file is {len} bytes, HDF5 expects {eof}")]
    Truncated {
        /// Actual length of the file in bytes.
        len: u64,
        /// End-of-file address the superblock records.
        eof: u64,
    },
}

/// Indexes a local netCDF-4/HDF5 file natively, or says why it cannot. Panics inside the
/// third-party parsers (malformed input) are caught and reported as unsupported, so a bad
/// file costs a fallback, never the process.
pub fn open_native(file: &Arc<SourceFile>) -> Result<SourceIndex, Unsupported> {
    match open_native_declined(file) {
        Ok(idx) => Ok(idx),
        Err(Declined::Unsupported(u)) => Err(u),
        Err(t @ Declined::Truncated { .. }) => Err(Unsupported(t.to_string())),
    }
}

/// [`open_native`], telling a truncated file apart from one the reader does not support.
pub fn open_native_declined(file: &Arc<SourceFile>) -> Result<SourceIndex, Declined> {
    let f = file.clone();
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        // Metadata is read in many small pieces (headers, heaps, B-tree nodes); reading the
        // file in 64 KiB blocks turns those into a few `pread`s (most files' metadata sits in
        // the first block) without reading or mapping the data itself.
        let file_storage: DynStorage = Arc::new(FileStorage::open(&f.path).map_err(unsupported)?);
        let storage: DynStorage = Arc::new(BlockCacheStorage::new(file_storage, 64 << 10, 64));
        open_inner(&f, storage)
    }));
    opened.unwrap_or_else(|_| Err(Unsupported("the native reader panicked".into()).into()))
}

/// Why a local HDF5 file the library failed to open is truncated, if it is: its size is
/// below the end-of-file address in its superblock. Only the superblock is read.
pub fn truncation(path: &Path) -> Option<Declined> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let storage: DynStorage = Arc::new(FileStorage::open(path).ok()?);
        let len = storage.len();
        let h5 = Hdf5File::from_storage(storage).ok()?;
        let eof = h5.superblock().eof_address;
        (eof != u64::MAX && len < eof).then_some(Declined::Truncated { len, eof })
    }))
    .ok()
    .flatten()
}

/// Indexes a netCDF-4/HDF5 file natively from any storage (an object read with ranged
/// requests); `file` is what the index points at and `storage` must hold its bytes. Panics
/// are caught as in [`open_native`].
pub fn open_storage(file: &Arc<SourceFile>, storage: DynStorage) -> Result<SourceIndex, Declined> {
    let f = file.clone();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || open_inner(&f, storage)))
        .unwrap_or_else(|_| Err(Unsupported("the native reader panicked".into()).into()))
}

fn open_inner(file: &Arc<SourceFile>, storage: DynStorage) -> Result<SourceIndex, Declined> {
    let file_len = storage.len();
    let h5 = Hdf5File::from_storage(storage.clone()).map_err(unsupported)?;
    let sb = h5.superblock();
    if sb.base_address != 0 {
        return Err(Unsupported("HDF5 user block".into()).into());
    }
    // libhdf5 refuses a file shorter than its recorded end; metadata alone would not notice
    // a file cut inside its raw data.
    if sb.eof_address != u64::MAX && file_len < sb.eof_address {
        return Err(Declined::Truncated {
            len: file_len,
            eof: sb.eof_address,
        });
    }
    let nc = NcFile::from_storage(storage).map_err(unsupported)?;
    let root = nc.root_group().map_err(unsupported)?;
    let ctx = Ctx {
        h5: &h5,
        nc: &nc,
        file,
    };
    let root = ctx.group(root, "", &[])?;
    Ok(SourceIndex {
        file: file.clone(),
        root,
    })
}

struct Ctx<'a> {
    h5: &'a Hdf5File,
    nc: &'a NcFile,
    file: &'a Arc<SourceFile>,
}

impl Ctx<'_> {
    /// `outer`: the dimensions of the enclosing groups, which `netcdf-reader` also lists in
    /// a group whose variables use them, where libnetcdf lists only the group's own.
    fn group(&self, g: &NcGroup, path: &str, outer: &[SourceDim]) -> Result<SourceGroup, Unsupported> {
        let h5g = if path.is_empty() {
            self.h5.root_group()
        } else {
            self.h5.group(path)
        }
        .map_err(unsupported)?;
        let own_datasets = if path.is_empty() {
            None
        } else {
            Some(h5g.member_names().map_err(unsupported)?.1)
        };
        let mut dims = Vec::with_capacity(g.dimensions.len());
        for d in &g.dimensions {
            let dim = SourceDim {
                name: d.name.clone(),
                len: d.size,
                unlimited: d.is_unlimited,
            };
            // Every netCDF-4 dimension is a dataset (its coordinate variable or a bare
            // dimension scale) in the group that defines it.
            if let Some(own) = &own_datasets
                && !own.contains(&d.name)
            {
                if outer.iter().rev().any(|o| o.name == d.name) {
                    continue;
                }
                return Err(Unsupported(format!(
                    "group '{path}': dimension '{}' has no dataset",
                    d.name
                )));
            }
            dims.push(dim);
        }
        let mut attrs = attrs(&g.attributes)?;
        creation_ordered(self.h5, h5g.address(), &mut attrs)?;
        let mut scope: Vec<SourceDim> = outer.to_vec();
        scope.extend(dims.iter().cloned());
        let mut vars = Vec::with_capacity(g.variables.len());
        for v in &g.variables {
            vars.push(self.var(v, path)?);
        }
        let mut groups = Vec::with_capacity(g.groups.len());
        for sub in &g.groups {
            let sub_path = if path.is_empty() {
                sub.name.clone()
            } else {
                format!("{path}/{}", sub.name)
            };
            groups.push(self.group(sub, &sub_path, &scope)?);
        }
        Ok(SourceGroup {
            path: path.to_string(),
            dims,
            attrs,
            vars,
            groups,
            skipped: Vec::new(),
        })
    }

    fn var(&self, v: &NcVariable, group: &str) -> Result<SourceVar, Unsupported> {
        let dtype = dtype_of(&v.dtype)
            .ok_or_else(|| Unsupported(format!("variable '{}': type {:?}", v.name, v.dtype)))?;
        let dims: Vec<String> = v.dimensions.iter().map(|d| d.name.clone()).collect();
        let shape: Vec<u64> = v.dimensions.iter().map(|d| d.size).collect();
        let mut attrs = attrs(&v.attributes)?;
        creation_ordered(self.h5, v.data_offset, &mut attrs)?;
        let (storage, endian) = if dtype == DType::Str {
            let full = if group.is_empty() {
                v.name.clone()
            } else {
                format!("{group}/{}", v.name)
            };
            let strings = self
                .nc
                .read_variable_as_strings(&full)
                .map_err(|e| Unsupported(format!("variable '{}': {e}", v.name)))?;
            let n: u64 = shape.iter().product();
            if strings.len() as u64 != n {
                return Err(Unsupported(format!(
                    "variable '{}': {} strings for {n} elements",
                    v.name,
                    strings.len()
                )));
            }
            (
                Layout::Memory(Arc::new(MemValues::Strings(strings))),
                Endian::Little,
            )
        } else {
            self.layout(v, dtype, &shape)
                .map_err(|e| Unsupported(format!("variable '{}': {}", v.name, e.0)))?
        };
        Ok(SourceVar {
            name: v.name.clone(),
            dims,
            dtype,
            attrs,
            data: FileVar {
                file: self.file.clone(),
                shape,
                endian,
                layout: storage,
                stored: None,
            },
        })
    }

    /// The physical layout of one variable, from its HDF5 object header.
    fn layout(&self, v: &NcVariable, dtype: DType, shape: &[u64]) -> Result<(Layout, Endian), Unsupported> {
        let header = self.h5.get_or_parse_header(v.data_offset).map_err(unsupported)?;
        let (mut dspace, mut dt, mut layout, mut pipeline) = (None, None, None, None);
        for m in &header.messages {
            match m {
                HdfMessage::Dataspace(d) => dspace = Some(d),
                HdfMessage::Datatype(d) => dt = Some(&d.datatype),
                HdfMessage::DataLayout(l) => layout = Some(&l.layout),
                HdfMessage::FilterPipeline(p) => pipeline = Some(p),
                HdfMessage::Shared(_) => return Err(Unsupported("shared header message".into())),
                _ => {}
            }
        }
        let dspace = dspace.ok_or_else(|| Unsupported("no dataspace message".into()))?;
        let dt = dt.ok_or_else(|| Unsupported("no datatype message".into()))?;
        let layout = layout.ok_or_else(|| Unsupported("no layout message".into()))?;
        let (endian, elem) = match dt {
            Datatype::FixedPoint { size, byte_order, .. } | Datatype::FloatingPoint { size, byte_order } => (
                if *byte_order == ByteOrder::BigEndian {
                    Endian::Big
                } else {
                    Endian::Little
                },
                *size as usize,
            ),
            Datatype::String { .. } if dtype == DType::Char => (Endian::Little, 1),
            other => return Err(Unsupported(format!("HDF5 datatype {other:?}"))),
        };
        if elem != dtype.size() {
            return Err(Unsupported(format!("element size {elem} for {dtype:?}")));
        }
        let sb = self.h5.superblock();
        let undefined =
            |a: u64| a == u64::MAX || (sb.offset_size < 8 && a == (1u64 << (8 * sb.offset_size as u32)) - 1);
        use hdf5_reader::messages::layout::DataLayout as L;
        match layout {
            L::Contiguous { address, .. } => Ok((
                if undefined(*address) {
                    Layout::Unallocated
                } else {
                    Layout::Contiguous { offset: *address }
                },
                endian,
            )),
            L::Compact { data } => {
                // What the library path reads through libnetcdf: little-endian values.
                let n: u64 = shape.iter().product();
                if data.len() as u64 != n * elem as u64 || dspace.dims.as_slice() != shape {
                    return Err(Unsupported("compact data does not match the shape".into()));
                }
                let mut bytes = data.clone();
                if endian == Endian::Big && elem > 1 {
                    for c in bytes.chunks_exact_mut(elem) {
                        c.reverse();
                    }
                }
                Ok((Layout::Memory(Arc::new(MemValues::Bytes(bytes))), Endian::Little))
            }
            L::Chunked {
                address,
                dims,
                chunk_indexing,
                ..
            } => {
                let rank = shape.len();
                let mut cdims: Vec<u32> = dims.clone();
                if cdims.len() == dspace.dims.len() + 1 {
                    cdims.pop(); // layout v1-3 append the element size
                }
                let chunk_shape: Vec<u64> = cdims.iter().map(|&c| u64::from(c)).collect();
                if chunk_shape.len() != rank || chunk_shape.contains(&0) || dspace.dims.len() != rank {
                    return Err(Unsupported(format!(
                        "chunk shape {chunk_shape:?} does not fit shape {shape:?}"
                    )));
                }
                let filters = match pipeline {
                    None => Vec::new(),
                    Some(p) => p
                        .filters
                        .iter()
                        .map(|f| match f.id {
                            1 => Ok(Filter::Deflate(f.client_data.first().copied().unwrap_or(0) as u8)),
                            2 => Ok(Filter::Shuffle(elem)),
                            3 => Ok(Filter::Fletcher32),
                            32015 => Ok(Filter::Zstd),
                            id => Err(Unsupported(format!("HDF5 filter {id}"))),
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                };
                let grid: Vec<u64> = shape
                    .iter()
                    .zip(&chunk_shape)
                    .map(|(s, c)| s.div_ceil(*c))
                    .collect();
                let n = super::grid_chunks(&grid).map_err(Unsupported)?;
                let mut locs = vec![
                    ChunkLoc {
                        offset: 0,
                        size: 0,
                        filter_mask: 0
                    };
                    n
                ];
                if n > 0 && !undefined(*address) {
                    let chunk_bytes = chunk_shape.iter().product::<u64>() * elem as u64;
                    for e in self.chunk_entries(
                        *address,
                        &cdims,
                        chunk_indexing.as_ref(),
                        &dspace.dims,
                        dspace.max_dims.as_deref(),
                        elem,
                    )? {
                        if e.offsets.len() != rank || undefined(e.address) {
                            continue;
                        }
                        // Row-major chunk number; chunks outside the grid (stale after a
                        // shrink, or beyond a shorter variable) are not served.
                        let mut lin = 0u64;
                        let mut inside = true;
                        for d in 0..rank {
                            if e.offsets[d] % chunk_shape[d] != 0 {
                                return Err(Unsupported("chunk offset off the grid".into()));
                            }
                            let i = e.offsets[d] / chunk_shape[d];
                            inside &= i < grid[d];
                            lin = lin * grid[d] + i;
                        }
                        if !inside {
                            continue;
                        }
                        let size = if e.size == 0 && filters.is_empty() {
                            chunk_bytes
                        } else {
                            e.size
                        };
                        if size == 0 {
                            continue;
                        }
                        let slot = locs
                            .get_mut(lin as usize)
                            .ok_or_else(|| Unsupported("chunk index".into()))?;
                        *slot = ChunkLoc {
                            offset: e.address,
                            size,
                            filter_mask: e.filter_mask,
                        };
                    }
                }
                Ok((
                    Layout::Chunked {
                        chunk_shape,
                        filters,
                        locs: Arc::new(locs),
                    },
                    endian,
                ))
            }
        }
    }

    fn chunk_entries(
        &self,
        address: u64,
        cdims: &[u32],
        indexing: Option<&hdf5_reader::messages::layout::ChunkIndexing>,
        extent: &[u64],
        max_dims: Option<&[u64]>,
        elem: usize,
    ) -> Result<Vec<hdf5_reader::chunk_index::ChunkEntry>, Unsupported> {
        use hdf5_reader::chunk_index as ci;
        use hdf5_reader::messages::layout::ChunkIndexing as I;
        let st = self.h5.storage();
        let sb = self.h5.superblock();
        let (os, ls) = (sb.offset_size, sb.length_size);
        let rank = extent.len();
        let r = match indexing {
            None => {
                let leaves = hdf5_reader::btree_v1::collect_btree_v1_leaves_storage(
                    st,
                    address,
                    os,
                    ls,
                    Some(rank as u32),
                    cdims,
                    None,
                )
                .map_err(unsupported)?;
                let mut out = Vec::with_capacity(leaves.len());
                for (key, addr) in leaves {
                    match key {
                        hdf5_reader::btree_v1::BTreeV1Key::RawData {
                            chunk_size,
                            filter_mask,
                            offsets,
                        } if offsets.len() >= rank => out.push(ci::ChunkEntry {
                            address: addr,
                            size: u64::from(chunk_size),
                            filter_mask,
                            offsets: offsets[..rank].to_vec(),
                        }),
                        _ => return Err(Unsupported("unexpected key in chunk B-tree".into())),
                    }
                }
                return Ok(out);
            }
            Some(I::SingleChunk {
                filtered_size,
                filters,
            }) => Ok(vec![ci::single_chunk_entry(
                address,
                *filtered_size,
                *filters,
                rank,
            )]),
            Some(I::BTreeV2) => {
                ci::collect_v2_chunk_entries_storage(st, address, os, ls, rank as u32, cdims, None)
            }
            Some(I::Implicit) => {
                ci::collect_implicit_chunk_entries(address, extent, cdims, elem, None, st.len())
            }
            Some(I::FixedArray { .. }) => {
                hdf5_reader::fixed_array::collect_fixed_array_chunk_entries_storage(
                    st, address, os, ls, extent, cdims, None,
                )
            }
            Some(I::ExtensibleArray { .. }) => {
                hdf5_reader::extensible_array::collect_extensible_array_chunk_entries_storage(
                    st, address, os, ls, extent, max_dims, cdims, None,
                )
            }
        };
        r.map_err(unsupported)
    }
}

fn dtype_of(t: &NcType) -> Option<DType> {
    Some(match t {
        NcType::Byte => DType::I8,
        NcType::UByte => DType::U8,
        NcType::Short => DType::I16,
        NcType::UShort => DType::U16,
        NcType::Int => DType::I32,
        NcType::UInt => DType::U32,
        NcType::Int64 => DType::I64,
        NcType::UInt64 => DType::U64,
        NcType::Float => DType::F32,
        NcType::Double => DType::F64,
        NcType::Char => DType::Char,
        NcType::String => DType::Str,
        _ => return None,
    })
}

/// Attribute values as the library path (the `netcdf` crate) converts them.
fn attrs(list: &[NcAttribute]) -> Result<Attrs, Unsupported> {
    let mut out = Attrs::default();
    for a in list {
        let v = match &a.value {
            NcAttrValue::Bytes(x) => AttrValue::Ints(x.iter().map(|&v| i64::from(v)).collect()),
            NcAttrValue::Shorts(x) => AttrValue::Ints(x.iter().map(|&v| i64::from(v)).collect()),
            NcAttrValue::Ints(x) => AttrValue::Ints(x.iter().map(|&v| i64::from(v)).collect()),
            NcAttrValue::Int64s(x) => AttrValue::Ints(x.clone()),
            NcAttrValue::UBytes(x) => AttrValue::UInts(x.iter().map(|&v| u64::from(v)).collect()),
            NcAttrValue::UShorts(x) => AttrValue::UInts(x.iter().map(|&v| u64::from(v)).collect()),
            NcAttrValue::UInts(x) => AttrValue::UInts(x.iter().map(|&v| u64::from(v)).collect()),
            NcAttrValue::UInt64s(x) => AttrValue::UInts(x.clone()),
            NcAttrValue::Floats(x) => AttrValue::Floats32(x.clone()),
            NcAttrValue::Doubles(x) => AttrValue::Floats(x.clone()),
            // libnetcdf hands NC_CHAR text back up to its first NUL.
            NcAttrValue::Chars(s) => AttrValue::Str(s.split('\0').next().unwrap_or_default().to_string()),
            NcAttrValue::Strings(v) => AttrValue::Strs(v.clone()),
            NcAttrValue::UserDefined { dtype, .. } => {
                return Err(Unsupported(format!("attribute '{}' of type {dtype:?}", a.name)));
            }
        };
        out.0.push((a.name.clone(), v));
    }
    Ok(out)
}

/// Logs why a file went to the library path (debug: expected for exotic files).
pub fn log_fallback(path: &Path, why: &Unsupported) {
    tracing::debug!(path = %path.display(), reason = %why, "native HDF5 reader declined; using libnetcdf");
}

/// Creation order of the attribute messages held in an object header (version 2 with
/// attribute creation order tracked), by name; `None` when the header does not track it.
///
/// libnetcdf lists attributes in creation order; the header stores their messages wherever
/// space was free (a re-written `_FillValue` can land after later attributes), and
/// `hdf5-reader` drops the per-message creation order, so it is read here from the raw
/// header: signature, flags, then (type, size, flags, creation order, body) per message,
/// following continuation blocks.
fn attr_creation_order(
    st: &dyn hdf5_reader::storage::Storage,
    addr: u64,
    offset_size: u8,
    length_size: u8,
) -> Result<Option<std::collections::HashMap<String, u16>>, Unsupported> {
    let read = |off: u64, len: usize| -> Result<Vec<u8>, Unsupported> {
        Ok(st.read_range(off, len).map_err(unsupported)?.to_vec())
    };
    let uvar = |b: &[u8]| b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | u64::from(x));
    let head = read(addr, 6)?;
    if &head[..4] != b"OHDR" {
        return Ok(None); // version 1 header: creation order is not tracked
    }
    let flags = head[5];
    if flags & 0x04 == 0 {
        return Ok(None);
    }
    let mut pos = addr + 6;
    if flags & 0x20 != 0 {
        pos += 16;
    }
    if flags & 0x10 != 0 {
        pos += 4;
    }
    let w = 1usize << (flags & 0x03);
    let size0 = uvar(&read(pos, w)?);
    pos += w as u64;
    let mut blocks = vec![(pos, size0)];
    let mut out = std::collections::HashMap::new();
    let mut i = 0;
    while let Some(&(start, len)) = blocks.get(i) {
        i += 1;
        if i > 10_000 || len > (64 << 20) {
            return Err(Unsupported("object header too large".into()));
        }
        let buf = read(start, usize::try_from(len).map_err(unsupported)?)?;
        let mut p = 0usize;
        while p + 6 <= buf.len() {
            let mtype = buf[p];
            let msize = usize::from(u16::from_le_bytes([buf[p + 1], buf[p + 2]]));
            let mflags = buf[p + 3];
            let crt = u16::from_le_bytes([buf[p + 4], buf[p + 5]]);
            let body = buf
                .get(p + 6..p + 6 + msize)
                .ok_or_else(|| Unsupported("object header message past its chunk".into()))?;
            p += 6 + msize;
            match mtype {
                0x0C if mflags & 0x02 == 0 => {
                    // Attribute message: version, flags, name size, datatype size,
                    // dataspace size, [encoding], name (NUL-terminated).
                    let (ver, nlen) = match body {
                        [v, _, a, b, ..] => (*v, usize::from(u16::from_le_bytes([*a, *b]))),
                        _ => return Err(Unsupported("short attribute message".into())),
                    };
                    let at = if ver >= 3 { 9 } else { 8 };
                    let name = body
                        .get(at..at + nlen)
                        .ok_or_else(|| Unsupported("attribute name past its message".into()))?;
                    let name = name.split(|&c| c == 0).next().unwrap_or_default();
                    out.insert(String::from_utf8_lossy(name).into_owned(), crt);
                }
                0x0C => return Err(Unsupported("shared attribute message".into())),
                0x10 => {
                    let os = usize::from(offset_size);
                    let ls = usize::from(length_size);
                    if body.len() < os + ls {
                        return Err(Unsupported("short continuation message".into()));
                    }
                    let (a, l) = (uvar(&body[..os]), uvar(&body[os..os + ls]));
                    // "OCHK", messages, checksum.
                    if l < 8 {
                        return Err(Unsupported("short continuation block".into()));
                    }
                    blocks.push((a + 4, l - 8));
                }
                _ => {}
            }
        }
    }
    Ok(Some(out))
}

/// Puts attributes in creation order where the header tracks it (see
/// [`attr_creation_order`]); dense attributes come in that order already.
fn creation_ordered(h5: &Hdf5File, addr: u64, attrs: &mut Attrs) -> Result<(), Unsupported> {
    let sb = h5.superblock();
    let Some(order) = attr_creation_order(h5.storage(), addr, sb.offset_size, sb.length_size)? else {
        return Ok(());
    };
    if attrs.0.iter().all(|(n, _)| order.contains_key(n)) {
        attrs
            .0
            .sort_by_key(|(n, _)| order.get(n).copied().unwrap_or(u16::MAX));
    } else if attrs.0.iter().any(|(n, _)| order.contains_key(n)) {
        // Some in the header, some dense: cannot happen in a well-formed file.
        return Err(Unsupported("attributes both compact and dense".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small netCDF-4 file written by libnetcdf: unlimited and fixed dimensions, a
    /// compressed chunked variable, a contiguous one, text/number/string attributes.
    fn write_nc4(path: &Path) {
        let mut f = netcdf::create(path).expect("create");
        f.add_unlimited_dimension("time").expect("dim");
        f.add_dimension("lat", 2048).expect("dim");
        f.add_attribute("title", "native reader test").expect("attr");
        f.add_attribute("levels", vec![1i32, 2, 3]).expect("attr");
        {
            let mut v = f.add_variable::<f32>("tas", &["time", "lat"]).expect("var");
            v.set_compression(4, true).expect("deflate");
            v.set_chunking(&[2, 1024]).expect("chunking");
            v.put_attribute("units", "K").expect("attr");
            v.set_fill_value(1e20f32).expect("fill");
            let vals: Vec<f32> = (0..3 * 2048).map(|i| i as f32).collect();
            v.put_values(&vals, (0..3, 0..2048)).expect("put");
        }
        {
            let mut lat = f.add_variable::<f64>("lat", &["lat"]).expect("var");
            lat.put_attribute("units", "degrees_north").expect("attr");
            let vals: Vec<f64> = (0..2048).map(|i| f64::from(i) / 10.0).collect();
            lat.put_values(&vals, ..).expect("put");
        }
    }

    fn index_json(idx: &SourceIndex) -> serde_json::Value {
        serde_json::to_value(idx).expect("json")
    }

    #[test]
    fn same_index_as_the_library() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.nc");
        write_nc4(&p);
        let file = Arc::new(SourceFile::stat(p).expect("stat"));
        let native = crate::open::file::index_native(file.clone())
            .expect("inline")
            .expect("native reader accepts a plain netCDF-4 file");
        let library = crate::open::file::index_library(file).expect("library");
        assert_eq!(index_json(&native), index_json(&library));
        let tas = native.root.vars.iter().find(|v| v.name == "tas").expect("tas");
        assert_eq!(tas.data.shape, vec![3, 2048]);
        assert!(
            matches!(&tas.data.layout, Layout::Chunked { chunk_shape, filters, locs }
            if chunk_shape == &vec![2, 1024] && filters.len() == 2 && locs.len() == 4 && locs.iter().all(|l| l.size > 0))
        );
        assert_eq!(
            native.root.dims[0],
            SourceDim {
                name: "time".into(),
                len: 3,
                unlimited: true
            }
        );
    }

    #[test]
    fn truncated_file_is_declined_and_reported_not_panicking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.nc");
        write_nc4(&p);
        let bytes = std::fs::read(&p).expect("read");
        for cut in [9, 100, bytes.len() / 2, bytes.len() - 100] {
            let t = dir.path().join(format!("cut{cut}.nc"));
            std::fs::write(&t, &bytes[..cut]).expect("write");
            let file = Arc::new(SourceFile::stat(t.clone()).expect("stat"));
            assert!(
                open_native(&file).is_err(),
                "truncated at {cut}: native reader must decline"
            );
            // The whole open (native, then library) fails with an error naming the file.
            let err = crate::open::file::open_file(file).expect_err("truncated file must not open");
            assert!(err.to_string().contains(&*t.to_string_lossy()), "{err}");
            // ... and, once the superblock is there, saying it is truncated and by how much
            if cut >= 100 {
                let want = format!("truncated: file is {cut} bytes, HDF5 expects {}", bytes.len());
                assert!(err.to_string().contains(&want), "{err}");
                // the library path (CLOUDIFY_HDF5_READER=library) says the same
                let lib =
                    crate::open::file::index_library(Arc::new(SourceFile::stat(t.clone()).expect("stat")))
                        .expect_err("truncated file must not open");
                assert!(lib.to_string().contains(&want), "{lib}");
            }
        }
    }

    #[test]
    fn garbage_after_signature_is_declined() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("g.nc");
        let mut bytes = vec![0x89, b'H', b'D', b'F', b'\r', b'\n', 0x1a, b'\n'];
        // A deterministic pseudo-random tail (xorshift), including a bogus superblock version.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..4096 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            bytes.push(x as u8);
        }
        std::fs::write(&p, &bytes).expect("write");
        let file = Arc::new(SourceFile::stat(p.clone()).expect("stat"));
        let why = open_native(&file).expect_err("garbage must be declined");
        assert!(!why.0.is_empty());
        let err = crate::open::file::open_file(file).expect_err("garbage must not open");
        assert!(err.to_string().contains(&*p.to_string_lossy()), "{err}");
    }

    /// Both readers report the filter pipeline in the order HDF5 stores it, which decoding
    /// follows: Fletcher-32 first (netCDF-C's order), last (h5py's), and alone. The values
    /// read back through each index are the values written.
    #[test]
    fn filter_order_is_reported_as_stored_and_decoded() {
        use hdf5::filters::Filter as H;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("order.h5");
        // Above the inline limit, so chunks are read and decoded per request; an edge chunk.
        let data: Vec<f32> = (0..6000).map(|i| (i as f32 / 7.0).sin()).collect();
        let cases = [
            (
                "first",
                vec![H::fletcher32(), H::shuffle(), H::deflate(4)],
                vec![Filter::Fletcher32, Filter::Shuffle(4), Filter::Deflate(4)],
            ),
            (
                "last",
                vec![H::shuffle(), H::deflate(4), H::fletcher32()],
                vec![Filter::Shuffle(4), Filter::Deflate(4), Filter::Fletcher32],
            ),
            (
                "deflate_last",
                vec![H::deflate(1), H::fletcher32()],
                vec![Filter::Deflate(1), Filter::Fletcher32],
            ),
            ("alone", vec![H::fletcher32()], vec![Filter::Fletcher32]),
        ];
        {
            let f = hdf5::File::create(&p).expect("create");
            for (name, filters, _) in &cases {
                f.new_dataset_builder()
                    .chunk(1100)
                    .set_filters(filters)
                    .with_data(data.as_slice())
                    .create(*name)
                    .expect("dataset");
            }
        }
        let file = Arc::new(SourceFile::stat(p.clone()).expect("stat"));
        let native = crate::open::file::index_native(file.clone())
            .expect("index")
            .expect("native reader accepts the file");
        let library = crate::open::file::index_library(file).expect("library");
        let spec = cloudify_crds::DatasetSpec::new("order", vec![p.display().to_string()]);
        for (reader, idx) in [("native", native), ("library", library)] {
            let ds = crate::dataset::aggregate::build(&spec, vec![idx]).expect("dataset");
            for (name, _, want) in &cases {
                let v = ds.variable(name).expect("variable");
                let filters = v.pieces()[0].data.layout.chunking().map(|(_, f)| f.to_vec());
                assert_eq!(filters.as_ref(), Some(want), "{reader} {name}");
                assert!(
                    !crate::zarr::encoding::choose(v).passthrough,
                    "{reader} {name}: a checksummed chunk must be decoded"
                );
                for (i, want) in data.chunks(1100).enumerate() {
                    let got = crate::pipeline::read_chunk(v, &[i as u64]).expect("read");
                    let got: Vec<f32> = got
                        .chunks_exact(4)
                        .take(want.len())
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect();
                    assert_eq!(got, want, "{reader} {name} chunk {i}");
                }
            }
        }
    }

    #[test]
    fn library_escape_hatch_is_read_from_the_environment() {
        // Not set in the test environment: the native reader is on.
        if std::env::var_os("CLOUDIFY_HDF5_READER").is_none() {
            assert!(enabled());
        }
    }
}
