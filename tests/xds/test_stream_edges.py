"""The ADS stream state machine at its edges: what a stream does before anything is published,
while responses are in flight, when it closes, and what it says about itself.

Each test pins a rule a mutation run showed no test held (``make mutate``; docs/testing.md).
"""

from __future__ import annotations

import asyncio

import pytest
from envoy.config.route.v3 import scoped_route_pb2
from xds_client import (
    AdsClient,
    ask_endpoints_too,
    cla,
    cluster,
    decode,
    hold_everything,
    mesh,
    names_of,
    publish,
    route_config,
    until,
)

from xds_server import resource_types as rt
from xds_server.cache import SnapshotCache
from xds_server.delta import DeltaStream
from xds_server.gateway_kind import DEFAULT_KIND
from xds_server.metrics import XdsMetrics
from xds_server.sotw import SotwStream
from xds_server.stream import MAX_ERROR_CHARS, _cut, _Named

pytestmark = pytest.mark.timeout(30)
VARIANTS = pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])


async def _subscribe(c: AdsClient, type_url: str, names: list[str] | None = None) -> None:
    await (c.delta_req(type_url, names) if c.delta else c.sotw(type_url, names))


# -- pure pieces -------------------------------------------------------------------------------
def test_a_client_error_is_kept_whole_up_to_the_bound_and_cut_beyond():
    exact = "e" * MAX_ERROR_CHARS
    assert _cut(exact) == exact
    longer = exact + "f"
    assert _cut(longer) == f"{exact}… ({MAX_ERROR_CHARS + 1:,} characters in all)"


def test_a_named_view_refuses_names_outside_its_subscription_by_name():
    view = _Named({"a", "z"}, {"a": None, "b": None})
    assert "a" in view and "b" not in view and "z" not in view
    assert sorted(view) == ["a"] and len(view) == 1
    with pytest.raises(KeyError) as err:
        view["b"]
    assert err.value.args == ("b",)


# -- a stream's own life -------------------------------------------------------------------------
def _stream(cache: SnapshotCache, delta: bool):
    cls = DeltaStream if delta else SotwStream
    return cls(cache, XdsMetrics(), "ipv4:127.0.0.1:1", lambda: None)


@VARIANTS
async def test_a_closed_stream_ends_its_responses_and_stops_watching_the_cache(delta):
    cache = SnapshotCache()
    stream = _stream(cache, delta)
    out: list[bytes] = []

    async def drain():
        async for body in stream.responses():
            out.append(body)

    task = asyncio.create_task(drain())
    await until(lambda: bool(cache._watchers))  # the loop has started and waits for a snapshot
    stream.close()
    await asyncio.wait_for(task, 5)
    assert out == [] and not cache._watchers


@VARIANTS
def test_a_stream_that_has_said_nothing_describes_itself_with_empty_names(delta):
    d = _stream(SnapshotCache(), delta).describe()
    assert (d["node_id"], d["cluster"], d["kind"], d["types"]) == ("", "", DEFAULT_KIND, {})
    assert (d["peer"], d["authenticated"]) == ("ipv4:127.0.0.1:1", "")  # nothing proved yet
    assert d["variant"] == ("delta" if delta else "sotw")


# -- before anything is published ---------------------------------------------------------------
@VARIANTS
async def test_a_client_that_asks_before_the_first_publication_gets_it_when_it_comes(xds, delta):
    c = AdsClient(xds.test_port, delta=delta)
    try:
        await _subscribe(c, rt.CLUSTER)
        await _subscribe(c, rt.LISTENER)  # routing asked for before any cluster is warm
        await c.settled(xds)
        publish(xds.cache, mesh({"rt": [1]}, routes={"m": "rt"}))
        cds = await c.recv()
        assert cds.type_url == rt.CLUSTER and names_of(cds) == ["rt"]
        await _subscribe(c, rt.ENDPOINT, ["rt"])  # as Envoy does for a cluster it warms
        assert (await c.recv()).type_url == rt.ENDPOINT
        stream = await c.settled(xds)
        assert stream.types[rt.LISTENER].pending is None  # rt is not ACKed: no listener yet
        await c.ack(cds)
        assert (await c.recv()).type_url == rt.LISTENER
    finally:
        await c.close()


