//! The kinds of object the operator owns, listed once.
//!
//! Everything that handles the owned objects kind by kind walks [`OWNED`]: the YAML of
//! [`Desired::to_yaml`] (what `render` prints), the controller's server-side apply and its
//! prune, the watches of owned objects (`.owns()`), and the RBAC rules
//! ([`crate::rbac::operator_rules`]) that the chart's `templates/rbac.yaml` is tested against.
//! A new kind is one field of [`Desired`] and one entry here; forgetting the entry cannot go
//! unnoticed, because [`Desired`]'s objects are only reachable through it.
//!
//! Group, version, kind and plural come from the k8s-openapi type of each entry, so they
//! cannot be misspelled. The order of the list is the apply order: configuration before the
//! pods that read it, the Service before the Ingress that routes to it.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::ApiResource;
use serde::Serialize;
use serde_json::Value;

use super::Desired;

/// One kind of object the operator creates per `CloudifyDataset`.
#[derive(Clone, Copy)]
pub struct OwnedKind {
    /// API group, `""` for the core group (ConfigMap, Service).
    pub group: &'static str,
    /// Version within the group, e.g. `v1`.
    pub version: &'static str,
    /// `apiVersion` of the objects, e.g. `apps/v1`.
    pub api_version: &'static str,
    /// `kind` of the objects, e.g. `Deployment`.
    pub kind: &'static str,
    /// Resource name in URLs and RBAC rules, e.g. `deployments`.
    pub plural: &'static str,
    /// What the operator creates it for (the reason of its RBAC rule).
    pub purpose: &'static str,
    /// The objects of this kind in a desired set (server first, then compute); empty when
    /// the spec turns them off.
    objects: for<'a> fn(&'a Desired) -> Vec<&'a dyn Object>,
}

impl std::fmt::Debug for OwnedKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedKind")
            .field("api_version", &self.api_version)
            .field("kind", &self.kind)
            .field("plural", &self.plural)
            .finish_non_exhaustive()
    }
}

impl OwnedKind {
    /// The entry of the k8s-openapi type `K`, with the object of that kind in [`Desired`].
    const fn of<K: k8s_openapi::Resource>(
        purpose: &'static str,
        objects: for<'a> fn(&'a Desired) -> Vec<&'a dyn Object>,
    ) -> Self {
        Self {
            group: K::GROUP,
            version: K::VERSION,
            api_version: K::API_VERSION,
            kind: K::KIND,
            plural: K::URL_PATH_SEGMENT,
            purpose,
            objects,
        }
    }

    /// The desired objects of this kind; any other object of this kind the operator made
    /// earlier for the CR is pruned.
    pub fn objects<'a>(&self, desired: &'a Desired) -> Vec<&'a dyn Object> {
        (self.objects)(desired)
    }

    /// The kind for untyped (dynamic) API access and watches.
    pub fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.into(),
            version: self.version.into(),
            api_version: self.api_version.into(),
            kind: self.kind.into(),
            plural: self.plural.into(),
        }
    }
}

/// Every kind of object the operator owns, in apply order.
pub const OWNED: [OwnedKind; 7] = [
    OwnedKind::of::<ConfigMap>("the server config of each dataset", |d| vec![&d.config_map]),
    OwnedKind::of::<PersistentVolumeClaim>(
        "the persistent tape staging cache <name>-tape-cache of a dataset on tape",
        |d| d.tape_cache.iter().map(|o| o as &dyn Object).collect(),
    ),
    OwnedKind::of::<Service>(
        "the Services in front of each dataset's server and compute pods",
        |d| {
            let mut v: Vec<&dyn Object> = vec![&d.service];
            v.extend(d.status_service.as_ref().map(|s| s as &dyn Object));
            v.extend(d.compute.as_ref().map(|c| &c.service as &dyn Object));
            v
        },
    ),
    OwnedKind::of::<Deployment>("the server and compute Deployments of each dataset", |d| {
        let mut v: Vec<&dyn Object> = vec![&d.deployment];
        v.extend(d.compute.as_ref().map(|c| &c.deployment as &dyn Object));
        v
    }),
    OwnedKind::of::<HorizontalPodAutoscaler>(
        "the HorizontalPodAutoscalers of autoscaled server and compute pods",
        |d| {
            let mut v: Vec<&dyn Object> = d.hpa.iter().map(|o| o as &dyn Object).collect();
            v.extend(
                d.compute
                    .as_ref()
                    .and_then(|c| c.hpa.as_ref())
                    .map(|o| o as &dyn Object),
            );
            v
        },
    ),
    OwnedKind::of::<PodDisruptionBudget>(
        "the PodDisruptionBudgets of server and compute pods with more than one replica",
        |d| {
            let mut v: Vec<&dyn Object> = d.pdb.iter().map(|o| o as &dyn Object).collect();
            v.extend(
                d.compute
                    .as_ref()
                    .and_then(|c| c.pdb.as_ref())
                    .map(|o| o as &dyn Object),
            );
            v
        },
    ),
    OwnedKind::of::<Ingress>(
        "the Ingress routing /datasets/<name> to the dataset's Service",
        |d| d.ingress.iter().map(|o| o as &dyn Object).collect(),
    ),
];

