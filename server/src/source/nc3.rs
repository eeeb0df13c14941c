//! Pure-Rust parser for netCDF-3 file headers (CDF-1 "classic", CDF-2
//! "64-bit offset" and CDF-5 "64-bit data").
//!
//! # Why this exists
//!
//! libnetcdf serialises every call behind one process-wide mutex, so a server
//! answering many concurrent chunk requests through it is effectively
//! single-threaded. For the netCDF-3 family we do not need the library to read
//! data at all: every fixed-size variable is one contiguous big-endian array
//! starting at its `begin` offset, and every record variable stores one slab
//! per record at a fixed stride (`recsize`). Parsing the header once is enough
//! to `pread` any chunk concurrently and without the lock.
//!
//! # Which rules we follow
//!
//! The layout is defined by the netCDF classic-format BNF (and PnetCDF's CDF-5
//! extension of it). Where that grammar is silent we follow what netcdf-c does
//! when it *opens* a file, because netcdf-c wrote almost every file we will
//! serve and its interpretation is the de-facto definition:
//!
//! * The stored `vsize` is **not** used. Per-variable sizes are recomputed from
//!   the dimension lengths (netcdf-c's `NC_var_shape` does the same). The
//!   stored value is capped at 2^32-1 in CDF-1/2 for variables larger than
//!   4 GiB, so it cannot be trusted.
//! * `recsize` is the sum of the per-record sizes of all record variables,
//!   each rounded up to a multiple of 4, except when there is exactly one
//!   record variable: then records are packed without padding.
//! * Fixed-size variables and record variables must each be laid out in
//!   definition order without overlapping each other or the header
//!   (netcdf-c's `NC_check_voffs`). We check this with *unpadded* sizes, which
//!   is slightly more lenient than netcdf-c, so we never reject a file the
//!   library would open.
//!
//! # Hostile input
//!
//! The parser does no I/O: it works on a prefix of the file and asks for a
//! longer one through [`Nc3Error::Truncated`]. Everything read from the input
//! is treated as untrusted: element counts are bounded by the remaining input
//! before anything is allocated, all offset arithmetic is checked, and every
//! variable's data extent is validated against the file length, so offsets
//! computed from a successfully parsed header always lie inside the file.

use std::fmt;

/// List tag that marks an empty (`ABSENT`) list.
const TAG_ABSENT: u32 = 0;
/// List tag of `dim_list`.
const TAG_DIMENSION: u32 = 0x0A;
/// List tag of `var_list`.
const TAG_VARIABLE: u32 = 0x0B;
/// List tag of `gatt_list` / `vatt_list`.
const TAG_ATTRIBUTE: u32 = 0x0C;

/// A prefix length that holds the whole header of most files.
///
/// Callers should read this much for the first attempt. It is also the
/// smallest size [`Nc3Error::Truncated`] asks for, so that a caller starting
/// with a tiny prefix does not crawl forward a few bytes at a time.
pub const SUGGESTED_PREFIX_LEN: u64 = 64 * 1024;

/// External (on-disk) data type of a variable or attribute.
///
/// The last five types only exist in CDF-5 files; a CDF-1/2 header that uses
/// them is rejected as malformed, as netcdf-c does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Nc3Type {
    /// `NC_BYTE` (1): signed 8-bit integer.
    Byte,
    /// `NC_CHAR` (2): 8-bit character (text).
    Char,
    /// `NC_SHORT` (3): signed 16-bit integer.
    Short,
    /// `NC_INT` (4): signed 32-bit integer.
    Int,
    /// `NC_FLOAT` (5): IEEE 754 binary32.
    Float,
    /// `NC_DOUBLE` (6): IEEE 754 binary64.
    Double,
    /// `NC_UBYTE` (7, CDF-5 only): unsigned 8-bit integer.
    UByte,
    /// `NC_USHORT` (8, CDF-5 only): unsigned 16-bit integer.
    UShort,
    /// `NC_UINT` (9, CDF-5 only): unsigned 32-bit integer.
    UInt,
    /// `NC_INT64` (10, CDF-5 only): signed 64-bit integer.
    Int64,
    /// `NC_UINT64` (11, CDF-5 only): unsigned 64-bit integer.
    UInt64,
}

impl Nc3Type {
    /// Size in bytes of one element in the file.
    pub const fn size(self) -> usize {
        match self {
            Self::Byte | Self::Char | Self::UByte => 1,
            Self::Short | Self::UShort => 2,
            Self::Int | Self::Float | Self::UInt => 4,
            Self::Double | Self::Int64 | Self::UInt64 => 8,
        }
    }

    /// Decodes the `nc_type` code stored in the header.
    pub const fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            1 => Self::Byte,
            2 => Self::Char,
            3 => Self::Short,
            4 => Self::Int,
            5 => Self::Float,
            6 => Self::Double,
            7 => Self::UByte,
            8 => Self::UShort,
            9 => Self::UInt,
            10 => Self::Int64,
            11 => Self::UInt64,
            _ => return None,
        })
    }

    /// The `nc_type` code stored in the header (same as netCDF's `NC_*`).
    pub const fn code(self) -> u32 {
        match self {
            Self::Byte => 1,
            Self::Char => 2,
            Self::Short => 3,
            Self::Int => 4,
            Self::Float => 5,
            Self::Double => 6,
            Self::UByte => 7,
            Self::UShort => 8,
            Self::UInt => 9,
            Self::Int64 => 10,
            Self::UInt64 => 11,
        }
    }

    /// Whether the type may only appear in CDF-5 files.
    pub const fn is_cdf5_only(self) -> bool {
        self.code() > 6
    }

    /// CDL name of the type, for messages.
    pub const fn cdl_name(self) -> &'static str {
        match self {
            Self::Byte => "byte",
            Self::Char => "char",
            Self::Short => "short",
            Self::Int => "int",
            Self::Float => "float",
            Self::Double => "double",
            Self::UByte => "ubyte",
            Self::UShort => "ushort",
            Self::UInt => "uint",
            Self::Int64 => "int64",
            Self::UInt64 => "uint64",
        }
    }

    /// [`Self::size`] as `u64`, for offset arithmetic.
    const fn size_u64(self) -> u64 {
        // Sizes are 1..=8, so widening is lossless.
        self.size() as u64
    }
}

impl fmt::Display for Nc3Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.cdl_name())
    }
}

/// Decoded value of an attribute; the values are converted from big-endian.
#[derive(Debug, Clone, PartialEq)]
pub enum Nc3AttrValue {
    /// `NC_BYTE` values.
    Bytes(Vec<i8>),
    /// `NC_CHAR` text: the raw bytes with trailing NULs stripped (C writers
    /// often include the terminator), decoded as lossy UTF-8 because netCDF-3
    /// does not enforce any encoding for attribute text.
    Chars(String),
    /// `NC_SHORT` values.
    Shorts(Vec<i16>),
    /// `NC_INT` values.
    Ints(Vec<i32>),
    /// `NC_FLOAT` values.
    Floats(Vec<f32>),
    /// `NC_DOUBLE` values.
    Doubles(Vec<f64>),
    /// `NC_UBYTE` values (CDF-5).
    UBytes(Vec<u8>),
    /// `NC_USHORT` values (CDF-5).
    UShorts(Vec<u16>),
    /// `NC_UINT` values (CDF-5).
    UInts(Vec<u32>),
    /// `NC_INT64` values (CDF-5).
    Int64s(Vec<i64>),
    /// `NC_UINT64` values (CDF-5).
    UInt64s(Vec<u64>),
}

impl Nc3AttrValue {
    /// The netCDF type the attribute was stored as.
    pub fn nc_type(&self) -> Nc3Type {
        match self {
            Self::Bytes(_) => Nc3Type::Byte,
            Self::Chars(_) => Nc3Type::Char,
            Self::Shorts(_) => Nc3Type::Short,
            Self::Ints(_) => Nc3Type::Int,
            Self::Floats(_) => Nc3Type::Float,
            Self::Doubles(_) => Nc3Type::Double,
            Self::UBytes(_) => Nc3Type::UByte,
            Self::UShorts(_) => Nc3Type::UShort,
            Self::UInts(_) => Nc3Type::UInt,
            Self::Int64s(_) => Nc3Type::Int64,
            Self::UInt64s(_) => Nc3Type::UInt64,
        }
    }

