//! The API emulator against kube-rs clients: CRUD, conflicts, selectors, paging, watch,
//! server-side apply, status subresource, finalizers, garbage collection, CRD validation,
//! Table output and persistence. Each test starts its own emulator on a free port.

use std::collections::BTreeMap;
use std::time::Duration;

use cloudify_e2e::apiserver::{Options, Server};
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::watcher;
use kube::{Client, Config};
use serde_json::{Value, json};

async fn start() -> (Server, Client) {
    start_with(None).await
}

async fn start_with(state_file: Option<std::path::PathBuf>) -> (Server, Client) {
    let server = Server::start(Options {
        addr: "127.0.0.1:0".parse().unwrap(),
        state_file,
    })
    .await
    .expect("emulator starts");
    let config = Config::new(server.url().parse().unwrap());
    let client = Client::try_from(config).expect("client");
    (server, client)
}

fn api_err(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn cm(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "demo", "n": name}},
        "data": data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()
    }))
    .unwrap()
}

#[tokio::test]
async fn crud_conflicts_and_selectors() {
    let (server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let created = cms
        .create(&PostParams::default(), &cm("a", &[("k", "v")]))
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    let rv1 = created.metadata.resource_version.clone().unwrap();

    let dup = api_err(
        cms.create(&PostParams::default(), &cm("a", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!((dup.code, dup.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(dup.message, "configmaps \"a\" already exists");

    let mut upd = created.clone();
    upd.data = Some(BTreeMap::from([("k".into(), "v2".into())]));
    let updated = cms.replace("a", &PostParams::default(), &upd).await.unwrap();
    assert_ne!(updated.metadata.resource_version.as_deref(), Some(rv1.as_str()));
    // The stale resourceVersion is refused.
    let stale = api_err(cms.replace("a", &PostParams::default(), &upd).await.unwrap_err());
    assert_eq!((stale.code, stale.reason.as_str()), (409, "Conflict"));
    assert!(
        stale.message.contains("the object has been modified"),
        "{}",
        stale.message
    );

    cms.create(&PostParams::default(), &cm("b", &[])).await.unwrap();
    cms.create(&PostParams::default(), &cm("c", &[])).await.unwrap();
    let names = |l: kube::core::ObjectList<ConfigMap>| {
        l.items
            .into_iter()
            .map(|c| c.metadata.name.unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(
            cms.list(&ListParams::default().labels("n in (a,c)"))
                .await
                .unwrap()
        ),
        vec!["a", "c"]
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().labels("app=demo,n!=b"))
                .await
                .unwrap()
        ),
        vec!["a", "c"]
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().fields("metadata.name=b"))
                .await
                .unwrap()
        ),
        vec!["b"]
    );
    let bad = api_err(
        cms.list(&ListParams::default().fields("data.k=v"))
            .await
            .unwrap_err(),
    );
    assert_eq!((bad.code, bad.reason.as_str()), (400, "BadRequest"));

    // Paging with limit/continue.
    let page1 = cms.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(page1.items.len(), 2);
    let token = page1.metadata.continue_.clone().expect("continue token");
    assert_eq!(page1.metadata.remaining_item_count, Some(1));
    let page2 = cms
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(page2), vec!["c"]);

    // Missing namespace: 404 on the namespace, like the real server.
    let other: Api<ConfigMap> = Api::namespaced(client.clone(), "nowhere");
    let nf = api_err(
        other
            .create(&PostParams::default(), &cm("x", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (nf.code, nf.reason.as_str(), nf.message.as_str()),
        (404, "NotFound", "namespaces \"nowhere\" not found")
    );

    // Invalid name → 422 naming metadata.name.
    let inv = api_err(
        cms.create(&PostParams::default(), &cm("Not_Valid", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!((inv.code, inv.reason.as_str()), (422, "Invalid"));
    assert!(
        inv.message
            .contains("metadata.name: Invalid value: \"Not_Valid\""),
        "{}",
        inv.message
    );

    cms.delete("a", &DeleteParams::default()).await.unwrap();
    let gone = api_err(cms.get("a").await.unwrap_err());
    assert_eq!((gone.code, gone.reason.as_str()), (404, "NotFound"));
    cms.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("app=demo"),
    )
    .await
    .unwrap();
    assert!(cms.list(&ListParams::default()).await.unwrap().items.is_empty());

    // Service defaults clients rely on.
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(
        json!({"metadata": {"name": "s"}, "spec": {"selector": {"a": "b"}, "ports": [{"port": 80}]}}),
    )
    .unwrap();
    let svc = svcs.create(&PostParams::default(), &svc).await.unwrap();
    let spec = svc.spec.unwrap();
    assert!(
        spec.cluster_ip
            .as_deref()
            .is_some_and(|ip| ip.starts_with("10.96."))
    );
    assert_eq!(
        spec.ports.unwrap()[0].target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(80))
    );
    server.shutdown().await;
}

#[tokio::test]
async fn watch_from_resource_version_and_gone() {
    let (server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let list = cms.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.clone().unwrap();
    cms.create(&PostParams::default(), &cm("w", &[("a", "1")]))
        .await
        .unwrap();
    cms.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"a": "2"}})),
    )
    .await
    .unwrap();
    cms.delete("w", &DeleteParams::default()).await.unwrap();
    // Watch from the list's version replays exactly the three changes, in order.
    let stream = cms.watch(&WatchParams::default().timeout(2), &rv).await.unwrap();
    let events: Vec<_> = stream.try_collect().await.unwrap();
    let kinds: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            WatchEvent::Added(c) => Some(format!("ADDED {}", c.data.as_ref().unwrap()["a"])),
            WatchEvent::Modified(c) => Some(format!("MODIFIED {}", c.data.as_ref().unwrap()["a"])),
            WatchEvent::Deleted(_) => Some("DELETED".into()),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, vec!["ADDED 1", "MODIFIED 2", "DELETED"]);

    // After compaction the old version is gone: an ERROR event with 410 Expired.
    server.compact();
    let mut stream = cms
        .watch(&WatchParams::default().timeout(2), &rv)
        .await
        .unwrap()
        .boxed();
    match stream.next().await {
        Some(Ok(WatchEvent::Error(e))) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }

    // Bookmarks carry the current version.
    let mut stream = cms
        .watch(&WatchParams::default().timeout(7), "0")
        .await
        .unwrap()
        .boxed();
    let mut saw_bookmark = false;
    while let Some(ev) = stream.next().await {
        if let WatchEvent::Bookmark(b) = ev.unwrap() {
            assert!(!b.metadata.resource_version.is_empty());
            saw_bookmark = true;
            break;
        }
    }
    assert!(saw_bookmark, "no BOOKMARK within the timeout");
    server.shutdown().await;
}

