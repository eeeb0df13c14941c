//! Chunk references: a dataset described as Zarr v2 whose chunks are byte ranges of the
//! source files, in the kerchunk/fsspec reference format (JSON v1).
//!
//! The same references back the `/kerchunk` route (chunks served as stored, no decode) and
//! the `cloudify index` command (files usable by fsspec's `ReferenceFileSystem`).

pub mod parquet;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use base64::Engine as _;
use serde_json::Value;

use crate::attrs::write_json_str;
use crate::chunk::grid::{grid_shape, linear, numel};
use crate::codec::{encode, numcodecs, vlen_utf8};
use crate::dataset::{Dataset, Piece, Values, Variable};
use crate::dtype::{DType, Endian, Scalar, fill_json};
use crate::pipeline::read_block;
use crate::source::{ChunkRef, Filter, Layout, MemValues, Stored};
use crate::zarr::meta::{ArrayV2, json_value};
use crate::zarr::v2_attrs;

/// Variables whose stored layout cannot be referenced are inlined up to this size.
const INLINE_LIMIT: u64 = 4 << 20;
/// Target size of the virtual chunks cut out of unchunked (contiguous) variables.
const RAW_CHUNK_TARGET: u64 = 16 << 20;

/// How much data a reference set may carry itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Inline {
    /// What the `/kerchunk` route and fsspec want: variables the index holds in memory
    /// (coordinates, bounds, up to 16 KiB), variables whose stored layout cannot be referenced
    /// (up to 4 MiB) and chunks written with a filter skipped are stored inline.
    #[default]
    AsNeeded,
    /// kerchunk's `inline_threshold`, per variable: a variable of at most this many bytes is
    /// stored inline, every other one only as byte ranges of its files (or left out, with the
    /// reason). `Threshold(0)` writes no inline data at all, which VirtualiZarr needs: it
    /// refuses inlined chunks.
    Threshold(u64),
}

/// One reference.
#[derive(Clone, Debug, PartialEq)]
pub enum RefValue {
    /// A metadata document (JSON text).
    Json(String),
    /// Bytes `[offset, offset+size)` of `files[file]`.
    Range {
        /// Index into [`Refs::files`].
        file: usize,
        /// Byte offset of the first byte in that file.
        offset: u64,
        /// Number of bytes.
        size: u64,
    },
    /// Bytes held in the reference set itself.
    Inline(Vec<u8>),
    /// All of `files[file]` (a Zarr chunk file): `[url]` in kerchunk's spelling.
    File {
        /// Index into [`Refs::files`].
        file: usize,
    },
}

/// The references of a dataset.
#[derive(Debug, Default)]
pub struct Refs {
    /// Files the references point into, as written in the reference set (local paths or object
    /// URLs); `RefValue`s name them by index.
    pub files: Vec<PathBuf>,
    /// The sources behind `files` (same order): how `/kerchunk` reads a range, locally or
    /// from an object store.
    pub sources: Vec<std::sync::Arc<crate::source::SourceFile>>,
    /// The references by Zarr key (`.zgroup`, `tas/.zarray`, `tas/0.0.0`, ...), sorted by key.
    pub entries: BTreeMap<String, RefValue>,
    /// Variables left out, with the reason.
    pub skipped: Vec<(String, String)>,
}

fn dtype_str(dt: DType, endian: Endian) -> String {
    let s = dt.zarr_v2();
    if endian == Endian::Big && dt.size() > 1 && !matches!(dt, DType::Bytes(_)) {
        s.replacen('<', ">", 1)
    } else {
        s.clone()
    }
}

/// `.zarray` of a referenced variable (the shared writer, `zarr::meta`).
fn zarray(v: &Variable, chunks: &[u64], dtype: &str, compressor: Value, filters: Value) -> ArrayV2 {
    ArrayV2::of(v, chunks, dtype.to_string(), compressor, filters)
}

fn chunk_key(path: &str, idx: &[u64]) -> String {
    if idx.is_empty() {
        return format!("{path}/0");
    }
    let parts: Vec<String> = idx.iter().map(u64::to_string).collect();
    format!("{path}/{}", parts.join("."))
}

