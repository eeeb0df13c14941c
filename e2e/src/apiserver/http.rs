//! HTTP layer: path routing (`/api/v1/namespaces/{ns}/{plural}/{name}/{sub}`, `/apis/...`,
//! `/watch/...`), discovery, OpenAPI documents, list/get/watch, writes and patches.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::fields;
use super::resources::ResourceType;
use super::selectors::{FieldSelector, LabelSelector};
use super::status::{ApiError, ApiResult};
use super::store::{Deleted, FieldValidation, Store, WatchEvent, WriteOpts, name_of};
use super::table::{self, Include};

/// Shared server state.
pub struct App {
    pub store: Mutex<Store>,
    /// Flips to true on shutdown, ending open watches.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    pub addr: std::net::SocketAddr,
}

impl App {
    pub fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock would be a bug; keep serving with the data as is.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

type Params = HashMap<String, String>;

fn json_response(code: StatusCode, v: &Value) -> Response {
    let mut r = (code, v.to_string()).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error_response(e: &ApiError) -> Response {
    json_response(e.code, &e.to_status())
}

fn with_warnings(mut r: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text = format!("299 - {:?}", w);
        if let Ok(v) = HeaderValue::from_str(&text) {
            r.headers_mut().append("Warning", v);
        }
    }
    r
}

/// The single entry point: every request is routed by hand, because the Kubernetes path
/// grammar (optional `watch/`, optional `namespaces/{ns}/`, subresources) does not map onto
/// a static route table.
pub async fn dispatch(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    Query(params): Query<Params>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    tracing::debug!(%method, %uri, "request");
    match route(&app, &method, &path, &params, &headers, body).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%method, %uri, error = %e, "request failed");
            error_response(&e)
        }
    }
}

fn not_found_path() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        "the server could not find the requested resource",
    )
}

