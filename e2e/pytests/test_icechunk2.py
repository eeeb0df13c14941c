"""Icechunk spec-version-2 repositories, written by icechunk 2.x, served by `cloudify serve`.

icechunk 2.x wheels need Python >= 3.12 and the test venv has 3.11, so the repositories are
written by icechunk_repos.py run in a second venv (e2e/setup.sh makes it from
e2e/requirements-icechunk2.txt when such a Python is on the machine). The same script exports
what icechunk 2 itself reads from each repository version as a plain Zarr store, which is
what the served dataset is compared with; virtual repositories are compared with the
netCDF files they reference. The content is the one test_icechunk.py writes with icechunk 1.x
(spec version 1)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
import xarray as xr

from test_icechunk import (ROUTES, VERSIONS, _assert_same, _netcdf_files, _open_served, assert_fails_alone,
                           index_refs, serve_repos)

warnings.filterwarnings("ignore")

HERE = Path(__file__).resolve().parent
ICE2_PYTHON = os.environ.get("CLOUDIFY_ICECHUNK2_PYTHON",
                             os.path.join(os.environ.get("CLOUDIFY_ICECHUNK2_VENV", "/var/tmp/cloudify-venv-icechunk2"),
                                          "bin", "python"))
if not os.access(ICE2_PYTHON, os.X_OK):
    pytest.skip(f"no icechunk 2 venv at {ICE2_PYTHON} (needs Python >= 3.12; see e2e/setup.sh)",
                allow_module_level=True)


def _ice2(*args) -> str:
    r = subprocess.run([ICE2_PYTHON, str(HERE / "icechunk_repos.py"), *map(str, args)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


@pytest.fixture(scope="module")
def ice2(tmp_path_factory):
    root = tmp_path_factory.mktemp("icechunk2")
    version = subprocess.run([ICE2_PYTHON, "-c", "import icechunk; print(icechunk.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version.startswith("2."), version
    reg = root / "regular"
    snaps = json.loads(_ice2("regular", reg))
    specs = [
        {"name": "ic2-main", "sources": [str(reg)]},
        {"name": "ic2-tag", "sources": [str(reg)], "icechunk": {"tag": "v1"}},
        {"name": "ic2-dev", "sources": [str(reg)], "icechunk": {"branch": "dev"}},
        {"name": "ic2-snap", "sources": [str(reg)], "icechunk": {"snapshot": snaps["first"]}},
    ]
    exports = {}
    for name, v in VERSIONS.items():
        selector = {"snapshot_id": snaps[v]} if isinstance(v, str) else v
        out = root / "export" / name
        _ice2("export", reg, out, json.dumps(selector), "", "sub")
        exports[name.replace("ic-", "ic2-")] = out
    data = root / "data"
    ncs = _netcdf_files(data)
    for nc in ncs:
        vr = root / f"virtual-{nc.stem}"
        _ice2("virtual", vr, index_refs(nc, root), data)
        specs.append({"name": f"ic2-virtual-{nc.stem}", "sources": [str(vr)], "referenceRoots": [str(data)],
                      "nc": str(nc)})
    corrupt = root / "corrupt-manifest"
    shutil.copytree(reg, corrupt)
    for f in (corrupt / "manifests").iterdir():
        f.write_bytes(f.read_bytes()[:40])
    specs.append({"name": "bad2-manifest", "sources": [str(corrupt)]})
    no_repo_object = root / "no-repo-object"
    shutil.copytree(reg, no_repo_object)
    (no_repo_object / "repo").unlink()
    specs.append({"name": "bad2-no-repo-object", "sources": [str(no_repo_object)], "format": "icechunk"})
    specs.append({"name": "bad2-branch", "sources": [str(reg)], "icechunk": {"branch": "nope"}})

    with serve_repos(root, specs, "icechunk2", "--no-cache") as (url, status, log):
        yield {"url": url, "reg": reg, "exports": exports, "specs": {d["name"]: d for d in specs},
               "status": status, "log": log}


def test_repository_is_spec_version_2(ice2):
    """icechunk 2 wrote the v2 layout (one `repo` object holds branches and tags; spec 1 kept
    them under refs/), so the tests below exercise the v2 reader."""
    reg = ice2["reg"]
    assert (reg / "repo").is_file() and not (reg / "refs").exists(), sorted(p.name for p in reg.iterdir())


@pytest.mark.parametrize("name", [n.replace("ic-", "ic2-") for n in VERSIONS])
@pytest.mark.parametrize("route", ROUTES)
def test_v2_repo_served(ice2, name, route):
    st = ice2["status"][name]
    assert st["state"] == "ready", st
    base = f"{ice2['url']}/datasets/{name}"
    for group in (None, "sub"):
        ref = xr.open_zarr(ice2["exports"][name], group=group, consolidated=False, zarr_format=3).load()
        _assert_same(_open_served(base, route, group), ref, f"{name} {route} group={group}")


def test_v2_versions_differ(ice2):
    main = _open_served(f"{ice2['url']}/datasets/ic2-main", "zarr-v3")
    tag = _open_served(f"{ice2['url']}/datasets/ic2-tag", "zarr-v3")
    assert float(main.temp[0, 0, 0]) == 300.0 and float(tag.temp[0, 0, 0]) != 300.0
    dev = _open_served(f"{ice2['url']}/datasets/ic2-dev", "zarr-v3", group="sub")
    assert list(dev["count"].values[5]) == [5, 6, 7, 8]


@pytest.mark.parametrize("nc", ["chunked", "classic"])
@pytest.mark.parametrize("route", ROUTES)
def test_v2_virtual_repo_served(ice2, nc, route):
    name = f"ic2-virtual-{nc}"
    st = ice2["status"][name]
    assert st["state"] == "ready", st
    ref = xr.open_dataset(ice2["specs"][name]["nc"], engine="netcdf4").load()
    _assert_same(_open_served(f"{ice2['url']}/datasets/{name}", route), ref, f"{name} {route}")


@pytest.mark.parametrize("name,needles", [
    ("bad2-manifest", ["corrupt-manifest", "Icechunk repository"]),
    ("bad2-no-repo-object", ["no-repo-object", "not an Icechunk repository"]),
    ("bad2-branch", ["regular", "branch 'nope'"]),
])
def test_bad_v2_repos(ice2, name, needles):
    assert_fails_alone(ice2, name, needles, good="ic2-main")
