//! Element types and their Zarr spellings.

use serde_json::{Value, json};

/// Byte order of stored elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Endian {
    /// Least significant byte first (numpy `<`); what the server serves.
    Little,
    /// Most significant byte first (numpy `>`); netCDF-3 and some HDF5 data, swapped on read.
    Big,
}

/// Unit of numpy `datetime64`/`timedelta64` values (ticks since 1970-01-01, or durations).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum TimeUnit {
    /// Years (`Y`).
    Y,
    /// Months (`M`).
    M,
    /// Weeks (`W`).
    W,
    /// Days (`D`).
    D,
    /// Hours (`h`).
    H,
    /// Minutes (`m`).
    Min,
    /// Seconds (`s`).
    S,
    /// Milliseconds (`ms`).
    Ms,
    /// Microseconds (`us`).
    Us,
    /// Nanoseconds (`ns`).
    Ns,
    /// Picoseconds (`ps`).
    Ps,
    /// Femtoseconds (`fs`).
    Fs,
    /// Attoseconds (`as`).
    As,
}

impl TimeUnit {
    const ALL: [(TimeUnit, &'static str); 13] = [
        (TimeUnit::Y, "Y"),
        (TimeUnit::M, "M"),
        (TimeUnit::W, "W"),
        (TimeUnit::D, "D"),
        (TimeUnit::H, "h"),
        (TimeUnit::Min, "m"),
        (TimeUnit::S, "s"),
        (TimeUnit::Ms, "ms"),
        (TimeUnit::Us, "us"),
        (TimeUnit::Ns, "ns"),
        (TimeUnit::Ps, "ps"),
        (TimeUnit::Fs, "fs"),
        (TimeUnit::As, "as"),
    ];

    /// numpy's spelling (`ns`, `s`, `D`, ...).
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(u, _)| *u == self)
            .map_or("ns", |(_, s)| s)
    }

    /// The unit of numpy's spelling (case-sensitive: `M` is months, `m` minutes); `None` if
    /// unknown.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n)| *n == s).map(|(u, _)| *u)
    }
}

/// numpy's "not a time", the fill of datetime64/timedelta64.
pub const NAT: i64 = i64::MIN;

/// The element types netCDF can hold and we serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DType {
    /// Signed 8-bit integer (NC_BYTE).
    I8,
    /// Unsigned 8-bit integer (NC_UBYTE).
    U8,
    /// Signed 16-bit integer (NC_SHORT).
    I16,
    /// Unsigned 16-bit integer (NC_USHORT).
    U16,
    /// Signed 32-bit integer (NC_INT).
    I32,
    /// Unsigned 32-bit integer (NC_UINT).
    U32,
    /// Signed 64-bit integer (NC_INT64).
    I64,
    /// Unsigned 64-bit integer (NC_UINT64).
    U64,
    /// IEEE 754 single precision (NC_FLOAT).
    F32,
    /// IEEE 754 double precision (NC_DOUBLE).
    F64,
    /// NC_CHAR: one byte per element, served as `|S1` so xarray joins the last dimension
    /// into strings exactly as it does for netCDF.
    Char,
    /// NC_STRING: variable-length UTF-8, served with the `vlen-utf8` codec.
    Str,
    /// numpy `bool` (one byte, 0 or 1): Zarr stores and kerchunk references.
    Bool,
    /// numpy `datetime64[unit]`: int64 ticks, `NaT` = [`NAT`]. Served with the same numpy
    /// type so xarray decodes the values without CF attributes.
    DateTime64(TimeUnit),
    /// numpy `timedelta64[unit]`: int64 ticks.
    TimeDelta64(TimeUnit),
    /// numpy `S<n>` (n > 1): fixed-width byte strings, NUL-padded.
    Bytes(u32),
    /// numpy `U<n>`: fixed-width strings of n UTF-32 code units (little-endian).
    Unicode(u32),
}

