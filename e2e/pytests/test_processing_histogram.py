"""Histograms (issue #14): `/datasets/{id}/histogram/{var}` equals REAL xhistogram
(`xhistogram.xarray.histogram`) computed locally on the same source files, opened with
xarray's defaults: bin edges as numpy.histogram_bin_edges gives them, counts exact, density
within rtol 1e-12, the bin-centre and kept coordinates exact; after a value-range selection
the reference is `ds[var].sel(dim=slice(a, b))`. The same product is opened over Zarr v2
and v3 by xarray. Sources: CMIP6 daily `ta` (MIROC6, 2000-2002, with undeclared 9.97e36
values that fall outside every range) and a generated 360_day file (float32 with a fill
value and NaN, packed int16 with `missing_value`, descending latitude). Every bad input is
asserted."""

from __future__ import annotations

import warnings

import netCDF4
import numpy as np
import pytest
import requests
import xarray as xr
from xhistogram.xarray import histogram as xhistogram

import helpers
from conftest import serve_sources

DAY = sorted(str(p) for p in helpers.cmip6_root().rglob("ta_day_MIROC6_historical_r1i1p1f1_gn_200[0-2]*.nc"))


def write_edge(path) -> None:
    rng = np.random.default_rng(11)
    steps = 2 * 360 + 7
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("time", None)
        ds.createDimension("lat", 3)
        ds.createDimension("lon", 4)
        t = ds.createVariable("time", "f8", ("time",))
        t.units = "days since 1999-12-01 00:00:00"
        t.calendar = "360_day"
        t.standard_name = "time"
        t[:] = np.arange(steps) + 0.25
        lat = ds.createVariable("lat", "f4", ("lat",))
        lat[:] = [10.0, 0.0, -10.0]  # descending
        lat.units = "degrees_north"
        lon = ds.createVariable("lon", "f8", ("lon",))
        lon[:] = [0.0, 90.0, 180.0, 270.0]
        v = ds.createVariable("t", "f4", ("time", "lat", "lon"), fill_value=np.float32(1e20), chunksizes=(50, 3, 2))
        v.units = "K"
        v.long_name = "temperature"
        data = (280 + 15 * rng.standard_normal((steps, 3, 4))).astype("f4")
        data[::7, 0, 0] = 1e20
        data[::11, 1, 2] = np.nan
        data[5, 2, 3] = 250.0  # exactly on an edge
        data[6, 2, 3] = 310.0  # exactly the last edge
        v[:] = data
        p = ds.createVariable("p", "i2", ("time", "lat", "lon"), chunksizes=(64, 1, 4))
        p.scale_factor = 0.01
        p.add_offset = 1000.0
        p.missing_value = np.int16(-32767)
        raw = rng.integers(-3000, 3000, (steps, 3, 4)).astype("i2")
        raw[::5, 2, 0] = -32767
        p.set_auto_maskandscale(False)
        p[:] = raw


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    assert len(DAY) == 3, "sample data missing"
    root = tmp_path_factory.mktemp("hist")
    edge = root / "edge.nc"
    write_edge(edge)
    sources = {"day": DAY, "edge": [str(edge)]}
    yield from serve_sources(root, "hist", sources)


def _source(files: list[str]) -> xr.Dataset:
    return helpers.load_sources(files)


