//! STAC registration and deregistration against a real `cloudify catalog` and a real
//! `cloudify serve --demo` (the dataset's server the operator fetches the item from), with the
//! Kubernetes API mocked as in `reconcile.rs`.
//!
//! Needs the `cloudify` binary: `cargo build -p cloudify-server --bin cloudify` and
//! `CLOUDIFY_BIN=<target dir>/debug/cloudify` (e2e/test.sh does both). Without it these tests
//! fail rather than pass silently.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudify_operator::controller::{FINALIZER, RESYNC, reconcile};
use common::{Call, context, cr, cr_path, echo_apply, mock_client, status_error};
use kube::api::DynamicObject;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

const TOKEN: &str = "operator-test-token";

fn cloudify_bin() -> PathBuf {
    match std::env::var_os("CLOUDIFY_BIN") {
        Some(p) if Path::new(&p).is_file() => PathBuf::from(p),
        other => panic!(
            "these tests need the cloudify binary: build it with `cargo build -p cloudify-server --bin cloudify` \
             and set CLOUDIFY_BIN to its path (e2e/test.sh does both); CLOUDIFY_BIN is {other:?}"
        ),
    }
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cloudify ARGS` on a free loopback port and returns its URL.
fn start(dir: &Path, tag: &str, args: &[&str]) -> (String, Proc) {
    let listen = dir.join(format!("{tag}.listen"));
    let log = std::fs::File::create(dir.join(format!("{tag}.log"))).expect("log file");
    let child = Command::new(cloudify_bin())
        .args(args)
        .args([
            "--host",
            "127.0.0.1",
            "--port-range",
            "23000-23999",
            "--listen-file",
        ])
        .arg(&listen)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start cloudify");
    let mut proc = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = proc.0.try_wait() {
            let log = std::fs::read_to_string(dir.join(format!("{tag}.log"))).unwrap_or_default();
            panic!("cloudify {tag} exited with {status}: {log}");
        }
        if let Ok(url) = std::fs::read_to_string(&listen)
            && url.trim().starts_with("http")
        {
            return (url.trim().trim_end_matches('/').to_string(), proc);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("cloudify {tag} did not start");
}

struct Env {
    _dir: tempfile::TempDir,
    catalog: String,
    server: String,
    _procs: Vec<Proc>,
}

fn env() -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token");
    let store = dir.path().join("store");
    let (catalog, cat) = start(
        dir.path(),
        "catalog",
        &[
            "catalog",
            "--data",
            &store.to_string_lossy(),
            "--token-file",
            &token.to_string_lossy(),
        ],
    );
    let cache = dir.path().join("cache");
    let (server, srv) = start(
        dir.path(),
        "serve",
        &[
            "serve",
            "--demo",
            "--cache-dir",
            &cache.to_string_lossy(),
            "--stac-collection",
            "cmip",
        ],
    );
    Env {
        _dir: dir,
        catalog,
        server,
        _procs: vec![srv, cat],
    }
}

async fn get(url: &str) -> (u16, Value) {
    let r = reqwest::get(url).await.expect("GET");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Answers for a cluster with the CR `obj`, a ready Deployment and optionally a token Secret
/// labelled for catalogs.
fn cluster(
    obj: Value,
    secret_token: Option<&'static str>,
) -> impl Fn(&Call) -> (u16, Value) + Send + 'static {
    cluster_with_secret(obj, secret_token.map(|t| token_secret(t, true, None)))
}

/// The Secret `climate/catalog-token` holding `token`, with the consent label if `labelled`
/// and the catalog-URL pin annotation `urls`.
fn token_secret(token: &str, labelled: bool, urls: Option<&str>) -> Value {
    let mut meta = json!({"name": "catalog-token", "namespace": "climate"});
    if labelled {
        meta["labels"] = json!({"cloudify.io/catalog-token": "true"});
    }
    if let Some(u) = urls {
        meta["annotations"] = json!({"cloudify.io/catalog-urls": u});
    }
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": meta, "data": {"token": encode(token)}})
}

/// Answers for a cluster with the CR `obj`, a ready Deployment and optionally `secret`.
fn cluster_with_secret(obj: Value, secret: Option<Value>) -> impl Fn(&Call) -> (u16, Value) + Send + 'static {
    move |call: &Call| {
        if call.is_apply() {
            return echo_apply(call, 1);
        }
        match call.method.as_str() {
            "GET" if call.path == "/api/v1/namespaces/climate/secrets/catalog-token" => match &secret {
                Some(s) => (200, s.clone()),
                None => status_error(404, "NotFound", "secrets \"catalog-token\" not found"),
            },
            "GET" => (
                200,
                json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": []}),
            ),
            "PATCH" => (200, obj.clone()),
            "POST" => (201, call.body.clone()),
            _ => status_error(405, "MethodNotAllowed", "unexpected"),
        }
    }
}

/// Base64 without a dependency (only the test needs it).
fn encode(s: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &c)| n | (u32::from(c) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn condition(status: &Value, type_: &str) -> Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
        .unwrap_or(Value::Null)
}

fn last_status(calls: &common::Calls) -> Value {
    calls
        .find(|c| c.path.ends_with("/status"))
        .last()
        .map(|c| c.body["status"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn registers_when_ready_and_deregisters_on_delete() {
    let env = env();
    let obj = cr(
        "demo",
        json!({"dataset": {"name": "demo", "sources": ["/data/demo.nc"]}, "catalog": {"collection": "cmip"}}),
        2,
    );
    let raw = serde_json::to_value(&obj).expect("json");
    let (client, calls) = mock_client(cluster(raw.clone(), None));
    let ctx = context(client, &env.catalog, &env.server, Some(TOKEN));

    let action = reconcile(Arc::new(obj.clone()), ctx.clone())
        .await
        .expect("reconcile");
    assert_eq!(action, Action::requeue(RESYNC));

    // In the catalog: the item the server publishes, in the CR's collection (created from
    // the server's collection document).
    let item_url = format!("{}/collections/cmip/items/demo", env.catalog);
    let (code, item) = get(&item_url).await;
    assert_eq!(code, 200, "{item}");
    assert_eq!(item["collection"], "cmip");
    let (_, served) = get(&format!("{}/datasets/demo/stac", env.server)).await;
    assert_eq!(item["assets"], served["assets"]);
    assert_eq!(get(&format!("{}/collections/cmip", env.catalog)).await.0, 200);

    // The finalizer came first; the status records the item.
    let all = calls.all();
    let finalizer = all
        .iter()
        .position(|c| c.content_type == "application/json-patch+json")
        .expect("finalizer added");
    let status_at = all
        .iter()
        .position(|c| c.path.ends_with("/status"))
        .expect("status written");
    assert!(finalizer < status_at);
    assert_eq!(all[finalizer].path, cr_path("demo"));
    let status = last_status(&calls);
    assert_eq!(status["stacItem"], item_url);
    let registered = condition(&status, "Registered");
    assert_eq!(registered["status"], "True");
    assert_eq!(registered["reason"], "Registered");
    assert_eq!(
        registered["message"],
        format!("item demo in collection cmip of {}", env.catalog)
    );
    let reasons: Vec<String> = calls
        .find(|c| c.method == "POST")
        .iter()
        .filter_map(|e| e.body["reason"].as_str().map(str::to_string))
        .collect();
    assert_eq!(reasons, ["Ready", "Registered"]);

    // Delete: the item leaves the catalog, then the finalizer goes.
    let mut deleting = raw.clone();
    deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    deleting["metadata"]["finalizers"] = json!(["example.com/other", FINALIZER]);
    deleting["status"] = status;
    let deleting: DynamicObject = serde_json::from_value(deleting).expect("cr");
    let before = calls.all().len();
    let action = reconcile(Arc::new(deleting), ctx).await.expect("cleanup");
    assert_eq!(action, Action::await_change());
    assert_eq!(get(&item_url).await.0, 404);
    let after = calls.all()[before..].to_vec();
    let patches: Vec<&Call> = after.iter().filter(|c| c.method == "PATCH").collect();
    assert_eq!(patches.len(), 1, "{after:#?}");
    assert_eq!(
        patches[0].body,
        json!([{"op": "test", "path": "/metadata/finalizers/1", "value": FINALIZER},
               {"op": "remove", "path": "/metadata/finalizers/1"}])
    );
    assert!(
        after
            .iter()
            .any(|c| c.method == "POST" && c.body["reason"] == "Deregistered")
    );
}

#[tokio::test]
async fn token_comes_from_the_secret_and_is_never_sent_elsewhere() {
    let env = env();
    let port = env.catalog.rsplit(':').next().expect("port").to_string();
    // The same catalog under another name: for the operator a catalog the CR author chose,
    // so the operator's own token is not sent and the write is refused.
    let other = format!("http://localhost:{port}");
    let spec = |secret: bool| {
        let mut catalog = json!({"url": other});
        if secret {
            catalog["tokenSecret"] = json!({"name": "catalog-token"});
        }
        json!({"dataset": {"name": "demo", "sources": ["/data/demo.nc"]}, "catalog": catalog})
    };

    let obj = cr("demo", spec(false), 1);
    let (client, calls) = mock_client(cluster(serde_json::to_value(&obj).expect("json"), None));
    let ctx = context(client, &env.catalog, &env.server, Some(TOKEN));
    let action = reconcile(Arc::new(obj), ctx).await.expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(1)));
    let registered = condition(&last_status(&calls), "Registered");
    assert_eq!(registered["reason"], "CatalogRejected", "{registered}");
    assert_eq!(condition(&last_status(&calls), "Ready")["status"], "True");

    // With the CR's own token secret it registers there.
    let obj = cr("demo", spec(true), 1);
    let (client, calls) = mock_client(cluster(serde_json::to_value(&obj).expect("json"), Some(TOKEN)));
    let ctx = context(client, &env.catalog, &env.server, None);
    reconcile(Arc::new(obj), ctx).await.expect("reconcile");
    let status = last_status(&calls);
    assert_eq!(condition(&status, "Registered")["status"], "True", "{status}");
    assert_eq!(
        status["stacItem"],
        format!("{other}/collections/cloudify/items/demo")
    );
    assert_eq!(
        get(&format!("{}/collections/cloudify/items/demo", env.catalog))
            .await
            .0,
        200
    );

    // A missing secret is reported by name.
    let obj = cr("demo", spec(true), 1);
    let (client, calls) = mock_client(cluster(serde_json::to_value(&obj).expect("json"), None));
    let ctx = context(client, &env.catalog, &env.server, None);
    reconcile(Arc::new(obj), ctx).await.expect("reconcile");
    let registered = condition(&last_status(&calls), "Registered");
    assert_eq!(registered["reason"], "TokenUnavailable");
    assert_eq!(registered["message"], "secret climate/catalog-token not found");

    // A Secret without its owner's consent label is never read out and sent; one pinned to
    // other catalogs neither.
    for (secret, needle) in [
        (
            token_secret(TOKEN, false, None),
            "is not labelled cloudify.io/catalog-token=true",
        ),
        (
            token_secret(TOKEN, true, Some("https://catalog.example.org")),
            "may only be sent to https://catalog.example.org",
        ),
    ] {
        let obj = cr("demo", spec(true), 1);
        let (client, calls) = mock_client(cluster_with_secret(
            serde_json::to_value(&obj).expect("json"),
            Some(secret),
        ));
        let ctx = context(client, &env.catalog, &env.server, None);
        reconcile(Arc::new(obj), ctx).await.expect("reconcile");
        let registered = condition(&last_status(&calls), "Registered");
        assert_eq!(registered["reason"], "TokenUnavailable", "{registered}");
        let msg = registered["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains(needle) && msg.contains("climate/catalog-token"),
            "{msg}"
        );
    }
}

#[tokio::test]
async fn turning_registration_off_deregisters_and_drops_the_finalizer() {
    let env = env();
    let spec = |register: bool| json!({"dataset": {"name": "demo", "sources": ["/data/demo.nc"]}, "catalog": {"register": register}});
    let obj = cr("demo", spec(true), 1);
    let (client, calls) = mock_client(cluster(serde_json::to_value(&obj).expect("json"), None));
    let ctx = context(client, &env.catalog, &env.server, Some(TOKEN));
    reconcile(Arc::new(obj), ctx.clone()).await.expect("register");
    let status = last_status(&calls);
    let item_url = status["stacItem"].as_str().expect("registered").to_string();
    assert_eq!(get(&item_url).await.0, 200);

    let mut off = serde_json::to_value(cr("demo", spec(false), 2)).expect("json");
    off["metadata"]["finalizers"] = json!([FINALIZER]);
    off["status"] = status;
    let off: DynamicObject = serde_json::from_value(off).expect("cr");
    let before = calls.all().len();
    reconcile(Arc::new(off), ctx).await.expect("deregister");
    assert_eq!(get(&item_url).await.0, 404);
    let after = calls.all()[before..].to_vec();
    assert!(
        after
            .iter()
            .any(|c| c.content_type == "application/json-patch+json"
                && c.body[1] == json!({"op": "remove", "path": "/metadata/finalizers/0"}))
    );
    let status = last_status(&calls);
    assert!(status["stacItem"].is_null());
    assert_eq!(condition(&status, "Registered")["reason"], "Disabled");
}

#[tokio::test]
async fn moving_the_item_to_another_collection_removes_the_old_one() {
    let env = env();
    let spec = |collection: &str| json!({"dataset": {"name": "demo", "sources": ["/data/demo.nc"]}, "catalog": {"collection": collection}});
    let obj = cr("demo", spec("first"), 1);
    let (client, calls) = mock_client(cluster(serde_json::to_value(&obj).expect("json"), None));
    let ctx = context(client, &env.catalog, &env.server, Some(TOKEN));
    reconcile(Arc::new(obj), ctx.clone()).await.expect("register");
    let first = last_status(&calls);
    let first_url = first["stacItem"].as_str().expect("registered").to_string();
    assert_eq!(first_url, format!("{}/collections/first/items/demo", env.catalog));

    let mut moved = serde_json::to_value(cr("demo", spec("second"), 2)).expect("json");
    moved["metadata"]["finalizers"] = json!([FINALIZER]);
    moved["status"] = first;
    let moved: DynamicObject = serde_json::from_value(moved).expect("cr");
    reconcile(Arc::new(moved), ctx).await.expect("move");
    let status = last_status(&calls);
    assert_eq!(
        status["stacItem"],
        format!("{}/collections/second/items/demo", env.catalog)
    );
    assert_eq!(condition(&status, "Registered")["observedGeneration"], 2);
    assert_eq!(
        get(&format!("{}/collections/second/items/demo", env.catalog))
            .await
            .0,
        200
    );
    assert_eq!(get(&first_url).await.0, 404);
}

/// The private dataset's server: the demo's files (made by `env()`'s demo server) served as
/// `demo` with `access.public: false`, a token file and the signing key the operator's
/// `<name>-internal` Secret holds, as the operator's ConfigMap lays it out.
fn private_server(env: &Env, key: &str) -> (String, Proc) {
    let dir = env._dir.path();
    let demo = std::fs::read_dir(dir.join("cache"))
        .expect("cache dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("demo-v"))
        })
        .expect("demo files");
    std::fs::write(dir.join("signing-key"), format!("{key}\n")).expect("key");
    // the digest of a reader's token (sha256 of "reader-token"); the operator never has it
    std::fs::write(
        dir.join("tokens"),
        "c8e2a6a6a3f5d0a23a8f07a1a1dd6c5f6b3e6d1f1b1f9a4a2f8d2c9b6f4e1a0b\n",
    )
    .expect("tokens");
    let cfg = dir.join("private.yaml");
    std::fs::write(
        &cfg,
        format!(
            "datasets:\n  - name: demo\n    sources: [\"{}/tas_Amon_*.nc\"]\n    access: {{public: false, tokenFile: {}, signedUrlKeyFile: {}}}\n",
            demo.display(),
            dir.join("tokens").display(),
            dir.join("signing-key").display()
        ),
    )
    .expect("config");
    start(
        dir,
        "private",
        &[
            "serve",
            "--config",
            &cfg.to_string_lossy(),
            "--cache-dir",
            &dir.join("cache").to_string_lossy(),
            "--stac-collection",
            "cmip",
        ],
    )
}

/// Answers for a cluster with the CR `obj`, a ready Deployment and the CR's
/// `demo-internal` Secret holding `signing_key`.
fn cluster_with_internal(obj: Value, signing_key: &str) -> impl Fn(&Call) -> (u16, Value) + Send + 'static {
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "demo-internal", "namespace": "climate",
                     "ownerReferences": [{"apiVersion": "cloudify.io/v1alpha1", "kind": "CloudifyDataset",
                                          "name": "demo", "uid": common::UID, "controller": true}]},
        "data": {"signing-key": encode(signing_key),
                 "compute-secret": encode("0123456789abcdef0123456789abcdef")},
    });
    move |call: &Call| {
        if call.method == "GET" && call.path == "/api/v1/namespaces/climate/secrets/demo-internal" {
            return (200, secret.clone());
        }
        cluster_with_secret(obj.clone(), None)(call)
    }
}

#[tokio::test]
async fn private_datasets_are_registered_only_with_the_crs_consent() {
    let env = env();
    let key = "operator-signing-key-0123456789abcdef0123456789abcdef";
    let (private, _srv) = private_server(&env, key);
    // anonymous callers cannot read the item the operator registers
    assert_eq!(get(&format!("{private}/datasets/demo/stac")).await.0, 401);
    let access = |register: bool| json!({"public": false, "tokenSecret": {"name": "readers", "key": "sha256"}, "register": register});
    let spec = |register: bool| {
        json!({"dataset": {"name": "demo", "sources": ["/data/demo.nc"]}, "catalog": {"collection": "cmip"},
               "access": access(register)})
    };
    let item_url = format!("{}/collections/cmip/items/demo", env.catalog);

    // without consent: not registered, and the reason says how to consent
    let obj = cr("demo", spec(false), 1);
    let (client, calls) = mock_client(cluster_with_internal(
        serde_json::to_value(&obj).expect("json"),
        key,
    ));
    let ctx = context(client, &env.catalog, &private, Some(TOKEN));
    reconcile(Arc::new(obj), ctx).await.expect("reconcile");
    let registered = condition(&last_status(&calls), "Registered");
    assert_eq!(registered["reason"], "PrivateDataset", "{registered}");
    assert!(
        registered["message"]
            .as_str()
            .unwrap_or_default()
            .contains("spec.access.register: true")
    );
    assert_eq!(get(&item_url).await.0, 404);
    assert!(
        calls
            .find(|c| c.path.ends_with("/secrets/demo-internal"))
            .is_empty(),
        "no internal Secret without compute or consent"
    );

    // with consent: the operator applies the internal Secret (keeping its key), reads the
    // item with a URL it signs and registers it
    let obj = cr("demo", spec(true), 2);
    let raw = serde_json::to_value(&obj).expect("json");
    let (client, calls) = mock_client(cluster_with_internal(raw.clone(), key));
    let ctx = context(client, &env.catalog, &private, Some(TOKEN));
    reconcile(Arc::new(obj), ctx.clone()).await.expect("reconcile");
    let status = last_status(&calls);
    let registered = condition(&status, "Registered");
    assert_eq!(registered["status"], "True", "{registered}");
    let (code, item) = get(&item_url).await;
    assert_eq!(code, 200, "{item}");
    assert_eq!(item["id"], "demo");
    let applied = calls.find(|c| c.is_apply() && c.path.ends_with("/secrets/demo-internal"));
    assert_eq!(applied.len(), 1);
    assert_eq!(
        applied[0].body["data"]["signing-key"],
        encode(key),
        "the existing key is kept"
    );
    // the server's config names the mounted key
    let config_map = calls
        .find(|c| c.is_apply() && c.body["kind"] == "ConfigMap")
        .pop()
        .expect("config map applied");
    let config = config_map.body["data"]["cloudify.yaml"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        config.contains("signedUrlKeyFile: /etc/cloudify-internal/signing-key"),
        "{config}"
    );

    // consent withdrawn: the item leaves the catalog
    let mut off = serde_json::to_value(cr("demo", spec(false), 3)).expect("json");
    off["metadata"]["finalizers"] = json!([FINALIZER]);
    off["status"] = status;
    let off: DynamicObject = serde_json::from_value(off).expect("cr");
    reconcile(Arc::new(off), ctx).await.expect("deregister");
    assert_eq!(get(&item_url).await.0, 404);
    assert_eq!(
        condition(&last_status(&calls), "Registered")["reason"],
        "PrivateDataset"
    );

    // a key the server does not hold: the server's 401, named, without the signature
    let obj = cr("demo", spec(true), 4);
    let wrong = "another-key-0123456789abcdef0123456789abcdef0123";
    let (client, calls) = mock_client(cluster_with_internal(
        serde_json::to_value(&obj).expect("json"),
        wrong,
    ));
    let ctx = context(client, &env.catalog, &private, Some(TOKEN));
    reconcile(Arc::new(obj), ctx).await.expect("reconcile");
    let registered = condition(&last_status(&calls), "Registered");
    assert_eq!(registered["status"], "False", "{registered}");
    assert_eq!(registered["reason"], "ItemUnavailable", "{registered}");
    let message = registered["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("401") && message.contains("<signed>"),
        "{message}"
    );
    assert!(!message.contains("signature="), "{message}");
    assert_eq!(get(&item_url).await.0, 404);
}
