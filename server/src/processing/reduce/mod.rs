//! Reductions: `groupby` and `resample` of a dataset, served as a dataset of their own
//! (`processing.views`, and the ad-hoc `/datasets/{id}/groupby/{var}/{coord}/{action}`).
//!
//! What is served is what xarray gives for `ds.groupby(by).<reduce>()` and
//! `ds.resample(time=...).<reduce>()` on the dataset opened with its defaults:
//! - inputs CF-decoded as [`super::derived`] decodes them (`_FillValue`/`missing_value`
//!   masked, `scale_factor`/`add_offset` applied); NaN skipped; `std`/`var` with `ddof=0`;
//!   an all-NaN group gives NaN, except `sum` and `count` (0) — [`accum`]; an empty group
//!   (a resample period without data) NaN whatever the reduction, as xarray reindexes;
//! - groups and labels as xarray's ([`groups`]): the reduced dimension is replaced by one
//!   named after the key (`month`, `season`, `year`, `dayofyear`, `hour`, the coordinate's
//!   name; `time` for `resample`), whose coordinate holds the sorted keys (int64; season
//!   strings `DJF`, `JJA`, `MAM`, `SON`; the coordinate's own values and type) or the
//!   periods' starts (in the time coordinate's units and calendar);
//! - types: NumPy's ([`result_dtype`]): the decoded input type (float32 stays float32,
//!   accumulated in float64), `count` int64; integers xarray does not decode reduced exactly
//!   (`sum` int64/uint64 wrapping, `min`/`max`/`first`/`last` in the input's type); any
//!   empty group NaN-promotes the result; floats have NaN as `_FillValue`, integers none; each reduced variable says what it is in
//!   `cloudify_processing` (e.g. `groupby(time.month).mean()`).
//!
//! The view holds the reduced variables, the coordinates of their other dimensions (and
//! those coordinates' bounds), and scalar coordinates they name; variables along the
//! reduced dimension that are not reduced (time bounds) are left out.
//!
//! Block-wise and streaming: an output block (a served chunk) is computed from the source
//! rows of its groups only, read through [`crate::pipeline::read_region`] one source chunk
//! along the reduced axis at a time; the chunks are folded on the current rayon pool (the
//! decode pool a request runs on: no pool of its own) and the partial accumulators merged
//! in axis order. Memory is the output block's accumulators (≤ 3 float64 per value) plus
//! one source slab per worker thread; `median` keeps the non-NaN values of the block's
//! groups (the group's rows × the block's cells), since a median cannot be streamed.
//! Output chunks: the source's along the other dimensions; along the group dimension, all
//! groups for `groupby` (every group reads all of the axis anyway) and about one source
//! chunk's worth of rows for `resample`.

pub mod accum;
pub mod groups;
mod wire;

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use cloudify_crds::{Frequency, Reduce};
use rayon::prelude::*;

use super::derived::Input;
use super::exec::{self, Locator, Output, Task};
use super::expr::Col;
use super::select::Window;
use crate::attrs::{AttrValue, Attrs};
use crate::block::{Block, BlockData};
use crate::chunk::read::ReadError;
use crate::dataset::cftime::TimeAxis;
use crate::dataset::{Dataset, Derive, Values, Variable};
use crate::dtype::{DType, Scalar};
use crate::pipeline;
use accum::{Acc, Partial};
use groups::{Assignment, Component, NONE};

/// The attribute naming the computation a reduced variable holds.
pub const PROVENANCE_ATTR: &str = "cloudify_processing";

/// What is reduced, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `groupby(by)`: `by` is `<time coordinate>.<component>` or a 1-D coordinate's name.
    GroupBy {
        /// The key as written.
        by: String,
    },
    /// `resample(dim=freq)`.
    Resample {
        /// The time dimension.
        dim: String,
        /// The period.
        freq: Frequency,
    },
}

/// Why a reduction cannot be built. `field` names the setting (`groupby.by`,
/// `resample.dim`, `variables`), relative to the view.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ReduceError {
    /// The setting at fault.
    pub field: &'static str,
    /// Why, naming the variable, coordinate or component.
    pub reason: String,
    /// True when the named variable or coordinate does not exist (an HTTP 404), false when
    /// it exists but cannot be used so (400).
    pub missing: bool,
}

fn err(field: &'static str, reason: impl Into<String>) -> ReduceError {
    ReduceError {
        field,
        reason: reason.into(),
        missing: false,
    }
}

fn missing(field: &'static str, reason: impl Into<String>) -> ReduceError {
    ReduceError {
        field,
        reason: reason.into(),
        missing: true,
    }
}

/// The groups of a reduction: the reduced dimension, the assignment of its positions, and
/// the new coordinate.
struct Grouping {
    dim: String,
    assign: Arc<Assignment>,
    label: Variable,
    contiguous: bool,
    describe: String,
}

/// The variable's values as float64 (numbers only).
fn as_f64(b: &Block) -> Option<Vec<f64>> {
    Some(match b.dtype() {
        DType::F32 => b.values::<f32>().ok()?.into_iter().map(f64::from).collect(),
        DType::F64 => b.values::<f64>().ok()?,
        DType::I8 => b.values::<i8>().ok()?.into_iter().map(f64::from).collect(),
        DType::U8 => b.values::<u8>().ok()?.into_iter().map(f64::from).collect(),
        DType::I16 => b.values::<i16>().ok()?.into_iter().map(f64::from).collect(),
        DType::U16 => b.values::<u16>().ok()?.into_iter().map(f64::from).collect(),
        DType::I32 => b.values::<i32>().ok()?.into_iter().map(f64::from).collect(),
        DType::U32 => b.values::<u32>().ok()?.into_iter().map(f64::from).collect(),
        DType::I64 => b.values::<i64>().ok()?.into_iter().map(|x| x as f64).collect(),
        DType::U64 => b.values::<u64>().ok()?.into_iter().map(|x| x as f64).collect(),
        _ => return None,
    })
}

/// A 1-D coordinate's values, whole or the stretch `window` selects of its dimension
/// (coordinates are small).
fn read_coord(v: &Variable, field: &'static str, window: &Window) -> Result<Block, ReduceError> {
    let (start, count) = window.origin_shape(v);
    if start
        .iter()
        .zip(&count)
        .zip(&v.shape)
        .any(|((s, c), n)| s + c > *n)
    {
        return Err(err(
            field,
            format!("the selection lies outside coordinate '{}'", v.name),
        ));
    }
    pipeline::read_region(v, &start, &count)
        .map_err(|e| err(field, format!("cannot read coordinate '{}': {e}", v.name)))
}

/// The time axis of a CF time coordinate, and its decoded dates.
fn time_dates(
    v: &Variable,
    field: &'static str,
    window: &Window,
) -> Result<(TimeAxis, Vec<crate::dataset::cftime::CfDate>), ReduceError> {
    let units = v
        .attrs
        .get_str("units")
        .ok_or_else(|| err(field, format!("'{}' has no CF time units", v.name)))?;
    let axis = TimeAxis::new(units, v.attrs.get_str("calendar"))
        .map_err(|e| err(field, format!("'{}' is not a CF time coordinate: {e}", v.name)))?;
    let vals = as_f64(&read_coord(v, field, window)?)
        .ok_or_else(|| err(field, format!("'{}' is not numeric", v.name)))?;
    let dates = vals
        .iter()
        .map(|x| axis.decode(*x))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(field, format!("'{}': {e}", v.name)))?;
    Ok((axis, dates))
}

/// A 1-D variable of the root group usable as a coordinate.
fn coord<'a>(ds: &'a Dataset, name: &str, field: &'static str) -> Result<&'a Arc<Variable>, ReduceError> {
    let v = ds
        .variable(name)
        .ok_or_else(|| missing(field, format!("unknown coordinate '{name}'")))?;
    if v.shape.len() != 1 {
        return Err(err(
            field,
            format!(
                "'{name}' has {} dimensions; a coordinate to group by has one",
                v.shape.len()
            ),
        ));
    }
    Ok(v)
}

fn constant(name: &str, dim: &str, block: Block, attrs: Attrs) -> Variable {
    let n = block.shape().first().copied().unwrap_or(0);
    let dtype = block.dtype();
    Variable {
        name: name.to_string(),
        path: name.to_string(),
        dims: vec![dim.to_string()],
        shape: vec![n],
        dtype,
        attrs,
        fill_attr: None,
        fill: vec![0; dtype.size()],
        chunks: vec![n.max(1)],
        values: Values::Derived(Arc::new(Constant(block))),
    }
}

/// Attributes of a coordinate, as a label: without `bounds` (not served) and fill.
fn label_attrs(v: &Variable) -> Attrs {
    let mut a = v.attrs.clone();
    a.remove("bounds");
    a
}

