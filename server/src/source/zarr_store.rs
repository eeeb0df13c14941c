//! Local Zarr stores (v2 and v3) as sources.
//!
//! A Zarr v2 directory store is a reference set whose metadata documents and chunks are
//! files: it goes through the same builder as kerchunk references, with every chunk a
//! whole-file reference, so stored chunks pass through to clients whenever their codecs can
//! be declared in the served metadata.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::kerchunk::{ChunkSource, FillRule, RawRef, build_index, sanitize_json};
use super::{SourceError, SourceFile, SourceIndex};

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SourceError + '_ {
    move |source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn malformed(path: &Path, message: impl Into<String>) -> SourceError {
    SourceError::Malformed {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn read_json(path: &Path) -> Result<Value, SourceError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&sanitize_json(&text)).map_err(|e| malformed(path, format!("not valid JSON: {e}")))
}

/// Metadata documents of a v2 store, keyed by their path relative to the store.
fn v2_metadata(root: &Path) -> Result<BTreeMap<String, Value>, SourceError> {
    let mut meta = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let p = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let ft = entry.file_type().map_err(io(&p))?;
            if ft.is_dir() {
                // chunk directories of '/'-separated arrays are all digits: skip them
                if !name.bytes().all(|b| b.is_ascii_digit()) {
                    stack.push(p);
                }
            } else if matches!(name.as_str(), ".zarray" | ".zgroup" | ".zattrs") {
                let rel = p
                    .strip_prefix(root)
                    .map_err(|_| malformed(&p, "outside the store"))?
                    .to_string_lossy()
                    .into_owned();
                meta.insert(rel, read_json(&p)?);
            }
        }
    }
    Ok(meta)
}

/// How an array names its chunk files.
#[derive(Clone, Debug)]
pub(crate) enum KeyEncoding {
    /// Zarr v2, or v3 `v2` encoding: `i.j.k` (or `i/j/k`), `0` for 0-d arrays.
    V2(String),
    /// Zarr v3 `default` encoding: `c/i/j/k` (or `c.i.j.k`), `c` for 0-d arrays.
    Default(String),
}

/// Chunks of a store: the file named by the key, if it exists.
struct StoreChunks<'a> {
    root: &'a Path,
    /// Per array path (v3 stores); arrays not listed use the key as given.
    encodings: BTreeMap<String, KeyEncoding>,
    /// v3 arrays without dimensions (their one chunk is `c`, not `c/0`).
    zero_d_arrays: std::collections::BTreeSet<String>,
}

impl ChunkSource for StoreChunks<'_> {
    fn chunk(&self, key: &str) -> Result<Option<RawRef>, String> {
        let rel = match key
            .rsplit_once('/')
            .and_then(|(a, idx)| Some((a, idx, self.encodings.get(a)?)))
        {
            Some((array, idx, enc)) => {
                let parts: Vec<&str> = idx.split(['.', '/']).collect();
                let zero_d = idx == "0" && self.zero_d(array);
                match enc {
                    KeyEncoding::V2(sep) => format!(
                        "{array}/{}",
                        if zero_d { "0".to_string() } else { parts.join(sep) }
                    ),
                    KeyEncoding::Default(sep) => {
                        if zero_d {
                            format!("{array}/c")
                        } else {
                            format!("{array}/c{sep}{}", parts.join(sep))
                        }
                    }
                }
            }
            None => key.to_string(),
        };
        let p = self.root.join(rel);
        Ok(p.is_file().then(|| RawRef::Url {
            url: p.to_string_lossy().into_owned(),
            range: None,
        }))
    }
    fn resolve(&self, _key: &str, url: &str) -> Result<PathBuf, String> {
        Ok(PathBuf::from(url))
    }
}

impl StoreChunks<'_> {
    fn zero_d(&self, array: &str) -> bool {
        self.zero_d_arrays.contains(array)
    }
}

/// Opens a local Zarr store (v2 or v3).
pub fn open_store(root: &Path) -> Result<SourceIndex, SourceError> {
    if root.join("zarr.json").is_file() {
        return open_v3(root);
    }
    let marker = [".zgroup", ".zarray"]
        .iter()
        .map(|m| root.join(m))
        .find(|p| p.is_file());
    let Some(marker) = marker else {
        return Err(malformed(
            root,
            "not a Zarr store (no zarr.json, .zgroup or .zarray)",
        ));
    };
    let mut file = SourceFile::stat(marker)?;
    file.path = root.to_path_buf();
    let meta = v2_metadata(root)?;
    let chunks = StoreChunks {
        root,
        encodings: BTreeMap::new(),
        zero_d_arrays: Default::default(),
    };
    build_index(Arc::new(file), &meta, &chunks, FillRule::ZarrV2)
}

