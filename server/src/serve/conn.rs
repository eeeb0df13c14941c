//! One client connection: what it is doing (request in flight, request head arriving, idle),
//! and the watchdog that closes it when a request head takes too long (slowloris) or when it
//! has been idle too long, and that drains it on shutdown.
//!
//! hyper's own HTTP/1 `header_read_timeout` cannot tell the two apart (its timer runs from
//! the end of one response to the end of the next request head, so the idle time of a
//! keep-alive connection counts against the header timeout) and HTTP/2 has no idle timeout
//! at all, so both are kept here, the same way for HTTP/1, HTTP/2, plain and TLS: the I/O
//! wrapper notes when request bytes arrive on a connection with nothing in flight, the
//! service wrapper counts requests from their start until their response body is finished
//! or dropped, and the watchdog acts on that. A request in flight is never timed out: a slow
//! client downloading a large chunk keeps its connection.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, Version, header};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;
use tower::ServiceExt as _;

use super::ShutdownFlag;

/// `head_since` when no request head is being waited for.
const NONE: u64 = u64::MAX;

/// Where the server is in its life; connections watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Serving,
    /// SIGTERM received: HTTP/1 responses carry `Connection: close`, HTTP/2 connections get
    /// GOAWAY; idle HTTP/1 connections stay open so their next request is answered (with
    /// `Connection: close`) instead of meeting a closed socket.
    Draining,
    /// Drain period over: every connection shuts down gracefully (idle ones close now,
    /// busy ones after their response).
    Closing,
    /// Shutdown cap reached: drop whatever is left.
    Abort,
}

/// Timeouts of a connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    /// From connecting (TLS handshake included) or from the first byte of a request head on
    /// an idle connection until the head is complete.
    pub header: Duration,
    /// Without a request in flight and without request bytes arriving.
    pub idle: Duration,
}

/// What a connection is doing, shared by its I/O wrapper, its service and its watchdog.
#[derive(Debug)]
pub(super) struct Activity {
    start: Instant,
    /// Requests whose response body is not finished yet.
    busy: AtomicUsize,
    /// Milliseconds since `start` when `busy` last dropped to zero.
    idle_since: AtomicU64,
    /// Milliseconds since `start` when bytes of a request head started arriving on an idle
    /// connection ([`NONE`]: none). A new connection starts out waiting for its first head.
    head_since: AtomicU64,
    /// Milliseconds since `start` of the last write to the socket. hyper finishes with a
    /// response body (ending its request's count) before the last of it is written, so a
    /// slow reader of a large response is recognised by the writes still going on.
    last_write: AtomicU64,
    /// A request came over HTTP/2: GOAWAY drains it, and bytes between requests (PING,
    /// WINDOW_UPDATE, SETTINGS) are no request head.
    h2: AtomicBool,
}

impl Activity {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            last_write: AtomicU64::new(0),
            h2: AtomicBool::new(false),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    fn request_started(self: &Arc<Self>) -> BusyGuard {
        self.busy.fetch_add(1, Ordering::SeqCst);
        self.head_since.store(NONE, Ordering::SeqCst);
        BusyGuard(self.clone())
    }

    fn bytes_read(&self) {
        if self.busy.load(Ordering::SeqCst) == 0 {
            let now = self.now_ms();
            let _ = self
                .head_since
                .compare_exchange(NONE, now, Ordering::SeqCst, Ordering::SeqCst);
        }
    }

    fn bytes_written(&self) {
        self.last_write.store(self.now_ms(), Ordering::SeqCst);
    }

    fn is_h2(&self) -> bool {
        self.h2.load(Ordering::SeqCst)
    }

