"""One runtime instance as an LRU cache of model copies, with byte accounting."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from placement.engine.model_types import InstanceInfo
from placement.engine.scaling import RateTracker


class Phase(enum.Enum):
    QUEUED = "queued"  # placed here, space reserved, waiting for a load slot
    LOADING = "loading"  # LoadAction issued
    READY = "ready"  # routable
    UNLOADING = "unloading"  # left the view; UnloadAction issued, memory not yet freed


@dataclass(eq=False)
class CachedCopy:
    revision: str
    model: str | None  # None: adopted from a runtime but not (yet) in the desired set
    phase: Phase
    size_bytes: int
    measured: bool
    last_used: float
    urgent: bool = False
    seq: int = 0  # queue order
    started_at: float | None = None  # load start (engine clock)
    ready_at: float | None = None  # when it became READY (engine clock)


@dataclass(frozen=True, slots=True)
class CacheSummary:
    """What placement reads of an instance, gathered in one pass over its copies."""

    committed_bytes: int  # ready, loading and queued
    models: int  # copies in any phase but unloading
    oldest_ready_use: float  # last_used of the least recently used ready copy (inf: none)
    queued: int
    queued_urgent: int
    loading: int

    def cache_age(self, now: float) -> float:
        """Time since the least recently used ready copy was used (inf when none is ready)."""
        return now - self.oldest_ready_use if self.oldest_ready_use != math.inf else math.inf


@dataclass
class InstanceCache:
    info: InstanceInfo
    copies: dict[str, CachedCopy] = field(default_factory=dict)  # revision -> copy
    rate: RateTracker = field(default_factory=RateTracker)
    loads_done: int = 0  # loads that succeeded here (the first one also warms the runtime up)

    @property
    def id(self) -> str:
        return self.info.id

    def committed_bytes(self) -> int:
        """Bytes promised to copies that stay: ready, loading and queued."""
        return sum(c.size_bytes for c in self.copies.values() if c.phase is not Phase.UNLOADING)

    def used_bytes(self) -> int:
        """Bytes the runtime may really hold now, including copies still being unloaded."""
        return sum(c.size_bytes for c in self.copies.values())

    def free_bytes(self) -> int:
        return self.info.capacity_bytes - self.committed_bytes()

    def summary(self) -> CacheSummary:
        committed = models = queued = queued_urgent = loading = 0
        oldest = math.inf
        for c in self.copies.values():
            phase = c.phase
            if phase is Phase.UNLOADING:
                continue
            committed += c.size_bytes
            models += 1
            if phase is Phase.READY:
                oldest = min(oldest, c.last_used)
            elif phase is Phase.QUEUED:
                queued += 1
                queued_urgent += c.urgent
            else:
                loading += 1
        return CacheSummary(committed, models, oldest, queued, queued_urgent, loading)

    def count(self, *phases: Phase) -> int:
        return sum(1 for c in self.copies.values() if c.phase in phases)

    def lru_ready(self, score: Callable[[CachedCopy], float] | None = None) -> list[CachedCopy]:
        """Ready copies, least recently used first (orphans first of all); with ``score``, lowest
        score first, then least recently used."""
        ready = [c for c in self.copies.values() if c.phase is Phase.READY]
        ready.sort(key=lambda c: (c.model is not None, score(c) if score else 0.0, c.last_used, c.revision))
        return ready

    def cache_age(self, now: float) -> float:
        """Time since this instance's least recently used model was used (inf when empty)."""
        return self.summary().cache_age(now)

    def plan_eviction(self, need_bytes: int, evictable: Callable[[CachedCopy], bool],
                      score: Callable[[CachedCopy], float] | None = None) -> list[CachedCopy] | None:
        """The first victims in ``lru_ready(score)`` order that free ``need_bytes``; None if it
        cannot be done."""
        if need_bytes <= 0:
            return []
        victims: list[CachedCopy] = []
        freed = 0
        for c in self.lru_ready(score):
            if not evictable(c):
                continue
            victims.append(c)
            freed += c.size_bytes
            if freed >= need_bytes:
                return victims
        return None
