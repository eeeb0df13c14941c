//! The OpenAPI document of `cloudify catalog` (served at `/api`, the STAC API
//! `service-desc`).
//!
//! Written out like the server's (`crate::http::openapi`): the routes are few and stable. It
//! says what clients and checkers (schemathesis, `e2e/pytests/test_catalog_contract.py`) need:
//! every path parameter with the id rule the catalog enforces, request bodies, the bearer token
//! of transactions, and every answer with its schema — errors included, all in the STAC API
//! error shape `{"code", "description"}`.

use serde_json::{Map, Value, json};

use super::MAX_URI_BYTES;
use crate::http::middleware::MAX_HEADER_BYTES;

/// The id rule of `store::check_id`: 1-256 characters without '/', '?', '#', '%' or control
/// characters, and not `.` or `..` (spelled without look-ahead, which not every JSON Schema
/// implementation has).
const ID_PATTERN: &str = concat!(
    r"^(?:[^/?#%\x00-\x1f\x7f-\x9f.][^/?#%\x00-\x1f\x7f-\x9f]*",
    r"|\.[^/?#%\x00-\x1f\x7f-\x9f.][^/?#%\x00-\x1f\x7f-\x9f]*",
    r"|\.\.[^/?#%\x00-\x1f\x7f-\x9f]+)$"
);

