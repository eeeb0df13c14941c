"""Curvilinear grids (issue #16): plots drawn as maps on a lon/lat canvas and Web-Mercator
tiles of fields whose cells are placed by 2-D latitude/longitude (the `coordinates`
attribute), as CMIP6 ocean/sea-ice grids are.

The rule (README "Plots"): a pixel centre shows the cell nearest on the sphere (chord
distance between unit vectors), drawn only within the cell's reach (the largest chord
distance to its row/column neighbours); masked values are transparent. Every pixel of plots
and tiles is compared with an independent computation here: scipy's cKDTree over the unit
vectors of the xarray-read cell centres, the reach in numpy, matplotlib's colour table. Only
pixels whose two nearest cells are equidistant within 1e-9 (or whose distance equals the
reach within 1e-9) may differ. The esmvaltool sample data has no curvilinear variable (all
its CMIP6 files are atmosphere `ta` on 1-D lat/lon), so the grids are generated: a global
tripolar-like ocean grid with longitudes wrapping 0..360 inside rows and masked land, and a
regional rotated-pole grid across the prime meridian (longitudes stored 0..360)."""

from __future__ import annotations

import io

import netCDF4
import numpy as np
import pyproj
import pytest
import requests
from PIL import Image
from scipy.spatial import cKDTree

from conftest import serve_sources
from test_plots import _open, expected_rgba

ORIGIN = np.pi * 6378137.0
TO_LONLAT = pyproj.Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True)
EPS = 1e-9


def write_ocean(path) -> None:
    """A global tripolar-like grid: 48 rows x 72 columns, longitudes 0..360 with a per-row
    shift (so each row wraps from ~359 to ~1 somewhere), wavy latitudes, land masked."""
    rng = np.random.default_rng(1601)
    ny, nx = 48, 72
    j, i = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    lon = np.mod(i * 5.0 + 2.0 * j + 7.0 * np.sin(j / 6.0), 360.0)
    lat = -78.0 + j * 3.4 + 1.5 * np.sin(2 * np.pi * i / nx)
    # a hole of cells without coordinates (as some models leave land): never drawn
    hole = (slice(30, 34), slice(10, 14))
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("time", 3)
        ds.createDimension("j", ny)
        ds.createDimension("i", nx)
        t = ds.createVariable("time", "f8", ("time",))
        t.units = "days since 2000-01-01"
        t[:] = [15.5, 45.0, 74.5]
        la = ds.createVariable("latitude", "f8", ("j", "i"))
        la.units = "degrees_north"
        la.standard_name = "latitude"
        lat_h, lon_h = lat.copy(), lon.copy()
        lat_h[hole] = np.nan
        lon_h[hole] = np.nan
        la[:] = lat_h
        lo = ds.createVariable("longitude", "f8", ("j", "i"))
        lo.units = "degrees_east"
        lo.standard_name = "longitude"
        lo[:] = lon_h
        v = ds.createVariable("tos", "f4", ("time", "j", "i"), fill_value=np.float32(1e20))
        v.units = "degC"
        v.coordinates = "latitude longitude"
        data = (15 + 10 * np.cos(np.radians(lat)) + rng.standard_normal((3, ny, nx))).astype("f4")
        land = ((lon > 20) & (lon < 60) & (lat > -10) & (lat < 40)) | ((lon > 250) & (lon < 290) & (lat > 20))
        data = np.ma.masked_array(data, np.broadcast_to(land, data.shape))
        v[:] = data


def rotated_to_geo(rlon, rlat, pole_lon=-170.0, pole_lat=40.0):
    """Rotated-pole coordinates to geographic lon/lat (CF rotated_latitude_longitude)."""
    crs = pyproj.CRS.from_cf({"grid_mapping_name": "rotated_latitude_longitude",
                              "grid_north_pole_longitude": pole_lon, "grid_north_pole_latitude": pole_lat})
    t = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    return t.transform(rlon, rlat)


