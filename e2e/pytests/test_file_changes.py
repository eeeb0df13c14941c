"""Local source files changed while (or between) servers run.

cloudify reads chunks at the byte offsets it found when it indexed a file. A file that is
touched, rewritten in place, replaced by ``mv`` or rewritten with its size and mtime kept
(``touch -r``) must never have its new bytes decoded through the old index or served under
the old ETag (zarr clients cache chunks by ETag for an hour): the server answers a 5xx
naming the file, or the correct new data under a new ETag. A restart re-indexes, also when
size and mtime are the same as before (the index cache is keyed on inode and ctime too).
Other files of the same dataset and other datasets keep serving.

Each case starts its own ``cloudify serve`` on fresh copies of generated files.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import netCDF4
import numcodecs
import numpy as np
import pytest
import requests

from conftest import start_server, stop_server, wait_until_settled

CHUNK = (4, 32, 64)  # time, lat, lon: one stored chunk per served chunk (pass-through)
A_CHUNK = "tas/0.0.0"  # first chunk of a.nc (year 2000 comes first)
B_CHUNK = "tas/3.0.0"  # first chunk of b.nc
TIME = "time/0"  # the (small) concat coordinate: held in the index, served from memory


def _write(path: Path, year: int, *, changed: bool) -> None:
    """Twelve monthly fields. The changed version has other values (rounded, so it
    compresses better and is never larger: it can overwrite the original in place) and
    other times (held in the index: a stale index would serve the old ones)."""
    rng = np.random.default_rng(year)
    data = rng.normal(280.0, 10.0, size=(12, 32, 64)).astype("f4")
    time = (year - 2000) * 365 + np.arange(12) * 30 + 15.0
    if changed:
        data = np.round(data + 1.5, 1).astype("f4")
        time = time + 1.0
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("time", None)
        ds.createDimension("lat", 32)
        ds.createDimension("lon", 64)
        t = ds.createVariable("time", "f8", ("time",))
        t.units = "days since 2000-01-01"
        t.calendar = "standard"
        t[:] = time
        la = ds.createVariable("lat", "f8", ("lat",))
        la.units = "degrees_north"
        la[:] = np.linspace(-77.5, 77.5, 32)
        lo = ds.createVariable("lon", "f8", ("lon",))
        lo.units = "degrees_east"
        lo[:] = np.arange(64) * 5.625
        v = ds.createVariable("tas", "f4", ("time", "lat", "lon"), zlib=True, shuffle=True, chunksizes=CHUNK)
        v.units = "K"
        v[:] = data


def _reference(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """What netCDF4 reads from the file now: the first chunk of tas, and time."""
    with netCDF4.Dataset(path) as ds:
        return np.asarray(ds["tas"][0:4]), np.asarray(ds["time"][:])


class Case:
    def __init__(self, root: Path):
        self.root = root
        self.data = root / "data"
        self.data.mkdir()
        self.a = self.data / "a.nc"
        _write(self.a, 2000, changed=False)
        _write(self.data / "b.nc", 2001, changed=False)
        _write(self.data / "c.nc", 2002, changed=False)
        self.new = root / "a_changed.nc"
        _write(self.new, 2000, changed=True)
        assert self.new.stat().st_size <= self.a.stat().st_size
        self.config = root / "cloudify.yaml"
        self.config.write_text(
            "datasets:\n"
            f"  - name: multi\n    sources: [{self.a}, {self.data / 'b.nc'}]\n"
            f"  - name: other\n    sources: [{self.data / 'c.nc'}]\n"
        )
        self.proc = None
        self.url = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.url, self.proc, log = start_server(
            ["serve", "--config", str(self.config)], self.root, f"serve{self.starts}",
            extra_env={"CLOUDIFY_CACHE_DIR": str(self.root / "cache")},
        )
        status = wait_until_settled(self.url, ["multi", "other"], self.proc)
        states = {d["name"]: d["state"] for d in status["datasets"]}
        assert states == {"multi": "ready", "other": "ready"}, status

    def restart(self) -> None:
        stop_server(self.proc)
        self.start()

    def stop(self) -> None:
        stop_server(self.proc)

    def get(self, ds: str, key: str, **headers) -> requests.Response:
        return requests.get(f"{self.url}/datasets/{ds}/zarr/{key}", headers=headers, timeout=60)

    def values(self, ds: str, key: str) -> tuple[requests.Response, np.ndarray | None]:
        """A Zarr v2 chunk and its values decoded with the codecs .zarray declares."""
        r = self.get(ds, key)
        if r.status_code != 200:
            return r, None
        var = key.rsplit("/", 1)[0]
        meta = self.get(ds, f"{var}/.zarray").json()
        buf = r.content
        if meta["compressor"]:
            buf = numcodecs.get_codec(meta["compressor"]).decode(buf)
        for f in reversed(meta["filters"] or []):
            buf = numcodecs.get_codec(f).decode(buf)
        return r, np.frombuffer(bytes(buf), dtype=meta["dtype"]).reshape(meta["chunks"])

    def overwrite_in_place(self) -> None:
        """The changed version's bytes written over the file, zero-padded to its size
        (same inode, same size)."""
        size = self.a.stat().st_size
        new = self.new.read_bytes()
        with open(self.a, "r+b") as f:
            f.write(new + b"\0" * (size - len(new)))
        assert self.a.stat().st_size == size


def _changed_error(r: requests.Response, what: str) -> None:
    assert r.status_code >= 500, f"{what}: {r.status_code} {r.text[:300]}"
    msg = r.json()["error"]
    assert "a.nc" in msg and "changed since it was indexed" in msg, f"{what}: {msg}"


def _assert_fresh_or_refused(case: Case, before: dict, want_tas: np.ndarray, want_time: np.ndarray) -> None:
    """After a change, with the server still running: a 5xx naming the file, or the new
    data under a new ETag. Never 404 (read as fill value), never the old ETag's data."""
    for key, want in ((A_CHUNK, want_tas), (TIME, want_time)):
        r, got = case.values("multi", key)
        if r.status_code == 200:
            assert r.headers["ETag"] != before[key].headers["ETag"], f"{key}: new bytes under the old ETag"
            np.testing.assert_array_equal(got[: len(want)], want, err_msg=key)
        else:
            _changed_error(r, key)
        # A client revalidating its cached copy is not told it is still current.
        r = case.get("multi", key, **{"If-None-Match": before[key].headers["ETag"]})
        assert r.status_code != 304, f"{key}: 304 for the old version"
        if r.status_code != 200:
            _changed_error(r, f"{key} (If-None-Match)")
    r = case.get("multi", "tas/c/0/0/0")  # Zarr v3
    if r.status_code == 200:
        assert r.headers["ETag"] != before["v3"].headers["ETag"]
        got = np.frombuffer(numcodecs.Blosc().decode(r.content), dtype="<f4").reshape(CHUNK)
        np.testing.assert_array_equal(got, want_tas)
    else:
        _changed_error(r, "v3 chunk")
    # The other file of the dataset, and another dataset: unaffected.
    for ds, key in (("multi", B_CHUNK), ("other", A_CHUNK)):
        r = case.get(ds, key)
        assert r.status_code == 200, f"{ds}/{key}: {r.status_code} {r.text[:300]}"
        assert r.content == before[(ds, key)].content
        assert r.headers["ETag"] == before[(ds, key)].headers["ETag"]


