//! The pipeline: a region of a served variable, for any protocol.
//!
//! A served variable is stitched from pieces of source files along its concat axis; this
//! layer assembles a region of it (a served chunk, or any block) from the file-level reads
//! of [`crate::chunk::read`]. Protocols (Zarr v2/v3, and what reads blocks next: derived
//! variables, reductions, images, OPeNDAP) ask here and encode the answer themselves.
//! When a served chunk is exactly one stored chunk, its decoded bytes are the answer
//! without a copy; pass-through (no decoding at all) is [`raw_chunk`].

use crate::block::{Block, BlockData};
use crate::chunk::grid::{copy_block, fill_with, grid_shape, intersect, linear, numel, swap_copy};
use crate::chunk::read::{
    Direct, ReadError, buffer_len, check_decodes, check_inlined, decoded_stored_chunk, filled_buffer,
    fully_written, raw_stored_chunk, read_into,
};
use crate::dataset::{Derive, Piece, Values, Variable};
use crate::dtype::{DType, Endian};
use crate::source::{Layout, MemValues};
use crate::storage::read::check_unchanged;

/// Checks that the local files served chunk `idx` is read from are the versions indexed,
/// without reading it: before answering `304 Not Modified`, which tells a client its cached
/// copy is still the data (the ETag derives from the identities recorded at start-up).
/// Only storage read from a source file's bytes is checked, as reads are.
pub fn check_chunk_sources(var: &Variable, idx: &[u64]) -> Result<(), ReadError> {
    let (start, count) = chunk_region(var, idx)?;
    check_region_sources(var, &start, &count)
}

/// The part of a region one piece of a stored variable holds: where in the piece (its own
/// coordinates) and where in a buffer of the region's shape.
struct PiecePart<'a> {
    piece: &'a Piece,
    start: Vec<u64>,
    count: Vec<u64>,
    dst_start: Vec<u64>,
}

/// The pieces the region `[start, start+count)` overlaps, each with its part (every piece,
/// whole region, for a variable without a concat axis).
fn piece_parts<'a>(var: &'a Variable, start: &[u64], count: &[u64]) -> Vec<PiecePart<'a>> {
    let mut parts = Vec::new();
    for piece in var.pieces() {
        let mut part = PiecePart {
            piece,
            start: start.to_vec(),
            count: count.to_vec(),
            dst_start: vec![0; start.len()],
        };
        if let Some(ax) = var.concat_axis() {
            let (Some(s), Some(c)) = (start.get(ax), count.get(ax)) else {
                continue;
            };
            let Some((s0, n)) = intersect(*s, *c, piece.start, piece.data.shape[ax]) else {
                continue;
            };
            part.start[ax] = s0 - piece.start;
            part.count[ax] = n;
            part.dst_start[ax] = s0 - s;
        }
        parts.push(part);
    }
    parts
}

/// [`check_chunk_sources`] for any region `[start, start+count)` (a derived variable checks
/// the regions of its inputs it reads).
pub fn check_region_sources(var: &Variable, start: &[u64], count: &[u64]) -> Result<(), ReadError> {
    if let Values::Derived(d) = &var.values {
        return d.check_sources(start, count);
    }
    for piece in var.pieces() {
        if let Some(ax) = var.concat_axis()
            && intersect(start[ax], count[ax], piece.start, piece.data.shape[ax]).is_none()
        {
            continue;
        }
        match &piece.data.layout {
            Layout::Chunked { .. } | Layout::Contiguous { .. } | Layout::Records { .. } => {
                check_unchanged(&piece.data.file).map_err(ReadError::from)?;
            }
            Layout::Memory(_) => check_inlined(&piece.data)?,
            Layout::Unallocated | Layout::Listed { .. } => {}
        }
    }
    Ok(())
}

/// Whether the served chunks of `var` are computed rather than stored: a derived variable,
/// or a stored one whose served grid is not tiled by its stored chunks (rechunked, or
/// assembled from several stored chunks). Computed chunks are the ones capped by
/// `--max-source-bytes` and kept in the compute cache; a served chunk that is one stored
/// chunk (pass-through) or a slice of contiguous storage is neither.
pub fn is_computed(var: &Variable) -> bool {
    match &var.values {
        Values::Derived(_) => true,
        Values::Stored { concat_axis, pieces } => {
            pieces.iter().any(|p| p.data.layout.chunking().is_some())
                && !crate::dataset::aggregate::pieces_tile(pieces, *concat_axis, &var.chunks)
        }
    }
}

/// What a variable's values are (see [`Derive::describe`]): for a stored variable its path,
/// type and served chunk grid (the same key names other data in another grid).
pub fn describe(var: &Variable) -> String {
    match &var.values {
        Values::Derived(d) => format!("{}:{:?}:{:?}=({})", var.path, var.dtype, var.chunks, d.describe()),
        Values::Stored { .. } => format!("{}:{:?}:{:?}", var.path, var.dtype, var.chunks),
    }
}

