//! Opening netCDF-3 files natively: the header gives every variable's byte offset, so no
//! library (and no lock) is involved at all.

use std::sync::Arc;

use super::nc3::{Nc3AttrValue, Nc3Error, Nc3Type, parse_header};
use super::{FileVar, Layout, SourceDim, SourceError, SourceFile, SourceGroup, SourceIndex, SourceVar};
use crate::attrs::{AttrValue, Attrs};
use crate::dtype::{DType, Endian};
use crate::storage::read::pread;

fn attr(v: &Nc3AttrValue) -> AttrValue {
    match v {
        Nc3AttrValue::Bytes(x) => AttrValue::Ints(x.iter().map(|v| *v as i64).collect()),
        Nc3AttrValue::Chars(s) => AttrValue::Str(s.clone()),
        Nc3AttrValue::Shorts(x) => AttrValue::Ints(x.iter().map(|v| *v as i64).collect()),
        Nc3AttrValue::Ints(x) => AttrValue::Ints(x.iter().map(|v| *v as i64).collect()),
        Nc3AttrValue::Floats(x) => AttrValue::Floats32(x.clone()),
        Nc3AttrValue::Doubles(x) => AttrValue::Floats(x.clone()),
        Nc3AttrValue::UBytes(x) => AttrValue::UInts(x.iter().map(|v| *v as u64).collect()),
        Nc3AttrValue::UShorts(x) => AttrValue::UInts(x.iter().map(|v| *v as u64).collect()),
        Nc3AttrValue::UInts(x) => AttrValue::UInts(x.iter().map(|v| *v as u64).collect()),
        Nc3AttrValue::Int64s(x) => AttrValue::Ints(x.clone()),
        Nc3AttrValue::UInt64s(x) => AttrValue::UInts(x.clone()),
    }
}

fn attrs(list: &[(String, Nc3AttrValue)]) -> Attrs {
    Attrs(list.iter().map(|(k, v)| (k.clone(), attr(v))).collect())
}

fn dtype(t: Nc3Type) -> DType {
    match t {
        Nc3Type::Byte => DType::I8,
        Nc3Type::Char => DType::Char,
        Nc3Type::Short => DType::I16,
        Nc3Type::Int => DType::I32,
        Nc3Type::Float => DType::F32,
        Nc3Type::Double => DType::F64,
        Nc3Type::UByte => DType::U8,
        Nc3Type::UShort => DType::U16,
        Nc3Type::UInt => DType::U32,
        Nc3Type::Int64 => DType::I64,
        Nc3Type::UInt64 => DType::U64,
    }
}

/// Largest netCDF-3 header we read (thousands of variables fit in a few MB).
const MAX_HEADER: u64 = 256 << 20;

/// Opens a local netCDF-3 file (CDF-1, CDF-2 or CDF-5).
pub fn open_nc3(file: Arc<SourceFile>) -> Result<SourceIndex, SourceError> {
    let path = file.path.clone();
    open_nc3_with(file, &|n| {
        pread(&path, 0, n).map_err(|e| SourceError::Malformed {
            path: path.clone(),
            message: e.to_string(),
        })
    })
}

/// Opens a netCDF-3 file whose first `n` bytes `read_prefix(n)` returns: `pread` for a
/// local file, a ranged GET for an object (the header is all that is read, so a remote
/// file costs one or two requests whatever its size).
pub fn open_nc3_with(
    file: Arc<SourceFile>,
    read_prefix: &dyn Fn(u64) -> Result<Vec<u8>, SourceError>,
) -> Result<SourceIndex, SourceError> {
    let path = file.path.clone();
    let malformed = |message: String| SourceError::Malformed {
        path: path.clone(),
        message,
    };
    let mut want = 64 * 1024u64;
    let header = loop {
        let n = want.min(file.size);
        let bytes = read_prefix(n)?;
        match parse_header(&bytes, file.size) {
            Ok(h) => break h,
            // A header larger than this is hostile or broken, not a dataset.
            Err(Nc3Error::Truncated { needed }) if needed > MAX_HEADER => {
                return Err(malformed(format!(
                    "header claims {needed} bytes; refusing headers over {MAX_HEADER} bytes"
                )));
            }
            Err(Nc3Error::Truncated { needed }) if n < file.size && needed > n => want = needed.max(n * 2),
            Err(Nc3Error::Truncated { needed }) => {
                return Err(malformed(format!(
                    "header truncated: needs {needed} bytes, file has {}",
                    file.size
                )));
            }
            Err(e) => return Err(malformed(e.to_string())),
        }
    };
    let recsize = header.recsize();
    let dims: Vec<SourceDim> = header
        .dims
        .iter()
        .map(|d| SourceDim {
            name: d.name.clone(),
            len: if d.unlimited { header.numrecs } else { d.len },
            unlimited: d.unlimited,
        })
        .collect();
    let mut vars = Vec::new();
    for v in &header.vars {
        let names = v
            .dimids
            .iter()
            .map(|i| dims.get(*i).map(|d| d.name.clone()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| malformed(format!("variable '{}' refers to an unknown dimension", v.name)))?;
        let shape = header.shape(v);
        let storage = if v.is_record {
            Layout::Records {
                begin: v.begin,
                recsize,
            }
        } else {
            Layout::Contiguous { offset: v.begin }
        };
        vars.push(SourceVar {
            name: v.name.clone(),
            dims: names,
            dtype: dtype(v.nc_type),
            attrs: attrs(&v.attrs),
            data: FileVar {
                file: file.clone(),
                shape,
                endian: Endian::Big,
                layout: storage,
                stored: None,
            },
        });
    }
    Ok(SourceIndex {
        file,
        root: SourceGroup {
            path: String::new(),
            dims,
            attrs: attrs(&header.attrs),
            vars,
            groups: Vec::new(),
            skipped: Vec::new(),
        },
    })
}
