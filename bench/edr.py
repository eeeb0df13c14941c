#!/usr/bin/env python3
"""EDR point time series side by side: cloudify vs xpublish-edr 0.11 (the xpublish plugin).

    edr.py [--years 2] [--points 24] [--concurrency 4] [--repeats 2]

Both servers publish the bench dataset (make_data.py: daily 0.5° tas, 730 steps, one HDF5
chunk per day, so a point's series touches every chunk of the axis): cloudify as ``cloudify
serve bench GLOB``, the peer as bench/xpublish_peer.py run in the peers' venv
(bench/products_peer.py). Both get the same OGC API EDR position queries, xpublish-edr's own
parameters: ``/datasets/bench/edr/position?coords=POINT(lon lat)&parameter-name=tas&f=csv``
(the whole 730-step series), --points points per pass, a different set each pass, passes
alternating the order of the servers. CSV, not CoverageJSON: xpublish-edr 0.11 answers 500
for CoverageJSON on a ``noleap`` time axis (FastAPI cannot encode its cftime dates).

Comparable: before timing, three points' answers from each server are checked against
xarray's ``ds.tas.sel(lon=x, lat=y, method="nearest")`` on the same files (float32, NaN for
missing): both must equal it, else the run fails.

Prints a table and one JSON line (also WORKDIR/results/edr-<time>.json): series/s and p50/p99
latency, and the cloudify/peer ratios. Exit 0 ok; 1 a server failed or answered other values;
2 set-up failed.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from products_peer import RssSampler, SetupError, add_args, log, start_both, summary_stats, timed  # noqa: E402


def url(base: str, lon: float, lat: float) -> str:
    return f"{base}/datasets/bench/edr/position?coords=POINT({lon} {lat})&parameter-name=tas&f=csv"


def values(text: str):
    """The `tas` column of a CSV answer as float32 (empty or NaN for missing)."""
    import csv
    import io

    import numpy as np

    rows = list(csv.DictReader(io.StringIO(text)))
    return np.array([float(r["tas"]) if r["tas"] not in ("", "nan", "NaN") else np.nan for r in rows], dtype="f4")


def check(session, targets, files, points) -> None:
    import numpy as np
    import xarray as xr

    ds = xr.open_mfdataset(files, combine="by_coords", data_vars="minimal", coords="minimal", compat="override")
    for lon, lat in points:
        want = ds.tas.sel(lon=lon, lat=lat, method="nearest").values.astype("f4")
        for t, base in targets:
            r = session.get(url(base, lon, lat), timeout=600)
            if r.status_code != 200:
                raise RuntimeError(f"{t} POINT({lon} {lat}): HTTP {r.status_code}: {r.text[:300]}")
            got = values(r.text)
            if got.shape != want.shape or not np.array_equal(got, want, equal_nan=True):
                raise RuntimeError(f"{t} POINT({lon} {lat}): {got.shape} values differ from xarray's nearest "
                                   f"{want.shape} (first {got[:3]} vs {want[:3]})")
        log(f"POINT({lon} {lat}): both equal xarray's nearest ({want.size} steps)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(ap)
    ap.add_argument("--points", type=int, default=24, help="series per pass")
    a = ap.parse_args()
    import requests

    servers, sampler = [], None
    rnd = random.Random(16)

    def pts(n):
        # lon in the grid's 0..360: xpublish-edr does not wrap -180..180 longitudes onto it
        # (it would answer the nearest edge column), cloudify does; lat inside the grid
        return [(round(rnd.uniform(0.5, 359.5), 3), round(rnd.uniform(-89.0, 89.0), 3)) for _ in range(n)]

    try:
        cl, peer, _, files, _ = start_both(a, "edr")
        servers = [cl, peer]
        targets = [("cloudify", cl.base), ("xpublish-edr", peer.base)]
        check(requests.Session(), targets, files, pts(3))
        sampler = RssSampler(servers, 0.2)
        sampler.start()
        walls = {t: [] for t, _ in targets}
        lats = {t: [] for t, _ in targets}
        for rep in range(a.repeats):
            p = pts(a.points)
            for t, base in (targets if rep % 2 == 0 else targets[::-1]):
                wall, lat, nbytes = timed([url(base, x, y) for x, y in p], a.concurrency)
                walls[t].append(wall)
                lats[t].extend(lat)
                log(f"{t} pass {rep + 1}: {len(p)} series in {wall:.2f} s, {len(p) / wall:.2f}/s, "
                    f"{nbytes / 1e6:.2f} MB")
        rss = {s.name: round(sampler.snapshot(s.name)["rss_max_kb"] / 1024, 1) for s in servers}
    except SetupError as e:
        log(f"set-up failed: {e}")
        return 2
    except RuntimeError as e:
        log(f"failed: {e}")
        return 1
    finally:
        if sampler:
            sampler.stop_event.set()
        for s in servers:
            s.stop()
    r = {t: summary_stats(a.points, walls[t], lats[t]) for t, _ in targets}
    c, p = r["cloudify"], r["xpublish-edr"]
    r["ratio_series_per_s"] = round(c["req_per_s"] / p["req_per_s"], 1)
    r["ratio_p50"] = round(p["p50_ms"] / c["p50_ms"], 1)
    r["ratio_p99"] = round(p["p99_ms"] / c["p99_ms"], 1)
    print(f"{'target':<13} {'series':>6} {'series/s':>9} {'p50 ms':>8} {'p99 ms':>8}", file=sys.stderr)
    for t, _ in targets:
        print(f"{t:<13} {a.points:>6} {r[t]['req_per_s']:>9} {r[t]['p50_ms']:>8} {r[t]['p99_ms']:>8}", file=sys.stderr)
    print(f"cloudify/xpublish-edr: {r['ratio_series_per_s']}x series/s, p50 {r['ratio_p50']}x, "
          f"p99 {r['ratio_p99']}x", file=sys.stderr)
    summary = {"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "years": a.years, "steps": 365 * a.years,
               "repeats": a.repeats, "concurrency": a.concurrency, "loadavg": __import__("run").loadavg(),
               "results": r, "rss_max_MB": rss}
    os.makedirs(os.path.join(a.workdir, "results"), exist_ok=True)
    with open(os.path.join(a.workdir, "results", f"edr-{time.strftime('%Y%m%d-%H%M%S')}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
