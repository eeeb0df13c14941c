//! `/datasets/{id}/groupby/{var}/{coord}/{action}`: the seed's ad-hoc reduction route, safe:
//! every part is looked up in allow-lists (reductions, the dataset's variables and
//! coordinates), never evaluated. The product is a dataset of its own, served as Zarr v2
//! and v3 under `…/{action}/zarr/`; the route itself answers a JSON summary.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::zarr::{serve_key, served};
use crate::state::products::ProductError;
use crate::state::{AppState, Served};

type Parts = (String, String, String, String);

/// Builds (or finds) the product on the worker pool.
async fn product(state: &Arc<AppState>, (id, var, coord, action): &Parts) -> Result<Arc<Served>, ApiError> {
    let parent = served(state, id)?;
    let (st, v, c, a) = (state.clone(), var.clone(), coord.clone(), action.clone());
    let built = state
        .run_for(&parent.ds, {
            let parent = parent.clone();
            move || st.products.get(&parent, &v, &c, &a)
        })
        .await
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "dataset '{id}': building groupby/{var}/{coord}/{action} failed (bug; see server log)"
                ),
            )
        })?;
    built.map_err(|e| {
        let status = match &e {
            ProductError::Reduce(r) if r.missing => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(
            status,
            format!("dataset '{id}', groupby/{var}/{coord}/{action}: {e}"),
        )
    })
}

/// `/datasets/{id}/groupby/{var}/{coord}/{action}`: what the product holds, and where.
pub async fn summary(
    State(state): State<Arc<AppState>>,
    Path(parts): Path<Parts>,
) -> Result<Response, ApiError> {
    let s = product(&state, &parts).await?;
    let (id, var, coord, action) = &parts;
    let v = s.ds.variable(var);
    let zarr = format!("/datasets/{id}/groupby/{var}/{coord}/{action}/zarr");
    Ok(axum::Json(serde_json::json!({
        "dataset": id,
        "variable": var,
        "groupby": coord,
        "action": action,
        "dims": v.map(|v| v.dims.clone()),
        "shape": v.map(|v| v.shape.clone()),
        "dtype": v.map(|v| v.dtype.numpy_name()),
        "zarr": zarr,
    }))
    .into_response())
}

/// `/datasets/{id}/groupby/{var}/{coord}/{action}/zarr/{key}`: the product as Zarr.
pub async fn zarr_key(
    State(state): State<Arc<AppState>>,
    Path((id, var, coord, action, key)): Path<(String, String, String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let parts = (id, var, coord, action);
    let s = product(&state, &parts).await?;
    let (id, var, coord, action) = &parts;
    serve_key(
        &state,
        s,
        &format!("{id}/groupby/{var}/{coord}/{action}"),
        &key,
        &headers,
    )
    .await
}
