#!/usr/bin/env python3
"""Side-by-side benchmark: cloudify (Rust) vs xpublish + xpublish-zarr (Python), in one command.

    run.py [--years 2] [--connections 8] [--workdir /var/tmp/cloudify-bench]
           [--cloudify-bin PATH] [--repeats 3] [--client python|oha|wrk] ...

What one run does (see README.md):
 1. writes the dataset (make_data.py) into WORKDIR/data-<YEARS>y unless it is already there;
 2. starts cloudify (``$CLOUDIFY_BIN``, --cloudify-bin, or /var/tmp/cloudify-target/release/cloudify):
    ``cloudify serve bench GLOB --host 127.0.0.1 --port-range 19500-19599 --listen-file F``
    and the xpublish peer (xpublish_peer.py) on a free port; waits until both answer;
 3. verify.py: both servers' ``tas`` must equal the netCDF files on a few time steps (else abort);
 4. warms every target up with one full pass, then fetches every chunk of ``tas`` from every target
    (cloudify v2, cloudify v3, xpublish v3 and v2 where served) REPEATS times, alternating the order,
    and takes the median; samples both servers' RSS (VmRSS/VmHWM of the process tree) throughout;
 5. prints a table and a JSON summary (also saved under WORKDIR/results/) with chunks/s, MB/s,
    RSS and the cloudify/xpublish ratios; stops both servers (also on Ctrl-C and on errors).

Exit status: 0 ok; 1 a server failed (non-200 responses, failed requests, a crash, wrong data);
2 the benchmark could not be set up (binary missing, server did not start); 3 --enforce-bar was
given and the bar (>= 10x xpublish chunks/s, <= 1/3 of its RSS) was not met; 130 interrupted.
Needs the Python packages of xpublish_peer.py/verify.py/fetch.py in the interpreter that runs it
(or --python), plus oha or wrk on PATH for --client oha|wrk.
"""
import argparse
import datetime as dt
import glob
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
DATASET = "bench"
VAR = "tas"
DEFAULT_BIN = "/var/tmp/cloudify-target/release/cloudify"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_MB = 1 / 1024  # /proc/PID/status reports kB
BAR_SPEEDUP = 10.0
BAR_RSS = 1 / 3


def log(msg):
    print(f"[run {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class SetupError(Exception):
    """The benchmark could not be set up (exit 2)."""


# ----------------------------------------------------------------------------- /proc helpers

def proc_tree(root: int) -> list[int]:
    """root and all its live descendants."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        if os.path.exists(f"/proc/{p}"):
            out.append(p)
            todo.extend(children.get(p, []))
    return out


def status_kb(pid: int, keys=("VmRSS", "VmHWM")) -> dict:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in keys:
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime of the processes plus that of their reaped children."""
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds spent by the whole machine (all CPUs, not idle/iowait) since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest is already in user)
    return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / CLK_TCK


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


class RssSampler(threading.Thread):
    """Samples the summed VmRSS and VmHWM of each server's process tree every `interval` s."""

    def __init__(self, servers, interval):
        super().__init__(daemon=True)
        self.servers, self.interval = servers, interval
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.trees = {}
        self.stats = {s.name: {"rss_max_kb": 0, "hwm_max_kb": 0, "rss_now_kb": 0, "samples": 0, "pids": 1}
                      for s in servers}

    def sample_once(self):
        for s in self.servers:
            if s.proc is None or s.proc.poll() is not None:
                continue
            # walking /proc for descendants costs more than reading two status files: do it once a second
            pids, when = self.trees.get(s.name, (None, 0.0))
            if pids is None or time.monotonic() - when > 1.0:
                pids = proc_tree(s.proc.pid)
                self.trees[s.name] = (pids, time.monotonic())
            rss = hwm = 0
            for p in pids:
                st = status_kb(p)
                rss += st.get("VmRSS", 0)
                hwm += st.get("VmHWM", 0)
            with self.lock:
                d = self.stats[s.name]
                d["rss_now_kb"] = rss
                d["rss_max_kb"] = max(d["rss_max_kb"], rss)
                d["hwm_max_kb"] = max(d["hwm_max_kb"], hwm)
                d["samples"] += 1
                d["pids"] = max(d["pids"], len(pids))

    def snapshot(self, name):
        self.sample_once()
        with self.lock:
            return dict(self.stats[name])

    def run(self):
        while not self.stop_event.wait(self.interval):
            self.sample_once()


# ----------------------------------------------------------------------------- servers

def http_status(url, timeout=5.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError, ValueError):
        return None