# (dataset, variable, query, xhistogram bins, range, dim, density, sel)
CASES = {
    "count_all": ("day", "ta", {"bins": "10", "range": "200,300"}, 10, (200, 300), None, False, {}),
    "count_time": ("day", "ta", {"bins": "7", "range": "230,290", "dim": "time"}, 7, (230, 290), ["time"], False, {}),
    "edges": ("day", "ta", {"bins": "200,220.5,250,260,300", "dim": "time,lon"},
              np.array([200, 220.5, 250, 260, 300.0]), None, ["time", "lon"], False, {}),
    "density_all": ("day", "ta", {"bins": "50", "range": "180,320", "density": "true"}, 50, (180, 320), None, True, {}),
    "subset_density": ("day", "ta", {"bins": "20", "range": "200,300", "dim": "time,plev", "density": "true",
                                     "time": "2001-03/2001-11-15", "lat": "88/89"},
                       20, (200, 300), ["time", "plev"], True, {"time": ("2001-03", "2001-11-15"), "lat": (88, 89)}),
    "empty_range": ("day", "ta", {"bins": "3", "range": "250,250"}, 3, (250, 250), None, False, {}),
    "fine": ("day", "ta", {"bins": "997", "range": "190.1,310.3", "dim": "time,lat,lon"},
             997, (190.1, 310.3), ["time", "lat", "lon"], False, {}),
    "edge_360": ("edge", "t", {"bins": "12", "range": "250,310", "dim": "time", "time": "2000-02-30/2001-01",
                               "lat": "10/-5"},
                 12, (250, 310), ["time"], False, {"time": ("2000-02-30", "2001-01"), "lat": (10, -5)}),
    "edge_keep_time": ("edge", "t", {"bins": "5", "range": "260,300", "dim": "lat,lon", "density": "1"},
                       5, (260, 300), ["lat", "lon"], True, {}),
    "packed": ("edge", "p", {"bins": "960,975.5,990,1000,1010.25,1031", "dim": "time,lon"},
               np.array([960, 975.5, 990, 1000, 1010.25, 1031.0]), None, ["time", "lon"], False, {}),
    "packed_count": ("edge", "p", {"bins": "8", "range": "970,1030", "lon": "90/180"}, 8, (970, 1030), None, False,
                     {"lon": (90, 180)}),
}


def _reference(src: xr.Dataset, case: tuple):
    _, var, _, bins, rng, dim, density, sel = case
    da = src[var]
    if sel:
        da = da.sel({d: slice(a, b) for d, (a, b) in sel.items()})
    h = xhistogram(da, bins=bins, range=rng, dim=dim, density=density)
    edges = np.histogram_bin_edges(np.asarray(da.data), bins=bins, range=rng)
    return h, edges


def _get(url: str, ds: str, var: str, query: dict) -> requests.Response:
    return requests.get(f"{url}/datasets/{ds}/histogram/{var}", params=query, timeout=300)


@pytest.mark.parametrize("name", list(CASES))
def test_json_equals_xhistogram(served, name):
    url, sources = served
    case = CASES[name]
    ds, var, query, *_ = case
    density = case[6]
    r = _get(url, ds, var, query)
    assert r.status_code == 200, r.text
    got = r.json()
    want, edges = _reference(_source(sources[ds]), case)
    assert got["name"] == want.name == f"histogram_{var}"
    assert got["dims"] == list(want.dims), (got["dims"], want.dims)
    assert got["shape"] == list(want.shape)
    np.testing.assert_array_equal(np.asarray(got["bin_edges"], dtype=edges.dtype), edges)
    assert np.asarray(got["bin_edges"]).tolist() == edges.astype("f8").tolist()
    if density:
        have = np.array(got["density"], dtype="f8")  # null (no values in a cell) -> NaN
        np.testing.assert_allclose(have, want.values, rtol=1e-12, atol=0, equal_nan=True)
        assert "counts" not in got
    else:
        have = np.array(got["counts"])
        assert have.dtype.kind == "i"
        np.testing.assert_array_equal(have, want.values)
        assert have.sum() > 0, "a case that counts nothing cannot tell anything"
    for d in want.dims[:-1]:
        raw = xr.open_mfdataset(sources[ds], **helpers.MFDATASET_KW, decode_times=False)[d]
        if d in case[7]:
            assert got["selection"][d]["count"] == want.sizes[d]
            raw = raw.isel({d: slice(got["selection"][d]["start"], got["selection"][d]["start"] + want.sizes[d])})
        np.testing.assert_array_equal(np.asarray(got["coords"][d]["values"], dtype=raw.dtype), raw.values)
    assert got["zarr"].startswith(f"/datasets/{ds}/histogram/{var}/") and "?" not in got["zarr"], got["zarr"]


