#!/usr/bin/env python3
"""Map tiles side by side: cloudify vs xpublish-tiles 0.12 (the xpublish plugin), one run.

    tiles.py [--years 2] [--zooms 2,3,4] [--per-zoom 48] [--concurrency 4] [--repeats 2]

Both servers publish the bench dataset (make_data.py: daily 0.5° tas, 730 steps, one HDF5
chunk per day): cloudify as ``cloudify serve bench GLOB``, the peer as bench/xpublish_peer.py
run in the peers' venv (bench/products_peer.py). Both are asked for the same Web-Mercator
tiles with the same query, xpublish-tiles' own parameters:
``/datasets/bench/tiles/WebMercatorQuad/{z}/{y}/{x}?variables=tas&style=raster/viridis&
colorscalerange=240,310&width=256&height=256&time=nearest::DATE`` (cloudify's route ends in
``.png``; the peer's takes ``f=image/png``). Tiles: up to --per-zoom tiles of each zoom
(fixed seed), each pass at another time step so neither server answers from a cache of the
previous pass. Passes alternate the order of the servers.

Comparable: before timing, one tile per zoom from each server is decoded (Pillow) and
compared: both 256x256, both opaque over the globe, and the fraction of pixels whose colours
agree within 3/255 per channel (and within 24/255) is reported. The renderers differ
(cloudify: the cell nearest each pixel centre, matplotlib's colour table; xpublish-tiles:
datashader's rasterisation and colour ramp), so not every pixel is identical: measured on
this dataset, 87 % (z2) to 95 % (z4) agree within 3/255 and all within 24/255. Below 80 % the run fails as "not the same tile".

Prints a table and one JSON line (also WORKDIR/results/tiles-<time>.json): tiles/s and
p50/p99 latency per zoom and overall, and the cloudify/peer ratios. Exit 0 ok; 1 a server
failed or the tiles differ; 2 set-up failed.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from products_peer import RssSampler, SetupError, add_args, log, start_both, summary_stats, timed  # noqa: E402

AGREE_MIN = 0.80
Q = "variables=tas&style=raster/viridis&colorscalerange=240,310&width=256&height=256"


def date_of_step(k: int) -> str:
    import cftime

    d = cftime.num2date(k + 0.5, "days since 2000-01-01", calendar="noleap")
    # the steps are at noon: name the step itself, not midnight between two of them
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:00:00"


def tile_url(target: str, base: str, z: int, x: int, y: int, date: str) -> str:
    if target == "cloudify":
        return f"{base}/datasets/bench/tiles/WebMercatorQuad/{z}/{y}/{x}.png?{Q}&time=nearest::{date}"
    return f"{base}/datasets/bench/tiles/WebMercatorQuad/{z}/{y}/{x}?{Q}&f=image/png&time=nearest::{date}"


def decode(content: bytes):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(content)).convert("RGBA")).astype(int)


def compare(session, targets, zooms, date) -> dict:
    """One tile per zoom from each server: the fraction of pixels whose colours agree."""
    import numpy as np

    out = {}
    for z in zooms:
        x, y = (2**z) // 3, (2**z) // 2 - 1  # a tile on the globe, off the seam
        imgs = {}
        for t, base in targets:
            r = session.get(tile_url(t, base, z, x, y, date), timeout=600)
            if r.status_code != 200 or not r.headers.get("content-type", "").startswith("image/png"):
                raise RuntimeError(f"{t} tile {z}/{y}/{x}: HTTP {r.status_code} {r.headers.get('content-type')}: "
                                   f"{r.text[:200]}")
            imgs[t] = decode(r.content)
        a, b = imgs["cloudify"], imgs["xpublish-tiles"]
        if a.shape != (256, 256, 4) or b.shape != (256, 256, 4):
            raise RuntimeError(f"tile {z}/{y}/{x}: shapes {a.shape} vs {b.shape}")
        both = (a[..., 3] == 255) & (b[..., 3] == 255)
        diff = np.abs(a - b)[..., :3].max(axis=-1)
        agree = float(((diff <= 3) & both).sum()) / both.size
        near = float(((diff <= 24) & both).sum()) / both.size
        out[f"{z}/{y}/{x}"] = {"opaque_both": round(float(both.mean()), 4), "agree": round(agree, 4),
                               "within_24": round(near, 4),
                               "colours_cloudify": int(len(np.unique(a.reshape(-1, 4), axis=0)))}
        log(f"tile {z}/{y}/{x} at {date}: {out[f'{z}/{y}/{x}']}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(ap)
    ap.add_argument("--zooms", default="2,3,4")
    ap.add_argument("--per-zoom", type=int, default=48, help="tiles of each zoom per pass (all when fewer)")
    a = ap.parse_args()
    zooms = [int(z) for z in a.zooms.split(",")]
    import requests

    servers, sampler = [], None
    try:
        cl, peer, _, files, _ = start_both(a, "tiles")
        servers = [cl, peer]
        nt = 365 * len(files)
        targets = [("cloudify", cl.base), ("xpublish-tiles", peer.base)]
        session = requests.Session()
        agreement = compare(session, targets, zooms, date_of_step(nt // 2))
        bad = {k: v for k, v in agreement.items() if v["agree"] < AGREE_MIN}
        if bad:
            log(f"not the same tiles: {bad}")
            return 1
        rnd = random.Random(16)
        sampler = RssSampler(servers, 0.2)
        sampler.start()
        walls = {(z, t): [] for z in zooms for t, _ in targets}
        lats = {(z, t): [] for z in zooms for t, _ in targets}
        counts = {}
        for rep in range(a.repeats):
            date = date_of_step((37 + 97 * rep) % nt)
            order = targets if rep % 2 == 0 else targets[::-1]
            for z in zooms:
                allt = [(x, y) for x in range(2**z) for y in range(2**z)]
                pick = allt if len(allt) <= a.per_zoom else rnd.sample(allt, a.per_zoom)
                counts[z] = len(pick)
                for t, base in order:
                    urls = [tile_url(t, base, z, x, y, date) for x, y in pick]
                    wall, lat, nbytes = timed(urls, a.concurrency)
                    walls[(z, t)].append(wall)
                    lats[(z, t)].extend(lat)
                    log(f"z{z} {t} pass {rep + 1} ({date}): {len(urls)} tiles in {wall:.2f} s, "
                        f"{len(urls) / wall:.1f} tiles/s, {nbytes / 1e6:.2f} MB")
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
    results = {}
    print(f"{'zoom':<5} {'target':<15} {'tiles':>6} {'tiles/s':>8} {'p50 ms':>8} {'p99 ms':>8}", file=sys.stderr)
    for z in zooms:
        r = {}
        for t, _ in targets:
            r[t] = summary_stats(counts[z], walls[(z, t)], lats[(z, t)])
            print(f"z{z:<4} {t:<15} {counts[z]:>6} {r[t]['req_per_s']:>8} {r[t]['p50_ms']:>8} {r[t]['p99_ms']:>8}",
                  file=sys.stderr)
        c, p = r["cloudify"], r["xpublish-tiles"]
        r["ratio_tiles_per_s"] = round(c["req_per_s"] / p["req_per_s"], 1)
        r["ratio_p50"] = round(p["p50_ms"] / c["p50_ms"], 1)
        r["ratio_p99"] = round(p["p99_ms"] / c["p99_ms"], 1)
        results[f"z{z}"] = r
    summary = {"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "years": a.years, "repeats": a.repeats,
               "concurrency": a.concurrency, "loadavg": __import__("run").loadavg(), "agreement": agreement,
               "results": results, "rss_max_MB": rss}
    print(" ".join(f"{k}: {v['ratio_tiles_per_s']}x tiles/s, p50 {v['ratio_p50']}x, p99 {v['ratio_p99']}x"
                   for k, v in results.items()), file=sys.stderr)
    os.makedirs(os.path.join(a.workdir, "results"), exist_ok=True)
    with open(os.path.join(a.workdir, "results", f"tiles-{time.strftime('%Y%m%d-%H%M%S')}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
