"""msm's MLServer adapter against a real MLServer, through the SPI client the controller uses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
import pytest_asyncio

from placement.adapters.mlserver import LOADED_SETTINGS_FILE, AdapterConfig, serve
from placement.control.runtime_client import RuntimeCallError, RuntimeClient, RuntimeTimeout
from placement.local.ports import free_port
from placement.local.runtime_process import RuntimeReplica
from placement.local.samples import DIGIT_8, MNIST_LOGREG, MNIST_SVM
from placement.protos import model_runtime_pb2 as pb
from placement.protos import model_runtime_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

ARTICLE_BODY = {"inputs": [{"name": "predict", "shape": [1, 64], "datatype": "FP32", "data": DIGIT_8}]}


@pytest_asyncio.fixture(loop_scope="session")
async def client(replica: RuntimeReplica) -> AsyncIterator[RuntimeClient]:
    async with replica.client() as c:
        yield c


async def infer(replica: RuntimeReplica, model: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, \
            s.post(f"{replica.rest_url}/v2/models/{model}/infer", json=ARTICLE_BODY) as r:
        return r.status, await r.json(content_type=None)


async def repository_index(replica: RuntimeReplica) -> list[dict]:
    async with aiohttp.ClientSession() as s, s.post(f"{replica.rest_url}/v2/repository/index", json={}) as r:
        assert r.status == 200
        return await r.json()


async def model_ready(replica: RuntimeReplica, model: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(f"{replica.rest_url}/v2/models/{model}/ready") as r:
        return r.status


async def test_load_serve_unload(replica: RuntimeReplica, client: RuntimeClient, sample_dir: Path) -> None:
    path = sample_dir / MNIST_SVM
    size = await client.load_model("sklearn-mnist__isvc-1", "sklearn", str(path))
    assert size == int(path.stat().st_size * 1.25)  # ModelMesh's estimate: size on disk x 1.25

    status, body = await infer(replica, "sklearn-mnist__isvc-1")
    assert status == 200, body
    assert body["outputs"][0]["data"] == [8]
    # loaded: its settings are out of MLServer's repository scan, which every later load pays for
    model_dir = replica.models_dir / "sklearn-mnist__isvc-1"
    assert not (model_dir / "model-settings.json").exists()
    settings = json.loads((model_dir / LOADED_SETTINGS_FILE).read_text())
    assert settings["implementation"] == "mlserver_sklearn.SKLearnModel"
    assert settings["parameters"]["uri"] == str(path)
    assert await client.model_size("sklearn-mnist__isvc-1") == size

    await client.unload_model("sklearn-mnist__isvc-1")
    status, body = await infer(replica, "sklearn-mnist__isvc-1")
    assert status == 404, body
    assert await model_ready(replica, "sklearn-mnist__isvc-1") != 200
    assert not (replica.models_dir / "sklearn-mnist__isvc-1").exists()
    await client.unload_model("sklearn-mnist__isvc-1")  # unloading an unknown model is fine


async def test_multi_model_packing_and_inventory(replica: RuntimeReplica, client: RuntimeClient,
                                                 sample_dir: Path) -> None:
    sizes = {
        "svm__a": await client.load_model("svm__a", "sklearn", str(sample_dir / MNIST_SVM)),
        "logreg__b": await client.load_model("logreg__b", "sklearn:0", str(sample_dir / MNIST_LOGREG)),
    }
    try:
        for model in sizes:
            status, body = await infer(replica, model)
            assert (status, body["outputs"][0]["data"]) == (200, [8])
        listed = {m.model_id: m for m in await client.list_models()}
        assert {"svm__a", "logreg__b"} <= set(listed)
        assert listed["svm__a"].state == "READY"
        assert listed["svm__a"].size_bytes == sizes["svm__a"]
        assert listed["logreg__b"].model_type == "sklearn"
        assert listed["logreg__b"].model_path == str(sample_dir / MNIST_LOGREG)
        # A restarted control plane: a fresh client sees the same ready models and sizes.
        async with replica.client() as fresh:
            loaded = await fresh.loaded_models()
        assert loaded is not None and {k: loaded[k] for k in sizes} == sizes
        # MLServer's own repository index lists none of them (a load parses only its own file),
        # yet they are listed above, from MLServer's registry
        assert not {item["name"] for item in await repository_index(replica)} & set(sizes)
        # a model unloaded behind msm's back is listed as not ready, so inventory repair sees it
        async with aiohttp.ClientSession() as s, \
                s.post(f"{replica.rest_url}/v2/repository/models/svm__a/unload") as r:
            assert r.status == 200
        listed = {m.model_id: m for m in await client.list_models()}
        assert listed["svm__a"].state == "UNAVAILABLE" and listed["logreg__b"].state == "READY"
        assert "svm__a" not in (await client.loaded_models() or {})
    finally:
        for model in sizes:
            await client.unload_model(model)
    listed_after = {m.model_id for m in await client.list_models()}
    assert not listed_after & set(sizes)


async def test_missing_file_is_refused_without_a_load(replica: RuntimeReplica, client: RuntimeClient,
                                                      tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.joblib"
    with pytest.raises(RuntimeCallError) as err:
        await client.load_model("missing__1", "sklearn", str(missing))
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert str(missing) in str(err.value) and "does not exist" in str(err.value)
    assert not err.value.attempted
    assert (await client.runtime_status()).ready


async def test_corrupt_file_reports_mlserver_error_and_adapter_stays_healthy(
        replica: RuntimeReplica, client: RuntimeClient, sample_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.joblib"
    bad.write_bytes(b"garbage, not a pickle\n")
    with pytest.raises(RuntimeCallError) as err:
        await client.load_model("corrupt__1", "sklearn", str(bad))
    text = str(err.value)
    assert err.value.code == grpc.StatusCode.INTERNAL
    assert "MLServer failed to load model corrupt__1" in text
    assert "invalid literal" in text  # the unpickling error that MLServer hit
    # Nothing is left behind, and the runtime goes on serving loads.
    assert not (replica.models_dir / "corrupt__1").exists()
    assert "corrupt__1" not in {m.model_id for m in await client.list_models()}
    assert (await client.runtime_status()).ready
    await client.load_model("after-corrupt__1", "sklearn", str(sample_dir / MNIST_LOGREG))
    try:
        assert (await infer(replica, "after-corrupt__1"))[0] == 200
    finally:
        await client.unload_model("after-corrupt__1")


async def test_unknown_format_says_what_is_missing(client: RuntimeClient, sample_dir: Path) -> None:
    with pytest.raises(RuntimeCallError) as err:
        await client.load_model("weird__1", "weird-format", str(sample_dir / MNIST_SVM))
    assert "no known MLServer implementation" in str(err.value)
    assert "MLSERVER_MODEL_IMPLEMENTATION" in str(err.value)


async def test_model_id_must_not_be_a_path(client: RuntimeClient, sample_dir: Path) -> None:
    with pytest.raises(RuntimeCallError) as err:
        await client.load_model("../escape", "sklearn", str(sample_dir / MNIST_SVM))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_runtime_status(replica: RuntimeReplica, client: RuntimeClient) -> None:
    status = await client.runtime_status()
    assert status.ready and status.status == "READY"
    assert status.capacity_bytes == replica.capacity_bytes
    assert status.model_loading_timeout_ms == 30_000
    assert status.max_loading_concurrency == 1
    assert status.default_model_size_bytes > 0
    assert status.runtime_version.startswith("mlserver-1.7")
    assert status.method_infos["inference.GRPCInferenceService/ModelInfer"] == [1]
    assert not status.limit_model_concurrency


async def test_predict_model_size(client: RuntimeClient, sample_dir: Path) -> None:
    path = sample_dir / MNIST_SVM
    assert await client.predict_model_size("p__1", "sklearn", str(path)) == int(path.stat().st_size * 1.25)
    key = json.dumps({"model_type": {"name": "sklearn"}, "disk_size_bytes": 1000})
    assert await client.predict_model_size("p__2", "", str(path), key) == 1250


async def test_cancelled_load_then_unload_leaves_nothing_loaded(
        replica: RuntimeReplica, client: RuntimeClient, sample_dir: Path) -> None:
    """The SPI's rule: after a cancelled loadModel, the following unloadModel wins."""
    with pytest.raises(RuntimeTimeout):
        await client.load_model("cancelled__1", "sklearn", str(sample_dir / MNIST_SVM), timeout=0.001)
    await client.unload_model("cancelled__1")
    await asyncio.sleep(0.5)
    assert await model_ready(replica, "cancelled__1") != 200
    assert "cancelled__1" not in {m.model_id for m in await client.list_models()}


