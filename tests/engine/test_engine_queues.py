"""Edges of the engine's work order: canary weights at their boundaries, urgent copies first and
counted apart in the load queues, cold demand that expires, and instances skipped one by one."""

from __future__ import annotations

import pytest
from placement_harness import MB, Harness, model

from placement.engine.instance_cache import Phase
from placement.engine.model_types import EngineConfig


@pytest.mark.parametrize(("percent", "expected"), [
    (None, [("m__isvc-v2", 100)]),  # promoted: no canary
    (0, [("m__isvc-v1", 100)]),  # a 0 % canary takes nothing
    (1, [("m__isvc-v1", 99), ("m__isvc-v2", 1)]),
    (20, [("m__isvc-v1", 80), ("m__isvc-v2", 20)]),  # the larger share first
    (50, [("m__isvc-v2", 50), ("m__isvc-v1", 50)]),  # from half on, the canary first
    (80, [("m__isvc-v2", 80), ("m__isvc-v1", 20)]),
])
def test_canary_weights_and_their_order(percent: int | None, expected: list) -> None:
    h = Harness()
    h.up("i0")
    h.engine.set_desired([model("m", "v1", min_copies=1)])
    h.settle()
    h.engine.set_desired([model("m", "v2", min_copies=1, canary_percent=percent)])
    h.settle()
    assert h.routed("m") == expected


def test_urgent_copies_are_placed_first_whatever_their_names() -> None:
    h = Harness()
    h.up("i0", capacity_mb=100)  # room for one
    h.engine.set_desired([model("a_minimum", min_copies=1), model("z_cold")])
    h.engine.request_for_cold_model("z_cold")  # both wait for the same tick
    assert h.loads(h.tick()) == [("i0", "z_cold__isvc-a")]
    assert "a_minimum__isvc-a" not in h.engine.copies_on("i0")


def test_an_urgent_copy_queues_past_preemptive_ones_and_a_full_queue_takes_no_more() -> None:
    h = Harness(EngineConfig(max_queued_loads=2))
    h.up("i0")
    h.engine.set_desired([model(f"p{i}", min_copies=1) for i in range(3)] + [model("x"), model("q")])
    h.tick()  # p0 loading, p1 and p2 queued (pre-emptive)
    assert h.engine.copies_on("i0") == {"p0__isvc-a": Phase.LOADING, "p1__isvc-a": Phase.QUEUED,
                                        "p2__isvc-a": Phase.QUEUED}
    h.engine.request_for_cold_model("x")
    h.tick()  # two pre-emptive copies wait, but none urgent: x is placed, ahead of them
    assert h.engine.copies_on("i0")["x__isvc-a"] is Phase.QUEUED
    h.succeed("i0", "p0__isvc-a")
    assert h.loads(h.tick()) == [("i0", "x__isvc-a")]
    # now x loads, p1 and p2 wait: a new minimum finds the queue full and waits too
    h.engine.set_desired([model(f"p{i}", min_copies=1) for i in range(4)] + [model("x"), model("q")])
    h.tick()
    assert "p3__isvc-a" not in h.engine.copies_on("i0")
    h.settle()
    assert h.ready("p3") == {"p3__isvc-a": ["i0"]}  # once the queue drains


def test_a_preemptive_copy_counts_urgent_and_preemptive_copies_waiting() -> None:
    h = Harness(EngineConfig(max_queued_loads=2))
    h.up("i0")
    h.engine.set_desired([model("p0", min_copies=1), model("x"), model("p1", min_copies=1)])
    h.engine.request_for_cold_model("x")
    h.tick()  # x (urgent) loads first; p0 and p1 wait: the queue is full
    h.engine.set_desired([model("p0", min_copies=1), model("x"), model("p1", min_copies=1),
                          model("p2", min_copies=1)])
    h.tick()
    assert set(h.engine.copies_on("i0")) == {"x__isvc-a", "p0__isvc-a", "p1__isvc-a"}


