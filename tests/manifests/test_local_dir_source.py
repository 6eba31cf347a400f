"""The watched manifest folder: add, edit, delete, bad edits, and the watcher's own loop."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from _manifests_helpers import isvc, local_dir, runtime, write

from placement.manifests.desired_state import DesiredState
from placement.sources import LocalDirSource


class Recorder:
    def __init__(self) -> None:
        self.states: list[DesiredState] = []
        self.queue: asyncio.Queue[DesiredState] = asyncio.Queue()

    async def __call__(self, state: DesiredState) -> None:
        self.states.append(state)
        self.queue.put_nowait(state)


_tick = [1_700_000_000]


def put(path: Path, text: str) -> None:
    """Write ``text`` and give the file a fresh, distinct mtime (no reliance on clock granularity)."""
    write(path, text)
    _tick[0] += 10
    os.utime(path, ns=(_tick[0] * 10**9, _tick[0] * 10**9))


@pytest.fixture
def mdir(tmp_path: Path) -> Path:
    local_dir(tmp_path, files=("mnist-svm.joblib", "v2.joblib"))
    put(tmp_path / "rt.yaml", runtime("mlserver"))
    put(tmp_path / "a.yaml", isvc("a"))
    return tmp_path


async def test_add_edit_delete_change_the_state(mdir: Path) -> None:
    rec = Recorder()
    src = LocalDirSource(mdir, on_change=rec, poll_interval=3600)
    try:
        first = await src.start()
        assert rec.states == [first] and set(first.models) == {"a"} and first.errors == {}
        assert not await src.poll()  # nothing changed, nothing delivered
        assert len(rec.states) == 1

        put(mdir / "b.yaml", isvc("b"))
        assert await src.poll()
        assert set(rec.states[-1].models) == {"a", "b"}

        rev = rec.states[-1].models["b"].revision_id
        put(mdir / "b.yaml", isvc("b", path="v2.joblib"))
        assert await src.poll()
        b = rec.states[-1].models["b"]
        assert b.revision_id != rev and b.storage_path.endswith("v2.joblib")

        (mdir / "b.yaml").unlink()
        assert await src.poll()
        assert set(rec.states[-1].models) == {"a"}

        (mdir / "rt.yaml").unlink()  # no runtime: the model cannot be resolved any more
        assert await src.poll()
        assert rec.states[-1].models == {} and "no runtime" in rec.states[-1].errors["modelmesh-serving/a"]
    finally:
        await src.stop()


async def test_a_bad_edit_keeps_the_last_good_version(mdir: Path) -> None:
    rec = Recorder()
    src = LocalDirSource(mdir, on_change=rec, poll_interval=3600)
    await src.start()
    good = src.state.models["a"]

    put(mdir / "a.yaml", "apiVersion: serving.kserve.io/v1beta1\nkind: [oops\n")  # not YAML
    assert await src.poll()
    state = rec.states[-1]
    assert state.models["a"] == good and set(state.runtimes) == {"mlserver"}
    assert state.errors["a.yaml"].startswith("a.yaml: not valid YAML at line 3")
    assert state.errors["a.yaml"].endswith("(its last good version stays in use)")

    # a multi-document file: the valid document's edit applies, the invalid one keeps its old version
    put(mdir / "a.yaml", isvc("a") + "---\n" + isvc("c"))
    assert await src.poll()
    c_rev = rec.states[-1].models["c"].revision_id
    bad_c = isvc("c", path="v2.joblib").replace("  predictor:\n",
                                                "  predictor:\n    canaryTrafficPercent: x\n")
    put(mdir / "a.yaml", isvc("a", path="v2.joblib") + "---\n" + bad_c)
    assert await src.poll()
    state = rec.states[-1]
    assert state.models["a"].storage_path.endswith("v2.joblib")  # the good edit went through
    assert state.models["c"].revision_id == c_rev  # the bad one did not
    assert "a.yaml doc 2 InferenceService/c: spec.predictor.canaryTrafficPercent must be an integer" \
        in state.errors["a.yaml"]

    put(mdir / "a.yaml", isvc("a") + "---\n" + isvc("c"))  # fixed: the error goes away
    assert await src.poll()
    assert rec.states[-1].errors == {}
    await src.stop()


async def test_an_unresolvable_edit_keeps_the_previous_revision_until_the_file_appears(mdir: Path) -> None:
    src = LocalDirSource(mdir, poll_interval=3600)
    await src.start()
    old = src.state.models["a"]
    put(mdir / "a.yaml", isvc("a", path="v3.joblib"))
    assert await src.poll()
    assert src.state.models["a"] == old
    assert "v3.joblib not found" in src.state.errors["modelmesh-serving/a"]
    assert f"still serving the previous revision {old.revision_id}" in src.state.errors["modelmesh-serving/a"]
    (mdir / "models" / "v3.joblib").write_bytes(b"new model")  # the model file arrives; no manifest edit
    assert await src.poll()
    assert src.state.models["a"].storage_path.endswith("v3.joblib") and src.state.errors == {}
    await src.stop()


async def test_local_config_changes_are_picked_up(mdir: Path) -> None:
    src = LocalDirSource(mdir, poll_interval=3600)
    await src.start()
    (mdir / "other").mkdir()
    (mdir / "other" / "mnist-svm.joblib").write_bytes(b"x" * 80)
    put(mdir / "msm-local.yaml", "pvcs: {my-models-pvc: ./other}\n")
    assert await src.poll()
    assert src.state.models["a"].storage_path == str(mdir / "other" / "mnist-svm.joblib")
    put(mdir / "msm-local.yaml", "pvcs: [broken\n")
    assert await src.poll()
    assert "msm-local.yaml" in src.state.errors and "a" in src.state.models
    await src.stop()


async def test_the_watcher_loop_delivers_changes_and_stops(mdir: Path) -> None:
    rec = Recorder()
    src = LocalDirSource(mdir, on_change=rec, poll_interval=0.02)
    await src.start()
    await rec.queue.get()
    put(mdir / "b.yaml", isvc("b"))
    state = await asyncio.wait_for(rec.queue.get(), 10)
    assert set(state.models) == {"a", "b"}
    task = src._task
    await src.stop()
    assert task is not None and task.done()
    put(mdir / "c.yaml", isvc("c"))
    await asyncio.sleep(0.1)
    assert rec.queue.empty()  # stopped: nothing more is delivered


async def test_same_size_rewrite_within_one_clock_tick_is_seen(mdir: Path) -> None:
    """mtime and size unchanged, content changed: a recently modified file is compared by content."""
    src = LocalDirSource(mdir, poll_interval=3600)
    await src.start()
    p, recent = mdir / "a.yaml", time.time_ns()
    text = isvc("a")
    p.write_text(text)
    os.utime(p, ns=(recent, recent))
    await src.poll()
    assert src.state.errors == {}
    p.write_text(text.replace("mnist-svm.joblib", "mnist-svm.joblix"))  # same size
    os.utime(p, ns=(recent, recent))
    assert await src.poll()
    assert "mnist-svm.joblix not found" in src.state.errors["modelmesh-serving/a"]
    await src.stop()


async def test_start_refuses_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a directory"):
        await LocalDirSource(tmp_path / "nope").start()
