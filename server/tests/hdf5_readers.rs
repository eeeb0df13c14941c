//! Fidelity of the native netCDF-4/HDF5 reader: every HDF5 file of the sample corpus (the
//! esmvaltool CMIP6 sample data installed in the e2e venv, plus the generated edge cases of
//! e2e/pytests/make_edge_cases.py) is indexed by both readers, and the indexes must be equal.
//! A file the native reader declines is fine (the library then indexes it) and is counted;
//! a file it indexes differently is a failure.
//!
//! The venv is found at `$CLOUDIFY_VENV` or /var/tmp/cloudify-venv (where e2e/setup.sh puts
//! it, before `cargo test` runs in e2e/test.sh).

// Test helpers, like tests, fail by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use cloudify_server::open::file::{index_library, index_native};
use cloudify_server::source::{Format, SourceFile, sniff};

fn python() -> PathBuf {
    let venv = std::env::var_os("CLOUDIFY_VENV")
        .map_or_else(|| PathBuf::from("/var/tmp/cloudify-venv"), PathBuf::from);
    let py = venv.join("bin/python");
    assert!(
        py.is_file(),
        "{} not found: run e2e/setup.sh or set CLOUDIFY_VENV",
        py.display()
    );
    py
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            files_under(&p, out);
        } else if p.is_file() {
            out.push(p);
        }
    }
}

/// The corpus: sample data and freshly generated edge cases (kept alive by the TempDir).
fn corpus() -> (Vec<PathBuf>, tempfile::TempDir) {
    let py = python();
    let out = Command::new(&py)
        .args([
            "-c",
            "import esmvaltool_sample_data, os; print(os.path.dirname(esmvaltool_sample_data.__file__))",
        ])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "esmvaltool_sample_data: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sample = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let tmp = tempfile::tempdir().expect("tempdir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/pytests/make_edge_cases.py");
    let made = Command::new(&py)
        .arg(&script)
        .arg(tmp.path())
        .output()
        .expect("run make_edge_cases.py");
    assert!(
        made.status.success(),
        "make_edge_cases.py: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let mut files = Vec::new();
    files_under(&sample, &mut files);
    files_under(tmp.path(), &mut files);
    files.sort();
    files.retain(|p| matches!(sniff(p), Ok(Format::Hdf5)));
    (files, tmp)
}

/// The first place two JSON values differ, as a path.
fn first_diff(a: &serde_json::Value, b: &serde_json::Value, path: &str) -> Option<String> {
    use serde_json::Value as V;
    match (a, b) {
        (V::Object(x), V::Object(y)) => {
            let kx: Vec<_> = x.keys().collect();
            let ky: Vec<_> = y.keys().collect();
            if kx != ky {
                return Some(format!("{path}: keys {kx:?} vs {ky:?}"));
            }
            x.iter()
                .find_map(|(k, v)| first_diff(v, &y[k], &format!("{path}.{k}")))
        }
        (V::Array(x), V::Array(y)) => {
            if x.len() != y.len() {
                let show = |v: &Vec<V>| {
                    serde_json::to_string(v)
                        .unwrap_or_default()
                        .chars()
                        .take(300)
                        .collect::<String>()
                };
                return Some(format!(
                    "{path}: length {} vs {}: {} vs {}",
                    x.len(),
                    y.len(),
                    show(x),
                    show(y)
                ));
            }
            x.iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (p, q))| first_diff(p, q, &format!("{path}[{i}]")))
        }
        _ if a == b => None,
        _ => Some(format!("{path}: {a} vs {b}")),
    }
}

#[test]
fn native_reader_indexes_the_corpus_like_libnetcdf() {
    let (files, _tmp) = corpus();
    assert!(files.len() > 100, "corpus too small: {} HDF5 files", files.len());
    let mut mismatches = Vec::new();
    let mut declined = Vec::new();
    let mut native = 0;
    for p in &files {
        let file = Arc::new(SourceFile::stat(p.clone()).expect("stat"));
        let lib = index_library(file.clone());
        let nat = index_native(file);
        match (lib, nat) {
            (Ok(l), Ok(Ok(n))) => {
                native += 1;
                let l = serde_json::to_value(&l).expect("json");
                let n = serde_json::to_value(&n).expect("json");
                if let Some(d) = first_diff(&l, &n, "") {
                    mismatches.push(format!("{}: {d}", p.display()));
                }
            }
            (_, Ok(Err(why))) => declined.push(format!("{}: {why}", p.display())),
            (Err(_), Err(_)) => {}
            (Err(e), Ok(Ok(_))) => mismatches.push(format!(
                "{}: library fails ({e}) but native indexes it",
                p.display()
            )),
            (Ok(_), Err(e)) => mismatches.push(format!("{}: native fails after indexing: {e}", p.display())),
        }
    }
    eprintln!(
        "{} HDF5 files: {native} indexed natively, {} fell back to the library",
        files.len(),
        declined.len()
    );
    for d in &declined {
        eprintln!("  fallback: {d}");
    }
    assert!(
        mismatches.is_empty(),
        "{} files index differently:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    // The sample data is plain CMIP6 netCDF-4: all of it must take the fast path.
    let sample_declined: Vec<_> = declined
        .iter()
        .filter(|d| d.contains("esmvaltool_sample_data"))
        .collect();
    assert!(
        sample_declined.is_empty(),
        "sample files fell back: {sample_declined:?}"
    );
}
