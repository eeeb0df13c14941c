"""Derived variables (`processing.variables`, issue #14): served values equal NumPy 2
evaluating the same expression on what `xr.open_dataset(source)` decodes, bit for bit and
with the same dtype (NEP 50: float32 stays float32), over Zarr v2 and v3; bad expressions
make the dataset fail to open with a message naming dataset, field and position. Generated
edge cases: packed int16 (float64 `scale_factor`/`add_offset`, a `_FillValue`), a masked
int16 (xarray decodes it to float32), and a float32-packed variable (a known difference:
served float64 while xarray gives float32). float32 `exp`/`log`/`log10` are within 3 ULP
of NumPy's (NumPy's SIMD code differs from libm's, and between CPUs); `sqrt`/`hypot` exact."""

from __future__ import annotations

import json
import warnings

import netCDF4
import numpy as np
import pytest
import requests
import xarray as xr

import helpers
from conftest import start_server, stop_server, wait_until_settled

SOURCE = sorted((helpers.cmip6_root()).rglob("ta_Amon_AWI-CM-1-1-MR_historical_r1i1p1f1_gn_195001-195012.nc"))

EXPRS = {
    "ta_degC": ("ta - 273.15", lambda ta: ta - 273.15),
    "hot": ("ta > 280 and not isnan(ta)", lambda ta: (ta > 280) & ~np.isnan(ta)),
    "mix": ("where(ta > 250, sqrt(ta) * 2, -ta)", lambda ta: np.where(ta > 250, np.sqrt(ta) * 2, -ta)),
    "clipped": ("clip(ta, 220, 290) / 2 + abs(ta - 250) % 7", lambda ta: np.clip(ta, 220, 290) / 2 + np.abs(ta - 250) % 7),
    "wide": ("ta * 2.5 // 3 + maximum(ta, 260.5)", lambda ta: ta * 2.5 // 3 + np.maximum(ta, 260.5)),
}

# float32, NumPy's SIMD exp/log/log10 vs libm (correctly rounded): NumPy 2.4 on AVX-512 is up
# to 3 ULP off (measured over 8e6 values), so compared within 3 ULP
ULP = {
    "ex": ("exp(ta / 100)", lambda ta: np.exp(ta / 100)),
    "lg": ("log(ta)", lambda ta: np.log(ta)),
    "lg10": ("log10(ta) * 3", lambda ta: np.log10(ta) * 3),
}

# generated inputs (see `write_packed`): expression -> NumPy on xarray's decoded values
PACKED = {
    "pk_x": ("pk * 2 - 1", lambda d: d["pk"] * 2 - 1),
    "m_x": ("where(isnan(m), -1, m + 0.5)", lambda d: np.where(np.isnan(d["m"]), -1, d["m"] + 0.5)),
    "speed": ("hypot(m, pk) + sqrt(abs(m))", lambda d: np.hypot(d["m"], d["pk"]) + np.sqrt(np.abs(d["m"]))),
    "m_hyp": ("hypot(m, m * 3) - m ** 2", lambda d: np.hypot(d["m"], d["m"] * 3) - d["m"] ** 2),
}


# packed variables whose decoded type xarray's `_choose_float_dtype` picks from the attributes'
# widths: name -> (stored type, fill value, scale_factor, add_offset, xarray's decoded type)
F32 = np.float32
PACKED_WIDTHS = {
    "pk32": ("i2", None, F32(0.1), F32(-3.5), np.float32),
    "pk32m": ("i2", -32768, F32(0.25), F32(7.1), np.float32),
    "pk32i": ("i4", None, F32(0.1), F32(-3.5), np.float64),
    "pk32s": ("i2", -1, F32(0.3), None, np.float32),
    "pk32o": ("i2", None, None, F32(1.7), np.float64),
    "pk32d": ("f8", None, F32(0.1), F32(2.5), np.float32),
    "pkmix": ("i2", None, F32(0.1), np.float64(2.5), np.float64),
}


def write_packed(path) -> None:
    """`pk` int16 packed with float64 scale/offset and a fill value (xarray: float64), `m`
    int16 with a fill value only (xarray: float32), and PACKED_WIDTHS."""
    rng = np.random.default_rng(5)
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("y", 40)
        ds.createDimension("x", 50)
        table = [("pk", "i2", -32768, 0.01, 250.0), ("m", "i2", -999, None, None)]
        table += [(k, t, f, s, o) for k, (t, f, s, o, _) in PACKED_WIDTHS.items()]
        for name, dtype, fill, scale, offset in table:
            v = ds.createVariable(name, dtype, ("y", "x"), fill_value=fill if fill is not None else False)
            if scale is not None:
                v.scale_factor = scale
            if offset is not None:
                v.add_offset = offset
            v.set_auto_maskandscale(False)
            if dtype == "f8":
                raw = rng.normal(0, 1e4, (40, 50))
            else:
                raw = rng.integers(-30000, 30000, (40, 50)).astype(dtype)
            if fill is not None:
                raw[::7, ::3] = fill
            v[:] = raw

BAD = {
    "bad_syntax": ("ta - * 2", "variables.bad_syntax.expr", "at character 5"),
    "bad_unknown": ("ta + tas", "variables.bad_unknown.expr", "at character 5: unknown variable 'tas'"),
    "bad_dims": ("ta + lat", "variables.bad_dims.expr", "'lat' has"),
    "bad_deep": ("(" * 500 + "ta" + ")" * 500, "variables.bad_deep.expr", "nested deeper"),
}


def _yaml(name: str, src: str, variables: dict) -> list[str]:
    lines = [f"  - name: {name}", "    sources:", f"      - {json.dumps(src)}", "    processing:", "      variables:"]
    for v, e in variables.items():
        lines.append(f"        {v}: {{expr: {json.dumps(e)}, attrs: {{units: K}}}}")
    return lines


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    assert SOURCE, "sample data missing"
    root = tmp_path_factory.mktemp("expr")
    lines = ["datasets:"]
    lines += _yaml("good", str(SOURCE[0]), {k: e for k, (e, _) in {**EXPRS, **ULP}.items()})
    packed = root / "packed.nc"
    write_packed(packed)
    lines += _yaml("packed", str(packed), {**{k: e for k, (e, _) in PACKED.items()}, **{f"{k}_x": f"{k} + 0" for k in PACKED_WIDTHS}})
    for k, (e, _, _) in BAD.items():
        lines += _yaml(k, str(SOURCE[0]), {k: e})
    cfg = root / "cloudify.yaml"
    cfg.write_text("\n".join(lines) + "\n")
    url, proc, log = start_server(["serve", "--config", str(cfg)], root, "expr",
                                  extra_env={"CLOUDIFY_CACHE_DIR": str(root / "cache")})
    try:
        status = wait_until_settled(url, ["good", "packed", *BAD], proc)
        yield url, status, packed
    finally:
        stop_server(proc)


@pytest.mark.parametrize("fmt", [2, 3])
def test_derived_values_are_numpys_bit_for_bit(served, fmt):
    url, _, _ = served
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = xr.open_dataset(f"{url}/datasets/good/zarr", engine="zarr", zarr_format=fmt, consolidated=True)
        src = xr.open_dataset(SOURCE[0], engine="netcdf4")
    ta = src["ta"].values
    assert ta.dtype == np.float32
    for name, (expr, f) in EXPRS.items():
        want = f(ta)
        have = got[name].values
        assert have.dtype == want.dtype, (name, have.dtype, want.dtype)
        assert got[name].dims == src["ta"].dims
        assert got[name].attrs["cloudify_expression"] == expr
        assert got[name].attrs["units"] == "K"
        if want.dtype.kind == "f":
            same = (have.view(f"u{want.itemsize}") == want.view(f"u{want.itemsize}")) | (np.isnan(have) & np.isnan(want))
            assert same.all(), (name, have[~same][:5], want[~same][:5])
        else:
            np.testing.assert_array_equal(have, want)
    assert got["ta_degC"].dtype == np.float32, "NEP 50: float32 - 273.15 stays float32"


def _same_bits(have, want) -> np.ndarray:
    u = f"u{want.itemsize}"
    return (have.view(u) == want.view(u)) | (np.isnan(have) & np.isnan(want))


@pytest.mark.parametrize("fmt", [2, 3])
def test_float32_exp_and_log_are_within_three_ulp_of_numpy(served, fmt):
    url, _, _ = served
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = xr.open_dataset(f"{url}/datasets/good/zarr", engine="zarr", zarr_format=fmt, consolidated=True)
        ta = xr.open_dataset(SOURCE[0], engine="netcdf4")["ta"].values
    for name, (_, f) in ULP.items():
        want = f(ta)
        have = got[name].values
        assert have.dtype == want.dtype == np.float32, name
        ulps = np.abs(have.view("i4").astype("i8") - want.view("i4").astype("i8"))
        ok = _same_bits(have, want) | (ulps <= 3)
        assert ok.all(), (name, have[~ok][:5], want[~ok][:5])


@pytest.mark.parametrize("fmt", [2, 3])
def test_packed_and_masked_integers_are_decoded_as_xarray(served, fmt):
    url, _, packed = served
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = xr.open_dataset(f"{url}/datasets/packed/zarr", engine="zarr", zarr_format=fmt, consolidated=True)
        src = xr.open_dataset(packed, engine="netcdf4")
    d = {k: src[k].values for k in ("pk", "m")}
    assert d["pk"].dtype == np.float64 and d["m"].dtype == np.float32
    assert np.isnan(d["m"]).any() and np.isnan(d["pk"]).any()
    for name, (expr, f) in PACKED.items():
        want = f(d)
        have = got[name].values
        assert have.dtype == want.dtype, (name, have.dtype, want.dtype)
        same = _same_bits(have, want)
        assert same.all(), (name, have[~same][:5], want[~same][:5])


@pytest.mark.parametrize("name", list(PACKED_WIDTHS))
def test_packed_is_decoded_to_the_type_xarray_chooses(served, name):
    """float32 scale_factor/add_offset keep their width through the index, so the decoded type
    (and float32 arithmetic) are xarray's, bit for bit."""
    url, _, packed = served
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = xr.open_dataset(f"{url}/datasets/packed/zarr", engine="zarr", consolidated=True)
        src = xr.open_dataset(packed, engine="netcdf4")
    want = src[name].values + 0
    assert want.dtype == PACKED_WIDTHS[name][-1], "xarray's choice changed; update the table"
    assert got[f"{name}_x"].dtype == want.dtype
    if PACKED_WIDTHS[name][1] is not None:
        assert np.isnan(want).any()
    same = _same_bits(got[f"{name}_x"].values, want)
    assert same.all(), (got[f"{name}_x"].values[~same][:5], want[~same][:5])


def test_kerchunk_leaves_derived_variables_out(served):
    url, _, _ = served
    r = requests.get(f"{url}/datasets/good/kerchunk.json", timeout=60)
    assert r.status_code == 200, r.text
    refs = r.json()["refs"]
    assert "ta/.zarray" in refs
    assert not any(k.startswith("ta_degC/") for k in refs)


@pytest.mark.parametrize("name", list(BAD))
def test_bad_expressions_fail_the_dataset_naming_field_and_position(served, name):
    _, status, _ = served
    entry = next(d for d in status["datasets"] if d["name"] == name)
    assert entry["state"] == "failed", entry
    _, field, where = BAD[name]
    assert field in entry["error"] and where in entry["error"], entry["error"]
    assert name in json.dumps(entry)
