//! A typed block of values: what the pipeline hands every protocol.
//!
//! A region of a variable, stored or computed, is one [`Block`]: its element type, its shape
//! and its values in C order (little-endian bytes for fixed-size types, owned strings for
//! NC_STRING). Protocols encode it (Zarr chunks, and next DAP, images); processing reads it
//! with typed access ([`Block::values`]) and builds new ones ([`Block::from_values`]). In the
//! spirit of zarrs' `ArrayBytes`/`Element`: the bytes are the canonical form, so a stored
//! chunk decoded into a buffer becomes a block without a copy.

use crate::dtype::DType;

/// Why a block cannot be built or read as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The data does not have one element per position of the shape.
    #[error("a block of shape {shape:?} has {expected} elements, not {got}")]
    Length {
        /// Shape the block was to have.
        shape: Vec<u64>,
        /// Elements the shape holds.
        expected: u64,
        /// Elements the data held (bytes divided by the element size for fixed-size types).
        got: u64,
    },
    /// The shape's element count overflows `usize` (a malformed or hostile shape).
    #[error("a block of shape {0:?} has more elements than this machine can address")]
    TooLarge(Vec<u64>),
    /// Typed access asked for a type other than the block's own (no implicit casts).
    #[error("values of type {dtype:?} cannot be read as {asked}")]
    Type {
        /// The block's element type.
        dtype: DType,
        /// Name of the Rust type asked for, for the message.
        asked: &'static str,
    },
}

/// The values of a block.
#[derive(Clone, Debug, PartialEq)]
pub enum BlockData {
    /// Little-endian elements in C order (`shape` product × `dtype.size()` bytes).
    Bytes(Vec<u8>),
    /// Strings in C order (NC_STRING variables).
    Strings(Vec<String>),
}

/// A region of a variable: element type, shape and values in C order.
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    dtype: DType,
    shape: Vec<u64>,
    data: BlockData,
}

/// Number of elements of `shape`, if addressable.
fn elements(shape: &[u64]) -> Result<usize, BlockError> {
    shape
        .iter()
        .try_fold(1u64, |a, d| a.checked_mul(*d))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| BlockError::TooLarge(shape.to_vec()))
}

impl Block {
    /// A block of fixed-size elements from their little-endian bytes; the length must match.
    pub fn from_bytes(dtype: DType, shape: Vec<u64>, bytes: Vec<u8>) -> Result<Self, BlockError> {
        let n = elements(&shape)?;
        let size = dtype.size();
        if dtype == DType::Str || bytes.len() != n.saturating_mul(size) {
            return Err(BlockError::Length {
                expected: n as u64,
                got: bytes.len().checked_div(size).unwrap_or(0) as u64,
                shape,
            });
        }
        Ok(Self {
            dtype,
            shape,
            data: BlockData::Bytes(bytes),
        })
    }

    /// A block of NC_STRING values.
    pub fn from_strings(shape: Vec<u64>, strings: Vec<String>) -> Result<Self, BlockError> {
        let n = elements(&shape)?;
        if strings.len() != n {
            return Err(BlockError::Length {
                expected: n as u64,
                got: strings.len() as u64,
                shape,
            });
        }
        Ok(Self {
            dtype: DType::Str,
            shape,
            data: BlockData::Strings(strings),
        })
    }

    /// A block from typed values (the element type is `T`'s).
    pub fn from_values<T: Element>(shape: Vec<u64>, values: &[T]) -> Result<Self, BlockError> {
        let mut bytes = Vec::with_capacity(values.len() * T::DTYPE.size());
        for v in values {
            v.write_le(&mut bytes);
        }
        Self::from_bytes(T::DTYPE, shape, bytes)
    }

