#!/usr/bin/env python3
"""Raw pass-through benchmark: cloudify's /kerchunk and /zarr (v2) vs nginx serving a Zarr copy.

    passthrough.py [--years 2] [--connections 8] [--client wrk|python|oha] [--repeats 3]
                   [--workdir /var/tmp/cloudify-bench] [--cloudify-bin PATH] [--nginx /usr/sbin/nginx]

The question it answers (issue #3, bar >= 0.8x nginx): when no decoding is needed, how close does
cloudify get to a static file server? The comparison is made fair by giving nginx *the same
bytes*: the pre-converted Zarr copy is a mirror of cloudify's own ``/kerchunk`` store (metadata and
every chunk file, byte for byte), so both servers send identical payloads and differ only in
how they get them (cloudify: chunk index lookup + ``pread`` of a byte range inside the netCDF
file; nginx: ``open`` + ``sendfile`` of a whole chunk file).

One run:
 1. writes the benchmark dataset (make_data.py, shared with run.py) unless present;
 2. starts ``cloudify serve`` on it; mirrors ``/datasets/bench/kerchunk`` into
    WORKDIR/zarr-copy-<YEARS>y (once; reused while complete) and starts nginx on that directory
    (own prefix, pid and logs under WORKDIR/nginx, ``sendfile on``, keep-alive, no access log);
 3. verify.py: the nginx copy, cloudify /kerchunk and /zarr must equal the netCDF files;
 4. warm-up pass, then REPEATS passes per target in alternating order with wrk (default; a native
    client, since the Python client saturates before the servers do) or the Python client;
    medians, RSS of both servers, and the ratios cloudify / nginx.
Exit status as run.py: 0 ok; 1 a server failed or served wrong data; 2 set-up failed;
3 --enforce-bar and a ratio below 0.8; 130 interrupted.
"""
import argparse
import concurrent.futures
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run  # noqa: E402  (shared helpers: servers, RSS sampler, load clients)
from run import DATASET, VAR, Client, RssSampler, Server, SetupError, free_port, log, median  # noqa: E402

BAR = 0.8

