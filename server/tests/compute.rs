//! Fan-out to compute workers with real `cloudify worker` processes: answers equal the
//! in-process computation; a dead worker, a worker that never answers, a worker answering
//! garbage or another protocol version, and a full queue are each met as documented in
//! `compute::client` (retry elsewhere, 503 naming the service within the timeout, 502
//! naming the worker, 503 + Retry-After).

// Test helpers, like tests, fail by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudify_server::chunk::read::ReadError;
use cloudify_server::compute::client::{Remote, Settings};
use cloudify_server::compute::protocol;
use cloudify_server::processing::exec::{Executor, Locator, Output, Task};

/// `x(time=400, lat=3)` float32, stored chunks of 10 days, daily from 2000-01-01; a view
/// `x.clim` = groupby(time.month).mean() and a derived `y = x * 2`.
fn write_config(dir: &Path) -> PathBuf {
    let nc = dir.join("x.nc");
    {
        let mut f = netcdf::create(&nc).expect("create");
        f.add_dimension("time", 400).expect("dim");
        f.add_dimension("lat", 3).expect("dim");
        let mut t = f.add_variable::<f64>("time", &["time"]).expect("time");
        t.put_attribute("units", "days since 2000-01-01").expect("units");
        t.put_attribute("calendar", "standard").expect("cal");
        t.put_values(&(0..400).map(f64::from).collect::<Vec<_>>(), ..)
            .expect("put");
        let mut x = f.add_variable::<f32>("x", &["time", "lat"]).expect("x");
        x.set_chunking(&[10, 3]).expect("chunking");
        let vals: Vec<f32> = (0..1200).map(|i| (i as f32 * 0.37).sin() * 100.0 + 0.1).collect();
        x.put_values(&vals, ..).expect("put");
    }
    let cfg = dir.join("cloudify.yaml");
    std::fs::write(
        &cfg,
        format!(
            "datasets:\n  - name: x\n    sources: [\"{}\"]\n    processing:\n      variables:\n        y: {{expr: \"x * 2\"}}\n      views:\n        clim: {{groupby: {{by: time.month, reduce: mean}}}}\n",
            nc.display()
        ),
    )
    .expect("config");
    cfg
}

/// A running worker, killed when dropped.
struct Worker(Child, String);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[allow(
    clippy::zombie_processes,
    reason = "the child moves into a Worker, whose Drop kills and waits for it"
)]
fn start_worker(cfg: &Path, dir: &Path, tag: &str) -> Worker {
    let listen = dir.join(format!("{tag}.listen"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_cloudify"))
        .args([
            "worker",
            "--no-cache",
            "--threads",
            "1",
            "--port-range",
            "19400-19600",
            "--config",
        ])
        .arg(cfg)
        .arg("--listen-file")
        .arg(&listen)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn worker");
    let t0 = Instant::now();
    loop {
        if let Ok(url) = std::fs::read_to_string(&listen)
            && !url.trim().is_empty()
        {
            return Worker(child, url.trim().to_string());
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("worker did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn remote(workers: &[&str], queue: usize, timeout: Duration) -> Remote {
    Remote::new(Settings {
        workers: workers.iter().map(|s| (*s).to_string()).collect(),
        concurrency: 4,
        queue,
        timeout,
        secret: None,
    })
    .expect("remote")
}

/// The view's partial tasks (one per 4 slabs) and a chunk task of the derived variable.
fn tasks() -> Vec<Task> {
    let at = Locator::Dataset("x.clim".into());
    let mut out: Vec<Task> = (0..10u64)
        .map(|i| Task::Partial {
            at: at.clone(),
            var: "x".into(),
            start: vec![0, 0],
            count: vec![12, 3],
            slabs: (0..4).map(|j| ((i * 4 + j) * 10, (i * 4 + j + 1) * 10)).collect(),
        })
        .collect();
    out.push(Task::Chunk {
        at: Locator::Dataset("x".into()),
        var: "y".into(),
        index: vec![0, 0],
    });
    out
}

/// What the tasks give in this process.
fn local(cfg: &Path) -> Vec<Output> {
    let text = std::fs::read_to_string(cfg).expect("cfg");
    let spec = cloudify_crds::ServeConfig::from_yaml(&text)
        .expect("yaml")
        .datasets[0]
        .clone();
    let (ds, views) = cloudify_server::open::open_with_views(&spec, None).expect("open");
    tasks()
        .iter()
        .map(|t| {
            let d = if t.locator() == &Locator::Dataset("x".into()) {
                &ds
            } else {
                &views[0]
            };
            cloudify_server::processing::dispatch::execute(d, t).expect("local")
        })
        .collect()
}

/// A fake worker: accepts connections and answers each with `answer` (or never, `None`).
fn fake(answer: Option<&'static [u8]>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            match answer {
                Some(a) => {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf);
                    let _ = s.write_all(a);
                }
                None => held.push(s),
            }
        }
    });
    url
}

