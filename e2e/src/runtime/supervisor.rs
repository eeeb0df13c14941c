//! One container as a supervised local process: start, probes, restarts with backoff — the
//! kubelet's job for a container with `restartPolicy: Always` (the only policy Deployments
//! allow).
//!
//! Differences from the kubelet, chosen for test speed: the restart backoff starts at
//! [`SupervisorOptions::backoff_initial`] (kubelet: 10 s) and is capped at `backoff_max`
//! (kubelet: 5 min), and readiness/startup probe periods can be capped by `probe_period_max`
//! so pods become Ready within a second instead of a full `periodSeconds` (liveness keeps
//! its period, so a slow starter is not killed sooner than on a cluster).

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::sleep_until;

use super::plan::{ProbeAction, ProbePlan, ProcessPlan};
use super::signal;

/// Timing knobs (see the module docs for how they differ from the kubelet).
#[derive(Debug, Clone)]
pub struct SupervisorOptions {
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A run this long resets the backoff.
    pub backoff_reset: Duration,
    pub probe_period_max: Option<Duration>,
    /// Between SIGTERM and SIGKILL when stopping (the pod's grace period).
    pub termination_grace: Duration,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        SupervisorOptions {
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(10),
            backoff_reset: Duration::from_secs(10),
            probe_period_max: None,
            termination_grace: Duration::from_secs(5),
        }
    }
}

/// How a container run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminated {
    pub exit_code: i32,
    pub signal: Option<i32>,
    /// `Completed`, `Error`, or `Unhealthy` (killed after failed liveness/startup probes).
    pub reason: String,
    pub message: Option<String>,
    pub started_at: SystemTime,
    pub finished_at: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Waiting { reason: String, message: Option<String> },
    Running { started_at: SystemTime, pid: u32 },
    Terminated(Terminated),
}

/// What the pod status reports for the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub state: State,
    pub last_state: Option<Terminated>,
    pub restart_count: i32,
    pub ready: bool,
    pub started: bool,
}

/// A running supervisor; dropping it kills the process.
#[derive(Debug)]
pub struct Supervisor {
    status: watch::Receiver<Snapshot>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Supervisor {
    /// Starts supervising `plan`; output goes to `log` (appended across restarts).
    pub fn spawn(plan: ProcessPlan, log: PathBuf, opts: SupervisorOptions) -> Supervisor {
        let (tx, rx) = watch::channel(Snapshot {
            state: State::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            },
            last_state: None,
            restart_count: 0,
            ready: false,
            started: false,
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(supervise(plan, log, opts, tx, stop_rx));
        Supervisor {
            status: rx,
            stop: stop_tx,
            task,
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        self.status.borrow().clone()
    }

    /// A receiver that changes whenever the snapshot does.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.status.clone()
    }

    /// SIGTERM, then SIGKILL after the grace period; returns once the process is gone.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn supervise(
    plan: ProcessPlan,
    log: PathBuf,
    opts: SupervisorOptions,
    tx: watch::Sender<Snapshot>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = opts.backoff_initial;
    let http = reqwest::Client::builder().no_proxy().build().ok();
    loop {
        let started_at = SystemTime::now();
        let started_instant = Instant::now();
        let terminated = match spawn(&plan, &log) {
            Err(message) => Terminated {
                exit_code: 128,
                signal: None,
                reason: "StartError".into(),
                message: Some(message),
                started_at,
                finished_at: SystemTime::now(),
            },
            Ok(mut child) => {
                let pid = child.id().unwrap_or(0);
                let _ = std::fs::write(log.with_extension("pid"), pid.to_string());
                tx.send_modify(|s| {
                    s.state = State::Running { started_at, pid };
                    s.started = plan.startup.is_none();
                    s.ready = plan.readiness.is_none() && plan.startup.is_none();
                });
                let outcome = run(&plan, &mut child, &opts, &tx, &mut stop, http.as_ref()).await;
                let (exit_code, sig) = exit_of(&outcome.status);
                let reason = match (&outcome.killed_for, exit_code) {
                    (Some(_), _) => "Unhealthy".to_string(),
                    (None, 0) => "Completed".to_string(),
                    _ => "Error".to_string(),
                };
                Terminated {
                    exit_code,
                    signal: sig,
                    reason,
                    message: outcome.killed_for,
                    started_at,
                    finished_at: SystemTime::now(),
                }
            }
        };
        tracing::info!(container = %plan.container, code = terminated.exit_code, reason = %terminated.reason,
            message = ?terminated.message, "container exited");
        let stopping = *stop.borrow();
        if stopping {
            tx.send_modify(|s| {
                s.state = State::Terminated(terminated);
                s.ready = false;
            });
            return;
        }
        if started_instant.elapsed() >= opts.backoff_reset {
            backoff = opts.backoff_initial;
        }
        tx.send_modify(|s| {
            s.state = State::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: Some(format!(
                    "back-off {:?} restarting failed container {}",
                    backoff, plan.container
                )),
            };
            s.last_state = Some(terminated);
            s.restart_count += 1;
            s.ready = false;
            s.started = false;
        });
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopped(&mut stop) => {
                tx.send_modify(|s| {
                    if let Some(t) = s.last_state.clone() {
                        s.state = State::Terminated(t);
                    }
                });
                return;
            }
        }
        backoff = (backoff * 2).min(opts.backoff_max);
    }
}

