//! Combining indexed files into one dataset, like `xarray.open_mfdataset(combine="by_coords",
//! data_vars="minimal", coords="minimal")`: files ordered by their concat coordinate,
//! variables with the concat dimension stacked, the others taken from the first file after
//! checking every file agrees.

use std::sync::Arc;

use super::cftime::TimeAxis;
use super::{Dataset, Group, Piece, Values, Variable};
use crate::attrs::AttrValue;
use crate::chunk::grid::{default_chunks, numel};
use crate::chunk::read::{Direct, read_whole};
use crate::dtype::{DType, Scalar};
use crate::source::{Layout, MemValues, SourceGroup, SourceIndex, SourceVar};

/// Chunk size we aim for when the source has no chunking of its own.
pub const TARGET_CHUNK_BYTES: u64 = 4 << 20;
/// Non-concatenated variables up to this size are compared value by value across files.
const COMPARE_LIMIT: u64 = 8 << 20;

/// Why files cannot be combined. Messages name the file and the variable.
#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    /// The files do not fit together (different dimensions, types, attributes or non-increasing
    /// coordinates); the message names the file and variable.
    #[error("{0}")]
    Mismatch(String),
    /// A coordinate's values, needed to check or order the files, could not be read.
    #[error("{0}")]
    Read(#[from] crate::chunk::read::ReadError),
}

fn mismatch(s: String) -> AggregateError {
    AggregateError::Mismatch(s)
}

fn find_group<'a>(g: &'a SourceGroup, path: &str) -> Option<&'a SourceGroup> {
    if g.path == path {
        return Some(g);
    }
    g.groups.iter().find_map(|s| find_group(s, path))
}

/// Reads a whole (small) variable of one file as little-endian bytes.
fn read_all(v: &SourceVar) -> Result<Vec<u8>, AggregateError> {
    Ok(read_whole(&Direct, &v.data, v.dtype, &storage_fill(v))?)
}

fn as_f64s(bytes: &[u8], dtype: DType) -> Vec<f64> {
    let e = dtype.size().max(1);
    bytes
        .chunks_exact(e)
        .filter_map(|b| Scalar::from_le_bytes(b, dtype).map(Scalar::as_f64))
        .collect()
}

/// Picks the concat dimension: the configured one, else the unlimited one, else `time`.
fn concat_dim(spec: &cloudify_crds::DatasetSpec, first: &SourceIndex) -> Option<String> {
    if let Some(d) = &spec.concat_dim {
        return Some(d.clone());
    }
    let dims = &first.root.dims;
    dims.iter()
        .find(|d| d.unlimited)
        .or_else(|| dims.iter().find(|d| d.name == "time"))
        .map(|d| d.name.clone())
}

/// Builds the dataset. `files` are the indexed sources in the order given.
pub fn build(
    spec: &cloudify_crds::DatasetSpec,
    mut files: Vec<SourceIndex>,
) -> Result<Dataset, AggregateError> {
    let Some(first) = files.first() else {
        return Err(mismatch("no source files".into()));
    };
    let cdim = if files.len() > 1 {
        Some(concat_dim(spec, first).ok_or_else(|| {
            mismatch(format!(
                "{}: cannot tell which dimension to concatenate along (no unlimited or 'time' dimension); set concatDim",
                first.file.path.display()
            ))
        })?)
    } else {
        None
    };
    if let Some(cd) = &cdim {
        order_files(&mut files, cd)?;
    }
    let root = build_group(&files, "", cdim.as_deref())?;
    let mut skipped = Vec::new();
    collect_skipped(&files[0].root, &mut skipped);
    let fingerprint = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        env!("CARGO_PKG_VERSION").hash(&mut h);
        spec.name.hash(&mut h);
        for f in &files {
            f.file.hash(&mut h);
        }
        h.finish()
    };
    let by_path = root
        .walk()
        .into_iter()
        .flat_map(|g| g.vars.iter())
        .map(|v| (v.path.clone(), v.clone()))
        .collect();
    Ok(Dataset {
        name: spec.name.clone(),
        spec: spec.clone(),
        root,
        files: files.iter().map(|f| f.file.clone()).collect(),
        remote: files
            .iter()
            .any(|f| f.file.remote.is_some() || crate::source::refs_remote(&f.root)),
        fingerprint,
        skipped,
        by_path,
    })
}

fn collect_skipped(g: &SourceGroup, out: &mut Vec<(String, String)>) {
    for (n, why) in &g.skipped {
        let p = if g.path.is_empty() {
            n.clone()
        } else {
            format!("{}/{n}", g.path)
        };
        out.push((p, why.clone()));
    }
    for s in &g.groups {
        collect_skipped(s, out);
    }
}

/// Linear map of one file's time values onto the reference file's units.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Rebase {
    scale: f64,
    offset: f64,
}

