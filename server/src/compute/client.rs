//! The server's side of `--compute`: tasks sent to the workers with bounded concurrency,
//! per-task timeouts, retries on the next worker and a queue limit.
//!
//! - Concurrency: at most `concurrency` tasks are on the wire at once (a semaphore); the
//!   others wait for a slot.
//! - Backpressure: at most `queue` tasks may be admitted (waiting or running); a batch that
//!   would go beyond is refused at once with 503 + `Retry-After` naming the compute
//!   service, instead of holding unbounded memory and connections.
//! - Faults: a worker that cannot be reached, resets the connection, answers 5xx without a
//!   protocol body or does not answer within `timeout` is skipped and the task (idempotent)
//!   goes to the next worker, up to one try per worker plus one (at least four: a single
//!   Service URL stands for many pods), pausing 0.1 s, 0.2 s, ... before a URL is tried
//!   again; when every try failed the task fails with 503 naming the service.
//! - Connections are recycled every [`RECYCLE`]: a Kubernetes Service balances
//!   *connections* (kube-proxy picks a pod per TCP connection), so a client that kept its
//!   pooled connections forever would never send work to the pods an autoscaler adds. A worker answering garbage or another
//!   protocol version fails the task with 502 naming that worker: never data from it.
//! - A worker's own [`protocol::Failure`] (the data cannot be read) is answered as is.
//! - A worker answering 503 with `Retry-After` (the task's dataset is still opening there:
//!   files being recalled from tape) is backpressure: the task goes to the next worker as
//!   above, and when no worker could run it the client gets 503 with the longest
//!   `Retry-After` the workers gave (at most an hour).
//! - Credentials: with a [`SharedSecret`] every task carries `Authorization: Bearer
//!   <secret>`; a worker refusing it (401) fails the task with 502 naming the worker and the
//!   flag to check, without retrying (every worker of a pool has the same secret).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use super::protocol::{self, Request, Response, VERSION, VERSION_HEADER};
use super::secret::SharedSecret;
use crate::chunk::read::ReadError;
use crate::processing::exec::{Executor, Output, Task};
use crate::state::MAX_RETRY_AFTER;

/// How long the client reuses its connections before opening new ones (new pods behind a
/// Service get work at the latest this long after they became ready). Reconnecting costs a
/// TCP handshake per connection every few seconds: nothing against task times.
pub const RECYCLE: Duration = Duration::from_secs(3);

/// Fewest tries per task, whatever the number of URLs (one Service URL stands for many pods).
const MIN_TRIES: usize = 4;

/// Pause before a try that goes to a URL already tried for this task, doubled each time (up
/// to 1 s): a Service keeps sending connections to a pod that just died until its endpoints
/// are updated, which takes a moment.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Settings of `serve --compute`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Worker base URLs (a Kubernetes Service is one URL; on-prem, one per worker).
    pub workers: Vec<String>,
    /// Tasks on the wire at once.
    pub concurrency: usize,
    /// Tasks admitted (waiting or running) at once before 503.
    pub queue: usize,
    /// Per-try timeout.
    pub timeout: Duration,
    /// The secret the workers require (`--compute-secret-file`).
    pub secret: Option<Arc<SharedSecret>>,
}

/// Metrics of the fan-out (registered into the server's registry).
#[derive(Debug, Clone)]
pub struct ClientMetrics {
    /// Tasks by outcome (`ok`, `failed`, `unavailable`, `bad_answer`).
    pub tasks: IntCounterVec,
    /// Tries that went to another worker after one failed or timed out.
    pub retries: IntCounter,
    /// Batches refused because the queue was full.
    pub rejected: IntCounter,
    /// Tasks admitted and not finished.
    pub in_flight: IntGauge,
}

