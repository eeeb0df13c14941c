//! OPeNDAP DAP4: the DMR (`.dmr`, XML), the chunked data response (`.dap`) with optional
//! CRC32 checksums, and DAP4 constraint expressions (`dap4.ce`).
//!
//! DAP4 has the types DAP2 lacks (Int8, Int64, UInt64, Char), so every numeric netCDF type is
//! served as itself. Values come from the same chunk-wise [`super::gather`] as DAP2, and are
//! sent little-endian (the chunk headers say so), which is the byte order they are read in:
//! numbers are copied, not converted. Only the root group is served, as in DAP2.
//!
//! Wire format (DAP4 spec, "Data Response"): a sequence of chunks, each a 4-byte big-endian
//! header (flags in the top byte: 1 last chunk, 2 error, 4 little-endian; the byte count in
//! the low 24 bits) and its bytes. The first chunk is the DMR followed by CRLF; the data of
//! each top-level variable follows in DMR order, each followed by its CRC32 unless the request
//! says `dap4.checksum=false` (THREDDS's default, which netCDF-C ≥ 4.9.1 relies on). netCDF-C
//! 4.9.0 assumes checksums unless the first chunk's flag 8 says there are none, so that flag
//! is set whenever they are left out.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use super::constraint::{Slice, percent_decode};
use super::{DapError, MAX_STREAMED_BYTES, fmt_f32, fmt_f64, gather};
use crate::attrs::AttrValue;
use crate::block::BlockData;
use crate::dataset::{Dataset, Variable};
use crate::dtype::{DType, Scalar};

/// Chunk flag: the last chunk of the response.
pub const LAST_CHUNK: u8 = 1;
/// Chunk flag: the chunk holds an error document.
pub const ERR_CHUNK: u8 = 2;
/// Chunk flag: the data is little-endian.
pub const LITTLE_ENDIAN_CHUNK: u8 = 4;
/// First-chunk flag netCDF-C 4.9.0 reads as "no checksums follow the variables".
pub const NOCHECKSUM_CHUNK: u8 = 8;

/// Largest chunk body: the header counts bytes in 24 bits.
pub const MAX_CHUNK: usize = (1 << 24) - 1;

/// Longest `dap4.ce` accepted (bytes, after decoding), and most clauses in it: a constraint
/// is parsed before anything is read, so its size is what bounds the work of parsing.
pub const MAX_CE_BYTES: usize = 64 * 1024;
/// Most `;`-separated clauses in one `dap4.ce`.
pub const MAX_CE_CLAUSES: usize = 1024;

/// DAP4 atomic type name of a netCDF type, or `None` when it is not served (numpy datetimes
/// and fixed-width strings from Zarr sources). `bool` is sent as UInt8 (0/1), as DAP4 has no
/// boolean.
pub fn d4_type(d: DType) -> Option<&'static str> {
    Some(match d {
        DType::I8 => "Int8",
        DType::U8 | DType::Bool => "UInt8",
        DType::I16 => "Int16",
        DType::U16 => "UInt16",
        DType::I32 => "Int32",
        DType::U32 => "UInt32",
        DType::I64 => "Int64",
        DType::U64 => "UInt64",
        DType::F32 => "Float32",
        DType::F64 => "Float64",
        DType::Char => "Char",
        DType::Str => "String",
        _ => return None,
    })
}

/// The parsed query of a DAP4 request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    /// The clauses of `dap4.ce`, in order (empty: every variable).
    pub clauses: Vec<Clause>,
    /// Whether each variable's CRC32 follows its data: yes unless `dap4.checksum=false`, as
    /// THREDDS answers, because netCDF-C since 4.9.1 assumes checksums when its URL does not
    /// say `dap4.checksum=false` (and 4.9.0 reads the first chunk's flag 8 either way).
    pub checksums: bool,
}

impl Default for Query {
    fn default() -> Self {
        Query {
            clauses: Vec::new(),
            checksums: true,
        }
    }
}

/// One clause of a `dap4.ce`: a variable and the slices written after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clause {
    /// Variable name (the leading `/` of a fully qualified root name removed).
    pub var: String,
    /// One per dimension, or none for the whole variable.
    pub slices: Vec<D4Slice>,
}

