//! HTTP surface: thin handlers over the dataset registry.

pub mod auth;
pub mod cdf;
pub mod edr;
pub mod error;
pub mod groupby;
pub mod histogram;
pub mod meta;
pub mod middleware;
pub mod openapi;
pub mod opendap;
pub mod parquet;
pub mod plot;
pub mod range;
pub mod tape;
pub mod tiles;
pub mod zarr;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;

use crate::state::AppState;

/// The data and metadata routes (Zarr, kerchunk, xpublish's metadata API, operations),
/// without the layers `crate::router` puts around every route.
pub fn routes() -> Router<Arc<AppState>> {
    // Keys and documents a client may read in parts (netCDF-C's Zarr reader, GDAL, fsspec).
    let ranged = Router::new()
        .route("/datasets/{id}/zarr/{*key}", get(zarr::zarr_key))
        .route("/datasets/{id}/kerchunk/{*key}", get(zarr::kerchunk_key))
        .route("/datasets/{id}/kerchunk.json", get(zarr::kerchunk_refs))
        .route(
            "/datasets/{id}/kerchunk.parq/{*path}",
            get(parquet::kerchunk_parquet),
        )
        .route(
            "/datasets/{id}/groupby/{var}/{coord}/{action}/zarr/{*key}",
            get(groupby::zarr_key),
        )
        // the same with a value-range selection as one segment (`zarr` itself is never
        // one: a selection has '=')
        .route(
            "/datasets/{id}/groupby/{var}/{coord}/{action}/{selection}/zarr/{*key}",
            get(groupby::zarr_key_selected),
        )
        .route(
            "/datasets/{id}/histogram/{var}/{params}/zarr/{*key}",
            get(histogram::zarr_key),
        )
        .route_layer(axum::middleware::from_fn(range::ranges));
    Router::new()
        .route("/", get(meta::root))
        .route("/datasets", get(meta::list))
        .route("/status", get(meta::status))
        .route("/datasets/{id}", get(meta::summary))
        .route("/datasets/{id}/", get(meta::summary))
        .route("/datasets/{id}/keys", get(meta::keys))
        .route("/datasets/{id}/dict", get(meta::dict))
        .route("/datasets/{id}/info", get(meta::info))
        .route(
            "/datasets/{id}/groupby/{var}/{coord}/{action}",
            get(groupby::summary),
        )
        .route("/datasets/{id}/histogram/{var}", get(histogram::summary))
        // products people look at (issue 16): PNG plots and animations
        .route("/datasets/{id}/plot/{var}/{kind}/{cmap}", get(plot::plot_all))
        .route(
            "/datasets/{id}/plot/{var}/{kind}/{cmap}/{*selection}",
            get(plot::plot_sel),
        )
        // OGC API EDR-style extraction (position time series, area)
        .route("/datasets/{id}/edr/position", get(edr::position))
        .route("/datasets/{id}/edr/area", get(edr::area))
        // map tiles (Web Mercator), their TileJSON and a map page (issue 16 part 2)
        .route(
            "/datasets/{id}/tiles/WebMercatorQuad/tilejson.json",
            get(tiles::tilejson),
        )
        .route(
            "/datasets/{id}/tiles/WebMercatorQuad/{z}/{y}/{x}",
            get(tiles::tile),
        )
        .route("/datasets/{id}/map", get(tiles::map_page))
        .route("/datasets/{id}/zarr", get(zarr::zarr_root))
        // OPeNDAP DAP2: `opendap.dds`, `.das`, `.dods`, ... (axum cannot capture a suffix
        // inside a segment; static siblings such as `keys` still win).
        .route("/datasets/{id}/{file}", get(opendap::opendap))
        .route("/datasets/{id}/zarr/", get(zarr::zarr_root))
        .merge(ranged)
        .route("/versions", get(meta::versions))
        .route("/openapi.json", get(openapi::spec))
        .route("/docs", get(openapi::docs))
        .route("/healthz", get(meta::healthz))
        .route("/favicon.ico", get(meta::favicon))
        .route("/readyz", get(meta::readyz))
        .route("/metrics", get(meta::metrics))
        // Tape-archived datasets: recall ahead of reading, and where the files are.
        .route("/datasets/{id}/stage", axum::routing::post(tape::stage))
        .route("/datasets/{id}/locality", get(tape::locality))
        // access control: nginx auth_request / ingress-nginx auth-url
        .route("/auth/check", get(auth::check))
}
