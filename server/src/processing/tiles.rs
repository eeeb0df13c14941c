//! Map tiles (`/datasets/{id}/tiles/WebMercatorQuad/{z}/{y}/{x}.png`): a rectilinear
//! lat/lon field (or a curvilinear one: [`super::curvilinear`]'s nearest-cell rule) reprojected onto one Web-Mercator (EPSG:3857) tile, nearest cell per
//! output pixel, drawn with [`crate::render`]'s matplotlib colour tables.
//!
//! Each output pixel's centre is taken to Web-Mercator metres, then to lon/lat (the
//! spherical inverse, [`pixel_lonlat`]); the cell whose coordinate is nearest on each axis
//! is picked ([`nearest_cell`]; a global longitude axis wraps round its seam), and a pixel
//! outside the data's extent (half a step beyond the first and last coordinate) stays
//! transparent. Only the bounding region of the cells a tile touches is read, through the
//! same CF-decoding read as plots ([`super::derived`] over [`crate::pipeline`]), one step of
//! every other dimension: a tile of one time step reads that step's chunks, not the axis.

use std::sync::Arc;

use super::derived::Input;
use super::expr::{Col, Ty};
use super::plot::{self, PlotError};
use crate::dataset::cftime::TimeAxis;
use crate::dataset::{Dataset, Variable};
use crate::pipeline;
use crate::render::{self, Canvas, Norm};

/// The WGS84 equatorial radius Web Mercator uses (metres).
pub const EARTH_RADIUS: f64 = 6_378_137.0;
/// Half the width of the Web-Mercator square (metres): `π · R`.
pub const ORIGIN: f64 = std::f64::consts::PI * EARTH_RADIUS;
/// Highest zoom served (as WebMercatorQuad's tile matrix set defines, 0..=24).
pub const MAX_ZOOM: u32 = 24;
/// Largest tile side in pixels; more is refused (413).
pub const MAX_SIDE: u32 = 2048;
/// The latitude limit of Web Mercator (degrees).
pub const MAX_LAT: f64 = 85.051_128_779_806_59;

/// Selection methods of a dimension selector (`dim=method::value`), xarray's `sel` names.
pub const METHODS: &[&str] = &["nearest", "exact", "pad", "ffill", "backfill", "bfill"];

/// Lon/lat (degrees) of Web-Mercator metres `(mx, my)`: the spherical inverse
/// `lon = mx / R`, `lat = 2·atan(exp(my / R)) − π/2`.
pub fn mercator_to_lonlat(mx: f64, my: f64) -> (f64, f64) {
    let lon = (mx / EARTH_RADIUS).to_degrees();
    let lat = (2.0 * (my / EARTH_RADIUS).exp().atan() - std::f64::consts::FRAC_PI_2).to_degrees();
    (lon, lat)
}

/// Lon/lat of the centre of pixel `(px, py)` (column, row from the top) of tile `(z, x, y)`
/// drawn `w × h` pixels (XYZ / WebMercatorQuad numbering: row 0 at the north).
pub fn pixel_lonlat(z: u32, x: u32, y: u32, w: u32, h: u32, px: u32, py: u32) -> (f64, f64) {
    let size = 2.0 * ORIGIN / 2f64.powi(z.min(MAX_ZOOM) as i32);
    let mx = -ORIGIN + (f64::from(x) + (f64::from(px) + 0.5) / f64::from(w)) * size;
    let my = ORIGIN - (f64::from(y) + (f64::from(py) + 0.5) / f64::from(h)) * size;
    mercator_to_lonlat(mx, my)
}

/// The tile's bounds in degrees `(west, south, east, north)`.
pub fn tile_bounds(z: u32, x: u32, y: u32) -> (f64, f64, f64, f64) {
    let size = 2.0 * ORIGIN / 2f64.powi(z.min(MAX_ZOOM) as i32);
    let (w, n) = mercator_to_lonlat(-ORIGIN + f64::from(x) * size, ORIGIN - f64::from(y) * size);
    let (e, s) = mercator_to_lonlat(
        -ORIGIN + f64::from(x + 1) * size,
        ORIGIN - f64::from(y + 1) * size,
    );
    (w, s, e, n)
}

