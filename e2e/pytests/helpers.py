"""Shared helpers for the cloudify real-client tests (corpus, references, comparisons)."""

from __future__ import annotations

import functools
import hashlib
import math
import re
import warnings
from pathlib import Path

import netCDF4
import numpy as np
import xarray as xr

HERE = Path(__file__).resolve().parent

MFDATASET_KW = dict(combine="by_coords", data_vars="minimal", coords="minimal", compat="override")
RAW_KW = dict(mask_and_scale=False, decode_times=False, decode_timedelta=False)

# Variables whose in-memory size is at most this are compared in full; larger
# ones are compared on a deterministic sample of chunk boxes (+ one full
# variable per dataset in raw mode).
FULL_COMPARE_BYTES = 4 * 1024 * 1024


# ---------------------------------------------------------------------------
# corpus description
# ---------------------------------------------------------------------------
def cmip6_root() -> Path:
    import esmvaltool_sample_data

    return Path(esmvaltool_sample_data.__file__).resolve().parent / "data"


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")


@functools.lru_cache(maxsize=None)
def cmip6_specs() -> tuple[dict, ...]:
    root = cmip6_root()
    dirs = sorted({p.parent for p in root.rglob("*.nc")})
    out = []
    seen = set()
    for d in dirs:
        parts = d.relative_to(root).parts
        # timeseries/CMIP6/CMIP/<inst>/<model>/<exp>/<member>/<table>/<var>/<grid>/<version>
        model, table = parts[4], parts[7]
        name = safe_name(f"cmip6_{model}_{table}")
        if name in seen:
            name = f"{name}_{hashlib.sha1(str(d).encode()).hexdigest()[:8]}"
        seen.add(name)
        files = sorted(str(p) for p in d.glob("*.nc"))
        out.append(
            dict(
                name=name,
                sources=[str(d / "*.nc")],
                files=files,
                concat=True,
                concat_dim=None,
                groups=[],
                kind="cmip6",
            )
        )
    return tuple(out)


def predict_aggregation_failure(files: list[str], concat_dim: str = "time") -> list[str] | None:
    """Apply cloudify's documented aggregation rules with netCDF4-python.

    Returns None when the aggregation must succeed, else the list of file
    basenames that may legitimately be named as offending (files disagreeing
    with the first one).
    """
    if len(files) < 2:
        return None
    infos = []
    for f in files:
        with netCDF4.Dataset(f) as ds:
            ds.set_auto_maskandscale(False)
            c = ds.variables.get(concat_dim)
            info = {
                "units": getattr(c, "units", None) if c is not None else None,
                "calendar": getattr(c, "calendar", None) if c is not None else None,
                "first": float(np.asarray(c[0])) if c is not None and c.shape[0] else 0.0,
                "vars": {},
            }
            for name, v in ds.variables.items():
                if concat_dim in v.dimensions:
                    info["vars"][name] = (v.dtype.str if hasattr(v.dtype, "str") else str(v.dtype),
                                          v.shape[1:] if v.dimensions[0] == concat_dim else None, None)
                else:
                    is_coord = v.dimensions == (name,)
                    vals = np.asarray(v[:]).tobytes() if is_coord else None
                    info["vars"][name] = (str(v.dtype), v.shape, vals)
            infos.append((f, info))
    infos.sort(key=lambda fi: fi[1]["first"])
    first = infos[0][1]
    if len({i["calendar"] for _, i in infos}) > 1:
        # different calendars cannot be put on one axis: any file may be named
        return [Path(f).name for f, _ in infos]
    if len({i["units"] for _, i in infos}) > 1 and not all(" since " in (i["units"] or "") for _, i in infos):
        # different non-time units cannot be reconciled (CF time units are rebased)
        return [Path(f).name for f, _ in infos]
    bad = [Path(f).name for f, info in infos[1:] if info["vars"] != first["vars"]]
    return bad or None


# ---------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------
_LOADED: dict = {}


def load_sources(files: list[str]) -> xr.Dataset:
    """The files opened as one dataset (xarray's own aggregation) and loaded, once per file set:
    the local reference the processing tests compare served products with."""
    key = tuple(files)
    if key not in _LOADED:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _LOADED[key] = xr.open_mfdataset(files, **MFDATASET_KW, use_cftime=None).load()
    return _LOADED[key]


def spec_rebased(spec: dict) -> bool:
    """A series whose files use different time units (see time_units_differ). Its raw view
    decodes times: the reference's raw numbers would mix the files' units."""
    if "_rebased" not in spec:
        files = spec.get("files") or []
        spec["_rebased"] = bool(spec.get("concat")) and len(files) > 1 and time_units_differ(files)
    return spec["_rebased"]


