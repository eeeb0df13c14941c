//! Admission of custom resources against their CRD's structural schema, in the order the real
//! server applies it: prune unknown fields → default → validate (OpenAPI value validations) →
//! CEL rules (`x-kubernetes-validations`, evaluated with the `kube-cel` crate).
//! Built-in kinds are checked by decoding them into the k8s-openapi types (type errors → 400
//! like the real decoder) and detecting fields the typed model does not know.

use std::collections::BTreeSet;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use regex::Regex;
use serde_json::{Map, Value};

use super::status::{Cause, render_value};

/// Compiled regexes by pattern: schemas and name rules reuse a handful of patterns, and
/// compiling one per request would dominate the cost of a write.
static REGEXES: LazyLock<Mutex<HashMap<String, Arc<Regex>>>> = LazyLock::new(Default::default);

/// Whether `s` matches `pattern` (compiled once); `Err` if the pattern does not compile.
pub fn regex_match(pattern: &str, s: &str) -> Result<bool, String> {
    let mut cache = REGEXES.lock().unwrap_or_else(|p| p.into_inner());
    let re = match cache.get(pattern) {
        Some(re) => re.clone(),
        None => {
            let re = Arc::new(Regex::new(pattern).map_err(|e| e.to_string())?);
            cache.insert(pattern.to_string(), re.clone());
            re
        }
    };
    drop(cache);
    Ok(re.is_match(s))
}

fn join(path: &str, seg: &str) -> String {
    if path.is_empty() {
        seg.to_string()
    } else {
        format!("{path}.{seg}")
    }
}

