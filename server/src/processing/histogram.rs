//! Histograms (`/datasets/{id}/histogram/{var}`), as `xhistogram.xarray.histogram` computes
//! them on the variable opened with xarray's defaults, after an optional value-range
//! selection (`ds[var].sel(dim=slice(a, b))`).
//!
//! Semantics, so that the served product equals xhistogram's:
//! - inputs CF-decoded as [`super::derived`] decodes them (`_FillValue`/`missing_value`
//!   masked, `scale_factor`/`add_offset` applied); NaN, masked and out-of-range values are
//!   dropped;
//! - bins: a count with `range=lo,hi` gives the edges `numpy.histogram_bin_edges` gives —
//!   `linspace` computed in float64 and cast to the decoded type (float32 data has float32
//!   edges, NEP 50), an empty range widened by ±0.5 — or explicit, strictly increasing edges
//!   (float64). Every bin is `[l, r)` except the last, `[l, r]`, compared as
//!   `searchsorted(edges, x, side="right")` does (in float64, exact for float32 data);
//! - the result is `histogram_{var}` with the kept dimensions (the variable's, in order,
//!   minus `dim`) then `{var}_bin`, whose coordinate holds the bin centres
//!   `0.5 * (l + r)` in the edges' type and the variable's attributes; counts are int64;
//!   `density` divides by the bin widths (in the edges' type) and the kept cell's total, in
//!   float64 (a cell without values is NaN, as `0 / 0` is in NumPy).
//!
//! Block-wise and streaming: an output block (kept dimensions' chunk × every bin) is
//! counted from the source region under it, read one source chunk at a time through
//! [`crate::pipeline::read_region`] and folded on the current rayon pool with int64
//! accumulators; memory is the output block's counts per worker plus one source chunk.

use std::sync::Arc;

use rayon::prelude::*;

use super::derived::Input;
use super::expr::{Col, Ty};
use super::select::{self, Window, split_range};
use crate::attrs::{AttrValue, Attrs};
use crate::block::Block;
use crate::chunk::read::ReadError;
use crate::dataset::{Dataset, Derive, Values, Variable};
use crate::dtype::{DType, Scalar};
use crate::pipeline;

/// The most bins a histogram may have (a larger count or more edges is refused).
pub const MAX_BINS: usize = 10_000;

/// The most values (kept cells × bins) of one served chunk of the product: kept chunk
/// lengths are halved until a chunk fits, so a chunk's counts stay a few MiB.
const CHUNK_VALUES: u64 = 1 << 20;

/// The attribute naming the computation the histogram holds.
pub const PROVENANCE_ATTR: &str = "cloudify_processing";

/// Why a histogram cannot be computed: `param` names the request parameter (`bins`,
/// `range`, `dim`, `density`, `variable`, or a dimension selected by value).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{param}: {reason}")]
pub struct HistError {
    /// The parameter at fault.
    pub param: String,
    /// Why.
    pub reason: String,
    /// True when the named variable does not exist (HTTP 404), else 400.
    pub missing: bool,
}

impl From<select::SelectError> for HistError {
    fn from(e: select::SelectError) -> Self {
        HistError {
            param: e.param,
            reason: e.reason,
            missing: false,
        }
    }
}

fn err(param: &str, reason: impl Into<String>) -> HistError {
    HistError {
        param: param.to_string(),
        reason: reason.into(),
        missing: false,
    }
}

/// How the bins are given.
#[derive(Debug, Clone, PartialEq)]
pub enum Bins {
    /// `n` equal bins over `[lo, hi]` (`bins=n&range=lo,hi`).
    Count {
        /// Number of bins.
        n: usize,
        /// Range as given.
        lo: f64,
        /// Range as given.
        hi: f64,
    },
    /// Explicit edges (`bins=e0,e1,...`), strictly increasing.
    Edges(Vec<f64>),
}

/// The parameters of a histogram request.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// The bins.
    pub bins: Bins,
    /// Dimensions to reduce; `None`: all.
    pub dim: Option<Vec<String>>,
    /// Whether to answer a density rather than counts.
    pub density: bool,
    /// Value-range selections `(dimension, from, to)` as written.
    pub select: Vec<(String, String, String)>,
}

fn parse_f64(param: &str, s: &str) -> Result<f64, HistError> {
    select::parse_f64(param, s).map_err(HistError::from)
}

