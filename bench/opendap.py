#!/usr/bin/env python3
"""OPeNDAP DAP2 side by side: cloudify vs xpublish-opendap 0.2 (the xpublish plugin), one run.

    opendap.py [--years 2] [--repeats 3] [--points 3] [--slabs 20]

Both servers publish the bench dataset (make_data.py: daily 0.5° tas, one HDF5 chunk per day):
cloudify as ``cloudify serve bench GLOB``, the peer as bench/xpublish_peer.py (open_mfdataset
with ``chunks={"time": 1}``, published by xpublish with every installed plugin, so
xpublish-opendap's ``/datasets/bench/opendap``). Three `.dods` workloads, the same constraint
strings sent to both:

- ``full``: the whole ``tas`` array (730 x 360 x 720 float32, 757 MB of XDR);
- ``series``: time series at --points grid cells (``tas.tas[0:729][i:i][j:j]``: one value per
  stored chunk, so every chunk of the axis is decoded);
- ``slab``: --slabs hyperslabs of 100 x 100 cells at single time steps.

Constraints use ``[start:stop]`` hyperslabs: xpublish-opendap 0.2 misreads DAP2's
``[start:stride:stop]`` form (it answers one element), which is also why netCDF-C (ncdump,
netCDF4-python), which always sends strides, cannot read hyperslabs from it; the raw `.dods`
protocol is therefore what is timed, by one keep-alive HTTP client. Before timing, one answer
of each workload from each server is decoded and compared, bit for bit, with the netCDF files.
Then REPEATS passes alternate the order; the median wall time per workload is kept. RSS of each
server process tree is sampled throughout (VmRSS; the peak is reported).

DAP4 (`.dap`) has no line here: no peer installable from PyPI serves DAP4 data.
xpublish-opendap 0.2 is DAP2 only, and pydap 3.5.9's own server answers `.dmr` but has no
`.dap` response (its entry points: asc, ascii, das, dds, dmr, dods, html, ver).

Prints a table and one JSON line (also WORKDIR/results/opendap-<time>.json) with the
cloudify/peer speed-ups and RSS ratio against the issue's bars (≥ 10× throughput, RSS ≤ 1/3).
Exit 0 ok; 1 a server failed or served different values; 2 set-up failed; 3 --enforce-bar and a
bar was missed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run  # noqa: E402  (bench/run.py: servers, RSS sampling, the dataset)
from reliability import start_cloudify  # noqa: E402
from run import RssSampler, Server, SetupError, free_port, log, wait_ready  # noqa: E402

BAR_SPEEDUP = 10.0
BAR_RSS = 1 / 3
SHAPE = (None, 360, 720)  # time comes from the files


def workloads(a, nt):
    """(name, [constraint, ...], [(t0, t1, y0, y1, x0, x1) each selects]) per workload."""
    full = [("tas.tas", (0, nt, 0, 360, 0, 720))]
    series = []
    for k in range(a.points):
        i, j = 37 + 131 * k % 360, 101 + 257 * k % 720
        series.append((f"tas.tas[0:{nt - 1}][{i}:{i}][{j}:{j}]", (0, nt, i, i + 1, j, j + 1)))
    slabs = []
    for k in range(a.slabs):
        t, i, j = (k * 37) % nt, (k * 53) % 260, (k * 97) % 620
        slabs.append((f"tas.tas[{t}:{t}][{i}:{i + 99}][{j}:{j + 99}]", (t, t + 1, i, i + 100, j, j + 100)))
    return [("full", full), ("series", series), ("slab", slabs)]


def decode_first_array(body: bytes):
    """The first array of a `.dods` answer (the projected Grid member) as big-endian float32."""
    import numpy as np

    # libdap ends the DDS with "Data:\n"; xpublish-opendap (opendap-protocol) with "Data:\r\n".
    m = re.search(rb"\nData:\r?\n", body)
    xdr = body[m.end():] if m else b""
    if not m or len(xdr) < 8:
        raise ValueError(f"not a DAP2 data answer: {body[:200]!r}")
    n, n2 = struct.unpack(">II", xdr[:8])
    if n != n2 or len(xdr) < 8 + 4 * n:
        raise ValueError(f"bad XDR counts {n} {n2} for {len(xdr)} bytes")
    return np.frombuffer(xdr[8:8 + 4 * n], dtype=">f4")


def truth(files):
    import numpy as np
    import xarray as xr

    ds = xr.open_mfdataset(files, decode_cf=False, combine="by_coords", data_vars="minimal",
                           coords="minimal", compat="override")
    return ds["tas"], np


def check(session, base, wl, tas, np):
    """Every workload's first constraint, decoded, equals the files' values bit for bit."""
    for name, items in wl:
        ce, (t0, t1, y0, y1, x0, x1) = items[0]
        r = session.get(f"{base}/datasets/bench/opendap.dods?{ce}", timeout=3600)
        if r.status_code != 200:
            return f"{base} {name}: HTTP {r.status_code}: {r.text[:200]}"
        got = decode_first_array(r.content)
        want = tas[t0:t1, y0:y1, x0:x1].values.astype("f4").ravel()
        if got.shape != want.shape or not np.array_equal(got.astype("f4").view("u4"), want.view("u4")):
            return f"{base} {name} ({ce}): values differ from the netCDF files"
    return None


def timed(session, base, items):
    t0 = time.monotonic()
    nbytes = 0
    for ce, _ in items:
        # Read in 1 MiB pieces and counted, not joined: requests' default 10 kB pieces joined
        # into one 757 MB bytes cost the client more than either server takes.
        with session.get(f"{base}/datasets/bench/opendap.dods?{ce}", timeout=3600, stream=True) as r:
            if r.status_code != 200:
                raise RuntimeError(f"{base}: HTTP {r.status_code} for {ce}: {r.text[:200]}")
            for piece in r.iter_content(chunk_size=1 << 20):
                nbytes += len(piece)
    return time.monotonic() - t0, nbytes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--years", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--points", type=int, default=3, help="series: grid cells whose time series is read")
    ap.add_argument("--slabs", type=int, default=20, help="slab: 100x100 hyperslabs read")
    ap.add_argument("--workdir", default="/var/tmp/cloudify-bench")
    ap.add_argument("--cloudify-bin", default=os.environ.get("CLOUDIFY_BIN") or run.DEFAULT_BIN)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--start-timeout", type=float, default=300)
    ap.add_argument("--rss-interval", type=float, default=0.1)
    ap.add_argument("--enforce-bar", action="store_true")
    a = ap.parse_args()
    a.workdir = os.path.abspath(a.workdir)
    a.cloudify_bin = os.path.abspath(a.cloudify_bin)
    import requests

    failures = []
    servers = []
    sampler = None
    workdir = os.path.join(a.workdir, "opendap")
    os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
    try:
        pattern, files = run.ensure_data(a, a.python)
        cl, _ = start_cloudify(a.cloudify_bin, ["bench", pattern], workdir,
                               cache_dir=os.path.join(workdir, "cache"), timeout=a.start_timeout)
        servers.append(cl)
        port = free_port()
        peer = Server("xpublish", [a.python, os.path.join(HERE, "xpublish_peer.py"), "bench", str(port), pattern],
                      os.path.join(workdir, "logs"))
        peer.start()
        servers.append(peer)
        peer.base = f"http://127.0.0.1:{port}"
        peer.zarr = f"{peer.base}/datasets/bench"
        wait_ready(peer, ["/opendap.dds"], a.start_timeout)
        tas, np = truth(files)
        nt = tas.shape[0]
        wl = workloads(a, nt)
        session = requests.Session()
        targets = [("cloudify", cl.base), ("xpublish-opendap", peer.base)]
        for name, base in targets:
            bad = check(session, base, wl, tas, np)
            if bad:
                failures.append(bad)
                log(bad)
        if failures:
            return 1
        sampler = RssSampler(servers, a.rss_interval)
        sampler.start()
        times = {(w, t): [] for w, _ in wl for t, _ in targets}
        sizes = {}
        for rep in range(a.repeats):
            order = targets if rep % 2 == 0 else list(reversed(targets))
            for w, items in wl:
                for t, base in order:
                    dt, nbytes = timed(session, base, items)
                    times[(w, t)].append(dt)
                    sizes[(w, t)] = nbytes
                    log(f"{w} {t} pass {rep + 1}: {dt:.3f} s, {nbytes / 1e6:.1f} MB")
        rss = {s.name: round(sampler.snapshot(s.name)["rss_max_kb"] / 1024, 1) for s in servers}
    except SetupError as e:
        log(f"set-up failed: {e}")
        return 2
    finally:
        if sampler:
            sampler.stop_event.set()
        for s in servers:
            s.stop()
    results = {}
    print(f"{'workload':<8} {'target':<17} {'requests':>8} {'MB':>8} {'median s':>9}", file=sys.stderr)
    for w, items in wl:
        r = {}
        for t, _ in targets:
            med = statistics.median(times[(w, t)])
            r[t] = {"requests": len(items), "MB": round(sizes[(w, t)] / 1e6, 2), "median_s": round(med, 3)}
            print(f"{w:<8} {t:<17} {len(items):>8} {r[t]['MB']:>8} {med:>9.3f}", file=sys.stderr)
        r["speedup"] = round(r["xpublish-opendap"]["median_s"] / r["cloudify"]["median_s"], 2)
        results[w] = r
    rss_ratio = round(rss["cloudify"] / rss["xpublish"], 3) if rss.get("xpublish") else None
    speedups = [results[w]["speedup"] for w in results]
    summary = {"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "years": a.years, "repeats": a.repeats,
               "loadavg": run.loadavg(), "results": results, "rss_max_MB": rss, "rss_ratio": rss_ratio,
               "bar_speedup_met": min(speedups) >= BAR_SPEEDUP,
               "bar_rss_met": rss_ratio is not None and rss_ratio <= BAR_RSS, "failures": failures}
    print(" ".join(f"{w} {results[w]['speedup']}x" for w in results) + f", RSS ratio {rss_ratio} "
          f"(cloudify {rss.get('cloudify')} MB, peer {rss.get('xpublish')} MB)", file=sys.stderr)
    os.makedirs(os.path.join(a.workdir, "results"), exist_ok=True)
    with open(os.path.join(a.workdir, "results", f"opendap-{time.strftime('%Y%m%d-%H%M%S')}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary), flush=True)
    if a.enforce_bar and not (summary["bar_speedup_met"] and summary["bar_rss_met"]):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
