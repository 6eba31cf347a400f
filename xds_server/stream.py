"""What one ADS stream knows about its client, and what to send it next.

Both protocol variants share this state machine; ``sotw.py`` and ``delta.py`` only decide how a
request updates the subscription and how a response is encoded.

Semantics kept here:

- At most one response per type is outstanding. The client's ACK (same nonce, no error) moves
  what it is known to hold; a NACK leaves the last good state in place, and the rejected content
  is not offered again until a newer snapshot (or a change of subscription) gives a reason to.
- Make before break. Routing types (listeners, scoped routes, route tables) move to a snapshot
  only once every cluster of that snapshot is acknowledged at its version, with its endpoints
  acknowledged or in flight (responses arrive in order); until the client acknowledges those
  routes, clusters it may still route to are kept (and their endpoints too). Only then are
  clusters the new snapshot dropped removed.
- A cluster that changes is re-created by Envoy and stays warming until its endpoints arrive
  again, so the endpoints of every changed cluster are resent even when they did not change.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from xds_server import resource_types as rt
from xds_server.cache import SnapshotCache
from xds_server.gateway_kind import DEFAULT_KIND, kind_of
from xds_server.metrics import XdsMetrics
from xds_server.snapshot import Resource, Snapshot

log = logging.getLogger("msm.xds")

#: resources a client should have: a Resource to send, or None for "keep what it holds".
Want = Mapping[str, Resource | None]


#: A client's error text is kept (and logged) up to this many characters: any client can send
#: megabytes in every NACK.
MAX_ERROR_CHARS = 2000


def _cut(text: str) -> str:
    if len(text) <= MAX_ERROR_CHARS:
        return text
    return f"{text[:MAX_ERROR_CHARS]}… ({len(text):,} characters in all)"


@dataclass
class Pending:
    nonce: str
    seq: int
    version: str
    sent: dict[str, Resource]
    removed: frozenset[str]
    snap: Snapshot | None = None  # set when the response makes the client hold exactly this snapshot
    epoch: int = 0
    resubscribed: bool = False  # the subscription changed while this response was in flight

    def apply_to(self, known: dict[str, str], held: dict[str, Resource]) -> None:
        """Into ``known`` and ``held``: what a client holds once it has applied this response
        (what it sent replaces, what it removed goes)."""
        for n, r in self.sent.items():
            known[n] = r.version
            held[n] = r
        for n in self.removed:
            known.pop(n, None)
            held.pop(n, None)


class _Named(Mapping[str, Resource | None]):
    """A named subscription's view of a snapshot mapping, built in O(1)."""

    __slots__ = ("_names", "_src")

    def __init__(self, names: set[str], src: Mapping[str, Resource | None]) -> None:
        self._names, self._src = names, src

    def __getitem__(self, name: str) -> Resource | None:
        if name in self._names:
            return self._src[name]
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return name in self._names and name in self._src

    def __iter__(self) -> Iterator[str]:
        return (n for n in list(self._names) if n in self._src)

    def __len__(self) -> int:
        return sum(1 for n in self._names if n in self._src)


@dataclass
class TypeState:
    """One type URL on one stream: subscription, what the client holds, what is in flight."""

    type_url: str
    requested: bool = False
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    explicit: bool = False  # has named resources at least once (ends legacy wildcard)
    answered: bool = False
    known: dict[str, str] = field(default_factory=dict)  # name → version the client holds
    held: dict[str, Resource] = field(default_factory=dict)  # the resources behind ``known``
    pending: Pending | None = None
    last_nonce: str = ""
    acked_version: str = ""
    nacked_seq: int = -1
    last_error: str | None = None
    nack_count: int = 0
    force: set[str] = field(default_factory=set)  # names to resend even if unchanged
    synced_seq: int = 0
    # The client holds exactly this snapshot's resources (for its subscription): the next
    # snapshot is compared on the names changed since, not in full. Dropped on any change of
    # what the client holds or asks for (``invalidate``); ``epoch`` counts those changes.
    synced_snap: Snapshot | None = None
    epoch: int = 0

    def subscribed(self, name: str) -> bool:
        return self.wildcard or name in self.names

    def invalidate(self) -> None:
        self.synced_snap = None
        self.epoch += 1

    def forget(self, names: set[str] | frozenset[str]) -> None:
        if names:
            self.invalidate()
        for n in names:
            self.known.pop(n, None)
            self.held.pop(n, None)
            self.force.discard(n)

    def accept(self, p: Pending, full_state: bool) -> None:
        """The client ACKed ``p``: it now holds what was sent (all it holds, with ``full_state``)."""
        if full_state:
            self.known, self.held = {}, {}
        p.apply_to(self.known, self.held)
        self.acked_version = p.version
        self.synced_snap = p.snap if p.snap is not None and p.epoch == self.epoch else None


