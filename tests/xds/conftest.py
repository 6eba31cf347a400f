import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent))

from xds_server.cache import SnapshotCache
from xds_server.delta import DeltaStream
from xds_server.server import XdsServer
from xds_server.sotw import SotwStream
from xds_server.stream import Stream


def _observe_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let tests see how far each stream has got (``AdsClient.settled`` waits on it).

    ``requests_read``: requests handled so far; ``client_tag``: the ``user_agent_name`` of the
    node the client sent; ``asleep``: the send loop found nothing more to send and waits to be
    woken. A pass of the loop starts with ``_follow_cache`` and, when it sends nothing, ends with
    ``_update_synced`` right before the wait, with no await in between; a request that changes
    anything wakes the loop (sets ``_wake``), and only the loop clears ``_wake``, right before its
    next pass. So once every request is read, ``asleep`` with ``_wake`` clear means the loop has
    acted on all of them.
    """
    for name, default in (("requests_read", 0), ("client_tag", ""), ("asleep", False)):
        monkeypatch.setattr(Stream, name, default, raising=False)
    for cls in (SotwStream, DeltaStream):
        def on_request(self, req, _handle=cls.on_request):
            if req.HasField("node") and not self.client_tag:
                self.client_tag = req.node.user_agent_name
            _handle(self, req)
            self.requests_read += 1

        monkeypatch.setattr(cls, "on_request", on_request)

    def follow_cache(self, _follow=Stream._follow_cache):
        self.asleep = False
        _follow(self)

    def update_synced(self, _update=Stream._update_synced):
        _update(self)
        self.asleep = True

    monkeypatch.setattr(Stream, "_follow_cache", follow_cache)
    monkeypatch.setattr(Stream, "_update_synced", update_synced)


@pytest.fixture
async def xds(monkeypatch):
    _observe_streams(monkeypatch)
    cache = SnapshotCache()
    registry = CollectorRegistry()
    server = XdsServer(cache, registry=registry)
    server.registry = registry  # for the tests' metric reads
    port = await server.start("127.0.0.1", 0)
    server.test_port = port
    try:
        yield server
    finally:
        await server.stop(0)