fn status(e: &ReadError) -> (u16, String, Option<u64>) {
    match e {
        ReadError::Compute {
            status,
            message,
            retry_after,
        } => (*status, message.clone(), *retry_after),
        other => panic!("not a compute error: {other}"),
    }
}

#[test]
fn answers_equal_in_process_and_spread_over_workers() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = write_config(dir.path());
    let (a, b) = (
        start_worker(&cfg, dir.path(), "a"),
        start_worker(&cfg, dir.path(), "b"),
    );
    let r = remote(&[&a.1, &b.1], 64, Duration::from_secs(20));
    let got = r.run_all(tasks()).expect("remote");
    assert_eq!(got, local(&cfg));
    for w in [&a, &b] {
        let m = reqwest_metrics(&w.1);
        assert!(
            m.contains("cloudify_worker_tasks_total{kind=\"partial\",outcome=\"ok\"}"),
            "{m}"
        );
        let read = m
            .lines()
            .find_map(|l| l.strip_prefix("cloudify_worker_bytes_read_total "))
            .and_then(|v| v.trim().parse::<u64>().ok());
        assert!(read.is_some_and(|n| n > 0), "bytes read: {m}");
    }
    assert_eq!(r.metrics.retries.get(), 0);
    // a task naming a dataset the worker does not have: the worker's failure, naming it
    let e = r
        .run_all(vec![Task::Chunk {
            at: Locator::Dataset("nope".into()),
            var: "y".into(),
            index: vec![0, 0],
        }])
        .expect_err("no dataset");
    let (code, msg, _) = status(&e);
    assert_eq!(code, 502);
    assert!(
        msg.contains("no dataset 'nope'") && (msg.contains(&a.1) || msg.contains(&b.1)),
        "{msg}"
    );
    // out-of-range input from the wire is refused, not a panic
    let e = r
        .run_all(vec![Task::Partial {
            at: Locator::Dataset("x.clim".into()),
            var: "x".into(),
            start: vec![0, 0],
            count: vec![13, 3],
            slabs: vec![(0, 10)],
        }])
        .expect_err("bad region");
    assert!(status(&e).1.contains("outside dimension 0"), "{e}");
}

