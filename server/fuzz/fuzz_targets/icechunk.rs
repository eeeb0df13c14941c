//! Icechunk repositories (spec 1 and 2: repo info, refs, config, snapshots, manifests,
//! chunks), opened as a dataset source as of branch `main`.
//!
//! The input is an archive (see the crate docs) of the repository's files. Seeds store the
//! binary files uncompressed (the header allows it), so mutations reach the flatbuffers.
//!
//! The reader catches panics of the icechunk-format crate on purpose (`read_snapshot`: a
//! panic there fails the open with an error naming the file), so caught panics are allowed
//! (each distinct one printed); escaped panics, aborts, allocations over the limit and hangs
//! are findings.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(init: cloudify_fuzz::allow_caught_panics(), |data: &[u8]| {
    let dir = cloudify_fuzz::unpack(data);
    let root = dir.path().to_string_lossy().into_owned();
    // virtual chunks may point inside the repository directory
    cloudify_fuzz::open_and_serve(cloudify_crds::SourceFormat::Icechunk, dir.path(), &[root]);
});