/// Remove fields the schema does not declare (unless `x-kubernetes-preserve-unknown-fields`),
/// recording their paths (for `fieldValidation=Strict|Warn`).
pub fn prune(schema: &Value, value: &mut Value, path: &str, unknown: &mut Vec<String>) {
    let preserve = schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true);
    let embedded = schema["x-kubernetes-embedded-resource"].as_bool() == Some(true);
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                let child_path = join(path, &k);
                let Some(child) = map.get_mut(&k) else { continue };
                if let Some(s) = props.and_then(|p| p.get(&k)) {
                    prune(s, child, &child_path, unknown);
                } else if let Some(add) = additional.filter(|a| a.is_object()) {
                    prune(add, child, &child_path, unknown);
                } else if additional.and_then(Value::as_bool) == Some(true)
                    || preserve
                    || (embedded && matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
                    || (path.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
                {
                    // kept as is
                } else {
                    map.remove(&k);
                    unknown.push(child_path);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(item_schema, item, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

/// Apply `default`s of absent properties (recursively, defaults themselves included).
pub fn default(schema: &Value, value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, s) in props {
                    let absent = map
                        .get(k)
                        .is_none_or(|v| v.is_null() && s["nullable"].as_bool() != Some(true));
                    if absent && let Some(d) = s.get("default") {
                        map.insert(k.clone(), d.clone());
                    }
                    if let Some(child) = map.get_mut(k) {
                        default(s, child);
                    }
                }
            }
            if let Some(add) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for child in map.values_mut() {
                    default(add, child);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for item in items {
                    default(s, item);
                }
            }
        }
        _ => {}
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// OpenAPI value validations of the structural schema; error wording follows the real server.
pub fn validate(schema: &Value, value: &Value, path: &str, causes: &mut Vec<Cause>) {
    if value.is_null() {
        if schema["nullable"].as_bool() != Some(true) && schema.get("type").is_some() {
            let t = schema["type"].as_str().unwrap_or_default();
            causes.push(Cause::invalid(
                path,
                &Value::String("null".into()),
                format!("{path} in body must be of type {t}: \"null\""),
            ));
        }
        return;
    }
    let int_or_string = schema["x-kubernetes-int-or-string"].as_bool() == Some(true);
    if let Some(t) = schema["type"].as_str() {
        let actual = type_name(value);
        let ok = actual == t
            || (t == "number" && actual == "integer")
            || (int_or_string && matches!(actual, "integer" | "string"));
        if !ok {
            causes.push(Cause::invalid(
                path,
                &Value::String(actual.into()),
                format!("{path} in body must be of type {t}: {actual:?}"),
            ));
            return;
        }
    } else if int_or_string && !matches!(type_name(value), "integer" | "string") {
        let actual = type_name(value);
        causes.push(Cause::invalid(
            path,
            &Value::String(actual.into()),
            format!("{path} in body must be of type integer,string: {actual:?}"),
        ));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(render_value).collect();
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: {}: supported values: {}",
                render_value(value),
                list.join(", ")
            ),
            field: path.to_string(),
        });
    }
    match value {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or_default();
            let excl_min = schema["exclusiveMinimum"].as_bool() == Some(true);
            let excl_max = schema["exclusiveMaximum"].as_bool() == Some(true);
            if let Some(min) = schema["minimum"].as_f64() {
                if excl_min && x <= min {
                    causes.push(Cause::invalid(
                        path,
                        value,
                        format!("{path} in body should be greater than {}", fmt_num(min)),
                    ));
                } else if x < min {
                    causes.push(Cause::invalid(
                        path,
                        value,
                        format!(
                            "{path} in body should be greater than or equal to {}",
                            fmt_num(min)
                        ),
                    ));
                }
            }
            if let Some(max) = schema["maximum"].as_f64() {
                if excl_max && x >= max {
                    causes.push(Cause::invalid(
                        path,
                        value,
                        format!("{path} in body should be less than {}", fmt_num(max)),
                    ));
                } else if x > max {
                    causes.push(Cause::invalid(
                        path,
                        value,
                        format!("{path} in body should be less than or equal to {}", fmt_num(max)),
                    ));
                }
            }
        }
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(min) = schema["minLength"].as_u64()
                && len < min
            {
                causes.push(Cause::invalid(
                    path,
                    value,
                    format!("{path} in body should be at least {min} chars long"),
                ));
            }
            if let Some(max) = schema["maxLength"].as_u64()
                && len > max
            {
                causes.push(Cause {
                    reason: "FieldValueTooLong",
                    message: format!("Too long: may not be more than {max} bytes"),
                    field: path.to_string(),
                });
            }
            if let Some(p) = schema["pattern"].as_str() {
                match regex_match(p, s) {
                    Ok(false) => {
                        causes.push(Cause::invalid(
                            path,
                            value,
                            format!("{path} in body should match '{p}'"),
                        ));
                    }
                    Ok(_) => {}
                    Err(e) => causes.push(Cause::invalid(
                        path,
                        value,
                        format!("schema pattern {p:?} does not compile: {e}"),
                    )),
                }
            }
        }
        Value::Array(items) => {
            let n = items.len() as u64;
            if let Some(min) = schema["minItems"].as_u64()
                && n < min
            {
                causes.push(Cause::invalid(
                    path,
                    &Value::from(n),
                    format!("{path} in body should have at least {min} items"),
                ));
            }
            if let Some(max) = schema["maxItems"].as_u64()
                && n > max
            {
                causes.push(Cause {
                    reason: "FieldValueTooMany",
                    message: format!("Too many: {n}: must have at most {max} items"),
                    field: path.to_string(),
                });
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate(item_schema, item, &format!("{path}[{i}]"), causes);
                }
            }
            let list_type = schema["x-kubernetes-list-type"].as_str();
            if list_type == Some("set") {
                let mut seen = BTreeSet::new();
                for (i, item) in items.iter().enumerate() {
                    if !seen.insert(item.to_string()) {
                        causes.push(Cause {
                            reason: "FieldValueDuplicate",
                            message: format!("Duplicate value: {item}"),
                            field: format!("{path}[{i}]"),
                        });
                    }
                }
            } else if list_type == Some("map") {
                let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let mut seen = BTreeSet::new();
                for (i, item) in items.iter().enumerate() {
                    let k: Vec<String> = keys.iter().map(|k| item[*k].to_string()).collect();
                    if !seen.insert(k.join("/")) {
                        let shown: Map<String, Value> =
                            keys.iter().map(|k| (k.to_string(), item[*k].clone())).collect();
                        causes.push(Cause {
                            reason: "FieldValueDuplicate",
                            message: format!("Duplicate value: {}", Value::Object(shown)),
                            field: format!("{path}[{i}]"),
                        });
                    }
                }
            }
        }
        Value::Object(map) => {
            for r in schema["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !map.contains_key(r) {
                    causes.push(Cause::required(join(path, r)));
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            for (k, v) in map {
                if path.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(s) = props.and_then(|p| p.get(k)) {
                    validate(s, v, &join(path, k), causes);
                } else if let Some(add) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                    validate(add, v, &join(path, k), causes);
                }
            }
            if let Some(min) = schema["minProperties"].as_u64()
                && (map.len() as u64) < min
            {
                causes.push(Cause::invalid(
                    path,
                    value,
                    format!("{path} in body should have at least {min} properties"),
                ));
            }
            if let Some(max) = schema["maxProperties"].as_u64()
                && (map.len() as u64) > max
            {
                causes.push(Cause {
                    reason: "FieldValueTooMany",
                    message: format!("Too many: {}: must have at most {max} items", map.len()),
                    field: path.to_string(),
                });
            }
        }
        _ => {}
    }
}

fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        x.to_string()
    }
}

/// Evaluate the schema's CEL rules on the (defaulted) object; `old` enables transition rules.
pub fn cel(
    schema: &Value,
    obj: &Value,
    old: Option<&Value>,
    api_version: &str,
    group: &str,
    kind: &str,
) -> Vec<Cause> {
    let ctx = kube_cel::RootContext {
        api_version: api_version.to_string(),
        api_group: group.to_string(),
        kind: kind.to_string(),
    };
    // Like the real server, CEL sees only name and generateName of metadata.
    let mut obj = obj.clone();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.retain(|k, _| k == "name" || k == "generateName");
    }
    let mut old = old.cloned();
    if let Some(meta) = old
        .as_mut()
        .and_then(|o| o.get_mut("metadata"))
        .and_then(Value::as_object_mut)
    {
        meta.retain(|k, _| k == "name" || k == "generateName");
    }
    match kube_cel::Validator::new().validate_with_context(schema, &obj, old.as_ref(), Some(&ctx)) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .into_vec()
            .into_iter()
            .map(|e| {
                // The value shown is the type of the node the rule sits on, as the real server does.
                let field = e.field_path.trim_start_matches('.').to_string();
                let reason = e.reason.as_deref().unwrap_or("FieldValueInvalid");
                let (reason, message): (&'static str, String) = match reason {
                    "FieldValueForbidden" => ("FieldValueForbidden", format!("Forbidden: {}", e.message)),
                    "FieldValueRequired" => ("FieldValueRequired", format!("Required value: {}", e.message)),
                    "FieldValueDuplicate" => {
                        ("FieldValueDuplicate", format!("Duplicate value: {}", e.message))
                    }
                    _ => (
                        "FieldValueInvalid",
                        format!("Invalid value: \"object\": {}", e.message),
                    ),
                };
                Cause {
                    reason,
                    message,
                    field,
                }
            })
            .collect(),
    }
}

/// Decode a built-in object into its typed k8s-openapi model, as the real server's decoder
/// does. Returns the decode error (→ 400) or the paths of fields the model does not know.
pub fn builtin_decode(kind: &str, api_version: &str, obj: &Value) -> Result<Vec<String>, String> {
    use k8s_openapi::api::{
        apps::v1 as apps, autoscaling::v2 as autoscaling, coordination::v1 as coordination, core::v1 as core,
        discovery::v1 as discovery, events::v1 as events, networking::v1 as networking, policy::v1 as policy,
    };
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
    fn rt<T: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) -> Result<Value, String> {
        let t: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        serde_json::to_value(t).map_err(|e| e.to_string())
    }
    let round = match (kind, api_version) {
        ("Namespace", _) => rt::<core::Namespace>(obj),
        ("ConfigMap", _) => rt::<core::ConfigMap>(obj),
        ("Secret", _) => rt::<core::Secret>(obj),
        ("PersistentVolumeClaim", _) => rt::<core::PersistentVolumeClaim>(obj),
        ("Service", _) => rt::<core::Service>(obj),
        ("Endpoints", _) => rt::<core::Endpoints>(obj),
        ("Pod", _) => rt::<core::Pod>(obj),
        ("ServiceAccount", _) => rt::<core::ServiceAccount>(obj),
        ("Event", "v1") => rt::<core::Event>(obj),
        ("Event", _) => rt::<events::Event>(obj),
        ("Deployment", _) => rt::<apps::Deployment>(obj),
        ("ReplicaSet", _) => rt::<apps::ReplicaSet>(obj),
        ("HorizontalPodAutoscaler", _) => rt::<autoscaling::HorizontalPodAutoscaler>(obj),
        ("PodDisruptionBudget", _) => rt::<policy::PodDisruptionBudget>(obj),
        ("Ingress", _) => rt::<networking::Ingress>(obj),
        ("IngressClass", _) => rt::<networking::IngressClass>(obj),
        ("EndpointSlice", _) => rt::<discovery::EndpointSlice>(obj),
        ("Lease", _) => rt::<coordination::Lease>(obj),
        ("CustomResourceDefinition", _) => rt::<apiext::CustomResourceDefinition>(obj),
        _ => return Ok(Vec::new()),
    }?;
    let mut unknown = Vec::new();
    missing_paths(obj, &round, "", &mut unknown);
    Ok(unknown)
}

