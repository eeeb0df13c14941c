//! kerchunk's Parquet reference format, as fsspec's `LazyReferenceMapper` reads and writes it.
//!
//! A reference set is a directory:
//! - `.zmetadata`: JSON `{"metadata": {key: document, ...}, "record_size": N}` holding every
//!   metadata document (`.zgroup`, `.zattrs`, `var/.zarray`, ...), parsed (not as strings);
//! - `{var}/refs.{r}.parq` for every array `var`: the references of chunks `r*N .. (r+1)*N`
//!   (chunk numbers are row-major over the chunk grid), one row per chunk, columns `path`
//!   (UTF-8, null for inline or missing chunks), `offset`, `size` (int64; both 0 with a path
//!   means "the whole file") and `raw` (inline bytes, else null).
//!
//! JSON references grow with the chunk count and must be parsed whole; Parquet references
//! stay small and are loaded per record, which is why kerchunk recommends them for large
//! aggregations.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::record::Field;
use parquet::schema::parser::parse_message_type;

use super::{RefValue, Refs};
use crate::attrs::write_json_str;

/// fsspec's default number of references per Parquet file.
pub const DEFAULT_RECORD_SIZE: usize = 10_000;

const SCHEMA: &str = "message schema {
  OPTIONAL BYTE_ARRAY path (STRING);
  REQUIRED INT64 offset;
  REQUIRED INT64 size;
  OPTIONAL BYTE_ARRAY raw;
}";

/// The pandas schema fastparquet and pyarrow write: without it fastparquet reads the int64
/// columns as nullable integers, which fsspec then hands to file systems as floats.
const PANDAS_METADATA: &str = r#"{"column_indexes": [{"field_name": null, "metadata": null, "name": null, "numpy_type": "object", "pandas_type": "mixed-integer"}], "columns": [{"field_name": "path", "metadata": null, "name": "path", "numpy_type": "object", "pandas_type": "unicode"}, {"field_name": "offset", "metadata": null, "name": "offset", "numpy_type": "int64", "pandas_type": "int64"}, {"field_name": "size", "metadata": null, "name": "size", "numpy_type": "int64", "pandas_type": "int64"}, {"field_name": "raw", "metadata": null, "name": "raw", "numpy_type": "object", "pandas_type": "bytes"}], "creator": {"library": "cloudify", "version": "VERSION"}, "index_columns": [], "pandas_version": "2.2.0", "partition_columns": []}"#;

/// Why Parquet references cannot be written or read. Messages name the file.
#[derive(Debug, thiserror::Error)]
pub enum ParquetRefsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parquet { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Malformed { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ParquetRefsError + '_ {
    move |source| ParquetRefsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn pq(path: &Path) -> impl Fn(parquet::errors::ParquetError) -> ParquetRefsError + '_ {
    move |e| ParquetRefsError::Parquet {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Number of chunks along each axis of a `.zarray` document, `[1]` for 0-d arrays (as fsspec
/// computes it).
pub fn chunk_grid(zarray: &serde_json::Value) -> Option<Vec<u64>> {
    let shape = zarray.get("shape")?.as_array()?;
    let chunks = zarray.get("chunks")?.as_array()?;
    if shape.len() != chunks.len() {
        return None;
    }
    let mut grid = Vec::with_capacity(shape.len());
    for (s, c) in shape.iter().zip(chunks) {
        let (s, c) = (s.as_u64()?, c.as_u64()?);
        if c == 0 {
            return None;
        }
        grid.push(s.div_ceil(c));
    }
    if grid.is_empty() {
        grid.push(1);
    }
    Some(grid)
}

/// The chunk key of chunk number `n` (v2 spelling, `.`-separated).
pub fn chunk_key_of(field: &str, mut n: u64, grid: &[u64]) -> String {
    let mut idx = vec![0u64; grid.len()];
    for d in (0..grid.len()).rev() {
        let g = grid[d].max(1);
        idx[d] = n % g;
        n /= g;
    }
    let parts: Vec<String> = idx.iter().map(u64::to_string).collect();
    format!("{field}/{}", parts.join("."))
}

/// One row of a record file.
struct Row {
    path: Option<String>,
    offset: i64,
    size: i64,
    raw: Option<Vec<u8>>,
}

fn write_record(file: &Path, rows: &[Row]) -> Result<(), ParquetRefsError> {
    let schema = Arc::new(parse_message_type(SCHEMA).map_err(pq(file))?);
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::ZSTD(Default::default()))
            .set_statistics_enabled(parquet::file::properties::EnabledStatistics::None)
            .set_key_value_metadata(Some(vec![parquet::file::metadata::KeyValue::new(
                "pandas".to_string(),
                PANDAS_METADATA.replace("VERSION", env!("CARGO_PKG_VERSION")),
            )]))
            .build(),
    );
    let out = File::create(file).map_err(io(file))?;
    let mut w = SerializedFileWriter::new(out, schema, props).map_err(pq(file))?;
    let mut rg = w.next_row_group().map_err(pq(file))?;
    let mut col = 0;
    while let Some(mut c) = rg.next_column().map_err(pq(file))? {
        match col {
            0 | 3 => {
                let (mut vals, mut defs) = (Vec::new(), Vec::with_capacity(rows.len()));
                for r in rows {
                    let v: Option<ByteArray> = if col == 0 {
                        r.path.as_ref().map(|p| ByteArray::from(p.as_str()))
                    } else {
                        r.raw.clone().map(ByteArray::from)
                    };
                    defs.push(i16::from(v.is_some()));
                    vals.extend(v);
                }
                c.typed::<ByteArrayType>()
                    .write_batch(&vals, Some(&defs), None)
                    .map_err(pq(file))?;
            }
            _ => {
                let vals: Vec<i64> = rows
                    .iter()
                    .map(|r| if col == 1 { r.offset } else { r.size })
                    .collect();
                c.typed::<Int64Type>()
                    .write_batch(&vals, None, None)
                    .map_err(pq(file))?;
            }
        }
        c.close().map_err(pq(file))?;
        col += 1;
    }
    rg.close().map_err(pq(file))?;
    w.close().map_err(pq(file))?;
    Ok(())
}

impl Refs {
    /// The `.zmetadata` document of the Parquet layout.
    fn parquet_zmetadata(&self, record_size: usize) -> String {
        let mut s = String::from("{\"metadata\": {");
        let mut first = true;
        for (k, v) in &self.entries {
            if let RefValue::Json(doc) = v {
                if !first {
                    s.push_str(", ");
                }
                first = false;
                write_json_str(&mut s, k);
                let _ = write!(s, ": {doc}");
            }
        }
        let _ = write!(s, "}}, \"record_size\": {record_size}}}");
        s
    }

