//! Curvilinear grids: fields whose cells are placed by 2-D latitude/longitude arrays named in
//! the variable's `coordinates` attribute (CMIP6 ocean and sea-ice grids: tripolar, rotated
//! pole). Plots and map tiles draw them by one rule, the nearest cell on the sphere:
//!
//! - every cell centre with finite coordinates becomes a unit vector `(cos φ cos λ, cos φ sin λ,
//!   sin φ)`; a cell with a non-finite latitude or longitude is no cell (never drawn);
//! - a pixel centre (lon/lat) shows the cell whose unit vector is nearest by chord (3-D
//!   Euclidean) distance, the smaller flat index `row · nx + col` on an exact tie;
//! - that cell is drawn only if the chord distance is at most the cell's *reach*: the largest
//!   chord distance from the cell to its (up to four) row/column neighbours with finite
//!   coordinates (0 for a cell without any). Inside the grid a pixel is always within its
//!   nearest cell's reach; beyond the grid's edges (or a hole of cells without coordinates)
//!   pixels farther than one cell from every cell stay transparent, so the grid's outline
//!   shows; masked (NaN) values are transparent, so the land mask shows.
//!
//! The search is an exact 3-D k-d tree over the cells (median splits on the widest axis,
//! built once per grid; [`Index::nearest`] is deterministic). Memory is 37 bytes per cell; grids above [`MAX_GRID_CELLS`] cells are refused (413).
//! Not `rstar` (already in the dependency tree): its R-tree's nearest-neighbour query made a
//! 1.15 M-cell grid's map 1.8× and its median tile 2.3× slower than this tree (measured
//! 2026-12-07, same machine, alternating runs), and could not break ties by index for free.

use std::sync::{Arc, Mutex};

use super::derived::Input;
use super::expr::Col;
use crate::dataset::{Dataset, Variable};
use crate::pipeline;

/// The most cells of a grid indexed (as many as a plot holds).
pub const MAX_GRID_CELLS: u64 = 4_000_000;

