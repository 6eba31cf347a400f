"""A model path never leaves its storage root: `..`, absolute paths, symlinks, whole disks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from _manifests_helpers import isvc, local_dir, runtime, write

from placement.manifests import storage
from placement.manifests.kserve import load_manifest_dir

NS = "modelmesh-serving/"  # errors of a model are keyed namespace/name


@pytest.fixture
def mdir(tmp_path: Path) -> Path:
    d = local_dir(tmp_path / "manifests")
    write(d / "rt.yaml", runtime("mlserver"))
    # what an escape would reach: a model file next to the manifest folder, not inside any root
    write(tmp_path / "secret" / "model.joblib", "not yours")
    return d


def with_uri(name: str, uri: str) -> str:
    return isvc(name).replace(
        "      storage:\n        parameters:\n          type: pvc\n          name: my-models-pvc\n"
        "        path: mnist-svm.joblib\n", f"      storageUri: {uri}\n")


def with_key(name: str, key: str, path: str) -> str:
    return isvc(name).replace(
        "      storage:\n        parameters:\n          type: pvc\n          name: my-models-pvc\n"
        "        path: mnist-svm.joblib\n", f"      storage:\n        key: {key}\n        path: {path}\n")


def test_dot_dot_out_of_a_pvc_is_refused(mdir: Path) -> None:
    write(mdir / "m.yaml", isvc("good") + "---\n" + isvc("escape", path="../../secret/model.joblib")
          + "---\n" + with_uri("escape-uri", "pvc://my-models-pvc/../../secret/model.joblib"))
    state = load_manifest_dir(mdir)
    secret = (mdir.parent / "secret" / "model.joblib").resolve()
    root = (mdir / "models").resolve()
    assert set(state.models) == {"good"}
    assert state.errors["modelmesh-serving/escape"] == (
        f"m.yaml doc 2 InferenceService/escape: model path '../../secret/model.joblib' resolves to "
        f"{secret}, outside its storage root {root} (PVC my-models-pvc -> {root}); a model path must "
        "stay inside it")
    assert f"resolves to {secret}, outside its storage root {root}" in state.errors[NS + "escape-uri"]


def test_dot_dot_out_of_a_storage_key_folder_is_refused(mdir: Path) -> None:
    (mdir / "minio").mkdir()
    (mdir / "minio" / "ok.joblib").write_bytes(b"x")
    write(mdir / "m.yaml", with_key("ok", "localMinIO", "ok.joblib") + "---\n"
          + with_key("escape", "localMinIO", "../../secret/model.joblib"))
    state = load_manifest_dir(mdir)
    assert set(state.models) == {"ok"}
    assert "outside its storage root" in state.errors["modelmesh-serving/escape"]
    assert f"(storage key localMinIO -> {mdir / 'minio'})" in state.errors["modelmesh-serving/escape"]


def test_file_uris_stay_inside_the_manifest_folder(mdir: Path) -> None:
    secret = mdir.parent / "secret" / "model.joblib"
    write(mdir / "m.yaml", "---\n".join([
        with_uri("inside", f"file://{mdir}/models/mnist-svm.joblib"),
        with_uri("absolute", f"file://{secret}"),
        with_uri("whole-disk", "file:///"),
        with_uri("dotdot", f"file://{mdir}/models/../../secret/model.joblib"),
    ]))
    state = load_manifest_dir(mdir)
    assert set(state.models) == {"inside"}
    for name in ("absolute", "whole-disk", "dotdot"):
        assert "outside its storage root" in state.errors[NS + name], state.errors[NS + name]
        assert f"inside the manifest folder {mdir}" in state.errors[NS + name]


def test_a_symlink_in_the_pvc_that_leads_outside_is_refused(mdir: Path) -> None:
    models = mdir / "models"
    os.symlink(mdir.parent / "secret" / "model.joblib", models / "link.joblib")
    os.symlink(mdir.parent / "secret", models / "linkdir")
    os.symlink(models / "mnist-svm.joblib", models / "inside-link.joblib")  # stays inside: fine
    write(mdir / "m.yaml", "---\n".join([
        isvc("file-link", path="link.joblib"), isvc("dir-link", path="linkdir/model.joblib"),
        isvc("inside-link", path="inside-link.joblib")]))
    state = load_manifest_dir(mdir)
    assert set(state.models) == {"inside-link"}
    assert state.models["inside-link"].storage_path == str((models / "mnist-svm.joblib").resolve())
    assert "outside its storage root" in state.errors["modelmesh-serving/file-link"]
    assert "outside its storage root" in state.errors["modelmesh-serving/dir-link"]


def test_a_model_folder_holding_a_symlink_that_leads_outside_is_refused(mdir: Path) -> None:
    folder = mdir / "models" / "bundle"
    write(folder / "model.json", "{}")
    os.symlink(mdir.parent / "secret" / "model.joblib", folder / "weights.bin")
    write(mdir / "m.yaml", isvc("bundle", path="bundle"))
    state = load_manifest_dir(mdir)
    assert "bundle" not in state.models
    secret = (mdir.parent / "secret" / "model.joblib").resolve()
    assert (f"{folder / 'weights.bin'} is a symlink to {secret}, "
            f"outside the storage root {(mdir / 'models').resolve()}; refused") in state.errors[NS + "bundle"]


def test_a_folder_too_large_to_walk_is_refused(mdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = mdir / "models" / "many"
    for i in range(30):
        write(folder / f"part-{i}", "x")
    write(mdir / "m.yaml", isvc("many", path="many"))
    assert "many" in load_manifest_dir(mdir).models
    monkeypatch.setattr(storage, "MAX_MODEL_ENTRIES", 20)
    state = load_manifest_dir(mdir)
    assert "many" not in state.models
    assert (f"model folder {folder.resolve()} holds more than 20 files and folders; refused"
            in state.errors["modelmesh-serving/many"])


def test_a_symlinked_manifest_that_leads_outside_the_folder_is_not_read(mdir: Path) -> None:
    write(mdir.parent / "elsewhere" / "theirs.yaml", isvc("theirs"))
    os.symlink(mdir.parent / "elsewhere" / "theirs.yaml", mdir / "linked.yaml")
    write(mdir / "mine.yaml", isvc("mine"))
    os.symlink(mdir / "mine.yaml", mdir / "alias.yml")  # a link to a file of the folder itself: fine
    state = load_manifest_dir(mdir)
    assert set(state.models) == {"mine"}
    target = (mdir.parent / "elsewhere" / "theirs.yaml").resolve()
    assert state.errors["linked.yaml"] == (
        f"linked.yaml: a symlink to {target}, outside the manifest folder {mdir.resolve()}; not read "
        "(copy the file into the folder instead)")


async def test_the_watcher_refuses_a_manifest_replaced_by_an_outside_symlink(mdir: Path) -> None:
    from placement.sources import LocalDirSource

    write(mdir / "m.yaml", isvc("m"))
    source = LocalDirSource(mdir, poll_interval=3600)
    try:
        state = await source.start()
        assert "m" in state.models and not state.errors
        write(mdir.parent / "elsewhere" / "m.yaml", isvc("m", path="../../secret/model.joblib"))
        (mdir / "m.yaml").unlink()
        os.symlink(mdir.parent / "elsewhere" / "m.yaml", mdir / "m.yaml")
        assert await source.poll()
        state = source.state
        assert "a symlink to" in state.errors["m.yaml"] and "not read" in state.errors["m.yaml"]
        assert state.errors["m.yaml"].endswith("(its last good version stays in use)")
        assert state.models["m"].storage_path == str((mdir / "models" / "mnist-svm.joblib").resolve())
    finally:
        await source.stop()
