"""The adapter's measured sizes (``--measure-model-size``): what MLServer's memory grew by while a
model loaded, never below the estimate from disk; a model bigger than the capacity is refused.

MLServer is replaced by a backend whose resident memory the test sets, so each rule is exact.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest

from placement.adapters.mlserver import (
    STATE_FILE,
    AdapterConfig,
    MLServerAdapter,
    build_parser,
    config_from_args,
    parse_resident_bytes,
)
from placement.protos import model_runtime_pb2 as pb

MiB = 2**20


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, text: str) -> None:
        super().__init__(text)
        self.code, self.text = code, text


class Context:
    async def abort(self, code: grpc.StatusCode, text: str) -> None:
        raise Aborted(code, text)


class Backend:
    """MLServer's repository API in memory: a load adds ``grows[name]`` to the resident memory."""

    def __init__(self, rss: int = 100 * MiB) -> None:
        self.rss = rss
        self.grows: dict[str, int] = {}
        self.loaded: set[str] = set()
        self.unloaded: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.metrics_url = "http://metrics"

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def resident_bytes(self) -> int | None:
        return self.rss

    async def load(self, name: str, timeout: float) -> None:
        model = name.split("__")[0]
        if model in self.gates:
            await self.gates[model].wait()
        self.rss += self.grows.get(model, 0)
        self.loaded.add(name)

    async def unload(self, name: str, timeout: float) -> None:
        self.unloaded.append(name)
        self.loaded.discard(name)


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    p = tmp_path / "model.bin"
    p.write_bytes(b"x" * 4 * MiB)  # estimate: 4 MiB x 1.25 = 5 MiB
    return p


def adapter(tmp_path: Path, backend: Backend, *, measure: bool = True, capacity: int = 1024 * MiB
            ) -> MLServerAdapter:
    config = AdapterConfig(mlserver_rest_url="http://mlserver", models_dir=tmp_path / "models",
                           capacity_bytes=capacity, measure_model_size=measure,
                           mlserver_metrics_url="http://metrics", implementations={"sklearn": "x.Y"})
    a = MLServerAdapter(config, backend)  # type: ignore[arg-type]
    a.models_dir.mkdir(parents=True, exist_ok=True)
    return a


def load(a: MLServerAdapter, model_id: str, path: Path) -> object:
    return a.loadModel(pb.LoadModelRequest(modelId=model_id, modelType="sklearn", modelPath=str(path)),
                       Context())  # type: ignore[arg-type]


async def test_a_model_that_grows_when_loaded_is_accounted_by_its_growth(tmp_path: Path,
                                                                         model_file: Path) -> None:
    backend = Backend()
    backend.grows["big"] = 300 * MiB
    a = adapter(tmp_path, backend)
    r = await load(a, "big__1", model_file)
    assert r.sizeInBytes == 300 * MiB
    state = json.loads((a.models_dir / "big__1" / STATE_FILE).read_text())
    assert (state["sizeInBytes"], state["measuredBytes"], state["estimatedBytes"]) == (300 * MiB, 300 * MiB,
                                                                                      5 * MiB)
    # modelSize and the inventory (a restarted control plane) report the measured size too
    size = await a.modelSize(pb.ModelSizeRequest(modelId="big__1"), Context())  # type: ignore[arg-type]
    assert size.sizeInBytes == 300 * MiB


async def test_the_estimate_is_a_floor_and_without_the_flag_nothing_is_measured(tmp_path: Path,
                                                                              model_file: Path) -> None:
    backend = Backend()
    backend.grows["small"] = 1 * MiB  # memory reused from earlier loads: it grew by less than the file
    assert (await load(adapter(tmp_path, backend), "small__1", model_file)).sizeInBytes == 5 * MiB
    backend.grows["big"] = 300 * MiB
    plain = adapter(tmp_path / "plain", backend, measure=False)
    assert (await load(plain, "big__2", model_file)).sizeInBytes == 5 * MiB


async def test_a_model_bigger_than_the_capacity_once_loaded_is_unloaded_and_refused(
        tmp_path: Path, model_file: Path) -> None:
    backend = Backend()
    backend.grows["llm"] = 900 * MiB
    a = adapter(tmp_path, backend, capacity=384 * MiB)
    with pytest.raises(Aborted) as e:
        await load(a, "llm__1", model_file)
    assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert e.value.text == ("model llm__1 takes 900 MiB once loaded (MLServer's resident memory grew by "
                            "900 MiB), more than this runtime's capacity of 384 MiB (memory request less "
                            "memBufferBytes): it was unloaded")
    assert backend.unloaded == ["llm__1"] and not backend.loaded
    assert not (a.models_dir / "llm__1").exists()


async def test_overlapping_loads_are_not_measured(tmp_path: Path, model_file: Path) -> None:
    """Two loads at once share one process's growth: neither can tell its own, so both keep the
    estimate (measuring either would charge it the other's bytes)."""
    backend = Backend()
    backend.grows.update(a=200 * MiB, b=300 * MiB)
    backend.gates["a"] = asyncio.Event()
    ad = adapter(tmp_path, backend)
    first = asyncio.create_task(load(ad, "a__1", model_file))
    await asyncio.sleep(0.05)  # a is loading (held at its gate)
    second = asyncio.create_task(load(ad, "b__1", model_file))
    await asyncio.sleep(0.05)
    backend.gates["a"].set()
    ra, rb = await asyncio.gather(first, second)
    assert (ra.sizeInBytes, rb.sizeInBytes) == (5 * MiB, 5 * MiB)
    # alone again: measured
    backend.grows["c"] = 50 * MiB
    assert (await load(ad, "c__1", model_file)).sizeInBytes == 50 * MiB


def test_resident_bytes_from_mlservers_metrics() -> None:
    text = ("# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
            "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes 1.41135872e+08\n"
            "process_resident_memory_bytes_total 5\n")
    assert parse_resident_bytes(text) == 141135872
    assert parse_resident_bytes("process_virtual_memory_bytes 1e9\n") is None
    assert parse_resident_bytes("process_resident_memory_bytes NaN\n") is None
    assert parse_resident_bytes("process_resident_memory_bytes -1\n") is None


def test_measuring_needs_the_metrics_url() -> None:
    args = build_parser().parse_args(["--mlserver-rest-url", "http://x", "--models-dir", "/tmp/m",
                                      "--measure-model-size"])
    with pytest.raises(SystemExit, match="needs --mlserver-metrics-url"):
        config_from_args(args)
