//! A small netCDF-3 writer (the 64-bit offset format, CDF-2) for extraction answers
//! (`f=nc` of the EDR routes): fixed-size dimensions, text/float/double attributes and
//! float/double variables — what a point series or an area needs, nothing more. CDF-2
//! rather than netCDF-4: a flat big-endian layout written in one pass with no library,
//! which every netCDF reader (netCDF-C, xarray's scipy and netCDF4 engines) opens.
//!
//! Layout (NetCDF Classic Format Specification): `CDF\x02`, `numrecs`, the dimension,
//! global attribute and variable lists (each variable with its 8-byte `begin` offset), then
//! every variable's values in order, each padded to 4 bytes.

/// An attribute.
#[derive(Debug, Clone)]
pub enum Attr {
    /// `NC_CHAR` text.
    Text(String, String),
    /// One `NC_FLOAT`.
    F32(String, f32),
    /// One `NC_DOUBLE`.
    F64(String, f64),
}

/// The values of a variable.
#[derive(Debug, Clone)]
enum Data {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// A variable: its dimensions (indices into [`File::dims`]), attributes and values (C
/// order, as many as the dimensions' product).
#[derive(Debug, Clone)]
pub struct Var {
    name: String,
    dims: Vec<usize>,
    attrs: Vec<Attr>,
    data: Data,
}

impl Var {
    /// A float32 variable.
    pub fn f32(name: &str, dims: Vec<usize>, attrs: Vec<Attr>, v: Vec<f32>) -> Self {
        Var {
            name: name.into(),
            dims,
            attrs,
            data: Data::F32(v),
        }
    }
    /// A float64 variable.
    pub fn f64(name: &str, dims: Vec<usize>, attrs: Vec<Attr>, v: Vec<f64>) -> Self {
        Var {
            name: name.into(),
            dims,
            attrs,
            data: Data::F64(v),
        }
    }
    fn len(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::F64(v) => v.len(),
        }
    }
}

/// A netCDF-3 file to encode.
#[derive(Debug, Clone, Default)]
pub struct File {
    /// Dimensions: name and length (none is the record dimension).
    pub dims: Vec<(String, u64)>,
    /// Global attributes.
    pub attrs: Vec<Attr>,
    /// Variables, written in this order.
    pub vars: Vec<Var>,
}

/// Why a file cannot be encoded (a bug of the caller: the writer checks its input).
#[derive(Debug, thiserror::Error)]
pub enum CdfError {
    /// A variable names a dimension that does not exist.
    #[error("variable '{0}' names dimension {1}, which does not exist")]
    NoDim(String, usize),
    /// A variable holds other than its dimensions' product of values.
    #[error("variable '{0}' has {1} values for a shape of {2}")]
    Shape(String, usize, u64),
    /// A name is not a valid netCDF name (empty, or with '/' or control characters).
    #[error("'{0}' is not a valid netCDF name")]
    Name(String),
    /// A length does not fit the format's 32-bit counts.
    #[error("'{0}' is too large for netCDF-3")]
    TooLarge(String),
}

const NC_DIMENSION: u32 = 0x0A;
const NC_VARIABLE: u32 = 0x0B;
const NC_ATTRIBUTE: u32 = 0x0C;
const NC_CHAR: u32 = 2;
const NC_FLOAT: u32 = 5;
const NC_DOUBLE: u32 = 6;

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn u32_of(n: usize, what: &str) -> Result<u32, CdfError> {
    u32::try_from(n).map_err(|_| CdfError::TooLarge(what.to_string()))
}

fn name(out: &mut Vec<u8>, s: &str) -> Result<(), CdfError> {
    if s.is_empty() || s.contains('/') || s.chars().any(char::is_control) {
        return Err(CdfError::Name(s.to_string()));
    }
    out.extend(u32_of(s.len(), s)?.to_be_bytes());
    out.extend(s.as_bytes());
    pad4(out);
    Ok(())
}

fn attrs(out: &mut Vec<u8>, a: &[Attr]) -> Result<(), CdfError> {
    if a.is_empty() {
        out.extend([0u8; 8]); // ABSENT
        return Ok(());
    }
    out.extend(NC_ATTRIBUTE.to_be_bytes());
    out.extend(u32_of(a.len(), "attributes")?.to_be_bytes());
    for at in a {
        match at {
            Attr::Text(n, v) => {
                name(out, n)?;
                out.extend(NC_CHAR.to_be_bytes());
                out.extend(u32_of(v.len(), n)?.to_be_bytes());
                out.extend(v.as_bytes());
            }
            Attr::F32(n, v) => {
                name(out, n)?;
                out.extend(NC_FLOAT.to_be_bytes());
                out.extend(1u32.to_be_bytes());
                out.extend(v.to_be_bytes());
            }
            Attr::F64(n, v) => {
                name(out, n)?;
                out.extend(NC_DOUBLE.to_be_bytes());
                out.extend(1u32.to_be_bytes());
                out.extend(v.to_be_bytes());
            }
        }
        pad4(out);
    }
    Ok(())
}