/// How each file's concat coordinate maps onto a common time axis. Files of one series may
/// use different `units` (e.g. `days since <start of file>`, as some CMIP6 models write);
/// xarray decodes each and re-encodes with the first file's units, so we do the same
/// arithmetic on the stored values. Calendars must agree.
fn rebases(files: &[SourceIndex], coords: &[SourceVar]) -> Result<Option<Vec<Rebase>>, AggregateError> {
    let units: Vec<Option<&str>> = coords.iter().map(|c| c.attrs.get_str("units")).collect();
    let cal0 = coords[0].attrs.get("calendar");
    for (f, c) in files.iter().zip(coords) {
        if c.attrs.get("calendar") != cal0 {
            return Err(mismatch(format!(
                "{}: '{}' calendar is {:?} but {} has {:?}",
                f.file.path.display(),
                c.name,
                c.attrs.get("calendar").map(AttrValue::display),
                files[0].file.path.display(),
                cal0.map(AttrValue::display)
            )));
        }
    }
    if units.iter().all(|u| *u == units[0]) {
        return Ok(None);
    }
    let cal = cal0.and_then(AttrValue::as_str);
    let mut axes = Vec::with_capacity(files.len());
    for (f, u) in files.iter().zip(&units) {
        let axis = u.and_then(|u| TimeAxis::new(u, cal).ok()).ok_or_else(|| {
            mismatch(format!(
                "{}: '{}' units {:?} differ from {} ({:?}) and are not CF time units, so the files cannot be aligned",
                f.file.path.display(),
                coords[0].name,
                u,
                files[0].file.path.display(),
                units[0]
            ))
        })?;
        axes.push(axis);
    }
    let r0 = &axes[0];
    Ok(Some(
        axes.iter()
            .map(|a| Rebase {
                scale: a.unit_micros() / r0.unit_micros(),
                offset: (a.reference_micros() - r0.reference_micros()) as f64 / r0.unit_micros(),
            })
            .collect(),
    ))
}

/// Rewrites a variable's values in one file through `r`, held in memory from now on.
/// `units` says from which units to which (for the references that can no longer point
/// at the stored bytes).
fn apply_rebase(
    v: &mut SourceVar,
    r: Rebase,
    path: &std::path::Path,
    units: &str,
) -> Result<(), AggregateError> {
    let bytes = read_all(v)?;
    let vals = as_f64s(&bytes, v.dtype);
    let mut out = Vec::with_capacity(bytes.len());
    for x in vals {
        let y = x * r.scale + r.offset;
        let s = if v.dtype.is_float() {
            Scalar::Float(y)
        } else if y.fract() == 0.0 {
            Scalar::Int(y as i64)
        } else {
            return Err(mismatch(format!(
                "{}: '{}' is stored as integers and does not fit the first file's time units exactly",
                path.display(),
                v.name
            )));
        };
        out.extend(s.to_le_bytes(v.dtype));
    }
    v.data.layout = Layout::Memory(Arc::new(MemValues::Bytes(out)));
    v.data.endian = crate::dtype::Endian::Little;
    // The file's bytes are in the old units: references must not point at them.
    v.data.stored = Some(Box::new(crate::source::Stored::Rewritten(format!(
        "its values in {} are rebased {units}, so they differ from the stored bytes",
        path.display()
    ))));
    Ok(())
}

