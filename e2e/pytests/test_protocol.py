"""HTTP protocol behaviour: Zarr v2/v3 metadata documents, HEAD, ETag/304,
Cache-Control, CORS, and the xpublish-compatible metadata routes."""

from __future__ import annotations

import itertools
import json
import math
import re
import warnings

import numpy as np
import pytest
import requests
import xarray as xr

from conftest import FAILED, READY, start_server, stop_server
from helpers import RAW_KW, attrs_diff, nc_info, reference, values_diff

warnings.filterwarnings("ignore", category=RuntimeWarning)
warnings.filterwarnings("ignore", category=UserWarning)

PROBE = "edge_packed"  # t2m (5,6,8) int16 chunked (2,6,8)
ORIGIN = "http://client.example"


def _json(r: requests.Response):
    assert "json" in r.headers.get("content-type", ""), (
        f"{r.url}: expected JSON content-type, got {r.headers.get('content-type')!r}"
    )
    return r.json()


def _nc_var_paths(path: str) -> set[str]:
    return set(nc_info(path)["nodes"])


def _zmetadata(server, name):
    r = server.get(f"/datasets/{name}/zarr/.zmetadata")
    assert r.status_code == 200, f"{r.url}: {r.status_code} {r.text[:500]}"
    return _json(r)


def _zarr_json(server, name, path=""):
    key = f"{path}/zarr.json" if path else "zarr.json"
    r = server.get(f"/datasets/{name}/zarr/{key}")
    assert r.status_code == 200, f"{r.url}: {r.status_code} {r.text[:500]}"
    return _json(r)


# ---------------------------------------------------------------------------
# Zarr v2 consolidated metadata
# ---------------------------------------------------------------------------
V2_ARRAY_KEYS = {"shape", "chunks", "dtype", "compressor", "fill_value", "order", "filters", "zarr_format"}


def test_zmetadata_is_valid_consolidated_v2(server, corpus, ready_name):
    spec = corpus[ready_name]
    zm = _zmetadata(server, ready_name)
    assert zm.get("zarr_consolidated_format") == 1, zm.keys()
    meta = zm["metadata"]
    assert meta.get(".zgroup", {}).get("zarr_format") == 2, meta.get(".zgroup")
    assert isinstance(meta.get(".zattrs"), dict)
    arrays = sorted(k[: -len("/.zarray")] for k in meta if k.endswith("/.zarray"))
    groups = sorted(k[: -len("/.zgroup")] for k in meta if k.endswith("/.zgroup"))
    assert arrays, "no arrays in .zmetadata"
    dim_sizes: dict[tuple[str, str], int] = {}
    for a in arrays:
        za = meta[f"{a}/.zarray"]
        missing = V2_ARRAY_KEYS - set(za)
        assert not missing, f"{a}/.zarray lacks {missing}"
        assert za["zarr_format"] == 2
        assert za["order"] in ("C", "F")
        assert isinstance(za["shape"], list) and all(isinstance(s, int) and s >= 0 for s in za["shape"])
        assert len(za["chunks"]) == len(za["shape"]), f"{a}: chunks {za['chunks']} vs shape {za['shape']}"
        assert all(isinstance(c, int) and c >= 1 for c in za["chunks"]), f"{a}: chunks {za['chunks']}"
        np.dtype(za["dtype"])  # parseable
        assert za["compressor"] is None or "id" in za["compressor"]
        assert za["filters"] is None or all("id" in f for f in za["filters"])
        zattrs = meta.get(f"{a}/.zattrs")
        assert isinstance(zattrs, dict), f"{a}/.zattrs missing from .zmetadata"
        dims = zattrs.get("_ARRAY_DIMENSIONS")
        assert isinstance(dims, list) and len(dims) == len(za["shape"]), f"{a}: _ARRAY_DIMENSIONS={dims!r}"
        grp = a.rsplit("/", 1)[0] if "/" in a else ""
        for d, s in zip(dims, za["shape"]):
            prev = dim_sizes.setdefault((grp, d), s)
            assert prev == s, f"dimension {d!r} has sizes {prev} and {s} in group {grp!r}"
    for g in groups:
        assert meta[f"{g}/.zgroup"].get("zarr_format") == 2
        assert isinstance(meta.get(f"{g}/.zattrs"), dict), f"{g}/.zattrs missing"
    # same nodes as the netCDF file(s)
    files = spec["files"]
    if not spec["concat"]:
        assert set(arrays) | set(groups) == _nc_var_paths(files[0])
    # every consolidated entry is also served individually and identical
    for a in arrays[:20]:
        for suffix in (".zarray", ".zattrs"):
            r = server.get(f"/datasets/{ready_name}/zarr/{a}/{suffix}")
            assert r.status_code == 200, f"{r.url}: {r.status_code}"
            assert _json(r) == meta[f"{a}/{suffix}"], f"{a}/{suffix} differs from .zmetadata"
    for key in (".zgroup", ".zattrs"):
        r = server.get(f"/datasets/{ready_name}/zarr/{key}")
        assert r.status_code == 200
        assert _json(r) == meta[key]


