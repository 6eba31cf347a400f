"""Runtime workloads as ModelMesh runs them: a Deployment and a Service per ServingRuntime in use.

:func:`runtime_workloads` is pure: from a ServingRuntime (the API object and what msm resolved of
it), the PVCs its models need and a replica count, to the two objects. The pod runs the
runtime's own containers plus msm's adapter sidecar (``builtInAdapter.serverType: mlserver``),
sharing MLServer's model repository on an ``emptyDir``; each PVC a model needs is mounted
read-only at ``/pvc_mounts/<name>`` in both (the adapter turns ``pvc://<name>/<path>`` into that
path and refuses anything that leaves it). Owner references make the ServingRuntime's deletion
remove both. A runtime no model uses is scaled to zero, as ModelMesh's ``scaleToZero`` does.

MLServer listens on all addresses (``MLSERVER_HOST=0.0.0.0``, where ModelMesh keeps it on
127.0.0.1): the gateway sends inference straight to the pod, there is no mesh container.

:class:`WorkloadApplier` applies them (server-side apply, field manager ``msm``), only when an
object changed since it last applied it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from placement.manifests.desired_state import ResolvedModel, RuntimeSpec, runtime_pool
from placement.manifests.kube_names import (
    ADAPTER_CONTAINER,
    ADAPTER_PORT,
    ANNOTATION_INSTANCE,
    FIELD_MANAGER,
    LABEL_APP_NAME,
    LABEL_MANAGED_BY,
    LABEL_MODELMESH_SERVICE,
    LABEL_RUNTIME,
    MODELMESH_SERVICE,
    MODELS_MOUNT,
    MODELS_VOLUME,
    PVC_MOUNT_ROOT,
    runtime_deployment_name,
    runtime_service_name,
)
from placement.manifests.validation import GROUP

log = logging.getLogger("msm.kube.workloads")

DEFAULT_CAPACITY_BYTES = 1 << 30
MLSERVER_DEFAULT_HTTP, MLSERVER_DEFAULT_GRPC, MLSERVER_DEFAULT_METRICS = 8080, 8081, 8082
#: Environment msm sets on the MLServer container whatever the ServingRuntime says.
MLSERVER_OWNED_ENV = {"MLSERVER_HOST": "0.0.0.0", "MLSERVER_LOAD_MODELS_AT_STARTUP": "false",
                      "MLSERVER_MODELS_DIR": f"{MODELS_MOUNT}/_mlserver_models/"}


def pvcs_of(models: Iterable[ResolvedModel]) -> list[str]:
    """The PVC names models read from (``storage.parameters`` type pvc, or ``pvc://`` URIs)."""
    names = set()
    for m in models:
        if m.storage_path.startswith("pvc://"):
            names.add(m.storage_path[len("pvc://"):].split("/", 1)[0])
        elif m.storage_parameters.get("type") == "pvc" and m.storage_parameters.get("name"):
            names.add(m.storage_parameters["name"])
    return sorted(n for n in names if n)


def _capacity(rt: RuntimeSpec) -> int:
    if rt.capacity_bytes is not None:
        return rt.capacity_bytes
    if rt.memory_request_bytes is not None:
        return max(0, rt.memory_request_bytes - (rt.mem_buffer_bytes or 0))
    return DEFAULT_CAPACITY_BYTES


def _data_ports(rt: RuntimeSpec) -> tuple[int, int]:
    """MLServer's (REST, gRPC) ports: its env, else the ServingRuntime's endpoints, else MLServer's."""
    env = dict(rt.env)
    rest = int(env.get("MLSERVER_HTTP_PORT") or rt.http_data_port or MLSERVER_DEFAULT_HTTP)
    grpc = int(env.get("MLSERVER_GRPC_PORT") or rt.grpc_data_port or MLSERVER_DEFAULT_GRPC)
    return rest, grpc


def _metrics_port(rt: RuntimeSpec) -> int:
    """MLServer's Prometheus port: its env, else MLServer's default."""
    return int(dict(rt.env).get("MLSERVER_METRICS_PORT") or MLSERVER_DEFAULT_METRICS)


def _server_container(containers: list[dict[str, Any]], server_type: str | None) -> int:
    for i, c in enumerate(containers):
        if server_type and c.get("name") == server_type:
            return i
    return 0


def runtime_workloads(sr: Mapping[str, Any], rt: RuntimeSpec, *, namespace: str, replicas: int,
                      pvcs: Iterable[str], adapter_image: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Deployment and the Service of runtime ``rt`` (API object ``sr``) in ``namespace``."""
    name = runtime_deployment_name(rt.name)
    meta = sr.get("metadata") or {}
    rest, grpc = _data_ports(rt)
    selector = {LABEL_RUNTIME: rt.name, LABEL_MODELMESH_SERVICE: MODELMESH_SERVICE}
    labels = {**selector, LABEL_APP_NAME: name, LABEL_MANAGED_BY: FIELD_MANAGER}
    owner = [{"apiVersion": f"{GROUP}/v1alpha1", "kind": rt.kind, "name": rt.name, "uid": meta.get("uid"),
              "controller": True, "blockOwnerDeletion": False}] if meta.get("uid") else []
    pvcs = sorted(set(pvcs))
    mounts = [{"name": MODELS_VOLUME, "mountPath": MODELS_MOUNT}] + [
        {"name": f"pvc-{p}", "mountPath": f"{PVC_MOUNT_ROOT}/{p}", "readOnly": True} for p in pvcs]
    volumes = [{"name": MODELS_VOLUME, "emptyDir": {}}] + [
        {"name": f"pvc-{p}", "persistentVolumeClaim": {"claimName": p, "readOnly": True}} for p in pvcs]

    containers = [json.loads(json.dumps(c)) for c in (sr.get("spec") or {}).get("containers") or ()]
    server = containers[_server_container(containers, rt.server_type)] if containers else None
    if server is not None:
        env = [e for e in server.get("env") or () if e.get("name") not in MLSERVER_OWNED_ENV]
        server["env"] = env + [{"name": k, "value": v} for k, v in MLSERVER_OWNED_ENV.items()]
        server["ports"] = [{"name": "http", "containerPort": rest}, {"name": "grpc", "containerPort": grpc}]
        server["volumeMounts"] = [*server.get("volumeMounts", ()), *mounts]
        server.setdefault("readinessProbe", {"httpGet": {"path": "/v2/health/ready", "port": rest},
                                             "periodSeconds": 2, "failureThreshold": 3})
    capacity = _capacity(rt)
    adapter = {
        "name": ADAPTER_CONTAINER, "image": adapter_image, "imagePullPolicy": "IfNotPresent",
        "command": ["msm", "adapter"],
        "args": ["--host", "0.0.0.0", "--port", str(ADAPTER_PORT),
                 "--mlserver-rest-url", f"http://127.0.0.1:{rest}",
                 "--mlserver-grpc-address", f"127.0.0.1:{grpc}",
                 "--models-dir", MLSERVER_OWNED_ENV["MLSERVER_MODELS_DIR"].rstrip("/"),
                 "--capacity-bytes", str(capacity),
                 "--mem-buffer-bytes", str(rt.mem_buffer_bytes or 0),
                 "--model-loading-timeout-ms", str(rt.load_timeout_ms),
                 "--max-loading-concurrency", str(rt.max_loading_concurrency or 1),
                 "--pvc-mount-root", PVC_MOUNT_ROOT,
                 *(["--mlserver-metrics-url", f"http://127.0.0.1:{_metrics_port(rt)}/metrics",
                    "--measure-model-size"] if rt.measure_model_size else [])],
        "ports": [{"name": "grpc-spi", "containerPort": ADAPTER_PORT}],
        "readinessProbe": {"tcpSocket": {"port": ADAPTER_PORT}, "periodSeconds": 2},
        "volumeMounts": mounts,
        "resources": {"requests": {"cpu": "50m", "memory": "96Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "runAsUser": 1000,
                            "capabilities": {"drop": ["ALL"]}},
    }
    facts = {"restPort": rest, "grpcPort": grpc, "adapterPort": ADAPTER_PORT, "capacityBytes": capacity,
             "memBufferBytes": rt.mem_buffer_bytes or 0, "loadTimeoutMs": rt.load_timeout_ms,
             "maxLoadingConcurrency": rt.max_loading_concurrency or 1}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "ownerReferences": owner},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            # a new pod first, then an old one goes: copies move, the runtime never has fewer pods
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": labels,
                             "annotations": {ANNOTATION_INSTANCE: json.dumps(facts, sort_keys=True)}},
                "spec": {"containers": [*containers, adapter], "volumes": volumes,
                         "automountServiceAccountToken": False, "terminationGracePeriodSeconds": 30},
            },
        },
    }
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": runtime_service_name(rt.name), "namespace": namespace, "labels": labels,
                     "ownerReferences": owner},
        "spec": {"clusterIP": "None", "selector": selector, "ports": [
            {"name": "http", "port": rest, "targetPort": rest},
            {"name": "grpc", "port": grpc, "targetPort": grpc, "appProtocol": "grpc"},
            {"name": "grpc-spi", "port": ADAPTER_PORT, "targetPort": ADAPTER_PORT, "appProtocol": "grpc"}]},
    }
    return deployment, service


def desired_workloads(state_models: Mapping[str, ResolvedModel], runtimes: Mapping[str, RuntimeSpec],
                      runtime_objects: Mapping[tuple[str, str], Mapping[str, Any]], *, adapter_image: str,
                      replicas: int | None = None) -> list[dict[str, Any]]:
    """Every runtime workload object: a Deployment and a Service per ServingRuntime, and per
    namespace with models for a ClusterServingRuntime (``runtime_objects`` by (namespace, name),
    namespace "" for cluster-scoped). Models name their runtime pool ``<namespace>/<runtime>``."""
    by_pool: dict[str, list[ResolvedModel]] = {}
    for m in state_models.values():
        by_pool.setdefault(m.runtime, []).append(m)
    namespaced = {(rt.namespace, rt.name) for rt in runtimes.values() if rt.namespace}
    out: list[dict[str, Any]] = []
    for rt in sorted(runtimes.values(), key=lambda r: (r.namespace or "", r.name)):
        if rt.server_type != "mlserver":
            continue  # only MLServer has msm's adapter today
        obj = runtime_objects.get((rt.namespace or "", rt.name))
        if obj is None:
            continue
        if rt.namespace:
            namespaces = [rt.namespace]
        else:  # a cluster runtime runs where its models are, unless a namespace has its own of that name
            namespaces = sorted({m.namespace for pool, ms in by_pool.items() for m in ms
                                 if pool == runtime_pool(m.namespace, rt.name)
                                 and (m.namespace, rt.name) not in namespaced})
        for ns in namespaces:
            mine = by_pool.get(runtime_pool(ns, rt.name), [])
            count = (replicas if replicas is not None else rt.replicas) if mine else 0
            out.extend(runtime_workloads(obj, rt, namespace=ns, replicas=count, pvcs=pvcs_of(mine),
                                         adapter_image=adapter_image))
    return out


def _digest(obj: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


class WorkloadApplier:
    """Server-side applies runtime workload objects; skips those unchanged since the last apply."""

    def __init__(self, api: client.ApiClient) -> None:
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self._applied: dict[tuple[str, str, str], str] = {}
        self.applies = 0
        self.errors: dict[str, str] = {}

    async def apply(self, objects: Iterable[dict[str, Any]]) -> None:
        for obj in objects:
            key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
            digest = _digest(obj)
            if self._applied.get(key) == digest:
                continue
            where = f"{key[0]} {key[1]}/{key[2]}"
            try:
                await asyncio.to_thread(self._apply_one, obj)
            except ApiException as e:
                msg = f"{e.status} {e.reason}: {(e.body or '')[:500]}"
                if self.errors.get(where) != msg:
                    log.warning("applying %s failed: %s", where, msg)
                self.errors[where] = msg
                continue
            self.errors.pop(where, None)
            self._applied[key] = digest
            self.applies += 1
            log.info("applied %s (replicas %s)", where, obj.get("spec", {}).get("replicas", "-"))

    def forget(self) -> None:
        """Apply everything again next time (a new leader does not trust what an old one did)."""
        self._applied.clear()

    def _apply_one(self, obj: dict[str, Any]) -> None:
        name, ns = obj["metadata"]["name"], obj["metadata"]["namespace"]
        kwargs = {"field_manager": FIELD_MANAGER, "force": True,
                  "_content_type": "application/apply-patch+yaml"}
        if obj["kind"] == "Deployment":
            self.apps.patch_namespaced_deployment(name, ns, obj, **kwargs)
        else:
            self.core.patch_namespaced_service(name, ns, obj, **kwargs)
