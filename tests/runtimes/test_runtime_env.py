"""A ServingRuntime's env reaches the model server (MLServer), never msm's own adapter."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from placement.local.runtime_process import (
    RuntimeReplica,
    local_mesh_notes,
    read_instances_file,
    write_instances_file,
)
from placement.manifests.desired_state import RuntimeSpec

MANIFEST_ENV = {"PYTHONPATH": "/from/the/manifest", "LD_PRELOAD": "/from/the/manifest.so",
                "MLSERVER_PARALLEL_WORKERS": "0", "MLSERVER_HTTP_PORT": "8002", "TEAM_SETTING": "x"}


def spec(**kw) -> RuntimeSpec:
    base = dict(name="rt", namespace="ns", formats=("sklearn",), multi_model=True, server_type="mlserver",
                grpc_data_port=8001, grpc_port=8085, mem_buffer_bytes=None, load_timeout_ms=90_000,
                env={}, memory_limit_bytes=None, replicas=1)
    return RuntimeSpec(**{**base, **kw})


def test_the_adapter_gets_msm_env_and_mlserver_the_manifests(tmp_path: Path) -> None:
    r = RuntimeReplica("rt-0", tmp_path, env=MANIFEST_ENV)
    adapter, mlserver = r._msm_env(), r._mlserver_env()
    assert "/from/the/manifest" not in adapter["PYTHONPATH"]
    assert adapter.get("LD_PRELOAD") == os.environ.get("LD_PRELOAD")
    assert "TEAM_SETTING" not in adapter
    assert mlserver["PYTHONPATH"].split(os.pathsep)[0] == "/from/the/manifest"
    assert mlserver["LD_PRELOAD"] == "/from/the/manifest.so" and mlserver["TEAM_SETTING"] == "x"
    assert mlserver.get("MLSERVER_HTTP_PORT") != "8002"  # a port msm owns is not taken from a manifest


def test_the_local_mesh_names_what_it_ignores_and_what_changes_python_startup() -> None:
    assert local_mesh_notes(spec()) == []
    notes = local_mesh_notes(spec(image="seldonio/mlserver:1.7.1", command=("mlserver",), args=("start",),
                                  env={"LD_PRELOAD": "x.so", "PYTHONSTARTUP": "s.py", "TEAM": "y"}))
    assert notes == [
        "runtime rt: image, command, args of its container ignored: the local mesh runs MLServer from "
        "msm's own Python environment",
        "runtime rt: env LD_PRELOAD, PYTHONSTARTUP changes how MLServer's Python starts; it is passed to "
        "MLServer only, never to msm's adapter"]


def test_max_loading_concurrency_annotation_reaches_the_replica(tmp_path: Path) -> None:
    r = RuntimeReplica.for_runtime(spec(max_loading_concurrency=3), index=0, state_dir=tmp_path)
    assert r.max_loading_concurrency == 3
    assert r.describe()["max_loading_concurrency"] == 3


def test_mem_buffer_bytes_becomes_the_instances_unload_headroom(tmp_path: Path) -> None:
    r = RuntimeReplica.for_runtime(spec(mem_buffer_bytes=128 << 20, memory_limit_bytes=1 << 30),
                                   index=0, state_dir=tmp_path)
    assert (r.capacity_bytes, r.unload_headroom_bytes) == ((1 << 30) - (128 << 20), 128 << 20)
    path = tmp_path / "instances.json"
    write_instances_file(path, [r])
    [(info, _, _)] = read_instances_file(path)
    assert (info.capacity_bytes, info.unload_headroom_bytes) == ((1 << 30) - (128 << 20), 128 << 20)
    assert RuntimeReplica.for_runtime(spec(), index=0, state_dir=tmp_path).unload_headroom_bytes == 0


@pytest.mark.e2e
async def test_manifest_pythonpath_code_runs_in_mlserver_only(tmp_path: Path) -> None:
    """A sitecustomize.py on the manifest's PYTHONPATH records every process that imports it."""
    hooks, seen = tmp_path / "hooks", tmp_path / "seen"
    hooks.mkdir()
    seen.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "import json, os, sys\n"
        f"open(os.path.join({str(seen)!r}, str(os.getpid())), 'w').write(json.dumps(sys.argv))\n")
    r = RuntimeReplica("envtest-0", tmp_path / "replica", env={"PYTHONPATH": str(hooks)}, start_timeout=120)
    try:
        await r.start()
        argvs = [json.loads(p.read_text()) for p in seen.iterdir()]
    finally:
        await r.stop()
    assert argvs, "MLServer did not import the manifest's PYTHONPATH"
    adapter = [a for a in argvs if "--mlserver-rest-url" in a]  # only the adapter takes this flag
    assert adapter == [], f"the adapter ran the manifest's code: {adapter}"
    assert any("start" in a for a in argvs), argvs  # `mlserver start <models dir>`


def test_a_relative_pythonpath_is_relative_to_the_manifests_folder(tmp_path: Path) -> None:
    manifests = tmp_path / "examples" / "llm"
    env = {"PYTHONPATH": os.pathsep.join([".", "lib", "/abs/site"])}
    r = RuntimeReplica.for_runtime(spec(env=env), index=0, state_dir=tmp_path / "state", base_dir=manifests)
    entries = r._mlserver_env()["PYTHONPATH"].split(os.pathsep)
    assert entries[:3] == [str(manifests.resolve()), str((manifests / "lib").resolve()), "/abs/site"]
    # without a folder (a replica not started from manifests) the value is passed as written
    bare = RuntimeReplica("rt-0", tmp_path / "bare", env=env)
    assert bare._mlserver_env()["PYTHONPATH"].split(os.pathsep)[:3] == [".", "lib", "/abs/site"]


def test_a_measuring_runtime_starts_its_adapter_with_mlservers_metrics(tmp_path: Path) -> None:
    r = RuntimeReplica.for_runtime(spec(measure_model_size=True), index=0, state_dir=tmp_path)
    assert r.measure_model_size and r.describe()["measure_model_size"] is True
    assert not RuntimeReplica.for_runtime(spec(), index=0, state_dir=tmp_path).measure_model_size
