"""Incremental ADS: subscriptions as deltas, removals, resumption, and per-change cost."""

from __future__ import annotations

import pytest
from xds_client import AdsClient, mesh, names_of, publish, until

from xds_server import resource_types as rt
from xds_server.snapshot import Snapshot

pytestmark = pytest.mark.timeout(30)


def metric(server, name: str, **labels) -> float:
    return server.registry.get_sample_value(name, labels) or 0.0


async def test_subscribe_and_unsubscribe_endpoints(xds):
    publish(xds.cache, mesh({"a": [1], "b": [2]}))
    c = AdsClient(xds.test_port, delta=True)
    try:
        await c.delta_req(rt.ENDPOINT, subscribe=["a"])
        eds = await c.recv()
        assert names_of(eds) == ["a"] and all(r.version for r in eds.resources)
        await c.ack(eds)
        await c.delta_req(rt.ENDPOINT, subscribe=["b"])
        eds = await c.recv()
        assert names_of(eds) == ["b"]  # only the new name
        await c.ack(eds)
        await c.delta_req(rt.ENDPOINT, unsubscribe=["a"])
        await until(lambda: xds.clients()[0].types[rt.ENDPOINT].names == {"b"})
        # both change: the client only hears about b now
        publish(xds.cache, mesh({"a": [5], "b": [6]}))
        eds = await c.recv()
        assert names_of(eds) == ["b"]
    finally:
        await c.close()


async def test_wildcard_clusters_and_removal_in_removed_resources(xds):
    publish(xds.cache, mesh({"a": [1], "b": [2]}))
    c = AdsClient(xds.test_port, delta=True)
    try:
        await c.delta_req(rt.CLUSTER)  # an empty first subscription is a wildcard
        cds = await c.recv()
        assert names_of(cds) == ["a", "b"] and not cds.removed_resources
        await c.ack(cds)
        await c.delta_req(rt.ENDPOINT, subscribe=["a", "b"])
        await c.ack(await c.recv())
        snap = publish(xds.cache, mesh({"a": [1]}))
        got = {}
        for _ in range(2):
            r = await c.recv()
            got[r.type_url] = r
            await c.ack(r)
        assert list(got[rt.CLUSTER].removed_resources) == ["b"] and not got[rt.CLUSTER].resources
        assert list(got[rt.ENDPOINT].removed_resources) == ["b"]
        assert got[rt.CLUSTER].system_version_info == snap.version
        assert await xds.wait_for_ack(snap.version, timeout=2)
    finally:
        await c.close()


async def test_a_name_subscribed_again_is_sent_again_even_if_unchanged(xds):
    publish(xds.cache, mesh({"a": [1]}))
    c = AdsClient(xds.test_port, delta=True)
    try:
        await c.delta_req(rt.ENDPOINT, subscribe=["a"])
        await c.ack(await c.recv())
        await c.delta_req(rt.ENDPOINT, unsubscribe=["a"])
        await c.delta_req(rt.ENDPOINT, subscribe=["a"])
        assert names_of(await c.recv()) == ["a"]
    finally:
        await c.close()


async def test_reconnect_with_initial_resource_versions_gets_only_the_difference(xds):
    publish(xds.cache, mesh({"a": [1], "b": [2], "c": [3]}))
    c = AdsClient(xds.test_port, delta=True)
    await c.delta_req(rt.CLUSTER)
    first = await c.recv()
    held = {r.name: r.version for r in first.resources}
    await c.ack(first)
    await c.settled(xds)
    await c.close()
    await until(lambda: not xds.clients())  # the server has dropped the old stream
    # while it was away: b changed, c went, d came
    publish(xds.cache, mesh({"a": [1], "b": [2], "d": [4]}, timeouts={"b": 9}))
    c2 = AdsClient(xds.test_port, delta=True)
    try:
        await c2.delta_req(rt.CLUSTER, initial=held)
        resp = await c2.recv()
        assert names_of(resp) == ["b", "d"]
        assert list(resp.removed_resources) == ["c"]
    finally:
        await c2.close()


async def test_nack_is_not_resent_and_the_next_snapshot_is(xds):
    publish(xds.cache, mesh({"a": [1]}))
    c = AdsClient(xds.test_port, delta=True)
    try:
        await c.delta_req(rt.ENDPOINT, subscribe=["a"])
        await c.ack(await c.recv())
        publish(xds.cache, mesh({"a": [2]}))
        rejected = await c.recv()
        await c.nack(rejected, "bad endpoint")
        stream = await c.settled(xds)
        assert stream.types[rt.ENDPOINT].pending is None  # the rejected content is not offered again
        third = publish(xds.cache, mesh({"a": [3]}))
        again = await c.recv()  # the first response since the rejected one
        assert again.system_version_info == third.version
        assert names_of(again) == ["a"] and again.nonce != rejected.nonce
    finally:
        await c.close()


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
async def test_one_model_change_in_a_large_mesh(xds, delta):
    """Delta sends one resource for a one-model change; SotW resends the whole subscription."""
    n = 200
    clusters = {f"m{i}": [1000 + i] for i in range(n)}
    publish(xds.cache, mesh(clusters))
    c = AdsClient(xds.test_port, delta=delta)
    names = sorted(clusters)
    try:
        if delta:
            await c.delta_req(rt.ENDPOINT, subscribe=names)
        else:
            await c.sotw(rt.ENDPOINT, names)
        await c.ack(await c.recv(), names)
        clusters["m7"] = [9]
        publish(xds.cache, mesh(clusters))
        resp = await c.recv()
        assert len(names_of(resp)) == (1 if delta else n)
    finally:
        await c.close()


