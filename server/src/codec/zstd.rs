//! Zstandard (HDF5 plugin 32015, numcodecs and Zarr v3 `zstd`).

use super::CodecError;

/// zstd level for re-encoded chunks: level 1 compresses shuffled model output as well as
/// level 3 (1.74x vs 1.76x on the bench data) at 80% of the time; the server is CPU-bound
/// on this path (measured with `cargo run --release --example codec_timing`).
pub const ZSTD_LEVEL: i32 = 1;

/// numcodecs and Zarr v3 name.
pub const ID: &str = "zstd";

/// Compresses `raw` into one zstd frame.
pub fn compress(raw: &[u8], level: i32) -> Result<Vec<u8>, CodecError> {
    zstd::bulk::compress(raw, level).map_err(|e| CodecError::Zstd(e.to_string()))
}

/// Decompresses one zstd frame of at most `max` bytes.
pub fn decompress(src: &[u8], max: usize) -> Result<Vec<u8>, CodecError> {
    zstd::bulk::decompress(src, max.max(1)).map_err(|e| CodecError::Zstd(e.to_string()))
}

/// numcodecs configuration.
pub fn numcodecs(level: i32) -> serde_json::Value {
    serde_json::json!({"id": ID, "level": level})
}

/// Zarr v3 codec (no checksum: numcodecs' default).
pub fn v3(level: i32) -> serde_json::Value {
    serde_json::json!({"name": ID, "configuration": {"level": level, "checksum": false}})
}
