//! Apply and prune: the cluster side of the build step.
//!
//! Objects are written with server-side apply under the field manager `cloudify-operator`
//! with `force`: the operator is the single owner of the fields it sets (a `kubectl edit` of
//! them is reverted on the next reconcile), while fields it does not set (`replicas` under an
//! HPA, annotations other tools add) stay with their owners. Objects the spec no longer wants
//! are deleted — but only objects that carry our labels *and* a controller owner reference to
//! this very CR (same uid), so nothing the operator did not create is ever touched.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client, ResourceExt};

use super::Error;
use crate::MANAGER;
use crate::build::{Desired, OWNED, Object, OwnedKind};

/// Why applying failed.
#[derive(Debug)]
pub(super) enum ApplyError {
    /// The API server refused an object as invalid (400/422): retrying the same spec cannot
    /// succeed, so the CR is Degraded until it changes. Holds a message naming the object.
    Rejected(String),
    /// Anything else (unreachable API server, conflicts, RBAC): retried with backoff.
    Kube(Error),
}

/// Label selector of every object the operator manages for the CR `name`.
pub fn owned_selector(name: &str) -> String {
    format!("app.kubernetes.io/instance={name},app.kubernetes.io/managed-by={MANAGER}")
}

/// Applies every desired object in dependency order (the order of [`OWNED`]) and returns the
/// Deployment as the API server answered it (with its status, which tells whether the dataset
/// is served).
pub(super) async fn apply(client: &Client, desired: &Desired) -> Result<Applied, ApplyError> {
    let mut deployment = None;
    let mut compute = None;
    let compute_name = desired
        .compute
        .as_ref()
        .and_then(|c| c.deployment.metadata.name.clone());
    for kind in &OWNED {
        for object in kind.objects(desired) {
            let answer = ssa(client, kind, object).await?;
            if kind.kind == <Deployment as k8s_openapi::Resource>::KIND {
                if object.meta().name == compute_name {
                    compute = Some(typed_answer(kind, object, answer)?);
                } else {
                    deployment = Some(typed_answer(kind, object, answer)?);
                }
            }
        }
    }
    // `OWNED` lists the Deployment, which every desired set has (a unit test of `build` says
    // so); without an answer the status is computed from the object as sent (not ready).
    Ok(Applied {
        deployment: deployment.unwrap_or_else(|| desired.deployment.clone()),
        compute: compute.or_else(|| desired.compute.as_ref().map(|c| c.deployment.clone())),
    })
}

/// The Deployments as the API server answered the apply (with their status).
pub(super) struct Applied {
    /// The server Deployment.
    pub deployment: Deployment,
    /// The compute Deployment, when `spec.compute` is enabled.
    pub compute: Option<Deployment>,
}

/// `Kind namespace/name` pieces of an object for messages.
fn names(object: &dyn Object) -> (String, String) {
    let meta = object.meta();
    let name = meta
        .name
        .clone()
        .or_else(|| meta.generate_name.clone())
        .unwrap_or_default();
    (meta.namespace.clone().unwrap_or_default(), name)
}

async fn ssa(client: &Client, kind: &OwnedKind, object: &dyn Object) -> Result<DynamicObject, ApplyError> {
    let (ns, name) = names(object);
    let kind_name = kind.kind;
    let action = || format!("apply {kind_name} {ns}/{name}");
    let body = object
        .to_json()
        .map_err(|e| ApplyError::Kube(Error::Serialize(action(), e)))?;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &kind.api_resource());
    let params = PatchParams::apply(MANAGER).force();
    api.patch(&name, &params, &Patch::Apply(&body))
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 400 || s.code == 422 => ApplyError::Rejected(format!(
                "the API server rejected {kind_name} {name}: {}",
                s.message
            )),
            source => ApplyError::Kube(Error::Kube {
                action: action(),
                source,
            }),
        })
}

/// The API server's answer to an apply as the typed object (as a typed `patch` would have
/// read it).
fn typed_answer<K: serde::de::DeserializeOwned>(
    kind: &OwnedKind,
    object: &dyn Object,
    answer: DynamicObject,
) -> Result<K, ApplyError> {
    serde_json::to_value(answer)
        .and_then(serde_json::from_value)
        .map_err(|e| {
            let (ns, name) = names(object);
            ApplyError::Kube(Error::Kube {
                action: format!("apply {} {ns}/{name}", kind.kind),
                source: kube::Error::SerdeError(e),
            })
        })
}

