//! The reconciler against a mocked API server: which calls it makes (server-side apply
//! bodies and parameters, pruning by label and owner, status patches, finalizers, events) and
//! how it treats invalid specs (Degraded, wait for a change) versus transient failures
//! (exponential backoff).

mod common;

use std::sync::Arc;
use std::time::Duration;

use cloudify_crds::k8s::CloudifyDataset;
use cloudify_operator::build::{self, Settings};
use cloudify_operator::controller::{FINALIZER, RESYNC, error_policy, reconcile};
use common::{Call, UID, context, cr, cr_path, echo_apply, empty_list, mock_client, status_error};
use kube::runtime::controller::Action;
use serde_json::{Value, json};

/// A metadata list answer with `items` (each given as its metadata).
fn meta_list(items: Vec<Value>) -> (u16, Value) {
    let items: Vec<Value> = items
        .into_iter()
        .map(|m| json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": m}))
        .collect();
    (
        200,
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
               "metadata": {"resourceVersion": "9"}, "items": items}),
    )
}

fn owned_labels(name: &str) -> Value {
    json!({"app.kubernetes.io/name": "cloudify", "app.kubernetes.io/instance": name,
           "app.kubernetes.io/component": "server", "app.kubernetes.io/managed-by": "cloudify-operator"})
}

fn owner(uid: &str) -> Value {
    json!([{"apiVersion": "cloudify.io/v1alpha1", "kind": "CloudifyDataset", "name": "tas",
            "uid": uid, "controller": true, "blockOwnerDeletion": true}])
}

/// Answers for a cluster where the CR `obj` exists: `special` first, then applies echo, status patches and
/// finalizer patches answer the CR, events are accepted, other reads find nothing.
fn cluster<L>(
    obj: &Value,
    available: i32,
    special: L,
) -> impl Fn(&Call) -> (u16, Value) + Send + 'static + use<L>
where
    L: Fn(&Call) -> Option<(u16, Value)> + Send + 'static,
{
    let obj = obj.clone();
    move |call: &Call| {
        if let Some(answer) = special(call) {
            return answer;
        }
        if call.is_apply() {
            return echo_apply(call, available);
        }
        match call.method.as_str() {
            // single objects (the CR's Deployment, the internal Secret) do not exist yet
            "GET" if call.path.ends_with("/tas") || call.path.ends_with("/tas-internal") => {
                status_error(404, "NotFound", "not found")
            }
            "GET" => empty_list("v1", "List"),
            "PATCH" => (200, obj.clone()),
            "POST" => (201, call.body.clone()),
            "DELETE" => (
                200,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            ),
            _ => status_error(405, "MethodNotAllowed", "unexpected"),
        }
    }
}

