"""`cloudify index --inline-threshold 0` references read by VirtualiZarr.

VirtualiZarr (2.5) refuses inlined chunk data, so these references carry none: every
variable is byte ranges of its files, or is left out with a warning saying why (values that
exist only in memory: strings, values rebased onto another file's time units, chunks that do
not tile a concatenated axis, filters without a numcodecs equivalent).

Each reference set is opened with VirtualiZarr's kerchunk parsers (JSON and Parquet), written
back out with VirtualiZarr's own kerchunk writer, read through fsspec and xarray and compared
with the original files, so the manifests VirtualiZarr built are checked byte for byte."""
from __future__ import annotations

import json
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from conftest import find_binary
from helpers import RAW_KW, open_reference, spec_rebased
from test_cache_kerchunk import KERCHUNK_CASES
from test_fidelity import compare_datasets

warnings.filterwarnings("ignore")

virtualizarr = pytest.importorskip("virtualizarr")
from obspec_utils.registry import ObjectStoreRegistry  # noqa: E402
from obstore.store import LocalStore  # noqa: E402
from virtualizarr.parsers import KerchunkJSONParser, KerchunkParquetParser  # noqa: E402

# What cannot be expressed without inline data, and a phrase of the reason cloudify gives.
LEFT_OUT = {
    "edge_strings": {"label": "not stored as plain bytes"},
    "edge_filters": {"f32": "Fletcher32"},
    "edge_fletcher": {v: "Fletcher32" for v in ("fl_shuf_zlib", "fl_zlib", "fl_shuf_i2", "fl_zstd",
                                                 "h5_gzip_fl", "h5_shuf_gzip_fl", "h5_shuf_fl")},
    "edge_series": {"time": "do not tile the concatenated axis"},
    "edge_series_units": {"time": "rebased", "time_bnds": "rebased"},
    "cmip6_BCC-CSM2-MR_day": {"time": "rebased", "time_bnds": "rebased"},
}
CASES = sorted(set(KERCHUNK_CASES) | set(LEFT_OUT) | {
    "edge_sparse", "edge_groups", "edge_alltypes", "edge_cal_noleap", "edge_classic1rec",
    "cmip6_MIROC6_day", "cmip6_CanESM5_Amon",
})


