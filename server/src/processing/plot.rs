//! Plots (`/datasets/{id}/plot/{var}/{kind}/{cmap}/{selection}`): a selection of a
//! variable read through [`crate::pipeline`], CF-decoded as [`super::derived`] decodes it
//! (what xarray shows), and drawn by [`crate::render`] as PNG (a map, a line) or APNG (an
//! animation over the first selected dimension).
//!
//! The selection grammar is the seed's: `coord/lo_hi` pairs. A time dimension is selected
//! by index with Python's half-open slice semantics (`0_12`, `-12_-1`); `-12_0` means the
//! last twelve steps, as in the seed (a `0` upper bound after a negative lower bound is the
//! end). Every other dimension is selected by coordinate values, inclusive, as
//! `.sel(dim=slice(lo, hi))`; a longitude range crossing the axis' seam (`-30_30` on a
//! 0..360 axis, `170_190` on a -180..180 axis) is read as two pieces side by side, west
//! first, as `xr.concat([da.sel(lon=slice(330, 360)), da.sel(lon=slice(0, 30))])` gives.

use std::sync::Arc;

use super::derived::Input;
use super::expr::Col;
use super::select;
use crate::dataset::cftime::TimeAxis;
use crate::dataset::{Dataset, Variable};
use crate::pipeline;
use crate::render::{self, Canvas, MapLayout, Norm};

/// The most cells (pixels before scaling) of one plot, all frames together.
pub const MAX_CELLS: u64 = 4_000_000;
/// The most frames of an animation.
pub const MAX_FRAMES: u64 = 500;

/// The plot kinds served.
pub const KINDS: &[&str] = &["map", "line", "animation"];

/// Why a plot cannot be made; the HTTP layer maps the kind to a status.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// A name (variable) that does not exist: 404.
    #[error("{0}")]
    NotFound(String),
    /// A malformed or impossible request: 400.
    #[error("{0}")]
    Bad(String),
    /// An image or a read beyond the caps: 413.
    #[error("{0}")]
    TooLarge(String),
    /// A source read failed.
    #[error(transparent)]
    Read(#[from] crate::chunk::read::ReadError),
    /// The image could not be encoded (a bug).
    #[error(transparent)]
    Encode(#[from] render::EncodeError),
}

impl From<super::curvilinear::CurvError> for PlotError {
    fn from(e: super::curvilinear::CurvError) -> Self {
        use super::curvilinear::CurvError;
        match e {
            CurvError::Bad(m) => PlotError::Bad(m),
            CurvError::TooLarge(m) => PlotError::TooLarge(m),
            CurvError::Read(r) => PlotError::Read(r),
        }
    }
}

/// What is plotted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A 2-D field as colours.
    Map,
    /// A 1-D series.
    Line,
    /// One map per step of the first selected dimension.
    Animation,
}

impl Kind {
    /// Parses a kind name.
    pub fn parse(s: &str) -> Result<Kind, PlotError> {
        match s {
            "map" => Ok(Kind::Map),
            "line" => Ok(Kind::Line),
            "animation" => Ok(Kind::Animation),
            _ => Err(PlotError::Bad(format!(
                "unknown plot kind '{s}'; allowed: {}",
                KINDS.join(", ")
            ))),
        }
    }
}

/// A plot request, parsed.
#[derive(Debug, Clone)]
pub struct Request {
    /// Variable name.
    pub var: String,
    /// Kind of plot.
    pub kind: Kind,
    /// matplotlib colormap name.
    pub cmap: String,
    /// `(dimension, "lo_hi")` in request order.
    pub selection: Vec<(String, String)>,
    /// Colour range from the request (`colorscalerange=lo,hi`).
    pub range: Option<(f64, f64)>,
}

/// Splits the selection path (`time/0_12/lat/-30_30`) into pairs.
pub fn parse_selection(path: &str) -> Result<Vec<(String, String)>, PlotError> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if !parts.len().is_multiple_of(2) {
        return Err(PlotError::Bad(format!(
            "selection '{path}': expected coord/lo_hi pairs (e.g. time/0_12/lat/-30_30), got an odd number of parts"
        )));
    }
    Ok(parts
        .chunks(2)
        .map(|p| (p[0].to_string(), p[1].to_string()))
        .collect())
}