impl Params {
    /// Parses a query string (`bins=10&range=200,300&dim=time&time=2000-01-01/2000-12-31`),
    /// percent-decoded as a form (`+` is a space there, `%2B` a plus). Keys other than
    /// `bins`, `range`, `dim` and `density` are dimensions selected by value. A key given
    /// twice is refused.
    pub fn parse(query: &str) -> Result<Params, HistError> {
        Params::from_pairs(
            url::form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())),
        )
    }

    /// Parses the Zarr form's `{params}` path segment as the router gives it: already
    /// percent-decoded once, so it is split on `&` and `=` and not decoded again. A `+` in a
    /// URL path is a plus, not a space (form decoding is for query strings only): a bin
    /// edge `1e+2` (or `1e%2B2`) must reach the parser as `1e+2`. A part without `=` is a
    /// key with an empty value, as in a query.
    pub fn parse_segment(segment: &str) -> Result<Params, HistError> {
        Params::from_pairs(
            segment
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (p.to_string(), String::new()),
                }),
        )
    }

    /// The parameters from decoded `(key, value)` pairs.
    fn from_pairs(pairs: impl Iterator<Item = (String, String)>) -> Result<Params, HistError> {
        let mut seen: Vec<String> = Vec::new();
        let (mut bins, mut range, mut dim, mut density) = (None, None, None, false);
        let mut select = Vec::new();
        for (k, v) in pairs {
            if k.is_empty() {
                return Err(err("query", format!("a parameter without a name ('={v}')")));
            }
            if seen.contains(&k) {
                return Err(err(&k, "given more than once"));
            }
            seen.push(k.clone());
            match k.as_str() {
                "bins" => bins = Some(v),
                "range" => range = Some(v),
                "dim" => dim = Some(v),
                "density" => {
                    density = match v.as_str() {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => return Err(err("density", format!("'{v}' is not true or false"))),
                    }
                }
                _ => {
                    let (a, b) = split_range(&v).ok_or_else(|| {
                        err(&k, format!("'{v}' is not a value range 'from/to' (or 'from,to')"))
                    })?;
                    select.push((k.clone(), a.trim().to_string(), b.trim().to_string()));
                }
            }
        }
        let bins = bins.ok_or_else(|| {
            err(
                "bins",
                "required: a bin count (with range=lo,hi) or edges e0,e1,...",
            )
        })?;
        let bins = if bins.contains(',') {
            if range.is_some() {
                return Err(err("range", "applies only to a bin count, not to explicit edges"));
            }
            let edges = bins
                .split(',')
                .map(|s| parse_f64("bins", s))
                .collect::<Result<Vec<_>, _>>()?;
            if edges.len() < 2 {
                return Err(err("bins", "explicit edges need at least two values"));
            }
            if edges.len() - 1 > MAX_BINS {
                return Err(err(
                    "bins",
                    format!("{} bins; at most {MAX_BINS}", edges.len() - 1),
                ));
            }
            if let Some(w) = edges.windows(2).position(|w| w[0] >= w[1]) {
                return Err(err(
                    "bins",
                    format!(
                        "edges must increase strictly ({} then {})",
                        edges[w],
                        edges[w + 1]
                    ),
                ));
            }
            Bins::Edges(edges)
        } else {
            let n: usize = bins.trim().parse().map_err(|_| {
                err(
                    "bins",
                    format!("'{bins}' is neither a positive bin count nor comma-separated edges"),
                )
            })?;
            if n == 0 {
                return Err(err("bins", "the bin count must be positive"));
            }
            if n > MAX_BINS {
                return Err(err("bins", format!("{n} bins; at most {MAX_BINS}")));
            }
            let range = range.ok_or_else(|| err("range", "required with a bin count: range=lo,hi"))?;
            let (a, b) = range
                .split_once(',')
                .ok_or_else(|| err("range", format!("'{range}' is not 'lo,hi'")))?;
            let (lo, hi) = (parse_f64("range", a)?, parse_f64("range", b)?);
            if lo > hi {
                return Err(err("range", format!("lo ({lo}) is larger than hi ({hi})")));
            }
            Bins::Count { n, lo, hi }
        };
        let dim = match dim {
            None => None,
            Some(d) => {
                let mut ds: Vec<String> = d.split(',').map(|s| s.trim().to_string()).collect();
                if ds.iter().any(String::is_empty) {
                    return Err(err("dim", format!("'{d}' names an empty dimension")));
                }
                // the order the reduced dimensions are named in does not change the product
                // (xhistogram's neither): `dim=lat,time` and `dim=time,lat` are one product,
                // one Zarr URL, one ETag
                ds.sort();
                Some(ds)
            }
        };
        // the order of selections does not change the product: keep one
        select.sort();
        Ok(Params {
            bins,
            dim,
            density,
            select,
        })
    }

    /// `key=value` of the bin parameters (`bins`, `range`, `dim`, `density`), numbers in
    /// Rust's shortest round-trip form (`-30` and `-30.0` write alike).
    fn bin_pairs(&self) -> Vec<String> {
        let mut out = Vec::new();
        match &self.bins {
            Bins::Count { n, lo, hi } => {
                out.push(format!("bins={n}"));
                out.push(format!("range={lo:?},{hi:?}"));
            }
            Bins::Edges(e) => {
                let t: Vec<String> = e.iter().map(|x| format!("{x:?}")).collect();
                out.push(format!("bins={}", t.join(",")));
            }
        }
        if let Some(d) = &self.dim {
            out.push(format!("dim={}", d.join(",")));
        }
        if self.density {
            out.push("density=true".into());
        }
        out
    }

    /// The parameters as one canonical URL path segment (the Zarr form's `{params}`),
    /// percent-encoded for a path ([`select::encode_segment`]: `+` and `,` stay, a space is
    /// `%20`), which [`Params::parse_segment`] reads back once the router has decoded it.
    /// Value ranges are written `from,to` (no `/`), sorted by dimension.
    pub fn canonical(&self) -> String {
        let mut parts = self.bin_pairs();
        parts.extend(self.select.iter().map(|(d, a, b)| format!("{d}={a},{b}")));
        select::encode_segment(&parts.join("&"))
    }
}

