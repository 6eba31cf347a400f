"""Instance health: a busy runtime is not a dead one; a gone one goes quickly; one slow instance
delays nobody's checks."""

from __future__ import annotations

import asyncio

import grpc
from prometheus_client import CollectorRegistry

from placement.control.health import DOWN_AFTER_FAILURES, PROBE_TIMEOUT_S, SLOW_DOWN_AFTER_S, InstanceHealth
from placement.control.runtime_client import RuntimeStatus, RuntimeTimeout, RuntimeUnavailable
from placement.engine.model_types import InstanceInfo


class Client:
    """Answers runtimeStatus with whatever ``answer`` is: READY, a status name, or an exception."""

    def __init__(self, iid: str) -> None:
        self.address = f"{iid}:1"
        self.answer: object = "READY"
        self.calls = 0
        self.hang: asyncio.Event | None = None
        self.delay = 0.0  # each check takes this long
        self.capacity = 0  # what runtimeStatus says (0: not known)
        self.holds: dict[str, int] = {}
        self.timeouts: list[tuple[str, float | None]] = []

    async def runtime_status(self, timeout=None) -> RuntimeStatus:
        self.calls += 1
        self.timeouts.append(("runtimeStatus", timeout))
        if self.hang is not None:
            await self.hang.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if isinstance(self.answer, Exception):
            raise self.answer
        return RuntimeStatus(ready=self.answer == "READY", status=str(self.answer),
                             capacity_bytes=self.capacity,
                             max_loading_concurrency=1, model_loading_timeout_ms=1,
                             default_model_size_bytes=0, runtime_version="", limit_model_concurrency=False,
                             allow_any_method=False, method_infos={})

    async def loaded_models(self, timeout=None) -> dict[str, int]:
        self.timeouts.append(("loaded_models", timeout))
        return dict(self.holds)

    async def close(self) -> None:
        pass


def make(*ids: str, registry: CollectorRegistry | None = None):
    now = [0.0]
    events: list[tuple[str, str]] = []
    ups: list[tuple[InstanceInfo, object, dict[str, int]]] = []

    def on_up(info, client, held) -> None:
        events.append(("up", info.id))
        ups.append((info, client, dict(held)))

    clients = {i: Client(i) for i in ids}
    health = InstanceHealth(
        [(InstanceInfo(i, "rt", "127.0.0.1", 1, 2, 100), c) for i, c in clients.items()],
        on_up, lambda iid: events.append(("down", iid)), clock=lambda: now[0], registry=registry)
    health.ups = ups  # type: ignore[attr-defined]
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
        for _ in range(100):  # and checked on its period from then on
            if late.calls >= 3:
                break
            await asyncio.sleep(0.01)
        assert late.calls >= 3
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
    clients["i0"].delay = 0.01  # checks overlap: callers that did not share would each run one
    before = clients["i0"].calls
    first = asyncio.create_task(health.recheck(frozenset({"i0"})))
    others = [asyncio.create_task(health.recheck(frozenset({"i0"}))) for _ in range(5)]
    await asyncio.sleep(0)
    first.cancel()
    assert all(d == {"i0"} for d in await asyncio.gather(*others))
    assert clients["i0"].calls - before == DOWN_AFTER_FAILURES
    assert events.count(("down", "i0")) == 1
    await health.stop()



