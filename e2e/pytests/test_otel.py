"""OpenTelemetry traces (issue #18): a real OTLP receiver, `rotel` (its agent binary from the
PyPI wheel, OTLP/HTTP in, every received span printed by its debug log), receives the spans of
`cloudify serve`, a `cloudify worker` it sends computed chunks to, and `cloudify catalog`.

* a request sent with a W3C `traceparent` yields a server span with that trace id and parent,
  and the dataset / chunk-read spans under it; a computed chunk's worker spans are children of
  the server's client span, in the same trace;
* `serve --register` carries the trace into the STAC API (the catalog client's `traceparent`);
* spans are flushed when the processes stop on SIGTERM (the batch delay is left at its 5 s
  default, and every process is stopped before the spans are read);
* with no endpoint, `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`, nothing is
  exported; a wrong OTEL_* value stops the process with a message naming it;
* no bearer token or query-string secret appears in anything exported;
* sampling is decided once per request: dropped requests leave no span at all, kept ones their
  whole tree, and a new trace's id is the one its ratio decision was taken on.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

import helpers
from conftest import find_binary, start_server, stop_server, wait_until_settled

DAY = sorted(str(p) for p in helpers.cmip6_root().rglob("ta_day_MIROC6_historical_r1i1p1f1_gn_200[0-2]*.nc"))
CONFIG = """datasets:
  - name: day
    sources: [{sources}]
    processing:
      variables:
        tac: {{expr: "ta - 273.15"}}
