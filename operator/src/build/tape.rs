//! The staging cache of a dataset on tape (`spec.dataset.storage.tape`): the volume mounted at
//! `stagingDir` and, for a persistent cache, its PersistentVolumeClaim `<name>-tape-cache`.
//!
//! The server's root file system is read-only, so a dataset on tape always gets a volume at
//! its staging directory: an `emptyDir` (size-limited by `tape.cache.size`, so a full cache
//! evicts the pod's files rather than the node's) or, with `tape.cache.storageClassName` or
//! `persistent: true`, a PVC that keeps recalled files across pod restarts. Worker pods
//! always get an `emptyDir` of the same size: a ReadWriteOnce claim is one pod's.

use std::collections::BTreeMap;

use cloudify_crds::{TapeSpec, quantity_bytes};
use k8s_openapi::api::core::v1::{
    EmptyDirVolumeSource, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Volume, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::meta::Target;

/// Suffix of the claim's name: `<name>-tape-cache`.
pub const TAPE_CACHE_SUFFIX: &str = "-tape-cache";
/// Name of the volume in the pod spec.
pub(crate) const VOLUME: &str = "tape-cache";
/// Share of the volume the staging budget may fill when `budgetBytes` is not set: the file
/// being recalled is written beside the budget under a temporary name, and a file system
/// needs some room of its own.
pub const BUDGET_PERCENT: u64 = 90;

/// The dataset's tape settings, if it is on tape.
pub(crate) fn spec<'a>(target: &Target<'a>) -> Option<&'a TapeSpec> {
    target.cr.spec.dataset.storage.as_ref()?.tape.as_ref()
}

/// The claim of a persistent staging cache, owned by the CR (deleted with it).
pub(crate) fn claim(target: &Target) -> Option<PersistentVolumeClaim> {
    let cache = spec(target)?.cache.as_ref().filter(|c| c.is_persistent())?;
    Some(PersistentVolumeClaim {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(format!("{}{TAPE_CACHE_SUFFIX}", target.name)),
            ..target.meta()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: cache.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(cache.size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    })
}

/// The staging volume and where it is mounted, for a server (`worker: false`) or worker pod.
pub(crate) fn volume(target: &Target, worker: bool) -> Option<(Volume, String)> {
    let tape = spec(target)?;
    let cache = tape.cache.as_ref();
    let volume = match cache {
        Some(c) if c.is_persistent() && !worker => Volume {
            name: VOLUME.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: format!("{}{TAPE_CACHE_SUFFIX}", target.name),
                read_only: None,
            }),
            ..Volume::default()
        },
        _ => Volume {
            name: VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: cache.map(|c| Quantity(c.size.clone())),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        },
    };
    Some((volume, tape.staging_dir.clone()))
}

/// Kubernetes' default `progressDeadlineSeconds`: what a rollout of a dataset not on tape gets.
pub const DEFAULT_PROGRESS_DEADLINE: u64 = 600;
/// The server's default of `tape.indexWaitSeconds`.
pub const DEFAULT_INDEX_WAIT: u64 = 3600;

/// `progressDeadlineSeconds` of the Deployments of a dataset on tape: `indexWaitSeconds`
/// (default 3600) plus Kubernetes' default 600 s; `None` (the default) for other datasets.
///
/// A pod's only dataset, netCDF on tape without an index in the cache, opens only once its
/// files are recalled, for up to `indexWaitSeconds`; meanwhile `/readyz` is 503 ("still
/// opening"), so the rollout does not progress. With the default deadline the Deployment
/// would report `ProgressDeadlineExceeded` after ten minutes and the operator `Degraded`,
/// though the recall is merely running. The operator cannot ask the pod (that needs pod
/// RBAC it does not have), but it knows the bound: past `indexWaitSeconds` the server fails
/// the dataset, and then a stuck rollout is a real fault, reported as before.
pub(crate) fn progress_deadline(target: &Target) -> Option<i32> {
    let wait = spec(target)?.index_wait_seconds.unwrap_or(DEFAULT_INDEX_WAIT);
    Some(i32::try_from(wait.saturating_add(DEFAULT_PROGRESS_DEADLINE)).unwrap_or(i32::MAX))
}

