"""The controller between the engine, the runtimes and the snapshot publisher (no processes: a
runtime client double that answers like the SPI, the real engine, publisher and cache)."""

from __future__ import annotations

import asyncio

from msm.xds_stack import XdsStack
from placement.control.controller import Controller
from placement.engine.clock import MonotonicClock
from placement.engine.engine import Engine
from placement.engine.model_types import DesiredModel, InstanceInfo
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