impl ClientMetrics {
    fn new() -> Result<Self, prometheus::Error> {
        Ok(Self {
            tasks: IntCounterVec::new(
                Opts::new(
                    "cloudify_compute_tasks_total",
                    "Tasks sent to compute workers, by outcome",
                ),
                &["outcome"],
            )?,
            retries: IntCounter::new(
                "cloudify_compute_retries_total",
                "Task tries repeated on another worker after a worker failed or timed out",
            )?,
            rejected: IntCounter::new(
                "cloudify_compute_rejected_total",
                "Requests refused with 503 because the compute queue was full",
            )?,
            in_flight: IntGauge::new(
                "cloudify_compute_in_flight",
                "Tasks admitted to the compute service and not finished",
            )?,
        })
    }

    /// Registers every metric into `r` (the server's `/metrics`).
    pub fn register(&self, r: &Registry) -> Result<(), prometheus::Error> {
        r.register(Box::new(self.tasks.clone()))?;
        r.register(Box::new(self.retries.clone()))?;
        r.register(Box::new(self.rejected.clone()))?;
        r.register(Box::new(self.in_flight.clone()))
    }
}

/// The remote executor of `serve --compute`.
#[derive(Debug)]
pub struct Remote {
    settings: Settings,
    /// How the service is named in messages: the `--compute` value.
    service: String,
    /// The HTTP client and when it was built (replaced after [`RECYCLE`]).
    http: Mutex<(Instant, reqwest::Client)>,
    permits: Arc<tokio::sync::Semaphore>,
    admitted: AtomicUsize,
    next: AtomicUsize,
    rt: tokio::runtime::Runtime,
    /// Its metrics.
    pub metrics: ClientMetrics,
}

/// Why one try failed.
enum TryError {
    /// The worker is gone or too slow: try another.
    Retry(String),
    /// The worker is up but cannot run the task yet (503 + `Retry-After`: its dataset is
    /// still opening there): another worker may; if none can, the client is told to ask
    /// again after that many seconds. Backpressure, never data and never a final error.
    NotYet(String, u64),
    /// The worker answered something that is not a valid answer: stop, naming it.
    Bad(String),
}

