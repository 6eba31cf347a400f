"""The xDS server over TLS with client certificates: only clients of the trusted CA get in, and
each stream is known by its certificate's identity."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from prometheus_client import CollectorRegistry
from tlsutil import CA
from xds_client import mesh, publish

from xds_server import resource_types as rt
from xds_server.cache import SnapshotCache
from xds_server.server import ServerTls, XdsServer

pytestmark = pytest.mark.timeout(30)
GATEWAY = "spiffe://cluster.local/ns/msm-system/sa/msm-models-gateway"


@pytest.fixture
async def tls_server(tmp_path: Path):
    ca = CA(tmp_path / "ca")
    server_pem = ca.issue("xds", dns=("localhost",), ips=("127.0.0.1",), server=True)
    cache = SnapshotCache()
    server = XdsServer(cache, registry=CollectorRegistry())
    cert, key = server_pem.bytes()
    port = await server.start("127.0.0.1", 0, tls=ServerTls(cert, key, ca.pem.cert.read_bytes()))
    publish(cache, mesh({"a": [1]}))
    try:
        yield server, port, ca, tmp_path
    finally:
        await server.stop(0)


async def first_response(port: int, creds: grpc.ChannelCredentials | None) -> discovery_pb2.DiscoveryResponse:
    target = f"127.0.0.1:{port}"
    channel = grpc.aio.secure_channel(target, creds) if creds else grpc.aio.insecure_channel(target)
    async with channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(timeout=5)
        await call.write(discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id="gw"), type_url=rt.CLUSTER))
        return await call.read()


async def test_a_client_of_the_trusted_ca_is_served_and_known_by_its_certificate(tls_server) -> None:
    server, port, ca, _ = tls_server
    cert, key = ca.issue("gateway", uris=(GATEWAY,)).bytes()
    creds = grpc.ssl_channel_credentials(ca.pem.cert.read_bytes(), key, cert)
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(timeout=5)
        await call.write(discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id="gw"), type_url=rt.CLUSTER))
        resp = await call.read()
        assert [r for r in resp.resources]
        (stream,) = server.clients()  # still open: the server knows it by its certificate
        assert stream.authenticated == f"mTLS {GATEWAY}"
        assert stream.describe()["authenticated"] == f"mTLS {GATEWAY}"


@pytest.mark.parametrize("who", ["no certificate", "another CA", "plaintext"])
async def test_anyone_else_cannot_even_connect(tls_server, who: str) -> None:
    server, port, ca, tmp = tls_server
    if who == "plaintext":
        creds = None
    elif who == "no certificate":
        creds = grpc.ssl_channel_credentials(ca.pem.cert.read_bytes())
    else:
        stranger = CA(tmp / "other", name="other CA").issue("intruder", uris=(GATEWAY,))
        cert, key = stranger.bytes()
        creds = grpc.ssl_channel_credentials(ca.pem.cert.read_bytes(), key, cert)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await first_response(port, creds)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert server.metrics.registry.get_sample_value("msm_xds_streams_total", {"variant": "sotw"}) is None