# ---------------------------------------------------------------------------
# Zarr v3 root zarr.json with consolidated metadata
# ---------------------------------------------------------------------------
def test_zarr_json_is_valid_v3_with_consolidated(server, corpus, ready_name):
    root = _zarr_json(server, ready_name)
    assert root.get("zarr_format") == 3 and root.get("node_type") == "group", root
    cm = root.get("consolidated_metadata")
    assert isinstance(cm, dict), "root zarr.json has no consolidated_metadata"
    assert cm.get("kind") == "inline"
    meta = cm.get("metadata")
    assert isinstance(meta, dict) and meta
    arrays = sorted(k for k, v in meta.items() if v.get("node_type") == "array")
    groups = sorted(k for k, v in meta.items() if v.get("node_type") == "group")
    for a in arrays:
        m = meta[a]
        assert m["zarr_format"] == 3
        for key in ("shape", "data_type", "chunk_grid", "chunk_key_encoding", "fill_value", "codecs"):
            assert key in m, f"{a}: missing {key}"
        shape = m["shape"]
        cg = m["chunk_grid"]
        assert cg.get("name") == "regular", cg
        cs = cg["configuration"]["chunk_shape"]
        assert len(cs) == len(shape) and all(c >= 1 for c in cs), f"{a}: chunk_shape {cs} shape {shape}"
        cke = m["chunk_key_encoding"]
        assert cke.get("name") == "default", f"{a}: chunk_key_encoding {cke} (routes use c/i/j)"
        assert cke.get("configuration", {}).get("separator", "/") == "/"
        names = [c.get("name") for c in m["codecs"]]
        assert any(n in ("bytes", "vlen-utf8", "vlen-bytes") for n in names), f"{a}: codecs {names}"
        dn = m.get("dimension_names")
        if shape:
            assert isinstance(dn, list) and len(dn) == len(shape) and all(isinstance(d, str) for d in dn), (
                f"{a}: dimension_names={dn!r}"
            )
        assert "_ARRAY_DIMENSIONS" not in m.get("attributes", {}), f"{a}: v3 must use dimension_names"
    # individual documents agree with the consolidated copy
    for a in arrays[:20]:
        doc = _zarr_json(server, ready_name, a)
        assert doc == meta[a], f"{a}/zarr.json differs from the consolidated entry"
    for g in groups:
        doc = _zarr_json(server, ready_name, g)
        assert doc.get("node_type") == "group"
        assert doc.get("attributes", {}) == meta[g].get("attributes", {})
    # v2 and v3 describe the same hierarchy
    zm = _zmetadata(server, ready_name)["metadata"]
    v2_arrays = sorted(k[: -len("/.zarray")] for k in zm if k.endswith("/.zarray"))
    assert v2_arrays == arrays
    for a in arrays:
        assert zm[f"{a}/.zarray"]["shape"] == meta[a]["shape"], a
        assert zm[f"{a}/.zattrs"]["_ARRAY_DIMENSIONS"] == (meta[a].get("dimension_names") or []), a


# ---------------------------------------------------------------------------
# chunk grid: every chunk key that the metadata implies is served
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["edge_packed", "edge_edgechunks", "edge_tiny", "edge_classic", "edge_series",
                                  "edge_groups", "edge_strings", "edge_alltypes"])