/// One axis of the source grid: its coordinate values (monotonic) and whether it is a
/// longitude axis that goes round the globe.
#[derive(Debug, Clone)]
pub struct Axis {
    /// Coordinate values in index order.
    pub vals: Vec<f64>,
    /// Longitudes: wrap the query into the axis' range; `global` also wraps the nearest
    /// search round the seam.
    pub lon: bool,
    /// The axis covers 360° (n · step ≈ 360).
    pub global: bool,
}

impl Axis {
    /// An axis from its values; `lon` for a longitude axis.
    pub fn new(vals: Vec<f64>, lon: bool) -> Axis {
        let n = vals.len();
        let global =
            lon && n > 1 && ((vals[n - 1] - vals[0]).abs() / (n - 1) as f64 * n as f64 - 360.0).abs() < 1e-6;
        Axis { vals, lon, global }
    }

    /// Half the step at each end (lower index end, upper index end); 0.5 for one value.
    fn half_steps(&self) -> (f64, f64) {
        let n = self.vals.len();
        if n < 2 {
            return (0.5, 0.5);
        }
        (
            (self.vals[1] - self.vals[0]).abs() / 2.0,
            (self.vals[n - 1] - self.vals[n - 2]).abs() / 2.0,
        )
    }
}

/// The index of the cell nearest to `x` on `axis` (numpy's `argmin(|vals − x|)`, the first
/// on a tie), `None` outside the axis' extent (half a step beyond its ends). Longitudes are
/// first wrapped into the axis' range (0..360 or −180..180); on a global axis the distance
/// is measured round the circle.
pub fn nearest_cell(axis: &Axis, x: f64) -> Option<usize> {
    let v = &axis.vals;
    let n = v.len();
    if n == 0 || !x.is_finite() {
        return None;
    }
    let (lo, hi) = (v[0].min(v[n - 1]), v[0].max(v[n - 1]));
    let x = if axis.lon {
        // into [base, base + 360) with base the axis' lower end rounded to the usual origin
        let base: f64 = if hi > 180.0 { 0.0 } else { -180.0 };
        let base = base.min(lo);
        base + (x - base).rem_euclid(360.0)
    } else {
        x
    };
    let dist = |a: f64| {
        let d = (a - x).abs();
        if axis.global { d.min(360.0 - d) } else { d }
    };
    if !axis.global {
        let (h0, h1) = axis.half_steps();
        let asc = v[0] <= v[n - 1];
        let (lo_h, hi_h) = if asc { (h0, h1) } else { (h1, h0) };
        if x < lo - lo_h || x > hi + hi_h {
            return None;
        }
    }
    // binary search for the neighbours, then the closer (first index on a tie)
    let asc = v[0] <= v[n - 1];
    let p = if asc {
        v.partition_point(|a| *a < x)
    } else {
        v.partition_point(|a| *a > x)
    };
    let mut cands = Vec::with_capacity(4);
    for i in [p.wrapping_sub(1), p] {
        if i < n {
            cands.push(i);
        }
    }
    if axis.global {
        cands.push(0);
        cands.push(n - 1);
    }
    cands.sort_unstable();
    cands.dedup();
    let mut best: Option<(usize, f64)> = None;
    for i in cands {
        let d = dist(v[i]);
        if best.is_none_or(|(_, bd)| d < bd) {
            best = Some((i, d));
        }
    }
    best.map(|(i, _)| i)
}

/// How a dimension other than lat/lon is selected: `dim=method::value`.
#[derive(Debug, Clone, PartialEq)]
pub struct DimSel {
    /// Dimension name.
    pub dim: String,
    /// One of [`METHODS`] (`nearest` when the request names none).
    pub method: String,
    /// The value: a date for a CF time axis, a number for other coordinates, or an index.
    pub value: String,
}

