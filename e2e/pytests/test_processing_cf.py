"""CF decoding when computing (issue #14, "CF semantics when computing"): derived variables,
groupby reductions and histograms read integer variables exactly as `xr.open_dataset` decodes
them — `_Unsigned` (the bits viewed as the other signedness, the `_FillValue` converted with
them, `missing_value` not), `_FillValue`/`missing_value` masked, `scale_factor`/`add_offset`
applied in the type xarray chooses — and expressions over integers that xarray keeps as
integers follow NumPy 2 where cloudify can compute them exactly (the integer leaves for
float64 at once) and are refused at open naming the position everywhere else (integer
arithmetic, float16, small integers with float32, exact 64-bit comparisons, integer `where`).

The generated file covers: int8 `_Unsigned = "true"` with a fill (values 128..254 exist only
as unsigned), the same packed with float32 scale/offset, int16 `_Unsigned` without a fill
(stays uint16: integer sums), uint8 `_Unsigned = "false"` with a fill and a `missing_value`
that no longer matches once signed, int16 packed in float64 with both a `_FillValue` and a
different `missing_value`, plain int8/int16/int32/int64. Everything is compared bit for bit
with xarray + NumPy (float reductions within rtol 1e-6 of a float64 reference; counts,
min/max and integer sums exact; histograms with xhistogram, exact)."""

from __future__ import annotations

import json
import warnings

import netCDF4
import numpy as np
import pytest
import requests
import xarray as xr
from xhistogram.xarray import histogram as xhistogram

from conftest import start_server, stop_server, wait_until_settled

STEPS = 400  # days from 2000-01-01: every month, two Januaries


def write_cf(path) -> None:
    rng = np.random.default_rng(21)
    shape = (STEPS, 3, 4)
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("time", None)
        ds.createDimension("y", 3)
        ds.createDimension("x", 4)
        t = ds.createVariable("time", "f8", ("time",))
        t.units = "days since 2000-01-01 00:00:00"
        t.calendar = "standard"
        t.standard_name = "time"
        t[:] = np.arange(STEPS) + 0.5
        ds.createVariable("y", "f8", ("y",))[:] = [10.0, 20.0, 30.0]
        ds.createVariable("x", "f8", ("x",))[:] = [0.0, 90.0, 180.0, 270.0]

        def var(name, dtype, fill=None, **attrs):
            v = ds.createVariable(name, dtype, ("time", "y", "x"), chunksizes=(37, 3, 2),
                                  fill_value=fill if fill is not None else False)
            v.set_auto_maskandscale(False)
            for k, a in attrs.items():
                v.setncattr(k, a)
            return v

        raw8 = rng.integers(-128, 128, shape).astype("i1")
        raw8[::9, 0, 0] = -1
        var("u8f", "i1", np.int8(-1), _Unsigned="true")[:] = raw8
        raw8p = rng.integers(-128, 128, shape).astype("i1")
        raw8p[::5, 1, 1] = -2
        var("u8p", "i1", np.int8(-2), _Unsigned="true", scale_factor=np.float32(0.5),
            add_offset=np.float32(-20.25))[:] = raw8p
        var("u16n", "i2", _Unsigned="true")[:] = rng.integers(-32768, 32768, shape).astype("i2")
        rawu = rng.integers(0, 256, shape).astype("u1")
        rawu[::4, 2, 3] = 127
        rawu[::3, 0, 1] = 200
        # a fill of 128..255 would be xarray's OverflowError (np.int8(255)), so 127
        var("s8f", "u1", np.uint8(127), _Unsigned="false", missing_value=np.uint8(200))[:] = rawu
        rawp = rng.integers(-30000, 30000, shape).astype("i2")
        rawp[::6, 1, 2] = -32768
        rawp[::7, 2, 0] = -32767
        var("pkm", "i2", np.int16(-32768), scale_factor=0.01, add_offset=250.0,
            missing_value=np.int16(-32767))[:] = rawp
        var("i8n", "i1")[:] = rng.integers(-128, 128, shape).astype("i1")
        var("n16", "i2")[:] = rng.integers(-32768, 32768, shape).astype("i2")
        var("n32", "i4")[:] = rng.integers(-2**31, 2**31, shape, dtype="i8").astype("i4")
        var("n64", "i8")[:] = rng.integers(-2**62, 2**62, shape, dtype="i8")
        var("f32", "f4")[:] = rng.normal(0, 100, shape).astype("f4")


