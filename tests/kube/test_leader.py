"""Leader election with a Lease on a real API server: one leader at a time; a stopped leader
hands over at once; a dead one (no release) after the lease duration; and the control plane's
follower protocol: the leader waits for its followers' gateways before it says routes are in."""

from __future__ import annotations

import asyncio
import datetime
import threading
import time

import pytest
from kube_env import api_client
from kubernetes import client
from kubernetes.client.rest import ApiException

from msm.xds_stack import FOLLOWER_TTL_S, XdsStack
from placement.kube.leader import LeaseElector
from placement.local.apiserver import ApiServer
from xds_server.mesh_view import MeshView, Model, Revision
from xds_server.translate import GatewayOptions

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]
NS = "msm-leader-test"


class Candidate:
    def __init__(self, api: client.ApiClient, name: str, lease: str) -> None:
        self.events: list[str] = []
        self.elector = LeaseElector(api, NS, lease, name, on_started_leading=self.started,
                                    on_stopped_leading=self.stopped, admin_url=f"http://{name}:1",
                                    lease_s=3.0, renew_deadline_s=2.0, retry_s=0.2)

    async def started(self) -> None:
        self.events.append("lead")

    async def stopped(self) -> None:
        self.events.append("stop")


async def until(pred, timeout: float) -> float:
    started = time.monotonic()
    while not pred():
        assert time.monotonic() - started < timeout, "timed out"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def namespace(api: client.ApiClient) -> None:
    try:
        client.CoreV1Api(api).create_namespace({"metadata": {"name": NS}})
    except ApiException as e:
        if e.status != 409:
            raise


async def test_one_leader_a_stopped_one_hands_over_at_once_a_dead_one_after_the_lease(
        apiserver: ApiServer) -> None:
    with api_client(apiserver) as api:
        namespace(api)
        a, b = Candidate(api, "a", "handover"), Candidate(api, "b", "handover")
        await a.elector.start()
        await until(lambda: a.elector.leading, 10)
        await b.elector.start()
        try:
            await asyncio.sleep(1.0)  # several rounds: b sees a renewing and never takes over
            assert a.events == ["lead"] and b.events == [] and b.elector.leader == "a"
            assert b.elector.leader_admin == "http://a:1"
            await a.elector.stop()  # graceful: releases the Lease
            assert a.events == ["lead", "stop"]
            took = await until(lambda: b.elector.leading, 10)
            assert took < 1.5  # a retry or two, not the lease duration
            lease = client.CoordinationV1Api(api).read_namespaced_lease("handover", NS)
            assert lease.spec.holder_identity == "b" and lease.spec.lease_transitions == 1
            # b dies without releasing (its loop cancelled, the Lease left as it was)
            assert b.elector._task is not None
            b.elector._task.cancel()
            c = Candidate(api, "c", "handover")
            await c.elector.start()
            try:
                await asyncio.sleep(1.0)
                assert not c.elector.leading  # b's Lease still runs as c observes it
                took = await until(lambda: c.elector.leading, 10)
                assert 1.0 + took >= 3.0 - 0.3  # not before the lease duration, as c saw it
            finally:
                await c.elector.stop()
        finally:
            b.elector.leading = False  # already cancelled above: nothing to release
            await b.elector.stop()


async def test_a_leader_that_cannot_renew_steps_down(apiserver: ApiServer) -> None:
    with api_client(apiserver) as api:
        namespace(api)
        a = Candidate(api, "a", "lost")
        await a.elector.start()
        try:
            await until(lambda: a.elector.leading, 10)
            # another writer takes the Lease over (as after a partition): a's renewals now fail
            coord = client.CoordinationV1Api(api)
            lease = coord.read_namespaced_lease("lost", NS)
            lease.spec.holder_identity = "intruder"
            coord.replace_namespaced_lease("lost", NS, lease)

            async def keep_renewing_as_intruder() -> None:
                while True:
                    lease = await asyncio.to_thread(coord.read_namespaced_lease, "lost", NS)
                    lease.spec.holder_identity = "intruder"
                    lease.spec.lease_duration_seconds = 3
                    lease.spec.renew_time = datetime.datetime.now(datetime.UTC)
                    await asyncio.to_thread(coord.replace_namespaced_lease, "lost", NS, lease)
                    await asyncio.sleep(0.2)

            intruder = asyncio.create_task(keep_renewing_as_intruder())
            try:
                took = await until(lambda: not a.elector.leading, 10)
                assert a.events == ["lead", "stop"]
                assert took < 2.0 + 1.0  # the renew deadline, not the lease duration
            finally:
                intruder.cancel()
                await asyncio.gather(intruder, return_exceptions=True)
        finally:
            await a.elector.stop()


async def test_timings_that_cannot_work_are_refused() -> None:
    with pytest.raises(ValueError, match="retry < renew deadline < lease"):
        async def nothing() -> None:
            return None

        LeaseElector(client.ApiClient(), NS, "x", "a", on_started_leading=nothing, on_stopped_leading=nothing,
                     lease_s=5, renew_deadline_s=6, retry_s=1)


async def test_the_leader_says_routes_are_in_only_when_its_followers_gateways_hold_them() -> None:
    stack = XdsStack(GatewayOptions(), lambda: {})
    v1 = await stack.publish(MeshView.of([Model("m", (Revision("m__1"),))]))
    v2 = await stack.publish(MeshView.of([Model("m", (Revision("m__2"),))]))
    assert stack.everyone_holds(v2)  # no follower, no gateway of its own: nothing to wait for
    stack.mesh_view_json({"replica": "f", "held": v1, "gateways": "1"})
    assert stack.everyone_holds(v1) and not stack.everyone_holds(v2)
    assert not await stack.wait_for_ack(v2, timeout=0.3)
    stack.mesh_view_json({"replica": "f", "held": v2, "gateways": "1"})
    assert await stack.wait_for_ack(v2, timeout=1.0)
    assert stack.routed_models() == {"m"}
    stack.mesh_view_json({"replica": "g", "held": "", "gateways": "x"})  # a follower with nothing yet
    assert not stack.everyone_holds(v2)
    stack.followers["g"] = (time.monotonic() - FOLLOWER_TTL_S - 1, "", 0)  # gone quiet: it no longer counts
    assert stack.everyone_holds(v2) and "g" not in stack.followers
    stack.serve_view = False  # a follower's stack answers no one
    assert stack.mesh_view_json({"replica": "h"}) is None and "h" not in stack.followers


async def test_a_leader_stopped_while_renewing_still_releases_the_lease(apiserver: ApiServer) -> None:
    with api_client(apiserver) as api:
        namespace(api)
        a = Candidate(api, "a", "inflight")
        real = a.elector._try_acquire_or_renew
        renewing = threading.Event()

        def slow_round() -> bool:  # each round's API call takes a while, as on a busy API server
            renewing.set()
            time.sleep(0.5)
            return real()

        a.elector._try_acquire_or_renew = slow_round  # type: ignore[method-assign]
        await a.elector.start()
        await until(lambda: a.elector.leading, 10)
        renewing.clear()
        await until(renewing.is_set, 5)  # a renewal is in flight now
        await a.elector.stop()
        await asyncio.sleep(1.0)  # had the renewal landed after the release, it would hold the Lease again
        lease = client.CoordinationV1Api(api).read_namespaced_lease("inflight", NS)
        assert not lease.spec.holder_identity and lease.spec.lease_duration_seconds == 1
