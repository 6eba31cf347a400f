"""The gateway driven by msm's ADS server: placement changes and rejected resources.

A real Envoy bootstrapped with ``render_bootstrap`` (delta ADS) takes all its routing from the
xDS server; backends on loopback answer which copy served each request.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from placement.control.controller import UNLOAD_GRACE_S

sys.path.insert(0, str(Path(__file__).resolve().parent))
server_mod = pytest.importorskip("xds_server.server")

from backends import free_port, running_copies  # noqa: E402

from xds_server.bootstrap import render_bootstrap  # noqa: E402
from xds_server.cache import SnapshotCache  # noqa: E402
from xds_server.envoy_process import EnvoyProcess  # noqa: E402
from xds_server.mesh_view import Destination, HeaderMatch, MeshView, Model, Revision, RouteRule  # noqa: E402
from xds_server.snapshot import Snapshot  # noqa: E402
from xds_server.translate import GatewayOptions, translate  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
DATA_HEADERS = {"x-msm-body": "data"}


class AdsGateway:
    def __init__(self, tmp_path: Path, delta: bool = True, **options) -> None:
        self.tmp_path = tmp_path
        self.delta = delta
        self.opts = GatewayOptions(rest_port=free_port(), grpc_port=free_port(), **options)
        self.cache = SnapshotCache()
        self.server = server_mod.XdsServer(self.cache)
        self.envoy: EnvoyProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.opts.rest_port}"

    async def publish(self, view: MeshView, yield_loop: bool = False) -> str:
        snap = Snapshot.build(translate(view, self.opts))
        self.cache.publish(snap)
        return snap.version

    async def start(self, view: MeshView) -> str:
        version = await self.publish(view)
        port = await self.server.start("127.0.0.1", 0)
        admin = free_port()
        boot = self.tmp_path / "bootstrap.yaml"
        boot.write_text(render_bootstrap(node_id="test-gw", xds_host="127.0.0.1", xds_port=port,
                                         admin_port=admin, delta=self.delta))
        self.envoy = EnvoyProcess(boot, admin, self.tmp_path / "envoy.log")
        await self.envoy.start()
        await asyncio.wait_for(self.server.wait_for_ack(version), 20)
        return version

    async def stop(self) -> None:
        if self.envoy is not None:
            await self.envoy.stop()
        await self.server.stop()

    async def rejected_updates(self) -> int:
        assert self.envoy is not None
        stats = json.loads(await self.envoy.get("/stats?format=json&filter=update_rejected$"))
        return sum(int(s.get("value", 0)) for s in stats.get("stats", []))


async def wait_serving(session: aiohttp.ClientSession, url: str, copy: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            async with session.get(url) as r:
                if r.status == 200 and (await r.json())["copy"] == copy:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} not served by {copy}")


@pytest.fixture
async def copies():
    async with running_copies(2) as started:
        yield started


@pytest.mark.parametrize("layout", ["subset", "per_revision"])
@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
async def test_placement_change_moves_traffic_without_a_failed_request(tmp_path, copies, layout, delta):
    c0, c1 = copies
    gw = AdsGateway(tmp_path, delta=delta, cluster_layout=layout)
    await gw.start(MeshView.of([Model("m", (Revision("m__1", copies=(c0.as_copy(),)),))]))
    statuses: Counter = Counter()
    served: Counter = Counter()
    stop = asyncio.Event()
    try:
        async with aiohttp.ClientSession() as s:
            await wait_serving(s, f"{gw.url}/v2/models/m/ready", "c0")

            async def traffic() -> None:
                while not stop.is_set():
                    async with s.post(f"{gw.url}/v2/models/m/infer", data=b"{}", headers=DATA_HEADERS) as r:
                        statuses[r.status] += 1
                        if r.status == 200:
                            served[(await r.json())["copy"]] += 1

            workers = [asyncio.create_task(traffic()) for _ in range(4)]
            await asyncio.sleep(0.3)
            # a new revision on another copy (a rollout); the old copy stays until Envoy ACKs
            v2 = await gw.publish(MeshView.of([Model("m", (Revision("m__2", copies=(c1.as_copy(),)),))]))
            await asyncio.wait_for(gw.server.wait_for_ack(v2), 20)
            before_unload = served["c1"]
            # the old copy unloads only after the ACK and the controller's unload grace: an ACK
            # says the main thread has the routes, a worker may still start a request on the old
            # ones for a moment (placement/control/controller.py, unload_grace_s)
            await asyncio.sleep(UNLOAD_GRACE_S)
            await c0.kill()
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*workers)
        assert set(statuses) == {200}, statuses
        assert served["c0"] > 0 and served["c1"] > before_unload
    finally:
        stop.set()
        await gw.stop()


async def test_a_rejected_resource_is_nacked_and_the_previous_routing_keeps_working(tmp_path, copies):
    c0, c1 = copies
    gw = AdsGateway(tmp_path)
    await gw.start(MeshView.of([Model("m", (Revision("m__1", copies=(c0.as_copy(),)),))]))
    try:
        async with aiohttp.ClientSession() as s:
            await wait_serving(s, f"{gw.url}/v2/models/m/ready", "c0")
            assert await gw.rejected_updates() == 0
            revs = (Revision("m__1", copies=(c0.as_copy(),)), Revision("m__2", copies=(c1.as_copy(),)))
            bad = MeshView.of([Model("m", revs,
                                     rules=(RouteRule((Destination("m__2"),),
                                                      headers=(HeaderMatch("x-canary", regex="(["),)),
                                            RouteRule((Destination("m__2"),))))])
            await gw.publish(bad)
            deadline = time.monotonic() + 20
            while await gw.rejected_updates() == 0:
                assert time.monotonic() < deadline, "Envoy did not reject the invalid regex"
                await asyncio.sleep(0.1)
            for _ in range(20):
                async with s.get(f"{gw.url}/v2/models/m/ready") as r:
                    assert r.status == 200
                    assert (await r.json())["path"] == "/v2/models/m__1/ready"
            # a good snapshot afterwards is taken
            good = await gw.publish(MeshView.of([Model("m", (Revision("m__2", copies=(c1.as_copy(),)),))]))
            await asyncio.wait_for(gw.server.wait_for_ack(good), 20)
            await wait_serving(s, f"{gw.url}/v2/models/m/ready", "c1")
    finally:
        await gw.stop()
