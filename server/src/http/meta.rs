//! xpublish's metadata API and the operational routes.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Value, json};

use super::auth::{Readable, listed};
use super::error::ApiError;
use super::zarr::served;
use crate::dataset::summary;
use crate::state::{AppState, Entry};

/// The ids of the datasets served or being opened (not those that failed) that the caller
/// may see. A dataset still opening is listed: it is being served, and its requests answer
/// 503 + `Retry-After` until it is open; leaving it out would tell clients it does not exist.
fn served_ids(state: &AppState, readable: Option<&Readable>) -> Vec<String> {
    state
        .datasets
        .iter()
        .filter(|(n, e)| !matches!(e, Entry::Failed(_)) && listed(state, readable, n))
        .map(|(n, _)| n.to_string())
        .collect()
}

/// `/`: service name, version, the ids of the datasets being served and links to the other
/// endpoints.
pub async fn root(State(state): State<Arc<AppState>>, readable: Option<Extension<Readable>>) -> Json<Value> {
    Json(json!({
        "service": "cloudify",
        "version": env!("CARGO_PKG_VERSION"),
        "datasets": served_ids(&state, readable.as_deref()),
        "links": {"datasets": "/datasets", "status": "/status", "openapi": "/openapi.json", "docs": "/docs"},
    }))
}

/// `/datasets`: ids of the datasets that are being served (xpublish's answer), those still
/// opening included (`/status` tells which); private datasets only for callers who may read
/// them.
pub async fn list(
    State(state): State<Arc<AppState>>,
    readable: Option<Extension<Readable>>,
) -> Json<Vec<String>> {
    Json(served_ids(&state, readable.as_deref()))
}

/// `/status`: every configured dataset with its state: ready, failed and why, or opening,
/// for how long, waiting for what and the `Retry-After` its requests get.
pub async fn status(State(state): State<Arc<AppState>>) -> Json<Value> {
    let list: Vec<Value> = state
        .datasets
        .iter()
        .map(|(n, e)| match e {
            Entry::Ready(s) => {
                let mut e = json!({"name": n, "state": "ready", "files": s.ds.files.len(),
                    "not_served": s.ds.skipped.iter().map(|(v, w)| json!({"variable": v, "reason": w})).collect::<Vec<_>>()});
                // a tape archive that does not answer: staged files still serve, the others
                // cannot be recalled (the operator shows it as Degraded)
                if let Some(h) = tape_health(&s.ds) {
                    e["tape"] = json!(h);
                }
                e
            }
            Entry::Failed(why) => json!({"name": n, "state": "failed", "error": why}),
            // retry_after_seconds: what a request for it is told now (the recall's estimate
            // when there is one), so a reader of /status (the operator) can say when to expect it
            Entry::Opening(o) => json!({"name": n, "state": "opening", "since_seconds": o.seconds(),
                "waiting_for": o.waiting_for, "retry_after_seconds": o.retry_after_now()}),
        })
        .collect();
    Json(json!({"datasets": list}))
}

/// The health of the tape archive `ds` reads from, once checked.
fn tape_health(ds: &crate::dataset::Dataset) -> Option<crate::storage::tape::ArchiveHealth> {
    let tape = ds.spec.storage.as_ref()?.tape.as_ref()?;
    crate::storage::tape::existing(tape)?.health()
}

/// `/datasets/{id}`: a human-readable summary of the dataset, HTML if the `Accept` header asks for
/// `text/html`, plain text otherwise. The page's links (plots, map, EDR form, Zarr) are
/// relative to `/datasets/{id}/`, so a browser asking for `/datasets/{id}` is redirected
/// there (a relative `Location`, so it holds behind a path-prefixing proxy too).
pub async fn summary(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let s = served(&state, &id)?;
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    if wants_html && !uri.path().ends_with('/') {
        let seg: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
        // form encoding writes a space as '+', which a path would keep literally
        let loc = format!("{}/", seg.replace('+', "%20"));
        if let Ok(v) = header::HeaderValue::from_str(&loc) {
            return Ok((StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, v)]).into_response());
        }
    }
    Ok(if wants_html {
        Html(summary::html(&s.ds)).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            summary::text(&s.ds),
        )
            .into_response()
    })
}

