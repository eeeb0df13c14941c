"""Icechunk repositories the tests serve, written with whichever icechunk is installed.

Imported by test_icechunk.py and test_object_sources.py (icechunk 1.x in the test venv:
spec-version-1 repositories), and run as a script by test_icechunk2.py in a second venv with
icechunk 2.x (which needs Python >= 3.12): spec-version-2 repositories, and what icechunk 2
reads back from them, exported as plain Zarr stores for the 3.11 test venv to compare with.
Needs only icechunk, zarr, numpy and xarray.

    python icechunk_repos.py regular REPO              -> snapshot ids (JSON)
    python icechunk_repos.py virtual REPO REFS DIR     -> virtual references into DIR
    python icechunk_repos.py export REPO OUT VERSION GROUP...   (VERSION: JSON selector)
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import sys
from pathlib import Path

import icechunk
import numpy as np
import xarray as xr
import zarr
from zarr.codecs import BloscCodec, BytesCodec, GzipCodec, ZstdCodec


def regular_repo(path: Path) -> dict:
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


def repo_from_refs(path: Path, refs: dict, config, checksum, url_of=lambda url: url, **create) -> None:
    """Writes a repository (with `config`'s virtual chunk containers) holding kerchunk
    references `refs` as VirtualiZarr would: byte ranges become virtual references (to
    `url_of(url)`, with `checksum`), inlined values native chunks."""
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


def virtual_repo(path: Path, refs: dict, data_dir: Path) -> None:
    """A repository of `cloudify index` references to the netCDF files in `data_dir`, checked
    against their modification time (as VirtualiZarr writes them)."""
    prefix = f"file://{data_dir}/"
    config = icechunk.RepositoryConfig.default()
    config.set_virtual_chunk_container(icechunk.VirtualChunkContainer(prefix, icechunk.local_filesystem_store(str(data_dir))))
    newest = max(int(p.stat().st_mtime) for p in data_dir.iterdir())
    mtime = dt.datetime.fromtimestamp(newest + 1, tz=dt.timezone.utc)
    repo_from_refs(path, refs, config, mtime,
                   lambda url: url if url.startswith("file://") else f"file://{url}",
                   authorize_virtual_chunk_access=icechunk.containers_credentials({prefix: None}))


def read_repo(path: Path, group: str | None = None, **version) -> xr.Dataset:
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))
    s = repo.readonly_session(**(version or {"branch": "main"}))
    return xr.open_zarr(s.store, consolidated=False, zarr_format=3, group=group).load()


def export(path: Path, out: Path, version: dict, groups: list[str]) -> None:
    """What icechunk reads from the repository (as of `version`), as a plain Zarr v3 store:
    one group per entry of `groups` ("" for the root)."""
    for g in groups:
        ds = read_repo(path, group=g or None, **version)
        for v in ds.variables.values():
            v.encoding = {k: x for k, x in v.encoding.items() if k in ("units", "calendar", "dtype", "_FillValue")}
        ds.to_zarr(out, group=g or None, mode="a" if g else "w", zarr_format=3, consolidated=False)


def _main(argv: list[str]) -> None:
    cmd, repo = argv[0], Path(argv[1])
    if cmd == "regular":
        print(json.dumps(regular_repo(repo)))
    elif cmd == "virtual":
        virtual_repo(repo, json.loads(Path(argv[2]).read_text())["refs"], Path(argv[3]))
    elif cmd == "export":
        export(repo, Path(argv[2]), json.loads(argv[3]), argv[4:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    _main(sys.argv[1:])
