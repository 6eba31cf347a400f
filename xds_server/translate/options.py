"""Gateway options: everything about the Envoy gateway that is not in the mesh view."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from xds_server.mesh_view import ActivatorEndpoint

ClusterLayout = Literal["per_revision", "subset"]
RouteLayout = Literal["scoped", "flat"]


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    """TLS to the runtimes with certificates from SDS (an Istio agent's ``sds-grpc`` cluster)."""

    sds_cluster: str = "sds-grpc"
    cert_secret: str = "default"  # workload certificate + key
    validation_secret: str = "ROOTCA"  # trust bundle that validates the runtime's certificate
    sni: str | None = None
    alpn_h2: bool = True  # offer "h2" on the gRPC clusters
    #: Istio mTLS: the runtime's certificate must be a SPIFFE identity of this trust domain in the
    #: runtime's namespace (``spiffe://<td>/ns/<ns>/``; the namespace of a ``<ns>/<runtime>`` pool),
    #: and the ALPN is Istio's (``istio-http/1.1`` for REST, ``istio-h2`` for gRPC), which a
    #: sidecar's inbound mTLS filter chains match on.
    trust_domain: str | None = None
    #: Istio's auto mTLS: TLS only to copies whose instance takes it (``Copy.mesh_tls``: a pod with
    #: Istio's sidecar), plaintext to the others; else TLS to every copy.
    auto: bool = False


@dataclass(frozen=True, slots=True)
class MeasureTls:
    """How an Istio gateway reaches msm's access log service: mutual TLS with the gateway's
    workload certificate (SDS ``default`` from its agent) to msm's measure port, whose serving
    certificate (msm's own CA, ``ca_pem``) must name ``server_name``."""

    ca_pem: str
    server_name: str
    port: int
    sds_cluster: str = "sds-grpc"
    cert_secret: str = "default"


@dataclass(frozen=True, slots=True)
class GatewayOptions:
    """How the translated Envoy gateway listens, routes, retries and lays out its clusters.

    ``cluster_layout``:
      - ``subset``: one REST and one gRPC cluster per runtime (optionally split in
        ``subset_shards`` by a hash of the model name); endpoints are runtime instances whose
        metadata lists the revisions they hold, routes pick a revision with ``metadata_match``.
        Envoy's memory grows with instances, not models (see docs/gateway.md for the numbers).
      - ``per_revision``: one REST and one gRPC cluster per revision, EDS endpoints = its copies.

    ``route_layout``:
      - ``scoped``: Scoped RDS keyed on the model name; one small RouteConfiguration per model
        and listener, so a model change resends only that model's routes and matching is a hash
        lookup;
      - ``flat``: one RouteConfiguration per listener holding every model.
    """

    rest_port: int = 8008
    grpc_port: int = 8033
    listen_address: str = "127.0.0.1"
    cluster_layout: ClusterLayout = "subset"
    # 64 keeps a one-model change at ~40 KB of endpoints at 10k models (bench/xds_scale.py)
    subset_shards: int = 64
    route_layout: RouteLayout = "scoped"
    timeout_s: float = 60.0  # per request, retries included; 0 disables
    retries: int = 2
    per_try_timeout_s: float | None = None
    connect_timeout_s: float = 1.0
    # outlier detection: a copy that keeps failing at the connection level is skipped for a while
    outlier_consecutive_gateway_failure: int = 2
    outlier_interval_s: float = 1.0
    outlier_base_ejection_s: float = 10.0
    outlier_max_ejection_percent: int = 100
    route_stats: bool = True  # Route.stat_prefix "msm_<revision>" (read by placement/gateway_stats)
    max_request_bytes: int = 64 * 1024 * 1024  # request bodies buffered for retries and transcoding
    upstream_tls: UpstreamTls | None = None
    ads: bool = True  # RDS/EDS/SRDS through ADS (the bootstrap's xds cluster)
    #: the gateway reports what it measured on the routes of revisions in an automated rollout
    #: (``Revision.measured``) to msm's access log service through this cluster, with
    #: ``measure_token`` as its gateway token; None: no reports. ``msm_measure``
    #: (names.MEASURE_CLUSTER) is made from the view's ``measure`` endpoint (the deciding control
    #: plane); another name must be a cluster of the gateway's bootstrap
    measure_cluster: str | None = None
    measure_token: str | None = None
    #: reports go over mutual TLS to this port of the deciding control plane (Istio gateways)
    measure_tls: MeasureTls | None = None
    #: the activator replays a held request to the copy whose load returned, through routes that
    #: take its secret token and the copy's address, without waiting for a view that routes to the
    #: copy; off: every replay waits for that view and the gateway's ACK
    direct_replay: bool = True

    def direct_replays(self, activator: ActivatorEndpoint | None) -> bool:
        """Whether the gateway takes ``activator``'s direct replays (direct routes and clusters)."""
        return self.direct_replay and activator is not None and bool(activator.replay_token)

    def __post_init__(self) -> None:
        if self.cluster_layout not in ("per_revision", "subset"):
            raise ValueError(f"cluster_layout must be per_revision or subset, not {self.cluster_layout!r}")
        if self.route_layout not in ("scoped", "flat"):
            raise ValueError(f"route_layout must be scoped or flat, not {self.route_layout!r}")
        if self.subset_shards < 1:
            raise ValueError("subset_shards must be >= 1")
        if self.retries < 0:
            raise ValueError("retries must be >= 0")
        for name in ("rest_port", "grpc_port"):
            if not 0 < getattr(self, name) < 65536:
                raise ValueError(f"{name} must be a port number (1-65535), not {getattr(self, name)}")
        if self.rest_port == self.grpc_port:
            raise ValueError(f"the REST and gRPC ports must differ (both {self.rest_port})")
        try:
            ipaddress.ip_address(self.listen_address)
        except ValueError:
            raise ValueError(f"listen_address must be an IP address, not {self.listen_address!r}") from None
        if self.connect_timeout_s <= 0 or self.timeout_s < 0:
            raise ValueError("connect_timeout_s must be > 0 and timeout_s >= 0 (0: no timeout)")
        if self.per_try_timeout_s is not None and self.per_try_timeout_s <= 0:
            raise ValueError("per_try_timeout_s must be > 0 (or unset)")
        if not 0 <= self.outlier_max_ejection_percent <= 100:
            raise ValueError("outlier_max_ejection_percent must be between 0 and 100")
        if self.max_request_bytes < 1:
            raise ValueError("max_request_bytes must be >= 1")
