"""LRU cache behaviour, placement choice and the load queue of the placement engine."""

from __future__ import annotations

import pytest
from placement_harness import MB, Harness, model

from placement.engine.model_types import EngineConfig, InstanceInfo


def test_model_without_copy_loads_on_first_request(h: Harness) -> None:
    h.up("i0")
    h.engine.set_desired([model("m")])
    assert h.tick() == []  # min_copies=0: nothing loads pre-emptively
    view = h.engine.mesh_view().models["m"]
    assert view.revisions[0].id == "m__isvc-a" and view.revisions[0].copies == ()  # routed to the activator

    h.engine.request_for_cold_model("m")
    actions = h.tick()
    assert h.loads(actions) == [("i0", "m__isvc-a")] and actions[0].urgent
    assert not h.engine.model_status("m").ready
    h.succeed("i0", "m__isvc-a")
    assert h.engine.model_status("m").ready_copies == 1
    assert h.ready("m") == {"m__isvc-a": ["i0"]}


def test_min_copies_are_loaded_on_distinct_instances(h: Harness) -> None:
    for i in range(3):
        h.up(f"i{i}")
    h.engine.set_desired([model("m", min_copies=2)])
    loads = h.loads(h.tick())
    assert len(loads) == 2 and len({i for i, _ in loads}) == 2
    h.settle()
    assert len(h.ready("m")["m__isvc-a"]) == 2


def test_lru_eviction_order(h: Harness) -> None:
    h.up("i0", capacity_mb=300)
    h.engine.set_desired([model(n) for n in "abcd"])
    for n in "abc":
        h.engine.request_for_cold_model(n)
        h.settle()
        h.clock.advance(10)
    h.engine.record_requests("a", 5)  # a is now the most recently used; b the least
    h.clock.advance(1)
    h.engine.request_for_cold_model("d")
    actions = h.tick()
    assert h.unloads(actions) == [("i0", "b__isvc-a")]
    assert h.ready("b") == {"b__isvc-a": []}  # left the view in the same tick
    h.settle()
    assert set(h.engine.status()["instances"]["i0"]["loaded"]) == {"a__isvc-a", "c__isvc-a", "d__isvc-a"}


def _three_loaded_then_d(h: Harness) -> None:
    """a, b, c loaded on one instance with room for three; a used 20 times long ago, c once
    lately, b in between; then d is requested and one of them must go."""
    h.up("i0", capacity_mb=300)
    h.engine.set_desired([model(n) for n in "abcd"])
    for n in "abc":
        h.engine.request_for_cold_model(n)
        h.settle()
    h.engine.record_requests("a", 20)
    h.clock.advance(30)
    h.engine.record_requests("b", 2)
    h.clock.advance(30)
    h.engine.record_requests("c", 1)
    h.clock.advance(1)
    h.engine.request_for_cold_model("d")


def test_lrfu_eviction_keeps_a_frequently_used_model_over_recently_used_ones() -> None:
    h = Harness(EngineConfig(frequency_half_life_s=60.0))
    _three_loaded_then_d(h)
    # scores at eviction: a 20 x 2^(-61/60) ≈ 9.9, b 2 x 2^(-31/60) ≈ 1.4, c 1 x 2^(-1/60) ≈ 0.99
    assert h.unloads(h.tick()) == [("i0", "c__isvc-a")]


def test_plain_lru_eviction_drops_the_least_recently_used_however_often_it_was_used() -> None:
    for off in (None, 0.0):  # 0: what msm-local.yaml's placement.frequency_half_life_s can say
        h = Harness(EngineConfig(frequency_half_life_s=off))
        _three_loaded_then_d(h)
        assert h.unloads(h.tick()) == [("i0", "a__isvc-a")]


def test_lrfu_forgets_old_popularity_by_its_half_life() -> None:
    h = Harness(EngineConfig(frequency_half_life_s=10.0))
    _three_loaded_then_d(h)
    # a 20 x 2^(-6.1) ≈ 0.29, b 2 x 2^(-3.1) ≈ 0.23, c ≈ 0.93: b is now the lowest
    assert h.unloads(h.tick()) == [("i0", "b__isvc-a")]


def _load(h: Harness, name: str, took_s: float) -> None:
    """Ask for ``name`` and complete its load ``took_s`` later on the engine's clock."""
    h.engine.request_for_cold_model(name)
    (iid, rev), = h.loads(h.tick())
    h.clock.advance(took_s)
    h.succeed(iid, rev)