@pytest.mark.parametrize("fmt", [2, 3])
@pytest.mark.parametrize("name", ["count_time", "edges", "subset_density", "edge_360", "edge_keep_time", "packed"])
def test_zarr_product_equals_xhistogram(served, name, fmt):
    url, sources = served
    case = CASES[name]
    ds, var, query, *_ = case
    r = _get(url, ds, var, query)
    assert r.status_code == 200, r.text
    zurl = url + r.json()["zarr"]
    want, _ = _reference(_source(sources[ds]), case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = xr.open_dataset(zurl, engine="zarr", zarr_format=fmt, consolidated=True, use_cftime=None)
    have = got[want.name]
    assert have.dims == want.dims
    assert sorted(got.data_vars) == [want.name], got
    if case[6]:
        assert have.dtype == np.float64
        np.testing.assert_allclose(have.values, want.values, rtol=1e-12, atol=0, equal_nan=True)
    else:
        assert have.dtype == np.int64
        np.testing.assert_array_equal(have.values, want.values)
    for d in want.dims:
        assert got[d].dtype == want[d].dtype, (d, got[d].dtype, want[d].dtype)
        np.testing.assert_array_equal(got[d].values, want[d].values, err_msg=d)
    assert got[f"{var}_bin"].attrs.get("units") == want[f"{var}_bin"].attrs.get("units")


def test_selection_is_applied_before_reducing(served):
    """The subset counts fewer values than the whole, and a descending coordinate is selected
    from the larger value to the smaller (xarray's slice semantics)."""
    url, _ = served
    whole = _get(url, "edge", "t", {"bins": "4", "range": "200,400"}).json()["counts"]
    part = _get(url, "edge", "t", {"bins": "4", "range": "200,400", "lat": "10/0", "time": "2000/2000"}).json()
    assert part["selection"] == {"lat": {"start": 0, "count": 2}, "time": {"start": 30, "count": 360}}, part
    assert 0 < sum(part["counts"]) < sum(whole)


def test_the_order_of_reduced_dimensions_makes_no_other_product(served):
    """`dim=lat,time` and `dim=time,lat` reduce the same dimensions (xhistogram's result is the
    same): one product, one Zarr URL, one ETag, whatever order the request names them in."""
    url, sources = served
    q = {"bins": "6", "range": "200,300"}
    a = _get(url, "day", "ta", {**q, "dim": "lat,time"})
    b = _get(url, "day", "ta", {**q, "dim": "time , lat"})
    assert a.status_code == b.status_code == 200, (a.text, b.text)
    ja, jb = a.json(), b.json()
    assert ja["zarr"] == jb["zarr"] and ja["counts"] == jb["counts"] and ja["dims"] == jb["dims"]
    want, _ = _reference(_source(sources["day"]), ("day", "ta", q, 6, (200, 300), ["time", "lat"], False, {}))
    np.testing.assert_array_equal(np.array(ja["counts"]), want.values)
    meta = requests.get(f"{url}{ja['zarr']}/zarr.json", timeout=60)
    assert meta.status_code == 200 and meta.headers["ETag"]
    other = ja["zarr"].replace("dim=lat,time", "dim=time,lat")
    assert other != ja["zarr"], ja["zarr"]
    # the other spelling of the path form reads the same product (the same ETag)
    again = requests.get(f"{url}{other}/zarr.json", timeout=60)
    assert again.status_code == 200 and again.headers["ETag"] == meta.headers["ETag"]


BAD = [
    ("day", "nope", {"bins": "3", "range": "0,1"}, 404, "unknown variable 'nope'"),
    ("nosuch", "ta", {"bins": "3", "range": "0,1"}, 404, "no dataset 'nosuch'"),
    ("day", "ta", {}, 400, "bins: required"),
    ("day", "ta", {"bins": "abc"}, 400, "bins: 'abc'"),
    ("day", "ta", {"bins": "0", "range": "0,1"}, 400, "bins: the bin count must be positive"),
    ("day", "ta", {"bins": "-3", "range": "0,1"}, 400, "bins:"),
    ("day", "ta", {"bins": "10001", "range": "0,1"}, 400, "at most 10000"),
    ("day", "ta", {"bins": "3,2,5"}, 400, "bins: edges must increase strictly"),
    ("day", "ta", {"bins": "1,1"}, 400, "bins: edges must increase strictly"),
    ("day", "ta", {"bins": "1,x"}, 400, "bins: 'x' is not a number"),
    ("day", "ta", {"bins": "1,inf"}, 400, "bins:"),
    ("day", "ta", {"bins": "10"}, 400, "range: required"),
    ("day", "ta", {"bins": "10", "range": "300,200"}, 400, "range: lo"),
    ("day", "ta", {"bins": "10", "range": "a,b"}, 400, "range: 'a'"),
    ("day", "ta", {"bins": "10", "range": "0,nan"}, 400, "range:"),
    ("day", "ta", {"bins": "10", "range": "1"}, 400, "range: '1'"),
    ("day", "ta", {"bins": "1,2", "range": "0,1"}, 400, "range: applies only"),
    ("day", "ta", {"bins": "10", "range": "0,1", "dim": "depth"}, 400, "dim: 'ta' has no dimension 'depth'"),
    ("day", "ta", {"bins": "10", "range": "0,1", "dim": "time,time"}, 400, "dim: 'time' is named twice"),
    ("day", "ta", {"bins": "10", "range": "0,1", "dim": "time,"}, 400, "dim:"),
    ("day", "ta", {"bins": "10", "range": "0,1", "density": "maybe"}, 400, "density: 'maybe'"),
    ("day", "ta", {"bins": "10", "range": "0,1", "depth": "0/1"}, 400, "depth: not a dimension of 'ta'"),
    ("day", "ta", {"bins": "10", "range": "0,1", "time": "2000-13-01/2001"}, 400, "time: '2000-13-01'"),
    ("day", "ta", {"bins": "10", "range": "0,1", "time": "soon/later"}, 400, "time: 'soon'"),
    ("day", "ta", {"bins": "10", "range": "0,1", "time": "2000-02-30/2001"}, 400, "time: '2000-02-30'"),
    ("day", "ta", {"bins": "10", "range": "0,1", "time": "2005/2006"}, 400, "time: 2005/2006 selects nothing"),
    ("day", "ta", {"bins": "10", "range": "0,1", "time": "2001"}, 400, "time: '2001' is not a value range"),
    ("day", "ta", {"bins": "10", "range": "0,1", "lat": "100/200"}, 400, "lat: 100/200 selects nothing"),
    ("day", "ta", {"bins": "10", "range": "0,1", "lat": "abc/1"}, 400, "lat: 'abc'"),
    ("edge", "t", {"bins": "10", "range": "0,1", "lat": "-10/10"}, 400, "descending coordinate"),
]


@pytest.mark.parametrize("ds,var,query,status,words", BAD, ids=[f"{b[4][:30]}" for b in BAD])
def test_bad_input_is_named(served, ds, var, query, status, words):
    url, _ = served
    r = _get(url, ds, var, query)
    assert r.status_code == status, (query, r.status_code, r.text)
    assert words in r.json()["error"], r.text


@pytest.mark.parametrize("params,status,words", [
    ("bins=abc", 400, "bins: 'abc'"),
    ("bins=3&range=0,1&dim=depth", 400, "no dimension 'depth'"),
    ("bins=3&range=0,1&time=2005,2006", 400, "selects nothing"),
])
def test_bad_zarr_params_are_named(served, params, status, words):
    url, _ = served
    for key in (".zmetadata", "zarr.json"):
        r = requests.get(f"{url}/datasets/day/histogram/ta/{params}/zarr/{key}", timeout=60)
        assert r.status_code == status, (params, r.status_code, r.text)
        assert words in r.json()["error"], r.text
    r = requests.get(f"{url}/datasets/day/histogram/nope/bins=3&range=0,1/zarr/zarr.json", timeout=60)
    assert r.status_code == 404 and "unknown variable 'nope'" in r.json()["error"], r.text