    /// What the watchdog does next, at `now` (milliseconds since the connection began, as
    /// all times here). `shutdown_at`: when a graceful shutdown of this connection began.
    fn next(&self, t: Timeouts, shutdown_at: Option<u64>, now: u64) -> Step {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(NONE - 1);
        let (header, idle) = (ms(t.header), ms(t.idle));
        if self.busy.load(Ordering::SeqCst) > 0 {
            // In flight, however slowly: never cut. Look again later.
            return Step::Wait(now.saturating_add(header.min(idle)));
        }
        let written = self.last_write.load(Ordering::SeqCst);
        if let Some(s) = shutdown_at {
            // Asked to close and nothing in flight, but the connection is still open (a
            // client ignoring GOAWAY, a half-finished head, the rest of a response still
            // being written): one header timeout after the last progress.
            let end = s.max(written).saturating_add(header);
            return if now >= end {
                Step::Close("still open after a graceful shutdown")
            } else {
                Step::Wait(end)
            };
        }
        let head = self.head_since.load(Ordering::SeqCst);
        if head != NONE && !self.is_h2() {
            let end = head.saturating_add(header);
            return if now >= end {
                Step::Close("request head not complete within the header timeout")
            } else {
                Step::Wait(end)
            };
        }
        let end = self
            .idle_since
            .load(Ordering::SeqCst)
            .max(written)
            .saturating_add(idle);
        if now >= end {
            Step::Shutdown
        } else {
            // A head may start arriving meanwhile: look again within one header timeout.
            Step::Wait(end.min(now.saturating_add(header)))
        }
    }
}

#[derive(Debug, PartialEq)]
enum Step {
    /// Look again at this time (milliseconds since the connection began).
    Wait(u64),
    /// Idle too long: graceful shutdown (HTTP/1 closes at once, HTTP/2 sends GOAWAY).
    Shutdown,
    /// Drop the connection.
    Close(&'static str),
}

/// Counts one request as in flight until dropped (with the response body, or with the
/// request future when the client goes away first).
#[derive(Debug)]
struct BusyGuard(Arc<Activity>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let a = &self.0;
        if a.busy.fetch_sub(1, Ordering::SeqCst) == 1 {
            a.idle_since.store(a.now_ms(), Ordering::SeqCst);
            a.head_since.store(NONE, Ordering::SeqCst);
        }
    }
}

/// A response body that keeps its request counted as in flight until it is finished.
pub(super) struct TrackedBody {
    inner: Body,
    _guard: BusyGuard,
}

impl hyper::body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The router as a hyper service on one connection.
#[derive(Clone)]
pub(super) struct TrackedService {
    pub router: axum::Router,
    pub activity: Arc<Activity>,
    pub shutdown: ShutdownFlag,
}

impl hyper::service::Service<Request<Incoming>> for TrackedService {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let guard = self.activity.request_started();
        let http1 = req.version() < Version::HTTP_2;
        if !http1 {
            self.activity.h2.store(true, Ordering::SeqCst);
        }
        let shutdown = self.shutdown.clone();
        let router = self.router.clone();
        Box::pin(async move {
            let mut res = router.oneshot(req.map(Body::new)).await?;
            // While draining, an HTTP/1 response tells the client not to reuse the
            // connection, which then closes after it: the client never sends a request on a
            // connection the server is about to close. (HTTP/2 forbids the header; GOAWAY
            // does this there.)
            if http1 && shutdown.is_set() {
                res.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(res.map(|inner| TrackedBody { inner, _guard: guard }))
        })
    }
}

/// The connection's socket (or TLS stream), noting when request bytes arrive.
pub(super) struct TrackedIo<S> {
    io: S,
    activity: Arc<Activity>,
}

