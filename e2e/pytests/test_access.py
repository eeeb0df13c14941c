"""Per-dataset access control (``access`` in the dataset config): static bearer tokens
(SHA-256 digests in a file), OIDC JWTs verified against the keys a real OIDC provider
(``oidc-provider-mock``) serves, HMAC-signed URLs; enforced on every data route of a private
dataset, with private datasets left out of the listings for callers who may not read them,
and ``/auth/check`` behind a real nginx ``auth_request``.

Every key is generated here; tokens are signed here (PyJWT) with the key the OIDC mock
publishes, so each bad-token case is built exactly.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import warnings

import flask
import jwt
import numpy as np
import pytest
import requests
import werkzeug.serving
import xarray as xr
import zarr
from authlib import jose
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import helpers
import oidc_provider_mock
from conftest import start_server, stop_server, wait_until_settled

FILE = sorted(str(p) for p in helpers.cmip6_root().rglob(
    "ta_Amon_AWI-CM-1-1-MR_historical_r1i1p1f1_gn_1959*.nc"))
AUD = "cloudify-test"
TOKEN_SECRET = "static-token-of-secret-0123456789"
TOKEN_OTHER = "static-token-of-other-9876543210"
SIGNING_KEY = b"url-signing-key-for-tests"


def _rsa():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Oidc:
    """oidc-provider-mock in a thread, publishing a key pair generated here."""

    def __init__(self):
        self.key = _rsa()
        self.kid = "k1"
        app = oidc_provider_mock.app()
        oidc = self

        @app.before_request
        def publish_test_key():  # runs after the mock's own hook that sets its storage
            storage = flask.g.oidc_provider_mock_storage
            storage.jwk = jose.RSAKey.import_key(_pem(oidc.key).decode(), {"kid": oidc.kid})
            oidc.requests += 1

        self.requests = 0
        self.server = werkzeug.serving.make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                       daemon=True)
        self.thread.start()

    def token(self, key=None, kid=None, alg="RS256", **claims) -> str:
        now = int(time.time())
        body = {"iss": self.url, "aud": AUD, "sub": "alice", "iat": now, "exp": now + 300,
                "groups": ["cmip"]}
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, key if key is not None else self.key, algorithm=alg,
                          headers={"kid": kid or self.kid})

    def stop(self):
        self.server.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def oidc():
    o = Oidc()
    yield o
    o.stop()


@pytest.fixture(scope="module")
def served(tmp_path_factory, oidc):
    assert FILE, "sample data missing"
    root = tmp_path_factory.mktemp("access")
    tokens = root / "tokens-secret"
    tokens.write_text("# readers of 'secret'\n" + hashlib.sha256(TOKEN_SECRET.encode()).hexdigest() + "\n")
    other = root / "tokens-other"
    other.write_text(hashlib.sha256(TOKEN_OTHER.encode()).hexdigest() + "\n")
    key = root / "url-key"
    key.write_bytes(SIGNING_KEY + b"\n")
    dead = f"http://127.0.0.1:{_free_port()}"
    cfg = {"datasets": [
        {"name": "open", "sources": FILE},
        {"name": "secret", "sources": FILE,
         "processing": {"views": {"clim": {"groupby": {"by": "time.season", "reduce": "mean"}}}},
         "access": {"public": False, "tokenFile": str(tokens), "signedUrlKeyFile": str(key),
                    "oidc": {"issuer": oidc.url, "audience": AUD, "grants": ["cmip"]}}},
        {"name": "other", "sources": FILE, "access": {"public": False, "tokenFile": str(other)}},
        {"name": "unreach", "sources": FILE,
         "access": {"public": False, "oidc": {"issuer": dead, "audience": AUD, "grants": ["cmip"]}}},
    ]}
    path = root / "cloudify.yaml"
    path.write_text(json.dumps(cfg))
    url, proc, log = start_server(["serve", "--config", str(path)], root, "access",
                                  extra_env={"CLOUDIFY_CACHE_DIR": str(root / "cache"),
                                             "CLOUDIFY_LOG": "debug"})
    try:
        # /status is operational and lists every dataset (the operator reads it)
        wait_until_settled(url, ["open", "secret", "secret.clim", "other", "unreach"], proc)
        yield url, log, tokens
    finally:
        stop_server(proc)


def bearer(t: str) -> dict:
    return {"Authorization": f"Bearer {t}"}


def data_paths(name: str) -> list[str]:
    """Every kind of data route of a dataset (chunk keys of variable ta)."""
    return [
        f"/datasets/{name}", f"/datasets/{name}/info", f"/datasets/{name}/keys", f"/datasets/{name}/dict",
        f"/datasets/{name}/zarr/.zmetadata", f"/datasets/{name}/zarr/zarr.json",
        f"/datasets/{name}/zarr/ta/.zarray", f"/datasets/{name}/zarr/ta/0.0.0.0",
        f"/datasets/{name}/zarr/ta/c/0/0/0/0",
        f"/datasets/{name}/zarr/ta/99.99.99.99",  # does not exist: still 401, never 404
        f"/datasets/{name}/kerchunk.json", f"/datasets/{name}/kerchunk/.zmetadata",
        f"/datasets/{name}/kerchunk.parq/.zmetadata",
        f"/datasets/{name}/opendap.dds", f"/datasets/{name}/opendap.dods?ta[0][0][0][0]",
        f"/datasets/{name}/groupby/ta/time/mean", f"/datasets/{name}/groupby/ta/time.month/mean/zarr/.zmetadata",
        f"/datasets/{name}/histogram/ta?bins=4&range=200,300",
        f"/datasets/{name}/stac", f"/datasets/{name}/catalog.yaml",
        f"/datasets/{name.replace('e', '%65', 1)}/zarr/.zmetadata",  # percent-encoded id
    ]


def test_public_dataset_and_listings_for_anonymous(served):
    url, _, _ = served
    assert requests.get(f"{url}/datasets/open/zarr/.zmetadata", timeout=30).status_code == 200
    assert requests.get(f"{url}/datasets", timeout=30).json() == ["open"]
    assert requests.get(f"{url}/", timeout=30).json()["datasets"] == ["open"]
    for path in ("/stac-collection-all.json", "/intake.yaml"):
        text = requests.get(url + path, timeout=60).text
        assert "datasets/open" in text, path
        for private in ("secret", "other", "unreach"):
            assert f"datasets/{private}" not in text, (path, private)


def test_every_data_route_needs_a_token(served):
    url, _, _ = served
    # views are datasets of their own with their dataset's access
    for path in data_paths("secret") + data_paths("secret.clim"):
        for method in (requests.get, requests.head):
            r = method(url + path, timeout=30)
            assert r.status_code == 401, (method.__name__, path, r.status_code, r.text[:200])
            assert r.headers["WWW-Authenticate"].startswith("Bearer"), path
        assert "bearer token" in requests.get(url + path, timeout=30).json()["error"]


def test_static_token_reads_with_real_clients(served):
    url, _, _ = served
    h = bearer(TOKEN_SECRET)
    view = [f"/datasets/secret.clim{p}" for p in ("/zarr/.zmetadata", "/zarr/zarr.json", "/info", "/opendap.dds")]
    for path in data_paths("secret") + view:
        r = requests.get(url + path, headers=h, timeout=60)
        if path.endswith("99.99.99.99"):
            assert r.status_code in (400, 404), (path, r.status_code)  # authorised: the key's own answer
        else:
            assert r.status_code == 200, (path, r.status_code, r.text[:300])
            assert r.headers.get("Cache-Control") == "private", path
    ref = xr.open_dataset(FILE[0]).load()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fmt in (2, 3):
            ds = xr.open_dataset(f"{url}/datasets/secret/zarr", engine="zarr", zarr_format=fmt,
                                 consolidated=fmt == 2 or None,
                                 storage_options={"headers": h}).load()
            np.testing.assert_array_equal(ds["ta"].values, ref["ta"].values)
        # zarr-python directly, v3 metadata
        g = zarr.open_group(f"{url}/datasets/secret/zarr", mode="r", zarr_format=3,
                            storage_options={"headers": h})
        np.testing.assert_array_equal(g["ta"][:], ref["ta"].values)
        # without the headers the same clients fail with the 401, not with empty data
        with pytest.raises(Exception) as e:
            xr.open_dataset(f"{url}/datasets/secret/zarr", engine="zarr", zarr_format=2).load()
        assert "401" in str(e.value) or "Unauthorized" in str(e.value) or "FileNotFound" in type(e.value).__name__


def test_token_of_another_dataset_is_403_unknown_token_401(served):
    url, _, _ = served
    r = requests.get(f"{url}/datasets/secret/zarr/.zmetadata", headers=bearer(TOKEN_OTHER), timeout=30)
    assert r.status_code == 403, r.text
    assert 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]
    assert requests.get(f"{url}/datasets/other/zarr/.zmetadata", headers=bearer(TOKEN_OTHER),
                        timeout=30).status_code == 200
    r = requests.get(f"{url}/datasets/secret/zarr/.zmetadata", headers=bearer("wrong-token"), timeout=30)
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    assert "wrong-token" not in r.text and "wrong-token" not in r.headers["WWW-Authenticate"]
    # Basic: the password is taken as the token (for .netrc clients); a wrong one is 401
    r = requests.get(f"{url}/datasets/secret/zarr/.zmetadata", auth=("u", "p"), timeout=30)
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    r = requests.get(f"{url}/datasets/secret/zarr/.zmetadata", headers={"Authorization": "Digest x"},
                     timeout=30)
    assert r.status_code == 401 and "Bearer" in r.json()["error"]


def test_listings_for_token_holders(served):
    url, _, _ = served
    assert requests.get(f"{url}/datasets", headers=bearer(TOKEN_SECRET), timeout=30).json() == [
        "open", "secret", "secret.clim"]
    assert requests.get(f"{url}/datasets", headers=bearer(TOKEN_OTHER), timeout=30).json() == ["open", "other"]
    text = requests.get(f"{url}/intake.yaml", headers=bearer(TOKEN_SECRET), timeout=60).text
    assert "datasets/secret" in text and "datasets/other" not in text


def test_token_file_is_read_again_when_it_changes(served):
    url, _, tokens = served
    new = "rotated-token-abcdef"
    old = tokens.read_text()
    try:
        tokens.write_text(hashlib.sha256(new.encode()).hexdigest() + "\n")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = requests.get(f"{url}/datasets/secret/zarr/.zattrs", headers=bearer(new), timeout=30)
            if r.status_code == 200:
                break
            time.sleep(0.3)
        assert r.status_code == 200
        assert requests.get(f"{url}/datasets/secret/zarr/.zattrs", headers=bearer(TOKEN_SECRET),
                            timeout=30).status_code == 401
    finally:
        tokens.write_text(old)
        time.sleep(1.2)
        os.utime(tokens)


def test_jwts_from_the_oidc_provider(served, oidc):
    url, _, _ = served
    path = f"{url}/datasets/secret/zarr/ta/0.0.0.0"
    assert requests.get(path, headers=bearer(oidc.token()), timeout=30).status_code == 200
    # scope strings grant too? only with claim: scope (not configured): groups decide here
    r = requests.get(path, headers=bearer(oidc.token(groups=["other"])), timeout=30)
    assert r.status_code == 403 and "groups" in r.json()["error"], r.text
    # a valid JWT does not open a dataset without OIDC
    assert requests.get(f"{url}/datasets/other/zarr/.zattrs", headers=bearer(oidc.token()),
                        timeout=30).status_code == 401

    now = int(time.time())
    good = oidc.token()
    head, body, sig = good.split(".")
    tampered_body = jwt.utils.base64url_encode(json.dumps(
        {**jwt.decode(good, options={"verify_signature": False}), "groups": ["cmip", "admin"]}).encode()).decode()
    other_key = _rsa()
    ec_key = ec.generate_private_key(ec.SECP256R1())
    cases = {
        "malformed": ("not.a.jwt", "malformed"),
        "garbage": ("abc", "not recognised"),
        "expired": (oidc.token(exp=now - 120, iat=now - 600), "expired"),
        "not yet valid": (oidc.token(nbf=now + 600), "not valid yet"),
        "wrong iss": (oidc.token(iss="https://evil.example"), "issuer"),
        "wrong aud": (oidc.token(aud="someone-else"), "audience"),
        "no exp": (oidc.token(exp=None), "exp"),
        "alg none": (jwt.encode({"iss": oidc.url, "aud": AUD, "exp": now + 300, "groups": ["cmip"]}, None,
                                algorithm="none"), "alg none"),
        "HS256 with the public key": (jwt.encode({"iss": oidc.url, "aud": AUD, "exp": now + 300},
                                                 "secret", algorithm="HS256", headers={"kid": "k1"}),
                                      "algorithm HS256"),
        "unknown kid": (oidc.token(key=other_key, kid="unknown"), "kid"),
        "signed by another key": (oidc.token(key=other_key), "signature"),
        "tampered claims": (f"{head}.{tampered_body}.{sig}", "signature"),
        "ES256 with the RSA kid": (oidc.token(key=ec_key, alg="ES256"), "does not match its signing key"),
    }
    for case, (token, reason) in cases.items():
        r = requests.get(path, headers=bearer(token), timeout=30)
        assert r.status_code == 401, (case, r.status_code, r.text)
        challenge = r.headers["WWW-Authenticate"]
        assert 'error="invalid_token"' in challenge, (case, challenge)
        assert reason in r.json()["error"] and reason in challenge, (case, r.json(), challenge)
        assert token not in r.text and token not in challenge, case


def test_key_rotation_refreshes_the_jwks(served, oidc):
    url, _, _ = served
    path = f"{url}/datasets/secret/zarr/.zattrs"
    assert requests.get(path, headers=bearer(oidc.token()), timeout=30).status_code == 200
    time.sleep(2.2)  # the server fetches the key set at most every 2 s
    old_key, old_kid = oidc.key, oidc.kid
    oidc.key, oidc.kid = _rsa(), "k2"
    try:
        before = oidc.requests
        assert requests.get(path, headers=bearer(oidc.token()), timeout=30).status_code == 200
        assert oidc.requests > before, "the unknown kid made the server fetch the keys again"
        # known kids are served from the cache: no fetch per request
        before = oidc.requests
        for _ in range(5):
            assert requests.get(path, headers=bearer(oidc.token()), timeout=30).status_code == 200
        assert oidc.requests == before
    finally:
        oidc.key, oidc.kid = old_key, old_kid
        time.sleep(2.2)


def test_unreachable_jwks_is_503_for_that_dataset_only(served, oidc):
    url, _, _ = served
    r = requests.get(f"{url}/datasets/unreach/zarr/.zattrs", headers=bearer(oidc.token()), timeout=30)
    assert r.status_code == 503 and "cannot be fetched" in r.json()["error"], r.text
    assert requests.get(f"{url}/datasets/unreach/zarr/.zattrs", timeout=30).status_code == 401
    assert requests.get(f"{url}/datasets/open/zarr/.zattrs", timeout=30).status_code == 200
    assert requests.get(f"{url}/datasets/secret/zarr/.zattrs", headers=bearer(TOKEN_SECRET),
                        timeout=30).status_code == 200


def sign(dataset: str, expires: int, key: bytes = SIGNING_KEY) -> str:
    """The README's recipe."""
    return hmac.new(key, f"{dataset}\n{expires}".encode(), hashlib.sha256).hexdigest()


