"""Value-range subsetting for products (issue #14): an ad-hoc
`/datasets/{id}/groupby/{var}/{coord}/{action}?time=a/b&lat=lo/hi` reduces only the selected
region and equals xarray computing `ds[var].sel(time=slice(a, b), lat=slice(lo, hi))
.groupby(coord).<action>()` locally on the source files — opened over Zarr v2 and v3 from
the summary's `zarr` URL, which carries the selection as a path segment (Zarr clients
append keys to a base URL and drop its query). Float reductions within rtol 1e-6 of a
float64 reference, counts/min/max/first exact, coordinates exact. Times are ISO dates in
every CF calendar (partial dates span their period, `2000-02-30` exists in 360_day); a
descending coordinate (latitude stored north to south, CMIP6 `plev`) is selected from the
larger value to the smaller, as xarray's slices follow the coordinate's order. The
histogram's Zarr form with a selection is checked against xhistogram on a noleap file with
descending latitude. Selections are part of what identifies a product: ETags differ, the
source-byte estimate shrinks. Every bad input is 400 JSON naming the parameter.

Sources: CMIP6 daily `ta` (MIROC6, gregorian, 2000-2002, descending `plev`) and generated
files: one per CF calendar (ascending latitude), a noleap file and a 360_day file with
descending latitude (float32 with a fill value and NaN, packed int16 with
`missing_value`), time chunks that selections cut across."""

from __future__ import annotations

import warnings
from urllib.parse import quote

import netCDF4
import numpy as np
import pytest
import requests
import xarray as xr
from xhistogram.xarray import histogram as xhistogram

import helpers
from conftest import serve_sources

DAY = sorted(str(p) for p in helpers.cmip6_root().rglob("ta_day_MIROC6_historical_r1i1p1f1_gn_200[0-2]*.nc"))

CALENDARS = ["standard", "gregorian", "proleptic_gregorian", "noleap", "365_day", "all_leap", "366_day",
             "360_day", "julian"]
EXACT = {"count", "min", "max", "first", "last"}


def write_grid(path, calendar: str, descending: bool, steps: int = 800) -> None:
    """Daily from 1999-12-01 12:00 in `calendar`: float32 `t` with a 1e20 fill (one cell
    NaN throughout, NaN for a stretch elsewhere), int16 `p` packed with scale/offset and a
    `missing_value`; 6 latitudes (descending when asked), 4 longitudes; time chunks of 37."""
    rng = np.random.default_rng(5)
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("time", None)
        ds.createDimension("lat", 6)
        ds.createDimension("lon", 4)
        ds.createDimension("bnds", 2)
        t = ds.createVariable("time", "f8", ("time",))
        t.units = "days since 1999-12-01 00:00:00"
        t.calendar = calendar
        t.standard_name = "time"
        t[:] = np.arange(steps) + 0.5
        lat_values = np.array([-50.0, -30.0, -10.0, 10.0, 30.0, 50.0])
        if descending:
            lat_values = lat_values[::-1]
        lat = ds.createVariable("lat", "f8", ("lat",))
        lat[:] = lat_values
        lat.units = "degrees_north"
        lat.bounds = "lat_bnds"
        lb = ds.createVariable("lat_bnds", "f8", ("lat", "bnds"))
        lb[:] = np.stack([lat_values - 10, lat_values + 10], axis=1)
        lon = ds.createVariable("lon", "f4", ("lon",))
        lon[:] = [0.0, 90.0, 180.0, 270.0]
        lon.units = "degrees_east"
        v = ds.createVariable("t", "f4", ("time", "lat", "lon"), fill_value=np.float32(1e20), chunksizes=(37, 4, 3))
        v.units = "K"
        data = (280 + 15 * rng.standard_normal((steps, 6, 4))).astype("f4")
        data[:, 0, 0] = 1e20
        data[100:300, 2, 1] = 1e20
        data[::13, 3, 2] = np.nan
        v[:] = data
        p = ds.createVariable("p", "i2", ("time", "lat", "lon"), chunksizes=(50, 6, 4))
        p.scale_factor = 0.01
        p.add_offset = 1000.0
        p.missing_value = np.int16(-32767)
        raw = rng.integers(-3000, 3000, (steps, 6, 4)).astype("i2")
        raw[::5, 4, 0] = -32767
        p.set_auto_maskandscale(False)
        p[:] = raw


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    assert len(DAY) == 3, "sample data missing"
    root = tmp_path_factory.mktemp("select")
    sources = {"day": DAY}
    for cal in CALENDARS:
        path = root / f"{cal}.nc"
        write_grid(path, cal, descending=False)
        sources[f"cal_{cal}"] = [str(path)]
    for name, cal in (("desc", "noleap"), ("d360", "360_day")):
        path = root / f"{name}.nc"
        write_grid(path, cal, descending=True)
        sources[name] = [str(path)]
    yield from serve_sources(root, "select", sources)


