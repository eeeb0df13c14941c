//! Helpers shared by the fuzz targets.
//!
//! Zarr stores, Parquet reference directories and Icechunk repositories are directories,
//! and their readers take a directory. A fuzz input for them is a small text archive of
//! files, unpacked into a fresh temporary directory for each run:
//!
//! ```text
//! ==> zarr.json
//! {"zarr_format": 3, "node_type": "group"}
//! ==> tas/zarr.json
//! {...}
//! ==> tas/c/0/0
//! <chunk bytes>
//! ```
//!
//! A file starts at a line `==> NAME`; its content runs up to the newline before the next
//! such line (or the end). Text markers keep the archive easy for libFuzzer's mutators
//! (they insert, drop and splice whole entries) and easy to write seeds for.
#![forbid(unsafe_code)]

use std::path::Path;

/// The line that starts a file of an archive.
pub const MARKER: &[u8] = b"==> ";

/// Most files one archive unpacks: enough for any store the seeds hold.
const MAX_FILES: usize = 64;

/// One file of an archive: its relative path and content.
pub struct Entry<'a> {
    pub name: String,
    pub data: &'a [u8],
}

/// Splits an archive into its files. Names that could leave the directory (absolute, `..`,
/// empty components) or are not UTF-8 are dropped with their file.
pub fn entries(data: &[u8]) -> Vec<Entry<'_>> {
    let mut out = Vec::new();
    let mut starts = Vec::new();
    if data.starts_with(MARKER) {
        starts.push(0);
    }
    let mut i = 0;
    while let Some(p) = find(&data[i..], b"\n==> ") {
        starts.push(i + p + 1);
        i += p + 1;
    }
    for (n, &s) in starts.iter().enumerate() {
        let end = starts.get(n + 1).map_or(data.len(), |&e| e - 1);
        let body = &data[s + MARKER.len()..end.max(s + MARKER.len())];
        let (name, content) = match body.iter().position(|&b| b == b'\n') {
            Some(nl) => (&body[..nl], &body[nl + 1..]),
            None => (body, &body[body.len()..]),
        };
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        if !safe_name(name) {
            continue;
        }
        out.push(Entry {
            name: name.to_string(),
            data: content,
        });
        if out.len() == MAX_FILES {
            break;
        }
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.contains('\0')
        && name.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
        && name.split('/').count() <= 10
}

/// An input that is an archive (starts with [`MARKER`]) unpacked into a new temporary
/// directory; any other input becomes the one file `name` of it (a reference file, say).
pub fn unpack_or(data: &[u8], name: &str) -> tempfile::TempDir {
    if data.starts_with(MARKER) {
        unpack(data)
    } else {
        let dir = temp_dir();
        write_file(dir.path(), name, data);
        dir
    }
}

/// Unpacks an archive into a new temporary directory (under `/dev/shm` when it exists: no
/// disk writes for millions of runs). Files whose path collides with another's directory
/// are skipped.
pub fn unpack(data: &[u8]) -> tempfile::TempDir {
    let dir = temp_dir();
    for e in entries(data) {
        write_file(dir.path(), &e.name, e.data);
    }
    dir
}

/// A fresh temporary directory, in memory where possible.
pub fn temp_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let b = tempfile::Builder::new()
        .prefix("cloudify-fuzz-")
        .tempdir_in(if shm.is_dir() { shm } else { Path::new("/tmp") });
    b.or_else(|_| tempfile::tempdir())
        .expect("cannot create a temporary directory for the fuzz input")
}

/// Writes `data` to `dir/rel`, creating parent directories; gives up silently on conflicts
/// (a file where a directory is needed), which are part of the input.
pub fn write_file(dir: &Path, rel: &str, data: &[u8]) {
    let p = dir.join(rel);
    if let Some(parent) = p.parent()
        && std::fs::create_dir_all(parent).is_err()
    {
        return;
    }
    let _ = std::fs::write(&p, data);
}

/// Packs files into the archive format [`entries`] reads (seed generation, tests).
pub fn pack<'a>(files: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in files {
        if !out.is_empty() {
            out.push(b'\n');
        }
        out.extend_from_slice(MARKER);
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(data);
    }
    out
}

/// Lets caught panics pass in targets whose code under test catches panics on purpose
/// (the native HDF5 reader turns a panic of the third-party parser into "fall back to the
/// library"): libfuzzer-sys's hook would abort the process before `catch_unwind` runs.
/// Panics that escape the target still abort (libfuzzer-sys catches and aborts at the
/// top). Each distinct panic location is printed once, so a run reports what it saw.
pub fn allow_caught_panics() {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
        if seen.get_or_insert_with(HashSet::new).insert(at.clone()) {
            eprintln!("cloudify-fuzz: caught panic at {at}: {info}");
        }
    }));
}

/// Largest decoded chunk the pipeline reads (the declared size comes from the input; a
/// request for a chunk this large is legitimate, so it is not a finding when it is slow).
const MAX_READ_CHUNK: u64 = 16 << 20;

/// What the server does with a dataset from its configuration: opens it as `format`, renders
/// its Zarr v2/v3 metadata and kerchunk references (start-up, `app::load`), then reads the
/// first and last chunk of every variable as stored and decoded (the first requests).
/// Errors are fine (the input is garbage); panics, aborts and hangs are findings.
pub fn open_and_serve(format: cloudify_crds::SourceFormat, source: &Path, reference_roots: &[String]) {
    let mut spec = cloudify_crds::DatasetSpec::new("fuzz", vec![source.to_string_lossy().into_owned()]);
    spec.format = Some(format);
    spec.reference_roots = reference_roots.to_vec();
    if let Ok(ds) = cloudify_server::open::open_dataset(&spec) {
        serve(&ds);
    }
}

/// The start-up and first-request half of [`open_and_serve`], for an opened dataset.
pub fn serve(ds: &cloudify_server::dataset::Dataset) {
    let _meta = cloudify_server::zarr::render(ds);
    let refs = cloudify_server::kerchunk::build(ds);
    let _ = refs.to_json();
    let _ = refs.zmetadata();
    let _ = cloudify_server::dataset::summary::dict(ds);
    for v in ds.by_path.values() {
        let elems = v.chunks.iter().try_fold(1u64, |a, c| a.checked_mul(*c));
        if elems
            .and_then(|n| n.checked_mul(v.dtype.size() as u64))
            .is_none_or(|b| b > MAX_READ_CHUNK)
        {
            continue;
        }
        let grid = cloudify_server::chunk::grid::grid_shape(&v.shape, &v.chunks);
        if grid.contains(&0) {
            continue;
        }
        let first = vec![0u64; grid.len()];
        let last: Vec<u64> = grid.iter().map(|g| g - 1).collect();
        for idx in [first, last] {
            if v.dtype == cloudify_server::dtype::DType::Str {
                let _ = cloudify_server::pipeline::read_chunk_strings(v, &idx);
            } else {
                let _ = cloudify_server::pipeline::raw_chunk(v, &idx);
                let _ = cloudify_server::pipeline::read_chunk(v, &idx);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_round_trip() {
        let a = pack([("zarr.json", &b"{}\n"[..]), ("a/c/0", &b"\x00\n==\x01"[..])]);
        let e = entries(&a);
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].name.as_str(), e[0].data), ("zarr.json", &b"{}\n"[..]));
        assert_eq!((e[1].name.as_str(), e[1].data), ("a/c/0", &b"\x00\n==\x01"[..]));
        assert!(entries(b"==> ../x\nhi").is_empty());
        assert!(entries(b"==> /etc/x\nhi").is_empty());
        assert_eq!(entries(b"==> x").len(), 1);
    }
}