fn spawn(plan: &ProcessPlan, log: &PathBuf) -> Result<Child, String> {
    let open = || {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("{}: {e}", log.display()))
    };
    let (stdout, stderr) = (open()?, open()?);
    Command::new(&plan.program)
        .args(&plan.args)
        .env_clear()
        .envs(plan.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&plan.cwd)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", plan.program.display()))
}

struct Outcome {
    status: Option<std::process::ExitStatus>,
    /// Why we killed it (liveness/startup), if we did.
    killed_for: Option<String>,
}

fn exit_of(status: &Option<std::process::ExitStatus>) -> (i32, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => (code, None),
            (None, Some(sig)) => (128 + sig, Some(sig)),
            _ => (1, None),
        },
        None => (137, Some(9)),
    }
}

struct ProbeState<'a> {
    plan: &'a ProbePlan,
    next: tokio::time::Instant,
    period: Duration,
    successes: u32,
    failures: u32,
}

impl<'a> ProbeState<'a> {
    fn new(plan: &'a ProbePlan, cap: Option<Duration>) -> Self {
        let period = cap.map_or(plan.period, |c| plan.period.min(c));
        ProbeState {
            plan,
            next: tokio::time::Instant::now() + plan.initial_delay,
            period,
            successes: 0,
            failures: 0,
        }
    }

    /// Records a result; returns the new verdict once a threshold is crossed.
    fn record(&mut self, ok: bool) -> Option<bool> {
        self.next = tokio::time::Instant::now() + self.period;
        if ok {
            self.failures = 0;
            self.successes += 1;
            (self.successes >= self.plan.success_threshold).then_some(true)
        } else {
            self.successes = 0;
            self.failures += 1;
            (self.failures >= self.plan.failure_threshold).then_some(false)
        }
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86400 * 365)
}

async fn run(
    plan: &ProcessPlan,
    child: &mut Child,
    opts: &SupervisorOptions,
    tx: &watch::Sender<Snapshot>,
    stop: &mut watch::Receiver<bool>,
    http: Option<&reqwest::Client>,
) -> Outcome {
    let cap = opts.probe_period_max;
    let mut startup = plan.startup.as_ref().map(|p| ProbeState::new(p, cap));
    let mut readiness = plan.readiness.as_ref().map(|p| ProbeState::new(p, cap));
    // Liveness keeps its real period: capping it would kill slow starters.
    let mut liveness = plan.liveness.as_ref().map(|p| ProbeState::new(p, None));
    loop {
        let started = startup.is_none();
        let next = |p: &Option<ProbeState>| match p {
            Some(p) => p.next,
            None => far_future(),
        };
        let (s_next, r_next, l_next) = (
            next(&startup),
            if started { next(&readiness) } else { far_future() },
            if started { next(&liveness) } else { far_future() },
        );
        tokio::select! {
            status = child.wait() => {
                return Outcome { status: status.ok(), killed_for: None };
            }
            _ = stopped(stop) => {
                return Outcome { status: terminate(child, opts.termination_grace).await, killed_for: None };
            }
            _ = sleep_until(s_next) => {
                if let Some(p) = startup.as_mut() {
                    let ok = probe(&p.plan.action, p.plan.timeout, http).await;
                    match p.record(ok) {
                        Some(true) => {
                            startup = None;
                            tx.send_modify(|s| { s.started = true; s.ready = plan.readiness.is_none(); });
                        }
                        Some(false) => {
                            let msg = "startup probe failed".to_string();
                            return Outcome { status: terminate(child, opts.termination_grace).await, killed_for: Some(msg) };
                        }
                        None => {}
                    }
                }
            }
            _ = sleep_until(r_next) => {
                if let Some(p) = readiness.as_mut() {
                    let ok = probe(&p.plan.action, p.plan.timeout, http).await;
                    if let Some(ready) = p.record(ok) {
                        tx.send_if_modified(|s| {
                            let changed = s.ready != ready;
                            s.ready = ready;
                            changed
                        });
                    }
                }
            }
            _ = sleep_until(l_next) => {
                if let Some(p) = liveness.as_mut() {
                    let ok = probe(&p.plan.action, p.plan.timeout, http).await;
                    if p.record(ok) == Some(false) {
                        let msg = format!("liveness probe failed {} times", p.plan.failure_threshold);
                        return Outcome { status: terminate(child, opts.termination_grace).await, killed_for: Some(msg) };
                    }
                }
            }
        }
    }
}

/// Resolves once a stop was requested (or the supervisor handle is gone). The guard that
/// `wait_for` returns is dropped here, so callers' futures stay `Send`.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// SIGTERM, wait up to `grace`, then SIGKILL.
async fn terminate(child: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
    if let Some(pid) = child.id() {
        let _ = signal(pid, rustix::process::Signal::TERM);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            let _ = child.kill().await;
            child.wait().await.ok()
        }
    }
}

async fn probe(action: &ProbeAction, timeout: Duration, http: Option<&reqwest::Client>) -> bool {
    match action {
        ProbeAction::HttpGet { port, path, headers } => {
            let Some(http) = http else { return false };
            let mut req = http
                .get(format!("http://127.0.0.1:{port}{path}"))
                .timeout(timeout);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            match req.send().await {
                Ok(resp) => (200..400).contains(&resp.status().as_u16()),
                Err(_) => false,
            }
        }
        ProbeAction::TcpSocket { port } => matches!(
            tokio::time::timeout(timeout, tokio::net::TcpStream::connect(("127.0.0.1", *port))).await,
            Ok(Ok(_))
        ),
    }
}