async fn route(
    app: &Arc<App>,
    method: &Method,
    path: &str,
    params: &Params,
    headers: &HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let is_discovery = matches!(
        segs.as_slice(),
        [] | ["version"]
            | ["healthz"]
            | ["livez"]
            | ["readyz"]
            | ["api"]
            | ["apis"]
            | ["apis", _]
            | ["api", "v1"]
            | ["apis", _, _]
            | ["openapi", ..]
    );
    if is_discovery && method != Method::GET && method != Method::HEAD {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({} {path})",
            method.as_str().to_lowercase()
        )));
    }
    match segs.as_slice() {
        [] => {
            return Ok(json_response(
                StatusCode::OK,
                &json!({"paths": ["/api", "/api/v1", "/apis", "/healthz", "/livez", "/openapi/v2", "/openapi/v3", "/readyz", "/version"]}),
            ));
        }
        ["version"] => return Ok(json_response(StatusCode::OK, &version())),
        ["healthz"] | ["livez"] | ["readyz"] => return Ok((StatusCode::OK, "ok").into_response()),
        ["api"] | ["apis"] if wants_aggregated(headers) => {
            return Ok(aggregated_discovery(&app.lock(), segs[0] == "api"));
        }
        ["api"] => {
            return Ok(json_response(
                StatusCode::OK,
                &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": app.addr.to_string()}]}),
            ));
        }
        ["apis"] => return Ok(json_response(StatusCode::OK, &group_list(&app.lock()))),
        ["apis", g] => {
            let list = group_list(&app.lock());
            let found = list["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|x| x["name"] == *g)
                .cloned();
            return match found {
                Some(mut grp) => {
                    grp["kind"] = json!("APIGroup");
                    grp["apiVersion"] = json!("v1");
                    Ok(json_response(StatusCode::OK, &grp))
                }
                None => Err(not_found_path()),
            };
        }
        ["api", "v1"] => return resource_list(&app.lock(), "", "v1"),
        ["apis", g, v] => return resource_list(&app.lock(), g, v),
        ["openapi", "v2"] => return Err(not_found_path()),
        ["openapi", "v3"] => return Ok(json_response(StatusCode::OK, &openapi_root(&app.lock()))),
        ["openapi", "v3", "api", "v1"] => return openapi_gv(&app.lock(), "", "v1"),
        ["openapi", "v3", "apis", g, v] => return openapi_gv(&app.lock(), g, v),
        _ => {}
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(not_found_path()),
    };
    let (watch_path, rest) = match rest {
        ["watch", r @ ..] => (true, r),
        r => (false, r),
    };
    let store = app.lock();
    let (ns, rest): (Option<String>, &[&str]) = match rest {
        ["namespaces", ns, plural, ..]
            if store
                .find_type(group, version, plural)
                .is_some_and(|t| t.namespaced) =>
        {
            (Some(ns.to_string()), &rest[2..])
        }
        r => (None, r),
    };
    let (plural, name, sub) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(n.to_string()), None),
        [p, n, s] => (*p, Some(n.to_string()), Some(s.to_string())),
        _ => return Err(not_found_path()),
    };
    let rt = store
        .find_type(group, version, plural)
        .cloned()
        .ok_or_else(not_found_path)?;
    drop(store);
    if let Some(s) = &sub
        && !(s == "status" && rt.status_subresource)
        && !(s == "scale" && rt.has_scale())
    {
        return Err(not_found_path());
    }
    if rt.namespaced && ns.is_none() && name.is_some() {
        return Err(not_found_path());
    }
    if !rt.namespaced && ns.is_some() {
        return Err(not_found_path());
    }
    let ns_str = ns.clone().unwrap_or_default();
    let is_watch = watch_path || params.get("watch").is_some_and(|w| w == "true" || w == "1");
    if sub.as_deref() == Some("scale")
        && let Some(n) = &name
    {
        return scale(app, &rt, &ns_str, n, method, params, headers, &body);
    }
    match (method, &name) {
        (&Method::GET, _) if is_watch => watch(app, &rt, ns.as_deref(), name.as_deref(), params, headers),
        (&Method::GET, Some(n)) => {
            let obj = app.lock().get(&rt, &ns_str, n)?;
            if wants_table(headers) {
                let rv = obj["metadata"]["resourceVersion"].clone();
                return Ok(json_response(
                    StatusCode::OK,
                    &table::table(
                        &rt,
                        &[&obj],
                        json!({"resourceVersion": rv}),
                        include(params),
                        true,
                    ),
                ));
            }
            Ok(json_response(StatusCode::OK, &obj))
        }
        (&Method::GET, None) => list(app, &rt, ns.as_deref(), params, headers),
        (&Method::POST, None) => {
            if rt.namespaced && ns.is_none() {
                return Err(ApiError::method_not_allowed(format!(
                    "the server does not allow this method on the requested resource (post {})",
                    rt.plural
                )));
            }
            let obj = parse_body(&body, headers)?;
            let opts = write_opts(params, headers, "")?;
            let w = app.lock().create(&rt, &ns_str, obj, &opts)?;
            Ok(with_warnings(
                json_response(StatusCode::CREATED, &w.object),
                &w.warnings,
            ))
        }
        (&Method::PUT, Some(n)) => {
            let obj = parse_body(&body, headers)?;
            let opts = write_opts(params, headers, sub.as_deref().unwrap_or_default())?;
            let w = app.lock().update(&rt, &ns_str, n, obj, &opts)?;
            Ok(with_warnings(
                json_response(StatusCode::OK, &w.object),
                &w.warnings,
            ))
        }
        (&Method::PATCH, Some(n)) => patch(
            app,
            &rt,
            &ns_str,
            n,
            sub.as_deref().unwrap_or_default(),
            params,
            headers,
            &body,
        ),
        (&Method::DELETE, Some(n)) => {
            if sub.is_some() {
                return Err(ApiError::method_not_allowed(
                    "the server does not allow this method on the requested resource",
                ));
            }
            delete(app, &rt, &ns_str, n, params, &body)
        }
        (&Method::DELETE, None) => delete_collection(app, &rt, ns.as_deref(), params, &body),
        _ => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({} {})",
            method.as_str().to_lowercase(),
            rt.plural
        ))),
    }
}

fn version() -> Value {
    json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-cloudify-e2e", "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24.0", "compiler": "gc", "platform": "linux/amd64",
        "emulationMajor": "1", "emulationMinor": "33", "minCompatibilityMajor": "1", "minCompatibilityMinor": "32"
    })
}

