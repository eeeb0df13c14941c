//! The API emulator against the real `kubectl` (1.32 here; `KUBECTL` overrides the binary):
//! server-side and client-side apply of the CRD and the example manifests, `get` with
//! printer columns, `-o yaml`, `wait --for=condition`, selectors, `get -w`, `delete`, and
//! rejection of invalid manifests with messages naming the field.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use cloudify_e2e::apiserver::{Options, Server};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

struct Kubectl {
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

fn kubectl_bin() -> String {
    std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into())
}

impl Kubectl {
    fn new(server: &Server) -> Kubectl {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, server.kubeconfig_yaml()).unwrap();
        Kubectl { dir, kubeconfig }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(kubectl_bin());
        // HOME holds kubectl's discovery cache: one per test, so CRDs are discovered fresh.
        c.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Run kubectl off the async runtime (the emulator serves on it meanwhile).
    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = self.command(args);
        let stdin = stdin.map(String::from);
        let what = args.join(" ");
        tokio::task::spawn_blocking(move || {
            let mut child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {} (set KUBECTL to its path): {e}", kubectl_bin()));
            if let Some(input) = stdin {
                child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
            } else {
                drop(child.stdin.take());
            }
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap_or_else(|e| panic!("kubectl {what}: {e}"))
    }

    /// Run and require success; returns stdout.
    async fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin).await;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "kubectl {} failed:\n{}\n{}",
            args.join(" "),
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Run and require failure; returns stderr.
    async fn fails(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin).await;
        assert!(
            !out.status.success(),
            "kubectl {} unexpectedly succeeded:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).to_string()
    }
}

async fn start() -> (Server, Kubectl) {
    let server = Server::start(Options {
        addr: "127.0.0.1:0".parse().unwrap(),
        state_file: None,
    })
    .await
    .unwrap();
    let k = Kubectl::new(&server);
    (server, k)
}

fn path(p: &str) -> String {
    Path::new(REPO).join(p).to_string_lossy().into_owned()
}

