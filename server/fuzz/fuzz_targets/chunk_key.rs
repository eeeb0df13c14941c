//! Chunk keys of `/zarr` requests (`zarr::key::parse_chunk_key`), v2 (`tas/0.1.2`) and v3
//! (`tas/c/0/1/2`), against a fixed set of variables, some nested and one 0-d.
//!
//! Besides "no panic, no hang": a parsed key names a known variable with one index per
//! dimension, and the key spelled back from the result parses to the same result.
#![no_main]

use cloudify_server::zarr::key::{Format, KeyError, KeyLimits, parse_chunk_key};
use libfuzzer_sys::fuzz_target;

fn rank(path: &str) -> Option<usize> {
    match path {
        "tas" => Some(3),
        "time" => Some(1),
        "g1/sub/x" => Some(2),
        "g1" => Some(1),
        "c" => Some(1),
        "s" => Some(0),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(key) = std::str::from_utf8(data) else {
        return;
    };
    let limits = KeyLimits::of([("tas", 3), ("g1/sub/x", 2), ("g1", 1), ("c", 1), ("s", 0)]);
    match parse_chunk_key(key, limits, rank) {
        Ok(ck) => {
            let r = rank(&ck.var).expect("parsed key names an unknown variable");
            assert_eq!(ck.index.len(), r, "key {key:?}: wrong number of indices");
            let idx: Vec<String> = ck.index.iter().map(u64::to_string).collect();
            let again = match ck.format {
                Format::V2 if idx.is_empty() => format!("{}/0", ck.var),
                Format::V2 => format!("{}/{}", ck.var, idx.join(".")),
                Format::V3 if idx.is_empty() => format!("{}/c", ck.var),
                Format::V3 => format!("{}/c/{}", ck.var, idx.join("/")),
            };
            assert_eq!(
                parse_chunk_key(&again, limits, rank).as_ref(),
                Ok(&ck),
                "key {key:?} respelled {again:?}"
            );
        }
        Err(KeyError::NotFound(m) | KeyError::BadRequest(m)) => assert!(!m.is_empty()),
    }
});
