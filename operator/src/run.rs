//! `cloudify-operator run`: the controller process.
//!
//! Connects with `KUBECONFIG` or the in-cluster service account, refuses to start without the
//! CRD (a clear message beats a controller silently watching nothing), serves probes and
//! metrics, and — with leader election, the default — reconciles only while it holds the
//! `coordination.k8s.io` Lease, so several replicas can run for fast failover without two of
//! them writing the same objects. SIGTERM or Ctrl-C stops it gracefully: reconciles in flight
//! finish, the lease is released for the next replica.
//!
//! RBAC it needs: [`crate::rbac::operator_rules`] (a ClusterRole, or a Role in `--namespace`
//! when one is given) and [`crate::rbac::lease_rules`] (a Role in the lease namespace), the
//! rules the Helm chart grants.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use kube::api::{DynamicObject, ListParams};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

use crate::MANAGER;
use crate::build::{DEFAULT_IMAGE, OWNED, Settings};
use crate::controller::{
    self, Config, Context, DEFAULT_CATALOG_URL, DEFAULT_SERVER_URL_TEMPLATE, api_resource, error_policy,
    reconcile,
};
use crate::metrics::Metrics;
use crate::probes::{self, Probes};

/// Name of the CRD, for the start-up check.
pub const CRD_NAME: &str = "cloudifydatasets.cloudify.io";

/// Flags of `cloudify-operator run` (each also from the environment, for the Helm chart).
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Namespace to watch. Default: all namespaces.
    #[arg(long, env = "CLOUDIFY_OPERATOR_NAMESPACE", value_name = "NS")]
    pub namespace: Option<String>,
    /// Server image for CRs that name none.
    #[arg(long, env = "CLOUDIFY_OPERATOR_IMAGE", value_name = "IMG", default_value = DEFAULT_IMAGE)]
    pub image: String,
    /// Public base URL for CRs without spec.publicUrl or an ingress host.
    #[arg(long, env = "CLOUDIFY_OPERATOR_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
    /// STAC API (Transactions) for CRs without spec.catalog.url.
    #[arg(long, env = "CLOUDIFY_OPERATOR_CATALOG_URL", value_name = "URL", default_value = DEFAULT_CATALOG_URL)]
    pub catalog_url: String,
    /// File with the bearer token for --catalog-url (first line). Only ever sent to that URL.
    #[arg(long, env = "CLOUDIFY_OPERATOR_CATALOG_TOKEN_FILE", value_name = "PATH")]
    pub catalog_token_file: Option<PathBuf>,
    /// How the operator reaches a dataset's server to fetch its STAC item; `{service}`,
    /// `{namespace}` and `{port}` are replaced.
    #[arg(
        long,
        env = "CLOUDIFY_OPERATOR_SERVER_URL_TEMPLATE",
        value_name = "T",
        default_value = DEFAULT_SERVER_URL_TEMPLATE
    )]
    pub server_url_template: String,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "CLOUDIFY_OPERATOR_PROBE_ADDR",
        value_name = "ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub probe_addr: SocketAddr,
    /// Reconcile only while holding the leader Lease (default).
    #[arg(long = "leader-election", overrides_with = "no_leader_election")]
    pub leader_election: bool,
    /// Reconcile without a Lease (a single replica only).
    #[arg(long = "no-leader-election", overrides_with = "leader_election")]
    pub no_leader_election: bool,
    /// Name of the Lease.
    #[arg(long, value_name = "NAME", default_value = MANAGER)]
    pub lease_name: String,
    /// Namespace of the Lease. Default: the client's namespace (in a pod: its own).
    #[arg(long, env = "POD_NAMESPACE", value_name = "NS")]
    pub lease_namespace: Option<String>,
    /// Holder identity in the Lease. Default: the host name.
    #[arg(long, env = "POD_NAME", value_name = "ID")]
    pub identity: Option<String>,
}

/// Why the operator could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Token(#[from] cloudify_crds::catalog_client::TokenError),
    #[error("cannot connect to the Kubernetes API (KUBECONFIG or in-cluster config): {0}")]
    Client(#[source] kube::Error),
    #[error(
        "CustomResourceDefinition {CRD_NAME} not found; install it with `cloudify-operator crd | kubectl apply -f -`"
    )]
    CrdMissing,
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("probe address {addr}: {source}")]
    Probe {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
}

fn check_url(flag: &str, value: &str) -> Result<(), RunError> {
    let ok = url::Url::parse(value).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
    if ok {
        Ok(())
    } else {
        Err(RunError::Config(format!(
            "{flag}: '{value}' is not an http(s) URL"
        )))
    }
}

impl RunArgs {
    /// The reconciler configuration, with the flags checked.
    pub fn config(&self) -> Result<Config, RunError> {
        check_url("--catalog-url", &self.catalog_url)?;
        if let Some(u) = &self.public_url {
            check_url("--public-url", u)?;
        }
        let probe = controller::server_url(&self.server_url_template, "svc", "ns");
        check_url("--server-url-template", &probe)?;
        let catalog_token = self
            .catalog_token_file
            .as_deref()
            .map(cloudify_crds::catalog_client::read_token)
            .transpose()?;
        Ok(Config {
            settings: Settings {
                image: self.image.clone(),
                public_url: self.public_url.clone(),
                otel_env: crate::build::otel_env(|k| std::env::var(k).ok()),
            },
            catalog_url: self.catalog_url.clone(),
            catalog_token,
            server_url_template: self.server_url_template.clone(),
        })
    }
}

