"""The processing engine's limits and cache (issue #14, section 4): `--max-source-bytes`
refuses a computed chunk with 413 naming the estimate (equal to the HDF5 storage sizes of the
source chunks it reads, as h5py reports them) and the limit, without reading; a chunk under
the cap is 200; the ad-hoc groupby summary says `estimated_source_bytes` and answers a
browser an HTML page whose links resolve; computed chunks are served from the compute cache
on a second fetch (counted in /metrics, identical bytes, same ETag, 304 on If-None-Match),
and a source file touched or rewritten under the running server is never answered from the
cache. Sources are generated netCDF-4 files."""

from __future__ import annotations

import html
import os
import re
import time

import h5py
import netCDF4
import numpy as np
import requests

from conftest import start_server, stop_server, wait_until_settled

SHAPE = (48, 16, 32)  # four years of months
CHUNK = (4, 16, 32)


def _write(path, offset: float = 0.0) -> None:
    rng = np.random.default_rng(7)
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("time", None)
        ds.createDimension("lat", SHAPE[1])
        ds.createDimension("lon", SHAPE[2])
        t = ds.createVariable("time", "f8", ("time",))
        t.units = "days since 2000-01-01"
        t.calendar = "standard"
        t[:] = np.arange(SHAPE[0]) * 30.4 + 15.0
        la = ds.createVariable("lat", "f8", ("lat",))
        la[:] = np.linspace(-80, 80, SHAPE[1])
        lo = ds.createVariable("lon", "f8", ("lon",))
        lo[:] = np.arange(SHAPE[2]) * 11.25
        v = ds.createVariable("tas", "f4", ("time", "lat", "lon"), zlib=True, shuffle=True, chunksizes=CHUNK)
        v.units = "K"
        v[:] = (rng.normal(280.0, 10.0, size=SHAPE) + offset).astype("f4")


def _stored_bytes(path) -> int:
    """Sum of the stored (compressed) sizes of tas's chunks, as HDF5 reports them."""
    with h5py.File(path, "r") as f:
        d = f["tas"].id
        return sum(d.get_chunk_info(i).size for i in range(d.get_num_chunks()))


def _config(root, src) -> str:
    cfg = root / "cloudify.yaml"
    cfg.write_text(
        "datasets:\n"
        "  - name: eng\n"
        f"    sources: [{src}]\n"
        "    processing:\n"
        "      variables:\n"
        "        tas_c: {expr: \"tas - 273.15\"}\n"
        "      views:\n"
        "        clim: {groupby: {by: time.month, reduce: mean}}\n"
    )
    return str(cfg)


def _serve(root, tag, *flags):
    src = root / "src.nc"
    if not src.exists():
        _write(src)
    url, proc, _ = start_server(["serve", "--config", _config(root, src), *flags], root, tag,
                                extra_env={"CLOUDIFY_CACHE_DIR": str(root / "cache")})
    status = wait_until_settled(url, ["eng", "eng.clim"], proc)
    states = {d["name"]: d["state"] for d in status["datasets"]}
    assert states == {"eng": "ready", "eng.clim": "ready"}, status
    return url, proc, src


def _metric(url, name) -> int:
    text = requests.get(f"{url}/metrics", timeout=30).text
    m = re.search(rf"^{name} (\d+)", text, re.M)
    assert m, f"{name} not in /metrics"
    return int(m.group(1))


PRODUCT = "/datasets/eng/groupby/tas/time.month/mean"