/// A tile request, parsed.
#[derive(Debug, Clone)]
pub struct Request {
    /// Variable name.
    pub var: String,
    /// matplotlib colormap name.
    pub cmap: String,
    /// Colour range from the request.
    pub range: Option<(f64, f64)>,
    /// Selectors of the other dimensions (unselected: the first step).
    pub dims: Vec<DimSel>,
    /// Zoom, column, row.
    pub z: u32,
    /// Column.
    pub x: u32,
    /// Row.
    pub y: u32,
    /// Output width in pixels.
    pub width: u32,
    /// Output height in pixels.
    pub height: u32,
}

/// The rendered tile.
#[derive(Debug)]
pub struct Tile {
    /// PNG bytes.
    pub png: Vec<u8>,
    /// Colour range used.
    pub range: (f64, f64),
    /// Source cells read.
    pub cells_read: u64,
}

/// Parses `method::value` (or a bare value: `nearest`).
pub fn parse_dim(dim: &str, s: &str) -> Result<DimSel, PlotError> {
    let (method, value) = match s.split_once("::") {
        Some((m, v)) => (m.to_string(), v.to_string()),
        None => ("nearest".to_string(), s.to_string()),
    };
    if !METHODS.contains(&method.as_str()) {
        return Err(PlotError::Bad(format!(
            "{dim}: unknown selection method '{method}'; allowed: {}",
            METHODS.join(", ")
        )));
    }
    Ok(DimSel {
        dim: dim.to_string(),
        method,
        value,
    })
}

/// The lat and lon dimensions of `v` (by their coordinates' units or names), with their
/// axes: the last two dimensions, in either order.
pub fn grid(ds: &Dataset, v: &Variable) -> Result<(usize, usize, Axis, Axis), PlotError> {
    let is_lat = |d: &str| {
        let u = ds
            .variable(d)
            .and_then(|c| c.attrs.get_str("units").map(str::to_ascii_lowercase));
        u.is_some_and(|u| u == "degrees_north" || u == "degree_north") || matches!(d, "lat" | "latitude")
    };
    let nd = v.dims.len();
    let not = || {
        PlotError::Bad(format!(
            "'{}' is not on a lat/lon grid (its last two dimensions must be latitude and longitude with 1-D coordinates, or its coordinates attribute must name 2-D latitude/longitude over them; dimensions: {})",
            v.name,
            v.dims.join(", ")
        ))
    };
    if nd < 2 {
        return Err(not());
    }
    let (a, b) = (nd - 2, nd - 1);
    let (ya, xa) = if is_lat(&v.dims[a]) && plot::is_lon(ds, &v.dims[b]) {
        (a, b)
    } else if is_lat(&v.dims[b]) && plot::is_lon(ds, &v.dims[a]) {
        (b, a)
    } else {
        return Err(not());
    };
    let axis = |ax: usize, lon: bool| -> Result<Axis, PlotError> {
        let c = ds.variable(&v.dims[ax]).ok_or_else(not)?;
        if c.dims.len() != 1 {
            return Err(not());
        }
        let vals = plot::coord_values(c, 0, c.shape[0])?;
        let asc = vals.windows(2).all(|w| w[0] < w[1]);
        let desc = vals.windows(2).all(|w| w[0] > w[1]);
        if vals.is_empty() || !(asc || desc) || vals.iter().any(|x| !x.is_finite()) {
            return Err(PlotError::Bad(format!(
                "coordinate '{}' is not strictly monotonic; tiles need a rectilinear grid",
                v.dims[ax]
            )));
        }
        Ok(Axis::new(vals, lon))
    };
    Ok((ya, xa, axis(ya, false)?, axis(xa, true)?))
}

