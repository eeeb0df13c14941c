//! Semantic validation of built-in kinds: the subset of the real server's checks that catch
//! the mistakes a controller is likely to make (missing selectors or container images, a
//! selector that does not match the template, Ingress paths without `pathType`, HPA bounds,
//! invalid label keys and values, immutable selectors). Messages follow the real wording.

use serde_json::Value;

use super::status::Cause;

const LABEL_VALUE: &str = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";
const QUALIFIED_NAME: &str = r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$";
const DNS1123_SUBDOMAIN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
const DNS1123_LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

fn matches(re: &str, s: &str) -> bool {
    super::schema::regex_match(re, s).unwrap_or(false)
}

fn label_map(map: &Value, path: &str, causes: &mut Vec<Cause>) {
    for (k, v) in map.as_object().into_iter().flatten() {
        let (prefix, name) = match k.rsplit_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, k.as_str()),
        };
        let key_ok = name.len() <= 63
            && matches(QUALIFIED_NAME, name)
            && prefix.is_none_or(|p| p.len() <= 253 && matches(DNS1123_SUBDOMAIN, p));
        if !key_ok {
            causes.push(Cause::invalid(
                path,
                &Value::String(k.clone()),
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
            ));
        }
        let value = v.as_str().unwrap_or_default();
        if value.len() > 63 || !matches(LABEL_VALUE, value) {
            causes.push(Cause::invalid(
                path,
                v,
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
            ));
        }
    }
}

fn owner_references(refs: &Value, causes: &mut Vec<Cause>) {
    let mut controllers = 0;
    for r in refs.as_array().into_iter().flatten() {
        for (f, what) in [
            ("apiVersion", "version"),
            ("kind", "kind"),
            ("name", "name"),
            ("uid", "uid"),
        ] {
            if r[f].as_str().is_none_or(str::is_empty) {
                causes.push(Cause::invalid(
                    format!("metadata.ownerReferences.{f}"),
                    &Value::String(String::new()),
                    format!("{what} must not be empty"),
                ));
            }
        }
        if r["controller"].as_bool() == Some(true) {
            controllers += 1;
        }
    }
    if controllers > 1 {
        causes.push(Cause::invalid(
            "metadata.ownerReferences",
            refs,
            "Only one reference can have Controller set to true",
        ));
    }
}

fn pod_spec(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    let containers = spec["containers"].as_array();
    if containers.is_none_or(|c| c.is_empty()) {
        causes.push(Cause::required(format!("{path}.containers")));
    }
    let mut names = Vec::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in spec[list].as_array().into_iter().flatten().enumerate() {
            let p = format!("{path}.{list}[{i}]");
            match c["name"].as_str() {
                None | Some("") => causes.push(Cause::required(format!("{p}.name"))),
                Some(n) if n.len() > 63 || !matches(DNS1123_LABEL, n) => causes.push(Cause::invalid(
                    format!("{p}.name"),
                    &c["name"],
                    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
                )),
                Some(n) if names.contains(&n) => causes.push(Cause { reason: "FieldValueDuplicate", message: format!("Duplicate value: {n:?}"), field: format!("{p}.name") }),
                Some(n) => names.push(n),
            }
            if c["image"].as_str().is_none_or(str::is_empty) && list == "containers" {
                causes.push(Cause::required(format!("{p}.image")));
            }
            for (j, port) in c["ports"].as_array().into_iter().flatten().enumerate() {
                let cp = port["containerPort"].as_i64().unwrap_or(0);
                if !(1..=65535).contains(&cp) {
                    causes.push(Cause::invalid(
                        format!("{p}.ports[{j}].containerPort"),
                        &port["containerPort"],
                        "must be between 1 and 65535, inclusive",
                    ));
                }
            }
        }
    }
}

/// Selector `matchLabels` must select the template's labels.
fn selector_matches_template(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    let sel = &spec["selector"];
    if sel.is_null() {
        causes.push(Cause::required(format!("{path}.selector")));
        return;
    }
    let has_terms = sel["matchLabels"].as_object().is_some_and(|m| !m.is_empty())
        || sel["matchExpressions"].as_array().is_some_and(|m| !m.is_empty());
    if !has_terms {
        causes.push(Cause::invalid(
            format!("{path}.selector"),
            sel,
            "empty selector is invalid for deployment",
        ));
        return;
    }
    let labels = &spec["template"]["metadata"]["labels"];
    let ok = sel["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    if !ok {
        causes.push(Cause::invalid(
            format!("{path}.template.metadata.labels"),
            labels,
            "`selector` does not match template `labels`",
        ));
    }
}

