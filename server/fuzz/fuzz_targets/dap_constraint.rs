//! DAP2 constraint expressions (`opendap::constraint`): the query string of every
//! `/datasets/{id}/opendap.*` request, percent-decoded and parsed, then resolved against a
//! small netCDF-3 dataset (`source/testdata/cdf1.nc`: a record variable, a Grid with a
//! coordinate map, a scalar, a byte array) and answered as `.dds`, `.ascii` and `.dods`
//! the way `http::opendap` does.
//!
//! Besides "no panic, no hang, no stack overflow": every parsed hyperslab has a stride of
//! at least 1 and stops at or after its start; an error is a client error (4xx) unless a
//! read failed; a `.dods` body is exactly as long as its plan announces in
//! `Content-Length`.
#![no_main]

use std::sync::OnceLock;

use cloudify_server::dataset::Dataset;
use cloudify_server::opendap::{self, constraint};
use libfuzzer_sys::fuzz_target;

/// The dataset every input is resolved against, opened once (with the directory holding
/// its file, which must outlive it).
fn dataset() -> &'static Dataset {
    static DS: OnceLock<(tempfile::TempDir, Dataset)> = OnceLock::new();
    &DS.get_or_init(|| {
        let dir = cloudify_fuzz::temp_dir();
        cloudify_fuzz::write_file(
            dir.path(),
            "cdf1.nc",
            include_bytes!("../../src/source/testdata/cdf1.nc"),
        );
        let mut spec = cloudify_crds::DatasetSpec::new(
            "fuzz",
            vec![dir.path().join("cdf1.nc").to_string_lossy().into_owned()],
        );
        spec.format = Some(cloudify_crds::SourceFormat::Netcdf);
        let ds = cloudify_server::open::open_dataset(&spec).expect("the test file opens");
        (dir, ds)
    })
    .1
}

/// Largest response assembled in memory per input (the dataset is tiny, so only a
/// constraint repeating a variable many times gets near it).
const LIMIT: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let client_error = |e: &opendap::DapError| {
        assert!(
            (400..500).contains(&e.status),
            "status {} for a malformed constraint: {}",
            e.status,
            e.message
        );
        assert!(!e.message.is_empty());
    };
    let ce = match constraint::percent_decode(query) {
        Ok(ce) => ce,
        Err(e) => return client_error(&e),
    };
    let projections = match constraint::parse(&ce) {
        Ok(p) => p,
        Err(e) => return client_error(&e),
    };
    for p in &projections {
        assert!(!p.var.is_empty(), "empty variable name from {ce:?}");
        for s in &p.slices {
            assert!(s.stride >= 1 && s.stop >= s.start, "bad slice {s:?} from {ce:?}");
        }
    }
    let ds = dataset();
    let items = match opendap::resolve(ds, &projections) {
        Ok(items) => items,
        Err(e) => return client_error(&e),
    };
    let _ = opendap::dds("fuzz", &items);
    if opendap::check_size(&items, LIMIT).is_err() {
        return;
    }
    let _ = opendap::ascii("fuzz", &items);
    let plan = opendap::dods_plan("fuzz", &items).expect("a response under the limit has a plan");
    let body = opendap::dods("fuzz", &items).expect("the test file reads");
    if let Some(n) = plan.length {
        assert_eq!(
            body.len() as u64,
            n,
            "Content-Length of the .dods body for {ce:?}"
        );
    }
});
