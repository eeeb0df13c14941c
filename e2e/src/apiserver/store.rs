//! The object store: objects as JSON values keyed by resource, namespace and name, one global
//! `resourceVersion` counter (like etcd's revision), the watch event history, admission
//! (validation, defaulting, managed fields), deletion with finalizers and the garbage
//! collector. All of it runs under one lock, so every write is atomic and watch events are
//! totally ordered by resourceVersion.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, broadcast};

use super::fields::{self, Scope, Shape};
use super::resources::{self, ResourceType};
use super::schema;
use super::status::{ApiError, ApiResult, Cause};

/// Watch events kept for `resourceVersion`-based resumption; older ones answer 410 Gone.
const HISTORY: usize = 5000;

/// One change, as watchers receive it.
#[derive(Debug)]
pub struct WatchEvent {
    pub rv: u64,
    /// Storage key of the resource (`apps/deployments`).
    pub key: String,
    pub namespace: String,
    pub etype: &'static str,
    pub object: Value,
    /// The object before this change (selector-filtered watches turn a MODIFIED that stops
    /// matching into DELETED, like the real watch cache).
    pub prev: Option<Value>,
}

/// `fieldValidation` of a write.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

/// Per-request write options.
#[derive(Debug, Clone)]
pub struct WriteOpts {
    pub manager: String,
    pub validation: FieldValidation,
    pub dry_run: bool,
    /// `status` for writes to the status subresource.
    pub subresource: String,
}

/// Result of a write.
#[derive(Debug)]
pub struct Written {
    pub object: Value,
    pub created: bool,
    pub warnings: Vec<String>,
}

/// Result of a delete.
pub enum Deleted {
    /// Removed from the store; this was its last state.
    Gone(Value),
    /// Finalizers pending: `deletionTimestamp` is set, the object stays.
    Pending(Value),
}

pub struct Store {
    pub types: Vec<ResourceType>,
    objects: BTreeMap<String, BTreeMap<(String, String), Value>>,
    rv: u64,
    history: VecDeque<Arc<WatchEvent>>,
    /// Events with a resourceVersion at or below this are no longer available.
    compacted: u64,
    pub tx: broadcast::Sender<Arc<WatchEvent>>,
    /// Signals the persistence task that the state changed.
    pub changed: Arc<Notify>,
    next_ip: u32,
    /// Set by writes that can give the garbage collector work (deletions, owner references,
    /// deletion marks), so ordinary writes skip the full scan.
    gc_pending: bool,
}

/// Retained events after a version, then the live stream.
pub type Subscription = (Vec<Arc<WatchEvent>>, broadcast::Receiver<Arc<WatchEvent>>);

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn meta(o: &Value) -> &Value {
    &o["metadata"]
}

pub fn name_of(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or_default()
}

fn meta_mut(o: &mut Value) -> &mut Map<String, Value> {
    if !o["metadata"].is_object() {
        o["metadata"] = json!({});
    }
    match o.get_mut("metadata").and_then(Value::as_object_mut) {
        Some(m) => m,
        None => unreachable!("metadata was just made an object"),
    }
}

