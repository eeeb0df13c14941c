//! Container supervision with real processes: `python3 -m http.server` as the "image", probes
//! against it, restart after SIGKILL, kill-and-restart on failing liveness.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cloudify_e2e::runtime::plan::{ImageMap, Sources, plan_pod};
use cloudify_e2e::runtime::supervisor::{Snapshot, State, Supervisor, SupervisorOptions};
use cloudify_e2e::runtime::{free_loopback_port, signal};
use k8s_openapi::api::core::v1::Pod;

fn python_pod(liveness_path: &str) -> Pod {
    serde_yaml::from_str(&format!(
        r#"
metadata: {{name: web-1, namespace: default}}
spec:
  containers:
    - name: web
      image: docker.io/library/python:3.12
      command: [python3, -m, http.server, --bind, 127.0.0.1]
      args: ["8000"]
      ports: [{{name: http, containerPort: 8000}}]
      readinessProbe: {{httpGet: {{path: /, port: http}}, periodSeconds: 10}}
      livenessProbe: {{httpGet: {{path: {liveness_path}, port: 8000}}, periodSeconds: 1, initialDelaySeconds: 1, failureThreshold: 2}}
"#
    ))
    .expect("pod")
}

fn start(pod: &Pod, dir: &Path) -> (Supervisor, u16) {
    let port = free_loopback_port().expect("port");
    let images = ImageMap(vec![("python".into(), PathBuf::from("/usr/bin/python3"))]);
    let env: Vec<(String, String)> = std::env::vars().collect();
    let plan = plan_pod(
        pod,
        &Sources::default(),
        &images,
        dir,
        &BTreeMap::from([(8000, port)]),
        &env,
    )
    .expect("plan");
    // The http.server takes its port as a positional arg, which the plan leaves alone, so
    // pass the mapped one here as a "--port"-less program would get it through $(PORT).
    let mut c = plan.containers[0].clone();
    let last = c.args.len() - 1;
    c.args[last] = port.to_string();
    let opts = SupervisorOptions {
        backoff_initial: Duration::from_millis(200),
        probe_period_max: Some(Duration::from_millis(200)),
        ..SupervisorOptions::default()
    };
    (Supervisor::spawn(c, dir.join("web.log"), opts), port)
}

async fn wait_for(sup: &Supervisor, what: &str, f: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let mut rx = sup.subscribe();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = rx.borrow_and_update().clone();
        if f(&s) {
            return s;
        }
        if tokio::time::timeout_at(deadline.into(), rx.changed())
            .await
            .is_err()
        {
            panic!("timed out waiting for {what}; last {s:?}");
        }
    }
}

fn pid(s: &Snapshot) -> Option<u32> {
    match s.state {
        State::Running { pid, .. } => Some(pid),
        _ => None,
    }
}

#[tokio::test]
async fn killed_process_is_restarted_and_becomes_ready_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sup, port) = start(&python_pod("/"), dir.path());
    let s = wait_for(&sup, "ready", |s| s.ready).await;
    let first = pid(&s).expect("running");
    assert_eq!(s.restart_count, 0);
    let body = reqwest::get(format!("http://127.0.0.1:{port}/"))
        .await
        .expect("get")
        .status();
    assert_eq!(body.as_u16(), 200);

    signal(first, rustix::process::Signal::KILL).expect("kill");
    let s = wait_for(&sup, "not ready after kill", |s| !s.ready).await;
    assert!(s.restart_count <= 1);
    let s = wait_for(&sup, "restarted and ready", |s| s.ready && s.restart_count == 1).await;
    assert_ne!(pid(&s), Some(first));
    let last = s.last_state.clone().expect("last state");
    assert_eq!(
        (last.exit_code, last.signal, last.reason.as_str()),
        (137, Some(9), "Error")
    );

    sup.stop().await;
    let gone = rustix::process::test_kill_process(
        rustix::process::Pid::from_raw(pid(&s).unwrap_or(0) as i32).expect("pid"),
    );
    assert!(gone.is_err(), "stop() leaves no process behind");
}

#[tokio::test]
async fn failing_liveness_kills_and_restarts_the_container() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sup, _port) = start(&python_pod("/no-such-file"), dir.path());
    let s = wait_for(&sup, "restart after liveness failures", |s| s.restart_count >= 1).await;
    let last = s.last_state.expect("last state");
    assert_eq!(last.reason, "Unhealthy");
    assert!(
        last.message
            .unwrap_or_default()
            .contains("liveness probe failed 2 times")
    );
    sup.stop().await;
}

#[tokio::test]
async fn a_binary_that_cannot_start_crash_loops_with_backoff() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut pod = python_pod("/");
    if let Some(spec) = pod.spec.as_mut() {
        spec.containers[0].image = Some("missing:1".into());
    }
    let images = ImageMap(vec![("missing".into(), PathBuf::from("/nonexistent/binary"))]);
    let plan = plan_pod(
        &pod,
        &Sources::default(),
        &images,
        dir.path(),
        &BTreeMap::from([(8000, 1)]),
        &[],
    )
    .expect("plan");
    let sup = Supervisor::spawn(
        plan.containers[0].clone(),
        dir.path().join("x.log"),
        SupervisorOptions {
            backoff_initial: Duration::from_millis(50),
            ..SupervisorOptions::default()
        },
    );
    let s = wait_for(&sup, "two restarts", |s| s.restart_count >= 2).await;
    assert!(
        matches!(&s.state, State::Waiting { reason, .. } if reason == "CrashLoopBackOff"),
        "{s:?}"
    );
    let last = s.last_state.expect("last");
    assert_eq!(last.reason, "StartError");
    assert!(last.message.unwrap_or_default().contains("/nonexistent/binary"));
    sup.stop().await;
}
