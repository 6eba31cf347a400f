"""istio/model-gateway.yaml, rendered by the real istioctl (built by `make tools`): a dedicated
ingress gateway for models whose agent takes its configuration from msm's xDS Service (the one
deploy/ installs) while istiod stays its certificate authority."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from placement.local.apiserver import ISTIO_TOOLS, default_tools_dir, missing_tools

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


def msm_xds_address() -> tuple[str, int]:
    """Where deploy/ serves msm's xDS: the Service msm-xds, its namespace and port."""
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / "base" / "services.yaml").read_text()) if d]
    svc = one(docs, "Service", "msm-xds")
    ns = yaml.safe_load((ROOT / "deploy" / "base" / "namespace.yaml").read_text())["metadata"]["name"]
    [port] = [p["port"] for p in svc["spec"]["ports"]]
    return f"{svc['metadata'].get('namespace', ns)}", port


def test_the_model_gateway_takes_its_configuration_from_msm_and_its_certificates_from_istiod(
        rendered: list[dict]) -> None:
    dep = one(rendered, "Deployment", "msm-model-gateway")
    pod = dep["spec"]["template"]
    proxy_config = yaml.safe_load(pod["metadata"]["annotations"]["proxy.istio.io/config"])
    ns, port = msm_xds_address()
    assert proxy_config == {"discoveryAddress": f"msm-xds.{ns}.svc:{port}"}  # deploy/'s Service
    [agent] = pod["spec"]["containers"]
    assert agent["args"][:2] == ["proxy", "router"]  # pilot-agent running Envoy as a gateway
    env = {e["name"]: e.get("value") for e in agent["env"]}
    assert "istiod" in env["CA_ADDR"]  # certificates still come from istiod
    assert {8008, 8033} <= {p["containerPort"] for p in agent["ports"]}


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
