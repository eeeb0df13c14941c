//! kerchunk/fsspec reference sets (JSON v0/v1, Parquet) as sources.
//!
//! A reference set describes a Zarr v2 store whose metadata documents are held in the set
//! and whose chunks are byte ranges of other files, whole files, or inline bytes. It is
//! parsed into the same per-variable model as a netCDF file (`Layout::Listed`), so `/zarr`,
//! `/kerchunk`, aggregation and summaries work unchanged. The index is built by the shared
//! reference-set builder ([`super::refset`]).
//!
//! References may only point into allowed roots (the directory of the reference file and
//! configured ones): a reference file is data, and must not be able to expose arbitrary
//! files of the server.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use serde_json::Value;

use super::refset::{
    FillRule, RawRef, RefSet, Roots, SetChunks, attach_remote, build_index, malformed, sanitize_json,
};
use super::{SourceError, SourceFile, SourceIndex};

fn parse_doc(text: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str(&sanitize_json(text))
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
    if !roots.allowed_urls.is_empty() || storage.is_some_and(|s| s.tape.is_some()) {
        attach_remote(&mut idx, storage)?;
    }
    Ok(idx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attrs::AttrValue;
    use crate::dtype::{DType, Endian};
    use crate::source::refset::{attr_from_json, json_f64, parse_dtype};
    use crate::source::{ChunkRef, Layout};

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
