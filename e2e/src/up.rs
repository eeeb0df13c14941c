//! `cloudify-e2e up --state DIR`: the whole platform on this machine, in the foreground.
//!
//! Starts the API emulator, the pod runtime (with its service proxy), the ingress agent with a
//! real nginx, `cloudify catalog` (with a generated transactions token) and
//! `cloudify-operator run`; applies the CRDs given with `--crds`; and once everything answers,
//! writes `DIR/kubeconfig` (for kubectl) and `DIR/ingress-url` (nginx's base URL) — the files
//! appear only when the platform is ready, so scripts can wait for them. Ctrl-C or SIGTERM
//! stops everything: operator and catalog first, then pods, nginx and the emulator (whose
//! state is kept in `DIR/apiserver.json` for the next start). Logs of the child processes are
//! in `DIR/logs/`, pods' directories under `DIR/runtime/pods/`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Config};
use serde::Deserialize as _;
use tokio::process::{Child, Command};

use crate::apiserver;
use crate::ingress::agent::{self, AgentOptions};
use crate::runtime::controller::{self, DEFAULT_DRAIN, RuntimeOptions};
use crate::runtime::plan::ImageMap;
use crate::runtime::supervisor::SupervisorOptions;
use crate::runtime::{free_loopback_port, proxy, signal};

