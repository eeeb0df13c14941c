//! Reference sets as indexes: Zarr v2 metadata documents plus one reference per chunk (a
//! byte range of a file, a whole file, inline bytes), built into the same per-variable model
//! as a netCDF file (`Layout::Listed`).
//!
//! Shared by every reader whose data is such a set: kerchunk JSON/Parquet references
//! (`source::kerchunk`), Zarr stores (`source::zarr_store`: a store is a set whose chunks
//! are files) and Icechunk snapshots (`source::icechunk`). References may only point into
//! allowed roots ([`Roots`]): a reference file is data, and must not be able to expose
//! arbitrary files of the server.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::{
    ChunkRef, ChunkTable, FileVar, Layout, SourceDim, SourceError, SourceFile, SourceGroup, SourceIndex,
    SourceVar,
};
use crate::attrs::{AttrValue, Attrs};
use crate::dtype::{DType, Endian};

/// One chunk reference as a reference set spells it.
#[derive(Clone, Debug, PartialEq)]
pub enum RawRef {
    /// `[url]` (whole file, `range` None) or `[url, offset, size]`.
    Url {
        /// File or object URL as written in the set, resolved against [`Roots`].
        url: String,
        /// Byte offset and size of the chunk in the file; `None` for the whole file.
        range: Option<(u64, u64)>,
    },
    /// Bytes held in the set.
    Inline(Vec<u8>),
}

/// A parsed reference set: metadata documents and chunk references by key.
#[derive(Debug, Default)]
pub struct RefSet {
    /// Metadata documents by key (`.zgroup`, `tas/.zarray`, `zarr.json`, ...), parsed.
    pub meta: BTreeMap<String, Value>,
    /// Chunk references by key; absent keys are missing chunks (read as the fill value).
    pub chunks: HashMap<String, RawRef>,
}

// Python's json module writes NaN/Infinity as bare tokens (zarr-python and kerchunk produce
// them in attributes); serde_json refuses them, so they become these strings first.
pub(crate) const NAN: &str = "\u{1}cloudify:NaN";
pub(crate) const INF: &str = "\u{1}cloudify:Infinity";
pub(crate) const NEG_INF: &str = "\u{1}cloudify:-Infinity";

/// Replaces bare `NaN`, `Infinity` and `-Infinity` tokens outside strings by placeholder
/// strings, so the text parses as standard JSON.
pub fn sanitize_json(text: &str) -> std::borrow::Cow<'_, str> {
    if !(text.contains("NaN") || text.contains("Infinity")) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut in_str = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        let token = [("-Infinity", NEG_INF), ("Infinity", INF), ("NaN", NAN)]
            .into_iter()
            .find(|(t, _)| rest.starts_with(t));
        if let Some((t, repl)) = token {
            out.push('"');
            // the marker character must be escaped inside JSON text
            out.push_str(&repl.replace('\u{1}', "\\u0001"));
            out.push('"');
            rest = &rest[t.len()..];
            continue;
        }
        if c == '"' {
            in_str = true;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    std::borrow::Cow::Owned(out)
}

/// A float as JSON that [`attr_from_json`] reads back as a float (non-finite values as
/// the placeholders of [`sanitize_json`]).
pub fn float_json(f: f64) -> Value {
    if f.is_nan() {
        Value::from(NAN)
    } else if f == f64::INFINITY {
        Value::from(INF)
    } else if f == f64::NEG_INFINITY {
        Value::from(NEG_INF)
    } else {
        Value::from(f)
    }
}

/// A float from JSON: numbers, the placeholders of [`sanitize_json`] and the Zarr spellings
/// `"NaN"`, `"Infinity"`, `"-Infinity"`.
pub(crate) fn json_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            NAN | "NaN" => Some(f64::NAN),
            INF | "Infinity" => Some(f64::INFINITY),
            NEG_INF | "-Infinity" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

