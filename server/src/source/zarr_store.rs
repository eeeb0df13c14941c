//! Zarr stores (v2 and v3), local or in an object store, as sources.
//!
//! A Zarr v2 directory store is a reference set whose metadata documents and chunks are
//! files: it goes through the same builder as kerchunk references, with every chunk a
//! whole-file reference, so stored chunks pass through to clients whenever their codecs can
//! be declared in the served metadata. A store in an object store is listed once at open
//! (which chunks exist, shard sizes) and its chunks become object references read with
//! ranged GETs, like kerchunk references to objects.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::refset::{ChunkSource, FillRule, RawRef, build_index, sanitize_json};
use super::tree::Tree;
use super::{Filter, Layout, SourceError, SourceIndex};

fn malformed(path: &Path, message: impl Into<String>) -> SourceError {
    SourceError::Malformed {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// A metadata document of the store; `Ok(None)` when it does not exist.
fn read_json(tree: &Tree, rel: &str) -> Result<Option<Value>, SourceError> {
    let Some(bytes) = tree.read(rel).map_err(|m| malformed(&tree.path(rel), m))? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&bytes);
    serde_json::from_str(&sanitize_json(&text))
        .map(Some)
        .map_err(|e| malformed(&tree.path(rel), format!("not valid JSON: {e}")))
}

/// Metadata documents of a v2 store, keyed by their path relative to the store.
fn v2_metadata(tree: &Tree) -> Result<BTreeMap<String, Value>, SourceError> {
    // chunk directories of '/'-separated arrays are all digits: skip them
    let rels = tree
        .find_named(&[".zarray", ".zgroup", ".zattrs"], |d| {
            d.bytes().all(|b| b.is_ascii_digit())
        })
        .map_err(|m| malformed(&tree.path(""), m))?;
    let mut meta = BTreeMap::new();
    for rel in rels {
        if let Some(doc) = read_json(tree, &rel)? {
            meta.insert(rel, doc);
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

/// Where the inner chunks of a sharded v3 array are: byte ranges of shard files, found in
/// each shard's index.
pub(crate) struct ShardLayout {
    /// Inner chunks per shard along each dimension.
    per_shard: Vec<u64>,
    /// Decodes a shard index (`index_codecs` over `[per_shard..., 2]` uint64).
    index: crate::codec::zarr_v3::Chain,
    /// Encoded size of the index.
    index_size: u64,
    /// `index_location: "end"` (the default) or `"start"`.
    at_end: bool,
}

impl ShardLayout {
    /// The shard holding inner chunk `parts` of chunk key `key` (its grid index, as key
    /// parts) and the inner chunk's row-major position in that shard.
    pub(crate) fn locate(&self, key: &str, parts: &[&str]) -> Result<(Vec<String>, u64), String> {
        let inner: Vec<u64> = parts
            .iter()
            .map(|p| p.parse::<u64>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("'{key}': not a chunk key"))?;
        if inner.len() != self.per_shard.len() {
            return Err(format!(
                "'{key}': not a chunk key of a {}-d array",
                self.per_shard.len()
            ));
        }
        let shard = inner
            .iter()
            .zip(&self.per_shard)
            .map(|(i, n)| (i / n).to_string())
            .collect();
        let mut lin = 0u64;
        for (i, n) in inner.iter().zip(&self.per_shard) {
            lin = lin * n + i % n;
        }
        Ok((shard, lin))
    }

    /// Where the index of a shard of `len` bytes is: `(offset, size)` within the shard.
    pub(crate) fn index_range(&self, len: u64, shown: &str) -> Result<(u64, u64), String> {
        if len < self.index_size {
            return Err(format!(
                "{shown}: shard of {len} bytes cannot hold its {}-byte index (truncated shard?)",
                self.index_size
            ));
        }
        let at = if self.at_end { len - self.index_size } else { 0 };
        Ok((at, self.index_size))
    }

    /// Decodes the encoded index of a shard of `len` bytes into `(offset, size)` pairs,
    /// checking every pair lies inside the shard.
    pub(crate) fn decode_index(&self, encoded: Vec<u8>, len: u64, shown: &str) -> Result<Vec<u64>, String> {
        let raw = self
            .index
            .decode(encoded)
            .map_err(|e| format!("{shown}: shard index unreadable (truncated or corrupt shard?): {e}"))?;
        let vals: Vec<u64> = raw
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
            .collect();
        for pair in vals.chunks_exact(2) {
            let (o, n) = (pair[0], pair[1]);
            if (o, n) != (u64::MAX, u64::MAX) && o.checked_add(n).is_none_or(|end| end > len) {
                return Err(format!(
                    "{shown}: shard index points at bytes {o}+{n} past the end of the {len}-byte shard (truncated shard?)"
                ));
            }
        }
        Ok(vals)
    }

    /// The byte range (within the shard) of inner chunk `lin` of a decoded index; `None`
    /// when it was never written (reads as the fill value).
    pub(crate) fn inner(index: &[u64], lin: u64, shown: &str) -> Result<Option<(u64, u64)>, String> {
        let at = usize::try_from(lin).map_err(|_| format!("{shown}: shard index too short"))?;
        match (index.get(2 * at), index.get(2 * at + 1)) {
            (Some(&u64::MAX), Some(&u64::MAX)) => Ok(None),
            (Some(o), Some(n)) => Ok(Some((*o, *n))),
            _ => Err(format!("{shown}: shard index too short")),
        }
    }
}

/// Chunks of a store: the file named by the key, if it exists.
struct StoreChunks<'a> {
    tree: &'a Tree,
    /// Per array path (v3 stores); arrays not listed use the key as given.
    encodings: BTreeMap<String, KeyEncoding>,
    /// v3 arrays without dimensions (their one chunk is `c`, not `c/0`).
    zero_d_arrays: std::collections::BTreeSet<String>,
    /// Sharded v3 arrays: keys name inner chunks.
    shards: BTreeMap<String, ShardLayout>,
    /// Decoded shard indexes (offset, size pairs) by shard file, read once each.
    indexes: std::cell::RefCell<HashMap<String, Arc<Vec<u64>>>>,
}

impl ChunkSource for StoreChunks<'_> {
    fn chunk(&self, key: &str) -> Result<Option<RawRef>, String> {
        let Some((array, idx, enc)) = key
            .rsplit_once('/')
            .and_then(|(a, idx)| Some((a, idx, self.encodings.get(a)?)))
        else {
            return Ok(self.whole(key));
        };
        let zero_d = idx == "0" && self.zero_d(array);
        let parts: Vec<&str> = if zero_d {
            Vec::new()
        } else {
            idx.split(['.', '/']).collect()
        };
        let Some(layout) = self.shards.get(array) else {
            return Ok(self.whole(&chunk_rel(array, &parts, enc)));
        };
        let (shard, lin) = layout.locate(key, &parts)?;
        let shard_refs: Vec<&str> = shard.iter().map(String::as_str).collect();
        let rel = chunk_rel(array, &shard_refs, enc);
        let Some(len) = self.tree.size(&rel)? else {
            return Ok(None);
        };
        let index = self.shard_index(&rel, len, layout)?;
        Ok(
            ShardLayout::inner(&index, lin, &self.tree.url(&rel))?.map(|range| RawRef::Url {
                url: self.tree.url(&rel),
                range: Some(range),
            }),
        )
    }
    fn resolve(&self, _key: &str, url: &str) -> Result<PathBuf, String> {
        Ok(PathBuf::from(url))
    }
}

/// The chunk (or shard) file of chunk index `parts` of `array`.
fn chunk_rel(array: &str, parts: &[&str], enc: &KeyEncoding) -> String {
    match enc {
        KeyEncoding::V2(sep) => {
            if parts.is_empty() {
                format!("{array}/0")
            } else {
                format!("{array}/{}", parts.join(sep))
            }
        }
        KeyEncoding::Default(sep) => {
            if parts.is_empty() {
                format!("{array}/c")
            } else {
                format!("{array}/c{sep}{}", parts.join(sep))
            }
        }
    }
}

impl StoreChunks<'_> {
    fn zero_d(&self, array: &str) -> bool {
        self.zero_d_arrays.contains(array)
    }

    /// A whole-file chunk reference, if the file exists.
    fn whole(&self, rel: &str) -> Option<RawRef> {
        self.tree.is_file(rel).then(|| RawRef::Url {
            url: self.tree.url(rel),
            range: None,
        })
    }

    /// The decoded index of one shard file of `len` bytes: `(offset, size)` pairs of its
    /// inner chunks.
    fn shard_index(&self, rel: &str, len: u64, layout: &ShardLayout) -> Result<Arc<Vec<u64>>, String> {
        if let Some(i) = self.indexes.borrow().get(rel) {
            return Ok(i.clone());
        }
        let shown = self.tree.url(rel);
        let (at, n) = layout.index_range(len, &shown)?;
        let vals = layout.decode_index(self.tree.read_range(rel, at, n)?, len, &shown)?;
        let vals = Arc::new(vals);
        self.indexes.borrow_mut().insert(rel.to_string(), vals.clone());
        Ok(vals)
    }
}

/// Opens a local Zarr store (v2 or v3).
pub fn open_store(root: &Path) -> Result<SourceIndex, SourceError> {
    open_tree(&Tree::Local(root.to_path_buf()), None)
}

/// Opens a Zarr store (v2 or v3), local or in an object store (chunks read with `storage`'s
/// settings).
pub fn open_tree(
    tree: &Tree,
    storage: Option<&cloudify_crds::StorageSpec>,
) -> Result<SourceIndex, SourceError> {
    tree.preload().map_err(|m| malformed(&tree.path(""), m))?;
    let mut idx = if tree.is_file("zarr.json") {
        open_v3(tree)?
    } else {
        let Some(marker) = [".zgroup", ".zarray"].into_iter().find(|m| tree.is_file(m)) else {
            return Err(malformed(
                &tree.path(""),
                "not a Zarr store (no zarr.json, .zgroup or .zarray)",
            ));
        };
        let file = tree.identity(marker)?;
        let meta = v2_metadata(tree)?;
        let chunks = StoreChunks {
            tree,
            encodings: BTreeMap::new(),
            zero_d_arrays: Default::default(),
            shards: BTreeMap::new(),
            indexes: Default::default(),
        };
        build_index(Arc::new(file), &meta, &chunks, FillRule::ZarrV2)?
    };
    if tree.is_remote() {
        super::refset::attach_remote(&mut idx, storage)?;
    }
    Ok(idx)
}

/// v3 `data_type` → numpy dtype string (without byte order).
fn v3_dtype(t: &Value) -> Option<String> {
    if let Some(name) = t.as_str() {
        return Some(
            match name {
                "bool" => "b1",
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
            }
            .to_string(),
        );
    }
    // zarr-python 3's extension data types
    let cfg = t.get("configuration")?;
    match t.get("name")?.as_str()? {
        n @ ("numpy.datetime64" | "numpy.timedelta64") => {
            if cfg.get("scale_factor").and_then(Value::as_u64).unwrap_or(1) != 1 {
                return None;
            }
            let unit = crate::dtype::TimeUnit::parse(cfg.get("unit")?.as_str()?)?;
            let code = if n == "numpy.datetime64" { "M8" } else { "m8" };
            Some(format!("{code}[{}]", unit.as_str()))
        }
        "null_terminated_bytes" => Some(format!(
            "S{}",
            cfg.get("length_bytes")?.as_u64().filter(|n| *n > 0)?
        )),
        "fixed_length_utf32" => {
            let n = cfg
                .get("length_bytes")?
                .as_u64()
                .filter(|n| *n > 0 && n % 4 == 0)?;
            Some(format!("U{}", n / 4))
        }
        _ => None,
    }
}

/// One v3 array translated for the shared builder.
pub(crate) struct V3Array {
    /// `.zarray` and `.zattrs` documents (v2).
    pub(crate) zarray: Value,
    pub(crate) zattrs: Value,
    pub(crate) encoding: KeyEncoding,
    pub(crate) zero_d: bool,
    /// Sharded: where the inner chunks (the served chunks) are.
    pub(crate) shard: Option<ShardLayout>,
    /// A pipeline our own steps cannot express: [`Filter::ZarrV3`] (decoded with zarrs) or
    /// [`Filter::Unsupported`] naming the codec.
    pub(crate) filter: Option<Filter>,
    /// The stored chunks can be declared as numcodecs on `/kerchunk` (the `.zarray` holds them).
    pub(crate) declarable: bool,
}

fn codec_name(c: &Value) -> &str {
    c.get("name")
        .and_then(Value::as_str)
        .or(c.as_str())
        .unwrap_or_default()
}

/// Translates one v3 array's metadata into the v2 documents the shared builder reads.
/// `Err` = the array cannot be served (the reason).
pub(crate) fn v3_array(apath: &str, doc: &Value) -> Result<V3Array, String> {
    let data_type = doc.get("data_type").unwrap_or(&Value::Null);
    let dt = v3_dtype(data_type).ok_or_else(|| format!("Zarr data type {data_type} is not supported"))?;
    let shape = doc.get("shape").cloned().unwrap_or(Value::Null);
    let shape_u64: Vec<u64> = shape
        .as_array()
        .and_then(|a| a.iter().map(Value::as_u64).collect())
        .ok_or_else(|| format!("'shape' {shape} is not a list of non-negative integers"))?;
    let grid = doc.get("chunk_grid").unwrap_or(&Value::Null);
    if grid.get("name").and_then(Value::as_str) != Some("regular") {
        return Err(format!("chunk grid {grid} is not supported (only 'regular')"));
    }
    let as_shape = |v: Option<&Value>, what: &str| -> Result<Vec<u64>, String> {
        v.and_then(Value::as_array)
            .and_then(|a| {
                a.iter()
                    .map(|x| x.as_u64().filter(|n| *n > 0))
                    .collect::<Option<Vec<u64>>>()
            })
            .filter(|c| c.len() == shape_u64.len())
            .ok_or_else(|| format!("{what} does not fit shape {shape}"))
    };
    let outer = as_shape(
        grid.pointer("/configuration/chunk_shape"),
        "chunk_grid chunk_shape",
    )?;
    let kenc = doc.get("chunk_key_encoding").unwrap_or(&Value::Null);
    let sep = kenc.pointer("/configuration/separator").and_then(Value::as_str);
    let encoding = match kenc.get("name").and_then(Value::as_str) {
        Some("default") | None => KeyEncoding::Default(sep.unwrap_or("/").to_string()),
        Some("v2") => KeyEncoding::V2(sep.unwrap_or(".").to_string()),
        Some(other) => return Err(format!("chunk key encoding '{other}' is not supported")),
    };
    let mut codecs: Vec<Value> = doc
        .get("codecs")
        .and_then(Value::as_array)
        .cloned()
        .ok_or_else(|| "'codecs' missing or not a list".to_string())?;
    let fill_value = doc.get("fill_value").cloned().unwrap_or(Value::Null);
    // A sharded array serves its inner chunks: a shard is a storage unit, often far too
    // large for one HTTP response.
    let mut shard = None;
    let mut chunk_shape = outer.clone();
    if let [only] = codecs.as_slice()
        && codec_name(only) == "sharding_indexed"
    {
        let cfg = only.get("configuration").cloned().unwrap_or(Value::Null);
        let inner = as_shape(cfg.get("chunk_shape"), "sharding_indexed chunk_shape")?;
        if outer.iter().zip(&inner).any(|(o, i)| o % i != 0) {
            return Err(format!(
                "shard shape {outer:?} is not a multiple of the inner chunk shape {inner:?}"
            ));
        }
        let per_shard: Vec<u64> = outer.iter().zip(&inner).map(|(o, i)| o / i).collect();
        let mut index_shape = per_shard.clone();
        index_shape.push(2);
        let index_codecs = cfg.get("index_codecs").cloned().unwrap_or_else(
            || serde_json::json!([{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]),
        );
        let spec = crate::codec::zarr_v3::spec(
            &Value::from("uint64"),
            &Value::from(0),
            &index_shape,
            &index_codecs,
        );
        let index = crate::codec::zarr_v3::parse(&spec).map_err(|e| format!("shard index: {e}"))?;
        let index_size = index
            .fixed_encoded_size()
            .ok_or_else(|| "shard index codecs do not have a fixed size".to_string())?;
        let at_end = match cfg.get("index_location").and_then(Value::as_str) {
            None | Some("end") => true,
            Some("start") => false,
            Some(other) => return Err(format!("index_location '{other}' is neither 'start' nor 'end'")),
        };
        codecs = cfg
            .get("codecs")
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| "sharding_indexed without inner 'codecs'".to_string())?;
        chunk_shape = inner;
        shard = Some(ShardLayout {
            per_shard,
            index,
            index_size,
            at_end,
        });
    }
    let numcodecs = crate::codec::numcodecs::from_v3(&codecs);
    let mut filter = None;
    let mut big = numcodecs.as_ref().is_some_and(|(_, b)| *b);
    if !codecs.iter().all(crate::codec::numcodecs::decodes_v3) {
        let spec = crate::codec::zarr_v3::spec(
            data_type,
            &fill_value,
            &chunk_shape,
            &Value::Array(codecs.clone()),
        );
        filter = Some(match crate::codec::zarr_v3::parse(&spec) {
            Ok(_) => {
                big = false; // zarrs decodes to little-endian elements
                Filter::ZarrV3(spec)
            }
            Err(crate::codec::zarr_v3::ChainError::Unsupported(c)) => Filter::Unsupported(c),
            Err(crate::codec::zarr_v3::ChainError::Invalid(m)) => return Err(m),
        });
    }
    // Declarable on /kerchunk: numcodecs equivalents exist, and the served byte order is
    // the stored one.
    let declarable = numcodecs.as_ref().is_some_and(|(_, b)| *b == big);
    let (compressor, filters) = match (&numcodecs, declarable) {
        (Some((list, _)), true) => {
            let mut list = list.clone();
            let c = list.pop().unwrap_or(Value::Null);
            (
                c,
                if list.is_empty() {
                    Value::Null
                } else {
                    Value::Array(list)
                },
            )
        }
        _ => (Value::Null, Value::Null),
    };
    let endian = if big { ">" } else { "<" };
    let zarray = serde_json::json!({
        "zarr_format": 2,
        "shape": shape,
        "chunks": chunk_shape,
        "dtype": format!("{}{dt}", if dt.ends_with('1') || dt.starts_with('S') { "|" } else { endian }),
        "compressor": compressor,
        "filters": filters,
        "fill_value": fill_value,
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
        let v = super::refset::float_json(f64::from_le_bytes(bytes));
        attrs.insert("_FillValue".into(), v);
    }
    if let Some(names) = doc.get("dimension_names").and_then(Value::as_array)
        && names.iter().all(Value::is_string)
    {
        attrs.insert("_ARRAY_DIMENSIONS".into(), Value::Array(names.clone()));
    }
    Ok(V3Array {
        zarray,
        zattrs: Value::Object(attrs),
        encoding,
        zero_d: shape_u64.is_empty(),
        shard,
        filter,
        declarable,
    })
}

fn open_v3(tree: &Tree) -> Result<SourceIndex, SourceError> {
    let file = tree.identity("zarr.json")?;
    let mut meta = BTreeMap::new();
    let mut encodings = BTreeMap::new();
    let mut zero_d_arrays = std::collections::BTreeSet::new();
    let mut shards = BTreeMap::new();
    let mut overrides: BTreeMap<String, (Option<Filter>, bool)> = BTreeMap::new();
    let mut skipped: Vec<(String, String)> = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let key = |leaf: &str| {
            if rel.is_empty() {
                leaf.to_string()
            } else {
                format!("{rel}/{leaf}")
            }
        };
        let zj = key("zarr.json");
        let Some(doc) = read_json(tree, &zj)? else {
            continue; // implicit group or chunk directory
        };
        if doc.get("zarr_format").and_then(Value::as_u64) != Some(3) {
            return Err(malformed(&tree.path(&zj), "zarr_format is not 3"));
        }
        match doc.get("node_type").and_then(Value::as_str) {
            Some("group") => {
                meta.insert(key(".zgroup"), serde_json::json!({"zarr_format": 2}));
                meta.insert(
                    key(".zattrs"),
                    doc.get("attributes").cloned().unwrap_or(serde_json::json!({})),
                );
                for d in tree.subdirs(&rel).map_err(|m| malformed(&tree.path(&rel), m))? {
                    stack.push(key(&d));
                }
            }
            Some("array") => {
                if rel.is_empty() {
                    return Err(malformed(
                        &tree.path(&zj),
                        "the root is an array, not a group; serve a group of arrays",
                    ));
                }
                match v3_array(&rel, &doc) {
                    Ok(a) => {
                        meta.insert(key(".zarray"), a.zarray);
                        meta.insert(key(".zattrs"), a.zattrs);
                        encodings.insert(rel.clone(), a.encoding);
                        if a.zero_d {
                            zero_d_arrays.insert(rel.clone());
                        }
                        if let Some(s) = a.shard {
                            shards.insert(rel.clone(), s);
                        }
                        if a.filter.is_some() || !a.declarable {
                            overrides.insert(rel.clone(), (a.filter, a.declarable));
                        }
                    }
                    Err(why) => skipped.push((rel.clone(), why)),
                }
            }
            other => return Err(malformed(&tree.path(&zj), format!("unknown node_type {other:?}"))),
        }
    }
    let chunks = StoreChunks {
        tree,
        encodings,
        zero_d_arrays,
        shards,
        indexes: Default::default(),
    };
    let mut idx = build_index(Arc::new(file), &meta, &chunks, FillRule::ZarrV3)?;
    apply_overrides(&mut idx.root, &overrides);
    for (path, why) in skipped {
        let (g, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
        add_skipped(&mut idx.root, g, name, why);
    }
    Ok(idx)
}

/// Puts the pipelines the v2 documents cannot carry onto the built variables.
pub(crate) fn apply_overrides(
    g: &mut super::SourceGroup,
    overrides: &BTreeMap<String, (Option<Filter>, bool)>,
) {
    for v in &mut g.vars {
        let path = if g.path.is_empty() {
            v.name.clone()
        } else {
            format!("{}/{}", g.path, v.name)
        };
        let Some((filter, declarable)) = overrides.get(&path) else {
            continue;
        };
        if let Layout::Listed { filters, table, .. } = &mut v.data.layout {
            if let Some(f) = filter {
                if matches!(f, Filter::ZarrV3(_)) {
                    v.data.endian = crate::dtype::Endian::Little;
                }
                *filters = vec![f.clone()];
            }
            if !declarable {
                // no numcodecs spelling: /kerchunk leaves the variable out (see refs::chunked)
                let t = Arc::make_mut(table);
                t.compressor = String::new();
                t.numcodecs_filters = String::new();
            }
        }
    }
    for sub in &mut g.groups {
        apply_overrides(sub, overrides);
    }
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
    use crate::attrs::AttrValue;
    use crate::dtype::{DType, Endian};
    use crate::source::{ChunkRef, Filter, Layout};

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
        let Layout::Listed { filters, table, .. } = &x.data.layout else {
            panic!("not refs")
        };
        assert_eq!(filters, &vec![Filter::Gzip]);
        assert!(matches!(table.chunks[0], ChunkRef::Whole { .. }));
        assert_eq!(table.chunks[1], ChunkRef::Missing);
        assert!(matches!(table.chunks[2], ChunkRef::Whole { .. }));
        // missing chunks read as the array's fill_value
        assert!(f32::from_le_bytes(table.fill.clone().unwrap().try_into().unwrap()).is_nan());
        let s = idx.root.vars.iter().find(|v| v.name == "s").unwrap();
        let Layout::Listed { table, .. } = &s.data.layout else {
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
    fn sharded_arrays_serve_inner_chunks_as_shard_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s.zarr");
        write(
            &root.join("zarr.json"),
            r#"{"zarr_format": 3, "node_type": "group"}"#,
        );
        let meta = |inner_codecs: &str| {
            format!(
                r#"{{"zarr_format": 3, "node_type": "array", "shape": [6], "data_type": "int16",
                "chunk_grid": {{"name": "regular", "configuration": {{"chunk_shape": [4]}}}},
                "fill_value": -9, "dimension_names": ["i"], "attributes": {{}},
                "codecs": [{{"name": "sharding_indexed", "configuration": {{"chunk_shape": [2],
                    "codecs": {inner_codecs},
                    "index_codecs": [{{"name": "bytes", "configuration": {{"endian": "little"}}}}, {{"name": "crc32c"}}]}}}}]}}"#
            )
        };
        write(
            &root.join("a/zarr.json"),
            &meta(r#"[{"name": "bytes", "configuration": {"endian": "little"}}]"#),
        );
        // the index chain, to write shard indexes with
        let spec = crate::codec::zarr_v3::spec(
            &serde_json::json!("uint64"),
            &serde_json::json!(0),
            &[2, 2],
            &serde_json::json!([{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]),
        );
        let chain = crate::codec::zarr_v3::parse(&spec).unwrap();
        let shard = |chunks: &[Option<&[i16]>]| {
            let mut data = Vec::new();
            let mut index = Vec::new();
            for c in chunks {
                match c {
                    Some(vals) => {
                        index.extend((data.len() as u64).to_le_bytes());
                        index.extend((vals.len() as u64 * 2).to_le_bytes());
                        data.extend(vals.iter().flat_map(|v| v.to_le_bytes()));
                    }
                    None => {
                        index.extend(u64::MAX.to_le_bytes());
                        index.extend(u64::MAX.to_le_bytes());
                    }
                }
            }
            data.extend(chain.encode(index));
            data
        };
        std::fs::create_dir_all(root.join("a/c")).unwrap();
        // shard 0: inner chunk 1 never written; shard 1 holds elements 4 and 5
        std::fs::write(root.join("a/c/0"), shard(&[Some(&[1, 2]), None])).unwrap();
        std::fs::write(root.join("a/c/1"), shard(&[Some(&[5, 6]), None])).unwrap();
        let idx = open_store(&root).unwrap();
        let a = &idx.root.vars[0];
        let Layout::Listed {
            chunk_shape,
            filters,
            table,
        } = &a.data.layout
        else {
            panic!("not refs")
        };
        assert_eq!(chunk_shape, &vec![2]);
        assert!(filters.is_empty(), "{filters:?}");
        assert_eq!(
            table.chunks,
            vec![
                ChunkRef::Range {
                    file: 0,
                    offset: 0,
                    size: 4
                },
                ChunkRef::Missing,
                ChunkRef::Range {
                    file: 1,
                    offset: 0,
                    size: 4
                },
            ]
        );
        assert_eq!(table.fill.as_deref(), Some(&(-9i16).to_le_bytes()[..]));
        // inner codecs our pipeline lacks are decoded with zarrs
        write(
            &root.join("a/zarr.json"),
            &meta(r#"[{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]"#),
        );
        let idx = open_store(&root).unwrap();
        let Layout::Listed { filters, .. } = &idx.root.vars[0].data.layout else {
            panic!("not refs")
        };
        assert!(matches!(filters.as_slice(), [Filter::ZarrV3(_)]), "{filters:?}");
        // a corrupt index (a flipped byte fails its checksum) names the shard
        let mut bytes = std::fs::read(root.join("a/c/1")).unwrap();
        let n = bytes.len();
        bytes[n - 6] ^= 0xff;
        std::fs::write(root.join("a/c/1"), &bytes).unwrap();
        let e = open_store(&root).unwrap_err().to_string();
        assert!(e.contains("a/c/1") && e.contains("shard index"), "{e}");
        // a shard too short for its index
        std::fs::write(root.join("a/c/1"), [0u8; 5]).unwrap();
        let e = open_store(&root).unwrap_err().to_string();
        assert!(e.contains("truncated shard"), "{e}");
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
        let Layout::Listed { filters, table, .. } = &v.data.layout else {
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
