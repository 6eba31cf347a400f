"""Runtime instances from the Kubernetes API: the ready pods of msm's runtime Deployments.

A pod is an instance while it is Running, Ready, not being deleted and has an IP; its id is
``<pod>.<namespace>``. What placement needs beyond the address (ports, capacity, timeouts) is in
the pod's ``serving.msm.io/runtime-instance`` annotation, written by msm into the Deployment's
pod template; a pod whose annotation does not parse is left out and logged, it changes nothing
else. Pods are listed, then watched (:class:`placement.sources.kube.ListWatch`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from placement.engine.model_types import InstanceInfo
from placement.manifests.desired_state import runtime_pool
from placement.manifests.kube_names import (
    ADAPTER_PORT,
    ANNOTATION_INSTANCE,
    LABEL_ISTIO_TLS_MODE,
    LABEL_RUNTIME,
)
from placement.sources.kube import Informer

log = logging.getLogger("msm.sources.pods")


@dataclass(frozen=True)
class PodInstance:
    """A runtime pod as placement sees it."""

    info: InstanceInfo
    spi_address: str  # the adapter's mmesh.ModelRuntime endpoint, host:port
    load_timeout_s: float


def _port(facts: dict[str, Any], key: str, default: int | None = None) -> int:
    value = facts.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
        raise ValueError(f"{key} must be a port number, not {value!r}")
    return value


def _count(facts: dict[str, Any], key: str, default: int) -> int:
    value = facts.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{key} must be a whole number >= 0, not {value!r}")
    return value


def instance_of_pod(pod: dict[str, Any]) -> PodInstance | None:
    """The instance a pod is, or None while it is not one (not ready, no IP, being deleted).

    Raises ValueError when its annotation is not what msm writes.
    """
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    runtime = (meta.get("labels") or {}).get(LABEL_RUNTIME)
    if not runtime or meta.get("deletionTimestamp") or status.get("phase") != "Running":
        return None
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or ())
    ip = status.get("podIP")
    if not ready or not ip:
        return None
    ipaddress.ip_address(ip)  # ValueError if it is not an address
    raw = (meta.get("annotations") or {}).get(ANNOTATION_INSTANCE)
    if not raw:
        raise ValueError(f"no {ANNOTATION_INSTANCE} annotation")
    facts = json.loads(raw)
    if not isinstance(facts, dict):
        raise ValueError(f"{ANNOTATION_INSTANCE} is not a JSON object")
    info = InstanceInfo(
        id=f"{meta.get('name')}.{meta.get('namespace')}", runtime=runtime_pool(str(meta.get("namespace")),
                                                                               str(runtime)),
        address=ip,
        rest_port=_port(facts, "restPort"), grpc_port=_port(facts, "grpcPort"),
        capacity_bytes=_count(facts, "capacityBytes", 1 << 30),
        max_concurrent_loads=max(1, _count(facts, "maxLoadingConcurrency", 1)),
        unload_headroom_bytes=_count(facts, "memBufferBytes", 0),
        mesh_tls=(meta.get("labels") or {}).get(LABEL_ISTIO_TLS_MODE) == "istio")
    spi = f"{ip}:{_port(facts, 'adapterPort', ADAPTER_PORT)}"
    return PodInstance(info, spi, _count(facts, "loadTimeoutMs", 90_000) / 1000.0)


class RuntimePods(Informer):
    """Lists and watches runtime pods; calls ``on_change`` with every instance, by id, on a change."""

    def __init__(self, api: client.ApiClient, on_change: Callable[[dict[str, PodInstance]], None], *,
                 watch_timeout_s: int = 60) -> None:
        super().__init__(api, watch_timeout_s)
        self.core = client.CoreV1Api(api)
        self.on_change = on_change
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.instances: dict[str, PodInstance] = {}
        self.problems: dict[str, str] = {}  # pod -> why it is not an instance although it could be

    async def start(self) -> dict[str, PodInstance]:
        self._loop = asyncio.get_running_loop()
        items, version = await asyncio.to_thread(self._list)
        self._relisted(items)
        self._watch("pods", self._list, self.core.list_pod_for_all_namespaces, (),
                    {"label_selector": LABEL_RUNTIME}, self._apply, self._relisted, version)
        return self.instances

    async def stop(self) -> None:
        await self._stop_watches()

    def _list(self) -> tuple[list[dict[str, Any]], str]:
        r = self.core.list_pod_for_all_namespaces(label_selector=LABEL_RUNTIME)
        items = [self.api.sanitize_for_serialization(p) for p in r.items]
        return items, r.metadata.resource_version

    @staticmethod
    def _key(pod: dict[str, Any]) -> tuple[str, str]:
        meta = pod.get("metadata") or {}
        return meta.get("namespace") or "", meta.get("name") or ""

    def _apply(self, event: str, pod: dict[str, Any]) -> None:
        if event == "DELETED":
            self.pods.pop(self._key(pod), None)
        else:
            self.pods[self._key(pod)] = pod
        self._update()

    def _relisted(self, items: list[dict[str, Any]]) -> None:
        self.pods = {self._key(p): p for p in items}
        self._update()

    def _update(self) -> None:
        instances: dict[str, PodInstance] = {}
        problems: dict[str, str] = {}
        for (ns, name), pod in sorted(self.pods.items()):
            try:
                inst = instance_of_pod(pod)
            except (ValueError, TypeError) as e:
                problems[f"{ns}/{name}"] = str(e)
                continue
            if inst is not None:
                instances[inst.info.id] = inst
        for pod, why in problems.items():
            if self.problems.get(pod) != why:
                log.warning("runtime pod %s left out of placement: %s", pod, why)
        self.problems = problems
        if instances != self.instances:
            self.instances = instances
            self.on_change(dict(instances))