#[tokio::test]
async fn kube_runtime_watcher_sees_changes_with_both_list_strategies() {
    let (server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("pre", &[])).await.unwrap();
    for cfg in [
        watcher::Config::default(),
        watcher::Config::default().streaming_lists(),
    ] {
        let mut events = watcher(cms.clone(), cfg.labels("app=demo")).boxed();
        let mut seen_init = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(5), events.next())
                .await
                .expect("watcher event")
                .unwrap()
                .unwrap()
            {
                watcher::Event::InitApply(c) => seen_init.push(c.metadata.name.unwrap()),
                watcher::Event::InitDone => break,
                _ => {}
            }
        }
        assert_eq!(seen_init, vec!["pre"]);
        let name = format!("live-{}", uuid_like());
        cms.create(&PostParams::default(), &cm(&name, &[])).await.unwrap();
        match tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("watcher event")
            .unwrap()
            .unwrap()
        {
            watcher::Event::Apply(c) => assert_eq!(c.metadata.name.as_deref(), Some(name.as_str())),
            other => panic!("unexpected {other:?}"),
        }
        // A label change that stops matching is a deletion for a selector-filtered watch.
        cms.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"app": "other"}}})),
        )
        .await
        .unwrap();
        match tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("watcher event")
            .unwrap()
            .unwrap()
        {
            watcher::Event::Delete(c) => assert_eq!(c.metadata.name.as_deref(), Some(name.as_str())),
            other => panic!("unexpected {other:?}"),
        }
    }
    server.shutdown().await;
}