def test_every_chunk_key_is_served(server, name, zarr_format):
    zm = _zmetadata(server, name)["metadata"]
    sess = requests.Session()
    bad = []
    for k, za in zm.items():
        if not k.endswith("/.zarray"):
            continue
        path = k[: -len("/.zarray")]
        grid = [range(max(0, math.ceil(s / c))) for s, c in zip(za["shape"], za["chunks"])]
        for idx in itertools.product(*grid):
            if zarr_format == 2:
                key = ".".join(map(str, idx)) if idx else "0"
            else:
                key = "c/" + "/".join(map(str, idx)) if idx else "c"
            r = sess.get(f"{server.zarr_url(name)}/{path}/{key}", timeout=30)
            if r.status_code != 200:
                bad.append(f"{path}/{key}: {r.status_code} {r.text[:200]}")
            elif r.headers.get("content-type", "").split(";")[0] != "application/octet-stream":
                bad.append(f"{path}/{key}: content-type {r.headers.get('content-type')!r}")
    assert not bad, "\n".join(bad[:30])


# ---------------------------------------------------------------------------
# HEAD, ETag, Cache-Control, CORS
# ---------------------------------------------------------------------------
# LAST2/LAST3 stand for t2m's last chunk (whatever chunking the server chose)
PROTOCOL_KEYS = [".zmetadata", ".zgroup", ".zattrs", "t2m/.zarray", "t2m/.zattrs", "t2m/0.0.0", "t2m/LAST2",
                 "zarr.json", "t2m/zarr.json", "t2m/c/0/0/0", "t2m/LAST3"]


