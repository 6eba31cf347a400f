"""xDS type URLs msm serves, and the order in which they reach a client.

Envoy applies what arrives in order on one ADS stream. Clusters go first so that endpoints have
a cluster to land in, then endpoints (a cluster stays warming until its assignment arrives), then
listeners and route tables, which may name those clusters only once they exist.
"""

from __future__ import annotations

_PREFIX = "type.googleapis.com/"

CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
SCOPED_ROUTE = _PREFIX + "envoy.config.route.v3.ScopedRouteConfiguration"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
VIRTUAL_HOST = _PREFIX + "envoy.config.route.v3.VirtualHost"
SECRET = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"

#: the order of a push: what is named must exist before what names it.
ORDER: tuple[str, ...] = (SECRET, CLUSTER, ENDPOINT, LISTENER, SCOPED_ROUTE, ROUTE, VIRTUAL_HOST)

#: types whose routing tables name clusters; they move only once the clusters they name are warm.
ROUTING = frozenset({LISTENER, SCOPED_ROUTE, ROUTE, VIRTUAL_HOST})

#: types for which a state-of-the-world response always carries the client's whole state.
SOTW_FULL_STATE = frozenset({LISTENER, CLUSTER, SCOPED_ROUTE})

SHORT_NAMES: dict[str, str] = {
    CLUSTER: "cds", ENDPOINT: "eds", LISTENER: "lds", SCOPED_ROUTE: "srds", ROUTE: "rds",
    VIRTUAL_HOST: "vhds", SECRET: "sds",
}


def short(type_url: str) -> str:
    """A metric label for a type URL: ``cds``, ``eds`` …, or the message name for others."""
    return SHORT_NAMES.get(type_url, type_url.rsplit(".", 1)[-1])


def order_key(type_url: str) -> int:
    try:
        return ORDER.index(type_url)
    except ValueError:
        return len(ORDER)
