"""The engine's pure pieces at their boundaries: the load factor and candidate filters of
placement, rate and usage tracking, the copy cap and count, and the load queue's room check."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from placement_harness import MB, Harness, model

from placement.engine import policy
from placement.engine.instance_cache import CachedCopy, InstanceCache, Phase
from placement.engine.load_queue import next_loads
from placement.engine.model_types import EngineConfig, InstanceInfo
from placement.engine.scaling import (
    DecayingCount,
    RateTracker,
    ScaleInput,
    UsageHistory,
    copy_cap,
    decide_copies,
)

CFG = EngineConfig()


def cand(name: str, *, fits: bool = True, free: int = 0, models: int = 0, age: float = 0.0,
         rpm: float = 0.0, queue: int = 0) -> policy.Candidate:
    return policy.Candidate(name, fits, free, models, age, rpm, queue)


def test_load_factor_is_hot_then_cold_with_a_straight_line_between() -> None:
    assert policy.load_factor(CFG.hot_use_s, CFG) == CFG.load_factor_hot
    assert policy.load_factor(CFG.cold_use_s, CFG) == CFG.load_factor_cold
    middle = (CFG.hot_use_s + CFG.cold_use_s) / 2
    assert policy.load_factor(middle, CFG) == pytest.approx((CFG.load_factor_hot + CFG.load_factor_cold) / 2)
    quarter = CFG.hot_use_s + (CFG.cold_use_s - CFG.hot_use_s) / 4
    assert policy.load_factor(quarter, CFG) == pytest.approx(1.1 + 0.25 * 2.9)


def test_near_best_bounds_are_inclusive() -> None:
    # fits: free space at exactly a quarter of the best's stays near
    assert [c.instance for c in policy.near_best([cand("a", free=400), cand("b", free=100),
                                                  cand("c", free=99)], CFG)] == ["a", "b"]
    # must evict: cache age exactly the slack (max(45 s, 10 %)) below the oldest stays near
    cands = [cand("a", fits=False, age=1000.0), cand("b", fits=False, age=900.0),
             cand("c", fits=False, age=899.0)]
    assert [c.instance for c in policy.near_best(cands, CFG)] == ["a", "b"]
    # must evict where nothing ready can go (age infinite): only those, not a finite-age one
    cands = [cand("a", fits=False, age=float("inf")), cand("b", fits=False, age=100.0)]
    assert [c.instance for c in policy.near_best(cands, CFG)] == ["a"]


def test_choose_keeps_candidates_within_the_load_slack_and_at_the_limit() -> None:
    def picks(cands: list[policy.Candidate], idle_s: float) -> set[str]:
        return {policy.choose(cands, random.Random(seed), idle_s, False, CFG).instance for seed in range(40)}

    # lowest 0 rpm: the slack (60 rpm) keeps a 50 rpm instance in the pool
    assert picks([cand("a", free=MB), cand("b", free=MB, rpm=50.0)], 0.0) == {"a", "b"}
    # lowest 100 rpm, a hot model: limit max(110, 160) = 160, inclusive
    assert picks([cand("a", free=MB, rpm=100.0), cand("b", free=MB, rpm=160.0),
                  cand("c", free=MB, rpm=161.0)], 0.0) == {"a", "b"}


def test_rate_tracker_defaults_buckets_and_window_edge() -> None:
    r = RateTracker()
    r.add(1.0, 2)
    r.add(2.0, 3)  # the same 10 s bucket: added up
    assert r.per_minute(2.0) == 5.0
    r = RateTracker()
    r.add(0.0, 1)  # bucket [0, 10)
    r.add(10.5, 2)  # bucket [10, 20)
    assert r.per_minute(69.9) == 3.0
    assert r.per_minute(70.0) == 2.0  # [0, 10) ends exactly at the window's start: gone
    assert r.per_minute(80.0) == 0.0


def test_usage_streaks_and_last_use_never_go_back() -> None:
    u = UsageHistory(gap_s=600.0)
    u.touch(0.0)
    u.touch(600.0)  # a gap of exactly gap_s does not end the streak
    assert (u.streak_start, u.last_used) == (0.0, 600.0)
    u.touch(500.0)  # a late report
    assert u.last_used == 600.0
    u.touch(1200.5)
    assert u.streak_start == 1200.5


def test_decaying_count_of_one() -> None:
    c = DecayingCount(half_life_s=10.0)
    c.add(0.0, 1)
    assert c.at(10.0) == 0.5


def test_copy_cap_and_the_copy_count_at_their_edges() -> None:
    assert copy_cap(10, EngineConfig(max_copies=5)) == 5
    assert copy_cap(10, CFG) == 4  # a third of 10, rounded up
    assert copy_cap(0, CFG) == 0
    base = ScaleInput(copies=1, rate_per_min=0.0, idle_s=0.0, in_use_s=0.0, since_last_change_s=0.0,
                      min_copies=0, instances=6)
    assert decide_copies(replace(base, copies=0, rate_per_min=9e9), CFG) == 0
    at = replace(base, rate_per_min=CFG.scale_up_rpm_per_copy)
    assert decide_copies(at, CFG) == 1  # exactly the threshold: not above it
    assert decide_copies(replace(at, rate_per_min=CFG.scale_up_rpm_per_copy + 1), CFG) == 2
    steady = replace(base, idle_s=CFG.second_copy_recent_s, in_use_s=CFG.second_copy_history_s)
    assert decide_copies(steady, CFG) == 2  # both bounds inclusive


def _cache(capacity: int, headroom: int = 0, concurrency: int = 1) -> InstanceCache:
    return InstanceCache(InstanceInfo("i0", "rt", "127.0.0.1", 1, 2, capacity, concurrency, headroom))


def test_next_loads_checks_room_without_the_headroom_and_counts_each_load() -> None:
    cache = _cache(300, headroom=1000)
    cache.copies["r"] = CachedCopy("r", "r", Phase.READY, 250, True, 0.0)
    cache.copies["q"] = CachedCopy("q", "q", Phase.QUEUED, 100, False, 0.0, seq=1)
    assert next_loads(cache, False) == []  # 350 > 300: the headroom is for draining copies only
    cache = _cache(150, concurrency=2)
    cache.copies["r"] = CachedCopy("r", "r", Phase.READY, 40, True, 0.0)
    cache.copies["a"] = CachedCopy("a", "a", Phase.QUEUED, 100, False, 0.0, seq=1)
    cache.copies["b"] = CachedCopy("b", "b", Phase.QUEUED, 15, False, 0.0, seq=2)
    assert [c.revision for c in next_loads(cache, False)] == ["a"]  # 40 + 100 + 15 > 150
    cache = _cache(300)
    cache.copies["big"] = CachedCopy("big", "big", Phase.QUEUED, 500, False, 0.0, seq=1)
    assert [c.revision for c in next_loads(cache, False)] == ["big"]  # alone, it may try


def test_plan_eviction_frees_exactly_what_is_needed() -> None:
    cache = _cache(1000)
    for i, rev in enumerate("abc"):
        cache.copies[rev] = CachedCopy(rev, rev, Phase.READY, 100, True, float(i))
    assert [c.revision for c in cache.plan_eviction(1, lambda c: True)] == ["a"]
    assert [c.revision for c in cache.plan_eviction(100, lambda c: True)] == ["a"]
    assert [c.revision for c in cache.plan_eviction(101, lambda c: True)] == ["a", "b"]
    assert cache.plan_eviction(301, lambda c: True) is None


def test_a_second_load_slot_starts_a_load_while_one_runs() -> None:
    h = Harness()
    h.up("i0", concurrency=2)
    h.engine.set_desired([model("a"), model("b")])
    h.engine.request_for_cold_model("a")
    assert h.loads(h.tick()) == [("i0", "a__isvc-a")]
    h.engine.request_for_cold_model("b")
    assert h.loads(h.tick()) == [("i0", "b__isvc-a")]  # a still loads: one slot left
