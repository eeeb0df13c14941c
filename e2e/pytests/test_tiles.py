"""Map tiles (issue #16 part 2): `/datasets/{id}/tiles/WebMercatorQuad/{z}/{y}/{x}.png`,
its TileJSON and the map page `/datasets/{id}/map`.

Every tile is decoded with Pillow and EVERY pixel compared with an independent reprojection:
pyproj (EPSG:3857 -> EPSG:4326) takes each pixel centre to lon/lat, numpy picks the nearest
cell of the xarray-read grid (argmin of the distance, round the circle on a global longitude
axis; outside half a step beyond the ends: transparent) and matplotlib's colormap gives the
colour (exact table lookup, `test_plots.expected_rgba`). Sources: a generated global float32
field on a 0..360 axis with ascending latitudes (test_plots' `write_global`), a generated
regional float64 field on a -180..180 axis with DESCENDING latitudes, and the CMIP6 CanESM5
`ta` (4-D: the tile selects `time` by date and `plev` by `method::value`)."""

from __future__ import annotations

import io

import netCDF4
import numpy as np
import pyproj
import pytest
import requests
from PIL import Image

from conftest import serve_sources
from test_edr import write_curvilinear
from test_plots import CANESM, _open, expected_rgba, write_global

ORIGIN = np.pi * 6378137.0
JS_URL = "http://example.invalid/lib/leaflet-test.js"
TO_LONLAT = pyproj.Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True)


def write_regional(path) -> None:
    rng = np.random.default_rng(162)
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("time", 4)
        ds.createDimension("lat", 15)
        ds.createDimension("lon", 25)
        t = ds.createVariable("time", "f8", ("time",))
        t.units = "days since 2010-01-01"
        t[:] = [0.0, 31.0, 59.0, 90.0]
        lat = ds.createVariable("lat", "f8", ("lat",))
        lat[:] = np.arange(60.0, -15.0, -5.0)  # descending
        lat.units = "degrees_north"
        lon = ds.createVariable("lon", "f8", ("lon",))
        lon[:] = np.arange(-30.0, 32.5, 2.5)
        lon.units = "degrees_east"
        v = ds.createVariable("pr", "f8", ("time", "lat", "lon"), chunksizes=(1, 15, 25))
        v.units = "mm"
        data = rng.gamma(2.0, 3.0, (4, 15, 25))
        data[1, 3, 4] = np.nan
        v[:] = data


def write_seam(path, lon0: float) -> None:
    """A global grid whose first cell sits ON the seam (lon0 = 0 or -180): the nearest cell of
    a pixel just west of it is the first cell, across the seam, not the last one."""
    rng = np.random.default_rng(int(lon0) + 500)
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("lat", 72)
        ds.createDimension("lon", 144)
        lat = ds.createVariable("lat", "f8", ("lat",))
        lat[:] = np.arange(-88.75, 90.0, 2.5)
        lat.units = "degrees_north"
        lon = ds.createVariable("lon", "f8", ("lon",))
        lon[:] = lon0 + np.arange(144) * 2.5
        lon.units = "degrees_east"
        v = ds.createVariable("ts", "f4", ("lat", "lon"))
        v[:] = (280 + 15 * rng.standard_normal((72, 144))).astype("f4")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    assert len(CANESM) == 1, "sample data missing"
    root = tmp_path_factory.mktemp("tiles")
    write_global(root / "global.nc")
    write_regional(root / "regional.nc")
    write_seam(root / "seam360.nc", 0.0)
    write_seam(root / "seam180.nc", -180.0)
    write_curvilinear(root / "curv.nc")
    sources = {"amon": CANESM, "global": [str(root / "global.nc")], "regional": [str(root / "regional.nc")],
               "seam360": [str(root / "seam360.nc")], "seam180": [str(root / "seam180.nc")], "curv": [str(root / "curv.nc")]}
    yield from serve_sources(root, "tiles", sources, "--map-js-url", JS_URL)


