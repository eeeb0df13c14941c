#!/usr/bin/env python3
"""Processing side by side: cloudify computing on request vs xpublish + dask, in one run.

    processing.py [--years 2] [--connections 8] [--repeats 3] [--modes bitround,rechunk,groupby]
                  [--keepbits 12] [--rechunk time=365,lat=30,lon=30] [--max-chunks 48]

For each mode, cloudify and the peer (xpublish_processing_peer.py: the original cloudify's way,
``xr.apply_ufunc(lossy_compress, dask="parallelized")`` for BitRound, ``open_mfdataset(chunks=...)``
for rechunking) serve the bench dataset (make_data.py) processed the same way. Then:

1. both servers' first and last chunks are read with xarray and must equal numcodecs
   ``BitRound.encode`` of the netCDF values (bitround) or the netCDF values (rechunk), bit for bit;
2. one warm-up pass, then REPEATS passes of fetch.py over the chunks of ``tas`` (all chunks for
   bitround, the first --max-chunks for rechunk: each time-series chunk of the 2-year dataset
   decodes 365 stored one-day chunks), alternating the order; the median chunks/s is kept.
   cloudify runs with ``--compute-cache-bytes 0``: without it every pass after the first would be
   served from its computed-chunk cache, measuring the cache instead of the computation (the
   peer caches no computed chunks either);
3. RSS (VmRSS/VmHWM of each process tree) is sampled throughout.

The groupby mode compares fetching ``tas.groupby("time.month").mean()`` computed by cloudify (the
ad-hoc ``/datasets/raw/groupby/tas/time.month/mean/zarr`` product, opened and loaded by xarray) with
xarray + dask computing the same locally from the files (``open_mfdataset(chunks={"time": 31})``,
dask's default threaded scheduler): wall time per repeat, each cloudify repeat on a newly started
server so no computed chunk is reused; the results must agree within rtol 1e-5 (dask sums float32 in float32).

For bitround it also reports the bytes served for the rounded variable against the same
variable unrounded (cloudify serves both from one config: ``bench`` rounded, ``raw`` as stored,
same compressor), the saving DKRZ serves BitRound for.

Prints a table and one JSON line (also saved as WORKDIR/results/processing-<time>.json) with the
cloudify/peer ratios and whether the issue's bars are met (≥ 10× chunks/s for both, ≤ 1/3 RSS for
bitround, ≥ 3× faster for groupby). Exit 0 ok; 1 a server failed or served different values; 2 set-up failed;
3 --enforce-bar and a bar was missed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run  # noqa: E402  (bench/run.py: servers, RSS sampling, the dataset)
from reliability import start_cloudify  # noqa: E402
from run import RssSampler, Server, SetupError, free_port, log, run_cmd_json, wait_ready  # noqa: E402

BAR_SPEEDUP = 10.0
BAR_RSS = 1 / 3
BAR_GROUPBY = 3.0


def parse_chunks(text):
    out = {}
    for part in text.split(","):
        k, _, v = part.partition("=")
        out[k.strip()] = int(v)
    return out


def cloudify_config(path, pattern, mode, keepbits, chunks):
    """The serve config: `bench` processed, `raw` the same files as stored (bitround's baseline)."""
    if mode == "bitround":
        proc = f"      bitround: {{keepbits: {keepbits}}}\n"
    else:
        proc = "      chunks: {" + ", ".join(f"{k}: {v}" for k, v in chunks.items()) + "}\n"
    with open(path, "w") as f:
        f.write("datasets:\n"
                f"  - name: bench\n    sources: [\"{pattern}\"]\n    processing:\n{proc}"
                f"  - name: raw\n    sources: [\"{pattern}\"]\n")


def check_values(zarr_url, fmt, files, mode, keepbits, chunks):
    """The served tas on its first and last chunk along time equals the expected values exactly."""
    import numcodecs
    import numpy as np
    import xarray as xr

    ds = xr.open_dataset(zarr_url, engine="zarr", zarr_format=fmt, decode_cf=False)
    local = xr.open_mfdataset(files, decode_cf=False, combine="by_coords", data_vars="minimal",
                              coords="minimal", compat="override")
    n = ds.sizes["time"]
    step = chunks.get("time", 1) if mode == "rechunk" else 1
    for sl in (slice(0, step), slice(n - step, n)):
        got = ds["tas"].isel(time=sl).values
        want = local["tas"].isel(time=sl).values
        if mode == "bitround":
            want = numcodecs.BitRound(keepbits=keepbits).encode(want).view(want.dtype).reshape(want.shape)
        if got.dtype != want.dtype or got.shape != want.shape or \
                not np.array_equal(got.view(np.uint32), want.view(np.uint32)):
            return f"{zarr_url}: tas[time {sl.start}:{sl.stop}] differs from the expected values"
    return None


def fetch(python, zarr, fmt, connections, max_chunks, timeout):
    cmd = [python, os.path.join(HERE, "fetch.py"), zarr, "tas", str(connections), "--zarr-format", str(fmt),
           "--timeout", str(timeout)]
    if max_chunks:
        cmd += ["--max-chunks", str(max_chunks)]
    out, rc, err = run_cmd_json(cmd, 3600, "fetch.py")
    if out is None:
        return {"errors": 1, "chunks": 0, "stderr": err[-600:]}
    return out


GROUPBY_LOCAL = """
import sys, time, json
import xarray as xr
t0 = time.monotonic()
ds = xr.open_mfdataset(sys.argv[2:], chunks={"time": 31}, combine="by_coords", data_vars="minimal",
                       coords="minimal", compat="override")
out = ds["tas"].groupby("time.month").mean().compute()
dt = time.monotonic() - t0
out.to_netcdf(sys.argv[1])
print(json.dumps({"seconds": dt}))
"""

GROUPBY_REMOTE = """
import sys, time, json
import xarray as xr
t0 = time.monotonic()
ds = xr.open_dataset(sys.argv[2], engine="zarr", zarr_format=3, chunks=None)
out = ds["tas"].load()
dt = time.monotonic() - t0
out.to_netcdf(sys.argv[1])
print(json.dumps({"seconds": dt}))
"""


def run_groupby(a, pattern, files, failures):
    """groupby(time.month).mean() of tas: fetched from cloudify vs computed locally by xarray+dask,
    each in a process of its own, timed from opening to the loaded result. The two must agree
    within rtol 1e-5: cloudify accumulates float32 in float64, dask's float32 sums in float32."""
    import numpy as np
    import xarray as xr

    workdir = os.path.join(a.workdir, "processing-groupby")
    os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
    config = os.path.join(workdir, "cloudify.yaml")
    with open(config, "w") as f:
        f.write(f"datasets:\n  - name: raw\n    sources: [\"{pattern}\"]\n")
    times = {"cloudify": [], "local": []}
    outs = {k: os.path.join(workdir, f"{k}.nc") for k in times}
    for rep in range(a.repeats + 1):  # the first repeat is a warm-up (page cache, imports)
        order = ["cloudify", "local"] if rep % 2 == 0 else ["local", "cloudify"]
        for who in order:
            if who == "local":
                cmd = [a.python, "-c", GROUPBY_LOCAL, outs[who], *files]
                out, rc, err = run_cmd_json(cmd, 3600, "groupby local")
            else:
                cl, _ = start_cloudify(a.cloudify_bin, ["--config", config], workdir,
                                       cache_dir=os.path.join(workdir, "cache"), timeout=a.start_timeout,
                                       dataset="raw")
                try:
                    url = f"{cl.base}/datasets/raw/groupby/tas/time.month/mean/zarr"
                    cmd = [a.python, "-c", GROUPBY_REMOTE, outs[who], url]
                    out, rc, err = run_cmd_json(cmd, 3600, "groupby cloudify")
                finally:
                    cl.stop()
            if out is None:
                failures.append(f"groupby {who}: failed: {err[-600:]}")
                return None
            if rep > 0:
                times[who].append(out["seconds"])
            log(f"groupby {who} pass {rep}: {out['seconds']:.2f} s")
    got = xr.open_dataarray(outs["cloudify"]).values
    want = xr.open_dataarray(outs["local"]).values
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-5, atol=0, equal_nan=True):
        failures.append("groupby: cloudify's result differs from xarray+dask's beyond rtol 1e-5")
        return None
    res = {"mode": "groupby",
           "cloudify_s": round(statistics.median(times["cloudify"]), 3),
           "local_s": round(statistics.median(times["local"]), 3)}
    res["speedup"] = round(res["local_s"] / res["cloudify_s"], 2) if res["cloudify_s"] else None
    res["bar_speedup_met"] = bool(res["speedup"] and res["speedup"] >= BAR_GROUPBY)
    return res


