//! Times the per-request work of the access layer for a token-protected dataset, in isolation:
//! `cargo run --release --example access_timing -- [TOKENS_IN_FILE] [CALLS]`.
//!
//! Why it exists: `bench/access.py` measures the check end to end (server CPU per pass-through
//! chunk, private vs public dataset), but a check that costs microseconds against ~200 µs of
//! server CPU per chunk is below what pass-to-pass drift on a shared machine resolves. This
//! times exactly what the layer adds for a private dataset's request — parsing `Authorization`
//! ([`credentials`]), the token's SHA-256 and the constant-time comparison with every digest of
//! the token file (with its once-a-second change check) in [`Access::check`], and the refusal
//! decision — so the ratio to the bench's per-chunk CPU is the check's share of a request.
use std::time::Instant;

use axum::http::{HeaderMap, HeaderValue, header};
use cloudify_server::access::{Access, Decision};
use cloudify_server::http::auth::{credentials, dataset_of, refusal};
use sha2::{Digest, Sha256};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let tokens: usize = args.get(1).map_or(Ok(100), |s| s.parse())?;
    let calls: u32 = args.get(2).map_or(Ok(200_000), |s| s.parse())?;
    anyhow::ensure!(
        tokens >= 1 && calls >= 1,
        "TOKENS_IN_FILE and CALLS must be at least 1"
    );

    let dir = tempfile::tempdir()?;
    let token = "bench-token-0123456789abcdefghijklmnopqrstuvwxyz";
    let mut lines = String::new();
    for i in 1..tokens {
        lines += &hex(&Sha256::digest(format!("other-reader-{i}").as_bytes()));
        lines.push('\n');
    }
    lines += &hex(&Sha256::digest(token.as_bytes()));
    lines.push('\n');
    let file = dir.path().join("tokens");
    std::fs::write(&file, lines)?;

    let mut spec = cloudify_crds::DatasetSpec::new("private", vec!["unused.nc".into()]);
    spec.access.public = false;
    spec.access.token_file = Some(file.display().to_string());
    let access = Access::from_specs(&[spec])?;

    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}"))?,
    );
    let path = "/datasets/private/kerchunk/tas/0.0.0";

    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let per_call = rt.block_on(async {
        let mut allowed = 0u32;
        let t = Instant::now();
        for _ in 0..calls {
            let Some(id) = dataset_of(std::hint::black_box(path)) else {
                continue;
            };
            if access.is_private(&id) {
                let creds = credentials(std::hint::black_box(&headers), None);
                let d = access.check(&id, &creds).await;
                if d == Decision::Allow && refusal(&id, d).is_none() {
                    allowed += 1;
                }
            }
        }
        let secs = t.elapsed().as_secs_f64();
        (secs / f64::from(calls), allowed)
    });
    let (secs, allowed) = per_call;
    anyhow::ensure!(
        allowed == calls,
        "the token was refused ({allowed} of {calls} allowed)"
    );
    println!(
        "{{\"tokens_in_file\": {tokens}, \"calls\": {calls}, \"check_us_per_request\": {:.3}}}",
        secs * 1e6
    );
    Ok(())
}
