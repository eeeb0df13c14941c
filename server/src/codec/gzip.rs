//! gzip (numcodecs and Zarr v3 `gzip`).

use std::io::Read as _;

use super::CodecError;

/// gzip inflate into a buffer of the expected size (numcodecs `gzip`).
pub fn gunzip(src: &[u8], expected: usize) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(expected);
    let mut dec = flate2::read::GzDecoder::new(src);
    dec.by_ref()
        .take(expected as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| CodecError::Gzip(e.to_string()))?;
    Ok(out)
}

/// numcodecs and Zarr v3 name.
pub const ID: &str = "gzip";
