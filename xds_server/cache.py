"""The snapshot cache: what the gateway should have now, and who to wake when it changes.

Every gateway routes the same mesh, but gateways of different kinds need it said differently
(a plain Envoy gateway and an Istio ingress gateway listen and reach runtimes differently): a
publication holds one snapshot per gateway kind, all made from one mesh view (see
``gateway_kind.py``). Each publication gets one sequence number for all its kinds, so "has this
client caught up with version V" has an answer whatever its kind, and even when a later snapshot
happens to have the same content as an earlier one.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Mapping

from xds_server.gateway_kind import DEFAULT_KIND
from xds_server.snapshot import Snapshot

_HISTORY = 256


class SnapshotCache:
    def __init__(self) -> None:
        self._current: dict[str, Snapshot] = {}
        self._seq = 0
        self._seq_of_version: OrderedDict[str, int] = OrderedDict()
        self._watchers: set[asyncio.Event] = set()
        self._listeners: list[Callable[[Snapshot], None]] = []

    @property
    def current(self) -> Snapshot | None:
        """The default kind's snapshot (plain Envoy gateways); its version names the publication."""
        return self._current.get(DEFAULT_KIND)

    def current_for(self, kind: str) -> Snapshot | None:
        """The snapshot for gateways of ``kind``; the default kind's when none was made for it."""
        return self._current.get(kind) or self._current.get(DEFAULT_KIND)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self._current)

    @property
    def seq(self) -> int:
        """Sequence number of the current snapshot (0 before the first publication)."""
        return self._seq

    def publish(self, snapshot: Snapshot, others: Mapping[str, Snapshot] | None = None) -> int:
        """Make ``snapshot`` current for the default kind (and ``others`` for theirs), wake every
        stream; returns the publication's sequence number."""
        new = {DEFAULT_KIND: snapshot, **(others or {})}
        if new.keys() == self._current.keys() and all(
                s.version == self._current[k].version for k, s in new.items()):
            return self._seq
        self._seq += 1
        self._current = new
        self._seq_of_version[snapshot.version] = self._seq
        self._seq_of_version.move_to_end(snapshot.version)
        while len(self._seq_of_version) > _HISTORY:
            self._seq_of_version.popitem(last=False)
        for listener in self._listeners:
            listener(snapshot)
        for event in self._watchers:
            event.set()
        return self._seq

    def seq_of(self, version: str) -> int | None:
        """The latest sequence number published with ``version``, if it is still remembered."""
        return self._seq_of_version.get(version)

    def on_publish(self, listener: Callable[[Snapshot], None]) -> None:
        """Call ``listener`` with every snapshot published from now on."""
        self._listeners.append(listener)

    def watch(self, event: asyncio.Event) -> None:
        self._watchers.add(event)

    def unwatch(self, event: asyncio.Event) -> None:
        self._watchers.discard(event)
