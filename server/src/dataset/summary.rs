//! Human- and machine-readable summaries of a dataset (xpublish's `/`, `/dict`, `/info`).

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use super::{Dataset, Group, Variable};
use crate::attrs::{AttrValue, Attrs};

/// Attribute value as standard JSON (non-finite floats as strings, since these routes are
/// read by browsers and generic JSON tools).
pub fn attr_json(v: &AttrValue) -> Value {
    fn f(x: f64) -> Value {
        serde_json::Number::from_f64(x).map_or_else(|| Value::String(x.to_string()), Value::Number)
    }
    fn one_or_many(mut v: Vec<Value>) -> Value {
        if v.len() == 1 {
            v.remove(0)
        } else {
            Value::Array(v)
        }
    }
    match v {
        AttrValue::Str(s) => json!(s),
        AttrValue::Strs(s) => one_or_many(s.iter().map(|x| json!(x)).collect()),
        AttrValue::Ints(x) => one_or_many(x.iter().map(|x| json!(x)).collect()),
        AttrValue::UInts(x) => one_or_many(x.iter().map(|x| json!(x)).collect()),
        AttrValue::Floats(x) => one_or_many(x.iter().map(|x| f(*x)).collect()),
        AttrValue::Floats32(x) => one_or_many(x.iter().map(|x| f(f64::from(*x))).collect()),
    }
}

/// JSON object of the attributes as summaries show them (one-element arrays as scalars).
pub fn attrs_json(a: &Attrs) -> Value {
    Value::Object(a.0.iter().map(|(k, v)| (k.clone(), attr_json(v))).collect())
}

fn var_attrs_json(v: &Variable) -> Value {
    let mut m = match attrs_json(&v.attrs) {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    if let Some(f) = v.fill_attr {
        m.insert("_FillValue".into(), crate::dtype::fill_json(f, v.dtype));
    }
    Value::Object(m)
}

/// Names that are coordinates: dimension coordinates and those listed in `coordinates`.
fn coord_names(g: &Group) -> Vec<String> {
    let mut names: Vec<String> = g
        .vars
        .iter()
        .filter(|v| v.dims.len() == 1 && v.dims[0] == v.name)
        .map(|v| v.name.clone())
        .collect();
    for v in &g.vars {
        if let Some(c) = v.attrs.get_str("coordinates") {
            for n in c.split_whitespace() {
                if g.vars.iter().any(|x| x.name == n) && !names.iter().any(|x| x == n) {
                    names.push(n.to_string());
                }
            }
        }
    }
    names
}

fn nbytes(v: &Variable) -> u64 {
    v.shape.iter().product::<u64>() * v.dtype.size().max(8) as u64
}

fn human(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut x = n as f64;
    let mut i = 0;
    while x >= 1000.0 && i + 1 < units.len() {
        x /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n}B")
    } else {
        format!("{x:.0}{}", units[i])
    }
}

/// Text summary in the style of xarray's repr.
pub fn text(ds: &Dataset) -> String {
    let mut out = String::new();
    for g in ds.root.walk() {
        let total: u64 = g.vars.iter().map(|v| nbytes(v)).sum();
        if g.path.is_empty() {
            let _ = writeln!(out, "<xarray.Dataset> Size: {}", human(total));
        } else {
            let _ = writeln!(out, "\n<group '{}'> Size: {}", g.path, human(total));
        }
        let dims: Vec<String> = g.dims.iter().map(|(n, l)| format!("{n}: {l}")).collect();
        let _ = writeln!(out, "Dimensions:  ({})", dims.join(", "));
        let coords = coord_names(g);
        let width = g.vars.iter().map(|v| v.name.len()).max().unwrap_or(0).max(8);
        let line = |out: &mut String, v: &Variable, marker: &str| {
            let _ = writeln!(
                out,
                "  {marker} {:width$} ({}) {} {}",
                v.name,
                v.dims.join(", "),
                v.dtype.numpy_name(),
                human(nbytes(v))
            );
        };
        let _ = writeln!(out, "Coordinates:");
        for v in g.vars.iter().filter(|v| coords.contains(&v.name)) {
            line(
                &mut out,
                v,
                if v.dims.len() == 1 && v.dims[0] == v.name {
                    "*"
                } else {
                    " "
                },
            );
        }
        let _ = writeln!(out, "Data variables:");
        for v in g.vars.iter().filter(|v| !coords.contains(&v.name)) {
            line(&mut out, v, " ");
        }
        if !g.attrs.0.is_empty() {
            let _ = writeln!(out, "Attributes:");
            for (k, v) in &g.attrs.0 {
                let mut s = v.display();
                if s.len() > 100 {
                    let cut = (0..=100).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
                    s.truncate(cut);
                    s.push_str("...");
                }
                let _ = writeln!(out, "    {k}:  {}", s.replace('\n', " "));
            }
        }
    }
    if !ds.skipped.is_empty() {
        let _ = writeln!(out, "\nNot served:");
        for (n, why) in &ds.skipped {
            let _ = writeln!(out, "    {n}: {why}");
        }
    }
    out
}