/// The horizontal grid of a variable: rectilinear (1-D latitude and longitude dimensions)
/// or curvilinear (2-D latitude/longitude named in its `coordinates` attribute).
#[derive(Debug, Clone)]
pub enum Grid {
    /// Rows (latitude) and columns (longitude) dimension positions with their axes.
    Rect(usize, usize, Axis, Axis),
    /// The 2-D coordinates (rows: their first dimension).
    Curv(super::curvilinear::Coords),
}

impl Grid {
    /// Positions of the row and column dimensions in the variable's dimensions.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            Grid::Rect(ya, xa, _, _) => (*ya, *xa),
            Grid::Curv(c) => (c.ya, c.xa),
        }
    }
}

/// The grid of `v`: rectilinear when [`grid`] finds one, else curvilinear, else
/// [`grid`]'s 400 (an inconsistent 2-D latitude/longitude is a 400 naming it).
pub fn spatial(ds: &Dataset, v: &Variable) -> Result<Grid, PlotError> {
    match grid(ds, v) {
        Ok((ya, xa, ay, ax)) => Ok(Grid::Rect(ya, xa, ay, ax)),
        Err(e) => match super::curvilinear::coords(ds, v)? {
            Some(c) => Ok(Grid::Curv(c)),
            None => Err(e),
        },
    }
}

/// The index `sel` picks on dimension `dim` of length `n`.
pub fn select_index(ds: &Dataset, sel: &DimSel, n: u64) -> Result<u64, PlotError> {
    let dim = &sel.dim;
    let as_index = || -> Option<Result<u64, PlotError>> {
        let i: i64 = sel.value.parse().ok()?;
        let n_i = i64::try_from(n).ok()?;
        let j = if i < 0 { i + n_i } else { i };
        Some(if (0..n_i).contains(&j) {
            Ok(j as u64)
        } else {
            Err(PlotError::Bad(format!(
                "{dim}: index {i} is outside 0..{n} (negatives count from the end)"
            )))
        })
    };
    let Some(c) = ds.variable(dim).filter(|c| c.dims.len() == 1 && c.shape[0] == n) else {
        return as_index().unwrap_or_else(|| {
            Err(PlotError::Bad(format!(
                "{dim}: '{}' is not an index (the dimension has no coordinate; 0..{n})",
                sel.value
            )))
        });
    };
    let vals = plot::coord_values(c, 0, n)?;
    let time = plot::is_time(ds, dim);
    let x = if time {
        let looks_date = sel.value.contains(['-', ':', 'T']) && sel.value.parse::<i64>().is_err();
        if !looks_date {
            return as_index().unwrap_or_else(|| {
                Err(PlotError::Bad(format!(
                    "{dim}: '{}' is neither a date (YYYY-MM[-DD[Thh[:mm[:ss]]]]) nor an index 0..{n}",
                    sel.value
                )))
            });
        }
        let units = c.attrs.get_str("units").unwrap_or("");
        let axis = TimeAxis::new(units, c.attrs.get_str("calendar"))
            .map_err(|e| PlotError::Bad(format!("{dim}: not a CF time coordinate: {e}")))?;
        let s = sel.value.strip_suffix('Z').unwrap_or(&sel.value);
        let (d0, _) = super::select::date_bounds(s, &axis).ok_or_else(|| {
            PlotError::Bad(format!(
                "{dim}: '{}' is not a date of the {:?} calendar (YYYY-MM[-DD[Thh[:mm[:ss]]]]) nor an index",
                sel.value,
                axis.calendar()
            ))
        })?;
        axis.encode(&d0)
    } else {
        sel.value
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| PlotError::Bad(format!("{dim}: '{}' is not a number", sel.value)))?
    };
    pick(&vals, x, &sel.method).map(|i| i as u64).ok_or_else(|| {
        let ends = match (vals.first(), vals.last()) {
            (Some(a), Some(b)) => format!("{a}..{b}"),
            _ => "empty".into(),
        };
        PlotError::Bad(format!(
            "{dim}: no value {}{} '{}' (coordinate values {ends}{})",
            sel.method,
            if sel.method == "exact" {
                " equal to"
            } else {
                " for"
            },
            sel.value,
            if time { ", as CF time numbers" } else { "" }
        ))
    })
}

