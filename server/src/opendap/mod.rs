//! OPeNDAP DAP2: the DDS and DAS documents, constraint expressions and the XDR-encoded data
//! response (`.dods`), for any dataset (views and processed variables alike).
//!
//! Values are read only through [`crate::pipeline::read_region`], chunk by chunk along the
//! selection ([`gather`]), so a strided hyperslab reads only the served chunks it touches.
//! DAP2 lacks some netCDF types; they are mapped as THREDDS serves them where it can, and
//! never to wrong values (see [`dap_type`]).

pub mod constraint;
pub mod dap4;
pub mod pool;

use std::fmt::Write as _;
use std::sync::Arc;

use crate::attrs::AttrValue;
use crate::block::{Block, BlockData};
use crate::chunk::grid::byteswap;
use crate::dataset::{Dataset, Variable};
use crate::dtype::{DType, Endian, Scalar};
use crate::pipeline::read_region;
use constraint::{Projection, Slice};

/// Largest `.ascii` answer built (bytes of XDR values): it is built in memory, so larger
/// requests are refused with a DAP error and HTTP 413, naming the size, and the client
/// subsets (or asks for `.dods`, which is streamed).
pub const MAX_RESPONSE_BYTES: u64 = 512 * 1024 * 1024;

/// Largest `.dods` answer read through once before its headers go out. DAP2 cannot report an
/// error once data was sent, and netCDF-C (4.9, also the netCDF4 wheel's) takes a body cut
/// short as data: it prints "DAP DATADDS packet is apparently too short" and returns the
/// array with wrong values. So answers up to this size are read whole first and a failure is
/// a DAP error with its status; the read costs one more decode of what is sent, but no
/// encoding and no memory beyond a chunk per worker ([`check_values`]), while a larger
/// answer must start streaming before proxies' read timeouts (60 s at the ingress) and keeps
/// the cut. Streaming once and cutting the body on a failure is not an option below this
/// size: netCDF-C ignores curl's "partial file" error and returns wrong values.
pub const MAX_CHECKED_BYTES: u64 = 1024 * 1024 * 1024;

/// Largest `.dods` answer (bytes of XDR values). `.dods` is streamed in pieces of about
/// [`PIECE_BYTES`], so memory does not grow with it; the cap only bounds how long one request
/// may keep a connection and the disks busy (a whole 10 TB run is not a sensible request).
pub const MAX_STREAMED_BYTES: u64 = 16 * 1024 * 1024 * 1024;

/// XDR bytes of one streamed piece of an array: large enough that per-piece overhead is
/// negligible, small enough that two in flight stay a few tens of MB.
pub const PIECE_BYTES: u64 = 32 * 1024 * 1024;

/// A DAP2 failure: HTTP status and the message of the `Error { ... }` body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DapError {
    /// HTTP status answered (and the DAP `code`).
    pub status: u16,
    /// What went wrong, naming the variable, index or clause.
    pub message: String,
}

impl DapError {
    /// A malformed request (400).
    pub fn bad(message: impl Into<String>) -> Self {
        DapError {
            status: 400,
            message: message.into(),
        }
    }

    /// Something named that does not exist (404).
    pub fn missing(message: impl Into<String>) -> Self {
        DapError {
            status: 404,
            message: message.into(),
        }
    }

    /// The DAP2 error document clients (libdap, netCDF-C, pydap) parse.
    pub fn body(&self) -> String {
        format!(
            "Error {{\n    code = {};\n    message = {};\n}};\n",
            self.status,
            quote(&self.message)
        )
    }
}

/// DAP2 base types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DapType {
    /// 8 bits, unsigned in DAP2 (signed sources carry `_Unsigned = "false"`).
    Byte,
    /// Signed 16 bits (sent as 32 bits in XDR).
    Int16,
    /// Unsigned 16 bits (sent as 32 bits in XDR).
    UInt16,
    /// Signed 32 bits.
    Int32,
    /// Unsigned 32 bits.
    UInt32,
    /// IEEE single.
    Float32,
    /// IEEE double.
    Float64,
    /// Counted string.
    Str,
}

impl DapType {
    fn name(self) -> &'static str {
        match self {
            DapType::Byte => "Byte",
            DapType::Int16 => "Int16",
            DapType::UInt16 => "UInt16",
            DapType::Int32 => "Int32",
            DapType::UInt32 => "UInt32",
            DapType::Float32 => "Float32",
            DapType::Float64 => "Float64",
            DapType::Str => "String",
        }
    }

    /// XDR bytes per element (strings: an estimate for the size cap).
    fn xdr_size(self) -> u64 {
        match self {
            DapType::Byte => 1,
            DapType::Float64 => 8,
            DapType::Str => 8,
            _ => 4,
        }
    }
}

/// The DAP2 type a netCDF type is served as, as THREDDS maps them: int8 and uint8 (and
/// bool) as `Byte` (int8 with `_Unsigned = "false"`, which netCDF-C and netCDF-Java read
/// back as signed), char arrays and strings as `String`. DAP2 has no 64-bit integers:
/// int64 is served as `Int32` and uint64 as `UInt32`, and reading a value outside that
/// range is an error (never a wrapped value). Fixed-width numpy strings and datetimes
/// (Zarr sources) are not served.
pub fn dap_type(d: DType) -> Option<DapType> {
    Some(match d {
        DType::I8 | DType::U8 | DType::Bool => DapType::Byte,
        DType::I16 => DapType::Int16,
        DType::U16 => DapType::UInt16,
        DType::I32 | DType::I64 => DapType::Int32,
        DType::U32 | DType::U64 => DapType::UInt32,
        DType::F32 => DapType::Float32,
        DType::F64 => DapType::Float64,
        DType::Char | DType::Str => DapType::Str,
        _ => return None,
    })
}

/// A variable as DAP2 sees it.
#[derive(Clone, Debug)]
pub struct DapVar {
    /// The served variable.
    pub var: Arc<Variable>,
    /// Its DAP2 type.
    pub ty: DapType,
    /// DAP dimensions (a char array's last dimension is the string length, not a dimension).
    pub dims: Vec<(String, u64)>,
    /// Coordinate variables of each dimension, when the variable is a Grid.
    pub maps: Option<Vec<Arc<Variable>>>,
}