    /// Element type of the values.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Extent of the block along each dimension, outermost first (C order).
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.data {
            BlockData::Bytes(b) => b.len().checked_div(self.dtype.size()).unwrap_or(0),
            BlockData::Strings(s) => s.len(),
        }
    }

    /// True for a block with no elements (some dimension of its shape is 0).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values, as bytes or strings.
    pub fn data(&self) -> &BlockData {
        &self.data
    }

    /// The little-endian bytes of a fixed-size block (`None` for strings).
    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.data {
            BlockData::Bytes(b) => Some(b),
            BlockData::Strings(_) => None,
        }
    }

    /// The values, consumed (avoids a copy when encoding the block).
    pub fn into_data(self) -> BlockData {
        self.data
    }

    /// The values as `T`, which must be the block's element type (no conversion: casting
    /// is processing's business, with numpy's rules).
    pub fn values<T: Element>(&self) -> Result<Vec<T>, BlockError> {
        let type_error = || BlockError::Type {
            dtype: self.dtype,
            asked: T::NAME,
        };
        let BlockData::Bytes(b) = &self.data else {
            return Err(type_error());
        };
        if self.dtype != T::DTYPE {
            return Err(type_error());
        }
        Ok(T::map_le(b, |x| x))
    }
}

/// A Rust type that is the element type of a block.
pub trait Element: Copy {
    /// The block element type it reads and writes.
    const DTYPE: DType;
    /// Its name in messages.
    const NAME: &'static str;
    /// Decodes one element from exactly `DTYPE.size()` little-endian bytes.
    fn from_le(b: &[u8]) -> Self;
    /// `f` of every element of `bytes` (little-endian, whole elements; a trailing partial
    /// one is ignored), collected. Walks the bytes as fixed-size arrays, which the compiler
    /// turns into plain (vectorised) loads: decoding a block element by element from
    /// slices was a seventh of a monthly mean's CPU, profiled.
    fn map_le<F>(bytes: &[u8], f: impl FnMut(Self) -> F) -> Vec<F>;
    /// Appends its little-endian bytes.
    fn write_le(&self, out: &mut Vec<u8>);
}

macro_rules! element {
    ($t:ty, $d:expr) => {
        impl Element for $t {
            const DTYPE: DType = $d;
            const NAME: &'static str = stringify!($t);
            fn from_le(b: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(b);
                <$t>::from_le_bytes(a)
            }
            fn map_le<F>(bytes: &[u8], mut f: impl FnMut(Self) -> F) -> Vec<F> {
                bytes
                    .as_chunks::<{ std::mem::size_of::<$t>() }>()
                    .0
                    .iter()
                    .map(|a| f(<$t>::from_le_bytes(*a)))
                    .collect()
            }
            fn write_le(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    };
}

element!(i8, DType::I8);
element!(u8, DType::U8);
element!(i16, DType::I16);
element!(u16, DType::U16);
element!(i32, DType::I32);
element!(u32, DType::U32);
element!(i64, DType::I64);
element!(u64, DType::U64);
element!(f32, DType::F32);
element!(f64, DType::F64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_values_round_trip_through_little_endian_bytes() {
        let b = Block::from_values(vec![2, 2], &[1.5f32, -2.0, f32::NAN, 0.0]).expect("block");
        assert_eq!(b.dtype(), DType::F32);
        assert_eq!(b.len(), 4);
        assert_eq!(&b.bytes().expect("bytes")[..4], &1.5f32.to_le_bytes());
        let v: Vec<f32> = b.values().expect("f32");
        assert_eq!(v[0], 1.5);
        assert!(v[2].is_nan());
    }

    #[test]
    fn wrong_lengths_and_types_are_errors() {
        let e = Block::from_bytes(DType::F64, vec![3], vec![0; 16]).expect_err("16 bytes are 2 f64");
        assert_eq!(
            e,
            BlockError::Length {
                shape: vec![3],
                expected: 3,
                got: 2
            }
        );
        let b = Block::from_values(vec![1], &[7i32]).expect("block");
        assert!(matches!(b.values::<f32>(), Err(BlockError::Type { .. })));
        let s = Block::from_strings(vec![2], vec!["a".into(), "b".into()]).expect("strings");
        assert!(s.bytes().is_none());
        assert!(matches!(s.values::<u8>(), Err(BlockError::Type { .. })));
        assert!(matches!(
            Block::from_bytes(DType::U8, vec![u64::MAX, u64::MAX], vec![]),
            Err(BlockError::TooLarge(_))
        ));
    }
}
