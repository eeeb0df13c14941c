//! The few C calls the safe crates don't offer.
//!
//! Chunk byte locations of an HDF5 dataset:
//! The high-level `hdf5` crate only offers `H5Dget_chunk_info(index)`, which in HDF5 1.10
//! walks the chunk index from the start on every call: O(n²) for a dataset with n chunks.
//! `H5Dget_chunk_info_by_coord` is a B-tree lookup per chunk, O(n log n) overall, so a
//! dataset with 100 000 chunks indexes in well under a second. This is the only module with
//! `unsafe`: two FFI calls with buffers sized here.
#![allow(unsafe_code)]

use hdf5_sys::h5::{HADDR_UNDEF, haddr_t, hsize_t};
use hdf5_sys::h5d::{H5Dget_chunk_info_by_coord, H5Dget_num_chunks, H5Dget_space};
use hdf5_sys::h5s::H5Sclose;

use super::ChunkLoc;

/// Returns one [`ChunkLoc`] per chunk of the grid (row-major); unwritten chunks have size 0.
pub fn chunk_locs(ds: &hdf5::Dataset, chunk_shape: &[u64], grid: &[u64]) -> Result<Vec<ChunkLoc>, String> {
    let n = super::grid_chunks(grid)?;
    let mut out = vec![
        ChunkLoc {
            offset: 0,
            size: 0,
            filter_mask: 0
        };
        n
    ];
    if n == 0 {
        return Ok(out);
    }
    let id = ds.id();
    let _guard = hdf5_sys::LOCK.lock();
    // Cheap early exit for datasets that were created but never written.
    let mut stored: hsize_t = 0;
    // SAFETY: `id` is a live dataset id (borrowed from `ds`); the space id is closed below;
    // `stored` is a valid out-pointer.
    let rc = unsafe {
        let space = H5Dget_space(id);
        if space < 0 {
            return Err("H5Dget_space failed".into());
        }
        let rc = H5Dget_num_chunks(id, space, &mut stored);
        H5Sclose(space);
        rc
    };
    if rc < 0 {
        return Err("H5Dget_num_chunks failed".into());
    }
    if stored == 0 {
        return Ok(out);
    }
    let rank = grid.len();
    let mut idx = vec![0u64; rank];
    let mut coord: Vec<hsize_t> = vec![0; rank];
    for loc in &mut out {
        for d in 0..rank {
            coord[d] = idx[d] * chunk_shape[d];
        }
        let mut mask: std::os::raw::c_uint = 0;
        let mut addr: haddr_t = HADDR_UNDEF;
        let mut size: hsize_t = 0;
        // SAFETY: `coord` has exactly `rank` elements as HDF5 expects for this dataset; the
        // out-pointers are valid locals.
        let rc = unsafe { H5Dget_chunk_info_by_coord(id, coord.as_ptr(), &mut mask, &mut addr, &mut size) };
        if rc < 0 {
            return Err(format!("H5Dget_chunk_info_by_coord failed at {coord:?}"));
        }
        if addr != HADDR_UNDEF && size > 0 {
            *loc = ChunkLoc {
                offset: addr,
                size,
                filter_mask: mask,
            };
        }
        // advance the row-major index
        for d in (0..rank).rev() {
            idx[d] += 1;
            if idx[d] < grid[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(out)
}

/// Version string of the linked libnetcdf (`nc_inq_libvers`).
pub fn netcdf_version() -> String {
    // SAFETY: nc_inq_libvers returns a pointer to a static NUL-terminated string.
    let p = unsafe { netcdf_sys::nc_inq_libvers() };
    if p.is_null() {
        return String::new();
    }
    // SAFETY: non-null, static, NUL-terminated (see above).
    unsafe { std::ffi::CStr::from_ptr(p) }
        .to_string_lossy()
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}