/// Sorts files by their first concat coordinate value and checks they line up.
fn order_files(files: &mut Vec<SourceIndex>, cd: &str) -> Result<(), AggregateError> {
    for f in files.iter() {
        if !f.root.dims.iter().any(|d| d.name == cd) {
            return Err(mismatch(format!(
                "{}: has no dimension '{cd}' to concatenate along",
                f.file.path.display()
            )));
        }
    }
    let coord = |f: &SourceIndex| {
        f.root
            .vars
            .iter()
            .find(|v| v.name == cd && v.dims == [cd])
            .cloned()
    };
    if coord(&files[0]).is_none() {
        return Ok(()); // no coordinate: keep the given (sorted path) order
    }
    let mut coords = Vec::with_capacity(files.len());
    for f in files.iter() {
        coords.push(coord(f).ok_or_else(|| {
            mismatch(format!(
                "{}: has no coordinate variable '{cd}'",
                f.file.path.display()
            ))
        })?);
    }
    let maps = rebases(files, &coords)?;
    let mut keyed = Vec::with_capacity(files.len());
    for (i, c) in coords.iter().enumerate() {
        let r = maps.as_ref().map_or(
            Rebase {
                scale: 1.0,
                offset: 0.0,
            },
            |m| m[i],
        );
        let vals = as_f64s(&read_all(c)?, c.dtype);
        let first = vals.first().map_or(f64::NAN, |x| x * r.scale + r.offset);
        let last = vals.last().map_or(f64::NAN, |x| x * r.scale + r.offset);
        keyed.push((first, last, i));
    }
    keyed.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    for w in keyed.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let ordered = a.1 < b.0 || a.0.is_nan() || b.0.is_nan();
        if !ordered {
            return Err(mismatch(format!(
                "{} and {}: '{cd}' values overlap ({} .. {} vs {} ..); the series is not monotonic",
                files[a.2].file.path.display(),
                files[b.2].file.path.display(),
                a.0,
                a.1,
                b.0
            )));
        }
    }
    let order: Vec<usize> = keyed.iter().map(|k| k.2).collect();
    let mut sorted: Vec<SourceIndex> = order.iter().map(|i| files[*i].clone()).collect();
    if maps.is_some() {
        // Re-express every file in the units of the earliest one.
        let sorted_coords: Vec<SourceVar> = order.iter().map(|i| coords[*i].clone()).collect();
        if let Some(maps) = rebases(&sorted, &sorted_coords)? {
            let ref_units = sorted_coords[0].attrs.get("units").cloned();
            let show = |a: Option<&AttrValue>| a.map_or_else(|| "none".to_string(), AttrValue::display);
            for ((f, r), c) in sorted.iter_mut().zip(maps).zip(&sorted_coords) {
                let path = f.file.path.clone();
                let units = format!(
                    "from the file's time units '{}' onto the first file's '{}'",
                    show(c.attrs.get("units")),
                    show(ref_units.as_ref())
                );
                let bounds = f
                    .root
                    .vars
                    .iter()
                    .find(|v| v.name == cd)
                    .and_then(|v| v.attrs.get_str("bounds").map(str::to_string));
                for v in &mut f.root.vars {
                    let is_coord = v.name == cd;
                    let is_bounds = bounds.as_deref() == Some(v.name.as_str())
                        && v.dims.first().map(String::as_str) == Some(cd);
                    if !(is_coord || is_bounds) {
                        continue;
                    }
                    if r != (Rebase {
                        scale: 1.0,
                        offset: 0.0,
                    }) {
                        apply_rebase(v, r, &path, &units)?;
                    }
                    if v.attrs.get("units").is_some()
                        && let Some(u) = &ref_units
                    {
                        v.attrs.insert("units", u.clone());
                    }
                }
            }
        }
    }
    *files = sorted;
    Ok(())
}

fn build_group(files: &[SourceIndex], path: &str, cd: Option<&str>) -> Result<Group, AggregateError> {
    let g0 = find_group(&files[0].root, path).ok_or_else(|| mismatch(format!("group '{path}' vanished")))?;
    let mut vars = Vec::new();
    for v0 in &g0.vars {
        let axis = cd.and_then(|cd| v0.dims.iter().position(|d| d == cd));
        let zarr_path = if path.is_empty() {
            v0.name.clone()
        } else {
            format!("{path}/{}", v0.name)
        };
        let mut pieces = vec![Piece {
            start: 0,
            data: v0.data.clone(),
        }];
        let mut total = v0.data.shape.clone();
        // v0's values, read once for the agreement checks below
        let mut v0_values: Option<Vec<u8>> = None;
        for f in &files[1..] {
            let fname = f.file.path.display();
            let other = find_group(&f.root, path).and_then(|g| g.vars.iter().find(|v| v.name == v0.name));
            let Some(v) = other else {
                if axis.is_some() {
                    return Err(mismatch(format!("{fname}: variable '{zarr_path}' is missing")));
                }
                continue;
            };
            if v.dtype != v0.dtype || v.dims != v0.dims {
                return Err(mismatch(format!(
                    "{fname}: variable '{zarr_path}' is {:?}{:?} but {} has {:?}{:?}",
                    v.dtype,
                    v.dims,
                    files[0].file.path.display(),
                    v0.dtype,
                    v0.dims
                )));
            }
            let same_shape = v
                .data
                .shape
                .iter()
                .zip(&v0.data.shape)
                .enumerate()
                .all(|(d, (a, b))| Some(d) == axis || a == b);
            if !same_shape {
                return Err(mismatch(format!(
                    "{fname}: variable '{zarr_path}' has shape {:?} but {} has {:?}",
                    v.data.shape,
                    files[0].file.path.display(),
                    v0.data.shape
                )));
            }
            match axis {
                Some(ax) => {
                    pieces.push(Piece {
                        start: total[ax],
                        data: v.data.clone(),
                    });
                    total[ax] += v.data.shape[ax];
                }
                None => {
                    // Saturating: a huge declared shape is simply too large to compare.
                    let bytes = (numel(&v.data.shape).unwrap_or(usize::MAX) as u64)
                        .saturating_mul(v.dtype.size() as u64);
                    let differs = v.dtype != DType::Str && bytes <= COMPARE_LIMIT && {
                        if v0_values.is_none() {
                            v0_values = Some(read_all(v0)?);
                        }
                        Some(read_all(v)?) != v0_values
                    };
                    if differs {
                        return Err(mismatch(format!(
                            "{fname}: values of '{zarr_path}' differ from {} (variables without the concat dimension must agree)",
                            files[0].file.path.display()
                        )));
                    }
                }
            }
        }
        vars.push(Arc::new(make_variable(v0, zarr_path, total, axis, pieces)));
    }
    let dims = g0
        .dims
        .iter()
        .map(|d| {
            let len = vars
                .iter()
                .find_map(|v| v.dims.iter().position(|n| *n == d.name).map(|i| v.shape[i]))
                .unwrap_or(d.len);
            (d.name.clone(), len)
        })
        .collect();
    let mut groups = Vec::new();
    for sub in &g0.groups {
        groups.push(build_group(files, &sub.path, cd)?);
    }
    Ok(Group {
        path: path.to_string(),
        attrs: g0.attrs.clone(),
        dims,
        unlimited: g0
            .dims
            .iter()
            .filter(|d| d.unlimited)
            .map(|d| d.name.clone())
            .collect(),
        vars,
        groups,
    })
}

