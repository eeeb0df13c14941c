//! Fletcher-32 checksum (HDF5 filter 3): verified and removed when decoding.

use super::CodecError;

/// HDF5's Fletcher-32 (H5_checksum_fletcher32): 16-bit big-endian words, folded every 360.
pub fn fletcher32(data: &[u8]) -> u32 {
    let mut sum1: u32 = 0;
    let mut sum2: u32 = 0;
    let mut words = data.chunks_exact(2);
    let mut n = 0;
    for w in words.by_ref() {
        sum1 += ((w[0] as u32) << 8) | w[1] as u32;
        sum2 += sum1;
        n += 1;
        if n == 360 {
            sum1 = (sum1 & 0xffff) + (sum1 >> 16);
            sum2 = (sum2 & 0xffff) + (sum2 >> 16);
            n = 0;
        }
    }
    if n != 0 {
        sum1 = (sum1 & 0xffff) + (sum1 >> 16);
        sum2 = (sum2 & 0xffff) + (sum2 >> 16);
    }
    if let [last] = words.remainder() {
        sum1 += (*last as u32) << 8;
        sum2 += sum1;
        sum1 = (sum1 & 0xffff) + (sum1 >> 16);
        sum2 = (sum2 & 0xffff) + (sum2 >> 16);
    }
    sum1 = (sum1 & 0xffff) + (sum1 >> 16);
    sum2 = (sum2 & 0xffff) + (sum2 >> 16);
    (sum2 << 16) | sum1
}

/// Verifies and removes the checksum HDF5 appended to `buf` (little-endian, after the data).
pub fn check(mut buf: Vec<u8>) -> Result<Vec<u8>, CodecError> {
    if buf.len() < 4 {
        return Err(CodecError::ChecksumTruncated);
    }
    let n = buf.len() - 4;
    let stored = u32::from_le_bytes([buf[n], buf[n + 1], buf[n + 2], buf[n + 3]]);
    let computed = fletcher32(&buf[..n]);
    // HDF5 < 1.6.3 wrote the two 16-bit halves byte-swapped; HDF5 still accepts both.
    let b = computed.to_le_bytes();
    let reversed = u32::from_le_bytes([b[1], b[0], b[3], b[2]]);
    if stored != computed && stored != reversed {
        return Err(CodecError::Checksum { stored, computed });
    }
    buf.truncate(n);
    Ok(buf)
}
