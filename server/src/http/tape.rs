//! Tape-archived datasets: `POST /datasets/{id}/stage` (recall ahead of reading) and
//! `GET /datasets/{id}/locality` (which files are online, and the recall queue).

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;
use super::zarr::served;
use crate::dataset::{Dataset, Values};
use crate::source::Layout;
use crate::state::AppState;
use crate::storage::tape::Stager;

/// `?variables=a,b`: only the files these variables read (default: every file).
#[derive(Debug, serde::Deserialize)]
pub struct Selection {
    variables: Option<String>,
}

/// The archive files the dataset's variables (all, or those named) read, and the stager
/// they are recalled by; `None` for a dataset not on tape.
fn tape_files(ds: &Dataset, only: Option<&BTreeSet<String>>) -> Option<(Arc<Stager>, Vec<String>)> {
    let mut stager = None;
    let mut files = BTreeSet::new();
    for (path, v) in &ds.by_path {
        if only.is_some_and(|o| !o.contains(path)) {
            continue;
        }
        let Values::Stored { pieces, .. } = &v.values else {
            continue;
        };
        for p in pieces {
            let listed: Vec<&crate::source::SourceFile> = match &p.data.layout {
                Layout::Listed { table, .. } => table.remote.iter().flatten().map(|f| &**f).collect(),
                // values held in the index (inlined at open): nothing to recall
                Layout::Memory(_) => Vec::new(),
                // a netCDF source file on tape, read at the index's offsets
                _ => vec![&*p.data.file],
            };
            for f in listed {
                if let Some(obj) = &f.remote
                    && let Some(s) = &obj.store.tape
                {
                    stager.get_or_insert_with(|| s.clone());
                    files.insert(f.path.to_string_lossy().into_owned());
                }
            }
        }
    }
    Some((stager?, files.into_iter().collect()))
}

/// The selection as a set of variable paths; unknown names are a 400 naming them.
fn selection(ds: &Dataset, sel: &Selection) -> Result<Option<BTreeSet<String>>, ApiError> {
    let Some(list) = sel.variables.as_deref() else {
        return Ok(None);
    };
    let names: BTreeSet<String> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if let Some(bad) = names.iter().find(|n| ds.variable(n).is_none()) {
        return Err(ApiError::bad_request(format!(
            "dataset '{}': no variable '{bad}' (variables=...)",
            ds.name
        )));
    }
    Ok(Some(names))
}

/// `GET /datasets/{id}/locality`: each file online (staged) or not, its recall job, and the
/// queue.
pub async fn locality(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(sel): Query<Selection>,
) -> Result<Response, ApiError> {
    let s = served(&state, &id)?;
    // A dataset not on tape is all online: nothing to list, nothing queued.
    if tape_files(&s.ds, None).is_none() {
        return Ok(Json(json!({"dataset": id, "onTape": false, "files": [], "online": 0})).into_response());
    }
    let only = selection(&s.ds, &sel)?;
    let Some((stager, files)) = tape_files(&s.ds, only.as_ref()) else {
        return Ok(Json(json!({"dataset": id, "onTape": true, "files": [], "online": 0})).into_response());
    };
    // archiveinfo may ask the archive over the network
    let (files, queued, jobs) = tokio::task::spawn_blocking(move || {
        let (l, q, j) = stager.locality(&files);
        let usage = stager.cache_usage();
        (l, q, (j, usage))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("locality: {e}")))?;
    let (jobs, (bytes, staged, evictions, budget)) = jobs;
    let online = files.iter().filter(|f| f.state == "online").count();
    Ok(Json(json!({
        "dataset": id,
        "onTape": true,
        "files": files,
        "online": online,
        "queue": {"queued": queued, "jobsRunning": jobs},
        "cache": {"bytes": bytes, "files": staged, "evictions": evictions, "budgetBytes": budget},
    }))
    .into_response())
}

/// `POST /datasets/{id}/stage`: starts recalling the dataset's files (or those of
/// `?variables=`) without waiting; 202 with the status URL (`Location`).
pub async fn stage(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(sel): Query<Selection>,
) -> Result<Response, ApiError> {
    let s = served(&state, &id)?;
    let status = format!("/datasets/{id}/locality");
    // Nothing to recall for a dataset not on tape (or variables held inline): accepted, no-op.
    let (n, queued) = if tape_files(&s.ds, None).is_none() {
        (0, 0)
    } else {
        match tape_files(&s.ds, selection(&s.ds, &sel)?.as_ref()) {
            Some((stager, files)) => (files.len(), stager.stage(&files)),
            None => (0, 0),
        }
    };
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, status.clone())],
        Json(json!({"dataset": id, "files": n, "queued": queued, "status": status})),
    )
        .into_response())
}
