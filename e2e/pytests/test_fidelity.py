"""Data fidelity: every served dataset, opened by real clients (xarray's zarr
engine and zarr-python 3, Zarr v2 and v3), must equal what xarray reads from
the original netCDF files (open_dataset / open_mfdataset)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import xarray as xr
import zarr

from helpers import (
    FULL_COMPARE_BYTES,
    nc_info,
    attrs_diff,
    norm_attr,
    norm_dtype,
    reference,
    open_served,
    sample_boxes,
    served_chunks,
    spec_rebased,
    values_diff,
)

warnings.filterwarnings("ignore", category=RuntimeWarning)
warnings.filterwarnings("ignore", category=UserWarning)
warnings.filterwarnings("ignore", category=FutureWarning)


def _largest_var(ds: xr.Dataset) -> str | None:
    best = None
    for k, v in ds.variables.items():
        if v.dtype.kind in "OUS":
            continue
        if best is None or v.nbytes > ds.variables[best].nbytes:
            best = k
    return best


def compare_datasets(served: xr.Dataset, ref: xr.Dataset, *, raw: bool, label: str,
                     full_var: str | None = None, rebased_time: bool = False) -> list[str]:
    problems: list[str] = []
    p = problems.append
    sv, rv = set(served.variables), set(ref.variables)
    if sv != rv:
        p(f"{label}: variables differ: missing={sorted(rv - sv)} extra={sorted(sv - rv)}")
    if set(served.coords) != set(ref.coords):
        p(f"{label}: coords differ: ref={sorted(ref.coords)} served={sorted(served.coords)}")
    if dict(served.sizes) != dict(ref.sizes):
        p(f"{label}: dims differ: ref={dict(ref.sizes)} served={dict(served.sizes)}")
    for d in attrs_diff(ref.attrs, served.attrs):
        p(f"{label}: global {d}")

    for name in sorted(sv & rv):
        s, r = served.variables[name], ref.variables[name]
        vl = f"{label}: var {name!r}"
        if s.dims != r.dims:
            p(f"{vl}: dims ref={r.dims} served={s.dims}")
            continue
        if s.shape != r.shape:
            p(f"{vl}: shape ref={r.shape} served={s.shape}")
            continue
        packed = (not raw) and ("scale_factor" in r.encoding or "add_offset" in r.encoding)
        if norm_dtype(s.dtype) != norm_dtype(r.dtype):
            if not (packed and s.dtype.kind == "f" and r.dtype.kind == "f"):
                p(f"{vl}: dtype ref={r.dtype} served={s.dtype}")
                continue
        for d in attrs_diff(r.attrs, s.attrs):
            p(f"{vl}: {d}")
        if not raw:
            # CF time metadata lives in .encoding once decoded
            for key in ("units", "calendar"):
                if key in r.encoding and r.dtype.kind in "MmO":
                    rv_, sv_ = r.encoding.get(key), s.encoding.get(key)
                    if norm_attr(rv_) != norm_attr(sv_):
                        p(f"{vl}: encoding[{key!r}] ref={rv_!r} served={sv_!r}")
        rtol = 1e-6 if (packed and s.dtype != r.dtype) else 0.0
        if r.nbytes <= FULL_COMPARE_BYTES or name == full_var:
            boxes = [tuple(slice(None) for _ in r.dims)]
        else:
            boxes = sample_boxes(r.shape, served_chunks(s), f"{label}/{name}")
        for box in boxes:
            try:
                sval = s[box].values
            except Exception as e:  # noqa: BLE001 - report any client error
                p(f"{vl}{box}: reading served values failed: {type(e).__name__}: {e}"[:1500])
                break
            rval = r[box].values
            d = values_diff(rval, sval, rtol=rtol, time_atol_ns=1000 if rebased_time else 0)
            if d:
                p(f"{vl}{box}: values differ: {d}")
                break
    return problems


def _groups(spec):
    return [None] + list(spec["groups"])


def _check(server, spec, zarr_format, raw):
    problems = []
    for group in _groups(spec):
        label = f"{spec['name']}[v{zarr_format}{' raw' if raw else ''}{' group=' + group if group else ''}]"
        ref = reference(spec, raw, group)
        try:
            served = open_served(server.zarr_url(spec["name"]), zarr_format, raw=raw, group=group,
                                 rebased=spec_rebased(spec))
        except Exception as e:  # noqa: BLE001
            problems.append(f"{label}: xr.open_dataset failed: {type(e).__name__}: {e}"[:2000])
            continue
        full = _largest_var(ref) if raw else None
        problems += compare_datasets(served, ref, raw=raw, label=label, full_var=full,
                                     rebased_time=spec_rebased(spec))
    return problems


def test_decoded_matches_reference(server, corpus, ready_name, zarr_format):
    """CF-decoded view (mask/scale, times incl. cftime calendars) equals the originals'."""
    problems = _check(server, corpus[ready_name], zarr_format, raw=False)
    assert not problems, "\n".join(problems[:40])


def test_raw_matches_reference(server, corpus, ready_name, zarr_format):
    """Undecoded view: raw dtypes, packed ints, _FillValue/scale_factor attrs, raw time numbers."""
    problems = _check(server, corpus[ready_name], zarr_format, raw=True)
    assert not problems, "\n".join(problems[:40])


# ---------------------------------------------------------------------------
# zarr-python 3 used directly
# ---------------------------------------------------------------------------
def _nc_raw(path: str, varpath: str) -> tuple[np.ndarray, tuple, dict]:
    return nc_info(path)["raw"][varpath]


