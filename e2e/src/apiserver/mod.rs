//! Kubernetes API emulator: a test double of kube-apiserver that speaks the real wire
//! protocol well enough for unmodified `kubectl` and kube-rs clients and controllers.
//!
//! These machines have no container engine and no kube-apiserver binary, so kind, k3d and
//! envtest cannot run; the e2e tests run the platform against this emulator instead (and
//! unchanged against a real cluster when one is configured).
//!
//! # What it does
//! - Discovery: `/api`, `/apis`, group and group/version resource lists (verbs, short names,
//!   categories, scope, kind, `/status` and `/scale` subresources) and aggregated discovery
//!   (`apidiscovery.k8s.io/v2`, what kubectl asks for first). `/version`. `/openapi/v3` lists
//!   one document per group/version declaring the operations and their `fieldValidation`
//!   parameter, which is what makes kubectl rely on server-side field validation.
//! - The built-in kinds the platform uses (see `resources.rs`) and custom resources of any
//!   stored CRD. CRDs are checked like the real server does (names, one storage version,
//!   structural schema, CEL rules compile) and get `NamesAccepted`/`Established` conditions.
//!   Custom resources get pruning, defaulting, OpenAPI value validation and CEL rules
//!   (`x-kubernetes-validations`, evaluated by the `kube-cel` crate), with 422 `Invalid`
//!   errors naming the field. Built-in objects are decoded into the k8s-openapi types (type
//!   errors answer 400, unknown fields are pruned, warned about or rejected per
//!   `fieldValidation`), get the defaults clients rely on (Service cluster IP and ports, pod
//!   template defaults, Deployment replicas/strategy, Secret type, Namespace phase) and the
//!   real server's most common semantic checks (selector vs template labels, containers and
//!   images, Service ports, Ingress `pathType`, HPA bounds, PDB, label syntax, owner
//!   references, immutable selector and cluster IP).
//! - create/get/list/update/delete/deletecollection, `dryRun=All`; one global
//!   `resourceVersion`; 409 `Conflict` on stale versions, 409 `AlreadyExists`; `uid`,
//!   `creationTimestamp`, `generation` (bumped on changes outside metadata/status); label
//!   selectors (`=`, `==`, `!=`, `in`, `notin`, exists, `!`) and field selectors
//!   (`metadata.name`, `metadata.namespace` and the per-kind fields the real server supports,
//!   others 400); `limit`/`continue` paging. Writes that change nothing do not bump the
//!   `resourceVersion` (so controllers re-applying their desired state do not wake
//!   themselves).
//! - Watch (`?watch=true` and `/watch/` paths) from a resourceVersion, with synthetic ADDED
//!   events for unset/`0`, `sendInitialEvents` (streaming lists), bookmarks, `timeoutSeconds`,
//!   selector-filtered watches that turn "stopped matching" into DELETED, and an ERROR event
//!   with 410 `Expired` for versions older than the retained history ([`Server::compact`]
//!   drops it, like etcd compaction) or for watchers too slow to keep up.
//! - Patches: JSON patch, merge patch, strategic merge patch (built-in kinds; the merge keys
//!   of the platform's kinds' lists; `$patch`, `$setElementOrder`, `$deleteFromPrimitiveList`,
//!   `$retainKeys`) and server-side apply with `managedFields` (FieldsV1), per-manager and
//!   per-subresource ownership, conflicts (409 naming fields and managers), `force`, removal
//!   of fields a manager stops applying, create-on-apply, list semantics from the CRD schema
//!   (`x-kubernetes-list-type`/`-map-keys`) or the built-in types, atomic LabelSelectors.
//! - `/status` subresources, `/scale` for Deployments and ReplicaSets, finalizers and
//!   `deletionTimestamp`, owner-reference garbage collection (background, foreground with the
//!   `foregroundDeletion` finalizer, orphan), namespace deletion (contents first), `Status`
//!   objects with the real reasons, codes and causes.
//! - Core `v1` and `events.k8s.io/v1` Events in one storage with the real field conversion.
//! - `Table` output with CRD printer columns (JSONPath) and the usual columns for built-ins.
//! - Protobuf request bodies for the Namespace, ConfigMap and Secret that kubectl's `create`
//!   generators send.
//! - State in memory, optionally persisted to a JSON file (written after changes, loaded on
//!   start).
//!
//! # What it deliberately does not do
//! No authentication or authorization (any or no credentials are accepted), no admission
//! webhooks, no API aggregation, no TLS (plain HTTP on loopback), no CBOR, no protobuf bodies
//! of other kinds (415 naming the kind; responses are always JSON, which every client
//! accepts), no CRD version conversion (each served version is stored as sent), no
//! subresources besides `/status` and `/scale` (no `pods/log`, `exec`, `portforward`), no
//! `/openapi/v2` and no schemas in the OpenAPI v3 documents (so `kubectl explain` does not
//! work), no graceful pod deletion (pods go immediately: there is no kubelet to confirm), no
//! controllers besides the garbage collector and namespace cleanup (no ReplicaSets from
//! Deployments, no Endpoints from Services: the local pod runtime plays those parts), no
//! default ServiceAccounts or root CA ConfigMaps in namespaces, lists always answer from the
//! current state (`resourceVersion`/`resourceVersionMatch` on lists are ignored and
//! `continue` tokens page through the current state, not a snapshot), the watch history is
//! not persisted (after a restart older versions answer 410 and clients relist), and
//! built-in validation covers only the checks listed above.
#![forbid(unsafe_code)]

