//! The reconciler: validate → build → apply → prune → status (→ STAC registration).
//!
//! CRs are watched as untyped [`DynamicObject`]s and converted in [`reconcile`], so that an
//! object which does not deserialize (stored under an older schema, or written around the
//! schema) is reported on its own status as `Degraded/MalformedObject` instead of breaking the
//! watch — with a typed watcher, one such object would fail every list and stall the operator.
//!
//! Error policy: what retrying cannot fix (an invalid spec, an object the API server rejects)
//! is not an error at all — it becomes `Degraded` with the reason and the reconciler waits for
//! the CR to change. Everything else (API server unreachable, conflicts, catalog down on
//! delete) is an [`Error`] and retried with per-object exponential backoff by [`error_policy`].

pub mod apply;
mod opening;
mod registration;
pub mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloudify_crds::catalog_client::ClientError;
use cloudify_crds::k8s::{CloudifyDataset, CloudifyDatasetStatus, ConditionType};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

pub use registration::server_url;
use status::{Cond, Rollout, ServerView};

use crate::MANAGER;
use crate::build::{self, Settings};
use crate::metrics::Metrics;

/// Finalizer that guarantees a registered item is removed from the catalog before its CR
/// disappears. If the catalog is gone for good, removing it by hand
/// (`kubectl patch cds NAME --type=json -p '[{"op":"remove","path":"/metadata/finalizers"}]'`)
/// lets the delete finish and leaves the item behind.
pub const FINALIZER: &str = "cloudify.io/catalog-registration";

/// Period of the fallback reconcile of a settled CR (watch events do the real work).
pub const RESYNC: Duration = Duration::from_secs(300);

/// Registration is repeated (an idempotent upsert) at most this often for an unchanged CR, so
/// a catalog that lost its data is refilled without re-registering on every watch event.
pub const REREGISTER: Duration = Duration::from_secs(1800);

/// Longest retry delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The API resource of `CloudifyDataset` for untyped access.
pub fn api_resource() -> ApiResource {
    ApiResource::erase::<CloudifyDataset>(&())
}

/// Exponential backoff after the `n`th consecutive failure: 1 s, 2 s, 4 s, … up to 5 min.
pub fn backoff(n: u32) -> Duration {
    let secs = 1u64 << n.saturating_sub(1).min(16);
    Duration::from_secs(secs).min(MAX_BACKOFF)
}

/// Operator-wide configuration of the reconciler (from `cloudify-operator run` flags).
#[derive(Clone, Debug)]
pub struct Config {
    pub settings: Settings,
    /// STAC API used when a CR names none.
    pub catalog_url: String,
    /// Token for `catalog_url` only.
    pub catalog_token: Option<String>,
    /// How the operator reaches a dataset's server: `{service}`, `{namespace}`, `{port}`.
    pub server_url_template: String,
}

/// Default `--server-url-template`: the dataset's Service through cluster DNS.
pub const DEFAULT_SERVER_URL_TEMPLATE: &str = "http://{service}.{namespace}.svc:{port}";
/// Default `--catalog-url`: the chart's in-cluster `cloudify catalog`.
pub const DEFAULT_CATALOG_URL: &str = "http://cloudify-catalog.cloudify-system.svc:8080";

/// Why a reconcile failed (always retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("deregistering {item}: {source}")]
    Deregister {
        item: String,
        #[source]
        source: ClientError,
    },
    #[error("catalog token: {0}")]
    Token(String),
    #[error("{0}: {1}")]
    Serialize(String, #[source] serde_json::Error),
}

impl Error {
    /// Short kind for the `error` label of the errors metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube",
            Error::Deregister { .. } => "catalog",
            Error::Token(_) => "token",
            Error::Serialize(..) => "serialize",
        }
    }
}

/// State shared by all reconciles.
pub struct Context {
    pub client: Client,
    pub config: Config,
    /// For fetching items from dataset servers.
    pub http: reqwest::Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    /// Consecutive failed reconciles per CR (`namespace/name`), for the backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Consecutive failed registrations per CR and when the next attempt is due: watch
    /// events between attempts must not hammer a catalog that is down.
    registration_failures: Mutex<HashMap<String, (u32, Instant)>>,
    /// Generation and time of this process's last successful registration per CR.
    registered: Mutex<HashMap<String, (Option<i64>, Instant)>>,
    /// Consecutive `/status` reads per CR that got no usable answer (see [`STATUS_MISSES`]).
    status_misses: Mutex<HashMap<String, u32>>,
}

/// Unanswered `/status` reads in a row after which what the server said last (opening,
/// failed) is no longer shown: a missed read or two (a timeout, a restarting pod) must not flip
/// `Degraded` back and forth, but a server gone for good must not be quoted forever.
pub const STATUS_MISSES: u32 = 3;