def open_reference(spec: dict, *, raw: bool, group: str | None = None) -> xr.Dataset:
    kw = dict(RAW_KW) if raw else {}
    if raw and spec_rebased(spec):
        kw["decode_times"] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if spec["concat"] and len(spec["files"]) > 1:
            assert group is None
            extra = {}
            if spec.get("concat_dim"):
                pass  # by_coords infers the concat dim from the coordinates
            return xr.open_mfdataset(spec["files"], engine="netcdf4", **MFDATASET_KW, **kw, **extra)
        return xr.open_dataset(spec["files"][0], engine="netcdf4", group=group, **kw)


def open_served(url: str, zarr_format: int, *, raw: bool, group: str | None = None,
                rebased: bool = False) -> xr.Dataset:
    kw = dict(RAW_KW) if raw else {}
    if raw and rebased:
        kw["decode_times"] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xr.open_dataset(
            url, engine="zarr", zarr_format=zarr_format, consolidated=True, group=group, **kw
        )


# ---------------------------------------------------------------------------
# attribute normalisation / comparison
# ---------------------------------------------------------------------------
def _is_f32(x) -> bool:
    return isinstance(x, np.floating) and np.dtype(type(x)) == np.float32 or (
        isinstance(x, np.ndarray) and x.dtype == np.float32
    )


def norm_attr(v):
    """Numpy scalars -> python, 1-element arrays -> scalar, arrays -> tuples, bytes -> str."""
    if isinstance(v, np.ndarray):
        if v.size == 1:
            return norm_attr(v.reshape(-1)[0])
        return tuple(norm_attr(x) for x in v.reshape(-1))
    if isinstance(v, (list, tuple)):
        if len(v) == 1:
            return norm_attr(v[0])
        return tuple(norm_attr(x) for x in v)
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    return v


def _kind(x) -> str:
    if isinstance(x, bool):
        return "bool"
    if isinstance(x, int):
        return "int"
    if isinstance(x, float):
        return "float"
    if isinstance(x, str):
        return "str"
    if isinstance(x, tuple):
        return "seq"
    return type(x).__name__


def attr_diff(ref_val, served_val) -> str | None:
    """None if equal, else a description.  float32 reference values are
    compared at float32 precision (JSON loses the numpy type)."""
    f32 = _is_f32(ref_val)
    r, s = norm_attr(ref_val), norm_attr(served_val)
    if isinstance(r, tuple) != isinstance(s, tuple):
        return f"shape differs: ref={r!r} served={s!r}"
    rs = r if isinstance(r, tuple) else (r,)
    ss = s if isinstance(s, tuple) else (s,)
    if len(rs) != len(ss):
        return f"length differs: ref={r!r} served={s!r}"
    for a, b in zip(rs, ss):
        if _kind(a) != _kind(b):
            return f"type differs: ref={a!r} ({_kind(a)}) served={b!r} ({_kind(b)})"
        if isinstance(a, float):
            if math.isnan(a) and math.isnan(b):
                continue
            if a == b and math.copysign(1, a) == math.copysign(1, b):
                continue
            if f32 and np.float32(a) == np.float32(b):
                continue
            return f"value differs: ref={a!r} served={b!r}"
        if a != b:
            return f"value differs: ref={a!r} served={b!r}"
    return None


def attrs_diff(ref: dict, served: dict) -> list[str]:
    out = []
    for k in sorted(set(ref) | set(served)):
        if k not in served:
            out.append(f"missing attribute {k!r} (ref={norm_attr(ref[k])!r})")
        elif k not in ref:
            out.append(f"extra attribute {k!r}={norm_attr(served[k])!r}")
        else:
            d = attr_diff(ref[k], served[k])
            if d:
                out.append(f"attribute {k!r}: {d}")
    return out


# ---------------------------------------------------------------------------
# dtype + value comparison
# ---------------------------------------------------------------------------
def norm_dtype(dt) -> str:
    dt = np.dtype(dt) if not isinstance(dt, np.dtype) else dt
    if dt.kind in "OUT":
        return "str"
    if dt.kind in "iufc":
        return dt.newbyteorder("=").str.replace("=", "").lstrip("<>|")  # e.g. f4
    return dt.str.lstrip("<>|=")


def _as_str_array(a: np.ndarray) -> np.ndarray:
    flat = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in a.reshape(-1)]
    return np.array(flat, dtype=object).reshape(a.shape)


def time_units_differ(files: list[str], concat_dim: str = "time") -> bool:
    """True when the files of a series store their time axis in different units: cloudify
    then rebases the stored values onto the earliest file's units (as xarray re-encodes)."""
    units = set()
    for f in files:
        with netCDF4.Dataset(f) as ds:
            c = ds.variables.get(concat_dim)
            units.add(getattr(c, "units", None) if c is not None else None)
    return len(units) > 1