def _two_used_alike_then_new(h: Harness, first: tuple[str, float], second: tuple[str, float]) -> None:
    """A warm-up load, then ``first`` and ``second`` (name, load seconds) loaded and asked for
    equally often, ``first`` a little more lately; then ``new`` needs the room of one of them."""
    _load(h, "warm", 0.1)  # an instance's first load also warms its runtime up: not measured
    h.engine.record_requests("warm", 50)
    _load(h, *second)
    _load(h, *first)
    for name in (second[0], first[0]):
        h.engine.record_requests(name, 5)
        h.clock.advance(1)
    h.engine.request_for_cold_model("new")


def test_cost_aware_eviction_gives_up_one_big_model_before_a_small_one_used_as_often() -> None:
    for cost_aware, victim in ((True, "big"), (False, "small")):
        h = Harness(EngineConfig(cost_aware_eviction=cost_aware))
        h.up("i0", capacity_mb=400)
        h.engine.set_desired([model("warm"), model("big", size_mb=200), model("small"),
                              model("new", size_mb=100)])
        _two_used_alike_then_new(h, ("big", 0.1), ("small", 0.1))
        # per byte big is worth half of small: it goes, though small was used less lately
        assert h.unloads(h.tick()) == [("i0", f"{victim}__isvc-a")], cost_aware


def test_cost_aware_eviction_keeps_the_model_whose_load_took_longer() -> None:
    h = Harness(EngineConfig(cost_aware_eviction=True))
    h.up("i0", capacity_mb=300)
    h.engine.set_desired([model(n) for n in ("warm", "slow", "quick", "new")])
    _two_used_alike_then_new(h, ("quick", 0.1), ("slow", 2.0))
    assert h.unloads(h.tick()) == [("i0", "quick__isvc-a")]


def test_an_instances_first_load_does_not_count_as_the_models_cost() -> None:
    """The first load on an instance imports the runtime's framework: a model that happened to
    come first would otherwise look costly to reload and hold its place for good."""
    h = Harness(EngineConfig(cost_aware_eviction=True))
    h.up("i0", capacity_mb=200)
    h.engine.set_desired([model(n) for n in ("first", "later", "new")])
    _load(h, "first", 5.0)
    _load(h, "later", 0.1)
    h.engine.record_requests("first", 5)
    h.clock.advance(1)
    h.engine.record_requests("later", 5)
    h.clock.advance(1)
    h.engine.request_for_cold_model("new")
    # first costs the typical load (0.1 s), not its 5 s, and was used less lately: it goes
    assert h.unloads(h.tick()) == [("i0", "first__isvc-a")]


def test_cost_aware_eviction_is_off_by_default() -> None:
    assert not EngineConfig().cost_aware_eviction


def test_lrfu_is_the_default() -> None:
    assert EngineConfig().frequency_half_life_s == 60.0


def test_eviction_spares_min_copies_and_loads_in_flight(h: Harness) -> None:
    h.up("i0", capacity_mb=300)
    h.engine.set_desired([model("keep", min_copies=1), model("old"), model("busy"), model("new")])
    h.settle()  # keep: pre-emptive copy
    h.clock.advance(100)  # keep is now the least recently used ...
    h.engine.request_for_cold_model("old")
    h.settle()
    h.clock.advance(10)
    h.engine.request_for_cold_model("busy")
    h.tick()  # busy is loading, not finished
    h.clock.advance(1)
    h.engine.request_for_cold_model("new")
    actions = h.tick()
    # ... but it is the last copy of a min_copies model, and busy is in flight: old goes.
    assert h.unloads(actions) == [("i0", "old__isvc-a")]


def test_full_instances_new_copy_goes_where_cache_age_is_oldest() -> None:
    for seed in range(10):
        h = Harness(seed=seed)
        h.up("i0", capacity_mb=200)
        h.up("i1", capacity_mb=200)
        h.engine.set_desired([model(n) for n in ("a", "b", "c", "d", "new")])
        for n in "abcd":
            h.engine.request_for_cold_model(n)
            h.settle()
        by_instance = {i: rev for i, rev in h.engine.status()["instances"].items()}
        assert all(len(v["loaded"]) == 2 for v in by_instance.values())
        # Touch everything on i0 recently; i1's models were last used 1000 s ago.
        h.clock.advance(1000)
        for rev in by_instance["i0"]["loaded"]:
            h.engine.record_requests(rev.split("__")[0], 1, "i0")
        h.engine.request_for_cold_model("new")
        assert [i for i, _ in h.unloads(h.tick())] == ["i1"], seed
        h.finish_unloads()
        assert h.loads(h.tick()) == [("i1", "new__isvc-a")], seed