def _resolve(server, key):
    if "LAST" not in key:
        return key
    za = server.get(f"/datasets/{PROBE}/zarr/t2m/.zarray").json()
    last = [-(-s // c) - 1 for s, c in zip(za["shape"], za["chunks"])]
    if key.endswith("LAST2"):
        return "t2m/" + ".".join(map(str, last))
    return "t2m/c/" + "/".join(map(str, last))


@pytest.mark.parametrize("key", PROTOCOL_KEYS)
def test_head_matches_get(server, key):
    url = f"{server.zarr_url(PROBE)}/{_resolve(server, key)}"
    g = requests.get(url, timeout=30)
    h = requests.head(url, timeout=30)
    assert g.status_code == 200, f"GET {url}: {g.status_code} {g.text[:300]}"
    assert h.status_code == 200, f"HEAD {url}: {h.status_code}"
    assert h.content == b""
    assert "content-length" in h.headers, f"HEAD {url}: no Content-Length"
    assert int(h.headers["content-length"]) == len(g.content)
    assert h.headers.get("content-type") == g.headers.get("content-type")
    if "etag" in g.headers:
        assert h.headers.get("etag") == g.headers["etag"]


@pytest.mark.parametrize("key", PROTOCOL_KEYS)
def test_etag_and_if_none_match(server, key):
    url = f"{server.zarr_url(PROBE)}/{_resolve(server, key)}"
    r1 = requests.get(url, timeout=30)
    assert r1.status_code == 200
    etag = r1.headers.get("etag")
    assert etag, f"GET {url}: no ETag"
    assert re.fullmatch(r'(W/)?"[^"]*"', etag), f"malformed ETag {etag!r}"
    r2 = requests.get(url, timeout=30)
    assert r2.headers.get("etag") == etag, "ETag not stable"
    r304 = requests.get(url, headers={"If-None-Match": etag}, timeout=30)
    assert r304.status_code == 304, f"If-None-Match {etag}: got {r304.status_code}"
    assert r304.content == b""
    assert r304.headers.get("etag") == etag
    # a list containing the tag also matches; a different tag does not
    assert requests.get(url, headers={"If-None-Match": f'"nope", {etag}'}, timeout=30).status_code == 304
    r200 = requests.get(url, headers={"If-None-Match": '"definitely-not-the-etag"'}, timeout=30)
    assert r200.status_code == 200 and r200.content == r1.content


def test_if_none_match_uses_weak_comparison(server):
    """RFC 9110 13.1.2: If-None-Match uses the weak comparison function, so
    W/"tag" matches "tag" (proxies such as nginx weaken ETags when they
    compress, and clients send back what they got)."""
    url = f"{server.zarr_url(PROBE)}/t2m/0.0.0"
    etag = requests.get(url, timeout=30).headers["etag"]
    weak = etag if etag.startswith("W/") else "W/" + etag
    r = requests.get(url, headers={"If-None-Match": weak}, timeout=30)
    assert r.status_code == 304, f"If-None-Match: {weak} -> {r.status_code}"
    assert requests.get(url, headers={"If-None-Match": "*"}, timeout=30).status_code == 304


def test_etags_differ_between_different_contents(server):
    a = requests.get(f"{server.zarr_url(PROBE)}/t2m/0.0.0", timeout=30)
    b = requests.get(f"{server.zarr_url(PROBE)}/{_resolve(server, 't2m/LAST2')}", timeout=30)
    assert a.status_code == b.status_code == 200
    if a.content != b.content:
        assert a.headers["etag"] != b.headers["etag"]
    c = requests.get(f"{server.zarr_url('edge_series')}/tas/0.0.0", timeout=30)
    assert c.headers.get("etag") != a.headers.get("etag")


@pytest.mark.parametrize("key", PROTOCOL_KEYS)
def test_cache_control(server, key):
    r = requests.get(f"{server.zarr_url(PROBE)}/{_resolve(server, key)}", timeout=30)
    assert r.status_code == 200
    cc = r.headers.get("cache-control")
    assert cc, f"{key}: no Cache-Control"
    assert "no-store" not in cc, f"{key}: Cache-Control {cc!r} forbids caching"


def _acao_ok(r):
    v = r.headers.get("access-control-allow-origin")
    return v in ("*", ORIGIN)


@pytest.mark.parametrize("key", [".zmetadata", "zarr.json", "t2m/0.0.0", "t2m/c/0/0/0"])
def test_cors_preflight_and_get(server, key):
    url = f"{server.zarr_url(PROBE)}/{_resolve(server, key)}"
    pre = requests.options(
        url,
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "range, if-none-match"},
        timeout=30,
    )
    assert pre.status_code in (200, 204), f"preflight {url}: {pre.status_code} {pre.text[:200]}"
    assert _acao_ok(pre), f"preflight: Access-Control-Allow-Origin={pre.headers.get('access-control-allow-origin')!r}"
    methods = pre.headers.get("access-control-allow-methods")
    if methods and methods != "*":
        assert "GET" in methods.upper(), methods
    g = requests.get(url, headers={"Origin": ORIGIN}, timeout=30)
    assert g.status_code == 200
    assert _acao_ok(g), f"GET: Access-Control-Allow-Origin={g.headers.get('access-control-allow-origin')!r}"


def test_cors_on_error_responses(server):
    r = requests.get(f"{server.url}/datasets/no_such_dataset/zarr/.zmetadata", headers={"Origin": ORIGIN}, timeout=30)
    assert r.status_code == 404
    assert _acao_ok(r), "browser clients cannot read error bodies without CORS headers on errors"


# ---------------------------------------------------------------------------
# byte ranges (netCDF-C's Zarr reader, GDAL and fsspec's HTTP files send Range)
# ---------------------------------------------------------------------------
RANGE_KEYS = PROTOCOL_KEYS + ["KERCHUNK:.zmetadata", "KERCHUNK:t2m/0.0.0", "REFS"]


def _range_url(server, key):
    if key.startswith("KERCHUNK:"):
        return f"{server.url}/datasets/{PROBE}/kerchunk/{key.split(':', 1)[1]}"
    if key == "REFS":
        return f"{server.url}/datasets/{PROBE}/kerchunk.json"
    return f"{server.zarr_url(PROBE)}/{_resolve(server, key)}"


@pytest.mark.parametrize("key", RANGE_KEYS)
def test_range_requests(server, key):
    url = _range_url(server, key)
    full = requests.get(url, timeout=30)
    assert full.status_code == 200, f"{url}: {full.status_code}"
    assert full.headers.get("accept-ranges") == "bytes", f"{url}: Accept-Ranges {full.headers.get('accept-ranges')!r}"
    body, n, etag = full.content, len(full.content), full.headers["etag"]
    cut = min(9, n - 1)
    cases = {f"bytes=0-{cut}": (0, cut), "bytes=1-": (1, n - 1), "bytes=-2": (n - 2, n - 1),
             f"bytes=0-{n + 1000}": (0, n - 1)}
    for rng, (lo, hi) in cases.items():
        r = requests.get(url, headers={"Range": rng}, timeout=30)
        assert r.status_code == 206, f"{url} {rng}: {r.status_code}"
        assert r.content == body[lo:hi + 1], f"{url} {rng}"
        assert r.headers.get("content-range") == f"bytes {lo}-{hi}/{n}", r.headers
        assert r.headers.get("accept-ranges") == "bytes"
        assert r.headers.get("etag") == etag
        h = requests.head(url, headers={"Range": rng}, timeout=30)
        assert h.status_code == 206 and h.content == b"", f"HEAD {url} {rng}: {h.status_code}"
        assert int(h.headers["content-length"]) == hi - lo + 1
        assert h.headers.get("content-range") == f"bytes {lo}-{hi}/{n}"
    # malformed and multiple ranges: the whole body (documented choice)
    for rng in ["bytes=5-2", "bytes=x-y", "lines=0-1", "bytes=0-0,2-3", "bytes 0-1"]:
        r = requests.get(url, headers={"Range": rng}, timeout=30)
        assert r.status_code == 200 and r.content == body, f"{url} {rng}: {r.status_code}"
    # unsatisfiable: 416, Content-Range bytes */len, JSON error
    r = requests.get(url, headers={"Range": f"bytes={n}-"}, timeout=30)
    assert r.status_code == 416, f"{url}: {r.status_code}"
    assert r.headers.get("content-range") == f"bytes */{n}"
    assert f"bytes={n}-" in _json(r)["error"]
    # If-Range: the range only for the current ETag; If-None-Match wins over Range
    r = requests.get(url, headers={"Range": "bytes=0-0", "If-Range": etag}, timeout=30)
    assert r.status_code == 206 and r.content == body[:1]
    r = requests.get(url, headers={"Range": "bytes=0-0", "If-Range": '"older"'}, timeout=30)
    assert r.status_code == 200 and r.content == body
    r = requests.get(url, headers={"Range": "bytes=0-0", "If-None-Match": etag}, timeout=30)
    assert r.status_code == 304 and r.content == b""


def test_ranges_through_fsspec_http(server):
    """fsspec's HTTPFileSystem (what GDAL-like readers and kerchunk use) reads parts of chunks
    and metadata documents with Range requests and gets exactly those bytes."""
    import fsspec

    fs = fsspec.filesystem("http")
    for key in ["t2m/0.0.0", "t2m/c/0/0/0", ".zmetadata"]:
        url = f"{server.zarr_url(PROBE)}/{key}"
        whole = requests.get(url, timeout=30).content
        n = len(whole)
        for start, end in [(0, 4), (3, n - 1), (n - 5, n), (0, n)]:
            part = fs.cat_file(url, start=start, end=end)
            assert part == whole[start:end], f"{key} [{start}:{end}]"
        with fs.open(url, "rb", block_size=7) as f:
            f.seek(n // 2)
            assert f.read(5) == whole[n // 2:n // 2 + 5]


# ---------------------------------------------------------------------------
# xpublish-compatible metadata routes
# ---------------------------------------------------------------------------
def test_datasets_lists_exactly_the_ready_ones(server):
    r = server.get("/datasets")
    assert r.status_code == 200
    ids = _json(r)
    assert isinstance(ids, list) and all(isinstance(i, str) for i in ids)
    assert len(ids) == len(set(ids)), "duplicate ids"
    assert set(ids) == set(READY), f"missing={sorted(set(READY) - set(ids))} unexpected={sorted(set(ids) - set(READY))}"


def test_status_reports_every_dataset(server):
    st = _json(server.get("/status"))
    entries = st["datasets"]
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), "duplicate names in /status"
    assert set(names) == set(READY) | set(FAILED)
    wrong = [(e["name"], e["state"], e.get("error")) for e in entries
             if e["state"] != ("ready" if e["name"] in READY else "failed")]
    assert not wrong, "unexpected states:\n" + "\n".join(map(str, wrong))
    for e in entries:
        if e["state"] == "ready":
            assert not e.get("error"), e
    # every variable of this corpus is servable: nothing may be silently dropped
    dropped = {e["name"]: e["not_served"] for e in entries if e.get("not_served")}
    assert not dropped, f"variables reported as not served: {dropped}"


def _root_ref(spec):
    return reference(spec, raw=True)


def _nc_layout(spec, ref):
    """Raw netCDF view of the root group: ({dim: size}, {var: dims}).  The
    server may describe char arrays either like xarray (strings, no strlen
    dimension) or like the file (with it); both are accepted."""
    info = nc_info(spec["files"][0])
    dims, vdims = dict(info["dims"]), dict(info["vdims"])
    for d, n in ref.sizes.items():
        dims[d] = n  # concat dim length of the aggregation
    return dims, vdims


def _dims_ok(got: dict, ref, nc_dims: dict) -> bool:
    return got == dict(ref.sizes) or got == nc_dims


def test_keys_route(server, corpus, ready_name):
    r = server.get(f"/datasets/{ready_name}/keys")
    assert r.status_code == 200, r.text[:300]
    keys = _json(r)
    assert isinstance(keys, list) and len(keys) == len(set(keys))
    spec = corpus[ready_name]
    ref = _root_ref(spec)
    root = set(ref.variables)
    if spec["groups"]:
        # xpublish lists the root node's variables; listing every variable
        # path of the hierarchy ("g1/sub/sub_v") is accepted too -- but then
        # it must be exactly the hierarchy's variables.
        nodes = _nc_var_paths(spec["files"][0])
        all_vars = {n for n in nodes if n not in set(spec["groups"])}
        assert set(keys) in (root, all_vars), f"keys={sorted(keys)} root={sorted(root)} all={sorted(all_vars)}"
    else:
        assert set(keys) == root, f"keys={sorted(keys)} ref={sorted(root)}"


@pytest.mark.parametrize("name", ["edge_packed", "edge_series", "edge_alltypes", "edge_classic",
                                  "edge_groups", "edge_strings"])
def test_dict_route(server, corpus, name):
    r = server.get(f"/datasets/{name}/dict")
    assert r.status_code == 200, r.text[:300]
    d = _json(r)
    ref = _root_ref(corpus[name])
    for k in ("coords", "data_vars", "dims", "attrs"):
        assert k in d, f"/dict lacks {k!r}: {list(d)}"
    nc_dims, nc_vdims = _nc_layout(corpus[name], ref)
    assert _dims_ok(d["dims"], ref, nc_dims), f"dims {d['dims']} vs xarray {dict(ref.sizes)} / netCDF {nc_dims}"
    assert set(d["coords"]) | set(d["data_vars"]) == set(ref.variables)
    assert not set(d["coords"]) & set(d["data_vars"])
    for dim in ref.dims:
        if dim in ref.variables:
            assert dim in d["coords"], f"dimension coordinate {dim!r} not under coords"
    for name_, entry in itertools.chain(d["coords"].items(), d["data_vars"].items()):
        v = ref.variables[name_]
        assert tuple(entry["dims"]) in (v.dims, nc_vdims.get(name_)), name_
        assert isinstance(entry.get("attrs", {}), dict)
        if "shape" in entry:
            assert tuple(entry["shape"]) == tuple(d["dims"][x] for x in entry["dims"]), name_
    assert set(d["attrs"]) == set(ref.attrs)


@pytest.mark.parametrize("name", ["edge_packed", "edge_series", "edge_alltypes", "edge_classic", "edge_tiny"])
def test_info_route(server, corpus, name):
    r = server.get(f"/datasets/{name}/info")
    assert r.status_code == 200, r.text[:300]
    info = _json(r)
    ref = _root_ref(corpus[name])
    nc_dims, nc_vdims = _nc_layout(corpus[name], ref)
    assert _dims_ok(info["dimensions"], ref, nc_dims), (
        f"dimensions {info['dimensions']} vs xarray {dict(ref.sizes)} / netCDF {nc_dims}"
    )
    assert set(info["variables"]) == set(ref.variables)
    problems = []
    for vn, entry in info["variables"].items():
        v = ref.variables[vn]
        if tuple(entry["dimensions"]) not in (v.dims, nc_vdims.get(vn)):
            problems.append(f"{vn}: dimensions {entry['dimensions']} != {list(v.dims)}")
        if v.dtype.kind in "iuf" and entry["type"] != v.dtype.name:
            problems.append(f"{vn}: type {entry['type']!r} != {v.dtype.name!r}")
        problems += [f"{vn}: {p}" for p in attrs_diff(dict(v.attrs), entry["attributes"])
                     if "_FillValue" not in p]
    problems += [f"global: {p}" for p in attrs_diff(dict(ref.attrs), info["global_attributes"])]
    assert not problems, "\n".join(problems)


def test_summary_route(server):
    r = server.get(f"/datasets/{PROBE}/")
    assert r.status_code == 200, r.text[:300]
    ct = r.headers.get("content-type", "")
    assert ct.startswith("text/html") or ct.startswith("text/plain"), ct
    for word in ("t2m", "lat", "lon", "time"):
        assert word in r.text, f"summary does not mention {word!r}"


def test_versions_route(server):
    v = _json(server.get("/versions"))
    assert isinstance(v, dict) and v


def test_openapi_lists_every_route(server):
    r = server.get("/openapi.json")
    assert r.status_code == 200
    doc = _json(r)
    assert str(doc.get("openapi", "")).startswith("3"), doc.get("openapi")
    paths = {re.sub(r"\{[^}]*\}", "{}", p).rstrip("/") or "/" for p in doc.get("paths", {})}
    wanted = ["/datasets", "/status", "/datasets/{}", "/datasets/{}/keys", "/datasets/{}/dict",
              "/datasets/{}/info", "/datasets/{}/zarr/{}", "/versions", "/healthz", "/readyz", "/metrics"]
    missing = [w for w in wanted if w not in paths]
    assert not missing, f"openapi.json lacks {missing}; has {sorted(paths)}"


def test_docs_is_html(server):
    r = server.get("/docs")
    assert r.status_code == 200
    assert r.headers.get("content-type", "").startswith("text/html")
    assert "<html" in r.text.lower()
    assert "openapi.json" in r.text


def test_health_and_ready(server):
    assert server.get("/healthz").status_code == 200
    assert server.get("/readyz").status_code == 200


_PROM_LINE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})?\s+[-+0-9.eEInfNa]+(\s+\d+)?$')


