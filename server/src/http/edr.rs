//! OGC API EDR-style extraction: `/datasets/{id}/edr/position` (a time series at a point)
//! and `/datasets/{id}/edr/area` (the cells of a polygon), with xpublish-edr's parameters
//! (`coords` as WKT, `parameter-name`, `datetime`, `z`, `crs`, `method`, `f`, and other
//! dimensions selected by name) answered as CoverageJSON (default), CSV or netCDF-3.
//!
//! Semantics, so that a value equals what xarray selects on the dataset opened with its
//! defaults:
//! - the cell of a point is `ds.sel(lon=x, lat=y, method="nearest")` as pandas resolves
//!   it ([`nearest`]: ties go to the larger coordinate value on ascending and descending
//!   axes alike); a longitude is first brought into the dataset's convention (`-10` on a
//!   0..360 axis is `350`); a point farther than half a cell outside the axis' extent is
//!   refused, as are 2-D (curvilinear) coordinates, which `.sel` cannot select on either;
//! - an area is the cells whose *centres* fall inside the polygon (even-odd rule, a centre
//!   on the boundary may go either way); CoverageJSON and netCDF answer the bounding grid of
//!   those cells with the others null / NaN, CSV only the cells inside;
//! - `datetime=a/b` (`..` for an open end) is `.sel(time=slice(a, b))` with partial dates
//!   resolved in the axis' CF calendar by the parser value-range selections of products use
//!   ([`select::select_open`]); a single instant selects the nearest time step;
//!   `z=v` and `<dim>=v` select the nearest value, `z=a/b` a value range;
//! - values are decoded as xarray decodes them (`_FillValue`/`missing_value` masked,
//!   `scale_factor`/`add_offset` applied) by the same decoder derived variables use.
//!
//! A point's time series reads only the source chunks holding that point: one
//! [`crate::pipeline::read_region`] of the selected region; its estimated source bytes (from
//! the chunk index) are checked against `--max-source-bytes` first (413) and reported in
//! the `X-Cloudify-Source-Bytes` header. Nothing in a request is evaluated.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::zarr::served;
use crate::dataset::cftime::{Calendar, CfDate, TimeAxis};
use crate::dataset::{Dataset, Variable};
use crate::pipeline;
use crate::processing::derived::Input;
use crate::processing::expr::Col;
use crate::processing::select;
use crate::state::AppState;

/// The most values (cells × parameters) one answer holds.
pub const MAX_VALUES: u64 = 5_000_000;

/// The query parameters every EDR query takes (others name dimensions).
const KNOWN: &[&str] = &["coords", "parameter-name", "datetime", "z", "crs", "f", "method"];

/// Output formats (`f=`).
const FORMATS: &[&str] = &["cf_covjson", "csv", "nc"];

/// Which query a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Query {
    Position,
    Area,
}

/// A parsed WKT geometry (longitude, latitude pairs).
#[derive(Debug, Clone, PartialEq)]
enum Geometry {
    Point(f64, f64),
    /// Rings: the outer one first, then holes (even-odd rule over all of them).
    Polygon(Vec<Vec<(f64, f64)>>),
}

fn bad(m: impl Into<String>) -> ApiError {
    ApiError::bad_request(m)
}

/// A finite number of a WKT coordinate.
fn wkt_num(s: &str, wkt: &str) -> Result<f64, String> {
    let x: f64 = s
        .parse()
        .map_err(|_| format!("coords: '{s}' in '{wkt}' is not a number"))?;
    if x.is_finite() {
        Ok(x)
    } else {
        Err(format!("coords: '{s}' in '{wkt}' is not a finite number"))
    }
}

/// `x y` pairs separated by commas.
fn wkt_pairs(body: &str, wkt: &str) -> Result<Vec<(f64, f64)>, String> {
    body.split(',')
        .map(|p| {
            let t: Vec<&str> = p.split_whitespace().collect();
            match t.as_slice() {
                [x, y] => Ok((wkt_num(x, wkt)?, wkt_num(y, wkt)?)),
                _ => Err(format!(
                    "coords: '{}' in '{wkt}' is not a coordinate pair 'lon lat'",
                    p.trim()
                )),
            }
        })
        .collect()
}

/// Parses `POINT(lon lat)` or `POLYGON((lon lat, ...), (hole...))` (case-insensitive,
/// spaces allowed), the WKT forms xpublish-edr's position and area queries take.
fn parse_wkt(wkt: &str) -> Result<Geometry, String> {
    let s = wkt.trim();
    let open = s.find('(').ok_or_else(|| {
        format!("coords: '{wkt}' is not WKT: expected POINT(lon lat) or POLYGON((lon lat, ...))")
    })?;
    let kind = s[..open].trim().to_ascii_uppercase();
    let rest = s[open..].trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("coords: unbalanced parentheses in '{wkt}'"))?;
    match kind.as_str() {
        "POINT" => {
            if inner.contains(['(', ')']) {
                return Err(format!("coords: unexpected parenthesis in '{wkt}'"));
            }
            match wkt_pairs(inner, wkt)?.as_slice() {
                [(x, y)] => Ok(Geometry::Point(*x, *y)),
                _ => Err(format!("coords: POINT takes one 'lon lat' pair ('{wkt}')")),
            }
        }
        "POLYGON" => {
            let mut rings = Vec::new();
            let mut r = inner.trim();
            while !r.is_empty() {
                let body = r
                    .strip_prefix('(')
                    .ok_or_else(|| format!("coords: expected '(' starting a ring in '{wkt}'"))?;
                let close = body
                    .find(')')
                    .ok_or_else(|| format!("coords: unclosed ring in '{wkt}'"))?;
                let ring = wkt_pairs(&body[..close], wkt)?;
                if ring.len() < 4 || ring.first() != ring.last() {
                    return Err(format!(
                        "coords: a polygon ring needs at least 4 points, the last equal to the first ('{wkt}')"
                    ));
                }
                rings.push(ring);
                r = body[close + 1..].trim_start();
                if let Some(t) = r.strip_prefix(',') {
                    r = t.trim_start();
                    if r.is_empty() {
                        return Err(format!("coords: trailing ',' in '{wkt}'"));
                    }
                } else if !r.is_empty() {
                    return Err(format!("coords: unexpected '{r}' in '{wkt}'"));
                }
            }
            if rings.is_empty() {
                return Err(format!("coords: empty POLYGON in '{wkt}'"));
            }
            Ok(Geometry::Polygon(rings))
        }
        k => Err(format!(
            "coords: '{k}' geometries are not supported here; expected POINT(lon lat) for /edr/position or POLYGON((lon lat, ...)) for /edr/area"
        )),
    }
}

