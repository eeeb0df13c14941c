//! The runtime's control loop: an ordinary API client (kube-rs watchers into reflector
//! stores) that plays the kubelet, the Deployment and EndpointSlice controllers and the HPA
//! controller for one local "node".
//!
//! It is level-triggered: any watch event (or a 1 s tick, for probe results) runs one full
//! pass over the stores — HPAs, Deployments, pods, Service endpoints — and each pass only
//! writes what differs, so it converges from any state, including its own restart.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{
    ConfigMap, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod,
    PodCondition, PodIP, PodStatus, Secret, Service,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use super::cluster_ip::ClusterIps;
use super::plan::{ImageMap, PodPlan, Sources, plan_pod};
use super::rollout::{self, HASH_LABEL, PodView};
use super::supervisor::{Snapshot, State, Supervisor, SupervisorOptions, Terminated};
use super::{free_loopback_port, hpa};

/// Field manager of the runtime's own writes.
const MANAGER: &str = "cloudify-e2e-runtime";
/// Field manager of HPA scale changes (the real HPA's name), so `managedFields` show who
/// owns `spec.replicas`.
const HPA_MANAGER: &str = "horizontal-pod-autoscaler";
/// `endpointslice.kubernetes.io/managed-by` value of the slices the runtime writes.
const SLICE_MANAGED_BY: &str = "endpointslice-controller.cloudify-e2e";
/// The node name pods are bound to.
pub const NODE_NAME: &str = "cloudify-e2e";

/// Runtime settings.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    pub images: ImageMap,
    /// Pods' directories (`<state>/pods/<ns>_<name>_<uid>`), logs and pid files.
    pub state_dir: PathBuf,
    pub supervisor: SupervisorOptions,
    /// How long a deleted pod's processes keep running after it left the endpoints, before
    /// SIGTERM — the `preStop` sleep well-behaved deployments use, so proxies (nginx reloads
    /// on the EndpointSlice change) stop sending traffic before the process goes away.
    pub drain: Duration,
}

/// Default [`RuntimeOptions::drain`].
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

struct Stores {
    deployments: Store<Deployment>,
    pods: Store<Pod>,
    services: Store<Service>,
    config_maps: Store<ConfigMap>,
    secrets: Store<Secret>,
    hpas: Store<HorizontalPodAutoscaler>,
    slices: Store<EndpointSlice>,
    endpoints: Store<Endpoints>,
}

/// One running pod.
struct PodHandle {
    namespace: String,
    name: String,
    dir: PathBuf,
    /// Container port → loopback port.
    ports: BTreeMap<i32, u16>,
    /// Named container ports.
    named: BTreeMap<String, i32>,
    containers: Vec<(String, String, Supervisor)>,
    started: Time,
    last_status: Option<serde_json::Value>,
    transitions: BTreeMap<String, (String, Time)>,
}

/// A reflector store fed by a watch task; the task's handle goes into `tasks` so the caller
/// can end the watch when it stops (otherwise it would keep reconnecting). Shared with the
/// ingress agent, which watches the same way.
pub(crate) fn reflect<K>(
    api: Api<K>,
    notify: Arc<Notify>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    tasks.push(tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                tracing::debug!("watch: {e}");
            }
            notify.notify_one();
        }
    }));
    reader
}