async def test_rest_only_adapter_and_adapter_restart(replica: RuntimeReplica, sample_dir: Path,
                                                     tmp_path: Path) -> None:
    """A second adapter in this process on the same MLServer and models folder, REST only: it
    adopts what the first one loaded (sizes kept on disk) and loads through REST itself."""
    async with replica.client() as first:
        size = await first.load_model("adopted__1", "sklearn", str(sample_dir / MNIST_LOGREG))
    port = free_port()
    config = AdapterConfig(mlserver_rest_url=replica.rest_url, models_dir=replica.models_dir, port=port,
                           capacity_bytes=1000, mlserver_log=replica.mlserver_log)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(config, stop))
    try:
        async with RuntimeClient(f"127.0.0.1:{port}") as c:
            await c.wait_ready(timeout=20)
            loaded = await c.loaded_models()
            assert loaded is not None and loaded["adopted__1"] == size
            await c.load_model("rest__1", "sklearn", str(sample_dir / MNIST_SVM))
            assert (await infer(replica, "rest__1"))[1]["outputs"][0]["data"] == [8]
            await c.unload_model("rest__1")
            bad = tmp_path / "bad.joblib"
            bad.write_bytes(b"garbage, not a pickle\n")
            with pytest.raises(RuntimeCallError) as err:
                await c.load_model("rest-bad__1", "sklearn", str(bad))
            assert "invalid literal" in str(err.value)  # from MLServer's log: REST says only "500"
            await c.unload_model("adopted__1")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert await model_ready(replica, "adopted__1") != 200


