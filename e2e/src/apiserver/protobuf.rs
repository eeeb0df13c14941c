//! Decoding of the Kubernetes protobuf envelope for the request bodies kubectl's typed
//! generators send (`kubectl create namespace|configmap|secret`). Only these kinds and the
//! ObjectMeta fields such requests carry are understood; anything else answers 415 like a
//! server without that serializer, naming what is unsupported.

use base64::Engine;
use serde_json::{Map, Value, json};

use super::status::{ApiError, ApiResult};

const MAGIC: &[u8] = b"k8s\0";

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

/// Iterate over (field number, value) of one protobuf message.
fn fields(mut buf: &[u8]) -> ApiResult<Vec<(u64, Field<'_>)>> {
    let bad = || ApiError::bad_request("malformed protobuf body");
    fn varint(buf: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = buf.split_first()?;
            *buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf).ok_or_else(bad)?;
        let (num, wire) = (key >> 3, key & 7);
        match wire {
            0 => out.push((num, Field::Varint(varint(&mut buf).ok_or_else(bad)?))),
            2 => {
                let len = usize::try_from(varint(&mut buf).ok_or_else(bad)?).map_err(|_| bad())?;
                if len > buf.len() {
                    return Err(bad());
                }
                let (v, rest) = buf.split_at(len);
                out.push((num, Field::Bytes(v)));
                buf = rest;
            }
            1 => buf = buf.get(8..).ok_or_else(bad)?,
            5 => buf = buf.get(4..).ok_or_else(bad)?,
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

fn string(b: &[u8]) -> ApiResult<String> {
    String::from_utf8(b.to_vec()).map_err(|_| ApiError::bad_request("protobuf string is not UTF-8"))
}

/// A `map<string, string|bytes>` entry.
fn map_entry(b: &[u8], bytes_value: bool) -> ApiResult<(String, Value)> {
    let mut k = String::new();
    let mut v = Value::String(String::new());
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => k = string(x)?,
            (2, Field::Bytes(x)) if bytes_value => {
                v = json!(base64::engine::general_purpose::STANDARD.encode(x))
            }
            (2, Field::Bytes(x)) => v = json!(string(x)?),
            _ => {}
        }
    }
    Ok((k, v))
}

fn object_meta(b: &[u8]) -> ApiResult<Value> {
    let mut m = Map::new();
    let mut labels = Map::new();
    let mut annotations = Map::new();
    let mut finalizers = Vec::new();
    let mut owners = Vec::new();
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => {
                let v = string(x)?;
                if !v.is_empty() {
                    m.insert("name".into(), json!(v));
                }
            }
            (2, Field::Bytes(x)) => {
                let v = string(x)?;
                if !v.is_empty() {
                    m.insert("generateName".into(), json!(v));
                }
            }
            (3, Field::Bytes(x)) => {
                let v = string(x)?;
                if !v.is_empty() {
                    m.insert("namespace".into(), json!(v));
                }
            }
            (6, Field::Bytes(x)) => {
                let v = string(x)?;
                if !v.is_empty() {
                    m.insert("resourceVersion".into(), json!(v));
                }
            }
            (11, Field::Bytes(x)) => {
                let (k, v) = map_entry(x, false)?;
                labels.insert(k, v);
            }
            (12, Field::Bytes(x)) => {
                let (k, v) = map_entry(x, false)?;
                annotations.insert(k, v);
            }
            (13, Field::Bytes(x)) => {
                let mut r = Map::new();
                for (rn, rf) in fields(x)? {
                    match (rn, rf) {
                        (1, Field::Bytes(y)) => {
                            r.insert("kind".into(), json!(string(y)?));
                        }
                        (3, Field::Bytes(y)) => {
                            r.insert("name".into(), json!(string(y)?));
                        }
                        (4, Field::Bytes(y)) => {
                            r.insert("uid".into(), json!(string(y)?));
                        }
                        (5, Field::Bytes(y)) => {
                            r.insert("apiVersion".into(), json!(string(y)?));
                        }
                        (6, Field::Varint(y)) => {
                            r.insert("controller".into(), json!(y != 0));
                        }
                        (7, Field::Varint(y)) => {
                            r.insert("blockOwnerDeletion".into(), json!(y != 0));
                        }
                        _ => {}
                    }
                }
                owners.push(Value::Object(r));
            }
            (14, Field::Bytes(x)) => finalizers.push(json!(string(x)?)),
            _ => {}
        }
    }
    if !labels.is_empty() {
        m.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        m.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        m.insert("finalizers".into(), Value::Array(finalizers));
    }
    if !owners.is_empty() {
        m.insert("ownerReferences".into(), Value::Array(owners));
    }
    Ok(Value::Object(m))
}