NGINX_CONF = """
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
daemon off;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    keepalive_timeout 65;
    types {{ application/json zmetadata zarray zattrs zgroup json; }}
    default_type application/octet-stream;
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp;
    scgi_temp_path {prefix}/tmp;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def get(url, timeout=60):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def mirror_store(src, dest, python):
    """Mirror the Zarr v2 store at URL `src` into directory `dest` (metadata + every chunk)."""
    done_marker = os.path.join(dest, ".mirror-complete")
    if os.path.exists(done_marker):
        log(f"reusing the Zarr copy in {dest}")
        return
    if os.path.exists(dest):
        shutil.rmtree(dest)
    os.makedirs(dest)
    zmeta = json.loads(get(f"{src}/.zmetadata"))
    with open(os.path.join(dest, ".zmetadata"), "w") as f:
        json.dump(zmeta, f)
    keys = []
    for key, doc in zmeta["metadata"].items():
        path = os.path.join(dest, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(doc, f)
        if key.endswith("/.zarray"):
            var = key[: -len("/.zarray")]
            shape, chunks = doc["shape"], doc["chunks"]
            grid = [max(1, -(-s // c)) for s, c in zip(shape, chunks)] if shape else []
            idx = [[]]
            for n in grid:
                idx = [i + [j] for i in idx for j in range(n)]
            sep = doc.get("dimension_separator", ".")
            keys += [f"{var}/" + (sep.join(map(str, i)) if i else "0") for i in idx]
    log(f"mirroring {len(keys)} chunks from {src} into {dest}")

    def fetch(key):
        try:
            data = get(f"{src}/{key}")
        except urllib.error.HTTPError as e:
            if e.code == 404:  # never-written chunk: absent in the copy too (fill value)
                return 0
            raise
        with open(os.path.join(dest, key), "wb") as f:
            f.write(data)
        return len(data)

    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        total = sum(ex.map(fetch, keys))
    with open(done_marker, "w") as f:
        f.write(f"{len(keys)} chunks, {total} bytes from {src}\n")
    log(f"mirrored {total / 1e6:.0f} MB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--years", type=int, default=2)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--workdir", default="/var/tmp/cloudify-bench")
    ap.add_argument("--cloudify-bin", default=os.environ.get("CLOUDIFY_BIN") or run.DEFAULT_BIN)
    ap.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    ap.add_argument("--nginx-workers", default="auto",
                    help="nginx worker_processes (default auto = one per core, as packaged)")
    ap.add_argument("--port-range", default="19600-19699")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--client", choices=["python", "oha", "wrk"], default="wrk")
    ap.add_argument("--wrk-duration", type=int, default=10)
    ap.add_argument("--wrk-threads", type=int, default=2)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--start-timeout", type=float, default=300)
    ap.add_argument("--request-timeout", type=float, default=120)
    ap.add_argument("--fetch-timeout", type=float, default=1800)
    ap.add_argument("--rss-interval", type=float, default=0.1)
    ap.add_argument("--skip-verify", action="store_true")
    ap.add_argument("--enforce-bar", action="store_true")
    a = ap.parse_args()
    a.workdir = os.path.abspath(a.workdir)

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    servers, sampler, failures = [], None, []
    try:
        logdir = os.path.join(a.workdir, "logs")
        os.makedirs(logdir, exist_ok=True)
        os.makedirs(os.path.join(a.workdir, "results"), exist_ok=True)
        binary = os.path.abspath(a.cloudify_bin)
        if not os.access(binary, os.X_OK):
            raise SetupError(f"cloudify binary not found: {binary} (cargo build --release)")
        if not os.access(a.nginx, os.X_OK):
            raise SetupError(f"nginx not found: {a.nginx} (apt-get install nginx)")
        client = Client(a, a.workdir)
        pattern, files = run.ensure_data(a, a.python)

        listen_file = os.path.join(a.workdir, "passthrough.listen")
        if os.path.exists(listen_file):
            os.remove(listen_file)
        cl = Server("cloudify", [binary, "serve", DATASET, pattern, "--host", "127.0.0.1",
                                 "--port-range", a.port_range, "--listen-file", listen_file], logdir,
                    env=dict(os.environ, CLOUDIFY_CACHE_DIR=os.environ.get("CLOUDIFY_CACHE_DIR")
                             or os.path.join(a.workdir, "cloudify-cache")))
        cl.start()
        servers.append(cl)
        run.wait_ready(cl, ["/.zmetadata"], a.start_timeout, listen_file)
        kerchunk = f"{cl.base}/datasets/{DATASET}/kerchunk"

        copy = os.path.join(a.workdir, f"zarr-copy-{a.years}y")
        mirror_store(kerchunk, copy, a.python)

        prefix = os.path.join(a.workdir, "nginx")
        os.makedirs(os.path.join(prefix, "tmp"), exist_ok=True)
        port = free_port()
        conf = os.path.join(prefix, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(workers=a.nginx_workers, prefix=prefix, port=port, root=copy))
        ng = Server("nginx", [a.nginx, "-p", prefix, "-c", conf], logdir)
        ng.start()
        servers.append(ng)
        ng.base = f"http://127.0.0.1:{port}"
        ng.zarr = ng.base
        deadline = time.monotonic() + 30
        while run.http_status(f"{ng.base}/.zmetadata") != 200:
            if not ng.alive() or time.monotonic() > deadline:
                raise SetupError(f"nginx did not start: {ng.log_tail()}")
            time.sleep(0.1)
        sampler = RssSampler(servers, a.rss_interval)
        sampler.start()

        targets = [{"name": "cloudify-kerchunk", "zarr": kerchunk, "fmt": 2, "server": cl},
                   {"name": "cloudify-zarr-v2", "zarr": f"{cl.base}/datasets/{DATASET}/zarr", "fmt": 2, "server": cl},
                   {"name": "nginx-copy", "zarr": ng.zarr, "fmt": 2, "server": ng}]
        if not a.skip_verify:
            urls = [f"{t['zarr']}#v2" for t in targets]
            p = subprocess.run([a.python, os.path.join(HERE, "verify.py"), *urls, "--source", pattern])
            if p.returncode != 0:
                failures.append("verify.py found differences or could not open a target")
                return 1
        log("warm-up pass")
        for t in targets:
            client.fetch(t)
        results = {t["name"]: [] for t in targets}
        for r in range(a.repeats):
            order = targets if r % 2 == 0 else list(reversed(targets))
            for t in order:
                pids = run.proc_tree(t["server"].proc.pid)
                c0 = run.cpu_seconds(pids)
                res = client.fetch(t)
                if res.get("chunks"):
                    # server CPU per chunk: less sensitive to other load on the machine than chunks/s
                    res["srv_cpu_ms_per_chunk"] = round(1000 * (run.cpu_seconds(pids) - c0) / res["chunks"], 3)
                if res.get("errors"):
                    failures.append(f"{t['name']}: {res.get('error_kinds')} {res.get('stderr', '')}")
                results[t["name"]].append(res)
                log(f"{t['name']} pass {r + 1}: {res.get('chunks_per_s')} chunks/s, {res.get('MB_per_s')} MB/s")
        summary = {"client": a.client, "connections": a.connections, "years": a.years, "targets": {}}
        for t in targets:
            cps = [x["chunks_per_s"] for x in results[t["name"]] if x.get("chunks_per_s")]
            mbs = [x["MB_per_s"] for x in results[t["name"]] if x.get("MB_per_s")]
            cpu = [x["srv_cpu_ms_per_chunk"] for x in results[t["name"]] if x.get("srv_cpu_ms_per_chunk")]
            summary["targets"][t["name"]] = {"chunks_per_s": median(cps) if cps else None,
                                             "MB_per_s": median(mbs) if mbs else None,
                                             "srv_cpu_ms_per_chunk": round(statistics.median(cpu), 3) if cpu else None,
                                             "passes": cps}
        for s in servers:
            st = sampler.snapshot(s.name)
            summary.setdefault("rss_peak_MB", {})[s.name] = round(st["hwm_max_kb"] / 1024, 1)
        ref = summary["targets"]["nginx-copy"]["chunks_per_s"]
        ratios = {}
        for name in ("cloudify-kerchunk", "cloudify-zarr-v2"):
            mine = summary["targets"][name]["chunks_per_s"]
            ratios[name] = round(mine / ref, 2) if mine and ref else None
        summary["ratio_vs_nginx"] = ratios
        summary["bar"] = BAR
        print(f"{'target':20} {'chunks/s':>10} {'MB/s':>8} {'srv CPU ms/chunk':>17}  passes")
        for name, d in summary["targets"].items():
            print(f"{name:20} {d['chunks_per_s'] or 0:10.1f} {d['MB_per_s'] or 0:8.1f} "
                  f"{d['srv_cpu_ms_per_chunk'] or 0:17.3f}  {d['passes']}")
        print(f"RSS peak MB: {summary['rss_peak_MB']}")
        print(f"ratio vs nginx (bar >= {BAR}): {ratios}")
        print("JSON " + json.dumps(summary))
        out = os.path.join(a.workdir, "results", f"passthrough-{time.strftime('%Y%m%d-%H%M%S')}.json")
        with open(out, "w") as f:
            json.dump(summary, f, indent=1)
        if failures:
            for f_ in failures:
                log(f"FAILED: {f_}")
            return 1
        if a.enforce_bar and any(r is None or r < BAR for r in ratios.values()):
            return 3
        return 0
    except SetupError as e:
        log(f"set-up failed: {e}")
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if sampler:
            sampler.stop_event.set()
        for s in servers:
            s.stop()


if __name__ == "__main__":
    sys.exit(main())