@VARIANTS
async def test_a_cluster_sent_before_its_endpoints_exist_gets_them_when_they_do(xds, delta):
    c = AdsClient(xds.test_port, delta=delta)
    try:
        publish(xds.cache, {rt.CLUSTER: {"rt": cluster("rt")}})  # no assignment published yet
        await _subscribe(c, rt.CLUSTER)
        cds = await c.recv()
        assert names_of(cds) == ["rt"]
        await c.ack(cds)
        await _subscribe(c, rt.ENDPOINT, ["rt"])
        await c.settled(xds)
        publish(xds.cache, {rt.CLUSTER: {"rt": cluster("rt")}, rt.ENDPOINT: {"rt": cla("rt", 1)}})
        eds = await c.recv()
        assert eds.type_url == rt.ENDPOINT and names_of(eds) == ["rt"]
    finally:
        await c.close()


# -- responses in flight --------------------------------------------------------------------------
@VARIANTS
async def test_routes_do_not_count_endpoints_whose_removal_is_in_flight(xds, delta):
    """b's assignment leaves, then comes back at the same version while its removal is still in
    flight: the client will not hold it, so the routes that name b wait for it to be sent again."""
    both = {"rt": [1], "b": [2]}
    publish(xds.cache, mesh(both, routes={"m": "rt", "n": "b"}))
    c = AdsClient(xds.test_port, delta=delta)
    try:
        for type_url, names in ((rt.CLUSTER, None), (rt.ENDPOINT, ["rt", "b"]), (rt.LISTENER, None),
                                (rt.ROUTE, ["r"])):
            await _subscribe(c, type_url, names)
            resp = await c.recv()
            await c.ack(resp, names)
        publish(xds.cache, mesh({"rt": [1]}, routes={"m": "rt"}))
        # make before break: routes first, then b's cluster and assignment go
        got = {}
        while rt.ENDPOINT not in got or rt.CLUSTER not in got:
            resp = await c.recv()
            got[resp.type_url] = resp
            if resp.type_url != rt.ENDPOINT:
                await c.ack(resp, ["r"] if resp.type_url == rt.ROUTE else None)
        eds = got[rt.ENDPOINT]
        assert ("b" in eds.removed_resources) if delta else (names_of(eds) == ["rt"])
        await c.settled(xds)
        publish(xds.cache, mesh(both, routes={"m": "rt", "n": "b"}))  # b back, as it was
        stream = await c.settled(xds)
        assert stream.types[rt.ROUTE].pending is None  # b's removal is still in flight
        await c.ack(eds, ["rt", "b"])
        if delta:
            await c.delta_req(rt.ENDPOINT, ["b"])
        sent = []
        while rt.ROUTE not in sent:
            resp = await c.recv()
            sent.append(resp.type_url)
            if resp.type_url == rt.CLUSTER:
                await c.ack(resp)
        assert sent.index(rt.ENDPOINT) < sent.index(rt.ROUTE)
    finally:
        await c.close()


@VARIANTS
async def test_describe_names_the_response_in_flight_and_lists_types_in_xds_order(xds, delta):
    publish(xds.cache, mesh({"rt": [1]}, routes={"m": "rt"}))
    c = AdsClient(xds.test_port, delta=delta)
    try:
        await hold_everything(c)
        await _subscribe(c, rt.SCOPED_ROUTE)  # scoped routes go before route tables
        srds = await c.recv()
        stream = await c.settled(xds)
        types = stream.describe()["types"]
        assert list(types) == ["cds", "eds", "lds", "srds", "rds"]
        assert types["srds"]["pending"] == srds.nonce and types["rds"]["pending"] is None
    finally:
        await c.close()