fn group_list(store: &Store) -> Value {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for t in store.types.iter().filter(|t| !t.group.is_empty()) {
        match groups.iter_mut().find(|(g, _)| *g == t.group) {
            Some((_, vs)) => {
                if !vs.contains(&t.version) {
                    vs.push(t.version.clone())
                }
            }
            None => groups.push((t.group.clone(), vec![t.version.clone()])),
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether the client accepts aggregated discovery (`apidiscovery.k8s.io/v2`), as kubectl does.
fn wants_aggregated(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| {
            a.split(',').any(|t| {
                t.contains("as=APIGroupDiscoveryList")
                    && t.contains("v=v2")
                    && t.contains("g=apidiscovery.k8s.io")
            })
        })
}

/// Aggregated discovery: every group/version with its resources in one document
/// (`/api` for the core group, `/apis` for the others).
fn aggregated_discovery(store: &Store, core: bool) -> Response {
    // group → version → resource entries, in discovery order.
    type Versions = Vec<(String, Vec<Value>)>;
    let mut groups: Vec<(String, Versions)> = Vec::new();
    for t in store.types.iter().filter(|t| t.group.is_empty() == core) {
        let kind = json!({"group": t.group, "version": t.version, "kind": t.kind});
        let mut subresources = Vec::new();
        if t.status_subresource {
            subresources.push(
                json!({"subresource": "status", "responseKind": kind, "verbs": ["get", "patch", "update"]}),
            );
        }
        if t.has_scale() {
            subresources.push(json!({"subresource": "scale", "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"}, "verbs": ["get", "patch", "update"]}));
        }
        let mut r = json!({
            "resource": t.plural,
            "responseKind": kind,
            "scope": if t.namespaced { "Namespaced" } else { "Cluster" },
            "singularResource": t.singular,
            "verbs": t.verbs(),
        });
        if !t.short_names.is_empty() {
            r["shortNames"] = json!(t.short_names);
        }
        if !t.categories.is_empty() {
            r["categories"] = json!(t.categories);
        }
        if !subresources.is_empty() {
            r["subresources"] = json!(subresources);
        }
        let gi = match groups.iter().position(|(g, _)| *g == t.group) {
            Some(i) => i,
            None => {
                groups.push((t.group.clone(), Vec::new()));
                groups.len() - 1
            }
        };
        let versions = &mut groups[gi].1;
        match versions.iter_mut().find(|(v, _)| *v == t.version) {
            Some((_, rs)) => rs.push(r),
            None => versions.push((t.version.clone(), vec![r])),
        }
    }
    let items: Vec<Value> = groups
        .into_iter()
        .map(|(g, versions)| {
            let versions: Vec<Value> = versions
                .into_iter()
                .map(|(v, resources)| json!({"version": v, "resources": resources, "freshness": "Current"}))
                .collect();
            json!({"metadata": {"name": g, "creationTimestamp": null}, "versions": versions})
        })
        .collect();
    let body = json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items});
    let mut r = (StatusCode::OK, body.to_string()).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(AGGREGATED));
    r.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    r
}

fn resource_list(store: &Store, group: &str, version: &str) -> ApiResult<Response> {
    let types: Vec<&ResourceType> = store
        .types
        .iter()
        .filter(|t| t.group == group && t.version == version)
        .collect();
    if types.is_empty() {
        return Err(not_found_path());
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let resources: Vec<Value> = types.iter().flat_map(|t| t.discovery_entries()).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    ))
}

/// OpenAPI v3 discovery: one document per group/version. Documents declare each resource's
/// operations with the `fieldValidation` parameter, which is what kubectl checks before it
/// relies on server-side field validation (`--validate=strict`, its default).
fn openapi_root(store: &Store) -> Value {
    let mut paths = serde_json::Map::new();
    for t in &store.types {
        let p = if t.group.is_empty() {
            format!("api/{}", t.version)
        } else {
            format!("apis/{}/{}", t.group, t.version)
        };
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", store.resource_version())}),
        );
    }
    json!({"paths": paths})
}

