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
use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;

/// fsspec's default number of references per Parquet file.
pub const DEFAULT_RECORD_SIZE: usize = 10_000;

/// Parquet schema of fsspec's reference record files (`refs.N.parq`): one row per chunk,
/// `path`+`offset`+`size` for a range (size 0 and offset 0 for a whole file), `raw` for inline
/// bytes, all null for a missing chunk.
pub const SCHEMA: &str = "message schema {
  OPTIONAL BYTE_ARRAY path (STRING);
  REQUIRED INT64 offset;
  REQUIRED INT64 size;
  OPTIONAL BYTE_ARRAY raw;
}";

/// The pandas schema fastparquet and pyarrow write: without it fastparquet reads the int64
/// columns as nullable integers, which fsspec then hands to file systems as floats.
pub const PANDAS_METADATA: &str = r#"{"column_indexes": [{"field_name": null, "metadata": null, "name": null, "numpy_type": "object", "pandas_type": "mixed-integer"}], "columns": [{"field_name": "path", "metadata": null, "name": "path", "numpy_type": "object", "pandas_type": "unicode"}, {"field_name": "offset", "metadata": null, "name": "offset", "numpy_type": "int64", "pandas_type": "int64"}, {"field_name": "size", "metadata": null, "name": "size", "numpy_type": "int64", "pandas_type": "int64"}, {"field_name": "raw", "metadata": null, "name": "raw", "numpy_type": "object", "pandas_type": "bytes"}], "creator": {"library": "cloudify", "version": "VERSION"}, "index_columns": [], "pandas_version": "2.2.0", "partition_columns": []}"#;

/// Why Parquet references cannot be written or read. Messages name the file.
#[derive(Debug, thiserror::Error)]
pub enum ParquetRefsError {
    /// A file of the reference set cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file, for messages.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The Parquet library rejected a record file (corrupt, or not Parquet).
    #[error("{path}: {message}")]
    Parquet {
        /// The file, for messages.
        path: PathBuf,
        /// What the Parquet library said.
        message: String,
    },
    /// The files are readable but not a reference set (missing `.zmetadata`, wrong columns, a chunk
    /// grid that does not fit).
    #[error("{path}: {message}")]
    Malformed {
        /// The file, for messages.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Maps an I/O error on `path` to [`ParquetRefsError::Io`] (for `map_err`).
pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ParquetRefsError + '_ {
    move |source| ParquetRefsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Maps a Parquet library error on `path` to [`ParquetRefsError::Parquet`] (for `map_err`).
pub fn pq(path: &Path) -> impl Fn(parquet::errors::ParquetError) -> ParquetRefsError + '_ {
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

/// One chunk reference read from a Parquet record.
#[derive(Clone, Debug, PartialEq)]
pub enum ParquetRef {
    /// `[url]` (whole file) when `range` is `None`, else `[url, offset, size]`.
    Url {
        /// File or object URL the chunk is in.
        url: String,
        /// Byte offset and size of the chunk in the file; `None` for the whole file.
        range: Option<(u64, u64)>,
    },
    /// The chunk's bytes, stored in the record's `raw` column.
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

/// Checks that every column chunk the footer declares lies inside the file. The Parquet
/// library trusts these numbers: a negative offset or size trips an assertion in its row
/// reader (a panic, found by fuzzing), and one past the end is a read error that names no
/// column; this names the row group and column instead.
fn check_column_ranges(reader: &SerializedFileReader<bytes::Bytes>, len: u64) -> Result<(), String> {
    for (g, group) in reader.metadata().row_groups().iter().enumerate() {
        for col in group.columns() {
            let start = col
                .dictionary_page_offset()
                .unwrap_or_else(|| col.data_page_offset());
            let size = col.compressed_size();
            let inside = u64::try_from(start)
                .ok()
                .zip(u64::try_from(size).ok())
                .and_then(|(s, n)| s.checked_add(n))
                .is_some_and(|end| end <= len);
            if !inside {
                return Err(format!(
                    "row group {g}, column '{}': declared at offset {start} with {size} bytes, outside the file's {len} bytes",
                    col.column_path().string()
                ));
            }
        }
    }
    Ok(())
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
            let len = bytes.len() as u64;
            let reader = SerializedFileReader::new(bytes::Bytes::from(bytes)).map_err(pq(&file))?;
            check_column_ranges(&reader, len).map_err(|m| malformed(&file, m))?;
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
                            path =
                                Some(String::from_utf8(b.data().to_vec()).map_err(|_| {
                                    malformed(&file, format!("row {i}: 'path' is not UTF-8"))
                                })?);
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