def test_prefers_instance_with_more_free_space(h: Harness) -> None:
    h.up("i0", capacity_mb=1000)
    h.up("i1", capacity_mb=1000)
    h.engine.set_desired([model("a", size_mb=800), model("b", size_mb=100)])
    h.engine.request_for_cold_model("a")
    h.settle()
    h.engine.request_for_cold_model("b")
    (first,) = h.loads(h.tick())
    a_at = h.ready("a")["a__isvc-a"][0]
    assert first[0] != a_at  # 900 MB free beats 200 MB free (< 1/4 of it)


def test_hot_model_avoids_busy_instance() -> None:
    picks = set()
    for seed in range(10):
        h = Harness(seed=seed)
        for i in range(3):
            h.up(f"i{i}")
        h.engine.set_desired([model("busy1"), model("busy2"), model("hot")])
        # equal free space, but i0 and i1 serve a lot of traffic
        h.engine.record_requests("busy1", 5000, "i0")
        h.engine.record_requests("busy2", 3000, "i1")
        h.engine.request_for_cold_model("hot")
        picks.update(i for i, _ in h.loads(h.tick()))
    assert picks == {"i2"}


def test_near_equal_candidates_are_picked_at_random_but_reproducibly() -> None:
    def pick(seed: int) -> str:
        h = Harness(seed=seed)
        for i in range(4):
            h.up(f"i{i}")
        h.engine.set_desired([model("m")])
        h.engine.request_for_cold_model("m")
        return h.loads(h.tick())[0][0]

    picks = [pick(s) for s in range(20)]
    assert len(set(picks)) > 1  # no herding onto one instance
    assert picks == [pick(s) for s in range(20)]  # seeded: the same every run


def test_load_queue_bounded_concurrency_and_urgent_first(h: Harness) -> None:
    h.up("i0", capacity_mb=1000, concurrency=1)
    h.engine.set_desired([model("p1", min_copies=1), model("p2", min_copies=1), model("cold")])
    assert h.loads(h.tick()) == [("i0", "p1__isvc-a")]  # one at a time
    h.engine.request_for_cold_model("cold")
    assert h.loads(h.tick()) == []  # the slot is busy
    h.succeed("i0", "p1__isvc-a")
    actions = h.tick()
    assert h.loads(actions) == [("i0", "cold__isvc-a")] and actions[0].urgent  # jumped ahead of p2
    h.succeed("i0", "cold__isvc-a")
    assert h.loads(h.tick()) == [("i0", "p2__isvc-a")]


def test_concurrency_two_runs_two_loads(h: Harness) -> None:
    h.up("i0", capacity_mb=1000, concurrency=2)
    h.engine.set_desired([model(n, min_copies=1) for n in "abc"])
    assert len(h.loads(h.tick())) == 2


def test_cold_request_upgrades_a_queued_preemptive_load(h: Harness) -> None:
    h.up("i0", concurrency=1)
    h.engine.set_desired([model("p1", min_copies=1), model("p2", min_copies=1), model("p3", min_copies=1)])
    h.tick()  # p1 loading, p2 and p3 queued
    h.engine.request_for_cold_model("p3")
    h.succeed("i0", "p1__isvc-a")
    assert h.loads(h.tick()) == [("i0", "p3__isvc-a")]


def test_measured_size_replaces_estimate_and_evicts_if_over(h: Harness) -> None:
    h.up("i0", capacity_mb=300)
    h.engine.set_desired([model("a"), model("b"), model("big", size_mb=50)])
    for n in "ab":
        h.engine.request_for_cold_model(n)
        h.settle()
        h.clock.advance(5)
    h.engine.request_for_cold_model("big")
    assert h.loads(h.tick()) == [("i0", "big__isvc-a")]  # the 50 MB estimate fits
    h.succeed("i0", "big__isvc-a", size=180 * MB)  # really 180 MB: 380 > 300
    assert h.unloads(h.tick()) == [("i0", "a__isvc-a")]  # the LRU one makes room
    st = h.engine.status()["instances"]["i0"]["loaded"]["big__isvc-a"]
    assert st["size_bytes"] == 180 * MB and st["measured"]


