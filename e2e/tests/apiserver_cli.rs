//! `cloudify-e2e apiserver`: the emulator as a process, as `cloudify-e2e up` and people trying
//! the platform by hand run it — listen/kubeconfig files, SIGTERM, state file across restarts.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn start(dir: &Path) -> Child {
    let listen = dir.join("url");
    let _ = std::fs::remove_file(&listen);
    let child = Command::new(env!("CARGO_BIN_EXE_cloudify-e2e"))
        .args(["apiserver", "--addr", "127.0.0.1:0"])
        .arg("--listen-file")
        .arg(&listen)
        .arg("--kubeconfig")
        .arg(dir.join("kubeconfig"))
        .arg("--state-file")
        .arg(dir.join("state.json"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start cloudify-e2e apiserver");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&listen).is_ok_and(|u| u.starts_with("http://127.0.0.1:")) {
        assert!(
            Instant::now() < deadline,
            "the emulator did not write its listen file"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn kubectl(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
        .args(args)
        .env("KUBECONFIG", dir.join("kubeconfig"))
        .env("HOME", dir)
        .output()
        .expect("run kubectl (set KUBECTL to its path)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn terminate(mut child: Child) {
    let ok = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .expect("kill")
        .success();
    assert!(ok);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status after SIGTERM: {status}");
            return;
        }
        assert!(Instant::now() < deadline, "the emulator did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn cli_serves_kubectl_and_keeps_state_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let child = start(dir.path());
    let (ok, out, err) = kubectl(dir.path(), &["create", "configmap", "kept", "--from-literal=a=b"]);
    assert!(ok, "{out}{err}");
    let (ok, uid, err) = kubectl(
        dir.path(),
        &["get", "configmap", "kept", "-o", "jsonpath={.metadata.uid}"],
    );
    assert!(ok && !uid.is_empty(), "{err}");
    terminate(child);
    let state = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
    assert!(state.contains("\"kept\""), "state file lacks the ConfigMap");

    let child = start(dir.path());
    let (ok, again, err) = kubectl(
        dir.path(),
        &[
            "get",
            "configmap",
            "kept",
            "-o",
            "jsonpath={.metadata.uid} {.data.a}",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(again, format!("{uid} b"));
    terminate(child);
}
