"""A cold request is replayed only once the gateway holds routes that send it to a copy.

The race this guards (seen live: 8 of 2,948 cold requests answered 503 by the activator just as
their model finished loading): the engine marks the copy ready as soon as the load returns, but
the view that routes to it is published a tick later. If the activator is released on the
engine's word and waits for the ACK of the snapshot *already* published, which still routes the
model to the activator, the replay comes back to the activator and is refused.
"""

from __future__ import annotations

import asyncio

from placement.control.controller import Controller
from placement.engine.clock import MonotonicClock
from placement.engine.engine import Engine
from placement.engine.model_types import DesiredModel, InstanceInfo
from xds_server.mesh_view import ActivatorEndpoint, MeshView

MB = 1024 * 1024


class Gateway:
    """A ViewPublisher whose gateway ACKs every version at once; a publish can be held."""

    def __init__(self) -> None:
        self.views: list[tuple[str, MeshView]] = []
        self.hold = asyncio.Event()
        self.hold.set()
        self.holding = asyncio.Event()

    @property
    def version(self) -> str | None:
        return self.views[-1][0] if self.views else None

    async def publish(self, view: MeshView, yield_loop: bool = False) -> str:
        if not self.hold.is_set():
            self.holding.set()
            await self.hold.wait()
        await asyncio.sleep(0.01)  # translation runs in a worker thread: a publish always yields
        if self.views and self.views[-1][1] == view:
            return self.views[-1][0]
        version = f"v{len(self.views) + 1}"
        self.views.append((version, view))
        return version

    async def wait_for_ack(self, version: str, timeout: float) -> bool:
        return any(v == version for v, _ in self.views)

    def routes_to_a_copy(self, version: str | None, model: str) -> bool:
        view = dict(self.views).get(version) if version else None
        m = view.models.get(model) if view else None
        return m is not None and any(r.copies for r in m.revisions)


class Runtime:
    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def load_model(self, model_id, model_type, model_path, model_key="", timeout=None) -> int:
        await self.release.wait()
        return MB

    async def unload_model(self, model_id, timeout=None) -> None:
        pass


async def test_the_activator_is_released_only_after_routes_to_the_copy_are_published() -> None:
    gw, rt = Gateway(), Runtime()
    engine = Engine(MonotonicClock())
    ctl = Controller(engine, gw, {}, ActivatorEndpoint("127.0.0.1", 1, 2), tick_interval=0.01)
    ctl.add_instance(InstanceInfo("i0", "rt", "127.0.0.1", 9000, 9100, 100 * MB), rt, {})
    ctl.set_desired([DesiredModel("m", "m__isvc-1", "rt", "sklearn", "/m", MB)], {})
    await ctl.start()
    try:
        waiter = asyncio.create_task(ctl.ensure_ready("m", timeout=10))
        for _ in range(500):  # the load is under way and its routes point at the activator
            if engine.model_status("m").loading_copies and gw.version is not None:
                break
            await asyncio.sleep(0.01)
        assert not gw.routes_to_a_copy(gw.version, "m")
        # a publish starts from a view built while the load is still running, and is slow (a
        # large view translates in tens of ms); the load returns meanwhile
        gw.hold.clear()
        gw.holding.clear()
        ctl.wake()
        await asyncio.wait_for(gw.holding.wait(), 5)
        rt.release.set()
        for _ in range(500):
            if engine.model_status("m").ready_copies:
                break
            await asyncio.sleep(0.01)
        gw.hold.set()  # the slow publish of the copy-less view completes and wakes the waiter
        assert await asyncio.wait_for(waiter, 5) is None
        assert gw.routes_to_a_copy(gw.version, "m"), \
            "released while the gateway still routes the model to the activator"
    finally:
        await ctl.stop()


