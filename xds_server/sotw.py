"""State-of-the-world ADS (``StreamAggregatedResources``).

Every response for a type carries all the resources of that type the client subscribes to, so an
ACK replaces what the client holds, and a resource left out of a response is gone. A request whose
``response_nonce`` is not the latest one sent for its type answers an older response and is
ignored, subscription included: the client sends a fresh request once it sees the newer response.
"""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2

from xds_server import resource_types as rt
from xds_server.snapshot import Resource, Snapshot
from xds_server.stream import Stream, TypeState, Want


class SotwStream(Stream):
    variant = "sotw"
    full_state_responses = True

    def on_request(self, req: discovery_pb2.DiscoveryRequest) -> None:
        self._set_node(req.node if req.HasField("node") else None)
        if not req.type_url:
            return
        ts = self.state(req.type_url)
        if req.response_nonce:
            if req.response_nonce != ts.last_nonce:
                self.metrics.stale.labels(rt.short(ts.type_url)).inc()
                return
            self._resolve(ts, req.response_nonce, req.error_detail if req.HasField("error_detail") else None)
        first = not ts.requested
        ts.requested = True
        names = set(req.resource_names)
        if "*" in names:
            names.discard("*")
            wildcard = True
        else:
            # legacy wildcard: an empty first request, for as long as the list stays empty
            wildcard = not names and (first or (ts.wildcard and not ts.explicit))
        if names:
            ts.explicit = True
        if wildcard != ts.wildcard or names != ts.names:
            ts.invalidate()
            ts.wildcard, ts.names = wildcard, names
            if not wildcard:
                ts.forget({n for n in ts.known if n not in names})
            ts.nacked_seq = -1
        self.wake()

    def _differs(self, ts: TypeState, want: Want, candidates: frozenset[str] | None) -> bool:
        if not ts.answered:
            return ts.wildcard or bool(want)
        if candidates is not None:
            for n in candidates:
                r = want.get(n)
                if (r.version if r is not None else None) != ts.known.get(n):
                    return True
            return False
        if len(want) != len(ts.known) or any(n in want for n in ts.force):
            return True
        known = ts.known
        return any(r is not None and known.get(n) != r.version for n, r in want.items())

    def _encode(self, ts: TypeState, want: Want, snap: Snapshot, nonce: str,
                candidates: frozenset[str] | None) -> tuple[bytes, dict[str, Resource], frozenset[str]]:
        sent = {n: r for n, r in want.items() if r is not None}
        if want is snap.get(ts.type_url):
            body = snap.sotw_body(ts.type_url)
        else:
            body = b"".join(r.sotw_entry for r in sent.values())
        head = discovery_pb2.DiscoveryResponse(version_info=snap.version, type_url=ts.type_url, nonce=nonce)
        return head.SerializeToString() + body, sent, frozenset()
