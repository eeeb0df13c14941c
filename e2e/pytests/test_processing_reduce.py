"""Reductions (issue #14): every view (`processing.views`) and ad-hoc
`/datasets/{id}/groupby/{var}/{coord}/{action}` product opens in xarray over Zarr v2 and
v3 and equals xarray computing the same locally from the source files: float reductions
within rtol 1e-6 of a float64 reference (dtype as xarray gives it), counts, min, max,
first and last exact; coordinates labelled as xarray labels them. Sources: CMIP6 daily
`ta` (gregorian, NaN-free) and generated edge cases (360_day and noleap calendars, a
fill value with all-NaN groups, packed int16 with `missing_value`, a non-dimension
coordinate to group by; integer variables of every width, reduced as NumPy reduces them:
exact, wrapping sums, the input's type for min/max/first/last, and NaN-promoted results
where a resample period is empty). Every bad input is asserted."""

from __future__ import annotations

import json
import warnings

import netCDF4
import numpy as np
import pytest
import requests
import xarray as xr

import helpers
import subprocess

from conftest import find_binary, start_server, stop_server, wait_until_settled

DAY = sorted(str(p) for p in helpers.cmip6_root().rglob("ta_day_MIROC6_historical_r1i1p1f1_gn_200[0-2]*.nc"))

REDUCES = ["mean", "sum", "min", "max", "count", "std", "var", "median", "first", "last"]
EXACT = {"count", "min", "max", "first", "last"}
FREQ = {"hour": "h", "day": "D", "month": "MS", "season": "QS-DEC", "year": "YS"}

# dataset -> {view: (kind, key, reduce, variables)}
VIEWS = {
    "day": {
        "monthly": ("resample", "month", "mean", []),
        "climatology": ("groupby", "time.month", "mean", ["ta"]),
        **{f"m_{r}": ("resample", "month", r, []) for r in REDUCES},
        **{f"g_{r}": ("groupby", "time.month", r, []) for r in REDUCES},
        "seasons": ("resample", "season", "mean", []),
        "gseason": ("groupby", "time.season", "mean", []),
        "doy": ("groupby", "time.dayofyear", "max", []),
        "years": ("resample", "year", "sum", []),
        "gyears": ("groupby", "time.year", "count", []),
    },
    "d360": {
        **{f"s_{r}": ("resample", "season", r, []) for r in REDUCES},
        "hourly": ("resample", "hour", "mean", []),
        "daily": ("resample", "day", "sum", []),
        "hours": ("groupby", "time.hour", "var", []),
        "doy": ("groupby", "time.dayofyear", "mean", []),
        "years": ("resample", "year", "median", []),
        "bylabel": ("groupby", "label", "mean", ["t", "p"]),
        "bylabel_n": ("groupby", "label", "count", ["t"]),
    },
    # integers: months without data make every resample result NaN-promoted there
    "ints": {
        **{f"m_{r}": ("resample", "month", r, []) for r in REDUCES},
        **{f"g_{r}": ("groupby", "time.month", r, []) for r in REDUCES},
        "y_sum": ("resample", "year", "sum", []),
    },
    "noleap": {
        "monthly": ("resample", "month", "mean", []),
        "seasons": ("resample", "season", "std", []),
        "gseason": ("groupby", "time.season", "last", []),
        "doy": ("groupby", "time.dayofyear", "first", []),
    },
}

# views that must make their dataset fail, with the field and words the error names
BAD = {
    "bad_var": (("groupby", "time.month", "mean", ["nope"]), "views.v.variables", "unknown variable 'nope'"),
    "bad_comp": (("groupby", "time.week", "mean", []), "views.v.groupby.by", "unknown time component 'week'"),
    "bad_coord": (("groupby", "depth", "mean", []), "views.v.groupby.by", "unknown coordinate 'depth'"),
    "bad_dim": (("resample", "month", "mean", [], "level"), "views.v.resample.dim", "unknown coordinate 'level'"),
    "bad_time": (("resample", "month", "mean", [], "lat"), "views.v.resample.dim", "'lat'"),
}

# views the config parser refuses (the server does not start), with words the error names
BAD_CONFIG = {
    "reduce": (("groupby", "time.month", "mode", []), "mode"),
    "freq": (("resample", "week", "mean", []), "week"),
    "both": (("groupby", "time.month", "mean", []), "exactly one of groupby and resample"),
}


