"""The Helm chart (charts/cloudify) and the Prometheus rules/dashboard it ships.

Real tools only: Helm v4 through the ``helm-python-sdk`` wheel (which bundles Helm's Go SDK as
``libhelm_c.so`` and calls it with ctypes; there is no ``helm`` binary), ``promtool`` from the
Debian ``prometheus`` package, ``/usr/bin/kubectl``, and the built ``cloudify`` binary for the
catalog Deployment's command line.

What a template change can break, and the test that catches it:
* the CRD copy drifting from crds/cloudifydataset.yaml (generated from code),
* RBAC growing or losing a verb/resource, or a wildcard sneaking in,
* the operator/catalog command lines no longer matching the binaries' flags,
* the security context, probes, images, monitoring objects, schema validation,
* rules or dashboard queries that do not parse or name metrics nobody exports.
"""
from __future__ import annotations

import base64
import json
import re
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import helm_python as helm
import pytest
import requests
import yaml

from conftest import PORT_RANGE, find_binary

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "cloudify"
NS = "cloudify-system"
RELEASE = "cloudify"
KUBECTL = "/usr/bin/kubectl"

MONITORING_ON = {
    "monitoring": {
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "dashboard": {"enabled": True},
    }
}
VARIANTS = {
    "default": {},
    "watch-namespace": {"watchNamespace": "team-a"},
    "catalog-disabled": {"catalog": {"enabled": False}},
    "monitoring": MONITORING_ON,
    "no-leader-election": {"operator": {"leaderElection": {"enabled": False}}},
    "catalog-ingress": {"catalog": {"publicUrl": "https://stac.example.org",
                                    "ingress": {"enabled": True, "host": "stac.example.org", "tlsSecret": "stac-tls"}}},
}

# The operator's permissions, as (apiGroup, resource, verb). Exactly these: a new verb or
# resource must be added here on purpose, with its reason in templates/rbac.yaml.
OWNED = {
    ("", "configmaps"),
    ("", "persistentvolumeclaims"),  # <name>-tape-cache of datasets on tape
    ("", "services"),
    ("apps", "deployments"),
    ("autoscaling", "horizontalpodautoscalers"),
    ("policy", "poddisruptionbudgets"),
    ("networking.k8s.io", "ingresses"),
}
OPERATOR_PERMISSIONS = (
    {("cloudify.io", "cloudifydatasets", v) for v in ("get", "list", "watch", "patch")}
    | {("cloudify.io", "cloudifydatasets/status", "patch")}
    | {("cloudify.io", "cloudifydatasets/finalizers", "update")}
    | {(g, r, v) for g, r in OWNED for v in ("get", "list", "watch", "create", "patch", "delete")}
    # get: catalog tokens CRs name; create/patch: each dataset's <name>-internal Secret
    # (deleted with the CR by its owner reference); never list or watch
    | {("", "secrets", v) for v in ("get", "create", "patch")}
    | {("events.k8s.io", "events", v) for v in ("create", "patch")}
)
# Lease permissions: (apiGroup, resource, verb, resourceName or None).
LEASE_PERMISSIONS = {
    ("coordination.k8s.io", "leases", "create", None),
    ("coordination.k8s.io", "leases", "get", "cloudify-operator"),
    ("coordination.k8s.io", "leases", "update", "cloudify-operator"),
    ("coordination.k8s.io", "leases", "patch", "cloudify-operator"),
}

# `cloudify-operator run` flags (see issue 5 and operator/src/main.rs).
OPERATOR_FLAGS = {
    "--namespace", "--image", "--public-url", "--catalog-url", "--catalog-token-file",
    "--server-url-template", "--probe-addr", "--leader-election", "--no-leader-election",
    "--lease-name", "--lease-namespace", "--identity",
}

# Metrics the rules and the dashboard may use, by who exports them.
SERVER_METRICS_SRC = ROOT / "server" / "src" / "metrics.rs"
OPERATOR_SRC = ROOT / "operator" / "src"
OPERATOR_METRICS = {
    "cloudify_operator_reconciles_total",
    "cloudify_operator_reconcile_errors_total",
    "cloudify_operator_reconcile_duration_seconds",
    "cloudify_operator_leader",
}


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def render(values: dict | None = None, namespace: str = NS, release: str = RELEASE) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return chart.render(values or {}, name=release, namespace=namespace, is_install=True)


def objects(values: dict | None = None, namespace: str = NS, release: str = RELEASE) -> list[dict]:
    out = []
    for path, text in render(values, namespace, release).items():
        if path.endswith("NOTES.txt"):
            continue
        out.extend(d for d in yaml.safe_load_all(text) if d)
    return out


