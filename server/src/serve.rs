//! Listening: port or port range, optional TLS, the listen file, graceful shutdown.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::http::{AppState, router};

/// Where and how to listen.
#[derive(Debug, Clone)]
pub struct ListenOpts {
    pub host: String,
    pub port: u16,
    /// Inclusive port range; the first free port is taken (as on shared HPC nodes).
    pub port_range: Option<(u16, u16)>,
    pub listen_file: Option<PathBuf>,
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// Parses "9000-9100".
pub fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("'{s}' is not a range like 9000-9100"))?;
    let a: u16 = a
        .trim()
        .parse()
        .map_err(|_| format!("'{a}' is not a port number"))?;
    let b: u16 = b
        .trim()
        .parse()
        .map_err(|_| format!("'{b}' is not a port number"))?;
    if a > b || a == 0 {
        return Err(format!("'{s}': start must be > 0 and <= end"));
    }
    Ok((a, b))
}

fn bind(opts: &ListenOpts) -> anyhow::Result<TcpListener> {
    let ip: IpAddr = opts
        .host
        .parse()
        .or_else(|_| {
            use std::net::ToSocketAddrs;
            (opts.host.as_str(), 0)
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .map(|a| a.ip())
                .ok_or(())
        })
        .map_err(|_| anyhow::anyhow!("--host '{}' is not an address or resolvable name", opts.host))?;
    let (lo, hi) = opts.port_range.unwrap_or((opts.port, opts.port));
    let mut last_err = None;
    for port in lo..=hi {
        match TcpListener::bind(SocketAddr::new(ip, port)) {
            Ok(l) => {
                l.set_nonblocking(true)?;
                return Ok(l);
            }
            Err(e) => last_err = Some(e),
        }
    }
    match last_err {
        Some(e) if lo == hi => bail!("cannot listen on {ip}:{lo}: {e}"),
        Some(e) => bail!("no free port in {lo}-{hi} on {ip} (last error: {e})"),
        None => bail!("empty port range"),
    }
}

/// Host name to advertise when listening on a wildcard address.
fn advertised_host(ip: IpAddr, configured: &str) -> String {
    if !ip.is_unspecified() {
        return match ip {
            IpAddr::V6(v6) => format!("[{v6}]"),
            IpAddr::V4(v4) => v4.to_string(),
        };
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| configured.to_string())
}

/// Writes the listen file atomically, so a reader never sees a partial URL.
fn write_listen_file(path: &Path, url: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{url}\n")).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing listen file {}", path.display()))?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Serves until SIGINT/SIGTERM, then drains in-flight requests (at most 10 s).
pub async fn run(state: Arc<AppState>, opts: ListenOpts) -> anyhow::Result<()> {
    run_app(opts, |_url| Ok(router(state))).await
}

/// Like [`run`] for any router. `make` is called once listening, with the URL the server
/// announces, so routers and background tasks (catalog registration) can use it; returns
/// after the graceful shutdown.
pub async fn run_app(
    opts: ListenOpts,
    make: impl FnOnce(&str) -> anyhow::Result<axum::Router>,
) -> anyhow::Result<()> {
    let listener = bind(&opts)?;
    let addr = listener.local_addr()?;
    let scheme = if opts.tls.is_some() { "https" } else { "http" };
    let url = format!(
        "{scheme}://{}:{}",
        advertised_host(addr.ip(), &opts.host),
        addr.port()
    );
    let app = make(&url)?;
    let handle = axum_server::Handle::new();
    let h2 = handle.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: draining requests");
        h2.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    let listen_file = opts.listen_file.clone();
    let announce = |url: &str| -> anyhow::Result<()> {
        tracing::info!(%url, "listening");
        println!("cloudify listening on {url}");
        if let Some(f) = &listen_file {
            write_listen_file(f, url)?;
        }
        Ok(())
    };
    let svc = app.into_make_service();
    match &opts.tls {
        Some((cert, key)) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .with_context(|| {
                    format!(
                        "loading TLS certificate {} / key {}",
                        cert.display(),
                        key.display()
                    )
                })?;
            announce(&url)?;
            axum_server::from_tcp_rustls(listener, config)?
                .handle(handle)
                .serve(svc)
                .await?;
        }
        None => {
            announce(&url)?;
            axum_server::from_tcp(listener)?.handle(handle).serve(svc).await?;
        }
    }
    if let Some(f) = &opts.listen_file {
        let _ = std::fs::remove_file(f);
    }
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("9000-9100"), Ok((9000, 9100)));
        assert!(parse_port_range("9100-9000").is_err());
        assert!(parse_port_range("x-9000").is_err());
        assert!(parse_port_range("9000").is_err());
    }

    #[test]
    fn range_skips_busy_ports() {
        let busy = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = busy.local_addr().unwrap().port();
        let opts = ListenOpts {
            host: "127.0.0.1".into(),
            port: 0,
            port_range: Some((p, p.saturating_add(20))),
            listen_file: None,
            tls: None,
        };
        let l = bind(&opts).unwrap();
        assert_ne!(l.local_addr().unwrap().port(), p);
    }
}
