"""The controller between the engine, the runtimes and the snapshot publisher (no processes: a
runtime client double that answers like the SPI, the real engine, publisher and cache)."""

from __future__ import annotations

import asyncio

from msm.xds_stack import XdsStack
from placement.control.controller import Controller
from placement.engine.clock import FakeClock, MonotonicClock
from placement.engine.engine import Engine
from placement.engine.instance_cache import Phase
from placement.engine.model_types import DesiredModel, InstanceInfo
from xds_server.mesh_view import MeshView
from xds_server.translate import GatewayOptions

MB = 1024 * 1024


class Runtime:
    """Loads succeed (or fail with ``errors[model]``) after ``delay`` seconds; records calls."""

    def __init__(self, delay: float = 0.0, errors: dict[str, str] | None = None) -> None:
        self.delay = delay
        self.errors = errors or {}
        self.calls: list[tuple[str, str]] = []

    async def load_model(self, model_id, model_type, model_path, model_key="", timeout=None) -> int:
        self.calls.append(("load", model_id))
        await asyncio.sleep(self.delay)
        if model_id in self.errors:
            raise RuntimeError(self.errors[model_id])
        return 2 * MB

    async def unload_model(self, model_id, timeout=None) -> None:
        self.calls.append(("unload", model_id))


def desired(name: str) -> DesiredModel:
    return DesiredModel(name, f"{name}__isvc-1", "rt", "sklearn", f"/m/{name}", MB)


async def make(runtimes: dict[str, Runtime], **kw) -> tuple[Controller, Engine]:
    engine = Engine(MonotonicClock())
    stack = XdsStack(GatewayOptions(rest_port=1, grpc_port=2), dict)
    ctl = Controller(engine, stack, {}, tick_interval=0.02, **kw)
    for i, (iid, rt) in enumerate(runtimes.items()):
        ctl.add_instance(InstanceInfo(iid, "rt", "127.0.0.1", 9000 + i, 9100 + i, 100 * MB), rt, {})
    await ctl.start()
    return ctl, engine


async def test_a_cold_model_is_loaded_and_published_before_ensure_ready_returns() -> None:
    rt = Runtime(delay=0.05)
    ctl, engine = await make({"i0": rt})
    try:
        ctl.set_desired([desired("m")], {})
        assert await ctl.ensure_ready("m", timeout=5) is None
        assert rt.calls == [("load", "m__isvc-1")]
        view = engine.mesh_view()
        assert [c.instance for c in view.models["m"].revisions[0].copies] == ["i0"]
        assert ctl.publisher.version is not None
        assert await ctl.ensure_ready("nope", timeout=1) == "unknown model 'nope'"
    finally:
        await ctl.stop()


async def test_a_request_right_after_start_waits_for_the_manifests_instead_of_unknown_model() -> None:
    """After a control-plane restart the activator can be asked for a model before the manifests
    are read: that is not an "unknown model" (404 to the client) but a short wait."""
    rt = Runtime()
    ctl, _ = await make({"i0": rt})
    try:
        waiter = asyncio.create_task(ctl.ensure_ready("m", timeout=5))
        await asyncio.sleep(0.1)
        assert not waiter.done()
        ctl.set_desired([desired("m")], {})
        assert await waiter is None
        assert rt.calls == [("load", "m__isvc-1")]
    finally:
        await ctl.stop()


async def test_manifests_never_read_gives_a_clear_reason_when_the_wait_ends() -> None:
    ctl, _ = await make({"i0": Runtime()})
    try:
        assert await ctl.ensure_ready("m", timeout=0.05) == "msm has not read its manifests yet"
    finally:
        await ctl.stop()


