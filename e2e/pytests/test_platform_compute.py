"""Compute pods on the platform (issue #15): ``kubectl apply`` of a CloudifyDataset with
``spec.compute`` starts a server pod and a pool of ``cloudify worker`` pods; reductions requested
through the nginx ingress are computed on the workers (their /metrics count the tasks) and are
bit-identical to an in-process ``cloudify serve`` over the operator's own ConfigMap, and equal
xarray; the HPA's load annotation grows the pool 1 -> 3 and the server, under continuous
reductions, then sends tasks to all three pods; a worker SIGKILLed during reductions costs retries, not answers; turning compute
off removes the pool and the server computes in-process again.

How the server pod reaches ``http://e2e-ta-compute.<ns>.svc:9000`` on the local platform: the
pod runtime replaces Service DNS names in pods' args with a loopback listener per Service port
that forwards every TCP connection to a ready endpoint, as kube-proxy does
(e2e/src/runtime/cluster_ip.rs). What is emulated, and said so: the HPA's CPU load is the
annotation ``e2e.cloudify.io/cpu-load`` (no metrics-server, no real CPU measurement), and DNS
(the name is rewritten in the pod's args).

The fixture ``platform`` is the one of test_platform.py (its own ``cloudify-e2e up`` for this
module). Tests run in file order and build on each other.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import signal
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import requests
import xarray as xr

import helpers
from conftest import start_server, stop_server, wait_until_settled
from test_platform import (  # noqa: F401  (platform is a fixture)
    LOAD_ANNOTATION,
    MANIFESTS,
    REPO,
    TIMEOUT,
    _cmdline,
    platform,
    pod_ready,
    render,
    wait_for,
)

NAME = "e2e-ta"  # manifests/compute.yaml
DATASET = "e2e_ta"
COMPUTE = f"{NAME}-compute"
FILES = sorted(helpers.cmip6_root().rglob("ta_day_MIROC6_historical_r1i1p1f1_gn_200[0-2]*.nc"))
# ad-hoc groupby products: each a distinct reduction, so no answer comes from a cache
PRODUCTS = [f"{DATASET}/groupby/ta/{c}/{a}" for a in ("mean", "max", "std", "min", "median", "var")
            for c in ("time.month", "time.season", "time.year", "time.dayofyear")]
# reductions no earlier test asks for: the server's computed-chunk cache holds every answer
# it gave, so only these reach a worker after the autoscaler test has spent PRODUCTS
UNASKED = [f"{DATASET}/groupby/ta/{c}/{a}" for a in ("sum", "count", "first", "last")
           for c in ("time.month", "time.season", "time.year")]


def _pods(p, component: str) -> list[dict]:
    sel = f"app.kubernetes.io/instance={NAME},app.kubernetes.io/component={component}"
    items = (p.get("pods", selector=sel) or {}).get("items") or []
    return [x for x in items if not x["metadata"].get("deletionTimestamp")]


def _endpoints(p, service: str) -> dict[str, str]:
    """Ready endpoints of a Service as ``{pod name: base URL}`` (the runtime's loopback ports)."""
    out = {}
    items = (p.get("endpointslices", selector=f"kubernetes.io/service-name={service}") or {}).get("items") or []
    for s in items:
        port = (s.get("ports") or [{}])[0].get("port")
        for e in s.get("endpoints") or []:
            if (e.get("conditions") or {}).get("ready") is not False and port:
                out[e["targetRef"]["name"]] = f"http://{e['addresses'][0]}:{port}"
    return out


def _metric(url: str, name: str, labels: str = "") -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)$", line)
        if m and labels in (m.group(1) or ""):
            total += float(m.group(2))
    return total


# More unread bytes than a readiness/liveness probe's request ever holds: the runtime's probe
# is `GET /readyz HTTP/1.1` with accept and host headers (about 60 bytes), while a task is
# `POST /v1/task` with a 46-byte content-type, the version header and a body (over 200). A
# frozen victim also leaves its probes unread, so counting any unread bytes mistook a probe for
# a task under load (the kill then cost no retry and the test failed).
TASK_BYTES = 128


