//! kerchunk/fsspec reference sets (JSON v0/v1, Parquet) as sources.
//!
//! A reference set describes a Zarr v2 store whose metadata documents are held in the set
//! and whose chunks are byte ranges of other files, whole files, or inline bytes. It is
//! parsed into the same per-variable model as a netCDF file (`Layout::Listed`), so `/zarr`,
//! `/kerchunk`, aggregation and summaries work unchanged. Local Zarr v2 stores share the
//! same builder ([`build_index`]): a store is a reference set whose chunks are files.
//!
//! References may only point into allowed roots (the directory of the reference file and
//! configured ones): a reference file is data, and must not be able to expose arbitrary
//! files of the server.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
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
    Url { url: String, range: Option<(u64, u64)> },
    /// Bytes held in the set.
    Inline(Vec<u8>),
}

/// A parsed reference set: metadata documents and chunk references by key.
#[derive(Debug, Default)]
pub struct RefSet {
    pub meta: BTreeMap<String, Value>,
    pub chunks: HashMap<String, RawRef>,
}

// Python's json module writes NaN/Infinity as bare tokens (zarr-python and kerchunk produce
// them in attributes); serde_json refuses them, so they become these strings first.
const NAN: &str = "\u{1}cloudify:NaN";
const INF: &str = "\u{1}cloudify:Infinity";
const NEG_INF: &str = "\u{1}cloudify:-Infinity";

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
fn json_f64(v: &Value) -> Option<f64> {
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

fn parse_doc(text: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str(&sanitize_json(text))
}

fn malformed(path: &Path, message: impl Into<String>) -> SourceError {
    SourceError::Malformed {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Parses a kerchunk JSON reference file (version 0 or 1).
pub fn parse_json(path: &Path) -> Result<RefSet, SourceError> {
    let text = std::fs::read_to_string(path).map_err(|source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_json_text(path, &text)
}

/// Parses the text of a kerchunk JSON reference file read from `path` (named in errors).
pub fn parse_json_text(path: &Path, text: &str) -> Result<RefSet, SourceError> {
    let doc = parse_doc(text).map_err(|e| malformed(path, format!("not valid JSON: {e}")))?;
    let Value::Object(top) = doc else {
        return Err(malformed(
            path,
            "not a kerchunk reference set (top level is not a JSON object)",
        ));
    };
    let (refs, templates) = match top.get("version") {
        None => (top.clone(), serde_json::Map::new()),
        Some(v) if v.as_u64() == Some(1) => {
            let mut refs = match top.get("refs") {
                Some(Value::Object(r)) => r.clone(),
                _ => return Err(malformed(path, "version 1 reference set without a 'refs' object")),
            };
            let templates = match top.get("templates") {
                None | Some(Value::Null) => serde_json::Map::new(),
                Some(Value::Object(t)) => t.clone(),
                Some(_) => return Err(malformed(path, "'templates' is not an object")),
            };
            match top.get("gen") {
                None | Some(Value::Null) => {}
                Some(Value::Array(gens)) => {
                    for (i, g) in gens.iter().enumerate() {
                        expand_gen(g, &templates, &mut refs)
                            .map_err(|e| malformed(path, format!("'gen' entry {i}: {e}")))?;
                    }
                }
                Some(_) => return Err(malformed(path, "'gen' is not a list")),
            }
            (refs, templates)
        }
        Some(v) => return Err(malformed(path, format!("unsupported reference version {v}"))),
    };
    let mut set = RefSet::default();
    for (key, value) in refs {
        let is_meta = key.ends_with(".zarray")
            || key.ends_with(".zattrs")
            || key.ends_with(".zgroup")
            || key.ends_with(".zmetadata");
        let bad = |why: &str| malformed(path, format!("reference '{key}': {why}"));
        if is_meta {
            if key.ends_with(".zmetadata") {
                continue; // consolidated copy of the documents we read individually
            }
            let doc = match &value {
                Value::String(s) => {
                    let text = match s.strip_prefix("base64:") {
                        Some(b) => String::from_utf8(
                            base64::engine::general_purpose::STANDARD
                                .decode(b)
                                .map_err(|e| bad(&format!("bad base64: {e}")))?,
                        )
                        .map_err(|_| bad("not UTF-8"))?,
                        None => s.clone(),
                    };
                    parse_doc(&text).map_err(|e| bad(&format!("not valid JSON: {e}")))?
                }
                Value::Object(_) => value.clone(),
                _ => return Err(bad("metadata must be a JSON document")),
            };
            set.meta.insert(key, doc);
            continue;
        }
        let r = match value {
            Value::String(s) => match s.strip_prefix("base64:") {
                Some(b) => RawRef::Inline(
                    base64::engine::general_purpose::STANDARD
                        .decode(b)
                        .map_err(|e| bad(&format!("bad base64: {e}")))?,
                ),
                None => RawRef::Inline(s.into_bytes()),
            },
            Value::Array(a) => {
                let url = match a.first() {
                    Some(Value::String(u)) => expand_templates(u, &templates).map_err(|e| bad(&e))?,
                    _ => return Err(bad("expected [url] or [url, offset, size]")),
                };
                let range = match a.len() {
                    1 => None,
                    3 => {
                        let n = |v: &Value| {
                            v.as_u64()
                                .ok_or_else(|| bad("offset and size must be non-negative integers"))
                        };
                        Some((n(&a[1])?, n(&a[2])?))
                    }
                    _ => return Err(bad("expected [url] or [url, offset, size]")),
                };
                RawRef::Url { url, range }
            }
            _ => return Err(bad("expected a string or [url, offset, size]")),
        };
        set.chunks.insert(key, r);
    }
    Ok(set)
}

/// Most references one `gen` entry may produce: the product of its dimensions is unbounded
/// otherwise, and each reference costs memory for the life of the source.
const MAX_GENERATED: u64 = 10_000_000;

/// Expands one entry of a reference set's `gen` section (fsspec ReferenceFileSystem spec
/// v1) into `refs`: `key`, `url` and optional `offset`/`length` templates rendered for every
/// combination of the `dimensions` (`{start, stop, step}` ranges or lists of values).
fn expand_gen(
    g: &Value,
    templates: &serde_json::Map<String, Value>,
    refs: &mut serde_json::Map<String, Value>,
) -> Result<(), String> {
    let field = |k: &str| -> Result<Option<&str>, String> {
        match g.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(Value::Number(_)) => Err(format!("'{k}' must be a template string")),
            Some(other) => Err(format!("'{k}' must be a string, not {other}")),
        }
    };
    let key = field("key")?.ok_or("'key' missing")?;
    let url = field("url")?.ok_or("'url' missing")?;
    // numbers are accepted for offset/length as well as templates
    let num_field = |k: &str| -> Result<Option<String>, String> {
        match g.get(k) {
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            _ => field(k).map(|o| o.map(str::to_string)),
        }
    };
    let (offset, length) = (num_field("offset")?, num_field("length")?);
    if offset.is_some() != length.is_some() {
        return Err("'offset' and 'length' must be given together".into());
    }
    let Some(Value::Object(dims)) = g.get("dimensions") else {
        return Err("'dimensions' missing or not an object".into());
    };
    let mut axes: Vec<(String, Vec<GenVal>)> = Vec::new();
    for (name, d) in dims {
        let values = match d {
            Value::Array(a) => a
                .iter()
                .map(|v| match v {
                    Value::Number(n) => n.as_i64().map(GenVal::Int),
                    Value::String(s) => Some(GenVal::Str(s.clone())),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| format!("dimension '{name}': values must be integers or strings"))?,
            Value::Object(r) => {
                let n = |k: &str, default: Option<i64>| -> Result<i64, String> {
                    match r.get(k) {
                        None => default.ok_or_else(|| format!("dimension '{name}': '{k}' missing")),
                        Some(v) => v
                            .as_i64()
                            .ok_or_else(|| format!("dimension '{name}': '{k}' is not an integer")),
                    }
                };
                let (start, stop, step) = (n("start", Some(0))?, n("stop", None)?, n("step", Some(1))?);
                if step == 0 {
                    return Err(format!("dimension '{name}': step is 0"));
                }
                // i128: no overflow for any i64 bounds
                let (span, stride) = if step > 0 {
                    (i128::from(stop) - i128::from(start), i128::from(step))
                } else {
                    (i128::from(start) - i128::from(stop), -i128::from(step))
                };
                let count = (span.max(0) + stride - 1) / stride;
                if count > i128::from(MAX_GENERATED) {
                    return Err(format!("dimension '{name}' has more than {MAX_GENERATED} values"));
                }
                (0..count as i64).map(|i| GenVal::Int(start + i * step)).collect()
            }
            _ => return Err(format!("dimension '{name}' is neither a list nor a range")),
        };
        axes.push((name.clone(), values));
    }
    let total = axes
        .iter()
        .try_fold(1u64, |acc, (_, v)| acc.checked_mul(v.len() as u64))
        .filter(|t| *t <= MAX_GENERATED)
        .ok_or_else(|| format!("more than {MAX_GENERATED} references"))?;
    let mut vars: HashMap<String, GenVal> = templates
        .iter()
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), GenVal::Str(s.to_string()))))
        .collect();
    let mut idx = vec![0usize; axes.len()];
    for _ in 0..total {
        for ((name, values), i) in axes.iter().zip(&idx) {
            vars.insert(name.clone(), values[*i].clone());
        }
        let k = render(key, &vars)?;
        let u = render(url, &vars)?;
        let r = match (&offset, &length) {
            (Some(o), Some(l)) => {
                let int = |t: &str, what: &str| -> Result<u64, String> {
                    let v = render(t, &vars)?;
                    v.trim()
                        .parse::<u64>()
                        .map_err(|_| format!("{what} '{t}' renders to '{v}', not a non-negative integer"))
                };
                serde_json::json!([u, int(o, "offset")?, int(l, "length")?])
            }
            _ => serde_json::json!([u]),
        };
        refs.insert(k, r);
        // odometer over the dimensions, last fastest (itertools.product order)
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < axes[d].1.len() {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(())
}

/// A value in a `gen` template expression.
#[derive(Clone, Debug, PartialEq)]
enum GenVal {
    Int(i64),
    Str(String),
}

impl std::fmt::Display for GenVal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GenVal::Int(i) => write!(f, "{i}"),
            GenVal::Str(s) => f.write_str(s),
        }
    }
}