/// `[start:stride:stop]` as written; `stop` is `None` for `[]`, `[a:]` and `[a:s:]` (to the
/// end of the dimension).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct D4Slice {
    /// First index.
    pub start: u64,
    /// Step (never 0).
    pub stride: u64,
    /// Last index (inclusive), or the end of the dimension.
    pub stop: Option<u64>,
}

/// Parses the raw query string: `dap4.ce` and `dap4.checksum`; other keys (cache busters,
/// client tags) are ignored, as DAP4 servers do.
pub fn parse_query(raw: &str) -> Result<Query, DapError> {
    let mut q = Query::default();
    for part in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let key = percent_decode(k)?;
        let value = || percent_decode(&v.replace('+', " "));
        match key.as_str() {
            "dap4.ce" => q.clauses = parse_ce(&value()?)?,
            "dap4.checksum" => {
                q.checksums = match value()?.to_ascii_lowercase().as_str() {
                    "true" => true,
                    "false" => false,
                    other => {
                        return Err(DapError::bad(format!(
                            "dap4.checksum must be true or false, not '{other}'"
                        )));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(q)
}

/// Parses a (decoded) `dap4.ce`: `;`-separated clauses `/name[start:stride:stop]...`.
/// Filters (`|`), structure projections (`{}`), dimension slices (`/d=[..]`) and functions
/// are refused with a message naming the clause: nothing in a request is evaluated.
pub fn parse_ce(ce: &str) -> Result<Vec<Clause>, DapError> {
    if ce.len() > MAX_CE_BYTES {
        return Err(DapError::bad(format!(
            "dap4.ce is {} bytes, above the limit of {MAX_CE_BYTES}",
            ce.len()
        )));
    }
    let items: Vec<&str> = ce.split(';').map(str::trim).filter(|s| !s.is_empty()).collect();
    if items.len() > MAX_CE_CLAUSES {
        return Err(DapError::bad(format!(
            "dap4.ce has {} clauses, above the limit of {MAX_CE_CLAUSES}",
            items.len()
        )));
    }
    items.into_iter().map(parse_clause).collect()
}

fn parse_clause(item: &str) -> Result<Clause, DapError> {
    if let Some(c) = item
        .chars()
        .find(|&c| matches!(c, '|' | '{' | '}' | '=' | '(' | ')' | '<' | '>' | '!' | ','))
    {
        return Err(DapError::bad(format!(
            "dap4.ce clause '{item}': '{c}' is not supported (only variables and [start:stride:stop] slices, separated by ';')"
        )));
    }
    let open = item.find('[').unwrap_or(item.len());
    let written = item[..open].trim();
    let written = written.strip_prefix('/').unwrap_or(written);
    if written.is_empty() {
        return Err(DapError::bad(format!(
            "dap4.ce clause '{item}' names no variable"
        )));
    }
    // a fully qualified name escapes '/', '.' and '\\' in names with a backslash
    let mut name = String::with_capacity(written.len());
    let mut chars = written.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => name.extend(chars.next()),
            '/' | ']' => {
                return Err(DapError::bad(format!(
                    "dap4.ce clause '{item}': '{written}' is not a root-group variable name (groups are not served)"
                )));
            }
            c => name.push(c),
        }
    }
    let mut slices = Vec::new();
    let mut rest = &item[open..];
    while !rest.is_empty() {
        let Some(r) = rest.strip_prefix('[') else {
            return Err(DapError::bad(format!(
                "dap4.ce clause '{item}': unexpected '{rest}' after the slices"
            )));
        };
        let close = r
            .find(']')
            .ok_or_else(|| DapError::bad(format!("dap4.ce clause '{item}': unclosed '['")))?;
        slices.push(parse_slice(r[..close].trim(), item)?);
        rest = r[close + 1..].trim_start();
    }
    Ok(Clause { var: name, slices })
}

/// `[]`, `[i]`, `[a:b]`, `[a:s:b]`, `[a:]`, `[a:s:]`.
fn parse_slice(s: &str, item: &str) -> Result<D4Slice, DapError> {
    let num = |t: &str| {
        t.trim()
            .parse::<u64>()
            .map_err(|_| DapError::bad(format!("dap4.ce clause '{item}': bad index '{t}' in [{s}]")))
    };
    let stop = |t: &str| -> Result<Option<u64>, DapError> {
        if t.trim().is_empty() {
            Ok(None)
        } else {
            num(t).map(Some)
        }
    };
    let parts: Vec<&str> = s.split(':').collect();
    let (start, stride, stop) = match parts.as_slice() {
        [""] => (0, 1, None),
        [i] => (num(i)?, 1, Some(num(i)?)),
        [a, b] => (num(a)?, 1, stop(b)?),
        [a, st, b] => (num(a)?, num(st)?, stop(b)?),
        _ => {
            return Err(DapError::bad(format!(
                "dap4.ce clause '{item}': malformed slice [{s}] (expected [start:stride:stop])"
            )));
        }
    };
    if stride == 0 {
        return Err(DapError::bad(format!(
            "dap4.ce clause '{item}': stride 0 in [{s}]"
        )));
    }
    if let Some(b) = stop
        && b < start
    {
        return Err(DapError::bad(format!(
            "dap4.ce clause '{item}': slice [{s}] stops ({b}) before it starts ({start})"
        )));
    }
    Ok(D4Slice { start, stride, stop })
}

/// A variable of a DAP4 response and its selection.
#[derive(Clone, Debug)]
pub struct D4Var {
    /// The served variable.
    pub var: Arc<Variable>,
    /// DAP4 type name.
    pub ty: &'static str,
    /// Selection along each dimension (all of them, a char array's string length included).
    pub slices: Vec<Slice>,
}

impl D4Var {
    fn elements(&self) -> u64 {
        self.slices.iter().map(Slice::count).product()
    }

    /// Bytes of the values (strings: 8 bytes of count each, their text not known yet).
    fn value_bytes(&self) -> u64 {
        let size = if self.var.dtype == DType::Str {
            8
        } else {
            self.var.dtype.size() as u64
        };
        self.elements().saturating_mul(size)
    }
}

/// The root-group variables DAP4 serves, in order.
fn served(ds: &Dataset) -> Vec<Arc<Variable>> {
    ds.root
        .vars
        .iter()
        .filter(|v| d4_type(v.dtype).is_some())
        .cloned()
        .collect()
}

/// Resolves the clauses against the dataset (every variable when there are none).
pub fn resolve(ds: &Dataset, clauses: &[Clause]) -> Result<Vec<D4Var>, DapError> {
    let vars = served(ds);
    let make = |v: &Arc<Variable>, slices: Vec<Slice>| D4Var {
        var: v.clone(),
        ty: d4_type(v.dtype).unwrap_or("UInt8"),
        slices,
    };
    if clauses.is_empty() {
        return vars
            .iter()
            .map(|v| {
                if v.shape.contains(&0) {
                    return Err(DapError::bad(format!(
                        "'{}' has a dimension of length 0; name the other variables in dap4.ce",
                        v.name
                    )));
                }
                Ok(make(v, v.shape.iter().map(|n| Slice::all(*n)).collect()))
            })
            .collect();
    }
    let mut out: Vec<D4Var> = Vec::new();
    for c in clauses {
        let v = vars.iter().find(|v| v.name == c.var).ok_or_else(|| {
            DapError::missing(format!(
                "dap4.ce: no variable '{}' in dataset '{}'",
                c.var, ds.name
            ))
        })?;
        let sl = if c.slices.is_empty() {
            if v.shape.contains(&0) {
                return Err(DapError::bad(format!("'{}' has a dimension of length 0", v.name)));
            }
            v.shape.iter().map(|n| Slice::all(*n)).collect()
        } else {
            if c.slices.len() != v.shape.len() {
                return Err(DapError::bad(format!(
                    "dap4.ce: '{}' has {} dimensions, the constraint gives {} slices",
                    v.name,
                    v.shape.len(),
                    c.slices.len()
                )));
            }
            let mut sl = Vec::new();
            for ((s, n), d) in c.slices.iter().zip(&v.shape).zip(&v.dims) {
                let stop = s.stop.unwrap_or(n.saturating_sub(1));
                if *n == 0 || stop >= *n || s.start > stop {
                    return Err(DapError::bad(format!(
                        "dap4.ce: index {} out of range for dimension '{d}' of '{}' (length {n})",
                        stop.max(s.start),
                        v.name
                    )));
                }
                sl.push(Slice {
                    start: s.start,
                    stride: s.stride,
                    stop,
                });
            }
            sl
        };
        // a variable named twice: the later clause wins, at the first one's place
        let item = make(v, sl);
        match out.iter_mut().find(|o| o.var.name == item.var.name) {
            Some(o) => *o = item,
            None => out.push(item),
        }
    }
    Ok(out)
}

fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            '\r' => o.push_str("&#13;"),
            '\t' | '\n' => o.push(c),
            // XML 1.0 cannot carry other control characters, even escaped
            c if (c as u32) < 0x20 => o.push('\u{fffd}'),
            c => o.push(c),
        }
    }
    o
}

