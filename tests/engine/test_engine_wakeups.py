"""A copy that must be placed but finds no room waits without a search every tick; it is looked
at again when room may have appeared: at once after the event that frees it (a load failing or
finishing, an instance's holdings changing, a drained revision's queued copy leaving), and once a
second for what frees room without an event (a fresh copy's min_cache_s running out). The clock
does not move between the event and the tick in these tests, so only the event can wake the
waiting copy."""

from __future__ import annotations

from placement_harness import Harness, model

from placement.engine.instance_cache import Phase
from placement.engine.model_types import EngineConfig


def _blocked_behind(h: Harness, *, ready: bool) -> None:
    """i0 has room for one copy: x's (ready at 0 s, or still loading); y must have a copy (its
    min_copies) and finds no room at 0 s, when the once-a-second safety net has just run."""
    h.up("i0", capacity_mb=100)
    h.up("small", capacity_mb=50)  # same runtime, too small for either
    h.engine.set_desired([model("x")])
    h.engine.request_for_cold_model("x")
    assert h.loads(h.tick()) == [("i0", "x__isvc-a")]
    if ready:
        h.succeed("i0", "x__isvc-a")
    h.engine.set_desired([model("x"), model("y", min_copies=1)])
    assert h.tick() == []  # y: no room (x is fresh, or loading)


def test_the_safety_net_looks_again_once_a_second() -> None:
    h = Harness(EngineConfig(min_cache_s=1.0))
    _blocked_behind(h, ready=True)
    h.clock.advance(0.5)
    assert h.tick() == []
    h.clock.advance(0.5)  # x is evictable from 1 s on, and the safety net runs again at 1 s
    actions = h.tick()
    assert h.unloads(actions) == [("i0", "x__isvc-a")]
    assert h.engine.copies_on("i0")["y__isvc-a"].value == "queued"


def test_a_failed_load_frees_its_room_at_once() -> None:
    h = Harness()
    _blocked_behind(h, ready=False)
    h.fail("i0", "x__isvc-a")
    assert h.loads(h.tick()) == [("i0", "y__isvc-a")]


def test_a_finished_load_is_room_at_once_when_fresh_copies_are_not_kept() -> None:
    h = Harness(EngineConfig(min_cache_s=0.0))
    _blocked_behind(h, ready=False)
    h.succeed("i0", "x__isvc-a")
    assert h.unloads(h.tick()) == [("i0", "x__isvc-a")]


def test_a_copy_found_on_an_instance_wakes_the_models_of_its_runtime() -> None:
    h = Harness(EngineConfig(min_cache_s=0.5))
    _blocked_behind(h, ready=True)
    h.clock.advance(0.5)  # x is evictable now; the safety net waits until 1 s
    assert h.engine.inventory("small", {"stray__isvc-z": 1}, {}) == ([], ["stray__isvc-z"])
    assert h.unloads(h.tick()) == [("small", "stray__isvc-z"), ("i0", "x__isvc-a")]


def test_an_instance_going_away_wakes_the_models_of_its_runtime() -> None:
    h = Harness(EngineConfig(min_cache_s=0.5))
    _blocked_behind(h, ready=True)
    h.clock.advance(0.5)
    h.engine.instance_down("small")
    assert h.unloads(h.tick()) == [("i0", "x__isvc-a")]


def test_a_copy_that_waits_for_its_own_unload_is_placed_once_it_is_done() -> None:
    h = Harness()
    h.up("i0")
    h.engine.set_desired([model("m")])
    h.engine.request_for_cold_model("m")
    h.settle()
    h.engine.set_desired([])
    assert h.unloads(h.tick()) == [("i0", "m__isvc-a")]
    h.engine.set_desired([model("m")])  # back before its old copy is unloaded
    h.engine.request_for_cold_model("m")
    assert h.tick() == []  # i0 still holds the revision: not twice on one instance
    h.finish_unloads()
    assert h.loads(h.tick()) == [("i0", "m__isvc-a")]



def test_a_queued_copy_of_a_drained_revision_frees_its_room_at_once() -> None:
    h = Harness(EngineConfig(scale_interval_s=3600.0))  # no scale tick looks at every model
    h.up("i0", capacity_mb=200)
    h.engine.set_desired([model("f", size_mb=50, min_copies=1)])
    assert h.loads(h.tick()) == [("i0", "f__isvc-a")]  # f takes i0's only load slot
    h.up("i1", capacity_mb=100)
    h.engine.set_desired([model("f", size_mb=50, min_copies=1), model("m", min_copies=2)])
    h.tick()  # m: one copy loads on i1, one waits on i0 behind f
    h.succeed("i1", "m__isvc-a")
    assert h.engine.copies_on("i0")["m__isvc-a"] is Phase.QUEUED
    h.up("i2", capacity_mb=100)
    h.engine.set_desired([model("f", size_mb=50, min_copies=1), model("m", "b", min_copies=1),
                          model("y", size_mb=150, min_copies=1)])
    assert h.loads(h.tick()) == [("i2", "m__isvc-b")]  # y: only i0 is big enough, and it is full
    h.succeed("i2", "m__isvc-b")  # routes move to b; a drains for rollout_drain_s (10 s)
    assert h.tick() == []
    h.clock.advance(9.5)
    assert h.tick() == []  # the safety net runs, y still finds no room
    h.clock.advance(0.5)  # a has drained: its queued copy leaves i0, and y takes the room
    assert h.unloads(h.tick()) == [("i1", "m__isvc-a")]
    assert h.engine.copies_on("i0") == {"f__isvc-a": Phase.LOADING, "y__isvc-a": Phase.QUEUED}