    /// The text of a `NC_CHAR` attribute, `None` for numeric attributes.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Chars(s) => Some(s),
            _ => None,
        }
    }

    /// Decodes `raw` (exactly `nelems * ty.size()` bytes, padding removed).
    fn decode(ty: Nc3Type, raw: &[u8]) -> Self {
        match ty {
            Nc3Type::Byte => Self::Bytes(be_values(raw, i8::from_be_bytes)),
            Nc3Type::Char => {
                let mut text = raw;
                while let [rest @ .., 0] = text {
                    text = rest;
                }
                Self::Chars(String::from_utf8_lossy(text).into_owned())
            }
            Nc3Type::Short => Self::Shorts(be_values(raw, i16::from_be_bytes)),
            Nc3Type::Int => Self::Ints(be_values(raw, i32::from_be_bytes)),
            Nc3Type::Float => Self::Floats(be_values(raw, f32::from_be_bytes)),
            Nc3Type::Double => Self::Doubles(be_values(raw, f64::from_be_bytes)),
            Nc3Type::UByte => Self::UBytes(raw.to_vec()),
            Nc3Type::UShort => Self::UShorts(be_values(raw, u16::from_be_bytes)),
            Nc3Type::UInt => Self::UInts(be_values(raw, u32::from_be_bytes)),
            Nc3Type::Int64 => Self::Int64s(be_values(raw, i64::from_be_bytes)),
            Nc3Type::UInt64 => Self::UInt64s(be_values(raw, u64::from_be_bytes)),
        }
    }
}

/// Converts a big-endian byte string into values of `N` bytes each.
fn be_values<const N: usize, T>(raw: &[u8], from_be: fn([u8; N]) -> T) -> Vec<T> {
    raw.chunks_exact(N)
        // `chunks_exact` only yields slices of length N, so the conversion
        // cannot fail; `filter_map` keeps this panic-free without `unwrap`.
        .filter_map(|chunk| <[u8; N]>::try_from(chunk).ok())
        .map(from_be)
        .collect()
}

/// A dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nc3Dim {
    /// Dimension name (lossy UTF-8).
    pub name: String,
    /// Current length. For the unlimited (record) dimension this is the
    /// number of records, like `nc_inq_dimlen` reports; the file itself
    /// stores 0 there.
    pub len: u64,
    /// Whether this is the unlimited (record) dimension.
    pub unlimited: bool,
}

/// A variable.
#[derive(Debug, Clone, PartialEq)]
pub struct Nc3Var {
    /// Variable name (lossy UTF-8).
    pub name: String,
    /// Indices into [`Nc3Header::dims`], slowest-varying first.
    pub dimids: Vec<usize>,
    /// Variable attributes in file order.
    pub attrs: Vec<(String, Nc3AttrValue)>,
    /// External data type.
    pub nc_type: Nc3Type,
    /// `vsize` exactly as stored in the file. Informational only: it is
    /// capped at 2^32-1 for large CDF-1/2 variables, so layout computations
    /// use [`Nc3Header::slab_bytes`] instead.
    pub vsize: u64,
    /// File offset of the variable's data (of its slab in record 0 for a
    /// record variable).
    pub begin: u64,
    /// Whether the first dimension is the unlimited one, i.e. the data is
    /// interleaved with the other record variables, one slab per record.
    pub is_record: bool,
}

impl Nc3Var {
    /// Looks up a variable attribute by name.
    pub fn attr(&self, name: &str) -> Option<&Nc3AttrValue> {
        find_attr(&self.attrs, name)
    }
}

/// A parsed netCDF-3 header.
#[derive(Debug, Clone, PartialEq)]
pub struct Nc3Header {
    /// Format version byte: 1 (classic), 2 (64-bit offset) or 5 (64-bit data).
    pub version: u8,
    /// Number of records. When the file says STREAMING this has been derived
    /// from the file length (number of complete records present).
    pub numrecs: u64,
    /// Dimensions in definition order; `dimids` index into this.
    pub dims: Vec<Nc3Dim>,
    /// Global attributes in file order.
    pub attrs: Vec<(String, Nc3AttrValue)>,
    /// Variables in definition order.
    pub vars: Vec<Nc3Var>,
    /// Length in bytes of the encoded header; no variable data starts before
    /// this offset.
    pub header_len: u64,
}

fn find_attr<'a>(attrs: &'a [(String, Nc3AttrValue)], name: &str) -> Option<&'a Nc3AttrValue> {
    attrs.iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

/// Why a header could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum Nc3Error {
    /// The input does not start with a netCDF-3 magic number (`CDF` followed
    /// by version 1, 2 or 5). Not an error per se: the file may be HDF5-based
    /// netCDF-4 or something else entirely, and the caller should fall back.
    #[error("not a netCDF-3 file")]
    NotNc3,
    /// The supplied prefix ended inside the header. Re-read a prefix of at
    /// least `needed` bytes and retry. `needed` never exceeds the file length
    /// and always exceeds the length of the prefix that was passed in; it is
    /// a guess that grows geometrically, so a retry may ask again. Callers
    /// should impose their own ceiling on how much they are prepared to read
    /// (a hostile header can legitimately claim to be as long as the file).
    #[error("netCDF-3 header is longer than the bytes supplied; retry with {needed} bytes")]
    Truncated {
        /// Suggested prefix length for the next attempt.
        needed: u64,
    },
    /// The header is inconsistent or does not fit in the file.
    #[error("malformed netCDF-3 header: {0}")]
    Malformed(String),
}

impl Nc3Error {
    /// Prefixes a `Malformed` message with where it happened; other variants
    /// pass through because the caller reacts to them mechanically.
    fn context(self, what: impl fmt::Display) -> Self {
        match self {
            Self::Malformed(msg) => Self::Malformed(format!("{what}: {msg}")),
            other => other,
        }
    }
}

fn malformed(msg: impl Into<String>) -> Nc3Error {
    Nc3Error::Malformed(msg.into())
}

/// Rounds up to the 4-byte alignment used for names, attribute values and
/// variable sizes.
fn pad4(n: u64) -> Option<u64> {
    n.checked_next_multiple_of(4)
}

/// Widens a buffer position; lossless on every platform Rust supports.
fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Parses a netCDF-3 header from `bytes`, a prefix of a file that is
/// `file_len` bytes long.
///
/// On [`Nc3Error::Truncated`] the caller should re-read a prefix of at least
/// `needed` bytes and call again; [`SUGGESTED_PREFIX_LEN`] is a good size for
/// the first read. `file_len` resolves a STREAMING record count and is used to
/// reject headers whose variables point outside the file, so that offsets
/// from a successfully parsed header are always safe to read.
pub fn parse_header(bytes: &[u8], file_len: u64) -> Result<Nc3Header, Nc3Error> {
    let version = check_magic(bytes, file_len)?;
    let mut r = Reader {
        buf: bytes,
        pos: 0,
        file_len,
        version,
    };
    r.take(4)?; // magic, already checked

    let numrecs = r.count().map_err(|e| e.context("numrecs"))?;
    // STREAMING is all ones in the width of the field.
    let streaming = numrecs == r.max_count();
    let dims = r.dim_list()?;
    let attrs = r.att_list().map_err(|e| e.context("global attributes"))?;
    let vars = r.var_list(&dims)?;

    let mut header = Nc3Header {
        version,
        numrecs,
        dims,
        attrs,
        vars,
        header_len: r.pos(),
    };
    header.resolve_and_validate(streaming, file_len)?;
    Ok(header)
}

/// Checks the magic number and returns the version byte.
///
/// Anything that is not `CDF\x01`, `CDF\x02` or `CDF\x05` is `NotNc3`
/// (including unknown versions), because the right reaction is the same:
/// let another reader try.
fn check_magic(bytes: &[u8], file_len: u64) -> Result<u8, Nc3Error> {
    let have = bytes.get(..3).unwrap_or(bytes);
    if !b"CDF".starts_with(have) {
        return Err(Nc3Error::NotNc3);
    }
    match bytes.get(3) {
        Some(&v @ (1 | 2 | 5)) => Ok(v),
        Some(_) => Err(Nc3Error::NotNc3),
        None if file_len < 4 => Err(Nc3Error::NotNc3),
        None => Err(Nc3Error::Truncated {
            needed: SUGGESTED_PREFIX_LEN.min(file_len),
        }),
    }
}

/// Cursor over the header prefix. All reads are bounds-checked and turn
/// running out of input into `Truncated` (more of the file exists) or
/// `Malformed` (the header claims more bytes than the file has).
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    file_len: u64,
    version: u8,
}

impl<'a> Reader<'a> {
    fn pos(&self) -> u64 {
        to_u64(self.pos)
    }

    /// CDF-5 widened counts, lengths, dimension ids and `vsize` to 64 bits.
    fn count_width(&self) -> u64 {
        if self.version == 5 { 8 } else { 4 }
    }

    /// `begin` is 32 bits only in CDF-1.
    fn offset_width(&self) -> u64 {
        if self.version == 1 { 4 } else { 8 }
    }

    fn max_count(&self) -> u64 {
        if self.version == 5 {
            u64::MAX
        } else {
            u64::from(u32::MAX)
        }
    }