fn int_range(ty: &str) -> Option<(i128, i128)> {
    Some(match ty {
        "Int8" => (i8::MIN.into(), i8::MAX.into()),
        "UInt8" => (0, u8::MAX.into()),
        "Int16" => (i16::MIN.into(), i16::MAX.into()),
        "UInt16" => (0, u16::MAX.into()),
        "Int32" => (i32::MIN.into(), i32::MAX.into()),
        "UInt32" => (0, u32::MAX.into()),
        "Int64" => (i64::MIN.into(), i64::MAX.into()),
        "UInt64" => (0, u64::MAX.into()),
        _ => return None,
    })
}

/// Attributes CF gives in the variable's own type.
const VALUE_ATTRS: &[&str] = &[
    "missing_value",
    "valid_min",
    "valid_max",
    "valid_range",
    "actual_range",
];

/// `<Attribute name type><Value>..</Value>..</Attribute>`; integers in the variable's type
/// for the CF value attributes when they fit, else the narrowest of Int32/Int64 (UInt32/UInt64).
fn attribute(out: &mut String, indent: usize, name: &str, v: &AttrValue, var_ty: Option<&str>) {
    let (ty, vals): (&str, Vec<String>) = match v {
        AttrValue::Str(s) => ("String", vec![s.clone()]),
        AttrValue::Strs(s) => ("String", s.clone()),
        AttrValue::Ints(_) | AttrValue::UInts(_) => {
            let xs: Vec<i128> = match v {
                AttrValue::Ints(x) => x.iter().map(|&i| i128::from(i)).collect(),
                AttrValue::UInts(x) => x.iter().map(|&i| i128::from(i)).collect(),
                _ => Vec::new(),
            };
            let own = var_ty.filter(|_| VALUE_ATTRS.contains(&name));
            let ty = [own, Some("Int32"), Some("UInt32"), Some("Int64"), Some("UInt64")]
                .into_iter()
                .flatten()
                .find(|t| int_range(t).is_some_and(|(lo, hi)| xs.iter().all(|x| (lo..=hi).contains(x))))
                .unwrap_or("Float64");
            (ty, xs.iter().map(ToString::to_string).collect())
        }
        AttrValue::Floats32(x) => ("Float32", x.iter().map(|f| fmt_f32(*f)).collect()),
        AttrValue::Floats(x) => {
            let narrow = var_ty == Some("Float32")
                && VALUE_ATTRS.contains(&name)
                && x.iter().all(|f| f.is_nan() || f64::from(*f as f32) == *f);
            if narrow {
                ("Float32", x.iter().map(|f| fmt_f32(*f as f32)).collect())
            } else {
                ("Float64", x.iter().map(|f| fmt_f64(*f)).collect())
            }
        }
    };
    if vals.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "{:indent$}<Attribute name=\"{}\" type=\"{ty}\">",
        "",
        xml_escape(name)
    );
    for x in vals {
        let _ = writeln!(out, "{:indent$}  <Value>{}</Value>", "", xml_escape(&x));
    }
    let _ = writeln!(out, "{:indent$}</Attribute>", "");
}