/// Iterates all indices of a grid in row-major order.
fn for_each_index(grid: &[u64], mut f: impl FnMut(&[u64]) -> Result<(), String>) -> Result<(), String> {
    let n = numel(grid).ok_or("grid too large")?;
    let mut idx = vec![0u64; grid.len()];
    for _ in 0..n {
        f(&idx)?;
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < grid[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(())
}

fn piece_at(v: &Variable, global: u64) -> Option<(&Piece, u64)> {
    match v.concat_axis() {
        None => v.pieces().first().map(|p| (p, global)),
        Some(ax) => v
            .pieces()
            .iter()
            .find(|p| p.start <= global && global < p.start + p.data.shape[ax])
            .map(|p| (p, global - p.start)),
    }
}

struct Ctx<'a> {
    refs: &'a mut Refs,
    file_ids: BTreeMap<PathBuf, usize>,
    inline: Inline,
}

impl Ctx<'_> {
    fn file(&mut self, f: &std::sync::Arc<crate::source::SourceFile>) -> usize {
        if let Some(i) = self.file_ids.get(&f.path) {
            return *i;
        }
        let i = self.refs.files.len();
        self.refs.files.push(f.path.clone());
        self.refs.sources.push(f.clone());
        self.file_ids.insert(f.path.clone(), i);
        i
    }

    /// A local file named by a reference source (kerchunk references, Zarr chunk files).
    fn local(&mut self, path: &std::path::Path) -> usize {
        if let Some(i) = self.file_ids.get(path) {
            return *i;
        }
        let f = std::sync::Arc::new(crate::source::SourceFile::local(path.to_path_buf(), 0, 0));
        self.file(&f)
    }
}

/// References for a chunked variable whose stored chunks tile the served grid.
fn chunked(v: &Variable, ctx: &mut Ctx) -> Result<bool, String> {
    let Some(first) = v.pieces().first() else {
        return Ok(false);
    };
    let (chunk_shape, filters, endian) = match first.data.layout.chunking() {
        Some((c, f)) => (c.clone(), f.to_vec(), first.data.endian),
        None => return Ok(false),
    };
    // Referenced chunks keep the pipeline exactly as their source declared it.
    let declared = |s: &Layout| match s {
        Layout::Listed { table, .. } => Some((table.compressor.clone(), table.numcodecs_filters.clone())),
        _ => None,
    };
    let declared0 = declared(&first.data.layout);
    if declared0.as_ref().is_some_and(|(c, _)| c.is_empty()) {
        // a Zarr v3 pipeline without numcodecs equivalents (transpose, bitround, ...)
        return Err("its stored codecs have no numcodecs (Zarr v2) equivalent; read it through /zarr".into());
    }
    if chunk_shape != v.chunks || matches!(v.dtype, DType::Str) {
        return Ok(false);
    }
    let same = v.pieces().iter().all(|p| match p.data.layout.chunking() {
        Some((c, f)) => {
            *c == chunk_shape
                && f == filters.as_slice()
                && p.data.endian == endian
                && declared(&p.data.layout) == declared0
        }
        None => matches!(p.data.layout, Layout::Unallocated),
    });
    let aligned = match v.concat_axis() {
        Some(ax) => v.pieces().iter().all(|p| p.start % chunk_shape[ax] == 0),
        None => true,
    };
    let Some((compressor, filt, enc)) = (match declared0 {
        Some((c, f)) => Some((json_value(&c), json_value(&f), None)),
        None => numcodecs::declare(&filters),
    }) else {
        return Ok(false);
    };
    if !same || !aligned {
        return Ok(false);
    }
    let dt = dtype_str(v.dtype, endian);
    let mut za = zarray(v, &chunk_shape, &dt, compressor, filt);
    // Chunks a Zarr store never wrote read as its fill_value, which need not be the CF
    // _FillValue the v2 fill_value carries (v3 keeps them apart). A NaN fill can still be
    // declared (masking NaN changes nothing); anything else cannot.
    let missing_fill = v.pieces().iter().find_map(|p| match &p.data.layout {
        Layout::Listed { table, .. } if table.chunks.contains(&ChunkRef::Missing) => table.fill.clone(),
        _ => None,
    });
    if let Some(f) = missing_fill
        && v.fill_attr.is_none()
        && f.iter().any(|b| *b != 0)
    {
        let f32_nan = |b: &[u8]| b.try_into().is_ok_and(|b| f32::from_le_bytes(b).is_nan());
        let f64_nan = |b: &[u8]| b.try_into().is_ok_and(|b| f64::from_le_bytes(b).is_nan());
        let declared = match v.dtype {
            DType::F32 if f32_nan(&f) => Some(Value::from("NaN")),
            DType::F64 if f64_nan(&f) => Some(Value::from("NaN")),
            // times are not masked by xarray: NaT (or any tick) can be declared as is
            DType::DateTime64(_) | DType::TimeDelta64(_) => f
                .as_slice()
                .try_into()
                .ok()
                .map(|b| Value::from(i64::from_le_bytes(b))),
            _ => None,
        };
        let Some(declared) = declared else {
            return Err("its missing chunks read as a Zarr fill_value that is not its _FillValue, which Zarr v2 metadata cannot declare; read it through /zarr".into());
        };
        if za.fill_value.is_null() {
            za.fill_value = declared;
        }
    }
    if let Some(f) = gap_fill(v)
        && za.fill_value.is_null()
    {
        za.fill_value = f;
    }
    ctx.refs
        .entries
        .insert(format!("{}/.zarray", v.path), RefValue::Json(za.to_json()));
    let grid = grid_shape(&v.shape, &v.chunks);
    for_each_index(&grid, |idx| {
        let mut start: Vec<u64> = idx.iter().zip(&v.chunks).map(|(i, c)| i * c).collect();
        let ax_global = v.concat_axis().map_or(0, |ax| start[ax]);
        let Some((piece, local)) = piece_at(v, ax_global) else {
            return Ok(());
        };
        if let Some(ax) = v.concat_axis() {
            start[ax] = local;
        }
        let sgrid = grid_shape(&piece.data.shape, &chunk_shape);
        let cidx: Vec<u64> = start.iter().zip(&chunk_shape).map(|(s, c)| s / c).collect();
        let locs = match &piece.data.layout {
            Layout::Chunked { locs, .. } => locs,
            Layout::Listed { table, .. } => {
                let mut file = |f: &u32| match table.remote.get(*f as usize).and_then(Option::as_ref) {
                    Some(obj) => ctx.file(obj),
                    None => ctx.local(&table.files.get(*f as usize).cloned().unwrap_or_default()),
                };
                let value = match table.chunks.get(linear(&cidx, &sgrid) as usize) {
                    Some(ChunkRef::Range {
                        file: f,
                        offset,
                        size,
                    }) => RefValue::Range {
                        file: file(f),
                        offset: *offset,
                        size: *size,
                    },
                    Some(ChunkRef::Whole { file: f }) => RefValue::File { file: file(f) },
                    Some(ChunkRef::Inline(b)) => RefValue::Inline(b.clone()),
                    None | Some(ChunkRef::Missing) => return Ok(()),
                };
                ctx.refs.entries.insert(chunk_key(&v.path, idx), value);
                return Ok(());
            }
            _ => return Ok(()),
        };
        let Some(loc) = locs.get(linear(&cidx, &sgrid) as usize).filter(|l| l.size > 0) else {
            return Ok(());
        };
        let value = if loc.filter_mask == 0 {
            RefValue::Range {
                file: ctx.file(&piece.data.file),
                offset: loc.offset,
                size: loc.size,
            }
        } else {
            // A chunk written with a filter skipped: re-encode it to the declared pipeline.
            let (s0, count) = crate::pipeline::chunk_region(v, idx).map_err(|e| e.to_string())?;
            let mut raw = read_block(v, &s0, &count, &v.chunks).map_err(|e| e.to_string())?;
            if endian == Endian::Big {
                crate::chunk::grid::byteswap(&mut raw, v.dtype.size());
            }
            let data = match &enc {
                None => raw,
                Some(e) => encode(&raw, e).map_err(|e| e.to_string())?,
            };
            if let Inline::Threshold(limit) = ctx.inline
                && data.len() as u64 > limit
            {
                return Err(format!(
                    "chunk {idx:?} in {} was written with a filter skipped, so it can only be referenced as inline data ({} bytes, above the inline threshold of {limit})",
                    piece.data.file.path.display(),
                    data.len()
                ));
            }
            RefValue::Inline(data)
        };
        ctx.refs.entries.insert(chunk_key(&v.path, idx), value);
        Ok(())
    })?;
    Ok(true)
}

