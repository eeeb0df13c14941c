//! The `CloudifyDataset` custom resource (feature `k8s`).
//!
//! A `CloudifyDataset` is one [`DatasetSpec`] plus how to serve it in a cluster: image,
//! resources, replica range, ingress, catalog registration. The operator turns it into a
//! ConfigMap, Deployment, Service, HPA, PodDisruptionBudget and Ingress.
//!
//! Everything the API server can check is in the schema — field types, ranges and CEL rules
//! (`x-kubernetes-validations`) for rules that span fields — so a bad manifest is rejected by
//! `kubectl apply` with the field named, before the operator ever sees it. The operator's own
//! validation covers only what the schema cannot express.
//!
//! The serving types deny unknown fields like [`DatasetSpec`] does: the API server prunes
//! unknown fields anyway, and for `cloudify-operator render` (which sees the manifest as
//! written) a typo must be an error, not a silently ignored setting.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::DatasetSpec;

/// API group of every cloudify custom resource. The `#[kube(group = ...)]` attribute needs a
/// literal, so a test checks that the derived resource uses this value.
pub const API_GROUP: &str = "cloudify.io";
/// API version of [`CloudifyDataset`]. `v1alpha1` while the spec may still change shape.
pub const API_VERSION: &str = "v1alpha1";
/// `apiVersion` as written in manifests.
pub const API_GROUP_VERSION: &str = "cloudify.io/v1alpha1";
/// Ingress class used when `spec.ingress.className` is not given; the issue's target clusters
/// run ingress-nginx.
pub const DEFAULT_INGRESS_CLASS: &str = "nginx";
/// Average CPU utilisation (percent of the CPU request) the HPA aims for when not given.
pub const DEFAULT_TARGET_CPU_UTILIZATION: i32 = 70;
/// Key in the token secrets when not given.
pub const DEFAULT_SECRET_KEY: &str = "token";

/// A dataset served by autoscaled cloudify server pods.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "cloudify.io",
    version = "v1alpha1",
    kind = "CloudifyDataset",
    plural = "cloudifydatasets",
    singular = "cloudifydataset",
    shortname = "cds",
    category = "cloudify",
    namespaced,
    status = "CloudifyDatasetStatus",
    derive = "PartialEq",
    doc = "A netCDF dataset served as Zarr over HTTP by autoscaled cloudify server pods.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        description = "Whether the dataset is served",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "URL",
        type_ = "string",
        description = "Zarr URL clients open",
        json_path = ".status.url"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        description = "Available server replicas",
        json_path = ".status.replicas"
    ),
    printcolumn(
        name = "Compute",
        type_ = "integer",
        description = "Available compute (worker) replicas",
        json_path = ".status.computeReplicas"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    // Object names derive from the CR name and a Service name must be a DNS-1035 label, so the
    // CR name is held to that (the API server itself only requires a DNS-1123 subdomain).
    validation = Rule::new(
        "size(self.metadata.name) <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"
    )
    .message("metadata.name must be a DNS-1035 label (at most 63 lowercase letters, digits and '-', starting with a letter) because it names the Service")
    .reason(Reason::FieldValueInvalid)
)]
#[x_kube(validation = Rule::new(
    "self.replicas.min == self.replicas.max || (has(self.resources) && has(self.resources.requests) && 'cpu' in self.resources.requests)"
).message("resources.requests.cpu is required when replicas.max > replicas.min: the autoscaler's CPU utilisation is relative to the request")
    .field_path(".resources"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudifyDatasetSpec {
    /// The dataset, as in an on-prem `cloudify serve --config` file, except that `name` may be
    /// left out: it defaults to the resource's `metadata.name`.
    #[schemars(transform = name_not_required)]
    pub dataset: DatasetSpec,
    /// Server image. Default: the operator's configured image (matching its own version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// CPU/memory requests and limits of each server pod. A CPU request is required when the
    /// replica range lets the autoscaler act.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Replica range. `min == max` runs a fixed number of pods; `max > min` adds an autoscaler.
    #[serde(default)]
    pub replicas: Replicas,
    /// Average CPU utilisation, in percent of the CPU request, the autoscaler keeps the pods at.
    /// Default 70.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub target_cpu_utilization: Option<i32>,
    /// Read-only volumes with the source files (on-disk datasets).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_volumes: Vec<DataVolume>,
    /// HTTP routing from outside the cluster. On by default: path `/datasets/<dataset name>`
    /// through the `nginx` ingress class, so many datasets share one host.
    #[serde(default)]
    pub ingress: IngressSpec,
    /// Registration of the dataset's STAC item in a STAC API (Transactions extension).
    #[serde(default)]
    pub catalog: CatalogSpec,
    /// Base URL clients reach the server at, e.g. `https://data.example.org`. The dataset's
    /// Zarr URL is `<publicUrl>/datasets/<dataset name>/zarr`. Default: from the ingress host,
    /// else the operator's configured base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^/?#]+(/[^?#]*)?$"))]
    pub public_url: Option<String>,
    /// Who may read the data.
    #[serde(default)]
    pub access: AccessSpec,
    /// A pool of `cloudify worker` pods that the server sends processing work to (derived and
    /// rechunked chunks, partial reductions). Absent or `enabled: false`: processing runs in
    /// the server pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute: Option<ComputeSpec>,
}

impl CloudifyDatasetSpec {
    /// The compute settings when a worker pool is wanted (`spec.compute` given and enabled).
    pub fn compute_enabled(&self) -> Option<&ComputeSpec> {
        self.compute.as_ref().filter(|c| c.enabled)
    }
}

/// The autoscaled worker pool of a dataset (`spec.compute`).
///
/// Workers are stateless: each task names the dataset and the chunks it needs, so Kubernetes
/// can add, remove and restart them freely; the range is the HPA's `cluster.adapt(min, max)`.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new(
    "!self.enabled || self.replicas.min == self.replicas.max || (has(self.resources) && has(self.resources.requests) && 'cpu' in self.resources.requests)"
).message("compute.resources.requests.cpu is required when compute.replicas.max > compute.replicas.min: the autoscaler's CPU utilisation is relative to the request")
    .field_path(".resources"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ComputeSpec {
    /// Whether to run the worker pool. Default true when `compute` is given, so turning it off
    /// keeps the settings for later.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Worker replica range. `min == max` runs a fixed pool; `max > min` adds an autoscaler.
    #[serde(default)]
    pub replicas: Replicas,
    /// Average CPU utilisation, in percent of the CPU request, the autoscaler keeps the
    /// workers at. Default 70. At most 100: workers are pure CPU work, a target above the
    /// request would let a busy pool never grow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization: Option<i32>,
    /// CPU/memory requests and limits of each worker pod. A CPU request is required when the
    /// replica range lets the autoscaler act.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for ComputeSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            replicas: Replicas::default(),
            target_cpu_utilization: None,
            resources: None,
        }
    }
}

