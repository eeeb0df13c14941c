"""`cloudify catalog` answers as its OpenAPI document (`/api`) says: schemathesis generates
requests for every documented operation — transactions included, with the bearer token —
and checks each answer: no 5xx for client mistakes, status codes, content types and bodies
as documented (errors in the STAC shape), 405 with `Allow` for other methods.

Bounded like test_openapi_contract.py: deterministic generation, few examples per operation
and a 60 s budget, so the run takes well under two minutes."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import requests

from conftest import schemathesis_exe, start_server, stop_server

TOKEN = "contract-token"


def _config(path: Path) -> None:
    path.write_text(
        f"""
headers = {{ Authorization = "Bearer {TOKEN}" }}

[dictionaries.collections]
values = ["c"]
[dictionaries.items]
values = ["x"]

[parameters]
"path.collectionId" = {{ dictionary = "collections", probability = 0.5 }}
"path.featureId" = {{ dictionary = "items", probability = 0.5 }}

# Schema-valid requests the catalog still refuses, for reasons JSON Schema cannot state: a
# search parameter or CQL2 filter that is a well-formed string but no valid bbox, datetime or
# expression (400); a document whose id is not the URL's, whose bbox or dates stac-rs refuses
# (400), that exists already (409), or that names a collection or item not (or no longer)
# there (404).
[[operations]]
include-path-regex = '^/(search|collections)'
checks.positive_data_acceptance.expected-statuses = ["2xx", 400, 404, 409]
"""
    )


def _seed(url: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    coll = {"type": "Collection", "stac_version": "1.1.0", "id": "c", "description": "d", "license": "CC0-1.0",
            "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]},
                       "temporal": {"interval": [["2000-01-01T00:00:00Z", None]]}}, "links": []}
    r = requests.post(f"{url}/collections", json=coll, headers=auth, timeout=30)
    assert r.status_code == 201, r.text
    for i, dt in enumerate(["2000-01-01T00:00:00Z", "2001-06-01T00:00:00Z"]):
        item = {"type": "Feature", "stac_version": "1.1.0", "id": "x" if i == 0 else "y",
                "geometry": {"type": "Point", "coordinates": [i, i]}, "bbox": [i, i, i, i],
                "properties": {"datetime": dt, "cloud": 10 * i}, "links": [], "assets": {}}
        r = requests.post(f"{url}/collections/c/items", json=item, headers=auth, timeout=30)
        assert r.status_code == 201, r.text


def test_catalog_matches_its_openapi_document(tmp_path):
    (tmp_path / "token").write_text(TOKEN + "\n")
    url, proc, log = start_server(["catalog", "--data", str(tmp_path / "store"), "--token-file",
                                   str(tmp_path / "token"), "--max-body", "1048576"], tmp_path, "catalog")
    try:
        _seed(url)
        doc = requests.get(f"{url}/api", timeout=30).json()
        assert "/collections/{collectionId}/items/{featureId}" in doc["paths"], sorted(doc["paths"])
        config = tmp_path / "schemathesis.toml"
        _config(config)
        report = tmp_path / "junit.xml"
        cmd = [schemathesis_exe(), "--config-file", str(config), "run", f"{url}/api",
               "--checks", "all", "--generation-deterministic",
               "--max-examples", "25", "--max-time", "60", "--workers", "2", "--no-color",
               "--phases", "examples,coverage,fuzzing",
               "--report", "junit", "--report-junit-path", str(report)]
        t0 = time.monotonic()
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=170, cwd=tmp_path,
                             env={**os.environ, "SCHEMATHESIS_HOOKS": ""})
        took = time.monotonic() - t0
        out = run.stdout + run.stderr
        assert run.returncode == 0, f"schemathesis found problems (exit {run.returncode}, {took:.0f} s):\n{out[:3000]}\n...\n{out[-12000:]}"
        assert "passed" in out.lower(), out[-3000:]
        assert proc.poll() is None, "the catalog died:\n" + log.read_text(errors="replace")[-3000:]
        # nothing the generated requests did was a server error (they are logged as ERROR)
        errors = [line for line in log.read_text(errors="replace").splitlines() if " ERROR " in line]
        assert not errors, "\n".join(errors[:20])
    finally:
        stop_server(proc)
