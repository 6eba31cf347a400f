"""State-of-the-world ADS against a client that speaks the protocol as Envoy does."""

from __future__ import annotations

import asyncio
import time

import pytest
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2
from xds_client import AdsClient, cla, mesh, names_of, node, publish

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
    """SotW responses of clusters carry the whole set: b is left out, and once the client ACKs
    that, the server no longer counts b among what it holds (a later b is new to it, and sent)."""
    publish(xds.cache, mesh({"a": [1], "b": [2]}))
    c = AdsClient(xds.test_port)
    try:
        await c.sotw(rt.CLUSTER)
        await c.ack(await c.recv())
        publish(xds.cache, mesh({"a": [1]}))
        cds = await c.recv()
        assert names_of(cds) == ["a"]
        await c.ack(cds)
        stream = await c.settled(xds)
        assert set(stream.types[rt.CLUSTER].known) == {"a"}
        assert stream.describe()["types"]["cds"]["resources"] == 1
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


async def test_a_streams_description_and_counters_say_what_it_holds_and_what_it_rejected(xds):
    """What ``msm status`` shows of a client: its claims (bounded), the stream's kind and peer,
    and per type what it holds, what it subscribed to, what is in flight and what it rejected
    (two NACKs counted, the error cleared by the next ACK); the response counters by type."""
    started = time.time()
    publish(xds.cache, mesh({"a": [1], "b": [2]}))
    long_id = "gw-" + "n" * 300
    c = AdsClient(xds.test_port, node_id=long_id, cluster="c" * 300)
    try:
        await c.sotw(rt.CLUSTER)
        cds = await c.recv()
        await c.nack(cds, "first")
        publish(xds.cache, mesh({"a": [1], "b": [3]}))  # a new version of the clusters: rejected too
        cds = await c.recv()
        await c.nack(cds, "second")
        stream = await c.settled(xds)
        assert stream.describe()["types"]["cds"]["nacks"] == 2
        assert stream.describe()["types"]["cds"]["last_error"] == "second"
        good = publish(xds.cache, mesh({"a": [4], "b": [3]}))
        cds = await c.recv()
        await c.ack(cds)
        await c.sotw(rt.ENDPOINT, ["a"])
        eds = await c.recv()
        await c.ack(eds, ["a"])
        d = (await c.settled(xds)).describe()
    finally:
        await c.close()
    assert (d["node_id"], d["cluster"]) == (long_id[:256], "c" * 256)
    assert (d["variant"], d["kind"], d["authenticated"]) == ("sotw", "envoy", "")
    assert d["peer"].startswith("ipv4:127.0.0.1:") and started <= d["connected_at"] <= time.time()
    assert d["types"] == {
        "cds": {"acked_version": good.version, "resources": 2, "subscription": "*", "pending": None,
                "nacks": 2, "last_error": None},
        "eds": {"acked_version": good.version, "resources": 1, "subscription": 1, "pending": None,
                "nacks": 0, "last_error": None},
    }
    assert list(d["types"]) == ["cds", "eds"]  # in xDS order
    assert metric(xds, "msm_xds_responses_total", type="cds", variant="sotw") == 3
    assert metric(xds, "msm_xds_resources_sent_total", type="cds", variant="sotw") == 6
    assert metric(xds, "msm_xds_responses_total", type="eds", variant="sotw") == 1
    assert metric(xds, "msm_xds_resources_sent_total", type="eds", variant="sotw") == 1
    size = len(eds.SerializeToString())
    assert metric(xds, "msm_xds_response_bytes_total", type="eds", variant="sotw") == size



@pytest.mark.parametrize("detail", [status_pb2.Status(code=0, message="rejected, code unset"),
                                    status_pb2.Status(code=13, message="")],
                         ids=["message-only", "code-only"])
async def test_an_error_detail_with_only_a_message_or_only_a_code_is_a_nack(xds, detail):
    """Envoy fills both; a client that fills one still rejected the response: taking it as an
    ACK would record a version the client does not hold."""
    first = publish(xds.cache, mesh({"a": [1]}))
    c = AdsClient(xds.test_port)
    try:
        await c.sotw(rt.CLUSTER)
        await c.ack(await c.recv())
        assert await xds.wait_for_ack(first.version, timeout=2)
        second = publish(xds.cache, mesh({"a": [2], "b": [3]}))
        cds = await c.recv()
        await c._write(discovery_pb2.DiscoveryRequest(type_url=rt.CLUSTER, version_info=first.version,
                                                      response_nonce=cds.nonce, error_detail=detail))
        stream = await c.settled(xds)
        assert not await xds.wait_for_ack(second.version, timeout=0)
        assert stream.types[rt.CLUSTER].acked_version == first.version
        assert metric(xds, "msm_xds_nacks_total", type="cds") == 1
    finally:
        await c.close()



async def test_a_stream_keeps_the_node_its_first_request_named(xds):
    """A later request that names another node (Envoy sends it once) changes nothing: the
    stream's identity, its cluster and the kind of snapshots it follows are its first claim's."""
    publish(xds.cache, mesh({"a": [1]}))
    c = AdsClient(xds.test_port, node_id="gw-a")
    try:
        await c.sotw(rt.CLUSTER)
        cds = await c.recv()
        other = node("router~10.0.0.1~gw.ns~ns.svc.cluster.local", c.tag, {"ISTIO_VERSION": "1.31"},
                     cluster="elsewhere")
        await c._write(discovery_pb2.DiscoveryRequest(type_url=rt.CLUSTER, version_info=cds.version_info,
                                                      response_nonce=cds.nonce, node=other))
        d = (await c.settled(xds)).describe()
        assert (d["node_id"], d["cluster"], d["kind"]) == ("gw-a", "test", "envoy")
    finally:
        await c.close()


async def test_named_endpoints_and_a_wildcard_beside_names(xds):
    """A subset of the endpoints decodes whole with several in one response; ``*`` among the
    names asks for every resource of the type."""
    snap = publish(xds.cache, mesh({"a": [1], "b": [2], "c": [3]}))
    c = AdsClient(xds.test_port)
    try:
        await c.sotw(rt.ENDPOINT, ["a", "b"])
        eds = await c.recv()
        assert (names_of(eds), eds.version_info) == (["a", "b"], snap.version)
        await c.ack(eds, ["a", "b"])
        await c.sotw(rt.ENDPOINT, ["*", "a"], version=eds.version_info, nonce=eds.nonce)
        eds = await c.recv()
        assert names_of(eds) == ["a", "b", "c"]
    finally:
        await c.close()