impl Remote {
    /// A client for `settings` (its own small runtime: tasks are sent from the decode pool's
    /// threads, which are not async).
    pub fn new(settings: Settings) -> anyhow::Result<Self> {
        if settings.workers.is_empty() {
            anyhow::bail!("--compute: no worker URL given");
        }
        for w in &settings.workers {
            let u = url::Url::parse(w).map_err(|e| anyhow::anyhow!("--compute: '{w}' is not a URL: {e}"))?;
            if !matches!(u.scheme(), "http" | "https") {
                anyhow::bail!("--compute: '{w}' is not an http(s) URL");
            }
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cloudify-compute")
            .enable_all()
            .build()?;
        let http = Mutex::new((Instant::now(), Self::http_client(settings.timeout)?));
        Ok(Self {
            service: settings.workers.join(","),
            permits: Arc::new(tokio::sync::Semaphore::new(settings.concurrency.max(1))),
            admitted: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            metrics: ClientMetrics::new()?,
            http,
            rt,
            settings,
        })
    }

    fn http_client(timeout: Duration) -> reqwest::Result<reqwest::Client> {
        reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(RECYCLE)
            .build()
    }

    /// The current HTTP client; a new one (new connections) once the current is older than
    /// [`RECYCLE`]. Requests in flight keep the old one's connections until they end.
    fn client(&self) -> reqwest::Client {
        let mut guard = match self.http.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if guard.0.elapsed() >= RECYCLE {
            match Self::http_client(self.settings.timeout) {
                Ok(c) => *guard = (Instant::now(), c),
                // keep the old connections rather than fail a task
                Err(e) => tracing::warn!("cannot build a new compute HTTP client: {e}"),
            }
        }
        guard.1.clone()
    }

    fn unavailable(&self, why: &str) -> ReadError {
        ReadError::Compute {
            status: 503,
            message: format!("compute service {} unavailable: {why}", self.service),
            retry_after: Some(1),
        }
    }

    async fn try_once(&self, worker: &str, body: Vec<u8>) -> Result<Response, TryError> {
        let url = format!("{}{}", worker.trim_end_matches('/'), protocol::TASK_PATH);
        // A client span per try; the worker's spans are its children through `traceparent`.
        // DEBUG: no span, no header with traces off.
        let span = tracing::debug_span!("compute.send", otel.kind = "client", worker, url.full = %url);
        let mut trace_headers = reqwest::header::HeaderMap::new();
        span.in_scope(|| cloudify_telemetry::inject(&mut trace_headers));
        let mut send = self
            .client()
            .post(&url)
            .headers(trace_headers)
            .header(VERSION_HEADER, VERSION.to_string())
            .header(reqwest::header::CONTENT_TYPE, protocol::CONTENT_TYPE);
        if let Some(s) = &self.settings.secret {
            match reqwest::header::HeaderValue::from_str(&s.header()) {
                Ok(mut v) => {
                    v.set_sensitive(true);
                    send = send.header(reqwest::header::AUTHORIZATION, v);
                }
                Err(_) => {
                    return Err(TryError::Bad(
                        "the compute secret is not usable as a header value".into(),
                    ));
                }
            }
        }
        let send = send.body(body).send();
        let call = async {
            let resp = send
                .await
                .map_err(|e| TryError::Retry(format!("worker {worker}: {e}")))?;
            let status = resp.status();
            let their = resp
                .headers()
                .get(VERSION_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u32>().ok());
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| TryError::Retry(format!("worker {worker}: {e}")))?;
            if status == reqwest::StatusCode::UNAUTHORIZED {
                let sent = if self.settings.secret.is_some() {
                    "refused this server's compute secret (the server's --compute-secret-file and the worker's --secret-file differ)"
                } else {
                    "requires a compute secret (start the server with --compute-secret-file, the worker's --secret-file)"
                };
                return Err(TryError::Bad(format!("worker {worker} {sent}")));
            }
            match their {
                Some(v) if v != VERSION => {
                    return Err(TryError::Bad(format!(
                        "worker {worker}: {}",
                        protocol::mismatch(VERSION, v)
                    )));
                }
                // a proxy's 502/503 (the pod is going away): another worker may answer
                None if status.is_server_error() => {
                    return Err(TryError::Retry(format!("worker {worker}: HTTP {status}")));
                }
                None => {
                    return Err(TryError::Bad(format!(
                        "worker {worker} answered HTTP {status} without the compute protocol header (is it a cloudify worker?)"
                    )));
                }
                Some(_) => {}
            }
            if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
                return Err(match retry_after {
                    Some(secs) => {
                        // the worker's reason and delay, bounded: input from the network
                        let why = String::from_utf8_lossy(&bytes[..bytes.len().min(1000)]).into_owned();
                        TryError::NotYet(format!("worker {worker}: {why}"), secs.clamp(1, MAX_RETRY_AFTER))
                    }
                    None => TryError::Retry(format!("worker {worker}: busy or shutting down")),
                });
            }
            let r: Response = protocol::decode(&bytes)
                .map_err(|e| TryError::Bad(format!("worker {worker} answered garbage: {e}")))?;
            if r.version != VERSION {
                return Err(TryError::Bad(format!(
                    "worker {worker}: {}",
                    protocol::mismatch(VERSION, r.version)
                )));
            }
            Ok(r)
        };
        let call = tracing::Instrument::instrument(call, span);
        match tokio::time::timeout(self.settings.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(TryError::Retry(format!(
                "worker {worker}: no answer within {:.1} s",
                self.settings.timeout.as_secs_f64()
            ))),
        }
    }

    async fn run_one(&self, task: Task) -> Result<Output, ReadError> {
        let body = protocol::encode(&Request {
            version: VERSION,
            task,
        })
        .map_err(ReadError::Block)?;
        let n = self.settings.workers.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let tries = (n + 1).max(MIN_TRIES);
        let mut last = String::new();
        // the longest `Retry-After` of the workers that could not run the task yet
        let mut not_yet: Option<u64> = None;
        for attempt in 0..tries {
            if attempt > 0 {
                self.metrics.retries.inc();
            }
            if attempt >= n {
                let pause = RETRY_PAUSE * 2u32.pow((attempt - n).min(4) as u32);
                tokio::time::sleep(pause.min(Duration::from_secs(1))).await;
            }
            let worker = &self.settings.workers[(first + attempt) % n];
            let permit = self.permits.clone().acquire_owned().await;
            let r = self.try_once(worker, body.clone()).await;
            drop(permit);
            match r {
                Ok(Response { result: Ok(o), .. }) => {
                    self.metrics.tasks.with_label_values(&["ok"]).inc();
                    return Ok(o);
                }
                Ok(Response { result: Err(f), .. }) => {
                    self.metrics.tasks.with_label_values(&["failed"]).inc();
                    return Err(ReadError::Compute {
                        status: f.status,
                        message: format!("compute worker {worker}: {}", f.message),
                        // bounded: input from the network
                        retry_after: f.retry_after.map(|s| s.clamp(1, MAX_RETRY_AFTER)),
                    });
                }
                Err(TryError::Bad(m)) => {
                    self.metrics.tasks.with_label_values(&["bad_answer"]).inc();
                    tracing::error!("{m}");
                    return Err(ReadError::Compute {
                        status: 502,
                        message: m,
                        retry_after: None,
                    });
                }
                Err(TryError::Retry(m)) => {
                    tracing::warn!("{m}; trying another worker");
                    last = m;
                }
                Err(TryError::NotYet(m, secs)) => {
                    tracing::debug!("{m}; trying another worker");
                    not_yet = Some(not_yet.map_or(secs, |s| s.max(secs)));
                    last = m;
                }
            }
        }
        self.metrics.tasks.with_label_values(&["unavailable"]).inc();
        let mut e = self.unavailable(&format!("{tries} tries failed, the last: {last}"));
        if let (ReadError::Compute { retry_after, .. }, Some(secs)) = (&mut e, not_yet) {
            *retry_after = Some(secs);
        }
        Err(e)
    }
}