async def test_a_failed_load_reports_the_runtime_error_then_loads_on_another_instance() -> None:
    bad, good = Runtime(errors={"m__isvc-1": "disk on fire"}), Runtime()
    ctl, engine = await make({"i0": bad})
    try:
        ctl.set_desired([desired("m")], {})
        assert await ctl.ensure_ready("m", timeout=5) == "disk on fire"  # no other instance to try
        assert engine.model_status("m").failed
        ctl.add_instance(InstanceInfo("i1", "rt", "127.0.0.1", 9001, 9101, 100 * MB), good, {})
        assert await ctl.ensure_ready("m", timeout=5) is None
        st = engine.model_status("m")
        assert good.calls == [("load", "m__isvc-1")] and bad.calls == [("load", "m__isvc-1")]
        assert st.revisions == {"m__isvc-1": {"i1": "ready"}}
        assert [(f.instance, f.error) for f in st.failures] == [("i0", "disk on fire")]
    finally:
        await ctl.stop()


async def test_quiet_ticks_do_not_rebuild_the_view_but_inputs_do() -> None:
    ctl, engine = await make({"i0": Runtime()}, idle_publish_s=60.0)
    built = 0
    original = engine.mesh_view

    def counting(*a, **kw):
        nonlocal built
        built += 1
        return original(*a, **kw)

    engine.mesh_view = counting  # type: ignore[method-assign]
    try:
        await asyncio.sleep(0.1)  # the wake-up from adding the instance is handled
        built = 0
        await asyncio.sleep(0.3)  # ~15 ticks with nothing to do
        assert built == 0
        before = ctl.publisher.version
        ctl.set_desired([desired("m")], {})
        for _ in range(100):
            if ctl.publisher.version != before:
                break
            await asyncio.sleep(0.01)
        assert built >= 1 and ctl.publisher.version != before  # the new model's routes went out
    finally:
        await ctl.stop()


# -- unloads wait for the gateway ---------------------------------------------------------------
# A copy leaves the view in the tick that decides its unload; the runtime may drop it only once
# the gateway has ACKed routes that no longer name it, else requests in flight there fail. A fake
# gateway whose ACKs the test releases by hand, and an engine on a fake clock, make every step
# of that order observable without timing windows.


class Gateway:
    """A ViewPublisher standing in for the xDS stack and Envoy: views get versions "1", "2", …;
    nothing is ACKed until the test calls ``ack(v)``, which acknowledges v and every earlier one
    (a gateway that has applied v holds no older version)."""

    def __init__(self) -> None:
        self.views: list[MeshView] = []
        self.acked = 0
        self.waits: list[tuple[int, float]] = []  # every wait_for_ack call: (version, timeout)
        self.pending: list[int] = []  # versions someone waits for right now
        self._acks: dict[int, asyncio.Event] = {}
        self.changed = asyncio.Event()  # set on every publish, wait and runtime call

    @property
    def version(self) -> str | None:
        return str(len(self.views)) if self.views else None

    async def publish(self, view: MeshView, yield_loop: bool = False) -> str:
        self.views.append(view)
        self.changed.set()
        return str(len(self.views))

    async def wait_for_ack(self, version: str, timeout: float) -> bool:
        v = int(version)
        self.waits.append((v, timeout))
        if v <= self.acked:
            return True
        self.pending.append(v)
        self.changed.set()
        try:
            async with asyncio.timeout(timeout):
                await self._acks.setdefault(v, asyncio.Event()).wait()
            return True
        except TimeoutError:
            return False
        finally:
            self.pending.remove(v)

    def ack(self, version: str | int) -> None:
        self.acked = max(self.acked, int(version))
        for v, event in self._acks.items():
            if v <= self.acked:
                event.set()

    def acked_view(self) -> MeshView | None:
        return self.views[self.acked - 1] if self.acked else None


class GatedRuntime(Runtime):
    """Records, for each unload, the last view the gateway had ACKed when the call came."""

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self.gateway = gateway
        self.unloads: list[tuple[str, MeshView | None]] = []

    async def load_model(self, model_id, model_type, model_path, model_key="", timeout=None) -> int:
        self.gateway.changed.set()
        return await super().load_model(model_id, model_type, model_path, model_key, timeout)

    async def unload_model(self, model_id, timeout=None) -> None:
        self.unloads.append((model_id, self.gateway.acked_view()))
        self.gateway.changed.set()
        await super().unload_model(model_id, timeout)


