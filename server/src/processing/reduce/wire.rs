//! Wire forms of the accumulators' buffers (serde `with` modules for [`super::accum::Acc`]).
//!
//! A partial a compute worker sends back holds millions of numbers. Serialised element by
//! element (postcard: a call, a bounds check and for integers a varint per number) decoding
//! it costs more than reading it off the socket — about 7 ms per 2.3 MB partial, a tenth of
//! a one-year `groupby` over 16 partials. Each buffer goes as one byte string instead:
//! little-endian values, converted in one tight loop each way (no per-number calls).
//! Counts (`u64`, small: a run's rows) go in the narrowest width holding the largest of
//! them — 1, 2, 4 or 8 bytes, named by a leading byte — so they stay as compact as varints.
//!
//! What comes in was sent by another process: lengths and widths are checked, a malformed
//! buffer is a decoding error, never a panic.

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;

/// Decodes a byte string with `F` (also from a sequence of bytes, for formats without
/// byte strings).
struct Decode<F>(F);

impl<'de, T, F: FnOnce(&[u8]) -> Result<T, String>> Visitor<'de> for Decode<F> {
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a byte string of packed numbers")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<T, E> {
        (self.0)(v).map_err(E::custom)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
        let mut v = Vec::new();
        while let Some(b) = seq.next_element::<u8>()? {
            v.push(b);
        }
        (self.0)(&v).map_err(de::Error::custom)
    }
}

fn decode_with<'de, D: Deserializer<'de>, T>(
    d: D,
    f: impl FnOnce(&[u8]) -> Result<T, String>,
) -> Result<T, D::Error> {
    d.deserialize_bytes(Decode(f))
}

/// Little-endian bytes of numbers of `W` bytes each.
macro_rules! le {
    ($put:ident, $get:ident, $t:ty, $w:expr) => {
        fn $put(v: impl ExactSizeIterator<Item = $t>, out: &mut Vec<u8>) {
            let at = out.len();
            out.resize(at + v.len() * $w, 0);
            for (c, x) in out[at..].chunks_exact_mut($w).zip(v) {
                c.copy_from_slice(&x.to_le_bytes());
            }
        }

        fn $get(b: &[u8]) -> Result<Vec<$t>, String> {
            if b.len() % $w != 0 {
                return Err(format!(
                    "{} bytes are not a whole number of {}-byte values",
                    b.len(),
                    $w
                ));
            }
            Ok(b.chunks_exact($w)
                .map(|c| {
                    let mut a = [0u8; $w];
                    a.copy_from_slice(c);
                    <$t>::from_le_bytes(a)
                })
                .collect())
        }
    };
}

fn put_u8(v: impl ExactSizeIterator<Item = u8>, out: &mut Vec<u8>) {
    out.extend(v);
}

le!(put_u16, get_u16, u16, 2);
le!(put_u32, get_u32, u32, 4);
le!(put_u64, get_u64, u64, 8);
le!(put_f64, get_f64, f64, 8);
le!(put_i128, get_i128, i128, 16);

/// Counts in the narrowest width holding the largest: a width byte, then the values.
#[allow(clippy::cast_possible_truncation)]
fn put_counts(v: &[u64], out: &mut Vec<u8>) {
    let max = v.iter().copied().max().unwrap_or(0);
    if max <= u64::from(u8::MAX) {
        out.push(1);
        put_u8(v.iter().map(|x| *x as u8), out);
    } else if max <= u64::from(u16::MAX) {
        out.push(2);
        put_u16(v.iter().map(|x| *x as u16), out);
    } else if max <= u64::from(u32::MAX) {
        out.push(4);
        put_u32(v.iter().map(|x| *x as u32), out);
    } else {
        out.push(8);
        put_u64(v.iter().copied(), out);
    }
}

fn get_counts(b: &[u8]) -> Result<Vec<u64>, String> {
    let Some((w, rest)) = b.split_first() else {
        return Err("counts without their width".into());
    };
    Ok(match w {
        1 => rest.iter().map(|x| u64::from(*x)).collect(),
        2 => get_u16(rest)?.into_iter().map(u64::from).collect(),
        4 => get_u32(rest)?.into_iter().map(u64::from).collect(),
        8 => get_u64(rest)?,
        w => return Err(format!("counts of width {w}")),
    })
}

