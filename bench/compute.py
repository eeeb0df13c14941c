#!/usr/bin/env python3
"""Compute pods: a reduction computed in-process vs on 1 and on 2 `cloudify worker` processes.

    compute.py [--years 1] [--repeats 5] [--reduction time.month/mean] [--cpus 0,1]

The reduction is the ad-hoc product ``tas.groupby("time.month").mean()`` of the bench dataset
(make_data.py: daily 0.5° tas, one stored chunk per day), fetched as
``/datasets/raw/groupby/tas/time.month/mean/zarr`` and loaded by xarray in a separate process
(timed from open to loaded result; the load alone — the chunk computed, sent and decoded, without
xarray's open, ~0.4 s of client-side Python the same in every set-up — is reported as well).
Three set-ups, every process pinned with taskset:

- ``inproc``: ``cloudify serve --threads 1`` on CPU A;
- ``1 worker``: ``cloudify worker --threads 1`` on CPU A, the server (``--compute URL``) also on
  CPU A: the same one core as ``inproc``, so the difference is the remote execution's overhead
  (task encoding, HTTP, partials sent back and merged);
- ``2 workers``: one worker on CPU A, one on CPU B, the server on CPU A: the speed-up over
  ``1 worker`` is what a second worker buys.

Servers and workers run with ``--decoded-cache-bytes 0`` and ``--compute-cache-bytes 0``, so every
repeat reads and decodes every source chunk again. Repeats alternate the order of the set-ups;
medians are kept. The three results must be bit-identical (the partials are cut and merged in
the same order whatever the number of workers) and equal xarray's within rtol 1e-5.

Bars (issue #15): overhead ``1 worker / inproc - 1`` ≤ 15 %; speed-up ``1 worker / 2 workers``
≥ 1.7×. On a machine with 2 cores shared with other work the second figure is bounded by what
the second core actually gives: the summary records ``os.getloadavg()`` before and after.

Prints a table and one JSON line (also WORKDIR/results/compute-<time>.json). Exit 0 ok; 1 a
result differed or a process failed; 2 set-up failed; 3 --enforce-bar and a bar was missed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run  # noqa: E402  (bench/run.py: the dataset, Server, log)
from run import Server, SetupError, free_port, log, run_cmd_json  # noqa: E402

BAR_OVERHEAD = 0.15
BAR_SPEEDUP = 1.7

FETCH = """
import sys, time, json
import numpy as np
import xarray as xr
t0 = time.monotonic()
ds = xr.open_dataset(sys.argv[2], engine="zarr", zarr_format=3, chunks=None)
t1 = time.monotonic()
out = ds["tas"].load()
t2 = time.monotonic()
np.save(sys.argv[1], out.values)
print(json.dumps({"seconds": t2 - t0, "load_seconds": t2 - t1}))
"""

REFERENCE = """
import sys, json
import numpy as np
import xarray as xr
ds = xr.open_mfdataset(sys.argv[3:], combine="by_coords", data_vars="minimal", coords="minimal",
                       compat="override", chunks={"time": 31})