/// Parses `lo,hi` of `colorscalerange`.
pub fn parse_range(s: &str) -> Result<(f64, f64), PlotError> {
    let bad = || {
        PlotError::Bad(format!(
            "colorscalerange '{s}': expected two finite numbers lo,hi with lo <= hi"
        ))
    };
    let (a, b) = s.split_once(',').ok_or_else(bad)?;
    let (a, b): (f64, f64) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if !(a.is_finite() && b.is_finite() && a <= b) {
        return Err(bad());
    }
    Ok((a, b))
}

/// The image and what a client needs to read it.
#[derive(Debug)]
pub struct Plot {
    /// PNG or APNG bytes.
    pub png: Vec<u8>,
    /// The colour range used (`None` for line plots).
    pub range: Option<(f64, f64)>,
    /// Where the field lies in a map (maps and animations).
    pub layout: Option<MapLayout>,
    /// Number of frames.
    pub frames: usize,
    /// A curvilinear field drawn on a lon/lat canvas: where its pixels are.
    pub lonlat: Option<LonLat>,
}

/// Where the pixels of a map on a lon/lat (plate carrée) canvas are: pixel `(i, j)` of the
/// map area (`i` from its left, `j` from its top; the area starts at [`MapLayout`]'s `x,y`)
/// shows the nearest cell to `lon = west + (i + 0.5)·step`, `lat = north − (j + 0.5)·step`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LonLat {
    /// Longitude of the area's left edge (degrees).
    pub west: f64,
    /// Latitude of its top edge.
    pub north: f64,
    /// Degrees per pixel, both directions.
    pub step: f64,
    /// Width of the area in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// True when `v` is a CF time coordinate (units "... since ...").
pub(crate) fn is_time(ds: &Dataset, dim: &str) -> bool {
    ds.variable(dim).is_some_and(|c| {
        c.attrs
            .get_str("units")
            .is_some_and(|u| u.to_ascii_lowercase().contains(" since "))
    })
}

/// True when `dim` is a longitude axis (CF units or a usual name).
pub(crate) fn is_lon(ds: &Dataset, dim: &str) -> bool {
    let units = ds
        .variable(dim)
        .and_then(|c| c.attrs.get_str("units").map(str::to_ascii_lowercase));
    units.is_some_and(|u| u == "degrees_east" || u == "degree_east") || matches!(dim, "lon" | "longitude")
}

