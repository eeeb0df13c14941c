//! The `cloudify-operator run` process: start-up check for the CRD, probes and metrics,
//! graceful shutdown on SIGTERM. The process talks to a minimal HTTP stand-in for the API
//! server (an empty cluster, or one without the CRD) through a real kubeconfig.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, Request};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use cloudify_operator::metrics::Metrics;
use cloudify_operator::probes::{self, Probes};
use cloudify_operator::run::{RunError, check_crd};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_cloudify-operator");

/// Serves `app` on a loopback port.
async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// An API server with no CloudifyDataset CRD: every request is 404.
fn no_crd() -> Router {
    Router::new().fallback(|| async {
        (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                              "message": "the server could not find the requested resource",
                              "reason": "NotFound", "code": 404})),
        )
    })
}

/// An empty cluster with the CRD: lists are empty, watches stay open without events.
fn empty_cluster() -> Router {
    Router::new().fallback(
        |Query(q): Query<std::collections::HashMap<String, String>>, _req: Request| async move {
            if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            axum::Json(json!({"apiVersion": "v1", "kind": "List",
                              "metadata": {"resourceVersion": "1"}, "items": []}))
            .into_response()
        },
    )
}

/// Merges `patch` into `target` (JSON merge semantics: `null` deletes).
fn merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// An empty cluster (as [`empty_cluster`]) that also stores Leases in `leases`.
fn cluster_with_leases(lease: Arc<std::sync::Mutex<Option<serde_json::Value>>>) -> Router {
    let path = "/apis/coordination.k8s.io/v1/namespaces/ops/leases";
    let one = format!("{path}/cloudify-operator");
    let (l1, l2) = (lease.clone(), lease);
    Router::new()
        .route(
            path,
            axum::routing::post(
                move |axum::Json(body): axum::Json<serde_json::Value>| async move {
                    let mut stored = body;
                    stored["metadata"]["namespace"] = json!("ops");
                    stored["metadata"]["resourceVersion"] = json!("1");
                    *l1.lock().expect("lease") = Some(stored.clone());
                    (StatusCode::CREATED, axum::Json(stored))
                },
            ),
        )
        .route(
            &one,
            axum::routing::get({
                let l = l2.clone();
                move || async move {
                    match l.lock().expect("lease").clone() {
                        Some(v) => (StatusCode::OK, axum::Json(v)),
                        None => (
                            StatusCode::NOT_FOUND,
                            axum::Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                              "reason": "NotFound", "code": 404, "message": "not found"})),
                        ),
                    }
                }
            })
            .patch(move |body: axum::body::Bytes| async move {
                let patch: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let mut guard = l2.lock().expect("lease");
                let stored = guard.get_or_insert_with(|| {
                    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                           "metadata": {"name": "cloudify-operator", "namespace": "ops"}})
                });
                merge(stored, &patch);
                (StatusCode::OK, axum::Json(stored.clone()))
            }),
        )
        .merge(empty_cluster())
}

fn kubeconfig(dir: &Path, api: SocketAddr) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster: {{server: \"http://{api}\"}}\n\
             users:\n- name: t\n  user: {{token: t}}\ncontexts:\n- name: t\n  context: {{cluster: t, user: t, namespace: ops}}\n\
             current-context: t\n"
        ),
    )
    .expect("kubeconfig");
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[tokio::test]
async fn missing_crd_is_a_clear_error() {
    let (client, _) = common::mock_client(|_| common::status_error(404, "NotFound", "not found"));
    let err = check_crd(&client, None).await.expect_err("no CRD");
    assert!(matches!(err, RunError::CrdMissing));
    assert_eq!(
        err.to_string(),
        "CustomResourceDefinition cloudifydatasets.cloudify.io not found; install it with \
         `cloudify-operator crd | kubectl apply -f -`"
    );

    // The same through the real process: exit code 1 and the message on stderr.
    let api = serve(no_crd()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = tokio::task::spawn_blocking({
        let kubeconfig = kubeconfig(dir.path(), api);
        move || {
            Command::new(BIN)
                .args(["run", "--no-leader-election", "--probe-addr", "127.0.0.1:0"])
                .env("KUBECONFIG", kubeconfig)
                .env_remove("KUBERNETES_SERVICE_HOST")
                .output()
                .expect("run")
        }
    })
    .await
    .expect("join");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "error: CustomResourceDefinition cloudifydatasets.cloudify.io not found; install it with"
        ),
        "{stderr}"
    );
}

#[tokio::test]
async fn bad_flags_are_named() {
    let out = Command::new(BIN)
        .args(["run", "--catalog-url", "ftp://x", "--probe-addr", "127.0.0.1:0"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--catalog-url: 'ftp://x' is not an http(s) URL"),
        "{stderr}"
    );
}

#[tokio::test]
async fn probes_answer() {
    let ready = Arc::new(AtomicBool::new(false));
    let metrics = Metrics::new().expect("metrics");
    metrics.reconciles.inc();
    let (addr, _task) = probes::serve(
        "127.0.0.1:0".parse().expect("addr"),
        Probes {
            metrics,
            ready: ready.clone(),
        },
        std::future::pending(),
    )
    .await
    .expect("serve");
    let get = |path: &str| {
        let url = format!("http://{addr}{path}");
        async move {
            let r = reqwest::get(url).await.expect("GET");
            (r.status().as_u16(), r.text().await.expect("body"))
        }
    };
    assert_eq!(get("/healthz").await.0, 200);
    assert_eq!(get("/readyz").await.0, 503);
    ready.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(get("/readyz").await.0, 200);
    let (code, text) = get("/metrics").await;
    assert_eq!(code, 200);
    assert!(text.contains("cloudify_operator_reconciles_total 1"), "{text}");
    assert!(
        text.contains("# TYPE cloudify_operator_reconcile_duration_seconds histogram"),
        "{text}"
    );
}

#[tokio::test]
async fn runs_serves_probes_and_stops_on_sigterm() {
    let api = serve(empty_cluster()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--no-leader-election",
            "--probe-addr",
            &format!("127.0.0.1:{port}"),
        ])
        .env("KUBECONFIG", kubeconfig(dir.path(), api))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await
            && r.status() == 200
        {
            let m = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
                .await
                .expect("metrics");
            break m.text().await.expect("text");
        }
        assert!(Instant::now() < deadline, "operator did not become ready");
        if let Ok(Some(status)) = child.try_wait() {
            panic!("operator exited early with {status}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(metrics.contains("cloudify_operator_leader 1"), "{metrics}");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("operator did not stop on SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn leads_with_a_lease_and_releases_it_on_sigterm() {
    let lease = Arc::new(std::sync::Mutex::new(None));
    let api = serve(cluster_with_leases(lease.clone())).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--leader-election",
            "--probe-addr",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["--lease-namespace", "ops", "--identity", "operator-a"])
        .env("KUBECONFIG", kubeconfig(dir.path(), api))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if m.contains("cloudify_operator_leader 1") {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("operator exited early with {status}");
        }
        assert!(Instant::now() < deadline, "operator did not become leader: {m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = lease.lock().expect("lease").clone().expect("lease created");
    assert_eq!(held["spec"]["holderIdentity"], "operator-a", "{held}");
    assert!(
        held["spec"]["leaseDurationSeconds"]
            .as_i64()
            .is_some_and(|d| d > 0),
        "{held}"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("operator did not stop on SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status}");
    let released = lease.lock().expect("lease").clone().expect("lease");
    assert!(released["spec"].get("holderIdentity").is_none(), "{released}");
}
