//! Tape drivers: how a recall is started, followed and copied into the staging cache.
//!
//! Two kinds: commands (StrongLink's `slk`/`slk_helpers`, or any tool with the same verbs)
//! and the WLCG Tape REST API (dCache, CTA). Drivers are blocking: the stager calls them
//! from its own threads, never from a request.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cloudify_crds::{TapeCommandDriver, TapeWlcgDriver};

/// Where a recall job is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobStatus {
    /// Queued or running; `eta`: the driver's estimate of seconds to completion.
    Running {
        /// Seconds to completion, when the driver says.
        eta: Option<u64>,
    },
    /// Finished; the files that could not be recalled, with the driver's reason.
    Finished {
        /// Files that failed, by archive path.
        failed: HashMap<String, String>,
    },
    /// The whole job failed (FAILED, ABORTED, CANCELLED), with the driver's reason.
    Failed(String),
}

/// A tape archive's recall interface. Errors are the driver's words (command output,
/// HTTP status and body), for messages.
pub trait Driver: Send + Sync + std::fmt::Debug {
    /// The tape of each file; files left out are grouped on their own.
    fn tapes(&self, files: &[String]) -> Result<HashMap<String, String>, String>;
    /// Starts recalling `files`; the job id.
    fn submit(&self, files: &[String]) -> Result<String, String>;
    /// The state of job `job`.
    fn status(&self, job: &str) -> Result<JobStatus, String>;
    /// Copies recalled `file` to `dest` (a temporary name in the staging cache).
    fn retrieve(&self, job: &str, file: &str, dest: &Path) -> Result<(), String>;
    /// The job's files are in the cache: the archive may drop its disk copies.
    fn release(&self, _job: &str, _files: &[String]) {}
    /// Locality of `files` as the archive reports it (`ONLINE`, `NEARLINE`, ...), when it can.
    fn archive_info(&self, _files: &[String]) -> Option<HashMap<String, String>> {
        None
    }
    /// True when the archive orders one job's files by tape itself, so files it gives no
    /// tape for are best sent in as few jobs as possible (see [`super::batch::plan`]).
    fn orders_by_tape(&self) -> bool {
        false
    }
    /// Asks the archive, about file `sample`, whether it answers as configured: `None` when
    /// the driver has no such question (commands: their programs are checked at opening),
    /// else the reason it does not (unreachable, refused, an answer of the wrong form).
    fn probe(&self, _sample: &str) -> Option<Result<(), String>> {
        None
    }
}

/// Runs `slk`-like commands.
#[derive(Debug)]
pub struct CommandDriver {
    spec: TapeCommandDriver,
    job_re: regex::Regex,
    eta_re: Option<regex::Regex>,
    timeout: Duration,
}

impl CommandDriver {
    /// Checks the templates (each names a program that can be run: a missing `slk` is a
    /// misconfiguration to report when the dataset opens, in `/status` and on the
    /// CloudifyDataset, not at the first chunk read) and the regular expressions.
    pub fn new(spec: &TapeCommandDriver) -> Result<Self, String> {
        let job_re = regex::Regex::new(spec.job_id_regex.as_deref().unwrap_or(r"(\d+)"))
            .map_err(|e| format!("tape.driver.command.jobIdRegex: {e}"))?;
        if job_re.captures_len() < 2 {
            return Err("tape.driver.command.jobIdRegex: needs a group for the job id".into());
        }
        let eta_re = spec
            .eta_regex
            .as_deref()
            .map(regex::Regex::new)
            .transpose()
            .map_err(|e| format!("tape.driver.command.etaRegex: {e}"))?;
        for (field, template) in [
            ("recall", &spec.recall),
            ("status", &spec.status),
            ("retrieve", &spec.retrieve),
        ] {
            check_program(field, template)?;
        }
        if !spec.tape_of.is_empty() {
            check_program("tapeOf", &spec.tape_of)?;
        }
        Ok(Self {
            spec: spec.clone(),
            job_re,
            eta_re,
            timeout: Duration::from_secs(spec.timeout_seconds.unwrap_or(300)),
        })
    }