/// `/metrics` of a worker (plain HTTP/1.0 GET, no client library needed).
/// A groupby product of a value-range selection, sent as partials to a worker: the worker
/// rebuilds the same selection from the locator (its canonical segment) and answers what
/// this process computes; a selection the worker cannot resolve fails naming it.
#[test]
fn selected_products_are_rebuilt_alike_on_workers() {
    use cloudify_server::processing::reduce::{self, Kind};
    use cloudify_server::processing::select::Selection;
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = write_config(dir.path());
    let w = start_worker(&cfg, dir.path(), "sel");
    // rows 40..=324 (2000-02-10 .. 2000-11-20): months 2..=11, slabs cut at the stored
    // chunks (the origin 40 is on a boundary; 325 is not)
    let select = "time=2000-02-10,2000-11-20";
    let at = Locator::Product {
        parent: "x".into(),
        var: "x".into(),
        coord: "time.month".into(),
        action: "mean".into(),
        select: select.into(),
    };
    let slabs: Vec<(u64, u64)> = (0..29u64).map(|i| (i * 10, ((i + 1) * 10).min(285))).collect();
    let tasks: Vec<Task> = slabs
        .chunks(8)
        .map(|run| Task::Partial {
            at: at.clone(),
            var: "x".into(),
            start: vec![0, 0],
            count: vec![10, 3],
            slabs: run.to_vec(),
        })
        .collect();
    let text = std::fs::read_to_string(&cfg).expect("cfg");
    let spec = cloudify_crds::ServeConfig::from_yaml(&text)
        .expect("yaml")
        .datasets[0]
        .clone();
    let (ds, _) = cloudify_server::open::open_with_views(&spec, None).expect("open");
    let x = ds.variable("x").expect("x").clone();
    let window = Selection::parse_segment(select)
        .expect("segment")
        .resolve(&ds, &x)
        .expect("resolve");
    assert_eq!(window.dims, vec![("time".to_string(), 40, 285)]);
    let kind = Kind::GroupBy {
        by: "time.month".into(),
    };
    let product = reduce::build_at(
        &ds,
        "x.groupby.x.time.month.mean",
        &kind,
        cloudify_crds::Reduce::Mean,
        &["x".into()],
        &at,
        &window,
    )
    .expect("product");
    let want: Vec<Output> = tasks
        .iter()
        .map(|t| cloudify_server::processing::dispatch::execute(&product, t).expect("local"))
        .collect();
    let r = remote(&[&w.1], 64, Duration::from_secs(20));
    assert_eq!(r.run_all(tasks).expect("remote"), want);
    // a selection the worker cannot resolve is its failure, naming the dimension
    let bad = Locator::Product {
        parent: "x".into(),
        var: "x".into(),
        coord: "time.month".into(),
        action: "mean".into(),
        select: "time=2005,2006".into(),
    };
    let e = r
        .run_all(vec![Task::Partial {
            at: bad,
            var: "x".into(),
            start: vec![0, 0],
            count: vec![1, 3],
            slabs: vec![(0, 10)],
        }])
        .expect_err("nothing selected");
    let (_, msg, _) = status(&e);
    assert!(msg.contains("time: 2005/2006 selects nothing"), "{msg}");
}

fn reqwest_metrics(url: &str) -> String {
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

#[test]
fn dead_and_hanging_workers_are_retried_elsewhere() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = write_config(dir.path());
    let w = start_worker(&cfg, dir.path(), "w");
    // a port nobody listens on
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", l.local_addr().expect("addr"))
    };
    let hang = fake(None);
    let r = remote(&[&dead, &hang, &w.1], 64, Duration::from_millis(500));
    let got = r.run_all(tasks()).expect("retried");
    assert_eq!(got, local(&cfg));
    assert!(r.metrics.retries.get() > 0, "retries counted");
    // all gone: 503 naming the service, within the tries' timeouts
    let r = remote(&[&dead, &hang], 64, Duration::from_millis(500));
    let t0 = Instant::now();
    let e = r.run_all(tasks()).expect_err("unavailable");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let (code, msg, retry) = status(&e);
    assert_eq!(code, 503);
    assert!(
        msg.contains(&dead) && msg.contains(&hang) && msg.contains("unavailable"),
        "{msg}"
    );
    assert_eq!(retry, Some(1));
}

