//! The ingress renderer against a real nginx (Debian package) proxying to real local HTTP
//! servers: routing, and a config change + graceful reload with no failed request.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use cloudify_e2e::ingress::nginx::Nginx;
use cloudify_e2e::ingress::render::{Inputs, RenderOptions, render};
use cloudify_e2e::runtime::free_loopback_port;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;

/// A backend answering every request with its own name and the path it saw.
async fn backend(name: &'static str) -> u16 {
    let app = axum::Router::new()
        .fallback(move |uri: axum::http::Uri| async move { format!("{name} {}", uri.path()) });
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    port
}

fn inputs(path: &str, ports: &[u16], annotations: &str) -> Inputs {
    let ingress: Ingress = serde_yaml::from_str(&format!(
        r#"
metadata: {{name: ds, namespace: data, annotations: {{{annotations}}}}}
spec:
  ingressClassName: nginx
  rules: [{{http: {{paths: [{{path: "{path}", pathType: Prefix, backend: {{service: {{name: ds, port: {{name: http}}}}}}}}]}}}}]
"#
    ))
    .expect("ingress");
    let service: Service = serde_yaml::from_str(
        "metadata: {name: ds, namespace: data}\nspec: {ports: [{name: http, port: 9000}]}",
    )
    .expect("service");
    let slices = ports
        .iter()
        .map(|p| {
            serde_yaml::from_str::<EndpointSlice>(&format!(
                "metadata: {{name: ds-{p}, namespace: data}}\naddressType: IPv4\nports: [{{name: http, port: {p}}}]\nendpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]"
            ))
            .expect("slice")
        })
        .collect();
    let key = ("data".to_string(), "ds".to_string());
    Inputs {
        ingresses: vec![ingress],
        services: BTreeMap::from([(key.clone(), service)]),
        endpoint_slices: BTreeMap::from([(key, slices)]),
        tls: BTreeMap::new(),
    }
}

