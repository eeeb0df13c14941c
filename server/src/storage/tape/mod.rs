//! Tape archives as sources: files recalled into a staging cache and read from there.
//!
//! A request for bytes of an archived file ([`Stager::acquire`]) is answered from the
//! staging cache when the file is there (pinned while it is read). Otherwise the file joins
//! the recall queue — once, however many requests wait for it — and the request waits a
//! bounded time ([`TapeSpec::wait_seconds`], below the ingress timeout) before it is answered
//! [`TapeError::Nearline`]: 503 with `Retry-After`, never a 404 a zarr client would read as
//! fill values, never a 2xx without data. A batcher thread collects queued files over a short
//! window, groups them by tape and starts jobs of at most `maxTapesPerJob` tapes, at most
//! `maxParallelJobs` at once; each job is followed until done, its files copied into the
//! cache under temporary names and renamed. A failed recall is answered 502 naming the file
//! and the driver's reason, and tried again after a backoff that doubles per failure.

pub mod batch;
pub mod cache;
pub mod driver;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use cloudify_crds::TapeSpec;

pub use cache::{Pin, StagingCache};
use driver::{CommandDriver, Driver, JobStatus, WlcgDriver};

/// Why bytes of an archived file cannot be read now.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TapeError {
    /// The file is on tape and its recall has not finished in the time a request waits.
    #[error("{path}: on tape, being recalled ({state}{}); retry in {retry_after} s", job.as_ref().map(|j| format!(", job {j}")).unwrap_or_default())]
    Nearline {
        /// The archive path.
        path: String,
        /// `queued` (waiting for its batch) or `recalling` (a job runs).
        state: &'static str,
        /// The recall job, once submitted.
        job: Option<String>,
        /// Seconds after which asking again is worthwhile (the driver's estimate, else the
        /// configured default).
        retry_after: u64,
    },
    /// The recall failed; it is tried again after `retry_after` seconds.
    #[error("{path}: recall from tape failed: {reason} (tried again in {retry_after} s)")]
    Failed {
        /// The archive path.
        path: String,
        /// The driver's reason.
        reason: String,
        /// Seconds until the next attempt.
        retry_after: u64,
    },
    /// The staging cache cannot take the file: everything in it is being read.
    #[error(
        "{path}: recalled, but the staging cache is full of files being read ({reason}); retry in {retry_after} s"
    )]
    CacheFull {
        /// The archive path.
        path: String,
        /// Sizes, for operators.
        reason: String,
        /// Seconds after which reads should have finished.
        retry_after: u64,
    },
}

impl TapeError {
    /// Seconds for `Retry-After`.
    pub fn retry_after(&self) -> u64 {
        match self {
            Self::Nearline { retry_after, .. }
            | Self::Failed { retry_after, .. }
            | Self::CacheFull { retry_after, .. } => *retry_after,
        }
    }

    /// The JSON members a client reads besides `error`: the state and the job.
    pub fn detail(&self) -> serde_json::Value {
        match self {
            Self::Nearline { path, state, job, .. } => {
                serde_json::json!({"file": path, "state": state, "job": job})
            }
            Self::Failed { path, reason, .. } => {
                serde_json::json!({"file": path, "state": "failed", "reason": reason})
            }
            Self::CacheFull { path, .. } => serde_json::json!({"file": path, "state": "cache_full"}),
        }
    }
}

/// Where one file is, for `/locality` and error bodies.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FileLocality {
    /// The archive path.
    pub path: String,
    /// `online` (staged), `queued`, `recalling`, `failed` or `nearline`.
    pub state: &'static str,
    /// The recall job, while one runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The driver's reason, when the last recall failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The archive's own word (WLCG `archiveinfo`: ONLINE, NEARLINE, ...), when asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive: Option<String>,
}

/// The recall state of one file that is not staged.
#[derive(Clone, Debug)]
enum Flight {
    Queued,
    Recalling { job: String, eta: Option<u64> },
    Failed { reason: String, until: Instant },
}

#[derive(Default)]
struct State {
    flights: HashMap<String, Flight>,
    /// Files queued since the batcher last took them.
    pending: Vec<String>,
    /// Failures so far per file (for the backoff), cleared when a recall succeeds.
    attempts: HashMap<String, u32>,
    jobs_running: usize,
    batcher: bool,
}

