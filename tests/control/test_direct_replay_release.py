"""A held request is released for a direct replay the moment its copy's load returns, once the
gateway holds a view that listed the copy's instance among its runtime's (so it is in the
runtime's direct cluster), without a view that routes to the copy; never for a request whose
copies failed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from test_cold_start import MB, Gateway, Runtime, ctl_metrics

from placement.control import controller as controller_module
from placement.control.activator import DirectCopy
from placement.control.controller import Controller
from placement.engine.clock import MonotonicClock
from placement.engine.engine import Engine
from placement.engine.model_types import DesiredModel, InstanceInfo
from xds_server.mesh_view import ActivatorEndpoint, MeshView

TOKEN = "tok"


class AckingGateway(Gateway):
    """A ViewPublisher whose gateway ACKs a version only when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.acked: set[str] = set()
        self.ack_changed = asyncio.Event()

    def ack(self, version: str) -> None:
        self.acked.add(version)
        self.ack_changed.set()

    async def wait_for_ack(self, version: str, timeout: float) -> bool:
        while version not in self.acked:
            self.ack_changed.clear()
            await self.ack_changed.wait()
        return True


def routed_on(view: MeshView, model: str) -> set[str]:
    return {cp.instance for rev in view.models[model].revisions for cp in rev.copies}


async def until(cond) -> None:
    for _ in range(1000):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("not within 5 s")


async def settle() -> None:
    """Let every task that was woken run to its next wait (no wall-clock time involved)."""
    for _ in range(50):
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def running(gw: Gateway, rt: Runtime, token: str = TOKEN, **kw) -> AsyncIterator[Controller]:
    """A started controller of one instance, i0, and one model, m; stopped on the way out."""
    ctl = Controller(Engine(MonotonicClock()), gw, {},
                     ActivatorEndpoint("127.0.0.1", 1, 2, replay_token=token), tick_interval=0.01, **kw)
    ctl.add_instance(InstanceInfo("i0", "rt", "10.1.2.3", 9000, 9100, 100 * MB), rt, {})
    ctl.set_desired([DesiredModel("m", "m__isvc-1", "rt", "sklearn", "/m", MB)], {})
    await ctl.start()
    try:
        yield ctl
    finally:
        gw.hold.set()
        await ctl.stop()


async def held(ctl: Controller) -> asyncio.Task:
    """A cold request for m, held once its load is under way."""
    waiter = asyncio.create_task(ctl.ensure_ready("m", 10, "m__isvc-1"))
    await until(lambda: ctl.engine.model_status("m").loading_copies)
    return waiter


async def test_released_to_the_copy_when_its_load_returns_without_waiting_for_routes_to_it() -> None:
    gw, rt = AckingGateway(), Runtime()
    async with running(gw, rt) as ctl:
        (listed, view), = gw.views  # the first view lists i0 among rt's instances
        assert [i.instance for i in view.runtime_instances["rt"]] == ["i0"]
        gw.ack(listed)
        waiter = await held(ctl)
        gw.hold.clear()  # no view after this one is published: none will route to the copy
        rt.release.set()
        got = await asyncio.wait_for(waiter, 5)
        assert got == DirectCopy(TOKEN, "10.1.2.3:9000", "10.1.2.3:9100")
        assert not routed_on(gw.views[-1][1], "m")
        assert ctl.engine.model_status("m").ready_copies == 1
        assert 'msm_cold_replays_total{path="direct"} 1.0' in ctl_metrics(ctl)


async def test_not_released_before_the_gateway_holds_the_view_that_listed_the_instance() -> None:
    gw, rt = AckingGateway(), Runtime()
    async with running(gw, rt) as ctl:
        (listed, _), = gw.views
        waiter = await held(ctl)
        rt.release.set()
        # loaded, and later views published, but the gateway has ACKed nothing: Envoy may not
        # have the copy's instance in the cluster yet
        await until(lambda: gw.views and routed_on(gw.views[-1][1], "m") == {"i0"})
        await settle()
        assert not waiter.done()
        # (with routes to the copy published meanwhile, it waits for their ACK as before)
        for version, _ in gw.views:
            gw.ack(version)
        assert await asyncio.wait_for(waiter, 5) is None
        assert listed in gw.acked


async def test_an_instance_is_reachable_once_the_view_that_listed_it_is_acked() -> None:
    gw, rt = AckingGateway(), Runtime()
    async with running(gw, rt) as ctl:
        (listed, _), = gw.views
        waiter = await held(ctl)
        gw.ack(listed)  # while the load runs
        await settle()
        rt.release.set()
        assert isinstance(await asyncio.wait_for(waiter, 5), DirectCopy)


