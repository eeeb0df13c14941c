//! Pod spec → process plan: the pure part of "running a container" locally.
//!
//! A container becomes a local process of a binary chosen by its image (see [`ImageMap`]).
//! Everything a container would see differently inside its own filesystem and network
//! namespace is translated here, deterministically, so it can be tested without processes:
//!
//! - **Volumes**: ConfigMap and Secret volumes become files, emptyDirs become empty
//!   directories, all under the pod's own directory (`<pod dir>/volumes/<volume>`). Because the
//!   process cannot see them at their `mountPath`, every arg and env value that *is* a mount
//!   path or starts with `<mountPath>/` (also after a `--flag=` prefix) is rewritten to the
//!   host directory. So are mount paths in the text of mounted ConfigMap files (a config
//!   file naming a mounted Secret's file, as the operator's server config names its token
//!   file), where a path starts after a delimiter (start, space, quote, `[`, `,`, `:`, `=`) and
//!   ends at `/` or a delimiter; Secret files are left byte for byte.
//!   `hostPath` volumes map the mount path to the host path; `persistentVolumeClaim` volumes
//!   are the identity (their mount path is used as a host path as is), so a manifest can point
//!   at data on this machine.
//! - **Ports**: every declared container port gets a free loopback port. `--port N`,
//!   `--port=N` args and an env `PORT=N` naming a container port are rewritten to it, and
//!   `--host 0.0.0.0`/`--host=0.0.0.0` becomes `127.0.0.1`, so the process listens where the
//!   probes, Endpoints and the ingress look.
//! - **Command**: an image stands for one program (the mapped binary). `command[0]` names
//!   that program and is replaced by the binary; the rest of `command`, then `args`, are its
//!   arguments (without `command`, `args` alone). `$(VAR)` references are expanded as the
//!   kubelet does.
//! - **Environment**: the host environment is not inherited (as in a container) except
//!   `PATH` and `LD_LIBRARY_PATH`; `HOME`, `TMPDIR` and `HOSTNAME` are set for the pod.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Probe, Secret, Volume};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Why a container cannot be started; the message goes into the container's `waiting` state.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// No `--image-map` entry matches the image (the kubelet's `ErrImagePull`).
    #[error("no local binary for image {0:?} (add --image-map PATTERN=PATH)")]
    Image(String),
    /// A referenced ConfigMap/Secret/key is missing or a feature is not supported
    /// (the kubelet's `CreateContainerConfigError`).
    #[error("{0}")]
    Config(String),
}

impl PlanError {
    /// The `reason` of the container's waiting state, as a kubelet reports it.
    pub fn reason(&self) -> &'static str {
        match self {
            PlanError::Image(_) => "ErrImagePull",
            PlanError::Config(_) => "CreateContainerConfigError",
        }
    }
}

/// Image → local binary table. A pattern matches an image when the image's repository (the
/// image without `:tag` and `@digest`) contains it, so `cloudify` matches
/// `ghcr.io/org/cloudify:0.1` and `cloudify@sha256:…`. The first match wins.
#[derive(Debug, Clone, Default)]
pub struct ImageMap(pub Vec<(String, PathBuf)>);

impl ImageMap {
    /// Parses `PATTERN=PATH` (the `--image-map` flag).
    pub fn parse_entry(s: &str) -> Result<(String, PathBuf), String> {
        match s.split_once('=') {
            Some((pattern, path)) if !pattern.is_empty() && !path.is_empty() => {
                Ok((pattern.to_string(), PathBuf::from(path)))
            }
            _ => Err(format!("expected IMAGE=PATH, got {s:?}")),
        }
    }

    /// The binary for an image.
    pub fn resolve(&self, image: &str) -> Option<&Path> {
        let without_digest = image.split('@').next().unwrap_or(image);
        // A tag is after the last ':' that follows the last '/' (a registry may have a port).
        let last_slash = without_digest.rfind('/').map_or(0, |i| i + 1);
        let repository = match without_digest[last_slash..].rfind(':') {
            Some(i) => &without_digest[..last_slash + i],
            None => without_digest,
        };
        self.0
            .iter()
            .find(|(pattern, _)| repository.contains(pattern.as_str()))
            .map(|(_, path)| path.as_path())
    }
}

/// The ConfigMaps and Secrets of the pod's namespace, as far as the pod refers to them.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub config_maps: BTreeMap<String, ConfigMap>,
    pub secrets: BTreeMap<String, Secret>,
}

impl Sources {
    fn config_map_data(&self, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let cm = self.config_maps.get(name)?;
        let mut out: BTreeMap<String, Vec<u8>> = cm
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
            .collect();
        for (k, v) in cm.binary_data.iter().flatten() {
            out.insert(k.clone(), v.0.clone());
        }
        Some(out)
    }