def copies_in(view: MeshView | None, revision: str) -> set[str]:
    """The instances ``view`` routes ``revision`` to."""
    if view is None:
        return set()
    return {c.instance for m in view.models.values() for r in m.revisions if r.id == revision
            for c in r.copies}


async def until(gateway: Gateway, cond, what: str, timeout: float = 10.0) -> None:
    """Wait, without polling, until ``cond()`` holds (re-checked whenever the gateway or a runtime
    sees a call); the timeout is only reached when the controller misbehaves."""
    try:
        async with asyncio.timeout(timeout):
            while not cond():
                gateway.changed.clear()
                await gateway.changed.wait()
    except TimeoutError:
        raise AssertionError(f"timed out waiting until {what}") from None


def sized(name: str, size: int = 2 * MB) -> DesiredModel:
    return DesiredModel(name, f"{name}__isvc-1", "rt", "sklearn", f"/m/{name}", size)


async def gated(capacities: dict[str, int], models: list[DesiredModel], *, drain_timeout: float = 30.0,
                loaded: dict[str, dict[str, int]] | None = None, unload_grace_s: float = 0.0,
                ) -> tuple[Controller, Engine, FakeClock, Gateway, dict[str, GatedRuntime]]:
    clock, gateway = FakeClock(), Gateway()
    engine = Engine(clock)
    ctl = Controller(engine, gateway, {}, tick_interval=0.02, drain_timeout=drain_timeout,
                     idle_publish_s=3600.0, unload_grace_s=unload_grace_s)
    ctl.set_desired(models, {})  # first, so that copies the instances already hold are adopted
    runtimes = {iid: GatedRuntime(gateway) for iid in capacities}
    for i, (iid, capacity) in enumerate(capacities.items()):
        ctl.add_instance(InstanceInfo(iid, "rt", "127.0.0.1", 9000 + i, 9100 + i, capacity), runtimes[iid],
                         (loaded or {}).get(iid, {}))
    await ctl.start()
    return ctl, engine, clock, gateway, runtimes


async def serve_cold(ctl: Controller, gateway: Gateway, name: str) -> None:
    """A first request for ``name``, as the activator makes it; the gateway ACKs the copy's routes."""
    ready = asyncio.create_task(ctl.ensure_ready(name, timeout=30))
    await until(gateway, lambda: copies_in(gateway.views[-1], f"{name}__isvc-1"), f"{name} is routed")
    gateway.ack(len(gateway.views))
    assert await ready is None


async def test_a_cold_load_starts_without_waiting_for_the_publish_of_its_tick() -> None:
    """The tick that decides a load also publishes a view (a few ms for a large one); the waiting
    request's load must not queue behind it. Here the publish is held until the load has begun."""
    ctl, engine, _, gw, rts = await gated({"i0": 10 * MB}, [sized("a")])
    held, publishing = asyncio.Event(), []
    plain_publish = gw.publish

    async def held_publish(view: MeshView, yield_loop: bool = False) -> str:
        if engine.copies_on("i0").get("a__isvc-1") is Phase.LOADING:  # the tick that decided it
            publishing.append(True)
            gw.changed.set()
            await held.wait()
        return await plain_publish(view, yield_loop)

    gw.publish = held_publish  # type: ignore[method-assign]
    try:
        ready = asyncio.create_task(ctl.ensure_ready("a", timeout=30))
        await until(gw, lambda: publishing, "the tick publishes", timeout=5)
        await until(gw, lambda: ("load", "a__isvc-1") in rts["i0"].calls, "a's load starts, the publish held",
                    timeout=2)
        held.set()
        await until(gw, lambda: copies_in(gw.views[-1] if gw.views else None, "a__isvc-1"), "a is routed")
        gw.ack(len(gw.views))
        assert await ready is None
    finally:
        held.set()
        await ctl.stop()


