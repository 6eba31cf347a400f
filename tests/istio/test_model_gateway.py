"""istio/model-gateway.yaml, rendered by the real istioctl (built by `make tools`): a dedicated
ingress gateway for models whose agent takes its configuration from msm's xDS Service (the one
deploy/ installs) while istiod stays its certificate authority."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from placement.local.apiserver import ISTIO_TOOLS, default_tools_dir, missing_tools
from placement.manifests.kube_names import (
    XDS_ROOT_CERT_KEY,
    XDS_ROOT_CONFIGMAP,
    XDS_SECURE_PORT,
    XDS_SERVICE,
    xds_service_names,
)

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "istio" / "model-gateway.yaml"


def istioctl() -> Path:
    bin_dir = default_tools_dir()
    missing = missing_tools(bin_dir, ISTIO_TOOLS)
    if missing:
        pytest.skip(f"Istio tests need {', '.join(missing)} in {bin_dir}: `make tools` builds them "
                    "(needs Go and the Go module proxy)")
    return bin_dir / "istioctl"


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    r = subprocess.run([str(istioctl()), "manifest", "generate", "-f", str(OVERLAY)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def one(docs: list[dict], kind: str, name: str) -> dict:
    [found] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


@pytest.fixture(scope="module")
def deploy_istio() -> list[dict]:
    kubectl = default_tools_dir() / "kubectl"
    r = subprocess.run([str(kubectl), "kustomize", str(ROOT / "deploy" / "istio")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def test_the_model_gateway_takes_its_configuration_from_msm_and_its_certificates_from_istiod(
        rendered: list[dict], deploy_istio: list[dict]) -> None:
    dep = one(rendered, "Deployment", "msm-model-gateway")
    pod = dep["spec"]["template"]
    proxy_config = yaml.safe_load(pod["metadata"]["annotations"]["proxy.istio.io/config"])
    # deploy/istio's Service, its TLS port: the name is what the agent checks msm's certificate for
    svc = one(deploy_istio, "Service", XDS_SERVICE)
    [port] = [p["port"] for p in svc["spec"]["ports"] if p["name"] == "grpc-xds-tls"]
    assert port == XDS_SECURE_PORT
    host = f"{XDS_SERVICE}.{svc['metadata']['namespace']}.svc"
    assert host in xds_service_names(svc["metadata"]["namespace"])
    assert proxy_config == {"discoveryAddress": f"{host}:{port}"}
    [agent] = pod["spec"]["containers"]
    assert agent["args"][:2] == ["proxy", "router"]  # pilot-agent running Envoy as a gateway
    env = {e["name"]: e.get("value") for e in agent["env"]}
    assert "istiod" in env["CA_ADDR"]  # certificates still come from istiod
    assert {8008, 8033} <= {p["containerPort"] for p in agent["ports"]}

    # it trusts msm's CA for xDS: the ConfigMap msm publishes, mounted where XDS_ROOT_CA points
    [vol] = [v for v in pod["spec"]["volumes"] if v.get("configMap", {}).get("name") == XDS_ROOT_CONFIGMAP]
    [mount] = [m for m in agent["volumeMounts"] if m["name"] == vol["name"]]
    assert env["XDS_ROOT_CA"] == f"{mount['mountPath']}/{XDS_ROOT_CERT_KEY}"
    # and msm serves the gateway's ServiceAccount, in the namespace msm publishes the CA to
    [c] = one(deploy_istio, "Deployment", "msm-controller")["spec"]["template"]["spec"]["containers"]
    flag = c["command"][c["command"].index("--istio-gateway") + 1]
    assert flag == f"{dep['metadata']['namespace']}/{pod['spec']['serviceAccountName']}"


def test_the_model_gateway_service_exposes_rest_and_grpc_by_name(rendered: list[dict]) -> None:
    svc = one(rendered, "Service", "msm-model-gateway")
    ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
    # Istio picks the protocol by the port name's prefix
    assert ports == {"http-models": 8008, "grpc-models": 8033}
    dep = one(rendered, "Deployment", "msm-model-gateway")
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()


def test_istioctl_validate_accepts_everything_under_istio() -> None:
    r = subprocess.run([str(istioctl()), "validate", "-f", str(OVERLAY.parent)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("command", [["manifest", "generate"], ["validate"]])
def test_a_misspelled_overlay_is_refused_by_istioctl(tmp_path: Path, command: list[str]) -> None:
    bad = yaml.safe_load(OVERLAY.read_text())
    bad["spec"]["components"]["ingressGateways"][0]["k8s"]["servise"] = {}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    r = subprocess.run([str(istioctl()), *command, "-f", str(path)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0 and "servise" in r.stderr + r.stdout


def test_an_istio_dev_cluster_says_which_of_istios_fixed_ports_is_taken(tmp_path: Path) -> None:
    import socket
    import sys

    from placement.local.ports import free_port

    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            holder.bind(("127.0.0.1", 15000))  # the gateway's Envoy admin port
            holder.listen()
        except OSError:
            pass  # already taken by something else: the same message is expected
        r = subprocess.run([sys.executable, "-m", "msm.cli", "dev-cluster", "up", "--istio",
                            "--state-dir", str(tmp_path / "state"), "--rest-port", str(free_port()),
                            "--grpc-port", str(free_port()), "--xds-port", str(free_port()),
                            "--admin-port", str(free_port())],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 1
    assert "127.0.0.1:15000" in r.stdout and "already in use" in r.stdout, r.stdout + r.stderr
    assert not (tmp_path / "state" / "apiserver").exists()  # it stopped before starting anything
