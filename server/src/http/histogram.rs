//! `/datasets/{id}/histogram/{var}`: xhistogram's histogram of a variable, computed next to
//! the data ([`crate::processing::histogram`]). The route answers JSON (edges, counts by the
//! kept dimensions); the same product is a Zarr dataset (v2 and v3) under
//! `/datasets/{id}/histogram/{var}/{params}/zarr/`, where `{params}` is the query string as
//! one path segment: Zarr clients append keys to a path and drop a query string, so the
//! parameters must live in the path. The JSON answer gives that URL in canonical form. The
//! segment is percent-decoded once, as a path is: `+` is a plus there (`bins=1e+2,…`), not
//! the space it is in a query string.
//!
//! The product is rebuilt per request (it reads only the selected coordinates; the counts
//! are computed per served chunk), so nothing is kept between requests.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::ApiError;
use super::zarr::{serve_product_key, served};
use crate::dtype::DType;
use crate::pipeline;
use crate::processing::histogram::{self, Params, Product};
use crate::state::{AppState, Served};

/// The most values (kept cells × bins) the JSON answer holds; larger products are read as
/// Zarr.
pub const MAX_JSON_VALUES: u64 = 1_000_000;

fn hist_error(id: &str, var: &str, e: &histogram::HistError) -> ApiError {
    let status = if e.missing {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::BAD_REQUEST
    };
    ApiError::new(status, format!("dataset '{id}', histogram of '{var}': {e}"))
}

fn internal(id: &str, var: &str) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("dataset '{id}': histogram of '{var}' failed (bug; see server log)"),
    )
}

/// Builds the product of the parameters `p` (parsed, or why not) on the worker pool.
async fn product(
    state: &Arc<AppState>,
    id: &str,
    var: &str,
    p: Result<Params, histogram::HistError>,
) -> Result<(Params, Product), ApiError> {
    let parent = served(state, id)?;
    let p = p.map_err(|e| hist_error(id, var, &e))?;
    let pid = format!("{id}.histogram.{var}");
    let (v, p2) = (var.to_string(), p.clone());
    let built = state
        .run_for(&parent.ds, {
            let parent = parent.clone();
            move || histogram::build(&parent.ds, &pid, &v, &p2)
        })
        .await
        .ok_or_else(|| internal(id, var))?;
    let prod = built.map_err(|e| hist_error(id, var, &e))?;
    Ok((p, prod))
}

/// Nested JSON lists of `values` with `shape` (C order).
fn nest(values: &[Value], shape: &[u64]) -> Value {
    match shape {
        [] => values.first().cloned().unwrap_or(Value::Null),
        [_] => Value::Array(values.to_vec()),
        [n, rest @ ..] => {
            let step: usize = rest.iter().map(|x| *x as usize).product();
            Value::Array(
                (0..*n as usize)
                    .map(|i| nest(&values[i * step..(i + 1) * step], rest))
                    .collect(),
            )
        }
    }
}

/// A coordinate's values as JSON numbers (or strings).
fn coord_json(v: &crate::dataset::Variable) -> Result<Value, crate::chunk::read::ReadError> {
    let b = pipeline::read_region(v, &[0], &v.shape)?;
    let to = |x: Vec<f64>| json!(x);
    let e = |e: crate::block::BlockError| crate::chunk::read::ReadError::Block(e.to_string());
    Ok(match v.dtype {
        DType::F32 => json!(b.values::<f32>().map_err(e)?),
        DType::F64 => to(b.values::<f64>().map_err(e)?),
        DType::I32 => json!(b.values::<i32>().map_err(e)?),
        DType::I64 => json!(b.values::<i64>().map_err(e)?),
        DType::I16 => json!(b.values::<i16>().map_err(e)?),
        DType::U32 => json!(b.values::<u32>().map_err(e)?),
        DType::Str => json!(crate::pipeline::read_chunk_strings(v, &[0])?),
        _ => Value::Null,
    })
}