fn options(state: &Path, generation: u64) -> RenderOptions {
    let lo = |p| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
    RenderOptions {
        http: lo(free_loopback_port().expect("port")),
        https: None,
        status: lo(free_loopback_port().expect("port")),
        state_dir: state.to_path_buf(),
        user: rustix::process::geteuid().is_root().then(|| "root".to_string()),
        generation,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_routes_and_reloads_without_failed_requests() {
    let state = tempfile::tempdir().expect("tempdir");
    let a = backend("a").await;
    let b = backend("b").await;
    let mut opts = options(state.path(), 1);
    let rendered = render(&inputs("/datasets/ds", &[a], ""), &opts);
    assert!(rendered.warnings.is_empty(), "{:?}", rendered.warnings);
    let mut nginx = Nginx::start(
        Path::new("/usr/sbin/nginx"),
        state.path(),
        &rendered.config,
        opts.status,
        1,
    )
    .await
    .expect("nginx starts");
    let base = format!("http://{}", opts.http);
    let client = reqwest::Client::builder().no_proxy().build().expect("client");
    let get = |path: &str| {
        let client = client.clone();
        let url = format!("{base}{path}");
        async move {
            let resp = client.get(url).send().await.expect("request");
            let status = resp.status().as_u16();
            (status, resp.text().await.expect("body"))
        }
    };
    assert_eq!(
        get("/datasets/ds/zarr/.zmetadata").await,
        (200, "a /datasets/ds/zarr/.zmetadata".into())
    );
    assert_eq!(get("/datasets/ds").await, (200, "a /datasets/ds".into()));
    assert_eq!(
        get("/datasets/dsx").await.0,
        404,
        "prefix matches whole path segments"
    );
    assert_eq!(get("/other").await.0, 404);

    // Clients keep reading while the backends change and nginx reloads twice.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (stop, failures, served, client) =
            (stop.clone(), failures.clone(), served.clone(), client.clone());
        let url = format!("{base}/datasets/ds/x");
        readers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.get(&url).send().await {
                    Ok(r) if r.status().is_success() => {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        eprintln!("failed request: {other:?}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    opts.generation = 2;
    let config = render(&inputs("/datasets/ds", &[a, b], ""), &opts).config;
    nginx.reload(&config, 2).await.expect("reload 2");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    opts.generation = 3;
    let config = render(&inputs("/datasets/ds", &[b], ""), &opts).config;
    nginx.reload(&config, 3).await.expect("reload 3");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.expect("reader");
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
    assert!(served.load(Ordering::Relaxed) > 20, "readers made progress");
    assert_eq!(get("/datasets/ds/x").await, (200, "b /datasets/ds/x".into()));

    // An invalid config is refused and the running one keeps serving.
    let err = nginx
        .reload("events {} http { bogus; }", 4)
        .await
        .expect_err("invalid config");
    assert!(err.to_string().contains("bogus"), "{err}");
    assert_eq!(get("/datasets/ds/x").await.0, 200);
    assert_eq!(nginx.generation(), 3);

    // Annotations reach nginx: rewrite-target strips the prefix, body size is enforced.
    opts.generation = 5;
    let config = render(
        &inputs(
            "/api(/|$)(.*)",
            &[a],
            r#""nginx.ingress.kubernetes.io/rewrite-target": "/$2", "nginx.ingress.kubernetes.io/proxy-body-size": "1k""#,
        ),
        &opts,
    )
    .config;
    nginx.reload(&config, 5).await.expect("reload 5");
    assert_eq!(get("/api/zarr/.zattrs").await, (200, "a /zarr/.zattrs".into()));
    let big = client
        .post(format!("{base}/api/x"))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .expect("post");
    assert_eq!(big.status().as_u16(), 413);
    nginx.stop().await;
}

/// A TLS host: HTTPS with the Secret's certificate (SNI), HTTP redirected with 308, and the
/// default server still plain HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_hosts_get_https_and_a_redirect() {
    let state = tempfile::tempdir().expect("tempdir");
    let a = backend("a").await;
    let mut inputs = inputs("/datasets/ds", &[a], "");
    // A self-signed certificate for zarr.example.org, written where the agent writes Secrets.
    let files = cloudify_e2e::ingress::render::tls_paths(state.path(), "data", "zarr-tls");
    std::fs::create_dir_all(files.cert.parent().expect("dir")).expect("mkdir");
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=zarr.example.org",
        ])
        .arg("-keyout")
        .arg(&files.key)
        .arg("-out")
        .arg(&files.cert)
        .output()
        .expect("openssl (Debian package openssl)");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    inputs.tls.insert(("data".into(), "zarr-tls".into()), files);
    let spec = inputs.ingresses[0].spec.as_mut().expect("spec");
    spec.tls = Some(vec![k8s_openapi::api::networking::v1::IngressTLS {
        hosts: Some(vec!["zarr.example.org".into()]),
        secret_name: Some("zarr-tls".into()),
    }]);
    let rules = spec.rules.as_mut().expect("rules");
    rules[0].host = Some("zarr.example.org".into());

    let mut opts = options(state.path(), 1);
    opts.https = Some(SocketAddr::from((
        Ipv4Addr::LOCALHOST,
        free_loopback_port().expect("port"),
    )));
    let rendered = render(&inputs, &opts);
    assert!(rendered.warnings.is_empty(), "{:?}", rendered.warnings);
    let nginx = Nginx::start(
        Path::new("/usr/sbin/nginx"),
        state.path(),
        &rendered.config,
        opts.status,
        1,
    )
    .await
    .expect("nginx starts with TLS");
    let https = opts.https.expect("https");
    let client = reqwest::Client::builder()
        .no_proxy()
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .resolve("zarr.example.org", https)
        .build()
        .expect("client");
    let resp = client
        .get(format!("https://zarr.example.org:{}/datasets/ds/x", https.port()))
        .send()
        .await
        .expect("https request");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.text().await.expect("body"), "a /datasets/ds/x");

    let plain = client
        .get(format!("http://{}/datasets/ds/x", opts.http))
        .header("Host", "zarr.example.org")
        .send()
        .await
        .expect("http request");
    assert_eq!(plain.status().as_u16(), 308);
    assert_eq!(
        plain.headers().get("location").and_then(|v| v.to_str().ok()),
        Some(format!("https://zarr.example.org:{}/datasets/ds/x", https.port()).as_str())
    );
    // Other hosts: the default server, no route there.
    let other = client
        .get(format!("http://{}/datasets/ds/x", opts.http))
        .send()
        .await
        .expect("get");
    assert_eq!(other.status().as_u16(), 404);
    nginx.stop().await;
}
