"""A new manifest never takes over a model that is serving: the incumbent keeps its name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from _manifests_helpers import isvc, local_dir, runtime, write

from placement.sources import LocalDirSource

_tick = [1_800_000_000]


def put(path: Path, text: str) -> None:
    write(path, text)
    _tick[0] += 10
    os.utime(path, ns=(_tick[0] * 10**9, _tick[0] * 10**9))


@pytest.fixture
async def watched(tmp_path: Path):
    local_dir(tmp_path, files=("mnist-svm.joblib", "other.joblib"))
    put(tmp_path / "rt.yaml", runtime("mlserver", namespace=None, kind="ClusterServingRuntime"))
    put(tmp_path / "b-serving.yaml", isvc("m", namespace="team-b"))
    source = LocalDirSource(tmp_path, poll_interval=3600)
    state = await source.start()
    assert state.models["m"].namespace == "team-b" and not state.errors
    try:
        yield tmp_path, source, state.models["m"]
    finally:
        await source.stop()


@pytest.mark.parametrize("namespace", ["team-a", "team-b"], ids=["other-namespace", "same-namespace"])
async def test_a_newcomer_that_sorts_first_does_not_take_the_name(watched, namespace: str) -> None:
    d, source, serving = watched
    put(d / "a-newcomer.yaml", isvc("m", namespace=namespace, path="other.joblib"))
    await source.poll()
    state = source.state
    assert state.models["m"] == serving  # same namespace, revision, storage: untouched
    err = state.errors["a-newcomer.yaml"]
    assert "b-serving.yaml doc 1" in err and "stays in use" in err and "this one" in err
    assert "team-b/m" not in state.errors  # nothing shows up under the healthy model


async def test_the_incumbent_keeps_its_name_while_its_own_manifest_is_broken(watched) -> None:
    d, source, serving = watched
    put(d / "a-newcomer.yaml", isvc("m", namespace="team-a", path="other.joblib"))
    put(d / "b-serving.yaml", isvc("m", namespace="team-b", path="gone.joblib"))  # cannot resolve now
    await source.poll()
    state = source.state
    assert state.models["m"] == serving
    assert "still serving the previous revision" in state.errors["team-b/m"]
    assert "clients call models by name alone" in state.errors["a-newcomer.yaml"]


async def test_when_the_incumbent_goes_the_newcomer_gets_the_name(watched) -> None:
    d, source, _ = watched
    put(d / "a-newcomer.yaml", isvc("m", namespace="team-a", path="other.joblib"))
    await source.poll()
    (d / "b-serving.yaml").unlink()
    await source.poll()
    state = source.state
    assert state.models["m"].namespace == "team-a" and not state.errors


async def test_last_good_version_is_claimed_only_for_what_had_one(watched) -> None:
    d, source, _ = watched
    bad = isvc("n", namespace="team-b").replace("        name: sklearn\n", "        version: '1'\n")
    put(d / "new.yaml", bad)  # invalid from the start: nothing of it was ever in use
    await source.poll()
    assert "stays in use" not in source.state.errors["new.yaml"]
    put(d / "b-serving.yaml", isvc("m", namespace="team-b").replace("        name: sklearn\n",
                                                                       "        version: '1'\n"))
    await source.poll()
    err = source.state.errors["b-serving.yaml"]
    assert err.endswith("(the last good version of InferenceService/m stays in use)"), err
    assert "m" in source.state.models
