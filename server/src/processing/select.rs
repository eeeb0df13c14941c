//! Value-range selection for products (`time=2000-01-01/2000-12-31&lat=-30/30`): what
//! `ds.sel(dim=slice(from, to))` selects before a histogram or an ad-hoc groupby is
//! computed, resolved once to positions on the dimension's coordinate, so that the
//! computation reads only the selected source region.
//!
//! Semantics are xarray's label-based slicing on a monotonic index: both ends inclusive; a
//! descending coordinate (latitude stored north to south) is selected from the larger value
//! to the smaller, as xarray's `slice` follows the coordinate's order; times are ISO dates
//! in the coordinate's CF calendar, a partial date spanning its period as pandas and
//! CFTimeIndex resolve it (`2001` is all of 2001; `2000-02-30` exists in `360_day`).
//! Unlike xarray, a selection that selects nothing is refused (400) rather than giving an
//! empty product.
//!
//! A product's selection lives in its URL twice: in the query of the route that describes
//! it (`?time=2000-01-01/2000-12-31`), and as one path segment of its Zarr form
//! (`time=2000-01-01,2000-12-31`), because Zarr clients append keys to a base URL and drop
//! a query string. [`Selection::segment`] writes that segment in one order (sorted by
//! dimension, `from,to`), so that a selection spelled in the query has one Zarr URL.
//! Other spellings of the same ranges (`2000-12` or `2000-12-01/2000-12-31`, `-30` or
//! `-30.0`) are other URLs of the same product: what identifies it (the products kept, its
//! provenance, fingerprint, ETags and compute-cache entries) is the resolved [`Window`],
//! never the text.
//! Nothing here is evaluated: names are looked up among the variable's dimensions, values
//! parsed as numbers or dates.

use std::sync::Arc;

use crate::block::Block;
use crate::chunk::read::ReadError;
use crate::dataset::cftime::{CfDate, TimeAxis, month_len};
use crate::dataset::{Dataset, Derive, Values, Variable};
use crate::dtype::DType;
use crate::pipeline;

/// Why a selection cannot be applied: `param` names the request parameter (the selected
/// dimension, or `selection` for a malformed path segment).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{param}: {reason}")]
pub struct SelectError {
    /// The parameter at fault.
    pub param: String,
    /// Why.
    pub reason: String,
}

fn err(param: &str, reason: impl Into<String>) -> SelectError {
    SelectError {
        param: param.to_string(),
        reason: reason.into(),
    }
}

pub(crate) fn parse_f64(param: &str, s: &str) -> Result<f64, SelectError> {
    let x: f64 = s
        .trim()
        .parse()
        .map_err(|_| err(param, format!("'{s}' is not a number")))?;
    if !x.is_finite() {
        return Err(err(param, format!("'{s}' is not a finite number")));
    }
    Ok(x)
}

/// Splits a value range `a/b` (or `a,b`) into its two ends.
pub(crate) fn split_range(s: &str) -> Option<(&str, &str)> {
    s.split_once('/').or_else(|| s.split_once(','))
}

/// Value ranges as written: `(dimension, from, to)`, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selection(pub Vec<(String, String, String)>);

impl Selection {
    /// Adds `dim=value` (`from/to` or `from,to`). A dimension given twice, a parameter
    /// without a name or a value that is not a range is refused, naming it.
    pub fn push(&mut self, dim: &str, value: &str) -> Result<(), SelectError> {
        if dim.is_empty() {
            return Err(err(
                "selection",
                format!("a parameter without a name ('={value}')"),
            ));
        }
        if self.0.iter().any(|(d, _, _)| d == dim) {
            return Err(err(dim, "given more than once"));
        }
        let (a, b) = split_range(value).ok_or_else(|| {
            err(
                dim,
                format!("'{value}' is not a value range 'from/to' (or 'from,to')"),
            )
        })?;
        let (a, b) = (a.trim(), b.trim());
        if a.is_empty() || b.is_empty() {
            return Err(err(dim, format!("'{value}' lacks an end; write 'from/to'")));
        }
        self.0.push((dim.to_string(), a.to_string(), b.to_string()));
        Ok(())
    }

