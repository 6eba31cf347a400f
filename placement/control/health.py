"""Runtime instance health: each instance's ``runtimeStatus``, checked on a period.

An instance enters placement when it first answers READY, with what it already holds (adopted,
so a control-plane restart neither unloads nor reloads anything); it leaves after
:data:`DOWN_AFTER_FAILURES` failed checks in a row, and its models are placed elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from placement.control.runtime_client import RuntimeCallError, RuntimeClient
from placement.engine.model_types import InstanceInfo

log = logging.getLogger("msm.health")

#: Consecutive failed health checks before an instance is taken out of placement.
DOWN_AFTER_FAILURES = 2


@dataclass
class TrackedInstance:
    """One runtime instance as health checking sees it."""

    info: InstanceInfo
    client: RuntimeClient
    up: bool = False
    failures: int = 0
    last_error: str | None = None


class InstanceHealth:
    """Checks every instance each ``interval`` seconds; reports ups (with holdings) and downs."""

    def __init__(self, instances: list[tuple[InstanceInfo, RuntimeClient]],
                 on_up: Callable[[InstanceInfo, RuntimeClient, Mapping[str, int]], None],
                 on_down: Callable[[str], None], *, interval: float = 1.0,
                 registry: CollectorRegistry | None = None) -> None:
        self.instances = {info.id: TrackedInstance(info, client) for info, client in instances}
        self._on_up, self._on_down = on_up, on_down
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
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
        self._task = asyncio.create_task(self._loop(), name="runtime-health")

    async def stop(self) -> None:
        """Stop checking (the clients stay open for calls still in flight; see :meth:`close`)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def close(self) -> None:
        for t in self.instances.values():
            await t.client.close()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.check_all()

    async def _check(self, t: TrackedInstance) -> None:
        """One health check; an instance comes (back) up with what it holds, or goes down."""
        try:
            status = await t.client.runtime_status(timeout=max(1.0, self.interval))
            if not status.ready:
                raise RuntimeError(f"runtime status {status.status}")
            loaded = await t.client.loaded_models(timeout=5.0) if not t.up else None
        except (RuntimeCallError, RuntimeError, OSError) as e:
            t.failures += 1
            t.last_error = str(e)
            if t.up and t.failures >= DOWN_AFTER_FAILURES:
                t.up = False
                self._downs.inc()
                log.warning("runtime instance %s is down (%s); its models are placed elsewhere", t.info.id, e)
                self._on_down(t.info.id)
            elif not t.up and t.failures == 1:
                log.warning("runtime instance %s not reachable yet: %s", t.info.id, e)
            self._up_gauge.set(self.up_count)
            return
        t.failures, t.last_error = 0, None
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