impl DType {
    /// Bytes per element in memory (strings have no fixed size; 0).
    pub fn size(self) -> usize {
        match self {
            DType::I8 | DType::U8 | DType::Char | DType::Bool => 1,
            DType::I16 | DType::U16 => 2,
            DType::I32 | DType::U32 | DType::F32 => 4,
            DType::I64 | DType::U64 | DType::F64 | DType::DateTime64(_) | DType::TimeDelta64(_) => 8,
            DType::Str => 0,
            DType::Bytes(n) => n as usize,
            DType::Unicode(n) => 4 * n as usize,
        }
    }

    /// Plain numbers (and bools): what coordinate and statistics code may read as f64.
    /// Times are int64 ticks whose meaning is their numpy unit, not CF `units`.
    pub fn is_number(self) -> bool {
        !matches!(
            self,
            DType::Char
                | DType::Str
                | DType::Bytes(_)
                | DType::Unicode(_)
                | DType::DateTime64(_)
                | DType::TimeDelta64(_)
        )
    }

    /// Fixed-width text (`S<n>`, `U<n>`): no numeric fill value, no byte shuffling.
    pub fn is_fixed_text(self) -> bool {
        matches!(self, DType::Bytes(_) | DType::Unicode(_))
    }

    /// True for `f32` and `f64`, whose values (and fill values) may be NaN or infinite.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64)
    }

    /// True for the signed and unsigned integer types (which NumPy reduces and xarray
    /// decodes as integers when no fill value or packing applies).
    pub fn is_int(self) -> bool {
        matches!(
            self,
            DType::I8
                | DType::U8
                | DType::I16
                | DType::U16
                | DType::I32
                | DType::U32
                | DType::I64
                | DType::U64
        )
    }

    /// numpy type string for Zarr v2 (always little-endian: we byte-swap big-endian sources).
    pub fn zarr_v2(self) -> String {
        let s = match self {
            DType::I8 => "|i1",
            DType::U8 => "|u1",
            DType::I16 => "<i2",
            DType::U16 => "<u2",
            DType::I32 => "<i4",
            DType::U32 => "<u4",
            DType::I64 => "<i8",
            DType::U64 => "<u8",
            DType::F32 => "<f4",
            DType::F64 => "<f8",
            DType::Char => "|S1",
            DType::Str => "|O",
            DType::Bool => "|b1",
            DType::DateTime64(u) => return format!("<M8[{}]", u.as_str()),
            DType::TimeDelta64(u) => return format!("<m8[{}]", u.as_str()),
            DType::Bytes(n) => return format!("|S{n}"),
            DType::Unicode(n) => return format!("<U{n}"),
        };
        s.to_string()
    }

    /// Zarr v3 `data_type`.
    pub fn zarr_v3(self) -> Value {
        match self {
            DType::I8 => json!("int8"),
            DType::U8 => json!("uint8"),
            DType::I16 => json!("int16"),
            DType::U16 => json!("uint16"),
            DType::I32 => json!("int32"),
            DType::U32 => json!("uint32"),
            DType::I64 => json!("int64"),
            DType::U64 => json!("uint64"),
            DType::F32 => json!("float32"),
            DType::F64 => json!("float64"),
            // numpy `S1`, the type zarr-python and xarray use for netCDF char arrays
            DType::Char => json!({"name": "null_terminated_bytes", "configuration": {"length_bytes": 1}}),
            DType::Str => json!("string"),
            DType::Bool => json!("bool"),
            // zarr-python 3's spellings
            DType::DateTime64(u) => {
                json!({"name": "numpy.datetime64", "configuration": {"unit": u.as_str(), "scale_factor": 1}})
            }
            DType::TimeDelta64(u) => {
                json!({"name": "numpy.timedelta64", "configuration": {"unit": u.as_str(), "scale_factor": 1}})
            }
            DType::Bytes(n) => json!({"name": "null_terminated_bytes", "configuration": {"length_bytes": n}}),
            DType::Unicode(n) => {
                json!({"name": "fixed_length_utf32", "configuration": {"length_bytes": 4 * n}})
            }
        }
    }

    /// numpy-style name, for the xarray-like summaries.
    pub fn numpy_name(self) -> String {
        let s = match self {
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::I16 => "int16",
            DType::U16 => "uint16",
            DType::I32 => "int32",
            DType::U32 => "uint32",
            DType::I64 => "int64",
            DType::U64 => "uint64",
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::Char => "|S1",
            DType::Str => "object",
            DType::Bool => "bool",
            DType::DateTime64(u) => return format!("datetime64[{}]", u.as_str()),
            DType::TimeDelta64(u) => return format!("timedelta64[{}]", u.as_str()),
            DType::Bytes(n) => return format!("|S{n}"),
            DType::Unicode(n) => return format!("<U{n}"),
        };
        s.to_string()
    }

    /// netCDF's default fill value as little-endian bytes: what the library returns for
    /// never-written data when a variable has no `_FillValue`.
    pub fn netcdf_default_fill(self) -> Vec<u8> {
        match self {
            DType::I8 => (-127i8).to_le_bytes().to_vec(),
            DType::U8 => 255u8.to_le_bytes().to_vec(),
            DType::I16 => (-32767i16).to_le_bytes().to_vec(),
            DType::U16 => 65535u16.to_le_bytes().to_vec(),
            DType::I32 => (-2147483647i32).to_le_bytes().to_vec(),
            DType::U32 => 4294967295u32.to_le_bytes().to_vec(),
            DType::I64 => (-9223372036854775806i64).to_le_bytes().to_vec(),
            DType::U64 => 18446744073709551614u64.to_le_bytes().to_vec(),
            // NC_FILL_FLOAT / NC_FILL_DOUBLE, bit-exact
            DType::F32 => f32::from_bits(0x7cf0_0000).to_le_bytes().to_vec(),
            DType::F64 => f64::from_bits(0x479e_0000_0000_0000).to_le_bytes().to_vec(),
            DType::Char | DType::Bool => vec![0],
            DType::Str => Vec::new(),
            DType::DateTime64(_) | DType::TimeDelta64(_) => NAT.to_le_bytes().to_vec(),
            DType::Bytes(_) | DType::Unicode(_) => vec![0; self.size()],
        }
    }
}

