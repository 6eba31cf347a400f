"""The one place that builds the xDS stack a process serves gateways with.

Metrics registry → snapshot cache → ADS server → snapshot publisher, plus the admin HTTP port
(/metrics, /status, /healthz). ``msm serve`` and the control plane both use it; it is also the
controller's :class:`placement.control.controller.ViewPublisher`.

``read_gateway_token(path)`` reads the secret a gateway must present (``msm up`` writes it).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from xds_server.admin_http import AdminServer
from xds_server.cache import SnapshotCache
from xds_server.mesh_view import MeshView
from xds_server.publisher import SnapshotPublisher
from xds_server.server import ServerTls, XdsServer
from xds_server.translate import GatewayOptions


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
                 gateway_token: str | None = None) -> None:
        self.options = options
        self.registry = CollectorRegistry()
        self.cache = SnapshotCache()
        self.xds = XdsServer(self.cache, registry=self.registry, gateway_token=gateway_token)
        self.expect_gateway = gateway_token is not None
        self.publisher = SnapshotPublisher(self.cache, options, self.registry)
        self.admin = AdminServer(self.registry, status)
        self.xds_port: int | None = None

    async def start_xds(self, host: str, port: int, tls: ServerTls | None = None) -> int:
        self.xds_port = await self.xds.start(host, port, tls=tls)
        return self.xds_port

    async def start_admin(self, port: int, host: str = "127.0.0.1") -> int:
        return await self.admin.start(host, port)

    async def stop(self, grace: float = 0.5) -> None:
        await self.admin.stop()
        await self.xds.stop(grace)

    # -- ViewPublisher -----------------------------------------------------------------------------
    @property
    def version(self) -> str | None:
        return self.publisher.version

    async def publish(self, view: MeshView) -> str:
        return await self.publisher.publish(view)

    async def wait_for_ack(self, version: str, timeout: float) -> bool:
        # with a gateway token the process has a gateway of its own: while it is (re)connecting it
        # routes by its old configuration, so "no client connected" is not "every client has it"
        return await self.xds.wait_for_ack(version, timeout=timeout, at_least_one=self.expect_gateway)

    # -- status ------------------------------------------------------------------------------------
    def clients_status(self) -> list[dict[str, Any]]:
        """Each connected xDS client, and whether it holds the current snapshot."""
        version = self.publisher.version
        seq = self.cache.seq_of(version) if version is not None else None
        return [{**c.describe(), "in_sync": seq is not None and c.synced(seq)} for c in self.xds.clients()]
