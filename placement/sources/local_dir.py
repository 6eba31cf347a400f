"""A folder of KServe manifests as the source of desired state, watched by polling mtimes.

Adding, editing or deleting a ``*.yaml``/``*.yml`` file changes the desired state live. A file
that stops parsing or validating is reported, and its last good version keeps being used (so a
bad edit loses nothing); a model whose new version cannot be resolved (missing file, no runtime)
keeps its last resolved revision while the error is reported. Deleting a file removes its models.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from placement.manifests.desired_state import DesiredState
from placement.manifests.kserve import (
    Document,
    ManifestFile,
    link_outside,
    manifest_files,
    model_key,
    parse_manifest_text,
    resolve,
)
from placement.manifests.local_config import LOCAL_CONFIG_NAME, LocalConfig, load_local_config
from placement.manifests.safe_yaml import size_problem
from placement.manifests.storage import path_stamp

log = logging.getLogger("msm.sources.local_dir")

OnChange = Callable[[DesiredState], Awaitable[None]]
_Stamp = tuple[int, int, int]  # mtime_ns, size, inode


@dataclass
class _FileState:
    stamp: _Stamp
    digest: bytes
    good: tuple[Document, ...]  # the documents in use (the last good version where needed)
    errors: tuple[str, ...]
    kept: str = ""  # what of an earlier version stays in use despite the errors, said in the message


#: A file modified less than this long ago is also compared by content: two writes within one
#: tick of the file system's clock can leave mtime and size unchanged ("racy" stamps).
_RACY_WINDOW_NS = 3_000_000_000


def _stamp(p: Path) -> _Stamp | None:
    try:
        st = p.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _merge(previous: tuple[Document, ...], new: ManifestFile) -> tuple[tuple[Document, ...], str]:
    """The documents to use for a file after an edit, and what of the earlier version they keep.

    Unparseable: the previous version, whole. Parseable: its valid documents, and for each
    invalid one the previous version of the same object (same kind, namespace, name), if any.
    """
    if new.documents is None:
        return previous, _kept_whole(previous)
    by_identity = {d.identity: d for d in previous}
    out: list[Document] = []
    kept: list[str] = []
    for d in new.documents:
        if not d.problems:
            out.append(d)
        elif d.identity in by_identity and all(d.identity):
            out.append(by_identity[d.identity])
            kept.append(f"{d.kind}/{d.name}")
    note = f" (the last good version of {', '.join(kept)} stays in use)" if kept else ""
    return tuple(out), note


def _kept_whole(previous: tuple[Document, ...]) -> str:
    return " (its last good version stays in use)" if previous else ""


class LocalDirSource:
    """Watches ``path`` and calls ``on_change`` with each new :class:`DesiredState`.

    ``local_config`` None: ``msm-local.yaml`` of ``path`` (plus ``pvc_flags``) is read, and
    re-read when it changes.
    """

    def __init__(self, path: str | Path, local_config: LocalConfig | None = None,
                 on_change: OnChange | None = None, poll_interval: float = 0.5,
                 pvc_flags: Sequence[str] = ()) -> None:
        self.path = Path(path).resolve()
        self.on_change = on_change
        self.poll_interval = poll_interval
        self._fixed_config = local_config is not None
        self._pvc_flags = tuple(pvc_flags)
        self._config = local_config
        self._config_stamp: _Stamp | None = None
        self._config_error: str | None = None
        self._files: dict[str, _FileState] = {}
        self._state = DesiredState()
        self._logged_errors: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def state(self) -> DesiredState:
        return self._state

    @property
    def local_config(self) -> LocalConfig | None:
        return self._config

    async def start(self) -> DesiredState:
        """Read the folder, deliver the first state to ``on_change``, then watch."""
        if self._task is not None:
            raise RuntimeError("LocalDirSource already started")
        if not await asyncio.to_thread(self.path.is_dir):
            raise ValueError(f"{self.path} is not a directory")
        await self.poll(force=True)
        self._task = asyncio.create_task(self._run(), name=f"local-dir-source:{self.path}")
        return self._state

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug or an odd file must not stop the watcher
                log.exception("scanning %s failed", self.path)

    async def poll(self, force: bool = False) -> bool:
        """One scan; returns True when the desired state changed (and ``on_change`` was called)."""
        changed = await asyncio.to_thread(self._scan) or force
        if not changed and not self._state.errors:
            return False
        # re-resolve also while there are errors: a missing model file may have appeared
        new = await asyncio.to_thread(self._resolve)
        if not force and new == self._state:
            return False
        self._state = new
        self._log_errors(new.errors)
        if self.on_change is not None:
            try:
                await self.on_change(new)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("on_change failed for the desired state of %s", self.path)
        return True

    # -- blocking parts (run in a thread) ------------------------------------------------------
    def _models_changed(self) -> bool:
        """A local model's file or folder was replaced or rewritten (a failed load may now work)."""
        return any(path_stamp(Path(m.storage_path)) != m.storage_stamp
                   for m in self._state.models.values() if m.storage_stamp is not None)

    def _scan(self) -> bool:
        changed = self._scan_config() | self._models_changed()
        try:
            paths = manifest_files(self.path)
        except OSError as e:
            log.warning("cannot list %s: %s", self.path, e)
            return changed
        present: set[str] = set()
        for p in paths:
            source = p.name
            present.add(source)
            stamp = _stamp(p)
            if stamp is None:
                continue
            old = self._files.get(source)
            if old is not None and old.stamp == stamp and time.time_ns() - stamp[0] > _RACY_WINDOW_NS:
                continue
            # refused unread: a symlink out of the folder, or too large to read at all
            refused = link_outside(p, self.path)
            if refused is None and (too_big := size_problem(stamp[1])) is not None:
                refused = f"{source} {too_big}"
            if refused is not None:
                if old is None or old.errors != (refused,):
                    good = old.good if old else ()
                    self._files[source] = _FileState(stamp, b"", good, (refused,), _kept_whole(good))
                    changed = True
                continue
            try:
                raw = p.read_bytes()
            except OSError:
                continue  # deleted meanwhile: the next scan drops it
            digest = hashlib.sha256(raw).digest()
            if old is not None and old.digest == digest:
                old.stamp = stamp
                continue
            try:
                mf = parse_manifest_text(raw.decode("utf-8"), source)
            except UnicodeDecodeError as e:
                mf = ManifestFile(source, None, (f"{source}: not UTF-8 text: {e}",))
            except Exception as e:  # one odd file must not keep the others from being read
                log.exception("reading %s failed", p)
                mf = ManifestFile(source, None, (f"{source}: cannot be read: {type(e).__name__}",))
            good, kept = _merge(old.good if old else (), mf)
            self._files[source] = _FileState(stamp, digest, good, mf.errors, kept)
            changed = True
        for gone in set(self._files) - present:
            del self._files[gone]
            changed = True
        return changed

    def _scan_config(self) -> bool:
        if self._fixed_config:
            return False
        stamp = _stamp(self.path / LOCAL_CONFIG_NAME)
        if self._config is not None and stamp == self._config_stamp:
            return False
        self._config_stamp = stamp
        try:
            self._config = load_local_config(self.path, self._pvc_flags)
            self._config_error = None
        except (OSError, ValueError) as e:
            self._config_error = f"{e} (the previous local config stays in use)"
            if self._config is None:
                self._config = LocalConfig(base_dir=self.path)
        return True

    def _resolve(self) -> DesiredState:
        documents = [d for f in self._files.values() for d in f.good]
        state = resolve(documents, self._config, incumbents=self._state.models,
                        traffic_incumbents=self._state.virtual_services)
        errors = dict(state.errors)
        for source, f in self._files.items():
            if f.errors:  # report the file's problems (resolve saw its last good docs, if any)
                msg = "\n".join(f.errors) + f.kept
                errors[source] = f"{errors[source]}\n{msg}" if source in errors else msg
        if self._config_error:
            errors[LOCAL_CONFIG_NAME] = self._config_error
        models = dict(state.models)
        isvc_names = {d.name for d in documents if d.kind == "InferenceService"}
        for name, prev in self._state.models.items():
            key = model_key(prev.namespace, name)
            keep = name not in models and key in errors and name in isvc_names
            if keep and prev.runtime in state.runtimes:
                models[name] = prev
                errors[key] += f" (still serving the previous revision {prev.revision_id})"
        return replace(state, models=models, errors=errors)

    def _log_errors(self, errors: dict[str, str]) -> None:
        for key, msg in sorted(errors.items()):
            if self._logged_errors.get(key) != msg:
                log.warning("manifest problem: %s", msg.replace(os.linesep, "; "))
        for key in set(self._logged_errors) - set(errors):
            log.info("manifest problem resolved: %s", key)
        self._logged_errors = dict(errors)