def test_an_instance_with_a_full_queue_is_skipped_for_the_next_one() -> None:
    h = Harness(EngineConfig(max_queued_loads=2))
    h.up("i0")
    h.engine.set_desired([model(n) for n in "abcde"])
    for n in "abc":
        h.engine.request_for_cold_model(n)
    h.tick()  # a loads on i0, b and c wait there: its queue is full
    h.up("i1")
    h.engine.request_for_cold_model("e")
    assert h.loads(h.tick()) == [("i1", "e__isvc-a")]


@pytest.mark.parametrize(("waited", "loads"), [(300.0, True), (300.5, False)])
def test_cold_demand_lasts_cold_demand_ttl_s(waited: float, loads: bool) -> None:
    h = Harness()
    h.engine.set_desired([model("m", runtime="later")])
    h.engine.request_for_cold_model("m")  # no instance of its runtime yet
    h.tick()
    h.clock.advance(waited)
    h.up("i0", runtime="later")
    assert h.loads(h.tick()) == ([("i0", "m__isvc-a")] if loads else [])


def test_a_measured_size_is_carried_to_the_next_copy_placed() -> None:
    h = Harness()
    h.up("i0", capacity_mb=1000)
    h.up("i1", capacity_mb=1000)
    h.engine.set_desired([model("m")])
    h.engine.request_for_cold_model("m")
    (where, rev), = h.loads(h.tick())
    h.succeed(where, rev, 40 * MB)
    h.engine.instance_down(where)
    h.engine.request_for_cold_model("m")
    (again, _), = h.loads(h.tick())
    entry = h.engine.status()["instances"][again]["loaded"][rev]
    assert (entry["size_bytes"], entry["measured"]) == (40 * MB, True)


def test_a_load_times_out_counting_from_when_it_really_started() -> None:
    h = Harness()
    h.up("i0")
    h.engine.set_desired([model("m", load_timeout_s=90.0)])
    h.engine.request_for_cold_model("m")
    assert h.loads(h.tick()) == [("i0", "m__isvc-a")]
    h.clock.advance(50)
    h.engine.load_started("i0", "m__isvc-a")  # the runtime took it from its own queue only now
    h.engine.load_started("i0", "nothing__isvc-z")  # an unknown copy: nothing to do
    h.clock.advance(89)  # 139 s after dispatch, 89 s after the start
    assert h.unloads(h.tick()) == [] and h.engine.counters["timeouts"] == 0
    h.clock.advance(1)
    assert h.unloads(h.tick()) == [("i0", "m__isvc-a")] and h.engine.counters["timeouts"] == 1


def test_a_rollback_while_the_old_revision_drains_keeps_it() -> None:
    h = Harness()
    h.up("i0")
    h.engine.set_desired([model("m", "v1", min_copies=1)])
    h.settle()
    h.engine.set_desired([model("m", "v2", min_copies=1)])
    h.settle()  # v2 ready: v1 drains for rollout_drain_s (10 s)
    h.engine.set_desired([model("m", "v1", min_copies=1)])  # rolled back within the drain
    h.clock.advance(30)
    h.settle()
    assert h.ready("m")["m__isvc-v1"] == ["i0"]
    assert "m__isvc-v2" not in h.engine.copies_on("i0")  # v2 retired instead


def test_a_removed_model_is_forgotten_once_its_copies_are_unloaded() -> None:
    h = Harness()
    h.up("i0")
    h.engine.set_desired([model("a", min_copies=1), model("b", min_copies=1)])
    h.settle()
    h.engine.set_desired([model("b", min_copies=1)])
    assert h.engine.model_of("a__isvc-a") == "a"  # its copy still unloads
    h.settle()
    assert h.engine.model_of("a__isvc-a") is None and not h.engine.has_model("a")
    assert h.engine.model_of("b__isvc-a") == "b" and h.ready("b") == {"b__isvc-a": ["i0"]}