/// `numpy.linspace(lo, hi, n + 1)` as NumPy computes it (float64: `i * step + lo`, the
/// last edge `hi`; `i / div * delta + lo` when the step underflows to 0).
pub fn linspace(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let div = n as f64;
    let delta = hi - lo;
    let step = delta / div;
    let mut out: Vec<f64> = (0..=n)
        .map(|i| {
            let y = i as f64;
            if step == 0.0 {
                y / div * delta + lo
            } else {
                y * step + lo
            }
        })
        .collect();
    if let Some(last) = out.last_mut() {
        *last = hi;
    }
    out
}

/// The bin edges of `bins` for data decoded as `ty`, as `numpy.histogram_bin_edges` gives
/// them (float32 data: edges cast to float32, held here as float64).
pub fn edges(bins: &Bins, ty: Ty) -> Vec<f64> {
    match bins {
        Bins::Edges(e) => e.clone(),
        Bins::Count { n, lo, hi } => {
            let (lo, hi) = if lo == hi {
                (lo - 0.5, hi + 0.5)
            } else {
                (*lo, *hi)
            };
            let e = linspace(lo, hi, *n);
            if ty == Ty::F32 && !matches!(bins, Bins::Edges(_)) {
                #[allow(clippy::cast_possible_truncation)]
                e.into_iter().map(|x| f64::from(x as f32)).collect()
            } else {
                e
            }
        }
    }
}

/// Whether the edges are float32 (a bin count over float32 data).
fn edges_f32(bins: &Bins, ty: Ty) -> bool {
    matches!(bins, Bins::Count { .. }) && ty == Ty::F32
}

/// The bin of `x`: `[edges[i], edges[i+1])`, the last bin closed; `None` for NaN and values
/// outside the edges (as xhistogram's `searchsorted(side="right")` with the last edge moved
/// into the last bin).
pub fn bin_of(edges: &[f64], x: f64) -> Option<usize> {
    let n = edges.len().checked_sub(1)?;
    if n == 0 || x.is_nan() {
        return None;
    }
    if x == edges[n] {
        return Some(n - 1);
    }
    let idx = edges.partition_point(|e| *e <= x);
    (1..=n).contains(&idx).then(|| idx - 1)
}

/// Bin widths in the edges' type (`numpy.diff(edges)`), as float64.
pub fn widths(edges: &[f64], f32_edges: bool) -> Vec<f64> {
    edges
        .windows(2)
        .map(|w| {
            if f32_edges {
                #[allow(clippy::cast_possible_truncation)]
                f64::from(w[1] as f32 - w[0] as f32)
            } else {
                w[1] - w[0]
            }
        })
        .collect()
}

/// Bin centres `0.5 * (l + r)` in the edges' type, as float64.
pub fn centres(edges: &[f64], f32_edges: bool) -> Vec<f64> {
    edges
        .windows(2)
        .map(|w| {
            if f32_edges {
                #[allow(clippy::cast_possible_truncation)]
                f64::from(0.5f32 * (w[0] as f32 + w[1] as f32))
            } else {
                0.5 * (w[0] + w[1])
            }
        })
        .collect()
}

/// xhistogram's density of `counts` (cells × bins, bins last): `counts / widths / total`,
/// per cell, in float64.
pub fn density(counts: &[i64], widths: &[f64]) -> Vec<f64> {
    let nb = widths.len().max(1);
    let mut out = Vec::with_capacity(counts.len());
    for cell in counts.chunks(nb) {
        let total: i64 = cell.iter().sum();
        for (c, w) in cell.iter().zip(widths) {
            out.push(*c as f64 / *w / total as f64);
        }
    }
    out
}

/// Attributes of the variable as xarray shows them once decoded.
fn decoded_attrs(v: &Variable) -> Attrs {
    let mut a = v.attrs.clone();
    for k in [
        "missing_value",
        "scale_factor",
        "add_offset",
        "_Unsigned",
        "coordinates",
        "_FillValue",
    ] {
        a.remove(k);
    }
    a
}

/// A 1-D variable of fixed values (the bin centres).
#[derive(Debug)]
struct Fixed(Vec<f64>, bool);