/// Drops `name` from the required fields of `spec.dataset`: a CloudifyDataset already has a
/// name, `metadata.name`, which the operator uses when the dataset names none
/// ([`CloudifyDataset::resolve_defaults`]). The same type keeps `name` required in a config file.
fn name_not_required(schema: &mut schemars::Schema) {
    if let Some(serde_json::Value::Array(required)) = schema.get_mut("required") {
        required.retain(|field| field != "name");
    }
}

impl CloudifyDataset {
    /// Fills what a manifest may leave to the resource's own metadata: `spec.dataset.name`
    /// defaults to `metadata.name`. The operator calls this wherever a CR enters it (reconcile,
    /// `render`, `build`), so the objects, the ConfigMap, the URLs and the STAC item all use the
    /// one resolved name.
    pub fn resolve_defaults(&mut self) {
        if self.spec.dataset.name.is_empty()
            && let Some(name) = &self.metadata.name
        {
            self.spec.dataset.name = name.clone();
        }
    }

    /// The CR with [`resolve_defaults`](Self::resolve_defaults) applied.
    pub fn resolved(mut self) -> Self {
        self.resolve_defaults();
        self
    }
}

/// Replica range of the server Deployment.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("self.min <= self.max")
    .message("replicas.min must not be greater than replicas.max")
    .field_path(".min"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Replicas {
    /// Fewest pods (at least 1: the HPA cannot scale to zero).
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub min: i32,
    /// Most pods.
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub max: i32,
}

fn one() -> i32 {
    1
}

impl Default for Replicas {
    fn default() -> Self {
        Self { min: 1, max: 1 }
    }
}

impl Replicas {
    /// Whether an HorizontalPodAutoscaler owns the replica count.
    pub fn autoscaled(&self) -> bool {
        self.max > self.min
    }
}

/// A PersistentVolumeClaim mounted read-only into the server pods.
///
/// Always read-only: the operator never writes to data sources.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataVolume {
    /// Name of the PersistentVolumeClaim (in the CR's namespace).
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
    /// Absolute path in the pod; `spec.dataset.sources` refer to files below it.
    #[schemars(regex(pattern = r"^/.*"))]
    pub mount_path: String,
    /// Sub-directory of the volume to mount instead of its root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
}

