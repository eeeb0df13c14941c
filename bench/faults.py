#!/usr/bin/env python3
"""Faults while serving: files truncated, replaced or deleted, the index cache gone, SIGTERM under load.

    faults.py [--only truncated,replaced-edited,replaced-rewritten,vanished,cache,sigterm]
              [--years 2] [--cloudify-bin PATH] [--workdir /var/tmp/cloudify-bench]

Every scenario starts its own ``cloudify serve`` on copies of the benchmark files (make_data.py,
YEARS yearly files; A is the first, B the second) and checks the answers by *value*: each chunk
body is decoded (numcodecs, from the codecs the server declared) and compared with the netCDF
files (netCDF4) - the original ones, or the replacement where a file was replaced. Chunks are
asked for on all three routes: /zarr as Zarr v2, as Zarr v3, and /kerchunk; the steps checked are
the first, middle and last of each file plus 5 seeded random ones.

  truncated           A is cut to half its size while serving. Chunks stored past the cut must be
                      5xx naming A; chunks before it 200 with the right values or 5xx naming A;
                      B's chunks 200 and right. Never 404, never wrong bytes.
  replaced-edited     A is replaced (rename over it) by a copy in which 8 steps were changed by
                      +0.5 K in place (same size, same layout elsewhere).
  replaced-rewritten  A is replaced by a rewrite with the same values except 8 steps +0.5 K,
                      its steps written in reverse order (every chunk moves).
                      For both: each chunk of A is 5xx naming A, or 200 with the *new* values -
                      and, where the values changed, with a changed ETag (and no 304 to
                      If-None-Match with the old one). Old values (stale) or other bytes fail;
                      B's chunks 200 and right.
  vanished            two datasets; the files of "bench" are deleted after start. Its chunks must
                      be 5xx naming the file (never 404, never data); dataset "other" serves right.
  cache               (a) --cache-dir under a regular file (unwritable, even for root): the server
                      serves right and logs a WARN about the cache; (b) the cache directory deleted
                      while serving: still serves right; restarted with it deleted: serves right.
  sigterm             64 connections of random chunk reads; SIGTERM to the server after 3 s. Every
                      request whose headers were sent more than --race-ms (10 ms) before the signal
                      must complete with 200 and bytes that are then verified against the netCDF
                      values; the server must exit with status 0 within --drain-timeout. Requests
                      sent later may be refused (a request written to an idle keep-alive connection
                      just as the server closes it is a race the client must retry, RFC 9112 9.3.1)
                      but must never carry wrong bytes.
                      4 slow readers (16 KiB receive buffer, 300 kB/s) start 0.5 s before the signal:
                      their chunks must arrive whole and right.

Exit 1 if any expectation fails (the summary says which and why), 2 if it could not set up.
Prints one line per check group on stderr and one JSON summary line on stdout.
"""
import argparse
import asyncio
import datetime as dt
import os
import random
import shutil
import signal
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reliability as R  # noqa: E402
import run  # noqa: E402

SCENARIOS = ("truncated", "replaced-edited", "replaced-rewritten", "vanished", "cache", "sigterm")
BUMP = np.float32(0.5)


# ----------------------------------------------------------------------------- helpers

class Scenario:
    """Answers counted by check group and verdict; failures grouped by (group, route, verdict) with
    their count and a first example."""

    def __init__(self, name):
        self.name, self.failures, self.answers, self.notes = name, [], {}, {}
        self.grouped = {}

    def count(self, group, verdict):
        self.answers.setdefault(group, {})
        self.answers[group][verdict] = self.answers[group].get(verdict, 0) + 1

    def fail(self, text, key=None):
        if key is None:
            if text not in self.failures:
                self.failures.append(text)
            return
        if key not in self.grouped:
            self.grouped[key] = [0, text]
            self.failures.append(key)
        self.grouped[key][0] += 1

    def result(self):
        out = []
        for f in self.failures:
            if f in self.grouped:
                n, example = self.grouped[f]
                out.append(f"{f[0]} [{f[1]}]: {f[2]} x{n}, e.g. {example}")
            else:
                out.append(f)
        return {"ok": not out, "failures": out, "answers": self.answers, **self.notes}


