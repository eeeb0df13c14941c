//! numcodecs `BitRound` (Klöwer et al. 2021): float mantissas rounded to `keepbits` bits,
//! ties to even, so that the values compress better. Pure functions on slices.
//!
//! Bit-identical to numcodecs' `BitRound.encode`, the reference DKRZ's users compare with:
//! the bit pattern is taken as an integer, `((b >> m) & 1) + (1 << (m - 1)) - 1` is added
//! **with wrap-around** (numpy integer addition) and the low `m = mantissa_bits - keepbits`
//! bits are cleared. A carry out of the mantissa moves into the exponent (rounding up to the
//! next power of two, or to infinity); ±inf have no mantissa bits and stay; NaNs with large
//! payloads carry into the sign bit (0x7fffffff → -0.0, 0xffffffff → +0.0), as numcodecs does.
//! zarrs' `bitround` adds saturating and differs there; numcodecs is the reference.
//! `keepbits` equal to the mantissa width leaves the values unchanged, as numcodecs does.

/// numcodecs codec id.
pub const ID: &str = "bitround";

/// Mantissa bits of float32.
pub const F32_MANTISSA_BITS: u32 = 23;
/// Mantissa bits of float64.
pub const F64_MANTISSA_BITS: u32 = 52;

/// A `keepbits` above the type's mantissa width (numcodecs raises `ValueError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("keepbits {keepbits} is more than the {max} mantissa bits of the type")]
pub struct KeepbitsTooLarge {
    /// The bits asked for.
    pub keepbits: u32,
    /// The type's mantissa width (23 for float32, 52 for float64).
    pub max: u32,
}

macro_rules! round_bits {
    ($name:ident, $uint:ty, $bits:expr) => {
        /// Rounds bit patterns in place as numcodecs `BitRound(keepbits).encode` does.
        pub fn $name(values: &mut [$uint], keepbits: u32) -> Result<(), KeepbitsTooLarge> {
            if keepbits > $bits {
                return Err(KeepbitsTooLarge {
                    keepbits,
                    max: $bits,
                });
            }
            if keepbits == $bits {
                return Ok(());
            }
            let maskbits = $bits - keepbits;
            let mask: $uint = <$uint>::MAX << maskbits;
            let half_quantum1: $uint = (1 << (maskbits - 1)) - 1;
            for b in values {
                *b = b.wrapping_add(((*b >> maskbits) & 1) + half_quantum1) & mask;
            }
            Ok(())
        }
    };
}

round_bits!(round_f32_bits, u32, F32_MANTISSA_BITS);
round_bits!(round_f64_bits, u64, F64_MANTISSA_BITS);

/// Rounds little-endian float32 bytes in place, leaving elements whose bit pattern equals
/// one of `keep` (fill values) untouched.
pub fn round_f32_le(bytes: &mut [u8], keepbits: u32, keep: &[u32]) -> Result<(), KeepbitsTooLarge> {
    for c in bytes.chunks_exact_mut(4) {
        let mut b = [u32::from_le_bytes([c[0], c[1], c[2], c[3]])];
        if keep.contains(&b[0]) {
            continue;
        }
        round_f32_bits(&mut b, keepbits)?;
        c.copy_from_slice(&b[0].to_le_bytes());
    }
    Ok(())
}