    fn secret_data(&self, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let secret = self.secrets.get(name)?;
        let mut out: BTreeMap<String, Vec<u8>> = secret
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        // stringData is write-only on a real server; honour it if an emulator kept it.
        for (k, v) in secret.string_data.iter().flatten() {
            out.insert(k.clone(), v.clone().into_bytes());
        }
        Some(out)
    }
}

/// A file to write before the pod's containers start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFile {
    pub path: PathBuf,
    pub contents: Vec<u8>,
    pub mode: u32,
}

/// The pod-level part: directories and files of its volumes, and the mount-path rewrite table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodPlan {
    /// Directories to create (emptyDirs, volume roots).
    pub dirs: Vec<PathBuf>,
    pub files: Vec<PlannedFile>,
    pub containers: Vec<ProcessPlan>,
}

/// What to probe and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbePlan {
    pub action: ProbeAction,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAction {
    /// `GET http://127.0.0.1:<port><path>`; success is a status in 200..400, as the kubelet.
    HttpGet {
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    /// A TCP connect to `127.0.0.1:<port>`.
    TcpSocket { port: u16 },
}

/// One container as a local process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessPlan {
    pub container: String,
    pub image: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// Container port (and name, if any) → loopback port.
    pub ports: Vec<PortMapping>,
    pub readiness: Option<ProbePlan>,
    pub liveness: Option<ProbePlan>,
    pub startup: Option<ProbePlan>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    pub name: Option<String>,
    pub container_port: i32,
    pub host_port: u16,
}

/// Plans a whole pod. `host_ports` gives the loopback port of every container port
/// (`container_port → host port`, chosen by the caller so the plan stays pure).
pub fn plan_pod(
    pod: &Pod,
    sources: &Sources,
    images: &ImageMap,
    pod_dir: &Path,
    host_ports: &BTreeMap<i32, u16>,
    inherited_env: &[(String, String)],
) -> Result<PodPlan, PlanError> {
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| PlanError::Config("pod has no spec".into()))?;
    let volumes_dir = pod_dir.join("volumes");
    let mut plan = PodPlan {
        dirs: vec![pod_dir.join("tmp")],
        ..PodPlan::default()
    };
    // Volume name → host directory (None: identity, the mount path is a host path).
    let mut volume_dirs: BTreeMap<String, Option<PathBuf>> = BTreeMap::new();
    let mounted: std::collections::BTreeSet<&str> = spec
        .containers
        .iter()
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .map(|m| m.name.as_str())
        .collect();
    for volume in spec.volumes.iter().flatten() {
        if !mounted.contains(volume.name.as_str()) {
            continue;
        }
        let dir = volumes_dir.join(&volume.name);
        let host = plan_volume(volume, sources, &dir, &mut plan)?;
        volume_dirs.insert(volume.name.clone(), host);
    }
    // The mount table of all containers (one path, one directory: the first container's
    // wins), for the text of ConfigMap files, which any of them may read.
    let mut all_mounts: Vec<(String, PathBuf)> = Vec::new();
    for container in &spec.containers {
        for m in container_mounts(container, &volume_dirs)? {
            if !all_mounts.iter().any(|(p, _)| *p == m.0) {
                all_mounts.push(m);
            }
        }
    }
    all_mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    let config_dirs: Vec<PathBuf> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.config_map.is_some() && mounted.contains(v.name.as_str()))
        .map(|v| volumes_dir.join(&v.name))
        .collect();
    for f in &mut plan.files {
        if config_dirs.iter().any(|d| f.path.starts_with(d))
            && let Ok(text) = std::str::from_utf8(&f.contents)
        {
            f.contents = rewrite_text(text, &all_mounts).into_bytes();
        }
    }
    for container in &spec.containers {
        plan.containers.push(plan_container(
            pod,
            container,
            sources,
            images,
            pod_dir,
            &volume_dirs,
            host_ports,
            inherited_env,
        )?);
    }
    Ok(plan)
}