/// Where references may point.
#[derive(Clone, Debug)]
pub struct Roots {
    /// Base for relative references (the reference file's directory).
    pub base: PathBuf,
    /// Allowed directories, canonical.
    pub allowed: Vec<PathBuf>,
    /// Allowed object-store prefixes (`s3://bucket/prefix/`), from referenceRoots entries
    /// with a scheme: objects are never reachable unless a root names them, so a reference
    /// set cannot make the server read whatever its credentials allow.
    pub allowed_urls: Vec<String>,
    /// For a reference set (or repository) that is itself in an object store: the URL
    /// prefix relative references are resolved against. Its local `base` is then not an
    /// allowed root: an object-stored reference set reaches local files only through
    /// explicit `referenceRoots`.
    pub base_url: Option<String>,
}

impl Roots {
    /// The reference file's directory plus `extra` (relative ones resolved against the
    /// working directory; object URLs kept as prefixes).
    pub fn new(base: &Path, extra: &[String]) -> Self {
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| normalize(p));
        let mut allowed = vec![canon(base)];
        let mut allowed_urls = Vec::new();
        for r in extra {
            if let Some(rest) = r.strip_prefix("file://") {
                allowed.push(canon(Path::new(rest)));
            } else if r.contains("://") {
                // a prefix ends at a '/', so s3://bucket/data does not allow s3://bucket/data2
                let mut u = r.clone();
                if !u.ends_with('/') {
                    u.push('/');
                }
                allowed_urls.push(u);
            } else {
                allowed.push(canon(Path::new(r)));
            }
        }
        Self {
            base: canon(base),
            allowed,
            allowed_urls,
            base_url: None,
        }
    }

    /// Roots of a reference set or repository stored under the object prefix `base_url`
    /// (`s3://bucket/refs`): objects under that prefix plus `extra`.
    pub fn remote(base_url: &str, extra: &[String]) -> Self {
        let mut r = Self::new(Path::new("/"), extra);
        // `new` allowed its base: not here (see `base_url`)
        r.allowed.remove(0);
        let prefix = format!("{}/", base_url.trim_end_matches('/'));
        r.allowed_urls.insert(0, prefix.clone());
        r.base_url = Some(prefix);
        r
    }

    /// Resolves a reference URL to a local path inside the allowed roots, or to an object
    /// URL (kept as the path, as for object sources) under an allowed prefix.
    pub fn resolve(&self, url: &str) -> Result<PathBuf, String> {
        if let Some(base) = &self.base_url
            && !url.contains("://")
            && !url.starts_with('/')
        {
            return self.resolve(&format!("{base}{}", url.trim_start_matches("./")));
        }
        let local = if let Some(rest) = url.strip_prefix("file://") {
            PathBuf::from(rest)
        } else if let Some((scheme, _)) = url.split_once("://") {
            // `..` segments would let a prefix check be walked around
            if url.split('/').any(|seg| seg == "..") {
                return Err(format!("'{url}': '..' is not allowed in object URLs"));
            }
            if self.allowed_urls.iter().any(|r| url.starts_with(r.as_str())) {
                crate::storage::parse_object_url(url).map_err(|e| format!("'{url}': {e}"))?;
                return Ok(PathBuf::from(url));
            }
            return Err(if self.allowed_urls.is_empty() {
                format!(
                    "'{url}': references to {scheme}:// objects must be allowed by a referenceRoots entry (e.g. {scheme}://bucket/prefix/)"
                )
            } else {
                format!(
                    "'{url}' is outside the allowed object prefixes ({}); add its prefix to the dataset's referenceRoots to allow it",
                    self.allowed_urls.join(", ")
                )
            });
        } else {
            PathBuf::from(url)
        };
        let abs = if local.is_absolute() {
            local
        } else {
            self.base.join(local)
        };
        // Symlinks are followed when the target exists, so a link inside a root cannot lead
        // out of it; a missing file is judged by its path (and fails when read).
        let real = std::fs::canonicalize(&abs).unwrap_or_else(|_| normalize(&abs));
        if self.allowed.iter().any(|r| real.starts_with(r)) {
            Ok(real)
        } else {
            Err(format!(
                "'{url}' is outside the allowed roots ({}); add its directory to the dataset's referenceRoots to allow it",
                self.allowed
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    }
}

/// Gives every object-URL file of the index's reference tables a handle to read it with,
/// building one store per `scheme://bucket` from the dataset's storage settings.
pub fn attach_remote(
    idx: &mut SourceIndex,
    storage: Option<&cloudify_crds::StorageSpec>,
) -> Result<(), SourceError> {
    /// Stores by base and handles by URL, shared by all variables of the index.
    struct Handles<'a> {
        storage: Option<&'a cloudify_crds::StorageSpec>,
        stores: HashMap<String, Arc<crate::storage::Store>>,
        files: HashMap<PathBuf, Arc<SourceFile>>,
    }
    impl Handles<'_> {
        fn get(&mut self, p: &Path) -> Result<Option<Arc<SourceFile>>, String> {
            let url = p.to_string_lossy();
            if let Some(h) = self.files.get(p) {
                return Ok(Some(h.clone()));
            }
            if !url.contains("://") {
                // With a tape archive configured, plain paths are archive paths: read
                // through its staging cache, never from the (absent) path itself.
                let Some(tape) = self.storage.and_then(|s| s.tape.as_ref()) else {
                    return Ok(None);
                };
                let store = match self.stores.get("tape:") {
                    Some(s) => s.clone(),
                    None => {
                        let stager = crate::storage::tape::stager_for(tape)?;
                        // the first file named is what the archive's health checks ask about
                        stager.watch(&url);
                        let s = Arc::new(crate::storage::Store::tape(stager));
                        self.stores.insert("tape:".into(), s.clone());
                        s
                    }
                };
                let h = Arc::new(SourceFile {
                    path: p.to_path_buf(),
                    size: 0,
                    mtime_ns: 0,
                    etag: None,
                    inode: None,
                    remote: Some(Arc::new(crate::storage::RemoteObject {
                        store,
                        location: object_store::path::Path::from(url.as_ref()),
                    })),
                });
                self.files.insert(p.to_path_buf(), h.clone());
                return Ok(Some(h));
            }
            let parsed = crate::storage::parse_object_url(&url)?
                .ok_or_else(|| format!("'{url}' is not an object URL"))?;
            let store = match self.stores.get(&parsed.base) {
                Some(s) => s.clone(),
                None => {
                    let s = crate::storage::build_store(&parsed, self.storage)?;
                    self.stores.insert(parsed.base.clone(), s.clone());
                    s
                }
            };
            let h = Arc::new(crate::storage::object_handle(&url, &store)?);
            self.files.insert(p.to_path_buf(), h.clone());
            Ok(Some(h))
        }
    }
    fn group(g: &mut SourceGroup, h: &mut Handles<'_>) -> Result<(), String> {
        for v in &mut g.vars {
            let Layout::Listed { table, .. } = &mut v.data.layout else {
                continue;
            };
            let remote = table
                .files
                .iter()
                .map(|p| h.get(p))
                .collect::<Result<Vec<_>, String>>()?;
            if remote.iter().any(Option::is_some) {
                Arc::make_mut(table).remote = Arc::new(remote);
            }
        }
        for sub in &mut g.groups {
            group(sub, h)?;
        }
        Ok(())
    }
    let mut h = Handles {
        storage,
        stores: HashMap::new(),
        files: HashMap::new(),
    };
    group(&mut idx.root, &mut h).map_err(|message| SourceError::Malformed {
        path: idx.file.path.clone(),
        message,
    })
}