fn typed(obj: &kube::api::DynamicObject) -> CloudifyDataset {
    serde_json::from_value(serde_json::to_value(obj).expect("json")).expect("typed CR")
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

#[tokio::test]
async fn applies_desired_objects_prunes_leftovers_and_writes_status() {
    // Fixed replicas, ingress on, registration off (registration has its own tests).
    let obj = cr("tas", json!({"catalog": {"register": false}}), 3);
    let obj_json = serde_json::to_value(&obj).expect("json");
    let hpa_path = "/apis/autoscaling/v2/namespaces/climate/horizontalpodautoscalers";
    let pdb_path = "/apis/policy/v1/namespaces/climate/poddisruptionbudgets";
    let (client, calls) = mock_client(cluster(&obj_json, 1, move |call| {
        if call.method != "GET" {
            return None;
        }
        match call.path.as_str() {
            // An HPA left from when the spec autoscaled: ours, no longer wanted.
            p if p == hpa_path => Some(meta_list(vec![json!({
                "name": "tas", "namespace": "climate", "uid": "hpa-uid",
                "labels": owned_labels("tas"), "ownerReferences": owner(UID)})])),
            // Same labels but owned by another CR (different uid): never touched.
            p if p == pdb_path => Some(meta_list(vec![json!({
                "name": "tas", "namespace": "climate", "uid": "pdb-uid",
                "labels": owned_labels("tas"), "ownerReferences": owner("someone-else")})])),
            _ => None,
        }
    }));
    let ctx = context(client, "http://127.0.0.1:1", "http://127.0.0.1:1", None);

    let action = reconcile(Arc::new(obj.clone()), ctx.clone())
        .await
        .expect("reconcile");
    assert_eq!(action, Action::requeue(RESYNC));

    // Server-side applies: exactly the objects `build` computes, in dependency order.
    let desired = build::build(&typed(&obj), &Settings::default()).expect("build");
    let applies = calls.find(Call::is_apply);
    let kinds: Vec<&str> = applies.iter().filter_map(|c| c.body["kind"].as_str()).collect();
    // the Service <name>-status after <name>: the operator reads unready pods' /status through it
    assert_eq!(
        kinds,
        ["ConfigMap", "Service", "Service", "Deployment", "Ingress"]
    );
    assert_eq!(applies[0].path, "/api/v1/namespaces/climate/configmaps/tas");
    assert_eq!(
        applies[3].path,
        "/apis/apps/v1/namespaces/climate/deployments/tas"
    );
    assert_eq!(
        applies[0].body,
        serde_json::to_value(&desired.config_map).expect("json")
    );
    assert_eq!(
        applies[3].body,
        serde_json::to_value(&desired.deployment).expect("json")
    );
    assert_eq!(applies[3].body["metadata"]["ownerReferences"][0]["uid"], UID);
    assert_eq!(applies[3].body["spec"]["replicas"], 1);
    assert_eq!(
        applies[4].body,
        serde_json::to_value(desired.ingress.as_ref().expect("ingress")).expect("json")
    );

    // Pruning lists every kind by our labels and deletes only the owned leftover.
    let lists = calls.find(|c| c.method == "GET");
    assert_eq!(lists.len(), 7, "{lists:#?}");
    for l in &lists {
        assert!(
            l.query.contains("labelSelector=app.kubernetes.io%2Finstance%3Dtas%2Capp.kubernetes.io%2Fmanaged-by%3Dcloudify-operator"),
            "{}",
            l.query
        );
    }
    let deletes = calls.find(|c| c.method == "DELETE");
    assert_eq!(deletes.len(), 1, "{deletes:#?}");
    assert_eq!(deletes[0].path, format!("{hpa_path}/tas"));
    assert_eq!(deletes[0].body["preconditions"]["uid"], "hpa-uid");

    // Status through the status subresource.
    let patches = calls.find(|c| c.method == "PATCH" && c.path.ends_with("/status"));
    assert_eq!(patches.len(), 1);
    assert_eq!(patches[0].path, format!("{}/status", cr_path("tas")));
    assert_eq!(patches[0].content_type, "application/merge-patch+json");
    let status = &patches[0].body["status"];
    assert_eq!(status["observedGeneration"], 3);
    assert_eq!(status["url"], "http://tas.climate.svc:9000/datasets/tas/zarr");
    assert_eq!(status["replicas"], 1);
    assert!(status["stacItem"].is_null());
    let types: Vec<&str> = status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .filter_map(|c| c["type"].as_str())
        .collect();
    assert_eq!(types, ["Ready", "Progressing", "Degraded", "Registered"]);
    let ready = condition(status, "Ready");
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("True"), Some("Available"))
    );
    assert_eq!(ready["message"], "1 of 1 replicas available");
    assert_eq!(ready["observedGeneration"], 3);
    assert!(ready["lastTransitionTime"].is_string());
    assert_eq!(condition(status, "Progressing")["reason"], "Complete");
    assert_eq!(condition(status, "Degraded")["status"], "False");
    assert_eq!(condition(status, "Registered")["reason"], "Disabled");

    // No finalizer without registration; an event for becoming Ready.
    assert!(
        calls
            .find(|c| c.content_type == "application/json-patch+json")
            .is_empty()
    );
    let events =
        calls.find(|c| c.method == "POST" && c.path == "/apis/events.k8s.io/v1/namespaces/climate/events");
    let reasons: Vec<&str> = events.iter().filter_map(|e| e.body["reason"].as_str()).collect();
    assert_eq!(reasons, ["Ready"]);
    assert_eq!(events[0].body["regarding"]["uid"], UID);
    assert_eq!(events[0].body["reportingController"], "cloudify-operator");
}

