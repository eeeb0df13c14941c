"""More source formats: kerchunk references (JSON, Parquet) and Zarr stores served by cloudify,
and `cloudify index -o refs.parquet` read through fsspec.

Reference sets are written by `cloudify index` from the corpus (and edited for the bad-input
cases), Zarr stores by zarr-python/xarray; every served dataset is read back with xarray and
compared with the originals."""
from __future__ import annotations

import json
import subprocess
import warnings
from pathlib import Path

import fsspec
import numcodecs
import numpy as np
import pytest
import requests
import xarray as xr
import zarr

from conftest import find_binary, start_server, stop_server, wait_until_settled
from helpers import open_reference
from test_cache_kerchunk import KERCHUNK_CASES
from test_fidelity import compare_datasets

warnings.filterwarnings("ignore")

CMIP6_CASES = ["cmip6_MIROC6_day", "cmip6_CanESM5_Amon", "cmip6_BCC-CSM2-MR_day"]


def _assert_same(served: xr.Dataset, ref: xr.Dataset, label: str):
    problems = compare_datasets(served, ref, raw=False, label=label)
    assert not problems, "\n".join(problems[:20])


def _index(files: list[str], out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([find_binary(), "index", *files, "-o", str(out), *extra],
                          capture_output=True, text=True, timeout=300)


def _open_refs(fo) -> xr.Dataset:
    fs = fsspec.filesystem("reference", fo=fo)
    return xr.open_dataset(fs.get_mapper(""), engine="zarr", zarr_format=2, consolidated=False).load()


# ---------------------------------------------------------------------------
# cloudify index -o refs.parquet
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", KERCHUNK_CASES + CMIP6_CASES)
def test_index_parquet_through_fsspec(corpus, tmp_path, name):
    spec = corpus[name]
    out = tmp_path / "refs.parquet"
    # a small record size so multi-record arrays (and the short last record) are exercised
    r = _index(spec["files"], out, "--record-size", "7")
    assert r.returncode == 0, r.stderr
    meta = json.loads((out / ".zmetadata").read_text())
    assert meta["record_size"] == 7 and ".zgroup" in meta["metadata"]
    _assert_same(_open_refs(str(out)), open_reference(spec, raw=False).load(), f"{name} parquet")


def test_index_parquet_layout_and_errors(corpus, tmp_path):
    spec = corpus["edge_contig_big"]
    out = tmp_path / "refs.parquet"
    r = _index(spec["files"], out)
    assert r.returncode == 0, r.stderr
    import pandas as pd

    df = pd.read_parquet(out / "big" / "refs.0.parq", engine="fastparquet")
    assert str(df.offset.dtype) == "int64" and str(df["size"].dtype) == "int64"
    assert list(df.columns) == ["path", "offset", "size", "raw"]
    assert df.path.str.startswith("file://").all() and (df["size"] > 0).all()
    # rewriting replaces the set
    assert _index(spec["files"], out).returncode == 0
    # JSON references are sources too: converting them to Parquet keeps every reference
    js = tmp_path / "refs.json"
    assert _index(spec["files"], js).returncode == 0
    conv = tmp_path / "converted.parquet"
    r = _index([str(js)], conv)  # the data files are outside the reference file's directory
    assert r.returncode != 0 and "big/0.0.0" in r.stderr and "outside the allowed roots" in r.stderr
    r = _index([str(js)], conv, "--reference-root", str(Path(spec["files"][0]).parent))
    assert r.returncode == 0, r.stderr
    _assert_same(_open_refs(str(conv)), open_reference(spec, raw=False).load(), "json -> parquet")
    # refusing to overwrite something that is not a reference set; unknown extension
    other = tmp_path / "data.parquet"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    r = _index(spec["files"], other)
    assert r.returncode != 0 and "data.parquet" in r.stderr and (other / "keep.txt").exists()
    r = _index(spec["files"], tmp_path / "refs.txt")
    assert r.returncode != 0 and "refs.txt" in r.stderr


# ---------------------------------------------------------------------------
# sources in other formats, served by one server
# ---------------------------------------------------------------------------
ZARR_CODECS = [(2, "zlib"), (2, "gzip"), (2, "zstd"), (2, "blosc"), (3, "gzip"), (3, "zstd"), (3, "blosc")]
SOURCE_CASES = ["edge_series", "edge_classic", "edge_edgechunks", "edge_alltypes", "edge_nanfill",
                "cmip6_MIROC6_day", "cmip6_CanESM5_Amon"]


def _zarr_store(ds: xr.Dataset, path: Path, zarr_format: int, compressor: str) -> None:
    """Writes `ds` as a Zarr store with the given compressor on every numeric variable."""
    enc = {}
    for name, v in ds.variables.items():
        # numbers, and times (datetime64 or cftime objects, stored as numbers); not text
        if v.dtype.kind in "SUb" or (v.dtype.kind == "O" and v.size and isinstance(v.values.flat[0], str)):
            continue
        if zarr_format == 2:
            c = {"zlib": numcodecs.Zlib(level=3), "gzip": numcodecs.GZip(level=2),
                 "zstd": numcodecs.Zstd(level=2), "blosc": numcodecs.Blosc(cname="lz4"),
                 "lz4": numcodecs.LZ4()}[compressor]
            e = {"compressors": [c]}
            if compressor == "zlib" and v.dtype.itemsize > 1:
                e["filters"] = [numcodecs.Shuffle(elementsize=v.dtype.itemsize)]
        else:
            from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

            c = {"gzip": GzipCodec(level=2), "zstd": ZstdCodec(level=2),
                 "blosc": BloscCodec(cname="lz4")}[compressor]
            e = {"compressors": [c]}
        if v.ndim >= 2 and v.shape[0] > 2:
            # uneven chunks: edge chunks along every axis
            e["chunks"] = tuple(max(1, (s + 2) // 3) for s in v.shape)
        enc[name] = e
    ds.to_zarr(path, mode="w", zarr_format=zarr_format, encoding=enc, consolidated=False)


@pytest.fixture(scope="module")
def formats_server(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    specs = []
    originals = {}
    for name in SOURCE_CASES:
        spec = corpus[name]
        originals[name] = open_reference(spec, raw=False).load()
        for fmt in ("json", "parquet"):
            out = root / f"{name}.{fmt}"
            r = _index(spec["files"], out)
            assert r.returncode == 0, r.stderr
            specs.append({"name": f"{name}-{fmt}", "sources": [str(out)], "ref": name,
                          "refRoots": [str(Path(spec["files"][0]).parent)]})
    # Zarr stores written by zarr-python
    for name in ["edge_alltypes", "edge_edgechunks", "cmip6_CanESM5_Amon"]:
        ds = xr.open_dataset(corpus[name]["files"][0]) if len(corpus[name]["files"]) == 1 else \
            open_reference(corpus[name], raw=False)
        ds = ds.load()
        for zf, comp in ZARR_CODECS:
            store = root / f"{name}-v{zf}-{comp}.zarr"
            _zarr_store(ds, store, zf, comp)
            specs.append({"name": f"{name}-zarr{zf}-{comp}", "sources": [str(store)], "ref": name,
                          "zarr_original": str(store)})
    # bad inputs
    # (the CMIP6 samples are small enough to be inlined whole; this one has byte ranges)
    assert _index(corpus["edge_contig_big"]["files"], root / "contig.json").returncode == 0
    good = json.loads((root / "contig.json").read_text())
    data_dir = str(Path(corpus["edge_contig_big"]["files"][0]).parent)
    (root / "malformed.json").write_text(json.dumps(good)[:-200])
    specs.append({"name": "bad-malformed", "sources": [str(root / "malformed.json")], "bad": True})
    outside = json.loads(json.dumps(good))
    key = next(k for k, v in outside["refs"].items() if isinstance(v, list))
    outside["refs"][key] = ["/etc/passwd", 0, 16]
    (root / "outside.json").write_text(json.dumps(outside))
    specs.append({"name": "bad-outside", "sources": [str(root / "outside.json")], "bad": True,
                  "key": key, "refRoots": [data_dir]})
    missing = json.loads(json.dumps(good))
    missing["refs"][key] = [str(root / "gone.nc"), 0, 100]
    (root / "missing.json").write_text(json.dumps(missing))
    specs.append({"name": "bad-missing", "sources": [str(root / "missing.json")], "key": key,
                  "refRoots": [data_dir]})
    blosc_ds = xr.Dataset({"v": (("x", "y"), np.arange(64, dtype="f4").reshape(8, 8))})
    _zarr_store(blosc_ds, root / "lz4.zarr", 2, "lz4")
    specs.append({"name": "bad-codec", "sources": [str(root / "lz4.zarr")]})

    cfg = root / "cloudify.yaml"
    lines = ["datasets:"]
    for d in specs:
        lines.append(f"  - name: {json.dumps(d['name'])}")
        lines.append(f"    sources: {json.dumps(d['sources'])}")
        if d.get("refRoots"):
            lines.append(f"    referenceRoots: {json.dumps(d['refRoots'])}")
    cfg.write_text("\n".join(lines) + "\n")
    url, proc, log = start_server(["serve", "--config", str(cfg)], root, "formats")
    try:
        status = wait_until_settled(url, [d["name"] for d in specs], proc)
        yield {"url": url, "specs": {d["name"]: d for d in specs}, "originals": originals,
               "status": {d["name"]: d for d in status["datasets"]}, "log": log}
    finally:
        stop_server(proc)


def _served_names(prefix_filter):
    names = []
    for name in SOURCE_CASES:
        names += [f"{name}-json", f"{name}-parquet"]
    return [n for n in names if prefix_filter(n)]


@pytest.mark.parametrize("name", _served_names(lambda n: True))
@pytest.mark.parametrize("route", ["zarr-v2", "zarr-v3", "kerchunk"])
def test_kerchunk_source_served(formats_server, name, route):
    fs = formats_server
    spec = fs["specs"][name]
    assert fs["status"][name]["state"] == "ready", fs["status"][name]
    base = f"{fs['url']}/datasets/{name}"
    if route == "kerchunk":
        ds = xr.open_dataset(base + "/kerchunk", engine="zarr", zarr_format=2, consolidated=True)
    else:
        ds = xr.open_dataset(base + "/zarr", engine="zarr", zarr_format=int(route[-1]), consolidated=True)
    _assert_same(ds.load(), fs["originals"][spec["ref"]], f"{name} {route}")


ZARR_NAMES = [f"{n}-zarr{zf}-{c}" for n in ["edge_alltypes", "edge_edgechunks", "cmip6_CanESM5_Amon"]
              for zf, c in ZARR_CODECS]


@pytest.mark.parametrize("name", ZARR_NAMES)
@pytest.mark.parametrize("route", ["zarr-v2", "zarr-v3", "kerchunk"])
def test_zarr_store_served(formats_server, name, route):
    fs = formats_server
    spec = fs["specs"][name]
    assert fs["status"][name]["state"] == "ready", fs["status"][name]
    base = f"{fs['url']}/datasets/{name}"
    if route == "kerchunk":
        ds = xr.open_dataset(base + "/kerchunk", engine="zarr", zarr_format=2, consolidated=True)
    else:
        ds = xr.open_dataset(base + "/zarr", engine="zarr", zarr_format=int(route[-1]), consolidated=True)
    # the store as zarr-python reads it is the reference: what cloudify serves must equal it
    ref = xr.open_zarr(spec["zarr_original"], consolidated=False).load()
    _assert_same(ds.load(), ref, f"{name} {route}")


def test_zarr_passthrough_bytes(formats_server):
    """zlib+shuffle Zarr v2 chunks are served byte-for-byte on /zarr v2."""
    fs = formats_server
    name = "cmip6_CanESM5_Amon-zarr2-zlib"
    store = Path(fs["specs"][name]["zarr_original"])
    chunk = next(p for p in sorted((store / "ta").iterdir()) if not p.name.startswith("."))
    r = requests.get(f"{fs['url']}/datasets/{name}/zarr/ta/{chunk.name}", timeout=30)
    assert r.status_code == 200 and r.content == chunk.read_bytes()


def test_bad_sources(formats_server):
    fs = formats_server
    st = fs["status"]
    assert st["bad-malformed"]["state"] == "failed"
    msg = json.dumps(st["bad-malformed"])
    assert "malformed.json" in msg and "not valid JSON" in msg, msg
    assert st["bad-outside"]["state"] == "failed"
    msg = json.dumps(st["bad-outside"])
    assert "outside.json" in msg and fs["specs"]["bad-outside"]["key"] in msg and "/etc/passwd" in msg, msg
    assert "outside the allowed roots" in msg, msg
    # a missing chunk file: the dataset opens, the chunk answers 5xx naming the file
    assert st["bad-missing"]["state"] == "ready", st["bad-missing"]
    key = fs["specs"]["bad-missing"]["key"]
    r = requests.get(f"{fs['url']}/datasets/bad-missing/zarr/{key}", timeout=30)
    assert r.status_code >= 500 and "gone.nc" in r.json()["error"], r.text
    r = requests.get(f"{fs['url']}/datasets/bad-missing/kerchunk/{key}", timeout=30)
    assert r.status_code >= 500 and "gone.nc" in r.json()["error"], r.text
    # an undecodable codec: 501 naming it on /zarr, the stored bytes on /kerchunk
    assert st["bad-codec"]["state"] == "ready", st["bad-codec"]
    r = requests.get(f"{fs['url']}/datasets/bad-codec/zarr/v/0.0", timeout=30)
    assert r.status_code == 501 and "lz4" in r.json()["error"], r.text
    ds = xr.open_dataset(f"{fs['url']}/datasets/bad-codec/kerchunk", engine="zarr", zarr_format=2,
                         consolidated=True).load()
    np.testing.assert_array_equal(ds.v.values, np.arange(64, dtype="f4").reshape(8, 8))