def write_rotated(path) -> None:
    """A regional rotated-pole grid over Europe (30 x 40 cells of 1.1 degrees), longitudes
    stored 0..360 so the prime meridian splits the stored values 359.x | 0.x."""
    rng = np.random.default_rng(1602)
    rlat1 = -14.0 + 1.1 * np.arange(30)
    rlon1 = -22.0 + 1.1 * np.arange(40)
    rlon, rlat = np.meshgrid(rlon1, rlat1)
    lon, lat = rotated_to_geo(rlon, rlat)
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("time", 2)
        ds.createDimension("rlat", 30)
        ds.createDimension("rlon", 40)
        t = ds.createVariable("time", "f8", ("time",))
        t.units = "days since 2000-01-01"
        t[:] = [0.0, 1.0]
        a = ds.createVariable("rlat", "f8", ("rlat",))
        a.units = "degrees"
        a.standard_name = "grid_latitude"
        a[:] = rlat1
        b = ds.createVariable("rlon", "f8", ("rlon",))
        b.units = "degrees"
        b.standard_name = "grid_longitude"
        b[:] = rlon1
        la = ds.createVariable("lat", "f8", ("rlat", "rlon"))
        la.units = "degrees_north"
        la[:] = lat
        lo = ds.createVariable("lon", "f8", ("rlat", "rlon"))
        lo.units = "degrees_east"
        lo[:] = np.mod(lon, 360.0)
        v = ds.createVariable("tas", "f8", ("time", "rlat", "rlon"))
        v.units = "K"
        v.coordinates = "lat lon"
        v[:] = 270 + 20 * rng.random((2, 30, 40))


def write_bad(path) -> None:
    """Inconsistent 2-D coordinates: `mis` has a longitude of another shape, `nan` an
    all-NaN latitude."""
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("y", 4)
        ds.createDimension("x", 5)
        ds.createDimension("y2", 3)
        la = ds.createVariable("lat", "f8", ("y", "x"))
        la.units = "degrees_north"
        la[:] = np.add.outer(np.arange(4.0), np.zeros(5))
        lo2 = ds.createVariable("lon2", "f8", ("y2", "x"))
        lo2.units = "degrees_east"
        lo2[:] = np.zeros((3, 5))
        nanlat = ds.createVariable("nanlat", "f8", ("y", "x"))
        nanlat.units = "degrees_north"
        nanlat[:] = np.full((4, 5), np.nan)
        lo = ds.createVariable("lon", "f8", ("y", "x"))
        lo.units = "degrees_east"
        lo[:] = np.add.outer(np.zeros(4), np.arange(5.0))
        m = ds.createVariable("mis", "f4", ("y", "x"))
        m.coordinates = "lat lon2"
        m[:] = np.ones((4, 5), "f4")
        n = ds.createVariable("nan", "f4", ("y", "x"))
        n.coordinates = "nanlat lon"
        n[:] = np.ones((4, 5), "f4")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("curv")
    write_ocean(root / "ocean.nc")
    write_rotated(root / "rotated.nc")
    write_bad(root / "bad.nc")
    sources = {"ocean": [str(root / "ocean.nc")], "rotated": [str(root / "rotated.nc")], "bad": [str(root / "bad.nc")]}
    yield from serve_sources(root, "curv", sources)


def unit(lon, lat):
    lo, la = np.radians(lon), np.radians(lat)
    return np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1)


class Reference:
    """The nearest-cell rule, computed independently of the server."""

    def __init__(self, lat2d, lon2d):
        lat2d, lon2d = np.asarray(lat2d, "f8"), np.asarray(lon2d, "f8")
        ny, nx = lat2d.shape
        pts = unit(lon2d, lat2d)
        ok = np.isfinite(pts).all(axis=-1)
        reach = np.zeros((ny, nx))
        for dj, di in [(-1, 0), (1, 0), (0, -1), (0, 1)]:
            sh = np.full_like(pts, np.nan)
            src = pts[max(dj, 0):ny + min(dj, 0), max(di, 0):nx + min(di, 0)]
            sh[max(-dj, 0):ny + min(-dj, 0), max(-di, 0):nx + min(-di, 0)] = src
            d = np.linalg.norm(pts - sh, axis=-1)
            reach = np.fmax(reach, np.where(np.isfinite(d), d, 0.0))
        self.ids = np.flatnonzero(ok.ravel())
        self.tree = cKDTree(pts.reshape(-1, 3)[self.ids])
        self.reach = reach.ravel()

    def cells(self, lon, lat):
        """(flat cell id or -1, ambiguous) per query point."""
        q = unit(np.asarray(lon, "f8"), np.asarray(lat, "f8")).reshape(-1, 3)
        d, k = self.tree.query(q, k=2)
        cell = self.ids[k[:, 0]]
        r = self.reach[cell]
        ambiguous = (np.abs(d[:, 1] - d[:, 0]) < EPS) | (np.abs(d[:, 0] - r) < EPS)
        return np.where(d[:, 0] <= r, cell, -1), ambiguous


