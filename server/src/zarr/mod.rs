//! Zarr v2 and v3 metadata of a dataset, rendered once at open time.
//!
//! Both formats live on one prefix: their key names never collide (`.zarray` vs `zarr.json`)
//! and clients detect the format they ask for.

pub mod encoding;
pub mod key;
pub mod meta;

use std::collections::HashMap;

use base64::Engine as _;
use bytes::Bytes;

use crate::attrs::{Attrs, write_json_str};
use serde_json::json;

use crate::codec::numcodecs;
use crate::dataset::{Dataset, Group, Variable};
use crate::dtype::{DType, Scalar, fill_json};

/// Pre-rendered metadata documents, keyed by their Zarr key (e.g. `tas/.zarray`).
#[derive(Debug, Default)]
pub struct ZarrMeta {
    /// The documents as served (JSON bytes, cheap to clone into responses), by Zarr key.
    pub docs: HashMap<String, Bytes>,
    /// Chunk encodings by array path, as the metadata documents declare them.
    pub encodings: HashMap<String, encoding::ZarrEncoding>,
}

fn json_str_list(v: &[String]) -> String {
    let mut s = String::from("[");
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        write_json_str(&mut s, x);
    }
    s.push(']');
    s
}

fn key(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}/{name}")
    }
}

/// `.zarray` of a variable.
pub fn v2_array(v: &Variable) -> String {
    let (compressor, filters) = match v.dtype {
        DType::Str => numcodecs::v2_strings(),
        _ => numcodecs::v2(&encoding::choose(v).v2),
    };
    meta::ArrayV2::of(v, &v.chunks, v.dtype.zarr_v2(), compressor, filters).to_json()
}

/// Variable `.zattrs`: attributes plus xarray's `_ARRAY_DIMENSIONS`.
pub fn v2_attrs(v: &Variable) -> String {
    v.attrs
        .to_json(&[], &[("_ARRAY_DIMENSIONS", json_str_list(&v.dims))])
}

/// xarray's v3 spelling of `_FillValue`: floats as base64 of a little-endian f64.
fn v3_fill_attr(s: Scalar, dt: DType) -> String {
    if dt.is_float() {
        let v = Scalar::from_le_bytes(&s.to_le_bytes(dt), dt).map_or(f64::NAN, Scalar::as_f64);
        let b64 = base64::engine::general_purpose::STANDARD.encode(v.to_le_bytes());
        format!("\"{b64}\"")
    } else {
        fill_json(s, dt).to_string()
    }
}

/// Array `zarr.json` (v3).
pub fn v3_array(v: &Variable) -> String {
    let zstd = crate::codec::zstd::v3(crate::codec::ZSTD_LEVEL);
    let bytes = json!({"name": "bytes"});
    let bytes_le = json!({"name": "bytes", "configuration": {"endian": "little"}});
    let (fill, codecs) = match v.dtype {
        DType::Str => (
            json!(""),
            vec![json!({"name": crate::codec::vlen_utf8::ID}), zstd],
        ),
        DType::Char => (json!("AA=="), vec![bytes, zstd]),
        // zarr-python 3: fixed-width text fills with "", one-byte types take no endian
        DType::Bytes(_) => (json!(""), vec![bytes, zstd]),
        DType::Unicode(_) => (json!(""), vec![bytes_le, zstd]),
        dt => {
            let s = v
                .fill_attr
                .unwrap_or_else(|| Scalar::from_le_bytes(&v.fill, dt).unwrap_or(Scalar::Int(0)));
            let fill = if dt == DType::Bool {
                json!(s.as_f64() != 0.0) // v3 bool fill values are JSON booleans
            } else {
                fill_json(s, dt)
            };
            (fill, vec![bytes_le, numcodecs::v3(&encoding::choose(v).v3)])
        }
    };
    let mut extra = Vec::new();
    if let Some(s) = v.fill_attr {
        extra.push(("_FillValue", v3_fill_attr(s, v.dtype)));
    }
    let attrs = meta::raw(v.attrs.to_json(&[], &extra));
    meta::to_json(&meta::ArrayV3::new(
        v.shape.clone(),
        v.dtype.zarr_v3(),
        &v.chunks,
        fill,
        codecs,
        attrs,
        v.dims.clone(),
    ))
}

fn v3_group_plain(attrs: &Attrs) -> String {
    meta::to_json(&meta::GroupV3::new(meta::raw(attrs.to_json(&[], &[])), None))
}

/// Group `zarr.json` (v3) with inline consolidated metadata of everything below it.
fn v3_group(g: &Group) -> String {
    let rel = |p: &str| -> String {
        if g.path.is_empty() {
            p.to_string()
        } else {
            p[g.path.len() + 1..].to_string()
        }
    };
    let mut entries = meta::Entries::default();
    for sub in g.walk() {
        if sub.path != g.path {
            entries
                .0
                .push((rel(&sub.path), meta::raw(v3_group_plain(&sub.attrs))));
        }
        for v in &sub.vars {
            entries.0.push((rel(&v.path), meta::raw(v3_array(v))));
        }
    }
    meta::to_json(&meta::GroupV3::new(
        meta::raw(g.attrs.to_json(&[], &[])),
        Some(entries),
    ))
}

/// Renders every metadata document of a dataset.
pub fn render(ds: &Dataset) -> ZarrMeta {
    let mut docs: Vec<(String, String)> = Vec::new();
    let mut consolidated = Vec::new();
    let mut encodings = HashMap::new();
    for g in ds.root.walk() {
        let zgroup = meta::to_json(&serde_json::json!({"zarr_format": 2}));
        let zattrs = g.attrs.to_json(&[], &[]);
        consolidated.push((key(&g.path, ".zgroup"), zgroup.clone()));
        consolidated.push((key(&g.path, ".zattrs"), zattrs.clone()));
        docs.push((key(&g.path, ".zgroup"), zgroup));
        docs.push((key(&g.path, ".zattrs"), zattrs));
        docs.push((key(&g.path, "zarr.json"), v3_group(g)));
        for v in &g.vars {
            let za = v2_array(v);
            let zt = v2_attrs(v);
            consolidated.push((key(&v.path, ".zarray"), za.clone()));
            consolidated.push((key(&v.path, ".zattrs"), zt.clone()));
            docs.push((key(&v.path, ".zarray"), za));
            docs.push((key(&v.path, ".zattrs"), zt));
            docs.push((key(&v.path, "zarr.json"), v3_array(v)));
            encodings.insert(v.path.clone(), encoding::choose(v));
        }
    }
    let zmeta = meta::to_json(&meta::ConsolidatedV2 {
        zarr_consolidated_format: 1,
        metadata: meta::Entries(consolidated.into_iter().map(|(k, d)| (k, meta::raw(d))).collect()),
    });
    docs.push((".zmetadata".into(), zmeta));
    ZarrMeta {
        docs: docs.into_iter().map(|(k, v)| (k, Bytes::from(v))).collect(),
        encodings,
    }
}
