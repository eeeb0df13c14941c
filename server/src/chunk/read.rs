//! Reading served chunks from source files with `pread`, lock-free.
//!
//! A served chunk is assembled from the stored pieces that overlap it: stored chunks (decoded
//! in Rust), contiguous byte runs, netCDF-3 records or values held in memory. When a served
//! chunk is exactly one stored chunk, its bytes are decoded straight into the response
//! buffer, or not decoded at all when the client gets the source's own encoding.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::grid::{byteswap, copy_block, fill_with, grid_shape, intersect, linear, numel};
use crate::codec::{CodecError, decode_hdf5};
use crate::dataset::Variable;
use crate::model::{DType, Endian};
use crate::source::{ChunkLoc, ChunkRef, FileVar, Filter, MemValues, SourceFile, Storage};

/// A chunk that cannot be produced. All variants map to HTTP 5xx except `OutOfRange`.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("chunk index {index:?} is outside the chunk grid {grid:?}")]
    OutOfRange { index: Vec<u64>, grid: Vec<u64> },
    #[error("{path}: read of {len} bytes at offset {offset} failed: {source}")]
    Io {
        path: PathBuf,
        offset: u64,
        len: u64,
        source: std::io::Error,
    },
    #[error("{path}: file ends before byte {end} (truncated file?)")]
    Truncated { path: PathBuf, end: u64 },
    #[error("{path}: chunk at offset {offset}: {source}")]
    Codec {
        path: PathBuf,
        offset: u64,
        source: CodecError,
    },
    #[error("chunk of {0:?} elements is too large")]
    TooLarge(Vec<u64>),
    /// An object-store read failed (missing or changed object, denied, store down, timeout).
    #[error("{0}")]
    Remote(#[from] crate::storage::RemoteError),
    /// A local source file is not the version that was indexed: its chunks would be read at
    /// stale offsets (and served under the old ETag), so nothing is read from it.
    #[error("{path}: file changed since it was indexed ({what}); restart the server to re-index it")]
    Changed { path: PathBuf, what: String },
}

/// Reads `len` bytes at `offset` of a source: `pread` for local files, a ranged GET for
/// objects.
pub fn read_at(file: &SourceFile, offset: u64, len: u64) -> Result<Vec<u8>, ReadError> {
    match &file.remote {
        None => pread_checked(&file.path, Some(file), offset, len),
        Some(_) => Ok(read_many(file, &[(offset, len)])?.pop().unwrap_or_default()),
    }
}

/// Reads several `(offset, len)` ranges of one source. For objects this is one call that
/// merges nearby ranges into fewer requests and runs them in parallel; while an object is
/// being indexed on this thread, through its indexing reader (bytes it fetched already are
/// not fetched again).
pub fn read_many(file: &SourceFile, ranges: &[(u64, u64)]) -> Result<Vec<Vec<u8>>, ReadError> {
    match &file.remote {
        None => ranges
            .iter()
            .map(|(o, n)| pread_checked(&file.path, Some(file), *o, *n))
            .collect(),
        Some(_) if ranges.is_empty() => Ok(Vec::new()),
        Some(obj) => {
            let got = match crate::source::remote::read_current(file, ranges) {
                Some(got) => got?,
                None => crate::storage::read_ranges(file, obj, ranges)?,
            };
            Ok(got.into_iter().map(|b| b.to_vec()).collect())
        }
    }
}

