"""Icechunk repositories as sources: written here with icechunk from PyPI, served by
`cloudify serve` and read back with xarray over /zarr (v2, v3) and /kerchunk.

* a regular repository (groups, attributes, compressed codecs, missing chunks, fill values,
  inline small chunks, several commits, a tag and a branch) must read back exactly as
  xarray reads it through icechunk, for every version selector;
* a virtual repository (chunks referencing netCDF files, as VirtualiZarr makes them: here
  the references come from `cloudify index`) must equal the netCDF originals;
* bad repositories fail alone with a message naming the repository and the reason.

The PyPI wheel is icechunk 1.x (2.x wheels need Python >= 3.12; the test venv has 3.11):
its repositories are spec version 1, which the server's icechunk 2.3 crate reads."""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import icechunk
import netCDF4
import numpy as np
import pytest
import requests
import xarray as xr
import zarr
from zarr.codecs import BloscCodec, BytesCodec, GzipCodec, ZstdCodec

from conftest import find_binary, start_server, stop_server, wait_until_settled
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
def _regular_repo(path: Path) -> dict:
    """Writes the regular repository; returns its snapshot ids."""
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(path)))
    rng = np.random.default_rng(3)
    temp = rng.normal(280, 5, size=(6, 20, 32)).astype("f4")
    temp[2:4, :, :] = np.nan  # whole chunks of fill value: never written (missing chunks)
    ds = xr.Dataset(
        {
            "temp": (("time", "lat", "lon"), temp, {"units": "K", "long_name": "air temperature"}),
            # one 160-byte chunk: below the inline threshold, stored in the manifest
            "small": (("lat",), np.arange(20, dtype="i8") * 7, {"note": "inline"}),
            "mask": (("lat", "lon"), (rng.random((20, 32)) > 0.5).astype("u1")),
        },
        coords={
            "time": ("time", np.arange(6, dtype="f8"), {"units": "days since 2000-01-01", "calendar": "standard"}),
            "lat": ("lat", np.linspace(-40, 40, 20).astype("f4"), {"units": "degrees_north"}),
            "lon": ("lon", np.linspace(0, 348.75, 32), {"units": "degrees_east"}),
        },
        attrs={"title": "icechunk regular repository", "version": 1},
    )
    enc = {
        "temp": {"chunks": (2, 20, 16), "compressors": [ZstdCodec(level=3)], "_FillValue": np.float32(np.nan)},
        "mask": {"chunks": (10, 16), "compressors": [GzipCodec(level=2)]},
        "lon": {"compressors": [BloscCodec(cname="lz4")]},
    }
    s = repo.writable_session("main")
    ds.to_zarr(s.store, mode="w", zarr_format=3, consolidated=False, encoding=enc)
    # a subgroup with attributes, an integer array with a fill value and missing chunks
    g = zarr.open_group(s.store, mode="a")
    sub = g.create_group("sub", attributes={"about": "a subgroup", "n": [1, 2, 3]})
    cnt = sub.create_array("count", shape=(10, 4), chunks=(3, 2), dtype="i2", fill_value=-1,
                           compressors=[GzipCodec(level=1)], dimension_names=["y", "x"],
                           attributes={"_FillValue": -1, "units": "1"})
    cnt[:3, :] = np.arange(12, dtype="i2").reshape(3, 4)  # rows 3.. never written
    cnt[9, 0] = 42
    # sharded arrays: shards big enough to be chunk objects (one inner chunk never written)
    # and tiny ones icechunk keeps inline in the manifest
    tiles = sub.create_array("tiles", shape=(8, 256), chunks=(2, 64), shards=(4, 128), dtype="f4",
                             fill_value=np.nan, dimension_names=["ty", "tx"], attributes={"units": "m"})
    vals = rng.random((8, 256)).astype("f4")
    vals[2:4, 64:128] = np.nan
    tiles[:2] = vals[:2]
    tiles[2:, :64] = vals[2:, :64]
    tiles[2:, 128:] = vals[2:, 128:]
    tiny = sub.create_array("tiny", shape=(6,), chunks=(1,), shards=(2,), dtype="i1", fill_value=0,
                            dimension_names=["k"])
    tiny[:4] = np.arange(1, 5, dtype="i1")
    first = s.commit("first version")
    repo.create_tag("v1", snapshot_id=first)
    repo.create_branch("dev", snapshot_id=first)
    # second commit on main: new values, a changed attribute
    s = repo.writable_session("main")
    g = zarr.open_group(s.store, mode="a")
    g["temp"][0, :, :] = np.full((20, 32), 300.0, dtype="f4")
    g.attrs["version"] = 2
    second = s.commit("second version")
    # the dev branch diverges
    s = repo.writable_session("dev")
    g = zarr.open_group(s.store, mode="a")
    g["sub/count"][5, :] = np.array([5, 6, 7, 8], dtype="i2")
    dev = s.commit("dev change")
    return {"first": first, "second": second, "dev": dev}


def _read_repo(path: Path, group: str | None = None, **version) -> xr.Dataset:
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))
    s = repo.readonly_session(**(version or {"branch": "main"}))
    return xr.open_zarr(s.store, consolidated=False, zarr_format=3, group=group).load()


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


