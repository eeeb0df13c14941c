"""The HTML pages a person opens, in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`, e2e/setup.sh) driven through Selenium.

- the map page `/datasets/{id}/map`: Leaflet (from npm, e2e/setup.sh, served by a local HTTP
  server of this test and passed as `--map-js-url`; nothing is loaded from the internet) loads,
  the page fetches the TileJSON and its tiles from cloudify, and the screenshot shows them: the
  pixels where each tile sits on screen are compared with an independent reprojection of the
  xarray-read field (test_tiles.expected_tile: pyproj + nearest cell + matplotlib's colormap);
  moving the time slider replaces every tile by the next step's, compared the same way;
- the dataset's HTML summary (`/datasets/{id}`, redirected to `/datasets/{id}/` so its relative
  links resolve): every link answers, the PNG map it links is an image the browser decodes, and
  its EDR form, filled in and submitted, answers the point's series equal to xarray's
  `.sel(method="nearest")`;
- the groupby product's summary page and `/docs`: their links answer;
- the STAC item's product links (EDR queries, TileJSON, XYZ template, map page) answer, the map
  page again rendering tiles in the browser.

Every page is checked for console errors (the browser log at SEVERE level)."""

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import re
import shutil
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
import requests
from PIL import Image

from conftest import start_server, stop_server, wait_until_settled
from test_plots import _open, write_global
from test_tiles import expected_tile

CHROMIUM = os.environ.get("CLOUDIFY_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CLOUDIFY_CHROMEDRIVER", "/usr/bin/chromedriver")
LEAFLET = Path(os.environ.get("CLOUDIFY_LEAFLET_DIR", "/var/tmp/cloudify-leaflet/node_modules/leaflet/dist"))
WAIT = 120  # seconds a page may take on a loaded 2-core machine (a bound, not a measurement)
QUERY = "variables=tas&style=raster/RdBu_r&colorscalerange=250,290"


def _missing() -> str | None:
    for what, p in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER), ("leaflet", LEAFLET / "leaflet.js")):
        if not Path(p).exists():
            return f"{what} not found at {p} (e2e/setup.sh installs it)"
    return None


class _Recorder(http.server.SimpleHTTPRequestHandler):
    """Serves the Leaflet distribution and remembers the paths asked for."""

    seen: list[str] = []

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        type(self).seen.append(self.path)
        super().do_GET()


