"""PNG plots and APNG animations (issue #16): `/datasets/{id}/plot/{var}/{kind}/{cmap}/{selection}`.

Every map is decoded with Pillow and each cell's pixel compared with REAL matplotlib:
`matplotlib.colormaps[cmap](Normalize(vmin, vmax)(values), bytes=True)` applied to the values
xarray selects from the same source files (exact table lookup; NaN/fill cells transparent).
Selections follow the seed's grammar: `time` by index with Python slice semantics (`-12_0` =
the last twelve), other coordinates by value (inclusive, `.sel(slice(lo, hi))`), longitudes
across the seam read as two pieces west first (`xr.concat` of the two `.sel`s). Sources: CMIP6
monthly `ta` (CanESM5, 1980 steps, 2x2 cells near the pole) and a generated global float32
field on a 0..360 longitude axis with a fill value and NaN, plus an int16 packed variable.
Bad input is asserted (status and the allowed names in the message)."""

from __future__ import annotations

import io
import warnings

import matplotlib
import netCDF4
import numpy as np
import pytest
import requests
import xarray as xr
from matplotlib.colors import Normalize
from PIL import Image

import helpers
from conftest import serve_sources

CANESM = sorted(str(p) for p in helpers.cmip6_root().rglob("ta_Amon_CanESM5_historical_r1i1p1f1_gn_185001-201412.nc"))


def write_global(path) -> None:
    rng = np.random.default_rng(16)
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("time", 30)
        ds.createDimension("lat", 18)
        ds.createDimension("lon", 36)
        t = ds.createVariable("time", "f8", ("time",))
        t.units = "days since 2000-01-01"
        t.calendar = "noleap"
        t[:] = np.arange(30) * 30.0
        lat = ds.createVariable("lat", "f8", ("lat",))
        lat[:] = np.arange(-85.0, 90.0, 10.0)  # ascending: drawn north up, so flipped
        lat.units = "degrees_north"
        lon = ds.createVariable("lon", "f8", ("lon",))
        lon[:] = np.arange(5.0, 360.0, 10.0)
        lon.units = "degrees_east"
        v = ds.createVariable("tas", "f4", ("time", "lat", "lon"), fill_value=np.float32(1e20), chunksizes=(1, 18, 36))
        v.units = "K"
        v.long_name = "Near-Surface Air Temperature"
        data = (270 + 20 * rng.standard_normal((30, 18, 36))).astype("f4")
        data[:, 0, 0] = 1e20
        data[3, 5, 5] = np.nan
        data[:, 17, 35] = 400.0  # outlier: robust percentiles ignore it
        v[:] = data
        p = ds.createVariable("p", "i2", ("time", "lat", "lon"))
        p.scale_factor = 0.5
        p.add_offset = 1000.0
        p.valid_min = 990.0
        p.valid_max = 1010.0
        p.missing_value = np.int16(-32767)
        p.set_auto_maskandscale(False)
        raw = rng.integers(-40, 40, (30, 18, 36)).astype("i2")
        raw[:, 2, 2] = -32767
        p[:] = raw


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    assert len(CANESM) == 1, "sample data missing"
    root = tmp_path_factory.mktemp("plots")
    glob_nc = root / "global.nc"
    write_global(glob_nc)
    sources = {"amon": CANESM, "global": [str(glob_nc)]}
    yield from serve_sources(root, "plots", sources)


def _open(files) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xr.open_mfdataset(files, **helpers.MFDATASET_KW).load()


def _get(url):
    r = requests.get(url, timeout=60)
    assert r.status_code == 200, (url, r.status_code, r.text[:500])
    assert r.headers["content-type"] == "image/png"
    return r


def expected_rgba(values: np.ndarray, cmap: str, vmin: float, vmax: float) -> np.ndarray:
    """matplotlib's colours for the values; NaN transparent (0, 0, 0, 0)."""
    rgba = matplotlib.colormaps[cmap](Normalize(vmin, vmax)(values), bytes=True)
    rgba[np.isnan(values)] = 0
    return rgba


def cells(img: Image.Image, layout: str, ny: int, nx: int) -> np.ndarray:
    """The colour at the centre of each cell of the field."""
    x0, y0, s = (int(v) for v in layout.split(","))
    a = np.asarray(img.convert("RGBA"))
    ys = y0 + np.arange(ny) * s + s // 2
    xs = x0 + np.arange(nx) * s + s // 2
    return a[np.ix_(ys, xs)]


