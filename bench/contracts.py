#!/usr/bin/env python3
"""API contracts: schemathesis against the server's and the catalog's OpenAPI documents.

    contracts.py [--max-time 300] [--max-examples 200] [--seed 1] [--workers 2]
                 [--cloudify-bin PATH] [--workdir /var/tmp/cloudify-bench]

The test command runs the same two checks bounded to 60 s each with deterministic generation
(e2e/pytests/test_openapi_contract.py, test_catalog_contract.py); this runs them longer, with
random generation from a fixed seed, and reports what was exercised:

1. ``cloudify serve --demo`` (the embedded demo dataset: Zarr v2/v3, kerchunk JSON/Parquet,
   OPeNDAP, processing products, tiles, EDR, catalogs) against ``/openapi.json``;
2. ``cloudify catalog`` (the dynamic STAC API, seeded with a collection and two items,
   transactions with a bearer token) against ``/api``.

Each run uses the test's schemathesis configuration (the same dictionaries of real ids and
keys, the same documented "schema-valid but refused" statuses), all checks (no 5xx for client
mistakes, status codes, content types, headers and bodies as documented, 405 with ``Allow``),
the phases examples, coverage, stateful (catalog links) and fuzzing, until ``--max-time``.
Afterwards the server log must hold no panic and no ERROR line, and the process must be alive.

Prints a table and one JSON line (also WORKDIR/results/contracts-<time>.json): per API the
operations tested, test cases generated and failed, and the checks' verdicts. Exit 0 clean,
1 a contract failure or a server problem, 2 set-up failed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "e2e" / "pytests"))

import requests  # noqa: E402

import conftest  # noqa: E402  (start_server, stop_server, schemathesis_exe)
import test_catalog_contract as catalog_contract  # noqa: E402
import test_openapi_contract as server_contract  # noqa: E402


def log(msg: str) -> None:
    print(f"[contracts {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_schemathesis(a, name: str, url: str, config_writer, workdir: Path, headers=None) -> dict:
    config = workdir / f"{name}.toml"
    config_writer(config)
    report = workdir / f"{name}-report.json"
    junit = workdir / f"{name}-junit.xml"
    cmd = [conftest.schemathesis_exe(), "--config-file", str(config), "run", url,
           "--checks", "all", "--seed", str(a.seed), "--max-examples", str(a.max_examples),
           "--max-time", str(a.max_time), "--workers", str(a.workers), "--no-color",
           "--report", "junit,ndjson", "--report-junit-path", str(junit),
           "--report-ndjson-path", str(report)]
    log(f"{name}: schemathesis for up to {a.max_time} s")
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.max_time + 600, cwd=workdir,
                       env={**os.environ, "SCHEMATHESIS_HOOKS": ""}, stdin=subprocess.DEVNULL)
    took = round(time.monotonic() - t0, 1)
    out = p.stdout + p.stderr
    (workdir / f"{name}-schemathesis.txt").write_text(out)
    return {"exit": p.returncode, "seconds": took, **summarize(junit, report, out)}


def summarize(junit: Path, ndjson: Path, out: str) -> dict:
    """Operations, test cases and failures from schemathesis' JUnit report, requests from
    its event stream (each scenario's checks hold the request and response)."""
    import xml.etree.ElementTree as ET

    res = {"operations": 0, "operations_failed": 0, "failures": []}
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            res["operations"] += 1
            bad = case.find("failure")
            if bad is None:
                bad = case.find("error")
            if bad is not None:
                res["operations_failed"] += 1
                res["failures"].append(f"{case.get('name')}: {(bad.get('message') or bad.text or '')[:300]}")
    cases = 0
    checks = {}
    if ndjson.exists():
        for line in ndjson.read_text().splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            sc = ev.get("ScenarioFinished") or {}
            rec = sc.get("recorder") or {}
            for per_case in (rec.get("checks") or {}).values():
                cases += 1
                for c in per_case:
                    name, status = c.get("name"), c.get("status")
                    checks.setdefault(name, {}).setdefault(status, 0)
                    checks[name][status] += 1
    res["test_cases"] = cases
    res["checks"] = checks
    # schemathesis' own summary line, e.g. "1234 generated, 1234 passed"
    for line in out.splitlines():
        if "generated" in line and ("passed" in line or "failed" in line):
            res["summary"] = line.strip()
    return res


def server_log_problems(log_path: Path) -> list[str]:
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    return [line for line in text.splitlines() if "panicked" in line or " ERROR " in line][:20]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-time", type=int, default=300, help="seconds of schemathesis per API")
    ap.add_argument("--max-examples", type=int, default=200, help="examples per operation and phase")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workdir", default="/var/tmp/cloudify-bench")
    ap.add_argument("--cloudify-bin", default=os.environ.get("CLOUDIFY_BIN"))
    ap.add_argument("--apis", default="server,catalog")
    a = ap.parse_args()
    if a.cloudify_bin:
        os.environ["CLOUDIFY_BIN"] = os.path.abspath(a.cloudify_bin)
    workdir = Path(a.workdir).resolve() / "contracts"
    workdir.mkdir(parents=True, exist_ok=True)
    results = {}
    problems = []
    try:
        for api in a.apis.split(","):
            d = workdir / api
            d.mkdir(exist_ok=True)
            if api == "server":
                url, proc, slog = conftest.start_server(["serve", "--demo"], d, "server",
                                                        extra_env={"CLOUDIFY_CACHE_DIR": str(d / "cache")})
                try:
                    # the Parquet references are written in the background: wait for them
                    deadline = time.monotonic() + 60
                    while time.monotonic() < deadline:
                        if requests.get(f"{url}/datasets/demo/kerchunk.parq/.zmetadata", timeout=30).ok:
                            break
                        time.sleep(0.2)
                    r = run_schemathesis(a, "server", f"{url}/openapi.json", server_contract._config, d)
                    r["alive"] = proc.poll() is None
                finally:
                    conftest.stop_server(proc)
            elif api == "catalog":
                (d / "token").write_text(catalog_contract.TOKEN + "\n")
                url, proc, slog = conftest.start_server(
                    ["catalog", "--data", str(d / f"store-{int(time.time())}"), "--token-file", str(d / "token"),
                     "--max-body", "1048576"], d, "catalog")
                try:
                    catalog_contract._seed(url)
                    r = run_schemathesis(a, "catalog", f"{url}/api", catalog_contract._config, d)
                    r["alive"] = proc.poll() is None
                finally:
                    conftest.stop_server(proc)
            else:
                log(f"unknown API {api!r} (server, catalog)")
                return 2
            r["log_problems"] = server_log_problems(slog)
            results[api] = r
            if r["exit"] != 0 or r["operations_failed"] or not r["alive"] or r["log_problems"]:
                problems.append(api)
    except (RuntimeError, AssertionError, OSError, subprocess.SubprocessError) as e:
        log(f"set-up failed: {e}")
        return 2
    print(f"{'API':<8} {'operations':>10} {'failed':>7} {'test cases':>10} {'seconds':>8}  summary", file=sys.stderr)
    for api, r in results.items():
        print(f"{api:<8} {r['operations']:>10} {r['operations_failed']:>7} {r['test_cases']:>10} {r['seconds']:>8}  "
              f"{r.get('summary', '')}", file=sys.stderr)
        for f in r["failures"][:10]:
            print(f"  {f}", file=sys.stderr)
        for line in r["log_problems"][:5]:
            print(f"  log: {line}", file=sys.stderr)
    summary = {"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "max_time": a.max_time, "max_examples": a.max_examples,
               "seed": a.seed, "results": results, "problems": problems}
    out = Path(a.workdir) / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"contracts-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary), flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
