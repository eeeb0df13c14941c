"""EDR-style extraction (issue #16, part 3): `/datasets/{id}/edr/position` and `/edr/area`.

Values equal xarray's `ds[var].sel(lon=x, lat=y, method="nearest")` (then `.sel(time=slice(a,
b))` / `.sel(plev=z, method="nearest")`) on the same files opened locally with xarray's
defaults, bit for bit as decoded (float32 stays float32), in CoverageJSON (validated with
covjson-pydantic), CSV and netCDF (`f=nc`, opened by xarray with the netCDF4 and scipy
engines). Sources: CMIP6 daily `ta` of MIROC6 (standard calendar, three files) and CESM2
(365_day, 3650 steps), plus generated files: a global 0..360 grid with a descending latitude
axis, a 360_day calendar, a float32 variable with a fill value and a packed int16 one,
chunked so that a point's series lives in two of 144 chunks; the same grid in -180..180; and a
curvilinear grid (refused, naming why). Area membership (cell centres inside the polygon) is
checked against shapely. Every bad input is asserted to be a 400 (or 413) JSON naming it."""

from __future__ import annotations

import io
import warnings

import h5py
import netCDF4
import numpy as np
import pandas as pd
import pytest
import requests
import shapely
import xarray as xr
from covjson_pydantic.coverage import Coverage

import helpers
from conftest import serve_sources

ROOT = helpers.cmip6_root()
MIROC = sorted(str(p) for p in ROOT.rglob("ta_day_MIROC6_historical_r1i1p1f1_gn_200[0-2]*.nc"))
CESM2 = sorted(str(p) for p in ROOT.rglob("ta_day_CESM2_historical_r1i1p1f1_gn_2000*.nc"))

NT, NY, NX = 730, 24, 48
CHUNKS = (365, 4, 4)
LIMIT = 1_000_000  # --max-source-bytes: a point series fits, the whole globe does not


def write_global(path, lon0: float) -> None:
    rng = np.random.default_rng(16)
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("time", NT)
        ds.createDimension("lat", NY)
        ds.createDimension("lon", NX)
        t = ds.createVariable("time", "f8", ("time",))
        t.units = "days since 1999-12-01 00:00:00"
        t.calendar = "360_day"
        t.standard_name = "time"
        t[:] = np.arange(NT) + 0.5
        lat = ds.createVariable("lat", "f8", ("lat",))
        lat[:] = 86.25 - 7.5 * np.arange(NY)  # descending, cell centres
        lat.units = "degrees_north"
        lat.standard_name = "latitude"
        lon = ds.createVariable("lon", "f8", ("lon",))
        lon[:] = lon0 + 7.5 * np.arange(NX)
        lon.units = "degrees_east"
        lon.standard_name = "longitude"
        v = ds.createVariable("t", "f4", ("time", "lat", "lon"), fill_value=np.float32(1e20),
                              chunksizes=CHUNKS, zlib=True)
        v.units = "K"
        v.long_name = "temperature"
        v.standard_name = "air_temperature"
        data = (280 + 15 * rng.standard_normal((NT, NY, NX))).astype("f4")
        data[::7, 3, 5] = 1e20
        v[:] = data
        p = ds.createVariable("p", "i2", ("time", "lat", "lon"), chunksizes=CHUNKS, zlib=True)
        p.scale_factor = 0.01
        p.add_offset = 1000.0
        p.missing_value = np.int16(-32767)
        p.units = "hPa"
        p.set_auto_maskandscale(False)
        raw = rng.integers(-3000, 3000, (NT, NY, NX)).astype("i2")
        raw[::5, 3, 5] = -32767
        p[:] = raw


