import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent))

from xds_server.cache import SnapshotCache
from xds_server.server import XdsServer


@pytest.fixture
async def xds():
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
