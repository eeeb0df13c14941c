//! Pipelines as Zarr declares them: numcodecs `compressor`/`filters` (Zarr v2, kerchunk)
//! and Zarr v3 `codecs`, in both directions.
//!
//! The one place that maps declared codecs to [`Filter`] steps and [`Encoding`]s to declared
//! codecs; each codec's own name and configuration live in its module (`zlib`, `shuffle`,
//! `zstd`, `blosc`, `gzip`, `vlen_utf8`).

use serde_json::{Value, json};

use super::{Encoding, Filter, blosc, gzip, shuffle, vlen_utf8, zlib, zstd};

/// numcodecs `filters` + `compressor` → our pipeline (encode order: filters first, then
/// the compressor). Codecs we cannot decode become [`Filter::Unsupported`] (served as
/// stored on `/kerchunk`, 501 on `/zarr`).
pub fn pipeline(compressor: &Value, filters: &Value) -> Result<Vec<Filter>, String> {
    let mut list: Vec<&Value> = match filters {
        Value::Null => Vec::new(),
        Value::Array(a) => a.iter().collect(),
        _ => return Err("'filters' must be a list or null".into()),
    };
    match compressor {
        Value::Null => {}
        Value::Object(_) => list.push(compressor),
        _ => return Err("'compressor' must be an object or null".into()),
    }
    list.into_iter()
        .map(|c| {
            let id = c
                .get("id")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("codec without an 'id': {c}"))?;
            Ok(match id {
                zlib::ID => Filter::Deflate(zlib::level_of(c)),
                gzip::ID => Filter::Gzip,
                blosc::ID => Filter::Blosc,
                zstd::ID => Filter::Zstd,
                shuffle::ID => Filter::Shuffle(shuffle::elementsize_of(c)),
                other => Filter::Unsupported(other.to_string()),
            })
        })
        .collect()
}

/// A stored HDF5 pipeline as numcodecs: `(compressor, filters, how to re-encode a chunk)`
/// (`None` = stored uncompressed), if numcodecs can express it.
pub fn declare(filters: &[Filter]) -> Option<(Value, Value, Option<Encoding>)> {
    match filters {
        [] => Some((Value::Null, Value::Null, None)),
        [Filter::Deflate(l)] => Some((
            zlib::numcodecs(*l),
            Value::Null,
            Some(Encoding::ShuffleZlib {
                shuffle: None,
                level: *l,
            }),
        )),
        [Filter::Shuffle(e), Filter::Deflate(l)] => Some((
            zlib::numcodecs(*l),
            json!([shuffle::numcodecs(*e)]),
            Some(Encoding::ShuffleZlib {
                shuffle: Some(*e),
                level: *l,
            }),
        )),
        _ => None,
    }
}

/// The stored pipeline a Zarr client can be served byte-for-byte with (the source's
/// zlib stream, optionally shuffled).
pub fn passthrough_encoding(filters: &[Filter]) -> Option<Encoding> {
    match filters {
        [Filter::Shuffle(_), Filter::Deflate(_)] | [Filter::Deflate(_)] => declare(filters).and_then(|d| d.2),
        _ => None,
    }
}

/// How chunks written with `enc` are declared to a Zarr v2 client: `(compressor, filters)`.
pub fn v2(enc: &Encoding) -> (Value, Value) {
    match enc {
        // v2 keeps the plain numcodecs spelling of the same pipeline
        Encoding::BloscZlib { shuffle, level, .. } => v2(&Encoding::ShuffleZlib {
            shuffle: *shuffle,
            level: *level,
        }),
        Encoding::Zstd(level) => (zstd::numcodecs(*level), Value::Null),
        Encoding::BloscZstd { level, typesize } => (
            blosc::numcodecs("zstd", i64::from(*level), *typesize > 1),
            Value::Null,
        ),
        Encoding::ShuffleZlib { shuffle: s, level } => (
            zlib::numcodecs(*level),
            match s {
                Some(e) => json!([shuffle::numcodecs(*e)]),
                None => Value::Null,
            },
        ),
    }
}

/// The Zarr v2 declaration of variable-length strings: `vlen-utf8` then zstd.
pub fn v2_strings() -> (Value, Value) {
    (zstd::numcodecs(super::ZSTD_LEVEL), json!([{"id": vlen_utf8::ID}]))
}