/// Tunables, from [`TapeSpec`] with defaults.
#[derive(Clone, Debug)]
pub struct Limits {
    /// How long a request waits for a recall.
    pub wait: Duration,
    /// How long requests are collected before a batch is recalled.
    pub window: Duration,
    /// Tapes per job at most.
    pub tapes_per_job: usize,
    /// Jobs at once at most.
    pub parallel_jobs: usize,
    /// Status polling interval.
    pub poll: Duration,
    /// `Retry-After` without an estimate from the driver.
    pub retry_after: u64,
    /// First backoff after a failure.
    pub backoff: Duration,
    /// Files per job at most.
    pub files_per_job: usize,
    /// How often the archive is asked whether it answers ([`Stager::health`]).
    pub health_every: Duration,
}

impl Limits {
    /// The spec's values, else DKRZ-like defaults.
    pub fn of(spec: &TapeSpec) -> Self {
        Self {
            wait: Duration::from_secs(spec.wait_seconds.unwrap_or(20).min(55)),
            window: Duration::from_millis(spec.batch_window_ms.unwrap_or(500)),
            tapes_per_job: spec.max_tapes_per_job.unwrap_or(4).max(1) as usize,
            parallel_jobs: spec.max_parallel_jobs.unwrap_or(4).max(1) as usize,
            poll: Duration::from_millis(spec.poll_ms.unwrap_or(10_000).max(1)),
            retry_after: spec.retry_after_seconds.unwrap_or(600).max(1),
            backoff: Duration::from_secs(spec.failure_backoff_seconds.unwrap_or(30)),
            files_per_job: spec.max_files_per_job.unwrap_or(1000).max(1) as usize,
            health_every: Duration::from_secs(spec.health_check_seconds.unwrap_or(60).max(1)),
        }
    }
}

/// Whether the archive answers, as its last check found it (see [`Stager::watch`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ArchiveHealth {
    /// `ok` or `failing`.
    pub state: &'static str,
    /// Why it is failing, in the driver's words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Seconds since the state last changed.
    pub since_seconds: u64,
    /// Seconds since the last check.
    pub checked_seconds_ago: u64,
}

/// The health checks of one archive: the file they ask about, the last answer.
#[derive(Debug, Default)]
struct Health {
    /// An archive path the checks ask about (the first one a dataset named).
    sample: Option<String>,
    /// The checking thread runs.
    checking: bool,
    /// Check now, not at the next interval (a recall failed).
    wake: bool,
    /// The last answer: `Err` why not, since when it has been so, when it was asked.
    last: Option<(Result<(), String>, Instant, Instant)>,
}

/// One tape archive's recall queue and staging cache.
#[derive(Debug)]
pub struct Stager {
    driver: Arc<dyn Driver>,
    cache: Arc<StagingCache>,
    limits: Limits,
    state: Mutex<State>,
    changed: Condvar,
    health: Mutex<Health>,
    check: Condvar,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} files in flight", self.flights.len())
    }
}

/// The process's stagers, by staging directory.
fn stagers() -> MutexGuard<'static, HashMap<String, Arc<Stager>>> {
    static ALL: OnceLock<Mutex<HashMap<String, Arc<Stager>>>> = OnceLock::new();
    ALL.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The stager of `spec`'s staging directory if a dataset has made one (never makes one: a
/// reader of `/status` must not start an archive's threads).
pub fn existing(spec: &TapeSpec) -> Option<Arc<Stager>> {
    stagers().get(&spec.staging_dir).cloned()
}

/// Stagers by staging directory: datasets sharing a cache share one queue and budget.
pub fn stager_for(spec: &TapeSpec) -> Result<Arc<Stager>, String> {
    let mut all = stagers();
    if let Some(s) = all.get(&spec.staging_dir) {
        return Ok(s.clone());
    }
    let driver: Arc<dyn Driver> = match (&spec.driver.command, &spec.driver.wlcg) {
        (Some(c), None) => Arc::new(CommandDriver::new(c)?),
        (None, Some(w)) => Arc::new(WlcgDriver::new(w)?),
        _ => return Err("tape.driver: set exactly one of command and wlcg".into()),
    };
    let cache = StagingCache::open(
        Path::new(&spec.staging_dir),
        spec.budget_bytes.unwrap_or(100 << 30),
    )
    .map_err(|e| format!("tape.stagingDir {}: {e}", spec.staging_dir))?;
    let s = Arc::new(Stager::new(driver, Arc::new(cache), Limits::of(spec)));
    all.insert(spec.staging_dir.clone(), s.clone());
    Ok(s)
}

