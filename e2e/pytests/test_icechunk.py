"""Icechunk repositories as sources: written here with icechunk from PyPI, served by
`cloudify serve` and read back with xarray over /zarr (v2, v3) and /kerchunk.

* a regular repository (groups, attributes, compressed codecs, missing chunks, fill values,
  inline small chunks, several commits, a tag and a branch) must read back exactly as
  xarray reads it through icechunk, for every version selector;
* a virtual repository (chunks referencing netCDF files, as VirtualiZarr makes them: here
  the references come from `cloudify index`) must equal the netCDF originals;
* bad repositories fail alone with a message naming the repository and the reason.

The test venv's icechunk is 1.x (2.x wheels need Python >= 3.12; the venv has 3.11): its
repositories are spec version 1. test_icechunk2.py writes the same content with icechunk 2.x
from a second venv (spec version 2). The repositories are written by icechunk_repos.py."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import requests
import xarray as xr

from conftest import find_binary, start_server, stop_server, wait_until_settled
from icechunk_repos import read_repo as _read_repo
from icechunk_repos import regular_repo as _regular_repo
from icechunk_repos import virtual_repo
from test_fidelity import compare_datasets

warnings.filterwarnings("ignore")

ROUTES = ["zarr-v2", "zarr-v3", "kerchunk"]


def _assert_same(served: xr.Dataset, ref: xr.Dataset, label: str):
    problems = compare_datasets(served, ref, raw=False, label=label)
    assert not problems, "\n".join(problems[:20])


def _open_served(base: str, route: str, group: str | None = None) -> xr.Dataset:
    if route == "kerchunk":
        return xr.open_dataset(base + "/kerchunk", engine="zarr", zarr_format=2, consolidated=True,
                               group=group).load()
    return xr.open_dataset(base + "/zarr", engine="zarr", zarr_format=int(route[-1]), consolidated=True,
                           group=group).load()


# ---------------------------------------------------------------------------
# repositories
# ---------------------------------------------------------------------------
def _netcdf_files(d: Path) -> list[Path]:
    """netCDF files whose chunks are plain byte ranges (as virtual references need); the
    variables are larger than what `cloudify index` inlines, so they become references."""
    d.mkdir(parents=True, exist_ok=True)
    a = d / "chunked.nc"
    with netCDF4.Dataset(a, "w", format="NETCDF4") as f:
        f.title = "virtual source"
        f.createDimension("time", 4)
        f.createDimension("x", 1200)
        t = f.createVariable("time", "f8", ("time",))
        t.units = "hours since 2001-01-01"
        t[:] = np.arange(4) * 6.0
        v = f.createVariable("tas", "f4", ("time", "x"), chunksizes=(2, 600), fill_value=-999.0)
        v.units = "K"
        v[:] = np.arange(4800, dtype="f4").reshape(4, 1200) + 250
        v[3, 5] = np.ma.masked
        w = f.createVariable("big", "i4", ("time", "x"), contiguous=True)
        w[:] = np.arange(4800, dtype="i4").reshape(4, 1200) * -3
    b = d / "classic.nc"
    with netCDF4.Dataset(b, "w", format="NETCDF3_CLASSIC") as f:
        f.createDimension("y", 5000)
        y = f.createVariable("y", "f8", ("y",))
        y[:] = np.linspace(0, 1, 5000)
        p = f.createVariable("pr", "f4", ("y",))
        p.units = "mm"
        p[:] = np.arange(5000, dtype="f4") / 10
    return [a, b]


def index_refs(nc: Path, tmp: Path) -> Path:
    """`cloudify index` kerchunk references of `nc` (a JSON file in `tmp`)."""
    refs_file = tmp / f"{nc.stem}.refs.json"
    r = subprocess.run([find_binary(), "index", str(nc), "-o", str(refs_file)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return refs_file


def _virtual_repo(path: Path, nc: Path, tmp: Path) -> None:
    """A repository of virtual references to `nc`, from `cloudify index` kerchunk references:
    every byte range becomes `set_virtual_ref`, inlined values become native chunks."""
    virtual_repo(path, json.loads(index_refs(nc, tmp).read_text())["refs"], nc.parent)


@pytest.fixture(scope="module")
def ice(tmp_path_factory):
    root = tmp_path_factory.mktemp("icechunk")
    specs = []
    reg = root / "regular"
    snaps = _regular_repo(reg)
    specs += [
        {"name": "ic-main", "sources": [str(reg)]},  # format auto, branch main
        {"name": "ic-tag", "sources": [str(reg)], "format": "icechunk", "icechunk": {"tag": "v1"}},
        {"name": "ic-dev", "sources": [str(reg)], "icechunk": {"branch": "dev"}},
        {"name": "ic-snap", "sources": [str(reg)], "icechunk": {"snapshot": snaps["first"]}},
    ]
    data = root / "data"
    ncs = _netcdf_files(data)
    for nc in ncs:
        vr = root / f"virtual-{nc.stem}"
        _virtual_repo(vr, nc, root)
        specs.append({"name": f"ic-virtual-{nc.stem}", "sources": [str(vr)], "referenceRoots": [str(data)], "nc": str(nc)})
    # bad inputs
    not_repo = root / "not-a-repo"
    not_repo.mkdir()
    (not_repo / "hello.txt").write_text("hi")
    specs.append({"name": "bad-not-repo", "sources": [str(not_repo)], "format": "icechunk"})
    specs.append({"name": "bad-branch", "sources": [str(reg)], "icechunk": {"branch": "nope"}})
    corrupt_snap = root / "corrupt-snapshot"
    shutil.copytree(reg, corrupt_snap)
    for f in (corrupt_snap / "snapshots").iterdir():
        f.write_bytes(b"garbage" * 10)
    specs.append({"name": "bad-snapshot", "sources": [str(corrupt_snap)]})
    corrupt_man = root / "corrupt-manifest"
    shutil.copytree(reg, corrupt_man)
    for f in (corrupt_man / "manifests").iterdir():
        f.write_bytes(f.read_bytes()[:40])
    specs.append({"name": "bad-manifest", "sources": [str(corrupt_man)]})
    # references outside referenceRoots: the data directory is not allowed
    specs.append({"name": "bad-outside", "sources": [str(root / "virtual-chunked")]})
    # a referenced file changed after the references were written
    moved = root / "moved"
    nc2 = _netcdf_files(moved)[0]
    changed = root / "virtual-changed"
    _virtual_repo(changed, nc2, root)
    later = nc2.stat().st_mtime + 3600
    os.utime(nc2, (later, later))
    specs.append({"name": "bad-changed", "sources": [str(changed)], "referenceRoots": [str(moved)]})

    with serve_repos(root, specs, "icechunk") as (url, status, log):
        yield {"url": url, "reg": reg, "snaps": snaps, "specs": {d["name"]: d for d in specs},
               "status": status, "log": log}


@contextlib.contextmanager
def serve_repos(root: Path, specs: list[dict], label: str, *serve_args: str):
    """One `cloudify serve` for `specs` (their sources, format, icechunk and referenceRoots;
    other keys are the test's own) until every dataset settled: (url, status by name, log)."""
    keys = ("name", "sources", "format", "icechunk", "referenceRoots")
    cfg = root / f"{label}.yaml"  # JSON is YAML: the config reader takes it as is
    cfg.write_text(json.dumps({"datasets": [{k: d[k] for k in keys if d.get(k)} for d in specs]}, indent=1))
    url, proc, log = start_server(["serve", *serve_args, "--config", str(cfg)], root, label)
    try:
        status = wait_until_settled(url, [d["name"] for d in specs], proc)
        yield url, {d["name"]: d for d in status["datasets"]}, log
    finally:
        stop_server(proc)


def assert_fails_alone(env: dict, name: str, needles: list[str], good: str) -> None:
    """Dataset `name` failed with a message holding every needle, answers with a JSON error,
    and the good dataset of the same server is unaffected."""
    st = env["status"][name]
    assert st["state"] == "failed", st
    msg = json.dumps(st)
    for n in needles:
        assert n in msg, msg
    r = requests.get(f"{env['url']}/datasets/{name}/zarr/.zmetadata", timeout=30)
    assert r.status_code >= 400 and r.headers["content-type"].startswith("application/json"), r.text
    assert env["status"][good]["state"] == "ready"
    assert "panicked" not in Path(env["log"]).read_text()


VERSIONS = {
    "ic-main": {"branch": "main"},
    "ic-tag": {"tag": "v1"},
    "ic-dev": {"branch": "dev"},
    "ic-snap": "first",
}


@pytest.mark.parametrize("name", list(VERSIONS))
@pytest.mark.parametrize("route", ROUTES)
def test_regular_repo_served(ice, name, route):
    st = ice["status"][name]
    assert st["state"] == "ready", st
    version = VERSIONS[name]
    if isinstance(version, str):
        version = {"snapshot_id": ice["snaps"][version]}
    base = f"{ice['url']}/datasets/{name}"
    for group in (None, "sub"):
        ref = _read_repo(ice["reg"], group=group, **version)
        _assert_same(_open_served(base, route, group), ref, f"{name} {route} group={group}")


def test_versions_differ(ice):
    """The selectors really pick different snapshots (so the equalities above mean something)."""
    main = _open_served(f"{ice['url']}/datasets/ic-main", "zarr-v3")
    tag = _open_served(f"{ice['url']}/datasets/ic-tag", "zarr-v3")
    assert float(main.temp[0, 0, 0]) == 300.0 and float(tag.temp[0, 0, 0]) != 300.0
    assert main.attrs["version"] == 2 and tag.attrs["version"] == 1
    dev = _open_served(f"{ice['url']}/datasets/ic-dev", "zarr-v3", group="sub")
    assert list(dev["count"].values[5]) == [5, 6, 7, 8]
    # missing chunks read as the fill value (NaN for temp, -1 → masked for count)
    assert np.isnan(main.temp.values[2:4]).all()
    raw = xr.open_dataset(f"{ice['url']}/datasets/ic-main/zarr", engine="zarr", zarr_format=3,
                          consolidated=True, group="sub", mask_and_scale=False).load()
    assert (raw["count"].values[6:9] == -1).all() and raw["count"].values[9, 0] == 42


@pytest.mark.parametrize("nc", ["chunked", "classic"])
@pytest.mark.parametrize("route", ROUTES)
def test_virtual_repo_served(ice, nc, route):
    name = f"ic-virtual-{nc}"
    st = ice["status"][name]
    assert st["state"] == "ready", st
    ref = xr.open_dataset(ice["specs"][name]["nc"], engine="netcdf4").load()
    _assert_same(_open_served(f"{ice['url']}/datasets/{name}", route), ref, f"{name} {route}")


def test_virtual_chunk_bytes_pass_through(ice):
    """A virtual chunk is the referenced byte range, served as stored on /kerchunk."""
    nc = Path(ice["specs"]["ic-virtual-chunked"]["nc"])
    r = requests.get(f"{ice['url']}/datasets/ic-virtual-chunked/kerchunk/tas/.zarray", timeout=30)
    assert r.status_code == 200, r.text
    r = requests.get(f"{ice['url']}/datasets/ic-virtual-chunked/kerchunk/tas/0.0", timeout=30)
    assert r.status_code == 200 and len(r.content) == 2 * 600 * 4
    assert r.content in nc.read_bytes()


@pytest.mark.parametrize("name,needles", [
    ("bad-not-repo", ["not-a-repo", "not an Icechunk repository"]),
    ("bad-branch", ["regular", "branch 'nope'"]),
    ("bad-snapshot", ["corrupt-snapshot", "Icechunk repository"]),
    ("bad-manifest", ["corrupt-manifest", "Icechunk repository"]),
    ("bad-outside", ["virtual-chunked", "outside the allowed roots", "referenceRoots"]),
    ("bad-changed", ["virtual-changed", "chunked.nc", "modified after the virtual reference"]),
])
def test_bad_repos(ice, name, needles):
    assert_fails_alone(ice, name, needles, good="ic-main")