/// The variables of the root group DAP2 can serve, in order (DAP2 has no groups).
pub fn variables(ds: &Dataset) -> Vec<DapVar> {
    let root = &ds.root.vars;
    let dap_dims = |v: &Variable| -> Vec<(String, u64)> {
        let n = if v.dtype == DType::Char {
            v.dims.len().saturating_sub(1)
        } else {
            v.dims.len()
        };
        v.dims
            .iter()
            .cloned()
            .zip(v.shape.iter().copied())
            .take(n)
            .collect()
    };
    let coord = |name: &str| -> Option<Arc<Variable>> {
        root.iter()
            .find(|c| c.name == name && c.dims.len() == 1 && c.dims[0] == name)
            .filter(|c| matches!(dap_type(c.dtype), Some(t) if t != DapType::Str))
            .cloned()
    };
    root.iter()
        .filter_map(|v| {
            let ty = dap_type(v.dtype)?;
            let dims = dap_dims(v);
            let is_coord = v.dims.len() == 1 && v.dims[0] == v.name;
            let maps = if ty != DapType::Str && !is_coord && !dims.is_empty() {
                dims.iter().map(|(d, _)| coord(d)).collect::<Option<Vec<_>>>()
            } else {
                None
            };
            Some(DapVar {
                var: v.clone(),
                ty,
                dims,
                maps,
            })
        })
        .collect()
}

/// One array of a response: what is read and how it is declared.
#[derive(Clone, Debug)]
pub struct ArrayOut {
    /// Variable read.
    pub var: Arc<Variable>,
    /// DAP2 type.
    pub ty: DapType,
    /// Declared name.
    pub name: String,
    /// DAP dimension names.
    pub dims: Vec<String>,
    /// Selection along each DAP dimension.
    pub slices: Vec<Slice>,
}

impl ArrayOut {
    fn elements(&self) -> u64 {
        self.slices.iter().map(Slice::count).product()
    }

    fn decl(&self, out: &mut String, indent: usize) {
        let _ = write!(out, "{:indent$}{} {}", "", self.ty.name(), self.name);
        for (d, s) in self.dims.iter().zip(&self.slices) {
            let _ = write!(out, "[{} = {}]", d, s.count());
        }
        out.push_str(";\n");
    }
}

/// A top-level item of a response.
#[derive(Clone, Debug)]
pub enum Item {
    /// A plain array (or scalar).
    Array(ArrayOut),
    /// A Grid: the array and one map vector per dimension.
    Grid {
        /// Grid name.
        name: String,
        /// The data array.
        array: ArrayOut,
        /// Map vectors, in dimension order.
        maps: Vec<ArrayOut>,
    },
    /// Some members of a Grid (`tas.lat`), declared as a Structure as libdap does.
    Structure {
        /// Grid name.
        name: String,
        /// The projected members, in Grid order.
        members: Vec<ArrayOut>,
    },
}

impl Item {
    fn arrays(&self) -> Vec<&ArrayOut> {
        match self {
            Item::Array(a) => vec![a],
            Item::Grid { array, maps, .. } => std::iter::once(array).chain(maps).collect(),
            Item::Structure { members, .. } => members.iter().collect(),
        }
    }
}

fn array_out(v: &Arc<Variable>, name: &str, dims: &[(String, u64)], slices: Vec<Slice>) -> Option<ArrayOut> {
    Some(ArrayOut {
        var: v.clone(),
        ty: dap_type(v.dtype)?,
        name: name.to_string(),
        dims: dims.iter().map(|(d, _)| d.clone()).collect(),
        slices,
    })
}

/// Checks written hyperslabs against the dimensions (all or none must be given).
fn check_slices(what: &str, dims: &[(String, u64)], slices: &[Slice]) -> Result<Vec<Slice>, DapError> {
    if slices.is_empty() {
        if dims.iter().any(|(_, n)| *n == 0) {
            return Err(DapError::bad(format!(
                "'{what}' has a dimension of length 0; nothing to send"
            )));
        }
        return Ok(dims.iter().map(|(_, n)| Slice::all(*n)).collect());
    }
    if slices.len() != dims.len() {
        return Err(DapError::bad(format!(
            "'{what}' has {} dimensions, the constraint gives {} hyperslabs",
            dims.len(),
            slices.len()
        )));
    }
    for ((d, n), s) in dims.iter().zip(slices) {
        if s.stop >= *n {
            return Err(DapError::bad(format!(
                "index {} out of range for dimension '{d}' of '{what}' (length {n})",
                s.stop
            )));
        }
    }
    Ok(slices.to_vec())
}

/// Resolves projections against the dataset: the items of the response, in order (every
/// variable when `projections` is empty).
pub fn resolve(ds: &Dataset, projections: &[Projection]) -> Result<Vec<Item>, DapError> {
    let vars = variables(ds);
    let find = |name: &str| {
        vars.iter()
            .find(|v| v.var.name == name)
            .ok_or_else(|| DapError::missing(format!("no variable '{name}' in dataset '{}'", ds.name)))
    };
    let whole = |v: &DapVar, slices: &[Slice]| -> Result<Item, DapError> {
        let sl = check_slices(&v.var.name, &v.dims, slices)?;
        let array = array_out(&v.var, &v.var.name, &v.dims, sl.clone())
            .ok_or_else(|| DapError::missing(format!("variable '{}' has no DAP2 type", v.var.name)))?;
        Ok(match &v.maps {
            None => Item::Array(array),
            Some(maps) => Item::Grid {
                name: v.var.name.clone(),
                maps: maps
                    .iter()
                    .zip(&v.dims)
                    .zip(&sl)
                    .filter_map(|((m, d), s)| array_out(m, &m.name, std::slice::from_ref(d), vec![*s]))
                    .collect(),
                array,
            },
        })
    };
    if projections.is_empty() {
        return vars.iter().map(|v| whole(v, &[])).collect();
    }
    let mut items: Vec<Item> = Vec::new();
    for p in projections {
        let v = find(&p.var)?;
        let item = match &p.member {
            None => whole(v, &p.slices)?,
            Some(m) => {
                let Some(maps) = &v.maps else {
                    return Err(DapError::missing(format!(
                        "'{}' is not a Grid here, so it has no member '{m}'",
                        p.var
                    )));
                };
                let member = if *m == v.var.name {
                    let sl = check_slices(&format!("{}.{m}", p.var), &v.dims, &p.slices)?;
                    array_out(&v.var, m, &v.dims, sl)
                } else {
                    let i =
                        v.dims.iter().position(|(d, _)| d == m).ok_or_else(|| {
                            DapError::missing(format!("Grid '{}' has no member '{m}'", p.var))
                        })?;
                    let d = std::slice::from_ref(&v.dims[i]);
                    let sl = check_slices(&format!("{}.{m}", p.var), d, &p.slices)?;
                    array_out(&maps[i], m, d, sl)
                };
                let member = member.ok_or_else(|| DapError::missing(format!("no DAP2 type for '{m}'")))?;
                Item::Structure {
                    name: p.var.clone(),
                    members: vec![member],
                }
            }
        };
        merge(&mut items, item, v);
    }
    Ok(items)
}

