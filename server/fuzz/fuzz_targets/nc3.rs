//! netCDF-3 files (CDF-1, CDF-2, CDF-5): the header parser (`source::nc3::parse_header`)
//! on its own, then the file opened as a dataset source (`source::classic`: header read in
//! growing prefixes, small variables read into the index) and served.
#![no_main]

use cloudify_server::source::nc3::{Nc3Error, parse_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    // A prefix of a longer file must parse the same or ask for more.
    match parse_header(data, len) {
        Ok(h) => {
            assert!(h.header_len <= len);
            for v in &h.vars {
                let _ = (
                    h.shape(v),
                    h.slab_bytes(v),
                    h.data_offset(v, h.numrecs.saturating_sub(1)),
                );
            }
        }
        Err(Nc3Error::Truncated { needed }) => panic!("whole file reported truncated (needs {needed})"),
        Err(_) => {}
    }
    let half = &data[..data.len() / 2];
    if let Err(Nc3Error::Truncated { needed }) = parse_header(half, len) {
        assert!(
            needed > half.len() as u64 && needed <= len,
            "bad retry size {needed}"
        );
    }
    // Only netCDF-3 files: anything else goes to libnetcdf/libhdf5, which are not ours.
    if !(data.len() >= 4 && &data[..3] == b"CDF" && matches!(data[3], 1 | 2 | 5)) {
        return;
    }
    let dir = cloudify_fuzz::temp_dir();
    let file = dir.path().join("f.nc");
    cloudify_fuzz::write_file(dir.path(), "f.nc", data);
    cloudify_fuzz::open_and_serve(cloudify_crds::SourceFormat::Netcdf, &file, &[]);
});
