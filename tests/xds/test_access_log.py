"""msm's access log service: only a gateway with the token may report, and entries become
measurements of revisions (or nothing)."""

from __future__ import annotations

import grpc
import pytest
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from google.protobuf import duration_pb2, wrappers_pb2

from xds_server.access_log import Measurement, measurement
from xds_server.cache import SnapshotCache
from xds_server.server import XdsServer


def entry(route: str, code: int = 200, grpc_status: str | None = None, trailer: bool = True,
          ms: int = 12) -> accesslog_pb2.HTTPAccessLogEntry:
    e = accesslog_pb2.HTTPAccessLogEntry()
    e.common_properties.route_name = route
    e.common_properties.duration.CopyFrom(duration_pb2.Duration(nanos=ms * 1_000_000))
    e.response.response_code.CopyFrom(wrappers_pb2.UInt32Value(value=code))
    if grpc_status is not None:
        where = e.response.response_trailers if trailer else e.response.response_headers
        where["grpc-status"] = grpc_status
    return e


@pytest.mark.parametrize("e, expected", [
    (entry("m/0/infer/m__2"), Measurement("m__2", False, 0.012)),
    (entry("m/0/body/m__2/bucket5000", code=503), Measurement("m__2", True, 0.012)),
    (entry("m/1/grpc/m__1/pinned", grpc_status="13"), Measurement("m__1", True, 0.012)),
    # a trailers-only answer carries its status in the headers
    (entry("m/1/grpc/m__1", grpc_status="14", trailer=False), Measurement("m__1", True, 0.012)),
    (entry("m/1/grpc/m__1", grpc_status="3"), Measurement("m__1", False, 0.012)),  # the client's mistake
    (entry("m/1/other/m__1", code=404), Measurement("m__1", False, 0.012)),
    (entry("m/1/other/m__1", code=0), Measurement("m__1", True, 0.012)),  # no answer at all
    (entry(""), None),
    (entry("not-a-route-of-ours"), None),
])
def test_an_entry_is_a_measurement_of_the_revision_its_route_names(e, expected) -> None:
    got = measurement(e)
    if expected is None:
        assert got is None
    else:
        assert got is not None and (got.revision, got.failed) == (expected.revision, expected.failed)
        assert got.latency_s == pytest.approx(expected.latency_s)


async def report(port: int, metadata: tuple[tuple[str, str], ...], n: int) -> grpc.StatusCode:
    msg = als_pb2.StreamAccessLogsMessage()
    msg.http_logs.log_entry.extend(entry("m/0/grpc/m__1") for _ in range(n))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            await als_pb2_grpc.AccessLogServiceStub(ch).StreamAccessLogs(iter([msg]), metadata=metadata,
                                                                         timeout=5)
        except grpc.aio.AioRpcError as e:
            return e.code()
    return grpc.StatusCode.OK


async def test_only_a_gateway_with_the_token_may_report() -> None:
    server = XdsServer(SnapshotCache(), gateway_token="s3cret")
    got: list[Measurement] = []
    server.on_measurements = got.extend
    port = await server.start("127.0.0.1", 0)
    try:
        assert await report(port, (), 5) == grpc.StatusCode.UNAUTHENTICATED
        assert await report(port, (("x-msm-gateway-token", "wrong"),), 5) == grpc.StatusCode.UNAUTHENTICATED
        assert got == []  # nothing a stranger says is measured
        assert await report(port, (("x-msm-gateway-token", "s3cret"),), 5) == grpc.StatusCode.OK
        assert [m.revision for m in got] == ["m__1"] * 5
    finally:
        await server.stop()