/// `/datasets/{id}/histogram/{var}?bins=..&range=..&dim=..&density=..&{dim}=from/to`.
pub async fn summary(
    State(state): State<Arc<AppState>>,
    Path((id, var)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = query.unwrap_or_default();
    let (p, prod) = product(&state, &id, &var, Params::parse(&query)).await?;
    let nb = prod.edges.len() as u64 - 1;
    let cells: u64 = prod.kept.iter().map(|(_, n)| *n).product();
    if cells.saturating_mul(nb) > MAX_JSON_VALUES {
        return Err(ApiError::bad_request(format!(
            "dataset '{id}', histogram of '{var}': dim: {cells} kept cells × {nb} bins exceed the {MAX_JSON_VALUES} values a JSON answer holds; reduce more dimensions, select a smaller range, or read the Zarr form"
        )));
    }
    let canonical = p.canonical();
    let ds_prod = Arc::new(prod);
    let work = ds_prod.clone();
    let (id2, var2) = (id.clone(), var.clone());
    let computed = state
        .run_for(&ds_prod.ds, move || -> Result<Value, ApiError> {
            let name = format!("histogram_{var2}");
            let h = work.ds.variable(&name).ok_or_else(|| internal(&id2, &var2))?;
            let crate::dataset::Values::Derived(_) = &h.values else {
                return Err(internal(&id2, &var2));
            };
            let mut shape: Vec<u64> = work.kept.iter().map(|(_, n)| *n).collect();
            shape.push(nb);
            let block = pipeline::read_region(h, &vec![0; shape.len()], &shape).map_err(ApiError::from)?;
            let values: Vec<Value> = if h.dtype == DType::I64 {
                block
                    .values::<i64>()
                    .map_err(|_| internal(&id2, &var2))?
                    .into_iter()
                    .map(Value::from)
                    .collect()
            } else {
                block
                    .values::<f64>()
                    .map_err(|_| internal(&id2, &var2))?
                    .into_iter()
                    // JSON has no NaN: a cell without values is null
                    .map(|x| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number))
                    .collect()
            };
            let mut coords = serde_json::Map::new();
            for (d, _) in &work.kept {
                if let Some(c) = work.ds.variable(d) {
                    let mut entry = serde_json::Map::new();
                    entry.insert("values".into(), coord_json(c).map_err(ApiError::from)?);
                    for k in ["units", "calendar"] {
                        if let Some(u) = c.attrs.get_str(k) {
                            entry.insert(k.into(), json!(u));
                        }
                    }
                    coords.insert(d.clone(), Value::Object(entry));
                }
            }
            Ok(json!({"values": nest(&values, &shape), "coords": coords}))
        })
        .await
        .ok_or_else(|| internal(&id, &var))?
        .map_err(|e| {
            ApiError::new(
                e.status,
                format!("dataset '{id}', histogram of '{var}': {}", e.message),
            )
        })?;
    let mut dims: Vec<String> = ds_prod.kept.iter().map(|(d, _)| d.clone()).collect();
    dims.push(format!("{var}_bin"));
    let mut shape: Vec<u64> = ds_prod.kept.iter().map(|(_, n)| *n).collect();
    shape.push(nb);
    let field = if p.density { "density" } else { "counts" };
    let selection: serde_json::Map<String, Value> = ds_prod
        .selected
        .iter()
        .map(|(d, s, c)| (d.clone(), json!({"start": s, "count": c})))
        .collect();
    let enc = crate::processing::select::encode_segment;
    let mut out = json!({
        "dataset": id,
        "variable": var,
        "name": format!("histogram_{var}"),
        "dims": dims,
        "shape": shape,
        "bin_edges": ds_prod.edges,
        "coords": computed["coords"],
        "selection": selection,
        "zarr": format!("/datasets/{}/histogram/{}/{canonical}/zarr", enc(&id), enc(&var)),
    });
    out[field] = computed["values"].clone();
    Ok(axum::Json(out).into_response())
}

/// `/datasets/{id}/histogram/{var}/{params}/zarr/{key}`: the product as Zarr. `params`
/// comes percent-decoded once by the router and is not decoded again
/// ([`Params::parse_segment`]): `bins=1e+2,…` and `bins=1e%2B2,…` are both edges `100.0`.
pub async fn zarr_key(
    State(state): State<Arc<AppState>>,
    Path((id, var, params, key)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, prod) = product(&state, &id, &var, Params::parse_segment(&params)).await?;
    let ds = prod.ds;
    let meta = crate::zarr::render(&ds);
    let refs = crate::kerchunk::build(&ds);
    let s = Arc::new(Served::new(ds, meta, refs, None));
    serve_product_key(
        &state,
        s,
        &format!("{id}/histogram/{var}/{params}"),
        &key,
        &headers,
    )
    .await
}
