//! Integration tests of the HTTP surface against files written here with libnetcdf.

// Test helpers, like tests, fail by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use cloudify_crds::DatasetSpec;
use cloudify_server::{app, router::router};
use tower::ServiceExt;

fn spec(name: &str, sources: Vec<String>) -> DatasetSpec {
    DatasetSpec::new(name, sources)
}

/// Length of the `lon` dimension of the test files.
const LON: u64 = 2048;

/// Writes a small chunked, compressed file; `offset` shifts the time axis.
fn write_file(path: &std::path::Path, offset: f64, lat0: f64) {
    let mut f = netcdf::create(path).unwrap();
    f.add_unlimited_dimension("time").unwrap();
    f.add_dimension("lat", 3).unwrap();
    // wide enough that `x` is larger than what the index keeps in memory, so it is read
    // from the file and passed through
    f.add_dimension("lon", LON as usize).unwrap();
    let mut t = f.add_variable::<f64>("time", &["time"]).unwrap();
    t.put_attribute("units", "days since 2000-01-01").unwrap();
    t.put_values(&[offset, offset + 1.0], ..).unwrap();
    let mut la = f.add_variable::<f32>("lat", &["lat"]).unwrap();
    la.put_values(&[lat0, lat0 + 1.0, lat0 + 2.0], ..).unwrap();
    let mut v = f.add_variable::<i16>("x", &["time", "lat", "lon"]).unwrap();
    v.set_compression(4, true).unwrap();
    v.set_chunking(&[1, 3, LON as usize]).unwrap();
    v.put_attribute("scale_factor", 0.5f32).unwrap();
    let vals: Vec<i16> = (0..2 * 3 * LON as i16).map(|i| i + offset as i16 * 10).collect();
    v.put_values(&vals, ..).unwrap();
}

struct Fixture {
    _dir: tempfile::TempDir,
    app: axum::Router,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.nc");
    let b = dir.path().join("b.nc");
    let bad = dir.path().join("bad.nc");
    write_file(&b, 2.0, 0.0); // written first, sorts second by time
    write_file(&a, 0.0, 0.0);
    write_file(&bad, 4.0, 10.0); // disagrees on lat
    let glob = format!("{}/[ab].nc", dir.path().display());
    let specs = vec![
        spec("good", vec![glob]),
        spec("broken", vec![a.display().to_string(), bad.display().to_string()]),
        spec("missing", vec![format!("{}/nothing-*.nc", dir.path().display())]),
    ];
    let state = app::load(&specs, 2, None).unwrap();
    Fixture {
        _dir: dir,
        app: router(Arc::new(state)),
    }
}

async fn get(app: &axum::Router, uri: &str) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let r = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    let body = axum::body::to_bytes(r.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    (status, headers, body)
}

fn json(b: &[u8]) -> serde_json::Value {
    serde_json::from_slice(b).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(b)))
}

#[tokio::test]
async fn aggregation_and_metadata() {
    let f = fixture();
    let (s, _, b) = get(&f.app, "/datasets").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(json(&b), serde_json::json!(["good"]));
    let (_, _, b) = get(&f.app, "/datasets/good/zarr/x/.zarray").await;
    let za = json(&b);
    assert_eq!(za["shape"], serde_json::json!([4, 3, LON]));
    assert_eq!(za["chunks"], serde_json::json!([1, 3, LON]));
    assert_eq!(za["dtype"], "<i2");
    let (_, _, b) = get(&f.app, "/datasets/good/zarr/x/zarr.json").await;
    assert_eq!(
        json(&b)["dimension_names"],
        serde_json::json!(["time", "lat", "lon"])
    );
    let (_, _, b) = get(&f.app, "/datasets/good/zarr/.zmetadata").await;
    let zm = json(&b);
    assert_eq!(
        zm["metadata"]["x/.zattrs"]["_ARRAY_DIMENSIONS"],
        serde_json::json!(["time", "lat", "lon"])
    );
    assert_eq!(
        zm["metadata"]["x/.zattrs"]["scale_factor"],
        serde_json::json!(0.5)
    );
}

#[tokio::test]
async fn chunks_are_in_time_order_and_decode() {
    let f = fixture();
    // v2 chunk 2 along time is the first step of b.nc (time offset 2 → values 20..), served
    // byte-for-byte as stored (zlib + shuffle)
    let (_, _, zb) = get(&f.app, "/datasets/good/zarr/x/.zarray").await;
    assert_eq!(json(&zb)["compressor"]["id"], "zlib");
    let (s, _, b2) = get(&f.app, "/datasets/good/zarr/x/2.0.0").await;
    assert_eq!(s, StatusCode::OK);
    let raw = cloudify_server::codec::decode_hdf5(
        b2.clone(),
        &[
            cloudify_server::source::Filter::Shuffle(2),
            cloudify_server::source::Filter::Deflate(4),
        ],
        0,
        3 * LON as usize * 2,
    )
    .unwrap();
    let vals: Vec<i16> = raw
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect();
    assert_eq!(vals, (20..20 + 3 * LON as i16).collect::<Vec<i16>>());
    // v3 carries the same stored bytes in a Blosc frame (codec "blosc", cname zlib)
    let (_, _, zj) = get(&f.app, "/datasets/good/zarr/x/zarr.json").await;
    assert_eq!(json(&zj)["codecs"][1]["name"], "blosc");
    let (s, _, b3) = get(&f.app, "/datasets/good/zarr/x/c/2/0/0").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(&b3[24..], &b2[..]);
    // the time coordinate (not passed through) is concatenated in order and re-encoded as
    // Blosc (zstd + shuffle): a 24-byte header, then a zstd frame of the shuffled values
    let (_, _, tb) = get(&f.app, "/datasets/good/zarr/time/c/0").await;
    assert_eq!(&tb[..4], &[2, 1, 0x91, 8]);
    let t = zstd::bulk::decompress(&tb[24..], 1 << 20).unwrap();
    let t = cloudify_server::codec::unshuffle(&t, 8);
    let t: Vec<f64> = t
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(&t[..4], &[0.0, 1.0, 2.0, 3.0]);
}

