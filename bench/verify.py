#!/usr/bin/env python3
"""Check that Zarr-over-HTTP endpoints serve the same data (a benchmark of wrong data is worthless).

    verify.py URL [URL ...] [--var tas] [--source GLOB] [--steps 0,1,364,365,-1] [--random 2]

Each URL is a Zarr root (e.g. http://127.0.0.1:19500/datasets/bench/zarr), optionally suffixed
with ``#v2`` or ``#v3`` to force the Zarr format (a server may speak both on one prefix); without a
suffix zarr-python picks (v3 first). Every endpoint is opened with ``xarray.open_zarr`` (consolidated
metadata, default CF decoding) and compared with the reference, which is the netCDF files of
``--source`` when given (opened as the original cloudify does: ``open_mfdataset``) or else the
first URL.

Checked, failing the run on any difference:
* VAR has the same dimensions, shape and decoded dtype;
* its dimension coordinates are equal (decoded: times as calendar dates), and so is every other
  variable of the reference up to --max-other-size elements (bounds, scalar coordinates);
* VAR's decoded values on the selected time steps are bitwise equal (NaN == NaN); the default
  steps are the first two, both sides of every 365-step (yearly file) boundary up to 3, the middle,
  the last, and ``--random`` seeded random ones.
Differences in attributes (units, standard_name, long_name) are reported as warnings.

Prints one line per check and exits 0 if everything matched, 1 otherwise.
Needs xarray, zarr (v3 library), fsspec + aiohttp, and netCDF4 + dask for ``--source``.
"""
import argparse
import glob
import sys
import time

import numpy as np
import xarray as xr

ATTRS = ("units", "standard_name", "long_name")


def open_endpoint(spec: str) -> tuple[str, xr.Dataset]:
    url, _, fmt = spec.partition("#")
    kw = {}
    if fmt:
        if fmt not in ("v2", "v3"):
            raise SystemExit(f"verify.py: unknown format suffix #{fmt} (use #v2 or #v3)")
        kw["zarr_format"] = int(fmt[1])
    ds = xr.open_zarr(url.rstrip("/"), consolidated=None, chunks=None, **kw)
    return spec, ds


def open_source(pattern: str) -> tuple[str, xr.Dataset]:
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise SystemExit(f"verify.py: no file matches {pattern!r}")
    ds = xr.open_mfdataset(paths, chunks={"time": 1}, data_vars="minimal", coords="minimal", compat="override")
    return f"netCDF source ({len(paths)} files)", ds


