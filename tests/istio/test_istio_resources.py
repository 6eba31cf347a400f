"""The Istio resources under istio/ against Istio's own CRD schemas: the CRDs the real istioctl
installs (rendered by `istioctl manifest generate`), served by a real kube-apiserver, which
validates a server-side dry run; and `istioctl validate`."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import yaml
from kube_env import api_client, require_tools
from kubernetes import client

from placement.local.apiserver import ISTIO_TOOLS, ApiServer, missing_tools

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]
RESOURCES = ROOT / "istio" / "runtime-mtls.yaml"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def istio_api(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[ApiServer, Path]]:
    bin_dir = require_tools()
    missing = missing_tools(bin_dir, ISTIO_TOOLS)
    if missing:
        pytest.skip(f"Istio tests need {', '.join(missing)} in {bin_dir}: `make tools` builds them")
    rendered = (await asyncio.to_thread(
        subprocess.run, [str(bin_dir / "istioctl"), "manifest", "generate", "-f",
                         str(ROOT / "istio" / "model-gateway.yaml")],
        capture_output=True, text=True, timeout=120, check=True)).stdout
    crds = [d for d in yaml.safe_load_all(rendered) if d and d.get("kind") == "CustomResourceDefinition"]
    assert {c["spec"]["names"]["kind"] for c in crds} >= {"PeerAuthentication", "AuthorizationPolicy"}
    server = ApiServer(tmp_path_factory.mktemp("istio-api"), bin_dir)
    await server.start()
    try:
        await asyncio.to_thread(install, server, crds)
        kubeconfig = server.state_dir / "kubeconfig"
        yield server, kubeconfig
    finally:
        await server.stop()


def install(server: ApiServer, crds: list[dict]) -> None:
    with api_client(server) as api:
        ext = client.ApiextensionsV1Api(api)
        for crd in crds:
            ext.create_custom_resource_definition(crd)
        client.CoreV1Api(api).create_namespace({"metadata": {"name": "modelmesh-serving"}})
        deadline = time.monotonic() + 60
        names = {c["metadata"]["name"] for c in crds}
        while {c.metadata.name for c in ext.list_custom_resource_definition().items
               if any(x.type == "Established" and x.status == "True" for x in c.status.conditions or [])
               } < names:
            assert time.monotonic() < deadline, "Istio's CRDs not established"
            time.sleep(0.2)


def dry_run(bin_dir: Path, kubeconfig: Path, text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(bin_dir / "kubectl"), f"--kubeconfig={kubeconfig}", "apply", "--server-side",
                           "--dry-run=server", "-f", "-"], input=text, capture_output=True, text=True,
                          timeout=60)


async def test_the_runtime_mtls_policies_are_valid_per_istios_crds(istio_api) -> None:
    _, kubeconfig = istio_api
    out = dry_run(require_tools(), kubeconfig, RESOURCES.read_text())
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("serverside-applied (server dry run)") == 2, out.stdout


async def test_istios_crds_refuse_a_broken_policy(istio_api) -> None:
    _, kubeconfig = istio_api
    docs = list(yaml.safe_load_all(RESOURCES.read_text()))
    docs[0]["spec"]["mtls"]["mode"] = "STRICTEST"  # not one of the enum's values
    out = dry_run(require_tools(), kubeconfig, yaml.safe_dump_all(docs))
    assert out.returncode != 0 and "STRICTEST" in out.stderr, out.stderr


async def test_the_policies_name_what_msm_and_the_overlay_use() -> None:
    from placement.manifests.kube_names import ADAPTER_PORT, LABEL_MODELMESH_SERVICE, MODELMESH_SERVICE

    peer, authz = yaml.safe_load_all(RESOURCES.read_text())
    for doc in (peer, authz):
        assert doc["spec"]["selector"]["matchLabels"] == {LABEL_MODELMESH_SERVICE: MODELMESH_SERVICE}
    assert list(peer["spec"]["portLevelMtls"]) == [str(ADAPTER_PORT)]
    overlay = yaml.safe_load((ROOT / "istio" / "model-gateway.yaml").read_text())
    gateway = overlay["spec"]["components"]["ingressGateways"][0]
    principal = f"cluster.local/ns/{gateway['namespace']}/sa/{gateway['name']}-service-account"
    assert authz["spec"]["rules"][0]["from"][0]["source"]["principals"] == [principal]
    assert authz["spec"]["rules"][1]["to"][0]["operation"]["ports"] == [str(ADAPTER_PORT)]