#[tokio::test]
async fn errors_name_the_problem() {
    let f = fixture();
    let cases = [
        ("/datasets/nope/zarr/.zmetadata", StatusCode::NOT_FOUND, "nope"),
        (
            "/datasets/good/zarr/nope/.zarray",
            StatusCode::NOT_FOUND,
            "nope/.zarray",
        ),
        (
            "/datasets/good/zarr/x/0.x.0",
            StatusCode::BAD_REQUEST,
            "'x' is not a chunk index",
        ),
        (
            "/datasets/good/zarr/x/0.0",
            StatusCode::BAD_REQUEST,
            "3 dimensions",
        ),
        (
            "/datasets/good/zarr/x/9.0.0",
            StatusCode::BAD_REQUEST,
            "outside the chunk grid",
        ),
        (
            "/datasets/good/zarr/x/c/0/0/7",
            StatusCode::BAD_REQUEST,
            "outside the chunk grid",
        ),
        ("/datasets/good/zarr/../../etc/passwd", StatusCode::NOT_FOUND, ""),
        (
            "/datasets/broken/zarr/.zmetadata",
            StatusCode::SERVICE_UNAVAILABLE,
            "bad.nc",
        ),
        (
            "/datasets/missing/",
            StatusCode::SERVICE_UNAVAILABLE,
            "matched no files",
        ),
    ];
    for (uri, status, needle) in cases {
        let (s, _, b) = get(&f.app, uri).await;
        assert_eq!(s, status, "{uri}: {}", String::from_utf8_lossy(&b));
        let msg = json(&b)["error"].as_str().unwrap_or_default().to_string();
        assert!(msg.contains(needle), "{uri}: '{msg}' should name '{needle}'");
    }
    let (_, _, b) = get(&f.app, "/status").await;
    let st = json(&b);
    let broken = st["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "broken")
        .unwrap();
    assert_eq!(broken["state"], "failed");
    assert!(
        broken["error"]
            .as_str()
            .unwrap()
            .contains("values of 'lat' differ"),
        "{broken}"
    );
}

/// A groupby of a value-range selection: the summary gives the Zarr URL with the selection
/// as one path segment (canonical: sorted, `from,to`), that URL serves the selected shape
/// under ETags of its own (metadata and chunks), another spelling of the same selection is
/// the same product, and bad selections are 400 naming the parameter.
#[tokio::test]
async fn groupby_value_ranges() {
    let f = fixture();
    let base = "/datasets/good/groupby/x/time.month/mean";
    let (s, _, b) = get(&f.app, &format!("{base}?time=2000-01-02/2000-01-03&lat=1/2")).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let j = json(&b);
    assert_eq!(j["shape"], serde_json::json!([1, 2, LON]));
    let zarr = j["zarr"].as_str().unwrap().to_string();
    assert_eq!(zarr, format!("{base}/lat=1,2&time=2000-01-02,2000-01-03/zarr"));
    assert_eq!(j["selection"]["lat"], serde_json::json!({"from": "1", "to": "2"}));
    let etag = |h: &axum::http::HeaderMap| h.get(header::ETAG).unwrap().to_str().unwrap().to_string();
    let (s, h, b) = get(&f.app, &format!("{zarr}/x/.zarray")).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(json(&b)["shape"], serde_json::json!([1, 2, LON]));
    let (s, h_all, b) = get(&f.app, &format!("{base}/zarr/x/.zarray")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(json(&b)["shape"], serde_json::json!([1, 3, LON]));
    assert_ne!(etag(&h), etag(&h_all));
    let (s, hc, _) = get(&f.app, &format!("{zarr}/x/0.0.0")).await;
    assert_eq!(s, StatusCode::OK);
    let (_, hc_all, _) = get(&f.app, &format!("{base}/zarr/x/0.0.0")).await;
    assert_ne!(
        etag(&hc),
        etag(&hc_all),
        "chunks of other selections have other ETags"
    );
    // another order, a percent-encoded '/': the same product, the same ETag
    let (s, h2, _) = get(
        &f.app,
        &format!("{base}/time=2000-01-02%2F2000-01-03&lat=1,2/zarr/x/.zarray"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(etag(&h2), etag(&h));
    let (_, h3, _) = get(
        &f.app,
        &format!("{base}/time=2000-01-01,2000-01-03&lat=1,2/zarr/x/0.0.0"),
    )
    .await;
    assert_ne!(etag(&h3), etag(&hc), "another time range, another ETag");
    for (q, needle) in [
        ("depth=0/1", "depth: not a dimension of 'x'"),
        ("lat=a/1", "lat: 'a' is not a number"),
        ("lat=2/1", "lat: 2/1 selects nothing"),
        ("time=2001/2002", "time: 2001/2002 selects nothing"),
        ("time=2000-01-01", "time: '2000-01-01' is not a value range"),
        ("time=2000-02-30/2000-03", "time: '2000-02-30' is not a date"),
        ("lat=0/1&lat=1/2", "lat: given more than once"),
    ] {
        let (s, _, b) = get(&f.app, &format!("{base}?{q}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {}", String::from_utf8_lossy(&b));
        let msg = json(&b)["error"].as_str().unwrap_or_default().to_string();
        assert!(msg.contains(needle), "{q}: '{msg}' should say '{needle}'");
        assert!(msg.contains("groupby/x/time.month/mean"), "{msg}");
    }
    for (seg, needle) in [
        ("lat", "selection: 'lat' is not dim=from,to"),
        ("lat=2,1", "lat: 2/1 selects nothing"),
    ] {
        let (s, _, b) = get(&f.app, &format!("{base}/{seg}/zarr/.zmetadata")).await;
        assert_eq!(
            s,
            StatusCode::BAD_REQUEST,
            "{seg}: {}",
            String::from_utf8_lossy(&b)
        );
        let msg = json(&b)["error"].as_str().unwrap_or_default().to_string();
        assert!(msg.contains(needle), "{seg}: '{msg}' should say '{needle}'");
    }
}

/// The `good` dataset (a.nc and b.nc: times 2000-01-01 to 2000-01-04, lat 0, 1, 2) with
/// its state, whose compute cache the tests look at.
fn stateful_fixture() -> (
    tempfile::TempDir,
    Arc<cloudify_server::state::AppState>,
    axum::Router,
) {
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir.path().join("a.nc"), 0.0, 0.0);
    write_file(&dir.path().join("b.nc"), 2.0, 0.0);
    let specs = vec![spec("good", vec![format!("{}/[ab].nc", dir.path().display())])];
    let state = Arc::new(app::load(&specs, 2, None).unwrap());
    let app = router(state.clone());
    (dir, state, app)
}

fn etag_of(h: &axum::http::HeaderMap) -> String {
    h.get(header::ETAG).unwrap().to_str().unwrap().to_string()
}

/// Regression (issue #14): spellings of one value-range selection (partial or full dates,
/// `1` or `1.0`, another order, other values between the same cells) are one product: one
/// ETag per key (metadata and chunks) and one compute-cache entry per chunk, in the query
/// form and the Zarr path form alike; other selections keep other ETags.
#[tokio::test]
async fn equivalent_selections_share_etags_and_cache_entries() {
    let (_dir, state, app) = stateful_fixture();
    let base = "/datasets/good/groupby/x/time.month/mean";
    let segments = [
        "lat=1,2&time=2000-01-02,2000-01-03",
        "time=2000-01-02T00:00:00,2000-01-03T00&lat=1.0,2.0",
        "lat=0.5,2.5&time=2000-01-01T01,2000-01-03T23:59",
        "time=2000-01-02%2F2000-01-03T00:00&lat=1e0,2e0",
    ];
    let mut tags: Vec<(String, String, String)> = Vec::new();
    for seg in segments {
        let (s, hm, b) = get(&app, &format!("{base}/{seg}/zarr/.zmetadata")).await;
        assert_eq!(s, StatusCode::OK, "{seg}: {}", String::from_utf8_lossy(&b));
        let (s, hc, b) = get(&app, &format!("{base}/{seg}/zarr/x/0.0.0")).await;
        assert_eq!(s, StatusCode::OK, "{seg}: {}", String::from_utf8_lossy(&b));
        let (_, h3, _) = get(&app, &format!("{base}/{seg}/zarr/x/c/0/0/0")).await;
        tags.push((etag_of(&hm), etag_of(&hc), etag_of(&h3)));
    }
    assert!(tags.iter().all(|t| *t == tags[0]), "{tags:?}");
    // the two chunk keys (v2 and v3) computed once each, whatever the spelling
    assert_eq!(state.compute_cache.len(), 2);
    // the query form: other spellings, other Zarr URLs, the same product
    let mut zarrs = Vec::new();
    for q in [
        "time=2000-01-02/2000-01-03&lat=1/2",
        "lat=1.0/2&time=2000-01-02T00/2000-01-03T00:00:00",
    ] {
        let (s, _, b) = get(&app, &format!("{base}?{q}")).await;
        assert_eq!(s, StatusCode::OK, "{q}: {}", String::from_utf8_lossy(&b));
        let zarr = json(&b)["zarr"].as_str().unwrap().to_string();
        let (_, hc, _) = get(&app, &format!("{zarr}/x/0.0.0")).await;
        assert_eq!(etag_of(&hc), tags[0].1, "{q}");
        zarrs.push(zarr);
    }
    assert_ne!(zarrs[0], zarrs[1]);
    assert_eq!(state.compute_cache.len(), 2);
    // another selection (one more step, one latitude fewer, none): other ETags
    for seg in [
        "lat=1,2&time=2000-01-01,2000-01-03",
        "lat=1,1&time=2000-01-02,2000-01-03",
    ] {
        let (s, hm, _) = get(&app, &format!("{base}/{seg}/zarr/.zmetadata")).await;
        assert_eq!(s, StatusCode::OK, "{seg}");
        let (_, hc, _) = get(&app, &format!("{base}/{seg}/zarr/x/0.0.0")).await;
        assert_ne!(etag_of(&hm), tags[0].0, "{seg}");
        assert_ne!(etag_of(&hc), tags[0].1, "{seg}");
    }
    let (_, hc, _) = get(&app, &format!("{base}/zarr/x/0.0.0")).await;
    assert_ne!(etag_of(&hc), tags[0].1);
}

/// Regression (issue #14): the histogram's Zarr path segment is percent-decoded once, as a
/// path: `1e+2` and `1e%2B2` in it are both the edge 100 (the product of the query form's
/// `1e%2B2`, with its ETag), while a `+` in the query string is a space, as forms have it.
/// Spellings of one selection are one histogram there too.
#[tokio::test]
async fn histogram_params_in_the_path_keep_their_plus() {
    let (_dir, _state, app) = stateful_fixture();
    let base = "/datasets/good/histogram/x";
    let (s, _, b) = get(&app, &format!("{base}?bins=0,1e%2B2,1e%2B3,1e%2B4")).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let j = json(&b);
    assert_eq!(j["bin_edges"], serde_json::json!([0.0, 100.0, 1000.0, 10000.0]));
    let zarr = j["zarr"].as_str().unwrap().to_string();
    assert_eq!(zarr, format!("{base}/bins=0.0,100.0,1000.0,10000.0/zarr"));
    let (s, want_h, want) = get(&app, &format!("{zarr}/histogram_x/0")).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&want));
    for params in ["bins=0,1e+2,1e+3,1e+4", "bins=0,1e%2B2,1e%2B3,1e%2B4"] {
        let (s, h, b) = get(&app, &format!("{base}/{params}/zarr/histogram_x/0")).await;
        assert_eq!(s, StatusCode::OK, "{params}: {}", String::from_utf8_lossy(&b));
        assert_eq!(b, want, "{params}");
        assert_eq!(etag_of(&h), etag_of(&want_h), "{params}");
        let (s, _, b) = get(&app, &format!("{base}/{params}/zarr/histogram_x/.zarray")).await;
        assert_eq!(s, StatusCode::OK, "{params}");
        assert_eq!(json(&b)["shape"], serde_json::json!([3]), "{params}");
    }
    // a query string is a form: '+' is a space there, and "1e 2" is no number
    let (s, _, b) = get(&app, &format!("{base}?bins=0,1e+2,1e+3")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let msg = json(&b)["error"].as_str().unwrap_or_default().to_string();
    assert!(msg.contains("bins: '1e 2' is not a number"), "{msg}");
    // one selection spelled two ways (and the range as '0' or '0.0'): one product
    let mut tags = Vec::new();
    for q in [
        "bins=4&range=0,4000&time=2000-01-02/2000-01-03&lat=1/2",
        "lat=1.0/2.0&bins=4&range=0.0,4e3&time=2000-01-02T00/2000-01-03T00:00",
    ] {
        let (s, _, b) = get(&app, &format!("{base}?{q}")).await;
        assert_eq!(s, StatusCode::OK, "{q}: {}", String::from_utf8_lossy(&b));
        let zarr = json(&b)["zarr"].as_str().unwrap().to_string();
        let (s, h, b) = get(&app, &format!("{zarr}/histogram_x/0")).await;
        assert_eq!(s, StatusCode::OK, "{q}: {}", String::from_utf8_lossy(&b));
        tags.push(etag_of(&h));
    }
    assert_eq!(tags[0], tags[1]);
    let (_, h, _) = get(
        &app,
        &format!("{base}/bins=4&range=0,4000&time=2000-01-01,2000-01-03&lat=1,2/zarr/histogram_x/0"),
    )
    .await;
    assert_ne!(etag_of(&h), tags[0], "another selection, another ETag");
}

#[tokio::test]
async fn etag_cache_and_cors() {
    let f = fixture();
    let (_, h, _) = get(&f.app, "/datasets/good/zarr/x/c/0/0/0").await;
    let tag = h.get(header::ETAG).unwrap().to_str().unwrap().to_string();
    assert!(h.get(header::CACHE_CONTROL).is_some());
    let r = f
        .app
        .clone()
        .oneshot(
            Request::get("/datasets/good/zarr/x/c/0/0/0")
                .header(header::IF_NONE_MATCH, &tag)
                .header(header::ORIGIN, "https://example.org")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers().get(header::ACCESS_CONTROL_ALLOW_ORIGIN).unwrap(), "*");
    // openapi lists every route of the router
    let (_, _, b) = get(&f.app, "/openapi.json").await;
    let doc = json(&b);
    for (path, ..) in cloudify_server::http::openapi::ROUTES {
        assert!(doc["paths"].get(*path).is_some(), "{path}");
    }
}

async fn send(app: &axum::Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let r = app.clone().oneshot(req).await.unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    let body = axum::body::to_bytes(r.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    (status, headers, body)
}

fn with(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::empty()).unwrap()
}

fn hval<'a>(h: &'a axum::http::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

/// The JSON error message of an answer, failing when the body is not `{"error": "..."}`.
fn error_of(status: StatusCode, h: &axum::http::HeaderMap, b: &[u8]) -> String {
    assert!(
        hval(h, "content-type").starts_with("application/json"),
        "{status}: content-type {:?}, body {:?}",
        h.get("content-type"),
        String::from_utf8_lossy(b)
    );
    json(b)["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{status}: no error message in {}", String::from_utf8_lossy(b)))
        .to_string()
}

/// Range requests on chunks, metadata documents and references: one range is 206 with
/// Content-Range, malformed and multiple ranges get the whole answer, a range past the end
/// 416 with `bytes */len`; If-Range and If-None-Match decide before; HEAD answers like GET.
#[tokio::test]
async fn byte_ranges() {
    let f = fixture();
    for uri in [
        "/datasets/good/zarr/x/c/1/0/0",
        "/datasets/good/zarr/x/1.0.0",
        "/datasets/good/zarr/.zmetadata",
        "/datasets/good/zarr/x/zarr.json",
        "/datasets/good/kerchunk/x/1.0.0",
        "/datasets/good/kerchunk/.zmetadata",
        "/datasets/good/kerchunk.json",
    ] {
        let (s, h, full) = send(&f.app, with("GET", uri, &[])).await;
        assert_eq!(s, StatusCode::OK, "{uri}");
        assert_eq!(hval(&h, "accept-ranges"), "bytes", "{uri}");
        let len = full.len();
        assert!(len > 20, "{uri}");
        let tag = hval(&h, "etag").to_string();
        let ctype = hval(&h, "content-type").to_string();
        // one range
        for (range, lo, hi) in [
            ("bytes=0-9", 0, 9),
            ("bytes=5-", 5, len - 1),
            ("bytes=-7", len - 7, len - 1),
            ("bytes=3-999999999", 3, len - 1),
        ] {
            let (s, h, b) = send(&f.app, with("GET", uri, &[("range", range)])).await;
            assert_eq!(s, StatusCode::PARTIAL_CONTENT, "{uri} {range}");
            assert_eq!(b, &full[lo..=hi], "{uri} {range}");
            assert_eq!(
                hval(&h, "content-range"),
                format!("bytes {lo}-{hi}/{len}"),
                "{uri} {range}"
            );
            assert_eq!(hval(&h, "accept-ranges"), "bytes");
            assert_eq!(hval(&h, "etag"), tag);
            assert_eq!(hval(&h, "content-type"), ctype);
            // HEAD: the same status and headers, no body
            let (s, h, b) = send(&f.app, with("HEAD", uri, &[("range", range)])).await;
            assert_eq!(s, StatusCode::PARTIAL_CONTENT, "HEAD {uri} {range}");
            assert!(b.is_empty());
            assert_eq!(
                hval(&h, "content-length"),
                (hi - lo + 1).to_string(),
                "HEAD {uri} {range}"
            );
            assert_eq!(hval(&h, "content-range"), format!("bytes {lo}-{hi}/{len}"));
        }
        // ignored: malformed, other units, several ranges → the whole answer
        for range in ["bytes=9-3", "bytes=abc", "pages=0-1", "bytes=0-1,5-6", "0-10"] {
            let (s, h, b) = send(&f.app, with("GET", uri, &[("range", range)])).await;
            assert_eq!(s, StatusCode::OK, "{uri} {range}");
            assert_eq!(b, full, "{uri} {range}");
            assert!(h.get("content-range").is_none());
        }
        // unsatisfiable
        for range in [format!("bytes={len}-"), "bytes=-0".to_string()] {
            let (s, h, b) = send(&f.app, with("GET", uri, &[("range", &range)])).await;
            assert_eq!(s, StatusCode::RANGE_NOT_SATISFIABLE, "{uri} {range}");
            assert_eq!(hval(&h, "content-range"), format!("bytes */{len}"));
            assert!(error_of(s, &h, &b).contains(&range), "{uri} {range}");
        }
        // If-Range: the range only while the client's ETag is current
        let (s, _, b) = send(
            &f.app,
            with("GET", uri, &[("range", "bytes=0-3"), ("if-range", &tag)]),
        )
        .await;
        assert_eq!(
            (s, b.as_slice()),
            (StatusCode::PARTIAL_CONTENT, &full[..4]),
            "{uri}"
        );
        let (s, _, b) = send(
            &f.app,
            with("GET", uri, &[("range", "bytes=0-3"), ("if-range", "\"stale\"")]),
        )
        .await;
        assert_eq!((s, b.len()), (StatusCode::OK, len), "{uri}");
        // If-None-Match first: 304 whatever the range
        let (s, h, b) = send(
            &f.app,
            with("GET", uri, &[("range", "bytes=0-3"), ("if-none-match", &tag)]),
        )
        .await;
        assert_eq!(s, StatusCode::NOT_MODIFIED, "{uri}");
        assert!(b.is_empty());
        assert_eq!(hval(&h, "accept-ranges"), "bytes");
    }
}

/// Every error is JSON with the right status, including those axum and the size limits
/// produce: invalid UTF-8 in the path (400), other methods (405 with Allow), unknown routes
/// (404), over-long URIs (414), over-large headers (431).
#[tokio::test]
async fn every_error_is_json() {
    let f = fixture();
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (
            with("GET", "/datasets/%FF/keys", &[]),
            StatusCode::BAD_REQUEST,
            "UTF-8",
        ),
        (
            with("GET", "/datasets/good/zarr/x/%FF", &[]),
            StatusCode::BAD_REQUEST,
            "UTF-8",
        ),
        (
            with("GET", "/datasets/good/kerchunk.parq/%C3%28", &[]),
            StatusCode::BAD_REQUEST,
            "UTF-8",
        ),
        (
            with("POST", "/datasets/good/zarr/.zmetadata", &[]),
            StatusCode::METHOD_NOT_ALLOWED,
            "GET",
        ),
        (
            with("DELETE", "/datasets", &[]),
            StatusCode::METHOD_NOT_ALLOWED,
            "DELETE",
        ),
        (
            with("GET", "/no/such/route", &[]),
            StatusCode::NOT_FOUND,
            "/no/such/route",
        ),
        (
            with("GET", &format!("/datasets/good/zarr/x/{}", "a".repeat(9000)), &[]),
            StatusCode::URI_TOO_LONG,
            "bytes long",
        ),
        (
            with("GET", &format!("/datasets?{}", "q".repeat(9000)), &[]),
            StatusCode::URI_TOO_LONG,
            "bytes long",
        ),
        (
            with("GET", "/datasets", &[("x-big", &"v".repeat(40 * 1024))]),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers",
        ),
    ];
    for (req, status, needle) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let (s, h, b) = send(&f.app, req).await;
        assert_eq!(s, status, "{what}: {}", String::from_utf8_lossy(&b));
        let msg = error_of(s, &h, &b);
        assert!(msg.contains(needle), "{what}: '{msg}' should say '{needle}'");
        if s == StatusCode::METHOD_NOT_ALLOWED {
            assert!(
                hval(&h, "allow").contains("GET"),
                "{what}: Allow {:?}",
                h.get("allow")
            );
        }
    }
    // a request just under the limits is served
    let (s, _, _) = send(
        &f.app,
        with("GET", "/datasets", &[("x-big", &"v".repeat(16 * 1024))]),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
}

/// Dataset ids that cannot be names (`..`, a `/`, other characters) are refused with 400 on
/// every `/datasets/{id}/...` route; valid unknown ids stay 404.
#[tokio::test]
async fn invalid_dataset_ids_are_400() {
    let f = fixture();
    let routes = [
        "",
        "/",
        "/keys",
        "/dict",
        "/info",
        "/zarr",
        "/zarr/",
        "/zarr/.zmetadata",
        "/zarr/x/c/0/0/0",
        "/kerchunk/.zmetadata",
        "/kerchunk.json",
        "/kerchunk.parq/.zmetadata",
        "/stac",
        "/catalog.yaml",
    ];
    for id in ["..", "%2E%2E", ".", ".hidden", "a%2Fb", "a%20b", "%00"] {
        for r in routes {
            let uri = format!("/datasets/{id}{r}");
            let (s, h, b) = get(&f.app, &uri).await;
            assert_eq!(
                s,
                StatusCode::BAD_REQUEST,
                "{uri}: {}",
                String::from_utf8_lossy(&b)
            );
            assert!(error_of(s, &h, &b).contains("invalid dataset id"), "{uri}");
        }
    }
    let (s, _, _) = get(&f.app, "/datasets/unknown-but.valid_1/keys").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// `/kerchunk` answers malformed and out-of-range chunk keys with 400 like `/zarr`, not
/// with the "not stored, reads as the fill value" 404 a Zarr client would turn into data.
#[tokio::test]
async fn kerchunk_bad_chunk_keys_are_400() {
    let f = fixture();
    for key in [
        "x/9.0.0",
        "x/0.1.0",
        "x/0.0.1",
        "x/0.0",
        "x/0.0.0.0",
        "x/0.x.0",
        "x/-1.0.0",
        "x/c/0/0/0",
        "x/0.0.99999999999999999999999",
    ] {
        let uri = format!("/datasets/good/kerchunk/{key}");
        let (s, h, b) = get(&f.app, &uri).await;
        assert_eq!(
            s,
            StatusCode::BAD_REQUEST,
            "{uri}: {}",
            String::from_utf8_lossy(&b)
        );
        let msg = error_of(s, &h, &b);
        assert!(msg.contains(key) || msg.contains(&key[2..]), "{uri}: {msg}");
    }
    // metadata names and unknown arrays stay 404
    for key in ["x/.zfoo", "nope/0.0.0", "nope/.zarray"] {
        let (s, _, b) = get(&f.app, &format!("/datasets/good/kerchunk/{key}")).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{key}: {}", String::from_utf8_lossy(&b));
    }
}

/// Regression (chunk keys cost time quadratic in their length): a key longer than any chunk
/// key of the dataset is refused with 400 before it is parsed.
#[tokio::test]
async fn overlong_chunk_keys_are_400() {
    let f = fixture();
    let key = format!("x/c{}", "/0".repeat(3500));
    for route in ["zarr", "kerchunk"] {
        let (s, h, b) = get(&f.app, &format!("/datasets/good/{route}/{key}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{route}");
        let msg = error_of(s, &h, &b);
        assert!(msg.contains("longer than any chunk key"), "{route}: {msg}");
        assert!(msg.len() < 400, "{route}: the message repeats the whole key");
    }
}

/// Every documented route exists in the router (answers something else than the fallback).
#[tokio::test]
async fn documented_routes_exist() {
    let f = fixture();
    for (path, ..) in cloudify_server::http::openapi::ROUTES {
        let uri = path
            .replace("{id}", "good")
            .replace("{key}", ".zmetadata")
            .replace("{path}", ".zmetadata")
            .replace("{var}", "tas")
            .replace("{coord}", "time.month")
            .replace("{action}", "mean")
            .replace("{params}", "bins=3&range=0,1")
            .replace("{selection}", "time=2000-01-01,2000-01-02")
            .replace("{file}", "opendap.dds");
        let (s, _, b) = get(&f.app, &uri).await;
        let body = String::from_utf8_lossy(&b);
        assert!(!body.contains("no route for"), "{path}: {s} {body}");
    }
}

fn cached_fixture(cache: &std::path::Path) -> (tempfile::TempDir, Arc<cloudify_server::state::AppState>) {
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir.path().join("a.nc"), 0.0, 0.0);
    let specs = vec![spec("good", vec![format!("{}/a.nc", dir.path().display())])];
    let ic = cloudify_server::open::cache::IndexCache::new(cache);
    let state = app::load(&specs, 2, Some(&ic)).unwrap();
    (dir, Arc::new(state))
}

/// The served dataset `good`, whose Parquet directory the tests look at.
fn good(state: &cloudify_server::state::AppState) -> Arc<cloudify_server::state::Served> {
    match state.entry("good") {
        Some(cloudify_server::state::Entry::Ready(s)) => s,
        _ => panic!("dataset not ready"),
    }
}

/// Polls `/kerchunk.parq/.zmetadata` while it answers 503 "being written"; returns the first
/// other answer.
async fn settle(app: &axum::Router) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    for _ in 0..600 {
        let (s, h, b) = get(app, "/datasets/good/kerchunk.parq/.zmetadata").await;
        if s == StatusCode::SERVICE_UNAVAILABLE && String::from_utf8_lossy(&b).contains("being written") {
            assert_eq!(hval(&h, "retry-after"), "1");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        }
        return (s, h, b);
    }
    panic!("Parquet references still being written after 12 s");
}

/// Regression (`/kerchunk.parq` answered 503 "retry shortly" forever): a cache that cannot
/// hold the references gets a 503 naming the directory and the reason (no "retry shortly"),
/// and recovers once the cache is usable again; references deleted from the cache are
/// written again on the next request.
#[tokio::test]
async fn parquet_references_recover_or_say_why() {
    let cache = tempfile::tempdir().unwrap();
    // `<cache>/refs` is a regular file: no directory can be made under it, even as root
    std::fs::write(cache.path().join("refs"), b"not a directory").unwrap();
    let (_src, state) = cached_fixture(cache.path());
    let app = router(state.clone());
    let (s, h, b) = settle(&app).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let msg = error_of(s, &h, &b);
    let refs = cache.path().join("refs");
    assert!(
        msg.contains("unavailable") && msg.contains(&format!("{} is not a directory", refs.display())),
        "{msg}"
    );
    assert!(!msg.contains("retry shortly"), "{msg}");
    let wait: u64 = hval(&h, "retry-after").parse().unwrap();
    assert!(wait > 1 && wait <= 60, "{wait}");
    // asking again does not try again before the retry interval
    let (s2, h2, b2) = get(&app, "/datasets/good/kerchunk.parq/.zmetadata").await;
    assert_eq!(s2, StatusCode::SERVICE_UNAVAILABLE);
    assert!(error_of(s2, &h2, &b2).contains("is not a directory"));
    // the cache is usable again: the next request (after the interval) writes them
    std::fs::remove_file(&refs).unwrap();
    good(&state)
        .refs_parquet
        .as_ref()
        .unwrap()
        .set_retry_interval(std::time::Duration::ZERO);
    let (s, h, b) = settle(&app).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert!(json(&b)["record_size"].is_u64());
    assert_eq!(hval(&h, "accept-ranges"), "bytes");
    // someone cleans the cache: written again, once
    std::fs::remove_dir_all(cache.path()).unwrap();
    let (s, _, b) = settle(&app).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert!(
        good(&state)
            .refs_parquet
            .as_ref()
            .unwrap()
            .dir
            .join(".zmetadata")
            .is_file()
    );
}

/// A dataset still opening in the background (the server already listens): listed with its
/// state, every data and metadata route answers 503 with `Retry-After` and a JSON body naming
/// the dataset and its state (never 404, which a Zarr client reads as fill values, never a
/// 2xx without data), and once it is swapped for its opened dataset it serves like any other.
#[tokio::test]
async fn a_dataset_still_opening_answers_503_with_retry_after_until_it_is_ready() {
    use cloudify_server::state::{Datasets, Entry, Opening};
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.nc");
    write_file(&a, 0.0, 0.0);
    let src = vec![a.display().to_string()];
    let mut state = app::load(&[spec("good", src.clone()), spec("slow", src)], 2, None).unwrap();
    let ready = |id: &str| match state.entry(id) {
        Some(Entry::Ready(s)) => s,
        other => panic!("{id}: {other:?}"),
    };
    let (good, slow) = (ready("good"), ready("slow"));
    let opening = || {
        Entry::Opening(Opening {
            since: std::time::Instant::now(),
            waiting_for: "recalling its files from tape to index them".into(),
            retry_after: 42,
            estimate: None,
        })
    };
    let table = Arc::new(Datasets::new(vec![
        ("good".into(), Entry::Ready(good)),
        ("slow".into(), opening()),
    ]));
    state.datasets = table.clone();
    let app = router(Arc::new(state));

    let (s, _, b) = get(&app, "/datasets").await;
    assert_eq!(
        (s, json(&b)),
        (StatusCode::OK, serde_json::json!(["good", "slow"]))
    );
    let (_, _, b) = get(&app, "/status").await;
    let st = json(&b);
    assert_eq!(st["datasets"][1]["name"], "slow");
    assert_eq!(st["datasets"][1]["state"], "opening");
    assert!(
        st["datasets"][1]["waiting_for"]
            .as_str()
            .unwrap()
            .contains("tape"),
        "{st}"
    );
    // the Retry-After its requests get (the operator shows it on the CloudifyDataset)
    assert_eq!(st["datasets"][1]["retry_after_seconds"], 42, "{st}");
    // one dataset serves: ready, and the count of those opening is told
    let (s, _, b) = get(&app, "/readyz").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(json(&b)["opening"], 1);
    let (s, _, _) = get(&app, "/datasets/good/zarr/x/0.0.0").await;
    assert_eq!(s, StatusCode::OK);

    for route in [
        "/zarr/.zmetadata",
        "/zarr/zarr.json",
        "/zarr/x/.zarray",
        "/zarr/x/0.0.0",
        "/zarr/x/c/0/0/0",
        "/kerchunk.json",
        "/kerchunk.parq/.zmetadata",
        "/stac",
        "/info",
        "/keys",
        "",
    ] {
        let (s, h, b) = get(&app, &format!("/datasets/slow{route}")).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{route}");
        assert_eq!(hval(&h, "retry-after"), "42", "{route}");
        let body = json(&b);
        assert_eq!(body["dataset"], "slow", "{route}: {body}");
        assert_eq!(body["state"], "opening", "{route}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("still opening"),
            "{route}: {body}"
        );
    }
    // OPeNDAP answers its own error documents, with the same status and Retry-After
    for route in ["/opendap.dds", "/opendap.dods", "/opendap.dmr"] {
        let (s, h, b) = get(&app, &format!("/datasets/slow{route}")).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{route}");
        assert_eq!(hval(&h, "retry-after"), "42", "{route}");
        assert!(String::from_utf8_lossy(&b).contains("still opening"), "{route}");
    }

    table.settle("slow", Entry::Ready(slow)).unwrap();
    let (s, _, b) = get(&app, "/datasets/slow/zarr/x/.zarray").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(json(&b)["shape"], serde_json::json!([2, 3, LON]));
    let (_, _, b) = get(&app, "/readyz").await;
    assert_eq!(json(&b)["opening"], 0);
}

/// An estimate that says what the test sets.
#[derive(Debug, Default)]
struct SetEstimate(std::sync::Mutex<Option<u64>>);

impl cloudify_server::state::Estimate for SetEstimate {
    fn seconds_left(&self) -> Option<u64> {
        *self.0.lock().unwrap()
    }
}

/// While a dataset waits on a recall whose driver gives an estimate, `Retry-After` is that
/// estimate as it is now (not the configured guess), bounded to 1..=3600 s; without one
/// (the recall still queued) it is the configured value.
#[tokio::test]
async fn an_opening_retry_after_follows_the_recalls_estimate() {
    use cloudify_server::state::{Datasets, Entry, MAX_RETRY_AFTER, Opening};
    let mut state = app::load(&[], 1, None).unwrap();
    let estimate = Arc::new(SetEstimate::default());
    state.datasets = Arc::new(Datasets::new(vec![(
        "slow".into(),
        Entry::Opening(Opening {
            since: std::time::Instant::now(),
            waiting_for: "recalling its files from tape to index them".into(),
            retry_after: 600,
            estimate: Some(estimate.clone()),
        }),
    )]));
    let app = router(Arc::new(state));
    for (eta, want) in [
        (None, 600),
        (Some(17), 17),
        (Some(0), 1),
        (Some(86_400 * 3), MAX_RETRY_AFTER),
        (None, 600),
    ] {
        *estimate.0.lock().unwrap() = eta;
        for route in ["/zarr/x/0.0.0", "/zarr/.zmetadata", "/opendap.dds"] {
            let (s, h, _) = get(&app, &format!("/datasets/slow{route}")).await;
            assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{route}");
            assert_eq!(
                hval(&h, "retry-after"),
                want.to_string(),
                "{route}: estimate {eta:?}"
            );
        }
    }
    assert_eq!(MAX_RETRY_AFTER, 3600);
}

/// While every dataset is still opening nothing serves yet: not ready (Kubernetes sends
/// such a pod no traffic), saying which dataset is opening and for what; and a dataset
/// that fails in the background is then failed like one that failed at start-up.
#[tokio::test]
async fn readiness_waits_for_a_dataset_that_serves() {
    use cloudify_server::state::{Datasets, Entry, Opening};
    let mut state = app::load(&[], 1, None).unwrap();
    let table = Arc::new(Datasets::new(vec![(
        "slow".into(),
        Entry::Opening(Opening {
            since: std::time::Instant::now(),
            waiting_for: "opening its files".into(),
            retry_after: 10,
            estimate: None,
        }),
    )]));
    state.datasets = table.clone();
    let app = router(Arc::new(state));
    let (s, _, b) = get(&app, "/readyz").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let r = json(&b);
    assert_eq!((r["ready"].as_u64(), r["opening"].as_u64()), (Some(0), Some(1)));
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.contains("'slow' is still opening (opening its files"),
        "{reason}"
    );
    let (s, _, _) = get(&app, "/healthz").await;
    assert_eq!(s, StatusCode::OK);

    table
        .settle("slow", Entry::Failed("no such file".into()))
        .unwrap();
    let (s, _, b) = get(&app, "/readyz").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        json(&b)["reason"]
            .as_str()
            .unwrap()
            .contains("no dataset could be opened: 'slow' failed: no such file")
    );
    let (s, h, b) = get(&app, "/datasets/slow/zarr/.zmetadata").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(h.get(header::RETRY_AFTER).is_none());
    assert_eq!(json(&b)["state"], "failed");
    let (_, _, b) = get(&app, "/datasets").await;
    assert_eq!(json(&b), serde_json::json!([]));
}
