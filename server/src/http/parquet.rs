//! `/datasets/{id}/kerchunk.parq/{path}`: the references as a kerchunk Parquet directory
//! kept in the index cache. Whether it can be served, and its writing in the background,
//! is `crate::state::parquet`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::error::ApiError;
use super::zarr::{CACHE_META, etag, not_modified, not_modified_response, respond, served};
use crate::state::AppState;
use crate::state::parquet::{Availability, availability};

/// Whether `path` names a file of a kerchunk Parquet reference directory: `.zmetadata` or
/// `{array path}/refs.{n}.parq`, nothing else (and no `..`), so the route cannot be used to
/// read other files of the cache.
fn parquet_member(path: &str) -> bool {
    if path == ".zmetadata" {
        return true;
    }
    let Some((field, file)) = path.rsplit_once('/') else {
        return false;
    };
    let record_ok = file
        .strip_prefix("refs.")
        .and_then(|r| r.strip_suffix(".parq"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    record_ok
        && field
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != ".." && !seg.contains('\\'))
}

/// `/datasets/{id}/kerchunk.parq/{path}`: the references as a kerchunk Parquet directory
/// (fsspec's `LazyReferenceMapper` layout), for clients of very large datasets that should
/// not parse one huge JSON document: `fsspec.filesystem("reference", fo=".../kerchunk.parq")`.
/// Files are read whole (records are small) and served like the other keys: ETag,
/// `If-None-Match`, and byte ranges through the range layer, as fsspec's HTTP files read
/// Parquet with range requests.
pub async fn kerchunk_parquet(
    State(state): State<Arc<AppState>>,
    UrlPath((id, path)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let s = served(&state, &id)?;
    if s.refs_parquet.is_none() {
        return Err(ApiError::not_found(format!(
            "dataset '{id}': Parquet references are kept in the index cache, which this server runs without (--no-cache); use kerchunk.json"
        )));
    }
    if !parquet_member(&path) {
        return Err(ApiError::not_found(format!(
            "dataset '{id}': no such Parquet reference file '{path}'"
        )));
    }
    let unavailable = |a: Availability| {
        match a {
        Availability::Ready => None,
        Availability::Writing => Some(
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("dataset '{id}': the Parquet references are being written; retry shortly"),
            )
            .quiet()
            .retry_after(1),
        ),
        Availability::Unavailable(reason, secs) => Some(
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "dataset '{id}': Parquet references are unavailable: {reason}; use kerchunk.json (writing is tried again in {secs} s)"
                ),
            )
            .quiet()
            .retry_after(secs),
        ),
    }
    };
    if let Some(e) = availability(&s).and_then(unavailable) {
        return Err(e);
    }
    let Some(dir) = s.refs_parquet.as_ref().map(|p| p.dir.clone()) else {
        return Err(ApiError::not_found(format!(
            "dataset '{id}': no Parquet references"
        )));
    };
    let tag = etag(&s, &format!("kerchunk.parq/{path}"));
    if not_modified(&headers, &tag) {
        return Ok(not_modified_response(&tag, CACHE_META));
    }
    let file = dir.join(&path);
    match tokio::fs::read(&file).await {
        Ok(bytes) => Ok(respond(
            Body::from(bytes),
            &tag,
            CACHE_META,
            "application/octet-stream",
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // the whole directory vanished since it was checked: written again
            if let Some(e) = availability(&s).and_then(unavailable) {
                return Err(e);
            }
            Err(ApiError::not_found(format!(
                "dataset '{id}': no such Parquet reference file '{path}'"
            )))
        }
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "dataset '{id}': reading Parquet reference file {}: {e}",
                file.display()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::parquet_member;

    #[test]
    fn only_reference_files_are_served() {
        assert!(parquet_member(".zmetadata"));
        assert!(parquet_member("tas/refs.0.parq"));
        assert!(parquet_member("grp/tas/refs.12.parq"));
        for bad in [
            "../index/x.json",
            "tas/../../x/refs.0.parq",
            "tas/refs.x.parq",
            "tas/refs..parq",
            "refs.0.parq",
            "/tas/refs.0.parq",
            "tas/data.bin",
            "tas/.zarray",
        ] {
            assert!(!parquet_member(bad), "{bad}");
        }
    }
}
