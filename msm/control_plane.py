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
import logging
import secrets
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from msm.running import run_until_signalled
from msm.xds_stack import XdsStack, read_gateway_token
from placement.control.activator import Activator, DirectCopy
from placement.control.controller import Controller
from placement.control.gateway_stats import GatewayStatsPoller
from placement.control.health import InstanceHealth
from placement.control.runtime_client import RuntimeClient
from placement.engine.clock import MonotonicClock
from placement.engine.engine import Engine
from placement.engine.model_types import EngineConfig, InstanceInfo
from placement.local.rollout_store import FileRolloutStore
from placement.local.runtime_process import read_instances_file
from placement.manifests.desired_state import DesiredState
from placement.manifests.local_config import LOCAL_CONFIG_NAME, load_local_config
from placement.sources.local_dir import LocalDirSource
from xds_server.mesh_view import ActivatorEndpoint, MeasureEndpoint
from xds_server.translate import GatewayOptions
from xds_server.translate.names import MEASURE_CLUSTER

log = logging.getLogger("msm.control_plane")


class ControlPlane:
    """Everything the local mesh's control plane runs; :meth:`start` / :meth:`stop` own it all."""

    def __init__(self, manifests_dir: Path, instances: list[tuple[InstanceInfo, str, float]],
                 options: GatewayOptions, *, envoy_admin_url: str | None, pvc_flags: tuple[str, ...] = (),
                 engine_config: EngineConfig | None = None, health_interval: float = 1.0,
                 stats_interval: float = 1.0, poll_interval: float = 0.5,
                 gateway_token: str | None = None, inventory_interval: float = 5.0,
                 activator_ports: tuple[int, int] = (0, 0), rollout_state: Path | None = None) -> None:
        # msm's own gateway reports the requests of revisions in a rollout over its xDS cluster
        options = replace(options, measure_cluster=MEASURE_CLUSTER, measure_token=gateway_token)
        self.options = options
        self.inventory_interval = inventory_interval
        # fixed across restarts (msm up picks them once): the gateway's routes to the activator
        # stay right while a restarted control plane's xDS stream is not back yet
        self.activator_ports = activator_ports
        self.rollout_store = FileRolloutStore(rollout_state) if rollout_state is not None else None
        self.stack = XdsStack(options, self.status, gateway_token=gateway_token)
        self.engine = Engine(MonotonicClock(), engine_config)
        self.activator = Activator(self._ensure_ready, "127.0.0.1", options.rest_port, options.grpc_port,
                                   registry=self.stack.registry)
        # the activator's direct replays (docs/placement.md, "Load on demand"): a new secret per
        # process, in the routes of the views it publishes
        self.replay_token = secrets.token_urlsafe(18) if options.direct_replay else ""
        self.controller: Controller | None = None
        self.source = LocalDirSource(manifests_dir, on_change=self._on_desired, poll_interval=poll_interval,
                                     pvc_flags=pvc_flags)
        self.health = InstanceHealth(
            [(info, RuntimeClient(addr, load_timeout=timeout)) for info, addr, timeout in instances],
            self._on_instance_up, self._on_instance_down, interval=health_interval,
            registry=self.stack.registry)
        self.stats = (GatewayStatsPoller(envoy_admin_url, self._on_requests, interval=stats_interval)
                      if envoy_admin_url else None)
        self._activations = Counter("msm_activations", "Requests that reached a model with no ready copy",
                                    registry=self.stack.registry)

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self, xds_host: str, xds_port: int, admin_port: int) -> None:
        await self.activator.start("127.0.0.1", *self.activator_ports)
        assert self.activator.rest_port is not None and self.activator.grpc_port is not None
        self.controller = Controller(
            self.engine, self.stack, {},
            ActivatorEndpoint("127.0.0.1", self.activator.rest_port, self.activator.grpc_port,
                              replay_token=self.replay_token),
            inventory_interval=self.inventory_interval, registry=self.stack.registry,
            rollout_store=self.rollout_store, recheck=self.health.recheck)
        self.stack.xds.on_measurements = self.controller.record_measurements
        await self.controller.load_rollouts()  # a restart carries on the rollouts in progress
        # Desired state first, then what the runtimes hold: adopted copies then belong to known
        # revisions, and nothing is unloaded as an orphan for want of its manifest.
        await self.source.start()
        await self.health.check_all()
        await self.controller.start()
        await self.stack.start_xds(xds_host, xds_port)
        # the gateway reports measurements to this xDS port (the bootstrap knows it, the view says it)
        assert self.stack.xds_port is not None
        self.controller.measure = MeasureEndpoint(xds_host, self.stack.xds_port)
        self.controller.wake()
        self.health.start()
        if self.stats is not None:
            self.stats.start()
        await self.stack.start_admin(admin_port)
        log.info("control plane ready: xDS %s:%s, %d/%d runtime instances up, %d models desired",
                 xds_host, self.stack.xds_port, self.health.up_count, len(self.health.instances),
                 len(self.source.state.models))

    async def stop(self) -> None:
        await self.health.stop()
        if self.stats is not None:
            await self.stats.stop()
        await self.source.stop()
        if self.controller is not None:
            await self.controller.stop()
        await self.activator.stop()
        await self.stack.stop()
        await self.health.close()

    # -- inputs ----------------------------------------------------------------------------------
    async def _on_desired(self, state: DesiredState) -> None:
        assert self.controller is not None  # made in start(), before the source starts
        self.controller.set_desired(state.desired_models(), state.errors, state.rollouts())
        self.controller.set_traffic(state.traffic)

    def _on_instance_up(self, info: InstanceInfo, client: RuntimeClient, held: Mapping[str, int]) -> None:
        assert self.controller is not None  # made in start(), before the first check
        self.controller.add_instance(info, client, held)

    def _on_instance_down(self, instance_id: str) -> None:
        assert self.controller is not None
        self.controller.remove_instance(instance_id)

    def _on_requests(self, revision: str, count: int) -> None:
        model = self.engine.model_of(revision)
        if model is not None and self.controller is not None:
            self.controller.record_requests(model, count)

    async def _ensure_ready(self, model: str, timeout: float, revision: str | None = None,
                            failed_over: bool = False) -> str | DirectCopy | None:
        if not failed_over:
            self._activations.inc()
        assert self.controller is not None
        return await self.controller.ensure_ready(model, timeout, revision, failed_over)

    # -- status ----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        assert self.controller is not None
        st = self.controller.status()
        self.health.annotate(st["instances"])
        st["gateway"] = self.stack.gateway_status(self.activator)
        return st


def run_control_plane(args: argparse.Namespace, options: GatewayOptions) -> int:
    try:
        instances = read_instances_file(Path(args.instances_file))
        tunables = load_local_config(Path(args.dir), args.pvc).placement
        token = read_gateway_token(args.gateway_token_file)
    except (OSError, ValueError) as e:
        log.error("%s", e)
        return 1
    if tunables:
        log.info("placement settings from %s: %s", LOCAL_CONFIG_NAME, tunables)
    cp = ControlPlane(Path(args.dir), instances, options,
                      envoy_admin_url=f"http://127.0.0.1:{args.envoy_admin_port}",
                      pvc_flags=tuple(args.pvc), engine_config=EngineConfig(**tunables),
                      gateway_token=token,
                      activator_ports=(args.activator_rest_port, args.activator_grpc_port),
                      rollout_state=Path(args.rollout_state) if args.rollout_state else None)

    async def start() -> None:
        await cp.start("127.0.0.1", args.xds_port, args.admin_port)

    async def stop() -> None:
        with contextlib.suppress(Exception):
            await cp.stop()

    return asyncio.run(run_until_signalled(start, stop))
