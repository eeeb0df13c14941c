//! `/datasets/{id}/opendap.{dds,das,dods,ascii,html}`: OPeNDAP DAP2 over any dataset (views
//! included). Rendering, constraints and encoding are `crate::opendap`'s; this handler picks
//! the document, runs the read on the worker pool and sets the headers DAP clients check.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

use bytes::Bytes;
use futures_util::{StreamExt, stream};

use super::error::ApiError;
use super::zarr::served;
use crate::opendap::{self, DapError, Piece, constraint, dap4};
use crate::state::{AppState, Served};

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
            Some(e @ ("dmr" | "dmr.xml" | "dap")) => e,
            Some(e) => {
                return Ok(dap_error(&DapError::missing(format!(
                    "unknown OPeNDAP response '.{e}' (have DAP2 .dds, .das, .dods, .ascii, .html and DAP4 .dmr, .dap)"
                ))));
            }
            None => return Err(ApiError::not_found(format!("no route /datasets/{id}/{file}"))),
        },
    };
    let dap4 = matches!(ext, "dmr" | "dmr.xml" | "dap");
    let s = match served(&state, &id) {
        Ok(s) => s,
        Err(e) => {
            // the protocol's own error document, with the `Retry-After` of a dataset still
            // opening kept
            let retry_after = e.retry_after;
            let e = DapError {
                status: e.status.as_u16(),
                message: e.message,
            };
            let mut r = if dap4 { dap4_error(&e) } else { dap_error(&e) };
            if let Some(secs) = retry_after {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            return Ok(r);
        }
    };
    if dap4 {
        return Ok(dap4_answer(state, s, ext == "dap", query.unwrap_or_default()).await);
    }
    let ce = match constraint::percent_decode(query.as_deref().unwrap_or("")) {
        Ok(c) => c,
        Err(e) => return Ok(dap_error(&e)),
    };
    if ext == "dods" {
        return Ok(dods(state, s, ce).await);
    }
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

/// The `.dods` answer, streamed: the plan (DDS, counts, pieces of values) is made first, so
/// bad constraints and oversized requests get their DAP error; the pieces up to and including
/// the first values are encoded before answering, so a source that cannot be read now gets
/// its error status too; every later piece of an answer up to
/// [`opendap::MAX_CHECKED_BYTES`] (string answers, which have no `Content-Length`, by their
/// estimated size) is read before answering too, decoded and dropped without being encoded
/// ([`opendap::check_values`]; see [`opendap::MAX_CHECKED_BYTES`] why). Later pieces are
/// then encoded two at a time on the worker pool while earlier ones are sent; a read failing
/// after the headers (a larger answer, or a file changing meanwhile) ends the body early,
/// which the client sees against `Content-Length` (or the chunked body's missing end).
async fn dods(state: Arc<AppState>, s: Arc<Served>, ce: String) -> Response {
    let failed = |id: &str| {
        dap_error(&DapError {
            status: 500,
            message: format!("dataset '{id}': opendap request failed (bug; see server log)"),
        })
    };
    let ds = s.clone();
    let plan = state
        .run_for(&s.ds, move || {
            let items = opendap::resolve(&ds.ds, &constraint::parse(&ce)?)?;
            opendap::dods_plan(&ds.ds.name, &items)
        })
        .await;
    let plan = match plan {
        Some(Ok(p)) => p,
        Some(Err(e)) => return dap_error(&e),
        None => return failed(&s.ds.name),
    };
    let encode = |state: Arc<AppState>, s: Arc<Served>, a: opendap::ArrayOut| async move {
        state
            .run_for(&s.ds, move || {
                let mut out = Vec::new();
                // sent, the buffer goes back to the pool for a later piece
                opendap::encode_values(&a, &mut out).map(|()| Bytes::from_owner(opendap::pool::Recycled(out)))
            })
            .await
    };
    let mut pieces = plan.pieces.into_iter();
    let mut first: Vec<Bytes> = Vec::new();
    for p in pieces.by_ref() {
        match p {
            Piece::Literal(b) => first.push(Bytes::from(b)),
            Piece::Values(a) => {
                match encode(state.clone(), s.clone(), a).await {
                    Some(Ok(b)) => first.push(b),
                    Some(Err(e)) => return dap_error(&e),
                    None => return failed(&s.ds.name),
                }
                break;
            }
        }
    }
    let pieces: Vec<Piece> = pieces.collect();
    if plan.checked {
        let arrays: Vec<opendap::ArrayOut> = pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Values(a) => Some(a.clone()),
                Piece::Literal(_) => None,
            })
            .collect();
        let (st, sv) = (state.clone(), s.clone());
        let mut check = stream::iter(arrays)
            .map(move |a| {
                let (st, sv) = (st.clone(), sv.clone());
                async move { st.run_for(&sv.ds, move || opendap::check_values(&a)).await }
            })
            .buffered(2);
        while let Some(r) = check.next().await {
            match r {
                Some(Ok(())) => {}
                Some(Err(e)) => return dap_error(&e),
                None => return failed(&s.ds.name),
            }
        }
    }
    let name = s.ds.name.clone();
    let rest = stream::iter(pieces)
        .map(move |p| {
            let (state, s, name) = (state.clone(), s.clone(), name.clone());
            async move {
                match p {
                    Piece::Literal(b) => Ok(Bytes::from(b)),
                    Piece::Values(a) => match encode(state, s, a).await {
                        Some(Ok(b)) => Ok(b),
                        Some(Err(e)) => {
                            tracing::warn!(dataset = %name, error = %e.message, "opendap .dods cut short");
                            Err(std::io::Error::other(e.message))
                        }
                        None => Err(std::io::Error::other("opendap encoding failed (bug)")),
                    },
                }
            }
        })
        .buffered(2);
    let body = stream::iter(first.into_iter().map(Ok::<_, std::io::Error>)).chain(rest);
    let mut r = dap(200, Vec::new(), "dods-data", "application/octet-stream");
    *r.body_mut() = Body::from_stream(body);
    if let Some(n) = plan.length {
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    r
}