fn uuid_like() -> String {
    format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 1_000_000
    )
}

#[tokio::test]
async fn server_side_apply_ownership_conflicts_and_removal() {
    let (server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let a = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa", "labels": {"l": "1"}}, "data": {"x": "1", "y": "2"}});
    // Create on apply.
    let o = cms
        .patch("ssa", &PatchParams::apply("alice"), &Patch::Apply(&a))
        .await
        .unwrap();
    let mf = o.metadata.managed_fields.clone().unwrap();
    assert_eq!(mf.len(), 1);
    assert_eq!(
        (mf[0].manager.as_deref(), mf[0].operation.as_deref()),
        (Some("alice"), Some("Apply"))
    );
    let fields = serde_json::to_value(&mf[0].fields_v1).unwrap();
    assert_eq!(
        fields,
        json!({"f:data": {"f:x": {}, "f:y": {}}, "f:metadata": {"f:labels": {"f:l": {}}}})
    );

    // Bob sets x to another value: conflict naming the field and the owner.
    let b =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"x": "bob"}});
    let err = api_err(
        cms.patch("ssa", &PatchParams::apply("bob"), &Patch::Apply(&b))
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        err.message,
        "Apply failed with 1 conflict: conflict with \"alice\" using v1: .data.x"
    );
    // Same value: shared ownership, no conflict.
    let same =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"y": "2"}});
    cms.patch("ssa", &PatchParams::apply("carol"), &Patch::Apply(&same))
        .await
        .unwrap();
    // Forced: bob takes x.
    let o = cms
        .patch("ssa", &PatchParams::apply("bob").force(), &Patch::Apply(&b))
        .await
        .unwrap();
    assert_eq!(o.data.as_ref().unwrap()["x"], "bob");
    // Alice stops applying x and y and the label: x is bob's, y is shared with carol, the label
    // was alice's alone and goes.
    let a2 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {}});
    let o = cms
        .patch("ssa", &PatchParams::apply("alice"), &Patch::Apply(&a2))
        .await
        .unwrap();
    assert_eq!(
        o.data.unwrap(),
        BTreeMap::from([("x".into(), "bob".into()), ("y".into(), "2".into())])
    );
    assert!(o.metadata.labels.unwrap_or_default().is_empty());

    // Re-applying the same configuration is a no-op: the resourceVersion does not move.
    let before = cms.get("ssa").await.unwrap().metadata.resource_version;
    cms.patch("ssa", &PatchParams::apply("bob"), &Patch::Apply(&b))
        .await
        .unwrap();
    assert_eq!(cms.get("ssa").await.unwrap().metadata.resource_version, before);

    // An apply without a field manager is refused.
    let raw = client
        .request_text(http_request(
            "PATCH",
            "/api/v1/namespaces/default/configmaps/ssa",
            "application/apply-patch+yaml",
            b.to_string(),
        ))
        .await
        .unwrap_err();
    assert_eq!(api_err(raw).code, 400);
    server.shutdown().await;
}

fn http_request(method: &str, path: &str, content_type: &str, body: String) -> axum::http::Request<Vec<u8>> {
    axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("Content-Type", content_type)
        .body(body.into_bytes())
        .unwrap()
}

