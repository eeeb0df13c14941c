//! Which reader a dataset's sources need, and opening the non-netCDF ones.
//!
//! netCDF/HDF5 files keep their own path (expansion, parallel indexing, index cache in
//! `open`); reference sets and Zarr stores are opened here into the same
//! [`SourceIndex`] model, so everything after opening is shared.

use std::path::{Path, PathBuf};

use cloudify_crds::{DatasetSpec, SourceFormat};

use super::OpenError;
use super::expand::{Want, expand_local, first_local, has_glob, local};
use crate::source::{SourceError, SourceFile, SourceIndex, icechunk, kerchunk, tree, zarr_store};

/// The reader for a dataset's sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// netCDF-3/netCDF-4 (HDF5) files, read natively or through the netCDF library.
    Netcdf,
    /// kerchunk reference sets (JSON or Parquet), pointing into other files.
    Kerchunk,
    /// Zarr v2 or v3 stores (directories or object-store prefixes).
    Zarr,
    /// Icechunk repositories.
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

/// What one local path looks like.
pub fn sniff_path(p: &Path) -> Kind {
    let ext = p.extension().and_then(|e| e.to_str()).unwrap_or_default();
    if matches!(ext, "json" | "parquet" | "parq") {
        return Kind::Kerchunk;
    }
    if p.is_dir() {
        // Before Zarr: a repository is not a Zarr store, whatever its name.
        if icechunk::looks_like_repo(p) {
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

/// What an object URL looks like: by its name where that says it (`.json`, `.parq`,
/// `.zarr`, `.nc`...), else by probing the prefix for a Zarr store's or Icechunk
/// repository's marker objects (a few HEAD/LIST requests).
pub fn sniff_url(url: &str, spec: &DatasetSpec) -> Kind {
    let name = url.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
    let ext = name.rsplit_once('.').map(|(_, e)| e).unwrap_or_default();
    match ext {
        "json" | "parquet" | "parq" => return Kind::Kerchunk,
        "zarr" => return Kind::Zarr,
        "nc" | "nc4" | "h5" | "hdf5" | "he5" | "cdf" | "netcdf" => return Kind::Netcdf,
        _ => {}
    }
    if has_glob(url) {
        return Kind::Netcdf;
    }
    let Ok(tree) = tree::Tree::open(url, spec.storage.as_ref()) else {
        return Kind::Netcdf;
    };
    if tree.is_file("zarr.json") || tree.is_file(".zgroup") || tree.is_file(".zarray") {
        Kind::Zarr
    } else if icechunk::looks_like_repo_tree(&tree) {
        Kind::Icechunk
    } else if tree
        .read(".zmetadata")
        .ok()
        .flatten()
        .is_some_and(|t| String::from_utf8_lossy(&t).contains("\"record_size\""))
    {
        Kind::Kerchunk
    } else {
        Kind::Netcdf
    }
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
            let Some(first) = spec.sources.first() else {
                return Kind::Netcdf;
            };
            let Some(first) = local(first) else {
                return sniff_url(first, spec);
            };
            first_local(first).map_or(Kind::Netcdf, |p| sniff_path(&p))
        }
    }
}

/// Expands sources that may name directories (Parquet reference sets, Zarr stores):
/// local paths (canonical) and object URLs. A glob over objects is expanded for reference
/// files (one object each); directory-like object sources are named one by one.
fn expand(spec: &DatasetSpec, kind: Kind) -> Result<Vec<String>, OpenError> {
    let mut out = Vec::new();
    for (index, s) in spec.sources.iter().enumerate() {
        let err = |reason: String| OpenError::Source {
            index,
            pattern: s.clone(),
            reason,
        };
        if local(s).is_none() {
            out.extend(expand_url(spec, kind, s).map_err(err)?);
            continue;
        }
        let matched = expand_local(index, s, Want::Entries)?;
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
            out.push(
                std::fs::canonicalize(&m)
                    .unwrap_or(m)
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    out.dedup();
    Ok(out)
}

/// One object-URL source: itself, or the objects a glob matches (reference files only).
fn expand_url(spec: &DatasetSpec, kind: Kind, s: &str) -> Result<Vec<String>, String> {
    let url = crate::storage::parse_object_url(s)?.ok_or_else(|| format!("'{s}' is not an object URL"))?;
    if !url.has_glob() {
        return Ok(vec![s.trim_end_matches('/').to_string()]);
    }
    if kind != Kind::Kerchunk {
        return Err(format!(
            "globs over objects are supported for netCDF files and JSON reference files; name each {} source",
            kind.name()
        ));
    }
    let store = crate::storage::build_store(&url, spec.storage.as_ref())?;
    Ok(crate::storage::expand(&url, &store)?
        .into_iter()
        .map(|f| f.path.to_string_lossy().into_owned())
        .collect())
}

/// Opens the sources of a dataset that are not netCDF files.
pub fn open_other(spec: &DatasetSpec, kind: Kind) -> Result<Vec<SourceIndex>, OpenError> {
    let paths = expand(spec, kind)?;
    let storage = spec.storage.as_ref();
    let open = |p: &String| -> Result<SourceIndex, SourceError> {
        let tree = || {
            tree::Tree::open(p, storage).map_err(|message| SourceError::Malformed {
                path: PathBuf::from(p),
                message,
            })
        };
        match kind {
            Kind::Kerchunk => kerchunk::open_refs_source(p, &spec.reference_roots, storage),
            Kind::Zarr => zarr_store::open_tree(&tree()?, storage),
            Kind::Icechunk => {
                icechunk::open_repo_tree(&tree()?, spec.icechunk.as_ref(), &spec.reference_roots, storage)
            }
            Kind::Netcdf => super::file::open_file(std::sync::Arc::new(SourceFile::stat(PathBuf::from(p))?)),
        }
    };
    use rayon::prelude::*;
    Ok(paths.par_iter().map(open).collect::<Result<Vec<_>, _>>()?)
}
