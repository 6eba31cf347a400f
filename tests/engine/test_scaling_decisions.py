"""decide_copies and next_loads at the edges the mutation run of session 11 found untested.

Each case sits on a boundary (exactly the delay, exactly idle_s, exactly the scale-down line) or
on a count where one step and two differ, so an off-by-one in the rule changes the answer.
"""

from __future__ import annotations

from dataclasses import replace

from placement.engine.instance_cache import CachedCopy, InstanceCache, Phase
from placement.engine.load_queue import next_loads
from placement.engine.model_types import EngineConfig, InstanceInfo
from placement.engine.scaling import ScaleInput, decide_copies

CFG = EngineConfig()
# Past the scale-down delay, busy (idle 0), no usage streak, on 6 instances (cap 2 by default).
BASE = ScaleInput(copies=2, rate_per_min=0.0, idle_s=0.0, in_use_s=0.0,
                  since_last_change_s=CFG.scale_down_delay_s, min_copies=0, instances=6)
STEADY = replace(BASE, in_use_s=CFG.second_copy_history_s)
WIDE = EngineConfig(max_copies=4)  # room for a third and fourth copy


def test_scale_down_waits_for_exactly_the_delay_since_the_last_change() -> None:
    idle = replace(BASE, idle_s=CFG.idle_s, rate_per_min=3 * CFG.scale_up_rpm_per_copy / 2)
    assert decide_copies(idle, CFG) == 1  # the delay has passed (inclusive)
    assert decide_copies(replace(idle, since_last_change_s=CFG.scale_down_delay_s - 0.5), CFG) == 2


def test_idle_scale_down_starts_at_exactly_idle_s_and_takes_one_copy_a_step() -> None:
    busy = replace(BASE, rate_per_min=3 * CFG.scale_up_rpm_per_copy / 2)  # the rate rule keeps 2
    assert decide_copies(busy, CFG) == 2
    assert decide_copies(replace(busy, idle_s=CFG.idle_s), CFG) == 1  # idle_s reached (inclusive)
    assert decide_copies(replace(busy, idle_s=CFG.idle_s - 0.5), CFG) == 2
    # Three copies of an idle model go to two, not one.
    assert decide_copies(replace(busy, copies=3, idle_s=CFG.idle_s), WIDE) == 2


def test_a_steady_model_keeps_its_second_copy_at_a_low_rate() -> None:
    assert decide_copies(STEADY, CFG) == 2  # steady: two kept, whatever the rate
    assert decide_copies(BASE, CFG) == 1  # the same without the streak: one copy carries rate 0


def test_a_steady_model_gives_up_a_third_copy_but_keeps_two() -> None:
    three = replace(STEADY, copies=3)
    assert decide_copies(three, WIDE) == 2
    assert decide_copies(replace(three, copies=2), WIDE) == 2


def test_the_rate_rule_divides_the_rate_among_one_copy_fewer() -> None:
    line = CFG.scale_down_fraction * CFG.scale_up_rpm_per_copy  # 1000/min with the defaults
    # Three copies at 1,500/min: two would carry 750 each, under the line: one goes. (Multiplying
    # instead of dividing would keep all three.)
    assert decide_copies(replace(BASE, copies=3, rate_per_min=1.5 * line), WIDE) == 2
    # Exactly on the line stays: only a rate strictly under it scales down.
    assert decide_copies(replace(BASE, rate_per_min=line), CFG) == 2
    assert decide_copies(replace(BASE, rate_per_min=line - 1), CFG) == 1


def test_an_idle_s_below_second_copy_recent_s_does_not_bring_the_second_copy_back() -> None:
    """Found by a mutant: with ``idle_s`` shorter than ``second_copy_recent_s`` (both settings a
    user may set in ``placement:``), a steady model lost its second copy at ``idle_s`` and the next
    tick loaded it again, because it still counted as steady (used within 7 minutes)."""
    cfg = EngineConfig(idle_s=120.0)
    idle = replace(STEADY, idle_s=200.0)  # used 200 s ago: within second_copy_recent_s, past idle_s
    assert decide_copies(idle, cfg) == 1
    assert decide_copies(replace(idle, copies=1, since_last_change_s=0.0), cfg) == 1  # and stays
    # Without idle scale-down, the second copy of a steady model stays, as in ModelMesh.
    off = replace(cfg, idle_scale_down=False)
    assert decide_copies(idle, off) == 2
    assert decide_copies(replace(idle, copies=1), off) == 2


def _cache(capacity: int) -> InstanceCache:
    return InstanceCache(InstanceInfo("i0", "rt", "127.0.0.1", 1, 2, capacity, 1, 0))


def test_a_load_that_does_not_fit_waits_behind_even_a_one_byte_copy() -> None:
    cache = _cache(100)
    cache.copies["r"] = CachedCopy("r", "r", Phase.READY, 1, True, 0.0)
    cache.copies["q"] = CachedCopy("q", "q", Phase.QUEUED, 100, False, 0.0, seq=1)
    assert next_loads(cache, False) == []  # 1 + 100 > 100: it waits for the eviction
    del cache.copies["r"]
    assert [c.revision for c in next_loads(cache, False)] == ["q"]  # an empty instance takes it