fn plan_volume(
    volume: &Volume,
    sources: &Sources,
    dir: &Path,
    plan: &mut PodPlan,
) -> Result<Option<PathBuf>, PlanError> {
    let name = &volume.name;
    if let Some(cm) = &volume.config_map {
        let data = match sources.config_map_data(&cm.name) {
            Some(data) => data,
            None if cm.optional == Some(true) => BTreeMap::new(),
            None => {
                return Err(PlanError::Config(format!(
                    "configmap {:?} not found (volume {name:?})",
                    cm.name
                )));
            }
        };
        let items = cm.items.as_ref().map(|items| {
            items
                .iter()
                .map(|i| (i.key.clone(), i.path.clone(), i.mode))
                .collect::<Vec<_>>()
        });
        key_files(name, &data, items, cm.default_mode, cm.optional, dir, plan)?;
        return Ok(Some(dir.to_path_buf()));
    }
    if let Some(secret) = &volume.secret {
        let secret_name = secret.secret_name.clone().unwrap_or_default();
        let data = match sources.secret_data(&secret_name) {
            Some(data) => data,
            None if secret.optional == Some(true) => BTreeMap::new(),
            None => {
                return Err(PlanError::Config(format!(
                    "secret {secret_name:?} not found (volume {name:?})"
                )));
            }
        };
        let items = secret.items.as_ref().map(|items| {
            items
                .iter()
                .map(|i| (i.key.clone(), i.path.clone(), i.mode))
                .collect::<Vec<_>>()
        });
        key_files(
            name,
            &data,
            items,
            secret.default_mode,
            secret.optional,
            dir,
            plan,
        )?;
        return Ok(Some(dir.to_path_buf()));
    }
    if volume.empty_dir.is_some() {
        plan.dirs.push(dir.to_path_buf());
        return Ok(Some(dir.to_path_buf()));
    }
    if let Some(host) = &volume.host_path {
        return Ok(Some(PathBuf::from(&host.path)));
    }
    if volume.persistent_volume_claim.is_some() {
        return Ok(None);
    }
    Err(PlanError::Config(format!(
        "volume {name:?}: only configMap, secret, emptyDir, hostPath and persistentVolumeClaim \
         volumes are supported by the local runtime"
    )))
}

fn key_files(
    volume: &str,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<Vec<(String, String, Option<i32>)>>,
    default_mode: Option<i32>,
    optional: Option<bool>,
    dir: &Path,
    plan: &mut PodPlan,
) -> Result<(), PlanError> {
    plan.dirs.push(dir.to_path_buf());
    let default_mode = default_mode.unwrap_or(0o644) as u32;
    let items = items.unwrap_or_else(|| data.keys().map(|k| (k.clone(), k.clone(), None)).collect());
    for (key, path, mode) in items {
        let Some(contents) = data.get(&key) else {
            if optional == Some(true) {
                continue;
            }
            return Err(PlanError::Config(format!(
                "key {key:?} not found (volume {volume:?})"
            )));
        };
        if path.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(PlanError::Config(format!(
                "volume {volume:?}: invalid item path {path:?}"
            )));
        }
        plan.files.push(PlannedFile {
            path: dir.join(&path),
            contents: contents.clone(),
            mode: mode.map_or(default_mode, |m| m as u32),
        });
    }
    Ok(())
}

/// The container's mount path → host path table, longest first so nested mounts win
/// (volumes that are the identity, PVCs, left out).
fn container_mounts(
    container: &Container,
    volume_dirs: &BTreeMap<String, Option<PathBuf>>,
) -> Result<Vec<(String, PathBuf)>, PlanError> {
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let Some(host) = volume_dirs.get(&m.name) else {
            return Err(PlanError::Config(format!(
                "container {:?}: volume mount {:?} names no volume",
                container.name, m.name
            )));
        };
        if let Some(host) = host {
            let host = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sub) => host.join(sub),
                None => host.clone(),
            };
            mounts.push((m.mount_path.trim_end_matches('/').to_string(), host));
        }
    }
    mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    Ok(mounts)
}

