//! Ingress objects → one `nginx.conf`: a pure function, so routing is tested without nginx.
//!
//! Semantics follow ingress-nginx where our manifests depend on them:
//! - only Ingresses of class `nginx` (`spec.ingressClassName` or the legacy
//!   `kubernetes.io/ingress.class` annotation) are served;
//! - each host is a `server` block; rules without a host go to the default server, which also
//!   answers requests for unknown hosts (404 where no rule matches);
//! - `Prefix` paths match element-wise (`/a` matches `/a` and `/a/b`, not `/ab`), `Exact`
//!   matches the path only, `ImplementationSpecific` is a plain nginx prefix; when two
//!   Ingresses claim the same host and path the oldest wins (as in ingress-nginx);
//! - backends are the Service port's ready endpoints from EndpointSlices (the pod runtime
//!   publishes loopback addresses with each pod's own port); without endpoints, `503`;
//! - TLS hosts get an `ssl` listener with the Secret's certificate and, unless
//!   `nginx.ingress.kubernetes.io/ssl-redirect: "false"`, a 308 redirect from plain HTTP;
//! - annotations (`nginx.ingress.kubernetes.io/…`): `proxy-body-size`, `proxy-read-timeout`,
//!   `proxy-send-timeout`, `proxy-connect-timeout`, `proxy-buffering`, `rewrite-target` (the
//!   path becomes a case-insensitive regex, as `use-regex` does), `use-regex`, `enable-cors`
//!   with `cors-allow-origin|methods|headers|credentials`, `cors-max-age`. Without
//!   `enable-cors` the backend's own CORS headers pass through untouched. Other annotations
//!   are ignored, and invalid values are skipped with a warning, as ingress-nginx does.
//!
//! Every value that reaches the config is validated first, so an Ingress can never inject
//! nginx directives.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressServiceBackend};

/// The class this agent serves.
pub const CLASS: &str = "nginx";
const ANNOTATION_PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// Where nginx listens and keeps its files.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    pub http: SocketAddr,
    /// Listener for TLS hosts; without it TLS sections are ignored (with a warning).
    pub https: Option<SocketAddr>,
    /// A status server (`/healthz`, `/generation`) for the agent, separate from user traffic.
    pub status: SocketAddr,
    pub state_dir: PathBuf,
    /// `user` directive; needed when nginx runs as root so workers can use the state dir.
    pub user: Option<String>,
    /// Served at `http://<status>/generation`, so the agent knows a reload took effect.
    pub generation: u64,
}

/// Certificate and key files of a TLS Secret, written by the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Everything the config is derived from.
#[derive(Debug, Default)]
pub struct Inputs {
    pub ingresses: Vec<Ingress>,
    /// By (namespace, name).
    pub services: BTreeMap<(String, String), Service>,
    /// EndpointSlices by (namespace, service name) (`kubernetes.io/service-name` label).
    pub endpoint_slices: BTreeMap<(String, String), Vec<EndpointSlice>>,
    /// TLS files by (namespace, secret name).
    pub tls: BTreeMap<(String, String), TlsFiles>,
}

/// A rendered configuration and what was skipped on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub config: String,
    pub warnings: Vec<String>,
}

/// Is this Ingress ours?
pub fn is_nginx_class(ingress: &Ingress) -> bool {
    let by_spec = ingress
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref());
    let by_annotation = ingress
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("kubernetes.io/ingress.class"))
        .map(String::as_str);
    by_spec.or(by_annotation) == Some(CLASS)
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Match {
    Exact(String),
    /// Element-wise prefix, normalised without trailing slash (`""` is the root).
    Prefix(String),
    /// Plain nginx prefix.
    Raw(String),
    /// Case-insensitive regex anchored at the start.
    Regex(String),
}

#[derive(Debug, Clone)]
struct Route {
    matcher: Match,
    /// Upstream name, or None for "no endpoints" (503).
    upstream: Option<String>,
    settings: Settings,
    source: String,
}

#[derive(Debug, Clone, Default)]
struct Settings {
    body_size: Option<String>,
    read_timeout: Option<String>,
    send_timeout: Option<String>,
    connect_timeout: Option<String>,
    buffering: Option<bool>,
    rewrite_target: Option<String>,
    cors: Option<Cors>,
}

#[derive(Debug, Clone)]
struct Cors {
    origin: String,
    methods: String,
    headers: String,
    credentials: bool,
    max_age: u32,
}