def one(objs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def kinds(objs: list[dict]) -> list[tuple[str, str]]:
    return sorted((o["kind"], o["metadata"]["name"]) for o in objs)


def rule_set(rules: list[dict]) -> set[tuple[str, str, str]]:
    out = set()
    for r in rules:
        assert "resourceNames" not in r, r
        for g in r["apiGroups"]:
            for res in r["resources"]:
                for v in r["verbs"]:
                    out.add((g, res, v))
    return out


def container(deploy: dict) -> dict:
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    return c


def flag_names(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("--")]


def arg_value(args: list[str], flag: str) -> str | None:
    vals = [a.split("=", 1)[1] for a in args if a.startswith(flag + "=")]
    assert len(vals) <= 1, (flag, args)
    return vals[0] if vals else None


def workspace_version() -> str:
    m = re.search(r'^\[workspace\.package\][^\[]*?^version\s*=\s*"([^"]+)"',
                  (ROOT / "Cargo.toml").read_text(), re.M | re.S)
    assert m, "no [workspace.package] version in Cargo.toml"
    return m.group(1)


def operator_binary() -> Path | None:
    b = find_binary()
    if not b:
        return None
    p = Path(b).with_name("cloudify-operator")
    return p if p.exists() else None


# ---------------------------------------------------------------------------
# helm lint, CRD, images
# ---------------------------------------------------------------------------
def test_helm_is_v4():
    assert helm.helm_sdk_version().startswith("v4."), helm.helm_sdk_version()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_helm_lint_strict(variant):
    report = helm.lint(CHART, VARIANTS[variant], strict=True, namespace=NS)
    assert report["errors"] == [], report
    # severity 2 = warning, 3 = error (info, e.g. "icon is recommended", is fine)
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


def test_helm_lint_finds_errors():
    """The lint test above can fail: a schema-violating value is an error."""
    report = helm.lint(CHART, {"operator": {"replicas": "two"}}, strict=True, namespace=NS)
    assert report["errors"], report


def test_crd_copy_equals_generated_crd():
    chart_copy = CHART / "crds" / "cloudifydataset.yaml"
    source = ROOT / "crds" / "cloudifydataset.yaml"
    assert chart_copy.read_bytes() == source.read_bytes(), (
        "charts/cloudify/crds/cloudifydataset.yaml drifted from crds/cloudifydataset.yaml; "
        "copy it: cp crds/cloudifydataset.yaml charts/cloudify/crds/"
    )
    with helm.Chart.load(CHART) as chart:
        crds = chart.crds
    assert [Path(c["name"]).name for c in crds] == ["cloudifydataset.yaml"], crds
    # Helm installs crds/ as-is (never templated): it must be exactly the generated object.
    assert yaml.safe_load(crds[0]["data"]) == yaml.safe_load(source.read_text())


def test_package_contents(tmp_path):
    """`helm package` ships the CRD, rules and dashboard, but not the promtool unit tests."""
    archive = helm.package(CHART, destination=tmp_path)
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
    assert Path(archive).name == f"cloudify-{version}.tgz"
    names = set(tarfile.open(archive).getnames())
    for f in ("Chart.yaml", "values.yaml", "values.schema.json", "crds/cloudifydataset.yaml",
              "files/alerts.yaml", "files/dashboard.json", "templates/NOTES.txt", "README.md"):
        assert f"cloudify/{f}" in names, f
    assert "cloudify/files/alerts.test.yaml" not in names


def test_image_matches_app_version_and_operator_default():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == workspace_version(), "Chart appVersion must equal the workspace version"
    m = re.search(r'DEFAULT_IMAGE: &str\s*=\s*concat!\("([^"]+):",\s*env!\("CARGO_PKG_VERSION"\)\)',
                  (ROOT / "operator" / "src" / "build" / "mod.rs").read_text())
    assert m, "operator DEFAULT_IMAGE is no longer '<repo>:' + CARGO_PKG_VERSION"
    assert values["image"]["repository"] == m.group(1)
    expected = f"{m.group(1)}:{workspace_version()}"
    objs = objects()
    for name in ("cloudify-operator", "cloudify-catalog"):
        assert container(one(objs, "Deployment", name))["image"] == expected
    op_args = container(one(objs, "Deployment", "cloudify-operator"))["args"]
    assert arg_value(op_args, "--image") == expected


def test_dockerfile_matches_chart():
    """The image the chart runs: both binaries on PATH, the uid the pods run as."""
    text = (ROOT / "Dockerfile").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    uid = values["operator"]["podSecurityContext"]["runAsUser"]
    assert uid == values["catalog"]["podSecurityContext"]["runAsUser"]
    assert re.search(rf"^USER {uid}(:{uid})?$", text, re.M), "Dockerfile USER must match runAsUser"
    for b in ("cloudify", "cloudify-operator"):
        assert re.search(rf"^COPY --from=\S+ \S*/release/{b} /usr/local/bin/{b}$", text, re.M), b


# ---------------------------------------------------------------------------
# what gets rendered
# ---------------------------------------------------------------------------
def test_default_objects():
    objs = objects()
    assert kinds(objs) == sorted([
        ("ServiceAccount", "cloudify-operator"),
        ("ClusterRole", "cloudify-operator"),
        ("ClusterRoleBinding", "cloudify-operator"),
        ("Role", "cloudify-operator-leader-election"),
        ("RoleBinding", "cloudify-operator-leader-election"),
        ("Deployment", "cloudify-operator"),
        ("Service", "cloudify-operator-metrics"),
        ("Secret", "cloudify-catalog-token"),
        ("PersistentVolumeClaim", "cloudify-catalog"),
        ("Deployment", "cloudify-catalog"),
        ("Service", "cloudify-catalog"),
    ])
    for o in objs:
        if o["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert o["metadata"]["namespace"] == NS, o["metadata"]
        assert o["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        assert o["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


def test_rbac_cluster_wide_by_default():
    objs = objects()
    role = one(objs, "ClusterRole")
    assert rule_set(role["rules"]) == OPERATOR_PERMISSIONS
    binding = one(objs, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "cloudify-operator", "namespace": NS}]
    _check_lease_role(objs, NS)


def test_rbac_namespaced_with_watch_namespace():
    objs = objects({"watchNamespace": "team-a"})
    assert not [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    role = one(objs, "Role", "cloudify-operator")
    assert role["metadata"]["namespace"] == "team-a"
    assert rule_set(role["rules"]) == OPERATOR_PERMISSIONS
    binding = one(objs, "RoleBinding", "cloudify-operator")
    assert binding["metadata"]["namespace"] == "team-a"
    assert binding["roleRef"]["kind"] == "Role" and binding["roleRef"]["name"] == "cloudify-operator"
    # the ServiceAccount lives in the release namespace, not the watched one
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "cloudify-operator", "namespace": NS}]
    _check_lease_role(objs, NS)
    args = container(one(objs, "Deployment", "cloudify-operator"))["args"]
    assert arg_value(args, "--namespace") == "team-a"


def _check_lease_role(objs: list[dict], ns: str):
    role = one(objs, "Role", "cloudify-operator-leader-election")
    assert role["metadata"]["namespace"] == ns
    got = set()
    for r in role["rules"]:
        names = r.get("resourceNames", [None])
        for g in r["apiGroups"]:
            for res in r["resources"]:
                for v in r["verbs"]:
                    for n in names:
                        got.add((g, res, v, n))
    assert got == LEASE_PERMISSIONS
    binding = one(objs, "RoleBinding", "cloudify-operator-leader-election")
    assert binding["metadata"]["namespace"] == ns
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_rbac_has_no_wildcards_and_a_reason_per_rule(variant):
    rendered = render(VARIANTS[variant])["cloudify/templates/rbac.yaml"]
    for o in yaml.safe_load_all(rendered):
        if o and "rules" in o:
            for r in o["rules"]:
                for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                    assert "*" not in r.get(key, []), (o["metadata"]["name"], r)
    lines = rendered.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip().startswith("- apiGroups:")]
    assert starts
    for i in starts:
        assert lines[i - 1].strip().startswith("#"), f"rule without a comment saying why: {lines[i]!r}"


