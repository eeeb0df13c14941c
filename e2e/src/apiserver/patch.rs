//! JSON patch (RFC 6902), JSON merge patch (RFC 7386) and strategic merge patch — the latter
//! for built-in kinds only, like the real server (kubectl's client-side apply sends it).

use serde_json::{Map, Value};

use super::fields::{ListKind, builtin_list_kind};
use super::status::{ApiError, ApiResult};

pub fn json_patch(doc: &mut Value, body: &[u8]) -> ApiResult<()> {
    let p: json_patch::Patch = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    json_patch::patch(doc, &p).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("the server rejected our request due to an error in our request: {e}"),
        )
    })
}

pub fn merge_patch(doc: &mut Value, body: &[u8]) -> ApiResult<()> {
    let p: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    if !p.is_object() {
        return Err(ApiError::bad_request("the merge patch must be a JSON object"));
    }
    json_patch::merge(doc, &p);
    Ok(())
}

pub fn strategic_merge_patch(doc: &mut Value, body: &[u8], kind: &str) -> ApiResult<()> {
    let p: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    let Value::Object(pm) = p else {
        return Err(ApiError::bad_request(
            "the strategic merge patch must be a JSON object",
        ));
    };
    *doc = smp_object(doc.as_object().cloned().unwrap_or_default(), pm, kind)?;
    Ok(())
}

fn smp_object(mut orig: Map<String, Value>, patch: Map<String, Value>, kind: &str) -> ApiResult<Value> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut p = patch;
            p.remove("$patch");
            return Ok(Value::Object(p));
        }
        Some("delete") => return Ok(Value::Null),
        Some("merge") | None => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown patch type: {other:?} in map"
            )));
        }
    }
    if let Some(keep) = patch.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        orig.retain(|k, _| keep.contains(&k.as_str()));
    }
    let mut orders = Vec::new();
    for (k, pv) in patch {
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            orders.push((field.to_string(), pv));
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(del)) = (orig.get_mut(field), pv.as_array()) {
                list.retain(|v| !del.contains(v));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if pv.is_null() {
            orig.remove(&k);
            continue;
        }
        let merged = match (orig.remove(&k), pv) {
            (Some(Value::Object(o)), Value::Object(p)) => smp_object(o, p, kind)?,
            (Some(Value::Array(o)), Value::Array(p)) => smp_list(o, p, &k, kind)?,
            (None, Value::Object(p)) => smp_object(Map::new(), p, kind)?,
            (None, Value::Array(p)) => smp_list(Vec::new(), p, &k, kind)?,
            (_, p) => p,
        };
        if !merged.is_null() {
            orig.insert(k, merged);
        }
    }
    for (field, order) in orders {
        if let (Some(Value::Array(list)), Some(order)) = (orig.get_mut(&field), order.as_array()) {
            let kind_of = builtin_list_kind(kind, &field, list);
            let pos = |item: &Value| -> usize {
                order
                    .iter()
                    .position(|o| match &kind_of {
                        ListKind::Map(keys) => keys
                            .iter()
                            .filter(|k| o.get(k.as_str()).is_some())
                            .all(|k| o.get(k.as_str()) == item.get(k.as_str())),
                        _ => o == item,
                    })
                    .unwrap_or(usize::MAX)
            };
            list.sort_by_key(|i| pos(i));
        }
    }
    Ok(Value::Object(orig))
}

fn smp_list(orig: Vec<Value>, patch: Vec<Value>, field: &str, kind: &str) -> ApiResult<Value> {
    if patch
        .iter()
        .any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return Ok(Value::Array(
            patch.into_iter().filter(|p| p.get("$patch").is_none()).collect(),
        ));
    }
    match builtin_list_kind(kind, field, &patch) {
        ListKind::Map(keys) => {
            let mut out = orig;
            let key_of = |v: &Value| -> Vec<Value> {
                keys.iter()
                    .filter(|k| *k != "protocol")
                    .map(|k| v.get(k.as_str()).cloned().unwrap_or(Value::Null))
                    .collect()
            };
            for p in patch {
                let pk = key_of(&p);
                let idx = out.iter().position(|o| key_of(o) == pk);
                if p.get("$patch").and_then(Value::as_str) == Some("delete") {
                    out.retain(|o| key_of(o) != pk);
                    continue;
                }
                match (idx, p) {
                    (Some(i), Value::Object(pm)) => {
                        let o = out[i].as_object().cloned().unwrap_or_default();
                        out[i] = smp_object(o, pm, kind)?;
                    }
                    (Some(i), other) => out[i] = other,
                    (None, Value::Object(pm)) => out.push(smp_object(Map::new(), pm, kind)?),
                    (None, other) => out.push(other),
                }
            }
            Ok(Value::Array(out))
        }
        ListKind::Set => {
            let mut out = orig;
            for p in patch {
                if !out.contains(&p) {
                    out.push(p);
                }
            }
            Ok(Value::Array(out))
        }
        ListKind::Atomic => Ok(Value::Array(patch)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_by_name_with_directives() {
        let mut d = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
            {"name": "b", "image": "b:1"}
        ]}}}});
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
            "containers": [{"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "2"}]}, {"name": "b", "$patch": "delete"}]
        }}}});
        strategic_merge_patch(&mut d, patch.to_string().as_bytes(), "Deployment").unwrap();
        let cs = &d["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs.as_array().unwrap().len(), 1);
        assert_eq!(cs[0]["image"], "a:2");
        assert_eq!(cs[0]["env"].as_array().unwrap().len(), 2);
    }
}
