//! What a catalog says about a dataset, worked out from the dataset itself: coordinates
//! (read from the files), CF attributes and the [`DatasetSpec`](cloudify_crds::DatasetSpec).
//!
//! Reading happens here, once per dataset; turning a [`Description`] into STAC or intake
//! documents (`item.rs`, `intake.rs`) is pure, so those are tested without files.

use serde_json::{Value, json};

use super::CatalogError;
use crate::attrs::Attrs;
use crate::chunk::grid::numel;
use crate::dataset::cftime::{TimeAxis, iso_duration};
use crate::dataset::{Dataset, Group, Variable};
use crate::dtype::{DType, Scalar};
use crate::pipeline::read_block;

/// Largest coordinate variable read for extents (elements). Bigger 2-D lat/lon arrays are
/// not read: their bbox is left out rather than stalling a request.
const MAX_COORD_ELEMS: usize = 64 << 20;
/// Coordinates with at most this many values list them in `cube:dimensions`.
const MAX_LISTED_VALUES: usize = 32;

/// A datacube dimension (the datacube extension's `cube:dimensions` entry).
#[derive(Clone, Debug, PartialEq)]
pub struct CubeDim {
    /// The dimension's name, the key in `cube:dimensions`.
    pub name: String,
    /// The JSON object for `cube:dimensions[name]`.
    pub json: Value,
}

/// A datacube variable (`cube:variables` entry).
#[derive(Clone, Debug, PartialEq)]
pub struct CubeVar {
    /// The variable's name, the key in `cube:variables`.
    pub name: String,
    /// The JSON object for `cube:variables[name]`.
    pub json: Value,
}

/// Everything the catalog documents need, independent of the URL they are served under.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Description {
    /// The dataset's name, which is also the STAC item id (stable across restarts).
    pub id: String,
    /// The spec's title, else the `title` global attribute.
    pub title: Option<String>,
    /// The spec's description, else the `summary`, `description` or `comment` attribute.
    pub description: Option<String>,
    /// SPDX identifier or `other`.
    pub license: Option<String>,
    /// The spec's keywords, else the `keywords` attribute split at commas (or semicolons).
    pub keywords: Vec<String>,
    /// STAC provider objects.
    pub providers: Vec<Value>,
    /// `[west, south, east, north]`; west > east when the area crosses the antimeridian.
    pub bbox: Option<[f64; 4]>,
    /// Start and end as RFC 3339 text.
    pub time: Option<(String, String)>,
    /// When no time axis can be decoded: a timestamp of the data (creation date, else the
    /// newest source file's mtime), since STAC items must carry some datetime.
    pub fallback_datetime: String,
    /// Datacube dimensions, in the dataset's order.
    pub dims: Vec<CubeDim>,
    /// Datacube variables (data and auxiliary, not dimension coordinates).
    pub vars: Vec<CubeVar>,
    /// Global attributes worth showing in catalogs (`institution`, `source`, ...).
    pub extra: serde_json::Map<String, Value>,
    /// Problems met while describing (undecodable time axis, ...): logged, not fatal.
    pub warnings: Vec<String>,
    /// The dataset's views (`processing.views`): (served id, view name), each offered as a
    /// `processed` asset of this dataset's item.
    pub views: Vec<(String, String)>,
}