def _source(files: list[str]) -> xr.Dataset:
    return helpers.load_sources(files)


def _sel(query: dict) -> dict:
    """The query's ranges as xarray slices (numbers for numeric coordinates)."""
    out = {}
    for d, v in query.items():
        a, b = v.split("/")
        out[d] = slice(a, b) if d == "time" else slice(float(a), float(b))
    return out


def _reference(src: xr.Dataset, var: str, coord: str, action: str, query: dict, as64: bool) -> xr.DataArray:
    da = src[var].sel(_sel(query))
    if as64:
        da = da.astype("float64")
    g = da.groupby(coord if "." in coord else da[coord])
    return getattr(g, action)()


# name -> (dataset, variable, groupby key, action, selection)
CASES = {
    # the example, on a standard-calendar file with latitudes -50..50
    "issue_example": ("cal_standard", "t", "time.month", "mean",
                      {"time": "2000-01-01/2000-12-31", "lat": "-30/30"}),
    "real_ta_year": ("day", "ta", "time.month", "mean", {"time": "2000-01-01/2000-12-31", "lat": "88/89"}),
    # CMIP6 plev is stored 100000, 85000: descending, selected from the larger value
    "real_plev_descending": ("day", "ta", "time.season", "max", {"plev": "100000/90000", "time": "2001-03/2002-02"}),
    "real_first_hours": ("day", "ta", "time.month", "first", {"time": "2000-06-15T12/2000-08", "lon": "1/2"}),
    "real_count": ("day", "ta", "time.dayofyear", "count", {"time": "2001-12-20/2002-01-10"}),
    "desc_noleap_std": ("desc", "t", "time.month", "std", {"lat": "30/-10", "time": "2000-02-15/2001-06"}),
    "desc_count": ("desc", "t", "time.year", "count", {"lat": "50/-50", "lon": "90/270"}),
    "desc_packed_median": ("desc", "p", "time.season", "median", {"lat": "10/-50"}),
    "desc_by_lat": ("desc", "t", "lat", "sum", {"lat": "30/-30", "time": "2000-03/2000-05"}),
    "d360_dayofyear": ("d360", "t", "time.dayofyear", "var", {"time": "2000-02-30/2000-12", "lat": "10/-10"}),
    "d360_min_hours": ("d360", "t", "time.month", "min", {"time": "2000-12-01T06/2001-01-30T18"}),
    "d360_packed_mean": ("d360", "p", "time.month", "mean", {"lon": "90/180", "time": "2000"}),
    **{f"calendar_{cal}": (f"cal_{cal}", "t", "time.month", "mean", {"time": "2000-02-28/2001-02-28", "lat": "-10/10"})
       for cal in CALENDARS},
}


def _summary(url: str, ds: str, var: str, coord: str, action: str, query: dict) -> requests.Response:
    return requests.get(f"{url}/datasets/{ds}/groupby/{var}/{coord}/{action}", params=query, timeout=300)


