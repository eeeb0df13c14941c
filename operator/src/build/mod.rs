//! Desired objects of a `CloudifyDataset`: pure functions, CR (+ operator settings) in,
//! Kubernetes objects out.
//!
//! Pure so that `render`, the tests and the reconciler compute exactly the same objects, and
//! so that every decision about what to run is testable without a cluster. Each object gets
//! the standard labels and a controller owner reference to the CR, so Kubernetes garbage
//! collects it with the CR and the operator can find (and prune) what it manages by label.

mod config_map;
mod deployment;
mod ingress;
pub mod internal;
mod meta;
mod owned;
mod scaling;
mod service;
mod tape;

use cloudify_crds::k8s::CloudifyDataset;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;

use deployment::PORT_NAME;
pub use deployment::{CONFIG_HASH_ANNOTATION, PORT};
pub use ingress::default_path;
pub use meta::{compute_labels, compute_selector_labels, labels, selector_labels};
pub use owned::{OWNED, Object, OwnedKind};
pub use tape::{BUDGET_PERCENT, TAPE_CACHE_SUFFIX};

pub use crate::layout::{CACHE_DIR, CONFIG_DIR, CONFIG_FILE};
use crate::validate::{self, InvalidSpec};

/// Server image used when neither the CR nor the operator's settings name one. Tagged with
/// the operator's version because operator and server are released together.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/cloudify/cloudify:", env!("CARGO_PKG_VERSION"));

/// Operator-wide settings that fill what a CR leaves open (from the operator's flags; for
/// `render`, from its command line).
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Server image when `spec.image` is not set.
    pub image: String,
    /// Public base URL when neither `spec.publicUrl` nor an ingress host gives one, e.g.
    /// `https://data.example.org` for a shared ingress host.
    pub public_url: Option<String>,
    /// OpenTelemetry variables given to every server and worker container, so their spans go
    /// to the collector the operator's own go to ([`otel_env`]).
    pub otel_env: Vec<(String, String)>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            image: DEFAULT_IMAGE.into(),
            public_url: None,
            otel_env: Vec::new(),
        }
    }
}

/// The `OTEL_*` variables the operator passes on to the pods it builds, from `get` (its own
/// environment): where and whether to export, and the sampling. Not `OTEL_SERVICE_NAME` (each
/// process names itself `cloudify-serve` / `cloudify-worker`), and not
/// `OTEL_EXPORTER_OTLP_HEADERS`, which may hold a collector credential that must not be
/// copied into Deployment specs in clear (set it from a Secret with `spec.env`-like means
/// instead).
pub fn otel_env(get: impl Fn(&str) -> Option<String>) -> Vec<(String, String)> {
    const PASSED: [&str; 8] = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_SDK_DISABLED",
        "OTEL_TRACES_EXPORTER",
    ];
    PASSED
        .iter()
        .filter_map(|k| {
            get(k)
                .filter(|v| !v.trim().is_empty())
                .map(|v| ((*k).to_string(), v))
        })
        .collect()
}

/// Everything the operator wants to exist for one CR. Optional objects are `None` when the
/// spec turns them off; the reconciler deletes such leftovers by label.
///
/// Each object field has its entry in [`OWNED`], the one list through which `render`, apply,
/// prune, the watches and the RBAC rules reach it.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    pub config_map: ConfigMap,
    pub deployment: Deployment,
    pub service: Service,
    /// `<name>-status` over ready and unready server pods, read by the operator only (see
    /// [`service::status_service`]); `None` when that name would be too long.
    pub status_service: Option<Service>,
    /// Only when `replicas.max > replicas.min`.
    pub hpa: Option<HorizontalPodAutoscaler>,
    /// Only when `replicas.min >= 2` (see [`scaling::pdb`] for why).
    pub pdb: Option<PodDisruptionBudget>,
    /// Only when `ingress.enabled`.
    pub ingress: Option<Ingress>,
    /// The worker pool, only when `spec.compute` is enabled.
    pub compute: Option<Compute>,
    /// The staging cache's claim `<name>-tape-cache`, only for a dataset on tape whose
    /// `tape.cache` is persistent (see [`tape`]).
    pub tape_cache: Option<PersistentVolumeClaim>,
    /// The Secret `<name>-internal` (see [`internal`]), only with a worker pool or a private
    /// dataset the CR consents to register; without data until [`Desired::with_keys`]. Not in
    /// [`OWNED`]: the controller applies and deletes it by name.
    pub internal_secret: Option<Secret>,
    /// The Zarr URL for `status.url`.
    pub url: String,
}