/// The staging budget the server is given: `budgetBytes` as written, else
/// [`BUDGET_PERCENT`] of the volume's size (the server's default of 100 GiB knows nothing of
/// the volume and could fill it).
pub(crate) fn budget(tape: &TapeSpec) -> Option<u64> {
    tape.budget_bytes.or_else(|| {
        let size = quantity_bytes(&tape.cache.as_ref()?.size)?;
        Some((size / 100 * BUDGET_PERCENT).max(1))
    })
}

#[cfg(test)]
mod tests {
    use cloudify_crds::k8s::CloudifyDataset;
    use k8s_openapi::api::core::v1::PodSpec;

    use crate::build::{Desired, Settings, build};

    const WLCG: &str =
        "driver: {wlcg: {endpoint: 'https://t.example/api/v1/tape', dataUrl: 'https://t.example'}}";

    fn cr(tape: &str, spec: &str) -> CloudifyDataset {
        let text = format!(
            "apiVersion: cloudify.io/v1alpha1\nkind: CloudifyDataset\n\
             metadata: {{name: tas, namespace: climate, uid: 6a1f1b9e-2c1d-4f43-9a57-3f0f5f0d1c01}}\n\
             spec:\n  dataset: {{name: tas, sources: [/arch/tas.nc], storage: {{tape: {{stagingDir: /staging, {WLCG}{tape}}}}}}}\n{spec}"
        );
        serde_yaml::from_str(&text).expect("CR")
    }

    fn desired(tape: &str, spec: &str) -> Desired {
        build(&cr(tape, spec), &Settings::default()).expect("builds")
    }

    fn pod(d: &Desired, worker: bool) -> PodSpec {
        let dep = if worker {
            &d.compute.as_ref().expect("compute").deployment
        } else {
            &d.deployment
        };
        dep.spec.clone().expect("spec").template.spec.expect("pod")
    }