/// xarray's `sel(method=...)` on one coordinate: the index of `x` exactly, the nearest
/// (first on a tie), the last at or before (`pad`) or the first at or after (`backfill`).
pub fn pick(vals: &[f64], x: f64, method: &str) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, v) in vals.iter().enumerate() {
        let d = match method {
            "exact" if *v == x => 0.0,
            "exact" => continue,
            "pad" | "ffill" if *v <= x => x - v,
            "backfill" | "bfill" if *v >= x => v - x,
            "pad" | "ffill" | "backfill" | "bfill" => continue,
            _ => (v - x).abs(),
        };
        if best.is_none_or(|(_, bd)| d < bd) {
            best = Some((i, d));
        }
    }
    best.map(|(i, _)| i)
}

/// The start index of every dimension except lat/lon (`ya`, `xa`) that the request picks.
pub fn steps(
    ds: &Dataset,
    v: &Variable,
    ya: usize,
    xa: usize,
    dims: &[DimSel],
) -> Result<Vec<u64>, PlotError> {
    let mut start = vec![0u64; v.dims.len()];
    for sel in dims {
        let ax = v
            .dims
            .iter()
            .position(|d| *d == sel.dim)
            .filter(|a| *a != ya && *a != xa);
        let Some(ax) = ax else {
            let others: Vec<&str> = v
                .dims
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != ya && *i != xa)
                .map(|(_, d)| d.as_str())
                .collect();
            return Err(PlotError::Bad(format!(
                "'{}' is not a selectable dimension of '{}'; selectable: {}",
                sel.dim,
                v.name,
                if others.is_empty() {
                    "none".into()
                } else {
                    others.join(", ")
                }
            )));
        };
        start[ax] = select_index(ds, sel, v.shape[ax])?;
    }
    Ok(start)
}

/// Reads the 2-D field (rows `r0..r1`, columns `c0..c1`) at `start`'s other steps, decoded,
/// as rows of the lat axis by columns of the lon axis.
fn read_field(
    v: &Arc<Variable>,
    start: &[u64],
    (ya, xa): (usize, usize),
    (r0, r1): (usize, usize),
    (c0, c1): (usize, usize),
) -> Result<(Vec<f64>, bool), PlotError> {
    let input = Input::new(v.clone()).map_err(PlotError::Bad)?;
    let mut s = start.to_vec();
    let mut count = vec![1u64; v.dims.len()];
    s[ya] = r0 as u64;
    count[ya] = (r1 - r0) as u64;
    s[xa] = c0 as u64;
    count[xa] = (c1 - c0) as u64;
    let vals: Vec<f64> = match input.read(&s, &count)? {
        Col::F32(v) => v.into_iter().map(f64::from).collect(),
        Col::F64(v) => v,
        Col::Bool(v) => v.into_iter().map(|b| f64::from(u8::from(b))).collect(),
    };
    let (nr, nc) = (r1 - r0, c1 - c0);
    // C order of the region: if lon comes before lat, transpose to rows = lat
    let field = if xa < ya {
        let mut t = vec![f64::NAN; nr * nc];
        for c in 0..nc {
            for r in 0..nr {
                t[r * nc + c] = vals[c * nr + r];
            }
        }
        t
    } else {
        vals
    };
    Ok((field, matches!(input.ty, Ty::F32)))
}

