//! `/datasets/{id}/opendap.{dds,das,dods,ascii,html}`: OPeNDAP DAP2 over any dataset (views
//! included). Rendering, constraints and encoding are `crate::opendap`'s; this handler picks
//! the document, runs the read on the worker pool and sets the headers DAP clients check.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

use super::error::ApiError;
use super::zarr::served;
use crate::opendap::{self, DapError, constraint};
use crate::state::AppState;

/// A DAP response: body, `Content-Description` and content type.
fn dap(status: u16, body: Vec<u8>, desc: &'static str, ctype: &'static str) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert("content-description", HeaderValue::from_static(desc));
    h.insert("xdods-server", HeaderValue::from_static("dods/3.2"));
    h.insert(
        "xopendap-server",
        HeaderValue::from_static(concat!("cloudify/", env!("CARGO_PKG_VERSION"))),
    );
    h.insert("xdap", HeaderValue::from_static("2.0"));
    r
}

fn dap_error(e: &DapError) -> Response {
    if e.status >= 500 {
        tracing::warn!(error = %e.message, "opendap request failed");
    }
    dap(
        e.status,
        e.body().into_bytes(),
        "dods-error",
        "text/plain; charset=utf-8",
    )
}

/// `/datasets/{id}/{file}`: `file` is `opendap` (the form page) or `opendap.<ext>`.
pub async fn opendap(
    State(state): State<Arc<AppState>>,
    Path((id, file)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let ext = match file.as_str() {
        "opendap" => "html",
        f => match f.strip_prefix("opendap.") {
            Some(e @ ("dds" | "das" | "dods" | "ascii" | "html" | "asc")) => e,
            Some(e) => {
                return Ok(dap_error(&DapError::missing(format!(
                    "unknown DAP2 response '.{e}' (have .dds, .das, .dods, .ascii, .html)"
                ))));
            }
            None => return Err(ApiError::not_found(format!("no route /datasets/{id}/{file}"))),
        },
    };
    let s = match served(&state, &id) {
        Ok(s) => s,
        Err(e) => {
            let status = e.status.as_u16();
            return Ok(dap_error(&DapError {
                status,
                message: e.message,
            }));
        }
    };
    let ce = match constraint::percent_decode(query.as_deref().unwrap_or("")) {
        Ok(c) => c,
        Err(e) => return Ok(dap_error(&e)),
    };
    let ext = ext.to_string();
    let ds = s.clone();
    let answer = state
        .run_for(&s.ds, move || -> Result<Response, DapError> {
            let ds = &ds.ds;
            let items = opendap::resolve(ds, &constraint::parse(&ce)?)?;
            Ok(match ext.as_str() {
                "dds" => dap(
                    200,
                    opendap::dds(&ds.name, &items).into_bytes(),
                    "dods-dds",
                    "text/plain; charset=utf-8",
                ),
                "das" => dap(
                    200,
                    opendap::das(ds).into_bytes(),
                    "dods-das",
                    "text/plain; charset=utf-8",
                ),
                "dods" => dap(
                    200,
                    opendap::dods(&ds.name, &items)?,
                    "dods-data",
                    "application/octet-stream",
                ),
                "ascii" | "asc" => dap(
                    200,
                    opendap::ascii(&ds.name, &items)?.into_bytes(),
                    "dods-data",
                    "text/plain; charset=utf-8",
                ),
                _ => dap(
                    200,
                    form(&ds.name, &opendap::dds(&ds.name, &items), &opendap::das(ds)).into_bytes(),
                    "dods-form",
                    "text/html; charset=utf-8",
                ),
            })
        })
        .await
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("dataset '{id}': opendap request failed (bug; see server log)"),
            )
        })?;
    Ok(answer.unwrap_or_else(|e| dap_error(&e)))
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The HTML page: how to open the dataset, its DDS and DAS.
fn form(name: &str, dds: &str, das: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>OPeNDAP: {n}</title></head><body>\n\
         <h1>OPeNDAP DAP2: {n}</h1>\n<p>Open this page's URL without <code>.html</code> with a DAP2 client \
         (<code>ncdump -h URL</code>, <code>cdo sinfo URL</code>, <code>xarray.open_dataset(URL)</code>). \
         Responses: <a href=\"opendap.dds\">.dds</a>, <a href=\"opendap.das\">.das</a>, \
         <code>.dods</code>, <code>.ascii</code>, with a constraint such as <code>?var[0:1:3][0][0]</code>.</p>\n\
         <h2>DDS</h2><pre>{}</pre>\n<h2>DAS</h2><pre>{}</pre>\n</body></html>\n",
        html_escape(dds),
        html_escape(das),
        n = html_escape(name),
    )
}
