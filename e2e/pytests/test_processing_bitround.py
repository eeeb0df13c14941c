"""Server-side processing (issue #14): BitRound bit-identical to numcodecs, rechunking.

One ``cloudify serve --config`` with processing on CMIP6 sample data (TaiESM1 Amon ta,
float32) and on a generated netCDF of edge values (NaN
payloads ±, ±0, ±inf, subnormals, max values, ties, float32 and float64); xarray reads Zarr
v2 and v3 with ``decode_cf=False`` and the raw values must equal
``where(raw == fill, fill, numcodecs.BitRound(k).encode(raw))`` bit for bit (the fill is
kept: xarray users of DKRZ's server get it back as the fill). A second server with bad
processing specs: each dataset fails naming its field.
"""

from __future__ import annotations

import json
from pathlib import Path

import netCDF4
import numcodecs
import numpy as np
import pytest
import xarray as xr

import helpers
from conftest import start_server, stop_server, wait_until_settled

CMIP6_DIR = (
    helpers.cmip6_root()
    / "timeseries/CMIP6/CMIP/AS-RCEC/TaiESM1/historical/r1i1p1f1/Amon/ta/gn/v20200623"
)
CMIP6_FILES = sorted(CMIP6_DIR.glob("*.nc"))

F32_EDGES = np.array(
    [0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7FFFFFFF,
     0xFFFFFFFF, 0x7FBFFFFF, 0xFFBFFFFF, 0x7F800001, 0xFFC00001, 0x00000001, 0x807FFFFF,
     0x007FFFFF, 0x7F7FFFFF, 0xFF7FFFFF, 0x3F800000, 0x3FC00000, 0x3FA00000, 0x3FE00000,
     0x3F900000, 0x3F900800, 0x3F901000, 0x3F8FFFFF, 0x3F7FFFFF, 0x40490FDB, 0x60AD78EC],
    dtype=np.uint32,
)
F64_EDGES = np.array(
    [0, 1 << 63, 0x7FF0000000000000, 0xFFF0000000000000, 0x7FF8000000000000,
     0xFFF8000000000000, 0x7FFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF, 0x7FF0000000000001,
     0xFFF0000000000001, 1, 0x800FFFFFFFFFFFFF, 0x7FEFFFFFFFFFFFFF, 0xFFEFFFFFFFFFFFFF,
     0x3FF8000000000000, 0x3FF4000000000000, 0x3FF0000010000000, 0x400921FB54442D18,
     0x3FEFFFFFFFFFFFFF, 0x4415AF1D78B58C40],
    dtype=np.uint64,
)