def _snapshot(case: Case) -> dict:
    before = {}
    for key in (A_CHUNK, TIME):
        r, got = case.values("multi", key)
        assert r.status_code == 200, r.text
        before[key] = r
    before["v3"] = case.get("multi", "tas/c/0/0/0")
    assert before["v3"].status_code == 200
    for ds, key in (("multi", B_CHUNK), ("other", A_CHUNK)):
        before[(ds, key)] = case.get(ds, key)
        assert before[(ds, key)].status_code == 200
    return before


def _assert_reindexed(case: Case, before: dict) -> None:
    """After a restart: what netCDF4 reads from the file now, under a new ETag."""
    want_tas, want_time = _reference(case.a)
    r, got = case.values("multi", A_CHUNK)
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(got, want_tas)
    assert r.headers["ETag"] != before[A_CHUNK].headers["ETag"]
    r, got = case.values("multi", TIME)
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(got[: len(want_time)], want_time)
    assert case.get("multi", B_CHUNK).status_code == 200


def _touch(case: Case) -> None:
    os.utime(case.a)


def _overwrite(case: Case) -> None:
    case.overwrite_in_place()


def _mv(case: Case) -> None:
    tmp = case.data / "a.nc.part"
    shutil.copyfile(case.new, tmp)
    os.replace(tmp, case.a)


def _overwrite_keep_mtime(case: Case) -> None:
    st = case.a.stat()
    case.overwrite_in_place()
    os.utime(case.a, ns=(st.st_atime_ns, st.st_mtime_ns))  # touch -r
    now = case.a.stat()
    assert (now.st_size, now.st_mtime_ns, now.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)


CASES = {
    "touch": _touch,
    "overwrite_in_place": _overwrite,
    "mv_changed_copy": _mv,
    "same_size_and_mtime": _overwrite_keep_mtime,
}


@pytest.mark.parametrize("change", list(CASES))
def test_changed_file_is_never_served_stale(tmp_path, change):
    case = Case(tmp_path)
    case.start()
    try:
        before = _snapshot(case)
        time.sleep(0.05)  # file timestamps are coarse: a change happens after the index
        CASES[change](case)
        want_tas, want_time = _reference(case.a)
        _assert_fresh_or_refused(case, before, want_tas, want_time)
        case.restart()
        _assert_reindexed(case, before)
    finally:
        case.stop()


def test_kerchunk_route_refuses_a_changed_file(tmp_path):
    """/kerchunk serves stored bytes at indexed offsets: the same check applies."""
    case = Case(tmp_path)
    case.start()
    try:
        url = f"{case.url}/datasets/multi/kerchunk/{A_CHUNK}"
        r = requests.get(url, timeout=60)
        assert r.status_code == 200
        time.sleep(0.05)
        case.overwrite_in_place()
        for headers in ({}, {"If-None-Match": r.headers["ETag"]}):
            _changed_error(requests.get(url, headers=headers, timeout=60), f"kerchunk {headers}")
    finally:
        case.stop()