/// Ingress settings.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("!has(self.tlsSecret) || has(self.host)")
    .message("ingress.tlsSecret needs ingress.host: a certificate is for a host name")
    .field_path(".tlsSecret"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressSpec {
    /// Whether to create an Ingress. Without one the dataset is reachable in the cluster only.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Host name (no scheme, no port). Default: every host the ingress controller serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
    ))]
    pub host: Option<String>,
    /// Path prefix routed to this dataset. Default `/datasets/<dataset name>`, the server's own
    /// prefix; another path needs a rewrite annotation because the server answers only there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/.*"))]
    pub path: Option<String>,
    /// IngressClass. Default `nginx`.
    #[serde(default = "default_ingress_class")]
    #[schemars(length(min = 1))]
    pub class_name: String,
    /// Secret of type `kubernetes.io/tls` with the host's certificate; enables HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub tls_secret: Option<String>,
    /// Annotations for the Ingress, e.g. ingress-nginx or cert-manager settings.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}

fn default_ingress_class() -> String {
    DEFAULT_INGRESS_CLASS.into()
}

impl Default for IngressSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            host: None,
            path: None,
            class_name: default_ingress_class(),
            tls_secret: None,
            annotations: BTreeMap::new(),
        }
    }
}

/// Registration in a STAC API.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CatalogSpec {
    /// Whether to register the dataset's STAC item once it is ready (and remove it on delete).
    #[serde(default = "yes")]
    pub register: bool,
    /// STAC API root. Default: the operator's configured in-cluster catalog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://.+"))]
    pub url: Option<String>,
    /// Collection id of the item. Default: the server's default collection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub collection: Option<String>,
    /// Bearer token for the Transactions API: a Secret in the dataset's namespace, which must
    /// be labelled `cloudify.io/catalog-token=true` (its owner's consent to have it sent to
    /// catalogs that CloudifyDatasets name) and may pin the catalogs it is sent to with the
    /// annotation `cloudify.io/catalog-urls` (comma-separated URL prefixes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret: Option<SecretKeyRef>,
}

impl Default for CatalogSpec {
    fn default() -> Self {
        Self {
            register: true,
            url: None,
            collection: None,
            token_secret: None,
        }
    }
}

/// Who may read the data.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("self.public || has(self.tokenSecret)")
    .message("access.tokenSecret is required when access.public is false")
    .field_path(".tokenSecret"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessSpec {
    /// Anyone who reaches the URL may read (default).
    #[serde(default = "yes")]
    pub public: bool,
    /// Secret key holding the lowercase hex SHA-256 digests of the bearer tokens readers
    /// present (one a line), required when `public` is false. The key is mounted as the
    /// server's `access.tokenFile`, so changed tokens apply without a restart; the Secret
    /// never holds a usable token. Private datasets are registered in the catalog only
    /// with `register: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret: Option<SecretKeyRef>,
    /// Consent to register a private dataset's STAC item in the catalog (with
    /// `catalog.register`): the item, which anyone who can read the catalog sees, names the
    /// dataset, its variables, extent and URLs; its data stay behind the token. Default
    /// false: a private dataset is not listed anywhere. The operator reads the item from the
    /// server with a URL it signs with a key of its own (the Secret `<name>-internal`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub register: bool,
}

impl Default for AccessSpec {
    fn default() -> Self {
        Self {
            public: true,
            token_secret: None,
            register: false,
        }
    }
}

impl CloudifyDatasetSpec {
    /// Whether the operator registers a private dataset (the CR's consent).
    pub fn registers_private(&self) -> bool {
        !self.access.public && self.access.register && self.catalog.register
    }
}

/// A key of a Secret in the CR's namespace.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret. Default `token`.
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1))]
    pub key: String,
}

fn default_secret_key() -> String {
    DEFAULT_SECRET_KEY.into()
}

/// Observed state, written by the operator only.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloudifyDatasetStatus {
    /// `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded` and `Registered`, one of each type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Zarr URL clients open: `<public base>/datasets/<dataset name>/zarr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// URL of the dataset's item in the STAC API, once registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stac_item: Option<String>,
    /// Available server replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Available compute (worker) replicas; absent when `spec.compute` is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_replicas: Option<i32>,
}

/// The condition types in `status.conditions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionType {
    /// The dataset is served: available replicas answer `/readyz`.
    Ready,
    /// A rollout or scale change is under way.
    Progressing,
    /// The spec cannot be served as is (invalid, source unreachable); `reason` says why.
    Degraded,
    /// The STAC item is in the catalog.
    Registered,
}

