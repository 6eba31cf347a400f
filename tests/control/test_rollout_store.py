"""The rollouts' state outlives the controller: saved when it changes, read by the next one."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import pytest
from test_controller import MB, Runtime, make

from msm.xds_stack import XdsStack
from placement.control.controller import Controller
from placement.engine.clock import MonotonicClock
from placement.engine.engine import Engine
from placement.engine.model_types import DesiredModel, InstanceInfo
from placement.local.rollout_store import FileRolloutStore
from placement.traffic.rollout import RolloutSpec
from xds_server.translate import GatewayOptions

SPEC = RolloutSpec(steps=(20, 50), interval_s=60.0, min_requests=10)
V1 = DesiredModel("m", "m__1", "rt", "sklearn", "/m/1", 1_000_000)
V2 = replace(V1, revision="m__2", model_path="/m/2")


async def until(pred, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)


async def test_a_rollout_is_saved_as_it_steps_and_the_next_controller_carries_on(tmp_path: Path) -> None:
    store = FileRolloutStore(tmp_path / "rollouts.json")
    ctl, _ = await make({"i0": Runtime()}, rollout_store=store)
    try:
        await ctl.load_rollouts()  # nothing saved yet
        ctl.set_desired([V1], {}, {"m": SPEC})
        assert await ctl.ensure_ready("m", timeout=5) is None
        ctl.set_desired([V2], {}, {"m": SPEC})
        await until(lambda: (tmp_path / "rollouts.json").exists()
                    and json.loads((tmp_path / "rollouts.json").read_text()).get("m", {})
                    .get("rollout", {}).get("phase") == "stepping")
    finally:
        await ctl.stop()
    saved = json.loads((tmp_path / "rollouts.json").read_text())
    assert saved["m"]["stable"]["revision"] == "m__1" and saved["m"]["rollout"]["new"] == "m__2"

    # a new control plane: a fresh engine, and the runtime still holds the old revision
    engine = Engine(MonotonicClock())
    stack = XdsStack(GatewayOptions(rest_port=1, grpc_port=2), dict)
    store = FileRolloutStore(tmp_path / "rollouts.json")
    again = Controller(engine, stack, {}, tick_interval=0.02, rollout_store=store)
    instance = InstanceInfo("i0", "rt", "127.0.0.1", 9000, 9100, 100 * MB)
    again.add_instance(instance, Runtime(), {"m__1": 2 * MB})
    await again.start()
    try:
        await again.load_rollouts()
        again.set_desired([V2], {}, {"m": SPEC})  # the manifest names only the new revision
        r = again.rollouts.active["m"]
        assert (r.old, r.new, r.phase.value, r.weight()) == ("m__1", "m__2", "stepping", 20)
        st = engine.model_status("m")  # the engine keeps the old revision active, the new one a canary
        assert (st.active_revision, st.target_revision) == ("m__1", "m__2")
    finally:
        await again.stop()


def leftovers(folder: Path) -> list[Path]:
    return list(folder.glob(".r.json.tmp"))


async def test_files_missing_corrupt_or_not_an_object(tmp_path: Path) -> None:
    store = FileRolloutStore(tmp_path / "r.json")
    assert await store.load() == {}
    await store.save({"m": {"x": 1}})
    assert await store.load() == {"m": {"x": 1}} and not leftovers(tmp_path)
    await asyncio.to_thread((tmp_path / "r.json").write_text, "[1, 2]")
    with pytest.raises(ValueError, match="not a JSON object"):
        await store.load()


async def test_an_unreadable_store_forgets_the_rollouts_but_the_controller_goes_on(tmp_path: Path,
                                                                                 caplog) -> None:
    (tmp_path / "r.json").write_text("{not json")
    ctl, _ = await make({"i0": Runtime()}, rollout_store=FileRolloutStore(tmp_path / "r.json"))
    try:
        await ctl.load_rollouts()
        assert "reading the rollouts' saved state failed" in caplog.text
        ctl.set_desired([V1], {}, {"m": SPEC})
        assert await ctl.ensure_ready("m", timeout=5) is None
    finally:
        await ctl.stop()
