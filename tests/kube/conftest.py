"""The session's real etcd + kube-apiserver (built by `make tools`), KServe CRDs installed.

Without the binaries these tests skip and say why; in CI (MSM_STRICT_SKIPS=1) that is a failure,
since `make test` builds them first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from kube_env import api_client, install_kserve_crds, require_tools

from placement.local.apiserver import ApiServer


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def apiserver(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ApiServer]:
    bin_dir = require_tools()
    server = ApiServer(tmp_path_factory.mktemp("apiserver"), bin_dir)
    await server.start()
    try:
        with api_client(server) as api:
            install_kserve_crds(api)
        yield server
    finally:
        await server.stop()
