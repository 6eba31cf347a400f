"""Envoy bootstraps: the ADS bootstrap a gateway starts with, and a fully static one for tests.

``render_bootstrap`` fills ``envoy/bootstrap.yaml``: node id, ADS (delta by default) to the msm
xDS server through a static cluster ``xds`` over HTTP/2, admin on 127.0.0.1 only.
``static_bootstrap`` inlines translated resources (RDS → inline routes, EDS → static endpoints)
so a real Envoy can load them without an xDS server: ``envoy --mode validate`` and benchmarks.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from string import Template
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from google.protobuf import json_format
from google.protobuf.message import Message

from xds_server import resource_types as rt
from xds_server.assets import envoy_asset
from xds_server.auth import GATEWAY_TOKEN_HEADER

# Per-cluster stats of the translated upstream clusters cost most of a cluster's memory in Envoy;
# routing, retries and outlier detection do not need them. Route stats keep upstream_rq_total
# per revision (placement/control/gateway_stats.py reads it).
TRIMMED_STATS_EXCLUSIONS: list[dict[str, Any]] = [
    {"prefix": "cluster.rev_"},
    {"prefix": "cluster.rt_"},
    {"safe_regex": {"regex": r"^vhost\.[^.]+\.route\..*\.upstream_rq_(time|timeout|per_try_timeout|retry.*|"
                             r"[0-9x]+|completed)$"}},
]


#: Envoy's internal listeners (the mirror listener, xds_server/translate/listeners.py) need this
#: bootstrap extension; Istio's gateway bootstrap has it too.
INTERNAL_LISTENER_EXTENSION: dict[str, Any] = {
    "name": "envoy.bootstrap.internal_listener",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"},
}


def stats_config(trim_stats: bool) -> dict[str, Any]:
    if not trim_stats:
        return {}
    return {"stats_matcher": {"exclusion_list": {"patterns": TRIMMED_STATS_EXCLUSIONS}}}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class XdsClientTls:
    """How a gateway reaches the xDS server over TLS: the CA that signed the server's certificate
    (``ca``), and the gateway's own certificate and key for mTLS (files Envoy reads)."""

    ca: str
    cert: str | None = None
    key: str | None = None
    sni: str | None = None

    def transport_socket(self) -> dict[str, Any]:
        common: dict[str, Any] = {"validation_context": {"trusted_ca": {"filename": self.ca}},
                                  "alpn_protocols": ["h2"]}
        if self.cert and self.key:
            common["tls_certificates"] = [{"certificate_chain": {"filename": self.cert},
                                           "private_key": {"filename": self.key}}]
        ctx: dict[str, Any] = {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": common}
        if self.sni:
            ctx["sni"] = self.sni
        return {"name": "envoy.transport_sockets.tls", "typed_config": ctx}


def render_bootstrap(node_id: str, xds_host: str, xds_port: int, admin_port: int,
                     cluster: str = "msm-gateway", *, delta: bool = True, trim_stats: bool = True,
                     gateway_token: str | None = None, xds_tls: XdsClientTls | None = None,
                     more_xds: tuple[tuple[str, int], ...] = ()) -> str:
    """The YAML bootstrap of a gateway that takes all its configuration from msm over ADS.

    ``more_xds``: other control-plane replicas (host, port) the ADS stream may go to when the
    first is away (every replica serves the same routes).

    With ``gateway_token`` the ADS stream carries it (gRPC initial metadata): an xDS server
    started with the same token serves no stream without it. The file then holds a secret.
    With ``xds_tls`` the gateway reaches the xDS server over TLS (mTLS with a certificate).
    """
    stats = stats_config(trim_stats)
    metadata = ""
    if gateway_token is not None:
        metadata = ("      initial_metadata:\n"
                    f"      - {{ key: {GATEWAY_TOKEN_HEADER}, value: {json.dumps(gateway_token)} }}")
    return Template(envoy_asset("bootstrap.yaml").read_text()).substitute(
        xds_metadata=metadata,
        xds_transport_socket=(f"    transport_socket: {json.dumps(xds_tls.transport_socket())}"
                              if xds_tls is not None else ""),
        node_id=node_id, cluster=cluster, admin_port=int(admin_port),
        xds_endpoints="\n".join(
            "        - endpoint:\n            address:\n"
            f"              socket_address: {{ address: {json.dumps(h)}, port_value: {int(p)} }}"
            for h, p in ((xds_host, xds_port), *more_xds)),
        ads_api_type="DELTA_GRPC" if delta else "GRPC",
        xds_cluster_type="STATIC" if _is_ip(xds_host) else "STRICT_DNS",
        stats_config=f"stats_config: {json.dumps(stats)}" if stats else "",
    )


def _inline_listener(listener: listener_pb2.Listener, routes: dict[str, Message],
                     scopes: dict[str, Message]) -> listener_pb2.Listener:
    out = listener_pb2.Listener()
    out.CopyFrom(listener)
    for chain in out.filter_chains:
        for f in chain.filters:
            if not f.typed_config.Is(hcm.HttpConnectionManager.DESCRIPTOR):
                continue
            m = hcm.HttpConnectionManager()
            f.typed_config.Unpack(m)
            if m.HasField("rds"):
                rc = routes[m.rds.route_config_name]
                m.route_config.CopyFrom(rc)
                m.route_config.ClearField("validate_clusters")
            elif m.HasField("scoped_routes") and m.scoped_routes.HasField("scoped_rds"):
                prefix = m.scoped_routes.name + "/"
                lst = m.scoped_routes.scoped_route_configurations_list
                lst.SetInParent()
                for name in sorted(n for n in scopes if n.startswith(prefix)):
                    s = lst.scoped_route_configurations.add()
                    s.CopyFrom(scopes[name])
                    s.ClearField("route_configuration_name")
                    s.route_configuration.CopyFrom(routes[scopes[name].route_configuration_name])
                    s.route_configuration.ClearField("validate_clusters")
                m.scoped_routes.ClearField("scoped_rds")
                if not lst.scoped_route_configurations:  # no model: a static list cannot be empty
                    m.route_config.name = m.scoped_routes.name
            f.typed_config.Pack(m, deterministic=True)
    return out


def static_bootstrap(resources: dict[str, dict[str, Message]], admin_port: int, *,
                     node_id: str = "msm-static", trim_stats: bool = True) -> dict[str, Any]:
    """A bootstrap (as a dict; dump it as JSON) with ``resources`` inlined as static resources."""
    routes = resources.get(rt.ROUTE, {})
    scopes = resources.get(rt.SCOPED_ROUTE, {})
    endpoints = resources.get(rt.ENDPOINT, {})
    clusters = []
    for c in resources.get(rt.CLUSTER, {}).values():
        static = cluster_pb2.Cluster()
        static.CopyFrom(c)
        if static.type == cluster_pb2.Cluster.EDS:
            static.type = cluster_pb2.Cluster.STATIC
            static.ClearField("eds_cluster_config")
            if c.name in endpoints:
                static.load_assignment.CopyFrom(endpoints[c.name])
            else:
                static.load_assignment.cluster_name = c.name
        clusters.append(json_format.MessageToDict(static))
    listeners = [json_format.MessageToDict(_inline_listener(lst, routes, scopes))
                 for lst in resources.get(rt.LISTENER, {}).values()]
    boot: dict[str, Any] = {
        "node": {"id": node_id, "cluster": "msm-gateway"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
        "bootstrap_extensions": [INTERNAL_LISTENER_EXTENSION],
    }
    if trim_stats:
        boot["stats_config"] = stats_config(True)
    return boot