/// About how many bytes of source data reading the region `[start, start+count)` of `var`
/// reads, without reading (see [`Derive::estimate_bytes`]). Stored variables: the stored
/// (compressed) sizes of the chunks the region touches, from the chunk index; for
/// contiguous storage the bytes of the region; inlined and never-written data 0; a whole
/// chunk file of unknown size counts as its decoded size.
pub fn estimate_region_bytes(var: &Variable, start: &[u64], count: &[u64]) -> u64 {
    if let Values::Derived(d) = &var.values {
        return d.estimate_bytes(start, count);
    }
    piece_parts(var, start, count).iter().fold(0u64, |total, p| {
        total.saturating_add(piece_bytes(p.piece, var.dtype, &p.start, &p.count))
    })
}

/// [`estimate_region_bytes`] of the served chunk `idx`.
pub fn estimate_chunk_bytes(var: &Variable, idx: &[u64]) -> Result<u64, ReadError> {
    let (start, count) = chunk_region(var, idx)?;
    Ok(estimate_region_bytes(var, &start, &count))
}

/// Source bytes read for the region `[start, start+count)` local to one piece.
fn piece_bytes(piece: &Piece, dtype: DType, start: &[u64], count: &[u64]) -> u64 {
    if count.contains(&0) || start.len() != piece.data.shape.len() {
        return 0;
    }
    let elem = dtype.size() as u64;
    let region = || {
        count
            .iter()
            .try_fold(elem, |a, c| a.checked_mul(*c))
            .unwrap_or(u64::MAX)
    };
    match &piece.data.layout {
        Layout::Chunked {
            chunk_shape, locs, ..
        } => sum_chunks(chunk_shape, &piece.data.shape, start, count, |i| {
            locs.get(i).map_or(0, |l| l.size)
        }),
        Layout::Listed {
            chunk_shape, table, ..
        } => {
            let whole = chunk_shape
                .iter()
                .try_fold(elem, |a, c| a.checked_mul(*c))
                .unwrap_or(u64::MAX);
            sum_chunks(chunk_shape, &piece.data.shape, start, count, |i| {
                match table.chunks.get(i) {
                    Some(crate::source::ChunkRef::Range { size, .. }) => *size,
                    Some(crate::source::ChunkRef::Whole { .. }) => whole,
                    _ => 0,
                }
            })
        }
        Layout::Contiguous { .. } | Layout::Records { .. } => region(),
        Layout::Unallocated | Layout::Memory(_) => 0,
    }
}