DIRECT_CASES = [
    # (dataset, variable path inside the zarr hierarchy, source file name or None for aggregation)
    ("edge_packed", "t2m", "packed.nc"),
    ("edge_packed", "cover", "packed.nc"),
    ("edge_alltypes", "v_u8", "alltypes.nc"),
    ("edge_alltypes", "v_i1", "alltypes.nc"),
    ("edge_alltypes", "v_f4", "alltypes.nc"),
    ("edge_classic", "temp", "classic.nc"),
    ("edge_classic", "flag", "classic.nc"),
    ("edge_classic", "shortrec", "classic.nc"),
    ("edge_classic", "name", "classic.nc"),
    ("edge_classic1rec", "s", "classic1rec.nc"),
    ("edge_offset64", "q", "offset64.nc"),
    ("edge_groups", "g1/sub/sub_v", "groups.nc"),
    ("edge_groups", "g1/g1_xy", "groups.nc"),
    ("edge_groups", "g2/v", "groups.nc"),
    ("edge_tiny", "s", "tiny.nc"),
    ("edge_tiny", "one_v", "tiny.nc"),
    ("edge_strings", "label", "strings.nc"),
    ("edge_strings", "name", "strings.nc"),
    ("edge_sparse", "sp", "sparse.nc"),
    ("edge_sparse", "sp_nofill", "sparse.nc"),
    ("edge_sparse", "sp_nofill_f", "sparse.nc"),
    ("edge_edgechunks", "e", "edgechunks.nc"),
    ("edge_contig_big", "big", "contig_big.nc"),
    ("edge_series", "tas", None),
    ("edge_series", "time", None),
    ("edge_unlim0", "v", "unlim0.nc"),
    # Fletcher-32 first (netCDF-C) and last (h5py) in the HDF5 pipeline
    ("edge_fletcher", "fl_shuf_zlib", "fletcher.nc"),
    ("edge_fletcher", "fl_zstd", "fletcher.nc"),
    ("edge_fletcher", "h5_shuf_gzip_fl", "fletcher.nc"),
]


@pytest.mark.parametrize("name,varpath,fname", DIRECT_CASES, ids=[f"{a}:{b}" for a, b, _ in DIRECT_CASES])
def test_zarr_python_direct(server, corpus, zarr_format, name, varpath, fname):
    spec = corpus[name]
    g = zarr.open_group(server.zarr_url(name), mode="r", zarr_format=zarr_format)
    arr = g[varpath]
    assert isinstance(arr, zarr.Array), f"{name}/{varpath} is not an array: {arr!r}"
    if fname is None:
        ref_ds = reference(spec, True, None)
        ref = ref_ds[varpath].values
        dims = ref_ds[varpath].dims
        attrs = dict(ref_ds[varpath].attrs)
    else:
        path = next(f for f in spec["files"] if f.endswith("/" + fname))
        ref, dims, attrs = _nc_raw(path, varpath)
    served = arr[...]
    assert arr.shape == ref.shape, f"{name}/{varpath}: shape {arr.shape} != {ref.shape}"
    served_np = np.asarray(served)
    if ref.dtype.kind in "iuf":
        assert norm_dtype(arr.dtype) == norm_dtype(ref.dtype), f"{name}/{varpath}: dtype {arr.dtype} != {ref.dtype}"
    d = values_diff(ref, served_np)
    assert d is None, f"{name}/{varpath} (v{zarr_format}): {d}"
    # dimension names
    if zarr_format == 2:
        got_dims = arr.attrs.get("_ARRAY_DIMENSIONS")
    else:
        got_dims = arr.metadata.dimension_names
    assert list(got_dims or []) == list(dims), f"{name}/{varpath}: dims {got_dims} != {dims}"
    # v2: _FillValue travels in .zarray fill_value
    if zarr_format == 2:
        fv = attrs.get("_FillValue")
        if fv is not None:
            got = norm_attr(arr.metadata.fill_value)
            want = norm_attr(fv)
            same = got == want or (
                isinstance(want, float) and isinstance(got, float) and math.isnan(want) and math.isnan(got)
            )
            assert same, f"{name}/{varpath}: v2 fill_value {got!r} != _FillValue {want!r}"
    # plain attributes survive (except those carried elsewhere)
    for k, v in attrs.items():
        if k == "_FillValue":
            continue
        if k not in arr.attrs:
            pytest.fail(f"{name}/{varpath}: attribute {k!r} missing via zarr-python")


def test_zarr_python_walks_hierarchy(server, corpus, zarr_format):
    """zarr-python sees the netCDF group tree as a Zarr hierarchy."""
    g = zarr.open_group(server.zarr_url("edge_groups"), mode="r", zarr_format=zarr_format)
    members = {k for k, _ in g.members(max_depth=None)}
    expected = {"x", "root_v", "g1", "g1/y", "g1/v", "g1/g1_xy", "g1/sub", "g1/sub/z", "g1/sub/sub_v",
                "g1/sub/sub_scalar", "g2", "g2/y", "g2/v"}
    assert members == expected
    assert isinstance(g["g1/sub"], zarr.Group)
    assert norm_attr(g["g1/sub"].attrs["group_attr"]) == "I am g1/sub"
    assert int(g["g1/sub/sub_scalar"][...]) == 42
    assert g["g2/v"][...].tolist() == [7, 8]
