//! Writing kerchunk's Parquet reference format (`crate::source::kerchunk_parquet` says what
//! it is and reads it).

use std::fmt::Write as _;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use super::{RefValue, Refs};
use crate::attrs::write_json_str;
pub use crate::source::kerchunk_parquet::{
    DEFAULT_RECORD_SIZE, ParquetRef, ParquetRefs, ParquetRefsError, chunk_grid, chunk_key_of, read_parquet,
};
use crate::source::kerchunk_parquet::{PANDAS_METADATA, SCHEMA, io, pq};

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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

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

    /// References of one array `x` of `len` values in chunks of 2, its first chunk at bytes
    /// 10..30 of `/data/a.nc`.
    fn array_x(len: u64) -> Refs {
        let mut refs = Refs::default();
        refs.files.push(PathBuf::from("/data/a.nc"));
        refs.entries.insert(
            "x/.zarray".into(),
            RefValue::Json(format!(
                "{{\"shape\": [{len}], \"chunks\": [2], \"zarr_format\": 2}}"
            )),
        );
        refs.entries.insert(
            "x/0".into(),
            RefValue::Range {
                file: 0,
                offset: 10,
                size: 20,
            },
        );
        refs
    }

    #[test]
    fn write_then_read_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut refs = array_x(5);
        refs.entries
            .insert(".zgroup".into(), RefValue::Json("{\"zarr_format\": 2}".into()));
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

    /// A record file whose footer places a column chunk outside the file (a negative
    /// offset made the Parquet library's row reader assert: found by fuzzing) is an error
    /// naming the file, row group and column, not a panic.
    #[test]
    fn column_chunks_outside_the_file_are_named() {
        use parquet::file::metadata::{ParquetMetaDataReader, ParquetMetaDataWriter};
        let dir = tempfile::tempdir().unwrap();
        let refs = array_x(2);
        let out = dir.path().join("refs.parquet");
        refs.write_parquet(&out, 10).unwrap();
        let rec = out.join("x/refs.0.parq");
        let bytes = std::fs::read(&rec).unwrap();
        let meta = ParquetMetaDataReader::new()
            .parse_and_finish(&bytes::Bytes::from(bytes.clone()))
            .unwrap();
        let footer_len = u32::from_le_bytes(bytes[bytes.len() - 8..bytes.len() - 4].try_into().unwrap());
        let body = &bytes[..bytes.len() - 8 - footer_len as usize];
        for (offset, size) in [(-5i64, None), (4, Some(-1i64)), (4, Some(1i64 << 40))] {
            let mut b = meta.clone().into_builder();
            let mut groups = b.take_row_groups();
            let mut cols = groups[0].clone().into_builder().take_columns();
            let mut c = cols[1].clone().into_builder().set_data_page_offset(offset);
            if let Some(size) = size {
                c = c.set_total_compressed_size(size);
            }
            cols[1] = c.set_dictionary_page_offset(None).build().unwrap();
            groups[0] = groups[0]
                .clone()
                .into_builder()
                .set_column_metadata(cols)
                .build()
                .unwrap();
            for g in groups {
                b = b.add_row_group(g);
            }
            let mut file = body.to_vec();
            ParquetMetaDataWriter::new(&mut file, &b.build())
                .finish()
                .unwrap();
            std::fs::write(&rec, &file).unwrap();
            let e = read_parquet(&crate::source::tree::Tree::Local(out.clone())).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains("refs.0.parq") && msg.contains("row group 0, column 'offset'"),
                "{msg}"
            );
        }
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