class _SpiOnly(pb_grpc.ModelRuntimeServicer):
    async def runtimeStatus(self, request, context):  # type: ignore[no-untyped-def]
        return pb.RuntimeStatusResponse(status=pb.RuntimeStatusResponse.READY, capacityInBytes=5)


async def test_runtime_without_inventory() -> None:
    """A plain ModelMesh runtime (no msm.RuntimeInventory): list_models says None, not an error."""
    server = grpc.aio.server()
    pb_grpc.add_ModelRuntimeServicer_to_server(_SpiOnly(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with RuntimeClient(f"127.0.0.1:{port}") as c:
            assert (await c.wait_ready(timeout=5)).capacity_bytes == 5
            assert await c.list_models() is None
            assert await c.loaded_models() is None
            assert await c.model_size("x") is None
            with pytest.raises(RuntimeCallError) as err:
                await c.load_model("x", "sklearn", "/x")
            assert err.value.code == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(None)


async def test_unreachable_runtime_is_a_clear_error() -> None:
    async with RuntimeClient(f"127.0.0.1:{free_port()}") as c:
        with pytest.raises(RuntimeCallError) as err:
            await c.runtime_status(timeout=1)
    assert err.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert "runtimeStatus on 127.0.0.1:" in str(err.value)


def _exists(path: str) -> bool:
    return Path(path).exists()


def _environ(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")


def _gone(pid: int) -> bool:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, 0)
        return False
    return True


async def test_replica_start_stop_leaves_no_process(tmp_path: Path) -> None:
    # The manifest's container ports are ignored: msm picks free ones; other env is passed on.
    env = {"MLSERVER_HTTP_PORT": "8002", "MLSERVER_GRPC_PORT": "8001", "MSM_TEST_MARKER": "x"}
    r = RuntimeReplica("mlserver-stop-0", tmp_path / "r", env=env, capacity_bytes=1 << 20)
    try:
        await r.start()
        assert r.running()
        assert 8002 not in (r.rest_port, r.grpc_port) and 8001 not in (r.rest_port, r.grpc_port)
        info = r.describe()
        assert info["address"] == r.address and info["mlserver_pid"] and info["adapter_pid"]
        assert _exists(info["mlserver_log"]) and _exists(info["adapter_log"])
        assert b"MSM_TEST_MARKER=x" in _environ(info["mlserver_pid"])
        async with r.client() as c:
            assert (await c.runtime_status()).capacity_bytes == 1 << 20
        pids = r.pids
    finally:
        await r.stop()
    assert not r.running()
    assert all(_gone(pid) for pid in pids)
    async with RuntimeClient(r.address) as c:
        with pytest.raises(RuntimeCallError):
            await c.runtime_status(timeout=1)