/// Runs the runtime until `shutdown` resolves, then stops every pod process.
pub async fn run(
    client: Client,
    opts: RuntimeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RuntimeError> {
    std::fs::create_dir_all(opts.state_dir.join("pods")).map_err(|source| RuntimeError::Io {
        path: opts.state_dir.join("pods"),
        source,
    })?;
    let notify = Arc::new(Notify::new());
    let mut tasks = Vec::new();
    let stores = Stores {
        deployments: reflect(Api::all(client.clone()), notify.clone(), &mut tasks),
        pods: reflect(Api::all(client.clone()), notify.clone(), &mut tasks),
        services: reflect(Api::all(client.clone()), notify.clone(), &mut tasks),
        config_maps: reflect(Api::all(client.clone()), notify.clone(), &mut tasks),
        secrets: reflect(Api::all(client.clone()), notify.clone(), &mut tasks),
        hpas: reflect(Api::all(client.clone()), notify.clone(), &mut tasks),
        slices: reflect(Api::all(client.clone()), notify.clone(), &mut tasks),
        endpoints: reflect(Api::all(client.clone()), notify.clone(), &mut tasks),
    };
    for ready in [
        stores.deployments.wait_until_ready().await.is_ok(),
        stores.pods.wait_until_ready().await.is_ok(),
        stores.services.wait_until_ready().await.is_ok(),
        stores.config_maps.wait_until_ready().await.is_ok(),
        stores.secrets.wait_until_ready().await.is_ok(),
        stores.hpas.wait_until_ready().await.is_ok(),
        stores.slices.wait_until_ready().await.is_ok(),
        stores.endpoints.wait_until_ready().await.is_ok(),
    ] {
        if !ready {
            tracing::warn!("a watch ended before its first list");
        }
    }
    let cluster_ips = ClusterIps::new(stores.services.clone(), stores.slices.clone());
    let mut rt = Runtime {
        client,
        opts,
        stores,
        cluster_ips: cluster_ips.clone(),
        pods: HashMap::new(),
        probe_changes: Arc::new(Notify::new()),
    };
    let mut shutdown = std::pin::pin!(shutdown);
    tracing::info!("pod runtime running");
    loop {
        rt.pass().await;
        tokio::select! {
            _ = notify.notified() => {}
            _ = rt.probe_changes.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = &mut shutdown => break,
        }
        // Coalesce bursts of events into one pass.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    tracing::info!("pod runtime stopping {} pods", rt.pods.len());
    let stops = rt
        .pods
        .drain()
        .flat_map(|(_, h)| h.containers)
        .map(|(_, _, s)| s.stop());
    futures::future::join_all(stops).await;
    cluster_ips.shutdown();
    tasks.iter().for_each(|t| t.abort());
    Ok(())
}

struct Runtime {
    client: Client,
    opts: RuntimeOptions,
    stores: Stores,
    /// Service DNS names in pods' args/env → loopback "cluster IPs".
    cluster_ips: ClusterIps,
    pods: HashMap<String, PodHandle>,
    probe_changes: Arc<Notify>,
}

fn key(meta: &ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

fn time_of(t: SystemTime) -> Time {
    Time(k8s_openapi::jiff::Timestamp::try_from(t).unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now()))
}

impl Runtime {
    async fn pass(&mut self) {
        if let Err(e) = self.hpas().await {
            tracing::warn!("HPA pass: {e}");
        }
        if let Err(e) = self.deployments().await {
            tracing::warn!("Deployment pass: {e}");
        }
        if let Err(e) = self.kubelet().await {
            tracing::warn!("pod pass: {e}");
        }
        if let Err(e) = self.endpoints().await {
            tracing::warn!("endpoints pass: {e}");
        }
    }

    fn owned_pods(&self, deployment: &Deployment) -> Vec<Arc<Pod>> {
        let uid = deployment.metadata.uid.clone();
        self.stores
            .pods
            .state()
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                p.metadata.namespace == deployment.metadata.namespace
                    && p.owner_references()
                        .iter()
                        .any(|o| Some(&o.uid) == uid.as_ref() && o.controller == Some(true))
            })
            .collect()
    }

    async fn hpas(&mut self) -> Result<(), kube::Error> {
        for h in self.stores.hpas.state() {
            let Some(spec) = &h.spec else { continue };
            let target = &spec.scale_target_ref;
            if target.kind != "Deployment" {
                continue;
            }
            let ns = h.namespace().unwrap_or_default();
            let Some(deployment) = self
                .stores
                .deployments
                .get(&reflector::ObjectRef::new(&target.name).within(&ns))
            else {
                continue;
            };
            let current = rollout::desired_replicas(&deployment) as i32;
            let decision = hpa::decide(&h, current);
            if decision.desired != current {
                tracing::info!(hpa = %h.name_any(), from = current, to = decision.desired, "scaling");
                let api: Api<Deployment> = Api::namespaced(self.client.clone(), &ns);
                api.patch_scale(
                    &target.name,
                    &PatchParams {
                        field_manager: Some(HPA_MANAGER.into()),
                        ..PatchParams::default()
                    },
                    &Patch::Merge(serde_json::json!({"spec": {"replicas": decision.desired}})),
                )
                .await?;
            }
            let status = hpa::status(&h, current, &decision, now());
            if !same_ignoring_times(h.status.as_ref(), Some(&status)) {
                let api: Api<HorizontalPodAutoscaler> = Api::namespaced(self.client.clone(), &ns);
                api.patch_status(
                    &h.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"status": status})),
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn deployments(&mut self) -> Result<(), kube::Error> {
        for d in self.stores.deployments.state() {
            if d.metadata.deletion_timestamp.is_some() {
                continue;
            }
            // One Deployment's failure (e.g. a rejected pod) must not hold up the others.
            if let Err(e) = self.deployment(&d).await {
                tracing::warn!(deployment = %d.name_any(), "{e}");
            }
        }
        Ok(())
    }

    async fn deployment(&self, d: &Deployment) -> Result<(), kube::Error> {
        let ns = d.namespace().unwrap_or_default();
        let name = d.name_any();
        let hash = rollout::template_hash(d);
        let owned = self.owned_pods(d);
        let views: Vec<PodView> = owned
            .iter()
            .map(|p| PodView {
                name: p.name_any(),
                hash: p.labels().get(HASH_LABEL).cloned().unwrap_or_default(),
                ready: is_ready(p),
            })
            .collect();
        let actions = rollout::plan(d, &hash, &views);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        for victim in &actions.delete {
            tracing::info!(deployment = %name, pod = %victim, "deleting pod");
            match pods.delete(victim, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        for _ in 0..actions.create {
            let pod = new_pod(d, &hash);
            tracing::info!(deployment = %name, pod = %pod.name_any(), "creating pod");
            pods.create(&PostParams::default(), &pod).await?;
        }
        let remaining: Vec<PodView> = views
            .into_iter()
            .filter(|v| !actions.delete.contains(&v.name))
            .collect();
        let status = rollout::status(d, &hash, &remaining, now());
        if !same_ignoring_times(d.status.as_ref(), Some(&status)) {
            let api: Api<Deployment> = Api::namespaced(self.client.clone(), &ns);
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"status": status})),
            )
            .await?;
        }
        Ok(())
    }

    async fn kubelet(&mut self) -> Result<(), RuntimeError> {
        let pods = self.stores.pods.state();
        let live: BTreeSet<String> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        // Stop pods that are gone or terminating.
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|uid| !live.contains(*uid))
            .cloned()
            .collect();
        for uid in gone {
            if let Some(handle) = self.pods.remove(&uid) {
                tracing::info!(pod = %handle.name, namespace = %handle.namespace, "stopping pod");
                let dir = handle.dir.clone();
                let drain = self.opts.drain;
                tokio::spawn(async move {
                    tokio::time::sleep(drain).await;
                    let stops = handle.containers.into_iter().map(|(_, _, s)| s.stop());
                    futures::future::join_all(stops).await;
                    let _ = tokio::fs::remove_dir_all(&dir).await;
                });
            }
        }
        for pod in pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
            let Some(uid) = pod.metadata.uid.clone() else {
                continue;
            };
            if !self.pods.contains_key(&uid) {
                match self.start_pod(pod) {
                    Ok(handle) => {
                        self.pods.insert(uid.clone(), handle);
                    }
                    Err(waiting) => {
                        // One pod's failed write must not hold up the others.
                        if let Err(e) = self.write_waiting_status(pod, waiting).await {
                            tracing::warn!(pod = %pod.name_any(), "status: {e}");
                        }
                        continue;
                    }
                }
            }
            if let Err(e) = self.write_pod_status(pod, &uid).await {
                tracing::warn!(pod = %pod.name_any(), "status: {e}");
            }
        }
        Ok(())
    }

    /// Plans and starts a pod; on failure the waiting reason and message for its status.
    fn start_pod(&mut self, pod: &Pod) -> Result<PodHandle, (String, String)> {
        let (ns, name) = key(&pod.metadata);
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let sources = Sources {
            config_maps: self
                .stores
                .config_maps
                .state()
                .iter()
                .filter(|c| c.metadata.namespace.as_deref() == Some(&ns))
                .map(|c| (c.name_any(), (**c).clone()))
                .collect(),
            secrets: self
                .stores
                .secrets
                .state()
                .iter()
                .filter(|s| s.metadata.namespace.as_deref() == Some(&ns))
                .map(|s| (s.name_any(), (**s).clone()))
                .collect(),
        };
        let mut ports = BTreeMap::new();
        let mut named = BTreeMap::new();
        for c in pod.spec.iter().flat_map(|s| &s.containers) {
            for p in c.ports.iter().flatten() {
                let host =
                    free_loopback_port().map_err(|e| ("RunContainerError".to_string(), e.to_string()))?;
                ports.insert(p.container_port, host);
                if let Some(n) = &p.name {
                    named.insert(n.clone(), p.container_port);
                }
            }
        }
        let short_uid: String = uid.chars().take(8).collect();
        let dir = self
            .opts
            .state_dir
            .join("pods")
            .join(format!("{ns}_{name}_{short_uid}"));
        let env: Vec<(String, String)> = std::env::vars().collect();
        let mut plan = plan_pod(pod, &sources, &self.opts.images, &dir, &ports, &env)
            .map_err(|e| (e.reason().to_string(), e.to_string()))?;
        // Service names (`http://<svc>.<ns>.svc:<port>`) → their local stand-in addresses
        for c in &mut plan.containers {
            for a in &mut c.args {
                *a = self.cluster_ips.rewrite(a);
            }
            for (_, v) in &mut c.env {
                *v = self.cluster_ips.rewrite(v);
            }
        }
        materialise(&plan, &dir).map_err(|e| ("CreateContainerError".to_string(), e))?;
        tracing::info!(pod = %name, namespace = %ns, ?ports, "starting pod");
        let containers = plan
            .containers
            .into_iter()
            .map(|c| {
                let log = dir.join(format!("{}.log", c.container));
                let (cname, image) = (c.container.clone(), c.image.clone());
                let sup = Supervisor::spawn(c, log, self.opts.supervisor.clone());
                let mut rx = sup.subscribe();
                let notify = self.probe_changes.clone();
                tokio::spawn(async move {
                    while rx.changed().await.is_ok() {
                        notify.notify_one();
                    }
                });
                (cname, image, sup)
            })
            .collect();
        Ok(PodHandle {
            namespace: ns,
            name,
            dir,
            ports,
            named,
            containers,
            started: now(),
            last_status: None,
            transitions: BTreeMap::new(),
        })
    }

    async fn write_waiting_status(
        &self,
        pod: &Pod,
        (reason, message): (String, String),
    ) -> Result<(), RuntimeError> {
        let statuses: Vec<ContainerStatus> = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .map(|c| ContainerStatus {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                ready: false,
                state: Some(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some(reason.clone()),
                        message: Some(message.clone()),
                    }),
                    ..ContainerState::default()
                }),
                ..ContainerStatus::default()
            })
            .collect();
        let status = PodStatus {
            phase: Some("Pending".into()),
            container_statuses: Some(statuses),
            ..PodStatus::default()
        };
        let current = pod.status.as_ref().and_then(|s| s.container_statuses.clone());
        if current == status.container_statuses {
            return Ok(());
        }
        tracing::warn!(pod = %pod.name_any(), %reason, %message, "pod cannot start");
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        patch_pod_status(&api, &pod.name_any(), &status).await
    }

    async fn write_pod_status(&mut self, pod: &Pod, uid: &str) -> Result<(), RuntimeError> {
        let Some(handle) = self.pods.get_mut(uid) else {
            return Ok(());
        };
        let snapshots: Vec<(String, String, Snapshot)> = handle
            .containers
            .iter()
            .map(|(n, i, s)| (n.clone(), i.clone(), s.snapshot()))
            .collect();
        let all_ready = snapshots.iter().all(|(_, _, s)| s.ready);
        let running = snapshots
            .iter()
            .any(|(_, _, s)| matches!(s.state, State::Running { .. }));
        let mut condition = |type_: &str, ok: bool| {
            let status = if ok { "True" } else { "False" }.to_string();
            let entry = handle
                .transitions
                .entry(type_.to_string())
                .or_insert_with(|| (status.clone(), now()));
            if entry.0 != status {
                *entry = (status.clone(), now());
            }
            PodCondition {
                type_: type_.into(),
                status,
                last_transition_time: Some(entry.1.clone()),
                reason: (!ok && (type_ == "Ready" || type_ == "ContainersReady"))
                    .then(|| "ContainersNotReady".into()),
                ..PodCondition::default()
            }
        };
        let conditions = vec![
            condition("PodScheduled", true),
            condition("Initialized", true),
            condition("ContainersReady", all_ready),
            condition("Ready", all_ready),
        ];
        let status = PodStatus {
            phase: Some(
                if running || all_ready {
                    "Running"
                } else {
                    "Pending"
                }
                .into(),
            ),
            conditions: Some(conditions),
            host_ip: Some("127.0.0.1".into()),
            pod_ip: Some("127.0.0.1".into()),
            pod_ips: Some(vec![PodIP {
                ip: "127.0.0.1".into(),
            }]),
            start_time: Some(handle.started.clone()),
            container_statuses: Some(
                snapshots
                    .iter()
                    .map(|(n, i, s)| container_status(n, i, s))
                    .collect(),
            ),
            ..PodStatus::default()
        };
        let value = serde_json::to_value(&status).unwrap_or_default();
        if handle.last_status.as_ref() == Some(&value) && pod.status.as_ref() == Some(&status) {
            return Ok(());
        }
        if pod.status.as_ref() == Some(&status) {
            handle.last_status = Some(value);
            return Ok(());
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &handle.namespace);
        match patch_pod_status(&api, &handle.name, &status).await {
            Ok(()) => {
                handle.last_status = Some(value);
                Ok(())
            }
            Err(RuntimeError::Kube(kube::Error::Api(e))) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn endpoints(&mut self) -> Result<(), kube::Error> {
        let pods = self.stores.pods.state();
        let mut wanted_slices: BTreeSet<(String, String)> = BTreeSet::new();
        for svc in self.stores.services.state() {
            let Some(selector) = svc.spec.as_ref().and_then(|s| s.selector.clone()) else {
                continue;
            };
            if selector.is_empty() {
                continue;
            }
            let (ns, name) = key(&svc.metadata);
            // as the EndpointSlice controller does: such a Service's endpoints are all ready
            // (the operator reads unready server pods' /status through one)
            let publish_not_ready = svc
                .spec
                .as_ref()
                .and_then(|s| s.publish_not_ready_addresses)
                .unwrap_or(false);
            let ports = svc
                .spec
                .as_ref()
                .and_then(|s| s.ports.clone())
                .unwrap_or_default();
            let mut matching: Vec<&Arc<Pod>> = pods
                .iter()
                .filter(|p| {
                    p.metadata.namespace.as_deref() == Some(&ns) && p.metadata.deletion_timestamp.is_none()
                })
                .filter(|p| selector.iter().all(|(k, v)| p.labels().get(k) == Some(v)))
                .collect();
            matching.sort_by_key(|p| p.name_any());
            let mut subsets = Vec::new();
            for pod in matching {
                let Some(uid) = pod.metadata.uid.as_ref() else {
                    continue;
                };
                let Some(handle) = self.pods.get(uid) else {
                    continue;
                };
                let resolved: Vec<(Option<String>, u16, Option<String>)> = ports
                    .iter()
                    .filter_map(|sp| {
                        let container_port = match sp.target_port.as_ref() {
                            Some(IntOrString::Int(n)) => Some(*n),
                            Some(IntOrString::String(n)) => handle.named.get(n).copied(),
                            None => Some(sp.port),
                        }?;
                        let host = handle.ports.get(&container_port)?;
                        Some((sp.name.clone(), *host, sp.protocol.clone()))
                    })
                    .collect();
                if resolved.is_empty() {
                    continue;
                }
                let ready = publish_not_ready || is_ready(pod);
                let target = ObjectReference {
                    kind: Some("Pod".into()),
                    name: Some(pod.name_any()),
                    namespace: Some(ns.clone()),
                    uid: Some(uid.clone()),
                    ..ObjectReference::default()
                };
                let address = EndpointAddress {
                    ip: "127.0.0.1".into(),
                    target_ref: Some(target.clone()),
                    node_name: Some(NODE_NAME.into()),
                    ..EndpointAddress::default()
                };
                subsets.push(EndpointSubset {
                    addresses: ready.then(|| vec![address.clone()]),
                    not_ready_addresses: (!ready).then(|| vec![address]),
                    ports: Some(
                        resolved
                            .iter()
                            .map(|(n, p, proto)| EndpointPort {
                                name: n.clone(),
                                port: i32::from(*p),
                                protocol: proto.clone(),
                                ..EndpointPort::default()
                            })
                            .collect(),
                    ),
                });
                // One slice per pod: each local pod has its own port.
                let slice_name = format!("{name}-{}", pod.name_any());
                wanted_slices.insert((ns.clone(), slice_name.clone()));
                let slice = EndpointSlice {
                    metadata: ObjectMeta {
                        name: Some(slice_name.clone()),
                        namespace: Some(ns.clone()),
                        labels: Some(BTreeMap::from([
                            ("kubernetes.io/service-name".to_string(), name.clone()),
                            (
                                "endpointslice.kubernetes.io/managed-by".to_string(),
                                SLICE_MANAGED_BY.to_string(),
                            ),
                        ])),
                        owner_references: Some(vec![owner(&svc.metadata, "v1", "Service")]),
                        ..ObjectMeta::default()
                    },
                    address_type: "IPv4".into(),
                    endpoints: vec![Endpoint {
                        addresses: vec!["127.0.0.1".into()],
                        conditions: Some(EndpointConditions {
                            ready: Some(ready),
                            serving: Some(ready),
                            terminating: Some(false),
                        }),
                        node_name: Some(NODE_NAME.into()),
                        target_ref: Some(target),
                        ..Endpoint::default()
                    }],
                    ports: Some(
                        resolved
                            .iter()
                            .map(|(n, p, proto)| SlicePort {
                                name: n.clone(),
                                port: Some(i32::from(*p)),
                                protocol: proto.clone(),
                                ..SlicePort::default()
                            })
                            .collect(),
                    ),
                };
                let existing = self
                    .stores
                    .slices
                    .get(&reflector::ObjectRef::new(&slice_name).within(&ns));
                let same = existing.is_some_and(|e| e.endpoints == slice.endpoints && e.ports == slice.ports);
                if !same {
                    apply(
                        Api::<EndpointSlice>::namespaced(self.client.clone(), &ns),
                        &slice_name,
                        &slice,
                    )
                    .await?;
                }
            }
            let endpoints = Endpoints {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    labels: svc.metadata.labels.clone(),
                    owner_references: Some(vec![owner(&svc.metadata, "v1", "Service")]),
                    ..ObjectMeta::default()
                },
                subsets: (!subsets.is_empty()).then_some(subsets),
            };
            let existing = self
                .stores
                .endpoints
                .get(&reflector::ObjectRef::new(&name).within(&ns));
            if existing.is_none_or(|e| e.subsets != endpoints.subsets) {
                apply(
                    Api::<Endpoints>::namespaced(self.client.clone(), &ns),
                    &name,
                    &endpoints,
                )
                .await?;
            }
        }
        // Slices of pods or Services that are gone.
        for slice in self.stores.slices.state() {
            let ours = slice
                .labels()
                .get("endpointslice.kubernetes.io/managed-by")
                .map(String::as_str)
                == Some(SLICE_MANAGED_BY);
            if ours
                && !wanted_slices.contains(&key(&slice.metadata))
                && slice.metadata.deletion_timestamp.is_none()
            {
                let api: Api<EndpointSlice> =
                    Api::namespaced(self.client.clone(), &slice.namespace().unwrap_or_default());
                match api.delete(&slice.name_any(), &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

async fn apply<K>(api: Api<K>, name: &str, object: &K) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let mut value = serde_json::to_value(object).map_err(kube::Error::SerdeError)?;
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), K::api_version(&()).into());
        map.insert("kind".into(), K::kind(&()).into());
    }
    api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(value))
        .await?;
    Ok(())
}