#[tokio::test]
async fn finalizers_and_garbage_collection() {
    let (server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");

    // Finalizer: delete only marks; removing the last finalizer completes the deletion.
    let mut f = cm("fin", &[]);
    f.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    cms.create(&PostParams::default(), &f).await.unwrap();
    cms.delete("fin", &DeleteParams::default()).await.unwrap();
    let marked = cms.get("fin").await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    let added = api_err(
        cms.patch(
            "fin",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/hold", "x/y"]}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(added.code, 403);
    cms.patch(
        "fin",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert_eq!(api_err(cms.get("fin").await.unwrap_err()).code, 404);

    let owner_ref = |o: &ConfigMap| json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": o.metadata.name, "uid": o.metadata.uid, "blockOwnerDeletion": true}]);
    let secret = |name: &str, owner: &ConfigMap, finalizers: Vec<&str>| -> Secret {
        serde_json::from_value(json!({"metadata": {"name": name, "ownerReferences": owner_ref(owner), "finalizers": finalizers}, "stringData": {"a": "b"}})).unwrap()
    };

    // Background (default): dependents go after the owner.
    let owner = cms
        .create(&PostParams::default(), &cm("owner", &[]))
        .await
        .unwrap();
    secrets
        .create(&PostParams::default(), &secret("dep", &owner, vec![]))
        .await
        .unwrap();
    cms.delete("owner", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_err(secrets.get("dep").await.unwrap_err()).code, 404);

    // Foreground: the owner waits (foregroundDeletion finalizer) for its dependents.
    let owner = cms.create(&PostParams::default(), &cm("fg", &[])).await.unwrap();
    secrets
        .create(
            &PostParams::default(),
            &secret("fgdep", &owner, vec!["example.com/hold"]),
        )
        .await
        .unwrap();
    cms.delete("fg", &DeleteParams::foreground()).await.unwrap();
    let waiting = cms.get("fg").await.unwrap();
    assert!(waiting.metadata.deletion_timestamp.is_some());
    assert_eq!(
        waiting.metadata.finalizers,
        Some(vec!["foregroundDeletion".to_string()])
    );
    assert!(
        secrets
            .get("fgdep")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    secrets
        .patch(
            "fgdep",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(json!([{"op": "remove", "path": "/metadata/finalizers"}])).unwrap(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(api_err(secrets.get("fgdep").await.unwrap_err()).code, 404);
    assert_eq!(api_err(cms.get("fg").await.unwrap_err()).code, 404);

    // Orphan: dependents stay, without the owner reference.
    let owner = cms.create(&PostParams::default(), &cm("or", &[])).await.unwrap();
    secrets
        .create(&PostParams::default(), &secret("ordep", &owner, vec![]))
        .await
        .unwrap();
    cms.delete("or", &DeleteParams::orphan()).await.unwrap();
    assert_eq!(api_err(cms.get("or").await.unwrap_err()).code, 404);
    assert!(
        secrets
            .get("ordep")
            .await
            .unwrap()
            .metadata
            .owner_references
            .is_none()
    );

    // Namespace deletion removes its contents.
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "tmp"}})).unwrap(),
    )
    .await
    .unwrap();
    let tmp: Api<ConfigMap> = Api::namespaced(client.clone(), "tmp");
    tmp.create(&PostParams::default(), &cm("inside", &[]))
        .await
        .unwrap();
    nss.delete("tmp", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_err(nss.get("tmp").await.unwrap_err()).code, 404);
    assert_eq!(api_err(tmp.get("inside").await.unwrap_err()).code, 404);
    server.shutdown().await;
}

async fn install_crd(client: &Client) -> Api<DynamicObject> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/cloudifydataset.yaml");
    let crd: CustomResourceDefinition =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let created = crds
        .patch(
            "cloudifydatasets.cloudify.io",
            &PatchParams::apply("test"),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
    let conds = created.status.unwrap().conditions.unwrap();
    assert!(
        conds
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    );
    let gvk = GroupVersionKind::gvk("cloudify.io", "v1alpha1", "CloudifyDataset");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "cloudifydatasets");
    Api::namespaced_with(client.clone(), "default", &ar)
}

fn dataset(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({"apiVersion": "cloudify.io/v1alpha1", "kind": "CloudifyDataset", "metadata": {"name": name}, "spec": spec})).unwrap()
}