def values_diff(ref: np.ndarray, served: np.ndarray, rtol: float = 0.0, time_atol_ns: int = 0) -> str | None:
    ref = np.asarray(ref)
    served = np.asarray(served)
    if ref.shape != served.shape:
        return f"shape differs ref={ref.shape} served={served.shape}"
    if ref.dtype.kind in "OUST" or served.dtype.kind in "OUST":
        if ref.dtype.kind == "S" and served.dtype.kind == "S":
            eq = ref == served
        else:
            eq = _as_str_array(ref) == _as_str_array(served)
        eq = np.asarray(eq)
        if not eq.all():
            idx = tuple(np.argwhere(~eq)[0]) if eq.ndim else ()
            return f"{(~eq).sum()} values differ, first at {idx}: ref={ref[idx]!r} served={served[idx]!r}"
        return None
    if ref.dtype.kind == "M" or served.dtype.kind == "M":
        a, b = served.astype("datetime64[ns]"), ref.astype("datetime64[ns]")
        try:
            np.testing.assert_array_equal(a, b)
        except AssertionError as e:
            # rebased time axes: 10 h in "days since" is not exact in binary floating point
            diff = np.abs((a - b).astype("int64"))
            if not (time_atol_ns and a.shape == b.shape and (diff <= time_atol_ns).all()):
                return str(e)[:1500]
        return None
    try:
        if rtol:
            np.testing.assert_allclose(served, ref, rtol=rtol, atol=0, equal_nan=True)
        else:
            np.testing.assert_array_equal(served, ref, strict=False)
    except AssertionError as e:
        return str(e)[:1500]
    return None


def sample_boxes(shape: tuple[int, ...], chunks: tuple[int, ...], seed_text: str, n_random: int = 3):
    """Deterministic list of index tuples (slices): first chunk, last chunk,
    some pseudo-random chunks and one box straddling chunk boundaries."""
    if not shape:
        return [()]
    rng = np.random.default_rng(int(hashlib.sha1(seed_text.encode()).hexdigest()[:8], 16))
    nchunks = [max(1, math.ceil(s / c)) if s else 1 for s, c in zip(shape, chunks)]
    picks = [tuple(0 for _ in shape), tuple(n - 1 for n in nchunks)]
    for _ in range(n_random):
        picks.append(tuple(int(rng.integers(0, n)) for n in nchunks))
    boxes = []
    for p in picks:
        boxes.append(tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(p, chunks, shape)))
    # straddling box
    boxes.append(tuple(slice(min(c // 2, max(s - 1, 0)), min(c // 2 + c, s)) for c, s in zip(chunks, shape)))
    return boxes


def served_chunks(var: xr.Variable) -> tuple[int, ...]:
    ch = var.encoding.get("chunks") or var.encoding.get("preferred_chunks")
    if isinstance(ch, dict):
        ch = tuple(ch[d] for d in var.dims)
    if not ch:
        ch = tuple(max(1, s) for s in var.shape)
    return tuple(int(c) if c else 1 for c in ch)


# ---------------------------------------------------------------------------
# direct netCDF4-python view of a file.  netCDF-C/HDF5 misbehave (segfaults
# seen) when the test process opens/closes files with netCDF4-python while
# xarray holds cached handles to the same files, so everything read directly
# is read ONCE, up front (conftest's corpus fixture), before xarray opens
# anything, and served from this cache afterwards.
# ---------------------------------------------------------------------------
_NC_INFO: dict[str, dict] = {}


def _read_nc_info(path: str) -> dict:
    info = {"nodes": set(), "dims": {}, "vdims": {}, "raw": {}}
    with netCDF4.Dataset(path) as ds:
        ds.set_auto_maskandscale(False)
        ds.set_auto_chartostring(False)
        info["dims"] = {k: len(v) for k, v in ds.dimensions.items()}
        info["vdims"] = {k: tuple(v.dimensions) for k, v in ds.variables.items()}

        def walk(node, prefix):
            for vn, v in node.variables.items():
                info["nodes"].add(prefix + vn)
                v.set_auto_maskandscale(False)
                v.set_auto_chartostring(False)
                attrs = {k: v.getncattr(k) for k in v.ncattrs()}
                info["raw"][prefix + vn] = (np.asarray(v[...]), tuple(v.dimensions), attrs)
            for g, sub in node.groups.items():
                info["nodes"].add(prefix + g)
                walk(sub, prefix + g + "/")

        walk(ds, "")
    return info


def preload_nc_info(paths) -> None:
    for p in paths:
        p = str(p)
        if p not in _NC_INFO and Path(p).exists():
            try:
                _NC_INFO[p] = _read_nc_info(p)
            except OSError:
                pass  # corrupt on purpose


def nc_info(path: str) -> dict:
    path = str(path)
    if path not in _NC_INFO:
        raise KeyError(f"{path} was not preloaded (see helpers.preload_nc_info)")
    return _NC_INFO[path]


def configure_xarray() -> None:
    # never evict (= close) cached netCDF handles mid-session
    xr.set_options(file_cache_maxsize=4096)


_REF_CACHE: dict = {}


def reference(spec: dict, raw: bool, group: str | None = None) -> xr.Dataset:
    """Session-cached reference dataset (opened once, never closed)."""
    key = (spec["name"], raw, group)
    if key not in _REF_CACHE:
        _REF_CACHE[key] = open_reference(spec, raw=raw, group=group)
    return _REF_CACHE[key]