def test_load_waits_until_evicted_copy_is_unloaded(h: Harness) -> None:
    h.up("i0", capacity_mb=200)
    h.engine.set_desired([model("a"), model("b"), model("c")])
    for n in "ab":
        h.engine.request_for_cold_model(n)
        h.settle()
    h.clock.advance(h.engine.config.min_cache_s)  # past the grace of freshly loaded copies
    h.engine.request_for_cold_model("c")
    actions = h.tick()
    assert h.unloads(actions) == [("i0", "a__isvc-a")] and h.loads(actions) == []  # memory not free yet
    h.finish_unloads()
    assert h.loads(h.tick()) == [("i0", "c__isvc-a")]


def test_a_load_overlaps_the_drain_of_its_victims_within_the_unload_headroom(h: Harness) -> None:
    # room for two 100 MB copies and 100 MB of headroom: one victim may
    # still be draining while its replacement loads, two may not
    info = InstanceInfo("i0", "rt", "127.0.0.1", 9000, 9100, 200 * MB, 1, unload_headroom_bytes=100 * MB)
    h.engine.instance_up(info, {})
    h.engine.set_desired([model("a"), model("b"), model("c"), model("big", size_mb=160)])
    for n in "ab":
        h.engine.request_for_cold_model(n)
        h.settle()
    h.clock.advance(h.engine.config.min_cache_s)
    h.engine.request_for_cold_model("c")
    actions = h.tick()
    assert h.unloads(actions) == [("i0", "a__isvc-a")] and h.loads(actions) == [("i0", "c__isvc-a")]
    h.settle()
    h.clock.advance(h.engine.config.min_cache_s)
    h.engine.request_for_cold_model("big")  # 160 MB: evicts b and c, 200 MB still draining
    actions = h.tick()
    assert sorted(h.unloads(actions)) == [("i0", "b__isvc-a"), ("i0", "c__isvc-a")]
    assert h.loads(actions) == []  # 200 + 160 > 200 + 100: it waits for the unloads
    h.finish_unloads()
    assert h.loads(h.tick()) == [("i0", "big__isvc-a")]


def test_overlap_unload_and_load_when_configured() -> None:
    h = Harness(EngineConfig(overlap_unload_and_load=True))
    h.up("i0", capacity_mb=200)
    h.engine.set_desired([model("a"), model("b"), model("c")])
    for n in "ab":
        h.engine.request_for_cold_model(n)
        h.settle()
    h.clock.advance(h.engine.config.min_cache_s)
    h.engine.request_for_cold_model("c")
    actions = h.tick()
    assert h.unloads(actions) == [("i0", "a__isvc-a")] and h.loads(actions) == [("i0", "c__isvc-a")]


def test_model_larger_than_any_instance_reports_why(h: Harness) -> None:
    h.up("i0", capacity_mb=100)
    h.engine.set_desired([model("huge", size_mb=500)])
    h.engine.request_for_cold_model("huge")
    assert h.tick() == []
    assert "more than any instance" in (h.engine.model_status("huge").waiting or "")
    assert h.engine.model_status("nope").known is False


def test_when_loads_fall_behind_cold_models_wait_instead_of_evicting_ready_copies(h: Harness) -> None:
    # One loader on one instance, room for 4 copies: three hot models are ready, then a burst of
    # cold requests arrives faster than loads finish.
    h.up("i0", capacity_mb=400)
    hot = ["hot1", "hot2", "hot3"]
    h.engine.set_desired([model(n) for n in [*hot, *(f"cold{i}" for i in range(6))]])
    for n in hot:
        h.engine.request_for_cold_model(n)
        h.settle()
        h.clock.advance(1)
    h.clock.advance(h.engine.config.min_cache_s)
    for i in range(6):
        h.clock.advance(0.1)
        h.engine.request_for_cold_model(f"cold{i}")
    actions = h.tick()
    # one copy for the free load slot and max_queued_loads (2) behind it are placed: only the room
    # they need is taken, so one hot model stays ready; the other cold models wait unplaced
    assert h.loads(actions) == [("i0", "cold0__isvc-a")]
    assert h.unloads(actions) == [("i0", "hot1__isvc-a"), ("i0", "hot2__isvc-a")]
    assert h.ready("hot3") == {"hot3__isvc-a": ["i0"]}
    assert [h.engine.model_status(f"cold{i}").loading_copies for i in range(6)] == [1, 1, 1, 0, 0, 0]
    # every cold model is served in the end, in the order its request came
    started = ["cold0"]
    for _ in range(20):
        for key in list(h.loading):
            h.succeed(*key)
        h.finish_unloads()
        h.clock.advance(h.engine.config.min_cache_s)  # each new copy serves its requests first
        started += [rev.split("__")[0] for _, rev in h.loads(h.tick())]
    assert started == [f"cold{i}" for i in range(6)]
    assert [h.engine.model_status(f"cold{i}").ready for i in range(6)] == [False] * 2 + [True] * 4