#[tokio::test]
async fn crd_schema_validation_defaulting_cel_and_status() {
    let (server, client) = start().await;
    let cds = install_crd(&client).await;

    // Defaults from the schema are filled in; unknown fields pruned.
    let ok = dataset(
        "ok",
        json!({"dataset": {"name": "d", "sources": ["/x/*.nc"]}, "unknownField": 1}),
    );
    let created = cds.create(&PostParams::default(), &ok).await.unwrap();
    assert_eq!(created.data["spec"]["replicas"], json!({"min": 1, "max": 1}));
    assert_eq!(
        created.data["spec"]["ingress"],
        json!({"enabled": true, "className": "nginx"})
    );
    assert!(created.data["spec"].get("unknownField").is_none());
    assert_eq!(created.metadata.generation, Some(1));

    // `spec.dataset.name` is optional: the operator defaults it to metadata.name.
    let nameless = dataset("nameless", json!({"dataset": {"sources": ["/x/*.nc"]}}));
    let created = cds.create(&PostParams::default(), &nameless).await.unwrap();
    assert!(created.data["spec"]["dataset"].get("name").is_none());
    cds.delete("nameless", &DeleteParams::default()).await.unwrap();

    // Structural validation: the Invalid status names each field.
    let bad = dataset(
        "bad",
        json!({"dataset": {"sources": []}, "dataVolumes": [{"claimName": "pvc"}], "replicas": {"min": 0, "max": 1}, "publicUrl": "ftp://x"}),
    );
    let e = api_err(cds.create(&PostParams::default(), &bad).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert!(
        e.message
            .starts_with("CloudifyDataset.cloudify.io \"bad\" is invalid: ["),
        "{}",
        e.message
    );
    for needle in [
        "spec.dataVolumes[0].mountPath: Required value",
        "spec.dataset.sources: Invalid value: 0: spec.dataset.sources in body should have at least 1 items",
        "spec.replicas.min: Invalid value: 0: spec.replicas.min in body should be greater than or equal to 1",
        "spec.publicUrl: Invalid value: \"ftp://x\": spec.publicUrl in body should match",
    ] {
        assert!(e.message.contains(needle), "missing {needle:?} in {}", e.message);
    }
    let causes = e.details.unwrap().causes;
    assert!(
        causes
            .iter()
            .any(|c| c.field == "spec.dataVolumes[0].mountPath" && c.reason == "FieldValueRequired")
    );

    // CEL rule spanning fields, reported at its fieldPath with its message.
    let cel = dataset(
        "cel",
        json!({"dataset": {"name": "d", "sources": ["/x"]}, "replicas": {"min": 3, "max": 3}, "ingress": {"tlsSecret": "t"}}),
    );
    let e = api_err(cds.create(&PostParams::default(), &cel).await.unwrap_err());
    assert_eq!(e.code, 422);
    assert!(
        e.message.contains(
            "spec.ingress.tlsSecret: Invalid value: \"object\": ingress.tlsSecret needs ingress.host"
        ),
        "{}",
        e.message
    );
    // Root-level CEL rule on metadata.name.
    let e = api_err(
        cds.create(
            &PostParams::default(),
            &dataset("1bad", json!({"dataset": {"name": "d", "sources": ["/x"]}})),
        )
        .await
        .unwrap_err(),
    );
    assert!(
        e.message.contains("metadata.name must be a DNS-1035 label"),
        "{}",
        e.message
    );

    // Status subresource: the main endpoint ignores status, /status ignores the rest;
    // generation moves with the spec only.
    let status = json!({"status": {"url": "http://u", "conditions": [{"type": "Ready", "status": "True", "reason": "R", "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    let main = cds
        .patch("ok", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    assert!(main.data.get("status").is_none());
    let st = cds
        .patch_status("ok", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    assert_eq!(st.data["status"]["url"], "http://u");
    assert_eq!(st.metadata.generation, Some(1));
    let spec = cds
        .patch(
            "ok",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": {"max": 2}, "resources": {"requests": {"cpu": "1"}}}})),
        )
        .await
        .unwrap();
    assert_eq!(spec.metadata.generation, Some(2));
    assert_eq!(spec.data["status"]["url"], "http://u");
    let meta_only = cds
        .patch(
            "ok",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .unwrap();
    assert_eq!(meta_only.metadata.generation, Some(2));
    // Strategic merge patch is not defined for custom resources: 415.
    let e = api_err(
        cds.patch(
            "ok",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code, 415);

    // Table output with the CRD's printer columns.
    let req = axum::http::Request::builder()
        .uri("/apis/cloudify.io/v1alpha1/namespaces/default/cloudifydatasets")
        .header(
            "Accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .body(Vec::new())
        .unwrap();
    let table: Value = serde_json::from_str(&client.request_text(req).await.unwrap()).unwrap();
    assert_eq!(table["kind"], "Table");
    let cols: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, vec!["Name", "Ready", "URL", "Replicas", "Compute", "Age"]);
    assert_eq!(table["rows"][0]["cells"][1], "True");
    assert_eq!(table["rows"][0]["cells"][2], "http://u");

    // Deleting the CRD removes its resources and their discovery entry.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.delete("cloudifydatasets.cloudify.io", &DeleteParams::default())
        .await
        .unwrap();
    let e = api_err(cds.get("ok").await.unwrap_err());
    assert_eq!(e.code, 404);
    server.shutdown().await;
}

#[tokio::test]
async fn strategic_merge_and_json_patch_on_builtins() {
    let (server, client) = start().await;
    let deps: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), "default");
    let d: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json!({
        "metadata": {"name": "d"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [
            {"name": "one", "image": "i:1", "env": [{"name": "A", "value": "1"}]},
            {"name": "two", "image": "j:1"}
        ]}}}
    }))
    .unwrap();
    let created = deps.create(&PostParams::default(), &d).await.unwrap();
    assert_eq!(created.spec.as_ref().unwrap().replicas, Some(1));
    let p = json!({"spec": {"template": {"spec": {"containers": [{"name": "one", "env": [{"name": "B", "value": "2"}]}]}}}});
    let o = deps
        .patch("d", &PatchParams::default(), &Patch::Strategic(p))
        .await
        .unwrap();
    let cs = o.spec.unwrap().template.spec.unwrap().containers;
    assert_eq!(cs.len(), 2, "merged by name, not replaced");
    assert_eq!(cs[0].env.as_ref().unwrap().len(), 2);
    assert_eq!(o.metadata.generation, Some(2));
    let jp: json_patch::Patch =
        serde_json::from_value(json!([{"op": "replace", "path": "/spec/replicas", "value": 3}])).unwrap();
    let o = deps
        .patch("d", &PatchParams::default(), &Patch::Json::<()>(jp))
        .await
        .unwrap();
    assert_eq!(o.spec.unwrap().replicas, Some(3));
    // A failing JSON patch test is refused.
    let jp: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/spec/replicas", "value": 9}])).unwrap();
    assert_eq!(
        api_err(
            deps.patch("d", &PatchParams::default(), &Patch::Json::<()>(jp))
                .await
                .unwrap_err()
        )
        .code,
        422
    );
    // Type errors in built-ins are 400 like the real decoder; unknown fields with Strict too.
    let raw = client
        .request_text(http_request("POST", "/apis/apps/v1/namespaces/default/deployments", "application/json", json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}, "spec": {"replicas": "two"}}).to_string()))
        .await
        .unwrap_err();
    assert_eq!(api_err(raw).code, 400);
    let raw = client
        .request_text(http_request(
            "POST",
            "/api/v1/namespaces/default/configmaps?fieldValidation=Strict",
            "application/json",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "bogus": 1})
                .to_string(),
        ))
        .await
        .unwrap_err();
    let e = api_err(raw);
    assert_eq!(e.code, 400);
    assert!(e.message.contains("unknown field \"bogus\""), "{}", e.message);
    server.shutdown().await;
}