def test_no_leader_election_drops_lease_role():
    objs = objects(VARIANTS["no-leader-election"])
    assert not [o for o in objs if o["metadata"]["name"].endswith("leader-election")]
    deploy = one(objs, "Deployment", "cloudify-operator")
    args = container(deploy)["args"]
    assert "--no-leader-election" in args and "--leader-election" not in args
    assert arg_value(args, "--lease-name") is None
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}


@pytest.mark.parametrize("values,lease", [({}, "prod-cloudify-operator"),
                                          ({"operator": {"leaderElection": {"leaseName": "my-lease"}}}, "my-lease")])
def test_lease_name_is_per_release(values, lease):
    """Two releases in one namespace must not share a Lease; the Role covers the one in use."""
    objs = objects(values, namespace="ops", release="prod")
    args = container(one(objs, "Deployment", "prod-cloudify-operator"))["args"]
    assert arg_value(args, "--lease-name") == lease
    role = one(objs, "Role", "prod-cloudify-operator-leader-election")
    assert [r.get("resourceNames") for r in role["rules"]] == [None, [lease]]


def test_several_replicas_need_leader_election():
    with pytest.raises(helm.HelmError, match="leaderElection"):
        render({"operator": {"replicas": 2, "leaderElection": {"enabled": False}}})
    deploy = one(objects({"operator": {"replicas": 2}}), "Deployment", "cloudify-operator")
    assert deploy["spec"]["replicas"] == 2