/// The Zarr `fill_value` to declare for a variable of netCDF/HDF5 files with storage never
/// written (unallocated chunks, or a file that never wrote it) and no `_FillValue`: netCDF
/// reads such values as its default fill, a Zarr reader of `fill_value: null` as 0. `None`:
/// nothing to declare (no gaps, a `_FillValue` already declared, or a zero default).
fn gap_fill(v: &Variable) -> Option<Value> {
    let gaps = v.pieces().iter().any(|p| match &p.data.layout {
        Layout::Chunked { locs, .. } => locs.iter().any(|l| l.size == 0),
        Layout::Unallocated => true,
        _ => false,
    });
    if !gaps || v.fill_attr.is_some() || v.fill.iter().all(|b| *b == 0) {
        return None;
    }
    Scalar::from_le_bytes(&v.fill, v.dtype).map(|s| fill_json(s, v.dtype))
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// References for uncompressed variables (HDF5 contiguous, netCDF-3 fixed and record
/// variables): virtual chunks along the first dimension, each one contiguous byte run.
fn contiguous(v: &Variable, ctx: &mut Ctx) -> bool {
    if matches!(v.dtype, DType::Str) || v.concat_axis().is_some_and(|a| a != 0) {
        return false;
    }
    if v.shape.is_empty() {
        return scalar(v, ctx);
    }
    let Some(endian) = v.pieces().first().map(|p| p.data.endian) else {
        return false;
    };
    let mut any_records = false;
    let mut g = 0u64;
    for p in v.pieces() {
        match &p.data.layout {
            Layout::Contiguous { .. } => g = gcd(g, p.data.shape[0]),
            Layout::Records { .. } => any_records = true,
            Layout::Unallocated => {}
            _ => return false,
        }
        if p.data.endian != endian {
            return false;
        }
    }
    let row_elems: u64 = v.shape[1..].iter().product();
    let row_bytes = row_elems * v.dtype.size() as u64;
    let c0 = if any_records || g == 0 {
        1
    } else {
        let max_rows = (RAW_CHUNK_TARGET / row_bytes.max(1)).max(1);
        (1..=g.min(max_rows))
            .rev()
            .find(|k| g.is_multiple_of(*k))
            .unwrap_or(1)
    };
    let mut chunks = v.shape.clone();
    chunks[0] = c0;
    let dt = dtype_str(v.dtype, endian);
    let mut za = zarray(v, &chunks, &dt, Value::Null, Value::Null);
    if let Some(f) = gap_fill(v)
        && za.fill_value.is_null()
    {
        za.fill_value = f;
    }
    ctx.refs
        .entries
        .insert(format!("{}/.zarray", v.path), RefValue::Json(za.to_json()));
    let n0 = v.shape[0].div_ceil(c0);
    for i in 0..n0 {
        let Some((piece, local)) = piece_at(v, i * c0) else {
            continue;
        };
        let (offset, size) = match &piece.data.layout {
            Layout::Contiguous { offset } => (offset + local * row_bytes, c0 * row_bytes),
            Layout::Records { begin, recsize } => (begin + local * recsize, row_bytes),
            _ => continue,
        };
        let mut idx = vec![0u64; v.shape.len()];
        idx[0] = i;
        let file = ctx.file(&piece.data.file);
        ctx.refs
            .entries
            .insert(chunk_key(&v.path, &idx), RefValue::Range { file, offset, size });
    }
    true
}

/// A 0-d variable stored as one contiguous element: one chunk, key `0`.
fn scalar(v: &Variable, ctx: &mut Ctx) -> bool {
    let [piece] = v.pieces() else {
        return false;
    };
    let Layout::Contiguous { offset } = piece.data.layout else {
        return false;
    };
    let dt = dtype_str(v.dtype, piece.data.endian);
    ctx.refs.entries.insert(
        format!("{}/.zarray", v.path),
        RefValue::Json(zarray(v, &[], &dt, Value::Null, Value::Null).to_json()),
    );
    let file = ctx.file(&piece.data.file);
    ctx.refs.entries.insert(
        chunk_key(&v.path, &[]),
        RefValue::Range {
            file,
            offset,
            size: v.dtype.size() as u64,
        },
    );
    true
}

/// Bytes of a variable's values (strings counted at 16 bytes each).
fn value_bytes(v: &Variable) -> u64 {
    v.shape
        .iter()
        .product::<u64>()
        .saturating_mul(v.dtype.size().max(if v.dtype == DType::Str { 16 } else { 1 }) as u64)
}

/// Small variables that cannot be referenced are stored inline as one chunk, up to `limit`
/// bytes.
fn inline(v: &Variable, ctx: &mut Ctx, limit: u64) -> Result<bool, String> {
    if value_bytes(v) > limit {
        return Ok(false);
    }
    // Inlining reads the values: for a file on tape that would be a recall at start-up (and
    // a wait of every catalog request): left out instead, naming why.
    if v.on_tape() {
        return Err("its stored layout cannot be referenced and its files are on tape (inlining would recall them); read it through /zarr".into());
    }
    let chunks: Vec<u64> = v.shape.iter().map(|s| (*s).max(1)).collect();
    let zero = vec![0u64; v.shape.len()];
    let data = if v.dtype == DType::Str {
        let mut all = Vec::new();
        for p in v.pieces() {
            if let Layout::Memory(m) = &p.data.layout
                && let MemValues::Strings(s) = m.as_ref()
            {
                all.extend(s.iter().cloned());
            }
        }
        if v.pieces().len() > 1 && v.concat_axis().is_some_and(|a| a != 0) {
            return Ok(false); // interleaving strings across files along an inner axis: not needed so far
        }
        ctx.refs.entries.insert(
            format!("{}/.zarray", v.path),
            RefValue::Json(
                zarray(
                    v,
                    &chunks,
                    "|O",
                    Value::Null,
                    serde_json::json!([{"id": crate::codec::vlen_utf8::ID}]),
                )
                .to_json(),
            ),
        );
        vlen_utf8(&all)
    } else {
        ctx.refs.entries.insert(
            format!("{}/.zarray", v.path),
            RefValue::Json(zarray(v, &chunks, &v.dtype.zarr_v2(), Value::Null, Value::Null).to_json()),
        );
        if v.shape.contains(&0) {
            // No values: no chunk to write (below), so nothing to read. Reading would
            // allocate the one-element-padded chunk grid, e.g. [1, 2^40] for a declared
            // shape [0, 2^40] (a fuzzed file did that at start-up).
            Vec::new()
        } else {
            read_block(v, &zero, &v.shape, &chunks).map_err(|e| e.to_string())?
        }
    };
    if v.shape.iter().all(|s| *s > 0) {
        ctx.refs
            .entries
            .insert(chunk_key(&v.path, &zero), RefValue::Inline(data));
    }
    Ok(true)
}

/// The variable as its files store it: pieces the index read into memory point at their
/// stored bytes again, and the chunk grid is the stored one. `Err`: some piece has no stored
/// bytes that equal its values, so only inline data can express it.
fn as_stored(v: &Variable) -> Result<std::borrow::Cow<'_, Variable>, String> {
    if !v
        .pieces()
        .iter()
        .any(|p| matches!(p.data.layout, Layout::Memory(_)))
    {
        return Ok(std::borrow::Cow::Borrowed(v));
    }
    let mut w = v.clone();
    let Values::Stored { pieces, .. } = &mut w.values else {
        return Err("its values are computed on request, not stored in any file".into());
    };
    for p in pieces.iter_mut() {
        if !matches!(p.data.layout, Layout::Memory(_)) {
            continue;
        }
        match p.data.stored.as_deref() {
            Some(Stored::At { endian, layout }) => {
                p.data.layout = layout.clone();
                p.data.endian = *endian;
            }
            Some(Stored::Rewritten(why)) => return Err(why.clone()),
            None => {
                return Err(format!(
                    "its values in {} are not stored as plain bytes (strings, HDF5 compact layout, or data only libnetcdf decodes)",
                    p.data.file.path.display()
                ));
            }
        }
    }
    if let Some((c, _)) = w.pieces().first().and_then(|p| p.data.layout.chunking()) {
        w.chunks = c.clone();
    }
    Ok(std::borrow::Cow::Owned(w))
}