def test_snapshot_entries_decode_to_the_messages_and_are_reused():
    from envoy.service.discovery.v3 import discovery_pb2

    res = mesh({"a": [1], "b": [2]})
    snap = Snapshot.build(res)
    body = snap.sotw_body(rt.CLUSTER)
    decoded = discovery_pb2.DiscoveryResponse.FromString(body)
    assert names_of(decoded) == ["a", "b"]
    delta = discovery_pb2.DeltaDiscoveryResponse.FromString(
        b"".join(r.delta_entry for r in snap.get(rt.CLUSTER).values()))
    assert [(r.name, r.version) for r in delta.resources] == [
        (n, snap.get(rt.CLUSTER)[n].version) for n in ("a", "b")]
    # same content → same version; a change → a new version
    assert Snapshot.build(mesh({"a": [1], "b": [2]})).version == snap.version
    assert Snapshot.build(mesh({"a": [1], "b": [3]})).version != snap.version
    # a message object carried over is not serialised again
    again = Snapshot.build(res, previous=snap)
    assert again.get(rt.CLUSTER)["a"] is snap.get(rt.CLUSTER)["a"]


async def test_after_a_reconnect_hosts_still_routed_stay_until_routes_move(xds):
    from xds_client import decode

    publish(xds.cache, mesh({"rt": [1]}, routes={"m": "rt"}))
    c = AdsClient(xds.test_port, delta=True)
    held: dict[str, dict[str, str]] = {}
    for t, names in ((rt.CLUSTER, None), (rt.ENDPOINT, ["rt"]), (rt.ROUTE, ["r"])):
        await c.delta_req(t, names)
        resp = await c.recv()
        held[t] = {r.name: r.version for r in resp.resources}
        await c.ack(resp)
    await c.close()
    c2 = AdsClient(xds.test_port, delta=True)
    try:
        for t, names in ((rt.CLUSTER, None), (rt.ENDPOINT, ["rt"]), (rt.ROUTE, ["r"])):
            await c2.delta_req(t, names, initial=held[t])
        # the new stream has taken what the client holds from the snapshot it was connected with.
        # (The old stream, still listed until its handler ends, has all these types too: waiting on
        # any stream let the publish below race the new stream's first requests.)
        await c2.settled(xds)
        publish(xds.cache, mesh({"rt": [2]}, routes={"m": "rt", "n": "rt"}))
        first = await c2.recv()
        while first.type_url != rt.ENDPOINT:  # the empty first answers of wildcard types
            await c2.ack(first)
            first = await c2.recv()
        ports = [e.endpoint.address.socket_address.port_value
                 for loc in decode(first, "rt").endpoints for e in loc.lb_endpoints]
        assert ports == [2, 1]
    finally:
        await c2.close()


async def test_a_name_subscribed_while_a_response_is_in_flight_is_still_sent(xds):
    publish(xds.cache, mesh({"a": [1], "b": [2]}))
    c = AdsClient(xds.test_port, delta=True)
    try:
        await c.delta_req(rt.ENDPOINT, subscribe=["a"])
        first = await c.recv()
        await c.delta_req(rt.ENDPOINT, subscribe=["b"])  # before the ACK of the first response
        await until(lambda: "b" in xds.clients()[0].types[rt.ENDPOINT].names)
        await c.ack(first)
        second = await c.recv()
        assert names_of(second) == ["b"]
        await c.ack(second)
        publish(xds.cache, mesh({"a": [1], "b": [3]}))  # a later change of b alone is noticed
        assert names_of(await c.recv()) == ["b"]
    finally:
        await c.close()


async def test_a_subscription_change_on_an_older_nonce_is_not_an_answer_to_the_response_in_flight(xds):
    """Envoy sends a subscription change with the nonce of the last response it processed."""
    first_snap = publish(xds.cache, mesh({"a": [1], "b": [2]}))
    c = AdsClient(xds.test_port, delta=True)
    try:
        await c.delta_req(rt.ENDPOINT, subscribe=["a"])
        first = await c.recv()
        await c.ack(first)
        second_snap = publish(xds.cache, mesh({"a": [3], "b": [2]}))
        second = await c.recv()
        assert names_of(second) == ["a"]
        # b is asked for before the client has read the second response; then it rejects that
        await c.delta_req(rt.ENDPOINT, subscribe=["b"], nonce=first.nonce)
        await c.nack(second, "bad endpoint")
        stream = await c.settled(xds)
        eds = stream.types[rt.ENDPOINT]
        assert eds.acked_version == first_snap.version  # not the rejected second
        assert eds.known == {"a": first_snap.get(rt.ENDPOINT)["a"].version}
        assert (eds.nack_count, eds.last_error) == (1, "bad endpoint")
        assert metric(xds, "msm_xds_stale_requests_total", type="eds") == 1
        assert not await xds.wait_for_ack(second_snap.version, timeout=0)
        # b, asked for while the rejected response was in flight, is still sent
        third = await c.recv()
        assert "b" in names_of(third)
        await c.ack(third)
        while any(ts.pending for ts in (await c.settled(xds)).types.values()):
            await c.ack(await c.recv())  # a's old hosts go once routes could move
        assert await xds.wait_for_ack(second_snap.version, timeout=0)
    finally:
        await c.close()