def check_map(r, values: np.ndarray, cmap: str, vrange=None) -> None:
    """Every cell of the image has matplotlib's colour of the value xarray gives."""
    got_range = tuple(float(x) for x in r.headers["x-colorscale-range"].split(","))
    if vrange is not None:
        assert got_range == vrange
    img = Image.open(io.BytesIO(r.content))
    ny, nx = values.shape
    got = cells(img, r.headers["x-map-layout"], ny, nx)
    want = expected_rgba(values, cmap, *got_range)
    bad = np.argwhere((got != want).any(axis=-1))
    assert len(bad) == 0, f"{len(bad)} of {ny * nx} cells differ, first {bad[:3].tolist()}: {got[tuple(bad[0])]} vs {want[tuple(bad[0])]}"


def test_map_real_cmip6_exact_colours(served):
    url, src = served
    ds = _open(src["amon"])
    # time index 5, the first pressure level; the CanESM5 latitudes ascend -> north up
    r = _get(f"{url}/datasets/amon/plot/ta/map/viridis/time/5_6/plev/100000_100000")
    ref = ds.ta.isel(time=5).sel(plev=100000.0).values[::-1]
    check_map(r, ref, "viridis")
    lo, hi = (float(x) for x in r.headers["x-colorscale-range"].split(","))
    np.testing.assert_allclose([lo, hi], np.nanpercentile(ref, [2, 98]), rtol=1e-6)
    assert r.headers["x-frames"] == "1"


@pytest.mark.parametrize("cmap", ["viridis", "RdBu_r", "coolwarm", "turbo", "Blues", "jet", "magma"])
def test_map_colormaps_with_given_range(served, cmap):
    url, src = served
    ds = _open(src["global"])
    r = _get(f"{url}/datasets/global/plot/tas/map/{cmap}/time/2_3?colorscalerange=250,290")
    ref = ds.tas.isel(time=2).values[::-1]
    check_map(r, ref, cmap, (250.0, 290.0))


def test_map_fill_and_nan_transparent_and_robust_range(served):
    url, src = served
    ds = _open(src["global"])
    r = _get(f"{url}/datasets/global/plot/tas/map/plasma/time/3_4")
    ref = ds.tas.isel(time=3).values[::-1]
    assert np.isnan(ref).sum() == 2  # the fill cell and the NaN
    check_map(r, ref, "plasma")
    lo, hi = (float(x) for x in r.headers["x-colorscale-range"].split(","))
    np.testing.assert_allclose([lo, hi], np.nanpercentile(ref.astype("f8"), [2, 98]), rtol=1e-12)
    assert hi < 400  # the outlier does not stretch the range


def test_map_packed_valid_range(served):
    url, src = served
    ds = _open(src["global"])
    r = _get(f"{url}/datasets/global/plot/p/map/cividis/time/-1_0")
    ref = ds.p.isel(time=-1).values[::-1]
    check_map(r, ref, "cividis", (990.0, 1010.0))


def test_selection_value_ranges_and_negative_index(served):
    url, src = served
    ds = _open(src["global"])
    r = _get(f"{url}/datasets/global/plot/tas/map/inferno/time/-12_-11/lat/-30_30/lon/100_200?colorscalerange=260,280")
    ref = ds.tas.isel(time=-12).sel(lat=slice(-30, 30), lon=slice(100, 200)).values[::-1]
    assert ref.shape == (6, 10)
    check_map(r, ref, "inferno", (260.0, 280.0))


@pytest.mark.parametrize("lo,hi", [(-30, 30), (-175, -100), (350, 370)])
def test_wrapped_longitudes(served, lo, hi):
    url, src = served
    ds = _open(src["global"])
    r = _get(f"{url}/datasets/global/plot/tas/map/viridis/time/0_1/lon/{lo}_{hi}?colorscalerange=255,285")
    da = ds.tas.isel(time=0)
    a, b = lo % 360, hi % 360
    if a <= b:
        ref = da.sel(lon=slice(a, b))
    else:
        ref = xr.concat([da.sel(lon=slice(a, 360)), da.sel(lon=slice(0, b))], dim="lon")
    check_map(r, ref.values[::-1], "viridis", (255.0, 285.0))


def test_animation_frames_in_order(served):
    url, src = served
    ds = _open(src["global"])
    r = _get(f"{url}/datasets/global/plot/tas/animation/viridis/time/-5_0?colorscalerange=250,290")
    assert r.headers["x-frames"] == "5"
    img = Image.open(io.BytesIO(r.content))
    assert getattr(img, "is_animated", False) and img.n_frames == 5
    ref = ds.tas.isel(time=slice(-5, None)).values
    for k in range(5):
        img.seek(k)
        got = cells(img, r.headers["x-map-layout"], 18, 36)
        want = expected_rgba(ref[k][::-1], "viridis", 250.0, 290.0)
        assert (got == want).all(), f"frame {k}"


