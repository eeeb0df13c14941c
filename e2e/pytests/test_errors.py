"""Error handling: status codes AND JSON messages that name the offending
thing; failed datasets; path traversal; the server survives all of it."""

from __future__ import annotations

import http.client
import urllib.parse
from pathlib import Path

import pytest
import requests

from conftest import FAILED, READY

PROBE = "edge_packed"  # t2m: shape (5, 6, 8), chunks (2, 6, 8) in the file


def _error(r: requests.Response) -> str:
    ct = r.headers.get("content-type", "")
    assert "json" in ct, f"{r.request.method} {r.url}: error body is not JSON (content-type {ct!r}): {r.text[:300]!r}"
    body = r.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    return body["error"]


def _get(server, path):
    return requests.get(server.url + path, timeout=30)


def _zarray(server, name, var):
    r = _get(server, f"/datasets/{name}/zarr/{var}/.zarray")
    assert r.status_code == 200, r.text[:300]
    return r.json()


# ---------------------------------------------------------------------------
# 404: unknown dataset / variable / key
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "route",
    ["/zarr/.zmetadata", "/zarr/zarr.json", "/zarr/.zgroup", "/zarr/t2m/.zarray", "/zarr/t2m/0.0.0",
     "/zarr/t2m/c/0/0/0", "/keys", "/dict", "/info", "/"],
)
def test_unknown_dataset_404(server, route):
    r = _get(server, f"/datasets/no_such_dataset_x9{route}")
    assert r.status_code == 404, f"{r.url}: {r.status_code}"
    assert "no_such_dataset_x9" in _error(r)


def test_head_on_missing_is_404_without_body(server):
    r = requests.head(f"{server.url}/datasets/{PROBE}/zarr/nosuchvar/.zarray", timeout=30)
    assert r.status_code == 404
    assert r.content == b""


@pytest.mark.parametrize(
    "key",
    ["nosuchvar/.zarray", "nosuchvar/.zattrs", "nosuchvar/zarr.json", "nosuchvar/0.0.0", "nosuchvar/c/0/0/0",
     "nosuchvar/0", "nosuchvar/c"],
)
def test_unknown_variable_404(server, key):
    r = _get(server, f"/datasets/{PROBE}/zarr/{key}")
    assert r.status_code == 404, f"{r.url}: {r.status_code} {r.text[:200]}"
    assert "nosuchvar" in _error(r)


@pytest.mark.parametrize("key", [".zfoo", "zarr.jsonx", ".zmetadata2", "t2m/.zfoo", "t2m/zarr.xml"])
def test_unknown_key_404(server, key):
    r = _get(server, f"/datasets/{PROBE}/zarr/{key}")
    # top-level unknown keys are plain 404s; under a variable the server may
    # equally treat the name as a malformed chunk key (400)
    allowed = (404,) if "/" not in key else (400, 404)
    assert r.status_code in allowed, f"{r.url}: {r.status_code} {r.text[:200]}"
    msg = _error(r)
    assert key.split("/")[-1] in msg, f"message {msg!r} does not name {key!r}"


@pytest.mark.parametrize("key", ["g1/nosuch/.zarray", "nogroup/sub/sub_v/.zarray", "g1/sub/nosuch/zarr.json",
                                 "g3/zarr.json", "g3/.zgroup"])
def test_unknown_group_member_404(server, key):
    r = _get(server, f"/datasets/edge_groups/zarr/{key}")
    assert r.status_code == 404, f"{r.url}: {r.status_code}"
    msg = _error(r)
    bad = [p for p in key.split("/") if p.startswith("nosuch") or p in ("nogroup", "g3")][0]
    assert bad in msg, f"message {msg!r} does not name {bad!r}"


def test_group_is_not_an_array(server):
    """g1 is a group: asking for its array metadata is a 404, not a crash."""
    r = _get(server, "/datasets/edge_groups/zarr/g1/.zarray")
    assert r.status_code == 404
    _error(r)


