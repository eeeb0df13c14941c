//! The catalog routes of `cloudify serve`: a STAC Item per dataset, a Collection of all of
//! them, and intake catalogs.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::describe::{Description, describe};
use super::{CatalogCtx, intake, item};
use crate::http::auth::{Readable, listed};
use crate::http::error::ApiError;
use crate::http::zarr::served;
use crate::state::{AppState, Entry, Served};

type Ctx = Option<Extension<Arc<CatalogCtx>>>;

fn ctx(c: Ctx) -> Arc<CatalogCtx> {
    c.map_or_else(|| Arc::new(CatalogCtx::default()), |Extension(c)| c)
}

/// Describes a dataset on the worker pool (reading coordinates is blocking I/O), cached in
/// the context.
async fn description(
    state: &AppState,
    ctx: &Arc<CatalogCtx>,
    s: Arc<Served>,
) -> Result<Arc<Description>, ApiError> {
    let c = ctx.clone();
    state
        .run(move || c.description(&s.ds.name, || describe(&s.ds)))
        .await
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "describing the dataset failed (bug)",
            )
        })
}

/// The catalog routes of the data server (STAC item and collection, intake catalogs).
pub fn routes() -> axum::Router<Arc<AppState>> {
    use axum::routing::get;
    axum::Router::new()
        .route("/datasets/{id}/stac", get(stac_item))
        .route("/datasets/{id}/catalog.yaml", get(intake_one))
        .route("/stac-collection-all.json", get(stac_collection))
        .route("/intake.yaml", get(intake_all))
}

/// Every dataset that serves, described. Datasets still opening are left out until they are
/// ready: they cannot be described yet (their extent is not known), and waiting for them
/// would hold the catalog for as long as their opening takes.
pub async fn all_descriptions(
    state: &AppState,
    ctx: &Arc<CatalogCtx>,
    readable: Option<&Readable>,
) -> Result<Vec<Arc<Description>>, ApiError> {
    let mut out = Vec::new();
    for (id, e) in state.datasets.iter() {
        if !listed(state, readable, id) {
            continue;
        }
        if let Entry::Ready(s) = e {
            out.push(description(state, ctx, s).await?);
        }
    }
    Ok(out)
}

fn json_response(content_type: &'static str, v: &serde_json::Value) -> Response {
    ([(header::CONTENT_TYPE, content_type)], v.to_string()).into_response()
}

fn yaml_response(text: String) -> Response {
    ([(header::CONTENT_TYPE, "application/yaml")], text).into_response()
}

/// `/datasets/{id}/stac`: the dataset's STAC Item.
pub async fn stac_item(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    c: Ctx,
) -> Result<Response, ApiError> {
    let c = ctx(c);
    let s = served(&state, &id)?;
    let d = description(&state, &c, s).await?;
    let base = c.public_url.base(&headers);
    Ok(json_response(
        "application/geo+json",
        &item::item(&d, &base, c.collection()),
    ))
}

/// `/stac-collection-all.json`: a Collection linking every served dataset's Item.
pub async fn stac_collection(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    c: Ctx,
    readable: Option<Extension<Readable>>,
) -> Result<Response, ApiError> {
    let c = ctx(c);
    let all = all_descriptions(&state, &c, readable.as_deref()).await?;
    let refs: Vec<&Description> = all.iter().map(std::convert::AsRef::as_ref).collect();
    let base = c.public_url.base(&headers);
    let coll = item::collection(
        c.collection(),
        "cloudify datasets",
        &refs,
        &format!("{base}{}", item::COLLECTION_PATH),
        |id| format!("{base}{}", item::item_path(id)),
    );
    Ok(json_response("application/json", &coll))
}

/// `/intake.yaml`: an intake catalog of every served dataset.
pub async fn intake_all(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    c: Ctx,
    readable: Option<Extension<Readable>>,
) -> Result<Response, ApiError> {
    let c = ctx(c);
    let all = all_descriptions(&state, &c, readable.as_deref()).await?;
    let refs: Vec<&Description> = all.iter().map(std::convert::AsRef::as_ref).collect();
    Ok(yaml_response(intake::catalog_yaml(
        "cloudify datasets",
        &refs,
        &c.public_url.base(&headers),
    )))
}

/// `/datasets/{id}/catalog.yaml`: an intake catalog of one dataset.
pub async fn intake_one(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    c: Ctx,
) -> Result<Response, ApiError> {
    let c = ctx(c);
    let s = served(&state, &id)?;
    let d = description(&state, &c, s).await?;
    let title = d.title.clone().unwrap_or_else(|| id.clone());
    Ok(yaml_response(intake::catalog_yaml(
        &title,
        &[&d],
        &c.public_url.base(&headers),
    )))
}
