"""``msm control-plane``: the local mesh's control plane, one process (started by ``msm up``).

It wires the edges to the pure parts, in the one direction data flows:

    manifests folder (LocalDirSource) → desired models → Engine (placement) → Controller
        → SnapshotPublisher → XdsServer → the Envoy gateway

plus the signals that feed the engine back: runtime health and inventory (each replica's adapter,
over the model-runtime SPI), request counts (the gateway's route stats), and cold requests (the
activator). Runtime replicas outlive this process: on start it asks each what it holds and adopts
it, so a control-plane restart neither unloads nor reloads anything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from placement.activator import Activator
from placement.clock import MonotonicClock
from placement.controller import Controller
from placement.desired_state import DesiredState, ResolvedModel
from placement.engine import Engine
from placement.gateway_stats import GatewayStatsPoller
from placement.local_config import LOCAL_CONFIG_NAME, load_local_config
from placement.model_types import DesiredModel, EngineConfig, InstanceInfo
from placement.runtime_client import RuntimeCallError, RuntimeClient
from placement.sources.local_dir import LocalDirSource
from xds_server.admin_http import AdminServer
from xds_server.cache import SnapshotCache
from xds_server.mesh_view import Activator as ActivatorAddress
from xds_server.publisher import SnapshotPublisher
from xds_server.server import XdsServer
from xds_server.translate import GatewayOptions

log = logging.getLogger("msm.control_plane")

#: Consecutive failed health checks before an instance is taken out of placement.
DOWN_AFTER_FAILURES = 2


def desired_model(m: ResolvedModel) -> DesiredModel:
    """A resolved InferenceService predictor as the placement engine wants it."""
    return DesiredModel(
        name=m.name, revision=m.revision_id, runtime=m.runtime, model_type=m.model_type,
        model_path=m.storage_path, size_estimate_bytes=m.size_estimate_bytes, min_copies=m.min_copies,
        canary_percent=m.canary_percent, load_timeout_s=m.load_timeout_s)


@dataclass
class _Replica:
    """One runtime replica as the control plane tracks it."""

    info: InstanceInfo
    client: RuntimeClient
    up: bool = False
    failures: int = 0
    last_error: str | None = None


def read_instances(path: Path) -> list[tuple[InstanceInfo, str, float]]:
    """``instances.json`` written by ``msm up`` → (instance, SPI address, load timeout s)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the runtime instances file {path}: {e}") from e
    out = []
    for r in raw:
        info = InstanceInfo(id=r["id"], runtime=r["runtime"], address=r["host"],
                            rest_port=int(r["rest_port"]), grpc_port=int(r["grpc_port"]),
                            capacity_bytes=int(r["capacity_bytes"]),
                            max_concurrent_loads=int(r.get("max_loading_concurrency") or 1))
        out.append((info, r["address"], int(r.get("model_loading_timeout_ms") or 90_000) / 1000.0))
    return out


