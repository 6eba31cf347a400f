"""``msm serve``: the xDS server driven by a placement file that it watches.

A file that fails to parse is reported and changes nothing: the last good routing keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from msm.xds_stack import XdsStack
from xds_server.mesh_view import MeshView
from xds_server.placement_file import PlacementFileError, load_placement_file
from xds_server.server import ServerTls
from xds_server.translate import GatewayOptions

log = logging.getLogger("msm.serve")


class PlacementFileServer:
    """Watches one placement file and publishes it to every connected Envoy."""

    def __init__(self, path: Path, options: GatewayOptions, *, poll_interval: float = 0.5,
                 gateway_token: str | None = None) -> None:
        self.path = path
        self.options = options
        self.poll_interval = poll_interval
        self.stack = XdsStack(options, self.status, gateway_token=gateway_token)
        self._file_errors = Counter("msm_placement_file_errors", "Placement file loads that failed",
                                    registry=self.stack.registry)
        self._watch_task: asyncio.Task[None] | None = None
        self._mtime: float | None = None
        self.last_error: str | None = None
        self.view = MeshView()

    async def start(self, xds_host: str, xds_port: int, admin_port: int | None,
                    tls: ServerTls | None = None) -> int:
        await self._reload()
        port = await self.stack.start_xds(xds_host, xds_port, tls)
        if admin_port is not None:
            await self.stack.start_admin(admin_port)
        self._watch_task = asyncio.create_task(self._watch(), name="placement-file-watch")
        return port

    async def stop(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            await asyncio.gather(self._watch_task, return_exceptions=True)
        await self.stack.stop()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                mtime = self.path.stat().st_mtime_ns
            except FileNotFoundError:
                continue
            if mtime != self._mtime:
                await self._reload()

    async def _reload(self) -> None:
        try:
            self._mtime = self.path.stat().st_mtime_ns
            view = await asyncio.to_thread(load_placement_file, self.path)
        except (PlacementFileError, OSError) as e:
            self.last_error = str(e)
            self._file_errors.inc()
            log.error("placement file rejected, still serving the last good one: %s", e)
            return
        self.last_error = None
        self.view = view
        version = await self.stack.publish(view)
        log.info("placement %s: %d models, snapshot %s", self.path, len(view.models), version)

    def status(self) -> dict[str, Any]:
        return {
            "placement_file": str(self.path),
            "last_error": self.last_error,
            "snapshot_version": self.stack.version,
            "models": sorted(self.view.models),
            "clients": self.stack.clients_status(),
            "time": time.time(),
        }