/// A half-open index range `lo_hi` on a dimension of length `n`, Python slice semantics;
/// `hi == 0` after a negative `lo` is the end.
fn index_range(dim: &str, s: &str, n: u64) -> Result<(u64, u64), PlotError> {
    let bad = || {
        PlotError::Bad(format!(
            "{dim}: '{s}' is not an index range lo_hi (integers, Python slice semantics, e.g. 0_12 or -12_0)"
        ))
    };
    let (a, b) = s.split_once('_').ok_or_else(bad)?;
    let (a, b): (i64, i64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
    let n_i = i64::try_from(n).map_err(|_| bad())?;
    let resolve = |x: i64| if x < 0 { (x + n_i).max(0) } else { x.min(n_i) };
    let lo = resolve(a);
    let hi = if b == 0 && a < 0 { n_i } else { resolve(b) };
    if hi <= lo {
        return Err(PlotError::Bad(format!(
            "{dim}: {s} selects nothing of its {n} steps (indices 0..{n}, negatives count from the end)"
        )));
    }
    Ok((lo as u64, (hi - lo) as u64))
}

/// A coordinate's values over `[start, start+count)`, decoded, as f64.
pub(crate) fn coord_values(c: &Arc<Variable>, start: u64, count: u64) -> Result<Vec<f64>, PlotError> {
    let input = Input::new(c.clone()).map_err(PlotError::Bad)?;
    Ok(match input.read(&[start], &[count])? {
        Col::F32(v) => v.into_iter().map(f64::from).collect(),
        Col::F64(v) => v,
        Col::Bool(v) => v.into_iter().map(|b| f64::from(u8::from(b))).collect(),
    })
}

/// The pieces `(start, count)` of a longitude axis that `lo_hi` selects, west first.
fn lon_pieces(ds: &Dataset, dim: &str, lo: f64, hi: f64) -> Result<Vec<(u64, u64)>, PlotError> {
    let c = ds
        .variable(dim)
        .ok_or_else(|| PlotError::Bad(format!("'{dim}' has no coordinate to select values on")))?;
    let vals = coord_values(c, 0, c.shape[0])?;
    let (mn, mx) = vals.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(*x), b.max(*x))
    });
    let sel = |a: f64, b: f64| -> Result<Option<(u64, u64)>, PlotError> {
        match select::select(ds, dim, &format!("{a:?}"), &format!("{b:?}")) {
            Ok(p) => Ok(Some(p)),
            Err(e) if e.reason.contains("selects nothing") => Ok(None),
            Err(e) => Err(PlotError::Bad(e.to_string())),
        }
    };
    let (base, width) = if mx > 180.0 { (0.0, 360.0) } else { (-180.0, 360.0) };
    let inside = lo >= mn - 1e-9 && hi <= mx + 1e-9;
    let pieces: Vec<(u64, u64)> = if hi - lo >= width {
        sel(mn, mx)?.into_iter().collect()
    } else if inside {
        sel(lo, hi)?.into_iter().collect()
    } else {
        // shift both bounds into [base, base + 360)
        let wrap = |x: f64| base + (x - base).rem_euclid(width);
        let (a, b) = (wrap(lo), wrap(hi));
        if a <= b {
            sel(a, b)?.into_iter().collect()
        } else {
            [sel(a, mx)?, sel(mn, b)?].into_iter().flatten().collect()
        }
    };
    if pieces.is_empty() {
        return Err(PlotError::Bad(format!(
            "{dim}: {lo}_{hi} selects nothing of '{dim}' (values {mn}..{mx})"
        )));
    }
    Ok(pieces)
}