/// Reads a whole numeric variable as f64 (packed values unpacked, fill values as NaN).
pub fn read_f64(var: &Variable) -> Result<Vec<f64>, CatalogError> {
    if !var.dtype.is_number() {
        return Err(CatalogError::NotNumeric(var.path.clone()));
    }
    if var.on_tape() {
        return Err(CatalogError::OnTape(var.path.clone()));
    }
    numel(&var.shape)
        .filter(|n| *n <= MAX_COORD_ELEMS)
        .ok_or_else(|| CatalogError::TooLarge(var.path.clone()))?;
    let elem = var.dtype.size();
    let zero = vec![0u64; var.shape.len()];
    let buf = read_block(var, &zero, &var.shape, &var.shape)?;
    let scale = var
        .attrs
        .get("scale_factor")
        .and_then(super::super::attrs::AttrValue::first_f64)
        .unwrap_or(1.0);
    let offset = var
        .attrs
        .get("add_offset")
        .and_then(super::super::attrs::AttrValue::first_f64)
        .unwrap_or(0.0);
    let fill = var.fill_attr.map(Scalar::as_f64);
    Ok(buf
        .chunks_exact(elem)
        .map(|b| {
            let x = Scalar::from_le_bytes(b, var.dtype).map_or(f64::NAN, Scalar::as_f64);
            if fill.is_some_and(|f| f == x || (f.is_nan() && x.is_nan())) || x.abs() >= 9.0e36 {
                f64::NAN
            } else {
                x * scale + offset
            }
        })
        .collect())
}

fn units(v: &Variable) -> Option<&str> {
    v.attrs.get_str("units")
}

fn std_name(v: &Variable) -> Option<&str> {
    v.attrs.get_str("standard_name")
}

fn is_lon(v: &Variable) -> bool {
    let u = units(v).unwrap_or("").to_ascii_lowercase();
    std_name(v) == Some("longitude")
        || matches!(
            u.as_str(),
            "degrees_east" | "degree_east" | "degree_e" | "degrees_e" | "degreee" | "degreese"
        )
        || (v.attrs.get_str("axis") == Some("X") && u.starts_with("degree"))
        || (u.is_empty() && matches!(v.name.as_str(), "lon" | "longitude" | "nav_lon"))
}

fn is_lat(v: &Variable) -> bool {
    let u = units(v).unwrap_or("").to_ascii_lowercase();
    std_name(v) == Some("latitude")
        || matches!(
            u.as_str(),
            "degrees_north" | "degree_north" | "degree_n" | "degrees_n" | "degreen" | "degreesn"
        )
        || (v.attrs.get_str("axis") == Some("Y") && u.starts_with("degree"))
        || (u.is_empty() && matches!(v.name.as_str(), "lat" | "latitude" | "nav_lat"))
}

fn is_time(v: &Variable) -> bool {
    let since = units(v).is_some_and(|u| u.to_ascii_lowercase().contains(" since "));
    since
        && (std_name(v) == Some("time")
            || v.attrs.get_str("axis") == Some("T")
            || v.name == "time"
            || v.dims.len() == 1)
}

fn is_vertical(v: &Variable) -> bool {
    v.attrs.get_str("axis") == Some("Z")
        || v.attrs.get("positive").is_some()
        || matches!(
            std_name(v),
            Some(
                "height"
                    | "depth"
                    | "altitude"
                    | "air_pressure"
                    | "atmosphere_hybrid_sigma_pressure_coordinate"
            )
        )
}

/// Picks a lat or lon variable: a dimension coordinate first, else a 1-D or 2-D auxiliary
/// coordinate (curvilinear grids).
fn find_coord(g: &Group, pred: fn(&Variable) -> bool) -> Option<&Variable> {
    let vars = || {
        g.vars
            .iter()
            .map(std::convert::AsRef::as_ref)
            .filter(|v| pred(v) && v.dtype.is_number())
    };
    vars()
        .find(|v| v.dims.len() == 1 && v.dims[0] == v.name)
        .or_else(|| vars().find(|v| v.dims.len() <= 2))
}