#[tokio::test]
async fn state_file_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let (server, client) = start_with(Some(state.clone())).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let created = cms
        .create(&PostParams::default(), &cm("kept", &[("k", "v")]))
        .await
        .unwrap();
    install_crd(&client).await;
    server.shutdown().await;

    let (server, client) = start_with(Some(state)).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let got = cms.get("kept").await.unwrap();
    assert_eq!(got.metadata.uid, created.metadata.uid);
    // The CRD's resource is served again after the restart, and versions keep increasing.
    let gvk = GroupVersionKind::gvk("cloudify.io", "v1alpha1", "CloudifyDataset");
    let cds: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &ApiResource::from_gvk_with_plural(&gvk, "cloudifydatasets"),
    );
    assert!(cds.list(&ListParams::default()).await.unwrap().items.is_empty());
    let next = cms
        .create(&PostParams::default(), &cm("next", &[]))
        .await
        .unwrap();
    let rv = |c: &ConfigMap| {
        c.metadata
            .resource_version
            .as_ref()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert!(rv(&next) > rv(&got));
    server.shutdown().await;
}

#[tokio::test]
async fn operator_style_apply_of_owned_objects_and_status() {
    let (server, client) = start().await;
    let cds = install_crd(&client).await;
    let cr = cds
        .create(
            &PostParams::default(),
            &dataset("ds", json!({"dataset": {"name": "d", "sources": ["/x"]}})),
        )
        .await
        .unwrap();
    let owner = json!([{"apiVersion": "cloudify.io/v1alpha1", "kind": "CloudifyDataset", "name": "ds", "uid": cr.metadata.uid, "controller": true, "blockOwnerDeletion": true}]);
    let deploy = |env: &str| {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "ds", "labels": {"app.kubernetes.io/instance": "ds"}, "ownerReferences": owner},
            "spec": {"selector": {"matchLabels": {"app.kubernetes.io/instance": "ds"}}, "template": {
                "metadata": {"labels": {"app.kubernetes.io/instance": "ds"}},
                "spec": {"containers": [{"name": "server", "image": "cloudify:1", "ports": [{"name": "http", "containerPort": 8080}], "env": [{"name": "E", "value": env}]}]}
            }}
        })
    };
    let deps: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), "default");
    let pp = PatchParams::apply("cloudify-operator").force();
    let first = deps.patch("ds", &pp, &Patch::Apply(deploy("1"))).await.unwrap();
    // Re-applying the same desired state is a no-op (no new resourceVersion, no watch event),
    // so a controller does not wake itself up forever.
    let again = deps.patch("ds", &pp, &Patch::Apply(deploy("1"))).await.unwrap();
    assert_eq!(first.metadata.resource_version, again.metadata.resource_version);
    let changed = deps.patch("ds", &pp, &Patch::Apply(deploy("2"))).await.unwrap();
    assert_ne!(first.metadata.resource_version, changed.metadata.resource_version);
    assert_eq!(changed.metadata.generation, Some(2));
    let c = &changed.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(c.env.as_ref().unwrap()[0].value.as_deref(), Some("2"));
    assert_eq!(
        c.ports.as_ref().unwrap()[0].protocol.as_deref(),
        Some("TCP"),
        "defaulted"
    );

    // Status through server-side apply on /status: conditions merge by type (list-map).
    let cond = |t: &str, s: &str| json!({"type": t, "status": s, "reason": "R", "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"});
    let status = |conds: Vec<Value>| json!({"apiVersion": "cloudify.io/v1alpha1", "kind": "CloudifyDataset", "status": {"observedGeneration": 1, "conditions": conds}});
    cds.patch_status(
        "ds",
        &pp,
        &Patch::Apply(status(vec![cond("Ready", "False"), cond("Progressing", "True")])),
    )
    .await
    .unwrap();
    let other = PatchParams::apply("someone-else");
    let o = cds
        .patch_status(
            "ds",
            &other,
            &Patch::Apply(status_only(json!({"conditions": [cond("Registered", "True")]}))),
        )
        .await
        .unwrap();
    let types: Vec<&str> = o.data["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["Ready", "Progressing", "Registered"]);
    let mf = o.metadata.managed_fields.unwrap();
    let status_entry = mf
        .iter()
        .find(|m| {
            m.manager.as_deref() == Some("cloudify-operator") && m.subresource.as_deref() == Some("status")
        })
        .expect("status manager entry");
    let fields = serde_json::to_value(&status_entry.fields_v1).unwrap();
    assert!(
        fields["f:status"]["f:conditions"]
            .get("k:{\"type\":\"Ready\"}")
            .is_some(),
        "{fields}"
    );
    // The spec is untouched by status writes; generation too.
    assert_eq!(o.metadata.generation, Some(1));

    // Deleting the owner garbage-collects the Deployment.
    cds.delete("ds", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_err(deps.get("ds").await.unwrap_err()).code, 404);
    server.shutdown().await;
}

