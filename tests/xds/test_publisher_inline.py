"""Where the publisher builds a snapshot: on the event loop when the last build was a cheap patch,
in a worker thread otherwise (a large view must not stall the loop)."""

from __future__ import annotations

import asyncio

import pytest

from xds_server import publisher as publisher_mod
from xds_server.cache import SnapshotCache
from xds_server.mesh_view import Copy, MeshView, Model, Revision
from xds_server.publisher import SnapshotPublisher
from xds_server.translate import GatewayOptions

COPY = Copy("rt-0", "10.0.0.1", 8080, 8081)


def _view(n: int) -> MeshView:
    return MeshView.of([Model(f"m{i}", (Revision(f"m{i}__isvc-1", "mlserver", (COPY,)),))
                        for i in range(n)])


@pytest.fixture
def threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the functions the publisher handed to a worker thread."""
    handed: list[str] = []
    real = asyncio.to_thread

    async def counting(fn, *args, **kwargs):
        handed.append(fn.__name__)
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(publisher_mod.asyncio, "to_thread", counting)
    return handed


async def test_a_cheap_patch_is_built_on_the_loop_and_a_costly_one_in_a_thread(threads, monkeypatch):
    monkeypatch.setattr(publisher_mod, "INLINE_BUILD_S", 1.0)  # every build is cheap (no timing here)
    cache = SnapshotCache()
    pub = SnapshotPublisher(cache, GatewayOptions())
    v1 = await pub.publish(_view(2))
    assert threads == ["_build"]  # the first build has no measure yet: a thread
    v2 = await pub.publish(_view(3))
    assert threads == ["_build"]  # a patch after a cheap build: on the loop
    assert v2 != v1 and cache.seq_of(v2) is not None and pub.version == v2

    monkeypatch.setattr(publisher_mod, "INLINE_BUILD_S", 0.0)  # every build is costly now
    v3 = await pub.publish(_view(4))
    assert threads == ["_build", "_build"]
    assert v3 != v2 and pub.version == v3


async def test_a_failed_build_starts_over_in_a_thread(threads, monkeypatch):
    monkeypatch.setattr(publisher_mod, "INLINE_BUILD_S", 1.0)
    pub = SnapshotPublisher(SnapshotCache(), GatewayOptions())
    await pub.publish(_view(2))
    await pub.publish(_view(3))
    assert threads == ["_build"]
    builder = pub._builders[next(iter(pub._builders))]

    def broken(view):
        raise RuntimeError("translation bug")

    monkeypatch.setattr(builder._translator, "changes", broken)
    with pytest.raises(RuntimeError):
        await pub.publish(_view(4))
    assert threads == ["_build"]  # the failing patch ran on the loop
    await pub.publish(_view(5))  # the fresh translator builds in full: in a thread
    assert threads == ["_build", "_build"]


async def test_a_caller_with_work_waiting_has_even_a_cheap_build_made_in_a_thread(threads, monkeypatch):
    monkeypatch.setattr(publisher_mod, "INLINE_BUILD_S", 1.0)
    pub = SnapshotPublisher(SnapshotCache(), GatewayOptions())
    await pub.publish(_view(2))
    await pub.publish(_view(3))
    assert threads == ["_build"]
    await pub.publish(_view(4), yield_loop=True)
    assert threads == ["_build", "_build"]
    await pub.publish(_view(5))
    assert threads == ["_build", "_build"]
