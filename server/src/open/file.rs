//! Opening one source file into its index: the format readers of `crate::source`, then the
//! values of small variables read into the index (coordinates, bounds), so they can be
//! compared, sorted on and served without touching the file again.

use std::sync::Arc;

use crate::chunk::read::{Direct, read_whole};
use crate::dataset::aggregate::storage_fill;
use crate::dtype::Endian;
use crate::source::{
    Format, Layout, MemValues, SourceError, SourceFile, SourceGroup, SourceIndex, Stored, classic, inlinable,
    native, netcdf, rebind, remote, sniff,
};
use crate::storage::read::RangeRead;

/// Reads the values of the group's small variables ([`inlinable`]) into the index through
/// `io`, keeping where they were stored ([`Stored::At`]).
pub fn inline_small(io: &dyn RangeRead, g: &mut SourceGroup) -> Result<(), SourceError> {
    for v in &mut g.vars {
        if !inlinable(v) {
            continue;
        }
        let fill = storage_fill(v);
        let buf = read_whole(io, &v.data, v.dtype, &fill).map_err(|e| SourceError::Malformed {
            path: v.data.file.path.clone(),
            message: format!("variable '{}': {e}", v.name),
        })?;
        let storage = std::mem::replace(
            &mut v.data.layout,
            Layout::Memory(Arc::new(MemValues::Bytes(buf))),
        );
        let endian = std::mem::replace(&mut v.data.endian, Endian::Little);
        v.data.stored = Some(Box::new(Stored::At {
            endian,
            layout: storage,
        }));
    }
    for sub in &mut g.groups {
        inline_small(io, sub)?;
    }
    Ok(())
}

/// Opens and indexes one object-store source: from the index cache when it holds this
/// version (URL, size, ETag), else with ranged reads of the bytes the index needs
/// ([`remote::index`]); only a netCDF-4 file the native reader declines is copied to a
/// temporary local file (deleted afterwards) for libnetcdf.
pub fn open_remote(
    file: Arc<SourceFile>,
    cache: Option<&super::cache::IndexCache>,
    tmp_dir: &std::path::Path,
) -> Result<SourceIndex, SourceError> {
    if let Some(c) = cache
        && let Some(mut idx) = c.load(&file)
    {
        rebind(&mut idx, &file);
        return Ok(idx);
    }
    let Some(obj) = file.remote.clone() else {
        return open_file(file);
    };
    let t0 = std::time::Instant::now();
    let url = file.path.clone();
    let ranged = match remote::index(&file, &obj, &inline_small)? {
        remote::Ranged::Indexed { idx, fetched } => {
            tracing::info!(
                url = %url.display(),
                via = "ranged reads",
                size = file.size,
                bytes = fetched.bytes,
                requests = fetched.requests,
                ms = t0.elapsed().as_millis() as u64,
                "indexed remote object"
            );
            if let Some(c) = cache {
                c.store(&idx);
            }
            return Ok(idx);
        }
        remote::Ranged::Fallback { reason, fetched } => {
            tracing::info!(url = %url.display(), %reason, "native HDF5 reader declined the remote object; downloading it for libnetcdf");
            fetched
        }
    };
    let (tmp, meta) = crate::storage::fetch_temp(&file, &obj, tmp_dir)?;
    let local = Arc::new(SourceFile::local(tmp.path().to_path_buf(), meta.size, 0));
    let mut idx = open_file(local).map_err(|e| match e {
        // Name the object, not the temporary copy.
        SourceError::Io { source, .. } => SourceError::Io {
            path: url.clone(),
            source,
        },
        SourceError::NotNetcdf { .. } => SourceError::NotNetcdf { path: url.clone() },
        SourceError::Library { message, .. } => SourceError::Library {
            path: url.clone(),
            message,
        },
        SourceError::Malformed { message, .. } => SourceError::Malformed {
            path: url.clone(),
            message,
        },
        other => other,
    })?;
    drop(tmp);
    // The copy's identity is what was indexed.
    let file = Arc::new(SourceFile {
        size: meta.size,
        mtime_ns: meta.last_modified.timestamp_nanos_opt().unwrap_or(0),
        etag: meta.e_tag.clone(),
        ..(*file).clone()
    });
    rebind(&mut idx, &file);
    tracing::info!(
        url = %file.path.display(),
        via = "download",
        size = meta.size,
        bytes = meta.size + ranged.bytes,
        requests = ranged.requests + 1,
        ms = t0.elapsed().as_millis() as u64,
        "indexed remote object"
    );
    if let Some(c) = cache {
        c.store(&idx);
    }
    Ok(idx)
}