fn openapi_gv(store: &Store, group: &str, version: &str) -> ApiResult<Response> {
    let types: Vec<&ResourceType> = store
        .types
        .iter()
        .filter(|t| t.group == group && t.version == version)
        .collect();
    if types.is_empty() {
        return Err(not_found_path());
    }
    let mut paths = serde_json::Map::new();
    let param =
        |n: &str| json!({"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": true}});
    for t in types {
        let gvk = json!({"group": t.group, "version": t.version, "kind": t.kind});
        let op = |action: &str| {
            json!({
                "operationId": format!("{action}{}", t.kind),
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [param("dryRun"), param("fieldManager"), param("fieldValidation")],
                "responses": {"200": {"description": "OK"}}
            })
        };
        let base = if t.namespaced {
            format!("{}/namespaces/{{namespace}}/{}", t.gv_path(), t.plural)
        } else {
            format!("{}/{}", t.gv_path(), t.plural)
        };
        paths.insert(base.clone(), json!({"post": op("post"), "get": op("list")}));
        paths.insert(
            format!("{base}/{{name}}"),
            json!({"put": op("put"), "patch": op("patch"), "get": op("get"), "delete": op("delete")}),
        );
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.33.0"}, "paths": paths, "components": {"schemas": {}}}),
    ))
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| {
            // The first acceptable entry wins; Table is requested as the preferred one.
            a.split(',')
                .next()
                .is_some_and(|first| first.contains("as=Table"))
        })
}

fn include(params: &Params) -> Include {
    match params.get("includeObject").map(String::as_str) {
        Some("None") => Include::None,
        Some("Object") => Include::Object,
        _ => Include::Metadata,
    }
}

fn parse_body(body: &Bytes, headers: &HeaderMap) -> ApiResult<Value> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .unwrap_or("application/json");
    if ct.contains("protobuf") {
        return super::protobuf::decode(body);
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => Ok(v),
        Err(e) => {
            if ct.contains("yaml") {
                serde_yaml::from_slice::<Value>(body)
                    .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
            } else {
                Err(ApiError::bad_request(format!(
                    "couldn't get version/kind; json parse error: {e}"
                )))
            }
        }
    }
}

fn write_opts(params: &Params, headers: &HeaderMap, sub: &str) -> ApiResult<WriteOpts> {
    let validation = match params.get("fieldValidation").map(String::as_str) {
        None | Some("") | Some("Warn") => FieldValidation::Warn,
        Some("Strict") => FieldValidation::Strict,
        Some("Ignore") => FieldValidation::Ignore,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn, Strict; got {other:?}"
            )));
        }
    };
    let dry_run = match params.get("dryRun").map(String::as_str) {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "dryRun: Unsupported value: {other:?}: supported values: \"All\""
            )));
        }
    };
    // Like the real server: the manager defaults to the user agent up to the first '/'.
    let manager = params.get("fieldManager").cloned().unwrap_or_else(|| {
        let ua = headers
            .get(header::USER_AGENT)
            .and_then(|u| u.to_str().ok())
            .unwrap_or("unknown");
        ua.split('/')
            .next()
            .unwrap_or("unknown")
            .chars()
            .take(128)
            .collect()
    });
    Ok(WriteOpts {
        manager,
        validation,
        dry_run,
        subresource: sub.to_string(),
    })
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: u64,
    start: String,
}

fn list(
    app: &Arc<App>,
    rt: &ResourceType,
    ns: Option<&str>,
    params: &Params,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let labels = LabelSelector::parse(
        params
            .get("labelSelector")
            .map(String::as_str)
            .unwrap_or_default(),
    )?;
    let fields_sel = FieldSelector::parse(
        params
            .get("fieldSelector")
            .map(String::as_str)
            .unwrap_or_default(),
        &rt.kind,
    )?;
    let limit: usize = match params.get("limit").map(String::as_str) {
        None | Some("") | Some("0") => 0,
        Some(l) => l
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
    };
    let store = app.lock();
    let rv = store.resource_version();
    let start = match params.get("continue").filter(|c| !c.is_empty()) {
        Some(c) => {
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .map_err(|_| ApiError::bad_request("continue key is not valid: illegal base64 data"))?;
            let tok: ContinueToken = serde_json::from_slice(&raw)
                .map_err(|e| ApiError::bad_request(format!("continue key is not valid: {e}")))?;
            Some(tok.start)
        }
        None => None,
    };
    let listed = store.list(rt, ns);
    let all: Vec<&Value> = listed
        .iter()
        .map(|o| o.as_ref())
        .filter(|o| labels.matches(o) && fields_sel.matches(o))
        .filter(|o| start.as_deref().is_none_or(|s| sort_key(o).as_str() > s))
        .collect();
    let (page, more) = if limit > 0 && all.len() > limit {
        (&all[..limit], all.len() - limit)
    } else {
        (&all[..], 0)
    };
    let mut list_meta = json!({"resourceVersion": rv.to_string()});
    if more > 0
        && let Some(last) = page.last()
    {
        let tok = ContinueToken {
            rv,
            start: sort_key(last),
        };
        let raw = serde_json::to_vec(&tok).map_err(|e| ApiError::internal(e.to_string()))?;
        list_meta["continue"] = json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw));
        list_meta["remainingItemCount"] = json!(more);
    }
    if wants_table(headers) {
        return Ok(json_response(
            StatusCode::OK,
            &table::table(rt, page, list_meta, include(params), true),
        ));
    }
    let items: Vec<Value> = page.iter().map(|o| (*o).clone()).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": rt.list_kind(), "apiVersion": rt.api_version(), "metadata": list_meta, "items": items}),
    ))
}

