"""OPeNDAP `.dods` answers are streamed (issue #17): a variable larger than one piece (32 MiB
of XDR) comes back whole and exact, with a `Content-Length` that matches the body; a chunk
that cannot be read fails the request with a DAP error (answers up to 1 GiB are read through
before their headers: netCDF-C takes a DAP2 body cut short as data), never a complete-looking
answer with wrong values; `.dap` (DAP4) ends a failed stream with an error chunk and then short;
a request above the streamed cap is a 413 DAP error before anything is read; string answers
(no Content-Length) are read through first too."""

from __future__ import annotations

import http.client
import shutil
import struct
import subprocess
import sys
import time
from urllib.parse import urlsplit

import h5py
import netCDF4
import numpy as np
import pytest
import requests
import zarr

from conftest import start_server, stop_server, wait_until_settled, write_config

# 100 steps of 384 x 512 float32: 78.6 MB of XDR, three 32 MiB pieces (42 + 42 + 16 steps).
SHAPE = (100, 384, 512)


def _values() -> np.ndarray:
    t, y, x = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), np.arange(SHAPE[2]), indexing="ij")
    return (250 + 0.01 * t + 0.1 * y - 0.05 * x + np.sin(x * t / 97.0)).astype("f4")


def _write(path, data, t0=0):
    """`data` (time steps t0.. of _values()) as a netCDF-4 file, one zlib chunk per step."""
    with netCDF4.Dataset(path, "w") as nc:
        for n, d in zip(("time", "lat", "lon"), data.shape):
            nc.createDimension(n, d)
            c = nc.createVariable(n, "f8", (n,))
            c[:] = np.arange(d, dtype="f8") + (t0 if n == "time" else 0)
        v = nc.createVariable("tas", "f4", ("time", "lat", "lon"), zlib=True, complevel=1,
                              chunksizes=(1, SHAPE[1], SHAPE[2]))
        v[:] = data