/// A scalar fill value, kept as the number it is so it can be written to JSON and to bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scalar {
    /// A signed integer value.
    Int(i64),
    /// An unsigned integer value (kept apart so values above `i64::MAX` survive).
    UInt(u64),
    /// A floating-point value (may be NaN or infinite).
    Float(f64),
}

impl Scalar {
    /// Little-endian bytes of this value cast to `dtype` (as numpy's `astype` would).
    pub fn to_le_bytes(self, dtype: DType) -> Vec<u8> {
        let f = match self {
            Scalar::Int(v) => v as f64,
            Scalar::UInt(v) => v as f64,
            Scalar::Float(v) => v,
        };
        let i = match self {
            Scalar::Int(v) => v,
            Scalar::UInt(v) => v as i64,
            Scalar::Float(v) => v as i64,
        };
        let u = match self {
            Scalar::Int(v) => v as u64,
            Scalar::UInt(v) => v,
            Scalar::Float(v) => v as u64,
        };
        match dtype {
            DType::I8 => (i as i8).to_le_bytes().to_vec(),
            DType::U8 | DType::Char => (u as u8).to_le_bytes().to_vec(),
            DType::I16 => (i as i16).to_le_bytes().to_vec(),
            DType::U16 => (u as u16).to_le_bytes().to_vec(),
            DType::I32 => (i as i32).to_le_bytes().to_vec(),
            DType::U32 => (u as u32).to_le_bytes().to_vec(),
            DType::I64 => i.to_le_bytes().to_vec(),
            DType::U64 => u.to_le_bytes().to_vec(),
            DType::F32 => (f as f32).to_le_bytes().to_vec(),
            DType::F64 => f.to_le_bytes().to_vec(),
            DType::Bool => vec![u8::from(u != 0 || f != 0.0)],
            DType::DateTime64(_) | DType::TimeDelta64(_) => i.to_le_bytes().to_vec(),
            DType::Str => Vec::new(),
            DType::Bytes(_) | DType::Unicode(_) => vec![0; dtype.size()],
        }
    }

