"""Which kind of gateway an xDS client is, from what its node says.

msm serves two kinds: its own plain Envoy gateway (``envoy``, the default) and an Istio ingress
gateway (``istio-gateway``): Envoy run by Istio's pilot-agent in router mode, whose node id is
``router~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>`` and whose node metadata carries
``ISTIO_VERSION``. The kind only picks which of a publication's snapshots a stream gets; it grants
nothing (who may connect at all is the server's authentication, not the node's claim).
"""

from __future__ import annotations

from typing import Any

DEFAULT_KIND = "envoy"
ISTIO_GATEWAY = "istio-gateway"


def kind_of(node: Any) -> str:
    """``istio-gateway`` for an Istio router's node (id ``router~…`` with ``ISTIO_VERSION`` in its
    metadata), else ``envoy``."""
    if node is None or not str(node.id).startswith("router~"):
        return DEFAULT_KIND
    fields = node.metadata.fields if node.HasField("metadata") else {}
    return ISTIO_GATEWAY if "ISTIO_VERSION" in fields else DEFAULT_KIND
