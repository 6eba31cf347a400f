"""The placement policy in isolation: ranking, near-best candidates, request-load filter."""

from __future__ import annotations

import math
import random

from placement_harness import Harness, model

from placement.engine.model_types import EngineConfig
from placement.engine.policy import Candidate, choose, load_factor, near_best

CFG = EngineConfig()


def cand(i: str, fits: bool = True, free: int = 100, models: int = 0, age: float = math.inf, rpm: float = 0,
         queue: int = 0) -> Candidate:
    return Candidate(i, fits, free, models, age, rpm, queue)


def test_fitting_beats_evicting_and_free_space_quarter_rule() -> None:
    cs = [cand("full", fits=False, age=9999), cand("big", free=1000), cand("mid", free=300),
          cand("tiny", free=100)]
    assert sorted(c.instance for c in near_best(cs, CFG)) == ["big", "mid"]  # ≥ 1/4 of 1000


def test_cache_age_window_when_all_full() -> None:
    cs = [cand("a", fits=False, age=1000), cand("b", fits=False, age=950), cand("c", fits=False, age=800)]
    assert sorted(c.instance for c in near_best(cs, CFG)) == ["a", "b"]  # within max(45 s, 10 %)
    cs = [cand("a", fits=False, age=100), cand("b", fits=False, age=60), cand("c", fits=False, age=50)]
    assert sorted(c.instance for c in near_best(cs, CFG)) == ["a", "b"]  # 45 s floor


def test_load_filter_is_strict_for_hot_models_and_loose_for_cold() -> None:
    cs = [cand("quiet", rpm=1000), cand("busy", rpm=3000)]
    hot = {choose(cs, random.Random(s), 0, False, CFG).instance for s in range(20)}
    cold = {choose(cs, random.Random(s), math.inf, False, CFG).instance for s in range(20)}
    assert hot == {"quiet"} and cold == {"quiet", "busy"}
    assert load_factor(0, CFG) == 1.1 and load_factor(math.inf, CFG) == 4.0
    assert 1.1 < load_factor(600, CFG) < 4.0


def test_urgent_load_prefers_short_load_queue() -> None:
    cs = [cand("queued", queue=3), cand("idle", queue=0)]
    assert {choose(cs, random.Random(s), 0, True, CFG).instance for s in range(10)} == {"idle"}
    assert choose([], random.Random(0), 0, True, CFG) is None


def test_preemptive_copy_never_evicts_a_hotter_model() -> None:
    """msm addition: only a load that requests wait for (or min_copies) may evict hotter copies."""
    h = Harness()
    h.up("i0", capacity_mb=100)
    h.up("i1", capacity_mb=100)
    h.engine.set_desired([model("old"), model("hot")])
    h.engine.request_for_cold_model("old")
    h.settle()
    old_at = h.ready("old")["old__isvc-a"][0]
    h.clock.advance(600)
    h.engine.request_for_cold_model("hot")
    h.settle()
    assert h.ready("hot")["hot__isvc-a"] != [old_at]
    h.engine.record_requests("hot", 10)
    h.clock.advance(h.engine.config.min_cache_s)  # "hot" is no longer freshly loaded
    h.engine.instance_down(old_at)  # "old" wants its copy back, but only room is by evicting "hot"
    h.settle()
    assert h.ready("old")["old__isvc-a"] == [] and len(h.ready("hot")["hot__isvc-a"]) == 1
    h.engine.request_for_cold_model("old")  # a request waits: now it may evict
    h.settle()
    assert len(h.ready("old")["old__isvc-a"]) == 1
