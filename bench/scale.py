#!/usr/bin/env python3
"""Scale of one server: 1 dataset vs 1,000 datasets in one config, one of them broken.

    scale.py [--datasets 1000] [--years 2] [--connections 64] [--duration 30] [--seed 1]
             [--cloudify-bin PATH] [--workdir /var/tmp/cloudify-bench]

One run:
 1. writes the benchmark dataset (make_data.py, YEARS yearly files of daily tas) unless present and
    makes WORKDIR/scale/dNNNN/ for every dataset, holding hard links to those files (every dataset
    has its own paths, so it is indexed and cached on its own; the page cache is shared). Dataset
    number DATASETS/2 is broken: its directory holds a file of the same name that is not netCDF;
 2. for a config with 1 dataset (d0000) and then one with all DATASETS: starts cloudify with an
    empty index cache (cold start-up), stops it, starts it again on that cache (warm start-up);
    start-up is the time from exec to the first dataset answering ``.zmetadata`` (with
    ``--open-wait 86400`` the server opens every dataset before it listens, as it did before
    slow datasets were opened in the background, so the figures stay comparable); RSS (VmRSS of the process tree, /proc) 3 s after the start;
 3. on the warm server: /status must list every dataset, the broken one alone as failed with a
    reason naming its file, and its chunks must answer 5xx naming the file while the others serve;
 4. the same load as load.py (CONNECTIONS keep-alive connections, DURATION s, chunk URLs drawn at
    random with a fixed seed from /zarr v2, v3 and /kerchunk) over all good datasets (over d0000 for
    the 1-dataset config); latency percentiles from every request; RSS sampled throughout;
 5. 300 random chunks the load received are fetched again, decoded and compared with the netCDF
    files (netCDF4), and their CRC compared with what the load got.

Expectations (exit 1 if one fails): 0 errors under load, every verified chunk right, the broken
dataset reported alone, RSS under load flat (late within 10 % of early); and against 1 dataset:
 * request latency unchanged: p50 and p99 at most --max-latency-ratio (1.5x) theirs + 5 ms;
 * RSS: what serving adds above the idle server at most 1.5x + 10 MB what it adds with 1 dataset;
   the idle server's cost per extra dataset (its index and metadata are held in memory) at most
   --max-rss-per-dataset-kb (512 kB);
 * start-up: warm (index cached) at most --max-warm-ms-per-dataset (5 ms) per dataset, cold at
   most --max-cold-ms-per-file (50 ms) per file.
These bars are this script's reading of "unchanged": the per-dataset costs are figures to watch,
the bars catch costs that grow with the number of datasets beyond linear or per-request memory
that depends on it. Exit 2: could not set up. Prints one JSON summary line on stdout.
"""
import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reliability as R  # noqa: E402
import run  # noqa: E402


def make_tree(a, files):
    """WORKDIR/scale/dNNNN/ with hard links to FILES (the broken one: a non-netCDF file)."""
    root = os.path.join(a.workdir, "scale")
    os.makedirs(root, exist_ok=True)
    broken = a.datasets // 2 if a.datasets > 1 else None
    for i in range(a.datasets):
        d = os.path.join(root, f"d{i:04d}")
        os.makedirs(d, exist_ok=True)
        for f in files:
            p = os.path.join(d, os.path.basename(f))
            if i == broken:
                if os.path.exists(p) and os.path.samefile(p, f):
                    os.remove(p)
                if not os.path.exists(p):
                    with open(p, "w") as fh:
                        fh.write("this is not a netCDF file\n" * 4096)
            elif not (os.path.exists(p) and os.path.samefile(p, f)):
                if os.path.exists(p):
                    os.remove(p)
                try:
                    os.link(f, p)
                except OSError:
                    os.symlink(f, p)
    return root, broken


def write_config(path, root, n):
    with open(path, "w") as f:
        f.write("datasets:\n")
        for i in range(n):
            f.write(f"  - name: d{i:04d}\n    sources: [\"{root}/d{i:04d}/*.nc\"]\n")


