"""The server answers as its /openapi.json says: schemathesis generates requests for every
documented operation (documented examples, its coverage scenarios, then random inputs)
against `cloudify serve --demo` and checks each answer: no 5xx for client mistakes, status
codes, content types, headers and bodies as documented, 405 with `Allow` for other methods.

Bounded: deterministic generation (no seed, no example database), few examples per
operation and a 60 s budget (fuzzing repeats until it is spent: ~9000 requests), so the run
takes well under two minutes."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import requests

from conftest import schemathesis_exe, start_server, stop_server

# the demo dataset's keys, so that generated requests also reach real data (not only 404s)
DEMO_KEYS = [".zmetadata", ".zgroup", ".zattrs", "zarr.json", "tas/.zarray", "tas/zarr.json", "tas/0.0.0",
             "tas/c/0/0/0", "time/0", "time/c/0", "lat/.zattrs", "tas/9.9.9", "tas/c/x/0/0"]
PARQUET_FILES = [".zmetadata", "tas/refs.0.parq", "time/refs.0.parq", "nope/refs.0.parq"]


def _config(path: Path) -> None:
    def strings(values):
        return "[" + ", ".join(json.dumps(v) for v in values) + "]"

    path.write_text(
        f"""
[dictionaries.ids]
values = {strings(["demo"])}
[dictionaries.keys]
values = {strings(DEMO_KEYS)}
[dictionaries.files]
values = {strings(PARQUET_FILES)}
[dictionaries.vars]
values = {strings(["tas", "time", "lat"])}
[dictionaries.coords]
values = {strings(["time.month", "time.season", "time.year", "lat"])}
[dictionaries.actions]
values = {strings(["mean", "max", "count", "std"])}

[parameters]
"path.id" = {{ dictionary = "ids", probability = 0.5 }}
"path.key" = {{ dictionary = "keys", probability = 0.5 }}
"path.path" = {{ dictionary = "files", probability = 0.5 }}
# so that generated groupby products also name real ones (not only 404s)
"path.var" = {{ dictionary = "vars", probability = 0.5 }}
"path.coord" = {{ dictionary = "coords", probability = 0.5 }}
"path.action" = {{ dictionary = "actions", probability = 0.5 }}

# A key or a Range header can be a well-formed string and still name no chunk (400: malformed
# key, index out of range, longer than any chunk key) or no byte (416): JSON Schema cannot say
# which, so "schema-valid" requests of these operations may also get 400 and 416.
[[operations]]
include-path-regex = '/(zarr|kerchunk)/\\{{key\\}}$|/kerchunk\\.(json|parq)'
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", 400, 404, 416]

# A histogram's parameters can each be well-formed and still not fit together or the variable
# (range lo > hi, a dimension the variable lacks, a non-numeric variable): 400 naming them.
[[operations]]
include-path-regex = '/histogram/'
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", 400, 404, 416]

# A groupby's value-range selection can be well-formed and still not fit the variable (a
# dimension it lacks, a value its coordinate cannot hold, a range selecting nothing): 400
# naming it.
[[operations]]
include-path-regex = '/groupby/'
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", 400, 404, 416]

# An EDR query can be well-formed and still miss the grid (a point outside it, a polygon with
# no cell centre, a datetime outside the time axis, a variable off the grid): 400 naming it.
[[operations]]
include-path-regex = '/edr/'
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", 400, 404, 413]
# A tile or plot request can be well-formed and still not fit: x/y beyond 2^z (404, as tile
# servers answer), a selection of a dimension the variable lacks or a value the time axis
# lacks (400), a colour range with lo > hi (400), a variable the dataset lacks (404).
[[operations]]
include-path-regex = '/tiles/|/map$|/plot/'
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", 400, 404, 413]
# The OPeNDAP responses share one path: a DAP2 constraint or a DAP4 query can be well-formed
# and still not fit (a variable the dataset lacks, an index out of range, `dap4.*` parameters
# sent to a DAP2 response, whose whole query is the constraint): 400 naming it; 413 above the cap.
[[operations]]
include-path-regex = '^/datasets/\\{{id\\}}/\\{{file\\}}$'
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", 400, 404, 413, 422]
# An X-Original-URI header can be a well-formed string and still not be a request target
# (empty, spaces, a bare scheme): 400 naming the header, as nginx never sends such a value.
[[operations]]
include-path-regex = '^/auth/check$'
checks.positive_data_acceptance.expected-statuses = ["2xx", 400, 401, 403, 503]
"""
    )


def test_server_matches_its_openapi_document(tmp_path):
    url, proc, log = start_server(["serve", "--demo"], tmp_path, "contract",
                                  extra_env={"CLOUDIFY_CACHE_DIR": str(tmp_path / "cache")})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = requests.get(f"{url}/datasets/demo/kerchunk.parq/.zmetadata", timeout=30)
            if r.status_code == 200:
                break
            time.sleep(0.2)
        assert r.status_code == 200, r.text
        config = tmp_path / "schemathesis.toml"
        _config(config)
        report = tmp_path / "junit.xml"
        cmd = [schemathesis_exe(), "--config-file", str(config), "run", f"{url}/openapi.json",
               "--checks", "all", "--generation-deterministic",
               "--max-examples", "25", "--max-time", "60", "--workers", "2", "--no-color",
               "--phases", "examples,coverage,fuzzing",
               "--report", "junit", "--report-junit-path", str(report)]
        t0 = time.monotonic()
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=170, cwd=tmp_path,
                             env={**os.environ, "SCHEMATHESIS_HOOKS": ""})
        took = time.monotonic() - t0
        out = run.stdout + run.stderr
        assert run.returncode == 0, f"schemathesis found problems (exit {run.returncode}, {took:.0f} s):\n{out[-12000:]}"
        assert "passed" in out.lower(), out[-3000:]
        assert proc.poll() is None, "the server died:\n" + log.read_text(errors="replace")[-3000:]
    finally:
        stop_server(proc)