/// Whether `(x, y)` lies inside the rings (even-odd rule).
fn inside(rings: &[Vec<(f64, f64)>], x: f64, y: f64) -> bool {
    let mut c = false;
    for ring in rings {
        for w in ring.windows(2) {
            let ((x1, y1), (x2, y2)) = (w[0], w[1]);
            if (y1 > y) != (y2 > y) && x < (x2 - x1) * (y - y1) / (y2 - y1) + x1 {
                c = !c;
            }
        }
    }
    c
}

/// The position `ds.sel(dim=x, method="nearest")` selects on a monotonic index, as pandas'
/// `Index.get_indexer(method="nearest")` computes it: an exact match, else the closer of
/// the neighbours before and after `x` in index order; a tie goes to the later one on an
/// ascending index (`<`) and the earlier one on a descending index (`<=`) — the larger
/// value either way. `None`: empty or not monotonic (pandas refuses it too).
pub fn nearest(vals: &[f64], x: f64) -> Option<usize> {
    let n = vals.len();
    if n == 0 {
        return None;
    }
    let asc = vals.windows(2).all(|w| w[0] <= w[1]);
    let desc = vals.windows(2).all(|w| w[0] >= w[1]);
    if !asc && !desc {
        return None;
    }
    if let Some(i) = vals.iter().position(|v| *v == x) {
        return Some(i);
    }
    let p = if asc {
        vals.partition_point(|v| *v < x)
    } else {
        vals.partition_point(|v| *v > x)
    };
    Some(match (p.checked_sub(1), (p < n).then_some(p)) {
        (Some(l), Some(r)) => {
            let (dl, dr) = ((vals[l] - x).abs(), (vals[r] - x).abs());
            let left = if asc { dl < dr } else { dl <= dr };
            if left { l } else { r }
        }
        (Some(l), None) => l,
        (None, Some(r)) => r,
        (None, None) => return None,
    })
}

/// What a dimension of the extracted variables is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    X,
    Y,
    T,
    Z,
    Other,
}

impl Kind {
    /// The CoverageJSON axis name.
    fn axis(self, dim: &str) -> String {
        match self {
            Kind::X => "x".into(),
            Kind::Y => "y".into(),
            Kind::T => "t".into(),
            Kind::Z => "z".into(),
            Kind::Other => dim.into(),
        }
    }
}

/// One dimension of the extraction: what it is, its coordinate, the selected positions.
#[derive(Debug, Clone)]
struct Axis {
    dim: String,
    kind: Kind,
    coord: Option<Arc<Variable>>,
    start: u64,
    count: u64,
    /// Selected by one value (`z=v`, `<dim>=v`): a scalar coordinate in netCDF, as
    /// `.sel(dim=v, method="nearest")` leaves it.
    scalar: bool,
}

fn lower_attr(v: &Variable, k: &str) -> String {
    v.attrs.get_str(k).unwrap_or("").to_ascii_lowercase()
}

/// The kind of dimension `dim` from its 1-D coordinate's CF attributes (or usual names).
fn kind_of(ds: &Dataset, dim: &str) -> (Kind, Option<Arc<Variable>>) {
    let Some(c) = ds
        .variable(dim)
        .filter(|c| c.dims.len() == 1 && c.dims[0] == dim)
        .cloned()
    else {
        return (Kind::Other, None);
    };
    let (sn, units, axis) = (
        lower_attr(&c, "standard_name"),
        lower_attr(&c, "units"),
        lower_attr(&c, "axis"),
    );
    let name = dim.to_ascii_lowercase();
    let kind = if sn == "longitude"
        || units.starts_with("degrees_east")
        || axis == "x"
        || ["lon", "longitude"].contains(&name.as_str())
    {
        Kind::X
    } else if sn == "latitude"
        || units.starts_with("degrees_north")
        || axis == "y"
        || ["lat", "latitude"].contains(&name.as_str())
    {
        Kind::Y
    } else if units.contains(" since ") || axis == "t" {
        Kind::T
    } else if axis == "z"
        || c.attrs.get_str("positive").is_some()
        || [
            "air_pressure",
            "height",
            "depth",
            "altitude",
            "model_level_number",
        ]
        .contains(&sn.as_str())
        || ["plev", "lev", "level", "depth", "height", "z", "alt"].contains(&name.as_str())
    {
        Kind::Z
    } else {
        Kind::Other
    };
    (kind, Some(c))
}

/// A coordinate's values `[start, start+count)` as f64 (as xarray decodes it).
fn coord_values(c: &Arc<Variable>, start: u64, count: u64) -> Result<Vec<f64>, ApiError> {
    let input = Input::new(c.clone()).map_err(|e| bad(format!("coordinate '{}': {e}", c.name)))?;
    let col = input.read(&[start], &[count]).map_err(ApiError::from)?;
    Ok(match col {
        Col::F32(v) => v.into_iter().map(f64::from).collect(),
        Col::F64(v) => v,
        Col::Bool(v) => v.into_iter().map(|b| f64::from(u8::from(b))).collect(),
    })
}

/// The parsed request.
#[derive(Debug)]
struct Request {
    geometry: Geometry,
    params: Option<Vec<String>>,
    datetime: Option<String>,
    z: Option<String>,
    format: String,
    /// Other dimensions selected by value: `(dim, value)`.
    dims: Vec<(String, String)>,
}

