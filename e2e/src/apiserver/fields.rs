//! Field ownership: `metadata.managedFields` in the `FieldsV1` format, server-side apply
//! (merge by list semantics, conflicts, `force`, removal of fields a manager stopped applying)
//! and the ownership bookkeeping of ordinary updates. List semantics come from the CRD schema
//! (`x-kubernetes-list-type` / `-list-map-keys`) or, for built-in kinds, from the table of
//! merge keys the real types declare (`+listType=map`, `patchMergeKey`).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::status::ApiError;

/// How a list is merged and owned.
#[derive(Debug, Clone, PartialEq)]
pub enum ListKind {
    /// Items identified by these key fields (`k:{...}` in FieldsV1).
    Map(Vec<String>),
    /// Primitive items identified by value (`v:...`).
    Set,
    /// The whole list is one value.
    Atomic,
}

/// Where in an object we are, for list/map semantics.
#[derive(Debug, Clone, Copy)]
pub enum Shape<'a> {
    Schema(&'a Value),
    /// Built-in kind; the field name (and the kind, for `ports`) decides list semantics.
    Builtin(&'a str),
    /// Nothing known (unstructured): lists atomic, maps granular.
    Unknown,
}

impl<'a> Shape<'a> {
    pub fn child(self, key: &str) -> Shape<'a> {
        match self {
            Shape::Schema(s) => s
                .get("properties")
                .and_then(|p| p.get(key))
                .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))
                .map(Shape::Schema)
                .unwrap_or(Shape::Unknown),
            other => other,
        }
    }
    pub fn item(self) -> Shape<'a> {
        match self {
            Shape::Schema(s) => s.get("items").map(Shape::Schema).unwrap_or(Shape::Unknown),
            other => other,
        }
    }
    /// A map that is replaced as a whole (`x-kubernetes-map-type: atomic`).
    pub fn atomic_map(self) -> bool {
        matches!(self, Shape::Schema(s) if s["x-kubernetes-map-type"].as_str() == Some("atomic"))
    }
    /// List semantics of field `field` (whose schema is `self`).
    pub fn list_kind(self, field: &str, items: &[Value]) -> ListKind {
        match self {
            Shape::Schema(s) => match s["x-kubernetes-list-type"].as_str() {
                Some("map") => ListKind::Map(
                    s["x-kubernetes-list-map-keys"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .map(String::from)
                        .collect(),
                ),
                Some("set") => ListKind::Set,
                _ => ListKind::Atomic,
            },
            Shape::Builtin(kind) => builtin_list_kind(kind, field, items),
            Shape::Unknown => ListKind::Atomic,
        }
    }
}

/// Merge keys of the built-in types' lists (from the Go types' `patchMergeKey`/`listMapKey`).
pub fn builtin_list_kind(kind: &str, field: &str, items: &[Value]) -> ListKind {
    let keys = |k: &[&str]| ListKind::Map(k.iter().map(|s| s.to_string()).collect());
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims" => keys(&["name"]),
        "volumeMounts" => keys(&["mountPath"]),
        "volumeDevices" => keys(&["devicePath"]),
        "conditions" => keys(&["type"]),
        "ownerReferences" => keys(&["uid"]),
        "hostAliases" => keys(&["ip"]),
        "topologySpreadConstraints" => keys(&["topologyKey", "whenUnsatisfiable"]),
        "finalizers" => ListKind::Set,
        "ports" if kind == "Service" => keys(&["port", "protocol"]),
        "ports"
            if items.iter().all(|i| i.get("containerPort").is_some())
                && kind != "EndpointSlice"
                && kind != "Endpoints" =>
        {
            keys(&["containerPort", "protocol"])
        }
        _ => ListKind::Atomic,
    }
}

/// Built-in structs declared `+structType=atomic`: a LabelSelector is owned and replaced whole.
fn builtin_atomic_struct(shape: Shape, field: &str, v: &Value) -> bool {
    matches!(shape, Shape::Builtin(_))
        && field == "selector"
        && (v.get("matchLabels").is_some() || v.get("matchExpressions").is_some())
}