    /// Runs `template` with placeholders replaced; its stdout, or why it failed.
    fn run(&self, template: &[String], vars: &Vars<'_>) -> Result<String, String> {
        let args = expand(template, vars);
        let Some((prog, rest)) = args.split_first() else {
            return Err("empty command".into());
        };
        run_command(prog, rest, self.timeout)
    }
}

/// Whether the program of `template` (its first word) can be run: an executable file at that
/// path, or for a bare name in one of the `PATH` directories, as `Command` looks it up.
fn check_program(field: &str, template: &[String]) -> Result<(), String> {
    let field = format!("tape.driver.command.{field}");
    let Some(prog) = template.first().filter(|p| !p.is_empty()) else {
        return Err(format!("{field}: empty command"));
    };
    if prog.contains('{') {
        // a placeholder: known only when the command runs
        return Ok(());
    }
    let executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if prog.contains('/') {
        return if executable(Path::new(prog)) {
            Ok(())
        } else {
            Err(format!("{field}: cannot run '{prog}': no executable file there"))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|d| executable(&d.join(prog))) {
        Ok(())
    } else {
        Err(format!(
            "{field}: cannot run '{prog}': no such program on PATH ({})",
            path.to_string_lossy()
        ))
    }
}

/// Values of a command template's placeholders.
#[derive(Default)]
struct Vars<'a> {
    files: &'a [String],
    file: &'a str,
    job: &'a str,
    dest: &'a str,
}

/// A template's arguments with placeholders replaced: `{files}` alone is one argument per
/// file; `{file}`, `{job}`, `{dest}` are replaced within arguments. Never a shell.
fn expand(template: &[String], v: &Vars<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for a in template {
        if a == "{files}" {
            out.extend(v.files.iter().cloned());
        } else {
            out.push(
                a.replace("{file}", v.file)
                    .replace("{job}", v.job)
                    .replace("{dest}", v.dest),
            );
        }
    }
    out
}

/// Runs a program with a time limit; stdout on exit status 0, else its output as the reason.
fn run_command(prog: &str, args: &[String], timeout: Duration) -> Result<String, String> {
    let out = tempfile::tempfile().map_err(|e| format!("{prog}: temporary file: {e}"))?;
    let err = tempfile::tempfile().map_err(|e| format!("{prog}: temporary file: {e}"))?;
    let (mut out_r, mut err_r) = (
        out.try_clone().map_err(|e| e.to_string())?,
        err.try_clone().map_err(|e| e.to_string())?,
    );
    // Output goes to files, not pipes: a chatty command cannot block on a full pipe.
    let mut cmd = Command::new(prog);
    // The trace context for a command that traces (the environment-variable carrier of the
    // OpenTelemetry specification); not set with traces off.
    if let Some(tp) = cloudify_telemetry::traceparent() {
        cmd.env("TRACEPARENT", tp);
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    let t0 = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if t0.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{prog}: no answer within {} s", timeout.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("{prog}: {e}")),
        }
    };
    use std::io::Seek as _;
    let mut stdout = String::new();
    let mut stderr = String::new();
    let _ = out_r.seek(std::io::SeekFrom::Start(0));
    let _ = err_r.seek(std::io::SeekFrom::Start(0));
    let _ = out_r.read_to_string(&mut stdout);
    let _ = err_r.read_to_string(&mut stderr);
    if status.success() {
        Ok(stdout)
    } else {
        let said = if stderr.trim().is_empty() { stdout } else { stderr };
        Err(format!("{prog} exited with {status}: {}", said.trim()))
    }
}