/// `/datasets/{id}/keys`: variable names (xpublish's `list(ds.variables)`).
pub async fn keys(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Vec<String>>, ApiError> {
    let s = served(&state, &id)?;
    Ok(Json(
        s.ds.root
            .walk()
            .iter()
            .flat_map(|g| g.vars.iter().map(|v| v.path.clone()))
            .collect(),
    ))
}

/// `/datasets/{id}/dict`: the dataset's structure as xarray's `Dataset.to_dict(data=False)` gives
/// it.
pub async fn dict(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(summary::dict(&served(&state, &id)?.ds)))
}

/// `/datasets/{id}/info`: an ncdump-like JSON description (xpublish's `/info`).
pub async fn info(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(summary::info(&served(&state, &id)?.ds)))
}

/// `/versions`: versions of cloudify and of the HDF5 and netCDF libraries it is linked with, for
/// bug reports.
pub async fn versions() -> Json<Value> {
    let (maj, min, rel) = hdf5::library_version();
    Json(json!({
        "cloudify": env!("CARGO_PKG_VERSION"),
        "hdf5": format!("{maj}.{min}.{rel}"),
        "netcdf": crate::source::netcdf::library_version(),
        "rustc_target": std::env::consts::ARCH,
    }))
}

/// `/favicon.ico`: 204 No Content, cached for a day. Browsers ask for it on the first page of
/// an origin; cloudify has no icon, and a 404 would show as an error in the console of the
/// HTML pages (summaries, the map page).
pub async fn favicon() -> Response {
    (
        StatusCode::NO_CONTENT,
        [(header::CACHE_CONTROL, "public, max-age=86400")],
    )
        .into_response()
}

/// `/healthz`: liveness, always `ok` while the process answers (readiness is [`readyz`]).
pub async fn healthz() -> &'static str {
    "ok"
}

/// Ready when at least one dataset serves: a server whose datasets all failed has nothing
/// to offer, while one broken dataset among many must not take the others out of service.
/// Datasets still opening (in the background, after the server started listening) do not
/// make it ready: in Kubernetes a pod whose only dataset is being recalled from tape gets no
/// traffic yet, and during a rollout the old pods keep serving until the new one can — while
/// `/healthz` answers, so the pod is not killed and its opening not started over. Not ready
/// either once SIGTERM/SIGINT started the shutdown, so that load balancers stop sending
/// requests while open connections drain. A 503 says why in `reason`.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let c = state.datasets.counts();
    let reason = if state.shutdown.is_set() {
        Some("shutting down".to_string())
    } else if state.datasets.is_empty() {
        Some("no dataset is configured".to_string())
    } else if c.ready == 0 {
        let mut why = Vec::new();
        for (n, e) in state.datasets.iter() {
            match e {
                Entry::Failed(w) => why.push(format!("'{n}' failed: {w}")),
                Entry::Opening(o) => why.push(format!(
                    "'{n}' is still opening ({}, for {} s so far)",
                    o.waiting_for,
                    o.seconds()
                )),
                Entry::Ready(_) => {}
            }
        }
        Some(if c.opening == 0 {
            format!("no dataset could be opened: {}", why.join("; "))
        } else {
            format!("no dataset serves yet: {}", why.join("; "))
        })
    } else {
        None
    };
    let mut body = json!({"ready": c.ready, "failed": c.failed, "opening": c.opening});
    match reason {
        None => (StatusCode::OK, Json(body)).into_response(),
        Some(reason) => {
            body["reason"] = Value::String(reason);
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

/// `/metrics`: Prometheus metrics in the text exposition format.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// Fallback for unknown paths: a JSON 404 naming the path, like every other error.
pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for '{}'", uri.path()))
}