#[derive(Debug, Default)]
struct Host {
    routes: BTreeMap<Match, Route>,
    tls: Option<TlsFiles>,
    ssl_redirect: bool,
}

/// Renders the nginx configuration for all Ingresses of class `nginx` in `inputs`.
pub fn render(inputs: &Inputs, opts: &RenderOptions) -> Rendered {
    let mut warnings = Vec::new();
    let mut upstreams: BTreeMap<String, BTreeSet<SocketAddr>> = BTreeMap::new();
    // "" is the default server.
    let mut hosts: BTreeMap<String, Host> = BTreeMap::new();
    hosts.insert(String::new(), Host::default());

    let mut ingresses: Vec<&Ingress> = inputs.ingresses.iter().filter(|i| is_nginx_class(i)).collect();
    // Oldest first, so the oldest claim on a host+path wins.
    ingresses.sort_by(|a, b| {
        let key = |i: &Ingress| {
            (
                i.metadata.creation_timestamp.as_ref().map(|t| t.0),
                i.metadata.namespace.clone(),
                i.metadata.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });

    for ingress in ingresses {
        let ns = ingress
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = ingress.metadata.name.clone().unwrap_or_default();
        let source = format!("{ns}/{name}");
        let Some(spec) = &ingress.spec else { continue };
        let annotations = ingress.metadata.annotations.clone().unwrap_or_default();
        let settings = settings(&annotations, &source, &mut warnings);
        let use_regex = settings.rewrite_target.is_some()
            || annotations
                .get(&format!("{ANNOTATION_PREFIX}use-regex"))
                .map(String::as_str)
                == Some("true");
        let ssl_redirect = annotations
            .get(&format!("{ANNOTATION_PREFIX}ssl-redirect"))
            .map(String::as_str)
            != Some("false");

        // TLS sections: host → files.
        let mut tls_hosts: BTreeMap<String, TlsFiles> = BTreeMap::new();
        for tls in spec.tls.iter().flatten() {
            let Some(secret) = &tls.secret_name else { continue };
            let Some(files) = inputs.tls.get(&(ns.clone(), secret.clone())) else {
                warnings.push(format!(
                    "{source}: TLS secret {secret:?} not found or not a TLS secret"
                ));
                continue;
            };
            if opts.https.is_none() {
                warnings.push(format!("{source}: TLS ignored, no https listener"));
                continue;
            }
            for host in tls.hosts.iter().flatten() {
                tls_hosts.insert(host.clone(), files.clone());
            }
        }

        let mut add = |host: &str,
                       matcher: Match,
                       backend: Option<&IngressServiceBackend>,
                       warnings: &mut Vec<String>| {
            if !host.is_empty() && !valid_host(host) {
                warnings.push(format!("{source}: invalid host {host:?} skipped"));
                return;
            }
            let upstream = match backend {
                Some(b) => resolve_backend(inputs, &ns, b, &mut upstreams, &source, warnings),
                None => {
                    warnings.push(format!("{source}: only service backends are supported"));
                    None
                }
            };
            let entry = hosts.entry(host.to_string()).or_default();
            if let Some(files) = tls_hosts.get(host) {
                entry.tls = Some(files.clone());
                entry.ssl_redirect = ssl_redirect;
            }
            if let Some(existing) = entry.routes.get(&matcher) {
                warnings.push(format!(
                    "{source}: host {host:?} path {matcher:?} already served by {}",
                    existing.source
                ));
                return;
            }
            entry.routes.insert(
                matcher.clone(),
                Route {
                    matcher,
                    upstream,
                    settings: settings.clone(),
                    source: source.clone(),
                },
            );
        };

        if let Some(default) = &spec.default_backend {
            add(
                "",
                Match::Prefix(String::new()),
                default.service.as_ref(),
                &mut warnings,
            );
        }
        for rule in spec.rules.iter().flatten() {
            let host = rule.host.clone().unwrap_or_default();
            for path in rule.http.iter().flat_map(|h| &h.paths) {
                let raw = path.path.clone().unwrap_or_else(|| "/".into());
                if !valid_path(&raw, use_regex) {
                    warnings.push(format!("{source}: invalid path {raw:?} skipped"));
                    continue;
                }
                let matcher = if use_regex {
                    Match::Regex(raw)
                } else {
                    match path.path_type.as_str() {
                        "Exact" => Match::Exact(raw),
                        "Prefix" => Match::Prefix(raw.trim_end_matches('/').to_string()),
                        _ => Match::Raw(raw),
                    }
                };
                add(&host, matcher, path.backend.service.as_ref(), &mut warnings);
            }
        }
    }

    Rendered {
        config: write_config(&hosts, &upstreams, opts),
        warnings,
    }
}

fn resolve_backend(
    inputs: &Inputs,
    ns: &str,
    backend: &IngressServiceBackend,
    upstreams: &mut BTreeMap<String, BTreeSet<SocketAddr>>,
    source: &str,
    warnings: &mut Vec<String>,
) -> Option<String> {
    let key = (ns.to_string(), backend.name.clone());
    let Some(service) = inputs.services.get(&key) else {
        warnings.push(format!("{source}: service {:?} not found", backend.name));
        return None;
    };
    let wanted = backend.port.as_ref();
    let port = service
        .spec
        .as_ref()?
        .ports
        .iter()
        .flatten()
        .find(|p| match wanted {
            Some(w) if w.name.is_some() => p.name == w.name,
            Some(w) => Some(p.port) == w.number,
            None => true,
        });
    let Some(port) = port else {
        warnings.push(format!(
            "{source}: service {:?} has no port {wanted:?}",
            backend.name
        ));
        return None;
    };
    let mut addrs = BTreeSet::new();
    for slice in inputs.endpoint_slices.get(&key).into_iter().flatten() {
        let Some(slice_port) = slice
            .ports
            .iter()
            .flatten()
            .find(|sp| sp.name.as_deref().unwrap_or("") == port.name.as_deref().unwrap_or(""))
        else {
            continue;
        };
        let Some(number) = slice_port.port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            if endpoint.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for address in &endpoint.addresses {
                if let Ok(ip) = address.parse() {
                    addrs.insert(SocketAddr::new(ip, number));
                }
            }
        }
    }
    if addrs.is_empty() {
        return None;
    }
    let name = format!(
        "{}-{}-{}",
        ns,
        backend.name,
        port.name.clone().unwrap_or_else(|| port.port.to_string())
    );
    upstreams.insert(name.clone(), addrs);
    Some(name)
}

fn settings(annotations: &BTreeMap<String, String>, source: &str, warnings: &mut Vec<String>) -> Settings {
    let get = |key: &str| {
        annotations
            .get(&format!("{ANNOTATION_PREFIX}{key}"))
            .map(String::as_str)
    };
    let mut checked = |key: &str, ok: fn(&str) -> bool| -> Option<String> {
        let value = get(key)?;
        if ok(value) {
            Some(value.to_string())
        } else {
            warnings.push(format!("{source}: invalid {key} {value:?} ignored"));
            None
        }
    };
    let size = |v: &str| {
        let digits = v.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G']);
        !digits.is_empty() && digits.len() + 1 >= v.len() && digits.bytes().all(|b| b.is_ascii_digit())
    };
    let seconds = |v: &str| !v.is_empty() && v.len() <= 6 && v.bytes().all(|b| b.is_ascii_digit());
    let header_list = |v: &str| {
        !v.is_empty()
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b" ,-_*".contains(&b))
    };
    let origin = |v: &str| {
        !v.is_empty()
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b":/.-_*, ".contains(&b))
    };
    let mut s = Settings {
        body_size: checked("proxy-body-size", size),
        read_timeout: checked("proxy-read-timeout", seconds).map(|v| format!("{v}s")),
        send_timeout: checked("proxy-send-timeout", seconds).map(|v| format!("{v}s")),
        connect_timeout: checked("proxy-connect-timeout", seconds).map(|v| format!("{v}s")),
        buffering: checked("proxy-buffering", |v| v == "on" || v == "off").map(|v| v == "on"),
        rewrite_target: checked("rewrite-target", |v| {
            v.starts_with('/')
                && v.bytes()
                    .all(|b| b.is_ascii_graphic() && !b"\"'{};\\".contains(&b))
        }),
        cors: None,
    };
    if get("enable-cors") == Some("true") {
        s.cors = Some(Cors {
            origin: checked("cors-allow-origin", origin).unwrap_or_else(|| "*".into()),
            methods: checked("cors-allow-methods", header_list)
                .unwrap_or_else(|| "GET, PUT, POST, DELETE, PATCH, OPTIONS".into()),
            headers: checked("cors-allow-headers", header_list).unwrap_or_else(|| {
                "DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,Authorization"
                    .into()
            }),
            credentials: get("cors-allow-credentials") != Some("false"),
            max_age: checked("cors-max-age", seconds)
                .and_then(|v| v.parse().ok())
                .unwrap_or(1728000),
        });
    }
    s
}

