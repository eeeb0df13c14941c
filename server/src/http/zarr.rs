//! `/datasets/{id}/zarr/{key}`: metadata documents and chunks, Zarr v2 and v3.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;
use crate::codec::{Encoding, ZSTD_LEVEL, encode, encode_stored, vlen_utf8};
use crate::dataset::Variable;
use crate::dtype::DType;
use crate::pipeline::{
    check_chunk_sources, describe, estimate_chunk_bytes, is_computed, raw_chunk, read_chunk_strings,
};
use crate::state::chunk_cache::{CacheKey, Computed, Failed};
use crate::state::{AppState, Entry, Served};
use crate::storage::read::check_unchanged;
use crate::zarr::key::{ChunkKey, Format, KeyError, parse_chunk_key};

/// Metadata may change when files are re-indexed; chunks are immutable for a given ETag.
pub(super) const CACHE_META: &str = "public, max-age=60";
const CACHE_CHUNK: &str = "public, max-age=3600";

/// Resolves a dataset id to a served dataset, or the error to answer: 503 for a dataset
/// that failed to open, and for one still opening with `Retry-After` (its state and how long
/// it has been opening in the body). Never 404 for a configured dataset: a Zarr client reads
/// a 404 as a chunk never written, that is fill values.
pub fn served(state: &AppState, id: &str) -> Result<Arc<Served>, ApiError> {
    match state.entry(id) {
        Some(Entry::Ready(s)) => Ok(s),
        Some(Entry::Failed(reason)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("dataset '{id}' failed to open: {reason}"),
        )
        .detail(json!({"dataset": id, "state": "failed"}))),
        Some(Entry::Opening(o)) => {
            let secs = o.seconds();
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "dataset '{id}' is still opening ({}, for {secs} s so far); ask again later",
                    o.waiting_for
                ),
            )
            .retry_after(o.retry_after_now())
            .detail(json!({"dataset": id, "state": "opening", "since_seconds": secs}))
            // a state, not a fault: `/status` tells it, and every waiting client would log it
            .quiet())
        }
        // Ids are single URL segments of a conservative alphabet (as configured names are);
        // anything else (`..`, `a/b` from `a%2Fb`, control characters) is a malformed request.
        None => match cloudify_crds::validate_name(id) {
            Ok(()) => Err(ApiError::not_found(format!("no dataset '{id}'"))),
            Err(why) => Err(ApiError::bad_request(format!("invalid dataset id: {why}"))),
        },
    }
}

/// The dataset fingerprint covers every source's identity (path or URL, size, mtime or
/// last-modified, and the ETag of objects), so a replaced object changes every ETag.
pub(super) fn etag(s: &Served, key: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    format!("\"{:016x}{:016x}\"", s.ds.fingerprint, h.finish())
}

fn hash_str(v: &str) -> u64 {
    hash_bytes(v.as_bytes())
}

fn hash_bytes(v: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// `If-None-Match` uses weak comparison (RFC 9110 §13.1.2): proxies that compress mark
/// ETags weak (`W/"..."`) and clients send those back.
pub(super) fn not_modified(headers: &HeaderMap, tag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .map(str::trim)
                .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == tag)
        })
}

pub(super) fn respond(body: Body, tag: &str, cache: &'static str, ctype: &'static str) -> Response {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(v) = HeaderValue::from_str(tag) {
        h.insert(header::ETAG, v);
    }
    r
}

pub(super) fn not_modified_response(tag: &str, cache: &'static str) -> Response {
    let mut r = respond(Body::empty(), tag, cache, "application/octet-stream");
    *r.status_mut() = StatusCode::NOT_MODIFIED;
    r
}

/// `/datasets/{id}/zarr`: a hint for people who open the prefix in a browser.
pub async fn zarr_root(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let s = served(&state, &id)?;
    let vars: Vec<String> =
        s.ds.root
            .walk()
            .iter()
            .flat_map(|g| g.vars.iter().map(|v| v.path.clone()))
            .collect();
    Ok(axum::Json(serde_json::json!({
        "dataset": id,
        "zarr_v2": ".zmetadata",
        "zarr_v3": "zarr.json",
        "arrays": vars,
    }))
    .into_response())
}