/// `Vec<u64>` counts.
pub mod counts {
    use super::*;

    #[allow(clippy::ptr_arg)] // serde's `with` passes the field as it is
    pub fn serialize<S: Serializer>(v: &Vec<u64>, s: S) -> Result<S::Ok, S::Error> {
        let mut b = Vec::with_capacity(v.len() + 1);
        put_counts(v, &mut b);
        s.serialize_bytes(&b)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
        decode_with(d, get_counts)
    }
}

/// `Vec<f64>`.
pub mod f64s {
    use super::*;

    #[allow(clippy::ptr_arg)]
    pub fn serialize<S: Serializer>(v: &Vec<f64>, s: S) -> Result<S::Ok, S::Error> {
        let mut b = Vec::new();
        put_f64(v.iter().copied(), &mut b);
        s.serialize_bytes(&b)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        decode_with(d, get_f64)
    }
}

/// `Vec<i128>` (exact integer sums).
pub mod i128s {
    use super::*;

    #[allow(clippy::ptr_arg)]
    pub fn serialize<S: Serializer>(v: &Vec<i128>, s: S) -> Result<S::Ok, S::Error> {
        let mut b = Vec::new();
        put_i128(v.iter().copied(), &mut b);
        s.serialize_bytes(&b)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i128>, D::Error> {
        decode_with(d, get_i128)
    }
}

/// `Vec<Vec<f64>>` (a median's values per slot): the length of the packed lengths (8
/// bytes), the lengths as counts, then every value.
pub mod f64_lists {
    use super::*;

    #[allow(clippy::ptr_arg)]
    pub fn serialize<S: Serializer>(v: &Vec<Vec<f64>>, s: S) -> Result<S::Ok, S::Error> {
        let lens: Vec<u64> = v.iter().map(|x| x.len() as u64).collect();
        let mut b = vec![0u8; 8];
        put_counts(&lens, &mut b);
        let packed = (b.len() - 8) as u64;
        b[..8].copy_from_slice(&packed.to_le_bytes());
        for x in v {
            put_f64(x.iter().copied(), &mut b);
        }
        s.serialize_bytes(&b)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<f64>>, D::Error> {
        decode_with(d, |b| {
            let (head, rest) = b.split_at_checked(8).ok_or("value lists without their lengths")?;
            let mut n = [0u8; 8];
            n.copy_from_slice(head);
            let (lens, vals) = usize::try_from(u64::from_le_bytes(n))
                .ok()
                .and_then(|n| rest.split_at_checked(n))
                .ok_or("value lists' lengths beyond the buffer")?;
            let lens = get_counts(lens)?;
            let vals = get_f64(vals)?;
            let total = lens
                .iter()
                .try_fold(0u64, |a, l| a.checked_add(*l))
                .ok_or("value lists' lengths overflow")?;
            if total != vals.len() as u64 {
                return Err(format!(
                    "value lists of {total} values in all, {} sent",
                    vals.len()
                ));
            }
            let mut it = vals.into_iter();
            Ok(lens
                .iter()
                .map(|l| it.by_ref().take(*l as usize).collect())
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_take_the_narrowest_width() {
        for (v, w) in [
            (vec![0u64, 3, 255], 1u8),
            (vec![256, 0], 2),
            (vec![70_000], 4),
            (vec![u64::MAX, 1], 8),
            (vec![], 1),
        ] {
            let mut b = Vec::new();
            put_counts(&v, &mut b);
            assert_eq!(b[0], w, "{v:?}");
            assert_eq!(b.len(), 1 + v.len() * usize::from(w), "{v:?}");
            assert_eq!(get_counts(&b).expect("decode"), v);
        }
        assert!(get_counts(&[]).is_err());
        assert!(get_counts(&[3, 0, 0, 0]).is_err(), "width 3");
        assert!(get_counts(&[2, 0, 0, 0]).is_err(), "half a value");
        assert!(get_f64(&[0; 9]).is_err());
        assert_eq!(
            get_i128(&put(|b| put_i128([i128::MIN, -1].into_iter(), b))).expect("i128"),
            [i128::MIN, -1]
        );
    }

    fn put(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut b = Vec::new();
        f(&mut b);
        b
    }
}
