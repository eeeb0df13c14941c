//! Which reader a dataset's sources need, and opening the non-netCDF ones.
//!
//! netCDF/HDF5 files keep their own path (expansion, parallel indexing, index cache in
//! `dataset::open`); reference sets and Zarr stores are opened here into the same
//! [`SourceIndex`] model, so everything after opening is shared.

use std::path::{Path, PathBuf};

use cloudify_crds::{DatasetSpec, SourceFormat};

use super::{SourceError, SourceIndex};
use crate::dataset::open::OpenError;

/// The reader for a dataset's sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Netcdf,
    Kerchunk,
    Zarr,
    Icechunk,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Netcdf => "netcdf",
            Kind::Kerchunk => "kerchunk",
            Kind::Zarr => "zarr",
            Kind::Icechunk => "icechunk",
        }
    }
}

fn local(s: &str) -> Option<&str> {
    match s.strip_prefix("file://") {
        Some(rest) => Some(rest),
        None if s.contains("://") => None,
        None => Some(s),
    }
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// What one local path looks like.
pub fn sniff_path(p: &Path) -> Kind {
    let ext = p.extension().and_then(|e| e.to_str()).unwrap_or_default();
    if matches!(ext, "json" | "parquet" | "parq") {
        return Kind::Kerchunk;
    }
    if p.is_dir() {
        // Before Zarr: a repository is not a Zarr store, whatever its name.
        if super::icechunk::looks_like_repo(p) {
            return Kind::Icechunk;
        }
        if ext == "zarr"
            || p.join("zarr.json").is_file()
            || p.join(".zgroup").is_file()
            || p.join(".zarray").is_file()
        {
            return Kind::Zarr;
        }
        // A Parquet reference directory without the usual extension.
        if std::fs::read(p.join(".zmetadata"))
            .ok()
            .is_some_and(|t| String::from_utf8_lossy(&t).contains("\"record_size\""))
        {
            return Kind::Kerchunk;
        }
    }
    Kind::Netcdf
}

/// The reader for `spec`: its explicit `format`, else judged from the first source (the
/// first match of a glob).
pub fn kind_of(spec: &DatasetSpec) -> Kind {
    match spec.format.unwrap_or_default() {
        SourceFormat::Netcdf => Kind::Netcdf,
        SourceFormat::Kerchunk => Kind::Kerchunk,
        SourceFormat::Zarr => Kind::Zarr,
        SourceFormat::Icechunk => Kind::Icechunk,
        SourceFormat::Auto => {
            let Some(first) = spec.sources.first().and_then(|s| local(s)) else {
                return Kind::Netcdf;
            };
            if has_glob(first) {
                glob::glob(first)
                    .ok()
                    .and_then(|mut g| g.find_map(Result::ok))
                    .map_or(Kind::Netcdf, |p| sniff_path(&p))
            } else {
                sniff_path(Path::new(first))
            }
        }
    }
}

/// Expands sources that may name directories (Parquet reference sets, Zarr stores).
fn expand(spec: &DatasetSpec, kind: Kind) -> Result<Vec<PathBuf>, OpenError> {
    let mut out = Vec::new();
    for (index, s) in spec.sources.iter().enumerate() {
        let err = |reason: String| OpenError::Source {
            index,
            pattern: s.clone(),
            reason,
        };
        let Some(p) = local(s) else {
            return Err(err(format!(
                "only local paths and file:// URLs are supported for {} sources so far",
                kind.name()
            )));
        };
        let matched: Vec<PathBuf> = if has_glob(p) {
            let mut m: Vec<PathBuf> = glob::glob(p)
                .map_err(|e| err(format!("invalid glob: {e}")))?
                .filter_map(Result::ok)
                .collect();
            m.sort();
            if m.is_empty() {
                return Err(err("matched nothing".into()));
            }
            m
        } else {
            let pb = PathBuf::from(p);
            if !pb.exists() {
                return Err(err("no such file or directory".into()));
            }
            vec![pb]
        };
        for m in matched {
            let found = sniff_path(&m);
            // An explicit format may name paths without the usual markers; auto must agree.
            if spec.format.unwrap_or_default() == SourceFormat::Auto && found != kind {
                return Err(err(format!(
                    "'{}' looks like {} but the dataset's first source is {}; set `format` or split the dataset",
                    m.display(),
                    found.name(),
                    kind.name()
                )));
            }
            out.push(std::fs::canonicalize(&m).unwrap_or(m));
        }
    }
    out.dedup();
    Ok(out)
}

/// Opens the sources of a dataset that are not netCDF files.
pub fn open_other(spec: &DatasetSpec, kind: Kind) -> Result<Vec<SourceIndex>, OpenError> {
    let paths = expand(spec, kind)?;
    let open = |p: &PathBuf| -> Result<SourceIndex, SourceError> {
        match kind {
            Kind::Kerchunk => super::kerchunk::open_refs(p, &spec.reference_roots, spec.storage.as_ref()),
            Kind::Zarr => super::zarr_store::open_store(p),
            Kind::Icechunk => super::icechunk::open_repo(p, spec.icechunk.as_ref(), &spec.reference_roots),
            Kind::Netcdf => super::open_file(std::sync::Arc::new(super::SourceFile::stat(p.clone())?)),
        }
    };
    use rayon::prelude::*;
    Ok(paths.par_iter().map(open).collect::<Result<Vec<_>, _>>()?)
}