/// `_FillValue` in the variable's own type (netCDF-C refuses a mismatch).
fn fill_attribute(out: &mut String, v: &Variable, ty: &str) {
    let Some(f) = v.fill_attr else { return };
    let val = match (ty, f) {
        ("Char" | "String", _) => return,
        ("Float32", s) => fmt_f32(s.as_f64() as f32),
        ("Float64", s) => fmt_f64(s.as_f64()),
        (_, Scalar::Int(i)) => i.to_string(),
        (_, Scalar::UInt(u)) => u.to_string(),
        (_, Scalar::Float(x)) => fmt_f64(x),
    };
    let _ = writeln!(
        out,
        "    <Attribute name=\"_FillValue\" type=\"{ty}\">\n      <Value>{val}</Value>\n    </Attribute>"
    );
}

/// How each dimension of the response is declared: shared dimensions keep their names (with
/// the selected length when every variable using them selects the same indices), and a
/// variable whose selection of a shared dimension differs from another's gets anonymous
/// dimensions (all of its dimensions, as clients order mixed named/anonymous ones
/// differently).
struct Dims {
    /// Declared shared dimensions: name → (length in the response, unlimited).
    shared: BTreeMap<String, (u64, bool)>,
    /// Declaration order of the shared dimensions.
    order: Vec<String>,
    /// Per variable (in response order): whether its dimensions are anonymous.
    anonymous: Vec<bool>,
}