#[test]
fn garbage_and_other_versions_fail_naming_the_worker() {
    // our version in the header, garbage in the body
    let answer = format!(
        "HTTP/1.1 200 OK\r\nx-cloudify-compute-version: {}\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
        protocol::VERSION
    );
    let garbage = fake(Some(Box::leak(answer.into_bytes().into_boxed_slice())));
    let e = remote(&[&garbage], 8, Duration::from_secs(5))
        .run_all(tasks())
        .expect_err("garbage");
    let (code, msg, _) = status(&e);
    assert_eq!(code, 502);
    assert!(msg.contains(&garbage) && msg.contains("garbage"), "{msg}");
    let newer = fake(Some(
        b"HTTP/1.1 409 Conflict\r\nx-cloudify-compute-version: 99\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    ));
    let e = remote(&[&newer], 8, Duration::from_secs(5))
        .run_all(tasks())
        .expect_err("version");
    let (code, msg, _) = status(&e);
    assert_eq!(code, 502);
    let ours = format!("version {}", protocol::VERSION);
    assert!(
        msg.contains(&newer) && msg.contains(&ours) && msg.contains("version 99"),
        "{msg}"
    );
    // a worker of the previous release (version 2) answering with its whole-block partial
    let older = fake(Some(
        b"HTTP/1.1 200 OK\r\nx-cloudify-compute-version: 2\r\ncontent-length: 4\r\nconnection: close\r\n\r\n\x01\x00\x01\x00",
    ));
    let (code, msg, _) = status(
        &remote(&[&older], 8, Duration::from_secs(5))
            .run_all(tasks())
            .expect_err("old worker"),
    );
    assert_eq!(code, 502);
    assert!(
        msg.contains(&older) && msg.contains(&ours) && msg.contains("version 2;"),
        "{msg}"
    );
    let not_worker = fake(Some(
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    ));
    let (code, msg, _) = status(
        &remote(&[&not_worker], 8, Duration::from_secs(5))
            .run_all(tasks())
            .expect_err("404"),
    );
    assert_eq!(code, 502);
    assert!(msg.contains("is it a cloudify worker"), "{msg}");
}

#[test]
fn a_worker_refuses_another_protocol_version() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = write_config(dir.path());
    let w = start_worker(&cfg, dir.path(), "v");
    let addr = w.1.trim_start_matches("http://").to_string();
    let body = |version| {
        protocol::encode(&protocol::Request {
            version,
            task: tasks().remove(0),
        })
        .expect("encode")
    };
    let out = post_task(&addr, 99, &body(99));
    assert!(
        out.starts_with("HTTP/1.0 409") || out.starts_with("HTTP/1.1 409"),
        "{out}"
    );
    let ours = format!("version {}", protocol::VERSION);
    assert!(out.contains("version 99") && out.contains(&ours), "{out}");
    // a server of the previous release (version 2: whole-block partials) is refused too,
    // before its body is looked at
    let out = post_task(&addr, 2, &body(2));
    assert!(
        out.contains(" 409 ") && out.contains("version 2") && out.contains(&ours),
        "{out}"
    );
}

/// A raw `POST /v1/task` with `version` in the header; the whole answer.
fn post_task(addr: &str, version: u32, body: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.write_all(
        format!(
            "POST {} HTTP/1.0\r\nHost: {addr}\r\n{}: {version}\r\ncontent-length: {}\r\n\r\n",
            protocol::TASK_PATH,
            protocol::VERSION_HEADER,
            body.len()
        )
        .as_bytes(),
    )
    .expect("write");
    s.write_all(body).expect("body");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

#[test]
fn a_full_queue_is_refused_at_once_with_retry_after() {
    let hang = fake(None);
    let r = Arc::new(remote(&[&hang], 4, Duration::from_secs(3)));
    let r2 = r.clone();
    let first = std::thread::spawn(move || r2.run_all(tasks()[..4].to_vec()));
    let t0 = Instant::now();
    while r.metrics.in_flight.get() < 4 {
        assert!(t0.elapsed() < Duration::from_secs(2), "first batch not admitted");
        std::thread::sleep(Duration::from_millis(10));
    }
    let t1 = Instant::now();
    let e = r.run_all(tasks()[..1].to_vec()).expect_err("busy");
    assert!(t1.elapsed() < Duration::from_millis(500), "refused at once");
    let (code, msg, retry) = status(&e);
    assert_eq!(code, 503);
    assert!(msg.contains("busy") && msg.contains(&hang), "{msg}");
    assert_eq!(retry, Some(1));
    assert_eq!(r.metrics.rejected.get(), 1);
    // the first batch ends (unavailable after its timeouts) and gives its slots back
    assert!(first.join().expect("thread").is_err());
    assert_eq!(r.metrics.in_flight.get(), 0);
}

/// `write_config`'s dataset `x` and a dataset `t` whose netCDF file is on tape without an
/// index: the worker opens it in the background, and its recall never ends (the archive's
/// status stays "processing", `status` printing `status_line`), so `t` stays opening.
fn write_config_with_tape(dir: &Path, status_line: &str) -> PathBuf {
    let cfg = write_config(dir);
    let mut text = std::fs::read_to_string(&cfg).expect("cfg");
    text.push_str(&format!(
        "  - name: t\n    sources: [\"/arch/proj/T1/t.nc\"]\n    storage:\n      tape:\n        stagingDir: \"{}\"\n        retryAfterSeconds: 9\n        batchWindowMs: 50\n        pollMs: 200\n        driver:\n          command:\n            recall: [\"echo\", \"job 7\"]\n            status: [\"echo\", \"{status_line}\"]\n            etaRegex: \"eta=(\\\\d+)\"\n            retrieve: [\"false\"]\n",
        dir.join("staging").display()
    ));
    let path = dir.join("with-tape.yaml");
    std::fs::write(&path, text).expect("config");
    path
}

/// A worker whose dataset is still opening (its file is being recalled from tape) answers a
/// task on it 503 + `Retry-After` — not 404 (fill values to a Zarr client), not 500, not a
/// 200 carrying a final failure — whether the task names the dataset or a product of it; its
/// other datasets compute meanwhile. The server's side takes that 503 as backpressure: the
/// task goes to the other tries, and when none could run it the answer is 503 with the
/// worker's `Retry-After`, never data.
#[test]
fn a_dataset_still_opening_on_the_worker_is_503_with_retry_after() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = write_config_with_tape(dir.path(), "PROCESSING");
    let w = start_worker(&cfg, dir.path(), "opening");
    let addr = w.1.trim_start_matches("http://").to_string();
    let chunk = |at: Locator| Task::Chunk {
        at,
        var: "x".into(),
        index: vec![0, 0],
    };
    let product = Locator::Product {
        parent: "t".into(),
        var: "x".into(),
        coord: "time.month".into(),
        action: "mean".into(),
        select: String::new(),
    };
    for at in [Locator::Dataset("t".into()), product] {
        let body = protocol::encode(&protocol::Request {
            version: protocol::VERSION,
            task: chunk(at.clone()),
        })
        .expect("encode");
        let out = post_task(&addr, protocol::VERSION, &body);
        assert!(
            out.starts_with("HTTP/1.0 503") || out.starts_with("HTTP/1.1 503"),
            "{at:?}: {out}"
        );
        assert!(
            out.to_ascii_lowercase().contains("\r\nretry-after: 9\r\n"),
            "{at:?}: {out}"
        );
        assert!(
            out.contains("dataset 't' is still opening on this worker"),
            "{at:?}: {out}"
        );
    }
    let m = reqwest_metrics(&w.1);
    assert!(
        m.contains("cloudify_worker_tasks_total{kind=\"chunk\",outcome=\"opening\"} 2"),
        "{m}"
    );

    let r = remote(&[&w.1], 8, Duration::from_secs(5));
    // the dataset that opened computes as before
    let got = r.run_all(tasks()).expect("x serves");
    assert_eq!(got, local(&cfg));
    let e = r
        .run_all(vec![chunk(Locator::Dataset("t".into()))])
        .expect_err("still opening");
    let (code, msg, retry) = status(&e);
    assert_eq!(code, 503, "{msg}");
    assert_eq!(retry, Some(9), "{msg}");
    assert!(msg.contains("still opening") && msg.contains(&w.1), "{msg}");
    assert!(r.metrics.retries.get() >= 3, "tried again, as for a busy worker");
    assert_eq!(
        r.metrics.tasks.with_label_values(&["unavailable"]).get(),
        1,
        "not counted as the worker's failure"
    );
}

/// The worker's `Retry-After` for a dataset opening on a recall is the tape driver's
/// estimate once the recall runs and has one (`eta=42` in the archive's status output),
/// not the configured `retryAfterSeconds` (9); the server's client passes it on.
#[test]
fn an_opening_worker_retries_after_the_recalls_estimate() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = write_config_with_tape(dir.path(), "PROCESSING eta=42");
    let w = start_worker(&cfg, dir.path(), "eta");
    let addr = w.1.trim_start_matches("http://").to_string();
    let task = Task::Chunk {
        at: Locator::Dataset("t".into()),
        var: "x".into(),
        index: vec![0, 0],
    };
    let body = protocol::encode(&protocol::Request {
        version: protocol::VERSION,
        task: task.clone(),
    })
    .expect("encode");
    // queued, then submitted and polled (window 50 ms, poll 200 ms): the estimate follows
    let t0 = Instant::now();
    loop {
        let out = post_task(&addr, protocol::VERSION, &body).to_ascii_lowercase();
        assert!(out.contains(" 503 "), "{out}");
        if out.contains("\r\nretry-after: 42\r\n") {
            break;
        }
        assert!(out.contains("\r\nretry-after: 9\r\n"), "{out}");
        assert!(t0.elapsed() < Duration::from_secs(20), "no estimate: {out}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let e = remote(&[&w.1], 8, Duration::from_secs(5))
        .run_all(vec![task])
        .expect_err("still opening");
    assert_eq!(status(&e).2, Some(42), "{e}");
}