def nearest(axis: np.ndarray, x: np.ndarray, lon: bool) -> np.ndarray:
    """Index of the nearest cell for each x (-1 outside the grid's extent)."""
    n = len(axis)
    glob = False
    if lon:
        base = 0.0 if axis.max() > 180 else -180.0
        base = min(base, axis.min())
        x = base + np.mod(x - base, 360.0)
        glob = n > 1 and abs(abs(axis[-1] - axis[0]) / (n - 1) * n - 360.0) < 1e-6
    d = np.abs(axis[None, :] - x[:, None])
    if glob:
        d = np.minimum(d, 360.0 - d)
    idx = np.argmin(d, axis=1)
    if not glob:
        h0 = abs(axis[1] - axis[0]) / 2 if n > 1 else 0.5
        h1 = abs(axis[-1] - axis[-2]) / 2 if n > 1 else 0.5
        lo_h, hi_h = (h0, h1) if axis[0] <= axis[-1] else (h1, h0)
        out = (x < axis.min() - lo_h) | (x > axis.max() + hi_h)
        idx = np.where(out, -1, idx)
    return idx


def expected_tile(field, lats, lons, z, x, y, cmap, vmin, vmax, w=256, h=256) -> np.ndarray:
    size = 2 * ORIGIN / 2**z
    mx = -ORIGIN + (x + (np.arange(w) + 0.5) / w) * size
    my = ORIGIN - (y + (np.arange(h) + 0.5) / h) * size
    lon, _ = TO_LONLAT.transform(mx, np.zeros_like(mx))
    _, lat = TO_LONLAT.transform(np.zeros_like(my), my)
    ci = nearest(np.asarray(lons, "f8"), np.asarray(lon), True)
    ri = nearest(np.asarray(lats, "f8"), np.asarray(lat), False)
    vals = field[np.ix_(np.clip(ri, 0, None), np.clip(ci, 0, None))]
    rgba = expected_rgba(vals, cmap, vmin, vmax)
    rgba[ri < 0, :] = 0
    rgba[:, ci < 0] = 0
    return rgba


def get_tile(url, ds, z, x, y, query):
    r = requests.get(f"{url}/datasets/{ds}/tiles/WebMercatorQuad/{z}/{y}/{x}.png?{query}", timeout=60)
    assert r.status_code == 200, (r.status_code, r.text[:500])
    assert r.headers["content-type"] == "image/png"
    img = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA"))
    rng = tuple(float(v) for v in r.headers["x-colorscale-range"].split(","))
    return img, rng


def check(img, want):
    bad = np.argwhere((img != want).any(axis=-1))
    assert len(bad) == 0, f"{len(bad)} of {img.shape[0] * img.shape[1]} pixels differ, first {bad[:3].tolist()}: {img[tuple(bad[0])]} vs {want[tuple(bad[0])]}"


@pytest.mark.parametrize("z,x,y", [(0, 0, 0), (1, 1, 0), (1, 0, 1), (2, 1, 1), (3, 4, 2), (4, 0, 5)])
def test_global_tiles_match_reprojection(served, z, x, y):
    url, src = served
    ds = _open(src["global"])
    img, rng = get_tile(url, "global", z, x, y, "variables=tas&style=raster/RdBu_r&colorscalerange=250,290&time=3")
    assert rng == (250.0, 290.0)
    want = expected_tile(ds.tas.isel(time=3).values, ds.lat.values, ds.lon.values, z, x, y, "RdBu_r", 250, 290)
    check(img, want)
    assert (img[..., 3] == 255).sum() > 0


@pytest.mark.parametrize("z,x,y", [(0, 0, 0), (2, 1, 1), (3, 3, 2), (4, 7, 4)])
def test_regional_descending_lat_tiles(served, z, x, y):
    url, src = served
    ds = _open(src["regional"])
    img, rng = get_tile(url, "regional", z, x, y, "variables=pr&style=raster/viridis&colorscalerange=0,20&time=2010-02-01")
    want = expected_tile(ds.pr.sel(time="2010-02-01").values, ds.lat.values, ds.lon.values, z, x, y, "viridis", 0, 20)
    check(img, want)
    # some pixels drawn, and at zoom 0 most of the world is transparent
    assert (img[..., 3] == 255).any()
    if z == 0:
        assert (img[..., 3] == 0).mean() > 0.9


