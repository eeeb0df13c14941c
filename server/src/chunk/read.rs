//! Reading the values of one file's variable, lock-free: stored chunks (decoded in Rust),
//! contiguous byte runs, netCDF-3 records or values held in memory.
//!
//! This layer knows files and their layouts, not served variables: assembling a served
//! variable from the pieces of many files is the pipeline's (`crate::pipeline`). Bytes come
//! through an explicit [`RangeRead`] (the `storage` layer below), so the same code reads for
//! serving ([`Direct`]) and while an object is being indexed.

use std::path::PathBuf;

use super::grid::{
    byteswap, copy_block, copy_block_planes, copy_block_swapped, fill_with, grid_shape, intersect, linear,
    numel,
};
use super::verified::{self, At};
use crate::codec::{CodecError, decode_hdf5};
use crate::dtype::{DType, Endian};
use crate::source::{ChunkLoc, ChunkRef, FileVar, Filter, Layout, MemValues};
use crate::storage::read::{ByteError, RangeRead, check_unchanged, pread, read_file, read_source_whole};

pub use crate::storage::read::Direct;

/// Most bytes one decoded chunk or block may take: the netCDF-4/HDF5 limit on one chunk
/// (4 GiB), far above any chunk a Zarr client asks for. Sizes come from files and
/// references, which may be corrupt: a declared chunk of `[0, 2^40]` once made a fuzzed
/// file allocate terabytes at start-up, and a failed allocation aborts the process.
pub const MAX_BUFFER_BYTES: u64 = 1 << 32;

/// Bytes of a decoded buffer of `shape` with elements of `elem` bytes, if it may be allocated
/// (see [`MAX_BUFFER_BYTES`]).
pub fn buffer_len(shape: &[u64], elem: usize) -> Result<usize, ReadError> {
    numel(shape)
        .and_then(|n| n.checked_mul(elem))
        .filter(|b| *b as u64 <= MAX_BUFFER_BYTES)
        .ok_or_else(|| ReadError::TooLarge(shape.to_vec()))
}

/// A buffer for `shape` filled with `fill`, allocated fallibly: an error, not an abort,
/// when the size is absurd or the memory is not there.
pub fn filled_buffer(shape: &[u64], elem: usize, fill: &[u8]) -> Result<Vec<u8>, ReadError> {
    let len = buffer_len(shape, elem)?;
    let mut buf = Vec::new();
    buf.try_reserve_exact(len)
        .map_err(|_| ReadError::TooLarge(shape.to_vec()))?;
    buf.resize(len, 0);
    // zeros are there already: a second pass over the buffer only for a non-zero fill
    if fill.iter().any(|b| *b != 0) {
        fill_with(&mut buf, fill);
    }
    Ok(buf)
}

/// A chunk that cannot be produced. All variants map to HTTP 5xx except `OutOfRange`.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The chunk index is not in the variable's chunk grid (the client asked for a chunk that does
    /// not exist: 404).
    #[error("chunk index {index:?} is outside the chunk grid {grid:?}")]
    OutOfRange {
        /// Chunk index asked for, one entry per dimension.
        index: Vec<u64>,
        /// Number of chunks along each dimension.
        grid: Vec<u64>,
    },
    /// The bytes could not be read (I/O, truncated or changed file, object store).
    #[error(transparent)]
    Bytes(#[from] ByteError),
    /// The stored chunk's bytes cannot be decoded (corrupt or truncated data, or a codec we cannot
    /// decode).
    #[error("{path}: chunk at offset {offset}: {source}")]
    Codec {
        /// File the chunk was read from, for messages.
        path: PathBuf,
        /// Byte offset of the chunk in that file.
        offset: u64,
        /// What the decoder said.
        source: CodecError,
    },
    /// The chunk or block (shape given) would take more than [`MAX_BUFFER_BYTES`] decoded:
    /// the size comes from a corrupt file or an absurd chunk grid, and allocating it could
    /// take the server down with it.
    #[error("chunk of {0:?} elements is too large (over {MAX_BUFFER_BYTES} bytes decoded)")]
    TooLarge(Vec<u64>),
    /// A chunk reference naming a file the reference table does not hold (corrupt index).
    #[error("{path}: chunk {chunk} refers to file {file}, but the references list {files} files")]
    BadReference {
        /// File whose reference table is inconsistent, for messages.
        path: PathBuf,
        /// Position of the bad reference in the variable's chunk list.
        chunk: usize,
        /// File number the reference names.
        file: u32,
        /// Number of files the references actually list.
        files: usize,
    },
    /// A computed block that does not fit the variable (a bug in a computation).
    #[error("{0}")]
    Block(String),
    /// Work sent to the compute service (`cloudify serve --compute`) could not be done
    /// there: the message names the service or the worker.
    #[error("{message}")]
    Compute {
        /// HTTP status to answer: 503 (service busy or gone), 502 (a worker answered
        /// garbage or another protocol version), or the worker's own status for a failure
        /// reading the data.
        status: u16,
        /// What happened, naming the compute service or worker.
        message: String,
        /// `Retry-After` seconds for a 503 that will pass (busy).
        retry_after: Option<u64>,
    },
}