# derived variables: expression -> NumPy on xarray's decoded values
GOOD = {
    "u8f_x": ("u8f * 1", lambda d: d["u8f"] * 1),
    "u8p_x": ("u8p + 0", lambda d: d["u8p"] + 0),
    "s8f_x": ("s8f - 0.5", lambda d: d["s8f"] - 0.5),
    "pkm_x": ("pkm * 2", lambda d: d["pkm"] * 2),
    "u16n_f": ("u16n * 1.5", lambda d: d["u16n"] * 1.5),
    "u16n_div": ("u16n / 3", lambda d: d["u16n"] / 3),
    "n32_div": ("n32 / 7", lambda d: d["n32"] / 7),
    "n32_sqrt": ("sqrt(n32)", lambda d: np.sqrt(d["n32"])),
    "n32_cmp": ("n32 > 1000", lambda d: d["n32"] > 1000),
    "n32_mix": ("where(n32 > 0, n32 * 0.5, f32)", lambda d: np.where(d["n32"] > 0, d["n32"] * 0.5, d["f32"])),
    "n16_mix": ("n16 * 1.0 + f32", lambda d: d["n16"] * 1.0 + d["f32"]),
    "n64_half": ("n64 * 0.5", lambda d: d["n64"] * 0.5),
    "n64_cmp": ("n64 > 3.5", lambda d: d["n64"] > 3.5),
}

# refused at open: expression -> words of the error (after "variables.bad.expr")
BAD = {
    "int_add": ("n32 + 1", "at character 4: NumPy computes '+' as an integer (int32)"),
    "int_floordiv": ("n32 // 2", "at character 4: NumPy computes '//' as an integer (int32)"),
    "int_neg": ("-n32", "at character 0: NumPy computes the negation as an integer (int32)"),
    "int_abs": ("abs(n16)", "at character 0: NumPy computes abs as an integer (int16)"),
    "int_ints": ("u16n + n16", "as an integer (int32)"),
    "f16": ("sqrt(i8n)", "at character 0: NumPy computes sqrt as float16"),
    "small_f32": ("n16 + f32", "at character 4: NumPy computes '+' of a small integer in float32"),
    "int_where": ("where(f32 > 0, 1, 0)", "at character 0: NumPy computes where as an integer (int64)"),
    "cmp64": ("n64 > 3", "at character 4: NumPy compares 64-bit integers exactly"),
}

REDUCE = [(v, a) for v in ("u8f", "u8p", "s8f", "pkm", "u16n") for a in ("mean", "max", "sum")]
REDUCE += [("u8f", "count"), ("s8f", "min"), ("u16n", "std")]

HIST = {
    "u8f": {"bins": "8", "range": "0,256", "dim": "time"},
    "s8f": {"bins": "16", "range": "-128,128", "dim": "time,x"},
    "u8p": {"bins": "5", "range": "-20,110"},
    "pkm": {"bins": "6", "range": "-50,550", "dim": "time"},
}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("cf")
    src = root / "cf.nc"
    write_cf(src)
    lines = ["datasets:", "  - name: cf", "    sources:", f"      - {json.dumps(str(src))}",
             "    processing:", "      variables:"]
    lines += [f"        {k}: {{expr: {json.dumps(e)}}}" for k, (e, _) in GOOD.items()]
    for k, (e, _) in BAD.items():
        lines += [f"  - name: bad_{k}", "    sources:", f"      - {json.dumps(str(src))}",
                  "    processing:", "      variables:", f"        bad: {{expr: {json.dumps(e)}}}"]
    cfg = root / "cloudify.yaml"
    cfg.write_text("\n".join(lines) + "\n")
    url, proc, _ = start_server(["serve", "--config", str(cfg)], root, "cf",
                                extra_env={"CLOUDIFY_CACHE_DIR": str(root / "cache")})
    try:
        status = wait_until_settled(url, ["cf", *(f"bad_{k}" for k in BAD)], proc)
        yield url, status, src
    finally:
        stop_server(proc)


def _source(path) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xr.open_dataset(path, engine="netcdf4").load()


