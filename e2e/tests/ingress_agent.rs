//! The whole local data path: API emulator → pod runtime (python3 http.server pods serving a
//! ConfigMap volume) → EndpointSlices → ingress agent → real nginx, all over the API like the
//! real components; scaling and pod replacement change the upstreams without failed reads.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cloudify_e2e::apiserver::{Options, Server};
use cloudify_e2e::ingress::agent::{self, AgentOptions};
use cloudify_e2e::runtime::controller::{self, RuntimeOptions};
use cloudify_e2e::runtime::free_loopback_port;
use cloudify_e2e::runtime::plan::ImageMap;
use cloudify_e2e::runtime::supervisor::SupervisorOptions;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Config};

const MANIFESTS: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: files, namespace: default}
data: {hello: "hello from a pod\n"}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      volumes: [{name: files, configMap: {name: files, items: [{key: hello, path: datasets/web/hello.txt}]}}]
      containers:
        - name: web
          image: python:3.12-slim
          command: [python3, -m, http.server, --bind, 127.0.0.1, --directory, /srv]
          args: ["$(PORT)"]
          env: [{name: PORT, value: "8000"}]
          ports: [{name: http, containerPort: 8000}]
          readinessProbe: {httpGet: {path: /datasets/web/hello.txt, port: http}}
          volumeMounts: [{name: files, mountPath: /srv}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {selector: {app: web}, ports: [{name: http, port: 9000, targetPort: http}]}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: default}
spec:
  ingressClassName: nginx
  rules: [{http: {paths: [{path: /datasets/web, pathType: Prefix, backend: {service: {name: web, port: {name: http}}}}]}}]
"#;