async def test_the_tick_that_starts_a_load_asks_for_a_publish_that_yields() -> None:
    """A small view is built on the event loop, without yielding: the tick that starts a load asks
    the publisher to build off the loop (so that the load's call goes out first); the tick that
    routes the loaded copy, which a request waits for, does not."""
    ctl, engine, _, gw, _ = await gated({"i0": 10 * MB}, [sized("a")])
    asked: list[tuple[bool, bool]] = []  # (a is loading, yield_loop)
    plain_publish = gw.publish

    async def publish(view: MeshView, yield_loop: bool = False) -> str:
        asked.append((engine.copies_on("i0").get("a__isvc-1") is Phase.LOADING, yield_loop))
        return await plain_publish(view, yield_loop)

    gw.publish = publish  # type: ignore[method-assign]
    try:
        ready = asyncio.create_task(ctl.ensure_ready("a", timeout=30))
        await until(gw, lambda: copies_in(gw.views[-1] if gw.views else None, "a__isvc-1"), "a is routed")
        gw.ack(len(gw.views))
        assert await ready is None
        assert (True, True) in asked  # the tick that started the load
        assert asked[-1] == (False, False)  # the tick that routed the copy
    finally:
        await ctl.stop()


async def test_an_evicted_copy_is_unloaded_only_once_the_gateway_acks_routes_without_it() -> None:
    # room for one 2 MiB model: a cold request for b evicts a (LRU), in the tick that places b
    ctl, engine, clock, gw, rts = await gated({"i0": 3 * MB}, [sized("a"), sized("b")])
    rt = rts["i0"]
    try:
        await serve_cold(ctl, gw, "a")
        clock.advance(engine.config.min_cache_s)  # a has served the requests it was loaded for
        b_ready = asyncio.create_task(ctl.ensure_ready("b", timeout=30))
        await until(gw, lambda: rt.unloads or gw.pending, "a's unload waits for an ACK, or happens")
        assert rt.unloads == [], "a was unloaded before the gateway ACKed routes without it"
        (version,) = gw.pending
        assert "i0" not in copies_in(gw.views[version - 1], "a__isvc-1")  # it waits for the right view
        assert copies_in(gw.acked_view(), "a__isvc-1") == {"i0"}  # the gateway still sends a there
        gw.ack(version)
        await until(gw, lambda: rt.unloads, "a is unloaded")
        ((revision, acked),) = rt.unloads
        assert revision == "a__isvc-1" and copies_in(acked, "a__isvc-1") == set()
        assert engine.counters["evictions"] == 1
        # then b loads into the room, and its request goes on once the gateway routes to it
        await until(gw, lambda: copies_in(gw.views[-1], "b__isvc-1") == {"i0"}, "b is routed")
        gw.ack(len(gw.views))
        assert await b_ready is None
        assert rt.calls == [("load", "a__isvc-1"), ("unload", "a__isvc-1"), ("load", "b__isvc-1")]
    finally:
        await ctl.stop()


async def test_a_copy_scaled_down_is_unloaded_only_once_the_gateway_acks_routes_without_it() -> None:
    # two adopted copies of a model nobody uses: idle scale-down removes one once scale_down_delay_s
    # has passed since the model appeared
    held = {"m__isvc-1": 2 * MB}
    ctl, engine, clock, gw, rts = await gated({"i0": 10 * MB, "i1": 10 * MB}, [sized("m")],
                                              loaded={"i0": held, "i1": held})
    try:
        await until(gw, lambda: copies_in(gw.views[-1], "m__isvc-1") == {"i0", "i1"},
                    "both copies are routed")
        gw.ack(len(gw.views))
        clock.advance(engine.config.scale_down_delay_s + 1)
        ctl.wake()
        await until(gw, lambda: any(rt.unloads for rt in rts.values()) or gw.pending,
                    "the scale-down's unload waits for an ACK, or happens")
        assert all(rt.unloads == [] for rt in rts.values()), \
            "a copy was unloaded before the gateway ACKed routes without it"
        (version,) = gw.pending
        (gone,) = {"i0", "i1"} - copies_in(gw.views[version - 1], "m__isvc-1")
        assert copies_in(gw.acked_view(), "m__isvc-1") == {"i0", "i1"}
        gw.ack(version)
        await until(gw, lambda: rts[gone].unloads, "the copy is unloaded")
        ((revision, acked),) = rts[gone].unloads
        assert revision == "m__isvc-1" and gone not in copies_in(acked, "m__isvc-1")
        (kept,) = {"i0", "i1"} - {gone}
        assert copies_in(gw.views[-1], "m__isvc-1") == {kept} and rts[kept].calls == []
    finally:
        await ctl.stop()


