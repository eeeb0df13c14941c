#!/usr/bin/env python3
"""Seed inputs for the fuzz targets of server/fuzz, written at run time (never committed).

    python fuzz_seeds.py OUTDIR [--testdata DIR] [--sample-data DIR]

Writes OUTDIR/<target>/<seed> for every target. The seeds that need nothing but the standard
library are always written; the others use whatever of zarr, icechunk, netCDF4, h5py, numcodecs
and fastparquet/pandas this interpreter has (run it with the test venv's python for all of
them; run it once more with an icechunk 2 interpreter for spec-version-2 repositories). What
could not be made is listed on stderr. Directory inputs (Zarr stores, Parquet references,
Icechunk repositories) are packed into the archive format of server/fuzz/src/lib.rs.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import struct
import sys
import tempfile
import zlib
from pathlib import Path

MARKER = b"==> "


def pack(files: dict[str, bytes]) -> bytes:
    """The archive format of server/fuzz/src/lib.rs."""
    out = b""
    for name, data in files.items():
        if out:
            out += b"\n"
        out += MARKER + name.encode() + b"\n" + data
    return out


def pack_dir(root: Path, under: str = "", skip=lambda rel: False) -> dict[str, bytes]:
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            if not skip(rel):
                files[(under + "/" + rel) if under else rel] = p.read_bytes()
    return files


class Seeds:
    def __init__(self, out: Path):
        self.out = out
        self.count: dict[str, int] = {}
        self.missing: list[str] = []

    def add(self, target: str, name: str, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        d = self.out / target
        d.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)
        self.count[target] = self.count.get(target, 0) + 1

    def skip(self, what: str, why: Exception) -> None:
        self.missing.append(f"{what}: {type(why).__name__}: {why}")


# ---------------------------------------------------------------- standard library only

def shuffle(b: bytes, elem: int) -> bytes:
    n = len(b) // elem
    return bytes(b[i * elem + j] for j in range(elem) for i in range(n)) + b[n * elem:]


def fletcher32(data: bytes) -> int:
    s1 = s2 = 0
    words = [(data[i] << 8) | data[i + 1] for i in range(0, len(data) - 1, 2)]
    for k, w in enumerate(words, 1):
        s1 += w
        s2 += s1
        if k % 360 == 0:
            s1 = (s1 & 0xFFFF) + (s1 >> 16)
            s2 = (s2 & 0xFFFF) + (s2 >> 16)
    s1 = (s1 & 0xFFFF) + (s1 >> 16)
    s2 = (s2 & 0xFFFF) + (s2 >> 16)
    if len(data) % 2:
        s1 += data[-1] << 8
        s2 += s1
        s1 = (s1 & 0xFFFF) + (s1 >> 16)
        s2 = (s2 & 0xFFFF) + (s2 >> 16)
    s1 = (s1 & 0xFFFF) + (s1 >> 16)
    s2 = (s2 & 0xFFFF) + (s2 >> 16)
    return (s2 << 16) | s1


def chunk_key_seeds(s: Seeds) -> None:
    for i, k in enumerate([
        "tas/0.0.0", "tas/c/1/2/3", "g1/sub/x/c/4/5", "g1/sub/x/0.1", "g1/7", "s/0", "s/c",
        "time/12", "time/c/3", "c/c/0", "c/4", "tas/0.x.0", "tas/-1.0.0", "../etc/passwd",
        "tas/99999999999999999999.0.0", "tas/c", "tas/0/0/0", "g1/sub/x/c/0/c",
    ]):
        s.add("chunk_key", f"key{i}", k)


def expr_seeds(s: Seeds) -> None:
    for i, e in enumerate([
        "a - 273.15", "sqrt(a**2 + b**2)", "where(m, a, b)", "hypot(a, b) / 2", "clip(a, -1, 1)",
        "-2**-1", "not m and (a < b or isnan(b))", "log(abs(a)) + exp(b) // 3 % 2", "minimum(a, nan)",
        "maximum(a, inf) != a", "log10(1e-300)", "((((a))))", "a +", "where(m, a)", "1.2.3", "a $ b",
        "unknown(a)", "x + 1", ".5e-3 * a",
    ]):
        s.add("expr", f"expr{i}", e)


def dap_constraint_seeds(s: Seeds) -> None:
    # query strings of opendap.* requests against source/testdata/cdf1.nc (time, x, y, s, grid,
    # scalar, flags), as clients send them (escaped and not)
    for i, q in enumerate([
        "", "s", "s[0:1:3][1]", "s.s[1:2],s.time", "grid[0][0:2]", "time,scalar,flags[0:2:2]",
        "s%5B0%3A1%3A3%5D%5B1%5D", "s.time[1:3],s.s[0][0]", "flags&flags>1", "s[3:1]", "s[0:0:3]",
        "grid.y", "nosuch", "s[", "s.s.s", "s[99999999999999999999]", "s[0:1:2:3]", "%zz", "s,,time",
    ]):
        s.add("dap_constraint", f"ce{i}", q)


def codec_seeds(s: Seeds) -> None:
    data = b"".join(struct.pack("<f", 280.0 + i * 0.25) for i in range(256))

    def seed(name: str, filters: list[tuple[int, int]], stored: bytes, mask: int = 0) -> None:
        head = bytes([len(filters)]) + b"".join(bytes([c, p]) for c, p in filters)
        s.add("codec", name, head + struct.pack("<II", mask, len(data)) + stored)

    z = zlib.compress(data, 4)
    seed("deflate", [(0, 4)], z)
    sz = zlib.compress(shuffle(data, 4), 4)
    seed("shuffle_deflate", [(1, 4), (0, 4)], sz)
    seed("shuffle_deflate_fletcher", [(1, 4), (0, 4), (2, 0)], sz + struct.pack("<I", fletcher32(sz)))
    seed("masked", [(1, 4), (0, 4)], z, mask=1)
    co = zlib.compressobj(4, zlib.DEFLATED, 31)
    seed("gzip", [(4, 0)], co.compress(data) + co.flush())
    seed("unsupported", [(8, 7)], data)
    seed("raw", [], data)
    try:
        import numcodecs
        seed("zstd", [(3, 0)], numcodecs.Zstd(level=1).encode(data))
        for cname, sh in [("lz4", 1), ("zstd", 2), ("zlib", 0), ("blosclz", 1)]:
            b = numcodecs.Blosc(cname=cname, clevel=5, shuffle=sh).encode(data)
            seed(f"blosc_{cname}", [(5, 0)], bytes(b))
    except Exception as e:  # noqa: BLE001 - optional seeds
        s.skip("codec zstd/blosc seeds (numcodecs)", e)


def kerchunk_json_seeds(s: Seeds) -> None:
    vals = b"".join(struct.pack("<f", float(i)) for i in range(24))
    data = vals + zlib.compress(vals)
    zarray = {"zarr_format": 2, "shape": [2, 12], "chunks": [1, 12], "dtype": "<f4", "compressor": None,
              "filters": None, "fill_value": "NaN", "order": "C"}
    zz = dict(zarray, shape=[24], chunks=[24], compressor={"id": "zlib", "level": 1})
    v0 = {
        ".zgroup": json.dumps({"zarr_format": 2}),
        ".zattrs": json.dumps({"title": "refs", "n": [1, 2], "f": 1.5}),
        "tas/.zarray": json.dumps(zarray),
        "tas/.zattrs": json.dumps({"_ARRAY_DIMENSIONS": ["time", "x"], "units": "K"}),
        "tas/0.0": ["data.bin", 0, 48],
        "tas/1.0": ["data.bin", 48, 48],
        "z/.zarray": json.dumps(zz),
        "z/.zattrs": json.dumps({"_ARRAY_DIMENSIONS": ["n"]}),
        "z/0": ["data.bin", 96, len(data) - 96],
    }
    s.add("kerchunk_json", "v0", pack({"refs.json": json.dumps(v0).encode(), "data.bin": data}))
    inline = dict(v0)
    inline["tas/0.0"] = "base64:" + base64.b64encode(vals[:48]).decode()
    inline["tas/1.0"] = vals[48:].decode("latin-1")
    s.add("kerchunk_json", "inline", json.dumps(inline))
    v1 = {"version": 1, "templates": {"u": "data.bin"},
          "refs": {k: (["{{u}}"] + v[1:] if isinstance(v, list) else v) for k, v in v0.items()}}
    s.add("kerchunk_json", "v1_templates", pack({"refs.json": json.dumps(v1).encode(), "data.bin": data}))
    gen = {"version": 1, "templates": {"u": "data.bin"},
           "refs": {k: v for k, v in v0.items() if not k.startswith("tas/") or k.endswith(("zarray", "zattrs"))},
           "gen": [{"key": "tas/{{i}}.0", "url": "{{u}}", "offset": "{{i * 48}}", "length": "48",
                    "dimensions": {"i": {"start": 0, "stop": 2, "step": 1}}},
                   {"key": "y/{{j // 2}}.{{ j % 2 }}", "url": "{{u}}", "offset": 0, "length": 4,
                    "dimensions": {"j": [0, 1, 2, 3]}}]}
    gen["refs"]["y/.zarray"] = json.dumps(dict(zarray, shape=[2, 2], chunks=[1, 1], dtype=">i4"))
    s.add("kerchunk_json", "v1_gen", pack({"refs.json": json.dumps(gen).encode(), "data.bin": data}))
    odd = {
        ".zgroup": {"zarr_format": 2},
        "g/.zgroup": {"zarr_format": 2},
        "g/t/.zarray": dict(zarray, dtype="<M8[s]", shape=[3], chunks=[2], fill_value="NaT",
                            dimension_separator="/"),
        "g/t/0": "base64:" + base64.b64encode(struct.pack("<qq", 0, 86400)).decode(),
        "g/s/.zarray": dict(zarray, dtype="|S4", shape=[2], chunks=[2], fill_value=None),
        "g/s/0": "abcdefgh",
        "g/b/.zarray": dict(zarray, dtype="|b1", shape=[4], chunks=[4], fill_value=False,
                            compressor={"id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 1}),
        "g/u/.zarray": dict(zarray, dtype="<U2", shape=[1], chunks=[1]),
        "g/sc/.zarray": dict(zarray, shape=[], chunks=[], dtype="<i8", fill_value=0),
        "g/sc/0": "base64:" + base64.b64encode(struct.pack("<q", 7)).decode(),
        "g/f/.zarray": dict(zarray, filters=[{"id": "shuffle", "elementsize": 4}],
                            compressor={"id": "zstd", "level": 1}),
    }
    s.add("kerchunk_json", "types", json.dumps(odd))


def nc3_seeds(s: Seeds, testdata: Path) -> None:
    for p in sorted(testdata.glob("*.nc")):
        s.add("nc3", p.name, p.read_bytes())


# ---------------------------------------------------------------- optional libraries

def netcdf_seeds(s: Seeds, tmp: Path) -> None:
    try:
        import netCDF4
        import numpy as np
    except Exception as e:  # noqa: BLE001
        s.skip("netCDF-3/4 seeds (netCDF4, numpy)", e)
        return
    for fmt, target in [("NETCDF3_CLASSIC", "nc3"), ("NETCDF3_64BIT_OFFSET", "nc3"), ("NETCDF3_64BIT_DATA", "nc3"),
                        ("NETCDF4", "hdf5_native"), ("NETCDF4_CLASSIC", "hdf5_native")]:
        p = tmp / f"{fmt}.nc"
        with netCDF4.Dataset(p, "w", format=fmt) as ds:
            ds.title = "fuzz seed"
            ds.setncattr("ints", np.arange(3, dtype="i4"))
            ds.createDimension("time", None)
            ds.createDimension("lat", 3)
            ds.createDimension("lon", 4)
            t = ds.createVariable("time", "f8", ("time",))
            t.units = "days since 2000-01-01"
            t.calendar = "noleap"
            t[:] = [0, 1]
            kw = {"zlib": True, "shuffle": True, "fletcher32": True, "chunksizes": (1, 3, 2)} \
                if fmt.startswith("NETCDF4") else {}
            v = ds.createVariable("tas", "f4", ("time", "lat", "lon"), fill_value=1e20, **kw)
            v.units = "K"
            v[:] = np.arange(24, dtype="f4").reshape(2, 3, 4)
            c = ds.createVariable("lat", "f4", ("lat",))
            c[:] = [-1, 0, 1]
            ds.createVariable("scalar", "i2", ())[:] = 3
            ch = ds.createVariable("name", "S1", ("lat",))
            ch[:] = np.array([b"a", b"b", b"c"])
            if fmt == "NETCDF4":
                g = ds.createGroup("sub")
                g.createDimension("n", 5)
                u = g.createVariable("u", "u8", ("n",), chunksizes=(2,), compression="zlib")
                u[:] = np.arange(5)
                st = g.createVariable("s", str, ("n",))
                st[:] = np.array(["a", "bb", "", "dddd", "e"], dtype=object)
                g.createVariable("contig", "i8", ("n",), contiguous=True)[:] = np.arange(5)
        s.add(target, fmt, p.read_bytes())
    try:
        import h5py
        p = tmp / "plain.h5"
        with h5py.File(p, "w") as f:
            f.attrs["a"] = 1
            f.create_dataset("x", data=np.arange(12, dtype="i4").reshape(3, 4), chunks=(2, 2),
                             compression="gzip", shuffle=True)
            f.create_dataset("y", data=np.arange(4, dtype=">f8"))
            f["y"].attrs["units"] = "m"
        s.add("hdf5_native", "h5py", p.read_bytes())
    except Exception as e:  # noqa: BLE001
        s.skip("h5py seed", e)


def sample_seeds(s: Seeds, sample: Path | None) -> None:
    if sample is None or not sample.is_dir():
        return
    small = sorted(p for p in sample.rglob("*.nc") if p.stat().st_size < 64 << 10)
    for p in small[:4]:
        target = "nc3" if p.read_bytes()[:3] == b"CDF" else "hdf5_native"
        s.add(target, "sample_" + p.name, p.read_bytes())


def zarr_seeds(s: Seeds, tmp: Path) -> None:
    try:
        import numpy as np
        import zarr
        from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, TransposeCodec, ZstdCodec
    except Exception as e:  # noqa: BLE001
        s.skip("Zarr store seeds (zarr 3, numpy)", e)
        return
    import numcodecs
    a = np.arange(12, dtype="f4").reshape(3, 4)
    # v2 stores
    for name, kw in [
        ("v2_zlib", {"compressor": numcodecs.Zlib(1), "filters": [numcodecs.Shuffle(4)]}),
        ("v2_blosc", {"compressor": numcodecs.Blosc("lz4", 5, 1)}),
        ("v2_zstd_slash", {"compressor": numcodecs.Zstd(1), "dimension_separator": "/"}),
        ("v2_none", {"compressor": None}),
    ]:
        p = tmp / name
        g = zarr.open_group(str(p), mode="w", zarr_format=2)
        g.attrs["title"] = name
        arr = g.create_array("tas", shape=a.shape, chunks=(2, 3), dtype="f4", fill_value=np.nan,
                             **{"compressors" if k == "compressor" else k: v for k, v in kw.items()
                                if k != "dimension_separator"},
                             **({"chunk_key_encoding": {"name": "v2", "separator": "/"}}
                                if "dimension_separator" in kw else {}))
        arr[:] = a
        arr.attrs["_ARRAY_DIMENSIONS"] = ["y", "x"]
        sc = g.create_array("t", shape=(), dtype="i8", fill_value=0, compressors=None)
        sc[()] = 5
        s.add("zarr_store", name, pack(pack_dir(p)))
    # v3 stores
    for name, codecs, extra in [
        ("v3_gzip", [BytesCodec(), GzipCodec(level=1)], {}),
        ("v3_zstd_big", [BytesCodec(endian="big"), ZstdCodec(level=1)], {}),
        ("v3_blosc", [BytesCodec(), BloscCodec(cname="zstd", shuffle="shuffle")], {}),
        ("v3_crc_transpose", [TransposeCodec(order=(1, 0)), BytesCodec(), Crc32cCodec()], {}),
        ("v3_sharded", None, {"shards": (2, 4)}),
    ]:
        p = tmp / name
        g = zarr.open_group(str(p), mode="w", zarr_format=3, attributes={"title": name})
        kw = {"serializer": codecs[0] if not isinstance(codecs[0], TransposeCodec) else "auto"} if codecs else {}
        if codecs:
            kw = {}
            filters = [c for c in codecs if isinstance(c, TransposeCodec)]
            ser = [c for c in codecs if isinstance(c, BytesCodec)]
            comp = [c for c in codecs if not isinstance(c, (TransposeCodec, BytesCodec))]
            kw = {"filters": filters, "serializer": ser[0], "compressors": comp}
        arr = g.create_array("tas", shape=(3, 4), chunks=(1, 2), dtype="f4", fill_value=np.nan,
                             dimension_names=["y", "x"], attributes={"units": "K", "_FillValue": "AAAAAAAA+H8="},
                             **kw, **extra)
        arr[:] = a
        sub = g.create_group("sub")
        t = sub.create_array("t", shape=(2,), chunks=(1,), dtype="M8[s]", fill_value=0)
        t[:] = np.array([0, 86400], dtype="M8[s]")
        z0 = sub.create_array("z0", shape=(), dtype="u2", fill_value=9)
        z0[()] = 1
        s.add("zarr_store", name, pack(pack_dir(p)))


def parquet_seeds(s: Seeds, tmp: Path) -> None:
    try:
        import pandas as pd
    except Exception as e:  # noqa: BLE001
        s.skip("Parquet reference seeds (pandas, fastparquet)", e)
        return
    vals = b"".join(struct.pack("<f", float(i)) for i in range(24))
    zarray = {"zarr_format": 2, "shape": [2, 12], "chunks": [1, 12], "dtype": "<f4", "compressor": None,
              "filters": None, "fill_value": None, "order": "C"}
    meta = {"metadata": {".zgroup": {"zarr_format": 2}, ".zattrs": {"title": "parquet"},
                         "tas/.zarray": zarray, "tas/.zattrs": {"_ARRAY_DIMENSIONS": ["t", "x"]},
                         "n/.zarray": dict(zarray, shape=[3], chunks=[1], dtype="<i8")},
            "record_size": 2}
    files = {"refs.parq/.zmetadata": json.dumps(meta).encode(), "data.bin": vals}
    for engine in ["fastparquet", "pyarrow"]:
        try:
            for var, rows in [("tas", [("data.bin", 0, 48, None), (None, 0, 0, vals[48:])]),
                              ("n", [(None, 0, 0, struct.pack("<q", 1)), ("data.bin", 0, 8, None)])]:
                df = pd.DataFrame({"path": [r[0] for r in rows], "offset": [r[1] for r in rows],
                                   "size": [r[2] for r in rows], "raw": [r[3] for r in rows]})
                out = tmp / f"{engine}-{var}.parq"
                df.to_parquet(out, engine=engine, compression=None, index=False)
                files[f"refs.parq/{var}/refs.0.parq"] = out.read_bytes()
            s.add("kerchunk_parquet", engine, pack(files))
        except Exception as e:  # noqa: BLE001
            s.skip(f"Parquet reference seed ({engine})", e)


def icechunk_seeds(s: Seeds, tmp: Path) -> None:
    try:
        import icechunk
        import numpy as np
        import zarr
        from zarr.codecs import GzipCodec
    except Exception as e:  # noqa: BLE001
        s.skip("Icechunk seeds (icechunk, zarr)", e)
        return
    major = icechunk.__version__.split(".")[0]
    p = tmp / f"ic{major}"
    data = tmp / "virt"
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(p)))
    sess = repo.writable_session("main")
    g = zarr.open_group(sess.store, mode="w", zarr_format=3, attributes={"title": "ice"})
    a = g.create_array("tas", shape=(4, 8), chunks=(2, 8), dtype="f4", fill_value=np.nan,
                       dimension_names=["y", "x"], compressors=[GzipCodec(level=1)])
    a[:] = np.arange(32, dtype="f4").reshape(4, 8)
    small = g.create_array("small", shape=(3,), chunks=(3,), dtype="i2", fill_value=0)
    small[:] = [1, 2, 3]
    sh = g.create_array("sh", shape=(4,), chunks=(2,), shards=(4,), dtype="u1", fill_value=0)
    sh[:] = [1, 2, 3, 4]
    sess.commit("first")
    # uncompressed assets: the header's compression byte 0, the body as zstd decoded it
    try:
        import numcodecs
        zstd = numcodecs.Zstd()
    except Exception:  # noqa: BLE001
        zstd = None
    HEADER = 12 + 24 + 3

    def plain(rel: str, b: bytes) -> bytes:
        if zstd is None or len(b) < HEADER or not b.startswith("ICE🧊CHUNK".encode()) or b[HEADER - 1] != 1:
            return b
        try:
            return b[:HEADER - 1] + b"\x00" + bytes(zstd.decode(b[HEADER:]))
        except Exception:  # noqa: BLE001
            return b

    files = {rel: plain(rel, b) for rel, b in pack_dir(p).items()}
    s.add("icechunk", f"spec{major}_plain", pack(files))
    s.add("icechunk", f"spec{major}_zstd", pack(pack_dir(p)))
    del data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--testdata", type=Path, default=Path(__file__).resolve().parent.parent
                    / "server" / "src" / "source" / "testdata")
    ap.add_argument("--sample-data", type=Path, default=None)
    ap.add_argument("--only", default="", help="comma-separated seed groups (default: all)")
    a = ap.parse_args()
    s = Seeds(a.out)
    groups = {
        "chunk_key": lambda t: chunk_key_seeds(s),
        "codec": lambda t: codec_seeds(s),
        "expr": lambda t: expr_seeds(s),
        "dap_constraint": lambda t: dap_constraint_seeds(s),
        "kerchunk_json": lambda t: kerchunk_json_seeds(s),
        "nc3": lambda t: nc3_seeds(s, a.testdata),
        "netcdf": lambda t: netcdf_seeds(s, t),
        "sample": lambda t: sample_seeds(s, a.sample_data),
        "zarr": lambda t: zarr_seeds(s, t),
        "parquet": lambda t: parquet_seeds(s, t),
        "icechunk": lambda t: icechunk_seeds(s, t),
    }
    only = [g for g in a.only.split(",") if g]
    for name, make in groups.items():
        if only and name not in only:
            continue
        with tempfile.TemporaryDirectory() as t:
            try:
                make(Path(t))
            except Exception as e:  # noqa: BLE001 - a failed optional group must not stop the rest
                s.skip(name, e)
    print(json.dumps(s.count))
    for m in s.missing:
        print(f"fuzz_seeds: not made: {m}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