/// `/datasets/{id}/zarr/{key}`.
pub async fn zarr_key(
    State(state): State<Arc<AppState>>,
    Path((id, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let s = served(&state, &id)?;
    serve_key(&state, s, &id, &key, &headers).await
}

/// A Zarr key of a served dataset (configured, a view, or an ad-hoc product); `id` names it
/// in messages.
pub async fn serve_key(
    state: &AppState,
    s: Arc<Served>,
    id: &str,
    key: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    // trace span of the dataset's part of the request (DEBUG: none with traces off)
    let span = tracing::debug_span!(
        "dataset",
        dataset = id,
        key,
        compute_cache_hit = tracing::field::Empty,
        bytes = tracing::field::Empty,
    );
    let answer =
        tracing::Instrument::instrument(serve_key_in(state, s, id, key, headers), span.clone()).await;
    if let Ok(r) = &answer
        && let Some(n) = axum::body::HttpBody::size_hint(r.body()).exact()
    {
        span.record("bytes", n);
    }
    answer
}

async fn serve_key_in(
    state: &AppState,
    s: Arc<Served>,
    id: &str,
    key: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let (id, key) = (id.to_string(), key.to_string());
    let headers = headers.clone();
    if let Some(doc) = s.meta.docs.get(&key) {
        state
            .metrics
            .requests
            .with_label_values(&["metadata", "200"])
            .inc();
        // tagged by content too: other processing of the same files is other metadata
        let tag = etag(&s, &format!("{key}\0{:016x}", hash_bytes(doc)));
        if not_modified(&headers, &tag) {
            return Ok(not_modified_response(&tag, CACHE_META));
        }
        return Ok(respond(
            Body::from(doc.clone()),
            &tag,
            CACHE_META,
            "application/json",
        ));
    }
    let ck =
        parse_chunk_key(&key, s.key_limits, |p| s.ds.variable(p).map(|v| v.shape.len())).map_err(|e| {
            let e = ApiError::from(e);
            state
                .metrics
                .requests
                .with_label_values(&["chunk", e.status.as_str()])
                .inc();
            e.context(format_args!("dataset '{id}'"))
        })?;
    // Computed chunks are tagged by their pipeline too: the same files served through
    // another pipeline (other keepbits, expression, grid) are other bytes.
    let var = s.ds.variable(&ck.var).cloned();
    let pipeline = var.as_deref().map_or(0, |v| hash_str(&describe(v)));
    let tag = etag(&s, &format!("{key}\0{pipeline:016x}"));
    if not_modified(&headers, &tag) {
        // Only while the chunk's files are the versions the ETag was derived from.
        if let Some(var) = s.ds.variable(&ck.var) {
            check_chunk_sources(var, &ck.index).map_err(|e| {
                let e = ApiError::from(e);
                e.context(format_args!("dataset '{id}', key '{key}'"))
            })?;
        }
        return Ok(not_modified_response(&tag, CACHE_CHUNK));
    }
    // Object-store sources are checked for changes only by reading them: their computed
    // chunks are not cached, so a replaced object is never answered from memory.
    let flight_key = var
        .as_deref()
        .and_then(|v| flight_key(&s, v, pipeline, &key, ck.format));
    let cache_key = flight_key.clone().filter(|_| state.compute_cache.enabled());
    if let (Some(ck_), Some(v)) = (&cache_key, &var)
        && let Some(bytes) = state.compute_cache.get(ck_)
    {
        // Served only while the chunk's files are the versions it was computed from; else
        // forgotten, and the read below answers what changed.
        if check_chunk_sources(v, &ck.index).is_ok() {
            tracing::Span::current().record("compute_cache_hit", true);
            state.metrics.compute_cache_hits.inc();
            state.metrics.requests.with_label_values(&["chunk", "200"]).inc();
            state.metrics.chunk_bytes.inc_by(bytes.len() as u64);
            return Ok(respond(
                Body::from(bytes),
                &tag,
                CACHE_CHUNK,
                "application/octet-stream",
            ));
        }
        state.compute_cache.remove(ck_);
    }
    if cache_key.is_some() {
        tracing::Span::current().record("compute_cache_hit", false);
        state.metrics.compute_cache_misses.inc();
    }
    let compute = compute_chunk(state, s.clone(), ck, &id, &key, cache_key);
    // Concurrent misses of one computed chunk share one computation.
    let result = match &flight_key {
        Some(k) => {
            let (result, led) = state.compute_cache.flights.run(k, compute).await;
            if !led {
                state.metrics.chunk_computation_waits.inc();
            }
            result
        }
        None => compute.await,
    };
    let code = match &result {
        Ok(_) => "200".to_string(),
        Err(e) => e.status.as_str().to_string(),
    };
    state.metrics.requests.with_label_values(&["chunk", &code]).inc();
    let bytes = result.map_err(|e| {
        let mut err = ApiError::new(e.status, e.message);
        err.retry_after = e.retry_after;
        err.detail = e.detail;
        err
    })?;
    state.metrics.chunk_bytes.inc_by(bytes.len() as u64);
    Ok(respond(
        Body::from(bytes),
        &tag,
        CACHE_CHUNK,
        "application/octet-stream",
    ))
}

/// The key under which a computed chunk is computed once and cached; `None` for stored
/// chunks and for datasets on object stores (their computed chunks are not cached, so a
/// replaced object is never answered from memory).
fn flight_key(s: &Served, var: &Variable, pipeline: u64, key: &str, format: Format) -> Option<CacheKey> {
    (!s.ds.remote && is_computed(var)).then(|| CacheKey {
        dataset: s.ds.name.clone(),
        fingerprint: s.ds.fingerprint,
        pipeline,
        key: key.to_string(),
        format,
    })
}

/// Most chunks a product may have for opening it to compute them ahead ([`warm`]).
const WARM_MAX_CHUNKS: u64 = 16;

/// A key of an ad-hoc product (`groupby`, `histogram`): served as any dataset's key, and when
/// it is the document a client reads first on opening the store (`zarr.json`, `.zmetadata`),
/// the product's chunks start computing ([`warm`]) while the client goes on opening (reads
/// its coordinates, decodes times): asking for a product is asking for its result, and the
/// computation, not the transfer, is what a client of a reduction waits for.
pub async fn serve_product_key(
    state: &Arc<AppState>,
    s: Arc<Served>,
    id: &str,
    key: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let answer = serve_key(state, s.clone(), id, key, headers).await;
    let opens = match key {
        "zarr.json" => Some(Format::V3),
        ".zmetadata" => Some(Format::V2),
        _ => None,
    };
    if let (Ok(_), Some(format)) = (&answer, opens) {
        warm(state, s, id, format);
    }
    answer
}

/// Computes the chunks of a small product ahead of their requests, in the background, into
/// the compute cache, through the same flights as requests: a request arriving meanwhile
/// waits for the computation instead of repeating it, one arriving later is a cache hit.
/// Nothing is computed ahead when the cache keeps nothing, when the product has more than
/// [`WARM_MAX_CHUNKS`] chunks or more decoded bytes than a quarter of the cache, or when
/// [`crate::state::chunk_cache::MAX_WARMING`] products are being computed ahead already. A
/// failure is not answered to anyone: the request for the chunk computes it again and
/// answers its error.
fn warm(state: &Arc<AppState>, s: Arc<Served>, id: &str, format: Format) {
    let keys = warm_keys(&s, format, WARM_MAX_CHUNKS, state.compute_cache.budget() / 4);
    if keys.is_empty() {
        return;
    }
    let Some(permit) = state.compute_cache.warm_permit() else {
        return;
    };
    let (state, id) = (state.clone(), id.to_string());
    tokio::spawn(async move {
        let _permit = permit;
        for key in keys {
            let Ok(ck) = parse_chunk_key(&key, s.key_limits, |p| s.ds.variable(p).map(|v| v.shape.len()))
            else {
                continue;
            };
            let Some(k) =
                s.ds.variable(&ck.var)
                    .and_then(|v| flight_key(&s, v, hash_str(&describe(v)), &key, ck.format))
            else {
                continue;
            };
            if state.compute_cache.get(&k).is_some() {
                continue;
            }
            state.metrics.chunk_prefetches.inc();
            let compute = compute_chunk(&state, s.clone(), ck, &id, &key, Some(k.clone()));
            let (result, _) = state.compute_cache.flights.run(&k, compute).await;
            if let Err(e) = result {
                tracing::debug!(dataset = %id, key, status = %e.status, "computing ahead failed: {}", e.message);
                // the rest would most likely fail alike (a file on tape, a limit)
                break;
            }
        }
    });
}

/// The keys of the chunks worth computing ahead when `s` is opened in `format`: every chunk
/// of its computed variables except dimension coordinates (their labels are cheap and
/// asked first), in C order; none when they number more than `max_chunks` or hold more
/// than `max_bytes` decoded (a large product is computed as its chunks are asked for).
fn warm_keys(s: &Served, format: Format, max_chunks: u64, max_bytes: u64) -> Vec<String> {
    let mut keys = Vec::new();
    let mut bytes = 0u64;
    for g in s.ds.root.walk() {
        for v in &g.vars {
            if !is_computed(v) || (v.dims.len() == 1 && v.dims[0] == v.name) {
                continue;
            }
            let grid: Vec<u64> = v
                .shape
                .iter()
                .zip(&v.chunks)
                .map(|(n, c)| n.div_ceil((*c).max(1)))
                .collect();
            let n = grid.iter().try_fold(1u64, |a, g| a.checked_mul(*g));
            let per_chunk = v
                .chunks
                .iter()
                .try_fold(v.dtype.size() as u64, |a, c| a.checked_mul(*c));
            let (Some(n), Some(per_chunk)) = (n, per_chunk) else {
                return Vec::new();
            };
            bytes = bytes.saturating_add(n.saturating_mul(per_chunk));
            if keys.len() as u64 + n > max_chunks || bytes > max_bytes {
                return Vec::new();
            }
            let mut index = vec![0u64; grid.len()];
            for _ in 0..n {
                keys.push(crate::zarr::key::chunk_key(&v.path, &index, format));
                // the next index in C order
                for d in (0..index.len()).rev() {
                    index[d] += 1;
                    if index[d] < grid[d] {
                        break;
                    }
                    index[d] = 0;
                }
            }
        }
    }
    keys
}

/// Computes one chunk on the worker pool and keeps it under `cache_key` (if any). Runs once
/// for all concurrent requests of the chunk ([`crate::state::chunk_cache::Flights`]), so it
/// first looks again in the cache: a computation that just finished is not repeated.
async fn compute_chunk(
    state: &AppState,
    s: Arc<Served>,
    ck: ChunkKey,
    id: &str,
    key: &str,
    cache_key: Option<CacheKey>,
) -> Computed {
    if let Some(k) = &cache_key
        && let Some(bytes) = state.compute_cache.get(k)
    {
        return Ok(bytes);
    }
    let failed = |e: ApiError| Failed {
        status: e.status,
        message: format!("dataset '{id}', key '{key}': {}", e.message),
        // a busy or unreachable compute service, or a file still on tape, will pass: say
        // when to come back, and what the archive said
        retry_after: e.retry_after,
        detail: e.detail,
    };
    let t0 = Instant::now();
    let s2 = s.clone();
    let limit = state.max_source_bytes;
    if is_computed_key(&s, &ck) {
        state.metrics.chunk_computations.inc();
    }
    // compute workers rebuild configured datasets and views by id; ad-hoc products are
    // computed here (their reductions still send partials out)
    let at = matches!(state.entry(&s.ds.name), Some(Entry::Ready(_)))
        .then(|| crate::processing::exec::Locator::Dataset(s.ds.name.clone()));
    let result = state
        .run_for(&s.ds, move || chunk_bytes(&s2, &ck, limit, at.as_ref()))
        .await
        .ok_or_else(|| Failed {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!(
                "dataset '{id}', key '{key}': internal error while reading the chunk (see server log)"
            ),
            retry_after: None,
            detail: None,
        })?;
    let bytes = result.map_err(|e| {
        if e.status == StatusCode::PAYLOAD_TOO_LARGE {
            state.metrics.source_bytes_refused.inc();
        }
        failed(e)
    })?;
    state.metrics.chunk_seconds.observe(t0.elapsed().as_secs_f64());
    let bytes = bytes::Bytes::from(bytes);
    if let Some(k) = cache_key {
        let evicted = state.compute_cache.insert(k, bytes.clone());
        state.metrics.compute_cache_evictions.inc_by(evicted);
        state
            .metrics
            .compute_cache_bytes
            .set(state.compute_cache.bytes() as i64);
        state
            .metrics
            .compute_cache_entries
            .set(state.compute_cache.len() as i64);
    }
    Ok(bytes)
}

/// Whether the key names a computed variable (counted in `cloudify_chunk_computations_total`).
fn is_computed_key(s: &Served, ck: &ChunkKey) -> bool {
    s.ds.variable(&ck.var).is_some_and(|v| is_computed(v))
}

/// Encoded bytes of one chunk. Runs on the worker pool. A computed chunk estimated to read
/// more than `limit` bytes of source data (0: no limit) is refused before anything is read.
fn chunk_bytes(
    s: &Served,
    ck: &ChunkKey,
    limit: u64,
    at: Option<&crate::processing::exec::Locator>,
) -> Result<Vec<u8>, ApiError> {
    let span = tracing::debug_span!(
        "chunk.read",
        var = %ck.var,
        passthrough = tracing::field::Empty,
        bytes = tracing::field::Empty,
    );
    let _in = span.enter();
    let out = chunk_bytes_in(s, ck, limit, at, &span);
    if let Ok(b) = &out {
        span.record("bytes", b.len());
    }
    out
}

/// [`chunk_bytes`] inside its span (`span` gets whether the stored bytes passed through).
fn chunk_bytes_in(
    s: &Served,
    ck: &ChunkKey,
    limit: u64,
    at: Option<&crate::processing::exec::Locator>,
    span: &tracing::Span,
) -> Result<Vec<u8>, ApiError> {
    let var: &Variable =
        s.ds.variable(&ck.var)
            .ok_or_else(|| ApiError::not_found(format!("no variable '{}'", ck.var)))?;
    if limit > 0 && is_computed(var) {
        let estimate = estimate_chunk_bytes(var, &ck.index)?;
        if estimate > limit {
            return Err(too_much_source(estimate, limit));
        }
    }
    let zstd = Encoding::Zstd(ZSTD_LEVEL);
    if var.dtype == DType::Str {
        let strings = read_chunk_strings(var, &ck.index)?;
        return encode(&vlen_utf8(&strings), &zstd).map_err(|e| encode_error(&e));
    }
    let encoding = s
        .meta
        .encodings
        .get(&var.path)
        .cloned()
        .unwrap_or_else(|| crate::zarr::encoding::choose(var));
    let enc = match ck.format {
        Format::V2 => &encoding.v2,
        Format::V3 => &encoding.v3,
    };
    if encoding.passthrough
        && let Some(stored) = raw_chunk(var, &ck.index)?
    {
        let nbytes = crate::chunk::read::buffer_len(&var.chunks, var.dtype.size())?;
        if let Some(out) =
            tracing::debug_span!("encode", stored = true).in_scope(|| encode_stored(stored, nbytes, enc))
        {
            span.record("passthrough", true);
            return Ok(out);
        }
    }
    span.record("passthrough", false);
    let decoded = crate::processing::dispatch::read_chunk(at, var, &ck.index)?;
    tracing::debug_span!("encode", stored = false, decoded_bytes = decoded.len())
        .in_scope(|| encode(&decoded, enc))
        .map_err(|e| encode_error(&e))
}

/// 413 for a computation that would read more source data than `--max-source-bytes`.
pub(super) fn too_much_source(estimate: u64, limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "computing this would read about {estimate} bytes of source data; the limit is {limit} (--max-source-bytes)"
        ),
    )
}

