"""The placement engine: which instances hold which model revisions, decided without any I/O.

A state machine. The controller feeds it events (desired models, instances up/down, load and
unload results, traffic), calls :meth:`Engine.tick` and carries out the returned actions, then
publishes :meth:`Engine.mesh_view`. Everything is driven by an injected clock and a seeded RNG,
so every decision can be replayed in a test. docs/placement.md explains the decisions.

Copy lifecycle on an instance: QUEUED (placed, bytes reserved) → LOADING (LoadAction issued) →
READY (in the mesh view) → UNLOADING (left the view, UnloadAction issued) → gone (unload_done).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from placement.engine import policy
from placement.engine.clock import Clock
from placement.engine.instance_cache import CachedCopy, CacheSummary, InstanceCache, Phase
from placement.engine.load_queue import next_loads
from placement.engine.model_types import (
    Action,
    DesiredModel,
    EngineConfig,
    InstanceInfo,
    LoadAction,
    LoadFailure,
    ModelStatus,
    UnloadAction,
)
from placement.engine.scaling import DecayingCount, RateTracker, ScaleInput, UsageHistory, decide_copies
from xds_server.mesh_view import ActivatorEndpoint, Copy, Destination, MeshView, Model, Revision, RouteRule

__all__ = [
    "Action", "DesiredModel", "Engine", "EngineConfig", "InstanceInfo", "LoadAction", "ModelStatus",
    "UnloadAction",
]

_INF = math.inf


@dataclass
class RevisionState:
    spec: DesiredModel
    copies: dict[str, CachedCopy] = field(default_factory=dict)  # instance -> queued/loading/ready copy
    want: int = 0  # copies the cache/scaling wants (min_copies and rollouts come on top)
    failures: list[LoadFailure] = field(default_factory=list)
    cold_since: float | None = None  # requests are waiting for a first copy since then
    retire_at: float | None = None  # no longer wanted: unload its copies from then on

    def ready(self) -> int:
        return sum(1 for c in self.copies.values() if c.phase is Phase.READY)

    def demand_expired(self, now: float, ttl_s: float) -> bool:
        """Requests waited since ``cold_since``, longer ago than ``ttl_s``: their demand is over."""
        return self.cold_since is not None and now - self.cold_since > ttl_s


@dataclass
class ModelState:
    name: str
    spec: DesiredModel | None  # None: removed from the desired set, copies still unloading
    active: str | None  # the revision routes point at (the stable one during a canary)
    created: float
    rate: RateTracker
    usage: UsageHistory
    revisions: dict[str, RevisionState] = field(default_factory=dict)
    last_scale_change: float = -_INF
    frequency: DecayingCount | None = None  # with EngineConfig.frequency_half_life_s


def instance_endpoint(info: InstanceInfo) -> Copy:
    """An instance as the mesh view names it: a copy's endpoint, and an entry of its runtime's
    instances (MeshView.runtime_instances)."""
    return Copy(info.id, info.address, info.rest_port, info.grpc_port, info.mesh_tls)


class Engine:
    """ModelMesh's placement behaviours over a set of runtime instances (see module docstring)."""

    def __init__(self, clock: Clock, config: EngineConfig | None = None,
                 rng: random.Random | None = None) -> None:
        self.clock = clock
        self.config = config or EngineConfig()
        self.rng = rng or random.Random(0)
        self.instances: dict[str, InstanceCache] = {}
        self.models: dict[str, ModelState] = {}
        self._owner: dict[str, str] = {}  # revision -> model name
        self._measured: dict[str, int] = {}  # revision -> size reported by a load
        self._load_s: dict[str, float] = {}  # revision -> its fastest load's seconds (eviction)
        self._typical_load_s: float | None = None  # their median, for copies never measured (lazy)
        self._pending: list[Action] = []  # decided between ticks (e.g. unload a late load)
        self._dirty: set[str] = set()  # models to re-examine at the next tick
        # runtime -> models whose must-happen copy found no room: retried when room may have
        # appeared there (a load or unload ended, an instance came or went), not every tick
        self._blocked: dict[str, set[str]] = {}
        # instance -> summary, valid during one _ensure pass (only _place changes copies there)
        self._summaries: dict[str, CacheSummary] = {}
        self._last_release = -_INF
        self._retiring: set[tuple[str, str]] = set()
        self._desired_known = False
        self._orphans_checked = True
        self._last_scale = -_INF
        self._seq = 0
        self.counters = {"loads": 0, "unloads": 0, "evictions": 0, "load_failures": 0, "timeouts": 0}

    # ------------------------------------------------------------------ inputs: desired state
    def set_desired(self, models: Iterable[DesiredModel]) -> None:
        """Replace the whole desired set: new models appear, changed revisions roll, gone ones go."""
        now = self.clock.now()
        wanted = {m.name: m for m in models}
        for name, spec in wanted.items():
            ms = self.models.get(name)
            if ms is None:
                half_life = self.config.frequency_half_life_s
                ms = ModelState(name, spec, None, now, self._rate_tracker(),
                                UsageHistory(self.config.usage_gap_s),
                                frequency=DecayingCount(half_life) if half_life else None)
                self.models[name] = ms
            ms.spec = spec
            rs = ms.revisions.get(spec.revision)
            if rs is None:
                rs = RevisionState(spec)
                ms.revisions[spec.revision] = rs
                self._owner[spec.revision] = name
                self._adopt_orphans(ms, rs)
            if rs.failures and spec.storage_stamp != rs.spec.storage_stamp:
                rs.failures.clear()  # the model's file changed: worth trying again at once
            rs.spec = spec
            if rs.retire_at is not None:  # revived (e.g. a rollback while it was draining)
                rs.retire_at = None
                self._retiring.discard((name, spec.revision))
            active = ms.revisions.get(ms.active) if ms.active else None
            if active is None or active.retire_at is not None:
                ms.active = spec.revision
            for rev, other in ms.revisions.items():
                if rev not in (spec.revision, ms.active) and other.retire_at is None:
                    self._retire(ms, rev, now + (self.config.rollout_drain_s if other.ready() else 0.0))
            self._maybe_switch(ms, now)
            self._dirty.add(name)
        for name, ms in self.models.items():
            if name not in wanted and ms.spec is not None:
                ms.spec = None  # leaves the view now; its copies unload once the gateway has moved
                for rev, rs in ms.revisions.items():
                    if rs.retire_at is None:
                        self._retire(ms, rev, now)
        self._desired_known = True
        self._orphans_checked = False

    def model_of(self, revision: str) -> str | None:
        """The model a revision id belongs to (gateway stats are kept per revision)."""
        return self._owner.get(revision)

    def has_model(self, name: str) -> bool:
        ms = self.models.get(name)
        return ms is not None and ms.spec is not None

    # ------------------------------------------------------------------ inputs: instances
    def instance_up(self, info: InstanceInfo, loaded: Mapping[str, int] | None = None) -> None:
        """An instance is ready; ``loaded`` (revision -> bytes) is what it already holds: adopted."""
        now = self.clock.now()
        loaded = dict(loaded or {})
        cache = self.instances.get(info.id)
        if cache is None:
            cache = InstanceCache(info, rate=self._rate_tracker())
            self.instances[info.id] = cache
            self._forget_failures_on(info.id)  # a new incarnation: its failures are not the model's
        else:
            cache.info = info
            for rev, c in list(cache.copies.items()):  # re-registered: what it no longer holds is gone
                if c.phase is Phase.READY and rev not in loaded:
                    self._drop_copy(cache, c)
        for rev, size in loaded.items():
            c = cache.copies.get(rev)
            if c is not None and c.phase in (Phase.QUEUED, Phase.LOADING):
                self.load_succeeded(info.id, rev, size)
                continue
            if c is not None:
                if size > 0:
                    c.size_bytes, c.measured = size, True
                continue
            self._adopt_copy(cache, rev, size, now)
        self._orphans_checked = False
        self._mark_runtime_dirty(info.runtime)

    def copies_on(self, instance_id: str) -> dict[str, Phase]:
        """Revision -> phase of every copy the engine has on an instance (taken before asking it
        what it holds, for :meth:`inventory`)."""
        cache = self.instances.get(instance_id)
        return {r: c.phase for r, c in cache.copies.items()} if cache else {}

    def inventory(self, instance_id: str, held: Mapping[str, int],
                  before: Mapping[str, Phase]) -> tuple[list[str], list[str]]:
        """What a live instance says it holds, against the engine's view: ``(lost, found)``.

        ``before`` is :meth:`copies_on` taken when the instance was asked. A copy READY then and
        still READY, but missing from ``held``, was lost behind msm's back: it leaves the view and
        is placed again, as after a crash. A copy the engine did not know then and does not know
        now is adopted (or unloaded, as an orphan); one it knew then and has forgotten since was
        unloaded while the answer was on its way, and stays gone. Copies loading or unloading
        meanwhile are left to their own results.
        """
        cache = self.instances.get(instance_id)
        if cache is None:
            return [], []
        lost = []
        for rev in sorted(r for r, phase in before.items() if phase is Phase.READY):
            c = cache.copies.get(rev)
            if c is not None and c.phase is Phase.READY and rev not in held:
                self._drop_copy(cache, c)
                lost.append(rev)
        found = [rev for rev in sorted(held) if rev not in cache.copies and rev not in before]
        now = self.clock.now()
        for rev in found:
            self._adopt_copy(cache, rev, held[rev], now)
        if found:
            self._orphans_checked = False
        if lost or found:
            self._mark_runtime_dirty(cache.info.runtime)
        return lost, found

    def _adopt_copy(self, cache: InstanceCache, rev: str, size: int, now: float) -> None:
        """A copy an instance holds that the engine did not place: a copy of its revision (or an orphan)."""
        owner = self._owner.get(rev)
        rs = self.models[owner].revisions.get(rev) if owner else None
        est = self._measured.get(rev) or (rs.spec.size_estimate_bytes if rs else 0)
        c = CachedCopy(rev, owner if rs else None, Phase.READY, size if size > 0 else est, size > 0, now)
        if size > 0:
            self._measured[rev] = size
        cache.copies[rev] = c
        if rs is not None and owner is not None:
            rs.copies[cache.id] = c
            rs.want = max(rs.want, rs.ready())
            self._dirty.add(owner)

    def instance_down(self, instance_id: str) -> None:
        """The instance is gone with everything on it; its copies are re-placed elsewhere."""
        cache = self.instances.pop(instance_id, None)
        if cache is None:
            return
        for c in list(cache.copies.values()):
            self._drop_copy(cache, c)
        self._forget_failures_on(instance_id)
        self._mark_runtime_dirty(cache.info.runtime)

    def _forget_failures_on(self, instance_id: str) -> None:
        """Load failures on an instance that went away (or came back) say nothing of the model: a
        load sent to a dying runtime fails whatever the model is. Without this, a model whose loads
        met a restart on each instance stayed failed for failure_expiry_s on healthy instances."""
        for ms in self.models.values():
            for rs in ms.revisions.values():
                if any(f.instance == instance_id for f in rs.failures):
                    rs.failures = [f for f in rs.failures if f.instance != instance_id]
                    self._dirty.add(ms.name)

    # ------------------------------------------------------------------ inputs: load results
    def load_started(self, instance_id: str, revision: str) -> None:
        """Optional: the load really started now (the timeout counts from here)."""
        c = self._copy(instance_id, revision)
        if c is not None and c.phase in (Phase.QUEUED, Phase.LOADING):
            c.phase, c.started_at = Phase.LOADING, self.clock.now()

    def load_succeeded(self, instance_id: str, revision: str, size_bytes: int) -> None:
        now = self.clock.now()
        cache = self.instances.get(instance_id)
        if cache is None:
            return  # the instance went down meanwhile
        c = cache.copies.get(revision)
        if c is None:  # we no longer track it (e.g. the load had timed out): don't leave it there
            size = size_bytes if size_bytes > 0 else self._measured.get(revision, 0)
            cache.copies[revision] = CachedCopy(revision, None, Phase.UNLOADING, size, size_bytes > 0, now)
            self._pending.append(UnloadAction(instance_id, revision))
            self.counters["unloads"] += 1
            return
        if c.phase not in (Phase.QUEUED, Phase.LOADING):
            return
        if size_bytes > 0:
            c.size_bytes, c.measured = size_bytes, True
            self._measured[revision] = size_bytes
        if c.started_at is not None and cache.loads_done:
            # the fastest load seen is the model's own cost: queueing and contention only add
            # to it, and an instance's first load also imports its runtime's framework
            took = now - c.started_at
            self._load_s[revision] = min(took, self._load_s.get(revision, took))
            self._typical_load_s = None
        cache.loads_done += 1
        c.phase, c.ready_at = Phase.READY, now  # evictable (after min_cache_s): room for a blocked copy?
        self._release_blocked(cache.info.runtime)
        rs = self._rev(revision)
        ms = self.models.get(c.model) if c.model else None
        last = ms.usage.last_used if ms else None
        c.last_used = now if c.urgent or last is None else last
        if rs is None or ms is None or (rs.retire_at is not None and rs.retire_at <= now):
            self._unload(cache, c, self._pending)
            return
        rs.cold_since = None
        rs.want = max(rs.want, rs.ready())
        self._maybe_switch(ms, now)
        self._dirty.add(ms.name)
        if cache.committed_bytes() > cache.info.capacity_bytes:  # the estimate was low: make room
            plan = cache.plan_eviction(cache.committed_bytes() - cache.info.capacity_bytes,
                                       lambda v: v is not c and self._evictable(v, _INF, False, None),
                                       self._eviction_score(now))
            for v in plan or []:
                self._evict(cache, v, self._pending)

    def load_failed(self, instance_id: str, revision: str, error: str) -> None:
        """The runtime refused or broke the load; it is retried elsewhere (see ``max_load_failures``)."""
        cache = self.instances.get(instance_id)
        c = cache.copies.get(revision) if cache else None
        if cache is None or c is None or c.phase not in (Phase.QUEUED, Phase.LOADING):
            return
        del cache.copies[revision]
        self._record_failure(cache, c, error)

    def unload_done(self, instance_id: str, revision: str) -> None:
        cache = self.instances.get(instance_id)
        c = cache.copies.get(revision) if cache else None
        if cache is not None and c is not None and c.phase is Phase.UNLOADING:
            del cache.copies[revision]  # a queued load waiting for this memory starts at the next tick
            self._release_blocked(cache.info.runtime)

    # ------------------------------------------------------------------ inputs: traffic
    def record_requests(self, model: str, count: int, instance_id: str | None = None) -> None:
        """Traffic signal (gateway stats / LRS): request rate, and LRU recency of the copies."""
        ms = self.models.get(model)
        if ms is None or ms.spec is None or count <= 0:
            return
        now = self.clock.now()
        ms.rate.add(now, count)
        ms.usage.touch(now)
        if ms.frequency is not None:
            ms.frequency.add(now, count)
        routed = [self._rev(r) for r, _ in self._routed(ms)]
        copies = [(i, c) for rs in routed if rs for i, c in rs.copies.items() if c.phase is Phase.READY]
        if instance_id is not None:
            copies = [(i, c) for i, c in copies if i == instance_id]
            cache = self.instances.get(instance_id)
            if cache is not None:
                cache.rate.add(now, count)
        elif copies:
            for i, _ in copies:
                self.instances[i].rate.add(now, count / len(copies))
        for _, c in copies:
            c.last_used = now

    def request_for_cold_model(self, model: str) -> None:
        """A request waits for a model with no ready copy: load it now, ahead of pre-emptive loads."""
        ms = self.models.get(model)
        if ms is None or ms.spec is None:
            return
        now = self.clock.now()
        ms.usage.touch(now)
        self._maybe_switch(ms, now)
        for rev, weight in self._routed(ms):
            rs = ms.revisions.get(rev)
            if rs is None or weight <= 0 or rs.ready() > 0 or self._failed(rs, now):
                continue
            if rs.cold_since is None or rs.demand_expired(now, self.config.cold_demand_ttl_s):
                rs.cold_since = now  # (an expired demand no tick has ended yet: this one is new)
            for c in rs.copies.values():
                c.urgent = True  # a queued pre-emptive load of it now jumps the queue
        self._dirty.add(model)

    # ------------------------------------------------------------------ decisions
    def tick(self) -> list[Action]:
        """Decide now: expire timed-out loads, finish rollouts, scale, place, start queued loads."""
        now = self.clock.now()
        actions, self._pending = self._pending, []
        self._expire_loads(now, actions)
        if now - self._last_scale >= self.config.scale_interval_s:
            self._last_scale = now
            self._dirty.update(n for n, ms in self.models.items() if ms.spec is not None)
            self._scale(now, actions)
        if not self._orphans_checked and self._desired_known:
            self._unload_orphans(actions)
        self._process_retiring(now, actions)
        if now - self._last_release >= 1.0:  # safety net for what frees room without an event
            self._last_release = now          # (failures expiring, cold demand ending)
            for runtime in list(self._blocked):
                self._release_blocked(runtime)
        self._ensure(now, actions)
        self._dispatch(now, actions)
        return actions

    # ------------------------------------------------------------------ outputs
    def mesh_view(self, activator: ActivatorEndpoint | None = None) -> MeshView:
        """Routable state: routed revisions first (canary split as a weighted rule), then
        revisions that are warming up or draining; a revision with no ready copy has no copies
        (the gateway sends its requests to the activator)."""
        out: list[Model] = []
        for name in sorted(self.models):
            ms = self.models[name]
            if ms.spec is None:
                continue
            routed = self._routed(ms)
            order = [r for r, _ in routed]
            for rev in sorted(ms.revisions, key=lambda r: (r != ms.spec.revision, r)):  # type: ignore[union-attr]
                if rev not in order and ms.revisions[rev].ready() > 0:
                    order.append(rev)
            revisions = tuple(self._view_revision(ms.revisions[r]) for r in order if r in ms.revisions)
            rules: tuple[RouteRule, ...] = ()
            if len(routed) > 1:
                rules = (RouteRule(destinations=tuple(Destination(r, w) for r, w in routed)),)
            out.append(Model(name, revisions, rules))
        view = MeshView.of(out, activator)
        if activator is not None and activator.replay_token:
            instances: dict[str, list[Copy]] = {}
            for iid in sorted(self.instances):
                info = self.instances[iid].info
                instances.setdefault(info.runtime, []).append(instance_endpoint(info))
            view = replace(view, runtime_instances={r: tuple(c) for r, c in instances.items()})
        return view

    def routable_copies(self, name: str) -> list[tuple[str, str, int]]:
        """(revision, instance, weight) of ready copies that receive traffic: a cheap view of one model."""
        ms = self.models.get(name)
        if ms is None:
            return []
        out = []
        for rev, weight in self._routed(ms):
            rs = ms.revisions.get(rev)
            if rs is not None and weight > 0:
                out += [(rev, iid, weight) for iid, c in sorted(rs.copies.items()) if c.phase is Phase.READY]
        return out

    def model_status(self, name: str) -> ModelStatus:
        ms = self.models.get(name)
        if ms is None or ms.spec is None:
            return ModelStatus(name, known=False)
        now = self.clock.now()
        target = ms.revisions[ms.spec.revision]
        routed = [ms.revisions[r] for r, w in self._routed(ms) if r in ms.revisions and w > 0]
        failed = self._failed(target, now)
        failures = tuple(f for f in target.failures if now - f.at < self.config.failure_expiry_s)
        return ModelStatus(
            name=name, known=True,
            ready_copies=sum(rs.ready() for rs in routed),
            loading_copies=sum(1 for rs in ms.revisions.values() if rs.retire_at is None
                               for c in rs.copies.values() if c.phase in (Phase.QUEUED, Phase.LOADING)),
            active_revision=ms.active, target_revision=ms.spec.revision,
            revisions={r: {i: c.phase.value for i, c in sorted(rs.copies.items())}
                       for r, rs in ms.revisions.items()},
            failed=failed,
            failure=failures[-1].error if failed and failures else None,
            failures=failures,
            waiting=self._waiting_reason(target),
            cannot_fit=self._cannot_fit(target),
        )

    def status(self) -> dict[str, Any]:
        """Everything ``msm status`` shows: models, instances, counters."""
        now = self.clock.now()
        models: dict[str, Any] = {}
        for name in sorted(self.models):
            st = self.model_status(name)
            if not st.known:
                continue
            ms = self.models[name]
            models[name] = {
                "ready": st.ready, "ready_copies": st.ready_copies, "loading_copies": st.loading_copies,
                "active_revision": st.active_revision, "target_revision": st.target_revision,
                "revisions": {r: dict(v) for r, v in st.revisions.items()},
                "failed": st.failed, "failure": st.failure, "waiting": st.waiting,
                "failures": [{"instance": f.instance, "error": f.error, "age_s": round(now - f.at, 1)}
                             for f in st.failures],
                "requests_per_min": round(ms.rate.per_minute(now), 1),
                "canary_percent": ms.spec.canary_percent if ms.spec else None,
            }
        instances: dict[str, Any] = {}
        for iid in sorted(self.instances):
            cache = self.instances[iid]
            age = cache.cache_age(now)
            instances[iid] = {
                "runtime": cache.info.runtime, "address": cache.info.address,
                "capacity_bytes": cache.info.capacity_bytes, "used_bytes": cache.used_bytes(),
                "committed_bytes": cache.committed_bytes(),
                "cache_age_s": None if math.isinf(age) else round(age, 1),
                "requests_per_min": round(cache.rate.per_minute(now), 1),
                "loaded": {r: {"phase": c.phase.value, "size_bytes": c.size_bytes, "measured": c.measured,
                               "model": c.model, "idle_s": round(now - c.last_used, 1)}
                           for r, c in sorted(cache.copies.items())},
            }
        return {"models": models, "instances": instances, "counters": dict(self.counters)}

    # ------------------------------------------------------------------ internals: routing
    def _routed(self, ms: ModelState) -> list[tuple[str, int]]:
        """(revision, weight) that receive traffic, the one taking the most first."""
        if ms.spec is None:
            return []
        target = ms.spec.revision
        if ms.active is None or ms.active == target or ms.active not in ms.revisions:
            return [(target, 100)]
        p = self._canary(ms)
        if p is not None and p > 0 and ms.revisions[target].ready() > 0:
            return [(ms.active, 100 - p), (target, p)] if p < 50 else [(target, p), (ms.active, 100 - p)]
        return [(ms.active, 100)]

    @staticmethod
    def _canary(ms: ModelState) -> int | None:
        p = ms.spec.canary_percent if ms.spec else None
        if p is None or p >= 100 or ms.active is None or ms.active == ms.spec.revision:  # type: ignore[union-attr]
            return None
        return max(0, p)

    def _maybe_switch(self, ms: ModelState, now: float) -> None:
        """Move routes to the target revision once it has as many ready copies as the active one."""
        if ms.spec is None or ms.active == ms.spec.revision:
            return
        old = ms.revisions.get(ms.active) if ms.active else None
        target = ms.revisions[ms.spec.revision]
        if old is not None and old.retire_at is None and self._canary(ms) is not None:
            return  # a canary split holds until the manifests (or a rollout) promote it
        if old is not None and old.ready() > 0 and target.ready() < self._rollout_need(ms, target, now):
            return
        ms.active = ms.spec.revision
        if old is not None and old.retire_at is None:
            self._retire(ms, old.spec.revision, now + (self.config.rollout_drain_s if old.ready() else 0.0))

    def _rollout_need(self, ms: ModelState, target: RevisionState, now: float) -> int:
        old = ms.revisions.get(ms.active) if ms.active else None
        n = max(1, old.ready() if old else 0, target.spec.min_copies)
        return max(1, min(n, self._eligible(target, now)))

    def _view_revision(self, rs: RevisionState) -> Revision:
        copies = []
        for iid in sorted(rs.copies):
            c = rs.copies[iid]
            cache = self.instances.get(iid)
            if c.phase is Phase.READY and cache is not None:
                copies.append(instance_endpoint(cache.info))
        return Revision(rs.spec.revision, rs.spec.runtime, tuple(copies))

    # ------------------------------------------------------------------ internals: bookkeeping
    def _rate_tracker(self) -> RateTracker:
        return RateTracker(self.config.rate_window_s, self.config.rate_bucket_s)

    def _rev(self, revision: str) -> RevisionState | None:
        owner = self._owner.get(revision)
        ms = self.models.get(owner) if owner else None
        return ms.revisions.get(revision) if ms else None

    def _copy(self, instance_id: str, revision: str) -> CachedCopy | None:
        cache = self.instances.get(instance_id)
        return cache.copies.get(revision) if cache else None

    def _runtime_instances(self, runtime: str) -> list[InstanceCache]:
        return [c for c in self.instances.values() if c.info.runtime == runtime]

    def _release_blocked(self, runtime: str) -> None:
        self._dirty |= self._blocked.pop(runtime, set())

    def _mark_runtime_dirty(self, runtime: str) -> None:
        self._blocked.pop(runtime, None)
        for name, ms in self.models.items():
            if ms.spec is not None and any(rs.spec.runtime == runtime for rs in ms.revisions.values()):
                self._dirty.add(name)

    def _size(self, spec: DesiredModel) -> int:
        return self._measured.get(spec.revision) or spec.size_estimate_bytes

    def _retire(self, ms: ModelState, rev: str, at: float) -> None:
        ms.revisions[rev].retire_at = at
        self._retiring.add((ms.name, rev))

    def _adopt_orphans(self, ms: ModelState, rs: RevisionState) -> None:
        for cache in self.instances.values():
            c = cache.copies.get(rs.spec.revision)
            if c is not None and c.model is None and c.phase is Phase.READY:
                c.model = ms.name
                if not c.measured:
                    c.size_bytes = self._size(rs.spec)
                rs.copies[cache.id] = c
        rs.want = max(rs.want, rs.ready())

    def _drop_copy(self, cache: InstanceCache, c: CachedCopy) -> None:
        """The copy vanished (instance gone or lost it): no failure, ``want`` stays, so it is re-placed."""
        cache.copies.pop(c.revision, None)
        self._release_blocked(cache.info.runtime)
        rs = self._rev(c.revision)
        if rs is not None and rs.copies.get(cache.id) is c:
            del rs.copies[cache.id]
            if c.model:
                self._dirty.add(c.model)

    def _unload(self, cache: InstanceCache, c: CachedCopy, actions: list[Action]) -> None:
        c.phase = Phase.UNLOADING
        rs = self._rev(c.revision)
        if rs is not None and rs.copies.get(cache.id) is c:
            del rs.copies[cache.id]
        actions.append(UnloadAction(cache.id, c.revision))
        self.counters["unloads"] += 1

    def _evict(self, cache: InstanceCache, c: CachedCopy, actions: list[Action]) -> None:
        """LRU eviction: the cache no longer wants this copy, so ``want`` follows it down."""
        self._unload(cache, c, actions)
        self.counters["evictions"] += 1
        rs = self._rev(c.revision)
        if rs is not None:
            rs.want = min(rs.want, len(rs.copies))

    def _eviction_score(self, now: float) -> Callable[[CachedCopy], float] | None:
        """What keeping a copy is worth; lowest goes first (None: plain LRU order).

        LRFU: its model's decayed request count. With ``cost_aware_eviction``, per byte and
        weighed by what a miss of it costs (GreedyDual-Size-Frequency, Cherkasova 1998): the
        requests a byte of cache saves a miss for, times the miss's seconds (its fastest load
        seen, plus ``miss_overhead_s`` for the cold path around every load). Among models that
        load in about the same time this keeps the small ones a big one would displace; where
        loads take long in proportion to size, the count alone decides."""
        if not self.config.frequency_half_life_s:
            return None
        cost_aware = self.config.cost_aware_eviction
        overhead = self.config.miss_overhead_s
        measured = self._load_s

        def score(c: CachedCopy) -> float:
            ms = self.models.get(c.model) if c.model else None
            count = ms.frequency.at(now) if ms is not None and ms.frequency is not None else 0.0
            if not cost_aware:
                return count
            load_s = measured.get(c.revision)
            if load_s is None:
                load_s = self._typical_load()
            return count * (load_s + overhead) / max(c.size_bytes, 1)
        return score

    def _typical_load(self) -> float:
        """The median of the measured loads (0 when none was): a never-measured copy's cost."""
        if self._typical_load_s is None:
            self._typical_load_s = statistics.median(self._load_s.values()) if self._load_s else 0.0
        return self._typical_load_s

    def _protected(self, c: CachedCopy) -> bool:
        """Evicting it would take its revision below ``min_copies``."""
        rs = self._rev(c.revision)
        return rs is not None and rs.retire_at is None and rs.ready() <= rs.spec.min_copies

    def _evictable(self, c: CachedCopy, used_before: float, allow_protected: bool, model: str | None) -> bool:
        if c.phase is not Phase.READY or (model is not None and c.model == model):
            return False
        if c.model is None:
            return True
        if c.ready_at is not None and self.clock.now() - c.ready_at < self.config.min_cache_s:
            return False  # just loaded: the requests that waited for it have not all been served
        return c.last_used < used_before and (allow_protected or not self._protected(c))

    # ------------------------------------------------------------------ internals: failures
    # A failed load is retried on another instance: each failure is recorded against the instance
    # (_record_failure), and placement skips the instances a revision recently failed on
    # (_failed_on, used by _place). After max_load_failures distinct instances, or when no
    # untried instance is left, the revision is reported failed (_failed) until the records
    # expire (failure_expiry_s).
    def _recent_failures(self, rs: RevisionState, now: float) -> list[LoadFailure]:
        rs.failures = [f for f in rs.failures if now - f.at < self.config.failure_expiry_s]
        return rs.failures

    def _failed_on(self, rs: RevisionState, now: float) -> set[str]:
        """Instances this revision recently failed to load on: a retry goes elsewhere."""
        return {f.instance for f in self._recent_failures(rs, now)}

    def _failed(self, rs: RevisionState, now: float) -> bool:
        """Failed: no live copy, and 3 distinct recent failures or no untried instance left."""
        if rs.copies:
            return False
        failed_on = self._failed_on(rs, now)
        if not failed_on:
            return False
        if len(failed_on) >= self.config.max_load_failures:
            return True
        return self._eligible(rs, now) == 0

    def _eligible(self, rs: RevisionState, now: float) -> int:
        """Instances that could ever hold the revision: right runtime, big enough, not failed on it."""
        failed_on = self._failed_on(rs, now)
        size = self._size(rs.spec)
        return sum(1 for c in self._runtime_instances(rs.spec.runtime)
                   if c.info.capacity_bytes >= size and c.id not in failed_on)

    def _record_failure(self, cache: InstanceCache, c: CachedCopy, error: str) -> None:
        self.counters["load_failures"] += 1
        self._release_blocked(cache.info.runtime)  # its bytes are free again
        rs = self._rev(c.revision)
        if rs is None:
            return
        if rs.copies.get(cache.id) is c:
            del rs.copies[cache.id]
        rs.failures.append(LoadFailure(cache.id, error, self.clock.now()))
        if c.model:
            self._dirty.add(c.model)

    def _waiting_reason(self, rs: RevisionState) -> str | None:
        if rs.copies:
            return None
        runtime = self._runtime_instances(rs.spec.runtime)
        if not runtime:
            return f"no instance of runtime '{rs.spec.runtime}' is up"
        if self._cannot_fit(rs):
            return (f"needs {self._size(rs.spec)} bytes, more than any instance of runtime "
                    f"'{rs.spec.runtime}' holds")
        return None

    def _cannot_fit(self, rs: RevisionState) -> bool:
        """No copy, and every instance of its runtime is too small for it: waiting will not help."""
        runtime = self._runtime_instances(rs.spec.runtime)
        size = self._size(rs.spec)
        return not rs.copies and bool(runtime) and all(c.info.capacity_bytes < size for c in runtime)

    # ------------------------------------------------------------------ internals: tick steps
    def _expire_loads(self, now: float, actions: list[Action]) -> None:
        for cache in self.instances.values():
            for c in [c for c in cache.copies.values() if c.phase is Phase.LOADING]:
                rs = self._rev(c.revision)
                timeout = rs.spec.load_timeout_s if rs else 90.0
                if c.started_at is not None and now - c.started_at >= timeout:
                    self.counters["timeouts"] += 1
                    self._record_failure(cache, c, f"load did not finish within {timeout:g}s (timed out)")
                    self._unload(cache, c, actions)  # the runtime may still be loading it: clean up

    def _unload_orphans(self, actions: list[Action]) -> None:
        """After the first desired set, copies of unknown revisions are unloaded (not before:
        on a restart, instances may register before the desired state is read)."""
        self._orphans_checked = True
        for cache in self.instances.values():
            for c in list(cache.copies.values()):
                if c.model is None and c.phase is Phase.READY:
                    self._unload(cache, c, actions)

    def _process_retiring(self, now: float, actions: list[Action]) -> None:
        for name, rev in sorted(self._retiring):
            ms = self.models.get(name)
            rs = ms.revisions.get(rev) if ms else None
            if ms is None or rs is None or rs.retire_at is None:
                self._retiring.discard((name, rev))
                continue
            if rs.retire_at > now:
                continue
            for iid, c in list(rs.copies.items()):
                cache = self.instances[iid]
                if c.phase is Phase.QUEUED:
                    del cache.copies[rev]
                    del rs.copies[iid]
                    self._release_blocked(cache.info.runtime)
                elif c.phase is Phase.READY:
                    self._unload(cache, c, actions)
                # LOADING: unloaded when its result comes (load_succeeded sees it retired)
            if not rs.copies:
                del ms.revisions[rev]
                if self._load_s.pop(rev, None) is not None:
                    self._typical_load_s = None
                self._retiring.discard((name, rev))
                if self._owner.get(rev) == name:
                    del self._owner[rev]
            if ms.spec is None and not ms.revisions:
                del self.models[name]

    def _scale(self, now: float, actions: list[Action]) -> None:
        for ms in self.models.values():
            if ms.spec is None or ms.active != ms.spec.revision:
                continue  # no scaling in the middle of a rollout or canary
            rs = ms.revisions[ms.active]
            if rs.ready() == 0:
                continue
            n = len(rs.copies)
            usage = ms.usage
            in_use = 0.0 if usage.streak_start is None or usage.idle_for(now) > self.config.usage_gap_s \
                else now - usage.streak_start
            target = decide_copies(ScaleInput(
                copies=n, rate_per_min=ms.rate.per_minute(now), idle_s=usage.idle_for(now), in_use_s=in_use,
                since_last_change_s=now - max(ms.last_scale_change, ms.created),
                min_copies=rs.spec.min_copies, instances=len(self._runtime_instances(rs.spec.runtime)),
            ), self.config)
            if target > n:
                rs.want = max(rs.want, target)
                ms.last_scale_change = now
            elif target < n:
                ready = [(iid, c) for iid, c in rs.copies.items() if c.phase is Phase.READY]
                if len(ready) <= max(1, rs.spec.min_copies):
                    continue
                # the copy on the most crowded instance, then the least recently used one
                iid, c = min(ready, key=lambda ic: (self.instances[ic[0]].free_bytes(), ic[1].last_used,
                                                    ic[0]))
                self._unload(self.instances[iid], c, actions)
                rs.want = target
                ms.last_scale_change = now

    def _need(self, ms: ModelState, rs: RevisionState, now: float) -> tuple[int, float, bool]:
        """(copies wanted, evict only copies used before this time, urgent)."""
        n, used_before = rs.want, ms.usage.last_used if ms.usage.last_used is not None else now
        if rs.spec.min_copies > len(rs.copies):
            n, used_before = max(n, rs.spec.min_copies), _INF
        urgent = rs.cold_since is not None and rs.ready() == 0
        if urgent:
            n, used_before = max(n, 1), _INF
        rolling_to = ms.spec is not None and rs.spec.revision == ms.spec.revision
        if rolling_to and ms.active not in (None, rs.spec.revision):
            n = max(n, 1 if self._canary(ms) is not None else self._rollout_need(ms, rs, now))
            used_before = _INF
        return n, used_before, urgent

    def _ensure(self, now: float, actions: list[Action]) -> None:
        """Place the copies each dirty model is missing: urgent ones first, so they get the room."""
        work: list[tuple[int, str, ModelState, RevisionState]] = []
        for name in self._dirty:
            ms = self.models.get(name)
            if ms is None or ms.spec is None:
                continue
            self._maybe_switch(ms, now)
            for rs in ms.revisions.values():
                if rs.retire_at is not None:
                    continue
                if rs.demand_expired(now, self.config.cold_demand_ttl_s):
                    rs.cold_since = None
                work.append((0 if rs.cold_since is not None else 1, name, ms, rs))
        self._dirty = set()
        self._summaries.clear()
        # urgent first, longest waiting first among them (no starvation when loads fall behind)
        work.sort(key=lambda w: (w[0], w[3].cold_since if w[3].cold_since is not None else 0.0, w[1],
                                 w[3].spec.revision))
        # runtime -> smallest must-happen copy that found no room in this pass: a copy as big or
        # bigger (with no instance excluded by failures, and none of its own to protect) cannot
        # find room either, so it waits without a search (many cold models in an overloaded mesh)
        no_room: dict[str, int] = {}
        for _, name, ms, rs in work:
            if self._failed(rs, now):
                rs.cold_since = None
                continue
            n, used_before, urgent = self._need(ms, rs, now)
            runtime, size = rs.spec.runtime, self._size(rs.spec)
            plain = not rs.failures and not any(r.copies for r in ms.revisions.values())
            if (len(rs.copies) < n and used_before == _INF and plain
                    and size >= no_room.get(runtime, _INF)):
                self._blocked.setdefault(runtime, set()).add(name)
                continue
            while len(rs.copies) < n:
                if not self._place(ms, rs, urgent, used_before, now, actions):
                    if used_before == _INF:  # must happen: again once room may have appeared
                        self._blocked.setdefault(runtime, set()).add(name)
                        if plain:
                            no_room[runtime] = min(size, no_room.get(runtime, _INF))
                    else:
                        rs.want = len(rs.copies)  # optional copy with no room: let it go
                    break

    def _place(self, ms: ModelState, rs: RevisionState, urgent: bool, used_before: float, now: float,
               actions: list[Action]) -> bool:
        spec = rs.spec
        size = self._size(spec)
        failed_on = self._failed_on(rs, now)  # a failed load is retried on another instance
        score = self._eviction_score(now)

        def candidates(allow_protected: bool) -> tuple[list[policy.Candidate], dict[str, list[CachedCopy]]]:
            cands, plans = [], {}
            for cache in self._runtime_instances(spec.runtime):
                if spec.revision in cache.copies or cache.id in failed_on or size > cache.info.capacity_bytes:
                    continue
                st = self._summaries.get(cache.id)
                if st is None:
                    st = self._summaries[cache.id] = cache.summary()
                # copies waiting here beyond the load slots free now (an urgent copy queues ahead
                # of pre-emptive ones, so it counts only its peers)
                queued = st.queued_urgent if urgent else st.queued
                free_slots = max(0, cache.info.max_concurrent_loads - st.loading)
                if queued >= free_slots + self.config.max_queued_loads:
                    continue
                free = cache.info.capacity_bytes - st.committed_bytes
                plan = cache.plan_eviction(
                    size - free, lambda c: self._evictable(c, used_before, allow_protected, ms.name),
                    score)
                if plan is None:
                    continue
                plans[cache.id] = plan
                cands.append(policy.Candidate(
                    instance=cache.id, fits=free >= size, free_bytes=free, models=st.models,
                    cache_age_s=st.cache_age(now), load_rpm=cache.rate.per_minute(now),
                    load_queue=st.queued + st.loading))
            return cands, plans

        cands, plans = candidates(False)
        if not cands and used_before == _INF:
            cands, plans = candidates(True)  # min_copies of others yield only to what must happen
        choice = policy.choose(cands, self.rng, ms.usage.idle_for(now), urgent, self.config)
        if choice is None:
            return False
        cache = self.instances[choice.instance]
        self._summaries.pop(cache.id, None)
        for victim in plans[choice.instance]:
            self._evict(cache, victim, actions)
        self._seq += 1
        c = CachedCopy(spec.revision, ms.name, Phase.QUEUED, size, spec.revision in self._measured, now,
                       urgent=urgent, seq=self._seq)
        cache.copies[spec.revision] = c
        rs.copies[cache.id] = c
        return True

    def _dispatch(self, now: float, actions: list[Action]) -> None:
        for cache in self.instances.values():
            for c in next_loads(cache, self.config.overlap_unload_and_load):
                rs = self._rev(c.revision)
                if rs is None:  # its revision went away while queued
                    del cache.copies[c.revision]
                    continue
                c.phase, c.started_at = Phase.LOADING, now
                self._release_blocked(cache.info.runtime)  # a queue place is free
                actions.append(LoadAction(cache.id, c.revision, rs.spec, c.urgent))
                self.counters["loads"] += 1