/// Deletes objects owned by the CR (labels and owner uid) that the desired set no longer has,
/// for every kind in [`OWNED`]. Returns `Kind/name` of what it deleted.
pub(super) async fn prune(
    client: &Client,
    namespace: &str,
    name: &str,
    owner_uid: &str,
    desired: &Desired,
) -> Result<Vec<String>, Error> {
    let mut deleted = Vec::new();
    let ctx = PruneCtx {
        client,
        namespace,
        selector: owned_selector(name),
        owner_uid,
    };
    for kind in &OWNED {
        let keep: Vec<String> = kind
            .objects(desired)
            .iter()
            .filter_map(|o| o.meta().name.clone())
            .collect();
        deleted.extend(ctx.prune(kind, &keep).await?);
    }
    Ok(deleted)
}

struct PruneCtx<'a> {
    client: &'a Client,
    namespace: &'a str,
    selector: String,
    owner_uid: &'a str,
}

impl PruneCtx<'_> {
    async fn prune(&self, owned: &OwnedKind, keep: &[String]) -> Result<Vec<String>, Error> {
        let kind = owned.kind;
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), self.namespace, &owned.api_resource());
        let list = api
            .list_metadata(&ListParams::default().labels(&self.selector))
            .await
            .map_err(|source| Error::Kube {
                action: format!("list {kind} in {} ({})", self.namespace, self.selector),
                source,
            })?;
        let mut deleted = Vec::new();
        for obj in list.items {
            let name = obj.name_any();
            let ours = obj
                .owner_references()
                .iter()
                .any(|o| o.uid == self.owner_uid && o.controller == Some(true));
            if !ours || keep.contains(&name) || obj.metadata.deletion_timestamp.is_some() {
                continue;
            }
            // Precondition on the uid: never delete a same-named object created in between.
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: obj.uid(),
                    resource_version: None,
                }),
                ..DeleteParams::background()
            };
            match api.delete(&name, &params).await {
                Ok(_) => {
                    tracing::info!(kind = %kind, namespace = %self.namespace, name = %name, "deleted object no longer wanted");
                    deleted.push(format!("{kind}/{name}"));
                }
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(source) => {
                    return Err(Error::Kube {
                        action: format!("delete {kind} {}/{name}", self.namespace),
                        source,
                    });
                }
            }
        }
        Ok(deleted)
    }
}

/// Applies the Secret `<name>-internal` when the spec needs it: read by name first (the
/// operator never lists or watches Secrets) so that existing keys are kept and only missing
/// ones generated. When the spec stops needing it, it stays until the CR is deleted (owner
/// reference): turning compute on again reuses the same keys. Returns `desired` with the
/// Secret's data filled in.
pub(super) async fn internal_secret(
    client: &Client,
    namespace: &str,
    owner_uid: &str,
    desired: Desired,
) -> Result<Desired, ApplyError> {
    let Some(name) = desired
        .internal_secret
        .as_ref()
        .and_then(|s| s.metadata.name.clone())
    else {
        return Ok(desired);
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let kube_err = |action: String| move |source| ApplyError::Kube(Error::Kube { action, source });
    let existing = api
        .get_opt(&name)
        .await
        .map_err(kube_err(format!("get Secret {namespace}/{name}")))?;
    if let Some(s) = &existing
        && !s
            .owner_references()
            .iter()
            .any(|o| o.uid == owner_uid && o.controller == Some(true))
    {
        // someone else's Secret of that name: never read into pods, never overwritten
        return Err(ApplyError::Rejected(format!(
            "Secret {namespace}/{name} exists and is not this CloudifyDataset's; the operator keeps the dataset's compute and signing keys under that name: delete or rename it"
        )));
    }
    let keys =
        crate::build::internal::keys(existing.as_ref()).map_err(|e| ApplyError::Rejected(e.to_string()))?;
    let desired = desired.with_keys(keys);
    if let Some(s) = &desired.internal_secret {
        let params = PatchParams::apply(MANAGER).force();
        api.patch(&name, &params, &Patch::Apply(s))
            .await
            .map_err(kube_err(format!("apply Secret {namespace}/{name}")))?;
    }
    Ok(desired)
}
