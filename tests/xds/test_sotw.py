"""State-of-the-world ADS against a client that speaks the protocol as Envoy does."""

from __future__ import annotations

import asyncio

import pytest
from xds_client import AdsClient, cla, mesh, names_of, publish

from xds_server import resource_types as rt

pytestmark = pytest.mark.timeout(30)


def metric(server, name: str, **labels) -> float:
    return server.registry.get_sample_value(name, labels) or 0.0


async def test_wildcard_clusters_then_named_endpoints_with_versions_and_nonces(xds):
    snap = publish(xds.cache, mesh({"a": [1], "b": [2]}))
    c = AdsClient(xds.test_port)
    try:
        await c.sotw(rt.CLUSTER)
        cds = await c.recv()
        assert cds.type_url == rt.CLUSTER and cds.version_info == snap.version and cds.nonce
        assert names_of(cds) == ["a", "b"]
        await c.ack(cds)
        await c.sotw(rt.ENDPOINT, ["a"])
        eds = await c.recv()
        assert names_of(eds) == ["a"]  # only what was asked for
        assert eds.nonce != cds.nonce
        await c.ack(eds, ["a"])
        stream = await c.settled(xds)  # both ACKs read, and the server has nothing more to send
        assert not any(ts.pending for ts in stream.types.values())  # an ACK is not answered
        assert await xds.wait_for_ack(snap.version, timeout=0)
        assert metric(xds, "msm_xds_acks_total", type="cds") == 1
        assert metric(xds, "msm_xds_connected_clients", variant="sotw") == 1
        # and so the next response is the next snapshot's
        moved = publish(xds.cache, mesh({"a": [3], "b": [2]}))
        eds = await c.recv()
        assert (eds.type_url, eds.version_info, names_of(eds)) == (rt.ENDPOINT, moved.version, ["a"])
    finally:
        await c.close()


async def test_a_name_that_does_not_exist_yet_is_sent_when_it_appears(xds):
    publish(xds.cache, mesh({"a": [1]}))
    c = AdsClient(xds.test_port)
    try:
        await c.sotw(rt.ENDPOINT, ["later"])
        stream = await c.settled(xds)
        assert stream.types[rt.ENDPOINT].pending is None  # no empty response for a name not there
        resources = mesh({"a": [1]})
        resources[rt.ENDPOINT]["later"] = cla("later", 7)
        publish(xds.cache, resources)
        eds = await c.recv()  # the first response of the stream
        assert names_of(eds) == ["later"]
    finally:
        await c.close()


async def test_nack_keeps_the_last_good_version_and_is_not_resent_in_a_loop(xds):
    first = publish(xds.cache, mesh({"a": [1]}))
    c = AdsClient(xds.test_port)
    try:
        await c.sotw(rt.LISTENER)
        lds = await c.recv()
        await c.ack(lds)
        assert await xds.wait_for_ack(first.version, timeout=2)
        # the next snapshot changes the listener; the client rejects it
        bad = mesh({"a": [1]})
        bad[rt.LISTENER]["l"].address.socket_address.port_value = 1
        bad_snap = publish(xds.cache, bad)
        rejected = await c.recv()
        assert rejected.version_info == bad_snap.version
        await c.nack(rejected, "port 1 is privileged", last_good=first.version)
        stream = await c.settled(xds)
        assert stream.types[rt.LISTENER].pending is None  # no resend of the rejected version
        assert not await xds.wait_for_ack(bad_snap.version, timeout=0)
        state = stream.describe()["types"]["lds"]
        assert state["acked_version"] == first.version
        assert state["last_error"] == "port 1 is privileged" and state["nacks"] == 1
        assert metric(xds, "msm_xds_nacks_total", type="lds") == 1
        # back to what the client holds: nothing to send, it is in sync at once
        same = publish(xds.cache, mesh({"a": [1], "b": [2]}))
        assert await xds.wait_for_ack(same.version, timeout=2)
        # a later good change is sent and taken: the first response since the rejected one
        fixed = mesh({"a": [1]})
        fixed[rt.LISTENER]["l"].address.socket_address.port_value = 10001
        good = publish(xds.cache, fixed)
        again = await c.recv()
        assert again.version_info == good.version
        await c.ack(again)
        assert await xds.wait_for_ack(good.version, type_urls=[rt.LISTENER], timeout=2)
    finally:
        await c.close()


async def test_a_request_with_a_stale_nonce_is_ignored(xds):
    publish(xds.cache, mesh({"a": [1], "b": [2]}))
    c = AdsClient(xds.test_port)
    try:
        await c.sotw(rt.CLUSTER, ["a"])
        first = await c.recv()
        await c.ack(first, ["a"])
        publish(xds.cache, mesh({"a": [1], "b": [2]}, timeouts={"a": 5}))
        second = await c.recv()
        await c.ack(second, ["a"])
        # a request answering the first response, asking for b: stale, ignored. Nothing is in
        # flight when it arrives, so a server that took its subscription would send b at once.
        await c.sotw(rt.CLUSTER, ["a", "b"], version=first.version_info, nonce=first.nonce)
        stream = await c.settled(xds)
        cds = stream.types[rt.CLUSTER]
        assert (cds.names, cds.pending) == ({"a"}, None)
        assert metric(xds, "msm_xds_stale_requests_total", type="cds") == 1
        # the next response is the next snapshot's, and it still carries a alone
        third_snap = publish(xds.cache, mesh({"a": [1], "b": [2]}, timeouts={"a": 7}))
        third = await c.recv()
        assert (third.version_info, names_of(third)) == (third_snap.version, ["a"])
        # the same change of subscription on the current nonce is answered
        await c.sotw(rt.CLUSTER, ["a", "b"], version=third.version_info, nonce=third.nonce)
        fourth = await c.recv()
        assert names_of(fourth) == ["a", "b"]
    finally:
        await c.close()


