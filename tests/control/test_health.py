"""Instance health: a busy runtime is not a dead one; a gone one goes quickly; one slow instance
delays nobody's checks."""

from __future__ import annotations

import asyncio

import grpc

from placement.control.health import DOWN_AFTER_FAILURES, SLOW_DOWN_AFTER_S, InstanceHealth
from placement.control.runtime_client import RuntimeStatus, RuntimeTimeout, RuntimeUnavailable
from placement.engine.model_types import InstanceInfo


class Client:
    """Answers runtimeStatus with whatever ``answer`` is: READY, a status name, or an exception."""

    def __init__(self, iid: str) -> None:
        self.address = f"{iid}:1"
        self.answer: object = "READY"
        self.calls = 0
        self.hang: asyncio.Event | None = None

    async def runtime_status(self, timeout=None) -> RuntimeStatus:
        self.calls += 1
        if self.hang is not None:
            await self.hang.wait()
        if isinstance(self.answer, Exception):
            raise self.answer
        return RuntimeStatus(ready=self.answer == "READY", status=str(self.answer), capacity_bytes=0,
                             max_loading_concurrency=1, model_loading_timeout_ms=1,
                             default_model_size_bytes=0, runtime_version="", limit_model_concurrency=False,
                             allow_any_method=False, method_infos={})

    async def loaded_models(self, timeout=None) -> dict[str, int]:
        return {}

    async def close(self) -> None:
        pass


def make(*ids: str):
    now = [0.0]
    events: list[tuple[str, str]] = []
    clients = {i: Client(i) for i in ids}
    health = InstanceHealth(
        [(InstanceInfo(i, "rt", "127.0.0.1", 1, 2, 100), c) for i, c in clients.items()],
        lambda info, client, held: events.append(("up", info.id)), lambda iid: events.append(("down", iid)),
        clock=lambda: now[0])
    return health, clients, events, now


TIMEOUT = RuntimeTimeout("runtimeStatus", "i0:1", grpc.StatusCode.DEADLINE_EXCEEDED, "no answer within 5.0s")
REFUSED = RuntimeUnavailable("runtimeStatus", "i0:1", grpc.StatusCode.UNAVAILABLE, "connection refused")


async def test_a_busy_instance_stays_until_it_has_been_silent_for_long() -> None:
    health, clients, events, now = make("i0")
    await health.check_all()
    assert events == [("up", "i0")]
    clients["i0"].answer = TIMEOUT
    for t in range(0, int(SLOW_DOWN_AFTER_S)):  # a check a second, each timing out
        now[0] = float(t)
        await health.check_all()
    assert events == [("up", "i0")], "taken out while only busy"
    assert "slow for" in health.instances["i0"].last_error
    clients["i0"].answer = "READY"  # it answers again: the slow spell is over
    await health.check_all()
    clients["i0"].answer = TIMEOUT
    now[0] = 100.0
    await health.check_all()
    now[0] = 100.0 + SLOW_DOWN_AFTER_S
    await health.check_all()
    assert events == [("up", "i0"), ("down", "i0")]


async def test_a_gone_instance_leaves_after_a_few_refused_checks() -> None:
    health, clients, events, _ = make("i0")
    await health.check_all()
    clients["i0"].answer = REFUSED
    for _ in range(DOWN_AFTER_FAILURES - 1):
        await health.check_all()
    assert events == [("up", "i0")]
    await health.check_all()
    assert events == [("up", "i0"), ("down", "i0")]
    clients["i0"].answer = "READY"
    await health.check_all()
    assert events[-1] == ("up", "i0")


async def test_a_runtime_that_says_it_is_not_ready_counts_as_a_failure() -> None:
    health, clients, events, _ = make("i0")
    await health.check_all()
    clients["i0"].answer = "STARTING"
    for _ in range(DOWN_AFTER_FAILURES):
        await health.check_all()
    assert events == [("up", "i0"), ("down", "i0")]


async def test_one_hung_instance_does_not_delay_the_checks_of_another() -> None:
    health, clients, _, _ = make("i0", "i1")
    health.interval = 0.01
    await health.check_all()
    clients["i0"].hang = asyncio.Event()  # its checks never return
    health.start()
    try:
        before = clients["i1"].calls
        for _ in range(500):
            if clients["i1"].calls >= before + 5:
                break
            await asyncio.sleep(0.01)
        assert clients["i1"].calls >= before + 5
        assert clients["i0"].calls == 2  # the first check, then the one that hangs
    finally:
        clients["i0"].hang.set()
        await health.stop()


async def test_instances_join_and_leave_while_checking_runs() -> None:
    health, _, events, _ = make("i0")
    health.interval = 0.01
    await health.check_all()
    health.start()
    try:
        late = Client("i1")
        health.add(InstanceInfo("i1", "rt", "127.0.0.2", 1, 2, 100), late)
        for _ in range(100):  # a new instance is checked at once, not after a full period
            if ("up", "i1") in events:
                break
            await asyncio.sleep(0.01)
        assert ("up", "i1") in events
        calls = late.calls
        await health.remove("i1")  # its pod is gone: out of placement now, checks stop
        assert events[-1] == ("down", "i1") and "i1" not in health.instances
        await asyncio.sleep(0.05)
        assert late.calls == calls
        await health.remove("i1")  # twice is harmless
        try:
            health.add(InstanceInfo("i0", "rt", "127.0.0.1", 1, 2, 100), Client("i0"))
        except ValueError as e:
            assert "already tracked" in str(e)
        else:
            raise AssertionError("a second instance with the same id was accepted")
    finally:
        await health.stop()


async def test_a_recheck_takes_a_gone_instance_out_at_once_and_leaves_a_live_or_busy_one() -> None:
    """The gateway could not reach i0 and i1: both are checked now, not a period later (the
    periodic checks are not running here at all). i0 refuses twice, RECHECK_GAP_S apart, and is
    out; i1 answers and stays; i2, only slow, stays too; an unknown id is reported down."""
    health, clients, events, _ = make("i0", "i1", "i2")
    await health.check_all()
    clients["i0"].answer = REFUSED
    clients["i2"].answer = TIMEOUT
    before = {i: c.calls for i, c in clients.items()}
    down = await health.recheck(frozenset({"i0", "i1", "i2", "gone"}))
    assert down == {"i0", "gone"}
    assert ("down", "i0") in events and ("down", "i1") not in events and ("down", "i2") not in events
    assert clients["i0"].calls - before["i0"] == DOWN_AFTER_FAILURES
    assert clients["i1"].calls - before["i1"] == 1 and clients["i2"].calls - before["i2"] == 1
    # an instance already down is not checked again for it
    assert await health.recheck(frozenset({"i0"})) == {"i0"}
    assert clients["i0"].calls - before["i0"] == DOWN_AFTER_FAILURES


async def test_callers_rechecking_one_instance_at_once_share_one_recheck() -> None:
    """Many held requests fail over from one dead instance at the same moment: one recheck runs,
    and a caller that gives up (its client left) does not cancel it for the others."""
    health, clients, events, _ = make("i0")
    await health.check_all()
    clients["i0"].answer = REFUSED
    before = clients["i0"].calls
    first = asyncio.create_task(health.recheck(frozenset({"i0"})))
    others = [asyncio.create_task(health.recheck(frozenset({"i0"}))) for _ in range(5)]
    await asyncio.sleep(0)
    first.cancel()
    assert all(d == {"i0"} for d in await asyncio.gather(*others))
    assert clients["i0"].calls - before == DOWN_AFTER_FAILURES
    assert events.count(("down", "i0")) == 1
    await health.stop()