/// Adds an item, joining members of the same Grid into one Structure (in Grid order).
fn merge(items: &mut Vec<Item>, item: Item, v: &DapVar) {
    let Item::Structure { name, members } = &item else {
        items.push(item);
        return;
    };
    let order = |a: &ArrayOut| {
        if a.name == v.var.name {
            0
        } else {
            1 + v.dims.iter().position(|(d, _)| *d == a.name).unwrap_or(0)
        }
    };
    for it in items.iter_mut() {
        if let Item::Structure { name: n, members: ms } = it
            && n == name
        {
            for m in members {
                ms.retain(|x| x.name != m.name);
                ms.push(m.clone());
            }
            ms.sort_by_key(order);
            return;
        }
    }
    items.push(item);
}

/// The DDS of the items, named after the dataset.
pub fn dds(ds_name: &str, items: &[Item]) -> String {
    let mut out = String::from("Dataset {\n");
    for it in items {
        match it {
            Item::Array(a) => a.decl(&mut out, 4),
            Item::Grid { name, array, maps } => {
                out.push_str("    Grid {\n      ARRAY:\n");
                array.decl(&mut out, 8);
                out.push_str("      MAPS:\n");
                for m in maps {
                    m.decl(&mut out, 8);
                }
                let _ = writeln!(out, "    }} {name};");
            }
            Item::Structure { name, members } => {
                out.push_str("    Structure {\n");
                for m in members {
                    m.decl(&mut out, 8);
                }
                let _ = writeln!(out, "    }} {name};");
            }
        }
    }
    let _ = writeln!(out, "}} {ds_name};");
    out
}

/// A DAS string literal.
fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

fn fmt_f64(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        }
    } else if x != 0.0 && (x.abs() >= 1e16 || x.abs() < 1e-4) {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}

fn fmt_f32(x: f32) -> String {
    if x.is_finite() && x != 0.0 && (x.abs() >= 1e16 || x.abs() < 1e-4) {
        format!("{x:e}")
    } else if x.is_finite() {
        format!("{x}")
    } else {
        fmt_f64(f64::from(x))
    }
}

/// Attributes whose values are in the variable's own units and type (CF).
const VALUE_ATTRS: &[&str] = &[
    "missing_value",
    "valid_min",
    "valid_max",
    "valid_range",
    "actual_range",
];

fn int_fits(t: DapType, x: i128) -> bool {
    let (lo, hi): (i128, i128) = match t {
        DapType::Byte => (0, 255),
        DapType::Int16 => (i16::MIN.into(), i16::MAX.into()),
        DapType::UInt16 => (0, u16::MAX.into()),
        DapType::Int32 => (i32::MIN.into(), i32::MAX.into()),
        DapType::UInt32 => (0, u32::MAX.into()),
        _ => return false,
    };
    (lo..=hi).contains(&x)
}

/// One attribute line: `Type name v1, v2;`.
fn attr_line(
    out: &mut String,
    indent: usize,
    name: &str,
    v: &AttrValue,
    var_ty: Option<DapType>,
    var_dtype: Option<DType>,
) {
    let (ty, vals): (&str, Vec<String>) = match v {
        AttrValue::Str(s) => ("String", vec![quote(s)]),
        AttrValue::Strs(s) => ("String", s.iter().map(|x| quote(x)).collect()),
        AttrValue::Ints(_) | AttrValue::UInts(_) => {
            let xs: Vec<i128> = match v {
                AttrValue::Ints(x) => x.iter().map(|&i| i128::from(i)).collect(),
                AttrValue::UInts(x) => x.iter().map(|&i| i128::from(i)).collect(),
                _ => vec![],
            };
            let signed_byte = var_dtype == Some(DType::I8);
            let pick = [var_ty, Some(DapType::Int32), Some(DapType::UInt32)]
                .into_iter()
                .flatten()
                .find(|t| !(signed_byte && *t == DapType::Byte) && xs.iter().all(|x| int_fits(*t, *x)));
            match pick {
                Some(t) => (
                    t.name(),
                    xs.iter().map(std::string::ToString::to_string).collect(),
                ),
                None => ("Float64", xs.iter().map(|x| fmt_f64(*x as f64)).collect()),
            }
        }
        AttrValue::Floats(_) | AttrValue::Floats32(_) => {
            // the DAS type follows the variable (as before float32 attributes kept their width)
            let xs = v.floats().unwrap_or_default();
            let f32_ok = var_ty == Some(DapType::Float32)
                && VALUE_ATTRS.contains(&name)
                && xs.iter().all(|x| x.is_nan() || f64::from(*x as f32) == *x);
            if f32_ok {
                ("Float32", xs.iter().map(|x| fmt_f32(*x as f32)).collect())
            } else {
                ("Float64", xs.iter().map(|x| fmt_f64(*x)).collect())
            }
        }
    };
    if vals.is_empty() {
        return;
    }
    let _ = writeln!(out, "{:indent$}{ty} {name} {};", "", vals.join(", "));
}

/// The `_FillValue` line, in the variable's own DAP type (netCDF-C requires that).
fn fill_line(out: &mut String, v: &Variable, ty: DapType) {
    let Some(f) = v.fill_attr else { return };
    let val = match (ty, f) {
        (DapType::Str, _) => return,
        (DapType::Float32, s) => fmt_f32(s.as_f64() as f32),
        (DapType::Float64, s) => fmt_f64(s.as_f64()),
        // A signed byte's fill as its unsigned bits (the type is Byte; `_Unsigned` says signed).
        (DapType::Byte, Scalar::Int(i)) => (i as u8).to_string(),
        (_, Scalar::Int(i)) => i.to_string(),
        (_, Scalar::UInt(u)) => u.to_string(),
        (_, Scalar::Float(x)) => fmt_f64(x),
    };
    let _ = writeln!(out, "        {} _FillValue {val};", ty.name());
}