/// The groups of `kind` over the rows of `ds` that `window` selects (all of them when it
/// selects nothing along the reduced dimension).
fn grouping(ds: &Dataset, kind: &Kind, window: &Window) -> Result<Grouping, ReduceError> {
    match kind {
        Kind::GroupBy { by } => {
            const F: &str = "groupby.by";
            // a coordinate of that exact name first (names may hold dots)
            if let Some(v) = ds.variable(by) {
                let v = coord(ds, &v.path, F)?;
                let block = read_coord(v, F, window)?;
                let vals = as_f64(&block)
                    .ok_or_else(|| err(F, format!("'{by}' is not numeric; cannot group by it")))?;
                let unique_monotonic =
                    vals.windows(2).all(|w| w[0] < w[1]) || vals.windows(2).all(|w| w[0] > w[1]);
                let (assign, firsts) = if v.dims[0] == v.name && unique_monotonic {
                    Assignment::each(vals.len())
                } else {
                    Assignment::by_values(&vals)
                };
                let BlockData::Bytes(bytes) = block.data() else {
                    return Err(err(F, format!("'{by}' is not numeric")));
                };
                let size = v.dtype.size();
                let labels: Vec<u8> = firsts
                    .iter()
                    .flat_map(|i| bytes[i * size..(i + 1) * size].iter().copied())
                    .collect();
                let block = Block::from_bytes(v.dtype, vec![firsts.len() as u64], labels)
                    .map_err(|e| err(F, e.to_string()))?;
                return Ok(Grouping {
                    dim: v.dims[0].clone(),
                    assign: Arc::new(assign),
                    label: constant(&v.name, &v.name, block, label_attrs(v)),
                    contiguous: false,
                    describe: format!("groupby({by})"),
                });
            }
            let Some((cname, comp)) = by.rsplit_once('.') else {
                return Err(missing(F, format!("unknown coordinate '{by}'")));
            };
            let v = coord(ds, cname, F)?;
            let c = Component::parse(comp).ok_or_else(|| {
                err(
                    F,
                    format!(
                        "unknown time component '{comp}' in '{by}'; one of month, season, year, dayofyear, hour"
                    ),
                )
            })?;
            let (axis, dates) = time_dates(v, F, window)?;
            let keys: Vec<i64> = dates
                .iter()
                .map(|d| groups::component(c, axis.calendar(), d))
                .collect();
            let (assign, keys) = Assignment::by_keys(&keys);
            let n = vec![keys.len() as u64];
            let block = if c == Component::Season {
                Block::from_strings(
                    n,
                    keys.iter()
                        .map(|k| groups::SEASONS[*k as usize].to_string())
                        .collect(),
                )
            } else {
                Block::from_values(n, &keys)
            }
            .map_err(|e| err(F, e.to_string()))?;
            Ok(Grouping {
                dim: v.dims[0].clone(),
                assign: Arc::new(assign),
                label: constant(c.as_str(), c.as_str(), block, Attrs::default()),
                contiguous: false,
                describe: format!("groupby({by})"),
            })
        }
        Kind::Resample { dim, freq } => {
            const F: &str = "resample.dim";
            let v = coord(ds, dim, F)?;
            if v.dims[0] != *dim {
                return Err(err(F, format!("'{dim}' is not a dimension coordinate")));
            }
            let (axis, dates) = time_dates(v, F, window)?;
            let cal = axis.calendar();
            let periods: Vec<i64> = dates.iter().map(|d| groups::period(*freq, cal, d)).collect();
            let sorted = periods.windows(2).all(|w| w[0] <= w[1]);
            if !sorted {
                return Err(err(F, format!("'{dim}' is not sorted; cannot resample it")));
            }
            let (assign, first) = Assignment::by_periods(&periods);
            let labels: Vec<f64> = (0..assign.n_groups as i64)
                .map(|i| axis.encode(&groups::period_start(*freq, cal, first.unwrap_or(0) + i)))
                .collect();
            let block =
                Block::from_values(vec![labels.len() as u64], &labels).map_err(|e| err(F, e.to_string()))?;
            let mut attrs = label_attrs(v);
            for k in ["_FillValue", "missing_value", "scale_factor", "add_offset"] {
                attrs.remove(k);
            }
            Ok(Grouping {
                dim: dim.clone(),
                assign: Arc::new(assign),
                label: constant(dim, dim, block, attrs),
                contiguous: true,
                describe: format!("resample({dim}={})", freq.as_str()),
            })
        }
    }
}

/// A variable of fixed values (the new coordinate), sliced on request.
#[derive(Debug)]
pub(crate) struct Constant(Block);

impl Derive for Constant {
    fn read(&self, start: &[u64], count: &[u64]) -> Result<Block, ReadError> {
        let (s, c) = (start[0] as usize, count[0] as usize);
        let b = match self.0.data() {
            BlockData::Bytes(bytes) => {
                let size = self.0.dtype().size();
                Block::from_bytes(
                    self.0.dtype(),
                    vec![c as u64],
                    bytes[s * size..(s + c) * size].to_vec(),
                )
            }
            BlockData::Strings(v) => Block::from_strings(vec![c as u64], v[s..s + c].to_vec()),
        };
        b.map_err(|e| ReadError::Block(e.to_string()))
    }

    fn check_sources(&self, _: &[u64], _: &[u64]) -> Result<(), ReadError> {
        Ok(())
    }
    fn estimate_bytes(&self, _: &[u64], _: &[u64]) -> u64 {
        0
    }