#[tokio::test]
async fn dataset_name_defaults_to_the_cr_name() {
    // A manifest without spec.dataset.name: the dataset is served under metadata.name.
    let obj = cr(
        "tas",
        json!({"dataset": {"sources": ["/data/tas_*.nc"]}, "catalog": {"register": false}}),
        1,
    );
    assert!(obj.data["spec"]["dataset"].get("name").is_none());
    let obj_json = serde_json::to_value(&obj).expect("json");
    let (client, calls) = mock_client(cluster(&obj_json, 1, |_| None));
    let ctx = context(client, "http://127.0.0.1:1", "http://127.0.0.1:1", None);
    let action = reconcile(Arc::new(obj), ctx).await.expect("reconcile");
    assert_eq!(action, Action::requeue(RESYNC), "not Degraded: waits for nothing");

    let applies = calls.find(Call::is_apply);
    let kinds: Vec<&str> = applies.iter().filter_map(|c| c.body["kind"].as_str()).collect();
    // the Service <name>-status after <name>: the operator reads unready pods' /status through it
    assert_eq!(
        kinds,
        ["ConfigMap", "Service", "Service", "Deployment", "Ingress"]
    );
    // the server's config file holds the resolved name
    let config = applies[0].body["data"]["cloudify.yaml"].as_str().expect("config");
    let config: cloudify_crds::ServeConfig = serde_yaml::from_str(config).expect("config file");
    assert_eq!(config.datasets[0].name, "tas");
    assert_eq!(
        applies[4].body["spec"]["rules"][0]["http"]["paths"][0]["path"],
        "/datasets/tas"
    );
    let patches = calls.find(|c| c.method == "PATCH" && c.path.ends_with("/status"));
    let status = &patches[0].body["status"];
    assert_eq!(status["url"], "http://tas.climate.svc:9000/datasets/tas/zarr");
    assert_eq!(condition(status, "Degraded")["status"], "False", "{status}");
    assert_eq!(condition(status, "Ready")["status"], "True", "{status}");
}

#[tokio::test]
async fn unchanged_status_is_not_written_again() {
    let obj = cr("tas", json!({"catalog": {"register": false}}), 1);
    let obj_json = serde_json::to_value(&obj).expect("json");
    let (client, calls) = mock_client(cluster(&obj_json, 1, |_| None));
    let ctx = context(client, "http://127.0.0.1:1", "http://127.0.0.1:1", None);
    reconcile(Arc::new(obj.clone()), ctx.clone())
        .await
        .expect("first");
    let written = calls.find(|c| c.path.ends_with("/status"))[0].body["status"].clone();

    // The CR as the API server now has it: the same reconcile must not patch again (no
    // watch-event loop) and must not emit the Ready event twice.
    let mut again = serde_json::to_value(&obj).expect("json");
    again["status"] = written;
    let again: kube::api::DynamicObject = serde_json::from_value(again).expect("cr");
    let before = calls.all().len();
    reconcile(Arc::new(again), ctx).await.expect("second");
    let after = calls.all()[before..].to_vec();
    assert!(after.iter().all(|c| !c.path.ends_with("/status")), "{after:#?}");
    assert!(after.iter().all(|c| c.method != "POST"), "{after:#?}");
}

#[tokio::test]
async fn autoscaled_deployment_is_applied_without_replicas() {
    let obj = cr(
        "tas",
        json!({"catalog": {"register": false}, "replicas": {"min": 2, "max": 5},
               "resources": {"requests": {"cpu": "500m"}}}),
        1,
    );
    let obj_json = serde_json::to_value(&obj).expect("json");
    let (client, calls) = mock_client(cluster(&obj_json, 2, |_| None));
    let ctx = context(client, "http://127.0.0.1:1", "http://127.0.0.1:1", None);
    reconcile(Arc::new(obj), ctx).await.expect("reconcile");
    let applies = calls.find(Call::is_apply);
    let kinds: Vec<&str> = applies.iter().filter_map(|c| c.body["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "Service",
            "Service",
            "Deployment",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "Ingress"
        ]
    );
    let deployment = &applies[3].body;
    assert!(deployment["spec"].get("replicas").is_none(), "{deployment}");
    assert!(calls.find(|c| c.method == "DELETE").is_empty());
}