/// The DAS: every served variable's attributes, then the global ones as `NC_GLOBAL`.
pub fn das(ds: &Dataset) -> String {
    let mut out = String::from("Attributes {\n");
    for v in variables(ds) {
        let _ = writeln!(out, "    {} {{", v.var.name);
        fill_line(&mut out, &v.var, v.ty);
        for (name, value) in &v.var.attrs.0 {
            attr_line(&mut out, 8, name, value, Some(v.ty), Some(v.var.dtype));
        }
        // DAP2's Byte has no sign; netCDF-C reads it as signed unless told otherwise.
        match v.var.dtype {
            DType::I8 => out.push_str("        String _Unsigned \"false\";\n"),
            DType::U8 | DType::Bool => out.push_str("        String _Unsigned \"true\";\n"),
            _ => {}
        }
        if v.var.dtype == DType::Char
            && let (Some(d), Some(n)) = (v.var.dims.last(), v.var.shape.last())
        {
            let _ = write!(
                out,
                "        DODS {{\n            Int32 strlen {n};\n            String dimName {};\n        }}\n",
                quote(d)
            );
        }
        out.push_str("    }\n");
    }
    out.push_str("    NC_GLOBAL {\n");
    for (name, value) in &ds.root.attrs.0 {
        attr_line(&mut out, 8, name, value, None, None);
    }
    out.push_str("    }\n");
    // netCDF-C (and so ncdump, cdo, NCO) marks the dimension UNLIMITED from this, as it
    // does for THREDDS and Hyrax; DAP2 has one unlimited dimension at most.
    if let Some(u) = ds.root.unlimited.first() {
        let _ = write!(
            out,
            "    DODS_EXTRA {{\n        String Unlimited_Dimension {};\n    }}\n",
            quote(u)
        );
    }
    out.push_str("}\n");
    out
}

/// XDR bytes the items' values take (strings estimated), for the size cap.
pub fn response_size(items: &[Item]) -> u64 {
    items
        .iter()
        .flat_map(Item::arrays)
        .map(|a| a.elements().saturating_mul(a.ty.xdr_size()).saturating_add(8))
        .fold(0u64, u64::saturating_add)
}

/// Refuses a response above `limit` bytes (HTTP 413).
pub fn check_size(items: &[Item], limit: u64) -> Result<(), DapError> {
    let n = response_size(items);
    if n > limit {
        return Err(DapError {
            status: 413,
            message: format!(
                "the request selects about {n} bytes, above this server's limit of {limit}; select a hyperslab"
            ),
        });
    }
    Ok(())
}

