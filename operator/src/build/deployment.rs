//! The server Deployment and the compute (worker) Deployment.

use std::collections::BTreeMap;

use cloudify_crds::k8s::ComputeSpec;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    HTTPGetAction, KeyToPath, PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};

use super::Settings;
use super::meta::{Target, compute_labels, labels};
use crate::layout::{ACCESS_DIR, CACHE_DIR, COMPUTE_SECRET_KEY, CONFIG_DIR, CONFIG_FILE, INTERNAL_DIR};

/// Port the server listens on in the pod (and the Service's port).
pub const PORT: i32 = 9000;
/// Name of the server port; probes, Service and Ingress refer to it by name.
pub(crate) const PORT_NAME: &str = "http";
/// Pod-template annotation with a hash of the config. The server reads its config once at
/// start, so a changed config must change the template to roll the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "cloudify.io/config-hash";
/// Unprivileged uid/gid of the server (distroless `nonroot`). Set explicitly so pods never run
/// as root whatever the image says; data files must be readable by it (world- or
/// group-readable), because the operator deliberately sets no `fsGroup`, which would make the
/// kubelet chown the whole data volume.
const RUN_AS: i64 = 65532;

/// The server Deployment: one container running `cloudify serve --config`.
///
/// `replicas` is left out while an HPA owns the count: with server-side apply, a `replicas`
/// in the applied object would reset the HPA's choice on every reconcile.
pub(crate) fn deployment(
    target: &Target,
    settings: &Settings,
    public_base: Option<&str>,
    config_map: &ConfigMap,
) -> Deployment {
    let spec = &target.cr.spec;
    let mut args = vec!["serve".to_string()];
    args.extend(listen_args(&format!("{CONFIG_DIR}/{CONFIG_FILE}")));
    if let Some(base) = public_base {
        args.extend(["--public-url".to_string(), base.to_string()]);
    }
    if let Some(collection) = &spec.catalog.collection {
        args.extend(["--stac-collection".to_string(), collection.clone()]);
    }
    if spec.compute_enabled().is_some() {
        args.extend([
            "--compute".to_string(),
            compute_url(target),
            "--compute-secret-file".to_string(),
            format!("{INTERNAL_DIR}/{COMPUTE_SECRET_KEY}"),
        ]);
    }
    let container = container(target, settings, "server", args, spec.resources.clone());
    Deployment {
        metadata: target.meta(),
        spec: Some(DeploymentSpec {
            replicas: (!spec.replicas.autoscaled()).then_some(spec.replicas.min),
            progress_deadline_seconds: super::tape::progress_deadline(target),
            selector: target.selector(),
            template: PodTemplateSpec {
                metadata: Some(pod_meta(labels(target.name), config_map)),
                spec: Some(pod_spec(target, container, false)),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// In-cluster URL of the compute Service, what the server's `--compute` names. The namespace
/// is spelled out so the URL also says which pool it is in logs and 503 messages.
pub(crate) fn compute_url(target: &Target) -> String {
    format!("http://{}.{}.svc:{PORT}", target.compute_name(), target.namespace)
}

/// The worker Deployment `<name>-compute`: `cloudify worker` with the same mounted config,
/// data volumes, cache and hardening as the server, so it rebuilds exactly the server's
/// datasets (a worker must, see `cloudify worker --help`). The config hash rolls the workers
/// with the servers when the config changes.
///
/// `replicas` is left out while an HPA owns the count, as for the server.
pub(crate) fn compute_deployment(
    target: &Target,
    settings: &Settings,
    config_map: &ConfigMap,
    compute: &ComputeSpec,
) -> Deployment {
    let mut args = vec!["worker".to_string()];
    args.extend(listen_args(&format!("{CONFIG_DIR}/{CONFIG_FILE}")));
    // tasks only from the server (the worker refuses to listen on 0.0.0.0 without it)
    args.extend([
        "--secret-file".to_string(),
        format!("{INTERNAL_DIR}/{COMPUTE_SECRET_KEY}"),
    ]);
    let container = container(target, settings, "worker", args, compute.resources.clone());
    Deployment {
        metadata: target.compute_meta(),
        spec: Some(DeploymentSpec {
            replicas: (!compute.replicas.autoscaled()).then_some(compute.replicas.min),
            // workers open the same datasets, waiting on the same recalls
            progress_deadline_seconds: super::tape::progress_deadline(target),
            selector: target.compute_selector(),
            template: PodTemplateSpec {
                metadata: Some(pod_meta(compute_labels(target.name), config_map)),
                spec: Some(pod_spec(target, container, true)),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// `--config FILE --host 0.0.0.0 --port PORT`: what `serve` and `worker` both take.
fn listen_args(config: &str) -> Vec<String> {
    [
        "--config",
        config,
        "--host",
        "0.0.0.0",
        "--port",
        &PORT.to_string(),
    ]
    .map(String::from)
    .into()
}

fn pod_meta(labels: BTreeMap<String, String>, config_map: &ConfigMap) -> ObjectMeta {
    ObjectMeta {
        labels: Some(labels),
        annotations: Some(BTreeMap::from([(
            CONFIG_HASH_ANNOTATION.to_string(),
            config_hash(config_map),
        )])),
        ..ObjectMeta::default()
    }
}

/// The one container of a server or worker pod: `cloudify <args>` on [`PORT`], probed on
/// `/healthz` and `/readyz` (both processes answer them), hardened.
fn container(
    target: &Target,
    settings: &Settings,
    name: &str,
    args: Vec<String>,
    resources: Option<ResourceRequirements>,
) -> Container {
    let spec = &target.cr.spec;
    Container {
        name: name.into(),
        image: Some(spec.image.clone().unwrap_or_else(|| settings.image.clone())),
        command: Some(vec!["cloudify".into()]),
        args: Some(args),
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.into()),
            container_port: PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        env: Some(
            std::iter::once(("CLOUDIFY_CACHE_DIR".to_string(), CACHE_DIR.to_string()))
                .chain(settings.otel_env.iter().cloned())
                .map(|(name, value)| EnvVar {
                    name,
                    value: Some(value),
                    ..EnvVar::default()
                })
                .collect(),
        ),
        resources,
        // Liveness only asks "is the process answering"; readiness is `/readyz`, which is 200
        // once a dataset serves, so pods still opening files get no traffic but are not killed.
        // Liveness gets a generous timeout: a pod busy decoding must not be killed for a slow
        // answer, which would shed capacity exactly under load.
        liveness_probe: Some(probe("/healthz", 10, 5)),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        // set by `pod_spec`, which owns the volumes they refer to
        volume_mounts: None,
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// Pod spec around `container`, with the config, cache, tmp and data volumes mounted into it,
/// and a dataset on tape's staging volume (a worker's is always its own `emptyDir`).
fn pod_spec(target: &Target, container: Container, worker: bool) -> PodSpec {
    let spec = &target.cr.spec;
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: target.name.to_string(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        empty_dir("cache"),
        empty_dir("tmp"),
    ];
    let mut mounts = vec![
        mount("config", CONFIG_DIR, true),
        mount("cache", CACHE_DIR, false),
        mount("tmp", "/tmp", false),
    ];
    if !spec.access.public
        && let Some(secret) = &spec.access.token_secret
    {
        // The whole Secret directory, not a subPath: kubelet then updates the file when the
        // Secret changes, and the server reads it again (a subPath mount never updates).
        volumes.push(Volume {
            name: "access".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.name.clone()),
                items: Some(vec![KeyToPath {
                    key: secret.key.clone(),
                    path: secret.key.clone(),
                    ..KeyToPath::default()
                }]),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(mount("access", ACCESS_DIR, true));
    }
    if let Some(name) = internal_secret_name(target) {
        // both keys in both pods: a worker loads the same config as the server, and with it
        // the signing key file a private dataset consenting to registration names
        volumes.push(Volume {
            name: "internal".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(name),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(mount("internal", INTERNAL_DIR, true));
    }
    for (i, data) in spec.data_volumes.iter().enumerate() {
        let name = format!("data-{i}");
        volumes.push(Volume {
            name: name.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: data.claim_name.clone(),
                read_only: Some(true),
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            sub_path: data.sub_path.clone(),
            ..mount(&name, &data.mount_path, true)
        });
    }

    if let Some((volume, path)) = super::tape::volume(target, worker) {
        mounts.push(mount(&volume.name, &path, false));
        volumes.push(volume);
    }

    let container = Container {
        volume_mounts: Some(mounts),
        ..container
    };

    PodSpec {
        containers: vec![container],
        volumes: Some(volumes),
        // The server never talks to the API server.
        automount_service_account_token: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        ..PodSpec::default()
    }
}

/// The internal Secret's name when the spec needs one (see `internal::secret`).
fn internal_secret_name(target: &Target) -> Option<String> {
    super::internal::secret(target).and_then(|s| s.metadata.name)
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

fn probe(path: &str, period_seconds: i32, timeout_seconds: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(PORT_NAME.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        timeout_seconds: Some(timeout_seconds),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

/// First 16 hex digits of the SHA-256 of the ConfigMap's data (keys and values in order).
fn config_hash(config_map: &ConfigMap) -> String {
    let mut hasher = Sha256::new();
    for (key, value) in config_map.data.iter().flatten() {
        hasher.update(key.as_bytes());
        hasher.update([0]);
        hasher.update(value.as_bytes());
        hasher.update([0]);
    }
    hasher
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}