@pytest.fixture(scope="module")
def leaflet_url():
    why = _missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    handler = type("Handler", (_Recorder,), {"seen": []})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(LEAFLET)))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/leaflet.js", handler.seen
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture(scope="module")
def served(tmp_path_factory, leaflet_url):
    root = tmp_path_factory.mktemp("pages")
    write_global(root / "global.nc")
    cfg = root / "cloudify.yaml"
    cfg.write_text(f"datasets:\n  - name: global\n    sources: [\"{root / 'global.nc'}\"]\n")
    url, proc, _ = start_server(["serve", "--config", str(cfg), "--map-js-url", leaflet_url[0]], root, "pages",
                                extra_env={"CLOUDIFY_CACHE_DIR": str(root / "cache")})
    try:
        wait_until_settled(url, ["global"], proc)
        yield url, _open([str(root / "global.nc")])
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def browser(leaflet_url, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1000,800", "--force-device-scale-factor=1", "--hide-scrollbars",
              "--force-color-profile=srgb", f"--user-data-dir={profile}"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    d.set_page_load_timeout(WAIT)
    try:
        yield d
    finally:
        d.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(d) -> list[dict]:
    """The browser log's SEVERE entries since the last call (reading the log empties it)."""
    return [e for e in d.get_log("browser") if e["level"] == "SEVERE"]


@pytest.fixture
def page(browser):
    """The browser, with no console error allowed during the test."""
    console_errors(browser)
    yield browser
    errs = console_errors(browser)
    assert not errs, f"console errors: {errs}"


def wait_for(d, script: str, what: str):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(d, WAIT, poll_frequency=0.2).until(lambda d: d.execute_script(script))
    except TimeoutException:
        raise AssertionError(f"timed out waiting for {what}; console: {d.get_log('browser')}") from None


TILES_LOADED = """
const want = arguments[0];
const imgs = [...document.querySelectorAll('img.leaflet-tile')];
if (!imgs.length) return false;
// loaded, and Leaflet's fade-in over (it raises each tile's opacity over a few frames)
if (!imgs.every(i => i.src.includes(want) && i.complete && i.classList.contains('leaflet-tile-loaded')
    && getComputedStyle(i).opacity === '1' && getComputedStyle(i.parentElement).opacity === '1')) return false;
return imgs.map(i => { const r = i.getBoundingClientRect();
  return {src: i.src, w: i.naturalWidth, h: i.naturalHeight, x: r.left, y: r.top, rw: r.width, rh: r.height}; });
"""


def check_tiles_on_screen(d, ds, tiles, step: int) -> np.ndarray:
    """Every tile fully on screen: its on-screen pixels equal the expected tile's (where the
    expected tile is opaque). Returns the screenshot (RGB)."""
    shot = np.asarray(Image.open(io.BytesIO(d.get_screenshot_as_png())).convert("RGB")).astype(int)
    H, W = shot.shape[:2]
    field = ds.tas.isel(time=step).values
    compared = 0
    for t in tiles:
        assert (t["w"], t["h"]) == (256, 256), t
        m = re.search(r"/tiles/WebMercatorQuad/(\d+)/(\d+)/(\d+)\.png", t["src"])
        z, y, x = (int(g) for g in m.groups())
        q = parse_qs(urlparse(t["src"]).query)
        assert q["time"] == [str(step)] and q["colorscalerange"] == ["250.0,290.0"], t["src"]
        # Leaflet places tiles on whole pixels at an integer zoom: the image is drawn 1:1
        assert (t["rw"], t["rh"]) == (256, 256) and t["x"] == int(t["x"]) and t["y"] == int(t["y"]), t
        x0, y0 = int(t["x"]), int(t["y"])
        if x0 < 0 or y0 < 0 or x0 + 256 > W or y0 + 256 > H:
            continue
        n = 2**z
        want = expected_tile(field, ds.lat.values, ds.lon.values, z, x % n, y, "RdBu_r", 250, 290)
        got = shot[y0:y0 + 256, x0:x0 + 256]
        opaque = want[..., 3] == 255
        diff = np.abs(got - want[..., :3].astype(int)).max(axis=-1)
        bad = np.argwhere(opaque & (diff > 1))
        assert len(bad) == 0, (f"tile {z}/{y}/{x} at ({x0},{y0}): {len(bad)} of {opaque.sum()} opaque pixels differ "
                               f"on screen, first {bad[:3].tolist()}: {got[tuple(bad[0])]} vs {want[tuple(bad[0])]}")
        compared += int(opaque.sum())
    assert compared > 20000, f"only {compared} tile pixels were fully on screen to compare"
    return shot


def test_map_page_renders_tiles_and_the_slider_changes_them(page, served, leaflet_url):
    url, ds = served
    d = page
    d.get(f"{url}/datasets/global/map?{QUERY}")
    tiles = wait_for(d, TILES_LOADED.replace("arguments[0]", "'time=0'"), "the tiles of time step 0")
    # Leaflet came from the local server, not from the internet
    assert d.execute_script("return typeof L === 'object' && L.version") == "1.9.4"
    assert "/leaflet.js" in leaflet_url[1] and "/leaflet.css" in leaflet_url[1], leaflet_url[1]
    # the page asked cloudify for the TileJSON and the tiles (the browser's own record)
    names = d.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert any("/tiles/WebMercatorQuad/tilejson.json" in n for n in names), names
    requested = [n for n in names if re.search(r"/tiles/WebMercatorQuad/\d+/\d+/\d+\.png", n)]
    # (world copies east and west show the same tiles: one request each)
    assert tiles and {t["src"] for t in tiles} <= set(requested), (requested, tiles)
    assert d.execute_script("return document.getElementById('range').textContent") == "colour range 250 .. 290"
    before = check_tiles_on_screen(d, ds, tiles, 0)
    # not blank: the field's colours, many of them
    assert len(np.unique(before.reshape(-1, 3), axis=0)) > 50

    d.execute_script("const s = document.getElementById('step'); s.value = 5; s.dispatchEvent(new Event('input'));")
    tiles = wait_for(d, TILES_LOADED.replace("arguments[0]", "'time=5'"), "the tiles of time step 5")
    assert d.execute_script("return document.getElementById('steplabel').textContent") == "5"
    after = check_tiles_on_screen(d, ds, tiles, 5)
    assert (np.abs(after - before).max(axis=-1) > 1).sum() > 10000, "the slider did not change the map"


def _links(d) -> list[str]:
    return d.execute_script("return [...document.querySelectorAll('a[href]')].map(a => a.href)")


def _all_answer(links: list[str]) -> None:
    bad = []
    for h in links:
        r = requests.get(h, timeout=WAIT)
        if r.status_code != 200:
            bad.append((h, r.status_code, r.text[:200]))
    assert not bad, bad


def test_dataset_summary_page(page, served):
    url, ds = served
    d = page
    d.get(f"{url}/datasets/global")  # no slash: redirected so that relative links resolve
    assert d.current_url == f"{url}/datasets/global/"
    assert d.find_element("tag name", "h1").text == "global"
    links = _links(d)
    for want in ("/datasets/global/zarr/.zmetadata", "/datasets/global/plot/tas/map/viridis",
                 "/datasets/global/map?variables=tas"):
        assert f"{url}{want}" in links, (want, links)
    _all_answer(links)
    # the PNG map the page links: an image the browser decodes
    d.get(f"{url}/datasets/global/plot/tas/map/viridis")
    size = wait_for(d, "const i = document.querySelector('img'); return i && i.complete && i.naturalWidth > 0 "
                       "&& [i.naturalWidth, i.naturalHeight]", "the PNG map")
    assert size[0] > 100 and size[1] > 100


def test_summary_edr_form_answers_the_nearest_series(page, served):
    url, ds = served
    d = page
    d.get(f"{url}/datasets/global/")
    form = d.find_element("css selector", "form[action='edr/position']")
    form.find_element("name", "coords").send_keys("POINT(100.3 41)")
    form.find_element("css selector", "select[name=f] option[value=cf_covjson]").click()
    form.find_element("tag name", "button").click()
    wait_for(d, "return location.pathname.endsWith('/edr/position')", "the EDR answer")
    q = parse_qs(urlparse(d.current_url).query)
    assert q["coords"] == ["POINT(100.3 41)"] and q["datetime"] == ["../.."] and q["f"] == ["cf_covjson"], q
    text = wait_for(d, "const p = document.querySelector('pre'); return (p || document.body).innerText",
                    "the CoverageJSON text")
    got = json.loads(text[text.index("{"):])
    assert got["type"] == "Coverage", got.get("type")
    want = ds.tas.sel(lon=100.3, lat=41.0, method="nearest").values
    vals = np.array([np.nan if v is None else v for v in got["ranges"]["tas"]["values"]], dtype="f4")
    assert vals.shape == want.shape and np.array_equal(vals, want.astype("f4"), equal_nan=True)


def test_groupby_summary_page(page, served):
    url, _ = served
    d = page
    product = "/datasets/global/groupby/tas/time.month/mean"
    d.get(f"{url}{product}")
    assert d.title == "global: tas.groupby(time.month).mean()"
    links = _links(d)
    assert f"{url}{product}/zarr/.zmetadata" in links and f"{url}/datasets/global" in links, links
    _all_answer(links)


def test_docs_page(page, served):
    url, _ = served
    d = page
    d.get(f"{url}/docs")
    assert d.find_element("tag name", "h1").text == "cloudify API"
    rows = d.find_elements("css selector", "table tr")
    assert any("/datasets/{id}/map" in r.text for r in rows) and any("edr/position" in r.text for r in rows)
    _all_answer(_links(d))


def test_stac_item_links_the_products(page, served):
    url, ds = served
    d = page
    item = requests.get(f"{url}/datasets/global/stac", timeout=WAIT).json()
    rel = {}
    for link in item["links"]:
        rel.setdefault(link["rel"], []).append(link["href"])
    assert rel["data"] == [f"{url}/datasets/global/edr/position", f"{url}/datasets/global/edr/area"]
    # EDR: the position query at a point equals xarray's nearest cell
    r = requests.get(rel["data"][0], params={"coords": "POINT(-20 -33)", "parameter-name": "tas"}, timeout=WAIT)
    assert r.status_code == 200, r.text[:300]
    want = ds.tas.sel(lon=340.0, lat=-33.0, method="nearest").values
    vals = np.array([np.nan if v is None else v for v in r.json()["ranges"]["tas"]["values"]], dtype="f4")
    assert np.array_equal(vals, want.astype("f4"), equal_nan=True)
    r = requests.get(rel["data"][1], params={"coords": "POLYGON((0 0,30 0,30 30,0 30,0 0))", "parameter-name": "tas"},
                     timeout=WAIT)
    assert r.status_code == 200 and r.json()["type"] == "Coverage", r.text[:300]
    # tiles: TileJSON, the XYZ template, the map page (rendered in the browser)
    tj = requests.get(rel["tilejson"][0], timeout=WAIT).json()
    assert tj["tilejson"] == "3.0.0" and "variables=tas" in tj["tiles"][0]
    xyz = rel["xyz"][0].replace("{z}", "1").replace("{y}", "0").replace("{x}", "1")
    r = requests.get(xyz, timeout=WAIT)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text[:300]
    assert Image.open(io.BytesIO(r.content)).size == (256, 256)
    d.get(rel["preview"][0])
    tiles = wait_for(d, TILES_LOADED.replace("arguments[0]", "'time=0'"), "the map page's tiles")
    assert all(t["w"] == 256 for t in tiles)