/// A desired object of any owned kind, as the kind-by-kind code needs it: its metadata (name,
/// namespace) and its JSON form (what is applied and printed).
pub trait Object: Sync {
    /// The object's metadata.
    fn meta(&self) -> &ObjectMeta;
    /// The object as JSON, with `apiVersion` and `kind`.
    fn to_json(&self) -> Result<Value, serde_json::Error>;
}

impl<K> Object for K
where
    K: k8s_openapi::Metadata<Ty = ObjectMeta> + Serialize + Sync,
{
    fn meta(&self) -> &ObjectMeta {
        self.metadata()
    }

    fn to_json(&self) -> Result<Value, serde_json::Error> {
        serde_json::to_value(self)
    }
}

#[cfg(test)]
mod tests {
    use cloudify_crds::k8s::CloudifyDataset;

    use super::*;
    use crate::build::{Settings, build};

    fn desired(spec: &str) -> Desired {
        desired_with("{name: tas, sources: [/data/tas_*.nc]}", spec)
    }

    fn desired_with(dataset: &str, spec: &str) -> Desired {
        let text = format!(
            "apiVersion: cloudify.io/v1alpha1\nkind: CloudifyDataset\n\
             metadata: {{name: tas, namespace: climate, uid: 6a1f1b9e-2c1d-4f43-9a57-3f0f5f0d1c01}}\n\
             spec:\n  dataset: {dataset}\n{spec}"
        );
        let cr: CloudifyDataset = serde_yaml::from_str(&text).expect("CR");
        build(&cr, &Settings::default()).expect("builds")
    }

    fn json(o: &dyn Object) -> Value {
        o.to_json().expect("json")
    }

    #[test]
    fn each_entry_reaches_the_object_of_its_kind() {
        // Every optional object on: a persistent tape cache (one server pod: a claim is one
        // pod's), an Ingress, and an HPA (max > min) and PDB (min >= 2) through the compute pool.
        let d = desired_with(
            "{name: tas, sources: [/arch/tas.nc], storage: {tape: {stagingDir: /staging, \
             driver: {wlcg: {endpoint: 'https://t.example/api/v1/tape', dataUrl: 'https://t.example'}}, \
             cache: {size: 10Gi, storageClassName: fast}}}}",
            "  compute: {replicas: {min: 2, max: 5}, resources: {requests: {cpu: '1'}}}\n",
        );
        // Exhaustive on purpose: a new object field of `Desired` does not compile here until it
        // is listed, and then this test fails until `OWNED` has its entry.
        let Desired {
            config_map,
            service,
            status_service,
            deployment,
            hpa,
            pdb,
            ingress,
            compute,
            tape_cache,
            // applied by name, not through OWNED (Secrets are never listed or watched)
            internal_secret: _,
            url: _,
        } = &d;
        assert!(hpa.is_none() && pdb.is_none(), "one fixed server pod");
        let crate::build::Compute {
            deployment: compute_deployment,
            service: compute_service,
            hpa: compute_hpa,
            pdb: compute_pdb,
        } = compute.as_ref().expect("compute");
        let fields = vec![
            json(config_map),
            json(tape_cache.as_ref().expect("tape cache claim")),
            json(service),
            json(status_service.as_ref().expect("status service")),
            json(compute_service),
            json(deployment),
            json(compute_deployment),
            json(compute_hpa.as_ref().expect("compute hpa")),
            json(compute_pdb.as_ref().expect("compute pdb")),
            json(ingress.as_ref().expect("ingress")),
        ];
        let mut listed = Vec::new();
        for kind in &OWNED {
            let objects = kind.objects(&d);
            assert!(
                !objects.is_empty(),
                "no {} in a desired set with everything on",
                kind.kind
            );
            for object in objects {
                let value = json(object);
                assert_eq!(value["kind"], kind.kind);
                assert_eq!(value["apiVersion"], kind.api_version);
                listed.push(value);
            }
        }
        assert_eq!(listed, fields);
    }