fn dims_of(ds: &Dataset, vars: &[D4Var]) -> Dims {
    let mut sel: BTreeMap<&str, Vec<Slice>> = BTreeMap::new();
    for v in vars {
        for (d, s) in v.var.dims.iter().zip(&v.slices) {
            sel.entry(d.as_str()).or_default().push(*s);
        }
    }
    let conflicting = |d: &str| sel.get(d).is_some_and(|ss| ss.iter().any(|s| *s != ss[0]));
    let anonymous: Vec<bool> = vars
        .iter()
        .map(|v| v.var.dims.iter().any(|d| conflicting(d)))
        .collect();
    let mut shared = BTreeMap::new();
    let mut order = Vec::new();
    for (v, anon) in vars.iter().zip(&anonymous) {
        if *anon {
            continue;
        }
        for (d, s) in v.var.dims.iter().zip(&v.slices) {
            if !shared.contains_key(d) {
                let unlimited = ds.root.unlimited.iter().any(|u| u == d);
                shared.insert(d.clone(), (s.count(), unlimited));
                order.push(d.clone());
            }
        }
    }
    // dimensions of the dataset no selected variable uses are still declared (whole), so a
    // whole-dataset DMR lists them all, as the file does
    if vars.len() == served(ds).len() {
        for (d, n) in &ds.root.dims {
            if !shared.contains_key(d) && !sel.contains_key(d.as_str()) {
                let unlimited = ds.root.unlimited.iter().any(|u| u == d);
                shared.insert(d.clone(), (*n, unlimited));
                order.push(d.clone());
            }
        }
    }
    // the source's declaration order first (ncdump lists dimensions in it), then the rest
    let pos = |d: &String| {
        ds.root
            .dims
            .iter()
            .position(|(n, _)| n == d)
            .unwrap_or(usize::MAX)
    };
    order.sort_by_key(|d| pos(d));
    Dims {
        shared,
        order,
        anonymous,
    }
}

/// The DMR of the selected variables (the whole dataset for an unconstrained request). With
/// `ce`, the constraint is recorded as the `dap4.ce` attribute of the dataset, as the spec
/// suggests, so a saved response says what it holds.
pub fn dmr(ds: &Dataset, vars: &[D4Var], ce: Option<&str>) -> String {
    let dims = dims_of(ds, vars);
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<Dataset xmlns=\"http://xml.opendap.org/ns/DAP/4.0#\" dapVersion=\"4.0\" dmrVersion=\"1.0\" name=\"{}\">",
        xml_escape(&ds.name)
    );
    for d in &dims.order {
        let (n, unlimited) = dims.shared[d];
        let unlim = if unlimited {
            " _edu.ucar.isunlimited=\"1\""
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  <Dimension name=\"{}\" size=\"{n}\"{unlim}/>",
            xml_escape(d)
        );
    }
    let present = |name: &str| vars.iter().any(|v| v.var.name == name);
    for (v, anon) in vars.iter().zip(&dims.anonymous) {
        let name = xml_escape(&v.var.name);
        let _ = writeln!(out, "  <{} name=\"{name}\">", v.ty);
        for (d, s) in v.var.dims.iter().zip(&v.slices) {
            if *anon {
                let _ = writeln!(out, "    <Dim size=\"{}\"/>", s.count());
            } else {
                let _ = writeln!(out, "    <Dim name=\"/{}\"/>", xml_escape(d));
            }
        }
        fill_attribute(&mut out, &v.var, v.ty);
        for (k, a) in &v.var.attrs.0 {
            attribute(&mut out, 4, k, a, Some(v.ty));
        }
        // maps: the coordinate variables of the dimensions, when they are in the response
        let is_coord = v.var.dims.len() == 1 && v.var.dims[0] == v.var.name;
        if !is_coord && !*anon && v.ty != "String" && v.ty != "Char" {
            for d in &v.var.dims {
                if present(d) {
                    let _ = writeln!(out, "    <Map name=\"/{}\"/>", xml_escape(d));
                }
            }
        }
        let _ = writeln!(out, "  </{}>", v.ty);
    }
    for (k, a) in &ds.root.attrs.0 {
        attribute(&mut out, 2, k, a, None);
    }
    if let Some(ce) = ce.filter(|c| !c.is_empty()) {
        attribute(&mut out, 2, "dap4.ce", &AttrValue::Str(ce.to_string()), None);
    }
    out.push_str("</Dataset>\n");
    out
}