async def test_wait_for_ack_of_some_types_ignores_the_others(xds):
    publish(xds.cache, mesh({"rt": [1]}, routes={"m": "rt"}))
    c = AdsClient(xds.test_port, delta=True)
    try:
        await hold_everything(c)
        snap = publish(xds.cache, mesh({"rt": [1]}, routes={"m": "rt", "n": "rt"}))
        rds = await c.recv()
        assert rds.type_url == rt.ROUTE
        await c.settled(xds)
        assert await xds.wait_for_ack(snap.version, type_urls=[rt.CLUSTER], timeout=0)
        assert not await xds.wait_for_ack(snap.version, type_urls=[rt.ROUTE], timeout=0)
        assert not await xds.wait_for_ack(snap.version, timeout=0)
    finally:
        await c.close()


@VARIANTS
async def test_an_ack_that_brings_a_client_in_sync_tells_the_waiters(xds, delta):
    publish(xds.cache, mesh({"rt": [1]}, routes={"m": "rt"}))
    c = AdsClient(xds.test_port, delta=delta)
    try:
        await hold_everything(c)
        snap = publish(xds.cache, mesh({"rt": [1]}, routes={"m": "rt", "n": "rt"}))
        rds = await c.recv()
        waiter = asyncio.create_task(xds.wait_for_ack(snap.version, timeout=20))
        await c.ack(rds, ["r"])
        # told, not found at the end of its timeout: the test's own 30 s would run out first
        assert await asyncio.wait_for(waiter, 10)
    finally:
        await c.close()


# -- rejected routes --------------------------------------------------------------------------------
@VARIANTS
async def test_rejected_routes_are_not_offered_again_while_a_newer_snapshot_warms(xds, delta):
    """The routes of snapshot 2 are NACKed. Snapshot 3 adds a cluster and keeps 2's routes: until
    that cluster is warm the routes stay at 2, which was rejected, so nothing is resent; once it
    is warm, 3's routes (which nobody rejected) are sent."""
    publish(xds.cache, mesh({"rt": [1]}, routes={"m": "rt"}))
    c = AdsClient(xds.test_port, delta=delta)
    try:
        await hold_everything(c)
        routes2 = {"m": "rt", "n": "rt"}
        publish(xds.cache, mesh({"rt": [1]}, routes=routes2))
        rds = await c.recv()
        assert rds.type_url == rt.ROUTE
        await c.nack(rds, "no", ["r"])
        await c.settled(xds)
        publish(xds.cache, mesh({"rt": [1], "x": [3]}, routes={**routes2, "o": "x"}))
        cds = await c.recv()
        assert cds.type_url == rt.CLUSTER
        stream = await c.settled(xds)
        assert stream.types[rt.ROUTE].pending is None  # 2's routes are not offered again
        await c.ack(cds)
        await ask_endpoints_too(c, "x")
        eds = await c.recv()
        assert eds.type_url == rt.ENDPOINT
        rds = await c.recv()
        assert rds.type_url == rt.ROUTE and "/o/" in str(decode(rds, "r"))
    finally:
        await c.close()


# -- endpoints of a changed cluster ---------------------------------------------------------------
@VARIANTS
async def test_routes_wait_for_a_changed_clusters_ack_and_its_endpoints_sent_again(xds, delta):
    """A cluster whose settings change is re-created by Envoy and warms until its endpoints come
    again: the routes of that snapshot wait for the cluster's ACK, then follow the endpoints."""
    publish(xds.cache, mesh({"rt": [1]}, routes={"m": "rt"}))
    c = AdsClient(xds.test_port, delta=delta)
    try:
        await hold_everything(c)
        publish(xds.cache, mesh({"rt": [1]}, routes={"m": "rt", "n": "rt"}, timeouts={"rt": 5}))
        cds = await c.recv()
        assert cds.type_url == rt.CLUSTER
        eds = await c.recv()  # unchanged, sent again for the re-created cluster
        assert eds.type_url == rt.ENDPOINT and names_of(eds) == ["rt"]
        stream = await c.settled(xds)
        assert stream.types[rt.ROUTE].pending is None  # the cluster is not ACKed yet
        await c.ack(cds)
        rds = await c.recv()  # the endpoints are in flight: enough
        assert rds.type_url == rt.ROUTE and "/n/" in str(decode(rds, "r"))
    finally:
        await c.close()