/// Sum of `size(linear chunk index)` over the stored chunks (shape `chunk_shape`, of an
/// array of `shape`) that the non-empty region `[start, start+count)` touches.
fn sum_chunks(
    chunk_shape: &[u64],
    shape: &[u64],
    start: &[u64],
    count: &[u64],
    size: impl Fn(usize) -> u64,
) -> u64 {
    if chunk_shape.len() != shape.len() || chunk_shape.contains(&0) {
        return 0;
    }
    let grid = grid_shape(shape, chunk_shape);
    let lo: Vec<u64> = start.iter().zip(chunk_shape).map(|(s, c)| s / c).collect();
    let hi: Vec<u64> = start
        .iter()
        .zip(count)
        .zip(chunk_shape)
        .map(|((s, n), c)| (s + n - 1) / c)
        .collect();
    let mut idx = lo.clone();
    let mut total = 0u64;
    loop {
        total = total.saturating_add(size(linear(&idx, &grid) as usize));
        // odometer over [lo, hi]
        let mut d = idx.len();
        loop {
            if d == 0 {
                return total;
            }
            d -= 1;
            if idx[d] < hi[d] {
                idx[d] += 1;
                break;
            }
            idx[d] = lo[d];
        }
    }
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

/// Decoded bytes of the stored chunks one served chunk of `var` reads, when its served
/// chunks are not its stored chunks (a rechunked grid) and those go through the
/// decoded-chunk cache (HDF5-chunked local files): what the cache must hold for the
/// neighbouring served chunks, which read the same stored chunks, to decode each once
/// (see [`crate::chunk::cache::DecodedCache::fit`]). 0 otherwise: stored chunks served
/// whole never go through the cache, computed variables read through their inputs.
pub fn working_set(var: &Variable) -> u64 {
    let Values::Stored { pieces, .. } = &var.values else {
        return 0;
    };
    let Some(piece) = pieces.first() else {
        return 0;
    };
    let Layout::Chunked { chunk_shape, .. } = &piece.data.layout else {
        return 0;
    };
    if piece.data.file.remote.is_some() || *chunk_shape == var.chunks || chunk_shape.len() != var.chunks.len()
    {
        return 0;
    }
    let mut bytes = var.dtype.size() as u64;
    for ((served, stored), len) in var.chunks.iter().zip(chunk_shape).zip(&piece.data.shape) {
        let span = (*served).min(*len).max(1);
        let stored = (*stored).max(1);
        bytes = bytes.saturating_mul(span.div_ceil(stored).saturating_mul(stored));
    }
    bytes
}

/// Stored bytes of a served chunk, unchanged, when the variable is served pass-through.
/// Returns `None` when the chunk was never written or skipped a filter: the caller then
/// decodes and re-encodes it.
pub fn raw_chunk(var: &Variable, idx: &[u64]) -> Result<Option<Vec<u8>>, ReadError> {
    let (start, _) = chunk_region(var, idx)?;
    let Some((piece, local)) = locate_piece(var, &start) else {
        return Ok(None);
    };
    if let Some((chunk_shape, _)) = piece.data.layout.chunking() {
        let sgrid = grid_shape(&piece.data.shape, chunk_shape);
        let cidx: Vec<u64> = local.iter().zip(chunk_shape).map(|(s, c)| s / c).collect();
        return raw_stored_chunk(&Direct, &piece.data, linear(&cidx, &sgrid) as usize);
    }
    Ok(None)
}

/// The piece holding global position `start` and the position local to it (`None` for a
/// derived variable).
fn locate_piece<'a>(var: &'a Variable, start: &[u64]) -> Option<(&'a Piece, Vec<u64>)> {
    let pieces = var.pieces();
    let first = pieces.first()?;
    let mut local = start.to_vec();
    let Some(ax) = var.concat_axis() else {
        return Some((first, local));
    };
    let p = pieces
        .iter()
        .rev()
        .find(|p| p.start <= start[ax])
        .unwrap_or(first);
    local[ax] -= p.start.min(local[ax]);
    Some((p, local))
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
    if let Values::Derived(d) = &var.values {
        return derived_block(var, d.as_ref(), start, count, buf_shape);
    }
    if let Some(out) = whole_stored_chunk(var, start, buf_shape)? {
        return Ok(out);
    }
    let elem = var.dtype.size();
    let mut out = filled_buffer(buf_shape, elem, &var.fill)?;
    for p in piece_parts(var, start, count) {
        read_into(
            &Direct,
            &p.piece.data,
            var.dtype,
            &p.start,
            &p.count,
            &mut out,
            buf_shape,
            &p.dst_start,
            Endian::Little,
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
    let Some((piece, local)) = locate_piece(var, start) else {
        return Ok(None);
    };
    let Some((chunk_shape, _)) = piece.data.layout.chunking() else {
        return Ok(None);
    };
    if chunk_shape.as_slice() != buf_shape || local.iter().zip(chunk_shape).any(|(s, c)| s % c != 0) {
        return Ok(None);
    }
    // The chunk must lie inside this piece along the concat axis (it does when aligned).
    if let Some(ax) = var.concat_axis()
        && local[ax] + chunk_shape[ax] > piece.data.shape[ax]
        && piece.start + piece.data.shape[ax] < var.shape[ax]
    {
        return Ok(None);
    }
    let sgrid = grid_shape(&piece.data.shape, chunk_shape);
    let cidx: Vec<u64> = local.iter().zip(chunk_shape).map(|(s, c)| s / c).collect();
    let data = decoded_stored_chunk(&Direct, &piece.data, var.dtype, linear(&cidx, &sgrid) as usize)?;
    // Outside the array (Zarr edge padding) HDF5 may hold anything; Zarr readers ignore it.
    Ok(data)
}

/// The region `[start, start+count)` of a variable as a typed block of shape `count`:
/// the one read every protocol and every processing step makes.
///
/// A region of a variable served as stored (each served chunk one stored chunk) that
/// touches more decoded bytes of chunks than the decoded-chunk cache holds — a time series
/// at a point over a long axis — is read as a scan ([`crate::chunk::cache::scanning`]):
/// each chunk is read once by it, keeping them would evict what other readers reuse for
/// few hits of its own, and a chunk it takes a few values of is not unshuffled whole.
pub fn read_region(var: &Variable, start: &[u64], count: &[u64]) -> Result<Block, ReadError> {
    check_region(var, start, count)?;
    if let Values::Derived(d) = &var.values {
        return d.read(start, count);
    }
    if !crate::chunk::cache::is_scanning()
        && !is_computed(var)
        && touched_bytes(var, start, count) > crate::chunk::cache::cache().budget()
    {
        return crate::chunk::cache::scanning(|| read_region(var, start, count));
    }
    let block = if var.dtype == DType::Str {
        Block::from_strings(count.to_vec(), read_strings(var, start, count, count)?)
    } else {
        Block::from_bytes(var.dtype, count.to_vec(), read_block(var, start, count, count)?)
    };
    block.map_err(|e| ReadError::Block(e.to_string()))
}

/// [`read_region`] of a variable of fixed-size elements written straight into `dst` (the
/// region's values in C order, `count`'s product times the element size; its bytes on entry
/// do not matter), each element in byte order `order`. A stored variable's chunks are
/// decoded into place — with netCDF's [shuffle, deflate] in a scan, unshuffled and put in
/// `order` in the same pass — so a large answer (a whole variable over OPeNDAP, in XDR's
/// big-endian order) is not assembled from copies of decoded chunks and then byte-swapped:
/// those passes and the zeroing of the answer's buffer were a third of its CPU, profiled.
/// A derived variable's block is computed, then copied.
pub fn read_region_into(
    var: &Variable,
    start: &[u64],
    count: &[u64],
    dst: &mut [u8],
    order: Endian,
) -> Result<(), ReadError> {
    check_region(var, start, count)?;
    let elem = var.dtype.size();
    if var.dtype == DType::Str || buffer_len(count, elem)? != dst.len() {
        return Err(ReadError::Block(format!(
            "'{}': a region of {count:?} {:?} values read into {} bytes",
            var.name,
            var.dtype,
            dst.len()
        )));
    }
    if let Values::Derived(d) = &var.values {
        let block = d.read(start, count)?;
        let bytes = block.bytes().filter(|b| b.len() == dst.len()).ok_or_else(|| {
            ReadError::Block(format!("'{}': computed block does not fit {count:?}", var.name))
        })?;
        if order == Endian::Big {
            swap_copy(bytes, dst, elem);
        } else {
            dst.copy_from_slice(bytes);
        }
        return Ok(());
    }
    // A region of whole chunks of a variable served as stored is read as a scan too: no
    // other block shares its chunks (a whole-variable answer, read one chunk at a time,
    // would otherwise flush the cache for nothing), as a whole served chunk never goes
    // through the cache ([`read_block`]).
    if !crate::chunk::cache::is_scanning()
        && !is_computed(var)
        && (whole_chunks(var, start, count)
            || touched_bytes(var, start, count) > crate::chunk::cache::cache().budget())
    {
        return crate::chunk::cache::scanning(|| read_region_into(var, start, count, dst, order));
    }
    let parts = piece_parts(var, start, count);
    let whole = match var.concat_axis() {
        Some(ax) => parts.iter().map(|p| p.count[ax]).sum::<u64>() == count[ax],
        None => parts.len() == 1,
    };
    // Fill only when some value is not written by a read (a chunk never written, a gap
    // between pieces): a pass over the whole answer otherwise.
    if !whole
        || !parts
            .iter()
            .all(|p| fully_written(&p.piece.data, &p.start, &p.count))
    {
        let mut fill = var.fill.clone();
        if order == Endian::Big {
            fill.reverse();
        }
        fill_with(dst, &fill);
    }
    for p in parts {
        read_into(
            &Direct,
            &p.piece.data,
            var.dtype,
            &p.start,
            &p.count,
            dst,
            count,
            &p.dst_start,
            order,
        )?;
    }
    Ok(())
}

/// Finds out whether [`read_region`] of `[start, start+count)` would succeed, keeping
/// nothing: how an answer that must be known readable before its headers is checked (an
/// OPeNDAP `.dods` answer). A stored variable of HDF5-chunked pieces is checked chunk by
/// chunk ([`check_decodes`]): chunks that decoded before ([`crate::chunk::verified`]) have
/// their bytes read and are not decoded again, the others are inflated but not unshuffled,
/// and its files are checked to be the versions indexed; anything else is read.
pub fn verify_region(var: &Variable, start: &[u64], count: &[u64]) -> Result<(), ReadError> {
    check_region(var, start, count)?;
    if matches!(var.values, Values::Stored { .. }) && var.dtype != DType::Str {
        let mut checked = true;
        for p in piece_parts(var, start, count) {
            if check_decodes(&Direct, &p.piece.data, var.dtype, &p.start, &p.count)?.is_none() {
                checked = false;
                break;
            }
        }
        if checked {
            return Ok(());
        }
    }
    read_region(var, start, count).map(drop)
}

/// Whether the region `[start, start+count)` is made of whole served chunks (those at the
/// array's end as far as it goes).
fn whole_chunks(var: &Variable, start: &[u64], count: &[u64]) -> bool {
    var.chunks
        .iter()
        .zip(start.iter().zip(count))
        .zip(&var.shape)
        .all(|((c, (s, n)), len)| *c > 0 && s % c == 0 && (n % c == 0 || s + n == *len))
}

/// Decoded bytes of the served chunks the region `[start, start+count)` touches.
fn touched_bytes(var: &Variable, start: &[u64], count: &[u64]) -> u64 {
    var.chunks
        .iter()
        .zip(start.iter().zip(count))
        .map(|(c, (s, n))| {
            let c = (*c).max(1);
            if *n == 0 { 0 } else { (s + n - 1) / c - s / c + 1 }
        })
        .fold(var.dtype.size() as u64, u64::saturating_mul)
        .saturating_mul(var.chunks.iter().product::<u64>())
}

/// A region inside the variable's shape, else [`ReadError::OutOfRange`].
fn check_region(var: &Variable, start: &[u64], count: &[u64]) -> Result<(), ReadError> {
    let inside = start.len() == var.shape.len()
        && count.len() == var.shape.len()
        && start
            .iter()
            .zip(count)
            .zip(&var.shape)
            .all(|((s, c), n)| s.checked_add(*c).is_some_and(|end| end <= *n));
    if inside {
        Ok(())
    } else {
        Err(ReadError::OutOfRange {
            index: start.iter().chain(count).copied().collect(),
            grid: var.shape.clone(),
        })
    }
}

/// A derived variable's block `[start, start+count)` in a buffer of shape `buf_shape`
/// (Zarr edge chunks: the rest is fill).
fn derived_block(
    var: &Variable,
    d: &dyn Derive,
    start: &[u64],
    count: &[u64],
    buf_shape: &[u64],
) -> Result<Vec<u8>, ReadError> {
    let block = d.read(start, count)?;
    if block.dtype() != var.dtype || block.shape() != count {
        return Err(ReadError::Block(format!(
            "computed block is {:?} of shape {:?}, expected {:?} of shape {count:?}",
            block.dtype(),
            block.shape(),
            var.dtype
        )));
    }
    let BlockData::Bytes(bytes) = block.into_data() else {
        return Err(ReadError::Block("computed block holds strings".into()));
    };
    if count == buf_shape {
        return Ok(bytes);
    }
    let elem = var.dtype.size();
    let mut out = filled_buffer(buf_shape, elem, &var.fill)?;
    let zero = vec![0u64; count.len()];
    copy_block(&bytes, count, &zero, &mut out, buf_shape, &zero, count, elem);
    Ok(out)
}

/// Strings of the served chunk `idx` of an NC_STRING variable (padded with "").
pub fn read_chunk_strings(var: &Variable, idx: &[u64]) -> Result<Vec<String>, ReadError> {
    let (start, count) = chunk_region(var, idx)?;
    read_strings(var, &start, &count, &var.chunks)
}

/// Strings of the block `[start, start+count)` of an NC_STRING variable, in a buffer of
/// shape `buf_shape` (>= count; the rest is "").
fn read_strings(
    var: &Variable,
    start: &[u64],
    count: &[u64],
    buf_shape: &[u64],
) -> Result<Vec<String>, ReadError> {
    let n = buffer_len(buf_shape, std::mem::size_of::<String>())? / std::mem::size_of::<String>();
    let mut out = vec![String::new(); n];
    if let Values::Derived(d) = &var.values {
        let block = d.read(start, count)?;
        if block.shape() != count {
            return Err(ReadError::Block(format!(
                "computed block has shape {:?}, expected {count:?}",
                block.shape()
            )));
        }
        let BlockData::Strings(values) = block.into_data() else {
            return Err(ReadError::Block(
                "computed block of a string variable holds numbers".into(),
            ));
        };
        let zero = vec![0u64; count.len()];
        copy_strings(&values, count, &zero, &mut out, buf_shape, &zero, count);
        return Ok(out);
    }
    for p in piece_parts(var, start, count) {
        let Layout::Memory(m) = &p.piece.data.layout else {
            continue;
        };
        let MemValues::Strings(values) = m.as_ref() else {
            continue;
        };
        copy_strings(
            values,
            &p.piece.data.shape,
            &p.start,
            &mut out,
            buf_shape,
            &p.dst_start,
            &p.count,
        );
    }
    Ok(out)
}

/// Copies the box `count` of strings at `src_start` of `src` (shape `src_shape`) to
/// `dst_start` of `dst` (shape `dst_shape`); element-wise via indices (string arrays are
/// small). Positions outside either array are skipped.
fn copy_strings(
    src: &[String],
    src_shape: &[u64],
    src_start: &[u64],
    dst: &mut [String],
    dst_shape: &[u64],
    dst_start: &[u64],
    count: &[u64],
) {
    let total = numel(count).unwrap_or(0);
    let mut k = vec![0u64; count.len()];
    for _ in 0..total {
        let s: Vec<u64> = k.iter().zip(src_start).map(|(a, b)| a + b).collect();
        let d: Vec<u64> = k.iter().zip(dst_start).map(|(a, b)| a + b).collect();
        let si = linear(&s, src_shape) as usize;
        let di = linear(&d, dst_shape) as usize;
        if let (Some(v), Some(o)) = (src.get(si), dst.get_mut(di)) {
            o.clone_from(v);
        }
        for x in (0..k.len()).rev() {
            k[x] += 1;
            if k[x] < count[x] {
                break;
            }
            k[x] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use crate::storage::read::ByteError;

    use super::*;
    use crate::dataset::Dataset;
    use crate::open::file::open_file;
    use crate::source::SourceFile;

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

    /// A served chunk grid too large to allocate (a corrupt file's declared chunking, or
    /// a typo in a configured grid) is an error naming the shape, not an allocation that
    /// aborts the process.
    #[test]
    fn a_chunk_too_large_to_allocate_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.nc");
        write_nc4(&path, 1.0);
        let ds = open(&path);
        let mut v = (**ds.variable("big").expect("big")).clone();
        v.chunks = vec![1 << 20, 1 << 20];
        match read_chunk(&v, &[0, 0]) {
            Err(e @ ReadError::TooLarge(_)) => assert!(e.to_string().contains("1048576"), "{e}"),
            other => panic!("{:?}", other.map(|b| b.len())),
        }
        // at the bound: one element more than it allows
        let elems = crate::chunk::read::MAX_BUFFER_BYTES / 4 + 1;
        assert!(matches!(buffer_len(&[elems], 4), Err(ReadError::TooLarge(_))));
        assert_eq!(buffer_len(&[32, 128], 4).ok(), Some(32 * 128 * 4));
    }

    /// The working set of a rechunked grid is the decoded stored chunks one served chunk
    /// reads; a grid of stored chunks has none (read whole, not through the cache).
    #[test]
    fn working_set_is_the_stored_chunks_one_served_chunk_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.nc");
        write_nc4(&path, 1.0);
        let ds = open(&path);
        let big = (**ds.variable("big").expect("big")).clone();
        assert_eq!(big.chunks, [32, 128]);
        assert_eq!(working_set(&big), 0, "stored chunks served as they are");
        let mut v = big.clone();
        v.chunks = vec![64, 8]; // two stored chunks of 32 x 128 float32
        assert_eq!(working_set(&v), 2 * 32 * 128 * 4);
        v.chunks = vec![40, 200]; // clipped to the shape, rounded up to whole stored chunks
        assert_eq!(working_set(&v), 2 * 32 * 128 * 4);
        v.chunks = vec![1, 1];
        assert_eq!(working_set(&v), 32 * 128 * 4);
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
                Err(e @ ReadError::Bytes(ByteError::Changed { .. })) => {
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
        let Some(Layout::Chunked { locs, .. }) = ds.variable("big").map(|v| &v.pieces()[0].data.layout)
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

    /// Checking a region before answering: a chunk that does not decode is an error naming
    /// it; a chunk that decoded once is then known readable without decoding (only its bytes
    /// read and the file checked); a file changed since is refused as a read refuses it,
    /// known chunks or not.
    #[test]
    fn verify_region_decodes_what_is_not_known_and_refuses_a_changed_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.nc");
        write_nc4(&p, 1.0);
        // the second stored chunk (rows 32..64) made undecodable, before indexing
        let probe = open(&p);
        let Some(Layout::Chunked { locs, .. }) = probe.variable("big").map(|v| &v.pieces()[0].data.layout)
        else {
            panic!("big is chunked");
        };
        let at = locs[1].offset as usize + locs[1].size as usize / 3;
        let mut bytes = std::fs::read(&p).expect("read");
        for b in &mut bytes[at..at + 64] {
            *b ^= 0xa5;
        }
        std::fs::write(&p, &bytes).expect("corrupt");
        let ds = open(&p);
        let big = ds.variable("big").expect("big").clone();
        let fv = &big.pieces()[0].data;
        // how many chunks of a block a check decodes
        let decodes = |v: &Variable, start: &[u64], count: &[u64]| {
            check_decodes(&Direct, &v.pieces()[0].data, v.dtype, start, count).map(|n| n.expect("chunked"))
        };
        verify_region(&big, &[0, 0], &[32, 128]).expect("first chunk decodes");
        assert_eq!(
            decodes(&big, &[0, 0], &[32, 128]).expect("known"),
            0,
            "decoded once: known"
        );
        assert_eq!(decodes(&big, &[5, 3], &[2, 2]).expect("inside chunk 0"), 0);
        let bad = verify_region(&big, &[0, 0], &[64, 128]).expect_err("second chunk is corrupt");
        assert!(matches!(bad, ReadError::Codec { .. }), "{bad}");
        let bad = check_decodes(&Direct, fv, big.dtype, &[0, 0], &[64, 128]).expect_err("still corrupt");
        assert!(matches!(bad, ReadError::Codec { .. }), "{bad}");
        // a read through the Zarr path (the served chunk is the stored chunk) notes it too
        let other = dir.path().join("b.nc");
        write_nc4(&other, 3.0);
        let ds2 = open(&other);
        let big2 = ds2.variable("big").expect("big").clone();
        read_chunk(&big2, &[1, 0]).expect("read");
        assert_eq!(decodes(&big2, &[40, 0], &[1, 1]).expect("known"), 0);
        // a chunk never read before is decoded by the check, then known
        assert_eq!(decodes(&big2, &[0, 0], &[64, 128]).expect("decodes"), 1);
        assert_eq!(decodes(&big2, &[0, 0], &[64, 128]).expect("known"), 0);
        // a coordinate held in memory is not for this check: the caller reads it
        let x = ds2.variable("x").expect("x");
        assert_eq!(
            check_decodes(&Direct, &x.pieces()[0].data, x.dtype, &[0], &[8]).expect("x"),
            None
        );
        // changed since: refused as a read is, though its chunks are known
        later();
        set_mtime(&other, SystemTime::now());
        let e = verify_region(&big2, &[32, 0], &[32, 128]).expect_err("changed file");
        assert!(matches!(e, ReadError::Bytes(ByteError::Changed { .. })), "{e}");
    }

    /// A computed variable (here: another variable times a factor) goes through the same
    /// pipeline as a stored one: regions as typed blocks, served chunks padded with fill at
    /// the edges, source checks delegated to what it reads.
    #[derive(Debug)]
    struct Scaled {
        src: Arc<Variable>,
        by: f32,
    }

    impl Derive for Scaled {
        fn read(&self, start: &[u64], count: &[u64]) -> Result<Block, ReadError> {
            let v: Vec<f32> = read_region(&self.src, start, count)?
                .values()
                .map_err(|e| ReadError::Block(e.to_string()))?;
            let scaled: Vec<f32> = v.iter().map(|x| x * self.by).collect();
            Block::from_values(count.to_vec(), &scaled).map_err(|e| ReadError::Block(e.to_string()))
        }

        fn check_sources(&self, start: &[u64], count: &[u64]) -> Result<(), ReadError> {
            check_region_sources(&self.src, start, count)
        }

        fn estimate_bytes(&self, start: &[u64], count: &[u64]) -> u64 {
            estimate_region_bytes(&self.src, start, count)
        }

        fn describe(&self) -> String {
            format!("{} * {}", describe(&self.src), self.by)
        }
    }

    /// The estimate of a region is the stored sizes of the chunks it touches, from the
    /// index; a computed variable's is what it reads; inlined coordinates read nothing.
    #[test]
    fn estimates_source_bytes_from_the_chunk_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.nc");
        write_nc4(&p, 1.0);
        let ds = open(&p);
        let big = ds.variable("big").expect("big").clone();
        let Layout::Chunked { locs, .. } = &big.pieces()[0].data.layout else {
            panic!("big is chunked");
        };
        let (a, b) = (locs[0].size, locs[1].size);
        assert!(a > 0 && b > 0);
        assert_eq!(estimate_region_bytes(&big, &[0, 0], &[64, 128]), a + b);
        assert_eq!(estimate_region_bytes(&big, &[3, 5], &[10, 1]), a);
        assert_eq!(estimate_region_bytes(&big, &[31, 0], &[2, 1]), a + b);
        assert_eq!(estimate_chunk_bytes(&big, &[1, 0]).expect("chunk"), b);
        assert!(!is_computed(&big), "served chunk = stored chunk");
        assert_eq!(
            estimate_region_bytes(ds.variable("x").expect("x"), &[0], &[128]),
            0
        );
        let twice = Variable {
            chunks: vec![48, 128],
            values: Values::Derived(Arc::new(Scaled {
                src: big.clone(),
                by: 2.0,
            })),
            ..(*big).clone()
        };
        assert!(is_computed(&twice));
        assert_eq!(estimate_chunk_bytes(&twice, &[0, 0]).expect("chunk"), a + b);
        assert_eq!(estimate_chunk_bytes(&twice, &[1, 0]).expect("chunk"), b);
        // rechunked stored variable: computed, and estimated like any
        let rechunked = Variable {
            chunks: vec![16, 128],
            ..(*big).clone()
        };
        assert!(is_computed(&rechunked));
        assert_eq!(estimate_chunk_bytes(&rechunked, &[3, 0]).expect("chunk"), b);
        assert_ne!(describe(&twice), describe(&big));
        assert_ne!(describe(&rechunked), describe(&big));
    }

    /// A netCDF-4 file of the layouts [`read_region_into`] handles differently: [shuffle,
    /// deflate] chunks stored little- and big-endian, a variable with a chunk never written
    /// (read as its fill value), an unshuffled deflated one and a small inlined coordinate.
    fn write_orders(path: &Path) {
        let mut f = netcdf::create(path).expect("create");
        f.add_dimension("y", 64).expect("dim");
        f.add_dimension("x", 128).expect("dim");
        let vals: Vec<f32> = (0..64 * 128).map(|i| i as f32 * 0.25 - 100.0).collect();
        for (name, endian, shuffle) in [
            ("le", netcdf::Endianness::Little, true),
            ("be", netcdf::Endianness::Big, true),
            ("plain", netcdf::Endianness::Little, false),
        ] {
            let mut v = f.add_variable::<f32>(name, &["y", "x"]).expect("var");
            v.set_endianness(endian).expect("endianness");
            v.set_compression(4, shuffle).expect("deflate");
            v.set_chunking(&[32, 128]).expect("chunking");
            v.put_values(&vals, ..).expect("put");
        }
        let mut v = f.add_variable::<f64>("partial", &["y", "x"]).expect("var");
        v.set_compression(4, true).expect("deflate");
        v.set_chunking(&[32, 64]).expect("chunking");
        v.set_fill_value(-5.0f64).expect("fill");
        let top: Vec<f64> = (0..32 * 64).map(f64::from).collect();
        v.put_values(&top, (0..32, 64..128)).expect("put");
        let mut x = f.add_variable::<f64>("x", &["x"]).expect("var");
        let xs: Vec<f64> = (0..128).map(|i| f64::from(i) * 0.5).collect();
        x.put_values(&xs, ..).expect("put");
    }

    /// Regions read straight into a buffer, little- or big-endian, are exactly the regions
    /// `read_region` answers (swapped for big-endian), for every layout, inside a scan or
    /// not, whole chunks or parts of them; every byte of the buffer is written (it starts
    /// as garbage), never-written chunks read as the fill value; a buffer of another size
    /// or a region outside the variable is an error.
    #[test]
    fn regions_are_read_into_place_in_either_byte_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("orders.nc");
        write_orders(&p);
        let ds = open(&p);
        let check = |v: &Variable, start: &[u64], count: &[u64]| {
            let want = read_region(v, start, count).expect("region");
            let want = want.bytes().expect("numbers").to_vec();
            for order in [Endian::Little, Endian::Big] {
                let mut w = want.clone();
                if order == Endian::Big {
                    crate::chunk::grid::byteswap(&mut w, v.dtype.size());
                }
                let mut got = vec![0xab; want.len()];
                read_region_into(v, start, count, &mut got, order).expect("into");
                assert!(got == w, "{} {start:?} {count:?} {order:?}", v.name);
                let mut got = vec![0xcd; want.len()];
                crate::chunk::cache::scanning(|| read_region_into(v, start, count, &mut got, order))
                    .expect("into, scanning");
                assert!(got == w, "{} {start:?} {count:?} {order:?} scanning", v.name);
            }
            want
        };
        for name in ["le", "be", "plain", "partial"] {
            let v = ds.variable(name).expect("variable");
            let whole = check(v, &[0, 0], &[64, 128]);
            for (start, count) in [
                ([5, 3], [40, 100]),
                ([31, 0], [2, 128]),
                ([40, 7], [1, 1]),
                ([0, 64], [64, 64]),
            ] {
                check(v, &start, &count);
            }
            if name == "le" {
                assert_eq!(&whole[4 * 130..4 * 131], &(130.0f32 * 0.25 - 100.0).to_le_bytes());
            }
            if name == "partial" {
                // rows 32.. and columns ..64 were never written: the fill value
                assert_eq!(&whole[..8], &(-5.0f64).to_le_bytes());
                assert_eq!(&whole[8 * 64..8 * 65], &0.0f64.to_le_bytes());
                assert_eq!(
                    &whole[8 * 32 * 128 + 8 * 64..8 * (32 * 128 + 65)],
                    &(-5.0f64).to_le_bytes()
                );
            }
        }
        let x = ds.variable("x").expect("x");
        check(x, &[0], &[128]);
        check(x, &[7], &[3]);
        // computed variables: rechunked (stored chunks shared by served ones) and derived
        let le = ds.variable("le").expect("le").clone();
        let rechunked = Variable {
            chunks: vec![16, 128],
            ..(*le).clone()
        };
        let twice = Variable {
            values: Values::Derived(Arc::new(Scaled {
                src: le.clone(),
                by: 2.0,
            })),
            ..(*le).clone()
        };
        for v in [&rechunked, &twice] {
            check(v, &[0, 0], &[64, 128]);
            check(v, &[9, 1], &[20, 50]);
        }
        let mut short = vec![0u8; 15];
        let e = read_region_into(&le, &[0, 0], &[2, 2], &mut short, Endian::Little).expect_err("size");
        assert!(matches!(e, ReadError::Block(_)), "{e}");
        let mut buf = vec![0u8; 16];
        let e = read_region_into(&le, &[63, 0], &[2, 2], &mut buf, Endian::Big).expect_err("outside");
        assert!(matches!(e, ReadError::OutOfRange { .. }), "{e}");
    }

    #[test]
    fn derived_variables_read_through_the_pipeline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.nc");
        write_nc4(&p, 1.0);
        let ds = open(&p);
        let big = ds.variable("big").expect("big").clone();
        let twice = Variable {
            name: "twice".into(),
            path: "twice".into(),
            // served in chunks of 48 rows: the second chunk runs past the end (64 rows)
            chunks: vec![48, 128],
            values: Values::Derived(Arc::new(Scaled {
                src: big.clone(),
                by: 2.0,
            })),
            ..(*big).clone()
        };
        let block = read_region(&twice, &[1, 2], &[2, 3]).expect("region");
        assert_eq!(block.shape(), &[2, 3]);
        let want: Vec<f32> = [130.0f32, 131.0, 132.0, 258.0, 259.0, 260.0]
            .iter()
            .map(|x| x * 2.0)
            .collect();
        assert_eq!(block.values::<f32>().expect("f32"), want);
        // an edge chunk: 16 computed rows, then fill
        let edge = read_chunk(&twice, &[1, 0]).expect("edge chunk");
        assert_eq!(edge.len(), 48 * 128 * 4);
        assert_eq!(&edge[..4], &(48.0f32 * 128.0 * 2.0).to_le_bytes());
        assert_eq!(&edge[16 * 128 * 4..16 * 128 * 4 + 4], &twice.fill[..4]);
        assert!(
            raw_chunk(&twice, &[0, 0]).expect("raw").is_none(),
            "computed chunks never pass through"
        );
        check_chunk_sources(&twice, &[0, 0]).expect("sources unchanged");
        assert!(!crate::zarr::encoding::choose(&twice).passthrough);
        // out of the variable: an error, not a panic
        assert!(matches!(
            read_region(&twice, &[63, 0], &[2, 1]),
            Err(ReadError::OutOfRange { .. })
        ));
        // its input changed: the derived variable says so too
        later();
        set_mtime(&p, SystemTime::now());
        assert!(matches!(
            read_chunk(&twice, &[0, 0]),
            Err(ReadError::Bytes(ByteError::Changed { .. }))
        ));
        assert!(check_chunk_sources(&twice, &[0, 0]).is_err());
    }
}