/// Why a curvilinear grid cannot be drawn; the plot layer maps the kind to a status.
#[derive(Debug, thiserror::Error)]
pub enum CurvError {
    /// Inconsistent or unusable coordinates: 400.
    #[error("{0}")]
    Bad(String),
    /// A grid beyond the caps: 413.
    #[error("{0}")]
    TooLarge(String),
    /// A source read failed.
    #[error(transparent)]
    Read(#[from] crate::chunk::read::ReadError),
}

/// The 2-D coordinates of a curvilinear variable.
#[derive(Debug, Clone)]
pub struct Coords {
    /// The latitude variable.
    pub lat: Arc<Variable>,
    /// The longitude variable.
    pub lon: Arc<Variable>,
    /// Position in the variable's dimensions of the coordinates' first (row) dimension.
    pub ya: usize,
    /// Position of their second (column) dimension.
    pub xa: usize,
}

fn lower(v: &Variable, k: &str) -> String {
    v.attrs.get_str(k).unwrap_or("").to_ascii_lowercase()
}

fn is_lat_var(c: &Variable) -> bool {
    let (u, sn) = (lower(c, "units"), lower(c, "standard_name"));
    sn == "latitude" || u == "degrees_north" || u == "degree_north" || u == "degrees_n"
}

fn is_lon_var(c: &Variable) -> bool {
    let (u, sn) = (lower(c, "units"), lower(c, "standard_name"));
    sn == "longitude" || u == "degrees_east" || u == "degree_east" || u == "degrees_e"
}

/// The 2-D latitude/longitude that `v`'s `coordinates` attribute names, `Ok(None)` when it
/// names no multi-dimensional latitude or longitude; 400 naming them when they are there but
/// inconsistent (one without the other, different dimensions, not two dimensions of `v`).
pub fn coords(ds: &Dataset, v: &Variable) -> Result<Option<Coords>, CurvError> {
    let Some(list) = v.attrs.get_str("coordinates") else {
        return Ok(None);
    };
    // a grid whose last two dimensions have 1-D latitude/longitude coordinates is
    // rectilinear, whatever else its coordinates attribute names
    let nd = v.dims.len();
    let one_d = |d: &str, lat: bool| {
        ds.variable(d).is_some_and(|c| {
            c.dims.len() == 1
                && if lat {
                    is_lat_var(c) || matches!(d, "lat" | "latitude")
                } else {
                    is_lon_var(c) || matches!(d, "lon" | "longitude")
                }
        })
    };
    if nd >= 2
        && ((one_d(&v.dims[nd - 2], true) && one_d(&v.dims[nd - 1], false))
            || (one_d(&v.dims[nd - 1], true) && one_d(&v.dims[nd - 2], false)))
    {
        return Ok(None);
    }
    let named: Vec<&Arc<Variable>> = list
        .split_whitespace()
        .filter_map(|c| ds.variable(c))
        .filter(|c| c.dims.len() >= 2)
        .collect();
    let lat = named.iter().find(|c| is_lat_var(c)).copied();
    let lon = named.iter().find(|c| is_lon_var(c)).copied();
    let (lat, lon) = match (lat, lon) {
        (None, None) => return Ok(None),
        (Some(a), Some(o)) => (a, o),
        (Some(c), None) | (None, Some(c)) => {
            return Err(CurvError::Bad(format!(
                "'{}' names the 2-D coordinate '{}' ({}) but no matching 2-D {} in its coordinates attribute '{list}'",
                v.name,
                c.name,
                c.dims.join(", "),
                if is_lat_var(c) { "longitude" } else { "latitude" }
            )));
        }
    };
    let bad = |why: String| {
        CurvError::Bad(format!(
            "'{}' has inconsistent curvilinear coordinates: latitude '{}' ({}: {:?}) and longitude '{}' ({}: {:?}): {why}",
            v.name,
            lat.name,
            lat.dims.join(", "),
            lat.shape,
            lon.name,
            lon.dims.join(", "),
            lon.shape
        ))
    };
    if lat.dims.len() != 2 || lon.dims.len() != 2 {
        return Err(bad("both must have exactly two dimensions".into()));
    }
    if lat.dims != lon.dims || lat.shape != lon.shape {
        return Err(bad("they must have the same dimensions and shape".into()));
    }
    let pos = |d: &str| v.dims.iter().position(|x| x == d);
    let (Some(ya), Some(xa)) = (pos(&lat.dims[0]), pos(&lat.dims[1])) else {
        return Err(bad(format!(
            "their dimensions must be dimensions of '{}' ({})",
            v.name,
            v.dims.join(", ")
        )));
    };
    if v.shape[ya] != lat.shape[0] || v.shape[xa] != lat.shape[1] {
        return Err(bad(format!(
            "their shape must be that of '{}' on those dimensions ({:?})",
            v.name,
            [v.shape[ya], v.shape[xa]]
        )));
    }
    let nd = v.dims.len();
    if !((ya == nd - 2 && xa == nd - 1) || (ya == nd - 1 && xa == nd - 2)) {
        return Err(bad(format!(
            "their dimensions must be the last two of '{}' ({})",
            v.name,
            v.dims.join(", ")
        )));
    }
    Ok(Some(Coords {
        lat: lat.clone(),
        lon: lon.clone(),
        ya,
        xa,
    }))
}

/// The unit vector of lon/lat degrees.
pub fn unit(lon: f64, lat: f64) -> [f64; 3] {
    let (l, p) = (lon.to_radians(), lat.to_radians());
    [p.cos() * l.cos(), p.cos() * l.sin(), p.sin()]
}

fn d2(a: &[f64; 3], b: &[f64; 3]) -> f64 {
    let (x, y, z) = (a[0] - b[0], a[1] - b[1], a[2] - b[2]);
    x * x + y * y + z * z
}

/// A nearest-cell index over a block of `ny × nx` cells (row-major, rows the coordinates'
/// first dimension).
#[derive(Debug)]
pub struct Index {
    /// Rows.
    pub ny: usize,
    /// Columns.
    pub nx: usize,
    /// Unit vectors of the cells, by flat index (NaN for a cell without coordinates).
    pts: Vec<[f64; 3]>,
    /// Reach of every cell (chord), by flat index.
    reach: Vec<f64>,
    /// The k-d tree: cell ids in tree order (node at the middle of each range).
    tree: Vec<u32>,
    /// Split axis of the node at each tree position.
    axis: Vec<u8>,
}

impl Index {
    /// An index of cells at `lat`/`lon` (degrees, `ny × nx` row-major). 400 when no cell has
    /// finite coordinates or a latitude is outside −90..90.
    pub fn new(
        ny: usize,
        nx: usize,
        lat: Vec<f64>,
        lon: Vec<f64>,
        names: (&str, &str),
    ) -> Result<Index, CurvError> {
        let n = ny * nx;
        if lat.len() != n || lon.len() != n {
            return Err(CurvError::Bad(format!(
                "'{}'/'{}': {} and {} values for a {ny}×{nx} grid",
                names.0,
                names.1,
                lat.len(),
                lon.len()
            )));
        }
        if let Some(bad) = lat.iter().find(|p| p.is_finite() && p.abs() > 90.0) {
            return Err(CurvError::Bad(format!(
                "latitude '{}' has the value {bad}, outside -90..90",
                names.0
            )));
        }
        let pts: Vec<[f64; 3]> = lat
            .iter()
            .zip(&lon)
            .map(|(p, l)| {
                if p.is_finite() && l.is_finite() {
                    unit(*l, *p)
                } else {
                    [f64::NAN; 3]
                }
            })
            .collect();
        let mut ids: Vec<u32> = (0..n)
            .filter(|i| pts[*i][0].is_finite())
            .filter_map(|i| u32::try_from(i).ok())
            .collect();
        if ids.is_empty() {
            return Err(CurvError::Bad(format!(
                "the 2-D coordinates '{}'/'{}' have no cell with a finite latitude and longitude",
                names.0, names.1
            )));
        }
        let mut reach = vec![0.0f64; n];
        for r in 0..ny {
            for c in 0..nx {
                let i = r * nx + c;
                if !pts[i][0].is_finite() {
                    continue;
                }
                let mut m = 0.0f64;
                let mut see = |j: usize| {
                    if pts[j][0].is_finite() {
                        m = m.max(d2(&pts[i], &pts[j]));
                    }
                };
                if r > 0 {
                    see(i - nx);
                }
                if r + 1 < ny {
                    see(i + nx);
                }
                if c > 0 {
                    see(i - 1);
                }
                if c + 1 < nx {
                    see(i + 1);
                }
                reach[i] = m.sqrt();
            }
        }
        let mut axis = vec![0u8; ids.len()];
        build(&pts, &mut ids, &mut axis);
        Ok(Index {
            ny,
            nx,
            pts,
            reach,
            tree: ids,
            axis,
        })
    }