#[tokio::test]
async fn invalid_spec_is_degraded_and_waits_for_a_change() {
    // min > max: the CRD's CEL rule rejects this at admission; an object stored under an
    // older schema can still have it.
    let obj = cr("tas", json!({"replicas": {"min": 3, "max": 2}}), 4);
    let obj_json = serde_json::to_value(&obj).expect("json");
    let (client, calls) = mock_client(cluster(&obj_json, 1, |call| {
        (call.method == "GET" && call.path == "/apis/apps/v1/namespaces/climate/deployments/tas")
            .then(|| status_error(404, "NotFound", "deployments.apps \"tas\" not found"))
    }));
    let ctx = context(client, "http://127.0.0.1:1", "http://127.0.0.1:1", None);

    let action = reconcile(Arc::new(obj), ctx)
        .await
        .expect("invalid specs are not errors");
    assert_eq!(action, Action::await_change());

    // Nothing applied, nothing deleted, no finalizer.
    assert!(calls.find(Call::is_apply).is_empty());
    assert!(calls.find(|c| c.method == "DELETE").is_empty());
    assert!(
        calls
            .find(|c| c.content_type == "application/json-patch+json")
            .is_empty()
    );

    let patch = &calls.find(|c| c.path.ends_with("/status"))[0].body["status"];
    assert_eq!(patch["observedGeneration"], 4);
    let degraded = condition(patch, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "InvalidSpec");
    let message = degraded["message"].as_str().expect("message");
    assert!(message.contains("spec.replicas.min"), "{message}");
    assert_eq!(condition(patch, "Ready")["reason"], "InvalidSpec");
    let events = calls.find(|c| c.method == "POST");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].body["reason"], "Degraded");
    assert_eq!(events[0].body["type"], "Warning");
}

#[tokio::test]
async fn object_rejected_by_the_api_server_is_degraded() {
    let obj = cr("tas", json!({"catalog": {"register": false}}), 1);
    let obj_json = serde_json::to_value(&obj).expect("json");
    let (client, calls) = mock_client(cluster(&obj_json, 1, |call| {
        (call.is_apply() && call.body["kind"] == "Deployment").then(|| {
            status_error(422, "Invalid", "Deployment.apps \"tas\" is invalid: spec.template.spec.containers[0].resources.requests: Invalid value")
        })
    }));
    let ctx = context(client, "http://127.0.0.1:1", "http://127.0.0.1:1", None);
    let action = reconcile(Arc::new(obj), ctx)
        .await
        .expect("rejections are not errors");
    assert_eq!(action, Action::await_change());
    let patch = &calls.find(|c| c.path.ends_with("/status"))[0].body["status"];
    let degraded = condition(patch, "Degraded");
    assert_eq!(degraded["reason"], "ApplyRejected");
    assert!(
        degraded["message"]
            .as_str()
            .is_some_and(|m| m.contains("Deployment tas"))
    );
}