fn parse_query(query: &str, q: Query) -> Result<Request, ApiError> {
    let mut seen: Vec<String> = Vec::new();
    let (mut coords, mut params, mut datetime, mut z, mut format) = (None, None, None, None, None);
    let mut dims = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        let (k, v) = (k.into_owned(), v.trim().to_string());
        if k.is_empty() {
            return Err(bad(format!("query: a parameter without a name ('={v}')")));
        }
        if seen.contains(&k) {
            return Err(bad(format!("{k}: given more than once")));
        }
        seen.push(k.clone());
        match k.as_str() {
            "coords" => coords = Some(v),
            "parameter-name" => {
                let names: Vec<String> = v.split(',').map(|s| s.trim().to_string()).collect();
                if names.iter().any(String::is_empty) {
                    return Err(bad(format!("parameter-name: '{v}' names an empty parameter")));
                }
                params = Some(names);
            }
            "datetime" => datetime = Some(v),
            "z" => z = Some(v),
            "f" => format = Some(v),
            "crs" => {
                let ok = [
                    "EPSG:4326",
                    "CRS84",
                    "OGC:CRS84",
                    "http://www.opengis.net/def/crs/OGC/1.3/CRS84",
                    "http://www.opengis.net/def/crs/EPSG/0/4326",
                ];
                if !ok.iter().any(|c| c.eq_ignore_ascii_case(&v)) {
                    return Err(bad(format!(
                        "crs: '{v}' is not supported; coordinates are longitude/latitude ({})",
                        ok.join(", ")
                    )));
                }
            }
            "method" => {
                if v != "nearest" {
                    return Err(bad(format!("method: '{v}' is not supported; allowed: nearest")));
                }
            }
            _ => dims.push((k.clone(), v)),
        }
    }
    let coords = coords.ok_or_else(|| {
        bad(match q {
            Query::Position => "coords: required, a WKT point: coords=POINT(lon lat)",
            Query::Area => "coords: required, a WKT polygon: coords=POLYGON((lon lat, ...))",
        })
    })?;
    let geometry = parse_wkt(&coords).map_err(bad)?;
    match (q, &geometry) {
        (Query::Position, Geometry::Point(..)) | (Query::Area, Geometry::Polygon(_)) => {}
        (Query::Position, _) => {
            return Err(bad(format!(
                "coords: /edr/position takes a POINT(lon lat), not '{coords}' (polygons: /edr/area)"
            )));
        }
        (Query::Area, _) => {
            return Err(bad(format!(
                "coords: /edr/area takes a POLYGON((lon lat, ...)), not '{coords}' (points: /edr/position)"
            )));
        }
    }
    let format = format.unwrap_or_else(|| "cf_covjson".into());
    let format = match format.as_str() {
        "covjson" | "coveragejson" => "cf_covjson".to_string(),
        f if FORMATS.contains(&f) => f.to_string(),
        f => {
            return Err(bad(format!(
                "f: '{f}' is not an output format; allowed: {}",
                FORMATS.join(", ")
            )));
        }
    };
    if datetime.as_deref() == Some("") {
        return Err(bad(
            "datetime: empty; give an instant or an interval a/b ('..' for an open end)",
        ));
    }
    Ok(Request {
        geometry,
        params,
        datetime,
        z,
        format,
        dims,
    })
}

/// The data variables an extraction can serve: root variables with a longitude and a
/// latitude dimension that are not coordinates.
fn candidates(ds: &Dataset) -> Vec<Arc<Variable>> {
    ds.root
        .vars
        .iter()
        .filter(|v| {
            !(v.dims.len() == 1 && v.dims[0] == v.name)
                && v.dims.iter().any(|d| kind_of(ds, d).0 == Kind::X)
                && v.dims.iter().any(|d| kind_of(ds, d).0 == Kind::Y)
        })
        .cloned()
        .collect()
}

/// The curvilinear case named: 2-D `lat`/`lon` in a `coordinates` attribute.
fn curvilinear(ds: &Dataset, v: &Variable) -> Option<String> {
    let coords = v.attrs.get_str("coordinates")?;
    coords
        .split_whitespace()
        .filter_map(|c| ds.variable(c))
        .find(|c| {
            c.dims.len() >= 2 && {
                let sn = lower_attr(c, "standard_name");
                sn == "latitude" || sn == "longitude" || lower_attr(c, "units").starts_with("degrees_")
            }
        })
        .map(|c| format!("{}({})", c.name, c.dims.join(", ")))
}

/// Half the spacing at each end of a 1-D coordinate (0 for one value).
fn half_steps(vals: &[f64]) -> (f64, f64) {
    let n = vals.len();
    if n < 2 {
        return (0.0, 0.0);
    }
    (
        (vals[1] - vals[0]).abs() / 2.0,
        (vals[n - 1] - vals[n - 2]).abs() / 2.0,
    )
}

/// `x` brought into the convention of a longitude axis spanning `[lo, hi]`.
fn wrap_lon(x: f64, lo: f64, hi: f64) -> f64 {
    if x < lo && x + 360.0 <= hi + 180.0 && hi > 180.0 {
        x + 360.0
    } else if x > hi && lo < 0.0 && x - 360.0 >= lo - 180.0 {
        x - 360.0
    } else {
        x
    }
}

/// Whether a value range `[min - h, max + h]` holds `x`.
fn within(vals: &[f64], x: f64) -> bool {
    let (h0, h1) = half_steps(vals);
    let (first, last) = (vals[0], vals[vals.len() - 1]);
    let (lo, hi, hlo, hhi) = if first <= last {
        (first, last, h0, h1)
    } else {
        (last, first, h1, h0)
    };
    x >= lo - hlo && x <= hi + hhi
}

fn range_text(vals: &[f64]) -> String {
    let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{lo}..{hi}")
}

/// Selects by value on a numeric 1-D coordinate: one value (nearest) or `a/b` (a range).
fn select_value(
    ds: &Dataset,
    dim: &str,
    c: &Arc<Variable>,
    param: &str,
    v: &str,
) -> Result<(u64, u64), ApiError> {
    if let Some((a, b)) = v.split_once('/') {
        let open = |s: &str| (s.trim() != "..").then(|| s.trim().to_string());
        let (a, b) = (open(a), open(b));
        return select::select_open(ds, dim, a.as_deref(), b.as_deref())
            .map(|(s, c, _)| (s, c))
            .map_err(|e| bad(format!("{param}: {}", e.reason)));
    }
    let x: f64 = v.parse().ok().filter(|x: &f64| x.is_finite()).ok_or_else(|| {
        bad(format!(
            "{param}: '{v}' is not a number (or a range a/b) of '{dim}'"
        ))
    })?;
    let vals = coord_values(c, 0, c.shape[0])?;
    if vals.is_empty() || !within(&vals, x) {
        return Err(bad(format!(
            "{param}: {x} is outside '{dim}' ({})",
            range_text(&vals)
        )));
    }
    let i = nearest(&vals, x).ok_or_else(|| bad(format!("{param}: coordinate '{dim}' is not monotonic")))?;
    Ok((i as u64, 1))
}

