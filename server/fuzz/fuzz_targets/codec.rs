//! The chunk decode path (`codec::decode_hdf5`): any list of up to four filters (deflate,
//! shuffle with any element size, Fletcher-32, zstd, gzip, Blosc, Zarr v3 codec chains
//! decoded with zarrs, unsupported ids), any filter mask and expected size, on any bytes.
//!
//! Layout: byte 0 = number of filters (mod 5); then per filter a code byte and a parameter
//! byte; then the mask (u32 LE) and the expected decoded size (u32 LE, mod 4 MiB); the rest
//! is the stored chunk. Garbage must decode to an error or to exactly `expected` bytes, and
//! never allocate far beyond `expected` (libFuzzer's -malloc_limit_mb catches that).
#![no_main]

use cloudify_server::codec::{CodecError, decode_hdf5};
use cloudify_server::source::Filter;
use libfuzzer_sys::fuzz_target;

/// Zarr v3 chains as `source::zarr_store` builds them (data type, fill, chunk shape,
/// codecs), picked by the parameter byte.
fn chain(p: u8) -> String {
    use serde_json::json;
    let bytes = json!({"name": "bytes", "configuration": {"endian": "little"}});
    let (dt, shape, codecs) = match p % 6 {
        0 => (
            "uint16",
            vec![2u64, 3],
            json!([{"name": "transpose", "configuration": {"order": [1, 0]}}, bytes, {"name": "crc32c"}]),
        ),
        1 => (
            "float32",
            vec![16],
            json!([bytes, {"name": "gzip", "configuration": {"level": 1}}]),
        ),
        2 => (
            "float64",
            vec![4, 4],
            json!([bytes, {"name": "zstd", "configuration": {"level": 1, "checksum": true}}]),
        ),
        3 => (
            "float32",
            vec![8],
            json!([{"name": "bitround", "configuration": {"keepbits": 3}}, bytes]),
        ),
        4 => (
            "int32",
            vec![4, 4],
            json!([{"name": "sharding_indexed", "configuration": {
                "chunk_shape": [2, 2], "codecs": [bytes], "index_codecs": [bytes, {"name": "crc32c"}],
                "index_location": "end"}}]),
        ),
        _ => ("uint8", vec![64], json!([bytes, {"name": "crc32c"}])),
    };
    cloudify_server::codec::zarr_v3::spec(&json!(dt), &json!(0), &shape, &codecs)
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, mut rest)) = data.split_first() else {
        return;
    };
    let mut filters = Vec::new();
    for _ in 0..n % 5 {
        let [code, p, tail @ ..] = rest else {
            return;
        };
        rest = tail;
        filters.push(match code % 9 {
            0 => Filter::Deflate(*p),
            1 => Filter::Shuffle(usize::from(*p)),
            2 => Filter::Fletcher32,
            3 => Filter::Zstd,
            4 => Filter::Gzip,
            5 => Filter::Blosc,
            6 => Filter::ZarrV3(chain(*p)),
            7 => Filter::Shuffle(usize::from(*p) << 12),
            _ => Filter::Unsupported(format!("codec-{p}")),
        });
    }
    let [m0, m1, m2, m3, e0, e1, e2, e3, raw @ ..] = rest else {
        return;
    };
    let mask = u32::from_le_bytes([*m0, *m1, *m2, *m3]);
    let expected = (u32::from_le_bytes([*e0, *e1, *e2, *e3]) % (4 << 20)) as usize;
    match decode_hdf5(raw.to_vec(), &filters, mask, expected) {
        Ok(out) => assert_eq!(out.len(), expected),
        Err(CodecError::Unsupported(id)) => assert!(!id.is_empty()),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