/// A 4-byte chunk header.
pub fn chunk_header(flags: u8, len: usize) -> [u8; 4] {
    let n = (len as u32).to_be_bytes();
    [flags, n[1], n[2], n[3]]
}

/// Frames `body` as data chunks of at most [`MAX_CHUNK`] bytes (none for an empty body).
pub fn frame(body: &[u8], out: &mut Vec<u8>) {
    for c in body.chunks(MAX_CHUNK) {
        out.extend_from_slice(&chunk_header(LITTLE_ENDIAN_CHUNK, c.len()));
        out.extend_from_slice(c);
    }
}

/// Bytes [`frame`] makes of a body of `n` bytes.
fn framed_len(n: u64) -> u64 {
    n + 4 * n.div_ceil(MAX_CHUNK as u64)
}

/// The values of one streamed piece, little-endian as read (strings: 8-byte count and
/// UTF-8 bytes each), unframed.
pub fn encode_values(v: &D4Var, out: &mut Vec<u8>) -> Result<(), DapError> {
    match gather(&v.var, &v.slices)? {
        BlockData::Bytes(b) => {
            if v.var.dtype == DType::Str {
                return Err(DapError {
                    status: 500,
                    message: format!("'{}': bytes where strings were expected", v.var.name),
                });
            }
            // the gathered buffer is the piece (no copy of it)
            if out.is_empty() {
                *out = b;
            } else {
                out.extend_from_slice(&b);
                super::pool::give_back(b);
            }
        }
        BlockData::Strings(s) => {
            for x in &s {
                out.extend_from_slice(&(x.len() as u64).to_le_bytes());
                out.extend_from_slice(x.as_bytes());
            }
        }
    }
    Ok(())
}

/// One piece of a streamed `.dap` body.
#[derive(Clone, Debug)]
pub enum D4Piece {
    /// Framed bytes known without reading (the DMR chunk, the closing chunk).
    Literal(Vec<u8>),
    /// Values of a run of a variable's first dimension; `index` is the variable's place in
    /// the response (for its checksum), `last` whether the run ends the variable.
    Values {
        /// What to read.
        var: D4Var,
        /// Variable index in the response.
        index: usize,
        /// Whether this is the variable's last piece (its checksum follows when asked for).
        last: bool,
    },
}

/// A `.dap` body as pieces and its exact length when known before reading (not when strings
/// are selected).
#[derive(Clone, Debug)]
pub struct DapPlan {
    /// The pieces, in order.
    pub pieces: Vec<D4Piece>,
    /// Bytes of the whole body, for `Content-Length`.
    pub length: Option<u64>,
    /// Whether each variable's data is followed by its CRC32.
    pub checksums: bool,
}

/// Splits a selection along its first dimension into runs of about [`super::PIECE_BYTES`], ending
/// on served-chunk boundaries where runs span whole chunks.
fn pieces_of(v: &D4Var) -> Vec<D4Var> {
    let size = if v.var.dtype == DType::Str {
        8
    } else {
        v.var.dtype.size() as u64
    };
    let chunk = v.var.chunks.first().copied().unwrap_or(1);
    match super::split_rows(&v.slices, size, chunk) {
        None => vec![v.clone()],
        Some(firsts) => firsts
            .into_iter()
            .map(|first| {
                let mut p = v.clone();
                p.slices[0] = first;
                p
            })
            .collect(),
    }
}

