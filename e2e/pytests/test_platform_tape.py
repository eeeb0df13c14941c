"""A CloudifyDataset on tape on the platform (issue #19): while the server pod recalls the
dataset's netCDF files from tape to index them, the pod is unready and the Deployment knows no
more than "0 available"; the CR must say why — ``Ready=False, Opening`` naming the recall and
the server's Retry-After — and become ``Ready`` once the recall is done, serving the files'
values through the ingress. An opening that fails (here: ``indexWaitSeconds`` exceeded) is
``Degraded=True, OpenFailed`` with the server's reason.

The operator learns this from the server's ``/status``, read through the Service
``<name>-status`` (``publishNotReadyAddresses``: the main Service lists only ready pods, so it
has no endpoint while the question is open), over the service proxy like the STAC item. The
archive is the fake ``slk`` of test_tape.py (fake_slk.py, a recall takes ``DELAY`` seconds).

Local platform only: the staging directory and the fake ``slk`` command are host paths in the
dataset's config, which the local pod runtime leaves as they are (a real cluster would need
the archive client in the image). The fixture ``platform`` is the one of test_platform.py (its
own ``cloudify-e2e up`` for this module); tests run in file order.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import xarray as xr

from fake_slk import command_driver
from test_platform import (  # noqa: F401  (platform is a fixture)
    MANIFESTS,
    REPO,
    TIMEOUT,
    apply,
    condition,
    platform,
    render,
    wait_for,
    write_data,
)

NAME = "e2e-tape"
DATASET = "e2e_tape"
BAD = "e2e-tape-bad"
DELAY = 25.0  # seconds the recall takes: long enough to watch the CR say "Opening"


def _cr(p, name: str, dataset: str, sources: list[str], staging: Path, state: Path, **tape) -> dict:
    driver = command_driver(state)
    return {
        "apiVersion": "cloudify.io/v1alpha1", "kind": "CloudifyDataset",
        "metadata": {"name": name, "namespace": p.namespace},
        "spec": {
            "dataset": {"name": dataset, "sources": sources, "storage": {"tape": {
                "driver": driver, "stagingDir": str(staging), "waitSeconds": 1, "batchWindowMs": 200,
                "pollMs": 200, "retryAfterSeconds": 5, **tape}}},
            "replicas": {"min": 1, "max": 1},
        },
    }


@pytest.fixture(scope="module")
def ctx(platform):
    p = platform
    if not p.local:
        pytest.skip("the fake slk and the staging directory are host paths (local platform only)")
    root = p.data_dir.parent / "tape"
    archive = root / "archive"
    reference = write_data(archive / "arch" / "proj" / "T1")
    sources = sorted("/" + f.relative_to(archive).as_posix() for f in (archive / "arch").rglob("*.nc"))
    assert len(sources) == 3, sources
    state = root / "slk"
    state.mkdir(parents=True)
    (state / "config.json").write_text(json.dumps({"archive": str(archive), "delay": DELAY, "fail": []}))
    p.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"), namespaced=False)
    p.kubectl("apply", "-f", "-", stdin=render(MANIFESTS / "namespace.yaml", p), namespaced=False)
    return {"p": p, "root": root, "sources": sources, "state": state, "reference": reference}


def _endpoints_ready(p, service: str) -> list[bool]:
    items = (p.get("endpointslices", selector=f"kubernetes.io/service-name={service}") or {}).get("items") or []
    return [(e.get("conditions") or {}).get("ready") is True for s in items for e in s.get("endpoints") or []]


def test_a_dataset_on_tape_shows_opening_on_the_cr_then_becomes_ready(ctx):
    p = ctx["p"]
    t0 = time.monotonic()
    apply(p, _cr(p, NAME, DATASET, ctx["sources"], ctx["root"] / "staging", ctx["state"]))

    def opening():
        cr = p.cds(NAME)
        c = condition(cr, "Ready")
        return c and c["reason"] == "Opening" and (cr, c)

    cr, ready = wait_for("Ready=False/Opening on the CR", opening, timeout=DELAY, platform=p)
    assert time.monotonic() - t0 < DELAY, "seen only after the recall was done"
    assert ready["status"] == "False"
    assert ready["observedGeneration"] == cr["metadata"]["generation"]
    # what the server says: what it waits for, and its Retry-After (the recall's estimate)
    assert f"dataset '{DATASET}' is still opening on the server" in ready["message"], ready
    assert "recalling its files from tape" in ready["message"], ready
    assert "expected in under a minute (the server's Retry-After)" in ready["message"], ready
    degraded = condition(cr, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("False", "Reconciled"), degraded
    # why the operator needs <name>-status: the main Service has no ready endpoint meanwhile
    status_svc = p.get("service", f"{NAME}-status")
    assert status_svc["spec"]["publishNotReadyAddresses"] is True, status_svc["spec"]
    assert _endpoints_ready(p, NAME) == [False]
    assert _endpoints_ready(p, f"{NAME}-status") == [True]
    assert any(c["verb"] == "recall" for c in _calls(ctx["state"])), "no recall was started"

    p.kubectl("wait", "--for=condition=Ready", f"cds/{NAME}", f"--timeout={int(DELAY + TIMEOUT)}s",
              timeout=DELAY + TIMEOUT + 30)
    assert time.monotonic() - t0 >= DELAY * 0.9, "Ready before the recall could be done"
    cr = p.cds(NAME)
    ready = condition(cr, "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Available"), ready
    assert condition(cr, "Degraded")["status"] == "False"
    ds = xr.open_dataset(cr["status"]["url"], engine="zarr", zarr_format=2, consolidated=True).load()
    np.testing.assert_array_equal(ds["tas"].values, ctx["reference"]["tas"].values)
    r = requests.get(cr["status"]["url"].rsplit("/zarr", 1)[0] + "/stac", timeout=30)
    assert r.status_code == 200, r.text[:300]


def _calls(state: Path) -> list[dict]:
    log = state / "calls.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_an_opening_that_fails_is_degraded_with_the_servers_reason(ctx):
    p = ctx["p"]
    # the recall takes DELAY seconds, the server waits 0 for it: the opening fails at once
    apply(p, _cr(p, BAD, "e2e_tape_bad", ctx["sources"][:1], ctx["root"] / "staging-bad", ctx["state"],
                 indexWaitSeconds=0))

    def failed():
        cr = p.cds(BAD)
        c = condition(cr, "Degraded")
        return c and c["reason"] == "OpenFailed" and (cr, c)

    cr, degraded = wait_for("Degraded=True/OpenFailed on the CR", failed, timeout=TIMEOUT, platform=p)
    assert degraded["status"] == "True"
    assert degraded["observedGeneration"] == cr["metadata"]["generation"]
    assert "dataset 'e2e_tape_bad' could not be opened" in degraded["message"], degraded
    assert "not indexed yet" in degraded["message"] and ctx["sources"][0] in degraded["message"], degraded
    ready = condition(cr, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "OpenFailed"), ready
    # an event marks it, as for the other Degraded reasons
    events = [e for e in json.loads(p.kubectl("get", "events", "-o", "json").stdout)["items"]
              if (e.get("involvedObject") or {}).get("name") == BAD]
    assert any(e.get("reason") == "Degraded" and "OpenFailed" in (e.get("message") or "") for e in events), events
    p.kubectl("delete", "cds", BAD, NAME, f"--timeout={int(TIMEOUT)}s", timeout=TIMEOUT + 30)


def test_a_served_dataset_whose_tape_archive_goes_away_is_degraded_until_it_answers(ctx):
    """A Ready dataset on a WLCG tape archive (the emulator of test_tape.py): when the endpoint
    stops answering, the Deployment sees nothing (the pods still serve what is staged); the
    server's health check does, and the CR says `Degraded=True, TapeUnavailable` naming the
    endpoint's error while `Ready` stays True; when the archive answers again on its address,
    Degraded clears."""
    from wlcg_tape_emulator import Emulator

    p = ctx["p"]
    name, dataset = "e2e-tape-wlcg", "e2e_tape_wlcg"
    token = ctx["root"] / "wlcg-token"
    token.write_text("e2e-token\n")
    emu = Emulator(ctx["root"] / "archive", "e2e-token", delay=0.5)
    port = emu.httpd.server_address[1]
    tape = {"driver": {"wlcg": {"endpoint": f"{emu.url}/api/v1/tape", "dataUrl": f"{emu.url}/data",
                                "tokenFile": str(token)}},
            "stagingDir": str(ctx["root"] / "staging-wlcg"), "waitSeconds": 1, "batchWindowMs": 200,
            "pollMs": 200, "retryAfterSeconds": 5, "healthCheckSeconds": 1}
    apply(p, {"apiVersion": "cloudify.io/v1alpha1", "kind": "CloudifyDataset",
              "metadata": {"name": name, "namespace": p.namespace},
              "spec": {"dataset": {"name": dataset, "sources": ctx["sources"], "storage": {"tape": tape}},
                       "replicas": {"min": 1, "max": 1}}})
    try:
        p.kubectl("wait", "--for=condition=Ready", f"cds/{name}", f"--timeout={int(TIMEOUT)}s", timeout=TIMEOUT + 30)
        assert condition(p.cds(name), "Degraded")["status"] == "False"

        emu.stop()

        def degraded():
            cr = p.cds(name)
            c = condition(cr, "Degraded")
            return c and c["reason"] == "TapeUnavailable" and (cr, c)

        # the operator reads a served tape dataset's /status every 10 s (healthCheckSeconds 1)
        cr, d = wait_for("Degraded=True/TapeUnavailable on the CR", degraded, timeout=60, platform=p)
        assert d["status"] == "True" and d["observedGeneration"] == cr["metadata"]["generation"], d
        assert f"dataset '{dataset}': its tape archive fails" in d["message"], d
        assert "archiveinfo" in d["message"], d
        ready = condition(cr, "Ready")
        assert (ready["status"], ready["reason"]) == ("True", "Available"), ready
        events = [e for e in json.loads(p.kubectl("get", "events", "-o", "json").stdout)["items"]
                  if (e.get("involvedObject") or {}).get("name") == name]
        assert any(e.get("reason") == "Degraded" and "TapeUnavailable" in (e.get("message") or "")
                   for e in events), events

        emu = Emulator(ctx["root"] / "archive", "e2e-token", delay=0.5, port=port)

        def answered():
            c = condition(p.cds(name), "Degraded")
            return c and c["status"] == "False" and c

        c = wait_for("Degraded cleared once the archive answers", answered, timeout=60, platform=p)
        assert c["reason"] == "Reconciled", c
    finally:
        emu.stop()
        p.kubectl("delete", "cds", name, f"--timeout={int(TIMEOUT)}s", timeout=TIMEOUT + 30)