async def test_an_instance_comes_up_with_its_capacity_and_holdings_and_is_counted() -> None:
    """Up: the runtime's own capacity replaces the configured one (0 keeps it), what it already
    holds is adopted, and the gauge and counter say how many are up and how many went down.
    A down instance that answers again is adopted again with what it holds then."""
    registry = CollectorRegistry()
    health, clients, _, _ = make("i0", "i1", registry=registry)
    clients["i0"].capacity = 512
    clients["i0"].holds = {"m__1": 7}
    await health.check_all()
    (info0, client0, held0), (info1, _, held1) = sorted(health.ups, key=lambda u: u[0].id)
    assert (info0.capacity_bytes, client0, held0) == (512, clients["i0"], {"m__1": 7})
    assert (info1.capacity_bytes, held1) == (100, {})
    assert ("runtimeStatus", PROBE_TIMEOUT_S) in clients["i0"].timeouts
    assert ("loaded_models", PROBE_TIMEOUT_S) in clients["i0"].timeouts
    assert registry.get_sample_value("msm_runtime_instances_up") == 2
    clients["i1"].answer = REFUSED
    for _ in range(DOWN_AFTER_FAILURES):
        await health.check_all()
    assert registry.get_sample_value("msm_runtime_instances_up") == 1
    assert registry.get_sample_value("msm_runtime_instance_down_total") == 1
    assert sum(1 for c in clients["i0"].timeouts if c[0] == "loaded_models") == 1  # asked once, on coming up
    clients["i1"].answer = "READY"
    clients["i1"].holds = {"o__1": 3}
    await health.check_all()
    assert health.ups[-1][0].id == "i1" and health.ups[-1][2] == {"o__1": 3}


async def test_a_new_leader_readopts_every_instance_with_what_it_holds_now() -> None:
    health, clients, events, _ = make("i0")
    await health.check_all()
    clients["i0"].holds = {"m__2": 5}
    await health.readopt()
    assert events == [("up", "i0"), ("up", "i0")]
    assert health.ups[-1][2] == {"m__2": 5}


async def test_a_slow_spell_is_timed_from_its_first_slow_check() -> None:
    health, clients, events, now = make("i0")
    now[0] = 1000.0
    await health.check_all()
    clients["i0"].answer = TIMEOUT
    await health.check_all()
    now[0] = 1003.0
    await health.check_all()
    assert health.instances["i0"].last_error.endswith("(slow for 3s)")
    now[0] = 1000.0 + SLOW_DOWN_AFTER_S - 0.5
    await health.check_all()
    assert events == [("up", "i0")]
    now[0] = 1000.0 + SLOW_DOWN_AFTER_S
    await health.check_all()
    assert events == [("up", "i0"), ("down", "i0")]


async def test_status_shows_each_instance_as_health_checking_sees_it() -> None:
    health, clients, _, _ = make("i0", "i1")
    await health.check_all()
    clients["i1"].answer = REFUSED
    await health.check_all()
    placed = {"i0": {"runtime": "rt", "loaded": {"m__1": {}}}}
    health.annotate(placed)
    assert placed["i0"] == {"runtime": "rt", "loaded": {"m__1": {}}, "up": True, "spi_address": "i0:1",
                            "rest_port": 1, "grpc_port": 2}
    assert placed["i1"] == {"runtime": "rt", "address": "127.0.0.1", "capacity_bytes": 100, "loaded": {},
                            "up": True, "spi_address": "i1:1", "rest_port": 1, "grpc_port": 2,
                            "last_error": str(REFUSED)}


async def test_checking_stops_and_starts_again_and_a_recheck_of_a_removed_instance_ends() -> None:
    """After stop, an instance added is not checked until start; start again checks them all. A
    recheck in progress when its instance is removed (its pod deleted) ends, and the instance
    counts as down for its callers."""
    health, clients, events, _ = make("i0")
    health.interval = 0.01
    early = Client("i2")
    health.add(InstanceInfo("i2", "rt", "127.0.0.3", 1, 2, 100), early)  # before any start
    await asyncio.sleep(0.02)
    assert early.calls == 0
    await health.remove("i2")
    await health.check_all()
    health.start()
    await health.stop()
    late = Client("i1")
    health.add(InstanceInfo("i1", "rt", "127.0.0.2", 1, 2, 100), late)
    await asyncio.sleep(0.05)
    assert late.calls == 0
    health.start()
    try:
        for _ in range(200):
            if late.calls >= 3 and clients["i0"].calls >= 3:
                break
            await asyncio.sleep(0.01)
        assert late.calls >= 3 and clients["i0"].calls >= 3
    finally:
        await health.stop()
    clients["i0"].answer = REFUSED
    clients["i0"].delay = 0.05
    waiting = asyncio.create_task(health.recheck(frozenset({"i0"})))
    await asyncio.sleep(0.01)
    await health.remove("i0")
    assert await asyncio.wait_for(waiting, 2) == {"i0"}
    assert events[-1] == ("down", "i0")


