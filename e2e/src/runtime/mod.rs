//! Local pod runtime: Deployment pods as local processes — the kubelet, Deployment,
//! EndpointSlice and HPA controllers' parts of a cluster, for one local "node".
//!
//! Like those components it is an ordinary API client ([`controller::run`] takes a kube-rs
//! `Client`), so it works against the emulator or any API server.
//!
//! - [`plan`]: pod spec → process plan (image → binary table, command/args, env incl.
//!   `valueFrom`, ConfigMap/Secret/emptyDir volumes as files with mount-path rewriting, port
//!   remapping). Its module docs describe every translation.
//! - [`supervisor`]: one container as a process with readiness/liveness/startup probes and
//!   restarts with backoff (`restartCount`, `lastState`).
//! - [`rollout`]: scaling and rolling updates (pods owned by the Deployment directly, told
//!   apart by `pod-template-hash`; no ReplicaSets) and Deployment status.
//! - [`hpa`]: autoscaling/v2 arithmetic on a load the tests set with the annotation
//!   `e2e.cloudify.io/cpu-load` on the HPA; the runtime scales the Deployment through its
//!   `/scale` subresource with field manager `horizontal-pod-autoscaler`, as the real HPA.
//! - [`proxy`]: a service proxy for clients outside the platform that need a Service by name.
//! - [`cluster_ip`]: Service DNS names in pods' args and env become loopback listeners that
//!   forward each connection to a ready endpoint (cluster DNS + kube-proxy for pods).
//!
//! # How a Service port reaches a pod
//! Every pod runs on 127.0.0.1 (`status.podIP`), and each container port gets its own free
//! loopback port, so two replicas never collide. A Service port's `targetPort` (number or
//! port name) is resolved per pod to that pod's loopback port, and published as one
//! EndpointSlice per pod (`<service>-<pod>`, labelled `kubernetes.io/service-name`, because
//! a slice has one port list for all its endpoints) plus one `Endpoints` subset per pod. The
//! Service's own `port` and cluster IP are not reachable; consumers (the ingress agent, the
//! proxy) connect to the endpoint ports. `containerStatuses[].containerID` is
//! `local://<pid>`, so tests can find a pod's process (e.g. to SIGKILL it); its output is in
//! `<state>/pods/<namespace>_<pod>_<uid prefix>/<container>.log`.
//!
//! Deleted pods leave the endpoints at once and get SIGTERM after
//! [`controller::RuntimeOptions::drain`] (like a `preStop` sleep), then SIGKILL after the
//! grace period.
pub mod cluster_ip;
pub mod controller;
pub mod hpa;
pub mod plan;
pub mod proxy;
pub mod rollout;
pub mod supervisor;

use std::net::{Ipv4Addr, TcpListener};

/// Sends a signal to a process we started.
pub fn signal(pid: u32, sig: rustix::process::Signal) -> std::io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "invalid pid"))?;
    rustix::process::kill_process(pid, sig).map_err(std::io::Error::from)
}

/// A currently free loopback port. Another process may take it before the caller binds it;
/// callers that spawn a listener retry on failure (a restart picks a new port).
pub fn free_loopback_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}
