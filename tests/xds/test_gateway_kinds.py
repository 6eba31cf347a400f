"""One publication, a snapshot per gateway kind: each stream gets its kind's, chosen from its node;
an Istio gateway's agent is let in by its ServiceAccount token (a verifier stands in for
TokenReview here; tests/kube checks the real one)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2
from prometheus_client import CollectorRegistry
from xds_client import AdsClient, decode, listener, mesh, names_of

from xds_server import resource_types as rt
from xds_server.auth import BearerTokens
from xds_server.cache import SnapshotCache
from xds_server.gateway_kind import DEFAULT_KIND, ISTIO_GATEWAY, kind_of
from xds_server.server import XdsServer
from xds_server.snapshot import Snapshot

pytestmark = pytest.mark.timeout(30)
ROUTER = "router~10.0.0.7~msm-model-gateway-5d9f.istio-system~istio-system.svc.cluster.local"


ISTIO_META = {"ISTIO_VERSION": "1.31-dev", "CLUSTER_ID": "Kubernetes"}


def istio_node(node_id: str = ROUTER, meta: bool = True) -> base_pb2.Node:
    md = struct_pb2.Struct()
    if meta:
        md.update(ISTIO_META)
    return base_pb2.Node(id=node_id, metadata=md)


@pytest.mark.parametrize(("node", "kind"), [
    (istio_node(), ISTIO_GATEWAY),
    (istio_node(meta=False), DEFAULT_KIND),  # router~ alone is not Istio's
    (istio_node("sidecar~10.0.0.7~x.ns~ns.svc.cluster.local"), DEFAULT_KIND),
    (base_pb2.Node(id="msm-local-gateway"), DEFAULT_KIND),
    (None, DEFAULT_KIND),
])
def test_the_kind_comes_from_the_node(node, kind) -> None:
    assert kind_of(node) == kind


def both_kinds(cache: SnapshotCache, envoy_port: int, istio_port: int) -> int:
    plain = mesh({"a": [1]})
    istio = {**plain, rt.LISTENER: {"l": listener("l", istio_port)}}
    plain[rt.LISTENER] = {"l": listener("l", envoy_port)}
    return cache.publish(Snapshot.build(plain, previous=cache.current),
                         {ISTIO_GATEWAY: Snapshot.build(istio, previous=cache.current_for(ISTIO_GATEWAY))})


def port_of(resp: discovery_pb2.DiscoveryResponse | discovery_pb2.DeltaDiscoveryResponse) -> int:
    return decode(resp, "l").address.socket_address.port_value


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
async def test_each_stream_gets_the_snapshot_of_its_kind_and_both_follow_one_publication(xds, delta) -> None:
    seq = both_kinds(xds.cache, 18008, 8008)
    plain = AdsClient(xds.test_port, node_id="msm-local-gateway", delta=delta)
    istio = AdsClient(xds.test_port, node_id=ROUTER, delta=delta, node_metadata=ISTIO_META)
    try:
        for c in (plain, istio):
            await (c.delta_req(rt.LISTENER) if delta else c.sotw(rt.LISTENER))
        got = {c: await c.recv() for c in (plain, istio)}
        assert names_of(got[plain]) == names_of(got[istio]) == ["l"]
        assert (port_of(got[plain]), port_of(got[istio])) == (18008, 8008)
        assert {s.node_id: s.kind for s in xds.clients()} == {"msm-local-gateway": DEFAULT_KIND,
                                                              ROUTER: ISTIO_GATEWAY}
        for c in (plain, istio):
            await c.ack(got[c])
        version = xds.cache.current.version
        assert xds.cache.seq_of(version) == seq
        assert await xds.wait_for_ack(version, timeout=5)

        seq2 = both_kinds(xds.cache, 18009, 8009)  # the next publication reaches each as its kind's
        assert seq2 == seq + 1
        got = {c: await c.recv() for c in (plain, istio)}
        assert (port_of(got[plain]), port_of(got[istio])) == (18009, 8009)
    finally:
        await plain.close()
        await istio.close()


def test_a_publication_with_the_same_versions_for_every_kind_is_not_a_new_one() -> None:
    cache = SnapshotCache()
    seq = both_kinds(cache, 1, 2)
    assert both_kinds(cache, 1, 2) == seq
    assert both_kinds(cache, 1, 3) == seq + 1  # only the Istio kind changed: still a new publication
    assert cache.kinds == (DEFAULT_KIND, ISTIO_GATEWAY)
    # a kind nobody made a snapshot for is served the default kind's
    assert cache.current_for("other") is cache.current


# -- Istio agents' tokens ---------------------------------------------------------------------------
GATEWAY_SA = "system:serviceaccount:istio-system:msm-model-gateway-service-account"


class Reviews:
    """Stands in for TokenReview: known tokens and whose they are; counts the calls."""

    def __init__(self) -> None:
        self.tokens = {"gw-token": GATEWAY_SA, "other-token": "system:serviceaccount:default:default"}
        self.calls = 0
        self.hold: asyncio.Event | None = None

    async def __call__(self, token: str) -> str | None:
        self.calls += 1
        if self.hold is not None:
            await self.hold.wait()
        return self.tokens.get(token)


async def test_bearer_tokens_serve_allowed_identities_only_and_remember_answers() -> None:
    now = [0.0]
    reviews = Reviews()
    auth = BearerTokens(reviews, [GATEWAY_SA], ttl_s=60, refused_ttl_s=5, clock=lambda: now[0])
    assert await auth.authenticate([("authorization", "Bearer gw-token")]) == f"token of {GATEWAY_SA}"
    assert await auth.authenticate([("authorization", "bearer gw-token")]) is not None
    assert reviews.calls == 1  # remembered
    assert await auth.authenticate([("authorization", "Bearer other-token")]) is None  # valid, not allowed
    assert await auth.authenticate([("authorization", "Bearer forged")]) is None
    assert await auth.authenticate([("authorization", "Bearer forged")]) is None
    assert reviews.calls == 3  # a refused token is remembered too, for a shorter while
    for md in ([], [("authorization", "Basic gw-token")], [("authorization", "Bearer ")],
               [("x-msm-gateway-token", "gw-token")]):
        assert await auth.authenticate(md) is None
    assert reviews.calls == 3  # nothing to review
    now[0] = 6.0
    assert await auth.authenticate([("authorization", "Bearer forged")]) is None
    assert reviews.calls == 4
    now[0] = 61.0  # an accepted token is reviewed again after the TTL (it may have been revoked)
    del reviews.tokens["gw-token"]
    assert await auth.authenticate([("authorization", "Bearer gw-token")]) is None
    assert reviews.calls == 5


async def test_a_slow_review_holds_up_only_its_own_stream() -> None:
    reviews = Reviews()
    auth = BearerTokens(reviews, [GATEWAY_SA], concurrency=2)
    await auth.authenticate([("authorization", "Bearer gw-token")])  # remembered
    reviews.hold = asyncio.Event()
    stuck = [asyncio.create_task(auth.authenticate([("authorization", f"Bearer slow-{i}")]))
             for i in range(5)]
    await asyncio.sleep(0)
    # the reviews are all busy, but a remembered token does not wait for them
    assert await asyncio.wait_for(auth.authenticate([("authorization", "Bearer gw-token")]), 1) is not None
    reviews.hold.set()
    assert await asyncio.gather(*stuck) == [None] * 5


@pytest.mark.parametrize("token", [None, "other-token"], ids=["no-token", "not-allowed"])
async def test_the_secure_port_refuses_a_client_without_an_allowed_token(token) -> None:
    cache = SnapshotCache()
    server = XdsServer(cache, registry=CollectorRegistry(), gateway_token="plain-port-token")
    both_kinds(cache, 1, 2)
    plain = await server.start("127.0.0.1", 0)
    port = await server.start("127.0.0.1", 0, auth=BearerTokens(Reviews(), [GATEWAY_SA]))
    try:
        md = (("authorization", f"Bearer {token}"),) if token else ()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch).StreamAggregatedResources(metadata=md)
            assert await asyncio.wait_for(call.code(), 10) == grpc.StatusCode.UNAUTHENTICATED
            assert "model gateways only" in await call.details()
        # the gateway token of the other port is no pass here, nor the token here one there
        for p, md in ((port, (("x-msm-gateway-token", "plain-port-token"),)),
                      (plain, (("authorization", "Bearer gw-token"),))):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{p}") as ch:
                call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch).StreamAggregatedResources(metadata=md)
                assert await asyncio.wait_for(call.code(), 10) == grpc.StatusCode.UNAUTHENTICATED
        # and the allowed token is served, its stream known by whose token it is
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch).StreamAggregatedResources(
                metadata=(("authorization", "Bearer gw-token"),))
            await call.write(discovery_pb2.DiscoveryRequest(node=istio_node(), type_url=rt.LISTENER))
            resp = await asyncio.wait_for(call.read(), 10)
            assert port_of(resp) == 2
            (stream,) = server.clients()
            assert stream.authenticated == f"token of {GATEWAY_SA}"
            call.cancel()
    finally:
        await server.stop(0)


async def test_remembered_answers_expire_by_kind_and_the_memory_is_bounded() -> None:
    now = [0.0]
    reviews = Reviews()
    auth = BearerTokens(reviews, [GATEWAY_SA], ttl_s=60, refused_ttl_s=5, max_entries=2,
                        clock=lambda: now[0])
    ok = [("authorization", "Bearer gw-token")]
    assert await auth.authenticate(ok) is not None
    now[0] = 6.0  # past the refused TTL, well inside the accepted one: still remembered
    assert await auth.authenticate(ok) is not None and reviews.calls == 1
    now[0] = 60.0  # the accepted TTL is over at its end
    assert await auth.authenticate(ok) is not None and reviews.calls == 2
    # three tokens, room for two: the oldest is forgotten and reviewed again
    for t in ("other-token", "forged"):
        await auth.authenticate([("authorization", f"Bearer {t}")])
    assert reviews.calls == 4
    await auth.authenticate(ok)
    assert reviews.calls == 5


async def test_what_counts_as_a_bearer_token() -> None:
    seen: list[str] = []

    async def verify(token: str) -> str | None:
        seen.append(token)
        return GATEWAY_SA

    auth = BearerTokens(verify, [GATEWAY_SA])
    longest = "x" * 16384
    assert await auth.authenticate([("authorization", f"Bearer {longest}")]) is not None
    # one more character is too long: refused without a review
    assert await auth.authenticate([("authorization", f"Bearer {longest}y")]) is None
    # gRPC may give a value as bytes
    assert await auth.authenticate([("authorization", b"Bearer from-bytes")]) is not None
    assert await auth.authenticate([("authorization", "Bearer two words")]) is not None
    assert seen == [longest, "from-bytes", "two words"]


def test_the_cache_remembers_the_last_publications_only() -> None:
    cache = SnapshotCache()
    assert cache.seq == 0 and cache.current is None
    woken = asyncio.Event()
    cache.watch(woken)
    first = both_kinds(cache, 1, 1)
    assert woken.is_set()
    woken.clear()
    cache.unwatch(woken)
    versions = [cache.current.version]
    for port in range(2, 300):
        both_kinds(cache, port, port)
        versions.append(cache.current.version)
    assert not woken.is_set()  # no longer watching
    assert cache.seq_of(versions[0]) is None and first == 1  # the oldest are forgotten
    remembered = [v for v in versions if cache.seq_of(v) is not None]
    assert len(remembered) == 256 and remembered == versions[-256:]
