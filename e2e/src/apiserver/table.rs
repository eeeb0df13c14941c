//! `Table` output (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`), which `kubectl get`
//! prints: CRD `additionalPrinterColumns` evaluated with JSONPath, and NAME/…/AGE columns for
//! the built-in kinds.

use serde_json::{Value, json};

use super::resources::ResourceType;

/// Age as the real server's `duration.HumanDuration` renders it (`42s`, `5m3s`, `2d3h`).
pub fn human_age(ts: &str) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(ts) else {
        return "<unknown>".into();
    };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds();
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if d < 8 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

fn col(name: &str, ty: &str, format: &str, description: &str, priority: i64) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": description, "priority": priority})
}

fn jsonpath(obj: &Value, path: &str) -> Option<Value> {
    use jsonpath_rust::JsonPath;
    let p = path.trim().trim_start_matches('{').trim_end_matches('}');
    let query = if p.starts_with('$') {
        p.to_string()
    } else {
        format!("${p}")
    };
    let found = obj.query(&query).ok()?;
    match found.len() {
        0 => None,
        1 => Some(found[0].clone()),
        _ => Some(Value::String(
            found
                .iter()
                .map(|v| v.as_str().map(String::from).unwrap_or_else(|| v.to_string()))
                .collect::<Vec<_>>()
                .join(","),
        )),
    }
}

fn columns(rt: &ResourceType) -> Vec<Value> {
    let name = col(
        "Name",
        "string",
        "name",
        "Name must be unique within a namespace.",
        0,
    );
    let age = col(
        "Age",
        "string",
        "",
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
        0,
    );
    if let Some(crd) = &rt.crd {
        let mut cols = vec![name];
        if crd.printer_columns.is_empty() {
            cols.push(age);
        }
        for c in &crd.printer_columns {
            cols.push(col(
                c["name"].as_str().unwrap_or_default(),
                c["type"].as_str().unwrap_or("string"),
                c["format"].as_str().unwrap_or_default(),
                c["description"].as_str().unwrap_or_default(),
                c["priority"].as_i64().unwrap_or(0),
            ));
        }
        return cols;
    }
    let extra: Vec<Value> = match rt.kind.as_str() {
        "Pod" => vec![
            col(
                "Ready",
                "string",
                "",
                "The aggregate readiness state of this pod for accepting traffic.",
                0,
            ),
            col(
                "Status",
                "string",
                "",
                "The aggregate status of the containers in this pod.",
                0,
            ),
            col(
                "Restarts",
                "string",
                "",
                "The number of times the containers in this pod have been restarted.",
                0,
            ),
        ],
        "Deployment" => vec![
            col("Ready", "string", "", "Number of the pod with ready state", 0),
            col(
                "Up-to-date",
                "integer",
                "",
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
                0,
            ),
            col(
                "Available",
                "integer",
                "",
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
                0,
            ),
        ],
        "ReplicaSet" => vec![
            col("Desired", "integer", "", "Number of desired pods.", 0),
            col("Current", "integer", "", "Number of actual replicas.", 0),
            col("Ready", "integer", "", "Number of ready replicas.", 0),
        ],
        "Service" => vec![
            col("Type", "string", "", "The type of the service.", 0),
            col("Cluster-IP", "string", "", "The cluster IP.", 0),
            col("Port(s)", "string", "", "The ports of the service.", 0),
        ],
        "ConfigMap" => vec![col("Data", "integer", "", "Number of data entries.", 0)],
        "PersistentVolumeClaim" => vec![
            col("Status", "string", "", "The phase of the claim.", 0),
            col("Capacity", "string", "", "The requested storage.", 0),
            col("StorageClass", "string", "", "The storage class of the claim.", 0),
        ],
        "Secret" => vec![
            col("Type", "string", "", "The type of the secret.", 0),
            col("Data", "integer", "", "Number of data entries.", 0),
        ],
        "Namespace" => vec![col("Status", "string", "", "The status of the namespace.", 0)],
        "Ingress" => vec![
            col("Class", "string", "", "The ingress class.", 0),
            col("Hosts", "string", "", "Hosts of the rules.", 0),
        ],
        "HorizontalPodAutoscaler" => vec![
            col("Reference", "string", "", "Scale target.", 0),
            col("MinPods", "string", "", "Lower replica limit.", 0),
            col("MaxPods", "string", "", "Upper replica limit.", 0),
            col("Replicas", "string", "", "Current replicas.", 0),
        ],
        "CustomResourceDefinition" => return vec![name, col("Created At", "date", "", "Creation time.", 0)],
        "Lease" => vec![col("Holder", "string", "", "The holder of the lease.", 0)],
        "Event" if rt.group.is_empty() => {
            return vec![
                col(
                    "Last Seen",
                    "string",
                    "",
                    "Time since the event was last observed.",
                    0,
                ),
                col("Type", "string", "", "Type of the event.", 0),
                col("Reason", "string", "", "Why the action was taken.", 0),
                col("Object", "string", "", "The object the event is about.", 0),
                col("Message", "string", "", "Human-readable description.", 0),
            ];
        }
        _ => vec![],
    };
    let mut cols = vec![name];
    cols.extend(extra);
    cols.push(age);
    cols
}