def test_cap_refuses_with_the_estimate_and_the_limit(tmp_path):
    src = tmp_path / "src.nc"
    _write(src)
    total = _stored_bytes(src)
    assert total > 0
    limit = total - 1  # every chunk of the month groups reads all of the source: over
    url, proc, _ = _serve(tmp_path, "cap", "--max-source-bytes", str(limit))
    try:
        for path in (f"/datasets/eng.clim/zarr/tas/0.0.0", f"{PRODUCT}/zarr/tas/0.0.0",
                     f"{PRODUCT}/zarr/tas/c/0/0/0"):
            r = requests.get(url + path, timeout=60)
            assert r.status_code == 413, (path, r.status_code, r.text[:300])
            msg = r.json()["error"]
            m = re.search(r"read about (\d+) bytes of source data; the limit is (\d+) \(--max-source-bytes\)", msg)
            assert m, msg
            assert int(m.group(1)) == total, (msg, total)
            assert int(m.group(2)) == limit
        assert _metric(url, "cloudify_source_bytes_refused_total") == 3
        # a derived chunk reads one stored chunk: under the cap
        r = requests.get(f"{url}/datasets/eng/zarr/tas_c/0.0.0", timeout=60)
        assert r.status_code == 200, r.text[:300]
        # stored chunks served as they are: never capped, metadata neither
        assert requests.get(f"{url}/datasets/eng/zarr/tas/0.0.0", timeout=60).status_code == 200
        assert requests.get(f"{url}{PRODUCT}/zarr/.zmetadata", timeout=60).status_code == 200
        # the summary says what the whole product reads (plus at most its coordinates)
        s = requests.get(url + PRODUCT, timeout=60)
        assert s.status_code == 200
        est = s.json()["estimated_source_bytes"]
        assert total <= est <= total + 8 * (SHAPE[1] + SHAPE[2]), (est, total)
    finally:
        stop_server(proc)


def test_summary_html_links_resolve(tmp_path):
    url, proc, _ = _serve(tmp_path, "html")
    try:
        r = requests.get(url + PRODUCT, headers={"Accept": "text/html,application/xhtml+xml"}, timeout=60)
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("text/html")
        assert "<title>eng: tas.groupby(time.month).mean()</title>" in r.text
        links = [html.unescape(h) for h in re.findall(r'href="([^"]+)"', r.text)]
        assert f"{PRODUCT}/zarr/.zmetadata" in links
        assert f"{PRODUCT}/zarr/zarr.json" in links
        assert "/datasets/eng" in links
        for h in links:
            assert h.startswith("/"), h
            assert requests.get(url + h, timeout=60).status_code == 200, h
        # JSON stays the default
        j = requests.get(url + PRODUCT, timeout=60).json()
        assert j["estimated_source_bytes"] > 0
    finally:
        stop_server(proc)


def test_cache_hits_and_never_stale(tmp_path):
    url, proc, src = _serve(tmp_path, "cache")
    try:
        keys = [f"/datasets/eng/zarr/tas_c/0.0.0", f"/datasets/eng/zarr/tas_c/c/1/0/0",
                f"/datasets/eng.clim/zarr/tas/0.0.0", f"{PRODUCT}/zarr/tas/0.0.0"]
        first = {}
        for k in keys:
            r = requests.get(url + k, timeout=60)
            assert r.status_code == 200, (k, r.text[:300])
            first[k] = r
        hits0 = _metric(url, "cloudify_compute_cache_hits_total")
        misses = _metric(url, "cloudify_compute_cache_misses_total")
        assert misses >= len(keys)
        assert _metric(url, "cloudify_compute_cache_bytes") >= sum(len(r.content) for r in first.values())
        for k in keys:
            r = requests.get(url + k, timeout=60)
            assert r.status_code == 200
            assert r.content == first[k].content, k
            assert r.headers["ETag"] == first[k].headers["ETag"], k
            r = requests.get(url + k, headers={"If-None-Match": first[k].headers["ETag"]}, timeout=60)
            assert r.status_code == 304, k
        assert _metric(url, "cloudify_compute_cache_hits_total") == hits0 + len(keys)
        # computed chunks are tagged by their pipeline: the derived variable and the stored
        # one it reads have other ETags for the same chunk index
        stored = requests.get(f"{url}/datasets/eng/zarr/tas/0.0.0", timeout=60)
        assert stored.headers["ETag"] != first[keys[0]].headers["ETag"]

        # the source changes under the running server: never the cached bytes
        time.sleep(0.05)
        os.utime(src)
        for k in keys:
            r = requests.get(url + k, timeout=60)
            assert r.status_code >= 500, (k, r.status_code)
            assert "src.nc" in r.json()["error"] and "changed since it was indexed" in r.json()["error"]
            r = requests.get(url + k, headers={"If-None-Match": first[k].headers["ETag"]}, timeout=60)
            assert r.status_code != 304, k
        # rewritten with other values (same path): still refused, never the old bytes
        tmp = tmp_path / "new.nc"
        _write(tmp, offset=5.0)
        os.replace(tmp, src)
        for k in keys:
            r = requests.get(url + k, timeout=60)
            assert r.status_code >= 500, (k, r.status_code)
    finally:
        stop_server(proc)
    # restarted: re-indexed, the new values under new ETags
    url, proc, _ = _serve(tmp_path, "cache2")
    try:
        for k in keys:
            r = requests.get(url + k, timeout=60)
            assert r.status_code == 200, (k, r.text[:300])
            assert r.headers["ETag"] != first[k].headers["ETag"], k
            assert r.content != first[k].content, k
    finally:
        stop_server(proc)


