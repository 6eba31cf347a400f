"""Fixtures for the local-mesh end-to-end tests: trained sample models and ``msm up`` meshes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mesh_harness import LocalMeshProcess, local_config, runtime_yaml

from placement.local.samples import ensure_sample_models

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pvc")
    ensure_sample_models(d, with_xgboost=False)
    return d


MakeMesh = Callable[..., LocalMeshProcess]


@pytest.fixture
def make_mesh(tmp_path: Path, models_dir: Path) -> Iterator[MakeMesh]:
    """``make_mesh(files, replicas=2, runtime=runtime_yaml(), placement={...})``: write the manifests and run
    ``msm up`` on them; every mesh started is stopped (and checked for leftovers) at teardown."""
    started: list[LocalMeshProcess] = []

    def make(files: dict[str, str], replicas: int = 2, runtime: str | None = None,
             placement: dict[str, float] | None = None) -> LocalMeshProcess:
        manifests = tmp_path / "manifests"
        manifests.mkdir()
        (manifests / "runtime.yaml").write_text(runtime or runtime_yaml())
        settings = "".join(f"  {k}: {v}\n" for k, v in (placement or {}).items())
        (manifests / "msm-local.yaml").write_text(
            local_config(models_dir, replicas) + (f"placement:\n{settings}" if settings else ""))
        for name, text in files.items():
            (manifests / name).write_text(text)
        mesh = LocalMeshProcess(manifests, tmp_path / "state")
        started.append(mesh)
        return mesh.start()

    yield make
    for mesh in started:
        mesh.stop()