/// How often an unavailable dataset's server is asked after [`STATUS_MISSES`] unanswered reads.
pub const SILENT_POLL: Duration = Duration::from_secs(60);

impl Context {
    pub fn new(
        client: Client,
        config: Config,
        metrics: Metrics,
        instance: Option<String>,
    ) -> Result<Self, reqwest::Error> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance,
            },
        );
        Ok(Self {
            client,
            config,
            http,
            recorder,
            metrics,
            failures: Mutex::default(),
            registration_failures: Mutex::default(),
            registered: Mutex::default(),
            status_misses: Mutex::default(),
        })
    }

    fn reconcile_failed(&self, key: &str) -> u32 {
        bump(&self.failures, key)
    }

    /// Records a `/status` read; true while what the server said last may still be shown
    /// (fewer than [`STATUS_MISSES`] unanswered reads in a row).
    fn status_read(&self, key: &str, answered: bool) -> bool {
        if answered {
            if let Ok(mut m) = self.status_misses.lock() {
                m.remove(key);
            }
            return true;
        }
        bump(&self.status_misses, key) < STATUS_MISSES
    }

    fn reconcile_succeeded(&self, key: &str) {
        if let Ok(mut m) = self.failures.lock() {
            m.remove(key);
        }
    }

    /// Records a failed registration; returns the delay until the next attempt.
    fn registration_failed(&self, key: &str) -> Duration {
        self.registration_failures.lock().map_or(backoff(1), |mut m| {
            let entry = m.entry(key.to_string()).or_insert((0, Instant::now()));
            entry.0 = entry.0.saturating_add(1);
            let delay = backoff(entry.0);
            entry.1 = Instant::now() + delay;
            delay
        })
    }

    /// Time left before the next registration attempt after a failure, if any.
    fn registration_wait(&self, key: &str) -> Option<Duration> {
        let m = self.registration_failures.lock().ok()?;
        let (_, due) = m.get(key)?;
        let left = due.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// Records a registration (`generation` Some) or that none is wanted (`None` clears).
    fn registration_succeeded(&self, key: &str, generation: Option<i64>) {
        if let Ok(mut m) = self.registration_failures.lock() {
            m.remove(key);
        }
        if let Ok(mut m) = self.registered.lock() {
            if generation.is_some() {
                m.insert(key.to_string(), (generation, Instant::now()));
            } else {
                m.remove(key);
            }
        }
    }

    fn recently_registered(&self, key: &str, generation: Option<i64>) -> bool {
        self.registered.lock().is_ok_and(|m| {
            m.get(key)
                .is_some_and(|(g, at)| *g == generation && at.elapsed() < REREGISTER)
        })
    }

    /// Publishes an event; failures are logged only (events are informational).
    async fn event(&self, reference: &ObjectReference, type_: EventType, reason: &str, note: String) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, reference).await {
            tracing::warn!(reason, "publishing event failed: {e}");
        }
    }

    async fn event_deregistered(&self, reference: ObjectReference, item: &str) {
        self.event(
            &reference,
            EventType::Normal,
            "Deregistered",
            format!("removed {item} from the catalog"),
        )
        .await;
    }
}

fn bump(map: &Mutex<HashMap<String, u32>>, key: &str) -> u32 {
    map.lock().map_or(1, |mut m| {
        let n = m.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    })
}

/// `namespace/name` of an object.
fn key<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

/// The typed CR of a watched object, with the defaults it takes from its metadata resolved
/// (`spec.dataset.name`), so everything the reconciler derives uses one dataset name.
fn typed(obj: &DynamicObject) -> Result<CloudifyDataset, serde_json::Error> {
    serde_json::to_value(obj)
        .and_then(serde_json::from_value::<CloudifyDataset>)
        .map(CloudifyDataset::resolved)
}

/// Reconciles one CR. Invalid specs return `Ok(Action::await_change())` after recording
/// `Degraded`; `Err` is reserved for what a retry can fix.
pub async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.duration.start_timer();
    ctx.metrics.reconciles.inc();
    let key = key(obj.as_ref());
    let result = reconcile_inner(&obj, &ctx).await;
    if result.is_ok() {
        ctx.reconcile_succeeded(&key);
    }
    result
}

/// Decides the retry of a failed reconcile: exponential backoff per object.
pub fn error_policy(obj: Arc<DynamicObject>, err: &Error, ctx: Arc<Context>) -> Action {
    let key = key(obj.as_ref());
    let n = ctx.reconcile_failed(&key);
    let delay = backoff(n);
    ctx.metrics.errors.with_label_values(&[err.metric_label()]).inc();
    tracing::warn!(cr = %key, attempt = n, "reconcile failed, retrying in {}s: {err}", delay.as_secs());
    Action::requeue(delay)
}

