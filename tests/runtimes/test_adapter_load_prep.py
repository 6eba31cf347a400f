"""What the MLServer adapter does on the file system around a load: one hand-off to a thread
before MLServer is asked (path checked, settings and state written), one after (settings taken out
of MLServer's scan), and a clear refusal, with nothing left behind, when the first part fails.

MLServer is the in-memory backend of ``test_adapter_sizes``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import grpc
import pytest
from test_adapter_sizes import Aborted, Backend, adapter, load

from placement.adapters import mlserver
from placement.adapters.mlserver import LOADED_SETTINGS_FILE, SETTINGS_FILE, STATE_FILE


@pytest.fixture
def handed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the functions the adapter handed to a worker thread."""
    names: list[str] = []
    real = asyncio.to_thread

    async def counting(fn, *args, **kwargs):
        names.append(getattr(fn, "__name__", repr(fn)))
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(mlserver.asyncio, "to_thread", counting)
    return names


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    p = tmp_path / "model.joblib"
    p.write_bytes(b"x" * 1000)
    return p


async def test_a_load_hands_its_file_work_to_a_thread_once_before_mlserver_and_once_after(
        tmp_path: Path, model_file: Path, handed: list[str]) -> None:
    backend = Backend()
    a = adapter(tmp_path, backend, measure=False)
    r = await load(a, "m__1", model_file)
    assert handed == ["_prepare", "_settle"]
    assert backend.loaded == {"m__1"} and r.sizeInBytes == 1250  # 1000 bytes x 1.25
    d = a.models_dir / "m__1"
    assert (d / LOADED_SETTINGS_FILE).is_file() and not (d / SETTINGS_FILE).exists()
    assert (d / STATE_FILE).is_file()


async def test_a_missing_model_path_is_refused_before_mlserver_is_asked(tmp_path: Path) -> None:
    backend = Backend()
    a = adapter(tmp_path, backend, measure=False)
    missing = tmp_path / "nowhere.joblib"
    with pytest.raises(Aborted) as err:
        await load(a, "m__1", missing)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.text == f"model m__1: model path {missing} does not exist"
    assert not backend.loaded and not (a.models_dir / "m__1").exists()


async def test_a_path_outside_the_storage_root_is_an_invalid_argument(tmp_path: Path,
                                                                       model_file: Path) -> None:
    backend = Backend()
    a = adapter(tmp_path, backend, measure=False)
    a.config = dataclasses.replace(a.config, pvc_mount_root=tmp_path / "pvcs")
    with pytest.raises(Aborted) as err:
        await load(a, "m__1", model_file)  # a plain path where only pvc:// is served
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.text.startswith("model m__1: ")
    assert not backend.loaded and not (a.models_dir / "m__1").exists()


async def test_settings_that_cannot_be_read_are_a_failed_precondition(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / SETTINGS_FILE).write_text("{not json")  # the model's own settings, broken
    backend = Backend()
    a = adapter(tmp_path, backend, measure=False)
    with pytest.raises(Aborted) as err:
        await load(a, "m__1", model_dir)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.text.startswith("model m__1: cannot write MLServer settings: ")
    assert not backend.loaded