def test_operator_deployment():
    objs = objects()
    deploy = one(objs, "Deployment", "cloudify-operator")
    spec = deploy["spec"]
    assert spec["replicas"] == 1
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["serviceAccountName"] == one(objs, "ServiceAccount")["metadata"]["name"]
    c = container(deploy)
    assert c["command"] == ["cloudify-operator"]
    assert c["args"] == [
        "run",
        "--image=ghcr.io/cloudify/cloudify:" + workspace_version(),
        f"--catalog-url=http://cloudify-catalog.{NS}.svc:8080",
        "--catalog-token-file=/var/run/cloudify/catalog-token/token",
        "--probe-addr=0.0.0.0:8080",
        "--leader-election",
        "--lease-name=cloudify-operator",
    ]
    assert set(flag_names(c["args"])) <= OPERATOR_FLAGS
    env = {e["name"]: e for e in c["env"]}
    # --lease-namespace and --identity come from these (downward API)
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert not [e for e in env if e.startswith("CLOUDIFY_OPERATOR_")], "flags are passed as args, once"
    (port,) = c["ports"]
    assert port == {"name": "http-metrics", "containerPort": 8080, "protocol": "TCP"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
    _check_security(pod, c)
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    # the token the catalog checks is the one the operator presents
    (vol,) = pod["volumes"]
    assert vol["secret"]["secretName"] == "cloudify-catalog-token"
    assert vol["secret"]["items"] == [{"key": "token", "path": "token"}]
    assert c["volumeMounts"] == [{"name": vol["name"], "mountPath": "/var/run/cloudify/catalog-token",
                                  "readOnly": True}]


def _check_security(pod: dict, c: dict):
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert "privileged" not in sc or sc["privileged"] is False


def test_operator_options():
    values = {
        "operator": {
            "serverImage": "registry.example.org/cloudify:dev",
            "publicUrl": "https://data.example.org",
            "serverUrlTemplate": "http://{service}.{namespace}.svc:{port}",
            "probePort": 9443,
            "extraArgs": ["--lease-namespace=elsewhere"],
            "extraEnv": [{"name": "RUST_LOG", "value": "debug"}],
        },
        "metrics": {"service": {"port": 9090}},
    }
    objs = objects(values)
    c = container(one(objs, "Deployment", "cloudify-operator"))
    args = c["args"]
    assert arg_value(args, "--image") == "registry.example.org/cloudify:dev"
    assert arg_value(args, "--public-url") == "https://data.example.org"
    assert arg_value(args, "--server-url-template") == "http://{service}.{namespace}.svc:{port}"
    assert arg_value(args, "--probe-addr") == "0.0.0.0:9443"
    assert args[-1] == "--lease-namespace=elsewhere"
    assert set(flag_names(args)) <= OPERATOR_FLAGS
    assert {"name": "RUST_LOG", "value": "debug"} in c["env"]
    assert c["ports"][0]["containerPort"] == 9443
    svc = one(objs, "Service", "cloudify-operator-metrics")
    assert svc["spec"]["ports"] == [{"name": "http-metrics", "port": 9090, "targetPort": "http-metrics",
                                     "protocol": "TCP"}]


def test_operator_flags_exist_in_binary():
    """Every flag the chart passes is one `cloudify-operator run` accepts."""
    b = operator_binary()
    if b is None:
        pytest.skip("cloudify-operator not built")
    p = subprocess.run([str(b), "run", "--help"], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        pytest.skip(f"this cloudify-operator has no `run` command yet: {p.stderr.strip()[:200]}")
    used = set()
    for variant in ({}, VARIANTS["watch-namespace"], VARIANTS["no-leader-election"],
                    VARIANTS["catalog-disabled"],
                    {"operator": {"publicUrl": "https://x.example", "serverUrlTemplate": "t"}}):
        c = container(one(objects(variant), "Deployment", "cloudify-operator"))
        used |= set(flag_names(c["args"]))
        # The binary must accept the exact command line (a flag taking a value where the chart
        # passes none fails here, not in a cluster). No cluster here: it stops after parsing,
        # with its own error about the missing kubeconfig, or keeps retrying until the timeout.
        env = {"HOME": str(Path("/nonexistent")), "PATH": "/usr/bin:/bin", "KUBECONFIG": "/nonexistent",
               "POD_NAMESPACE": NS, "POD_NAME": "cloudify-operator-0"}
        try:
            run = subprocess.run([str(b), *c["args"]], capture_output=True, text=True, timeout=10, env=env)
            # exit code 2 is clap's "bad command line" (the operator's own errors exit 1)
            assert run.returncode != 2, f"rendered args rejected: {c['args']}\n{run.stderr}"
        except subprocess.TimeoutExpired:
            pass
    for flag in sorted(used):
        assert re.search(rf"(^|[\s,]){re.escape(flag)}([\s=\[<]|$)", p.stdout, re.M), \
            f"{flag} not in `cloudify-operator run --help`:\n{p.stdout}"


def test_catalog_objects():
    objs = objects()
    deploy = one(objs, "Deployment", "cloudify-catalog")
    pod = deploy["spec"]["template"]["spec"]
    c = container(deploy)
    assert deploy["spec"]["replicas"] == 1 and deploy["spec"]["strategy"] == {"type": "Recreate"}
    assert pod["automountServiceAccountToken"] is False
    assert c["command"] == ["cloudify"]
    assert c["args"] == ["catalog", "--data=/var/lib/cloudify-catalog",
                         "--token-file=/var/run/cloudify/catalog-token/token", "--host=0.0.0.0", "--port=8080"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    _check_security(pod, c)
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["data"]["persistentVolumeClaim"] == {"claimName": "cloudify-catalog"}
    pvc = one(objs, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "1Gi"
    secret = one(objs, "Secret", "cloudify-catalog-token")
    assert len(base64.b64decode(secret["data"]["token"])) >= 32
    svc = one(objs, "Service", "cloudify-catalog")
    assert svc["spec"]["selector"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    # the operator's built-in default catalog URL is this Service when installed as
    # release "cloudify" in "cloudify-system"
    assert f"http://{svc['metadata']['name']}.{NS}.svc:{svc['spec']['ports'][0]['port']}" == \
        "http://cloudify-catalog.cloudify-system.svc:8080"


def test_catalog_variants():
    objs = objects({"catalog": {"persistence": {"enabled": False}, "token": {"existingSecret": "my-token",
                                                                             "key": "t"}}})
    assert not [o for o in objs if o["kind"] in ("PersistentVolumeClaim", "Secret")]
    pod = one(objs, "Deployment", "cloudify-catalog")["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["data"] == {"name": "data", "emptyDir": {}}
    assert vols["catalog-token"]["secret"] == {"secretName": "my-token", "items": [{"key": "t", "path": "token"}]}
    op = one(objs, "Deployment", "cloudify-operator")["spec"]["template"]["spec"]
    assert op["volumes"][0]["secret"] == vols["catalog-token"]["secret"]

    claim = objects({"catalog": {"persistence": {"existingClaim": "shared"}}})
    assert not [o for o in claim if o["kind"] == "PersistentVolumeClaim"]
    pod = one(claim, "Deployment", "cloudify-catalog")["spec"]["template"]["spec"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "shared"}} in pod["volumes"]


def test_catalog_ingress():
    assert not [o for o in objects() if o["kind"] == "Ingress"]
    objs = objects(VARIANTS["catalog-ingress"])
    ing = one(objs, "Ingress", "cloudify-catalog")
    svc = one(objs, "Service", "cloudify-catalog")
    assert ing["spec"]["ingressClassName"] == "nginx"
    assert ing["spec"]["tls"] == [{"hosts": ["stac.example.org"], "secretName": "stac-tls"}]
    (rule,) = ing["spec"]["rules"]
    assert rule["host"] == "stac.example.org"
    assert rule["http"]["paths"] == [{"path": "/", "pathType": "Prefix", "backend": {"service": {
        "name": svc["metadata"]["name"], "port": {"name": svc["spec"]["ports"][0]["name"]}}}}]
    args = container(one(objs, "Deployment", "cloudify-catalog"))["args"]
    assert arg_value(args, "--public-url") == "https://stac.example.org"
    # without a host there is nothing to route: the schema says which key is missing
    with pytest.raises(helm.HelmValuesError, match="/catalog/ingress/host"):
        render({"catalog": {"ingress": {"enabled": True}}})


def test_catalog_disabled():
    objs = objects(VARIANTS["catalog-disabled"])
    assert not [o for o in objs if "catalog" in o["metadata"]["name"]], kinds(objs)
    c = container(one(objs, "Deployment", "cloudify-operator"))
    # no URL: the operator's default; no token file: none to mount
    assert arg_value(c["args"], "--catalog-url") is None
    assert arg_value(c["args"], "--catalog-token-file") is None
    assert "volumeMounts" not in c

    objs = objects({"catalog": {"enabled": False}, "operator": {
        "catalogUrl": "https://stac.example.org", "catalogTokenSecret": {"name": "stac", "key": "bearer"}}})
    deploy = one(objs, "Deployment", "cloudify-operator")
    c = container(deploy)
    assert arg_value(c["args"], "--catalog-url") == "https://stac.example.org"
    assert arg_value(c["args"], "--catalog-token-file") == "/var/run/cloudify/catalog-token/token"
    (vol,) = deploy["spec"]["template"]["spec"]["volumes"]
    assert vol["secret"] == {"secretName": "stac", "items": [{"key": "bearer", "path": "token"}]}


def test_rendered_catalog_command_runs(tmp_path):
    """Run the real `cloudify catalog` with the rendered Deployment's command line (container
    paths mapped to temp dirs, the Secret's token "mounted" as the kubelet would), then hit its
    probe path and a transaction with the token the operator is given."""
    binary = find_binary()
    if not binary:
        pytest.skip("cloudify binary not built")
    objs = objects()
    deploy = one(objs, "Deployment", "cloudify-catalog")
    c = container(deploy)
    secret = one(objs, "Secret", "cloudify-catalog-token")
    token_dir = tmp_path / "token"
    token_dir.mkdir()
    pod = deploy["spec"]["template"]["spec"]
    (item,) = {v["name"]: v for v in pod["volumes"]}["catalog-token"]["secret"]["items"]
    token = base64.b64decode(secret["data"][item["key"]]).decode()
    (token_dir / item["path"]).write_text(token)
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    path_map = {"/var/lib/cloudify-catalog": str(tmp_path / "data"),
                "/var/run/cloudify/catalog-token": str(token_dir)}
    assert set(path_map) == set(mounts), "every writable/secret path the catalog uses is a mount"
    args = []
    for a in c["args"]:
        for container_path, local in path_map.items():
            a = a.replace("=" + container_path, "=" + local)
        if a.startswith("--host="):
            a = "--host=127.0.0.1"  # the test does not listen on every interface
        args.append(a)
    listen = tmp_path / "listen"
    log = open(tmp_path / "catalog.log", "wb")
    proc = subprocess.Popen([binary, *args, "--port-range", PORT_RANGE, "--listen-file", str(listen)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (listen.exists() and listen.read_text().strip().startswith("http")):
            assert proc.poll() is None, (tmp_path / "catalog.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "catalog did not start"
            time.sleep(0.05)
        url = listen.read_text().strip().rstrip("/")
        probe = c["readinessProbe"]["httpGet"]["path"]
        assert requests.get(url + probe, timeout=10).status_code == 200
        coll = {"type": "Collection", "stac_version": "1.1.0", "id": "chart-test", "description": "d",
                "license": "proprietary", "links": [],
                "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]}, "temporal": {"interval": [[None, None]]}}}
        assert requests.post(url + "/collections", json=coll, timeout=10).status_code == 401
        r = requests.post(url + "/collections", json=coll, timeout=10,
                          headers={"Authorization": f"Bearer {token}"})
        assert r.status_code in (200, 201), r.text
        assert (tmp_path / "data").is_dir()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# ---------------------------------------------------------------------------
# values.schema.json
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("values,names", [
    ({"operator": {"replicas": -1}}, "/operator/replicas"),
    ({"catalog": {"port": "http"}}, "/catalog/port"),
    ({"watchNamespace": "Team_A"}, "/watchNamespace"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"operator": {"publicUrl": "data.example.org"}}, "/operator/publicUrl"),
    ({"catalog": {"persistence": {"size": "lots"}}}, "/catalog/persistence/size"),
    ({"operatr": {"replicas": 2}}, "operatr"),
    ({"monitoring": {"serviceMonitor": {"interval": "often"}}}, "/monitoring/serviceMonitor/interval"),
])
def test_schema_rejects_bad_values(values, names):
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema({})  # the defaults are valid
        with pytest.raises(helm.HelmValuesError) as e:
            chart.validate_schema(values)
    assert names in str(e.value), str(e.value)
    # and an install/template refuses them the same way
    with pytest.raises(helm.HelmValuesError, match=re.escape(names)):
        render(values)


# ---------------------------------------------------------------------------
# monitoring: ServiceMonitors, PrometheusRule, dashboard
# ---------------------------------------------------------------------------
def test_monitoring_off_by_default():
    assert not [o for o in objects() if o["kind"] in ("ServiceMonitor", "PrometheusRule", "ConfigMap")]


def test_monitoring_objects():
    objs = objects(MONITORING_ON)
    op_sm = one(objs, "ServiceMonitor", "cloudify-operator")
    svc = one(objs, "Service", "cloudify-operator-metrics")
    assert op_sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert op_sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]
    assert op_sm["spec"]["namespaceSelector"] == {"matchNames": [NS]}
    srv_sm = one(objs, "ServiceMonitor", "cloudify-servers")
    # the labels the operator puts on every server Service (issue 5), and its port name
    assert srv_sm["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "cloudify", "app.kubernetes.io/component": "server",
        "app.kubernetes.io/managed-by": "cloudify-operator"}
    assert srv_sm["spec"]["endpoints"][0]["port"] == "http"
    assert 'name: Some(PORT_NAME.into())' in (ROOT / "operator/src/build/service.rs").read_text()
    assert 'PORT_NAME: &str = "http"' in (ROOT / "operator/src/build/deployment.rs").read_text()
    assert srv_sm["spec"]["namespaceSelector"] == {"any": True}
    # compute workers (spec.compute): the labels the operator puts on every <name>-compute
    # Service, same port name; workers are never scraped as servers and vice versa
    cmp_sm = one(objs, "ServiceMonitor", "cloudify-compute")
    assert cmp_sm["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "cloudify", "app.kubernetes.io/component": "compute",
        "app.kubernetes.io/managed-by": "cloudify-operator"}
    assert cmp_sm["spec"]["endpoints"][0]["port"] == "http"
    assert cmp_sm["spec"]["namespaceSelector"] == {"any": True}
    assert 'component_selector_labels(name, "compute")' in (ROOT / "operator/src/build/meta.rs").read_text()
    assert "compute_service" in (ROOT / "operator/src/build/service.rs").read_text()
    scoped = one(objects({**MONITORING_ON, "watchNamespace": "team-a"}), "ServiceMonitor", "cloudify-servers")
    assert scoped["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}

    rule = one(objs, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())

    cm = one(objs, "ConfigMap", "cloudify-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["cloudify.json"]) == json.loads((CHART / "files" / "dashboard.json").read_text())


def test_promtool_check_rules():
    p = subprocess.run(["promtool", "check", "rules", str(CHART / "files" / "alerts.yaml")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS" in p.stdout


def test_promtool_test_rules():
    p = subprocess.run(["promtool", "test", "rules", str(CHART / "files" / "alerts.test.yaml")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS" in p.stdout


def test_promtool_unit_tests_can_fail(tmp_path):
    """Loosen one alert threshold: the unit tests must notice."""
    rules = (CHART / "files" / "alerts.yaml").read_text()
    assert "cloudify:chunk_seconds:p99_5m > 1\n" in rules
    (tmp_path / "alerts.yaml").write_text(rules.replace("cloudify:chunk_seconds:p99_5m > 1\n",
                                                        "cloudify:chunk_seconds:p99_5m > 3\n"))
    shutil.copy(CHART / "files" / "alerts.test.yaml", tmp_path / "alerts.test.yaml")
    p = subprocess.run(["promtool", "test", "rules", str(tmp_path / "alerts.test.yaml")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "CloudifyServerChunkLatencyHigh" in p.stdout + p.stderr


def _dashboard_exprs() -> list[str]:
    dash = json.loads((CHART / "files" / "dashboard.json").read_text())
    exprs = []

    def walk(panels):
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []))
            walk(p.get("panels", []))

    walk(dash["panels"])
    return exprs


def _grafana_to_promql(expr: str) -> str:
    # Grafana's variables, as Grafana substitutes them before Prometheus sees the query.
    return expr.replace("$__rate_interval", "5m").replace('=~"$namespace"', '=~".*"')


def test_dashboard_json_and_queries_parse(tmp_path):
    dash = json.loads((CHART / "files" / "dashboard.json").read_text())
    assert dash["title"] and dash["uid"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    exprs = _dashboard_exprs()
    assert len(exprs) >= 10
    for e in exprs:
        assert "$" not in _grafana_to_promql(e), f"unhandled Grafana variable in {e!r}"
    # promtool has no offline "parse this query" command; a rules file parses every expr.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": _grafana_to_promql(e)} for i, e in enumerate(exprs)]}]}
    f = tmp_path / "dashboard-rules.yaml"
    f.write_text(yaml.safe_dump(rules))
    p = subprocess.run(["promtool", "check", "rules", str(f)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    # ... and a broken query would have been caught
    f.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"record": "x:y", "expr": "sum by (code (rate(cloudify_requests_total[5m]))"}]}]}))
    p = subprocess.run(["promtool", "check", "rules", str(f)], capture_output=True, text=True, timeout=120)
    assert p.returncode != 0


METRIC_RE = re.compile(r"\b(cloudify_[a-z0-9_]+)\b")


def _used_metrics() -> set[str]:
    rules = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    texts = [r["expr"] for g in rules["groups"] for r in g["rules"]] + _dashboard_exprs()
    dash = json.loads((CHART / "files" / "dashboard.json").read_text())
    texts += [v["query"]["query"] for v in dash["templating"]["list"] if isinstance(v.get("query"), dict)]
    used = set()
    for t in texts:
        # recording-rule names (with ':') are defined in alerts.yaml itself
        for m in METRIC_RE.findall(re.sub(r"\b[a-z_]+:[a-z0-9_:]+", "", t)):
            used.add(re.sub(r"_(bucket|sum|count)$", "", m))
    return used


def test_server_metrics_used_exist():
    # object-store metrics are defined with the storage layer they count, compute ones with
    # the fan-out client (server side) and the worker, tape recall ones with the tape stager
    src = SERVER_METRICS_SRC.read_text() + "".join(
        (ROOT / "server" / "src" / f).read_text()
        for f in ("storage/metrics.rs", "compute/client.rs", "compute/worker.rs", "storage/tape/mod.rs"))
    server = {m for m in _used_metrics() if not m.startswith("cloudify_operator_")}
    assert server >= {"cloudify_requests_total", "cloudify_chunk_seconds", "cloudify_chunk_bytes_total",
                      "cloudify_datasets", "cloudify_worker_tasks_total", "cloudify_worker_task_seconds",
                      "cloudify_worker_in_flight", "cloudify_compute_retries_total",
                      "cloudify_compute_rejected_total"}
    for m in sorted(server):
        assert f'"{m}"' in src, f"{m} is used by the rules/dashboard but not exported by the server"
    assert '&["kind", "code"]' in src, "rules and dashboard use the labels kind and code"


def test_operator_metrics_used_exist():
    used = {m for m in _used_metrics() if m.startswith("cloudify_operator_")}
    assert used == OPERATOR_METRICS
    src = "\n".join(p.read_text() for p in OPERATOR_SRC.rglob("*.rs"))
    if "cloudify_operator_" not in src:
        pytest.skip("the operator exports no metrics yet (controller not merged)")
    for m in sorted(used):
        assert f'"{m}"' in src, f"{m} is used by the rules/dashboard but not exported by the operator"


# ---------------------------------------------------------------------------
# kubectl
# ---------------------------------------------------------------------------
# Kinds kubectl's built-in scheme knows (the CRD and Prometheus Operator kinds it does not).
BUILTIN = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Deployment",
           "Service", "Secret", "PersistentVolumeClaim", "ConfigMap", "Ingress"}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_kubectl_decodes_rendered_objects(variant, tmp_path):
    """`kubectl create --dry-run=client` needs an API server for discovery, which this machine
    does not have; `kubectl set env --local` decodes every document into kubectl's typed Go
    structs offline (a wrong type anywhere is 'unable to decode'), then edits the pod templates
    and names the other objects as 'not a pod'."""
    objs = [o for o in objects(VARIANTS[variant]) if o["kind"] in BUILTIN]
    assert len(objs) == len(objects(VARIANTS[variant])) - sum(
        1 for o in objects(VARIANTS[variant]) if o["kind"] in ("ServiceMonitor", "PrometheusRule"))
    f = tmp_path / "rendered.yaml"
    f.write_text(yaml.safe_dump_all(objs))
    p = subprocess.run([KUBECTL, "set", "env", "--local", "-o", "name", "-f", str(f), "CLOUDIFY_CHECK=1"],
                       capture_output=True, text=True, timeout=120, env={"HOME": str(tmp_path), "PATH": "/usr/bin"})
    out = p.stdout + p.stderr
    assert "unable to decode" not in out and "unable to recognize" not in out, out
    for o in objs:
        name = o["metadata"]["name"]
        if o["kind"] == "Deployment":
            assert f"deployment.apps/{name}" in p.stdout, out
        else:
            assert re.search(rf"/{re.escape(name)}\s+the object is not a pod", out), (o["kind"], name, out)


def test_kubectl_decode_catches_type_errors(tmp_path):
    """The check above is not vacuous: a mistyped field fails to decode."""
    deploy = one(objects(), "Deployment", "cloudify-operator")
    deploy["spec"]["replicas"] = "one"
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(deploy))
    p = subprocess.run([KUBECTL, "set", "env", "--local", "-o", "name", "-f", str(f), "X=1"],
                       capture_output=True, text=True, timeout=120, env={"HOME": str(tmp_path), "PATH": "/usr/bin"})
    assert p.returncode != 0 and "unable to decode" in p.stderr and "replicas" in p.stderr, p.stderr
