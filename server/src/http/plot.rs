//! `/datasets/{id}/plot/{var}/{kind}/{cmap}[/{selection}]`: a PNG map or line plot, or an
//! APNG animation, of a selection of a variable ([`crate::processing::plot`]). Headers tell
//! clients how to read the image: `X-Colorscale-Range` (the values at the colour bar's
//! ends), `X-Map-Layout` (`x,y,scale`: where cell (0, 0) of the field starts, north up,
//! and pixels per cell), `X-Frames` and, for a curvilinear field drawn on a lon/lat canvas,
//! `X-Map-Lonlat` (`west,north,step,width,height`: pixel `(i, j)` of the map area shows the
//! nearest cell to `lon = west + (i + 0.5)·step`, `lat = north − (j + 0.5)·step`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::zarr::served;
use crate::processing::plot::{self, Kind, PlotError, Request};
use crate::state::AppState;

/// Path parameters of a plot without a selection.
type Base = (String, String, String, String);

fn plot_error(id: &str, var: &str, e: PlotError) -> ApiError {
    product_error(format_args!("dataset '{id}', plot of '{var}'"), e)
}

/// The answer to a failed plot or tile, its message prefixed with where it happened. A read
/// failure keeps its status, `Retry-After` and detail (a source file still on tape is a 503
/// to come back to, not a bare error).
pub(crate) fn product_error(at: impl std::fmt::Display, e: PlotError) -> ApiError {
    let (status, msg) = match e {
        PlotError::Read(r) => return ApiError::from(r).context(at),
        PlotError::NotFound(m) => (StatusCode::NOT_FOUND, m),
        PlotError::Bad(m) => (StatusCode::BAD_REQUEST, m),
        PlotError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m),
        PlotError::Encode(m) => (StatusCode::INTERNAL_SERVER_ERROR, m.to_string()),
    };
    ApiError::new(status, format!("{at}: {msg}"))
}

/// `/datasets/{id}/plot/{var}/{kind}/{cmap}`: the whole variable (it must already have the
/// kind's number of dimensions).
pub async fn plot_all(
    state: State<Arc<AppState>>,
    Path((id, var, kind, cmap)): Path<Base>,
    q: Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    render(state, id, var, kind, cmap, String::new(), q).await
}

/// `/datasets/{id}/plot/{var}/{kind}/{cmap}/{*selection}`.
pub async fn plot_sel(
    state: State<Arc<AppState>>,
    Path((id, var, kind, cmap, selection)): Path<(String, String, String, String, String)>,
    q: Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    render(state, id, var, kind, cmap, selection, q).await
}

async fn render(
    State(state): State<Arc<AppState>>,
    id: String,
    var: String,
    kind: String,
    cmap: String,
    selection: String,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let parent = served(&state, &id)?;
    // an unknown variable is 404 whatever else the request says
    plot::variable(&parent.ds, &var).map_err(|e| plot_error(&id, &var, e))?;
    for k in q.keys() {
        if k != "colorscalerange" {
            return Err(ApiError::bad_request(format!(
                "dataset '{id}', plot of '{var}': unknown query parameter '{k}'; allowed: colorscalerange"
            )));
        }
    }
    let e = |err| plot_error(&id, &var, err);
    let req = Request {
        var: var.clone(),
        kind: Kind::parse(&kind).map_err(e)?,
        cmap,
        selection: plot::parse_selection(&selection).map_err(e)?,
        range: q
            .get("colorscalerange")
            .map(|r| plot::parse_range(r))
            .transpose()
            .map_err(e)?,
    };
    let limit = state.max_source_bytes;
    let ds = parent.clone();
    let built = state
        .run_for(&parent.ds, move || plot::build(&ds.ds, &req, limit))
        .await
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("dataset '{id}': plot of '{var}' failed (bug; see server log)"),
            )
        })?
        .map_err(e)?;
    let mut r = (
        [(header::CONTENT_TYPE, HeaderValue::from_static("image/png"))],
        built.png,
    )
        .into_response();
    let h = r.headers_mut();
    let mut put = |k: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    if let Some((a, b)) = built.range {
        put("x-colorscale-range", format!("{a:?},{b:?}"));
    }
    if let Some(l) = built.layout {
        put("x-map-layout", format!("{},{},{}", l.x, l.y, l.scale));
    }
    if let Some(ll) = built.lonlat {
        put(
            "x-map-lonlat",
            format!(
                "{:?},{:?},{:?},{},{}",
                ll.west, ll.north, ll.step, ll.width, ll.height
            ),
        );
    }
    put("x-frames", built.frames.to_string());
    Ok(r)
}