@pytest.mark.parametrize("fmt", [2, 3])
@pytest.mark.parametrize("name", list(CASES))
def test_selected_groupby_equals_xarray(served, name, fmt):
    url, sources = served
    ds, var, coord, action, query = CASES[name]
    if "/" not in query.get("time", "/"):
        query = {**query, "time": f"{query['time']}/{query['time']}"}
    r = _summary(url, ds, var, coord, action, query)
    assert r.status_code == 200, r.text
    summary = r.json()
    src = _source(sources[ds])
    want = _reference(src, var, coord, action, query, as64=False)
    assert summary["dims"] == list(want.dims) and summary["shape"] == list(want.shape), (summary, want.sizes)
    zarr = summary["zarr"]
    segment = "&".join(f"{d}={query[d].replace('/', ',')}" for d in sorted(query))
    assert zarr == f"/datasets/{ds}/groupby/{var}/{coord}/{action}/{quote(segment, safe='=&,:+-.')}/zarr", zarr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = xr.open_dataset(url + zarr, engine="zarr", zarr_format=fmt, consolidated=True, use_cftime=None)
    have = got[var]
    assert have.dims == want.dims
    assert have.dtype == want.dtype, (have.dtype, want.dtype)
    assert have.attrs["cloudify_processing"].startswith("sel(") and have.attrs["cloudify_processing"].endswith(
        f".{action}()"), have.attrs
    for d in want.dims:
        np.testing.assert_array_equal(have[d].values, want[d].values, err_msg=f"coordinate {d}")
    # kept cell bounds are the selected stretch too
    if "lat" in want.dims and coord != "lat" and "lat_bnds" in src:
        lat = _sel(query).get("lat", slice(None))
        np.testing.assert_array_equal(got["lat_bnds"].values, src["lat_bnds"].sel(lat=lat).values)
    if action in EXACT:
        np.testing.assert_array_equal(have.values, want.values)
    else:
        ref = _reference(src, var, coord, action, query, as64=True)
        np.testing.assert_allclose(have.values.astype("f8"), ref.values, rtol=1e-6, atol=0, equal_nan=True)
    assert np.isfinite(have.values).any(), "a case that computes nothing cannot tell anything"


def test_selection_is_part_of_the_product(served):
    """Another selection is another product: smaller source-byte estimate, its own ETags
    (metadata and chunks); another spelling of the same selection (order, `/` vs `,`) is
    the same product and URL."""
    url, _ = served
    base = "/datasets/desc/groupby/t/time.month/mean"
    whole = requests.get(url + base, timeout=120).json()
    part = requests.get(url + base, params={"time": "2000-03/2000-04", "lat": "30/-10"}, timeout=120).json()
    assert part["estimated_source_bytes"] < whole["estimated_source_bytes"], (part, whole)
    assert part["selection"] == {"time": {"from": "2000-03", "to": "2000-04"}, "lat": {"from": "30", "to": "-10"}}
    assert part["shape"] == [2, 3, 4] and whole["shape"] == [12, 6, 4]
    again = requests.get(f"{url}{base}?lat=30,-10&time=2000-03,2000-04", timeout=120).json()
    assert again["zarr"] == part["zarr"]
    other = requests.get(url + base, params={"time": "2000-03/2000-05", "lat": "30/-10"}, timeout=120).json()
    tags = {}
    for name, s in (("whole", whole), ("part", part), ("other", other)):
        for key in ("t/zarr.json", "t/c/0/0/0"):
            r = requests.get(url + s["zarr"] + "/" + key, timeout=120)
            assert r.status_code == 200, (name, key, r.text)
            tags[(name, key)] = r.headers["ETag"]
    for key in ("t/zarr.json", "t/c/0/0/0"):
        assert len({tags[(n, key)] for n in ("whole", "part", "other")}) == 3, tags
    # conditional requests of a selected product's chunk: 304 while current
    r = requests.get(url + part["zarr"] + "/t/c/0/0/0", headers={"If-None-Match": tags[("part", "t/c/0/0/0")]},
                     timeout=60)
    assert r.status_code == 304