impl<S> TrackedIo<S> {
    pub(super) fn new(io: S, activity: Arc<Activity>) -> Self {
        Self { io, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TrackedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TrackedIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.bytes_written();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.bytes_written();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Serves one connection until it closes, it times out or the server stops.
pub(super) async fn serve<S>(
    io: TrackedIo<S>,
    service: TrackedService,
    builder: &auto::Builder<TokioExecutor>,
    mut phase: watch::Receiver<Phase>,
    t: Timeouts,
    peer: std::net::SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = service.activity.clone();
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut shutdown_at: Option<u64> = None;
    let mut wake = Instant::now();
    let mut seen = Phase::Serving;
    loop {
        // React to the server's phase (also when it changed before this connection began).
        let now_phase = *phase.borrow_and_update();
        if now_phase != seen {
            seen = now_phase;
            let graceful = match now_phase {
                Phase::Serving => false,
                Phase::Draining => activity.is_h2(),
                Phase::Closing => true,
                Phase::Abort => {
                    tracing::debug!(%peer, "connection dropped: shutdown time is up");
                    return;
                }
            };
            if graceful && shutdown_at.is_none() {
                conn.as_mut().graceful_shutdown();
                shutdown_at = Some(activity.now_ms());
                wake = Instant::now();
            }
        }
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
                return;
            }
            _ = tokio::time::sleep_until(wake) => {
                let now = activity.now_ms();
                match activity.next(t, shutdown_at, now) {
                    Step::Wait(at) => wake = activity.at(at),
                    Step::Shutdown => {
                        tracing::debug!(%peer, "closing idle connection");
                        conn.as_mut().graceful_shutdown();
                        shutdown_at = Some(now);
                        wake = Instant::now();
                    }
                    Step::Close(why) => {
                        tracing::debug!(%peer, "connection closed: {why}");
                        return;
                    }
                }
            }
            r = phase.changed() => {
                if r.is_err() {
                    // The server is gone: nothing will shut this connection down any more.
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        header: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    };
    const H: u64 = 10_000;
    const I: u64 = 60_000;

    #[test]
    fn new_connection_must_send_a_head_within_the_header_timeout() {
        let a = Activity::new();
        assert_eq!(a.next(T, None, 0), Step::Wait(H));
        assert!(matches!(a.next(T, None, H), Step::Close(_)));
    }

    #[test]
    fn request_in_flight_is_never_timed_out() {
        let a = Activity::new();
        let g = a.request_started();
        assert!(matches!(a.next(T, None, 3_600_000), Step::Wait(_)));
        drop(g);
        // idle from the end of the response, not from the connection's start
        a.idle_since.store(3_600_000, Ordering::SeqCst);
        assert_eq!(a.next(T, None, 3_600_000 + 1), Step::Wait(3_600_001 + H));
        assert_eq!(a.next(T, None, 3_600_000 + I - 1), Step::Wait(3_600_000 + I));
        assert_eq!(a.next(T, None, 3_600_000 + I), Step::Shutdown);
    }

    #[test]
    fn idle_then_slow_head_is_closed_after_the_header_timeout() {
        let a = Activity::new();
        drop(a.request_started());
        a.bytes_read(); // the first bytes of the next head
        let head = a.head_since.load(Ordering::SeqCst);
        assert_ne!(head, NONE);
        assert_eq!(a.next(T, None, head), Step::Wait(head + H));
        a.bytes_read(); // more bytes do not restart the clock
        assert_eq!(a.head_since.load(Ordering::SeqCst), head);
        assert!(matches!(a.next(T, None, head + H), Step::Close(_)));
        // the request starts: no head timeout any more
        let _g = a.request_started();
        assert!(matches!(a.next(T, None, head + 10 * H), Step::Wait(_)));
    }

    #[test]
    fn http2_frames_between_requests_are_not_a_head() {
        let a = Activity::new();
        a.h2.store(true, Ordering::SeqCst);
        drop(a.request_started());
        a.idle_since.store(0, Ordering::SeqCst);
        a.bytes_read(); // a PING
        assert!(matches!(a.next(T, None, H), Step::Wait(_)));
        assert_eq!(a.next(T, None, I), Step::Shutdown);
    }

    #[test]
    fn response_still_being_written_is_not_idle() {
        let a = Activity::new();
        drop(a.request_started()); // hyper has taken the whole body ...
        a.idle_since.store(1_000, Ordering::SeqCst);
        a.last_write.store(50_000, Ordering::SeqCst); // ... and is still writing it
        assert_eq!(a.next(T, None, 1_000 + I), Step::Wait(1_000 + I + H));
        assert_eq!(a.next(T, None, 50_000 + I), Step::Shutdown);
        // after a graceful shutdown, progress keeps it open too
        a.last_write.store(70_000, Ordering::SeqCst);
        assert_eq!(a.next(T, Some(60_000), 70_000 + H - 1), Step::Wait(70_000 + H));
    }

    #[test]
    fn connection_ignoring_shutdown_is_dropped() {
        let a = Activity::new();
        drop(a.request_started());
        assert_eq!(a.next(T, Some(500), 500), Step::Wait(500 + H));
        assert!(matches!(a.next(T, Some(500), 500 + H), Step::Close(_)));
    }
}
