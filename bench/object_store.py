#!/usr/bin/env python3
"""Chunks/s served from a local file, from S3 (moto server) and from HTTP (nginx), same data.

    python3 bench/object_store.py [--cloudify-bin target/release/cloudify] [--chunks 730]

Writes one netCDF-4 file (float32, zlib+shuffle, one chunk per time step), serves it as three
datasets of one `cloudify serve` (local path, s3:// on a moto server, http:// from nginx) and
fetches every chunk of /zarr (Zarr v2, pass-through: ranged reads, no decode) with 16
connections, median of 3 passes. moto is a Python server, so the S3 figure is bounded by moto,
not by cloudify; nginx shows what a fast object server gives. Not a test: prints figures.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port}")


def make_file(path: Path, n: int) -> None:
    import netCDF4

    rng = np.random.default_rng(0)
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("time", None)
        ds.createDimension("lat", 180)
        ds.createDimension("lon", 360)
        t = ds.createVariable("time", "f8", ("time",))
        t.units = "days since 2000-01-01"
        v = ds.createVariable("tas", "f4", ("time", "lat", "lon"), zlib=True, shuffle=True,
                              complevel=1, chunksizes=(1, 180, 360))
        base = (280 + 20 * np.cos(np.linspace(-1.5, 1.5, 180)))[:, None].astype("f4")
        for i in range(n):
            v[i] = base + rng.normal(0, 1, (180, 360)).astype("f4")
        t[:] = np.arange(n)


def fetch_all(url: str, keys: list[str], conns: int) -> tuple[float, int]:
    sessions = {}

    def get(k):
        import threading

        s = sessions.setdefault(threading.get_ident(), requests.Session())
        r = s.get(f"{url}/{k}", timeout=120)
        r.raise_for_status()
        return len(r.content)

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(conns) as ex:
        nbytes = sum(ex.map(get, keys))
    return time.perf_counter() - t0, nbytes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cloudify-bin", default=os.environ.get("CLOUDIFY_BIN", "/var/tmp/cloudify-target/release/cloudify"))
    ap.add_argument("--chunks", type=int, default=730)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--passes", type=int, default=3)
    a = ap.parse_args()
    import boto3

    work = Path(tempfile.mkdtemp(prefix="cloudify-os-bench-"))
    procs = []
    try:
        data = work / "www" / "tas.nc"
        data.parent.mkdir(parents=True)
        make_file(data, a.chunks)
        # S3: moto without authentication
        mport = free_port()
        procs.append(subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(mport)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(mport)
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{mport}", region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")
        s3.create_bucket(Bucket="bench")
        s3.upload_file(str(data), "bench", "tas.nc")
        datasets = [
            {"name": "local", "sources": [str(data)]},
            {"name": "s3", "sources": ["s3://bench/tas.nc"],
             "storage": {"endpoint": f"http://127.0.0.1:{mport}", "allowHttp": True, "region": "us-east-1",
                         "options": {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"},
                         "maxConcurrency": 64}},
        ]
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if os.path.exists(nginx):
            nport = free_port()
            conf = work / "nginx.conf"
            conf.write_text(
                f"daemon off; master_process off; error_log {work}/nginx.err; pid {work}/nginx.pid;\n"
                f"events {{ worker_connections 1024; }}\n"
                f"http {{ access_log off; client_body_temp_path {work}/b; proxy_temp_path {work}/p;"
                f" fastcgi_temp_path {work}/f; uwsgi_temp_path {work}/u; scgi_temp_path {work}/s;"
                f" server {{ listen 127.0.0.1:{nport}; root {work}/www; }} }}\n")
            procs.append(subprocess.Popen([nginx, "-c", str(conf), "-p", str(work)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_port(nport)
            datasets.append({"name": "http", "sources": [f"http://127.0.0.1:{nport}/tas.nc"],
                             "storage": {"allowHttp": True, "maxConcurrency": 64}})
        cfg = work / "cloudify.yaml"
        cfg.write_text(json.dumps({"datasets": datasets}))
        listen = work / "listen"
        env = dict(os.environ, CLOUDIFY_CACHE_DIR=str(work / "cache"))
        procs.append(subprocess.Popen([a.cloudify_bin, "serve", "--config", str(cfg), "--port", "0",
                                       "--listen-file", str(listen)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=open(work / "cloudify.log", "wb")))
        deadline = time.monotonic() + 300
        while not listen.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        base = listen.read_text().strip()
        results = {}
        for d in datasets:
            name = d["name"]
            url = f"{base}/datasets/{name}/zarr"
            meta = requests.get(f"{url}/.zmetadata", timeout=60)
            meta.raise_for_status()
            keys = [f"tas/{i}.0.0" for i in range(a.chunks)]
            fetch_all(url, keys[:32], a.connections)  # warm connections
            runs = [fetch_all(url, keys, a.connections) for _ in range(a.passes)]
            secs = statistics.median(r[0] for r in runs)
            mb = runs[0][1] / 1e6
            results[name] = {"chunks_per_s": round(a.chunks / secs), "MB_per_s": round(mb / secs, 1)}
            print(f"{name:6s} {a.chunks / secs:8.0f} chunks/s  {mb / secs:7.1f} MB/s  "
                  f"({a.chunks} chunks of {mb / a.chunks * 1000:.0f} kB, {a.connections} connections)")
        print(json.dumps(results))
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