fn cells(rt: &ResourceType, o: &Value) -> Vec<Value> {
    let name = json!(o["metadata"]["name"]);
    let created = o["metadata"]["creationTimestamp"].as_str().unwrap_or_default();
    if let Some(crd) = &rt.crd {
        let mut out = vec![name];
        if crd.printer_columns.is_empty() {
            out.push(json!(human_age(created)));
        }
        for c in &crd.printer_columns {
            let v = jsonpath(o, c["jsonPath"].as_str().unwrap_or_default());
            let cell = match (c["type"].as_str(), v) {
                (Some("date"), Some(Value::String(s))) => json!(human_age(&s)),
                (_, Some(v)) => v,
                (_, None) => Value::Null,
            };
            out.push(cell);
        }
        return out;
    }
    let n = |v: &Value| v.as_i64().unwrap_or(0);
    let extra: Vec<Value> = match rt.kind.as_str() {
        "Pod" => {
            let statuses = o["status"]["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
            let ready = statuses
                .iter()
                .filter(|s| s["ready"].as_bool() == Some(true))
                .count();
            let restarts: i64 = statuses.iter().map(|s| n(&s["restartCount"])).sum();
            let phase = if o["metadata"].get("deletionTimestamp").is_some() {
                "Terminating"
            } else {
                o["status"]["phase"].as_str().unwrap_or("Pending")
            };
            vec![
                json!(format!("{ready}/{total}")),
                json!(phase),
                json!(restarts.to_string()),
            ]
        }
        "Deployment" => vec![
            json!(format!(
                "{}/{}",
                n(&o["status"]["readyReplicas"]),
                n(&o["spec"]["replicas"])
            )),
            json!(n(&o["status"]["updatedReplicas"])),
            json!(n(&o["status"]["availableReplicas"])),
        ],
        "ReplicaSet" => vec![
            json!(n(&o["spec"]["replicas"])),
            json!(n(&o["status"]["replicas"])),
            json!(n(&o["status"]["readyReplicas"])),
        ],
        "Service" => {
            let ports: Vec<String> = o["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("TCP")))
                .collect();
            vec![
                o["spec"]["type"].clone(),
                o["spec"]["clusterIP"].clone(),
                json!(if ports.is_empty() {
                    "<none>".to_string()
                } else {
                    ports.join(",")
                }),
            ]
        }
        "ConfigMap" => vec![json!(
            o["data"].as_object().map_or(0, |m| m.len()) + o["binaryData"].as_object().map_or(0, |m| m.len())
        )],
        "Secret" => vec![
            o["type"].clone(),
            json!(o["data"].as_object().map_or(0, |m| m.len())),
        ],
        "Namespace" => vec![o["status"]["phase"].clone()],
        "Ingress" => {
            let hosts: Vec<String> = o["spec"]["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| r["host"].as_str().unwrap_or("*").to_string())
                .collect();
            vec![
                o["spec"]["ingressClassName"]
                    .as_str()
                    .map_or(json!("<none>"), |c| json!(c)),
                json!(if hosts.is_empty() {
                    "*".to_string()
                } else {
                    hosts.join(",")
                }),
            ]
        }
        "PersistentVolumeClaim" => vec![
            json!(o["status"]["phase"].as_str().unwrap_or("Pending")),
            json!(
                o["spec"]["resources"]["requests"]["storage"]
                    .as_str()
                    .unwrap_or_default()
            ),
            json!(o["spec"]["storageClassName"].as_str().unwrap_or("<unset>")),
        ],
        "HorizontalPodAutoscaler" => vec![
            json!(format!(
                "{}/{}",
                o["spec"]["scaleTargetRef"]["kind"].as_str().unwrap_or_default(),
                o["spec"]["scaleTargetRef"]["name"].as_str().unwrap_or_default()
            )),
            json!(o["spec"]["minReplicas"].as_i64().unwrap_or(1).to_string()),
            json!(n(&o["spec"]["maxReplicas"]).to_string()),
            json!(n(&o["status"]["currentReplicas"]).to_string()),
        ],
        "CustomResourceDefinition" => return vec![name, json!(created)],
        "Lease" => vec![o["spec"]["holderIdentity"].clone()],
        "Event" if rt.group.is_empty() => {
            let seen = [
                &o["series"]["lastObservedTime"],
                &o["lastTimestamp"],
                &o["eventTime"],
                &o["metadata"]["creationTimestamp"],
            ]
            .into_iter()
            .find_map(|v| v.as_str())
            .unwrap_or_default();
            let involved = &o["involvedObject"];
            let object = format!(
                "{}/{}",
                involved["kind"].as_str().unwrap_or_default().to_ascii_lowercase(),
                involved["name"].as_str().unwrap_or_default()
            );
            return vec![
                json!(human_age(seen)),
                o["type"].clone(),
                o["reason"].clone(),
                json!(object),
                o["message"].clone(),
            ];
        }
        _ => vec![],
    };
    let mut out = vec![name];
    out.extend(extra);
    out.push(json!(human_age(created)));
    out
}

/// How much of each object a Table row carries (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

fn row(rt: &ResourceType, o: &Value, include: Include) -> Value {
    let mut r = json!({"cells": cells(rt, o)});
    match include {
        Include::None => {}
        Include::Metadata => {
            r["object"] = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]});
        }
        Include::Object => r["object"] = o.clone(),
    }
    r
}

/// A `Table` of the given objects.
pub fn table(
    rt: &ResourceType,
    objects: &[&Value],
    list_meta: Value,
    include: Include,
    with_columns: bool,
) -> Value {
    let rows: Vec<Value> = objects.iter().map(|o| row(rt, o, include)).collect();
    let mut t = json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta, "rows": rows});
    t["columnDefinitions"] = if with_columns {
        json!(columns(rt))
    } else {
        json!([])
    };
    t
}
