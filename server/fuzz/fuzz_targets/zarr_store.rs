//! Zarr stores, v2 (`.zgroup`, `.zarray`, `.zattrs`) and v3 (`zarr.json`, including
//! sharding and codec chains decoded with zarrs), opened as a dataset source.
//!
//! The input is an archive (see the crate docs) of the store's files: metadata documents
//! and chunk (or shard) files.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = cloudify_fuzz::unpack(data);
    cloudify_fuzz::open_and_serve(cloudify_crds::SourceFormat::Zarr, dir.path(), &[]);
});