    /// The staging volume of a pod and where its container mounts it.
    fn staging(p: &PodSpec) -> (serde_json::Value, String, bool) {
        let v = p
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == super::VOLUME)
            .expect("staging volume");
        let m = p.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == super::VOLUME)
            .expect("staging mount");
        (
            serde_json::to_value(v).expect("json"),
            m.mount_path.clone(),
            m.read_only.unwrap_or(false),
        )
    }

    fn config_budget(d: &Desired) -> Option<u64> {
        let text = &d.config_map.data.as_ref().expect("data")[crate::build::CONFIG_FILE];
        let cfg: cloudify_crds::ServeConfig = serde_yaml::from_str(text).expect("config");
        cfg.datasets[0].storage.as_ref()?.tape.as_ref()?.budget_bytes
    }

    #[test]
    fn without_a_cache_block_the_staging_dir_is_a_writable_empty_dir() {
        let d = desired("", "");
        assert!(d.tape_cache.is_none());
        let (v, path, ro) = staging(&pod(&d, false));
        assert_eq!(v, serde_json::json!({"name": "tape-cache", "emptyDir": {}}));
        assert_eq!(path, "/staging");
        assert!(!ro, "the server writes recalled files there");
        assert_eq!(config_budget(&d), None, "the server's own default");
    }

    #[test]
    fn a_sized_cache_is_a_size_limited_empty_dir_and_sets_the_budget() {
        let d = desired(", cache: {size: 10Gi}", "");
        assert!(d.tape_cache.is_none());
        let (v, _, _) = staging(&pod(&d, false));
        assert_eq!(v["emptyDir"]["sizeLimit"], "10Gi");
        assert_eq!(
            config_budget(&d),
            Some((10u64 << 30) / 100 * super::BUDGET_PERCENT)
        );
        // a budget written in the spec is kept
        let d = desired(", budgetBytes: 1000, cache: {size: 10Gi}", "");
        assert_eq!(config_budget(&d), Some(1000));
    }

    #[test]
    fn a_persistent_cache_is_an_owned_claim_mounted_by_the_server_and_workers_get_their_own() {
        let d = desired(
            ", cache: {size: 500Gi, storageClassName: fast}",
            "  compute: {replicas: {min: 2, max: 2}, resources: {requests: {cpu: '1'}}}\n",
        );
        let claim = serde_json::to_value(d.tape_cache.as_ref().expect("claim")).expect("json");
        assert_eq!(claim["metadata"]["name"], "tas-tape-cache");
        assert_eq!(claim["metadata"]["namespace"], "climate");
        let owner = &claim["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "CloudifyDataset");
        assert_eq!(owner["name"], "tas");
        assert_eq!(owner["controller"], true);
        assert_eq!(
            claim["spec"],
            serde_json::json!({"accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                               "resources": {"requests": {"storage": "500Gi"}}})
        );
        assert_eq!(claim["metadata"]["labels"]["app.kubernetes.io/instance"], "tas");
        let (v, path, _) = staging(&pod(&d, false));
        assert_eq!(v["persistentVolumeClaim"]["claimName"], "tas-tape-cache");
        assert_eq!(path, "/staging");
        // workers do not share the server's claim: an emptyDir of the same size each
        let (v, path, _) = staging(&pod(&d, true));
        assert_eq!(v["emptyDir"]["sizeLimit"], "500Gi");
        assert_eq!(path, "/staging");
        // `persistent: true` without a class: the cluster's default class
        let d = desired(", cache: {size: 1Ti, persistent: true}", "");
        let claim = serde_json::to_value(d.tape_cache.as_ref().expect("claim")).expect("json");
        assert!(claim["spec"].get("storageClassName").is_none(), "{claim}");
        // and the objects render (what `cloudify-operator render` prints)
        assert!(d.to_yaml().expect("yaml").contains("kind: PersistentVolumeClaim"));
    }

    #[test]
    fn bad_tape_cache_settings_are_refused_naming_the_field() {
        let bad = |tape: &str, spec: &str| -> String {
            let c = cr(tape, spec);
            match build(&c, &Settings::default()) {
                Ok(_) => panic!("accepted: {tape} {spec}"),
                Err(e) => e.to_string(),
            }
        };
        let e = bad(", cache: {size: lots}", "");
        assert!(e.contains("spec.dataset.storage.tape.cache.size"), "{e}");
        let e = bad(", budgetBytes: 20000000000, cache: {size: 10G}", "");
        assert!(e.contains("budgetBytes") && e.contains("larger"), "{e}");
        let e = bad(
            ", cache: {size: 10Gi, persistent: true}",
            "  replicas: {min: 2, max: 3}\n  resources: {requests: {cpu: 500m}}\n",
        );
        assert!(
            e.contains("spec.dataset.storage.tape.cache") && e.contains("one pod"),
            "{e}"
        );
        // an emptyDir per pod is fine with many pods
        build(
            &cr(
                ", cache: {size: 10Gi}",
                "  replicas: {min: 2, max: 3}\n  resources: {requests: {cpu: 500m}}\n",
            ),
            &Settings::default(),
        )
        .expect("emptyDir with replicas");
        for dir in ["staging", "/etc/cloudify", "/var/cache/cloudify/x", "/tmp", "/"] {
            let text = serde_yaml::to_string(&cr("", ""))
                .expect("yaml")
                .replace("/staging", dir);
            let c: CloudifyDataset = serde_yaml::from_str(&text).expect("CR");
            let e = build(&c, &Settings::default()).expect_err(dir).to_string();
            assert!(e.contains("spec.dataset.storage.tape.stagingDir"), "{dir}: {e}");
        }
        let e = bad("", "  dataVolumes: [{claimName: arch, mountPath: /staging/in}]\n");
        assert!(e.contains("overlaps a data volume"), "{e}");
    }
}
