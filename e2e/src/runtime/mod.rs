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

/// A currently free loopback port, below the kernel's ephemeral range.
///
/// Why not `bind(0)`: that hands out a port of the ephemeral range, which every outgoing
/// connection of the machine draws its source port from. The tests make thousands of
/// short connections (no keep-alive through the ingress), so between our pick and the
/// listener's bind an outgoing connection can take the port, or one in TIME_WAIT can sit on
/// it. Ports below the range are only ever taken by listeners. Each process walks the range
/// from its own starting point, so two picks in one process never repeat a port and two
/// processes rarely meet. Another process may still take the port before the caller binds
/// it; callers that spawn a listener retry on failure (a restart picks a new port).
pub fn free_loopback_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (low, high) = (PICK_LOW, ephemeral_low.min(65536));
    if high > low + 1000 {
        let span = high - low;
        let start = std::process::id().wrapping_mul(7919) % span;
        for _ in 0..span {
            let port = low + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
            let Ok(port) = u16::try_from(port) else { continue };
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return Ok(port);
            }
        }
    }
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// The lowest port [`free_loopback_port`] hands out: above the registered ports most local
/// services use, so the walk rarely meets a listener.
const PICK_LOW: u32 = 20000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picked_ports_are_distinct_bindable_and_outside_the_ephemeral_range() {
        let ports: Vec<u16> = (0..200).map(|_| free_loopback_port().expect("port")).collect();
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len());
        let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .expect("range")
            .split_whitespace()
            .next()
            .and_then(|s| s.parse::<u32>().ok())
            .expect("low");
        // (a machine whose ephemeral range starts low gets kernel-chosen ports instead)
        if low > PICK_LOW + 1000 {
            for p in &ports {
                assert!(u32::from(*p) >= PICK_LOW && u32::from(*p) < low, "{p}");
            }
        }
        TcpListener::bind((Ipv4Addr::LOCALHOST, ports[0])).expect("bindable");
    }
}