/// The `.dap` body as a plan: the DMR chunk, then each variable's values (framed per piece)
/// and checksum, then an empty last chunk. Refused above [`MAX_STREAMED_BYTES`] before
/// anything is read.
pub fn dap_plan(
    ds: &Dataset,
    vars: &[D4Var],
    ce: Option<&str>,
    checksums: bool,
) -> Result<DapPlan, DapError> {
    let total = vars
        .iter()
        .map(D4Var::value_bytes)
        .fold(0u64, u64::saturating_add);
    if total > MAX_STREAMED_BYTES {
        return Err(DapError {
            status: 413,
            message: format!(
                "the request selects about {total} bytes, above this server's limit of {MAX_STREAMED_BYTES}; select a slice in dap4.ce"
            ),
        });
    }
    let mut doc = dmr(ds, vars, ce).into_bytes();
    doc.extend_from_slice(b"\r\n");
    if doc.len() > MAX_CHUNK {
        return Err(DapError {
            status: 413,
            message: format!(
                "the DMR of this request is {} bytes, more than one DAP4 chunk holds; select fewer variables",
                doc.len()
            ),
        });
    }
    let mut flags = LITTLE_ENDIAN_CHUNK;
    if !checksums {
        flags |= NOCHECKSUM_CHUNK;
    }
    let mut head = chunk_header(flags, doc.len()).to_vec();
    head.extend_from_slice(&doc);
    let mut length = Some(head.len() as u64);
    let mut pieces = vec![D4Piece::Literal(head)];
    for (index, v) in vars.iter().enumerate() {
        if v.var.dtype == DType::Str {
            length = None;
        }
        let runs = pieces_of(v);
        let n = runs.len();
        for (i, p) in runs.into_iter().enumerate() {
            if let Some(l) = length.as_mut() {
                *l += framed_len(p.value_bytes());
            }
            pieces.push(D4Piece::Values {
                var: p,
                index,
                last: i + 1 == n,
            });
        }
        if checksums && let Some(l) = length.as_mut() {
            *l += framed_len(4);
        }
    }
    pieces.push(D4Piece::Literal(
        chunk_header(LITTLE_ENDIAN_CHUNK | LAST_CHUNK, 0).to_vec(),
    ));
    if let Some(l) = length.as_mut() {
        *l += 4;
    }
    Ok(DapPlan {
        pieces,
        length,
        checksums,
    })
}

/// The `.dap` body in memory (the plan's pieces framed, checksums computed as the server's
/// stream does); for tests and small answers.
pub fn dap(ds: &Dataset, vars: &[D4Var], ce: Option<&str>, checksums: bool) -> Result<Vec<u8>, DapError> {
    let plan = dap_plan(ds, vars, ce, checksums)?;
    let mut out = Vec::new();
    let mut crc = crc32fast::Hasher::new();
    for p in plan.pieces {
        match p {
            D4Piece::Literal(b) => out.extend_from_slice(&b),
            D4Piece::Values { var, last, .. } => {
                let mut buf = Vec::new();
                encode_values(&var, &mut buf)?;
                crc.update(&buf);
                frame(&buf, &mut out);
                if last && plan.checksums {
                    let sum = std::mem::take(&mut crc).finalize();
                    frame(&sum.to_le_bytes(), &mut out);
                }
                if last {
                    crc = crc32fast::Hasher::new();
                }
            }
        }
    }
    Ok(out)
}

/// The DAP4 error document (`application/vnd.opendap.dap4.error+xml`).
pub fn error_body(e: &DapError) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error httpcode=\"{}\">\n  <Message>{}</Message>\n</Error>\n",
        e.status,
        xml_escape(&e.message)
    )
}

