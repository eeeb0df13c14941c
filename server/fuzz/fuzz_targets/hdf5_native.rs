//! netCDF-4/HDF5 files through the native reader (`source::native`, on the hdf5-reader and
//! netcdf-reader crates) only: what it indexes is then served. A file it declines would go
//! to libnetcdf/libhdf5, which are not fuzzed here.
//!
//! The reader catches panics of the third-party parsers on purpose (a panic declines the
//! file), so caught panics are allowed (and each distinct one printed); escaped panics,
//! aborts, allocations over the limit and hangs are findings.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;

fuzz_target!(init: cloudify_fuzz::allow_caught_panics(), |data: &[u8]| {
    if data.starts_with(b"CDF") {
        return;
    }
    let dir = cloudify_fuzz::temp_dir();
    let path = dir.path().join("f.nc");
    cloudify_fuzz::write_file(dir.path(), "f.nc", data);
    let Ok(file) = cloudify_server::source::SourceFile::stat(path.clone()) else {
        return;
    };
    let Ok(Ok(idx)) = cloudify_server::open::file::index_native(Arc::new(file)) else {
        return;
    };
    let spec = cloudify_crds::DatasetSpec::new("fuzz", vec![path.to_string_lossy().into_owned()]);
    if let Ok(ds) = cloudify_server::dataset::aggregate::build(&spec, vec![idx]) {
        cloudify_fuzz::serve(&ds);
    }
});