def write_curvilinear(path) -> None:
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("time", 3)
        ds.createDimension("j", 4)
        ds.createDimension("i", 5)
        t = ds.createVariable("time", "f8", ("time",))
        t.units = "days since 2000-01-01"
        t[:] = [0, 1, 2]
        la = ds.createVariable("lat", "f8", ("j", "i"))
        la.units = "degrees_north"
        la.standard_name = "latitude"
        la[:] = np.add.outer(np.arange(4) * 10.0, np.arange(5) * 0.5)
        lo = ds.createVariable("lon", "f8", ("j", "i"))
        lo.units = "degrees_east"
        lo.standard_name = "longitude"
        lo[:] = np.add.outer(np.arange(4) * 0.5, np.arange(5) * 10.0)
        v = ds.createVariable("sst", "f4", ("time", "j", "i"))
        v.coordinates = "lat lon"
        v[:] = np.arange(60, dtype="f4").reshape(3, 4, 5)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    assert len(MIROC) == 3 and len(CESM2) == 1, "sample data missing"
    root = tmp_path_factory.mktemp("edr")
    g360, g180, curv = root / "g360.nc", root / "g180.nc", root / "curv.nc"
    write_global(g360, 0.0)
    write_global(g180, -180.0)
    write_curvilinear(curv)
    sources = {"miroc": MIROC, "cesm2": CESM2, "g360": [str(g360)], "g180": [str(g180)], "curv": [str(curv)]}
    yield from serve_sources(root, "edr", sources, "--max-source-bytes", str(LIMIT))


_OPENED: dict = {}


def _source(files: list[str]) -> xr.Dataset:
    key = tuple(files)
    if key not in _OPENED:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _OPENED[key] = xr.open_mfdataset(files, **helpers.MFDATASET_KW, use_cftime=None).load()
    return _OPENED[key]


def _iso(times) -> list[str]:
    out = []
    for t in np.asarray(times).ravel():
        if isinstance(t, np.datetime64):
            out.append(np.datetime_as_string(t, unit="s"))
        else:
            out.append(t.isoformat())
    return out


def _get(url: str, ds: str, route: str, query: dict) -> requests.Response:
    return requests.get(f"{url}/datasets/{ds}/edr/{route}", params=query, timeout=120)


# (dataset, query, sel nearest, time slice or instant, z nearest)
POSITIONS = {
    "miroc_range": ("miroc", {"coords": "POINT(0.9 88.5)", "datetime": "2000-02/2001-03-15"},
                    {"lon": 0.9, "lat": 88.5}, ("2000-02", "2001-03-15"), None),
    "miroc_tie_z": ("miroc", {"coords": "POINT(0.703125 88.5)", "z": "85000", "datetime": "../2000-01-20"},
                    {"lon": 0.703125, "lat": 88.5}, (None, "2000-01-20"), 85000),
    "miroc_neg_lon_open_end": ("miroc", {"coords": "POINT(-0.5 87.0)", "datetime": "2002-12-01/..", "z": "99000"},
                               {"lon": -0.5, "lat": 87.0}, ("2002-12-01", None), 99000),
    "miroc_instant": ("miroc", {"coords": "POINT(1.3 88.1)", "datetime": "2001-07-04T10:00:00Z"},
                      {"lon": 1.3, "lat": 88.1}, "2001-07-04T10:00:00", None),
    "cesm2_all_time": ("cesm2", {"coords": "POINT(1.2 89.9)", "z": "100000"},
                       {"lon": 1.2, "lat": 89.9}, None, 100000),
    "g360_wrap": ("g360", {"coords": "POINT(-10.1 -0.2)", "parameter-name": "t,p", "datetime": "2000-02-30/2000-04"},
                  {"lon": 349.9, "lat": -0.2}, ("2000-02-30", "2000-04"), None),
    "g360_lat_tie_desc": ("g360", {"coords": "POINT(3.75 75)", "parameter-name": "t,p"},
                          {"lon": 3.75, "lat": 75.0}, None, None),
    "g360_masked": ("g360", {"coords": "POINT(37.5 63.75)", "parameter-name": "t,p", "datetime": "2000-01/2000-03"},
                    {"lon": 37.5, "lat": 63.75}, ("2000-01", "2000-03"), None),
    "g180_wrap": ("g180", {"coords": "POINT(350 10)", "parameter-name": "t"},
                  {"lon": -10.0, "lat": 10.0}, None, None),
}


