"""Helpers of the Kubernetes-mode tests: the real etcd + kube-apiserver built by `make tools`.

Without the binaries these tests skip and say why; in CI (MSM_STRICT_SKIPS=1) that is a failure,
since `make test` builds them first.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kubernetes import client, config

from placement.local.apiserver import ApiServer, default_tools_dir, missing_tools

CRDS = Path(__file__).resolve().parents[2] / "placement" / "manifests" / "crds"


def require_tools() -> Path:
    bin_dir = default_tools_dir()
    missing = missing_tools(bin_dir)
    if missing:
        pytest.skip(f"Kubernetes tests need {', '.join(missing)} in {bin_dir}: `make tools` builds them "
                    "(needs Go and the Go module proxy)")
    return bin_dir


def api_client(server: ApiServer, token: str | None = None) -> client.ApiClient:
    path = server.state_dir / f"kubeconfig-{token or 'admin'}"
    path.write_text(server.kubeconfig(token))
    return config.new_client_from_config(str(path))


def install_kserve_crds(api: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api)
    for f in sorted(CRDS.glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                ext.create_custom_resource_definition(doc)
    import time

    deadline = time.monotonic() + 60
    names = {"inferenceservices", "servingruntimes", "clusterservingruntimes"}
    while True:
        crds = ext.list_custom_resource_definition().items
        established = {c.spec.names.plural for c in crds
                       if any(cond.type == "Established" and cond.status == "True"
                              for cond in (c.status.conditions or []))}
        if names <= established:
            return
        assert time.monotonic() < deadline, f"CRDs not established: {names - established}"
        time.sleep(0.1)