@pytest.mark.parametrize("name,z,x,y", [("seam360", 0, 0, 0), ("seam360", 2, 1, 1), ("seam360", 3, 3, 3),
                                        ("seam180", 0, 0, 0), ("seam180", 2, 0, 2), ("seam180", 3, 7, 4)])
def test_global_axis_wraps_at_its_seam(served, name, z, x, y):
    url, src = served
    ds = _open(src[name])
    img, _ = get_tile(url, name, z, x, y, "variables=ts&style=raster/turbo&colorscalerange=260,300")
    check(img, expected_tile(ds.ts.values, ds.lat.values, ds.lon.values, z, x, y, "turbo", 260, 300))
    assert (img[..., 3] == 255).all()  # global: no gap at the seam


def test_real_cmip6_time_by_date_and_plev_method(served):
    url, src = served
    ds = _open(src["amon"])
    q = "variables=ta&style=raster/viridis&time=1990-06-20&plev=nearest::85000"
    img, (lo, hi) = get_tile(url, "amon", 0, 0, 0, q)
    when = type(ds.time.values[0])(1990, 6, 20)  # the file's cftime calendar
    sel = ds.ta.sel(time=when, method="nearest").sel(plev=85000, method="nearest")
    field = sel.values
    # no colorscalerange and no valid_min/valid_max: the plot route's robust rule over the field
    np.testing.assert_allclose([lo, hi], np.nanpercentile(field, [2, 98]), rtol=1e-6)
    check(img, expected_tile(field, ds.lat.values, ds.lon.values, 0, 0, 0, "viridis", lo, hi))


def test_outside_extent_transparent_and_width(served):
    url, _ = served
    # zoom 3, x=7: 135E..180E; the regional grid is 31W..31E -> all transparent
    img, _ = get_tile(url, "regional", 3, 7, 3, "variables=pr&colorscalerange=0,20")
    assert (img[..., 3] == 0).all()
    img, _ = get_tile(url, "global", 1, 0, 0, "variables=tas&width=64&height=32&colorscalerange=250,290")
    assert img.shape == (32, 64, 4)


def test_selectors_equivalent_and_valid_range(served):
    url, _ = served
    base = f"{url}/datasets/global/tiles/WebMercatorQuad/1/0/0.png?variables=tas&colorscalerange=250,290"
    by_index = requests.get(base + "&time=4", timeout=60).content
    by_date = requests.get(base + "&time=2000-05-03T06:00", timeout=60).content  # noleap day 122.25 -> step 4 (day 120)
    by_pad = requests.get(base + "&time=pad::2000-05-10", timeout=60).content
    by_exact = requests.get(base + "&time=exact::2000-05-01", timeout=60)
    assert by_index == by_date == by_pad
    assert by_exact.status_code == 200 and by_exact.content == by_index
    assert requests.get(base + "&time=5", timeout=60).content != by_index
    # packed p: valid_min/valid_max is the default range
    r = requests.get(f"{url}/datasets/global/tiles/WebMercatorQuad/0/0/0.png?variables=p", timeout=60)
    assert r.status_code == 200 and r.headers["x-colorscale-range"] == "990.0,1010.0"


