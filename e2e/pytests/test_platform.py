"""The whole platform, end to end: ``kubectl apply`` of a CloudifyDataset, xarray reading it
through the nginx ingress, the STAC API listing it, scaling, pod and operator failures, edits
and deletion (issue #6 item 5).

By default the module starts ``cloudify-e2e up --state DIR`` (API emulator, local pod runtime,
real nginx, ``cloudify catalog``, ``cloudify-operator run``) and stops it with SIGTERM at the
end.  With ``CLOUDIFY_E2E_KUBECONFIG`` set the same tests run against a real cluster instead
(see e2e/README.md, "Against a real cluster", and .github/workflows/e2e-kind.yml):

  CLOUDIFY_E2E_KUBECONFIG     kubeconfig of the cluster (the chart must be installed)
  CLOUDIFY_E2E_INGRESS_URL    base URL of the ingress controller (the operator's public URL)
  CLOUDIFY_E2E_CATALOG_URL    the chart's STAC API, reachable from the test
  CLOUDIFY_E2E_DATA_DIR       directory the test writes netCDF files to; the pods must see it
                              at the same path through the PVC ``cloudify-e2e-data`` in
                              CLOUDIFY_E2E_NAMESPACE (default ``cloudify-e2e``)
  CLOUDIFY_E2E_OPERATOR_NAMESPACE  namespace of the chart's operator (default cloudify-system)

Binaries for the local platform: CLOUDIFY_E2E_BIN, CLOUDIFY_BIN, CLOUDIFY_OPERATOR_BIN
(default: next to CLOUDIFY_BIN, else the release builds in /var/tmp/cloudify-target/release).

Tests run in file order and build on each other (one dataset goes through its life cycle).
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pytest
import requests
import xarray as xr
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
MANIFESTS = HERE / "manifests"
RELEASE = Path("/var/tmp/cloudify-target/release")
KUBECTL = os.environ.get("KUBECTL", shutil.which("kubectl") or "/usr/bin/kubectl")
LOAD_ANNOTATION = "e2e.cloudify.io/cpu-load"  # e2e/src/runtime/hpa.rs
NAME = "e2e-tas"  # metadata.name in manifests/dataset.yaml
DATASET = "e2e_tas"  # spec.dataset.name
INSTANCE = f"app.kubernetes.io/instance={NAME}"
# Generous on a real cluster (image pulls); the local platform is ready in seconds.
TIMEOUT = float(os.environ.get("CLOUDIFY_E2E_TIMEOUT", "90"))


# ---------------------------------------------------------------------------
# platform fixture
# ---------------------------------------------------------------------------
@dataclass
class Platform:
    kubeconfig: str
    ingress_url: str
    catalog_url: str
    namespace: str
    data_dir: Path
    local: bool
    state: Path | None = None
    proc: subprocess.Popen | None = None
    reference: xr.Dataset | None = None
    created: list = field(default_factory=list)

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None,
                namespaced: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [KUBECTL, "--kubeconfig", self.kubeconfig]
        if namespaced:
            cmd += ["-n", self.namespace]
        cmd += list(args)
        out = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr}{out.stdout}"
                                 + self.logs())
        return out

    def get(self, kind: str, name: str | None = None, selector: str | None = None) -> dict | None:
        args = ["get", kind] + ([name] if name else []) + (["-l", selector] if selector else []) + ["-o", "json"]
        out = self.kubectl(*args, check=False)
        if out.returncode != 0:
            if "NotFound" in out.stderr or "not found" in out.stderr:
                return None
            raise AssertionError(f"kubectl {' '.join(args)}: {out.stderr}")
        return yaml.safe_load(out.stdout)

    def cds(self, name: str = NAME) -> dict | None:
        return self.get("cloudifydatasets.cloudify.io", name)

    def logs(self) -> str:
        if not self.state:
            return ""
        parts = []
        for p in [self.state / "up.log", self.state / "logs" / "operator.log"]:
            try:
                parts.append(f"\n--- {p} (tail) ---\n" + p.read_text(errors="replace")[-3000:])
            except OSError:
                pass
        return "".join(parts)


def render(path: Path, platform: Platform, **extra: str) -> str:
    return string.Template(path.read_text()).substitute(
        NAMESPACE=platform.namespace, DATA_DIR=str(platform.data_dir), **extra)


def manifest(platform: Platform, name: str = "dataset.yaml") -> dict:
    return yaml.safe_load(render(MANIFESTS / name, platform))


def apply(platform: Platform, obj: dict) -> subprocess.CompletedProcess:
    return platform.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(obj), namespaced=False)


def wait_for(what: str, fn, timeout: float = TIMEOUT, platform: Platform | None = None, period: float = 0.25):
    """Polls ``fn`` until it returns a truthy value; fails naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if platform is not None and platform.proc is not None and platform.proc.poll() is not None:
            raise AssertionError(f"cloudify-e2e up exited ({platform.proc.returncode}) while waiting for "
                                 f"{what}" + platform.logs())
        last = fn()
        if last:
            return last
        time.sleep(period)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {str(last)[:2000]}"
                         + (platform.logs() if platform else ""))


