"""Compute pods on-prem (issue #15): two real `cloudify worker` processes and a server
started with `--compute URL,URL`. Reductions (views and ad-hoc groupby products), derived
and rechunked chunks equal xarray and are bit-identical to an in-process server over the
same configuration; the work is spread over both workers (their /metrics); a worker
SIGKILLed while reductions run is retried on the other (correct answers, retries counted);
with no worker reachable, computed chunks are 503 naming the compute service (stored
chunks are still served)."""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import socket
import time
import warnings

import numpy as np
import pytest
import requests
import xarray as xr

import helpers
from conftest import start_server, stop_server, wait_until_settled

DAY = sorted(str(p) for p in helpers.cmip6_root().rglob("ta_day_MIROC6_historical_r1i1p1f1_gn_200[0-2]*.nc"))

CONFIG = """datasets:
  - name: day
    sources: [{sources}]
    processing:
      chunks: {{time: 30}}
      variables:
        tac: {{expr: "ta - 273.15"}}
      views:
        clim: {{groupby: {{by: time.month, reduce: mean}}}}
        monthly: {{resample: {{time: month, reduce: std}}}}
        seasmax: {{groupby: {{by: time.season, reduce: max}}}}
"""
NAMES = ["day", "day.clim", "day.monthly", "day.seasmax"]


def _config(root):
    cfg = root / "cloudify.yaml"
    cfg.write_text(CONFIG.format(sources=", ".join(f'"{f}"' for f in DAY)))
    return cfg


def _start_workers(cfg, root, tags):
    out = []
    for t in tags:
        url, proc, _ = start_server(["worker", "--config", str(cfg), "--threads", "1"], root, t,
                                    extra_env={"CLOUDIFY_CACHE_DIR": str(root / "cache")})
        out.append((url, proc))
    return out


def _start_server(cfg, root, tag, compute=None):
    args = ["serve", "--config", str(cfg), "--compute-cache-bytes", "0"]
    if compute:
        args += ["--compute", ",".join(compute), "--compute-timeout", "5"]
    url, proc, _ = start_server(args, root, tag, extra_env={"CLOUDIFY_CACHE_DIR": str(root / "cache")})
    wait_until_settled(url, NAMES, proc)
    return url, proc


@pytest.fixture(scope="module")
def pods(tmp_path_factory):
    assert len(DAY) == 3, "sample data missing"
    root = tmp_path_factory.mktemp("compute")
    cfg = _config(root)
    workers = _start_workers(cfg, root, ["w1", "w2"])
    procs = [p for _, p in workers]
    try:
        remote, p1 = _start_server(cfg, root, "remote", [u for u, _ in workers])
        procs.append(p1)
        local, p2 = _start_server(cfg, root, "local")
        procs.append(p2)
        yield {"remote": remote, "local": local, "workers": [u for u, _ in workers], "cfg": cfg, "root": root}
    finally:
        for p in procs:
            stop_server(p)


def _open(url, ds, fmt=2):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xr.open_dataset(f"{url}/datasets/{ds}/zarr", engine="zarr", zarr_format=fmt,
                               consolidated=True).load()


def _src():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xr.open_mfdataset(DAY, **helpers.MFDATASET_KW).load()


def _metric(url, name, labels=""):
    text = requests.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)$", line)
        if m and labels in (m.group(1) or ""):
            total += float(m.group(2))
    return total


def _same(a: xr.Dataset, b: xr.Dataset):
    assert sorted(a.data_vars) == sorted(b.data_vars)
    for v in a.data_vars:
        assert a[v].dtype == b[v].dtype, v
        assert np.array_equal(a[v].values, b[v].values, equal_nan=True), v


REF = {
    "day.clim": lambda ta: ta.groupby("time.month").mean(),
    "day.monthly": lambda ta: ta.resample(time="MS").std(),
    "day.seasmax": lambda ta: ta.groupby("time.season").max(),
}


@pytest.mark.parametrize("fmt", [2, 3])
@pytest.mark.parametrize("view", list(REF))
def test_reductions_equal_xarray_and_in_process(pods, view, fmt):
    got = _open(pods["remote"], view, fmt)
    _same(got, _open(pods["local"], view, fmt))
    src = _src()
    want = REF[view](src.ta)
    assert got.ta.dtype == want.dtype == np.float32
    # a float64 reference, except where xarray's own float32 result overflows (as served)
    ref = REF[view](src.ta.astype("f8"))
    ref = ref.where(~np.isinf(want), want.astype("f8"))
    np.testing.assert_allclose(got.ta.values.astype("f8"), ref.values, rtol=1e-6, equal_nan=True)


