//! The ingress agent's loop: watch Ingresses, Services, EndpointSlices and Secrets through the
//! API (kube-rs reflectors, like ingress-nginx's controller), render, reload nginx when the
//! config changed, and report `status.loadBalancer` on the Ingresses it serves.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{
    Ingress, IngressLoadBalancerIngress, IngressLoadBalancerStatus, IngressPortStatus, IngressStatus,
};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::{Client, ResourceExt};
use tokio::sync::Notify;

use super::nginx::{Nginx, NginxError};
use super::render::{Inputs, RenderOptions, TlsFiles, is_nginx_class, render, tls_paths};
use crate::runtime::controller::reflect;

/// Agent settings.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The nginx binary (`/usr/sbin/nginx` from the Debian package).
    pub nginx: PathBuf,
    /// nginx's prefix: config, pid, logs, temp files, TLS files.
    pub state_dir: PathBuf,
    pub http: SocketAddr,
    pub https: Option<SocketAddr>,
    /// nginx's status listener (`/healthz`, `/generation`).
    pub status: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Nginx(#[from] NginxError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

struct Stores {
    ingresses: Store<Ingress>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    secrets: Store<Secret>,
}

impl Stores {
    /// Render inputs; TLS Secrets of our Ingresses are (re)written to files on the way.
    fn inputs(&self, state_dir: &std::path::Path) -> Result<Inputs, AgentError> {
        let ingresses: Vec<Ingress> = self
            .ingresses
            .state()
            .iter()
            .filter(|i| is_nginx_class(i))
            .map(|i| (**i).clone())
            .collect();
        let key = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            (
                m.namespace.clone().unwrap_or_default(),
                m.name.clone().unwrap_or_default(),
            )
        };
        let services = self
            .services
            .state()
            .iter()
            .map(|s| (key(&s.metadata), (**s).clone()))
            .collect();
        let mut endpoint_slices: BTreeMap<(String, String), Vec<EndpointSlice>> = BTreeMap::new();
        for slice in self.slices.state() {
            if let Some(service) = slice.labels().get("kubernetes.io/service-name") {
                endpoint_slices
                    .entry((slice.namespace().unwrap_or_default(), service.clone()))
                    .or_default()
                    .push((*slice).clone());
            }
        }
        let mut tls = BTreeMap::new();
        for ingress in &ingresses {
            let ns = ingress.namespace().unwrap_or_default();
            for entry in ingress.spec.iter().flat_map(|s| s.tls.iter().flatten()) {
                let Some(name) = &entry.secret_name else { continue };
                let Some(secret) = self.secrets.get(&reflector::ObjectRef::new(name).within(&ns)) else {
                    continue;
                };
                let data = secret.data.clone().unwrap_or_default();
                let (Some(cert), Some(key)) = (data.get("tls.crt"), data.get("tls.key")) else {
                    continue;
                };
                let files = tls_paths(state_dir, &ns, name);
                write_if_changed(&files, &cert.0, &key.0)?;
                tls.insert((ns.clone(), name.clone()), files);
            }
        }
        Ok(Inputs {
            ingresses,
            services,
            endpoint_slices,
            tls,
        })
    }
}

fn write_if_changed(files: &TlsFiles, cert: &[u8], key: &[u8]) -> Result<(), AgentError> {
    use std::os::unix::fs::PermissionsExt;
    for (path, contents, mode) in [(&files.cert, cert, 0o644), (&files.key, key, 0o600)] {
        if std::fs::read(path).ok().as_deref() == Some(contents) {
            continue;
        }
        let io = |source| AgentError::Io {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, contents).map_err(io)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
    }
    Ok(())
}