def test_cold_models_are_placed_in_the_order_their_requests_came(h: Harness) -> None:
    h.up("i0", capacity_mb=1000)
    # names sort the other way round from the arrival order
    order = ["z", "y", "x", "w", "v"]
    h.engine.set_desired([model(n) for n in order])
    for n in order:
        h.engine.request_for_cold_model(n)
        h.clock.advance(0.1)
    started = []
    for _ in range(len(order)):
        for a in h.tick():
            started.append(a.revision.split("__")[0])
            h.succeed(a.instance, a.revision)
    assert started == order


def test_an_optional_copy_evicts_only_copies_used_before_its_model_was() -> None:
    h = Harness()
    h.up("i0", capacity_mb=100)
    h.engine.set_desired([model("m"), model("x")])
    h.engine.request_for_cold_model("m")
    h.settle()
    h.up("i1", capacity_mb=100)
    h.engine.request_for_cold_model("x")
    h.settle()
    h.clock.advance(60)
    h.engine.record_requests("m", 5000)  # busy enough for a second copy ...
    h.engine.record_requests("x", 1)  # ... but x was used at the same moment
    h.clock.advance(h.engine.config.scale_interval_s)
    assert h.tick() == []
    assert h.ready("x") == {"x__isvc-a": ["i1"]} and h.ready("m") == {"m__isvc-a": ["i0"]}


def test_an_evicted_copy_is_not_placed_again_when_room_appears() -> None:
    h = Harness()
    h.up("i0", capacity_mb=200)
    h.engine.set_desired([model(n) for n in "abc"])
    for n in "ab":
        h.engine.request_for_cold_model(n)
        h.settle()
        h.clock.advance(1)
    h.clock.advance(h.engine.config.min_cache_s)
    h.engine.request_for_cold_model("c")
    assert h.unloads(h.tick()) == [("i0", "a__isvc-a")]
    h.settle()
    h.engine.set_desired([model("a"), model("c")])  # b goes: room for a again
    h.settle()
    h.clock.advance(h.engine.config.scale_interval_s)
    assert h.tick() == []  # a waits for its next request
    assert h.ready("a") == {"a__isvc-a": []}


def test_a_copy_found_on_an_instance_is_evicted_before_any_model_copy() -> None:
    h = Harness()  # LRFU: orphans have no score, and go first whatever the order
    h.up("i0", capacity_mb=300)
    h.engine.set_desired([model("a"), model("n")])
    h.engine.request_for_cold_model("a")
    h.settle()
    h.clock.advance(60)
    h.engine.request_for_cold_model("n")
    assert h.loads(h.tick()) == [("i0", "n__isvc-a")]
    h.clock.advance(1)
    # while n loads, the runtime turns out to hold a stray copy (the orphan sweep comes at the
    # next tick), and n proves bigger than estimated: 100 + 200 + 50 MB > 300 MB
    h.engine.inventory("i0", {"a__isvc-a": 100 * MB, "stray__isvc-z": 50 * MB}, h.engine.copies_on("i0"))
    h.succeed("i0", "n__isvc-a", 200 * MB)
    assert h.unloads(h.tick()) == [("i0", "stray__isvc-z")]
    assert h.ready("a") == {"a__isvc-a": ["i0"]}


def test_a_copy_that_must_be_placed_evicts_another_models_minimum_when_nothing_else_can_go() -> None:
    h = Harness()
    h.up("i0", capacity_mb=100)
    h.engine.set_desired([model("keep", min_copies=1), model("cold")])
    h.settle()
    h.clock.advance(60)
    h.engine.request_for_cold_model("cold")  # requests wait: it must be placed
    assert h.unloads(h.tick()) == [("i0", "keep__isvc-a")]
    assert h.engine.copies_on("i0")["cold__isvc-a"].value == "queued"


