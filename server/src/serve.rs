//! Listening: port or port range, optional TLS, the listen file, and the life of connections:
//! header and idle timeouts, a connection limit, accept errors, graceful shutdown.
//!
//! Connections are served with hyper's automatic HTTP/1 / HTTP/2 builder (HTTP/2 with prior
//! knowledge in cleartext, or negotiated by ALPN over TLS), each on its own task with a
//! watchdog (`conn`).

mod conn;

use std::future::Future;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::sync::{Semaphore, watch};

use crate::router::router;
use crate::state::AppState;
pub use crate::state::ShutdownFlag;
use conn::{Activity, Phase, Timeouts, TrackedIo, TrackedService};

/// Where and how to listen.
#[derive(Debug, Clone)]
pub struct ListenOpts {
    /// Address or resolvable name to bind; on a wildcard address (`0.0.0.0`) the URL announced uses
    /// the machine's host name instead.
    pub host: String,
    /// Port to bind, unless `port_range` is set.
    pub port: u16,
    /// Inclusive port range; the first free port is taken (as on shared HPC nodes).
    pub port_range: Option<(u16, u16)>,
    /// If set, the URL the server listens on is written to this file (atomically) once it listens,
    /// so job scripts can find a port taken from a range.
    pub listen_file: Option<PathBuf>,
    /// Certificate chain and private key PEM files; when set the server speaks HTTPS only.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Connection limits and timeouts.
    pub conn: ConnOpts,
}

/// Connection lifecycle settings (`cloudify serve --header-timeout ...`).
#[derive(Debug, Clone)]
pub struct ConnOpts {
    /// A connection must complete its request head (and TLS handshake) within this time of
    /// connecting, and a head that starts arriving on an idle connection within this time
    /// of its first byte: slow-header ("slowloris") clients cannot hold connections.
    pub header_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this time.
    pub idle_timeout: Duration,
    /// Open connections at most; `None`: derived from the file descriptor limit
    /// ([`default_max_connections`]).
    pub max_connections: Option<usize>,
    /// After SIGTERM/SIGINT: how long open connections are drained (HTTP/1 responses say
    /// `Connection: close`, HTTP/2 gets GOAWAY) before idle ones are closed.
    pub drain: Duration,
    /// After SIGTERM/SIGINT: when the connections still open are dropped and the process
    /// exits, drain period included.
    pub shutdown_timeout: Duration,
    /// Set when the shutdown begins: `/readyz` turns not ready.
    pub shutdown: ShutdownFlag,
}

impl Default for ConnOpts {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(75),
            max_connections: None,
            drain: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
            shutdown: ShutdownFlag::default(),
        }
    }
}

/// Parses a duration in seconds ("20", "0.5") for the timeout flags.
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(v > 0.0 && v <= 86_400.0) {
        return Err(format!("'{s}': must be more than 0 and at most 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Parses a byte count for `--max-source-bytes` and `--compute-cache-bytes`: a whole
/// number with an optional unit, `B`, `KB`/`MB`/`GB`/`TB` (powers of 1000) or
/// `KiB`/`MiB`/`GiB`/`TiB` (powers of 1024), case-insensitive ("256MiB", "2gb", "0").
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a byte count (e.g. 1073741824, 512MiB, 2GB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000u64.pow(2),
        "gb" => 1000u64.pow(3),
        "tb" => 1000u64.pow(4),
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "'{s}': unknown unit '{other}'; one of B, KB, MB, GB, TB, KiB, MiB, GiB, TiB"
            ));
        }
    };
    n.checked_mul(mult).ok_or_else(|| format!("'{s}' is too large"))
}

/// Parses `--max-connections` (1 to 1 000 000).
pub fn parse_max_connections(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
        _ => Err(format!("'{s}' is not a number of connections from 1 to 1000000")),
    }
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

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot watch for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Serves until SIGINT/SIGTERM, then drains (see [`ConnOpts`]).
pub async fn run(state: Arc<AppState>, opts: ListenOpts) -> anyhow::Result<()> {
    run_app(opts, |_url| Ok(router(state))).await
}

/// Reads the TLS certificate chain and key, and offers HTTP/2 and HTTP/1.1 by ALPN.
fn tls_config(cert: &Path, key: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(std::iter::Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("reading TLS certificate {}", cert.display()))?;
    if certs.is_empty() {
        bail!("TLS certificate {}: no certificate in the file", cert.display());
    }
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading TLS key {}", key.display()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("TLS certificate and key do not match or are not usable")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
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
    let tls = match &opts.tls {
        Some((cert, key)) => Some(tls_config(cert, key)?),
        None => None,
    };
    let fd_limit = fd_limit();
    let max_connections = opts
        .conn
        .max_connections
        .unwrap_or_else(|| default_max_connections(fd_limit));
    tracing::info!(%url, max_connections, fd_limit = %fd_limit.map_or("unlimited".into(), |n| n.to_string()),
        header_timeout_s = opts.conn.header_timeout.as_secs_f64(),
        idle_timeout_s = opts.conn.idle_timeout.as_secs_f64(), "listening");
    println!("cloudify listening on {url}");
    if let Some(f) = &opts.listen_file {
        write_listen_file(f, &url)?;
    }
    let server = Server {
        app,
        tls,
        conn: opts.conn.clone(),
        max_connections,
        fd_limit,
    };
    let result = server.serve(listener, shutdown_signal()).await;
    if let Some(f) = &opts.listen_file {
        let _ = std::fs::remove_file(f);
    }
    result?;
    tracing::info!("stopped");
    Ok(())
}