def test_concurrent_misses_of_one_chunk_compute_it_once(tmp_path):
    """Eight clients ask for the same uncached product chunk at once (a dask client opening a
    product does): one computation runs, the other seven wait for it and get its bytes."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    src = tmp_path / "src.nc"
    shape = (1460, 90, 180)  # big enough that the computation takes a while: the requests overlap
    with netCDF4.Dataset(src, "w") as ds:
        ds.createDimension("time", None)
        ds.createDimension("lat", shape[1])
        ds.createDimension("lon", shape[2])
        t = ds.createVariable("time", "f8", ("time",))
        t.units = "days since 2000-01-01"
        t[:] = np.arange(shape[0]) + 0.5
        ds.createVariable("lat", "f8", ("lat",))[:] = np.linspace(-88, 88, shape[1])
        ds.createVariable("lon", "f8", ("lon",))[:] = np.arange(shape[2]) * 4.0
        v = ds.createVariable("tas", "f4", ("time", "lat", "lon"), zlib=True, complevel=1,
                              chunksizes=(1, shape[1], shape[2]))
        rng = np.random.default_rng(3)
        v[:] = (280 + rng.normal(0, 5, size=shape)).astype("f4")
    url, proc, _ = _serve(tmp_path, "flight", "--decoded-cache-bytes", "0")
    try:
        path = f"{url}{PRODUCT}/zarr/tas/0.0.0"
        # the array's own metadata: opening the store (`.zmetadata`) would compute the chunk ahead
        assert requests.get(f"{url}{PRODUCT}/zarr/tas/.zarray", timeout=60).status_code == 200
        runs0 = _metric(url, "cloudify_chunk_computations_total")
        waits0 = _metric(url, "cloudify_chunk_computation_waits_total")
        n = 8
        barrier = Barrier(n)

        def fetch(_):
            barrier.wait()
            return requests.get(path, timeout=120)

        hits0 = _metric(url, "cloudify_compute_cache_hits_total")
        with ThreadPoolExecutor(n) as pool:
            got = list(pool.map(fetch, range(n)))
        assert all(r.status_code == 200 for r in got), [r.text[:200] for r in got]
        assert len({r.content for r in got}) == 1
        assert _metric(url, "cloudify_chunk_computations_total") == runs0 + 1
        # the others waited for it, or (on a busy machine, arriving after it finished) hit the cache
        waits = _metric(url, "cloudify_chunk_computation_waits_total") - waits0
        hits = _metric(url, "cloudify_compute_cache_hits_total") - hits0
        assert waits >= 1 and waits + hits == n - 1, (waits, hits)
        # the next request is a cache hit: no computation
        assert requests.get(path, timeout=60).content == got[0].content
        assert _metric(url, "cloudify_chunk_computations_total") == runs0 + 1
    finally:
        stop_server(proc)


def test_opening_a_product_computes_its_chunks_ahead(tmp_path):
    """Reading a product's root metadata (`.zmetadata`, `zarr.json`: what a client reads first
    when it opens the store) starts computing its chunks in the background, so the chunk a
    client asks for next is a cache hit or joins the running computation: one computation
    per chunk either way, and the values are xarray's. Not when the product's chunks would
    take more than a quarter of the compute cache, nor when the cache keeps nothing."""
    import xarray as xr

    url, proc, src = _serve(tmp_path, "warm")
    try:
        for fmt, doc in ((2, ".zmetadata"), (3, "zarr.json")):
            product = f"/datasets/eng/groupby/tas/time.month/{'mean' if fmt == 2 else 'max'}"
            runs0 = _metric(url, "cloudify_chunk_computations_total")
            warm0 = _metric(url, "cloudify_chunk_prefetches_total")
            assert requests.get(f"{url}{product}/zarr/{doc}", timeout=60).status_code == 200
            # the data variable's one chunk, not the month labels (cheap, asked first anyway)
            wait_for_value(lambda: _metric(url, "cloudify_chunk_prefetches_total"), warm0 + 1)
            wait_for_value(lambda: _metric(url, "cloudify_compute_cache_entries") >= 1, True)
            entries = _metric(url, "cloudify_compute_cache_entries")
            hits0 = _metric(url, "cloudify_compute_cache_hits_total")
            waits0 = _metric(url, "cloudify_chunk_computation_waits_total")
            with xr.open_dataset(f"{url}{product}/zarr", engine="zarr", zarr_format=fmt) as ds:
                got = ds["tas"].load()
            # the chunk came from the computation ahead (a hit, or a wait if it was still running)
            served_ahead = (_metric(url, "cloudify_compute_cache_hits_total") - hits0
                            + _metric(url, "cloudify_chunk_computation_waits_total") - waits0)
            assert served_ahead >= 1, served_ahead
            # once per chunk: tas's and the month labels' (computed on request)
            assert _metric(url, "cloudify_chunk_computations_total") - runs0 == 2
            assert _metric(url, "cloudify_compute_cache_entries") >= entries
            with xr.open_dataset(src) as local:
                grouped = local["tas"].groupby("time.month")
                want = (grouped.mean() if fmt == 2 else grouped.max()).load()
            np.testing.assert_allclose(got.values, want.values, rtol=1e-6)
    finally:
        stop_server(proc)
    # 12 x 16 x 32 float32 = 24 KiB of product: more than a quarter of a 64 KiB cache
    for tag, flag in (("warm-small", "65536"), ("warm-off", "0")):
        url, proc, _ = _serve(tmp_path, tag, "--compute-cache-bytes", flag)
        try:
            runs0 = _metric(url, "cloudify_chunk_computations_total")
            assert requests.get(f"{url}{PRODUCT}/zarr/.zmetadata", timeout=60).status_code == 200
            time.sleep(1.0)
            assert _metric(url, "cloudify_chunk_prefetches_total") == 0
            assert _metric(url, "cloudify_chunk_computations_total") == runs0
            assert requests.get(f"{url}{PRODUCT}/zarr/tas/0.0.0", timeout=60).status_code == 200
            assert _metric(url, "cloudify_chunk_computations_total") == runs0 + 1
        finally:
            stop_server(proc)


def wait_for_value(get, want, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while (got := get()) != want:
        assert time.monotonic() < deadline, (got, want)
        time.sleep(0.05)


def _memory_limit() -> int:
    """What the server reads as its memory limit (cgroup v2 memory.max, else MemTotal)."""
    limits = []
    try:
        limits.append(int(open("/sys/fs/cgroup/memory.max").read().strip()))
    except (OSError, ValueError):
        pass
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal:"):
            limits.append(int(line.split()[1]) * 1024)
    return min(limits)


def test_the_decoded_cache_grows_to_hold_a_rechunked_grids_working_set(tmp_path):
    """Tiles of one time block of a rechunked grid all read the same stored chunks: 400 daily
    chunks of 360 x 720 float32 (412 MiB decoded, above the default 256 MiB budget) for a
    `{time: 400, lat: 30, lon: 30}` grid. The budget is raised to hold them (and a quarter
    more, within a quarter of the memory limit), so the second tile decodes nothing; a budget
    given explicitly is kept."""
    src = tmp_path / "big.nc"
    nt, ny, nx = 400, 360, 720
    with netCDF4.Dataset(src, "w") as ds:
        ds.createDimension("time", None)
        ds.createDimension("lat", ny)
        ds.createDimension("lon", nx)
        t = ds.createVariable("time", "f8", ("time",))
        t.units = "days since 2000-01-01"
        t[:] = np.arange(nt) + 0.5
        ds.createVariable("lat", "f8", ("lat",))[:] = np.linspace(-89.75, 89.75, ny)
        ds.createVariable("lon", "f8", ("lon",))[:] = np.arange(nx) * 0.5
        v = ds.createVariable("tas", "f4", ("time", "lat", "lon"), zlib=True, complevel=1,
                              chunksizes=(1, ny, nx))
        for i in range(nt):  # compressible, but each day and cell its own value
            v[i] = (np.float32(250 + i % 50) + np.arange(ny * nx, dtype="f4").reshape(ny, nx) % 7)
    cfg = tmp_path / "big.yaml"
    cfg.write_text(f'datasets:\n  - name: big\n    sources: ["{src}"]\n'
                   "    processing:\n      chunks: {time: 400, lat: 30, lon: 30}\n")
    working_set = nt * ny * nx * 4
    want = min(working_set + working_set // 4, _memory_limit() // 4)
    env = {"CLOUDIFY_CACHE_DIR": str(tmp_path / "cache")}
    url, proc, log = start_server(["serve", "--config", str(cfg), "--compute-cache-bytes", "0"], tmp_path, "auto",
                                  extra_env=env)
    try:
        wait_until_settled(url, ["big"], proc)
        assert _metric(url, "cloudify_decoded_chunk_cache_budget_bytes") == want
        if want > 256 << 20:
            text = log.read_text(errors="replace")
            assert "decoded-chunk cache budget raised" in text and "'big/tas'" in text, text[-2000:]
        with netCDF4.Dataset(src) as ds:
            orig = ds["tas"][:, :30, :60]
        for key, sl in (("0.0.0", np.s_[:, :, :30]), ("0.0.1", np.s_[:, :, 30:60])):
            misses0 = _metric(url, "cloudify_decoded_chunk_cache_misses_total")
            r = requests.get(f"{url}/datasets/big/zarr/tas/{key}", timeout=120)
            assert r.status_code == 200, r.text[:300]
            misses = _metric(url, "cloudify_decoded_chunk_cache_misses_total") - misses0
            if key == "0.0.0":
                assert misses == nt, misses
            elif want >= working_set:
                assert misses == 0, f"the neighbouring tile decoded {misses} stored chunks again"
        import xarray as xr
        got = xr.open_zarr(f"{url}/datasets/big/zarr", consolidated=True)["tas"][:, :30, :60].values
        np.testing.assert_array_equal(got, np.asarray(orig))
    finally:
        stop_server(proc)
    url, proc, _ = start_server(["serve", "--config", str(cfg), "--decoded-cache-bytes", "1000000"], tmp_path,
                                "explicit", extra_env=env)
    try:
        wait_until_settled(url, ["big"], proc)
        assert _metric(url, "cloudify_decoded_chunk_cache_budget_bytes") == 1000000
    finally:
        stop_server(proc)
