//! Zarr v2 and v3 metadata of a dataset, rendered once at open time.
//!
//! Both formats live on one prefix: their key names never collide (`.zarray` vs `zarr.json`)
//! and clients detect the format they ask for.

pub mod encoding;
pub mod key;

use std::collections::HashMap;
use std::fmt::Write as _;

use base64::Engine as _;
use bytes::Bytes;

use crate::attrs::{Attrs, write_json_str};
use crate::codec::Encoding;
use crate::dataset::{Dataset, Group, Variable};
use crate::dtype::{DType, Scalar, fill_json};

/// Pre-rendered metadata documents, keyed by their Zarr key (e.g. `tas/.zarray`).
#[derive(Debug, Default)]
pub struct ZarrMeta {
    pub docs: HashMap<String, Bytes>,
    /// Chunk encodings by array path, as the metadata documents declare them.
    pub encodings: HashMap<String, encoding::ZarrEncoding>,
}

fn json_list<T: std::fmt::Display>(v: &[T]) -> String {
    let items: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    format!("[{}]", items.join(", "))
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

fn v2_compressor(enc: &Encoding) -> (String, String) {
    match enc {
        // v2 keeps the plain numcodecs spelling of the same pipeline
        Encoding::BloscZlib { shuffle, level, .. } => v2_compressor(&Encoding::ShuffleZlib {
            shuffle: *shuffle,
            level: *level,
        }),
        Encoding::Zstd(level) => (format!("{{\"id\": \"zstd\", \"level\": {level}}}"), "null".into()),
        Encoding::BloscZstd { level, typesize } => (
            format!(
                "{{\"id\": \"blosc\", \"cname\": \"zstd\", \"clevel\": {level}, \"shuffle\": {}, \"blocksize\": 0}}",
                u8::from(*typesize > 1)
            ),
            "null".into(),
        ),
        Encoding::ShuffleZlib { shuffle, level } => (
            format!("{{\"id\": \"zlib\", \"level\": {level}}}"),
            match shuffle {
                Some(e) => format!("[{{\"id\": \"shuffle\", \"elementsize\": {e}}}]"),
                None => "null".into(),
            },
        ),
    }
}

/// `.zarray` of a variable.
pub fn v2_array(v: &Variable) -> String {
    let (compressor, filters) = match v.dtype {
        DType::Str => (
            v2_compressor(&Encoding::Zstd(crate::codec::ZSTD_LEVEL)).0,
            "[{\"id\": \"vlen-utf8\"}]".to_string(),
        ),
        _ => v2_compressor(&encoding::choose(v).v2),
    };
    let fill = match (v.dtype, v.fill_attr) {
        (DType::Str | DType::Char, _) | (_, None) => "null".to_string(),
        (DType::Bool, Some(s)) => (s.as_f64() != 0.0).to_string(),
        (dt, Some(s)) => fill_json(s, dt).to_string(),
    };
    format!(
        "{{\"zarr_format\": 2, \"shape\": {}, \"chunks\": {}, \"dtype\": \"{}\", \"compressor\": {compressor}, \"fill_value\": {fill}, \"order\": \"C\", \"filters\": {filters}, \"dimension_separator\": \".\"}}",
        json_list(&v.shape),
        json_list(&v.chunks),
        v.dtype.zarr_v2()
    )
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
    let zstd = format!(
        "{{\"name\": \"zstd\", \"configuration\": {{\"level\": {}, \"checksum\": false}}}}",
        crate::codec::ZSTD_LEVEL
    );
    let (fill, codecs) = match v.dtype {
        DType::Str => (
            "\"\"".to_string(),
            format!("[{{\"name\": \"vlen-utf8\"}}, {zstd}]"),
        ),
        DType::Char => (
            "\"AA==\"".to_string(),
            format!("[{{\"name\": \"bytes\"}}, {zstd}]"),
        ),
        // zarr-python 3: fixed-width text fills with "", one-byte types take no endian
        DType::Bytes(_) => ("\"\"".to_string(), format!("[{{\"name\": \"bytes\"}}, {zstd}]")),
        DType::Unicode(_) => (
            "\"\"".to_string(),
            format!("[{{\"name\": \"bytes\", \"configuration\": {{\"endian\": \"little\"}}}}, {zstd}]"),
        ),
        dt => {
            let s = v
                .fill_attr
                .unwrap_or_else(|| Scalar::from_le_bytes(&v.fill, dt).unwrap_or(Scalar::Int(0)));
            let compressor = match &encoding::choose(v).v3 {
                Encoding::BloscZlib {
                    shuffle,
                    level,
                    typesize,
                } => format!(
                    "{{\"name\": \"blosc\", \"configuration\": {{\"cname\": \"zlib\", \"clevel\": {level}, \"shuffle\": \"{}\", \"typesize\": {typesize}, \"blocksize\": 0}}}}",
                    if shuffle.is_some() { "shuffle" } else { "noshuffle" }
                ),
                Encoding::BloscZstd { level, typesize } => format!(
                    "{{\"name\": \"blosc\", \"configuration\": {{\"cname\": \"zstd\", \"clevel\": {level}, \"shuffle\": \"{}\", \"typesize\": {typesize}, \"blocksize\": 0}}}}",
                    if *typesize > 1 { "shuffle" } else { "noshuffle" }
                ),
                _ => zstd.clone(),
            };
            let fill = if dt == DType::Bool {
                (s.as_f64() != 0.0).to_string() // v3 bool fill values are JSON booleans
            } else {
                fill_json(s, dt).to_string()
            };
            (
                fill,
                format!(
                    "[{{\"name\": \"bytes\", \"configuration\": {{\"endian\": \"little\"}}}}, {compressor}]"
                ),
            )
        }
    };
    let mut extra = Vec::new();
    if let Some(s) = v.fill_attr {
        extra.push(("_FillValue", v3_fill_attr(s, v.dtype)));
    }
    let attrs = v.attrs.to_json(&[], &extra);
    format!(
        "{{\"zarr_format\": 3, \"node_type\": \"array\", \"shape\": {}, \"data_type\": {}, \"chunk_grid\": {{\"name\": \"regular\", \"configuration\": {{\"chunk_shape\": {}}}}}, \"chunk_key_encoding\": {{\"name\": \"default\", \"configuration\": {{\"separator\": \"/\"}}}}, \"fill_value\": {fill}, \"codecs\": {codecs}, \"attributes\": {attrs}, \"dimension_names\": {}}}",
        json_list(&v.shape),
        v.dtype.zarr_v3(),
        json_list(&v.chunks),
        json_str_list(&v.dims)
    )
}

fn v3_group_plain(attrs: &Attrs) -> String {
    format!(
        "{{\"zarr_format\": 3, \"node_type\": \"group\", \"attributes\": {}}}",
        attrs.to_json(&[], &[])
    )
}

/// Group `zarr.json` (v3) with inline consolidated metadata of everything below it.
fn v3_group(g: &Group) -> String {
    let mut entries = String::new();
    let rel = |p: &str| -> String {
        if g.path.is_empty() {
            p.to_string()
        } else {
            p[g.path.len() + 1..].to_string()
        }
    };
    let mut first = true;
    let mut push = |k: String, doc: String| {
        if !first {
            entries.push_str(", ");
        }
        first = false;
        write_json_str(&mut entries, &k);
        let _ = write!(entries, ": {doc}");
    };
    for sub in g.walk() {
        if sub.path != g.path {
            push(rel(&sub.path), v3_group_plain(&sub.attrs));
        }
        for v in &sub.vars {
            push(rel(&v.path), v3_array(v));
        }
    }
    format!(
        "{{\"zarr_format\": 3, \"node_type\": \"group\", \"attributes\": {}, \"consolidated_metadata\": {{\"kind\": \"inline\", \"must_understand\": false, \"metadata\": {{{entries}}}}}}}",
        g.attrs.to_json(&[], &[])
    )
}

/// Renders every metadata document of a dataset.
pub fn render(ds: &Dataset) -> ZarrMeta {
    let mut docs: Vec<(String, String)> = Vec::new();
    let mut consolidated = Vec::new();
    let mut encodings = HashMap::new();
    for g in ds.root.walk() {
        let zgroup = "{\"zarr_format\": 2}".to_string();
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
    let mut zmeta = String::from("{\"zarr_consolidated_format\": 1, \"metadata\": {");
    for (i, (k, doc)) in consolidated.iter().enumerate() {
        if i > 0 {
            zmeta.push_str(", ");
        }
        write_json_str(&mut zmeta, k);
        let _ = write!(zmeta, ": {doc}");
    }
    zmeta.push_str("}}");
    docs.push((".zmetadata".into(), zmeta));
    ZarrMeta {
        docs: docs.into_iter().map(|(k, v)| (k, Bytes::from(v))).collect(),
        encodings,
    }
}
