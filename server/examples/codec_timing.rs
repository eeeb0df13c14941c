//! Times the stages of the transcoding path on one stored chunk of a real file:
//! `cargo run --release --example codec_timing -- FILE VAR`.
use std::time::Instant;

use cloudify_server::codec::{Encoding, encode, inflate, unshuffle};
use cloudify_server::open::open_dataset;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (file, var) = (
        args.get(1).cloned().unwrap_or_default(),
        args.get(2).cloned().unwrap_or_default(),
    );
    let ds = open_dataset(&cloudify_crds::DatasetSpec::new("t", vec![file]))?;
    let v = ds
        .variable(&var)
        .ok_or_else(|| anyhow::anyhow!("no variable {var}"))?;
    let idx = vec![0u64; v.shape.len()];
    let stored =
        cloudify_server::pipeline::raw_chunk(v, &idx)?.ok_or_else(|| anyhow::anyhow!("not stored"))?;
    let n = v.chunks.iter().product::<u64>() as usize * v.dtype.size();
    let reps = 50;
    let t = Instant::now();
    let mut shuffled = Vec::new();
    for _ in 0..reps {
        shuffled = inflate(&stored, n)?;
    }
    println!(
        "inflate      {:.2} ms",
        t.elapsed().as_secs_f64() * 1e3 / reps as f64
    );
    let t = Instant::now();
    let mut raw = Vec::new();
    for _ in 0..reps {
        raw = unshuffle(&shuffled, v.dtype.size());
    }
    println!(
        "unshuffle    {:.2} ms",
        t.elapsed().as_secs_f64() * 1e3 / reps as f64
    );
    for level in [-3, 1, 3] {
        let t = Instant::now();
        let mut z = Vec::new();
        for _ in 0..reps {
            z = encode(&raw, &Encoding::Zstd(level))?;
        }
        println!(
            "zstd {level:>2}      {:.2} ms  ratio {:.2}",
            t.elapsed().as_secs_f64() * 1e3 / reps as f64,
            n as f64 / z.len() as f64
        );
    }
    for level in [-1, 1, 3] {
        let t = Instant::now();
        let mut z = Vec::new();
        for _ in 0..reps {
            z = zstd::bulk::compress(&shuffled, level)?;
        }
        println!(
            "zstd {level:>2} shuffled {:.2} ms  ratio {:.2}",
            t.elapsed().as_secs_f64() * 1e3 / reps as f64,
            n as f64 / z.len() as f64
        );
    }
    let t = Instant::now();
    for _ in 0..reps {
        let _ = cloudify_server::codec::shuffle(&raw, v.dtype.size());
    }
    println!(
        "shuffle      {:.2} ms",
        t.elapsed().as_secs_f64() * 1e3 / reps as f64
    );
    let t = Instant::now();
    for _ in 0..reps {
        let _ = cloudify_server::pipeline::read_chunk(v, &idx)?;
    }
    println!(
        "read_chunk   {:.2} ms (pread + decode + copy)",
        t.elapsed().as_secs_f64() * 1e3 / reps as f64
    );
    println!("stored ratio {:.2}", n as f64 / stored.len() as f64);
    Ok(())
}