def test_metrics_prometheus_text(server):
    r1 = server.get("/metrics")
    assert r1.status_code == 200
    assert r1.headers.get("content-type", "").startswith("text/plain"), r1.headers.get("content-type")
    lines = [line for line in r1.text.splitlines() if line.strip()]
    assert any(line.startswith("# TYPE") for line in lines), "no # TYPE lines"
    bad = [line for line in lines if not line.startswith("#") and not _PROM_LINE.match(line)]
    assert not bad, f"not Prometheus exposition lines: {bad[:5]}"
    for _ in range(5):
        server.get(f"/datasets/{PROBE}/zarr/t2m/0.0.0")
    r2 = server.get("/metrics")
    assert r2.text != r1.text, "metrics did not change after serving requests"


# ---------------------------------------------------------------------------
# other CLI forms (each starts its own short-lived server)
# ---------------------------------------------------------------------------
def test_cli_serve_name_paths(corpus, workdir):
    spec = corpus["edge_series"]
    url, proc, log = start_server(["serve", "cli_series", *spec["files"], "--concat-dim", "time"], workdir, "cli_series")
    try:
        ids = requests.get(url + "/datasets", timeout=30).json()
        deadline = 60
        import time as _t

        t0 = _t.monotonic()
        while "cli_series" not in ids and _t.monotonic() - t0 < deadline:
            _t.sleep(0.2)
            ids = requests.get(url + "/datasets", timeout=30).json()
        assert ids == ["cli_series"], ids
        ref = reference(spec, raw=True)
        for zf in (2, 3):
            ds = xr.open_dataset(f"{url}/datasets/cli_series/zarr", engine="zarr", zarr_format=zf,
                                 consolidated=True, **RAW_KW)
            assert set(ds.variables) == set(ref.variables)
            for v in ("time", "tas", "pr"):
                assert values_diff(ref[v].values, ds[v].values) is None, v
    finally:
        stop_server(proc)