def _reference(src: xr.Dataset, case, var: str) -> xr.DataArray:
    _, _, point, tsel, z = case
    da = src[var].sel(point, method="nearest")
    if isinstance(tsel, tuple):
        da = da.sel(time=slice(*tsel))
    elif isinstance(tsel, str):  # one instant: the nearest step, as pandas finds it
        i = da.indexes["time"].get_indexer([_time_label(da, tsel)], method="nearest")[0]
        da = da.isel(time=[i])
    if z is not None:
        da = da.sel(plev=z, method="nearest")
    return da


def _time_label(da, s):
    idx = da.indexes["time"]
    if isinstance(idx, pd.DatetimeIndex):
        return pd.Timestamp(s)
    import cftime
    return cftime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S", calendar=idx.calendar)


def _params(case) -> list[str]:
    q = case[1]
    return q["parameter-name"].split(",") if "parameter-name" in q else ["ta"]


def _same(got, ref: xr.DataArray, what: str):
    want = np.asarray(ref.values).ravel()
    have = np.array([np.nan if v is None else v for v in got], dtype="f8").astype(want.dtype)
    assert have.shape == want.shape, (what, have.shape, want.shape)
    # bit-identical, NaN where xarray has NaN
    assert np.array_equal(have.view(f"u{have.itemsize}")[~np.isnan(want)],
                          want.view(f"u{want.itemsize}")[~np.isnan(want)]), what
    assert np.array_equal(np.isnan(have), np.isnan(want)), what


@pytest.mark.parametrize("name", list(POSITIONS))
def test_position_covjson_equals_xarray_nearest(served, name):
    url, sources = served
    case = POSITIONS[name]
    ds, query = case[0], case[1]
    r = _get(url, ds, "position", query)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/prs.coverage+json")
    got = r.json()
    src = _source(sources[ds])
    cal = src.time.encoding.get("calendar", "standard")
    if cal != "360_day":  # Feb 30 is no datetime pydantic accepts
        Coverage.model_validate_json(r.text)
    assert got["type"] == "Coverage"
    for var in _params(case):
        ref = _reference(src, case, var)
        assert ref.size > 0
        _same(got["ranges"][var]["values"], ref, f"{name}/{var}")
        assert got["ranges"][var]["shape"] == [n for n in ref.shape if n > 1] or ref.size == 1
    ref = _reference(src, case, _params(case)[0])
    axes = got["domain"]["axes"]
    assert axes["x"]["values"] == [float(ref.lon)]
    assert axes["y"]["values"] == [float(ref.lat)]
    assert [t.rstrip("Z") for t in axes["t"]["values"]] == _iso(ref.time.values)
    if "plev" in ref.coords:
        assert axes["z"]["values"] == np.atleast_1d(ref.plev.values).tolist()
    if name == "g360_masked":
        assert None in got["ranges"]["t"]["values"] and None in got["ranges"]["p"]["values"]


