"""The snapshot cache: what the gateway should have now, and who to wake when it changes.

One snapshot serves every gateway (they all route the same mesh). Each publication gets a
sequence number, so "has this client caught up with version V" has an answer even when a later
snapshot happens to have the same content as an earlier one.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable

from xds_server.snapshot import Snapshot

_HISTORY = 256


class SnapshotCache:
    def __init__(self) -> None:
        self._current: Snapshot | None = None
        self._seq = 0
        self._seq_of_version: OrderedDict[str, int] = OrderedDict()
        self._watchers: set[asyncio.Event] = set()
        self._listeners: list[Callable[[Snapshot], None]] = []

    @property
    def current(self) -> Snapshot | None:
        return self._current

    @property
    def seq(self) -> int:
        """Sequence number of the current snapshot (0 before the first publication)."""
        return self._seq

    def publish(self, snapshot: Snapshot) -> int:
        """Make ``snapshot`` current and wake every stream; returns its sequence number."""
        if self._current is not None and snapshot.version == self._current.version:
            return self._seq
        self._seq += 1
        self._current = snapshot
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