def measure(a, label, n, root, broken, truth):
    """Cold and warm start of a config with N datasets, then load on the warm server."""
    import requests
    wd = os.path.join(a.workdir, "scale-runs")
    os.makedirs(wd, exist_ok=True)
    cfg = os.path.join(wd, f"{label}.yaml")
    write_config(cfg, root, n)
    args = ["--config", cfg, "--open-wait", "86400"]
    cache = os.path.join(wd, f"cache-{label}")
    shutil.rmtree(cache, ignore_errors=True)
    res, failures = {"datasets": n}, []
    s, cold = R.start_cloudify(a.cloudify_bin, args, wd, name=f"{label}-cold", cache_dir=cache,
                               dataset="d0000", timeout=a.start_timeout)
    res["startup_cold_s"] = cold
    time.sleep(3)  # background cache writes
    res["rss_cold_idle_MB"] = round(sum(run.status_kb(p).get("VmRSS", 0) for p in run.proc_tree(s.proc.pid)) / 1024, 1)
    s.stop()
    s, warm = R.start_cloudify(a.cloudify_bin, args, wd, name=f"{label}-warm", cache_dir=cache,
                               dataset="d0000", timeout=a.start_timeout)
    res["startup_warm_s"] = warm
    sampler = R.RssTimeline([s], 0.5)
    try:
        time.sleep(3)
        res["rss_idle_MB"] = sampler.rss_now(s.name)
        st = requests.get(f"{s.base}/status", timeout=60).json()["datasets"]
        states = {d["name"]: d for d in st}
        failed = [d for d in st if d.get("state") != "ready"]
        res["status"] = {"listed": len(st), "ready": len(st) - len(failed),
                         "failed": [{k: d.get(k) for k in ("name", "state", "reason", "error") if d.get(k)}
                                    for d in failed][:3]}
        if len(st) != n:
            failures.append(f"/status lists {len(st)} datasets, not {n}")
        good = [f"d{i:04d}" for i in range(n) if i != broken]
        if broken is not None and n > broken:
            bname = f"d{broken:04d}"
            b = states.get(bname)
            fname = os.path.basename(truth.files[0])
            if not b or b.get("state") != "failed":
                failures.append(f"/status: the broken dataset {bname} is {b and b.get('state')}, not failed")
            elif fname not in json.dumps(b):
                failures.append(f"/status: the reason for {bname} does not name {fname}: {json.dumps(b)[:300]}")
            if [d["name"] for d in failed] != [bname]:
                failures.append(f"/status: failed datasets are {[d['name'] for d in failed][:10]}, "
                                f"expected only {bname}")
            r = requests.get(f"{s.base}/datasets/{bname}/zarr/{R.VAR}/0.0.0", timeout=60)
            res["broken_chunk_answer"] = f"{r.status_code} {r.text[:200]}"
            if not (500 <= r.status_code < 600 and fname in r.text):
                failures.append(f"a chunk of the broken dataset answered {r.status_code}, not 5xx naming {fname}: "
                                f"{r.text[:200]}")
        elif failed:
            failures.append(f"/status: datasets failed: {res['status']['failed']}")
        # layouts: read from d0000 and a few others, which must agree; then the same keys everywhere
        lays0 = R.layouts(R.dataset_url(s, "d0000"))
        for name in good[1:4]:
            other = R.layouts(R.dataset_url(s, name))
            if any(other[f].meta != lays0[f].meta for f in lays0):
                failures.append(f"{name} serves other metadata than d0000")
        all_lays = []
        for name in good:
            for f, lay in lays0.items():
                all_lays.append(lay.moved(lay.root.replace("/datasets/d0000/", f"/datasets/{name}/")))
        idx = lays0["v2"].indices()
        import random
        rng = random.Random(a.seed)
        urls = [rng.choice(all_lays).url(rng.choice(idx)) for _ in range(200000)] if n > 1 else \
            [lay.url(i) for lay in all_lays for i in idx]
        R.log(f"{label}: {n} datasets, cold {cold} s, warm {warm} s, RSS idle {res['rss_idle_MB']} MB; "
              f"load {a.connections} connections x {a.duration:.0f} s")
        sampler.start()
        t_load = time.monotonic() - sampler.t0
        out = asyncio.run(R.hammer(urls, a.connections, a.duration, a.seed))
        t_end = time.monotonic() - sampler.t0
        res["load"] = out.summary()
        D = t_end - t_load
        early = sampler.window(s.name, t_load + 0.1 * D, t_load + 0.2 * D)
        late = sampler.window(s.name, t_load + 0.9 * D, t_end + 1)
        all_ = sampler.window(s.name, t_load, t_end + 1)
        res["rss_load"] = {"early_MB": round(statistics.median(early), 1) if early else None,
                           "late_MB": round(statistics.median(late), 1) if late else None,
                           "peak_MB": round(max(all_), 1) if all_ else None}
        if early and late:
            res["rss_load"]["growth"] = round(statistics.median(late) / statistics.median(early) - 1, 3)
            if res["rss_load"]["growth"] > 0.10:
                failures.append(f"RSS grew {res['rss_load']['growth']:.1%} under load")
        if out.errors:
            failures.append(f"{sum(out.errors.values())} errors under load {dict(out.errors)}: {out.first_errors[:2]}")
        n_ver, problems = R.verify_seen(out.crc, all_lays, truth, limit=a.verify)
        res["verify"] = {"chunks": n_ver, "problems": len(problems), "first": problems[:3]}
        if problems:
            failures.append(f"{len(problems)} chunks differ from the netCDF files: {problems[:2]}")
        res["datasets_touched"] = len({u.split("/datasets/")[1].split("/")[0] for u in out.crc})
        R.log(f"{label}: {res['load']['chunks_per_s']} chunks/s, p50 {res['load']['p50_ms']} ms, "
              f"p99 {res['load']['p99_ms']} ms, {res['load']['errors']} errors, {res['datasets_touched']} datasets "
              f"touched; RSS {res['rss_load']}")
    finally:
        sampler.stop_event.set()
        alive = s.alive()
        s.stop()
        lp = s.log_problems()
        res["server_log"] = {k: lp[k] for k in ("panic", "fatal", "error")}
        if lp["panic"] or lp["fatal"]:
            failures.append(f"server log: {lp['first'][:3]}")
        if not alive:
            failures.append(f"the server exited: {s.crash_evidence()}")
    return res, failures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", type=int, default=1000)
    ap.add_argument("--years", type=int, default=2, help="yearly files per dataset")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--duration", type=float, default=30, help="seconds of load per configuration")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--verify", type=int, default=300, help="chunks checked against the netCDF files afterwards")
    ap.add_argument("--workdir", default="/var/tmp/cloudify-bench")
    ap.add_argument("--cloudify-bin", default=os.environ.get("CLOUDIFY_BIN") or R.DEFAULT_BIN)
    ap.add_argument("--python", default=sys.executable, help="interpreter for make_data.py")
    ap.add_argument("--start-timeout", type=float, default=1800)
    ap.add_argument("--max-latency-ratio", type=float, default=1.5)
    ap.add_argument("--max-warm-ms-per-dataset", type=float, default=5.0)
    ap.add_argument("--max-cold-ms-per-file", type=float, default=50.0)
    ap.add_argument("--max-rss-per-dataset-kb", type=float, default=512.0)
    a = ap.parse_args(argv)
    a.workdir = os.path.abspath(a.workdir)
    summary = {"test": "scale", "when": dt.datetime.now().isoformat(timespec="seconds"),
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_start": run.loadavg()},
               "cloudify": {"bin": a.cloudify_bin, "version": run.cloudify_version(a.cloudify_bin)},
               "connections": a.connections, "duration_s": a.duration, "client": "python aiohttp, one process"}
    failures = []
    try:
        _, files = run.ensure_data(a, a.python)
        root, broken = make_tree(a, files)
    except run.SetupError as e:
        summary.update(ok=False, failures=[f"setup: {e}"])
        R.emit(summary)
        return 2
    summary["dataset"] = {"files_per_dataset": len(files), "broken": f"d{broken:04d}" if broken is not None else None}
    truth = R.Truth(files)
    try:
        one, f1 = measure(a, "one", 1, root, broken, truth)
        many, fn = measure(a, f"many-{a.datasets}", a.datasets, root, broken, truth)
    except run.SetupError as e:
        summary.update(ok=False, failures=[f"setup: {e}"])
        R.emit(summary)
        return 2
    finally:
        truth.close()
    summary["one"], summary["many"] = one, many
    failures += [f"1 dataset: {f}" for f in f1] + [f"{a.datasets} datasets: {f}" for f in fn]
    cmp = {}
    for p in ("p50_ms", "p99_ms"):
        x1, xn = one["load"][p], many["load"][p]
        cmp[p] = round(xn / x1, 2) if x1 else None
        if x1 and xn > a.max_latency_ratio * x1 + 5:
            failures.append(f"{p} {xn} with {a.datasets} datasets vs {x1} with 1 (allowed {a.max_latency_ratio}x + 5 ms)")
    cmp["chunks_per_s"] = round(many["load"]["chunks_per_s"] / one["load"]["chunks_per_s"], 2) \
        if one["load"]["chunks_per_s"] else None
    extra = max(1, a.datasets - 1)
    cmp["rss_idle_kB_per_extra_dataset"] = round((many["rss_idle_MB"] - one["rss_idle_MB"]) * 1024 / extra, 1)
    if cmp["rss_idle_kB_per_extra_dataset"] > a.max_rss_per_dataset_kb:
        failures.append(f"idle RSS {many['rss_idle_MB']} MB with {a.datasets} datasets vs {one['rss_idle_MB']} MB "
                        f"with 1: {cmp['rss_idle_kB_per_extra_dataset']} kB per dataset "
                        f"(allowed {a.max_rss_per_dataset_kb:g})")
    # what serving costs on top of the idle server must not depend on the number of datasets
    load_1 = one["rss_load"]["peak_MB"] - one["rss_idle_MB"]
    load_n = many["rss_load"]["peak_MB"] - many["rss_idle_MB"]
    cmp["rss_load_above_idle_MB"] = {"one": round(load_1, 1), "many": round(load_n, 1)}
    if load_n > a.max_latency_ratio * max(load_1, 0) + 10:
        failures.append(f"serving {a.datasets} datasets takes {load_n:.1f} MB above idle vs {load_1:.1f} MB for 1 "
                        f"(allowed {a.max_latency_ratio}x + 10 MB)")
    cmp["startup_warm_ms_per_dataset"] = round(1000 * many["startup_warm_s"] / a.datasets, 2)
    cmp["startup_cold_ms_per_file"] = round(1000 * many["startup_cold_s"] / (a.datasets * len(files)), 2)
    if cmp["startup_warm_ms_per_dataset"] > a.max_warm_ms_per_dataset:
        failures.append(f"warm start-up with {a.datasets} datasets took {many['startup_warm_s']} s: "
                        f"{cmp['startup_warm_ms_per_dataset']} ms per dataset (allowed {a.max_warm_ms_per_dataset:g})")
    if cmp["startup_cold_ms_per_file"] > a.max_cold_ms_per_file:
        failures.append(f"cold start-up with {a.datasets} datasets took {many['startup_cold_s']} s: "
                        f"{cmp['startup_cold_ms_per_file']} ms per file (allowed {a.max_cold_ms_per_file:g})")
    summary["bars"] = {"latency": f"p50 and p99 <= {a.max_latency_ratio}x those with 1 dataset + 5 ms",
                       "rss_idle_kB_per_extra_dataset": a.max_rss_per_dataset_kb,
                       "rss_load_above_idle": f"<= {a.max_latency_ratio}x that with 1 dataset + 10 MB",
                       "startup_warm_ms_per_dataset": a.max_warm_ms_per_dataset,
                       "startup_cold_ms_per_file": a.max_cold_ms_per_file}
    summary["many_vs_one"] = cmp
    summary["machine"]["loadavg_end"] = run.loadavg()
    summary["ok"] = not failures
    summary["failures"] = failures
    for f in failures:
        R.log(f"FAILED: {f}")
    R.emit(summary)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