/// Why [`chunked`] and [`contiguous`] could not reference a variable (in its stored form).
fn unreferenceable(v: &Variable) -> String {
    if v.dtype == DType::Str {
        return "variable-length strings have no byte-range form (Zarr v2 keeps them as vlen-utf8 chunks)"
            .into();
    }
    let chunkings: Vec<Option<(&Vec<u64>, &[Filter])>> = v
        .pieces()
        .iter()
        .filter(|p| !matches!(p.data.layout, Layout::Unallocated))
        .map(|p| p.data.layout.chunking())
        .collect();
    let first = chunkings.first().copied().flatten();
    if let Some((c, f)) = first {
        if chunkings.iter().any(|x| x.map(|(c2, _)| c2) != Some(c)) {
            return "its files store it with different chunk shapes, which one Zarr chunk grid cannot express".into();
        }
        if chunkings.iter().any(|x| x.map(|(_, f2)| f2) != Some(f)) {
            return "its files store it with different filter pipelines, which one Zarr array cannot declare"
                .into();
        }
        if numcodecs::declare(f).is_none() {
            return format!("its HDF5 filters {f:?} have no numcodecs equivalent");
        }
        if let Some(ax) = v.concat_axis() {
            let lens: Vec<u64> = v.pieces().iter().map(|p| p.data.shape[ax]).collect();
            return format!(
                "its files hold {lens:?} steps along '{}' in chunks of {}, so the chunks do not tile the concatenated axis",
                v.dims.get(ax).map_or("?", String::as_str),
                c[ax]
            );
        }
    }
    "its stored layout cannot be expressed as byte-range references".into()
}

