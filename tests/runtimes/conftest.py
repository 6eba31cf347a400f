"""One real MLServer + msm adapter (a RuntimeReplica) for the whole session, and the sample models."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from placement.local.runtime_process import RuntimeReplica
from placement.local.samples import ensure_sample_models

CAPACITY = 64 * 1024 * 1024


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pvc")
    ensure_sample_models(d, with_xgboost=False)
    return d


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def replica(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RuntimeReplica]:
    r = RuntimeReplica("mlserver-test-0", tmp_path_factory.mktemp("replica"), capacity_bytes=CAPACITY,
                       model_loading_timeout_ms=30_000, start_timeout=120)
    try:
        await r.start()
        yield r
    finally:
        await r.stop()
