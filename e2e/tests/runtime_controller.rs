//! The pod runtime against the API emulator, over HTTP like any client: Deployments become
//! running local processes (python3's http.server as the "image"), with pod and Deployment
//! status, EndpointSlices with the loopback ports, restarts after SIGKILL, replacement of
//! deleted pods, HPA scaling from the load annotation, rolling updates and cleanup.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cloudify_e2e::apiserver::{Options, Server};
use cloudify_e2e::runtime::controller::{self, RuntimeOptions, run};
use cloudify_e2e::runtime::plan::ImageMap;
use cloudify_e2e::runtime::supervisor::SupervisorOptions;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Config};

const NS: &str = "default";

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

fn deployment(replicas: i32, version: &str) -> Deployment {
    serde_yaml::from_str(&format!(
        r#"
metadata: {{name: web, namespace: {NS}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}, annotations: {{version: "{version}"}}}}
    spec:
      containers:
        - name: web
          image: docker.io/library/python:3.12
          command: [python3, -m, http.server, --bind, 127.0.0.1]
          args: ["$(PORT)"]
          env: [{{name: PORT, value: "8000"}}]
          ports: [{{name: http, containerPort: 8000}}]
          readinessProbe: {{httpGet: {{path: /, port: http}}, periodSeconds: 5}}
"#
    ))
    .expect("deployment")
}

fn pid_of(pod: &Pod) -> Option<u32> {
    let id = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .container_id
        .clone()?;
    id.strip_prefix("local://")?.parse().ok()
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|c| c.iter().all(|c| c.ready))
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

async fn ready_pods(pods: &Api<Pod>, n: usize) -> Vec<Pod> {
    eventually(&format!("{n} ready pods"), || async {
        let list = pods.list(&ListParams::default().labels("app=web")).await.ok()?;
        (list.items.len() == n && list.items.iter().all(ready)).then_some(list.items)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_run_as_local_processes() {
    let server = Server::start(Options {
        addr: "127.0.0.1:0".parse().expect("addr"),
        state_file: None,
    })
    .await
    .expect("emulator");
    let client = Client::try_from(Config::new(server.url().parse().expect("url"))).expect("client");
    let state = tempfile::tempdir().expect("tempdir");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let runtime = tokio::spawn(run(
        client.clone(),
        RuntimeOptions {
            images: ImageMap(vec![("python".into(), PathBuf::from("/usr/bin/python3"))]),
            state_dir: state.path().to_path_buf(),
            supervisor: SupervisorOptions {
                backoff_initial: Duration::from_millis(200),
                probe_period_max: Some(Duration::from_millis(200)),
                ..SupervisorOptions::default()
            },
            drain: controller::DEFAULT_DRAIN,
        },
        async move {
            let _ = stop_rx.await;
        },
    ));

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
    deployments
        .create(&PostParams::default(), &deployment(2, "1"))
        .await
        .expect("create deployment");
    let svc: Service = serde_yaml::from_str(&format!(
        "metadata: {{name: web, namespace: {NS}}}\nspec: {{selector: {{app: web}}, ports: [{{name: http, port: 80, targetPort: http}}]}}"
    ))
    .expect("service");
    services
        .create(&PostParams::default(), &svc)
        .await
        .expect("create service");

    // Two running, ready pods, owned by the Deployment, with pod status filled in.
    let running = ready_pods(&pods, 2).await;
    for p in &running {
        let status = p.status.clone().expect("status");
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some("127.0.0.1"));
        assert!(
            p.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key("pod-template-hash"))
        );
        assert_eq!(
            p.metadata.owner_references.as_ref().map(|o| o[0].kind.as_str()),
            Some("Deployment")
        );
        assert!(alive(pid_of(p).expect("pid")));
    }
    let d = eventually("deployment status", || async {
        let d = deployments.get("web").await.ok()?;
        let s = d.status.clone()?;
        (s.ready_replicas == Some(2) && s.available_replicas == Some(2) && s.updated_replicas == Some(2))
            .then_some(d)
    })
    .await;
    let conds = d.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(conds.iter().any(|c| c.type_ == "Available" && c.status == "True"));

    // EndpointSlices (one per pod) and Endpoints carry each pod's loopback port, which serves.
    let ports: Vec<i32> = eventually("endpoint slices", || async {
        let list = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
            .await
            .ok()?;
        let ports: Vec<i32> = list
            .items
            .iter()
            .filter(|s| {
                s.endpoints
                    .iter()
                    .all(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            })
            .filter_map(|s| s.ports.as_ref()?.first()?.port)
            .collect();
        (ports.len() == 2).then_some(ports)
    })
    .await;
    for port in &ports {
        let resp = reqwest::get(format!("http://127.0.0.1:{port}/"))
            .await
            .expect("pod answers");
        assert!(resp.status().is_success());
    }
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), NS);
    let ep = endpoints.get("web").await.expect("endpoints");
    assert_eq!(ep.subsets.map(|s| s.len()), Some(2));

    // SIGKILL a pod's process: the container restarts in the same pod.
    let victim = &running[0];
    let old_pid = pid_of(victim).expect("pid");
    cloudify_e2e::runtime::signal(old_pid, rustix::process::Signal::KILL).expect("kill");
    eventually("restart after SIGKILL", || async {
        let p = pods
            .get(&victim.metadata.name.clone().unwrap_or_default())
            .await
            .ok()?;
        let cs = p.status.as_ref()?.container_statuses.as_ref()?.first()?.clone();
        (cs.restart_count == 1 && cs.ready && pid_of(&p) != Some(old_pid)).then_some(())
    })
    .await;

    // Delete a pod object: its process stops and the Deployment gets a new pod.
    let doomed = running[1].clone();
    let doomed_pid = pid_of(&doomed).expect("pid");
    pods.delete(
        &doomed.metadata.name.clone().unwrap_or_default(),
        &DeleteParams::default(),
    )
    .await
    .expect("delete pod");
    let after = ready_pods(&pods, 2).await;
    assert!(after.iter().all(|p| p.metadata.name != doomed.metadata.name));
    eventually("deleted pod's process gone", || async {
        (!alive(doomed_pid)).then_some(())
    })
    .await;

    // HPA: a load of 250 % against a target of 80 % asks for ceil(250/80) = 4 pods, capped at 3.
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), NS);
    let hpa: HorizontalPodAutoscaler = serde_yaml::from_str(&format!(
        r#"
metadata: {{name: web, namespace: {NS}, annotations: {{e2e.cloudify.io/cpu-load: "250"}}}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: web}}
  minReplicas: 1
  maxReplicas: 3
  metrics: [{{type: Resource, resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 80}}}}}}]