impl ConditionType {
    /// Every condition type, in the order the operator writes them.
    pub const ALL: [ConditionType; 4] = [Self::Ready, Self::Progressing, Self::Degraded, Self::Registered];

    /// The `type` string of the condition.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "Ready",
            Self::Progressing => "Progressing",
            Self::Degraded => "Degraded",
            Self::Registered => "Registered",
        }
    }
}

impl std::fmt::Display for ConditionType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::{CustomResourceExt, Resource};

    #[test]
    fn group_and_version_match_the_constants() {
        assert_eq!(CloudifyDataset::group(&()), API_GROUP);
        assert_eq!(CloudifyDataset::version(&()), API_VERSION);
        assert_eq!(CloudifyDataset::api_version(&()), API_GROUP_VERSION);
        let crd = CloudifyDataset::crd();
        assert_eq!(crd.spec.group, API_GROUP);
        assert_eq!(crd.spec.names.short_names, Some(vec!["cds".to_string()]));
    }

    #[test]
    fn defaults_fill_a_minimal_spec() {
        let spec: CloudifyDatasetSpec =
            serde_yaml::from_str("dataset: {name: tas, sources: [/data/tas.nc]}").expect("valid");
        assert_eq!(spec.replicas, Replicas { min: 1, max: 1 });
        assert!(!spec.replicas.autoscaled());
        assert!(spec.ingress.enabled);
        assert_eq!(spec.ingress.class_name, "nginx");
        assert!(spec.catalog.register);
        assert!(spec.access.public);
        assert_eq!(spec.compute, None);
        assert!(spec.compute_enabled().is_none());
    }

    #[test]
    fn compute_block_defaults_to_enabled_and_off_is_kept() {
        let spec: CloudifyDatasetSpec =
            serde_yaml::from_str("dataset: {name: tas, sources: [x]}\ncompute: {replicas: {min: 1, max: 3}}")
                .expect("valid");
        let compute = spec.compute_enabled().expect("given means enabled");
        assert_eq!(compute.replicas, Replicas { min: 1, max: 3 });
        let spec: CloudifyDatasetSpec =
            serde_yaml::from_str("dataset: {name: tas, sources: [x]}\ncompute: {enabled: false}")
                .expect("valid");
        assert!(spec.compute.is_some());
        assert!(spec.compute_enabled().is_none());
        let err = serde_yaml::from_str::<CloudifyDatasetSpec>(
            "dataset: {name: tas, sources: [x]}\ncompute: {workers: 3}",
        )
        .expect_err("unknown field");
        assert!(err.to_string().contains("workers"), "{err}");
        // the schema holds the utilisation to a percentage and has the column
        let crd = serde_json::to_value(CloudifyDataset::crd()).expect("CRD");
        let version = &crd["spec"]["versions"][0];
        let compute = &version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["compute"];
        assert_eq!(compute["properties"]["targetCpuUtilization"]["maximum"], 100.0);
        let columns = version["additionalPrinterColumns"].as_array().expect("columns");
        assert!(
            columns.iter().any(|c| c["jsonPath"] == ".status.computeReplicas"),
            "{columns:?}"
        );
    }

    #[test]
    fn dataset_name_defaults_to_metadata_name() {
        let mut cr: CloudifyDataset = serde_yaml::from_str(
            "apiVersion: cloudify.io/v1alpha1\nkind: CloudifyDataset\nmetadata: {name: tas}\n\
             spec: {dataset: {sources: [/data/tas.nc]}}",
        )
        .expect("a manifest without spec.dataset.name parses");
        assert_eq!(cr.spec.dataset.name, "");
        cr.resolve_defaults();
        assert_eq!(cr.spec.dataset.name, "tas");
        // a name that is given is kept
        let mut cr = cr;
        cr.spec.dataset.name = "tas_day".into();
        assert_eq!(cr.resolved().spec.dataset.name, "tas_day");
        // the CRD does not require it; its pattern still applies when it is given
        let crd = serde_json::to_value(CloudifyDataset::crd()).expect("CRD");
        let dataset = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["dataset"];
        assert_eq!(dataset["required"], serde_json::json!(["sources"]));
        assert!(dataset["properties"]["name"]["pattern"].is_string(), "{dataset}");
    }

    #[test]
    fn unknown_serving_field_is_named() {
        let err = serde_yaml::from_str::<CloudifyDatasetSpec>(
            "dataset: {name: tas, sources: [x]}\ningress: {hostname: a.b}",
        )
        .expect_err("unknown field");
        assert!(err.to_string().contains("hostname"), "{err}");
    }
}