/// A DAP4 response: the DAP2 headers with `XDAP: 4.0` and the DAP4 media type.
fn dap4_response(status: u16, body: Body, ctype: &'static str) -> Response {
    let mut r = dap(status, Vec::new(), "dap4", ctype);
    *r.body_mut() = body;
    r.headers_mut().insert("xdap", HeaderValue::from_static("4.0"));
    r
}

/// The DAP4 error document, with the HTTP status (clients show its `<Message>`).
fn dap4_error(e: &DapError) -> Response {
    if e.status >= 500 {
        tracing::warn!(error = %e.message, "opendap dap4 request failed");
    }
    let mut r = dap4_response(
        e.status,
        Body::from(dap4::error_body(e)),
        "application/vnd.opendap.dap4.error+xml",
    );
    // as for DAP2, this marks the body as the protocol's own error document, which the
    // JSON error layer passes through
    r.headers_mut()
        .insert("content-description", HeaderValue::from_static("dods-error"));
    r
}

/// How long a failed `.dap` body stays open after its error chunk before it is cut (see
/// [`dap4_answer`]); a client reading at all receives the chunk in that time.
const ERROR_CHUNK_FLUSH: std::time::Duration = std::time::Duration::from_millis(500);

/// `.dmr` / `.dmr.xml` (the DMR of the constrained dataset) and `.dap` (the chunked data
/// response, streamed as `.dods` is: the plan first, so a bad constraint or oversized
/// request gets its DAP4 error and status; then pieces encoded two at a time on the worker
/// pool, each variable's CRC32 computed in order as its pieces pass when
/// `dap4.checksum=true`; a read failing after the headers sends a DAP4 error chunk and ends
/// the body short of its `Content-Length`, see [`dap4::error_chunk`]).
async fn dap4_answer(state: Arc<AppState>, s: Arc<Served>, data: bool, query: String) -> Response {
    let failed = |id: &str| {
        dap4_error(&DapError {
            status: 500,
            message: format!("dataset '{id}': opendap request failed (bug; see server log)"),
        })
    };
    let ds = s.clone();
    let plan = state
        .run_for(
            &s.ds,
            move || -> Result<Result<dap4::DapPlan, String>, DapError> {
                let q = dap4::parse_query(&query)?;
                let vars = dap4::resolve(&ds.ds, &q.clauses)?;
                let ce = constraint_text(&q.clauses);
                if data {
                    dap4::dap_plan(&ds.ds, &vars, ce.as_deref(), q.checksums).map(Ok)
                } else {
                    Ok(Err(dap4::dmr(&ds.ds, &vars, ce.as_deref())))
                }
            },
        )
        .await;
    let plan = match plan {
        Some(Ok(Ok(p))) => p,
        Some(Ok(Err(dmr))) => {
            return dap4_response(
                200,
                Body::from(dmr),
                "application/vnd.opendap.dap4.dataset-metadata+xml; charset=utf-8",
            );
        }
        Some(Err(e)) => return dap4_error(&e),
        None => return failed(&s.ds.name),
    };
    let checksums = plan.checksums;
    let length = plan.length;
    let encode = |state: Arc<AppState>, s: Arc<Served>, v: dap4::D4Var| async move {
        state
            .run_for(&s.ds, move || {
                let mut out = Vec::new();
                dap4::encode_values(&v, &mut out).map(|()| out)
            })
            .await
    };
    let mut pieces = plan.pieces.into_iter();
    // the pieces up to the first values are made before answering, so a source that cannot
    // be read now gets its error status
    let mut first: Vec<(dap4::D4Piece, Option<Vec<u8>>)> = Vec::new();
    for p in pieces.by_ref() {
        match p {
            dap4::D4Piece::Literal(_) => first.push((p, None)),
            dap4::D4Piece::Values { ref var, .. } => {
                match encode(state.clone(), s.clone(), var.clone()).await {
                    Some(Ok(b)) => first.push((p, Some(b))),
                    Some(Err(e)) => return dap4_error(&e),
                    None => return failed(&s.ds.name),
                }
                break;
            }
        }
    }
    let name = s.ds.name.clone();
    let rest = stream::iter(pieces)
        .map(move |p| {
            let (state, s, name) = (state.clone(), s.clone(), name.clone());
            async move {
                match p {
                    dap4::D4Piece::Literal(_) => Ok((p, None)),
                    dap4::D4Piece::Values { ref var, .. } => match encode(state, s, var.clone()).await {
                        Some(Ok(b)) => Ok((p, Some(b))),
                        Some(Err(e)) => {
                            tracing::warn!(dataset = %name, error = %e.message, "opendap .dap cut short");
                            Err(e)
                        }
                        None => Err(DapError {
                            status: 500,
                            message: format!(
                                "dataset '{name}': opendap encoding failed (bug; see server log)"
                            ),
                        }),
                    },
                }
            }
        })
        .buffered(2);
    // framing and checksums, in order
    let mut crc = crc32fast::Hasher::new();
    let body = stream::iter(first.into_iter().map(Ok::<_, DapError>))
        .chain(rest)
        .map(
            move |r: Result<(dap4::D4Piece, Option<Vec<u8>>), DapError>| -> Result<Vec<Bytes>, DapError> {
                let (p, values) = r?;
                Ok(match (p, values) {
                    (dap4::D4Piece::Literal(b), _) => vec![Bytes::from(b)],
                    (dap4::D4Piece::Values { last, .. }, Some(v)) => {
                        if checksums {
                            crc.update(&v);
                        }
                        // each chunk's header, then its values as a slice of the piece (not
                        // copied; the buffer goes back to the pool once all are sent)
                        let v = Bytes::from_owner(opendap::pool::Recycled(v));
                        let mut out = Vec::new();
                        let mut at = 0;
                        while at < v.len() {
                            let n = dap4::MAX_CHUNK.min(v.len() - at);
                            let header = dap4::chunk_header(dap4::LITTLE_ENDIAN_CHUNK, n);
                            out.push(Bytes::copy_from_slice(&header));
                            out.push(v.slice(at..at + n));
                            at += n;
                        }
                        if last && checksums {
                            let sum = std::mem::take(&mut crc).finalize();
                            let mut b = Vec::new();
                            dap4::frame(&sum.to_le_bytes(), &mut b);
                            out.push(Bytes::from(b));
                        }
                        out
                    }
                    (dap4::D4Piece::Values { .. }, None) => Vec::new(),
                })
            },
        )
        // a failure after the headers: the error chunk (netCDF-C reports it), then the body
        // ends short, so no client takes what came as the whole answer. hyper drops what it
        // has buffered when a body fails, so the failure waits a moment: while the body is
        // pending, hyper flushes the error chunk to the socket.
        .flat_map(|r| match r {
            Ok(b) => stream::iter(b.into_iter().map(Ok)).boxed(),
            Err(e) => stream::iter([Ok(Bytes::from(dap4::error_chunk(&e)))])
                .chain(stream::once(async move {
                    tokio::time::sleep(ERROR_CHUNK_FLUSH).await;
                    Err(std::io::Error::other(e.message))
                }))
                .boxed(),
        });
    let mut r = dap4_response(200, Body::from_stream(body), "application/vnd.opendap.dap4.data");
    if let Some(n) = length {
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    r
}

/// The constraint as a canonical `dap4.ce` text (recorded in the DMR), `None` when empty.
fn constraint_text(clauses: &[dap4::Clause]) -> Option<String> {
    if clauses.is_empty() {
        return None;
    }
    let one = |c: &dap4::Clause| {
        let sl: String = c
            .slices
            .iter()
            .map(|s| match s.stop {
                Some(b) => format!("[{}:{}:{b}]", s.start, s.stride),
                None => format!("[{}:{}:]", s.start, s.stride),
            })
            .collect();
        format!("/{}{sl}", c.var)
    };
    Some(clauses.iter().map(one).collect::<Vec<_>>().join(";"))
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
         <code>.dods</code>, <code>.ascii</code>, with a constraint such as <code>?var[0:1:3][0][0]</code>. \
         DAP4: <a href=\"opendap.dmr\">.dmr</a> and <code>.dap</code> (<code>dap4://</code> URLs in netCDF-C and pydap), \
         with <code>?dap4.ce=/var[0:1:3][0][0]</code> and <code>dap4.checksum=true</code>.</p>\n\
         <h2>DDS</h2><pre>{}</pre>\n<h2>DAS</h2><pre>{}</pre>\n</body></html>\n",
        html_escape(dds),
        html_escape(das),
        n = html_escape(name),
    )
}