@VARIANTS
async def test_a_clusters_endpoints_that_could_not_be_sent_yet_hold_the_routes_back(xds, delta):
    """The endpoints of a changed cluster must be sent again, but an earlier assignment is still in
    flight: the routes wait for that resend even once the cluster is ACKed."""
    publish(xds.cache, mesh({"rt": [1]}, routes={"m": "rt"}))
    c = AdsClient(xds.test_port, delta=delta)
    try:
        await hold_everything(c)
        publish(xds.cache, mesh({"rt": [1, 2]}, routes={"m": "rt"}))
        eds = await c.recv()  # not ACKed: the stream may send no other assignment meanwhile
        assert eds.type_url == rt.ENDPOINT
        await c.settled(xds)
        publish(xds.cache, mesh({"rt": [1, 2]}, routes={"m": "rt", "n": "rt"}, timeouts={"rt": 5}))
        cds = await c.recv()
        assert cds.type_url == rt.CLUSTER
        await c.ack(cds)
        stream = await c.settled(xds)
        assert stream.types[rt.ROUTE].pending is None  # rt's endpoints must go out again first
        await c.ack(eds, ["rt"])
        sent = [(await c.recv()).type_url for _ in range(2)]
        assert sent == [rt.ENDPOINT, rt.ROUTE]
    finally:
        await c.close()


async def test_route_candidates_are_the_eight_newest_snapshots(xds):
    """While routes cannot move (the clusters are not ACKed), the stream remembers the newest
    eight snapshots it may move them to, no more."""
    publish(xds.cache, mesh({"rt": [1]}, routes={"m": "rt"}))
    c = AdsClient(xds.test_port, delta=True)
    try:
        await _subscribe(c, rt.CLUSTER)
        await c.recv()  # not ACKed
        seqs = []
        for i in range(10):
            publish(xds.cache, mesh({"rt": [1]}, routes={"m": "rt", f"n{i}": "rt"}))
            seqs.append(xds.cache.seq)
            stream = await c.settled(xds)  # the stream has followed this publication
        assert [s for s, _ in stream._route_candidates] == seqs[-8:]
    finally:
        await c.close()


# -- delta: what changed since the client was in sync ---------------------------------------------
def _endpoints(**ports: int) -> dict:
    return {rt.ENDPOINT: {n: cla(n, p) for n, p in ports.items()}}


async def _eds_client(xds, names: list[str]) -> AdsClient:
    c = AdsClient(xds.test_port, delta=True)
    await c.delta_req(rt.ENDPOINT, names)
    await c.ack(await c.recv())
    await c.settled(xds)
    return c


async def test_delta_a_resource_changed_and_changed_back_meanwhile_sends_nothing(xds):
    """The stream follows only the newest snapshot: x changed, then back; z came and went (the
    client asked for it by name and never held it). Nothing differs from what the client holds."""
    publish(xds.cache, _endpoints(x=1))
    c = await _eds_client(xds, ["x", "z"])
    try:
        between = publish(xds.cache, _endpoints(x=2, z=9))  # kept: the stream compares by what
        publish(xds.cache, _endpoints(x=1))  # changed since, through it; before the stream looks
        stream = await c.settled(xds)
        assert stream.types[rt.ENDPOINT].pending is None
        assert between.version
    finally:
        await c.close()


