//! Server CPU per pass-through chunk request with the process's tracing set-up, measured
//! in-process: `cargo run --release --example trace_timing -- 'GLOB' VAR [CALLS] [CONCURRENCY]`.
//!
//! Why it exists: `bench/otel.py` compares an untraced and a traced server end to end, but
//! per-pass drift on a shared 2-core machine (±15 %) is larger than the 3 % bar of issue #18,
//! and so is the drift of CPU time between runs of this program. This serves a dataset's
//! `/kerchunk` chunks through the real router (every layer, the trace middleware, the dataset
//! and chunk spans, the worker pool) without sockets, with telemetry installed exactly as
//! `cloudify serve` installs it (`OTEL_*` variables: none = traces off, an endpoint = spans
//! exported over OTLP/HTTP, the export thread included), so that the tracing's work per request
//! can be counted in instructions, which do not drift: run it under
//! `valgrind --tool=callgrind` for two request counts per setting; the difference of the
//! instruction totals over the difference of the counts is the cost of one request (start-up
//! cancels out). Use a file with small chunks so that copying bytes does not dominate.
//!
//! Prints one JSON line: requests, process CPU seconds (utime + stime of /proc/self/stat),
//! µs of CPU per request, and whether traces were on.
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

/// utime + stime of this process in seconds (all threads, including exited ones' share
/// collected by the kernel, and the trace export thread).
fn cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // the fields after the command name, which is in parentheses and may hold spaces
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("unexpected /proc/self/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime 15
    let ticks = f
        .get(11)
        .zip(f.get(12))
        .ok_or_else(|| anyhow::anyhow!("short /proc/self/stat"))?;
    let tick_hz = 100.0; // USER_HZ on Linux
    Ok((ticks.0.parse::<f64>()? + ticks.1.parse::<f64>()?) / tick_hz)
}

async fn get(app: &axum::Router, uri: &str) -> anyhow::Result<(StatusCode, Vec<u8>)> {
    let r = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty())?)
        .await?;
    let status = r.status();
    let body = axum::body::to_bytes(r.into_body(), usize::MAX).await?.to_vec();
    Ok((status, body))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let glob = args
        .get(1)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("usage: trace_timing GLOB VAR [CALLS] [CONCURRENCY]"))?;
    let var = args.get(2).cloned().unwrap_or_else(|| "tas".into());
    let calls: usize = args.get(3).map_or(Ok(20_000), |s| s.parse())?;
    let concurrency: usize = args.get(4).map_or(Ok(8), |s| s.parse())?;
    anyhow::ensure!(
        calls >= 1 && concurrency >= 1,
        "CALLS and CONCURRENCY must be at least 1"
    );

    let telemetry = cloudify_telemetry::init(
        "cloudify-bench",
        tracing_subscriber::EnvFilter::new("warn"),
        cloudify_telemetry::LogTo::Stderr,
        Some(false),
    )?;
    let traced = cloudify_telemetry::enabled();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let spec = cloudify_crds::DatasetSpec::new("bench", vec![glob]);
    let state = cloudify_server::app::load(&[spec], 2, None)?;
    let app = cloudify_server::router::router(Arc::new(state));

    let (c0, wall) = rt.block_on(async {
        let (status, zarray) = get(&app, &format!("/datasets/bench/kerchunk/{var}/.zarray")).await?;
        anyhow::ensure!(
            status == StatusCode::OK,
            "the dataset or {var} did not open ({status})"
        );
        let meta: serde_json::Value = serde_json::from_slice(&zarray)?;
        let dims = |k: &str| -> Vec<u64> {
            meta[k]
                .as_array()
                .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
                .unwrap_or_default()
        };
        let (shape, chunks) = (dims("shape"), dims("chunks"));
        anyhow::ensure!(
            shape.len() == chunks.len() && chunks.iter().all(|&c| c > 0),
            "no chunk grid in {var}/.zarray"
        );
        let grid: Vec<u64> = shape
            .iter()
            .zip(&chunks)
            .map(|(n, c)| n.div_ceil(*c).max(1))
            .collect();
        // the first (at most) 10 000 chunks in C order
        let total = grid.iter().product::<u64>().min(10_000);
        let uris: Arc<Vec<String>> = Arc::new(
            (0..total)
                .map(|mut flat| {
                    let mut idx = vec![0u64; grid.len()];
                    for d in (0..grid.len()).rev() {
                        idx[d] = flat % grid[d];
                        flat /= grid[d];
                    }
                    let key: Vec<String> = idx.iter().map(u64::to_string).collect();
                    format!("/datasets/bench/kerchunk/{var}/{}", key.join("."))
                })
                .collect(),
        );
        // warm-up: every chunk once (page cache, index, pools)
        for u in uris.iter() {
            get(&app, u).await?;
        }
        let c0 = cpu_seconds()?;
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..concurrency {
            let (app, uris) = (app.clone(), uris.clone());
            let n = calls / concurrency + usize::from(w < calls % concurrency);
            tasks.push(tokio::spawn(async move {
                for i in 0..n {
                    let u = &uris[(w * 97 + i) % uris.len()];
                    let (status, _) = get(&app, u).await?;
                    anyhow::ensure!(status == StatusCode::OK, "{u}: {status}");
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        anyhow::Ok((c0, t0.elapsed().as_secs_f64()))
    })?;
    // the spans still queued are exported (as a server does on SIGTERM) inside the measured
    // CPU: every request's spans are paid for
    telemetry.shutdown();
    let cpu = cpu_seconds()? - c0;
    let cpu_per_request = cpu / calls as f64;
    println!(
        "{{\"traced\": {traced}, \"requests\": {calls}, \"cpu_s\": {cpu:.2}, \"wall_s\": {wall:.2}, \"cpu_us_per_request\": {:.2}}}",
        cpu_per_request * 1e6
    );
    Ok(())
}
