"""Istio gateways report measurements over mutual TLS: a workload certificate the mesh's root
signed, of an allowed ServiceAccount, is the only credential; the port serves nothing else."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from test_access_log import entry
from tlsutil import CA

from xds_server import resource_types as rt
from xds_server.access_log import Measurement
from xds_server.auth import MeshIdentities, spiffe_workload
from xds_server.cache import SnapshotCache
from xds_server.server import ServerTls, XdsServer

pytestmark = pytest.mark.timeout(30)
GATEWAY_SA = "istio-system/msm-model-gateway-service-account"
GATEWAY = "spiffe://cluster.local/ns/istio-system/sa/msm-model-gateway-service-account"


@pytest.fixture
async def measure_port(tmp_path: Path):
    mesh_root = CA(tmp_path / "mesh", "mesh root")  # istiod's CA: signs workload certificates
    msm_ca = CA(tmp_path / "msm", "msm xDS CA")  # msm's own: signs msm's serving certificate
    cert, key = msm_ca.issue("msm-xds", dns=("msm-xds.modelmesh-serving.svc",), server=True).bytes()
    server = XdsServer(SnapshotCache(), gateway_token="plain-port-token")
    got: list[Measurement] = []
    server.on_measurements = got.extend
    tls = ServerTls(cert, key, client_ca=mesh_root.pem.cert.read_bytes())
    port = await server.start("127.0.0.1", 0, tls=tls, auth=MeshIdentities([GATEWAY_SA]), ads=False)
    try:
        yield port, mesh_root, msm_ca, got
    finally:
        await server.stop(0)


def _creds(msm_ca: CA, client: CA | None = None, uri: str = GATEWAY) -> grpc.ChannelCredentials:
    root = msm_ca.pem.cert.read_bytes()
    if client is None:
        return grpc.ssl_channel_credentials(root)
    cert, key = client.issue("gw", uris=(uri,)).bytes()
    return grpc.ssl_channel_credentials(root, key, cert)


_OPTIONS = (("grpc.ssl_target_name_override", "msm-xds.modelmesh-serving.svc"),)


async def _report(port: int, creds: grpc.ChannelCredentials, n: int = 3) -> grpc.StatusCode:
    msg = als_pb2.StreamAccessLogsMessage()
    msg.http_logs.log_entry.extend(entry("m/0/grpc/m__2") for _ in range(n))
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=_OPTIONS) as ch:
        try:
            await als_pb2_grpc.AccessLogServiceStub(ch).StreamAccessLogs(iter([msg]), timeout=5)
        except grpc.aio.AioRpcError as e:
            return e.code()
    return grpc.StatusCode.OK


async def test_the_gateways_certificate_is_its_credential(measure_port) -> None:
    port, mesh_root, msm_ca, got = measure_port
    assert await _report(port, _creds(msm_ca, mesh_root)) == grpc.StatusCode.OK
    assert [m.revision for m in got] == ["m__2"] * 3


async def test_anyone_else_is_refused_and_measures_nothing(measure_port, tmp_path: Path) -> None:
    port, mesh_root, msm_ca, got = measure_port
    other_sa = "spiffe://cluster.local/ns/modelmesh-serving/sa/default"
    # a workload of the mesh, but not the gateway
    assert await _report(port, _creds(msm_ca, mesh_root, other_sa)) == grpc.StatusCode.UNAUTHENTICATED
    # the gateway's name, signed by another CA: the TLS handshake fails
    forger = CA(tmp_path / "forger", "forger")
    assert await _report(port, _creds(msm_ca, forger)) == grpc.StatusCode.UNAVAILABLE
    # no client certificate at all
    assert await _report(port, _creds(msm_ca)) == grpc.StatusCode.UNAVAILABLE
    assert got == []


async def test_the_measure_port_serves_no_xds(measure_port) -> None:
    port, mesh_root, msm_ca, _ = measure_port
    creds = _creds(msm_ca, mesh_root)
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=_OPTIONS) as ch:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch).StreamAggregatedResources(timeout=5)
        await call.write(discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id="gw"), type_url=rt.CLUSTER))
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call.read()
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize(("identity", "workload"), [
    (GATEWAY, GATEWAY_SA),
    ("spiffe://example.org/ns/a/sa/b", "a/b"),
    ("spiffe://cluster.local/ns/a/sa/b/extra", None),
    ("spiffe://cluster.local/ns//sa/b", None),
    ("https://cluster.local/ns/a/sa/b", None),
    ("msm-xds.modelmesh-serving.svc", None),
    ("", None),
])
def test_spiffe_workload(identity: str, workload: str | None) -> None:
    assert spiffe_workload(identity) == workload


def test_a_spiffe_id_must_name_a_service_account() -> None:
    assert spiffe_workload("spiffe://cluster.local/ns/a/xx/b") is None  # not /sa/
    assert spiffe_workload("spiffe://cluster.local/xx/a/sa/b") is None  # not /ns/