def _index(files: list[str], out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([find_binary(), "index", "--no-cache", *files, "-o", str(out), *extra],
                          capture_output=True, text=True, timeout=300)


def _left_out(stderr: str) -> dict[str, str]:
    out = {}
    for line in stderr.splitlines():
        if line.startswith("cloudify: warning: variable '") and "' left out: " in line:
            name, why = line[len("cloudify: warning: variable '"):].split("' left out: ", 1)
            out[name] = why
    return out


def _no_inline_data(out: Path) -> None:
    if out.suffix == ".json":
        refs = json.loads(out.read_text())["refs"]
        inline = [k for k, v in refs.items()
                  if not k.rsplit("/", 1)[-1].startswith(".z") and not isinstance(v, list)]
    else:
        import pandas as pd

        inline = [str(p) for p in out.rglob("refs.*.parq")
                  if pd.read_parquet(p, engine="fastparquet")["raw"].notna().any()]
    assert not inline, f"inline data in {inline[:5]}"


def _virtual(out: Path, group: str | None = None) -> xr.Dataset:
    parser = (KerchunkJSONParser if out.suffix == ".json" else KerchunkParquetParser)(group=group)
    return virtualizarr.open_virtual_dataset(
        f"file://{out}", registry=ObjectStoreRegistry({"file://": LocalStore()}),
        parser=parser, loadable_variables=[])


def _through_virtualizarr(out: Path, raw_kw: dict, group: str | None = None) -> tuple[xr.Dataset, set]:
    vds = _virtual(out, group)
    # VirtualiZarr's kerchunk writer cannot iterate an empty manifest (numpy refuses
    # zero-sized nditer); zero-size arrays are checked on the parsed dataset instead.
    empty = [n for n, v in vds.variables.items() if v.size == 0]
    for n in empty:
        assert vds[n].shape == vds[n].data.shape and 0 in vds[n].shape
    refs = vds.drop_vars(empty).vz.to_kerchunk(format="dict")
    ds = xr.open_dataset("reference://", engine="zarr", zarr_format=2, chunks=None,
                         backend_kwargs={"consolidated": False, "storage_options": {"fo": refs}},
                         **raw_kw)
    return ds.load(), set(empty)


# edge_sparse: variables with unwritten chunks and no _FillValue
NETCDF_DEFAULT_FILLED = {"sp_nofill", "sp_nofill_f"}
NETCDF_DEFAULT_FILL = {"i2": -32767, "f4": float(np.float32(9.9692099683868690e36)), "f8": 9.9692099683868690e36}


def _forget_v3_default_fills(served: xr.Dataset, ref: xr.Dataset) -> None:
    """VirtualiZarr holds arrays as Zarr v3, which has no `fill_value: null`: it turns a null
    into the type's default (NaN, 0) and its kerchunk writer writes that back, which xarray
    shows as `_FillValue`. Compared raw (nothing masked), only the attribute differs; drop it
    where the original has none."""
    for name, v in served.variables.items():
        fill = v.attrs.get("_FillValue")
        if fill is None or name not in ref.variables or "_FillValue" in ref[name].attrs:
            continue
        if fill in (0, "", b"") or fill != fill:  # 0, empty text or NaN
            del v.attrs["_FillValue"]
        elif name in NETCDF_DEFAULT_FILLED and fill == NETCDF_DEFAULT_FILL[ref[name].dtype.str[1:]]:
            # never-written chunks without _FillValue read as netCDF's default fill, which
            # the references declare as fill_value (else a Zarr reader would give 0)
            del v.attrs["_FillValue"]


@pytest.mark.parametrize("fmt", ["json", "parquet"])
@pytest.mark.parametrize("name", CASES)
def test_virtualizarr_reads_index_without_inline_data(corpus, tmp_path, name, fmt):
    spec = corpus[name]
    groups = [None] + list(spec["groups"])
    if fmt == "parquet" and len(groups) > 1:
        pytest.skip("fsspec's LazyReferenceMapper lists a Parquet reference set's groups as "
                    "arrays (listdir), so VirtualiZarr's Parquet parser fails on any nested group; "
                    "the JSON form of the same set is tested")
    out = tmp_path / f"refs.{fmt}"
    r = _index(spec["files"], out, "--inline-threshold", "0")
    assert r.returncode == 0, r.stderr
    _no_inline_data(out)

    left_out = _left_out(r.stderr)
    expected = LEFT_OUT.get(name, {})
    assert set(left_out) == set(expected), r.stderr
    for var, phrase in expected.items():
        assert phrase in left_out[var], left_out[var]

    raw_kw = dict(RAW_KW)
    if spec_rebased(spec):
        raw_kw["decode_times"] = True
    for group in groups:
        served, empty = _through_virtualizarr(out, raw_kw, group)
        ref = open_reference(spec, raw=True, group=group)
        gone = [v for v in left_out if v in ref.variables] if group is None else []
        ref = ref.drop_vars(gone + sorted(empty)).load()
        _forget_v3_default_fills(served, ref)
        problems = compare_datasets(served, ref, raw=True, label=f"{name} {fmt} via VirtualiZarr {group or '/'}")
        assert not problems, "\n".join(problems[:20])


def test_virtualizarr_concatenates_cloudify_references(corpus, tmp_path):
    """Per-file references from `cloudify index` combined by VirtualiZarr itself (xr.concat of
    virtual datasets) equal the series cloudify aggregates."""
    spec = corpus["cmip6_CanESM5_Amon"]
    parts = []
    for i, f in enumerate(spec["files"]):
        out = tmp_path / f"part{i}.json"
        r = _index([f], out, "--inline-threshold", "0")
        assert r.returncode == 0, r.stderr
        parts.append(_virtual(out))
    combined = xr.concat(parts, dim="time", coords="minimal", compat="override",
                         data_vars="minimal", combine_attrs="override")
    refs = combined.vz.to_kerchunk(format="dict")
    ds = xr.open_dataset("reference://", engine="zarr", zarr_format=2, chunks=None,
                         backend_kwargs={"consolidated": False, "storage_options": {"fo": refs}},
                         **RAW_KW).load()
    whole = tmp_path / "whole.json"
    assert _index(spec["files"], whole, "--inline-threshold", "0").returncode == 0
    served, _ = _through_virtualizarr(whole, dict(RAW_KW))
    for v in served.data_vars:
        xr.testing.assert_identical(ds[v].drop_vars(list(ds[v].coords)), served[v].drop_vars(list(served[v].coords)))


def test_default_index_is_not_virtualizarr_compatible_but_named(corpus, tmp_path):
    """Without the flag small variables are inlined (fsspec reads them; VirtualiZarr 2.5
    refuses them), so the flag is what makes the difference; and bad values are CLI errors."""
    spec = corpus["edge_classic"]
    out = tmp_path / "refs.json"
    assert _index(spec["files"], out).returncode == 0
    refs = json.loads(out.read_text())["refs"]
    assert any(isinstance(v, str) and v.startswith("base64:") for v in refs.values())
    with pytest.raises(NotImplementedError):
        _virtual(out)
    r = _index(spec["files"], out, "--inline-threshold=-1")
    assert r.returncode != 0 and "--inline-threshold" in r.stderr
    r = _index(spec["files"], out, "--inline-threshold", "lots")
    assert r.returncode != 0 and "--inline-threshold" in r.stderr
