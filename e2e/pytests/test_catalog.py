"""Catalogs with real clients: cloudify serve's STAC/intake routes and `cloudify catalog`.

Self-contained: starts its own `cloudify serve --demo` (registering into) a `cloudify
catalog`, so it does not depend on the session server of conftest.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from conftest import find_binary

TOKEN = "catalog-test-token"


def _start(args: list[str], workdir: Path, tag: str) -> tuple[str, subprocess.Popen]:
    listen = workdir / f"{tag}.listen"
    listen.unlink(missing_ok=True)
    log = open(workdir / f"{tag}.log", "ab")
    proc = subprocess.Popen([find_binary(), *args, "--host", "127.0.0.1", "--port-range", "19000-19999",
                             "--listen-file", str(listen)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError((workdir / f"{tag}.log").read_text()[-3000:])
        if listen.exists() and listen.read_text().strip().startswith("http"):
            return listen.read_text().strip().rstrip("/"), proc
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{tag} did not start")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def cat_env(tmp_path_factory):
    if not find_binary():
        pytest.skip("cloudify binary not built")
    wd = tmp_path_factory.mktemp("catalog")
    (wd / "token").write_text(TOKEN + "\n")
    store = wd / "store"
    cat_args = ["catalog", "--data", str(store), "--token-file", str(wd / "token")]
    cat_url, cat = _start(cat_args, wd, "catalog")
    srv_url, srv = _start(["serve", "--demo", "--cache-dir", str(wd / "cache"), "--register", cat_url,
                           "--register-token-file", str(wd / "token"), "--deregister-on-exit"], wd, "serve")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if requests.get(f"{cat_url}/collections/cloudify/items/demo", timeout=10).status_code == 200:
            break
        time.sleep(0.2)
    env = {"wd": wd, "cat_url": cat_url, "srv_url": srv_url, "cat": cat, "srv": srv, "cat_args": cat_args}
    yield env
    _stop(env["srv"])
    _stop(env["cat"])


def test_item_shape_and_datacube(cat_env):
    it = requests.get(f"{cat_env['srv_url']}/datasets/demo/stac", timeout=30).json()
    assert it["type"] == "Feature" and it["stac_version"] == "1.1.0"
    assert it["bbox"] == [-180.0, -89.0, 180.0, 89.0]  # 0..360 longitudes, global
    p = it["properties"]
    assert p["start_datetime"] == "2000-01-01T00:00:00Z"  # noleap time bounds decoded
    assert p["end_datetime"] == "2002-01-01T00:00:00Z"
    assert p["cube:dimensions"]["time"]["type"] == "temporal"
    assert p["cube:variables"]["tas"]["unit"] == "K"
    assert it["assets"]["zarr-v2"]["xarray:open_kwargs"]["zarr_format"] == 2


def test_public_url_from_host_header(cat_env):
    it = requests.get(f"{cat_env['srv_url']}/datasets/demo/stac", headers={"Host": "data.example.org"},
                      timeout=30).json()
    assert it["assets"]["zarr-v3"]["href"] == "http://data.example.org/datasets/demo/zarr"


def test_register_search_open_with_xarray(cat_env):
    import pystac_client
    import xarray as xr
    import xpystac  # noqa: F401  (registers the xarray backend for STAC assets)

    client = pystac_client.Client.open(cat_env["cat_url"])
    hits = list(client.search(bbox=[-10, -10, 10, 10], datetime="2000-03-01/2000-04-01").items())
    assert [i.id for i in hits] == ["demo"]
    assert list(client.search(bbox=[-10, -10, 10, 10], datetime="1990-01-01/1991-01-01").items()) == []
    assert [i.id for i in client.search(ids=["demo"]).items()] == ["demo"]
    ref = xr.open_dataset(f"{cat_env['srv_url']}/datasets/demo/zarr", engine="zarr", zarr_format=2)
    for key in ("zarr-v2", "zarr-v3"):
        ds = xr.open_dataset(hits[0].assets[key])
        np.testing.assert_array_equal(ds.tas.values, ref.tas.values)


def test_intake_lists_and_opens(cat_env):
    import intake

    cat = intake.open_catalog(f"{cat_env['srv_url']}/intake.yaml")
    assert list(cat) == ["demo"]
    assert cat["demo"].to_dask().tas.shape == (24, 90, 180)
    one = intake.open_catalog(f"{cat_env['srv_url']}/datasets/demo/catalog.yaml")
    assert list(one) == ["demo"]


def test_transactions_auth_and_errors(cat_env):
    u = cat_env["cat_url"]
    item = requests.get(f"{u}/collections/cloudify/items/demo", timeout=10).json()
    assert requests.post(f"{u}/collections/cloudify/items", json=item, timeout=10).status_code == 401
    bad_auth = {"Authorization": "Bearer nope"}
    assert requests.post(f"{u}/collections/cloudify/items", json=item, headers=bad_auth, timeout=10).status_code == 403
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = requests.post(f"{u}/collections/cloudify/items", json=item, headers=auth, timeout=10)
    assert r.status_code == 409
    broken = dict(item, properties={})
    broken["id"] = "broken"
    r = requests.post(f"{u}/collections/cloudify/items", json=broken, headers=auth, timeout=10)
    assert r.status_code == 400 and "datetime" in r.json()["description"]
    assert requests.get(f"{u}/collections/nope/items/x", timeout=10).status_code == 404
    big = b"{" + b" " * (9 << 20) + b"}"
    r = requests.post(f"{u}/collections", data=big, headers={**auth, "Content-Type": "application/json"},
                      timeout=30)
    assert r.status_code == 413
    assert requests.get(f"{u}/collections/cloudify/items/broken", timeout=10).status_code == 404


def test_paging(cat_env):
    u = cat_env["cat_url"]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    base = requests.get(f"{u}/collections/cloudify/items/demo", timeout=10).json()
    for i in range(3):
        it = dict(base, id=f"copy-{i}", links=[])
        assert requests.post(f"{u}/collections/cloudify/items", json=it, headers=auth, timeout=10).status_code == 201
    import pystac_client

    client = pystac_client.Client.open(u)
    pages = list(client.search(collections=["cloudify"], limit=2).pages())
    assert len(pages) == 2
    assert sorted(i.id for p in pages for i in p.items) == ["copy-0", "copy-1", "copy-2", "demo"]
    for i in range(3):
        assert requests.delete(f"{u}/collections/cloudify/items/copy-{i}", headers=auth, timeout=10).status_code == 204


def test_static_export_validates(cat_env, tmp_path):
    out = tmp_path / "static"
    demo = sorted((cat_env["wd"] / "cache").rglob("*.nc"))
    assert demo, "demo files in the cache dir"
    subprocess.run([find_binary(), "stac", "export", "demo", *map(str, demo), "--out", str(out),
                    "--public-url", cat_env["srv_url"]], check=True, capture_output=True)
    import pystac

    cat = pystac.Catalog.from_file(str(out / "catalog.json"))
    items = list(cat.get_items(recursive=True))
    assert [i.id for i in items] == ["demo"]


def test_deregister_and_restart(cat_env):
    u = cat_env["cat_url"]
    _stop(cat_env["srv"])  # --deregister-on-exit
    assert requests.get(f"{u}/collections/cloudify/items/demo", timeout=10).status_code == 404
    _stop(cat_env["cat"])
    url, proc = _start(cat_env["cat_args"], cat_env["wd"], "catalog2")
    cat_env["cat"] = proc
    assert requests.get(f"{url}/collections/cloudify", timeout=10).status_code == 200