def _virtual_repo(path: Path, nc: Path, tmp: Path, checksum: bool = True) -> None:
    """A repository of virtual references to `nc`, from `cloudify index` kerchunk references:
    every byte range becomes `set_virtual_ref`, inlined values become native chunks."""
    refs_file = tmp / f"{nc.stem}.refs.json"
    r = subprocess.run([find_binary(), "index", str(nc), "-o", str(refs_file)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    refs = json.loads(refs_file.read_text())["refs"]
    prefix = f"file://{nc.parent}/"
    config = icechunk.RepositoryConfig.default()
    config.set_virtual_chunk_container(icechunk.VirtualChunkContainer(prefix, icechunk.local_filesystem_store(str(nc.parent))))
    mtime = dt.datetime.fromtimestamp(int(nc.stat().st_mtime) + 1, tz=dt.timezone.utc)
    repo_from_refs(path, refs, config, mtime if checksum else None,
                   lambda url: url if url.startswith("file://") else f"file://{url}",
                   authorize_virtual_chunk_access=icechunk.containers_credentials({prefix: None}))


def repo_from_refs(path: Path, refs: dict, config, checksum, url_of=lambda url: url, **create) -> None:
    """Writes a repository (with `config`'s virtual chunk containers) holding kerchunk
    references `refs` as VirtualiZarr would: byte ranges become virtual references (to
    `url_of(url)`, with `checksum`), inlined values native chunks."""
    import base64
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(path)), config=config, **create)
    s = repo.writable_session("main")
    root = zarr.open_group(s.store, mode="w", zarr_format=3, attributes=json.loads(refs.get(".zattrs", "{}")))
    for key in sorted(k for k in refs if k.endswith("/.zarray")):
        name = key[: -len("/.zarray")]
        za = json.loads(refs[key])
        attrs = json.loads(refs.get(f"{name}/.zattrs", "{}"))
        dims = attrs.pop("_ARRAY_DIMENSIONS", None)
        assert za["compressor"] is None and not za["filters"], f"{name} is compressed"
        dtype = np.dtype(za["dtype"])
        fill = za["fill_value"]
        if fill is not None and "_FillValue" not in attrs:
            attrs["_FillValue"] = fill
        # v3 attributes carry a float _FillValue as xarray writes it (base64 of a <f8)
        if "_FillValue" in attrs and dtype.kind == "f":
            attrs["_FillValue"] = base64.b64encode(np.float64(attrs["_FillValue"]).tobytes()).decode()
        arr = root.create_array(name, shape=za["shape"], chunks=za["chunks"], dtype=dtype.newbyteorder("="),
                                fill_value=fill, compressors=None,
                                serializer=BytesCodec(endian="big" if dtype.byteorder == ">" else "little"),
                                dimension_names=dims, attributes=attrs)
        for k, v in refs.items():
            if not k.startswith(name + "/") or k.rsplit("/", 1)[1].startswith("."):
                continue
            idx = tuple(int(i) for i in k.rsplit("/", 1)[1].split("."))
            if isinstance(v, list):
                url, off, size = v
                s.store.set_virtual_ref(f"{name}/c/{'/'.join(map(str, idx))}", url_of(url), offset=off,
                                        length=size, checksum=checksum)
            else:
                raw = base64.b64decode(v[len("base64:"):]) if v.startswith("base64:") else v.encode()
                block = np.frombuffer(raw, dtype=dtype).reshape(za["chunks"])
                region = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(idx, za["chunks"], za["shape"]))
                arr[region] = block[tuple(slice(0, sl.stop - sl.start) for sl in region)]
    s.commit("virtual references")


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
        specs.append({"name": f"ic-virtual-{nc.stem}", "sources": [str(vr)], "refRoots": [str(data)], "nc": str(nc)})
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
    specs.append({"name": "bad-changed", "sources": [str(changed)], "refRoots": [str(moved)]})

    cfg = root / "cloudify.yaml"
    lines = ["datasets:"]
    for d in specs:
        lines.append(f"  - name: {json.dumps(d['name'])}")
        lines.append(f"    sources: {json.dumps(d['sources'])}")
        for k, key in (("format", "format"), ("icechunk", "icechunk"), ("refRoots", "referenceRoots")):
            if d.get(k):
                lines.append(f"    {key}: {json.dumps(d[k])}")
    cfg.write_text("\n".join(lines) + "\n")
    url, proc, log = start_server(["serve", "--config", str(cfg)], root, "icechunk")
    try:
        status = wait_until_settled(url, [d["name"] for d in specs], proc)
        yield {"url": url, "reg": reg, "snaps": snaps, "specs": {d["name"]: d for d in specs},
               "status": {d["name"]: d for d in status["datasets"]}, "log": log}
    finally:
        stop_server(proc)


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
    st = ice["status"][name]
    assert st["state"] == "failed", st
    msg = json.dumps(st)
    for n in needles:
        assert n in msg, msg
    r = requests.get(f"{ice['url']}/datasets/{name}/zarr/.zmetadata", timeout=30)
    assert r.status_code >= 400 and r.headers["content-type"].startswith("application/json"), r.text
    # the good datasets of the same server are unaffected
    assert ice["status"]["ic-main"]["state"] == "ready"
    assert "panicked" not in Path(ice["log"]).read_text()
