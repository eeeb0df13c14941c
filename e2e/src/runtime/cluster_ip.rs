//! Service addresses for pods: the stand-in for cluster DNS + kube-proxy as a *pod* sees them.
//!
//! A pod that names another Service in its args or env (the operator gives the dataset
//! server `--compute http://<name>-compute.<ns>.svc:9000`) cannot resolve that name here:
//! there is no cluster DNS and no Service IP. So, when a pod is started, every URL whose host
//! is a Service's DNS name (`<service>.<namespace>.svc` or `….svc.cluster.local`) gets the
//! authority `127.0.0.1:<port>` of a loopback listener that plays that Service's cluster
//! IP and port, as kube-proxy does: each **TCP connection** accepted there is forwarded to
//! one ready endpoint of the Service port (round robin over the runtime's EndpointSlices at
//! connect time), bytes copied both ways. Like kube-proxy it balances connections, not
//! requests, so a client that keeps a connection open keeps its pod; an endpoint added by a
//! scale-up gets only new connections. A connection with no ready endpoint, or whose
//! endpoint refuses, is reset (a real cluster: REJECT / connection refused); there is no
//! retry on another endpoint, as with iptables kube-proxy.
//!
//! Differences from a cluster, on purpose: the rewrite is textual (args and env values,
//! not files), only full Service names (not the short `<service>` or `<service>.<ns>`
//! forms a pod's DNS search path also resolves), and `https://` URLs keep their scheme but
//! get the loopback address (no certificate would match it).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{ObjectRef, Store};

/// Why a Service port has no endpoints to offer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("service {0}/{1} not found")]
    NoService(String, String),
    #[error("service {0}/{1} has no port {2}")]
    NoPort(String, String, String),
}

/// The loopback ports of the ready endpoints of Service `ns/svc`'s port `port` (its number
/// or name), from the runtime's EndpointSlices (one per pod). Empty: none ready.
pub(crate) fn ready_endpoint_ports(
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
    ns: &str,
    svc: &str,
    port: &str,
) -> Result<Vec<u16>, LookupError> {
    let Some(service) = services.get(&ObjectRef::new(svc).within(ns)) else {
        return Err(LookupError::NoService(ns.into(), svc.into()));
    };
    let service_port = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .find(|p| p.port.to_string() == port || p.name.as_deref() == Some(port))
        .cloned()
        .ok_or_else(|| LookupError::NoPort(ns.into(), svc.into(), port.into()))?;
    let mut targets = Vec::new();
    for slice in slices.state() {
        let ours = slice.metadata.namespace.as_deref() == Some(ns)
            && slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"))
                .map(String::as_str)
                == Some(svc);
        if !ours {
            continue;
        }
        let Some(p) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or("") == service_port.name.as_deref().unwrap_or(""))
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        if slice
            .endpoints
            .iter()
            .any(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        {
            targets.push(p);
        }
    }
    targets.sort_unstable();
    Ok(targets)
}

/// The Service address table of one runtime: `(namespace, service, port)` → the loopback
/// port standing for its cluster IP and port, each served by a forwarding task.
#[derive(Clone)]
pub struct ClusterIps {
    inner: Arc<Inner>,
}

struct Inner {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    listeners: Mutex<BTreeMap<(String, String, u16), u16>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    next: AtomicUsize,
}

impl ClusterIps {
    /// A table over the runtime's stores (no listener until a pod names a Service).
    pub fn new(services: Store<Service>, slices: Store<EndpointSlice>) -> Self {
        Self {
            inner: Arc::new(Inner {
                services,
                slices,
                listeners: Mutex::new(BTreeMap::new()),
                tasks: Mutex::new(Vec::new()),
                next: AtomicUsize::new(0),
            }),
        }
    }

    /// The loopback port that stands for `service.namespace.svc:port`, listening from the
    /// first call on (the Service need not exist yet: it is looked up per connection, as
    /// a pod started before its Service resolves the name later). Must be called within a
    /// tokio runtime.
    pub fn address(&self, namespace: &str, service: &str, port: u16) -> std::io::Result<u16> {
        let key = (namespace.to_string(), service.to_string(), port);
        let mut listeners = self
            .inner
            .listeners
            .lock()
            .map_err(|_| std::io::Error::other("cluster IP table poisoned"))?;
        if let Some(p) = listeners.get(&key) {
            return Ok(*p);
        }
        let std_listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        std_listener.set_nonblocking(true)?;
        let local = std_listener.local_addr()?.port();
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let inner = self.inner.clone();
        let task = tokio::spawn(accept_loop(inner, listener, key.clone()));
        if let Ok(mut t) = self.inner.tasks.lock() {
            t.push(task);
        }
        tracing::info!(namespace, service, port, local, "service address for pods");
        listeners.insert(key, local);
        Ok(local)
    }

