//! Integration tests of the HTTP surface against files written here with libnetcdf.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use cloudify_crds::DatasetSpec;
use cloudify_server::{app, http::router};
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