impl Driver for CommandDriver {
    fn tapes(&self, files: &[String]) -> Result<HashMap<String, String>, String> {
        if self.spec.tape_of.is_empty() {
            return Ok(HashMap::new());
        }
        let out = self.run(
            &self.spec.tape_of,
            &Vars {
                files,
                ..Vars::default()
            },
        )?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let (p, t) = l.trim().rsplit_once(char::is_whitespace)?;
                Some((p.trim().to_string(), t.to_string()))
            })
            .collect())
    }

    fn submit(&self, files: &[String]) -> Result<String, String> {
        let out = self.run(
            &self.spec.recall,
            &Vars {
                files,
                ..Vars::default()
            },
        )?;
        self.job_re
            .captures(&out)
            .and_then(|c| c.get(1))
            .map(|m| m.as_str().to_string())
            .ok_or_else(|| format!("no job id in the recall's output: {}", out.trim()))
    }

    fn status(&self, job: &str) -> Result<JobStatus, String> {
        let out = self.run(
            &self.spec.status,
            &Vars {
                job,
                ..Vars::default()
            },
        )?;
        let up = out.to_ascii_uppercase();
        if ["FAILED", "ABORTED", "CANCELLED", "ERROR"]
            .iter()
            .any(|w| up.contains(w))
        {
            return Ok(JobStatus::Failed(out.trim().to_string()));
        }
        if ["SUCCESSFUL", "COMPLETED", "DONE"].iter().any(|w| up.contains(w)) {
            return Ok(JobStatus::Finished {
                failed: HashMap::new(),
            });
        }
        let eta = self
            .eta_re
            .as_ref()
            .and_then(|r| r.captures(&out))
            .and_then(|c| c.get(1))
            .and_then(|m| m.as_str().parse().ok());
        Ok(JobStatus::Running { eta })
    }

    fn retrieve(&self, job: &str, file: &str, dest: &Path) -> Result<(), String> {
        let dest = dest.to_string_lossy();
        self.run(
            &self.spec.retrieve,
            &Vars {
                file,
                job,
                dest: &dest,
                ..Vars::default()
            },
        )
        .map(|_| ())
    }
}

/// The WLCG Tape REST API (`/stage`, `/archiveinfo`, `/release`), and plain GETs of staged
/// files from its data door.
#[derive(Debug)]
pub struct WlcgDriver {
    spec: TapeWlcgDriver,
    client: reqwest::Client,
    /// The driver's own I/O runtime: calls come from the stager's threads and from
    /// request handlers' blocking threads, and wait for the answer on a channel (no
    /// runtime is nested, whichever thread asks).
    rt: tokio::runtime::Runtime,
}