/// References for one variable under `ctx.inline`. `Ok(false)`: left out (too large to
/// inline and not referenceable).
fn variable(v: &Variable, ctx: &mut Ctx) -> Result<bool, String> {
    match ctx.inline {
        Inline::AsNeeded => chunked(v, ctx).map(|ok| ok || contiguous(v, ctx)).and_then(|ok| {
            if ok {
                Ok(true)
            } else {
                inline(v, ctx, INLINE_LIMIT)
            }
        }),
        Inline::Threshold(limit) => {
            if value_bytes(v) <= limit && inline(v, ctx, limit)? {
                return Ok(true);
            }
            let w = as_stored(v)?;
            if chunked(&w, ctx)? || contiguous(&w, ctx) {
                return Ok(true);
            }
            Err(format!(
                "{} ({} bytes, above the inline threshold of {limit})",
                unreferenceable(&w),
                value_bytes(v)
            ))
        }
    }
}

/// Builds the references of a dataset, with inline data as the `/kerchunk` route serves it.
pub fn build(ds: &Dataset) -> Refs {
    build_with(ds, Inline::AsNeeded)
}

/// Builds the references of a dataset with the given inline policy.
pub fn build_with(ds: &Dataset, inline: Inline) -> Refs {
    let mut refs = Refs::default();
    let mut ctx = Ctx {
        refs: &mut refs,
        file_ids: BTreeMap::new(),
        inline,
    };
    for g in ds.root.walk() {
        let prefix = if g.path.is_empty() {
            String::new()
        } else {
            format!("{}/", g.path)
        };
        ctx.refs.entries.insert(
            format!("{prefix}.zgroup"),
            RefValue::Json("{\"zarr_format\": 2}".into()),
        );
        ctx.refs.entries.insert(
            format!("{prefix}.zattrs"),
            RefValue::Json(g.attrs.to_json(&[], &[])),
        );
        for v in &g.vars {
            // References point at source bytes; a computed variable (processing: BitRound,
            // derived) has none, and inlining its values would put processed data in the raw
            // asset: left out, as the DKRZ seed's raw `/kerchunk` asset leaves out what only
            // its processed asset has.
            if v.is_derived() {
                ctx.refs.skipped.push((
                    v.path.clone(),
                    "computed on request by the dataset's processing; served on /zarr only".into(),
                ));
                continue;
            }
            let done = variable(v, &mut ctx);
            if !matches!(done, Ok(true)) {
                // nothing half-written of a variable that is left out
                let prefix = format!("{}/", v.path);
                ctx.refs.entries.retain(|k, _| !k.starts_with(&prefix));
            }
            match done {
                Ok(true) => {
                    ctx.refs
                        .entries
                        .insert(format!("{}/.zattrs", v.path), RefValue::Json(v2_attrs(v)));
                }
                Ok(false) => ctx.refs.skipped.push((
                    v.path.clone(),
                    "stored layout cannot be expressed as byte-range references (filters or chunking differ across files) and the variable is too large to inline".into(),
                )),
                Err(e) => ctx.refs.skipped.push((v.path.clone(), e)),
            }
        }
    }
    refs
}