    /// `value` with every Service DNS name in a URL replaced by its loopback address.
    pub fn rewrite(&self, value: &str) -> String {
        rewrite_service_urls(value, |ns, svc, port| match self.address(ns, svc, port) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!("no local address for service {ns}/{svc}:{port}: {e}");
                None
            }
        })
    }

    /// Stops every forwarding task (open connections end with them).
    pub fn shutdown(&self) {
        if let Ok(mut t) = self.inner.tasks.lock() {
            t.drain(..).for_each(|h| h.abort());
        }
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: tokio::net::TcpListener, key: (String, String, u16)) {
    let (ns, svc, port) = key;
    loop {
        let mut client = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("service address {ns}/{svc}:{port}: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let target = match ready_endpoint_ports(&inner.services, &inner.slices, &ns, &svc, &port.to_string())
        {
            Ok(t) if !t.is_empty() => Some(t[inner.next.fetch_add(1, Ordering::Relaxed) % t.len()]),
            Ok(_) => {
                tracing::debug!("{ns}/{svc}:{port}: no ready endpoints, connection reset");
                None
            }
            Err(e) => {
                tracing::debug!("{e}, connection reset");
                None
            }
        };
        let Some(target) = target else {
            // a reset, not a quiet close: the client sees what a cluster's REJECT gives it
            let _ = client.set_zero_linger();
            drop(client);
            continue;
        };
        tokio::spawn(async move {
            match tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, target)).await {
                Ok(mut upstream) => {
                    let _ = client.set_nodelay(true);
                    let _ = upstream.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
                Err(e) => {
                    tracing::debug!("endpoint 127.0.0.1:{target}: {e}, connection reset");
                    let _ = client.set_zero_linger();
                }
            }
        });
    }
}

/// Replaces the authority of every `http://` or `https://` URL in `value` whose host is a
/// Service DNS name (`<service>.<namespace>.svc[.cluster.local][.]`) by
/// `127.0.0.1:<resolve(namespace, service, port)>`; the port defaults to the scheme's. Other
/// text (paths, several URLs separated by commas, `--flag=` prefixes) is kept, and so is a
/// URL `resolve` has no address for.
pub fn rewrite_service_urls(value: &str, mut resolve: impl FnMut(&str, &str, u16) -> Option<u16>) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find("://") {
        let scheme_start = rest[..i]
            .rfind(|c: char| !c.is_ascii_alphanumeric() && c != '+' && c != '-' && c != '.')
            .map_or(0, |j| j + 1);
        let scheme = rest[scheme_start..i].to_ascii_lowercase();
        let after = &rest[i + 3..];
        let end = after
            .find(|c: char| matches!(c, '/' | '?' | '#' | ',' | ';' | '"' | '\'') || c.is_whitespace())
            .unwrap_or(after.len());
        let authority = &after[..end];
        out.push_str(&rest[..i + 3]);
        let default_port = match scheme.as_str() {
            "http" => Some(80),
            "https" => Some(443),
            _ => None,
        };
        let replaced = default_port
            .and_then(|d| service_host(authority, d))
            .and_then(|(ns, svc, port)| resolve(&ns, &svc, port));
        match replaced {
            Some(local) => out.push_str(&format!("127.0.0.1:{local}")),
            None => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// `(namespace, service, port)` of an authority naming a Service, else None.
fn service_host(authority: &str, default_port: u16) -> Option<(String, String, u16)> {
    if authority.contains('@') || authority.starts_with('[') {
        return None;
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().ok()?),
        None => (authority, default_port),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let base = host
        .strip_suffix(".svc.cluster.local")
        .or_else(|| host.strip_suffix(".svc"))?;
    let (svc, ns) = base.split_once('.')?;
    let label = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    (label(svc) && label(ns)).then(|| (ns.to_string(), svc.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(ns: &str, svc: &str, port: u16) -> Option<u16> {
        (svc != "unknown").then(|| 40000 + port % 1000 + if ns == "b" { 1 } else { 0 })
    }

    #[test]
    fn service_urls_are_rewritten_and_nothing_else() {
        assert_eq!(
            rewrite_service_urls("http://ds-compute.climate.svc:9000", fake),
            "http://127.0.0.1:40000"
        );
        assert_eq!(
            rewrite_service_urls(
                "--compute=http://w.a.svc.cluster.local:9000/x,https://w.b.svc/y",
                fake
            ),
            "--compute=http://127.0.0.1:40000/x,https://127.0.0.1:40444/y"
        );
        assert_eq!(
            rewrite_service_urls("http://w.a.svc.:8080?q", fake),
            "http://127.0.0.1:40080?q"
        );
        for kept in [
            "http://example.org:9000/a",
            "http://w.a.svc:notaport",
            "http://user@w.a.svc:9000",
            "http://unknown.a.svc:9000",
            "s3://bucket.a.svc/key",
            "http://w.svc:9000",
            "http://[::1]:9000",
            "plain text w.a.svc:9000",
            "",
        ] {
            assert_eq!(rewrite_service_urls(kept, fake), kept);
        }
        assert_eq!(
            rewrite_service_urls("a http://x.a.svc:1 b http://x.a.svc:2", fake),
            "a http://127.0.0.1:40001 b http://127.0.0.1:40002"
        );
        assert_eq!(
            rewrite_service_urls("HTTP://W.A.SVC:9000", fake),
            "HTTP://127.0.0.1:40000"
        );
    }
}