/// `cloudify-e2e up` flags.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Directory for state, logs, `kubeconfig` and `ingress-url` (created if missing).
    #[arg(long, value_name = "DIR")]
    pub state: PathBuf,
    /// The `cloudify` binary: runs the catalog and every pod whose image contains `cloudify`.
    #[arg(long, env = "CLOUDIFY_BIN", value_name = "PATH")]
    pub cloudify_bin: PathBuf,
    /// The `cloudify-operator` binary.
    #[arg(long, env = "CLOUDIFY_OPERATOR_BIN", value_name = "PATH")]
    pub operator_bin: PathBuf,
    /// The nginx binary (Debian package nginx).
    #[arg(long, default_value = "/usr/sbin/nginx", value_name = "PATH")]
    pub nginx: PathBuf,
    /// Ingress HTTP port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub http_port: u16,
    /// API emulator listen address (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub api_addr: SocketAddr,
    /// More image → binary entries for pods (`PATTERN=PATH`, repeatable), checked before the
    /// built-in `cloudify=<--cloudify-bin>`.
    #[arg(long = "image-map", value_name = "PATTERN=PATH", value_parser = ImageMap::parse_entry)]
    pub image_map: Vec<(String, PathBuf)>,
    /// CRD manifests (a YAML file or a directory of them) to apply before the operator
    /// starts. Default: what `cloudify-operator crd` prints.
    #[arg(long, value_name = "PATH")]
    pub crds: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("{flag} {path}: not an executable file")]
    Binary { flag: &'static str, path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Api(#[from] apiserver::Error),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{path}: not a CustomResourceDefinition manifest: {message}")]
    Crd { path: PathBuf, message: String },
    #[error("{what} did not become ready within {timeout:?}; see {log}")]
    NotReady {
        what: &'static str,
        timeout: Duration,
        log: PathBuf,
    },
    #[error("{what} exited ({status}); see {log}")]
    Exited {
        what: &'static str,
        status: String,
        log: PathBuf,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> UpError + '_ {
    move |source| UpError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn check_binary(flag: &'static str, path: &Path) -> Result<(), UpError> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
        _ => Err(UpError::Binary {
            flag,
            path: path.to_path_buf(),
        }),
    }
}

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the platform until Ctrl-C/SIGTERM.
pub async fn run(args: UpArgs) -> Result<(), UpError> {
    check_binary("--cloudify-bin", &args.cloudify_bin)?;
    check_binary("--operator-bin", &args.operator_bin)?;
    check_binary("--nginx", &args.nginx)?;
    let state = std::path::absolute(&args.state).map_err(io(&args.state))?;
    let logs = state.join("logs");
    std::fs::create_dir_all(&logs).map_err(io(&logs))?;
    for stale in ["kubeconfig", "ingress-url"] {
        let _ = std::fs::remove_file(state.join(stale));
    }

    let server = apiserver::Server::start(apiserver::Options {
        addr: args.api_addr,
        state_file: Some(state.join("apiserver.json")),
    })
    .await?;
    let url = server.url().parse().map_err(|e| UpError::Io {
        path: state.clone(),
        source: std::io::Error::other(format!("emulator URL: {e}")),
    })?;
    let client = Client::try_from(Config::new(url))?;
    match &args.crds {
        Some(crds) => apply_crds(&client, crds).await?,
        None => {
            let out = Command::new(&args.operator_bin)
                .arg("crd")
                .stdin(Stdio::null())
                .output()
                .await
                .map_err(io(&args.operator_bin))?;
            if !out.status.success() {
                return Err(UpError::Crd {
                    path: args.operator_bin.clone(),
                    message: format!("`crd` failed: {}", String::from_utf8_lossy(&out.stderr)),
                });
            }
            apply_crd_yaml(&client, &args.operator_bin, &String::from_utf8_lossy(&out.stdout)).await?;
        }
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut images = args.image_map.clone();
    images.push(("cloudify".into(), args.cloudify_bin.clone()));
    let runtime = tokio::spawn(controller::run(
        client.clone(),
        RuntimeOptions {
            images: ImageMap(images),
            state_dir: state.join("runtime"),
            supervisor: SupervisorOptions {
                probe_period_max: Some(Duration::from_secs(1)),
                ..SupervisorOptions::default()
            },
            drain: DEFAULT_DRAIN,
        },
        stopped(stop_rx.clone()),
    ));
    let proxy_listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(io(&state))?;
    let proxy_addr = proxy_listener.local_addr().map_err(io(&state))?;
    let proxy_task = tokio::spawn(proxy::serve(
        client.clone(),
        proxy_listener,
        stopped(stop_rx.clone()),
    ));

    let lo = |p| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
    let http_port = match args.http_port {
        0 => free_loopback_port().map_err(io(&state))?,
        p => p,
    };
    let http = lo(http_port);
    let agent = tokio::spawn(agent::run(
        client.clone(),
        AgentOptions {
            nginx: args.nginx.clone(),
            state_dir: state.join("nginx"),
            http,
            https: Some(lo(free_loopback_port().map_err(io(&state))?)),
            status: lo(free_loopback_port().map_err(io(&state))?),
        },
        stopped(stop_rx.clone()),
    ));

    let result = start_processes(&args, &state, &server, http, proxy_addr).await;
    let mut children = match result {
        Ok(children) => children,
        Err(e) => {
            let _ = stop_tx.send(true);
            let _ = runtime.await;
            let _ = agent.await;
            let _ = proxy_task.await;
            server.shutdown().await;
            return Err(e);
        }
    };

    let kubeconfig = state.join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig_yaml()).map_err(io(&kubeconfig))?;
    let ingress_url = state.join("ingress-url");
    std::fs::write(&ingress_url, format!("http://{http}\n")).map_err(io(&ingress_url))?;
    eprintln!(
        "cloudify platform ready:\n  kubectl --kubeconfig {}\n  ingress  http://{http}\n  catalog  {}\n  logs     {}\nCtrl-C stops it.",
        kubeconfig.display(),
        children.catalog_url,
        logs.display()
    );

    let outcome = wait_for_stop(&mut children).await;
    tracing::info!("stopping the platform");
    let _ = std::fs::remove_file(&ingress_url);
    for (_, child) in [&mut children.operator, &mut children.catalog] {
        stop_child(child).await;
    }
    let _ = stop_tx.send(true);
    let _ = runtime.await;
    let _ = agent.await;
    let _ = proxy_task.await;
    server.shutdown().await;
    outcome
}

struct Children {
    operator: (&'static str, Child),
    catalog: (&'static str, Child),
    catalog_url: String,
    logs: PathBuf,
}

async fn start_processes(
    args: &UpArgs,
    state: &Path,
    server: &apiserver::Server,
    http: SocketAddr,
    proxy: SocketAddr,
) -> Result<Children, UpError> {
    let logs = state.join("logs");
    // The catalog accepts transactions only with this token; the operator registers with it.
    let token_file = state.join("catalog-token");
    if !token_file.exists() {
        let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
        let token = crate::runtime::rollout::template_hash_of_bytes(seed.as_bytes())
            + &crate::runtime::rollout::template_hash_of_bytes(format!("{seed}x").as_bytes());
        std::fs::write(&token_file, token).map_err(io(&token_file))?;
    }
    let catalog_listen = state.join("catalog-url");
    let _ = std::fs::remove_file(&catalog_listen);
    let catalog_log = logs.join("catalog.log");
    let mut catalog = spawn(
        &args.cloudify_bin,
        &[
            "catalog".into(),
            "--data".into(),
            state.join("catalog").display().to_string(),
            "--token-file".into(),
            token_file.display().to_string(),
            "--port".into(),
            free_loopback_port().map_err(io(state))?.to_string(),
            "--listen-file".into(),
            catalog_listen.display().to_string(),
        ],
        &[],
        &catalog_log,
    )?;
    let deadline = Instant::now() + READY_TIMEOUT;
    let catalog_url = loop {
        if let Ok(s) = std::fs::read_to_string(&catalog_listen)
            && !s.trim().is_empty()
        {
            break s.trim().to_string();
        }
        exited("cloudify catalog", &mut catalog, &catalog_log)?;
        if Instant::now() > deadline {
            return Err(UpError::NotReady {
                what: "cloudify catalog",
                timeout: READY_TIMEOUT,
                log: catalog_log,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let operator_kubeconfig = state.join("operator.kubeconfig");
    std::fs::write(&operator_kubeconfig, server.kubeconfig_yaml()).map_err(io(&operator_kubeconfig))?;
    let probe = SocketAddr::from((Ipv4Addr::LOCALHOST, free_loopback_port().map_err(io(state))?));
    let operator_log = logs.join("operator.log");
    let mut operator = spawn(
        &args.operator_bin,
        &[
            "run".into(),
            "--catalog-url".into(),
            catalog_url.clone(),
            "--catalog-token-file".into(),
            token_file.display().to_string(),
            "--public-url".into(),
            format!("http://{http}"),
            "--server-url-template".into(),
            format!("http://{proxy}/{{namespace}}/{{service}}/{{port}}"),
            "--probe-addr".into(),
            probe.to_string(),
            "--no-leader-election".into(),
        ],
        &[("KUBECONFIG", operator_kubeconfig.display().to_string())],
        &operator_log,
    )?;
    let http_client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| UpError::Io {
            path: state.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let operator_ready = http_client
            .get(format!("http://{probe}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        // nginx answers (404 for unknown paths) once the agent has started it.
        let nginx_ready = http_client.get(format!("http://{http}/")).send().await.is_ok();
        if operator_ready && nginx_ready {
            break;
        }
        exited("cloudify-operator", &mut operator, &operator_log)?;
        exited("cloudify catalog", &mut catalog, &catalog_log)?;
        if Instant::now() > deadline {
            let (what, log) = if operator_ready {
                ("nginx", state.join("nginx/error.log"))
            } else {
                ("cloudify-operator", operator_log)
            };
            return Err(UpError::NotReady {
                what,
                timeout: READY_TIMEOUT,
                log,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(Children {
        operator: ("cloudify-operator", operator),
        catalog: ("cloudify catalog", catalog),
        catalog_url,
        logs,
    })
}

fn spawn(binary: &Path, args: &[String], env: &[(&str, String)], log: &Path) -> Result<Child, UpError> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io(log))?;
    let err = out.try_clone().map_err(io(log))?;
    Command::new(binary)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .map_err(io(binary))
}

fn exited(what: &'static str, child: &mut Child, log: &Path) -> Result<(), UpError> {
    match child.try_wait() {
        Ok(None) => Ok(()),
        Ok(Some(status)) => Err(UpError::Exited {
            what,
            status: status.to_string(),
            log: log.to_path_buf(),
        }),
        Err(e) => Err(UpError::Io {
            path: log.to_path_buf(),
            source: e,
        }),
    }
}

/// Until Ctrl-C/SIGTERM (Ok) or a child process dies (Err).
async fn wait_for_stop(children: &mut Children) -> Result<(), UpError> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(io(&children.logs))?;
    let logs = children.logs.clone();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = term.recv() => Ok(()),
        status = children.operator.1.wait() => Err(UpError::Exited {
            what: "cloudify-operator",
            status: status.map_or_else(|e| e.to_string(), |s| s.to_string()),
            log: logs.join("operator.log"),
        }),
        status = children.catalog.1.wait() => Err(UpError::Exited {
            what: "cloudify catalog",
            status: status.map_or_else(|e| e.to_string(), |s| s.to_string()),
            log: logs.join("catalog.log"),
        }),
    }
}

async fn stop_child(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = signal(pid, rustix::process::Signal::TERM);
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// Server-side applies every CustomResourceDefinition in `path` (file or directory).
async fn apply_crds(client: &Client, path: &Path) -> Result<(), UpError> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io(path))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(io(&file))?;
        apply_crd_yaml(client, &file, &text).await?;
    }
    Ok(())
}

/// Server-side applies every CRD in a multi-document YAML text (from `file`).
async fn apply_crd_yaml(client: &Client, file: &Path, text: &str) -> Result<(), UpError> {
    let file = file.to_path_buf();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    {
        for doc in serde_yaml::Deserializer::from_str(text) {
            let value = serde_yaml::Value::deserialize(doc).map_err(|e| UpError::Crd {
                path: file.clone(),
                message: e.to_string(),
            })?;
            if value.is_null() {
                continue;
            }
            let crd: CustomResourceDefinition =
                serde_yaml::from_value(value.clone()).map_err(|e| UpError::Crd {
                    path: file.clone(),
                    message: e.to_string(),
                })?;
            let name = crd.metadata.name.clone().unwrap_or_default();
            let json = serde_json::to_value(&value).map_err(|e| UpError::Crd {
                path: file.clone(),
                message: e.to_string(),
            })?;
            api.patch(
                &name,
                &PatchParams::apply("cloudify-e2e-up").force(),
                &Patch::Apply(json),
            )
            .await?;
            tracing::info!(crd = %name, "applied");
        }
    }
    Ok(())
}