/// Reads `len` bytes at `offset`; a short read means the file was truncated.
///
/// The file is opened per call (its own descriptor, so seeking is not shared between
/// threads) and read with `read_to_end` into an uninitialised buffer: pass-through chunks are
/// hundreds of KB, and zero-filling a buffer first was a third memory pass on the hottest path.
pub fn pread(path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, ReadError> {
    pread_checked(path, None, offset, len)
}

/// [`pread`], then, when `ident` is the identity the file was indexed with, an `fstat` of
/// the descriptor the bytes came from, compared with it: a file touched, rewritten in place
/// or replaced (`mv`) since is [`ReadError::Changed`] instead of bytes decoded with a stale
/// index. Checking after the read covers a write racing with it (a write updates the
/// mtime/ctime before its data can be read), and a changed file is reported as such even
/// when it is now too short. One system call per read, on a descriptor already open.
fn pread_checked(
    path: &Path,
    ident: Option<&SourceFile>,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, ReadError> {
    let io = |source| ReadError::Io {
        path: path.to_path_buf(),
        offset,
        len,
        source,
    };
    let n = usize::try_from(len).map_err(|_| ReadError::TooLarge(vec![len]))?;
    let truncated = || ReadError::Truncated {
        path: path.to_path_buf(),
        end: offset.saturating_add(len),
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    // The range comes from references and indexes (input): one past the end of the file is
    // refused before the buffer is allocated, or a bogus size of 2^45 bytes would abort the
    // process on allocation failure (found by fuzzing, server/fuzz kerchunk_parquet).
    let size = f.metadata().map_err(io)?.len();
    let read = if offset.checked_add(len).is_none_or(|end| end > size) {
        None
    } else {
        Some((|| {
            f.seek(SeekFrom::Start(offset))?;
            let mut buf = Vec::with_capacity(n);
            (&mut f).take(len).read_to_end(&mut buf)?;
            Ok(buf)
        })())
    };
    // A changed file is named as changed, even when the change made the range fall past its end.
    if let Some(ident) = ident.filter(|i| i.inode.is_some()) {
        let meta = f.metadata().map_err(io)?;
        if let Some(what) = ident.local_change(&meta) {
            return Err(ReadError::Changed {
                path: path.to_path_buf(),
                what,
            });
        }
    }
    let Some(read) = read else {
        return Err(truncated());
    };
    let buf = read.map_err(io)?;
    if buf.len() < n {
        return Err(truncated());
    }
    Ok(buf)
}

/// Values read into the index from a local file's bytes are only served while the file is
/// the version they were read from (one `stat`); see [`pread_checked`].
fn check_inlined(fv: &FileVar) -> Result<(), ReadError> {
    if matches!(fv.stored.as_deref(), Some(crate::source::Stored::At { .. })) {
        check_unchanged(&fv.file)?;
    }
    Ok(())
}

/// `Ok` when `file` is not a local file with a recorded [`crate::source::Inode`], or is
/// still the version indexed (one `stat`); else [`ReadError::Changed`].
pub fn check_unchanged(file: &SourceFile) -> Result<(), ReadError> {
    if file.inode.is_none() || file.remote.is_some() {
        return Ok(());
    }
    let meta = std::fs::metadata(&file.path).map_err(|source| ReadError::Io {
        path: file.path.clone(),
        offset: 0,
        len: 0,
        source,
    })?;
    match file.local_change(&meta) {
        Some(what) => Err(ReadError::Changed {
            path: file.path.clone(),
            what,
        }),
        None => Ok(()),
    }
}

/// Checks that the local files served chunk `idx` is read from are the versions indexed,
/// without reading it: before answering `304 Not Modified`, which tells a client its cached
/// copy is still the data (the ETag derives from the identities recorded at start-up).
/// Only storage read from a source file's bytes is checked, as reads are.
pub fn check_chunk_sources(var: &Variable, idx: &[u64]) -> Result<(), ReadError> {
    let (start, count) = chunk_region(var, idx)?;
    for piece in &var.pieces {
        if let Some(ax) = var.concat_axis
            && intersect(start[ax], count[ax], piece.start, piece.data.shape[ax]).is_none()
        {
            continue;
        }
        match &piece.data.storage {
            Storage::Chunked { .. } | Storage::Contiguous { .. } | Storage::Records { .. } => {
                check_unchanged(&piece.data.file)?
            }
            Storage::Memory(_) => check_inlined(&piece.data)?,
            Storage::Unallocated | Storage::Refs { .. } => {}
        }
    }
    Ok(())
}

/// The region of the served chunk `idx`: start and count per dimension (clipped to shape).
pub fn chunk_region(var: &Variable, idx: &[u64]) -> Result<(Vec<u64>, Vec<u64>), ReadError> {
    let grid = grid_shape(&var.shape, &var.chunks);
    if idx.len() != grid.len() || idx.iter().zip(&grid).any(|(i, g)| i >= g) {
        return Err(ReadError::OutOfRange {
            index: idx.to_vec(),
            grid,
        });
    }
    let start: Vec<u64> = idx.iter().zip(&var.chunks).map(|(i, c)| i * c).collect();
    let count = start
        .iter()
        .zip(&var.chunks)
        .zip(&var.shape)
        .map(|((s, c), n)| (*c).min(n - s))
        .collect();
    Ok((start, count))
}

/// Stored bytes of a served chunk, unchanged, when the variable is served pass-through.
/// Returns `None` when the chunk was never written or skipped a filter: the caller then
/// decodes and re-encodes it.
pub fn raw_chunk(var: &Variable, idx: &[u64]) -> Result<Option<Vec<u8>>, ReadError> {
    let (start, _) = chunk_region(var, idx)?;
    let (piece, local) = locate_piece(var, &start);
    if let Some((chunk_shape, _)) = piece.data.storage.chunking() {
        let sgrid = grid_shape(&piece.data.shape, chunk_shape);
        let cidx: Vec<u64> = local.iter().zip(chunk_shape).map(|(s, c)| s / c).collect();
        return Ok(fetch_stored(&piece.data, linear(&cidx, &sgrid) as usize)?
            .filter(|s| s.mask == 0)
            .map(|s| s.bytes));
    }
    Ok(None)
}

/// Stored (still encoded) bytes of one chunk.
struct Stored {
    bytes: Vec<u8>,
    /// HDF5 filter mask (0 for references).
    mask: u32,
    /// Where the bytes came from, for messages.
    path: PathBuf,
    offset: u64,
}

/// Reads the whole of a chunk file, local or an object.
pub fn read_source_whole(file: &SourceFile) -> Result<Vec<u8>, ReadError> {
    match &file.remote {
        None => read_file(&file.path),
        Some(obj) => Ok(crate::storage::read_whole(file, obj)?.to_vec()),
    }
}

/// Reads the whole of a local chunk file.
pub fn read_file(path: &Path) -> Result<Vec<u8>, ReadError> {
    std::fs::read(path).map_err(|source| ReadError::Io {
        path: path.to_path_buf(),
        offset: 0,
        len: 0,
        source,
    })
}

/// The stored bytes of chunk number `n` (row-major over the stored grid) of a chunked or
/// referenced variable; `None` when it was never written.
fn fetch_stored(fv: &FileVar, n: usize) -> Result<Option<Stored>, ReadError> {
    match &fv.storage {
        Storage::Chunked { locs, .. } => match locs.get(n).copied().filter(|l| l.size > 0) {
            Some(l) => Ok(Some(Stored {
                bytes: read_at(&fv.file, l.offset, l.size)?,
                mask: l.filter_mask,
                path: fv.file.path.clone(),
                offset: l.offset,
            })),
            None => Ok(None),
        },
        Storage::Refs { table, .. } => {
            let file = |i: u32| table.files.get(i as usize).cloned().unwrap_or_default();
            let remote = |i: u32| table.remote.get(i as usize).and_then(Option::as_ref);
            Ok(match table.chunks.get(n) {
                None | Some(ChunkRef::Missing) => None,
                Some(ChunkRef::Range {
                    file: f,
                    offset,
                    size,
                }) => {
                    let path = file(*f);
                    let bytes = match remote(*f) {
                        Some(obj) => read_at(obj, *offset, *size)?,
                        None => pread(&path, *offset, *size)?,
                    };
                    Some(Stored {
                        bytes,
                        mask: 0,
                        path,
                        offset: *offset,
                    })
                }
                Some(ChunkRef::Whole { file: f }) => {
                    let path = file(*f);
                    let bytes = match remote(*f) {
                        Some(obj) => read_source_whole(obj)?,
                        None => read_file(&path)?,
                    };
                    Some(Stored {
                        bytes,
                        mask: 0,
                        path,
                        offset: 0,
                    })
                }
                Some(ChunkRef::Inline(b)) => Some(Stored {
                    bytes: b.clone(),
                    mask: 0,
                    path: fv.file.path.clone(),
                    offset: 0,
                }),
            })
        }
        _ => Ok(None),
    }
}

/// The stored bytes of several chunks, given as (key, chunk number), without the never-written
/// ones. For HDF5-chunked sources all byte ranges go to one [`read_many`] call, so an object
/// store answers nearby chunks with shared requests.
fn fetch_stored_many<K>(fv: &FileVar, wanted: Vec<(K, usize)>) -> Result<Vec<(K, Stored)>, ReadError> {
    if let Storage::Chunked { locs, .. } = &fv.storage {
        let present: Vec<(K, ChunkLoc)> = wanted
            .into_iter()
            .filter_map(|(k, n)| locs.get(n).copied().filter(|l| l.size > 0).map(|l| (k, l)))
            .collect();
        let ranges: Vec<(u64, u64)> = present.iter().map(|(_, l)| (l.offset, l.size)).collect();
        let raws = read_many(&fv.file, &ranges)?;
        return Ok(present
            .into_iter()
            .zip(raws)
            .map(|((k, l), bytes)| {
                let stored = Stored {
                    bytes,
                    mask: l.filter_mask,
                    path: fv.file.path.clone(),
                    offset: l.offset,
                };
                (k, stored)
            })
            .collect());
    }
    let mut out = Vec::new();
    for (k, n) in wanted {
        if let Some(s) = fetch_stored(fv, n)? {
            out.push((k, s));
        }
    }
    Ok(out)
}

fn decode_stored(s: Stored, filters: &[Filter], clen: usize) -> Result<Vec<u8>, ReadError> {
    let Stored {
        bytes,
        mask,
        path,
        offset,
    } = s;
    decode_hdf5(bytes, filters, mask, clen).map_err(|source| ReadError::Codec { path, offset, source })
}

/// The piece holding global position `start` and the position local to it.
fn locate_piece<'a>(var: &'a Variable, start: &[u64]) -> (&'a crate::dataset::Piece, Vec<u64>) {
    let mut local = start.to_vec();
    let Some(ax) = var.concat_axis else {
        return (&var.pieces[0], local);
    };
    let p = var
        .pieces
        .iter()
        .rev()
        .find(|p| p.start <= start[ax])
        .unwrap_or(&var.pieces[0]);
    local[ax] -= p.start.min(local[ax]);
    (p, local)
}

/// Decoded little-endian bytes of the full served chunk `idx` (edge chunks padded with the
/// fill value, as Zarr stores them).
pub fn read_chunk(var: &Variable, idx: &[u64]) -> Result<Vec<u8>, ReadError> {
    let (start, count) = chunk_region(var, idx)?;
    read_block(var, &start, &count, &var.chunks)
}

/// Decoded little-endian bytes of the block `[start, start+count)` of a variable, in a buffer
/// of shape `buf_shape` (>= count; the rest is fill).
pub fn read_block(
    var: &Variable,
    start: &[u64],
    count: &[u64],
    buf_shape: &[u64],
) -> Result<Vec<u8>, ReadError> {
    if let Some(out) = whole_stored_chunk(var, start, buf_shape)? {
        return Ok(out);
    }
    let elem = var.dtype.size();
    let n = numel(buf_shape).ok_or_else(|| ReadError::TooLarge(buf_shape.to_vec()))?;
    let mut out = vec![0u8; n * elem];
    fill_with(&mut out, &var.fill);
    for piece in &var.pieces {
        // Intersection of the block with the piece, in global coordinates.
        let mut pstart = start.to_vec();
        let mut pcount = count.to_vec();
        let mut dst_start = vec![0u64; start.len()];
        if let Some(ax) = var.concat_axis {
            let Some((s, c)) = intersect(start[ax], count[ax], piece.start, piece.data.shape[ax]) else {
                continue;
            };
            pstart[ax] = s - piece.start;
            pcount[ax] = c;
            dst_start[ax] = s - start[ax];
        }
        read_region(
            &piece.data,
            var.dtype,
            &pstart,
            &pcount,
            &mut out,
            buf_shape,
            &dst_start,
        )?;
    }
    Ok(out)
}

/// Fast path: when the block is exactly one stored chunk, its decoded bytes are the answer
/// (no fill, no copy). `None` when the block is anything else.
fn whole_stored_chunk(
    var: &Variable,
    start: &[u64],
    buf_shape: &[u64],
) -> Result<Option<Vec<u8>>, ReadError> {
    let (piece, local) = locate_piece(var, start);
    let Some((chunk_shape, filters)) = piece.data.storage.chunking() else {
        return Ok(None);
    };
    if chunk_shape.as_slice() != buf_shape || local.iter().zip(chunk_shape).any(|(s, c)| s % c != 0) {
        return Ok(None);
    }
    // The chunk must lie inside this piece along the concat axis (it does when aligned).
    if let Some(ax) = var.concat_axis
        && local[ax] + chunk_shape[ax] > piece.data.shape[ax]
        && piece.start + piece.data.shape[ax] < var.shape[ax]
    {
        return Ok(None);
    }
    let sgrid = grid_shape(&piece.data.shape, chunk_shape);
    let cidx: Vec<u64> = local.iter().zip(chunk_shape).map(|(s, c)| s / c).collect();
    let Some(stored) = fetch_stored(&piece.data, linear(&cidx, &sgrid) as usize)? else {
        return Ok(None);
    };
    let elem = var.dtype.size();
    let clen = numel(chunk_shape).ok_or_else(|| ReadError::TooLarge(chunk_shape.clone()))? * elem;
    let mut data = decode_stored(stored, filters, clen)?;
    if piece.data.endian == Endian::Big {
        byteswap(&mut data, elem);
    }
    // Outside the array (Zarr edge padding) HDF5 may hold anything; Zarr readers ignore it.
    Ok(Some(data))
}

/// Strings of the served chunk `idx` of an NC_STRING variable (padded with "").
pub fn read_chunk_strings(var: &Variable, idx: &[u64]) -> Result<Vec<String>, ReadError> {
    let (start, count) = chunk_region(var, idx)?;
    let n = numel(&var.chunks).ok_or_else(|| ReadError::TooLarge(var.chunks.clone()))?;
    let mut out = vec![String::new(); n];
    for piece in &var.pieces {
        let Storage::Memory(m) = &piece.data.storage else {
            continue;
        };
        let MemValues::Strings(values) = m.as_ref() else {
            continue;
        };
        let mut pstart = start.clone();
        let mut pcount = count.clone();
        let mut dst0 = vec![0u64; start.len()];
        if let Some(ax) = var.concat_axis {
            let Some((s, c)) = intersect(start[ax], count[ax], piece.start, piece.data.shape[ax]) else {
                continue;
            };
            pstart[ax] = s - piece.start;
            pcount[ax] = c;
            dst0[ax] = s - start[ax];
        }
        // Element-wise copy via indices (string arrays are small).
        let total = numel(&pcount).unwrap_or(0);
        let mut k = vec![0u64; pcount.len()];
        for _ in 0..total {
            let src: Vec<u64> = k.iter().zip(&pstart).map(|(a, b)| a + b).collect();
            let dst: Vec<u64> = k.iter().zip(&dst0).map(|(a, b)| a + b).collect();
            let si = linear(&src, &piece.data.shape) as usize;
            let di = linear(&dst, &var.chunks) as usize;
            if let (Some(v), Some(o)) = (values.get(si), out.get_mut(di)) {
                o.clone_from(v);
            }
            for d in (0..k.len()).rev() {
                k[d] += 1;
                if k[d] < pcount[d] {
                    break;
                }
                k[d] = 0;
            }
        }
    }
    Ok(out)
}

/// All values of one file's variable as little-endian bytes; never-written parts read as
/// `fill`.
pub fn read_whole(fv: &FileVar, dtype: DType, fill: &[u8]) -> Result<Vec<u8>, ReadError> {
    let n = numel(&fv.shape).ok_or_else(|| ReadError::TooLarge(fv.shape.clone()))?;
    let mut buf = vec![0u8; n * dtype.size()];
    fill_with(&mut buf, fill);
    let zero = vec![0u64; fv.shape.len()];
    read_region(fv, dtype, &zero, &fv.shape, &mut buf, &fv.shape, &zero)?;
    Ok(buf)
}

/// Reads the block `[start, start+count)` of one file's variable into `dst` (shape
/// `dst_shape`) at `dst_start`, converting to little-endian.
pub fn read_region(
    fv: &FileVar,
    dtype: DType,
    start: &[u64],
    count: &[u64],
    dst: &mut [u8],
    dst_shape: &[u64],
    dst_start: &[u64],
) -> Result<(), ReadError> {
    if count.contains(&0) {
        return Ok(());
    }
    let elem = dtype.size();
    let swap = fv.endian == Endian::Big;
    match &fv.storage {
        Storage::Unallocated => Ok(()),
        Storage::Memory(m) => {
            check_inlined(fv)?;
            if let MemValues::Bytes(b) = m.as_ref() {
                copy_block(b, &fv.shape, start, dst, dst_shape, dst_start, count, elem);
            }
            Ok(())
        }
        Storage::Contiguous { offset } => {
            let mut block = read_contiguous(&fv.file, *offset, &fv.shape, elem, start, count)?;
            if swap {
                byteswap(&mut block, elem);
            }
            copy_block(
                &block,
                count,
                &vec![0; count.len()],
                dst,
                dst_shape,
                dst_start,
                count,
                elem,
            );
            Ok(())
        }
        Storage::Records { begin, recsize } => {
            let inner_shape = &fv.shape[1..];
            let mut block = Vec::new();
            if fv.file.remote.is_some() {
                // All runs of all records in one call: nearby ranges share requests.
                let mut ranges = Vec::new();
                for r in start[0]..start[0] + count[0] {
                    let (offsets, run) = contiguous_runs(inner_shape, elem, &start[1..], &count[1..])?;
                    let base = begin + r * recsize;
                    ranges.extend(offsets.into_iter().map(|o| (base + o, run)));
                }
                for part in read_many(&fv.file, &ranges)? {
                    block.extend(part);
                }
            } else {
                for r in start[0]..start[0] + count[0] {
                    block.extend(read_contiguous(
                        &fv.file,
                        begin + r * recsize,
                        inner_shape,
                        elem,
                        &start[1..],
                        &count[1..],
                    )?);
                }
            }
            if swap {
                byteswap(&mut block, elem);
            }
            copy_block(
                &block,
                count,
                &vec![0; count.len()],
                dst,
                dst_shape,
                dst_start,
                count,
                elem,
            );
            Ok(())
        }
        Storage::Chunked {
            chunk_shape, filters, ..
        }
        | Storage::Refs {
            chunk_shape, filters, ..
        } => {
            let sgrid = grid_shape(&fv.shape, chunk_shape);
            let clen = numel(chunk_shape).ok_or_else(|| ReadError::TooLarge(chunk_shape.clone()))? * elem;
            // Range of stored chunks overlapping the block.
            let lo: Vec<u64> = start.iter().zip(chunk_shape).map(|(s, c)| s / c).collect();
            let hi: Vec<u64> = start
                .iter()
                .zip(count)
                .zip(chunk_shape)
                .map(|((s, n), c)| (s + n - 1) / c)
                .collect();
            // The stored chunks overlapping the block, fetched in one call (one request per
            // group of nearby chunks for objects).
            let mut wanted = Vec::new();
            let mut ci = lo.clone();
            loop {
                wanted.push((ci.clone(), linear(&ci, &sgrid) as usize));
                if !next_index(&mut ci, &lo, &hi) {
                    break;
                }
            }
            for (ci, stored) in fetch_stored_many(fv, wanted)? {
                let mut data = decode_stored(stored, filters, clen)?;
                if swap {
                    byteswap(&mut data, elem);
                }
                // Overlap of this stored chunk with the block.
                let mut src_start = Vec::with_capacity(ci.len());
                let mut ov_count = Vec::with_capacity(ci.len());
                let mut d_start = Vec::with_capacity(ci.len());
                for d in 0..ci.len() {
                    let c0 = ci[d] * chunk_shape[d];
                    let (s, n) = intersect(c0, chunk_shape[d], start[d], count[d]).unwrap_or((c0, 0));
                    src_start.push(s - c0);
                    ov_count.push(n);
                    d_start.push(dst_start[d] + (s - start[d]));
                }
                copy_block(
                    &data,
                    chunk_shape,
                    &src_start,
                    dst,
                    dst_shape,
                    &d_start,
                    &ov_count,
                    elem,
                );
            }
            Ok(())
        }
    }
}

/// Advances `ci` to the next index of the box `[lo, hi]` in row-major order; false when done.
fn next_index(ci: &mut [u64], lo: &[u64], hi: &[u64]) -> bool {
    let mut d = ci.len();
    loop {
        if d == 0 {
            return false;
        }
        d -= 1;
        ci[d] += 1;
        if ci[d] <= hi[d] {
            return true;
        }
        ci[d] = lo[d];
    }
}

/// Byte offsets (relative to the array's start) and length of the runs that make up a
/// block of a C-ordered array: whole trailing dimensions merge into long runs.
fn contiguous_runs(
    shape: &[u64],
    elem: usize,
    start: &[u64],
    count: &[u64],
) -> Result<(Vec<u64>, u64), ReadError> {
    let rank = shape.len();
    if rank == 0 {
        return Ok((vec![0], elem as u64));
    }
    // k: first dim from which the block covers whole trailing dims
    let mut k = rank - 1;
    while k > 0 && start[k] == 0 && count[k] == shape[k] {
        k -= 1;
    }
    let inner: u64 = shape[k + 1..].iter().product();
    let run_elems = count[k] * inner;
    let strides: Vec<u64> = (0..rank).map(|d| shape[d + 1..].iter().product()).collect();
    let nruns = numel(&count[..k]).ok_or_else(|| ReadError::TooLarge(count.to_vec()))?;
    let mut offsets = Vec::with_capacity(nruns);
    let mut idx = vec![0u64; k];
    for _ in 0..nruns {
        let mut e = start[k] * strides[k];
        for d in 0..k {
            e += (start[d] + idx[d]) * strides[d];
        }
        offsets.push(e * elem as u64);
        for d in (0..k).rev() {
            idx[d] += 1;
            if idx[d] < count[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok((offsets, run_elems * elem as u64))
}

/// Reads a block of a C-ordered array stored as one byte run at `base`. Runs close together
/// are read with one `pread`; for objects, all runs go to one coalescing call.
fn read_contiguous(
    file: &SourceFile,
    base: u64,
    shape: &[u64],
    elem: usize,
    start: &[u64],
    count: &[u64],
) -> Result<Vec<u8>, ReadError> {
    let (offsets, run) = contiguous_runs(shape, elem, start, count)?;
    let nruns = offsets.len();
    let needed = run * nruns as u64;
    let (first, last) = match (offsets.first(), offsets.last()) {
        (Some(f), Some(l)) => (*f, *l + run),
        _ => return Ok(Vec::new()),
    };
    let span = last - first;
    if nruns == 1 || (file.remote.is_none() && span <= needed * 2 + (1 << 20)) {
        let buf = read_at(file, base + first, span)?;
        if nruns == 1 {
            return Ok(buf);
        }
        let mut out = Vec::with_capacity(needed as usize);
        for o in offsets {
            let s = (o - first) as usize;
            out.extend_from_slice(&buf[s..s + run as usize]);
        }
        Ok(out)
    } else {
        let ranges: Vec<(u64, u64)> = offsets.iter().map(|o| (base + o, run)).collect();
        let mut out = Vec::with_capacity(needed as usize);
        for part in read_many(file, &ranges)? {
            out.extend(part);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::dataset::Dataset;
    use crate::source::{SourceFile, open_file};

    /// A netCDF-4 file with a compressed variable larger than the inline limit (read from
    /// the file per request) and a small coordinate (inlined into the index).
    fn write_nc4(path: &Path, scale: f32) {
        let mut f = netcdf::create(path).expect("create");
        f.add_dimension("y", 64).expect("dim");
        f.add_dimension("x", 128).expect("dim");
        {
            let mut v = f.add_variable::<f32>("big", &["y", "x"]).expect("var");
            v.set_compression(4, true).expect("deflate");
            v.set_chunking(&[32, 128]).expect("chunking");
            let vals: Vec<f32> = (0..64 * 128).map(|i| i as f32 * scale).collect();
            v.put_values(&vals, ..).expect("put");
        }
        let mut x = f.add_variable::<f64>("x", &["x"]).expect("var");
        let vals: Vec<f64> = (0..128).map(|i| f64::from(i) * f64::from(scale)).collect();
        x.put_values(&vals, ..).expect("put");
    }

    fn open(path: &Path) -> Dataset {
        let file = Arc::new(SourceFile::stat(path.to_path_buf()).expect("stat"));
        let idx = open_file(file).expect("index");
        let spec = cloudify_crds::DatasetSpec::new("t", vec![path.display().to_string()]);
        crate::dataset::aggregate::build(&spec, vec![idx]).expect("dataset")
    }

    /// Coarse file timestamps tick every few milliseconds: let the clock move past the
    /// index time before changing the file, as any real change is.
    fn later() {
        std::thread::sleep(Duration::from_millis(50));
    }

    fn set_mtime(path: &Path, t: SystemTime) {
        let f = std::fs::File::options().write(true).open(path).expect("open");
        f.set_times(std::fs::FileTimes::new().set_modified(t))
            .expect("set mtime");
    }

    /// Both the per-request read of a stored chunk and the inlined coordinate are refused,
    /// naming the file and what changed; never bytes read through the old index.
    fn assert_refused(ds: &Dataset, path: &Path, what: &str) {
        for (var, idx) in [("big", vec![0, 0]), ("x", vec![0])] {
            let v = ds.variable(var).expect("variable");
            match read_chunk(v, &idx) {
                Err(e @ ReadError::Changed { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains(&*path.to_string_lossy()), "{msg}");
                    assert!(msg.contains("changed since it was indexed"), "{msg}");
                    assert!(msg.contains(what), "{var}: {msg} should mention {what}");
                }
                other => panic!("{var}: expected a changed-file error, got {other:?}"),
            }
        }
    }

    #[test]
    fn unchanged_file_is_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.nc");
        write_nc4(&p, 1.0);
        let ds = open(&p);
        let big = read_chunk(ds.variable("big").expect("big"), &[1, 0]).expect("read");
        assert_eq!(&big[..4], &(32.0f32 * 128.0).to_le_bytes());
        let x = read_chunk(ds.variable("x").expect("x"), &[0]).expect("read");
        assert_eq!(&x[8..16], &1.0f64.to_le_bytes());
    }

    #[test]
    fn touched_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.nc");
        write_nc4(&p, 1.0);
        let ds = open(&p);
        later();
        set_mtime(&p, SystemTime::now());
        assert_refused(&ds, &p, "mtime");
    }

    /// Rewritten in place with the same size and its mtime set back (`touch -r`): only the
    /// ctime tells, and it is enough.
    #[test]
    fn rewritten_file_with_the_same_size_and_mtime_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.nc");
        write_nc4(&p, 1.0);
        let ds = open(&p);
        let mtime = std::fs::metadata(&p).and_then(|m| m.modified()).expect("mtime");
        let mut bytes = std::fs::read(&p).expect("read");
        later();
        // Other bytes where the first chunk is, the same length.
        let Some(Storage::Chunked { locs, .. }) = ds.variable("big").map(|v| &v.pieces[0].data.storage)
        else {
            panic!("big is chunked");
        };
        let at = locs[0].offset as usize + 10;
        bytes[at] ^= 0x55;
        std::fs::write(&p, &bytes).expect("rewrite");
        set_mtime(&p, mtime);
        assert_eq!(std::fs::metadata(&p).expect("stat").len(), bytes.len() as u64);
        assert_refused(&ds, &p, "ctime");
    }

    /// A changed copy moved over the file (a new inode), the way tools replace files.
    #[test]
    fn file_replaced_by_rename_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.nc");
        write_nc4(&p, 1.0);
        let ds = open(&p);
        later();
        let tmp = dir.path().join("a.nc.tmp");
        write_nc4(&tmp, 2.0);
        std::fs::rename(&tmp, &p).expect("rename");
        assert_refused(&ds, &p, "replaced");
    }

    #[test]
    fn reads_past_the_end_are_refused_before_allocating() {
        // found by fuzzing (server/fuzz `kerchunk_parquet`): a reference of 2^45 bytes into a
        // small file made pread allocate its buffer first and abort the process
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("data.bin");
        std::fs::write(&p, [7u8; 16]).unwrap();
        assert_eq!(pread(&p, 8, 8).unwrap(), vec![7u8; 8]);
        for (offset, len) in [(0, 1u64 << 45), (8, 9), (u64::MAX, 2), (17, 0)] {
            let e = pread(&p, offset, len).unwrap_err();
            assert!(matches!(e, ReadError::Truncated { .. }), "{offset}+{len}: {e}");
            assert!(e.to_string().contains("data.bin"), "{e}");
        }
        assert_eq!(pread(&p, 16, 0).unwrap(), Vec::<u8>::new());
    }
}