/// Key fields of a list-map item as FieldsV1 renders them (`k:{"name":"x"}`), sorted by key.
/// Absent `protocol` defaults to TCP, as the real types default it before ownership is computed.
fn item_key(item: &Value, keys: &[String]) -> Value {
    let mut sorted: Vec<&String> = keys.iter().collect();
    sorted.sort();
    let mut m = Map::new();
    for k in sorted {
        match item.get(k) {
            Some(v) => {
                m.insert(k.clone(), v.clone());
            }
            None if k == "protocol" => {
                m.insert(k.clone(), json!("TCP"));
            }
            None => {}
        }
    }
    Value::Object(m)
}

fn item_matches(item: &Value, key: &Value) -> bool {
    key.as_object().is_some_and(|k| {
        k.iter()
            .all(|(f, v)| item.get(f).map_or(f == "protocol" && v == "TCP", |iv| iv == v))
    })
}

/// A set of field paths; each path is a list of FieldsV1 elements (`f:x`, `k:{..}`, `v:..`).
/// A path ending in `.` marks membership of a list item / map itself (FieldsV1's `".": {}`).
pub type FieldSet = BTreeSet<Vec<String>>;

/// Which top-level parts of an object field ownership covers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scope {
    /// Everything except `status` (main endpoint of a kind with a status subresource).
    NoStatus,
    /// Only `status` (the `/status` subresource).
    StatusOnly,
    /// Everything (kinds without a status subresource).
    All,
}

/// The leaf fields an object sets (what an applier owns when applying it).
pub fn field_set(obj: &Value, shape: Shape, scope: Scope) -> FieldSet {
    let mut out = FieldSet::new();
    let Some(map) = obj.as_object() else { return out };
    for (k, v) in map {
        match k.as_str() {
            "apiVersion" | "kind" => continue,
            "status" if scope == Scope::NoStatus => continue,
            "metadata" => {
                if scope == Scope::StatusOnly {
                    continue;
                }
                for mk in ["labels", "annotations", "finalizers", "ownerReferences"] {
                    if let Some(mv) = v.get(mk) {
                        let base = vec!["f:metadata".to_string(), format!("f:{mk}")];
                        collect(mv, shape.child("metadata").child(mk), mk, base, &mut out);
                    }
                }
                continue;
            }
            _ if scope == Scope::StatusOnly && k != "status" => continue,
            _ => {}
        }
        collect(v, shape.child(k), k, vec![format!("f:{k}")], &mut out);
    }
    out
}

fn collect(v: &Value, shape: Shape, field: &str, path: Vec<String>, out: &mut FieldSet) {
    match v {
        Value::Object(m)
            if !m.is_empty() && !shape.atomic_map() && !builtin_atomic_struct(shape, field, v) =>
        {
            for (k, cv) in m {
                let mut p = path.clone();
                p.push(format!("f:{k}"));
                collect(cv, shape.child(k), k, p, out);
            }
        }
        Value::Array(items) if !items.is_empty() => match shape.list_kind(field, items) {
            ListKind::Map(keys) => {
                for item in items {
                    let mut p = path.clone();
                    p.push(format!("k:{}", item_key(item, &keys)));
                    let mut member = p.clone();
                    member.push(".".into());
                    out.insert(member);
                    if let Some(m) = item.as_object() {
                        for (k, cv) in m {
                            let mut cp = p.clone();
                            cp.push(format!("f:{k}"));
                            collect(cv, shape.item().child(k), k, cp, out);
                        }
                    }
                }
            }
            ListKind::Set => {
                for item in items {
                    let mut p = path.clone();
                    p.push(format!("v:{item}"));
                    out.insert(p);
                }
            }
            ListKind::Atomic => {
                out.insert(path);
            }
        },
        _ => {
            out.insert(path);
        }
    }
}

/// Value at a FieldsV1 path (`None` if absent).
pub fn value_at<'v>(obj: &'v Value, path: &[String]) -> Option<&'v Value> {
    let mut cur = obj;
    for el in path {
        if el == "." {
            return Some(cur);
        }
        if let Some(k) = el.strip_prefix("f:") {
            cur = cur.get(k)?;
        } else if let Some(k) = el.strip_prefix("k:") {
            let key: Value = serde_json::from_str(k).ok()?;
            cur = cur.as_array()?.iter().find(|i| item_matches(i, &key))?;
        } else if let Some(v) = el.strip_prefix("v:") {
            let val: Value = serde_json::from_str(v).ok()?;
            cur = cur.as_array()?.iter().find(|i| **i == val)?;
        } else {
            return None;
        }
    }
    Some(cur)
}