impl Refs {
    /// Declares every array's codecs the way kerchunk writes them: all in `filters`, in
    /// encode order, and `compressor: null`. The same pipeline for Zarr v2 readers, but
    /// VirtualiZarr (2.5) only parses this form: it unpacks a `compressor` object as if it
    /// were a list and fails. `cloudify index` writes references for such tools; the
    /// `/kerchunk` route keeps the compressor form, which every Zarr v2 reader knows.
    pub fn codecs_as_filters(&mut self) {
        for (k, v) in &mut self.entries {
            if !(k == ".zarray" || k.ends_with("/.zarray")) {
                continue;
            }
            let RefValue::Json(doc) = v else { continue };
            let Ok(serde_json::Value::Object(mut za)) = serde_json::from_str::<serde_json::Value>(doc) else {
                continue;
            };
            let compressor = za.insert("compressor".into(), serde_json::Value::Null);
            let Some(c @ serde_json::Value::Object(_)) = compressor else {
                continue;
            };
            let mut filters = match za.remove("filters") {
                Some(serde_json::Value::Array(f)) => f,
                _ => Vec::new(),
            };
            filters.push(c);
            za.insert("filters".into(), serde_json::Value::Array(filters));
            *doc = serde_json::Value::Object(za).to_string();
        }
    }

    /// Consolidated `.zmetadata` of the referenced store.
    pub fn zmetadata(&self) -> String {
        let mut s = String::from("{\"zarr_consolidated_format\": 1, \"metadata\": {");
        let mut first = true;
        for (k, v) in &self.entries {
            if let RefValue::Json(doc) = v {
                if !first {
                    s.push_str(", ");
                }
                first = false;
                write_json_str(&mut s, k);
                let _ = write!(s, ": {doc}");
            }
        }
        s.push_str("}}");
        s
    }

    /// The URL references name `files[file]` by: object sources keep their URL (fsspec
    /// opens s3://, gs://, ...), local files become `file://` URLs.
    pub fn url_of(&self, file: usize) -> Option<String> {
        self.files.get(file).map(|p| {
            let p = p.display().to_string();
            if p.contains("://") {
                p
            } else {
                format!("file://{p}")
            }
        })
    }

    /// kerchunk/fsspec reference JSON, version 1. Metadata documents are stored as JSON
    /// strings, byte ranges as `[url, offset, size]`, inline data as `base64:...`.
    pub fn to_json(&self) -> String {
        self.to_json_with(&[])
    }