    /// Writes the references as a kerchunk Parquet directory at `dir` (see the module docs).
    /// The directory is built next to `dir` and renamed into place, so readers never see a
    /// half-written set; an existing reference directory at `dir` is replaced, anything else
    /// there is an error.
    pub fn write_parquet(&self, dir: &Path, record_size: usize) -> Result<(), ParquetRefsError> {
        let record_size = record_size.max(1);
        if dir.exists() && !dir.join(".zmetadata").is_file() {
            return Err(ParquetRefsError::Malformed {
                path: dir.to_path_buf(),
                message: "exists and is not a Parquet reference directory; not overwriting it".into(),
            });
        }
        let name = dir
            .file_name()
            .map_or_else(|| "refs".into(), |n| n.to_string_lossy().into_owned());
        let tmp = dir.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let result = self.write_parquet_into(&tmp, record_size);
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(io(dir))?;
        }
        std::fs::rename(&tmp, dir).map_err(io(dir))
    }

    fn write_parquet_into(&self, root: &Path, record_size: usize) -> Result<(), ParquetRefsError> {
        let zmeta = root.join(".zmetadata");
        std::fs::write(&zmeta, self.parquet_zmetadata(record_size)).map_err(io(&zmeta))?;
        for (k, v) in &self.entries {
            let (Some(field), RefValue::Json(doc)) = (k.strip_suffix("/.zarray"), v) else {
                continue;
            };
            let za: serde_json::Value =
                serde_json::from_str(doc).map_err(|e| ParquetRefsError::Malformed {
                    path: zmeta.clone(),
                    message: format!("'{k}': {e}"),
                })?;
            let grid = chunk_grid(&za).ok_or_else(|| ParquetRefsError::Malformed {
                path: zmeta.clone(),
                message: format!("'{k}': shape/chunks missing or inconsistent"),
            })?;
            let n: u64 = grid.iter().product();
            let vdir = root.join(field);
            std::fs::create_dir_all(&vdir).map_err(io(&vdir))?;
            let nrec = n.div_ceil(record_size as u64).max(1);
            for r in 0..nrec {
                let lo = r * record_size as u64;
                let hi = (lo + record_size as u64).min(n);
                let rows: Vec<Row> = (lo..hi)
                    .map(|i| {
                        let key = chunk_key_of(field, i, &grid);
                        // 0-d arrays: the v2 key is `var/0`, which chunk_key_of gives too.
                        match self.entries.get(&key) {
                            Some(RefValue::Range { file, offset, size }) => Row {
                                path: self.url_of(*file),
                                offset: *offset as i64,
                                size: *size as i64,
                                raw: None,
                            },
                            Some(RefValue::File { file }) => Row {
                                path: self.url_of(*file),
                                offset: 0,
                                size: 0,
                                raw: None,
                            },
                            Some(RefValue::Inline(b)) => Row {
                                path: None,
                                offset: 0,
                                size: 0,
                                raw: Some(b.clone()),
                            },
                            Some(RefValue::Json(t)) => Row {
                                path: None,
                                offset: 0,
                                size: 0,
                                raw: Some(t.as_bytes().to_vec()),
                            },
                            None => Row {
                                path: None,
                                offset: 0,
                                size: 0,
                                raw: None,
                            },
                        }
                    })
                    .collect();
                write_record(&vdir.join(format!("refs.{r}.parq")), &rows)?;
            }
        }
        Ok(())
    }
}

/// One chunk reference read from a Parquet record.
#[derive(Clone, Debug, PartialEq)]
pub enum ParquetRef {
    /// `[url]` (whole file) when `range` is `None`, else `[url, offset, size]`.
    Url {
        url: String,
        range: Option<(u64, u64)>,
    },
    Inline(Vec<u8>),
}

/// A Parquet reference set, read eagerly.
#[derive(Debug, Default)]
pub struct ParquetRefs {
    /// Metadata documents by key.
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// Chunk references by key (v2 `.`-separated spelling); absent keys are missing chunks.
    pub chunks: BTreeMap<String, ParquetRef>,
}

fn malformed(path: &Path, message: impl Into<String>) -> ParquetRefsError {
    ParquetRefsError::Malformed {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Reads a Parquet reference directory (local or an object prefix). A missing record file
/// means its chunks are missing (fsspec reads it the same way); an unreadable one is an
/// error naming it.
pub fn read_parquet(dir: &crate::source::tree::Tree) -> Result<ParquetRefs, ParquetRefsError> {
    let zmeta = dir.path(".zmetadata");
    let text = dir
        .read(".zmetadata")
        .map_err(|m| malformed(&zmeta, m))?
        .ok_or_else(|| malformed(&zmeta, "no such file (not a Parquet reference directory?)"))?;
    let doc: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| malformed(&zmeta, format!("not JSON: {e}")))?;
    let record_size = doc
        .get("record_size")
        .and_then(serde_json::Value::as_u64)
        .filter(|n| *n > 0)
        .ok_or_else(|| malformed(&zmeta, "'record_size' missing or not a positive integer"))?;
    let metadata = match doc.get("metadata") {
        Some(serde_json::Value::Object(m)) => m.clone().into_iter().collect::<BTreeMap<_, _>>(),
        _ => return Err(malformed(&zmeta, "'metadata' missing or not an object")),
    };
    let mut chunks = BTreeMap::new();
    for (k, za) in &metadata {
        let Some(field) = k
            .strip_suffix("/.zarray")
            .or(if k == ".zarray" { Some("") } else { None })
        else {
            continue;
        };
        let grid = chunk_grid(za)
            .ok_or_else(|| malformed(&zmeta, format!("'{k}': shape/chunks missing or inconsistent")))?;
        // Bounded like every chunk table (the record files are probed one by one below).
        let n = crate::source::grid_chunks(&grid).map_err(|why| malformed(&zmeta, format!("'{k}': {why}")))?
            as u64;
        let nrec = n.div_ceil(record_size);
        for r in 0..nrec {
            let rel = if field.is_empty() {
                format!("refs.{r}.parq")
            } else {
                format!("{field}/refs.{r}.parq")
            };
            let file = dir.path(&rel);
            let Some(bytes) = dir.read(&rel).map_err(|m| malformed(&file, m))? else {
                continue;
            };
            let reader = SerializedFileReader::new(bytes::Bytes::from(bytes)).map_err(pq(&file))?;
            let rows = reader.get_row_iter(None).map_err(pq(&file))?;
            for (i, row) in rows.enumerate() {
                let row = row.map_err(pq(&file))?;
                let num = r * record_size + i as u64;
                if num >= n {
                    break;
                }
                let (mut path, mut offset, mut size, mut raw) = (None, 0u64, 0u64, None);
                for (name, field_value) in row.get_column_iter() {
                    match (name.as_str(), field_value) {
                        ("path", Field::Str(s)) => path = Some(s.clone()),
                        ("path", Field::Bytes(b)) => {
                            path = Some(
                                String::from_utf8(b.data().to_vec())
                                    .map_err(|_| malformed(&file, format!("row {i}: 'path' is not UTF-8")))?,
                            )
                        }
                        ("raw", Field::Bytes(b)) => raw = Some(b.data().to_vec()),
                        ("raw", Field::Str(s)) => raw = Some(s.as_bytes().to_vec()),
                        ("offset" | "size", Field::Null) => {}
                        ("offset" | "size", v) => {
                            let x = match v {
                                Field::Long(x) => u64::try_from(*x).ok(),
                                Field::Int(x) => u64::try_from(*x).ok(),
                                Field::ULong(x) => Some(*x),
                                Field::UInt(x) => Some(u64::from(*x)),
                                Field::Double(x) if x.is_finite() && *x >= 0.0 => Some(*x as u64),
                                _ => None,
                            }
                            .ok_or_else(|| {
                                malformed(
                                    &file,
                                    format!("row {i}: '{name}' is {v} (expected a non-negative integer)"),
                                )
                            })?;
                            if name == "offset" {
                                offset = x;
                            } else {
                                size = x;
                            }
                        }
                        _ => {}
                    }
                }
                let key = chunk_key_of(field, num, &grid);
                let key = key.trim_start_matches('/').to_string();
                if let Some(b) = raw {
                    chunks.insert(key, ParquetRef::Inline(b));
                } else if let Some(url) = path {
                    let range = (offset != 0 || size != 0).then_some((offset, size));
                    chunks.insert(key, ParquetRef::Url { url, range });
                }
            }
        }
    }
    Ok(ParquetRefs { metadata, chunks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_fsspec_raveling() {
        assert_eq!(chunk_key_of("t", 0, &[2, 3]), "t/0.0");
        assert_eq!(chunk_key_of("t", 4, &[2, 3]), "t/1.1");
        assert_eq!(chunk_key_of("s", 0, &[1]), "s/0");
        let za = serde_json::json!({"shape": [5, 4], "chunks": [2, 4]});
        assert_eq!(chunk_grid(&za), Some(vec![3, 1]));
        assert_eq!(
            chunk_grid(&serde_json::json!({"shape": [], "chunks": []})),
            Some(vec![1])
        );
        assert_eq!(
            chunk_grid(&serde_json::json!({"shape": [3], "chunks": [0]})),
            None
        );
    }

    #[test]
    fn write_then_read_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut refs = Refs::default();
        refs.files.push(PathBuf::from("/data/a.nc"));
        refs.entries
            .insert(".zgroup".into(), RefValue::Json("{\"zarr_format\": 2}".into()));
        refs.entries.insert(
            "x/.zarray".into(),
            RefValue::Json("{\"shape\": [5], \"chunks\": [2], \"zarr_format\": 2}".into()),
        );
        refs.entries.insert(
            "x/0".into(),
            RefValue::Range {
                file: 0,
                offset: 10,
                size: 20,
            },
        );
        refs.entries.insert("x/2".into(), RefValue::Inline(vec![1, 2, 3]));
        let out = dir.path().join("refs.parquet");
        refs.write_parquet(&out, 2).unwrap();
        assert!(out.join("x/refs.0.parq").is_file() && out.join("x/refs.1.parq").is_file());
        let back = read_parquet(&crate::source::tree::Tree::Local(out.clone())).unwrap();
        assert_eq!(back.metadata["x/.zarray"]["shape"], serde_json::json!([5]));
        assert_eq!(
            back.chunks["x/0"],
            ParquetRef::Url {
                url: "file:///data/a.nc".into(),
                range: Some((10, 20))
            }
        );
        assert!(!back.chunks.contains_key("x/1"));
        assert_eq!(back.chunks["x/2"], ParquetRef::Inline(vec![1, 2, 3]));
        // rewriting replaces the set; a non-reference directory is never overwritten
        refs.write_parquet(&out, 100).unwrap();
        assert!(!out.join("x/refs.1.parq").exists());
        let other = dir.path().join("data");
        std::fs::create_dir(&other).unwrap();
        assert!(refs.write_parquet(&other, 10).is_err());
    }

    #[test]
    fn malformed_sets_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_parquet(&crate::source::tree::Tree::Local(dir.path().to_path_buf())).unwrap_err();
        assert!(e.to_string().contains(".zmetadata"), "{e}");
        std::fs::write(dir.path().join(".zmetadata"), "{\"metadata\": {}}").unwrap();
        let e = read_parquet(&crate::source::tree::Tree::Local(dir.path().to_path_buf())).unwrap_err();
        assert!(e.to_string().contains("record_size"), "{e}");
        std::fs::write(
            dir.path().join(".zmetadata"),
            "{\"metadata\": {\"x/.zarray\": {\"shape\": [4], \"chunks\": [2]}}, \"record_size\": 10}",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("x")).unwrap();
        std::fs::write(dir.path().join("x/refs.0.parq"), b"not parquet").unwrap();
        let e = read_parquet(&crate::source::tree::Tree::Local(dir.path().to_path_buf())).unwrap_err();
        assert!(e.to_string().contains("refs.0.parq"), "{e}");
    }
}