/// Rounds little-endian float64 bytes in place, leaving elements whose bit pattern equals
/// one of `keep` (fill values) untouched.
pub fn round_f64_le(bytes: &mut [u8], keepbits: u32, keep: &[u64]) -> Result<(), KeepbitsTooLarge> {
    for c in bytes.chunks_exact_mut(8) {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        let mut b = [u64::from_le_bytes(a)];
        if keep.contains(&b[0]) {
            continue;
        }
        round_f64_bits(&mut b, keepbits)?;
        c.copy_from_slice(&b[0].to_le_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Inputs: ±0, ±inf, quiet NaNs ±, NaNs with all payload bits ±, signalling NaNs,
    // subnormals (smallest, largest ±), max finite ±, ties (1.5, 1.25, 1.75, 1.125), pi,
    // 1e20 (a common _FillValue), values just below a power of two (carry into the exponent).
    // Expected values: `numcodecs.BitRound(k).encode(x)` (numcodecs 0.x in the test venv).
    const F32_IN: [u32; 25] = [
        0x00000000, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0xffc00000, 0x7fffffff, 0xffffffff,
        0x7fbfffff, 0xffbfffff, 0x7f800001, 0x00000001, 0x807fffff, 0x007fffff, 0x7f7fffff, 0xff7fffff,
        0x3f800000, 0x3fc00000, 0x3fa00000, 0x3fe00000, 0x3f900000, 0x40490fdb, 0x60ad78ec, 0x3f8fffff,
        0x3f7fffff,
    ];
    const F32_OUT: [(u32, [u32; 25]); 8] = [
        (
            0,
            [
                0x00000000, 0x80000000, 0x7f800000, 0xff800000, 0x80000000, 0x00000000, 0x80000000,
                0x00000000, 0x7f800000, 0xff800000, 0x7f800000, 0x00000000, 0x80800000, 0x00800000,
                0x7f800000, 0xff800000, 0x3f800000, 0x40000000, 0x3f800000, 0x40000000, 0x3f800000,
                0x40800000, 0x60800000, 0x3f800000, 0x3f800000,
            ],
        ),
        (
            1,
            [
                0x00000000, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0xffc00000, 0x80000000,
                0x00000000, 0x7fc00000, 0xffc00000, 0x7f800000, 0x00000000, 0x80800000, 0x00800000,
                0x7f800000, 0xff800000, 0x3f800000, 0x3fc00000, 0x3f800000, 0x40000000, 0x3f800000,
                0x40400000, 0x60c00000, 0x3f800000, 0x3f800000,
            ],
        ),
        (
            2,
            [
                0x00000000, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0xffc00000, 0x80000000,
                0x00000000, 0x7fc00000, 0xffc00000, 0x7f800000, 0x00000000, 0x80800000, 0x00800000,
                0x7f800000, 0xff800000, 0x3f800000, 0x3fc00000, 0x3fa00000, 0x3fe00000, 0x3f800000,
                0x40400000, 0x60a00000, 0x3f800000, 0x3f800000,
            ],
        ),
        (
            5,
            [
                0x00000000, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0xffc00000, 0x80000000,
                0x00000000, 0x7fc00000, 0xffc00000, 0x7f800000, 0x00000000, 0x80800000, 0x00800000,
                0x7f800000, 0xff800000, 0x3f800000, 0x3fc00000, 0x3fa00000, 0x3fe00000, 0x3f900000,
                0x40480000, 0x60ac0000, 0x3f900000, 0x3f800000,
            ],
        ),
        (
            10,
            [
                0x00000000, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0xffc00000, 0x80000000,
                0x00000000, 0x7fc00000, 0xffc00000, 0x7f800000, 0x00000000, 0x80800000, 0x00800000,
                0x7f800000, 0xff800000, 0x3f800000, 0x3fc00000, 0x3fa00000, 0x3fe00000, 0x3f900000,
                0x40490000, 0x60ad8000, 0x3f900000, 0x3f800000,
            ],
        ),
        (
            12,
            [
                0x00000000, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0xffc00000, 0x80000000,
                0x00000000, 0x7fc00000, 0xffc00000, 0x7f800000, 0x00000000, 0x80800000, 0x00800000,
                0x7f800000, 0xff800000, 0x3f800000, 0x3fc00000, 0x3fa00000, 0x3fe00000, 0x3f900000,
                0x40491000, 0x60ad7800, 0x3f900000, 0x3f800000,
            ],
        ),
        (
            22,
            [
                0x00000000, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0xffc00000, 0x80000000,
                0x00000000, 0x7fc00000, 0xffc00000, 0x7f800000, 0x00000000, 0x80800000, 0x00800000,
                0x7f800000, 0xff800000, 0x3f800000, 0x3fc00000, 0x3fa00000, 0x3fe00000, 0x3f900000,
                0x40490fdc, 0x60ad78ec, 0x3f900000, 0x3f800000,
            ],
        ),
        (
            23,
            [
                0x00000000, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0xffc00000, 0x7fffffff,
                0xffffffff, 0x7fbfffff, 0xffbfffff, 0x7f800001, 0x00000001, 0x807fffff, 0x007fffff,
                0x7f7fffff, 0xff7fffff, 0x3f800000, 0x3fc00000, 0x3fa00000, 0x3fe00000, 0x3f900000,
                0x40490fdb, 0x60ad78ec, 0x3f8fffff, 0x3f7fffff,
            ],
        ),
    ];
    const F64_IN: [u64; 18] = [
        0x0000000000000000,
        0x8000000000000000,
        0x7ff0000000000000,
        0xfff0000000000000,
        0x7ff8000000000000,
        0xfff8000000000000,
        0x7fffffffffffffff,
        0xffffffffffffffff,
        0x7ff0000000000001,
        0x0000000000000001,
        0x800fffffffffffff,
        0x7fefffffffffffff,
        0xffefffffffffffff,
        0x3ff8000000000000,
        0x3ff4000000000000,
        0x400921fb54442d18,
        0x4415af1d78b58c40,
        0x3fefffffffffffff,
    ];
    const F64_OUT: [(u32, [u64; 18]); 8] = [
        (
            0,
            [
                0x0000000000000000,
                0x8000000000000000,
                0x7ff0000000000000,
                0xfff0000000000000,
                0x8000000000000000,
                0x0000000000000000,
                0x8000000000000000,
                0x0000000000000000,
                0x7ff0000000000000,
                0x0000000000000000,
                0x8010000000000000,
                0x7ff0000000000000,
                0xfff0000000000000,
                0x4000000000000000,
                0x3ff0000000000000,
                0x4010000000000000,
                0x4410000000000000,
                0x3ff0000000000000,
            ],
        ),
        (
            1,
            [
                0x0000000000000000,
                0x8000000000000000,
                0x7ff0000000000000,
                0xfff0000000000000,
                0x7ff8000000000000,
                0xfff8000000000000,
                0x8000000000000000,
                0x0000000000000000,
                0x7ff0000000000000,
                0x0000000000000000,
                0x8010000000000000,
                0x7ff0000000000000,
                0xfff0000000000000,
                0x3ff8000000000000,
                0x3ff0000000000000,
                0x4008000000000000,
                0x4418000000000000,
                0x3ff0000000000000,
            ],
        ),
        (
            3,
            [
                0x0000000000000000,
                0x8000000000000000,
                0x7ff0000000000000,
                0xfff0000000000000,
                0x7ff8000000000000,
                0xfff8000000000000,
                0x8000000000000000,
                0x0000000000000000,
                0x7ff0000000000000,
                0x0000000000000000,
                0x8010000000000000,
                0x7ff0000000000000,
                0xfff0000000000000,
                0x3ff8000000000000,
                0x3ff4000000000000,
                0x400a000000000000,
                0x4416000000000000,
                0x3ff0000000000000,
            ],
        ),
        (
            10,
            [
                0x0000000000000000,
                0x8000000000000000,
                0x7ff0000000000000,
                0xfff0000000000000,
                0x7ff8000000000000,
                0xfff8000000000000,
                0x8000000000000000,
                0x0000000000000000,
                0x7ff0000000000000,
                0x0000000000000000,
                0x8010000000000000,
                0x7ff0000000000000,
                0xfff0000000000000,
                0x3ff8000000000000,
                0x3ff4000000000000,
                0x4009200000000000,
                0x4415b00000000000,
                0x3ff0000000000000,
            ],
        ),
        (
            12,
            [
                0x0000000000000000,
                0x8000000000000000,
                0x7ff0000000000000,
                0xfff0000000000000,
                0x7ff8000000000000,
                0xfff8000000000000,
                0x8000000000000000,
                0x0000000000000000,
                0x7ff0000000000000,
                0x0000000000000000,
                0x8010000000000000,
                0x7ff0000000000000,
                0xfff0000000000000,
                0x3ff8000000000000,
                0x3ff4000000000000,
                0x4009220000000000,
                0x4415af0000000000,
                0x3ff0000000000000,
            ],
        ),
        (
            23,
            [
                0x0000000000000000,
                0x8000000000000000,
                0x7ff0000000000000,
                0xfff0000000000000,
                0x7ff8000000000000,
                0xfff8000000000000,
                0x8000000000000000,
                0x0000000000000000,
                0x7ff0000000000000,
                0x0000000000000000,
                0x8010000000000000,
                0x7ff0000000000000,
                0xfff0000000000000,
                0x3ff8000000000000,
                0x3ff4000000000000,
                0x400921fb60000000,
                0x4415af1d80000000,
                0x3ff0000000000000,
            ],
        ),
        (
            51,
            [
                0x0000000000000000,
                0x8000000000000000,
                0x7ff0000000000000,
                0xfff0000000000000,
                0x7ff8000000000000,
                0xfff8000000000000,
                0x8000000000000000,
                0x0000000000000000,
                0x7ff0000000000000,
                0x0000000000000000,
                0x8010000000000000,
                0x7ff0000000000000,
                0xfff0000000000000,
                0x3ff8000000000000,
                0x3ff4000000000000,
                0x400921fb54442d18,
                0x4415af1d78b58c40,
                0x3ff0000000000000,
            ],
        ),
        (
            52,
            [
                0x0000000000000000,
                0x8000000000000000,
                0x7ff0000000000000,
                0xfff0000000000000,
                0x7ff8000000000000,
                0xfff8000000000000,
                0x7fffffffffffffff,
                0xffffffffffffffff,
                0x7ff0000000000001,
                0x0000000000000001,
                0x800fffffffffffff,
                0x7fefffffffffffff,
                0xffefffffffffffff,
                0x3ff8000000000000,
                0x3ff4000000000000,
                0x400921fb54442d18,
                0x4415af1d78b58c40,
                0x3fefffffffffffff,
            ],
        ),
    ];

    #[test]
    fn f32_matches_numcodecs() {
        for (k, want) in F32_OUT {
            let mut got = F32_IN;
            round_f32_bits(&mut got, k).unwrap();
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                assert_eq!(*g, w, "keepbits {k}, input {:#010x}", F32_IN[i]);
            }
        }
    }

    #[test]
    fn f64_matches_numcodecs() {
        for (k, want) in F64_OUT {
            let mut got = F64_IN;
            round_f64_bits(&mut got, k).unwrap();
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                assert_eq!(*g, w, "keepbits {k}, input {:#018x}", F64_IN[i]);
            }
        }
    }

    #[test]
    fn keepbits_above_the_mantissa_is_refused() {
        assert_eq!(
            round_f32_bits(&mut [0], 24),
            Err(KeepbitsTooLarge {
                keepbits: 24,
                max: 23
            })
        );
        assert!(round_f64_bits(&mut [0], 53).is_err());
        assert!(round_f64_bits(&mut [0], 52).is_ok());
    }

    #[test]
    fn byte_forms_round_and_keep_fill_values() {
        // 1e20 (0x60ad78ec) is changed by keepbits 12 unless it is the fill value.
        let vals = [1.1f32, 1e20, 3.3];
        let mut bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        round_f32_le(&mut bytes, 12, &[1e20f32.to_bits()]).unwrap();
        let mut want = vals.map(f32::to_bits);
        round_f32_bits(&mut want, 12).unwrap();
        want[1] = 1e20f32.to_bits();
        let got: Vec<u32> = bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(got, want);
        let mut one = 1e20f32.to_bits();
        round_f32_bits(std::slice::from_mut(&mut one), 12).unwrap();
        assert_ne!(one, 1e20f32.to_bits());

        let mut b64: Vec<u8> = [1.1f64, -2.5e300].iter().flat_map(|v| v.to_le_bytes()).collect();
        round_f64_le(&mut b64, 3, &[]).unwrap();
        let mut want = [1.1f64.to_bits(), (-2.5e300f64).to_bits()];
        round_f64_bits(&mut want, 3).unwrap();
        assert_eq!(&b64[..8], &want[0].to_le_bytes());
        assert_eq!(&b64[8..], &want[1].to_le_bytes());
    }
}
