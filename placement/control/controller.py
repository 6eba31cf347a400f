"""The controller: the I/O around the placement engine.

It feeds the engine (desired state, runtime health, traffic), carries out the engine's decisions
(load and unload calls to runtime adapters, each in its own owned task), and publishes the
engine's mesh view, composed with the users' traffic policy (:mod:`placement.traffic.compose`),
through a :class:`ViewPublisher`. The engine decides; the controller only does.

Its two outward seams are protocols, so the controller never knows what is behind them: a
:class:`ModelLoader` per runtime instance (the SPI client), and one :class:`ViewPublisher` (in
every process today the xDS stack of ``msm/xds_stack.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import replace
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from placement.control.activator import COLD_PATH_BUCKETS, UNKNOWN_MODEL, DirectCopy
from placement.engine.engine import Engine, LoadAction, UnloadAction, instance_endpoint
from placement.engine.model_types import DesiredModel, InstanceInfo
from placement.traffic.compose import compose
from placement.traffic.policy import HostPolicy
from placement.traffic.rollout import Rollouts, RolloutSpec
from xds_server.mesh_view import ActivatorEndpoint, Copy, MeasureEndpoint, MeshView, Revision

log = logging.getLogger("msm.controller")

#: After the gateway ACKs routes without a copy, requests it started on the old routes may still be
#: running (and a worker thread of Envoy may start one for a moment): the unload waits this long.
UNLOAD_GRACE_S = 1.0
#: The longest a publish waits for the direct replays a load released (their median is ~7 ms).
REPLAY_FIRST_S = 0.05


class ModelLoader(Protocol):
    """What the controller needs of one runtime instance: load and unload (the SPI's calls)."""

    async def load_model(self, model_id: str, model_type: str, model_path: str, model_key: str = "",
                         timeout: float | None = None) -> int: ...
    async def unload_model(self, model_id: str, timeout: float | None = None) -> None: ...


class Inventory(Protocol):
    """An instance that can say what it holds (revision -> bytes): checked every ``inventory_interval``."""

    async def loaded_models(self, timeout: float | None = None) -> Mapping[str, int]: ...


#: recheck(instance ids) -> those of them that are down once checked again now: what the
#: controller asks of health checking when the gateway could not deliver a request to them
Recheck = Callable[[frozenset[str]], Awaitable[frozenset[str]]]


class RolloutStore(Protocol):
    """Where the rollouts' state outlives the deciding process (a file, a ConfigMap): a control
    plane that restarts, or a new leader, carries on from it."""

    async def load(self) -> Mapping[str, Any]: ...
    async def save(self, state: Mapping[str, Any]) -> None: ...


class ViewPublisher(Protocol):
    """Where mesh views go, and how the controller learns that the gateways have applied one."""

    @property
    def version(self) -> str | None:
        """The version of the last view published (None before the first)."""

    async def publish(self, view: MeshView, yield_loop: bool = False) -> str:
        """Publish ``view``; returns the version now current. ``yield_loop``: other work waits on
        the event loop (loads just started), so do not build the view on it."""

    async def wait_for_ack(self, version: str, timeout: float) -> bool:
        """True once the gateways hold ``version`` (or a later one); False after ``timeout``."""


def _routed(view: MeshView, model: str, revision: str | None) -> list[Revision]:
    """The revisions ``view`` sends ``model``'s traffic to: ``revision`` while it is one of the
    model's, else the destinations with a share of its rules."""
    m = view.models.get(model)
    if m is None:
        return []
    rev = m.revision(revision) if revision is not None else None
    if rev is not None:
        return [rev]
    return [rev for rule in m.effective_rules() for d in rule.destinations
            if d.weight > 0 and (rev := m.revision(d.revision)) is not None]


def routes_to_a_copy(view: MeshView, model: str, revision: str | None = None,
                     avoid: Collection[str] = ()) -> bool:
    """Whether ``view`` sends some of ``model``'s traffic to a ready copy (not all to the activator);
    with ``revision``, whether that revision has one (if it is still a revision of the model).
    Copies on the ``avoid`` instances do not count."""
    return any(cp.instance not in avoid for rev in _routed(view, model, revision) for cp in rev.copies)


def instances_routed(view: MeshView, model: str, revision: str | None = None) -> frozenset[str]:
    """The instances holding the copies ``view`` routes ``model`` (``revision`` of it) to."""
    return frozenset(cp.instance for rev in _routed(view, model, revision) for cp in rev.copies)


class Controller:
    def __init__(self, engine: Engine, publisher: ViewPublisher, clients: Mapping[str, ModelLoader],
                 activator: ActivatorEndpoint | None = None, tick_interval: float = 0.25,
                 drain_timeout: float = 10.0, idle_publish_s: float = 2.0,
                 inventory_interval: float | None = None, unload_grace_s: float = UNLOAD_GRACE_S,
                 registry: CollectorRegistry | None = None, measure: MeasureEndpoint | None = None,
                 rollout_store: RolloutStore | None = None, recheck: Recheck | None = None) -> None:
        self.engine = engine
        self.recheck = recheck  # health checking's, for requests the gateway failed over
        self.rollout_store = rollout_store
        self._rollouts_saved: dict[str, Any] = {}
        self.publisher = publisher
        self.clients = dict(clients)
        self.activator = activator
        self.tick_interval = tick_interval
        self.drain_timeout = drain_timeout
        # after the gateway stops routing to a copy, requests it sent before are still running
        self.unload_grace_s = unload_grace_s
        self.idle_publish_s = idle_publish_s
        self.inventory_interval = inventory_interval
        self._wake = asyncio.Event()
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._inventory_task: asyncio.Task[None] | None = None
        self.desired_errors: dict[str, str] = {}
        self.measure = measure  # where gateways report measurements (this process's xDS port)
        self.traffic: dict[str, HostPolicy] = {}  # VirtualServices' routing, by host
        self.rollouts = Rollouts()  # canary rollouts by steps, between the manifests and the engine
        self._desired: list[DesiredModel] = []
        self._rollout_specs: dict[str, RolloutSpec] = {}
        registry = registry if registry is not None else CollectorRegistry()
        self._rollout_weight = Gauge("msm_rollout_weight", "The new revision's share of a model in a "
                                     "rollout, percent", ["model"], registry=registry)
        self._rollout_events = Counter("msm_rollout_events", "Rollout events (started, advanced, held, "
                                       "failed-check, promoted, rolled-back)", ["model", "kind"],
                                       registry=registry)
        # where a cold request's time goes (bench/ray_multiplex.py reads them): the runtime's load,
        # and the phases of the activator's wait
        self._load_seconds = Histogram("msm_model_load_seconds", "Runtime loadModel calls that succeeded",
                                       buckets=COLD_PATH_BUCKETS, registry=registry)
        self._cold_seconds = Histogram(
            "msm_cold_request_seconds", "A request without a ready copy, held by the activator: until the "
            "copy it waited for loaded (queue and load), then until a published view routed to it, then "
            "until the gateway ACKed that view", ["phase"], buckets=COLD_PATH_BUCKETS, registry=registry)
        self._ready_at: dict[str, float] = {}  # model -> when its last load succeeded
        # instances the gateways hold in their runtime's direct cluster (a view that listed them is
        # ACKed): a held request can be replayed to a copy there as soon as its load returns
        # (DirectCopy); and those whose view's ACK is awaited
        # (keyed on the instance's addresses too: an instance back under another one is new)
        self._reachable: set[Copy] = set()
        self._reaching: set[Copy] = set()
        self._held = 0  # cold requests in ensure_ready now
        self._replays = 0  # direct replays under way (each DirectCopy's done() ends one)
        self._replays_idle = asyncio.Event()
        self._replays_idle.set()
        self._cold_paths = Counter("msm_cold_replays", "Held requests for a model with no ready copy, "
                                   "by how the activator replayed them: direct (to the copy the moment "
                                   "its load returned) or routes (once the gateway's routes named it)",
                                   ["path"], registry=registry)
        self._registry = registry
        self._collectors = [self._rollout_weight, self._rollout_events, self._load_seconds,
                            self._cold_seconds, self._cold_paths]
        self.traffic_problems: dict[str, str] = {}  # hosts whose policy could not be applied
        # the engine's view (before the traffic policy) last published, and its version
        self._published: tuple[MeshView, str] | None = None
        self._desired_known = asyncio.Event()  # set_desired has been called once
        self._failovers = Counter("msm_request_failovers", "Requests the gateway could not deliver to "
                                  "their copies, held by the activator until routes sent them to a "
                                  "working copy (outcome: rerouted) or not (failed)", ["outcome"],
                                  registry=registry)
        self._collectors.append(self._failovers)
        self._stopped = False

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        await self._publish()
        self._loop_task = asyncio.create_task(self._run(), name="controller")
        if self.inventory_interval:
            self._inventory_task = asyncio.create_task(self._inventory_loop(), name="inventory")

    def unregister_metrics(self) -> None:
        """Take this controller's metrics off its registry (a replica that stops leading: the next
        controller on the same registry registers them again)."""
        for c in self._collectors:
            with contextlib.suppress(KeyError):
                self._registry.unregister(c)

    async def stop(self) -> None:
        self._stopped = True
        tasks = [t for t in (self._loop_task, self._inventory_task, *self._tasks) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def wake(self) -> None:
        self._wake.set()

    async def load_rollouts(self) -> None:
        """Carry on the rollouts the store kept (call before the first :meth:`set_desired`)."""
        if self.rollout_store is None:
            return
        try:
            async with asyncio.timeout(10):
                state = dict(await self.rollout_store.load())
        except Exception as e:  # unreadable: rollouts in flight finish as rolling updates
            log.warning("reading the rollouts' saved state failed: %s; rollouts in progress are forgotten", e)
            return
        for problem in self.rollouts.restore(state, time.monotonic()):
            log.warning("%s", problem)
        self._rollouts_saved = self.rollouts.export()
        # the engine learns each model's stable revision first, so that the manifests' new
        # revision comes to it as the canary of a rollout, not as a rolling update
        seeds = [self.rollouts.stable[name] for name in sorted(self.rollouts.active)]
        if seeds:
            self.engine.set_desired(seeds)
        for name, r in sorted(self.rollouts.active.items()):
            log.info("rollout of %s carries on: %s", name, r.status(time.monotonic()).get("phase"))

    async def _save_rollouts(self) -> None:
        if self.rollout_store is None:
            return
        state = self.rollouts.export()
        if state == self._rollouts_saved:
            return
        try:
            async with asyncio.timeout(5):
                await self.rollout_store.save(state)
            self._rollouts_saved = state
        except Exception as e:  # tried again on the next tick
            log.warning("saving the rollouts' state failed: %s", e)

    # -- inputs ----------------------------------------------------------------------------------
    def set_desired(self, models: list[DesiredModel], errors: Mapping[str, str],
                    rollouts: Mapping[str, RolloutSpec] | None = None) -> None:
        self._desired = list(models)
        self._rollout_specs = dict(rollouts or {})
        self._apply_desired()
        self.desired_errors = dict(errors)
        self._desired_known.set()
        self.wake()

    def _apply_desired(self) -> None:
        """The engine's desired state: the manifests', with rollouts' canary shares (or rollbacks)."""
        self.engine.set_desired(self.rollouts.desired(self._desired, self._rollout_specs, time.monotonic()))

    def record_measurements(self, batch: Iterable[Any]) -> None:
        """What the gateway measured on the routes of revisions in a rollout (revision, failed, latency)."""
        for m in batch:
            self.rollouts.observe(m.revision, m.failed, m.latency_s)

    def _revision_ready(self, model: str, revision: str) -> bool:
        return any(p == "ready" for p in self.engine.model_status(model).revisions.get(revision, {}).values())

    def _tick_rollouts(self) -> bool:
        """Advance the rollouts; True when one changed what the engine must be told."""
        events = self.rollouts.tick(time.monotonic(), self._revision_ready)
        for model, event in events:
            self._rollout_events.labels(model, event.kind).inc()
            (log.warning if event.kind in ("rolled-back", "failed-check") else log.info)(
                "rollout of %s: %s", model, event.message)
        changed = any(e.kind != "held" for _, e in events)
        if changed:
            self._apply_desired()
            for model, r in self.rollouts.active.items():
                self._rollout_weight.labels(model).set(r.weight())
            for model, r in self.rollouts.finished.items():
                self._rollout_weight.labels(model).set(r.weight())
        return changed

    def set_traffic(self, policies: Mapping[str, HostPolicy]) -> None:
        """The routing users ask for (VirtualServices), applied from the next publish."""
        if dict(policies) != self.traffic:
            self.traffic = dict(policies)
            self.wake()

    def add_instance(self, info: InstanceInfo, client: ModelLoader, loaded: Mapping[str, int]) -> None:
        self.clients[info.id] = client
        self.engine.instance_up(info, loaded)
        self.wake()

    def remove_instance(self, instance_id: str) -> None:
        self._reachable = {i for i in self._reachable if i.instance != instance_id}
        self.engine.instance_down(instance_id)
        self.wake()

    def record_requests(self, model: str, count: int, instance_id: str | None = None) -> None:
        self.engine.record_requests(model, count, instance_id)

    async def ensure_ready(self, model: str, timeout: float, revision: str | None = None,
                           failed_over: bool = False) -> str | DirectCopy | None:
        """For the activator: None once ``model`` (``revision`` of it, while it has that revision)
        has a ready copy that the gateway has ACKed; a :class:`DirectCopy` when ``revision`` has a
        ready copy that the gateway can reach before its routes name it (the activator's
        endpoint has a replay token, and the gateway holds a view that lists the copy's instance).

        ``failed_over``: the gateway could not deliver a request to the copies it routes to. Their
        instances are checked at once (not at the next health period); those found down are out of
        placement, and the request waits for a copy elsewhere.
        """
        if not failed_over:
            self._held += 1
            try:
                return await self._ensure_ready(model, timeout, revision, None)
            finally:
                self._held -= 1
        avoid: frozenset[str] = frozenset()
        if self.recheck is not None and self._published is not None:
            avoid = await self.recheck(instances_routed(self._published[0], model, revision))
        reason = await self._ensure_ready(model, timeout, revision, avoid)
        self._failovers.labels("rerouted" if reason is None else "failed").inc()
        return reason

    async def _ensure_ready(self, model: str, timeout: float, revision: str | None,
                            avoid: frozenset[str] | None) -> str | DirectCopy | None:
        """``avoid``: for a request whose copies failed, the instances found down (its replay goes
        by the routes, as it came: never direct); None for a cold request."""
        started = time.monotonic()
        deadline = started + timeout
        if not self._desired_known.is_set():  # just started: the manifests are being read
            try:
                async with asyncio.timeout(timeout):
                    await self._desired_known.wait()
            except TimeoutError:
                return "msm has not read its manifests yet"
        if self.engine.has_model(model) is False:
            return f"{UNKNOWN_MODEL} '{model}'"
        asked: object = ()  # the routed revisions the load was asked for
        waited = False
        direct: DirectCopy | None = None
        async with self._changed:
            while True:
                # Asked again whenever what the gateway routes the model to changes while the
                # request waits (a new revision, a rollout's step, a delete and re-create): the
                # request waits for that, so that must load.
                if self.engine.has_model(model) is False:
                    return f"{UNKNOWN_MODEL} '{model}'"
                routed = self._routed_revisions(model)
                if routed != asked:
                    asked = routed
                    self.engine.request_for_cold_model(model)
                    self.wake()
                # A copy the gateway can reach directly goes first: no new view to wait for (not
                # for a request whose copies failed: its replay goes by the routes, as it came).
                direct = self._direct_copy(model, revision) if avoid is None else None
                if direct is not None:
                    break
                # Published, not just decided: the engine has a ready copy as soon as its load
                # returns, but the gateway can route to it only from the next published view.
                if self._published is not None and routes_to_a_copy(self._published[0], model, revision,
                                                                        avoid or ()):
                    version = self._published[1]
                    break
                status = self.engine.model_status(model)
                if status.failed:
                    return status.failure or "load failed on every instance tried"
                if status.cannot_fit:  # known now: answer now, not after the timeout
                    return status.waiting
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return f"no copy ready within {timeout:.0f}s"
                waited = True
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    return f"no copy ready within {timeout:.0f}s"
        published = time.monotonic()
        if direct is not None:
            if waited:
                self._cold_seconds.labels("load").observe(published - started)
            self._cold_paths.labels("direct").inc()
            self._replays += 1
            self._replays_idle.clear()
            return replace(direct, done=self._replayed)
        if not await self.publisher.wait_for_ack(version, max(1.0, deadline - time.monotonic())):
            return "the gateway did not acknowledge the new routes in time"
        if waited:  # a request that found a copy already routed tells nothing of the cold path
            self._cold_paths.labels("routes").inc()
            loaded = min(max(self._ready_at.get(model, published), started), published)
            self._cold_seconds.labels("load").observe(loaded - started)
            self._cold_seconds.labels("publish").observe(published - loaded)
            self._cold_seconds.labels("ack").observe(time.monotonic() - published)
        return None

    @property
    def _replay_token(self) -> str:
        """The activator's replay token; empty: no direct replays."""
        return self.activator.replay_token if self.activator is not None else ""

    def _direct_copy(self, model: str, revision: str | None) -> DirectCopy | None:
        """A ready copy of ``revision`` on an instance the gateways hold in its direct cluster."""
        token = self._replay_token
        if not token or revision is None:
            return None
        for rev, iid, _ in self.engine.routable_copies(model):
            cache = self.engine.instances.get(iid)
            if rev != revision or cache is None:
                continue
            info = cache.info
            if instance_endpoint(info) in self._reachable:
                return DirectCopy(token, f"{info.address}:{info.rest_port}",
                                  f"{info.address}:{info.grpc_port}")
        return None

    async def _reach(self, version: str, instances: list[Copy]) -> None:
        """Mark ``instances`` reachable once the gateways hold ``version``, which lists them (a
        version the cache has forgotten cannot be waited for: this waits while it is current)."""
        try:
            held = await self.publisher.wait_for_ack(version, self.drain_timeout)
        finally:
            self._reaching.difference_update(instances)
        if held:  # (the next publish tries again otherwise)
            up = self.engine.instances
            self._reachable.update(i for i in instances
                                   if i.instance in up and instance_endpoint(up[i.instance].info) == i)
            async with self._changed:
                self._changed.notify_all()

    def _routed_revisions(self, model: str) -> tuple[str, ...] | None:
        """The revisions the last published view routes ``model`` to (None: not published)."""
        m = self._published[0].models.get(model) if self._published is not None else None
        if m is None:
            return None
        return tuple(d.revision for rule in m.effective_rules() for d in rule.destinations)

    async def check_inventory(self, instance_id: str) -> tuple[list[str], list[str]]:
        """Ask one instance what it holds and repair the engine's view: ``(lost, found)``.

        A model unloaded behind msm's back (or lost by the runtime) would otherwise be routed to
        and fail until the instance went down; now it leaves the routes and is loaded again.
        """
        client = self.clients.get(instance_id)
        if client is None or not hasattr(client, "loaded_models"):
            return [], []
        before = self.engine.copies_on(instance_id)
        held = await client.loaded_models(timeout=5.0)
        lost, found = self.engine.inventory(instance_id, held, before)
        if lost:
            log.warning("instance %s no longer holds %s (unloaded behind msm's back?); placing again",
                        instance_id, ", ".join(lost))
        if found:
            log.info("instance %s holds %s, which msm did not place; adopted", instance_id, ", ".join(found))
        if lost or found:
            self.wake()
        return lost, found

    async def _inventory_loop(self) -> None:
        assert self.inventory_interval
        while True:
            await asyncio.sleep(self.inventory_interval)
            for iid in list(self.engine.instances):
                try:
                    await self.check_inventory(iid)
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # an instance that does not answer is health checking's business
                    log.debug("inventory of %s failed: %s", iid, e)

    # -- the loop --------------------------------------------------------------------------------
    async def _run(self) -> None:
        last_publish = time.monotonic()
        while not self._stopped:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
                # arrives as the timeout fires, and stop() would wait for this loop forever
                async with asyncio.timeout(self.tick_interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            woken = self._wake.is_set()
            self._wake.clear()
            try:
                woken = self._tick_rollouts() or woken
                await self._save_rollouts()
                actions = self.engine.tick()
                # The view changes with an input (each wakes the loop) or with what a tick decides
                # (it returns actions); building and comparing a large view costs tens of ms, so a
                # quiet tick skips it, with a periodic publish as a safety net.
                if not (woken or actions or time.monotonic() - last_publish >= self.idle_publish_s):
                    continue
                last_publish = time.monotonic()
                # Loads start before the publish: requests may be waiting for them, and nothing
                # routes to a copy before it is ready. Unloads are spawned after it: a copy being
                # unloaded has already left the view, so its unload waits (in _execute) until the
                # gateway has ACKed this version, whose routes no longer name it.
                loads = [a for a in actions if isinstance(a, LoadAction)]
                for action in loads:
                    self._spawn(self._execute(action, None))
                # with loads just started, the view is built off the loop, so that their calls go
                # out first (a small view is otherwise built on the loop, without yielding)
                await self._publish(yield_loop=bool(loads))
                for action in actions:
                    if not isinstance(action, LoadAction):
                        self._spawn(self._execute(action, self.publisher.version))
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop the mesh; log it loudly and go on
                log.exception("controller tick failed")

    async def _publish(self, yield_loop: bool = False) -> None:
        engine_view = self.engine.mesh_view(self.activator)
        view, problems = compose(engine_view, self.traffic, self.rollouts.measured())
        if self.measure is not None:
            view = replace(view, measure=self.measure)
        if problems != self.traffic_problems:
            for host, problem in sorted(problems.items()):
                if self.traffic_problems.get(host) != problem:
                    log.warning("routing of %s: %s", host, problem)
            self.traffic_problems = problems
        # a model that takes a mirror's copies is loaded like one with requests: the gateway drops
        # shadows to a model with no copy rather than hold them (and the mirror's route stats keep
        # it warm once loaded)
        for name in sorted({m.host for p in self.traffic.values() for r in p.rules for m in r.mirrors}):
            if self.engine.has_model(name) and not routes_to_a_copy(engine_view, name):
                self.engine.request_for_cold_model(name)
        version = await self.publisher.publish(view, yield_loop=yield_loop)
        self._published = (engine_view, version)
        new = [i for instances in engine_view.runtime_instances.values() for i in instances
               if i not in self._reachable and i not in self._reaching]
        if new:
            self._reaching.update(new)
            self._spawn(self._reach(version, new))
        async with self._changed:
            self._changed.notify_all()

    async def _after_direct_replays(self) -> None:
        """Wait until the requests just released to a copy are replayed (at most REPLAY_FIRST_S):
        the view that routes to the copy is for the requests to come, and building and pushing it
        beside the replays (this process's event loop, the gateway's, the machine's cores) slows
        them. Measured: docs/benchmarks.md."""
        # the woken requests take the condition's lock in turn, find the copy and count in: a few
        # turns of the loop each
        for _ in range(2 + 3 * self._held):
            await asyncio.sleep(0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REPLAY_FIRST_S):
                await self._replays_idle.wait()

    def _replayed(self) -> None:
        self._replays -= 1
        if self._replays <= 0:
            self._replays_idle.set()

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(self, action: LoadAction | UnloadAction, version: str | None) -> None:
        client = self.clients.get(action.instance)
        if isinstance(action, LoadAction):
            m = action.model
            if client is None:
                self.engine.load_failed(action.instance, action.revision, "instance has no runtime client")
            else:
                started = time.monotonic()
                try:
                    size = await client.load_model(action.revision, m.model_type, m.model_path,
                                                   timeout=m.load_timeout_s)
                except Exception as e:  # the runtime's error text is what the user needs to see
                    log.warning("load of %s on %s failed: %s", action.revision, action.instance, e)
                    self.engine.load_failed(action.instance, action.revision, str(e))
                else:
                    took = time.monotonic() - started
                    log.info("loaded %s on %s in %.2fs (%d bytes)", action.revision, action.instance, took,
                             size)
                    self._load_seconds.observe(took)
                    self._ready_at[m.name] = time.monotonic()
                    self.engine.load_succeeded(action.instance, action.revision, size)
                    if self._held and self._replay_token:  # held requests may go at once
                        async with self._changed:
                            self._changed.notify_all()
                        await self._after_direct_replays()
        else:
            if version is not None and not await self.publisher.wait_for_ack(version, self.drain_timeout):
                log.warning("gateway has not ACKed %s; unloading %s from %s anyway",
                            version, action.revision, action.instance)
            if self.unload_grace_s > 0:
                await asyncio.sleep(self.unload_grace_s)
            if client is not None:
                try:
                    await client.unload_model(action.revision)
                except Exception as e:
                    log.warning("unload of %s on %s failed: %s", action.revision, action.instance, e)
            self.engine.unload_done(action.instance, action.revision)
        self.wake()

    def status(self) -> dict[str, Any]:
        """The engine's models and instances, and the manifest problems (the gateway is the caller's)."""
        errors = dict(self.desired_errors)
        for host, problem in self.traffic_problems.items():
            errors[f"routing of {host}"] = problem
        routed = {h: p.source for h, p in sorted(self.traffic.items()) if h not in self.traffic_problems}
        return {**self.engine.status(), "manifest_errors": errors, "traffic": routed,
                "rollouts": self.rollouts.status(time.monotonic())}