/// The soft limit on open file descriptors (`ulimit -n`), if any.
fn fd_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Default for `--max-connections`: what the descriptor limit leaves after a reserve for the
/// files read per request, the index cache, object-store connections and the runtime (a
/// quarter of the limit, at least 64 but at most half), at most 10 000 (each open connection
/// costs buffers and a task; beyond that, clients wait in the listen backlog).
pub fn default_max_connections(fd_limit: Option<u64>) -> usize {
    const CAP: u64 = 10_000;
    let Some(n) = fd_limit else {
        return CAP as usize;
    };
    let reserve = (n / 4).max(64).min(n / 2);
    usize::try_from((n - reserve).clamp(1, CAP)).unwrap_or(1)
}

/// At most one log line per `every`, counting the events it leaves out, so that a flood of
/// refused or failing connections cannot flood the log as well.
#[derive(Debug)]
struct Throttle {
    every: Duration,
    last: Option<tokio::time::Instant>,
    skipped: u64,
}

impl Throttle {
    fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            skipped: 0,
        }
    }

    /// `Some(events left out since the last line)` when a line may be written now.
    fn ready(&mut self) -> Option<u64> {
        let now = tokio::time::Instant::now();
        if self.last.is_some_and(|l| now < l + self.every) {
            self.skipped += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.skipped))
    }
}

/// Errors of `accept` that concern the one connection being accepted (it was reset or
/// aborted before we took it): the next accept is unaffected.
fn per_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    ) || matches!(e.raw_os_error(), Some(libc::EPROTO | libc::EPERM))
}

struct Server {
    app: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    conn: ConnOpts,
    max_connections: usize,
    fd_limit: Option<u64>,
}

impl Server {
    /// Accepts and serves connections until `stop` resolves, then drains: the listener
    /// closes (new connections are refused), HTTP/1 responses say `Connection: close`,
    /// HTTP/2 connections get GOAWAY; after the drain period the remaining connections shut
    /// down gracefully, and after the shutdown timeout whatever is left is dropped.
    async fn serve(self, listener: TcpListener, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // Timeouts are kept per connection (see `conn`), the same for both protocols; hyper's
        // own HTTP/1 header timer would also run while a keep-alive connection is idle.
        builder.http1().header_read_timeout(None);
        // HTTP/2 pings find peers that vanished while a response was in flight.
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        let builder = Arc::new(builder);
        let slots = Arc::new(Semaphore::new(self.max_connections));
        let (phase_tx, phase_rx) = watch::channel(Phase::Serving);
        let ctx = Arc::new(ConnCtx {
            app: self.app.clone(),
            tls: self.tls.clone(),
            builder,
            phase: phase_rx,
            timeouts: Timeouts {
                header: self.conn.header_timeout,
                idle: self.conn.idle_timeout,
            },
            shutdown: self.conn.shutdown.clone(),
        });
        tokio::pin!(stop);
        self.accept_loop(&listener, &slots, &ctx, stop.as_mut()).await;

        // Draining.
        let t0 = tokio::time::Instant::now();
        self.conn.shutdown.set();
        let _ = phase_tx.send(Phase::Draining);
        let open = self.max_connections - slots.available_permits();
        tracing::info!(
            open_connections = open,
            drain_s = self.conn.drain.as_secs_f64(),
            "shutting down: refusing new connections, draining open ones"
        );
        // Take the connections the kernel has already accepted for us (their clients may have
        // sent a request): dropping the listener would reset them. Then refuse new ones.
        match listener.into_std() {
            Ok(std_listener) => {
                while let Ok((tcp, peer)) = std_listener.accept() {
                    match slots.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let _ = tcp.set_nonblocking(true);
                            if let Ok(tcp) = tokio::net::TcpStream::from_std(tcp) {
                                spawn_connection(ctx.clone(), tcp, peer, permit);
                            }
                        }
                        Err(_) => break,
                    }
                }
            }
            Err(e) => tracing::debug!("listener: {e}"),
        }
        let all = u32::try_from(self.max_connections).unwrap_or(u32::MAX);
        let drained = tokio::time::timeout_at(t0 + self.conn.drain, slots.acquire_many(all)).await;
        if drained.is_err() {
            // Drain period over: idle connections close now, busy ones after their response.
            let _ = phase_tx.send(Phase::Closing);
            let end = t0 + self.conn.shutdown_timeout.max(self.conn.drain);
            if tokio::time::timeout_at(end, slots.acquire_many(all))
                .await
                .is_err()
            {
                let left = self.max_connections - slots.available_permits();
                tracing::warn!(
                    connections = left,
                    "shutdown timeout ({} s) reached: closing the connections still open",
                    self.conn.shutdown_timeout.as_secs_f64()
                );
                let _ = phase_tx.send(Phase::Abort);
                // Let the connection tasks see it and drop their sockets.
                let _ = tokio::time::timeout(Duration::from_secs(1), slots.acquire_many(all)).await;
            }
        }
        Ok(())
    }

    /// Accepts connections until `stop` resolves. At most `max_connections` are open at a
    /// time: beyond that, clients wait in the kernel's listen backlog until one closes.
    /// Accept failures (out of file descriptors: EMFILE/ENFILE) are logged and retried with
    /// backoff instead of spinning or failing silently.
    async fn accept_loop(
        &self,
        listener: &tokio::net::TcpListener,
        slots: &Arc<Semaphore>,
        ctx: &Arc<ConnCtx>,
        mut stop: Pin<&mut impl Future<Output = ()>>,
    ) {
        let mut limit_log = Throttle::new(Duration::from_secs(10));
        let mut accept_log = Throttle::new(Duration::from_secs(10));
        let mut backoff = Duration::from_millis(10);
        loop {
            let permit = match slots.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    if let Some(skipped) = limit_log.ready() {
                        tracing::warn!(
                            max_connections = self.max_connections,
                            "connection limit reached: {} connections open (--max-connections); \
                             new connections wait until one closes{}",
                            self.max_connections,
                            if skipped > 0 {
                                format!(" ({skipped} more times since the last message)")
                            } else {
                                String::new()
                            }
                        );
                    }
                    let waited = tokio::time::Instant::now();
                    tokio::select! {
                        p = slots.clone().acquire_owned() => match p {
                            Ok(p) => {
                                tracing::info!(waited_ms = waited.elapsed().as_millis() as u64,
                                    "a connection closed: accepting connections again");
                                p
                            }
                            Err(_) => return,
                        },
                        _ = stop.as_mut() => return,
                    }
                }
            };
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((tcp, peer)) => {
                        backoff = Duration::from_millis(10);
                        spawn_connection(ctx.clone(), tcp, peer, permit);
                    }
                    Err(e) if per_connection_error(&e) => {
                        tracing::debug!("accept: {e}");
                    }
                    Err(e) => {
                        if let Some(skipped) = accept_log.ready() {
                            let open = (self.max_connections - slots.available_permits()).saturating_sub(1);
                            tracing::warn!(
                                open_connections = open,
                                fd_limit = %self.fd_limit.map_or("unlimited".into(), |n| n.to_string()),
                                "cannot accept connections: {e}; retrying in {} ms{} \
                                 (raise `ulimit -n` or lower --max-connections)",
                                backoff.as_millis(),
                                if skipped > 0 { format!(" ({skipped} more failures since the last message)") } else { String::new() }
                            );
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stop.as_mut() => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                },
                _ = stop.as_mut() => return,
            }
        }
    }
}

