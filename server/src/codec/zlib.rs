//! zlib (HDF5 "deflate", numcodecs `zlib`).

use std::io::Read as _;

use super::CodecError;

/// zlib inflate into a buffer of the expected size.
pub fn inflate(src: &[u8], expected: usize) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(expected);
    let mut dec = flate2::read::ZlibDecoder::new(src);
    dec.by_ref()
        .take(expected as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| CodecError::Deflate(e.to_string()))?;
    Ok(out)
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