fn finalizers(o: &Value) -> Vec<String> {
    meta(o)["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(String::from)
        .collect()
}

fn set_finalizers(o: &mut Value, f: &[String]) {
    let m = meta_mut(o);
    if f.is_empty() {
        m.remove("finalizers");
    } else {
        m.insert("finalizers".into(), json!(f));
    }
}

const DNS1123_SUBDOMAIN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
const DNS1123_LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

fn validate_name(rt: &ResourceType, name: &str) -> Option<Cause> {
    let v = Value::String(name.into());
    if rt.kind == "Namespace" {
        let ok = name.len() <= 63 && schema::regex_match(DNS1123_LABEL, name).unwrap_or(false);
        (!ok).then(|| Cause::invalid("metadata.name", &v, "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"))
    } else {
        let ok = name.len() <= 253 && schema::regex_match(DNS1123_SUBDOMAIN, name).unwrap_or(false);
        (!ok).then(|| Cause::invalid("metadata.name", &v, "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"))
    }
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes[..5]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// The object without the parts that change on every write, to detect no-op writes.
fn comparable(o: &Value) -> Value {
    let mut c = o.clone();
    if let Some(m) = c.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        if let Some(Value::Array(mf)) = m.get_mut("managedFields") {
            for e in mf {
                if let Some(e) = e.as_object_mut() {
                    e.remove("time");
                }
            }
        }
    }
    c
}

/// Everything except metadata and status: changes here bump `metadata.generation`.
fn spec_part(o: &Value) -> Value {
    let mut c = o.clone();
    if let Some(m) = c.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    c
}

impl Store {
    pub fn new() -> Store {
        let (tx, _) = broadcast::channel(16384);
        let mut s = Store {
            types: resources::builtins(),
            objects: BTreeMap::new(),
            rv: 1,
            history: VecDeque::new(),
            compacted: 1,
            tx,
            changed: Arc::new(Notify::new()),
            next_ip: 1,
            gc_pending: false,
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let rt = s.type_for_key("/namespaces").cloned();
            if let Some(rt) = rt {
                let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
                let opts = WriteOpts {
                    manager: "kube-apiserver".into(),
                    validation: FieldValidation::Ignore,
                    dry_run: false,
                    subresource: String::new(),
                };
                if let Err(e) = s.create(&rt, "", body, &opts) {
                    tracing::error!("cannot create namespace {ns}: {e}");
                }
            }
        }
        s
    }

    /// Snapshot for persistence.
    pub fn snapshot(&self) -> Value {
        let objects: Vec<Value> = self
            .objects
            .iter()
            .flat_map(|(k, m)| m.values().map(move |o| json!({"key": k, "object": o})))
            .collect();
        json!({"resourceVersion": self.rv, "objects": objects})
    }

    /// Restore a snapshot written by [`Store::snapshot`].
    pub fn restore(snapshot: &Value) -> Result<Store, String> {
        let mut s = Store::new();
        s.objects.clear();
        s.rv = snapshot["resourceVersion"]
            .as_u64()
            .ok_or("state file has no resourceVersion")?;
        s.compacted = s.rv;
        for e in snapshot["objects"]
            .as_array()
            .ok_or("state file has no objects list")?
        {
            let key = e["key"]
                .as_str()
                .ok_or("state file object without key")?
                .to_string();
            let obj = e["object"].clone();
            let ns = meta(&obj)["namespace"].as_str().unwrap_or_default().to_string();
            let name = name_of(&obj).to_string();
            s.objects.entry(key).or_default().insert((ns, name), obj);
        }
        s.refresh_types();
        Ok(s)
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Drop the watch history, as etcd compaction does; older resourceVersions get 410 Gone.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    pub fn find_type(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
    }

    pub fn type_for_key(&self, key: &str) -> Option<&ResourceType> {
        self.types.iter().find(|t| t.key() == key)
    }

    /// Rebuild the served types from the built-ins and the stored CRDs.
    fn refresh_types(&mut self) {
        let mut types = resources::builtins();
        for crd in self
            .objects
            .get("apiextensions.k8s.io/customresourcedefinitions")
            .into_iter()
            .flat_map(|m| m.values())
        {
            if meta(crd).get("deletionTimestamp").is_none() {
                types.extend(resources::from_crd(crd));
            }
        }
        self.types = types;
    }

    fn namespace_exists(&self, ns: &str) -> bool {
        self.objects
            .get("/namespaces")
            .is_some_and(|m| m.contains_key(&(String::new(), ns.to_string())))
    }

    /// The object as the resource's version presents it.
    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> ApiResult<Value> {
        self.get_stored(rt, ns, name)
            .map(|o| from_storage(rt, &o).into_owned())
    }

    /// The object in its storage form (core form for Events).
    fn get_stored(&self, rt: &ResourceType, ns: &str, name: &str) -> ApiResult<Value> {
        self.objects
            .get(&rt.key())
            .and_then(|m| m.get(&(ns.to_string(), name.to_string())))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))
    }

    /// Objects of a resource, ordered by namespace and name; `ns` None = all namespaces.
    pub fn list(&self, rt: &ResourceType, ns: Option<&str>) -> Vec<Cow<'_, Value>> {
        self.objects
            .get(&rt.key())
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(|((ons, _), _)| ns.is_none_or(|n| n == ons))
            .map(|(_, o)| from_storage(rt, o))
            .collect()
    }

    /// Subscribe to changes after `since`: the retained events after it, then the live stream.
    pub fn watch_from(&self, key: &str, since: u64) -> ApiResult<Subscription> {
        if since < self.compacted {
            return Err(ApiError::gone(format!(
                "too old resource version: {since} ({})",
                self.compacted + 1
            )));
        }
        let backlog = self
            .history
            .iter()
            .filter(|e| e.rv > since && e.key == key)
            .cloned()
            .collect();
        Ok((backlog, self.tx.subscribe()))
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<WatchEvent>> {
        self.tx.subscribe()
    }

    fn emit(&mut self, key: &str, ns: &str, etype: &'static str, object: Value, prev: Option<Value>) {
        let ev = Arc::new(WatchEvent {
            rv: self.rv,
            key: key.to_string(),
            namespace: ns.to_string(),
            etype,
            object,
            prev,
        });
        self.history.push_back(ev.clone());
        while self.history.len() > HISTORY {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        let _ = self.tx.send(ev);
        self.changed.notify_one();
    }

    fn store(&mut self, key: &str, mut obj: Value, etype: &'static str) -> Value {
        self.rv += 1;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        if meta(&obj).get("ownerReferences").is_some() || meta(&obj).get("deletionTimestamp").is_some() {
            self.gc_pending = true;
        }
        let ns = meta(&obj)["namespace"].as_str().unwrap_or_default().to_string();
        let name = name_of(&obj).to_string();
        let prev = self
            .objects
            .entry(key.to_string())
            .or_default()
            .insert((ns.clone(), name), obj.clone());
        self.emit(key, ns.as_str(), etype, obj.clone(), prev);
        obj
    }

    fn remove(&mut self, key: &str, ns: &str, name: &str) -> Option<Value> {
        let mut obj = self
            .objects
            .get_mut(key)?
            .remove(&(ns.to_string(), name.to_string()))?;
        self.rv += 1;
        self.gc_pending = true;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        self.emit(key, ns, "DELETED", obj.clone(), None);
        if key == "apiextensions.k8s.io/customresourcedefinitions" {
            self.on_crd_removed(&obj);
        }
        Some(obj)
    }

    pub fn create(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        mut body: Value,
        opts: &WriteOpts,
    ) -> ApiResult<Written> {
        if !body.is_object() {
            return Err(ApiError::bad_request("the request body must be a JSON object"));
        }
        let m = meta_mut(&mut body);
        let has_name = m
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        if !has_name
            && let Some(g) = m
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|g| !g.is_empty())
        {
            let name = format!("{g}{}", random_suffix());
            m.insert("name".into(), json!(name));
        }
        let name = name_of(&body).to_string();
        if name.is_empty() {
            return Err(ApiError::invalid(
                &rt.kind,
                &rt.group,
                "",
                vec![Cause {
                    reason: "FieldValueRequired",
                    message: "Required value: name or generateName is required".into(),
                    field: "metadata.name".into(),
                }],
            ));
        }
        if self.get(rt, ns, &name).is_ok() {
            return Err(ApiError::already_exists(&rt.group, &rt.plural, &name));
        }
        self.commit(rt, ns, &name, None, body, opts, false)
    }

    /// PUT: replace the object (or its status).
    pub fn update(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        body: Value,
        opts: &WriteOpts,
    ) -> ApiResult<Written> {
        let old = self.get(rt, ns, name)?;
        let body_name = name_of(&body);
        if body_name.is_empty() {
            return Err(ApiError::bad_request("name is required in the object metadata"));
        }
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if let Some(rv) = meta(&body)["resourceVersion"].as_str().filter(|r| !r.is_empty())
            && Some(rv) != meta(&old)["resourceVersion"].as_str()
        {
            return Err(ApiError::conflict(
                &rt.group,
                &rt.plural,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        self.commit(rt, ns, name, Some(old), body, opts, false)
    }

    /// Patch an existing object with a computed new body (patch already applied by the caller).
    #[allow(clippy::too_many_arguments)]
    pub fn replace_patched(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        old: Value,
        new: Value,
        opts: &WriteOpts,
        managed: bool,
    ) -> ApiResult<Written> {
        if let Some(rv) = meta(&new)["resourceVersion"].as_str().filter(|r| !r.is_empty())
            && Some(rv) != meta(&old)["resourceVersion"].as_str()
        {
            return Err(ApiError::conflict(
                &rt.group,
                &rt.plural,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        if name_of(&new) != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                name_of(&new)
            )));
        }
        self.commit(rt, ns, name, Some(old), new, opts, managed)
    }

    /// Create through server-side apply (object did not exist).
    pub fn create_applied(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        obj: Value,
        opts: &WriteOpts,
    ) -> ApiResult<Written> {
        self.commit(rt, ns, name, None, obj, opts, true)
    }

    fn scope(rt: &ResourceType, subresource: &str) -> Scope {
        if !rt.status_subresource {
            Scope::All
        } else if subresource == "status" {
            Scope::StatusOnly
        } else {
            Scope::NoStatus
        }
    }

    pub fn shape(rt: &ResourceType) -> Shape<'_> {
        match &rt.crd {
            Some(c) => c.schema.as_ref().map(Shape::Schema).unwrap_or(Shape::Unknown),
            None => Shape::Builtin(&rt.kind),
        }
    }

    pub fn scope_for(rt: &ResourceType, opts: &WriteOpts) -> Scope {
        Self::scope(rt, &opts.subresource)
    }

    /// The common tail of every write: scoping to the subresource, admission, system metadata,
    /// ownership, finalizer-completed deletion, no-op detection, storing and follow-ups.
    #[allow(clippy::too_many_arguments)]
    fn commit(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        old: Option<Value>,
        new: Value,
        opts: &WriteOpts,
        managed: bool,
    ) -> ApiResult<Written> {
        let mut w = self.commit_stored(rt, ns, name, old, new, opts, managed)?;
        w.object = from_storage(rt, &w.object).into_owned();
        Ok(w)
    }

    #[allow(clippy::too_many_arguments)]
    fn commit_stored(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        old: Option<Value>,
        mut new: Value,
        opts: &WriteOpts,
        managed: bool,
    ) -> ApiResult<Written> {
        let api_version = rt.api_version();
        // apiVersion/kind must match the endpoint.
        match new.get("kind").and_then(Value::as_str) {
            None | Some("") => {
                return Err(ApiError::bad_request(format!(
                    "Object 'Kind' is missing in '{}'",
                    truncate(&new.to_string())
                )));
            }
            Some(k) if k != rt.kind => {
                return Err(ApiError::bad_request(format!(
                    "{k} in version {:?} cannot be handled as a {}: the object kind does not match the endpoint",
                    rt.version, rt.kind
                )));
            }
            _ => {}
        }
        match new.get("apiVersion").and_then(Value::as_str) {
            Some(v) if v == api_version => {}
            Some(v) => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({v}) does not match the expected API version ({api_version})"
                )));
            }
            None => {
                return Err(ApiError::bad_request(format!(
                    "Object 'apiVersion' is missing in '{}'",
                    truncate(&new.to_string())
                )));
            }
        }
        // Namespace.
        if rt.namespaced {
            if let Some(bns) = meta(&new)["namespace"].as_str().filter(|n| !n.is_empty())
                && bns != ns
            {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            if !self.namespace_exists(ns) {
                return Err(ApiError::not_found("", "namespaces", ns));
            }
            if old.is_none()
                && let Ok(n) = self.get(
                    &self
                        .type_for_key("/namespaces")
                        .cloned()
                        .ok_or_else(|| ApiError::internal("no namespaces type"))?,
                    "",
                    ns,
                )
                && meta(&n).get("deletionTimestamp").is_some()
            {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    format!(
                        "{} {name:?} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                        rt.plural
                    ),
                ));
            }
            meta_mut(&mut new).insert("namespace".into(), json!(ns));
        } else {
            meta_mut(&mut new).remove("namespace");
        }
        if old.is_none()
            && let Some(c) = validate_name(rt, name)
        {
            return Err(ApiError::invalid(&rt.kind, &rt.group, name, vec![c]));
        }
        // Status subresource scoping.
        let scope = Self::scope(rt, &opts.subresource);
        match (scope, &old) {
            (Scope::StatusOnly, Some(o)) => {
                let status = new.get("status").cloned();
                let mut keep = o.clone();
                match status {
                    Some(s) => keep["status"] = s,
                    None => {
                        if let Some(m) = keep.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
                // Ownership entries written by this request travel with the status.
                if managed && let Some(mf) = meta(&new).get("managedFields").cloned() {
                    meta_mut(&mut keep).insert("managedFields".into(), mf);
                }
                new = keep;
            }
            (Scope::NoStatus, Some(o)) => match o.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            },
            (Scope::NoStatus, None)
                if rt.crd.is_some()
                    || matches!(
                        rt.kind.as_str(),
                        "Deployment"
                            | "ReplicaSet"
                            | "HorizontalPodAutoscaler"
                            | "PodDisruptionBudget"
                            | "PersistentVolumeClaim"
                            | "Ingress"
                            | "CustomResourceDefinition"
                    ) =>
            {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
            _ => {}
        }
        // Admission.
        let warnings = self.admit(rt, old.as_ref(), &mut new, opts)?;
        // From here on the object is in its storage form.
        let new_stored = to_storage(rt, &new);
        new = new_stored;
        let old = old.map(|o| to_storage(rt, &o));
        // System metadata.
        let now = now();
        {
            let created = old.as_ref().map(|o| meta(o).clone());
            let m = meta_mut(&mut new);
            for k in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "selfLink",
            ] {
                m.remove(k);
            }
            match &created {
                Some(om) => {
                    for k in [
                        "uid",
                        "creationTimestamp",
                        "deletionTimestamp",
                        "deletionGracePeriodSeconds",
                        "generation",
                    ] {
                        if let Some(v) = om.get(k) {
                            m.insert(k.into(), v.clone());
                        }
                    }
                }
                None => {
                    m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
                    m.insert("creationTimestamp".into(), json!(now));
                    if rt.generation {
                        m.insert("generation".into(), json!(1));
                    }
                }
            }
        }
        if rt.generation
            && let Some(o) = &old
            && spec_part(o) != spec_part(&new)
        {
            let g = meta(o)["generation"].as_i64().unwrap_or(0) + 1;
            meta_mut(&mut new).insert("generation".into(), json!(g));
        }
        if !managed {
            let manager = if opts.manager.is_empty() {
                "unknown"
            } else {
                opts.manager.as_str()
            };
            fields::record_update(
                old.as_ref(),
                &mut new,
                Self::shape(rt),
                scope,
                manager,
                &opts.subresource,
                &api_version,
                &now,
            );
        }
        // Deletion completes when the last finalizer goes.
        if let Some(o) = &old
            && meta(o).get("deletionTimestamp").is_some()
        {
            let before: BTreeSet<String> = finalizers(o).into_iter().collect();
            let after: BTreeSet<String> = finalizers(&new).into_iter().collect();
            if !after.is_subset(&before) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    format!(
                        "{} {name:?} is forbidden: no new finalizers can be added if the object is being deleted",
                        rt.plural
                    ),
                ));
            }
            if after.is_empty() {
                if opts.dry_run {
                    return Ok(Written {
                        object: new,
                        created: false,
                        warnings,
                    });
                }
                let gone = self.remove(&rt.key(), ns, name).unwrap_or(new);
                self.gc();
                return Ok(Written {
                    object: gone,
                    created: false,
                    warnings,
                });
            }
        }
        if let Some(o) = &old
            && comparable(o) == comparable(&new)
        {
            return Ok(Written {
                object: o.clone(),
                created: false,
                warnings,
            });
        }
        if opts.dry_run {
            return Ok(Written {
                object: new,
                created: old.is_none(),
                warnings,
            });
        }
        let etype = if old.is_some() { "MODIFIED" } else { "ADDED" };
        let stored = self.store(&rt.key(), new, etype);
        if rt.key() == "apiextensions.k8s.io/customresourcedefinitions" {
            self.refresh_types();
        }
        self.gc();
        Ok(Written {
            object: stored,
            created: old.is_none(),
            warnings,
        })
    }

    /// Validation, pruning and defaulting of a write. Returns warnings (`fieldValidation=Warn`).
    fn admit(
        &mut self,
        rt: &ResourceType,
        old: Option<&Value>,
        obj: &mut Value,
        opts: &WriteOpts,
    ) -> ApiResult<Vec<String>> {
        let name = name_of(obj).to_string();
        let mut unknown = Vec::new();
        if let Some(crd) = &rt.crd {
            if let Some(schema) = &crd.schema {
                schema::prune(schema, obj, "", &mut unknown);
                schema::default(schema, obj);
                let mut causes = Vec::new();
                schema::validate(schema, obj, "", &mut causes);
                if causes.is_empty() {
                    causes.extend(schema::cel(
                        schema,
                        obj,
                        old,
                        &rt.api_version(),
                        &rt.group,
                        &rt.kind,
                    ));
                }
                if !causes.is_empty() {
                    return Err(ApiError::invalid(&rt.kind, &rt.group, &name, causes));
                }
            }
            // Object metadata rules apply to custom resources too.
            let causes = super::validation::builtin("", old, obj);
            if !causes.is_empty() {
                return Err(ApiError::invalid(&rt.kind, &rt.group, &name, causes));
            }
        } else {
            match schema::builtin_decode(&rt.kind, &rt.api_version(), obj) {
                Ok(u) => unknown = u,
                Err(e) => {
                    return Err(ApiError::bad_request(format!(
                        "{} in version {:?} cannot be handled as a {}: {e}",
                        rt.kind, rt.version, rt.kind
                    )));
                }
            }
            schema::remove_paths(obj, &unknown);
            self.builtin_defaults(rt, old, obj)?;
            let causes = super::validation::builtin(&rt.kind, old, obj);
            if !causes.is_empty() {
                return Err(ApiError::invalid(&rt.kind, &rt.group, &name, causes));
            }
        }
        let mut warnings = Vec::new();
        if !unknown.is_empty() {
            let listed: Vec<String> = unknown.iter().map(|u| format!("unknown field {u:?}")).collect();
            match opts.validation {
                FieldValidation::Strict => {
                    return Err(ApiError::bad_request(format!(
                        "{} in version {:?} cannot be handled as a {}: strict decoding error: {}",
                        rt.kind,
                        rt.version,
                        rt.kind,
                        listed.join(", ")
                    )));
                }
                FieldValidation::Warn => warnings = listed,
                FieldValidation::Ignore => {}
            }
        }
        Ok(warnings)
    }

    /// Defaults and system-managed fields of built-in kinds that clients rely on.
    fn builtin_defaults(&mut self, rt: &ResourceType, old: Option<&Value>, obj: &mut Value) -> ApiResult<()> {
        match rt.kind.as_str() {
            "Namespace" => {
                let name = name_of(obj).to_string();
                let m = meta_mut(obj);
                let labels = m.entry("labels").or_insert_with(|| json!({}));
                if let Some(l) = labels.as_object_mut() {
                    l.insert("kubernetes.io/metadata.name".into(), json!(name));
                }
                if obj["spec"]["finalizers"].is_null() {
                    obj["spec"] = json!({"finalizers": ["kubernetes"]});
                }
                let terminating = old.is_some_and(|o| meta(o).get("deletionTimestamp").is_some());
                obj["status"] = json!({"phase": if terminating { "Terminating" } else { "Active" }});
            }
            "Secret" if obj["type"].is_null() => {
                obj["type"] = json!("Opaque");
            }
            "Service" => {
                let spec = obj.get_mut("spec").and_then(Value::as_object_mut);
                let Some(spec) = spec else {
                    obj["spec"] = json!({});
                    return self.builtin_defaults(rt, old, obj);
                };
                spec.entry("type").or_insert(json!("ClusterIP"));
                spec.entry("sessionAffinity").or_insert(json!("None"));
                let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
                let old_ip = old
                    .and_then(|o| o["spec"]["clusterIP"].as_str())
                    .map(String::from);
                let ip = match (old_ip, headless, spec.get("clusterIP").and_then(Value::as_str)) {
                    (Some(ip), _, _) => ip,
                    (None, true, _) => "None".into(),
                    (None, false, Some(ip)) if !ip.is_empty() => ip.to_string(),
                    _ => {
                        let n = self.next_ip;
                        self.next_ip += 1;
                        format!("10.96.{}.{}", (n / 250) % 250, n % 250 + 1)
                    }
                };
                spec.insert("clusterIP".into(), json!(ip));
                spec.insert("clusterIPs".into(), json!([ip]));
                spec.entry("ipFamilies").or_insert(json!(["IPv4"]));
                spec.entry("ipFamilyPolicy").or_insert(json!("SingleStack"));
                spec.entry("internalTrafficPolicy").or_insert(json!("Cluster"));
                if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                        p.entry("protocol").or_insert(json!("TCP"));
                        if let Some(port) = p.get("port").cloned() {
                            p.entry("targetPort").or_insert(port);
                        }
                    }
                }
                if obj["status"].is_null() {
                    obj["status"] = json!({"loadBalancer": {}});
                }
            }
            "Deployment" | "ReplicaSet" if obj["spec"].is_object() => {
                let spec = &mut obj["spec"];
                if spec["replicas"].is_null() {
                    spec["replicas"] = json!(1);
                }
                if spec["revisionHistoryLimit"].is_null() {
                    spec["revisionHistoryLimit"] = json!(10);
                }
                if rt.kind == "Deployment" {
                    if spec["progressDeadlineSeconds"].is_null() {
                        spec["progressDeadlineSeconds"] = json!(600);
                    }
                    if spec["strategy"].is_null() {
                        spec["strategy"] = json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}});
                    }
                }
                pod_spec_defaults(&mut spec["template"]["spec"]);
            }
            "Pod" => {
                if obj["status"].is_null() && old.is_none() {
                    obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
                }
                pod_spec_defaults(&mut obj["spec"]);
            }
            "CustomResourceDefinition" => self.crd_admission(obj)?,
            _ => {}
        }
        Ok(())
    }

    /// CRD checks and the status the apiextensions controllers would write.
    fn crd_admission(&self, obj: &mut Value) -> ApiResult<()> {
        let name = name_of(obj).to_string();
        let group = obj["spec"]["group"].as_str().unwrap_or_default().to_string();
        let plural = obj["spec"]["names"]["plural"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut causes = Vec::new();
        if name != format!("{plural}.{group}") {
            causes.push(Cause::invalid(
                "metadata.name",
                &json!(name),
                "must be spec.names.plural+\".\"+spec.group",
            ));
        }
        let versions = obj["spec"]["versions"].as_array().cloned().unwrap_or_default();
        if versions.is_empty() {
            causes.push(Cause::required("spec.versions"));
        }
        if versions
            .iter()
            .filter(|v| v["storage"].as_bool() == Some(true))
            .count()
            != 1
        {
            causes.push(Cause::invalid(
                "spec.versions",
                &json!(versions),
                "must have exactly one version marked as storage version",
            ));
        }
        if obj["spec"]["names"]["kind"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
        {
            causes.push(Cause::required("spec.names.kind"));
        }
        for (i, v) in versions.iter().enumerate() {
            match v["schema"].get("openAPIV3Schema") {
                Some(s) => schema::check_crd_schema(
                    s,
                    &format!("spec.versions[{i}].schema.openAPIV3Schema"),
                    &mut causes,
                ),
                None => causes.push(Cause::required(format!(
                    "spec.versions[{i}].schema.openAPIV3Schema"
                ))),
            }
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(
                "CustomResourceDefinition",
                "apiextensions.k8s.io",
                &name,
                causes,
            ));
        }
        // Another CRD already serving this kind in the group?
        let kind = obj["spec"]["names"]["kind"].clone();
        let conflict = self.types.iter().any(|t| {
            t.group == group && t.plural == plural && t.crd.as_ref().is_some_and(|c| c.crd_name != name)
        });
        let t = now();
        let mut names = obj["spec"]["names"].clone();
        if names["singular"].is_null() {
            names["singular"] = json!(kind.as_str().unwrap_or_default().to_ascii_lowercase());
        }
        if names["listKind"].is_null() {
            names["listKind"] = json!(format!("{}List", kind.as_str().unwrap_or_default()));
        }
        let stored: Vec<Value> = versions
            .iter()
            .filter(|v| v["storage"].as_bool() == Some(true))
            .map(|v| v["name"].clone())
            .collect();
        let (accepted, established) = if conflict {
            ("False", "False")
        } else {
            ("True", "True")
        };
        obj["status"] = json!({
            "acceptedNames": names,
            "conditions": [
                {"type": "NamesAccepted", "status": accepted, "lastTransitionTime": t, "reason": if conflict { "NameConflict" } else { "NoConflicts" }, "message": if conflict { "the plural name is already in use" } else { "no conflicts found" }},
                {"type": "Established", "status": established, "lastTransitionTime": t, "reason": if conflict { "NotAccepted" } else { "InitialNamesAccepted" }, "message": if conflict { "not all names are accepted" } else { "the initial names have been accepted" }}
            ],
            "storedVersions": stored,
        });
        Ok(())
    }

    fn on_crd_removed(&mut self, crd: &Value) {
        let group = crd["spec"]["group"].as_str().unwrap_or_default();
        let plural = crd["spec"]["names"]["plural"].as_str().unwrap_or_default();
        let key = format!("{group}/{plural}");
        let names: Vec<(String, String)> = self
            .objects
            .get(&key)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        for (ns, name) in names {
            self.remove(&key, &ns, &name);
        }
        self.refresh_types();
    }

    /// DELETE with `propagationPolicy` (`Background` default, `Foreground`, `Orphan`) and
    /// preconditions.
    #[allow(clippy::too_many_arguments)]
    pub fn delete(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        propagation: Option<&str>,
        precondition_uid: Option<&str>,
        precondition_rv: Option<&str>,
        dry_run: bool,
    ) -> ApiResult<Deleted> {
        let out = self.delete_stored(
            rt,
            ns,
            name,
            propagation,
            precondition_uid,
            precondition_rv,
            dry_run,
        )?;
        Ok(match out {
            Deleted::Gone(o) => Deleted::Gone(from_storage(rt, &o).into_owned()),
            Deleted::Pending(o) => Deleted::Pending(from_storage(rt, &o).into_owned()),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn delete_stored(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        propagation: Option<&str>,
        precondition_uid: Option<&str>,
        precondition_rv: Option<&str>,
        dry_run: bool,
    ) -> ApiResult<Deleted> {
        let obj = self.get_stored(rt, ns, name)?;
        if let Some(uid) = precondition_uid
            && meta(&obj)["uid"].as_str() != Some(uid)
        {
            return Err(ApiError::conflict(
                &rt.group,
                &rt.plural,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta(&obj)["uid"].as_str().unwrap_or_default()
                ),
            ));
        }
        if let Some(rv) = precondition_rv
            && meta(&obj)["resourceVersion"].as_str() != Some(rv)
        {
            return Err(ApiError::conflict(
                &rt.group,
                &rt.plural,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta(&obj)["resourceVersion"].as_str().unwrap_or_default()
                ),
            ));
        }
        let mut fin = finalizers(&obj);
        match propagation {
            Some("Foreground") if !fin.iter().any(|f| f == "foregroundDeletion") => {
                fin.push("foregroundDeletion".into())
            }
            Some("Orphan") if !fin.iter().any(|f| f == "orphan") => fin.push("orphan".into()),
            Some("Foreground") | Some("Orphan") | Some("Background") | None => {}
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "propagationPolicy {other:?} is not supported; supported values: Foreground, Background, Orphan"
                )));
            }
        }
        if rt.kind == "Namespace" && !fin.iter().any(|f| f == "kubernetes") {
            // The namespace controller's finalizer: contents go first.
            fin.push("kubernetes".into());
        }
        if dry_run {
            return Ok(if fin.is_empty() {
                Deleted::Gone(obj)
            } else {
                Deleted::Pending(obj)
            });
        }
        if fin.is_empty() {
            let gone = self.remove(&rt.key(), ns, name).unwrap_or(obj);
            self.gc();
            return Ok(Deleted::Gone(gone));
        }
        if meta(&obj).get("deletionTimestamp").is_some() && fin == finalizers(&obj) {
            return Ok(Deleted::Pending(obj));
        }
        let mut upd = obj;
        set_finalizers(&mut upd, &fin);
        let m = meta_mut(&mut upd);
        m.entry("deletionTimestamp").or_insert(json!(now()));
        m.entry("deletionGracePeriodSeconds").or_insert(json!(0));
        if rt.kind == "Namespace" {
            upd["status"] = json!({"phase": "Terminating"});
        }
        let stored = self.store(&rt.key(), upd, "MODIFIED");
        self.gc();
        // The garbage collector may already have completed the deletion.
        match self.get_stored(rt, ns, name) {
            Ok(o) => Ok(Deleted::Pending(o)),
            Err(_) => Ok(Deleted::Gone(stored)),
        }
    }

    /// Garbage collection to a fixpoint: dependents of deleted owners (background), foreground
    /// and orphan finalizers, namespace contents.
    fn gc(&mut self) {
        if !self.gc_pending {
            return;
        }
        for _ in 0..1000 {
            if !self.gc_pass() {
                self.gc_pending = false;
                return;
            }
        }
        self.gc_pending = false;
        tracing::warn!("garbage collection did not converge in 1000 passes");
    }

    fn gc_pass(&mut self) -> bool {
        let mut uids: BTreeSet<String> = BTreeSet::new();
        for m in self.objects.values() {
            for o in m.values() {
                if let Some(u) = meta(o)["uid"].as_str() {
                    uids.insert(u.to_string());
                }
            }
        }
        let all: Vec<Item> = self
            .objects
            .iter()
            .flat_map(|(k, m)| {
                m.iter().map(move |((ns, name), o)| Item {
                    key: k.clone(),
                    ns: ns.clone(),
                    name: name.clone(),
                    obj: o.clone(),
                })
            })
            .collect();
        let owners_of = |o: &Value| -> Vec<String> {
            meta(o)["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["uid"].as_str())
                .map(String::from)
                .collect()
        };
        for it in &all {
            let owners = owners_of(&it.obj);
            let deleting = meta(&it.obj).get("deletionTimestamp").is_some();
            // 1. Every owner gone: delete the dependent (background).
            if !owners.is_empty() && !deleting && owners.iter().all(|u| !uids.contains(u)) {
                self.gc_delete(&it.key, &it.ns, &it.name, &it.obj);
                return true;
            }
            if !deleting {
                continue;
            }
            let uid = meta(&it.obj)["uid"].as_str().unwrap_or_default().to_string();
            let fin = finalizers(&it.obj);
            let dependents: Vec<&Item> = all.iter().filter(|d| owners_of(&d.obj).contains(&uid)).collect();
            // 2. Foreground: delete dependents first, then drop the finalizer.
            if fin.iter().any(|f| f == "foregroundDeletion") {
                if let Some(d) = dependents
                    .iter()
                    .find(|d| meta(&d.obj).get("deletionTimestamp").is_none())
                {
                    self.gc_delete(&d.key, &d.ns, &d.name, &d.obj);
                    return true;
                }
                if dependents.is_empty() {
                    self.drop_finalizer(it, "foregroundDeletion");
                    return true;
                }
            }
            // 3. Orphan: cut the dependents loose, then drop the finalizer.
            if fin.iter().any(|f| f == "orphan") {
                for d in &dependents {
                    let mut o = d.obj.clone();
                    if let Some(refs) = o["metadata"]["ownerReferences"].as_array_mut() {
                        refs.retain(|r| r["uid"].as_str() != Some(uid.as_str()));
                        if refs.is_empty()
                            && let Some(m) = o["metadata"].as_object_mut()
                        {
                            m.remove("ownerReferences");
                        }
                    }
                    self.store(&d.key, o, "MODIFIED");
                }
                self.drop_finalizer(it, "orphan");
                return true;
            }
            // 4. Namespace: delete its contents, then drop the `kubernetes` finalizer.
            if it.key == "/namespaces" && fin.iter().any(|f| f == "kubernetes") {
                if let Some(c) = all.iter().find(|c| {
                    c.ns == it.name
                        && c.key != "/namespaces"
                        && meta(&c.obj).get("deletionTimestamp").is_none()
                }) {
                    self.gc_delete(&c.key, &c.ns, &c.name, &c.obj);
                    return true;
                }
                if !all.iter().any(|c| c.ns == it.name && c.key != "/namespaces") {
                    self.drop_finalizer(it, "kubernetes");
                    return true;
                }
            }
        }
        false
    }

    fn gc_delete(&mut self, key: &str, ns: &str, name: &str, obj: &Value) {
        let fin = finalizers(obj);
        if fin.is_empty() {
            self.remove(key, ns, name);
        } else {
            let mut o = obj.clone();
            let m = meta_mut(&mut o);
            m.insert("deletionTimestamp".into(), json!(now()));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            self.store(key, o, "MODIFIED");
        }
    }

    fn drop_finalizer(&mut self, it: &Item, finalizer: &str) {
        let (key, ns, name, obj) = (it.key.as_str(), it.ns.as_str(), it.name.as_str(), &it.obj);
        let fin: Vec<String> = finalizers(obj).into_iter().filter(|f| f != finalizer).collect();
        if fin.is_empty() {
            self.remove(key, ns, name);
        } else {
            let mut o = obj.clone();
            set_finalizers(&mut o, &fin);
            self.store(key, o, "MODIFIED");
        }
    }
}

