//! Integration tests of the `cloudify catalog` STAC API router: transactions and their
//! errors, search (paging, CQL2 filter, intersects) and the store surviving a re-open.

// Test helpers, like tests, fail by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use cloudify_server::stac_api::api::router;
use cloudify_server::stac_api::store::Store;
use serde_json::{Value, json};
use tower::ServiceExt;

const ROOT: &str = "http://catalog.test/";
const TOKEN: &str = "s3cret-token";

fn app_with(dir: &Path, token: Option<&str>, max_body: usize) -> Router {
    let store = Store::open(dir).expect("open store");
    router(store, ROOT, token.map(str::to_string), max_body).expect("router")
}

fn app(dir: &Path) -> Router {
    app_with(dir, Some(TOKEN), 1 << 20)
}

fn collection(id: &str) -> Value {
    json!({
        "type": "Collection", "stac_version": "1.1.0", "id": id,
        "description": "test collection", "license": "CC-BY-4.0",
        "extent": {"spatial": {"bbox": [[-180.0, -90.0, 180.0, 90.0]]},
                   "temporal": {"interval": [["2000-01-01T00:00:00Z", null]]}},
        "links": []
    })
}

fn item(id: &str, lon: f64, lat: f64, datetime: &str, extra: Value) -> Value {
    let mut props = json!({"datetime": datetime});
    if let (Some(p), Value::Object(e)) = (props.as_object_mut(), extra) {
        p.extend(e);
    }
    json!({
        "type": "Feature", "stac_version": "1.1.0", "id": id,
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
        "bbox": [lon, lat, lon, lat],
        "properties": props, "links": [], "assets": {}
    })
}

fn without(mut v: Value, key: &str) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove(key);
    }
    v
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