def test_cli_serve_demo(workdir):
    url, proc, log = start_server(["serve", "--demo"], workdir, "demo")
    try:
        import time as _t

        t0 = _t.monotonic()
        ids = []
        while _t.monotonic() - t0 < 60:
            ids = requests.get(url + "/datasets", timeout=30).json()
            if "demo" in ids:
                break
            _t.sleep(0.2)
        assert "demo" in ids, ids
        for zf in (2, 3):
            ds = xr.open_dataset(f"{url}/datasets/demo/zarr", engine="zarr", zarr_format=zf, consolidated=True)
            assert ds.variables, "demo dataset is empty"
            for v in ds.data_vars:
                ds[v].values  # readable
    finally:
        stop_server(proc)


# ---------------------------------------------------------------------------
# concurrency: many clients at once get exactly what one client gets
# ---------------------------------------------------------------------------
def test_concurrent_reads_are_consistent(server):
    from concurrent.futures import ThreadPoolExecutor

    urls = []
    for name in ("edge_contig_big", "edge_edgechunks", "edge_series", "edge_packed", READY[0], READY[1]):
        zm = _zmetadata(server, name)["metadata"]
        for k, za in zm.items():
            if not k.endswith("/.zarray"):
                continue
            path = k[: -len("/.zarray")]
            grid = [range(min(3, max(1, -(-s // c)))) for s, c in zip(za["shape"], za["chunks"])]
            for idx in itertools.islice(itertools.product(*grid), 6):
                key = ".".join(map(str, idx)) if idx else "0"
                urls.append(f"{server.zarr_url(name)}/{path}/{key}")
                key3 = "c/" + "/".join(map(str, idx)) if idx else "c"
                urls.append(f"{server.zarr_url(name)}/{path}/{key3}")
        urls.append(f"{server.zarr_url(name)}/.zmetadata")
        urls.append(f"{server.zarr_url(name)}/zarr.json")
    urls = urls[:400]
    sess = requests.Session()
    sequential = {}
    for u in urls:
        r = sess.get(u, timeout=60)
        assert r.status_code == 200, f"{u}: {r.status_code}"
        sequential[u] = r.content

    def fetch(u):
        r = requests.get(u, timeout=120)
        return u, r.status_code, r.content

    work = urls * 2
    with ThreadPoolExecutor(max_workers=16) as ex:
        results = list(ex.map(fetch, work))
    bad = [f"{u}: {st}" for u, st, body in results if st != 200 or body != sequential[u]]
    assert not bad, "concurrent responses differ from sequential ones:\n" + "\n".join(bad[:20])


# ---------------------------------------------------------------------------
# attribute encoding details that xarray's normalisation would hide
# ---------------------------------------------------------------------------
def test_length1_attributes_are_scalars_and_types_survive(server):
    zm = _zmetadata(server, "edge_alltypes")["metadata"]
    za = zm[".zattrs"]
    v3 = _zarr_json(server, "edge_alltypes")["attributes"]
    for attrs, label in ((za, "v2 .zattrs"), (v3, "v3 zarr.json")):
        assert attrs["g_one_elem_arr"] == 5 and isinstance(attrs["g_one_elem_arr"], int), (
            f"{label}: length-1 attribute served as {attrs['g_one_elem_arr']!r}"
        )
        assert attrs["g_u8"] == 2**64 - 1 and isinstance(attrs["g_u8"], int), f"{label}: {attrs['g_u8']!r}"
        assert attrs["g_i8"] == 2**63 - 1, f"{label}: {attrs['g_i8']!r}"
        assert attrs["g_i8_arr"] == [-(2**63), -(2**63) + 1, 0], f"{label}: {attrs['g_i8_arr']!r}"
        assert isinstance(attrs["g_f4"], float) and isinstance(attrs["g_f8"], float), label
        assert attrs["g_text_unicode"] == "Zürich ∑ 日本", label
        assert attrs["g_text_empty"] == "", label
        assert attrs["g_nc_string_arr"] == ["first", "second", "third"], label
        assert attrs["g_f8_special"][0] == 1e308 and attrs["g_f8_special"][2] == 5e-324, label
    # a variable with a 1-element netCDF attribute of each numeric type
    va = zm["v_i2/.zattrs"]
    assert va["att_i2"] == -32767 and isinstance(va["att_i2"], int), va
    assert va["att_i2_arr"] == [-32768, -32767, 0, 1, 32766, 32767], va