coord, action = sys.argv[2].split("/")
out = getattr(ds["tas"].astype("f8").groupby(coord), action)().compute()
np.save(sys.argv[1], out.values)
print(json.dumps({"ok": True}))
"""


def start(a, name, args, cpus, ready_path):
    """``taskset -c CPUS cloudify ARGS`` on a free port; waits until READY_PATH answers 200."""
    logdir = os.path.join(a.workdir, "compute", "logs")
    os.makedirs(logdir, exist_ok=True)
    listen = os.path.join(a.workdir, "compute", f"{name}.listen")
    if os.path.exists(listen):
        os.remove(listen)
    cmd = ["taskset", "-c", cpus, a.cloudify_bin, *args, "--host", "127.0.0.1", "--port", str(free_port()),
           "--listen-file", listen, "--threads", "1", "--decoded-cache-bytes", "0"]
    env = {**os.environ, "CLOUDIFY_CACHE_DIR": os.path.join(a.workdir, "compute", "cache")}
    s = Server(name, cmd, logdir, env=env)
    s.start()
    deadline = time.monotonic() + a.start_timeout
    while time.monotonic() < deadline:
        if not s.alive():
            raise SetupError(f"{name} exited ({s.proc.returncode}); log {s.log_path}:\n{s.log_tail()}")
        try:
            with open(listen) as f:
                base = f.read().strip()
            if base:
                with urllib.request.urlopen(base + ready_path, timeout=10) as r:
                    if r.status == 200:
                        s.base = base
                        return s
        except OSError:
            pass
        time.sleep(0.05)
    s.stop()
    raise SetupError(f"{name} not ready within {a.start_timeout} s; log {s.log_path}:\n{s.log_tail()}")


def worker_tasks(w) -> float:
    text = urllib.request.urlopen(w.base + "/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("cloudify_worker_tasks_total{") and 'outcome="ok"' in line)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--years", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--reduction", default="time.month/mean", help="COORD/ACTION of the groupby product")
    ap.add_argument("--cpus", default="0,1", help="CPU A,CPU B for taskset")
    ap.add_argument("--workdir", default="/var/tmp/cloudify-bench")
    ap.add_argument("--cloudify-bin", default=os.environ.get("CLOUDIFY_BIN") or run.DEFAULT_BIN)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--start-timeout", type=float, default=300)
    ap.add_argument("--enforce-bar", action="store_true")
    a = ap.parse_args()
    a.workdir = os.path.abspath(a.workdir)
    a.cloudify_bin = os.path.abspath(a.cloudify_bin)
    cpu_a, cpu_b = a.cpus.split(",")
    failures = []
    procs = []
    load_before = os.getloadavg()
    try:
        pattern, files = run.ensure_data(a, a.python)
        work = os.path.join(a.workdir, "compute")
        os.makedirs(work, exist_ok=True)
        config = os.path.join(work, "cloudify.yaml")
        with open(config, "w") as f:
            f.write(f"datasets:\n  - name: raw\n    sources: [\"{pattern}\"]\n")
        serve = ["serve", "--config", config, "--compute-cache-bytes", "0"]
        ready = "/datasets/raw/zarr/.zmetadata"
        w1 = start(a, "worker-a", ["worker", "--config", config], cpu_a, "/readyz")
        procs.append(w1)
        w2 = start(a, "worker-b", ["worker", "--config", config], cpu_b, "/readyz")
        procs.append(w2)
        servers = {
            "inproc": start(a, "inproc", serve, cpu_a, ready),
            "1 worker": start(a, "one", serve + ["--compute", w1.base], cpu_a, ready),
            "2 workers": start(a, "two", serve + ["--compute", f"{w1.base},{w2.base}"], cpu_a, ready),
        }
        procs += servers.values()
        times = {k: [] for k in servers}
        loads = {k: [] for k in servers}
        outs = {k: os.path.join(work, f"{k.replace(' ', '_')}.npy") for k in servers}
        order = list(servers)
        tasks = {}
        for rep in range(a.repeats + 1):  # the first pass is a warm-up (page cache, index)
            for who in (order if rep % 2 == 0 else order[::-1]):
                url = f"{servers[who].base}/datasets/raw/groupby/tas/{a.reduction}/zarr"
                t_before = (worker_tasks(w1), worker_tasks(w2))
                out, rc, err = run_cmd_json([a.python, "-c", FETCH, outs[who], url], 3600, who)
                if out is None:
                    raise SetupError(f"{who}: fetch failed: {err[-600:]}")
                t_after = (worker_tasks(w1), worker_tasks(w2))
                tasks[who] = [round(x - y) for x, y in zip(t_after, t_before)]
                if rep > 0:
                    times[who].append(out["seconds"])
                    loads[who].append(out["load_seconds"])
                log(f"{who} pass {rep}: {out['seconds']:.3f} s, load {out['load_seconds']:.3f} s "
                    f"(worker tasks a/b {tasks[who]})")
        ref_out = os.path.join(work, "xarray.npy")
        out, rc, err = run_cmd_json([a.python, "-c", REFERENCE, ref_out, a.reduction, *files], 3600, "xarray")
        if out is None:
            raise SetupError(f"xarray reference failed: {err[-600:]}")
    except SetupError as e:
        log(f"set-up failed: {e}")
        for p in procs:
            p.stop()
        return 2
    finally:
        load_after = os.getloadavg()
        for p in procs:
            p.stop()

    import numpy as np

    got = {k: np.load(v) for k, v in outs.items()}
    ref = np.load(ref_out)
    for k, v in got.items():
        if not np.array_equal(v, got["inproc"], equal_nan=True):
            failures.append(f"{k}: differs from the in-process result")
        if not np.allclose(v, ref, rtol=1e-5, atol=0, equal_nan=True):
            failures.append(f"{k}: differs from xarray beyond rtol 1e-5")
    if tasks["inproc"] != [0, 0]:
        failures.append(f"the in-process server sent tasks to workers: {tasks['inproc']}")
    if tasks["1 worker"][0] == 0 or tasks["1 worker"][1] != 0:
        failures.append(f"1 worker: tasks a/b {tasks['1 worker']}")
    if min(tasks["2 workers"]) == 0:
        failures.append(f"2 workers: tasks a/b {tasks['2 workers']} (not spread)")
    med = {k: statistics.median(v) for k, v in times.items()}
    overhead = med["1 worker"] / med["inproc"] - 1
    speedup = med["1 worker"] / med["2 workers"]
    # the same without xarray's open (client-side Python, ~0.4 s, the same in every set-up)
    med_load = {k: statistics.median(v) for k, v in loads.items()}
    overhead_load = med_load["1 worker"] / med_load["inproc"] - 1
    speedup_load = med_load["1 worker"] / med_load["2 workers"]
    res = {
        "reduction": f"tas.groupby('{a.reduction.split('/')[0]}').{a.reduction.split('/')[1]}()",
        "years": a.years, "files": len(files), "repeats": a.repeats, "cpus": a.cpus,
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "all_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "tasks_last_pass": tasks,
        "overhead_1_worker": round(overhead, 3), "bar_overhead_met": overhead <= BAR_OVERHEAD,
        "speedup_2_workers": round(speedup, 2), "bar_speedup_met": speedup >= BAR_SPEEDUP,
        "load_median_s": {k: round(v, 3) for k, v in med_load.items()},
        "load_overhead_1_worker": round(overhead_load, 3), "load_speedup_2_workers": round(speedup_load, 2),
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in load_after],
        "nproc": os.cpu_count(), "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "failures": failures,
    }
    for k in times:
        print(f"{k:<10} {med[k]:8.3f} s  (passes {', '.join(f'{x:.3f}' for x in times[k])}); "
              f"load alone {med_load[k]:.3f} s", file=sys.stderr)
    print(f"overhead of 1 worker vs in-process: {overhead * 100:+.1f} % (bar <= {BAR_OVERHEAD * 100:.0f} %); "
          f"speed-up 2 vs 1 worker: {speedup:.2f}x (bar >= {BAR_SPEEDUP}x); load {load_before} -> {load_after}",
          file=sys.stderr)
    print(f"without xarray's open: overhead {overhead_load * 100:+.1f} %, speed-up {speedup_load:.2f}x",
          file=sys.stderr)
    os.makedirs(os.path.join(a.workdir, "results"), exist_ok=True)
    with open(os.path.join(a.workdir, "results", f"compute-{time.strftime('%Y%m%d-%H%M%S')}.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res), flush=True)
    if failures:
        for m in failures:
            log(f"FAILED: {m}")
        return 1
    if a.enforce_bar and not (res["bar_overhead_met"] and res["bar_speedup_met"]):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