def write_edge(path, calendar: str, steps: int, hours: int, start: str) -> None:
    """float32 `t` with a 1e20 fill (one cell NaN everywhere, one cell NaN for a month),
    int16 `p` packed with scale/offset and a `missing_value`, `label(time)` to group by,
    stored in time chunks of 37 so reductions cross chunk boundaries."""
    rng = np.random.default_rng(7)
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("time", None)
        ds.createDimension("lat", 3)
        ds.createDimension("lon", 2)
        t = ds.createVariable("time", "f8", ("time",))
        t.units = f"hours since {start}"
        t.calendar = calendar
        t.standard_name = "time"
        t[:] = np.arange(steps) * hours + 0.5
        lat = ds.createVariable("lat", "f4", ("lat",))
        lat[:] = [-10.0, 0.0, 10.0]
        lat.units = "degrees_north"
        lon = ds.createVariable("lon", "f8", ("lon",))
        lon[:] = [0.0, 180.0]
        v = ds.createVariable("t", "f4", ("time", "lat", "lon"), fill_value=np.float32(1e20), chunksizes=(37, 3, 2))
        v.units = "K"
        v.coordinates = "label"
        data = (280 + 15 * rng.standard_normal((steps, 3, 2))).astype("f4")
        data[:, 0, 0] = 1e20  # all-NaN in every group
        data[100:400, 1, 1] = 1e20  # all-NaN in some groups
        v[:] = data
        p = ds.createVariable("p", "i2", ("time", "lat", "lon"), chunksizes=(37, 3, 2))
        p.scale_factor = 0.01
        p.add_offset = 1000.0
        p.missing_value = np.int16(-32767)
        p.coordinates = "label"
        raw = rng.integers(-3000, 3000, (steps, 3, 2)).astype("i2")
        raw[::5, 2, 0] = -32767
        p.set_auto_maskandscale(False)
        p[:] = raw
        lab = ds.createVariable("label", "i4", ("time",))
        lab[:] = (np.arange(steps) * 7) % 5


INT_TYPES = {"b": "i1", "ub": "u1", "s": "i2", "us": "u2", "n": "i4", "un": "u4", "big": "i8", "ubig": "u8"}


def write_ints(path) -> None:
    """Integer variables of every width (no fill value, no packing: xarray keeps them
    integers) with extreme values: int64 sums that wrap and need more than 53 bits, uint64
    values above 2^63; a float32 `f` with NaN. Days in January, March and June 2000 and
    January 2001 only, so monthly resampling has empty months; time chunks of 7."""
    rng = np.random.default_rng(11)
    days = np.concatenate([np.arange(0, 31), np.arange(60, 91), np.arange(152, 161), np.arange(366, 371)])
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("time", len(days))
        ds.createDimension("x", 3)
        t = ds.createVariable("time", "f8", ("time",))
        t.units = "days since 2000-01-01"
        t.calendar = "standard"
        t[:] = days + 0.5
        for name, code in INT_TYPES.items():
            info = np.iinfo(code)
            v = ds.createVariable(name, code, ("time", "x"), chunksizes=(7, 3), fill_value=False)
            data = rng.integers(info.min, info.max, (len(days), 3), dtype=code, endpoint=True)
            data[0, 0], data[1, 0] = info.max, info.min
            if code == "i8":
                data[:, 1] = (1 << 62) + rng.integers(0, 1 << 20, len(days))  # wraps
                data[:, 2] = (1 << 53) + 1  # exact only in integers
            v[:] = data
        f = ds.createVariable("f", "f4", ("time", "x"), chunksizes=(7, 3))
        data = rng.standard_normal((len(days), 3)).astype("f4")
        data[31:62, 1] = np.nan  # all-NaN March: sum 0, count 0 (not an empty group)
        f[:] = data


def _view_yaml(name: str, spec: tuple) -> str:
    kind, key, reduce, variables = spec[:4]
    var = f", variables: {json.dumps(variables)}" if variables else ""
    if kind == "groupby":
        return f"{name}: {{groupby: {{by: {json.dumps(key)}, reduce: {reduce}}}{var}}}"
    dim = f", dim: {spec[4]}" if len(spec) > 4 else ""
    return f"{name}: {{resample: {{time: {key}, reduce: {reduce}{dim}}}{var}}}"