fn sort_key(o: &Value) -> String {
    format!(
        "{}/{}",
        o["metadata"]["namespace"].as_str().unwrap_or_default(),
        name_of(o)
    )
}

fn watch(
    app: &Arc<App>,
    rt: &ResourceType,
    ns: Option<&str>,
    name: Option<&str>,
    params: &Params,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let labels = LabelSelector::parse(
        params
            .get("labelSelector")
            .map(String::as_str)
            .unwrap_or_default(),
    )?;
    let mut field_sel_text = params.get("fieldSelector").cloned().unwrap_or_default();
    if let Some(n) = name {
        if !field_sel_text.is_empty() {
            field_sel_text.push(',');
        }
        field_sel_text.push_str(&format!("metadata.name={n}"));
    }
    let fields_sel = FieldSelector::parse(&field_sel_text, &rt.kind)?;
    let bookmarks = params.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let send_initial = params.get("sendInitialEvents").is_some_and(|b| b == "true");
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .unwrap_or(1800);
    let table_mode = wants_table(headers);
    let inc = include(params);
    let rv_param = params.get("resourceVersion").cloned().unwrap_or_default();
    if send_initial && params.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan") {
        return Err(ApiError::invalid(
            "WatchOptions",
            "",
            "",
            vec![super::status::Cause {
                reason: "FieldValueForbidden",
                message: "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"
                    .into(),
                field: "sendInitialEvents".into(),
            }],
        ));
    }
    let key = rt.key();
    let ns_owned = ns.map(String::from);
    let matches = move |o: &Value, ev_ns: &str| -> bool {
        ns_owned.as_deref().is_none_or(|n| n == ev_ns) && labels.matches(o) && fields_sel.matches(o)
    };

    // Initial state and the subscription are taken under one lock: no event can fall between.
    let store = app.lock();
    let mut initial: Vec<(&'static str, Value)> = Vec::new();
    let mut expired: Option<ApiError> = None;
    let start_rv;
    let rx;
    if rv_param.is_empty() || rv_param == "0" || send_initial {
        start_rv = store.resource_version();
        for o in store.list(rt, ns) {
            let ons = o["metadata"]["namespace"].as_str().unwrap_or_default();
            if matches(&o, ons) {
                initial.push(("ADDED", o.into_owned()));
            }
        }
        rx = store.subscribe();
    } else {
        let since: u64 = rv_param
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resource version {rv_param:?}")))?;
        start_rv = since;
        match store.watch_from(&key, since) {
            Ok((backlog, r)) => {
                for ev in backlog {
                    if let Some(e) = filter_event(rt, &ev, &matches) {
                        initial.push(e);
                    }
                }
                rx = r;
            }
            Err(e) => {
                expired = Some(e);
                rx = store.subscribe();
            }
        }
    }
    drop(store);

    let (tx, out_rx) = mpsc::channel::<Bytes>(256);
    let rt = rt.clone();
    let mut shutdown = app.shutdown.clone();
    let app2 = app.clone();
    tokio::spawn(async move {
        let encode = |etype: &str, obj: &Value, first: bool| -> Bytes {
            let object = if table_mode && etype != "ERROR" && etype != "BOOKMARK" {
                table::table(
                    &rt,
                    &[obj],
                    json!({"resourceVersion": obj["metadata"]["resourceVersion"]}),
                    inc,
                    first,
                )
            } else {
                obj.clone()
            };
            Bytes::from(format!("{}\n", json!({"type": etype, "object": object})))
        };
        if let Some(e) = expired {
            let _ = tx.send(encode("ERROR", &e.to_status(), true)).await;
            return;
        }
        let mut first = true;
        let mut last_rv = start_rv;
        let bookmark = |rv: u64, initial_end: bool| -> Value {
            let mut m = json!({"resourceVersion": rv.to_string()});
            if initial_end {
                m["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": m})
        };
        for (etype, obj) in initial {
            if let Some(r) = obj["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|r| r.parse::<u64>().ok())
                && etype != "ADDED"
            {
                last_rv = last_rv.max(r);
            }
            if tx.send(encode(etype, &obj, first)).await.is_err() {
                return;
            }
            first = false;
        }
        if send_initial
            && tx
                .send(encode("BOOKMARK", &bookmark(last_rv, true), false))
                .await
                .is_err()
        {
            return;
        }
        let mut rx: broadcast::Receiver<Arc<WatchEvent>> = rx;
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => {
                    if bookmarks {
                        let _ = tx.send(encode("BOOKMARK", &bookmark(last_rv, false), false)).await;
                    }
                    return;
                }
                _ = shutdown.changed() => return,
                _ = tx.closed() => return,
                _ = tick.tick() => {
                    if bookmarks && tx.send(encode("BOOKMARK", &bookmark(last_rv, false), false)).await.is_err() {
                        return;
                    }
                }
                ev = rx.recv() => match ev {
                    Ok(ev) => {
                        if ev.rv <= last_rv {
                            continue;
                        }
                        last_rv = ev.rv;
                        if ev.key != key {
                            continue;
                        }
                        if let Some((etype, obj)) = filter_event(&rt, &ev, &matches) {
                            if tx.send(encode(etype, &obj, first)).await.is_err() {
                                return;
                            }
                            first = false;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Too slow a reader: like the real watch cache, end with 410 so it relists.
                        let rv = app2.lock().resource_version();
                        let e = ApiError::gone(format!("too old resource version: {last_rv} ({rv})"));
                        let _ = tx.send(encode("ERROR", &e.to_status(), false)).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    let stream = futures_util::stream::unfold(out_rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<Bytes, Infallible>(b), rx))
    });
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    Ok(r)
}

/// What a selector-filtered watcher sees of an event.
fn filter_event(
    rt: &ResourceType,
    ev: &WatchEvent,
    matches: &impl Fn(&Value, &str) -> bool,
) -> Option<(&'static str, Value)> {
    let object = super::store::from_storage(rt, &ev.object);
    let prev = ev.prev.as_ref().map(|p| super::store::from_storage(rt, p));
    let now = matches(&object, &ev.namespace);
    let before = prev.as_ref().is_some_and(|p| matches(p, &ev.namespace));
    let etype = match ev.etype {
        "DELETED" | "ADDED" => now.then_some(ev.etype),
        _ => match (before, now) {
            (true, true) => Some("MODIFIED"),
            (false, true) => Some("ADDED"),
            (true, false) => Some("DELETED"),
            (false, false) => None,
        },
    }?;
    Some((etype, object.into_owned()))
}

#[allow(clippy::too_many_arguments)]
fn patch(
    app: &Arc<App>,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    sub: &str,
    params: &Params,
    headers: &HeaderMap,
    body: &Bytes,
) -> ApiResult<Response> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .unwrap_or_default();
    let ct = ct.split(';').next().unwrap_or_default().trim().to_string();
    let opts = write_opts(params, headers, sub)?;
    let unsupported = || {
        ApiError::unsupported_media(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml{}",
            if rt.crd.is_none() {
                ", application/strategic-merge-patch+json"
            } else {
                ""
            }
        ))
    };
    if ct == "application/apply-patch+yaml" {
        return apply(app, rt, ns, name, params, &opts, body);
    }
    let mut store = app.lock();
    let old = store.get(rt, ns, name)?;
    let mut doc = old.clone();
    match ct.as_str() {
        "application/json-patch+json" => super::patch::json_patch(&mut doc, body)?,
        "application/merge-patch+json" => super::patch::merge_patch(&mut doc, body)?,
        "application/strategic-merge-patch+json" if rt.crd.is_none() => {
            super::patch::strategic_merge_patch(&mut doc, body, &rt.kind)?
        }
        _ => return Err(unsupported()),
    }
    let w = store.replace_patched(rt, ns, name, old, doc, &opts, false)?;
    Ok(with_warnings(
        json_response(StatusCode::OK, &w.object),
        &w.warnings,
    ))
}

/// Server-side apply (`application/apply-patch+yaml`).
fn apply(
    app: &Arc<App>,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    params: &Params,
    opts: &WriteOpts,
    body: &Bytes,
) -> ApiResult<Response> {
    if params.get("fieldManager").is_none_or(|m| m.is_empty()) {
        return Err(ApiError::bad_request(
            "PATCH, application/apply-patch+yaml requires fieldManager to be set",
        ));
    }
    let force = params.get("force").is_some_and(|f| f == "true");
    let mut applied: Value = serde_yaml::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
    if !applied.is_object() {
        return Err(ApiError::bad_request("the apply configuration must be an object"));
    }
    let kind = applied["kind"].as_str().unwrap_or_default();
    let api_version = applied["apiVersion"].as_str().unwrap_or_default();
    if kind.is_empty() || api_version.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{}: the apply configuration must set apiVersion and kind",
            rt.kind
        )));
    }
    if kind != rt.kind || api_version != rt.api_version() {
        return Err(ApiError::bad_request(format!(
            "the apply configuration's {api_version}, Kind={kind} does not match the endpoint's {}, Kind={}",
            rt.api_version(),
            rt.kind
        )));
    }
    let body_name = name_of(&applied);
    if body_name.is_empty() {
        applied["metadata"]["name"] = json!(name);
    } else if body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    if let Some(m) = applied.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    let now = super::store::now();
    let mut store = app.lock();
    let live = store.get(rt, ns, name).ok();
    if live.is_none() && opts.subresource == "status" {
        return Err(ApiError::not_found(&rt.group, &rt.plural, name));
    }
    let shape = Store::shape(rt);
    let scope = Store::scope_for(rt, opts);
    let merged = fields::apply(
        live.as_ref(),
        &applied,
        shape,
        scope,
        &opts.manager,
        &opts.subresource,
        &rt.api_version(),
        force,
        &now,
    )?;
    let w = match live {
        Some(old) => store.replace_patched(rt, ns, name, old, merged, opts, true)?,
        None => store.create_applied(rt, ns, name, merged, opts)?,
    };
    let code = if w.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(with_warnings(json_response(code, &w.object), &w.warnings))
}