/// The colour range of a request at `start` without one: `valid_min`/`valid_max`, else the
/// plot route's robust rule (2nd–98th percentile) over the whole lat/lon field at that step.
pub fn field_range(
    ds: &Dataset,
    var: &str,
    dims: &[DimSel],
    req: Option<(f64, f64)>,
    max_source_bytes: u64,
) -> Result<(f64, f64), PlotError> {
    let v = plot::variable(ds, var)?;
    let (ya, xa) = spatial(ds, v)?.dims();
    let start = steps(ds, v, ya, xa, dims)?;
    if let Some(r) = req {
        return Ok(r);
    }
    if has_valid(v) {
        return Ok(plot::colour_range(v, &[], None));
    }
    let (ny, nx) = (v.shape[ya] as usize, v.shape[xa] as usize);
    check_bytes(v, &start, (ya, xa), (0, ny), (0, nx), max_source_bytes)?;
    let (field, _) = read_field(v, &start, (ya, xa), (0, ny), (0, nx))?;
    Ok(plot::colour_range(v, &field, None))
}

fn has_valid(v: &Variable) -> bool {
    v.attrs.get("valid_range").is_some()
        || (v.attrs.get("valid_min").is_some() && v.attrs.get("valid_max").is_some())
}

fn check_bytes(
    v: &Variable,
    start: &[u64],
    (ya, xa): (usize, usize),
    (r0, r1): (usize, usize),
    (c0, c1): (usize, usize),
    max: u64,
) -> Result<(), PlotError> {
    let mut s = start.to_vec();
    let mut count = vec![1u64; v.dims.len()];
    s[ya] = r0 as u64;
    count[ya] = (r1 - r0) as u64;
    s[xa] = c0 as u64;
    count[xa] = (c1 - c0) as u64;
    let est = pipeline::estimate_region_bytes(v, &s, &count);
    if max > 0 && est > max {
        return Err(PlotError::TooLarge(format!(
            "this tile would read about {est} bytes of source data; the limit is {max} (--max-source-bytes)"
        )));
    }
    Ok(())
}

/// Renders one tile.
pub fn build(ds: &Dataset, req: &Request, max_source_bytes: u64) -> Result<Tile, PlotError> {
    let v = plot::variable(ds, &req.var)?;
    let table = render::colormap(&req.cmap).ok_or_else(|| {
        PlotError::Bad(format!(
            "unknown colormap '{}' in style=raster/{}; allowed (matplotlib's names, _r reversed): {}",
            req.cmap,
            req.cmap,
            render::names().join(", ")
        ))
    })?;
    let (ya, xa, ay, ax) = match spatial(ds, v)? {
        Grid::Rect(ya, xa, ay, ax) => (ya, xa, ay, ax),
        Grid::Curv(c) => return curvilinear_tile(ds, v, &c, req, table, max_source_bytes),
    };
    let start = steps(ds, v, ya, xa, &req.dims)?;
    let (w, h) = (req.width, req.height);
    // the source cell of every pixel (None: outside the data)
    let cols: Vec<Option<usize>> = (0..w)
        .map(|px| nearest_cell(&ax, pixel_lonlat(req.z, req.x, req.y, w, h, px, 0).0))
        .collect();
    let rows: Vec<Option<usize>> = (0..h)
        .map(|py| nearest_cell(&ay, pixel_lonlat(req.z, req.x, req.y, w, h, 0, py).1))
        .collect();
    let span = |v: &[Option<usize>]| {
        let it = v.iter().flatten();
        it.clone().min().copied().zip(it.max().copied())
    };
    let range_req = req.range;
    let (Some((r0, r1)), Some((c0, c1))) = (span(&rows), span(&cols)) else {
        let range = match range_req {
            Some(r) => r,
            None => field_range(ds, &req.var, &req.dims, None, max_source_bytes)?,
        };
        let c = Canvas::new(w, h, [0, 0, 0, 0]);
        return Ok(Tile {
            png: render::png(&c, &[])?,
            range,
            cells_read: 0,
        });
    };
    let (r1, c1) = (r1 + 1, c1 + 1);
    check_bytes(v, &start, (ya, xa), (r0, r1), (c0, c1), max_source_bytes)?;
    let (field, is_f32) = read_field(v, &start, (ya, xa), (r0, r1), (c0, c1))?;
    let (vmin, vmax) = match range_req {
        Some(r) => r,
        None => field_range(ds, &req.var, &req.dims, None, max_source_bytes)?,
    };
    let norm = Norm {
        vmin,
        vmax,
        f32: is_f32,
    };
    let nc = c1 - c0;
    let mut c = Canvas::new(w, h, [0, 0, 0, 0]);
    for (py, r) in rows.iter().enumerate() {
        let Some(r) = r else { continue };
        for (px, col) in cols.iter().enumerate() {
            let Some(col) = col else { continue };
            let x = field[(r - r0) * nc + (col - c0)];
            if let Some(i) = norm.index(x) {
                let k = usize::from(i) * 3;
                c.put(px as i64, py as i64, [table[k], table[k + 1], table[k + 2], 255]);
            }
        }
    }
    let range = format!("{vmin},{vmax}");
    Ok(Tile {
        png: render::png(&c, &[("Range", &range)])?,
        range: (vmin, vmax),
        cells_read: ((r1 - r0) * nc) as u64,
    })
}