async fn patch_pod_status(api: &Api<Pod>, name: &str, status: &PodStatus) -> Result<(), RuntimeError> {
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "status": status })),
    )
    .await?;
    Ok(())
}

fn owner(meta: &ObjectMeta, api_version: &str, kind: &str) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Compares two statuses as JSON without time fields, so an unchanged status is not
/// rewritten every pass just because "now" moved.
fn same_ignoring_times<T: Serialize>(a: Option<&T>, b: Option<&T>) -> bool {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.retain(|k, _| {
                    !matches!(
                        k.as_str(),
                        "lastTransitionTime" | "lastUpdateTime" | "lastScaleTime"
                    )
                });
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut a = serde_json::to_value(a).unwrap_or_default();
    let mut b = serde_json::to_value(b).unwrap_or_default();
    strip(&mut a);
    strip(&mut b);
    a == b
}

/// A new pod for the Deployment's current template.
fn new_pod(d: &Deployment, hash: &str) -> Pod {
    let template = d.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(HASH_LABEL.into(), hash.into());
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let suffix = rollout::template_hash_of_bytes(format!("{nanos}{}", d.name_any()).as_bytes());
    let mut spec = template.spec.unwrap_or_default();
    spec.node_name = Some(NODE_NAME.into());
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("{}-{hash}-{}", d.name_any(), &suffix[..5])),
            namespace: d.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: meta.annotations,
            owner_references: Some(vec![owner(&d.metadata, "apps/v1", "Deployment")]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

fn container_status(name: &str, image: &str, s: &Snapshot) -> ContainerStatus {
    let terminated = |t: &Terminated| ContainerStateTerminated {
        exit_code: t.exit_code,
        signal: t.signal,
        reason: Some(t.reason.clone()),
        message: t.message.clone(),
        started_at: Some(time_of(t.started_at)),
        finished_at: Some(time_of(t.finished_at)),
        ..ContainerStateTerminated::default()
    };
    let (state, pid) = match &s.state {
        State::Waiting { reason, message } => (
            ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.clone()),
                    message: message.clone(),
                }),
                ..ContainerState::default()
            },
            None,
        ),
        State::Running { started_at, pid } => (
            ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(time_of(*started_at)),
                }),
                ..ContainerState::default()
            },
            Some(*pid),
        ),
        State::Terminated(t) => (
            ContainerState {
                terminated: Some(terminated(t)),
                ..ContainerState::default()
            },
            None,
        ),
    };
    ContainerStatus {
        name: name.into(),
        image: image.into(),
        image_id: String::new(),
        // The pid, so tests (and people) can find and kill the process.
        container_id: pid.map(|p| format!("local://{p}")),
        ready: s.ready,
        started: Some(s.started),
        restart_count: s.restart_count,
        state: Some(state),
        last_state: s.last_state.as_ref().map(|t| ContainerState {
            terminated: Some(terminated(t)),
            ..ContainerState::default()
        }),
        ..ContainerStatus::default()
    }
}

fn materialise(plan: &PodPlan, dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for d in &plan.dirs {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    for f in &plan.files {
        if let Some(parent) = f.path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&f.path, &f.contents).map_err(|e| format!("{}: {e}", f.path.display()))?;
        std::fs::set_permissions(&f.path, std::fs::Permissions::from_mode(f.mode & 0o7777))
            .map_err(|e| format!("{}: {e}", f.path.display()))?;
    }
    Ok(())
}