/// A chunk that could be read but not encoded for the client: a server error.
fn encode_error(e: &crate::codec::CodecError) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("cannot encode the chunk: {e}"),
    )
}

/// `/datasets/{id}/kerchunk/{key}`: Zarr v2 whose chunks are the stored bytes, unchanged.
pub async fn kerchunk_key(
    State(state): State<Arc<AppState>>,
    Path((id, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    use crate::kerchunk::RefValue;
    let s = served(&state, &id)?;
    let tag = etag(&s, &format!("kerchunk/{key}"));
    if key == ".zmetadata" {
        if not_modified(&headers, &tag) {
            return Ok(not_modified_response(&tag, CACHE_META));
        }
        return Ok(respond(
            Body::from(s.refs.zmetadata()),
            &tag,
            CACHE_META,
            "application/json",
        ));
    }
    let Some(value) = s.refs.entries.get(&key) else {
        return Err(kerchunk_missing(&s, &id, &key));
    };
    if not_modified(&headers, &tag) {
        // Only while the referenced file is the version the ETag was derived from.
        if let RefValue::Range { file, .. } | RefValue::File { file } = value
            && let Some(src) = s.refs.sources.get(*file)
        {
            check_unchanged(src).map_err(ApiError::from)?;
        }
        return Ok(not_modified_response(&tag, CACHE_CHUNK));
    }
    match value {
        RefValue::Json(doc) => Ok(respond(
            Body::from(doc.clone()),
            &tag,
            CACHE_META,
            "application/json",
        )),
        RefValue::Inline(b) => Ok(respond(
            Body::from(b.clone()),
            &tag,
            CACHE_CHUNK,
            "application/octet-stream",
        )),
        RefValue::Range { .. } | RefValue::File { .. } => {
            let (file, range) = match value {
                RefValue::Range { file, offset, size } => (*file, Some((*offset, *size))),
                RefValue::File { file } => (*file, None),
                _ => (usize::MAX, None),
            };
            let Some(src) = s.refs.sources.get(file).cloned() else {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("dataset '{id}': reference '{key}' names no source file"),
                ));
            };
            let bytes = state
                .run_for(&s.ds, move || {
                    // the stored bytes as they are (DEBUG span: none with traces off)
                    let span = tracing::debug_span!(
                        "chunk.read",
                        dataset = %id,
                        key = %key,
                        passthrough = true,
                        bytes = tracing::field::Empty
                    );
                    let _in = span.enter();
                    let r = match range {
                        Some((offset, size)) => crate::storage::read::read_at(&src, offset, size),
                        // Whole-file references (Zarr store chunks, `[url]` references).
                        None => crate::storage::read::read_source_whole(&src),
                    };
                    if let Ok(b) = &r {
                        span.record("bytes", b.len());
                    }
                    r
                })
                .await
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal error (see server log)",
                    )
                })?
                .map_err(ApiError::from)?;
            state
                .metrics
                .requests
                .with_label_values(&["kerchunk", "200"])
                .inc();
            Ok(respond(
                Body::from(bytes),
                &tag,
                CACHE_CHUNK,
                "application/octet-stream",
            ))
        }
    }
}