async def test_a_cluster_the_client_still_holds_gets_its_endpoints_after_a_newer_snapshot_dropped_it(xds):
    """Envoy creates a cluster from a CDS response, then subscribes to its endpoints; if a newer
    snapshot (a burst of publishes) no longer has that cluster, the client still holds it (make
    before break) and it stays warming until its endpoints come: they must come, from the
    snapshot the cluster came from, not after Envoy's 15 s initial-fetch timeout."""
    publish(xds.cache, mesh({"x": [1], "y": [2]}, routes={"m": "x"}))
    c = AdsClient(xds.test_port, delta=True)
    try:
        await c.delta_req(rt.CLUSTER)  # wildcard, as Envoy's CDS is
        cds = await c.recv()
        assert names_of(cds) == ["x", "y"]
        await c.delta_req(rt.ROUTE, subscribe=["r"])  # the routes it uses name x
        publish(xds.cache, mesh({"y": [2]}, routes={"m": "y"}))  # x gone a moment later
        await c.ack(cds)
        await c.delta_req(rt.ENDPOINT, subscribe=["x", "y"])  # Envoy asks for what it created
        eds = await c.recv()
        while "x" not in names_of(eds):
            await c.ack(eds)
            eds = await c.recv(timeout=2)
        (x,) = [r for r in eds.resources if r.name == "x"]
        assert x.version
    finally:
        await c.close()


async def test_an_explicit_wildcard_subscription_comes_and_goes_beside_named_ones(xds):
    """``*`` subscribes to every resource of the type beside the names asked for; unsubscribing
    ``*`` leaves the names. Each response decodes whole with several resources in it."""
    publish(xds.cache, mesh({"a": [1], "b": [2], "c": [3]}))
    c = AdsClient(xds.test_port, delta=True)
    try:
        await c.delta_req(rt.ENDPOINT, subscribe=["a", "b"])
        eds = await c.recv()
        assert names_of(eds) == ["a", "b"]
        await c.ack(eds)
        await c.delta_req(rt.ENDPOINT, subscribe=["*"])
        eds = await c.recv()
        assert names_of(eds) == ["c"]  # everything, of which the client lacked c
        await c.ack(eds)
        await c.delta_req(rt.ENDPOINT, unsubscribe=["*"])
        stream = await c.settled(xds)
        assert not stream.types[rt.ENDPOINT].wildcard and stream.types[rt.ENDPOINT].names == {"a", "b"}
        moved = publish(xds.cache, mesh({"a": [4], "b": [2], "c": [5]}))
        # a's change (its old and new hosts first, while routes may still name the old: make
        # before break), never c's: c is no longer subscribed
        for _ in range(3):
            eds = await c.recv()
            assert (names_of(eds), list(eds.removed_resources)) == (["a"], [])
            await c.ack(eds)
            await c.settled(xds)
            if await xds.wait_for_ack(moved.version, timeout=0):
                break
        assert await xds.wait_for_ack(moved.version, timeout=0)
    finally:
        await c.close()


async def test_a_new_cluster_keeps_its_endpoints_to_come_while_its_cds_response_is_in_flight(xds):
    """As above, with endpoints already subscribed for another cluster, as Envoy's are: the stream
    looks at endpoints while the CDS response that brings x is in flight, and must not forget
    where x's endpoints come from then (x is not held yet; it is once that response is applied)."""
    publish(xds.cache, mesh({"y": [2]}, routes={"m": "y"}))
    c = AdsClient(xds.test_port, delta=True)
    try:
        await c.delta_req(rt.CLUSTER)
        await c.ack(await c.recv())
        await c.delta_req(rt.ENDPOINT, subscribe=["y"])
        await c.ack(await c.recv())
        publish(xds.cache, mesh({"x": [1], "y": [2]}, routes={"m": "x"}))
        cds = await c.recv()
        assert names_of(cds) == ["x"]
        await c.delta_req(rt.ROUTE, subscribe=["r"])  # its routes are in flight meanwhile
        rds = await c.recv()
        assert rds.type_url == rt.ROUTE
        await c.settled(xds)  # the stream has looked at endpoints while x's CDS is in flight
        publish(xds.cache, mesh({"y": [2]}, routes={"m": "y"}))  # x gone before it was applied
        await c.settled(xds)
        await c.ack(cds)
        await c.delta_req(rt.ENDPOINT, subscribe=["x"])  # Envoy asks for what it created
        eds = await c.recv()
        assert names_of(eds) == ["x"]
    finally:
        await c.close()