    /// A query string every parameter of which is a selection (`time=a/b&lat=-30/30`),
    /// percent-decoded as a form.
    pub fn parse_query(query: &str) -> Result<Selection, SelectError> {
        let mut s = Selection::default();
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            s.push(&k, &v)?;
        }
        Ok(s)
    }

    /// A path segment as the router gives it (already percent-decoded once, so it is not
    /// decoded again: a `+` in `1e+3` stays a plus): `dim=from,to` joined by `&`.
    pub fn parse_segment(segment: &str) -> Result<Selection, SelectError> {
        let mut s = Selection::default();
        for part in segment.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                err(
                    "selection",
                    format!("'{part}' is not dim=from,to (the selection segment is 'time=2000-01-01,2000-12-31&lat=-30,30')"),
                )
            })?;
            s.push(k, v)?;
        }
        if s.is_empty() {
            return Err(err(
                "selection",
                "empty; omit the segment for the whole dataset ('…/{action}/zarr/')",
            ));
        }
        Ok(s)
    }

    /// The canonical path segment: sorted by dimension, `dim=from,to` joined by `&`
    /// ([`Selection::parse_segment`] reads it back). Not yet percent-encoded for a URL:
    /// [`encode_segment`] does that.
    pub fn segment(&self) -> String {
        let mut parts: Vec<String> = self.0.iter().map(|(d, a, b)| format!("{d}={a},{b}")).collect();
        parts.sort();
        parts.join("&")
    }

    /// Whether nothing is selected.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The selection resolved on `ds` for the variable `var`: every selected dimension
    /// must be one of `var`'s, with a monotonic coordinate the range selects something of.
    pub fn resolve(&self, ds: &Dataset, var: &Variable) -> Result<Window, SelectError> {
        let mut w = Window::default();
        let mut text = Vec::new();
        let mut sorted = self.0.clone();
        sorted.sort();
        for (d, a, b) in &sorted {
            let Some(i) = var.dims.iter().position(|x| x == d) else {
                return Err(err(
                    d,
                    format!(
                        "not a dimension of '{}' (its dimensions: {})",
                        var.name,
                        var.dims.join(", ")
                    ),
                ));
            };
            let st = stretch(ds, d, Some(a), Some(b))?;
            if st.start + st.count > var.shape[i] {
                return Err(err(
                    d,
                    format!("coordinate '{d}' is longer than the dimension of '{}'", var.name),
                ));
            }
            text.push(st.text);
            w.dims.push((d.clone(), st.start, st.count));
        }
        w.text = sel_text(&text);
        Ok(w)
    }
}

/// `sel(a, b)` of the `dim=slice(..)` parts (sorted by the caller), empty for none.
pub(crate) fn sel_text(parts: &[String]) -> String {
    if parts.is_empty() {
        String::new()
    } else {
        format!("sel({})", parts.join(", "))
    }
}

/// Percent-encodes a selection segment for a URL path: RFC 3986 `pchar`s stay (`=`, `&`,
/// `,`, `:`, `+` and `-` included), anything else (spaces, `/`, `%`, `?`, `#`, non-ASCII)
/// becomes `%XX`, which the router decodes once.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A selection resolved to positions: `(dimension, start, count)` per selected dimension
/// (sorted by name), and how xarray would write it for the product's provenance
/// (`sel(lat=slice(30.0, -30.0), time=slice('2000-01-16T12:00:00', '2000-12-16T12:00:00'))`
/// with the first and last selected coordinate values, see [`Stretch::text`]; empty when
/// nothing is selected). Both depend only on the stretches selected, never on how the
/// request spelled the ranges: equal windows are one product.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Window {
    /// Selected dimensions and their stretch.
    pub dims: Vec<(String, u64, u64)>,
    /// The selection as xarray code would write it (never evaluated), by the selected
    /// coordinate values.
    pub text: String,
}

impl Window {
    /// The stretch `(start, count)` of `dim`, when it is selected.
    pub fn get(&self, dim: &str) -> Option<(u64, u64)> {
        self.dims
            .iter()
            .find(|(d, _, _)| d == dim)
            .map(|(_, s, c)| (*s, *c))
    }

    /// Whether nothing is selected.
    pub fn is_empty(&self) -> bool {
        self.dims.is_empty()
    }

