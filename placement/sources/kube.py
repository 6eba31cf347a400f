"""Desired state from the Kubernetes API: InferenceService, ServingRuntime, ClusterServingRuntime,
and Istio VirtualServices bound to msm's model gateway.

Each kind is listed once, then watched from the list's resourceVersion with bookmarks, so the
watch resumes where it stopped (a watch ends every ``watch_timeout_s`` and starts again from the
last version seen). When the API server has compacted that version away it answers 410 Gone;
the kind is then listed again and its objects replaced whole, so no event is missed or applied
twice. The official ``kubernetes`` client is synchronous: each watch runs in a thread of its own
and hands events to the event loop, where all state lives.

Objects become :class:`placement.manifests.kserve.Document` s (source ``Kind namespace/name``,
``created`` their creationTimestamp, so the oldest claim on a model name keeps it, also across
control-plane restarts) and are resolved as files are, storage staying a URI (``pvc://`` is a
volume mounted into the runtime pods).

VirtualServices are msm's when their ``gateways`` name msm's model gateway (``--model-gateway``,
Istio's rule: a name without a namespace is the VirtualService's own); the others belong to other
gateways and are left alone, unread. Istio's CRDs may not be installed: then VirtualServices are
not watched, the log says so, and the API is asked again every ``crd_poll_s`` until they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from placement.manifests.desired_state import DesiredState
from placement.manifests.kserve import Document, resolve
from placement.manifests.validation import GROUP
from placement.manifests.virtualservice import GROUP as ISTIO_GROUP

log = logging.getLogger("msm.sources.kube")

OnChange = Callable[[DesiredState], Awaitable[None]]


@dataclass(frozen=True)
class Kind:
    kind: str
    version: str
    plural: str
    namespaced: bool
    group: str = GROUP


KINDS = (
    Kind("InferenceService", "v1beta1", "inferenceservices", True),
    Kind("ServingRuntime", "v1alpha1", "servingruntimes", True),
    Kind("ClusterServingRuntime", "v1alpha1", "clusterservingruntimes", False),
)
VIRTUAL_SERVICE = Kind("VirtualService", "v1", "virtualservices", True, ISTIO_GROUP)
#: msm's model gateway as VirtualServices name it in ``gateways`` (the IstioOperator's gateway)
DEFAULT_MODEL_GATEWAY = "istio-system/msm-model-gateway"


def bound_to(obj: dict[str, Any], gateway: str) -> bool:
    """Whether a VirtualService names ``gateway`` (``namespace/name``) in its ``gateways``."""
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    ns = (obj.get("metadata") or {}).get("namespace") or ""
    names = spec.get("gateways") if isinstance(spec.get("gateways"), list) else []
    return any(isinstance(g, str) and (g if "/" in g else f"{ns}/{g}") == gateway for g in names)

Key = tuple[str, str, str]  # kind, namespace ("" for cluster-scoped), name


def _key(kind: Kind, obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return kind.kind, meta.get("namespace") or "", meta.get("name") or ""


def document_of(kind: Kind, obj: dict[str, Any]) -> Document:
    """An API object as a manifest document (``kind`` and ``apiVersion`` filled in, as a file has)."""
    body = {**obj, "kind": kind.kind, "apiVersion": f"{kind.group}/{kind.version}"}
    meta = obj.get("metadata") or {}
    where = f"{meta.get('namespace')}/{meta.get('name')}" if kind.namespaced else str(meta.get("name"))
    # what the API server adds is not the user's manifest and not in the CRD's schema of the spec
    body["metadata"] = {k: v for k, v in meta.items() if k in ("name", "namespace", "labels", "annotations")}
    body.pop("status", None)
    return Document(f"{kind.kind} {where}", 0, body, created=str(meta.get("creationTimestamp") or ""))


class ListWatch:
    """One list-then-watch loop on a thread of its own, for any list call of the ``kubernetes`` client.

    ``list_once()`` returns (items as dicts, resourceVersion); ``watch_call`` with ``watch_args``
    is what ``watch.Watch().stream`` calls. Events and re-lists are handed to the event loop with
    ``post`` (``on_event(type, obj)``, ``on_relist(items)``); a watch that ends resumes from the
    last version seen, and 410 Gone lists again.
    """

    def __init__(self, name: str, list_once: Callable[[], tuple[list[dict[str, Any]], str]],
                 watch_call: Callable[..., Any], watch_args: tuple[Any, ...], watch_kwargs: dict[str, Any],
                 post: Callable[..., None], on_event: Callable[[str, dict[str, Any]], None],
                 on_relist: Callable[[list[dict[str, Any]]], None], stop: threading.Event,
                 timeout_s: int) -> None:
        self.name = name
        self.list_once, self.watch_call = list_once, watch_call
        self.watch_args, self.watch_kwargs = watch_args, watch_kwargs
        self.post, self.on_event, self.on_relist = post, on_event, on_relist
        self.stop_event, self.timeout_s = stop, timeout_s
        self.watch = watch.Watch()
        self.thread: threading.Thread | None = None

    def start(self, version: str) -> None:
        self.thread = threading.Thread(target=self._run, args=(version,), name=f"watch-{self.name}",
                                       daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.watch.stop()

    def _run(self, version: str) -> None:
        while not self.stop_event.is_set():
            try:
                events = self.watch.stream(self.watch_call, *self.watch_args, resource_version=version,
                                           allow_watch_bookmarks=True, timeout_seconds=self.timeout_s,
                                           **self.watch_kwargs)
                for event in events:
                    # (with deserialize=False the client cannot read an ERROR event such as 410 Gone)
                    obj = event.get("raw_object") or {}
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                        self.post(self.on_event, event["type"], obj)
            except ApiException as e:
                if self.stop_event.is_set():
                    return
                if e.status != 410:
                    log.warning("watch of %s failed (%s); watching again", self.name, e.reason)
                    self.stop_event.wait(1.0)
                    continue
                log.info("watch of %s expired (410 Gone: compacted); listing again", self.name)
                try:
                    items, version = self.list_once()
                except Exception as e2:  # the API server may be away: try again
                    log.warning("listing %s failed: %s", self.name, e2)
                    self.stop_event.wait(1.0)
                    continue
                self.post(self.on_relist, items)
            except Exception as e:  # a broken connection, or stop() closing it
                if self.stop_event.is_set():
                    return
                log.warning("watch of %s broke (%s); watching again from %s", self.name, e, version)
                self.stop_event.wait(1.0)


class Informer:
    """Lists and watches: the shared part of the Kubernetes sources (threads, hand-over, stop)."""

    def __init__(self, api: client.ApiClient, watch_timeout_s: int) -> None:
        self.api = api
        self.watch_timeout_s = watch_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._watches: list[ListWatch] = []

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self._loop.call_soon_threadsafe(fn, *args)

    def _watch(self, name: str, list_once: Callable[[], tuple[list[dict[str, Any]], str]],
               watch_call: Callable[..., Any], watch_args: tuple[Any, ...], watch_kwargs: dict[str, Any],
               on_event: Callable[[str, dict[str, Any]], None],
               on_relist: Callable[[list[dict[str, Any]]], None], version: str) -> None:
        w = ListWatch(name, list_once, watch_call, watch_args, watch_kwargs, self._post, on_event, on_relist,
                      self._stop, self.watch_timeout_s)
        self._watches.append(w)
        w.start(version)

    async def _stop_watches(self) -> None:
        self._stop.set()
        for w in self._watches:
            w.stop()
        with contextlib.suppress(Exception):  # unblocks the watch threads' reads
            self.api.rest_client.pool_manager.clear()
        for w in self._watches:
            if w.thread is not None:
                await asyncio.to_thread(w.thread.join, 10)


class KubeSource(Informer):
    """Lists and watches the KServe kinds and VirtualServices; calls ``on_change`` with each new
    desired state."""

    def __init__(self, api: client.ApiClient, on_change: OnChange | None = None, *,
                 watch_timeout_s: int = 60, model_gateway: str = DEFAULT_MODEL_GATEWAY,
                 crd_poll_s: float = 30.0) -> None:
        super().__init__(api, watch_timeout_s)
        self.model_gateway = model_gateway
        self.crd_poll_s = crd_poll_s
        self.virtual_services_watched = False
        self._crd_wait: asyncio.Task[None] | None = None
        self.custom = client.CustomObjectsApi(api)
        self.on_change = on_change
        self.objects: dict[Key, dict[str, Any]] = {}
        self.state = DesiredState()
        self.relists: dict[str, int] = {k.kind: 0 for k in (*KINDS, VIRTUAL_SERVICE)}  # 410 Gone recoveries
        self._changed = asyncio.Event()
        self._deliver: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> DesiredState:
        """List every kind, deliver the first state, then watch."""
        self._loop = asyncio.get_running_loop()
        versions = {}
        for kind in KINDS:
            items, versions[kind.kind] = await asyncio.to_thread(self._list, kind)
            self._replace(kind, items)
        vs_version = await self._list_virtual_services()
        await self._resolve_and_deliver()
        for kind in KINDS:
            self._watch_kind(kind, versions[kind.kind])
        if vs_version is not None:
            self._watch_kind(VIRTUAL_SERVICE, vs_version)
        else:
            self._crd_wait = asyncio.create_task(self._wait_for_virtual_services(), name="kube-source-crd")
        self._deliver = asyncio.create_task(self._deliver_loop(), name="kube-source")
        return self.state

    def _watch_kind(self, kind: Kind, version: str) -> None:
        self._watch(kind.plural, lambda: self._list(kind), self.custom.list_cluster_custom_object,
                    (kind.group, kind.version, kind.plural), {},
                    lambda event, obj: self._apply(kind, event, obj),
                    lambda items: self._relisted(kind, items), version)

    async def _list_virtual_services(self) -> str | None:
        """List VirtualServices: their resourceVersion, or None when the API does not serve them."""
        try:
            items, version = await asyncio.to_thread(self._list, VIRTUAL_SERVICE)
        except ApiException as e:
            if e.status not in (403, 404):
                raise
            why = ("Istio's CRDs are not installed" if e.status == 404
                   else "msm's ServiceAccount may not list them (deploy/base/rbac.yaml)")
            if not self._crd_wait:
                log.info("VirtualServices are not watched: %s/%s %s (%s); asking again every %.0fs",
                         ISTIO_GROUP, VIRTUAL_SERVICE.version, VIRTUAL_SERVICE.plural, why, self.crd_poll_s)
            return None
        self._replace(VIRTUAL_SERVICE, items)
        self.virtual_services_watched = True
        log.info("watching VirtualServices bound to gateway %s", self.model_gateway)
        return version

    async def _wait_for_virtual_services(self) -> None:
        while True:
            await asyncio.sleep(self.crd_poll_s)
            try:
                version = await self._list_virtual_services()
            except Exception as e:  # the API server may be away: ask again later
                log.debug("listing VirtualServices failed: %s", e)
                continue
            if version is not None:
                self._watch_kind(VIRTUAL_SERVICE, version)
                self._changed.set()
                return

    async def stop(self) -> None:
        if self._crd_wait is not None:
            self._crd_wait.cancel()
            await asyncio.gather(self._crd_wait, return_exceptions=True)
        await self._stop_watches()
        if self._deliver is not None:
            self._deliver.cancel()
            await asyncio.gather(self._deliver, return_exceptions=True)

    def objects_of(self, kind: str) -> list[dict[str, Any]]:
        """The API objects of ``kind`` as last seen (for status and runtime workloads)."""
        return [obj for key, obj in sorted(self.objects.items()) if key[0] == kind]

    def virtual_services(self) -> list[dict[str, Any]]:
        """The VirtualServices bound to msm's model gateway, as last seen (msm writes their status)."""
        return [obj for obj in self.objects_of(VIRTUAL_SERVICE.kind) if bound_to(obj, self.model_gateway)]

    # -- API calls (threads) --------------------------------------------------------------------
    def _list(self, kind: Kind) -> tuple[list[dict[str, Any]], str]:
        r = self.custom.list_cluster_custom_object(kind.group, kind.version, kind.plural)
        return list(r.get("items") or []), r["metadata"]["resourceVersion"]

    # -- state (event loop) ---------------------------------------------------------------------
    def _apply(self, kind: Kind, event: str, obj: dict[str, Any]) -> None:
        key = _key(kind, obj)
        if event == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        self._changed.set()

    def _relisted(self, kind: Kind, items: list[dict[str, Any]]) -> None:
        self.relists[kind.kind] += 1
        self._replace(kind, items)
        self._changed.set()

    def _replace(self, kind: Kind, items: list[dict[str, Any]]) -> None:
        for key in [k for k in self.objects if k[0] == kind.kind]:
            del self.objects[key]
        for obj in items:
            self.objects[_key(kind, obj)] = obj

    async def _deliver_loop(self) -> None:
        while True:
            await self._changed.wait()
            await asyncio.sleep(0.05)  # a burst of events (an apply of many objects) resolves once
            self._changed.clear()
            try:
                await self._resolve_and_deliver()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("resolving the desired state failed")

    async def _resolve_and_deliver(self) -> None:
        kinds = {k.kind: k for k in (*KINDS, VIRTUAL_SERVICE)}
        documents = [document_of(kinds[key[0]], obj) for key, obj in sorted(self.objects.items())
                     if key[0] != VIRTUAL_SERVICE.kind or bound_to(obj, self.model_gateway)]
        new = await asyncio.to_thread(partial(resolve, documents, None, self.state.models,
                                              namespaced_runtimes=True,
                                              traffic_incumbents=self.state.virtual_services))
        if new == self.state:
            return
        self.state = new
        if self.on_change is not None:
            await self.on_change(new)