/// Fails with [`RunError::CrdMissing`] when the API server does not know the CRD. Lists (at
/// most one object's metadata) instead of reading the CRD, so the operator needs no access to
/// CustomResourceDefinitions.
pub async fn check_crd(client: &Client, namespace: Option<&str>) -> Result<(), RunError> {
    let ar = api_resource();
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(RunError::CrdMissing),
        Err(source) => Err(RunError::Kube {
            action: format!("list {CRD_NAME}"),
            source,
        }),
    }
}

/// A future that resolves once `rx` holds `true` (or its sender is gone).
async fn signalled(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Sets `tx` on SIGTERM or Ctrl-C.
fn spawn_signal_handler(tx: watch::Sender<bool>) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!("cannot listen for SIGTERM ({e}); only Ctrl-C stops gracefully");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
}

fn identity() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("{MANAGER}-{}", std::process::id()))
}

/// Runs the operator until SIGTERM/Ctrl-C.
pub async fn run(args: RunArgs) -> Result<(), RunError> {
    let (tx, rx) = watch::channel(false);
    spawn_signal_handler(tx);
    run_until(args, rx, |_| {}).await
}

/// Runs the operator until `shutdown` holds `true`. `on_probes` is told the probe address once
/// bound (tests bind port 0).
pub async fn run_until(
    args: RunArgs,
    shutdown: watch::Receiver<bool>,
    on_probes: impl FnOnce(SocketAddr),
) -> Result<(), RunError> {
    let config = args.config()?;
    let client = Client::try_default().await.map_err(RunError::Client)?;
    check_crd(&client, args.namespace.as_deref()).await?;

    let metrics = Metrics::new()?;
    let ready = Arc::new(AtomicBool::new(false));
    let probes = Probes {
        metrics: metrics.clone(),
        ready: ready.clone(),
    };
    let (addr, probe_task) = probes::serve(args.probe_addr, probes, signalled(shutdown.clone()))
        .await
        .map_err(|source| RunError::Probe {
            addr: args.probe_addr,
            source,
        })?;
    on_probes(addr);
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");

    let identity = args.identity.clone().unwrap_or_else(identity);
    let ctx = Arc::new(Context::new(
        client.clone(),
        config,
        metrics.clone(),
        Some(identity.clone()),
    )?);
    ready.store(true, Ordering::Relaxed);

    let namespace = args.namespace.clone();
    if args.no_leader_election {
        tracing::info!(
            namespace = namespace.as_deref().unwrap_or("(all)"),
            "reconciling (no leader election)"
        );
        metrics.leader.set(1);
        run_controller(ctx, namespace.as_deref(), signalled(shutdown.clone())).await;
        metrics.leader.set(0);
    } else {
        let lease_namespace = args
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        let manager = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
            .with_namespace(&lease_namespace)
            .with_identity(&identity)
            // No shared field manager: the crate derives one per identity, and server-side
            // apply conflicts between *different* managers are what make two replicas'
            // concurrent takeovers fail safely.
            .build()
            .await?;
        tracing::info!(lease = %format!("{lease_namespace}/{}", args.lease_name), %identity, "waiting for leadership");
        let (leader, lease_task) = manager.watch().await;
        loop {
            let mut is_leader = leader.clone();
            let mut stop = shutdown.clone();
            tokio::select! {
                r = is_leader.wait_for(|l| *l) => {
                    if r.is_err() {
                        tracing::error!("leader election stopped");
                        break;
                    }
                }
                _ = stop.wait_for(|v| *v) => break,
            }
            tracing::info!(%identity, "became leader; reconciling");
            metrics.leader.set(1);
            let mut lost = leader.clone();
            let lost = async move {
                let _ = lost.wait_for(|l| !*l).await;
            };
            let stop = signalled(shutdown.clone());
            run_controller(ctx.clone(), namespace.as_deref(), async move {
                tokio::select! {
                    _ = lost => {}
                    _ = stop => {}
                }
            })
            .await;
            metrics.leader.set(0);
            if *shutdown.borrow() {
                break;
            }
            tracing::warn!(%identity, "lost leadership; stopped reconciling, waiting to lead again");
        }
        // Closing the channel makes the lease task release the lease for the next replica.
        drop(leader);
        match lease_task.await {
            Ok(Ok(_)) => tracing::info!("lease released"),
            Ok(Err(e)) => tracing::warn!("releasing the lease: {e}"),
            Err(e) => tracing::warn!("lease task: {e}"),
        }
    }
    let _ = probe_task.await;
    Ok(())
}

/// Runs the controller until `stop` resolves: CRs plus every kind of owned object ([`OWNED`],
/// by our `managed-by` label), so a change to an owned object (a deleted Service, a Deployment whose
/// status moved) reconciles its CR.
pub async fn run_controller(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let ar = api_resource();
    let crs: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let owned = watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    let mut controller = Controller::new_with(crs, watcher::Config::default(), ar);
    for kind in &OWNED {
        let ar = kind.api_resource();
        let api: Api<DynamicObject> = match namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        controller = controller.owns_with(api, ar, owned.clone());
    }
    controller
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(cr = %obj, "reconciled"),
                // Reconcile errors are logged by the error policy; these are watch errors
                // (retried by the runtime with backoff).
                Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
                // An owned object changed after its CR was deleted: nothing to do.
                Err(e @ kube::runtime::controller::Error::ObjectNotFound(..)) => {
                    tracing::debug!("controller: {e}")
                }
                Err(e) => tracing::warn!("controller: {e}"),
            }
        })
        .await;
}
