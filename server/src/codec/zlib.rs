//! zlib (HDF5 "deflate", numcodecs `zlib`).

use super::CodecError;

/// Most bytes one byte of a deflate stream can become (deflate's limit is 258 bytes from a
/// code of at least 2 bits: about 1032 to 1); a bound on what a stream can inflate to.
const MAX_RATIO: usize = 1032;

thread_local! {
    /// This thread's libdeflate decompressor (its tables are reused from chunk to chunk).
    static LIBDEFLATE: std::cell::RefCell<libdeflater::Decompressor> =
        std::cell::RefCell::new(libdeflater::Decompressor::new());
}

/// zlib inflate into a buffer of the expected size (one byte more is read, so a stream
/// longer than expected shows as a size mismatch to the caller).
///
/// Why libdeflate: inflating is most of the cost of reading a zlib chunk (an EDR or OPeNDAP
/// time series decodes a whole stored chunk per value), and libdeflate, which decodes a
/// whole buffer at once — the only way chunks are decoded here — is 2.1× faster than
/// zlib-rs on the bench's zlib+shuffle chunks. The output buffer is at most what the
/// stream could inflate to ([`MAX_RATIO`]), so a corrupt chunk declaring gigabytes cannot
/// make a tiny stream allocate them. A stream libdeflate rejects (corrupt, cut short, or
/// longer than expected) is inflated again by [`inflate_streaming`], which says which it
/// is and keeps the longer-than-expected prefix the caller's size check reports.
pub fn inflate(src: &[u8], expected: usize) -> Result<Vec<u8>, CodecError> {
    inflate_into(src, expected, Vec::new())
}

/// [`inflate`] into `reuse`, a buffer whose bytes do not matter (only what it does not
/// already hold is zeroed before libdeflate writes it): the decoder keeps the buffer a
/// chunk was inflated into for the next chunk of its thread.
pub fn inflate_into(src: &[u8], expected: usize, reuse: Vec<u8>) -> Result<Vec<u8>, CodecError> {
    let cap = expected
        .saturating_add(1)
        .min(src.len().saturating_mul(MAX_RATIO).saturating_add(64));
    let mut out = reuse;
    out.truncate(cap);
    out.try_reserve_exact(cap - out.len())
        .map_err(|_| CodecError::Deflate(format!("cannot allocate {cap} bytes")))?;
    out.resize(cap, 0);
    match LIBDEFLATE.with(|d| d.borrow_mut().zlib_decompress(src, &mut out)) {
        Ok(n) => {
            out.truncate(n);
            Ok(out)
        }
        Err(_) => inflate_streaming(src, expected),
    }
}

/// [`inflate`] with flate2 (zlib-rs), streaming into the vector's spare capacity: names a
/// bad stream exactly (corrupt, or incomplete), and stops one byte past `expected`.
///
/// `Decompress` writes into the vector's spare capacity: `io::Read::read_to_end` would zero
/// the megabyte buffer before reading into it (a tenth of a reduction's CPU, profiled).
fn inflate_streaming(src: &[u8], expected: usize) -> Result<Vec<u8>, CodecError> {
    let cap = expected.saturating_add(1);
    let mut out = Vec::new();
    out.try_reserve_exact(cap)
        .map_err(|_| CodecError::Deflate(format!("cannot allocate {cap} bytes")))?;
    let mut d = flate2::Decompress::new(true);
    loop {
        let (in0, out0) = (d.total_in(), d.total_out());
        let input = usize::try_from(in0)
            .ok()
            .and_then(|i| src.get(i..))
            .unwrap_or_default();
        let status = d
            .decompress_vec(input, &mut out, flate2::FlushDecompress::Finish)
            .map_err(|e| CodecError::Deflate(format!("corrupt deflate stream: {e}")))?;
        match status {
            flate2::Status::StreamEnd => return Ok(out),
            // longer than expected: the caller's size check names it
            _ if out.len() >= cap => return Ok(out),
            _ if d.total_in() == in0 && d.total_out() == out0 => {
                return Err(CodecError::Deflate("incomplete deflate stream".into()));
            }
            _ => {}
        }
    }
}

/// zlib deflate.
pub fn deflate(src: &[u8], level: u8) -> Result<Vec<u8>, CodecError> {
    use std::io::Write as _;
    let mut enc = flate2::write::ZlibEncoder::new(
        Vec::with_capacity(src.len() / 2),
        flate2::Compression::new(level.min(9) as u32),
    );
    enc.write_all(src)
        .and_then(|()| enc.finish())
        .map_err(|e| CodecError::Deflate(e.to_string()))
}

/// numcodecs id.
pub const ID: &str = "zlib";

/// numcodecs configuration of a zlib stream written at `level`.
pub fn numcodecs(level: u8) -> serde_json::Value {
    serde_json::json!({"id": ID, "level": level})
}

/// The level of a numcodecs `zlib` configuration (numcodecs' default 1; 0-9).
pub fn level_of(config: &serde_json::Value) -> u8 {
    config
        .get("level")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(1)
        .min(9) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Round trip, and the three ways a stored stream can be wrong: cut short (an error),
    /// corrupt (an error), longer than the chunk (one byte more, for the caller's size
    /// check); never a panic or more than expected + 1 bytes.
    #[test]
    fn inflate_round_trips_and_names_bad_streams() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let z = deflate(&data, 1).expect("deflate");
        assert_eq!(inflate(&z, data.len()).expect("inflate"), data);
        assert_eq!(
            inflate(&deflate(&[], 1).expect("deflate"), 0).expect("empty"),
            Vec::<u8>::new()
        );
        let cut = inflate(&z[..z.len() / 2], data.len()).expect_err("truncated");
        assert!(cut.to_string().contains("incomplete"), "{cut}");
        let mut bad = z.clone();
        bad[0] ^= 0xff; // the zlib header
        let e = inflate(&bad, data.len()).expect_err("corrupt");
        assert!(e.to_string().contains("corrupt"), "{e}");
        let longer = inflate(&z, 1000).expect("bounded");
        assert_eq!(longer.len(), 1001);
        assert_eq!(longer[..], data[..1001]);
    }

    /// libdeflate and the streaming inflate agree on every stream: real chunks of every
    /// level, an empty one, and one that inflates to exactly the bound of its length (all
    /// zeros: deflate's best ratio), so the bound never cuts a valid stream.
    #[test]
    fn both_inflates_agree() {
        let floats: Vec<u8> = (0..50_000u32)
            .flat_map(|i| ((i as f32).sin() * 300.0).to_le_bytes())
            .collect();
        let zeros = vec![0u8; 1 << 20];
        for data in [&floats[..], &zeros[..], &[][..]] {
            for level in [1, 6, 9] {
                let z = deflate(data, level).expect("deflate");
                let fast = inflate(&z, data.len()).expect("libdeflate");
                assert_eq!(fast, data, "level {level}");
                assert_eq!(inflate_streaming(&z, data.len()).expect("flate2"), fast);
                // into a reused buffer holding other bytes, shorter or longer
                for reuse in [vec![0xa5u8; 7], vec![0x5au8; data.len() + 100]] {
                    assert_eq!(inflate_into(&z, data.len(), reuse).expect("reused"), data);
                }
                // shorter than the stream: one byte more than expected, as before
                if data.len() > 10 {
                    assert_eq!(inflate(&z, 10).expect("bounded"), data[..11]);
                }
            }
        }
    }
}