/// Opens and indexes one file, whatever its format.
///
/// A local file that changes while it is indexed fails as changed (like an object whose
/// ETag moves): its index could mix two versions. Reads of inlined values check this too.
pub fn open_file(file: Arc<SourceFile>) -> Result<SourceIndex, SourceError> {
    let mut idx = match sniff(&file.path)? {
        Format::Nc3 => classic::open_nc3(file.clone()),
        Format::Hdf5 => open_hdf5(file.clone()),
    }?;
    inline_small(&Direct, &mut idx.root)?;
    if file.inode.is_some() {
        let meta = std::fs::metadata(&file.path).map_err(|source| SourceError::Io {
            path: file.path.clone(),
            source,
        })?;
        if let Some(what) = file.local_change(&meta) {
            return Err(SourceError::Malformed {
                path: file.path.clone(),
                message: format!("file changed while it was indexed ({what})"),
            });
        }
    }
    Ok(idx)
}

/// netCDF-4/HDF5: the native reader first (parallel, no global lock), the library when it
/// declines the file or is switched off (`CLOUDIFY_HDF5_READER=library`).
fn open_hdf5(file: Arc<SourceFile>) -> Result<SourceIndex, SourceError> {
    if native::enabled() {
        match native::open_native_declined(&file) {
            Ok(idx) => return Ok(idx),
            Err(t @ native::Declined::Truncated { .. }) => {
                // libhdf5 refuses it too, saying only "NetCDF: HDF error".
                return Err(SourceError::Malformed {
                    path: file.path.clone(),
                    message: t.to_string(),
                });
            }
            Err(native::Declined::Unsupported(why)) => native::log_fallback(&file.path, &why),
        }
    }
    library_hdf5(file)
}

/// The library path, saying "truncated" (with the sizes) where libnetcdf would only say
/// "NetCDF: HDF error".
fn library_hdf5(file: Arc<SourceFile>) -> Result<SourceIndex, SourceError> {
    let path = file.path.clone();
    netcdf::open_hdf5(file).map_err(|e| match native::truncation(&path) {
        Some(t) => SourceError::Malformed {
            path,
            message: t.to_string(),
        },
        None => e,
    })
}

/// Indexes an HDF5 file with the native reader only, as `open_file` would (small variables
/// inlined); the inner `Err` is why it declined. For the reader fidelity test.
pub fn index_native(file: Arc<SourceFile>) -> Result<Result<SourceIndex, native::Unsupported>, SourceError> {
    match native::open_native(&file) {
        Ok(mut idx) => {
            inline_small(&Direct, &mut idx.root)?;
            Ok(Ok(idx))
        }
        Err(why) => Ok(Err(why)),
    }
}

/// Indexes an HDF5 file through libnetcdf/libhdf5 only, as `open_file` would.
pub fn index_library(file: Arc<SourceFile>) -> Result<SourceIndex, SourceError> {
    let mut idx = library_hdf5(file)?;
    inline_small(&Direct, &mut idx.root)?;
    Ok(idx)
}

/// Opens one file through the cache without writing its entry: `Ok((index, true))` when it
/// was indexed afresh and still needs [`super::cache::IndexCache::store`] (see [`super::cache::store_in_background`]).
pub fn open_cached_deferred(
    file: Arc<SourceFile>,
    cache: Option<&super::cache::IndexCache>,
) -> Result<(SourceIndex, bool), SourceError> {
    if let Some(c) = cache
        && let Some(mut idx) = c.load(&file)
    {
        rebind(&mut idx, &file);
        return Ok((idx, false));
    }
    Ok((open_file(file)?, true))
}

/// Opens one file through the cache.
pub fn open_cached(
    file: Arc<SourceFile>,
    cache: Option<&super::cache::IndexCache>,
) -> Result<SourceIndex, SourceError> {
    if let Some(c) = cache
        && let Some(mut idx) = c.load(&file)
    {
        rebind(&mut idx, &file);
        return Ok(idx);
    }
    let idx = open_file(file)?;
    if let Some(c) = cache {
        c.store(&idx);
    }
    Ok(idx)
}