#[tokio::test]
async fn transient_failures_back_off_exponentially() {
    let obj = cr("tas", json!({"catalog": {"register": false}}), 1);
    let (client, calls) = mock_client(|call| {
        if call.is_apply() {
            status_error(500, "InternalError", "etcdserver: request timed out")
        } else {
            (201, call.body.clone())
        }
    });
    let ctx = context(client, "http://127.0.0.1:1", "http://127.0.0.1:1", None);
    let obj = Arc::new(obj);
    let mut delays = Vec::new();
    for _ in 0..4 {
        let err = reconcile(obj.clone(), ctx.clone())
            .await
            .expect_err("API server failing");
        assert!(err.to_string().contains("apply ConfigMap climate/tas"), "{err}");
        delays.push(error_policy(obj.clone(), &err, ctx.clone()));
    }
    let secs = |s| Action::requeue(Duration::from_secs(s));
    assert_eq!(delays, [secs(1), secs(2), secs(4), secs(8)]);
    // Nothing but the failed first apply each time: no status written from a failed run.
    assert!(calls.find(|c| c.path.ends_with("/status")).is_empty());
    let metrics = ctx.metrics.render();
    assert!(
        metrics.contains("cloudify_operator_reconcile_errors_total{error=\"kube\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cloudify_operator_reconciles_total 4"),
        "{metrics}"
    );
}

#[tokio::test]
async fn malformed_object_is_reported_not_fatal() {
    let mut raw = serde_json::to_value(cr("tas", json!({}), 2)).expect("json");
    raw["spec"]["replicas"] = json!("many");
    let obj: kube::api::DynamicObject = serde_json::from_value(raw.clone()).expect("dynamic");
    let (client, calls) = mock_client(cluster(&raw, 1, |_| None));
    let ctx = context(client, "http://127.0.0.1:1", "http://127.0.0.1:1", None);
    let action = reconcile(Arc::new(obj), ctx)
        .await
        .expect("malformed objects are not errors");
    assert_eq!(action, Action::await_change());
    assert!(calls.find(Call::is_apply).is_empty());
    let patch = &calls.find(|c| c.path.ends_with("/status"))[0].body["status"];
    let degraded = condition(patch, "Degraded");
    assert_eq!(degraded["reason"], "MalformedObject");
    assert!(
        degraded["message"].as_str().is_some_and(|m| m.contains("many")),
        "{degraded}"
    );
}