async def test_a_model_too_large_for_every_instance_is_refused_at_once() -> None:
    gw = Gateway()
    engine = Engine(MonotonicClock())
    ctl = Controller(engine, gw, {}, ActivatorEndpoint("127.0.0.1", 1, 2), tick_interval=0.01)
    ctl.add_instance(InstanceInfo("i0", "rt", "127.0.0.1", 9000, 9100, 10 * MB), Runtime(), {})
    ctl.set_desired([DesiredModel("big", "big__isvc-1", "rt", "sklearn", "/big", 50 * MB)], {})
    await ctl.start()
    try:
        started = asyncio.get_running_loop().time()
        reason = await ctl.ensure_ready("big", timeout=60)
        assert asyncio.get_running_loop().time() - started < 5  # not after the 60 s timeout
        assert reason == f"needs {50 * MB} bytes, more than any instance of runtime 'rt' holds"
    finally:
        await ctl.stop()


def copies_on(view: MeshView, model: str) -> set[str]:
    return {cp.instance for rev in view.models[model].revisions for cp in rev.copies}


async def test_a_failed_over_request_waits_for_routes_to_a_copy_away_from_the_instances_found_down() -> None:
    """The gateway could not deliver a request to m's copy: the controller has health checking
    recheck the instance it is on. Found down, it leaves placement, and the request is released
    only once the gateway routes m to a copy elsewhere (the published view before that still
    routes it to the dead instance, which would send the replay straight back)."""
    gw = Gateway()
    runtimes = {"i0": Runtime(), "i1": Runtime()}
    for r in runtimes.values():
        r.release.set()
    engine = Engine(MonotonicClock())
    rechecked: list[frozenset[str]] = []
    ctl: Controller

    async def recheck(ids: frozenset[str]) -> frozenset[str]:
        rechecked.append(ids)
        await asyncio.sleep(0.05)  # the checks take a moment; the view meanwhile still routes there
        for iid in ids:
            ctl.remove_instance(iid)
        return ids

    ctl = Controller(engine, gw, {}, ActivatorEndpoint("127.0.0.1", 1, 2), tick_interval=0.01,
                     recheck=recheck)
    for iid, rt in runtimes.items():
        ctl.add_instance(InstanceInfo(iid, "rt", "127.0.0.1", 9000, 9100, 100 * MB), rt, {})
    ctl.set_desired([DesiredModel("m", "m__isvc-1", "rt", "sklearn", "/m", MB)], {})
    await ctl.start()
    try:
        assert await ctl.ensure_ready("m", timeout=10) is None
        (first,) = copies_on(gw.views[-1][1], "m")
        assert rechecked == []  # a cold request asks for no recheck
        assert await ctl.ensure_ready("m", 10, "m__isvc-1", failed_over=True) is None
        assert rechecked == [frozenset({first})]
        assert copies_on(gw.views[-1][1], "m") == {"i0", "i1"} - {first}
        assert 'msm_request_failovers_total{outcome="rerouted"} 1.0' in ctl_metrics(ctl)
    finally:
        await ctl.stop()


async def test_a_failed_over_request_whose_instance_answers_its_recheck_is_released_at_once() -> None:
    gw = Gateway()
    rt = Runtime()
    rt.release.set()
    engine = Engine(MonotonicClock())

    async def recheck(ids: frozenset[str]) -> frozenset[str]:
        return frozenset()  # every instance answered

    ctl = Controller(engine, gw, {}, ActivatorEndpoint("127.0.0.1", 1, 2), tick_interval=0.01,
                     recheck=recheck)
    ctl.add_instance(InstanceInfo("i0", "rt", "127.0.0.1", 9000, 9100, 100 * MB), rt, {})
    ctl.set_desired([DesiredModel("m", "m__isvc-1", "rt", "sklearn", "/m", MB)], {})
    await ctl.start()
    try:
        assert await ctl.ensure_ready("m", timeout=10) is None
        published = len(gw.views)
        assert await ctl.ensure_ready("m", 10, "m__isvc-1", failed_over=True) is None
        assert len(gw.views) == published and copies_on(gw.views[-1][1], "m") == {"i0"}
    finally:
        await ctl.stop()


def ctl_metrics(ctl: Controller) -> str:
    from prometheus_client import generate_latest
    return generate_latest(ctl._registry).decode()