    /// Ensures `n` more bytes are available in the prefix.
    fn need(&self, n: u64) -> Result<(), Nc3Error> {
        let end = self
            .pos()
            .checked_add(n)
            .ok_or_else(|| malformed(format!("a length of {n} bytes overflows")))?;
        if end <= to_u64(self.buf.len()) {
            return Ok(());
        }
        if end > self.file_len {
            return Err(malformed(format!(
                "header needs at least {end} bytes but the file has only {}",
                self.file_len
            )));
        }
        // Ask for at least what is known to be missing, but grow
        // geometrically so a long header costs O(log n) retries.
        let grown = to_u64(self.buf.len()).saturating_mul(2).max(SUGGESTED_PREFIX_LEN);
        Err(Nc3Error::Truncated {
            needed: grown.max(end).min(self.file_len),
        })
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], Nc3Error> {
        self.need(n)?;
        let end = usize::try_from(n).ok().and_then(|n| self.pos.checked_add(n));
        // `need` succeeded, so both lookups succeed in practice.
        let slice = end.and_then(|end| self.buf.get(self.pos..end));
        match (slice, end) {
            (Some(s), Some(end)) => {
                self.pos = end;
                Ok(s)
            }
            _ => Err(malformed("internal bounds error")),
        }
    }

    /// Takes `n` bytes plus the padding that rounds them up to 4, returning
    /// only the `n` meaningful bytes.
    fn take_padded(&mut self, n: u64) -> Result<&'a [u8], Nc3Error> {
        let padded = pad4(n).ok_or_else(|| malformed(format!("a length of {n} bytes overflows")))?;
        let s = self.take(padded)?;
        usize::try_from(n)
            .ok()
            .and_then(|n| s.get(..n))
            .ok_or_else(|| malformed("internal bounds error"))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Nc3Error> {
        let s = self.take(to_u64(N))?;
        <[u8; N]>::try_from(s).map_err(|_| malformed("internal bounds error"))
    }

    fn u32(&mut self) -> Result<u32, Nc3Error> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, Nc3Error> {
        self.array().map(u64::from_be_bytes)
    }

    /// A `NON_NEG` field: 32 bits in CDF-1/2, 64 bits in CDF-5.
    fn count(&mut self) -> Result<u64, Nc3Error> {
        if self.version == 5 {
            self.u64()
        } else {
            self.u32().map(u64::from)
        }
    }

    /// A `name`: byte count, bytes, padding to 4.
    fn name(&mut self) -> Result<String, Nc3Error> {
        let n = self.count()?;
        let raw = self.take_padded(n)?;
        // netCDF-3 does not validate name encoding on read; be as lenient.
        Ok(String::from_utf8_lossy(raw).into_owned())
    }

    fn nc_type(&mut self) -> Result<Nc3Type, Nc3Error> {
        let code = self.u32()?;
        let ty = Nc3Type::from_code(code).ok_or_else(|| malformed(format!("unknown nc_type {code}")))?;
        if ty.is_cdf5_only() && self.version != 5 {
            return Err(malformed(format!(
                "type {ty} is only allowed in CDF-5 files, this is CDF-{}",
                self.version
            )));
        }
        Ok(ty)
    }

    /// Reads a list's tag and element count.
    ///
    /// `min_elem` is the smallest encoding of one element; the count is
    /// checked against the remaining input *before* the caller loops over
    /// it, so an absurd count fails immediately (or yields a useful
    /// `Truncated` size) instead of driving a huge loop or allocation.
    fn list_header(&mut self, tag: u32, what: &str, min_elem: u64) -> Result<u64, Nc3Error> {
        let found = self.u32()?;
        let n = self.count()?;
        if found == TAG_ABSENT {
            return if n == 0 {
                Ok(0)
            } else {
                Err(malformed(format!(
                    "{what} list is marked absent but has {n} elements"
                )))
            };
        }
        if found != tag {
            return Err(malformed(format!(
                "expected {what} list tag {tag:#x}, found {found:#x}"
            )));
        }
        let min_bytes = n
            .checked_mul(min_elem)
            .ok_or_else(|| malformed(format!("{n} {what}s cannot fit in any file")))?;
        self.need(min_bytes)
            .map_err(|e| e.context(format_args!("{n} {what}s declared")))?;
        Ok(n)
    }

    fn dim_list(&mut self) -> Result<Vec<Nc3Dim>, Nc3Error> {
        let w = self.count_width();
        let n = self.list_header(TAG_DIMENSION, "dimension", 2 * w)?;
        let mut dims = Vec::new();
        for i in 0..n {
            let name = self
                .name()
                .map_err(|e| e.context(format_args!("dimension #{i}")))?;
            let len = self
                .count()
                .map_err(|e| e.context(format_args!("dimension '{name}'")))?;
            // Length 0 marks the unlimited dimension; its real length
            // (numrecs) is filled in once the whole header is known.
            dims.push(Nc3Dim {
                name,
                len,
                unlimited: len == 0,
            });
        }
        Ok(dims)
    }

    fn att_list(&mut self) -> Result<Vec<(String, Nc3AttrValue)>, Nc3Error> {
        let w = self.count_width();
        let n = self.list_header(TAG_ATTRIBUTE, "attribute", 2 * w + 4)?;
        let mut attrs = Vec::new();
        for i in 0..n {
            let name = self
                .name()
                .map_err(|e| e.context(format_args!("attribute #{i}")))?;
            let value = self
                .attr_value()
                .map_err(|e| e.context(format_args!("attribute '{name}'")))?;
            attrs.push((name, value));
        }
        Ok(attrs)
    }

    fn attr_value(&mut self) -> Result<Nc3AttrValue, Nc3Error> {
        let ty = self.nc_type()?;
        let nelems = self.count()?;
        let nbytes = nelems
            .checked_mul(ty.size_u64())
            .ok_or_else(|| malformed(format!("{nelems} values of type {ty} overflow")))?;
        // `take_padded` bounds the allocation in `decode` by the input length.
        let raw = self.take_padded(nbytes)?;
        Ok(Nc3AttrValue::decode(ty, raw))
    }

    fn var_list(&mut self, dims: &[Nc3Dim]) -> Result<Vec<Nc3Var>, Nc3Error> {
        let w = self.count_width();
        // name count, ndims, empty vatt_list (tag + count), nc_type, vsize, begin
        let min_var = w + w + (4 + w) + 4 + w + self.offset_width();
        let n = self.list_header(TAG_VARIABLE, "variable", min_var)?;
        let mut vars = Vec::new();
        for i in 0..n {
            let name = self
                .name()
                .map_err(|e| e.context(format_args!("variable #{i}")))?;
            let var = self
                .var_body(name.clone(), dims)
                .map_err(|e| e.context(format_args!("variable '{name}'")))?;
            vars.push(var);
        }
        Ok(vars)
    }

    /// Everything of a `var` after its name.
    fn var_body(&mut self, name: String, dims: &[Nc3Dim]) -> Result<Nc3Var, Nc3Error> {
        let ndims = self.count()?;
        let id_bytes = ndims
            .checked_mul(self.count_width())
            .ok_or_else(|| malformed(format!("{ndims} dimensions overflow")))?;
        // Bounds the `dimids` allocation below by the input length.
        self.need(id_bytes)?;
        let mut dimids = Vec::new();
        for pos in 0..ndims {
            let id = self.count()?;
            let dim = usize::try_from(id).ok().and_then(|i| Some((i, dims.get(i)?)));
            let Some((index, dim)) = dim else {
                return Err(malformed(format!(
                    "dimension id {id} out of range (file has {} dimensions)",
                    dims.len()
                )));
            };
            // Only the slowest-varying dimension may be the record dimension;
            // netcdf-c rejects anything else (NC_EUNLIMPOS), and the record
            // layout would be meaningless.
            if dim.unlimited && pos != 0 {
                return Err(malformed(format!(
                    "unlimited dimension '{}' is not the first dimension",
                    dim.name
                )));
            }
            dimids.push(index);
        }
        let is_record = dimids
            .first()
            .and_then(|&d| dims.get(d))
            .is_some_and(|d| d.unlimited);
        let attrs = self.att_list()?;
        let nc_type = self.nc_type()?;
        let vsize = self.count()?;
        let begin = if self.version == 1 {
            u64::from(self.u32()?)
        } else {
            self.u64()?
        };
        Ok(Nc3Var {
            name,
            dimids,
            attrs,
            nc_type,
            vsize,
            begin,
            is_record,
        })
    }
}

impl Nc3Header {
    /// Looks up a variable by name.
    pub fn var(&self, name: &str) -> Option<&Nc3Var> {
        self.vars.iter().find(|v| v.name == name)
    }

    /// Looks up a global attribute by name.
    pub fn attr(&self, name: &str) -> Option<&Nc3AttrValue> {
        find_attr(&self.attrs, name)
    }

    /// Index of the unlimited (record) dimension, if any.
    pub fn record_dim(&self) -> Option<usize> {
        self.dims.iter().position(|d| d.unlimited)
    }

    /// Total bytes of one record: the sum of the 4-byte-padded per-record
    /// sizes of all record variables, except that with exactly one record
    /// variable the records are packed and this is its unpadded slab size
    /// (the classic format's special case).
    ///
    /// Computed from the dimensions, not the stored `vsize` (see the module
    /// docs). Costs O(number of variables); cache it when computing many
    /// offsets. Saturates at `u64::MAX`, which cannot happen for a header
    /// returned by [`parse_header`].
    pub fn recsize(&self) -> u64 {
        self.checked_recsize().unwrap_or(u64::MAX)
    }