#[tokio::test]
async fn finalizer_is_added_before_registering_and_failures_do_not_block_serving() {
    // Registration on (the default); the dataset's server cannot be reached, so registration
    // fails — after the finalizer was added — while the dataset is served and Ready.
    let obj = cr("tas", json!({}), 1);
    let obj_json = serde_json::to_value(&obj).expect("json");
    let (client, calls) = mock_client(cluster(&obj_json, 1, |_| None));
    let ctx = context(client, "http://127.0.0.1:1", "http://127.0.0.1:1", None);
    let action = reconcile(Arc::new(obj), ctx.clone())
        .await
        .expect("registration failures are not errors");
    assert_eq!(action, Action::requeue(Duration::from_secs(1)));

    let finalizer = calls.find(|c| c.content_type == "application/json-patch+json");
    assert_eq!(finalizer.len(), 1);
    assert_eq!(finalizer[0].path, cr_path("tas"));
    assert_eq!(
        finalizer[0].body,
        json!([{"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
               {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}])
    );
    let status = &calls.find(|c| c.path.ends_with("/status"))[0].body["status"];
    assert_eq!(condition(status, "Ready")["status"], "True");
    let registered = condition(status, "Registered");
    assert_eq!(registered["status"], "False");
    assert_eq!(registered["reason"], "ItemUnavailable");
    assert!(
        registered["message"]
            .as_str()
            .is_some_and(|m| m.contains("http://127.0.0.1:1/datasets/tas/stac")),
        "{registered}"
    );
    let reasons: Vec<String> = calls
        .find(|c| c.method == "POST")
        .iter()
        .filter_map(|e| e.body["reason"].as_str().map(str::to_string))
        .collect();
    assert_eq!(reasons, ["Ready", "RegistrationFailed"]);

    // A watch event before the retry is due (the status write itself causes one): no new
    // attempt, so the backoff does not grow and nothing is written.
    let mut again = obj_json.clone();
    again["metadata"]["finalizers"] = json!([FINALIZER]);
    again["status"] = status.clone();
    let again: kube::api::DynamicObject = serde_json::from_value(again).expect("cr");
    let before = calls.all().len();
    let action = reconcile(Arc::new(again), ctx).await.expect("reconcile");
    assert_ne!(action, Action::requeue(Duration::from_secs(2)));
    assert_ne!(action, Action::requeue(RESYNC));
    let after = calls.all()[before..].to_vec();
    assert!(
        after
            .iter()
            .all(|c| c.method != "POST" && !c.path.ends_with("/status")),
        "{after:#?}"
    );
}

#[tokio::test]
async fn registration_waits_for_readiness() {
    let obj = cr("tas", json!({}), 1);
    let obj_json = serde_json::to_value(&obj).expect("json");
    let (client, calls) = mock_client(cluster(&obj_json, 0, |_| None));
    let ctx = context(client, "http://127.0.0.1:1", "http://127.0.0.1:1", None);
    let action = reconcile(Arc::new(obj), ctx).await.expect("reconcile");
    // no replica available and the server's /status unanswered: asked again soon
    assert_eq!(action, Action::requeue(Duration::from_secs(10)));
    assert!(
        calls
            .find(|c| c.content_type == "application/json-patch+json")
            .is_empty()
    );
    let status = &calls.find(|c| c.path.ends_with("/status"))[0].body["status"];
    assert_eq!(condition(status, "Ready")["reason"], "Unavailable");
    assert_eq!(condition(status, "Progressing")["status"], "True");
    assert_eq!(condition(status, "Registered")["reason"], "WaitingForReady");
    assert_eq!(status["replicas"], 0);
}

#[tokio::test]
async fn deleting_without_registration_only_releases_nothing() {
    // A CR being deleted that never registered has no finalizer: nothing to do, no calls.
    let mut raw = serde_json::to_value(cr("tas", json!({}), 1)).expect("json");
    raw["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    let obj: kube::api::DynamicObject = serde_json::from_value(raw.clone()).expect("dynamic");
    let (client, calls) = mock_client(cluster(&raw, 1, |_| None));
    let ctx = context(client, "http://127.0.0.1:1", "http://127.0.0.1:1", None);
    let action = reconcile(Arc::new(obj), ctx).await.expect("reconcile");
    assert_eq!(action, Action::await_change());
    assert!(calls.all().is_empty(), "{:#?}", calls.all());
}

#[tokio::test]
async fn catalog_down_on_delete_keeps_the_finalizer_and_retries() {
    let mut raw = serde_json::to_value(cr("tas", json!({}), 1)).expect("json");
    raw["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    raw["metadata"]["finalizers"] = json!([FINALIZER]);
    raw["status"] = json!({"stacItem": "http://127.0.0.1:1/collections/cloudify/items/tas"});
    let obj = Arc::new(serde_json::from_value::<kube::api::DynamicObject>(raw.clone()).expect("dynamic"));
    let (client, calls) = mock_client(cluster(&raw, 1, |_| None));
    let ctx = context(client, "http://127.0.0.1:1", "http://127.0.0.1:1", None);
    let err = reconcile(obj.clone(), ctx.clone())
        .await
        .expect_err("catalog unreachable");
    assert!(
        err.to_string()
            .contains("deregistering http://127.0.0.1:1/collections/cloudify/items/tas"),
        "{err}"
    );
    assert_eq!(
        error_policy(obj, &err, ctx),
        Action::requeue(Duration::from_secs(1))
    );
    assert!(
        calls
            .find(|c| c.content_type == "application/json-patch+json")
            .is_empty()
    );
    let events = calls.find(|c| c.method == "POST");
    assert_eq!(events[0].body["reason"], "DeregistrationFailed");
}

fn compute_labels(name: &str) -> Value {
    json!({"app.kubernetes.io/name": "cloudify", "app.kubernetes.io/instance": name,
           "app.kubernetes.io/component": "compute", "app.kubernetes.io/managed-by": "cloudify-operator"})
}

#[tokio::test]
async fn compute_pool_is_applied_and_its_replicas_reported() {
    let obj = cr(
        "tas",
        json!({"catalog": {"register": false}, "ingress": {"enabled": false},
               "compute": {"replicas": {"min": 2, "max": 2}}}),
        2,
    );
    let obj_json = serde_json::to_value(&obj).expect("json");
    // The apply echo reports 2 available for every Deployment, the worker one included.
    let (client, calls) = mock_client(cluster(&obj_json, 2, |_| None));
    let ctx = context(client, "http://127.0.0.1:1", "http://127.0.0.1:1", None);
    reconcile(Arc::new(obj.clone()), ctx).await.expect("reconcile");

    let desired = build::build(&typed(&obj), &Settings::default()).expect("build");
    let compute = desired.compute.as_ref().expect("compute");
    let applies = calls.find(Call::is_apply);
    let applied: Vec<(&str, &str)> = applies
        .iter()
        .filter_map(|c| Some((c.body["kind"].as_str()?, c.body["metadata"]["name"].as_str()?)))
        .collect();
    assert_eq!(
        applied,
        [
            // the worker secret first: the pods mount it
            ("Secret", "tas-internal"),
            ("ConfigMap", "tas"),
            ("Service", "tas"),
            ("Service", "tas-status"),
            ("Service", "tas-compute"),
            ("Deployment", "tas"),
            ("Deployment", "tas-compute"),
            ("PodDisruptionBudget", "tas-compute"),
        ]
    );
    let worker = applies
        .iter()
        .find(|c| c.path == "/apis/apps/v1/namespaces/climate/deployments/tas-compute")
        .expect("worker Deployment applied by name");
    assert_eq!(
        worker.body,
        serde_json::to_value(&compute.deployment).expect("json")
    );
    assert!(
        worker.query.contains("fieldManager=cloudify-operator"),
        "{}",
        worker.query
    );
    let server = &applies
        .iter()
        .find(|c| c.path == "/apis/apps/v1/namespaces/climate/deployments/tas")
        .expect("server Deployment applied by name")
        .body["spec"]["template"]["spec"]["containers"][0]["args"];
    let args: Vec<&str> = server
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        args.windows(2)
            .any(|w| w == ["--compute", "http://tas-compute.climate.svc:9000"]),
        "{args:?}"
    );
    // nothing of ours was left over: no deletes
    assert!(calls.find(|c| c.method == "DELETE").is_empty());

    let patches = calls.find(|c| c.method == "PATCH" && c.path.ends_with("/status"));
    let status = &patches[0].body["status"];
    assert_eq!(status["replicas"], 2);
    assert_eq!(status["computeReplicas"], 2);
}

#[tokio::test]
async fn turning_compute_off_deletes_the_compute_objects() {
    let obj = cr(
        "tas",
        json!({"catalog": {"register": false}, "ingress": {"enabled": false},
               "compute": {"enabled": false, "replicas": {"min": 2, "max": 2}}}),
        3,
    );
    let obj_json = serde_json::to_value(&obj).expect("json");
    let leftover = |uid: &str| {
        meta_list(vec![
            json!({"name": "tas-compute", "namespace": "climate", "uid": uid,
                              "labels": compute_labels("tas"), "ownerReferences": owner(UID)}),
        ])
    };
    let (client, calls) = mock_client(cluster(&obj_json, 1, move |call| {
        if call.method != "GET" {
            return None;
        }
        match call.path.as_str() {
            "/apis/apps/v1/namespaces/climate/deployments" => Some(leftover("dep-uid")),
            "/api/v1/namespaces/climate/services" => Some(leftover("svc-uid")),
            "/apis/policy/v1/namespaces/climate/poddisruptionbudgets" => Some(leftover("pdb-uid")),
            _ => None,
        }
    }));
    let ctx = context(client, "http://127.0.0.1:1", "http://127.0.0.1:1", None);
    reconcile(Arc::new(obj.clone()), ctx).await.expect("reconcile");

    let applied: Vec<String> = calls
        .find(Call::is_apply)
        .iter()
        .filter_map(|c| c.body["metadata"]["name"].as_str().map(String::from))
        .collect();
    assert!(
        applied.iter().all(|n| n == "tas" || n == "tas-status"),
        "{applied:?}"
    );
    let mut deleted: Vec<(String, Value)> = calls
        .find(|c| c.method == "DELETE")
        .into_iter()
        .map(|c| (c.path, c.body["preconditions"]["uid"].clone()))
        .collect();
    deleted.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        deleted,
        [
            (
                "/api/v1/namespaces/climate/services/tas-compute".to_string(),
                json!("svc-uid")
            ),
            (
                "/apis/apps/v1/namespaces/climate/deployments/tas-compute".to_string(),
                json!("dep-uid")
            ),
            (
                "/apis/policy/v1/namespaces/climate/poddisruptionbudgets/tas-compute".to_string(),
                json!("pdb-uid")
            ),
        ]
    );
    let patches = calls.find(|c| c.method == "PATCH" && c.path.ends_with("/status"));
    assert!(patches[0].body["status"]["computeReplicas"].is_null());
}

/// A dataset server whose every answer is `body` (200, JSON), like `cloudify serve`'s
/// `/status`; returns its URL (the `--server-url-template`) and the paths it was asked for.
fn status_server(body: &'static str) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = asked.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut line = String::new();
            if BufReader::new(&stream).read_line(&mut line).is_err() {
                continue;
            }
            if let (Ok(mut s), Some(path)) = (seen.lock(), line.split_whitespace().nth(1)) {
                s.push(path.to_string());
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, asked)
}

#[tokio::test]
async fn an_unavailable_dataset_shows_what_its_server_says_and_is_followed() {
    let opening = r#"{"datasets": [{"name": "tas", "state": "opening", "since_seconds": 3,
        "waiting_for": "recalling its files from tape to index them", "retry_after_seconds": 20}]}"#;
    let failed = r#"{"datasets": [{"name": "tas", "state": "failed",
        "error": "storage.tape: recall command 'slk' not found"}]}"#;
    for (body, ready_reason, degraded, requeue) in [
        (opening, "Opening", ("False", "Reconciled"), 20),
        (failed, "OpenFailed", ("True", "OpenFailed"), 60),
    ] {
        let obj = cr("tas", json!({}), 1);
        let obj_json = serde_json::to_value(&obj).expect("json");
        let (client, calls) = mock_client(cluster(&obj_json, 0, |_| None));
        let (server, asked) = status_server(body);
        let ctx = context(client, "http://127.0.0.1:1", &server, None);
        let action = reconcile(Arc::new(obj), ctx).await.expect("reconcile");
        assert_eq!(
            action,
            Action::requeue(Duration::from_secs(requeue)),
            "{ready_reason}"
        );
        assert_eq!(asked.lock().map(|a| a.clone()).unwrap_or_default(), ["/status"]);
        let status = &calls.find(|c| c.path.ends_with("/status"))[0].body["status"];
        let ready = condition(status, "Ready");
        assert_eq!(
            (&ready["status"], &ready["reason"]),
            (&json!("False"), &json!(ready_reason))
        );
        assert_eq!(ready["observedGeneration"], 1);
        let d = condition(status, "Degraded");
        assert_eq!(
            (&d["status"], &d["reason"]),
            (&json!(degraded.0), &json!(degraded.1))
        );
        if ready_reason == "OpenFailed" {
            assert!(
                d["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("recall command 'slk' not found")),
                "{d}"
            );
            let events = calls.find(|c| c.method == "POST" && c.path.contains("events"));
            assert!(
                events.iter().any(|e| e.body.to_string().contains("OpenFailed")),
                "{events:#?}"
            );
        } else {
            assert!(
                ready["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("recalling its files")),
                "{ready}"
            );
        }
    }

    // an available replica: the server's /status is not asked (the item may be, to register)
    let obj = cr("tas", json!({}), 1);
    let obj_json = serde_json::to_value(&obj).expect("json");
    let (client, _) = mock_client(cluster(&obj_json, 1, |_| None));
    let (server, asked) = status_server(failed);
    let ctx = context(client, "http://127.0.0.1:1", &server, None);
    reconcile(Arc::new(obj), ctx).await.expect("reconcile");
    let asked = asked.lock().map(|a| a.clone()).unwrap_or_default();
    assert!(!asked.iter().any(|p| p == "/status"), "{asked:?}");
}