/// Links to a map (PNG, the first step of leading dimensions) of every variable with two
/// or more dimensions that is not a coordinate.
fn plot_links(ds: &Dataset) -> String {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let links: Vec<String> = ds
        .root
        .vars
        .iter()
        .filter(|v| v.dims.len() >= 2 && !v.dims.contains(&v.name))
        .map(|v| {
            format!(
                "<a href=\"plot/{}/map/viridis\">{}</a>",
                enc(&v.name),
                esc(&v.name)
            )
        })
        .collect();
    if links.is_empty() {
        return String::new();
    }
    // the interactive map (tiles, `crate::http::tiles`) of the same variables
    let maps: Vec<String> = ds
        .root
        .vars
        .iter()
        .filter(|v| v.dims.len() >= 2 && !v.dims.contains(&v.name))
        .map(|v| format!("<a href=\"map?variables={}\">{}</a>", enc(&v.name), esc(&v.name)))
        .collect();
    format!(
        "<p>Maps (PNG): {}</p><p>Map viewer (Web-Mercator tiles, time slider): {}</p>",
        links.join(" · "),
        maps.join(" · ")
    )
}
/// A form for the EDR position query (`/datasets/{id}/edr/position`, see `crate::http::edr`):
/// a point series is what many visitors of a dataset want, in a format they choose. The
/// other parameters keep their defaults (every variable, all times); `datetime` is sent as
/// `../..` because an empty one is refused.
const EDR_FORM: &str = "<form action=\"edr/position\" method=\"get\"><p>Time series at a point (OGC API EDR, nearest cell; polygons: <code>edr/area?coords=POLYGON((...))</code>): <input name=\"coords\" required placeholder=\"POINT(lon lat)\" size=\"24\"> <input name=\"datetime\" value=\"../..\" size=\"24\" title=\"a/b, '..' for an open end\"> <select name=\"f\"><option value=\"cf_covjson\">CoverageJSON</option><option value=\"csv\">CSV</option><option value=\"nc\">netCDF</option></select> <button>extract</button></p></form>";

/// HTML page wrapping the text summary.
pub fn html(ds: &Dataset) -> String {
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{name}</title></head><body><h1>{name}</h1><pre>{}</pre><p>Zarr: <a href=\"zarr/.zmetadata\">v2 (.zmetadata)</a> · <a href=\"zarr/zarr.json\">v3 (zarr.json)</a> · <a href=\"info\">info</a> · <a href=\"dict\">dict</a></p>{plots}{EDR_FORM}</body></html>",
        esc(&text(ds)),
        plots = plot_links(ds),
        name = esc(&ds.name)
    )
}

fn group_dict(g: &Group) -> Value {
    let coords = coord_names(g);
    let entry = |v: &Variable| json!({"dims": v.dims, "attrs": var_attrs_json(v), "dtype": v.dtype.numpy_name(), "shape": v.shape});
    let mut c = Map::new();
    let mut d = Map::new();
    for v in &g.vars {
        if coords.contains(&v.name) {
            c.insert(v.name.clone(), entry(v));
        } else {
            d.insert(v.name.clone(), entry(v));
        }
    }
    let dims: Map<String, Value> = g.dims.iter().map(|(n, l)| (n.clone(), json!(l))).collect();
    let mut out = json!({"coords": c, "attrs": attrs_json(&g.attrs), "dims": dims, "data_vars": d});
    if !g.groups.is_empty() {
        out["groups"] = Value::Object(g.groups.iter().map(|s| (s.path.clone(), group_dict(s))).collect());
    }
    out
}

/// xarray's `Dataset.to_dict(data=False)`.
pub fn dict(ds: &Dataset) -> Value {
    group_dict(&ds.root)
}

fn group_info(g: &Group) -> Value {
    let vars: Map<String, Value> = g
        .vars
        .iter()
        .map(|v| {
            (
                v.name.clone(),
                json!({"type": v.dtype.numpy_name(), "dimensions": v.dims, "shape": v.shape, "chunks": v.chunks, "attributes": var_attrs_json(v)}),
            )
        })
        .collect();
    let dims: Map<String, Value> = g.dims.iter().map(|(n, l)| (n.clone(), json!(l))).collect();
    let mut out = json!({"dimensions": dims, "variables": vars, "global_attributes": attrs_json(&g.attrs)});
    if !g.groups.is_empty() {
        out["groups"] = Value::Object(g.groups.iter().map(|s| (s.path.clone(), group_info(s))).collect());
    }
    out
}

/// ncdump-like JSON description (xpublish's `/info`).
pub fn info(ds: &Dataset) -> Value {
    let mut v = group_info(&ds.root);
    // File names only: the server's directory layout is nobody else's business.
    v["sources"] = json!(
        ds.files
            .iter()
            .map(|f| f
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default())
            .collect::<Vec<_>>()
    );
    if !ds.skipped.is_empty() {
        v["not_served"] = Value::Object(ds.skipped.iter().map(|(n, w)| (n.clone(), json!(w))).collect());
    }
    v
}
