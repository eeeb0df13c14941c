//! Apply and prune: the cluster side of the build step.
//!
//! Objects are written with server-side apply under the field manager `cloudify-operator`
//! with `force`: the operator is the single owner of the fields it sets (a `kubectl edit` of
//! them is reverted on the next reconcile), while fields it does not set (`replicas` under an
//! HPA, annotations other tools add) stay with their owners. Objects the spec no longer wants
//! are deleted — but only objects that carry our labels *and* a controller owner reference to
//! this very CR (same uid), so nothing the operator did not create is ever touched.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::Preconditions;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Error;
use crate::MANAGER;
use crate::build::Desired;

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

/// Applies every desired object in dependency order and returns the Deployment as the API
/// server answered it (with its status, which tells whether the dataset is served).
pub(super) async fn apply(client: &Client, desired: &Desired) -> Result<Deployment, ApplyError> {
    ssa(client, &desired.config_map).await?;
    ssa(client, &desired.service).await?;
    let deployment = ssa(client, &desired.deployment).await?;
    if let Some(hpa) = &desired.hpa {
        ssa(client, hpa).await?;
    }
    if let Some(pdb) = &desired.pdb {
        ssa(client, pdb).await?;
    }
    if let Some(ingress) = &desired.ingress {
        ssa(client, ingress).await?;
    }
    Ok(deployment)
}

async fn ssa<K>(client: &Client, obj: &K) -> Result<K, ApplyError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + Debug,
{
    let kind = K::kind(&());
    let name = obj.name_any();
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    let params = PatchParams::apply(MANAGER).force();
    api.patch(&name, &params, &Patch::Apply(obj))
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 400 || s.code == 422 => {
                ApplyError::Rejected(format!("the API server rejected {kind} {name}: {}", s.message))
            }
            source => ApplyError::Kube(Error::Kube {
                action: format!("apply {kind} {ns}/{name}"),
                source,
            }),
        })
}

/// Deletes objects owned by the CR (labels and owner uid) that the desired set no longer has.
/// Returns `Kind/name` of what it deleted.
pub(super) async fn prune(
    client: &Client,
    namespace: &str,
    name: &str,
    owner_uid: &str,
    desired: &Desired,
) -> Result<Vec<String>, Error> {
    let keep = |o: Option<&str>| o.map(str::to_string);
    let mut deleted = Vec::new();
    let ctx = PruneCtx {
        client,
        namespace,
        selector: owned_selector(name),
        owner_uid,
    };
    deleted.extend(
        ctx.prune::<ConfigMap>(keep(desired.config_map.metadata.name.as_deref()))
            .await?,
    );
    deleted.extend(
        ctx.prune::<Service>(keep(desired.service.metadata.name.as_deref()))
            .await?,
    );
    deleted.extend(
        ctx.prune::<Deployment>(keep(desired.deployment.metadata.name.as_deref()))
            .await?,
    );
    deleted.extend(
        ctx.prune::<HorizontalPodAutoscaler>(keep(
            desired.hpa.as_ref().and_then(|o| o.metadata.name.as_deref()),
        ))
        .await?,
    );
    deleted.extend(
        ctx.prune::<PodDisruptionBudget>(keep(
            desired.pdb.as_ref().and_then(|o| o.metadata.name.as_deref()),
        ))
        .await?,
    );
    deleted.extend(
        ctx.prune::<Ingress>(keep(
            desired.ingress.as_ref().and_then(|o| o.metadata.name.as_deref()),
        ))
        .await?,
    );
    Ok(deleted)
}

struct PruneCtx<'a> {
    client: &'a Client,
    namespace: &'a str,
    selector: String,
    owner_uid: &'a str,
}

impl PruneCtx<'_> {
    async fn prune<K>(&self, keep: Option<String>) -> Result<Vec<String>, Error>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Debug,
    {
        let kind = K::kind(&());
        let api: Api<K> = Api::namespaced(self.client.clone(), self.namespace);
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
            if !ours || keep.as_deref() == Some(name.as_str()) || obj.metadata.deletion_timestamp.is_some() {
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