/// The pod spec defaults the real API server fills in (those clients print or compare).
fn pod_spec_defaults(spec: &mut Value) {
    let Some(spec) = spec.as_object_mut() else { return };
    spec.entry("restartPolicy").or_insert(json!("Always"));
    spec.entry("dnsPolicy").or_insert(json!("ClusterFirst"));
    spec.entry("schedulerName").or_insert(json!("default-scheduler"));
    spec.entry("terminationGracePeriodSeconds").or_insert(json!(30));
    spec.entry("securityContext").or_insert(json!({}));
    for list in ["containers", "initContainers"] {
        for c in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
            .filter_map(Value::as_object_mut)
        {
            let image = c
                .get("image")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let tag = image
                .rsplit('/')
                .next()
                .and_then(|last| last.split_once(':'))
                .map(|(_, t)| t.to_string());
            let always = !image.contains('@') && tag.as_deref().is_none_or(|t| t == "latest");
            c.entry("imagePullPolicy")
                .or_insert(json!(if always { "Always" } else { "IfNotPresent" }));
            c.entry("terminationMessagePath")
                .or_insert(json!("/dev/termination-log"));
            c.entry("terminationMessagePolicy").or_insert(json!("File"));
            for p in c
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
                .filter_map(Value::as_object_mut)
            {
                p.entry("protocol").or_insert(json!("TCP"));
            }
        }
    }
}

