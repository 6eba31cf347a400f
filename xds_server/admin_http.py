"""The control plane's own HTTP port: /metrics (Prometheus), /status (JSON), /healthz, and
/v1/mesh-view (the routes this replica publishes, for the replicas that follow it)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class AdminServer:
    def __init__(self, registry: CollectorRegistry, status: Callable[[], dict[str, Any]],
                 mesh_view: Callable[[Mapping[str, str]], dict[str, Any] | None] | None = None) -> None:
        self._registry = registry
        self._status = status
        self._mesh_view = mesh_view
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/status", self._status_handler)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/v1/mesh-view", self._mesh_view_handler)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _status_handler(self, _: web.Request) -> web.Response:
        return web.Response(text=json.dumps(self._status(), indent=2, default=str),
                            content_type="application/json")

    async def _mesh_view_handler(self, request: web.Request) -> web.Response:
        view = self._mesh_view(request.query) if self._mesh_view is not None else None
        if view is None:
            return web.Response(status=404, text="no mesh view published here\n")
        return web.Response(text=json.dumps(view), content_type="application/json")

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")
