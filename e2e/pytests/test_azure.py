"""az:// sources against Azurite (Microsoft's Azure Storage emulator, from npm), started here.

The sample series is uploaded with azure-storage-blob and served from
``az://container/<dataset>/*.nc`` (listing glob, Shared Key auth with the emulator's account);
/zarr and /kerchunk must equal xarray on the originals. A missing container is reported naming
the source.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import xarray as xr

from conftest import stop_server
from helpers import cmip6_specs, open_reference
from test_s3 import assert_same, free_port, run_cli, serve_cfg, wait_port

blob = pytest.importorskip("azure.storage.blob")

# e2e/setup.sh installs Azurite here when npm is available.
AZURITE = os.environ.get("CLOUDIFY_AZURITE", "/var/tmp/cloudify-npm/node_modules/.bin/azurite-blob")
ACCOUNT = "devstoreaccount1"
# The emulator's published well-known development key (not a secret).
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
CONTAINER = "cmip"
CASES = ["cmip6_CanESM5_day", "cmip6_MIROC6_day"]
SPECS = {d["name"]: d for d in cmip6_specs()}


@pytest.fixture(scope="module")
def azurite(tmp_path_factory):
    if not os.path.exists(AZURITE):
        pytest.skip(f"Azurite not installed at {AZURITE} (e2e/setup.sh installs it when npm exists)")
    tmp = tmp_path_factory.mktemp("azurite")
    port = free_port()
    proc = subprocess.Popen([AZURITE, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(tmp),
                             "--silent", "--skipApiVersionCheck", "--loose"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_port(port, proc, "azurite")
        url = f"http://127.0.0.1:{port}"
        conn = (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
                f"BlobEndpoint={url}/{ACCOUNT};")
        svc = blob.BlobServiceClient.from_connection_string(conn)
        svc.create_container(CONTAINER)
        c = svc.get_container_client(CONTAINER)
        for name in CASES:
            for f in SPECS[name]["files"]:
                with open(f, "rb") as fh:
                    c.upload_blob(f"{name}/{Path(f).name}", fh)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def az_storage() -> dict:
    # object_store's emulator mode: Shared Key with the development account, the blob
    # endpoint from AZURITE_BLOB_STORAGE_URL (set in the server's environment).
    return {"options": {"azure_storage_use_emulator": "true", "azure_storage_account_name": ACCOUNT,
                        "azure_storage_account_key": KEY}}


def test_az_sources_equal_originals(azurite, tmp_path):
    datasets = [{"name": n, "sources": [f"az://{CONTAINER}/{n}/*.nc"], "storage": az_storage()} for n in CASES]
    url, proc, _ = serve_cfg(tmp_path, "az", datasets, {"AZURITE_BLOB_STORAGE_URL": azurite})
    try:
        for name in CASES:
            ref = open_reference(SPECS[name], raw=False).load()
            for fmt in (2, 3):
                ds = xr.open_dataset(f"{url}/datasets/{name}/zarr", engine="zarr", zarr_format=fmt).load()
                assert_same(ds, ref, f"{name} az v{fmt}")
            ds = xr.open_dataset(f"{url}/datasets/{name}/kerchunk", engine="zarr", zarr_format=2).load()
            assert_same(ds, ref, f"{name} az kerchunk")
    finally:
        stop_server(proc)


def test_az_missing_container_named(azurite, tmp_path):
    src = "az://nocontainer/x/*.nc"
    cfg = tmp_path / "m.yaml"
    cfg.write_text(json.dumps({"datasets": [{"name": "m", "sources": [src], "storage": az_storage()}]}))
    r = run_cli(["serve", "--config", str(cfg)],
                {"AZURITE_BLOB_STORAGE_URL": azurite, "CLOUDIFY_CACHE_DIR": str(tmp_path / "c")})
    assert r.returncode != 0 and src in r.stderr, r.stderr
