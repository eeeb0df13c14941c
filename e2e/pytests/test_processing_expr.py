"""Derived variables (`processing.variables`, issue #14): served values equal NumPy 2
evaluating the same expression on what `xr.open_dataset(source)` decodes, bit for bit and
with the same dtype (NEP 50: float32 stays float32), over Zarr v2 and v3; bad expressions
make the dataset fail to open with a message naming dataset, field and position."""

from __future__ import annotations

import json
import warnings

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
    lines += _yaml("good", str(SOURCE[0]), {k: e for k, (e, _) in EXPRS.items()})
    for k, (e, _, _) in BAD.items():
        lines += _yaml(k, str(SOURCE[0]), {k: e})
    cfg = root / "cloudify.yaml"
    cfg.write_text("\n".join(lines) + "\n")
    url, proc, log = start_server(["serve", "--config", str(cfg)], root, "expr",
                                  extra_env={"CLOUDIFY_CACHE_DIR": str(root / "cache")})
    try:
        status = wait_until_settled(url, ["good", *BAD], proc)
        yield url, status
    finally:
        stop_server(proc)


@pytest.mark.parametrize("fmt", [2, 3])
def test_derived_values_are_numpys_bit_for_bit(served, fmt):
    url, _ = served
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


def test_kerchunk_leaves_derived_variables_out(served):
    url, _ = served
    r = requests.get(f"{url}/datasets/good/kerchunk.json", timeout=60)
    assert r.status_code == 200, r.text
    refs = r.json()["refs"]
    assert "ta/.zarray" in refs
    assert not any(k.startswith("ta_degC/") for k in refs)


@pytest.mark.parametrize("name", list(BAD))
def test_bad_expressions_fail_the_dataset_naming_field_and_position(served, name):
    _, status = served
    entry = next(d for d in status["datasets"] if d["name"] == name)
    assert entry["state"] == "failed", entry
    _, field, where = BAD[name]
    assert field in entry["error"] and where in entry["error"], entry["error"]
    assert name in json.dumps(entry)
