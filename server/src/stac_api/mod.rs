//! The `cloudify catalog` process: a dynamic STAC API (core, collections, features,
//! item-search with CQL2 filters, Transactions) over a crash-safe store of its own.
//!
//! Apart from `crate::catalog`, which describes the datasets a data server serves, because
//! the two run as different processes with different inputs: this service never opens a
//! dataset, it holds whatever items data servers (or the Kubernetes operator) register
//! through `crate::catalog::client`. It sits below `catalog` so that the static export can
//! write files the way the store names them, and uses only `crate::http` (one error type,
//! one set of request guards) from the data server.
//!
//! * `store` — collections and items on disk, in memory for search;
//! * `filter` — CQL2 filters compiled with bounded nesting and checked arities;
//! * `api` — the axum router and its handlers, on `stac_server::Api`;
//! * `openapi` — the service description served at `/api`.

/// Longest request target (path and query) the service takes, answered 414 in JSON above.
///
/// Larger than the data server's 8 KiB ([`crate::http::middleware::MAX_URI_BYTES`], sized for
/// chunk keys): a GET search carries its whole CQL2 filter and `intersects` geometry in the
/// query, and a filter up to [`filter::MAX_FILTER_OPERATORS`] operators with long property
/// names, URL-encoded, takes tens of KiB. A filter that long is better answered by the filter
/// check's 400 naming the operator count than by a 414. Still below hyper's own 64 KiB, which
/// answers a bare 414 without running any layer; longer searches go in a POST body.
pub const MAX_URI_BYTES: usize = 48 * 1024;

pub mod api;
pub mod filter;
pub mod openapi;
pub mod store;