def test_a_copy_goes_where_it_fits_exactly_before_evicting_anywhere() -> None:
    h = Harness()
    h.up("i0", capacity_mb=100)
    h.engine.set_desired([model("x"), model("y"), model("n")])
    h.engine.request_for_cold_model("x")
    h.settle()  # x on i0, used long ago
    h.up("i1", capacity_mb=200)
    h.clock.advance(100)
    h.engine.request_for_cold_model("y")
    h.settle()  # y on i1, just used: i1 has exactly 100 MB left
    h.clock.advance(1)
    h.engine.request_for_cold_model("n")
    actions = h.tick()
    assert h.unloads(actions) == [] and h.loads(actions) == [("i1", "n__isvc-a")]


def test_an_instance_holding_fewer_models_stays_a_candidate_beside_one_with_much_more_room() -> None:
    picks = set()
    for seed in range(10):
        h = Harness(seed=seed)
        h.engine.set_desired([model(n) for n in ("a", "b", "c", "new")])
        h.up("i0", capacity_mb=1000, loaded={"a__isvc-a": 100 * MB, "b__isvc-a": 100 * MB})  # 800 MB free
        h.up("i1", capacity_mb=250, loaded={"c__isvc-a": 100 * MB})  # 150 MB free, one model
        h.engine.request_for_cold_model("new")
        picks.update(i for i, _ in h.loads(h.tick()))
    assert picks == {"i0", "i1"}  # i1 ranks first; i0 is near it (free ≥ a quarter of i1's)


def test_an_urgent_copy_goes_where_fewer_loads_are_queued_or_running() -> None:
    for seed in range(10):
        h = Harness(seed=seed)
        h.up("i0", concurrency=2)
        h.up("i1", concurrency=2)
        h.engine.set_desired([model(n) for n in "abcd"])
        for n in "abc":
            h.engine.request_for_cold_model(n)
        first = h.loads(h.tick())
        assert len(first) == 3
        busier = max(("i0", "i1"), key=lambda i: sum(1 for j, _ in first if j == i))
        h.engine.request_for_cold_model("d")
        assert h.loads(h.tick()) == [("i1" if busier == "i0" else "i0", "d__isvc-a")], seed


@pytest.mark.parametrize("concurrency", [2, 3])
def test_copies_placed_behind_loads_in_flight_count_the_free_slots(concurrency: int) -> None:
    h = Harness()
    h.up("i0", concurrency=concurrency)
    running = [model(f"l{i}", min_copies=1) for i in range(concurrency - 1)]
    h.engine.set_desired(running)
    assert len(h.loads(h.tick())) == concurrency - 1  # one slot left free
    h.engine.set_desired(running + [model(f"p{i}", min_copies=1) for i in range(4)])
    assert h.loads(h.tick()) == [("i0", "p0__isvc-a")]  # the free slot ...
    copies = h.engine.copies_on("i0")
    assert (copies["p1__isvc-a"].value, copies["p2__isvc-a"].value) == ("queued", "queued")  # ... and 2
    assert "p3__isvc-a" not in copies


@pytest.mark.parametrize("off", [None, 0.0])
def test_plain_lru_counts_no_frequency(off: float | None) -> None:
    h = Harness(EngineConfig(frequency_half_life_s=off))
    h.up("i0")
    h.engine.set_desired([model("m")])
    h.engine.request_for_cold_model("m")
    h.settle()
    h.engine.record_requests("m", 1)
    h.clock.advance(10)
    h.engine.record_requests("m", 1)
    assert h.engine.status()["models"]["m"]["requests_per_min"] == 2.0


def test_a_copy_lost_of_a_model_never_used_is_placed_again_over_copies_used_before() -> None:
    h = Harness()
    h.up("i1", capacity_mb=100)
    h.engine.set_desired([model("m"), model("x")])
    h.engine.request_for_cold_model("x")
    h.settle()  # x on i1
    h.clock.advance(100)
    h.up("i0", loaded={"m__isvc-a": 100 * MB})  # m adopted: wanted, never used
    h.engine.instance_down("i0")
    assert h.unloads(h.tick()) == [("i1", "x__isvc-a")]
    assert h.engine.copies_on("i1")["m__isvc-a"].value == "queued"