    /// Shape of a variable, slowest-varying first; the record dimension has
    /// length `numrecs`. Scalars have an empty shape.
    pub fn shape(&self, var: &Nc3Var) -> Vec<u64> {
        var.dimids
            .iter()
            .map(|&d| match self.dims.get(d) {
                Some(dim) if dim.unlimited => self.numrecs,
                Some(dim) => dim.len,
                None => 0,
            })
            .collect()
    }

    /// Unpadded bytes of one record's slab of a record variable, or of the
    /// whole array of a fixed-size variable: the product of the non-record
    /// dimension lengths times the type size.
    ///
    /// Saturates at `u64::MAX`, which cannot happen for a header returned by
    /// [`parse_header`].
    pub fn slab_bytes(&self, var: &Nc3Var) -> u64 {
        self.checked_slab_bytes(var).unwrap_or(u64::MAX)
    }

    /// [`Self::slab_bytes`] rounded up to a multiple of 4: the `vsize`
    /// netcdf-c computes (and writes, when it fits in the field).
    pub fn padded_slab_bytes(&self, var: &Nc3Var) -> u64 {
        self.checked_slab_bytes(var).and_then(pad4).unwrap_or(u64::MAX)
    }

    /// File offset of record `rec` of a record variable
    /// (`begin + rec * recsize`), or `begin` for a fixed-size variable
    /// (`rec` is ignored).
    ///
    /// Only offsets for `rec < numrecs` are guaranteed to lie inside the
    /// file; larger values saturate instead of wrapping.
    pub fn data_offset(&self, var: &Nc3Var, rec: u64) -> u64 {
        if var.is_record {
            var.begin.saturating_add(rec.saturating_mul(self.recsize()))
        } else {
            var.begin
        }
    }

    fn checked_slab_bytes(&self, var: &Nc3Var) -> Option<u64> {
        let skip = usize::from(var.is_record);
        var.dimids
            .iter()
            .skip(skip)
            .try_fold(var.nc_type.size_u64(), |acc, &d| {
                acc.checked_mul(self.dims.get(d)?.len)
            })
    }

    /// Mirrors netcdf-c's `NC_computeshapes`. Its single-variable test is
    /// "recsize equals the first record variable's padded size", which is
    /// the same as "exactly one record variable" because every padded size
    /// is at least 4.
    fn checked_recsize(&self) -> Option<u64> {
        let mut total = 0u64;
        let mut first: Option<(u64, u64)> = None; // (padded, unpadded)
        for var in self.vars.iter().filter(|v| v.is_record) {
            let slab = self.checked_slab_bytes(var)?;
            let padded = pad4(slab)?;
            total = total.checked_add(padded)?;
            first.get_or_insert((padded, slab));
        }
        match first {
            Some((padded, slab)) if total == padded => Some(slab),
            _ => Some(total),
        }
    }

    /// Post-parse step: sizes, STREAMING numrecs, and the checks that make
    /// every offset derived from the header safe to read.
    fn resolve_and_validate(&mut self, streaming: bool, file_len: u64) -> Result<(), Nc3Error> {
        if self.header_len > file_len {
            return Err(malformed(format!(
                "header is {} bytes but the file has only {file_len}",
                self.header_len
            )));
        }
        // The format has a single record dimension; two would make the
        // record layout ambiguous.
        let unlimited = self.dims.iter().filter(|d| d.unlimited).count();
        if unlimited > 1 {
            return Err(malformed(format!(
                "{unlimited} unlimited dimensions (at most one is allowed)"
            )));
        }

        // Slab sizes once, with overflow checks, so that the saturating
        // public accessors never actually saturate for a parsed header.
        let mut slabs = Vec::with_capacity(self.vars.len());
        for var in &self.vars {
            let slab = self
                .checked_slab_bytes(var)
                .ok_or_else(|| malformed(format!("variable '{}': size overflows 64 bits", var.name)))?;
            slabs.push(slab);
        }
        let recsize = self
            .checked_recsize()
            .ok_or_else(|| malformed("record size overflows 64 bits"))?;

        if streaming {
            self.numrecs = self.records_in_file(&slabs, recsize, file_len);
        }
        let numrecs = self.numrecs;
        for dim in self.dims.iter_mut().filter(|d| d.unlimited) {
            dim.len = numrecs;
        }

        for (var, &slab) in self.vars.iter().zip(&slabs) {
            let end = if var.is_record {
                if numrecs == 0 || slab == 0 {
                    continue;
                }
                (numrecs - 1)
                    .checked_mul(recsize)
                    .and_then(|o| o.checked_add(var.begin))
                    .and_then(|o| o.checked_add(slab))
            } else {
                if slab == 0 {
                    continue;
                }
                var.begin.checked_add(slab)
            };
            match end {
                Some(end) if end <= file_len => {}
                Some(end) => {
                    return Err(malformed(format!(
                        "variable '{}': data ends at byte {end} but the file has only {file_len} bytes",
                        var.name
                    )));
                }
                None => {
                    return Err(malformed(format!(
                        "variable '{}': data extends beyond 2^64 bytes",
                        var.name
                    )));
                }
            }
        }
        // After the extent checks, so that a variable pointing past EOF is
        // reported as such rather than as overlapping its neighbour.
        self.check_order(&slabs)
    }

    /// Number of records present in a STREAMING file: how many times the
    /// record can be repeated before the data runs out. The last record only
    /// needs to reach the end of the last record variable's slab, not its
    /// trailing padding, so a writer that did not pad the final record still
    /// gets all its records counted.
    fn records_in_file(&self, slabs: &[u64], recsize: u64, file_len: u64) -> u64 {
        let recs = || self.vars.iter().zip(slabs).filter(|(v, _)| v.is_record);
        let Some(start) = recs().map(|(v, _)| v.begin).min() else {
            return 0;
        };
        if recsize == 0 {
            return 0;
        }
        let last_needs = recs()
            .map(|(v, &slab)| v.begin.saturating_sub(start).saturating_add(slab))
            .max()
            .unwrap_or(0);
        match file_len
            .checked_sub(start)
            .and_then(|avail| avail.checked_sub(last_needs))
        {
            Some(spare) => (spare / recsize).saturating_add(1),
            None => 0,
        }
    }

