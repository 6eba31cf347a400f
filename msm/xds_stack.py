"""The one place that builds the xDS stack a process serves gateways with.

Metrics registry → snapshot cache → ADS server → snapshot publisher, plus the admin HTTP port
(/metrics, /status, /healthz). ``msm serve`` and the control plane both use it; it is also the
controller's :class:`placement.control.controller.ViewPublisher`.

``read_gateway_token(path)`` reads the secret a gateway must present (``msm up`` writes it).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from xds_server.admin_http import AdminServer
from xds_server.auth import Authenticator
from xds_server.cache import SnapshotCache
from xds_server.mesh_view import MeshView
from xds_server.publisher import SnapshotPublisher
from xds_server.server import ServerTls, XdsServer
from xds_server.translate import GatewayOptions
from xds_server.view_codec import view_to_dict

if TYPE_CHECKING:
    from placement.control.activator import Activator

#: A follower that has not polled for this long no longer counts (it is gone, or leads itself).
FOLLOWER_TTL_S = 3.0


def read_gateway_token(path: str | Path | None) -> str | None:
    """The gateway token in ``path`` (its first line), or None without a path."""
    if path is None:
        return None
    token = Path(path).read_text().strip()
    if not token:
        raise ValueError(f"{path}: the gateway token file is empty")
    return token


def write_gateway_token(path: Path) -> str:
    """A new random gateway token, written to ``path`` readable by its owner only."""
    token = secrets.token_urlsafe(32)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(token + "\n")
    return token


class XdsStack:
    def __init__(self, options: GatewayOptions, status: Callable[[], dict[str, Any]], *,
                 gateway_token: str | None = None, kinds: Mapping[str, GatewayOptions] | None = None,
                 expect_gateway: bool = False) -> None:
        self.options = options
        self.registry = CollectorRegistry()
        self.cache = SnapshotCache()
        self.xds = XdsServer(self.cache, registry=self.registry, gateway_token=gateway_token)
        # a gateway of its own (token, or Istio gateways to serve): one must hold a version for it to count
        self.expect_gateway = gateway_token is not None or expect_gateway
        self.publisher = SnapshotPublisher(self.cache, options, self.registry, kinds)
        self.admin = AdminServer(self.registry, status, self.mesh_view_json)
        self.xds_port: int | None = None
        self.last_view: MeshView | None = None
        self.serve_view = True  # whether /v1/mesh-view answers (the leader's routes, for followers)
        # replicas that follow this one: name -> (last poll, version their gateways hold, gateways)
        self.followers: dict[str, tuple[float, str, int]] = {}
        self._routed: frozenset[str] = frozenset()

    async def start_xds(self, host: str, port: int, tls: ServerTls | None = None) -> int:
        self.xds_port = await self.xds.start(host, port, tls=tls)
        return self.xds_port

    async def start_secure_xds(self, host: str, port: int, tls: ServerTls, auth: Authenticator) -> int:
        """One more xDS port, with TLS and its own authentication (Istio gateways' agents)."""
        return await self.xds.start(host, port, tls=tls, auth=auth)

    async def start_measure_port(self, host: str, port: int, tls: ServerTls, auth: Authenticator) -> int:
        """A port for gateways' measurements only (the access log service, no xDS)."""
        return await self.xds.start(host, port, tls=tls, auth=auth, ads=False)

    async def start_admin(self, port: int, host: str = "127.0.0.1") -> int:
        return await self.admin.start(host, port)

    async def stop(self, grace: float = 0.5) -> None:
        await self.admin.stop()
        await self.xds.stop(grace)

    # -- ViewPublisher -----------------------------------------------------------------------------
    @property
    def version(self) -> str | None:
        return self.publisher.version

    async def publish(self, view: MeshView, yield_loop: bool = False) -> str:
        version = await self.publisher.publish(view, yield_loop=yield_loop)
        self.last_view = view
        return version

    def mesh_view_json(self, query: Mapping[str, str]) -> dict[str, Any] | None:
        """The view this replica publishes, for a follower; its poll says what its gateways hold."""
        if not self.serve_view or self.last_view is None:
            return None
        replica = query.get("replica")
        if replica:
            try:
                clients = max(0, int(query.get("gateways") or 0))
            except ValueError:
                clients = 0
            self.followers[replica[:253]] = (time.monotonic(), query.get("held") or "", clients)
        return {"version": self.publisher.version, "view": view_to_dict(self.last_view)}

    def routed_models(self) -> frozenset[str]:
        """The models every gateway routes (the last view all of them hold), for status: an
        InferenceService is Ready only once a request for it reaches the gateway's route."""
        version = self.publisher.version
        if version is not None and self.last_view is not None and self.everyone_holds(version):
            self._routed = frozenset(self.last_view.models)
        return self._routed

    def all_clients_hold_current(self) -> bool:
        """Whether every xDS client of this replica holds its current snapshot."""
        return all(c["in_sync"] for c in self.clients_status())

    async def wait_for_ack(self, version: str, timeout: float) -> bool:
        # with a gateway token the process has a gateway of its own: while it is (re)connecting it
        # routes by its old configuration, so "no client connected" is not "every client has it"
        if not self.followers:
            return await self.xds.wait_for_ack(version, timeout=timeout, at_least_one=self.expect_gateway)
        # replicas follow this one: their gateways must hold it too (they say so when they poll)
        deadline = time.monotonic() + timeout
        if not await self.xds.wait_for_ack(version, timeout=timeout):
            return False
        while time.monotonic() < deadline:
            if self.everyone_holds(version):
                return True
            await asyncio.sleep(0.05)
        return self.everyone_holds(version)

    def everyone_holds(self, version: str) -> bool:
        """Whether every gateway, of this replica and of the replicas following it, holds
        ``version`` or a later one (followers not heard of for FOLLOWER_TTL_S are gone)."""
        seq = self.cache.seq_of(version)
        if seq is None:
            return False
        now = time.monotonic()
        for name, (seen, _, _) in list(self.followers.items()):
            if now - seen > FOLLOWER_TTL_S:
                del self.followers[name]
        gateways = len(self.xds.clients())
        for _, held, clients in self.followers.values():
            held_seq = self.cache.seq_of(held)
            if held_seq is None or held_seq < seq:
                return False
            gateways += clients
        return gateways > 0 or not self.expect_gateway

    # -- status ------------------------------------------------------------------------------------
    def gateway_status(self, activator: Activator) -> dict[str, Any]:
        """The ``gateway`` part of a control plane's /status: ports, snapshot, clients, activator."""
        return {
            "rest_port": self.options.rest_port, "grpc_port": self.options.grpc_port,
            "xds_port": self.xds_port, "snapshot_version": self.version, "clients": self.clients_status(),
            "activator": {"rest_port": activator.rest_port, "grpc_port": activator.grpc_port,
                          "activations": activator.activations, "direct_replays": activator.direct_replays},
        }

    def clients_status(self) -> list[dict[str, Any]]:
        """Each connected xDS client, and whether it holds the current snapshot."""
        version = self.publisher.version
        seq = self.cache.seq_of(version) if version is not None else None
        return [{**c.describe(), "in_sync": seq is not None and c.synced(seq)} for c in self.xds.clients()]