/// The pieces per dimension of the variable that the selection picks.
fn select(ds: &Dataset, v: &Variable, sel: &[(String, String)]) -> Result<Vec<Vec<(u64, u64)>>, PlotError> {
    let mut out: Vec<Vec<(u64, u64)>> = v.shape.iter().map(|n| vec![(0, *n)]).collect();
    for (dim, range) in sel {
        let ax = v.dims.iter().position(|d| d == dim).ok_or_else(|| {
            PlotError::Bad(format!(
                "'{dim}' is not a dimension of '{}'; its dimensions: {}",
                v.name,
                v.dims.join(", ")
            ))
        })?;
        out[ax] = if is_time(ds, dim) || ds.variable(dim).is_none() {
            vec![index_range(dim, range, v.shape[ax])?]
        } else {
            let bad = || {
                PlotError::Bad(format!(
                    "{dim}: '{range}' is not a value range lo_hi (two numbers, e.g. -30_30)"
                ))
            };
            // a negative upper bound: "-30_-10"; split at the '_' that follows a digit or '.'
            let (a, b) = split_range(range).ok_or_else(bad)?;
            let (lo, hi): (f64, f64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
            if !(lo.is_finite() && hi.is_finite()) {
                return Err(bad());
            }
            if is_lon(ds, dim) {
                lon_pieces(ds, dim, lo, hi)?
            } else {
                vec![select::select(ds, dim, a, b).map_err(|e| PlotError::Bad(e.to_string()))?]
            }
        };
    }
    Ok(out)
}

/// `lo_hi` split at its separator.
fn split_range(s: &str) -> Option<(&str, &str)> {
    s.split_once('_')
}

/// A region to read: start, count, and its offset along the split axis.
type Region = (Vec<u64>, Vec<u64>, u64);

/// The regions `(start, count, offset along the split axis)` the pieces make, and that
/// axis: only one dimension (longitude) may have several pieces.
fn regions(pieces: &[Vec<(u64, u64)>], shape: &[u64]) -> (Vec<Region>, Option<usize>) {
    let first: Vec<u64> = pieces.iter().map(|p| p[0].0).collect();
    let Some(ax) = pieces.iter().position(|p| p.len() > 1) else {
        return (vec![(first, shape.to_vec(), 0)], None);
    };
    let mut off = 0;
    let list = pieces[ax]
        .iter()
        .map(|(s, c)| {
            let (mut start, mut count) = (first.clone(), shape.to_vec());
            start[ax] = *s;
            count[ax] = *c;
            let r = (start, count, off);
            off += c;
            r
        })
        .collect();
    (list, Some(ax))
}

/// The selected values (decoded, f64) in C order of the selected shape, and whether the
/// data is float32.
fn read_selection(
    v: &Arc<Variable>,
    pieces: &[Vec<(u64, u64)>],
) -> Result<(Vec<f64>, Vec<u64>, bool), PlotError> {
    let input = Input::new(v.clone()).map_err(PlotError::Bad)?;
    let shape: Vec<u64> = pieces.iter().map(|p| p.iter().map(|x| x.1).sum()).collect();
    let n: u64 = shape.iter().product();
    let mut out =
        vec![f64::NAN; usize::try_from(n).map_err(|_| PlotError::TooLarge("selection too large".into()))?];
    let is_f32 = matches!(input.ty, super::expr::Ty::F32);
    let (list, multi) = regions(pieces, &shape);
    let ax = multi.unwrap_or(0);
    for (start, count, off) in list {
        let pc = count[ax];
        let vals: Vec<f64> = match input.read(&start, &count)? {
            Col::F32(v) => v.into_iter().map(f64::from).collect(),
            Col::F64(v) => v,
            Col::Bool(v) => v.into_iter().map(|b| f64::from(u8::from(b))).collect(),
        };
        if multi.is_none() {
            out = vals;
            break;
        }
        // copy the piece into the output at `off` along `ax`
        let inner: u64 = shape[ax + 1..].iter().product();
        let outer: u64 = shape[..ax].iter().product();
        for o in 0..outer {
            for k in 0..pc {
                let src = ((o * pc + k) * inner) as usize;
                let dst = ((o * shape[ax] + off + k) * inner) as usize;
                out[dst..dst + inner as usize].copy_from_slice(&vals[src..src + inner as usize]);
            }
        }
    }
    Ok((out, shape, is_f32))
}

/// numpy's `nanpercentile(values, q)` (linear interpolation), `None` without finite values.
fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let pos = q / 100.0 * (n - 1) as f64;
    let i = pos.floor() as usize;
    let f = pos - i as f64;
    let a = sorted[i];
    let b = sorted[(i + 1).min(n - 1)];
    Some(a + (b - a) * f)
}

/// The colour range: the request's, else `valid_min`/`valid_max` (or `valid_range`), else
/// the 2nd and 98th percentiles of the values (robust to outliers).
pub(crate) fn colour_range(v: &Variable, values: &[f64], req: Option<(f64, f64)>) -> (f64, f64) {
    if let Some(r) = req {
        return r;
    }
    let num = |k: &str| v.attrs.get(k).and_then(crate::attrs::AttrValue::first_f64);
    if let (Some(a), Some(b)) = (num("valid_min"), num("valid_max")) {
        return (a, b);
    }
    if let Some(crate::attrs::AttrValue::Floats(r)) = v.attrs.get("valid_range")
        && r.len() == 2
    {
        return (r[0], r[1]);
    }
    let mut finite: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    finite.sort_by(f64::total_cmp);
    match (percentile(&finite, 2.0), percentile(&finite, 98.0)) {
        (Some(a), Some(b)) => (a, b),
        _ => (0.0, 1.0),
    }
}

/// Title line: long name (or name) and variable name.
fn title(v: &Variable) -> String {
    match v.attrs.get_str("long_name") {
        Some(l) => format!("{l} ({})", v.name),
        None => v.name.clone(),
    }
}

/// A label for index `i` of dimension `dim` (a date for CF time).
fn step_label(ds: &Dataset, dim: &str, i: u64) -> String {
    let Some(c) = ds.variable(dim) else {
        return format!("{dim}[{i}]");
    };
    let Ok(vals) = coord_values(c, i, 1) else {
        return format!("{dim}[{i}]");
    };
    let x = vals.first().copied().unwrap_or(f64::NAN);
    if let Some(units) = c.attrs.get_str("units")
        && units.to_ascii_lowercase().contains(" since ")
        && let Ok(axis) = TimeAxis::new(units, c.attrs.get_str("calendar"))
        && let Ok(d) = axis.decode(x)
    {
        return format!("{dim}={d}");
    }
    format!("{dim}={}", render::label(x))
}