impl Derive for Fixed {
    fn read(&self, start: &[u64], count: &[u64]) -> Result<Block, ReadError> {
        let (s, c) = (start[0] as usize, count[0] as usize);
        let v = self
            .0
            .get(s..s + c)
            .ok_or_else(|| ReadError::Block("region outside the bins".into()))?;
        #[allow(clippy::cast_possible_truncation)]
        let b = if self.1 {
            Block::from_values(vec![c as u64], &v.iter().map(|x| *x as f32).collect::<Vec<_>>())
        } else {
            Block::from_values(vec![c as u64], v)
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
        let bits: Vec<u64> = self.0.iter().map(|x| x.to_bits()).collect();
        format!("bins(f32={}, {bits:?})", self.1)
    }
}

/// The histogram variable: each block counted from the source region under it.
#[derive(Debug)]
pub struct Hist {
    input: Input,
    /// Per source dimension: the selection `(start, count)`.
    region: Vec<(u64, u64)>,
    /// Source axes that are kept, in order (output axes 0..k).
    kept: Vec<usize>,
    edges: Vec<f64>,
    /// Bin widths when the block is a density, else `None` (counts).
    widths: Option<Vec<f64>>,
}

impl Hist {
    /// The counts (cells × bins, bins last, cells in C order of `count[..k]`) of the output
    /// region whose kept part starts at `start` with lengths `count`.
    pub fn counts(&self, start: &[u64], count: &[u64]) -> Result<Vec<i64>, ReadError> {
        let k = self.kept.len();
        let nb = self.edges.len() - 1;
        let nd = self.region.len();
        // the source region under the block
        let mut s0 = Vec::with_capacity(nd);
        let mut c0 = Vec::with_capacity(nd);
        for (d, (rs, rc)) in self.region.iter().enumerate() {
            match self.kept.iter().position(|x| *x == d) {
                Some(o) => {
                    s0.push(rs + start[o]);
                    c0.push(count[o]);
                }
                None => {
                    s0.push(*rs);
                    c0.push(*rc);
                }
            }
        }
        let cells: usize = count[..k].iter().map(|c| *c as usize).product();
        let slots = cells * nb;
        // output cell stride of each source axis (0 for reduced axes)
        let mut ostride = vec![0usize; nd];
        let mut acc = 1usize;
        for o in (0..k).rev() {
            ostride[self.kept[o]] = acc;
            acc *= count[o] as usize;
        }
        let subs = pieces(&s0, &c0, &self.input.var.chunks);
        subs.into_par_iter()
            .try_fold(
                || vec![0i64; slots],
                |mut hist, (ss, sc)| {
                    self.fold(&mut hist, &s0, &ss, &sc, &ostride)?;
                    Ok::<_, ReadError>(hist)
                },
            )
            .try_reduce(
                || vec![0i64; slots],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                    Ok(a)
                },
            )
    }