def _unread_requests(port: int) -> int:
    """Established loopback connections to `port` holding a task's request its process has not
    read (probes, smaller, are not counted)."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == "01" and int(f[4].split(":")[1], 16) > TASK_BYTES:
                n += 1
    return n


def _worker_tasks(p) -> dict[str, float]:
    return {pod: _metric(url, "cloudify_worker_tasks_total", 'kind="partial",outcome="ok"')
            for pod, url in _endpoints(p, COMPUTE).items()}


def _open(url: str) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xr.open_dataset(url, engine="zarr", zarr_format=2, consolidated=True).load()


def _same(a: xr.Dataset, b: xr.Dataset, what: str) -> None:
    assert sorted(a.data_vars) == sorted(b.data_vars), what
    for v in a.data_vars:
        assert a[v].dtype == b[v].dtype, (what, v)
        assert np.array_equal(a[v].values, b[v].values, equal_nan=True), (what, v)


@pytest.fixture(scope="module")
def ctx(platform):
    """The CR applied and Ready, plus an in-process server over the operator's ConfigMap."""
    p = platform
    assert len(FILES) == 3, "esmvaltool sample data missing"
    data = p.data_dir / "compute"
    data.mkdir(parents=True, exist_ok=True)
    for f in FILES:
        shutil.copy(f, data / f.name)
        os.chmod(data / f.name, 0o644)
    p.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"), namespaced=False)
    p.kubectl("apply", "-f", "-", stdin=render(MANIFESTS / "namespace.yaml", p), namespaced=False)
    p.kubectl("apply", "-f", "-", stdin=render(MANIFESTS / "compute.yaml", p), namespaced=False)
    p.kubectl("wait", "--for=condition=Ready", f"cds/{NAME}", f"--timeout={int(TIMEOUT)}s", timeout=TIMEOUT + 30)
    wait_for("a ready worker pod behind the compute Service", lambda: len(_endpoints(p, COMPUTE)) == 1, platform=p)
    # the same configuration the pods run, computed in this process (no --compute)
    cm = p.get("configmap", NAME)
    (text,) = cm["data"].values()
    root = p.data_dir.parent / "inproc"
    root.mkdir(exist_ok=True)
    cfg = root / "cloudify.yaml"
    cfg.write_text(text)
    url, proc, _ = start_server(["serve", "--config", str(cfg), "--compute-cache-bytes", "0"], root, "inproc",
                                extra_env={"CLOUDIFY_CACHE_DIR": str(root / "cache")})
    try:
        wait_until_settled(url, [DATASET], proc)
        yield {"p": p, "local": url, "served": f"{p.ingress_url}/datasets"}
    finally:
        stop_server(proc)


def test_apply_starts_server_and_worker_pods_wired_by_service_name(ctx):
    p = ctx["p"]
    dep = p.get("deployment", COMPUTE)
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "worker", args
    hpa = p.get("hpa", COMPUTE)
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 3)
    (server,) = _pods(p, "server")
    spec_args = server["spec"]["containers"][0]["args"]
    want = f"http://{COMPUTE}.{p.namespace}.svc:9000"
    assert spec_args[spec_args.index("--compute") + 1] == want, spec_args
    assert all(pod_ready(x) for x in _pods(p, "compute")) and len(_pods(p, "compute")) == 1
    table = p.kubectl("get", "cds").stdout.splitlines()
    header = table[0].split()
    row = next(line.split() for line in table[1:] if line.split()[0] == NAME)
    assert row[header.index("COMPUTE")] == "1", table
    if p.local:
        # the process got the Service's local stand-in address instead of the DNS name
        pid = int(server["status"]["containerStatuses"][0]["containerID"].removeprefix("local://"))
        cmd = _cmdline(pid)
        got = cmd[cmd.index("--compute") + 1]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", got), cmd