/// The variable to plot, else 404 naming the dataset's variables.
pub fn variable<'a>(ds: &'a Dataset, name: &str) -> Result<&'a Arc<Variable>, PlotError> {
    ds.variable(name).ok_or_else(|| {
        let mut names: Vec<&str> = ds.by_path.values().map(|v| v.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        PlotError::NotFound(format!(
            "no variable '{name}' in this dataset; variables: {}",
            names.join(", ")
        ))
    })
}

/// Builds the plot (a selection naming fewer dimensions than needed: see the first-step
/// rule below): validation, size caps, one read of the selection, rendering.
pub fn build(ds: &Dataset, req: &Request, max_source_bytes: u64) -> Result<Plot, PlotError> {
    let v = variable(ds, &req.var)?;
    let table = render::colormap(&req.cmap).ok_or_else(|| {
        PlotError::Bad(format!(
            "unknown colormap '{}'; allowed (matplotlib's names, _r reversed): {}",
            req.cmap,
            render::names().join(", ")
        ))
    })?;
    let mut pieces = select(ds, v, &req.selection)?;
    // A map (animation) of a variable with more dimensions shows the first step of every
    // dimension before the last two that the request leaves unselected, as hvplot's
    // widgets start on the first value (the animation runs over the first one left).
    if matches!(req.kind, Kind::Map | Kind::Animation) && v.dims.len() > 2 {
        let chosen = |ax: usize| req.selection.iter().any(|(d, _)| *d == v.dims[ax]);
        let lead = v.dims.len() - 2;
        let frames = (req.kind == Kind::Animation)
            .then(|| (0..lead).find(|a| chosen(*a) && pieces[*a][0].1 > 1).unwrap_or(0));
        for (ax, p) in pieces.iter_mut().enumerate().take(lead) {
            if !chosen(ax) && Some(ax) != frames {
                p.truncate(1);
                p[0].1 = 1;
            }
        }
    }
    let shape: Vec<u64> = pieces.iter().map(|p| p.iter().map(|x| x.1).sum()).collect();
    let kept: Vec<usize> = (0..shape.len()).filter(|a| shape[*a] > 1).collect();
    let want = match req.kind {
        Kind::Line => 1,
        Kind::Map => 2,
        Kind::Animation => 3,
    };
    if kept.len() != want {
        let desc: Vec<String> = v
            .dims
            .iter()
            .zip(&shape)
            .map(|(d, n)| format!("{d}: {n}"))
            .collect();
        return Err(PlotError::Bad(format!(
            "a {:?} plot needs {want} dimension(s) longer than 1 after the selection; '{}' selects {} ({}); select single steps of the others, e.g. time/0_1",
            req.kind,
            req.var,
            kept.len(),
            desc.join(", ")
        )
        .to_lowercase()));
    }
    let cells: u64 = shape.iter().product();
    if cells > MAX_CELLS {
        return Err(PlotError::TooLarge(format!(
            "the selection has {cells} cells; a plot holds at most {MAX_CELLS}: select a smaller range"
        )));
    }
    if req.kind == Kind::Animation && shape[kept[0]] > MAX_FRAMES {
        return Err(PlotError::TooLarge(format!(
            "{} frames; an animation holds at most {MAX_FRAMES}",
            shape[kept[0]]
        )));
    }
    let estimate = regions(&pieces, &shape).0.iter().fold(0u64, |a, (s, c, _)| {
        a.saturating_add(pipeline::estimate_region_bytes(v, s, c))
    });
    if estimate > max_source_bytes {
        return Err(PlotError::TooLarge(format!(
            "this plot would read about {estimate} bytes of source data; the limit is {max_source_bytes} (--max-source-bytes)"
        )));
    }
    let (values, _, is_f32) = read_selection(v, &pieces)?;
    let units = v.attrs.get_str("units").unwrap_or("").to_string();
    let selection: Vec<String> = v
        .dims
        .iter()
        .zip(&pieces)
        .zip(&shape)
        .filter(|((_, _), n)| **n == 1)
        .map(|((d, p), _)| step_label(ds, d, p[0].0))
        .collect();
    if req.kind == Kind::Line {
        let ax = kept[0];
        let dim = &v.dims[ax];
        let xs: Vec<f64> = match ds.variable(dim) {
            Some(c) if c.dims.len() == 1 => {
                let mut xs = Vec::new();
                for (s, n) in &pieces[ax] {
                    xs.extend(coord_values(c, *s, *n)?);
                }
                xs
            }
            _ => (0..shape[ax]).map(|i| i as f64).collect(),
        };
        let xunits = ds
            .variable(dim)
            .and_then(|c| c.attrs.get_str("units"))
            .unwrap_or("index");
        let ylabel = format!("{} [{units}] {}", v.name, selection.join(" "));
        let c = render::line_image(&xs, &values, &title(v), &ylabel, &format!("{dim} ({xunits})"));
        let png = render::png(&c, &[("Title", &title(v)), ("Units", &units)])?;
        return Ok(Plot {
            png,
            range: None,
            layout: None,
            frames: 1,
            lonlat: None,
        });
    }
    let (vmin, vmax) = colour_range(v, &values, req.range);
    let norm = Norm {
        vmin,
        vmax,
        f32: is_f32,
    };
    let (ya, xa) = (kept[kept.len() - 2], kept[kept.len() - 1]);
    let sub_base = format!(
        "[{units}]  range {} .. {}",
        render::label(vmin),
        render::label(vmax)
    );
    let frames_n = if req.kind == Kind::Animation {
        shape[kept[0]] as usize
    } else {
        1
    };
    let labels = |f: usize| {
        let mut sel = selection.clone();
        if req.kind == Kind::Animation {
            let d = &v.dims[kept[0]];
            sel.insert(0, step_label(ds, d, pieces[kept[0]][0].0 + f as u64));
        }
        format!("{sub_base}  {}", sel.join(" "))
    };
    if let Some(c) = super::curvilinear::coords(ds, v)? {
        if !((c.ya == ya && c.xa == xa) || (c.ya == xa && c.xa == ya)) {
            return Err(PlotError::Bad(format!(
                "'{}' is on a curvilinear grid over ({}, {}): a map needs those two dimensions longer than 1",
                req.var, v.dims[c.ya], v.dims[c.xa]
            )));
        }
        let rows = (pieces[c.ya][0].0, shape[c.ya]);
        let cols = (pieces[c.xa][0].0, shape[c.xa]);
        let index = super::curvilinear::index_block(&c, rows, cols, max_source_bytes)?;
        let per = (rows.1 * cols.1) as usize;
        let frames_vals: Vec<&[f64]> = (0..frames_n).map(|f| &values[f * per..(f + 1) * per]).collect();
        // the variable's C order of the block: rows first unless its column dimension comes first
        let at = |r: usize, col: usize| {
            if c.ya < c.xa {
                r * cols.1 as usize + col
            } else {
                col * rows.1 as usize + r
            }
        };
        let (canvases, layout, ll) =
            curvilinear_maps(&index, &frames_vals, &at, &norm, table, &title(v), &labels);
        let range = format!("{vmin},{vmax}");
        let png = render::apng(
            &canvases,
            500,
            &[("Title", &title(v)), ("Units", &units), ("Range", &range)],
        )?;
        return Ok(Plot {
            png,
            range: Some((vmin, vmax)),
            layout: Some(layout),
            frames: frames_n,
            lonlat: Some(ll),
        });
    }
    let (ny, nx) = (shape[ya] as usize, shape[xa] as usize);
    // north up: an ascending y coordinate is drawn bottom to top
    let flip = match ds.variable(&v.dims[ya]) {
        Some(c) if c.dims.len() == 1 => {
            let s = pieces[ya][0].0;
            let ys = coord_values(c, s, shape[ya])?;
            ys.first() < ys.last()
        }
        _ => false,
    };
    let scale = (600 / nx.max(ny).max(1)).clamp(1, 8) as u32;
    let per = ny * nx;
    let mut frames: Vec<Canvas> = Vec::with_capacity(frames_n);
    let mut layout = None;
    for f in 0..frames_n {
        let mut field = values[f * per..(f + 1) * per].to_vec();
        if flip {
            let mut out = Vec::with_capacity(per);
            for row in field.chunks(nx).rev() {
                out.extend_from_slice(row);
            }
            field = out;
        }
        let subtitle = labels(f);
        let (c, l) = render::map_image(&field, ny, nx, scale, &norm, table, &title(v), &subtitle);
        layout = Some(l);
        frames.push(c);
    }
    let range = format!("{vmin},{vmax}");
    let png = render::apng(
        &frames,
        500,
        &[("Title", &title(v)), ("Units", &units), ("Range", &range)],
    )?;
    Ok(Plot {
        png,
        range: Some((vmin, vmax)),
        layout,
        frames: frames_n,
        lonlat: None,
    })
}