/// Field correspondence of core `v1` and `events.k8s.io/v1` Events (the real conversion).
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("eventTime", "eventTime"),
    ("series", "series"),
    ("reportingComponent", "reportingController"),
    ("reportingInstance", "reportingInstance"),
    ("action", "action"),
    ("reason", "reason"),
    ("type", "type"),
    ("related", "related"),
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
];

fn convert_event(obj: &Value, to_events_v1: bool) -> Value {
    let (api_version, pairs): (&str, Vec<(&str, &str)>) = if to_events_v1 {
        ("events.k8s.io/v1", EVENT_FIELDS.to_vec())
    } else {
        ("v1", EVENT_FIELDS.iter().map(|(c, e)| (*e, *c)).collect())
    };
    let mut out = json!({"apiVersion": api_version, "kind": "Event", "metadata": obj["metadata"]});
    for (from, to) in pairs {
        if let Some(v) = obj.get(from).filter(|v| !v.is_null()) {
            out[to] = v.clone();
        }
    }
    out
}

/// The stored object as `rt` presents it (Events convert; everything else is as stored).
pub fn from_storage<'a>(rt: &ResourceType, obj: &'a Value) -> Cow<'a, Value> {
    if rt.is_events_v1() && obj["apiVersion"] == "v1" {
        Cow::Owned(convert_event(obj, true))
    } else {
        Cow::Borrowed(obj)
    }
}

/// The storage form of an object written through `rt`.
fn to_storage(rt: &ResourceType, obj: &Value) -> Value {
    if rt.is_events_v1() && obj["apiVersion"] == "events.k8s.io/v1" {
        convert_event(obj, false)
    } else {
        obj.clone()
    }
}

struct Item {
    key: String,
    ns: String,
    name: String,
    obj: Value,
}

fn truncate(s: &str) -> String {
    if s.len() > 200 {
        format!(
            "{}...",
            &s[..s.char_indices().nth(200).map_or(s.len(), |(i, _)| i)]
        )
    } else {
        s.to_string()
    }
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}
