//! cloudify data server: netCDF/HDF5 model output as Zarr v2 and v3 over HTTP.
//!
//! One-way layers, from the bottom (`tests/layers.rs` checks that every import points down):
//!
//! 1. `dtype`, `attrs`, `block`, `chunk::grid`, `render` — element types, attributes, the typed
//!    [`block::Block`] every protocol reads, grid arithmetic, images from plain values;
//! 2. `storage` — byte I/O: `pread` of local files (checked against the indexed identity)
//!    and ranged reads of object stores, through an explicit `RangeRead`;
//! 3. `codec` — one module per codec (zlib, shuffle, zstd, blosc, ...), owning its
//!    numcodecs/Zarr v3 names; `codec::numcodecs` maps declared pipelines both ways;
//! 4. `source` — format readers (netCDF-3, native HDF5, libnetcdf, kerchunk JSON/Parquet,
//!    Zarr stores, Icechunk): what one file holds and where its bytes are (`Layout`);
//! 5. `chunk` — reading one file's variable: decode, byte order, regions;
//! 6. `dataset` — the model clients see: variables stitched from pieces of files, or
//!    derived (`dataset::Values`), with aggregation along a concat dimension;
//! 7. `pipeline` — a region of any variable as a typed block: the one read every protocol
//!    and every processing step makes;
//! 8. `zarr`, `kerchunk`, `opendap` — protocol renderers (metadata documents from serde types, chunk
//!    encodings and pass-through decided here, reference sets);
//! 9. `open` — the one opening path: sources expanded once, every file opened through the
//!    index cache, then aggregated;
//! 10. `access` (who may read which dataset: tokens, OIDC JWTs, signed URLs), then
//!     `state`, `metrics` — what the running server holds;
//! 11. `http`, then `stac_api`, then `catalog` — thin handlers: the data routes, the
//!     `cloudify catalog` STAC API service (its own process, its own store), the data
//!     server's catalogs; `router` merges every feature's routes;
//! 12. `app`, `serve`, `demo`, `compute` — start-up, the connection loop, the demo dataset,
//!     compute pods (`cloudify worker` and `serve --compute`).
//!
//! Opening uses the netCDF/HDF5 libraries at most once per file; serving reads bytes with
//! `pread` or ranged GETs and decodes in Rust on every core.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod access;
pub mod app;
pub mod attrs;
pub mod background;
pub mod block;
pub mod catalog;
pub mod chunk;
pub mod codec;
pub mod compute;
pub mod dataset;
pub mod demo;
pub mod dtype;
pub mod http;
pub mod kerchunk;
pub mod metrics;
pub mod open;
pub mod opendap;
pub mod pipeline;
pub mod processing;
pub mod render;
pub mod router;
pub mod serve;
pub mod source;
pub mod stac_api;
pub mod state;
pub mod storage;
pub mod zarr;