/// Mount paths in a config file's text rewritten to their host directories: a path begins
/// at the start or after a delimiter and the mount path must end at `/` or a delimiter, so
/// `/data` is rewritten in `"/data/x.nc"` but not in `/database` or `http://h/data`.
pub fn rewrite_text(text: &str, mounts: &[(String, PathBuf)]) -> String {
    const DELIMITERS: &[char] = &[
        ' ', '\t', '\n', '\r', '"', '\'', '[', ']', ',', ':', '=', '{', '}', '(', ')',
    ];
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let starts = i == 0 || text[..i].ends_with(DELIMITERS);
        let hit = starts
            .then(|| {
                mounts.iter().find(|(m, _)| {
                    text[i..].starts_with(m.as_str())
                        && text[i + m.len()..]
                            .chars()
                            .next()
                            .is_none_or(|c| c == '/' || DELIMITERS.contains(&c))
                })
            })
            .flatten();
        if let Some((m, host)) = hit {
            out.push_str(&host.display().to_string());
            i += m.len();
        } else if let Some(c) = text[i..].chars().next() {
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn plan_container(
    pod: &Pod,
    container: &Container,
    sources: &Sources,
    images: &ImageMap,
    pod_dir: &Path,
    volume_dirs: &BTreeMap<String, Option<PathBuf>>,
    host_ports: &BTreeMap<i32, u16>,
    inherited_env: &[(String, String)],
) -> Result<ProcessPlan, PlanError> {
    let image = container.image.clone().unwrap_or_default();
    let program = images
        .resolve(&image)
        .ok_or_else(|| PlanError::Image(image.clone()))?
        .to_path_buf();

    let mounts = container_mounts(container, volume_dirs)?;

    let ports: Vec<PortMapping> = container
        .ports
        .iter()
        .flatten()
        .map(|p| {
            host_ports
                .get(&p.container_port)
                .map(|&host_port| PortMapping {
                    name: p.name.clone(),
                    container_port: p.container_port,
                    host_port,
                })
                .ok_or_else(|| {
                    PlanError::Config(format!("no host port for container port {}", p.container_port))
                })
        })
        .collect::<Result<_, _>>()?;

    // Env values are rewritten first; args are rewritten before `$(VAR)` expansion, so an
    // expanded (already rewritten) value is never rewritten twice.
    let env: Vec<(String, String)> = container_env(pod, container, sources)?
        .into_iter()
        .map(|(k, v)| {
            let v = if k == "PORT" {
                v.parse::<i32>()
                    .ok()
                    .and_then(|n| ports.iter().find(|p| p.container_port == n))
                    .map_or(v.clone(), |p| p.host_port.to_string())
            } else {
                rewrite_path(&v, &mounts)
            };
            (k, v)
        })
        .collect();
    let lookup: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut argv: Vec<String> = container
        .command
        .iter()
        .flatten()
        .skip(1)
        .chain(container.args.iter().flatten())
        .cloned()
        .collect();
    rewrite_args(&mut argv, &ports, &mounts);
    let argv: Vec<String> = argv.iter().map(|a| expand(a, &lookup)).collect();

    let tmp = pod_dir.join("tmp");
    let mut final_env: Vec<(String, String)> = inherited_env
        .iter()
        .filter(|(k, _)| k == "PATH" || k == "LD_LIBRARY_PATH")
        .cloned()
        .collect();
    final_env.push(("HOME".into(), pod_dir.display().to_string()));
    final_env.push(("TMPDIR".into(), tmp.display().to_string()));
    final_env.push(("HOSTNAME".into(), pod.metadata.name.clone().unwrap_or_default()));
    for (k, v) in env {
        final_env.retain(|(existing, _)| existing != &k);
        final_env.push((k, v));
    }

    let probe = |p: &Option<Probe>, what: &str| -> Result<Option<ProbePlan>, PlanError> {
        p.as_ref()
            .map(|p| plan_probe(p, &ports, what, &container.name))
            .transpose()
    };
    Ok(ProcessPlan {
        container: container.name.clone(),
        image,
        program,
        args: argv,
        env: final_env,
        cwd: container
            .working_dir
            .as_deref()
            .map(|d| PathBuf::from(rewrite_path(d, &mounts)))
            .filter(|d| d.is_absolute() && d.exists())
            .unwrap_or_else(|| pod_dir.to_path_buf()),
        readiness: probe(&container.readiness_probe, "readiness")?,
        liveness: probe(&container.liveness_probe, "liveness")?,
        startup: probe(&container.startup_probe, "startup")?,
        ports,
    })
}

/// The container's env in order: `envFrom` first, then `env` (later entries win, as in
/// the kubelet), with `$(VAR)` references to earlier variables expanded.
fn container_env(
    pod: &Pod,
    container: &Container,
    sources: &Sources,
) -> Result<Vec<(String, String)>, PlanError> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(existing, _)| existing != &k);
        env.push((k, v));
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (data, optional, what) = if let Some(cm) = &from.config_map_ref {
            (
                sources.config_map_data(&cm.name),
                cm.optional,
                format!("configmap {:?}", cm.name),
            )
        } else if let Some(s) = &from.secret_ref {
            (
                sources.secret_data(&s.name),
                s.optional,
                format!("secret {:?}", s.name),
            )
        } else {
            continue;
        };
        match data {
            Some(data) => {
                for (k, v) in data {
                    set(
                        &mut env,
                        format!("{prefix}{k}"),
                        String::from_utf8_lossy(&v).into_owned(),
                    );
                }
            }
            None if optional == Some(true) => {}
            None => return Err(PlanError::Config(format!("{what} not found (envFrom)"))),
        }
    }
    for var in container.env.iter().flatten() {
        let value = if let Some(from) = &var.value_from {
            let found = if let Some(r) = &from.secret_key_ref {
                let v = sources.secret_data(&r.name).and_then(|d| d.get(&r.key).cloned());
                match v {
                    Some(v) => Some(String::from_utf8_lossy(&v).into_owned()),
                    None if r.optional == Some(true) => None,
                    None => {
                        return Err(PlanError::Config(format!(
                            "env {:?}: key {:?} of secret {:?} not found",
                            var.name, r.key, r.name
                        )));
                    }
                }
            } else if let Some(r) = &from.config_map_key_ref {
                let v = sources
                    .config_map_data(&r.name)
                    .and_then(|d| d.get(&r.key).cloned());
                match v {
                    Some(v) => Some(String::from_utf8_lossy(&v).into_owned()),
                    None if r.optional == Some(true) => None,
                    None => {
                        return Err(PlanError::Config(format!(
                            "env {:?}: key {:?} of configmap {:?} not found",
                            var.name, r.key, r.name
                        )));
                    }
                }
            } else if let Some(f) = &from.field_ref {
                Some(field_ref(pod, &f.field_path).ok_or_else(|| {
                    PlanError::Config(format!(
                        "env {:?}: fieldRef {:?} is not supported",
                        var.name, f.field_path
                    ))
                })?)
            } else {
                return Err(PlanError::Config(format!(
                    "env {:?}: only secretKeyRef, configMapKeyRef and fieldRef are supported",
                    var.name
                )));
            };
            match found {
                Some(v) => v,
                None => continue,
            }
        } else {
            let lookup: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            expand(var.value.as_deref().unwrap_or(""), &lookup)
        };
        set(&mut env, var.name.clone(), value);
    }
    Ok(env)
}

