"""Index cache (restarts reuse it, changed files are re-indexed) and the reference routes:
/kerchunk read by xarray, kerchunk.json and `cloudify index` output read through fsspec."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import warnings

import fsspec
import numpy as np
import pytest
import requests
import xarray as xr

from conftest import find_binary, start_server, stop_server
from helpers import open_reference
from test_fidelity import compare_datasets

warnings.filterwarnings("ignore")

# Datasets read through /kerchunk: every variable must come back (compare_datasets checks the
# variable sets), so each one has a byte-range or inline reference.
KERCHUNK_CASES = ["edge_series", "edge_packed", "edge_classic", "edge_offset64", "edge_nanfill",
                  "edge_contig_big", "edge_edgechunks", "edge_alltypes", "edge_tiny", "edge_unlim0",
                  "edge_fletcher"]


def _assert_same(served: xr.Dataset, ref: xr.Dataset, label: str):
    """Same comparison as the /zarr fidelity tests (packed data decodes to float64 from JSON
    attributes, see README)."""
    problems = compare_datasets(served, ref, raw=False, label=label)
    assert not problems, "\n".join(problems[:20])


@pytest.mark.parametrize(
    "name", KERCHUNK_CASES + ["cmip6_MIROC6_day", "cmip6_CanESM5_Amon", "cmip6_BCC-CSM2-MR_day"]
)
def test_kerchunk_route_equals_originals(server, corpus, name):
    ref = open_reference(corpus[name], raw=False).load()
    ds = xr.open_dataset(server.url + f"/datasets/{name}/kerchunk", engine="zarr", zarr_format=2,
                         consolidated=True).load()
    _assert_same(ds, ref, name)


def test_kerchunk_json_through_fsspec(server, corpus):
    spec = corpus["edge_series"]
    refs = requests.get(server.url + "/datasets/edge_series/kerchunk.json", timeout=30).json()
    assert refs["version"] == 1
    fs = fsspec.filesystem("reference", fo=refs)
    ds = xr.open_dataset(fs.get_mapper(""), engine="zarr", zarr_format=2, consolidated=False).load()
    _assert_same(ds, open_reference(spec, raw=False).load(), "kerchunk.json")


def test_kerchunk_errors(server):
    r = requests.get(server.url + "/datasets/edge_series/kerchunk/nope/.zarray", timeout=30)
    assert r.status_code == 404 and "nope" in r.json()["error"]
    r = requests.get(server.url + "/datasets/nope/kerchunk/.zmetadata", timeout=30)
    assert r.status_code == 404 and "nope" in r.json()["error"]


def test_index_command_writes_fsspec_references(corpus, tmp_path):
    spec = corpus["edge_series"]
    out = tmp_path / "refs.json"
    binary = find_binary()
    r = subprocess.run([binary, "index", *spec["files"], "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    fs = fsspec.filesystem("reference", fo=str(out))
    ds = xr.open_dataset(fs.get_mapper(""), engine="zarr", zarr_format=2, consolidated=True).load()
    _assert_same(ds, open_reference(spec, raw=False).load(), "cloudify index")
    # bad input: a missing file is named, exit code non-zero, nothing written
    bad = tmp_path / "bad.json"
    r = subprocess.run([binary, "index", str(tmp_path / "missing.nc"), "-o", str(bad)], capture_output=True, text=True)
    assert r.returncode != 0 and "missing.nc" in r.stderr and not bad.exists()


def test_cache_reused_and_invalidated(corpus, tmp_path):
    """A restart serves from the cache (same metadata and bytes); a changed file is re-indexed."""
    src = tmp_path / "src"
    shutil.copytree(os.path.dirname(corpus["edge_series"]["files"][0]), src)
    cache = tmp_path / "cache"
    env = {"CLOUDIFY_CACHE_DIR": str(cache)}
    args = ["serve", "s", str(src / "part*.nc")]
    url, proc, _ = start_server(args, tmp_path, "cold", extra_env=env)
    try:
        meta1 = requests.get(url + "/datasets/s/zarr/.zmetadata", timeout=30).text
        chunk1 = requests.get(url + "/datasets/s/zarr/tas/0.0.0", timeout=30).content
    finally:
        stop_server(proc)
    entries = sorted(p.name for p in (cache / "index").glob("*.json"))
    assert len(entries) == 3, entries
    # each entry is itself a kerchunk reference set for its file
    doc = json.loads((cache / "index" / entries[0]).read_text())
    assert doc["version"] == 1 and ".zmetadata" in doc["refs"] and doc["cloudify"]["format"] == 6  # open::cache::FORMAT (6: float32 attributes keep their width)
    # restart: cache hit (files untouched) gives identical answers
    url, proc, _ = start_server(args, tmp_path, "warm", extra_env=env)
    try:
        assert requests.get(url + "/datasets/s/zarr/.zmetadata", timeout=30).text == meta1
        assert requests.get(url + "/datasets/s/zarr/tas/0.0.0", timeout=30).content == chunk1
    finally:
        stop_server(proc)
    # change a file (new values, new size and mtime): the stale entry must not be served
    import netCDF4
    target = src / "part2.nc"  # year 2000, the first in time order
    with netCDF4.Dataset(target, "a") as ds:
        ds.variables["tas"][0, 0, 0] = np.float32(-999.0)
        ds.setncattr("note", "changed")
    time.sleep(0.01)
    os.utime(target)
    url, proc, _ = start_server(args, tmp_path, "changed", extra_env=env)
    try:
        ds = xr.open_dataset(url + "/datasets/s/zarr", engine="zarr", zarr_format=3).load()
        assert float(ds.tas[0, 0, 0]) == -999.0
    finally:
        stop_server(proc)


def _wait_parquet(url: str, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        r = requests.get(f"{url}/datasets/{name}/kerchunk.parq/.zmetadata", timeout=30)
        if r.status_code == 200:
            return
        assert r.status_code == 503 and "being written" in r.json()["error"], (r.status_code, r.text)
        assert time.monotonic() < deadline, "Parquet references never appeared"
        time.sleep(0.2)


@pytest.mark.parametrize("name", ["edge_series", "cmip6_CanESM5_Amon"])
def test_parquet_references_persisted_and_served(corpus, tmp_path, name):
    """The index cache keeps the dataset's references as kerchunk Parquet too (keyed by the
    dataset's fingerprint); they are served under /kerchunk.parq/ and read by fsspec over
    HTTP equal the originals. A restart reuses the directory; a changed source gets a new
    one; without a cache the route says why."""
    spec = corpus[name]
    cache = tmp_path / "cache"
    env = {"CLOUDIFY_CACHE_DIR": str(cache)}
    args = ["serve", name, *spec["files"]]
    url, proc, _ = start_server(args, tmp_path, "pq1", extra_env=env)
    try:
        _wait_parquet(url, name)
        fs = fsspec.filesystem("reference", fo=f"{url}/datasets/{name}/kerchunk.parq",
                               remote_protocol="file")
        ds = xr.open_dataset(fs.get_mapper(""), engine="zarr", zarr_format=2, consolidated=False).load()
        _assert_same(ds, open_reference(spec, raw=False).load(), f"{name} kerchunk.parq")
        # range requests work (fsspec's HTTP files use them)
        first = next(p for p in (cache / "refs").glob(f"{name}-*.parq/*/refs.0.parq"))
        rel = first.relative_to(next((cache / "refs").glob(f"{name}-*.parq")))
        r = requests.get(f"{url}/datasets/{name}/kerchunk.parq/{rel}", headers={"Range": "bytes=0-3"}, timeout=30)
        assert r.status_code == 206 and r.content == b"PAR1", (r.status_code, r.content[:8])
        # only reference files are reachable
        for bad in ("../index/x.json", "x/data.bin", "nope/refs.0.parq"):
            r = requests.get(f"{url}/datasets/{name}/kerchunk.parq/{bad}", timeout=30)
            assert r.status_code == 404, (bad, r.status_code)
    finally:
        stop_server(proc)
    dirs = sorted((cache / "refs").glob(f"{name}-*.parq"))
    assert len(dirs) == 1, dirs
    stamp = (dirs[0] / ".zmetadata").stat().st_mtime_ns
    url, proc, _ = start_server(args, tmp_path, "pq2", extra_env=env)
    try:
        _wait_parquet(url, name)
        assert (dirs[0] / ".zmetadata").stat().st_mtime_ns == stamp, "rewritten although unchanged"
    finally:
        stop_server(proc)
    url, proc, _ = start_server(args + ["--no-cache"], tmp_path, "pq3", extra_env=env)
    try:
        r = requests.get(f"{url}/datasets/{name}/kerchunk.parq/.zmetadata", timeout=30)
        assert r.status_code == 404 and "--no-cache" in r.json()["error"], r.text
    finally:
        stop_server(proc)
