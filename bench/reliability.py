"""Shared parts of the reliability scripts (load.py, faults.py, scale.py); not a command itself.

* ``start_cloudify``: ``cloudify serve ...`` in its own process group (run.Server), waited for
  through its listen file (run.wait_ready);
* ``Layout``/``layouts``: the chunk keys of one variable on the three routes a dataset serves
  (``/zarr`` as Zarr v2, the same as Zarr v3, ``/kerchunk``), read from the server's metadata;
* ``decode``: a chunk body back to an array with numcodecs, from the codecs the server declared;
* ``Truth``: the values of the variable read from the netCDF files with netCDF4 (no masking or
  scaling), so that a check compares values, not status codes;
* ``hammer``: CONNECTIONS keep-alive workers (aiohttp) requesting chunk URLs drawn at random
  (fixed seed) for a duration; every request's latency, status, ETag and CRC-32 of the body is kept;
* ``RssTimeline``: run.RssSampler that also keeps every sample (time, RSS of the process tree).
"""
import asyncio
import itertools
import json
import os
import random
import statistics
import sys
import threading
import time
import zlib
from collections import Counter

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from run import (PAGE_MB, RssSampler, Server, SetupError, free_port, log,  # noqa: E402,F401
                 proc_tree, status_kb, wait_ready)
import run  # noqa: E402

VAR = "tas"
FORMATS = ("v2", "v3", "kerchunk")
HEADERS = {"Accept-Encoding": "identity"}
DEFAULT_BIN = run.DEFAULT_BIN


def emit(summary: dict) -> None:
    """The one JSON summary line on stdout."""
    print(json.dumps(summary, default=str), flush=True)


# ----------------------------------------------------------------------------- server

def start_cloudify(binary, serve_args, workdir, name="cloudify", cache_dir=None, timeout=600, env=None,
                   dataset="bench"):
    """Start ``cloudify serve SERVE_ARGS`` on a free port and wait until dataset DATASET answers
    ``.zmetadata`` (run.wait_ready). Returns (server, start-up seconds), start-up being the time from
    exec until the listen file names the URL (polled every 2 ms; the server opens its datasets
    before it listens)."""
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        raise SetupError(f"cloudify binary not found: {binary} (pass --cloudify-bin)")
    logdir = os.path.join(workdir, "logs")
    os.makedirs(logdir, exist_ok=True)
    listen = os.path.join(workdir, f"{name}.listen")
    if os.path.exists(listen):
        os.remove(listen)
    cmd = [binary, "serve", *serve_args, "--host", "127.0.0.1", "--port", str(free_port()),
           "--listen-file", listen]
    if cache_dir is not None:
        cmd += ["--cache-dir", cache_dir]
    s = Server(name, cmd, logdir, env=env)
    t0 = time.monotonic()
    s.start()
    startup = None
    while time.monotonic() - t0 < timeout and s.alive():
        try:
            if os.path.getsize(listen) > 0:
                startup = round(time.monotonic() - t0, 3)
                break
        except OSError:
            pass
        time.sleep(0.002)
    old = run.DATASET
    run.DATASET = dataset
    try:
        wait_ready(s, ["/.zmetadata"], max(1.0, timeout - (time.monotonic() - t0)), listen)
    except SetupError:
        s.stop()
        raise
    finally:
        run.DATASET = old
    return s, startup


def dataset_url(server, dataset):
    return f"{server.base}/datasets/{dataset}"


def log_lines(server):
    return server._log_lines()


# ----------------------------------------------------------------------------- layouts and decoding