    /// [`Refs::to_json`] with extra top-level members (`(name, JSON text)`), which fsspec
    /// ignores.
    pub fn to_json_with(&self, extra: &[(&str, String)]) -> String {
        let mut s = String::from("{\"version\": 1, \"refs\": {");
        let mut first = true;
        let mut push = |s: &mut String, k: &str, v: String| {
            if !first {
                s.push_str(",\n");
            }
            first = false;
            write_json_str(s, k);
            s.push_str(": ");
            s.push_str(&v);
        };
        push(&mut s, ".zmetadata", {
            let mut t = String::new();
            write_json_str(&mut t, &self.zmetadata());
            t
        });
        for (k, v) in &self.entries {
            let text = match v {
                RefValue::Json(doc) => {
                    let mut t = String::new();
                    write_json_str(&mut t, doc);
                    t
                }
                RefValue::Range { file, offset, size } => {
                    let mut t = String::from("[");
                    write_json_str(&mut t, &self.url_of(*file).unwrap_or_default());
                    let _ = write!(t, ", {offset}, {size}]");
                    t
                }
                RefValue::File { file } => {
                    let mut t = String::from("[");
                    write_json_str(&mut t, &self.url_of(*file).unwrap_or_default());
                    t.push(']');
                    t
                }
                RefValue::Inline(b) => {
                    let mut t = String::new();
                    let enc = base64::engine::general_purpose::STANDARD.encode(b);
                    write_json_str(&mut t, &format!("base64:{enc}"));
                    t
                }
            };
            push(&mut s, k, text);
        }
        s.push('}');
        for (k, v) in extra {
            s.push_str(", ");
            write_json_str(&mut s, k);
            s.push_str(": ");
            s.push_str(v);
        }
        s.push_str("}\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// One file of a series: `time` (unlimited, chunked by libnetcdf's default, larger than
    /// the file), a small contiguous `lat`, a scalar `height`, a zlib+shuffle `tas`, and a
    /// sparse chunked `sp` without `_FillValue` whose second chunk is never written.
    fn write(path: &Path, units: &str, t0: f64) {
        let mut f = netcdf::create(path).expect("create");
        f.add_unlimited_dimension("time").expect("dim");
        f.add_dimension("lat", 4).expect("dim");
        f.add_dimension("x", 4096).expect("dim");
        {
            let mut t = f.add_variable::<f64>("time", &["time"]).expect("var");
            t.put_attribute("units", units).expect("attr");
            t.put_attribute("calendar", "standard").expect("attr");
            t.put_values(&[t0, t0 + 1.0], 0..2).expect("put");
        }
        {
            let mut lat = f.add_variable::<f64>("lat", &["lat"]).expect("var");
            lat.put_values(&[1.0, 2.0, 3.0, 4.0], ..).expect("put");
        }
        {
            let mut h = f.add_variable::<f64>("height", &[]).expect("var");
            h.put_value(2.0, ..).expect("put");
        }
        {
            let mut v = f.add_variable::<f32>("tas", &["time", "lat"]).expect("var");
            v.set_compression(4, true).expect("deflate");
            v.set_chunking(&[1, 4]).expect("chunking");
            v.put_values(&[1f32, 2., 3., 4., 5., 6., 7., 8.], (0..2, 0..4))
                .expect("put");
        }
        {
            let mut v = f.add_variable::<i16>("sp", &["x"]).expect("var");
            v.set_chunking(&[2048]).expect("chunking");
            v.put_values(&vec![7i16; 2048], 0..2048).expect("put");
        }
    }

    fn open(files: &[&Path]) -> Dataset {
        let spec =
            cloudify_crds::DatasetSpec::new("t", files.iter().map(|p| p.display().to_string()).collect());
        crate::open::open_dataset(&spec).expect("open")
    }

    fn zarray(refs: &Refs, var: &str) -> serde_json::Value {
        match refs.entries.get(&format!("{var}/.zarray")) {
            Some(RefValue::Json(doc)) => serde_json::from_str(doc).expect("json"),
            other => panic!("{var}/.zarray: {other:?}"),
        }
    }

    #[test]
    fn threshold_zero_references_every_stored_chunk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.nc");
        write(&a, "days since 2000-01-01", 0.0);
        let ds = open(&[&a]);
        // as served: the small variables travel inline
        let served = build(&ds);
        assert!(matches!(served.entries.get("lat/0"), Some(RefValue::Inline(_))));
        let refs = build_with(&ds, Inline::Threshold(0));
        assert!(refs.skipped.is_empty(), "{:?}", refs.skipped);
        let inline: Vec<&String> = refs
            .entries
            .iter()
            .filter(|(_, v)| matches!(v, RefValue::Inline(_)))
            .map(|(k, _)| k)
            .collect();
        assert!(inline.is_empty(), "inline data in {inline:?}");
        assert!(matches!(
            refs.entries.get("lat/0"),
            Some(RefValue::Range { size: 32, .. })
        ));
        assert!(matches!(
            refs.entries.get("height/0"),
            Some(RefValue::Range { size: 8, .. })
        ));
        assert_eq!(zarray(&refs, "height")["shape"], serde_json::json!([]));
        assert!(matches!(refs.entries.get("time/0"), Some(RefValue::Range { .. })));
        // The unwritten chunk of `sp` reads as netCDF's default fill, not as Zarr's 0.
        assert_eq!(zarray(&refs, "sp")["fill_value"], serde_json::json!(-32767));
        assert!(refs.entries.contains_key("sp/0") && !refs.entries.contains_key("sp/1"));
        // a threshold above a variable's size inlines it
        let some = build_with(&ds, Inline::Threshold(32));
        assert!(matches!(some.entries.get("lat/0"), Some(RefValue::Inline(_))));
        assert!(matches!(some.entries.get("sp/0"), Some(RefValue::Range { .. })));
    }

    /// A variable with no values but a huge declared extent (a fuzzed file declared
    /// `[0, 2^40]`) is inlined as metadata only: its one-element-padded chunk grid is never
    /// allocated (that allocation failed and aborted the process at start-up).
    #[test]
    fn an_empty_variable_with_a_huge_extent_inlines_without_reading() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.nc");
        write(&a, "days since 2000-01-01", 0.0);
        let ds = open(&[&a]);
        let mut v = (**ds.variable("tas").expect("tas")).clone();
        v.shape = vec![0, 1 << 40];
        let mut refs = Refs::default();
        let mut ctx = Ctx {
            refs: &mut refs,
            file_ids: BTreeMap::new(),
            inline: Inline::Threshold(0),
        };
        assert_eq!(inline(&v, &mut ctx, 0), Ok(true));
        assert_eq!(
            zarray(&refs, "tas")["shape"],
            serde_json::json!([0u64, 1u64 << 40])
        );
        assert!(
            !refs
                .entries
                .keys()
                .any(|k| k.starts_with("tas/") && !k.ends_with(".zarray"))
        );
    }

