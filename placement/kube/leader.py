"""Leader election with a ``coordination.k8s.io`` Lease, as client-go's leaderelection does it.

Every control-plane replica runs a :class:`LeaseElector`. The holder renews the Lease every
``retry_s``; the others try to take it every ``retry_s`` and succeed only once the holder has
not renewed for ``lease_s`` *as they observed it* (their own clock since the record last
changed: clocks of different nodes are never compared). Writes carry the resourceVersion read,
so two candidates never both win. A leader that cannot renew for ``renew_deadline_s`` steps down
before its Lease can expire under it; a leader that stops releases the Lease (holder emptied,
duration 1 s) so a follower takes over at once instead of after ``lease_s``.

The leader also writes where its admin port is (annotation ``serving.msm.io/leader-admin``):
followers read the routes it publishes from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

log = logging.getLogger("msm.kube.leader")

ANNOTATION_LEADER_ADMIN = "serving.msm.io/leader-admin"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    """Campaigns for Lease ``namespace/name`` as ``identity``; calls back on winning and losing."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str, identity: str, *,
                 on_started_leading: Callable[[], Awaitable[None]],
                 on_stopped_leading: Callable[[], Awaitable[None]],
                 admin_url: str = "", lease_s: float = 15.0, renew_deadline_s: float = 10.0,
                 retry_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < retry_s < renew_deadline_s < lease_s:
            raise ValueError("leader election needs 0 < retry < renew deadline < lease duration")
        self.coord = client.CoordinationV1Api(api)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.on_started_leading, self.on_stopped_leading = on_started_leading, on_stopped_leading
        self.admin_url = admin_url
        self.lease_s, self.renew_deadline_s, self.retry_s = lease_s, renew_deadline_s, retry_s
        self.clock = clock
        self.leading = False
        self.leader: str | None = None  # the holder as last read
        self.leader_admin: str | None = None  # its admin URL
        self.transitions = 0  # leaderships this replica won
        self._observed: tuple[Any, float] | None = None  # (holder, renewTime), when first seen
        self._last_renew = 0.0
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Future[bool] | None = None  # the API call of the current round

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="leader-election")

    async def stop(self) -> None:
        """Stop campaigning; a leader releases the Lease (after its own on_stopped_leading)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._inflight is not None:
            # a renewal already sent goes on in its thread: let it land, or the release below
            # would carry a stale resourceVersion and be refused, leaving the Lease to expire
            await asyncio.gather(self._inflight, return_exceptions=True)
        if self.leading:
            self.leading = False
            await self.on_stopped_leading()
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._release)

    async def _run(self) -> None:
        while True:
            try:
                self._inflight = asyncio.ensure_future(asyncio.to_thread(self._try_acquire_or_renew))
                won = await asyncio.shield(self._inflight)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the API server away: as a failed renewal
                log.warning("leader election: %s", e)
                won = False
            now = self.clock()
            if won:
                self._last_renew = now
                if not self.leading:
                    self.leading = True
                    self.transitions += 1
                    log.info("%s leads (Lease %s/%s)", self.identity, self.namespace, self.name)
                    await self.on_started_leading()
            elif self.leading and now - self._last_renew >= self.renew_deadline_s:
                self.leading = False
                log.warning("%s could not renew the Lease for %.0fs: it no longer leads", self.identity,
                            now - self._last_renew)
                await self.on_stopped_leading()
            await asyncio.sleep(self.retry_s)

    # -- API calls (thread) ----------------------------------------------------------------------
    def _spec(self, old: Any | None) -> dict[str, Any]:
        now = _now()
        same_holder = old is not None and old.holder_identity == self.identity
        transitions = (old.lease_transitions or 0) if old is not None else 0
        acquire = old.acquire_time if same_holder and old.acquire_time else now
        if isinstance(acquire, datetime.datetime):
            acquire = acquire.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.lease_s),
                "acquireTime": acquire, "renewTime": now,
                "leaseTransitions": transitions if same_holder or old is None else transitions + 1}

    def _seen(self, lease: Any) -> None:
        spec = lease.spec
        ann = (lease.metadata.annotations or {}).get(ANNOTATION_LEADER_ADMIN)
        holder = spec.holder_identity or None
        self.leader, self.leader_admin = holder, ann
        record = (spec.holder_identity, spec.renew_time, spec.lease_duration_seconds)
        if self._observed is None or self._observed[0] != record:
            self._observed = (record, self.clock())

    def _try_acquire_or_renew(self) -> bool:
        meta = {"name": self.name, "namespace": self.namespace,
                "annotations": {ANNOTATION_LEADER_ADMIN: self.admin_url}}
        try:
            lease = self.coord.read_namespaced_lease(self.name, self.namespace)
        except ApiException as e:
            if e.status != 404:
                raise
            try:
                created = self.coord.create_namespaced_lease(self.namespace, {"metadata": meta,
                                                                              "spec": self._spec(None)})
            except ApiException as e2:
                if e2.status == 409:  # another replica created it first
                    return False
                raise
            self._seen(created)
            return True
        self._seen(lease)
        spec = lease.spec
        holder = spec.holder_identity
        assert self._observed is not None
        duration = float(spec.lease_duration_seconds or self.lease_s)
        if holder and holder != self.identity and self.clock() - self._observed[1] < duration:
            return False  # held, and renewed (as we saw it) within its duration
        body = {"metadata": {**meta, "resourceVersion": lease.metadata.resource_version},
                "spec": self._spec(spec)}
        try:
            updated = self.coord.replace_namespaced_lease(self.name, self.namespace, body)
        except ApiException as e:
            if e.status == 409:  # someone else wrote it since we read it
                return False
            raise
        self._seen(updated)
        return True

    def _release(self) -> None:
        for _ in range(3):  # a write that raced ours (409) is read again
            lease = self.coord.read_namespaced_lease(self.name, self.namespace)
            if lease.spec.holder_identity != self.identity:
                return
            body = {"metadata": {"name": self.name, "namespace": self.namespace,
                                 "resourceVersion": lease.metadata.resource_version},
                    "spec": {"holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": _now(),
                             "leaseTransitions": lease.spec.lease_transitions or 0}}
            try:
                self.coord.replace_namespaced_lease(self.name, self.namespace, body)
            except ApiException as e:
                if e.status == 409:
                    continue
                raise
            log.info("%s released the Lease", self.identity)
            return
