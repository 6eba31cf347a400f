"""deploy/: the kustomization that installs msm's Kubernetes mode, built by the real ``kubectl``
and checked against a real API server: a server-side dry-run of every object, and the RBAC as
the API server enforces it (``kubectl auth can-i`` for msm's ServiceAccount)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import yaml
from kube_env import CRDS, api_client, require_tools
from kubernetes import client
from kubernetes.client.rest import ApiException

from placement.local.apiserver import ApiServer

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
NS = "modelmesh-serving"
SA = f"system:serviceaccount:{NS}:msm-controller"
TIMEOUT = 60  # seconds, for every kubectl run

BASE_OBJECTS = sorted([
    ("Namespace", None, NS),
    ("ServiceAccount", NS, "msm-controller"),
    ("ClusterRole", None, "msm-controller"),
    ("ClusterRoleBinding", None, "msm-controller"),
    ("Role", NS, "msm-leader-election"),
    ("RoleBinding", NS, "msm-leader-election"),
    ("Role", NS, "msm-rollouts"),
    ("RoleBinding", NS, "msm-rollouts"),
    ("Deployment", NS, "msm-controller"),
    ("Service", NS, "msm-xds"),
    ("Service", NS, "msm-admin"),
    ("PodDisruptionBudget", NS, "msm-controller"),
    ("ServingRuntime", NS, "mlserver-1.x"),
], key=str)
CRD_OBJECTS = sorted([
    ("CustomResourceDefinition", None, "inferenceservices.serving.kserve.io"),
    ("CustomResourceDefinition", None, "servingruntimes.serving.kserve.io"),
    ("CustomResourceDefinition", None, "clusterservingruntimes.serving.kserve.io"),
], key=str)
RBAC_GROUP = "rbac.authorization.k8s.io"
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}

# The ClusterRole, rule by rule (docs/deploy.md has the table): nothing more, nothing less.
CLUSTER_RULES = [
    ("serving.kserve.io", ("inferenceservices", "servingruntimes", "clusterservingruntimes"),
     ("get", "list", "watch")),
    ("serving.kserve.io", ("inferenceservices/status",), ("get", "patch", "update")),
    ("apps", ("deployments",), ("get", "list", "watch", "create", "update", "patch", "delete")),
    ("", ("services",), ("get", "list", "watch", "create", "update", "patch", "delete")),
    ("", ("pods",), ("get", "list", "watch")),
    ("", ("events",), ("create", "patch")),
    ("networking.istio.io", ("virtualservices",), ("get", "list", "watch")),
    ("networking.istio.io", ("virtualservices/status",), ("get", "patch", "update")),
]
LEASE_RULES = [("coordination.k8s.io", ("leases",), ("get", "list", "watch", "create", "update", "patch"))]


def kubectl(*args: str, kubeconfig: Path | None = None, stdin: str | None = None,
            ) -> subprocess.CompletedProcess[str]:
    """The real kubectl, bounded in time."""
    cmd = [str(require_tools() / "kubectl")]
    if kubeconfig is not None:
        cmd += ["--kubeconfig", str(kubeconfig)]
    return subprocess.run([*cmd, *args], input=stdin, capture_output=True, text=True, timeout=TIMEOUT)


def build(path: Path) -> list[dict]:
    out = kubectl("kustomize", str(path))
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def key(obj: dict) -> tuple[str, str | None, str]:
    return obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]


def rules(role: dict) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    return [(g, tuple(r["resources"]), tuple(r["verbs"])) for r in role["rules"] for g in r["apiGroups"]]


def one(objs: list[dict], kind: str, name: str) -> dict:
    [obj] = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


# -- the build -------------------------------------------------------------------------------------


ISTIO_OBJECTS = sorted([
    *BASE_OBJECTS,
    ("ClusterRole", None, "msm-controller-istio"), ("ClusterRoleBinding", None, "msm-controller-istio"),
    ("Role", NS, "msm-xds-ca"), ("RoleBinding", NS, "msm-xds-ca"),
    ("Role", "istio-system", "msm-xds-root-cert"), ("RoleBinding", "istio-system", "msm-xds-root-cert"),
    ("Role", NS, "msm-mesh-root"), ("RoleBinding", NS, "msm-mesh-root"),
], key=str)


@pytest.mark.parametrize(("path", "expected"), [
    ("deploy", sorted(BASE_OBJECTS + CRD_OBJECTS, key=str)),
    ("deploy/istio", ISTIO_OBJECTS),
    ("deploy/base", BASE_OBJECTS),
    ("deploy/crds", CRD_OBJECTS),
])
def test_kustomize_builds_exactly_the_expected_objects(path: str, expected: list) -> None:
    assert sorted((key(o) for o in build(ROOT / path)), key=str) == expected


def test_the_base_objects_are_what_docs_deploy_md_says() -> None:
    objs = build(DEPLOY / "base")
    cluster_role = one(objs, "ClusterRole", "msm-controller")
    assert rules(cluster_role) == CLUSTER_RULES
    assert rules(one(objs, "Role", "msm-leader-election")) == LEASE_RULES
    every = [r for o in objs if o["kind"] in ("ClusterRole", "Role") for r in rules(o)]
    assert not any("*" in g or "*" in res or "*" in verbs for g, res, verbs in every)
    # no secrets; ConfigMaps only the rollouts' state, in msm's namespace, get and update by name
    assert not any("secrets" in res for _, res, _ in every)
    rollouts = one(objs, "Role", "msm-rollouts")
    assert rollouts["metadata"]["namespace"] == NS
    assert rollouts["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["msm-rollouts"],
         "verbs": ["get", "update"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]}]
    assert [o for o in objs if o["kind"] == "ClusterRole" and "configmaps" in str(o["rules"])] == []
    for kind, role_kind, name in [("ClusterRoleBinding", "ClusterRole", "msm-controller"),
                                  ("RoleBinding", "Role", "msm-leader-election"),
                                  ("RoleBinding", "Role", "msm-rollouts")]:
        binding = one(objs, kind, name)  # each binding has its role's name
        assert binding["roleRef"] == {"apiGroup": RBAC_GROUP, "kind": role_kind, "name": name}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "msm-controller", "namespace": NS}]

    dep = one(objs, "Deployment", "msm-controller")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["replicas"] == 2 and dep["spec"]["selector"]["matchLabels"] == pod_labels
    assert pod_labels == {"app.kubernetes.io/name": "msm-controller"}
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "msm-controller"
    [c] = pod["containers"]
    assert c["image"] == "msm:0.1.0"
    assert c["command"] == ["msm", "kube-control-plane", "--xds-host", "0.0.0.0", "--admin-host", "0.0.0.0",
                            "--xds-port", "18000", "--admin-port", "18001", "--adapter-image", "msm:0.1.0"]
    assert {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"]} == {
        "POD_NAMESPACE": "metadata.namespace", "POD_NAME": "metadata.name",
        "POD_IP": "status.podIP"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"xds": 18000, "admin": 18001}
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": 18001}
    assert c["livenessProbe"]["initialDelaySeconds"] == 10
    assert c["resources"] == {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
    assert c["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1000,
                                    "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}
    [spread] = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert spread["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert spread["podAffinityTerm"]["labelSelector"]["matchLabels"] == pod_labels

    ports = {}
    for name in ("msm-xds", "msm-admin"):
        svc = one(objs, "Service", name)
        assert svc["spec"]["selector"] == pod_labels
        ports.update({p["name"]: p for p in svc["spec"]["ports"]})
    assert ports["grpc-xds"]["port"] == 18000 and ports["grpc-xds"]["appProtocol"] == "grpc"
    assert ports["http-admin"]["port"] == 18001
    pdb = one(objs, "PodDisruptionBudget", "msm-controller")
    assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": pod_labels}}

    quickstart = yaml.safe_load((ROOT / "examples" / "quickstart" / "mlserver-runtime.yaml").read_text())
    assert one(objs, "ServingRuntime", "mlserver-1.x")["spec"] == quickstart["spec"]


def test_deploy_istio_is_the_base_plus_the_secure_xds_port_and_the_gateway_flag() -> None:
    base, istio = build(DEPLOY / "base"), build(DEPLOY / "istio")
    [c0] = one(base, "Deployment", "msm-controller")["spec"]["template"]["spec"]["containers"]
    [c] = one(istio, "Deployment", "msm-controller")["spec"]["template"]["spec"]["containers"]
    gateway_sa = "istio-system/msm-model-gateway-service-account"
    assert c["command"] == [*c0["command"], "--istio-gateway", gateway_sa]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"xds": 18000, "admin": 18001,
                                                                   "xds-tls": 15012, "measure-tls": 15013}
    ports = {p["name"]: p for p in one(istio, "Service", "msm-xds")["spec"]["ports"]}
    assert ports["grpc-xds-tls"] == {"name": "grpc-xds-tls", "port": 15012, "targetPort": "xds-tls",
                                     "appProtocol": "grpc"}
    assert rules(one(istio, "ClusterRole", "msm-controller-istio")) == [
        ("authentication.k8s.io", ("tokenreviews",), ("create",))]
    for name, ns in (("msm-xds-ca", NS), ("msm-xds-root-cert", "istio-system")):
        role, binding = one(istio, "Role", name), one(istio, "RoleBinding", name)
        assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == ns
        assert binding["roleRef"] == {"apiGroup": RBAC_GROUP, "kind": "Role", "name": name}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "msm-controller", "namespace": NS}]
        # reads and updates only the one object; create cannot be limited by name in RBAC
        assert [r.get("resourceNames") for r in role["rules"]] == [[name], None]
        assert role["rules"][1]["verbs"] == ["create"]
    # the mesh's root, read only: the one ConfigMap istiod writes in msm's namespace
    role, binding = one(istio, "Role", "msm-mesh-root"), one(istio, "RoleBinding", "msm-mesh-root")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == NS
    assert role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"],
                              "resourceNames": ["istio-ca-root-cert"], "verbs": ["get"]}]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "msm-controller", "namespace": NS}]


def test_the_crds_are_the_ones_msm_ships() -> None:
    shipped = {p.name: p.read_bytes() for p in CRDS.glob("*.yaml")}
    deployed = {p.name: p.read_bytes() for p in (DEPLOY / "crds").glob("*.yaml")
                if p.name != "kustomization.yaml"}
    assert sorted(deployed) == sorted(shipped)
    changed = [name for name in shipped if deployed[name] != shipped[name]]
    assert changed == [], f"deploy/crds/ differs from placement/manifests/crds/: cp them again ({changed})"
    listed = yaml.safe_load((DEPLOY / "crds" / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(shipped)


# -- against the API server ------------------------------------------------------------------------


def kubeconfig_file(server: ApiServer, folder: Path) -> Path:
    path = folder / "kubeconfig"
    path.write_text(server.kubeconfig())
    path.chmod(0o600)
    return path


def delete_namespace(api: client.ApiClient, name: str) -> None:
    """Delete a namespace for good. No kube-controller-manager runs here, so nothing empties it
    and clears its ``kubernetes`` finalizer: the caller has emptied it; this clears the finalizer."""
    core = client.CoreV1Api(api)
    core.delete_namespace(name)
    ns = core.read_namespace(name)
    ns.spec.finalizers = []
    core.replace_namespace_finalize(name, ns)
    deadline = time.monotonic() + 30
    while True:
        try:
            core.read_namespace(name)
        except ApiException as e:
            if e.status == 404:
                return
            raise
        assert time.monotonic() < deadline, f"namespace {name} still there"
        time.sleep(0.1)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def cluster(apiserver: ApiServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Path]:
    """The session's API server with msm's namespace; its admin kubeconfig.

    Other tests create ``modelmesh-serving`` themselves (and fail if it exists): when this module
    made it, it removes it again, with the namespaced objects it applied in it."""
    with api_client(apiserver) as api:
        try:
            client.CoreV1Api(api).create_namespace({"metadata": {"name": NS}})
            created = True
        except ApiException as e:
            if e.status != 409:
                raise
            created = False
    yield kubeconfig_file(apiserver, tmp_path_factory.mktemp("deploy"))
    if not created:
        return
    with api_client(apiserver) as api:
        core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
        for delete, name in [(core.delete_namespaced_service_account, "msm-controller"),
                             (rbac.delete_namespaced_role_binding, "msm-leader-election"),
                             (rbac.delete_namespaced_role, "msm-leader-election")]:
            try:
                delete(name, NS)
            except ApiException as e:
                if e.status != 404:
                    raise
        delete_namespace(api, NS)


async def run(*args: str, kubeconfig: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(kubectl, *args, kubeconfig=kubeconfig, stdin=stdin)


@pytest.mark.asyncio(loop_scope="session")
async def test_server_side_dry_run_accepts_every_object(cluster: Path, apiserver: ApiServer) -> None:
    # No field-manager conflict arises today (the fixture's CRDs have the same values), but another
    # test may have made one of these objects with other values: --force-conflicts keeps this a
    # check of what the API server accepts. A dry run takes nothing over.
    for path, expected in [("deploy/base", BASE_OBJECTS), ("deploy/crds", CRD_OBJECTS)]:
        out = await run("apply", "--server-side", "--force-conflicts", "--dry-run=server",
                        "-k", str(ROOT / path), kubeconfig=cluster)
        assert out.returncode == 0, out.stderr
        applied = [ln for ln in out.stdout.splitlines() if ln.endswith("serverside-applied (server dry run)")]
        assert len(applied) == len(expected), out.stdout
    with api_client(apiserver) as api:  # a dry run: nothing was made
        with pytest.raises(ApiException) as gone:
            client.AppsV1Api(api).read_namespaced_deployment("msm-controller", NS)
        assert gone.value.status == 404


@pytest.mark.asyncio(loop_scope="session")
async def test_the_dry_run_is_validated_by_the_api_server(cluster: Path) -> None:
    # the check above is not vacuous: a ServingRuntime the CRD's schema refuses is refused
    broken = one(build(DEPLOY / "base"), "ServingRuntime", "mlserver-1.x")
    broken["spec"]["multiModel"] = "yes"  # a boolean in the CRD
    out = await run("apply", "--server-side", "--force-conflicts", "--dry-run=server", "-f", "-",
                    kubeconfig=cluster, stdin=yaml.safe_dump(broken))
    assert out.returncode != 0
    assert "spec.multiModel" in out.stderr, out.stderr


CAN = [
    ("list", "inferenceservices.serving.kserve.io", "-A"),
    ("patch", "inferenceservices.serving.kserve.io", "--subresource=status", "-A"),
    ("create", "deployments.apps", "-n", NS),
    ("watch", "pods", "-A"),
    ("create", "leases.coordination.k8s.io", "-n", NS),
    ("update", "configmaps/msm-rollouts", "-n", NS),
]
CANNOT = [
    ("update", "configmaps/other", "-n", NS),
    ("get", "configmaps/msm-rollouts", "-n", "default"),
    ("get", "secrets", "-A"),
    ("list", "configmaps", "-A"),
    ("create", "pods", "-A"),
    ("delete", "inferenceservices.serving.kserve.io", "-A"),
    ("create", "leases.coordination.k8s.io", "-n", "default"),
]


ISTIO_CAN = [
    ("create", "tokenreviews.authentication.k8s.io"),
    ("get", "secrets/msm-xds-ca", "-n", NS),
    ("create", "secrets", "-n", NS),
    ("update", "configmaps/msm-xds-root-cert", "-n", "istio-system"),
    ("create", "configmaps", "-n", "istio-system"),
    ("get", "configmaps/istio-ca-root-cert", "-n", NS),
]
ISTIO_CANNOT = [
    ("update", "configmaps/istio-ca-root-cert", "-n", NS),
    ("get", "configmaps/other", "-n", NS),
    ("get", "secrets/istio-ca-secret", "-n", "istio-system"),
    ("get", "secrets/other", "-n", NS),
    ("list", "secrets", "-n", NS),
    ("get", "configmaps/istio", "-n", "istio-system"),
    ("update", "configmaps/msm-xds-root-cert", "-n", NS),
    ("create", "tokenrequests", "-A"),
]


@pytest.mark.asyncio(loop_scope="session")
async def test_the_api_server_enforces_the_istio_rbac(cluster: Path) -> None:
    out = await run("create", "namespace", "istio-system", kubeconfig=cluster)
    assert out.returncode == 0 or "AlreadyExists" in out.stderr, out.stderr
    rbac = [o for o in build(DEPLOY / "istio") if o["kind"] in RBAC_KINDS]
    await assert_rbac(cluster, rbac, ISTIO_CAN, ISTIO_CANNOT)


@pytest.mark.asyncio(loop_scope="session")
async def test_the_api_server_enforces_the_least_privilege_rbac(cluster: Path) -> None:
    rbac = [o for o in build(DEPLOY / "base") if o["kind"] in RBAC_KINDS]
    assert sorted((o["kind"], o["metadata"]["name"]) for o in rbac) == sorted(
        (kind, name) for kind, _, name in BASE_OBJECTS if kind in RBAC_KINDS)
    await assert_rbac(cluster, rbac, CAN, CANNOT)


async def assert_rbac(cluster: Path, rbac: list[dict], can: list[tuple[str, ...]],
                      cannot: list[tuple[str, ...]]) -> None:
    """Apply ``rbac``; the API server then allows msm's account each of ``can`` and none of ``cannot``."""
    out = await run("apply", "--server-side", "-f", "-", kubeconfig=cluster, stdin=yaml.safe_dump_all(rbac))
    assert out.returncode == 0, out.stderr

    async def can_i(*check: str) -> subprocess.CompletedProcess[str]:
        # as admin (system:masters may impersonate): what the API server decides for msm's account
        return await run("auth", "can-i", *check, f"--as={SA}", kubeconfig=cluster)

    # the RBAC authorizer learns of new bindings from its informers: wait for the first yes
    deadline = time.monotonic() + 30
    while (first := await can_i(*can[0])).returncode != 0:
        assert first.returncode == 1 and first.stdout.strip() == "no", first.stderr
        assert time.monotonic() < deadline, "the ClusterRoleBinding never took effect"
        await asyncio.sleep(0.2)
    for check in can:
        out = await can_i(*check)
        assert (out.returncode, out.stdout.strip()) == (0, "yes"), (check, out.stderr)
    for check in cannot:
        out = await can_i(*check)
        assert (out.returncode, out.stdout.strip()) == (1, "no"), (check, out.stderr)