impl Executor for Remote {
    fn run_all(&self, tasks: Vec<Task>) -> Result<Vec<Output>, ReadError> {
        let k = tasks.len();
        let before = self.admitted.fetch_add(k, Ordering::AcqRel);
        let _release = Release(&self.admitted, k, &self.metrics.in_flight);
        self.metrics.in_flight.add(k as i64);
        // a batch larger than the limit still runs when nothing else is queued: one request
        // always makes progress
        if before > 0 && before + k > self.settings.queue {
            self.metrics.rejected.inc();
            return Err(ReadError::Compute {
                status: 503,
                message: format!(
                    "compute service {} busy: {before} tasks queued or running (limit {}); retry later",
                    self.service, self.settings.queue
                ),
                retry_after: Some(1),
            });
        }
        let run = || {
            self.rt.block_on(async {
                let futs = tasks.into_iter().map(|t| self.run_one(t));
                futures_util::future::try_join_all(futs).await
            })
        };
        // Called from the decode pool (not async). Should a caller ever be on an async
        // thread, blocking on the runtime there would panic: wait on a plain thread instead.
        if tokio::runtime::Handle::try_current().is_ok() {
            let span = cloudify_telemetry::traced_span();
            return std::thread::scope(|s| s.spawn(|| span.in_scope(run)).join())
                .unwrap_or_else(|_| Err(ReadError::Block("the compute client panicked (bug)".into())));
        }
        run()
    }
}

/// Gives back admitted slots when a batch ends (whatever way).
struct Release<'a>(&'a AtomicUsize, usize, &'a IntGauge);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::AcqRel);
        self.2.sub(self.1 as i64);
    }
}