def _dataset_yaml(name: str, sources: list[str], views: dict) -> list[str]:
    lines = [f"  - name: {name}", f"    sources: {json.dumps(sources)}", "    processing:", "      views:"]
    lines += [f"        {_view_yaml(v, s)}" for v, s in views.items()]
    return lines


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    assert len(DAY) == 3, "sample data missing"
    root = tmp_path_factory.mktemp("reduce")
    d360 = root / "d360.nc"
    noleap = root / "noleap.nc"
    write_edge(d360, "360_day", 2 * 360 * 4 + 17, 6, "1999-11-03 00:00:00")
    write_edge(noleap, "noleap", 3 * 365 + 40, 24, "2001-12-01")
    ints = root / "ints.nc"
    write_ints(ints)
    sources = {"day": DAY, "d360": [str(d360)], "noleap": [str(noleap)], "ints": [str(ints)]}
    lines = ["datasets:"]
    for ds, views in VIEWS.items():
        lines += _dataset_yaml(ds, sources[ds], views)
    for name, (spec, _, _) in BAD.items():
        lines += _dataset_yaml(name, [str(d360)], {"v": spec})
    cfg = root / "cloudify.yaml"
    cfg.write_text("\n".join(lines) + "\n")
    url, proc, log = start_server(["serve", "--config", str(cfg)], root, "reduce",
                                  extra_env={"CLOUDIFY_CACHE_DIR": str(root / "cache")})
    try:
        status = wait_until_settled(url, [*VIEWS, *BAD], proc)
        yield url, status, sources
    finally:
        stop_server(proc)


def _open_source(files: list[str]) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xr.open_mfdataset(files, **helpers.MFDATASET_KW, use_cftime=None).load()


def _reference(src: xr.Dataset, spec: tuple, var: str, as64: bool) -> xr.DataArray:
    kind, key, reduce, _ = spec[:4]
    da = src[var].astype("float64") if as64 else src[var]
    if kind == "groupby":
        g = da.groupby(src[key] if "." not in key else key)
    else:
        g = da.resample(time=FREQ[key])
    return getattr(g, reduce)()


def _cases():
    for ds, views in VIEWS.items():
        for v in views:
            yield ds, v


@pytest.mark.parametrize("fmt", [2, 3])
@pytest.mark.parametrize("ds,view", list(_cases()))
def test_view_equals_xarray(served, ds, view, fmt):
    url, status, sources = served
    spec = VIEWS[ds][view]
    src = _open_source(sources[ds])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = xr.open_dataset(f"{url}/datasets/{ds}.{view}/zarr", engine="zarr", zarr_format=fmt,
                              consolidated=True, use_cftime=None)
    variables = spec[3] or [v for v in src.data_vars if "time" in src[v].dims and v != "time_bnds"]
    assert sorted(v for v in got.data_vars if v not in ("lat_bnds", "lon_bnds")) == sorted(variables), got
    reduce = spec[2]
    for var in variables:
        want = _reference(src, spec, var, as64=False)
        have = got[var]
        assert have.dims == want.dims, (var, have.dims, want.dims)
        assert have.dtype == want.dtype, (var, have.dtype, want.dtype)
        assert have.attrs["cloudify_processing"].endswith(f".{reduce}()"), have.attrs
        for d in want.dims:
            np.testing.assert_array_equal(have[d].values, want[d].values, err_msg=f"{var}: coordinate {d}")
        if reduce in EXACT or src[var].dtype.kind in "iu" and reduce == "sum":
            np.testing.assert_array_equal(have.values, want.values, err_msg=var)
        else:
            ref = _reference(src, spec, var, as64=True)
            # where xarray's own float32 result overflows (var/std of huge values), the served
            # float32 result must overflow the same way
            ref = ref.where(~np.isinf(want), want.astype("f8"))
            if var == "big" and reduce in ("std", "var"):
                # int64 values 2^62 apart by < 2^20 (column 1) are ill-conditioned in float64:
                # numpy's two-pass and the streamed Welford differ in the 4th digit there,
                # neither exact; the other columns are compared
                have, ref = have.isel(x=[0, 2]), ref.isel(x=[0, 2])
            np.testing.assert_allclose(have.values.astype("f8"), ref.values, rtol=1e-6, atol=0, equal_nan=True,
                                       err_msg=var)