/// The longer side of a curvilinear map's lon/lat area in pixels: about four pixels per
/// cell along the grid's longer side, within 360..=720.
fn lonlat_side(ny: usize, nx: usize) -> f64 {
    (4 * ny.max(nx)).clamp(360, 720) as f64
}

/// The frames of a curvilinear map on a lon/lat canvas over the index' extent: each pixel
/// centre shows [`super::curvilinear::Index::cell_at`] (searched once for all frames).
fn curvilinear_maps(
    index: &super::curvilinear::Index,
    frames: &[&[f64]],
    at: &dyn Fn(usize, usize) -> usize,
    norm: &Norm,
    table: &[u8; 768],
    title: &str,
    subtitle: &dyn Fn(usize) -> String,
) -> (Vec<Canvas>, MapLayout, LonLat) {
    let (west, south, east, north) = index.extent();
    let step = (east - west).max(north - south).max(1e-9) / lonlat_side(index.ny, index.nx);
    let w = (((east - west) / step).ceil() as u32).max(1);
    let h = (((north - south) / step).ceil() as u32).max(1);
    let cell: Vec<Option<usize>> = (0..h)
        .flat_map(|j| {
            (0..w).map(move |i| {
                let lon = west + (f64::from(i) + 0.5) * step;
                let lat = north - (f64::from(j) + 0.5) * step;
                index.cell_at(lon, lat)
            })
        })
        .collect();
    let ll = LonLat {
        west,
        north,
        step,
        width: w,
        height: h,
    };
    let mut out = Vec::with_capacity(frames.len());
    let mut layout = MapLayout { x: 0, y: 0, scale: 1 };
    for (f, vals) in frames.iter().enumerate() {
        let px: Vec<f64> = cell
            .iter()
            .map(|c| c.map_or(f64::NAN, |k| vals[at(k / index.nx, k % index.nx)]))
            .collect();
        let (c, l) = render::lonlat_image(
            &px,
            h as usize,
            w as usize,
            (west, north, step),
            norm,
            table,
            title,
            &subtitle(f),
        );
        layout = l;
        out.push(c);
    }
    (out, layout, ll)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_ranges_follow_python_slices() {
        assert_eq!(index_range("time", "0_12", 100).unwrap(), (0, 12));
        assert_eq!(index_range("time", "-12_0", 100).unwrap(), (88, 12));
        assert_eq!(index_range("time", "-12_-2", 100).unwrap(), (88, 10));
        assert_eq!(index_range("time", "5_1000", 100).unwrap(), (5, 95));
        assert!(index_range("time", "5_5", 100).is_err());
        assert!(index_range("time", "a_b", 100).is_err());
        assert!(index_range("time", "3", 100).is_err());
    }

    #[test]
    fn selection_pairs() {
        assert_eq!(parse_selection("time/0_1/lat/-30_30").unwrap().len(), 2);
        assert!(parse_selection("time/0_1/lat").is_err());
        assert!(parse_range("1,2").is_ok());
        assert!(parse_range("2,1").is_err());
        assert!(parse_range("nan,1").is_err());
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v: Vec<f64> = (0..11).map(f64::from).collect();
        assert_eq!(percentile(&v, 2.0), Some(0.2));
        assert_eq!(percentile(&v, 98.0), Some(9.8));
        assert_eq!(percentile(&[], 2.0), None);
    }
}