impl Stager {
    /// A stager over `cache` recalling with `driver`.
    pub fn new(driver: Arc<dyn Driver>, cache: Arc<StagingCache>, limits: Limits) -> Self {
        Self {
            driver,
            cache,
            limits,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            health: Mutex::new(Health::default()),
            check: Condvar::new(),
        }
    }

    fn health_lock(&self) -> MutexGuard<'_, Health> {
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Names archive file `path` as one a dataset reads: the first one named becomes what
    /// the archive is asked about, every `healthCheckSeconds`, by a thread started here (the
    /// driver's [`Driver::probe`]; none for drivers without one). A dataset that only lists
    /// and describes its files never needs the archive, so its failing is not an error of
    /// the dataset: it is reported ([`Stager::health`]) while staged files are still served.
    pub fn watch(self: &Arc<Self>, path: &str) {
        let mut h = self.health_lock();
        if h.sample.is_none() {
            h.sample = Some(path.to_string());
        }
        if h.checking {
            return;
        }
        h.checking = true;
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("cloudify-tape-check".into())
            .spawn(move || me.checker());
        if let Err(e) = spawned {
            h.checking = false;
            tracing::error!("cannot start the tape health thread: {e}");
        }
    }

    /// Whether the archive answered its last check; `None` before the first answer and for
    /// drivers that cannot be asked.
    pub fn health(&self) -> Option<ArchiveHealth> {
        let h = self.health_lock();
        let (result, since, at) = h.last.as_ref()?;
        Some(ArchiveHealth {
            state: if result.is_ok() { "ok" } else { "failing" },
            error: result.as_ref().err().cloned(),
            since_seconds: since.elapsed().as_secs(),
            checked_seconds_ago: at.elapsed().as_secs(),
        })
    }

    /// The checking thread: asks, records, waits for the interval or a failed recall. Ends
    /// at once for a driver that has no question to ask.
    fn checker(self: Arc<Self>) {
        loop {
            let sample = self.health_lock().sample.clone();
            if let Some(sample) = sample {
                let Some(answer) = self.driver.probe(&sample) else {
                    return;
                };
                self.record(answer);
            }
            let deadline = Instant::now() + self.limits.health_every;
            let mut h = self.health_lock();
            while !h.wake {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                h = self
                    .check
                    .wait_timeout(h, deadline - now)
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0;
            }
            h.wake = false;
        }
    }

