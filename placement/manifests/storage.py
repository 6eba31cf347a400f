"""Where an InferenceService's model lives, and the rule that keeps it inside its storage root.

In local mode every storage location maps to a folder on this machine: a PVC to its folder
(``pvcs`` / ``--pvc``), a ModelMesh storage key to its folder (``storageKeys``), a ``file://`` URI
or plain path to the manifest folder. That folder is the model's *storage root*: the model's
path, with every symlink followed (in the path and inside a model folder), must stay inside it.
Otherwise the model is refused with a message naming the path, where it leads and the root. A
manifest can so never make a runtime read another tenant's files or the host's.

The size estimate walks the model's folder once, bounded in entries: a folder too large to walk
is refused rather than walked for minutes.

In Kubernetes mode storage stays a URI; the PVC mount rule is the runtime pod's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from placement.manifests.local_config import LOCAL_CONFIG_NAME, LocalConfig
from placement.manifests.safe_yaml import shown

#: Files and folders a model folder may hold before msm refuses to walk it for its size.
MAX_MODEL_ENTRIES = 100_000


class StorageError(ValueError):
    """The model's storage cannot be used (unmapped, missing, outside its root, too large)."""


@dataclass(frozen=True)
class Storage:
    location: str  # local path (local mode) or URI
    local: Path | None
    key: str | None
    parameters: Mapping[str, str]
    spec: Mapping[str, Any]  # what the manifest says, for the revision id
    disk_bytes: int | None = None  # local mode: bytes on disk of the file or folder
    stamp: tuple[int, int] | None = None  # local mode: (mtime_ns, size) of the path itself


def resolve_storage(model: Mapping[str, Any], config: LocalConfig | None) -> Storage:
    """The storage of a predictor's model block (``storage`` or ``storageUri``)."""
    storage = model.get("storage")
    uri = model.get("storageUri")
    if isinstance(storage, dict):
        params = dict(storage.get("parameters") or {})
        path = storage["path"]
        key = storage.get("key")
        spec = {"key": key, "path": path, "parameters": params, "schemaPath": storage.get("schemaPath")}
        if params.get("type") == "pvc":
            return _pvc(params["name"], path, config, spec, key, params)
        key_name = key or "default"
        if config is None:
            return Storage(path, None, key_name, params, spec)
        folder = config.storage_key_dir(key_name)
        if folder is None:
            what = f"storage.key {key}" if key else "storage with no key (ModelMesh's default storage)"
            raise StorageError(f"{what} is not mapped to a folder in local mode: add "
                               f"`storageKeys: {{{key_name}: ./folder}}` to {LOCAL_CONFIG_NAME}")
        return _local(folder, path, f"storage key {key_name} -> {folder}", spec, key_name, params)
    assert isinstance(uri, str)
    spec = {"storageUri": uri}
    try:
        parsed = urlparse(uri)
    except ValueError as e:  # e.g. an unbalanced '[' in the authority
        raise StorageError(f"storageUri {shown(uri)} is not a valid URI: {e}") from None
    if parsed.scheme == "pvc":
        if not parsed.netloc:
            raise StorageError(f"storageUri {shown(uri)} names no PVC: write pvc://<pvc name>/<path>")
        return _pvc(parsed.netloc, parsed.path, config, spec, None, {})
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme == "file" else uri
        if config is None:
            return Storage(uri, None, None, {}, spec)
        return _local(config.base_dir, path, f"storageUri, inside the manifest folder {config.base_dir}",
                      spec, None, {})
    if config is None:
        return Storage(uri, None, None, {}, spec)
    raise StorageError(f"storageUri {uri}: {parsed.scheme}:// storage cannot be fetched by the local "
                       f"mesh; put the model in a folder and use a PVC mapping (pvcs in {LOCAL_CONFIG_NAME} "
                       "or --pvc NAME=PATH)")


def _pvc(name: str, path: str, config: LocalConfig | None, spec: Mapping[str, Any], key: str | None,
         params: Mapping[str, str]) -> Storage:
    if config is None:
        return Storage(f"pvc://{name}/{path.lstrip('/')}", None, key, params, spec)
    folder = config.pvc_dir(name)
    if folder is None:
        raise StorageError(f"PVC {name} is not mapped to a folder in local mode: add "
                           f"`pvcs: {{{name}: ./folder}}` to {LOCAL_CONFIG_NAME} or pass --pvc {name}=PATH")
    return _local(folder, path.lstrip("/"), f"PVC {name} -> {folder}", spec, key, params)


def _local(root: Path, path: str, via: str, spec: Mapping[str, Any], key: str | None,
           params: Mapping[str, str]) -> Storage:
    """``path`` under ``root`` (an absolute ``path`` is taken as is), confined to ``root``."""
    if "\0" in path:
        raise StorageError(f"model path {shown(path)} contains a NUL character")
    try:
        real_root = root.resolve()
        target = Path(path) if os.path.isabs(path) else root / path
        resolved = target.resolve()
        if not _within(resolved, real_root):
            raise StorageError(f"model path {shown(path)} resolves to {resolved}, outside its "
                               f"storage root {real_root} ({via}); a model path must stay inside it")
        if not resolved.exists():
            raise StorageError(f"model file {target} not found ({via})")
        size = disk_size(resolved, real_root)
    except OSError as e:  # a name too long for the file system, a folder it may not read ...
        raise StorageError(f"model path {shown(path)} cannot be read ({via}): {e.strerror or e}") from None
    return Storage(str(resolved), resolved, key, params, spec, size, path_stamp(resolved))


def path_stamp(path: Path) -> tuple[int, int] | None:
    """``(mtime_ns, size)`` of a model's file or folder: it changes when the file is replaced or
    rewritten, or entries are added to or removed from the folder; None when it is gone."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def disk_size(path: Path, root: Path | None = None, max_entries: int | None = None) -> int:
    """Bytes on disk of a file, or of every file under a folder (a linked file counts its
    target's bytes, which the runtime reads; linked folders are not walked into).

    With ``root``, a symlink under the folder that leads outside ``root`` is refused, since the
    runtime would follow it; more than ``max_entries`` entries are refused too.
    """
    if path.is_file():
        return path.stat().st_size
    limit = MAX_MODEL_ENTRIES if max_entries is None else max_entries
    total = 0
    entries = 0
    for dirpath, dirs, files in os.walk(path):
        entries += len(dirs) + len(files)
        if entries > limit:
            raise StorageError(f"model folder {path} holds more than {limit} files and folders; "
                               "refused (is storage pointing at a whole disk?)")
        for name in (*dirs, *files):
            p = Path(dirpath) / name
            if root is not None and p.is_symlink() and not _within(p.resolve(), root):
                raise StorageError(f"{p} is a symlink to {p.resolve()}, outside the storage root {root}; "
                                   "refused")
        for f in files:
            try:
                total += (Path(dirpath) / f).stat().st_size
            except OSError:
                continue
    return total