def test_signed_urls(served):
    url, _, _ = served
    exp = int(time.time()) + 300
    q = f"expires={exp}&signature={sign('secret', exp)}"
    r = requests.get(f"{url}/datasets/secret/zarr/.zmetadata?{q}", timeout=30)
    assert r.status_code == 200, r.text
    # the OPeNDAP constraint still works next to the signature parameters
    r = requests.get(f"{url}/datasets/secret/opendap.ascii?ta[0][0][0][0:1]&{q}", timeout=30)
    assert r.status_code == 200 and "ta" in r.text, r.text[:300]
    past = int(time.time()) - 1
    bad = {
        "expired": (f"expires={past}&signature={sign('secret', past)}", "expired"),
        "tampered expiry": (f"expires={exp + 1}&signature={sign('secret', exp)}", "does not verify"),
        "other dataset's signature": (f"expires={exp}&signature={sign('other', exp)}", "does not verify"),
        "wrong key": (f"expires={exp}&signature={sign('secret', exp, b'x')}", "does not verify"),
        "not hex": (f"expires={exp}&signature=xyz", "does not verify"),
        "no signature": (f"expires={exp}", "does not verify"),
        "bad expiry": (f"expires=soon&signature={sign('secret', exp)}", "expires"),
    }
    for case, (query, reason) in bad.items():
        r = requests.get(f"{url}/datasets/secret/zarr/.zmetadata?{query}", timeout=30)
        assert r.status_code == 401 and reason in r.json()["error"], (case, r.status_code, r.text)
        assert SIGNING_KEY.decode() not in r.text
    # a dataset without a signing key refuses signed URLs
    r = requests.get(f"{url}/datasets/other/zarr/.zmetadata?{q}", timeout=30)
    assert r.status_code == 401 and "signed URLs" in r.json()["error"]


