"""Directory-like sources in an object store (a real S3 API: moto, started here).

Zarr stores (v2 consolidated, v3 sharded, v3 with a zarrs-decoded codec chain), kerchunk
reference sets (JSON and Parquet, absolute and relative references), and Icechunk
repositories (regular, and virtual with references to objects) are written locally with
the real libraries, uploaded to a bucket, served from ``s3://`` URLs and read back with
xarray over /zarr v2, /zarr v3 and /kerchunk: what is served must equal the local
originals. Bad input fails alone naming the source: a prefix that holds nothing, wrong
credentials, an object-stored reference set pointing at local files, a glob over
directory-like sources, a virtual chunk whose object changed."""
from __future__ import annotations

import datetime as dt
import json
import subprocess
import warnings
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import requests
import xarray as xr

from conftest import find_binary, stop_server
from test_fidelity import compare_datasets
from test_s3 import REGION, _clean_env, no_aws_env, serve_cfg, start_moto, stop_process, storage

icechunk = pytest.importorskip("icechunk")
import icechunk_repos  # noqa: E402
import test_icechunk  # noqa: E402
import test_zarr_stores  # noqa: E402

warnings.filterwarnings("ignore")

BUCKET = "stores"
ROUTES = [("zarr", 2), ("zarr", 3), ("kerchunk", 2)]


def _upload_tree(s3, local: Path, prefix: str) -> None:
    for f in sorted(local.rglob("*")):
        if f.is_file():
            s3.upload_file(str(f), BUCKET, f"{prefix}/{f.relative_to(local).as_posix()}")


