//! STAC registration of a served dataset, and its removal.
//!
//! Once the dataset is Ready, the operator fetches the item the server itself publishes
//! (`/datasets/{name}/stac`, whose asset hrefs use the public URL) and upserts it with the same
//! Transactions client as `cloudify serve --register`. A finalizer is added *before* the first
//! registration so that a deleted CR is deregistered before it disappears. The catalog being
//! down never blocks serving: failures only set `Registered=False` and schedule a retry.

use std::time::Duration;

use cloudify_crds::catalog_client::{self, CatalogClient, ClientError, DEFAULT_COLLECTION};
use cloudify_crds::k8s::{CloudifyDataset, ConditionType, SecretKeyRef};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::{Value, json};

use super::status::{Cond, find, is_true};
use super::{Context, Error, FINALIZER};
use crate::build::PORT;

/// What registration decided for the status.
pub(super) struct Outcome {
    pub cond: Cond,
    pub stac_item: Option<String>,
    /// Retry after this long (a failed attempt).
    pub retry: Option<Duration>,
}

/// Why an attempt failed, as the condition's reason and message.
struct Failure {
    reason: &'static str,
    message: String,
}

impl Failure {
    fn catalog(e: ClientError) -> Self {
        Self {
            reason: if e.is_transient() {
                "CatalogUnavailable"
            } else {
                "CatalogRejected"
            },
            message: e.to_string(),
        }
    }
}

/// Brings the catalog in line with the spec and readiness; returns the Registered condition.
pub(super) async fn reconcile(
    cr: &CloudifyDataset,
    crs: &Api<DynamicObject>,
    ctx: &Context,
    ready: bool,
) -> Result<Outcome, Error> {
    let old = cr.status.as_ref();
    let old_item = old.and_then(|s| s.stac_item.clone());
    let key = super::key(cr);
    let keep_old = || {
        find(old, ConditionType::Registered).map(|c| Cond {
            type_: ConditionType::Registered,
            status: c.status == "True",
            reason: if c.status == "True" {
                "Registered"
            } else {
                "WaitingForReady"
            },
            message: c.message.clone(),
        })
    };

    // A STAC API answers anyone, and an item names the dataset, its variables and extent:
    // private datasets stay out of it unless the CR consents (`spec.access.register`).
    let private = !cr.spec.access.public && !cr.spec.access.register;
    if !cr.spec.catalog.register || private {
        // Remove what an earlier spec registered, then the finalizer that guarded it.
        if let Some(item) = &old_item {
            if let Err(e) = deregister(Some(cr), &cr.namespace().unwrap_or_default(), ctx, item).await {
                let delay = ctx.registration_failed(&key);
                return Ok(Outcome {
                    cond: Cond::new(
                        ConditionType::Registered,
                        true,
                        "DeregistrationFailed",
                        format!("registration is off but removing {item} failed: {e}"),
                    ),
                    stac_item: old_item.clone(),
                    retry: Some(delay),
                });
            }
            ctx.event_deregistered(cr.object_ref(&()), item).await;
        }
        remove_finalizer(crs, &cr.name_any(), cr.finalizers()).await?;
        ctx.registration_succeeded(&key, None);
        return Ok(Outcome {
            cond: if private {
                Cond::new(
                    ConditionType::Registered,
                    false,
                    "PrivateDataset",
                    "private datasets (spec.access.public: false) are registered in the catalog only with spec.access.register: true",
                )
            } else {
                Cond::new(
                    ConditionType::Registered,
                    false,
                    "Disabled",
                    "spec.catalog.register is false",
                )
            },
            stac_item: None,
            retry: None,
        });
    }

    if !ready {
        // The item (if any) stays: a dataset that is briefly unavailable is still the dataset.
        let cond = match keep_old() {
            Some(c) if c.status => c,
            _ => Cond::new(
                ConditionType::Registered,
                false,
                "WaitingForReady",
                "registration waits until the dataset is Ready",
            ),
        };
        return Ok(Outcome {
            cond,
            stac_item: old_item,
            retry: None,
        });
    }

    let base = cr.spec.catalog.url.as_deref().unwrap_or(&ctx.config.catalog_url);
    let collection = cr
        .spec
        .catalog
        .collection
        .as_deref()
        .unwrap_or(DEFAULT_COLLECTION);
    let expected = catalog_client::item_url(base, collection, &cr.spec.dataset.name);
    if is_true(old, ConditionType::Registered)
        && old_item.as_deref() == Some(expected.as_str())
        && ctx.recently_registered(&key, cr.metadata.generation)
        && let Some(c) = keep_old()
    {
        return Ok(Outcome {
            cond: c,
            stac_item: old_item,
            retry: None,
        });
    }

    // A failed attempt is retried when its backoff is over, not on every watch event — unless
    // the spec changed since (a fixed token secret deserves an attempt right away).
    if let Some(wait) = ctx.registration_wait(&key)
        && let Some(c) = find(old, ConditionType::Registered)
            .filter(|c| c.status == "False" && c.observed_generation == cr.metadata.generation)
    {
        return Ok(Outcome {
            cond: Cond {
                type_: ConditionType::Registered,
                status: false,
                reason: failure_reason(&c.reason),
                message: c.message.clone(),
            },
            stac_item: old_item,
            retry: Some(wait),
        });
    }

    // Before anything is in the catalog, so a delete can never skip deregistration.
    add_finalizer(
        crs,
        &cr.name_any(),
        cr.finalizers(),
        cr.resource_version().as_deref(),
    )
    .await?;

    match register(cr, ctx, base, collection).await {
        Ok((url, id)) => {
            if let Some(previous) = old_item.as_deref().filter(|p| *p != url) {
                // The spec moved the item (other catalog or collection): remove the old one.
                if let Err(e) = deregister(Some(cr), &cr.namespace().unwrap_or_default(), ctx, previous).await
                {
                    tracing::warn!(item = %previous, "removing the previously registered item failed: {e}");
                }
            }
            ctx.registration_succeeded(&key, cr.metadata.generation);
            Ok(Outcome {
                cond: Cond::new(
                    ConditionType::Registered,
                    true,
                    "Registered",
                    format!(
                        "item {id} in collection {collection} of {}",
                        base.trim_end_matches('/')
                    ),
                ),
                stac_item: Some(url),
                retry: None,
            })
        }
        Err(f) => {
            let delay = ctx.registration_failed(&key);
            tracing::warn!(cr = %key, reason = f.reason, "registration failed, retrying in {}s: {}", delay.as_secs(), f.message);
            Ok(Outcome {
                cond: Cond::new(ConditionType::Registered, false, f.reason, f.message),
                stac_item: old_item,
                retry: Some(delay),
            })
        }
    }
}

