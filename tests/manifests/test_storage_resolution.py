"""Where a model's storage resolves, field for field, and the refusals' exact words.

The confinement to the storage root is tested with the manifests (``test_storage_root.py``
and the properties); these pin what ``resolve_storage`` hands on: the location, the storage key
and parameters, the manifest's own words (the revision id is made from them), the size and the
stamp, and ``disk_size``'s counting at its bounds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from placement.manifests.local_config import LocalConfig
from placement.manifests.storage import StorageError, disk_size, resolve_storage


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "pvc" / "models").mkdir(parents=True)
    (tmp_path / "pvc" / "models" / "m.joblib").write_bytes(b"x" * 100)
    (tmp_path / "keys" / "s3").mkdir(parents=True)
    (tmp_path / "keys" / "s3" / "k.joblib").write_bytes(b"y" * 30)
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "local.joblib").write_bytes(b"z" * 7)
    (tmp_path / "manifests" / "a#b.joblib").write_bytes(b"h" * 3)
    (tmp_path / "pvc" / "Xm.joblib").write_bytes(b"q" * 4)
    return tmp_path


def _config(tree: Path) -> LocalConfig:
    return LocalConfig(base_dir=tree / "manifests", pvcs={"models-pvc": tree / "pvc"},
                       storage_keys={"s3": tree / "keys" / "s3"})


def test_a_storage_key_resolves_to_its_folder_with_key_parameters_and_the_manifests_words(tree):
    block = {"storage": {"key": "s3", "path": "k.joblib", "parameters": {"bucket": "b"},
                         "schemaPath": "schema.json"}}
    s = resolve_storage(block, _config(tree))
    target = (tree / "keys" / "s3" / "k.joblib").resolve()
    assert (s.location, s.local, s.key, dict(s.parameters)) == (str(target), target, "s3", {"bucket": "b"})
    assert s.spec == {"key": "s3", "path": "k.joblib", "parameters": {"bucket": "b"},
                      "schemaPath": "schema.json"}
    st = target.stat()
    assert (s.disk_bytes, s.stamp) == (30, (st.st_mtime_ns, st.st_size))


def test_a_pvc_storage_block_keeps_its_key_and_parameters(tree):
    params = {"type": "pvc", "name": "models-pvc"}
    s = resolve_storage({"storage": {"key": "k", "path": "/models/m.joblib", "parameters": params}},
                        _config(tree))
    assert (s.key, dict(s.parameters), s.disk_bytes) == ("k", params, 100)
    assert s.spec["parameters"] == params and s.spec["key"] == "k"
    # in Kubernetes mode (no local config) the same block stays a URI, leading slash dropped
    k = resolve_storage({"storage": {"key": "k", "path": "/models/m.joblib", "parameters": params}}, None)
    assert (k.location, k.local, k.key, dict(k.parameters)) == ("pvc://models-pvc/models/m.joblib", None,
                                                                 "k", params)
    assert k.spec["path"] == "/models/m.joblib"


def test_without_a_local_config_storage_stays_what_the_manifest_says(tree):
    s = resolve_storage({"storage": {"path": "p/m", "parameters": {"bucket": "b"}}}, None)
    assert (s.location, s.local, s.key, dict(s.parameters)) == ("p/m", None, "default", {"bucket": "b"})
    assert s.spec == {"key": None, "path": "p/m", "parameters": {"bucket": "b"}, "schemaPath": None}
    for uri in ("s3://bucket/m", "file:///models/m", "models/m", "pvc://claim/m"):
        s = resolve_storage({"storageUri": uri}, None)
        assert s.spec == {"storageUri": uri} and s.local is None and dict(s.parameters) == {}
        assert s.location == (uri if not uri.startswith("pvc") else "pvc://claim/m") and s.key is None


def test_storage_uris_resolve_in_the_manifest_folder_and_on_pvcs(tree):
    config = _config(tree)
    plain = resolve_storage({"storageUri": "local.joblib"}, config)
    as_file = resolve_storage({"storageUri": f"file://{tree / 'manifests' / 'local.joblib'}"}, config)
    assert plain.local == as_file.local == (tree / "manifests" / "local.joblib").resolve()
    assert plain.spec == {"storageUri": "local.joblib"} and plain.key is None and plain.disk_bytes == 7
    assert dict(plain.parameters) == {} and dict(as_file.parameters) == {}
    # a plain path is a path, not a URI: '#' is part of the file's name
    assert resolve_storage({"storageUri": "a#b.joblib"}, config).disk_bytes == 3
    # only the leading slashes of a PVC path go
    assert resolve_storage({"storageUri": "pvc://models-pvc//Xm.joblib"}, config).disk_bytes == 4
    assert resolve_storage({"storageUri": "pvc://models-pvc/Xm.joblib"}, None).location == (
        "pvc://models-pvc/Xm.joblib")
    pvc = resolve_storage({"storageUri": "pvc://models-pvc/models/m.joblib"}, config)
    assert pvc.local == (tree / "pvc" / "models" / "m.joblib").resolve()
    assert pvc.spec == {"storageUri": "pvc://models-pvc/models/m.joblib"} and dict(pvc.parameters) == {}


def test_refusals_say_what_is_wrong_in_the_users_words(tree):
    config = _config(tree)

    def refused(block) -> str:
        with pytest.raises(StorageError) as err:
            resolve_storage(block, config)
        return str(err.value)

    assert refused({"storageUri": "pvc:///m.joblib"}) == (
        "storageUri 'pvc:///m.joblib' names no PVC: write pvc://<pvc name>/<path>")
    bad_uri = refused({"storageUri": "http://[::1/m"})
    assert bad_uri.startswith("storageUri 'http://[::1/m' is not a valid URI: ")
    assert refused({"storageUri": "s3://bucket/m"}) == (
        "storageUri s3://bucket/m: s3:// storage cannot be fetched by the local mesh; put the model in a "
        "folder and use a PVC mapping (pvcs in msm-local.yaml or --pvc NAME=PATH)")
    assert refused({"storageUri": "m\0.joblib"}) == "model path 'm\\x00.joblib' contains a NUL character"
    long = refused({"storageUri": "x" * 300})
    assert long.startswith(f"model path {'x' * 300!r}"[:40]) and long.endswith("): File name too long")
    assert "cannot be read (storageUri, inside the manifest folder" in long


def test_disk_size_counts_every_file_under_a_folder_and_skips_what_it_cannot_stat(tmp_path):
    d = tmp_path / "m"
    (d / "sub").mkdir(parents=True)
    for i in range(12):
        (d / f"f{i:02}").write_bytes(b"a" * (i + 1))
    (d / "sub" / "g").write_bytes(b"b" * 1000)
    os.symlink(d / "nowhere", d / "broken")  # inside the root, but nothing to stat
    assert disk_size(d, tmp_path) == sum(range(1, 13)) + 1000
    assert disk_size(d) == sum(range(1, 13)) + 1000  # no root: symlinks are not checked


def test_disk_size_allows_symlinks_inside_the_root_and_refuses_those_leading_out(tmp_path):
    root = tmp_path / "root"
    (root / "m").mkdir(parents=True)
    (root / "shared.bin").write_bytes(b"s" * 5)
    os.symlink(root / "shared.bin", root / "m" / "link")
    assert disk_size(root / "m", root) == 5  # a linked file counts what the runtime will read
    os.symlink(tmp_path, root / "m" / "out")
    with pytest.raises(StorageError, match=r"is a symlink to .* outside the storage root"):
        disk_size(root / "m", root)


def test_disk_size_refuses_a_folder_beyond_its_bound_counted_across_subfolders(tmp_path):
    d = tmp_path / "m"
    (d / "a").mkdir(parents=True)
    (d / "a" / "x").write_bytes(b"1")
    (d / "b").write_bytes(b"2")
    # entries: a, b (top), x (in a) = 3
    assert disk_size(d, max_entries=3) == 2
    with pytest.raises(StorageError, match="holds more than 2 files and folders"):
        disk_size(d, max_entries=2)
