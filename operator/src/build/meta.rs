//! Names, labels and owner references shared by every desired object.

use std::collections::BTreeMap;

use cloudify_crds::k8s::CloudifyDataset;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::Resource;

use crate::MANAGER;
use crate::layout::{COMPUTE_SUFFIX, INTERNAL_SUFFIX, STATUS_SUFFIX};
use crate::validate::{FieldError, InvalidSpec};

/// The CR being built, with the metadata every object needs resolved once.
pub(crate) struct Target<'a> {
    pub cr: &'a CloudifyDataset,
    /// CR name; also the name of every owned object (each is of a different kind).
    pub name: &'a str,
    pub namespace: &'a str,
    /// `None` while the CR has no `metadata.uid`, i.e. it was read from a file rather than the
    /// API server (`render` of a GitOps manifest). The API server would reject an owner
    /// reference without a uid, so the objects are then shown without one.
    pub owner: Option<OwnerReference>,
}

impl<'a> Target<'a> {
    pub fn new(cr: &'a CloudifyDataset) -> Result<Self, InvalidSpec> {
        let missing = |field: &str| InvalidSpec {
            name: cr.metadata.name.clone().unwrap_or_default(),
            errors: vec![FieldError::new(field, "required")],
        };
        let name = cr
            .metadata
            .name
            .as_deref()
            .ok_or_else(|| missing("metadata.name"))?;
        let namespace = cr
            .metadata
            .namespace
            .as_deref()
            .ok_or_else(|| missing("metadata.namespace"))?;
        Ok(Self {
            cr,
            name,
            namespace,
            owner: cr.controller_owner_ref(&()),
        })
    }

    /// Metadata of an owned object: the CR's name and namespace, standard labels, owner.
    pub fn meta(&self) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.name.to_string()),
            namespace: Some(self.namespace.to_string()),
            labels: Some(labels(self.name)),
            owner_references: self.owner.clone().map(|o| vec![o]),
            ..ObjectMeta::default()
        }
    }

    /// Name of the dataset's internal-credentials Secret, `<name>-internal`.
    pub fn internal_name(&self) -> String {
        format!("{}{INTERNAL_SUFFIX}", self.name)
    }

    /// Selector of the server pods.
    pub fn selector(&self) -> LabelSelector {
        LabelSelector {
            match_labels: Some(selector_labels(self.name)),
            ..LabelSelector::default()
        }
    }

    /// Name of every compute object: `<name>-compute`.
    pub fn compute_name(&self) -> String {
        format!("{}{COMPUTE_SUFFIX}", self.name)
    }

    /// Name of the Service the operator reads unready server pods' `/status` through,
    /// `<name>-status`.
    pub fn status_name(&self) -> String {
        format!("{}{STATUS_SUFFIX}", self.name)
    }

    /// Metadata of a compute object: like [`meta`](Self::meta), named `<name>-compute` and
    /// labelled `component: compute`.
    pub fn compute_meta(&self) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.compute_name()),
            labels: Some(compute_labels(self.name)),
            ..self.meta()
        }
    }

    /// Selector of the compute (worker) pods.
    pub fn compute_selector(&self) -> LabelSelector {
        LabelSelector {
            match_labels: Some(compute_selector_labels(self.name)),
            ..LabelSelector::default()
        }
    }
}

/// Labels that identify the server pods of one CR. A Deployment's selector is immutable, so
/// this set must never change; `managed-by` is left out for that reason.
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    component_selector_labels(name, "server")
}

/// Labels that identify the compute (worker) pods of one CR. They differ from the server's
/// only in `component`, so the server Service never routes readers to a worker and the
/// worker Service never sends tasks to a server.
pub fn compute_selector_labels(name: &str) -> BTreeMap<String, String> {
    component_selector_labels(name, "compute")
}

fn component_selector_labels(name: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "cloudify".to_string()),
        ("app.kubernetes.io/instance".to_string(), name.to_string()),
        ("app.kubernetes.io/component".to_string(), component.to_string()),
    ])
}

/// Labels on every compute object: the compute selector labels plus `managed-by` (which the
/// prune selects on, so compute objects are pruned like the server's).
pub fn compute_labels(name: &str) -> BTreeMap<String, String> {
    let mut labels = compute_selector_labels(name);
    labels.insert("app.kubernetes.io/managed-by".to_string(), MANAGER.to_string());
    labels
}

/// Labels on every owned object: the selector labels plus `managed-by`, by which the operator
/// finds objects it manages (and prunes those the spec no longer wants).
pub fn labels(name: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(name);
    labels.insert("app.kubernetes.io/managed-by".to_string(), MANAGER.to_string());
    labels
}