/// Values read into the index from a local file's bytes are only served while the file is
/// the version they were read from (one `stat`); see [`crate::storage::read`].
pub fn check_inlined(fv: &FileVar) -> Result<(), ReadError> {
    if matches!(fv.stored.as_deref(), Some(crate::source::Stored::At { .. })) {
        check_unchanged(&fv.file)?;
    }
    Ok(())
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

/// The stored bytes of chunk number `n` (row-major over the stored grid) of a chunked or
/// referenced variable; `None` when it was never written.
fn fetch_stored(io: &dyn RangeRead, fv: &FileVar, n: usize) -> Result<Option<Stored>, ReadError> {
    match &fv.layout {
        Layout::Chunked { locs, .. } => match locs.get(n).copied().filter(|l| l.size > 0) {
            Some(l) => Ok(Some(Stored {
                bytes: io.read_at(&fv.file, l.offset, l.size)?,
                mask: l.filter_mask,
                path: fv.file.path.clone(),
                offset: l.offset,
            })),
            None => Ok(None),
        },
        Layout::Listed { table, .. } => {
            // A reference to a file the table does not list is a corrupt index: say so
            // rather than read an empty path.
            let file = |i: u32| {
                table
                    .files
                    .get(i as usize)
                    .cloned()
                    .ok_or_else(|| ReadError::BadReference {
                        path: fv.file.path.clone(),
                        chunk: n,
                        file: i,
                        files: table.files.len(),
                    })
            };
            let remote = |i: u32| table.remote.get(i as usize).and_then(Option::as_ref);
            Ok(match table.chunks.get(n) {
                None | Some(ChunkRef::Missing) => None,
                Some(ChunkRef::Range {
                    file: f,
                    offset,
                    size,
                }) => {
                    let path = file(*f)?;
                    let bytes = match remote(*f) {
                        Some(obj) => io.read_at(obj, *offset, *size)?,
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
                    let path = file(*f)?;
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
/// ones. For HDF5-chunked sources all byte ranges go to one [`RangeRead::read_many`] call, so an object
/// store answers nearby chunks with shared requests.
fn fetch_stored_many<K>(
    io: &dyn RangeRead,
    fv: &FileVar,
    wanted: Vec<(K, usize)>,
) -> Result<Vec<(K, Stored)>, ReadError> {
    if let Layout::Chunked { locs, .. } = &fv.layout {
        let present: Vec<(K, ChunkLoc)> = wanted
            .into_iter()
            .filter_map(|(k, n)| locs.get(n).copied().filter(|l| l.size > 0).map(|l| (k, l)))
            .collect();
        let ranges: Vec<(u64, u64)> = present.iter().map(|(_, l)| (l.offset, l.size)).collect();
        let raws = io.read_many(&fv.file, &ranges)?;
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
        if let Some(s) = fetch_stored(io, fv, n)? {
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

/// [`decode_stored`] of a stored chunk of `fv`, noting a chunk of an HDF5-chunked local file
/// that decoded ([`super::verified`]: a later check of it need not decode it again).
fn decode_noted(fv: &FileVar, s: Stored, filters: &[Filter], clen: usize) -> Result<Vec<u8>, ReadError> {
    let (offset, stored_len) = (s.offset, s.bytes.len() as u64);
    let data = decode_stored(s, filters, clen)?;
    if matches!(fv.layout, Layout::Chunked { .. }) {
        verified::note(At {
            file: &fv.file,
            offset,
            stored_len,
            decoded_len: clen,
        });
    }
    Ok(data)
}

/// Finds out whether the block `[start, start+count)` of an HDF5-chunked variable of one
/// file can be read now, keeping nothing: how an answer that cannot report a failure once
/// started is checked first. Every stored chunk it touches that decoded before
/// ([`super::verified`]) has its bytes read without being copied out
/// ([`RangeRead::check_readable`]: the storage answers now); any other is decoded as far as
/// it can fail — inflated, with its checksum, but not unshuffled (a byte shuffle cannot
/// fail), into this thread's reused buffer — and noted; the file is then checked to be the
/// version indexed. Returns how many chunks had to be decoded (0: all were known), or
/// `None` (nothing read) for another layout: the caller then reads the block.
pub fn check_decodes(
    io: &dyn RangeRead,
    fv: &FileVar,
    dtype: DType,
    start: &[u64],
    count: &[u64],
) -> Result<Option<usize>, ReadError> {
    let Layout::Chunked {
        chunk_shape,
        locs,
        filters,
    } = &fv.layout
    else {
        return Ok(None);
    };
    if count.contains(&0) {
        return Ok(Some(0));
    }
    let sgrid = grid_shape(&fv.shape, chunk_shape);
    let elem = dtype.size();
    let clen = buffer_len(chunk_shape, elem)?;
    let (lo, hi) = chunk_box(start, count, chunk_shape);
    let mut known = Vec::new();
    let mut decoded = 0;
    let mut ci = lo.clone();
    loop {
        let n = linear(&ci, &sgrid) as usize;
        // never written: reads as fill, nothing to decode
        if let Some(l) = locs.get(n).filter(|l| l.size > 0) {
            let at = At {
                file: &fv.file,
                offset: l.offset,
                stored_len: l.size,
                decoded_len: clen,
            };
            if verified::known(at) {
                known.push((l.offset, l.size));
            } else {
                let Some(stored) = fetch_stored(io, fv, n)? else {
                    return Err(ReadError::Block(format!(
                        "stored chunk {n} vanished from the index"
                    )));
                };
                match crate::codec::inflate_planes(&stored.bytes, filters, stored.mask, clen, elem) {
                    Some(planes) => {
                        crate::codec::recycle(planes);
                        verified::note(at);
                    }
                    // another pipeline, or a stream that does not inflate right: decoded
                    // whole, which names the problem
                    None => drop(decode_noted(fv, stored, filters, clen)?),
                }
                decoded += 1;
            }
        }
        if !next_index(&mut ci, &lo, &hi) {
            break;
        }
    }
    io.check_readable(&fv.file, &known)?;
    check_unchanged(&fv.file)?;
    Ok(Some(decoded))
}

/// All values of one file's variable as little-endian bytes; never-written parts read as
/// `fill`.
pub fn read_whole(io: &dyn RangeRead, fv: &FileVar, dtype: DType, fill: &[u8]) -> Result<Vec<u8>, ReadError> {
    let mut buf = filled_buffer(&fv.shape, dtype.size(), fill)?;
    let zero = vec![0u64; fv.shape.len()];
    read_into(
        io,
        fv,
        dtype,
        &zero,
        &fv.shape,
        &mut buf,
        &fv.shape,
        &zero,
        Endian::Little,
    )?;
    Ok(buf)
}

/// Reads the block `[start, start+count)` of one file's variable into `dst` (shape
/// `dst_shape`) at `dst_start`, its elements in byte order `order`: little-endian, as the
/// server serves, or big-endian for OPeNDAP's XDR, converted while the values are copied
/// into place rather than in a pass of their own over the answer. Parts never written are
/// left as they are in `dst` (the caller fills them, see [`fully_written`]).
#[allow(clippy::too_many_arguments)]
pub fn read_into(
    io: &dyn RangeRead,
    fv: &FileVar,
    dtype: DType,
    start: &[u64],
    count: &[u64],
    dst: &mut [u8],
    dst_shape: &[u64],
    dst_start: &[u64],
    order: Endian,
) -> Result<(), ReadError> {
    if count.contains(&0) {
        return Ok(());
    }
    let elem = dtype.size();
    // whether the file's byte order differs from the one asked for
    let swap = fv.endian != order && elem > 1;
    // whether little-endian values (held in memory, kept by the cache) must be swapped
    let swap_le = order == Endian::Big && elem > 1;
    match &fv.layout {
        Layout::Unallocated => Ok(()),
        Layout::Memory(m) => {
            check_inlined(fv)?;
            if let MemValues::Bytes(b) = m.as_ref() {
                if swap_le {
                    copy_block_swapped(b, &fv.shape, start, dst, dst_shape, dst_start, count, elem);
                } else {
                    copy_block(b, &fv.shape, start, dst, dst_shape, dst_start, count, elem);
                }
            }
            Ok(())
        }
        Layout::Contiguous { offset } => {
            let mut block = read_contiguous(io, &fv.file, *offset, &fv.shape, elem, start, count)?;
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
        Layout::Records { begin, recsize } => {
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
                for part in io.read_many(&fv.file, &ranges)? {
                    block.extend(part);
                }
            } else {
                for r in start[0]..start[0] + count[0] {
                    block.extend(read_contiguous(
                        io,
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
        Layout::Chunked {
            chunk_shape, filters, ..
        }
        | Layout::Listed {
            chunk_shape, filters, ..
        } => {
            let sgrid = grid_shape(&fv.shape, chunk_shape);
            let clen = buffer_len(chunk_shape, elem)?;
            // Range of stored chunks overlapping the block.
            let (lo, hi) = chunk_box(start, count, chunk_shape);
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
            // The overlap of stored chunk `ci` with the block: start in the chunk, count,
            // start in `dst`.
            let overlap = |ci: &[u64]| {
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
                (src_start, ov_count, d_start)
            };
            // Copies the overlap of decoded stored chunk `ci` with the block into `dst`, from
            // its values in the order asked for, little-endian ones (a kept chunk), or its
            // inflated bytes still shuffled in the file's order (see below).
            let mut place = |ci: &[u64], data: &[u8], form: Form| {
                let (src_start, ov_count, d_start) = overlap(ci);
                let (s, d) = (&src_start, &d_start);
                match form {
                    Form::Planes => {
                        copy_block_planes(data, chunk_shape, s, dst, dst_shape, d, &ov_count, elem, swap);
                    }
                    Form::Little if swap_le => {
                        copy_block_swapped(data, chunk_shape, s, dst, dst_shape, d, &ov_count, elem);
                    }
                    Form::Little | Form::Ordered => {
                        copy_block(data, chunk_shape, s, dst, dst_shape, d, &ov_count, elem);
                    }
                }
            };
            // A read that is part of a scan ([`super::cache::scanning`]) keeps nothing: where
            // the pipeline is netCDF's usual [shuffle, deflate], each chunk is inflated and
            // only the values it gives unshuffled, straight into `dst` and its byte order
            // (a point of a time series, or a whole map with no pass over it of its own).
            let scan = super::cache::is_scanning();
            // Local HDF5 chunks go through the decoded-chunk cache one at a time, in order
            // (readers of neighbouring blocks walk the same chunks in step and share them);
            // the rest are fetched together (one request per group of nearby chunks for
            // objects) and decoded one at a time, so memory holds one decoded chunk.
            let cache = super::cache::cache();
            let mut uncached = Vec::new();
            let mut hit_or_decoded = false;
            for (ci, n) in wanted {
                let key = match &fv.layout {
                    Layout::Chunked { locs, .. } if cache.enabled() => locs
                        .get(n)
                        .filter(|l| l.size > 0)
                        .and_then(|l| super::cache::Key::new(&fv.file, l.offset, l.size, clen)),
                    _ => None,
                };
                let Some(key) = key else {
                    uncached.push((ci, n));
                    continue;
                };
                if scan {
                    hit_or_decoded = true;
                    if let Some(data) = cache.kept(&key) {
                        place(&ci, &data, Form::Little);
                        continue;
                    }
                    let Some(stored) = fetch_stored(io, fv, n)? else {
                        return Err(ReadError::Block(format!(
                            "stored chunk {n} vanished from the index"
                        )));
                    };
                    let (offset, stored_len) = (stored.offset, stored.bytes.len() as u64);
                    let planes =
                        crate::codec::inflate_planes(&stored.bytes, filters, stored.mask, clen, elem);
                    if let Some(planes) = planes {
                        verified::note(At {
                            file: &fv.file,
                            offset,
                            stored_len,
                            decoded_len: clen,
                        });
                        place(&ci, &planes, Form::Planes);
                        crate::codec::recycle(planes);
                    } else {
                        let mut data = decode_noted(fv, stored, filters, clen)?;
                        if swap {
                            byteswap(&mut data, elem);
                        }
                        place(&ci, &data, Form::Ordered);
                    }
                    continue;
                }
                let data = cache.get_or_decode(key, || -> Result<Vec<u8>, ReadError> {
                    let Some(stored) = fetch_stored(io, fv, n)? else {
                        return Err(ReadError::Block(format!(
                            "stored chunk {n} vanished from the index"
                        )));
                    };
                    let mut data = decode_noted(fv, stored, filters, clen)?;
                    if fv.endian == Endian::Big {
                        byteswap(&mut data, elem);
                    }
                    Ok(data)
                })?;
                hit_or_decoded = true;
                place(&ci, &data, Form::Little);
            }
            if hit_or_decoded {
                // What an uncached read finds out: the file is still the version indexed.
                check_unchanged(&fv.file)?;
            }
            for (ci, stored) in fetch_stored_many(io, fv, uncached)? {
                let mut data = decode_noted(fv, stored, filters, clen)?;
                if swap {
                    byteswap(&mut data, elem);
                }
                place(&ci, &data, Form::Ordered);
            }
            Ok(())
        }
    }
}

/// What a decoded stored chunk handed to `read_into`'s placing holds.
#[derive(Clone, Copy)]
enum Form {
    /// Its values, in the byte order asked for.
    Ordered,
    /// Its values, little-endian (a chunk the decoded-chunk cache keeps).
    Little,
    /// Its inflated bytes still shuffled, in the file's byte order.
    Planes,
}

/// Whether every element of the block `[start, start+count)` of one file's variable was
/// written: no chunk it touches is missing from the file or the references, so a read of
/// it into a buffer writes every byte (the caller need not fill the buffer first). `false`
/// when unsure.
pub fn fully_written(fv: &FileVar, start: &[u64], count: &[u64]) -> bool {
    if count.contains(&0) {
        return true;
    }
    let chunk_shape = match &fv.layout {
        Layout::Contiguous { .. } | Layout::Records { .. } => return true,
        Layout::Memory(m) => return matches!(m.as_ref(), MemValues::Bytes(_)),
        Layout::Chunked { chunk_shape, .. } | Layout::Listed { chunk_shape, .. } => chunk_shape,
        Layout::Unallocated => return false,
    };
    // whether stored chunk `n` was written
    let present = |n: usize| match &fv.layout {
        Layout::Chunked { locs, .. } => locs.get(n).is_some_and(|l| l.size > 0),
        Layout::Listed { table, .. } => !matches!(table.chunks.get(n), None | Some(ChunkRef::Missing)),
        _ => false,
    };
    let sgrid = grid_shape(&fv.shape, chunk_shape);
    let (lo, hi) = chunk_box(start, count, chunk_shape);
    let mut ci = lo.clone();
    loop {
        if !present(linear(&ci, &sgrid) as usize) {
            return false;
        }
        if !next_index(&mut ci, &lo, &hi) {
            return true;
        }
    }
}

/// The first and last stored-chunk index, per dimension, of the chunks a non-empty block
/// `[start, start+count)` overlaps.
fn chunk_box(start: &[u64], count: &[u64], chunk_shape: &[u64]) -> (Vec<u64>, Vec<u64>) {
    let lo = start.iter().zip(chunk_shape).map(|(s, c)| s / c).collect();
    let hi = start
        .iter()
        .zip(count)
        .zip(chunk_shape)
        .map(|((s, n), c)| (s + n - 1) / c)
        .collect();
    (lo, hi)
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
    io: &dyn RangeRead,
    file: &crate::storage::SourceFile,
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
        let buf = io.read_at(file, base + first, span)?;
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
        for part in io.read_many(file, &ranges)? {
            out.extend(part);
        }
        Ok(out)
    }
}

/// Stored bytes of stored chunk number `n` (row-major over the file's chunk grid) as they
/// are in the file, when they can be served unchanged: `None` when the chunk was never
/// written or skipped a filter (HDF5 filter mask), or the layout is not chunked.
pub fn raw_stored_chunk(io: &dyn RangeRead, fv: &FileVar, n: usize) -> Result<Option<Vec<u8>>, ReadError> {
    if fv.layout.chunking().is_none() {
        return Ok(None);
    }
    Ok(fetch_stored(io, fv, n)?.filter(|s| s.mask == 0).map(|s| s.bytes))
}

/// Decoded little-endian bytes of stored chunk number `n` of a chunked layout, the whole
/// chunk (edge chunks as stored: HDF5 may hold anything outside the array). `None` when the
/// chunk was never written or the layout is not chunked.
pub fn decoded_stored_chunk(
    io: &dyn RangeRead,
    fv: &FileVar,
    dtype: DType,
    n: usize,
) -> Result<Option<Vec<u8>>, ReadError> {
    let Some((chunk_shape, filters)) = fv.layout.chunking() else {
        return Ok(None);
    };
    let Some(stored) = fetch_stored(io, fv, n)? else {
        return Ok(None);
    };
    let elem = dtype.size();
    let clen = buffer_len(chunk_shape, elem)?;
    let mut data = decode_noted(fv, stored, filters, clen)?;
    if fv.endian == Endian::Big {
        byteswap(&mut data, elem);
    }
    Ok(Some(data))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::*;
    use crate::source::{ChunkTable, SourceFile};

    /// A reference into a file the table does not list is a corrupt index: an error naming
    /// the chunk and file number, not a read of an empty path.
    #[test]
    fn reference_to_an_unlisted_file_is_an_error() {
        let table = ChunkTable {
            files: Arc::new(vec![PathBuf::from("/data/a.nc")]),
            chunks: vec![ChunkRef::Range {
                file: 5,
                offset: 0,
                size: 4,
            }],
            ..ChunkTable::default()
        };
        let fv = FileVar {
            file: Arc::new(SourceFile::local(PathBuf::from("refs.json"), 0, 0)),
            shape: vec![1],
            endian: Endian::Little,
            layout: Layout::Listed {
                chunk_shape: vec![1],
                filters: Vec::new(),
                table: Arc::new(table),
            },
            stored: None,
        };
        let e = read_whole(&Direct, &fv, DType::F32, &[0; 4]).expect_err("unlisted file");
        assert!(
            matches!(
                e,
                ReadError::BadReference {
                    file: 5,
                    files: 1,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("refers to file 5"), "{e}");
    }
}
