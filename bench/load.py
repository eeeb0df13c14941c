#!/usr/bin/env python3
"""Load and soak: CONNECTIONS keep-alive clients reading random chunks for DURATION seconds.

    load.py [--connections 64] [--duration 60] [--years 2] [--seed 1] [--formats v2,v3,kerchunk]
            [--cloudify-bin PATH] [--workdir /var/tmp/cloudify-bench] [--verify all|none|N]
    load.py --duration 600                      # the 10-minute soak

One run:
 1. writes the benchmark dataset (make_data.py, YEARS yearly files of daily tas) unless present;
 2. starts ``cloudify serve bench 'WORKDIR/data-<YEARS>y/tas_day_*.nc'`` with its index cache in
    WORKDIR/cache-load;
 3. CONNECTIONS workers on one aiohttp keep-alive pool request chunk URLs of ``tas`` drawn at random
    (random.Random(SEED*1000 + worker)) from the three routes: /zarr as Zarr v2 (``tas/T.0.0``), the same
    as Zarr v3 (``tas/c/T/0/0``) and /kerchunk (stored bytes), for DURATION seconds; latency
    percentiles are computed from every request; a 200 body that differs from an earlier 200 of the
    same URL counts as an error;
 4. samples the server's RSS (VmRSS of its process tree, /proc) every --rss-interval seconds:
    "early" is the median over the second tenth of the run, "late" over the last tenth; beside
    them: RssAnon/RssFile, threads, the caches' bytes (``*_cache_bytes`` of /metrics, polled),
    the growth net of the caches, the THP state; the timeline goes to WORKDIR/load-rss-timeline.json;
 5. afterwards fetches every chunk the load was served once more, decodes it (numcodecs, from the
    codecs the server declared) and compares it with the netCDF files (netCDF4), and checks that its
    CRC is the one the load received (--verify N: N random chunks; none: skip);
 6. stops the server with SIGTERM and scans its log for panics.

Expectations (exit 1 if one fails): 0 errors (any non-200 answer, failed request or inconsistent
body), late RSS within +--max-rss-growth (10 %) of early, every verified chunk equal to the netCDF
values, the server alive until the end and no panic in its log. Exit 2: could not set up.
Prints a short table on stderr and one JSON summary line on stdout.
"""
import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reliability as R  # noqa: E402
import run  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--duration", type=float, default=60, help="seconds of load (600: the soak)")
    ap.add_argument("--years", type=int, default=2, help="yearly files in the dataset (365 chunks of ~0.6 MB each)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--formats", default="v2,v3,kerchunk", help="routes to draw chunks from")
    ap.add_argument("--workdir", default="/var/tmp/cloudify-bench")
    ap.add_argument("--cloudify-bin", default=os.environ.get("CLOUDIFY_BIN") or R.DEFAULT_BIN)
    ap.add_argument("--python", default=sys.executable, help="interpreter for make_data.py")
    ap.add_argument("--rss-interval", type=float, default=0.5)
    ap.add_argument("--max-rss-growth", type=float, default=0.10, help="allowed late/early - 1")
    ap.add_argument("--verify", default="all", help="all | none | N (random chunks to check afterwards)")
    ap.add_argument("--request-timeout", type=float, default=120)
    a = ap.parse_args(argv)
    a.workdir = os.path.abspath(a.workdir)
    a.formats = [f.strip() for f in a.formats.split(",") if f.strip()]
    if not a.formats or any(f not in R.FORMATS for f in a.formats):
        ap.error(f"--formats: choose from {','.join(R.FORMATS)}")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    failures, server, sampler = [], None, None
    summary = {"test": "load", "when": dt.datetime.now().isoformat(timespec="seconds"),
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "loadavg_start": run.loadavg()},
               "connections": a.connections, "duration_s": a.duration, "seed": a.seed, "formats": a.formats,
               "client": "python aiohttp, one process"}
    try:
        pattern, files = run.ensure_data(a, a.python)
        summary["dataset"] = {"files": len(files), "MB": round(sum(map(os.path.getsize, files)) / 1e6, 1)}
        summary["cloudify"] = {"bin": a.cloudify_bin, "version": run.cloudify_version(a.cloudify_bin)}
        server, startup = R.start_cloudify(a.cloudify_bin, ["bench", pattern], a.workdir, name="load",
                                           cache_dir=os.path.join(a.workdir, "cache-load"))
        R.log(f"cloudify ready after {startup} s at {server.base}")
        lays = R.layouts(R.dataset_url(server, "bench"), a.formats)
        urls = [lay.url(i) for lay in lays.values() for i in lay.indices()]
        summary["chunk_urls"] = len(urls)
        sampler = R.RssTimeline([server], a.rss_interval)
        summary["rss_idle_MB"] = sampler.rss_now("load")
        sampler.start()
        metrics = R.MetricsPoller(server.base, sampler.t0)
        metrics.start()
        R.log(f"{a.connections} connections x {a.duration:.0f} s over {len(urls)} chunk URLs ({','.join(a.formats)})")
        c0 = os.times()
        s0, m0 = run.cpu_seconds(run.proc_tree(server.proc.pid)), run.machine_busy_seconds()
        t_load = time.monotonic() - sampler.t0
        out = asyncio.run(R.hammer(urls, a.connections, a.duration, a.seed, timeout=a.request_timeout))
        t_end = time.monotonic() - sampler.t0
        c1 = os.times()
        s1, m1 = run.cpu_seconds(run.proc_tree(server.proc.pid)), run.machine_busy_seconds()
        res = out.summary()
        res["client_cpu_s"] = round(c1.user + c1.system - c0.user - c0.system, 1)
        res["server_cpu_s"] = round(s1 - s0, 1)
        res["server_cpu_ms_per_chunk"] = round(1000 * (s1 - s0) / res["ok"], 2) if res["ok"] else None
        # the machine's CPU used meanwhile by anything but the server and this client
        res["other_cpu_share"] = round(max(0.0, (m1 - m0) - (s1 - s0) - res["client_cpu_s"])
                                       / ((t_end - t_load) * os.cpu_count()), 2)
        summary["load"] = res
        D = t_end - t_load
        early = sampler.window("load", t_load + 0.1 * D, t_load + 0.2 * D)
        late = sampler.window("load", t_load + 0.9 * D, t_end + 1)
        all_ = sampler.window("load", t_load, t_end + 1)
        rss = {"idle_MB": summary.pop("rss_idle_MB"),
               "early_MB": round(statistics.median(early), 1) if early else None,
               "late_MB": round(statistics.median(late), 1) if late else None,
               "peak_MB": round(max(all_), 1) if all_ else None,
               "samples": len(all_)}
        rss["growth"] = round(rss["late_MB"] / rss["early_MB"] - 1, 3) if early and late else None
        deciles = []
        for k in range(10):
            w = sampler.window("load", t_load + k * D / 10, t_load + (k + 1) * D / 10)
            deciles.append(round(statistics.median(w), 1) if w else None)
        rss["by_tenth_MB"] = deciles
        med = lambda xs: round(statistics.median(xs), 1) if xs else None  # noqa: E731
        for field in ("anon", "file", "threads"):
            rss[f"{field}_early_late"] = [med(sampler.window("load", t_load + 0.1 * D, t_load + 0.2 * D, field)),
                                          med(sampler.window("load", t_load + 0.9 * D, t_end + 1, field))]
        rss["caches_early_late_MB"] = [metrics.total_mb(t_load + 0.1 * D, t_load + 0.2 * D),
                                       metrics.total_mb(t_load + 0.9 * D, t_end + 1)]
        ce, cl = rss["caches_early_late_MB"]
        # the rule applies to RSS as measured; this says how much of a rise the caches' budgets
        # (filled on purpose, bounded) explain
        rss["growth_beyond_caches"] = (round((rss["late_MB"] - cl) / (rss["early_MB"] - ce) - 1, 3)
                                       if early and late and ce is not None and cl is not None else None)
        rss["thp"] = R.thp_state(server.proc.pid)
        summary["rss"] = rss
        sampler.stop_event.set()
        metrics.stop_event.set()
        timeline = os.path.join(a.workdir, "load-rss-timeline.json")
        with open(timeline, "w") as f:
            json.dump({"t_load": t_load, "t_end": t_end, "rss": sampler.samples["load"],
                       "anon_file_threads": sampler.detail["load"], "caches": metrics.samples}, f)
        summary["rss_timeline"] = timeline
        R.log(f"load: {res['ok']} chunks ok, {res['errors']} errors, {res['chunks_per_s']} chunks/s, "
              f"p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms; RSS idle {rss['idle_MB']} early {rss['early_MB']} "
              f"late {rss['late_MB']} peak {rss['peak_MB']} MB")
        if res["errors"]:
            failures.append(f"{res['errors']} errors under load {res['error_kinds']}: {res['first_errors'][:2]}")
        if not res["ok"]:
            failures.append("no chunk was served")
        if rss["growth"] is None:
            failures.append("too few RSS samples for early/late (longer --duration)")
        elif rss["growth"] > a.max_rss_growth:
            failures.append(f"RSS grew {rss['growth']:.1%} from early {rss['early_MB']} MB to late "
                            f"{rss['late_MB']} MB (allowed {a.max_rss_growth:.0%})")
        if not server.alive():
            failures.append(f"cloudify exited with {server.proc.returncode} during the load: {server.crash_evidence()}")
        elif a.verify != "none":
            limit = 0 if a.verify == "all" else int(a.verify)
            truth = R.Truth(files)
            t0 = time.monotonic()
            n, problems = R.verify_seen(out.crc, lays, truth, limit)
            truth.close()
            summary["verify"] = {"chunks": n, "problems": len(problems), "first": problems[:5],
                                 "seconds": round(time.monotonic() - t0, 1)}
            R.log(f"verified {n} chunks against the netCDF files: {len(problems)} problems")
            if problems:
                failures.append(f"{len(problems)} chunks differ from the netCDF files: {problems[:3]}")
    except run.SetupError as e:
        R.log(f"setup failed: {e}")
        summary.update(ok=False, failures=[f"setup: {e}"])
        R.emit(summary)
        return 2
    finally:
        if sampler is not None:
            sampler.stop_event.set()
        if server is not None:
            was_alive = server.alive()
            server.stop()
            lp = server.log_problems()
            summary["server_log"] = {k: lp[k] for k in ("panic", "fatal", "error")} | {"first": lp["first"][:3]}
            summary["server_exit"] = server.proc.returncode
            if lp["panic"] or lp["fatal"]:
                failures.append(f"server log: {lp['first'][:3]}")
            if was_alive and server.proc.returncode not in (0, None):
                failures.append(f"cloudify exited with {server.proc.returncode} on SIGTERM")
    summary["machine"]["loadavg_end"] = run.loadavg()
    summary["ok"] = not failures
    summary["failures"] = failures
    for f in failures:
        R.log(f"FAILED: {f}")
    R.emit(summary)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
