"""Envoy's own verdict on a configuration: ``envoy --mode validate`` on a static bootstrap."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xds_server.envoy_process import envoy_binary

# The upstream-TLS layout names an SDS cluster the gateway's bootstrap would hold; a static
# bootstrap must carry one for Envoy to accept the references to it.
SDS_CLUSTER = {
    "name": "sds-grpc", "type": "STATIC", "connect_timeout": "1s",
    "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}},
    "load_assignment": {"cluster_name": "sds-grpc", "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"pipe": {"path": "/tmp/msm-test-sds.sock"}}}}]}]},
}


def write_static(path: Path, boot: dict[str, Any], upstream_tls: bool) -> Path:
    """``boot`` as JSON at ``path``, with the SDS cluster when the gateway uses upstream TLS."""
    if upstream_tls:
        boot["static_resources"]["clusters"].append(SDS_CLUSTER)
    path.write_text(json.dumps(boot))
    return path


def validate_command(path: Path) -> list[str]:
    return [envoy_binary(), "--mode", "validate", "-c", str(path), "-l", "error"]