#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeleteOptions {
    propagation_policy: Option<String>,
    orphan_dependents: Option<bool>,
    preconditions: Option<Preconditions>,
    #[serde(default)]
    dry_run: Vec<String>,
}

#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Preconditions {
    uid: Option<String>,
    resource_version: Option<String>,
}

fn delete_options(params: &Params, body: &Bytes) -> ApiResult<DeleteOptions> {
    let mut o: DeleteOptions = if body.iter().all(|b| b.is_ascii_whitespace()) {
        DeleteOptions::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?
    };
    if let Some(p) = params.get("propagationPolicy") {
        o.propagation_policy = Some(p.clone());
    }
    if params.get("dryRun").is_some_and(|d| d == "All") {
        o.dry_run = vec!["All".into()];
    }
    if o.propagation_policy.is_none()
        && let Some(orphan) = o
            .orphan_dependents
            .or_else(|| params.get("orphanDependents").map(|v| v == "true"))
    {
        o.propagation_policy = Some(if orphan { "Orphan" } else { "Background" }.into());
    }
    Ok(o)
}

/// Kinds whose immediate deletion answers with the deleted object rather than a `Status`
/// (`ReturnDeletedObject` in the real registries).
fn returns_deleted_object(rt: &ResourceType) -> bool {
    rt.crd.is_some()
        || matches!(
            rt.kind.as_str(),
            "Pod" | "Service" | "CustomResourceDefinition" | "Namespace"
        )
}