fn valid_host(host: &str) -> bool {
    let host = host.strip_prefix("*.").unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn valid_path(path: &str, regex: bool) -> bool {
    path.starts_with('/')
        && path.bytes().all(|b| {
            b.is_ascii_graphic() && !b"\"'{};\\#".contains(&b) && (regex || !b"()|$^?*+[]".contains(&b))
        })
}

fn write_config(
    hosts: &BTreeMap<String, Host>,
    upstreams: &BTreeMap<String, BTreeSet<SocketAddr>>,
    opts: &RenderOptions,
) -> String {
    let state = &opts.state_dir;
    let p = |name: &str| state.join(name).display().to_string();
    let mut c = String::new();
    // `writeln!` into a String cannot fail.
    macro_rules! w { ($($t:tt)*) => { let _ = writeln!(c, $($t)*); } }
    w!(
        "# Rendered by cloudify-e2e's ingress agent; generation {}.",
        opts.generation
    );
    if let Some(user) = &opts.user {
        w!("user {user};");
    }
    w!("daemon off;");
    w!("worker_processes 1;");
    w!("pid {};", p("nginx.pid"));
    w!("lock_file {};", p("nginx.lock"));
    w!("error_log {} notice;", p("error.log"));
    w!("events {{ worker_connections 1024; }}");
    w!("http {{");
    for (dir, name) in [
        ("client_body_temp_path", "client_body"),
        ("proxy_temp_path", "proxy"),
        ("fastcgi_temp_path", "fastcgi"),
        ("uwsgi_temp_path", "uwsgi"),
        ("scgi_temp_path", "scgi"),
    ] {
        w!("  {dir} {};", p(&format!("temp/{name}")));
    }
    w!("  access_log {} combined;", p("access.log"));
    w!("  default_type application/octet-stream;");
    w!("  server_names_hash_bucket_size 128;");
    // No client keep-alive: on reload old workers close idle keep-alive connections, racing a
    // client that reuses one (a failed request real ingress-nginx also produces). Tests must
    // see no failed request across reloads, and loopback connects are cheap.
    w!("  keepalive_timeout 0;");
    // ingress-nginx defaults.
    w!("  client_max_body_size 1m;");
    w!("  proxy_connect_timeout 5s;");
    w!("  proxy_read_timeout 60s;");
    w!("  proxy_send_timeout 60s;");
    w!("  proxy_http_version 1.1;");
    w!("  proxy_next_upstream error timeout;");
    w!("  proxy_next_upstream_tries 3;");
    w!("  proxy_set_header Connection \"\";");
    w!("  proxy_set_header Host $host;");
    w!("  proxy_set_header X-Real-IP $remote_addr;");
    w!("  proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;");
    w!("  proxy_set_header X-Forwarded-Host $host;");
    w!("  proxy_set_header X-Forwarded-Port $server_port;");
    w!("  proxy_set_header X-Forwarded-Proto $scheme;");
    for (name, addrs) in upstreams {
        w!("  upstream {} {{", upstream_ident(name));
        for addr in addrs {
            // max_fails=0: a killed pod is skipped per request (proxy_next_upstream), never
            // blacklisted for 10 s, so a replacement on the same port is used at once.
            w!("    server {addr} max_fails=0;");
        }
        w!("    keepalive 16;");
        w!("  }}");
    }
    w!("  server {{");
    w!("    listen {};", opts.status);
    w!("    location = /healthz {{ return 200 \"ok\\n\"; }}");
    w!(
        "    location = /generation {{ return 200 \"{}\\n\"; }}",
        opts.generation
    );
    w!("    location / {{ return 404; }}");
    w!("  }}");
    for (name, host) in hosts {
        let tls = host.tls.as_ref().zip(opts.https);
        // A TLS host redirecting to HTTPS gets its own plain-HTTP server with the redirect
        // in a location: a server-level `return` keeps the connection alive despite
        // `keepalive_timeout 0` (nginx sends `Connection: keep-alive`, then closes).
        let redirect = tls.is_some() && host.ssl_redirect && !name.is_empty();
        if let (true, Some((_, https))) = (redirect, tls) {
            w!("  server {{");
            w!("    listen {};", opts.http);
            w!("    server_name {name};");
            w!(
                "    location / {{ return 308 https://$host:{}$request_uri; }}",
                https.port()
            );
            w!("  }}");
        }
        w!("  server {{");
        if name.is_empty() {
            w!("    listen {} default_server;", opts.http);
            w!("    server_name _;");
        } else {
            if !redirect {
                w!("    listen {};", opts.http);
            }
            w!("    server_name {name};");
        }
        if let Some((files, https)) = tls {
            w!("    listen {https} ssl;");
            w!("    ssl_certificate {};", files.cert.display());
            w!("    ssl_certificate_key {};", files.key.display());
        }
        // Unknown hosts on the TLS port get the first TLS host's certificate (nginx's rule),
        // as ingress-nginx's default server gets its fake certificate.
        for route in host.routes.values() {
            write_route(&mut c, route);
        }
        if !host.routes.contains_key(&Match::Prefix(String::new())) {
            w!("    location / {{ return 404; }}");
        }
        w!("  }}");
    }
    w!("}}");
    c
}

fn upstream_ident(name: &str) -> String {
    name.chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || ch == '-' || ch == '_' {
                ch
            } else {
                '_'
            }
        })
        .collect()
}