/// Renders `{{ expression }}` placeholders: the subset of Jinja2 that `gen` references use
/// (names, integer literals, `+ - * / // %`, parentheses, `+` joining strings).
fn render(template: &str, vars: &HashMap<String, GenVal>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let j = after
            .find("}}")
            .ok_or_else(|| format!("unterminated '{{{{' in '{template}'"))?;
        let mut p = ExprParser {
            s: &after.as_bytes()[..j],
            pos: 0,
            vars,
        };
        let v = p.expr().map_err(|e| format!("'{template}': {e}"))?;
        p.ws();
        if p.pos != p.s.len() {
            return Err(format!("'{template}': cannot evaluate '{}'", &after[..j]));
        }
        out.push_str(&v.to_string());
        rest = &after[j + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

struct ExprParser<'a> {
    s: &'a [u8],
    pos: usize,
    vars: &'a HashMap<String, GenVal>,
}

impl ExprParser<'_> {
    fn ws(&mut self) {
        while self.s.get(self.pos).is_some_and(u8::is_ascii_whitespace) {
            self.pos += 1;
        }
    }

    fn expr(&mut self) -> Result<GenVal, String> {
        let mut v = self.term()?;
        loop {
            self.ws();
            let op = match self.s.get(self.pos) {
                Some(b'+') => '+',
                Some(b'-') => '-',
                _ => return Ok(v),
            };
            self.pos += 1;
            let r = self.term()?;
            v = match (v, r, op) {
                (GenVal::Int(a), GenVal::Int(b), '+') => GenVal::Int(a.checked_add(b).ok_or("overflow")?),
                (GenVal::Int(a), GenVal::Int(b), _) => GenVal::Int(a.checked_sub(b).ok_or("overflow")?),
                (GenVal::Str(a), GenVal::Str(b), '+') => GenVal::Str(a + &b),
                _ => return Err(format!("'{op}' on a string and a number")),
            };
        }
    }

    fn term(&mut self) -> Result<GenVal, String> {
        let mut v = self.atom()?;
        loop {
            self.ws();
            let op: &str = match (self.s.get(self.pos), self.s.get(self.pos + 1)) {
                (Some(b'/'), Some(b'/')) => "//",
                (Some(b'/'), _) => "/",
                (Some(b'*'), _) => "*",
                (Some(b'%'), _) => "%",
                _ => return Ok(v),
            };
            self.pos += op.len();
            let r = self.atom()?;
            let (GenVal::Int(a), GenVal::Int(b)) = (&v, &r) else {
                return Err(format!("'{op}' needs numbers"));
            };
            let (a, b) = (*a, *b);
            if op != "*" && b == 0 {
                return Err("division by zero".into());
            }
            // Checked: `i64::MIN // -1` and `i64::MIN % -1` overflow (and panic unchecked).
            v = GenVal::Int(
                match op {
                    "*" => a.checked_mul(b),
                    // Python floor division and modulo (Jinja's `/` is true division: the
                    // references only use it on exact multiples)
                    "%" => a.checked_rem_euclid(b),
                    _ => a.checked_div_euclid(b),
                }
                .ok_or("overflow")?,
            );
        }
    }

    fn atom(&mut self) -> Result<GenVal, String> {
        self.ws();
        let start = self.pos;
        match self.s.get(self.pos) {
            Some(b'(') => {
                self.pos += 1;
                let v = self.expr()?;
                self.ws();
                if self.s.get(self.pos) != Some(&b')') {
                    return Err("missing ')'".into());
                }
                self.pos += 1;
                Ok(v)
            }
            Some(b'-') => {
                self.pos += 1;
                match self.atom()? {
                    GenVal::Int(i) => Ok(GenVal::Int(i.checked_neg().ok_or("overflow")?)),
                    GenVal::Str(_) => Err("'-' on a string".into()),
                }
            }
            Some(c) if c.is_ascii_digit() => {
                while self.s.get(self.pos).is_some_and(u8::is_ascii_digit) {
                    self.pos += 1;
                }
                let t = std::str::from_utf8(&self.s[start..self.pos]).unwrap_or_default();
                t.parse()
                    .map(GenVal::Int)
                    .map_err(|_| format!("number '{t}' too large"))
            }
            Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {
                while self
                    .s
                    .get(self.pos)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
                {
                    self.pos += 1;
                }
                let name = std::str::from_utf8(&self.s[start..self.pos]).unwrap_or_default();
                self.vars
                    .get(name)
                    .cloned()
                    .ok_or_else(|| format!("unknown name '{name}'"))
            }
            _ => Err("expected a name, a number or '('".into()),
        }
    }
}