impl File {
    /// The file's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, CdfError> {
        // check shapes first
        let mut sizes = Vec::with_capacity(self.vars.len());
        for v in &self.vars {
            let mut n: u64 = 1;
            for &d in &v.dims {
                let (_, len) = self
                    .dims
                    .get(d)
                    .ok_or_else(|| CdfError::NoDim(v.name.clone(), d))?;
                n = n.saturating_mul(*len);
            }
            if v.len() as u64 != n {
                return Err(CdfError::Shape(v.name.clone(), v.len(), n));
            }
            let width = match v.data {
                Data::F32(_) => 4,
                Data::F64(_) => 8,
            };
            sizes.push((n * width).div_ceil(4) * 4);
        }
        let mut head = Vec::new();
        head.extend(b"CDF\x02");
        head.extend(0u32.to_be_bytes()); // numrecs: no record dimension
        if self.dims.is_empty() {
            head.extend([0u8; 8]);
        } else {
            head.extend(NC_DIMENSION.to_be_bytes());
            head.extend(u32_of(self.dims.len(), "dimensions")?.to_be_bytes());
            for (n, len) in &self.dims {
                name(&mut head, n)?;
                let len = u32::try_from(*len).map_err(|_| CdfError::TooLarge(n.clone()))?;
                head.extend(len.to_be_bytes());
            }
        }
        attrs(&mut head, &self.attrs)?;
        // variable list with placeholder offsets, patched once the header size is known
        let mut begins = Vec::with_capacity(self.vars.len());
        if self.vars.is_empty() {
            head.extend([0u8; 8]);
        } else {
            head.extend(NC_VARIABLE.to_be_bytes());
            head.extend(u32_of(self.vars.len(), "variables")?.to_be_bytes());
            for (v, size) in self.vars.iter().zip(&sizes) {
                name(&mut head, &v.name)?;
                head.extend(u32_of(v.dims.len(), &v.name)?.to_be_bytes());
                for &d in &v.dims {
                    head.extend(u32_of(d, &v.name)?.to_be_bytes());
                }
                attrs(&mut head, &v.attrs)?;
                head.extend(
                    match v.data {
                        Data::F32(_) => NC_FLOAT,
                        Data::F64(_) => NC_DOUBLE,
                    }
                    .to_be_bytes(),
                );
                // vsize is 32 bits; larger variables write 2^32 - 1 (readers recompute it)
                head.extend(u32::try_from(*size).unwrap_or(u32::MAX).to_be_bytes());
                begins.push(head.len());
                head.extend(0u64.to_be_bytes());
            }
        }
        let mut offset = head.len() as u64;
        for (pos, size) in begins.iter().zip(&sizes) {
            head[*pos..*pos + 8].copy_from_slice(&offset.to_be_bytes());
            offset += size;
        }
        let mut out = head;
        for v in &self.vars {
            match &v.data {
                Data::F32(x) => x.iter().for_each(|e| out.extend(e.to_be_bytes())),
                Data::F64(x) => x.iter().for_each(|e| out.extend(e.to_be_bytes())),
            }
            pad4(&mut out);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_and_offsets() {
        let f = File {
            dims: vec![("t".into(), 3)],
            attrs: vec![Attr::Text("title".into(), "abc".into())],
            vars: vec![
                Var::f64("t", vec![0], vec![], vec![1.0, 2.0, 3.0]),
                Var::f32(
                    "v",
                    vec![0],
                    vec![Attr::F32("_FillValue".into(), f32::NAN)],
                    vec![1.5, 2.5, 3.5],
                ),
                Var::f64("s", vec![], vec![], vec![7.0]),
            ],
        };
        let b = f.encode().unwrap();
        assert_eq!(&b[..4], b"CDF\x02");
        // data: 24 + 12 (+0 pad) + 8 bytes at the end
        let n = b.len();
        assert_eq!(&b[n - 8..], &7.0f64.to_be_bytes());
        assert_eq!(&b[n - 20..n - 16], &1.5f32.to_be_bytes());
        assert_eq!(&b[n - 44..n - 36], &1.0f64.to_be_bytes());
        // the server's own netCDF-3 reader reads it back: names, shapes, offsets, attributes
        let h = crate::source::nc3::parse_header(&b, b.len() as u64).unwrap();
        assert_eq!(h.version, 2);
        let v = h.var("v").unwrap();
        assert_eq!(h.shape(v), vec![3]);
        let at = v.begin as usize;
        assert_eq!(&b[at..at + 4], &1.5f32.to_be_bytes());
        let s = h.var("s").unwrap();
        assert_eq!(h.shape(s), Vec::<u64>::new());
        assert_eq!(&b[s.begin as usize..s.begin as usize + 8], &7.0f64.to_be_bytes());
        assert_eq!(h.attr("title").and_then(|a| a.as_str()), Some("abc"));
        let bad = File {
            dims: vec![("t".into(), 2)],
            attrs: vec![],
            vars: vec![Var::f32("v", vec![0], vec![], vec![1.0])],
        };
        assert!(bad.encode().is_err());
        let bad = File {
            dims: vec![],
            attrs: vec![],
            vars: vec![Var::f32("v", vec![1], vec![], vec![1.0])],
        };
        assert!(bad.encode().is_err());
    }
}
