#!/usr/bin/env python3
"""Fuzzes every parser of outside input for a bounded time and reports per target.

    python3 bench/fuzz.py                       # every target, 120 s each
    python3 bench/fuzz.py --time 60 nc3 codec   # some targets, 60 s each

Installs cargo-fuzz into ~/.cargo/bin if it is missing, builds the targets of server/fuzz with
AddressSanitizer (stable toolchain: RUSTC_BOOTSTRAP=1 allows cargo-fuzz's nightly flags), writes
seed inputs (bench/fuzz_seeds.py: netCDF-3 test files, sample netCDF-4 files, Zarr stores,
kerchunk JSON and Parquet references, Icechunk repositories, encoded chunks), runs each target
at the lowest CPU priority and prints executions, corpus size and crashes per target.

A crash, an abort, a leak, an allocation over --malloc-limit-mb, a process over
--rss-limit-mb or one input running longer than --timeout seconds is a finding: libFuzzer
stops that target and writes the input to server/fuzz/artifacts/TARGET/; reproduce it with
`RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET ARTIFACT` in server/. Exit status 1 if any target
had a finding, 2 if the set-up failed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "server"
FUZZ = SERVER / "fuzz"
TARGETS = ["chunk_key", "codec", "nc3", "kerchunk_json", "kerchunk_parquet", "zarr_store", "icechunk",
           "hdf5_native", "expr", "dap_constraint"]
VENV = Path("/var/tmp/cloudify-venv/bin/python")
VENV_ICECHUNK2 = Path("/var/tmp/cloudify-venv-icechunk2/bin/python")


def log(msg: str) -> None:
    print(f"fuzz: {msg}", file=sys.stderr, flush=True)


def cargo_env(target_dir: str) -> dict[str, str]:
    env = dict(os.environ)
    env["RUSTC_BOOTSTRAP"] = "1"
    env["CARGO_TARGET_DIR"] = target_dir
    env["PATH"] = f"{Path.home() / '.cargo' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def ensure_cargo_fuzz(env: dict[str, str]) -> None:
    ok = subprocess.run(["cargo", "fuzz", "--version"], env=env, capture_output=True).returncode == 0
    if ok:
        return
    log("installing cargo-fuzz (cargo install cargo-fuzz --locked)")
    subprocess.run(["nice", "-n", "19", "cargo", "install", "cargo-fuzz", "--locked"], env=env, check=True)


def make_seeds(seed_dir: Path, python: str, python2: str | None, sample: Path | None) -> None:
    if seed_dir.exists():
        shutil.rmtree(seed_dir)
    seed_dir.mkdir(parents=True)
    cmd = [python, str(ROOT / "bench" / "fuzz_seeds.py"), str(seed_dir)]
    if sample:
        cmd += ["--sample-data", str(sample)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    sys.stderr.write("".join(line + "\n" for line in r.stderr.splitlines() if "not made" in line))
    if r.returncode != 0:
        raise SystemExit(f"fuzz: seed generation failed:\n{r.stderr}")
    if python2:
        # Icechunk spec-version-2 repositories, from an interpreter with icechunk 2
        subprocess.run([python2, str(ROOT / "bench" / "fuzz_seeds.py"), str(seed_dir), "--only", "icechunk"],
                       capture_output=True, text=True)


def stat(out: str, name: str) -> int | None:
    m = re.findall(rf"stat::{name}:\s+(\d+)", out)
    return int(m[-1]) if m else None


def run_target(t: str, a, env: dict[str, str], seed_dir: Path) -> dict:
    corpus = FUZZ / "corpus" / t
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts = FUZZ / "artifacts" / t
    artifacts.mkdir(parents=True, exist_ok=True)
    seeds = seed_dir / t
    seeds.mkdir(parents=True, exist_ok=True)
    cmd = ["nice", "-n", "19", "cargo", "fuzz", "run", "--sanitizer", a.sanitizer, t, str(corpus), str(seeds),
           "--", f"-max_total_time={a.time}", f"-rss_limit_mb={a.rss_limit_mb}",
           f"-malloc_limit_mb={a.malloc_limit_mb}", f"-timeout={a.timeout}", "-print_final_stats=1",
           f"-max_len={a.max_len}", f"-artifact_prefix={artifacts}/"]
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=SERVER, env=env, capture_output=True, text=True, errors="replace")
    secs = time.monotonic() - t0
    out = p.stdout + p.stderr
    (FUZZ / "artifacts" / f"{t}.log").write_text(out)
    found = re.findall(r"Test unit written to (\S+)", out)
    kind = re.findall(r"==\d+== ?ERROR: libFuzzer: ([\w-]+)|ERROR: AddressSanitizer: ([\w-]+)|(deadly signal)", out)
    kinds = sorted({next(x for x in k if x) for k in kind})
    panics = sorted(set(re.findall(r"panicked at ([^\s:]+:\d+)", out)))
    caught = sorted(set(re.findall(r"cloudify-fuzz: caught panic at ([^\s:]+:\d+)", out)))
    return {
        "target": t,
        "execs": stat(out, "number_of_executed_units") or 0,
        "execs_per_s": stat(out, "average_exec_per_sec") or 0,
        "peak_rss_mb": stat(out, "peak_rss_mb") or 0,
        "corpus": len(list(corpus.iterdir())),
        "seconds": round(secs),
        "exit": p.returncode,
        "findings": found,
        "kinds": kinds,
        "panics": [x for x in panics if x not in caught],
        "caught_panics": caught,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="*", help=f"targets (default: all: {' '.join(TARGETS)})")
    ap.add_argument("--time", type=int, default=120, help="seconds per target (default 120)")
    ap.add_argument("--timeout", type=int, default=20, help="seconds one input may take (default 20)")
    ap.add_argument("--rss-limit-mb", type=int, default=2048)
    ap.add_argument("--malloc-limit-mb", type=int, default=2048)
    ap.add_argument("--max-len", type=int, default=65536, help="largest input libFuzzer makes (bytes)")
    ap.add_argument("--sanitizer", default="address", choices=["address", "none", "memory", "thread", "leak"])
    ap.add_argument("--target-dir", default=os.environ.get("CLOUDIFY_FUZZ_TARGET_DIR", "/var/tmp/target-fuzz-san"),
                    help="cargo target directory of the sanitizer build (shares nothing with the normal one)")
    ap.add_argument("--python", default=str(VENV) if VENV.exists() else sys.executable,
                    help="interpreter for the seeds (with zarr, icechunk, netCDF4, h5py, numcodecs, pandas)")
    ap.add_argument("--icechunk2-python", default=str(VENV_ICECHUNK2) if VENV_ICECHUNK2.exists() else None,
                    help="interpreter with icechunk 2 for spec-version-2 repository seeds")
    ap.add_argument("--sample-data", type=Path, default=None,
                    help="directory of sample netCDF files (default: esmvaltool_sample_data of --python)")
    ap.add_argument("--no-build", action="store_true", help="use the targets as built")
    ap.add_argument("--json", type=Path, help="also write the results here")
    a = ap.parse_args()
    targets = a.targets or TARGETS
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        log(f"unknown targets: {unknown}; known: {TARGETS}")
        return 2
    env = cargo_env(a.target_dir)
    try:
        ensure_cargo_fuzz(env)
        if not a.no_build:
            log(f"building {len(targets)} targets ({a.sanitizer} sanitizer) in {a.target_dir}")
            for t in targets:
                subprocess.run(["nice", "-n", "19", "cargo", "fuzz", "build", "--sanitizer", a.sanitizer, t],
                               cwd=SERVER, env=env, check=True)
        sample = a.sample_data
        if sample is None:
            r = subprocess.run([a.python, "-c", "import esmvaltool_sample_data as m, os; "
                                "print(os.path.join(os.path.dirname(m.__file__), 'data'))"],
                               capture_output=True, text=True)
            sample = Path(r.stdout.strip()) if r.returncode == 0 and r.stdout.strip() else None
        seed_dir = FUZZ / "corpus" / "_seeds"
        make_seeds(seed_dir, a.python, a.icechunk2_python, sample)
    except (subprocess.CalledProcessError, OSError) as e:
        log(f"set-up failed: {e}")
        return 2
    results = []
    for t in targets:
        log(f"running {t} for {a.time} s")
        r = run_target(t, a, env, seed_dir)
        results.append(r)
        state = "ok" if not r["findings"] and r["exit"] == 0 else f"FINDING ({', '.join(r['kinds']) or 'exit ' + str(r['exit'])})"
        log(f"{t}: {r['execs']} executions, {state}")
    print(f"{'target':<18}{'execs':>12}{'exec/s':>9}{'corpus':>8}{'rss MB':>8}{'crashes':>9}  result")
    for r in results:
        n = len(r["findings"]) or (1 if r["exit"] != 0 else 0)
        print(f"{r['target']:<18}{r['execs']:>12}{r['execs_per_s']:>9}{r['corpus']:>8}{r['peak_rss_mb']:>8}{n:>9}  "
              + ("ok" if n == 0 else f"{', '.join(r['kinds'])} {' '.join(r['findings'])} {' '.join(r['panics'])}"))
        if r["caught_panics"]:
            print(f"{'':<18}panics caught by the code under test (by design): {', '.join(r['caught_panics'])}")
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    bad = [r for r in results if r["findings"] or r["exit"] != 0]
    print(f"fuzz: {len(results) - len(bad)} passed, {len(bad)} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