def pick_steps(n: int, explicit: str | None, n_random: int) -> list[int]:
    if explicit:
        steps = [int(s) for s in explicit.split(",") if s.strip()]
        steps = [s + n if s < 0 else s for s in steps]
    else:
        steps = [0, 1, n // 2, n - 1]
        for b in range(365, min(n, 4 * 365), 365):
            steps += [b - 1, b]
        rng = np.random.default_rng(12345)
        steps += [int(s) for s in rng.integers(0, n, n_random)] if n_random else []
    steps = sorted({s for s in steps if 0 <= s < n})
    return steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("urls", nargs="+", metavar="URL")
    ap.add_argument("--var", default="tas")
    ap.add_argument("--source", metavar="GLOB", help="netCDF files to use as the reference")
    ap.add_argument("--steps", help="comma-separated time indices (negative counts from the end)")
    ap.add_argument("--random", type=int, default=2, help="extra random time steps (default 2)")
    ap.add_argument("--time-dim", default="time")
    ap.add_argument("--max-other-size", type=int, default=10_000_000,
                    help="compare every other variable up to this many elements whole (default 1e7)")
    a = ap.parse_args()

    failures = 0

    def fail(msg):
        nonlocal failures
        failures += 1
        print(f"  FAIL {msg}", flush=True)

    t0 = time.perf_counter()
    opened = []
    if a.source:
        opened.append(open_source(a.source))
    for spec in a.urls:
        try:
            opened.append(open_endpoint(spec))
        except Exception as e:  # any failure to open is a verification failure, with the reason
            fail(f"{spec}: cannot open with xarray.open_zarr: {type(e).__name__}: {e}")
    if failures or len(opened) < 2:
        if len(opened) < 2 and not failures:
            print("verify.py: need two endpoints, or one with --source", file=sys.stderr)
        print(f"verify: FAILED ({failures} problems)")
        return 1

    ref_name, ref = opened[0]
    if a.var not in ref:
        print(f"verify: FAILED ({a.var!r} not in the reference {ref_name})")
        return 1
    rv = ref[a.var]
    n = rv.sizes.get(a.time_dim, 1)
    steps = pick_steps(n, a.steps, a.random) if a.time_dim in rv.dims else [None]
    ref_slices = {s: (rv.isel({a.time_dim: s}) if s is not None else rv).values for s in steps}
    print(f"verify: reference {ref_name}: {a.var}{dict(rv.sizes)} {rv.dtype}; steps {steps}", flush=True)

    for name, ds in opened[1:]:
        print(f"verify: {name}", flush=True)
        if a.var not in ds:
            fail(f"{a.var!r} missing (variables: {sorted(ds.variables)})")
            continue
        v = ds[a.var]
        if v.dims != rv.dims or v.shape != rv.shape:
            fail(f"{a.var} is {dict(v.sizes)}, reference {dict(rv.sizes)}")
            continue
        if v.dtype != rv.dtype:
            fail(f"{a.var} dtype {v.dtype}, reference {rv.dtype}")
        for dim in rv.dims:
            if dim in ref.coords:
                if dim not in ds.coords:
                    fail(f"coordinate {dim} missing")
                elif not ds[dim].variable.equals(ref[dim].variable):
                    x, y = ds[dim].values, ref[dim].values
                    fail(f"coordinate {dim} differs: {x[:3]}... vs reference {y[:3]}...")
        # the other, small variables (bounds, scalar coordinates, ...) are compared whole
        same = []
        for name in sorted(map(str, ref.variables)):
            if name == a.var or name in rv.dims or ref[name].size > a.max_other_size:
                continue
            if name not in ds.variables:
                fail(f"variable {name} missing")
            elif not ds[name].variable.equals(ref[name].variable):
                fail(f"variable {name} differs: {ds[name].values.ravel()[:4]}... vs reference "
                     f"{ref[name].values.ravel()[:4]}...")
            else:
                same.append(name)
        if same:
            print(f"  equal: coordinates {', '.join(d for d in rv.dims if d in ref.coords)}; {', '.join(same)}")
        for k in ATTRS:
            if v.attrs.get(k) != rv.attrs.get(k):
                print(f"  warn attribute {k}: {v.attrs.get(k)!r}, reference {rv.attrs.get(k)!r}")
        ok = 0
        for s in steps:
            try:
                x = (v.isel({a.time_dim: s}) if s is not None else v).values
            except Exception as e:
                fail(f"step {s}: read failed: {type(e).__name__}: {e}")
                continue
            y = ref_slices[s]
            if x.shape != y.shape:
                fail(f"step {s}: shape {x.shape}, reference {y.shape}")
            elif not np.array_equal(x, y, equal_nan=True):
                bad = ~((x == y) | (np.isnan(x) & np.isnan(y)))
                idx = tuple(int(i[0]) for i in np.nonzero(bad))
                fail(f"step {s}: {int(bad.sum())} of {x.size} values differ, first at {idx}: "
                     f"{x[idx]!r} vs reference {y[idx]!r}")
            else:
                ok += 1
        print(f"  {ok}/{len(steps)} time steps of {a.var} equal", flush=True)

    dt = time.perf_counter() - t0
    if failures:
        print(f"verify: FAILED ({failures} problems, {dt:.1f} s)")
        return 1
    print(f"verify: OK ({len(opened) - 1} endpoints x {len(steps)} steps equal to {ref_name}, {dt:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
