//! `/datasets/{id}/groupby/{var}/{coord}/{action}`: the seed's ad-hoc reduction route, safe:
//! every part is looked up in allow-lists (reductions, the dataset's variables and
//! coordinates), never evaluated. The product is a dataset of its own, served as Zarr v2
//! and v3 under `…/{action}/zarr/`; the route itself answers a JSON summary.
//!
//! A value-range selection in the query (`?time=2000-01-01/2000-12-31&lat=-30/30`,
//! [`crate::processing::select`]) reduces only the selected region, as
//! `ds.sel(...).groupby(coord).<action>()`. Its Zarr form carries the selection as one path
//! segment before `zarr/` (`…/{action}/lat=-30,30&time=2000-01-01,2000-12-31/zarr/`),
//! since Zarr clients append keys to a base URL and drop its query string; the summary
//! gives that URL, canonically written.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use super::error::ApiError;
use super::zarr::{serve_product_key, served};
use crate::processing::select::{self, Selection};
use crate::state::products::ProductError;
use crate::state::{AppState, Served};

type Parts = (String, String, String, String);

/// What the request names before its selection, as the summary writes it
/// (`groupby/{var}/{coord}/{action}`).
fn route((_, var, coord, action): &Parts) -> String {
    format!("groupby/{var}/{coord}/{action}")
}

/// Builds (or finds) the product on the worker pool.
async fn product(state: &Arc<AppState>, parts: &Parts, sel: &Selection) -> Result<Arc<Served>, ApiError> {
    let (id, var, coord, action) = parts;
    let parent = served(state, id)?;
    let (st, v, c, a, s) = (
        state.clone(),
        var.clone(),
        coord.clone(),
        action.clone(),
        sel.clone(),
    );
    let built = state
        .run_for(&parent.ds, {
            let parent = parent.clone();
            move || st.products.get(&parent, &v, &c, &a, &s)
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
        ApiError::new(status, format!("dataset '{id}', {}: {e}", route(parts)))
    })
}

/// A selection that cannot be read: 400 naming the parameter.
fn bad_selection(parts: &Parts, e: &select::SelectError) -> ApiError {
    ApiError::bad_request(format!("dataset '{}', {}: {e}", parts.0, route(parts)))
}

/// The product's Zarr URL: `…/{action}/zarr`, or `…/{action}/{selection}/zarr`.
fn zarr_url((id, var, coord, action): &Parts, sel: &Selection) -> String {
    let base = format!("/datasets/{id}/groupby/{var}/{coord}/{action}");
    if sel.is_empty() {
        format!("{base}/zarr")
    } else {
        format!("{base}/{}/zarr", select::encode_segment(&sel.segment()))
    }
}

/// `/datasets/{id}/groupby/{var}/{coord}/{action}`: what the product holds, where, and
/// about how many bytes of source data computing all of it reads (`estimated_source_bytes`,
/// the sum over its chunks of what `--max-source-bytes` is checked against). JSON, or a
/// small HTML page when the client accepts `text/html` (a browser).
pub async fn summary(
    State(state): State<Arc<AppState>>,
    Path(parts): Path<Parts>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let sel = Selection::parse_query(query.as_deref().unwrap_or_default())
        .map_err(|e| bad_selection(&parts, &e))?;
    let s = product(&state, &parts, &sel).await?;
    let (id, var, coord, action) = &parts;
    let estimate = {
        let s2 = s.clone();
        state
            .run_for(&s.ds, move || product_estimate(&s2))
            .await
            .unwrap_or(0)
    };
    let v = s.ds.variable(var);
    let zarr = zarr_url(&parts, &sel);
    // the value ranges the product reduces, as given
    let selection: serde_json::Map<String, serde_json::Value> = sel
        .0
        .iter()
        .map(|(d, a, b)| (d.clone(), serde_json::json!({"from": a, "to": b})))
        .collect();
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    if wants_html {
        let what =
            s.ds.root
                .attrs
                .get_str(crate::processing::reduce::PROVENANCE_ATTR);
        return Ok(Html(html_page(&parts, what, &zarr, v.map(|v| &**v), estimate)).into_response());
    }
    Ok(axum::Json(serde_json::json!({
        "dataset": id,
        "variable": var,
        "groupby": coord,
        "action": action,
        "dims": v.map(|v| v.dims.clone()),
        "shape": v.map(|v| v.shape.clone()),
        "dtype": v.map(|v| v.dtype.numpy_name()),
        "zarr": zarr,
        "selection": selection,
        "estimated_source_bytes": estimate,
    }))
    .into_response())
}

