"""Object-store sources: a real S3 API (moto server) and a real HTTP server (nginx), both
started here on loopback ports.

* CMIP6 sample series uploaded to a bucket and served from ``s3://bucket/.../*.nc`` equal
  ``xarray.open_mfdataset`` on the originals (/zarr v2 and v3, /kerchunk);
* credentials from the environment and from a credentials file; wrong credentials, a
  missing key and a glob matching nothing are reported naming the source;
* a fault-injecting proxy in front of moto: throttling (503 SlowDown) is retried away, a
  permanent failure is a 502 JSON error naming the object, a store that does not answer a
  504, both quickly;
* the index cache is reused across restarts (no second download) and a replaced object
  (new ETag) is re-indexed, while a server that indexed the old version refuses to serve
  stale bytes;
* ``http://`` sources from nginx with range requests.
"""
from __future__ import annotations

import http.client
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import requests
import xarray as xr

from conftest import find_binary, start_server, stop_server, wait_until_settled
from helpers import cmip6_specs, open_reference
from test_fidelity import compare_datasets

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

warnings.filterwarnings("ignore")

BUCKET = "cmip"
REGION = "us-east-1"
# Series of three and two files and single-file datasets of both tables: small enough for CI,
# covering aggregation over objects. The sample data is contiguous (unchunked) netCDF-4; all
# but MIROC6's variables are larger than what the index keeps in memory, so they are read from
# the store with ranged GETs.
CASES = ["cmip6_MIROC6_day", "cmip6_CanESM5_day", "cmip6_CanESM5_Amon", "cmip6_IPSL-CM6A-LR_day"]
SPECS = {d["name"]: d for d in cmip6_specs()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} not listening on {port} after {timeout}s")


def key_of(name: str, path: str) -> str:
    return f"{name}/{Path(path).name}"


# ---------------------------------------------------------------------------
# moto with IAM authentication: the first three requests (creating the user, its policy and
# its key) are unauthenticated, every later one must be signed with that key.
# ---------------------------------------------------------------------------
class Moto:
    def __init__(self, port: int, proc: subprocess.Popen, key_id: str, secret: str):
        self.port, self.proc, self.key_id, self.secret = port, proc, key_id, secret
        self.endpoint = f"http://127.0.0.1:{port}"

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=self.key_id, aws_secret_access_key=self.secret)

    def env(self) -> dict:
        return {"AWS_ACCESS_KEY_ID": self.key_id, "AWS_SECRET_ACCESS_KEY": self.secret}


