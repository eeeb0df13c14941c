//! The server's router: every feature's routes merged in one place, with the layers that
//! apply to all of them.

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderName, Method, header};
use tower_http::cors::{AllowHeaders, Any, CorsLayer};

use crate::http::{meta, middleware};
use crate::state::AppState;

/// Builds the router. Layers, outermost first: CORS (on every answer, errors included),
/// request size limits, JSON bodies for axum's own errors; the chunk and metadata routes
/// answer byte ranges (`http::routes`).
pub fn router(state: Arc<AppState>) -> Router {
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::HEAD, Method::OPTIONS])
        // mirrored rather than `*`: a wildcard does not cover `Authorization` (Fetch spec)
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers([
            header::WWW_AUTHENTICATE,
            header::ETAG,
            header::CONTENT_LENGTH,
            HeaderName::from_static("content-encoding"),
            header::CONTENT_RANGE,
            header::ACCEPT_RANGES,
        ]);
    Router::new()
        .merge(crate::http::routes())
        .merge(crate::catalog::routes::routes())
        .fallback(meta::not_found)
        // private datasets: every route below /datasets/{id}, and the listings
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::http::auth::enforce,
        ))
        .layer(axum::middleware::from_fn(middleware::json_errors))
        .layer(axum::middleware::from_fn(middleware::limits))
        .layer(cors)
        // outermost: the request span covers every layer's work
        .layer(axum::middleware::from_fn(middleware::trace))
        .with_state(state)
}