/// v3 `data_type` → numpy dtype string (without byte order).
fn v3_dtype(t: &Value) -> Option<&'static str> {
    Some(match t.as_str()? {
        "int8" => "i1",
        "uint8" => "u1",
        "int16" => "i2",
        "uint16" => "u2",
        "int32" => "i4",
        "uint32" => "u4",
        "int64" => "i8",
        "uint64" => "u8",
        "float32" => "f4",
        "float64" => "f8",
        _ => return None,
    })
}

/// Translates one v3 array's metadata into the v2 documents the shared builder reads.
/// `Err` = the array cannot be served (the reason).
pub(crate) fn v3_array(apath: &str, doc: &Value) -> Result<(Value, Value, KeyEncoding, bool), String> {
    let dt = v3_dtype(doc.get("data_type").unwrap_or(&Value::Null)).ok_or_else(|| {
        format!(
            "Zarr data type {} is not supported",
            doc.get("data_type").unwrap_or(&Value::Null)
        )
    })?;
    let shape = doc.get("shape").cloned().unwrap_or(Value::Null);
    let grid = doc.get("chunk_grid").unwrap_or(&Value::Null);
    if grid.get("name").and_then(Value::as_str) != Some("regular") {
        return Err(format!("chunk grid {grid} is not supported (only 'regular')"));
    }
    let chunk_shape = grid
        .pointer("/configuration/chunk_shape")
        .cloned()
        .unwrap_or(Value::Null);
    let kenc = doc.get("chunk_key_encoding").unwrap_or(&Value::Null);
    let sep = kenc.pointer("/configuration/separator").and_then(Value::as_str);
    let encoding = match kenc.get("name").and_then(Value::as_str) {
        Some("default") | None => KeyEncoding::Default(sep.unwrap_or("/").to_string()),
        Some("v2") => KeyEncoding::V2(sep.unwrap_or(".").to_string()),
        Some(other) => return Err(format!("chunk key encoding '{other}' is not supported")),
    };
    let mut endian = "<";
    let mut b2b: Vec<Value> = Vec::new();
    for c in doc.get("codecs").and_then(Value::as_array).into_iter().flatten() {
        let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
        let cfg = c.get("configuration").cloned().unwrap_or(serde_json::json!({}));
        match name {
            "bytes" => {
                if cfg.get("endian").and_then(Value::as_str) == Some("big") {
                    endian = ">";
                }
            }
            "gzip" | "zstd" => {
                let mut v = serde_json::json!({"id": name, "level": cfg.get("level").cloned().unwrap_or(Value::from(1))});
                if name == "zstd" && cfg.get("checksum").and_then(Value::as_bool) == Some(true) {
                    v["checksum"] = Value::Bool(true);
                }
                b2b.push(v);
            }
            "blosc" => {
                let shuffle = match cfg.get("shuffle").and_then(Value::as_str) {
                    Some("shuffle") => 1,
                    Some("bitshuffle") => 2,
                    _ => 0,
                };
                b2b.push(serde_json::json!({
                    "id": "blosc",
                    "cname": cfg.get("cname").cloned().unwrap_or(Value::from("lz4")),
                    "clevel": cfg.get("clevel").cloned().unwrap_or(Value::from(5)),
                    "shuffle": shuffle,
                    "blocksize": cfg.get("blocksize").cloned().unwrap_or(Value::from(0)),
                }));
            }
            "crc32c" => b2b.push(serde_json::json!({"id": "crc32c"})),
            other => return Err(format!("Zarr v3 codec '{other}' is not supported")),
        }
    }
    let compressor = b2b.pop().unwrap_or(Value::Null);
    let filters = if b2b.is_empty() {
        Value::Null
    } else {
        Value::Array(b2b)
    };
    let zarray = serde_json::json!({
        "zarr_format": 2,
        "shape": shape,
        "chunks": chunk_shape,
        "dtype": format!("{}{dt}", if dt.ends_with('1') { "|" } else { endian }),
        "compressor": compressor,
        "filters": filters,
        "fill_value": doc.get("fill_value").cloned().unwrap_or(Value::Null),
        "order": "C",
        "dimension_separator": ".",
    });
    let mut attrs = match doc.get("attributes") {
        Some(Value::Object(m)) => m.clone(),
        _ => serde_json::Map::new(),
    };
    // xarray writes a float _FillValue as base64 of a little-endian f64 in v3 attributes.
    if dt.starts_with('f')
        && let Some(Value::String(b)) = attrs.get("_FillValue")
    {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b)
            .ok()
            .and_then(|v| <[u8; 8]>::try_from(v).ok())
            .ok_or_else(|| format!("'{apath}': _FillValue '{b}' is not a base64 float64"))?;
        let v = super::kerchunk::float_json(f64::from_le_bytes(bytes));
        attrs.insert("_FillValue".into(), v);
    }
    if let Some(names) = doc.get("dimension_names").and_then(Value::as_array)
        && names.iter().all(Value::is_string)
    {
        attrs.insert("_ARRAY_DIMENSIONS".into(), Value::Array(names.clone()));
    }
    let zero_d = shape.as_array().is_some_and(Vec::is_empty);
    Ok((zarray, Value::Object(attrs), encoding, zero_d))
}