/// A tile of a curvilinear variable: each pixel centre shows
/// [`super::curvilinear::Index::cell_at`] of the whole grid (its index cached across tiles);
/// only the bounding index region of the cells drawn is read.
fn curvilinear_tile(
    ds: &Dataset,
    v: &Arc<Variable>,
    c: &super::curvilinear::Coords,
    req: &Request,
    table: &[u8; 768],
    max_source_bytes: u64,
) -> Result<Tile, PlotError> {
    let (ya, xa) = (c.ya, c.xa);
    let start = steps(ds, v, ya, xa, &req.dims)?;
    let index = super::curvilinear::index_all(c, max_source_bytes)?;
    let (w, h) = (req.width, req.height);
    let mut cells: Vec<Option<usize>> = Vec::with_capacity(w as usize * h as usize);
    let (mut r0, mut r1, mut c0, mut c1) = (usize::MAX, 0, usize::MAX, 0);
    for py in 0..h {
        for px in 0..w {
            let (lon, lat) = pixel_lonlat(req.z, req.x, req.y, w, h, px, py);
            let cell = index.cell_at(lon, lat);
            if let Some(k) = cell {
                let (r, col) = (k / index.nx, k % index.nx);
                (r0, r1, c0, c1) = (r0.min(r), r1.max(r), c0.min(col), c1.max(col));
            }
            cells.push(cell);
        }
    }
    let (vmin, vmax) = match req.range {
        Some(r) => r,
        None => field_range(ds, &req.var, &req.dims, None, max_source_bytes)?,
    };
    let mut canvas = Canvas::new(w, h, [0, 0, 0, 0]);
    let range = format!("{vmin},{vmax}");
    if r0 == usize::MAX {
        return Ok(Tile {
            png: render::png(&canvas, &[("Range", &range)])?,
            range: (vmin, vmax),
            cells_read: 0,
        });
    }
    let (r1, c1) = (r1 + 1, c1 + 1);
    check_bytes(v, &start, (ya, xa), (r0, r1), (c0, c1), max_source_bytes)?;
    let (field, is_f32) = read_field(v, &start, (ya, xa), (r0, r1), (c0, c1))?;
    let norm = Norm {
        vmin,
        vmax,
        f32: is_f32,
    };
    let nc = c1 - c0;
    for (p, cell) in cells.iter().enumerate() {
        let Some(k) = cell else { continue };
        let (r, col) = (k / index.nx, k % index.nx);
        if let Some(i) = norm.index(field[(r - r0) * nc + (col - c0)]) {
            let t = usize::from(i) * 3;
            let (px, py) = (p % w as usize, p / w as usize);
            canvas.put(px as i64, py as i64, [table[t], table[t + 1], table[t + 2], 255]);
        }
    }
    Ok(Tile {
        png: render::png(&canvas, &[("Range", &range)])?,
        range: (vmin, vmax),
        cells_read: ((r1 - r0) * nc) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn mercator_inverse_known_values() {
        assert_eq!(mercator_to_lonlat(0.0, 0.0), (0.0, 0.0));
        let (lon, lat) = mercator_to_lonlat(ORIGIN, ORIGIN);
        assert!(close(lon, 180.0) && close(lat, MAX_LAT), "{lon} {lat}");
        // 1113194.9079327357 m is 10°E; 1118889.9748579594 m is 10°N (pyproj EPSG:3857)
        let (lon, lat) = mercator_to_lonlat(1_113_194.907_932_735_7, 1_118_889.974_857_959_4);
        assert!(close(lon, 10.0) && close(lat, 10.0), "{lon} {lat}");
    }

    #[test]
    fn tile_bounds_and_pixel_centres() {
        let (w, s, e, n) = tile_bounds(0, 0, 0);
        assert!(close(w, -180.0) && close(e, 180.0) && close(n, MAX_LAT) && close(s, -MAX_LAT));
        let (w, s, e, n) = tile_bounds(1, 1, 0);
        assert!(close(w, 0.0) && close(e, 180.0) && close(s, 0.0) && close(n, MAX_LAT));
        // the centre pixel pair of a 2x2 zoom-0 tile: ±90° longitude, equal and opposite lats
        let (lon, lat) = pixel_lonlat(0, 0, 0, 2, 2, 0, 0);
        assert!(close(lon, -90.0) && lat > 60.0, "{lon} {lat}");
        let (lon2, lat2) = pixel_lonlat(0, 0, 0, 2, 2, 1, 1);
        assert!(close(lon2, 90.0) && close(lat2, -lat));
    }

    #[test]
    fn nearest_cell_on_grids() {
        // 0..360 longitudes, 2.5° steps: global, wraps
        let lon = Axis::new((0..144).map(|i| f64::from(i) * 2.5).collect(), true);
        assert!(lon.global);
        assert_eq!(nearest_cell(&lon, 0.0), Some(0));
        assert_eq!(nearest_cell(&lon, -1.0), Some(0)); // 359 -> nearest across the seam
        assert_eq!(nearest_cell(&lon, -2.0), Some(143)); // 358 -> 357.5
        assert_eq!(nearest_cell(&lon, 179.0), Some(72));
        assert_eq!(nearest_cell(&lon, -179.0), Some(72)); // 181 -> 180
        assert_eq!(nearest_cell(&lon, 1.25), Some(0)); // tie: the first
        // -180..180 regional axis: outside half a step -> None
        let reg = Axis::new(vec![-10.0, -9.0, -8.0], true);
        assert!(!reg.global);
        assert_eq!(nearest_cell(&reg, -10.4), Some(0));
        assert_eq!(nearest_cell(&reg, -10.6), None);
        assert_eq!(nearest_cell(&reg, 350.0), Some(0)); // wrapped into -180..180
        // descending latitude
        let lat = Axis::new(vec![60.0, 30.0, 0.0, -30.0, -60.0], false);
        assert_eq!(nearest_cell(&lat, 70.0), Some(0));
        assert_eq!(nearest_cell(&lat, 76.0), None);
        assert_eq!(nearest_cell(&lat, 44.0), Some(1));
        assert_eq!(nearest_cell(&lat, -44.0), Some(3));
        assert_eq!(nearest_cell(&lat, -75.0), Some(4));
    }

    #[test]
    fn pick_follows_sel_methods() {
        let v = [0.0, 10.0, 20.0];
        assert_eq!(pick(&v, 12.0, "nearest"), Some(1));
        assert_eq!(pick(&v, 12.0, "pad"), Some(1));
        assert_eq!(pick(&v, 12.0, "backfill"), Some(2));
        assert_eq!(pick(&v, 12.0, "exact"), None);
        assert_eq!(pick(&v, 20.0, "exact"), Some(2));
        assert_eq!(pick(&v, -1.0, "pad"), None);
        assert!(parse_dim("time", "bogus::1").is_err());
        assert_eq!(parse_dim("time", "2000-01").unwrap().method, "nearest");
    }
}