fn error(description: &str) -> Value {
    json!({"description": description,
           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn ok(description: &str, content_type: &str, schema: &str) -> Value {
    json!({"description": description,
           "content": {content_type: {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn id_param(name: &str, what: &str) -> Value {
    json!({"name": name, "in": "path", "required": true,
           "schema": {"type": "string", "minLength": 1, "maxLength": 256, "pattern": ID_PATTERN},
           "description": format!("{what} id: 1-256 characters without '/', '?', '#', '%' or control characters, not '.' or '..' and at most 250 bytes once percent-encoded (anything else is 400)")})
}

fn query(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "schema": {"type": "string"},
           "description": description})
}

/// The query parameters of item searches (`/search`, and the items of a collection).
fn search_params(all: bool) -> Vec<Value> {
    let mut p = vec![
        query(
            "limit",
            "Items per page, 1-10000 (default 10; larger values are capped). Not an integer: 400",
        ),
        query(
            "bbox",
            "minx,miny,maxx,maxy (or 6 numbers with heights), WGS84 degrees. Malformed: 400",
        ),
        query(
            "datetime",
            "An RFC 3339 datetime, or an interval start/end with '..' for an open end. Malformed: 400",
        ),
        query(
            "filter",
            "CQL2 filter (cql2-text, or cql2-json with filter-lang=cql2-json). Nested more than 32 levels, \
             more than 1024 operators, unknown functions or wrong argument counts: 400",
        ),
        json!({"name": "filter-lang", "in": "query", "required": false,
               "schema": {"type": "string", "enum": ["cql2-text", "cql2-json"]},
               "description": "Encoding of filter (default cql2-text)"}),
        query("skip", "Items to skip (paging links set it)"),
    ];
    if all {
        p.push(query("ids", "Comma-separated item ids"));
        p.push(query("collections", "Comma-separated collection ids"));
        p.push(query(
            "intersects",
            "A GeoJSON geometry (JSON); not together with bbox. Invalid: 400",
        ));
    }
    p
}

fn body(schema: &str, description: &str) -> Value {
    json!({"required": true, "description": description,
           "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

/// The answers of a transaction besides its success.
fn write_errors(r: &mut Map<String, Value>, with_body: bool, exists: bool) {
    r.insert(
        "400".into(),
        error("Invalid id or document (the message names the field)"),
    );
    r.insert("401".into(), error("No bearer token"));
    r.insert(
        "403".into(),
        error("Wrong bearer token, or transactions are disabled (no --token-file)"),
    );
    r.insert("404".into(), error("No such collection or item"));
    if exists {
        r.insert("409".into(), error("The id exists already"));
    }
    if with_body {
        r.insert("413".into(), error("Body larger than --max-body"));
    }
}

fn op(summary: &str, tag: &str, responses: Map<String, Value>) -> Value {
    let mut responses = responses;
    responses.insert(
        "500".into(),
        error("The store failed (an I/O error, logged): not the client's mistake"),
    );
    // the request guards of every route (`crate::http::middleware::limits_as`)
    responses.insert(
        "414".into(),
        error(&format!("Request target longer than {MAX_URI_BYTES} bytes")),
    );
    responses.insert(
        "431".into(),
        error(&format!("Request headers larger than {MAX_HEADER_BYTES} bytes")),
    );
    json!({"summary": summary, "tags": [tag], "responses": responses})
}

fn map(entries: Vec<(&str, Value)>) -> Map<String, Value> {
    entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// A transaction: bearer token, optional body, its success answer and errors.
fn write_op(
    summary: &str,
    success: (&str, Value),
    body_schema: Option<(&str, &str)>,
    exists: bool,
    params: Vec<Value>,
) -> Value {
    let mut r = map(vec![success]);
    write_errors(&mut r, body_schema.is_some(), exists);
    let mut o = op(summary, "transactions", r);
    o["security"] = json!([{"bearer": []}]);
    if !params.is_empty() {
        o["parameters"] = json!(params);
    }
    if let Some((schema, desc)) = body_schema {
        o["requestBody"] = body(schema, desc);
    }
    o
}

fn schemas() -> Value {
    let link = json!({"type": "object", "required": ["href", "rel"],
        "properties": {"href": {"type": "string"}, "rel": {"type": "string"}, "type": {"type": "string"},
                       "title": {"type": "string"}, "method": {"type": "string"}}});
    let links = json!({"type": "array", "items": {"$ref": "#/components/schemas/Link"}});
    let id = json!({"type": "string", "minLength": 1, "maxLength": 256, "pattern": ID_PATTERN});
    json!({
        "Error": {"type": "object", "required": ["code", "description"],
            "properties": {"code": {"type": "string", "description": "The status, e.g. NotFound"},
                           "description": {"type": "string", "description": "What was wrong"}}},
        "Link": link,
        "LandingPage": {"type": "object", "required": ["id", "links", "conformsTo"],
            "properties": {"id": {"type": "string"}, "title": {"type": "string"}, "description": {"type": "string"},
                           "links": links, "conformsTo": {"type": "array", "items": {"type": "string"}}}},
        "Conformance": {"type": "object", "required": ["conformsTo"],
            "properties": {"conformsTo": {"type": "array", "items": {"type": "string"}}}},
        "Collection": {"type": "object",
            "required": ["type", "stac_version", "id", "description", "license", "extent", "links"],
            "properties": {"type": {"type": "string", "enum": ["Collection"]}, "stac_version": {"type": "string"},
                           "id": {"type": "string"}, "title": {"type": "string"}, "description": {"type": "string"},
                           "license": {"type": "string"}, "extent": {"type": "object"}, "links": links}},
        "Collections": {"type": "object", "required": ["collections", "links"],
            "properties": {"collections": {"type": "array", "items": {"$ref": "#/components/schemas/Collection"}},
                           "links": links}},
        "Item": {"type": "object", "required": ["type", "stac_version", "id", "geometry", "properties", "links", "assets"],
            "properties": {"type": {"type": "string", "enum": ["Feature"]}, "stac_version": {"type": "string"},
                           "id": {"type": "string"}, "collection": {"type": "string"},
                           "geometry": {"type": "object", "nullable": true},
                           "bbox": {"type": "array", "items": {"type": "number"}},
                           "properties": {"type": "object"}, "links": links, "assets": {"type": "object"}}},
        "ItemCollection": {"type": "object", "required": ["type", "features", "links"],
            "properties": {"type": {"type": "string", "enum": ["FeatureCollection"]},
                           "features": {"type": "array", "items": {"$ref": "#/components/schemas/Item"}},
                           "links": links, "numberReturned": {"type": "integer", "minimum": 0}}},
        "CollectionInput": {"type": "object",
            "description": "A STAC Collection; extent needs spatial.bbox and temporal.interval",
            "required": ["type", "id", "description", "license", "extent"],
            "properties": {"type": {"type": "string", "enum": ["Collection"]}, "stac_version": {"type": "string"},
                           "id": id, "description": {"type": "string"},
                           "license": {"type": "string"},
                           "extent": {"type": "object", "required": ["spatial", "temporal"],
                               "properties": {
                                   "spatial": {"type": "object", "required": ["bbox"],
                                       "properties": {"bbox": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}}},
                                   "temporal": {"type": "object", "required": ["interval"],
                                       "properties": {"interval": {"type": "array", "items": {"type": "array",
                                           "items": {"type": "string", "format": "date-time", "nullable": true}}}}}}},
                           "links": {"type": "array", "items": {"type": "object"}}}},
        "ItemInput": {"type": "object",
            "description": "A STAC Item (GeoJSON Feature); bbox is required when geometry is not null, \
                            start_datetime and end_datetime when datetime is null",
            "required": ["type", "id", "geometry", "properties"],
            "properties": {"type": {"type": "string", "enum": ["Feature"]}, "stac_version": {"type": "string"},
                           "id": id, "collection": {"type": "string"},
                           "geometry": {"type": "object", "nullable": true},
                           "bbox": {"type": "array", "items": {"type": "number"}},
                           "properties": {"type": "object", "required": ["datetime"],
                               "properties": {"datetime": {"type": "string", "format": "date-time", "nullable": true}}},
                           "links": {"type": "array", "items": {"type": "object"}},
                           "assets": {"type": "object"}}},
        "MergePatch": {"type": "object", "description": "JSON merge patch (RFC 7396) of the document"},
        "SearchBody": {"type": "object",
            "description": "Item search (STAC API item-search, filter extension): the GET parameters as JSON, \
                            filter as cql2-json (or cql2-text with filter-lang)",
            "properties": {"limit": {"type": "integer", "minimum": 1},
                           "bbox": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 6},
                           "datetime": {"type": "string"},
                           "intersects": {"type": "object"},
                           "ids": {"type": "array", "items": {"type": "string"}},
                           "collections": {"type": "array", "items": {"type": "string"}},
                           "filter": {"oneOf": [{"type": "object"}, {"type": "string"}]},
                           "filter-lang": {"type": "string", "enum": ["cql2-text", "cql2-json"]}}},
    })
}

/// The OpenAPI 3.0 document; `root` is the public URL of the catalog (ends with '/').
pub fn document(root: &str) -> Value {
    let cid = || id_param("collectionId", "Collection");
    let fid = || id_param("featureId", "Item");
    let plain = |summary: &str, tag: &str, ctype: &str, schema: Option<&str>| {
        let okr = match schema {
            Some(s) => ok(summary, ctype, s),
            None => json!({"description": summary, "content": {ctype: {"schema": {"type": "string"}}}}),
        };
        json!({"get": op(summary, tag, map(vec![("200", okr)]))})
    };
    let mut paths = Map::new();
    paths.insert(
        "/".into(),
        plain("Landing page", "core", "application/json", Some("LandingPage")),
    );
    paths.insert(
        "/conformance".into(),
        plain(
            "Conformance classes",
            "core",
            "application/json",
            Some("Conformance"),
        ),
    );
    paths.insert(
        "/api".into(),
        json!({"get": op("This document", "core", map(vec![("200", json!({"description": "OpenAPI 3.0",
            "content": {"application/vnd.oai.openapi+json;version=3.0": {"schema": {"type": "object"}}}}))]))}),
    );
    paths.insert(
        "/api.html".into(),
        plain("API documentation page", "core", "text/html", None),
    );
    paths.insert(
        "/queryables".into(),
        json!({"get": op("Queryable properties (filter extension)", "search", map(vec![("200", json!({"description": "JSON Schema",
            "content": {"application/schema+json": {"schema": {"type": "object"}}}}))]))}),
    );
    paths.insert("/healthz".into(), plain("Liveness", "core", "text/plain", None));

    let mut collections = json!({"get": op("Collections", "collections",
        map(vec![("200", ok("Every collection", "application/json", "Collections"))]))});
    collections["post"] = write_op(
        "Create a collection",
        ("201", ok("Created", "application/json", "Collection")),
        Some(("CollectionInput", "The collection")),
        true,
        vec![],
    );
    paths.insert("/collections".into(), collections);

    let mut one = json!({"get": op("A collection", "collections", map(vec![
        ("200", ok("The collection", "application/json", "Collection")),
        ("400", error("Invalid collection id")),
        ("404", error("No such collection")),
    ]))});
    one["get"]["parameters"] = json!([cid()]);
    one["put"] = write_op(
        "Replace a collection",
        ("200", ok("Replaced", "application/json", "Collection")),
        Some(("CollectionInput", "The collection; its id must be the URL's")),
        false,
        vec![cid()],
    );
    one["patch"] = write_op(
        "Update a collection (JSON merge patch)",
        ("200", ok("Updated", "application/json", "Collection")),
        Some(("MergePatch", "Merge patch of the collection")),
        false,
        vec![cid()],
    );
    one["delete"] = write_op(
        "Delete a collection and its items",
        ("204", json!({"description": "Deleted"})),
        None,
        false,
        vec![cid()],
    );
    paths.insert("/collections/{collectionId}".into(), one);

    let mut items = json!({"get": op("Items of a collection (a search restricted to it)", "collections", map(vec![
        ("200", ok("A page of items", "application/geo+json", "ItemCollection")),
        ("400", error("Invalid collection id or search parameter (the message names it)")),
        ("404", error("No such collection")),
    ]))});
    let mut p = vec![cid()];
    p.extend(search_params(false));
    items["get"]["parameters"] = json!(p);
    items["post"] = write_op(
        "Add an item",
        ("201", ok("Created", "application/geo+json", "Item")),
        Some(("ItemInput", "The item (one; not a FeatureCollection)")),
        true,
        vec![cid()],
    );
    paths.insert("/collections/{collectionId}/items".into(), items);

    let mut item = json!({"get": op("An item", "collections", map(vec![
        ("200", ok("The item", "application/geo+json", "Item")),
        ("400", error("Invalid collection or item id")),
        ("404", error("No such collection or item")),
    ]))});
    item["get"]["parameters"] = json!([cid(), fid()]);
    item["put"] = write_op(
        "Replace an item",
        ("200", ok("Replaced", "application/geo+json", "Item")),
        Some(("ItemInput", "The item; its id must be the URL's")),
        false,
        vec![cid(), fid()],
    );
    item["patch"] = write_op(
        "Update an item (JSON merge patch)",
        ("200", ok("Updated", "application/geo+json", "Item")),
        Some(("MergePatch", "Merge patch of the item")),
        false,
        vec![cid(), fid()],
    );
    item["delete"] = write_op(
        "Delete an item",
        ("204", json!({"description": "Deleted"})),
        None,
        false,
        vec![cid(), fid()],
    );
    paths.insert("/collections/{collectionId}/items/{featureId}".into(), item);

    let search_answers = || {
        map(vec![
            (
                "200",
                ok("A page of items", "application/geo+json", "ItemCollection"),
            ),
            (
                "400",
                error("Invalid search parameter or filter (the message names it)"),
            ),
        ])
    };
    let mut search = json!({"get": op("Item search", "search", search_answers())});
    search["get"]["parameters"] = json!(search_params(true));
    let mut post = search_answers();
    post.insert("413".into(), error("Body larger than --max-body"));
    search["post"] = op("Item search (JSON body)", "search", post);
    // An empty POST is a search without parameters (every item, paged), as GET /search is.
    search["post"]["requestBody"] = body(
        "SearchBody",
        "The search; without a body, every item (paged), as GET /search",
    );
    search["post"]["requestBody"]["required"] = json!(false);
    paths.insert("/search".into(), search);

    json!({
        "openapi": "3.0.3",
        "info": {"title": "cloudify catalog", "version": env!("CARGO_PKG_VERSION"),
                 "description": "STAC API (core, collections, features, item search with CQL2 filter, transactions). \
                                 Every error is JSON {\"code\", \"description\"}; other methods on a path are 405 with Allow."},
        "servers": [{"url": root}],
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                "description": "The token of --token-file; required by transactions"}},
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path parameter of a path template is declared by each of its operations.
    #[test]
    fn path_parameters_are_declared() {
        let doc = document("http://catalog.test/");
        let paths = doc["paths"].as_object().expect("paths");
        assert!(paths.len() >= 10);
        for (path, ops) in paths {
            let names: Vec<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                .collect();
            for (method, op) in ops.as_object().expect("operations") {
                let declared: Vec<&str> = op["parameters"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter(|p| p["in"] == "path")
                            .filter_map(|p| p["name"].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                assert_eq!(declared, names, "{method} {path}");
                let responses = op["responses"].as_object().expect("responses");
                assert!(responses.contains_key("500"), "{method} {path}");
                assert!(
                    responses.contains_key("414") && responses.contains_key("431"),
                    "{method} {path}: request limits"
                );
                if !names.is_empty() {
                    assert!(responses.contains_key("400"), "{method} {path}: invalid ids");
                }
                if matches!(method.as_str(), "post" | "put" | "patch") {
                    assert!(op.get("requestBody").is_some(), "{method} {path}");
                }
            }
        }
    }

    /// What `check_id` accepts (the pattern of the document is checked against the running
    /// catalog by `e2e/pytests/test_catalog_contract.py`).
    #[test]
    fn check_id_rule() {
        for id in ["a", "a.b", ".a", "..a", "a..", "x y", "é"] {
            assert!(super::super::store::check_id("id", id).is_ok(), "{id}");
        }
        for id in ["", ".", "..", "a/b", "a?b", "a#b", "a%b", "a\u{1}b", "a\u{85}b"] {
            assert!(super::super::store::check_id("id", id).is_err(), "{id:?}");
        }
    }
}
