"""Prometheus metrics of the xDS server."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class XdsMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        reg = registry if registry is not None else CollectorRegistry()
        self.registry = reg
        self.clients = Gauge("msm_xds_connected_clients", "ADS streams open", ["variant"], registry=reg)
        self.streams = Counter("msm_xds_streams", "ADS streams opened", ["variant"], registry=reg)
        self.responses = Counter("msm_xds_responses", "Discovery responses sent (pushes)",
                                 ["type", "variant"], registry=reg)
        self.response_bytes = Counter("msm_xds_response_bytes", "Bytes of discovery responses sent",
                                      ["type", "variant"], registry=reg)
        self.resources_sent = Counter("msm_xds_resources_sent", "Resources carried by responses",
                                      ["type", "variant"], registry=reg)
        self.acks = Counter("msm_xds_acks", "Responses a client accepted", ["type"], registry=reg)
        self.nacks = Counter("msm_xds_nacks", "Responses a client rejected (error_detail set)", ["type"],
                             registry=reg)
        self.refused = Counter("msm_xds_refused_streams", "ADS streams refused (no valid gateway token)",
                               ["variant"], registry=reg)
        self.stale = Counter("msm_xds_stale_requests", "Requests ignored because their nonce was stale",
                             ["type"], registry=reg)
        self.snapshot_resources = Gauge("msm_xds_snapshot_resources", "Resources in the current snapshot",
                                        ["type"], registry=reg)
        self.snapshots = Counter("msm_xds_snapshots", "Snapshots published", registry=reg)