def test_reduction_through_the_ingress_runs_on_the_worker(ctx):
    p = ctx["p"]
    if not p.local:
        pytest.skip("reads the pods' /metrics through their local ports")
    before = _worker_tasks(p)
    path = f"{DATASET}/groupby/ta/time.month/mean"
    got = _open(f"{ctx['served']}/{path}/zarr")
    after = _worker_tasks(p)
    assert sum(after.values()) > sum(before.values()), (before, after)
    (server_url,) = _endpoints(p, NAME).values()
    assert _metric(server_url, "cloudify_compute_tasks_total", 'outcome="ok"') > 0
    _same(got, _open(f"{ctx['local']}/datasets/{path}/zarr"), path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = xr.open_mfdataset([str(f) for f in FILES], **helpers.MFDATASET_KW).load()
    ref = src.ta.astype("f8").groupby("time.month").mean()
    np.testing.assert_allclose(got.ta.values.astype("f8"), ref.values, rtol=1e-6, equal_nan=True)


def _replicas(p) -> tuple[int | None, int | None]:
    d = p.get("deployment", COMPUTE) or {}
    return d.get("spec", {}).get("replicas"), (d.get("status") or {}).get("readyReplicas")


def test_autoscaler_grows_the_pool_and_the_server_uses_every_worker(ctx):
    p = ctx["p"]
    if not p.local:
        pytest.skip("a real HPA needs real CPU load and metrics-server; the annotation drives the local runtime only")
    # 150 % of one worker's CPU request at a 50 % target: ceil(150 / 50) = 3 workers (the
    # runtime's stand-in for metrics-server is this annotation)
    p.kubectl("annotate", "--overwrite", f"hpa/{COMPUTE}", f"{LOAD_ANNOTATION}=150")
    # reductions through the ingress, two at a time
    stop = threading.Event()
    results: dict[str, xr.Dataset] = {}
    errors: list[str] = []

    def load(k: int):
        i = k
        while not stop.is_set():
            path = PRODUCTS[i % len(PRODUCTS)]
            i += 2
            try:
                results[path] = _open(f"{ctx['served']}/{path}/zarr")
            except Exception as e:  # noqa: BLE001  (reported below)
                errors.append(f"{path}: {e}")

    # the pool first (the server caches computed chunks, so only reductions not asked for
    # before reach any worker: spend them once all three are there)
    wait_for("the HPA growing the pool to 3 ready workers", lambda: _replicas(p) == (3, 3), platform=p)
    assert p.get("hpa", COMPUTE)["status"]["desiredReplicas"] == 3
    wait_for("3 ready endpoints of the compute Service", lambda: len(_endpoints(p, COMPUTE)) == 3, platform=p)
    wait_for("status.computeReplicas 3",
             lambda: ((p.cds(NAME) or {}).get("status") or {}).get("computeReplicas") == 3, platform=p)
    threads = [threading.Thread(target=load, args=(k,), daemon=True) for k in (0, 1)]
    for t in threads:
        t.start()
    try:
        before = _worker_tasks(p)
        assert len(before) == 3
        # the server reopens its connections every few seconds, so the Service's new pods get
        # tasks while the load goes on
        now = wait_for("tasks on all three workers", lambda: (n := _worker_tasks(p)) and all(
            n.get(k, 0) > v for k, v in before.items()) and n, platform=p, period=0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    print(f"partial tasks per worker once at 3: "
          f"{ {k: now[k] - before[k] for k in before} }; {len(results)} distinct reductions")
    assert not errors, errors[:5]
    for path, got in results.items():
        _same(got, _open(f"{ctx['local']}/datasets/{path}/zarr"), path)


def test_worker_killed_during_reductions_costs_retries_not_answers(ctx):
    p = ctx["p"]
    if not p.local:
        pytest.skip("SIGKILL of a local pod process")
    wait_for("3 ready endpoints of the compute Service", lambda: len(_endpoints(p, COMPUTE)) == 3, platform=p)
    (server_url,) = _endpoints(p, NAME).values()
    retries = _metric(server_url, "cloudify_compute_retries_total")
    victim = _pods(p, "compute")[0]
    pid = int(victim["status"]["containerStatuses"][0]["containerID"].removeprefix("local://"))
    paths = UNASKED
    # Frozen first (SIGSTOP), so that a task sent to it stays in flight until the SIGKILL: the
    # kernel still accepts the connection the Service's round robin hands it, and the request
    # waits unread in the socket. Killing a running worker instead raced its short tasks.
    port = int(_endpoints(p, COMPUTE)[victim["metadata"]["name"]].rsplit(":", 1)[1])
    os.kill(pid, signal.SIGSTOP)
    killed = False
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futs = [pool.submit(_open, f"{ctx['served']}/{path}/zarr") for path in paths]
            wait_for("a task waiting on the frozen victim", lambda: _unread_requests(port) > 0,
                     platform=p, period=0.05)
            os.kill(pid, signal.SIGKILL)
            killed = True
            got = [f.result() for f in futs]
    finally:
        if not killed:  # never left stopped
            os.kill(pid, signal.SIGKILL)
    for path, g in zip(paths, got):
        _same(g, _open(f"{ctx['local']}/datasets/{path}/zarr"), path)
    assert _metric(server_url, "cloudify_compute_retries_total") > retries
    wait_for("the killed worker restarted and ready again", lambda: len(_endpoints(p, COMPUTE)) == 3, platform=p)


def test_compute_off_removes_the_pool_and_the_server_computes_itself(ctx):
    p = ctx["p"]
    p.kubectl("patch", "cds", NAME, "--type=merge", "-p", json.dumps({"spec": {"compute": {"enabled": False}}}))
    for kind in ("deployment", "service", "hpa"):
        wait_for(f"{kind} {COMPUTE} deleted", lambda k=kind: p.get(k, COMPUTE) is None, platform=p)
    wait_for("the workers' pods gone", lambda: not _pods(p, "compute"), platform=p)

    def server_without_compute():
        pods = _pods(p, "server")
        return (len(pods) == 1 and pod_ready(pods[0]) and "--compute" not in pods[0]["spec"]["containers"][0]["args"]
                and len(_endpoints(p, NAME)) == 1)

    wait_for("a ready server pod without --compute", server_without_compute, platform=p)
    path = f"{DATASET}/groupby/ta/time.season/max"
    for attempt in range(100):  # the ingress may still point at the old pod for a moment
        r = requests.get(f"{ctx['served']}/{path}/zarr/.zmetadata", timeout=30)
        if r.status_code == 200:
            break
        time.sleep(0.1)
    _same(_open(f"{ctx['served']}/{path}/zarr"), _open(f"{ctx['local']}/datasets/{path}/zarr"), path)
    (server_url,) = _endpoints(p, NAME).values()
    assert _metric(server_url, "cloudify_compute_tasks_total") == 0
    assert "COMPUTE" in p.kubectl("get", "cds").stdout.splitlines()[0]
    p.kubectl("delete", "cds", NAME, "--wait=false")