def test_group_coordinates_are_labelled_as_xarray(served):
    url, _, _ = served
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clim = xr.open_dataset(f"{url}/datasets/day.climatology/zarr", engine="zarr", zarr_format=3)
        seas = xr.open_dataset(f"{url}/datasets/day.gseason/zarr", engine="zarr", zarr_format=2)
        res = xr.open_dataset(f"{url}/datasets/day.seasons/zarr", engine="zarr", zarr_format=2)
    assert clim["month"].dtype == np.int64 and list(clim["month"].values) == list(range(1, 13))
    assert list(seas["season"].values) == ["DJF", "JJA", "MAM", "SON"]
    # December 1999 opens the first DJF; labels are period starts
    assert str(res["time"].values[0])[:10] == "1999-12-01"
    assert clim["ta"].encoding["chunks"][0] == 12


def test_views_are_listed(served):
    url, status, _ = served
    names = {d["name"]: d["state"] for d in status["datasets"]}
    listed = requests.get(f"{url}/datasets", timeout=30).json()
    for ds, views in VIEWS.items():
        for v in views:
            assert names.get(f"{ds}.{v}") == "ready", (ds, v, names.get(f"{ds}.{v}"))
            assert f"{ds}.{v}" in listed


@pytest.mark.parametrize("name", list(BAD))
def test_bad_views_fail_the_dataset_naming_the_field(served, name):
    _, status, _ = served
    entry = next(d for d in status["datasets"] if d["name"] == name)
    assert entry["state"] == "failed", entry
    _, field, words = BAD[name]
    assert field in entry["error"] and words in entry["error"], entry["error"]
    assert name in entry["error"], entry["error"]


