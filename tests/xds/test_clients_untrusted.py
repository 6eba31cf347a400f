"""xDS clients are untrusted: a gateway token decides who is served; claims and error texts are
bounded."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from prometheus_client import CollectorRegistry
from xds_client import AdsClient, mesh, publish

from xds_server import resource_types as rt
from xds_server.bootstrap import GATEWAY_TOKEN_HEADER
from xds_server.cache import SnapshotCache
from xds_server.server import XdsServer
from xds_server.stream import MAX_ERROR_CHARS

pytestmark = pytest.mark.timeout(30)
TOKEN = "s3cr3t-token"


@pytest.fixture
async def guarded():
    cache = SnapshotCache()
    registry = CollectorRegistry()
    server = XdsServer(cache, registry=registry, gateway_token=TOKEN)
    port = await server.start("127.0.0.1", 0)
    publish(cache, mesh({"a": [1]}))
    try:
        yield server, port, registry
    finally:
        await server.stop(0)


BAD = [(), ((GATEWAY_TOKEN_HEADER, "wrong"),), ((GATEWAY_TOKEN_HEADER, TOKEN + "x"),)]


@pytest.mark.parametrize("metadata", BAD, ids=["none", "wrong", "longer"])
@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
async def test_a_stream_without_the_token_is_refused(guarded, metadata, delta) -> None:
    server, port, registry = guarded
    c = AdsClient(port, node_id="msm-local-gateway", delta=delta, metadata=metadata)
    try:
        # refused when the call starts, before the client writes anything (writing first would race
        # the refusal and could fail locally with INTERNAL instead)
        assert await asyncio.wait_for(c.call.code(), 10) == grpc.StatusCode.UNAUTHENTICATED
        assert "serves msm's gateways only" in await c.call.details()
        assert server.clients() == []
        variant = "delta" if delta else "sotw"
        assert registry.get_sample_value("msm_xds_refused_streams_total", {"variant": variant}) == 1
        # nothing it did can hold anyone up
        assert await server.wait_for_ack(server.cache.current.version, timeout=0)
    finally:
        await c.close()


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
async def test_the_token_bearer_is_served_and_known_by_what_it_proved(guarded, delta) -> None:
    server, port, _ = guarded
    c = AdsClient(port, node_id="gw", delta=delta, metadata=((GATEWAY_TOKEN_HEADER, TOKEN),))
    try:
        if delta:
            await c.delta_req(rt.CLUSTER)
        else:
            await c.sotw(rt.CLUSTER)
        resp = await c.recv()
        assert [r for r in resp.resources]
        (stream,) = server.clients()
        assert stream.authenticated == "gateway token"
        assert stream.describe()["authenticated"] == "gateway token"
    finally:
        await c.close()


async def test_without_a_token_configured_every_client_is_served_and_proves_nothing(xds) -> None:
    publish(xds.cache, mesh({"a": [1]}))
    c = AdsClient(xds.test_port)
    try:
        await c.sotw(rt.CLUSTER)
        await c.recv()
        (stream,) = xds.clients()
        assert stream.authenticated == ""
    finally:
        await c.close()


async def test_a_huge_nack_and_a_huge_node_id_are_kept_short(xds, caplog) -> None:
    publish(xds.cache, mesh({"a": [1]}))
    c = AdsClient(xds.test_port, node_id="n" * 100_000, delta=True)
    try:
        await c.delta_req(rt.CLUSTER)
        resp = await c.recv()
        await c.nack(resp, "E" * 10_000_000)
        stream = await c.settled(xds)
        error = stream.types[rt.CLUSTER].last_error
        assert error is not None and error.startswith("E" * 100)
        assert len(error) < MAX_ERROR_CHARS + 100 and "10,000,000 characters in all" in error
        assert len(stream.node_id) == 256
        assert max(len(r.getMessage()) for r in caplog.records) < 5000
    finally:
        await c.close()


async def test_a_client_that_pings_often_keeps_its_stream(xds) -> None:
    """Istio's agent pings its discovery server every 30 s; gRPC servers by default take one ping
    per 5 minutes without data and send GOAWAY (too_many_pings) after two more. A client pinging
    every second for 6 s makes that happen at once unless the server accepts it: the stream must
    still carry the next publication."""
    publish(xds.cache, mesh({"a": [1]}))
    options = [("grpc.keepalive_time_ms", 200), ("grpc.keepalive_timeout_ms", 5000),
               ("grpc.http2.min_time_between_pings_ms", 100),
               ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{xds.test_port}", options=options) as ch:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch).StreamAggregatedResources()
        await call.write(discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id="pinger"), type_url=rt.CLUSTER))
        first = await asyncio.wait_for(call.read(), 10)
        await call.write(discovery_pb2.DiscoveryRequest(type_url=rt.CLUSTER, version_info=first.version_info,
                                                        response_nonce=first.nonce))
        await asyncio.sleep(6.0)  # a ping a second (the client clamps to that), all without data
        publish(xds.cache, mesh({"a": [1], "b": [2]}))
        second = await asyncio.wait_for(call.read(), 10)
        assert second is not grpc.aio.EOF and len(second.resources) == 2
        call.cancel()