fn field_ref(pod: &Pod, path: &str) -> Option<String> {
    let meta = &pod.metadata;
    Some(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.podIP" | "status.hostIP" => "127.0.0.1".into(),
        _ => {
            let key = path
                .strip_prefix("metadata.labels['")
                .map(|k| (k, &meta.labels))
                .or_else(|| {
                    path.strip_prefix("metadata.annotations['")
                        .map(|k| (k, &meta.annotations))
                })?;
            let name = key.0.strip_suffix("']")?;
            key.1.as_ref()?.get(name).cloned().unwrap_or_default()
        }
    })
}

/// `$(VAR)` expansion as the kubelet does it: defined variables are replaced, `$$` is an
/// escaped `$`, undefined references are left as they are.
pub fn expand(s: &str, vars: &BTreeMap<&str, &str>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some(v) = vars.get(&inner[..end])
        {
            out.push_str(v);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn rewrite_args(argv: &mut [String], ports: &[PortMapping], mounts: &[(String, PathBuf)]) {
    let port_for = |v: &str| {
        v.parse::<i32>()
            .ok()
            .and_then(|n| ports.iter().find(|p| p.container_port == n))
            .map(|p| p.host_port.to_string())
    };
    let mut i = 0;
    while i < argv.len() {
        let arg = argv[i].clone();
        if (arg == "--port" || arg == "--host") && i + 1 < argv.len() {
            let next = &argv[i + 1];
            let new = if arg == "--port" {
                port_for(next)
            } else {
                (next == "0.0.0.0" || next == "::").then(|| "127.0.0.1".to_string())
            };
            if let Some(new) = new {
                argv[i + 1] = new;
            }
            i += 2;
            continue;
        }
        if let Some(v) = arg.strip_prefix("--port=") {
            if let Some(p) = port_for(v) {
                argv[i] = format!("--port={p}");
            }
        } else if let Some(v) = arg.strip_prefix("--host=") {
            if v == "0.0.0.0" || v == "::" {
                argv[i] = "--host=127.0.0.1".into();
            }
        } else {
            argv[i] = rewrite_path(&arg, mounts);
        }
        i += 1;
    }
}

/// Rewrites a value that is a mount path, lies under one, or is `--flag=<such a path>`.
pub fn rewrite_path(value: &str, mounts: &[(String, PathBuf)]) -> String {
    let (prefix, path) = match value.split_once('=') {
        Some((flag, path)) if flag.starts_with('-') => (format!("{flag}="), path),
        _ => (String::new(), value),
    };
    for (mount, host) in mounts {
        if path == mount {
            return format!("{prefix}{}", host.display());
        }
        if let Some(rest) = path.strip_prefix(mount.as_str())
            && rest.starts_with('/')
        {
            return format!("{prefix}{}{rest}", host.display());
        }
    }
    value.to_string()
}

fn plan_probe(
    probe: &Probe,
    ports: &[PortMapping],
    what: &str,
    container: &str,
) -> Result<ProbePlan, PlanError> {
    let resolve = |port: &IntOrString| -> Result<u16, PlanError> {
        let found = match port {
            IntOrString::Int(n) => ports.iter().find(|p| p.container_port == *n),
            IntOrString::String(name) => ports.iter().find(|p| p.name.as_deref() == Some(name)),
        };
        found.map(|p| p.host_port).ok_or_else(|| {
            PlanError::Config(format!(
                "container {container:?}: {what} probe port {port:?} is not a declared container port"
            ))
        })
    };
    let action = if let Some(http) = &probe.http_get {
        if http.scheme.as_deref().is_some_and(|s| s != "HTTP") {
            return Err(PlanError::Config(format!(
                "container {container:?}: {what} probe: only HTTP httpGet probes are supported"
            )));
        }
        ProbeAction::HttpGet {
            port: resolve(&http.port)?,
            path: http.path.clone().unwrap_or_else(|| "/".into()),
            headers: http
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
        }
    } else if let Some(tcp) = &probe.tcp_socket {
        ProbeAction::TcpSocket {
            port: resolve(&tcp.port)?,
        }
    } else {
        return Err(PlanError::Config(format!(
            "container {container:?}: {what} probe: only httpGet and tcpSocket probes are supported"
        )));
    };
    let secs = |v: Option<i32>, default: i32| Duration::from_secs(v.unwrap_or(default).max(0) as u64);
    Ok(ProbePlan {
        action,
        initial_delay: secs(probe.initial_delay_seconds, 0),
        period: secs(probe.period_seconds, 10).max(Duration::from_secs(1)),
        timeout: secs(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
        success_threshold: probe.success_threshold.unwrap_or(1).max(1) as u32,
        failure_threshold: probe.failure_threshold.unwrap_or(3).max(1) as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).expect("fixture pod")
    }

    fn images() -> ImageMap {
        ImageMap(vec![("cloudify".into(), PathBuf::from("/opt/bin/cloudify"))])
    }

    /// The pod the operator's Deployment template produces (operator/src/build/deployment.rs).
    const OPERATOR_POD: &str = r#"
metadata: {name: era5-abc12-xyz, namespace: data, uid: u-1}
spec:
  volumes:
    - {name: config, configMap: {name: era5}}
    - {name: cache, emptyDir: {}}
    - {name: tmp, emptyDir: {}}
    - {name: data-0, persistentVolumeClaim: {claimName: era5-data, readOnly: true}}
  containers:
    - name: server
      image: ghcr.io/example/cloudify:0.1.0
      command: [cloudify]
      args: [serve, --config, /etc/cloudify/cloudify.yaml, --host, 0.0.0.0, --port, "9000",
             --public-url, "http://x/datasets/era5"]
      ports: [{name: http, containerPort: 9000, protocol: TCP}]
      env:
        - {name: CLOUDIFY_CACHE_DIR, value: /var/cache/cloudify}
        - name: POD
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        - name: NS
          valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
        - name: TOKEN
          valueFrom: {secretKeyRef: {name: creds, key: token}}
        - name: LEVEL
          valueFrom: {configMapKeyRef: {name: era5, key: level}}
        - {name: GREETING, value: "pod $(POD) in $(NS), $$(POD) $(MISSING)"}
      livenessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 10, timeoutSeconds: 5, failureThreshold: 3}
      readinessProbe: {httpGet: {path: /readyz, port: http}, periodSeconds: 5, timeoutSeconds: 2, failureThreshold: 3}
      volumeMounts:
        - {name: config, mountPath: /etc/cloudify, readOnly: true}
        - {name: cache, mountPath: /var/cache/cloudify}
        - {name: tmp, mountPath: /tmp}
        - {name: data-0, mountPath: /data, readOnly: true}
"#;

    fn sources() -> Sources {
        let cm: ConfigMap = serde_yaml::from_str(
            "metadata: {name: era5}\ndata: {cloudify.yaml: 'datasets: []', level: debug}",
        )
        .expect("cm");
        let secret = Secret {
            data: Some(BTreeMap::from([(
                "token".to_string(),
                ByteString(b"s3cr3t".to_vec()),
            )])),
            ..Secret::default()
        };
        Sources {
            config_maps: BTreeMap::from([("era5".into(), cm)]),
            secrets: BTreeMap::from([("creds".into(), secret)]),
        }
    }

    #[test]
    fn operator_pod_becomes_a_local_process() {
        let dir = Path::new("/state/pods/data_era5-abc12-xyz");
        let plan = plan_pod(
            &pod(OPERATOR_POD),
            &sources(),
            &images(),
            dir,
            &BTreeMap::from([(9000, 41000)]),
            &[
                ("PATH".into(), "/usr/bin".into()),
                ("SECRET_HOST_VAR".into(), "x".into()),
            ],
        )
        .expect("plan");
        let c = &plan.containers[0];
        assert_eq!(c.program, PathBuf::from("/opt/bin/cloudify"));
        assert_eq!(
            c.args,
            [
                "serve",
                "--config",
                "/state/pods/data_era5-abc12-xyz/volumes/config/cloudify.yaml",
                "--host",
                "127.0.0.1",
                "--port",
                "41000",
                "--public-url",
                "http://x/datasets/era5"
            ]
        );
        let env: BTreeMap<_, _> = c.env.iter().cloned().collect();
        assert_eq!(
            env["CLOUDIFY_CACHE_DIR"],
            "/state/pods/data_era5-abc12-xyz/volumes/cache"
        );
        assert_eq!(env["POD"], "era5-abc12-xyz");
        assert_eq!(env["NS"], "data");
        assert_eq!(env["TOKEN"], "s3cr3t");
        assert_eq!(env["LEVEL"], "debug");
        assert_eq!(env["GREETING"], "pod era5-abc12-xyz in data, $(POD) $(MISSING)");
        assert_eq!(env["PATH"], "/usr/bin");
        assert_eq!(env["TMPDIR"], "/state/pods/data_era5-abc12-xyz/tmp");
        assert!(!env.contains_key("SECRET_HOST_VAR"), "host env must not leak in");
        assert_eq!(
            c.readiness
                .as_ref()
                .map(|p| (&p.action, p.period, p.failure_threshold)),
            Some((
                &ProbeAction::HttpGet {
                    port: 41000,
                    path: "/readyz".into(),
                    headers: vec![]
                },
                Duration::from_secs(5),
                3
            ))
        );
        assert_eq!(
            c.liveness.as_ref().map(|p| p.timeout),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            plan.files,
            [
                PlannedFile {
                    path: dir.join("volumes/config/cloudify.yaml"),
                    contents: b"datasets: []".to_vec(),
                    mode: 0o644
                },
                PlannedFile {
                    path: dir.join("volumes/config/level"),
                    contents: b"debug".to_vec(),
                    mode: 0o644
                }
            ]
        );
        assert!(plan.dirs.contains(&dir.join("volumes/cache")));
        assert!(plan.dirs.contains(&dir.join("volumes/tmp")));
    }

    #[test]
    fn mount_paths_in_config_files_are_rewritten_at_path_boundaries_only() {
        let mounts = vec![
            (
                "/etc/cloudify-access".to_string(),
                PathBuf::from("/p/volumes/access"),
            ),
            ("/data".to_string(), PathBuf::from("/p/volumes/data")),
        ];
        let text = r#"{"tokenFile": "/etc/cloudify-access/sha256", "sources": ["/data/a.nc", "/data"],
            "x": "/database/b.nc", "u": "http://h/data/c.nc", "y": /data/d.nc, "z": /etc/cloudify-accessory}"#;
        assert_eq!(
            rewrite_text(text, &mounts),
            r#"{"tokenFile": "/p/volumes/access/sha256", "sources": ["/p/volumes/data/a.nc", "/p/volumes/data"],
            "x": "/database/b.nc", "u": "http://h/data/c.nc", "y": /p/volumes/data/d.nc, "z": /etc/cloudify-accessory}"#
        );
        assert_eq!(rewrite_text("/data", &mounts), "/p/volumes/data");
        assert_eq!(rewrite_text("é /data/ü", &mounts), "é /p/volumes/data/ü");
    }

    #[test]
    fn a_config_file_naming_a_mounted_secret_reads_it_where_the_runtime_put_it() {
        let p = pod(r#"
metadata: {name: private-abc, namespace: data}
spec:
  volumes:
    - {name: config, configMap: {name: era5}}
    - {name: access, secret: {secretName: creds}}
  containers:
    - name: server
      image: cloudify
      args: [serve, --config, /etc/cloudify/cloudify.yaml]
      volumeMounts:
        - {name: config, mountPath: /etc/cloudify}
        - {name: access, mountPath: /etc/cloudify-access}
"#);
        let mut src = sources();
        let cm: ConfigMap = serde_yaml::from_str(
            "metadata: {name: era5}\ndata: {cloudify.yaml: 'tokenFile: /etc/cloudify-access/token'}",
        )
        .expect("cm");
        src.config_maps.insert("era5".into(), cm);
        let dir = Path::new("/state/pods/p");
        let plan = plan_pod(&p, &src, &images(), dir, &BTreeMap::new(), &[]).expect("plan");
        let file = |name: &str| {
            plan.files
                .iter()
                .find(|f| f.path == dir.join(name))
                .map(|f| String::from_utf8_lossy(&f.contents).into_owned())
        };
        assert_eq!(
            file("volumes/config/cloudify.yaml").as_deref(),
            Some("tokenFile: /state/pods/p/volumes/access/token")
        );
        // a Secret's bytes are its own
        assert_eq!(file("volumes/access/token").as_deref(), Some("s3cr3t"));
    }

    #[test]
    fn missing_sources_and_images_are_reported_like_the_kubelet() {
        let p = pod(OPERATOR_POD);
        let ports = BTreeMap::from([(9000, 41000)]);
        let dir = Path::new("/s");
        let err = plan_pod(&p, &Sources::default(), &images(), dir, &ports, &[]).unwrap_err();
        assert_eq!(err.reason(), "CreateContainerConfigError");
        assert!(err.to_string().contains("configmap \"era5\" not found"), "{err}");

        let err = plan_pod(&p, &sources(), &ImageMap::default(), dir, &ports, &[]).unwrap_err();
        assert_eq!(err, PlanError::Image("ghcr.io/example/cloudify:0.1.0".into()));
        assert_eq!(err.reason(), "ErrImagePull");

        let mut s = sources();
        s.secrets.clear();
        let err = plan_pod(&p, &s, &images(), dir, &ports, &[]).unwrap_err();
        assert!(
            err.to_string().contains("key \"token\" of secret \"creds\""),
            "{err}"
        );
    }

    #[test]
    fn image_patterns_match_the_repository_not_the_tag() {
        let m = ImageMap(vec![
            ("cloudify".into(), "/a".into()),
            ("python".into(), "/usr/bin/python3".into()),
        ]);
        assert_eq!(m.resolve("cloudify"), Some(Path::new("/a")));
        assert_eq!(m.resolve("localhost:5000/x/cloudify:v1"), Some(Path::new("/a")));
        assert_eq!(m.resolve("cloudify@sha256:abc"), Some(Path::new("/a")));
        assert_eq!(
            m.resolve("docker.io/library/python:3.12"),
            Some(Path::new("/usr/bin/python3"))
        );
        assert_eq!(m.resolve("nginx:cloudify"), None, "a tag is not the image name");
        assert!(ImageMap::parse_entry("x").is_err());
        assert!(ImageMap::parse_entry("=x").is_err());
        assert_eq!(
            ImageMap::parse_entry("a=/b=c"),
            Ok(("a".into(), PathBuf::from("/b=c")))
        );
    }

    #[test]
    fn command_args_ports_and_paths_are_rewritten() {
        let p = pod(r#"
metadata: {name: web, namespace: default}
spec:
  volumes: [{name: conf, secret: {secretName: tls, items: [{key: crt, path: certs/tls.crt, mode: 256}]}}]
  containers:
    - name: web
      image: python:3
      command: [python3, -m, http.server]
      args: ["--port=8000", "--dir=/conf/certs", "/conf", "/confx", "8000", "$(PORT)", "$(CERTS)"]
      ports: [{containerPort: 8000}]
      env: [{name: PORT, value: "8000"}, {name: OTHER, value: "8000"}, {name: CERTS, value: /conf/certs}]
      readinessProbe: {tcpSocket: {port: 8000}}
      volumeMounts: [{name: conf, mountPath: /conf/}]
"#);
        let mut s = Sources::default();
        s.secrets.insert(
            "tls".into(),
            Secret {
                data: Some(BTreeMap::from([("crt".into(), ByteString(b"PEM".to_vec()))])),
                ..Secret::default()
            },
        );
        let m = ImageMap(vec![("python".into(), "/usr/bin/python3".into())]);
        let plan = plan_pod(&p, &s, &m, Path::new("/p"), &BTreeMap::from([(8000, 5555)]), &[]).expect("plan");
        let c = &plan.containers[0];
        assert_eq!(
            c.args,
            [
                "-m",
                "http.server",
                "--port=5555",
                "--dir=/p/volumes/conf/certs",
                "/p/volumes/conf",
                "/confx",
                "8000",
                "5555",
                "/p/volumes/conf/certs"
            ]
        );
        let env: BTreeMap<_, _> = c.env.iter().cloned().collect();
        assert_eq!(env["PORT"], "5555");
        assert_eq!(env["OTHER"], "8000");
        assert_eq!(
            c.readiness.as_ref().map(|r| r.action.clone()),
            Some(ProbeAction::TcpSocket { port: 5555 })
        );
        assert_eq!(
            c.readiness.as_ref().map(|r| r.period),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            plan.files,
            [PlannedFile {
                path: "/p/volumes/conf/certs/tls.crt".into(),
                contents: b"PEM".to_vec(),
                mode: 0o400
            }]
        );
    }

    #[test]
    fn probe_on_an_undeclared_port_is_a_config_error() {
        let p = pod(r#"
metadata: {name: web}
spec:
  containers:
    - {name: web, image: cloudify, ports: [{containerPort: 80}], livenessProbe: {httpGet: {port: metrics}}}
"#);
        let err = plan_pod(
            &p,
            &Sources::default(),
            &images(),
            Path::new("/p"),
            &BTreeMap::from([(80, 1)]),
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("liveness probe port"), "{err}");
    }
}