/// Longitude extent `(west, east)` in -180..180 from values in any convention (0..360 too).
///
/// The values are put on the circle and the largest empty arc between neighbours is found;
/// the data covers the rest. When no gap is clearly larger than the typical spacing the grid
/// is global (`-180, 180`). A region across the antimeridian comes out with west > east, as
/// STAC wants it.
pub fn lon_extent(values: &[f64]) -> Option<(f64, f64)> {
    let mut v: Vec<f64> = values
        .iter()
        .filter(|x| x.is_finite())
        .map(|x| {
            let w = (x + 180.0).rem_euclid(360.0) - 180.0;
            if w == -180.0 && *x > 0.0 { 180.0 } else { w }
        })
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    v.dedup();
    if v.len() == 1 {
        return Some((v[0], v[0]));
    }
    // gap after v[i] (wrapping from the last back to the first)
    let n = v.len();
    let (mut best, mut best_i) = (f64::MIN, 0usize);
    for i in 0..n {
        let next = if i + 1 < n { v[i + 1] } else { v[0] + 360.0 };
        let gap = next - v[i];
        if gap > best {
            best = gap;
            best_i = i;
        }
    }
    // Global when the largest gap is no more than typical spacing (regular grids) or
    // narrower than 3° (dense, irregular curvilinear grids).
    let mean = 360.0 / n as f64;
    if best <= 1.5 * mean || best < 3.0 {
        return Some((-180.0, 180.0));
    }
    let west = v[(best_i + 1) % n];
    let east = v[best_i];
    Some((west, east))
}

fn min_max(values: &[f64]) -> Option<(f64, f64)> {
    values
        .iter()
        .filter(|x| x.is_finite())
        .fold(None, |acc, &x| match acc {
            None => Some((x, x)),
            Some((a, b)) => Some((a.min(x), b.max(x))),
        })
}

/// Constant step of a 1-D axis (relative tolerance 1e-6), if regular.
pub fn regular_step(values: &[f64]) -> Option<f64> {
    if values.len() < 2 {
        return None;
    }
    let step = values[1] - values[0];
    let tol = step.abs() * 1e-6 + f64::EPSILON;
    values
        .windows(2)
        .all(|w| ((w[1] - w[0]) - step).abs() <= tol)
        .then_some(step)
}

fn data_type(d: DType) -> String {
    if d.is_number() && d != DType::Bool {
        d.numpy_name()
    } else {
        "other".into()
    }
}

