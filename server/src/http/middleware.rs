//! Router-wide guards: request size limits answered in JSON, and JSON bodies for the errors
//! axum produces itself (path rejections, 405, 413 of a body limit), so that every error a
//! client sees is JSON with the right status: `{"error": "..."}` from `cloudify serve`, the
//! STAC API's `{"code": ..., "description": ...}` from `cloudify catalog` (see [`ErrorShape`]).

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, ErrorShape};

/// Longest request target (path and query) served. The longest URI a dataset can need is a
/// chunk key of its deepest variable: a few hundred bytes. hyper itself refuses targets over
/// 64 KiB, with a bodiless 414; below that this limit answers in JSON before any routing.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// Most bytes of request headers (names, values, separators) served, like nginx's default
/// `large_client_header_buffers`. hyper's own limit (about 400 KiB, 100 headers) answers a
/// bodiless 431; this one answers in JSON.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Error bodies of other layers longer than this are cut (they are one-line texts).
const MAX_ERROR_TEXT: usize = 16 * 1024;

/// The first `n` bytes of `s` at a character boundary, for naming huge inputs in messages.
pub fn head(s: &str, n: usize) -> &str {
    let mut end = n.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// One span per request when OpenTelemetry is on (`OTEL_*`, see `cloudify_telemetry`) and the
/// sampler records the request, child of the caller's W3C `traceparent` if it sent one; a
/// request the sampler drops runs with no span at all (nor any below it: the decision is
/// taken here, once, instead of building spans for the SDK to drop). With traces off this is
/// a plain pass-through (one atomic load).
///
/// The span names the method, the route template and the path, never the query string (signed
/// URLs carry their signature there) nor any header (`Authorization`).
pub async fn trace(req: Request, next: Next) -> Response {
    if !cloudify_telemetry::enabled() {
        return next.run(req).await;
    }
    let Some(sampled) = cloudify_telemetry::head_sample(req.headers()) else {
        return cloudify_telemetry::suppressed(next.run(req)).await;
    };
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_string());
    let name = format!("{method} {}", route.as_deref().unwrap_or("(unrouted)"));
    let span = sampled.start(|| {
        tracing::info_span!(
            "request",
            otel.name = name.as_str(),
            otel.kind = "server",
            http.request.method = method.as_str(),
            http.route = route.as_deref(),
            url.path = head(req.uri().path(), 1024),
            http.response.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        )
    });
    let resp = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    let status = resp.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    resp
}

/// 414 for an over-long request target, 431 for over-large headers, as `{"error": ...}`.
pub async fn limits(req: Request, next: Next) -> Response {
    match over_limits(&req, MAX_URI_BYTES) {
        Some(e) => e.into_response(),
        None => next.run(req).await,
    }
}

/// The request guards of a service other than the data server: its error shape and the
/// longest request target its routes can need.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// How the 414/431 bodies are spelled.
    pub shape: ErrorShape,
    /// Longest request target (path and query) served; [`MAX_URI_BYTES`] is the data
    /// server's. At most hyper's own 64 KiB, beyond which no layer runs.
    pub max_uri: usize,
}

/// [`limits`] for another service (`axum::middleware::from_fn_with_state(limits,
/// limits_as)`): the same header limit, the service's target limit and error shape.
pub async fn limits_as(State(l): State<Limits>, req: Request, next: Next) -> Response {
    match over_limits(&req, l.max_uri) {
        Some(e) => e.shape(l.shape).into_response(),
        None => next.run(req).await,
    }
}

/// The error answering a request target over `max_uri` bytes or headers over
/// [`MAX_HEADER_BYTES`], if it is.
fn over_limits(req: &Request, max_uri: usize) -> Option<ApiError> {
    let target = req.uri().path_and_query().map_or("", |p| p.as_str());
    if target.len() > max_uri {
        return Some(ApiError::new(
            StatusCode::URI_TOO_LONG,
            format!(
                "the request target is {} bytes long, more than the {max_uri} accepted (it starts '{}')",
                target.len(),
                head(target, 80)
            ),
        ));
    }
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    (header_bytes > MAX_HEADER_BYTES).then(|| {
        ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "the request headers are {header_bytes} bytes, more than the {MAX_HEADER_BYTES} accepted"
            ),
        )
    })
}

fn is_json(r: &Response) -> bool {
    r.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.split(';').next().unwrap_or_default().trim();
            ct == "application/json" || ct.ends_with("+json")
        })
}

/// Turns an error answer that is not JSON (axum's path rejections such as invalid UTF-8 in a
/// percent-encoded segment, its 405 for other methods) into `{"error": "METHOD PATH: why"}`,
/// keeping status and headers (`Allow`).
pub async fn json_errors(req: Request, next: Next) -> Response {
    // axum adds `Allow` outside this layer; every route of this router is GET (and HEAD)
    to_json(
        ErrorShape::Plain,
        "this server answers GET and HEAD (see Allow)",
        req,
        next,
    )
    .await
}

/// [`json_errors`] with another error body (`axum::middleware::from_fn_with_state(shape,
/// json_errors_as)`), for routers whose protocol prescribes one.
pub async fn json_errors_as(State(shape): State<ErrorShape>, req: Request, next: Next) -> Response {
    to_json(shape, "see Allow", req, next).await
}

/// `allowed`: what a 405 says when `Allow` is not set yet at this layer.
async fn to_json(shape: ErrorShape, allowed: &str, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let resp = next.run(req).await;
    let status = resp.status();
    // DAP2 answers errors with its own documented body (`Content-Description: dods-error`),
    // which DAP clients parse; it is passed through.
    let dap_error = resp
        .headers()
        .get("content-description")
        .is_some_and(|v| v == "dods-error");
    if !(status.is_client_error() || status.is_server_error()) || is_json(&resp) || dap_error {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, MAX_ERROR_TEXT)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let mut why = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    if status == StatusCode::METHOD_NOT_ALLOWED {
        why = match parts.headers.get(header::ALLOW).and_then(|v| v.to_str().ok()) {
            Some(allow) => format!("method {method} is not allowed; allowed: {allow}"),
            None => format!("method {method} is not allowed; {allowed}"),
        };
    }
    let message = format!("{method} {}: {why}", head(uri.path(), 200));
    tracing::debug!(%status, "{message}");
    let body = shape.body(status, &message).to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, Body::from(body))
}
