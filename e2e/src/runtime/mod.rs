//! Local pod runtime: Deployment pods as local processes.
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