/// Selects the time steps of `datetime`: an interval `a/b` (`..` open) or the step nearest
/// to one instant.
fn select_time(ds: &Dataset, dim: &str, c: &Arc<Variable>, v: &str) -> Result<(u64, u64), ApiError> {
    let strip = |s: &str| -> Option<String> {
        let s = s.trim();
        (s != "..").then(|| s.strip_suffix('Z').unwrap_or(s).to_string())
    };
    if let Some((a, b)) = v.split_once('/') {
        let (a, b) = (strip(a), strip(b));
        if a.is_none() && b.is_none() {
            return Ok((0, c.shape[0]));
        }
        return select::select_open(ds, dim, a.as_deref(), b.as_deref())
            .map(|(s, c, _)| (s, c))
            .map_err(|e| bad(format!("datetime: {}", e.reason)));
    }
    let s = strip(v).ok_or_else(|| bad("datetime: '..' alone is not an instant; use ../.. for all"))?;
    let units = c.attrs.get_str("units").unwrap_or("");
    let axis = TimeAxis::new(units, c.attrs.get_str("calendar"))
        .map_err(|e| bad(format!("datetime: '{dim}' is not a CF time coordinate: {e}")))?;
    let (d0, _) = select::date_bounds(&s, &axis).ok_or_else(|| {
        bad(format!(
            "datetime: '{v}' is not a date of the '{dim}' calendar ({:?}); expected YYYY[-MM[-DD[Thh[:mm[:ss]]]]][Z] or an interval a/b with '..' for an open end",
            axis.calendar()
        ))
    })?;
    let vals = coord_values(c, 0, c.shape[0])?;
    let x = axis.encode(&d0);
    if vals.is_empty() || !within(&vals, x) {
        let ends = match (vals.first(), vals.last()) {
            (Some(a), Some(b)) => format!("{}/{}", iso(&axis, *a), iso(&axis, *b)),
            _ => "empty".into(),
        };
        return Err(bad(format!("datetime: '{v}' is outside '{dim}' ({ends})")));
    }
    let i = nearest(&vals, x).ok_or_else(|| bad(format!("datetime: '{dim}' is not monotonic")))?;
    Ok((i as u64, 1))
}

/// ISO 8601 text of a time value in its CF calendar (`YYYY-MM-DDThh:mm:ss[.ffffff]`,
/// cftime's `isoformat()`), or the number when it cannot be decoded.
fn iso(axis: &TimeAxis, x: f64) -> String {
    match axis.decode(x) {
        Ok(d) => iso_date(&d),
        Err(_) => format!("{x}"),
    }
}

fn iso_date(d: &CfDate) -> String {
    let mut s = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        d.year, d.month, d.day, d.hour, d.minute, d.second
    );
    if d.micros != 0 {
        let _ = write!(s, ".{:06}", d.micros);
    }
    s
}

/// The resolved extraction: parameters, their common dimensions and selections.
#[derive(Debug)]
struct Plan {
    vars: Vec<Arc<Variable>>,
    axes: Vec<Axis>,
    /// For an area: polygon membership of each (y, x) cell of the selection, row-major.
    mask: Option<Vec<bool>>,
    /// How the time dimension's values decode to dates (None: no CF time dimension).
    time_axis: Option<TimeAxis>,
}