impl WlcgDriver {
    /// A client for the endpoint (requests time out after 60 s; downloads after an hour).
    pub fn new(spec: &TapeWlcgDriver) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("tape.driver.wlcg: {e}"))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cloudify-tape-http")
            .enable_all()
            .build()
            .map_err(|e| format!("tape.driver.wlcg: cannot start its I/O runtime: {e}"))?;
        Ok(Self {
            spec: spec.clone(),
            client,
            rt,
        })
    }

    /// Runs `fut` on the driver's runtime and waits for it, from any thread.
    fn block_on<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T, String> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| "tape HTTP task failed (see server log)".to_string())
    }

    /// The bearer token, read anew for every request (tokens are rotated under us).
    fn token(&self) -> Result<Option<String>, String> {
        self.spec
            .token_file
            .as_ref()
            .map(|f| {
                std::fs::read_to_string(f)
                    .map(|t| t.trim().to_string())
                    .map_err(|e| format!("token file {f}: {e}"))
            })
            .transpose()
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/{tail}", self.spec.endpoint.trim_end_matches('/'))
    }

    /// `req` with the `traceparent` of a new client span (returned, to instrument the call):
    /// the tape endpoint's spans join the trace. DEBUG: nothing with traces off.
    fn traced(
        req: reqwest::RequestBuilder,
        method: &reqwest::Method,
        url: &str,
    ) -> (reqwest::RequestBuilder, tracing::Span) {
        let span = tracing::debug_span!(
            "tape.request",
            otel.kind = "client",
            http.request.method = %method,
            url.full = url
        );
        let mut h = reqwest::header::HeaderMap::new();
        span.in_scope(|| cloudify_telemetry::inject(&mut h));
        (req.headers(h), span)
    }

    /// Sends a request and reads its JSON answer.
    fn call(
        &self,
        method: reqwest::Method,
        url: String,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, String> {
        self.call_within(method, url, body, Duration::from_secs(60))
    }

    /// [`WlcgDriver::call`] waiting at most `timeout` for the answer.
    fn call_within(
        &self,
        method: reqwest::Method,
        url: String,
        body: Option<serde_json::Value>,
        timeout: Duration,
    ) -> Result<serde_json::Value, String> {
        let mut req = self.client.request(method.clone(), &url).timeout(timeout);
        if let Some(t) = self.token()? {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let (req, span) = Self::traced(req, &method, &url);
        let u = url.clone();
        self.block_on(tracing::Instrument::instrument(
            async move {
                let r = req.send().await.map_err(|e| format!("{method} {u}: {e}"))?;
                let status = r.status();
                let text = r.text().await.map_err(|e| format!("{method} {u}: {e}"))?;
                if !status.is_success() {
                    return Err(format!("{method} {u}: {status}: {}", text.trim()));
                }
                if text.trim().is_empty() {
                    return Ok(serde_json::Value::Null);
                }
                serde_json::from_str(&text).map_err(|e| format!("{method} {u}: invalid JSON answer: {e}"))
            },
            span,
        ))?
    }
}

impl Driver for WlcgDriver {
    fn tapes(&self, _files: &[String]) -> Result<HashMap<String, String>, String> {
        // The API does not tell tapes; the site orders one request's files by tape itself.
        Ok(HashMap::new())
    }

    fn orders_by_tape(&self) -> bool {
        true
    }

    fn submit(&self, files: &[String]) -> Result<String, String> {
        let body = stage_body(files, self.spec.pin_lifetime_seconds);
        let r = self.call(reqwest::Method::POST, self.url("stage"), Some(body))?;
        r.get("requestId")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| format!("no requestId in the stage answer: {r}"))
    }

    fn status(&self, job: &str) -> Result<JobStatus, String> {
        let r = self.call(reqwest::Method::GET, self.url(&format!("stage/{job}")), None)?;
        let files = r
            .get("files")
            .and_then(|f| f.as_array())
            .ok_or_else(|| format!("no files in the stage request's status: {r}"))?;
        let mut failed = HashMap::new();
        let mut running = false;
        for f in files {
            let path = f.get("path").and_then(|p| p.as_str()).unwrap_or_default();
            let state = f.get("state").and_then(|s| s.as_str()).unwrap_or_default();
            match state {
                "COMPLETED" => {}
                "FAILED" | "CANCELLED" => {
                    let why = f.get("error").and_then(|e| e.as_str()).unwrap_or(state);
                    failed.insert(path.to_string(), why.to_string());
                }
                _ => running = true,
            }
        }
        Ok(if running {
            JobStatus::Running { eta: None }
        } else {
            JobStatus::Finished { failed }
        })
    }

    fn retrieve(&self, _job: &str, file: &str, dest: &Path) -> Result<(), String> {
        let url = format!("{}{}", self.spec.data_url.trim_end_matches('/'), file);
        let mut req = self.client.get(&url).timeout(Duration::from_secs(3600));
        if let Some(t) = self.token()? {
            req = req.bearer_auth(t);
        }
        let (req, span) = Self::traced(req, &reqwest::Method::GET, &url);
        let dest = dest.to_path_buf();
        self.block_on(tracing::Instrument::instrument(
            async move {
                use std::io::Write as _;
                let mut r = req.send().await.map_err(|e| format!("GET {url}: {e}"))?;
                if !r.status().is_success() {
                    return Err(format!("GET {url}: {}", r.status()));
                }
                let mut f = std::io::BufWriter::new(
                    std::fs::File::create(&dest).map_err(|e| format!("{}: {e}", dest.display()))?,
                );
                while let Some(part) = r.chunk().await.map_err(|e| format!("GET {url}: {e}"))? {
                    f.write_all(&part)
                        .map_err(|e| format!("{}: {e}", dest.display()))?;
                }
                f.flush().map_err(|e| format!("{}: {e}", dest.display()))
            },
            span,
        ))?
    }

    fn release(&self, job: &str, files: &[String]) {
        let body = serde_json::json!({"paths": files});
        if let Err(e) = self.call(
            reqwest::Method::POST,
            self.url(&format!("release/{job}")),
            Some(body),
        ) {
            tracing::warn!(job, "tape release failed: {e}");
        }
    }

    /// `archiveinfo` of `sample`: reaching the endpoint, the token being accepted and an
    /// answer of the API's form are what every recall needs (a per-file error in the answer,
    /// e.g. an unknown path, is the file's, reported by `/locality`). Short timeout: a probe
    /// that hangs says as much as one that fails.
    fn probe(&self, sample: &str) -> Option<Result<(), String>> {
        let body = serde_json::json!({"paths": [sample]});
        Some(
            self.call_within(
                reqwest::Method::POST,
                self.url("archiveinfo"),
                Some(body),
                Duration::from_secs(15),
            )
            .and_then(|r| {
                if r.is_array() {
                    Ok(())
                } else {
                    Err(format!(
                        "POST {}: the answer is not a list of files: {r}",
                        self.url("archiveinfo")
                    ))
                }
            }),
        )
    }

    fn archive_info(&self, files: &[String]) -> Option<HashMap<String, String>> {
        let body = serde_json::json!({"paths": files});
        let r = match self.call(reqwest::Method::POST, self.url("archiveinfo"), Some(body)) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("tape archiveinfo failed: {e}");
                return None;
            }
        };
        Some(
            r.as_array()?
                .iter()
                .filter_map(|f| {
                    let p = f.get("path")?.as_str()?;
                    let l = f
                        .get("locality")
                        .and_then(|l| l.as_str())
                        .or_else(|| f.get("error").map(|_| "ERROR"))?;
                    Some((p.to_string(), l.to_string()))
                })
                .collect(),
        )
    }
}

