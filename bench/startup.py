#!/usr/bin/env python3
"""Start-up of a many-file aggregation: cloudify (cold and warm index cache) vs xarray.open_mfdataset.

    startup.py [--files 2000] [--workdir /var/tmp/cloudify-bench] [--cloudify-bin PATH] [--repeats 5]

Issue #3's bars: cold >= 10x faster than ``xarray.open_mfdataset``; warm (index cached) <= 0.1 s.
One run, same machine:
 1. writes N one-step files with ../shared/bench/make_manyfiles.py (if the shared script is there,
    else an equivalent writer here) into WORKDIR/many-<N> unless present;
 2. xarray: ``open_mfdataset(files, combine="by_coords", data_vars="minimal", coords="minimal",
    compat="override")`` timed in a fresh interpreter (import time excluded), REPEATS times;
 3. cloudify cold: ``cloudify serve`` with an empty cache directory, timed from process start to
    the listen file (the server is ready to answer); warm: the same with the cache it just wrote.
    Wall time and the server's CPU time (user+sys, less sensitive to other load) are reported.
Prints medians and ratios as a table and one ``JSON {...}`` line.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "shared", "bench", "make_manyfiles.py")
TCK = os.sysconf("SC_CLK_TCK")

XR_SNIPPET = r"""
import glob, sys, time
import xarray as xr
files = sorted(glob.glob(sys.argv[1]))
t0 = time.perf_counter()
ds = xr.open_mfdataset(files, combine="by_coords", data_vars="minimal", coords="minimal", compat="override")
print(time.perf_counter() - t0, len(files), dict(ds.sizes))
"""

WRITER = r"""
import sys, numpy as np, netCDF4
out, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with netCDF4.Dataset(f"{out}/pr_Amon_SYN_{i:05d}.nc", "w") as d:
        d.createDimension("time", None); d.createDimension("lat", 64); d.createDimension("lon", 128)
        t = d.createVariable("time", "f8", ("time",)); t.units = "days since 1850-01-01"; t.calendar = "noleap"
        t[:] = [i * 30.0]
        la = d.createVariable("lat", "f8", ("lat",)); la[:] = np.linspace(-89, 89, 64)
        lo = d.createVariable("lon", "f8", ("lon",)); lo[:] = np.linspace(0, 357.2, 128)
        v = d.createVariable("pr", "f4", ("time", "lat", "lon"), zlib=True, complevel=1)
        v[:] = np.random.default_rng(i).random((1, 64, 128), dtype=np.float32)
"""


def ensure_files(workdir, n, python):
    d = os.path.join(workdir, f"many-{n}")
    pattern = os.path.join(d, "*.nc")
    if os.path.isdir(d) and len(os.listdir(d)) >= n:
        return pattern
    os.makedirs(d, exist_ok=True)
    if os.path.exists(SHARED):
        cmd = [python, SHARED, d, str(n)]
    else:
        cmd = [python, "-c", WRITER, d, str(n)]
    print(f"writing {n} files into {d}", file=sys.stderr)
    subprocess.run(cmd, check=True)
    return pattern


def time_cloudify(binary, pattern, cache):
    lf = os.path.join(cache, "..", f"listen-{os.getpid()}")
    if os.path.exists(lf):
        os.remove(lf)
    t0 = time.monotonic()
    p = subprocess.Popen([binary, "serve", "many", pattern, "--port", "0", "--host", "127.0.0.1",
                          "--listen-file", lf, "--cache-dir", cache],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while not (os.path.exists(lf) and os.path.getsize(lf) > 0):
            if p.poll() is not None:
                raise SystemExit(f"cloudify exited with {p.returncode}: {p.stderr.read().decode()[-800:]}")
            time.sleep(0.002)
        wall = time.monotonic() - t0
        with open(f"/proc/{p.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / TCK
    finally:
        p.terminate()
        p.wait()
    return wall, cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--workdir", default="/var/tmp/cloudify-bench")
    ap.add_argument("--cloudify-bin", default=os.environ.get("CLOUDIFY_BIN")
                    or "/var/tmp/cloudify-target/release/cloudify")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--xarray-repeats", type=int, default=3)
    a = ap.parse_args()
    pattern = ensure_files(a.workdir, a.files, a.python)

    xr_times = []
    for _ in range(a.xarray_repeats):
        out = subprocess.run([a.python, "-c", XR_SNIPPET, pattern], capture_output=True, text=True, check=True)
        xr_times.append(float(out.stdout.split()[0]))
    cold, warm = [], []
    for _ in range(a.repeats):
        cache = tempfile.mkdtemp(prefix="cloudify-startup-", dir=a.workdir)
        try:
            cold.append(time_cloudify(a.cloudify_bin, pattern, cache))
            for _ in range(3):
                warm.append(time_cloudify(a.cloudify_bin, pattern, cache))
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    med = statistics.median
    res = {
        "files": a.files,
        "xarray_open_mfdataset_s": round(med(xr_times), 3),
        "cloudify_cold_s": round(med(w for w, _ in cold), 3),
        "cloudify_cold_cpu_s": round(med(c for _, c in cold), 3),
        "cloudify_warm_s": round(med(w for w, _ in warm), 3),
        "cloudify_warm_cpu_s": round(med(c for _, c in warm), 3),
        "cloudify_warm_min_s": round(min(w for w, _ in warm), 3),
    }
    res["cold_speedup_vs_xarray"] = round(res["xarray_open_mfdataset_s"] / res["cloudify_cold_s"], 1)
    res["bars"] = {"cold_speedup": 10, "warm_s": 0.1}
    for k, v in res.items():
        print(f"{k:32} {v}")
    print("JSON " + json.dumps(res))


if __name__ == "__main__":
    main()