class Layout:
    """Chunk keys of VAR on one route, and how to decode them."""

    def __init__(self, fmt, root, meta):
        self.fmt, self.root, self.meta = fmt, root, meta
        if fmt == "v3":
            self.shape = meta["shape"]
            self.chunks = meta["chunk_grid"]["configuration"]["chunk_shape"]
            enc = meta.get("chunk_key_encoding", {"name": "default"})
            if enc["name"] == "default":
                self.sep, self.prefix = enc.get("configuration", {}).get("separator", "/"), "c" + \
                    enc.get("configuration", {}).get("separator", "/")
            else:
                self.sep, self.prefix = enc.get("configuration", {}).get("separator", "."), ""
            self.dtype = np.dtype({"float32": "f4", "float64": "f8", "int16": "i2", "int32": "i4",
                                   "int64": "i8", "uint8": "u1", "int8": "i1", "uint16": "u2",
                                   "uint32": "u4", "uint64": "u8"}[meta["data_type"]])
        else:
            self.shape, self.chunks = meta["shape"], meta["chunks"]
            self.sep, self.prefix = meta.get("dimension_separator") or ".", ""
            self.dtype = np.dtype(meta["dtype"])
        self.grid = [-(-n // c) for n, c in zip(self.shape, self.chunks)]

    def moved(self, root):
        """The same layout under another Zarr root (another dataset with the same files)."""
        return Layout(self.fmt, root, self.meta)

    def key(self, idx):
        return f"{VAR}/{self.prefix}{self.sep.join(map(str, idx))}"

    def url(self, idx):
        return f"{self.root}/{self.key(idx)}"

    def indices(self):
        return list(itertools.product(*[range(g) for g in self.grid]))

    def region(self, idx):
        return tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(idx, self.chunks, self.shape))

    def decode(self, body, idx):
        """Chunk IDX's values (the part inside the array) as an array of the array's dtype."""
        import numcodecs
        if self.fmt == "v3":
            data, order, endian = body, "C", "little"
            codecs = self.meta["codecs"]
            for c in reversed(codecs):
                name, conf = c["name"], c.get("configuration", {})
                if name == "bytes":
                    endian = conf.get("endian", "little")
                elif name == "blosc":
                    data = numcodecs.Blosc().decode(data)
                elif name == "zstd":
                    data = numcodecs.Zstd().decode(data)
                elif name == "gzip":
                    data = numcodecs.GZip().decode(data)
                elif name == "transpose":
                    raise ValueError("transpose codec not handled by this checker")
                else:
                    raise ValueError(f"codec {name} not handled by this checker")
            dt = self.dtype.newbyteorder("<" if endian == "little" else ">")
        else:
            data = body
            if self.meta.get("compressor"):
                data = numcodecs.get_codec(self.meta["compressor"]).decode(data)
            for f in reversed(self.meta.get("filters") or []):
                data = numcodecs.get_codec(f).decode(data)
            dt, order = self.dtype, self.meta.get("order", "C")
        arr = np.frombuffer(bytes(data), dtype=dt).reshape(self.chunks, order=order)
        return arr[tuple(slice(0, s.stop - s.start) for s in self.region(idx))]


def layouts(dataset_base, formats=FORMATS, timeout=60):
    """{fmt: Layout} of VAR for the routes of one dataset (dataset_base = .../datasets/NAME)."""
    import requests
    out = {}
    for fmt in formats:
        if fmt == "v3":
            root = f"{dataset_base}/zarr"
            r = requests.get(f"{root}/{VAR}/zarr.json", timeout=timeout)
            r.raise_for_status()
            out[fmt] = Layout(fmt, root, r.json())
        else:
            root = f"{dataset_base}/{'zarr' if fmt == 'v2' else 'kerchunk'}"
            r = requests.get(f"{root}/.zmetadata", timeout=timeout)
            r.raise_for_status()
            out[fmt] = Layout(fmt, root, r.json()["metadata"][f"{VAR}/.zarray"])
    return out


class Truth:
    """VAR's stored values, read from the netCDF files (concatenated along the first axis)."""

    def __init__(self, files, var=VAR):
        import netCDF4
        self.files, self.var = list(files), var
        self.spans = []  # (start, stop, path)
        n = 0
        for p in self.files:
            with netCDF4.Dataset(p) as d:
                k = d.variables[var].shape[0]
            self.spans.append((n, n + k, p))
            n += k
        self.n = n
        self._open = {}

    def _var(self, path):
        import netCDF4
        if path not in self._open:
            d = netCDF4.Dataset(path)
            d.set_auto_maskandscale(False)
            self._open[path] = d
        return self._open[path].variables[self.var]

    def read(self, region):
        t = region[0]
        parts = []
        for a, b, p in self.spans:
            lo, hi = max(t.start, a), min(t.stop, b)
            if lo < hi:
                parts.append(np.asarray(self._var(p)[(slice(lo - a, hi - a),) + tuple(region[1:])]))
        return np.concatenate(parts, axis=0)

    def file_of(self, step):
        return next(p for a, b, p in self.spans if a <= step < b)

    def close(self):
        for d in self._open.values():
            d.close()
        self._open.clear()


def compare(got, want):
    """None if the arrays are bitwise equal (as native-endian values), else how they differ."""
    if got.shape != want.shape:
        return f"shape {got.shape} != {want.shape}"
    g = got.astype(got.dtype.newbyteorder("="))
    w = want.astype(want.dtype.newbyteorder("="))
    if g.dtype != w.dtype or g.tobytes() != w.tobytes():
        return f"values differ from the netCDF file in {int(np.count_nonzero(g != w))} of {w.size} elements"
    return None


def check_chunk(lay, idx, body, want):
    """None if BODY decodes to WANT (the netCDF values of chunk IDX), else why not."""
    try:
        got = lay.decode(body, idx)
    except Exception as e:  # noqa: BLE001 - any decode failure is a wrong body
        return f"does not decode ({type(e).__name__}: {e})"
    return compare(got, want)


# ----------------------------------------------------------------------------- load

class Outcome:
    """Results of many requests, kept compactly."""

    def __init__(self):
        self.lat = []            # seconds, every finished request (successful or not)
        self.ok = 0
        self.bytes = 0
        self.errors = Counter()  # "500", "ClientOSError", "inconsistent body", ...
        self.first_errors = []
        self.crc = {}            # url -> (crc32, etag) of the first 200 body
        self.records = None      # [(t_start, t_end, url, status or error name, crc, etag, t_sent)] if kept
        self.t0 = self.t1 = None

    def error(self, kind, text):
        self.errors[kind] += 1
        if len(self.first_errors) < 5:
            self.first_errors.append(text[:400])

    def summary(self):
        lat = sorted(self.lat)

        def pct(p):
            return round(1000 * lat[min(len(lat) - 1, int(p * len(lat)))], 2) if lat else None

        secs = (self.t1 - self.t0) if self.t0 and self.t1 else None
        return {"requests": len(lat), "ok": self.ok, "errors": sum(self.errors.values()),
                "error_kinds": dict(self.errors), "first_errors": self.first_errors,
                "seconds": round(secs, 2) if secs else None,
                "chunks_per_s": round(self.ok / secs, 1) if secs else None,
                "MB_per_s": round(self.bytes / secs / 1e6, 1) if secs else None,
                "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99), "p999_ms": pct(0.999),
                "max_ms": round(1000 * lat[-1], 1) if lat else None,
                "mean_ms": round(1000 * statistics.fmean(lat), 2) if lat else None,
                "distinct_chunks": len(self.crc)}


async def hammer(urls, connections, duration, seed, keep_records=False, stop=None, timeout=120,
                 outcome=None, expect_status=200):
    """CONNECTIONS workers on one keep-alive pool request random URLs (random.Random(seed + worker))
    until DURATION seconds have passed or STOP (an asyncio.Event) is set. A 200 body whose CRC-32
    differs from the first 200 body of the same URL is an "inconsistent body" error."""
    import aiohttp
    out = outcome or Outcome()
    if keep_records:
        out.records = []
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    tmo = aiohttp.ClientTimeout(total=timeout)
    trace = aiohttp.TraceConfig()

    async def on_sent(session, ctx, params):
        if isinstance(ctx.trace_request_ctx, dict):
            ctx.trace_request_ctx["sent"] = time.perf_counter()

    trace.on_request_headers_sent.append(on_sent)
    deadline = time.monotonic() + duration
    stop = stop or asyncio.Event()

    async def worker(i):
        rng = random.Random(seed * 1000 + i)
        while not stop.is_set() and time.monotonic() < deadline:
            url = rng.choice(urls)
            t = time.perf_counter()
            status, crc, etag = None, None, None
            tctx = {}
            try:
                async with session.get(url, headers=HEADERS, trace_request_ctx=tctx) as r:
                    body = await r.read()
                    status, etag = r.status, r.headers.get("ETag")
                    if r.status == expect_status:
                        out.ok += 1
                        out.bytes += len(body)
                        crc = zlib.crc32(body)
                        first = out.crc.setdefault(url, (crc, etag))
                        if first[0] != crc:
                            out.error("inconsistent body", f"{url}: body differs from an earlier 200 of the "
                                                           f"same URL (crc {crc:08x} vs {first[0]:08x})")
                    else:
                        out.error(str(r.status), f"{url} -> HTTP {r.status}: {body[:300]!r}")
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                status = type(e).__name__
                out.error(status, f"{url} -> {status}: {e}")
            t1 = time.perf_counter()
            out.lat.append(t1 - t)
            if keep_records:
                out.records.append((t, t1, url, status, crc, etag, tctx.get("sent")))

    async with aiohttp.ClientSession(connector=connector, timeout=tmo, auto_decompress=False,
                                     trace_configs=[trace]) as session:
        out.t0 = time.perf_counter()
        await asyncio.gather(*[worker(i) for i in range(connections)])
        out.t1 = time.perf_counter()
    return out


def fetch(url, timeout=120, headers=None):
    """(status, body, headers) of one GET; status is an exception name on failure."""
    import requests
    try:
        r = requests.get(url, timeout=timeout, headers={**HEADERS, **(headers or {})})
        return r.status_code, r.content, r.headers
    except requests.RequestException as e:
        return type(e).__name__, b"", {}


def verify_seen(crc_by_url, lays, truth, limit=0):
    """Fetch again every chunk URL the load received a 200 for (CRC_BY_URL: url -> (crc32, etag),
    Outcome.crc; or LIMIT random ones of them), decode it, compare with the netCDF values, and check
    that its CRC is the one the load saw. LAYS: {fmt: Layout} or a list of Layouts (several
    datasets). Returns (checked, [problems])."""
    by_url = {}
    for lay in (lays.values() if isinstance(lays, dict) else lays):
        for idx in lay.indices():
            by_url[lay.url(idx)] = (lay, idx)
    urls = sorted(crc_by_url)
    if limit:
        urls = random.Random(1).sample(urls, min(limit, len(urls)))
    # group by time step so each netCDF chunk is read once for all routes
    urls.sort(key=lambda u: (by_url[u][1], by_url[u][0].fmt) if u in by_url else ((), ""))
    problems, cache = [], {}
    import requests
    with requests.Session() as s:
        for u in urls:
            if u not in by_url:
                continue
            lay, idx = by_url[u]
            r = s.get(u, headers=HEADERS, timeout=120)
            if r.status_code != 200:
                problems.append(f"{u}: HTTP {r.status_code} on the check")
                continue
            if zlib.crc32(r.content) != crc_by_url[u][0]:
                problems.append(f"{u}: the body under load differs from the body checked afterwards")
            key = tuple((r_.start, r_.stop) for r_ in lay.region(idx))
            if key not in cache:
                cache.clear()
                cache[key] = truth.read(lay.region(idx))
            why = check_chunk(lay, idx, r.content, cache[key])
            if why:
                problems.append(f"{u}: {why}")
    return len(urls), problems


class RssTimeline(RssSampler):
    """run.RssSampler that also keeps (seconds since start, RSS MB) of every sample, and beside
    it the split of that RSS (``RssAnon``: heap, stacks, the allocator's pages; ``RssFile``:
    the binary's and libraries' code and any mapped file) and the number of threads, so that a
    rise in RSS can be told apart: memory the server holds, or code paged in once."""

    def __init__(self, servers, interval):
        super().__init__(servers, interval)
        self.t0 = time.monotonic()
        self.samples = {s.name: [] for s in servers}
        # (t, RssAnon MB, RssFile MB, threads) per sample
        self.detail = {s.name: [] for s in servers}

    def sample_once(self):
        super().sample_once()
        now = time.monotonic() - self.t0
        for s in self.servers:
            if s.proc is None or s.proc.poll() is not None:
                continue
            pids = self.trees.get(s.name, ([s.proc.pid], 0.0))[0]
            anon = file_ = threads = 0
            for p in pids:
                st = status_kb(p, ("RssAnon", "RssFile", "RssShmem", "Threads"))
                anon += st.get("RssAnon", 0)
                file_ += st.get("RssFile", 0) + st.get("RssShmem", 0)
                threads += st.get("Threads", 0)
            with self.lock:
                self.samples[s.name].append((now, self.stats[s.name]["rss_now_kb"] * PAGE_MB))
                self.detail[s.name].append((now, anon * PAGE_MB, file_ * PAGE_MB, threads))

    def window(self, name, t_from, t_to, field=None):
        """RSS samples (MB) taken in [t_from, t_to); with field "anon", "file" or "threads",
        that column of the detail instead."""
        with self.lock:
            if field is None:
                return [r for t, r in self.samples[name] if t_from <= t < t_to]
            col = {"anon": 1, "file": 2, "threads": 3}[field]
            return [d[col] for d in self.detail[name] if t_from <= d[0] < t_to]

    def rss_now(self, name):
        return round(self.snapshot(name)["rss_now_kb"] * PAGE_MB, 1)


def thp_state(pid):
    """Whether transparent huge pages are enabled for the process (``THP_enabled`` of
    /proc/PID/status; cloudify turns them off at start) and the MB of its anonymous memory in
    huge pages (``AnonHugePages`` of smaps_rollup). With them on, khugepaged folds the
    allocator's pages into 2 MiB pages that stay resident while any 4 KiB of them is in use:
    RSS then rises in steps during a soak without any growth in what the server holds."""
    out = {}
    st = status_kb(pid, ("THP_enabled",))
    if "THP_enabled" in st:
        out["enabled"] = bool(st["THP_enabled"])
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("AnonHugePages:"):
                    out["anon_huge_MB"] = round(int(line.split()[1]) * PAGE_MB, 1)
    except OSError:
        pass
    return out


class MetricsPoller(threading.Thread):
    """Reads the server's /metrics every `interval` s and keeps (seconds since t0, value) of
    every gauge whose name ends in ``_cache_bytes`` (the decoded-chunk and compute caches): the
    memory the server *means* to hold, reported beside its RSS."""

    def __init__(self, base, t0, interval=2.0):
        super().__init__(daemon=True)
        self.url, self.t0, self.interval = f"{base}/metrics", t0, interval
        self.stop_event = threading.Event()
        self.samples = []  # (t, {gauge: bytes})

    def poll_once(self):
        import urllib.request
        try:
            with urllib.request.urlopen(self.url, timeout=10) as r:
                text = r.read().decode()
        except OSError:
            return
        vals = {}
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            name, _, v = line.rpartition(" ")
            if name.split("{")[0].endswith("_cache_bytes"):
                try:
                    vals[name] = vals.get(name, 0) + float(v)
                except ValueError:
                    pass
        self.samples.append((time.monotonic() - self.t0, vals))

    def run(self):
        while not self.stop_event.wait(self.interval):
            self.poll_once()

    def total_mb(self, t_from, t_to):
        """Median over [t_from, t_to) of the summed cache gauges, MB (None without samples)."""
        w = [sum(v.values()) / 1e6 for t, v in self.samples if t_from <= t < t_to]
        return round(statistics.median(w), 2) if w else None