    /// Keeps a check's answer; `since` moves only when ok turns failing or back.
    fn record(&self, answer: Result<(), String>) {
        let now = Instant::now();
        let mut h = self.health_lock();
        let since = match (&h.last, &answer) {
            (Some((before, since, _)), _) if before.is_ok() == answer.is_ok() => *since,
            (_, Err(e)) => {
                tracing::warn!("tape archive check failed: {e}");
                metrics().archives_failing.inc();
                now
            }
            // failing before (the first answer being ok changes no count)
            (Some(_), Ok(())) => {
                tracing::info!("tape archive answers again");
                metrics().archives_failing.dec();
                now
            }
            (None, Ok(())) => now,
        };
        h.last = Some((answer, since, now));
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The staged copy of archive file `path`, pinned, after waiting at most the configured
    /// time for its recall (started here if none runs).
    pub fn acquire(self: &Arc<Self>, path: &str) -> Result<Pin, TapeError> {
        self.acquire_within(path, self.limits.wait)
    }

    /// [`Stager::acquire`] waiting at most `wait`.
    pub fn acquire_within(self: &Arc<Self>, path: &str, wait: Duration) -> Result<Pin, TapeError> {
        let deadline = Instant::now() + wait;
        let mut st = self.lock();
        loop {
            if let Some(pin) = self.cache.pin(path) {
                return Ok(pin);
            }
            match st.flights.get(path).cloned() {
                None => self.enqueue(&mut st, path),
                Some(Flight::Failed { reason, until, .. }) => {
                    let now = Instant::now();
                    if until > now {
                        return Err(TapeError::Failed {
                            path: path.to_string(),
                            reason,
                            retry_after: (until - now).as_secs().max(1),
                        });
                    }
                    self.enqueue(&mut st, path);
                }
                Some(_) => {}
            }
            let now = Instant::now();
            if now >= deadline {
                let (state, job, eta) = match st.flights.get(path) {
                    Some(Flight::Recalling { job, eta }) => ("recalling", Some(job.clone()), *eta),
                    _ => ("queued", None, None),
                };
                metrics().unavailable.inc();
                return Err(TapeError::Nearline {
                    path: path.to_string(),
                    state,
                    job,
                    retry_after: eta.unwrap_or(self.limits.retry_after).max(1),
                });
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
            // A staged file may have been refused by a full cache while we waited.
            if let Some(Flight::Failed { reason, .. }) = st.flights.get(path)
                && reason.starts_with(CACHE_FULL)
            {
                let reason = reason.clone();
                metrics().unavailable.inc();
                return Err(TapeError::CacheFull {
                    path: path.to_string(),
                    reason,
                    retry_after: self.limits.wait.as_secs().max(1) * 3,
                });
            }
        }
    }

    /// Queues `path` for recall (callers hold the state lock).
    fn enqueue(self: &Arc<Self>, st: &mut State, path: &str) {
        st.flights.insert(path.to_string(), Flight::Queued);
        st.pending.push(path.to_string());
        metrics().queued.inc();
        if !st.batcher {
            st.batcher = true;
            let me = self.clone();
            let spawned = std::thread::Builder::new()
                .name("cloudify-tape".into())
                .spawn(move || me.batcher());
            if let Err(e) = spawned {
                st.batcher = false;
                tracing::error!("cannot start the tape recall thread: {e}");
            }
        }
        self.changed.notify_all();
    }

    /// Queues files for recall without waiting (`POST /datasets/{id}/stage`); how many were
    /// queued (staged files and files already in flight are not).
    pub fn stage(self: &Arc<Self>, paths: &[String]) -> usize {
        let mut st = self.lock();
        let mut n = 0;
        for p in paths {
            if self.cache.contains(p) {
                continue;
            }
            let retry = match st.flights.get(p) {
                None => true,
                Some(Flight::Failed { until, .. }) => *until <= Instant::now(),
                Some(_) => false,
            };
            if retry {
                self.enqueue(&mut st, p);
                n += 1;
            }
        }
        n
    }

    /// Where each of `paths` is, and the queue: files waiting for a batch, jobs running.
    pub fn locality(&self, paths: &[String]) -> (Vec<FileLocality>, usize, usize) {
        let offline: Vec<String> = paths
            .iter()
            .filter(|p| !self.cache.contains(p))
            .cloned()
            .collect();
        let archive = if offline.is_empty() {
            None
        } else {
            self.driver.archive_info(&offline)
        };
        let st = self.lock();
        let files = paths
            .iter()
            .map(|p| {
                let mut l = FileLocality {
                    path: p.clone(),
                    state: "nearline",
                    job: None,
                    reason: None,
                    archive: archive.as_ref().and_then(|a| a.get(p).cloned()),
                };
                if self.cache.contains(p) {
                    l.state = "online";
                } else {
                    match st.flights.get(p) {
                        Some(Flight::Queued) => l.state = "queued",
                        Some(Flight::Recalling { job, .. }) => {
                            l.state = "recalling";
                            l.job = Some(job.clone());
                        }
                        Some(Flight::Failed { reason, .. }) => {
                            l.state = "failed";
                            l.reason = Some(reason.clone());
                        }
                        None => {}
                    }
                }
                l
            })
            .collect();
        (files, st.pending.len(), st.jobs_running)
    }

    /// The driver's estimate of the seconds left for the recalls of `paths` now running: the
    /// longest of them, as of its last status poll. `None` when none of them is being
    /// recalled with an estimate (staged, queued, failed, or the driver gives none).
    pub fn eta(&self, paths: &[String]) -> Option<u64> {
        let st = self.lock();
        paths
            .iter()
            .filter_map(|p| match st.flights.get(p) {
                Some(Flight::Recalling { eta, .. }) => *eta,
                _ => None,
            })
            .max()
    }

    /// Bytes staged, files staged, evictions, budget.
    pub fn cache_usage(&self) -> (u64, usize, u64, u64) {
        let (b, n, e) = self.cache.usage();
        (b, n, e, self.cache.budget())
    }

    /// The batcher: collects queued files over the window, plans jobs per tape, starts them
    /// within the parallel-job limit. Runs for the life of the process (one per archive).
    fn batcher(self: Arc<Self>) {
        loop {
            let mut st = self.lock();
            while st.pending.is_empty() {
                st = self
                    .changed
                    .wait(st)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            drop(st);
            std::thread::sleep(self.limits.window);
            let files = std::mem::take(&mut self.lock().pending);
            metrics().queued.sub(files.len() as i64);
            let tapes = match self.driver.tapes(&files) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!("tape grouping failed, recalling files one tape each: {e}");
                    HashMap::new()
                }
            };
            let jobs = batch::plan(
                &files,
                &tapes,
                self.limits.tapes_per_job,
                self.limits.files_per_job,
                self.driver.orders_by_tape(),
            );
            for job in jobs {
                let mut st = self.lock();
                while st.jobs_running >= self.limits.parallel_jobs {
                    st = self
                        .changed
                        .wait(st)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                st.jobs_running += 1;
                drop(st);
                metrics().jobs.inc();
                let me = self.clone();
                let spawned = std::thread::Builder::new()
                    .name("cloudify-recall".into())
                    .spawn(move || {
                        me.run_job(&job);
                        metrics().jobs.dec();
                        me.lock().jobs_running -= 1;
                        me.changed.notify_all();
                    });
                if let Err(e) = spawned {
                    metrics().jobs.dec();
                    self.lock().jobs_running -= 1;
                    tracing::error!("cannot start a tape recall job thread: {e}");
                }
            }
        }
    }

    /// Records that `files` failed with `reason` (backoff doubling per failure).
    fn fail(&self, files: &[String], reason: &str) {
        let mut st = self.lock();
        for f in files {
            let attempts = st.attempts.get(f).copied().unwrap_or(0) + 1;
            st.attempts.insert(f.clone(), attempts);
            let backoff = self
                .limits
                .backoff
                .saturating_mul(1 << (attempts - 1).min(10))
                .min(Duration::from_secs(3600));
            st.flights.insert(
                f.clone(),
                Flight::Failed {
                    reason: reason.to_string(),
                    until: Instant::now() + backoff,
                },
            );
            metrics().failures.inc();
            tracing::warn!(file = %f, attempts, "tape recall failed: {reason}");
        }
        self.changed.notify_all();
        drop(st);
        // a failed recall may be the archive gone: check it now, not at the next interval
        self.health_lock().wake = true;
        self.check.notify_all();
    }

    /// One job: submit, follow, retrieve each file into the cache.
    fn run_job(&self, files: &[String]) {
        let t0 = Instant::now();
        let job = match self.driver.submit(files) {
            Ok(j) => j,
            Err(e) => return self.fail(files, &e),
        };
        tracing::info!(job = %job, files = files.len(), "tape recall submitted");
        {
            let mut st = self.lock();
            for f in files {
                st.flights.insert(
                    f.clone(),
                    Flight::Recalling {
                        job: job.clone(),
                        eta: None,
                    },
                );
            }
            self.changed.notify_all();
        }
        let mut errors = 0;
        let failed = loop {
            match self.driver.status(&job) {
                Ok(JobStatus::Finished { failed }) => break failed,
                Ok(JobStatus::Failed(reason)) => return self.fail(files, &format!("job {job}: {reason}")),
                Ok(JobStatus::Running { eta }) => {
                    errors = 0;
                    let mut st = self.lock();
                    for f in files {
                        st.flights.insert(
                            f.clone(),
                            Flight::Recalling {
                                job: job.clone(),
                                eta,
                            },
                        );
                    }
                }
                Err(e) => {
                    // A status call failing now and then is the archive being busy; a job
                    // whose status cannot be had at all is failed, not waited for forever.
                    errors += 1;
                    if errors >= 5 {
                        return self.fail(files, &format!("job {job}: status unavailable: {e}"));
                    }
                }
            }
            std::thread::sleep(self.limits.poll);
        };
        let mut done = Vec::new();
        for f in files {
            if let Some(why) = failed.get(f) {
                self.fail(std::slice::from_ref(f), why);
                continue;
            }
            match self.retrieve_one(&job, f) {
                Ok(()) => {
                    let mut st = self.lock();
                    st.flights.remove(f);
                    st.attempts.remove(f);
                    done.push(f.clone());
                    self.changed.notify_all();
                }
                Err(e) => self.fail(std::slice::from_ref(f), &e),
            }
        }
        if !done.is_empty() {
            self.driver.release(&job, &done);
        }
        metrics().seconds.observe(t0.elapsed().as_secs_f64());
        let (bytes, _, evictions) = self.cache.usage();
        metrics().cache_bytes.set(bytes as i64);
        metrics().evictions.set(evictions as i64);
    }

    /// Copies one recalled file into the cache (temporary name, then renamed).
    fn retrieve_one(&self, job: &str, f: &str) -> Result<(), String> {
        let part = self
            .cache
            .part_path(f)
            .map_err(|e| format!("staging directory: {e}"))?;
        if let Err(e) = self.driver.retrieve(job, f, &part) {
            let _ = std::fs::remove_file(&part);
            return Err(format!("retrieve: {e}"));
        }
        match self.cache.admit(f, &part) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(full)) => Err(format!("{CACHE_FULL}: {full}")),
            Err(e) => {
                let _ = std::fs::remove_file(&part);
                Err(format!("staging directory: {e}"))
            }
        }
    }
}

