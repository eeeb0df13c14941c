"""Shared set-up of bench/tiles.py and bench/edr.py: cloudify and the xpublish peer (with the
xpublish-tiles and xpublish-edr plugins) on the bench dataset, and a concurrent HTTP timer.

The peer runs bench/xpublish_peer.py in its own venv (bench/requirements-peers.txt, made by
e2e/setup.sh at /var/tmp/cloudify-venv-peers): xpublish-tiles 0.12 needs Python >= 3.12, the
main venv has 3.11. xpublish discovers both plugins through their entry points, so the peer
serves ``/datasets/bench/tiles/...`` and ``/datasets/bench/edr/...`` from the same
``open_mfdataset(..., chunks={"time": 1})`` the original cloudify uses.

Two settings make xpublish-tiles work on netCDF files at all (it is built for Zarr): its
``async_load`` is turned off (``XPUBLISH_TILES__ASYNC_LOAD=false``: the netCDF4 backend has no
asynchronous loading, every tile would be a 500) and the coordinates are held in memory
(``xpublish_peer.py --load-coords``: its grid detection loads them with ``load_async``
whatever the setting). Both only let it run; neither changes what it reads per tile."""
from __future__ import annotations

import os
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run  # noqa: E402
from reliability import start_cloudify  # noqa: E402
from run import RssSampler, Server, SetupError, free_port, log, wait_ready  # noqa: E402

PEER_PYTHON = os.environ.get("CLOUDIFY_PEERS_PYTHON", "/var/tmp/cloudify-venv-peers/bin/python")

__all__ = ["RssSampler", "SetupError", "add_args", "log", "start_both", "timed", "summary_stats"]


def add_args(ap) -> None:
    ap.add_argument("--years", type=int, default=2)
    ap.add_argument("--workdir", default="/var/tmp/cloudify-bench")
    ap.add_argument("--cloudify-bin", default=os.environ.get("CLOUDIFY_BIN") or run.DEFAULT_BIN)
    ap.add_argument("--python", default=sys.executable, help="writes the dataset (make_data.py)")
    ap.add_argument("--peer-python", default=PEER_PYTHON, help="runs the peer (xpublish-tiles, xpublish-edr)")
    ap.add_argument("--start-timeout", type=float, default=300)
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight, for both servers")
    ap.add_argument("--repeats", type=int, default=2)


def start_both(a, tag: str):
    """(cloudify, peer, pattern, files, workdir); both answer before this returns."""
    if not os.access(a.peer_python, os.X_OK):
        raise SetupError(f"no peer Python at {a.peer_python}: run e2e/setup.sh (needs a Python >= 3.12)")
    workdir = os.path.join(os.path.abspath(a.workdir), tag)
    os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
    pattern, files = run.ensure_data(a, a.python)
    cl, _ = start_cloudify(os.path.abspath(a.cloudify_bin), ["bench", pattern], workdir,
                           cache_dir=os.path.join(workdir, "cache"), timeout=a.start_timeout)
    port = free_port()
    peer = Server("xpublish", [a.peer_python, os.path.join(HERE, "xpublish_peer.py"), "--load-coords", "bench",
                               str(port), pattern],
                  os.path.join(workdir, "logs"), env={**os.environ, "XPUBLISH_TILES__ASYNC_LOAD": "false"})
    peer.start()
    peer.base = f"http://127.0.0.1:{port}"
    peer.zarr = f"{peer.base}/datasets/bench"
    try:
        wait_ready(peer, ["/keys"], a.start_timeout)
    except SetupError:
        peer.stop()
        cl.stop()
        raise
    return cl, peer, pattern, files, workdir


def timed(urls: list[str], concurrency: int, check=None):
    """GET every URL with `concurrency` keep-alive clients; (wall seconds, [latency s], bytes).
    `check(url, response)` may raise to stop the run (a non-200 always does)."""
    import requests

    lat: list[float] = []
    nbytes = [0]
    errors: list[str] = []
    it = iter(urls)
    lock = threading.Lock()

    def worker():
        s = requests.Session()
        while True:
            with lock:
                u = next(it, None)
            if u is None or errors:
                return
            t0 = time.monotonic()
            r = s.get(u, timeout=600)
            dt = time.monotonic() - t0
            if r.status_code != 200:
                errors.append(f"{u}: HTTP {r.status_code}: {r.text[:200]}")
                return
            if check:
                check(u, r)
            with lock:
                lat.append(dt)
                nbytes[0] += len(r.content)

    t0 = time.monotonic()
    ts = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.monotonic() - t0
    if errors:
        raise RuntimeError(errors[0])
    return wall, lat, nbytes[0]


def summary_stats(n: int, walls: list[float], lats: list[float]) -> dict:
    """Requests/s from the median pass; latency percentiles over every request of every pass."""
    q = statistics.quantiles(lats, n=100, method="inclusive") if len(lats) > 1 else [lats[0]] * 99
    wall = statistics.median(walls)
    return {"requests": n, "median_wall_s": round(wall, 3), "req_per_s": round(n / wall, 2),
            "p50_ms": round(q[49] * 1000, 1), "p99_ms": round(q[98] * 1000, 1)}
