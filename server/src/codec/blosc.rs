//! Blosc-1 frames (numcodecs and Zarr v3 `blosc`): decoded with `blusc`, and written
//! around one stored zlib or zstd stream (see [`blosc_wrap`]).

use super::CodecError;

/// Decodes a Blosc frame that must hold exactly `expected` bytes (checked against the
/// header first, so a corrupt header cannot make us allocate or write past the chunk).
pub fn unblosc(src: &[u8], expected: usize) -> Result<Vec<u8>, CodecError> {
    if src.len() < 16 {
        return Err(CodecError::Blosc("frame shorter than its 16-byte header".into()));
    }
    let (nbytes, cbytes, _) = blusc::api::blosc1_cbuffer_sizes(src);
    if nbytes != expected {
        return Err(CodecError::Size {
            got: nbytes,
            expected,
        });
    }
    if cbytes > src.len() {
        return Err(CodecError::Blosc(format!(
            "frame claims {cbytes} bytes but only {} are stored",
            src.len()
        )));
    }
    let mut out = vec![0u8; expected];
    let n = blusc::api::blosc1_decompress(src, &mut out);
    if usize::try_from(n).ok() != Some(expected) {
        return Err(CodecError::Blosc("corrupt frame".into()));
    }
    Ok(out)
}

/// [`unblosc`] of a frame whose size is `exact` when known, else at most `max` (the header
/// says how large it is; a Blosc frame inside another compressor's output).
pub(crate) fn unblosc_upto(src: &[u8], exact: Option<usize>, max: usize) -> Result<Vec<u8>, CodecError> {
    match exact {
        Some(n) => unblosc(src, n),
        None => {
            if src.len() < 16 {
                return Err(CodecError::Blosc("frame shorter than its 16-byte header".into()));
            }
            let (nbytes, _, _) = blusc::api::blosc1_cbuffer_sizes(src);
            if nbytes > max {
                return Err(CodecError::Size {
                    got: nbytes,
                    expected: max,
                });
            }
            unblosc(src, nbytes)
        }
    }
}

/// Wraps a zlib stream of (optionally byte-shuffled) data as a one-block Blosc-1 frame.
///
/// Zarr v3 has no standard shuffle or zlib codec, but its standard `blosc` codec can carry
/// exactly what HDF5 stores: Blosc's byte shuffle over a single block equals HDF5's shuffle
/// of the whole chunk, and Blosc's `zlib` compressor writes the same zlib format as HDF5's
/// deflate filter. So a stored chunk becomes a valid Blosc frame by prepending a header —
/// no decompression, no recompression. Returns `None` when the frame would be ambiguous
/// (Blosc reads a stream as large as the block as stored uncompressed) or too large.
pub fn blosc_wrap(stored: &[u8], nbytes: usize, typesize: usize, shuffle: bool) -> Option<Vec<u8>> {
    blosc_frame(stored, nbytes, typesize, shuffle, BLOSC_ZLIB)
}

/// Blosc compressor codes (header flag bits 5-7) with their format versions.
const BLOSC_ZLIB: (u8, u8) = (3, 1);

const BLOSC_ZSTD: (u8, u8) = (4, 1);

/// A one-block Blosc-1 frame around one compressed stream (see [`blosc_wrap`]).
fn blosc_frame(
    stream: &[u8],
    nbytes: usize,
    typesize: usize,
    shuffle: bool,
    (code, version): (u8, u8),
) -> Option<Vec<u8>> {
    const HEADER: usize = 16 + 4 + 4; // header, one block start, one stream size
    let max = i32::MAX as usize - HEADER;
    if stream.len() == nbytes || stream.len() > max || nbytes > max || nbytes == 0 || typesize > 255 {
        return None;
    }
    const FORMAT: u8 = 2; // Blosc-1
    let flags: u8 = u8::from(shuffle) // byte shuffle
        | 0x10 // one stream per block (no split)
        | (code << 5);
    let mut out = Vec::with_capacity(HEADER + stream.len());
    out.extend_from_slice(&[FORMAT, version, flags, typesize.max(1) as u8]);
    out.extend_from_slice(&(nbytes as u32).to_le_bytes()); // uncompressed size
    out.extend_from_slice(&(nbytes as u32).to_le_bytes()); // block size: one block
    out.extend_from_slice(&((HEADER + stream.len()) as u32).to_le_bytes()); // frame size
    out.extend_from_slice(&(HEADER as u32 - 4).to_le_bytes()); // start of block 0
    out.extend_from_slice(&(stream.len() as u32).to_le_bytes()); // stream size
    out.extend_from_slice(stream);
    Some(out)
}

/// A Blosc-1 frame holding `raw` uncompressed (the "memcpyed" flag), for data that does
/// not compress.
pub fn memcpy_frame(raw: &[u8], typesize: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + raw.len());
    out.extend_from_slice(&[2, 1, 0x02, typesize.clamp(1, 255) as u8]);
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    out.extend_from_slice(&((16 + raw.len()) as u32).to_le_bytes());
    out.extend_from_slice(raw);
    out
}

/// numcodecs and Zarr v3 name.
pub const ID: &str = "blosc";

/// numcodecs configuration of a frame written with `cname` at `clevel`, with byte shuffle
/// or none (numcodecs' `shuffle` is 0 none, 1 byte, 2 bit).
pub fn numcodecs(cname: &str, clevel: i64, shuffle: bool) -> serde_json::Value {
    serde_json::json!({"id": ID, "cname": cname, "clevel": clevel, "shuffle": u8::from(shuffle), "blocksize": 0})
}

/// Zarr v3 codec of a frame of `typesize`-byte elements.
pub fn v3(cname: &str, clevel: i64, shuffle: bool, typesize: usize) -> serde_json::Value {
    serde_json::json!({"name": ID, "configuration": {
        "cname": cname,
        "clevel": clevel,
        "shuffle": if shuffle { "shuffle" } else { "noshuffle" },
        "typesize": typesize,
        "blocksize": 0,
    }})
}

/// A Zarr v3 `blosc` configuration as numcodecs' (v3 names the shuffle, numcodecs numbers
/// it; defaults as zarr-python's).
pub fn v3_to_numcodecs(cfg: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    let shuffle = match cfg.get("shuffle").and_then(Value::as_str) {
        Some("shuffle") => 1,
        Some("bitshuffle") => 2,
        _ => 0,
    };
    serde_json::json!({
        "id": ID,
        "cname": cfg.get("cname").cloned().unwrap_or(Value::from("lz4")),
        "clevel": cfg.get("clevel").cloned().unwrap_or(Value::from(5)),
        "shuffle": shuffle,
        "blocksize": cfg.get("blocksize").cloned().unwrap_or(Value::from(0)),
    })
}

/// A one-block Blosc-1 frame around one zstd stream of `nbytes` (shuffled) bytes.
pub fn zstd_frame(stream: &[u8], nbytes: usize, typesize: usize, shuffle: bool) -> Option<Vec<u8>> {
    blosc_frame(stream, nbytes, typesize, shuffle, BLOSC_ZSTD)
}