def _edges_nc(path: Path) -> None:
    rng = np.random.default_rng(14)
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("time", 8)
        ds.createDimension("x", 64)
        t = ds.createVariable("time", "f8", ("time",))
        t[:] = np.arange(8.0)
        x = ds.createVariable("x", "f4", ("x",))
        x[:] = np.linspace(0.1, 6.3, 64, dtype=np.float32)
        # raw bit patterns (no _FillValue in the way, no auto-masking on write)
        a = ds.createVariable("a32", "f4", ("time", "x"), chunksizes=(2, 64), fill_value=False)
        a.set_auto_maskandscale(False)
        bits = rng.integers(0, 2**32, size=(8, 64), dtype=np.uint64).astype(np.uint32)
        bits.flat[: F32_EDGES.size] = F32_EDGES
        a[:] = bits.view(np.float32)
        b = ds.createVariable("a64", "f8", ("time", "x"), chunksizes=(4, 32), fill_value=False)
        b.set_auto_maskandscale(False)
        bits = rng.integers(0, 2**63, size=(8, 64), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        bits.flat[: F64_EDGES.size] = F64_EDGES
        b[:] = bits.view(np.float64)
        # a float32 with a 1e20 fill: the fill must be served unchanged
        f = ds.createVariable("filled", "f4", ("time", "x"), fill_value=np.float32(1e20))
        f.set_auto_maskandscale(False)
        vals = (250 + rng.random((8, 64)) * 50).astype(np.float32)
        vals[::3, ::5] = np.float32(1e20)
        f[:] = vals
        n = ds.createVariable("count", "i4", ("time", "x"))
        n[:] = np.arange(8 * 64).reshape(8, 64)


def _config(path: Path, datasets: list[dict]) -> None:
    # YAML is a superset of JSON
    path.write_text(json.dumps({"datasets": datasets}, indent=1))


def _expected(raw: np.ndarray, keepbits: int, fill) -> np.ndarray:
    want = numcodecs.BitRound(keepbits).encode(raw.copy()).view(raw.dtype)
    if fill is not None:
        it = raw.dtype.itemsize
        ibits = raw.view(f"u{it}")
        fbits = np.array(fill, dtype=raw.dtype).view(f"u{it}")
        want = np.where(ibits == fbits, raw, want)
    return want


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(f"u{a.dtype.itemsize}")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("processing")
    edges = root / "edges.nc"
    _edges_nc(edges)
    cfg = root / "cloudify.yaml"
    _config(cfg, [
        {"name": "ta_br", "sources": [str(f) for f in CMIP6_FILES],
         "processing": {"bitround": {"keepbits": 7}, "chunks": {"time": 5, "lat": 30, "lon": 30}}},
        {"name": "ta_raw", "sources": [str(f) for f in CMIP6_FILES]},
        {"name": "edges12", "sources": [str(edges)], "processing": {"bitround": {"keepbits": 12, "variables": {"a64": 12}}}},
        {"name": "edges0", "sources": [str(edges)], "processing": {"bitround": {"keepbits": 0}}},
        {"name": "edges_k", "sources": [str(edges)],
         "processing": {"bitround": {"variables": {"a32": 22, "a64": 51, "filled": 1}}, "chunks": {"time": 3}}},
    ])
    url, proc, log = start_server(["serve", "--config", str(cfg)], root, "proc")
    try:
        st = wait_until_settled(url, ["ta_br", "ta_raw", "edges12", "edges0", "edges_k"], proc)
        states = {d["name"]: d["state"] for d in st["datasets"]}
        assert set(states.values()) == {"ready"}, json.dumps(st)[:3000]
        yield url, edges
    finally:
        stop_server(proc)


def _open(url: str, name: str, fmt: int) -> xr.Dataset:
    return xr.open_zarr(f"{url}/datasets/{name}/zarr", zarr_format=fmt, consolidated=True,
                        decode_cf=False, mask_and_scale=False, decode_times=False)


@pytest.mark.parametrize("fmt", [2, 3])
def test_edge_values_bit_identical_to_numcodecs(served, fmt):
    url, edges = served
    with netCDF4.Dataset(edges) as src:
        src.set_auto_maskandscale(False)
        raw = {v: np.asarray(src[v][:]) for v in ("a32", "a64", "filled", "x", "count")}
    for name, keep in [("edges12", {"a32": 12, "a64": 12, "filled": 12}),
                       ("edges0", {"a32": 0, "a64": 0, "filled": 0}),
                       ("edges_k", {"a32": 22, "a64": 51, "filled": 1})]:
        ds = _open(url, name, fmt)
        for var, k in keep.items():
            fill = np.float32(1e20) if var == "filled" else None
            got = ds[var].values
            assert got.dtype == raw[var].dtype
            want = _expected(raw[var], k, fill)
            diff = np.nonzero(_bits(got) != _bits(want))
            assert diff[0].size == 0, (name, var, k, fmt, [hex(x) for x in _bits(raw[var])[diff][:5]])
            assert ds[var].attrs["cloudify_bitround_keepbits"] == k
            if var == "filled":
                assert (_bits(got) == _bits(np.array([1e20], np.float32))).sum() == (raw[var] == np.float32(1e20)).sum()
        # the coordinate and the integer variable are served as stored
        np.testing.assert_array_equal(_bits(ds["x"].values), _bits(raw["x"]))
        np.testing.assert_array_equal(ds["count"].values, raw["count"])
        assert "cloudify_bitround_keepbits" not in ds["x"].attrs
    # numcodecs itself changes 1e20: keeping the fill is a decision, not a no-op
    assert numcodecs.BitRound(12).encode(np.array([1e20], np.float32)).view(np.float32)[0] != np.float32(1e20)


@pytest.mark.parametrize("fmt", [2, 3])
def test_cmip6_rounded_and_rechunked(served, fmt):
    url, _ = served
    ds = _open(url, "ta_br", fmt)
    raw_ds = _open(url, "ta_raw", fmt)
    ta = ds["ta"]
    want = (5, raw_ds["ta"].encoding["chunks"][1], min(30, ta.sizes["lat"]), min(30, ta.sizes["lon"]))
    assert ta.encoding["chunks"] == want
    with netCDF4.Dataset(CMIP6_FILES[0]) as src:
        src.set_auto_maskandscale(False)
        raw = np.asarray(src["ta"][:12])
        # this sample declares no _FillValue (the `filled` edge variable covers fills)
        fill = src["ta"].__dict__.get("_FillValue")
    np.testing.assert_array_equal(_bits(np.asarray(raw_ds["ta"][:12].values)), _bits(raw))
    got = np.asarray(ta[:12].values)
    np.testing.assert_array_equal(_bits(got), _bits(_expected(raw, 7, None if fill is None else np.float32(fill))))
    # coordinates: unrounded, rechunked, values equal the source
    for c in ("lat", "lon"):
        np.testing.assert_array_equal(_bits(ds[c].values), _bits(raw_ds[c].values))
        assert ds[c].encoding["chunks"] == (min(30, ds.sizes[c]),)
    assert "cloudify_bitround_keepbits" not in ds["lat"].attrs


def test_rechunked_values_equal_the_source(served):
    url, edges = served
    ds = _open(url, "edges_k", 2)
    assert ds["count"].encoding["chunks"] == (3, 64)
    assert ds["time"].encoding["chunks"] == (3,)
    with netCDF4.Dataset(edges) as src:
        np.testing.assert_array_equal(ds["count"].values, np.asarray(src["count"][:]))
        np.testing.assert_array_equal(ds["time"].values, np.asarray(src["time"][:]))


def test_kerchunk_leaves_rounded_variables_out(served):
    import requests

    url, _ = served
    refs = requests.get(f"{url}/datasets/edges12/kerchunk.json", timeout=30).json()
    keys = refs.get("refs", refs)
    assert "count/.zarray" in keys
    assert "a32/.zarray" not in keys and "a64/.zarray" not in keys
    # the raw asset still reads the stored (unrounded) values of what it references
    ds = xr.open_dataset(f"{url}/datasets/edges12/kerchunk", engine="zarr", zarr_format=2,
                         consolidated=True, decode_cf=False, mask_and_scale=False)
    assert "a32" not in ds and "count" in ds


def test_bad_processing_fails_naming_the_field(tmp_path):
    edges = tmp_path / "edges.nc"
    _edges_nc(edges)
    cases = {
        "unknown_var": ({"bitround": {"variables": {"nope": 3}}}, "processing.bitround.variables.nope"),
        "int_var": ({"bitround": {"variables": {"count": 3}}}, "processing.bitround.variables.count"),
        "too_many_bits": ({"bitround": {"variables": {"a32": 30}}}, "processing.bitround.variables.a32"),
        "too_many_all": ({"bitround": {"keepbits": 40}}, "processing.bitround.keepbits"),
        "unknown_dim": ({"chunks": {"depth": 3}}, "processing.chunks.depth"),
    }
    cfg = tmp_path / "cloudify.yaml"
    _config(cfg, [{"name": k, "sources": [str(edges)], "processing": p} for k, (p, _) in cases.items()]
            + [{"name": "fine", "sources": [str(edges)], "processing": {"bitround": {"keepbits": 9}}}])
    url, proc, log = start_server(["serve", "--config", str(cfg)], tmp_path, "bad")
    try:
        st = wait_until_settled(url, [*cases, "fine"], proc)
        by = {d["name"]: d for d in st["datasets"]}
        assert by["fine"]["state"] == "ready"
        for name, (_, field) in cases.items():
            d = by[name]
            assert d["state"] == "failed", d
            text = json.dumps(d)
            assert field in text, (name, text)
    finally:
        stop_server(proc)
    assert "processing.chunks.depth" in log.read_text(errors="replace")