/// The `&'static` reason of a recorded failure condition (reasons are a closed set).
fn failure_reason(reason: &str) -> &'static str {
    match reason {
        "CatalogUnavailable" => "CatalogUnavailable",
        "CatalogRejected" => "CatalogRejected",
        "TokenUnavailable" => "TokenUnavailable",
        "DeregistrationFailed" => "DeregistrationFailed",
        "ItemUnavailable" => "ItemUnavailable",
        _ => "WaitingForReady",
    }
}

/// Fetches the item (and collection) from the dataset's server and upserts them.
/// Returns the item's URL in the catalog and its id.
async fn register(
    cr: &CloudifyDataset,
    ctx: &Context,
    base: &str,
    collection: &str,
) -> Result<(String, String), Failure> {
    let namespace = cr.namespace().unwrap_or_default();
    let server = server_url(&ctx.config.server_url_template, &cr.name_any(), &namespace);
    let item_unavailable = |message: String| Failure {
        reason: "ItemUnavailable",
        message,
    };
    let item_url = format!("{server}/datasets/{}/stac", cr.spec.dataset.name);
    let item_url = if cr.spec.access.public {
        item_url
    } else {
        // a private dataset whose CR consents: read with a URL signed by the operator's key
        let query = signed_query(cr, &namespace, ctx)
            .await
            .map_err(item_unavailable)?;
        format!("{item_url}?{query}")
    };
    let mut item = fetch(ctx, &item_url).await.map_err(|m| {
        // the query holds a signature: name the URL without it
        match item_url.split_once('?') {
            Some((_, query)) if !query.is_empty() => item_unavailable(m.replace(query, "<signed>")),
            _ => item_unavailable(m),
        }
    })?;
    let mut coll = fetch(ctx, &format!("{server}/stac-collection-all.json"))
        .await
        .map_err(item_unavailable)?;
    let id = item
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| item_unavailable("the server's item has no id".into()))?;
    item["collection"] = json!(collection);
    coll["id"] = json!(collection);
    let token = token(Some(cr), &namespace, ctx, base)
        .await
        .map_err(|message| Failure {
            reason: "TokenUnavailable",
            message,
        })?;
    let client = CatalogClient::new(base, token).map_err(Failure::catalog)?;
    client.ensure_collection(&coll).await.map_err(Failure::catalog)?;
    client
        .upsert_item(collection, &item)
        .await
        .map_err(Failure::catalog)?;
    tracing::info!(item = %id, collection, catalog = %client.base(), "registered in the catalog");
    Ok((client.item_url(collection, &id), id))
}

/// How long a URL the operator signs to read a private item stays valid.
const SIGNED_FOR: Duration = Duration::from_secs(300);