def _index(args: list[str], moto, creds: Path) -> None:
    r = subprocess.run(
        [find_binary(), "index", *args, "--no-cache", "--storage-endpoint", moto.endpoint,
         "--storage-region", REGION, "--storage-allow-http", "--storage-credentials-file", str(creds)],
        capture_output=True, text=True, timeout=300, env=_clean_env(), stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr


def _virtual_repo_to_objects(path: Path, refs: dict, prefix: str, moto, when: dt.datetime) -> None:
    """A repository whose chunks are virtual references to objects under `prefix`
    (`s3://stores/refs/`), with `when` as their last-modified checksum."""
    config = icechunk.RepositoryConfig.default()
    store = icechunk.s3_store(region=REGION, endpoint_url=moto.endpoint, allow_http=True, s3_compatible=True)
    config.set_virtual_chunk_container(icechunk.VirtualChunkContainer(prefix, store))
    assert all(v[0].startswith(prefix) for v in refs.values() if isinstance(v, list))
    icechunk_repos.repo_from_refs(path, refs, config, when)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("objsrc")
    m = start_moto(tmp)
    try:
        s3 = m.client()
        s3.create_bucket(Bucket=BUCKET)
        creds = tmp / "creds"
        creds.write_text(f"aws_access_key_id={m.key_id}\naws_secret_access_key={m.secret}\n")
        refs_local = {}  # dataset name -> what it must equal
        # Zarr stores
        v2 = tmp / "v2.zarr"
        ds2 = xr.Dataset({"t2m": (("time", "y", "x"), test_zarr_stores.T2M, {"units": "K"}),
                          "cnt": (("y", "x"), test_zarr_stores.CNT)},
                         coords={"y": np.arange(10.0), "x": np.arange(12.0) * 0.5}, attrs={"title": "v2"})
        ds2.to_zarr(v2, mode="w", zarr_format=2, consolidated=True, encoding={"t2m": {"chunks": (2, 5, 6), "compressors": [numcodecs.Zlib(level=4)]}})
        (v2 / "t2m" / "0.0.1").unlink()  # a missing chunk reads as the fill value
        sharded = tmp / "sharded.zarr"
        test_zarr_stores._sharded(sharded)
        crc = tmp / "crc.zarr"
        test_zarr_stores._crc32c(crc)
        for name, local in (("v2", v2), ("sharded", sharded), ("crc", crc)):
            _upload_tree(s3, local, f"zarr/{name}.zarr")
            refs_local[f"zarr-{name}"] = ("zarr", local)
        # Icechunk: a regular repository uploaded as is
        reg = tmp / "regular-repo"
        icechunk_repos.regular_repo(reg)
        _upload_tree(s3, reg, "ice/regular")
        # netCDF files in the bucket, and references to them made by `cloudify index` over s3
        data = tmp / "data"
        ncs = test_icechunk._netcdf_files(data)
        for nc in ncs:
            s3.upload_file(str(nc), BUCKET, f"refs/{nc.name}")
        chunked = f"s3://{BUCKET}/refs/chunked.nc"
        _index([chunked, "-o", str(tmp / "abs.json")], m, creds)
        _index([chunked, "-o", str(tmp / "abs.parq")], m, creds)
        s3.upload_file(str(tmp / "abs.json"), BUCKET, "refs/abs.json")
        _upload_tree(s3, tmp / "abs.parq", "refs/abs.parq")
        doc = json.loads((tmp / "abs.json").read_text())
        rel = {k: ([v[0].replace(f"s3://{BUCKET}/refs/", ""), *v[1:]] if isinstance(v, list) else v)
               for k, v in doc["refs"].items()}
        assert any(isinstance(v, list) and v[0] == "chunked.nc" for v in rel.values())
        (tmp / "rel.json").write_text(json.dumps({"version": 1, "refs": rel}))
        s3.upload_file(str(tmp / "rel.json"), BUCKET, "refs/rel.json")
        # an object-stored reference set pointing at a local file: must be refused
        local = {k: ([str(data / "chunked.nc"), *v[1:]] if isinstance(v, list) else v) for k, v in doc["refs"].items()}
        (tmp / "local.json").write_text(json.dumps({"version": 1, "refs": local}))
        s3.upload_file(str(tmp / "local.json"), BUCKET, "refs/local.json")
        # Icechunk virtual references to the objects
        head = s3.head_object(Bucket=BUCKET, Key="refs/chunked.nc")
        modified = head["LastModified"].astimezone(dt.timezone.utc)
        later = modified + dt.timedelta(seconds=5)
        vrepo = tmp / "virtual-repo"
        _virtual_repo_to_objects(vrepo, doc["refs"], f"s3://{BUCKET}/refs/", m, later)
        _upload_tree(s3, vrepo, "ice/virtual")
        stale = tmp / "stale-repo"
        _virtual_repo_to_objects(stale, doc["refs"], f"s3://{BUCKET}/refs/", m,
                                 modified - dt.timedelta(days=1))
        _upload_tree(s3, stale, "ice/stale")

        st = storage(m.endpoint, credentialsFile=str(creds))
        datasets = [
            {"name": "zarr-v2", "sources": [f"s3://{BUCKET}/zarr/v2.zarr"], "storage": st},
            {"name": "zarr-sharded", "sources": [f"s3://{BUCKET}/zarr/sharded.zarr/"], "format": "zarr", "storage": st},
            {"name": "zarr-crc", "sources": [f"s3://{BUCKET}/zarr/crc.zarr"], "storage": st},
            {"name": "ice-regular", "sources": [f"s3://{BUCKET}/ice/regular"], "storage": st},
            {"name": "ice-tag", "sources": [f"s3://{BUCKET}/ice/regular"], "format": "icechunk",
             "icechunk": {"tag": "v1"}, "storage": st},
            {"name": "ice-virtual", "sources": [f"s3://{BUCKET}/ice/virtual"], "format": "icechunk",
             "referenceRoots": [f"s3://{BUCKET}/refs/"], "storage": st},
            {"name": "refs-json", "sources": [f"s3://{BUCKET}/refs/abs.json"], "storage": st},
            {"name": "refs-parquet", "sources": [f"s3://{BUCKET}/refs/abs.parq"], "format": "kerchunk", "storage": st},
            {"name": "refs-relative", "sources": [f"s3://{BUCKET}/refs/rel.json"], "storage": st},
            {"name": "refs-glob", "sources": [f"s3://{BUCKET}/refs/a*.json"], "format": "kerchunk", "storage": st},
            # bad input
            {"name": "bad-local-refs", "sources": [f"s3://{BUCKET}/refs/local.json"], "storage": st},
            {"name": "bad-empty", "sources": [f"s3://{BUCKET}/zarr/nothing.zarr"], "format": "zarr", "storage": st},
            {"name": "bad-glob", "sources": [f"s3://{BUCKET}/zarr/*.zarr"], "format": "zarr", "storage": st},
            {"name": "bad-stale", "sources": [f"s3://{BUCKET}/ice/stale"], "format": "icechunk",
             "referenceRoots": [f"s3://{BUCKET}/refs/"], "storage": st},
            {"name": "bad-virtual-root", "sources": [f"s3://{BUCKET}/ice/virtual"], "format": "icechunk",
             "storage": st},
            {"name": "bad-credentials", "sources": [f"s3://{BUCKET}/zarr/v2.zarr"], "format": "zarr",
             "storage": storage(m.endpoint, credentialsFile=str(tmp / "wrong-creds"))},
            {"name": "bad-ice-credentials", "sources": [f"s3://{BUCKET}/ice/regular"], "format": "icechunk",
             "storage": storage(m.endpoint, credentialsFile=str(tmp / "wrong-creds"))},
        ]
        (tmp / "wrong-creds").write_text("aws_access_key_id=AKIAWRONG\naws_secret_access_key=nope\n")
        url, proc, log = serve_cfg(tmp, "objsrc", datasets, no_aws_env())
        status = {d["name"]: d for d in requests.get(f"{url}/status", timeout=10).json()["datasets"]}
        try:
            yield {"url": url, "status": status, "v2": v2, "sharded": sharded, "crc": crc, "reg": reg,
                   "nc": data / "chunked.nc", "log": log, "moto": m}
        finally:
            alive = proc.poll() is None
            stop_server(proc)
            assert alive, log.read_text(errors="replace")[-3000:]
    finally:
        stop_process(m.proc)


def _open(url: str, route: str, fmt: int, group: str | None = None) -> xr.Dataset:
    return xr.open_dataset(f"{url}/{route}", engine="zarr", zarr_format=fmt, consolidated=True,
                           group=group).load()


def _same(served: xr.Dataset, ref: xr.Dataset, label: str) -> None:
    problems = compare_datasets(served, ref, raw=False, label=label)
    assert not problems, "\n".join(problems[:20])


def _ready(env, name):
    st = env["status"][name]
    assert st["state"] == "ready", st


@pytest.mark.parametrize("name", ["v2", "sharded", "crc"])
@pytest.mark.parametrize("route,fmt", ROUTES)
def test_zarr_stores_from_s3(env, name, route, fmt):
    _ready(env, f"zarr-{name}")
    if name == "crc" and route == "kerchunk":
        pytest.skip("crc32c-last chains have no numcodecs spelling (left out of /kerchunk, see test_zarr_stores)")
    local = env[name]
    groups = [None, "sub"] if name == "sharded" else [None]
    for g in groups:
        ref = xr.open_zarr(local, consolidated=False, group=g).load()
        _same(_open(f"{env['url']}/datasets/zarr-{name}", route, fmt, g), ref, f"{name} {route} v{fmt} {g}")


@pytest.mark.parametrize("name,version", [("ice-regular", {"branch": "main"}), ("ice-tag", {"tag": "v1"})])
@pytest.mark.parametrize("route,fmt", ROUTES)
def test_icechunk_from_s3(env, name, version, route, fmt):
    _ready(env, name)
    for g in (None, "sub"):
        ref = icechunk_repos.read_repo(env["reg"], group=g, **version)
        _same(_open(f"{env['url']}/datasets/{name}", route, fmt, g), ref, f"{name} {route} v{fmt} {g}")


@pytest.mark.parametrize("name", ["ice-virtual", "refs-json", "refs-parquet", "refs-relative", "refs-glob"])
@pytest.mark.parametrize("route,fmt", ROUTES)
def test_references_to_objects_from_s3(env, name, route, fmt):
    _ready(env, name)
    ref = xr.open_dataset(env["nc"]).load()
    _same(_open(f"{env['url']}/datasets/{name}", route, fmt), ref, f"{name} {route} v{fmt}")


def test_bad_object_sources_fail_alone_naming_the_source(env):
    status = env["status"]
    want = {
        "bad-local-refs": ["referenceRoots", "chunked.nc"],
        "bad-empty": [f"s3://{BUCKET}/zarr/nothing.zarr", "not a Zarr store"],
        "bad-glob": ["globs", "zarr"],
        "bad-stale": ["chunked.nc", "modified after", "stale"],
        "bad-virtual-root": [f"s3://{BUCKET}/refs/", "referenceRoots"],
        "bad-credentials": [f"s3://{BUCKET}/zarr/v2.zarr"],
        "bad-ice-credentials": [f"s3://{BUCKET}/ice/regular", "Icechunk repository"],
    }
    for name, needles in want.items():
        st = status[name]
        assert st["state"] == "failed", st
        for n in needles:
            assert n in st.get("error", ""), (name, n, st)
        r = requests.get(f"{env['url']}/datasets/{name}/zarr/.zmetadata", timeout=10)
        assert r.status_code == 503, (name, r.status_code, r.text)
    # wrong credentials are reported as such, not as "not a repository/store"
    for name in ("bad-credentials", "bad-ice-credentials"):
        err = status[name]["error"]
        assert "not an Icechunk repository" not in err and "not a Zarr store" not in err, err
    # the others are unaffected
    assert requests.get(f"{env['url']}/datasets/zarr-v2/zarr/.zmetadata", timeout=10).status_code == 200


def test_zarr_chunks_pass_through_from_s3(env):
    """A v2 store's chunk objects are served byte for byte (no decode/re-encode): zlib is
    declared as is on /zarr v2 too."""
    m = env["moto"]
    body = m.client().get_object(Bucket=BUCKET, Key="zarr/v2.zarr/t2m/0.0.0")["Body"].read()
    r = requests.get(f"{env['url']}/datasets/zarr-v2/kerchunk/t2m/0.0.0", timeout=30)
    assert r.status_code == 200 and r.content == body
    r = requests.get(f"{env['url']}/datasets/zarr-v2/zarr/t2m/0.0.0", timeout=30)
    assert r.status_code == 200 and r.content == body