async def test_delta_sends_only_what_changed_and_removes_only_what_the_client_holds(xds):
    publish(xds.cache, _endpoints(x=1, y=1))
    c = await _eds_client(xds, ["x", "y", "z"])
    try:
        between = publish(xds.cache, _endpoints(x=2, y=2, z=9))  # kept, as above
        publish(xds.cache, _endpoints(x=1, y=3))
        eds = await c.recv()
        assert between.version
        assert names_of(eds) == ["y"] and list(eds.removed_resources) == []
        assert [ep.endpoint.address.socket_address.port_value
                for ep in decode(eds, "y").endpoints[0].lb_endpoints] == [3]
        await c.ack(eds)
        publish(xds.cache, _endpoints(x=5, y=6))  # two changes in one response: both decode
        eds = await c.recv()
        assert sorted(names_of(eds)) == ["x", "y"]
        assert decode(eds, "x").endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value == 5
    finally:
        await c.close()


async def test_delta_a_held_name_of_a_wildcard_asked_for_by_name_is_sent_again(xds):
    """Envoy asks for a name again when it lost it (a cluster re-created): even under a wildcard
    subscription that already sent it, the named request is answered."""
    publish(xds.cache, mesh({"a": [1], "b": [2]}))
    c = AdsClient(xds.test_port, delta=True)
    try:
        await c.delta_req(rt.CLUSTER)  # wildcard
        await c.ack(await c.recv())
        await c.delta_req(rt.CLUSTER, ["a"])
        cds = await c.recv()
        assert names_of(cds) == ["a"]
    finally:
        await c.close()


async def test_delta_an_unsubscribed_name_is_no_longer_held(xds):
    publish(xds.cache, _endpoints(x=1, y=1))
    c = await _eds_client(xds, ["x", "y"])
    try:
        await c.delta_req(rt.ENDPOINT, unsubscribe=["y"])
        stream = await c.settled(xds)
        assert stream.describe()["types"]["eds"]["resources"] == 1
        assert stream.types[rt.ENDPOINT].pending is None  # nothing to send for a drop
    finally:
        await c.close()


# -- SotW: a named subscription that shrinks and grows -----------------------------------------------
async def test_sotw_a_name_dropped_then_asked_for_again_is_sent_again(xds):
    publish(xds.cache, _endpoints(a=1, b=2, c=3))
    c = AdsClient(xds.test_port, delta=False)
    try:
        await c.sotw(rt.ENDPOINT, ["a", "b"])
        eds = await c.recv()
        assert sorted(names_of(eds)) == ["a", "b"]  # a subset of several: each decodes
        assert decode(eds, "b").endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value == 2
        await c.ack(eds, ["a", "b"])
        await c.sotw(rt.ENDPOINT, ["a"], version=eds.version_info, nonce=eds.nonce)
        stream = await c.settled(xds)
        assert stream.types[rt.ENDPOINT].pending is None  # a is held as it is: nothing to send
        await c.sotw(rt.ENDPOINT, ["a", "b"], version=eds.version_info, nonce=eds.nonce)
        eds = await c.recv()
        assert sorted(names_of(eds)) == ["a", "b"]
    finally:
        await c.close()


@VARIANTS
async def test_routes_wait_for_new_endpoints_behind_an_older_assignment_in_flight(xds, delta):
    """The gateway has not ACKed rt's assignment of snapshot 2 when snapshot 3 changes it again and
    routes a new model there: 2's assignment in flight is not 3's, so the routes wait for 3's."""
    publish(xds.cache, mesh({"rt": [1]}, routes={"m": "rt"}))
    c = AdsClient(xds.test_port, delta=delta)
    try:
        await hold_everything(c)
        publish(xds.cache, mesh({"rt": [1, 2]}, routes={"m": "rt"}))
        eds = await c.recv()
        assert eds.type_url == rt.ENDPOINT
        await c.settled(xds)
        publish(xds.cache, mesh({"rt": [1, 2, 3]}, routes={"m": "rt", "n": "rt"}))
        stream = await c.settled(xds)
        assert stream.types[rt.ROUTE].pending is None
        await c.ack(eds, ["rt"])
        eds = await c.recv()
        assert eds.type_url == rt.ENDPOINT
        assert len(decode(eds, "rt").endpoints[0].lb_endpoints) == 3
        rds = await c.recv()
        assert rds.type_url == rt.ROUTE and "/n/" in str(decode(rds, "r"))
    finally:
        await c.close()


