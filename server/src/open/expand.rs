//! Local source patterns → paths: the one glob expansion every format uses (object URLs are
//! listed by `storage::expand`).

use std::path::{Path, PathBuf};

use super::OpenError;

/// Whether a source is a glob pattern.
pub fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The local path of a source (`file://` stripped), `None` for other URLs.
pub fn local(s: &str) -> Option<&str> {
    match s.strip_prefix("file://") {
        Some(rest) => Some(rest),
        None if s.contains("://") => None,
        None => Some(s),
    }
}

/// What a local source may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Regular files only (netCDF/HDF5 sources); a glob skips directories.
    Files,
    /// Files or directories (Zarr stores, Parquet reference sets, Icechunk repositories).
    Entries,
}

/// Expands `sources[index]` (a path or glob; `file://` allowed) into sorted paths. A
/// pattern that matches nothing is an error: silently serving fewer files than the
/// provider meant would be lost data.
pub fn expand_local(index: usize, s: &str, want: Want) -> Result<Vec<PathBuf>, OpenError> {
    let err = |reason: String| OpenError::Source {
        index,
        pattern: s.to_string(),
        reason,
    };
    let p = local(s).unwrap_or(s);
    if has_glob(p) {
        let paths = glob::glob(p).map_err(|e| err(format!("invalid glob: {e}")))?;
        let mut matched: Vec<PathBuf> = Vec::new();
        for m in paths {
            match (m, want) {
                (Ok(m), Want::Files) if m.is_file() => matched.push(m),
                (Ok(_), Want::Files) => {}
                (Ok(m), Want::Entries) => matched.push(m),
                (Err(e), Want::Files) => return Err(err(e.to_string())),
                // an unreadable entry of a directory glob is not a source
                (Err(_), Want::Entries) => {}
            }
        }
        if matched.is_empty() {
            return Err(err(match want {
                Want::Files => "matched no files".into(),
                Want::Entries => "matched nothing".into(),
            }));
        }
        matched.sort();
        return Ok(matched);
    }
    let pb = PathBuf::from(p);
    match want {
        Want::Files if !pb.is_file() => Err(err(if pb.exists() {
            "is not a regular file".into()
        } else {
            "no such file".into()
        })),
        Want::Entries if !pb.exists() => Err(err("no such file or directory".into())),
        _ => Ok(vec![pb]),
    }
}

/// The first path a local source names (the first match of a glob), for sniffing a format.
pub fn first_local(p: &str) -> Option<PathBuf> {
    if has_glob(p) {
        glob::glob(p).ok().and_then(|mut g| g.find_map(Result::ok))
    } else {
        Some(Path::new(p).to_path_buf())
    }
}