/// The body of a WLCG `POST /stage`: every file with its `diskLifetime` (ISO 8601
/// duration), when a pin lifetime is configured.
fn stage_body(files: &[String], lifetime: Option<u64>) -> serde_json::Value {
    let files: Vec<serde_json::Value> = files
        .iter()
        .map(|p| match lifetime {
            Some(s) => serde_json::json!({"path": p, "diskLifetime": format!("PT{s}S")}),
            None => serde_json::json!({"path": p}),
        })
        .collect();
    serde_json::json!({ "files": files })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_requests_carry_the_pin_lifetime() {
        let files = ["/a.nc".to_string(), "/b.nc".to_string()];
        assert_eq!(
            stage_body(&files, Some(90)),
            serde_json::json!({"files": [{"path": "/a.nc", "diskLifetime": "PT90S"},
                                         {"path": "/b.nc", "diskLifetime": "PT90S"}]})
        );
        assert_eq!(
            stage_body(&files[..1], None),
            serde_json::json!({"files": [{"path": "/a.nc"}]})
        );
    }

    #[test]
    fn templates_expand_without_a_shell() {
        let t: Vec<String> = ["slk", "recall", "{files}", "--job={job}", "{dest}"]
            .map(String::from)
            .to_vec();
        let files = ["/a b.nc".to_string(), "/c;rm -rf.nc".to_string()];
        let v = Vars {
            files: &files,
            job: "7",
            dest: "/s/x",
            ..Vars::default()
        };
        assert_eq!(
            expand(&t, &v),
            ["slk", "recall", "/a b.nc", "/c;rm -rf.nc", "--job=7", "/s/x"]
        );
    }

    #[test]
    fn commands_report_failures_and_time_out() {
        assert_eq!(
            run_command("sh", &["-c".into(), "echo job 42".into()], Duration::from_secs(5)).as_deref(),
            Ok("job 42\n")
        );
        let e = run_command(
            "sh",
            &["-c".into(), "echo tape broken >&2; exit 3".into()],
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(e.contains("tape broken") && e.contains('3'), "{e}");
        let e = run_command("sleep", &["5".into()], Duration::from_millis(200)).unwrap_err();
        assert!(e.contains("no answer"), "{e}");
        assert!(
            run_command("/nonexistent/slk", &[], Duration::from_secs(1))
                .unwrap_err()
                .contains("cannot run")
        );
    }

    #[test]
    fn a_command_that_cannot_run_is_refused_when_the_driver_is_made() {
        let spec = |recall: &[&str], tape_of: &[&str]| TapeCommandDriver {
            recall: recall.iter().map(ToString::to_string).collect(),
            status: vec!["sh".into()],
            retrieve: vec!["true".into()],
            tape_of: tape_of.iter().map(ToString::to_string).collect(),
            ..TapeCommandDriver::default()
        };
        assert!(CommandDriver::new(&spec(&["sh", "-c", "echo job 1"], &[])).is_ok());
        assert!(CommandDriver::new(&spec(&["/bin/sh"], &["{file}"])).is_ok());
        let e = CommandDriver::new(&spec(&["/nonexistent/slk", "recall"], &[])).unwrap_err();
        assert!(
            e.contains("tape.driver.command.recall") && e.contains("/nonexistent/slk"),
            "{e}"
        );
        let e = CommandDriver::new(&spec(&["slk-not-installed-here"], &[])).unwrap_err();
        assert!(e.contains("no such program on PATH"), "{e}");
        let e = CommandDriver::new(&spec(&["sh"], &["slk_helpers-not-installed"])).unwrap_err();
        assert!(e.contains("tape.driver.command.tapeOf"), "{e}");
        // a file that is there but not executable
        let f = tempfile::NamedTempFile::new().expect("temp file");
        let path = f.path().to_string_lossy().into_owned();
        let e = CommandDriver::new(&spec(&[&path], &[])).unwrap_err();
        assert!(e.contains("no executable file there"), "{e}");
        let e = CommandDriver::new(&spec(&[], &[])).unwrap_err();
        assert!(e.contains("recall: empty command"), "{e}");
    }

    #[test]
    fn job_ids_and_states_are_parsed() {
        let d = CommandDriver::new(&TapeCommandDriver {
            recall: vec![
                "sh".into(),
                "-c".into(),
                "echo 'Submitted recall job 1234 for 2 files'".into(),
            ],
            status: vec!["sh".into(), "-c".into(), "echo 'PROCESSING eta=17'".into()],
            eta_regex: Some(r"eta=(\d+)".into()),
            retrieve: vec!["true".into()],
            tape_of: vec!["sh".into(), "-c".into(), "printf '/a.nc T1\\n/b.nc T2\\n'".into()],
            ..TapeCommandDriver::default()
        })
        .expect("valid");
        assert_eq!(d.submit(&["/a.nc".into()]).as_deref(), Ok("1234"));
        assert_eq!(d.status("1234"), Ok(JobStatus::Running { eta: Some(17) }));
        let tapes = d.tapes(&[]).expect("tapes");
        assert_eq!(tapes.get("/b.nc").map(String::as_str), Some("T2"));
        let bad = TapeCommandDriver {
            job_id_regex: Some("no group".into()),
            ..TapeCommandDriver::default()
        };
        assert!(CommandDriver::new(&bad).unwrap_err().contains("jobIdRegex"));
    }
}