"""
SECRET_TOKEN = "tok-" + secrets.token_hex(16)
SECRET_SIG = "sig" + secrets.token_hex(16)
TRACE_STORED = secrets.token_hex(16)
TRACE_COMPUTED = secrets.token_hex(16)
TRACE_CATALOG = secrets.token_hex(16)
PARENT = secrets.token_hex(8)


def _rotel_agent() -> Path:
    import rotel

    return Path(rotel.__file__).parent / "rotel-agent"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Collector:
    """rotel's agent: OTLP/HTTP receiver, spans printed to its output by the debug log."""

    def __init__(self, workdir: Path):
        self.http_port, grpc_port = _free_port(), _free_port()
        self.out = workdir / "rotel.out"
        self.proc = subprocess.Popen(
            [str(_rotel_agent()), "start",
             "--otlp-http-endpoint", f"127.0.0.1:{self.http_port}",
             "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}",
             "--exporter", "blackhole",
             "--debug-log", "traces", "--debug-log-verbosity", "detailed",
             "--log-format", "text"],
            stdout=open(self.out, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(os.environ, NO_COLOR="1"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("rotel exited: " + self.out.read_text(errors="replace"))
            try:
                socket.create_connection(("127.0.0.1", self.http_port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("rotel did not listen")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def text(self) -> str:
        return re.sub(r"\x1b\[[0-9;]*m", "", self.out.read_text(errors="replace"))

    def spans(self) -> list[dict]:
        return parse_spans(self.text())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def parse_spans(text: str) -> list[dict]:
    """Spans of rotel's detailed debug log: service name (resource), ids, name, kind and
    attributes of each."""
    spans = []
    service = None
    cur = None
    for line in text.splitlines():
        m = re.search(r"service\.name: Str\((.*)\)", line)
        if m and cur is None:
            service = m.group(1)
            continue
        if re.search(r"\bSpan #\d+", line):
            cur = {"service": service, "attrs": {}}
            spans.append(cur)
            continue
        if re.search(r"ResourceSpans #\d+", line):
            cur = None
            service = None
            continue
        if cur is None:
            continue
        m = re.match(r"\s*(Trace ID|Parent ID|ID|Name|Kind)\s*:\s*(.*?)\s*$", line)
        if m:
            cur[{"Trace ID": "trace", "Parent ID": "parent", "ID": "id", "Name": "name", "Kind": "kind"}[m.group(1)]] = m.group(2)
            continue
        m = re.match(r"\s*->\s*([\w.]+):\s*\w+\((.*)\)\s*$", line)
        if m:
            cur["attrs"][m.group(1)] = m.group(2)
    return spans


def _otel_env(collector: Collector, **more) -> dict:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, "CLOUDIFY_LOG": "info"}
    env.update(more)
    return env


def _traceparent(trace: str, parent: str = PARENT, flags: str = "01") -> str:
    return f"00-{trace}-{parent}-{flags}"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Runs the whole scenario once (rotel, a worker, a server with --compute, a catalog and a
    registering server; requests with traceparent), stops every cloudify process with
    SIGTERM, then hands the received spans to the tests."""
    if not find_binary():
        pytest.skip("cloudify binary not built")
    assert len(DAY) == 3, "sample data missing"
    root = tmp_path_factory.mktemp("otel")
    cfg = root / "cloudify.yaml"
    cfg.write_text(CONFIG.format(sources=", ".join(f'"{f}"' for f in DAY)))
    col = Collector(root)
    procs = []
    try:
        env = _otel_env(col, CLOUDIFY_CACHE_DIR=str(root / "cache"))
        w_url, w, w_log = start_server(["worker", "--config", str(cfg), "--threads", "1"], root, "worker",
                                       extra_env=env)
        procs.append(w)
        s_url, s, s_log = start_server(["serve", "--config", str(cfg), "--compute", w_url,
                                        "--compute-cache-bytes", "0"], root, "serve", extra_env=env)
        procs.append(s)
        wait_until_settled(s_url, ["day"], s)
        headers = {"Authorization": f"Bearer {SECRET_TOKEN}"}
        stored = requests.get(f"{s_url}/datasets/day/zarr/ta/0.0.0.0", params={"sig": SECRET_SIG},
                              headers={**headers, "traceparent": _traceparent(TRACE_STORED)}, timeout=60)
        computed = requests.get(f"{s_url}/datasets/day/zarr/tac/0.0.0.0",
                                headers={**headers, "traceparent": _traceparent(TRACE_COMPUTED)}, timeout=60)
        untraced = requests.get(f"{s_url}/datasets/day/zarr/ta/.zarray", timeout=60)
        # the catalog, and a server registering in it (its catalog client injects traceparent)
        (root / "token").write_text(SECRET_TOKEN + "\n")
        c_url, c, c_log = start_server(["catalog", "--data", str(root / "store"), "--token-file",
                                        str(root / "token")], root, "catalog", extra_env=env)
        procs.append(c)
        r_url, r, r_log = start_server(["serve", "--demo", "--cache-dir", str(root / "cache"), "--register", c_url,
                                        "--register-token-file", str(root / "token")], root, "register",
                                       extra_env=env)
        procs.append(r)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if requests.get(f"{c_url}/collections/cloudify/items/demo", timeout=10).status_code == 200:
                break
            time.sleep(0.2)
        searched = requests.get(f"{c_url}/search", params={"limit": 1},
                                headers={"traceparent": _traceparent(TRACE_CATALOG)}, timeout=30)
        # SIGTERM: each process drains and flushes its queued spans before exiting
        for p in procs:
            stop_server(p)
        codes = [p.returncode for p in procs]
        deadline = time.monotonic() + 15
        text = col.text()
        while time.monotonic() < deadline:
            text = col.text()
            if "cloudify-catalog" in text and "cloudify-worker" in text:
                break
            time.sleep(0.2)
        time.sleep(1)
        yield {
            "spans": col.spans(), "text": col.text(), "codes": codes, "stored": stored, "computed": computed,
            "untraced": untraced, "searched": searched,
            "logs": {"serve": s_log, "worker": w_log, "catalog": c_log, "register": r_log},
        }
    finally:
        for p in procs:
            stop_server(p)
        col.stop()


def _in_trace(spans, trace):
    return [s for s in spans if s.get("trace") == trace]


def test_requests_answered_and_processes_exit_cleanly(run):
    assert run["stored"].status_code == 200, run["stored"].text
    assert run["computed"].status_code == 200, run["computed"].text
    assert run["untraced"].status_code == 200, run["untraced"].text
    assert run["searched"].status_code == 200, run["searched"].text
    assert run["codes"] == [0, 0, 0, 0]
    assert "OpenTelemetry: exporting traces over OTLP/HTTP" in run["logs"]["serve"].read_text()


def test_server_span_has_the_callers_parent(run):
    spans = _in_trace(run["spans"], TRACE_STORED)
    roots = [s for s in spans if s["kind"].lower().endswith("server")]
    assert len(roots) == 1, spans
    req = roots[0]
    assert req["parent"] == PARENT
    assert req["service"] == "cloudify-serve"
    assert req["name"] == "GET /datasets/{id}/zarr/{*key}"
    assert req["attrs"]["http.response.status_code"] == "200"
    assert req["attrs"]["url.path"] == "/datasets/day/zarr/ta/0.0.0.0"
    # request -> dataset -> chunk.read (a stored chunk passes through)
    by_id = {s["id"]: s for s in spans}
    ds = [s for s in spans if s["name"] == "dataset"]
    assert len(ds) == 1 and ds[0]["parent"] == req["id"]
    assert ds[0]["attrs"]["dataset"] == "day" and ds[0]["attrs"]["key"] == "ta/0.0.0.0"
    reads = [s for s in spans if s["name"] == "chunk.read"]
    assert len(reads) == 1 and by_id[reads[0]["parent"]]["name"] == "dataset"
    assert int(reads[0]["attrs"]["bytes"]) == len(run["stored"].content)
    assert reads[0]["attrs"]["passthrough"] in ("true", "false")


def test_worker_spans_are_children_in_the_same_trace(run):
    spans = _in_trace(run["spans"], TRACE_COMPUTED)
    by_id = {s["id"]: s for s in spans}
    services = {s["service"] for s in spans}
    assert services == {"cloudify-serve", "cloudify-worker"}, services
    sends = [s for s in spans if s["name"] == "compute.send"]
    assert sends and all(s["service"] == "cloudify-serve" for s in sends)
    worker_reqs = [s for s in spans if s["service"] == "cloudify-worker" and s["kind"].lower().endswith("server")]
    assert worker_reqs, spans
    for wr in worker_reqs:
        # the worker's request span hangs under the server's client span of that try
        assert by_id[wr["parent"]]["name"] == "compute.send"
        assert wr["name"] == "POST /v1/task", wr
    tasks = [s for s in spans if s["name"] == "compute.task"]
    assert tasks and all(by_id[t["parent"]]["service"] == "cloudify-worker" for t in tasks)
    assert tasks[0]["attrs"]["dataset"] == "day"
    # and the server's side starts from the caller's parent
    assert [s for s in spans if s["parent"] == PARENT and s["service"] == "cloudify-serve"]


def test_untraced_request_starts_its_own_trace(run):
    mine = {TRACE_STORED, TRACE_COMPUTED, TRACE_CATALOG}
    other = [s for s in run["spans"] if s["service"] == "cloudify-serve"
             and s.get("attrs", {}).get("url.path") == "/datasets/day/zarr/ta/.zarray"]
    assert len(other) == 1 and other[0]["trace"] not in mine
    assert set(other[0]["parent"].strip("0")) == set(), other[0]  # a root span


def test_catalog_joins_traces(run):
    spans = run["spans"]
    search = [s for s in _in_trace(spans, TRACE_CATALOG) if s["service"] == "cloudify-catalog"]
    assert len(search) == 1 and search[0]["parent"] == PARENT and search[0]["name"] == "GET /search"
    # `serve --register`'s client spans are the parents of the catalog's request spans
    clients = {s["id"]: s for s in spans if s["name"] == "stac.request" and s["service"] == "cloudify-serve"}
    assert clients, "no stac.request span from serve --register"
    children = [s for s in spans if s["service"] == "cloudify-catalog" and s["parent"] in clients]
    assert children, "the catalog's spans are not children of the registering server's"
    for ch in children:
        assert ch["trace"] == clients[ch["parent"]]["trace"]


def test_no_secret_is_exported(run):
    text = run["text"]
    assert SECRET_TOKEN not in text
    assert SECRET_SIG not in text
    assert "Bearer" not in text
    for log in run["logs"].values():
        assert SECRET_TOKEN not in log.read_text()


def test_sampling_is_decided_once_per_request(tmp_path):
    """The sampler's decision is taken once per request, before any span: a dropped request
    leaves no span at all (no orphan dataset/chunk spans), a kept one its whole tree, a
    caller's sampled flag is followed both ways, and a new trace's id is the one the ratio
    was decided on (the SDK's rule for traceidratio 0.5: the trace id's 17th hex digit < 8)."""
    if not find_binary():
        pytest.skip("cloudify binary not built")
    cfg = tmp_path / "cloudify.yaml"
    cfg.write_text(CONFIG.format(sources=", ".join(f'"{f}"' for f in DAY)))
    col = Collector(tmp_path)
    try:
        env = _otel_env(col, CLOUDIFY_CACHE_DIR=str(tmp_path / "cache"),
                        OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG="0.5",
                        OTEL_SERVICE_NAME="cloudify-sampled")
        url, proc, log = start_server(["serve", "--config", str(cfg)], tmp_path, "sampled", extra_env=env)
        dropped = [secrets.token_hex(16) for _ in range(5)]
        kept = [secrets.token_hex(16) for _ in range(5)]
        try:
            wait_until_settled(url, ["day"], proc)
            za = requests.get(f"{url}/datasets/day/zarr/ta/.zarray", timeout=30).json()
            steps = -(-za["shape"][0] // za["chunks"][0])
            for i in range(40):
                var = "ta" if i % 4 else "tac"  # stored and computed chunks
                r = requests.get(f"{url}/datasets/day/zarr/{var}/{i % steps}.0.0.0", timeout=60)
                assert r.status_code == 200, r.text
            for t in dropped:
                r = requests.get(f"{url}/datasets/day/zarr/ta/0.0.0.0",
                                 headers={"traceparent": _traceparent(t, flags="00")}, timeout=60)
                assert r.status_code == 200
            for t in kept:
                r = requests.get(f"{url}/datasets/day/zarr/ta/0.0.0.0",
                                 headers={"traceparent": _traceparent(t)}, timeout=60)
                assert r.status_code == 200
        finally:
            stop_server(proc)
        assert proc.returncode == 0
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not all(_in_trace(col.spans(), t) for t in kept):
            time.sleep(0.2)
        time.sleep(1)
        spans = [s for s in col.spans() if s["service"] == "cloudify-sampled"]
        requests_by_trace = {s["trace"]: s for s in spans if s["name"].startswith("GET ")}
        ids = {s["id"] for s in spans}
        # no orphans: every span is in a trace whose request span was kept, under a kept parent
        for s in spans:
            assert s["trace"] in requests_by_trace, s
            if not s["name"].startswith("GET "):
                assert s["parent"] in ids, s
        for t in dropped:
            assert _in_trace(spans, t) == []
        for t in kept:
            names = {s["name"] for s in _in_trace(spans, t)}
            assert {"dataset", "chunk.read"} <= names, names
            assert requests_by_trace[t]["parent"] == PARENT
        roots = [t for t in requests_by_trace if t not in kept]
        assert all(t[16] in "01234567" for t in roots), roots
        chunk_roots = [t for t in roots
                       if requests_by_trace[t]["attrs"].get("url.path", "").startswith("/datasets/day/zarr/")]
        assert 5 <= len(chunk_roots) <= 35, len(chunk_roots)  # binomial(40, 0.5)
        for t in chunk_roots:
            assert "dataset" in {s["name"] for s in _in_trace(spans, t)}
    finally:
        col.stop()


@pytest.mark.parametrize("env", [
    {},  # no endpoint at all
    {"OTEL_SDK_DISABLED": "true"},
    {"OTEL_TRACES_EXPORTER": "none"},
])
def test_off_exports_nothing(tmp_path, env):
    if not find_binary():
        pytest.skip("cloudify binary not built")
    col = Collector(tmp_path)
    try:
        full = dict(env, OTEL_SERVICE_NAME="cloudify-off-check")
        if env:
            full["OTEL_EXPORTER_OTLP_ENDPOINT"] = col.endpoint
        url, proc, log = start_server(["serve", "--demo", "--cache-dir", str(tmp_path / "cache")], tmp_path, "off",
                                      extra_env=full)
        try:
            wait_until_settled(url, ["demo"], proc)
            r = requests.get(f"{url}/datasets/demo/zarr/.zmetadata",
                             headers={"traceparent": _traceparent(TRACE_STORED)}, timeout=30)
            assert r.status_code == 200
        finally:
            stop_server(proc)
        assert proc.returncode == 0
        time.sleep(1)
        assert "cloudify-off-check" not in col.text()
        assert col.spans() == []
        assert "OpenTelemetry" not in log.read_text()
    finally:
        col.stop()


@pytest.mark.parametrize("var,value", [
    ("OTEL_TRACES_SAMPLER", "sometimes"),
    ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
])
def test_bad_settings_stop_with_the_variable_named(tmp_path, var, value):
    binary = find_binary()
    if not binary:
        pytest.skip("cloudify binary not built")
    env = dict(os.environ, OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", OTEL_TRACES_SAMPLER="traceidratio")
    env[var] = value
    p = subprocess.run([binary, "serve", "--demo", "--cache-dir", str(tmp_path / "cache")], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert f"{var}=\"{value}\"" in p.stderr, p.stderr
    assert "panicked" not in p.stderr


def test_chart_otel_values():
    """The chart's `otel` values become OTEL_* env of the operator and the catalog (the operator
    passes them on, see operator/tests/build.rs); nothing by default; bad values refused."""
    import helm_python as helm

    import test_chart as tc

    on = {"otel": {"endpoint": "http://otel-collector.obs.svc:4318", "sampler": "parentbased_traceidratio",
                   "samplerArg": "0.25"}}
    for values, want in [({}, {}), (on, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.obs.svc:4318",
                                         "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                                         "OTEL_TRACES_SAMPLER_ARG": "0.25"})]:
        objs = tc.objects(values)
        for name in ("cloudify-operator", "cloudify-catalog"):
            env = tc.one(objs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0].get("env", [])
            got = {e["name"]: e.get("value") for e in env if e["name"].startswith("OTEL_")}
            assert got == want, (name, got)
    with helm.Chart.load(tc.CHART) as chart:
        for bad, where in [({"otel": {"endpoint": "collector:4318"}}, "/otel/endpoint"),
                           ({"otel": {"sampler": "sometimes"}}, "/otel/sampler"),
                           ({"otel": {"samplerArg": "2"}}, "/otel/samplerArg")]:
            with pytest.raises(helm.HelmValuesError, match=re.escape(where)):
                chart.validate_schema(bad)
