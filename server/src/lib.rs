//! cloudify data server: netCDF/HDF5 model output as Zarr v2 and v3 over HTTP.
//!
//! The data path, folder by folder: `http` (key) → `zarr::key` (variable + chunk index) →
//! `dataset` (which file pieces make up the variable) → `chunk` (which bytes) → `codec`
//! (decode HDF5 filters, encode for the client) → response. Opening (`source`) uses the
//! netCDF/HDF5 libraries once; serving reads bytes with `pread` (or ranged GETs from object
//! stores, `storage`) and decodes in Rust.
#![deny(unsafe_code)]

pub mod app;
pub mod attrs;
pub mod background;
pub mod block;
pub mod catalog;
pub mod chunk;
pub mod codec;
pub mod dataset;
pub mod demo;
pub mod dtype;
pub mod http;
pub mod kerchunk;
pub mod metrics;
pub mod open;
pub mod pipeline;
pub mod router;
pub mod serve;
pub mod source;
pub mod state;
pub mod storage;
pub mod zarr;