fn delete(
    app: &Arc<App>,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    params: &Params,
    body: &Bytes,
) -> ApiResult<Response> {
    let o = delete_options(params, body)?;
    let pre = o.preconditions.unwrap_or_default();
    let outcome = app.lock().delete(
        rt,
        ns,
        name,
        o.propagation_policy.as_deref(),
        pre.uid.as_deref(),
        pre.resource_version.as_deref(),
        !o.dry_run.is_empty(),
    )?;
    Ok(match outcome {
        Deleted::Pending(obj) => json_response(StatusCode::OK, &obj),
        Deleted::Gone(obj) if returns_deleted_object(rt) => json_response(StatusCode::OK, &obj),
        Deleted::Gone(obj) => json_response(
            StatusCode::OK,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": {"name": name, "group": rt.group, "kind": rt.plural, "uid": obj["metadata"]["uid"]}}),
        ),
    })
}

fn delete_collection(
    app: &Arc<App>,
    rt: &ResourceType,
    ns: Option<&str>,
    params: &Params,
    body: &Bytes,
) -> ApiResult<Response> {
    let o = delete_options(params, body)?;
    let labels = LabelSelector::parse(
        params
            .get("labelSelector")
            .map(String::as_str)
            .unwrap_or_default(),
    )?;
    let fields_sel = FieldSelector::parse(
        params
            .get("fieldSelector")
            .map(String::as_str)
            .unwrap_or_default(),
        &rt.kind,
    )?;
    let mut store = app.lock();
    let targets: Vec<(String, String)> = store
        .list(rt, ns)
        .into_iter()
        .filter(|x| labels.matches(x) && fields_sel.matches(x))
        .map(|x| {
            (
                x["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                name_of(&x).to_string(),
            )
        })
        .collect();
    let mut items = Vec::new();
    for (ons, n) in targets {
        match store.delete(
            rt,
            &ons,
            &n,
            o.propagation_policy.as_deref(),
            None,
            None,
            !o.dry_run.is_empty(),
        ) {
            Ok(Deleted::Gone(x)) | Ok(Deleted::Pending(x)) => items.push(x),
            Err(e) if e.code == StatusCode::NOT_FOUND => {}
            Err(e) => return Err(e),
        }
    }
    let rv = store.resource_version();
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": rt.list_kind(), "apiVersion": rt.api_version(), "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
    ))
}