def test_derived_and_rechunked_chunks_equal_xarray_and_in_process(pods):
    got = _open(pods["remote"], "day", 3)
    _same(got, _open(pods["local"], "day", 3))
    src = _src()
    assert got.ta.encoding["chunks"][0] == 30
    np.testing.assert_array_equal(got.ta.values, src.ta.values)
    np.testing.assert_array_equal(got.tac.values, (src.ta - np.float32(273.15)).values)


def test_adhoc_groupby_product_equals_in_process(pods):
    path = "day/groupby/ta/time.season/var"
    got = _open(pods["remote"], path)
    _same(got, _open(pods["local"], path))
    src = _src()
    want = src.ta.groupby("time.season").var()
    # float64 reference, except where xarray's own float32 result overflows (as served)
    ref = src.ta.astype("f8").groupby("time.season").var()
    ref = ref.where(~np.isinf(want), want.astype("f8"))
    np.testing.assert_allclose(got.ta.values.astype("f8"), ref.values, rtol=1e-6)


def test_work_is_spread_over_both_workers(pods):
    _open(pods["remote"], "day.clim")
    for w in pods["workers"]:
        assert _metric(w, "cloudify_worker_tasks_total", 'kind="partial",outcome="ok"') > 0, w
        assert _metric(w, "cloudify_worker_tasks_total", 'kind="chunk",outcome="ok"') > 0, w
        # (bytes read: the sample files are small enough to be held in the index; asserted in
        # server/tests/compute.rs over chunked data)
        assert "cloudify_worker_bytes_read_total" in requests.get(f"{w}/metrics", timeout=10).text
        assert _metric(w, "cloudify_worker_in_flight") == 0, w
        assert requests.get(f"{w}/readyz", timeout=10).status_code == 200
        assert requests.get(f"{w}/healthz", timeout=10).text == "ok"
    assert _metric(pods["remote"], "cloudify_compute_tasks_total", 'outcome="ok"') > 0
    # the in-process server sent nothing anywhere
    assert _metric(pods["local"], "cloudify_compute_tasks_total") == 0


def test_sigkill_of_a_worker_during_reductions(pods):
    root, cfg = pods["root"], pods["cfg"]
    workers = _start_workers(cfg, root, ["k1", "k2"])
    procs = [p for _, p in workers]
    try:
        url, sp = _start_server(cfg, root, "killme", [u for u, _ in workers])
        procs.append(sp)
        paths = [f"day/groupby/ta/{c}/{a}" for c in ("time.month", "time.season", "time.year", "time.dayofyear")
                 for a in ("mean", "std", "max", "median")]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futs = [pool.submit(_open, url, p) for p in paths]
            # kill while the first requests are running
            time.sleep(0.3)
            os.killpg(workers[0][1].pid, signal.SIGKILL)
            got = [f.result() for f in futs]
        for p, g in zip(paths, got):
            _same(g, _open(pods["local"], p))
        # after the kill every request still goes through, retried on the survivor
        _same(_open(url, "day.monthly"), _open(pods["local"], "day.monthly"))
        assert _metric(url, "cloudify_compute_retries_total") > 0
    finally:
        for p in procs:
            if p.poll() is None:
                stop_server(p)


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_no_workers_is_503_naming_the_service(pods):
    gone = f"http://127.0.0.1:{_free_port()}"
    url, proc = _start_server(pods["cfg"], pods["root"], "noworkers", [gone])
    try:
        t0 = time.monotonic()
        for key in ("day.clim/zarr/ta/0.0.0.0", "day/zarr/tac/0.0.0.0"):
            r = requests.get(f"{url}/datasets/{key}", timeout=30)
            assert r.status_code == 503, (key, r.status_code, r.text)
            assert gone in r.json()["error"] and "compute service" in r.json()["error"], r.text
            assert r.headers.get("Retry-After") == "1"
        assert time.monotonic() - t0 < 20
        # stored data needs no compute: still served
        assert requests.get(f"{url}/datasets/day/zarr/lat/0", timeout=30).status_code == 200
    finally:
        stop_server(proc)