class Server:
    def __init__(self, name, cmd, logdir, env=None):
        self.name, self.cmd, self.env = name, cmd, env
        self.log_path = os.path.join(logdir, f"{name}.log")
        self.proc = None
        self.base = None
        self.zarr = None

    def start(self):
        logf = open(self.log_path, "wb")
        logf.write(("$ " + " ".join(self.cmd) + "\n").encode())
        logf.flush()
        # own session: Ctrl-C in the terminal reaches run.py only, and stop() can signal the group
        self.proc = subprocess.Popen(self.cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, env=self.env)
        logf.close()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = self.proc.pid  # leader of its own session/group
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def log_tail(self, n=15):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def _log_lines(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return [re.sub(r"\x1b\[[0-9;]*m", "", l).rstrip() for l in f]
        except OSError:
            return []

    # log lines that matter, most telling first; HDF5-DIAG stacks are counted apart (libhdf5 prints
    # them for failed optional look-ups too, so they are noise more often than not)
    LOG_PATTERNS = (("panic", re.compile(r"panicked at|\bpanic\b")),
                    ("fatal", re.compile(r"abort|Segmentation fault|fatal|Traceback|out of memory|SIGSEGV", re.I)),
                    ("error", re.compile(r"\bERROR\b|\berror:|Exception")))

    def log_problems(self, limit=6):
        lines = self._log_lines()
        found = {k: [] for k, _ in self.LOG_PATTERNS}
        hdf5_diag = 0
        for i, l in enumerate(lines):
            if l.startswith("$ ") or re.match(r"\s*(\d+: |at /|note: )", l):  # command echo, backtrace frames
                continue
            if l.startswith("HDF5-DIAG"):
                hdf5_diag += 1
                continue
            for k, pat in self.LOG_PATTERNS:
                if pat.search(l):
                    if k == "panic" and "panicked at" in l and i + 1 < len(lines):
                        l = l + " " + lines[i + 1].strip()
                    found[k].append(l.strip()[:300])
                    break
        out = {"count": sum(len(v) for v in found.values()), "hdf5_diag": hdf5_diag}
        for k, v in found.items():
            out[k] = len(v)
        out["first"] = (found["panic"] + found["fatal"] + found["error"])[:limit]
        return out

    def crash_evidence(self, limit=4):
        """The lines of the log that tell why it died (panics, aborts, errors), else its last lines."""
        first = self.log_problems(limit)["first"]
        if not first:
            first = [l for l in self._log_lines()[-limit:] if l.strip()]
        return " | ".join(first)[:1500]


def wait_ready(server, probe_urls, timeout, listen_file=None):
    """Wait until the listen file names the base URL (if any) and one probe URL answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise SetupError(f"{server.name} exited with status {server.proc.returncode} before it was ready: "
                             f"{server.crash_evidence()}; "
                             f"log {server.log_path}:\n{server.log_tail()}")
        if listen_file is not None and server.base is None:
            try:
                with open(listen_file) as f:
                    text = f.read().strip()
            except OSError:
                text = ""
            if text:
                first = text.split()[0].rstrip("/")
                if not first.startswith("http"):
                    first = "http://" + first
                if re.match(r"^https?://[^/]+:\d+", first):
                    server.base = first
                    server.zarr = f"{first}/datasets/{DATASET}/zarr"
                    log(f"{server.name}: listening at {server.base}")
        if server.zarr is not None:
            for suffix in probe_urls:
                if http_status(server.zarr + suffix) == 200:
                    return
        time.sleep(0.25)
    raise SetupError(f"{server.name} was not ready after {timeout:.0f} s; log {server.log_path}:\n{server.log_tail()}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- clients

def run_cmd_json(cmd, timeout, what):
    """Run a command that prints one JSON line last on stdout; returns (dict or None, rc, stderr)."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, -1, f"{what}: timed out after {timeout} s"
    line = next((l for l in reversed(p.stdout.strip().splitlines()) if l.startswith("{")), None)
    try:
        return (json.loads(line) if line else None), p.returncode, p.stderr.strip()
    except ValueError:
        return None, p.returncode, p.stderr.strip() + "\n" + p.stdout[-500:]


def header_args(t):
    """fetch.py's arguments for a target's extra request header (`t["header"]`, "Name: value")."""
    return ["--header", t["header"]] if t.get("header") else []


class Client:
    """Fetches a target's chunks (`t`: name, zarr URL, fmt, optional header) with the client of
    `args.client`: fetch.py (every chunk once), oha (as many requests, URLs at random) or wrk
    (the chunk list cycled for `args.wrk_duration` seconds)."""
    def __init__(self, args, workdir):
        self.a, self.workdir = args, workdir
        self.kind = args.client
        self.url_files = {}
        if self.kind == "oha":
            self.exe = shutil.which("oha")
            if not self.exe:
                raise SetupError("--client oha: oha is not on PATH (cargo install oha)")
        elif self.kind == "wrk":
            self.exe = shutil.which("wrk")
            if not self.exe:
                raise SetupError("--client wrk: wrk is not on PATH (apt-get install wrk)")

    def layout_error(self, t, stderr):
        return {"chunks": 0, "errors": 1, "seconds": None, "chunks_per_s": None, "MB_per_s": None, "MB": 0,
                "error_kinds": {"layout": 1}, "stderr": stderr[-600:]}

    def urls_file(self, t):
        if t["name"] not in self.url_files:
            path = os.path.join(self.workdir, f"urls-{t['name']}.txt")
            out, rc, err = run_cmd_json([self.a.python, os.path.join(HERE, "fetch.py"), t["zarr"], VAR,
                                         "--zarr-format", str(t["fmt"]), "--list-urls", path, *header_args(t)],
                                        120, "fetch --list-urls")
            if out is None or rc != 0:
                return None, err
            self.url_files[t["name"]] = (path, out["chunks"])
        return self.url_files[t["name"]], ""

    def fetch(self, t):
        if self.kind == "python":
            cmd = [self.a.python, os.path.join(HERE, "fetch.py"), t["zarr"], VAR, str(self.a.connections),
                   "--zarr-format", str(t["fmt"]), "--timeout", str(self.a.request_timeout), *header_args(t)]
            out, rc, err = run_cmd_json(cmd, self.a.fetch_timeout, "fetch.py")
            if out is None:
                return self.layout_error(t, err)
            if err:
                out["stderr"] = err[-600:]
            return out
        (path_n, err) = self.urls_file(t)
        if path_n is None:
            return self.layout_error(t, err)
        path, n = path_n
        return self.fetch_oha(path, n, t) if self.kind == "oha" else self.fetch_wrk(path, n, t)

    def fetch_oha(self, path, n, t):
        base = [self.exe, "--no-tui", "-n", str(n), "-c", str(self.a.connections),
                "-H", "Accept-Encoding: identity", *(["-H", t["header"]] if t.get("header") else []),
                "--urls-from-file", path]
        out = None
        for fmt_flag in (["--output-format", "json"], ["-j"]):  # newer / older oha
            p = subprocess.run(base + fmt_flag, capture_output=True, text=True, timeout=self.a.fetch_timeout)
            if p.returncode == 0 and p.stdout.strip().startswith("{"):
                out = json.loads(p.stdout)
                break
        if out is None:
            return {"chunks": 0, "errors": 1, "error_kinds": {"oha": 1}, "stderr": p.stderr[-600:],
                    "seconds": None, "chunks_per_s": None, "MB_per_s": None, "MB": 0}
        s = out.get("summary", {})
        codes = out.get("statusCodeDistribution", {}) or {}
        errs = {k: v for k, v in codes.items() if str(k) != "200"}
        errs.update(out.get("errorDistribution", {}) or {})
        secs = s.get("total") or 0
        total_bytes = s.get("totalData") or 0
        res = {"chunks": n, "errors": sum(errs.values()), "seconds": round(secs, 3),
               "chunks_per_s": round(s.get("requestsPerSec") or 0, 1),
               "MB_per_s": round(total_bytes / secs / 1e6, 1) if secs else None, "MB": round(total_bytes / 1e6, 1),
               "p50_ms": round(1000 * (out.get("latencyPercentiles", {}).get("p50") or 0), 2),
               "p99_ms": round(1000 * (out.get("latencyPercentiles", {}).get("p99") or 0), 2),
               "connections": self.a.connections, "client": "oha (URLs drawn at random from the chunk list)"}
        if errs:
            res["error_kinds"] = errs
        return res

    WRK_LUA = r"""
local paths = {}
for line in io.lines(os.getenv("BENCH_URLS_FILE")) do
  local p = line:match("^https?://[^/]+(/.*)$")
  if p then paths[#paths + 1] = p end
end
local nthreads = tonumber(os.getenv("BENCH_WRK_THREADS"))
local created = 0
function setup(thread)
  thread:set("tid", created)
  created = created + 1
end
local headers = {["Accept-Encoding"] = "identity"}
local extra = os.getenv("BENCH_HEADER")  -- one more "Name: value" header, e.g. a bearer token
if extra and extra ~= "" then
  local k, v = extra:match("^([^:]+):%s*(.*)$")
  if k then headers[k] = v end
end
local i = 0
function init(args)
  i = math.floor(tid * #paths / nthreads)  -- threads start at different places in the list
end
function request()
  i = i + 1
  return wrk.format("GET", paths[(i - 1) % #paths + 1], headers)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "bytes": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""

    def fetch_wrk(self, path, n, t):
        script = os.path.join(self.workdir, "wrk-chunks.lua")
        with open(script, "w") as f:
            f.write(self.WRK_LUA)
        threads = max(1, min(self.a.wrk_threads, self.a.connections))
        env = dict(os.environ, BENCH_URLS_FILE=path, BENCH_WRK_THREADS=str(threads), BENCH_HEADER=t.get("header", ""))
        cmd = [self.exe, "-t", str(threads), "-c", str(self.a.connections), "-d", f"{self.a.wrk_duration}s",
               "--timeout", f"{int(self.a.request_timeout)}s", "-s", script, t["zarr"] + "/"]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=self.a.wrk_duration + 120)
        line = next((l for l in reversed(p.stdout.splitlines()) if l.startswith("{")), None)
        if p.returncode != 0 or line is None:
            return {"chunks": 0, "errors": 1, "error_kinds": {"wrk": 1}, "stderr": (p.stderr + p.stdout)[-600:],
                    "seconds": None, "chunks_per_s": None, "MB_per_s": None, "MB": 0}
        w = json.loads(line)
        secs = w["duration_us"] / 1e6
        errs = {k: w[k] for k in ("connect", "read", "write", "status", "timeout") if w[k]}
        res = {"chunks": w["requests"], "errors": sum(errs.values()), "seconds": round(secs, 3),
               "chunks_per_s": round(w["requests"] / secs, 1), "MB_per_s": round(w["bytes"] / secs / 1e6, 1),
               "MB": round(w["bytes"] / 1e6, 1), "p50_ms": round(w["p50_us"] / 1000, 2),
               "p99_ms": round(w["p99_us"] / 1000, 2), "connections": self.a.connections,
               "client": f"wrk -t{threads} -d{self.a.wrk_duration}s (chunk list cycled; MB includes headers)"}
        if errs:
            res["error_kinds"] = errs
        return res


# ----------------------------------------------------------------------------- main

def ensure_data(a, python):
    datadir = os.path.join(a.workdir, f"data-{a.years}y")
    pattern = os.path.join(datadir, f"{VAR}_day_*.nc")
    if len(glob.glob(pattern)) < a.years:
        log(f"writing {a.years} yearly files into {datadir} (make_data.py)")
        p = subprocess.run([python, os.path.join(HERE, "make_data.py"), datadir, str(a.years)])
        if p.returncode != 0:
            raise SetupError("make_data.py failed")
    files = sorted(glob.glob(pattern))
    if len(files) != a.years:
        raise SetupError(f"expected {a.years} files matching {pattern}, found {len(files)}")
    return pattern, files


def cloudify_version(binary):
    try:
        p = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
        return (p.stdout or p.stderr).strip().splitlines()[0] if (p.stdout or p.stderr).strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def describe_log(lp):
    parts = [f"{lp[k]} {k}" for k in ("panic", "fatal", "error") if lp.get(k)]
    if lp.get("hdf5_diag"):
        parts.append(f"{lp['hdf5_diag']} HDF5-DIAG")
    return ", ".join(parts) or "none"


def median(xs):
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 1) if xs else None


def fmt(x, nd=1):
    return "-" if x is None else f"{x:.{nd}f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--years", type=int, default=2, help="yearly files in the dataset (365 chunks each)")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--workdir", default="/var/tmp/cloudify-bench")
    ap.add_argument("--cloudify-bin", default=os.environ.get("CLOUDIFY_BIN") or DEFAULT_BIN,
                    help="default: $CLOUDIFY_BIN, else " + DEFAULT_BIN)
    ap.add_argument("--port-range", default="19500-19599", help="passed to cloudify serve")
    ap.add_argument("--xpublish-port", type=int, default=0, help="default: a free port")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--client", choices=["python", "oha", "wrk"], default="python")
    ap.add_argument("--wrk-duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--wrk-threads", type=int, default=2)
    ap.add_argument("--python", default=sys.executable, help="interpreter for the peer, verify and fetch")
    ap.add_argument("--start-timeout", type=float, default=300)
    ap.add_argument("--request-timeout", type=float, default=120)
    ap.add_argument("--fetch-timeout", type=float, default=1800, help="seconds allowed for one full pass")
    ap.add_argument("--rss-interval", type=float, default=0.1)
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--skip-verify", action="store_true")
    ap.add_argument("--continue-on-mismatch", action="store_true",
                    help="time the servers even if verify.py finds differences (the run still fails)")
    ap.add_argument("--enforce-bar", action="store_true", help="exit 3 if the bar is not met")
    ap.add_argument("--nice", type=int, default=0,
                    help="niceness for run.py and everything it starts (servers, clients); e.g. -10 (needs root) "
                         "to shield the measurement from other work on a shared machine")
    a = ap.parse_args()
    a.workdir = os.path.abspath(a.workdir)

    servers = []
    sampler = None
    failures = []  # reasons for exit 1
    summary = {}

    crashed = set()

    def note_crash(s, when):
        """Record once that server s has died (with the evidence from its log)."""
        if s.alive() or s.name in crashed:
            return False
        crashed.add(s.name)
        ev = s.crash_evidence()
        failures.append(f"{s.name} exited with status {s.proc.returncode} during {when}"
                        + (f"; log: {ev}" if ev else ""))
        log(f"{s.name} exited with status {s.proc.returncode} during {when}; log {s.log_path}")
        return True


    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        os.makedirs(os.path.join(a.workdir, "logs"), exist_ok=True)
        os.makedirs(os.path.join(a.workdir, "results"), exist_ok=True)
        binary = os.path.abspath(a.cloudify_bin)
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            raise SetupError(f"cloudify binary not found: {binary} (build it with `cargo build --release`, "
                             f"then pass --cloudify-bin or set CLOUDIFY_BIN)")
        if a.nice:
            try:
                os.nice(a.nice)  # inherited by both servers and every client process
            except PermissionError:
                log(f"warning: cannot change niceness by {a.nice} (not root?); running at the default")
                a.nice = 0
        client = Client(a, a.workdir)
        load_start = loadavg()
        if load_start > 0.5:
            log(f"warning: load average is {load_start:.2f} before the servers start: other processes are busy "
                f"and will skew the figures (the 'other CPU' column shows by how much)")
        pattern, files = ensure_data(a, a.python)
        data_mb = sum(os.path.getsize(f) for f in files) / 1e6
        log(f"dataset: {len(files)} files, {data_mb:.0f} MB, glob {pattern}")

        # --- start both servers
        logdir = os.path.join(a.workdir, "logs")
        listen_file = os.path.join(a.workdir, "cloudify.listen")
        if os.path.exists(listen_file):
            os.remove(listen_file)
        cl = Server("cloudify", [binary, "serve", DATASET, pattern, "--host", "127.0.0.1",
                                 "--port-range", a.port_range, "--listen-file", listen_file], logdir,
                    # keep its chunk-index cache with the benchmark, not in the user's ~/.cache
                    env=dict(os.environ, CLOUDIFY_CACHE_DIR=os.environ.get("CLOUDIFY_CACHE_DIR")
                             or os.path.join(a.workdir, "cloudify-cache")))
        xport = a.xpublish_port or free_port()
        xp = Server("xpublish", [a.python, os.path.join(HERE, "xpublish_peer.py"), DATASET, str(xport), pattern,
                                 "--host", "127.0.0.1"], logdir)
        xp.base = f"http://127.0.0.1:{xport}"
        xp.zarr = f"{xp.base}/datasets/{DATASET}/zarr"
        servers = [cl, xp]
        t_start = {}
        for s in servers:
            t_start[s.name] = time.monotonic()
            s.start()
            log(f"started {s.name} (pid {s.proc.pid}): {' '.join(s.cmd)}")
        sampler = RssSampler(servers, a.rss_interval)
        sampler.start()
        # wait for both at once, so each start-up time is its own
        startup, problems = {}, []

        def wait(s, lf):
            try:
                wait_ready(s, ["/zarr.json", "/.zmetadata"], a.start_timeout, lf)
                startup[s.name] = round(time.monotonic() - t_start[s.name], 2)
                log(f"{s.name} ready after {startup[s.name]} s: {s.zarr}")
            except SetupError as e:
                problems.append(e)

        waiters = [threading.Thread(target=wait, args=(s, lf), daemon=True)
                   for s, lf in ((cl, listen_file), (xp, None))]
        for w in waiters:
            w.start()
        for w in waiters:
            while w.is_alive():  # join with a timeout keeps Ctrl-C working
                w.join(0.5)
        if problems:
            raise problems[0]

        # --- targets: every (server, Zarr format) that is served
        targets = []
        for s in servers:
            for fmt_, probe in ((2, "/.zmetadata"), (3, "/zarr.json")):
                st = http_status(s.zarr + probe)
                if st == 200 or s is cl:  # cloudify must serve both: a missing one is an error, not a skip
                    targets.append({"name": f"{s.name}-v{fmt_}", "server": s, "zarr": s.zarr, "fmt": fmt_,
                                    "probe_status": st})
                else:
                    log(f"{s.name} does not serve Zarr v{fmt_} ({probe} -> {st}); not measured")
        idle = {s.name: sampler.snapshot(s.name) for s in servers}
        for s in servers:
            note_crash(s, "start-up probes")

        # --- verify
        verify = {"skipped": True}
        if not a.skip_verify:
            specs = [f"{t['zarr']}#v{t['fmt']}" for t in targets]
            log("verify.py: " + " ".join(specs))
            t0 = time.monotonic()
            try:
                p = subprocess.run([a.python, os.path.join(HERE, "verify.py"), *specs, "--var", VAR,
                                    "--source", pattern], capture_output=True, text=True, timeout=1200)
                rc, out_text = p.returncode, (p.stdout + p.stderr).strip()
            except subprocess.TimeoutExpired:
                rc, out_text = 1, "verify.py: timed out after 1200 s"
            print(out_text, flush=True)
            verify = {"ok": rc == 0, "seconds": round(time.monotonic() - t0, 1),
                      "result": out_text.splitlines()[-1] if out_text else ""}
            for s in servers:
                note_crash(s, "verify")
            if rc != 0:
                failures.append("verify.py failed: a server's data could not be read or differ from the netCDF files (see above)")
                if not a.continue_on_mismatch:
                    raise RuntimeError("verify failed; not timing servers that serve wrong data "
                                       "(--continue-on-mismatch to time them anyway)")

        # --- warm up, then timed passes
        runs = {t["name"]: [] for t in targets}
        warm = {}
        schedule = []
        if not a.no_warmup:
            schedule += [("warmup", t) for t in targets]
        for r in range(a.repeats):
            order = targets if r % 2 == 0 else list(reversed(targets))
            schedule += [(f"rep{r + 1}", t) for t in order]
        for phase, t in schedule:
            s = t["server"]
            if not s.alive():
                # the crash was recorded when it happened: don't count it again for every later pass
                res = {"chunks": 0, "errors": 0, "skipped": f"{s.name} had exited", "seconds": None,
                       "chunks_per_s": None, "MB_per_s": None, "MB": 0, "phase": phase}
                log(f"{phase:7s} {t['name']:12s} skipped: {s.name} is not running")
                (runs[t["name"]] if phase.startswith("rep") else warm.setdefault(t["name"], [])).append(res)
                continue
            pids = proc_tree(s.proc.pid)
            c0, w0, m0, t0 = cpu_seconds(pids), os.times(), machine_busy_seconds(), time.monotonic()
            h0 = w0.user + w0.system  # run.py itself (RSS sampler), not the load
            res = client.fetch(t)
            c1, w1, m1, t1 = cpu_seconds(proc_tree(s.proc.pid) or pids), os.times(), machine_busy_seconds(), time.monotonic()
            n = res.get("chunks") or 0
            res["client_cpu_s"] = round((w1.children_user + w1.children_system)
                                        - (w0.children_user + w0.children_system), 2)
            res["harness_cpu_s"] = round(w1.user + w1.system - h0, 2)
            res["phase"] = phase
            if s.alive():
                res["server_cpu_s"] = round(c1 - c0, 2)
                # CPU used meanwhile by anything but this server and the load client: other processes
                # on the machine (including the idle peer server) compete with the measurement
                res["other_cpu_share"] = round(max(0.0, (m1 - m0) - (c1 - c0) - res["client_cpu_s"]
                                                   - res["harness_cpu_s"])
                                               / ((t1 - t0) * os.cpu_count()), 3)
                res["server_cpu_ms_per_chunk"] = round(1000 * (c1 - c0) / n, 3) if n else None
            elif note_crash(s, f"{phase} of {t['name']}"):
                res["errors"] = res.get("errors", 0) + 1
                res.setdefault("error_kinds", {})["server exited"] = 1
            log(f"{phase:7s} {t['name']:12s} " + (
                f"{fmt(res.get('chunks_per_s'))} chunks/s, {fmt(res.get('MB_per_s'))} MB/s, "
                f"{res.get('errors')} errors, {res.get('seconds')} s, server CPU {res.get('server_cpu_s', '-')} s"
                if res.get("chunks_per_s") is not None else f"FAILED {res.get('error_kinds')} {res.get('stderr', '')}"))
            if res.get("errors"):
                failures.append(f"{t['name']} {phase}: {res['errors']} errors {res.get('error_kinds')}"
                                + (f" ({res['stderr'].splitlines()[-1][:400]})" if res.get("stderr") else ""))
            (runs[t["name"]] if phase.startswith("rep") else warm.setdefault(t["name"], [])).append(res)

        # --- collect
        end = {s.name: sampler.snapshot(s.name) for s in servers}
        sampler.stop_event.set()
        per_target = {}
        for t in targets:
            all_rs = runs[t["name"]]
            rs = [r for r in all_rs if not r.get("skipped")]
            per_target[t["name"]] = {
                "server": t["server"].name, "zarr_format": t["fmt"], "url": t["zarr"],
                "chunks": rs[0]["chunks"] if rs else None,
                "errors": sum(r.get("errors", 0) for r in rs) + sum(r.get("errors", 0) for r in warm.get(t["name"], [])),
                "passes": len(rs), "passes_skipped": len(all_rs) - len(rs),
                "chunks_per_s": median([r.get("chunks_per_s") for r in rs]),
                "chunks_per_s_all": [r.get("chunks_per_s") for r in rs],
                "MB_per_s": median([r.get("MB_per_s") for r in rs]),
                "MB_per_pass": median([r.get("MB") for r in rs]),
                "p50_ms": median([r.get("p50_ms") for r in rs]),
                "p99_ms": median([r.get("p99_ms") for r in rs]),
                "server_cpu_ms_per_chunk": median([r.get("server_cpu_ms_per_chunk") for r in rs]),
                "client_cpu_ms_per_chunk": median([1000 * r["client_cpu_s"] / r["chunks"] if r.get("chunks") and "client_cpu_s" in r else None
                                                   for r in rs]),
                "warmup_chunks_per_s": (warm.get(t["name"]) or [{}])[0].get("chunks_per_s"),
                "other_cpu_share": median([r.get("other_cpu_share") for r in rs]),
                "other_cpu_share_max": max([r.get("other_cpu_share") or 0 for r in rs], default=None),
            }
        per_server = {}
        for s in servers:
            per_server[s.name] = {
                "pid": s.proc.pid, "processes": end[s.name]["pids"], "startup_s": startup.get(s.name),
                "rss_idle_MB": round(idle[s.name]["rss_now_kb"] * PAGE_MB, 1),
                "rss_peak_MB": round(max(end[s.name]["hwm_max_kb"], end[s.name]["rss_max_kb"]) * PAGE_MB, 1),
                "rss_end_MB": round(end[s.name]["rss_now_kb"] * PAGE_MB, 1),
                "rss_samples": end[s.name]["samples"],
                "alive_at_end": s.alive(), "log": s.log_path, "log_problems": s.log_problems(),
            }
            if s.log_problems()["count"] and s is cl:
                log(f"note: {s.log_problems()['count']} suspicious lines in {s.log_path}")

        def best(server):
            c = [(v["chunks_per_s"], k) for k, v in per_target.items() if v["server"] == server and v["chunks_per_s"]]
            return max(c) if c else (None, None)

        xp_best, xp_best_name = best("xpublish")
        ratios = {}
        for k, v in per_target.items():
            if v["server"] != "cloudify":
                continue
            r = {"vs": xp_best_name,
                 "chunks_per_s_ratio": round(v["chunks_per_s"] / xp_best, 2) if v["chunks_per_s"] and xp_best else None}
            same = per_target.get(f"xpublish-v{v['zarr_format']}")
            if same and same["chunks_per_s"] and v["chunks_per_s"]:
                r["chunks_per_s_ratio_same_format"] = round(v["chunks_per_s"] / same["chunks_per_s"], 2)
            cpu_x = per_target.get(xp_best_name, {}).get("server_cpu_ms_per_chunk") if xp_best_name else None
            if cpu_x and v["server_cpu_ms_per_chunk"]:
                r["server_cpu_per_chunk_ratio"] = round(v["server_cpu_ms_per_chunk"] / cpu_x, 3)
            ratios[k] = r
        rss_ratio = (round(per_server["cloudify"]["rss_peak_MB"] / per_server["xpublish"]["rss_peak_MB"], 3)
                     if per_server["xpublish"]["rss_peak_MB"] else None)
        speedups = [r["chunks_per_s_ratio"] for r in ratios.values()]
        bar = {"speedup_needed": BAR_SPEEDUP, "rss_ratio_allowed": round(BAR_RSS, 3),
               "min_chunks_per_s_ratio": min(speedups) if speedups and None not in speedups else None,
               "rss_ratio": rss_ratio}
        bar["met"] = bool(bar["min_chunks_per_s_ratio"] is not None and bar["min_chunks_per_s_ratio"] >= BAR_SPEEDUP
                          and rss_ratio is not None and rss_ratio <= BAR_RSS)

        summary = {
            "when": dt.datetime.now().isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "cloudify": {"bin": binary, "version": cloudify_version(binary)},
            "dataset": {"files": len(files), "MB": round(data_mb, 1), "glob": pattern, "var": VAR},
            "load_average_at_start": load_start, "nice": a.nice,
            "client": a.client, "connections": a.connections, "repeats": a.repeats, "warmup": not a.no_warmup,
            "verify": verify, "targets": per_target, "servers": per_server,
            "ratios": ratios, "rss_ratio": rss_ratio, "bar": bar,
            "ok": not failures, "failures": failures,
        }

        # --- report
        print()
        print(f"cloudify vs xpublish: {VAR}, {len(files)} files ({data_mb:.0f} MB), client {a.client}, "
              f"{a.connections} connections, median of {a.repeats} passes, {os.cpu_count()} CPUs")
        hdr = (f"{'target':13s} {'chunks':>6s} {'err':>4s} {'chunks/s':>9s} {'(min-max)':>15s} {'MB/s':>7s} "
               f"{'MB/pass':>8s} {'p50 ms':>7s} {'p99 ms':>7s} {'srv CPU ms/chunk':>16s} {'cli CPU ms/chunk':>16s} {'other CPU':>9s}")
        print(hdr)
        print("-" * len(hdr))
        for k, v in per_target.items():
            allv = [x for x in v["chunks_per_s_all"] if x is not None]
            rng = f"({min(allv):.0f}-{max(allv):.0f})" if allv else ""
            print(f"{k:13s} {v['chunks'] or 0:6d} {v['errors']:4d} {fmt(v['chunks_per_s']):>9s} {rng:>15s} "
                  f"{fmt(v['MB_per_s']):>7s} {fmt(v['MB_per_pass']):>8s} {fmt(v['p50_ms']):>7s} {fmt(v['p99_ms']):>7s} "
                  f"{fmt(v['server_cpu_ms_per_chunk'], 2):>16s} {fmt(v['client_cpu_ms_per_chunk'], 2):>16s} "
                  f"{'-' if v['other_cpu_share'] is None else format(v['other_cpu_share'], '.0%'):>9s}")
        print()
        hdr2 = f"{'server':9s} {'startup s':>9s} {'RSS idle MB':>11s} {'RSS peak MB':>11s} {'RSS end MB':>10s} {'procs':>5s}  log problems"
        print(hdr2)
        print("-" * len(hdr2))
        for k, v in per_server.items():
            print(f"{k:9s} {fmt(v['startup_s'], 2):>9s} {v['rss_idle_MB']:11.1f} {v['rss_peak_MB']:11.1f} "
                  f"{v['rss_end_MB']:10.1f} {v['processes']:5d}  {describe_log(v['log_problems'])}")
        print()
        for k, r in ratios.items():
            extra = (f", same format {r['chunks_per_s_ratio_same_format']}x" if "chunks_per_s_ratio_same_format" in r else "")
            cpu = (f", server CPU per chunk {r['server_cpu_per_chunk_ratio']}x" if "server_cpu_per_chunk_ratio" in r else "")
            sp = "n/a" if r["chunks_per_s_ratio"] is None else f"{r['chunks_per_s_ratio']:.2f}x"
            print(f"ratio {k} / {r['vs']}: chunks/s {sp}{extra}{cpu}")
        print(f"ratio RSS peak cloudify / xpublish: {fmt(rss_ratio, 3)}")
        print(f"bar (>= {BAR_SPEEDUP:.0f}x chunks/s and <= 1/3 RSS): {'MET' if bar['met'] else 'NOT MET'}")
        print(f"verify: {verify.get('result', 'skipped')}")
        for k, v in per_server.items():
            for line in v["log_problems"]["first"]:
                print(f"log {k}: {line}")
        noisy = max([v["other_cpu_share_max"] or 0 for v in per_target.values()], default=0)
        if noisy > 0.10:
            print(f"WARNING: other processes used up to {noisy:.0%} of the machine's CPU during a timed pass "
                  f"(load average {load_start:.2f} at start); the figures are skewed: re-run on a quiet machine")
        summary["other_cpu_share_max"] = noisy
        for f_ in failures:
            print(f"FAILURE: {f_}")
        print()
        print("JSON " + json.dumps(summary))
        path = os.path.join(a.workdir, "results", f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json")
        with open(path, "w") as f:
            json.dump(summary, f, indent=2)
        log(f"summary written to {path}")
        if failures:
            return 1
        if a.enforce_bar and not bar["met"]:
            return 3
        return 0
    except SetupError as e:
        log(f"setup failed: {e}")
        return 2
    except KeyboardInterrupt as e:
        log(f"interrupted ({e or 'Ctrl-C'}); stopping servers")
        return 130
    except RuntimeError as e:
        log(f"failed: {e}")
        for f_ in failures:
            print(f"FAILURE: {f_}")
        return 1
    finally:
        if sampler is not None:
            sampler.stop_event.set()
        # ignore further Ctrl-C while stopping the servers, so they are never left behind
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for s in servers:
            if s.alive():
                s.stop()
                log(f"stopped {s.name} (pid {s.proc.pid})")
            elif s.proc is not None:
                log(f"{s.name} (pid {s.proc.pid}) had already exited with status {s.proc.returncode}")


if __name__ == "__main__":
    sys.exit(main())
