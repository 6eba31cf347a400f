"""The gateway reports what it measured on the routes of revisions in a rollout: a real Envoy,
configured over ADS, streams access log entries of those routes (and no others) to msm's xDS
server, which turns them into measurements per revision."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
import grpc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backends import DATA_BODY, DATA_HEADERS, StaticGateway, grpc_infer

from xds_server.access_log import Measurement
from xds_server.mesh_view import Destination, MeshView, Model, Revision, RouteRule

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


async def test_measured_routes_report_each_request_with_its_outcome(tmp_path, copies) -> None:
    c0, c1, _ = copies
    c1.rest.fail = "503"
    c1.grpc.fail = grpc.StatusCode.INTERNAL
    view = MeshView.of([
        Model("m", (Revision("m__1", copies=(c0.as_copy(),), measured=True),
                    Revision("m__2", copies=(c1.as_copy(),), measured=True)),
              rules=(RouteRule((Destination("m__1", 50), Destination("m__2", 50))),)),
        Model("plain", (Revision("plain__1", copies=(c0.as_copy(),)),)),
    ])
    gw = StaticGateway(tmp_path, view, source="ads", measure_cluster="xds")
    got: list[Measurement] = []
    arrived = asyncio.Event()
    gw_started = await gw.start_with(lambda xds: setattr(xds, "on_measurements", lambda b: (got.extend(b),
                                                                                         arrived.set())))
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(20):
                async with s.post(f"{gw.rest_url}/v2/models/m/infer", data=DATA_BODY, headers=DATA_HEADERS):
                    pass
                async with s.get(f"{gw.rest_url}/v2/models/plain/ready"):
                    pass
        for _ in range(20):
            await grpc_infer(gw.grpc_target, "m")
        async with asyncio.timeout(20):
            while len(got) < 40:
                arrived.clear()
                await arrived.wait()
        await asyncio.sleep(0.5)  # a late report of a route that must not report would show now
        # 20 REST and 20 gRPC requests to m, each reported once; the 20 to `plain` never
        assert len(got) == 40 and {m.revision for m in got} == {"m__1", "m__2"}
        assert all(m.failed for m in got if m.revision == "m__2")  # REST 503, gRPC INTERNAL
        assert not any(m.failed for m in got if m.revision == "m__1")
        assert all(0 <= m.latency_s < 5 for m in got)
        assert gw_started is gw
    finally:
        await gw.stop()
