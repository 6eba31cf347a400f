"""``msm kube-control-plane``: msm's control plane in Kubernetes mode.

The same pure parts as the local mesh, fed from the API server instead of a folder:

    InferenceService / ServingRuntime / ClusterServingRuntime (KubeSource) → desired models
        → Engine → Controller → SnapshotPublisher → XdsServer → the gateway
    runtime pods (RuntimePods: ready pods of msm's runtime Deployments) → InstanceHealth
        → Controller (instances up with what they hold, or down)

and two writers back to the API server: InferenceService status (StatusWriter, ModelMesh's
shape) and the runtime workloads, a Deployment and a Service per ServingRuntime in use
(WorkloadApplier). Runtime pods outlive this process: on start it adopts what they hold.

High availability, as Istio's pilot does it: every replica reads the sources, checks the runtime
pods and serves xDS; one, elected with a Lease (placement.kube.leader), places models and
writes. The others serve the leader's routes, read from its admin port (/v1/mesh-view) every
``follow_interval`` s, so a gateway gets the same routes from any replica, and the leader's
activator loads cold models for all. A follower that wins the Lease builds a fresh engine,
adopts what every runtime pod holds (nothing is reloaded) and publishes its own view, which for
the copies held is the one it was serving.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
from kubernetes import client, config
from prometheus_client import Counter, Gauge

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
from placement.kube.leader import LeaseElector
from placement.kube.rollout_store import ConfigMapRolloutStore
from placement.kube.status import (
    VIRTUAL_SERVICES,
    Gateway,
    StatusWriter,
    isvc_status,
    virtual_service_status,
)
from placement.kube.workloads import WorkloadApplier, desired_workloads
from placement.kube.xds_security import XdsSecurity, make_serving_cert, service_account
from placement.manifests.desired_state import DesiredState
from placement.manifests.kserve import model_key
from placement.manifests.kube_names import (
    LEADER_LEASE,
    MEASURE_SECURE_PORT,
    XDS_SECURE_PORT,
    xds_service_names,
)
from placement.sources.kube import DEFAULT_MODEL_GATEWAY, KubeSource
from placement.sources.pods import PodInstance, RuntimePods
from xds_server.auth import BearerTokens, MeshIdentities
from xds_server.gateway_kind import ISTIO_GATEWAY
from xds_server.mesh_view import ActivatorEndpoint, MeasureEndpoint
from xds_server.server import ServerTls
from xds_server.translate import GatewayOptions
from xds_server.translate.names import MEASURE_CLUSTER
from xds_server.translate.options import MeasureTls, UpstreamTls
from xds_server.view_codec import view_from_dict

log = logging.getLogger("msm.kube_control_plane")

DEFAULT_ADAPTER_IMAGE = "msm:0.1.0"


@dataclass(frozen=True)
class IstioGateways:
    """Istio ingress gateways msm configures: who they are, and how they listen and reach runtimes."""

    service_accounts: tuple[str, ...]  # NAMESPACE/NAME of each gateway's ServiceAccount
    namespace: str  # msm's own (its xDS Service's and CA Secret's)
    options: GatewayOptions  # the istio-gateway kind's listeners and clusters
    secure_port: int = XDS_SECURE_PORT
    measure_port: int = MEASURE_SECURE_PORT  # 0: the gateways report nothing (rollouts hold)

    @property
    def gateway_namespaces(self) -> list[str]:
        return sorted({sa.partition("/")[0] for sa in self.service_accounts})

    def allowed_usernames(self) -> list[str]:
        return [service_account(sa) for sa in self.service_accounts]


class KubeControlPlane:
    """Everything msm runs in Kubernetes mode; :meth:`start` / :meth:`stop` own it all."""

    def __init__(self, api: client.ApiClient, options: GatewayOptions, *, gateway: Gateway,
                 adapter_image: str = DEFAULT_ADAPTER_IMAGE, engine_config: EngineConfig | None = None,
                 gateway_token: str | None = None, envoy_admin_url: str | None = None,
                 runtime_replicas: int | None = None, advertise_address: str = "127.0.0.1",
                 gateway_address: str = "127.0.0.1", status_interval: float = 1.0,
                 health_interval: float = 1.0, inventory_interval: float = 5.0,
                 watch_timeout_s: int = 60, lease_namespace: str | None = None, identity: str = "",
                 lease_s: float = 15.0, renew_deadline_s: float = 10.0, retry_s: float = 2.0,
                 follow_interval: float = 0.5, istio: IstioGateways | None = None,
                 model_gateway: str = DEFAULT_MODEL_GATEWAY, state_namespace: str | None = None) -> None:
        self.api = api
        # where the leader keeps what must outlive it (the rollouts' state): msm's own namespace
        ns = state_namespace or lease_namespace
        self.rollout_store = ConfigMapRolloutStore(api, ns) if ns else None
        # msm's own gateway reports the requests of revisions in a rollout to the leader's xDS port
        # (the view names it: MeshView.measure), whichever replica its own xDS stream is on
        options = replace(options, measure_cluster=MEASURE_CLUSTER, measure_token=gateway_token)
        self.options = options
        self.gateway = gateway
        self.adapter_image = adapter_image
        self.runtime_replicas = runtime_replicas
        self.advertise_address = advertise_address
        self.status_interval = status_interval
        self.inventory_interval = inventory_interval
        self.istio = istio
        self.stack = XdsStack(options, self.status, gateway_token=gateway_token,
                              kinds={ISTIO_GATEWAY: istio.options} if istio is not None else None,
                              expect_gateway=istio is not None)
        self.xds_security = (XdsSecurity(api, istio.namespace, istio.gateway_namespaces)
                             if istio is not None else None)
        self.root_cert_problems: list[str] = []
        self.measure_port: int | None = None  # the mutual-TLS port Istio gateways report to, once up
        self._measure_address = advertise_address
        self._measure_tls: tuple[str, bytes, bytes] | None = None  # where, and the serving cert
        self.measure_problem: str | None = None
        self._ca_cert = b""  # msm's xDS CA's certificate, once read (Istio gateways only)
        self.secure_xds_port: int | None = None
        self.engine_config = engine_config
        self.engine: Engine | None = None  # the leader's; a new one each time this replica leads
        self.activator = Activator(self._ensure_ready, gateway_address, options.rest_port, options.grpc_port,
                                   registry=self.stack.registry)
        self.controller: Controller | None = None
        self.source = KubeSource(api, on_change=self._on_desired, watch_timeout_s=watch_timeout_s,
                                 model_gateway=model_gateway)
        self.pods = RuntimePods(api, self._on_pods, watch_timeout_s=watch_timeout_s)
        self.health = InstanceHealth([], self._on_instance_up, self._on_instance_down,
                                     interval=health_interval, registry=self.stack.registry)
        self.stats = (GatewayStatsPoller(envoy_admin_url, self._on_requests) if envoy_admin_url else None)
        self.status_writer = StatusWriter(api)
        self.workloads = WorkloadApplier(api)
        self._pods_changed = asyncio.Event()
        self._desired_changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._leader_tasks: list[asyncio.Task[None]] = []
        self.identity = identity or f"msm-{os.getpid()}"
        self.follow_interval = follow_interval
        self.followed: str | None = None  # version of the leader's view this replica serves
        self.elector = None if lease_namespace is None else LeaseElector(
            api, lease_namespace, LEADER_LEASE, self.identity, on_started_leading=self._lead,
            on_stopped_leading=self._step_down, lease_s=lease_s, renew_deadline_s=renew_deadline_s,
            retry_s=retry_s)
        self._role_lock = asyncio.Lock()
        self._leading_gauge = Gauge("msm_leader", "1 while this control-plane replica leads (places models "
                                    "and writes), 0 while it follows", registry=self.stack.registry)
        self._leaderships = Counter("msm_leaderships", "Times this replica became the leader",
                                    registry=self.stack.registry)

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self, xds_host: str, xds_port: int, admin_host: str, admin_port: int) -> None:
        # where gateways reach this replica's xDS and measure ports: its listen address, or the
        # advertised one when it listens on every address
        self._measure_address = self.advertise_address if xds_host in ("0.0.0.0", "::", "") else xds_host
        await self.activator.start(self.advertise_address)
        assert self.activator.rest_port is not None and self.activator.grpc_port is not None
        # desired state first, then the runtime pods and what they hold (adopted, not reloaded)
        await self.source.start()
        await self.pods.start()
        await self._sync_pods()
        await self.health.check_all()
        await self.stack.start_xds(xds_host, xds_port)
        if self.istio is not None:
            await self._start_secure_xds(xds_host)
        self.health.start()
        if self.stats is not None:
            self.stats.start()
        self._tasks = [asyncio.create_task(self._pods_loop(), name="runtime-pods")]
        if self._measure_tls is not None:
            self._tasks.append(asyncio.create_task(self._measure_port_loop(*self._measure_tls),
                                                   name="istio-measure-port"))
        admin = await self.stack.start_admin(admin_port, admin_host)
        if self.elector is None:
            await self._lead()
        else:
            host = self.advertise_address if admin_host in ("0.0.0.0", "::") else admin_host
            self.elector.admin_url = f"http://{host}:{admin}"
            await self.elector.start()
            self._tasks.append(asyncio.create_task(self._follow_loop(), name="follow-leader"))
        log.info("control plane %s up: xDS %s:%s, %d runtime pods, %d models desired", self.identity,
                 xds_host, self.stack.xds_port, len(self.health.instances), len(self.source.state.models))

    async def _start_secure_xds(self, host: str) -> None:
        """The TLS port Istio gateways' agents connect to (see placement/kube/xds_security.py)."""
        assert self.istio is not None and self.xds_security is not None
        ca_cert, ca_key = await self.xds_security.ca()
        self._ca_cert = ca_cert
        chain, key = await asyncio.to_thread(
            make_serving_cert, ca_cert, ca_key, xds_service_names(self.istio.namespace),
            datetime.datetime.now(datetime.UTC))
        auth = BearerTokens(self.xds_security.review, self.istio.allowed_usernames())
        port = await self.stack.start_secure_xds(host, self.istio.secure_port, ServerTls(chain, key), auth)
        self.secure_xds_port = port
        log.info("xDS for Istio gateways on %s:%d (TLS as %s; tokens of %s)", host, port,
                 xds_service_names(self.istio.namespace)[0], ", ".join(self.istio.service_accounts))
        if self.istio.measure_port:
            # the gateways report the requests of revisions in a rollout to the leader's measure
            # port, over mutual TLS: their workload certificate against msm's CA and name
            await self.stack.publisher.set_kind_options(ISTIO_GATEWAY, replace(
                self.istio.options, measure_cluster=MEASURE_CLUSTER, measure_token=None,
                measure_tls=MeasureTls(ca_pem=ca_cert.decode(), server_name=xds_service_names(
                    self.istio.namespace)[0], port=self.istio.measure_port)))
            self._measure_tls = (host, chain, key)

    async def _measure_port_loop(self, host: str, chain: bytes, key: bytes) -> None:
        """Open the measure port once istiod has put the mesh's root in msm's namespace: only
        certificates it signed, of the gateways' ServiceAccounts, may report."""
        assert self.istio is not None and self.xds_security is not None
        while True:
            try:
                root = await self.xds_security.mesh_root()
                problem = None if root else ("no mesh root yet (ConfigMap istio-ca-root-cert in "
                                             f"{self.istio.namespace}, written by istiod)")
            except Exception as e:  # the API server away: try again
                root, problem = None, f"reading the mesh root: {e}"
            if root:
                auth = MeshIdentities(self.istio.service_accounts)
                self.measure_port = await self.stack.start_measure_port(
                    host, self.istio.measure_port, ServerTls(chain, key, client_ca=root), auth)
                self.measure_problem = None
                log.info("measurements from Istio gateways on %s:%d (mutual TLS, the mesh's root; "
                         "certificates of %s)", host, self.measure_port,
                         ", ".join(self.istio.service_accounts))
                return
            if problem != self.measure_problem:
                log.warning("the Istio gateways' measure port waits: %s", problem)
            self.measure_problem = problem
            await asyncio.sleep(2.0)

    async def _root_cert_loop(self) -> None:
        """Keep the CA's certificate in each gateway namespace (it may be made after msm starts)."""
        assert self.xds_security is not None
        while True:
            try:
                problems = await self.xds_security.publish_root(self._ca_cert)
            except Exception as e:  # the API server away: try again
                problems = [str(e)]
            if problems != self.root_cert_problems:
                for p in problems:
                    log.warning("publishing the xDS root certificate: %s", p)
            self.root_cert_problems = problems
            await asyncio.sleep(5.0 if problems else 60.0)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.elector is not None:
            await self.elector.stop()  # steps down first, then releases the Lease
        else:
            await self._step_down()
        await self.health.stop()
        if self.stats is not None:
            await self.stats.stop()
        await self.pods.stop()
        await self.source.stop()
        await self.activator.stop()
        await self.stack.stop()
        await self.health.close()

    # -- roles -----------------------------------------------------------------------------------
    @property
    def leading(self) -> bool:
        return self.controller is not None

    async def _lead(self) -> None:
        """Place, load and write from now on: a fresh engine adopts what every runtime holds."""
        async with self._role_lock:
            if self.controller is not None:
                return
            assert self.activator.rest_port is not None and self.activator.grpc_port is not None
            self.engine = Engine(MonotonicClock(), self.engine_config)
            controller = Controller(
                self.engine, self.stack, {},
                ActivatorEndpoint(self.advertise_address, self.activator.rest_port, self.activator.grpc_port),
                inventory_interval=self.inventory_interval,
                measure=(MeasureEndpoint(self._measure_address, self.stack.xds_port)
                         if self.stack.xds_port else None),
                rollout_store=self.rollout_store, registry=self.stack.registry,
                recheck=self.health.recheck)
            await controller.load_rollouts()  # the last leader's rollouts carry on
            state = self.source.state
            controller.set_desired(state.desired_models(), state.errors, state.rollouts())
            controller.set_traffic(state.traffic)
            self.controller = controller
            self.stack.xds.on_measurements = controller.record_measurements
            await self.health.readopt()  # every instance up again, with what it holds now
            self.workloads.forget()
            self.status_writer.forget_all()
            await controller.start()
            self.stack.serve_view = True
            self._leading_gauge.set(1)
            self._leaderships.inc()
            self._leader_tasks = [asyncio.create_task(self._workloads_loop(), name="runtime-workloads"),
                                  asyncio.create_task(self._status_loop(), name="isvc-status")]
            if self.istio is not None:  # every replica serves the gateways; the leader publishes the root
                self._leader_tasks.append(asyncio.create_task(self._root_cert_loop(), name="xds-root-cert"))
            log.info("%s leads: %d runtime instances adopted", self.identity, self.health.up_count)

    async def _step_down(self) -> None:
        """Stop placing and writing (nothing is unloaded); serve the new leader's routes."""
        async with self._role_lock:
            for t in self._leader_tasks:
                t.cancel()
            await asyncio.gather(*self._leader_tasks, return_exceptions=True)
            self._leader_tasks = []
            self.stack.serve_view = False
            self.stack.followers.clear()
            self._leading_gauge.set(0)
            if self.controller is not None:
                await self.controller.stop()
                self.controller.unregister_metrics()
                log.info("%s no longer leads", self.identity)
            self.controller = None
            self.stack.xds.on_measurements = None
            self.engine = None
            self.followed = None

    async def _follow_loop(self) -> None:
        """While another replica leads: serve its routes, as it publishes them."""
        assert self.elector is not None
        problem: str | None = None
        async with aiohttp.ClientSession() as session:
            while True:
                await asyncio.sleep(self.follow_interval)
                url = self.elector.leader_admin
                if self.leading or not url or self.elector.leader in (None, self.identity):
                    continue
                timeout = aiohttp.ClientTimeout(total=2)
                # what this replica's gateways hold, told to the leader: it replays a cold request
                # only once every gateway routes to the copy it loaded
                held = self.followed if self.followed and self.stack.all_clients_hold_current() else ""
                query = {"replica": self.identity, "held": held or "",
                         "gateways": str(len(self.stack.xds.clients()))}
                try:
                    async with session.get(f"{url}/v1/mesh-view", params=query, timeout=timeout) as r:
                        if r.status != 200:
                            raise ValueError(f"HTTP {r.status}")
                        data = await r.json()
                    version = str(data.get("version"))
                    view = None if version == self.followed else view_from_dict(data.get("view"))
                except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError) as e:
                    why = f"cannot read the leader's routes at {url}: {e}; serving the last ones"
                    if why != problem:
                        log.warning("%s", why)
                    problem = why
                    continue
                problem = None
                if view is not None and not self.leading:
                    await self.stack.publish(view)
                    self.followed = version

    # -- inputs ----------------------------------------------------------------------------------
    async def _on_desired(self, state: DesiredState) -> None:
        if self.controller is not None:
            self.controller.set_desired(state.desired_models(), state.errors, state.rollouts())
            self.controller.set_traffic(state.traffic)
        self._desired_changed.set()

    def _on_pods(self, _instances: Mapping[str, PodInstance]) -> None:
        self._pods_changed.set()

    async def _sync_pods(self) -> None:
        """Instances follow the ready runtime pods: new ones are checked, gone ones leave."""
        want = self.pods.instances
        for iid, tracked in list(self.health.instances.items()):
            inst = want.get(iid)
            info = tracked.info
            where = (info.address, info.rest_port, info.grpc_port, tracked.client.address)
            if inst is None or where != (inst.info.address, inst.info.rest_port, inst.info.grpc_port,
                                         inst.spi_address):
                await self.health.remove(iid)
        for iid, inst in want.items():
            if iid not in self.health.instances:
                self.health.add(inst.info, RuntimeClient(inst.spi_address, load_timeout=inst.load_timeout_s))

    async def _pods_loop(self) -> None:
        while True:
            await self._pods_changed.wait()
            self._pods_changed.clear()
            await self._sync_pods()

    def _on_instance_up(self, info: InstanceInfo, rc: RuntimeClient, held: Mapping[str, int]) -> None:
        if self.controller is not None:  # a follower places nothing: it adopts all when it leads
            self.controller.add_instance(info, rc, held)

    def _on_instance_down(self, instance_id: str) -> None:
        if self.controller is not None:
            self.controller.remove_instance(instance_id)

    def _on_requests(self, revision: str, count: int) -> None:
        if self.engine is None or self.controller is None:
            return
        model = self.engine.model_of(revision)
        if model is not None:
            self.controller.record_requests(model, count)

    async def _ensure_ready(self, model: str, timeout: float, revision: str | None = None,
                            failed_over: bool = False) -> str | DirectCopy | None:
        if self.controller is None:  # the gateway has an old view: the leader's activator loads
            leader = self.elector.leader if self.elector is not None else None
            return f"this control-plane replica does not lead (the leader is {leader})"
        return await self.controller.ensure_ready(model, timeout, revision, failed_over)

    # -- writers ---------------------------------------------------------------------------------
    def runtime_objects(self) -> dict[tuple[str, str], dict[str, Any]]:
        out = {}
        for kind in ("ServingRuntime", "ClusterServingRuntime"):
            for obj in self.source.objects_of(kind):
                meta = obj.get("metadata") or {}
                out[(meta.get("namespace") or "", meta.get("name") or "")] = obj
        return out

    async def _workloads_loop(self) -> None:
        while True:
            state = self.source.state
            objects = desired_workloads(state.models, state.runtimes, self.runtime_objects(),
                                        adapter_image=self.adapter_image, replicas=self.runtime_replicas)
            try:
                await self.workloads.apply(objects)
            except Exception:  # the API server away: the next change or round tries again
                log.exception("applying runtime workloads failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._desired_changed.wait(), 2.0 if self.workloads.errors else 30.0)
            self._desired_changed.clear()

    def isvc_statuses(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(namespace, name, status) of every InferenceService, as of now."""
        state = self.source.state
        now = datetime.datetime.now(datetime.UTC)
        out: list[tuple[str, str, dict[str, Any]]] = []
        if self.engine is None:
            return out
        routed = self.stack.routed_models()
        rollouts = self.controller.rollouts.status(time.monotonic()) if self.controller is not None else {}
        for obj in self.source.objects_of("InferenceService"):
            meta = obj.get("metadata") or {}
            ns, name = meta.get("namespace") or "", meta.get("name") or ""
            problem = (state.errors.get(model_key(ns, name))
                       or state.errors.get(f"InferenceService {ns}/{name}"))
            m = state.models.get(name)
            model = (self.engine.model_status(name) if m is not None and m.namespace == ns and name in routed
                     else None)  # Pending until every gateway has its route
            rollout = rollouts.get(name) if model is not None else None
            out.append((ns, name, isvc_status(name, generation=meta.get("generation"), model=model,
                                              problem=problem, gateway=self.gateway, now=now,
                                              rollout=rollout)))
        return out

    def virtual_service_statuses(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(namespace, name, status) of every VirtualService bound to the model gateway."""
        state = self.source.state
        now = datetime.datetime.now(datetime.UTC)
        held: dict[str, list[str]] = {}
        for host, policy in state.traffic.items():
            held.setdefault(policy.source, []).append(host)
        out: list[tuple[str, str, dict[str, Any]]] = []
        for obj in self.source.virtual_services():
            meta = obj.get("metadata") or {}
            ns, name = meta.get("namespace") or "", meta.get("name") or ""
            key = f"VirtualService {ns}/{name}"
            problem = state.errors.get(key)
            in_use = f"{ns}/{name}" in state.virtual_services  # this version, or its previous one
            if problem is None and not in_use:
                continue  # not resolved yet (just made or changed): nothing true to say about it
            others = list(((obj.get("status") or {}).get("conditions")) or [])
            out.append((ns, name, virtual_service_status(
                generation=meta.get("generation"), hosts=held.get(key, []), problem=problem, in_use=in_use,
                others=[c for c in others if isinstance(c, dict)], now=now)))
        return out

    async def _status_loop(self) -> None:
        while True:
            for ns, name, st in self.isvc_statuses():
                try:
                    await self.status_writer.write(ns, name, st)
                except Exception as e:  # one object's write failing must not stop the others
                    log.warning("writing the status of InferenceService %s/%s failed: %s", ns, name, e)
            for ns, name, st in self.virtual_service_statuses():
                try:
                    await self.status_writer.write(ns, name, st, VIRTUAL_SERVICES)
                except Exception as e:
                    log.warning("writing the status of VirtualService %s/%s failed: %s", ns, name, e)
            await asyncio.sleep(self.status_interval)

    # -- status ----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        st: dict[str, Any] = (self.controller.status() if self.controller is not None
                              else {"models": {}, "instances": {}})
        self.health.annotate(st["instances"])
        st["role"] = "leader" if self.leading else "follower"
        if self.elector is not None:
            st["leader"] = {"identity": self.elector.leader, "admin": self.elector.leader_admin,
                            "this": self.identity, "leaderships_won": self.elector.transitions,
                            "following_version": self.followed}
        st["gateway"] = self.stack.gateway_status(self.activator)
        if self.istio is not None:
            st["istio"] = {"secure_xds_port": self.secure_xds_port, "measure_port": self.measure_port,
                           "measure_problem": self.measure_problem,
                           "service_accounts": list(self.istio.service_accounts),
                           "root_cert_problems": list(self.root_cert_problems)}
        st["kubernetes"] = {"workload_errors": dict(self.workloads.errors),
                            "pod_problems": dict(self.pods.problems),
                            "status_writes": self.status_writer.writes}
        return st


def api_client(kubeconfig: str | None) -> client.ApiClient:
    """From ``--kubeconfig``, else $KUBECONFIG, else the pod's ServiceAccount (in-cluster)."""
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path:
        return config.new_client_from_config(path)
    config.load_incluster_config()
    return client.ApiClient()


def run_kube_control_plane(args: argparse.Namespace, options: GatewayOptions) -> int:
    try:
        api = api_client(args.kubeconfig)
        token = read_gateway_token(args.gateway_token_file)
    except (OSError, ValueError, config.ConfigException) as e:
        log.error("%s", e)
        return 1
    istio = None
    if args.istio_gateway:
        try:
            for sa in args.istio_gateway:
                service_account(sa)
        except ValueError as e:
            log.error("--istio-gateway: %s", e)
            api.close()
            return 2
        istio = IstioGateways(
            tuple(args.istio_gateway), args.lease_namespace,
            replace(options, listen_address="0.0.0.0", rest_port=args.istio_rest_port,
                    grpc_port=args.istio_grpc_port,
                    upstream_tls=None if args.istio_upstream_tls == "off" else UpstreamTls(
                        trust_domain=args.istio_trust_domain, auto=args.istio_upstream_tls == "auto")),
            secure_port=args.istio_xds_port, measure_port=args.istio_measure_port)
    try:
        cp = KubeControlPlane(
            api, options, gateway=Gateway(args.gateway_host, options.rest_port, options.grpc_port),
            adapter_image=args.adapter_image, gateway_token=token, envoy_admin_url=args.envoy_admin_url,
            runtime_replicas=args.runtime_replicas, advertise_address=args.advertise_address,
            gateway_address=args.gateway_address,
            lease_namespace=args.lease_namespace if args.leader_elect else None, identity=args.identity,
            lease_s=args.lease_duration, renew_deadline_s=args.renew_deadline, retry_s=args.retry_period,
            istio=istio, model_gateway=args.model_gateway, state_namespace=args.lease_namespace)
    except ValueError as e:
        log.error("%s", e)
        api.close()
        return 2

    async def start() -> None:
        await cp.start(args.xds_host, args.xds_port, args.admin_host, args.admin_port)

    async def stop() -> None:
        with contextlib.suppress(Exception):
            await cp.stop()
        api.close()

    return asyncio.run(run_until_signalled(start, stop))