    /// The cell (flat index) drawn at lon/lat: the nearest by chord distance (smaller index
    /// on a tie), `None` when it is farther than its reach.
    pub fn cell_at(&self, lon: f64, lat: f64) -> Option<usize> {
        if !(lon.is_finite() && lat.is_finite()) {
            return None;
        }
        let q = unit(lon, lat);
        let (i, d) = self.nearest(&q)?;
        (d.sqrt() <= self.reach[i]).then_some(i)
    }

    /// The nearest cell to unit vector `q` and its squared chord distance.
    pub fn nearest(&self, q: &[f64; 3]) -> Option<(usize, f64)> {
        let mut best: Option<(f64, u32)> = None;
        self.search(q, 0, self.tree.len(), &mut best);
        best.map(|(d, i)| (i as usize, d))
    }

    fn search(&self, q: &[f64; 3], lo: usize, hi: usize, best: &mut Option<(f64, u32)>) {
        if lo >= hi {
            return;
        }
        let mid = lo + (hi - lo) / 2;
        let id = self.tree[mid];
        let p = &self.pts[id as usize];
        let d = d2(p, q);
        if best.is_none_or(|(bd, bi)| d < bd || (d == bd && id < bi)) {
            *best = Some((d, id));
        }
        let ax = usize::from(self.axis[mid]);
        let diff = q[ax] - p[ax];
        let (near, far) = if diff < 0.0 {
            ((lo, mid), (mid + 1, hi))
        } else {
            ((mid + 1, hi), (lo, mid))
        };
        self.search(q, near.0, near.1, best);
        // `<=`: a cell at exactly the best distance on the far side may have a smaller id
        if best.is_none_or(|(bd, _)| diff * diff <= bd) {
            self.search(q, far.0, far.1, best);
        }
    }

