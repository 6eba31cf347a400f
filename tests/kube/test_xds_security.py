"""msm as an Istio agent's discovery server, on a real API server: the CA Secret made once however
many replicas race for it, its certificate published where gateways mount it, a serving certificate
for the xDS Service's name, and clients told apart by TokenReview of their ServiceAccount tokens."""

from __future__ import annotations

import asyncio
import datetime

import grpc
import pytest
from cryptography import x509
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from kube_env import api_client
from kubernetes import client
from kubernetes.client.rest import ApiException
from prometheus_client import CollectorRegistry

from placement.kube.xds_security import XdsSecurity, make_ca, make_serving_cert, service_account
from placement.local.apiserver import ApiServer
from placement.manifests.kube_names import XDS_ROOT_CERT_KEY, XDS_ROOT_CONFIGMAP, xds_service_names
from xds_server import resource_types as rt
from xds_server.auth import BearerTokens
from xds_server.cache import SnapshotCache
from xds_server.server import ServerTls, XdsServer
from xds_server.snapshot import Snapshot

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]
MSM_NS, GW_NS = "msm-xds-sec", "msm-xds-sec-gw"


def setup(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    for ns in (MSM_NS, GW_NS):
        try:
            core.create_namespace({"metadata": {"name": ns}})
        except ApiException as e:
            if e.status != 409:
                raise
    for sa in ("gateway", "someone-else"):
        try:
            core.create_namespaced_service_account(GW_NS, {"metadata": {"name": sa}})
        except ApiException as e:
            if e.status != 409:
                raise


def token(api: client.ApiClient, sa: str, audiences: list[str]) -> str:
    req = client.CoreV1Api(api).create_namespaced_service_account_token(
        sa, GW_NS, {"spec": {"audiences": audiences, "expirationSeconds": 600}})
    return req.status.token


async def test_replicas_racing_for_the_ca_all_get_the_one_that_was_made(apiserver: ApiServer) -> None:
    with api_client(apiserver) as api:
        setup(api)
        replicas = [XdsSecurity(api, MSM_NS, [GW_NS]) for _ in range(4)]
        cas = await asyncio.gather(*(r.ca() for r in replicas))
        assert len(set(cas)) == 1
        assert await replicas[0].ca() == cas[0]  # and it stays
        # every replica publishes the root at start: racing creates are no problem
        assert await asyncio.gather(*(r.publish_root(cas[0][0]) for r in replicas)) == [[]] * 4
        cm = client.CoreV1Api(api).read_namespaced_config_map(XDS_ROOT_CONFIGMAP, GW_NS)
        assert cm.data[XDS_ROOT_CERT_KEY] == cas[0][0].decode()
        assert "PRIVATE" not in cm.data[XDS_ROOT_CERT_KEY]
        # a new CA (its Secret replaced by an operator) reaches the gateways' ConfigMap
        other = make_ca(datetime.datetime.now(datetime.UTC))[0]
        assert await replicas[1].publish_root(other) == []
        cm = client.CoreV1Api(api).read_namespaced_config_map(XDS_ROOT_CONFIGMAP, GW_NS)
        assert cm.data[XDS_ROOT_CERT_KEY] == other.decode()
        # a gateway namespace that does not exist (Istio not installed yet) is said, not fatal
        problems = await XdsSecurity(api, MSM_NS, ["no-such-ns"]).publish_root(cas[0][0])
        assert len(problems) == 1 and "no-such-ns" in problems[0]


async def test_an_agent_verifies_msm_by_the_service_name_and_msm_serves_only_allowed_tokens(
        apiserver: ApiServer) -> None:
    with api_client(apiserver) as api:
        setup(api)
        sec = XdsSecurity(api, MSM_NS, [GW_NS])
        ca_cert, ca_key = await sec.ca()
        names = xds_service_names(MSM_NS)
        chain, key = make_serving_cert(ca_cert, ca_key, names, datetime.datetime.now(datetime.UTC))
        leaf = x509.load_pem_x509_certificate(chain)
        assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName) == names

        cache = SnapshotCache()
        cache.publish(Snapshot.build({rt.CLUSTER: {}, rt.LISTENER: {}}))
        server = XdsServer(cache, registry=CollectorRegistry())
        allowed = service_account(f"{GW_NS}/gateway")
        port = await server.start("127.0.0.1", 0, tls=ServerTls(chain, key),
                                  auth=BearerTokens(sec.review, [allowed]))

        async def code(root: bytes, server_name: str, bearer: str | None) -> grpc.StatusCode:
            creds = grpc.ssl_channel_credentials(root)
            opts = [("grpc.ssl_target_name_override", server_name)]
            md = (("authorization", f"Bearer {bearer}"),) if bearer else ()
            async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=opts) as ch:
                call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch).StreamAggregatedResources(
                    metadata=md, timeout=10)
                try:
                    await call.write(discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id="gw"),
                                                                    type_url=rt.CLUSTER))
                    await call.read()
                    return grpc.StatusCode.OK
                except grpc.aio.AioRpcError as e:
                    return e.code()

        try:
            good = token(api, "gateway", ["istio-ca"])
            assert await code(ca_cert, names[0], good) == grpc.StatusCode.OK
            # the agent checks the name it dialled: another name is refused by the client itself
            assert await code(ca_cert, "istiod.istio-system.svc", good) == grpc.StatusCode.UNAVAILABLE
            # nor does a root other than msm's CA vouch for it
            other_root, _ = make_ca(datetime.datetime.now(datetime.UTC))
            assert await code(other_root, names[0], good) == grpc.StatusCode.UNAVAILABLE
            # tokens: none, another ServiceAccount's, the right one for another audience, garbage
            for bad in (None, token(api, "someone-else", ["istio-ca"]), token(api, "gateway", []),
                        good[:-4] + "AAAA"):
                assert await code(ca_cert, names[0], bad) == grpc.StatusCode.UNAUTHENTICATED
        finally:
            await server.stop(0)
