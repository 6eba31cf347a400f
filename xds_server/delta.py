"""Incremental ADS (``DeltaAggregatedResources``).

A response carries only the resources that changed for this client and the names it must drop
(``removed_resources``). Subscriptions are deltas of their own, so a request with an outdated
nonce still changes the subscription; only its ACK/NACK part is ignored. A subscription change lifts
a NACK's hold, even when the NACKed response was still in flight as the change arrived: what the
client asked for meanwhile is sent, not held until the next snapshot. A client that reconnects
lists what it holds in ``initial_resource_versions`` and gets only what differs.
"""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2

from xds_server import resource_types as rt
from xds_server.snapshot import Resource, Snapshot
from xds_server.stream import Stream, TypeState, Want


class DeltaStream(Stream):
    variant = "delta"
    full_state_responses = False

    def on_request(self, req: discovery_pb2.DeltaDiscoveryRequest) -> None:
        self._set_node(req.node if req.HasField("node") else None)
        if not req.type_url:
            return
        ts = self.state(req.type_url)
        if req.response_nonce and not self._resolve(
                ts, req.response_nonce, req.error_detail if req.HasField("error_detail") else None):
            self.metrics.stale.labels(rt.short(ts.type_url)).inc()
        first = not ts.requested
        ts.requested = True
        sub = set(req.resource_names_subscribe)
        unsub = set(req.resource_names_unsubscribe)
        if first or sub or unsub:
            ts.invalidate()
        if first:
            ts.known = dict(req.initial_resource_versions)
            # what it holds and the current snapshot has too: needed to keep old hosts while routes move
            snap = self.cache.current_for(self.kind)
            current = snap.get(ts.type_url) if snap is not None else {}
            ts.held = {n: r for n, r in current.items() if ts.known.get(n) == r.version}
            ts.wildcard = not sub  # legacy wildcard: an empty first subscription
        if "*" in sub:
            ts.wildcard = True
            sub.discard("*")
        if "*" in unsub:
            ts.wildcard = False
            unsub.discard("*")
        if not first:
            # a name asked for again is sent again, even if the client had it before
            ts.forget({n for n in sub if n not in ts.names})
        ts.names |= sub
        ts.names -= unsub
        if not ts.wildcard:
            ts.forget(unsub)
        if sub or unsub:
            ts.nacked_seq = -1
            if ts.pending is not None:  # a NACK of it must not hold back what was asked for since
                ts.pending.resubscribed = True
        self.wake()

    def _differs(self, ts: TypeState, want: Want, candidates: frozenset[str] | None) -> bool:
        if not ts.answered and ts.wildcard:
            return True
        known, force = ts.known, ts.force
        if candidates is not None:
            for n in candidates:
                r = want.get(n)
                if r is not None:
                    if known.get(n) != r.version or n in force:
                        return True
                elif n in known and ts.subscribed(n):
                    return True
            return False
        if any(r is not None and (known.get(n) != r.version or n in force) for n, r in want.items()):
            return True
        return any(n not in want and ts.subscribed(n) for n in known)

    def _encode(self, ts: TypeState, want: Want, snap: Snapshot, nonce: str,
                candidates: frozenset[str] | None) -> tuple[bytes, dict[str, Resource], frozenset[str]]:
        known, force = ts.known, ts.force
        if candidates is not None:
            sent = {}
            for n in candidates:
                r = want.get(n)
                if r is not None and (known.get(n) != r.version or n in force):
                    sent[n] = r
            removed = frozenset(n for n in candidates if n not in want and n in known and ts.subscribed(n))
        else:
            sent = {n: r for n, r in want.items()
                    if r is not None and (known.get(n) != r.version or n in force)}
            removed = frozenset(n for n in known if n not in want and ts.subscribed(n))
        head = discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=snap.version, type_url=ts.type_url, nonce=nonce,
            removed_resources=sorted(removed))
        return head.SerializeToString() + b"".join(r.delta_entry for r in sent.values()), sent, removed