class ControlPlane:
    """Everything the local mesh's control plane runs; :meth:`start` / :meth:`stop` own it all."""

    def __init__(self, manifests_dir: Path, instances: list[tuple[InstanceInfo, str, float]],
                 options: GatewayOptions, *, envoy_admin_url: str | None, pvc_flags: tuple[str, ...] = (),
                 engine_config: EngineConfig | None = None, health_interval: float = 1.0,
                 stats_interval: float = 1.0, poll_interval: float = 0.5) -> None:
        self.options = options
        self.registry = CollectorRegistry()
        self.cache = SnapshotCache()
        self.xds = XdsServer(self.cache, registry=self.registry)
        self.publisher = SnapshotPublisher(self.cache, options, self.registry)
        self.engine = Engine(MonotonicClock(), engine_config)
        self.activator = Activator(self._ensure_ready, "127.0.0.1", options.rest_port, options.grpc_port)
        self.controller: Controller | None = None
        self.source = LocalDirSource(manifests_dir, on_change=self._on_desired, poll_interval=poll_interval,
                                     pvc_flags=pvc_flags)
        self.replicas = {info.id: _Replica(info, RuntimeClient(addr, load_timeout=timeout))
                         for info, addr, timeout in instances}
        self.stats = (GatewayStatsPoller(envoy_admin_url, self._on_requests, interval=stats_interval)
                      if envoy_admin_url else None)
        self.admin = AdminServer(self.registry, self.status)
        self.health_interval = health_interval
        self._health_task: asyncio.Task[None] | None = None
        self._instances_up = Gauge("msm_runtime_instances_up", "Runtime instances in placement",
                                   registry=self.registry)
        self._instance_downs = Counter("msm_runtime_instance_down", "Runtime instances taken out of "
                                       "placement after failed health checks", registry=self.registry)
        self._activations = Counter("msm_activations", "Requests that reached a model with no ready copy",
                                    registry=self.registry)
        self.xds_port: int | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self, xds_host: str, xds_port: int, admin_port: int) -> None:
        await self.activator.start("127.0.0.1")
        assert self.activator.rest_port is not None and self.activator.grpc_port is not None
        self.controller = Controller(
            self.engine, self.publisher, self.xds, {},
            ActivatorAddress("127.0.0.1", self.activator.rest_port, self.activator.grpc_port))
        # Desired state first, then what the runtimes hold: adopted copies then belong to known
        # revisions, and nothing is unloaded as an orphan for want of its manifest.
        await self.source.start()
        await asyncio.gather(*(self._check(r) for r in self.replicas.values()))
        await self.controller.start()
        self.xds_port = await self.xds.start(xds_host, xds_port)
        self._health_task = asyncio.create_task(self._health_loop(), name="runtime-health")
        if self.stats is not None:
            self.stats.start()
        await self.admin.start("127.0.0.1", admin_port)
        up = sum(r.up for r in self.replicas.values())
        log.info("control plane ready: xDS %s:%s, %d/%d runtime instances up, %d models desired",
                 xds_host, self.xds_port, up, len(self.replicas), len(self.source.state.models))

    async def stop(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)
        if self.stats is not None:
            await self.stats.stop()
        await self.source.stop()
        if self.controller is not None:
            await self.controller.stop()
        await self.admin.stop()
        await self.activator.stop()
        await self.xds.stop(0.5)
        for r in self.replicas.values():
            await r.client.close()

    # -- inputs ----------------------------------------------------------------------------------
    async def _on_desired(self, state: DesiredState) -> None:
        assert self.controller is not None  # made in start(), before the source starts
        self.controller.set_desired([desired_model(m) for m in state.models.values()], state.errors)

    def _on_requests(self, revision: str, count: int) -> None:
        model = self.engine.model_of(revision)
        if model is not None and self.controller is not None:
            self.controller.record_requests(model, count)

    async def _ensure_ready(self, model: str, timeout: float) -> str | None:
        self._activations.inc()
        assert self.controller is not None
        return await self.controller.ensure_ready(model, timeout)

    # -- runtime health --------------------------------------------------------------------------
    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval)
            await asyncio.gather(*(self._check(r) for r in self.replicas.values()))

    async def _check(self, r: _Replica) -> None:
        """One health check; an instance comes (back) up with what it holds, or goes down."""
        assert self.controller is not None  # made in start(), before the first check
        try:
            status = await r.client.runtime_status(timeout=max(1.0, self.health_interval))
            if not status.ready:
                raise RuntimeError(f"runtime status {status.status}")
            loaded = await r.client.loaded_models(timeout=5.0) if not r.up else None
        except (RuntimeCallError, RuntimeError, OSError) as e:
            r.failures += 1
            r.last_error = str(e)
            if r.up and r.failures >= DOWN_AFTER_FAILURES:
                r.up = False
                self._instance_downs.inc()
                log.warning("runtime instance %s is down (%s); its models are placed elsewhere",
                            r.info.id, e)
                self.controller.remove_instance(r.info.id)
            elif not r.up and r.failures == 1:
                log.warning("runtime instance %s not reachable yet: %s", r.info.id, e)
            self._instances_up.set(sum(x.up for x in self.replicas.values()))
            return
        r.failures, r.last_error = 0, None
        if r.up:
            return
        capacity = status.capacity_bytes or r.info.capacity_bytes
        if capacity != r.info.capacity_bytes:
            r.info = replace(r.info, capacity_bytes=capacity)
        held = dict(loaded or {})
        r.up = True
        log.info("runtime instance %s up (capacity %d MiB), adopting %d loaded model(s)%s",
                 r.info.id, capacity >> 20, len(held), f": {', '.join(sorted(held))}" if held else "")
        self.controller.add_instance(r.info, r.client, held)
        self._instances_up.set(sum(x.up for x in self.replicas.values()))

    # -- status ----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        assert self.controller is not None
        st = self.controller.status()
        st.pop("gateway_clients", None)
        for iid, r in self.replicas.items():
            inst = st["instances"].setdefault(iid, {"runtime": r.info.runtime, "address": r.info.address,
                                                    "capacity_bytes": r.info.capacity_bytes, "loaded": {}})
            inst["up"] = r.up
            inst["spi_address"] = r.client.address
            inst["rest_port"], inst["grpc_port"] = r.info.rest_port, r.info.grpc_port
            if r.last_error:
                inst["last_error"] = r.last_error
        st["gateway"] = {
            "rest_port": self.options.rest_port, "grpc_port": self.options.grpc_port,
            "xds_port": self.xds_port, "snapshot_version": st.pop("snapshot_version"),
            "clients": [{**c.describe(), "in_sync": self._in_sync(c)} for c in self.xds.clients()],
            "activator": {"rest_port": self.activator.rest_port, "grpc_port": self.activator.grpc_port,
                          "activations": self.activator.activations},
        }
        return st

    def _in_sync(self, stream: Any) -> bool:
        version = self.publisher.version
        seq = self.cache.seq_of(version) if version is not None else None
        return seq is not None and stream.synced(seq)


def run_control_plane(args: argparse.Namespace) -> int:
    from xds_server.cli import _gateway_options

    try:
        instances = read_instances(Path(args.instances_file))
    except ValueError as e:
        log.error("%s", e)
        return 1
    options = _gateway_options(args)
    try:
        tunables = load_local_config(Path(args.dir), args.pvc).placement
    except ValueError as e:
        log.error("%s", e)
        return 1
    if tunables:
        log.info("placement settings from %s: %s", LOCAL_CONFIG_NAME, tunables)
    cp = ControlPlane(Path(args.dir), instances, options,
                      envoy_admin_url=f"http://127.0.0.1:{args.envoy_admin_port}",
                      pvc_flags=tuple(args.pvc), engine_config=EngineConfig(**tunables))

    async def main() -> int:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        try:
            await cp.start("127.0.0.1", args.xds_port, args.admin_port)
            await stopping.wait()
        finally:
            with contextlib.suppress(Exception):
                await cp.stop()
        return 0

    return asyncio.run(main())