    /// Adds the values of the source piece `(ss, sc)` into `hist`.
    fn fold(
        &self,
        hist: &mut [i64],
        s0: &[u64],
        ss: &[u64],
        sc: &[u64],
        ostride: &[usize],
    ) -> Result<(), ReadError> {
        let nb = self.edges.len() - 1;
        let vals: Vec<f64> = match self.input.read(ss, sc)? {
            Col::F32(v) => v.into_iter().map(f64::from).collect(),
            Col::F64(v) => v,
            Col::Bool(v) => v.into_iter().map(|b| f64::from(u8::from(b))).collect(),
        };
        let nd = sc.len();
        if nd == 0 {
            if let Some(b) = vals.first().and_then(|x| bin_of(&self.edges, *x)) {
                hist[b] += 1;
            }
            return Ok(());
        }
        let inner = sc[nd - 1] as usize;
        let mut idx = vec![0u64; nd - 1];
        let base_of = |idx: &[u64]| -> usize {
            (0..nd - 1)
                .map(|d| (ss[d] - s0[d] + idx[d]) as usize * ostride[d])
                .sum::<usize>()
                + (ss[nd - 1] - s0[nd - 1]) as usize * ostride[nd - 1]
        };
        for row in vals.chunks(inner.max(1)) {
            let base = base_of(&idx);
            for (j, x) in row.iter().enumerate() {
                if let Some(b) = bin_of(&self.edges, *x) {
                    hist[(base + j * ostride[nd - 1]) * nb + b] += 1;
                }
            }
            // odometer over the outer axes
            for d in (0..nd - 1).rev() {
                idx[d] += 1;
                if idx[d] < sc[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        Ok(())
    }
}

/// The region `(s, c)` cut at the boundaries of the chunk grid `chunks`, in C order.
fn pieces(s: &[u64], c: &[u64], chunks: &[u64]) -> Vec<(Vec<u64>, Vec<u64>)> {
    let nd = s.len();
    let mut per_axis: Vec<Vec<(u64, u64)>> = Vec::with_capacity(nd);
    for d in 0..nd {
        let step = chunks.get(d).copied().unwrap_or(1).max(1);
        let (mut r, end) = (s[d], s[d] + c[d]);
        let mut v = Vec::new();
        while r < end {
            let e = ((r / step + 1) * step).min(end);
            v.push((r, e - r));
            r = e;
        }
        if v.is_empty() {
            return Vec::new();
        }
        per_axis.push(v);
    }
    let mut out = vec![(Vec::new(), Vec::new())];
    for axis in per_axis {
        let mut next = Vec::with_capacity(out.len() * axis.len());
        for (ps, pc) in &out {
            for (a, n) in &axis {
                let mut ps = ps.clone();
                let mut pc = pc.clone();
                ps.push(*a);
                pc.push(*n);
                next.push((ps, pc));
            }
        }
        out = next;
    }
    out
}

impl Derive for Hist {
    fn read(&self, start: &[u64], count: &[u64]) -> Result<Block, ReadError> {
        let counts = self.counts(start, count)?;
        let shape = count.to_vec();
        let b = match &self.widths {
            None => Block::from_values(shape, &counts),
            Some(w) => Block::from_values(shape, &density(&counts, w)),
        };
        b.map_err(|e| ReadError::Block(e.to_string()))
    }

    fn check_sources(&self, _: &[u64], _: &[u64]) -> Result<(), ReadError> {
        let start: Vec<u64> = self.region.iter().map(|r| r.0).collect();
        let count: Vec<u64> = self.region.iter().map(|r| r.1).collect();
        pipeline::check_region_sources(&self.input.var, &start, &count)
    }

    /// An upper bound: the whole selected source region (a block over part of the kept
    /// dimensions reads less).
    fn estimate_bytes(&self, _: &[u64], _: &[u64]) -> u64 {
        let start: Vec<u64> = self.region.iter().map(|r| r.0).collect();
        let count: Vec<u64> = self.region.iter().map(|r| r.1).collect();
        pipeline::estimate_region_bytes(&self.input.var, &start, &count)
    }

    fn describe(&self) -> String {
        let edges: Vec<u64> = self.edges.iter().map(|x| x.to_bits()).collect();
        format!(
            "histogram(region={:?}, kept={:?}, edges={edges:?}, density={}, {})",
            self.region,
            self.kept,
            self.widths.is_some(),
            self.input.describe()
        )
    }
}

/// A built histogram: the product dataset and what the JSON answer reports.
#[derive(Debug)]
pub struct Product {
    /// The product (`histogram_{var}`, `{var}_bin`, kept coordinates).
    pub ds: Dataset,
    /// The bin edges (float64; float32 values when the edges are float32).
    pub edges: Vec<f64>,
    /// Kept dimensions and their lengths (after selection).
    pub kept: Vec<(String, u64)>,
    /// The selections applied: dimension, start, count.
    pub selected: Vec<(String, u64, u64)>,
}

/// The histogram of `var` in `parent` as a dataset `id`.
pub fn build(parent: &Dataset, id: &str, var: &str, p: &Params) -> Result<Product, HistError> {
    let v = parent
        .variable(var)
        .filter(|v| !v.path.contains('/'))
        .ok_or_else(|| HistError {
            param: "variable".into(),
            reason: format!("unknown variable '{var}'"),
            missing: true,
        })?;
    let input = Input::new(v.clone()).map_err(|m| err("variable", m))?;
    let nd = v.dims.len();
    let reduce: Vec<usize> = match &p.dim {
        None => (0..nd).collect(),
        Some(ds) => {
            let mut out = Vec::new();
            for d in ds {
                let i = v.dims.iter().position(|x| x == d).ok_or_else(|| {
                    err(
                        "dim",
                        format!(
                            "'{var}' has no dimension '{d}' (its dimensions: {})",
                            v.dims.join(", ")
                        ),
                    )
                })?;
                if out.contains(&i) {
                    return Err(err("dim", format!("'{d}' is named twice")));
                }
                out.push(i);
            }
            out
        }
    };
    let mut region: Vec<(u64, u64)> = v.shape.iter().map(|n| (0, *n)).collect();
    let mut selected = Vec::new();
    let mut sel_parts = Vec::new();
    for (d, a, b) in &p.select {
        let i = v.dims.iter().position(|x| x == d).ok_or_else(|| {
            err(
                d,
                format!(
                    "not a dimension of '{var}' (its dimensions: {}); other parameters are bins, range, dim, density",
                    v.dims.join(", ")
                ),
            )
        })?;
        let st = select::stretch(parent, d, Some(a), Some(b))?;
        region[i] = (st.start, st.count);
        selected.push((d.clone(), st.start, st.count));
        sel_parts.push(st.text);
    }
    // by dimension: the product does not depend on the order the request gave them in
    selected.sort();
    sel_parts.sort();
    let kept: Vec<usize> = (0..nd).filter(|i| !reduce.contains(i)).collect();
    let edges = edges(&p.bins, input.ty);
    let f32e = edges_f32(&p.bins, input.ty);
    let nb = edges.len() - 1;
    let bin_dim = format!("{var}_bin");
    let name = format!("histogram_{var}");
    if v.dims.contains(&bin_dim) || v.dims.contains(&name) {
        return Err(err(
            "variable",
            format!("'{var}' already has a dimension '{bin_dim}'"),
        ));
    }
    // output chunks: the source's along kept dimensions, halved until a chunk fits
    let mut chunks: Vec<u64> = kept
        .iter()
        .map(|i| v.chunks[*i].clamp(1, region[*i].1.max(1)))
        .collect();
    while chunks.iter().product::<u64>() * nb as u64 > CHUNK_VALUES {
        let Some(big) = (0..chunks.len())
            .filter(|i| chunks[*i] > 1)
            .max_by_key(|i| chunks[*i])
        else {
            break;
        };
        chunks[big] = chunks[big].div_ceil(2);
    }
    chunks.push(nb as u64);
    let mut dims: Vec<String> = kept.iter().map(|i| v.dims[*i].clone()).collect();
    dims.push(bin_dim.clone());
    let mut shape: Vec<u64> = kept.iter().map(|i| region[*i].1).collect();
    shape.push(nb as u64);
    // the selection as the stretches it resolved to, never as the request spelled it: one
    // selection is one provenance, fingerprint and ETag
    let what = format!(
        "xhistogram.histogram({var}, {}){}",
        p.bin_pairs().join("&"),
        if sel_parts.is_empty() {
            String::new()
        } else {
            format!(" after {}", select::sel_text(&sel_parts))
        }
    );
    let (dtype, fill, fill_attr) = if p.density {
        (
            DType::F64,
            f64::NAN.to_le_bytes().to_vec(),
            Some(Scalar::Float(f64::NAN)),
        )
    } else {
        (DType::I64, vec![0u8; 8], None)
    };
    let mut hattrs = Attrs::default();
    hattrs.insert(PROVENANCE_ATTR, AttrValue::Str(what.clone()));
    let hist = Variable {
        name: name.clone(),
        path: name.clone(),
        dims,
        shape,
        dtype,
        attrs: hattrs,
        fill_attr,
        fill,
        chunks,
        values: Values::Derived(Arc::new(Hist {
            input,
            region: region.clone(),
            kept: kept.clone(),
            edges: edges.clone(),
            widths: p.density.then(|| widths(&edges, f32e)),
        })),
    };
    let cdtype = if f32e { DType::F32 } else { DType::F64 };
    let bin = Variable {
        name: bin_dim.clone(),
        path: bin_dim.clone(),
        dims: vec![bin_dim.clone()],
        shape: vec![nb as u64],
        dtype: cdtype,
        attrs: decoded_attrs(v),
        fill_attr: None,
        fill: vec![0; cdtype.size()],
        chunks: vec![nb as u64],
        values: Values::Derived(Arc::new(Fixed(centres(&edges, f32e), f32e))),
    };
    let mut vars: Vec<Arc<Variable>> = Vec::new();
    let mut kept_out = Vec::new();
    for i in &kept {
        let d = &v.dims[*i];
        let (s, c) = region[*i];
        kept_out.push((d.clone(), c));
        if let Some(cv) = parent
            .variable(d)
            .filter(|cv| cv.dims.len() == 1 && cv.dims[0] == *d)
        {
            let window = Window {
                dims: vec![(d.clone(), s, c)],
                text: String::new(),
            };
            let sliced = window
                .slice(cv)
                .ok_or_else(|| err(d, format!("coordinate '{d}' is shorter than the selection")))?;
            let mut kept_coord = (*sliced).clone();
            kept_coord.attrs.remove("bounds");
            kept_coord.chunks = vec![c.max(1)];
            vars.push(Arc::new(kept_coord));
        }
    }
    vars.push(Arc::new(bin));
    vars.push(Arc::new(hist));
    let ds = super::product_dataset(parent, id, PROVENANCE_ATTR, &what, vars, &selected);
    Ok(Product {
        ds,
        edges,
        kept: kept_out,
        selected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `x(time, lat, lon)` float32 in chunks `{2, 3, 2}` that do not divide the shape, with a
    /// 1e20 fill and a NaN; a descending `lat` coordinate.
    fn open_x(dir: &std::path::Path) -> (Dataset, Vec<f32>) {
        let path = dir.join("x.nc");
        let mut f = netcdf::create(&path).expect("create");
        f.add_dimension("time", 5).expect("dim");
        f.add_dimension("lat", 4).expect("dim");
        f.add_dimension("lon", 3).expect("dim");
        let vals: Vec<f32> = (0..60).map(|i| ((i * 37) % 23) as f32 * 0.5).collect();
        let mut stored = vals.clone();
        stored[7] = 1e20;
        stored[8] = f32::NAN;
        {
            let mut v = f.add_variable::<f32>("x", &["time", "lat", "lon"]).expect("var");
            v.set_chunking(&[2, 3, 2]).expect("chunking");
            v.set_fill_value(1e20f32).expect("fill");
            v.put_values(&stored, ..).expect("put");
        }
        let mut lat = f.add_variable::<f64>("lat", &["lat"]).expect("var");
        lat.put_values(&[30.0, 10.0, -10.0, -30.0], ..).expect("put");
        drop(f);
        let file = Arc::new(crate::source::SourceFile::stat(path.clone()).expect("stat"));
        let idx = crate::open::file::open_file(file).expect("index");
        let spec = cloudify_crds::DatasetSpec::new("t", vec![path.display().to_string()]);
        (
            crate::dataset::aggregate::build(&spec, vec![idx]).expect("dataset"),
            stored,
        )
    }

    #[test]
    fn blocks_count_as_a_brute_force_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ds, stored) = open_x(dir.path());
        let p = Params::parse("bins=4&range=0,11&dim=time,lon&lat=10/-30").expect("params");
        let prod = build(&ds, "h", "x", &p).expect("build");
        assert_eq!(prod.kept, vec![("lat".to_string(), 3)]);
        assert_eq!(prod.selected, vec![("lat".to_string(), 1, 3)]);
        let h = prod.ds.variable("histogram_x").expect("hist");
        assert_eq!(h.dims, vec!["lat", "x_bin"]);
        let got: Vec<i64> = pipeline::read_region(h, &[0, 0], &[3, 4])
            .expect("read")
            .values()
            .expect("i64");
        let e = edges(&p.bins, Ty::F32);
        let mut want = vec![0i64; 12];
        for t in 0..5 {
            for (k, la) in (1..4).enumerate() {
                for lo in 0..3 {
                    let x = stored[(t * 4 + la) * 3 + lo];
                    let x = if x == 1e20 { f32::NAN } else { x };
                    if let Some(b) = bin_of(&e, f64::from(x)) {
                        want[k * 4 + b] += 1;
                    }
                }
            }
        }
        assert_eq!(got, want);
        assert!(want.iter().sum::<i64>() > 30, "most values fall in the range");
        // a block of the kept dimension alone counts the same cells
        let one: Vec<i64> = pipeline::read_region(h, &[1, 0], &[1, 4])
            .expect("read")
            .values()
            .expect("i64");
        assert_eq!(one, want[4..8].to_vec());
        // the kept coordinate is the selected stretch
        let lat: Vec<f64> = pipeline::read_region(prod.ds.variable("lat").expect("lat"), &[0], &[3])
            .expect("read")
            .values()
            .expect("f64");
        assert_eq!(lat, vec![10.0, -10.0, -30.0]);
        // selection errors name the dimension
        for (q, param) in [
            ("bins=2&range=0,1&lat=-30/30", "lat"),
            ("bins=2&range=0,1&lon=0/1", "lon"),
            ("bins=2&range=0,1&depth=0/1", "depth"),
            ("bins=2&range=0,1&dim=depth", "dim"),
        ] {
            let e = build(&ds, "h", "x", &Params::parse(q).expect(q)).expect_err(q);
            assert_eq!(e.param, param, "{q}: {e}");
        }
        assert!(build(&ds, "h", "nope", &p).expect_err("missing").missing);
    }

    #[test]
    fn bins_are_half_open_but_the_last_is_closed() {
        let e = [0.0, 1.0, 2.0, 3.0];
        assert_eq!(bin_of(&e, 0.0), Some(0));
        assert_eq!(bin_of(&e, 0.999), Some(0));
        assert_eq!(bin_of(&e, 1.0), Some(1));
        assert_eq!(bin_of(&e, 2.5), Some(2));
        assert_eq!(bin_of(&e, 3.0), Some(2), "the last bin holds its right edge");
        assert_eq!(bin_of(&e, 3.000_001), None);
        assert_eq!(bin_of(&e, -0.0), Some(0));
        assert_eq!(bin_of(&e, -1e-300), None);
        assert_eq!(bin_of(&e, f64::NAN), None);
        assert_eq!(bin_of(&e, f64::INFINITY), None);
        assert_eq!(bin_of(&e, f64::NEG_INFINITY), None);
        assert_eq!(bin_of(&[1.0, 2.0], 2.0), Some(0));
        assert_eq!(bin_of(&[1.0], 1.0), None);
    }

    #[test]
    fn edges_are_numpys() {
        // numpy.histogram_bin_edges(np.zeros(1, "f8"), 3, (0, 1))
        assert_eq!(linspace(0.0, 1.0, 3), vec![0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0]);
        // i * step + lo, not lo + i * (hi - lo) / n: 0.1 * 3 + 0 differs from 0.3
        let e = linspace(0.0, 1.0, 10);
        assert_eq!(e[3], 3.0 * 0.1);
        assert_eq!(e[10], 1.0);
        // float32 data: float32 edges; an empty range widened by 0.5
        let b = Bins::Count {
            n: 2,
            lo: 0.1,
            hi: 0.1,
        };
        assert_eq!(
            edges(&b, Ty::F32),
            vec![f64::from(-0.4f32), f64::from(0.1f32), f64::from(0.6f32)]
        );
        assert_eq!(edges(&b, Ty::F64), vec![0.1 - 0.5, (0.1 - 0.5) + 0.5, 0.1 + 0.5]);
        let w = widths(&[0.0, f64::from(0.1f32)], true);
        assert_eq!(w, vec![f64::from(0.1f32)]);
        assert_eq!(centres(&[1.0, 2.0, 4.0], false), vec![1.5, 3.0]);
    }

    #[test]
    fn density_is_per_cell() {
        let d = density(&[1, 3, 0, 0], &[0.5, 1.0]);
        assert_eq!(d[0], 1.0 / 0.5 / 4.0);
        assert_eq!(d[1], 3.0 / 1.0 / 4.0);
        assert!(d[2].is_nan() && d[3].is_nan(), "no values: 0/0");
    }

    #[test]
    fn params_parse_and_round_trip() {
        let p = Params::parse("bins=10&range=200,300&dim=time,lat&density=true&time=2000-01-01/2000-12-31")
            .expect("parse");
        assert_eq!(
            p.bins,
            Bins::Count {
                n: 10,
                lo: 200.0,
                hi: 300.0
            }
        );
        // named in any order, kept sorted: one product
        assert_eq!(p.dim, Some(vec!["lat".into(), "time".into()]));
        assert!(p.density);
        assert_eq!(
            p.select,
            vec![("time".into(), "2000-01-01".into(), "2000-12-31".into())]
        );
        let c = p.canonical();
        assert!(!c.contains('/'), "{c}");
        assert_eq!(Params::parse_segment(&c).expect("canonical"), p);
        let e = Params::parse("bins=0,1.5,2").expect("edges");
        assert_eq!(e.bins, Bins::Edges(vec![0.0, 1.5, 2.0]));
        assert_eq!(Params::parse_segment(&e.canonical()).expect("again"), e);
        let bad = [
            ("", "bins"),
            ("bins=x", "bins"),
            ("bins=0&range=0,1", "bins"),
            ("bins=10001&range=0,1", "bins"),
            ("bins=1,1", "bins"),
            ("bins=2,1", "bins"),
            ("bins=1", "range"),
            ("bins=1&range=2,1", "range"),
            ("bins=1&range=0,inf", "range"),
            ("bins=1&range=a,1", "range"),
            ("bins=0,1&range=0,1", "range"),
            ("bins=1&range=0,1&density=yes", "density"),
            ("bins=1&range=0,1&dim=", "dim"),
            ("bins=1&range=0,1&lat=5", "lat"),
            ("bins=1&bins=2&range=0,1", "bins"),
        ];
        // more edges than MAX_BINS + 1: over HTTP the data server's 8 KiB request-target
        // limit (http::middleware::MAX_URI_BYTES) answers 414 first, so the check is only
        // reachable, and tested, here
        let many: Vec<String> = (0..=MAX_BINS + 1).map(|i| i.to_string()).collect();
        let e = Params::parse(&format!("bins={}", many.join(","))).expect_err("too many");
        assert!(e.param == "bins" && e.reason.contains("at most 10000"), "{e}");
        for (q, param) in bad {
            assert_eq!(Params::parse(q).expect_err(q).param, param, "{q}");
            assert_eq!(Params::parse_segment(q).expect_err(q).param, param, "{q}");
        }
    }

    /// Decodes `%XX` once, as the router decodes a path segment (`+` stays a plus).
    fn path_decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%'
                && let Some(x) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(x);
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).expect("utf-8")
    }

    /// Regression (issue #14): the Zarr form's segment arrives decoded once and is not
    /// decoded again, so a `+` stays a plus; a query string is a form, where `+` is a space
    /// and `%2B` a plus. The canonical segment is encoded for a path and reads back.
    #[test]
    fn a_plus_in_the_path_segment_is_a_plus() {
        let want = Bins::Edges(vec![0.0, 100.0, 1000.0]);
        // `1e%2B2` in a URL path reaches the handler as `1e+2`
        let p = Params::parse_segment("bins=0,1e+2,1e+3").expect("segment");
        assert_eq!(p.bins, want);
        assert_eq!(Params::parse("bins=0,1e%2B2,1e%2B3").expect("query").bins, want);
        let e = Params::parse("bins=0,1e+2,1e+3").expect_err("a space in a form");
        assert_eq!(
            (e.param.as_str(), e.reason.as_str()),
            ("bins", "'1e 2' is not a number")
        );
        // a segment is not decoded again: '%2B' as it arrives is no number
        assert_eq!(
            Params::parse_segment("bins=0,1e%2B2").expect_err("twice").param,
            "bins"
        );
        // a date with a space (and a plus in a bound): encoded for a path, read back
        let q = Params::parse("bins=2&range=0,1&time=2000-01-01%2012:00/2001&lat=%2B1/2").expect("q");
        let c = q.canonical();
        assert_eq!(
            c, "bins=2&range=0.0,1.0&lat=+1,2&time=2000-01-01%2012:00,2001",
            "selections sorted, a space %20, '+' and ',' as they are"
        );
        assert_eq!(Params::parse_segment(&path_decode(&c)).expect("back"), q);
        // the order of the selections does not matter
        let r = Params::parse("lat=%2B1/2&time=2000-01-01%2012:00/2001&range=0,1&bins=2").expect("r");
        assert_eq!(r, q);
    }
}