/// The `autoscaling/v1` Scale view of a Deployment or ReplicaSet.
fn scale_of(obj: &Value) -> Value {
    let labels = &obj["spec"]["selector"]["matchLabels"];
    let selector: Vec<String> = labels
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    let m = &obj["metadata"];
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"], "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"]},
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector.join(",")},
    })
}

/// `/scale` subresource (what `kubectl scale` and autoscalers use).
#[allow(clippy::too_many_arguments)]
fn scale(
    app: &Arc<App>,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    method: &Method,
    params: &Params,
    headers: &HeaderMap,
    body: &Bytes,
) -> ApiResult<Response> {
    let mut store = app.lock();
    let old = store.get(rt, ns, name)?;
    let current = scale_of(&old);
    let wanted = match *method {
        Method::GET => return Ok(json_response(StatusCode::OK, &current)),
        Method::PUT => parse_body(body, headers)?,
        Method::PATCH => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|c| c.to_str().ok())
                .unwrap_or_default();
            let mut doc = current.clone();
            match ct.split(';').next().unwrap_or_default().trim() {
                "application/json-patch+json" => super::patch::json_patch(&mut doc, body)?,
                "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                    super::patch::merge_patch(&mut doc, body)?
                }
                other => {
                    return Err(ApiError::unsupported_media(format!(
                        "unsupported patch type {other:?} for the scale subresource"
                    )));
                }
            }
            doc
        }
        _ => {
            return Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource",
            ));
        }
    };
    if let Some(rv) = wanted["metadata"]["resourceVersion"]
        .as_str()
        .filter(|r| !r.is_empty())
        && Some(rv) != old["metadata"]["resourceVersion"].as_str()
    {
        return Err(ApiError::conflict(
            &rt.group,
            &rt.plural,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }
    let Some(replicas) = wanted["spec"]["replicas"].as_i64().filter(|r| *r >= 0) else {
        return Err(ApiError::invalid(
            "Scale",
            "autoscaling",
            name,
            vec![super::status::Cause::invalid(
                "spec.replicas",
                &wanted["spec"]["replicas"],
                "must be greater than or equal to 0",
            )],
        ));
    };
    let mut new = old.clone();
    new["spec"]["replicas"] = json!(replicas);
    new["metadata"]
        .as_object_mut()
        .map(|m| m.remove("resourceVersion"));
    let opts = write_opts(params, headers, "")?;
    let w = store.replace_patched(rt, ns, name, old, new, &opts, false)?;
    Ok(json_response(StatusCode::OK, &scale_of(&w.object)))
}