/// Validation causes for a built-in object (`old` for update-only rules such as immutability).
pub fn builtin(kind: &str, old: Option<&Value>, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    label_map(&obj["metadata"]["labels"], "metadata.labels", &mut causes);
    owner_references(&obj["metadata"]["ownerReferences"], &mut causes);
    let spec = &obj["spec"];
    match kind {
        "Deployment" | "ReplicaSet" => {
            selector_matches_template(spec, "spec", &mut causes);
            label_map(
                &spec["template"]["metadata"]["labels"],
                "spec.template.metadata.labels",
                &mut causes,
            );
            pod_spec(&spec["template"]["spec"], "spec.template.spec", &mut causes);
            if spec["replicas"].as_i64().is_some_and(|r| r < 0) {
                causes.push(Cause::invalid(
                    "spec.replicas",
                    &spec["replicas"],
                    "must be greater than or equal to 0",
                ));
            }
            if let Some(o) = old
                && o["spec"]["selector"] != spec["selector"]
            {
                causes.push(Cause::invalid(
                    "spec.selector",
                    &spec["selector"],
                    "field is immutable",
                ));
            }
        }
        "Pod" => pod_spec(spec, "spec", &mut causes),
        "Service" => {
            let headless = spec["clusterIP"].as_str() == Some("None");
            let ports = spec["ports"].as_array();
            if ports.is_none_or(|p| p.is_empty())
                && !headless
                && spec["type"].as_str() != Some("ExternalName")
            {
                causes.push(Cause::required("spec.ports"));
            }
            for (i, p) in ports.into_iter().flatten().enumerate() {
                let port = p["port"].as_i64().unwrap_or(0);
                if !(1..=65535).contains(&port) {
                    causes.push(Cause::invalid(
                        format!("spec.ports[{i}].port"),
                        &p["port"],
                        "must be between 1 and 65535, inclusive",
                    ));
                }
                if ports.is_some_and(|all| all.len() > 1) && p["name"].as_str().is_none_or(str::is_empty) {
                    causes.push(Cause::required(format!("spec.ports[{i}].name")));
                }
            }
            if let Some(o) = old
                && let (Some(a), Some(b)) = (o["spec"]["clusterIP"].as_str(), spec["clusterIP"].as_str())
                && a != b
            {
                causes.push(Cause::invalid(
                    "spec.clusterIPs[0]",
                    &spec["clusterIP"],
                    "may not change once set",
                ));
            }
        }
        "Ingress" => {
            for (i, rule) in spec["rules"].as_array().into_iter().flatten().enumerate() {
                for (j, path) in rule["http"]["paths"].as_array().into_iter().flatten().enumerate() {
                    let p = format!("spec.rules[{i}].http.paths[{j}]");
                    match path["pathType"].as_str() {
                        None => causes.push(Cause { reason: "FieldValueRequired", message: "Required value: pathType must be specified".into(), field: format!("{p}.pathType") }),
                        Some("Prefix") | Some("Exact") | Some("ImplementationSpecific") => {}
                        Some(other) => causes.push(Cause {
                            reason: "FieldValueNotSupported",
                            message: format!("Unsupported value: {other:?}: supported values: \"Exact\", \"ImplementationSpecific\", \"Prefix\""),
                            field: format!("{p}.pathType"),
                        }),
                    }
                    if matches!(path["pathType"].as_str(), Some("Prefix") | Some("Exact"))
                        && !path["path"].as_str().is_some_and(|s| s.starts_with('/'))
                    {
                        causes.push(Cause::invalid(
                            format!("{p}.path"),
                            &path["path"],
                            "must be an absolute path",
                        ));
                    }
                    if path["backend"].is_null() {
                        causes.push(Cause::required(format!("{p}.backend")));
                    } else if path["backend"]["service"].is_null() && path["backend"]["resource"].is_null() {
                        causes.push(Cause::invalid(
                            format!("{p}.backend"),
                            &path["backend"],
                            "one backend must be specified",
                        ));
                    }
                }
            }
        }
        "HorizontalPodAutoscaler" => {
            let max = spec["maxReplicas"].as_i64().unwrap_or(0);
            let min = spec["minReplicas"].as_i64().unwrap_or(1);
            if max < 1 {
                causes.push(Cause::invalid(
                    "spec.maxReplicas",
                    &spec["maxReplicas"],
                    "must be greater than 0",
                ));
            } else if max < min {
                causes.push(Cause::invalid(
                    "spec.maxReplicas",
                    &spec["maxReplicas"],
                    "must be greater than or equal to `minReplicas`",
                ));
            }
            if min < 1 {
                causes.push(Cause::invalid(
                    "spec.minReplicas",
                    &spec["minReplicas"],
                    "must be greater than or equal to 1",
                ));
            }
            for f in ["kind", "name"] {
                if spec["scaleTargetRef"][f].as_str().is_none_or(str::is_empty) {
                    causes.push(Cause::required(format!("spec.scaleTargetRef.{f}")));
                }
            }
        }
        "PodDisruptionBudget" if !spec["minAvailable"].is_null() && !spec["maxUnavailable"].is_null() => {
            causes.push(Cause::invalid(
                "spec",
                spec,
                "minAvailable and maxUnavailable cannot be both set",
            ));
        }
        _ => {}
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deployment_selector_and_containers() {
        let d = json!({"metadata": {"labels": {"ok": "v"}}, "spec": {"selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "c"}}, "spec": {"containers": [{"name": "x"}]}}}});
        let fields: Vec<String> = builtin("Deployment", None, &d)
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(
            fields,
            vec![
                "spec.template.metadata.labels",
                "spec.template.spec.containers[0].image"
            ]
        );
    }

    #[test]
    fn labels_and_ingress_path_type() {
        let i = json!({"metadata": {"labels": {"bad/key/x": "v", "k": "not ok"}}, "spec": {"rules": [{"http": {"paths": [{"path": "/a", "backend": {"service": {"name": "s"}}}]}}]}});
        let fields: Vec<String> = builtin("Ingress", None, &i)
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(
            fields,
            vec![
                "metadata.labels",
                "metadata.labels",
                "spec.rules[0].http.paths[0].pathType"
            ]
        );
    }
}