/// Removes `.` and `..` components without touching the file system.
pub(crate) fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// numpy dtype string → our type and byte order; `None` for types we do not serve.
pub fn parse_dtype(s: &str) -> Option<(DType, Endian)> {
    let endian = if s.starts_with('>') {
        Endian::Big
    } else {
        Endian::Little
    };
    let body = s.trim_start_matches(['<', '>', '|', '=']);
    let dt = match body {
        "i1" => DType::I8,
        "u1" => DType::U8,
        "i2" => DType::I16,
        "u2" => DType::U16,
        "i4" => DType::I32,
        "u4" => DType::U32,
        "i8" => DType::I64,
        "u8" => DType::U64,
        "f4" => DType::F32,
        "f8" => DType::F64,
        "S1" => DType::Char,
        "b1" => DType::Bool,
        _ => {
            // datetime64/timedelta64 with a unit, fixed-width bytes and unicode
            let unit = |rest: &str| {
                rest.strip_prefix('[')
                    .and_then(|r| r.strip_suffix(']'))
                    .and_then(crate::dtype::TimeUnit::parse)
            };
            let width = |rest: &str| rest.parse::<u32>().ok().filter(|n| *n > 0);
            if let Some(r) = body.strip_prefix("M8") {
                DType::DateTime64(unit(r)?)
            } else if let Some(r) = body.strip_prefix("m8") {
                DType::TimeDelta64(unit(r)?)
            } else if let Some(r) = body.strip_prefix('S') {
                DType::Bytes(width(r)?)
            } else if let Some(r) = body.strip_prefix('U') {
                if endian == Endian::Big {
                    return None; // would need swapping per code unit, not per element
                }
                DType::Unicode(width(r)?)
            } else {
                return None;
            }
        }
    };
    Some((dt, endian))
}