/// Prefix of a failure that is the cache's, not the archive's (answered 503, not 502).
const CACHE_FULL: &str = "staging cache full";

impl TapeError {
    /// True for failures a client should see as 503 (retry later) rather than 502.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Nearline { .. } | Self::CacheFull { .. } => true,
            Self::Failed { reason, .. } => reason.starts_with(CACHE_FULL),
        }
    }
}

/// Tape recall metrics, process-wide (registered in the server's registry).
#[derive(Debug, Clone)]
pub struct TapeMetrics {
    /// Files waiting for their batch.
    pub queued: prometheus::IntGauge,
    /// Recall jobs running.
    pub jobs: prometheus::IntGauge,
    /// Duration of a recall job, submit to the last file staged.
    pub seconds: prometheus::Histogram,
    /// Bytes in staging caches.
    pub cache_bytes: prometheus::IntGauge,
    /// Files evicted from staging caches.
    pub evictions: prometheus::IntGauge,
    /// Files whose recall failed.
    pub failures: prometheus::IntCounter,
    /// Requests answered 503 because a file was on tape (or the cache was full).
    pub unavailable: prometheus::IntCounter,
    /// Archives whose last health check failed ([`Stager::health`]).
    pub archives_failing: prometheus::IntGauge,
}

/// The process's tape metrics.
#[allow(
    clippy::expect_used,
    reason = "fixed metric names: construction fails only on a programming error, which the unit tests find"
)]
pub fn metrics() -> &'static TapeMetrics {
    static M: OnceLock<TapeMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let g = |n: &str, h: &str| prometheus::IntGauge::new(n, h).expect("tape metric definition");
        TapeMetrics {
            queued: g(
                "cloudify_tape_queue_files",
                "Files waiting for their recall batch",
            ),
            jobs: g("cloudify_tape_recalls_in_flight", "Tape recall jobs running"),
            seconds: prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new(
                    "cloudify_tape_recall_seconds",
                    "Duration of one tape recall job, submitted to staged",
                )
                .buckets(vec![
                    1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
                ]),
            )
            .expect("tape metric definition"),
            cache_bytes: g("cloudify_tape_cache_bytes", "Bytes held in tape staging caches"),
            evictions: g(
                "cloudify_tape_cache_evictions",
                "Files evicted from tape staging caches since start",
            ),
            failures: prometheus::IntCounter::new(
                "cloudify_tape_recall_failures_total",
                "Files whose tape recall failed",
            )
            .expect("tape metric definition"),
            unavailable: prometheus::IntCounter::new(
                "cloudify_tape_unavailable_total",
                "Reads answered 503 because their file was still on tape or the staging cache was full",
            )
            .expect("tape metric definition"),
            archives_failing: g(
                "cloudify_tape_archives_failing",
                "Tape archives whose last health check failed (unreachable, refusing, answering wrongly)",
            ),
        }
    })
}

#[cfg(test)]
mod tests;