fn scalar_of(v: &AttrValue) -> Option<Scalar> {
    match v {
        AttrValue::Ints(x) => x.first().map(|v| Scalar::Int(*v)),
        AttrValue::UInts(x) => x.first().map(|v| Scalar::UInt(*v)),
        AttrValue::Floats(_) | AttrValue::Floats32(_) => v.first_f64().map(Scalar::Float),
        _ => None,
    }
}

/// The variable's `_FillValue` as a number, if it has a numeric one.
pub fn fill_attr(v: &SourceVar) -> Option<Scalar> {
    match v.dtype {
        DType::Str | DType::Char | DType::Bytes(_) | DType::Unicode(_) => None,
        _ => v.attrs.get("_FillValue").and_then(scalar_of),
    }
}

/// Little-endian bytes that never-written data reads as: `_FillValue`, else netCDF's default.
pub fn storage_fill(v: &SourceVar) -> Vec<u8> {
    // Zarr-backed sources say what missing chunks read as.
    if let Layout::Listed { table, .. } = &v.data.layout
        && let Some(f) = &table.fill
    {
        return f.clone();
    }
    match fill_attr(v) {
        Some(s) => s.to_le_bytes(v.dtype),
        None => v.dtype.netcdf_default_fill(),
    }
}

/// Whether the stored chunks of every piece tile a grid of chunk shape `c`: the same chunk
/// shape (or nothing stored), and along the concat axis pieces that end on chunk boundaries.
pub fn pieces_tile(pieces: &[Piece], axis: Option<usize>, c: &[u64]) -> bool {
    pieces.iter().enumerate().all(|(i, p)| {
        let same = p
            .data
            .layout
            .chunking()
            .is_some_and(|(chunk_shape, _)| chunk_shape == c)
            || matches!(&p.data.layout, Layout::Unallocated);
        let aligned = match axis {
            Some(ax) => i + 1 == pieces.len() || p.data.shape[ax] % c[ax] == 0,
            None => true,
        };
        same && aligned
    })
}

fn make_variable(
    v0: &SourceVar,
    path: String,
    shape: Vec<u64>,
    axis: Option<usize>,
    pieces: Vec<Piece>,
) -> Variable {
    let mut attrs = v0.attrs.clone();
    let fill_attr = fill_attr(v0);
    if fill_attr.is_some() {
        attrs.remove("_FillValue");
    }
    let fill = storage_fill(v0);
    let elem = v0.dtype.size().max(1);
    // Served chunking: the source's when it tiles the aggregate, else a few MB.
    let source_chunks = pieces[0].data.layout.chunking().map(|(c, _)| c.clone());
    let chunks = match &source_chunks {
        Some(c) if pieces_tile(&pieces, axis, c) => c.clone(),
        Some(c) => {
            // keep the source's chunking except along the concat axis
            let mut c = c.clone();
            if let Some(ax) = axis {
                c[ax] = default_chunks(&shape, elem, TARGET_CHUNK_BYTES)[ax].min(c[ax].max(1));
            }
            c
        }
        None => default_chunks(&shape, elem, TARGET_CHUNK_BYTES),
    };
    let chunks: Vec<u64> = chunks.into_iter().map(|c| c.max(1)).collect();
    Variable {
        name: v0.name.clone(),
        path,
        dims: v0.dims.clone(),
        shape,
        dtype: v0.dtype,
        attrs,
        fill_attr,
        fill,
        chunks,
        values: Values::Stored {
            concat_axis: axis,
            pieces,
        },
    }
}
