"""Request-rate signals and the copy-count decision (ModelMesh's scale-up, plus idle scale-down)."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from placement.engine.model_types import EngineConfig


class RateTracker:
    """Requests per minute over a sliding window, kept in fixed buckets (O(1) per record)."""

    def __init__(self, window_s: float = 60.0, bucket_s: float = 10.0) -> None:
        self.window_s = window_s
        self.bucket_s = bucket_s
        self._buckets: deque[list[float]] = deque()  # [bucket start, count]

    def add(self, now: float, count: float) -> None:
        start = math.floor(now / self.bucket_s) * self.bucket_s
        if self._buckets and self._buckets[-1][0] == start:
            self._buckets[-1][1] += count
        else:
            self._buckets.append([start, float(count)])
        self._trim(now)

    def per_minute(self, now: float) -> float:
        self._trim(now)
        total = sum(c for _, c in self._buckets)
        return total * 60.0 / self.window_s

    def _trim(self, now: float) -> None:
        horizon = now - self.window_s
        while self._buckets and self._buckets[0][0] + self.bucket_s <= horizon:
            self._buckets.popleft()


class DecayingCount:
    """Requests counted with exponential decay: each halves in weight every ``half_life_s``.

    LRFU's reference score (Lee et al., 2001): a short half-life ranks by recency (LRU), a long
    one by frequency (LFU). O(1) per record; the value is kept as of ``stamp``."""

    __slots__ = ("half_life_s", "stamp", "value")

    def __init__(self, half_life_s: float) -> None:
        self.half_life_s = half_life_s
        self.value = 0.0
        self.stamp = 0.0

    def add(self, now: float, count: float) -> None:
        self.value = self.at(now) + count
        self.stamp = max(self.stamp, now)

    def at(self, now: float) -> float:
        if self.value == 0.0 or now <= self.stamp:
            return self.value
        return self.value * 0.5 ** ((now - self.stamp) / self.half_life_s)


class UsageHistory:
    """When a model was last used and since when it has been in use without a long gap."""

    def __init__(self, gap_s: float) -> None:
        self.gap_s = gap_s
        self.last_used: float | None = None
        self.streak_start: float | None = None

    def touch(self, now: float) -> None:
        if self.last_used is None or now - self.last_used > self.gap_s:
            self.streak_start = now
        self.last_used = now if self.last_used is None else max(self.last_used, now)

    def idle_for(self, now: float) -> float:
        return math.inf if self.last_used is None else now - self.last_used


@dataclass(frozen=True)
class ScaleInput:
    copies: int  # ready copies of the routed revision
    rate_per_min: float  # the model's request rate
    idle_s: float  # since the last request (inf: never used)
    in_use_s: float  # length of the current usage streak (0 if idle)
    since_last_change_s: float  # since the engine last changed this model's copy count
    min_copies: int
    instances: int  # instances of the model's runtime that are up


def copy_cap(instances: int, config: EngineConfig) -> int:
    """ModelMesh's cap: max(2, a third of the instances), never more than there are instances."""
    cap = config.max_copies if config.max_copies is not None else max(2, math.ceil(instances / 3))
    return max(0, min(cap, instances))


def decide_copies(s: ScaleInput, config: EngineConfig) -> int:
    """The copy count a model should move to (one step at a time, so it settles gently).

    Up: when the rate per copy passes ``scale_up_rpm_per_copy`` (ModelMesh: 2000/min), or a second
    copy for a model used steadily for ``second_copy_history_s`` and recently (ModelMesh: used 7 and
    40 minutes ago). Down (msm addition, ``idle_scale_down``): when idle for ``idle_s`` or when one
    copy fewer would stay under ``scale_down_fraction`` of the threshold, never below
    ``max(1, min_copies)``; the last copy leaves only by LRU eviction, as in ModelMesh.
    """
    n = s.copies
    if n <= 0:
        return n
    cap = max(copy_cap(s.instances, config), s.min_copies)
    floor = max(1, s.min_copies)
    per_copy = s.rate_per_min / n
    if per_copy > config.scale_up_rpm_per_copy and n < cap:
        return n + 1
    idle = config.idle_scale_down and s.idle_s >= config.idle_s
    # Not steady once idle: with an ``idle_s`` below ``second_copy_recent_s`` the second copy
    # would otherwise go at ``idle_s`` and come back at the next tick.
    steady = (s.idle_s <= config.second_copy_recent_s and s.in_use_s >= config.second_copy_history_s
              and not idle)
    if steady and n < 2 <= cap:
        return 2
    if not config.idle_scale_down or n <= floor or s.since_last_change_s < config.scale_down_delay_s:
        return n
    if idle:
        return n - 1
    keep = 2 if steady else 1
    if n > keep and s.rate_per_min / (n - 1) < config.scale_down_fraction * config.scale_up_rpm_per_copy:
        return n - 1
    return n