/// JSON attribute value → netCDF-style attribute (numbers become one-element arrays, as
/// xarray shows them either way).
pub fn attr_from_json(v: &Value) -> Option<AttrValue> {
    Some(match v {
        Value::String(s) => match json_f64(v) {
            Some(f) if s.starts_with('\u{1}') => AttrValue::Floats(vec![f]),
            _ => AttrValue::Str(s.clone()),
        },
        Value::Bool(b) => AttrValue::Ints(vec![i64::from(*b)]),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                AttrValue::Ints(vec![i])
            } else if let Some(u) = n.as_u64() {
                AttrValue::UInts(vec![u])
            } else {
                AttrValue::Floats(vec![n.as_f64()?])
            }
        }
        Value::Array(a) if a.is_empty() => return None,
        Value::Array(a) => {
            if a.iter()
                .all(|x| matches!(x, Value::String(s) if !s.starts_with('\u{1}')))
            {
                AttrValue::Strs(a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
            } else if a.iter().all(|x| x.as_i64().is_some()) {
                AttrValue::Ints(a.iter().filter_map(Value::as_i64).collect())
            } else if a.iter().all(|x| x.as_u64().is_some() || x.as_i64().is_some()) {
                AttrValue::UInts(a.iter().filter_map(Value::as_u64).collect())
            } else if a.iter().all(|x| json_f64(x).is_some()) {
                AttrValue::Floats(a.iter().filter_map(json_f64).collect())
            } else {
                AttrValue::Str(v.to_string())
            }
        }
        Value::Null => return None,
        Value::Object(_) => AttrValue::Str(v.to_string()),
    })
}

pub(crate) fn attrs_of(doc: Option<&Value>) -> (Attrs, Option<Vec<String>>) {
    let mut attrs = Attrs::default();
    let mut dims = None;
    if let Some(Value::Object(m)) = doc {
        for (k, v) in m {
            if k == "_ARRAY_DIMENSIONS" {
                dims = v
                    .as_array()
                    .map(|a| a.iter().filter_map(|d| d.as_str().map(str::to_string)).collect());
                continue;
            }
            if let Some(a) = attr_from_json(v) {
                attrs.0.push((k.clone(), a));
            }
        }
    }
    (attrs, dims)
}

/// How chunk references of an array are named and resolved.
pub trait ChunkSource {
    /// The reference of chunk key `key` (Zarr v2 spelling with the array's separator);
    /// `Ok(None)` = not stored.
    fn chunk(&self, key: &str) -> Result<Option<RawRef>, String>;
    /// The local file a reference URL stands for.
    fn resolve(&self, key: &str, url: &str) -> Result<PathBuf, String>;
}

/// Chunks of a reference set.
pub struct SetChunks<'a> {
    /// The reference set the chunks are looked up in.
    pub set: &'a RefSet,
    /// Where the references may point, to resolve their URLs.
    pub roots: &'a Roots,
}

impl ChunkSource for SetChunks<'_> {
    fn chunk(&self, key: &str) -> Result<Option<RawRef>, String> {
        Ok(self.set.chunks.get(key).cloned())
    }
    fn resolve(&self, key: &str, url: &str) -> Result<PathBuf, String> {
        self.roots
            .resolve(url)
            .map_err(|e| format!("reference '{key}': {e}"))
    }
}

/// What a `.zarray` `fill_value` means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FillRule {
    /// Zarr v2 and kerchunk: it is also the CF `_FillValue` (xarray reads it so), and
    /// missing chunks read as it (zeros when null).
    ZarrV2,
    /// Zarr v3: only what missing chunks read as; `_FillValue` comes from the attributes.
    ZarrV3,
}