async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until nginx serves nothing but the configuration now in `nginx.conf`: its status
/// listener answers that file's generation, and the master has a single worker left
/// (`worker_processes 1`), so no worker of an earlier generation still accepts connections.
///
/// One response from the new configuration does not show this: on a reload nginx's master
/// starts the new worker, sleeps 100 ms and only then tells the old one to stop accepting
/// (`ngx_master_process_cycle`), and both accept on the shared listening socket until it has.
/// The agent itself waits for the old workers to go before it reports a reload done.
async fn nginx_settled(http: &reqwest::Client, nginx_dir: &Path, status: SocketAddr) {
    let generation = |conf: &str| {
        conf.lines()
            .next()?
            .strip_prefix("# Rendered by cloudify-e2e's ingress agent; generation ")?
            .strip_suffix('.')
            .map(str::to_string)
    };
    eventually("nginx serving only the current nginx.conf", || async {
        let wanted = generation(&std::fs::read_to_string(nginx_dir.join("nginx.conf")).ok()?)?;
        let served = http
            .get(format!("http://{status}/generation"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let pid = std::fs::read_to_string(nginx_dir.join("nginx.pid")).ok()?;
        let pid = pid.trim();
        let workers = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
        let again = generation(&std::fs::read_to_string(nginx_dir.join("nginx.conf")).ok()?)?;
        (served.trim() == wanted && workers.split_whitespace().count() == 1 && again == wanted).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_serves_pods_through_nginx() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let server = Server::start(Options {
        addr: "127.0.0.1:0".parse().expect("addr"),
        state_file: None,
    })
    .await
    .expect("emulator");
    let client = Client::try_from(Config::new(server.url().parse().expect("url"))).expect("client");
    let state = tempfile::tempdir().expect("tempdir");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let runtime = tokio::spawn(controller::run(
        client.clone(),
        RuntimeOptions {
            images: ImageMap(vec![("python".into(), PathBuf::from("/usr/bin/python3"))]),
            state_dir: state.path().join("runtime"),
            supervisor: SupervisorOptions {
                probe_period_max: Some(Duration::from_millis(200)),
                ..SupervisorOptions::default()
            },
            drain: controller::DEFAULT_DRAIN,
        },
        stopped(stop_rx.clone()),
    ));
    let lo = |p| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
    let http = lo(free_loopback_port().expect("port"));
    let status = lo(free_loopback_port().expect("port"));
    let agent = tokio::spawn(agent::run(
        client.clone(),
        AgentOptions {
            nginx: PathBuf::from("/usr/sbin/nginx"),
            state_dir: state.path().join("nginx"),
            http,
            https: None,
            status,
        },
        stopped(stop_rx.clone()),
    ));

    for doc in MANIFESTS.split("\n---\n") {
        let value: serde_json::Value = serde_yaml::from_str(doc).expect("manifest");
        match value["kind"].as_str() {
            Some("ConfigMap") => {
                let o: ConfigMap = serde_json::from_value(value).expect("cm");
                Api::<ConfigMap>::default_namespaced(client.clone())
                    .create(&PostParams::default(), &o)
                    .await
                    .expect("cm");
            }
            Some("Deployment") => {
                let o: Deployment = serde_json::from_value(value).expect("deploy");
                Api::<Deployment>::default_namespaced(client.clone())
                    .create(&PostParams::default(), &o)
                    .await
                    .expect("d");
            }
            Some("Service") => {
                let o: Service = serde_json::from_value(value).expect("svc");
                Api::<Service>::default_namespaced(client.clone())
                    .create(&PostParams::default(), &o)
                    .await
                    .expect("s");
            }
            Some("Ingress") => {
                let o: Ingress = serde_json::from_value(value).expect("ing");
                Api::<Ingress>::default_namespaced(client.clone())
                    .create(&PostParams::default(), &o)
                    .await
                    .expect("i");
            }
            other => panic!("unexpected kind {other:?}"),
        }
    }

    let http_client = reqwest::Client::builder().no_proxy().build().expect("client");
    let url = format!("http://{http}/datasets/web/hello.txt");
    eventually("file served through nginx", || async {
        let r = http_client.get(&url).send().await.ok()?;
        (r.status().is_success() && r.text().await.ok()? == "hello from a pod\n").then_some(())
    })
    .await;
    // The generation that answered may still share the listener with the previous one, which
    // was rendered before the pod was ready (503): the readers below must not start in that
    // window, which is the end of the start-up, not a failure while pods change.
    let nginx_dir = state.path().join("nginx");
    nginx_settled(&http_client, &nginx_dir, status).await;
    assert_eq!(
        http_client
            .get(format!("http://{http}/datasets/other"))
            .send()
            .await
            .expect("get")
            .status(),
        404
    );

    let ingresses: Api<Ingress> = Api::default_namespaced(client.clone());
    let lb = eventually("ingress status", || async {
        let i = ingresses.get("web").await.ok()?;
        i.status?.load_balancer?.ingress?.into_iter().next()
    })
    .await;
    assert_eq!(lb.ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        lb.ports.and_then(|p| p.first().map(|p| p.port)),
        Some(i32::from(http.port()))
    );

    // The service proxy reaches the same Service by namespace/name/port.
    let proxy_listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let proxy_addr = proxy_listener.local_addr().expect("addr");
    tokio::spawn(cloudify_e2e::runtime::proxy::serve(
        client.clone(),
        proxy_listener,
        stopped(stop_rx.clone()),
    ));
    let via_proxy = eventually("service proxy", || async {
        let r = http_client
            .get(format!(
                "http://{proxy_addr}/default/web/9000/datasets/web/hello.txt"
            ))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(r.text().await.ok()?)
    })
    .await;
    assert_eq!(via_proxy, "hello from a pod\n");
    let missing = http_client
        .get(format!("http://{proxy_addr}/default/nope/9000/"))
        .send()
        .await
        .expect("get");
    assert_eq!(missing.status(), 404);

    // Readers keep going while the Deployment scales up and its first pod is deleted.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let reader = {
        let (stop, ok, failed, c, url) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            http_client.clone(),
            url.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match c.get(&url).send().await {
                    Ok(r) if r.status().is_success() => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("failed read: {:?}", other.map(|r| r.status()));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let first = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("pods")
        .items[0]
        .metadata
        .name
        .clone();
    Api::<Deployment>::default_namespaced(client.clone())
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 2}})),
        )
        .await
        .expect("scale");
    let nginx_conf = nginx_dir.join("nginx.conf");
    eventually("two upstream servers", || async {
        let conf = std::fs::read_to_string(&nginx_conf).ok()?;
        (conf.matches("max_fails=0").count() == 2).then_some(())
    })
    .await;
    // nginx.conf is in place just before the reload; the pod is deleted once nginx switched.
    nginx_settled(&http_client, &nginx_dir, status).await;
    pods.delete(&first.unwrap_or_default(), &DeleteParams::default())
        .await
        .expect("delete pod");
    eventually("replacement pod serving", || async {
        let list = pods.list(&ListParams::default().labels("app=web")).await.ok()?;
        let conf = std::fs::read_to_string(&nginx_conf).ok()?;
        (list.items.len() == 2 && conf.matches("max_fails=0").count() == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    reader.await.expect("reader");
    assert!(ok.load(Ordering::Relaxed) > 10);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "reads failed while pods changed"
    );

    let _ = stop_tx.send(true);
    runtime.await.expect("join").expect("runtime");
    agent.await.expect("join").expect("agent");
    server.shutdown().await;
}