    /// Reads a little-endian element of `dtype`.
    pub fn from_le_bytes(b: &[u8], dtype: DType) -> Option<Scalar> {
        Some(match dtype {
            DType::I8 => Scalar::Int(i8::from_le_bytes(b.get(..1)?.try_into().ok()?) as i64),
            DType::U8 | DType::Char | DType::Bool => Scalar::UInt(*b.first()? as u64),
            DType::DateTime64(_) | DType::TimeDelta64(_) => {
                Scalar::Int(i64::from_le_bytes(b.get(..8)?.try_into().ok()?))
            }
            DType::Bytes(_) | DType::Unicode(_) => return None,
            DType::I16 => Scalar::Int(i16::from_le_bytes(b.get(..2)?.try_into().ok()?) as i64),
            DType::U16 => Scalar::UInt(u16::from_le_bytes(b.get(..2)?.try_into().ok()?) as u64),
            DType::I32 => Scalar::Int(i32::from_le_bytes(b.get(..4)?.try_into().ok()?) as i64),
            DType::U32 => Scalar::UInt(u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as u64),
            DType::I64 => Scalar::Int(i64::from_le_bytes(b.get(..8)?.try_into().ok()?)),
            DType::U64 => Scalar::UInt(u64::from_le_bytes(b.get(..8)?.try_into().ok()?)),
            DType::F32 => Scalar::Float(f32::from_le_bytes(b.get(..4)?.try_into().ok()?) as f64),
            DType::F64 => Scalar::Float(f64::from_le_bytes(b.get(..8)?.try_into().ok()?)),
            DType::Str => return None,
        })
    }

    /// The value as f64 (exact for floats and integers up to 2^53 in magnitude).
    pub fn as_f64(self) -> f64 {
        match self {
            Scalar::Int(v) => v as f64,
            Scalar::UInt(v) => v as f64,
            Scalar::Float(v) => v,
        }
    }
}

/// Zarr spelling of a fill value: numbers as JSON numbers, non-finite floats as the strings
/// `"NaN"`, `"Infinity"`, `"-Infinity"` (both Zarr specs say so).
pub fn fill_json(s: Scalar, dtype: DType) -> Value {
    match s {
        Scalar::Float(v) if dtype.is_float() => {
            let v = if dtype == DType::F32 { v as f32 as f64 } else { v };
            if v.is_nan() {
                json!("NaN")
            } else if v == f64::INFINITY {
                json!("Infinity")
            } else if v == f64::NEG_INFINITY {
                json!("-Infinity")
            } else {
                json!(v)
            }
        }
        _ => match Scalar::from_le_bytes(&s.to_le_bytes(dtype), dtype) {
            Some(Scalar::Int(v)) => json!(v),
            Some(Scalar::UInt(v)) => json!(v),
            Some(Scalar::Float(v)) => json!(v),
            None => Value::Null,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_values_cast_like_numpy() {
        assert_eq!(Scalar::Float(1e20).to_le_bytes(DType::F32), 1e20f32.to_le_bytes());
        assert_eq!(
            Scalar::Int(-32767).to_le_bytes(DType::I16),
            (-32767i16).to_le_bytes()
        );
        assert_eq!(fill_json(Scalar::Float(f64::NAN), DType::F32), json!("NaN"));
        assert_eq!(fill_json(Scalar::Int(-1), DType::I8), json!(-1));
        assert_eq!(fill_json(Scalar::Float(1e20), DType::F32), json!(1e20f32 as f64));
        let f = DType::F32.netcdf_default_fill();
        assert_eq!(
            f32::from_le_bytes([f[0], f[1], f[2], f[3]]),
            9.969_209_968_386_869e36_f64 as f32
        );
    }
}