/// Source bytes computing every variable of the product reads (its coordinates: none).
fn product_estimate(s: &Served) -> u64 {
    s.ds.root
        .walk()
        .iter()
        .flat_map(|g| g.vars.iter())
        .fold(0u64, |a, v| {
            let start = vec![0u64; v.shape.len()];
            a.saturating_add(crate::pipeline::estimate_region_bytes(v, &start, &v.shape))
        })
}

/// Escapes text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The summary as a page: title, shape and links to the product's Zarr metadata and the
/// dataset. Every part of the URL is escaped (they are allow-listed names, but a page must
/// not depend on that).
fn html_page(
    (id, var, coord, action): &Parts,
    what: Option<&str>,
    zarr: &str,
    v: Option<&crate::dataset::Variable>,
    estimate: u64,
) -> String {
    // the product's provenance says it all, selection included
    let title = esc(&match what {
        Some(w) => format!("{id}: {var}.{w}"),
        None => format!("{id}: {var}.groupby({coord}).{action}()"),
    });
    let dims = v.map(|v| {
        v.dims
            .iter()
            .zip(&v.shape)
            .map(|(d, n)| format!("{}: {n}", esc(d)))
            .collect::<Vec<_>>()
            .join(", ")
    });
    let dtype = v.map(|v| v.dtype.numpy_name());
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head><body>\n\
         <h1>{title}</h1>\n<ul>\n<li>dimensions: {}</li>\n<li>dtype: {}</li>\n\
         <li>estimated source bytes read: {estimate}</li>\n</ul>\n<ul>\n\
         <li><a href=\"{z}/.zmetadata\">Zarr v2 (.zmetadata)</a></li>\n\
         <li><a href=\"{z}/zarr.json\">Zarr v3 (zarr.json)</a></li>\n\
         <li><a href=\"/datasets/{d}\">dataset {d}</a></li>\n</ul>\n</body></html>\n",
        dims.unwrap_or_default(),
        esc(&dtype.unwrap_or_default()),
        z = esc(zarr),
        d = esc(id),
    )
}

/// `/datasets/{id}/groupby/{var}/{coord}/{action}/zarr/{key}`: the product as Zarr.
pub async fn zarr_key(
    State(state): State<Arc<AppState>>,
    Path((id, var, coord, action, key)): Path<(String, String, String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let parts = (id, var, coord, action);
    let s = product(&state, &parts, &Selection::default()).await?;
    serve_product_key(
        &state,
        s,
        &format!("{}/{}", parts.0, route(&parts)),
        &key,
        &headers,
    )
    .await
}

/// `/datasets/{id}/groupby/{var}/{coord}/{action}/{selection}/zarr/{key}`: the product of
/// a value-range selection as Zarr; `selection` is the segment the summary's `zarr` URL
/// gives (`lat=-30,30&time=2000-01-01,2000-12-31`; any order, `from/to` percent-encoded
/// works too).
pub async fn zarr_key_selected(
    State(state): State<Arc<AppState>>,
    Path((id, var, coord, action, selection, key)): Path<(String, String, String, String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let parts = (id, var, coord, action);
    let sel = Selection::parse_segment(&selection).map_err(|e| bad_selection(&parts, &e))?;
    let s = product(&state, &parts, &sel).await?;
    let at = format!("{}/{}/{}", parts.0, route(&parts), sel.segment());
    serve_product_key(&state, s, &at, &key, &headers).await
}
