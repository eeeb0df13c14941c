"""Compute workers take tasks only from their server (issue #18): a real `cloudify worker`
started with `--secret-file` refuses tasks without the shared secret or with a wrong one
(401 JSON, the secret never logged), and computes them for a server sending the right one
(`serve --compute-secret-file`), with answers identical to an in-process server. A worker
listening beyond loopback without a secret, or with a secret too short to be one, does not
start."""

from __future__ import annotations

import re
import secrets
import subprocess

import pytest
import requests

import helpers
from conftest import find_binary, start_server, stop_server, wait_until_settled

DAY = sorted(str(p) for p in helpers.cmip6_root().rglob("ta_day_MIROC6_historical_r1i1p1f1_gn_2000*.nc"))
CONFIG = """datasets:
  - name: day
    sources: [{sources}]
    processing:
      variables:
        tac: {{expr: "ta - 273.15"}}
"""
# a computed chunk (the derived variable: a task for the workers) and a stored one
COMPUTED = "/datasets/day/zarr/tac/0.0.0.0"
STORED = "/datasets/day/zarr/ta/0.0.0.0"
TASK = "/v1/task"
VERSION_HEADER = "x-cloudify-compute-version"
# compute::protocol::VERSION: a request of another version is refused (409) before its body
PROTOCOL_VERSION = "4"


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    assert DAY, "sample data missing"
    root = tmp_path_factory.mktemp("compute-secret")
    cfg = root / "cloudify.yaml"
    cfg.write_text(CONFIG.format(sources=", ".join(f'"{f}"' for f in DAY)))
    secret = secrets.token_hex(32)
    wrong = secrets.token_hex(32)
    (root / "secret").write_text(secret + "\n")
    (root / "wrong").write_text(wrong + "\n")
    env = {"CLOUDIFY_CACHE_DIR": str(root / "cache")}
    procs = []
    try:
        worker, p, worker_log = start_server(
            ["worker", "--config", str(cfg), "--threads", "1", "--secret-file", str(root / "secret")],
            root, "worker", extra_env=env)
        procs.append(p)
        servers = {}
        for tag, extra in [("right", ["--compute-secret-file", str(root / "secret")]),
                           ("wrong", ["--compute-secret-file", str(root / "wrong")]),
                           ("none", []),
                           ("local", None)]:
            args = ["serve", "--config", str(cfg), "--compute-cache-bytes", "0"]
            if extra is not None:
                args += ["--compute", worker, "--compute-timeout", "10", *extra]
            url, p, _ = start_server(args, root, tag, extra_env=env)
            procs.append(p)
            wait_until_settled(url, ["day"], p)
            servers[tag] = url
        yield {"worker": worker, "worker_log": worker_log, "secret": secret, "wrong_secret": wrong,
               "root": root, "cfg": cfg, **servers}
    finally:
        for p in procs:
            stop_server(p)


def _unauthorized(pool) -> float:
    text = requests.get(f"{pool['worker']}/metrics", timeout=10).text
    m = re.search(r'^cloudify_worker_tasks_total\{[^}]*outcome="unauthorized"[^}]*\}\s+(\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_worker_refuses_tasks_without_or_with_a_wrong_secret(pool):
    before = _unauthorized(pool)
    w = pool["worker"] + TASK
    base = {VERSION_HEADER: PROTOCOL_VERSION, "Content-Type": "application/x-cloudify-compute"}
    for headers in ({}, {"Authorization": f"Bearer {pool['wrong_secret']}"},
                    {"Authorization": f"Basic {pool['secret']}"}, {"Authorization": "Bearer "}):
        r = requests.post(w, data=b"\x01\x00", headers={**base, **headers}, timeout=10)
        assert r.status_code == 401, (headers.keys(), r.status_code, r.text)
        assert r.headers["Content-Type"].startswith("application/json")
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert "compute secret" in r.json()["error"]
        assert pool["secret"] not in r.text and pool["wrong_secret"] not in r.text
    assert _unauthorized(pool) == before + 4
    # the right secret gets past the check: the (garbage) body is then what is refused
    r = requests.post(w, data=b"not postcard", headers={**base, "Authorization": f"Bearer {pool['secret']}"},
                      timeout=10)
    assert r.status_code == 400, r.text
    assert "not a compute protocol message" in r.text
    # probes and metrics stay open (kubelet and Prometheus send no secret)
    assert requests.get(f"{pool['worker']}/healthz", timeout=10).status_code == 200
    assert requests.get(f"{pool['worker']}/readyz", timeout=10).status_code == 200


def test_server_with_the_right_secret_gets_answers_identical_to_in_process(pool):
    before = _unauthorized(pool)
    got = requests.get(pool["right"] + COMPUTED, timeout=60)
    want = requests.get(pool["local"] + COMPUTED, timeout=60)
    assert got.status_code == want.status_code == 200, got.text[:300]
    assert got.content == want.content and len(got.content) > 0
    assert _unauthorized(pool) == before
    tasks = requests.get(f"{pool['worker']}/metrics", timeout=10).text
    assert re.search(r'^cloudify_worker_tasks_total\{[^}]*outcome="ok"[^}]*\}\s+[1-9]', tasks, re.M), tasks


@pytest.mark.parametrize("server,says", [
    ("wrong", "refused this server's compute secret"),
    ("none", "requires a compute secret"),
])
def test_server_without_the_secret_fails_clearly_and_stored_chunks_still_serve(pool, server, says):
    r = requests.get(pool[server] + COMPUTED, timeout=60)
    # the worker's refusal, named, as a bad gateway: not retried, never data
    assert r.status_code == 502, (r.status_code, r.text[:300])
    err = r.json()["error"]
    assert says in err and pool["worker"] in err, err
    assert pool["secret"] not in err and pool["wrong_secret"] not in err
    assert requests.get(pool[server] + STORED, timeout=60).status_code == 200


def test_secrets_are_never_logged(pool):
    requests.post(pool["worker"] + TASK, headers={"Authorization": f"Bearer {pool['wrong_secret']}",
                                                  VERSION_HEADER: PROTOCOL_VERSION}, timeout=10)
    logs = [pool["worker_log"], *(pool["root"] / f"{t}.log" for t in ("right", "wrong", "none"))]
    text = "".join(p.read_text(errors="replace") for p in logs)
    assert "task refused" in text  # the refusal is logged ...
    assert pool["secret"] not in text and pool["wrong_secret"] not in text  # ... the secrets are not


def _run_worker(args, tmp_path):
    return subprocess.run([find_binary(), "worker", *args, "day", DAY[0]], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path,
                          env={"CLOUDIFY_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"})


def test_worker_beyond_loopback_needs_a_usable_secret(tmp_path):
    r = _run_worker(["--host", "0.0.0.0", "--port", "0"], tmp_path)
    assert r.returncode != 0
    assert "needs --secret-file" in r.stderr, r.stderr[-2000:]
    short = tmp_path / "short"
    short.write_text("hunter2\n")
    r = _run_worker(["--host", "0.0.0.0", "--port", "0", "--secret-file", str(short)], tmp_path)
    assert r.returncode != 0
    assert "at least 16" in r.stderr and "hunter2" not in r.stderr, r.stderr[-2000:]
    r = _run_worker(["--host", "0.0.0.0", "--port", "0", "--secret-file", str(tmp_path / "absent")], tmp_path)
    assert r.returncode != 0 and "absent" in r.stderr, r.stderr[-2000:]