def condition(cr: dict | None, kind: str) -> dict | None:
    for c in ((cr or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return c
    return None


def write_data(data_dir: Path) -> xr.Dataset:
    """Three yearly netCDF-4 files (zlib, chunked) and their concatenation, the expectation."""
    data_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(6)
    lat = np.linspace(-75.0, 75.0, 6)
    lon = np.arange(0.0, 360.0, 45.0)
    parts = []
    for year in (2000, 2001, 2002):
        time_ = pd.date_range(f"{year}-01-01", periods=4, freq="7D")
        tas = (rng.normal(280.0, 10.0, size=(4, lat.size, lon.size))).astype("float32")
        ds = xr.Dataset(
            {"tas": (("time", "lat", "lon"), tas, {"units": "K", "standard_name": "air_temperature"})},
            coords={"time": time_, "lat": ("lat", lat, {"units": "degrees_north"}),
                    "lon": ("lon", lon, {"units": "degrees_east"})},
            attrs={"title": "cloudify e2e", "Conventions": "CF-1.8"},
        )
        path = data_dir / f"tas_{year}.nc"
        ds.to_netcdf(path, format="NETCDF4", unlimited_dims=["time"],
                     encoding={"tas": {"zlib": True, "chunksizes": (2, 3, 8)},
                               "time": {"units": "days since 2000-01-01", "dtype": "float64"}})
        os.chmod(path, 0o644)
        with xr.open_dataset(path) as f:
            parts.append(f.load())
    return xr.concat(parts, dim="time")


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _cmdline(pid: int) -> list[str]:
    try:
        return [a for a in Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0") if a]
    except OSError:
        return []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary(env: str, name: str) -> str:
    """``$env``, else ``name`` next to ``$CLOUDIFY_BIN`` (e2e/test.sh sets it), else the release build."""
    sibling = os.environ.get("CLOUDIFY_BIN") and str(Path(os.environ["CLOUDIFY_BIN"]).with_name(name))
    path = os.environ.get(env) or sibling or str(RELEASE / name)
    if not os.access(path, os.X_OK):
        pytest.fail(f"{name} not found at {path} (set {env}; `cargo build --release --workspace` builds it)")
    return path


@pytest.fixture(scope="module")
def platform():
    namespace = os.environ.get("CLOUDIFY_E2E_NAMESPACE", "cloudify-e2e")
    if os.environ.get("CLOUDIFY_E2E_KUBECONFIG"):
        missing = [v for v in ("CLOUDIFY_E2E_INGRESS_URL", "CLOUDIFY_E2E_CATALOG_URL", "CLOUDIFY_E2E_DATA_DIR")
                   if not os.environ.get(v)]
        if missing:
            pytest.fail(f"CLOUDIFY_E2E_KUBECONFIG is set, so {', '.join(missing)} must be set too")
        p = Platform(kubeconfig=os.environ["CLOUDIFY_E2E_KUBECONFIG"],
                     ingress_url=os.environ["CLOUDIFY_E2E_INGRESS_URL"].rstrip("/"),
                     catalog_url=os.environ["CLOUDIFY_E2E_CATALOG_URL"].rstrip("/"),
                     namespace=namespace, data_dir=Path(os.environ["CLOUDIFY_E2E_DATA_DIR"]), local=False)
        p.reference = write_data(p.data_dir)
        yield p
        return

    up_bin = _binary("CLOUDIFY_E2E_BIN", "cloudify-e2e")
    cloudify = _binary("CLOUDIFY_BIN", "cloudify")
    operator = _binary("CLOUDIFY_OPERATOR_BIN", "cloudify-operator")
    # Data volume mount paths under /tmp are refused by the operator (the pod's own /tmp).
    root = Path(tempfile.mkdtemp(prefix="cloudify-platform-", dir="/var/tmp"))
    state = root / "state"
    state.mkdir()
    data_dir = root / "data"
    reference = write_data(data_dir)
    log = open(state / "up.log", "wb")
    proc = subprocess.Popen(
        [up_bin, "up", "--state", str(state), "--cloudify-bin", cloudify, "--operator-bin", operator],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info")})
    log.close()
    p = Platform(kubeconfig=str(state / "kubeconfig"), ingress_url="", catalog_url="", namespace=namespace,
                 data_dir=data_dir, local=True, state=state, proc=proc, reference=reference)
    try:
        wait_for("DIR/kubeconfig and DIR/ingress-url",
                 lambda: (state / "kubeconfig").exists() and (state / "ingress-url").exists(),
                 timeout=120, platform=p)
        p.ingress_url = (state / "ingress-url").read_text().strip().rstrip("/")
        p.catalog_url = (state / "catalog-url").read_text().strip().rstrip("/")
        yield p
    finally:
        alive = proc.poll() is None
        if alive:
            proc.send_signal(signal.SIGTERM)  # up stops its children itself
            try:
                rc = proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
                raise AssertionError("cloudify-e2e up did not stop within 40 s of SIGTERM" + p.logs())
        else:
            rc = proc.returncode
        logs = p.logs()
        if rc == 0 and not os.environ.get("CLOUDIFY_E2E_KEEP"):
            shutil.rmtree(root, ignore_errors=True)
        assert alive, f"cloudify-e2e up died during the tests (rc={rc})" + logs
        assert rc == 0, f"cloudify-e2e up exited with {rc} after SIGTERM" + logs
        assert not (state / "ingress-url").exists(), "ingress-url is removed on stop"


# ---------------------------------------------------------------------------
# helpers on the dataset
# ---------------------------------------------------------------------------
def zarr_url(p: Platform, cr: dict | None = None) -> str:
    cr = cr or p.cds()
    return cr["status"]["url"]


def item_url(p: Platform, cr: dict) -> str:
    """status.stacItem as the test reaches it: the operator records the catalog's in-cluster
    address, which on a real cluster only CLOUDIFY_E2E_CATALOG_URL (a port-forward) reaches."""
    parts = urlsplit(cr["status"]["stacItem"])
    return p.catalog_url + parts.path + (f"?{parts.query}" if parts.query else "")


def open_zarr(url: str) -> xr.Dataset:
    return xr.open_dataset(url, engine="zarr", zarr_format=2, consolidated=True).load()


def assert_same_data(served: xr.Dataset, reference: xr.Dataset) -> None:
    assert set(served.data_vars) == set(reference.data_vars), (list(served.data_vars), list(reference.data_vars))
    xr.testing.assert_equal(served, reference)  # values, dims and coordinates
    np.testing.assert_array_equal(served["tas"].values, reference["tas"].values)
    assert served["tas"].attrs.get("units") == "K"


# besides <name>, the Service <name>-status the operator reads unready pods' /status through
OWNED_NAMES = {"service": [NAME, f"{NAME}-status"]}


def owned(p: Platform, kind: str) -> list[dict]:
    items = (p.get(kind, selector=INSTANCE) or {}).get("items") or []
    return [o for o in items if any(r.get("kind") == "CloudifyDataset" and r.get("name") == NAME
                                    for r in o["metadata"].get("ownerReferences") or [])]


def server_pods(p: Platform, name: str = NAME) -> list[dict]:
    pods = (p.get("pods", selector=f"app.kubernetes.io/instance={name}") or {}).get("items") or []
    return [x for x in pods if not x["metadata"].get("deletionTimestamp")]


def pod_ready(pod: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


# ---------------------------------------------------------------------------
# tests, in life-cycle order
# ---------------------------------------------------------------------------
def test_apply_crd_and_dataset_becomes_ready(platform):
    p = platform
    p.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"), namespaced=False)
    p.kubectl("apply", "-f", "-", stdin=render(MANIFESTS / "namespace.yaml", p), namespaced=False)
    p.kubectl("apply", "-f", "-", stdin=render(MANIFESTS / "dataset.yaml", p), namespaced=False)
    p.kubectl("wait", "--for=condition=Ready", f"cds/{NAME}", f"--timeout={int(TIMEOUT)}s",
              timeout=TIMEOUT + 30)

    want_url = f"{p.ingress_url}/datasets/{DATASET}/zarr"
    cr = p.cds()
    assert cr["status"]["url"] == want_url
    assert condition(cr, "Ready")["status"] == "True"
    assert cr["status"].get("observedGeneration") == cr["metadata"]["generation"]

    table = p.kubectl("get", "cds").stdout.splitlines()
    header = table[0].split()
    assert header[:4] == ["NAME", "READY", "URL", "REPLICAS"], table
    row = next(line.split() for line in table[1:] if line.split()[0] == NAME)
    assert row[1] == "True" and row[2] == want_url, table

    for kind in ("configmap", "service", "deployment", "horizontalpodautoscaler", "ingress"):
        objs = owned(p, kind)
        assert [o["metadata"]["name"] for o in objs] == OWNED_NAMES.get(kind, [NAME]), f"{kind}: {objs}"


def test_the_api_serves_every_kind_the_operator_manages(platform):
    """The operator lists every kind its role lets it manage on each reconcile (to prune what a
    spec no longer needs); a kind the API server does not serve fails every reconcile before
    status is written. So the chart's rules and the served resources must agree (the emulator
    once lacked PersistentVolumeClaims, which the tape staging cache added)."""
    import test_chart

    rules = test_chart.one(test_chart.objects(), "ClusterRole")["rules"]
    granted = {(g, r) for g, r, _ in test_chart.rule_set(rules) if "/" not in r}
    served = set()
    for name in platform.kubectl("api-resources", "-o", "name", namespaced=False).stdout.split():
        resource, _, group = name.partition(".")
        served.add((group, resource))
    assert granted - served == set(), sorted(served)


def test_xarray_through_the_ingress_equals_the_files(platform):
    p = platform
    url = zarr_url(p)
    assert url.startswith(p.ingress_url + "/")
    meta = requests.get(f"{url}/.zmetadata", timeout=30)
    assert meta.status_code == 200, meta.text
    if p.local:  # answered by nginx in front of the pod, not by a pod port
        assert meta.headers.get("Server", "").startswith("nginx"), meta.headers
    assert_same_data(open_zarr(url), p.reference)


def test_stac_api_lists_the_item_and_its_asset_opens(platform):
    p = platform
    cr = wait_for("condition Registered=True",
                  lambda: (c := p.cds()) and (condition(c, "Registered") or {}).get("status") == "True" and c,
                  platform=p)
    stac_item = item_url(p, cr)
    item = requests.get(stac_item, timeout=30)
    assert item.status_code == 200, f"{stac_item}: {item.status_code} {item.text[:500]}"

    import pystac_client

    client = pystac_client.Client.open(p.catalog_url)
    found = list(client.search(ids=[item.json()["id"]], max_items=10).items())
    assert [i.id for i in found] == [item.json()["id"]]
    listed = found[0]
    zarr_assets = [a for a in listed.assets.values() if "zarr" in (a.media_type or "").lower()
                   or a.href.rstrip("/").endswith("/zarr")]
    assert zarr_assets, {k: (a.href, a.media_type) for k, a in listed.assets.items()}
    href = zarr_assets[0].href.rstrip("/")
    assert href == zarr_url(p), (href, zarr_url(p))
    assert_same_data(open_zarr(href), p.reference)


def test_load_on_the_autoscaler_adds_ready_replicas(platform):
    p = platform
    if p.local:
        # 150 % of one pod's CPU request at a 50 % target: ceil(150 / 50) = 3 pods.
        p.kubectl("annotate", "--overwrite", f"hpa/{NAME}", f"{LOAD_ANNOTATION}=150")
    else:
        pytest.skip("a real HPA needs real CPU load and metrics-server; the annotation drives the local runtime only")
    dep = wait_for("3 ready replicas",
                   lambda: (d := p.get("deployment", NAME)) and d["spec"].get("replicas") == 3
                   and (d.get("status") or {}).get("readyReplicas") == 3 and d, platform=p)
    assert dep["spec"]["replicas"] == 3
    pods = server_pods(p)
    assert len(pods) == 3 and all(pod_ready(x) for x in pods), [x["metadata"]["name"] for x in pods]
    assert len({x["status"]["containerStatuses"][0]["containerID"] for x in pods}) == 3
    hpa = p.get("hpa", NAME)
    assert hpa["status"]["desiredReplicas"] == 3
    wait_for("status.replicas 3 on the CloudifyDataset",
             lambda: ((p.cds() or {}).get("status") or {}).get("replicas") == 3, platform=p)
    # the PDB appears only with replicas.min >= 2, the autoscaler does not change that
    assert owned(p, "poddisruptionbudget") == []


RETRIES = 300  # 0.1 s apart: a pod restart (backoff 0.5 s, start, readiness) fits many times


class Reader(threading.Thread):
    """Reads every chunk through the ingress in a loop; retries failures, and
    records any 200 answer whose body differs from the reference bytes (wrong data)."""

    def __init__(self, url: str, expected: dict[str, bytes]):
        super().__init__(daemon=True)
        self.url, self.expected = url, expected
        self.stop = threading.Event()
        self.ok = 0
        self.retries = 0
        self.wrong: list[str] = []
        self.gave_up: list[str] = []

    def run(self):
        while not self.stop.is_set():
            for key, body in self.expected.items():
                for attempt in range(RETRIES):
                    try:
                        r = requests.get(f"{self.url}/{key}", timeout=5)
                        if r.status_code == 200:
                            if r.content != body:
                                self.wrong.append(f"{key}: {len(r.content)} bytes differ")
                            else:
                                self.ok += 1
                            break
                    except requests.RequestException:
                        pass
                    self.retries += 1
                    time.sleep(0.1)
                else:
                    self.gave_up.append(key)


def test_killed_pod_is_replaced_while_a_client_reads(platform):
    p = platform
    url = zarr_url(p)
    meta = requests.get(f"{url}/.zmetadata", timeout=30).json()["metadata"]
    keys = []  # every chunk of every array
    for name, zarray in meta.items():
        if name.endswith("/.zarray"):
            grid = [-(-s // c) for s, c in zip(zarray["shape"], zarray["chunks"])]
            keys += [name.removesuffix(".zarray") + ".".join(map(str, i)) for i in np.ndindex(*grid)]
    assert {k.split("/")[0] for k in keys} == {"tas", "time", "lat", "lon"}, keys
    expected = {}
    for k in keys:
        r = requests.get(f"{url}/{k}", timeout=30)
        assert r.status_code == 200, (k, r.status_code, r.text[:300])
        expected[k] = r.content

    pods = server_pods(p)
    assert pods, "no server pods"
    victim = pods[0]
    cid = victim["status"]["containerStatuses"][0]["containerID"]
    restarts = victim["status"]["containerStatuses"][0].get("restartCount", 0)
    reader = Reader(url, expected)
    reader.start()
    try:
        wait_for("the reader's first chunks", lambda: reader.ok >= len(keys), platform=p)
        before = reader.ok
        if p.local:
            assert cid.startswith("local://"), cid
            pid = int(cid.removeprefix("local://"))
            os.kill(pid, signal.SIGKILL)

            def replaced():
                pod = p.get("pod", victim["metadata"]["name"])
                st = (pod or {}).get("status", {}).get("containerStatuses", [{}])[0]
                return (pod and st.get("containerID") not in (None, cid) and st.get("restartCount", 0) > restarts
                        and pod_ready(pod) and st)

            st = wait_for(f"pod {victim['metadata']['name']} restarted after SIGKILL of pid {pid}", replaced,
                          platform=p)
            term = (st.get("lastState") or {}).get("terminated") or {}
            assert term.get("signal") == 9 or term.get("exitCode") == 137, st
        else:
            p.kubectl("delete", "pod", victim["metadata"]["name"], "--wait=false")
        want = len(pods)
        wait_for(f"{want} ready pods again", lambda: len([x for x in server_pods(p) if pod_ready(x)]) == want
                 and (p.get("deployment", NAME).get("status") or {}).get("readyReplicas") == want, platform=p)
        # the client kept reading through and after the replacement
        wait_for("reads after the replacement", lambda: reader.ok >= before + 2 * len(keys), platform=p)
        if p.local:
            # every pod's process at once: nginx has no endpoint left, the client must retry
            retries = reader.retries
            now = [x for x in server_pods(p)]
            for x in now:
                os.kill(int(x["status"]["containerStatuses"][0]["containerID"].removeprefix("local://")),
                        signal.SIGKILL)
            wait_for(f"{want} pods restarted and ready",
                     lambda: all((q := p.get("pod", x["metadata"]["name"])) and pod_ready(q)
                                 and q["status"]["containerStatuses"][0]["containerID"]
                                 != x["status"]["containerStatuses"][0]["containerID"] for x in now), platform=p)
            before = reader.ok
            wait_for("reads after all pods restarted", lambda: reader.ok >= before + 2 * len(keys), platform=p)
            assert reader.retries > retries, "the client never saw the outage it should have retried through"
    finally:
        reader.stop.set()
        reader.join(timeout=60)
    print(f"reader: {reader.ok} chunks read, {reader.retries} retries")
    assert not reader.wrong, reader.wrong[:5]
    assert not reader.gave_up, f"chunks never read despite {RETRIES} retries: {reader.gave_up[:5]}"
    assert reader.ok >= 3 * len(keys)


def test_edit_manifest_converges_and_leaves_nothing_behind(platform):
    p = platform
    base = manifest(p)
    # 1. a narrower ingress path (still the server's own prefix, so no rewrite is needed)
    edited = copy.deepcopy(base)
    edited["spec"]["ingress"] = {"path": f"/datasets/{DATASET}/zarr"}
    apply(p, edited)
    ing = wait_for("the Ingress path to change",
                   lambda: (i := p.get("ingress", NAME))
                   and i["spec"]["rules"][0]["http"]["paths"][0]["path"] == f"/datasets/{DATASET}/zarr" and i,
                   platform=p)
    assert len(ing["spec"]["rules"][0]["http"]["paths"]) == 1
    summary = f"{p.ingress_url}/datasets/{DATASET}/keys"
    wait_for("the old route (/keys) to be gone from the ingress",
             lambda: requests.get(summary, timeout=10).status_code == 404, platform=p)
    wait_for("the zarr route to keep working",
             lambda: requests.get(f"{zarr_url(p)}/.zmetadata", timeout=10).status_code == 200, platform=p)
    assert_same_data(open_zarr(zarr_url(p)), p.reference)

    # 2. fixed replicas and no ingress: the HPA and the Ingress go, nothing else is left over
    edited["spec"]["replicas"] = {"min": 1, "max": 1}
    edited["spec"]["ingress"] = {"enabled": False}
    apply(p, edited)
    wait_for("Ingress and HPA deleted",
             lambda: p.get("ingress", NAME) is None and p.get("hpa", NAME) is None, platform=p)
    wait_for("the dataset no longer routed by the ingress",
             lambda: requests.get(f"{zarr_url(p)}/.zmetadata", timeout=10).status_code in (404, 503), platform=p)
    cr = wait_for("Ready for the new generation",
                  lambda: (c := p.cds()) and (condition(c, "Ready") or {}).get("status") == "True"
                  and c["status"].get("observedGeneration") == c["metadata"]["generation"] and c, platform=p)
    assert cr["metadata"]["generation"] >= 3
    wait_for("one replica (the autoscaler's count is no longer kept)",
             lambda: len(server_pods(p)) == 1 and p.get("deployment", NAME)["spec"].get("replicas") == 1,
             platform=p)
    for kind in ("ingress", "horizontalpodautoscaler", "poddisruptionbudget"):
        assert owned(p, kind) == [], kind
    for kind in ("configmap", "service", "deployment"):
        assert [o["metadata"]["name"] for o in owned(p, kind)] == OWNED_NAMES.get(kind, [NAME]), kind

    # 3. back to the original manifest: the Ingress comes back at the default path
    apply(p, base)
    wait_for("the default route again",
             lambda: requests.get(summary, timeout=10).status_code == 200, platform=p)
    assert p.get("hpa", NAME) is not None


def _operator_pid(p: Platform) -> int:
    pids = [c for c in _children(p.proc.pid) if _cmdline(c)[:2][-1:] == ["run"]
            and Path(_cmdline(c)[0]).name == "cloudify-operator"]
    assert len(pids) == 1, f"operator processes under up: {pids}"
    return pids[0]


def _start_operator(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    args = list(args)
    i = args.index("--probe-addr")
    args[i + 1] = f"127.0.0.1:{_free_port()}"
    with open(log, "ab") as f:
        return subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)


def test_operator_restart_mid_reconcile_converges(platform):
    p = platform
    second = manifest(p)
    second["metadata"]["name"] = "e2e-restart"
    second["spec"]["dataset"]["name"] = "e2e_restart"
    second["spec"]["replicas"] = {"min": 2, "max": 2}  # a PDB too, and two pods to wait for

    def mid_reconcile():
        # objects applied, the CR not Ready yet: the reconcile is under way
        dep = p.get("deployment", "e2e-restart")
        cr = p.cds("e2e-restart")
        return dep is not None and (condition(cr, "Ready") or {}).get("status") != "True" and dep

    if not p.local:
        apply(p, second)
        wait_for("the reconcile to start", mid_reconcile, period=0.05)
        ns = os.environ.get("CLOUDIFY_E2E_OPERATOR_NAMESPACE", "cloudify-system")
        p.kubectl("delete", "pod", "-n", ns, "-l", "app.kubernetes.io/component=operator", "--wait=false",
                  namespaced=False)
    else:
        # `up` stops the whole platform when its operator exits, so its operator is paused
        # (SIGSTOP) and the same `cloudify-operator run` command line is run here: killed with
        # SIGKILL mid-reconcile, started again, and then stopped before the paused one resumes.
        upid = _operator_pid(p)
        argv = _cmdline(upid)
        env = dict(a.split("=", 1) for a in Path(f"/proc/{upid}/environ").read_bytes().decode().split("\0") if "=" in a)
        log = p.state / "logs" / "operator-restart.log"
        os.kill(upid, signal.SIGSTOP)
        ours = []
        try:
            ours.append(_start_operator(argv, env, log))
            apply(p, second)
            # killed as soon as its Deployment is applied (one read, no second one for the CR:
            # that widened the window in which the operator could finish before the kill)
            dep = wait_for("the reconcile to start", lambda: p.get("deployment", "e2e-restart"), period=0.02)
            ours[-1].kill()
            assert dep["metadata"]["ownerReferences"][0]["name"] == "e2e-restart"
            ours[-1].wait(timeout=10)
            assert (condition(p.cds("e2e-restart"), "Ready") or {}).get("status") != "True", \
                "the first operator finished before it was killed"
            ours.append(_start_operator(argv, env, log))
            cr = wait_for("e2e-restart Ready after the operator restart",
                          lambda: (c := p.cds("e2e-restart")) and (condition(c, "Ready") or {}).get("status") == "True"
                          and (condition(c, "Registered") or {}).get("status") == "True" and c, platform=p)
        finally:
            for o in ours:
                if o.poll() is None:
                    o.send_signal(signal.SIGTERM)
                    try:
                        o.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        o.kill()
                        o.wait()
            os.kill(upid, signal.SIGCONT)
        assert ours[-1].returncode == 0, f"restarted operator exited with {ours[-1].returncode}"

    cr = wait_for("e2e-restart Ready and Registered",
                  lambda: (c := p.cds("e2e-restart")) and (condition(c, "Ready") or {}).get("status") == "True"
                  and (condition(c, "Registered") or {}).get("status") == "True" and c, platform=p)
    assert cr["status"]["url"] == f"{p.ingress_url}/datasets/e2e_restart/zarr"
    assert len(server_pods(p, "e2e-restart")) == 2
    assert p.get("pdb", "e2e-restart") is not None
    assert_same_data(open_zarr(cr["status"]["url"]), p.reference)
    assert requests.get(item_url(p, cr), timeout=30).status_code == 200
    p.kubectl("delete", "cds", "e2e-restart", f"--timeout={int(TIMEOUT)}s")
    assert p.cds("e2e-restart") is None


def test_delete_collects_owned_objects_and_deregisters(platform):
    p = platform
    cr = p.cds()
    stac_item = item_url(p, cr)
    item_id = requests.get(stac_item, timeout=30).json()["id"]
    assert cr["metadata"].get("finalizers"), "the catalog finalizer is set"
    p.kubectl("delete", "cds", NAME, f"--timeout={int(TIMEOUT)}s", timeout=TIMEOUT + 30)
    assert p.cds() is None

    kinds = ("configmap", "service", "deployment", "horizontalpodautoscaler", "poddisruptionbudget", "ingress",
             "pods")
    left = wait_for("owned objects garbage-collected",
                    lambda: all(not (p.get(k, selector=INSTANCE) or {}).get("items") for k in kinds) or None,
                    platform=p)
    assert left
    r = requests.get(stac_item, timeout=30)
    assert r.status_code == 404, f"{stac_item} still answers {r.status_code}"
    search = requests.get(f"{p.catalog_url}/search", params={"ids": item_id}, timeout=30)
    assert search.status_code == 200
    assert search.json()["features"] == []
    r = requests.get(f"{p.ingress_url}/datasets/{DATASET}/zarr/.zmetadata", timeout=10)
    assert r.status_code in (404, 503)


@pytest.mark.parametrize("name,field", [
    ("invalid-replicas.yaml", "spec.replicas.min"),
    ("invalid-unknown-field.yaml", "spec.dataset.sourcez"),
])
def test_invalid_manifest_is_rejected_naming_the_field(platform, name, field):
    p = platform
    text = render(MANIFESTS / name, p)
    out = p.kubectl("apply", "-f", "-", stdin=text, check=False, namespaced=False)
    assert out.returncode != 0, f"{name} was accepted:\n{out.stdout}"
    assert field in out.stderr, out.stderr
    obj = yaml.safe_load(text)
    assert p.cds(obj["metadata"]["name"]) is None, "nothing was stored"


# ---------------------------------------------------------------------------
# a private dataset with a compute pool (issue #18): access.public: false works end to end
# ---------------------------------------------------------------------------
PRIVATE = "e2e-private"
PRIVATE_DATASET = "e2e_private"
READER_TOKEN = "platform-reader-token-0123456789abcdef"
READERS = "e2e-private-readers"


def test_private_dataset_with_compute_is_served_only_with_a_token(platform):
    import hashlib

    p = platform
    digest = hashlib.sha256(READER_TOKEN.encode()).hexdigest()
    apply(p, {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
              "metadata": {"name": READERS, "namespace": p.namespace},
              "stringData": {"sha256": f"# the one reader of {PRIVATE}\n{digest}\n"}})
    cr = manifest(p)
    cr["metadata"]["name"] = PRIVATE
    cr["spec"]["dataset"]["name"] = PRIVATE_DATASET
    cr["spec"]["replicas"] = {"min": 1, "max": 1}
    cr["spec"]["access"] = {"public": False, "tokenSecret": {"name": READERS, "key": "sha256"}}
    cr["spec"]["compute"] = {"replicas": {"min": 1, "max": 1}}
    apply(p, cr)
    p.kubectl("wait", "--for=condition=Ready", f"cds/{PRIVATE}", f"--timeout={int(TIMEOUT)}s",
              timeout=TIMEOUT + 30)
    got = p.cds(PRIVATE)
    url = got["status"]["url"]
    assert url == f"{p.ingress_url}/datasets/{PRIVATE_DATASET}/zarr"
    # not registered: the CR gives no consent (spec.access.register)
    reg = wait_for("Registered=False/PrivateDataset",
                   lambda: (c := condition(p.cds(PRIVATE), "Registered")) and c["reason"] == "PrivateDataset" and c,
                   platform=p)
    assert reg["status"] == "False"

    # the operator's Secret: owned by the CR, both keys; mounted into server and worker pods
    internal = p.get("secret", f"{PRIVATE}-internal")
    assert internal is not None, "the operator created <name>-internal"
    owners = internal["metadata"]["ownerReferences"]
    assert [(o["kind"], o["name"], o.get("controller")) for o in owners] == [("CloudifyDataset", PRIVATE, True)]
    assert set(internal["data"]) == {"compute-secret", "signing-key"}
    pods = wait_for("a ready server pod and a ready compute pod",
                    lambda: (ps := [x for x in server_pods(p, PRIVATE) if pod_ready(x)])
                    and {x["metadata"]["labels"]["app.kubernetes.io/component"] for x in ps} == {"server", "compute"}
                    and ps, platform=p)
    for pod in pods:
        component = pod["metadata"]["labels"]["app.kubernetes.io/component"]
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert volumes["internal"]["secret"]["secretName"] == f"{PRIVATE}-internal", component
        assert volumes["access"]["secret"]["secretName"] == READERS, component
        args = pod["spec"]["containers"][0]["args"]
        flag = "--compute-secret-file" if component == "server" else "--secret-file"
        assert args[args.index(flag) + 1] == "/etc/cloudify-internal/compute-secret", (component, args)

    # through the nginx ingress: 401 without a token (or with a wrong one), 200 with it
    r = requests.get(f"{url}/.zmetadata", timeout=30)
    assert r.status_code == 401, (r.status_code, r.text[:300])
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert requests.get(f"{url}/tas/0.0.0", timeout=30).status_code == 401  # a chunk: never 404
    r = requests.get(f"{url}/.zmetadata", headers={"Authorization": "Bearer wrong-token"}, timeout=30)
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    h = {"Authorization": f"Bearer {READER_TOKEN}"}
    r = requests.get(f"{url}/.zmetadata", headers=h, timeout=30)
    assert r.status_code == 200, r.text[:300]
    ds = xr.open_dataset(url, engine="zarr", zarr_format=2, consolidated=True,
                         storage_options={"headers": h}).load()
    assert_same_data(ds, p.reference)
    # a reduction: computed by the worker pod, which takes tasks only with the internal secret
    base = url[: -len("/zarr")]
    month = xr.open_dataset(f"{base}/groupby/tas/time.month/mean/zarr", engine="zarr", zarr_format=2,
                            consolidated=True, storage_options={"headers": h}).load()
    want = p.reference["tas"].astype("f8").groupby("time.month").mean()
    np.testing.assert_allclose(month["tas"].values.astype("f8"), want.values, rtol=1e-6)
    # products of the dataset are private like the dataset
    assert requests.get(f"{base}/groupby/tas/time.month/mean/zarr/.zmetadata", timeout=30).status_code == 401

    p.kubectl("delete", "cds", PRIVATE, f"--timeout={int(TIMEOUT)}s", timeout=TIMEOUT + 30)
    wait_for("the internal Secret garbage-collected with the CR",
             lambda: p.get("secret", f"{PRIVATE}-internal") is None, platform=p)
    assert p.get("secret", READERS) is not None, "the readers' Secret is not the operator's"
    p.kubectl("delete", "secret", READERS)