@pytest.mark.parametrize("name", ["miroc_range", "g360_wrap", "cesm2_all_time"])
def test_position_csv_and_netcdf(served, name, tmp_path):
    url, sources = served
    case = POSITIONS[name]
    ds, query = case[0], case[1]
    src = _source(sources[ds])
    params = _params(case)
    r = _get(url, ds, "position", {**query, "f": "csv"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    df = pd.read_csv(io.StringIO(r.text), dtype={"time": str})
    for var in params:
        ref = _reference(src, case, var)
        want = np.asarray(ref.values).ravel()
        have = df[var].to_numpy(dtype="f8").astype(want.dtype)
        np.testing.assert_array_equal(have, want)  # NaN where NaN, else exact
        times = _iso(ref.time.values)
        if ref.ndim > 1:  # (time, plev) rows in C order
            times = [t for t in times for _ in range(ref.shape[1])]
        assert df["time"].tolist() == times
    assert set(df["lon"]) == {float(ref.lon)}
    r = _get(url, ds, "position", {**query, "f": "nc"})
    assert r.status_code == 200, r.text
    path = tmp_path / "p.nc"
    path.write_bytes(r.content)
    assert r.content[:4] == b"CDF\x02"
    for engine in ["netcdf4", "scipy"]:
        with xr.open_dataset(path, engine=engine, use_cftime=None) as got:
            for var in params:
                ref = _reference(src, case, var)
                assert got[var].dtype == ref.dtype
                np.testing.assert_array_equal(got[var].values, ref.values)
                assert got[var].attrs.get("units") == ref.attrs.get("units")
            assert _iso(got.time.values) == _iso(ref.time.values)
            assert float(got.lat) == float(ref.lat) and float(got.lon) == float(ref.lon)


def test_area_cells_whose_centres_are_inside(served, tmp_path):
    url, sources = served
    # a triangle crossing the 0 meridian of the 0..360 grid, given in -180..180
    poly = "POLYGON((-40 -30, 35 -20, -5 50, -40 -30))"
    q = {"coords": poly, "parameter-name": "t", "datetime": "2000-03-01/2000-03-03"}
    r = _get(url, "g360", "area", q)
    assert r.status_code == 200, r.text
    Coverage.model_validate_json(r.text)
    got = r.json()
    assert got["domain"]["domainType"] == "Grid"
    src = _source(sources["g360"])
    shp = shapely.Polygon([(-40, -30), (35, -20), (-5, 50)])
    lon180 = np.where(src.lon.values > 180, src.lon.values - 360, src.lon.values)
    inside = shapely.contains_xy(shp, *np.meshgrid(lon180, src.lat.values))  # (lat, lon)
    assert inside.sum() > 10
    da = src["t"].sel(time=slice("2000-03-01", "2000-03-03")).where(xr.DataArray(inside, dims=("lat", "lon")))
    xs, ys = got["domain"]["axes"]["x"]["values"], got["domain"]["axes"]["y"]["values"]
    ref = da.sel(lon=xs, lat=ys)
    # every inside cell is in the answer's grid, and nothing else has a value
    assert int(np.isfinite(ref.values).sum()) == int(np.isfinite(da.values).sum())
    rng = got["ranges"]["t"]
    assert rng["axisNames"] == ["t", "y", "x"] and rng["shape"] == list(ref.shape)
    _same(rng["values"], ref, "area")
    r = _get(url, "g360", "area", {**q, "f": "csv"})
    df = pd.read_csv(io.StringIO(r.text))
    assert len(df) == 3 * inside.sum()
    r = _get(url, "g360", "area", {**q, "f": "nc"})
    path = tmp_path / "a.nc"
    path.write_bytes(r.content)
    with xr.open_dataset(path) as nc:
        np.testing.assert_array_equal(nc["t"].values, ref.values)


def test_point_series_reads_only_its_chunks(served):
    """A 730-step series at one point of a file chunked (365, 4, 4) reads the two chunks
    holding that point: the source bytes the server reports equal their stored sizes."""
    url, sources = served
    r = _get(url, "g360", "position", {"coords": "POINT(100 -20)", "parameter-name": "t"})
    assert r.status_code == 200, r.text
    src = _source(sources["g360"])
    j = int(np.abs(src.lat.values - (-20)).argmin())
    i = int(np.abs(src.lon.values - 100).argmin())
    with h5py.File(sources["g360"][0], "r") as f:
        dsid = f["t"].id
        want = sum(dsid.get_chunk_info_by_coord((t0, j // 4 * 4, i // 4 * 4)).size for t0 in (0, 365))
        total = sum(dsid.get_chunk_info(k).size for k in range(dsid.get_num_chunks()))
    assert int(r.headers["x-cloudify-source-bytes"]) == want
    assert want * 50 < total


BAD = [
    ("miroc", "position", {"coords": "POINT(0.5)"}, "coords"),
    ("miroc", "position", {"coords": "POINT(a b)"}, "not a number"),
    ("miroc", "position", {"coords": "POINT(1 88"}, "parentheses"),
    ("miroc", "position", {"coords": "LINESTRING(0 1, 2 3)"}, "LINESTRING"),
    ("miroc", "position", {"coords": "__import__('os').system('true')"}, "coords"),
    ("miroc", "position", {}, "coords: required"),
    ("miroc", "position", {"coords": "POLYGON((0 0, 1 0, 1 1, 0 0))"}, "/edr/area"),
    ("miroc", "area", {"coords": "POINT(1 88)"}, "/edr/position"),
    ("miroc", "area", {"coords": "POLYGON((0 0, 1 0, 1 1))"}, "ring"),
    ("miroc", "area", {"coords": "POLYGON((10 10, 11 10, 11 11, 10 10))"}, "no cell centre"),
    ("miroc", "position", {"coords": "POINT(1 88)", "parameter-name": "tas"}, "allowed: ta"),
    ("miroc", "position", {"coords": "POINT(1 10)"}, "latitude 10 is outside"),
    ("miroc", "position", {"coords": "POINT(40 88)"}, "longitude 40 is outside"),
    ("miroc", "position", {"coords": "POINT(1 88)", "datetime": ""}, "datetime: empty"),
    ("miroc", "position", {"coords": "POINT(1 88)", "datetime": "2000-13"}, "not a date"),
    ("miroc", "position", {"coords": "POINT(1 88)", "datetime": "1990-01/1990-02"}, "selects nothing"),
    ("miroc", "position", {"coords": "POINT(1 88)", "datetime": "1990-01-01"}, "outside"),
    ("miroc", "position", {"coords": "POINT(1 88)", "z": "abc"}, "z:"),
    ("miroc", "position", {"coords": "POINT(1 88)", "z": "5"}, "outside"),
    ("miroc", "position", {"coords": "POINT(1 88)", "f": "xml"}, "allowed: cf_covjson, csv, nc"),
    ("miroc", "position", {"coords": "POINT(1 88)", "method": "linear"}, "allowed: nearest"),
    ("miroc", "position", {"coords": "POINT(1 88)", "crs": "EPSG:3857"}, "crs"),
    ("miroc", "position", {"coords": "POINT(1 88)", "bogus": "1"}, "allowed: coords"),
    ("curv", "position", {"coords": "POINT(1 1)", "parameter-name": "sst"}, "curvilinear"),
]


@pytest.mark.parametrize("ds,route,query,needle", BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_is_400_naming_it(served, ds, route, query, needle):
    url, _ = served
    r = _get(url, ds, route, query)
    assert r.status_code == 400, (r.status_code, r.text)
    assert needle in r.json()["error"], r.json()["error"]


def test_too_many_source_bytes_is_413(served):
    url, _ = served
    r = _get(url, "g360", "area", {"coords": "POLYGON((-179 -89, 179 -89, 179 89, -179 89, -179 -89))"})
    assert r.status_code == 413, r.text
    assert "--max-source-bytes" in r.json()["error"]
    r = _get(url, "nope", "position", {"coords": "POINT(1 1)"})
    assert r.status_code == 404


def test_html_summary_links_the_position_query(served):
    """The dataset's HTML page has a form for the position query; submitted as a browser
    would (its action resolved against the page, its fields' values), it answers."""
    import html.parser
    from urllib.parse import urljoin

    url, _ = served
    page = f"{url}/datasets/miroc/"
    r = requests.get(page, headers={"Accept": "text/html"}, timeout=30)
    assert r.status_code == 200

    class Form(html.parser.HTMLParser):
        action, fields = None, {}

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "form" and "edr/" in a.get("action", ""):
                Form.action = a["action"]
            if tag == "input":
                Form.fields[a["name"]] = a.get("value", "")

    Form().feed(r.text)
    assert Form.action and "coords" in Form.fields, r.text
    query = {**Form.fields, "coords": "POINT(1 88)", "f": "csv"}
    got = requests.get(urljoin(page, Form.action), params=query, timeout=60)
    assert got.status_code == 200, got.text
    assert len(got.text.splitlines()) == 1 + 1096 * 2  # header, then (time, plev) rows
    r = requests.get(f"{url}/openapi.json", timeout=30).json()
    for p in ("/datasets/{id}/edr/position", "/datasets/{id}/edr/area"):
        names = {q["name"] for q in r["paths"][p]["get"]["parameters"]}
        assert {"coords", "parameter-name", "datetime", "z", "f"} <= names