fn write_route(c: &mut String, route: &Route) {
    let locations: Vec<String> = match &route.matcher {
        Match::Exact(p) => vec![format!("= {p}")],
        Match::Prefix(p) if p.is_empty() => vec!["/".into()],
        Match::Prefix(p) => vec![format!("= {p}"), format!("{p}/")],
        Match::Raw(p) => vec![p.clone()],
        Match::Regex(p) => vec![format!("~* \"^{p}\"")],
    };
    for location in locations {
        let _ = writeln!(c, "    # {}", route.source);
        let _ = writeln!(c, "    location {location} {{");
        write_location_body(c, route);
        let _ = writeln!(c, "    }}");
    }
}

fn write_location_body(c: &mut String, route: &Route) {
    macro_rules! w { ($($t:tt)*) => { let _ = writeln!(c, $($t)*); } }
    let s = &route.settings;
    if let Some(v) = &s.body_size {
        w!("      client_max_body_size {v};");
    }
    if let Some(v) = &s.read_timeout {
        w!("      proxy_read_timeout {v};");
    }
    if let Some(v) = &s.send_timeout {
        w!("      proxy_send_timeout {v};");
    }
    if let Some(v) = &s.connect_timeout {
        w!("      proxy_connect_timeout {v};");
    }
    if let Some(v) = s.buffering {
        w!("      proxy_buffering {};", if v { "on" } else { "off" });
    }
    if let Some(cors) = &s.cors {
        let credentials = if cors.credentials { "true" } else { "false" };
        w!("      if ($request_method = OPTIONS) {{");
        w!(
            "        add_header Access-Control-Allow-Origin \"{}\";",
            cors.origin
        );
        w!(
            "        add_header Access-Control-Allow-Methods \"{}\";",
            cors.methods
        );
        w!(
            "        add_header Access-Control-Allow-Headers \"{}\";",
            cors.headers
        );
        w!("        add_header Access-Control-Allow-Credentials {credentials};");
        w!("        add_header Access-Control-Max-Age {};", cors.max_age);
        w!("        add_header Content-Type \"text/plain; charset=utf-8\";");
        w!("        add_header Content-Length 0;");
        w!("        return 204;");
        w!("      }}");
        // Ours replace the backend's, so a client never sees two Allow-Origin headers.
        w!("      proxy_hide_header Access-Control-Allow-Origin;");
        w!("      proxy_hide_header Access-Control-Allow-Credentials;");
        w!(
            "      add_header Access-Control-Allow-Origin \"{}\" always;",
            cors.origin
        );
        w!("      add_header Access-Control-Allow-Credentials {credentials} always;");
    }
    if let (Some(target), Match::Regex(p)) = (&s.rewrite_target, &route.matcher) {
        w!("      rewrite \"(?i){p}\" {target} break;");
    }
    match &route.upstream {
        Some(u) => {
            w!("      proxy_pass http://{};", upstream_ident(u));
        }
        None => {
            w!("      return 503;");
        }
    }
}

/// The path under the state dir where a TLS Secret's files go.
pub fn tls_paths(state_dir: &Path, namespace: &str, secret: &str) -> TlsFiles {
    let dir = state_dir.join("tls").join(format!("{namespace}_{secret}"));
    TlsFiles {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    }
}

#[cfg(test)]
mod tests;