/// The Zarr v3 bytes-to-bytes codec of chunks written with `enc`.
pub fn v3(enc: &Encoding) -> Value {
    match enc {
        Encoding::BloscZlib {
            shuffle,
            level,
            typesize,
        } => blosc::v3("zlib", i64::from(*level), shuffle.is_some(), *typesize),
        Encoding::BloscZstd { level, typesize } => {
            blosc::v3("zstd", i64::from(*level), *typesize > 1, *typesize)
        }
        Encoding::Zstd(level) => zstd::v3(*level),
        // Zarr v3 has no standard zlib or shuffle codec; never chosen for v3 (see
        // `zarr::encoding`), declared as zstd's default rather than something invalid.
        Encoding::ShuffleZlib { .. } => zstd::v3(super::ZSTD_LEVEL),
    }
}

/// Zarr v3 codecs → numcodecs equivalents (encode order), or `None` if one has none. The
/// `bytes` codec becomes the dtype's byte order, returned separately (`true` = big).
pub fn from_v3(codecs: &[Value]) -> Option<(Vec<Value>, bool)> {
    let mut out = Vec::new();
    let mut big = false;
    for c in codecs {
        let name = v3_name(c);
        let cfg = c.get("configuration").cloned().unwrap_or(json!({}));
        match name {
            "bytes" => big = cfg.get("endian").and_then(Value::as_str) == Some("big"),
            gzip::ID | zstd::ID => {
                let mut v = json!({"id": name, "level": cfg.get("level").cloned().unwrap_or(Value::from(1))});
                if name == zstd::ID && cfg.get("checksum").and_then(Value::as_bool) == Some(true) {
                    v["checksum"] = Value::Bool(true);
                }
                out.push(v);
            }
            blosc::ID => out.push(blosc::v3_to_numcodecs(&cfg)),
            // zarr-python's crc32c appends the checksum, numcodecs' prepends by default
            "crc32c" => out.push(json!({"id": "crc32c", "location": "end"})),
            _ => return None,
        }
    }
    Some((out, big))
}

/// Whether our own pipeline decodes the Zarr v3 codec `c` (see [`pipeline`]).
pub fn decodes_v3(c: &Value) -> bool {
    matches!(v3_name(c), "bytes" | gzip::ID | zstd::ID | blosc::ID)
}

/// A v3 codec's name (an object with `name`, or the bare string short form).
fn v3_name(c: &Value) -> &str {
    c.get("name")
        .and_then(Value::as_str)
        .or(c.as_str())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is declared reads back as the same pipeline.
    #[test]
    fn declared_pipelines_read_back() {
        for filters in [
            vec![],
            vec![Filter::Deflate(4)],
            vec![Filter::Shuffle(8), Filter::Deflate(1)],
        ] {
            let (c, f, _) = declare(&filters).expect("declarable");
            assert_eq!(pipeline(&c, &f).expect("parse"), filters);
        }
        assert!(declare(&[Filter::Fletcher32, Filter::Deflate(1)]).is_none());
        let (c, f) = v2(&Encoding::BloscZlib {
            shuffle: Some(4),
            level: 2,
            typesize: 4,
        });
        assert_eq!(
            pipeline(&c, &f).expect("parse"),
            vec![Filter::Shuffle(4), Filter::Deflate(2)]
        );
        let (c, _) = v2(&Encoding::BloscZstd {
            level: 1,
            typesize: 4,
        });
        assert_eq!(c["cname"], "zstd");
        assert_eq!(c["shuffle"], 1);
        assert_eq!(v3(&Encoding::Zstd(3))["configuration"]["level"], 3);
    }

    #[test]
    fn v3_codecs_map_to_numcodecs() {
        let (list, big) = from_v3(&[
            json!({"name": "bytes", "configuration": {"endian": "big"}}),
            json!({"name": "blosc", "configuration": {"cname": "zstd", "clevel": 3, "shuffle": "shuffle", "typesize": 4}}),
        ])
        .expect("expressible");
        assert!(big);
        assert_eq!(list[0]["id"], "blosc");
        assert_eq!(list[0]["shuffle"], 1);
        assert!(from_v3(&[json!({"name": "transpose"})]).is_none());
        assert!(decodes_v3(&json!("gzip")));
        assert!(!decodes_v3(&json!({"name": "crc32c"})));
    }
}