    /// Fixed-size variables, then record variables, must be laid out in
    /// definition order after the header without overlapping (netcdf-c's
    /// `NC_computeshapes` and `NC_check_voffs`). Overlap means the header is
    /// corrupt; netcdf-c reports `NC_ENOTNC`.
    fn check_order(&self, slabs: &[u64]) -> Result<(), Nc3Error> {
        let mut prev_end = self.header_len;
        let mut prev_name: Option<&str> = None;
        for pass_record in [false, true] {
            for (var, &slab) in self.vars.iter().zip(slabs) {
                if var.is_record != pass_record {
                    continue;
                }
                if var.begin < prev_end {
                    let after = match prev_name {
                        Some(p) => format!("the data of '{p}', which ends at byte {prev_end}"),
                        None => format!("the header, which ends at byte {prev_end}"),
                    };
                    return Err(malformed(format!(
                        "variable '{}': data begins at byte {}, overlapping {after}",
                        var.name, var.begin
                    )));
                }
                // Extents were checked against the file length already,
                // except for record variables when there are no records.
                prev_end = var.begin.saturating_add(slab);
                prev_name = Some(&var.name);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---------------------------------------------------------------------
    // A tiny netCDF-3 writer. It lays files out the way netcdf-c's
    // `NC_begins` does (fixed variables back to back after the header, then
    // the record variables, padded sizes, the single-record-variable
    // special case), independently of the parser's own arithmetic.
    // ---------------------------------------------------------------------

    struct RawAttr {
        name: &'static str,
        ty: Nc3Type,
        nelems: u64,
        /// Unpadded value bytes.
        data: Vec<u8>,
    }

    struct VarSpec {
        name: &'static str,
        dimids: Vec<u64>,
        attrs: Vec<RawAttr>,
        ty: Nc3Type,
        /// Overrides of the computed layout, for malformed-input tests.
        begin: Option<u64>,
        vsize: Option<u64>,
    }

    struct Spec {
        version: u8,
        /// Written as-is (use `u64::MAX` for STREAMING).
        numrecs: u64,
        dims: Vec<(&'static str, u64)>,
        gatts: Vec<RawAttr>,
        vars: Vec<VarSpec>,
    }

    fn var(name: &'static str, ty: Nc3Type, dimids: &[u64]) -> VarSpec {
        VarSpec {
            name,
            dimids: dimids.to_vec(),
            attrs: Vec::new(),
            ty,
            begin: None,
            vsize: None,
        }
    }

    fn raw_attr(name: &'static str, ty: Nc3Type, nelems: u64, data: &[u8]) -> RawAttr {
        RawAttr {
            name,
            ty,
            nelems,
            data: data.to_vec(),
        }
    }

    /// Encodes a typed value the way it appears in a file.
    fn attr(name: &'static str, value: &Nc3AttrValue) -> RawAttr {
        fn be<T: Copy, const N: usize>(v: &[T], f: fn(T) -> [u8; N]) -> (u64, Vec<u8>) {
            (v.len() as u64, v.iter().flat_map(|&x| f(x)).collect())
        }
        let (nelems, data) = match value {
            Nc3AttrValue::Bytes(v) => be(v, i8::to_be_bytes),
            Nc3AttrValue::Chars(s) => (s.len() as u64, s.as_bytes().to_vec()),
            Nc3AttrValue::Shorts(v) => be(v, i16::to_be_bytes),
            Nc3AttrValue::Ints(v) => be(v, i32::to_be_bytes),
            Nc3AttrValue::Floats(v) => be(v, f32::to_be_bytes),
            Nc3AttrValue::Doubles(v) => be(v, f64::to_be_bytes),
            Nc3AttrValue::UBytes(v) => be(v, u8::to_be_bytes),
            Nc3AttrValue::UShorts(v) => be(v, u16::to_be_bytes),
            Nc3AttrValue::UInts(v) => be(v, u32::to_be_bytes),
            Nc3AttrValue::Int64s(v) => be(v, i64::to_be_bytes),
            Nc3AttrValue::UInt64s(v) => be(v, u64::to_be_bytes),
        };
        RawAttr {
            name,
            ty: value.nc_type(),
            nelems,
            data,
        }
    }

    struct W {
        version: u8,
        out: Vec<u8>,
    }

    impl W {
        fn u32(&mut self, x: u32) {
            self.out.extend_from_slice(&x.to_be_bytes());
        }
        fn u64(&mut self, x: u64) {
            self.out.extend_from_slice(&x.to_be_bytes());
        }
        fn count(&mut self, x: u64) {
            if self.version == 5 {
                self.u64(x);
            } else {
                self.u32(x as u32);
            }
        }
        fn offset(&mut self, x: u64) {
            if self.version == 1 {
                self.u32(x as u32);
            } else {
                self.u64(x);
            }
        }
        fn pad(&mut self) {
            while !self.out.len().is_multiple_of(4) {
                self.out.push(0);
            }
        }
        fn name(&mut self, s: &str) {
            self.count(s.len() as u64);
            self.out.extend_from_slice(s.as_bytes());
            self.pad();
        }
        fn list_tag(&mut self, tag: u32, n: usize) {
            self.u32(if n == 0 { TAG_ABSENT } else { tag });
            self.count(n as u64);
        }
        fn attrs(&mut self, attrs: &[RawAttr]) {
            self.list_tag(TAG_ATTRIBUTE, attrs.len());
            for a in attrs {
                self.name(a.name);
                self.u32(a.ty.code());
                self.count(a.nelems);
                self.out.extend_from_slice(&a.data);
                self.pad();
            }
        }
    }

    fn encode(spec: &Spec, layout: &[(u64, u64)]) -> Vec<u8> {
        let mut w = W {
            version: spec.version,
            out: b"CDF".to_vec(),
        };
        w.out.push(spec.version);
        w.count(spec.numrecs);
        w.list_tag(TAG_DIMENSION, spec.dims.len());
        for &(name, len) in &spec.dims {
            w.name(name);
            w.count(len);
        }
        w.attrs(&spec.gatts);
        w.list_tag(TAG_VARIABLE, spec.vars.len());
        for (v, &(vsize, begin)) in spec.vars.iter().zip(layout) {
            w.name(v.name);
            w.count(v.dimids.len() as u64);
            for &d in &v.dimids {
                w.count(d);
            }
            w.attrs(&v.attrs);
            w.u32(v.ty.code());
            w.count(v.vsize.unwrap_or(vsize));
            w.offset(v.begin.unwrap_or(begin));
        }
        w.out
    }

    struct Built {
        file: Vec<u8>,
        header_len: u64,
        /// (padded vsize, begin) per variable, as laid out by the writer.
        layout: Vec<(u64, u64)>,
        recsize: u64,
    }

    /// Lays out and encodes `spec`; the returned file is zero-filled up to
    /// the end of the data for `numrecs` records.
    fn build(spec: &Spec) -> Built {
        let is_rec = |v: &VarSpec| {
            v.dimids
                .first()
                .and_then(|&d| spec.dims.get(d as usize))
                .is_some_and(|d| d.1 == 0)
        };
        let unpadded = |v: &VarSpec| {
            let skip = usize::from(is_rec(v));
            v.dimids[skip..]
                .iter()
                .map(|&d| spec.dims.get(d as usize).map_or(1, |d| d.1))
                .product::<u64>()
                * v.ty.size() as u64
        };
        let placeholder = vec![(0, 0); spec.vars.len()];
        let header_len = encode(spec, &placeholder).len() as u64;
        let mut layout = placeholder;
        let mut at = header_len;
        for (i, v) in spec.vars.iter().enumerate() {
            if !is_rec(v) {
                let vsize = unpadded(v).next_multiple_of(4);
                layout[i] = (vsize, at);
                at += vsize;
            }
        }
        let mut recsize = 0;
        let mut last = None;
        for (i, v) in spec.vars.iter().enumerate() {
            if is_rec(v) {
                let vsize = unpadded(v).next_multiple_of(4);
                layout[i] = (vsize, at);
                at += vsize;
                recsize += vsize;
                last = Some(v);
            }
        }
        if let Some(v) = last
            && recsize == unpadded(v).next_multiple_of(4)
        {
            recsize = unpadded(v);
        }
        let records = if spec.numrecs == u64::MAX { 0 } else { spec.numrecs };
        let rec_start = at
            - layout
                .iter()
                .zip(&spec.vars)
                .filter(|(_, v)| is_rec(v))
                .map(|(l, _)| l.0)
                .sum::<u64>();
        let end = if last.is_some() {
            rec_start + records * recsize
        } else {
            at
        };
        let mut file = encode(spec, &layout);
        file.resize(end as usize, 0);
        Built {
            file,
            header_len,
            layout,
            recsize,
        }
    }

    fn parse(file: &[u8]) -> Result<Nc3Header, Nc3Error> {
        parse_header(file, file.len() as u64)
    }

    fn assert_malformed(result: Result<Nc3Header, Nc3Error>, needle: &str) {
        match result {
            Err(Nc3Error::Malformed(msg)) => {
                assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}");
            }
            other => panic!("expected Malformed containing {needle:?}, got {other:?}"),
        }
    }

    /// time(unlimited), x=3, y=2; two fixed and two record variables, one
    /// of each needing padding.
    fn mixed_spec(version: u8, numrecs: u64) -> Spec {
        let mut t = var("time", Nc3Type::Double, &[0]);
        t.attrs.push(attr(
            "units",
            &Nc3AttrValue::Chars("days since 2000-01-01".into()),
        ));
        Spec {
            version,
            numrecs,
            dims: vec![("time", 0), ("x", 3), ("y", 2)],
            gatts: vec![attr("title", &Nc3AttrValue::Chars("mixed".into()))],
            vars: vec![
                var("grid", Nc3Type::Float, &[2, 1]),
                t,
                var("flags", Nc3Type::Byte, &[1]),
                var("s", Nc3Type::Short, &[0, 1]),
            ],
        }
    }

    fn check_mixed(version: u8) {
        let built = build(&mixed_spec(version, 3));
        let h = parse(&built.file).unwrap();
        assert_eq!(h.version, version);
        assert_eq!(h.numrecs, 3);
        assert_eq!(h.header_len, built.header_len);
        assert_eq!(
            h.dims,
            vec![
                Nc3Dim {
                    name: "time".into(),
                    len: 3,
                    unlimited: true
                },
                Nc3Dim {
                    name: "x".into(),
                    len: 3,
                    unlimited: false
                },
                Nc3Dim {
                    name: "y".into(),
                    len: 2,
                    unlimited: false
                },
            ]
        );
        assert_eq!(h.record_dim(), Some(0));
        assert_eq!(h.attr("title").and_then(|a| a.as_str()), Some("mixed"));
        let names: Vec<_> = h.vars.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["grid", "time", "flags", "s"]);

        // Padded per-record sizes 8 (time) + 8 (s: 6 bytes padded).
        assert_eq!(h.recsize(), 16);
        assert_eq!(h.recsize(), built.recsize);

        let grid = h.var("grid").unwrap();
        assert!(!grid.is_record);
        assert_eq!(grid.dimids, [2, 1]);
        assert_eq!(h.shape(grid), [2, 3]);
        assert_eq!(h.slab_bytes(grid), 24);
        assert_eq!(h.data_offset(grid, 0), built.layout[0].1);
        assert_eq!(h.data_offset(grid, 5), built.layout[0].1);
        assert_eq!(grid.begin, h.header_len);

        let flags = h.var("flags").unwrap();
        assert_eq!(h.slab_bytes(flags), 3);
        assert_eq!(h.padded_slab_bytes(flags), 4);
        assert_eq!(flags.vsize, 4);
        assert_eq!(flags.begin, grid.begin + 24);

        let time = h.var("time").unwrap();
        assert!(time.is_record);
        assert_eq!(h.shape(time), [3]);
        assert_eq!(h.slab_bytes(time), 8);
        assert_eq!(
            time.attr("units").and_then(|a| a.as_str()),
            Some("days since 2000-01-01")
        );

        let s = h.var("s").unwrap();
        assert!(s.is_record);
        assert_eq!(h.shape(s), [3, 3]);
        assert_eq!(h.slab_bytes(s), 6);
        assert_eq!(h.padded_slab_bytes(s), 8);
        for (i, v) in h.vars.iter().enumerate() {
            assert_eq!(v.begin, built.layout[i].1, "{}", v.name);
            assert_eq!(v.vsize, built.layout[i].0, "{}", v.name);
        }
        assert_eq!(h.data_offset(s, 0), s.begin);
        assert_eq!(h.data_offset(s, 2), s.begin + 32);
        assert_eq!(h.data_offset(time, 1), time.begin + 16);
        // The last slab ends exactly at (or, with padding, before) EOF.
        assert!(h.data_offset(s, 2) + 6 <= built.file.len() as u64);
    }

    #[test]
    fn cdf1_fixed_and_record_vars() {
        check_mixed(1);
    }

    #[test]
    fn cdf2_fixed_and_record_vars() {
        check_mixed(2);
    }

    #[test]
    fn cdf5_fixed_and_record_vars() {
        check_mixed(5);
    }

    #[test]
    fn header_widths_differ_by_version() {
        let len = |v| build(&mixed_spec(v, 0)).header_len;
        // CDF-2 widens the four `begin` fields; CDF-5 every count as well.
        assert_eq!(len(2), len(1) + 4 * 4);
        assert!(len(5) > len(2));
    }

    #[test]
    fn single_record_var_is_packed() {
        let spec = Spec {
            version: 1,
            numrecs: 3,
            dims: vec![("x", 3), ("t", 0)],
            gatts: vec![],
            vars: vec![
                var("fixed", Nc3Type::Int, &[0]),
                var("s", Nc3Type::Short, &[1, 0]),
            ],
        };
        let built = build(&spec);
        let h = parse(&built.file).unwrap();
        let s = h.var("s").unwrap();
        assert_eq!(s.vsize, 8, "the header still stores the padded size");
        assert_eq!(h.recsize(), 6);
        assert_eq!(h.data_offset(s, 2), s.begin + 12);
        // Three packed records, no trailing padding needed.
        assert_eq!(built.file.len() as u64, s.begin + 18);
    }

    #[test]
    fn record_padding_applies_with_two_record_vars() {
        let spec = Spec {
            version: 2,
            numrecs: 2,
            dims: vec![("t", 0), ("x", 3)],
            gatts: vec![],
            vars: vec![var("a", Nc3Type::Char, &[0, 1]), var("b", Nc3Type::Char, &[0, 1])],
        };
        let h = parse(&build(&spec).file).unwrap();
        assert_eq!(h.recsize(), 8);
        let b = h.var("b").unwrap();
        assert_eq!(b.begin, h.var("a").unwrap().begin + 4);
        assert_eq!(h.data_offset(b, 1), b.begin + 8);
    }

    #[test]
    fn empty_record_dimension() {
        let built = build(&mixed_spec(2, 0));
        let h = parse(&built.file).unwrap();
        assert_eq!(h.numrecs, 0);
        assert_eq!(h.dims[0].len, 0);
        let s = h.var("s").unwrap();
        assert_eq!(h.shape(s), [0, 3]);
        // Record data would start exactly at EOF; that is fine with no records.
        assert_eq!(h.var("time").unwrap().begin, built.file.len() as u64);
    }

    #[test]
    fn scalar_variable() {
        let spec = Spec {
            version: 1,
            numrecs: 0,
            dims: vec![],
            gatts: vec![],
            vars: vec![var("answer", Nc3Type::Int, &[])],
        };
        let mut built = build(&spec);
        let begin = built.layout[0].1 as usize;
        built.file[begin..begin + 4].copy_from_slice(&42i32.to_be_bytes());
        let h = parse(&built.file).unwrap();
        let v = &h.vars[0];
        assert!(v.dimids.is_empty());
        assert!(!v.is_record);
        assert!(h.shape(v).is_empty());
        assert_eq!(h.slab_bytes(v), 4);
        assert_eq!(h.record_dim(), None);
        assert_eq!(h.recsize(), 0);
        let off = h.data_offset(v, 0) as usize;
        assert_eq!(built.file[off..off + 4], 42i32.to_be_bytes());
    }

    #[test]
    fn attributes_of_every_type() {
        let values = vec![
            ("b", Nc3AttrValue::Bytes(vec![-128, 0, 127])),
            ("c", Nc3AttrValue::Chars("héllo".into())),
            ("s", Nc3AttrValue::Shorts(vec![-32768, 1, 32767])),
            ("i", Nc3AttrValue::Ints(vec![i32::MIN, -1, i32::MAX])),
            ("f", Nc3AttrValue::Floats(vec![1.5, -0.0, f32::INFINITY])),
            ("d", Nc3AttrValue::Doubles(vec![std::f64::consts::PI, -2.5])),
            ("ub", Nc3AttrValue::UBytes(vec![0, 200, 255])),
            ("us", Nc3AttrValue::UShorts(vec![65535, 1, 2])),
            ("ui", Nc3AttrValue::UInts(vec![u32::MAX, 7])),
            ("i64", Nc3AttrValue::Int64s(vec![i64::MIN, -5, i64::MAX])),
            ("u64", Nc3AttrValue::UInt64s(vec![u64::MAX, 9])),
            ("empty", Nc3AttrValue::Shorts(vec![])),
        ];
        let mut v = var("v", Nc3Type::UInt64, &[]);
        v.attrs = values.iter().map(|(n, a)| attr(n, a)).collect();
        v.attrs.push(raw_attr("nul", Nc3Type::Char, 8, b"abc\0\0\0\0\0"));
        v.attrs.push(raw_attr("allnul", Nc3Type::Char, 2, b"\0\0"));
        v.attrs.push(raw_attr("inner", Nc3Type::Char, 4, b"a\0b\0"));
        v.attrs.push(raw_attr("latin1", Nc3Type::Char, 2, b"\xe9x"));
        let spec = Spec {
            version: 5,
            numrecs: 0,
            dims: vec![],
            gatts: values.iter().map(|(n, a)| attr(n, a)).collect(),
            vars: vec![v],
        };
        let h = parse(&build(&spec).file).unwrap();
        for (name, value) in &values {
            assert_eq!(h.attr(name), Some(value), "global {name}");
            assert_eq!(h.vars[0].attr(name), Some(value), "variable {name}");
            assert_eq!(value.nc_type().size(), h.attr(name).unwrap().nc_type().size());
        }
        let text = |n| h.vars[0].attr(n).and_then(|a| a.as_str());
        assert_eq!(text("nul"), Some("abc"));
        assert_eq!(text("allnul"), Some(""));
        assert_eq!(text("inner"), Some("a\0b"));
        assert_eq!(text("latin1"), Some("\u{fffd}x"));
        assert_eq!(h.vars[0].attrs.len(), values.len() + 4);
    }

    #[test]
    fn cdf5_types_rejected_in_cdf1() {
        let spec = Spec {
            version: 1,
            numrecs: 0,
            dims: vec![],
            gatts: vec![attr("u", &Nc3AttrValue::UShorts(vec![1]))],
            vars: vec![],
        };
        assert_malformed(parse(&build(&spec).file), "only allowed in CDF-5");
        let spec = Spec {
            version: 2,
            numrecs: 0,
            dims: vec![],
            gatts: vec![],
            vars: vec![var("v", Nc3Type::Int64, &[])],
        };
        assert_malformed(parse(&build(&spec).file), "variable 'v'");
    }

    #[test]
    fn truncated_prefixes_ask_for_more() {
        for version in [1, 2, 5] {
            let built = build(&mixed_spec(version, 2));
            let file_len = built.file.len() as u64;
            for cut in 0..built.header_len as usize {
                match parse_header(&built.file[..cut], file_len) {
                    Err(Nc3Error::Truncated { needed }) => {
                        assert!(needed > cut as u64, "v{version} cut {cut}: needed {needed}");
                        assert!(needed <= file_len);
                        // Small files: the first retry reads everything.
                        let h = parse_header(&built.file[..needed as usize], file_len).unwrap();
                        assert_eq!(h.header_len, built.header_len);
                    }
                    other => panic!("v{version} cut {cut}: {other:?}"),
                }
            }
            // Exactly the header is enough; data is not needed.
            let h = parse_header(&built.file[..built.header_len as usize], file_len).unwrap();
            assert_eq!(h.vars.len(), 4);
        }
    }

    #[test]
    fn truncated_needed_grows_geometrically() {
        // 2000 variables make a ~60 KiB header; pretend the file is huge.
        let names: Vec<&'static str> = (0..2000)
            .map(|i| &*Box::leak(format!("variable_number_{i}").into_boxed_str()))
            .collect();
        let spec = Spec {
            version: 2,
            numrecs: 0,
            dims: vec![("x", 1)],
            gatts: vec![],
            vars: names.iter().map(|n| var(n, Nc3Type::Int, &[0])).collect(),
        };
        let built = build(&spec);
        let mut len = 16u64;
        let mut attempts = 0;
        let h = loop {
            attempts += 1;
            let prefix = &built.file[..len.min(built.file.len() as u64) as usize];
            match parse_header(prefix, built.file.len() as u64) {
                Ok(h) => break h,
                Err(Nc3Error::Truncated { needed }) => {
                    assert!(needed > len.min(built.file.len() as u64));
                    len = needed;
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(h.vars.len(), 2000);
        assert!(attempts <= 4, "{attempts} attempts");
    }

    #[test]
    fn not_netcdf3() {
        let hdf5 = b"\x89HDF\r\n\x1a\n\0\0\0\0";
        assert!(matches!(parse(hdf5), Err(Nc3Error::NotNc3)));
        assert!(matches!(parse(b"CDF\x03xxxxxxxx"), Err(Nc3Error::NotNc3)));
        assert!(matches!(parse(b"CDF\x00xxxxxxxx"), Err(Nc3Error::NotNc3)));
        assert!(matches!(parse(b""), Err(Nc3Error::NotNc3)));
        assert!(matches!(parse(b"CD"), Err(Nc3Error::NotNc3)));
        assert!(matches!(parse_header(b"XD", 100), Err(Nc3Error::NotNc3)));
        assert!(matches!(
            parse_header(b"CD", 100),
            Err(Nc3Error::Truncated { needed: 100 })
        ));
        assert!(matches!(
            parse_header(b"", 1 << 40),
            Err(Nc3Error::Truncated {
                needed: SUGGESTED_PREFIX_LEN
            })
        ));
    }

    #[test]
    fn garbage_after_magic_is_malformed() {
        let mut file = b"CDF\x01\0\0\0\0".to_vec();
        file.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 1]);
        assert_malformed(parse(&file), "expected dimension list tag");

        // ABSENT tag with a non-zero count.
        let mut file = b"CDF\x01\0\0\0\0".to_vec();
        file.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
        assert_malformed(parse(&file), "marked absent");

        // Unknown type code.
        let mut spec = mixed_spec(1, 0);
        spec.gatts = vec![raw_attr("a", Nc3Type::Int, 1, &[0; 4])];
        let mut file = build(&spec).file;
        let pos = file.windows(8).position(|w| w == b"a\0\0\0\0\0\0\x04").unwrap();
        file[pos + 7] = 99;
        assert_malformed(parse(&file), "unknown nc_type 99");

        // The header alone is longer than the whole file.
        let built = build(&mixed_spec(1, 0));
        assert_malformed(
            parse_header(&built.file, built.header_len - 1),
            "but the file has only",
        );
    }

    #[test]
    fn variable_past_end_of_file_is_named() {
        let mut built = build(&mixed_spec(2, 2));
        // The last 2 bytes are padding after 's' in the final record; losing
        // them is fine, losing a third is not.
        built.file.truncate(built.file.len() - 2);
        assert!(parse(&built.file).is_ok());
        built.file.truncate(built.file.len() - 1);
        assert_malformed(parse(&built.file), "variable 's'");

        // numrecs claims more records than the file holds.
        let spec = mixed_spec(1, 2);
        let mut built = build(&spec);
        built.file[4..8].copy_from_slice(&5u32.to_be_bytes());
        assert_malformed(parse(&built.file), "variable 'time'");

        // A fixed variable pointing past EOF.
        let mut spec = mixed_spec(5, 0);
        spec.vars[2].begin = Some(1 << 40);
        assert_malformed(parse(&build(&spec).file), "variable 'flags'");

        // Offsets that overflow u64.
        let mut spec = mixed_spec(5, 0);
        spec.vars[2].begin = Some(u64::MAX - 1);
        assert_malformed(parse(&build(&spec).file), "variable 'flags'");
    }

    #[test]
    fn overlapping_layouts_are_malformed() {
        let mut spec = mixed_spec(2, 1);
        spec.vars[0].begin = Some(8);
        assert_malformed(parse(&build(&spec).file), "overlapping the header");

        let mut spec = mixed_spec(2, 1);
        let built = build(&spec);
        spec.vars[2].begin = Some(built.layout[0].1 + 4);
        assert_malformed(parse(&build(&spec).file), "overlapping the data of 'grid'");

        // A record variable starting inside the fixed-size data.
        let mut spec = mixed_spec(2, 1);
        spec.vars[1].begin = Some(built.layout[2].1);
        assert_malformed(parse(&build(&spec).file), "variable 'time'");
    }

    #[test]
    fn bad_dimension_references() {
        let mut spec = mixed_spec(1, 0);
        spec.vars[0].dimids = vec![7];
        assert_malformed(parse(&build(&spec).file), "dimension id 7 out of range");

        let mut spec = mixed_spec(1, 0);
        spec.vars[0].dimids = vec![1, 0];
        assert_malformed(parse(&build(&spec).file), "not the first dimension");

        let mut spec = mixed_spec(1, 0);
        spec.dims.push(("t2", 0));
        assert_malformed(parse(&build(&spec).file), "unlimited dimensions");
    }

    #[test]
    fn absurd_counts_fail_without_allocating() {
        // CDF-5 header declaring 2^60 dimensions.
        let mut file = b"CDF\x05".to_vec();
        file.extend_from_slice(&0u64.to_be_bytes());
        file.extend_from_slice(&TAG_DIMENSION.to_be_bytes());
        file.extend_from_slice(&(1u64 << 58).to_be_bytes());
        file.resize(64, 0);
        assert_malformed(parse(&file), "dimensions declared");
        // 2^60 dimensions of at least 16 bytes overflow even a 2^64-byte file.
        file[16..24].copy_from_slice(&(1u64 << 60).to_be_bytes());
        assert_malformed(parse_header(&file, u64::MAX), "cannot fit");
        // A plausible-looking count in a huge file asks for more input
        // instead of allocating.
        file[16..24].copy_from_slice(&(1u64 << 30).to_be_bytes());
        match parse_header(&file, 1 << 50) {
            Err(Nc3Error::Truncated { needed }) => assert!(needed >= 20 + (16 << 30)),
            other => panic!("{other:?}"),
        }

        // An attribute with 2^62 doubles.
        let mut spec = mixed_spec(5, 0);
        spec.gatts = vec![raw_attr("a", Nc3Type::Double, 1 << 62, &[])];
        assert_malformed(parse(&build(&spec).file), "attribute 'a'");
        spec.gatts = vec![raw_attr("a", Nc3Type::Double, 1 << 40, &[])];
        assert_malformed(parse(&build(&spec).file), "attribute 'a'");

        // A variable with 2^40 dimensions.
        let mut spec = mixed_spec(5, 0);
        spec.vars[0].dimids = vec![];
        let mut file = build(&spec).file;
        let name_at = file.windows(4).position(|w| w == b"grid").unwrap();
        file[name_at + 4..name_at + 12].copy_from_slice(&(1u64 << 40).to_be_bytes());
        assert_malformed(parse(&file), "variable 'grid'");

        // A name claiming 4 GiB.
        let mut file = build(&mixed_spec(1, 0)).file;
        file[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_malformed(parse(&file), "dimension #0");
    }

    #[test]
    fn variable_size_overflow_is_malformed() {
        let spec = Spec {
            version: 5,
            numrecs: 0,
            dims: vec![("a", 1 << 32), ("b", 1 << 32)],
            gatts: vec![],
            vars: vec![var("huge", Nc3Type::Double, &[])],
        };
        let mut file = build(&spec).file;
        // Patch the dimids in after layout (the writer cannot size it).
        let ndims_at = file.windows(4).position(|w| w == b"huge").unwrap() + 4;
        let mut patched = file[..ndims_at].to_vec();
        patched.extend_from_slice(&2u64.to_be_bytes());
        patched.extend_from_slice(&0u64.to_be_bytes());
        patched.extend_from_slice(&1u64.to_be_bytes());
        patched.extend_from_slice(&file[ndims_at + 8..]);
        file = patched;
        assert_malformed(parse(&file), "'huge': size overflows");
    }

    #[test]
    fn stored_vsize_is_ignored() {
        // CDF-1/2 store 2^32-1 for variables over 4 GiB; layout must not care.
        let mut spec = mixed_spec(2, 2);
        for v in &mut spec.vars {
            v.vsize = Some(u64::from(u32::MAX));
        }
        let built = build(&spec);
        let h = parse(&built.file).unwrap();
        assert_eq!(h.recsize(), built.recsize);
        assert_eq!(h.vars[0].vsize, u64::from(u32::MAX));
    }

    #[test]
    fn streaming_numrecs_is_derived_from_file_length() {
        for version in [1, 2, 5] {
            let mut built = build(&mixed_spec(version, u64::MAX));
            let rec_start = built.layout[1].1;
            let recsize = built.recsize;
            assert_eq!(recsize, 16);
            let with_bytes = |n: u64| {
                let mut f = built.file.clone();
                f.resize((rec_start + n) as usize, 0);
                parse(&f).unwrap()
            };
            assert_eq!(with_bytes(0).numrecs, 0);
            // Record 0 needs time (8) + s (6 unpadded) = 14 bytes.
            assert_eq!(with_bytes(13).numrecs, 0);
            assert_eq!(with_bytes(14).numrecs, 1);
            assert_eq!(with_bytes(16 + 13).numrecs, 1);
            assert_eq!(with_bytes(16 * 3).numrecs, 3);
            assert_eq!(with_bytes(16 * 3 + 13).numrecs, 3);
            let h = with_bytes(16 * 3 + 14);
            assert_eq!(h.numrecs, 4);
            assert_eq!(h.dims[0].len, 4);
            assert_eq!(h.shape(h.var("s").unwrap()), [4, 3]);
            // 'flags' (3 bytes + 1 padding) ends just before the records.
            built.file.truncate(rec_start as usize - 2);
            assert_malformed(parse(&built.file), "variable 'flags'");
        }
        // No record variables: STREAMING just means zero records.
        let spec = Spec {
            version: 1,
            numrecs: u64::MAX,
            dims: vec![("x", 2)],
            gatts: vec![],
            vars: vec![var("v", Nc3Type::Short, &[0])],
        };
        assert_eq!(parse(&build(&spec).file).unwrap().numrecs, 0);
    }

    /// Flips bytes all over valid headers: whatever comes out, it must be an
    /// error or a header whose data lies inside the file, never a panic.
    #[test]
    fn mutated_headers_never_panic() {
        let mut specs = vec![mixed_spec(1, 2), mixed_spec(2, 2), mixed_spec(5, 2)];
        specs.push(mixed_spec(5, u64::MAX));
        for spec in &specs {
            let built = build(spec);
            for i in 0..built.header_len as usize {
                for new in [0x00, 0x01, 0x04, 0x7f, 0x80, 0xff, built.file[i] ^ 0x01] {
                    let mut f = built.file.clone();
                    f[i] = new;
                    for cut in [f.len(), i + 1] {
                        if let Ok(h) = parse_header(&f[..cut], f.len() as u64) {
                            for v in &h.vars {
                                let recs = if v.is_record { h.numrecs } else { 1 };
                                if recs > 0 && h.slab_bytes(v) > 0 {
                                    let end = h.data_offset(v, recs - 1) + h.slab_bytes(v);
                                    assert!(end <= f.len() as u64, "{} at byte {i}", v.name);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    // ---------------------------------------------------------------------
    // Files written by netCDF4-python 1.7.5 (netcdf-c 4.10.1). Regenerate
    // with (format in NETCDF3_CLASSIC, NETCDF3_64BIT_OFFSET,
    // NETCDF3_64BIT_DATA):
    //
    //   d = netCDF4.Dataset(path, "w", format=fmt)
    //   d.title = "tiny " + fmt
    //   d.createDimension("time", None); d.createDimension("x", 3)
    //   d.createDimension("y", 2)
    //   t = d.createVariable("time", "f8", ("time",))
    //   t.units = "days since 2000-01-01"
    //   s = d.createVariable("s", "i2", ("time", "x"))
    //   g = d.createVariable("grid", "f4", ("y", "x"))
    //   c = d.createVariable("scalar", "i4", ())
    //   b = d.createVariable("flags", "i1", ("x",))
    //   c.a_byte = np.array([-1, 2], "i1"); c.a_short = np.array([-300, 7], "i2")
    //   c.a_int = np.array([-70000, 1, 2], "i4")
    //   c.a_float = np.array([1.5, -2.25], "f4"); c.a_double = np.array([3.125])
    //   c.a_char = "hello"
    //   # CDF-5 only:
    //   c.a_ubyte = np.array([200, 1, 2], "u1"); c.a_ushort = np.array([60000], "u2")
    //   c.a_uint = np.array([4000000000], "u4")
    //   c.a_int64 = np.array([-(2**40), 5], "i8")
    //   c.a_uint64 = np.array([2**63 + 1], "u8")
    //   u = d.createVariable("u", "u2", ("time", "x"))
    //   g[:] = np.arange(6, dtype="f4").reshape(2, 3) + 0.5
    //   c.assignValue(-42); b[:] = [-1, 0, 1]
    //   for r in range(4):
    //       t[r] = 10.0 * r; s[r, :] = [r * 100 + i for i in range(3)]
    //       u[r, :] = [60000 + r * 10 + i for i in range(3)]  # CDF-5 only
    // ---------------------------------------------------------------------

    const CDF1: &[u8] = include_bytes!("testdata/cdf1.nc");
    const CDF2: &[u8] = include_bytes!("testdata/cdf2.nc");
    const CDF5: &[u8] = include_bytes!("testdata/cdf5.nc");

    fn read<const N: usize, T>(file: &[u8], off: u64, n: usize, f: fn([u8; N]) -> T) -> Vec<T> {
        let off = off as usize;
        be_values(&file[off..off + n * N], f)
    }

    fn check_real_file(file: &[u8], version: u8) {
        let h = parse(file).unwrap();
        assert_eq!(h.version, version);
        assert_eq!(h.numrecs, 4);
        assert_eq!(
            h.attr("title").and_then(|a| a.as_str()),
            Some(match version {
                1 => "tiny NETCDF3_CLASSIC",
                2 => "tiny NETCDF3_64BIT_OFFSET",
                _ => "tiny NETCDF3_64BIT_DATA",
            })
        );
        let rec_vars = if version == 5 { 3 } else { 2 };
        assert_eq!(h.vars.iter().filter(|v| v.is_record).count(), rec_vars);
        // time 8 + s 6→8 (+ u 6→8)
        assert_eq!(h.recsize(), 8 * rec_vars as u64);

        let v = |n| h.var(n).unwrap();
        for r in 0..4u64 {
            let t = read(file, h.data_offset(v("time"), r), 1, f64::from_be_bytes);
            assert_eq!(t, [10.0 * r as f64]);
            let s = read(file, h.data_offset(v("s"), r), 3, i16::from_be_bytes);
            let base = r as i16 * 100;
            assert_eq!(s, [base, base + 1, base + 2]);
            if version == 5 {
                let u = read(file, h.data_offset(v("u"), r), 3, u16::from_be_bytes);
                let base = 60000 + r as u16 * 10;
                assert_eq!(u, [base, base + 1, base + 2]);
            }
        }
        let grid = read(file, h.data_offset(v("grid"), 0), 6, f32::from_be_bytes);
        assert_eq!(grid, [0.5, 1.5, 2.5, 3.5, 4.5, 5.5]);
        assert_eq!(h.shape(v("grid")), [2, 3]);
        let scalar = v("scalar");
        assert!(h.shape(scalar).is_empty());
        assert_eq!(read(file, h.data_offset(scalar, 0), 1, i32::from_be_bytes), [-42]);
        let flags = read(file, h.data_offset(v("flags"), 0), 3, i8::from_be_bytes);
        assert_eq!(flags, [-1, 0, 1]);

        assert_eq!(
            v("time").attr("units").and_then(|a| a.as_str()),
            Some("days since 2000-01-01")
        );
        let a = |n| scalar.attr(n).cloned().unwrap();
        assert_eq!(a("a_byte"), Nc3AttrValue::Bytes(vec![-1, 2]));
        assert_eq!(a("a_short"), Nc3AttrValue::Shorts(vec![-300, 7]));
        assert_eq!(a("a_int"), Nc3AttrValue::Ints(vec![-70000, 1, 2]));
        assert_eq!(a("a_float"), Nc3AttrValue::Floats(vec![1.5, -2.25]));
        assert_eq!(a("a_double"), Nc3AttrValue::Doubles(vec![3.125]));
        assert_eq!(a("a_char"), Nc3AttrValue::Chars("hello".into()));
        if version == 5 {
            assert_eq!(a("a_ubyte"), Nc3AttrValue::UBytes(vec![200, 1, 2]));
            assert_eq!(a("a_ushort"), Nc3AttrValue::UShorts(vec![60000]));
            assert_eq!(a("a_uint"), Nc3AttrValue::UInts(vec![4_000_000_000]));
            assert_eq!(a("a_int64"), Nc3AttrValue::Int64s(vec![-(1 << 40), 5]));
            assert_eq!(a("a_uint64"), Nc3AttrValue::UInt64s(vec![(1 << 63) + 1]));
        }
    }

    #[test]
    fn real_cdf1_file() {
        check_real_file(CDF1, 1);
    }

    #[test]
    fn real_cdf2_file() {
        check_real_file(CDF2, 2);
    }

    #[test]
    fn real_cdf5_file() {
        check_real_file(CDF5, 5);
    }
}