const CLIMATE_NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: climate\n";
const DATASET: &str = "pr-mpi-esm1-2-lr-historical";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_crd_and_examples_gets_waits_and_deletes() {
    let (server, k) = start().await;
    let out = k.ok(&["apply", "--server-side", "-f", &path("crds")], None).await;
    assert!(
        out.contains(
            "customresourcedefinition.apiextensions.k8s.io/cloudifydatasets.cloudify.io serverside-applied"
        ),
        "{out}"
    );
    k.ok(&["apply", "-f", "-"], Some(CLIMATE_NS)).await;

    // Client-side apply: create, then a repeated apply changes nothing.
    let out = k.ok(&["apply", "-f", &path("examples")], None).await;
    assert!(
        out.contains(&format!("cloudifydataset.cloudify.io/{DATASET} created")),
        "{out}"
    );
    let out = k.ok(&["apply", "-f", &path("examples")], None).await;
    assert!(
        out.contains(&format!("cloudifydataset.cloudify.io/{DATASET} unchanged")),
        "{out}"
    );
    // Server-side apply of the same manifests takes over without conflicts (same values).
    let out = k
        .ok(&["apply", "--server-side", "-f", &path("examples")], None)
        .await;
    assert!(
        out.contains(&format!(
            "cloudifydataset.cloudify.io/{DATASET} serverside-applied"
        )),
        "{out}"
    );

    // Printer columns, by short name.
    let out = k.ok(&["get", "cds", "-n", "climate"], None).await;
    let header = out.lines().next().unwrap_or_default();
    assert!(
        header
            .split_whitespace()
            .eq(["NAME", "READY", "URL", "REPLICAS", "COMPUTE", "AGE"]),
        "{out}"
    );
    assert!(out.contains(DATASET), "{out}");

    // `kubectl wait` sees the condition the operator would write through /status.
    let waiter = {
        let cmd = k.command(&[
            "wait",
            "--for=condition=Ready",
            &format!("cds/{DATASET}"),
            "-n",
            "climate",
            "--timeout=30s",
        ]);
        tokio::task::spawn_blocking(move || {
            let mut cmd = cmd;
            cmd.stdin(Stdio::null()).output().unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = r#"{"status":{"url":"http://ingress/datasets/pr/zarr","replicas":1,"conditions":[{"type":"Ready","status":"True","reason":"Serving","message":"1 replica available","lastTransitionTime":"2026-01-01T00:00:00Z"}]}}"#;
    k.ok(
        &[
            "patch",
            "cds",
            DATASET,
            "-n",
            "climate",
            "--subresource=status",
            "--type=merge",
            "-p",
            status,
        ],
        None,
    )
    .await;
    let waited = waiter.await.unwrap();
    assert!(
        waited.status.success(),
        "wait failed: {}",
        String::from_utf8_lossy(&waited.stderr)
    );
    assert!(String::from_utf8_lossy(&waited.stdout).contains("condition met"));

    let out = k.ok(&["get", "cds", DATASET, "-n", "climate"], None).await;
    let row: Vec<&str> = out
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[..4],
        &[DATASET, "True", "http://ingress/datasets/pr/zarr", "1"],
        "{out}"
    );

    let yaml = k
        .ok(&["get", "cds", DATASET, "-n", "climate", "-o", "yaml"], None)
        .await;
    let obj: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(obj["kind"].as_str(), Some("CloudifyDataset"));
    assert_eq!(obj["metadata"]["generation"].as_i64(), Some(1));
    assert_eq!(
        obj["spec"]["replicas"]["min"].as_i64(),
        Some(1),
        "schema default applied"
    );
    assert_eq!(
        obj["status"]["url"].as_str(),
        Some("http://ingress/datasets/pr/zarr")
    );

    // Selectors.
    k.ok(&["label", "cds", DATASET, "-n", "climate", "tier=gold"], None)
        .await;
    let out = k
        .ok(&["get", "cds", "-A", "-l", "tier=gold", "-o", "name"], None)
        .await;
    assert_eq!(out.trim(), format!("cloudifydataset.cloudify.io/{DATASET}"));
    let out = k
        .ok(&["get", "cds", "-A", "-l", "tier!=gold", "-o", "name"], None)
        .await;
    assert!(
        !out.contains(DATASET) && out.contains("tas-access-cm2-ssp585"),
        "{out}"
    );
    let out = k
        .ok(
            &[
                "get",
                "cds",
                "-A",
                "--field-selector",
                &format!("metadata.name={DATASET}"),
                "-o",
                "name",
            ],
            None,
        )
        .await;
    assert_eq!(out.trim(), format!("cloudifydataset.cloudify.io/{DATASET}"));
    let err = k
        .fails(&["get", "cds", "-A", "--field-selector", "spec.image=x"], None)
        .await;
    assert!(err.contains("field label not supported: spec.image"), "{err}");

    // Delete waits for the object to go; afterwards it is NotFound.
    let out = k.ok(&["delete", "cds", DATASET, "-n", "climate"], None).await;
    assert!(
        out.contains(&format!("cloudifydataset.cloudify.io \"{DATASET}\" deleted")),
        "{out}"
    );
    let err = k.fails(&["get", "cds", DATASET, "-n", "climate"], None).await;
    assert!(
        err.contains(&format!("cloudifydatasets.cloudify.io \"{DATASET}\" not found")),
        "{err}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_rejects_invalid_datasets_naming_the_field() {
    let (server, k) = start().await;
    k.ok(&["apply", "--server-side", "-f", &path("crds")], None).await;
    let min_gt_max = "apiVersion: cloudify.io/v1alpha1\nkind: CloudifyDataset\nmetadata:\n  name: bad\nspec:\n  dataset:\n    name: d\n    sources: [\"/d/*.nc\"]\n  replicas: {min: 3, max: 2}\n  resources: {requests: {cpu: \"1\"}}\n";
    for server_side in [false, true] {
        let mut args = vec!["apply", "-f", "-"];
        if server_side {
            args.push("--server-side");
        }
        let err = k.fails(&args, Some(min_gt_max)).await;
        assert!(err.contains("The CloudifyDataset \"bad\" is invalid"), "{err}");
        assert!(err.contains("spec.replicas.min: Invalid value: \"object\": replicas.min must not be greater than replicas.max"), "{err}");
    }
    let unknown = "apiVersion: cloudify.io/v1alpha1\nkind: CloudifyDataset\nmetadata:\n  name: bad\nspec:\n  replicaz: 3\n  dataset:\n    name: d\n    sources: [\"/d/*.nc\"]\n";
    let err = k.fails(&["apply", "-f", "-"], Some(unknown)).await;
    assert!(
        err.contains("strict decoding error: unknown field \"spec.replicaz\""),
        "{err}"
    );
    let missing = "apiVersion: cloudify.io/v1alpha1\nkind: CloudifyDataset\nmetadata:\n  name: bad\nspec:\n  dataset:\n    name: d\n";
    let err = k.fails(&["create", "-f", "-"], Some(missing)).await;
    assert!(err.contains("spec.dataset.sources: Required value"), "{err}");
    // Nothing was stored.
    let out = k.ok(&["get", "cds", "-A", "-o", "name"], None).await;
    assert!(out.trim().is_empty(), "{out}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_builtins_client_side_apply_watch_and_tables() {
    let (server, k) = start().await;
    let deploy = |image: &str, env: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers:\n      - name: web\n        image: {image}\n        ports: [{{containerPort: 8080}}]\n        env: [{{name: A, value: \"{env}\"}}]\n      - name: sidecar\n        image: side:1\n"
        )
    };
    k.ok(&["apply", "-f", "-"], Some(&deploy("web:1", "1"))).await;
    // A second client-side apply sends a strategic merge patch; containers merge by name.
    let out = k.ok(&["apply", "-f", "-"], Some(&deploy("web:2", "2"))).await;
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    let yaml = k.ok(&["get", "deploy", "web", "-o", "yaml"], None).await;
    let d: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    let cs = d["spec"]["template"]["spec"]["containers"].as_sequence().unwrap();
    assert_eq!(cs.len(), 2);
    assert_eq!(cs[0]["image"].as_str(), Some("web:2"));
    assert_eq!(cs[0]["env"][0]["value"].as_str(), Some("2"));
    assert_eq!(d["metadata"]["generation"].as_i64(), Some(2));
    let out = k.ok(&["get", "deploy"], None).await;
    assert!(
        out.lines().next().unwrap_or_default().split_whitespace().eq([
            "NAME",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "AGE"
        ]),
        "{out}"
    );

    // `kubectl get -w` streams changes.
    let mut watcher = k
        .command(&["get", "configmaps", "-w", "-o", "name"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    k.ok(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: watched\ndata: {a: b}\n"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    watcher.kill().unwrap();
    let mut seen = String::new();
    watcher.stdout.take().unwrap().read_to_string(&mut seen).unwrap();
    let _ = watcher.wait();
    assert!(seen.contains("configmap/watched"), "watch output: {seen:?}");

    // Server-side apply conflicts with the client-side manager's fields, until forced.
    let err = k
        .fails(
            &["apply", "--server-side", "--field-manager=other", "-f", "-"],
            Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: watched\ndata: {a: c}\n"),
        )
        .await;
    assert!(
        err.contains("conflict with \"kubectl-client-side-apply\""),
        "{err}"
    );
    assert!(err.contains(".data.a"), "{err}");
    k.ok(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=other",
            "-f",
            "-",
        ],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: watched\ndata: {a: c}\n"),
    )
    .await;
    assert_eq!(
        k.ok(&["get", "cm", "watched", "-o", "jsonpath={.data.a}"], None)
            .await,
        "c"
    );

    // `kubectl scale` goes through the /scale subresource.
    k.ok(&["scale", "deploy", "web", "--replicas=3"], None).await;
    assert_eq!(
        k.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"], None)
            .await,
        "3"
    );
    let described = k.ok(&["describe", "deploy", "web"], None).await;
    assert!(described.contains("Port:       8080/TCP"), "{described}");

    // kubectl's generators send protobuf bodies.
    assert!(
        k.ok(&["create", "namespace", "team"], None)
            .await
            .contains("namespace/team created")
    );
    k.ok(
        &[
            "create",
            "secret",
            "generic",
            "tok",
            "-n",
            "team",
            "--from-literal=token=abc",
        ],
        None,
    )
    .await;
    assert_eq!(
        k.ok(
            &[
                "get",
                "secret",
                "tok",
                "-n",
                "team",
                "-o",
                "jsonpath={.type} {.data.token}"
            ],
            None
        )
        .await,
        "Opaque YWJj"
    );
    k.ok(
        &["create", "configmap", "cfg", "-n", "team", "--from-literal=a=b"],
        None,
    )
    .await;
    assert_eq!(
        k.ok(
            &["get", "cm", "cfg", "-n", "team", "-o", "jsonpath={.data.a}"],
            None
        )
        .await,
        "b"
    );
    let err = k.fails(&["create", "deployment", "x", "--image=y"], None).await;
    assert!(err.contains("send application/json"), "{err}");

    k.ok(&["delete", "deploy", "web"], None).await;
    let err = k.fails(&["get", "deploy", "web"], None).await;
    assert!(err.contains("deployments.apps \"web\" not found"), "{err}");
    server.shutdown().await;
}