def test_a_request_for_a_model_already_ready_leaves_no_cold_demand_behind() -> None:
    h = Harness()
    h.up("i0")
    h.up("i1")
    h.engine.set_desired([model("m")])
    h.engine.request_for_cold_model("m")
    h.settle()
    (where,) = h.ready("m")["m__isvc-a"]
    h.engine.request_for_cold_model("m")  # late: the copy is ready, the request is served
    h.engine.instance_down(where)
    actions = h.tick()  # the copy it had is placed again, but no request waits for it
    assert [(a.revision, a.urgent) for a in actions] == [("m__isvc-a", False)]


def _filler_loading_on(h: Harness, iid: str, size_mb: int) -> None:
    """A copy loading on ``iid`` (not evictable) that takes ``size_mb`` of it."""
    h.engine.set_desired([model("filler", size_mb=size_mb, min_copies=1)])
    assert h.loads(h.tick()) == [(iid, "filler__isvc-a")]


def test_copies_that_wait_for_room_on_one_runtime_do_not_hold_up_another() -> None:
    h = Harness()
    h.up("i0", capacity_mb=100)
    h.up("j0", capacity_mb=100, runtime="rt2")
    _filler_loading_on(h, "i0", 100)
    h.engine.set_desired([model("filler", size_mb=100, min_copies=1), model("a", min_copies=1),
                          model("b", min_copies=1), model("c", min_copies=1, runtime="rt2")])
    assert h.loads(h.tick()) == [("j0", "c__isvc-a")]  # a and b wait for i0; c goes on j0


def test_a_copy_that_found_no_room_because_of_its_own_failures_does_not_hold_up_the_next() -> None:
    h = Harness()
    h.up("i0", capacity_mb=100)
    h.up("i1", capacity_mb=150)
    _filler_loading_on(h, "i1", 150)  # too big for i0
    h.engine.set_desired([model("filler", size_mb=150, min_copies=1), model("a_x", min_copies=1)])
    assert h.loads(h.tick()) == [("i0", "a_x__isvc-a")]
    h.fail("i0", "a_x__isvc-a")  # a_x may not go on i0 again; i1 is full
    h.engine.set_desired([model("filler", size_mb=150, min_copies=1), model("a_x", min_copies=1),
                          model("b_y", min_copies=1)])
    assert h.loads(h.tick()) == [("i0", "b_y__isvc-a")]  # b_y, the same size, fits on i0


def test_a_request_after_the_last_demand_expired_is_a_new_demand_even_before_a_tick_ends_it() -> None:
    h = Harness()
    h.engine.set_desired([model("m", runtime="later")])
    h.engine.request_for_cold_model("m")  # no instance of its runtime yet: it waits
    for _ in range(300):
        h.clock.advance(1)
        h.tick()  # at the last tick the demand is exactly cold_demand_ttl_s old: still on
    h.clock.advance(0.5)
    h.engine.request_for_cold_model("m")  # a new request, after the first demand's TTL
    assert h.tick() == []
    h.up("i0", runtime="later")
    actions = h.tick()
    assert h.loads(actions) == [("i0", "m__isvc-a")] and actions[0].urgent


def test_an_optional_copy_with_no_room_is_let_go_even_behind_one_that_must_wait() -> None:
    h = Harness()
    h.up("i0", capacity_mb=200)
    _filler_loading_on(h, "i0", 200)
    h.engine.set_desired([model("filler", size_mb=200, min_copies=1), model("b_y")])
    h.up("i1", capacity_mb=100, loaded={"b_y__isvc-a": 100 * MB})  # b_y: one copy wanted, not a must
    h.engine.set_desired([model("filler", size_mb=200, min_copies=1), model("a_x", min_copies=1),
                          model("b_y")])
    h.engine.instance_down("i1")  # b_y's copy is gone; a_x must have one; i0 is full
    assert h.tick() == []
    h.fail("i0", "filler__isvc-a")  # i0 is free again: a_x takes it, b_y waits for a request
    assert h.loads(h.tick()) == [("i0", "a_x__isvc-a")]
    assert "b_y__isvc-a" not in h.engine.copies_on("i0")