fn status_only(status: Value) -> Value {
    json!({"apiVersion": "cloudify.io/v1alpha1", "kind": "CloudifyDataset", "status": status})
}

#[tokio::test]
async fn events_written_as_events_k8s_io_are_core_events_too() {
    use k8s_openapi::api::core::v1::{Event as CoreEvent, ObjectReference};
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let (server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let target = cms
        .create(&PostParams::default(), &cm("subject", &[]))
        .await
        .unwrap();
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("ConfigMap".into()),
        name: target.metadata.name.clone(),
        namespace: Some("default".into()),
        uid: target.metadata.uid.clone(),
        ..Default::default()
    };
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "test-controller".into(),
            instance: None,
        },
    );
    let ev = Event {
        type_: EventType::Normal,
        reason: "Reconciled".into(),
        note: Some("all good".into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    recorder.publish(&ev, &reference).await.unwrap();
    // Publishing the same event again patches its series instead of creating a second one.
    recorder.publish(&ev, &reference).await.unwrap();
    let core: Api<CoreEvent> = Api::namespaced(client.clone(), "default");
    let listed = core
        .list(&ListParams::default().fields("involvedObject.name=subject"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    let e = &listed.items[0];
    assert_eq!(
        (e.reason.as_deref(), e.message.as_deref(), e.type_.as_deref()),
        (Some("Reconciled"), Some("all good"), Some("Normal"))
    );
    assert_eq!(e.reporting_component.as_deref(), Some("test-controller"));
    assert_eq!(e.involved_object.uid, target.metadata.uid);
    assert_eq!(e.series.as_ref().and_then(|s| s.count), Some(2));
    server.shutdown().await;
}

#[tokio::test]
async fn crds_with_non_structural_schemas_or_broken_cel_are_refused() {
    let (server, client) = start().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = |schema: Value| -> CustomResourceDefinition {
        serde_json::from_value(json!({
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced", "names": {"plural": "widgets", "kind": "Widget"},
                     "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": schema}}]}
        }))
        .unwrap()
    };
    let e = api_err(
        crds.create(
            &PostParams::default(),
            &crd(json!({"type": "object", "properties": {"spec": {"properties": {}}}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code, 422);
    assert!(
        e.message
            .contains("spec.versions[0].schema.openAPIV3Schema.properties[spec].type: Required value"),
        "{}",
        e.message
    );
    let e = api_err(
        crds.create(
            &PostParams::default(),
            &crd(
                json!({"type": "object", "x-kubernetes-validations": [{"rule": "self.a >", "message": "m"}]}),
            ),
        )
        .await
        .unwrap_err(),
    );
    assert!(
        e.message
            .contains("x-kubernetes-validations[0].rule: Invalid value: \"self.a >\": compilation failed"),
        "{}",
        e.message
    );
    // A sound one is accepted and served.
    crds.create(&PostParams::default(), &crd(json!({"type": "object", "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}})))
        .await
        .unwrap();
    let gvk = GroupVersionKind::gvk("example.com", "v1", "Widget");
    let widgets: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &ApiResource::from_gvk_with_plural(&gvk, "widgets"),
    );
    let w: DynamicObject = serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"anything": [1, 2]}})).unwrap();
    let created = widgets.create(&PostParams::default(), &w).await.unwrap();
    assert_eq!(created.data["spec"]["anything"], json!([1, 2]));
    server.shutdown().await;
}
