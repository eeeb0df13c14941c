//! `cloudify-e2e up` as a user runs it: the binary in the foreground, `kubectl apply` of a
//! minimal CloudifyDataset, the Zarr metadata read through the nginx ingress URL, SIGTERM
//! stops everything (no pod process left behind).
//!
//! Needs the `cloudify` and `cloudify-operator` binaries: `CLOUDIFY_BIN` (e2e/test.sh builds
//! the release binaries and sets it) and `CLOUDIFY_OPERATOR_BIN`, by default the
//! `cloudify-operator` next to `CLOUDIFY_BIN`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn binaries() -> (PathBuf, PathBuf) {
    let cloudify = match std::env::var_os("CLOUDIFY_BIN") {
        Some(p) if Path::new(&p).is_file() => PathBuf::from(p),
        other => panic!(
            "this test needs the cloudify binary: `cargo build --release` and set CLOUDIFY_BIN \
             (e2e/test.sh does both); CLOUDIFY_BIN is {other:?}"
        ),
    };
    let operator = std::env::var_os("CLOUDIFY_OPERATOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| cloudify.with_file_name("cloudify-operator"));
    assert!(
        operator.is_file(),
        "this test needs the cloudify-operator binary at {} (set CLOUDIFY_OPERATOR_BIN)",
        operator.display()
    );
    (cloudify, operator)
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[test]
fn up_serves_a_dataset_applied_with_kubectl_and_stops_cleanly() {
    let (cloudify, operator) = binaries();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let state = tempfile::tempdir().expect("tempdir");
    let log = std::fs::File::create(state.path().join("up.log")).expect("log");
    let mut up = Command::new(env!("CARGO_BIN_EXE_cloudify-e2e"))
        .arg("up")
        .arg("--state")
        .arg(state.path())
        .arg("--cloudify-bin")
        .arg(&cloudify)
        .arg("--operator-bin")
        .arg(&operator)
        .arg("--crds")
        .arg(repo.join("crds"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start cloudify-e2e up");
    let up_log = || std::fs::read_to_string(state.path().join("up.log")).unwrap_or_default();
    let wait = |what: &str, up: &mut std::process::Child, f: &mut dyn FnMut() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !f() {
            if let Ok(Some(status)) = up.try_wait() {
                panic!(
                    "cloudify-e2e up exited ({status}) while waiting for {what}:\n{}",
                    up_log()
                );
            }
            if Instant::now() > deadline {
                let _ = up.kill();
                panic!("timed out waiting for {what}:\n{}", up_log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let ingress_file = state.path().join("ingress-url");
    wait("ingress-url", &mut up, &mut || ingress_file.exists());
    let ingress = std::fs::read_to_string(&ingress_file)
        .expect("ingress-url")
        .trim()
        .to_string();
    let kubeconfig = state.path().join("kubeconfig");
    assert!(kubeconfig.is_file(), "kubeconfig is written with ingress-url");

    let data = std::path::absolute(repo.join("server/src/source/testdata/cdf1.nc")).expect("path");
    let manifest = state.path().join("dataset.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: cloudify.io/v1alpha1\nkind: CloudifyDataset\nmetadata: {{name: cdf1}}\nspec:\n  dataset:\n    name: cdf1\n    sources: [\"file://{}\"]\n",
            data.display()
        ),
    )
    .expect("manifest");
    let applied = Command::new("/usr/bin/kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("apply")
        .arg("-f")
        .arg(&manifest)
        .output()
        .expect("kubectl");
    assert!(
        applied.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&applied.stderr)
    );

    let url = format!("{ingress}/datasets/cdf1/zarr/.zmetadata");
    wait("zarr metadata through the ingress", &mut up, &mut || {
        Command::new("python3")
            .args(["-c", "import sys,urllib.request; b=urllib.request.urlopen(sys.argv[1]).read(); sys.exit(0 if b'zarr_consolidated_format' in b else 1)"])
            .arg(&url)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });

    // The operator reports the ingress URL in status.url (the Ready condition, registration
    // and the rest of the lifecycle are covered by e2e/pytests/test_platform.py).
    let want = format!("{ingress}/datasets/cdf1/zarr");
    wait("status.url", &mut up, &mut || {
        Command::new("/usr/bin/kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["get", "cds/cdf1", "-o", "jsonpath={.status.url}"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout) == want)
    });

    let pids: Vec<u32> = std::fs::read_dir(state.path().join("runtime/pods"))
        .expect("pods dir")
        .filter_map(|e| {
            std::fs::read_to_string(e.ok()?.path().join("server.pid"))
                .ok()?
                .trim()
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(pids.len(), 1, "one server pod");
    assert!(alive(pids[0]));

    cloudify_e2e::runtime::signal(up.id(), rustix::process::Signal::TERM).expect("SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = up.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "up did not stop within 30 s:\n{}",
            up_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "up exited with {status}:\n{}", up_log());
    assert!(!alive(pids[0]), "pod process left behind");
    assert!(!ingress_file.exists(), "ingress-url removed on stop");
}