def test_animation_real_cmip6_last_year(served):
    url, src = served
    r = _get(f"{url}/datasets/amon/plot/ta/animation/RdBu_r/time/-12_0/plev/92500_92500")
    img = Image.open(io.BytesIO(r.content))
    assert img.n_frames == 12


def test_line_plot(served):
    url, src = served
    ds = _open(src["global"])
    r = _get(f"{url}/datasets/global/plot/tas/line/viridis/lat/5_5/lon/175_175")
    img = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
    blue = (img == [31, 119, 180]).all(axis=-1)
    # one line point per time step at least, spanning the plot's width
    cols = np.nonzero(blue.any(axis=0))[0]
    assert blue.sum() >= 30 and cols.max() - cols.min() > 400
    # the highest value is at the top row of the line, the lowest at the bottom
    series = ds.tas.sel(lat=5, lon=175).values
    rows = np.nonzero(blue.any(axis=1))[0]
    top_col = np.nonzero(blue[rows.min()])[0]
    x_of = lambda i: 80 + round(i / 29 * (640 - 100 - 1))
    assert abs(int(np.median(top_col)) - x_of(int(np.argmax(series)))) <= 2


@pytest.mark.parametrize("path,status,needle", [
    ("tas/map/nosuchmap/time/0_1", 400, "viridis"),
    ("tas/surface/viridis/time/0_1", 400, "map, line, animation"),
    ("nosuch/map/viridis/time/0_1", 404, "tas"),
    ("tas/map/viridis/depth/0_1", 400, "time, lat, lon"),
    ("tas/map/viridis/time/5_5", 400, "selects nothing"),
    ("tas/map/viridis/time/a_b", 400, "index range"),
    ("tas/map/viridis/time/0_1/lat", 400, "pairs"),
    ("tas/map/viridis/time/0_1/lat/95_99", 400, "selects nothing"),
    ("tas/line/viridis", 400, "select single steps"),
    ("tas/line/viridis/time/0_1", 400, "dimension"),
    ("tas/map/viridis/time/0_1?colorscalerange=3,1", 400, "colorscalerange"),
    ("tas/map/viridis/time/0_1?vmin=1", 400, "colorscalerange"),
])
def test_bad_input(served, path, status, needle):
    url, _ = served
    r = requests.get(f"{url}/datasets/global/plot/{path}", timeout=30)
    assert r.status_code == status, (path, r.status_code, r.text)
    assert needle in r.json()["error"], r.text


def test_animation_too_large_413(served, tmp_path):
    url, _ = served
    # 1980 frames of the CanESM5 run: beyond the 500-frame cap
    r = requests.get(f"{url}/datasets/amon/plot/ta/animation/viridis/plev/92500_92500", timeout=30)
    assert r.status_code == 413, r.text
    assert "500" in r.json()["error"]


def test_map_defaults_to_first_step_of_leading_dims(served):
    url, src = served
    ds = _open(src["amon"])
    # no selection: time and plev start at their first step, as hvplot's widgets do
    r = _get(f"{url}/datasets/amon/plot/ta/map/viridis?colorscalerange=200,260")
    check_map(r, ds.ta.isel(time=0, plev=0).values[::-1], "viridis", (200.0, 260.0))
    # animation over the selected dimension, the other leading one at its first step
    r = _get(f"{url}/datasets/amon/plot/ta/animation/viridis/time/0_3?colorscalerange=200,260")
    img = Image.open(io.BytesIO(r.content))
    assert img.n_frames == 3
    img.seek(2)
    got = cells(img, r.headers["x-map-layout"], 2, 2)
    assert (got == expected_rgba(ds.ta.isel(time=2, plev=0).values[::-1], "viridis", 200, 260)).all()


def test_linked_from_summary_and_stac(served):
    url, _ = served
    html = requests.get(f"{url}/datasets/global/", headers={"Accept": "text/html"}, timeout=30).text
    assert 'href="plot/tas/map/viridis"' in html and 'href="plot/p/map/viridis"' in html
    item = requests.get(f"{url}/datasets/global/stac", timeout=30).json()
    thumb = item["assets"]["thumbnail"]
    assert thumb["type"] == "image/png" and "thumbnail" in thumb["roles"]
    r = _get(thumb["href"])
    Image.open(io.BytesIO(r.content)).verify()
