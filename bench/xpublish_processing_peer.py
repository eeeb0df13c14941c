#!/usr/bin/env python3
"""Serve processed data with xpublish + dask, the way the original cloudify does.

    xpublish_processing_peer.py NAME PORT GLOB --mode bitround|rechunk
                                [--keepbits 12] [--chunks time=365,lat=30,lon=30]

The peer of ``bench/processing.py``. The original (Python) cloudify computes its "data as a
service" products lazily with dask and publishes them with xpublish:

* ``bitround``: ``xr.open_mfdataset(files, chunks={"time": 1})`` and every float data variable
  replaced by ``xr.apply_ufunc(lossy_compress, da, dask="parallelized")``, where
  ``lossy_compress`` is numcodecs' ``BitRound(keepbits).encode`` (DKRZ's cloudify rounds with
  numcodecs and serves the rounded values with a standard compressor);
* ``rechunk``: ``xr.open_mfdataset(files, chunks=CHUNKS)``, so each served chunk is one dask
  chunk of the requested grid (dask reads and slices the stored chunks it needs).

Both use ``data_vars="minimal", coords="minimal", compat="override"`` as xpublish_peer.py does.
Zarr (v3, xpublish-zarr 0.1) at ``http://HOST:PORT/datasets/NAME/zarr``.
"""
import argparse
import glob
import sys

import numcodecs
import numpy as np
import xarray as xr
import xpublish


def lossy_compress(data: np.ndarray, keepbits: int) -> np.ndarray:
    """numcodecs BitRound: the rounded values (encode returns them as same-size integers)."""
    return numcodecs.BitRound(keepbits=keepbits).encode(data).view(data.dtype).reshape(data.shape)


def parse_chunks(text: str) -> dict:
    out = {}
    for part in text.split(","):
        k, _, v = part.partition("=")
        out[k.strip()] = int(v)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("name")
    ap.add_argument("port", type=int)
    ap.add_argument("glob")
    ap.add_argument("--mode", choices=["bitround", "rechunk"], required=True)
    ap.add_argument("--keepbits", type=int, default=12)
    ap.add_argument("--chunks", default="time=365,lat=30,lon=30")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--log-level", default="warning")
    a = ap.parse_args()

    paths = sorted(glob.glob(a.glob))
    if not paths:
        print(f"xpublish_processing_peer: no file matches {a.glob!r}", file=sys.stderr)
        return 2
    opts = dict(data_vars="minimal", coords="minimal", compat="override")
    if a.mode == "bitround":
        ds = xr.open_mfdataset(paths, chunks={"time": 1}, **opts)
        for name, da in ds.data_vars.items():
            if np.issubdtype(da.dtype, np.floating) and "time" in da.dims:
                rounded = xr.apply_ufunc(lossy_compress, da, kwargs={"keepbits": a.keepbits},
                                         dask="parallelized", output_dtypes=[da.dtype])
                rounded.attrs = da.attrs
                rounded.encoding = da.encoding
                ds[name] = rounded
    else:
        ds = xr.open_mfdataset(paths, chunks=parse_chunks(a.chunks), **opts)
    rest = xpublish.Rest({a.name: ds})
    print(f"xpublish_processing_peer: {a.mode}, {len(paths)} files; "
          f"serving http://{a.host}:{a.port}/datasets/{a.name}/zarr", flush=True)
    rest.serve(host=a.host, port=a.port, log_level=a.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