/// Substitutes kerchunk `{{name}}` templates.
fn expand_templates(url: &str, templates: &serde_json::Map<String, Value>) -> Result<String, String> {
    if !url.contains("{{") {
        return Ok(url.to_string());
    }
    let mut out = String::new();
    let mut rest = url;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let j = after
            .find("}}")
            .ok_or_else(|| format!("unterminated template in '{url}'"))?;
        let name = after[..j].trim();
        let value = templates
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("unknown template '{{{{{name}}}}}' in '{url}'"))?;
        out.push_str(value);
        rest = &after[j + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Reads a Parquet reference directory into a [`RefSet`].
pub fn parse_parquet(dir: &super::tree::Tree) -> Result<RefSet, SourceError> {
    let p = super::kerchunk_parquet::read_parquet(dir).map_err(|e| match e {
        super::kerchunk_parquet::ParquetRefsError::Io { path, source } => SourceError::Io { path, source },
        super::kerchunk_parquet::ParquetRefsError::Parquet { path, message }
        | super::kerchunk_parquet::ParquetRefsError::Malformed { path, message } => {
            SourceError::Malformed { path, message }
        }
    })?;
    let mut set = RefSet::default();
    for (k, v) in p.metadata {
        // documents went through serde_json already; NaN spelled as strings stays a string
        set.meta.insert(k, v);
    }
    for (k, v) in p.chunks {
        set.chunks.insert(
            k,
            match v {
                super::kerchunk_parquet::ParquetRef::Url { url, range } => RawRef::Url { url, range },
                super::kerchunk_parquet::ParquetRef::Inline(b) => RawRef::Inline(b),
            },
        );
    }
    Ok(set)
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
            if !url.contains("://") {
                return Ok(None);
            }
            if let Some(h) = self.files.get(p) {
                return Ok(Some(h.clone()));
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
fn normalize(p: &Path) -> PathBuf {
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

fn attrs_of(doc: Option<&Value>) -> (Attrs, Option<Vec<String>>) {
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
    pub set: &'a RefSet,
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
fn chunk_fill(fv: &Value, dtype: DType) -> Vec<u8> {
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

/// Opens a kerchunk reference source: a `.json` file or a Parquet reference directory.
/// References to objects (`s3://...`) are read with `storage`'s settings.
pub fn open_refs(
    path: &Path,
    extra_roots: &[String],
    storage: Option<&cloudify_crds::StorageSpec>,
) -> Result<SourceIndex, SourceError> {
    open_refs_source(&path.to_string_lossy(), extra_roots, storage)
}

/// [`open_refs`] for a local path or an object URL (`s3://bucket/refs.json`, or a Parquet
/// reference prefix `s3://bucket/refs.parq`). An object-stored reference set may point to
/// objects under its own prefix and to `extra_roots`.
pub fn open_refs_source(
    source: &str,
    extra_roots: &[String],
    storage: Option<&cloudify_crds::StorageSpec>,
) -> Result<SourceIndex, SourceError> {
    use super::tree::Tree;
    let remote = crate::storage::parse_object_url(source)
        .map_err(|message| malformed(Path::new(source), message))?
        .is_some();
    let (set, file, roots) = if remote {
        let url = source.trim_end_matches('/');
        let is_json = url.ends_with(".json");
        // the directory-like prefix holding the reference file, or the Parquet set itself
        let (dir_url, leaf) = if is_json {
            url.rsplit_once('/').unwrap_or((url, ""))
        } else {
            (url, ".zmetadata")
        };
        let tree = Tree::open(dir_url, storage).map_err(|m| malformed(Path::new(url), m))?;
        let set = if is_json {
            let bytes = tree
                .read(leaf)
                .map_err(|m| malformed(Path::new(url), m))?
                .ok_or_else(|| malformed(Path::new(url), "no such object"))?;
            parse_json_text(Path::new(url), &String::from_utf8_lossy(&bytes))?
        } else {
            parse_parquet(&tree)?
        };
        let mut file = tree.identity(leaf)?;
        file.path = PathBuf::from(url);
        // Relative references and the default allowed prefix: the reference file's
        // "directory" (for a Parquet set: the directory holding it, as for local ones).
        let base = url.rsplit_once('/').map_or(url, |(d, _)| d);
        (set, file, Roots::remote(base, extra_roots))
    } else {
        let path = Path::new(source.strip_prefix("file://").unwrap_or(source));
        let is_dir = path.is_dir();
        let set = if is_dir {
            parse_parquet(&Tree::Local(path.to_path_buf()))?
        } else {
            parse_json(path)?
        };
        let ident = if is_dir {
            path.join(".zmetadata")
        } else {
            path.to_path_buf()
        };
        let mut file = SourceFile::stat(ident)?;
        file.path = path.to_path_buf();
        // The directory holding the reference file (or Parquet reference directory).
        let base = path.parent().unwrap_or(Path::new("/"));
        (set, file, Roots::new(base, extra_roots))
    };
    let mut idx = build_index(
        Arc::new(file),
        &set.meta,
        &SetChunks {
            set: &set,
            roots: &roots,
        },
        FillRule::ZarrV2,
    )?;
    if !roots.allowed_urls.is_empty() {
        attach_remote(&mut idx, storage)?;
    }
    Ok(idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_nan_tokens_parse() {
        let v =
            parse_doc(r#"{"a": NaN, "b": [1.5, -Infinity], "c": "NaN in a string", "d": "x\"NaN"}"#).unwrap();
        assert!(json_f64(&v["a"]).unwrap().is_nan());
        assert_eq!(json_f64(&v["b"][1]), Some(f64::NEG_INFINITY));
        assert_eq!(v["c"], "NaN in a string");
        assert_eq!(v["d"], "x\"NaN");
        assert!(matches!(attr_from_json(&v["a"]), Some(AttrValue::Floats(f)) if f[0].is_nan()));
        assert_eq!(
            attr_from_json(&v["c"]),
            Some(AttrValue::Str("NaN in a string".into()))
        );
    }

    #[test]
    fn dtypes_and_codecs() {
        assert_eq!(parse_dtype("<f4"), Some((DType::F32, Endian::Little)));
        assert_eq!(parse_dtype(">i2"), Some((DType::I16, Endian::Big)));
        assert_eq!(parse_dtype("|S1"), Some((DType::Char, Endian::Little)));
        assert_eq!(
            parse_dtype("<M8[ns]"),
            Some((DType::DateTime64(crate::dtype::TimeUnit::Ns), Endian::Little))
        );
        assert_eq!(
            parse_dtype(">m8[D]"),
            Some((DType::TimeDelta64(crate::dtype::TimeUnit::D), Endian::Big))
        );
        assert_eq!(parse_dtype("|b1"), Some((DType::Bool, Endian::Little)));
        assert_eq!(parse_dtype("|S12"), Some((DType::Bytes(12), Endian::Little)));
        assert_eq!(parse_dtype("<U3"), Some((DType::Unicode(3), Endian::Little)));
        assert_eq!(parse_dtype(">U3"), None);
        assert_eq!(parse_dtype("<M8[xs]"), None);
        assert_eq!(parse_dtype("|S0"), None);
        let p = crate::codec::numcodecs::pipeline(
            &serde_json::json!({"id": "zlib", "level": 4}),
            &serde_json::json!([{"id": "shuffle", "elementsize": 8}]),
        )
        .unwrap();
        assert_eq!(
            p,
            vec![crate::codec::Filter::Shuffle(8), crate::codec::Filter::Deflate(4)]
        );
        let p = crate::codec::numcodecs::pipeline(&serde_json::json!({"id": "lz4"}), &Value::Null).unwrap();
        assert_eq!(p, vec![crate::codec::Filter::Unsupported("lz4".into())]);
        assert!(crate::codec::numcodecs::pipeline(&serde_json::json!({"level": 1}), &Value::Null).is_err());
    }

    #[test]
    fn gen_references_expand() {
        let templates: serde_json::Map<String, Value> =
            serde_json::from_value(serde_json::json!({"u": "data"})).unwrap();
        let mut refs = serde_json::Map::new();
        let g = serde_json::json!({
            "key": "x/{{i}}.{{j}}", "url": "{{u}}_{{i}}.bin",
            "offset": "{{ (i * 2 + j) * 8 }}", "length": "8",
            "dimensions": {"i": {"stop": 3}, "j": [0, 1]}
        });
        expand_gen(&g, &templates, &mut refs).unwrap();
        assert_eq!(refs.len(), 6);
        assert_eq!(refs["x/2.1"], serde_json::json!(["data_2.bin", 40, 8]));
        assert_eq!(refs["x/0.0"], serde_json::json!(["data_0.bin", 0, 8]));
        let whole = serde_json::json!({"key": "k{{i}}", "url": "f{{i // 2}}", "dimensions": {"i": {"start": 4, "stop": 0, "step": -2}}});
        expand_gen(&whole, &templates, &mut refs).unwrap();
        assert_eq!(refs["k2"], serde_json::json!(["f1"]));
        assert!(!refs.contains_key("k0"));
        for (bad, why) in [
            (
                serde_json::json!({"key": "k", "url": "u", "offset": "1", "dimensions": {}}),
                "together",
            ),
            (
                serde_json::json!({"key": "k{{nope}}", "url": "u", "dimensions": {"i": [1]}}),
                "unknown name 'nope'",
            ),
            (
                serde_json::json!({"key": "k{{i", "url": "u", "dimensions": {"i": [1]}}),
                "unterminated",
            ),
            (
                serde_json::json!({"key": "k{{i/0}}", "url": "u", "dimensions": {"i": [1]}}),
                "division by zero",
            ),
            (
                serde_json::json!({"key": "k", "url": "u", "dimensions": {"i": {"stop": 100000}, "j": {"stop": 100000}}}),
                "more than",
            ),
            (
                serde_json::json!({"key": "k", "url": "u", "offset": "{{u}}", "length": "1", "dimensions": {"i": [1]}}),
                "not a non-negative integer",
            ),
            // i64::MIN divided or negated out of range: an error, not a panic (which the
            // unchecked `div_euclid`/`rem_euclid` raise even in release builds)
            (
                serde_json::json!({"key": "k{{ (0 - 9223372036854775807 - 1) // -1 }}", "url": "u", "dimensions": {"i": [1]}}),
                "overflow",
            ),
            (
                serde_json::json!({"key": "k{{ (0 - 9223372036854775807 - 1) % -1 }}", "url": "u", "dimensions": {"i": [1]}}),
                "overflow",
            ),
            (
                serde_json::json!({"key": "k{{ -(0 - 9223372036854775807 - 1) }}", "url": "u", "dimensions": {"i": [1]}}),
                "overflow",
            ),
        ] {
            let e = expand_gen(&bad, &templates, &mut serde_json::Map::new()).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn object_stored_reference_sets_stay_in_their_prefix() {
        let r = Roots::remote("s3://bucket/refs", &[]);
        assert_eq!(r.resolve("a.nc").unwrap(), PathBuf::from("s3://bucket/refs/a.nc"));
        assert_eq!(
            r.resolve("./sub/a.nc").unwrap(),
            PathBuf::from("s3://bucket/refs/sub/a.nc")
        );
        assert_eq!(
            r.resolve("s3://bucket/refs/b.nc").unwrap(),
            PathBuf::from("s3://bucket/refs/b.nc")
        );
        // no way out: parent segments, sibling prefixes, local files
        assert!(r.resolve("../secret.nc").unwrap_err().contains("'..'"));
        assert!(
            r.resolve("s3://bucket/refs2/a.nc")
                .unwrap_err()
                .contains("outside")
        );
        assert!(
            r.resolve("/etc/passwd")
                .unwrap_err()
                .contains("outside the allowed roots")
        );
        assert!(r.resolve("file:///etc/passwd").is_err());
        // unless a local root is listed
        let dir = tempfile::tempdir().unwrap();
        let local = Roots::remote("s3://bucket/refs", &[dir.path().display().to_string()]);
        assert!(
            local
                .resolve(&dir.path().join("x.nc").display().to_string())
                .is_ok()
        );
    }

    #[test]
    fn roots_confine_references() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("refs");
        std::fs::create_dir(&base).unwrap();
        std::fs::write(base.join("a.nc"), b"x").unwrap();
        let roots = Roots::new(&base, &[]);
        assert!(roots.resolve("a.nc").is_ok());
        assert!(roots.resolve(&format!("file://{}/a.nc", base.display())).is_ok());
        let e = roots.resolve("../secret.nc").unwrap_err();
        assert!(e.contains("outside the allowed roots"), "{e}");
        assert!(roots.resolve("/etc/passwd").is_err());
        assert!(
            roots
                .resolve("s3://bucket/x.nc")
                .unwrap_err()
                .contains("referenceRoots")
        );
        // object prefixes: allowed only under a listed prefix, on a '/' boundary, without '..'
        let urls = Roots::new(&base, &["s3://bucket/data".to_string()]);
        assert_eq!(
            urls.resolve("s3://bucket/data/a.nc").unwrap(),
            PathBuf::from("s3://bucket/data/a.nc")
        );
        assert!(
            urls.resolve("s3://bucket/data2/a.nc")
                .unwrap_err()
                .contains("outside")
        );
        assert!(
            urls.resolve("s3://other/data/a.nc")
                .unwrap_err()
                .contains("outside")
        );
        assert!(
            urls.resolve("s3://bucket/data/../secret/a.nc")
                .unwrap_err()
                .contains("..")
        );
        assert!(urls.resolve("gs://bucket/data/a.nc").is_err());
        assert!(urls.resolve("a.nc").is_ok(), "local references keep working");
        let wider = Roots::new(&base, &[dir.path().display().to_string()]);
        assert!(wider.resolve("../secret.nc").is_ok());
    }

    #[test]
    fn json_references_build_variables() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("data.bin"), [0u8; 64]).unwrap();
        let refs = serde_json::json!({
            "version": 1,
            "templates": {"u": "data.bin"},
            "refs": {
                ".zgroup": "{\"zarr_format\": 2}",
                ".zattrs": "{\"title\": \"t\", \"missing\": NaN}",
                "x/.zarray": "{\"zarr_format\": 2, \"shape\": [5], \"chunks\": [2], \"dtype\": \">f4\", \"compressor\": null, \"filters\": null, \"fill_value\": \"NaN\", \"order\": \"C\"}",
                "x/.zattrs": "{\"_ARRAY_DIMENSIONS\": [\"t\"], \"units\": \"K\"}",
                "x/0": ["{{u}}", 0, 8],
                "x/2": "base64:AAAAAAAAAAA=",
                "g/y/.zarray": "{\"zarr_format\": 2, \"shape\": [], \"chunks\": [], \"dtype\": \"<c8\", \"compressor\": null, \"filters\": null, \"fill_value\": null, \"order\": \"C\"}"
            }
        });
        let p = dir.path().join("r.json");
        std::fs::write(&p, refs.to_string()).unwrap();
        let idx = open_refs(&p, &[], None).unwrap();
        assert!(matches!(idx.root.attrs.get("missing"), Some(AttrValue::Floats(f)) if f[0].is_nan()));
        let x = &idx.root.vars[0];
        assert_eq!(
            (x.dtype, x.data.endian, x.dims.clone()),
            (DType::F32, Endian::Big, vec!["t".to_string()])
        );
        assert!(matches!(x.attrs.get("_FillValue"), Some(AttrValue::Floats(f)) if f[0].is_nan()));
        let Layout::Listed { table, .. } = &x.data.layout else {
            panic!("not refs")
        };
        assert!(matches!(
            table.chunks[0],
            ChunkRef::Range {
                offset: 0,
                size: 8,
                ..
            }
        ));
        assert_eq!(table.chunks[1], ChunkRef::Missing);
        assert!(matches!(table.chunks[2], ChunkRef::Inline(_)));
        assert!(table.files[0].ends_with("data.bin"));
        assert_eq!(idx.root.groups[0].skipped.len(), 1);
        // rewriting a referenced file changes the source's identity (and so the ETags)
        std::fs::write(dir.path().join("data.bin"), [1u8; 80]).unwrap();
        let again = open_refs(&p, &[], None).unwrap();
        assert_ne!(again.file, idx.file);
        // a reference leaving the allowed roots names the key
        let mut bad = refs.clone();
        bad["refs"]["x/1"] = serde_json::json!(["/etc/passwd", 0, 8]);
        std::fs::write(&p, bad.to_string()).unwrap();
        let e = open_refs(&p, &[], None).unwrap_err().to_string();
        assert!(
            e.contains("x/1") && e.contains("/etc/passwd") && e.contains("r.json"),
            "{e}"
        );
        // malformed JSON names the file and the reason
        std::fs::write(&p, "{\"version\": 1, \"refs\": {").unwrap();
        let e = open_refs(&p, &[], None).unwrap_err().to_string();
        assert!(e.contains("r.json") && e.contains("not valid JSON"), "{e}");
    }

    #[test]
    fn huge_chunk_grids_are_skipped_not_allocated() {
        // A 2^40-chunk grid declared in a few bytes: the dense chunk table would abort the
        // process on allocation failure (or loop for hours); the array is left out, named.
        let dir = tempfile::tempdir().unwrap();
        let za = |shape: &str| {
            format!(
                "{{\"zarr_format\": 2, \"shape\": {shape}, \"chunks\": [1, 1], \"dtype\": \"<f4\", \"compressor\": null, \"filters\": null, \"fill_value\": null, \"order\": \"C\"}}"
            )
        };
        let refs = serde_json::json!({
            ".zgroup": "{\"zarr_format\": 2}",
            "big/.zarray": za("[1048576, 1048576]"),
            "over/.zarray": za("[18446744073709551615, 18446744073709551615]"),
            "ok/.zarray": za("[64, 64]"),
        });
        let p = dir.path().join("r.json");
        std::fs::write(&p, refs.to_string()).unwrap();
        let idx = open_refs(&p, &[], None).unwrap();
        let names: Vec<&str> = idx.root.vars.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["ok"]);
        assert_eq!(idx.root.skipped.len(), 2);
        for (name, why) in &idx.root.skipped {
            assert!(why.contains("more than 16777216 chunks"), "{name}: {why}");
        }
        assert_eq!(super::super::grid_chunks(&[4096, 4096]), Ok(1 << 24));
        assert_eq!(super::super::grid_chunks(&[u64::MAX, u64::MAX, 0]), Ok(0));
        assert!(super::super::grid_chunks(&[4097, 4096]).is_err());
    }
}
