"""From a mesh view to a published snapshot: translate, build, publish — off the event loop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Histogram

from xds_server.cache import SnapshotCache
from xds_server.gateway_kind import DEFAULT_KIND
from xds_server.mesh_view import MeshView
from xds_server.snapshot import Snapshot
from xds_server.translate import GatewayOptions
from xds_server.translate.incremental import IncrementalTranslator

log = logging.getLogger("msm.publisher")

#: A build whose previous one took at most this long runs on the event loop. Handing it to a
#: thread and back cost 0.3-0.5 ms more than the patch itself (about 1 ms for one model) on a busy
#: 2-core machine, in the Ray benchmark's traced runs, and a cold request waits for the publication.
INLINE_BUILD_S = 0.002


class SnapshotPublisher:
    """Publishes a new snapshot whenever the mesh view changes.

    Translation and serialisation of a large view take tens to hundreds of milliseconds, so they
    run in a worker thread, unless the last build of every kind was a patch cheaper than
    ``INLINE_BUILD_S``: then the next patch (of a small mesh, or of a few models) runs on the loop.
    Publications are serialised so versions never go backwards.

    ``kinds`` adds gateway kinds beside the default one (``gateway_kind.py``), each with its own
    options: every view is translated once per kind, and the snapshots are published together.
    """

    def __init__(self, cache: SnapshotCache, options: GatewayOptions,
                 registry: CollectorRegistry | None = None,
                 kinds: Mapping[str, GatewayOptions] | None = None) -> None:
        self._cache = cache
        self._options = options
        self._lock = asyncio.Lock()
        self._last_view: MeshView | None = None
        self._builders = {DEFAULT_KIND: _Builder(options)}
        self._builders.update({k: _Builder(o) for k, o in (kinds or {}).items() if k != DEFAULT_KIND})
        self.version: str | None = None
        self._translate_seconds = Histogram(
            "msm_snapshot_build_seconds", "Time to translate a mesh view and build its snapshot",
            registry=registry if registry is not None else CollectorRegistry(),
        )

    @property
    def options(self) -> GatewayOptions:
        return self._options

    async def set_kind_options(self, kind: str, options: GatewayOptions) -> None:
        """New options for a gateway kind (say, what only the running control plane knows, such as
        its CA); the next publication translates the whole view for it again."""
        async with self._lock:
            self._builders[kind] = _Builder(options)
            self._last_view = None

    async def publish(self, view: MeshView, yield_loop: bool = False) -> str:
        """Publish ``view``; returns the snapshot version now current (unchanged views are skipped).

        ``yield_loop``: the caller has work waiting on the event loop (a controller's loads just
        started), so the build goes to the worker thread however cheap it is."""
        async with self._lock:
            if self._last_view is not None and view == self._last_view and self.version is not None:
                return self.version
            started = time.perf_counter()
            if not yield_loop and all(b.cheap for b in self._builders.values()):
                built = self._build(view)
            else:
                built = await asyncio.to_thread(self._build, view)
            elapsed = time.perf_counter() - started
            self._translate_seconds.observe(elapsed)
            snapshot = built.pop(DEFAULT_KIND)
            self._cache.publish(snapshot, built)
            self._last_view = view
            self.version = snapshot.version
            log.info("published snapshot %s: %d models in %.1f ms",
                     snapshot.version, len(view.models), elapsed * 1000)
            return snapshot.version

    def _build(self, view: MeshView) -> dict[str, Snapshot]:
        # runs in a worker thread; publications are serialised by the lock, so no race on the caches
        return {kind: builder.build(view) for kind, builder in self._builders.items()}


class _Builder:
    """One gateway kind's translator and its last snapshot (patched when the view allows)."""

    def __init__(self, options: GatewayOptions) -> None:
        self._options = options
        self._translator = IncrementalTranslator(options)
        self._previous: Snapshot | None = None
        self._took = float("inf")  # the last build's seconds

    @property
    def cheap(self) -> bool:
        """The next build patches the last snapshot, and the last build was cheap."""
        return (self._previous is not None and self._translator.incremental
                and self._took <= INLINE_BUILD_S)

    def build(self, view: MeshView) -> Snapshot:
        started = time.perf_counter()
        try:
            if self._previous is None or not self._translator.incremental:
                snapshot = Snapshot.build(self._translator.translate(view), previous=self._previous)
            else:
                snapshot = Snapshot.patch(self._previous, self._translator.changes(view))
        except Exception:
            # the translator may be half-way through a change: start over with a full build
            self._translator = IncrementalTranslator(self._options)
            self._previous = None
            raise
        self._previous = snapshot
        self._took = time.perf_counter() - started
        return snapshot