@pytest.mark.parametrize("path,status,needle", [
    ("25/0/0.png?variables=tas", 404, "0..=24"),
    ("1/0/2.png?variables=tas", 404, "0..2"),
    ("1/2/0.png?variables=tas", 404, "0..2"),
    ("x/0/0.png?variables=tas", 404, "zoom"),
    ("0/0/0.jpg?variables=tas", 404, ".png"),
    ("0/0/0.png", 400, "variables"),
    ("0/0/0.png?variables=nosuch", 404, "tas"),
    ("0/0/0.png?variables=tas,p", 400, "one variable"),
    ("0/0/0.png?variables=time", 400, "lat/lon grid"),
    ("0/0/0.png?variables=tas&style=raster/nosuchmap", 400, "viridis"),
    ("0/0/0.png?variables=tas&style=contour/viridis", 400, "raster/"),
    ("0/0/0.png?variables=tas&depth=3", 400, "time"),
    ("0/0/0.png?variables=tas&time=sideways::3", 400, "nearest"),
    ("0/0/0.png?variables=tas&time=99", 400, "0..30"),
    ("0/0/0.png?variables=tas&time=exact::2000-01-02", 400, "exact"),
    ("0/0/0.png?variables=tas&time=not-a-date", 400, "date"),
    ("0/0/0.png?variables=tas&colorscalerange=3,1", 400, "colorscalerange"),
    ("0/0/0.png?variables=tas&width=0", 400, "width"),
    ("0/0/0.png?variables=tas&width=5000", 413, "2048"),
    # a malformed parameter is the mistake to fix first, whatever its place in the query
    ("0/0/0.png?variables=tas&width=5000&style=viridis", 400, "raster/"),
])
def test_bad_input(served, path, status, needle):
    url, _ = served
    r = requests.get(f"{url}/datasets/global/tiles/WebMercatorQuad/{path}", timeout=60)
    assert r.status_code == status, (path, r.status_code, r.text)
    assert needle in r.json()["error"], r.text


def test_tilejson(served):
    url, _ = served
    r = requests.get(f"{url}/datasets/regional/tiles/WebMercatorQuad/tilejson.json?variables=pr&style=raster/magma&time=1", timeout=60)
    assert r.status_code == 200, r.text
    tj = r.json()
    assert tj["tilejson"] == "3.0.0" and tj["minzoom"] == 0 and tj["maxzoom"] == 24
    np.testing.assert_allclose(tj["bounds"], [-31.25, -12.5, 31.25, 62.5])
    (t,) = tj["tiles"]
    assert t.startswith(f"{url}/datasets/regional/tiles/WebMercatorQuad/{{z}}/{{y}}/{{x}}.png?")
    assert "style=raster%2Fmagma" in t and "time=nearest%3A%3A1" in t and "colorscalerange=" in t
    # the template's range is the robust range of that step; a tile from it is served
    ds = _open(served[1]["regional"])
    lo, hi = tj["colorscalerange"]
    np.testing.assert_allclose([lo, hi], np.nanpercentile(ds.pr.isel(time=1).values, [2, 98]), rtol=1e-12)
    tile = requests.get(t.replace("{z}", "2").replace("{y}", "1").replace("{x}", "1"), timeout=60)
    assert tile.status_code == 200 and tile.headers["content-type"] == "image/png"
    g = requests.get(f"{url}/datasets/global/tiles/WebMercatorQuad/tilejson.json?variables=tas", timeout=60).json()
    assert g["bounds"][0] == -180 and g["bounds"][2] == 180


def test_map_page_and_summary_link(served):
    url, _ = served
    r = requests.get(f"{url}/datasets/global/map", timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert f'<script src="{JS_URL}"></script>' in html
    assert JS_URL.replace(".js", ".css") in html
    assert 'type="range"' in html and 'max="29"' in html  # the time slider over 30 steps
    assert "tilejson.json?variables=tas" in html
    assert "unpkg" not in html
    r = requests.get(f"{url}/datasets/global/map?variables=nosuch", timeout=60)
    assert r.status_code == 404 and "tas" in r.json()["error"]
    summary = requests.get(f"{url}/datasets/global/", headers={"Accept": "text/html"}, timeout=60).text
    assert 'href="map?variables=tas"' in summary


@pytest.mark.parametrize("path", ["tiles/WebMercatorQuad/0/0/0.png?variables=sst",
                                  "tiles/WebMercatorQuad/tilejson.json?variables=sst", "map?variables=sst"])
def test_curvilinear_grid_is_served(served, path):
    """A variable on 2-D lat/lon coordinates (curvilinear) is tiled by the nearest-cell rule
    (pixel-exact comparisons: test_curvilinear.py)."""
    url, _ = served
    r = requests.get(f"{url}/datasets/curv/{path}", timeout=60)
    assert r.status_code == 200, (r.status_code, r.text[:300])