def test_a_removed_model_among_the_models_to_look_at_does_not_stop_the_others() -> None:
    h = Harness()
    for i in range(10):
        h.up(f"i{i:02}")
    h.engine.set_desired([model("gone")])
    h.engine.request_for_cold_model("gone")
    ((where, rev),) = h.loads(h.tick())
    names = [f"m{i:02}" for i in range(30)]
    h.engine.set_desired([model(n, min_copies=1) for n in names])  # gone is removed, still loading
    h.fail(where, rev)  # gone is looked at again, with the thirty new ones
    h.tick()
    assert [h.engine.model_status(n).loading_copies for n in names] == [1] * 30


def test_a_copy_kept_off_the_instance_holding_its_own_revision_does_not_hold_up_the_next() -> None:
    h = Harness()
    h.up("B", capacity_mb=100)
    _filler_loading_on(h, "B", 100)
    h.up("C", capacity_mb=100)
    desired = [model("filler", min_copies=1), model("b_y", min_copies=1)]
    h.engine.set_desired(desired)
    assert h.loads(h.tick()) == [("C", "b_y__isvc-a")]
    h.succeed("C", "b_y__isvc-a")  # fresh: not evictable for min_cache_s
    desired.append(model("a_x", min_copies=1))
    h.engine.set_desired(desired)
    h.up("A", capacity_mb=200, loaded={"a_x__isvc-a": 100 * MB})
    assert h.tick() == []
    # both want a second copy: a_x finds no room (A holds it, B loads, C's copy is fresh), but
    # b_y, the same size, fits beside a_x on A
    h.engine.set_desired([model("filler", min_copies=1), model("a_x", min_copies=2),
                          model("b_y", min_copies=2)])
    assert h.loads(h.tick()) == [("A", "b_y__isvc-a")]


def test_a_copy_kept_off_an_instance_by_its_failure_does_not_hold_up_another_with_failures() -> None:
    h = Harness()
    h.up("B", capacity_mb=100)
    h.up("C", capacity_mb=100)
    desired = [model("f1", min_copies=1), model("f2", min_copies=1)]
    h.engine.set_desired(desired)
    assert sorted(i for i, _ in h.loads(h.tick())) == ["B", "C"]  # loading: B and C are full
    h.up("D", capacity_mb=100)
    desired.append(model("b_y", min_copies=1))
    h.engine.set_desired(desired)
    assert h.loads(h.tick()) == [("D", "b_y__isvc-a")]
    h.fail("D", "b_y__isvc-a")
    desired.append(model("f3", min_copies=1))
    h.engine.set_desired(desired)
    assert h.loads(h.tick()) == [("D", "f3__isvc-a")]  # D full too; b_y waits
    h.up("A", capacity_mb=100)
    desired.append(model("a_x", min_copies=1))
    h.engine.set_desired(desired)
    assert h.loads(h.tick()) == [("A", "a_x__isvc-a")]  # a_x before b_y
    h.fail("A", "a_x__isvc-a")  # a_x may not go on A again, and finds no room; b_y may
    assert h.loads(h.tick()) == [("A", "b_y__isvc-a")]


def test_a_second_request_does_not_make_a_waiting_demand_newer() -> None:
    h = Harness()
    h.engine.set_desired([model("a", runtime="later"), model("b", runtime="later")])
    h.engine.request_for_cold_model("a")  # no instance of their runtime yet: both wait
    h.clock.advance(1)
    h.engine.request_for_cold_model("b")
    h.clock.advance(299)  # a's demand is exactly cold_demand_ttl_s old: still on
    h.engine.request_for_cold_model("a")  # ... and still the older one
    h.up("i0", capacity_mb=100, runtime="later")  # room for one of them
    assert h.loads(h.tick()) == [("i0", "a__isvc-a")]
    assert "b__isvc-a" not in h.engine.copies_on("i0")