/// One request; `auth` is the bearer token to send, `body` raw bytes.
async fn send(app: &Router, method: Method, uri: &str, auth: Option<&str>, body: Vec<u8>) -> Resp {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = auth {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if !body.is_empty() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let r = app
        .clone()
        .oneshot(req.body(Body::from(body)).expect("request"))
        .await
        .expect("infallible");
    let status = r.status();
    let headers = r.headers().clone();
    let bytes = axum::body::to_bytes(r.into_body(), usize::MAX)
        .await
        .expect("body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Resp {
        status,
        headers,
        body,
    }
}

async fn get(app: &Router, uri: &str) -> Resp {
    send(app, Method::GET, uri, None, Vec::new()).await
}

async fn write(app: &Router, method: Method, uri: &str, body: &Value) -> Resp {
    send(app, method, uri, Some(TOKEN), body.to_string().into_bytes()).await
}

fn description(r: &Resp) -> String {
    r.body["description"].as_str().unwrap_or_default().to_string()
}

fn ids(r: &Resp) -> Vec<String> {
    r.body["features"]
        .as_array()
        .map(|f| {
            f.iter()
                .filter_map(|i| i["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn next_link(r: &Resp) -> Option<Value> {
    r.body["links"]
        .as_array()?
        .iter()
        .find(|l| l["rel"] == "next")
        .cloned()
}

/// Follows GET next links from `uri`; returns the number of pages and the ids seen.
async fn follow_get(app: &Router, uri: &str) -> (usize, Vec<String>) {
    let mut uri = uri.to_string();
    let mut seen = Vec::new();
    for pages in 1..=10 {
        let r = get(app, &uri).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {:?}", r.body);
        seen.extend(ids(&r));
        let Some(next) = next_link(&r) else {
            return (pages, seen);
        };
        assert_eq!(next["method"], "GET");
        let href = next["href"].as_str().unwrap_or_default();
        uri = href
            .strip_prefix(ROOT.trim_end_matches('/'))
            .unwrap_or_else(|| panic!("{href} is not under {ROOT}"))
            .to_string();
    }
    panic!("paging from {uri} does not end");
}

/// A collection `c` with items a..e spread over longitude and time; "cloud" on some.
async fn populate(app: &Router) {
    let r = write(app, Method::POST, "/collections", &collection("c")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let items = [
        (
            "a",
            -100.0,
            "2000-01-01T00:00:00Z",
            json!({"cloud": 5, "model": "ICON"}),
        ),
        (
            "b",
            -50.0,
            "2001-01-01T00:00:00Z",
            json!({"cloud": 50, "model": "ICON"}),
        ),
        (
            "c",
            0.0,
            "2002-01-01T00:00:00Z",
            json!({"cloud": 95, "model": "MPI-ESM"}),
        ),
        ("d", 50.0, "2003-01-01T00:00:00Z", json!({"model": "MPI-ESM"})),
        ("e", 100.0, "2004-01-01T00:00:00Z", json!({})),
    ];
    for (id, lon, dt, extra) in items {
        let r = write(
            app,
            Method::POST,
            "/collections/c/items",
            &item(id, lon, 10.0, dt, extra),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{id}: {:?}", r.body);
    }
}

#[tokio::test]
async fn transactions_need_the_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app(dir.path());
    let body = collection("c").to_string().into_bytes();

    let r = send(&app, Method::POST, "/collections", None, body.clone()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers
            .get(header::WWW_AUTHENTICATE)
            .map(axum::http::HeaderValue::as_bytes),
        Some(&b"Bearer"[..])
    );
    assert_eq!(r.body["code"], "Unauthorized");

    let r = send(&app, Method::POST, "/collections", Some("wrong"), body.clone()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = send(
        &app,
        Method::POST,
        "/collections",
        Some(&TOKEN[..TOKEN.len() - 1]),
        body.clone(),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "a prefix of the token is not the token"
    );
    assert_eq!(get(&app, "/collections/c").await.status, StatusCode::NOT_FOUND);

    let r = send(&app, Method::POST, "/collections", Some(TOKEN), body.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        r.headers
            .get(header::LOCATION)
            .map(axum::http::HeaderValue::as_bytes),
        Some(&b"http://catalog.test/collections/c"[..])
    );

    // every write method checks the token, before it looks at the body or the target
    let it = item("i", 0.0, 0.0, "2000-01-01T00:00:00Z", json!({}))
        .to_string()
        .into_bytes();
    for (m, uri, b) in [
        (Method::POST, "/collections/c/items", it.clone()),
        (Method::PUT, "/collections/c/items/i", it.clone()),
        (Method::PATCH, "/collections/c/items/i", b"{}".to_vec()),
        (Method::DELETE, "/collections/c/items/i", Vec::new()),
        (Method::PUT, "/collections/c", body.clone()),
        (Method::PATCH, "/collections/c", b"{}".to_vec()),
        (Method::DELETE, "/collections/c", Vec::new()),
        (Method::DELETE, "/collections/nope", Vec::new()),
    ] {
        let r = send(&app, m.clone(), uri, None, b.clone()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{m} {uri}");
        let r = send(&app, m.clone(), uri, Some("wrong"), b).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{m} {uri}");
    }
    assert_eq!(get(&app, "/collections/c").await.status, StatusCode::OK);

    // without --token-file the catalog is read-only: 403 whatever is sent
    let ro = app_with(dir.path(), None, 1 << 20);
    let r = send(&ro, Method::DELETE, "/collections/c", Some(TOKEN), Vec::new()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(description(&r).contains("--token-file"), "{:?}", r.body);
    assert_eq!(get(&ro, "/collections/c").await.status, StatusCode::OK);
}

#[tokio::test]
async fn conflicts_and_unknown_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app(dir.path());
    populate(&app).await;

    let r = write(&app, Method::POST, "/collections", &collection("c")).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(description(&r).contains("'c' already exists"), "{:?}", r.body);
    let a2 = item("a", 1.0, 1.0, "2010-01-01T00:00:00Z", json!({}));
    let r = write(&app, Method::POST, "/collections/c/items", &a2).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    // the conflicting create changed nothing
    let r = get(&app, "/collections/c/items/a").await;
    assert_eq!(r.body["properties"]["datetime"], "2000-01-01T00:00:00Z");

    for uri in [
        "/collections/nope",
        "/collections/nope/items",
        "/collections/nope/items/a",
        "/collections/c/items/nope",
        "/no/such/route",
    ] {
        let r = get(&app, uri).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{uri}");
        assert_eq!(r.body["code"], "NotFound", "{uri}: JSON error body");
    }
    let x = item("x", 0.0, 0.0, "2000-01-01T00:00:00Z", json!({}));
    for (m, uri, b) in [
        (Method::POST, "/collections/nope/items", x.clone()),
        (Method::PUT, "/collections/c/items/x", x.clone()),
        (
            Method::PATCH,
            "/collections/c/items/x",
            json!({"properties": {"a": 1}}),
        ),
        (Method::DELETE, "/collections/c/items/x", Value::Null),
        (Method::PUT, "/collections/nope", collection("nope")),
        (Method::DELETE, "/collections/nope", Value::Null),
    ] {
        let r = write(&app, m.clone(), uri, &b).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{m} {uri}: {:?}", r.body);
    }

    // replace, merge-patch and delete do what they say
    let r = write(&app, Method::PUT, "/collections/c/items/a", &a2).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let patch = json!({"properties": {"cloud": null, "note": "patched"}});
    let r = write(&app, Method::PATCH, "/collections/c/items/a", &patch).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = get(&app, "/collections/c/items/a").await;
    assert_eq!(r.body["properties"]["datetime"], "2010-01-01T00:00:00Z");
    assert_eq!(r.body["properties"]["note"], "patched");
    assert!(r.body["properties"].get("cloud").is_none());
    let r = write(&app, Method::DELETE, "/collections/c/items/a", &Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        get(&app, "/collections/c/items/a").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn invalid_documents_name_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app(dir.path());
    populate(&app).await;
    let good = item("new", 0.0, 0.0, "2000-01-01T00:00:00Z", json!({}));

    let mut no_datetime = good.clone();
    no_datetime["properties"] = json!({});
    let mut null_datetime = good.clone();
    null_datetime["properties"] = json!({"datetime": null, "start_datetime": "2000-01-01T00:00:00Z"});
    let no_bbox = without(good.clone(), "bbox");
    let mut wrong_type = good.clone();
    wrong_type["type"] = json!("Collection");
    let mut other_collection = good.clone();
    other_collection["collection"] = json!("other");
    let mut slash_id = good.clone();
    slash_id["id"] = json!("a/b");
    let mut bad_assets = good.clone();
    bad_assets["assets"] = json!([]);
    let mut fc = good.clone();
    fc["type"] = json!("FeatureCollection");

    for (doc, field) in [
        (no_datetime, "properties.datetime"),
        (null_datetime, "properties.end_datetime"),
        (no_bbox, "bbox"),
        (wrong_type, "type"),
        (other_collection, "collection"),
        (slash_id, "id"),
        (bad_assets, "assets"),
        (fc, "type"),
    ] {
        let r = write(&app, Method::POST, "/collections/c/items", &doc).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{field}: {:?}", r.body);
        assert!(description(&r).starts_with(field), "{field}: {:?}", r.body);
    }

    let no_extent = without(collection("d"), "extent");
    let no_license = without(collection("d"), "license");
    let mut bad_bbox = collection("d");
    bad_bbox["extent"]["spatial"] = json!({});
    for (doc, field) in [
        (no_extent, "extent"),
        (no_license, "license"),
        (bad_bbox, "extent.spatial.bbox"),
    ] {
        let r = write(&app, Method::POST, "/collections", &doc).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{field}: {:?}", r.body);
        assert!(description(&r).starts_with(field), "{field}: {:?}", r.body);
    }

    // PUT whose body names another id than the URL
    let r = write(&app, Method::PUT, "/collections/c/items/a", &good).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(description(&r).starts_with("id:"), "{:?}", r.body);
    // a patch that makes the item invalid is rejected and changes nothing
    let r = write(
        &app,
        Method::PATCH,
        "/collections/c/items/a",
        &json!({"properties": {"datetime": 5}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(description(&r).starts_with("properties.datetime"), "{:?}", r.body);
    let r = get(&app, "/collections/c/items/a").await;
    assert_eq!(r.body["properties"]["datetime"], "2000-01-01T00:00:00Z");

    // not JSON at all
    let r = send(
        &app,
        Method::POST,
        "/collections",
        Some(TOKEN),
        b"{not json".to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(description(&r).contains("not valid JSON"), "{:?}", r.body);

    // bad search parameters are 400s too, not 500s
    for uri in [
        "/search?bbox=1,2,3",
        "/search?limit=-1",
        "/search?datetime=notadate",
        "/search?filter=cloud%20%3C%3C%3D%201",
        "/search?intersects=%7B%22type%22%3A%22Point%22%7D",
    ] {
        let r = get(&app, uri).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}: {:?}", r.body);
    }

    // nothing rejected reached the store
    let r = get(&app, "/collections/c/items?limit=100").await;
    assert_eq!(ids(&r), ["a", "b", "c", "d", "e"]);
    assert_eq!(get(&app, "/collections/d").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app_with(dir.path(), Some(TOKEN), 4096);
    let mut big = collection("big");
    big["description"] = json!("x".repeat(8192));
    let r = write(&app, Method::POST, "/collections", &big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(get(&app, "/collections/big").await.status, StatusCode::NOT_FOUND);
    let r = send(&app, Method::POST, "/search", None, vec![b' '; 8192]).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    // in the STAC error shape, like every other error
    assert_eq!(r.body["code"], "PayloadTooLarge", "{:?}", r.body);
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/json");
    // just under the limit is fine
    let r = write(&app, Method::POST, "/collections", &collection("small")).await;
    assert_eq!(r.status, StatusCode::CREATED);
}

#[tokio::test]
async fn search_pages_through_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app(dir.path());
    populate(&app).await;

    // GET: follow next links
    let mut seen = Vec::new();
    let mut uri = "/search?limit=2&collections=c".to_string();
    let mut pages = 0;
    loop {
        let r = get(&app, &uri).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {:?}", r.body);
        assert_eq!(
            r.headers
                .get(header::CONTENT_TYPE)
                .map(axum::http::HeaderValue::as_bytes),
            Some(&b"application/geo+json"[..])
        );
        assert_eq!(r.body["numberReturned"], json!(ids(&r).len()));
        seen.extend(ids(&r));
        pages += 1;
        assert!(pages <= 3, "too many pages");
        let Some(next) = next_link(&r) else { break };
        let href = next["href"].as_str().expect("href");
        uri = href
            .strip_prefix(ROOT.trim_end_matches('/'))
            .expect("under root")
            .to_string();
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ["a", "b", "c", "d", "e"]);

    // POST: the next link carries the body to send
    let mut body = json!({"limit": 3, "collections": ["c"]});
    let mut seen = Vec::new();
    loop {
        let r = send(&app, Method::POST, "/search", None, body.to_string().into_bytes()).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        seen.extend(ids(&r));
        let Some(next) = next_link(&r) else { break };
        assert_eq!(next["method"], "POST");
        body = next["body"].clone();
        assert!(seen.len() < 10, "paging does not end");
    }
    assert_eq!(seen, ["a", "b", "c", "d", "e"]);

    // the items endpoint pages the same way
    let r = get(&app, "/collections/c/items?limit=4").await;
    assert_eq!(ids(&r), ["a", "b", "c", "d"]);
    assert!(next_link(&r).is_some());

    // GET next links keep bbox, ids, collections and the filter
    let (pages, seen) = follow_get(
        &app,
        "/search?limit=1&bbox=-60,0,60,20&collections=c&filter=model%3D'MPI-ESM'",
    )
    .await;
    assert_eq!(
        (pages, seen.as_slice()),
        (2, &["c".to_string(), "d".to_string()][..])
    );
    let (pages, seen) = follow_get(&app, "/search?limit=1&ids=a,c,e&datetime=2001-01-01T00:00:00Z/..").await;
    assert_eq!(
        (pages, seen.as_slice()),
        (2, &["c".to_string(), "e".to_string()][..])
    );
    let (pages, seen) = follow_get(&app, "/collections/c/items?limit=2&bbox=-60,0,60,20").await;
    assert_eq!(
        (pages, seen.as_slice()),
        (2, &["b".to_string(), "c".to_string(), "d".to_string()][..])
    );

    // bbox, datetime, ids
    let r = get(&app, "/search?bbox=-60,0,10,20").await;
    assert_eq!(ids(&r), ["b", "c"]);
    let r = get(&app, "/search?datetime=2001-06-01T00:00:00Z/2003-06-01T00:00:00Z").await;
    assert_eq!(ids(&r), ["c", "d"]);
    let r = get(&app, "/search?ids=e,a").await;
    assert_eq!(ids(&r), ["a", "e"]);
    let r = get(&app, "/search?collections=other").await;
    assert_eq!(ids(&r), Vec::<String>::new());
}

#[tokio::test]
async fn cql2_filter_and_intersects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app(dir.path());
    populate(&app).await;
    let q = |f: &str| {
        format!(
            "/search?filter-lang=cql2-text&filter={}",
            url::form_urlencoded::byte_serialize(f.as_bytes()).collect::<String>()
        )
    };

    // items without the property are not matched (NULL), and are not an error
    assert_eq!(ids(&get(&app, &q("cloud < 60")).await), ["a", "b"]);
    assert_eq!(ids(&get(&app, &q("NOT (cloud < 60)")).await), ["c"]);
    assert_eq!(
        ids(&get(&app, &q("model = 'MPI-ESM' AND cloud > 10")).await),
        ["c"]
    );
    assert_eq!(
        ids(&get(&app, &q("model = 'ICON' OR cloud >= 95")).await),
        ["a", "b", "c"]
    );
    assert_eq!(
        ids(&get(&app, &q("no_such_property = 1")).await),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(&get(&app, &q("datetime >= TIMESTAMP('2002-01-01T00:00:00Z')")).await),
        ["c", "d", "e"]
    );
    // combined with the other parameters
    let r = get(&app, &format!("{}&bbox=-60,0,10,20", q("model = 'ICON'"))).await;
    assert_eq!(ids(&r), ["b"]);

    // POST cql2-json
    let body = json!({
        "filter-lang": "cql2-json",
        "filter": {"op": "and", "args": [
            {"op": "=", "args": [{"property": "model"}, "MPI-ESM"]},
            {"op": "isNull", "args": [{"property": "cloud"}]}
        ]}
    });
    let r = send(&app, Method::POST, "/search", None, body.to_string().into_bytes()).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(ids(&r), ["d"]);

    // POST without filter-lang: cql2-json (the extension's default), not ignored
    let body = json!({"filter": {"op": "<", "args": [{"property": "cloud"}, 60]}});
    let r = send(&app, Method::POST, "/search", None, body.to_string().into_bytes()).await;
    assert_eq!(ids(&r), ["a", "b"], "{:?}", r.body);
    // GET with filter-lang=cql2-json
    let f = json!({"op": "=", "args": [{"property": "model"}, "ICON"]}).to_string();
    let enc: String = url::form_urlencoded::byte_serialize(f.as_bytes()).collect();
    let r = get(&app, &format!("/search?filter-lang=cql2-json&filter={enc}")).await;
    assert_eq!(ids(&r), ["a", "b"], "{:?}", r.body);
    let r = get(
        &app,
        &format!("/collections/c/items?filter-lang=cql2-json&filter={enc}"),
    )
    .await;
    assert_eq!(ids(&r), ["a", "b"], "{:?}", r.body);
    let r = get(&app, "/search?filter-lang=cql-json&filter=x").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(description(&r).starts_with("filter-lang"), "{:?}", r.body);
    // POST too, with or without a filter (schemathesis found an unknown value searched all)
    for body in [
        json!({"filter-lang": "cql-json"}),
        json!({"filter-lang": 5, "filter": "cloud < 60"}),
    ] {
        let r = send(&app, Method::POST, "/search", None, body.to_string().into_bytes()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {:?}", r.body);
        assert!(description(&r).starts_with("filter-lang"), "{:?}", r.body);
    }

    // invalid filters: 400 naming the filter
    let r = get(&app, &q("cloud <")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(description(&r).contains("filter"), "{:?}", r.body);
    let bad = json!({"filter-lang": "cql2-json", "filter": {"op": 5}});
    let r = send(&app, Method::POST, "/search", None, bad.to_string().into_bytes()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);

    // intersects, GET and POST
    let poly = json!({"type": "Polygon", "coordinates": [[[-120.0, 0.0], [-40.0, 0.0], [-40.0, 20.0], [-120.0, 20.0], [-120.0, 0.0]]]});
    let r = send(
        &app,
        Method::POST,
        "/search",
        None,
        json!({"intersects": poly}).to_string().into_bytes(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(ids(&r), ["a", "b"]);
    let enc: String = url::form_urlencoded::byte_serialize(poly.to_string().as_bytes()).collect();
    let r = get(&app, &format!("/search?intersects={enc}")).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(ids(&r), ["a", "b"]);
    let r = send(
        &app,
        Method::POST,
        "/search",
        None,
        json!({"intersects": poly, "bbox": [0, 0, 1, 1]})
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::BAD_REQUEST,
        "bbox and intersects together: {:?}",
        r.body
    );

    // the landing page declares what is implemented
    let r = get(&app, "/conformance").await;
    let classes: Vec<&str> = r.body["conformsTo"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for c in [
        "https://api.stacspec.org/v1.0.0/item-search",
        "http://www.opengis.net/spec/cql2/1.0/conf/cql2-text",
        "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json",
        "https://api.stacspec.org/v1.0.0/ogcapi-features/extensions/transaction",
    ] {
        assert!(classes.contains(&c), "{c} missing from {classes:?}");
    }
}

#[tokio::test]
async fn store_survives_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let app = app(dir.path());
        populate(&app).await;
        let r = write(
            &app,
            Method::PATCH,
            "/collections/c/items/b",
            &json!({"properties": {"note": "kept"}}),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        let r = write(&app, Method::DELETE, "/collections/c/items/e", &Value::Null).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        // characters that would change the URL of the item are refused; others are
        // file-name encoded in the store and percent-encoded in links
        let mut odd = item("x", 0.0, 0.0, "2000-01-01T00:00:00Z", json!({}));
        for bad in ["odd/id", "odd?id", "odd#id", "odd%id", "odd\u{7}id", ""] {
            odd["id"] = json!(bad);
            let r = write(&app, Method::POST, "/collections/c/items", &odd).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad:?}");
            assert!(description(&r).starts_with("id:"), "{:?}", r.body);
        }
        odd["id"] = json!("odd id ü.v1");
        let r = write(&app, Method::POST, "/collections/c/items", &odd).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        let r = write(&app, Method::POST, "/collections", &collection("gone")).await;
        assert_eq!(r.status, StatusCode::CREATED);
        let r = write(&app, Method::DELETE, "/collections/gone", &Value::Null).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
    }
    // leftovers of an interrupted write are cleaned up at start
    let items_dir = dir.path().join("collections").join("c").join("items");
    std::fs::write(items_dir.join(".tmp-999-1"), b"{half a docu").expect("write tmp");
    std::fs::create_dir_all(dir.path().join("collections").join(".trash-999-2")).expect("mkdir");

    let app = app(dir.path());
    let r = get(&app, "/collections").await;
    let cols: Vec<&str> = r.body["collections"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(cols, ["c"]);
    let r = get(&app, "/search?limit=100").await;
    assert_eq!(ids(&r), ["a", "b", "c", "d", "odd id ü.v1"]);
    let r = get(&app, "/collections/c/items/b").await;
    assert_eq!(r.body["properties"]["note"], "kept");
    let r = get(&app, "/collections/c/items/odd%20id%20%C3%BC.v1").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(!items_dir.join(".tmp-999-1").exists());
    assert!(!dir.path().join("collections").join(".trash-999-2").exists());
    // links are the API's own, not stored ones
    let self_link = r.body["links"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["rel"] == "self"))
        .and_then(|l| l["href"].as_str())
        .map(str::to_string);
    assert_eq!(
        self_link.as_deref(),
        Some("http://catalog.test/collections/c/items/odd%20id%20%C3%BC.v1")
    );
    let _: Arc<Store> = Store::open(dir.path()).expect("a second open of the same dir reads it too");
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Issue #20 defect 3: filters nested hundreds of levels deep used to overflow the stack and
/// abort the process; now 400 naming the nesting, on GET and POST, cql2-text and cql2-json,
/// and the catalog keeps answering.
#[tokio::test]
async fn deeply_nested_filters_are_400() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app(dir.path());
    populate(&app).await;
    let n = 600;
    let texts = [
        format!("{}1=1{}", "(".repeat(n), ")".repeat(n)),
        format!("{}id='x'", "NOT ".repeat(n)),
        format!("{}1{} = 1", "-(".repeat(n), ")".repeat(n)),
        format!("{}1{} = 1", "abs(".repeat(n), ")".repeat(n)),
        format!("id IN {}'a'{}", "(".repeat(n), ")".repeat(n)),
        format!("cloud{} = 1", " + 1".repeat(n)),
        format!("1{} = 1", "=1".repeat(n)),
        // 5,000 operators: far over the 1,024 limit, within the 48 KiB request-target limit
        format!("x{}", " AND x".repeat(5_000)),
    ];
    for t in &texts {
        let r = get(&app, &format!("/search?filter={}", enc(t))).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}: {:?}", &t[..30], r.body);
        let d = description(&r);
        assert!(
            d.contains("nested more than 32 levels") || d.contains("operators"),
            "{}: {d}",
            &t[..30]
        );
        let r = get(&app, &format!("/collections/c/items?filter={}", enc(t))).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}: {:?}", &t[..30], r.body);
        let body = json!({"filter-lang": "cql2-text", "filter": t});
        let r = send(&app, Method::POST, "/search", None, body.to_string().into_bytes()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}: {:?}", &t[..30], r.body);
    }
    // cql2-json: within serde_json's 128 levels the filter's own limit answers...
    let mut f = json!({"op": "=", "args": [{"property": "id"}, "a"]});
    for _ in 0..40 {
        f = json!({"op": "not", "args": [f]});
    }
    let r = send(
        &app,
        Method::POST,
        "/search",
        None,
        json!({"filter": f}).to_string().into_bytes(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert!(
        description(&r).contains("nested more than 32 levels"),
        "{:?}",
        r.body
    );
    let r = get(
        &app,
        &format!("/search?filter-lang=cql2-json&filter={}", enc(&f.to_string())),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    // ...and beyond them the JSON parser's
    let deep = format!("{}1{}", "[".repeat(n), "]".repeat(n));
    let body = format!(r#"{{"filter": {{"op": "in", "args": [{{"property": "id"}}, {deep}]}}}}"#);
    let r = send(&app, Method::POST, "/search", None, body.into_bytes()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert!(description(&r).contains("recursion limit"), "{:?}", r.body);
    // still answering, and an ordinary filter still works
    let r = get(&app, &format!("/search?filter={}", enc("NOT (cloud < 60)"))).await;
    assert_eq!(ids(&r), ["c"]);
}

/// Issue #20 defect 9: client mistakes are 400 (not 500, not 200 with nothing), every error
/// is JSON, 405 keeps `Allow`, 413 names the limit.
#[tokio::test]
async fn client_mistakes_are_json_4xx() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app(dir.path());
    populate(&app).await;

    for dt in [
        "..",
        "",
        "../..",
        "/",
        "2000-01-01T00:00:00Z/../x",
        "2000-13-01T00:00:00Z",
    ] {
        for uri in [
            format!("/search?datetime={}", enc(dt)),
            format!("/collections/c/items?datetime={}", enc(dt)),
        ] {
            let r = get(&app, &uri).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}: {:?}", r.body);
            assert!(description(&r).contains("datetime"), "{uri}: {:?}", r.body);
        }
        let body = json!({"datetime": dt}).to_string().into_bytes();
        let r = send(&app, Method::POST, "/search", None, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "POST {dt:?}: {:?}", r.body);
    }
    // open intervals are fine
    let r = get(&app, "/search?datetime=2002-01-01T00:00:00Z/..").await;
    assert_eq!(ids(&r), ["c", "d", "e"]);

    for (f, want) in [
        ("nosuchfn(cloud) = 1", "unknown function 'nosuchfn'"),
        ("s_intersects(geometry)", "takes 2 arguments, not 1"),
        ("casei(model, 'x') = 'icon'", "takes 1 argument, not 2"),
    ] {
        let r = get(&app, &format!("/search?filter={}", enc(f))).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{f}: {:?}", r.body);
        assert!(description(&r).contains(want), "{f}: {:?}", r.body);
    }
    let body = json!({"filter": {"op": "=", "args": [{"property": "cloud"}, 5, 6]}});
    let r = send(&app, Method::POST, "/search", None, body.to_string().into_bytes()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert!(
        description(&r).contains("'=' takes 2 arguments, not 3"),
        "{:?}",
        r.body
    );

    // ids that can never be stored: 400 on every route that takes them from the path
    for bad in ["..", ".", "a%2Fb", "a%00b", "a%1Fb"] {
        for uri in [
            format!("/collections/{bad}"),
            format!("/collections/{bad}/items"),
            format!("/collections/{bad}/items/a"),
            format!("/collections/c/items/{bad}"),
        ] {
            let r = get(&app, &uri).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "GET {uri}: {:?}", r.body);
            assert!(
                description(&r).contains("not a valid id"),
                "GET {uri}: {:?}",
                r.body
            );
            let r = write(&app, Method::DELETE, &uri, &Value::Null).await;
            if !uri.ends_with("/items") {
                assert_eq!(r.status, StatusCode::BAD_REQUEST, "DELETE {uri}: {:?}", r.body);
            }
        }
        let r = write(
            &app,
            Method::PUT,
            &format!("/collections/{bad}"),
            &collection("x"),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "PUT {bad}: {:?}", r.body);
        let it = item("x", 0.0, 0.0, "2000-01-01T00:00:00Z", json!({}));
        let r = write(&app, Method::POST, &format!("/collections/{bad}/items"), &it).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "POST {bad}: {:?}", r.body);
    }
    let long = "0".repeat(256);
    for id in ["..", ".", "a\u{7}b", long.as_str()] {
        let r = write(&app, Method::POST, "/collections", &collection(id)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{id:?}: {:?}", r.body);
        let it = item(id, 0.0, 0.0, "2000-01-01T00:00:00Z", json!({}));
        let r = write(&app, Method::POST, "/collections/c/items", &it).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{id:?}: {:?}", r.body);
    }

    // invalid UTF-8 in the path: 400 in the STAC error shape
    for uri in ["/collections/%FF", "/collections/c/items/%C3%28"] {
        let r = get(&app, uri).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}: {:?}", r.body);
        assert_eq!(r.headers[header::CONTENT_TYPE], "application/json", "{uri}");
        assert_eq!(r.body["code"], "BadRequest", "{uri}: {:?}", r.body);
    }
    // other methods: 405 with Allow and JSON
    for (m, uri) in [
        (Method::DELETE, "/search"),
        (Method::PUT, "/collections"),
        (Method::POST, "/collections/c"),
        (Method::POST, "/"),
    ] {
        let r = send(&app, m.clone(), uri, Some(TOKEN), Vec::new()).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{m} {uri}");
        assert!(
            r.headers.contains_key(header::ALLOW),
            "{m} {uri}: {:?}",
            r.headers
        );
        assert_eq!(r.body["code"], "MethodNotAllowed", "{m} {uri}: {:?}", r.body);
        assert!(description(&r).contains("not allowed"), "{m} {uri}: {:?}", r.body);
    }
}