async def test_a_runtime_that_is_not_ready_is_shown_with_the_status_it_gave() -> None:
    health, clients, _, _ = make("i0")
    clients["i0"].answer = "STARTING"
    await health.check_all()
    placed: dict = {}
    health.annotate(placed)
    assert (placed["i0"]["up"], placed["i0"]["last_error"]) == (False, "runtime status STARTING")


class Tracked(Client):
    """A client whose checks hang until cancelled, and that says in which order things ended."""

    def __init__(self, iid: str, ended: list[str]) -> None:
        super().__init__(iid)
        self.ended = ended
        self.hang = asyncio.Event()  # never set
        self.checking = asyncio.Event()

    async def runtime_status(self, timeout=None) -> RuntimeStatus:
        self.checking.set()
        try:
            return await super().runtime_status(timeout)
        except asyncio.CancelledError:
            self.ended.append(f"{self.address} check cancelled")
            raise

    async def close(self) -> None:
        self.ended.append(f"{self.address} closed")


async def test_a_removed_instances_check_in_flight_is_over_before_its_client_is_closed() -> None:
    health, _, _, _ = make()
    ended: list[str] = []
    health.start()
    try:
        slow = Tracked("i1", ended)
        health.add(InstanceInfo("i1", "rt", "127.0.0.2", 1, 2, 100), slow)
        await asyncio.wait_for(slow.checking.wait(), 5)
        await health.remove("i1")
        assert ended == ["i1:1 check cancelled", "i1:1 closed"]
    finally:
        await health.stop()


async def test_stopping_ends_the_checks_in_flight_before_it_returns() -> None:
    ended: list[str] = []
    clients = {i: Tracked(i, ended) for i in ("i0", "i1")}
    health = InstanceHealth([(InstanceInfo(i, "rt", "127.0.0.1", 1, 2, 100), c) for i, c in clients.items()],
                            lambda *_: None, lambda _: None, interval=0.001)
    health.start()
    await asyncio.wait_for(asyncio.gather(*(c.checking.wait() for c in clients.values())), 5)
    await health.stop()
    assert sorted(ended) == ["i0:1 check cancelled", "i1:1 check cancelled"]


async def test_each_instances_checks_run_in_a_task_named_after_it() -> None:
    """Named for whoever reads a task dump or asyncio's report of a task that failed."""
    health, clients, _, _ = make("i0")
    health.interval = 3600
    await health.check_all()
    clients["i0"].answer = REFUSED
    clients["i0"].hang = asyncio.Event()
    health.start()
    try:
        health.add(InstanceInfo("i1", "rt", "127.0.0.2", 1, 2, 100), Client("i1"))
        recheck = asyncio.create_task(health.recheck(frozenset({"i0"})))
        await asyncio.sleep(0)
        names = {t.get_name() for t in asyncio.all_tasks()}
        assert {"runtime-health:i0", "runtime-health:i1", "runtime-recheck:i0"} <= names
        clients["i0"].hang.set()
        clients["i0"].hang = None
        assert await recheck == {"i0"}
    finally:
        await health.stop()


def test_the_metrics_say_what_they_count() -> None:
    from prometheus_client import generate_latest

    registry = CollectorRegistry()
    make("i0", registry=registry)
    text = generate_latest(registry).decode()
    assert "# HELP msm_runtime_instances_up Runtime instances in placement\n" in text
    assert ("# HELP msm_runtime_instance_down_total Runtime instances taken out of placement after failed "
            "health checks\n") in text