/// The objects of a dataset's worker pool (`spec.compute`), all named `<name>-compute` and
/// labelled `app.kubernetes.io/component: compute`.
#[derive(Clone, Debug, PartialEq)]
pub struct Compute {
    /// `cloudify worker` pods with the server's config.
    pub deployment: Deployment,
    /// The Service the server's `--compute` names.
    pub service: Service,
    /// Only when `compute.replicas.max > compute.replicas.min`.
    pub hpa: Option<HorizontalPodAutoscaler>,
    /// Only when `compute.replicas.min >= 2`.
    pub pdb: Option<PodDisruptionBudget>,
}

/// Why the desired objects cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Invalid(#[from] InvalidSpec),
    #[error(transparent)]
    Random(#[from] internal::RandomError),
    #[error("cannot write the server config of {name}: {source}")]
    Config {
        name: String,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("cannot serialize {kind} {name}: {source}")]
    Serialize {
        kind: &'static str,
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Validates the CR and builds every desired object.
///
/// Defaults that come from the CR's metadata (`spec.dataset.name`) are resolved first, so the
/// ConfigMap holds the name the server will serve and every URL agrees with it.
pub fn build(cr: &CloudifyDataset, settings: &Settings) -> Result<Desired, BuildError> {
    let cr = &cr.clone().resolved();
    validate::validate(cr)?;
    let target = meta::Target::new(cr)?;
    let config_map = config_map::config_map(&target)?;
    let base = public_base(cr, settings);
    let compute = cr.spec.compute_enabled().map(|c| Compute {
        deployment: deployment::compute_deployment(&target, settings, &config_map, c),
        service: service::compute_service(&target),
        hpa: scaling::compute_hpa(&target, c),
        pdb: scaling::compute_pdb(&target, c),
    });
    Ok(Desired {
        compute,
        internal_secret: internal::secret(&target),
        deployment: deployment::deployment(&target, settings, base.as_deref(), &config_map),
        service: service::service(&target),
        status_service: service::status_service(&target),
        hpa: scaling::hpa(&target),
        pdb: scaling::pdb(&target),
        ingress: ingress::ingress(&target),
        tape_cache: tape::claim(&target),
        url: dataset_url(cr, settings),
        config_map,
    })
}

impl Desired {
    /// Fills the internal Secret's data (see [`internal::keys`]).
    pub fn with_keys(mut self, data: std::collections::BTreeMap<String, k8s_openapi::ByteString>) -> Self {
        if let Some(s) = &mut self.internal_secret {
            s.data = Some(data);
        }
        self
    }

    /// The objects in apply order (configuration before the pods that read it, the Service
    /// before the Ingress that routes to it), as multi-document YAML that kubectl reads back
    /// unchanged (see [`crate::yaml`]).
    pub fn to_yaml(&self) -> Result<String, BuildError> {
        let mut out = String::new();
        if let Some(s) = &self.internal_secret {
            push_doc(&mut out, "Secret", s)?;
        }
        for kind in &OWNED {
            for object in kind.objects(self) {
                push_doc(&mut out, kind.kind, object)?;
            }
        }
        Ok(out)
    }
}

fn push_doc(out: &mut String, kind: &'static str, object: &dyn Object) -> Result<(), BuildError> {
    let value = object.to_json().map_err(|source| BuildError::Serialize {
        kind,
        name: object.meta().name.clone().unwrap_or_default(),
        source,
    })?;
    out.push_str("---\n");
    out.push_str(&crate::yaml::to_string(&value));
    Ok(())
}

/// Base URL clients reach the server at, without a trailing `/`.
///
/// In order: `spec.publicUrl`; the ingress host (`https` when a TLS secret is set); the
/// operator's setting. `None` means "only reachable in the cluster": then the server is not
/// given `--public-url` and derives URLs from the request's Host header, which is right for
/// in-cluster clients.
pub fn public_base(cr: &CloudifyDataset, settings: &Settings) -> Option<String> {
    let spec = &cr.spec;
    let from_ingress = || {
        let ingress = &spec.ingress;
        let host = ingress.host.as_ref().filter(|_| ingress.enabled)?;
        let scheme = if ingress.tls_secret.is_some() {
            "https"
        } else {
            "http"
        };
        Some(format!("{scheme}://{host}"))
    };
    spec.public_url
        .clone()
        .or_else(from_ingress)
        .or_else(|| settings.public_url.clone())
        .map(|u| u.trim_end_matches('/').to_string())
}

/// The Zarr URL a client opens (`status.url`): `<public base>/datasets/<dataset name>/zarr`,
/// or the Service's in-cluster address when there is no public base.
pub fn dataset_url(cr: &CloudifyDataset, settings: &Settings) -> String {
    let name = cr.metadata.name.as_deref().unwrap_or_default();
    let base = public_base(cr, settings).unwrap_or_else(|| {
        let namespace = cr.metadata.namespace.as_deref().unwrap_or("default");
        format!("http://{name}.{namespace}.svc:{PORT}")
    });
    let dataset = match cr.spec.dataset.name.as_str() {
        "" => name,
        given => given,
    };
    format!("{base}/datasets/{dataset}/zarr")
}