def compare(img, field, cells, ambiguous, cmap, vmin, vmax):
    vals = field.ravel()[np.clip(cells, 0, None)]
    want = expected_rgba(vals, cmap, vmin, vmax)
    want[cells < 0] = 0
    want = want.reshape(img.shape)
    diff = (img != want).any(axis=-1) & ~ambiguous.reshape(img.shape[:2])
    bad = np.argwhere(diff)
    assert len(bad) == 0, f"{len(bad)} of {diff.size} pixels differ, first {bad[:3].tolist()}: {img[tuple(bad[0])]} vs {want[tuple(bad[0])]}"
    return want


def get_png(url):
    r = requests.get(url, timeout=120)
    assert r.status_code == 200, (url, r.status_code, r.text[:500])
    assert r.headers["content-type"] == "image/png"
    return r, np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA"))


def plot_area(r, img):
    x0, y0, s = (int(v) for v in r.headers["x-map-layout"].split(","))
    west, north, step, w, h = r.headers["x-map-lonlat"].split(",")
    west, north, step, w, h = float(west), float(north), float(step), int(w), int(h)
    assert s == 1
    lon = west + (np.arange(w) + 0.5) * step
    lat = north - (np.arange(h) + 0.5) * step
    lon2, lat2 = np.meshgrid(lon, lat)
    return img[y0:y0 + h, x0:x0 + w], lon2, lat2, (west, north, step, w, h)


@pytest.mark.parametrize("name,var,sel,cmap,rng", [
    ("ocean", "tos", "time/1_2", "viridis", (0.0, 28.0)),
    ("rotated", "tas", "time/0_1", "RdBu_r", (272.0, 288.0)),
])
def test_plot_every_pixel_is_the_nearest_cell(served, name, var, sel, cmap, rng):
    url, src = served
    ds = _open(src[name])
    la, lo = (("latitude", "longitude") if name == "ocean" else ("lat", "lon"))
    ref = Reference(ds[la].values, ds[lo].values)
    r, img = get_png(f"{url}/datasets/{name}/plot/{var}/map/{cmap}/{sel}?colorscalerange={rng[0]},{rng[1]}")
    assert r.headers["x-colorscale-range"] == f"{rng[0]!r},{rng[1]!r}"
    area, lon2, lat2, (west, north, step, w, h) = plot_area(r, img)
    cells, amb = ref.cells(lon2, lat2)
    step_i = int(sel.split("/")[1].split("_")[0])
    field = ds[var].isel(time=step_i).values
    compare(area, field, cells, amb, cmap, *rng)
    drawn = (area[..., 3] == 255)
    assert drawn.mean() > 0.3, drawn.mean()
    if name == "ocean":
        # global: the canvas is -180..180; the land mask shows as transparent pixels inside the grid
        assert west == -180.0 and abs(w * step - 360.0) < step
        land = np.isnan(field.ravel()[np.clip(cells, 0, None)]) & (cells >= 0)
        assert land.sum() > 100 and (area[land.reshape(area.shape[:2])][:, 3] == 0).all()
        # the hole of cells without coordinates (centre near 114.4E 30.4N) is transparent
        i, j = int((114.4 - west) / step), int((north - 30.4) / step)
        assert area[j, i, 3] == 0 and cells.reshape(area.shape[:2])[j, i] < 0
    else:
        # regional across the prime meridian: a window from ~west of 0 to east of it, edges transparent
        # (the cells span 37.1W..55.3E; the window adds their reach)
        assert -45 < west < -37.1 and 55.3 < west + w * step < 65, (west, w * step)
        assert (area[0, :, 3] == 0).any() and (area[:, 0, 3] == 0).any()
        assert (cells < 0).sum() > 100


def test_animation_frames_match(served):
    url, src = served
    ds = _open(src["ocean"])
    ref = Reference(ds.latitude.values, ds.longitude.values)
    r = requests.get(f"{url}/datasets/ocean/plot/tos/animation/magma/time/0_3?colorscalerange=0,28", timeout=120)
    assert r.status_code == 200 and r.headers["x-frames"] == "3"
    im = Image.open(io.BytesIO(r.content))
    for f in range(3):
        im.seek(f)
        img = np.asarray(im.convert("RGBA"))
        area, lon2, lat2, _ = plot_area(r, img)
        cells, amb = ref.cells(lon2, lat2)
        compare(area, ds.tos.isel(time=f).values, cells, amb, "magma", 0.0, 28.0)


def tile_lonlat(z, x, y, w=256, h=256):
    size = 2 * ORIGIN / 2**z
    mx = -ORIGIN + (x + (np.arange(w) + 0.5) / w) * size
    my = ORIGIN - (y + (np.arange(h) + 0.5) / h) * size
    mx2, my2 = np.meshgrid(mx, my)
    return TO_LONLAT.transform(mx2, my2)