def _corrupt_chunk(path, step):
    """Overwrites the middle of the compressed chunk of time step `step` with zeros (an
    unreadable chunk, as a bad disk block or a truncated copy leaves it)."""
    with h5py.File(path, "r") as f:
        info = f["tas"].id.get_chunk_info_by_coord((step, 0, 0))
    with open(path, "r+b") as f:
        f.seek(info.byte_offset + info.size // 4)
        f.write(b"\0" * (info.size // 2))


def _write_strings(path):
    """A small Grid `tas` and a zlib-compressed char array `names` (2048 strings of 16: above
    the 16 KiB read into the index at start-up), whose one chunk is then corrupted."""
    with netCDF4.Dataset(path, "w") as nc:
        for n, d in (("time", 2), ("lat", 3), ("lon", 4)):
            nc.createDimension(n, d)
            c = nc.createVariable(n, "f8", (n,))
            c[:] = np.arange(d, dtype="f8")
        nc.createVariable("tas", "f4", ("time", "lat", "lon"))[:] = np.arange(24, dtype="f4").reshape(2, 3, 4)
        nc.createDimension("station", 2048)
        nc.createDimension("strlen", 16)
        v = nc.createVariable("names", "S1", ("station", "strlen"), zlib=True, chunksizes=(2048, 16))
        v[:] = netCDF4.stringtochar(np.array([f"st {i:04d} {i * 7919 % 10007:05d}" for i in range(2048)], "S16"))
    with h5py.File(path, "r") as f:
        info = f["names"].id.get_chunk_info_by_coord((0, 0))
    with open(path, "r+b") as f:
        f.seek(info.byte_offset + info.size // 4)
        f.write(b"\xff" * (info.size // 2))


@pytest.fixture(scope="module")
def big(tmp_path_factory, workdir):
    root = tmp_path_factory.mktemp("dapstream")
    data = _values()
    good, bad = root / "good.nc", root / "bad.nc"
    _write(good, data)
    _write(bad, data)
    _corrupt_chunk(bad, SHAPE[0] - 1)
    badstr = root / "badstr.nc"
    _write_strings(badstr)
    # Two files of 50 steps each, the second later corrupted in place (test below).
    halves = [root / "half0.nc", root / "half1.nc"]
    _write(halves[0], data[:50], 0)
    _write(halves[1], data[50:], 50)
    # A Zarr store declaring 160 GB of float64 (no chunk written: all fill value).
    huge = root / "huge.zarr"
    g = zarr.open_group(str(huge), mode="w", zarr_format=2)
    z = g.create_array("big", shape=(200_000, 100_000), chunks=(1000, 1000), dtype="f8", fill_value=0.0)
    z.attrs["_ARRAY_DIMENSIONS"] = ["y", "x"]
    zarr.consolidate_metadata(str(huge))
    specs = [{"name": "good", "sources": [str(good)]}, {"name": "bad", "sources": [str(bad)]},
             {"name": "huge", "sources": [str(huge)]}, {"name": "badstr", "sources": [str(badstr)]},
             {"name": "halves", "sources": [str(h) for h in halves]}]
    cfg = workdir / "opendap_stream.yaml"
    write_config(cfg, specs)
    url, proc, log = start_server(["serve", "--config", str(cfg)], workdir, "opendap_stream")
    try:
        wait_until_settled(url, [s["name"] for s in specs], proc)
        yield url, data, halves
    finally:
        stop_server(proc)


def _xdr_floats(body: bytes, name: bytes, n: int) -> np.ndarray:
    dds, sep, xdr = body.partition(b"\nData:\n")
    assert sep and name in dds
    c1, c2 = struct.unpack(">II", xdr[:8])
    assert c1 == c2 == n, (c1, c2, n)
    # The Grid's array comes first; its maps (time, lat, lon) follow it.
    assert len(xdr) >= 8 + 4 * n
    return np.frombuffer(xdr[8:8 + 4 * n], dtype=">f4").astype("f4")


def test_a_variable_of_several_pieces_is_whole_and_exact(big):
    base, data, _ = big
    r = requests.get(f"{base}/datasets/good/opendap.dods?tas", timeout=120)
    assert r.status_code == 200, r.text[:300]
    assert int(r.headers["Content-Length"]) == len(r.content)
    got = _xdr_floats(r.content, b"Float32 tas[time = 100][lat = 384][lon = 512]", data.size)
    np.testing.assert_array_equal(got.reshape(SHAPE), data)


def test_strided_selection_across_piece_boundaries(big):
    base, data, _ = big
    r = requests.get(f"{base}/datasets/good/opendap.dods?tas[1:3:98][5:7:380][0:100:511]", timeout=120)
    assert r.status_code == 200, r.text[:300]
    want = data[1:99:3, 5:381:7, 0:512:100]
    got = _xdr_floats(r.content, b"tas", want.size)
    np.testing.assert_array_equal(got.reshape(want.shape), want)


def test_netcdf_c_reads_the_streamed_answer(big):
    base, data, _ = big
    with netCDF4.Dataset(f"{base}/datasets/good/opendap") as nc:
        np.testing.assert_array_equal(nc["tas"][40:60, :, :], data[40:60])


def test_unreadable_first_piece_is_a_dap_error(big):
    base, _, _ = big
    r = requests.get(f"{base}/datasets/bad/opendap.dods?tas[99][0:1:383][0:1:511]", timeout=60)
    assert r.status_code == 500, r.status_code
    assert r.headers["Content-Description"] == "dods-error"
    assert r.text.startswith("Error {") and "tas" in r.text, r.text


def test_unreadable_later_piece_is_a_dap_error_before_any_data(big):
    """DAP2 cannot say "error" once data went out, and netCDF-C takes a body cut short as data
    (it printed "DAP DATADDS packet is apparently too short" and returned wrong values). An
    answer up to 1 GiB is therefore read through before its headers: the last step's chunk,
    in the third 32 MiB piece, makes the whole request a DAP error with its status."""
    base, data, _ = big
    r = requests.get(f"{base}/datasets/bad/opendap.dods?tas", timeout=120)
    assert r.status_code == 500, r.status_code
    assert r.headers["Content-Description"] == "dods-error"
    assert r.text.startswith("Error {") and "bad.nc" in r.text, r.text[:300]
    # netCDF-C (the netCDF4 wheel's) raises instead of returning values; in a child process,
    # so that a crash fails this test rather than ending pytest
    script = (
        "import sys, netCDF4\n"
        "nc = netCDF4.Dataset(sys.argv[1])\n"
        "try:\n"
        "    nc['tas'][:]\n"
        "except (OSError, RuntimeError) as e:\n"
        "    print('ERROR', e)\n"
        "    sys.exit(3)\n"
        "print('VALUES')\n"
    )
    run = subprocess.run([sys.executable, "-c", script, f"{base}/datasets/bad/opendap"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 3, (run.returncode, run.stdout, run.stderr[-2000:])
    # The server is still up and serves the readable part.
    ok = requests.get(f"{base}/datasets/bad/opendap.dods?tas[0:1:1][0][0]", timeout=60)
    assert ok.status_code == 200
    with netCDF4.Dataset(f"{base}/datasets/bad/opendap") as nc:
        np.testing.assert_array_equal(nc["tas"][0:99, 0:2, 0:3], data[0:99, 0:2, 0:3])


def test_a_repeated_answer_is_checked_again_after_a_file_changed(big):
    """A stored chunk that decoded once is not decoded again by the check before the headers
    (only its bytes are read and its file checked to be the version indexed). A file
    corrupted in place after a whole answer was read — its chunks all known — still makes
    the next answer a DAP error before any data: the change is seen by the file check, and
    the first 32 MiB piece (the first file, unchanged) goes out only after it."""
    base, data, halves = big
    url = f"{base}/datasets/halves/opendap.dods?tas"
    for _ in range(2):
        r = requests.get(url, timeout=120)
        assert r.status_code == 200, r.text[:300]
        assert int(r.headers["Content-Length"]) == len(r.content)
        np.testing.assert_array_equal(_xdr_floats(r.content, b"tas", data.size).reshape(SHAPE), data)
    time.sleep(0.05)  # past the index time on coarse file clocks
    _corrupt_chunk(halves[1], 40)
    r = requests.get(url, timeout=120)
    assert r.status_code == 500, (r.status_code, r.content[:300])
    assert r.headers["Content-Description"] == "dods-error"
    # "changed since it was indexed" (or, once the server has indexed the new version, the
    # corrupt chunk itself): either way named, before any data
    assert r.text.startswith("Error {") and "half1.nc" in r.text, r.text[:300]
    ok = requests.get(f"{base}/datasets/halves/opendap.dods?tas[0:1:49][0][0]", timeout=60)
    assert ok.status_code == 200, ok.text[:300]
    np.testing.assert_array_equal(_xdr_floats(ok.content, b"tas", 50), data[:50, 0, 0])


def test_unreadable_strings_after_the_first_values_are_a_dap_error(big):
    """A string answer's length is in its data, so it goes out without Content-Length, and a
    body that stopped early is all a client would get. It is read through before the headers
    like any answer up to 1 GiB: the corrupt `names` chunk, after the readable `tas` values,
    makes the request a DAP error with its status; the readable part is still served."""
    base, _, _ = big
    r = requests.get(f"{base}/datasets/badstr/opendap.dods?tas[0:1:0][0:1:0][0:1:0],names", timeout=60)
    assert r.status_code == 500, (r.status_code, r.content[:300])
    assert r.headers["Content-Description"] == "dods-error"
    assert r.text.startswith("Error {") and "names" in r.text and "badstr.nc" in r.text, r.text
    ok = requests.get(f"{base}/datasets/badstr/opendap.dods?tas[0:1:0][0:1:0][0:1:1]", timeout=60)
    assert ok.status_code == 200
    assert _xdr_floats(ok.content, b"tas", 2).tolist() == [0.0, 1.0]


def test_above_the_streamed_cap_is_413_before_reading(big):
    base, _, _ = big
    r = requests.get(f"{base}/datasets/huge/opendap.dods?big", timeout=60)
    assert r.status_code == 413, r.text
    assert r.headers["Content-Description"] == "dods-error"
    assert "limit" in r.text and "hyperslab" in r.text, r.text
    small = requests.get(f"{base}/datasets/huge/opendap.dods?big[0:1:1][0:1:2]", timeout=60)
    assert small.status_code == 200
    assert _xdr_floats_f8(small.content, 6).tolist() == [0.0] * 6


def _xdr_floats_f8(body: bytes, n: int) -> np.ndarray:
    _, _, xdr = body.partition(b"\nData:\n")
    assert struct.unpack(">II", xdr[:8]) == (n, n)
    return np.frombuffer(xdr[8:], dtype=">f8")


# --- the same over DAP4 (`.dap`): chunked, little-endian, optional CRC32 ----------------------


def _dap4_data(body: bytes) -> tuple[bytes, bytes]:
    """(DMR, data) of a `.dap` body, checking every chunk fits its 24-bit count."""
    p, out, dmr = 0, [], None
    while True:
        flags, n = body[p], int.from_bytes(body[p + 1:p + 4], "big")
        assert flags & 4 and not flags & 2, flags  # little-endian, no error chunk
        chunk = body[p + 4:p + 4 + n]
        assert len(chunk) == n
        if dmr is None:
            dmr = chunk
        else:
            out.append(chunk)
        p += 4 + n
        if flags & 1:
            assert p == len(body)
            return dmr, b"".join(out)


def test_dap4_variable_of_several_pieces_is_whole_exact_and_checksummed(big):
    import zlib

    base, data, _ = big
    r = requests.get(f"{base}/datasets/good/opendap.dap?dap4.ce=/tas&dap4.checksum=true", timeout=120)
    assert r.status_code == 200, r.text[:300]
    assert int(r.headers["Content-Length"]) == len(r.content)
    dmr, values = _dap4_data(r.content)
    assert b'<Float32 name="tas">' in dmr
    want = data.astype("<f4").tobytes()
    assert len(values) == len(want) + 4
    assert values[:-4] == want
    assert struct.unpack("<I", values[-4:])[0] == zlib.crc32(want)


def test_dap4_strided_selection_across_piece_boundaries(big):
    base, data, _ = big
    r = requests.get(f"{base}/datasets/good/opendap.dap?dap4.ce=/tas[1:3:98][5:7:380][0:100:511]&dap4.checksum=false", timeout=120)
    assert r.status_code == 200, r.text[:300]
    _, values = _dap4_data(r.content)
    want = data[1:99:3, 5:381:7, 0:512:100]
    np.testing.assert_array_equal(np.frombuffer(values, "<f4").reshape(want.shape), want)


def test_pydap_dap4_reads_the_streamed_answer(big):
    from pydap.client import open_url

    base, data, _ = big
    ds = open_url(f"{base}/datasets/good/opendap", protocol="dap4")
    np.testing.assert_array_equal(np.asarray(ds["tas"][40:60:3, :, 7:8].data), data[40:60:3, :, 7:8])


def test_dap4_unreadable_first_piece_is_a_dap4_error(big):
    base, _, _ = big
    r = requests.get(f"{base}/datasets/bad/opendap.dap?dap4.ce=/tas[99][0:1:383][0:1:511]", timeout=60)
    assert r.status_code == 500, r.status_code
    assert r.headers["Content-Type"].startswith("application/vnd.opendap.dap4.error+xml")
    assert "<Error httpcode=\"500\">" in r.text and "tas" in r.text, r.text


def test_dap4_unreadable_later_piece_ends_with_an_error_chunk_and_cuts_the_body_short(big):
    """The headers (200, Content-Length) go out with the first piece; the last step's chunk
    fails later. The body then carries a DAP4 error chunk naming the file and ends short of
    its Content-Length."""
    base, _, _ = big
    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.request("GET", "/datasets/bad/opendap.dap?dap4.ce=/tas")
    resp = conn.getresponse()
    assert resp.status == 200
    declared = int(resp.getheader("Content-Length"))
    with pytest.raises(http.client.IncompleteRead) as e:
        resp.read()
    body = e.value.partial
    assert len(body) < declared
    conn.close()
    p, last = 0, None
    while p < len(body):
        flags, n = body[p], int.from_bytes(body[p + 1:p + 4], "big")
        last = (flags, body[p + 4:p + 4 + n])
        p += 4 + n
    assert p == len(body), "the body ends on a chunk boundary"
    flags, doc = last
    assert flags == 4 | 2 | 1, flags  # little-endian, error, last
    assert b'<Error httpcode="500">' in doc and b"bad.nc" in doc, doc


def test_dap4_clients_fail_on_a_failed_answer_instead_of_reading_values(big):
    """pydap (3.5) ignores the chunk header's error flag and joins every chunk's bytes, so the
    short body is what stops it; netCDF-C reads the error chunk (a body that merely stopped
    made Debian's ncdump and the netCDF4 wheel segfault). Both raise, neither returns values."""
    from pydap.client import open_url

    base, data, _ = big
    ds = open_url(f"{base}/datasets/bad/opendap", protocol="dap4")
    np.testing.assert_array_equal(np.asarray(ds["tas"][0:2, 0:3, 0:4].data), data[0:2, 0:3, 0:4])
    with pytest.raises(Exception) as e:
        np.asarray(ds["tas"][:].data)
    assert not isinstance(e.value, AssertionError)
    # netCDF-C in a child process: a crash there must fail this test, not end pytest
    script = (
        "import sys, netCDF4\n"
        "nc = netCDF4.Dataset(sys.argv[1])\n"
        "try:\n"
        "    nc['tas'][0:1, 0:1, 0:1]\n"
        "except (OSError, RuntimeError) as e:\n"
        "    print('ERROR', e)\n"
        "    sys.exit(3)\n"
        "print('VALUES')\n"
    )
    url = f"{base}/datasets/bad/opendap".replace("http://", "dap4://", 1)
    run = subprocess.run([sys.executable, "-c", script, url], capture_output=True, text=True, timeout=120)
    if run.returncode == 1 and "DAP" in run.stderr:
        pytest.skip(f"this netCDF4 wheel cannot open dap4:// ({run.stderr[-300:]})")
    assert run.returncode == 3, (run.returncode, run.stdout, run.stderr[-2000:])
    assert "no data" in run.stdout, run.stdout
    if shutil.which("ncdump"):
        nd = subprocess.run(["ncdump", "-v", "tas", url], capture_output=True, text=True, timeout=120)
        assert nd.returncode == 1, (nd.returncode, nd.stderr[-2000:])  # an error, not a crash (139)
        values = nd.stdout.partition(" tas =")[2]
        assert not any(c.isdigit() for c in values), values[:300]  # the header, then no values


def test_dap4_above_the_streamed_cap_is_413_before_reading(big):
    base, _, _ = big
    r = requests.get(f"{base}/datasets/huge/opendap.dap?dap4.ce=/big", timeout=60)
    assert r.status_code == 413, r.text
    assert "limit" in r.text and "dap4.ce" in r.text, r.text
    small = requests.get(f"{base}/datasets/huge/opendap.dap?dap4.ce=/big[0:1:1][0:1:2]&dap4.checksum=false", timeout=60)
    assert small.status_code == 200
    assert np.frombuffer(_dap4_data(small.content)[1], "<f8").tolist() == [0.0] * 6
