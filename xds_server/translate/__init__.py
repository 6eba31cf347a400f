"""Translation: a :class:`MeshView` → Envoy resources, as pure functions with no I/O.

``translate(view, opts)`` returns ``{type_url: {resource name: message}}`` with listeners,
route configurations (plus scoped route configurations with Scoped RDS), clusters and their
ClusterLoadAssignments.
"""

from __future__ import annotations

from google.protobuf.message import Message

from xds_server import resource_types as rt
from xds_server.mesh_view import MeshView
from xds_server.translate.clusters import build_clusters
from xds_server.translate.listeners import build_listeners
from xds_server.translate.options import GatewayOptions, UpstreamTls
from xds_server.translate.routes import build_routes

__all__ = ["GatewayOptions", "UpstreamTls", "translate"]


def translate(view: MeshView, opts: GatewayOptions | None = None) -> dict[str, dict[str, Message]]:
    """Everything the gateway needs to route ``view``, keyed by type URL then resource name."""
    opts = opts or GatewayOptions()
    clusters, endpoints = build_clusters(view, opts)
    route_configs, scopes = build_routes(view, opts)
    out: dict[str, dict[str, Message]] = {
        rt.LISTENER: dict(build_listeners(opts)),
        rt.ROUTE: dict(route_configs),
        rt.CLUSTER: dict(clusters),
        rt.ENDPOINT: dict(endpoints),
    }
    if opts.route_layout == "scoped":
        out[rt.SCOPED_ROUTE] = dict(scopes)
    return out