/// Decode a protobuf-encoded object into its JSON form.
pub fn decode(body: &[u8]) -> ApiResult<Value> {
    let inner = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| ApiError::bad_request("protobuf body without the k8s envelope"))?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (n, f) in fields(inner)? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                for (tn, tf) in fields(tm)? {
                    match (tn, tf) {
                        (1, Field::Bytes(x)) => api_version = string(x)?,
                        (2, Field::Bytes(x)) => kind = string(x)?,
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(r)) => raw = r,
            _ => {}
        }
    }
    let mut obj = json!({"apiVersion": api_version, "kind": kind});
    let mut maps: [(Map<String, Value>, &str); 3] = [
        (Map::new(), "data"),
        (Map::new(), "binaryData"),
        (Map::new(), "stringData"),
    ];
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => {
            for (n, f) in fields(raw)? {
                match (n, f) {
                    (1, Field::Bytes(x)) => obj["metadata"] = object_meta(x)?,
                    (2, Field::Bytes(x)) => {
                        let fin: Vec<Value> = fields(x)?
                            .into_iter()
                            .filter_map(|(n, f)| match (n, f) {
                                (1, Field::Bytes(s)) => string(s).ok().map(Value::String),
                                _ => None,
                            })
                            .collect();
                        obj["spec"] = json!({"finalizers": fin});
                    }
                    _ => {}
                }
            }
        }
        ("v1", "ConfigMap") => {
            for (n, f) in fields(raw)? {
                match (n, f) {
                    (1, Field::Bytes(x)) => obj["metadata"] = object_meta(x)?,
                    (2, Field::Bytes(x)) => {
                        let (k, v) = map_entry(x, false)?;
                        maps[0].0.insert(k, v);
                    }
                    (3, Field::Bytes(x)) => {
                        let (k, v) = map_entry(x, true)?;
                        maps[1].0.insert(k, v);
                    }
                    (4, Field::Varint(v)) => obj["immutable"] = json!(v != 0),
                    _ => {}
                }
            }
        }
        ("v1", "Secret") => {
            for (n, f) in fields(raw)? {
                match (n, f) {
                    (1, Field::Bytes(x)) => obj["metadata"] = object_meta(x)?,
                    (2, Field::Bytes(x)) => {
                        let (k, v) = map_entry(x, true)?;
                        maps[0].0.insert(k, v);
                    }
                    (3, Field::Bytes(x)) if !x.is_empty() => obj["type"] = json!(string(x)?),
                    (4, Field::Bytes(x)) => {
                        let (k, v) = map_entry(x, false)?;
                        maps[2].0.insert(k, v);
                    }
                    (5, Field::Varint(v)) => obj["immutable"] = json!(v != 0),
                    _ => {}
                }
            }
        }
        _ => {
            return Err(ApiError::unsupported_media(format!(
                "the emulator decodes protobuf request bodies only for v1 Namespace, ConfigMap and Secret, not {api_version} {kind}; send application/json"
            )));
        }
    }
    for (m, field) in maps {
        if !m.is_empty() {
            obj[field] = Value::Object(m);
        }
    }
    Ok(obj)
}