async def test_a_stale_nonce_is_not_an_answer_to_the_response_in_flight(xds):
    first_snap = publish(xds.cache, mesh({"a": [1]}))
    c = AdsClient(xds.test_port)
    try:
        await c.sotw(rt.ENDPOINT, ["a"])
        first = await c.recv()
        await c.ack(first, ["a"])
        second_snap = publish(xds.cache, mesh({"a": [3]}))
        second = await c.recv()
        # written before the client read the second response: it repeats its ACK of the first
        await c.sotw(rt.ENDPOINT, ["a"], version=first.version_info, nonce=first.nonce)
        await c.nack(second, "bad endpoint", ["a"], last_good=first.version_info)
        stream = await c.settled(xds)
        eds = stream.types[rt.ENDPOINT]
        assert eds.acked_version == first_snap.version  # not the rejected second
        assert eds.known == {"a": first_snap.get(rt.ENDPOINT)["a"].version}
        assert (eds.nack_count, eds.last_error) == (1, "bad endpoint")
        assert metric(xds, "msm_xds_stale_requests_total", type="eds") == 1
        assert not await xds.wait_for_ack(second_snap.version, timeout=0)
    finally:
        await c.close()


async def test_removed_cluster_is_missing_from_the_next_full_response(xds):
    publish(xds.cache, mesh({"a": [1], "b": [2]}))
    c = AdsClient(xds.test_port)
    try:
        await c.sotw(rt.CLUSTER)
        await c.ack(await c.recv())
        publish(xds.cache, mesh({"a": [1]}))
        cds = await c.recv()
        assert names_of(cds) == ["a"]
    finally:
        await c.close()


async def test_endpoints_are_resent_after_their_cluster_changes(xds):
    publish(xds.cache, mesh({"a": [1]}))
    c = AdsClient(xds.test_port)
    try:
        await c.sotw(rt.CLUSTER)
        await c.ack(await c.recv())
        await c.sotw(rt.ENDPOINT, ["a"])
        await c.ack(await c.recv(), ["a"])
        # only the cluster's settings change; its endpoints are the same
        publish(xds.cache, mesh({"a": [1]}, timeouts={"a": 5}))
        cds = await c.recv()
        assert cds.type_url == rt.CLUSTER
        eds = await c.recv()
        assert eds.type_url == rt.ENDPOINT and names_of(eds) == ["a"]
    finally:
        await c.close()


async def test_many_clients_each_with_its_node_id(xds):
    snap = publish(xds.cache, mesh({"a": [1]}))
    clients = [AdsClient(xds.test_port, node_id=f"gw-{i}") for i in range(3)]
    try:
        for c in clients:
            await c.sotw(rt.CLUSTER)
        responses = [await c.recv() for c in clients]
        assert {r.version_info for r in responses} == {snap.version}
        for c, r in zip(clients[:2], responses[:2], strict=True):
            await c.ack(r)
        assert await xds.wait_for_ack(snap.version, node_id="gw-0", timeout=2)
        for c in clients:
            await c.settled(xds)
        assert await xds.wait_for_ack(snap.version, node_id="gw-1", timeout=0)
        assert not await xds.wait_for_ack(snap.version, timeout=0)  # gw-2 has not ACKed
        assert sorted(s.node_id for s in xds.clients()) == ["gw-0", "gw-1", "gw-2"]
        await clients[2].ack(responses[2])
        assert await xds.wait_for_ack(snap.version, timeout=2)
    finally:
        for c in clients:
            await c.close()


async def test_wait_for_ack_with_no_client_is_true_and_unknown_version_false(xds):
    snap = publish(xds.cache, mesh({"a": [1]}))
    assert await xds.wait_for_ack(snap.version, timeout=0)  # at once, without waiting
    assert not await xds.wait_for_ack("never-published", timeout=0)


async def test_reconnect_gets_the_current_state(xds):
    publish(xds.cache, mesh({"a": [1]}))
    c = AdsClient(xds.test_port)
    await c.sotw(rt.CLUSTER)
    first = await c.recv()
    await c.ack(first)
    await c.close()
    snap = publish(xds.cache, mesh({"a": [1], "b": [2]}))
    c2 = AdsClient(xds.test_port)
    try:
        # Envoy reconnecting sends the version it last had; SotW answers with the full state
        await c2.sotw(rt.CLUSTER, version=first.version_info)
        resp = await c2.recv()
        assert resp.version_info == snap.version and names_of(resp) == ["a", "b"]
    finally:
        await c2.close()


async def test_wait_for_ack_with_at_least_one_waits_for_a_client_to_connect_and_ack(xds):
    snap = publish(xds.cache, mesh({"a": [1]}))
    assert await xds.wait_for_ack(snap.version, timeout=0)  # nobody connected: nobody lacks it
    assert not await xds.wait_for_ack(snap.version, timeout=0, at_least_one=True)
    c = AdsClient(xds.test_port)
    try:
        waiting = asyncio.create_task(xds.wait_for_ack(snap.version, timeout=10, at_least_one=True))
        await c.sotw(rt.CLUSTER)
        await c.ack(await c.recv())
        await c.sotw(rt.ENDPOINT, ["a"])
        await c.ack(await c.recv(), ["a"])
        assert await waiting
    finally:
        await c.close()