fn num(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// A licence attribute as an SPDX id when it is one or names a common one, else `other`.
pub fn spdx_license(text: &str) -> String {
    let t = text.trim();
    let token =
        !t.is_empty() && t.len() <= 64 && t.chars().all(|c| c.is_ascii_alphanumeric() || "-.+".contains(c));
    if token {
        return t.to_string();
    }
    let l = t.to_ascii_lowercase().replace(['-', '_'], " ");
    let known = [
        ("attribution sharealike 4.0", "CC-BY-SA-4.0"),
        ("cc by sa 4.0", "CC-BY-SA-4.0"),
        ("attribution 4.0", "CC-BY-4.0"),
        ("cc by 4.0", "CC-BY-4.0"),
        ("cc0", "CC0-1.0"),
        ("apache license", "Apache-2.0"),
    ];
    known
        .iter()
        .find(|(k, _)| l.contains(k))
        .map_or_else(|| "other".to_string(), |(_, id)| (*id).to_string())
}

fn split_keywords(s: &str) -> Vec<String> {
    let sep = if s.contains(';') { ';' } else { ',' };
    s.split(sep)
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(String::from)
        .collect()
}

fn global_str(attrs: &Attrs, names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| attrs.get_str(n))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Decodes the time range, preferring the cell bounds (`bounds` attribute) when present:
/// monthly means then span whole months rather than mid-month to mid-month.
/// Decoded (start, end), the raw values and the axis.
type TimeInfo = ((String, String), Vec<f64>, TimeAxis);

fn time_range(g: &Group, t: &Variable) -> Result<TimeInfo, CatalogError> {
    let u = units(t).unwrap_or_default();
    let axis = TimeAxis::new(u, t.attrs.get_str("calendar"))
        .map_err(|e| CatalogError::Time(format!("{}: {e}", t.path)))?;
    let values = read_f64(t)?;
    let mut range_values = values.clone();
    if let Some(bname) = t.attrs.get_str("bounds")
        && let Some(b) = g.vars.iter().find(|v| v.name == bname)
        && let Ok(bv) = read_f64(b)
    {
        range_values = bv;
    }
    let (lo, hi) =
        min_max(&range_values).ok_or_else(|| CatalogError::Time(format!("{}: no valid values", t.path)))?;
    let fmt = |x: f64| -> Result<String, CatalogError> {
        axis.decode(x)
            .map_err(|e| CatalogError::Time(format!("{}: {e}", t.path)))?
            .to_rfc3339()
            .ok_or_else(|| CatalogError::Time(format!("{}: year outside 0..9999", t.path)))
    };
    Ok(((fmt(lo)?, fmt(hi)?), values, axis))
}

/// Describes a dataset: reads its coordinates and collects metadata.
///
/// Only the root group is described (the Zarr assets open the root group); a coordinate
/// that cannot be read or decoded leaves its part out and adds a warning instead of
/// failing, because a catalog entry without a bbox is still useful.
pub fn describe(ds: &Dataset) -> Description {
    let g = &ds.root;
    let attrs = &g.attrs;
    let spec = &ds.spec;
    let mut d = Description {
        id: ds.name.clone(),
        title: spec.title.clone().or_else(|| global_str(attrs, &["title"])),
        description: spec
            .description
            .clone()
            .or_else(|| global_str(attrs, &["summary", "description", "comment"])),
        license: spec
            .license
            .as_deref()
            .map(spdx_license)
            .or_else(|| global_str(attrs, &["license", "licence"]).map(|l| spdx_license(&l))),
        keywords: if spec.keywords.is_empty() {
            global_str(attrs, &["keywords"])
                .map(|k| split_keywords(&k))
                .unwrap_or_default()
        } else {
            spec.keywords.clone()
        },
        providers: if spec.providers.is_empty() {
            global_str(attrs, &["institution", "institution_id"])
                .map(|name| vec![json!({"name": name, "roles": ["producer"]})])
                .unwrap_or_default()
        } else {
            spec.providers
                .iter()
                .map(|p| serde_json::to_value(p).unwrap_or(Value::Null))
                .filter(|v| !v.is_null())
                .collect()
        },
        views: spec
            .processing
            .iter()
            .flat_map(|p| p.views.keys())
            .map(|v| (format!("{}.{v}", ds.name), v.clone()))
            .collect(),
        ..Default::default()
    };
    for key in [
        "institution",
        "source",
        "experiment_id",
        "source_id",
        "variable_id",
        "frequency",
        "Conventions",
    ] {
        if let Some(v) = attrs.get(key) {
            d.extra.insert(format!("cloudify:{key}"), super::json_attr(v));
        }
    }

    // horizontal extent
    let lon = find_coord(g, is_lon);
    let lat = find_coord(g, is_lat);
    let mut lon_vals = None;
    let mut lat_vals = None;
    if let (Some(lo), Some(la)) = (lon, lat) {
        match (read_f64(lo), read_f64(la)) {
            (Ok(x), Ok(y)) => {
                if let (Some((w, e)), Some((s, n))) = (lon_extent(&x), min_max(&y)) {
                    d.bbox = Some([w, s.max(-90.0), e, n.min(90.0)]);
                }
                lon_vals = Some(x);
                lat_vals = Some(y);
            }
            (Err(e), _) | (_, Err(e)) => d.warnings.push(format!("bbox: {e}")),
        }
    }

    // time
    let time = g.vars.iter().find(|v| is_time(v) && v.dims.len() == 1);
    let mut time_info = None;
    if let Some(t) = time {
        match time_range(g, t) {
            Ok((range, values, axis)) => {
                d.time = Some(range);
                time_info = Some((t.name.clone(), values, axis));
            }
            Err(e) => d.warnings.push(e.to_string()),
        }
    }
    d.fallback_datetime = global_str(attrs, &["date_created", "creation_date"])
        .and_then(|s| TimeAxis::new(&format!("days since {s}"), None).ok())
        .and_then(|a| a.decode(0.0).ok())
        .and_then(|t| t.to_rfc3339())
        .unwrap_or_else(|| newest_mtime(ds));

    // dimensions
    for (dim, len) in &g.dims {
        let coord = g
            .vars
            .iter()
            .find(|v| v.dims.len() == 1 && &v.dims[0] == dim && v.name == *dim);
        let index_extent = json!([0, len.saturating_sub(1)]);
        let json = match coord {
            Some(c) if lon.is_some_and(|l| l.name == c.name) => {
                let vals = lon_vals.as_deref().unwrap_or(&[]);
                let mut o = json!({"type": "spatial", "axis": "x", "reference_system": 4326});
                if let Some((a, b)) = min_max(vals) {
                    o["extent"] = json!([num(a), num(b)]);
                }
                if let Some(s) = regular_step(vals) {
                    o["step"] = num(s);
                }
                o
            }
            Some(c) if lat.is_some_and(|l| l.name == c.name) => {
                let vals = lat_vals.as_deref().unwrap_or(&[]);
                let mut o = json!({"type": "spatial", "axis": "y", "reference_system": 4326});
                if let Some((a, b)) = min_max(vals) {
                    o["extent"] = json!([num(a), num(b)]);
                }
                if let Some(s) = regular_step(vals) {
                    o["step"] = num(s);
                }
                o
            }
            Some(c) if time_info.as_ref().is_some_and(|(n, _, _)| n == &c.name) => {
                let mut o = json!({"type": "temporal"});
                if let Some((name, vals, axis)) = &time_info {
                    let decoded: Vec<Option<String>> = [vals.first(), vals.last()]
                        .iter()
                        .map(|x| x.and_then(|x| axis.decode(*x).ok()).and_then(|t| t.to_rfc3339()))
                        .collect();
                    o["extent"] = json!(decoded);
                    let step = regular_step(vals).and_then(|s| iso_duration(s * axis.unit_seconds()));
                    o["step"] = step.map_or(Value::Null, Value::String);
                    o["description"] = json!(format!("{name} ({})", axis_calendar_name(axis)));
                }
                o
            }
            Some(c) => {
                let vertical = is_vertical(c);
                let mut o = if vertical {
                    json!({"type": "spatial", "axis": "z"})
                } else {
                    json!({"type": c.attrs.get_str("standard_name").unwrap_or("other")})
                };
                match read_f64(c) {
                    Ok(vals) => {
                        if let Some((a, b)) = min_max(&vals) {
                            o["extent"] = json!([num(a), num(b)]);
                        }
                        if vals.len() <= MAX_LISTED_VALUES {
                            o["values"] = Value::Array(vals.iter().map(|x| num(*x)).collect());
                        }
                        if let Some(s) = regular_step(&vals) {
                            o["step"] = num(s);
                        }
                    }
                    Err(_) => o["extent"] = index_extent.clone(),
                }
                if let Some(u) = units(c) {
                    o["unit"] = json!(u);
                }
                if let Some(l) = c.attrs.get_str("long_name") {
                    o["description"] = json!(l);
                }
                o
            }
            // no coordinate variable: an index dimension (bnds, curvilinear i/j, ...)
            None => json!({"type": "index", "extent": index_extent, "step": 1}),
        };
        d.dims.push(CubeDim {
            name: dim.clone(),
            json,
        });
    }

    // variables (dimension coordinates are described as dimensions)
    for v in &g.vars {
        if v.dims.len() == 1 && v.dims[0] == v.name {
            continue;
        }
        let aux = lon.is_some_and(|l| l.name == v.name)
            || lat.is_some_and(|l| l.name == v.name)
            || g.vars.iter().any(|o| {
                o.attrs.get_str("bounds") == Some(v.name.as_str())
                    || o.attrs
                        .get_str("coordinates")
                        .is_some_and(|c| c.split_whitespace().any(|n| n == v.name))
            });
        let mut o = json!({
            "dimensions": v.dims,
            "type": if aux { "auxiliary" } else { "data" },
            "data_type": data_type(v.dtype),
        });
        if let Some(u) = units(v) {
            o["unit"] = json!(u);
        }
        if let Some(l) = v.attrs.get_str("long_name").or_else(|| std_name(v)) {
            o["description"] = json!(l);
        }
        if let Some(f) = v.fill_attr.map(Scalar::as_f64) {
            o["nodata"] = if f.is_nan() { json!("nan") } else { num(f) };
        }
        d.vars.push(CubeVar {
            name: v.name.clone(),
            json: o,
        });
    }
    d
}

fn axis_calendar_name(axis: &TimeAxis) -> &'static str {
    use crate::dataset::cftime::Calendar as C;
    match axis.calendar() {
        C::Standard => "standard calendar",
        C::ProlepticGregorian => "proleptic_gregorian calendar",
        C::Julian => "julian calendar",
        C::NoLeap => "noleap calendar",
        C::AllLeap => "all_leap calendar",
        C::Day360 => "360_day calendar",
    }
}