@pytest.mark.parametrize("case", list(BAD_CONFIG))
def test_bad_view_config_is_refused(tmp_path, case):
    spec, words = BAD_CONFIG[case]
    view = _view_yaml("v", spec)
    if case == "both":
        view = "v: {groupby: {by: time.month, reduce: mean}, resample: {time: month, reduce: mean}}"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("\n".join(["datasets:", *_dataset_yaml("x", DAY, {})[:-1], "      views:", f"        {view}"]) + "\n")
    r = subprocess.run([find_binary(), "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and words in r.stderr, r.stderr
    if case == "both":
        assert "datasets[0].processing.views.v" in r.stderr, r.stderr


ADHOC = [("day", "ta", "time.month", "mean"), ("day", "ta", "time.season", "median"),
         ("day", "ta", "time.month", "count"), ("d360", "t", "time.dayofyear", "std"),
         ("d360", "p", "label", "max"), ("noleap", "t", "time.year", "first"),
         ("ints", "big", "time.month", "sum"), ("ints", "ub", "time.month", "max")]


@pytest.mark.parametrize("fmt", [2, 3])
@pytest.mark.parametrize("ds,var,coord,action", ADHOC)
def test_adhoc_groupby_equals_xarray(served, ds, var, coord, action, fmt):
    url, _, sources = served
    base = f"{url}/datasets/{ds}/groupby/{var}/{coord}/{action}"
    r = requests.get(base, timeout=120)
    assert r.status_code == 200, r.text
    summary = r.json()
    assert summary["zarr"] == f"/datasets/{ds}/groupby/{var}/{coord}/{action}/zarr"
    src = _open_source(sources[ds])
    spec = ("groupby", coord, action, [var])
    want = _reference(src, spec, var, as64=False)
    assert summary["dims"] == list(want.dims) and summary["shape"] == list(want.shape), summary
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = xr.open_dataset(url + summary["zarr"], engine="zarr", zarr_format=fmt, consolidated=True)
    have = got[var]
    # the product keeps the source's cell bounds of untouched dimensions, as the views do
    assert [v for v in got.data_vars if v not in ("lat_bnds", "lon_bnds")] == [var]
    assert have.dims == want.dims
    assert have.dtype == want.dtype
    for d in want.dims:
        np.testing.assert_array_equal(have[d].values, want[d].values)
    if action in EXACT or src[var].dtype.kind in "iu" and action == "sum":
        np.testing.assert_array_equal(have.values, want.values)
    else:
        ref = _reference(src, spec, var, as64=True)
        # where xarray's own float32 result overflows (var/std of huge values), the served
        # float32 result must overflow the same way
        ref = ref.where(~np.isinf(want), want.astype("f8"))
        np.testing.assert_allclose(have.values.astype("f8"), ref.values, rtol=1e-6, equal_nan=True)


@pytest.mark.parametrize("path,status,words", [
    ("day/groupby/ta/time.month/mode", 400, "unknown action 'mode'"),
    ("day/groupby/ta/time.month/__import__('os')", 400, "unknown action"),
    ("day/groupby/nope/time.month/mean", 404, "unknown variable 'nope'"),
    ("day/groupby/ta/depth/mean", 404, "unknown coordinate 'depth'"),
    ("day/groupby/ta/time.week/mean", 400, "unknown time component 'week'"),
    ("day/groupby/ta/lat.month/mean", 400, "'lat'"),
    ("day/groupby/lat/time.month/mean", 400, "no dimension 'time'"),
    ("nosuch/groupby/ta/time.month/mean", 404, "no dataset 'nosuch'"),
    ("day/groupby/ta/time.month/mode/zarr/.zmetadata", 400, "unknown action 'mode'"),
    ("day/groupby/nope/time.month/mean/zarr/zarr.json", 404, "unknown variable 'nope'"),
])
def test_adhoc_bad_input_is_named(served, path, status, words):
    url, _, _ = served
    r = requests.get(f"{url}/datasets/{path}", timeout=60)
    assert r.status_code == status, (path, r.status_code, r.text)
    assert words in r.json()["error"], r.text


def test_integer_results_are_integers_as_numpy_gives_them(served):
    """The rules, spelled out (the comparison above checks them against xarray too): a
    groupby of integers keeps integers; a resample with empty months is NaN-promoted."""
    url, _, _ = served
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g_sum = xr.open_dataset(f"{url}/datasets/ints.g_sum/zarr", engine="zarr", consolidated=True)
        g_max = xr.open_dataset(f"{url}/datasets/ints.g_max/zarr", engine="zarr", consolidated=True)
        m_count = xr.open_dataset(f"{url}/datasets/ints.m_count/zarr", engine="zarr", consolidated=True)
        m_sum = xr.open_dataset(f"{url}/datasets/ints.m_sum/zarr", engine="zarr", consolidated=True)
    assert g_sum["big"].dtype == np.int64 and g_sum["ubig"].dtype == np.uint64 and g_sum["b"].dtype == np.int64
    # exact sums modulo 2^64 from Python integers: 36 January values of 2^62 + r wrap to
    # the r's sum, 31 March ones to -2^62 + their sum
    path = served[2]["ints"][0]
    with netCDF4.Dataset(path) as nc:
        big = nc["big"][:].data.astype(object)
        month = [(d.month) for d in netCDF4.num2date(nc["time"][:], nc["time"].units, nc["time"].calendar)]
    for i, m in enumerate(sorted(set(month))):
        exact = sum(int(v) for v, mm in zip(big[:, 1], month) if mm == m)
        wrapped = (exact + 2**63) % 2**64 - 2**63
        assert exact != wrapped and int(g_sum["big"].values[i, 1]) == wrapped, (m, exact, wrapped)
    assert g_sum["big"].values[1, 1] < 0, "March wraps negative"
    assert {v: str(g_max[v].dtype) for v in INT_TYPES} == {v: np.dtype(c).name for v, c in INT_TYPES.items()}
    assert m_count["n"].dtype == np.float64 and np.isnan(m_count["n"].values[1]).all()  # February
    assert m_sum["b"].dtype == np.float64 and m_sum["f"].dtype == np.float32
    assert np.isnan(m_sum["f"].values[1]).all() and m_sum["f"].values[2, 1] == 0  # empty vs all-NaN


def test_catalogs_offer_the_views(served):
    url, _, _ = served
    item = requests.get(f"{url}/datasets/day/stac", timeout=60).json()
    a = item["assets"]["processed-monthly"]
    assert a["href"].endswith("/datasets/day.monthly/zarr") and "processed" in a["roles"]
    view_item = requests.get(f"{url}/datasets/day.monthly/stac", timeout=60)
    assert view_item.status_code == 200, view_item.text
    import yaml

    cat = yaml.safe_load(requests.get(f"{url}/intake.yaml", timeout=60).text)
    assert "day.climatology" in cat["sources"]
    assert cat["sources"]["day.climatology"]["args"]["urlpath"].endswith("/datasets/day.climatology/zarr")
    assert "day.monthly" in cat["sources"]["day"]["metadata"]["views"]