    #[test]
    fn the_status_service_lists_unready_pods_and_is_left_out_when_its_name_would_not_fit() {
        let d = desired("");
        let status = d.status_service.as_ref().expect("status service");
        assert_eq!(status.metadata.name.as_deref(), Some("tas-status"));
        let spec = status.spec.as_ref().expect("spec");
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        // the same pods as the main Service
        assert_eq!(
            spec.selector,
            d.service.spec.as_ref().and_then(|s| s.selector.clone())
        );
        assert_eq!(
            d.service
                .spec
                .as_ref()
                .and_then(|s| s.publish_not_ready_addresses),
            None
        );

        // a 60-character name is a valid CR (and Service) name, '<name>-status' is not: the CR
        // still builds, without the status Service (no name valid before is refused)
        let long = "a".repeat(60);
        let text = format!(
            "apiVersion: cloudify.io/v1alpha1\nkind: CloudifyDataset\n\
             metadata: {{name: {long}, namespace: climate}}\n\
             spec:\n  dataset: {{name: tas, sources: [/data/tas_*.nc]}}\n"
        );
        let cr: CloudifyDataset = serde_yaml::from_str(&text).expect("CR");
        let d = build(&cr, &Settings::default()).expect("builds");
        assert!(d.status_service.is_none());
        let services = OWNED.iter().find(|k| k.kind == "Service").expect("Services");
        assert_eq!(services.objects(&d).len(), 1, "only the main Service");
    }

    #[test]
    fn optional_kinds_are_absent_when_off_and_the_deployment_never_is() {
        let d = desired("  ingress: {enabled: false}\n");
        let present: Vec<&str> = OWNED
            .iter()
            .filter(|kind| !kind.objects(&d).is_empty())
            .map(|kind| kind.kind)
            .collect();
        // The controller reads the rollout from the applied Deployment, so it must always be
        // in the list and in every desired set.
        assert_eq!(present, ["ConfigMap", "Service", "Deployment"]);
        // compute off (or given but disabled): one object per kind, none named -compute
        let d =
            desired("  ingress: {enabled: false}\n  compute: {enabled: false, replicas: {min: 3, max: 3}}\n");
        for kind in &OWNED {
            for object in kind.objects(&d) {
                let name = object.meta().name.clone().unwrap_or_default();
                assert!(!name.ends_with("-compute"), "{} {name}", kind.kind);
            }
        }
        assert_eq!(OWNED[3].objects(&d).len(), 1);
    }

    #[test]
    fn coordinates_are_those_kube_uses() {
        let listed: Vec<ApiResource> = OWNED.iter().map(OwnedKind::api_resource).collect();
        let expected = [
            ApiResource::erase::<ConfigMap>(&()),
            ApiResource::erase::<PersistentVolumeClaim>(&()),
            ApiResource::erase::<Service>(&()),
            ApiResource::erase::<Deployment>(&()),
            ApiResource::erase::<HorizontalPodAutoscaler>(&()),
            ApiResource::erase::<PodDisruptionBudget>(&()),
            ApiResource::erase::<Ingress>(&()),
        ];
        assert_eq!(listed, expected);
        assert_eq!(listed[4].plural, "horizontalpodautoscalers");
        assert_eq!(listed[1].plural, "persistentvolumeclaims");
    }
}