    /// The extent `(west, south, east, north)` in degrees of the cells widened by their
    /// reach; `west` in −180..180, `east − west` at most 360 (the whole circle when the
    /// cells leave no gap wider than their reach). Longitudes cross the seam as needed: a
    /// grid over the date line has `east > 180`.
    pub fn extent(&self) -> (f64, f64, f64, f64) {
        let mut pad = 0.0f64;
        let (mut s, mut n) = (f64::INFINITY, f64::NEG_INFINITY);
        let mut lons: Vec<f64> = Vec::new();
        for i in 0..self.pts.len() {
            if !self.pts[i][0].is_finite() {
                continue;
            }
            let r = 2.0 * (self.reach[i] / 2.0).min(1.0).asin().to_degrees();
            pad = pad.max(r);
            let p = &self.pts[i];
            let lat = p[2].clamp(-1.0, 1.0).asin().to_degrees();
            s = s.min(lat - r);
            n = n.max(lat + r);
            lons.push(p[1].atan2(p[0]).to_degrees().rem_euclid(360.0));
        }
        let (s, n) = (s.max(-90.0), n.min(90.0));
        lons.sort_by(f64::total_cmp);
        lons.dedup();
        // the widest gap between consecutive longitudes (round the circle) is left out
        let k = lons.len();
        let (mut gap, mut after) = (0.0, 0usize);
        for j in 0..k {
            let g = if j + 1 < k {
                lons[j + 1] - lons[j]
            } else {
                lons[0] + 360.0 - lons[j]
            };
            if g > gap {
                gap = g;
                after = (j + 1) % k;
            }
        }
        // near a pole a little latitude is a lot of longitude
        let polar = s <= -89.0 || n >= 89.0;
        if gap <= 2.0 * pad || polar {
            return (-180.0, s, 180.0, n);
        }
        let start = lons[after];
        let width = 360.0 - gap;
        let lat_max = s.abs().max(n.abs()).min(89.0).to_radians();
        let lon_pad = (pad / lat_max.cos()).min(180.0);
        let west = start - lon_pad;
        let east = start + width + lon_pad;
        if east - west >= 360.0 {
            return (-180.0, s, 180.0, n);
        }
        let shift = (west + 180.0).div_euclid(360.0) * 360.0;
        (west - shift, s, east - shift, n)
    }
}

/// Builds the implicit k-d tree over `ids` (in place): the median by (coordinate, id) of
/// the widest axis at the middle of each range.
fn build(pts: &[[f64; 3]], ids: &mut [u32], axis: &mut [u8]) {
    if ids.len() <= 1 {
        return;
    }
    let mut lo = [f64::INFINITY; 3];
    let mut hi = [f64::NEG_INFINITY; 3];
    for &i in ids.iter() {
        let p = &pts[i as usize];
        for k in 0..3 {
            lo[k] = lo[k].min(p[k]);
            hi[k] = hi[k].max(p[k]);
        }
    }
    let mut ax = 0;
    for k in 1..3 {
        if hi[k] - lo[k] > hi[ax] - lo[ax] {
            ax = k;
        }
    }
    let mid = ids.len() / 2;
    ids.select_nth_unstable_by(mid, |a, b| {
        pts[*a as usize][ax]
            .total_cmp(&pts[*b as usize][ax])
            .then(a.cmp(b))
    });
    axis[mid] = ax as u8;
    let (l, r) = ids.split_at_mut(mid);
    let (al, ar) = axis.split_at_mut(mid);
    build(pts, l, al);
    build(pts, &mut r[1..], &mut ar[1..]);
}

/// Reads a 2-D coordinate block (rows `r`, columns `c`), decoded.
fn read_coord(v: &Arc<Variable>, (r0, nr): (u64, u64), (c0, nc): (u64, u64)) -> Result<Vec<f64>, CurvError> {
    let input = Input::new(v.clone()).map_err(CurvError::Bad)?;
    Ok(match input.read(&[r0, c0], &[nr, nc])? {
        Col::F32(v) => v.into_iter().map(f64::from).collect(),
        Col::F64(v) => v,
        Col::Bool(v) => v.into_iter().map(|b| f64::from(u8::from(b))).collect(),
    })
}

/// The index of the block rows `r0..r0+nr`, columns `c0..c0+nc` of the grid, after the
/// cell and source-byte caps (413).
pub fn index_block(
    c: &Coords,
    (r0, nr): (u64, u64),
    (c0, nc): (u64, u64),
    max_source_bytes: u64,
) -> Result<Index, CurvError> {
    let cells = nr.saturating_mul(nc);
    if cells > MAX_GRID_CELLS {
        return Err(CurvError::TooLarge(format!(
            "the curvilinear grid '{}'/'{}' has {cells} cells; at most {} are drawn",
            c.lat.name, c.lon.name, MAX_GRID_CELLS
        )));
    }
    let est = pipeline::estimate_region_bytes(&c.lat, &[r0, c0], &[nr, nc])
        .saturating_add(pipeline::estimate_region_bytes(&c.lon, &[r0, c0], &[nr, nc]));
    if max_source_bytes > 0 && est > max_source_bytes {
        return Err(CurvError::TooLarge(format!(
            "reading the coordinates '{}'/'{}' would read about {est} bytes of source data; the limit is {max_source_bytes} (--max-source-bytes)",
            c.lat.name, c.lon.name
        )));
    }
    let lat = read_coord(&c.lat, (r0, nr), (c0, nc))?;
    let lon = read_coord(&c.lon, (r0, nr), (c0, nc))?;
    Index::new(nr as usize, nc as usize, lat, lon, (&c.lat.name, &c.lon.name))
}

/// Indexes of whole grids kept for the tiles of a map (each tile would otherwise read the
/// coordinates and build the tree again); keyed by the coordinate variables themselves
/// (held, so a reloaded dataset's new variables never match an old entry).
type Cached = (Arc<Variable>, Arc<Variable>, Arc<Index>);
static CACHE: Mutex<Vec<Cached>> = Mutex::new(Vec::new());
/// Grids kept in [`CACHE`] (the most recently used).
const CACHED: usize = 4;

/// The index of the whole grid of `c`, cached.
pub fn index_all(c: &Coords, max_source_bytes: u64) -> Result<Arc<Index>, CurvError> {
    let hit = |e: &Cached| Arc::ptr_eq(&e.0, &c.lat) && Arc::ptr_eq(&e.1, &c.lon);
    if let Ok(mut cache) = CACHE.lock()
        && let Some(k) = cache.iter().position(hit)
    {
        let e = cache.remove(k);
        let idx = e.2.clone();
        cache.push(e);
        return Ok(idx);
    }
    let idx = Arc::new(index_block(
        c,
        (0, c.lat.shape[0]),
        (0, c.lat.shape[1]),
        max_source_bytes,
    )?);
    if let Ok(mut cache) = CACHE.lock() {
        if !cache.iter().any(hit) {
            cache.push((c.lat.clone(), c.lon.clone(), idx.clone()));
        }
        while cache.len() > CACHED {
            cache.remove(0);
        }
    }
    Ok(idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute(idx: &Index, q: &[f64; 3]) -> (usize, f64) {
        let mut best = (usize::MAX, f64::INFINITY);
        for (i, p) in idx.pts.iter().enumerate() {
            if !p[0].is_finite() {
                continue;
            }
            let d = d2(p, q);
            if d < best.1 {
                best = (i, d);
            }
        }
        best
    }

    #[test]
    fn kd_tree_equals_brute_force_and_reach_leaves_outside_empty() {
        // a rotated, sheared 20x30 grid crossing the 0/360 seam with a hole of NaN coordinates
        let (ny, nx) = (20, 30);
        let mut lat = Vec::new();
        let mut lon = Vec::new();
        for r in 0..ny {
            for c in 0..nx {
                lat.push(-30.0 + 2.0 * r as f64 + 0.3 * c as f64);
                lon.push((350.0 + 1.5 * c as f64 + 0.4 * r as f64).rem_euclid(360.0));
            }
        }
        lat[5 * nx + 7] = f64::NAN;
        let idx = Index::new(ny, nx, lat, lon, ("lat", "lon")).unwrap();
        let mut s = 7u64;
        for _ in 0..5000 {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let lo = -40.0 + 120.0 * ((s >> 11) as f64 / (1u64 << 53) as f64);
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let la = -50.0 + 100.0 * ((s >> 11) as f64 / (1u64 << 53) as f64);
            let q = unit(lo, la);
            let (i, d) = idx.nearest(&q).unwrap();
            let (bi, bd) = brute(&idx, &q);
            assert_eq!(d, bd, "{lo} {la}");
            assert!(i == bi || d == bd);
        }
        assert!(idx.cell_at(5.0, -20.0).is_some());
        assert!(idx.cell_at(180.0, 0.0).is_none()); // far from every cell
        assert!(idx.cell_at(10.0, 88.0).is_none());
        let (w, s, e, n) = idx.extent();
        assert!(w < -9.0 && w > -15.0 && e > 35.0 && e < 45.0, "{w} {e}");
        assert!(s < -30.0 && n > 15.0, "{s} {n}");
    }

    #[test]
    fn no_finite_cell_is_refused() {
        let e = Index::new(1, 2, vec![f64::NAN; 2], vec![0.0; 2], ("la", "lo")).unwrap_err();
        assert!(e.to_string().contains("no cell with a finite"), "{e}");
        let e = Index::new(1, 2, vec![91.0, 0.0], vec![0.0; 2], ("la", "lo")).unwrap_err();
        assert!(e.to_string().contains("outside -90..90"), "{e}");
    }
}
