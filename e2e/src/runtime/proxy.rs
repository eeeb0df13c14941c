//! Service proxy: the stand-in for cluster DNS + kube-proxy, so in-cluster clients running on
//! this machine (the operator fetching a dataset server's STAC item) can reach a Service.
//!
//! `http://<proxy>/<namespace>/<service>/<port>/<path>` is forwarded to `<path>` on a ready
//! endpoint of that Service port (from the runtime's EndpointSlices), so the operator's
//! `--server-url-template` is `http://<proxy>/{namespace}/{service}/{port}`. Bodies are
//! buffered (the proxied answers are small JSON documents); no endpoint answers 503.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};

struct ProxyState {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    http: reqwest::Client,
    next: AtomicUsize,
}

fn store<K>(api: Api<K>, tasks: &mut Vec<tokio::task::JoinHandle<()>>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    tasks.push(tokio::spawn(async move {
        use futures::StreamExt;
        let mut stream = std::pin::pin!(stream);
        while stream.next().await.is_some() {}
    }));
    reader
}

/// Serves the proxy on `listener` until `shutdown` resolves.
pub async fn serve(
    client: Client,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut tasks = Vec::new();
    let state = Arc::new(ProxyState {
        services: store(Api::all(client.clone()), &mut tasks),
        slices: store(Api::all(client), &mut tasks),
        http: reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(std::io::Error::other)?,
        next: AtomicUsize::new(0),
    });
    let app = axum::Router::new()
        .route("/{namespace}/{service}/{port}", axum::routing::any(forward_root))
        .route(
            "/{namespace}/{service}/{port}/{*rest}",
            axum::routing::any(forward),
        )
        .with_state(state);
    let served = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    tasks.iter().for_each(|t| t.abort());
    served
}

async fn forward_root(
    State(state): State<Arc<ProxyState>>,
    Path((ns, svc, port)): Path<(String, String, String)>,
    method: Method,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    proxy(&state, &ns, &svc, &port, "", uri.query(), method, headers, body).await
}

async fn forward(
    State(state): State<Arc<ProxyState>>,
    Path((ns, svc, port, rest)): Path<(String, String, String, String)>,
    method: Method,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    proxy(
        &state,
        &ns,
        &svc,
        &port,
        &rest,
        uri.query(),
        method,
        headers,
        body,
    )
    .await
}

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

#[allow(clippy::too_many_arguments)]
async fn proxy(
    state: &ProxyState,
    ns: &str,
    svc: &str,
    port: &str,
    rest: &str,
    query: Option<&str>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let targets = match super::cluster_ip::ready_endpoint_ports(&state.services, &state.slices, ns, svc, port)
    {
        Ok(t) => t,
        Err(e) => return error(StatusCode::NOT_FOUND, e.to_string()),
    };
    if targets.is_empty() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no ready endpoints for service {ns}/{svc} port {port}"),
        );
    }
    let target = targets[state.next.fetch_add(1, Ordering::Relaxed) % targets.len()];
    let mut url = format!("http://127.0.0.1:{target}/{rest}");
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    let mut req = state.http.request(method, &url).body(body);
    for (name, value) in &headers {
        if name != axum::http::header::HOST {
            req = req.header(name, value);
        }
    }
    match req.send().await {
        Err(e) => error(StatusCode::BAD_GATEWAY, format!("{url}: {e}")),
        Ok(resp) => {
            let status = resp.status();
            let headers = resp.headers().clone();
            match resp.bytes().await {
                Ok(bytes) => {
                    let mut out = (status, bytes).into_response();
                    for (name, value) in &headers {
                        if name != axum::http::header::CONTENT_LENGTH
                            && name != axum::http::header::TRANSFER_ENCODING
                        {
                            out.headers_mut().insert(name, value.clone());
                        }
                    }
                    out
                }
                Err(e) => error(StatusCode::BAD_GATEWAY, format!("{url}: {e}")),
            }
        }
    }
}