async def test_without_a_token_the_request_waits_for_routes_to_the_copy() -> None:
    gw, rt = AckingGateway(), Runtime()
    async with running(gw, rt, token="") as ctl:
        assert gw.views[0][1].runtime_instances == {}  # without a token, no instances in the view
        gw.ack(gw.version)
        waiter = await held(ctl)
        rt.release.set()
        await until(lambda: routed_on(gw.views[-1][1], "m") == {"i0"})
        await settle()
        assert not waiter.done()  # the view that routes to the copy is not ACKed yet
        gw.ack(gw.version)
        assert await asyncio.wait_for(waiter, 5) is None
        assert 'msm_cold_replays_total{path="routes"} 1.0' in ctl_metrics(ctl)


async def test_a_failed_over_request_is_never_replayed_directly() -> None:
    gw, rt = Gateway(), Runtime()
    rt.release.set()

    async def recheck(ids: frozenset[str]) -> frozenset[str]:
        return frozenset()  # the instance answered: the request goes back by the routes

    async with running(gw, rt, recheck=recheck) as ctl:
        assert isinstance(await ctl.ensure_ready("m", 10, "m__isvc-1"), DirectCopy)
        assert await ctl.ensure_ready("m", 10, "m__isvc-1", failed_over=True) is None


async def test_a_copy_on_an_instance_gone_is_not_named() -> None:
    gw, rt = Gateway(), Runtime()
    rt.release.set()
    async with running(gw, rt) as ctl:
        assert isinstance(await ctl.ensure_ready("m", 10, "m__isvc-1"), DirectCopy)
        ctl.remove_instance("i0")
        assert ctl._direct_copy("m", "m__isvc-1") is None


async def test_the_view_that_routes_to_the_copy_waits_for_the_replays_its_load_released(monkeypatch) -> None:
    """Publishing beside the replays (this process's loop, the gateway, the cores) slowed them:
    the copy's routes follow once each released replay has reported its answer."""
    monkeypatch.setattr(controller_module, "REPLAY_FIRST_S", 30.0)
    gw, rt = Gateway(), Runtime()
    async with running(gw, rt) as ctl:
        waiters = [asyncio.create_task(ctl.ensure_ready("m", 10, "m__isvc-1")) for _ in range(2)]
        await until(lambda: ctl.engine.model_status("m").loading_copies)
        rt.release.set()
        first, second = [await asyncio.wait_for(w, 5) for w in waiters]
        assert isinstance(first, DirectCopy) and isinstance(second, DirectCopy)
        await settle()
        assert not routed_on(gw.views[-1][1], "m")
        first.finished()
        await settle()
        assert not routed_on(gw.views[-1][1], "m")  # one replay is still under way
        second.finished()
        await until(lambda: routed_on(gw.views[-1][1], "m") == {"i0"})


async def test_a_replay_that_never_reports_delays_the_routes_by_a_bounded_time() -> None:
    gw, rt = Gateway(), Runtime()
    async with running(gw, rt) as ctl:
        waiter = await held(ctl)
        rt.release.set()
        assert isinstance(await asyncio.wait_for(waiter, 5), DirectCopy)  # never finished()
        await until(lambda: routed_on(gw.views[-1][1], "m") == {"i0"})


def test_msm_status_says_how_many_cold_requests_went_straight_to_their_copy() -> None:
    from msm.status_text import format_status

    def gateway_lines(activator: dict) -> list[str]:
        text = format_status({"gateway": {"clients": [], "activator": activator}})
        return [line for line in text.splitlines() if "activator" in line]

    assert gateway_lines({"activations": 7, "direct_replays": 5}) == [
        "  cold-start requests handled by the activator: 7 (5 replayed straight to the copy just loaded)"]
    assert gateway_lines({"activations": 7, "direct_replays": 0}) == [
        "  cold-start requests handled by the activator: 7"]


class ForgetfulGateway(Gateway):
    """A ViewPublisher that, as the xDS cache does, remembers only its latest versions: an older
    one can no longer be waited for."""

    async def wait_for_ack(self, version: str, timeout: float) -> bool:
        return version == self.version


async def test_an_instance_listed_long_ago_is_still_reachable_once_its_version_is_forgotten() -> None:
    """Seen live: a held request waited for the ACK of the view that first listed its instance,
    minutes of publishes earlier; the cache had forgotten it, and the request got 503 ("the gateway
    did not acknowledge the new routes in time")."""
    gw, rt = ForgetfulGateway(), Runtime()
    rt.release.set()
    async with running(gw, rt) as ctl:
        first = gw.version
        ctl.set_desired([DesiredModel("m", "m__isvc-1", "rt", "sklearn", "/m", MB),
                         DesiredModel("n", "n__isvc-1", "rt", "sklearn", "/n", MB)], {})
        await until(lambda: gw.version != first and "n" in gw.views[-1][1].models)
        got = await ctl.ensure_ready("m", 10, "m__isvc-1")
        assert isinstance(got, DirectCopy), got
