"""The placement engine's inputs, outputs and settings: plain frozen data, no behaviour.

The controller builds ``DesiredModel`` and ``InstanceInfo`` from manifests and runtimes, feeds
them to :class:`placement.engine.engine.Engine`, and carries out the ``LoadAction``/``UnloadAction``
decisions it gets back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class InstanceInfo:
    """One runtime instance (pod / local process) that can hold models."""

    id: str
    runtime: str  # ServingRuntime name: only models of this runtime go here
    address: str
    rest_port: int
    grpc_port: int
    capacity_bytes: int  # memory for models (request, else limit, less memBufferBytes; or runtime-reported)
    max_concurrent_loads: int = 1
    # memory beyond ``capacity_bytes`` (the runtime's memBufferBytes) that copies still draining
    # may occupy while the loads that evicted them start: a cold load then waits neither for the
    # drain nor for the unload, and the container's limit is still never exceeded
    unload_headroom_bytes: int = 0
    # Istio mTLS reaches it (its pod has Istio's sidecar): gateways that can, use it
    mesh_tls: bool = False


@dataclass(frozen=True)
class DesiredModel:
    """A model as the manifests want it; a new ``revision`` means a changed model (it rolls)."""

    name: str  # the name clients call (InferenceService name)
    revision: str  # the id the runtime serves it under, e.g. "sklearn-mnist__isvc-3c10c62d34"
    runtime: str  # ServingRuntime name (which instances can hold it)
    model_type: str
    model_path: str
    size_estimate_bytes: int  # size on disk x 1.25 until a load measures it
    min_copies: int = 0  # 0: may have no copy at all; loads on its first request
    canary_percent: int | None = None  # KServe canaryTrafficPercent for this revision
    load_timeout_s: float = 90.0
    # (mtime_ns, size) of the model's local file: when it changes, failed loads are tried again
    storage_stamp: tuple[int, int] | None = None


@dataclass(frozen=True)
class LoadAction:
    """Load ``revision`` on ``instance``; ``urgent`` when requests are waiting for it."""

    instance: str
    revision: str
    model: DesiredModel
    urgent: bool


@dataclass(frozen=True)
class UnloadAction:
    """Unload ``revision`` from ``instance`` (the copy has already left the mesh view)."""

    instance: str
    revision: str


Action = LoadAction | UnloadAction


@dataclass(frozen=True)
class LoadFailure:
    instance: str
    error: str  # the runtime's own error text
    at: float  # engine clock


@dataclass(frozen=True)
class ModelStatus:
    """What a user (and the activator) needs to know about one model."""

    name: str
    known: bool  # in the desired set
    ready_copies: int = 0  # ready copies of the revisions that receive traffic
    loading_copies: int = 0  # queued or loading copies of any live revision
    active_revision: str | None = None  # takes (the non-canary share of) traffic
    target_revision: str | None = None  # what the manifests ask for
    revisions: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # rev -> instance -> phase
    failed: bool = False  # the target revision failed to load everywhere it was tried
    failure: str | None = None  # the last runtime error text, when failed
    failures: tuple[LoadFailure, ...] = ()  # recent failures of the target revision
    waiting: str | None = None  # why nothing is loading although a copy is wanted
    cannot_fit: bool = False  # larger than every instance of its runtime: waiting will not help

    @property
    def ready(self) -> bool:
        return self.ready_copies > 0


@dataclass(frozen=True)
class EngineConfig:
    """Tunables; defaults follow ModelMesh where it has a number (see docs/placement.md)."""

    # load failures
    max_load_failures: int = 3  # distinct instances before the model is reported failed
    failure_expiry_s: float = 15 * 60.0
    # cold demand: how long a request_for_cold_model keeps asking for an urgent load
    cold_demand_ttl_s: float = 300.0
    # rollouts
    rollout_drain_s: float = 10.0  # old revision stays loaded this long after routes move
    # memory: False = a load waits until the copies evicted for it are really unloaded, or fit
    # beside it in the instance's unload_headroom_bytes; True = it never waits for them
    overlap_unload_and_load: bool = False
    # eviction order: lowest LRFU score first, each request's weight halving every this many
    # seconds (frequency and recency in one score: a model used often stays over one used once
    # lately); 0 or None = least recently used first (ModelMesh's and Ray Serve's LRU). See
    # docs/placement.md for the simulations that chose 60 s.
    frequency_half_life_s: float | None = 60.0
    # with LRFU, True = rank copies by score x what a miss costs / their bytes (GDSF): fewer loads
    # where loads cost about the same, but the misses left are the big, slow models (measured in
    # docs/placement.md: 2-13 % fewer loads, a p99 1-3 ms higher); False = the score alone
    cost_aware_eviction: bool = False
    # with cost_aware_eviction: what every miss costs beside its load, the activator's hop and
    # the replay (about 9 ms measured, docs/benchmarks.md), the same for a small model and a big one
    miss_overhead_s: float = 0.01
    # a copy that just became ready is not evicted for this long: the requests that waited for it
    # are still being replayed, and the gateway's request counts for it arrive ~1 s late
    min_cache_s: float = 2.0
    # loads that must wait for a slot, per instance, before it takes no more: a copy placed behind
    # a long queue would hold its bytes, and evict ready copies, long before it could load
    max_queued_loads: int = 2
    # placement (ModelMesh's candidate filtering)
    near_age_s: float = 45.0
    near_age_fraction: float = 0.10
    near_free_fraction: float = 0.25
    load_factor_hot: float = 1.1  # model used within hot_use_s: keep candidates ≤ 1.1x lowest load
    load_factor_cold: float = 4.0  # model unused for cold_use_s (or never): ≤ 4x
    hot_use_s: float = 60.0
    cold_use_s: float = 30 * 60.0
    load_slack_rpm: float = 60.0  # loads this close to the lowest always count as "near"
    # scaling
    scale_interval_s: float = 10.0
    rate_window_s: float = 60.0
    rate_bucket_s: float = 10.0
    scale_up_rpm_per_copy: float = 2000.0
    max_copies: int | None = None  # None: max(2, a third of the runtime's instances)
    second_copy_recent_s: float = 7 * 60.0  # used this recently ...
    second_copy_history_s: float = 40 * 60.0  # ... and in use for this long: a second copy
    usage_gap_s: float = 10 * 60.0  # a longer gap ends a model's "in use" streak
    idle_scale_down: bool = True  # also scale down when idle (ModelMesh: memory pressure only)
    scale_down_fraction: float = 0.5  # remove a copy if the rest stay below this x threshold
    scale_down_delay_s: float = 5 * 60.0  # no scale-down this soon after a scale change
    idle_s: float = 10 * 60.0  # unused this long: extra copies go (down to max(1, min_copies))
