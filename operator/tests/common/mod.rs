//! A mocked Kubernetes API server (tower-test, as in kube-rs's controller-rs) that records
//! every request the reconciler makes and answers through a test-supplied function.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use cloudify_operator::build::Settings;
use cloudify_operator::controller::{Config, Context, api_resource};
use cloudify_operator::metrics::Metrics;
use http::{Request, Response};
use kube::Client;
use kube::api::DynamicObject;
use kube::client::Body;
use serde_json::{Value, json};

/// One request the reconciler made.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
}

impl Call {
    /// Server-side apply by the operator, forced.
    pub fn is_apply(&self) -> bool {
        self.method == "PATCH"
            && self.content_type == "application/apply-patch+yaml"
            && self.query.contains("fieldManager=cloudify-operator")
            && self.query.contains("force=true")
    }
}

/// The recorded calls.
#[derive(Clone, Default)]
pub struct Calls(Arc<Mutex<Vec<Call>>>);

impl Calls {
    pub fn all(&self) -> Vec<Call> {
        self.0.lock().expect("calls").clone()
    }
    pub fn find(&self, f: impl Fn(&Call) -> bool) -> Vec<Call> {
        self.all().into_iter().filter(|c| f(c)).collect()
    }
}

/// A client whose requests go to `respond` (status, body) and are recorded.
pub fn mock_client(respond: impl Fn(&Call) -> (u16, Value) + Send + 'static) -> (Client, Calls) {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let calls = Calls::default();
    let recorded = calls.clone();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.expect("request body");
            let body = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
            };
            let call = Call {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                query: parts.uri.query().unwrap_or_default().to_string(),
                content_type: parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string(),
                body,
            };
            let (status, answer) = respond(&call);
            recorded.0.lock().expect("calls").push(call);
            let resp = Response::builder()
                .status(status)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(&answer).expect("json")))
                .expect("response");
            send.send_response(resp);
        }
    });
    (Client::new(svc, "default"), calls)
}

/// A `Status` error body as the API server sends it.
pub fn status_error(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code}),
    )
}

/// An empty list of `kind`.
pub fn empty_list(api_version: &str, kind: &str) -> (u16, Value) {
    (
        200,
        json!({"apiVersion": api_version, "kind": format!("{kind}List"), "metadata": {"resourceVersion": "1"}, "items": []}),
    )
}

/// The reconciler context over `client`.
pub fn context(
    client: Client,
    catalog_url: &str,
    server_url_template: &str,
    token: Option<&str>,
) -> Arc<Context> {
    let config = Config {
        settings: Settings::default(),
        catalog_url: catalog_url.into(),
        catalog_token: token.map(str::to_string),
        server_url_template: server_url_template.into(),
    };
    Arc::new(
        Context::new(
            client,
            config,
            Metrics::new().expect("metrics"),
            Some("test".into()),
        )
        .expect("context"),
    )
}

pub const UID: &str = "6a1f1b9e-2c1d-4f43-9a57-3f0f5f0d1c01";

/// A CloudifyDataset as the API server would store it (uid, generation), `spec` merged in.
pub fn cr(name: &str, spec: Value, generation: i64) -> DynamicObject {
    let mut obj = json!({
        "apiVersion": "cloudify.io/v1alpha1",
        "kind": "CloudifyDataset",
        "metadata": {"name": name, "namespace": "climate", "uid": UID, "generation": generation,
                     "resourceVersion": "7"},
        "spec": {"dataset": {"name": name, "sources": ["/data/tas_*.nc"]}},
    });
    if let (Some(s), Value::Object(extra)) = (obj["spec"].as_object_mut(), spec) {
        s.extend(extra);
    }
    serde_json::from_value(obj).expect("DynamicObject")
}

/// The `ApiResource` path prefix of CloudifyDatasets in namespace `climate`.
pub fn cr_path(name: &str) -> String {
    let ar = api_resource();
    format!("/apis/{}/namespaces/climate/{}/{name}", ar.api_version, ar.plural)
}

/// An answer to server-side applies: the applied object, a Deployment with `status` (ready
/// when `available` > 0, observed).
pub fn echo_apply(call: &Call, available: i32) -> (u16, Value) {
    let mut obj = call.body.clone();
    if obj["kind"] == "Deployment" {
        obj["metadata"]["generation"] = json!(1);
        obj["status"] = json!({"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                               "readyReplicas": available, "availableReplicas": available});
    }
    (200, obj)
}