def steps_of(n, k_random, seed):
    fixed = {0, n // 2, n - 1}
    rnd = random.Random(seed).sample(range(n), min(k_random, n))
    return sorted(fixed | set(rnd))


def get(session, url, headers=None):
    try:
        r = session.get(url, headers={**R.HEADERS, **(headers or {})}, timeout=60)
        return r.status_code, r.content, r.headers.get("ETag")
    except Exception as e:  # noqa: BLE001
        return type(e).__name__, b"", None


def values(lay, idx, body):
    try:
        return lay.decode(body, idx)
    except Exception:  # noqa: BLE001
        return None


def equal(a, b):
    return a is not None and b is not None and a.shape == b.shape and a.tobytes() == b.astype(a.dtype).tobytes()


def judge(sc, group, lay, idx, resp, *, old, new=None, fault_file=None, old_etag=None):
    """Check one answer. OLD: the values before the fault. NEW: the values a 200 may carry after it
    (None: no 200 is acceptable; equal to OLD: unchanged chunk). FAULT_FILE: the file a 5xx must name
    (None: no 5xx is acceptable)."""
    status, body, etag = resp
    what = f"{lay.fmt} {lay.key(idx)}"
    if isinstance(status, int) and 500 <= status < 600:
        text = body.decode("utf-8", "replace")
        if fault_file and os.path.basename(fault_file) in text:
            sc.count(group, f"{status} naming the file")
            return
        sc.count(group, f"{status} not naming the file")
        sc.fail(f"{what}: HTTP {status} does not name "
                f"{os.path.basename(fault_file) if fault_file else 'any failed file (none expected)'}: {text[:200]}",
                (group, lay.fmt, f"{status} not naming the file" if fault_file else f"{status}"))
        return
    if status != 200:
        sc.count(group, str(status))
        sc.fail(f"{what}: HTTP {status}" + (" (a missing file must not look like a missing key)"
                                            if status == 404 else "") + f": {body[:200]!r}",
                (group, lay.fmt, str(status)))
        return
    got = values(lay, idx, body)
    if new is not None and equal(got, new):
        changed = not equal(new, old)
        if changed and old_etag is not None and etag == old_etag:
            sc.count(group, "200 new values, old ETag")
            sc.fail(f"{what}: ETag {etag} unchanged (caches keep the old data)",
                    (group, lay.fmt, "200 new values under the old ETag"))
            return
        sc.count(group, "200 new values" if changed else "200 right values")
        return
    if equal(got, old):
        sc.count(group, "200 stale (old values)")
        sc.fail(f"{what}" + ("" if new is not None else " (a 5xx naming the file was expected)"),
                (group, lay.fmt, "200 with the values from before the fault (stale)"))
        return
    sc.count(group, "200 wrong bytes")
    sc.fail(f"{what}" + (" (does not decode)" if got is None else " (decodes to other values)"),
            (group, lay.fmt, "200 with bytes that are neither the old nor the new values"))


def check_revalidation(sc, group, session, lay, idx, old_etag, changed):
    """If-None-Match with the ETag from before the change must not answer 304 for a changed chunk."""
    if not changed or not old_etag:
        return
    st, body, _ = get(session, lay.url(idx), {"If-None-Match": old_etag})
    if st == 304:
        sc.count(group, "304 to the old ETag")
        sc.fail(f"{lay.key(idx)}", (group, lay.fmt, "304 Not Modified to If-None-Match: <old ETag> though the "
                                                    "values changed"))
    else:
        sc.count(group, f"{st} to the old ETag")


def copy_files(files, dest):
    if os.path.isdir(dest):
        shutil.rmtree(dest)
    os.makedirs(dest)
    out = []
    for f in files:
        d = os.path.join(dest, os.path.basename(f))
        shutil.copyfile(f, d)
        out.append(d)
    return out


def edit_copy(src, dst, bump_steps):
    """DST: SRC with VAR += 0.5 on BUMP_STEPS, changed in place by libnetcdf (same size)."""
    import netCDF4
    shutil.copyfile(src, dst)
    with netCDF4.Dataset(dst, "a") as d:
        v = d.variables[R.VAR]
        v.set_auto_maskandscale(False)
        for k in bump_steps:
            v[k] = v[k] + BUMP


def rewrite_copy(src, dst, bump_steps):
    """DST: a new file with SRC's content, VAR += 0.5 on BUMP_STEPS, VAR's steps written last to first."""
    import netCDF4
    with netCDF4.Dataset(src) as s, netCDF4.Dataset(dst, "w", format=s.data_model) as d:
        s.set_auto_maskandscale(False)
        d.setncatts({k: s.getncattr(k) for k in s.ncattrs()})
        for name, dim in s.dimensions.items():
            d.createDimension(name, None if dim.isunlimited() else len(dim))
        for name, v in s.variables.items():
            f = v.filters() or {}
            ch = v.chunking()
            fill = v.getncattr("_FillValue") if "_FillValue" in v.ncattrs() else False
            nv = d.createVariable(name, v.dtype, v.dimensions, zlib=bool(f.get("zlib")),
                                  complevel=f.get("complevel") or 4, shuffle=bool(f.get("shuffle")),
                                  chunksizes=None if ch in (None, "contiguous") else ch, fill_value=fill)
            nv.set_auto_maskandscale(False)
            nv.setncatts({k: v.getncattr(k) for k in v.ncattrs() if k != "_FillValue"})
            if v.ndim == 0:
                nv.assignValue(v.getValue())
            elif name == R.VAR:
                for k in range(v.shape[0] - 1, -1, -1):
                    x = v[k]
                    nv[k] = x + BUMP if k in bump_steps else x
            else:
                nv[:] = v[:]


def chunk_offsets(server, dataset, path):
    """{step: (offset, size)} of VAR's chunks in PATH, from the server's own /kerchunk.json."""
    import requests
    refs = requests.get(f"{R.dataset_url(server, dataset)}/kerchunk.json", timeout=60).json()["refs"]
    out = {}
    for k, v in refs.items():
        if k.startswith(R.VAR + "/") and not k.endswith((".zarray", ".zattrs")) and isinstance(v, list) \
                and len(v) == 3 and v[0].endswith(os.path.basename(path)):
            out[int(k.split("/")[1].split(".")[0])] = (v[1], v[2])
    return out


class Run:
    """What every scenario needs: arguments, pristine files, their values."""

    def __init__(self, a, files):
        self.a, self.files = a, files
        self.truth = R.Truth(files)
        n0 = self.truth.spans[0][1]
        self.steps_a = steps_of(n0, 5, a.seed)
        self.steps_b = [n0 + s for s in steps_of(self.truth.spans[1][1] - n0, 5, a.seed + 1)] \
            if len(files) > 1 else []
        self.bump = sorted(random.Random(a.seed + 2).sample(range(n0), 8))
        self.servers = []

    def dir(self, name):
        return os.path.join(self.a.workdir, "faults", name)

    def start(self, name, serve_args, **kw):
        s, secs = R.start_cloudify(self.a.cloudify_bin, serve_args, os.path.join(self.a.workdir, "faults"),
                                   name=name, **kw)
        self.servers.append(s)
        return s, secs

    def stop_all(self):
        for s in self.servers:
            s.stop()


def warm_and_check(sc, group, session, lays, steps, truth):
    """Every route, every step: 200 with the netCDF values. Returns {(fmt, step): etag}."""
    etags = {}
    for lay in lays.values():
        for t in steps:
            idx = (t, 0, 0)
            resp = get(session, lay.url(idx))
            judge(sc, group, lay, idx, resp, old=truth.read(lay.region(idx)),
                  new=truth.read(lay.region(idx)), fault_file=None)
            etags[(lay.fmt, t)] = resp[2]
    return etags


# ----------------------------------------------------------------------------- scenarios

def sc_truncated(r):
    import requests
    sc = Scenario("truncated")
    files = copy_files(r.files[:2], r.dir("truncated"))
    s, _ = r.start("truncated", ["bench", os.path.join(r.dir("truncated"), "*.nc")],
                   cache_dir=os.path.join(r.dir("truncated"), "cache"))
    lays = R.layouts(R.dataset_url(s, "bench"))
    with requests.Session() as se:
        warm_and_check(sc, "before", se, lays, r.steps_a + r.steps_b, r.truth)
        offs = chunk_offsets(s, "bench", files[0])
        cut = os.path.getsize(files[0]) // 2
        os.truncate(files[0], cut)
        sc.notes["cut_at_byte"] = cut
        past = [t for t, (o, n) in sorted(offs.items()) if o + n > cut]
        before = [t for t, (o, n) in sorted(offs.items()) if o + n <= cut]
        steps_past = sorted(set(random.Random(r.a.seed).sample(past, min(6, len(past))) + past[-1:]))
        steps_before = sorted(set(random.Random(r.a.seed).sample(before, min(4, len(before))) + before[:1]))
        for lay in lays.values():
            for t in steps_past:
                idx = (t, 0, 0)
                judge(sc, "A past the cut", lay, idx, get(se, lay.url(idx)), old=r.truth.read(lay.region(idx)),
                      new=None, fault_file=files[0])
            for t in steps_before:
                idx = (t, 0, 0)
                old = r.truth.read(lay.region(idx))
                judge(sc, "A before the cut", lay, idx, get(se, lay.url(idx)), old=old, new=old,
                      fault_file=files[0])
            for t in r.steps_b:
                idx = (t, 0, 0)
                old = r.truth.read(lay.region(idx))
                judge(sc, "B (untouched)", lay, idx, get(se, lay.url(idx)), old=old, new=old, fault_file=None)
    if not s.alive():
        sc.fail(f"the server exited: {s.crash_evidence()}")
    s.stop()
    return sc


def sc_replaced(r, how):
    import requests
    name = f"replaced-{how}"
    sc = Scenario(name)
    files = copy_files(r.files[:2], r.dir(name))
    s, _ = r.start(name, ["bench", os.path.join(r.dir(name), "*.nc")], cache_dir=os.path.join(r.dir(name), "cache"))
    lays = R.layouts(R.dataset_url(s, "bench"))
    steps = sorted(set(r.steps_a) | set(r.bump))
    with requests.Session() as se:
        etags = warm_and_check(sc, "before", se, lays, steps + r.steps_b, r.truth)
        tmp = files[0] + ".new"
        t0 = time.monotonic()
        (edit_copy if how == "edited" else rewrite_copy)(r.files[0], tmp, set(r.bump))
        sc.notes["replacement_written_s"] = round(time.monotonic() - t0, 1)
        new_truth = R.Truth([tmp])
        want_new = {t: new_truth.read((slice(t, t + 1), slice(None), slice(None))) for t in steps}
        new_truth.close()
        sc.notes["sizes"] = {"old": os.path.getsize(files[0]), "new": os.path.getsize(tmp)}
        os.replace(tmp, files[0])
        for lay in lays.values():
            for t in steps:
                idx = (t, 0, 0)
                old = r.truth.read(lay.region(idx))
                new = want_new[t]
                group = "A changed steps" if t in r.bump else "A unchanged steps"
                judge(sc, group, lay, idx, get(se, lay.url(idx)), old=old, new=new, fault_file=files[0],
                      old_etag=etags.get((lay.fmt, t)))
                check_revalidation(sc, group, se, lay, idx, etags.get((lay.fmt, t)), t in r.bump)
            for t in r.steps_b:
                idx = (t, 0, 0)
                old = r.truth.read(lay.region(idx))
                judge(sc, "B (untouched)", lay, idx, get(se, lay.url(idx)), old=old, new=old, fault_file=None)
    if not s.alive():
        sc.fail(f"the server exited: {s.crash_evidence()}")
    s.stop()
    return sc


def sc_vanished(r):
    import requests
    sc = Scenario("vanished")
    d = r.dir("vanished")
    files = copy_files(r.files[:2], os.path.join(d, "data"))
    cfg = os.path.join(d, "cloudify.yaml")
    with open(cfg, "w") as f:
        f.write("datasets:\n"
                f"  - name: bench\n    sources: [\"{os.path.join(d, 'data', '*.nc')}\"]\n"
                f"  - name: other\n    sources: [{', '.join(repr(p) for p in r.files[:2])}]\n")
    s, _ = r.start("vanished", ["--config", cfg], cache_dir=os.path.join(d, "cache"))
    lays = R.layouts(R.dataset_url(s, "bench"))
    lays_o = R.layouts(R.dataset_url(s, "other"))
    steps = r.steps_a + r.steps_b
    with requests.Session() as se:
        warm_and_check(sc, "before", se, lays, steps, r.truth)
        warm_and_check(sc, "before", se, lays_o, steps, r.truth)
        for p in files:
            os.remove(p)
        for lay in lays.values():
            for t in steps:
                idx = (t, 0, 0)
                judge(sc, "bench (files deleted)", lay, idx, get(se, lay.url(idx)),
                      old=r.truth.read(lay.region(idx)), new=None, fault_file=r.truth.file_of(t))
        for lay in lays_o.values():
            for t in steps:
                idx = (t, 0, 0)
                old = r.truth.read(lay.region(idx))
                judge(sc, "other (untouched)", lay, idx, get(se, lay.url(idx)), old=old, new=old, fault_file=None)
        st = get(se, f"{s.base}/status")
        sc.notes["status_after"] = st[1].decode("utf-8", "replace")[:400]
    if not s.alive():
        sc.fail(f"the server exited: {s.crash_evidence()}")
    s.stop()
    return sc


def sc_cache(r):
    import requests
    sc = Scenario("cache")
    d = r.dir("cache")
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    pattern = os.path.join(os.path.dirname(r.files[0]), "*.nc")
    steps = r.steps_a + r.steps_b
    # (a) unwritable: a path under a regular file cannot be created, not even by root
    blocker = os.path.join(d, "not-a-directory")
    open(blocker, "w").close()
    try:
        s, secs = r.start("cache-unwritable", ["bench", pattern], cache_dir=os.path.join(blocker, "cache"))
    except run.SetupError as e:
        sc.fail(f"unwritable cache: the server did not serve: {e}")
    else:
        sc.notes["unwritable_startup_s"] = secs
        lays = R.layouts(R.dataset_url(s, "bench"))
        with requests.Session() as se:
            warm_and_check(sc, "unwritable cache", se, lays, steps, r.truth)
        warns = [l for l in s._log_lines() if " WARN" in l and "cache" in l.lower()]
        sc.notes["unwritable_warnings"] = [w[w.find("WARN"):][:200] for w in warns[:3]]
        if not warns:
            sc.fail("unwritable cache: no WARN line about the cache in the log")
        s.stop()
    # (b) deleted while serving, then restarted with it deleted
    cache = os.path.join(d, "cache")
    s, _ = r.start("cache-deleted", ["bench", pattern], cache_dir=cache)
    lays = R.layouts(R.dataset_url(s, "bench"))
    with requests.Session() as se:
        warm_and_check(sc, "cache written", se, lays, steps[:3], r.truth)
        time.sleep(1)  # background cache writes
        shutil.rmtree(cache, ignore_errors=True)
        warm_and_check(sc, "cache deleted while serving", se, lays, steps, r.truth)
    if not s.alive():
        sc.fail(f"cache deleted while serving: the server exited: {s.crash_evidence()}")
    s.stop()
    shutil.rmtree(cache, ignore_errors=True)
    try:
        s, secs = r.start("cache-deleted-restart", ["bench", pattern], cache_dir=cache)
    except run.SetupError as e:
        sc.fail(f"restart with the cache deleted: the server did not serve: {e}")
        return sc
    sc.notes["restart_without_cache_startup_s"] = secs
    lays = R.layouts(R.dataset_url(s, "bench"))
    with requests.Session() as se:
        warm_and_check(sc, "restarted without cache", se, lays, steps, r.truth)
    s.stop()
    return sc


def slow_read(url, rate, out, tag):
    """GET URL over a raw socket with a small receive buffer, reading about RATE bytes/s; appends
    (t_sent, t_end, status or error, body, TAG) to OUT."""
    import socket
    import urllib.parse
    u = urllib.parse.urlsplit(url)
    t_sent = None
    try:
        so = socket.socket()
        so.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        so.settimeout(60)
        so.connect((u.hostname, u.port))
        so.sendall(f"GET {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nAccept-Encoding: identity\r\n"
                   f"Connection: close\r\n\r\n".encode())
        t_sent = time.perf_counter()
        buf = b""
        while b"\r\n\r\n" not in buf:
            b = so.recv(4096)
            if not b:
                raise ConnectionError("closed before the headers")
            buf += b
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(int(l.split(":", 1)[1]) for l in lines[1:] if l.lower().startswith("content-length:"))
        step = max(1024, int(rate / 20))
        while len(body) < length:
            time.sleep(0.05)
            b = so.recv(min(step, length - len(body)))
            if not b:
                raise ConnectionError(f"closed after {len(body)} of {length} body bytes")
            body += b
        so.close()
        out.append((t_sent, time.perf_counter(), status, body, tag))
    except Exception as e:  # noqa: BLE001
        out.append((t_sent, time.perf_counter(), f"{type(e).__name__}: {e}", b"", tag))


def sc_sigterm(r):
    sc = Scenario("sigterm")
    a = r.a
    pattern = os.path.join(os.path.dirname(r.files[0]), "*.nc")
    cache = os.path.join(r.dir("sigterm"), "cache")
    s, _ = r.start("sigterm", ["bench", pattern], cache_dir=cache)
    lays = R.layouts(R.dataset_url(s, "bench"))
    urls = [lay.url(i) for lay in lays.values() for i in lay.indices()]
    timing = {}

    slow, slow_threads = [], []
    slow_idx = [(t, 0, 0) for t in r.steps_a[:a.slow_readers]]

    async def scenario():
        stop = asyncio.Event()
        load = asyncio.create_task(R.hammer(urls, a.connections, 3600, a.seed, keep_records=True, stop=stop))
        await asyncio.sleep(max(0.0, a.sigterm_after - 0.5))
        for idx in slow_idx:  # slow readers: their answers take seconds to drain
            th = threading.Thread(target=slow_read, args=(lays["v2"].url(idx), a.slow_rate, slow, idx), daemon=True)
            th.start()
            slow_threads.append(th)
        await asyncio.sleep(0.5)
        timing["sig"] = time.perf_counter()
        os.kill(s.proc.pid, signal.SIGTERM)
        try:
            rc = await asyncio.to_thread(s.proc.wait, a.drain_timeout)
            timing["exit_s"] = round(time.perf_counter() - timing["sig"], 2)
        except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired
            rc = None
        timing["rc"] = rc
        await asyncio.sleep(0.5)
        stop.set()
        return await load

    out = asyncio.run(scenario())
    for th in slow_threads:
        th.join(120)
    t_sig = timing["sig"]
    if timing["rc"] is None:
        sc.fail(f"the server had not exited {a.drain_timeout} s after SIGTERM")
        s.stop()
    elif timing["rc"] != 0:
        sc.fail(f"the server exited with status {timing['rc']} after SIGTERM: {s.crash_evidence()}")
    sc.notes["exit_after_sigterm_s"] = timing.get("exit_s")
    sc.notes["exit_status"] = timing["rc"]
    margin = a.race_ms / 1000
    inflight = [rec for rec in out.records if rec[6] is not None and rec[6] < t_sig - margin]
    race = [rec for rec in out.records if rec[6] is not None and t_sig - margin <= rec[6] < t_sig]
    before_done = [rec for rec in inflight if rec[1] < t_sig]
    draining = [rec for rec in inflight if rec[1] >= t_sig]
    after = [rec for rec in out.records if rec[6] is None or rec[6] >= t_sig]
    for rec in inflight:
        sc.count(f"sent > {a.race_ms:g} ms before SIGTERM", "200" if rec[3] == 200 else str(rec[3]))
    for rec in race:
        sc.count(f"sent < {a.race_ms:g} ms before SIGTERM (race: may be refused)", str(rec[3]))
    for rec in after:
        sc.count("sent after SIGTERM (may be refused)", str(rec[3]))
    bad = [rec for rec in inflight if rec[3] != 200]
    sc.notes["requests"] = {"completed_before_sigterm": len(before_done), "in_flight_at_sigterm": len(draining),
                            "in_flight_failed": len([x for x in draining if x[3] != 200]),
                            "race_window": len(race), "race_window_failed": len([x for x in race if x[3] != 200]),
                            "sent_after": len(after),
                            "longest_drain_ms": round(1000 * max((x[1] - t_sig for x in draining), default=0), 1)}
    if bad:
        worst = bad[:3]
        sc.fail(f"{len(bad)} requests sent before SIGTERM did not complete with 200: "
                + "; ".join(f"{x[2].split('/datasets/')[-1]} -> {x[3]} (sent {1000 * (t_sig - x[6]):.1f} ms before, "
                            f"ended {1000 * (x[1] - t_sig):+.1f} ms after)" for x in worst))
    wrong_after = [rec for rec in race + after if rec[3] == 200 and out.crc.get(rec[2], (rec[4],))[0] != rec[4]]
    if wrong_after:
        sc.fail(f"{len(wrong_after)} requests sent after SIGTERM got a body that differs from other 200s")
    for t_sent, t_end, status, body, idx in slow:
        lay = lays["v2"]
        if t_sent is None or t_sent >= t_sig:
            sc.count("slow readers", "not sent before SIGTERM")
            sc.fail(f"slow reader of {lay.key(idx)} had not sent its request before SIGTERM ({status})")
            continue
        if status != 200:
            sc.count("slow readers", str(status)[:40])
            sc.fail(f"slow reader of {lay.key(idx)} (sent before SIGTERM) failed: {status}")
            continue
        why = R.check_chunk(lay, idx, body, r.truth.read(lay.region(idx)))
        sc.count("slow readers", "200 right values" if not why else "200 wrong bytes")
        if why:
            sc.fail(f"slow reader of {lay.key(idx)}: {why}")
    sc.notes["slow_readers_last_byte_after_sigterm_s"] = round(max((x[1] - t_sig for x in slow), default=0), 2)
    if out.errors.get("inconsistent body"):
        sc.fail(f"{out.errors['inconsistent body']} bodies differ between requests of the same chunk")
    # the bodies served while draining, checked against the netCDF values on a fresh server
    drained = {rec[2]: (rec[4], rec[5]) for rec in draining + race + after if rec[3] == 200}
    s2, _ = r.start("sigterm-check", ["bench", pattern], cache_dir=cache)
    lays2 = R.layouts(R.dataset_url(s2, "bench"))
    remap = {lay.url(i): lays2[f].url(i) for f, lay in lays.items() for i in lay.indices()}
    n, problems = R.verify_seen({remap[u]: v for u, v in drained.items()}, lays2, r.truth)
    sc.notes["drained_bodies_verified"] = n
    for p in problems[:5]:
        sc.fail(f"a body served while draining is wrong: {p}")
    s2.stop()
    return sc


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    ap.add_argument("--years", type=int, default=2, help="yearly files (at least 2: A and B)")
    ap.add_argument("--workdir", default="/var/tmp/cloudify-bench")
    ap.add_argument("--cloudify-bin", default=os.environ.get("CLOUDIFY_BIN") or R.DEFAULT_BIN)
    ap.add_argument("--python", default=sys.executable, help="interpreter for make_data.py")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--connections", type=int, default=64, help="sigterm: load connections")
    ap.add_argument("--sigterm-after", type=float, default=3.0, help="sigterm: seconds of load before the signal")
    ap.add_argument("--drain-timeout", type=float, default=30.0, help="sigterm: seconds allowed to exit")
    ap.add_argument("--race-ms", type=float, default=10.0,
                    help="sigterm: requests sent less than this before the signal may be refused (see --help)")
    ap.add_argument("--slow-readers", type=int, default=4, help="sigterm: clients reading one chunk slowly")
    ap.add_argument("--slow-rate", type=float, default=300e3, help="sigterm: bytes/s of a slow reader")
    a = ap.parse_args(argv)
    a.workdir = os.path.abspath(a.workdir)
    only = [x.strip() for x in a.only.split(",") if x.strip()]
    if any(x not in SCENARIOS for x in only):
        ap.error(f"--only: choose from {','.join(SCENARIOS)}")
    if a.years < 2:
        ap.error("--years: at least 2 files are needed (one faulted, one untouched)")
    summary = {"test": "faults", "when": dt.datetime.now().isoformat(timespec="seconds"),
               "machine": {"cpus": os.cpu_count(), "loadavg_start": run.loadavg()},
               "cloudify": {"bin": a.cloudify_bin, "version": run.cloudify_version(a.cloudify_bin)},
               "scenarios": {}}
    try:
        _, files = run.ensure_data(a, a.python)
    except run.SetupError as e:
        R.log(f"setup failed: {e}")
        summary.update(ok=False, failures=[f"setup: {e}"])
        R.emit(summary)
        return 2
    r = Run(a, files)
    summary["steps"] = {"A": r.steps_a, "B": r.steps_b, "changed_in_replacements": r.bump}
    setup_failed = False
    try:
        for name in only:
            R.log(f"scenario {name}")
            try:
                sc = {"truncated": sc_truncated, "vanished": sc_vanished, "cache": sc_cache, "sigterm": sc_sigterm,
                      "replaced-edited": lambda r: sc_replaced(r, "edited"),
                      "replaced-rewritten": lambda r: sc_replaced(r, "rewritten")}[name](r)
                res = sc.result()
            except run.SetupError as e:
                setup_failed = True
                res = {"ok": False, "failures": [f"setup: {e}"], "answers": {}}
            summary["scenarios"][name] = res
            shutil.rmtree(r.dir(name), ignore_errors=True)  # the copies (logs stay in WORKDIR/faults/logs)
            R.log(f"  {name}: {'ok' if res['ok'] else 'FAILED'} {res['answers']}")
            for f in res["failures"][:6]:
                R.log(f"    - {f}")
    finally:
        r.stop_all()
        r.truth.close()
    failed = [k for k, v in summary["scenarios"].items() if not v["ok"]]
    summary["failed"] = failed
    summary["ok"] = not failed
    R.emit(summary)
    return 0 if not failed else (2 if setup_failed and len(failed) == 1 else 1)


if __name__ == "__main__":
    sys.exit(main())