class Stream:
    """Base of one ADS stream; a subclass handles one protocol variant."""

    variant = ""
    full_state_responses = False  # SotW: each response carries the whole subscription

    _ids = itertools.count(1)

    def __init__(self, cache: SnapshotCache, metrics: XdsMetrics, peer: str,
                 on_progress: Callable[[], None]) -> None:
        self.id = next(self._ids)
        self.cache = cache
        self.metrics = metrics
        self.peer = peer
        self.node_id = ""
        self.cluster = ""
        self.kind = DEFAULT_KIND  # which of a publication's snapshots it gets (gateway_kind.py)
        self.connected_at = time.time()
        self.authenticated = ""  # what the client proved (the server sets it); "" when nothing was asked
        self.types: dict[str, TypeState] = {}
        self.target: Snapshot | None = None
        self.target_seq = 0
        self.route_snapshot: Snapshot | None = None
        self.route_seq = 0
        self._route_candidates: list[tuple[int, Snapshot]] = []
        # endpoints name -> (cluster, endpoints) as sent with each cluster (see want())
        self._cluster_endpoints: dict[str, tuple[str, Resource]] = {}
        self._nonces = itertools.count(1)
        self._wake = asyncio.Event()
        self._closed = False
        self._on_progress = on_progress

    # -- requests ---------------------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    def state(self, type_url: str) -> TypeState:
        ts = self.types.get(type_url)
        if ts is None:
            ts = self.types[type_url] = TypeState(type_url)
        return ts

    def _set_node(self, node: Any) -> None:
        if not self.node_id and node is not None and node.id:
            self.node_id = node.id[:256]  # a claim, shown in status and logs: bounded
            self.cluster = node.cluster[:256]
            kind = kind_of(node)
            if kind != self.kind:  # nothing was sent yet: follow this kind's snapshots from the start
                self.kind = kind
                self.target, self.target_seq, self._route_candidates = None, 0, []
                self.route_snapshot, self.route_seq = None, 0
            log.info("%s stream %d from %s (%s, %s)", self.variant, self.id, self.node_id, self.kind,
                     self.peer)

    def _resolve(self, ts: TypeState, nonce: str, error: Any | None) -> bool:
        """Match an ACK/NACK to the response in flight; False when the nonce is stale."""
        p = ts.pending
        if p is None or nonce != p.nonce:
            return False
        ts.pending = None
        label = rt.short(ts.type_url)
        if error is not None and (error.code or error.message):
            if not p.resubscribed:  # else what the client asked for since was never offered
                ts.nacked_seq = p.seq
            ts.last_error = _cut(error.message)
            ts.nack_count += 1
            self.metrics.nacks.labels(label).inc()
            log.warning("%s rejected %s version %s (nonce %s): %s; it keeps %s", self.node_id or self.peer,
                        label, p.version, nonce, ts.last_error, ts.acked_version or "nothing")
        else:
            ts.accept(p, self.full_state_responses)
            log.debug("%s ACK %s %s nonce %s", self.node_id or self.peer, label, p.version, nonce)
            ts.last_error = None
            self.metrics.acks.labels(label).inc()
        return True

    # -- the send loop ------------------------------------------------------------------------
    async def responses(self) -> AsyncIterator[bytes]:
        """Responses to write, in order, until the client goes away."""
        self.cache.watch(self._wake)
        try:
            while not self._closed:
                self._follow_cache()
                out = self._next_response()
                if out is not None:
                    yield out
                    continue
                self._update_synced()
                await self._wake.wait()
                self._wake.clear()
        finally:
            self.cache.unwatch(self._wake)

    def _follow_cache(self) -> None:
        snap = self.cache.current_for(self.kind)
        if snap is None or self.cache.seq == self.target_seq:
            return
        self.target, self.target_seq = snap, self.cache.seq
        self._route_candidates.append((self.target_seq, snap))
        if len(self._route_candidates) > 8:
            del self._route_candidates[0]

    def _pick_route_snapshot(self) -> None:
        """Move routing to the newest snapshot whose clusters the client has warm."""
        for seq, snap in reversed(self._route_candidates):
            if seq <= self.route_seq:
                break
            if self._warm(snap):
                self.route_snapshot, self.route_seq = snap, seq
                self._route_candidates = [(s, c) for s, c in self._route_candidates if s > seq]
                return

    def _warm(self, snap: Snapshot) -> bool:
        cds, eds = self.types.get(rt.CLUSTER), self.types.get(rt.ENDPOINT)
        if cds is not None and cds.requested:
            if cds.pending is not None:
                return False
            if any(cds.known.get(n) != r.version for n, r in snap.get(rt.CLUSTER).items()):
                return False
        if eds is not None and eds.requested:
            endpoints = snap.get(rt.ENDPOINT)
            if any(n in endpoints for n in eds.force):
                return False
            known, held_now = self._held_after_in_flight(eds)
            # a client holding the clusters needs all their endpoints; one without CDS, what it asked
            required = (snap.cluster_endpoint_names.values() if cds is not None and cds.requested
                        else (n for n in endpoints if eds.subscribed(n)))
            for n in required:
                r = endpoints.get(n)
                if r is None:
                    continue
                held = held_now.get(n)
                if known.get(n) != r.version and (
                        held is None or known.get(n) != held.version or r.version not in held.covers):
                    return False
        return True

    def _held_after_in_flight(self, ts: TypeState) -> tuple[Mapping[str, str], Mapping[str, Resource]]:
        """What the client holds of ``ts``'s type once it has applied the response in flight.

        One ADS stream delivers responses in order, and Envoy applies each before it reads the next
        (the xDS protocol's ordering rule asks that endpoints *arrive* before the routes that use
        them, not that they be ACKed). So routes may follow endpoints in flight: a cold model's
        first copy costs one round trip to the gateway, not two. Clusters still wait for their ACK
        (a new cluster warms, and asks for its endpoints, only once it is applied). Should the
        client reject those endpoints, its routes may name hosts it lacks until the next snapshot;
        a rejected assignment is a translation bug, and is logged as such.
        """
        p = ts.pending
        if p is None:
            return ts.known, ts.held
        known, held = ({}, {}) if self.full_state_responses else (dict(ts.known), dict(ts.held))
        p.apply_to(known, held)  # as accept() will, on copies
        return known, held

    def _prunable(self) -> bool:
        """True when the client routes by the target snapshot, so older clusters can go."""
        if self.route_seq != self.target_seq:
            return False
        for t, ts in self.types.items():
            if t in rt.ROUTING and ts.requested and not self._in_sync_with(ts, self.target):
                return False
        return True

    @staticmethod
    def _restrict(ts: TypeState, src: Mapping[str, Resource | None]) -> Want:
        return src if ts.wildcard else _Named(ts.names, src)

    @staticmethod
    def _candidates(ts: TypeState, snap: Snapshot) -> frozenset[str] | None:
        """Names that may differ between what the client holds and ``snap``; None if unknown."""
        if ts.synced_snap is None or ts.force:
            return None
        if ts.synced_snap is snap:
            return frozenset()
        return snap.changes_since(ts.synced_snap, ts.type_url)

    def _in_sync_with(self, ts: TypeState, snap: Snapshot) -> bool:
        """The client holds exactly ``snap``'s resources of this type, with nothing in flight."""
        if ts.pending is not None or self._blocked(ts):
            return False
        if self._differs(ts, self._restrict(ts, snap.get(ts.type_url)), self._candidates(ts, snap)):
            return False
        ts.synced_snap = snap
        return True

    def want(self, ts: TypeState) -> tuple[Snapshot, Want, bool] | None:
        """What the client should hold of this type now, from which snapshot, and whether that is
        the snapshot's content exactly; None to hold it where it is."""
        t = ts.type_url
        assert self.target is not None
        if t in rt.ROUTING:
            if self.route_snapshot is None:
                return None
            return self.route_snapshot, self._restrict(ts, self.route_snapshot.get(t)), True
        src: Mapping[str, Resource | None] = self.target.get(t)
        if t in (rt.CLUSTER, rt.ENDPOINT) and not self._prunable():
            # make before break: keep what older routes may still select
            kept: dict[str, Resource | None] = {n: ts.held.get(n) for n in ts.known if n not in src}
            if t == rt.ENDPOINT:
                target = self.target
                for n, held in ts.held.items():
                    if n in src and ts.known.get(n) == held.version:
                        kept[n] = target.endpoints_union(n, held)
                # a cluster the client holds but whose endpoints it never got (a newer snapshot
                # dropped it before the client asked): without them it stays warming until
                # Envoy's initial-fetch timeout (15 s); they come from the snapshot it came from
                # held, or on its way: a cluster in a CDS response in flight is held once applied
                cds = self.types.get(rt.CLUSTER)
                held_clusters = self._held_after_in_flight(cds)[0] if cds is not None else {}
                for n, (cluster, res) in list(self._cluster_endpoints.items()):
                    if cluster not in held_clusters:
                        del self._cluster_endpoints[n]
                    elif n not in src and n not in kept:
                        kept[n] = res
            if kept:
                return self.target, self._restrict(ts, {**src, **kept}), False
        return self.target, self._restrict(ts, src), True

    def _blocked(self, ts: TypeState) -> bool:
        seq = self.route_seq if ts.type_url in rt.ROUTING else self.target_seq
        return ts.nacked_seq >= seq

    def _next_response(self) -> bytes | None:
        if self.target is None:
            return None
        if self.route_seq < self.target_seq:
            self._pick_route_snapshot()
        for t in sorted(self.types, key=rt.order_key):
            ts = self.types[t]
            if not ts.requested or ts.pending is not None or self._blocked(ts):
                continue
            plan = self.want(ts)
            if plan is None:
                continue
            snap, want, pure = plan
            candidates = self._candidates(ts, snap) if pure else None
            if not self._differs(ts, want, candidates):
                if pure:
                    ts.synced_snap = snap
                continue
            seq = self.route_seq if t in rt.ROUTING else self.target_seq
            nonce = str(next(self._nonces))
            body, sent, removed = self._encode(ts, want, snap, nonce, candidates)
            if t == rt.CLUSTER:
                self._resend_endpoints_of_changed(ts, sent)
                self._remember_endpoints(snap, sent)
            elif t == rt.ENDPOINT:
                ts.force.difference_update(sent)
            ts.pending = Pending(nonce, seq, snap.version, sent, removed, snap if pure else None, ts.epoch)
            ts.last_nonce = nonce
            ts.answered = True
            label = rt.short(t)
            log.debug("%s <- %s %s nonce %s: %d resources, %d removed, %d bytes", self.node_id or self.peer,
                      label, snap.version, nonce, len(sent), len(removed), len(body))
            self.metrics.responses.labels(label, self.variant).inc()
            self.metrics.response_bytes.labels(label, self.variant).inc(len(body))
            self.metrics.resources_sent.labels(label, self.variant).inc(len(sent))
            return body
        return None

    def _remember_endpoints(self, snap: Snapshot, sent: Mapping[str, Resource]) -> None:
        """The endpoints each cluster sent comes with, in the snapshot it was sent from."""
        endpoints, eds_names = snap.get(rt.ENDPOINT), snap.cluster_endpoint_names
        for cluster in sent:
            n = eds_names.get(cluster)
            if n is not None and n in endpoints:
                self._cluster_endpoints[n] = (cluster, endpoints[n])

    def _resend_endpoints_of_changed(self, cds: TypeState, sent: Mapping[str, Resource]) -> None:
        eds = self.types.get(rt.ENDPOINT)
        if eds is None or self.target is None:
            return
        eds_names = self.target.cluster_endpoint_names
        for name, res in sent.items():
            before = cds.known.get(name)
            if before is not None and before != res.version and name in eds_names:
                if eds.subscribed(eds_names[name]):
                    eds.force.add(eds_names[name])
                    eds.invalidate()

    def _update_synced(self) -> None:
        if self.target is None:
            return
        moved = False
        for ts in self.types.values():
            if ts.requested and ts.synced_seq < self.target_seq and self._in_sync_with(ts, self.target):
                ts.synced_seq = self.target_seq
                moved = True
        if moved:
            self._on_progress()

    # -- variant hooks ------------------------------------------------------------------------
    def _differs(self, ts: TypeState, want: Want, candidates: frozenset[str] | None) -> bool:
        """Whether the client must be sent something to hold ``want``.

        With ``candidates``, the client holds what ``want`` holds outside those names.
        """
        raise NotImplementedError

    def _encode(self, ts: TypeState, want: Want, snap: Snapshot, nonce: str,
                candidates: frozenset[str] | None) -> tuple[bytes, dict[str, Resource], frozenset[str]]:
        raise NotImplementedError

    # -- introspection ------------------------------------------------------------------------
    def synced(self, seq: int, type_urls: list[str] | None = None) -> bool:
        types = type_urls if type_urls is not None else [t for t, s in self.types.items() if s.requested]
        for t in types:
            ts = self.types.get(t)
            if ts is not None and ts.requested and ts.synced_seq < seq:
                return False
        return True

    def describe(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id, "cluster": self.cluster, "variant": self.variant, "kind": self.kind,
            "peer": self.peer, "authenticated": self.authenticated, "connected_at": self.connected_at,
            "types": {
                rt.short(t): {
                    "acked_version": ts.acked_version, "resources": len(ts.known),
                    "subscription": "*" if ts.wildcard else len(ts.names),
                    "pending": ts.pending.nonce if ts.pending else None,
                    "nacks": ts.nack_count, "last_error": ts.last_error,
                }
                for t, ts in sorted(self.types.items(), key=lambda kv: rt.order_key(kv[0]))
            },
        }

    def __repr__(self) -> str:
        return f"<{self.variant} stream {self.id} node={self.node_id!r} peer={self.peer}>"