    /// Per dimension of `v`: where its selected stretch starts (0 where nothing is
    /// selected), and its selected length.
    pub fn origin_shape(&self, v: &Variable) -> (Vec<u64>, Vec<u64>) {
        v.dims
            .iter()
            .zip(&v.shape)
            .map(|(d, n)| self.get(d).unwrap_or((0, *n)))
            .unzip()
    }

    /// `v` restricted to the window (`v` itself when none of its dimensions is selected):
    /// a computed variable reading the stretch from `v`, with chunks no longer than it.
    /// `None` when a stretch lies outside `v` (a coordinate longer than its dimension).
    pub fn slice(&self, v: &Arc<Variable>) -> Option<Arc<Variable>> {
        if !v.dims.iter().any(|d| self.get(d).is_some()) {
            return Some(v.clone());
        }
        let (origin, shape) = self.origin_shape(v);
        if origin
            .iter()
            .zip(&shape)
            .zip(&v.shape)
            .any(|((o, c), n)| o + c > *n)
        {
            return None;
        }
        let chunks = v
            .chunks
            .iter()
            .zip(&shape)
            .map(|(k, n)| (*k).clamp(1, (*n).max(1)))
            .collect();
        Some(Arc::new(Variable {
            name: v.name.clone(),
            path: v.path.clone(),
            dims: v.dims.clone(),
            shape,
            dtype: v.dtype,
            attrs: v.attrs.clone(),
            fill_attr: v.fill_attr,
            fill: v.fill.clone(),
            chunks,
            values: Values::Derived(Arc::new(Sliced {
                var: v.clone(),
                origin,
            })),
        }))
    }
}

/// A stretch of a variable starting at `origin` (a coordinate, cell bounds or an
/// auxiliary coordinate of a product after a value-range selection).
#[derive(Debug)]
pub(crate) struct Sliced {
    var: Arc<Variable>,
    origin: Vec<u64>,
}

impl Sliced {
    fn shift(&self, start: &[u64]) -> Vec<u64> {
        start.iter().zip(&self.origin).map(|(s, o)| s + o).collect()
    }
}

impl Derive for Sliced {
    fn read(&self, start: &[u64], count: &[u64]) -> Result<Block, ReadError> {
        pipeline::read_region(&self.var, &self.shift(start), count)
    }

    fn check_sources(&self, start: &[u64], count: &[u64]) -> Result<(), ReadError> {
        pipeline::check_region_sources(&self.var, &self.shift(start), count)
    }

    fn estimate_bytes(&self, start: &[u64], count: &[u64]) -> u64 {
        pipeline::estimate_region_bytes(&self.var, &self.shift(start), count)
    }

    fn describe(&self) -> String {
        format!("slice({:?}, {})", self.origin, pipeline::describe(&self.var))
    }
}

/// A parsed date bound: its first and last instants in the calendar
/// (`2000-12` → 2000-12-01 00:00 and 2000-12-31 23:59:59.999999), as pandas and
/// CFTimeIndex resolve partial date strings in `.sel(time=slice(a, b))`. Shared with the
/// EDR routes' `datetime` so that there is one date parser. `None`: not a date of the
/// calendar.
pub fn date_bounds(s: &str, axis: &TimeAxis) -> Option<(CfDate, CfDate)> {
    let cal = axis.calendar();
    let (date, time) = match s.find(['T', ' ']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let (neg, body) = match date.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, date),
    };
    let mut parts = body.split('-');
    let num = |p: Option<&str>| -> Option<Option<u32>> {
        match p {
            None => Some(None),
            Some(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => t.parse().ok().map(Some),
            Some(_) => None,
        }
    };
    let y = parts.next()?;
    if y.is_empty() || !y.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i64 = y.parse::<i64>().ok().map(|v| if neg { -v } else { v })?;
    let month = num(parts.next())?;
    let day = num(parts.next())?;
    if parts.next().is_some() || (month.is_none() && day.is_some()) {
        return None;
    }
    let (mut hour, mut minute, mut second) = (None, None, None);
    if let Some(t) = time {
        day?;
        let mut tp = t.split(':');
        hour = num(tp.next())?;
        minute = num(tp.next())?;
        second = num(tp.next())?;
        if tp.next().is_some() || hour.is_none() {
            return None;
        }
    }
    if let Some(m) = month
        && !(1..=12).contains(&m)
    {
        return None;
    }
    let m0 = month.unwrap_or(1);
    let m1 = month.unwrap_or(12);
    if let Some(d) = day
        && (d == 0 || d > month_len(cal, year, m0))
    {
        return None;
    }
    if hour.is_some_and(|h| h > 23) || minute.is_some_and(|m| m > 59) || second.is_some_and(|s| s > 59) {
        return None;
    }
    let start = CfDate {
        year,
        month: m0,
        day: day.unwrap_or(1),
        hour: hour.unwrap_or(0),
        minute: minute.unwrap_or(0),
        second: second.unwrap_or(0),
        micros: 0,
    };
    let end = CfDate {
        year,
        month: m1,
        day: day.unwrap_or_else(|| month_len(cal, year, m1)),
        hour: hour.unwrap_or(23),
        minute: minute.unwrap_or(59),
        second: second.unwrap_or(59),
        micros: 999_999,
    };
    Some((start, end))
}