RANGES = {"ocean": (0.0, 28.0), "rotated": (270.0, 290.0)}


@pytest.mark.parametrize("name,var,z,x,y", [
    ("ocean", "tos", 0, 0, 0), ("ocean", "tos", 1, 0, 0), ("ocean", "tos", 2, 2, 1), ("ocean", "tos", 3, 7, 4),
    ("ocean", "tos", 3, 0, 3),
    ("rotated", "tas", 0, 0, 0), ("rotated", "tas", 2, 1, 1), ("rotated", "tas", 2, 2, 1), ("rotated", "tas", 4, 7, 5),
    ("rotated", "tas", 4, 8, 5),
])
def test_tiles_every_pixel_is_the_nearest_cell(served, name, var, z, x, y):
    url, src = served
    ds = _open(src[name])
    la, lo = (("latitude", "longitude") if name == "ocean" else ("lat", "lon"))
    ref = Reference(ds[la].values, ds[lo].values)
    lo, hi = RANGES[name]
    r, img = get_png(f"{url}/datasets/{name}/tiles/WebMercatorQuad/{z}/{y}/{x}.png"
                     f"?variables={var}&style=raster/turbo&colorscalerange={lo},{hi}&time=1")
    lon, lat = tile_lonlat(z, x, y)
    cells, amb = ref.cells(lon, lat)
    compare(img, ds[var].isel(time=1).values, cells, amb, "turbo", lo, hi)
    # a test that can fail: the tile shows cells, and several distinct colours
    assert (cells >= 0).any() == (img[..., 3] == 255).any()
    if z == 0:
        assert (img[..., 3] == 255).any() and (img[..., 3] == 0).any()


def test_tile_outside_grid_is_transparent_and_range_default(served):
    url, src = served
    # zoom 3 x=3 y=6: 45W..0, ~41S..66S; the rotated grid is over Europe
    _, img = get_png(f"{url}/datasets/rotated/tiles/WebMercatorQuad/3/6/3.png?variables=tas")
    assert (img[..., 3] == 0).all()
    ds = _open(src["ocean"])
    r, _ = get_png(f"{url}/datasets/ocean/tiles/WebMercatorQuad/0/0/0.png?variables=tos&time=2")
    lo, hi = (float(v) for v in r.headers["x-colorscale-range"].split(","))
    np.testing.assert_allclose([lo, hi], np.nanpercentile(ds.tos.isel(time=2).values, [2, 98]), rtol=1e-6)


def test_tilejson_and_map_page(served):
    url, _ = served
    r = requests.get(f"{url}/datasets/rotated/tiles/WebMercatorQuad/tilejson.json?variables=tas&colorscalerange=270,290", timeout=60)
    assert r.status_code == 200, r.text
    tj = r.json()
    w, s, e, n = tj["bounds"]
    assert -45 < w < -37.1 and 55.3 < e < 65 and 25 < s < 32.3 and 67.9 < n < 75, tj["bounds"]
    tile = requests.get(tj["tiles"][0].replace("{z}", "2").replace("{y}", "1").replace("{x}", "2"), timeout=60)
    assert tile.status_code == 200 and tile.headers["content-type"] == "image/png"
    g = requests.get(f"{url}/datasets/ocean/tiles/WebMercatorQuad/tilejson.json?variables=tos", timeout=60).json()
    assert g["bounds"][0] == -180 and g["bounds"][2] == 180
    page = requests.get(f"{url}/datasets/ocean/map", timeout=60)
    assert page.status_code == 200 and "tilejson.json?variables=tos" in page.text and 'max="2"' in page.text


@pytest.mark.parametrize("path,needles", [
    ("plot/mis/map/viridis", ["mis", "lat", "lon2", "same dimensions and shape"]),
    ("plot/nan/map/viridis", ["nanlat", "no cell with a finite"]),
    ("tiles/WebMercatorQuad/0/0/0.png?variables=mis", ["mis", "lon2", "same dimensions and shape"]),
    ("tiles/WebMercatorQuad/0/0/0.png?variables=nan&colorscalerange=0,1", ["nanlat", "no cell with a finite"]),
    ("tiles/WebMercatorQuad/tilejson.json?variables=nan", ["nanlat", "no cell with a finite"]),
    ("map?variables=mis", ["lon2"]),
])
def test_inconsistent_coordinates_are_400_naming_them(served, path, needles):
    url, _ = served
    r = requests.get(f"{url}/datasets/bad/{path}", timeout=60)
    assert r.status_code == 400, (path, r.status_code, r.text[:300])
    err = r.json()["error"]
    for n in needles:
        assert n in err, (n, err)