@pytest.mark.parametrize("fmt", [2, 3])
def test_histogram_selection_on_noleap_descending_latitude(served, fmt):
    url, sources = served
    query = {"bins": "8", "range": "250,310", "dim": "time", "lat": "30/-10", "time": "2000-02-15/2001-06"}
    r = requests.get(f"{url}/datasets/desc/histogram/t", params=query, timeout=300)
    assert r.status_code == 200, r.text
    src = _source(sources["desc"])
    da = src["t"].sel(lat=slice(30.0, -10.0), time=slice("2000-02-15", "2001-06"))
    want = xhistogram(da, bins=8, range=(250, 310), dim=["time"])
    np.testing.assert_array_equal(np.array(r.json()["counts"]), want.values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = xr.open_dataset(url + r.json()["zarr"], engine="zarr", zarr_format=fmt, consolidated=True)
    np.testing.assert_array_equal(got["histogram_t"].values, want.values)
    np.testing.assert_array_equal(got["lat"].values, want["lat"].values)
    # the same histogram over another selection: another ETag for the same key
    r2 = requests.get(f"{url}/datasets/desc/histogram/t", params={**query, "lat": "30/10"}, timeout=300)
    key = "histogram_t/c/0/0/0" if fmt == 3 else "histogram_t/0.0.0"
    t1 = requests.get(url + r.json()["zarr"] + "/" + key, timeout=60)
    t2 = requests.get(url + r2.json()["zarr"] + "/" + key, timeout=60)
    assert t1.status_code == t2.status_code == 200, (t1.text, t2.text)
    assert t1.headers["ETag"] != t2.headers["ETag"]


BASE = "desc/groupby/t/time.month/mean"
BAD = [
    ({"depth": "0/1"}, "depth: not a dimension of 't'"),
    ({"bnds": "0/1"}, "bnds: not a dimension of 't'"),
    ({"lat": "abc/10"}, "lat: 'abc' is not a number"),
    ({"lat": "10/nan"}, "lat: 'nan' is not a finite number"),
    ({"lon": "90/inf"}, "lon: 'inf' is not a finite number"),
    ({"time": "2000-13/2001"}, "time: '2000-13' is not a date"),
    ({"time": "2000-02-29/2000-03"}, "time: '2000-02-29' is not a date"),  # noleap
    ({"time": "soon/later"}, "time: 'soon' is not a date"),
    ({"time": "2001"}, "time: '2001' is not a value range"),
    ({"time": "/2001"}, "time: '/2001' lacks an end"),
    ({"time": "2005/2006"}, "time: 2005/2006 selects nothing"),
    ({"time": "2001-06/2000-02"}, "time: 2001-06/2000-02 selects nothing"),  # reversed
    ({"lon": "270/90"}, "lon: 270/90 selects nothing"),  # reversed on an ascending coordinate
    ({"lat": "-10/30"}, "lat: -10/30 selects nothing"),  # ascending order on a descending one
    ({"lat": "5/-5"}, "lat: 5/-5 selects nothing"),  # between two cells
]


@pytest.mark.parametrize("query,words", BAD, ids=[w[:40] for _, w in BAD])
def test_bad_selection_is_named(served, query, words):
    url, _ = served
    r = requests.get(f"{url}/datasets/{BASE}", params=query, timeout=60)
    assert r.status_code == 400, (query, r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("application/json")
    err = r.json()["error"]
    assert words in err and "groupby/t/time.month/mean" in err, err
    # the same selection in the Zarr form's path segment
    (d, v), = query.items()
    segment = quote(f"{d}={v.replace('/', ',', 1) if not v.startswith('/') else v}", safe="=&,:+-.")
    for key in (".zmetadata", "zarr.json", "t/c/0/0/0"):
        r = requests.get(f"{url}/datasets/{BASE}/{segment}/zarr/{key}", timeout=60)
        assert r.status_code == 400, (segment, key, r.status_code, r.text)
        assert words.split(":")[0] + ":" in r.json()["error"], r.text


@pytest.mark.parametrize("path,status,words", [
    (f"{BASE}/lat/zarr/.zmetadata", 400, "selection: 'lat' is not dim=from,to"),
    (f"{BASE}/lat=1,2&lat=3,4/zarr/.zmetadata", 400, "lat: given more than once"),
    (f"{BASE}/=1,2/zarr/zarr.json", 400, "selection: a parameter without a name"),
    ("desc/groupby/nope/time.month/mean/lat=30,-10/zarr/zarr.json", 404, "unknown variable 'nope'"),
    ("desc/groupby/t/time.month/mode/lat=30,-10/zarr/zarr.json", 400, "unknown action 'mode'"),
    ("nosuch/groupby/t/time.month/mean/lat=30,-10/zarr/zarr.json", 404, "no dataset 'nosuch'"),
])
def test_bad_selection_segments_are_named(served, path, status, words):
    url, _ = served
    r = requests.get(f"{url}/datasets/{path}", timeout=60)
    assert r.status_code == status, (path, r.status_code, r.text)
    assert words in r.json()["error"], r.text