@VARIANTS
async def test_without_clusters_routes_do_not_count_endpoints_whose_removal_is_in_flight(xds, delta):
    """A client of endpoints and routes only (no CDS): b's assignment is dropped once the routes
    leave it, and comes back, as it was, while that removal is still in flight. The client will
    not hold it, so the routes that name b again wait until it is sent again."""
    both = {rt.ENDPOINT: {"rt": cla("rt", 1), "b": cla("b", 2)},
            rt.ROUTE: {"r": route_config("r", {"m": "rt", "n": "b"})}}
    publish(xds.cache, both)
    c = AdsClient(xds.test_port, delta=delta)
    try:
        for type_url, names in ((rt.ENDPOINT, ["b", "rt"]), (rt.ROUTE, ["r"])):
            await _subscribe(c, type_url, names)
            await c.ack(await c.recv(), names)
        publish(xds.cache, {rt.ENDPOINT: {"rt": cla("rt", 1)},
                            rt.ROUTE: {"r": route_config("r", {"m": "rt"})}})
        rds = await c.recv()  # routes leave b first
        assert rds.type_url == rt.ROUTE
        await c.ack(rds, ["r"])
        eds = await c.recv()  # then b goes; not ACKed
        assert eds.type_url == rt.ENDPOINT
        assert list(eds.removed_resources) == ["b"] if delta else names_of(eds) == ["rt"]
        await c.settled(xds)
        publish(xds.cache, both)
        stream = await c.settled(xds)
        assert stream.types[rt.ROUTE].pending is None
        await c.ack(eds, ["b", "rt"])
        sent = [(await c.recv()).type_url for _ in range(2)]
        assert sent == [rt.ENDPOINT, rt.ROUTE]
    finally:
        await c.close()


async def test_sotw_an_empty_list_after_names_ends_a_legacy_wildcard(xds):
    """An empty first request is a wildcard only until the client names resources (here beside
    ``*``): an empty list after that subscribes to nothing."""
    publish(xds.cache, mesh({"a": [1]}))
    c = AdsClient(xds.test_port, delta=False)
    try:
        await c.sotw(rt.CLUSTER)
        cds = await c.recv()
        await c.sotw(rt.CLUSTER, ["*", "a"], version=cds.version_info, nonce=cds.nonce)  # still all
        await c.sotw(rt.CLUSTER, [], version=cds.version_info, nonce=cds.nonce)
        await c.settled(xds)
        publish(xds.cache, mesh({"a": [1], "b": [2]}))
        stream = await c.settled(xds)
        assert stream.types[rt.CLUSTER].pending is None and not stream.types[rt.CLUSTER].wildcard
    finally:
        await c.close()


def _scoped(name: str, routes: str) -> scoped_route_pb2.ScopedRouteConfiguration:
    return scoped_route_pb2.ScopedRouteConfiguration(
        name=name, route_configuration_name=routes,
        key=scoped_route_pb2.ScopedRouteConfiguration.Key(
            fragments=[scoped_route_pb2.ScopedRouteConfiguration.Key.Fragment(string_key=name)]))