def test_auth_check_route(served):
    url, _, _ = served
    check = f"{url}/auth/check"
    assert requests.get(check, timeout=30).status_code == 400
    orig = {"X-Original-URI": "/datasets/secret/zarr/.zmetadata"}
    r = requests.get(check, headers=orig, timeout=30)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert requests.get(check, headers={**orig, **bearer(TOKEN_SECRET)}, timeout=30).status_code == 204
    assert requests.get(check, headers={**orig, **bearer(TOKEN_OTHER)}, timeout=30).status_code == 403
    assert requests.get(check, headers={"X-Original-URI": "/datasets/open/zarr/.zmetadata"},
                        timeout=30).status_code == 204
    exp = int(time.time()) + 60
    signed = {"X-Original-URI": f"/datasets/secret/zarr/.zattrs?expires={exp}&signature={sign('secret', exp)}"}
    assert requests.get(check, headers=signed, timeout=30).status_code == 204


def test_nginx_auth_request_in_front(served, tmp_path):
    url, _, _ = served
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(exe):
        pytest.fail("nginx is not installed (e2e/setup.sh installs it)")
    upstream = url.split("://", 1)[1]
    port = _free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""
daemon off;
master_process off;
error_log {tmp_path}/error.log;
pid {tmp_path}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log {tmp_path}/access.log;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location = /_auth {{
            internal;
            proxy_pass http://{upstream}/auth/check;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
        }}
        location / {{
            auth_request /_auth;
            proxy_pass http://{upstream};
        }}
    }}
}}
""")
    proc = subprocess.Popen([exe, "-c", str(conf), "-p", str(tmp_path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                requests.get(base + "/healthz", timeout=2)
                break
            except requests.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)
        assert requests.get(f"{base}/datasets/secret/zarr/.zmetadata", timeout=30).status_code == 401
        assert requests.get(f"{base}/datasets/secret/zarr/.zmetadata", headers=bearer(TOKEN_OTHER),
                            timeout=30).status_code == 403
        assert requests.get(f"{base}/datasets/open/zarr/.zmetadata", timeout=30).status_code == 200
        ref = xr.open_dataset(FILE[0]).load()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = xr.open_dataset(f"{base}/datasets/secret/zarr", engine="zarr", zarr_format=2,
                                 storage_options={"headers": bearer(TOKEN_SECRET)}).load()
        np.testing.assert_array_equal(ds["ta"].values, ref["ta"].values)
        # the sub-requests reached /auth/check
        assert "/datasets/secret/zarr" in (tmp_path / "access.log").read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_tokens_are_never_logged(served, oidc):
    url, log, _ = served
    # requests with every kind of credential, good and bad
    requests.get(f"{url}/datasets/secret/zarr/.zattrs", headers=bearer(TOKEN_SECRET), timeout=30)
    requests.get(f"{url}/datasets/secret/zarr/.zattrs", headers=bearer("leaky-bad-token"), timeout=30)
    jwt_token = oidc.token()
    requests.get(f"{url}/datasets/secret/zarr/.zattrs", headers=bearer(jwt_token), timeout=30)
    text = log.read_text(errors="replace")
    for secret in (TOKEN_SECRET, TOKEN_OTHER, "leaky-bad-token", jwt_token, jwt_token.split(".")[2],
                   SIGNING_KEY.decode()):
        assert secret not in text


# --- clients that are not Python: GDAL and netCDF-C (command-line tools of e2e/setup.sh) ---

def _tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        pytest.fail(f"{name} is not installed (e2e/setup.sh installs gdal-bin and netcdf-bin)")
    return exe


def _gdal_slice(url: str, tmp_path, env: dict) -> subprocess.CompletedProcess:
    """gdal_translate of ta[0, 0, :, :] of the dataset's Zarr over /vsicurl/ into an ASCII grid
    (full float32 precision)."""
    out = tmp_path / "slice.asc"
    for p in tmp_path.glob("slice.*"):
        p.unlink()
    return subprocess.run(
        [_tool("gdal_translate"), "-q", "-of", "AAIGrid", "-co", "FORCE_CELLSIZE=TRUE", f'ZARR:"/vsicurl/{url}":/ta:0:0', str(out)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
             "CPL_VSIL_CURL_USE_HEAD": "NO", "GDAL_HTTP_MAX_RETRY": "0", **env})


def test_gdal_reads_a_private_dataset_with_gdal_http_headers(served, tmp_path):
    url, _, _ = served
    # GDAL turns the grid north up: the file's latitudes ascend, so its rows come reversed
    ref = xr.open_dataset(FILE[0]).load()["ta"].values[0, 0][::-1]
    zarr_url = f"{url}/datasets/secret/zarr"
    # without credentials GDAL cannot open it (the server answers 401, never an empty array)
    r = _gdal_slice(zarr_url, tmp_path, {})
    assert r.returncode != 0, r.stdout
    assert not (tmp_path / "slice.asc").exists()
    # a wrong token: the same
    r = _gdal_slice(zarr_url, tmp_path, {"GDAL_HTTP_HEADERS": "Authorization: Bearer not-a-token"})
    assert r.returncode != 0
    # GDAL_HTTP_HEADERS (GDAL >= 3.6) sends the header with every /vsicurl/ request
    r = _gdal_slice(zarr_url, tmp_path, {"GDAL_HTTP_HEADERS": f"Authorization: Bearer {TOKEN_SECRET}"})
    assert r.returncode == 0, r.stderr[-2000:]
    got = np.loadtxt(tmp_path / "slice.asc", skiprows=5).astype("f4")
    np.testing.assert_array_equal(got, ref)
    # GDAL_HTTP_HEADER_FILE (older GDAL): the header in a file, out of the process list
    hdr = tmp_path / "headers.txt"
    hdr.write_text(f"Authorization: Bearer {TOKEN_SECRET}\n")
    r = _gdal_slice(zarr_url, tmp_path, {"GDAL_HTTP_HEADER_FILE": str(hdr)})
    assert r.returncode == 0, r.stderr[-2000:]
    np.testing.assert_array_equal(np.loadtxt(tmp_path / "slice.asc", skiprows=5).astype("f4"), ref)
    assert TOKEN_SECRET not in r.stderr


def _ncdump(target: str, home, *args) -> subprocess.CompletedProcess:
    args = args or ("-v", "lat")
    """ncdump with HOME (and the working directory) at `home`, where netCDF-C reads its
    .ncrc/.dodsrc."""
    return subprocess.run([_tool("ncdump"), *args, target], capture_output=True, text=True, timeout=120,
                          cwd=home, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)})


def _numbers(cdl: str, var: str) -> np.ndarray:
    body = cdl.split("data:", 1)[1].split(f"{var} =", 1)[1].split(";", 1)[0]
    return np.array([float(x) for x in body.replace("\n", " ").split(",")])


def test_netcdf_c_opendap_with_netrc_or_rc_credentials(served, tmp_path):
    """netCDF-C's OPeNDAP client sends no custom headers (its rc file knows no bearer
    setting), but it sends user and password from `.netrc` (HTTP.NETRC in ~/.ncrc): the
    server takes the password of HTTP Basic as the token."""
    url, _, _ = served
    ref = xr.open_dataset(FILE[0]).load()["lat"].values
    target = f"{url}/datasets/secret/opendap"
    host = url.split("://", 1)[1]

    anon = tmp_path / "anon"
    anon.mkdir()
    r = _ncdump(target, anon)
    assert r.returncode != 0 and "data:" not in r.stdout, r.stdout[-500:]

    # ~/.netrc, named by HTTP.NETRC in ~/.ncrc
    home = tmp_path / "netrc"
    home.mkdir()
    netrc = home / ".netrc"
    netrc.write_text(f"machine {host.split(':')[0]} login reader password {TOKEN_SECRET}\n")
    netrc.chmod(0o600)
    (home / ".ncrc").write_text(f"HTTP.NETRC={netrc}\n")
    r = _ncdump(target, home)
    assert r.returncode == 0, r.stderr[-2000:]
    np.testing.assert_allclose(_numbers(r.stdout, "lat"), ref, rtol=1e-14)  # CDL: 15 digits
    # the header through the same credentials
    r = _ncdump(f"{url}/datasets/secret/opendap", home, "-h")
    assert r.returncode == 0 and "float ta(" in r.stdout, r.stderr[-2000:]

    # (HTTP.CREDENTIALS.USERPWD in .ncrc did not authenticate with netCDF-C 4.9.0 here; .netrc does)

    # a wrong password in .netrc is refused like a wrong bearer token; another dataset's is 403
    home = tmp_path / "wrong"
    home.mkdir()
    netrc = home / ".netrc"
    netrc.write_text(f"machine {host.split(':')[0]} login reader password {TOKEN_OTHER}\n")
    netrc.chmod(0o600)
    (home / ".ncrc").write_text(f"HTTP.NETRC={netrc}\n")
    r = _ncdump(target, home)
    assert r.returncode != 0 and "data:" not in r.stdout
    r = requests.get(f"{url}/datasets/secret/opendap.dds", auth=("reader", TOKEN_OTHER), timeout=30)
    assert r.status_code == 403
    r = requests.get(f"{url}/datasets/secret/opendap.dds", auth=("reader", "nope"), timeout=30)
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    assert requests.get(f"{url}/datasets/secret/opendap.dds", auth=("reader", TOKEN_SECRET),
                        timeout=30).status_code == 200
