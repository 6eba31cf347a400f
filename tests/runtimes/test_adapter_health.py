"""The adapter's runtimeStatus: a busy MLServer is still ready; a gone one is not."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from placement.adapters.mlserver import AdapterConfig, MLServerAdapter, MLServerBackend
from placement.local.ports import free_port
from placement.protos import model_runtime_pb2 as pb

RELEASE = "release"


async def fake_mlserver(mode: dict) -> tuple[web.AppRunner, int]:
    """MLServer's health endpoints; ``mode["health"]``: ok, no (503) or hang (until released)."""
    mode[RELEASE] = asyncio.Event()

    async def ready(_: web.Request) -> web.Response:
        if mode["health"] == "hang":
            await asyncio.wait_for(mode[RELEASE].wait(), 30)
        return web.Response(status=200 if mode["health"] == "ok" else 503)

    async def meta(_: web.Request) -> web.Response:
        return web.json_response({"name": "mlserver", "version": "1.7.1"})

    app = web.Application()
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2/health/live", ready)
    app.router.add_get("/v2", meta)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


async def test_backend_health_tells_busy_from_down() -> None:
    mode: dict = {"health": "ok"}
    runner, port = await fake_mlserver(mode)
    backend = MLServerBackend(f"http://127.0.0.1:{port}", None)
    await backend.start()
    try:
        assert await backend.health() == "ready"
        mode["health"] = "no"
        assert await backend.health() == "not ready"
        mode["health"] = "hang"
        assert await backend.health(timeout=0.3) == "busy"
        mode[RELEASE].set()
        await runner.cleanup()
        assert await backend.health(timeout=0.3) == "down"
    finally:
        mode[RELEASE].set()
        await backend.close()
        await runner.cleanup()


async def test_runtime_status_stays_ready_while_mlserver_is_busy(tmp_path: Path) -> None:
    mode: dict = {"health": "ok"}
    runner, port = await fake_mlserver(mode)
    adapter = MLServerAdapter(AdapterConfig(f"http://127.0.0.1:{port}", tmp_path))
    await adapter.backend.start()
    try:
        async def status() -> int:
            return (await adapter.runtimeStatus(pb.RuntimeStatusRequest(), None)).status

        assert await status() == pb.RuntimeStatusResponse.READY
        mode["health"] = "hang"  # a long inference holds MLServer: the health request waits
        assert await status() == pb.RuntimeStatusResponse.READY
        r = await adapter.runtimeStatus(pb.RuntimeStatusRequest(), None)
        assert r.runtimeVersion == "mlserver-1.7.1"
        mode["health"] = "no"  # it answers, and says it is not ready: believed
        assert await status() == pb.RuntimeStatusResponse.STARTING
        mode["health"] = "hang"  # busy after not ready: not ready
        assert await status() == pb.RuntimeStatusResponse.STARTING
    finally:
        mode[RELEASE].set()
        await adapter.backend.close()
        await runner.cleanup()