/// Paths present in `input` but absent from the typed round trip (= unknown to the model).
/// Free-form maps (labels, data, JSON schemas) survive the round trip, so they never show up.
fn missing_paths(input: &Value, round: &Value, path: &str, out: &mut Vec<String>) {
    match (input, round) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = join(path, k);
                match b.get(k) {
                    Some(w) => missing_paths(v, w, &p, out),
                    // Null or empty values vanish in a round trip without being unknown.
                    None if v.is_null() => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                missing_paths(v, w, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Remove the given (dotted, `[i]`-indexed) paths from an object.
pub fn remove_paths(obj: &mut Value, paths: &[String]) {
    fn remove(cur: &mut Value, segs: &[Seg]) {
        match segs {
            [] => {}
            [Seg::Key(k)] => {
                if let Some(m) = cur.as_object_mut() {
                    m.remove(k);
                }
            }
            [first, rest @ ..] => {
                let next = match first {
                    Seg::Key(k) => cur.get_mut(k.as_str()),
                    Seg::Idx(i) => cur.get_mut(*i),
                };
                if let Some(n) = next {
                    remove(n, rest);
                }
            }
        }
    }
    for p in paths {
        remove(obj, &split_path(p));
    }
}

enum Seg {
    Key(String),
    Idx(usize),
}

fn split_path(p: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in p.split('.') {
        let mut rest = part;
        if let Some(i) = rest.find('[') {
            out.push(Seg::Key(rest[..i].to_string()));
            rest = &rest[i..];
            while let Some(end) = rest.find(']') {
                if let Ok(n) = rest[1..end].parse() {
                    out.push(Seg::Idx(n));
                }
                rest = &rest[end + 1..];
            }
        } else {
            out.push(Seg::Key(rest.to_string()));
        }
    }
    out
}

/// CRD-time checks of a version's schema: structural (every specified field has a type unless
/// it preserves unknown fields or is int-or-string) and CEL rules that compile. The real server
/// refuses CRDs failing either, so a bad rule surfaces at `kubectl apply` of the CRD.
pub fn check_crd_schema(schema: &Value, path: &str, causes: &mut Vec<Cause>) {
    let untyped_ok = schema["x-kubernetes-int-or-string"].as_bool() == Some(true)
        || schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true);
    if schema
        .get("type")
        .is_none_or(|t| t.as_str().is_none_or(str::is_empty))
        && !untyped_ok
    {
        causes.push(Cause {
            reason: "FieldValueRequired",
            message: "Required value: must not be empty for specified object fields".into(),
            field: format!("{path}.type"),
        });
    }
    for (i, rule) in schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let text = rule["rule"].as_str().unwrap_or_default();
        if let Err(e) = kube_cel::cel::Program::compile(text) {
            causes.push(Cause::invalid(
                format!("{path}.x-kubernetes-validations[{i}].rule"),
                &Value::String(text.into()),
                format!("compilation failed: {e}"),
            ));
        }
    }
    for (k, s) in schema["properties"].as_object().into_iter().flatten() {
        check_crd_schema(s, &format!("{path}.properties[{k}]"), causes);
    }
    if let Some(items) = schema.get("items").filter(|i| i.is_object()) {
        check_crd_schema(items, &format!("{path}.items"), causes);
    }
    if let Some(add) = schema.get("additionalProperties").filter(|a| a.is_object()) {
        check_crd_schema(add, &format!("{path}.additionalProperties"), causes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prune_default_validate() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "required": ["a"], "properties": {
            "a": {"type": "integer", "minimum": 1},
            "b": {"type": "string", "default": "x", "enum": ["x", "y"]},
            "m": {"type": "object", "additionalProperties": {"type": "string"}}
        }}}});
        let mut o = json!({"apiVersion": "g/v1", "kind": "K", "metadata": {}, "spec": {"a": 0, "zzz": 1, "m": {"k": "v"}}});
        let mut unknown = vec![];
        prune(&schema, &mut o, "", &mut unknown);
        assert_eq!(unknown, vec!["spec.zzz"]);
        default(&schema, &mut o);
        assert_eq!(o["spec"]["b"], "x");
        let mut causes = vec![];
        validate(&schema, &o, "", &mut causes);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec.a");
        assert!(
            causes[0].message.contains("greater than or equal to 1"),
            "{}",
            causes[0].message
        );
    }

    #[test]
    fn builtin_unknown_fields_and_type_errors() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "labels": {"x": "y"}}, "data": {"k": "v"}, "bogus": 1});
        assert_eq!(builtin_decode("ConfigMap", "v1", &cm).unwrap(), vec!["bogus"]);
        let bad = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "a"}, "spec": {"replicas": "two"}});
        assert!(builtin_decode("Deployment", "apps/v1", &bad).is_err());
    }
}