/// Little-endian bytes missing chunks read as: the Zarr `fill_value`, zeros when null.
pub(crate) fn chunk_fill(fv: &Value, dtype: DType) -> Vec<u8> {
    let s = match fv {
        Value::Bool(b) => Some(crate::dtype::Scalar::UInt(u64::from(*b))),
        Value::String(t) if t == "NaT" => Some(crate::dtype::Scalar::Int(crate::dtype::NAT)),
        Value::Number(n) => n
            .as_i64()
            .map(crate::dtype::Scalar::Int)
            .or_else(|| n.as_u64().map(crate::dtype::Scalar::UInt))
            .or_else(|| n.as_f64().map(crate::dtype::Scalar::Float)),
        _ if dtype.is_float() => json_f64(fv).map(crate::dtype::Scalar::Float),
        _ => None,
    };
    match (s, dtype) {
        (_, DType::Char | DType::Str) | (None, _) => vec![0; dtype.size()],
        (Some(s), dt) => s.to_le_bytes(dt),
    }
}

/// Builds the per-variable model of a Zarr v2 hierarchy described by metadata documents
/// (`meta`, keyed like `tas/.zarray`) and chunk references (`chunks`).
pub fn build_index(
    file: Arc<SourceFile>,
    meta: &BTreeMap<String, Value>,
    chunks: &dyn ChunkSource,
    rule: FillRule,
) -> Result<SourceIndex, SourceError> {
    let path = file.path.clone();
    // Every group and array path, with their parents.
    let mut groups: BTreeSet<String> = BTreeSet::new();
    groups.insert(String::new());
    let mut arrays: Vec<String> = Vec::new();
    for k in meta.keys() {
        let (prefix, leaf) = match k.rsplit_once('/') {
            Some((p, l)) => (p.to_string(), l),
            None => (String::new(), k.as_str()),
        };
        match leaf {
            ".zgroup" => {
                groups.insert(prefix.clone());
            }
            ".zarray" => arrays.push(prefix.clone()),
            _ => continue,
        }
        let mut p = prefix.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            groups.insert(parent.to_string());
            p = parent;
        }
        if leaf == ".zarray" && !prefix.is_empty() {
            // the array's own path is not a group, but its parent is
            let parent = prefix.rsplit_once('/').map_or("", |(p, _)| p);
            groups.insert(parent.to_string());
        }
    }
    if arrays.iter().any(String::is_empty) {
        return Err(malformed(
            &path,
            "the root is an array, not a group; serve a group of arrays",
        ));
    }
    let mut files = FileIds::default();
    let mut vars_by_group: BTreeMap<String, Vec<SourceVar>> = BTreeMap::new();
    let mut skipped_by_group: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for a in &arrays {
        let (gpath, name) = match a.rsplit_once('/') {
            Some((g, n)) => (g.to_string(), n.to_string()),
            None => (String::new(), a.clone()),
        };
        match array_var(&file, a, &name, meta, chunks, rule, &mut files) {
            Ok(Ok(v)) => vars_by_group.entry(gpath).or_default().push(v),
            Ok(Err(why)) => skipped_by_group.entry(gpath).or_default().push((name, why)),
            Err(message) => return Err(malformed(&path, message)),
        }
    }
    // Files shared by all variables: one table per variable would repeat the list.
    let files = Arc::new(files.files);
    fn fix_files(vars: &mut [SourceVar], files: &Arc<Vec<PathBuf>>) {
        for v in vars {
            if let Layout::Listed { table, .. } = &mut v.data.layout {
                Arc::make_mut(table).files = files.clone();
            }
        }
    }
    for vars in vars_by_group.values_mut() {
        fix_files(vars, &files);
    }
    fn group_at(
        path: &str,
        groups: &BTreeSet<String>,
        meta: &BTreeMap<String, Value>,
        vars: &mut BTreeMap<String, Vec<SourceVar>>,
        skipped: &mut BTreeMap<String, Vec<(String, String)>>,
    ) -> SourceGroup {
        let key = |leaf: &str| {
            if path.is_empty() {
                leaf.to_string()
            } else {
                format!("{path}/{leaf}")
            }
        };
        let (attrs, _) = attrs_of(meta.get(&key(".zattrs")));
        let vs = vars.remove(path).unwrap_or_default();
        let mut dims: Vec<SourceDim> = Vec::new();
        for v in &vs {
            for (d, n) in v.dims.iter().zip(&v.data.shape) {
                if !dims.iter().any(|x| x.name == *d) {
                    dims.push(SourceDim {
                        name: d.clone(),
                        len: *n,
                        unlimited: false,
                    });
                }
            }
        }
        let children: Vec<String> = groups
            .iter()
            .filter(|g| {
                !g.is_empty()
                    && match g.rsplit_once('/') {
                        Some((parent, _)) => parent == path,
                        None => path.is_empty(),
                    }
            })
            .cloned()
            .collect();
        let subgroups = children
            .iter()
            .map(|c| group_at(c, groups, meta, vars, skipped))
            .collect();
        SourceGroup {
            path: path.to_string(),
            dims,
            attrs,
            vars: vs,
            groups: subgroups,
            skipped: skipped.remove(path).unwrap_or_default(),
        }
    }
    let mut skipped = skipped_by_group;
    let root = group_at("", &groups, meta, &mut vars_by_group, &mut skipped);
    // The source's identity covers the files its chunks live in: ETags (and caches keyed
    // on them) then change when a referenced file or a Zarr chunk file does.
    let mut ident = (*file).clone();
    for p in files.iter() {
        if let Ok(m) = std::fs::metadata(p) {
            ident.size = ident.size.wrapping_add(m.len());
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
            ident.mtime_ns = ident.mtime_ns.max(mtime);
        }
    }
    Ok(SourceIndex {
        file: Arc::new(ident),
        root,
    })
}