    #[test]
    fn codecs_move_into_filters_as_kerchunk_writes_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.nc");
        write(&a, "days since 2000-01-01", 0.0);
        let mut refs = build_with(&open(&[&a]), Inline::Threshold(0));
        assert_eq!(zarray(&refs, "tas")["compressor"]["id"], "zlib");
        refs.codecs_as_filters();
        let za = zarray(&refs, "tas");
        assert_eq!(za["compressor"], serde_json::Value::Null);
        let ids: Vec<&str> = za["filters"]
            .as_array()
            .expect("filters")
            .iter()
            .map(|f| f["id"].as_str().expect("id"))
            .collect();
        assert_eq!(ids, ["shuffle", "zlib"]);
        assert_eq!(zarray(&refs, "lat")["filters"], serde_json::Value::Null);
    }

    #[test]
    fn what_only_inline_data_can_express_is_left_out_with_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a.nc"), dir.path().join("b.nc"));
        write(&a, "days since 2000-01-01", 0.0);
        // the second file counts from its own start, so its time values are rewritten
        write(&b, "days since 2000-01-03", 0.0);
        let ds = open(&[&a, &b]);
        let refs = build_with(&ds, Inline::Threshold(0));
        let why: BTreeMap<&str, &str> = refs
            .skipped
            .iter()
            .map(|(v, w)| (v.as_str(), w.as_str()))
            .collect();
        assert_eq!(why.keys().copied().collect::<Vec<_>>(), ["time"], "{why:?}");
        assert!(
            why["time"].contains("rebased")
                && why["time"].contains("b.nc")
                && why["time"].contains("2000-01-03"),
            "{}",
            why["time"]
        );
        assert!(!refs.entries.keys().any(|k| k.starts_with("time/")));
        // the rest is still referenced, across both files
        assert!(matches!(
            refs.entries.get("tas/3.0"),
            Some(RefValue::Range { .. })
        ));
        // With a threshold it fits under, the rebased coordinate is carried inline.
        let refs = build_with(&ds, Inline::Threshold(1024));
        assert!(refs.skipped.is_empty(), "{:?}", refs.skipped);
        assert!(matches!(refs.entries.get("time/0"), Some(RefValue::Inline(_))));
    }

    #[test]
    fn chunks_that_do_not_tile_the_concatenated_axis_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a.nc"), dir.path().join("b.nc"));
        write(&a, "days since 2000-01-01", 0.0);
        write(&b, "days since 2000-01-01", 2.0);
        let ds = open(&[&a, &b]);
        let refs = build_with(&ds, Inline::Threshold(0));
        // libnetcdf chunks an unlimited 1-d variable in more steps than a file holds
        let time = ds.by_path.get("time").expect("time");
        assert!(
            matches!(time.pieces()[0].data.stored.as_deref(), Some(Stored::At { layout: Layout::Chunked { chunk_shape, .. }, .. }) if chunk_shape[0] > 2),
            "{:?}",
            time.pieces()[0].data.stored
        );
        let why = &refs
            .skipped
            .iter()
            .find(|(v, _)| v == "time")
            .expect("time left out")
            .1;
        assert!(why.contains("[2, 2]") && why.contains("do not tile"), "{why}");
        assert_eq!(refs.skipped.len(), 1, "{:?}", refs.skipped);
        assert!(matches!(
            refs.entries.get("tas/2.0"),
            Some(RefValue::Range { .. })
        ));
    }
}