/// The answer for a key `/kerchunk` holds no reference for. Like `/zarr`: 400 for what is no
/// chunk key of a referenced array (malformed, a v3 spelling on this v2 store, an index
/// outside the chunk grid), since a Zarr client reads 404 as "fill value"; 404 for a chunk
/// inside the grid that was never written (it does read as the fill value), for metadata
/// document names, and for keys that name no array.
fn kerchunk_missing(s: &Served, id: &str, key: &str) -> ApiError {
    use crate::kerchunk::RefValue;
    let zarray = |var: &str| match s.refs.entries.get(&format!("{var}/.zarray")) {
        Some(RefValue::Json(doc)) => serde_json::from_str::<serde_json::Value>(doc).ok(),
        _ => None,
    };
    let last = key.rsplit('/').next().unwrap_or(key);
    let metadata_name = last.starts_with('.') || last == "zarr.json";
    let parsed = if metadata_name {
        Err(KeyError::NotFound(String::new()))
    } else {
        parse_chunk_key(key, s.key_limits, |var| {
            zarray(var)?.get("shape")?.as_array().map(Vec::len)
        })
    };
    match parsed {
        Ok(ck) if ck.format == Format::V3 => ApiError::bad_request(format!(
            "dataset '{id}': malformed chunk key '{key}': /kerchunk is a Zarr v2 store, its chunk keys are '{}/i.j.k'",
            ck.var
        )),
        Ok(ck) => {
            let grid = zarray(&ck.var)
                .and_then(|za| crate::kerchunk::parquet::chunk_grid(&za))
                .unwrap_or_default();
            // 0-d arrays: one chunk, `var/0` (parsed as no index)
            let inside = ck.index.is_empty()
                || (ck.index.len() == grid.len() && ck.index.iter().zip(&grid).all(|(i, n)| i < n));
            if inside {
                ApiError::not_found(format!(
                    "dataset '{id}': chunk '{key}' is not stored (it reads as the fill value)"
                ))
            } else {
                ApiError::bad_request(format!(
                    "dataset '{id}': chunk key '{key}': chunk index {:?} is outside the chunk grid {grid:?}",
                    ck.index
                ))
            }
        }
        Err(KeyError::BadRequest(m)) => ApiError::bad_request(format!("dataset '{id}': {m}")),
        Err(KeyError::NotFound(_)) => {
            let var = key.rsplit_once('/').map(|(v, _)| v).unwrap_or_default();
            if let Some((_, why)) = s
                .refs
                .skipped
                .iter()
                .find(|(v, _)| key.starts_with(&format!("{v}/")))
            {
                ApiError::not_found(format!(
                    "dataset '{id}': '{var}' is not available on /kerchunk: {why}; use /zarr"
                ))
            } else {
                ApiError::not_found(format!("dataset '{id}': no such key '{key}'"))
            }
        }
    }
}

/// `/datasets/{id}/kerchunk.json`: the references themselves (fsspec `reference://`).
pub async fn kerchunk_refs(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let s = served(&state, &id)?;
    let tag = etag(&s, "kerchunk.json");
    if not_modified(&headers, &tag) {
        return Ok(not_modified_response(&tag, CACHE_META));
    }
    Ok(respond(
        Body::from(s.refs.to_json()),
        &tag,
        CACHE_META,
        "application/json",
    ))
}