def _same_bits(have, want) -> np.ndarray:
    u = f"u{want.itemsize}"
    return (have.view(u) == want.view(u)) | (np.isnan(have) & np.isnan(want))


def test_xarray_decodes_the_corpus_as_this_test_assumes(served):
    """The corpus exercises what it claims: if xarray's decoding changed, say so here."""
    d = _source(served[2])
    assert d["u8f"].dtype == np.float32 and np.nanmax(d["u8f"].values) > 200 and np.isnan(d["u8f"]).any()
    assert d["u8p"].dtype == np.float32 and np.isnan(d["u8p"]).any()
    assert d["u16n"].dtype == np.uint16
    assert d["s8f"].dtype == np.float32 and np.nanmin(d["s8f"].values) < 0 and np.isnan(d["s8f"]).any()
    assert (d["s8f"].values == -56).any(), "missing_value 200 (int8 -56) is not masked once signed"
    assert d["pkm"].dtype == np.float64 and np.isnan(d["pkm"].values[::7, 2, 0]).all()
    assert d["n32"].dtype == np.int32 and d["n64"].dtype == np.int64


@pytest.mark.parametrize("fmt", [2, 3])
def test_derived_values_are_numpys_bit_for_bit(served, fmt):
    url, status, src = served
    entry = next(e for e in status["datasets"] if e["name"] == "cf")
    assert entry["state"] == "ready", entry
    d = {k: v.values for k, v in _source(src).data_vars.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = xr.open_dataset(f"{url}/datasets/cf/zarr", engine="zarr", zarr_format=fmt, consolidated=True)
    for name, (_, f) in GOOD.items():
        want = np.asarray(f(d))
        have = got[name].values
        assert have.dtype == want.dtype, (name, have.dtype, want.dtype)
        if want.dtype.kind == "f":
            same = _same_bits(have, want)
            assert same.all(), (name, have[~same][:5], want[~same][:5])
        else:
            np.testing.assert_array_equal(have, want, err_msg=name)


@pytest.mark.parametrize("name", list(BAD))
def test_integer_expressions_numpy_keeps_integer_are_refused_at_open(served, name):
    _, status, _ = served
    entry = next(e for e in status["datasets"] if e["name"] == f"bad_{name}")
    assert entry["state"] == "failed", entry
    assert "variables.bad.expr" in entry["error"] and BAD[name][1] in entry["error"], entry["error"]


@pytest.mark.parametrize("var,action", REDUCE)
def test_groupby_reads_decoded_values(served, var, action):
    url, _, src = served
    base = f"{url}/datasets/cf/groupby/{var}/time.month/{action}"
    r = requests.get(base, timeout=120)
    assert r.status_code == 200, r.text
    s = _source(src)
    want = getattr(s[var].groupby("time.month"), action)()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = xr.open_dataset(url + r.json()["zarr"], engine="zarr", consolidated=True)
    have = got[var]
    assert have.dtype == want.dtype, (var, action, have.dtype, want.dtype)
    assert "_Unsigned" not in have.attrs and "scale_factor" not in have.attrs
    np.testing.assert_array_equal(have["month"].values, want["month"].values)
    if action in ("max", "min", "count") or want.dtype.kind in "iu":
        np.testing.assert_array_equal(have.values, want.values, err_msg=f"{var} {action}")
    else:
        ref = getattr(s[var].astype("f8").groupby("time.month"), action)()
        np.testing.assert_allclose(have.values.astype("f8"), ref.values, rtol=1e-6, atol=0, equal_nan=True,
                                   err_msg=f"{var} {action}")


@pytest.mark.parametrize("var", list(HIST))
def test_histogram_counts_decoded_values(served, var):
    url, _, src = served
    q = HIST[var]
    r = requests.get(f"{url}/datasets/cf/histogram/{var}", params=q, timeout=120)
    assert r.status_code == 200, r.text
    got = r.json()
    lo, hi = (float(x) for x in q["range"].split(","))
    dim = q["dim"].split(",") if "dim" in q else None
    want = xhistogram(_source(src)[var], bins=int(q["bins"]), range=(lo, hi), dim=dim)
    assert got["shape"] == list(want.shape)
    have = np.array(got["counts"])
    np.testing.assert_array_equal(have, want.values)
    assert have.sum() > 0
