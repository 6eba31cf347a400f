"""Where a new copy goes: ModelMesh's ranking and candidate filtering, as a pure function.

Ranking: an instance where the copy fits without evicting beats one that must evict; among those
that fit, fewer models then more free space; among those that must evict, the oldest cache age
(its least recently used model was used longest ago: evicting it costs least). Candidates near
the best (cache age within max(45 s, 10 %), or free space ≥ ¼ of the best's) are then filtered by
request load, strictly for a recently used model (≤ 1.1x the lowest load) and loosely for one
not used in a while (≤ 4x), and one survivor is picked at random: no herding of simultaneous
placements onto one instance. msm addition: for an urgent load (requests waiting), candidates
with a shorter load queue come first, since the queue is part of the waiting requests' latency.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from placement.engine.model_types import EngineConfig


@dataclass(frozen=True)
class Candidate:
    instance: str
    fits: bool  # room without evicting anything
    free_bytes: int
    models: int  # copies held (any phase but unloading)
    cache_age_s: float  # inf when the instance holds nothing
    load_rpm: float  # requests per minute the instance serves
    load_queue: int  # loads queued or running there


def load_factor(idle_s: float, config: EngineConfig) -> float:
    """How much busier than the least busy candidate an instance may be, by model recency."""
    if idle_s <= config.hot_use_s:
        return config.load_factor_hot
    if idle_s >= config.cold_use_s:
        return config.load_factor_cold
    t = (idle_s - config.hot_use_s) / (config.cold_use_s - config.hot_use_s)
    return config.load_factor_hot + t * (config.load_factor_cold - config.load_factor_hot)


def rank_key(c: Candidate) -> tuple:
    if c.fits:
        return (0, c.models, -c.free_bytes, c.instance)
    return (1, -c.cache_age_s, c.models, c.instance)


def near_best(cands: Sequence[Candidate], config: EngineConfig) -> list[Candidate]:
    best = min(cands, key=rank_key)
    if best.fits:
        floor = best.free_bytes * config.near_free_fraction
        return [c for c in cands if c.fits and c.free_bytes >= floor]
    if math.isinf(best.cache_age_s):
        return [c for c in cands if not c.fits and math.isinf(c.cache_age_s)]
    slack = max(config.near_age_s, config.near_age_fraction * best.cache_age_s)
    return [c for c in cands if not c.fits and c.cache_age_s >= best.cache_age_s - slack]


def choose(cands: Sequence[Candidate], rng: random.Random, model_idle_s: float, urgent: bool,
           config: EngineConfig) -> Candidate | None:
    """Pick the instance for one new copy, or None when there is no candidate."""
    if not cands:
        return None
    pool = near_best(cands, config)
    if urgent:
        shortest = min(c.load_queue for c in pool)
        pool = [c for c in pool if c.load_queue == shortest]
    lowest = min(c.load_rpm for c in pool)
    limit = max(lowest * load_factor(model_idle_s, config), lowest + config.load_slack_rpm)
    pool = sorted((c for c in pool if c.load_rpm <= limit), key=lambda c: c.instance)
    return rng.choice(pool)