def run_mode(a, mode, pattern, files, failures):
    if mode == "groupby":
        return run_groupby(a, pattern, files, failures)
    chunks = parse_chunks(a.rechunk)
    workdir = os.path.join(a.workdir, f"processing-{mode}")
    os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
    config = os.path.join(workdir, "cloudify.yaml")
    cloudify_config(config, pattern, mode, a.keepbits, chunks)
    servers = []
    sampler = None
    try:
        # no computed-chunk cache: each pass computes every chunk it fetches (see the docstring)
        cl, _ = start_cloudify(a.cloudify_bin, ["--config", config, "--compute-cache-bytes", "0"], workdir,
                               cache_dir=os.path.join(workdir, "cache"), timeout=a.start_timeout)
        servers.append(cl)
        cl.zarr = f"{cl.base}/datasets/bench/zarr"
        port = free_port()
        peer = Server("xpublish", [a.python, os.path.join(HERE, "xpublish_processing_peer.py"), "bench", str(port),
                                   pattern, "--mode", mode, "--keepbits", str(a.keepbits), "--chunks", a.rechunk],
                      os.path.join(workdir, "logs"))
        peer.start()
        servers.append(peer)
        peer.base = f"http://127.0.0.1:{port}"
        peer.zarr = f"{peer.base}/datasets/bench/zarr"
        wait_ready(peer, ["/zarr.json"], a.start_timeout)
        targets = [("cloudify-v3", cl.zarr, 3), ("cloudify-v2", cl.zarr, 2), ("xpublish-v3", peer.zarr, 3)]
        for name, url, fmt in targets:
            bad = check_values(url, fmt, files, mode, a.keepbits, chunks)
            if bad:
                failures.append(bad)
                log(bad)
        if failures and not a.continue_on_mismatch:
            return None
        # a new cloudify: the checks above filled its decoded-chunk cache, and the first pass
        # below is to be a cold one
        cl.stop()
        servers.remove(cl)
        cl, _ = start_cloudify(a.cloudify_bin, ["--config", config, "--compute-cache-bytes", "0"], workdir,
                               cache_dir=os.path.join(workdir, "cache"), timeout=a.start_timeout)
        servers.insert(0, cl)
        cl.zarr = f"{cl.base}/datasets/bench/zarr"
        targets = [("cloudify-v3", cl.zarr, 3), ("cloudify-v2", cl.zarr, 2), ("xpublish-v3", peer.zarr, 3)]
        max_chunks = a.max_chunks if mode == "rechunk" else 0
        sampler = RssSampler(servers, a.rss_interval)
        sampler.start()
        # The warm-up pass is also the cold one: each server's first computation of these
        # chunks (cloudify's decoded-chunk cache empty for cloudify-v3, the first target; the
        # peer keeps nothing between passes anyway). Reported beside the warm median.
        log(f"{mode}: warm-up (cold) pass")
        cold = {}
        for name, url, fmt in targets:
            out = fetch(a.python, url, fmt, a.connections, max_chunks, a.request_timeout)
            cold[name] = out.get("chunks_per_s")
            log(f"{mode} {name} cold pass: {cold[name]} chunks/s")
        runs = {name: [] for name, _, _ in targets}
        for rep in range(a.repeats):
            order = targets if rep % 2 == 0 else list(reversed(targets))
            for name, url, fmt in order:
                out = fetch(a.python, url, fmt, a.connections, max_chunks, a.request_timeout)
                if out.get("errors"):
                    failures.append(f"{mode} {name}: {out.get('errors')} failed requests "
                                    f"{out.get('error_kinds')} {out.get('stderr', '')}")
                runs[name].append(out)
                log(f"{mode} {name} pass {rep + 1}: {out.get('chunks_per_s')} chunks/s, {out.get('MB')} MB")
        res = {"mode": mode}
        for name, outs in runs.items():
            cps = [o["chunks_per_s"] for o in outs if o.get("chunks_per_s")]
            res[name] = {"chunks": outs[0].get("chunks") if outs else 0,
                         "chunks_per_s": round(statistics.median(cps), 2) if cps else None,
                         "MB": outs[0].get("MB") if outs else None,
                         "p50_ms": outs[0].get("p50_ms") if outs else None}
        res["rss_max_MB"] = {s.name: round(sampler.snapshot(s.name)["rss_max_kb"] / 1024, 1) for s in servers}
        peer_cps = res["xpublish-v3"]["chunks_per_s"]
        for v in ("cloudify-v3", "cloudify-v2"):
            c = res[v]["chunks_per_s"]
            res[f"speedup_{v}"] = round(c / peer_cps, 1) if c and peer_cps else None
        res["cold_chunks_per_s"] = {"cloudify-v3": cold.get("cloudify-v3"), "xpublish-v3": cold.get("xpublish-v3")}
        res["speedup_cold_cloudify-v3"] = round(cold["cloudify-v3"] / cold["xpublish-v3"], 1) \
            if cold.get("cloudify-v3") and cold.get("xpublish-v3") else None
        res["rss_ratio"] = round(res["rss_max_MB"]["cloudify"] / res["rss_max_MB"]["xpublish"], 3) \
            if res["rss_max_MB"].get("xpublish") else None
        if mode == "bitround":
            raw = fetch(a.python, f"{cl.base}/datasets/raw/zarr", 3, a.connections, 0, a.request_timeout)
            res["MB_unrounded"] = raw.get("MB")
            res["MB_rounded"] = res["cloudify-v3"]["MB"]
            if raw.get("MB"):
                res["bytes_ratio"] = round(res["MB_rounded"] / raw["MB"], 3)
        bar = min(x for x in (res["speedup_cloudify-v3"], res["speedup_cloudify-v2"]) if x is not None) \
            if res["speedup_cloudify-v3"] else None
        res["bar_speedup_met"] = bool(bar and bar >= BAR_SPEEDUP)
        if mode == "bitround":
            res["bar_rss_met"] = bool(res["rss_ratio"] is not None and res["rss_ratio"] <= BAR_RSS)
        return res
    finally:
        if sampler:
            sampler.stop_event.set()
        for s in servers:
            s.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--years", type=int, default=2)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", default="bitround,rechunk,groupby")
    ap.add_argument("--keepbits", type=int, default=12)
    ap.add_argument("--rechunk", default="time=365,lat=30,lon=30")
    ap.add_argument("--max-chunks", type=int, default=48, help="rechunk: time-series chunks fetched per pass")
    ap.add_argument("--workdir", default="/var/tmp/cloudify-bench")
    ap.add_argument("--cloudify-bin", default=os.environ.get("CLOUDIFY_BIN") or run.DEFAULT_BIN)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--start-timeout", type=float, default=300)
    ap.add_argument("--request-timeout", type=float, default=600)
    ap.add_argument("--rss-interval", type=float, default=0.1)
    ap.add_argument("--continue-on-mismatch", action="store_true")
    ap.add_argument("--enforce-bar", action="store_true")
    a = ap.parse_args()
    a.workdir = os.path.abspath(a.workdir)
    a.cloudify_bin = os.path.abspath(a.cloudify_bin)
    failures = []
    results = []
    try:
        pattern, files = run.ensure_data(a, a.python)
        for mode in a.modes.split(","):
            res = run_mode(a, mode.strip(), pattern, files, failures)
            if res:
                results.append(res)
    except SetupError as e:
        log(f"set-up failed: {e}")
        return 2
    print(f"{'mode':<9} {'target':<12} {'chunks':>7} {'chunks/s':>9} {'MB':>8} {'RSS max MB':>10}", file=sys.stderr)
    for r in results:
        if r["mode"] == "groupby":
            print(f"groupby   cloudify {r['cloudify_s']} s, xarray+dask locally {r['local_s']} s: "
                  f"{r['speedup']}x", file=sys.stderr)
            continue
        for t in ("cloudify-v3", "cloudify-v2", "xpublish-v3"):
            who = "cloudify" if t.startswith("cloudify") else "xpublish"
            print(f"{r['mode']:<9} {t:<12} {r[t]['chunks']:>7} {r[t]['chunks_per_s']!s:>9} {r[t]['MB']!s:>8} "
                  f"{r['rss_max_MB'].get(who)!s:>10}", file=sys.stderr)
        print(f"{r['mode']:<9} speedup v3 {r['speedup_cloudify-v3']}x v2 {r['speedup_cloudify-v2']}x, "
              f"cold (first pass) v3 {r.get('speedup_cold_cloudify-v3')}x, "
              f"RSS ratio {r['rss_ratio']}" + (f", bytes rounded/unrounded {r.get('bytes_ratio')}"
                                                 if r["mode"] == "bitround" else ""), file=sys.stderr)
    summary = {"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "years": a.years, "connections": a.connections,
               "repeats": a.repeats, "results": results, "failures": failures}
    os.makedirs(os.path.join(a.workdir, "results"), exist_ok=True)
    with open(os.path.join(a.workdir, "results", f"processing-{time.strftime('%Y%m%d-%H%M%S')}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary), flush=True)
    if failures:
        return 1
    if a.enforce_bar and not all(r["bar_speedup_met"] and r.get("bar_rss_met", True) for r in results):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