fn plan(ds: &Dataset, req: &Request) -> Result<Plan, ApiError> {
    let all = candidates(ds);
    let allowed = || all.iter().map(|v| v.name.as_str()).collect::<Vec<_>>().join(", ");
    let vars: Vec<Arc<Variable>> = match &req.params {
        None => all.clone(),
        Some(names) => names
            .iter()
            .map(|n| {
                all.iter().find(|v| &v.name == n).cloned().ok_or_else(|| {
                    let why = match ds.variable(n) {
                        Some(v) => match curvilinear(ds, v) {
                            Some(c) => format!(
                                "'{n}' is on a curvilinear grid ({c}): nearest-cell selection needs 1-D longitude/latitude coordinates (xarray's .sel(method=\"nearest\") cannot select on 2-D ones either)"
                            ),
                            None => format!("'{n}' has no longitude and latitude dimensions"),
                        },
                        None => format!("no parameter '{n}'"),
                    };
                    bad(format!("parameter-name: {why}; allowed: {}", allowed()))
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let Some(first) = vars.first() else {
        return Err(bad(
            "parameter-name: this dataset has no variable on a longitude/latitude grid",
        ));
    };
    if let Some(v) = vars.iter().find(|v| v.dims != first.dims) {
        return Err(bad(format!(
            "parameter-name: '{}' ({}) and '{}' ({}) have different dimensions; request them separately",
            first.name,
            first.dims.join(", "),
            v.name,
            v.dims.join(", ")
        )));
    }
    let mut axes: Vec<Axis> = first
        .dims
        .iter()
        .zip(&first.shape)
        .map(|(d, n)| {
            let (kind, coord) = kind_of(ds, d);
            Axis {
                dim: d.clone(),
                kind,
                coord,
                start: 0,
                count: *n,
                scalar: false,
            }
        })
        .collect();
    for (k, _) in &req.dims {
        if !axes
            .iter()
            .any(|a| &a.dim == k && a.kind != Kind::X && a.kind != Kind::Y)
        {
            let dims: Vec<&str> = axes
                .iter()
                .filter(|a| a.kind != Kind::X && a.kind != Kind::Y)
                .map(|a| a.dim.as_str())
                .collect();
            return Err(bad(format!(
                "{k}: not a query parameter nor a dimension to select; allowed: {}{}{}",
                KNOWN.join(", "),
                if dims.is_empty() { "" } else { ", " },
                dims.join(", ")
            )));
        }
    }
    let mut time_axis = None;
    let mut mask = None;
    // horizontal selection
    let xi = axes.iter().position(|a| a.kind == Kind::X);
    let yi = axes.iter().position(|a| a.kind == Kind::Y);
    let (Some(xi), Some(yi)) = (xi, yi) else {
        return Err(bad("parameter-name: no longitude/latitude dimensions"));
    };
    let no_coord = |a: &Axis| bad(format!("dimension '{}' has no coordinate", a.dim));
    let xc = axes[xi].coord.clone().ok_or_else(|| no_coord(&axes[xi]))?;
    let yc = axes[yi].coord.clone().ok_or_else(|| no_coord(&axes[yi]))?;
    let xs = coord_values(&xc, 0, xc.shape[0])?;
    let ys = coord_values(&yc, 0, yc.shape[0])?;
    if xs.is_empty() || ys.is_empty() {
        return Err(bad("the longitude/latitude axes are empty"));
    }
    let (xlo, xhi) = (
        xs.iter().copied().fold(f64::INFINITY, f64::min),
        xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    let global = {
        let (h0, h1) = half_steps(&xs);
        xhi - xlo + h0 + h1 >= 359.999
    };
    match &req.geometry {
        Geometry::Point(x, y) => {
            let x = wrap_lon(*x, xlo, xhi);
            if !global && !within(&xs, x) {
                return Err(bad(format!(
                    "coords: longitude {x} is outside the domain ('{}' spans {})",
                    xc.name,
                    range_text(&xs)
                )));
            }
            if !within(&ys, *y) {
                return Err(bad(format!(
                    "coords: latitude {y} is outside the domain ('{}' spans {})",
                    yc.name,
                    range_text(&ys)
                )));
            }
            let i = nearest(&xs, x).ok_or_else(|| bad(format!("'{}' is not monotonic", xc.name)))?;
            let j = nearest(&ys, *y).ok_or_else(|| bad(format!("'{}' is not monotonic", yc.name)))?;
            (axes[xi].start, axes[xi].count) = (i as u64, 1);
            (axes[yi].start, axes[yi].count) = (j as u64, 1);
        }
        Geometry::Polygon(rings) => {
            // a cell centre is inside when it is, at its own longitude or one shifted by
            // ±360 (a polygon in the other longitude convention)
            let hit = |x: f64, y: f64| {
                inside(rings, x, y) || inside(rings, x - 360.0, y) || inside(rings, x + 360.0, y)
            };
            let cols: Vec<usize> = (0..xs.len())
                .filter(|&i| ys.iter().any(|&y| hit(xs[i], y)))
                .collect();
            let rows: Vec<usize> = (0..ys.len())
                .filter(|&j| xs.iter().any(|&x| hit(x, ys[j])))
                .collect();
            let (Some(&c0), Some(&c1), Some(&r0), Some(&r1)) =
                (cols.first(), cols.last(), rows.first(), rows.last())
            else {
                return Err(bad(format!(
                    "coords: the polygon holds no cell centre of the grid ('{}' {}, '{}' {})",
                    xc.name,
                    range_text(&xs),
                    yc.name,
                    range_text(&ys)
                )));
            };
            (axes[xi].start, axes[xi].count) = (c0 as u64, (c1 - c0 + 1) as u64);
            (axes[yi].start, axes[yi].count) = (r0 as u64, (r1 - r0 + 1) as u64);
            // membership in the order the variable's dimensions come (y before x or not)
            let mut m = Vec::new();
            let (outer, inner) = if yi < xi {
                (r0..=r1, c0..=c1)
            } else {
                (c0..=c1, r0..=r1)
            };
            for a in outer {
                for b in inner.clone() {
                    let (j, i) = if yi < xi { (a, b) } else { (b, a) };
                    m.push(hit(xs[i], ys[j]));
                }
            }
            mask = Some(m);
        }
    }
    for a in &mut axes {
        let Some(c) = a.coord.clone() else {
            if let Some((k, _)) = req.dims.iter().find(|(k, _)| k == &a.dim) {
                return Err(bad(format!(
                    "{k}: dimension '{k}' has no coordinate to select on"
                )));
            }
            continue;
        };
        match a.kind {
            Kind::T => {
                let units = c.attrs.get_str("units").unwrap_or("");
                time_axis = TimeAxis::new(units, c.attrs.get_str("calendar")).ok();
                if let Some(v) = &req.datetime {
                    (a.start, a.count) = select_time(ds, &a.dim, &c, v)?;
                }
            }
            Kind::Z => {
                if let Some(v) = &req.z {
                    (a.start, a.count) = select_value(ds, &a.dim, &c, "z", v)?;
                    a.scalar = !v.contains('/');
                }
            }
            Kind::Other => {
                if let Some((k, v)) = req.dims.iter().find(|(k, _)| k == &a.dim) {
                    (a.start, a.count) = select_value(ds, &a.dim, &c, k, v)?;
                    a.scalar = !v.contains('/');
                }
            }
            Kind::X | Kind::Y => {}
        }
    }
    if req.datetime.is_some() && !axes.iter().any(|a| a.kind == Kind::T) {
        return Err(bad(format!("datetime: '{}' has no time dimension", first.name)));
    }
    if req.z.is_some() && !axes.iter().any(|a| a.kind == Kind::Z) {
        return Err(bad(format!("z: '{}' has no vertical dimension", first.name)));
    }
    Ok(Plan {
        vars,
        axes,
        mask,
        time_axis,
    })
}

/// The decoded values of every parameter over the plan's region (C order of its dims).
fn read(plan: &Plan) -> Result<Vec<Col>, ApiError> {
    let start: Vec<u64> = plan.axes.iter().map(|a| a.start).collect();
    let count: Vec<u64> = plan.axes.iter().map(|a| a.count).collect();
    plan.vars
        .iter()
        .map(|v| {
            let input = Input::new(v.clone()).map_err(|e| bad(format!("parameter-name: {e}")))?;
            input.read(&start, &count).map_err(ApiError::from)
        })
        .collect()
}

/// The value `i` of a column as f64 (NaN for missing).
fn at(c: &Col, i: usize) -> f64 {
    match c {
        Col::F32(v) => v.get(i).map_or(f64::NAN, |x| f64::from(*x)),
        Col::F64(v) => v.get(i).copied().unwrap_or(f64::NAN),
        Col::Bool(v) => v.get(i).map_or(f64::NAN, |b| f64::from(u8::from(*b))),
    }
}

/// Text of value `i`, shortest round-trip in its own type (float32 values as float32).
fn text(c: &Col, i: usize) -> Option<String> {
    match c {
        Col::F32(v) => v.get(i).filter(|x| !x.is_nan()).map(|x| format!("{x:?}")),
        Col::F64(v) => v.get(i).filter(|x| !x.is_nan()).map(|x| format!("{x:?}")),
        Col::Bool(v) => v.get(i).map(|b| u8::from(*b).to_string()),
    }
}

/// The coordinate values of every axis over the selection.
struct Coords {
    /// Per axis: numbers (None when the dimension has no coordinate: positions).
    values: Vec<Vec<f64>>,
}

fn coords(plan: &Plan) -> Result<Coords, ApiError> {
    let values = plan
        .axes
        .iter()
        .map(|a| match &a.coord {
            Some(c) => coord_values(c, a.start, a.count),
            None => Ok((a.start..a.start + a.count).map(|i| i as f64).collect()),
        })
        .collect::<Result<_, _>>()?;
    Ok(Coords { values })
}

/// Whether the flat index `i` (C order over the selection) is a selected cell.
fn selected(plan: &Plan, i: usize) -> bool {
    let Some(m) = &plan.mask else { return true };
    // the mask covers the (y, x) sub-grid: the flat index modulo its size, provided x and
    // y are the last two dims; in general, compute the (y, x) positions
    let shape: Vec<usize> = plan.axes.iter().map(|a| a.count as usize).collect();
    let mut rem = i;
    let mut pos = vec![0usize; shape.len()];
    for k in (0..shape.len()).rev() {
        pos[k] = rem % shape[k].max(1);
        rem /= shape[k].max(1);
    }
    let hz: Vec<usize> = plan
        .axes
        .iter()
        .enumerate()
        .filter(|(_, a)| matches!(a.kind, Kind::X | Kind::Y))
        .map(|(k, _)| k)
        .collect();
    let (a, b) = (hz[0], hz[1]);
    m.get(pos[a] * shape[b] + pos[b]).copied().unwrap_or(false)
}

fn total(plan: &Plan) -> u64 {
    plan.axes.iter().map(|a| a.count).product()
}

fn calendar_rs(axis: &TimeAxis) -> Value {
    let cal = axis.calendar();
    if matches!(cal, Calendar::Standard | Calendar::ProlepticGregorian) {
        json!({"type": "TemporalRS", "calendar": "Gregorian"})
    } else {
        json!({
            "type": "TemporalRS",
            "calendar": format!("https://cfconventions.org/Data/cf-conventions/cf-conventions-1.11/cf-conventions.html#calendar-{}", calendar_name(cal)),
            "cf:calendar": calendar_name(cal),
        })
    }
}

fn calendar_name(cal: Calendar) -> &'static str {
    match cal {
        Calendar::Standard => "standard",
        Calendar::ProlepticGregorian => "proleptic_gregorian",
        Calendar::Julian => "julian",
        Calendar::NoLeap => "noleap",
        Calendar::AllLeap => "all_leap",
        Calendar::Day360 => "360_day",
    }
}

/// CoverageJSON: PointSeries / VerticalProfile / Point for a position, Grid for an area.
fn covjson(plan: &Plan, cols: &[Col], q: Query) -> Result<Value, ApiError> {
    let cv = coords(plan)?;
    let mut axes = Map::new();
    for (a, vals) in plan.axes.iter().zip(&cv.values) {
        let v: Value = if a.kind == Kind::T {
            match &plan.time_axis {
                Some(t) => json!(
                    vals.iter()
                        .map(|x| format!("{}Z", iso(t, *x)))
                        .collect::<Vec<_>>()
                ),
                None => json!(vals),
            }
        } else {
            json!(vals)
        };
        axes.insert(a.kind.axis(&a.dim), json!({ "values": v }));
    }
    let n = |k: Kind| plan.axes.iter().find(|a| a.kind == k).map(|a| a.count);
    let domain_type = match q {
        Query::Area => Some("Grid"),
        Query::Position => match (n(Kind::T), n(Kind::Z)) {
            (Some(_), None | Some(1)) => Some("PointSeries"),
            (None | Some(1), Some(_)) => Some("VerticalProfile"),
            (None, None) => Some("Point"),
            _ => None,
        },
    };
    if plan.axes.iter().any(|a| a.kind == Kind::Other && a.count > 1) {
        let a = plan.axes.iter().find(|a| a.kind == Kind::Other && a.count > 1);
        if let Some(a) = a {
            return Err(bad(format!(
                "{}: dimension '{}' has {} values; CoverageJSON has no axis for it: select one ({}=value) or ask for f=csv or f=nc",
                a.dim, a.dim, a.count, a.dim
            )));
        }
    }
    let mut referencing = vec![json!({
        "coordinates": ["x", "y"],
        "system": {"type": "GeographicCRS", "id": "http://www.opengis.net/def/crs/OGC/1.3/CRS84"}
    })];
    if let Some(t) = &plan.time_axis {
        referencing.push(json!({"coordinates": ["t"], "system": calendar_rs(t)}));
    }
    if let Some(z) = plan.axes.iter().find(|a| a.kind == Kind::Z) {
        let mut sys = json!({"type": "VerticalCRS"});
        if let Some(c) = &z.coord {
            let mut cs = Map::new();
            if let Some(u) = c.attrs.get_str("units") {
                cs.insert("unit".into(), json!({ "symbol": u }));
            }
            if let Some(p) = c.attrs.get_str("positive") {
                cs.insert("positive".into(), json!(p));
            }
            if !cs.is_empty() {
                sys["cs"] = json!({"csAxes": [{"name": {"en": c.name}, "direction": c.attrs.get_str("positive").unwrap_or("up"), "unit": {"symbol": c.attrs.get_str("units").unwrap_or("1")}}]});
            }
        }
        referencing.push(json!({"coordinates": ["z"], "system": sys}));
    }
    let mut domain = json!({"type": "Domain", "axes": axes, "referencing": referencing});
    if let Some(d) = domain_type {
        domain["domainType"] = json!(d);
    }
    // ranges: axes with more than one value (single-valued ones may be left out), or all
    // of them on a Grid
    let kept: Vec<usize> = (0..plan.axes.len())
        .filter(|&k| q == Query::Area || plan.axes[k].count > 1)
        .collect();
    let mut params = Map::new();
    let mut ranges = Map::new();
    let len = total(plan) as usize;
    for (v, c) in plan.vars.iter().zip(cols) {
        let mut p = Map::new();
        p.insert("type".into(), json!("Parameter"));
        if let Some(d) = v.attrs.get_str("long_name") {
            p.insert("description".into(), json!({ "en": d }));
        }
        if let Some(u) = v.attrs.get_str("units") {
            p.insert("unit".into(), json!({ "label": {"en": u}, "symbol": u }));
        }
        let label = v.attrs.get_str("standard_name").unwrap_or(&v.name);
        let mut op = json!({"label": {"en": label}});
        if let Some(sn) = v.attrs.get_str("standard_name") {
            op["id"] = json!(format!("https://vocab.nerc.ac.uk/standard_name/{sn}/"));
        }
        p.insert("observedProperty".into(), op);
        params.insert(v.name.clone(), Value::Object(p));
        let values: Vec<Value> = (0..len)
            .map(|i| {
                let x = at(c, i);
                if !selected(plan, i) || x.is_nan() {
                    Value::Null
                } else {
                    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
                }
            })
            .collect();
        ranges.insert(
            v.name.clone(),
            json!({
                "type": "NdArray",
                "dataType": "float",
                "axisNames": kept.iter().map(|&k| plan.axes[k].kind.axis(&plan.axes[k].dim)).collect::<Vec<_>>(),
                "shape": kept.iter().map(|&k| plan.axes[k].count).collect::<Vec<_>>(),
                "values": values,
            }),
        );
    }
    Ok(json!({
        "type": "Coverage",
        "domain": domain,
        "parameters": params,
        "ranges": ranges,
    }))
}

/// CSV: one row per selected cell, the dimensions' coordinates (times as ISO text in their
/// calendar) then one column per parameter; a missing value is an empty field.
fn csv(plan: &Plan, cols: &[Col]) -> Result<String, ApiError> {
    let cv = coords(plan)?;
    let mut out = String::new();
    let head: Vec<&str> = plan
        .axes
        .iter()
        .map(|a| a.dim.as_str())
        .chain(plan.vars.iter().map(|v| v.name.as_str()))
        .collect();
    out.push_str(&head.join(","));
    out.push('\n');
    let shape: Vec<usize> = plan.axes.iter().map(|a| a.count as usize).collect();
    for i in 0..total(plan) as usize {
        if !selected(plan, i) {
            continue;
        }
        let mut rem = i;
        let mut pos = vec![0usize; shape.len()];
        for k in (0..shape.len()).rev() {
            pos[k] = rem % shape[k].max(1);
            rem /= shape[k].max(1);
        }
        let mut fields: Vec<String> = Vec::with_capacity(head.len());
        for (k, a) in plan.axes.iter().enumerate() {
            let x = cv.values[k][pos[k]];
            fields.push(match (&a.kind, &plan.time_axis) {
                (Kind::T, Some(t)) => iso(t, x),
                _ => format!("{x:?}"),
            });
        }
        for c in cols {
            fields.push(text(c, i).unwrap_or_default());
        }
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    Ok(out)
}

/// netCDF-3 (64-bit offset): the selection with its coordinates and the parameters'
/// attributes; cells outside an area's polygon are NaN (the `_FillValue`).
fn netcdf(plan: &Plan, cols: &[Col]) -> Result<Vec<u8>, ApiError> {
    use super::cdf::{Attr, File, Var};
    let cv = coords(plan)?;
    let mut f = File::default();
    let len = total(plan) as usize;
    // a position's x and y, and dimensions selected by one value, are scalar coordinates
    // (as `.sel(..., method="nearest")` leaves them)
    let scalar = |a: &Axis| a.scalar || (plan.mask.is_none() && matches!(a.kind, Kind::X | Kind::Y));
    let dims: Vec<usize> = plan
        .axes
        .iter()
        .enumerate()
        .filter(|(_, a)| !scalar(a))
        .map(|(k, _)| k)
        .collect();
    for &k in &dims {
        f.dims.push((plan.axes[k].dim.clone(), plan.axes[k].count));
    }
    let keep_attrs = |v: &Variable| -> Vec<Attr> {
        [
            "standard_name",
            "long_name",
            "units",
            "calendar",
            "axis",
            "positive",
            "comment",
            "cell_methods",
        ]
        .iter()
        .filter_map(|k| {
            v.attrs
                .get_str(k)
                .map(|s| Attr::Text((*k).to_string(), s.to_string()))
        })
        .collect()
    };
    for (k, a) in plan.axes.iter().enumerate() {
        let dimids: Vec<usize> = dims.iter().position(|d| *d == k).into_iter().collect();
        let attrs = a.coord.as_deref().map(keep_attrs).unwrap_or_default();
        f.vars.push(Var::f64(&a.dim, dimids, attrs, cv.values[k].clone()));
    }
    let coords_attr: Vec<&str> = plan
        .axes
        .iter()
        .filter(|a| scalar(a))
        .map(|a| a.dim.as_str())
        .collect();
    for (v, c) in plan.vars.iter().zip(cols) {
        let mut attrs = keep_attrs(v);
        if !coords_attr.is_empty() {
            attrs.push(Attr::Text("coordinates".into(), coords_attr.join(" ")));
        }
        let dimids: Vec<usize> = (0..dims.len()).collect();
        let var = match c {
            Col::F32(x) => {
                attrs.push(Attr::F32("_FillValue".into(), f32::NAN));
                let vals = (0..len)
                    .map(|i| match x.get(i) {
                        Some(v) if selected(plan, i) => *v,
                        _ => f32::NAN,
                    })
                    .collect();
                Var::f32(&v.name, dimids, attrs, vals)
            }
            _ => {
                attrs.push(Attr::F64("_FillValue".into(), f64::NAN));
                let vals = (0..len)
                    .map(|i| if selected(plan, i) { at(c, i) } else { f64::NAN })
                    .collect();
                Var::f64(&v.name, dimids, attrs, vals)
            }
        };
        f.vars.push(var);
    }
    f.attrs.push(Attr::Text("Conventions".into(), "CF-1.8".into()));
    f.encode()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("netCDF output: {e}")))
}

/// Answers one query on the worker pool.
async fn answer(
    state: Arc<AppState>,
    id: String,
    query: Option<String>,
    q: Query,
) -> Result<Response, ApiError> {
    let s = served(&state, &id)?;
    let req = parse_query(query.as_deref().unwrap_or(""), q)?;
    let limit = state.max_source_bytes;
    let ds = s.clone();
    let what = match q {
        Query::Position => "position",
        Query::Area => "area",
    };
    let result = state
        .run_for(&s.ds, move || -> Result<(Vec<u8>, &'static str, u64), ApiError> {
            let plan = plan(&ds.ds, &req)?;
            let n = total(&plan).saturating_mul(plan.vars.len() as u64);
            if n > MAX_VALUES {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the selection holds {n} values (parameters × cells); at most {MAX_VALUES}: select fewer times, levels or a smaller area"),
                ));
            }
            let start: Vec<u64> = plan.axes.iter().map(|a| a.start).collect();
            let count: Vec<u64> = plan.axes.iter().map(|a| a.count).collect();
            let bytes: u64 = plan
                .vars
                .iter()
                .map(|v| pipeline::estimate_region_bytes(v, &start, &count))
                .sum();
            if limit > 0 && bytes > limit {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the selection reads about {bytes} bytes of source data, more than this server's --max-source-bytes ({limit}); select fewer times, levels or a smaller area"),
                ));
            }
            let cols = read(&plan)?;
            let (body, ctype) = match req.format.as_str() {
                "csv" => (csv(&plan, &cols)?.into_bytes(), "text/csv; charset=utf-8"),
                "nc" => (netcdf(&plan, &cols)?, "application/x-netcdf"),
                _ => (
                    serde_json::to_vec(&covjson(&plan, &cols, q)?).map_err(|e| {
                        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("CoverageJSON: {e}"))
                    })?,
                    "application/prs.coverage+json",
                ),
            };
            Ok((body, ctype, bytes))
        })
        .await
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("dataset '{id}': EDR {what} query failed (bug; see server log)"),
            )
        })?;
    let (body, ctype, bytes) = result.map_err(|e| {
        if e.status == StatusCode::PAYLOAD_TOO_LARGE {
            state.metrics.source_bytes_refused.inc();
        }
        ApiError::new(e.status, format!("dataset '{id}', EDR {what}: {}", e.message))
    })?;
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert("x-cloudify-source-bytes", HeaderValue::from(bytes));
    if ctype == "application/x-netcdf" {
        h.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment; filename=\"edr.nc\""),
        );
    }
    Ok(r)
}