/// Remove the field at a path; returns whether something was removed.
fn remove_at(obj: &mut Value, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    if last == "." {
        return remove_at(obj, parents);
    }
    let mut cur = obj;
    for el in parents {
        let next = if let Some(k) = el.strip_prefix("f:") {
            cur.get_mut(k)
        } else if let Some(k) = el.strip_prefix("k:") {
            let Ok(key) = serde_json::from_str::<Value>(k) else {
                return false;
            };
            cur.as_array_mut()
                .and_then(|a| a.iter_mut().find(|i| item_matches(i, &key)))
        } else {
            None
        };
        match next {
            Some(n) => cur = n,
            None => return false,
        }
    }
    if let Some(k) = last.strip_prefix("f:") {
        cur.as_object_mut().and_then(|m| m.remove(k)).is_some()
    } else if let Some(k) = last.strip_prefix("k:") {
        let Ok(key) = serde_json::from_str::<Value>(k) else {
            return false;
        };
        let Some(a) = cur.as_array_mut() else { return false };
        let before = a.len();
        a.retain(|i| !item_matches(i, &key));
        a.len() != before
    } else if let Some(v) = last.strip_prefix("v:") {
        let Ok(val) = serde_json::from_str::<Value>(v) else {
            return false;
        };
        let Some(a) = cur.as_array_mut() else { return false };
        let before = a.len();
        a.retain(|i| *i != val);
        a.len() != before
    } else {
        false
    }
}

/// FieldsV1 JSON of a field set.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut cur = &mut root;
        for el in path {
            let entry = cur.entry(el.clone()).or_insert_with(|| Value::Object(Map::new()));
            let Some(next) = entry.as_object_mut() else { break };
            cur = next;
        }
    }
    Value::Object(root)
}

/// Field set of a FieldsV1 JSON tree.
pub fn from_fields_v1(v: &Value) -> FieldSet {
    fn walk(v: &Value, path: &mut Vec<String>, out: &mut FieldSet) {
        let Some(m) = v.as_object() else { return };
        if m.is_empty() && !path.is_empty() {
            out.insert(path.clone());
        }
        for (k, child) in m {
            path.push(k.clone());
            walk(child, path, out);
            path.pop();
        }
    }
    let mut out = FieldSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// One `managedFields` entry.
#[derive(Debug, Clone)]
pub struct Manager {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: String,
    pub fields: FieldSet,
}

impl Manager {
    fn same_identity(&self, other: &Manager) -> bool {
        self.manager == other.manager
            && self.operation == other.operation
            && self.subresource == other.subresource
    }
}

pub fn read_managers(obj: &Value) -> Vec<Manager> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| Manager {
            manager: e["manager"].as_str().unwrap_or_default().into(),
            operation: e["operation"].as_str().unwrap_or("Update").into(),
            api_version: e["apiVersion"].as_str().unwrap_or_default().into(),
            time: e["time"].as_str().unwrap_or_default().into(),
            subresource: e["subresource"].as_str().unwrap_or_default().into(),
            fields: from_fields_v1(&e["fieldsV1"]),
        })
        .collect()
}

pub fn write_managers(obj: &mut Value, managers: &[Manager]) {
    let entries: Vec<Value> = managers
        .iter()
        .filter(|m| !m.fields.is_empty())
        .map(|m| {
            let mut e = json!({
                "manager": m.manager,
                "operation": m.operation,
                "apiVersion": m.api_version,
                "time": m.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&m.fields),
            });
            if !m.subresource.is_empty() {
                e["subresource"] = json!(m.subresource);
            }
            e
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if entries.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(entries));
        }
    }
}