"#
    ))
    .expect("hpa");
    hpas.create(&PostParams::default(), &hpa)
        .await
        .expect("create hpa");
    ready_pods(&pods, 3).await;
    let h = eventually("hpa status", || async {
        let h = hpas.get("web").await.ok()?;
        (h.status.as_ref()?.current_replicas == Some(3)).then_some(h)
    })
    .await;
    assert_eq!(h.status.map(|s| s.desired_replicas), Some(3));
    let d = deployments.get("web").await.expect("deployment");
    assert_eq!(d.spec.and_then(|s| s.replicas), Some(3));
    let owners: Vec<String> = d
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(
        owners.iter().any(|m| m == "horizontal-pod-autoscaler"),
        "{owners:?}"
    );

    // Lower the load: back to one pod.
    hpas.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"annotations": {"e2e.cloudify.io/cpu-load": "40"}}})),
    )
    .await
    .expect("annotate");
    ready_pods(&pods, 1).await;

    // A template change rolls the pod: the new one is ready before the old one goes.
    let old_hash = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("list")
        .items[0]
        .metadata
        .labels
        .clone()
        .unwrap_or_default()["pod-template-hash"]
        .clone();
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"spec": {"template": {"metadata": {"annotations": {"version": "2"}}}}}),
            ),
        )
        .await
        .expect("patch template");
    let rolled = eventually("rolled pod", || async {
        let list = pods.list(&ListParams::default().labels("app=web")).await.ok()?;
        let all_new = list.items.iter().all(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("pod-template-hash"))
                != Some(&old_hash)
        });
        (list.items.len() == 1 && all_new && list.items.iter().all(ready)).then_some(list.items)
    })
    .await;
    let rolled_pid = pid_of(&rolled[0]).expect("pid");

    // Deleting the Deployment garbage-collects the pods, and their processes stop.
    hpas.delete("web", &DeleteParams::default())
        .await
        .expect("delete hpa");
    deployments
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete deployment");
    eventually("pods collected", || async {
        let list = pods.list(&ListParams::default()).await.ok()?;
        list.items.is_empty().then_some(())
    })
    .await;
    eventually("processes stopped", || async {
        (!alive(rolled_pid)).then_some(())
    })
    .await;

    let _ = stop_tx.send(());
    runtime.await.expect("join").expect("runtime ran");
    server.shutdown().await;
}