def start_moto(log_dir: Path) -> Moto:
    """A moto S3 server with IAM authentication on a free loopback port, and its key; the
    caller stops it with ``stop_moto``."""
    port = free_port()
    log = open(log_dir / "moto.log", "wb")
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3", AWS_DEFAULT_REGION=REGION)
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    proc.log = log
    try:
        wait_port(port, proc, "moto server")
        iam = boto3.client("iam", endpoint_url=f"http://127.0.0.1:{port}", region_name=REGION,
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="cloudify")
        iam.put_user_policy(UserName="cloudify", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        k = iam.create_access_key(UserName="cloudify")["AccessKey"]
        return Moto(port, proc, k["AccessKeyId"], k["SecretAccessKey"])
    except BaseException:
        stop_process(proc)
        raise


def stop_process(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    if getattr(proc, "log", None):
        proc.log.close()


@pytest.fixture(scope="module")
def moto(tmp_path_factory) -> Moto:
    m = start_moto(tmp_path_factory.mktemp("moto"))
    try:
        s3 = m.client()
        s3.create_bucket(Bucket=BUCKET)
        for name in CASES:
            for f in SPECS[name]["files"]:
                s3.upload_file(f, BUCKET, key_of(name, f))
        yield m
    finally:
        stop_process(m.proc)


def dataset_yaml(name: str, sources: list[str], storage: dict) -> str:
    return json.dumps({"name": name, "sources": sources, "storage": storage})


def write_cfg(path: Path, datasets: list[dict]) -> Path:
    # JSON is YAML: the config reader takes it as is.
    path.write_text(json.dumps({"datasets": datasets}, indent=1))
    return path


def storage(endpoint: str, **extra) -> dict:
    return {"endpoint": endpoint, "region": REGION, "allowHttp": True, **extra}


def serve_cfg(tmp: Path, tag: str, datasets: list[dict], env: dict, cache: Path | None = None):
    cfg = write_cfg(tmp / f"{tag}.yaml", datasets)
    extra = dict(env)
    extra["CLOUDIFY_CACHE_DIR"] = str(cache or (tmp / "cache"))
    url, proc, log = start_server(["serve", "--config", str(cfg)], tmp, tag, extra_env=extra)
    wait_until_settled(url, [d["name"] for d in datasets], proc)
    return url, proc, log


def no_aws_env() -> dict:
    """The test process's own AWS_* variables must not leak into servers."""
    return {k: "" for k in os.environ if k.startswith("AWS_")}


def run_cli(args: list[str], env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    full = dict(os.environ)
    full.update(env)
    full = {k: v for k, v in full.items() if v != "" or not k.startswith("AWS_")}
    return subprocess.run([find_binary(), *args, "--port", "0"], capture_output=True, text=True,
                          timeout=timeout, env=full, stdin=subprocess.DEVNULL)


def assert_same(served: xr.Dataset, ref: xr.Dataset, label: str):
    problems = compare_datasets(served, ref, raw=False, label=label)
    assert not problems, "\n".join(problems[:20])


# ---------------------------------------------------------------------------
# serving from S3
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s3_server(moto, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("s3serve")
    # credentials from the environment for all but one dataset, which reads a key=value file
    # (and would fail with the environment's key, see test_credentials_file_wins).
    creds = tmp / "s3.env"
    creds.write_text(f"# test key\nAWS_ACCESS_KEY_ID={moto.key_id}\naws_secret_access_key='{moto.secret}'\n")
    creds.chmod(0o600)
    datasets = []
    for i, name in enumerate(CASES):
        st = storage(moto.endpoint)
        if i == 0:
            st["credentialsFile"] = str(creds)
        datasets.append({"name": name, "sources": [f"s3://{BUCKET}/{name}/*.nc"], "storage": st})
    env = no_aws_env() | moto.env()
    url, proc, log = serve_cfg(tmp, "s3", datasets, env)
    yield url
    alive = proc.poll() is None
    stop_server(proc)
    assert alive, log.read_text(errors="replace")[-3000:]


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("route", ["zarr-v2", "zarr-v3", "kerchunk"])
def test_s3_dataset_equals_originals(s3_server, name, route):
    ref = open_reference(SPECS[name], raw=False).load()
    if route == "kerchunk":
        url, fmt = f"{s3_server}/datasets/{name}/kerchunk", 2
    else:
        url, fmt = f"{s3_server}/datasets/{name}/zarr", int(route[-1])
    ds = xr.open_dataset(url, engine="zarr", zarr_format=fmt, consolidated=True).load()
    assert_same(ds, ref, f"{name} {route}")


def _metric(text: str, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def test_object_store_metrics(s3_server):
    """/metrics reports object-store traffic: operations by store/kind/outcome, bytes, time."""
    name = CASES[2]
    key = first_chunk_key(s3_server, name)  # a chunk read from the store, not inlined
    before = requests.get(f"{s3_server}/metrics", timeout=10).text
    for route in ("zarr", "kerchunk"):
        r = requests.get(f"{s3_server}/datasets/{name}/{route}/{key}", timeout=60)
        assert r.status_code == 200, r.text
    after = requests.get(f"{s3_server}/metrics", timeout=10).text
    store = f"s3://{BUCKET}"
    got = _metric(after, "cloudify_object_store_operations_total", store=store, op="get_ranges", outcome="ok")
    assert got > _metric(before, "cloudify_object_store_operations_total", store=store, op="get_ranges",
                         outcome="ok")
    assert _metric(after, "cloudify_object_store_bytes_total", store=store) > \
        _metric(before, "cloudify_object_store_bytes_total", store=store)
    # listing and downloads at start-up were counted too
    assert _metric(after, "cloudify_object_store_operations_total", store=store, op="list", outcome="ok") >= 1
    assert _metric(after, "cloudify_object_store_seconds_count", op="get_ranges") >= got


def test_s3_etag_and_refs_name_objects(s3_server):
    urls = set()
    for name in CASES:
        r = requests.get(f"{s3_server}/datasets/{name}/zarr/.zmetadata", timeout=30)
        assert r.status_code == 200 and r.headers["ETag"]
        refs = requests.get(f"{s3_server}/datasets/{name}/kerchunk.json", timeout=30).json()
        mine = {v[0] for v in refs["refs"].values() if isinstance(v, list) and len(v) == 3}
        assert all(u.startswith(f"s3://{BUCKET}/{name}/") for u in mine), mine
        urls |= mine
    assert urls  # byte-range references name the objects by URL (usable with fsspec's s3fs)


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------
def test_missing_key_and_empty_glob_exit_naming_the_source(moto, tmp_path):
    env = no_aws_env() | moto.env() | {"AWS_ENDPOINT": moto.endpoint, "AWS_ALLOW_HTTP": "true",
                                       "AWS_REGION": REGION, "CLOUDIFY_CACHE_DIR": str(tmp_path / "c")}
    src = f"s3://{BUCKET}/nope/missing.nc"
    r = run_cli(["serve", "x", src], env)
    assert r.returncode != 0
    assert src in r.stderr and "no such object" in r.stderr, r.stderr
    src = f"s3://{BUCKET}/{CASES[0]}/*.grib"
    r = run_cli(["serve", "x", src], env)
    assert r.returncode != 0
    assert src in r.stderr and "matched no objects" in r.stderr, r.stderr


def test_broken_dataset_reported_others_served(moto, tmp_path):
    good, bad = CASES[2], "broken"
    datasets = [
        {"name": good, "sources": [f"s3://{BUCKET}/{good}/*.nc"], "storage": storage(moto.endpoint)},
        {"name": bad, "sources": [f"s3://{BUCKET}/nope/*.nc"], "storage": storage(moto.endpoint)},
    ]
    url, proc, _ = serve_cfg(tmp_path, "broken", datasets, no_aws_env() | moto.env())
    try:
        st = {d["name"]: d for d in requests.get(url + "/status", timeout=30).json()["datasets"]}
        assert st[bad]["state"] == "failed"
        assert f"s3://{BUCKET}/nope/*.nc" in st[bad]["error"] and "matched no objects" in st[bad]["error"]
        assert st[good]["state"] == "ready"
        r = requests.get(f"{url}/datasets/{bad}/zarr/.zmetadata", timeout=30)
        assert r.status_code == 503 and "s3://" in r.json()["error"]
        ds = xr.open_dataset(f"{url}/datasets/{good}/zarr", engine="zarr", zarr_format=3).load()
        assert_same(ds, open_reference(SPECS[good], raw=False).load(), good)
    finally:
        stop_server(proc)


def test_wrong_credentials_named(moto, tmp_path):
    src = f"s3://{BUCKET}/{CASES[2]}/*.nc"
    env = no_aws_env() | {"AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG0", "AWS_SECRET_ACCESS_KEY": "wrong-secret",
                          "CLOUDIFY_CACHE_DIR": str(tmp_path / "c")}
    cfg = write_cfg(tmp_path / "wrong.yaml", [{"name": "w", "sources": [src], "storage": storage(moto.endpoint)}])
    r = run_cli(["serve", "--config", str(cfg)], env)
    assert r.returncode != 0
    assert src in r.stderr, r.stderr
    assert "InvalidAccessKeyId" in r.stderr or "denied" in r.stderr.lower(), r.stderr
    assert "wrong-secret" not in r.stderr  # secrets are never printed


def test_credentials_file_wins_over_environment(moto, tmp_path):
    """Wrong key in the environment, right key in a JSON credentials file: the file wins."""
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps({"aws_access_key_id": moto.key_id, "aws_secret_access_key": moto.secret}))
    name = CASES[2]
    env = no_aws_env() | {"AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG0", "AWS_SECRET_ACCESS_KEY": "wrong"}
    datasets = [{"name": name, "sources": [f"s3://{BUCKET}/{name}/*.nc"],
                 "storage": storage(moto.endpoint, credentialsFile=str(creds))}]
    url, proc, _ = serve_cfg(tmp_path, "credfile", datasets, env)
    try:
        ds = xr.open_dataset(f"{url}/datasets/{name}/zarr", engine="zarr", zarr_format=2).load()
        assert_same(ds, open_reference(SPECS[name], raw=False).load(), name)
    finally:
        stop_server(proc)
    # a credentials file with an unknown key is rejected naming the key, not its value
    creds.write_text(json.dumps({"aws_acces_key_id": "sekrit"}))
    r = run_cli(["serve", "--config", str(tmp_path / "credfile.yaml")], env | {"CLOUDIFY_CACHE_DIR": str(tmp_path / "c2")})
    assert r.returncode != 0 and "aws_acces_key_id" in r.stderr and "sekrit" not in r.stderr, r.stderr


# ---------------------------------------------------------------------------
# faults: a proxy in front of moto
# ---------------------------------------------------------------------------
class FaultProxy:
    """Forwards to moto, unchanged (the Host header too: requests are signed for it), except:
    mode "throttle": the first `n` attempts of every distinct request get 503 SlowDown;
    mode "down": every ranged GET gets 503; mode "hang": ranged GETs get no answer."""

    def __init__(self, upstream_port: int):
        self.upstream = upstream_port
        self.mode = "pass"
        self.n = 2
        self.seen: dict = {}
        self.counts = {"503": 0, "forwarded": 0, "full_get": 0, "ranged_get": 0}
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                ranged = self.command == "GET" and "Range" in self.headers
                with proxy.lock:
                    key = (self.command, self.path, self.headers.get("Range"))
                    proxy.seen[key] = proxy.seen.get(key, 0) + 1
                    fail = (proxy.mode == "throttle" and proxy.seen[key] <= proxy.n) or (
                        proxy.mode == "down" and ranged)
                    hang = proxy.mode == "hang" and ranged
                if hang:
                    time.sleep(30)
                    return
                if fail:
                    with proxy.lock:
                        proxy.counts["503"] += 1
                    msg = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>"
                           b"<Message>Please reduce your request rate.</Message></Error>")
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream, timeout=60)
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for k, v in self.headers.items():
                    conn.putheader(k, v)
                conn.endheaders(body or None)
                resp = conn.getresponse()
                data = resp.read()
                with proxy.lock:
                    proxy.counts["forwarded"] += 1
                    # object GETs (listings are GETs with a query string)
                    if self.command == "GET" and resp.status in (200, 206) and "?" not in self.path:
                        proxy.counts["ranged_get" if ranged else "full_get"] += 1
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "content-length", "connection", "server", "date"):
                        self.send_header(k, v)
                # a HEAD answer has no body but the object's length (its size for the client)
                length = resp.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def proxy(moto):
    p = FaultProxy(moto.port)
    yield p
    p.close()


def test_throttling_is_retried(moto, proxy, tmp_path):
    name = CASES[1]
    proxy.mode, proxy.n = "throttle", 2
    datasets = [{"name": name, "sources": [f"s3://{BUCKET}/{name}/*.nc"],
                 "storage": storage(proxy.endpoint, maxRetries=5)}]
    url, proc, _ = serve_cfg(tmp_path, "throttle", datasets, no_aws_env() | moto.env())
    try:
        for fmt in (2, 3):
            ds = xr.open_dataset(f"{url}/datasets/{name}/zarr", engine="zarr", zarr_format=fmt).load()
            assert_same(ds, open_reference(SPECS[name], raw=False).load(), f"{name} v{fmt} throttled")
        ds = xr.open_dataset(f"{url}/datasets/{name}/kerchunk", engine="zarr", zarr_format=2).load()
        assert_same(ds, open_reference(SPECS[name], raw=False).load(), f"{name} kerchunk throttled")
    finally:
        stop_server(proc)
    # every distinct request (listing, ranged reads) was refused twice first
    assert proxy.counts["503"] == proxy.n * len(proxy.seen) > 0, proxy.counts
    # indexed with ranged reads: no object was downloaded
    assert proxy.counts["full_get"] == 0, proxy.counts
    assert proxy.counts["ranged_get"] > 0, proxy.counts


def first_chunk_key(url: str, name: str) -> str:
    """First chunk of the largest variable (one that is read from the store)."""
    meta = requests.get(f"{url}/datasets/{name}/zarr/.zmetadata", timeout=30).json()["metadata"]
    key, zarray = max(((k, v) for k, v in meta.items() if k.endswith("/.zarray")),
                      key=lambda kv: int(np.prod(kv[1]["shape"])))
    return key.rsplit("/", 1)[0] + "/" + ".".join("0" * len(zarray["shape"]))


def test_permanent_failure_is_502_and_hang_is_504(moto, proxy, tmp_path):
    name = CASES[2]
    datasets = [{"name": name, "sources": [f"s3://{BUCKET}/{name}/*.nc"],
                 "storage": storage(proxy.endpoint, maxRetries=2, timeoutSeconds=2, retryTimeoutSeconds=4)}]
    url, proc, _ = serve_cfg(tmp_path, "down", datasets, no_aws_env() | moto.env())
    try:
        key = first_chunk_key(url, name)
        assert requests.get(f"{url}/datasets/{name}/zarr/{key}", timeout=30).status_code == 200
        proxy.mode = "down"
        for route in ("zarr", "kerchunk"):
            t0 = time.monotonic()
            r = requests.get(f"{url}/datasets/{name}/{route}/{key}", timeout=60)
            took = time.monotonic() - t0
            assert r.status_code == 502, (route, r.status_code, r.text)
            err = r.json()["error"]
            assert f"s3://{BUCKET}/{name}/" in err and "503" in err, err
            assert took < 20, took
        proxy.mode = "hang"
        t0 = time.monotonic()
        r = requests.get(f"{url}/datasets/{name}/zarr/{key}", timeout=60)
        assert r.status_code == 504, (r.status_code, r.text)
        assert f"s3://{BUCKET}/{name}/" in r.json()["error"]
        assert time.monotonic() - t0 < 30
        # the server keeps serving once the store is back
        proxy.mode = "pass"
        assert requests.get(f"{url}/datasets/{name}/zarr/{key}", timeout=30).status_code == 200
        assert proc.poll() is None
    finally:
        stop_server(proc)


# ---------------------------------------------------------------------------
# index cache and changed objects
# ---------------------------------------------------------------------------
def test_index_cache_reuse_and_reindex_on_new_etag(moto, proxy, tmp_path):
    import netCDF4

    name = "changing"
    series = SPECS[CASES[1]]["files"]
    s3 = moto.client()
    for f in series:
        s3.upload_file(f, BUCKET, f"{name}/{Path(f).name}")
    datasets = [{"name": name, "sources": [f"s3://{BUCKET}/{name}/*.nc"], "storage": storage(proxy.endpoint)}]
    env = no_aws_env() | moto.env()
    cache = tmp_path / "cache"
    url, proc, _ = serve_cfg(tmp_path, "cold", datasets, env, cache)
    try:
        key = first_chunk_key(url, name)
        chunk1 = requests.get(f"{url}/datasets/{name}/zarr/{key}", timeout=30)
        assert chunk1.status_code == 200
    finally:
        stop_server(proc)
    assert proxy.counts["full_get"] == 0, proxy.counts  # indexed with ranged reads
    assert len(list((cache / "index").glob("*.json"))) == len(series)
    assert not any((cache / "downloads").glob("*")), "temporary copies must be deleted"
    # restart: the cache answers, the objects are not read again to index them (the series'
    # time values, too large to keep in the index, are still read to aggregate it)
    url, proc, log = serve_cfg(tmp_path, "warm", datasets, env, cache)
    try:
        assert "indexed remote object" not in log.read_text(), log.read_text()[-2000:]
        r = requests.get(f"{url}/datasets/{name}/zarr/{key}", timeout=30)
        assert r.content == chunk1.content and r.headers["ETag"] == chunk1.headers["ETag"]
    finally:
        stop_server(proc)
    assert proxy.counts["full_get"] == 0, proxy.counts
    # keep a server running on the old index, then replace the first object
    old_url, old_proc, _ = serve_cfg(tmp_path, "old", datasets, env, cache)
    try:
        changed = tmp_path / Path(series[0]).name
        shutil.copy(series[0], changed)
        with netCDF4.Dataset(changed, "a") as ds:
            vname = key.split("/")[0]
            idx = (0,) * ds.variables[vname].ndim
            ds.variables[vname][idx] = np.float32(-999.0)
        s3.upload_file(str(changed), BUCKET, f"{name}/{changed.name}")
        # the old server must not decode new bytes with the old index
        r = requests.get(f"{old_url}/datasets/{name}/zarr/{key}", timeout=60)
        assert r.status_code == 502, (r.status_code, r.text[:300])
        assert "changed" in r.json()["error"] and f"s3://{BUCKET}/{name}/{changed.name}" in r.json()["error"]
    finally:
        stop_server(old_proc)
    # a new server re-indexes the replaced object (new ETag) and serves the new value
    url, proc, _ = serve_cfg(tmp_path, "changed", datasets, env, cache)
    try:
        ds = xr.open_dataset(f"{url}/datasets/{name}/zarr", engine="zarr", zarr_format=3).load()
        assert float(ds[vname][idx]) == -999.0
        r = requests.get(f"{url}/datasets/{name}/zarr/{key}", timeout=30)
        assert r.headers["ETag"] != chunk1.headers["ETag"]
    finally:
        stop_server(proc)
    assert proxy.counts["full_get"] == 0, proxy.counts


# ---------------------------------------------------------------------------
# indexing with ranged reads: metadata, not whole objects
# ---------------------------------------------------------------------------
def _write_nc4(path: Path) -> None:
    """A multi-MB netCDF-4 file like model output: an unlimited time axis appended in steps
    (chunk index nodes end up between data chunks), a deflated chunked variable of noise
    (incompressible, so the file stays large), a contiguous one, coordinates and bounds."""
    import netCDF4

    rng = np.random.default_rng(1)
    with netCDF4.Dataset(path, "w", format="NETCDF4") as ds:
        ds.createDimension("time", None)
        ds.createDimension("lat", 90)
        ds.createDimension("lon", 180)
        ds.createDimension("bnds", 2)
        ds.title = "ranged-read test"
        t = ds.createVariable("time", "f8", ("time",))
        t.units = "days since 2000-01-01"
        tb = ds.createVariable("time_bnds", "f8", ("time", "bnds"))
        lat = ds.createVariable("lat", "f4", ("lat",))
        lat.units = "degrees_north"
        lat[:] = np.linspace(-89, 89, 90)
        lon = ds.createVariable("lon", "f4", ("lon",))
        lon[:] = np.arange(180) * 2.0
        tas = ds.createVariable("tas", "f4", ("time", "lat", "lon"), zlib=True, complevel=1,
                                chunksizes=(1, 90, 180), fill_value=np.float32(1e20))
        tas.units = "K"
        orog = ds.createVariable("orog", "f4", ("lat", "lon"), contiguous=True)
        orog[:] = rng.random((90, 180), dtype=np.float32)
        for i in range(120):  # one step at a time, as a model writes
            t[i] = i + 0.5
            tb[i] = [i, i + 1]
            tas[i] = 250 + 50 * rng.random((90, 180), dtype=np.float32)


def _write_nc3(path: Path) -> None:
    """A multi-MB netCDF-3 (64-bit offset) file with a record time axis. Records are
    80 KB apart, more than the indexing reads merge (64 KiB), so the time values are read
    without the records between them."""
    import netCDF4

    rng = np.random.default_rng(2)
    with netCDF4.Dataset(path, "w", format="NETCDF3_64BIT_OFFSET") as ds:
        ds.createDimension("time", None)
        ds.createDimension("lat", 100)
        ds.createDimension("lon", 200)
        ds.createDimension("bnds", 2)
        t = ds.createVariable("time", "f8", ("time",))
        t.units = "days since 2000-01-01"
        tb = ds.createVariable("time_bnds", "f8", ("time", "bnds"))
        lat = ds.createVariable("lat", "f4", ("lat",))
        lat[:] = np.linspace(-89, 89, 100)
        lon = ds.createVariable("lon", "f4", ("lon",))
        lon[:] = np.arange(200) * 1.8
        pr = ds.createVariable("pr", "f4", ("time", "lat", "lon"))
        n = 60
        t[:] = np.arange(n) + 0.5
        tb[:] = np.stack([np.arange(n), np.arange(n) + 1], axis=1)
        pr[:] = rng.random((n, 100, 200), dtype=np.float32)


def _start_ranged(moto, proxy, tmp_path, kind: str, env: dict | None = None):
    src = tmp_path / f"ranged_{kind}.nc"
    (_write_nc3 if kind == "nc3" else _write_nc4)(src)
    moto.client().upload_file(str(src), BUCKET, f"ranged/{src.name}")
    name = f"ranged-{kind}"
    datasets = [{"name": name, "sources": [f"s3://{BUCKET}/ranged/{src.name}"], "storage": storage(proxy.endpoint)}]
    url, proc, log = serve_cfg(tmp_path, name, datasets, no_aws_env() | moto.env() | (env or {}))
    st = {d["name"]: d for d in requests.get(url + "/status", timeout=30).json()["datasets"]}
    assert st[name]["state"] == "ready", st[name]
    return src, name, url, proc, log


def _assert_served_equals(url: str, name: str, src: Path, label: str) -> None:
    served = xr.open_dataset(f"{url}/datasets/{name}/zarr", engine="zarr", zarr_format=3,
                             consolidated=True).load()
    with xr.open_dataset(src) as ref:
        assert_same(served, ref.load(), label)


@pytest.mark.parametrize("kind", ["nc4", "nc3"])
def test_remote_index_reads_metadata_not_whole_objects(moto, proxy, tmp_path, kind):
    """An object is indexed from the byte ranges its metadata needs: the bytes and requests
    the server reports at start-up are a small part of the file (nothing downloaded), and the
    served dataset equals xarray on the original."""
    src, name, url, proc, log = _start_ranged(moto, proxy, tmp_path, kind)
    try:
        size = src.stat().st_size
        assert size > 4 << 20
        text = requests.get(f"{url}/metrics", timeout=10).text
        store = f"s3://{BUCKET}"
        fetched = _metric(text, "cloudify_object_store_bytes_total", store=store)
        reqs = _metric(text, "cloudify_object_store_range_requests_total", store=store)
        print(f"\n{kind}: indexing read {int(fetched)} of {size} bytes "
              f"({100 * fetched / size:.1f} %) with {int(reqs)} ranged requests; proxy {proxy.counts}")
        assert 0 < fetched < size / 4, (fetched, size)
        assert proxy.counts["full_get"] == 0, proxy.counts
        assert reqs == proxy.counts["ranged_get"], (reqs, proxy.counts)
        assert 'via="ranged reads"' in strip_ansi(log.read_text()), log.read_text()[-2000:]
        _assert_served_equals(url, name, src, f"{kind} over s3")
    finally:
        stop_server(proc)


def test_remote_hdf5_declined_natively_is_downloaded_for_the_library(moto, proxy, tmp_path):
    """When the native reader does not index a netCDF-4 object (here: switched off), the
    object is downloaded once and indexed by libnetcdf, as before; the log says so."""
    src, name, url, proc, log = _start_ranged(moto, proxy, tmp_path, "nc4-library",
                                              {"CLOUDIFY_HDF5_READER": "library"})
    try:
        text = strip_ansi(log.read_text())
        assert "downloading it for libnetcdf" in text and 'via="download"' in text, text[-2000:]
        assert proxy.counts["full_get"] == 1, proxy.counts
        _assert_served_equals(url, name, src, "nc4 downloaded")
    finally:
        stop_server(proc)


def strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_truncated_remote_hdf5_is_reported_naming_the_url(moto, proxy, tmp_path):
    """An HDF5 object cut short (an interrupted upload) fails to index with an error naming
    its URL, without being downloaded for the library to refuse it too."""
    src = tmp_path / "whole.nc"
    _write_nc4(src)
    data = src.read_bytes()
    key = "ranged/cut.nc"
    moto.client().put_object(Bucket=BUCKET, Key=key, Body=data[: len(data) // 2])
    env = _clean_env() | moto.env() | {"AWS_ENDPOINT": proxy.endpoint, "AWS_ALLOW_HTTP": "true",
                                       "AWS_REGION": REGION}
    r = subprocess.run([find_binary(), "index", f"s3://{BUCKET}/{key}", "-o", str(tmp_path / "x.json"),
                        "--no-cache"], capture_output=True, text=True, timeout=120, env=env,
                       stdin=subprocess.DEVNULL)
    assert r.returncode != 0
    assert f"s3://{BUCKET}/{key}" in r.stderr and "truncated" in r.stderr, r.stderr
    assert "download-" not in r.stderr, r.stderr  # names the object, not a temporary copy
    assert proxy.counts["full_get"] == 0, proxy.counts


def test_object_deleted_after_open_is_502(moto, tmp_path):
    name = "vanishing"
    f = SPECS[CASES[2]]["files"][0]
    s3 = moto.client()
    s3.upload_file(f, BUCKET, f"{name}/{Path(f).name}")
    datasets = [{"name": name, "sources": [f"s3://{BUCKET}/{name}/*.nc"], "storage": storage(moto.endpoint)}]
    url, proc, _ = serve_cfg(tmp_path, "vanish", datasets, no_aws_env() | moto.env())
    try:
        key = first_chunk_key(url, name)
        s3.delete_object(Bucket=BUCKET, Key=f"{name}/{Path(f).name}")
        r = requests.get(f"{url}/datasets/{name}/zarr/{key}", timeout=30)
        assert r.status_code == 502, r.text
        assert f"s3://{BUCKET}/{name}/{Path(f).name}" in r.json()["error"] and "not found" in r.json()["error"]
        assert requests.get(url + "/healthz", timeout=10).status_code == 200
    finally:
        stop_server(proc)


# ---------------------------------------------------------------------------
# plain HTTP (nginx): explicit URLs, range requests
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nginx(tmp_path_factory):
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(exe):
        pytest.fail("nginx is not installed (e2e/setup.sh installs it)")
    tmp = tmp_path_factory.mktemp("nginx")
    root = tmp / "www"
    for name in CASES[:2]:
        (root / name).mkdir(parents=True)
        for f in SPECS[name]["files"]:
            shutil.copy(f, root / name / Path(f).name)
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
daemon off;
master_process off;
error_log {tmp}/error.log;
pid {tmp}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
""")
    proc = subprocess.Popen([exe, "-c", str(conf), "-p", str(tmp)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_port(port, proc, "nginx")
        yield f"http://127.0.0.1:{port}", tmp
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_http_sources_from_nginx(nginx, tmp_path):
    base, ntmp = nginx
    datasets = []
    for name in CASES[:2]:
        urls = [f"{base}/{name}/{Path(f).name}" for f in SPECS[name]["files"]]
        datasets.append({"name": name, "sources": urls, "storage": {"allowHttp": True}})
    url, proc, _ = serve_cfg(tmp_path, "http", datasets, no_aws_env())
    try:
        for name in CASES[:2]:
            ref = open_reference(SPECS[name], raw=False).load()
            for fmt in (2, 3):
                ds = xr.open_dataset(f"{url}/datasets/{name}/zarr", engine="zarr", zarr_format=fmt).load()
                assert_same(ds, ref, f"{name} http v{fmt}")
            ds = xr.open_dataset(f"{url}/datasets/{name}/kerchunk", engine="zarr", zarr_format=2).load()
            assert_same(ds, ref, f"{name} http kerchunk")
    finally:
        stop_server(proc)
    # chunks came as range requests (206) from nginx
    assert " 206 " in (ntmp / "access.log").read_text()
    # an http glob is refused with the reason; a missing URL names itself
    r = run_cli(["serve", "x", f"{base}/{CASES[0]}/*.nc"], {"CLOUDIFY_CACHE_DIR": str(tmp_path / "c")})
    assert r.returncode != 0 and "cannot be listed" in r.stderr, r.stderr
    missing = f"{base}/{CASES[0]}/missing.nc"
    cfg = write_cfg(tmp_path / "m.yaml", [{"name": "m", "sources": [missing], "storage": {"allowHttp": True}}])
    r = run_cli(["serve", "--config", str(cfg)], {"CLOUDIFY_CACHE_DIR": str(tmp_path / "c")})
    assert r.returncode != 0 and missing in r.stderr and "no such object" in r.stderr, r.stderr


def test_index_command_over_s3(moto, tmp_path):
    """`cloudify index` takes object URLs too (store settings from the AWS_* environment) and
    writes references naming the objects."""
    name = CASES[1]
    out = tmp_path / "refs.json"
    env = dict(os.environ)
    env = {k: v for k, v in env.items() if not k.startswith("AWS_")}
    env.update(moto.env(), AWS_ENDPOINT=moto.endpoint, AWS_ALLOW_HTTP="true", AWS_REGION=REGION)
    r = subprocess.run([find_binary(), "index", f"s3://{BUCKET}/{name}/*.nc", "-o", str(out)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    refs = json.loads(out.read_text())["refs"]
    urls = {v[0] for v in refs.values() if isinstance(v, list) and len(v) == 3}
    want = {f"s3://{BUCKET}/{key_of(name, f)}" for f in SPECS[name]["files"]}
    assert urls == want, (urls, want)
    # Parquet references name the objects the same way (not file://s3://...)
    pq = tmp_path / "refs.parquet"
    r = subprocess.run([find_binary(), "index", f"s3://{BUCKET}/{name}/*.nc", "-o", str(pq)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    import pandas as pd
    paths = set()
    for f in pq.rglob("refs.*.parq"):
        paths |= {p for p in pd.read_parquet(f, engine="fastparquet")["path"] if isinstance(p, str)}
    assert paths == want, (paths, want)
    # Without inline data (for VirtualiZarr): VirtualiZarr parses the object references, and
    # each range it holds is the same bytes in the object (read through its own S3 client) as
    # in the local original; its re-exported references, pointed at the originals, read equal.
    vz = pytest.importorskip("virtualizarr")
    import obstore
    from obspec_utils.registry import ObjectStoreRegistry
    from obstore.store import LocalStore, S3Store
    from virtualizarr.parsers import KerchunkJSONParser
    bare = tmp_path / "bare.json"
    r = subprocess.run([find_binary(), "index", f"s3://{BUCKET}/{name}/*.nc", "-o", str(bare),
                        "--inline-threshold", "0", "--no-cache"], capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0 and "left out" not in r.stderr, r.stderr
    refs = json.loads(bare.read_text())["refs"]
    assert all(isinstance(v, list) for k, v in refs.items() if not k.rsplit("/", 1)[-1].startswith(".z"))
    store = S3Store(BUCKET, endpoint=moto.endpoint, region=REGION, access_key_id=moto.key_id,
                    secret_access_key=moto.secret, client_options={"allow_http": True})
    vds = vz.open_virtual_dataset(f"file://{bare}", parser=KerchunkJSONParser(), loadable_variables=[],
                                  registry=ObjectStoreRegistry({"file://": LocalStore(), f"s3://{BUCKET}": store}))
    exported = vds.vz.to_kerchunk(format="dict")
    local = {f"s3://{BUCKET}/{key_of(name, f)}": f for f in SPECS[name]["files"]}
    ranges = [v for v in exported["refs"].values() if isinstance(v, list) and len(v) == 3]
    assert ranges and {v[0] for v in ranges} == set(local)
    for url, off, size in ranges[:: max(1, len(ranges) // 20)]:
        got = bytes(obstore.get_range(store, url[len(f"s3://{BUCKET}/"):], start=off, length=size))
        with open(local[url], "rb") as fh:
            fh.seek(off)
            assert got == fh.read(size), (url, off, size)
    for v in exported["refs"].values():
        if isinstance(v, list):
            v[0] = local[v[0]]
    served = xr.open_dataset("reference://", engine="zarr", zarr_format=2, chunks=None, backend_kwargs={
        "consolidated": False, "storage_options": {"fo": exported}}).load()
    for v in served.variables.values():
        v.attrs.pop("_FillValue", None)  # VirtualiZarr's Zarr v3 default for a null fill
    problems = compare_datasets(served, open_reference(SPECS[name], raw=False).load(), raw=False,
                                label=f"{name} s3 via VirtualiZarr")
    assert not problems, "\n".join(problems[:20])


def _clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}


def _index_ref_urls(path: Path) -> dict:
    refs = json.loads(path.read_text())["refs"]
    return {k: v for k, v in refs.items() if isinstance(v, list) and len(v) == 3}


def test_index_storage_flags_and_config(moto, tmp_path):
    """`cloudify index` takes the object store's settings as --storage-* flags (credentials from
    a file) or a whole dataset from a serve config; both give the references the environment
    route gives, and they reuse/fill the index cache the server uses."""
    name = CASES[1]
    want = {f"s3://{BUCKET}/{key_of(name, f)}" for f in SPECS[name]["files"]}
    creds = tmp_path / "creds"
    creds.write_text(f"aws_access_key_id={moto.key_id}\naws_secret_access_key={moto.secret}\n")
    cache = tmp_path / "cache"
    by_flags = tmp_path / "flags.json"
    r = subprocess.run(
        [find_binary(), "index", f"s3://{BUCKET}/{name}/*.nc", "-o", str(by_flags),
         "--storage-endpoint", moto.endpoint, "--storage-region", REGION, "--storage-allow-http",
         "--storage-credentials-file", str(creds), "--cache-dir", str(cache)],
        capture_output=True, text=True, timeout=300, env=_clean_env(), stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    flags_refs = _index_ref_urls(by_flags)
    assert {v[0] for v in flags_refs.values()} == want
    assert any((cache / "index").iterdir()), "the index cache was not written"

    cfg = write_cfg(tmp_path / "cfg.yaml", [
        {"name": "other", "sources": [str(tmp_path / "nothing-*.nc")]},
        {"name": "mine", "sources": [f"s3://{BUCKET}/{name}/*.nc"],
         "storage": storage(moto.endpoint, credentialsFile=str(creds))},
    ])
    by_cfg = tmp_path / "cfg.json"
    r = subprocess.run([find_binary(), "index", "--config", str(cfg), "--dataset", "mine", "-o", str(by_cfg),
                        "--no-cache"],
                       capture_output=True, text=True, timeout=300, env=_clean_env(), stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert _index_ref_urls(by_cfg) == flags_refs

    # Several datasets and no --dataset: the error lists them.
    r = subprocess.run([find_binary(), "index", "--config", str(cfg), "-o", str(tmp_path / "x.json")],
                       capture_output=True, text=True, timeout=60, env=_clean_env(), stdin=subprocess.DEVNULL)
    assert r.returncode != 0 and "--dataset" in r.stderr and "mine" in r.stderr and "other" in r.stderr, r.stderr
    # An unknown dataset is named.
    r = subprocess.run([find_binary(), "index", "--config", str(cfg), "--dataset", "nope", "-o",
                        str(tmp_path / "x.json")],
                       capture_output=True, text=True, timeout=60, env=_clean_env(), stdin=subprocess.DEVNULL)
    assert r.returncode != 0 and "'nope'" in r.stderr, r.stderr
    # Flags and config together are refused rather than silently ignored.
    r = subprocess.run([find_binary(), "index", "--config", str(cfg), "--dataset", "mine",
                        "--storage-region", "x", "-o", str(tmp_path / "x.json")],
                       capture_output=True, text=True, timeout=60, env=_clean_env(), stdin=subprocess.DEVNULL)
    assert r.returncode != 0 and "storage" in r.stderr, r.stderr
    # A malformed --storage-option names itself.
    r = subprocess.run([find_binary(), "index", f"s3://{BUCKET}/{name}/*.nc", "--storage-option", "novalue",
                        "-o", str(tmp_path / "x.json")],
                       capture_output=True, text=True, timeout=60, env=_clean_env(), stdin=subprocess.DEVNULL)
    assert r.returncode != 0 and "novalue" in r.stderr, r.stderr
    # Wrong credentials through the flags: the error names the object store problem.
    bad = tmp_path / "bad"
    bad.write_text("aws_access_key_id=AKIAWRONG\naws_secret_access_key=nope\n")
    r = subprocess.run(
        [find_binary(), "index", f"s3://{BUCKET}/{name}/*.nc", "-o", str(tmp_path / "x.json"),
         "--storage-endpoint", moto.endpoint, "--storage-region", REGION, "--storage-allow-http",
         "--storage-credentials-file", str(bad), "--no-cache"],
        capture_output=True, text=True, timeout=300, env=_clean_env(), stdin=subprocess.DEVNULL)
    assert r.returncode != 0 and f"s3://{BUCKET}" in r.stderr, r.stderr


def test_serve_storage_flags(moto, tmp_path):
    """`cloudify serve NAME s3://...` takes the same --storage-* flags."""
    name = CASES[1]
    creds = tmp_path / "creds"
    creds.write_text(f"aws_access_key_id={moto.key_id}\naws_secret_access_key={moto.secret}\n")
    url, proc, log = start_server(
        ["serve", name, f"s3://{BUCKET}/{name}/*.nc", "--storage-endpoint", moto.endpoint,
         "--storage-region", REGION, "--storage-allow-http", "--storage-credentials-file", str(creds)],
        tmp_path, "flags", extra_env=dict(no_aws_env(), CLOUDIFY_CACHE_DIR=str(tmp_path / "cache")))
    try:
        wait_until_settled(url, [name], proc)
        served = xr.open_dataset(f"{url}/datasets/{name}/zarr", engine="zarr", zarr_format=3,
                                 consolidated=True).load()
        assert_same(served, open_reference(SPECS[name], raw=False).load(), name)
    finally:
        stop_server(proc)


def test_kerchunk_references_to_objects(moto, tmp_path):
    """A kerchunk reference set (here made by `cloudify index` over s3://) whose references
    point at objects is served when referenceRoots allows their prefix: /zarr and /kerchunk
    read the byte ranges from the store and equal the netCDF originals. Without the root, or
    with another prefix, the dataset fails naming the reference and the roots."""
    name = CASES[2]
    refs = tmp_path / "refs.json"
    creds = tmp_path / "creds"
    creds.write_text(f"aws_access_key_id={moto.key_id}\naws_secret_access_key={moto.secret}\n")
    r = subprocess.run(
        [find_binary(), "index", f"s3://{BUCKET}/{name}/*.nc", "-o", str(refs), "--no-cache",
         "--storage-endpoint", moto.endpoint, "--storage-region", REGION, "--storage-allow-http",
         "--storage-credentials-file", str(creds)],
        capture_output=True, text=True, timeout=300, env=_clean_env(), stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    # one whole-object reference too: a chunk stored as its own object ([url])
    doc = json.loads(refs.read_text())
    key = next(k for k, v in doc["refs"].items() if isinstance(v, list) and len(v) == 3)
    url, off, size = doc["refs"][key]
    body = moto.client().get_object(Bucket=BUCKET, Key=url.split("/", 3)[3],
                                    Range=f"bytes={off}-{off + size - 1}")["Body"].read()
    moto.client().put_object(Bucket=BUCKET, Key=f"chunks/{name}/{key}", Body=body)
    doc["refs"][key] = [f"s3://{BUCKET}/chunks/{name}/{key}"]
    refs.write_text(json.dumps(doc))

    st = storage(moto.endpoint, credentialsFile=str(creds))
    datasets = [
        {"name": "objrefs", "sources": [str(refs)], "format": "kerchunk",
         "referenceRoots": [f"s3://{BUCKET}/{name}/", f"s3://{BUCKET}/chunks/"], "storage": st},
        {"name": "noroot", "sources": [str(refs)], "format": "kerchunk", "storage": st},
        {"name": "otherroot", "sources": [str(refs)], "format": "kerchunk",
         "referenceRoots": [f"s3://{BUCKET}/{name}-not/"], "storage": st},
    ]
    url_, proc, log = serve_cfg(tmp_path, "objrefs", datasets, no_aws_env())
    try:
        ref = open_reference(SPECS[name], raw=False).load()
        for route, fmt in (("zarr", 3), ("zarr", 2), ("kerchunk", 2)):
            ds = xr.open_dataset(f"{url_}/datasets/objrefs/{route}", engine="zarr", zarr_format=fmt,
                                 consolidated=True).load()
            assert_same(ds, ref, f"objrefs {route} v{fmt}")
        # the whole-object reference is read too (and named as an object in kerchunk.json)
        var = key.split("/")[0]
        r = requests.get(f"{url_}/datasets/objrefs/kerchunk/{key}", timeout=60)
        assert r.status_code == 200 and r.content == body
        served_refs = requests.get(f"{url_}/datasets/objrefs/kerchunk.json", timeout=30).json()["refs"]
        assert served_refs[key] == [f"s3://{BUCKET}/chunks/{name}/{key}"], served_refs[key]
        assert all(v[0].startswith(f"s3://{BUCKET}/") for k, v in served_refs.items()
                   if isinstance(v, list) and k.startswith(f"{var}/")), "object references keep their URL"
        errors = {d["name"]: d.get("error", "") for d in requests.get(f"{url_}/status", timeout=10).json()["datasets"]}
        assert errors["objrefs"] == ""
        assert "referenceRoots" in errors["noroot"] and f"s3://{BUCKET}/chunks/" in errors["noroot"], errors
        assert "outside" in errors["otherroot"] and f"{name}-not/" in errors["otherroot"], errors
        for bad in ("noroot", "otherroot"):
            r = requests.get(f"{url_}/datasets/{bad}/zarr/.zmetadata", timeout=10)
            assert r.status_code == 503, (bad, r.status_code)
        # a referenced object that disappears: 502 naming it, the server keeps serving
        moto.client().delete_object(Bucket=BUCKET, Key=f"chunks/{name}/{key}")
        r = requests.get(f"{url_}/datasets/objrefs/kerchunk/{key}", timeout=60)
        assert r.status_code == 502 and f"chunks/{name}/{key}" in r.json()["error"], (r.status_code, r.text)
        assert requests.get(f"{url_}/datasets/objrefs/zarr/.zmetadata", timeout=10).status_code == 200
    finally:
        stop_server(proc)
