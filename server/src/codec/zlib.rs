//! zlib (HDF5 "deflate", numcodecs `zlib`).

use super::CodecError;

/// zlib inflate into a buffer of the expected size (one byte more is read, so a stream
/// longer than expected shows as a size mismatch to the caller).
///
/// `Decompress` writes into the vector's spare capacity: `io::Read::read_to_end` would zero
/// the megabyte buffer before reading into it (a tenth of a reduction's CPU, profiled).
pub fn inflate(src: &[u8], expected: usize) -> Result<Vec<u8>, CodecError> {
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
}