/// Runs the agent (and its nginx) until `shutdown` resolves.
pub async fn run(
    client: Client,
    opts: AgentOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    std::fs::create_dir_all(&opts.state_dir).map_err(|source| AgentError::Io {
        path: opts.state_dir.clone(),
        source,
    })?;
    let notify = Arc::new(Notify::new());
    let mut tasks = Vec::new();
    let stores = Stores {
        ingresses: reflect(Api::all(client.clone()), notify.clone(), &mut tasks),
        services: reflect(Api::all(client.clone()), notify.clone(), &mut tasks),
        slices: reflect(Api::all(client.clone()), notify.clone(), &mut tasks),
        secrets: reflect(Api::all(client.clone()), notify.clone(), &mut tasks),
    };
    let _ = stores.ingresses.wait_until_ready().await;
    let _ = stores.services.wait_until_ready().await;
    let _ = stores.slices.wait_until_ready().await;
    let _ = stores.secrets.wait_until_ready().await;

    let mut render_opts = RenderOptions {
        http: opts.http,
        https: opts.https,
        status: opts.status,
        state_dir: opts.state_dir.clone(),
        user: rustix::process::geteuid().is_root().then(|| "root".to_string()),
        generation: 1,
    };
    let inputs = stores.inputs(&opts.state_dir)?;
    let first = render(&inputs, &render_opts);
    for w in &first.warnings {
        tracing::warn!("{w}");
    }
    let mut nginx = Nginx::start(&opts.nginx, &opts.state_dir, &first.config, opts.status, 1).await?;
    tracing::info!(http = %opts.http, "ingress nginx serving");
    let mut last_config = first.config;
    let mut last_warnings = first.warnings;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        match stores.inputs(&opts.state_dir) {
            Err(e) => tracing::warn!("ingress inputs: {e}"),
            Ok(inputs) => {
                let rendered = render(&inputs, &render_opts);
                if rendered.config != last_config {
                    let mut next = render_opts.clone();
                    next.generation += 1;
                    let rendered = render(&inputs, &next);
                    if rendered.warnings != last_warnings {
                        for w in &rendered.warnings {
                            tracing::warn!("{w}");
                        }
                    }
                    match nginx.reload(&rendered.config, next.generation).await {
                        Ok(()) => {
                            tracing::info!(generation = next.generation, "nginx reloaded");
                            render_opts = next;
                            last_config = render(&inputs, &render_opts).config;
                            last_warnings = rendered.warnings;
                        }
                        // Keep serving the last good config; a later change may fix it.
                        Err(e) => tracing::error!("nginx reload: {e}"),
                    }
                }
                update_status(&client, &inputs.ingresses, &opts).await;
            }
        }
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = &mut shutdown => break,
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    nginx.stop().await;
    tasks.iter().for_each(|t| t.abort());
    Ok(())
}

/// `status.loadBalancer.ingress: [{ip: 127.0.0.1, ports: [http (, https)]}]`, as a cloud load
/// balancer would report, with the ports because they are not 80/443 here.
async fn update_status(client: &Client, ingresses: &[Ingress], opts: &AgentOptions) {
    let mut ports = vec![IngressPortStatus {
        port: i32::from(opts.http.port()),
        protocol: "TCP".into(),
        error: None,
    }];
    if let Some(https) = opts.https {
        ports.push(IngressPortStatus {
            port: i32::from(https.port()),
            protocol: "TCP".into(),
            error: None,
        });
    }
    let wanted = IngressStatus {
        load_balancer: Some(IngressLoadBalancerStatus {
            ingress: Some(vec![IngressLoadBalancerIngress {
                ip: Some(opts.http.ip().to_string()),
                ports: Some(ports),
                ..IngressLoadBalancerIngress::default()
            }]),
        }),
    };
    for ingress in ingresses {
        if ingress.status.as_ref() == Some(&wanted) || ingress.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let api: Api<Ingress> = Api::namespaced(client.clone(), &ingress.namespace().unwrap_or_default());
        if let Err(e) = api
            .patch_status(
                &ingress.name_any(),
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"status": wanted})),
            )
            .await
        {
            tracing::warn!(ingress = %ingress.name_any(), "status update: {e}");
        }
    }
}