    fn describe(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        match self.0.data() {
            BlockData::Bytes(b) => b.hash(&mut h),
            BlockData::Strings(v) => v.hash(&mut h),
        }
        format!("const({:?}, {:016x})", self.0.dtype(), h.finish())
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

/// A reduced variable: each block computed from its groups' source rows.
#[derive(Debug)]
pub(crate) struct Reduced {
    /// The dataset this variable belongs to, as a compute worker finds it again
    /// ([`super::exec::Task::Partial`]).
    at: Locator,
    input: Input,
    axis: usize,
    /// Where the selected source region starts, per dimension of the input (all 0 without
    /// a value-range selection): output positions, the rows of `assign` and the slabs of
    /// [`Task::Partial`] are relative to it, reads absolute.
    origin: Vec<u64>,
    /// The selected region's length per dimension of the input.
    extent: Vec<u64>,
    assign: Arc<Assignment>,
    /// Groups holding no row (periods of a `resample` without data): NaN whatever the
    /// reduction, as xarray's reindexing gives them.
    empty: Arc<Vec<bool>>,
    reduce: Reduce,
    /// The served type ([`result_dtype`]).
    dtype: DType,
    /// Integers reduced exactly ([`Input::is_plain_int`]).
    int: bool,
    /// Hash of the assignment of source rows to groups (part of [`Derive::describe`];
    /// computed once, the assignment is as long as the reduced axis).
    groups_hash: u64,
}

impl Reduced {
    /// `start` (relative to the selected region) as a position in the source variable.
    fn absolute(&self, start: &[u64]) -> Vec<u64> {
        start.iter().zip(&self.origin).map(|(s, o)| s + o).collect()
    }

    /// The source region of an output region, relative to the selected region (`None` when
    /// its groups hold no rows).
    fn source_region(&self, start: &[u64], count: &[u64]) -> Option<(Vec<u64>, Vec<u64>)> {
        let g0 = start[self.axis] as usize;
        let (r0, r1) = self.assign.rows_of(g0, g0 + count[self.axis] as usize)?;
        let mut s = start.to_vec();
        let mut c = count.to_vec();
        s[self.axis] = r0 as u64;
        c[self.axis] = (r1 - r0) as u64;
        Some((s, c))
    }

    /// The source region of an output region and the slabs of source rows `[r0, r1)` read
    /// for it: the source variable's chunks along the axis that hold rows of the region's
    /// groups (`None` when its groups hold no rows).
    #[allow(clippy::type_complexity)]
    fn slabs(&self, start: &[u64], count: &[u64]) -> Option<(Vec<u64>, Vec<u64>, Vec<(u64, u64)>)> {
        let ax = self.axis;
        let (g0, k) = (start[ax] as usize, count[ax] as usize);
        let (src_start, src_count) = self.source_region(start, count)?;
        let step = self.input.var.chunks[ax].max(1);
        let o = self.origin[ax];
        let (r0, r1) = (src_start[ax], src_start[ax] + src_count[ax]);
        let mut slabs = Vec::new();
        let mut r = r0;
        while r < r1 {
            // cut at the source's chunk boundaries (absolute), so a slab is one stored chunk
            let end = (((r + o) / step + 1) * step - o).min(r1);
            let wanted = self.assign.group[r as usize..end as usize]
                .iter()
                .any(|g| *g != NONE && (g0..g0 + k).contains(&(*g as usize)));
            if wanted {
                slabs.push((r, end));
            }
            r = end;
        }
        Some((src_start, src_count, slabs))
    }

    /// The decoded values of one slab of source rows `[r0, r1)` (the rest of the region as
    /// `src`): the I/O and decoding of a slab, done in parallel for several slabs before
    /// they are folded in order ([`Reduced::fold_slab`]).
    fn read_slab(
        &self,
        src_start: &[u64],
        src_count: &[u64],
        (r0, r1): (u64, u64),
    ) -> Result<Slab, ReadError> {
        let mut s = self.absolute(src_start);
        let mut c = src_count.to_vec();
        s[self.axis] = r0 + self.origin[self.axis];
        c[self.axis] = r1 - r0;
        if self.int {
            return Ok(Slab::Ints(self.input.read_ints(&s, &c)?));
        }
        Ok(Slab::Floats(self.input.read(&s, &c)?))
    }

    /// Adds the values of slab `[r0, r1)` to `acc`, laid out as the output block with the
    /// groups of `layout` only along the grouped axis.
    fn fold_slab(&self, acc: &mut Acc, vals: &Slab, (r0, r1): (u64, u64), layout: &Layout) {
        let rows = (r1 - r0) as usize;
        let Layout {
            g0,
            ref slot_of,
            m: k,
            outer,
            inner,
        } = *layout;
        // each (row, outer) run of `inner` values goes to the slots of its group
        let runs = || {
            (0..rows).filter_map(move |t| {
                let g = self.assign.group[r0 as usize + t];
                let j = slot_of.get((g as usize).checked_sub(g0)?)?;
                (*j != NONE).then_some((t, *j as usize))
            })
        };
        // the decoded values go to the accumulators in their own type (no float64 copy)
        fn fold<T: Copy + Into<f64>>(
            acc: &mut Acc,
            vals: &[T],
            runs: impl Iterator<Item = (usize, usize)>,
            (rows, k, outer, inner): (usize, usize, usize, usize),
        ) {
            for (t, g) in runs {
                for o in 0..outer {
                    let from = (o * rows + t) * inner;
                    acc.add((o * k + g) * inner, &vals[from..from + inner]);
                }
            }
        }
        let dims = (rows, k, outer, inner);
        match vals {
            Slab::Ints(v) => {
                for (t, g) in runs() {
                    for o in 0..outer {
                        let from = (o * rows + t) * inner;
                        acc.add_int((o * k + g) * inner, &v[from..from + inner]);
                    }
                }
            }
            Slab::Floats(Col::F32(v)) => fold(acc, &v[..], runs(), dims),
            Slab::Floats(Col::F64(v)) => fold(acc, &v[..], runs(), dims),
            Slab::Floats(Col::Bool(v)) => {
                let v: Vec<f64> = v.iter().map(|b| f64::from(u8::from(*b))).collect();
                fold(acc, &v, runs(), dims);
            }
        }
    }

    /// Folds `slabs` in order into `acc`, decoding up to [`DECODE_AHEAD`] slabs at a time in
    /// parallel (bounded memory: that many decoded slabs) while the previous ones are folded.
    /// The result is the in-order fold's, whatever the number of threads.
    fn fold_slabs(
        &self,
        acc: &mut Acc,
        src_start: &[u64],
        src_count: &[u64],
        slabs: &[(u64, u64)],
        layout: &Layout,
    ) -> Result<(), ReadError> {
        let mut pending: Vec<((u64, u64), Slab)> = Vec::new();
        for window in slabs.chunks(DECODE_AHEAD) {
            let done = std::mem::take(&mut pending);
            let (read, ()) = rayon::join(
                || {
                    window
                        .par_iter()
                        .map(|slab| -> Result<((u64, u64), Slab), ReadError> {
                            Ok((*slab, self.read_slab(src_start, src_count, *slab)?))
                        })
                        .collect::<Result<Vec<_>, ReadError>>()
                },
                || {
                    for (slab, vals) in &done {
                        self.fold_slab(acc, vals, *slab, layout);
                    }
                },
            );
            pending = read?;
        }
        for (slab, vals) in &pending {
            self.fold_slab(acc, vals, *slab, layout);
        }
        Ok(())
    }
}

/// Where a fold puts the values of a group: the layout of [`accum::Partial`] (`outer` ×
/// `m` groups × `inner` slots).
struct Layout {
    /// The block's first group.
    g0: usize,
    /// For each group of the block (offset from `g0`), its index among the groups held, or
    /// [`NONE`].
    slot_of: Vec<u32>,
    /// Groups held.
    m: usize,
    /// Cells before the grouped axis.
    outer: usize,
    /// Cells after it.
    inner: usize,
}

/// Decoded values of one slab of source rows.
enum Slab {
    /// Integers reduced exactly ([`Input::is_plain_int`]).
    Ints(Vec<i128>),
    /// Decoded (float) values.
    Floats(Col),
}

/// Source slabs decoded at once, in parallel, ahead of folding: memory is this many decoded
/// slabs (a slab is one source chunk along the reduced axis).
const DECODE_AHEAD: usize = 8;

impl Reduced {
    /// Empty accumulators of `slots` slots.
    fn new_acc(&self, slots: usize) -> Acc {
        if self.int {
            Acc::new_int(self.reduce, slots)
        } else {
            Acc::new(self.reduce, slots)
        }
    }

    /// The groups of the output region (offsets from `start[axis]`, ascending) that rows of
    /// `slabs` belong to: those a run's partial holds. Server and worker compute them alike
    /// from the same assignment, so the server can tell a worker's answer for other groups.
    fn touched(&self, (g0, k): (usize, usize), slabs: &[(u64, u64)]) -> Vec<u32> {
        let mut seen = vec![false; k];
        for (r0, r1) in slabs {
            let rows = self.assign.group.get(*r0 as usize..*r1 as usize).unwrap_or(&[]);
            for g in rows {
                if let Some(s) = (*g as usize).checked_sub(g0).and_then(|j| seen.get_mut(j)) {
                    *s = true;
                }
            }
        }
        (0..k as u32).filter(|j| seen[*j as usize]).collect()
    }

    /// For each slab boundary `p` (before slab `p`, from 0 to `slabs.len()`), whether the
    /// group changes there: the last of the region's rows before it and the first after it
    /// are in different groups ([`runs`] prefers such cuts: a cut inside a group's stretch
    /// of rows sends that group's accumulators twice). The ends always count.
    fn group_changes(&self, (g0, k): (usize, usize), slabs: &[(u64, u64)]) -> Vec<bool> {
        let in_block = |g: &u32| (*g as usize).checked_sub(g0).filter(|j| *j < k);
        let ends: Vec<(Option<usize>, Option<usize>)> = slabs
            .iter()
            .map(|(r0, r1)| {
                let rows = self.assign.group.get(*r0 as usize..*r1 as usize).unwrap_or(&[]);
                (
                    rows.iter().find_map(in_block),
                    rows.iter().rev().find_map(in_block),
                )
            })
            .collect();
        (0..=slabs.len())
            .map(|p| {
                p == 0
                    || p == slabs.len()
                    || match (ends[p - 1].1, ends[p].0) {
                        (Some(a), Some(b)) => a != b,
                        _ => true,
                    }
            })
            .collect()
    }

    /// The layout of a fold into the region's accumulators holding `groups` only.
    fn layout(&self, start: &[u64], count: &[u64], groups: &[u32]) -> Layout {
        let ax = self.axis;
        let mut slot_of = vec![NONE; count[ax] as usize];
        for (j, g) in groups.iter().enumerate() {
            if let Some(s) = slot_of.get_mut(*g as usize) {
                *s = j as u32;
            }
        }
        Layout {
            g0: start[ax] as usize,
            slot_of,
            m: groups.len(),
            outer: count[..ax].iter().map(|c| *c as usize).product(),
            inner: count[ax + 1..].iter().map(|c| *c as usize).product(),
        }
    }

    /// The accumulators of the output region `[start, start+count)` over the source rows of
    /// `slabs` only, folded in order, for the groups those rows belong to: one unit of work
    /// ([`Task::Partial`]), run here or on a compute worker. The region and slabs come from
    /// elsewhere (a request to a worker): they are checked against the variable, never
    /// trusted to index.
    pub(crate) fn partial(
        &self,
        start: &[u64],
        count: &[u64],
        slabs: &[(u64, u64)],
    ) -> Result<Partial, ReadError> {
        let ax = self.axis;
        let shape = &self.extent;
        let n_groups = self.assign.n_groups as u64;
        let bad =
            |why: String| ReadError::Block(format!("partial reduction of '{}': {why}", self.input.var.path));
        if start.len() != shape.len() || count.len() != shape.len() {
            return Err(bad(format!(
                "region of {} dimensions, the variable has {}",
                start.len(),
                shape.len()
            )));
        }
        for (i, ((s, c), n)) in start.iter().zip(count).zip(shape).enumerate() {
            let n = if i == ax { n_groups } else { *n };
            if s.checked_add(*c).is_none_or(|e| e > n) {
                return Err(bad(format!(
                    "region [{s}, {s}+{c}) outside dimension {i} of length {n}"
                )));
            }
        }
        let rows = self.assign.group.len() as u64;
        if slabs.iter().any(|(r0, r1)| r0 >= r1 || *r1 > rows) {
            return Err(bad(format!("source rows outside [0, {rows})")));
        }
        let groups = self.touched((start[ax] as usize, count[ax] as usize), slabs);
        let layout = self.layout(start, count, &groups);
        let mut acc = self.new_acc(layout.outer * groups.len() * layout.inner);
        self.fold_run(&mut acc, start, count, slabs, &layout)?;
        Ok(Partial { groups, acc })
    }

    /// Folds the source rows of `slabs` (checked by the caller) into `acc`, empty
    /// accumulators of the output region `[start, start+count)` laid out as `layout`.
    fn fold_run(
        &self,
        acc: &mut Acc,
        start: &[u64],
        count: &[u64],
        slabs: &[(u64, u64)],
        layout: &Layout,
    ) -> Result<(), ReadError> {
        let Some((src_start, src_count)) = self.source_region(start, count) else {
            return Ok(());
        };
        self.fold_slabs(acc, &src_start, &src_count, slabs, layout)
    }
}

/// At most this many partials per output block: the slabs are cut into this many runs of
/// consecutive slabs (fewer when there are fewer slabs), each folded in order, and the runs'
/// partials merged in order. The cut depends on the slabs and on which groups their rows
/// belong to — not on threads or workers — so a block's floating-point result is the same
/// in-process and on any number of compute workers. Memory: two accumulators of the block
/// in process (the runs are folded one after the other, each decoding [`DECODE_AHEAD`]
/// slabs at a time in parallel); on workers one run's groups per run in flight.
pub const RUNS_PER_BLOCK: usize = 16;

/// `slabs` cut into at most [`RUNS_PER_BLOCK`] runs of consecutive slabs, as even as can be,
/// cut where the group changes when it does: `change[p]` (for `p` in `0..=slabs.len()`)
/// says whether the group changes between slab `p - 1` and slab `p`
/// ([`Reduced::group_changes`]).
///
/// A run's partial holds the groups its rows touch ([`accum::Partial`]), so a cut inside a
/// group's stretch of rows sends that group's accumulators twice. When the changes make at
/// most [`RUNS_PER_BLOCK`] segments (the months of one year, a resample block), every one is
/// a cut and the runs are shared out among the segments by length (each at least one, the
/// next to the segment whose runs are longest), so no run holds more than one group's
/// stretch. With more segments (the months of two years, days), each even cut moves to the
/// nearest change within half a run. Without changes the runs are the even cut; and where
/// every run touches every group anyway (the months of many years) the cut changes nothing
/// but the bytes' order.
fn runs(slabs: Vec<(u64, u64)>, change: &[bool]) -> Vec<Vec<(u64, u64)>> {
    let len = slabs.len();
    let n = len.clamp(1, RUNS_PER_BLOCK);
    let (per, extra) = (len / n, len % n);
    let even = |i: usize| i * per + i.min(extra);
    let inner: Vec<usize> = (1..len)
        .filter(|p| change.get(*p).copied().unwrap_or(false))
        .collect();
    let mut cuts: Vec<usize> = if inner.len() < n {
        // segments between every change; the runs shared out among them
        let mut bounds = vec![0];
        bounds.extend(&inner);
        bounds.push(len);
        let lens: Vec<usize> = bounds.windows(2).map(|w| w[1] - w[0]).collect();
        let mut share = vec![1usize; lens.len()];
        for _ in lens.len()..n {
            // the segment whose runs are the longest (the first of equals) gets one more;
            // compared as l/s > L/S without division
            let next = (0..lens.len()).filter(|i| share[*i] < lens[*i]).reduce(|a, b| {
                if lens[b] * share[a] > lens[a] * share[b] {
                    b
                } else {
                    a
                }
            });
            match next {
                Some(i) => share[i] += 1,
                None => break,
            }
        }
        bounds
            .windows(2)
            .zip(&share)
            .flat_map(|(w, s)| {
                let (l, s) = (w[1] - w[0], *s);
                let (per, extra) = (l / s, l % s);
                (0..s).map(move |i| w[0] + i * per + i.min(extra))
            })
            .collect()
    } else {
        let reach = per / 2;
        (0..n)
            .map(|i| {
                let c = even(i);
                if i == 0 || change.get(c).copied().unwrap_or(false) {
                    return c;
                }
                // the nearest change (the earlier of two as near) if within reach
                let at = inner.partition_point(|p| *p < c);
                let below = at.checked_sub(1).map(|j| inner[j]).filter(|p| c - p <= reach);
                let above = inner.get(at).copied().filter(|p| p - c <= reach);
                match (below, above) {
                    (Some(b), Some(a)) => {
                        if a - c < c - b {
                            a
                        } else {
                            b
                        }
                    }
                    (Some(p), None) | (None, Some(p)) => p,
                    (None, None) => c,
                }
            })
            .collect()
    };
    cuts.dedup();
    cuts.push(len);
    let mut it = slabs.into_iter();
    cuts.windows(2)
        .map(|w| it.by_ref().take(w[1] - w[0]).collect())
        .filter(|r: &Vec<_>| !r.is_empty())
        .collect()
}

impl Reduced {
    /// The accumulators of the output block `[start, start+count)`: its runs' partials
    /// computed by `remote` (the compute workers) or here, merged in run order.
    fn accumulate(
        &self,
        start: &[u64],
        count: &[u64],
        remote: Option<&dyn exec::Executor>,
    ) -> Result<Acc, ReadError> {
        let ax = self.axis;
        let inner: usize = count[ax + 1..].iter().map(|c| *c as usize).product();
        let (g0, k) = (start[ax] as usize, count[ax] as usize);
        let outer: usize = count[..ax].iter().map(|c| *c as usize).product();
        let mut acc = self.new_acc(outer * k * inner);
        if let Some((_, _, slabs)) = self.slabs(start, count) {
            let runs = runs(slabs.clone(), &self.group_changes((g0, k), &slabs));
            let not_fitting = |why: String| ReadError::Compute {
                status: 502,
                message: format!(
                    "a compute worker answered a partial reduction of '{}' that does not fit the block: {why}",
                    self.input.var.path
                ),
                retry_after: None,
            };
            match remote {
                Some(remote) => {
                    let groups: Vec<Vec<u32>> = runs.iter().map(|r| self.touched((g0, k), r)).collect();
                    let tasks = runs
                        .into_iter()
                        .map(|slabs| Task::Partial {
                            at: self.at.clone(),
                            var: self.input.var.path.clone(),
                            start: start.to_vec(),
                            count: count.to_vec(),
                            slabs,
                        })
                        .collect();
                    let outputs = remote.run_all(tasks)?;
                    if outputs.len() != groups.len() {
                        return Err(not_fitting(format!(
                            "{} answers to {} tasks",
                            outputs.len(),
                            groups.len()
                        )));
                    }
                    // merged in run order, whatever order they were computed in
                    for (o, want) in outputs.into_iter().zip(groups) {
                        let Output::Partial(mut p) = o else {
                            return Err(not_fitting("not a partial".into()));
                        };
                        // a worker whose time axis differs groups the rows otherwise
                        if p.groups != want {
                            return Err(not_fitting(format!(
                                "{} groups where {} were expected",
                                p.groups.len(),
                                want.len()
                            )));
                        }
                        p.merge_into(&mut acc, (outer, k, inner))
                            .map_err(|e| not_fitting(e.to_string()))?;
                    }
                }
                None => {
                    // In process: the runs one after the other, each decoding its slabs in
                    // parallel, so memory is the block's accumulators plus one run's groups
                    // (the partial's buffers reused); merging a run into the empty block
                    // gives the run itself, so the first is folded into `acc` directly.
                    // Same partials, same merge order: the same result as on workers.
                    let mut part: Option<Partial> = None;
                    for (i, run) in runs.iter().enumerate() {
                        if i == 0 {
                            let all: Vec<u32> = (0..k as u32).collect();
                            let layout = self.layout(start, count, &all);
                            self.fold_run(&mut acc, start, count, run, &layout)?;
                            continue;
                        }
                        let groups = self.touched((g0, k), run);
                        let layout = self.layout(start, count, &groups);
                        let slots = outer * groups.len() * inner;
                        let p = part.get_or_insert_with(|| Partial {
                            groups: Vec::new(),
                            acc: self.new_acc(slots),
                        });
                        p.acc.reset_to(slots);
                        p.groups = groups;
                        self.fold_run(&mut p.acc, start, count, run, &layout)?;
                        p.merge_into(&mut acc, (outer, k, inner))
                            .map_err(|e| ReadError::Block(format!("{e} (bug)")))?;
                    }
                }
            }
        }
        Ok(acc)
    }
}

impl Derive for Reduced {
    fn read(&self, start: &[u64], count: &[u64]) -> Result<Block, ReadError> {
        let ax = self.axis;
        let inner: usize = count[ax + 1..].iter().map(|c| *c as usize).product();
        let (g0, k) = (start[ax] as usize, count[ax] as usize);
        let acc = self.accumulate(start, count, exec::remote().as_deref())?;
        // the group of each slot is empty: NaN (the served type is then a float)
        let empty = |slot: usize| self.empty[g0 + (slot / inner) % k];
        let unsigned = matches!(
            self.input.dtype(),
            DType::U8 | DType::U16 | DType::U32 | DType::U64
        );
        let shape = count.to_vec();
        let block = match acc.finish_ints(unsigned) {
            Ok(ints) if !self.dtype.is_float() => int_block(self.dtype, shape, &ints),
            Ok(ints) => {
                #[allow(clippy::cast_precision_loss)]
                let out: Vec<f64> = ints
                    .iter()
                    .enumerate()
                    .map(|(i, x)| match x {
                        Some(x) if !empty(i) => *x as f64,
                        _ => f64::NAN,
                    })
                    .collect();
                float_block(self.dtype, shape, out)
            }
            Err(acc) => {
                let mut out = acc.finish(self.reduce, self.dtype == DType::F32);
                out.iter_mut()
                    .enumerate()
                    .filter(|(i, _)| empty(*i))
                    .for_each(|(_, x)| *x = f64::NAN);
                if self.dtype == DType::I64 {
                    #[allow(clippy::cast_possible_truncation)]
                    Block::from_values(shape, &out.iter().map(|x| *x as i64).collect::<Vec<_>>())
                } else {
                    float_block(self.dtype, shape, out)
                }
            }
        };
        block.map_err(|e| ReadError::Block(e.to_string()))
    }

    fn check_sources(&self, start: &[u64], count: &[u64]) -> Result<(), ReadError> {
        match self.source_region(start, count) {
            Some((s, c)) => pipeline::check_region_sources(&self.input.var, &self.absolute(&s), &c),
            None => Ok(()),
        }
    }

    fn estimate_bytes(&self, start: &[u64], count: &[u64]) -> u64 {
        let Some((s, c, slabs)) = self.slabs(start, count) else {
            return 0;
        };
        let (mut s, mut c) = (self.absolute(&s), c);
        let o = self.origin[self.axis];
        slabs.iter().fold(0u64, |a, (r0, r1)| {
            s[self.axis] = *r0 + o;
            c[self.axis] = r1 - r0;
            a.saturating_add(pipeline::estimate_region_bytes(&self.input.var, &s, &c))
        })
    }

    fn describe(&self) -> String {
        format!(
            "{}(axis={}, origin={:?}, groups={:016x}, {})",
            self.reduce.as_str(),
            self.axis,
            self.origin,
            self.groups_hash,
            self.input.describe()
        )
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

/// A block of the float type `dtype` (float32 rounds to nearest, as NumPy's cast).
fn float_block(dtype: DType, shape: Vec<u64>, out: Vec<f64>) -> Result<Block, crate::block::BlockError> {
    if dtype == DType::F32 {
        #[allow(clippy::cast_possible_truncation)]
        return Block::from_values(shape, &out.iter().map(|x| *x as f32).collect::<Vec<_>>());
    }
    Block::from_values(shape, &out)
}

/// A block of the integer type `dtype`: every value fits (min/max/first/last of that type,
/// sums wrapped to 64 bits); a slot with no value (no group is empty when the type is an
/// integer) is 0.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn int_block(
    dtype: DType,
    shape: Vec<u64>,
    ints: &[Option<i128>],
) -> Result<Block, crate::block::BlockError> {
    macro_rules! cast {
        ($t:ty) => {
            Block::from_values(
                shape,
                &ints
                    .iter()
                    .map(|x| x.unwrap_or(0) as $t)
                    .collect::<Vec<$t>>(),
            )
        };
    }
    match dtype {
        DType::I8 => cast!(i8),
        DType::U8 => cast!(u8),
        DType::I16 => cast!(i16),
        DType::U16 => cast!(u16),
        DType::I32 => cast!(i32),
        DType::U32 => cast!(u32),
        DType::U64 => cast!(u64),
        _ => cast!(i64),
    }
}

/// The served type of `reduce` over `input`, as xarray (NumPy 2) gives it:
/// - decoded (float) inputs keep their type; `count` is int64;
/// - integers xarray keeps ([`Input::is_plain_int`]): `sum` int64 (uint64 for unsigned
///   types, NumPy's accumulator), `min`/`max`/`first`/`last` the input's type,
///   `mean`/`std`/`var`/`median` float64;
/// - when a group is empty (a `resample` period without data), xarray reindexes the result
///   with NaN, promoting it as `dtypes.maybe_promote` does: integers of at most 16 bits to
///   float32, wider ones (and `count`, `sum`) to float64.
pub(crate) fn result_dtype(reduce: Reduce, input: &Input, any_empty: bool) -> DType {
    let int = input.is_plain_int();
    let decoded = if input.ty == super::expr::Ty::F32 {
        DType::F32
    } else {
        DType::F64
    };
    let base = match reduce {
        Reduce::Count => DType::I64,
        Reduce::Sum if int => match input.dtype() {
            DType::U8 | DType::U16 | DType::U32 | DType::U64 => DType::U64,
            _ => DType::I64,
        },
        Reduce::Min | Reduce::Max | Reduce::First | Reduce::Last if int => input.dtype(),
        _ => decoded,
    };
    match base {
        _ if !any_empty => base,
        DType::I8 | DType::U8 | DType::I16 | DType::U16 => DType::F32,
        DType::I32 | DType::U32 | DType::I64 | DType::U64 => DType::F64,
        d => d,
    }
}

/// Names of the variables that are some variable's `bounds`.
fn bounds_names(ds: &Dataset) -> BTreeSet<String> {
    ds.root
        .vars
        .iter()
        .filter_map(|v| v.attrs.get_str("bounds").map(str::to_string))
        .collect()
}

/// The reduced dataset `id` of `parent`. `variables` empty: every numeric data variable
/// along the reduced dimension. Compute workers find it by its id (a view).
pub fn build(
    parent: &Dataset,
    id: &str,
    kind: &Kind,
    reduce: Reduce,
    variables: &[String],
) -> Result<Dataset, ReduceError> {
    build_at(
        parent,
        id,
        kind,
        reduce,
        variables,
        &Locator::Dataset(id.to_string()),
        &Window::default(),
    )
}

/// [`build`], for a dataset compute workers find as `at` (an ad-hoc product), over the
/// region `window` selects: what xarray gives for `ds.sel(...).groupby(by).<reduce>()`.
/// Only the selected source region is read; the groups are those of the selected rows; the
/// other dimensions' coordinates (and their bounds) are the selected stretches.
pub fn build_at(
    parent: &Dataset,
    id: &str,
    kind: &Kind,
    reduce: Reduce,
    variables: &[String],
    at: &Locator,
    window: &Window,
) -> Result<Dataset, ReduceError> {
    let g = grouping(parent, kind, window)?;
    let dims_of_coords: BTreeSet<&str> = parent.root.dims.iter().map(|(d, _)| d.as_str()).collect();
    let bounds = bounds_names(parent);
    // auxiliary coordinates (named by a `coordinates` attribute) are coordinates to xarray:
    // not reduced by default
    let aux: BTreeSet<&str> = parent
        .root
        .vars
        .iter()
        .filter_map(|v| v.attrs.get_str("coordinates"))
        .flat_map(str::split_whitespace)
        .collect();
    let mut inputs: Vec<Input> = Vec::new();
    if variables.is_empty() {
        for v in &parent.root.vars {
            let is_coord = dims_of_coords.contains(v.name.as_str())
                || v.name == g.label.name
                || aux.contains(v.name.as_str());
            if is_coord || bounds.contains(&v.name) || !v.dims.contains(&g.dim) {
                continue;
            }
            if let Ok(i) = Input::new(v.clone()) {
                inputs.push(i);
            }
        }
        if inputs.is_empty() {
            return Err(err(
                "variables",
                format!("no numeric data variable along '{}' to reduce", g.dim),
            ));
        }
    } else {
        for name in variables {
            let v = parent
                .variable(name)
                .filter(|v| !v.path.contains('/'))
                .ok_or_else(|| missing("variables", format!("unknown variable '{name}'")))?;
            if !v.dims.contains(&g.dim) {
                return Err(err(
                    "variables",
                    format!("'{name}' has no dimension '{}' to reduce", g.dim),
                ));
            }
            inputs.push(Input::new(v.clone()).map_err(|m| err("variables", m))?);
        }
    }
    let what = if window.text.is_empty() {
        format!("{}.{}()", g.describe, reduce.as_str())
    } else {
        format!("{}.{}.{}()", window.text, g.describe, reduce.as_str())
    };
    let k_out = chunk_len(&g, &inputs);
    let mut rows = vec![0u64; g.assign.n_groups];
    for x in &g.assign.group {
        if let Some(r) = rows.get_mut(*x as usize) {
            *r += 1;
        }
    }
    let empty: Arc<Vec<bool>> = Arc::new(rows.iter().map(|r| *r == 0).collect());
    let any_empty = empty.iter().any(|e| *e);
    let groups_hash = {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        g.assign.group.hash(&mut h);
        g.assign.n_groups.hash(&mut h);
        h.finish()
    };
    let mut vars: Vec<Variable> = Vec::new();
    let mut keep: BTreeSet<String> = BTreeSet::new();
    for i in inputs {
        let v = i.var.clone();
        let axis = v.dims.iter().position(|d| *d == g.dim).unwrap_or(0);
        let (origin, extent) = window.origin_shape(&v);
        if origin
            .iter()
            .zip(&extent)
            .zip(&v.shape)
            .any(|((o, c), n)| o + c > *n)
            || extent[axis] != g.assign.group.len() as u64
        {
            return Err(err(
                "variables",
                format!(
                    "the selection does not fit '{}' (a coordinate longer than its dimension)",
                    v.name
                ),
            ));
        }
        let dtype = result_dtype(reduce, &i, any_empty);
        let int = i.is_plain_int();
        let (fill, fill_attr) = match dtype {
            DType::F32 => (f32::NAN.to_le_bytes().to_vec(), Some(Scalar::Float(f64::NAN))),
            DType::F64 => (f64::NAN.to_le_bytes().to_vec(), Some(Scalar::Float(f64::NAN))),
            // integers have no fill value: every value is data
            d => (vec![0u8; d.size()], None),
        };
        let mut attrs = v.attrs.clone();
        for k in [
            "missing_value",
            "scale_factor",
            "add_offset",
            "_Unsigned",
            "valid_range",
            "valid_min",
            "valid_max",
        ] {
            attrs.remove(k);
        }
        attrs.insert(PROVENANCE_ATTR, AttrValue::Str(what.clone()));
        // other coordinates it names, when they survive the reduction
        if let Some(c) = v.attrs.get_str("coordinates") {
            let kept: Vec<&str> = c
                .split_whitespace()
                .filter(|n| parent.variable(n).is_some_and(|cv| !cv.dims.contains(&g.dim)))
                .collect();
            keep.extend(kept.iter().map(std::string::ToString::to_string));
            if kept.is_empty() {
                attrs.remove("coordinates");
            } else {
                attrs.insert("coordinates", AttrValue::Str(kept.join(" ")));
            }
        }
        let mut dims = v.dims.clone();
        dims[axis] = g.label.name.clone();
        let mut shape = extent.clone();
        shape[axis] = g.assign.n_groups as u64;
        let mut chunks = v.chunks.clone();
        for (d, (k, n)) in v.dims.iter().zip(chunks.iter_mut().zip(&shape)) {
            // a selected stretch: chunks no longer than it (no padding served)
            if window.get(d).is_some() {
                *k = (*k).clamp(1, (*n).max(1));
            }
        }
        chunks[axis] = k_out;
        for d in &dims {
            keep.insert(d.clone());
        }
        vars.push(Variable {
            name: v.name.clone(),
            path: v.path.clone(),
            dims,
            shape,
            dtype,
            attrs,
            fill_attr,
            fill,
            chunks,
            values: Values::Derived(Arc::new(Reduced {
                at: at.clone(),
                input: i,
                axis,
                origin,
                extent,
                assign: g.assign.clone(),
                empty: empty.clone(),
                reduce,
                dtype,
                int,
                groups_hash,
            })),
        });
    }
    // coordinates of the remaining dimensions, their bounds, and named coordinates
    let mut extra: Vec<Arc<Variable>> = Vec::new();
    for v in &parent.root.vars {
        let named = keep.contains(&v.name) && v.name != g.dim;
        if (named || bounds.contains(&v.name))
            && !v.dims.contains(&g.dim)
            && vars.iter().all(|x| x.name != v.name)
        {
            let is_bound_of_kept = parent
                .root
                .vars
                .iter()
                .any(|c| keep.contains(&c.name) && c.attrs.get_str("bounds") == Some(v.name.as_str()));
            if named || is_bound_of_kept {
                extra.push(window.slice(v).ok_or_else(|| {
                    err(
                        "variables",
                        format!(
                            "the selection does not fit '{}' (a coordinate longer than its dimension)",
                            v.name
                        ),
                    )
                })?);
            }
        }
    }
    let label_name = g.label.name.clone();
    let mut root_vars: Vec<Arc<Variable>> = vec![Arc::new(g.label)];
    root_vars.extend(extra);
    root_vars.extend(vars.into_iter().map(Arc::new));
    let paths: Vec<String> = root_vars.iter().map(|v| v.path.clone()).collect();
    Ok(super::product_dataset(
        parent,
        id,
        PROVENANCE_ATTR,
        &what,
        root_vars,
        (label_name, paths, &window.dims),
    ))
}

/// Output chunk length along the group dimension: every group for `groupby` (each reads
/// the whole axis), about one source chunk's rows for `resample`.
fn chunk_len(g: &Grouping, inputs: &[Input]) -> u64 {
    let n = g.assign.n_groups.max(1) as u64;
    if !g.contiguous {
        return n;
    }
    let rows = g.assign.group.len().max(1) as u64;
    let src = inputs
        .first()
        .and_then(|i| {
            let ax = i.var.dims.iter().position(|d| *d == g.dim)?;
            i.var.chunks.get(ax).copied()
        })
        .unwrap_or(1);
    // groups per source chunk, rounded, at least one
    ((src * n + rows / 2) / rows).clamp(1, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Group changes at `bounds` (interior slab boundaries) and at the ends.
    fn changes_at(len: usize, bounds: &[usize]) -> Vec<bool> {
        (0..=len)
            .map(|p| p == 0 || p == len || bounds.contains(&p))
            .collect()
    }

    fn check_cover(r: &[Vec<(u64, u64)>], slabs: &[(u64, u64)], what: &str) {
        assert!(r.len() <= RUNS_PER_BLOCK, "{what}: {} runs", r.len());
        assert!(r.iter().all(|x| !x.is_empty()), "{what}: an empty run");
        assert_eq!(r.concat(), slabs, "{what}: every slab once, in order");
    }

    fn slabs_of(n: usize) -> Vec<(u64, u64)> {
        (0..n as u64).map(|i| (i * 10, i * 10 + 10)).collect()
    }

    #[test]
    fn runs_without_group_changes_are_the_even_cut_of_the_slabs() {
        for n in [0usize, 1, 2, 15, 16, 17, 40, 1000] {
            let slabs = slabs_of(n);
            for change in [Vec::new(), changes_at(n, &[])] {
                let r = runs(slabs.clone(), &change);
                check_cover(&r, &slabs, &format!("{n}"));
                assert_eq!(r.len(), n.min(RUNS_PER_BLOCK), "{n}");
                let (lo, hi) = (
                    r.iter().map(Vec::len).min().unwrap_or(0),
                    r.iter().map(Vec::len).max().unwrap_or(0),
                );
                assert!(hi - lo <= 1, "{n}: even runs");
            }
        }
        // a change at every boundary (a day per group) moves no even cut
        let slabs = slabs_of(365);
        let every: Vec<usize> = (1..365).collect();
        assert_eq!(runs(slabs.clone(), &changes_at(365, &every)), runs(slabs, &[]));
    }

    /// The months of a year, one slab a day: every month boundary is a cut, so no run
    /// holds two months, and there are still 16 runs for 16 workers.
    #[test]
    fn runs_are_cut_where_the_months_of_a_year_change() {
        let days = [31usize, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        let bounds: Vec<usize> = days
            .iter()
            .scan(0, |a, d| {
                *a += d;
                Some(*a)
            })
            .take(11)
            .collect();
        let slabs = slabs_of(365);
        let r = runs(slabs.clone(), &changes_at(365, &bounds));
        check_cover(&r, &slabs, "months");
        assert_eq!(r.len(), RUNS_PER_BLOCK);
        let mut at = 0;
        for run in &r {
            let end = at + run.len();
            assert!(
                !bounds.iter().any(|b| at < *b && *b < end),
                "run [{at}, {end}) holds two months"
            );
            at = end;
        }
        // the four runs beyond the twelve months halve the first four 31-day months
        let lens: Vec<usize> = r.iter().map(Vec::len).collect();
        assert_eq!(
            lens,
            [16, 15, 28, 16, 15, 30, 16, 15, 30, 16, 15, 31, 30, 31, 30, 31]
        );
        // fewer slabs than runs: one slab each
        let r = runs(slabs_of(5), &changes_at(5, &[2]));
        assert_eq!(r.len(), 5);
    }

    /// The months of two years: more changes than runs, so each even cut (45 or 46 days)
    /// moves to the nearest month boundary: every run is whole months, so the partials
    /// hold each month of each year once (24 groups' worth) instead of splitting most.
    #[test]
    fn runs_of_two_years_hold_whole_months() {
        let days = [31usize, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        let bounds: Vec<usize> = days
            .iter()
            .chain(&days)
            .scan(0, |a, d| {
                *a += d;
                Some(*a)
            })
            .take(23)
            .collect();
        let slabs = slabs_of(730);
        let r = runs(slabs.clone(), &changes_at(730, &bounds));
        check_cover(&r, &slabs, "two years");
        assert_eq!(r.len(), RUNS_PER_BLOCK);
        let mut at = 0;
        for run in &r {
            at += run.len();
            assert!(at == 730 || bounds.contains(&at), "cut at {at} inside a month");
        }
    }

    #[test]
    fn group_changes_between_slabs() {
        // rows 0–9 month 1, 10–13 month 2, 14–39 month 3; slabs of 2 rows
        let r = reduced(Reduce::Mean, &months(), false);
        let (_, _, slabs) = r.slabs(&[0, 0, 0], &[2, 3, 3]).expect("slabs");
        let at: Vec<usize> = (0..=slabs.len())
            .filter(|p| r.group_changes((0, 3), &slabs)[*p])
            .collect();
        assert_eq!(at, [0, 5, 7, 20]);
        // months 2 and 3 only: the slabs of month 1 are not read, rows of other groups
        // inside a slab do not count
        let (_, _, slabs) = r.slabs(&[0, 1, 0], &[2, 2, 3]).expect("slabs");
        assert_eq!(slabs.first(), Some(&(10, 12)));
        let at: Vec<usize> = (0..=slabs.len())
            .filter(|p| r.group_changes((1, 2), &slabs)[*p])
            .collect();
        assert_eq!(at, [0, 2, slabs.len()]);
        // a group per row: a change at every boundary
        let r = reduced(Reduce::Mean, &(0..40).collect::<Vec<_>>(), false);
        let (_, _, slabs) = r.slabs(&[0, 0, 0], &[2, 40, 3]).expect("slabs");
        assert!(r.group_changes((0, 40), &slabs).iter().all(|c| *c));
    }

    /// More group changes than runs, irregularly spread: the cuts move to nearby changes
    /// where there are some, stay even where there are none, and cover every slab.
    #[test]
    fn runs_snap_to_nearby_group_changes() {
        let slabs = slabs_of(320);
        // changes every 3 slabs in the first half only
        let bounds: Vec<usize> = (1..53).map(|i| i * 3).collect();
        let r = runs(slabs.clone(), &changes_at(320, &bounds));
        check_cover(&r, &slabs, "clustered");
        assert!(r.len() >= RUNS_PER_BLOCK - 1, "{} runs", r.len());
        let mut at = 0;
        for run in &r[..r.len() / 2 - 1] {
            at += run.len();
            assert!(bounds.contains(&at), "cut at {at} is not a group change");
        }
        // the second half has no change: even cuts of 20
        assert!(r[r.len() - 4..].iter().all(|x| x.len() == 20));
        // arbitrary patterns: always a cover
        for seed in 0..200u64 {
            let n = (seed * 7 % 300) as usize + 1;
            let bounds: Vec<usize> = (1..n)
                .filter(|p| (*p as u64 * 2_654_435_761 + seed) % 11 < 3)
                .collect();
            let slabs = slabs_of(n);
            check_cover(
                &runs(slabs.clone(), &changes_at(n, &bounds)),
                &slabs,
                &format!("seed {seed}"),
            );
        }
    }

    /// A variable of given values, any region read from memory.
    #[derive(Debug)]
    struct Grid {
        shape: Vec<u64>,
        vals: Vec<f64>,
        int: bool,
    }

    impl Derive for Grid {
        fn read(&self, start: &[u64], count: &[u64]) -> Result<Block, ReadError> {
            let mut out = Vec::new();
            let (ny, nz) = (self.shape[1] as usize, self.shape[2] as usize);
            for x in start[0]..start[0] + count[0] {
                for y in start[1]..start[1] + count[1] {
                    for z in start[2]..start[2] + count[2] {
                        out.push(self.vals[(x as usize * ny + y as usize) * nz + z as usize]);
                    }
                }
            }
            #[allow(clippy::cast_possible_truncation)]
            let b = if self.int {
                Block::from_values(count.to_vec(), &out.iter().map(|v| *v as i32).collect::<Vec<_>>())
            } else {
                Block::from_values(count.to_vec(), &out)
            };
            b.map_err(|e| ReadError::Block(e.to_string()))
        }
        fn check_sources(&self, _: &[u64], _: &[u64]) -> Result<(), ReadError> {
            Ok(())
        }
        fn estimate_bytes(&self, _: &[u64], _: &[u64]) -> u64 {
            0
        }
        fn describe(&self) -> String {
            "grid".into()
        }
    }

    /// `x(a=2, time=40, b=3)` reduced along `time` (stored chunks of 2 rows) by the groups
    /// `keys` (one per row).
    fn reduced(reduce: Reduce, keys: &[i64], int: bool) -> Reduced {
        let shape = vec![2u64, keys.len() as u64, 3];
        let vals: Vec<f64> = (0..2 * keys.len() * 3)
            .map(|i| {
                if i % 17 == 5 && !int {
                    f64::NAN
                } else {
                    ((i * 37) % 23) as f64 - 7.5
                }
            })
            .map(|v| if int { v.floor() } else { v })
            .collect();
        let dtype = if int { DType::I32 } else { DType::F64 };
        let var = Variable {
            name: "x".into(),
            path: "x".into(),
            dims: vec!["a".into(), "time".into(), "b".into()],
            shape: shape.clone(),
            dtype,
            attrs: Attrs::default(),
            fill_attr: None,
            fill: vec![0; dtype.size()],
            chunks: vec![2, 2, 3],
            values: Values::Derived(Arc::new(Grid { shape, vals, int })),
        };
        let input = Input::new(Arc::new(var)).expect("input");
        let (assign, _) = Assignment::by_keys(keys);
        let n = assign.n_groups;
        Reduced {
            at: Locator::Dataset("t".into()),
            int: input.is_plain_int(),
            dtype: result_dtype(reduce, &input, false),
            origin: vec![0; 3],
            extent: input.var.shape.clone(),
            input,
            axis: 1,
            assign: Arc::new(assign),
            empty: Arc::new(vec![false; n]),
            reduce,
            groups_hash: 0,
        }
    }

    /// Runs partial tasks here, as a worker would, optionally tampering with the answers.
    #[derive(Debug)]
    struct Local<'a>(&'a Reduced, fn(&mut Partial));

    impl exec::Executor for Local<'_> {
        fn run_all(&self, tasks: Vec<Task>) -> Result<Vec<Output>, ReadError> {
            tasks
                .into_iter()
                .map(|t| match t {
                    Task::Partial {
                        start, count, slabs, ..
                    } => {
                        let mut p = self.0.partial(&start, &count, &slabs)?;
                        (self.1)(&mut p);
                        Ok(Output::Partial(p))
                    }
                    Task::Chunk { .. } => Err(ReadError::Block("not a partial".into())),
                })
                .collect()
        }
    }

    /// Months of a year of 40 rows: rows 0–9 month 1, 10–13 month 2, 14–39 month 3.
    fn months() -> Vec<i64> {
        (0..40)
            .map(|r| {
                if r < 10 {
                    1
                } else if r < 14 {
                    2
                } else {
                    3
                }
            })
            .collect()
    }

    #[test]
    fn a_partial_holds_only_the_groups_its_rows_touch() {
        let r = reduced(Reduce::Mean, &months(), false);
        let (start, count) = ([0u64, 0, 0], [2u64, 3, 3]);
        // one group: rows 0–3 are month 1; slots 2 (a) × 1 group × 3 (b)
        let p = r.partial(&start, &count, &[(0, 2), (2, 4)]).expect("partial");
        assert_eq!(p.groups, [0]);
        assert_eq!(p.acc.slots(), Some(6));
        // across a group boundary: rows 8–11 are months 1 and 2
        let p = r.partial(&start, &count, &[(8, 10), (10, 12)]).expect("partial");
        assert_eq!(p.groups, [0, 1]);
        assert_eq!(p.acc.slots(), Some(12));
        // a block of groups 1–2 only (months 2 and 3): offsets from its first group
        let p = r
            .partial(&[0, 1, 0], &[2, 2, 3], &[(12, 14), (14, 16)])
            .expect("partial");
        assert_eq!(p.groups, [0, 1]);
        let p = r.partial(&[0, 1, 0], &[2, 2, 3], &[(8, 10)]).expect("partial");
        assert!(p.groups.is_empty(), "rows of a group outside the block");
        assert_eq!(p.acc.slots(), Some(0));
        // one group 3 of months spread (groupby over years): every group of the run's rows
        let r = reduced(Reduce::Sum, &(0..40).map(|r| r % 12).collect::<Vec<_>>(), false);
        let p = r
            .partial(&[0, 0, 0], &[2, 12, 3], &[(10, 12), (12, 14)])
            .expect("partial");
        assert_eq!(p.groups, [0, 1, 10, 11]);
    }

    /// Workers' partials merged give exactly the in-process result, for every reduction, for
    /// floats and integers, for a block of all groups and one of some; and the one-pass
    /// fold's within rounding.
    #[test]
    fn partials_merged_equal_the_in_process_block() {
        let keys = [
            months(),
            (0..40).map(|r| r % 12).collect(),
            (0..40).map(|r| r / 3).collect(),
        ];
        for keys in &keys {
            for int in [false, true] {
                for reduce in Reduce::ALL {
                    let r = reduced(reduce, keys, int);
                    let k = r.assign.n_groups as u64;
                    for (start, count) in [([0u64, 0, 0], [2u64, k, 3]), ([1, 1, 0], [1, k - 2, 2])] {
                        let here = r.accumulate(&start, &count, None).expect("here");
                        let local = Local(&r, |_| {});
                        let there = r.accumulate(&start, &count, Some(&local)).expect("there");
                        let what = format!("{reduce:?} int={int} keys {:?} {start:?}", &keys[..4]);
                        assert_eq!(format!("{here:?}"), format!("{there:?}"), "{what}");
                        // all slabs in one fold, one partial of every group: the same values
                        // up to the merge order's rounding
                        let (_, _, slabs) = r.slabs(&start, &count).expect("slabs");
                        let mut one = r.partial(&start, &count, &slabs).expect("one pass");
                        let mut block = r.new_acc(here.slots().unwrap_or(0));
                        let shape = (count[0] as usize, count[1] as usize, count[2] as usize);
                        one.merge_into(&mut block, shape).expect("fits");
                        let (a, b) = (here.finish(reduce, false), block.finish(reduce, false));
                        for (x, y) in a.iter().zip(&b) {
                            let same = (x.is_nan() && y.is_nan()) || (x - y).abs() <= 1e-9 * y.abs().max(1.0);
                            assert!(same, "{what}: {x} != {y}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn partials_that_do_not_fit_are_refused_naming_the_variable() {
        let r = reduced(Reduce::Mean, &months(), false);
        let (start, count) = ([0u64, 0, 0], [2u64, 3, 3]);
        let tampered: [fn(&mut Partial); 4] = [
            |p| p.groups = p.groups.iter().map(|g| g + 1).collect(),
            |p| p.groups.extend(p.groups.clone()),
            |p| p.acc = Acc::new(Reduce::Max, p.acc.slots().unwrap_or(0)),
            |p| p.acc = Acc::new(Reduce::Mean, 1),
        ];
        for t in tampered {
            let e = r
                .accumulate(&start, &count, Some(&Local(&r, t)))
                .expect_err("tampered");
            let ReadError::Compute { status, message, .. } = e else {
                panic!("not a compute error: {e}");
            };
            assert_eq!(status, 502);
            assert!(
                message.contains("'x'") && message.contains("does not fit"),
                "{message}"
            );
        }
    }
}

#[cfg(test)]
mod selection_tests {
    use super::*;
    use crate::processing::select::Selection;

    /// Longitudes: enough that `x` is not inlined in the index (its chunks are served).
    const LON: usize = 30;

    /// `x(time, lat, lon)` float32 with a NaN, in chunks `{7, 3, 2}` that a selection cuts
    /// across; `time` daily (noleap) from 2001-01-25, `lat` descending.
    fn open(dir: &std::path::Path) -> (Dataset, Vec<f32>) {
        let path = dir.join("x.nc");
        let mut f = netcdf::create(&path).expect("create");
        f.add_dimension("time", 40).expect("dim");
        f.add_dimension("lat", 4).expect("dim");
        f.add_dimension("lon", LON).expect("dim");
        let mut vals: Vec<f32> = (0..40 * 4 * LON)
            .map(|i| ((i * 37) % 101) as f32 * 0.37 + 250.0)
            .collect();
        vals[4 * 4 * LON + LON + 2] = f32::NAN;
        {
            let mut v = f.add_variable::<f32>("x", &["time", "lat", "lon"]).expect("var");
            v.set_chunking(&[7, 3, 2]).expect("chunking");
            v.put_values(&vals, ..).expect("put");
        }
        {
            let mut t = f.add_variable::<f64>("time", &["time"]).expect("var");
            t.put_attribute("units", "days since 2001-01-25").expect("attr");
            t.put_attribute("calendar", "noleap").expect("attr");
            let days: Vec<f64> = (0..40).map(|d| f64::from(d) + 0.5).collect();
            t.put_values(&days, ..).expect("put");
        }
        let mut lat = f.add_variable::<f64>("lat", &["lat"]).expect("var");
        lat.put_values(&[30.0, 10.0, -10.0, -30.0], ..).expect("put");
        drop(f);
        let file = Arc::new(crate::source::SourceFile::stat(path.clone()).expect("stat"));
        let idx = crate::open::file::open_file(file).expect("index");
        let spec = cloudify_crds::DatasetSpec::new("t", vec![path.display().to_string()]);
        (
            crate::dataset::aggregate::build(&spec, vec![idx]).expect("dataset"),
            vals,
        )
    }

    fn product(ds: &Dataset, reduce: Reduce, q: &str) -> Dataset {
        let x = ds.variable("x").expect("x").clone();
        let w = Selection::parse_query(q).expect(q).resolve(ds, &x).expect(q);
        let at = Locator::Product {
            parent: "t".into(),
            var: "x".into(),
            coord: "time.month".into(),
            action: reduce.as_str().into(),
            select: String::new(),
        };
        let kind = Kind::GroupBy {
            by: "time.month".into(),
        };
        build_at(ds, "p", &kind, reduce, &["x".into()], &at, &w).expect("build")
    }

    #[test]
    fn a_selection_reduces_only_its_region() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ds, vals) = open(dir.path());
        // rows 3..=26 (2001-01-28 .. 2001-02-20), lat rows 1..4 (20 down to -30)
        let q = "time=2001-01-28/2001-02-20&lat=20/-30";
        let p = product(&ds, Reduce::Mean, q);
        let v = p.variable("x").expect("x");
        assert_eq!(v.shape, vec![2, 3, LON as u64]);
        assert_eq!(
            v.chunks,
            vec![2, 3, 2],
            "chunks clipped to the selected lat stretch"
        );
        // the selection by the first and last selected values, not as the query wrote it
        assert_eq!(
            v.attrs.get_str(PROVENANCE_ATTR),
            Some(
                "sel(lat=slice(10.0, -30.0), time=slice('2001-01-28T12:00:00', '2001-02-20T12:00:00')).groupby(time.month).mean()"
            )
        );
        let got: Vec<f32> = pipeline::read_region(v, &[0, 0, 0], &[2, 3, LON as u64])
            .expect("read")
            .values()
            .expect("f32");
        // brute force: January rows 3..7, February rows 7..27
        let mut want = Vec::new();
        for rows in [3..7usize, 7..27] {
            for la in 1..4 {
                for lo in 0..LON {
                    let xs: Vec<f64> = rows
                        .clone()
                        .map(|t| f64::from(vals[(t * 4 + la) * LON + lo]))
                        .filter(|x| !x.is_nan())
                        .collect();
                    #[allow(clippy::cast_possible_truncation)]
                    want.push((xs.iter().sum::<f64>() / xs.len() as f64) as f32);
                }
            }
        }
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= w.abs() * 1e-6, "{got:?} vs {want:?}");
        }
        // a block of one group and part of lon reads the same values
        let part: Vec<f32> = pipeline::read_region(v, &[1, 2, 1], &[1, 1, 2])
            .expect("read")
            .values()
            .expect("f32");
        let at = 3 * LON + 2 * LON + 1;
        assert_eq!(part, got[at..at + 2].to_vec());
        // the kept coordinate is the selected stretch
        let lat: Vec<f64> = pipeline::read_region(p.variable("lat").expect("lat"), &[0], &[3])
            .expect("read")
            .values()
            .expect("f64");
        assert_eq!(lat, vec![10.0, -10.0, -30.0]);
        let month: Vec<i64> = pipeline::read_region(p.variable("month").expect("month"), &[0], &[2])
            .expect("read")
            .values()
            .expect("i64");
        assert_eq!(month, vec![1, 2]);
        // counts: the NaN at row 4 is not counted
        let c = product(&ds, Reduce::Count, q);
        let n: Vec<i64> = pipeline::read_region(c.variable("x").expect("x"), &[0, 0, 0], &[2, 3, LON as u64])
            .expect("read")
            .values()
            .expect("i64");
        assert_eq!(n[2], 3);
        assert_eq!(n[..3 * LON].iter().filter(|k| **k == 4).count(), 3 * LON - 1);
        assert!(n[3 * LON..].iter().all(|k| *k == 20));
        // another selection is another product: its own fingerprint (ETags, cache keys) and
        // pipeline, even where shapes agree
        let other = product(&ds, Reduce::Mean, "time=2001-01-29/2001-02-21&lat=20/-30");
        assert_ne!(other.fingerprint, p.fingerprint);
        let ov = other.variable("x").expect("x");
        assert_eq!(ov.shape, v.shape);
        assert_ne!(pipeline::describe(ov), pipeline::describe(v));
        let whole = build(
            &ds,
            "p",
            &Kind::GroupBy {
                by: "time.month".into(),
            },
            Reduce::Mean,
            &["x".into()],
        )
        .expect("whole");
        assert_ne!(whole.fingerprint, p.fingerprint);
        assert_eq!(whole.variable("x").expect("x").shape, vec![3, 4, LON as u64]);
    }

    /// Another spelling of the same selection (partial or full dates, other numbers between
    /// the same cells, another order) is the same product: one provenance and one
    /// fingerprint, so one ETag per key and one compute-cache entry per chunk. Another
    /// selection is another fingerprint.
    #[test]
    fn spellings_of_one_selection_are_one_product() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ds, _) = open(dir.path());
        let p = product(&ds, Reduce::Mean, "time=2001-01-28/2001-02-20&lat=20/-30");
        let attr = |p: &Dataset| {
            p.variable("x")
                .and_then(|v| v.attrs.get_str(PROVENANCE_ATTR).map(str::to_string))
        };
        for q in [
            "lat=20.0,-30.0&time=2001-01-28,2001-02-20",
            "lat=15.5/-35&time=2001-01-28T00:00/2001-02-20T23:59:59",
            "time=2001-01-28T12/2001-02-20T12:00:00&lat=+2e1/-3e1",
        ] {
            let o = product(&ds, Reduce::Mean, q);
            assert_eq!(o.fingerprint, p.fingerprint, "{q}");
            assert_eq!(attr(&o), attr(&p), "{q}");
            assert_eq!(
                pipeline::describe(o.variable("x").expect("x")),
                pipeline::describe(p.variable("x").expect("x")),
                "{q}"
            );
        }
        for q in [
            "time=2001-01-28/2001-02-21&lat=20/-30",
            "time=2001-01-28/2001-02-20&lat=-5/-30",
            "time=2001-01-28/2001-02-20",
        ] {
            assert_ne!(product(&ds, Reduce::Mean, q).fingerprint, p.fingerprint, "{q}");
        }
    }

    /// xarray does not sort a unique, monotonic dimension coordinate it groups by: a
    /// descending latitude stays descending (other keys are sorted).
    #[test]
    fn grouping_by_a_descending_dimension_keeps_its_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ds, _) = open(dir.path());
        let kind = Kind::GroupBy { by: "lat".into() };
        let x = ds.variable("x").expect("x").clone();
        let w = Selection::parse_query("lat=10/-30")
            .expect("q")
            .resolve(&ds, &x)
            .expect("w");
        let at = Locator::Dataset("p".into());
        let p = build_at(&ds, "p", &kind, Reduce::Max, &["x".into()], &at, &w).expect("build");
        let lat: Vec<f64> = pipeline::read_region(p.variable("lat").expect("lat"), &[0], &[3])
            .expect("read")
            .values()
            .expect("f64");
        assert_eq!(lat, vec![10.0, -10.0, -30.0]);
        let (a, firsts) = groups::Assignment::by_values(&[3.0, 1.0, 2.0, 1.0]);
        assert_eq!(
            (a.group, firsts),
            (vec![2, 0, 1, 0], vec![1, 2, 0]),
            "not a dimension: sorted"
        );
    }

    #[test]
    fn partials_of_a_selection_merge_to_its_blocks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ds, _) = open(dir.path());
        let p = product(&ds, Reduce::Sum, "time=2001-01-28/2001-03-01&lat=10/-10");
        let v = p.variable("x").expect("x");
        let Values::Derived(d) = &v.values else {
            panic!("derived")
        };
        let r = d
            .as_any()
            .and_then(|a| a.downcast_ref::<Reduced>())
            .expect("reduced");
        let (start, count) = (vec![0, 0, 0], v.shape.clone());
        let (_, _, slabs) = r.slabs(&start, &count).expect("slabs");
        // slabs are relative rows cut at the stored chunk boundaries (7, 14, ... absolute)
        assert_eq!(slabs.first(), Some(&(0, 4)));
        assert_eq!(slabs.get(1), Some(&(4, 11)));
        let k = count[r.axis] as usize;
        let outer: usize = count[..r.axis].iter().map(|c| *c as usize).product();
        let inner: usize = count[r.axis + 1..].iter().map(|c| *c as usize).product();
        let mut acc = r.new_acc(outer * k * inner);
        for run in runs(slabs.clone(), &r.group_changes((0, k), &slabs)) {
            let mut p = r.partial(&start, &count, &run).expect("partial");
            p.merge_into(&mut acc, (outer, k, inner)).expect("merge");
        }
        let whole: Vec<f32> = pipeline::read_region(v, &start, &count)
            .expect("read")
            .values()
            .expect("f32");
        #[allow(clippy::cast_possible_truncation)]
        let merged: Vec<f32> = acc.finish(Reduce::Sum, true).iter().map(|x| *x as f32).collect();
        assert_eq!(merged, whole);
        // a region outside the selection is refused, not read
        assert!(r.partial(&[0, 0, 0], &[3, 3, LON as u64], &slabs).is_err());
    }
}