/// What every connection task needs.
struct ConnCtx {
    app: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    phase: watch::Receiver<Phase>,
    timeouts: Timeouts,
    shutdown: ShutdownFlag,
}

/// Serves one accepted connection on its own task, holding its connection slot.
fn spawn_connection(
    ctx: Arc<ConnCtx>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    tokio::spawn(async move {
        let _permit = permit;
        let _ = tcp.set_nodelay(true);
        let activity = Activity::new();
        let service = TrackedService {
            router: ctx.app.clone(),
            activity: activity.clone(),
            shutdown: ctx.shutdown.clone(),
        };
        let phase = ctx.phase.clone();
        match &ctx.tls {
            None => {
                let io = TrackedIo::new(tcp, activity);
                conn::serve(io, service, &ctx.builder, phase, ctx.timeouts, peer).await;
            }
            Some(acceptor) => {
                // The handshake counts against the header timeout, like the request head.
                match tokio::time::timeout(ctx.timeouts.header, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let io = TrackedIo::new(tls, activity);
                        conn::serve(io, service, &ctx.builder, phase, ctx.timeouts, peer).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake not finished within the header timeout"),
                }
            }
        }
    });
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
    fn durations_and_limits() {
        assert_eq!(parse_secs("20"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_secs("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_secs("3s"), Ok(Duration::from_secs(3)));
        for bad in ["0", "-1", "x", "nan", "1e9"] {
            assert!(parse_secs(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_max_connections("64"), Ok(64));
        assert!(parse_max_connections("0").is_err());
        assert!(parse_max_connections("many").is_err());
    }

    #[test]
    fn connection_limit_follows_the_descriptor_limit() {
        // `ulimit -n 64`: half of it stays for files, the index cache and the runtime
        assert_eq!(default_max_connections(Some(64)), 32);
        assert_eq!(default_max_connections(Some(1024)), 768);
        assert_eq!(default_max_connections(Some(1 << 20)), 10_000);
        assert_eq!(default_max_connections(None), 10_000);
        assert_eq!(default_max_connections(Some(1)), 1);
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
            conn: ConnOpts::default(),
        };
        let l = bind(&opts).unwrap();
        assert_ne!(l.local_addr().unwrap().port(), p);
    }
}