async def test_an_unload_goes_ahead_after_drain_timeout_when_the_gateway_never_acks() -> None:
    ctl, engine, clock, gw, rts = await gated({"i0": 3 * MB}, [sized("a"), sized("b")], drain_timeout=0.05)
    rt = rts["i0"]
    try:
        await serve_cold(ctl, gw, "a")
        clock.advance(engine.config.min_cache_s)  # a has served the requests it was loaded for
        acked, waits = gw.acked, len(gw.waits)
        ctl.engine.request_for_cold_model("b")  # evicts a; from now on the gateway ACKs nothing
        ctl.wake()
        await until(gw, lambda: rt.unloads, "a is unloaded although nothing was ACKed")
        assert gw.acked == acked
        ((version, timeout),) = gw.waits[waits:]  # it did wait, for drain_timeout, for routes without a
        assert timeout == 0.05 and "i0" not in copies_in(gw.views[version - 1], "a__isvc-1")
        await until(gw, lambda: ("load", "b__isvc-1") in rt.calls, "b loads into the room")
        assert rt.calls == [("load", "a__isvc-1"), ("unload", "a__isvc-1"), ("load", "b__isvc-1")]
    finally:
        await ctl.stop()


async def test_an_evicted_copy_keeps_serving_requests_already_sent_for_a_grace_after_the_ack() -> None:
    ctl, engine, clock, gw, rts = await gated({"i0": 3 * MB}, [sized("a"), sized("b")], unload_grace_s=0.3)
    rt = rts["i0"]
    try:
        await serve_cold(ctl, gw, "a")
        clock.advance(engine.config.min_cache_s)
        ctl.engine.request_for_cold_model("b")
        ctl.wake()
        await until(gw, lambda: gw.pending, "the view without a waits for its ACK")
        (version,) = gw.pending
        acked_at = asyncio.get_running_loop().time()
        gw.ack(version)
        await until(gw, lambda: rt.unloads, "a is unloaded")
        assert asyncio.get_running_loop().time() - acked_at >= 0.3  # not the moment routes moved
    finally:
        await ctl.stop()


async def test_the_published_view_carries_the_traffic_policy_and_its_problems() -> None:
    from placement.traffic.policy import HostPolicy, HttpRule, RouteDestination

    ctl, _ = await make({"i0": Runtime()})
    stack = ctl.publisher
    try:
        ctl.set_desired([desired("a"), desired("b")], {})
        rule = HttpRule("", (), (RouteDestination("a", 70), RouteDestination("b", 30)))
        gone = HttpRule("", (), (RouteDestination("gone", 100),))
        ctl.set_traffic({"ab": HostPolicy("ab", "VirtualService ns/ab", (rule,)),
                         "x": HostPolicy("x", "VirtualService ns/x", (gone,))})
        for _ in range(200):
            if stack.last_view is not None and "ab" in stack.last_view.models:
                break
            await asyncio.sleep(0.01)
        ab = stack.last_view.models["ab"]
        assert {r.id: r.model for r in ab.revisions} == {"a__isvc-1": "a", "b__isvc-1": "b"}
        assert "x" not in stack.last_view.models
        st = ctl.status()
        assert st["traffic"] == {"ab": "VirtualService ns/ab"}
        assert st["manifest_errors"]["routing of x"] == (
            "VirtualService ns/x: routes to gone, which is not served")
    finally:
        await ctl.stop()