/// `expires=..&signature=..` for the CR's dataset, signed with the `signing-key` of its
/// `<name>-internal` Secret (which the server mounts as `access.signedUrlKeyFile`).
async fn signed_query(cr: &CloudifyDataset, namespace: &str, ctx: &Context) -> Result<String, String> {
    let name = format!("{}{}", cr.name_any(), crate::layout::INTERNAL_SUFFIX);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let secret = api
        .get_opt(&name)
        .await
        .map_err(|e| format!("reading secret {namespace}/{name}: {e}"))?
        .ok_or_else(|| format!("secret {namespace}/{name} not found"))?;
    let key = secret
        .data
        .as_ref()
        .and_then(|d| d.get(crate::layout::SIGNING_KEY_KEY))
        .ok_or_else(|| {
            format!(
                "secret {namespace}/{name} has no key '{}'",
                crate::layout::SIGNING_KEY_KEY
            )
        })?;
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + SIGNED_FOR.as_secs();
    let signature = crate::build::internal::sign(&key.0, &cr.spec.dataset.name, expires);
    Ok(format!("expires={expires}&signature={signature}"))
}

async fn fetch(ctx: &Context, url: &str) -> Result<Value, String> {
    let r = ctx
        .http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = r.status();
    if !status.is_success() {
        return Err(format!("GET {url}: {status}"));
    }
    r.json::<Value>()
        .await
        .map_err(|e| format!("GET {url}: not JSON: {e}"))
}

/// The dataset server's base URL from `--server-url-template` (`{service}`, `{namespace}`,
/// `{port}`).
pub fn server_url(template: &str, service: &str, namespace: &str) -> String {
    template
        .replace("{service}", service)
        .replace("{namespace}", namespace)
        .replace("{port}", &PORT.to_string())
        .trim_end_matches('/')
        .to_string()
}

/// Removes the item at `item_url` (as recorded in `status.stacItem`) from its catalog.
pub(super) async fn deregister(
    cr: Option<&CloudifyDataset>,
    namespace: &str,
    ctx: &Context,
    item_url: &str,
) -> Result<(), Error> {
    let Some((base, collection, id)) = catalog_client::parse_item_url(item_url) else {
        tracing::warn!(item = %item_url, "status.stacItem is not an item URL; nothing to deregister");
        return Ok(());
    };
    let token = token(cr, namespace, ctx, &base).await.map_err(Error::Token)?;
    let deregister = |source| Error::Deregister {
        item: item_url.to_string(),
        source,
    };
    let client = CatalogClient::new(&base, token).map_err(deregister)?;
    client.delete_item(&collection, &id).await.map_err(deregister)?;
    tracing::info!(item = %item_url, "removed from the catalog");
    Ok(())
}

/// The bearer token for the catalog at `base`: the CR's token secret if it names one; else the
/// operator's own token, but only for the operator's own catalog (never sent to a URL a CR
/// author chose).
async fn token(
    cr: Option<&CloudifyDataset>,
    namespace: &str,
    ctx: &Context,
    base: &str,
) -> Result<Option<String>, String> {
    if let Some(sel) = cr.and_then(|c| c.spec.catalog.token_secret.as_ref()) {
        return secret_token(ctx, namespace, sel, base).await.map(Some);
    }
    let own = ctx.config.catalog_url.trim_end_matches('/');
    Ok((base.trim_end_matches('/') == own)
        .then(|| ctx.config.catalog_token.clone())
        .flatten())
}

/// Label a Secret must carry before the operator sends it to a catalog a CloudifyDataset
/// names: the operator can read Secrets its CR authors may not, so without the Secret owner's
/// consent any CR author could have it post a namespace's Secret to a URL of their choice.
pub const CATALOG_TOKEN_LABEL: &str = "cloudify.io/catalog-token";
/// Optional annotation of such a Secret: the catalog URL prefixes (comma or space separated)
/// it may be sent to; without it, any catalog a CR in its namespace names.
pub const CATALOG_URLS_ANNOTATION: &str = "cloudify.io/catalog-urls";

/// Whether `secret` may be sent to the catalog at `base` (see [`CATALOG_TOKEN_LABEL`]).
fn secret_allowed(secret: &Secret, name: &str, base: &str) -> Result<(), String> {
    let meta = &secret.metadata;
    let labelled = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(CATALOG_TOKEN_LABEL))
        .is_some_and(|v| v == "true");
    if !labelled {
        return Err(format!(
            "secret {name} is not labelled {CATALOG_TOKEN_LABEL}=true (the label is its owner's consent to send it to catalogs CloudifyDatasets name)"
        ));
    }
    if let Some(urls) = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(CATALOG_URLS_ANNOTATION))
    {
        let allowed: Vec<&str> = urls
            .split([',', ' ', '\n'])
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        let b = base.trim_end_matches('/');
        // a prefix ends at a '/' so https://cat.example.org does not allow https://cat.example.org.evil
        let ok = allowed.iter().any(|u| {
            let u = u.trim_end_matches('/');
            b == u || b.starts_with(&format!("{u}/"))
        });
        if !ok {
            return Err(format!(
                "secret {name} may only be sent to {} ({CATALOG_URLS_ANNOTATION}), not to {base}",
                allowed.join(", ")
            ));
        }
    }
    Ok(())
}

