"""Copies follow request load: up when busy per copy, down when idle; second copy for steady use."""

from __future__ import annotations

import math

import pytest
from placement_harness import Harness, model

from placement.engine.model_types import EngineConfig
from placement.engine.scaling import DecayingCount, RateTracker, ScaleInput, copy_cap, decide_copies


def _hot(n_instances: int = 6, config: EngineConfig | None = None) -> Harness:
    h = Harness(config)
    for i in range(n_instances):
        h.up(f"i{i}")
    h.engine.set_desired([model("m")])
    h.engine.request_for_cold_model("m")
    h.settle()
    return h


def _traffic(h: Harness, per_min: int, minutes: float) -> None:
    for _ in range(int(minutes * 6)):
        h.engine.record_requests("m", per_min // 6)
        h.clock.advance(10)
        h.settle()


def test_scales_up_when_rate_per_copy_is_high_and_caps() -> None:
    h = _hot(6)
    _traffic(h, 3000, 1)  # 3000/min on one copy > 2000
    assert len(h.ready("m")["m__isvc-a"]) == 2
    _traffic(h, 9000, 3)  # would want 5, cap is max(2, 6/3) = 2
    assert len(h.ready("m")["m__isvc-a"]) == 2
    h.up("i6")
    h.up("i7")
    h.up("i8")  # 9 instances: cap 3
    _traffic(h, 9000, 1)
    assert len(h.ready("m")["m__isvc-a"]) == 3


def test_scales_down_when_idle_but_keeps_one_copy() -> None:
    h = _hot(6)
    _traffic(h, 4000, 2)
    assert len(h.ready("m")["m__isvc-a"]) == 2
    _traffic(h, 0, 30)
    assert len(h.ready("m")["m__isvc-a"]) == 1  # the last copy goes only by LRU eviction


def test_no_idle_scale_down_when_disabled() -> None:
    h = _hot(6, EngineConfig(idle_scale_down=False))
    _traffic(h, 4000, 2)
    _traffic(h, 0, 30)
    assert len(h.ready("m")["m__isvc-a"]) == 2


def test_scale_down_never_below_min_copies() -> None:
    h = Harness()
    for i in range(6):
        h.up(f"i{i}")
    h.engine.set_desired([model("m", min_copies=2)])
    h.settle()
    _traffic(h, 8000, 2)
    assert len(h.ready("m")["m__isvc-a"]) == 2  # cap 2 already reached
    _traffic(h, 0, 30)
    assert len(h.ready("m")["m__isvc-a"]) == 2


def test_second_copy_for_steadily_used_model() -> None:
    h = _hot(3)
    _traffic(h, 60, 39)
    assert len(h.ready("m")["m__isvc-a"]) == 1
    _traffic(h, 60, 2)  # in use for 40 minutes and used within the last 7
    assert len(h.ready("m")["m__isvc-a"]) == 2



@pytest.mark.parametrize(("idle", "copies"), [(300.0, 2), (300.5, 1)])
def test_a_streak_ended_by_a_gap_over_usage_gap_s_earns_no_second_copy(idle: float, copies: int) -> None:
    # a gap shorter than second_copy_recent_s: used "recently", but no longer "in use"
    h = _hot(2, EngineConfig(usage_gap_s=300.0))
    h.engine.record_requests("m", 1)
    for _ in range(39):
        h.clock.advance(60)
        h.engine.record_requests("m", 1)
    h.clock.advance(59)
    h.engine.record_requests("m", 1)  # in use for 2399 s, one short of second_copy_history_s
    h.clock.advance(idle)  # the first scale tick since: the streak is 2399 s + idle long, or over
    h.settle()
    assert len(h.ready("m")["m__isvc-a"]) == copies

def test_rate_tracker_window() -> None:
    r = RateTracker(window_s=60, bucket_s=10)
    r.add(0, 100)
    r.add(30, 100)
    assert r.per_minute(30) == 200
    assert r.per_minute(71) == 100  # the first bucket left the window
    assert r.per_minute(200) == 0


def test_decide_copies_rules() -> None:
    cfg = EngineConfig()
    assert copy_cap(9, cfg) == 3 and copy_cap(1, cfg) == 1
    assert decide_copies(ScaleInput(2, 4100, 0, 0, math.inf, 0, 9), cfg) == 3
    assert decide_copies(ScaleInput(3, 9000, 0, 0, math.inf, 0, 9), cfg) == 3  # capped
    assert decide_copies(ScaleInput(2, 1500, 0, 0, math.inf, 0, 9), cfg) == 2  # 1500/1 not < 1000
    assert decide_copies(ScaleInput(2, 900, 0, 0, math.inf, 0, 9), cfg) == 1
    assert decide_copies(ScaleInput(2, 900, 0, 0, 60, 0, 9), cfg) == 2  # too soon after a change
    assert decide_copies(ScaleInput(2, 0, math.inf, 0, math.inf, 2, 9), cfg) == 2  # min_copies
    assert decide_copies(ScaleInput(1, 0, 0, 0, math.inf, 0, 9), cfg) == 1


def test_decaying_count_halves_every_half_life_and_adds_on_top() -> None:
    c = DecayingCount(half_life_s=10.0)
    assert c.at(5.0) == 0.0
    c.add(0.0, 8)
    assert c.at(0.0) == 8.0 and c.at(10.0) == 4.0 and c.at(30.0) == 1.0
    c.add(10.0, 1)  # 4 left of the first 8, and 1 more
    assert c.at(10.0) == 5.0 and c.at(20.0) == 2.5
    assert c.at(5.0) == 5.0  # no growth backwards in time: the value as of the last record
    c.add(5.0, 1)  # a late record counts in full, and the clock does not go back
    assert c.stamp == 10.0 and c.at(10.0) == 6.0


def test_models_in_a_canary_or_without_a_ready_copy_do_not_stop_the_others_scaling() -> None:
    h = Harness()
    for i in range(3):
        h.up(f"i{i}")
    # listed first, so met first: a model in a canary, and one with no ready copy
    h.engine.set_desired([model("a_canary", "v1", min_copies=1), model("a_cold"),
                          model("z_hot", min_copies=1)])
    h.settle()
    h.engine.set_desired([model("a_canary", "v2", min_copies=1, canary_percent=20), model("a_cold"),
                          model("z_hot", min_copies=1)])
    h.settle()
    h.engine.record_requests("z_hot", 5000)  # far above scale_up_rpm_per_copy (2000)
    h.clock.advance(h.engine.config.scale_interval_s)
    h.tick()
    assert h.engine.model_status("z_hot").loading_copies == 1


def test_idle_scale_down_takes_the_copy_on_the_most_crowded_instance() -> None:
    h = Harness()
    h.up("i1")
    h.engine.set_desired([model("filler", size_mb=800, min_copies=1), model("m")])
    h.settle()  # filler on i1
    h.up("i0")
    h.engine.request_for_cold_model("m")
    assert h.loads(h.tick()) == [("i0", "m__isvc-a")]  # i1's 200 MB free is not near i0's 1000
    h.settle()
    h.engine.record_requests("m", 5000)
    h.clock.advance(h.engine.config.scale_interval_s)
    assert h.loads(h.tick()) == [("i1", "m__isvc-a")]  # a second copy, where there is room
    h.settle()
    h.clock.advance(h.engine.config.idle_s + h.engine.config.scale_down_delay_s)
    assert h.unloads(h.tick()) == [("i1", "m__isvc-a")]  # i1 has 100 MB free, i0 900 MB


def test_scale_down_never_takes_the_last_ready_copy_while_another_is_loading() -> None:
    h = Harness()
    for i in range(3):
        h.up(f"i{i}")
    slow = model("a_slow", min_copies=2, load_timeout_s=10**6)
    h.engine.set_desired([slow, model("z_busy", min_copies=1)])
    loads = h.loads(h.tick())
    (first,) = [lo for lo in loads if lo[1] == "a_slow__isvc-a"][:1]
    h.succeed(*first)  # the other copy of a_slow keeps loading
    for lo in [lo for lo in loads if lo[1] == "z_busy__isvc-a"]:
        h.succeed(*lo)
    h.engine.set_desired([model("a_slow", load_timeout_s=10**6), model("z_busy", min_copies=1)])
    h.clock.advance(h.engine.config.idle_s + h.engine.config.scale_down_delay_s)
    h.engine.record_requests("z_busy", 5000)  # and z_busy, met after a_slow, needs another copy
    assert h.unloads(h.tick()) == []  # a_slow: one copy too many, but its only ready one stays
    assert h.engine.model_status("z_busy").loading_copies == 1


def test_a_removed_model_still_loading_does_not_stop_scaling() -> None:
    h = Harness()
    for i in range(3):
        h.up(f"i{i}")
    h.engine.set_desired([model("a_gone"), model("z_hot", min_copies=1)])
    h.engine.request_for_cold_model("a_gone")
    h.tick()
    h.engine.set_desired([model("z_hot", min_copies=1)])  # a_gone's load is still under way
    for key in [k for k in h.loading if k[1] == "z_hot__isvc-a"]:
        h.succeed(*key)
    h.engine.record_requests("z_hot", 5000)
    h.clock.advance(h.engine.config.scale_interval_s)
    h.tick()
    assert h.engine.model_status("z_hot").loading_copies == 1