/// Files referenced by a source, numbered in order of first use.
#[derive(Default)]
struct FileIds {
    files: Vec<PathBuf>,
    ids: HashMap<PathBuf, u32>,
}

impl FileIds {
    fn id(&mut self, p: PathBuf) -> Option<u32> {
        if let Some(i) = self.ids.get(&p) {
            return Some(*i);
        }
        let i = u32::try_from(self.files.len()).ok()?;
        self.files.push(p.clone());
        self.ids.insert(p, i);
        Some(i)
    }
}

/// One array. `Ok(Err(why))`: the variable is skipped (type or layout we do not serve);
/// `Err`: the whole source is unusable (malformed metadata, forbidden reference).
fn array_var(
    file: &Arc<SourceFile>,
    apath: &str,
    name: &str,
    meta: &BTreeMap<String, Value>,
    chunks: &dyn ChunkSource,
    rule: FillRule,
    files: &mut FileIds,
) -> Result<Result<SourceVar, String>, String> {
    let za = &meta[&format!("{apath}/.zarray")];
    let bad = |why: String| format!("'{apath}/.zarray': {why}");
    let dims_u64 = |k: &str| -> Result<Vec<u64>, String> {
        za.get(k)
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
            .ok_or_else(|| bad(format!("'{k}' missing or not a list of non-negative integers")))
    };
    let shape = dims_u64("shape")?;
    let chunk_shape = dims_u64("chunks")?;
    if chunk_shape.len() != shape.len() || chunk_shape.contains(&0) {
        return Err(bad(format!("chunks {chunk_shape:?} do not fit shape {shape:?}")));
    }
    let dtype_s = za
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("'dtype' missing or not a string".into()))?;
    let Some((dtype, endian)) = parse_dtype(dtype_s) else {
        return Ok(Err(format!("Zarr dtype '{dtype_s}' is not supported")));
    };
    if za.get("order").and_then(Value::as_str).is_some_and(|o| o != "C") {
        return Ok(Err("Fortran-ordered chunks are not supported".into()));
    }
    let compressor = za.get("compressor").cloned().unwrap_or(Value::Null);
    let nfilters = za.get("filters").cloned().unwrap_or(Value::Null);
    let filters = crate::codec::numcodecs::pipeline(&compressor, &nfilters).map_err(bad)?;
    let sep = za
        .get("dimension_separator")
        .and_then(Value::as_str)
        .unwrap_or(".");
    if sep != "." && sep != "/" {
        return Err(bad(format!("dimension_separator '{sep}' is neither '.' nor '/'")));
    }
    let (mut attrs, dims) = attrs_of(meta.get(&format!("{apath}/.zattrs")));
    let dims = match dims {
        Some(d) if d.len() == shape.len() => d,
        Some(d) => {
            return Err(format!(
                "'{apath}/.zattrs': _ARRAY_DIMENSIONS {d:?} does not match shape {shape:?}"
            ));
        }
        // xarray needs dimension names; name them after the array like netCDF's phony dims
        None => (0..shape.len()).map(|i| format!("{name}_dim_{i}")).collect(),
    };
    // Zarr v2's fill_value is what xarray decodes as _FillValue.
    // (numbers only: xarray does not mask bools, times or text with it)
    if rule == FillRule::ZarrV2
        && dtype.is_number()
        && dtype != DType::Bool
        && attrs.get("_FillValue").is_none()
    {
        let fv = za.get("fill_value").unwrap_or(&Value::Null);
        let a = match fv {
            Value::Null => None,
            _ if dtype.is_float() => json_f64(fv).map(|f| AttrValue::Floats(vec![f])),
            Value::Number(n) => n
                .as_i64()
                .map(|i| AttrValue::Ints(vec![i]))
                .or_else(|| n.as_u64().map(|u| AttrValue::UInts(vec![u]))),
            _ => None,
        };
        if let Some(a) = a {
            attrs.0.push(("_FillValue".into(), a));
        }
    }
    // The chunk table, dense over the grid.
    let grid: Vec<u64> = shape
        .iter()
        .zip(&chunk_shape)
        .map(|(s, c)| s.div_ceil(*c))
        .collect();
    // The grid is iterated and its table allocated below: bounded first (a garbage shape
    // would otherwise abort the process on allocation failure, or loop for hours).
    let n = match super::grid_chunks(&grid) {
        Ok(n) => n,
        Err(why) => return Ok(Err(why)),
    };
    let mut table = Vec::with_capacity(n);
    let mut idx = vec![0u64; grid.len()];
    let empty = grid.contains(&0);
    for _ in 0..if empty { 0 } else { n } {
        let key = if idx.is_empty() {
            format!("{apath}/0")
        } else {
            let parts: Vec<String> = idx.iter().map(u64::to_string).collect();
            format!("{apath}/{}", parts.join(sep))
        };
        let mut r = chunks.chunk(&key)?;
        if r.is_none() && sep == "/" {
            let parts: Vec<String> = idx.iter().map(u64::to_string).collect();
            r = chunks.chunk(&format!("{apath}/{}", parts.join(".")))?;
        }
        let entry = match r {
            None => ChunkRef::Missing,
            Some(RawRef::Inline(b)) => ChunkRef::Inline(b),
            Some(RawRef::Url { url, range }) => {
                let p = chunks.resolve(&key, &url)?;
                let f = files
                    .id(p)
                    .ok_or_else(|| bad("too many referenced files".into()))?;
                match range {
                    Some((offset, size)) => ChunkRef::Range {
                        file: f,
                        offset,
                        size,
                    },
                    None => ChunkRef::Whole { file: f },
                }
            }
        };
        table.push(entry);
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < grid[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    let compact = |v: &Value| serde_json::to_string(v).unwrap_or_else(|_| "null".into());
    Ok(Ok(SourceVar {
        name: name.to_string(),
        dims,
        dtype,
        attrs,
        data: FileVar {
            file: file.clone(),
            shape,
            endian,
            layout: Layout::Listed {
                chunk_shape,
                filters,
                table: Arc::new(ChunkTable {
                    files: Arc::default(), // filled in by build_index
                    remote: Arc::default(),
                    chunks: table,
                    compressor: compact(&compressor),
                    numcodecs_filters: compact(&nfilters),
                    fill: Some(chunk_fill(za.get("fill_value").unwrap_or(&Value::Null), dtype)),
                }),
            },
            stored: None,
        },
    }))
}

pub(crate) fn malformed(path: &Path, message: impl Into<String>) -> SourceError {
    SourceError::Malformed {
        path: path.to_path_buf(),
        message: message.into(),
    }
}
