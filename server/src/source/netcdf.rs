//! Opening netCDF-4/HDF5 files: the logical model from libnetcdf, the byte layout from libhdf5.
//!
//! The two libraries are used one after the other, never with the same file open twice,
//! because HDF5 refuses a second open of a file with a different close degree. Both share
//! one global lock (`hdf5_sys::LOCK`), so this code is serial per process; it runs once per
//! file and the result is plain data.

use std::path::Path;
use std::sync::Arc;

use netcdf::AttributeValue;
use netcdf::types::{FloatType, IntType, NcVariableType};

use super::{
    ChunkLoc, FileVar, Filter, Layout, MemValues, SourceDim, SourceError, SourceFile, SourceGroup,
    SourceIndex, SourceVar, ffi,
};
use crate::attrs::{AttrValue, Attrs};
use crate::dtype::{DType, Endian};

/// Largest variable we read into memory when only the library can decode it.
const MAX_LIBRARY_READ: u64 = 256 << 20;

fn lib_err(path: &Path, e: impl std::fmt::Display) -> SourceError {
    SourceError::Library {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Converts a netCDF attribute value.
pub fn attr_value(v: AttributeValue) -> AttrValue {
    use AttributeValue as A;
    match v {
        A::Uchar(x) => AttrValue::UInts(vec![x as u64]),
        A::Uchars(x) => AttrValue::UInts(x.into_iter().map(u64::from).collect()),
        A::Schar(x) => AttrValue::Ints(vec![x as i64]),
        A::Schars(x) => AttrValue::Ints(x.into_iter().map(i64::from).collect()),
        A::Ushort(x) => AttrValue::UInts(vec![x as u64]),
        A::Ushorts(x) => AttrValue::UInts(x.into_iter().map(u64::from).collect()),
        A::Short(x) => AttrValue::Ints(vec![x as i64]),
        A::Shorts(x) => AttrValue::Ints(x.into_iter().map(i64::from).collect()),
        A::Uint(x) => AttrValue::UInts(vec![x as u64]),
        A::Uints(x) => AttrValue::UInts(x.into_iter().map(u64::from).collect()),
        A::Int(x) => AttrValue::Ints(vec![x as i64]),
        A::Ints(x) => AttrValue::Ints(x.into_iter().map(i64::from).collect()),
        A::Ulonglong(x) => AttrValue::UInts(vec![x]),
        A::Ulonglongs(x) => AttrValue::UInts(x),
        A::Longlong(x) => AttrValue::Ints(vec![x]),
        A::Longlongs(x) => AttrValue::Ints(x),
        A::Float(x) => AttrValue::Floats32(vec![x]),
        A::Floats(x) => AttrValue::Floats32(x),
        A::Double(x) => AttrValue::Floats(vec![x]),
        A::Doubles(x) => AttrValue::Floats(x),
        A::Str(s) => AttrValue::Str(s),
        A::Strs(v) => AttrValue::Strs(v),
    }
}

fn dtype_of(t: &NcVariableType) -> Option<DType> {
    Some(match t {
        NcVariableType::Int(IntType::I8) => DType::I8,
        NcVariableType::Int(IntType::U8) => DType::U8,
        NcVariableType::Int(IntType::I16) => DType::I16,
        NcVariableType::Int(IntType::U16) => DType::U16,
        NcVariableType::Int(IntType::I32) => DType::I32,
        NcVariableType::Int(IntType::U32) => DType::U32,
        NcVariableType::Int(IntType::I64) => DType::I64,
        NcVariableType::Int(IntType::U64) => DType::U64,
        NcVariableType::Float(FloatType::F32) => DType::F32,
        NcVariableType::Float(FloatType::F64) => DType::F64,
        NcVariableType::Char => DType::Char,
        NcVariableType::String => DType::Str,
        _ => return None,
    })
}

fn read_attrs<'a>(
    it: impl Iterator<Item = netcdf::Attribute<'a>>,
    path: &Path,
) -> Result<Attrs, SourceError> {
    let mut attrs = Attrs::default();
    for a in it {
        let v = a
            .value()
            .map_err(|e| lib_err(path, format!("attribute '{}': {e}", a.name())))?;
        attrs.0.push((a.name().to_string(), attr_value(v)));
    }
    Ok(attrs)
}

/// Logical model of one group, with `Layout::Unallocated` placeholders for the layout.
fn read_group(g: &netcdf::Group<'_>, path: &str, file: &Arc<SourceFile>) -> Result<SourceGroup, SourceError> {
    let p = file.path.as_path();
    let dims = g
        .dimensions()
        .map(|d| SourceDim {
            name: d.name(),
            len: d.len() as u64,
            unlimited: d.is_unlimited(),
        })
        .collect();
    let attrs = read_attrs(g.attributes(), p)?;
    let mut vars = Vec::new();
    let mut skipped = Vec::new();
    for v in g.variables() {
        let name = v.name();
        let vt = v.vartype();
        let Some(dtype) = dtype_of(&vt) else {
            skipped.push((name, format!("netCDF type {vt:?} is not supported")));
            continue;
        };
        let dims: Vec<String> = v.dimensions().iter().map(netcdf::Dimension::name).collect();
        let shape: Vec<u64> = v.dimensions().iter().map(|d| d.len() as u64).collect();
        let attrs = read_attrs(v.attributes(), p)?;
        let storage = if dtype == DType::Str {
            // Variable-length strings live on the HDF5 heap; read them now (they are small
            // in practice: labels, station names).
            let n: u64 = shape.iter().product();
            let mut strings = Vec::with_capacity(n.min(1 << 20) as usize);
            let mut idx = vec![0usize; shape.len()];
            for _ in 0..n {
                let s = v
                    .get_string(idx.as_slice())
                    .map_err(|e| lib_err(p, format!("variable '{name}': {e}")))?;
                strings.push(s);
                for d in (0..shape.len()).rev() {
                    idx[d] += 1;
                    if (idx[d] as u64) < shape[d] {
                        break;
                    }
                    idx[d] = 0;
                }
            }
            Layout::Memory(Arc::new(MemValues::Strings(strings)))
        } else {
            Layout::Unallocated
        };
        vars.push(SourceVar {
            name,
            dims,
            dtype,
            attrs,
            data: FileVar {
                file: file.clone(),
                shape,
                endian: Endian::Little,
                layout: storage,
                stored: None,
            },
        });
    }
    let mut groups = Vec::new();
    for sub in g.groups() {
        let sub_path = if path.is_empty() {
            sub.name()
        } else {
            format!("{path}/{}", sub.name())
        };
        groups.push(read_group(&sub, &sub_path, file)?);
    }
    Ok(SourceGroup {
        path: path.to_string(),
        dims,
        attrs,
        vars,
        groups,
        skipped,
    })
}

/// Outcome of looking at one variable's HDF5 layout.
enum H5Outcome {
    Native(Layout, Endian),
    /// Only the library can read it (compact layout, filters we don't decode).
    NeedsLibrary(String),
}

fn convert_filters(fs: &[hdf5::filters::Filter], elem: usize) -> Result<Vec<Filter>, String> {
    use hdf5::filters::Filter as F;
    fs.iter()
        .map(|f| match f {
            F::Deflate(l) => Ok(Filter::Deflate(*l)),
            F::Shuffle => Ok(Filter::Shuffle(elem)),
            F::Fletcher32 => Ok(Filter::Fletcher32),
            F::User(32015, _) => Ok(Filter::Zstd),
            other => Err(format!("{other:?}")),
        })
        .collect()
}

fn h5_layout(h5: &hdf5::File, group: &str, var: &SourceVar) -> Result<H5Outcome, String> {
    let full = if group.is_empty() {
        var.name.clone()
    } else {
        format!("{group}/{}", var.name)
    };
    // A variable named like a dimension but not its coordinate is stored under this alias.
    let alt = if group.is_empty() {
        format!("_nc4_non_coord_{}", var.name)
    } else {
        format!("{group}/_nc4_non_coord_{}", var.name)
    };
    let ds = h5
        .dataset(&full)
        .or_else(|_| h5.dataset(&alt))
        .map_err(|e| format!("HDF5 dataset '{full}': {e}"))?;
    let endian = match ds.dtype().map(|t| t.byte_order()) {
        Ok(hdf5::datatype::ByteOrder::BigEndian) => Endian::Big,
        _ => Endian::Little,
    };
    let shape = &var.data.shape;
    match ds.layout() {
        hdf5::dataset::Layout::Contiguous => Ok(H5Outcome::Native(
            match ds.offset() {
                Some(offset) => Layout::Contiguous { offset },
                None => Layout::Unallocated,
            },
            endian,
        )),
        hdf5::dataset::Layout::Chunked => {
            let chunk_shape: Vec<u64> = ds
                .chunk()
                .ok_or("chunked dataset without chunk shape")?
                .into_iter()
                .map(|c| c as u64)
                .collect();
            if chunk_shape.len() != shape.len() || chunk_shape.contains(&0) {
                return Err(format!(
                    "chunk shape {chunk_shape:?} does not fit shape {shape:?}"
                ));
            }
            let filters = match convert_filters(&ds.filters(), var.dtype.size()) {
                Ok(f) => f,
                Err(f) => return Ok(H5Outcome::NeedsLibrary(format!("HDF5 filter {f}"))),
            };
            let grid: Vec<u64> = shape
                .iter()
                .zip(&chunk_shape)
                .map(|(s, c)| s.div_ceil(*c))
                .collect();
            let locs: Vec<ChunkLoc> = ffi::chunk_locs(&ds, &chunk_shape, &grid)?;
            Ok(H5Outcome::Native(
                Layout::Chunked {
                    chunk_shape,
                    filters,
                    locs: Arc::new(locs),
                },
                endian,
            ))
        }
        other => Ok(H5Outcome::NeedsLibrary(format!("HDF5 layout {other:?}"))),
    }
}

fn for_each_var(g: &mut SourceGroup, f: &mut impl FnMut(&str, &mut SourceVar)) {
    for v in &mut g.vars {
        f(&g.path, v);
    }
    for sub in &mut g.groups {
        for_each_var(sub, f);
    }
}

/// Opens a netCDF-4/HDF5 file and indexes every variable.
pub fn open_hdf5(file: Arc<SourceFile>) -> Result<SourceIndex, SourceError> {
    // libnetcdf probes optional attributes and HDF5 would print every miss to stderr on
    // whichever thread this runs; real failures still come back as error codes.
    hdf5::silence_errors(true);
    let p = file.path.clone();
    let mut root = {
        let nc = netcdf::open(&p).map_err(|e| lib_err(&p, e))?;
        let g = nc.root().ok_or_else(|| lib_err(&p, "file has no root group"))?;
        read_group(&g, "", &file)?
    };
    // Physical layout.
    let mut needs_library: Vec<(String, String, String)> = Vec::new(); // (group, var, why)
    let mut failure: Option<String> = None;
    {
        let h5 = hdf5::File::open(&p).map_err(|e| lib_err(&p, e))?;
        for_each_var(&mut root, &mut |group, v| {
            if failure.is_some() || matches!(v.data.layout, Layout::Memory(_)) {
                return;
            }
            match h5_layout(&h5, group, v) {
                Ok(H5Outcome::Native(storage, endian)) => {
                    v.data.layout = storage;
                    v.data.endian = endian;
                }
                Ok(H5Outcome::NeedsLibrary(why)) => {
                    needs_library.push((group.to_string(), v.name.clone(), why));
                }
                Err(e) => failure = Some(format!("variable '{}': {e}", v.name)),
            }
        });
    }
    if let Some(message) = failure {
        return Err(SourceError::Malformed { path: p, message });
    }
    if !needs_library.is_empty() {
        read_through_library(&mut root, &file, &needs_library)?;
    }
    Ok(SourceIndex { file, root })
}

/// Reads variables only libnetcdf can decode into memory, once, at open time.
fn read_through_library(
    root: &mut SourceGroup,
    file: &Arc<SourceFile>,
    which: &[(String, String, String)],
) -> Result<(), SourceError> {
    let p = file.path.clone();
    let nc = netcdf::open(&p).map_err(|e| lib_err(&p, e))?;
    let mut err = None;
    let mut skipped: Vec<(String, String, String)> = Vec::new();
    for_each_var(root, &mut |group, v| {
        let Some((_, _, why)) = which.iter().find(|(g, n, _)| g == group && *n == v.name) else {
            return;
        };
        let bytes = v.data.shape.iter().product::<u64>() * v.dtype.size() as u64;
        if bytes > MAX_LIBRARY_READ {
            skipped.push((group.to_string(), v.name.clone(), format!("{why} cannot be decoded natively and the variable is too large ({bytes} bytes) to hold in memory")));
            return;
        }
        let found = if group.is_empty() {
            nc.variable(&v.name).map(|var| var.get_raw_values(..))
        } else {
            nc.group(group)
                .ok()
                .flatten()
                .and_then(|g| g.variable(&v.name).map(|var| var.get_raw_values(..)))
        };
        match found {
            Some(Ok(b)) => v.data.layout = Layout::Memory(Arc::new(MemValues::Bytes(b))),
            Some(Err(e)) => err = Some(format!("variable '{}' ({why}): {e}", v.name)),
            None => err = Some(format!("variable '{}' vanished", v.name)),
        }
    });
    if let Some(message) = err {
        return Err(SourceError::Library { path: p, message });
    }
    for (group, name, why) in skipped {
        remove_var(root, &group, &name, why);
    }
    Ok(())
}

fn remove_var(g: &mut SourceGroup, group: &str, name: &str, why: String) {
    if g.path == group {
        g.vars.retain(|v| v.name != name);
        g.skipped.push((name.to_string(), why));
        return;
    }
    for sub in &mut g.groups {
        remove_var(sub, group, name, why.clone());
    }
}

/// Version string of the linked libnetcdf.
pub fn library_version() -> String {
    ffi::netcdf_version()
}