# ---------------------------------------------------------------------------
# 400: malformed chunk keys, out-of-range chunk indices
# ---------------------------------------------------------------------------
def _nchunks(za):
    return [-(-s // c) for s, c in zip(za["shape"], za["chunks"])]


MALFORMED_V2 = ["0.x.0", "0.0", "0.0.0.0", "-1.0.0", "0..0", "0.0.", "a.b.c", "0.0.0x", "0.1e1.0"]
MALFORMED_V3 = ["c/0/x/0", "c/0/0", "c/0/0/0/0", "c/-1/0/0", "c/0//0", "c/0/0/", "c/a/b/c", "c/0/0/0x"]


@pytest.mark.parametrize("key", MALFORMED_V2 + MALFORMED_V3)
def test_malformed_chunk_key_400(server, key):
    r = _get(server, f"/datasets/{PROBE}/zarr/t2m/{key}")
    assert r.status_code == 400, f"{r.url}: {r.status_code} {r.text[:200]}"
    msg = _error(r)
    idx = key[2:] if key.startswith("c/") else key
    assert key in msg or idx in msg, f"message {msg!r} does not name the key {key!r}"


def test_out_of_range_chunk_400(server):
    za = _zarray(server, PROBE, "t2m")
    n = _nchunks(za)
    cases = []
    for axis in range(len(n)):
        idx = [0] * len(n)
        idx[axis] = n[axis]  # first index past the end
        cases.append(".".join(map(str, idx)))
        cases.append("c/" + "/".join(map(str, idx)))
    cases += ["99999.0.0", "c/99999/0/0", "0.0.18446744073709551616", "c/0/0/18446744073709551616"]
    problems = []
    for key in cases:
        r = _get(server, f"/datasets/{PROBE}/zarr/t2m/{key}")
        if r.status_code != 400:
            problems.append(f"{key}: status {r.status_code} {r.text[:150]}")
            continue
        msg = _error(r)
        idx = key[2:] if key.startswith("c/") else key
        if key not in msg and idx not in msg:
            problems.append(f"{key}: message {msg!r} does not name the key")
    assert not problems, "\n".join(problems)


def test_scalar_chunk_keys(server):
    """0-d variables: the only chunk is '0' (v2) / 'c' (v3); anything else is 400."""
    assert _get(server, "/datasets/edge_tiny/zarr/s/0").status_code == 200
    assert _get(server, "/datasets/edge_tiny/zarr/s/c").status_code == 200
    for key in ("s/0.0", "s/1", "s/c/0"):
        r = _get(server, f"/datasets/edge_tiny/zarr/{key}")
        assert r.status_code == 400, f"{key}: {r.status_code} {r.text[:200]}"
        _error(r)


# ---------------------------------------------------------------------------
# failed datasets
# ---------------------------------------------------------------------------
def _names_offender(msg: str, spec: dict) -> bool:
    return any(Path(f).name in msg for f in (spec["offending"] or []))


def test_failed_dataset_in_status(server, corpus, failed_name):
    spec = corpus[failed_name]
    st = requests.get(server.url + "/status", timeout=30).json()
    entry = next((e for e in st["datasets"] if e["name"] == failed_name), None)
    assert entry is not None, f"{failed_name} missing from /status"
    assert entry["state"] == "failed", entry
    assert entry.get("error"), entry
    assert _names_offender(entry["error"], spec), (
        f"/status error for {failed_name} does not name any of {spec['offending']}: {entry['error']!r}"
    )
    assert failed_name not in requests.get(server.url + "/datasets", timeout=30).json()


@pytest.mark.parametrize("route", ["/zarr/.zmetadata", "/zarr/zarr.json", "/zarr/.zgroup", "/keys", "/info"])
def test_failed_dataset_503(server, corpus, failed_name, route):
    spec = corpus[failed_name]
    r = _get(server, f"/datasets/{failed_name}{route}")
    assert r.status_code == 503, f"{r.url}: {r.status_code} {r.text[:300]}"
    msg = _error(r)
    assert _names_offender(msg, spec), f"{r.url}: message {msg!r} does not name any of {spec['offending']}"


def test_failed_datasets_do_not_affect_others(server):
    for name in READY[:5] + ["edge_series", "edge_packed"]:
        r = _get(server, f"/datasets/{name}/zarr/.zmetadata")
        assert r.status_code == 200, f"{name}: {r.status_code}"


# ---------------------------------------------------------------------------
# path traversal
# ---------------------------------------------------------------------------
def _raw_get(server, path: str) -> tuple[int, bytes]:
    u = urllib.parse.urlsplit(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _traversal_paths(corpus) -> list[str]:
    packed = corpus["edge_packed"]["files"][0]
    z = f"/datasets/{PROBE}/zarr"
    enc_abs = urllib.parse.quote(packed, safe="")
    return [
        f"{z}/../../../../../../etc/passwd",
        f"{z}/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        f"{z}/%2E%2E%2F%2E%2E%2F%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        f"{z}/..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
        f"{z}/%252e%252e/%252e%252e/%252e%252e/etc/passwd",
        f"{z}/..%5c..%5c..%5cetc%5cpasswd",
        f"{z}/../packed.nc",
        f"{z}/t2m/../../packed.nc",
        f"{z}/t2m/%2e%2e/%2e%2e/packed.nc",
        f"{z}/{enc_abs}",
        f"{z}/{packed}",
        f"{z}//etc/passwd",
        f"{z}/%2Fetc%2Fpasswd",
        f"{z}/t2m/%00.zarray",
        f"{z}/t2m/..",
        f"{z}/t2m/.",
        f"/datasets/%2e%2e/zarr/.zmetadata",
        f"/datasets/..%2F..%2F..%2Fetc/zarr/.zmetadata",
        f"/datasets/{PROBE}/../../../etc/passwd",
        "/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
    ]


def test_path_traversal_never_leaks(server, corpus):
    leaks, wrong = [], []
    for path in _traversal_paths(corpus):
        status, body = _raw_get(server, path)
        if b"root:" in body or b"\x89HDF" in body or body.startswith(b"CDF"):
            leaks.append(f"{path}: {status} leaked file contents {body[:60]!r}")
        if status not in (400, 404):
            wrong.append(f"{path}: status {status} body {body[:120]!r}")
    assert not leaks, "\n".join(leaks)
    assert not wrong, "traversal attempts must get 400/404:\n" + "\n".join(wrong)


# ---------------------------------------------------------------------------
# over-long keys (regression: /zarr v3 keys cost time quadratic in their length)
# ---------------------------------------------------------------------------
def test_overlong_chunk_keys_are_refused_in_json(server):
    """A 60 KB v3 chunk key is refused with 414 JSON (longer than any URI served), a 4 KB one
    with 400 JSON (longer than any chunk key of the dataset); both without parsing them.
    Before, a 64 KB key cost ~2 s of CPU (and 64 of them stalled other reads for seconds)."""
    z = f"{server.url}/datasets/{PROBE}/zarr/t2m/c"
    r = requests.get(z + "/0" * 30_000, timeout=30)
    assert r.status_code == 414, f"{r.status_code} {r.text[:200]}"
    assert "bytes long" in _error(r)
    assert len(r.content) < 1000, "the error repeats the whole key"
    for route in ("zarr", "kerchunk"):
        r = requests.get(f"{server.url}/datasets/{PROBE}/{route}/t2m/c" + "/0" * 2000, timeout=30)
        assert r.status_code == 400, f"{route}: {r.status_code} {r.text[:200]}"
        assert "longer than any chunk key" in _error(r)
        assert len(r.content) < 1000


def test_uri_beyond_hypers_limit_is_refused(server):
    """Beyond 64 KiB hyper refuses the request line itself (414 without a body: no layer of
    ours runs); the server stays up."""
    status, _ = _raw_get(server, f"/datasets/{PROBE}/zarr/t2m/c" + "/0" * 33_000)
    assert status == 414
    assert requests.get(server.url + "/healthz", timeout=30).status_code == 200


# ---------------------------------------------------------------------------
# every error is JSON with the right status
# ---------------------------------------------------------------------------
def _raw(server, method: str, path: str, headers: dict | None = None) -> requests.Response:
    """Sends `path` exactly as given (requests would re-quote it)."""
    s = requests.Session()
    req = requests.Request(method, server.url + "/", headers=headers or {}).prepare()
    req.url = server.url + path
    return s.send(req, timeout=30)


@pytest.mark.parametrize("path", ["/datasets/%FF/keys", f"/datasets/{PROBE}/zarr/t2m/%FF",
                                  f"/datasets/{PROBE}/kerchunk/%C3%28", "/datasets/%80%80/zarr/.zmetadata"])
def test_invalid_utf8_in_path_is_400_json(server, path):
    r = _raw(server, "GET", path)
    assert r.status_code == 400, f"{path}: {r.status_code} {r.text[:200]}"
    assert "UTF-8" in _error(r)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_405_json_with_allow(server, method):
    for path in ("/datasets", f"/datasets/{PROBE}/zarr/.zmetadata", f"/datasets/{PROBE}/kerchunk.json"):
        r = _raw(server, method, path)
        assert r.status_code == 405, f"{method} {path}: {r.status_code}"
        assert "GET" in r.headers.get("allow", ""), r.headers
        assert method in _error(r)


def test_unknown_route_is_404_json(server):
    r = _get(server, "/no/such/route")
    assert r.status_code == 404 and "/no/such/route" in _error(r)


def test_oversized_headers_are_431_json(server):
    r = requests.get(server.url + "/datasets", headers={"X-Big": "v" * 40_000}, timeout=30)
    assert r.status_code == 431, r.status_code
    assert "headers" in _error(r)
    r = requests.get(server.url + "/datasets", headers={"X-Big": "v" * 8_000}, timeout=30)
    assert r.status_code == 200


@pytest.mark.parametrize("dsid", ["..", "%2e%2e", ".", "a%2Fb", "%20", ".x"])
def test_invalid_dataset_ids_are_400(server, dsid):
    bad = []
    for route in ["", "/", "/keys", "/dict", "/info", "/zarr", "/zarr/.zmetadata", "/zarr/t2m/0.0.0",
                  "/kerchunk/.zmetadata", "/kerchunk.json", "/kerchunk.parq/.zmetadata", "/stac", "/catalog.yaml"]:
        r = _raw(server, "GET", f"/datasets/{dsid}{route}")
        if r.status_code != 400:
            bad.append(f"{dsid}{route}: {r.status_code}")
        elif "invalid dataset id" not in _error(r):
            bad.append(f"{dsid}{route}: {r.text[:200]}")
    assert not bad, "\n".join(bad)


def test_kerchunk_malformed_and_out_of_range_keys_are_400(server):
    """/kerchunk answers like /zarr: 400 for keys that are no chunk of the array (a Zarr
    client would read a 404 as fill value), 404 only for chunks inside the grid that were
    never written and for names that are no array."""
    za = requests.get(f"{server.url}/datasets/{PROBE}/kerchunk/t2m/.zarray", timeout=30).json()
    n = _nchunks(za)
    bad = []
    keys = MALFORMED_V2 + [".".join(map(str, n)), f"0.0.{n[2]}", "c/0/0/0", "99999.0.0", "0.0.18446744073709551616"]
    for key in keys:
        r = requests.get(f"{server.url}/datasets/{PROBE}/kerchunk/t2m/{key}", timeout=30)
        if r.status_code != 400:
            bad.append(f"{key}: {r.status_code} {r.text[:150]}")
        elif key not in _error(r) and key[2:] not in _error(r):
            bad.append(f"{key}: message does not name it: {r.text[:150]}")
    assert not bad, "\n".join(bad)
    for key in ("nosuchvar/0.0.0", "t2m/.zfoo"):
        assert requests.get(f"{server.url}/datasets/{PROBE}/kerchunk/{key}", timeout=30).status_code == 404, key


# ---------------------------------------------------------------------------
# keep last: the server survived everything above
# ---------------------------------------------------------------------------
def test_zz_server_still_alive(server):
    assert server.alive(), "server process died:\n" + server.log_tail()
    assert requests.get(server.url + "/healthz", timeout=30).status_code == 200
    r = requests.get(f"{server.url}/datasets/{PROBE}/zarr/.zmetadata", timeout=30)
    assert r.status_code == 200
