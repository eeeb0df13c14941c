//! kerchunk JSON references (version 0 and 1, with `templates` and `gen`), opened as a
//! dataset source the way the server opens one (`source::kerchunk::open_refs`, then the
//! Zarr/kerchunk metadata rendering and the first chunk reads).
//!
//! The input is the reference file `refs.json`, or an archive (see the crate docs) holding
//! `refs.json` and the files its references point to (relative to it).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = cloudify_fuzz::unpack_or(data, "refs.json");
    let refs = dir.path().join("refs.json");
    // The parser alone (what `/kerchunk` sources and `cloudify index` inputs go through) ...
    if let Ok(text) = std::fs::read_to_string(&refs) {
        let _ = cloudify_server::source::kerchunk::parse_json_text(&refs, &text);
    }
    // ... and the whole way to served chunks.
    cloudify_fuzz::open_and_serve(cloudify_crds::SourceFormat::Kerchunk, &refs, &[]);
});