async fn reconcile_inner(obj: &DynamicObject, ctx: &Context) -> Result<Action, Error> {
    let namespace = obj.namespace().unwrap_or_default();
    let crs: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &namespace, &api_resource());
    if obj.metadata.deletion_timestamp.is_some() {
        return cleanup(obj, &crs, ctx).await;
    }
    let cr = match typed(obj) {
        Ok(cr) => cr,
        Err(e) => {
            malformed(obj, &crs, ctx, &e).await?;
            return Ok(Action::await_change());
        }
    };
    let desired = match build::build(&cr, &ctx.config.settings) {
        Ok(d) => d,
        Err(e) => return invalid(&cr, &crs, ctx, "InvalidSpec", e.to_string()).await,
    };
    let uid = cr.uid().unwrap_or_default();
    // before the pods that mount it
    let desired = match apply::internal_secret(&ctx.client, &namespace, &uid, desired).await {
        Ok(d) => d,
        Err(apply::ApplyError::Rejected(message)) => {
            return invalid(&cr, &crs, ctx, "ApplyRejected", message).await;
        }
        Err(apply::ApplyError::Kube(e)) => return Err(e),
    };
    let applied = match apply::apply(&ctx.client, &desired).await {
        Ok(d) => d,
        Err(apply::ApplyError::Rejected(message)) => {
            return invalid(&cr, &crs, ctx, "ApplyRejected", message).await;
        }
        Err(apply::ApplyError::Kube(e)) => return Err(e),
    };
    apply::prune(&ctx.client, &namespace, &cr.name_any(), &uid, &desired).await?;

    let rollout = Rollout::of(&applied.deployment);
    let compute_replicas = applied.compute.as_ref().map(|d| Rollout::of(d).available);
    let old = cr.status.as_ref();
    let old_conditions = old.map(|s| s.conditions.as_slice()).unwrap_or_default();
    // While no replica is available: then the Deployment says no more than "unavailable",
    // and the server can say why (opening, failed). Followed at the server's pace until Ready.
    // Once served, a dataset on a tape archive that the server health-checks (WLCG) is still
    // read, at the check's pace: the archive going away is not visible to the Deployment.
    let status_service = desired
        .status_service
        .as_ref()
        .and_then(|s| s.metadata.name.as_deref());
    let tape = cr.spec.dataset.storage.as_ref().and_then(|s| s.tape.as_ref());
    let checked_tape = tape.filter(|t| t.driver.wlcg.is_some());
    let server = match status_service {
        Some(service) if rollout.observed && (!rollout.ready() || checked_tape.is_some()) => {
            Some(opening::view(ctx, &cr, service).await)
        }
        _ => None,
    };
    let keep_last = ctx.status_read(&key(&cr), server.as_ref() != Some(&ServerView::Unknown));
    let mut conds: Vec<Cond> = status::with_server(
        &rollout,
        server.as_ref().unwrap_or(&ServerView::Unknown),
        &cr.spec.dataset.name,
        if keep_last { old_conditions } else { &[] },
        cr.metadata.generation,
    )
    .into();
    let reg = registration::reconcile(&cr, &crs, ctx, rollout.ready()).await?;
    conds.push(reg.cond);
    let new = CloudifyDatasetStatus {
        observed_generation: cr.metadata.generation,
        conditions: status::merge(old_conditions, &conds, cr.metadata.generation, Timestamp::now()),
        url: Some(desired.url.clone()),
        stac_item: reg.stac_item,
        replicas: Some(rollout.available),
        compute_replicas,
    };
    write_status(&cr, &crs, ctx, &new).await?;
    // a server silent for a while (a pod that cannot start) is asked less often
    let poll = server.as_ref().map(|s| {
        if rollout.ready() {
            status::tape_poll(checked_tape.and_then(|t| t.health_check_seconds))
        } else if keep_last {
            s.poll()
        } else {
            SILENT_POLL
        }
    });
    let next = [reg.retry, poll].into_iter().flatten().min().unwrap_or(RESYNC);
    Ok(Action::requeue(next))
}

/// An invalid spec: `Degraded` with the reason, nothing applied or deleted, wait for a change.
async fn invalid(
    cr: &CloudifyDataset,
    crs: &Api<DynamicObject>,
    ctx: &Context,
    reason: &'static str,
    message: String,
) -> Result<Action, Error> {
    tracing::warn!(cr = %key(cr), reason, "{message}");
    let namespace = cr.namespace().unwrap_or_default();
    // What an earlier valid spec left running still serves; report it as it is.
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let existing = deployments
        .get_opt(&cr.name_any())
        .await
        .map_err(|source| Error::Kube {
            action: format!("get Deployment {namespace}/{}", cr.name_any()),
            source,
        })?
        .filter(|d| {
            d.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == cr.metadata.uid.as_ref())
        })
        .map(|d| Rollout::of(&d));
    let mut conds: Vec<Cond> = status::unapplied(existing.as_ref()).into();
    conds.push(Cond::new(ConditionType::Degraded, true, reason, message));
    let old = cr.status.clone().unwrap_or_default();
    let new = CloudifyDatasetStatus {
        observed_generation: cr.metadata.generation,
        conditions: status::merge(&old.conditions, &conds, cr.metadata.generation, Timestamp::now()),
        replicas: existing.as_ref().map(|r| r.available).or(old.replicas),
        ..old
    };
    write_status(cr, crs, ctx, &new).await?;
    Ok(Action::await_change())
}