/// The positions `[start, start + count)` of `values` that `.sel(dim=slice(from, to))`
/// selects on a monotonic index: `from <= v <= to` ascending, `from >= v >= to`
/// descending. `None` when the values are not monotonic.
pub fn slice_positions<T: PartialOrd + Copy>(values: &[T], from: T, to: T) -> Option<(usize, usize)> {
    let asc = values.windows(2).all(|w| w[0] <= w[1]);
    let desc = values.windows(2).all(|w| w[0] >= w[1]);
    let (a, b) = if asc {
        (
            values.partition_point(|v| *v < from),
            values.partition_point(|v| *v <= to),
        )
    } else if desc {
        (
            values.partition_point(|v| *v > from),
            values.partition_point(|v| *v >= to),
        )
    } else {
        return None;
    };
    Some((a, b.saturating_sub(a)))
}

/// The selection of `dim` by `(from, to)` on its coordinate in `ds`: `(start, count)`.
pub(crate) fn select(ds: &Dataset, dim: &str, from: &str, to: &str) -> Result<(u64, u64), SelectError> {
    select_open(ds, dim, Some(from), Some(to)).map(|(s, c, _)| (s, c))
}

/// [`select`] with open ends (`None`: unbounded on that side, as `slice(None, b)`), for
/// the EDR routes' `datetime=../b` and `a/..`; also says whether the coordinate is CF time
/// (its bounds are then dates, else numbers).
pub fn select_open(
    ds: &Dataset,
    dim: &str,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<(u64, u64, bool), SelectError> {
    stretch(ds, dim, from, to).map(|s| (s.start, s.count, s.time))
}

/// What a value range resolves to on a dimension's coordinate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stretch {
    /// First selected position.
    pub start: u64,
    /// Selected positions.
    pub count: u64,
    /// Whether the coordinate is CF time.
    pub time: bool,
    /// `dim=slice(first, last)` with the first and last *selected coordinate values*
    /// rather than the bounds as written: the text depends only on the stretch, so every
    /// spelling of one selection (`2000-12` or `2000-12-01/2000-12-31T23:59`, `-30` or
    /// `-30.0`) writes the same, and a product's provenance and fingerprint, of which it is
    /// part, are the same (one ETag, one compute-cache entry). xarray's label slicing by
    /// those values selects exactly the same stretch (both ends inclusive).
    pub text: String,
}

/// A coordinate value as the canonical bound of a `slice`: dates ISO 8601 to the second
/// (microseconds when there are any), numbers in the coordinate's own precision (a float32
/// value written as the shortest float32 text, which NumPy casts back to the same value).
fn bound_text(v: f64, date: Option<&CfDate>, dtype: DType) -> String {
    match date {
        Some(d) => {
            let mut s = format!(
                "'{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                d.year, d.month, d.day, d.hour, d.minute, d.second
            );
            if d.micros != 0 {
                s.push_str(&format!(".{:06}", d.micros));
            }
            s.push('\'');
            s
        }
        #[allow(clippy::cast_possible_truncation)]
        None if dtype == DType::F32 => format!("{:?}", v as f32),
        None => format!("{v:?}"),
    }
}