fn open_v3(root: &Path) -> Result<SourceIndex, SourceError> {
    let marker = root.join("zarr.json");
    let mut file = SourceFile::stat(marker)?;
    file.path = root.to_path_buf();
    let mut meta = BTreeMap::new();
    let mut encodings = BTreeMap::new();
    let mut zero_d_arrays = std::collections::BTreeSet::new();
    let mut skipped: Vec<(String, String)> = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let zj = dir.join("zarr.json");
        if !zj.is_file() {
            continue; // implicit group or chunk directory
        }
        let doc = read_json(&zj)?;
        if doc.get("zarr_format").and_then(Value::as_u64) != Some(3) {
            return Err(malformed(&zj, "zarr_format is not 3"));
        }
        let rel = dir
            .strip_prefix(root)
            .map_err(|_| malformed(&dir, "outside the store"))?
            .to_string_lossy()
            .into_owned();
        let key = |leaf: &str| {
            if rel.is_empty() {
                leaf.to_string()
            } else {
                format!("{rel}/{leaf}")
            }
        };
        match doc.get("node_type").and_then(Value::as_str) {
            Some("group") => {
                meta.insert(key(".zgroup"), serde_json::json!({"zarr_format": 2}));
                meta.insert(
                    key(".zattrs"),
                    doc.get("attributes").cloned().unwrap_or(serde_json::json!({})),
                );
                for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
                    let entry = entry.map_err(io(&dir))?;
                    if entry.file_type().map_err(io(&dir))?.is_dir() {
                        stack.push(entry.path());
                    }
                }
            }
            Some("array") => {
                if rel.is_empty() {
                    return Err(malformed(
                        &zj,
                        "the root is an array, not a group; serve a group of arrays",
                    ));
                }
                match v3_array(&rel, &doc) {
                    Ok((zarray, zattrs, enc, zero_d)) => {
                        meta.insert(key(".zarray"), zarray);
                        meta.insert(key(".zattrs"), zattrs);
                        encodings.insert(rel.clone(), enc);
                        if zero_d {
                            zero_d_arrays.insert(rel.clone());
                        }
                    }
                    Err(why) => skipped.push((rel.clone(), why)),
                }
            }
            other => return Err(malformed(&zj, format!("unknown node_type {other:?}"))),
        }
    }
    let chunks = StoreChunks {
        root,
        encodings,
        zero_d_arrays,
    };
    let mut idx = build_index(Arc::new(file), &meta, &chunks, FillRule::ZarrV3)?;
    for (path, why) in skipped {
        let (g, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
        add_skipped(&mut idx.root, g, name, why);
    }
    Ok(idx)
}

