//! A real nginx as a child process: its own prefix, pid file and logs in a state dir, started in
//! the foreground (`daemon off`) so it dies with us, reloaded by SIGHUP after `nginx -t`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::runtime::signal;

#[derive(Debug, thiserror::Error)]
pub enum NginxError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot run {binary}: {source} (install the Debian package nginx)")]
    Spawn { binary: PathBuf, source: std::io::Error },
    #[error("nginx rejected the configuration {path}:\n{output}")]
    Invalid { path: PathBuf, output: String },
    #[error("nginx exited: {0}")]
    Exited(String),
    #[error(
        "nginx did not serve configuration generation {generation} within {waited:?}; \
         its status listener last answered: {last}; its log ends:\n{log}"
    )]
    Timeout {
        generation: u64,
        waited: Duration,
        last: String,
        log: String,
    },
}

/// The running nginx.
#[derive(Debug)]
pub struct Nginx {
    binary: PathBuf,
    state_dir: PathBuf,
    status: SocketAddr,
    child: Child,
    generation: u64,
    http: reqwest::Client,
}

const READY_TIMEOUT: Duration = Duration::from_secs(15);

impl Nginx {
    /// Validates `config`, starts nginx with it and waits until it serves `generation` on its
    /// status listener (see [`super::render::RenderOptions::status`]).
    pub async fn start(
        binary: &Path,
        state_dir: &Path,
        config: &str,
        status: SocketAddr,
        generation: u64,
    ) -> Result<Self, NginxError> {
        for dir in ["temp", "tls"] {
            let path = state_dir.join(dir);
            std::fs::create_dir_all(&path).map_err(|source| NginxError::Io { path, source })?;
        }
        let conf = write_validated(binary, state_dir, config).await?;
        let log = state_dir.join("nginx.stderr");
        let stderr = std::fs::File::create(&log).map_err(|source| NginxError::Io { path: log, source })?;
        let child = Command::new(binary)
            .arg("-p")
            .arg(state_dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(state_dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|source| NginxError::Spawn {
                binary: binary.to_path_buf(),
                source,
            })?;
        let mut nginx = Nginx {
            binary: binary.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            status,
            child,
            generation,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(2))
                .build()
                .map_err(|e| NginxError::Exited(e.to_string()))?,
        };
        nginx.wait_for_generation(generation).await?;
        Ok(nginx)
    }

    /// The generation nginx currently serves.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Validates `config` with `nginx -t`, puts it in place atomically and reloads gracefully
    /// (SIGHUP: new workers take new connections, old ones finish their requests), then waits
    /// until the new generation answers. An invalid config leaves the running one untouched.
    pub async fn reload(&mut self, config: &str, generation: u64) -> Result<(), NginxError> {
        self.check_running()?;
        write_validated(&self.binary, &self.state_dir, config).await?;
        let pid = self
            .child
            .id()
            .ok_or_else(|| NginxError::Exited("no pid".into()))?;
        let old_workers = children(pid);
        signal(pid, rustix::process::Signal::HUP).map_err(|source| NginxError::Io {
            path: self.state_dir.join("nginx.pid"),
            source,
        })?;
        self.wait_for_generation(generation).await?;
        // New workers answer before the old ones have stopped accepting; only once the old
        // workers are gone is every new connection guaranteed the new config. They finish
        // their in-flight requests first (no client keep-alive), so this is bounded by the
        // longest request; past the timeout we go on (old routes may linger for that request).
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline && !children(pid).is_disjoint(&old_workers) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.generation = generation;
        Ok(())
    }

    fn check_running(&mut self) -> Result<(), NginxError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(NginxError::Exited(format!("{status}; {}", self.stderr_tail()))),
            Err(e) => Err(NginxError::Exited(e.to_string())),
        }
    }

    fn stderr_tail(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.state_dir.join(name)).unwrap_or_default();
        let text = read("nginx.stderr") + &read("error.log");
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    async fn wait_for_generation(&mut self, generation: u64) -> Result<(), NginxError> {
        let url = format!("http://{}/generation", self.status);
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = "nothing yet".to_string();
        while Instant::now() < deadline {
            self.check_running()?;
            match self.http.get(&url).send().await {
                Ok(resp) => {
                    let status = resp.status();
                    match resp.text().await {
                        Ok(body) if body.trim() == generation.to_string() => return Ok(()),
                        Ok(body) => last = format!("{status} {:?}", body.trim()),
                        Err(e) => last = format!("{status}, body unreadable: {e}"),
                    }
                }
                Err(e) => last = format!("{e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(NginxError::Timeout {
            generation,
            waited: READY_TIMEOUT,
            last,
            log: self.stderr_tail(),
        })
    }

    /// Graceful stop (SIGQUIT), then SIGKILL after a few seconds.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = signal(pid, rustix::process::Signal::QUIT);
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

impl Drop for Nginx {
    /// Dropped without [`Nginx::stop`] (a panic, an aborted task): SIGTERM makes the master
    /// stop its workers too. SIGKILL (tokio's kill-on-drop) would orphan the workers, which
    /// would keep the listening sockets.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait()
            && let Some(pid) = self.child.id()
        {
            let _ = signal(pid, rustix::process::Signal::TERM);
        }
    }
}

/// Child processes (nginx workers) of `pid`, from procfs.
fn children(pid: u32) -> BTreeSet<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Writes `config` next to the live file, validates it with `nginx -t` and renames it over
/// `nginx.conf` (atomic: nginx never reads a half-written file).
async fn write_validated(binary: &Path, state_dir: &Path, config: &str) -> Result<PathBuf, NginxError> {
    let live = state_dir.join("nginx.conf");
    let candidate = state_dir.join("nginx.conf.new");
    std::fs::write(&candidate, config).map_err(|source| NginxError::Io {
        path: candidate.clone(),
        source,
    })?;
    let output = Command::new(binary)
        .arg("-t")
        .arg("-q")
        .arg("-p")
        .arg(state_dir)
        .arg("-c")
        .arg(&candidate)
        .arg("-e")
        .arg(state_dir.join("error.log"))
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| NginxError::Spawn {
            binary: binary.to_path_buf(),
            source,
        })?;
    if !output.status.success() {
        return Err(NginxError::Invalid {
            path: candidate,
            output: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    std::fs::rename(&candidate, &live).map_err(|source| NginxError::Io {
        path: live.clone(),
        source,
    })?;
    Ok(live)
}
