//! `/openapi.json` and `/docs`.
//!
//! The route table is small and stable, so the document is written out here rather than
//! derived through a macro framework; a unit test checks every router path appears in it.

use axum::Json;
use axum::response::Html;
use serde_json::{Value, json};

/// (path, summary, tag, content type of the 200 answer)
pub const ROUTES: &[(&str, &str, &str, &str)] = &[
    ("/", "Service information", "meta", "application/json"),
    (
        "/datasets",
        "Ids of the datasets being served",
        "meta",
        "application/json",
    ),
    (
        "/status",
        "Every configured dataset with its state (ready/failed) and the reason",
        "meta",
        "application/json",
    ),
    (
        "/datasets/{id}/",
        "Summary of a dataset (text, or HTML when asked for)",
        "dataset",
        "text/plain",
    ),
    (
        "/datasets/{id}/keys",
        "Variable names of a dataset",
        "dataset",
        "application/json",
    ),
    (
        "/datasets/{id}/dict",
        "xarray Dataset.to_dict(data=False)",
        "dataset",
        "application/json",
    ),
    (
        "/datasets/{id}/info",
        "Dimensions, variables and attributes (ncdump-like)",
        "dataset",
        "application/json",
    ),
    (
        "/datasets/{id}/zarr",
        "Zarr root: lists the arrays",
        "zarr",
        "application/json",
    ),
    (
        "/datasets/{id}/zarr/{key}",
        "Zarr v2 (.zmetadata, .zgroup, .zattrs, {var}/.zarray, {var}/0.0.0) and v3 (zarr.json, {var}/zarr.json, {var}/c/0/0/0) keys",
        "zarr",
        "application/octet-stream",
    ),
    (
        "/datasets/{id}/kerchunk/{key}",
        "Zarr v2 whose chunks are the stored bytes, unchanged (source codecs and byte order)",
        "zarr",
        "application/octet-stream",
    ),
    (
        "/datasets/{id}/kerchunk.json",
        "The dataset's chunk references (kerchunk/fsspec JSON v1)",
        "zarr",
        "application/json",
    ),
    (
        "/datasets/{id}/kerchunk.parq/{path}",
        "The same references as a kerchunk Parquet directory (.zmetadata, {var}/refs.{n}.parq), from the index cache",
        "zarr",
        "application/octet-stream",
    ),
    (
        "/versions",
        "Versions of the server and its libraries",
        "meta",
        "application/json",
    ),
    ("/openapi.json", "This document", "meta", "application/json"),
    ("/docs", "API documentation page", "meta", "text/html"),
    ("/healthz", "Liveness", "ops", "text/plain"),
    (
        "/readyz",
        "Readiness: 200 when at least one dataset serves",
        "ops",
        "application/json",
    ),
    ("/metrics", "Prometheus metrics", "ops", "text/plain"),
];

fn error_response(desc: &str) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

/// The OpenAPI 3.1 document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for (path, summary, tag, ctype) in ROUTES {
        let mut params = Vec::new();
        if path.contains("{id}") {
            params.push(json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}, "description": "Dataset id"}));
        }
        if path.contains("{key}") {
            params.push(json!({"name": "key", "in": "path", "required": true, "schema": {"type": "string"}, "description": "Zarr key, may contain '/'"}));
        }
        let mut responses = json!({"200": {"description": "OK", "content": {*ctype: {}}}});
        if path.contains("{id}") {
            responses["404"] = error_response("Unknown dataset, variable or key");
            responses["503"] = error_response("The dataset failed to open; the message says why");
        }
        if path.contains("{key}") {
            responses["304"] = json!({"description": "Not modified (If-None-Match)"});
            responses["400"] = error_response("Malformed chunk key or chunk index out of range");
            responses["500"] = error_response("The source could not be read (truncated file, bad checksum)");
        }
        let op = json!({"summary": summary, "tags": [tag], "parameters": params, "responses": responses});
        let mut item = serde_json::Map::new();
        item.insert("get".into(), op.clone());
        if path.contains("{key}") {
            item.insert("head".into(), op);
        }
        paths.insert((*path).to_string(), Value::Object(item));
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "cloudify", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Earth-System-Model output as Zarr v2 and v3 over HTTP (xpublish-compatible)."},
        "paths": paths,
        "components": {"schemas": {"Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}}},
    })
}

pub async fn spec() -> Json<Value> {
    Json(document())
}

/// A self-contained page (no CDN: HPC nodes often have no internet access).
pub async fn docs() -> Html<String> {
    let mut rows = String::new();
    for (path, summary, tag, _) in ROUTES {
        rows.push_str(&format!(
            "<tr><td><code>GET {path}</code></td><td>{tag}</td><td>{}</td></tr>",
            summary.replace('<', "&lt;")
        ));
    }
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>cloudify API</title><style>body{{font-family:sans-serif;margin:2em}}td{{padding:4px 12px;border-bottom:1px solid #ddd}}</style></head><body><h1>cloudify API</h1><p>Machine-readable: <a href=\"/openapi.json\">/openapi.json</a></p><table>{rows}</table></body></html>"
    ))
}