/// The error chunk that ends a `.dap` body whose data failed after the headers were sent: the
/// error document in a chunk flagged error and last. netCDF-C reads it and reports an error
/// (4.9.0 and the netCDF4 wheel's both crash on a body that just stops); the server then still
/// ends the body short of its `Content-Length` (or without the last chunked-transfer chunk), so
/// clients that ignore the error flag (pydap joins every chunk's bytes as values) fail the
/// transfer instead of decoding the document as data.
pub fn error_chunk(e: &DapError) -> Vec<u8> {
    let doc = error_body(e);
    let doc = &doc.as_bytes()[..doc.len().min(MAX_CHUNK)];
    let mut out = chunk_header(LITTLE_ENDIAN_CHUNK | ERR_CHUNK | LAST_CHUNK, doc.len()).to_vec();
    out.extend_from_slice(doc);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chunk_is_flagged_error_and_last_and_holds_the_document() {
        let c = error_chunk(&DapError {
            status: 500,
            message: "reading 'tas': a.nc: zlib <bad>".into(),
        });
        assert_eq!(c[0], LITTLE_ENDIAN_CHUNK | ERR_CHUNK | LAST_CHUNK);
        let n = usize::from(c[1]) << 16 | usize::from(c[2]) << 8 | usize::from(c[3]);
        assert_eq!(n, c.len() - 4);
        let doc = std::str::from_utf8(&c[4..]).expect("utf-8");
        assert!(doc.contains("<Error httpcode=\"500\">"), "{doc}");
        assert!(doc.contains("zlib &lt;bad&gt;"), "{doc}");
    }

    #[test]
    fn parses_clauses_slices_and_checksum() {
        let q =
            parse_query("dap4.ce=/tas%5B0:2:10%5D%5B3%5D%5B%5D;lat&dap4.checksum=true&x=1").expect("valid");
        assert!(q.checksums);
        assert_eq!(q.clauses.len(), 2);
        assert_eq!(q.clauses[0].var, "tas");
        assert_eq!(
            q.clauses[0].slices,
            vec![
                D4Slice {
                    start: 0,
                    stride: 2,
                    stop: Some(10)
                },
                D4Slice {
                    start: 3,
                    stride: 1,
                    stop: Some(3)
                },
                D4Slice {
                    start: 0,
                    stride: 1,
                    stop: None
                },
            ]
        );
        assert_eq!(q.clauses[1].slices, vec![]);
        assert_eq!(
            parse_ce("a[2:]").expect("open stop")[0].slices[0],
            D4Slice {
                start: 2,
                stride: 1,
                stop: None
            }
        );
        let q = parse_query("").expect("empty");
        assert!(q.clauses.is_empty() && q.checksums);
        assert!(!parse_query("dap4.checksum=false").expect("off").checksums);
    }

    #[test]
    fn refuses_malformed_constraints() {
        for bad in [
            "tas[0:0:3]",
            "tas[3:1]",
            "tas[a]",
            "tas[1",
            "tas|tas>3",
            "/g/tas",
            "s{a}",
            "/time=[0:2]",
            "f(x)",
            "tas[1:2:3:4]",
            "tas]x",
            "tas[1]x",
            "[1]",
        ] {
            assert!(parse_ce(bad).is_err(), "{bad} should be refused");
        }
        assert!(parse_query("dap4.checksum=maybe").is_err());
        assert!(parse_ce(&"a;".repeat(MAX_CE_CLAUSES + 1)).is_err());
    }

    #[test]
    fn chunk_headers_are_big_endian_with_flags_on_top() {
        assert_eq!(
            chunk_header(LITTLE_ENDIAN_CHUNK | LAST_CHUNK, 0x010203),
            [5, 1, 2, 3]
        );
        let mut out = Vec::new();
        frame(&vec![7u8; MAX_CHUNK + 2], &mut out);
        assert_eq!(out.len() as u64, framed_len(MAX_CHUNK as u64 + 2));
        assert_eq!(&out[..4], &[4, 0xff, 0xff, 0xff]);
        assert_eq!(&out[4 + MAX_CHUNK..8 + MAX_CHUNK], &[4, 0, 0, 2]);
    }

    #[test]
    fn errors_are_escaped_xml() {
        let b = error_body(&DapError::bad("no <x> & \"y\""));
        assert!(b.contains("<Error httpcode=\"400\">"));
        assert!(b.contains("no &lt;x&gt; &amp; &quot;y&quot;"));
    }
}