mod fields;
mod http;
mod patch;
mod protobuf;
mod resources;
mod schema;
mod selectors;
mod status;
mod store;
mod table;
mod validation;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use store::Store;

/// Emulator settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Listen address; port 0 picks a free port (see [`Server::url`]).
    pub addr: SocketAddr,
    /// JSON file the state is loaded from at start (if it exists) and written to on change.
    pub state_file: Option<PathBuf>,
}

/// Errors starting the emulator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read state file {path}: {source}")]
    ReadState { path: PathBuf, source: std::io::Error },
    #[error("state file {path} is not valid: {message}")]
    BadState { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// A running emulator.
pub struct Server {
    addr: SocketAddr,
    app: Arc<http::App>,
    shutdown: tokio::sync::watch::Sender<bool>,
    serve: JoinHandle<()>,
    persist: Option<JoinHandle<()>>,
}

impl Server {
    /// Load the state (if a state file exists), bind and start serving in the background.
    pub async fn start(opts: Options) -> Result<Server, Error> {
        let store = match &opts.state_file {
            Some(path) if path.exists() => {
                let raw = tokio::fs::read(path).await.map_err(|source| Error::ReadState {
                    path: path.clone(),
                    source,
                })?;
                let v: serde_json::Value = serde_json::from_slice(&raw).map_err(|e| Error::BadState {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                Store::restore(&v).map_err(|message| Error::BadState {
                    path: path.clone(),
                    message,
                })?
            }
            _ => Store::new(),
        };
        let listener = tokio::net::TcpListener::bind(opts.addr)
            .await
            .map_err(|source| Error::Bind {
                addr: opts.addr,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: opts.addr,
            source,
        })?;
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let changed = store.changed.clone();
        let app = Arc::new(http::App {
            store: Mutex::new(store),
            shutdown: shutdown_rx.clone(),
            addr,
        });
        let router = axum::Router::new()
            .fallback(http::dispatch)
            // The real server accepts request bodies up to 3 MiB.
            .layer(axum::extract::DefaultBodyLimit::max(3 * 1024 * 1024))
            .with_state(app.clone());
        let mut stop = shutdown_rx.clone();
        let serve = tokio::spawn(async move {
            let graceful = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(graceful)
                .await
            {
                tracing::error!("API emulator stopped: {e}");
            }
        });
        let persist = opts.state_file.clone().map(|path| {
            let app = app.clone();
            let mut stop = shutdown_rx.clone();
            tokio::spawn(async move {
                loop {
                    let stopping = tokio::select! {
                        _ = changed.notified() => false,
                        _ = stop.wait_for(|s| *s) => true,
                    };
                    // Coalesce bursts of writes into one file write.
                    if !stopping {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    let snapshot = app.lock().snapshot();
                    if let Err(e) = write_state(&path, &snapshot).await {
                        tracing::error!("{e}");
                    }
                    if stopping {
                        return;
                    }
                }
            })
        });
        tracing::info!("Kubernetes API emulator listening on http://{addr}");
        Ok(Server {
            addr,
            app,
            shutdown,
            serve,
            persist,
        })
    }

    /// Base URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig for kubectl and kube-rs clients pointing at this server.
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: cloudify-e2e\n  cluster:\n    server: {}\ncontexts:\n- name: cloudify-e2e\n  context:\n    cluster: cloudify-e2e\n    user: cloudify-e2e\n    namespace: default\ncurrent-context: cloudify-e2e\nusers:\n- name: cloudify-e2e\n  user: {{}}\npreferences: {{}}\n",
            self.url()
        )
    }

    /// Forget the watch history, as etcd compaction does: watches from older resource
    /// versions then get 410 Gone (lets tests exercise clients' relist path).
    pub fn compact(&self) {
        self.app.lock().compact();
    }

    /// Stop serving, end open watches and write the state file a last time.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.serve.await;
        if let Some(p) = self.persist {
            let _ = p.await;
        }
    }
}

async fn write_state(path: &std::path::Path, snapshot: &serde_json::Value) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let data = serde_json::to_vec(snapshot).map_err(|e| Error::Write {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    tokio::fs::write(&tmp, data)
        .await
        .map_err(|source| Error::Write {
            path: tmp.clone(),
            source,
        })?;
    tokio::fs::rename(&tmp, path)
        .await
        .map_err(|source| Error::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// `cloudify-e2e apiserver`: run the emulator in the foreground until Ctrl-C/SIGTERM.
pub async fn run_cli(
    opts: Options,
    listen_file: Option<PathBuf>,
    kubeconfig: Option<PathBuf>,
) -> Result<(), Error> {
    let server = Server::start(opts).await?;
    if let Some(p) = &listen_file {
        std::fs::write(p, format!("{}\n", server.url())).map_err(|source| Error::Write {
            path: p.clone(),
            source,
        })?;
    }
    if let Some(p) = &kubeconfig {
        std::fs::write(p, server.kubeconfig_yaml()).map_err(|source| Error::Write {
            path: p.clone(),
            source,
        })?;
    }
    println!("{}", server.url());
    wait_for_signal().await;
    server.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