pub(crate) fn add_skipped(g: &mut super::SourceGroup, group: &str, name: &str, why: String) {
    if g.path == group {
        g.skipped.push((name.to_string(), why));
        return;
    }
    for sub in &mut g.groups {
        add_skipped(sub, group, name, why.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::attrs::AttrValue;
    use crate::model::{DType, Endian};
    use crate::source::{ChunkRef, Filter, Storage};

    fn write(p: &Path, text: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn v3_metadata_translates_to_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s.zarr");
        write(
            &root.join("zarr.json"),
            r#"{"zarr_format": 3, "node_type": "group", "attributes": {"title": "t"}}"#,
        );
        write(
            &root.join("x/zarr.json"),
            r#"{"zarr_format": 3, "node_type": "array", "shape": [5, 4], "data_type": "float32",
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2, 4]}},
                "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
                "fill_value": "NaN",
                "codecs": [{"name": "bytes", "configuration": {"endian": "big"}}, {"name": "gzip", "configuration": {"level": 1}}],
                "attributes": {"_FillValue": "AAAAAAAA+H8=", "units": "K"}, "dimension_names": ["t", "y"]}"#,
        );
        write(&root.join("x/c/0/0"), "a");
        write(&root.join("x/c/2/0"), "b");
        write(
            &root.join("s/zarr.json"),
            r#"{"zarr_format": 3, "node_type": "array", "shape": [], "data_type": "int16",
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": []}},
                "chunk_key_encoding": {"name": "v2", "configuration": {"separator": "."}},
                "fill_value": -1, "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
                "attributes": {}}"#,
        );
        write(&root.join("s/0"), "c");
        write(
            &root.join("sharded/zarr.json"),
            r#"{"zarr_format": 3, "node_type": "array", "shape": [4], "data_type": "int8",
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [4]}},
                "fill_value": 0, "codecs": [{"name": "sharding_indexed", "configuration": {}}], "attributes": {}}"#,
        );
        let idx = open_store(&root).unwrap();
        let x = idx.root.vars.iter().find(|v| v.name == "x").unwrap();
        assert_eq!((x.dtype, x.data.endian), (DType::F32, Endian::Big));
        assert_eq!(x.dims, vec!["t", "y"]);
        assert!(matches!(x.attrs.get("_FillValue"), Some(AttrValue::Floats(f)) if f[0].is_nan()));
        let Storage::Refs { filters, table, .. } = &x.data.storage else {
            panic!("not refs")
        };
        assert_eq!(filters, &vec![Filter::Gzip]);
        assert!(matches!(table.chunks[0], ChunkRef::Whole { .. }));
        assert_eq!(table.chunks[1], ChunkRef::Missing);
        assert!(matches!(table.chunks[2], ChunkRef::Whole { .. }));
        // missing chunks read as the array's fill_value
        assert!(f32::from_le_bytes(table.fill.clone().unwrap().try_into().unwrap()).is_nan());
        let s = idx.root.vars.iter().find(|v| v.name == "s").unwrap();
        let Storage::Refs { table, .. } = &s.data.storage else {
            panic!("not refs")
        };
        assert!(matches!(table.chunks[0], ChunkRef::Whole { .. }));
        assert_eq!(table.fill.as_deref(), Some(&(-1i16).to_le_bytes()[..]));
        // v3's fill_value is not a CF _FillValue
        assert!(s.attrs.get("_FillValue").is_none());
        let (name, why) = &idx.root.skipped[0];
        assert!(name == "sharded" && why.contains("sharding_indexed"), "{why}");
    }

    #[test]
    fn v2_store_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s.zarr");
        write(&root.join(".zgroup"), r#"{"zarr_format": 2}"#);
        write(
            &root.join("g/v/.zarray"),
            r#"{"zarr_format": 2, "shape": [3], "chunks": [2], "dtype": "<i4", "compressor": {"id": "blosc", "cname": "lz4"},
                "filters": null, "fill_value": 7, "order": "C", "dimension_separator": "/"}"#,
        );
        write(
            &root.join("g/v/.zattrs"),
            r#"{"_ARRAY_DIMENSIONS": ["x"], "a": [1, 2]}"#,
        );
        write(&root.join("g/v/1"), "z");
        let idx = open_store(&root).unwrap();
        let v = &idx.root.groups[0].vars[0];
        assert_eq!(v.name, "v");
        assert!(matches!(v.attrs.get("_FillValue"), Some(AttrValue::Ints(x)) if x == &[7]));
        let Storage::Refs { filters, table, .. } = &v.data.storage else {
            panic!("not refs")
        };
        assert_eq!(filters, &vec![Filter::Blosc]);
        assert_eq!(table.chunks[0], ChunkRef::Missing);
        assert!(matches!(table.chunks[1], ChunkRef::Whole { .. }));
        assert!(table.compressor.contains("blosc"));
        // malformed metadata names the file
        write(&root.join("g/v/.zarray"), "{not json");
        let e = open_store(&root).unwrap_err().to_string();
        assert!(e.contains(".zarray") && e.contains("not valid JSON"), "{e}");
        let e = open_store(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a Zarr store"), "{e}");
    }
}