/// Calls `f` with every index of the C-order grid `counts` (once, with `[]`, for no
/// dimensions; never for an empty grid).
fn for_each_index(counts: &[u64], mut f: impl FnMut(&[u64])) {
    if counts.contains(&0) {
        return;
    }
    let mut idx = vec![0u64; counts.len()];
    loop {
        f(&idx);
        let mut d = counts.len();
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < counts[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// C-order strides (in elements) of a grid of shape `shape`.
fn strides(shape: &[u64]) -> Vec<u64> {
    let mut st = vec![1u64; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        st[d] = st[d + 1] * shape[d + 1];
    }
    st
}

/// Per dimension of a selection, its selected indices grouped by the served chunk they fall
/// in: (first output position, number selected, first index, last index).
type Group = (u64, u64, u64, u64);

fn chunk_groups(var: &Variable, sel: &[Slice]) -> Vec<Vec<Group>> {
    sel.iter()
        .enumerate()
        .map(|(d, s)| {
            let chunk = var.chunks.get(d).copied().unwrap_or(1).max(1);
            let mut g: Vec<Group> = Vec::new();
            for k in 0..s.count() {
                let i = s.start + k * s.stride;
                match g.last_mut() {
                    Some(last) if last.2 / chunk == i / chunk => {
                        last.1 += 1;
                        last.3 = i;
                    }
                    _ => g.push((k, 1, i, i)),
                }
            }
            g
        })
        .collect()
}

/// Every combination of one group per dimension, in C order: one read each.
fn group_combos(groups: &[Vec<Group>]) -> Vec<Vec<usize>> {
    let mut combos: Vec<Vec<usize>> = Vec::new();
    let ngroups: Vec<u64> = groups.iter().map(|g| g.len() as u64).collect();
    for_each_index(&ngroups, |gi| {
        combos.push(gi.iter().map(|i| *i as usize).collect());
    });
    combos
}

/// The region one combination of groups reads: start and count per dimension.
fn combo_region(groups: &[Vec<Group>], gi: &[usize]) -> (Vec<u64>, Vec<u64>) {
    groups
        .iter()
        .zip(gi)
        .map(|(g, i)| (g[*i].2, g[*i].3 - g[*i].2 + 1))
        .unzip()
}

fn read_error(var: &Variable, e: crate::chunk::read::ReadError) -> DapError {
    DapError {
        status: 500,
        message: format!("reading '{}': {e}", var.name),
    }
}

/// Reads every value `a` selects, as [`encode_values`] does, and keeps none: how a `.dods`
/// answer is checked before its headers (see [`MAX_CHECKED_BYTES`]). Each chunk's region is
/// read (fetched, decoded) on the worker pool and dropped at once, so the check holds one
/// decoded chunk per worker, not the piece, its assembled copy and its XDR (three times
/// [`PIECE_BYTES`] per piece checked), and spends nothing on copying or byte-swapping.
/// Stored chunks of local files that decoded before (an earlier answer, a Zarr read) are
/// only read, not decoded ([`crate::pipeline::verify_region`]): a repeated answer is decoded
/// once, while it is sent.
/// 64-bit integers are encoded in full: whether they fit DAP2's 32 bits is in their values.
pub fn check_values(a: &ArrayOut) -> Result<(), DapError> {
    use rayon::prelude::*;
    let v = &a.var;
    if matches!(v.dtype, DType::I64 | DType::U64) {
        return encode_values(a, &mut Vec::new());
    }
    let mut sel = a.slices.clone();
    if v.dtype == DType::Char
        && let Some(n) = v.shape.last()
    {
        sel.push(Slice::all(*n));
    }
    let groups = chunk_groups(v, &sel);
    group_combos(&groups).par_iter().try_for_each(|gi| {
        let (start, count) = combo_region(&groups, gi);
        crate::pipeline::verify_region(v, &start, &count).map_err(|e| read_error(v, e))
    })
}

/// The values selected by `sel` (one slice per dimension of the variable), read per served
/// chunk ([`gather_into`]), little-endian; strings as strings.
pub fn gather(var: &Variable, sel: &[Slice]) -> Result<BlockData, DapError> {
    if var.dtype == DType::Str {
        let groups = chunk_groups(var, sel);
        let combos = group_combos(&groups);
        let out_shape: Vec<u64> = sel.iter().map(Slice::count).collect();
        let n = usize::try_from(out_shape.iter().product::<u64>())
            .map_err(|_| DapError::bad("selection too large"))?;
        let scan = is_scan(var, combos.len());
        let read = |gi: &[usize]| read_combo(var, &groups, gi, scan);
        return gather_strings(sel, &groups, &combos, &out_shape, n, read);
    }
    let mut bytes = pool::take(selected_bytes(var, sel)?)?;
    gather_into(var, sel, &mut bytes, Endian::Little)?;
    Ok(BlockData::Bytes(bytes))
}

/// Bytes of the values `sel` selects of `var` (fixed-size elements), if they may be held.
fn selected_bytes(var: &Variable, sel: &[Slice]) -> Result<usize, DapError> {
    sel.iter()
        .map(Slice::count)
        .try_fold(var.dtype.size() as u64, u64::checked_mul)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| DapError::bad("selection too large"))
}

/// Whether a read of `combos` served chunks of `var` is a scan: a variable served as stored
/// (each served chunk one stored chunk, so the request reads each stored chunk once) whose
/// chunks together decode to more than the decoded-chunk cache holds
/// ([`crate::chunk::cache::scanning`]). What a scan decodes is not kept, so a time series
/// over a long axis neither flushes the chunks other requests reuse nor holds the cache's
/// budget for the few hits it would get itself. Rechunked and derived variables are not:
/// their served chunks share stored chunks, which the cache is for.
fn is_scan(var: &Variable, combos: usize) -> bool {
    let chunk_bytes = var
        .chunks
        .iter()
        .product::<u64>()
        .saturating_mul(var.dtype.size() as u64);
    !crate::pipeline::is_computed(var)
        && (combos as u64).saturating_mul(chunk_bytes) > crate::chunk::cache::cache().budget()
}

/// The region one combination of groups covers, read as a block (within a scan when `scan`).
fn read_combo(var: &Variable, groups: &[Vec<Group>], gi: &[usize], scan: bool) -> Result<Block, DapError> {
    let (start, count) = combo_region(groups, gi);
    let r = if scan {
        crate::chunk::cache::scanning(|| read_region(var, &start, &count))
    } else {
        read_region(var, &start, &count)
    };
    r.map_err(|e| read_error(var, e))
}

/// The values selected by `sel` (one slice per dimension of a variable of fixed-size
/// elements) written into `out` (exactly their bytes; what it holds on entry does not
/// matter) in C order of the selection, each element in byte order `order`. Read per
/// served chunk: each read covers only the selected indices of one chunk along every
/// dimension, in parallel on the worker pool (a time series at a point touches one chunk
/// per step, each decoded whole).
///
/// When each chunk's values are one run of the answer (the selection splits into chunks
/// along its first dimension only, as a whole variable or a series does) they are read
/// straight into it: a selection without strides, decoded into place and byte order
/// ([`crate::pipeline::read_region_into`]), else read and its selected values copied in.
/// Other selections are read per chunk, then put in place. A read of more chunks than the
/// decoded-chunk cache holds is a scan ([`is_scan`]).
pub fn gather_into(var: &Variable, sel: &[Slice], out: &mut [u8], order: Endian) -> Result<(), DapError> {
    use rayon::prelude::*;
    let size = var.dtype.size();
    if var.dtype == DType::Str || selected_bytes(var, sel)? != out.len() {
        return Err(DapError {
            status: 500,
            message: format!(
                "'{}': values gathered into a buffer of another size (bug)",
                var.name
            ),
        });
    }
    let nd = sel.len();
    let groups = chunk_groups(var, sel);
    let out_shape: Vec<u64> = sel.iter().map(Slice::count).collect();
    let combos = group_combos(&groups);
    let scan = is_scan(var, combos.len());
    let swap = order == Endian::Big && size > 1;
    if groups.iter().skip(1).all(|g| g.len() == 1) {
        // each combination (a group along the first dimension) is one run of the answer
        let row = out_shape.iter().skip(1).product::<u64>() as usize * size;
        let mut runs = Vec::with_capacity(combos.len());
        let mut rest = &mut out[..];
        for g in groups.first().map(Vec::as_slice).unwrap_or_default() {
            let (run, tail) = std::mem::take(&mut rest).split_at_mut(g.1 as usize * row);
            runs.push(run);
            rest = tail;
        }
        if groups.is_empty() {
            runs.push(rest);
        }
        return combos.par_iter().zip(runs).try_for_each(|(gi, run)| {
            // no strides within the chunk: the region read is the selection
            let plain = groups
                .iter()
                .zip(gi.iter())
                .all(|(g, i)| g[*i].1 == g[*i].3 - g[*i].2 + 1);
            if plain {
                let (start, count) = combo_region(&groups, gi);
                let r = if scan {
                    crate::chunk::cache::scanning(|| {
                        crate::pipeline::read_region_into(var, &start, &count, run, order)
                    })
                } else {
                    crate::pipeline::read_region_into(var, &start, &count, run, order)
                };
                return r.map_err(|e| read_error(var, e));
            }
            copy_selected(&read_combo(var, &groups, gi, scan)?, &groups, gi, sel, size, run)?;
            if swap {
                byteswap(run, size);
            }
            Ok(())
        });
    }
    // One read per combination of groups; each answers the selected values of its chunk in
    // C order of the selection (a contiguous innermost run is one copy).
    let parts: Vec<Result<Vec<u8>, DapError>> = combos
        .par_iter()
        .map(|gi| {
            let len = (0..nd).map(|d| groups[d][gi[d]].1).product::<u64>() as usize * size;
            let mut part = vec![0u8; len];
            copy_selected(
                &read_combo(var, &groups, gi, scan)?,
                &groups,
                gi,
                sel,
                size,
                &mut part,
            )?;
            Ok(part)
        })
        .collect();
    let ostride = strides(&out_shape);
    for (gi, part) in combos.iter().zip(parts) {
        let part = part?;
        let (outer, inner) = outer_inner(&groups, gi);
        let inner = inner as usize;
        let mut row = 0usize;
        for_each_index(&outer, |j| {
            let t = dst_of(&groups, gi, &ostride, j) * size;
            let s = row * inner * size;
            out[t..t + inner * size].copy_from_slice(&part[s..s + inner * size]);
            row += 1;
        });
    }
    if swap {
        byteswap(out, size);
    }
    Ok(())
}

/// The number of selected indices of one combination of groups per dimension but the last
/// (its rows), and along the last (a row's length).
fn outer_inner(groups: &[Vec<Group>], gi: &[usize]) -> (Vec<u64>, u64) {
    let sel_n: Vec<u64> = groups.iter().zip(gi).map(|(g, i)| g[*i].1).collect();
    match sel_n.split_last() {
        None => (Vec::new(), 1),
        Some((last, outer)) => (outer.to_vec(), *last),
    }
}

/// Element offset in the answer (C order, strides `ostride`) of row `j` of combination `gi`.
fn dst_of(groups: &[Vec<Group>], gi: &[usize], ostride: &[u64], j: &[u64]) -> usize {
    (0..groups.len())
        .map(|d| (groups[d][gi[d]].0 + j.get(d).copied().unwrap_or(0)) * ostride[d])
        .sum::<u64>() as usize
}

/// Copies the selected values of one combination's block (its chunk's region, read whole)
/// into `dst`, in C order of the selection.
fn copy_selected(
    block: &Block,
    groups: &[Vec<Group>],
    gi: &[usize],
    sel: &[Slice],
    size: usize,
    dst: &mut [u8],
) -> Result<(), DapError> {
    let BlockData::Bytes(b) = block.data() else {
        return Err(DapError {
            status: 500,
            message: "strings where numbers were expected".into(),
        });
    };
    let count: Vec<u64> = groups
        .iter()
        .zip(gi)
        .map(|(g, i)| g[*i].3 - g[*i].2 + 1)
        .collect();
    let bstride = strides(&count);
    let (outer, inner) = outer_inner(groups, gi);
    let inner = inner as usize;
    let inner_step = sel.last().map_or(1, |s| s.stride) as usize;
    let row_src = |j: &[u64]| -> usize {
        (0..j.len())
            .map(|d| j[d] * sel[d].stride * bstride[d])
            .sum::<u64>() as usize
    };
    let mut at = 0usize;
    for_each_index(&outer, |j| {
        let s0 = row_src(j) * size;
        if inner_step == 1 {
            dst[at..at + inner * size].copy_from_slice(&b[s0..s0 + inner * size]);
        } else {
            for k in 0..inner {
                let s = s0 + k * inner_step * size;
                dst[at + k * size..at + (k + 1) * size].copy_from_slice(&b[s..s + size]);
            }
        }
        at += inner * size;
    });
    Ok(())
}

/// [`gather`] of strings: per combination, the selected strings, then put in place.
fn gather_strings(
    sel: &[Slice],
    groups: &[Vec<Group>],
    combos: &[Vec<usize>],
    out_shape: &[u64],
    n: usize,
    read: impl Fn(&[usize]) -> Result<Block, DapError> + Sync,
) -> Result<BlockData, DapError> {
    use rayon::prelude::*;
    let parts: Vec<Result<Vec<String>, DapError>> = combos
        .par_iter()
        .map(|gi| {
            let block = read(gi)?;
            let BlockData::Strings(v) = block.data() else {
                return Err(DapError {
                    status: 500,
                    message: "numbers where strings were expected".into(),
                });
            };
            let count: Vec<u64> = groups
                .iter()
                .zip(gi)
                .map(|(g, i)| g[*i].3 - g[*i].2 + 1)
                .collect();
            let bstride = strides(&count);
            let (outer, inner) = outer_inner(groups, gi);
            let inner_step = sel.last().map_or(1, |s| s.stride) as usize;
            let mut out = Vec::new();
            for_each_index(&outer, |j| {
                let s0 = (0..j.len())
                    .map(|d| j[d] * sel[d].stride * bstride[d])
                    .sum::<u64>() as usize;
                for k in 0..inner as usize {
                    out.push(v[s0 + k * inner_step].clone());
                }
            });
            Ok(out)
        })
        .collect();
    let ostride = strides(out_shape);
    let mut strings = vec![String::new(); n];
    for (gi, part) in combos.iter().zip(parts) {
        let part = part?;
        let (outer, inner) = outer_inner(groups, gi);
        let inner = inner as usize;
        let mut row = 0usize;
        for_each_index(&outer, |j| {
            let t = dst_of(groups, gi, &ostride, j);
            for k in 0..inner {
                strings[t + k] = part[row * inner + k].clone();
            }
            row += 1;
        });
    }
    Ok(BlockData::Strings(strings))
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    pad4(out);
}

/// The XDR values of `a`'s selection, without the counts before them or the padding
/// after them (see [`encode`]): what one streamed piece carries.
pub fn encode_values(a: &ArrayOut, out: &mut Vec<u8>) -> Result<(), DapError> {
    let v = &a.var;
    let mut sel = a.slices.clone();
    if v.dtype == DType::Char
        && let Some(n) = v.shape.last()
    {
        sel.push(Slice::all(*n));
    }
    if matches!(v.dtype, DType::I32 | DType::U32 | DType::F32 | DType::F64) {
        // XDR is the same width big-endian: read straight into the piece, in XDR's order
        // (no copy of decoded chunks, no pass to swap them; a reused buffer, see `pool`)
        let mut buf = pool::take(selected_bytes(v, &sel)?)?;
        gather_into(v, &sel, &mut buf, Endian::Big)?;
        if out.is_empty() {
            *out = buf;
        } else {
            out.extend_from_slice(&buf);
            pool::give_back(buf);
        }
        return Ok(());
    }
    let data = gather(v, &sel)?;
    if a.ty == DapType::Str {
        let strings: Vec<String> = match data {
            BlockData::Strings(s) => s,
            BlockData::Bytes(b) => {
                let len = v.shape.last().copied().unwrap_or(1).max(1) as usize;
                b.chunks(len)
                    .map(|row| {
                        let end = row.iter().rposition(|c| *c != 0).map_or(0, |i| i + 1);
                        String::from_utf8_lossy(&row[..end]).into_owned()
                    })
                    .collect()
            }
        };
        for s in &strings {
            put_str(out, s);
        }
        return Ok(());
    }
    let BlockData::Bytes(b) = data else {
        return Err(DapError {
            status: 500,
            message: format!("'{}': strings where numbers were expected", v.name),
        });
    };
    let range_err = |x: String| DapError {
        status: 422,
        message: format!(
            "variable '{}' holds the value {x}, outside DAP2's {} range (DAP2 has no 64-bit integers); read it through Zarr",
            v.name,
            a.ty.name()
        ),
    };
    let size = v.dtype.size();
    out.reserve(b.len() / size * a.ty.xdr_size() as usize);
    // One loop per type (not a type test per element): a whole variable is 10^8 elements.
    match v.dtype {
        DType::I8 | DType::U8 | DType::Bool => out.extend_from_slice(&b),
        DType::I16 => {
            for e in b.chunks_exact(2) {
                out.extend_from_slice(&i32::from(i16::from_le_bytes([e[0], e[1]])).to_be_bytes());
            }
        }
        DType::U16 => {
            for e in b.chunks_exact(2) {
                out.extend_from_slice(&u32::from(u16::from_le_bytes([e[0], e[1]])).to_be_bytes());
            }
        }
        DType::I64 => {
            for e in b.chunks_exact(size) {
                let x = i64::from_le_bytes(e.try_into().unwrap_or([0; 8]));
                let y = i32::try_from(x).map_err(|_| range_err(x.to_string()))?;
                out.extend_from_slice(&y.to_be_bytes());
            }
        }
        DType::U64 => {
            for e in b.chunks_exact(size) {
                let x = u64::from_le_bytes(e.try_into().unwrap_or([0; 8]));
                let y = u32::try_from(x).map_err(|_| range_err(x.to_string()))?;
                out.extend_from_slice(&y.to_be_bytes());
            }
        }
        _ => {
            return Err(DapError {
                status: 500,
                message: format!("'{}': type not served", v.name),
            });
        }
    }
    pool::give_back(b);
    Ok(())
}

/// What precedes an array's values: XDR arrays carry their length (twice for numbers, once
/// for strings); scalars nothing.
fn encode_counts(a: &ArrayOut) -> Result<Vec<u8>, DapError> {
    if a.dims.is_empty() {
        return Ok(Vec::new());
    }
    let c = u32::try_from(a.elements())
        .map_err(|_| DapError::bad(format!("'{}': more than 2^32 elements selected", a.var.name)))?;
    Ok(if a.ty == DapType::Str {
        c.to_be_bytes().to_vec()
    } else {
        [c.to_be_bytes(), c.to_be_bytes()].concat()
    })
}

/// What follows an array's values: Byte values are packed, so their end is padded to 4 bytes
/// (a scalar Byte takes 4 bytes).
fn encode_padding(a: &ArrayOut) -> Vec<u8> {
    if a.ty != DapType::Byte {
        return Vec::new();
    }
    if a.dims.is_empty() {
        vec![0; 3]
    } else {
        vec![0; ((4 - a.elements() % 4) % 4) as usize]
    }
}

/// Appends the XDR encoding of one array (or scalar) of the response: counts, values,
/// padding.
pub fn encode(a: &ArrayOut, out: &mut Vec<u8>) -> Result<(), DapError> {
    out.extend_from_slice(&encode_counts(a)?);
    encode_values(a, out)?;
    out.extend_from_slice(&encode_padding(a));
    Ok(())
}

/// One piece of a streamed `.dods` body.
#[derive(Clone, Debug)]
pub enum Piece {
    /// Bytes known without reading (the DDS, an array's counts, Byte padding).
    Literal(Vec<u8>),
    /// The values of an array over a run of its first dimension ([`encode_values`]).
    Values(ArrayOut),
}

/// A `.dods` body as pieces, in order, and its exact length when it is known before reading
/// (it is unless strings are selected: their lengths are in the data).
#[derive(Clone, Debug)]
pub struct DodsPlan {
    /// The pieces; concatenated they are the body.
    pub pieces: Vec<Piece>,
    /// Bytes of the whole body, for `Content-Length` (a client then detects a body cut short
    /// by a read failing after the headers were sent).
    pub length: Option<u64>,
    /// Whether every value is read before the headers ([`MAX_CHECKED_BYTES`]), strings
    /// (whose answers have no `Content-Length`) by their estimated size.
    pub checked: bool,
}

/// Splits an array's selection along its first dimension into runs of about
/// [`PIECE_BYTES`] of XDR values, each ending on a served-chunk boundary where a run spans
/// whole chunks (so no chunk is read by two pieces). Strings and scalars stay whole.
fn pieces_of(a: &ArrayOut) -> Vec<ArrayOut> {
    if a.ty == DapType::Str {
        return vec![a.clone()];
    }
    let chunk = a.var.chunks.first().copied().unwrap_or(1);
    match split_rows(&a.slices, a.ty.xdr_size(), chunk) {
        None => vec![a.clone()],
        Some(firsts) => firsts
            .into_iter()
            .map(|first| {
                let mut p = a.clone();
                p.slices[0] = first;
                p
            })
            .collect(),
    }
}

/// The first-dimension slices that split a selection (`slices`, of `item_bytes` values)
/// into runs of about [`PIECE_BYTES`], ending on boundaries of the first dimension's chunks
/// (`chunk0` long) where runs span whole chunks; `None` when one run holds it all. Shared by
/// the DAP2 and DAP4 bodies, which stream the same way.
pub(crate) fn split_rows(slices: &[Slice], item_bytes: u64, chunk0: u64) -> Option<Vec<Slice>> {
    let first = slices.first()?;
    let row = slices[1..].iter().map(Slice::count).product::<u64>() * item_bytes.max(1);
    let mut rows = (PIECE_BYTES / row.max(1)).max(1);
    let per_chunk = chunk0.max(1).div_ceil(first.stride);
    if rows >= per_chunk {
        rows -= rows % per_chunk;
    }
    if rows >= first.count() {
        return None;
    }
    let mut out = Vec::new();
    let mut k = 0;
    while k < first.count() {
        let start = first.start + k * first.stride;
        let n = rows.min(first.count() - k);
        out.push(Slice {
            start,
            stride: first.stride,
            stop: start + (n - 1) * first.stride,
        });
        k += n;
    }
    Some(out)
}

/// The `.dods` body as a plan of pieces: the DDS and `Data:\n`, then every array's counts,
/// values (split by [`pieces_of`]) and padding. Refused above [`MAX_STREAMED_BYTES`] and for
/// arrays over 2^32 elements, before anything is read.
pub fn dods_plan(ds_name: &str, items: &[Item]) -> Result<DodsPlan, DapError> {
    check_size(items, MAX_STREAMED_BYTES)?;
    let mut head = dds(ds_name, items).into_bytes();
    head.extend_from_slice(b"Data:\n");
    let mut pieces = vec![Piece::Literal(head)];
    let mut length = Some(0u64);
    for a in items.iter().flat_map(Item::arrays) {
        pieces.push(Piece::Literal(encode_counts(a)?));
        if a.ty == DapType::Str {
            length = None;
        }
        for p in pieces_of(a) {
            pieces.push(Piece::Values(p));
        }
        pieces.push(Piece::Literal(encode_padding(a)));
        if let Some(n) = length.as_mut() {
            *n += a.elements() * a.ty.xdr_size();
        }
    }
    pieces.retain(|p| !matches!(p, Piece::Literal(b) if b.is_empty()));
    if let Some(n) = length.as_mut() {
        *n += pieces
            .iter()
            .map(|p| match p {
                Piece::Literal(b) => b.len() as u64,
                Piece::Values(_) => 0,
            })
            .sum::<u64>();
    }
    let checked = response_size(items) <= MAX_CHECKED_BYTES;
    Ok(DodsPlan {
        pieces,
        length,
        checked,
    })
}

/// The `.dods` body in memory (the pieces of [`dods_plan`] concatenated); the server streams
/// them instead.
pub fn dods(ds_name: &str, items: &[Item]) -> Result<Vec<u8>, DapError> {
    let mut out = Vec::new();
    for p in dods_plan(ds_name, items)?.pieces {
        match p {
            Piece::Literal(b) => out.extend_from_slice(&b),
            Piece::Values(a) => encode_values(&a, &mut out)?,
        }
    }
    Ok(out)
}

/// The `.ascii` body: the DDS, a separator, then each array's values, one row (innermost
/// dimension) per line prefixed with its indices, as libdap's ASCII response.
pub fn ascii(ds_name: &str, items: &[Item]) -> Result<String, DapError> {
    check_size(items, MAX_RESPONSE_BYTES)?;
    let mut out = dds(ds_name, items);
    out.push_str("---------------------------------------------\n");
    for it in items {
        let prefix = match it {
            Item::Array(_) => String::new(),
            Item::Grid { name, .. } | Item::Structure { name, .. } => format!("{name}."),
        };
        for a in it.arrays() {
            let mut buf = Vec::new();
            encode(a, &mut buf)?;
            let values = xdr_values(a, &buf);
            let shape: Vec<u64> = a.slices.iter().map(Slice::count).collect();
            let _ = writeln!(
                out,
                "{prefix}{}{}",
                a.name,
                shape.iter().map(|n| format!("[{n}]")).collect::<String>()
            );
            let row = shape.last().copied().unwrap_or(1).max(1) as usize;
            for (r, chunk) in values.chunks(row).enumerate() {
                if shape.len() > 1 {
                    let mut idx = Vec::new();
                    let mut rem = r as u64;
                    for n in shape[..shape.len() - 1].iter().rev() {
                        idx.push(rem % n);
                        rem /= n;
                    }
                    idx.reverse();
                    out.push_str(&idx.iter().map(|i| format!("[{i}]")).collect::<String>());
                    out.push_str(", ");
                }
                out.push_str(&chunk.join(", "));
                out.push('\n');
            }
            out.push('\n');
        }
    }
    Ok(out)
}

/// Values of an encoded array as text (for `.ascii`).
fn xdr_values(a: &ArrayOut, buf: &[u8]) -> Vec<String> {
    let array = !a.dims.is_empty();
    let n = a.elements() as usize;
    let mut p = if array {
        if a.ty == DapType::Str { 4 } else { 8 }
    } else {
        0
    };
    let mut vals = Vec::with_capacity(n);
    let word = |p: usize| -> [u8; 4] {
        buf.get(p..p + 4)
            .and_then(|s| s.try_into().ok())
            .unwrap_or([0; 4])
    };
    for _ in 0..n {
        let s = match a.ty {
            DapType::Byte => {
                let x = buf.get(p).copied().unwrap_or(0);
                p += 1;
                if a.var.dtype == DType::I8 {
                    (x as i8).to_string()
                } else {
                    x.to_string()
                }
            }
            DapType::Int16 | DapType::Int32 => {
                p += 4;
                i32::from_be_bytes(word(p - 4)).to_string()
            }
            DapType::UInt16 | DapType::UInt32 => {
                p += 4;
                u32::from_be_bytes(word(p - 4)).to_string()
            }
            DapType::Float32 => {
                p += 4;
                fmt_f32(f32::from_be_bytes(word(p - 4)))
            }
            DapType::Float64 => {
                let b: [u8; 8] = buf
                    .get(p..p + 8)
                    .and_then(|s| s.try_into().ok())
                    .unwrap_or([0; 8]);
                p += 8;
                fmt_f64(f64::from_be_bytes(b))
            }
            DapType::Str => {
                let len = u32::from_be_bytes(word(p)) as usize;
                let s = String::from_utf8_lossy(buf.get(p + 4..p + 4 + len).unwrap_or(&[])).into_owned();
                p += 4 + len.div_ceil(4) * 4;
                quote(&s)
            }
        };
        vals.push(s);
    }
    vals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_dap_documents() {
        let e = DapError::bad("bad \"x\"");
        assert_eq!(
            e.body(),
            "Error {\n    code = 400;\n    message = \"bad \\\"x\\\"\";\n};\n"
        );
    }

    #[test]
    fn xdr_strings_and_bytes_are_padded() {
        let mut out = Vec::new();
        put_str(&mut out, "abcde");
        assert_eq!(out, [0, 0, 0, 5, b'a', b'b', b'c', b'd', b'e', 0, 0, 0]);
    }

    #[test]
    fn attribute_types_follow_the_variable() {
        let mut out = String::new();
        attr_line(
            &mut out,
            0,
            "missing_value",
            &AttrValue::Floats(vec![1e20f32 as f64]),
            Some(DapType::Float32),
            Some(DType::F32),
        );
        attr_line(
            &mut out,
            0,
            "scale",
            &AttrValue::Floats(vec![0.1]),
            Some(DapType::Float32),
            Some(DType::F32),
        );
        attr_line(
            &mut out,
            0,
            "big",
            &AttrValue::Ints(vec![1 << 40]),
            Some(DapType::Int16),
            Some(DType::I16),
        );
        attr_line(
            &mut out,
            0,
            "flag",
            &AttrValue::Ints(vec![-3, 4]),
            Some(DapType::Int16),
            Some(DType::I16),
        );
        assert_eq!(
            out,
            "Float32 missing_value 1e20;\nFloat64 scale 0.1;\nFloat64 big 1099511627776;\nInt16 flag -3, 4;\n"
        );
    }
}