async fn secret_token(
    ctx: &Context,
    namespace: &str,
    sel: &SecretKeyRef,
    base: &str,
) -> Result<String, String> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let name = format!("{namespace}/{}", sel.name);
    let secret = api
        .get_opt(&sel.name)
        .await
        .map_err(|e| format!("reading secret {name}: {e}"))?
        .ok_or_else(|| format!("secret {name} not found"))?;
    secret_allowed(&secret, &name, base)?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&sel.key))
        .ok_or_else(|| format!("secret {name} has no key '{}'", sel.key))?;
    let text = String::from_utf8(bytes.0.clone())
        .map_err(|_| format!("secret {name} key '{}' is not UTF-8", sel.key))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("secret {name} key '{}' is empty", sel.key));
    }
    Ok(token.to_string())
}

/// Adds the finalizer unless present, as a JSON patch guarded by a `test`: on the current
/// list when there is one (so a concurrent change of the finalizers, e.g. another
/// controller's, makes it fail instead of being overwritten), else on the resourceVersion —
/// not `test` of a `null` list, which real API servers accept for a missing path but strict
/// RFC 6902 implementations (the e2e emulator's) reject.
pub(super) async fn add_finalizer(
    crs: &Api<DynamicObject>,
    name: &str,
    current: &[String],
    resource_version: Option<&str>,
) -> Result<(), Error> {
    if current.iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    let ops = if current.is_empty() {
        let mut ops = Vec::new();
        if let Some(rv) = resource_version {
            ops.push(json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv}));
        }
        ops.push(json!({"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}));
        Value::Array(ops)
    } else {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": current},
            {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
        ])
    };
    json_patch(crs, name, ops, "add finalizer").await
}

/// Removes the finalizer if present (same `test` guard as [`add_finalizer`]).
pub(super) async fn remove_finalizer(
    crs: &Api<DynamicObject>,
    name: &str,
    current: &[String],
) -> Result<(), Error> {
    let Some(i) = current.iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    let path = format!("/metadata/finalizers/{i}");
    let ops = json!([
        {"op": "test", "path": path, "value": FINALIZER},
        {"op": "remove", "path": path},
    ]);
    json_patch(crs, name, ops, "remove finalizer").await
}

async fn json_patch(crs: &Api<DynamicObject>, name: &str, ops: Value, what: &str) -> Result<(), Error> {
    let action = format!("{what} of {name}");
    let patch: json_patch::Patch =
        serde_json::from_value(ops).map_err(|e| Error::Serialize(action.clone(), e))?;
    crs.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .map_err(|source| Error::Kube { action, source })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(labelled: bool, urls: Option<&str>) -> Secret {
        let mut s = Secret::default();
        if labelled {
            s.metadata.labels = Some([(CATALOG_TOKEN_LABEL.to_string(), "true".to_string())].into());
        }
        if let Some(u) = urls {
            s.metadata.annotations = Some([(CATALOG_URLS_ANNOTATION.to_string(), u.to_string())].into());
        }
        s
    }

    #[test]
    fn secrets_need_their_owners_consent_and_may_be_pinned_to_catalogs() {
        let e = secret_allowed(&secret(false, None), "ns/t", "https://cat").unwrap_err();
        assert!(
            e.contains("ns/t") && e.contains("cloudify.io/catalog-token=true"),
            "{e}"
        );
        assert!(secret_allowed(&secret(true, None), "ns/t", "https://anywhere").is_ok());
        let pinned = secret(true, Some("https://cat.example.org/stac, http://other:8080"));
        assert!(secret_allowed(&pinned, "ns/t", "https://cat.example.org/stac/").is_ok());
        assert!(secret_allowed(&pinned, "ns/t", "https://cat.example.org/stac/v2").is_ok());
        assert!(secret_allowed(&pinned, "ns/t", "http://other:8080").is_ok());
        let e = secret_allowed(&pinned, "ns/t", "https://cat.example.org/stacked").unwrap_err();
        assert!(
            e.contains("may only be sent to") && e.contains("not to https://cat.example.org/stacked"),
            "{e}"
        );
        assert!(secret_allowed(&pinned, "ns/t", "https://evil.example.com").is_err());
    }

    #[test]
    fn server_url_template() {
        assert_eq!(
            server_url("http://{service}.{namespace}.svc:{port}", "tas", "climate"),
            "http://tas.climate.svc:9000"
        );
        assert_eq!(
            server_url("http://127.0.0.1:4321/", "tas", "x"),
            "http://127.0.0.1:4321"
        );
    }
}
