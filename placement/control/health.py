"""Runtime instance health: each instance's ``runtimeStatus``, checked on a period.

An instance enters placement when it first answers READY, with what it already holds (adopted,
so a control-plane restart neither unloads nor reloads anything). It leaves, and its models are
placed elsewhere, when it is gone: :data:`DOWN_AFTER_FAILURES` checks in a row that find
nothing listening or a runtime that says it is not ready. A check that merely times out is a
busy instance, not a dead one (a large inference can hold a runtime for seconds): only when its
checks have kept timing out for :data:`SLOW_DOWN_AFTER_S` does it leave. Each instance is
checked on its own, so one slow instance delays nobody else's checks.

When the gateway cannot deliver a request to an instance (refused, reset), :meth:`recheck` checks
it at once, by the same rules, so a dead instance leaves placement within a fraction of a second
and the requests the activator holds for it are served elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from placement.control.runtime_client import RuntimeCallError, RuntimeClient, RuntimeTimeout
from placement.engine.model_types import InstanceInfo

log = logging.getLogger("msm.health")

#: Consecutive failed health checks (refused, or not ready) before an instance leaves placement.
DOWN_AFTER_FAILURES = 2
#: Checks that only time out take an instance out after this long.
SLOW_DOWN_AFTER_S = 20.0
#: How long one check may take before it counts as slow.
PROBE_TIMEOUT_S = 5.0
#: A recheck (the gateway could not reach an instance) checks again this soon after a failure,
#: instead of a period later: the same two failures take an instance out, in a tenth of the time.
RECHECK_GAP_S = 0.1


@dataclass
class TrackedInstance:
    """One runtime instance as health checking sees it."""

    info: InstanceInfo
    client: RuntimeClient
    up: bool = False
    failures: int = 0
    last_error: str | None = None
    slow_since: float | None = None  # checks have been timing out since then


class InstanceHealth:
    """Checks every instance each ``interval`` seconds; reports ups (with holdings) and downs."""

    def __init__(self, instances: list[tuple[InstanceInfo, RuntimeClient]],
                 on_up: Callable[[InstanceInfo, RuntimeClient, Mapping[str, int]], None],
                 on_down: Callable[[str], None], *, interval: float = 1.0,
                 registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.instances = {info.id: TrackedInstance(info, client) for info, client in instances}
        self._on_up, self._on_down = on_up, on_down
        self.interval = interval
        self._clock = clock
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._rechecks: dict[str, asyncio.Task[None]] = {}  # one at a time per instance, shared
        self._started = False
        registry = registry if registry is not None else CollectorRegistry()
        self._up_gauge = Gauge("msm_runtime_instances_up", "Runtime instances in placement",
                               registry=registry)
        self._downs = Counter("msm_runtime_instance_down", "Runtime instances taken out of placement "
                              "after failed health checks", registry=registry)

    @property
    def up_count(self) -> int:
        return sum(t.up for t in self.instances.values())

    async def check_all(self) -> None:
        await asyncio.gather(*(self._check(t) for t in self.instances.values()))

    def start(self) -> None:
        self._started = True
        for iid, t in self.instances.items():
            self._tasks[iid] = asyncio.create_task(self._loop(t), name=f"runtime-health:{iid}")

    def add(self, info: InstanceInfo, client: RuntimeClient) -> None:
        """A new instance (a runtime pod that became ready): checked from now on."""
        if info.id in self.instances:
            raise ValueError(f"instance {info.id} is already tracked")
        t = self.instances[info.id] = TrackedInstance(info, client)
        if self._started:
            self._tasks[info.id] = asyncio.create_task(self._first_then_loop(t),
                                                       name=f"runtime-health:{info.id}")

    async def remove(self, instance_id: str) -> None:
        """An instance that is gone (its pod deleted): out of placement now, its client closed."""
        t = self.instances.pop(instance_id, None)
        if t is None:
            return
        for tasks in (self._tasks, self._rechecks):
            task = tasks.pop(instance_id, None)
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if t.up:
            self._down(t, "removed")
        await t.client.close()

    async def readopt(self) -> None:
        """Report every instance up again, with what it holds now (a new leader adopts them all);
        an instance that does not answer is reported when it next does."""
        for t in self.instances.values():
            t.up = False
        await self.check_all()

    async def recheck(self, instance_ids: frozenset[str]) -> frozenset[str]:
        """Check these instances now (the gateway could not reach them); returns those that are
        down. Callers asking for one instance at once share one recheck."""
        tracked = [self.instances[i] for i in sorted(instance_ids) if i in self.instances]
        waits = []
        for t in tracked:
            task = self._rechecks.get(t.info.id)
            if task is None or task.done():
                task = self._rechecks[t.info.id] = asyncio.create_task(
                    self._recheck(t), name=f"runtime-recheck:{t.info.id}")
            waits.append(task)
        # shielded: a caller that gives up (its client left) does not cancel the others' recheck
        await asyncio.gather(*(asyncio.shield(w) for w in waits), return_exceptions=True)
        return frozenset(i for i in instance_ids if i not in self.instances or not self.instances[i].up)

    async def _recheck(self, t: TrackedInstance) -> None:
        for attempt in range(DOWN_AFTER_FAILURES):
            if attempt:
                await asyncio.sleep(RECHECK_GAP_S)
            if not t.up:
                return
            await self._check(t)
            if t.failures == 0:  # answered (or only slow, which is not dead)
                return

    async def stop(self) -> None:
        """Stop checking (the clients stay open for calls still in flight; see :meth:`close`)."""
        tasks = [*self._tasks.values(), *self._rechecks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = {}
        self._rechecks = {}
        self._started = False

    async def close(self) -> None:
        for t in self.instances.values():
            await t.client.close()

    async def _first_then_loop(self, t: TrackedInstance) -> None:
        await self._check(t)
        await self._loop(t)

    async def _loop(self, t: TrackedInstance) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._check(t)

    async def _check(self, t: TrackedInstance) -> None:
        """One health check; an instance comes (back) up with what it holds, or goes down."""
        try:
            status = await t.client.runtime_status(timeout=max(PROBE_TIMEOUT_S, self.interval))
            if not status.ready:
                raise RuntimeError(f"runtime status {status.status}")
            loaded = await t.client.loaded_models(timeout=PROBE_TIMEOUT_S) if not t.up else None
        except RuntimeTimeout as e:  # alive but busy, or gone quiet: only a long silence counts
            now = self._clock()
            t.slow_since = now if t.slow_since is None else t.slow_since
            t.last_error = f"{e} (slow for {now - t.slow_since:.0f}s)"
            if t.up and now - t.slow_since >= SLOW_DOWN_AFTER_S:
                self._down(t, f"no answer for {now - t.slow_since:.0f}s")
            return
        except (RuntimeCallError, RuntimeError, OSError) as e:
            t.failures += 1
            t.last_error = str(e)
            if t.up and t.failures >= DOWN_AFTER_FAILURES:
                self._down(t, str(e))
            elif not t.up and t.failures == 1:
                log.warning("runtime instance %s not reachable yet: %s", t.info.id, e)
            self._up_gauge.set(self.up_count)
            return
        t.failures, t.last_error, t.slow_since = 0, None, None
        if t.up:
            return
        capacity = status.capacity_bytes or t.info.capacity_bytes
        if capacity != t.info.capacity_bytes:
            t.info = replace(t.info, capacity_bytes=capacity)
        held = dict(loaded or {})
        t.up = True
        log.info("runtime instance %s up (capacity %d MiB), adopting %d loaded model(s)%s",
                 t.info.id, capacity >> 20, len(held), f": {', '.join(sorted(held))}" if held else "")
        self._on_up(t.info, t.client, held)
        self._up_gauge.set(self.up_count)

    def _down(self, t: TrackedInstance, why: str) -> None:
        t.up = False
        self._downs.inc()
        log.warning("runtime instance %s is down (%s); its models are placed elsewhere", t.info.id, why)
        self._on_down(t.info.id)
        self._up_gauge.set(self.up_count)

    def annotate(self, instances: dict[str, dict[str, Any]]) -> None:
        """Add health facts to a status ``instances`` map (instances placement does not know too)."""
        for iid, t in self.instances.items():
            inst = instances.setdefault(iid, {"runtime": t.info.runtime, "address": t.info.address,
                                              "capacity_bytes": t.info.capacity_bytes, "loaded": {}})
            inst["up"] = t.up
            inst["spi_address"] = t.client.address
            inst["rest_port"], inst["grpc_port"] = t.info.rest_port, t.info.grpc_port
            if t.last_error:
                inst["last_error"] = t.last_error