def test_a_revision_named_by_the_activator_must_itself_have_a_copy() -> None:
    """The activator asks for the revision a request was routed to: another revision of the model
    being ready is not enough when the request drew a cold one (a canary whose copy was lost)."""
    from placement.control.controller import routes_to_a_copy
    from xds_server.mesh_view import Copy, Destination, Model, Revision, RouteRule

    warm = Revision("m__1", copies=(Copy("i0", "127.0.0.1", 1, 2),))
    v = MeshView.of([Model("m", (warm, Revision("m__2")),
                           (RouteRule((Destination("m__1", 80), Destination("m__2", 20))),))])
    assert routes_to_a_copy(v, "m")
    assert not routes_to_a_copy(v, "m", "m__2")
    assert routes_to_a_copy(v, "m", "m__1")
    assert routes_to_a_copy(v, "m", "m__0")  # a revision the model no longer has: any copy will do
    assert not routes_to_a_copy(v, "other", "m__1")


async def test_a_waiting_cold_request_follows_the_model_to_its_new_revision() -> None:
    """A cold request waits; meanwhile the InferenceService changes (the old revision had no copy,
    so the new one takes over at once). The request must get what the gateway now routes to,
    loaded, not wait for a revision nobody loads any more."""
    rt = Runtime(delay=0.3)
    ctl, _ = await make({"i0": rt})
    try:
        ctl.set_desired([desired("m")], {})
        waiter = asyncio.create_task(ctl.ensure_ready("m", timeout=10, revision="m__isvc-1"))
        await asyncio.sleep(0.05)  # the old revision's load has started
        ctl.set_desired([DesiredModel("m", "m__isvc-2", "rt", "sklearn", "/m/m2", MB)], {})
        assert await asyncio.wait_for(waiter, 5) is None
        assert ("load", "m__isvc-2") in rt.calls
        assert ctl.publisher.last_view.models["m"].revisions[0].id == "m__isvc-2"
    finally:
        await ctl.stop()


async def test_a_cold_requests_wait_is_measured_by_phase() -> None:
    """The load, the publish after it and the gateway's ACK are timed apart (bench/ray_multiplex.py
    reads them to say what the cold path adds to the load itself)."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    rt = Runtime(delay=0.2)
    ctl, _ = await make({"i0": rt}, registry=registry)
    try:
        ctl.set_desired([desired("m")], {})
        assert await ctl.ensure_ready("m", timeout=5) is None
        assert await ctl.ensure_ready("m", timeout=5) is None  # warm: not a cold request

        def value(name: str, **labels: str) -> float:
            v = registry.get_sample_value(name, labels)
            assert v is not None, (name, labels)
            return v

        assert value("msm_model_load_seconds_count") == 1
        assert value("msm_model_load_seconds_sum") >= 0.2
        for phase in ("load", "publish", "ack"):
            assert value("msm_cold_request_seconds_count", phase=phase) == 1
        assert value("msm_cold_request_seconds_sum", phase="load") >= 0.2  # it waited for the load
        assert value("msm_cold_request_seconds_sum", phase="publish") < 0.2
    finally:
        await ctl.stop()


async def test_a_second_controller_on_one_registry_after_the_first_unregisters() -> None:
    """A replica that leads, steps down and leads again builds a new controller on its admin
    port's registry: the first one's metrics must leave it first."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    first, _ = await make({"i0": Runtime()}, registry=registry)
    await first.stop()
    first.unregister_metrics()
    second, _ = await make({"i0": Runtime()}, registry=registry)  # raised "Duplicated timeseries" before
    try:
        second.set_desired([desired("m")], {})
        assert await second.ensure_ready("m", timeout=5) is None
        assert registry.get_sample_value("msm_model_load_seconds_count") == 1
    finally:
        await second.stop()