/// [`select_open`], with the canonical text of the stretch ([`Stretch::text`]).
pub(crate) fn stretch(
    ds: &Dataset,
    dim: &str,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<Stretch, SelectError> {
    let c = ds
        .variable(dim)
        .filter(|v| v.dims.len() == 1 && v.dims[0] == dim)
        .ok_or_else(|| err(dim, format!("'{dim}' has no coordinate to select values on")))?;
    let block = pipeline::read_region(c, &[0], &c.shape)
        .map_err(|e| err(dim, format!("cannot read coordinate '{dim}': {e}")))?;
    let vals: Vec<f64> = match c.dtype {
        DType::F32 => block
            .values::<f32>()
            .map(|v| v.into_iter().map(f64::from).collect()),
        DType::F64 => block.values::<f64>(),
        DType::I8 => block
            .values::<i8>()
            .map(|v| v.into_iter().map(f64::from).collect()),
        DType::I16 => block
            .values::<i16>()
            .map(|v| v.into_iter().map(f64::from).collect()),
        DType::I32 => block
            .values::<i32>()
            .map(|v| v.into_iter().map(f64::from).collect()),
        DType::U8 => block
            .values::<u8>()
            .map(|v| v.into_iter().map(f64::from).collect()),
        DType::U16 => block
            .values::<u16>()
            .map(|v| v.into_iter().map(f64::from).collect()),
        DType::U32 => block
            .values::<u32>()
            .map(|v| v.into_iter().map(f64::from).collect()),
        DType::I64 => block
            .values::<i64>()
            .map(|v| v.into_iter().map(|x| x as f64).collect()),
        DType::U64 => block
            .values::<u64>()
            .map(|v| v.into_iter().map(|x| x as f64).collect()),
        _ => return Err(err(dim, format!("coordinate '{dim}' is not numeric"))),
    }
    .map_err(|e| err(dim, e.to_string()))?;
    let time = c
        .attrs
        .get_str("units")
        .filter(|u| u.to_ascii_lowercase().contains(" since "));
    let mut dates = None;
    let pos = if let Some(units) = time {
        let axis = TimeAxis::new(units, c.attrs.get_str("calendar"))
            .map_err(|e| err(dim, format!("'{dim}' is not a CF time coordinate: {e}")))?;
        let d = vals
            .iter()
            .map(|x| axis.decode(*x))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(dim, format!("'{dim}': {e}")))?;
        let bad = |s: &str| {
            err(
                dim,
                format!("'{s}' is not a date of the '{dim}' calendar (YYYY[-MM[-DD[Thh[:mm[:ss]]]]])"),
            )
        };
        let asc = d.windows(2).all(|w| w[0] <= w[1]);
        let first = d.iter().min().copied();
        let last = d.iter().max().copied();
        let (Some(first), Some(last)) = (first, last) else {
            return Err(err(dim, format!("'{dim}' is empty")));
        };
        // an open end is the axis' own end (which side depends on the order)
        let (f0, f1) = match from {
            Some(f) => date_bounds(f, &axis).ok_or_else(|| bad(f))?,
            None if asc => (first, first),
            None => (last, last),
        };
        let (t0, t1) = match to {
            Some(t) => date_bounds(t, &axis).ok_or_else(|| bad(t))?,
            None if asc => (last, last),
            None => (first, first),
        };
        // a partial date's left bound is its start, its right bound its end (swapped on a
        // descending index), as CFTimeIndex resolves slice bounds
        let (lo, hi) = if asc { (f0, t1) } else { (f1, t0) };
        let pos = slice_positions(&d, lo, hi);
        dates = Some(d);
        pos
    } else {
        let asc = vals.windows(2).all(|w| w[0] <= w[1]);
        let open_lo = if asc { f64::NEG_INFINITY } else { f64::INFINITY };
        let mut a = from.map_or(Ok(open_lo), |f| parse_f64(dim, f))?;
        let mut b = to.map_or(Ok(-open_lo), |t| parse_f64(dim, t))?;
        if c.dtype == DType::F32 {
            // NumPy's searchsorted casts a Python float bound to the float32 index's type
            #[allow(clippy::cast_possible_truncation)]
            {
                a = f64::from(a as f32);
                b = f64::from(b as f32);
            }
        }
        slice_positions(&vals, a, b)
    };
    let (start, count) = pos.ok_or_else(|| {
        err(
            dim,
            format!("coordinate '{dim}' is not monotonic; cannot select a value range"),
        )
    })?;
    if count == 0 {
        return Err(err(
            dim,
            format!(
                "{}/{} selects nothing of '{dim}' (a descending coordinate is selected from the larger value to the smaller, as xarray does)",
                from.unwrap_or(".."),
                to.unwrap_or("..")
            ),
        ));
    }
    // slice_positions keeps start + count within the values, and count is not 0 here
    let end = start + count - 1;
    let bound = |i: usize| bound_text(vals[i], dates.as_ref().map(|d| &d[i]), c.dtype);
    Ok(Stretch {
        start: start as u64,
        count: count as u64,
        time: dates.is_some(),
        text: format!("{dim}=slice({}, {})", bound(start), bound(end)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Longitudes: enough that `x` is not inlined in the index (its chunks are served).
    const LON: usize = 200;

    /// `x(time, lat, lon)` float32; `time` daily in `calendar` from 2000-12-30, `lat`
    /// descending (north to south), `lon` float32 ascending from 0.1.
    fn open(dir: &std::path::Path, calendar: &str) -> Dataset {
        let path = dir.join(format!("{calendar}.nc"));
        let mut f = netcdf::create(&path).expect("create");
        f.add_dimension("time", 6).expect("dim");
        f.add_dimension("lat", 4).expect("dim");
        f.add_dimension("lon", LON).expect("dim");
        {
            let mut v = f.add_variable::<f32>("x", &["time", "lat", "lon"]).expect("var");
            v.set_chunking(&[2, 3, 2]).expect("chunking");
            let vals: Vec<f32> = (0..6 * 4 * LON).map(|i| i as f32).collect();
            v.put_values(&vals, ..).expect("put");
        }
        {
            let mut t = f.add_variable::<f64>("time", &["time"]).expect("var");
            t.put_attribute("units", "days since 2000-12-30").expect("attr");
            t.put_attribute("calendar", calendar).expect("attr");
            t.put_values(&[0.5, 1.5, 2.5, 3.5, 4.5, 5.5], ..).expect("put");
        }
        {
            let mut lat = f.add_variable::<f64>("lat", &["lat"]).expect("var");
            lat.put_values(&[30.0, 10.0, -10.0, -30.0], ..).expect("put");
        }
        let mut lon = f.add_variable::<f32>("lon", &["lon"]).expect("var");
        let lons: Vec<f32> = (0..LON)
            .map(|i| if i == 0 { 0.1 } else { i as f32 * 1.8 })
            .collect();
        lon.put_values(&lons, ..).expect("put");
        drop(f);
        let file = Arc::new(crate::source::SourceFile::stat(path.clone()).expect("stat"));
        let idx = crate::open::file::open_file(file).expect("index");
        let spec = cloudify_crds::DatasetSpec::new("t", vec![path.display().to_string()]);
        crate::dataset::aggregate::build(&spec, vec![idx]).expect("dataset")
    }

    fn sel(q: &str) -> Selection {
        Selection::parse_query(q).expect(q)
    }

    #[test]
    fn queries_and_segments_round_trip_canonically() {
        let s = sel("time=2000-01-01/2000-12-31&lat=-30/30");
        assert_eq!(s.segment(), "lat=-30,30&time=2000-01-01,2000-12-31");
        assert_eq!(
            Selection::parse_segment(&s.segment()).expect("segment").segment(),
            s.segment()
        );
        // another order, the other separator: the same product
        assert_eq!(
            sel("lat=-30,30&time=2000-01-01,2000-12-31").segment(),
            s.segment()
        );
        // a segment is not decoded a second time: '+' stays a plus
        let p = Selection::parse_segment("lat=1e+1,2e+1").expect("plus");
        assert_eq!(p.0, vec![("lat".into(), "1e+1".into(), "2e+1".into())]);
        assert_eq!(
            encode_segment("time=2000-01-01 12:00,2001&lat=-3,3"),
            "time=2000-01-01%2012:00,2001&lat=-3,3"
        );
        assert_eq!(encode_segment("a/b%?#é"), "a%2Fb%25%3F%23%C3%A9");
        for (q, param) in [
            ("lat=5", "lat"),
            ("lat=/5", "lat"),
            ("lat=5,", "lat"),
            ("lat=1/2&lat=3/4", "lat"),
            ("=1/2", "selection"),
        ] {
            assert_eq!(Selection::parse_query(q).expect_err(q).param, param, "{q}");
        }
        for (seg, param) in [
            ("", "selection"),
            ("lat", "selection"),
            ("lat=1", "lat"),
            ("&&", "selection"),
        ] {
            assert_eq!(
                Selection::parse_segment(seg).expect_err(seg).param,
                param,
                "{seg}"
            );
        }
    }

    #[test]
    fn resolves_as_xarray_sel_with_slices() {
        let dir = tempfile::tempdir().expect("tempdir");
        for cal in [
            "standard",
            "noleap",
            "360_day",
            "proleptic_gregorian",
            "all_leap",
            "julian",
        ] {
            let ds = open(dir.path(), cal);
            let x = ds.variable("x").expect("x").clone();
            // 2000-12-30.5 .. 2001-01-04.5 in every calendar but 360_day, whose 2000-12-30 is
            // the month's last day; December alone is 2 (or 1) steps
            let w = sel("time=2000-12/2000-12&lat=20/-30")
                .resolve(&ds, &x)
                .expect(cal);
            let dec = if cal == "360_day" { 1 } else { 2 };
            assert_eq!(
                w.dims,
                vec![("lat".into(), 1, 3), ("time".into(), 0, dec)],
                "{cal}"
            );
            // written by the first and last selected values
            let last = if cal == "360_day" {
                "2000-12-30"
            } else {
                "2000-12-31"
            };
            assert_eq!(
                w.text,
                format!("sel(lat=slice(10.0, -30.0), time=slice('2000-12-30T12:00:00', '{last}T12:00:00'))")
            );
            let w = sel("time=2001-01-02/2001").resolve(&ds, &x).expect(cal);
            let first = if cal == "360_day" { 2 } else { 3 };
            assert_eq!(w.get("time").map(|t| t.0), Some(first), "{cal}");
        }
        let ds = open(dir.path(), "360_day");
        let x = ds.variable("x").expect("x").clone();
        // a float32 coordinate compares its bounds in float32, as NumPy does
        let w = sel("lon=0/0.1").resolve(&ds, &x).expect("lon");
        assert_eq!(w.get("lon"), Some((0, 1)));
        // bad input names the parameter
        for (q, param, words) in [
            ("lat=-30/30", "lat", "selects nothing"),
            ("lon=5/1", "lon", "selects nothing"),
            ("time=2001-01-05/2000-12-01", "time", "selects nothing"),
            ("depth=0/1", "depth", "not a dimension of 'x'"),
            ("lat=a/1", "lat", "not a number"),
            ("time=2001-02-31/2001-03", "time", "not a date"),
            ("time=2000-13/2001", "time", "not a date"),
        ] {
            let e = sel(q).resolve(&ds, &x).expect_err(q);
            assert_eq!(e.param, param, "{q}: {e}");
            assert!(e.reason.contains(words), "{q}: {e}");
        }
        // 2001-02-30 exists in 360_day only
        let g = open(dir.path(), "noleap");
        let gx = g.variable("x").expect("x").clone();
        assert!(sel("time=2000-12-30/2001-02-30").resolve(&ds, &x).is_ok());
        assert_eq!(
            sel("time=2000-12-30/2001-02-30")
                .resolve(&g, &gx)
                .expect_err("noleap")
                .param,
            "time"
        );
    }

    /// Every spelling of one selection resolves to the same window, text included (what
    /// the product's provenance, fingerprint, ETags and cache key are made of); another
    /// selection to another.
    #[test]
    fn spellings_of_one_selection_resolve_alike() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ds = open(dir.path(), "noleap");
        let x = ds.variable("x").expect("x").clone();
        let w = sel("time=2000-12/2001-01-02&lat=10/-30")
            .resolve(&ds, &x)
            .expect("w");
        assert_eq!(
            w.text,
            "sel(lat=slice(10.0, -30.0), time=slice('2000-12-30T12:00:00', '2001-01-02T12:00:00'))"
        );
        for q in [
            "lat=10.0/-30.0&time=2000-12/2001-01-02",
            "time=2000-12-01/2001-01-02T23:59:59&lat=1e1/-3e1",
            "lat=19.9,-31&time=2000-12-30T12,2001-01-02T12:00",
            "time=2000/2001-01-02&lat=29/-100",
        ] {
            assert_eq!(sel(q).resolve(&ds, &x).expect(q), w, "{q}");
        }
        for q in [
            "time=2000-12/2001-01-03&lat=10/-30",
            "time=2000-12/2001-01-02&lat=10/-10",
            "time=2000-12/2001-01-02",
        ] {
            assert_ne!(sel(q).resolve(&ds, &x).expect(q), w, "{q}");
        }
        // a float32 coordinate's bounds in float32's shortest text, which NumPy reads back
        let l = sel("lon=0/0.5").resolve(&ds, &x).expect("lon");
        assert_eq!(l.text, "sel(lon=slice(0.1, 0.1))");
        let l = sel("lon=1/4").resolve(&ds, &x).expect("lon");
        assert_eq!(l.text, "sel(lon=slice(1.8, 3.6))");
        assert_eq!(sel("lon=1.8/3.6").resolve(&ds, &x).expect("lon"), l);
    }

    #[test]
    fn a_sliced_variable_reads_its_stretch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ds = open(dir.path(), "noleap");
        let x = ds.variable("x").expect("x").clone();
        let w = sel("time=2001-01-01/2001-01-03&lat=10/-10")
            .resolve(&ds, &x)
            .expect("window");
        let s = w.slice(&x).expect("slice");
        assert_eq!(s.shape, vec![3, 2, LON as u64]);
        assert_eq!(s.chunks, vec![2, 2, 2], "chunks no longer than the stretch");
        let got: Vec<f32> = pipeline::read_region(&s, &[0, 0, 0], &[3, 2, LON as u64])
            .expect("read")
            .values()
            .expect("f32");
        let want: Vec<f32> = (2..5)
            .flat_map(|t| (1..3).flat_map(move |la| (0..LON).map(move |lo| ((t * 4 + la) * LON + lo) as f32)))
            .collect();
        assert_eq!(got, want);
        // a variable without selected dimensions is itself
        let lon = ds.variable("lon").expect("lon").clone();
        assert!(Arc::ptr_eq(&w.slice(&lon).expect("lon"), &lon));
        // another stretch is another computation (ETag and cache key)
        let w2 = sel("time=2001-01-02/2001-01-04&lat=10/-10")
            .resolve(&ds, &x)
            .expect("window");
        assert_ne!(
            pipeline::describe(&s),
            pipeline::describe(&w2.slice(&x).expect("slice"))
        );
    }

    #[test]
    fn slices_follow_xarray() {
        let asc = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(slice_positions(&asc, 2.0, 3.0), Some((1, 2)));
        assert_eq!(slice_positions(&asc, 2.5, 10.0), Some((2, 2)));
        assert_eq!(slice_positions(&asc, 3.0, 2.0), Some((2, 0)));
        let desc = [4.0, 3.0, 2.0, 1.0];
        assert_eq!(slice_positions(&desc, 3.0, 2.0), Some((1, 2)));
        assert_eq!(slice_positions(&desc, 2.0, 3.0), Some((2, 0)));
        assert_eq!(slice_positions(&[1.0, 3.0, 2.0], 1.0, 2.0), None);
    }

    #[test]
    fn partial_dates_span_their_period() {
        let axis = TimeAxis::new("days since 2000-01-01", Some("360_day")).expect("axis");
        let (s, e) = date_bounds("2000-02", &axis).expect("month");
        assert_eq!((s.month, s.day, e.month, e.day, e.hour), (2, 1, 2, 30, 23));
        let (s, e) = date_bounds("2001", &axis).expect("year");
        assert_eq!((s.year, s.month, e.month, e.day), (2001, 1, 12, 30));
        assert!(date_bounds("2000-02-30", &axis).is_some(), "exists in 360_day");
        let g = TimeAxis::new("days since 2000-01-01", Some("standard")).expect("axis");
        assert!(date_bounds("2001-02-29", &g).is_none());
        let (_, e) = date_bounds("2000-01-01T06", &g).expect("hour");
        assert_eq!((e.hour, e.minute), (6, 59));
        for bad in ["", "x", "2000-13", "2000-1-1x", "2000--01", "2000-01-01T25"] {
            assert!(date_bounds(bad, &g).is_none(), "{bad}");
        }
    }
}