/// `/datasets/{id}/edr/position?coords=POINT(lon lat)&...`: the nearest cell's series.
pub async fn position(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    answer(state, id, query, Query::Position).await
}

/// `/datasets/{id}/edr/area?coords=POLYGON((...))&...`: the cells whose centres are inside.
pub async fn area(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    answer(state, id, query, Query::Area).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_follows_pandas() {
        // ascending: tie to the right (larger), below/above the ends to the ends
        assert_eq!(nearest(&[1.0, 2.0, 3.0], 1.5), Some(1));
        assert_eq!(nearest(&[1.0, 2.0, 3.0], 1.4), Some(0));
        assert_eq!(nearest(&[1.0, 2.0, 3.0], -5.0), Some(0));
        assert_eq!(nearest(&[1.0, 2.0, 3.0], 9.0), Some(2));
        assert_eq!(nearest(&[1.0, 2.0, 3.0], 2.0), Some(1));
        // descending: tie to the left (larger value too)
        assert_eq!(nearest(&[3.0, 2.0, 1.0], 1.5), Some(1));
        assert_eq!(nearest(&[3.0, 2.0, 1.0], 1.4), Some(2));
        assert_eq!(nearest(&[3.0, 2.0, 1.0], 9.0), Some(0));
        assert_eq!(nearest(&[3.0, 2.0, 1.0], -9.0), Some(2));
        assert_eq!(nearest(&[1.0, 3.0, 2.0], 2.0), None);
        assert_eq!(nearest(&[], 2.0), None);
    }

    #[test]
    fn wkt_is_parsed_strictly() {
        assert_eq!(parse_wkt("POINT(10 -5.5)"), Ok(Geometry::Point(10.0, -5.5)));
        assert_eq!(parse_wkt(" point ( 10  20 ) "), Ok(Geometry::Point(10.0, 20.0)));
        assert!(parse_wkt("POINT(10)").is_err());
        assert!(parse_wkt("POINT(10 20 30)").is_err());
        assert!(parse_wkt("POINT(a b)").is_err());
        assert!(parse_wkt("POINT(nan 1)").is_err());
        assert!(parse_wkt("POINT(1 2").is_err());
        assert!(parse_wkt("LINESTRING(1 2, 3 4)").is_err());
        assert!(parse_wkt("__import__('os')").is_err());
        let p = parse_wkt("POLYGON((0 0, 10 0, 10 10, 0 10, 0 0), (2 2, 3 2, 3 3, 2 2))");
        let Ok(Geometry::Polygon(r)) = p else {
            panic!("polygon: {p:?}")
        };
        assert_eq!(r.len(), 2);
        assert!(inside(&r, 5.0, 5.0));
        assert!(!inside(&r, 2.8, 2.2));
        assert!(!inside(&r, 11.0, 5.0));
        assert!(parse_wkt("POLYGON((0 0, 1 0, 1 1))").is_err());
        assert!(parse_wkt("POLYGON((0 0, 1 0, 1 1, 0 0),)").is_err());
    }

    #[test]
    fn longitudes_wrap_into_the_axis_convention() {
        assert_eq!(wrap_lon(-10.0, 0.0, 358.75), 350.0);
        assert_eq!(wrap_lon(350.0, -180.0, 178.75), -10.0);
        assert_eq!(wrap_lon(10.0, 0.0, 358.75), 10.0);
        assert_eq!(wrap_lon(-10.0, -180.0, 178.75), -10.0);
    }
}
