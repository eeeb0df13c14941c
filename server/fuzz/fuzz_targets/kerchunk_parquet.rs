//! kerchunk Parquet references (fsspec `LazyReferenceMapper` directories: `.zmetadata` and
//! `{var}/refs.{n}.parq` record files), opened as a dataset source.
//!
//! The input is an archive (see the crate docs) with the reference directory under
//! `refs.parq/` and the files its references point to beside it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = cloudify_fuzz::unpack(data);
    let refs = dir.path().join("refs.parq");
    if !refs.is_dir() {
        return;
    }
    cloudify_fuzz::open_and_serve(cloudify_crds::SourceFormat::Kerchunk, &refs, &[]);
});
