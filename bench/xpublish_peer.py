#!/usr/bin/env python3
"""Serve netCDF files with xpublish + xpublish-zarr, the way the original (Python) cloudify does.

    xpublish_peer.py NAME PORT GLOB [--host 127.0.0.1] [--log-level warning]

This is the peer that the Rust server replaces, set up as the original cloudify sets it up:
``xr.open_mfdataset`` over the sorted glob with ``chunks={"time": 1}``,
``data_vars="minimal"``, ``coords="minimal"``, ``compat="override"``, published with
``xpublish.Rest({NAME: ds}).serve(...)``. Plugins are discovered through xpublish's entry points,
so the Zarr routes come from whatever xpublish-zarr is installed: its Zarr endpoint is
``http://HOST:PORT/datasets/NAME/zarr`` (xpublish-zarr 0.1 serves Zarr v3 only:
``zarr.json`` with consolidated metadata and ``VAR/c/i/j/k`` chunks).

Needs: xarray, netCDF4, dask, xpublish, xpublish-zarr (which brings zarr, fastapi, uvicorn).
"""
import argparse
import glob
import sys

import xarray as xr
import xpublish


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("name")
    ap.add_argument("port", type=int)
    ap.add_argument("glob")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--log-level", default="warning")
    ap.add_argument("--load-coords", action="store_true",
                    help="hold the coordinates in memory (xpublish-tiles 0.12 loads them with "
                         "load_async, which the netCDF4 backend does not support)")
    a = ap.parse_args()

    paths = sorted(glob.glob(a.glob))
    if not paths:
        print(f"xpublish_peer: no file matches {a.glob!r}", file=sys.stderr)
        return 2
    ds = xr.open_mfdataset(paths, chunks={"time": 1}, data_vars="minimal", coords="minimal", compat="override")
    if a.load_coords:
        ds = ds.assign_coords({k: ds[k].compute() for k in ds.coords})
    rest = xpublish.Rest({a.name: ds})
    print(f"xpublish_peer: {len(paths)} files, plugins {sorted(rest.plugins)}; "
          f"serving http://{a.host}:{a.port}/datasets/{a.name}/zarr", flush=True)
    rest.serve(host=a.host, port=a.port, log_level=a.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