/// A CR that does not deserialize: `Degraded/MalformedObject` on its status, no requeue.
async fn malformed(
    obj: &DynamicObject,
    crs: &Api<DynamicObject>,
    ctx: &Context,
    err: &serde_json::Error,
) -> Result<(), Error> {
    let name = obj.name_any();
    let message = format!("the object does not match the CloudifyDataset schema: {err}");
    tracing::warn!(cr = %key(obj), "{message}");
    let old: Vec<Condition> = obj
        .data
        .get("status")
        .and_then(|s| s.get("conditions"))
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default();
    let generation = obj.metadata.generation;
    let conds = [Cond::new(
        ConditionType::Degraded,
        true,
        "MalformedObject",
        message.clone(),
    )];
    let merged = status::merge(&old, &conds, generation, Timestamp::now());
    if merged == old {
        return Ok(());
    }
    let patch = json!({"status": {"observedGeneration": generation, "conditions": merged}});
    crs.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| Error::Kube {
            action: format!("patch status of {}", key(obj)),
            source,
        })?;
    ctx.event(
        &obj.object_ref(&api_resource()),
        EventType::Warning,
        "Degraded",
        message,
    )
    .await;
    Ok(())
}

/// Writes the status if it changed and emits events for condition transitions.
async fn write_status(
    cr: &CloudifyDataset,
    crs: &Api<DynamicObject>,
    ctx: &Context,
    new: &CloudifyDatasetStatus,
) -> Result<(), Error> {
    let old = cr.status.as_ref();
    if old == Some(new) {
        return Ok(());
    }
    crs.patch_status(
        &cr.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&status::patch(new)),
    )
    .await
    .map_err(|source| Error::Kube {
        action: format!("patch status of {}", key(cr)),
        source,
    })?;
    let reference = cr.object_ref(&());
    for c in status::transitions(old, new) {
        let was_true = status::is_true(old, condition_type(&c.type_));
        let (type_, reason) = match (c.type_.as_str(), c.status == "True") {
            ("Ready", true) => (EventType::Normal, "Ready"),
            ("Ready", false) if was_true => (EventType::Warning, "NotReady"),
            ("Degraded", true) => (EventType::Warning, "Degraded"),
            ("Registered", true) if c.reason == "Registered" => (EventType::Normal, "Registered"),
            ("Registered", _) if c.reason.contains("Failed") || c.reason.starts_with("Catalog") => {
                (EventType::Warning, "RegistrationFailed")
            }
            ("Registered", _) if c.reason == "ItemUnavailable" || c.reason == "TokenUnavailable" => {
                (EventType::Warning, "RegistrationFailed")
            }
            _ => continue,
        };
        ctx.event(&reference, type_, reason, format!("{}: {}", c.reason, c.message))
            .await;
    }
    Ok(())
}

fn condition_type(t: &str) -> ConditionType {
    ConditionType::ALL
        .into_iter()
        .find(|c| c.as_str() == t)
        .unwrap_or(ConditionType::Degraded)
}

/// A CR being deleted: deregister its item (if registered), then release the finalizer.
/// Owned objects need nothing: their owner references let the garbage collector remove them.
async fn cleanup(obj: &DynamicObject, crs: &Api<DynamicObject>, ctx: &Context) -> Result<Action, Error> {
    let finalizers = obj.finalizers();
    if !finalizers.iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let namespace = obj.namespace().unwrap_or_default();
    let cr = typed(obj).ok();
    let item = obj
        .data
        .get("status")
        .and_then(|s| s.get("stacItem"))
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let reference = obj.object_ref(&api_resource());
    if let Some(item) = &item {
        if let Err(e) = registration::deregister(cr.as_ref(), &namespace, ctx, item).await {
            ctx.event(
                &reference,
                EventType::Warning,
                "DeregistrationFailed",
                format!("{e}; retrying (remove the finalizer {FINALIZER} by hand to skip)"),
            )
            .await;
            return Err(e);
        }
        ctx.event_deregistered(reference, item).await;
    }
    registration::remove_finalizer(crs, &obj.name_any(), finalizers).await?;
    ctx.registration_succeeded(&key(obj), None);
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(9), Duration::from_secs(256));
        assert_eq!(backoff(10), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