@VARIANTS
async def test_scoped_routes_go_out_before_the_route_tables_they_name(xds, delta):
    def resources(tables: list[str]) -> dict:
        return {rt.SCOPED_ROUTE: {t: _scoped(t, t) for t in tables},
                rt.ROUTE: {t: route_config(t, {"m": "rt"}) for t in tables}}

    publish(xds.cache, resources(["r1"]))
    c = AdsClient(xds.test_port, delta=delta)
    try:
        for type_url, names in ((rt.SCOPED_ROUTE, None), (rt.ROUTE, ["r1", "r2"])):
            await _subscribe(c, type_url, names)
            await c.ack(await c.recv(), names)
        await c.settled(xds)
        publish(xds.cache, resources(["r1", "r2"]))
        srds = await c.recv()
        assert srds.type_url == rt.SCOPED_ROUTE and "r2" in names_of(srds)
        rds = await c.recv()
        assert rds.type_url == rt.ROUTE and "r2" in names_of(rds)
    finally:
        await c.close()


@VARIANTS
async def test_routes_rejected_on_their_way_to_a_newer_snapshot_do_not_block_it(xds, delta):
    """Routes of snapshot 2 go out while 3 (which adds a cluster) is not warm yet, and the client
    rejects them. That rejects 2's routes only: once 3 is warm, its routes are sent."""
    publish(xds.cache, mesh({"rt": [1]}, routes={"m": "rt"}))
    c = AdsClient(xds.test_port, delta=delta)
    try:
        await hold_everything(c)
        publish(xds.cache, mesh({"rt": [1]}, routes={"m": "rt", "n": "rt"}))
        first = await c.recv()  # routes of snapshot 1.5, not ACKed yet
        assert first.type_url == rt.ROUTE
        await c.settled(xds)
        publish(xds.cache, mesh({"rt": [1]}, routes={"m": "rt", "n": "rt", "p": "rt"}))  # 2: warm
        await c.settled(xds)
        publish(xds.cache, mesh({"rt": [1], "x": [3]}, routes={"m": "rt", "n": "rt", "p": "rt", "o": "x"}))
        cds = await c.recv()  # 3: x is new
        assert cds.type_url == rt.CLUSTER
        await c.ack(first, ["r"])
        rds = await c.recv()  # 2's routes, while 3 is the target
        assert rds.type_url == rt.ROUTE
        assert "/p/" in str(decode(rds, "r")) and "/o/" not in str(decode(rds, "r"))
        await c.nack(rds, "no", ["r"])
        await c.ack(cds)
        await ask_endpoints_too(c, "x")
        sent = {}
        while rt.ROUTE not in sent:
            resp = await c.recv()
            sent[resp.type_url] = resp
        assert "/o/" in str(decode(sent[rt.ROUTE], "r"))
    finally:
        await c.close()


@VARIANTS
async def test_a_new_clusters_endpoints_asked_for_late_are_the_newest(xds, delta):
    """Cluster c arrives with its assignment at v1; before the client asks for c's endpoints, a
    newer snapshot changes them (routes not moved yet). The client gets the newer assignment, not
    the one the cluster came with."""
    publish(xds.cache, mesh({"rt": [1]}, routes={"m": "rt"}))
    c = AdsClient(xds.test_port, delta=delta)
    try:
        await hold_everything(c)
        publish(xds.cache, mesh({"rt": [1], "c": [7]}, routes={"m": "rt", "n": "c"}))
        cds = await c.recv()
        assert cds.type_url == rt.CLUSTER
        await c.settled(xds)
        publish(xds.cache, mesh({"rt": [1], "c": [8]}, routes={"m": "rt", "n": "c"}))
        await c.settled(xds)
        await c.ack(cds)
        await ask_endpoints_too(c, "c")
        eds = await c.recv()
        assert eds.type_url == rt.ENDPOINT
        ports = [ep.endpoint.address.socket_address.port_value
                 for ep in decode(eds, "c").endpoints[0].lb_endpoints]
        assert ports == [8]
    finally:
        await c.close()