/// Human path of a field (`.spec.containers[name="app"].image`), as conflict messages print it.
pub fn display_path(path: &[String]) -> String {
    let mut s = String::new();
    for el in path {
        if let Some(k) = el.strip_prefix("f:") {
            s.push('.');
            s.push_str(k);
        } else if let Some(k) = el.strip_prefix("k:") {
            let parts: Vec<String> = serde_json::from_str::<Map<String, Value>>(k)
                .map(|m| m.iter().map(|(a, b)| format!("{a}={b}")).collect())
                .unwrap_or_default();
            s.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = el.strip_prefix("v:") {
            s.push_str(&format!("[{v}]"));
        }
    }
    s
}

/// Structural merge of an apply configuration into the live object.
pub fn merge(live: &Value, applied: &Value, shape: Shape, field: &str) -> Value {
    match (live, applied) {
        (Value::Object(l), Value::Object(a))
            if !shape.atomic_map() && !builtin_atomic_struct(shape, field, applied) =>
        {
            let mut out = l.clone();
            for (k, av) in a {
                if av.is_null() {
                    continue;
                }
                let merged = match l.get(k) {
                    Some(lv) => merge(lv, av, shape.child(k), k),
                    None => av.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(l), Value::Array(a)) => match shape.list_kind(field, a) {
            ListKind::Map(keys) => {
                let mut out: Vec<Value> = l.clone();
                for ai in a {
                    let key = item_key(ai, &keys);
                    match out.iter_mut().find(|i| item_matches(i, &key)) {
                        Some(existing) => *existing = merge(existing, ai, shape.item(), ""),
                        None => out.push(ai.clone()),
                    }
                }
                Value::Array(out)
            }
            ListKind::Set => {
                let mut out = l.clone();
                for ai in a {
                    if !out.contains(ai) {
                        out.push(ai.clone());
                    }
                }
                Value::Array(out)
            }
            ListKind::Atomic => applied.clone(),
        },
        _ => applied.clone(),
    }
}

/// Server-side apply of `applied` by `manager` onto `live` (`None`: create). Returns the new
/// object with updated `managedFields`, or a 409 Conflict naming fields and managers.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    shape: Shape,
    scope: Scope,
    manager: &str,
    subresource: &str,
    api_version: &str,
    force: bool,
    now: &str,
) -> Result<Value, ApiError> {
    let empty = json!({});
    let live_obj = live.unwrap_or(&empty);
    let mut managers = read_managers(live_obj);
    let me = Manager {
        manager: manager.into(),
        operation: "Apply".into(),
        api_version: api_version.into(),
        time: now.into(),
        subresource: subresource.into(),
        fields: field_set(applied, shape, scope),
    };
    let prior: FieldSet = managers
        .iter()
        .find(|m| m.same_identity(&me))
        .map(|m| m.fields.clone())
        .unwrap_or_default();

    // Conflicts: another manager owns a field this apply sets to a different value.
    let mut conflicts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in managers.iter_mut().filter(|m| !m.same_identity(&me)) {
        let owned: Vec<Vec<String>> = m
            .fields
            .intersection(&me.fields)
            .filter(|p| p.last().map(String::as_str) != Some("."))
            .cloned()
            .collect();
        for p in owned {
            if value_at(live_obj, &p) != value_at(applied, &p) {
                if force {
                    m.fields.remove(&p);
                } else {
                    conflicts
                        .entry(m.manager.clone())
                        .or_default()
                        .push(display_path(&p));
                }
            }
        }
    }
    if !conflicts.is_empty() {
        let n: usize = conflicts.values().map(Vec::len).sum();
        let mut causes = Vec::new();
        let mut parts = Vec::new();
        for (mgr, fields) in &conflicts {
            for f in fields {
                causes.push(json!({"reason": "FieldManagerConflict", "message": format!("conflict with {mgr:?} using {api_version}"), "field": f}));
            }
            if n == 1 {
                parts.push(format!(
                    "conflict with {mgr:?} using {api_version}: {}",
                    fields[0]
                ));
            } else {
                parts.push(format!(
                    "conflicts with {mgr:?} using {api_version}:\n- {}",
                    fields.join("\n- ")
                ));
            }
        }
        let plural = if n == 1 { "conflict" } else { "conflicts" };
        return Err(ApiError {
            code: axum::http::StatusCode::CONFLICT,
            reason: "Conflict",
            message: format!("Apply failed with {n} {plural}: {}", parts.join("\n")),
            details: Some(json!({"causes": causes})),
        });
    }

    // Merge, then drop what this manager applied before but no longer does and nobody else owns.
    let mut merged = merge(live_obj, applied, shape, "");
    let others: FieldSet = managers
        .iter()
        .filter(|m| !m.same_identity(&me))
        .flat_map(|m| m.fields.iter().cloned())
        .collect();
    let mut dropped: Vec<&Vec<String>> = prior.difference(&me.fields).collect();
    dropped.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in dropped {
        let owned_by_others = others
            .iter()
            .any(|o| o.starts_with(p.strip_suffix(&[".".to_string()]).unwrap_or(p)));
        if !owned_by_others {
            remove_at(&mut merged, p);
        }
    }
    // Keep the entry's position: a repeated identical apply must not look like a change.
    match managers.iter().position(|m| m.same_identity(&me)) {
        Some(i) => managers[i] = me,
        None => managers.push(me),
    }
    managers.retain(|m| !m.fields.is_empty());
    write_managers(&mut merged, &managers);
    Ok(merged)
}

/// Ownership bookkeeping of a non-apply write by `manager`: fields it added or changed become
/// its own (taken from others); fields that disappeared are dropped from every manager.
#[allow(clippy::too_many_arguments)]
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    shape: Shape,
    scope: Scope,
    manager: &str,
    subresource: &str,
    api_version: &str,
    now: &str,
) {
    let mut managers = old.map(read_managers).unwrap_or_default();
    let new_fields = field_set(new, shape, scope);
    let changed: FieldSet = new_fields
        .iter()
        .filter(|p| old.is_none_or(|o| value_at(o, p) != value_at(new, p)))
        .cloned()
        .collect();
    for m in managers.iter_mut() {
        // Ownership of fields within this write's scope only (status owners survive spec writes).
        m.fields.retain(|p| {
            let in_scope = match scope {
                Scope::All => true,
                Scope::NoStatus => p.first().map(String::as_str) != Some("f:status"),
                Scope::StatusOnly => p.first().map(String::as_str) == Some("f:status"),
            };
            !in_scope || (value_at(new, p).is_some() && !changed.contains(p))
        });
    }
    if !changed.is_empty() {
        let me = Manager {
            manager: manager.into(),
            operation: "Update".into(),
            api_version: api_version.into(),
            time: now.into(),
            subresource: subresource.into(),
            fields: FieldSet::new(),
        };
        match managers.iter_mut().find(|m| m.same_identity(&me)) {
            Some(m) => {
                m.fields.extend(changed);
                m.time = now.into();
            }
            None => {
                let mut me = me;
                me.fields = changed;
                managers.push(me);
            }
        }
    }
    managers.retain(|m| !m.fields.is_empty());
    write_managers(new, &managers);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_v1_round_trip_and_list_keys() {
        let obj = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"a": "b"}},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}]}]}}}});
        let set = field_set(&obj, Shape::Builtin("Deployment"), Scope::NoStatus);
        let v1 = to_fields_v1(&set);
        let c = &v1["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"];
        assert!(c.get(".").is_some());
        assert!(
            c["f:ports"]
                .get("k:{\"containerPort\":80,\"protocol\":\"TCP\"}")
                .is_some(),
            "{v1}"
        );
        assert_eq!(from_fields_v1(&v1), set);
        // A LabelSelector is atomic: owned as one field.
        let d = json!({"spec": {"selector": {"matchLabels": {"a": "b"}}}});
        let set = field_set(&d, Shape::Builtin("Deployment"), Scope::NoStatus);
        assert_eq!(
            set.into_iter().collect::<Vec<_>>(),
            vec![vec!["f:spec".to_string(), "f:selector".to_string()]]
        );
    }

    #[test]
    fn apply_conflicts_force_and_removal() {
        let shape = Shape::Builtin("ConfigMap");
        let a1 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"x": "1", "y": "2"}});
        let o1 = apply(None, &a1, shape, Scope::All, "m1", "", "v1", false, "t").unwrap();
        let a2 =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"x": "9"}});
        let err = apply(Some(&o1), &a2, shape, Scope::All, "m2", "", "v1", false, "t").unwrap_err();
        assert_eq!(err.code.as_u16(), 409);
        assert!(
            err.message.contains("conflict with \"m1\" using v1: .data.x"),
            "{}",
            err.message
        );
        let o2 = apply(Some(&o1), &a2, shape, Scope::All, "m2", "", "v1", true, "t").unwrap();
        assert_eq!(o2["data"]["x"], "9");
        // m1 stops applying y: removed (nobody else owns it); x now belongs to m2 only.
        let a3 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}});
        let o3 = apply(Some(&o2), &a3, shape, Scope::All, "m1", "", "v1", false, "t").unwrap();
        assert_eq!(o3["data"], json!({"x": "9"}));
    }
}
