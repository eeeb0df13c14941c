#!/usr/bin/env python
"""Generate the edge-case netCDF corpus used by the cloudify end-to-end tests.

Usage:  python make_edge_cases.py OUTDIR

Importable: ``generate(outdir)`` writes every file and returns the list of
dataset specs (see ``DATASETS``) with absolute source paths filled in.

Every file is deterministic (fixed seeds, fixed values), so a failing test
can be reproduced by re-running this script.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import netCDF4
import numpy as np

# ---------------------------------------------------------------------------
# Dataset specs.  ``sources`` are relative to OUTDIR (globs allowed).
#   expect:    "ready" or "failed"
#   bad_file:  for failed datasets, the file name the error must mention
#   groups:    netCDF groups (besides the root) the dataset exposes
#   concat:    True when the dataset is an aggregation (compare with
#              xr.open_mfdataset), False for single files (xr.open_dataset)
# ---------------------------------------------------------------------------
DATASETS: list[dict] = [
    dict(name="edge_packed", sources=["packed.nc"]),
    dict(name="edge_nanfill", sources=["nanfill.nc"]),
    dict(name="edge_strings", sources=["strings.nc"]),
    dict(name="edge_classic", sources=["classic.nc"]),
    dict(name="edge_classic1rec", sources=["classic1rec.nc"]),
    dict(name="edge_offset64", sources=["offset64.nc"]),
    dict(name="edge_groups", sources=["groups.nc"], groups=["g1", "g1/sub", "g2"]),
    dict(name="edge_unlim0", sources=["unlim0.nc"]),
    dict(name="edge_tiny", sources=["tiny.nc"]),
    dict(name="edge_alltypes", sources=["alltypes.nc"]),
    dict(name="edge_contig_big", sources=["contig_big.nc"]),
    dict(name="edge_edgechunks", sources=["edgechunks.nc"]),
    dict(name="edge_sparse", sources=["sparse.nc"]),
    dict(name="edge_cal_noleap", sources=["cal_noleap.nc"]),
    dict(name="edge_cal_360", sources=["cal_360.nc"]),
    dict(name="edge_names", sources=["names.nc"]),
    dict(name="edge_filters", sources=["filters.nc"]),
    # Fletcher-32 in every pipeline position netCDF-C and h5py write (see make_fletcher).
    dict(name="edge_fletcher", sources=["fletcher.nc"]),
    # Aggregation: deliberately listed out of (time) order; file names are
    # also not in time order (part1=2001, part2=2000, part3=2002).
    dict(
        name="edge_series",
        sources=["series/part3.nc", "series/part1.nc", "series/part2.nc"],
        concat=True,
    ),
    dict(
        name="edge_series_glob",
        sources=["series/part*.nc"],
        concat=True,
        concat_dim="time",
    ),
    # Bad aggregations: the dataset must fail, the error must name bad_file.
    dict(
        name="edge_bad_lat",
        sources=["bad_lat/a.nc", "bad_lat/b.nc"],
        concat=True,
        expect="failed",
        bad_file="b.nc",
    ),
    dict(
        name="edge_bad_corrupt",
        sources=["bad_corrupt/a.nc", "bad_corrupt/b.nc"],
        concat=True,
        expect="failed",
        bad_file="b.nc",
    ),
    # Different CF time units per file (as some CMIP6 models write): rebased to the
    # earliest file's units, exactly like xarray decodes and re-encodes them.
    dict(
        name="edge_series_units",
        sources=["series_units/b.nc", "series_units/a.nc"],
        concat=True,
    ),
    # Units that are not CF time units cannot be reconciled.
    dict(
        name="edge_bad_units",
        sources=["bad_units/a.nc", "bad_units/b.nc"],
        concat=True,
        expect="failed",
        bad_file="b.nc",
    ),
    dict(
        name="edge_bad_calendar",
        sources=["bad_calendar/a.nc", "bad_calendar/b.nc"],
        concat=True,
        expect="failed",
        bad_file="b.nc",
    ),
    dict(
        name="edge_missing_file",
        sources=["does_not_exist/missing.nc"],
        expect="failed",
        bad_file="missing.nc",
    ),
]


def _spec_defaults(d: dict) -> dict:
    d = dict(d)
    d.setdefault("groups", [])
    d.setdefault("concat", False)
    d.setdefault("concat_dim", None)
    d.setdefault("expect", "ready")
    d.setdefault("bad_file", None)
    return d


def specs() -> list[dict]:
    """Specs with defaults, sources still relative (usable at collection)."""
    return [_spec_defaults(d) for d in DATASETS]


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def _new(path: Path, fmt: str = "NETCDF4") -> netCDF4.Dataset:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    ds = netCDF4.Dataset(str(path), "w", format=fmt)
    ds.set_auto_maskandscale(False)
    ds.set_auto_chartostring(False)
    return ds


def _raw(var: netCDF4.Variable) -> netCDF4.Variable:
    var.set_auto_maskandscale(False)
    var.set_auto_chartostring(False)
    return var


def _chars(strings: list[str], strlen: int) -> np.ndarray:
    return netCDF4.stringtochar(np.array(strings, dtype=f"S{strlen}"))


# ---------------------------------------------------------------------------
# individual files
# ---------------------------------------------------------------------------
def make_packed(p: Path) -> None:
    ds = _new(p)
    ds.title = "packed int16 with scale_factor/add_offset and _FillValue"
    ds.createDimension("time", None)
    ds.createDimension("lat", 6)
    ds.createDimension("lon", 8)
    t = _raw(ds.createVariable("time", "f8", ("time",)))
    t.units = "hours since 2000-01-01 00:00:00"
    t.calendar = "standard"
    t.standard_name = "time"
    t[:] = np.arange(5) * 6.0
    lat = ds.createVariable("lat", "f4", ("lat",))
    lat.units = "degrees_north"
    lat[:] = np.linspace(-75, 75, 6, dtype="f4")
    lon = ds.createVariable("lon", "f4", ("lon",))
    lon.units = "degrees_east"
    lon[:] = np.arange(8, dtype="f4") * 45
    v = _raw(
        ds.createVariable(
            "t2m", "i2", ("time", "lat", "lon"), fill_value=np.int16(-32767),
            zlib=True, shuffle=True, chunksizes=(2, 6, 8),
        )
    )
    v.scale_factor = np.float32(0.01)
    v.add_offset = np.float32(273.15)
    v.units = "K"
    v.long_name = "2 metre temperature (packed)"
    rng = np.random.default_rng(1)
    data = rng.integers(-3000, 3000, size=(5, 6, 8)).astype("i2")
    data[0, 0, :3] = -32767
    data[4, 5, 7] = -32767
    data[2, 3, 4] = 32767
    data[2, 3, 5] = -32766
    v[:] = data
    u = _raw(ds.createVariable("cover", "u1", ("lat", "lon"), fill_value=np.uint8(255)))
    u.scale_factor = 0.5  # float64
    u.add_offset = -10.0
    u.units = "%"
    cov = (np.arange(48) * 5 % 250).astype("u1").reshape(6, 8)
    cov[1, 1] = 255
    u[:] = cov
    # scale_factor only (no add_offset), int32 -> float64 decode
    w = _raw(ds.createVariable("wind", "i4", ("lat", "lon")))
    w.scale_factor = np.float32(0.001)
    w[:] = (np.arange(48, dtype="i4") * 12345 - 200000).reshape(6, 8)
    ds.close()


def make_nanfill(p: Path) -> None:
    ds = _new(p)
    ds.createDimension("y", 4)
    ds.createDimension("x", 5)
    a = ds.createVariable("a", "f4", ("y", "x"))  # NaNs, no _FillValue attr
    d = np.arange(20, dtype="f4").reshape(4, 5) / 3
    d[0, 0] = np.nan
    d[3, 4] = np.nan
    d[1, 2] = np.inf
    d[2, 2] = -np.inf
    a[:] = d
    b = _raw(ds.createVariable("b", "f4", ("y", "x"), fill_value=np.float32(-999.0)))
    b.missing_value = np.float32(-998.0)
    d = np.arange(20, dtype="f4").reshape(4, 5) * 1.5
    d[0, 1] = -999.0
    d[1, 1] = -998.0
    d[2, 1] = np.nan
    b[:] = d
    c = _raw(ds.createVariable("c", "f8", ("y", "x"), fill_value=np.nan))
    d = np.linspace(-1, 1, 20).reshape(4, 5)
    d[3, 0] = np.nan
    c[:] = d
    e = _raw(ds.createVariable("e", "i4", ("y", "x")))
    e.missing_value = np.int32(-1)
    d = np.arange(20, dtype="i4").reshape(4, 5)
    d[0, ::2] = -1
    e[:] = d
    ds.close()


def make_strings(p: Path) -> None:
    ds = _new(p)
    ds.createDimension("station", 4)
    ds.createDimension("strlen", 8)
    st = ds.createVariable("station", "i4", ("station",))
    st[:] = np.arange(4) + 100
    names = ["alpha", "b", "", "longname"]
    n = _raw(ds.createVariable("name", "S1", ("station", "strlen")))
    n.long_name = "station name (char array)"
    n[:] = _chars(names, 8)
    n8 = _raw(ds.createVariable("name_utf8", "S1", ("station", "strlen")))
    n8._Encoding = "utf-8"
    n8[:] = _chars(["zuerich", "oslo", "x", "abcdefgh"], 8)
    lab = ds.createVariable("label", str, ("station",))
    lab.long_name = "vlen string"
    for i, s in enumerate(["Zürich", "", "a label with spaces", "日本語"]):
        lab[i] = s
    ds.close()


def _make_classic_common(ds, fmt_tag: str) -> None:
    ds.setncattr("title", f"netCDF3 {fmt_tag} test file")
    ds.setncattr("g_byte", np.int8(-3))
    ds.setncattr("g_short", np.int16(-300))
    ds.setncattr("g_int", np.int32(70000))
    ds.setncattr("g_float", np.float32(2.5))
    ds.setncattr("g_double", np.float64(1.0e-300))
    ds.setncattr("g_intarr", np.array([1, 2, 3], dtype="i4"))
    ds.setncattr("g_dblarr", np.array([0.5, -0.25], dtype="f8"))


def make_classic(p: Path) -> None:
    ds = _new(p, "NETCDF3_CLASSIC")
    _make_classic_common(ds, "classic")
    ds.createDimension("time", None)
    ds.createDimension("y", 3)
    ds.createDimension("x", 4)
    ds.createDimension("strlen", 6)
    nrec = 5
    t = ds.createVariable("time", "f8", ("time",))
    t.units = "days since 1990-01-01"
    t.calendar = "gregorian"
    t[:] = np.arange(nrec) * 1.5
    y = ds.createVariable("y", "f8", ("y",))
    y[:] = [10.0, 20.0, 30.0]
    x = ds.createVariable("x", "f4", ("x",))
    x[:] = [-1.5, -0.5, 0.5, 1.5]
    # multiple record variables of different sizes/types (interleaved records)
    temp = _raw(ds.createVariable("temp", "f4", ("time", "y", "x"), fill_value=np.float32(-9999.0)))
    temp.units = "degC"
    d = (np.arange(nrec * 12, dtype="f4").reshape(nrec, 3, 4) - 20) / 4
    d[1, 1, 1] = -9999.0
    temp[:] = d
    cnt = ds.createVariable("count", "i4", ("time",))
    cnt[:] = np.array([1, -2, 300000, -400000, 5], dtype="i4")
    flag = ds.createVariable("flag", "i1", ("time",))  # 1 byte per record -> padded
    flag[:] = np.array([-128, -1, 0, 1, 127], dtype="i1")
    pres = ds.createVariable("pres", "f8", ("time", "y"))
    pres[:] = np.arange(nrec * 3, dtype="f8").reshape(nrec, 3) * 100.25
    code = _raw(ds.createVariable("code", "S1", ("time", "strlen")))
    code[:] = _chars(["r0", "rec1", "rec222", "", "x"], 6)
    sh = ds.createVariable("shortrec", "i2", ("time", "y"))  # 6 bytes per record -> padded to 8
    sh[:] = (np.arange(nrec * 3) * 1000 - 7000).astype("i2").reshape(nrec, 3)
    # fixed variables
    mask = ds.createVariable("mask", "i2", ("y", "x"))
    mask[:] = np.array([[0, 1, 2, 3], [-1, -2, -3, -4], [32767, -32768, 5, 6]], dtype="i2")
    elev = _raw(ds.createVariable("elev", "f4", ("y", "x"), fill_value=np.float32(1e20)))
    elev.units = "m"
    e = np.arange(12, dtype="f4").reshape(3, 4) * 12.5
    e[2, 3] = 1e20
    elev[:] = e
    name = _raw(ds.createVariable("name", "S1", ("y", "strlen")))
    name[:] = _chars(["north", "mid", "south!"], 6)
    sc = ds.createVariable("scalar_c", "f8", ())
    sc.long_name = "netCDF3 scalar"
    sc[...] = 6.25
    bytevar = ds.createVariable("bytes3", "i1", ("y",))  # odd-sized fixed var (padding)
    bytevar[:] = np.array([1, -2, 3], dtype="i1")
    ds.close()


def make_classic1rec(p: Path) -> None:
    """Exactly one record variable of a small type: records are NOT padded."""
    ds = _new(p, "NETCDF3_CLASSIC")
    ds.createDimension("time", None)
    ds.createDimension("n", 3)
    s = ds.createVariable("s", "i2", ("time", "n"))
    s.long_name = "only record variable, 6 bytes per record"
    s[:] = (np.arange(7 * 3) * 3 - 30).astype("i2").reshape(7, 3)
    f = ds.createVariable("fixed", "f4", ("n",))
    f[:] = [1.0, 2.0, 3.0]
    ds.close()


def make_offset64(p: Path) -> None:
    ds = _new(p, "NETCDF3_64BIT_OFFSET")
    _make_classic_common(ds, "64-bit offset")
    ds.createDimension("time", None)
    ds.createDimension("lat", 5)
    ds.createDimension("lon", 6)
    nrec = 7
    tm = ds.createVariable("time", "f8", ("time",))
    tm.units = "hours since 2010-06-01 00:00"
    tm.calendar = "proleptic_gregorian"
    tm[:] = np.arange(nrec) * 3.0
    lat = ds.createVariable("lat", "f4", ("lat",))
    lat[:] = np.linspace(-60, 60, 5)
    lon = ds.createVariable("lon", "f4", ("lon",))
    lon[:] = np.linspace(0, 300, 6)
    t = ds.createVariable("t", "f8", ("time", "lat", "lon"))
    t[:] = np.sin(np.arange(nrec * 30).reshape(nrec, 5, 6) / 7.0)
    q = _raw(ds.createVariable("q", "i2", ("time", "lat", "lon"), fill_value=np.int16(-32768)))
    q.scale_factor = 0.0001
    q.add_offset = 1.0
    d = (np.arange(nrec * 30) * 37 % 20000 - 10000).astype("i2").reshape(nrec, 5, 6)
    d[0, 0, 0] = -32768
    q[:] = d
    b = ds.createVariable("b", "i1", ("time",))
    b[:] = np.arange(nrec, dtype="i1") - 3
    orog = ds.createVariable("orog", "f4", ("lat", "lon"))
    orog[:] = np.arange(30, dtype="f4").reshape(5, 6) * 10
    ds.close()


def make_groups(p: Path) -> None:
    ds = _new(p)
    ds.title = "nested groups"
    ds.createDimension("x", 3)
    x = ds.createVariable("x", "i4", ("x",))
    x[:] = [1, 2, 3]
    rv = ds.createVariable("root_v", "f4", ("x",))
    rv.units = "1"
    rv[:] = [0.5, 1.5, 2.5]
    g1 = ds.createGroup("g1")
    g1.setncattr("group_attr", "I am g1")
    g1.setncattr("g1_num", np.int32(11))
    g1.createDimension("y", 4)
    y = g1.createVariable("y", "f8", ("y",))
    y[:] = [10.0, 20.0, 30.0, 40.0]
    v = g1.createVariable("v", "f4", ("y",))
    v.long_name = "g1 v"
    v[:] = [1.0, 2.0, 3.0, 4.0]
    xy = g1.createVariable("g1_xy", "i2", ("x", "y"), zlib=True, chunksizes=(2, 3))  # x from root
    xy[:] = np.arange(12, dtype="i2").reshape(3, 4)
    sub = g1.createGroup("sub")
    sub.setncattr("group_attr", "I am g1/sub")
    sub.createDimension("z", 2)
    z = sub.createVariable("z", "i8", ("z",))
    z[:] = [100, 200]
    sv = sub.createVariable("sub_v", "f8", ("z", "y"))  # y inherited from g1
    sv[:] = np.arange(8, dtype="f8").reshape(2, 4) / 8
    ss = sub.createVariable("sub_scalar", "i4", ())
    ss[...] = 42
    g2 = ds.createGroup("g2")
    g2.setncattr("group_attr", "I am g2")
    g2.createDimension("y", 2)  # same dim name as g1/y, different length
    y2 = g2.createVariable("y", "f8", ("y",))
    y2[:] = [-1.0, -2.0]
    v2 = g2.createVariable("v", "i4", ("y",))  # same var name as g1/v
    v2[:] = [7, 8]
    ds.close()


def make_unlim0(p: Path) -> None:
    ds = _new(p)
    ds.createDimension("time", None)  # never written -> length 0
    ds.createDimension("x", 5)
    t = ds.createVariable("time", "f8", ("time",))
    t.units = "days since 2000-01-01"
    v = ds.createVariable("v", "f4", ("time", "x"))
    v.long_name = "empty record variable"
    x = ds.createVariable("x", "i4", ("x",))
    x[:] = np.arange(5)
    ds.close()


def make_tiny(p: Path) -> None:
    ds = _new(p)
    ds.createDimension("one", 1)
    o = ds.createVariable("one_v", "f8", ("one",))
    o.long_name = "single element"
    o[:] = [42.0]
    s = ds.createVariable("s", "f8", ())
    s.long_name = "0-d double"
    s.units = "m"
    s[...] = 3.5
    si = ds.createVariable("si", "i4", ())
    si[...] = -7
    sb = ds.createVariable("sb", "u1", ())
    sb[...] = 200
    ds.close()


_TYPES = ["i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f4", "f8"]


def _type_values(t: str) -> np.ndarray:
    dt = np.dtype(t)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        vals = [info.min, info.min + 1, 0, 1, info.max - 1, info.max]
    else:
        info = np.finfo(dt)
        vals = [-info.max, -1.5, 0.0, info.tiny, 1e-3, info.max]
    return np.array(vals, dtype=dt)


def make_alltypes(p: Path) -> None:
    ds = _new(p)
    ds.createDimension("n", 6)
    for t in _TYPES:
        dt = np.dtype(t)
        vals = _type_values(t)
        # global attributes of every type: scalar and array
        ds.setncattr(f"g_{t}", vals[-1])
        ds.setncattr(f"g_{t}_arr", vals[:3])
        v = ds.createVariable(f"v_{t}", t, ("n",))
        v.setncattr(f"att_{t}", dt.type(vals[1]))
        v.setncattr(f"att_{t}_arr", vals)
        v.setncattr("att_text", f"type {t}")
        v[:] = vals
    ds.setncattr("g_text", "plain NC_CHAR text")
    ds.setncattr("g_text_unicode", "Zürich ∑ 日本")
    ds.setncattr("g_text_empty", "")
    ds.setncattr_string("g_nc_string", "an NC_STRING attribute")
    ds.setncattr("g_nc_string_arr", ["first", "second", "third"])
    ds.setncattr("g_one_elem_arr", np.array([5], dtype="i4"))  # served as scalar
    ds.setncattr("g_f8_special", np.array([1e308, -0.0, 5e-324], dtype="f8"))
    ds.close()


def make_contig_big(p: Path) -> None:
    ds = _new(p)
    ds.createDimension("t", 50)
    ds.createDimension("y", 320)
    ds.createDimension("x", 320)
    y = ds.createVariable("y", "f4", ("y",))
    y[:] = np.arange(320, dtype="f4") * 0.5
    x = ds.createVariable("x", "f4", ("x",))
    x[:] = np.arange(320, dtype="f4") * 0.25
    big = ds.createVariable("big", "f4", ("t", "y", "x"), contiguous=True)
    big.long_name = "~20 MB contiguous variable"
    yy, xx = np.meshgrid(np.arange(320, dtype="f4"), np.arange(320, dtype="f4"), indexing="ij")
    for i in range(50):
        big[i] = (np.sin(yy / 17.0 + i) * np.cos(xx / 23.0) * 100 + i).astype("f4")
    z = ds.createVariable("zvar", "f4", ("t", "y", "x"), zlib=True, complevel=4, shuffle=True,
                          chunksizes=(10, 64, 64))
    z.long_name = "compressed chunked companion"
    for i in range(0, 50, 10):
        z[i:i + 10] = (np.arange(10 * 320 * 320, dtype="f4").reshape(10, 320, 320) % 977 + i)
    ds.close()


def make_edgechunks(p: Path) -> None:
    ds = _new(p)
    ds.createDimension("a", 25)
    ds.createDimension("b", 37)
    ds.createDimension("c", 41)
    ds.createDimension("n", 100)
    e = ds.createVariable("e", "f8", ("a", "b", "c"), zlib=True, complevel=4, shuffle=True,
                          chunksizes=(10, 16, 16))
    e.long_name = "chunks (10,16,16) do not divide (25,37,41)"
    e[:] = np.arange(25 * 37 * 41, dtype="f8").reshape(25, 37, 41) * 0.125 - 1000
    e2 = ds.createVariable("e2", "i4", ("n",), chunksizes=(30,))
    e2[:] = np.arange(100, dtype="i4") ** 2
    e3 = ds.createVariable("e3", "u2", ("b", "c"), zlib=True, chunksizes=(4, 4))
    e3[:] = (np.arange(37 * 41) % 65535).astype("u2").reshape(37, 41)
    ds.close()


def make_sparse(p: Path) -> None:
    ds = _new(p)
    ds.createDimension("y", 40)
    ds.createDimension("x", 40)
    ds.createDimension("n", 20)
    sp = _raw(ds.createVariable("sp", "f4", ("y", "x"), chunksizes=(10, 10), fill_value=np.float32(-1.0)))
    sp.long_name = "only some chunks written, explicit _FillValue"
    sp[0:10, 0:10] = np.arange(100, dtype="f4").reshape(10, 10)
    sp[20:30, 10:20] = 5.0
    sp[35:38, 35:38] = 7.0  # partial chunk
    sn = ds.createVariable("sp_nofill", "i2", ("y", "x"), chunksizes=(10, 10), zlib=True)
    sn.long_name = "only some chunks written, default netCDF fill value"
    sn[10:20, 30:40] = np.arange(100, dtype="i2").reshape(10, 10)
    sf = ds.createVariable("sp_nofill_f", "f8", ("n",), chunksizes=(5,))
    sf[5:10] = np.arange(5, dtype="f8") + 0.5
    ds.close()


def make_cal_noleap(p: Path) -> None:
    ds = _new(p)
    ds.createDimension("time", None)
    ds.createDimension("nv", 2)
    n = 730
    t = ds.createVariable("time", "f8", ("time",))
    t.units = "days since 2001-01-01 00:00:00"
    t.calendar = "noleap"
    t.bounds = "time_bnds"
    t.standard_name = "time"
    t[:] = np.arange(n) + 0.5
    tb = ds.createVariable("time_bnds", "f8", ("time", "nv"))
    tb[:] = np.stack([np.arange(n), np.arange(n) + 1.0], axis=1)
    v = ds.createVariable("tas", "f4", ("time",), zlib=True, chunksizes=(100,))
    v.units = "K"
    v[:] = 280 + 10 * np.sin(np.arange(n) * 2 * np.pi / 365).astype("f4")
    ds.close()


def make_cal_360(p: Path) -> None:
    ds = _new(p)
    ds.createDimension("time", 720)
    t = ds.createVariable("time", "i4", ("time",))  # integer time axis
    t.units = "days since 2000-01-01"
    t.calendar = "360_day"
    t[:] = np.arange(720)  # includes 2000-02-30 etc.
    v = ds.createVariable("pr", "f8", ("time",))
    v.units = "kg m-2 s-1"
    v[:] = np.arange(720) / 720.0
    ds.close()


def make_names(p: Path) -> None:
    """Variable names that collide with Zarr syntax or need URL escaping."""
    ds = _new(p)
    ds.createDimension("x", 3)
    for n in ["x", "with space", "température", "a.b", "c", "zarr.json", "0"]:
        v = ds.createVariable(n, "f4", ("x",))
        v.long_name = f"variable named {n!r}"
        v[:] = np.arange(3, dtype="f4") + len(n)
    ds.close()


def make_filters(p: Path) -> None:
    """HDF5 storage variants: big-endian on disk, fletcher32, zlib without
    shuffle, lossy quantization (plain zlib underneath)."""
    import warnings

    ds = _new(p)
    ds.createDimension("x", 1000)
    ds.createDimension("y", 7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        v = ds.createVariable("be", "f8", ("x",), endian="big", zlib=True, chunksizes=(300,))
        v[:] = np.arange(1000) / 7
        v = ds.createVariable("be_contig", "i4", ("x",), endian="big")
        v[:] = np.arange(1000) * -3
        v = ds.createVariable("u64big", "u8", ("x",), endian="big")
        v[:] = np.arange(1000, dtype="u8") * 2**50
    v = ds.createVariable("f32", "f4", ("x", "y"), fletcher32=True, chunksizes=(100, 7))
    v[:] = np.arange(7000, dtype="f4").reshape(1000, 7)
    v = ds.createVariable("noshuf", "i2", ("x",), zlib=True, shuffle=False, complevel=9, chunksizes=(128,))
    v[:] = np.arange(1000)
    v = ds.createVariable("q", "f4", ("x",), zlib=True, significant_digits=3)
    v[:] = np.arange(1000) / 3
    ds.close()


# HDF5 filter ids (H5Zpublic.h) and the pipelines make_fletcher must produce, by variable:
# netCDF-C puts fletcher32 first, h5py appends it after the compressor.
_DEFLATE, _SHUFFLE, _FLETCHER32, _ZSTD = 1, 2, 3, 32015
FLETCHER_PIPELINES = {
    "fl_shuf_zlib": [_FLETCHER32, _SHUFFLE, _DEFLATE],
    "fl_zlib": [_FLETCHER32, _DEFLATE],
    "fl_shuf_i2": [_FLETCHER32, _SHUFFLE, _DEFLATE],
    "fl_zstd": [_FLETCHER32, _ZSTD],
    "h5_gzip_fl": [_DEFLATE, _FLETCHER32],
    "h5_shuf_gzip_fl": [_SHUFFLE, _DEFLATE, _FLETCHER32],
    "h5_shuf_fl": [_SHUFFLE, _FLETCHER32],
}


def make_fletcher(p: Path) -> None:
    """Fletcher-32 checksums in every pipeline position: first, as netCDF-C writes them
    (netCDF4-python ``fletcher32=True`` with shuffle+zlib or zstd: the checksum is shuffled
    and compressed with the data), and last, as h5py writes them (``create_dataset(...,
    fletcher32=True, compression="gzip")``: the checksum covers the compressed stream).
    The h5py datasets are added to the netCDF-4 file, attached to its dimensions, so
    netCDF4/xarray read them as ordinary variables. Edge chunks included."""
    ds = _new(p)
    ds.createDimension("x", 1000)
    ds.createDimension("y", 7)
    x = ds.createVariable("x", "i4", ("x",))
    x[:] = np.arange(1000)
    v = ds.createVariable("fl_shuf_zlib", "f4", ("x", "y"), fletcher32=True, shuffle=True, zlib=True,
                          chunksizes=(100, 7))
    v[:] = np.sin(np.arange(7000, dtype="f4").reshape(1000, 7) / 50)
    v = ds.createVariable("fl_zlib", "f8", ("x",), fletcher32=True, shuffle=False, zlib=True,
                          chunksizes=(300,))
    v[:] = np.arange(1000) / 7
    v = _raw(ds.createVariable("fl_shuf_i2", "i2", ("x", "y"), fletcher32=True, shuffle=True, zlib=True,
                               chunksizes=(64, 4), fill_value=np.int16(-999)))
    d = (np.arange(7000) % 3001 - 1500).astype("i2").reshape(1000, 7)
    d[5, 5] = -999
    v[:] = d
    v = ds.createVariable("fl_zstd", "f4", ("x", "y"), fletcher32=True, shuffle=True, compression="zstd",
                          chunksizes=(250, 7))
    v[:] = np.arange(7000, dtype="f4").reshape(1000, 7) * 0.25
    ds.close()
    # h5py links its own HDF5 library: keep it out of this process, which holds netCDF4's.
    subprocess.run([sys.executable, __file__, "--h5py-fletcher", str(p)], check=True)
    _check_fletcher_pipelines(p)


def _h5py_fletcher(path: str) -> None:
    import h5py

    with h5py.File(path, "r+") as f:
        xs, ys = f["x"], f["y"]
        specs = [
            ("h5_gzip_fl", np.cos(np.arange(7000, dtype="f4").reshape(1000, 7) / 30), (100, 7),
             dict(shuffle=False, compression="gzip")),
            ("h5_shuf_gzip_fl", (np.arange(7000, dtype="f8") * 1.5 - 7).reshape(1000, 7), (300, 7),
             dict(shuffle=True, compression="gzip")),
            ("h5_shuf_fl", (np.arange(7000, dtype="i4") * 7919 % 100003).reshape(1000, 7), (128, 3),
             dict(shuffle=True)),
        ]
        for name, data, chunks, kw in specs:
            d = f.create_dataset(name, data=data, chunks=chunks, fletcher32=True, **kw)
            d.dims[0].attach_scale(xs)
            if data.ndim == 2:
                d.dims[1].attach_scale(ys)
            # fixed-length, as netCDF-C writes text attributes (h5py's default for str is a
            # variable-length string, which libnetcdf reads as NC_STRING)
            d.attrs["long_name"] = np.bytes_(f"h5py fletcher32 {kw}")


def _check_fletcher_pipelines(p: Path) -> None:
    """Fails loudly if a library changed the order it writes: the test would then no
    longer cover the order it names."""
    out = subprocess.run([sys.executable, __file__, "--h5py-pipelines", str(p)], check=True,
                         capture_output=True, text=True).stdout
    got = {k: v for k, v in (__import__("json").loads(out)).items() if k in FLETCHER_PIPELINES}
    if got != FLETCHER_PIPELINES:
        raise RuntimeError(f"{p}: HDF5 filter pipelines {got} differ from {FLETCHER_PIPELINES}")


def _h5py_pipelines(path: str) -> None:
    import json

    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        for name, d in f.items():
            if isinstance(d, h5py.Dataset) and d.chunks:
                plist = d.id.get_create_plist()
                out[name] = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    print(json.dumps(out))


def _series_file(p: Path, year: int, lat=None, units="days since 2000-01-01", calendar="standard",
                 nsteps: int = 12) -> None:
    ds = _new(p)
    ds.title = "series part"
    ds.Conventions = "CF-1.8"
    ds.createDimension("time", None)
    ds.createDimension("lat", 4)
    ds.createDimension("lon", 5)
    ds.createDimension("nv", 2)
    base = netCDF4.date2num(
        [__import__("cftime").datetime(year, m, 15, calendar=calendar) for m in range(1, nsteps + 1)],
        units, calendar,
    )
    t = ds.createVariable("time", "f8", ("time",))
    t.units = units
    t.calendar = calendar
    t.bounds = "time_bnds"
    t.standard_name = "time"
    t[:] = base
    tb = ds.createVariable("time_bnds", "f8", ("time", "nv"))
    tb[:] = np.stack([base - 14, base + 14], axis=1)
    la = ds.createVariable("lat", "f8", ("lat",))
    la.units = "degrees_north"
    la[:] = lat if lat is not None else [-45.0, -15.0, 15.0, 45.0]
    lo = ds.createVariable("lon", "f8", ("lon",))
    lo.units = "degrees_east"
    lo[:] = [0.0, 72.0, 144.0, 216.0, 288.0]
    orog = ds.createVariable("orog", "f4", ("lat", "lon"))
    orog.units = "m"
    orog[:] = np.arange(20, dtype="f4").reshape(4, 5) * 100
    tas = ds.createVariable("tas", "f4", ("time", "lat", "lon"), zlib=True, chunksizes=(4, 4, 5))
    tas.units = "K"
    tas[:] = (np.arange(nsteps * 20, dtype="f4").reshape(nsteps, 4, 5) + (year - 2000) * 1000)
    pr = _raw(ds.createVariable("pr", "i2", ("time", "lat", "lon"), fill_value=np.int16(-32767)))
    pr.scale_factor = np.float32(1e-5)
    pr.add_offset = np.float32(0.0)
    d = ((np.arange(nsteps * 20) * 7 + year) % 30000).astype("i2").reshape(nsteps, 4, 5)
    d[0, 0, 0] = -32767
    pr[:] = d
    ds.close()


def make_series(root: Path) -> None:
    # file names deliberately NOT in time order
    _series_file(root / "series" / "part1.nc", 2001)
    _series_file(root / "series" / "part2.nc", 2000)
    _series_file(root / "series" / "part3.nc", 2002)


def make_bad(root: Path) -> None:
    _series_file(root / "bad_lat" / "a.nc", 2000)
    _series_file(root / "bad_lat" / "b.nc", 2001, lat=[-45.0, -15.0, 15.0, 46.0])

    _series_file(root / "bad_corrupt" / "a.nc", 2000)
    b = root / "bad_corrupt" / "b.nc"
    _series_file(b, 2001)
    data = b.read_bytes()
    b.write_bytes(data[: max(600, len(data) // 3)])  # truncated
    try:
        netCDF4.Dataset(str(b)).close()
        # still opens? then clobber the superblock region too
        b.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\xff" * 500)
    except OSError:
        pass

    _series_file(root / "series_units" / "a.nc", 2000, units="days since 2000-01-01")
    _series_file(root / "series_units" / "b.nc", 2001, units="hours since 1999-01-01 06:00:00")
    _series_file(root / "bad_units" / "a.nc", 2000, units="days since 2000-01-01")
    _series_file(root / "bad_units" / "b.nc", 2001, units="days since 1999-01-01")
    with netCDF4.Dataset(root / "bad_units" / "b.nc", "a") as ds:
        ds.variables["time"].units = "model days"

    _series_file(root / "bad_calendar" / "a.nc", 2000, calendar="standard")
    _series_file(root / "bad_calendar" / "b.nc", 2001, calendar="noleap")


def generate(outdir: str | os.PathLike) -> list[dict]:
    root = Path(outdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    make_packed(root / "packed.nc")
    make_nanfill(root / "nanfill.nc")
    make_strings(root / "strings.nc")
    make_classic(root / "classic.nc")
    make_classic1rec(root / "classic1rec.nc")
    make_offset64(root / "offset64.nc")
    make_groups(root / "groups.nc")
    make_unlim0(root / "unlim0.nc")
    make_tiny(root / "tiny.nc")
    make_alltypes(root / "alltypes.nc")
    make_contig_big(root / "contig_big.nc")
    make_edgechunks(root / "edgechunks.nc")
    make_sparse(root / "sparse.nc")
    make_cal_noleap(root / "cal_noleap.nc")
    make_cal_360(root / "cal_360.nc")
    make_names(root / "names.nc")
    make_filters(root / "filters.nc")
    make_fletcher(root / "fletcher.nc")
    make_series(root)
    make_bad(root)
    out = []
    for d in specs():
        d["sources"] = [str(root / s) for s in d["sources"]]
        out.append(d)
    return out


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--h5py-fletcher":
        _h5py_fletcher(sys.argv[2])
        sys.exit(0)
    if len(sys.argv) == 3 and sys.argv[1] == "--h5py-pipelines":
        _h5py_pipelines(sys.argv[2])
        sys.exit(0)
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    for d in generate(sys.argv[1]):
        print(f"{d['name']:24s} {d['expect']:7s} {' '.join(d['sources'])}")