fn newest_mtime(ds: &Dataset) -> String {
    let newest = ds
        .files
        .iter()
        .filter_map(|f| std::fs::metadata(&f.path).and_then(|m| m.modified()).ok())
        .max()
        .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
    let secs = newest
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs() as f64);
    TimeAxis::new("seconds since 1970-01-01", Some("proleptic_gregorian"))
        .ok()
        .and_then(|a| a.decode(secs).ok())
        .and_then(|t| t.to_rfc3339())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lon_0_360_global_grid() {
        let lon: Vec<f64> = (0..180).map(|i| 1.0 + 2.0 * i as f64).collect();
        assert_eq!(lon_extent(&lon), Some((-180.0, 180.0)));
        let lon: Vec<f64> = (0..360).map(f64::from).collect();
        assert_eq!(lon_extent(&lon), Some((-180.0, 180.0)));
    }

    #[test]
    fn lon_0_360_regional() {
        // Europe on 0..360: 350..360 and 0..40 → -10..40
        let mut lon: Vec<f64> = (350..360).map(f64::from).collect();
        lon.extend((0..=40).map(f64::from));
        assert_eq!(lon_extent(&lon), Some((-10.0, 40.0)));
        // the Pacific across the antimeridian: 160..200 → west 160 > east -160
        let lon: Vec<f64> = (160..=200).map(f64::from).collect();
        assert_eq!(lon_extent(&lon), Some((160.0, -160.0)));
        // -180..180 input, regional
        let lon: Vec<f64> = (0..20).map(|i| -20.0 + i as f64).collect();
        assert_eq!(lon_extent(&lon), Some((-20.0, -1.0)));
        assert_eq!(lon_extent(&[f64::NAN]), None);
        assert_eq!(lon_extent(&[360.0]), Some((0.0, 0.0)));
    }

    #[test]
    fn lon_curvilinear_2d() {
        // a tripolar-like grid: longitudes scattered over the whole circle → global
        let lon: Vec<f64> = (0..10_000).map(|i| (i as f64 * 7.31) % 360.0).collect();
        assert_eq!(lon_extent(&lon), Some((-180.0, 180.0)));
        // rotated-pole regional grid: 2-D values between 350 and 30 (0..360 convention)
        let lon: Vec<f64> = (0..40)
            .flat_map(|j| (0..40).map(move |i| (350.0 + i as f64 + 0.1 * j as f64) % 360.0))
            .collect();
        let (w, e) = lon_extent(&lon).unwrap();
        assert!((w + 10.0).abs() < 1e-9 && (e - 32.9).abs() < 1e-9, "{w} {e}");
    }

    #[test]
    fn steps_and_licenses() {
        assert_eq!(regular_step(&[0.0, 2.5, 5.0, 7.5]), Some(2.5));
        assert_eq!(regular_step(&[0.0, 1.0, 3.0]), None);
        assert_eq!(spdx_license("CC-BY-4.0"), "CC-BY-4.0");
        assert_eq!(
            spdx_license(
                "CMIP6 model data ... licensed under a Creative Commons Attribution-ShareAlike 4.0 International License"
            ),
            "CC-BY-SA-4.0"
        );
        assert_eq!(spdx_license("Free for research use only"), "other");
        assert_eq!(split_keywords("a, b ,c"), vec!["a", "b", "c"]);
        assert_eq!(split_keywords("x; y, z"), vec!["x", "y, z"]);
    }
}
