"""msm's adapter for MLServer: ``mmesh.ModelRuntime`` in front of one MLServer process.

ModelMesh calls this ``builtInAdapter.serverType: mlserver``. For each loadModel it writes
``<models_dir>/<modelId>/model-settings.json`` (the MLServer implementation for the model's
format, ``parameters.uri`` = the model's path) and asks MLServer to load it through its model
repository API; unloadModel unloads it and removes the folder. MLServer must run with
``MLSERVER_MODELS_DIR`` (or ``mlserver start``'s folder) = ``models_dir`` and
``load_models_at_startup`` false.

Once MLServer has loaded a model, its settings file is renamed to ``model-settings.loaded.json``:
MLServer finds the model to load by parsing every ``model-settings.json`` under its repository
(about 1.5 ms each), so a repository that kept every loaded model's file would make each load
cost more the more models the runtime holds (SeldonIO/MLServer#976). The repository holds only
the loads in progress; MLServer's registry holds what is loaded.

Beside the SPI it serves ``msm.RuntimeInventory/listModels`` (MLServer's repository index for the
loads in progress, MLServer's per-model readiness for the loaded ones), so that a restarted
control plane adopts what is loaded instead of loading it again.

Run: ``python -m placement.adapters.mlserver --port P --mlserver-rest-url URL --models-dir DIR
--capacity-bytes N [--mlserver-grpc-address HOST:PORT]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import grpc

from placement.protos import mlserver_repository_pb2 as repo_pb
from placement.protos import model_runtime_pb2 as pb
from placement.protos import model_runtime_pb2_grpc as pb_grpc
from placement.protos import runtime_inventory_pb2 as inv_pb
from placement.protos import runtime_inventory_pb2_grpc as inv_grpc

log = logging.getLogger("msm.adapter.mlserver")

SETTINGS_FILE = "model-settings.json"
LOADED_SETTINGS_FILE = "model-settings.loaded.json"
"""A loaded model's settings, under a name MLServer's repository scan does not read."""
INVENTORY_CONCURRENCY = 16
"""Readiness questions to MLServer in flight at once while listing the loaded models."""
STATE_FILE = "msm-model.json"
"""Beside each model's settings: what msm knows of it (type, path, size)."""

IMPLEMENTATIONS = {
    "sklearn": "mlserver_sklearn.SKLearnModel",
    "xgboost": "mlserver_xgboost.XGBoostModel",
    "lightgbm": "mlserver_lightgbm.LightGBMModel",
    "mlflow": "mlserver_mlflow.MLflowRuntime",
    "huggingface": "mlserver_huggingface.HuggingFaceRuntime",
    "catboost": "mlserver_catboost.CatboostModel",
}
"""MLServer implementation per model format; other formats need ``--implementation``, the
model key's ``implementation`` or MLServer's ``MLSERVER_MODEL_IMPLEMENTATION``."""

# V2 inference methods and the field number of their model name (ModelInferRequest.model_name = 1).
METHOD_INFOS = {
    "inference.GRPCInferenceService/ModelInfer": [1],
    "inference.GRPCInferenceService/ModelMetadata": [1],
    "inference.GRPCInferenceService/ModelReady": [1],
}


PVC_WALK_LIMIT = 100_000
_PVC_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def pvc_model_path(model_path: str, mount_root: Path) -> Path:
    """``pvc://<pvc>/<path>`` as the file or folder under ``<mount_root>/<pvc>``.

    The PVC rule of a runtime pod: the path, with every symlink followed, stays inside its PVC's
    mount; anything else (another scheme, a bare path, ``..``, a symlink out) is a ValueError.
    """
    scheme, sep, rest = model_path.partition("://")
    if not sep or scheme != "pvc":
        raise ValueError(f"model path {model_path!r}: a runtime pod reads models from PVCs only "
                         "(storage parameters type pvc, or storageUri pvc://<pvc>/<path>)")
    name, _, rel = rest.partition("/")
    if not _PVC_NAME.fullmatch(name):
        raise ValueError(f"model path {model_path!r}: {name!r} is not a PVC name")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ValueError(f"model path {model_path!r}: the path inside the PVC must name a file or "
                         "folder, without '..'")
    base = (mount_root / name).resolve()
    target = base.joinpath(*parts).resolve()

    def inside(p: Path) -> bool:
        return p == base or base in p.parents

    if not inside(target):
        raise ValueError(f"model path {model_path!r} leads to {target}, outside the PVC {name} "
                         f"mounted at {mount_root / name}")
    if target.is_dir():  # a symlink inside a model folder must not lead out either
        for n, p in enumerate(target.rglob("*")):
            if n >= PVC_WALK_LIMIT:
                raise ValueError(f"model path {model_path!r}: more than {PVC_WALK_LIMIT} entries")
            if p.is_symlink() and not inside(p.resolve()):
                raise ValueError(f"model path {model_path!r}: {p.relative_to(base)} leads to {p.resolve()}, "
                                 f"outside the PVC {name}")
    return target


@dataclass
class AdapterConfig:
    """How the adapter reaches MLServer and what it reports in runtimeStatus."""

    mlserver_rest_url: str
    models_dir: Path
    port: int = 8085
    host: str = "127.0.0.1"
    mlserver_grpc_address: str | None = None
    capacity_bytes: int | None = None
    container_mem_req_bytes: int | None = None
    mem_buffer_bytes: int = 0
    max_loading_concurrency: int = 1
    model_loading_timeout_ms: int = 90_000
    default_model_size_bytes: int = 1_000_000
    model_size_multiplier: float = 1.25
    limit_model_concurrency: int = 0
    implementations: dict[str, str] = field(default_factory=dict)
    mlserver_log: Path | None = None
    """MLServer's log file, if this adapter can read it: load errors then quote its exception line."""
    pvc_mount_root: Path | None = None
    """In a pod: where the PVCs are mounted (``<root>/<pvc>``); then only ``pvc://`` paths load."""
    mlserver_metrics_url: str | None = None
    """MLServer's Prometheus endpoint (``http://127.0.0.1:8082/metrics``)."""
    measure_model_size: bool = False
    """Account a model by what MLServer's resident memory grew by while it loaded (read from
    ``mlserver_metrics_url``), never less than the estimate from disk; a model that turns out
    bigger than the capacity is unloaded and refused."""

    def capacity(self) -> int:
        """Bytes for models: ``capacity_bytes``, else container memory request - buffer."""
        if self.capacity_bytes is not None:
            return self.capacity_bytes
        if self.container_mem_req_bytes is not None:
            return max(0, self.container_mem_req_bytes - self.mem_buffer_bytes)
        return 1 << 30


class MLServerError(Exception):
    """A failed call to MLServer, with MLServer's own text and the gRPC code to answer with."""

    def __init__(self, code: grpc.StatusCode, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


class _Refused(MLServerError):
    """A load refused before MLServer is asked (its path, its settings), with the caller's text."""


class MLServerBackend:
    """MLServer's health, metadata and model repository APIs (REST; loads over gRPC if known)."""

    def __init__(self, rest_url: str, grpc_address: str | None, metrics_url: str | None = None) -> None:
        self.rest_url = rest_url.rstrip("/")
        self.grpc_address = grpc_address
        self.metrics_url = metrics_url
        self._session: aiohttp.ClientSession | None = None
        self._channel: grpc.aio.Channel | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=5))
        if self.grpc_address:
            self._channel = grpc.aio.insecure_channel(
                self.grpc_address, options=[("grpc.max_receive_message_length", 16 << 20)])

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._channel is not None:
            await self._channel.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "MLServerBackend.start() first"
        return self._session

    async def _get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        async with self.session.get(self.rest_url + path, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            return r.status, await r.text()

    async def live(self) -> bool:
        try:
            return (await self._get("/v2/health/live"))[0] == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def ready(self) -> bool:
        return await self.health() == "ready"

    async def health(self, timeout: float = 2.0) -> str:
        """``ready``, ``not ready`` (it answered so), ``busy`` (it took the connection but did not
        answer in time: with no parallel workers, a large inference holds MLServer's event loop)
        or ``down`` (nothing listens)."""
        try:
            status, _ = await self._get("/v2/health/ready", timeout)
        except TimeoutError:
            return "busy"
        except aiohttp.ClientConnectorError:
            return "down"
        except aiohttp.ClientError:
            return "busy"  # the connection broke mid-answer: alive, but not answering cleanly
        return "ready" if status == 200 else "not ready"

    async def version(self) -> str:
        try:
            status, body = await self._get("/v2")
            if status == 200:
                meta = json.loads(body)
                return f"{meta.get('name', 'mlserver')}-{meta.get('version', '')}"
        except (aiohttp.ClientError, TimeoutError, ValueError):
            pass
        return ""

    async def resident_bytes(self) -> int | None:
        """MLServer's resident memory (its ``process_resident_memory_bytes``), or None if unknown.

        With parallel workers the models live in the workers, which this does not see."""
        if not self.metrics_url:
            return None
        try:
            async with self.session.get(self.metrics_url, timeout=aiohttp.ClientTimeout(total=5)) as r:
                if r.status != 200:
                    return None
                text = await r.text()
        except (aiohttp.ClientError, TimeoutError):
            return None
        return parse_resident_bytes(text)

    async def model_ready(self, name: str, timeout: float = 5.0) -> bool:
        """Whether MLServer's registry holds ``name``, ready (false: unknown or not ready)."""
        with _rest_errors(timeout):
            status, _ = await self._get(f"/v2/models/{quote(name, safe='')}/ready", timeout)
        if status >= 500:
            raise MLServerError(_http_code(status), f"model {name} readiness: HTTP {status}")
        return status == 200

    async def load(self, name: str, timeout: float) -> None:
        if self._channel is not None:
            await self._grpc_call("RepositoryModelLoad", repo_pb.RepositoryModelLoadRequest(model_name=name),
                                  repo_pb.RepositoryModelLoadResponse, timeout)
        else:
            await self._post(f"/v2/repository/models/{quote(name, safe='')}/load", timeout)

    async def unload(self, name: str, timeout: float) -> None:
        """Unload ``name``; a model that MLServer does not know is not an error."""
        try:
            if self._channel is not None:
                await self._grpc_call("RepositoryModelUnload",
                                      repo_pb.RepositoryModelUnloadRequest(model_name=name),
                                      repo_pb.RepositoryModelUnloadResponse, timeout)
            else:
                await self._post(f"/v2/repository/models/{quote(name, safe='')}/unload", timeout)
        except MLServerError as e:
            if e.code != grpc.StatusCode.NOT_FOUND:
                raise

    async def index(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """MLServer's repository index: ``[{name, version, state, reason}]``."""
        try:
            async with self.session.post(self.rest_url + "/v2/repository/index", json={},
                                         timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                text = await r.text()
                if r.status != 200:
                    raise MLServerError(_http_code(r.status), _error_text(r.status, text))
                return json.loads(text)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise MLServerError(grpc.StatusCode.UNAVAILABLE, f"MLServer unreachable: {e!r}") from e

    async def _post(self, path: str, timeout: float) -> None:
        with _rest_errors(timeout):
            async with self.session.post(self.rest_url + path,
                                         timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                if r.status != 200:
                    raise MLServerError(_http_code(r.status), _error_text(r.status, await r.text()))

    async def _grpc_call(self, method: str, request: Any, response_type: Any, timeout: float) -> None:
        assert self._channel is not None
        call = self._channel.unary_unary(f"/inference.GRPCInferenceService/{method}",
                                         request_serializer=type(request).SerializeToString,
                                         response_deserializer=response_type.FromString)
        try:
            await call(request, timeout=timeout)
        except grpc.aio.AioRpcError as e:
            raise MLServerError(e.code(), e.details() or e.code().name) from e


@contextlib.contextmanager
def _rest_errors(timeout: float) -> Iterator[None]:
    """A REST call to MLServer that timed out or could not connect, as an :class:`MLServerError`."""
    try:
        yield
    except TimeoutError as e:
        raise MLServerError(grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within {timeout:.0f}s") from e
    except aiohttp.ClientError as e:
        raise MLServerError(grpc.StatusCode.UNAVAILABLE, f"MLServer unreachable: {e!r}") from e


def _http_code(status: int) -> grpc.StatusCode:
    return {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
            422: grpc.StatusCode.INVALID_ARGUMENT, 503: grpc.StatusCode.UNAVAILABLE}.get(
        status, grpc.StatusCode.INTERNAL)


def _error_text(status: int, body: str) -> str:
    """MLServer's ``{"error": "..."}`` text, else the body, else the HTTP status."""
    with contextlib.suppress(ValueError, AttributeError):
        err = json.loads(body).get("error")
        if err:
            return str(err)
    return body.strip() or f"HTTP {status}"


def parse_resident_bytes(metrics_text: str) -> int | None:
    """``process_resident_memory_bytes`` from a Prometheus text exposition, or None."""
    for line in metrics_text.splitlines():
        if line.startswith("process_resident_memory_bytes"):
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "process_resident_memory_bytes":
                try:
                    value = float(parts[1])
                except ValueError:
                    return None
                return int(value) if value >= 0 and value == value and value != float("inf") else None
    return None


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n} bytes"


def safe_model_dir(models_dir: Path, model_id: str) -> Path:
    """``models_dir/model_id``, refusing ids that would leave ``models_dir``."""
    if (not model_id or model_id in (".", "..") or "/" in model_id or "\\" in model_id
            or "\0" in model_id or model_id.startswith(".")):
        raise ValueError(f"invalid modelId {model_id!r}: it must be a plain name, not a path")
    return models_dir / model_id


def parse_model_key(model_key: str) -> dict[str, Any]:
    """The model key's JSON (ModelMesh: model_type, storage_key, disk_size_bytes, ...), or {}."""
    if not model_key:
        return {}
    try:
        key = json.loads(model_key)
    except ValueError:
        return {}
    return key if isinstance(key, dict) else {}


def model_format(model_type: str, key: dict[str, Any]) -> str:
    """The format's name, lower case, without a ``:version`` suffix (or from the model key)."""
    name = model_type
    if not name:
        mt = key.get("model_type")
        name = mt.get("name", "") if isinstance(mt, dict) else str(mt or "")
    return name.split(":", 1)[0].strip().lower()


_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)(: .*)?$")


def last_exception_line(log_path: Path, max_bytes: int = 64_000) -> str:
    """The last ``SomeError: message`` line of a log (the end of its last traceback), or ""."""
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            tail = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(tail):
        if _EXC_LINE.match(line.strip()):
            return line.strip()[:500]
    return ""


def path_size(path: Path) -> int:
    """Bytes on disk of a file, or of the files under a folder."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, f)).st_size
    return total


class MLServerAdapter(pb_grpc.ModelRuntimeServicer, inv_grpc.RuntimeInventoryServicer):
    """The SPI (and msm's inventory) for one MLServer."""

    def __init__(self, config: AdapterConfig, backend: MLServerBackend | None = None) -> None:
        self.config = config
        self.models_dir = Path(config.models_dir).resolve()
        self.backend = backend or MLServerBackend(config.mlserver_rest_url, config.mlserver_grpc_address,
                                                  config.mlserver_metrics_url)
        self._loading = 0  # loads in MLServer now
        self._loads_started = 0  # ever: a measurement is clean only if no other load overlapped it
        self._locks: dict[str, asyncio.Lock] = {}
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._was_ready = False  # the last runtimeStatus said READY
        self._version = ""
        self._background: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        await self.backend.start()

    async def close(self) -> None:
        for t in list(self._background):
            t.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.backend.close()

    def _lock(self, model_id: str) -> asyncio.Lock:
        return self._locks.setdefault(model_id, asyncio.Lock())

    @property
    def _load_timeout(self) -> float:
        return self.config.model_loading_timeout_ms / 1000.0

    # -- sizing ------------------------------------------------------------------------------
    def estimate_size(self, model_path: str, key: dict[str, Any]) -> int:
        """Bytes on disk x multiplier (ModelMesh's estimate), or the default size if unknown."""
        disk = key.get("disk_size_bytes")
        if not isinstance(disk, int) or disk <= 0:
            try:
                disk = path_size(Path(model_path))
            except OSError:
                disk = 0
        if disk <= 0:
            return self.config.default_model_size_bytes
        return max(1, int(disk * self.config.model_size_multiplier))

    def _read_state(self, model_id: str) -> dict[str, Any]:
        try:
            return json.loads((self.models_dir / model_id / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}

    # -- model settings ----------------------------------------------------------------------
    def _settings(self, model_id: str, fmt: str, model_path: Path, key: dict[str, Any]) -> dict[str, Any]:
        native = model_path / SETTINGS_FILE
        if model_path.is_dir() and native.is_file():
            # The model brings its own settings: keep them, with msm's name and an absolute uri.
            settings = json.loads(native.read_text())
            settings["name"] = model_id
            params = settings.setdefault("parameters", {})
            uri = params.get("uri")
            params["uri"] = str((model_path / uri).resolve()) if uri else str(model_path)
            return settings
        settings: dict[str, Any] = {"name": model_id, "parameters": {"uri": str(model_path)}}
        impl = key.get("implementation") or self.config.implementations.get(fmt) or IMPLEMENTATIONS.get(fmt)
        if impl:
            settings["implementation"] = impl
        return settings

    def _write_model_dir(self, model_id: str, settings: dict[str, Any], state: dict[str, Any]) -> None:
        d = safe_model_dir(self.models_dir, model_id)
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        self._write_state(model_id, state)
        tmp = d / f".{SETTINGS_FILE}.tmp"  # MLServer only picks up the complete file
        tmp.write_text(json.dumps(settings, indent=2))
        os.replace(tmp, d / SETTINGS_FILE)

    def _model_path(self, model_path: str) -> Path:
        """Where the model is on this pod's (or machine's) file system; ValueError if off limits."""
        if self.config.pvc_mount_root is not None:
            return pvc_model_path(model_path, self.config.pvc_mount_root)
        return Path(os.path.abspath(model_path))

    def _prepare(self, model_id: str, fmt: str, raw_path: str,
                 key: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """All a load does on the file system before MLServer is asked, in one thread hand-off
        (each costs a few tenths of a millisecond on a busy machine): the model's path checked,
        its settings and state written. Returns ``(settings, state)``; raises ``_Refused``."""
        try:
            model_path = self._model_path(raw_path)
        except ValueError as e:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, f"model {model_id}: {e}") from None
        if not model_path.exists():
            raise _Refused(grpc.StatusCode.FAILED_PRECONDITION,
                           f"model {model_id}: model path {raw_path} does not exist")
        try:
            settings = self._settings(model_id, fmt, model_path, key)
            state = {"modelType": fmt, "modelPath": str(model_path),
                     "sizeInBytes": self.estimate_size(str(model_path), key)}
            self._write_model_dir(model_id, settings, state)
        except (OSError, ValueError) as e:
            raise _Refused(grpc.StatusCode.FAILED_PRECONDITION,
                           f"model {model_id}: cannot write MLServer settings: {e}") from None
        return settings, state

    def _remove_model_dir(self, model_id: str) -> None:
        shutil.rmtree(self.models_dir / model_id, ignore_errors=True)

    # -- mmesh.ModelRuntime ------------------------------------------------------------------
    async def loadModel(self, request: pb.LoadModelRequest,
                        context: grpc.aio.ServicerContext) -> pb.LoadModelResponse:
        model_id = request.modelId
        key = parse_model_key(request.modelKey)
        fmt = model_format(request.modelType, key)
        try:
            safe_model_dir(self.models_dir, model_id)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if not request.modelPath:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"model {model_id}: no modelPath")
        async with self._lock(model_id):
            try:
                settings, state = await asyncio.to_thread(self._prepare, model_id, fmt, request.modelPath,
                                                          key)
            except _Refused as e:
                await context.abort(e.code, e.text)
            size = state["sizeInBytes"]
            log.info("loading %s (%s) from %s", model_id, fmt or "?", state["modelPath"])
            measuring = self.config.measure_model_size and self._loading == 0
            before = await self.backend.resident_bytes() if measuring else None
            self._loads_started += 1
            seq = self._loads_started
            self._loading += 1
            task = asyncio.create_task(self._load_in_mlserver(model_id))
            self._inflight[model_id] = task
            task.add_done_callback(lambda _t, m=model_id: self._inflight.pop(m, None))
            try:
                # Shielded: if the caller gives up, the load still finishes (or fails) here, and
                # the unloadModel that follows waits for it, so nothing stays loaded by accident.
                await asyncio.shield(task)
            except MLServerError as e:
                await context.abort(e.code, await self._explain(model_id, fmt, settings, e))
            finally:
                self._loading -= 1
            if before is not None and seq == self._loads_started:
                after = await self.backend.resident_bytes()
                if after is not None:
                    size = await self._account_measured(model_id, state, size, after - before, context)
        log.info("loaded %s (%d bytes)", model_id, size)
        return pb.LoadModelResponse(sizeInBytes=size, maxConcurrency=self.config.limit_model_concurrency)

    async def _account_measured(self, model_id: str, state: dict[str, Any], estimate: int, grew: int,
                                context: grpc.aio.ServicerContext) -> int:
        """The size of a model just loaded, from what MLServer's memory grew by (never below the
        estimate); a model bigger than this runtime's capacity is unloaded and refused."""
        size = max(estimate, grew)
        capacity = self.config.capacity()
        if size > capacity:
            await self._discard(model_id)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"model {model_id} takes {_mib(size)} once loaded (MLServer's resident memory grew by "
                f"{_mib(grew)}), more than this runtime's capacity of {_mib(capacity)} (memory request "
                "less memBufferBytes): it was unloaded")
        state = {**state, "sizeInBytes": size, "measuredBytes": grew, "estimatedBytes": estimate}
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self._write_state, model_id, state)
        log.info("%s: resident memory grew by %d bytes while loading (estimate %d)", model_id, grew, estimate)
        return size

    def _write_state(self, model_id: str, state: dict[str, Any]) -> None:
        d = self.models_dir / model_id
        tmp = d / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, d / STATE_FILE)

    async def _explain(self, model_id: str, fmt: str, settings: dict[str, Any], e: MLServerError) -> str:
        """The text of a failed load: MLServer's message, with what else is known of the cause."""
        text = f"MLServer failed to load model {model_id}: {e.text}"
        if e.code == grpc.StatusCode.NOT_FOUND and "implementation" not in settings:
            # MLServer could not read settings without an implementation; its answer says only
            # "not found", so say what is missing.
            return (f"{text} (format '{fmt}' has no known MLServer implementation: run the adapter with "
                    f"--implementation {fmt or 'FORMAT'}=module.Class, or set MLSERVER_MODEL_IMPLEMENTATION "
                    f"in the runtime's env)")
        opaque = e.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
        if self.config.mlserver_log is not None and opaque:
            line = await asyncio.to_thread(last_exception_line, self.config.mlserver_log)
            if line and line not in text:
                text += f" ({line})"
        return text

    async def _load_in_mlserver(self, model_id: str) -> None:
        try:
            await self.backend.load(model_id, self._load_timeout)
        except BaseException:
            await self._discard(model_id)
            raise
        try:
            await asyncio.to_thread(self._settle, model_id)
        except OSError as e:  # loaded all the same; MLServer's later loads only parse one file more
            log.warning("%s: cannot take its settings out of MLServer's repository scan: %s", model_id, e)

    def _settle(self, model_id: str) -> None:
        d = self.models_dir / model_id
        os.replace(d / SETTINGS_FILE, d / LOADED_SETTINGS_FILE)

    def _settled_models(self) -> list[str]:
        """The models whose load finished here (their settings renamed), by folder."""
        try:
            return sorted(d.name for d in self.models_dir.iterdir()
                          if not d.name.startswith(".") and (d / LOADED_SETTINGS_FILE).is_file())
        except OSError:
            return []

    async def _discard(self, model_id: str) -> None:
        """Leave nothing of a model that failed or was refused: not in MLServer's index, not in
        memory, not in the models folder."""
        with contextlib.suppress(Exception):
            await self.backend.unload(model_id, 30.0)
        await asyncio.to_thread(self._remove_model_dir, model_id)

    async def unloadModel(self, request: pb.UnloadModelRequest,
                          context: grpc.aio.ServicerContext) -> pb.UnloadModelResponse:
        model_id = request.modelId
        try:
            safe_model_dir(self.models_dir, model_id)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        inflight = self._inflight.get(model_id)
        if inflight is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(inflight)
        async with self._lock(model_id):
            try:
                await self.backend.unload(model_id, self._load_timeout)
            except MLServerError as e:
                await context.abort(e.code, f"MLServer failed to unload model {model_id}: {e.text}")
            await asyncio.to_thread(self._remove_model_dir, model_id)
        self._locks.pop(model_id, None)
        log.info("unloaded %s", model_id)
        return pb.UnloadModelResponse()

    async def predictModelSize(self, request: pb.PredictModelSizeRequest,
                               context: grpc.aio.ServicerContext) -> pb.PredictModelSizeResponse:
        key = parse_model_key(request.modelKey)
        try:
            path = str(await asyncio.to_thread(self._model_path, request.modelPath))
        except ValueError:  # loadModel says why; the size is the default meanwhile
            return pb.PredictModelSizeResponse(sizeInBytes=self.config.default_model_size_bytes)
        size = await asyncio.to_thread(self.estimate_size, path, key)
        return pb.PredictModelSizeResponse(sizeInBytes=size)

    async def modelSize(self, request: pb.ModelSizeRequest,
                        context: grpc.aio.ServicerContext) -> pb.ModelSizeResponse:
        try:
            safe_model_dir(self.models_dir, request.modelId)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        state = await asyncio.to_thread(self._read_state, request.modelId)
        if not state:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.modelId} is not loaded")
        return pb.ModelSizeResponse(sizeInBytes=int(state.get("sizeInBytes") or
                                                    self.config.default_model_size_bytes))

    async def runtimeStatus(self, request: pb.RuntimeStatusRequest,
                            context: grpc.aio.ServicerContext) -> pb.RuntimeStatusResponse:
        # MLServer's readiness is "every model in the registry is ready", which a load in
        # progress makes false for a moment; that is still a ready runtime. A busy MLServer (it
        # took the health request but is still computing something else) that was ready is
        # ready: health must not share the fate of the request path.
        health = await self.backend.health()
        ready = (health == "ready" or (health == "busy" and self._was_ready)
                 or (bool(self._inflight) and await self.backend.live()))
        self._was_ready = ready and health != "down"
        if health == "ready":
            self._version = await self.backend.version() or self._version
        version = self._version if ready else ""
        c = self.config
        return pb.RuntimeStatusResponse(
            status=pb.RuntimeStatusResponse.READY if ready else pb.RuntimeStatusResponse.STARTING,
            capacityInBytes=c.capacity(),
            maxLoadingConcurrency=c.max_loading_concurrency,
            modelLoadingTimeoutMs=c.model_loading_timeout_ms,
            defaultModelSizeInBytes=c.default_model_size_bytes,
            runtimeVersion=version,
            numericRuntimeVersion=_numeric_version(version),
            methodInfos={m: pb.RuntimeStatusResponse.MethodInfo(idInjectionPath=p)
                         for m, p in METHOD_INFOS.items()},
            limitModelConcurrency=c.limit_model_concurrency > 0,
            allowAnyMethod=False,
        )

    # -- msm.RuntimeInventory ----------------------------------------------------------------
    async def listModels(self, request: inv_pb.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> inv_pb.ListModelsResponse:
        try:
            items = await self.backend.index()
        except MLServerError as e:
            await context.abort(e.code, f"MLServer repository index failed: {e.text}")
        states = {"READY": inv_pb.RuntimeModel.READY, "LOADING": inv_pb.RuntimeModel.LOADING,
                  "UNAVAILABLE": inv_pb.RuntimeModel.UNAVAILABLE, "FAILED": inv_pb.RuntimeModel.FAILED}
        indexed = {str(item.get("name")) for item in items}
        settled = [m for m in await asyncio.to_thread(self._settled_models) if m not in indexed]
        limit = asyncio.Semaphore(INVENTORY_CONCURRENCY)

        async def readiness(name: str) -> dict[str, Any]:
            async with limit:
                if await self.backend.model_ready(name):
                    return {"name": name, "state": "READY"}
            return {"name": name, "state": "UNAVAILABLE",
                    "reason": "loaded here once, but not in MLServer's registry now"}

        try:
            items = [*items, *await asyncio.gather(*(readiness(m) for m in settled))]
        except MLServerError as e:
            await context.abort(e.code, f"MLServer model readiness failed: {e.text}")
        models = []
        for item in items:
            name = item.get("name")
            if not name or name.startswith("."):
                continue
            state = states.get(str(item.get("state", "")).upper(), inv_pb.RuntimeModel.UNKNOWN)
            if name in self._inflight:
                state = inv_pb.RuntimeModel.LOADING
            if request.readyOnly and state != inv_pb.RuntimeModel.READY:
                continue
            info = await asyncio.to_thread(self._read_state, name)
            models.append(inv_pb.RuntimeModel(
                modelId=name, state=state, reason=item.get("reason") or "",
                sizeInBytes=int(info.get("sizeInBytes") or self.config.default_model_size_bytes),
                modelType=info.get("modelType", ""), modelPath=info.get("modelPath", "")))
        return inv_pb.ListModelsResponse(models=models)


def _numeric_version(version: str) -> int:
    """``mlserver-1.7.1`` → 1007001 (the deprecated numericRuntimeVersion)."""
    digits = version.rsplit("-", 1)[-1].split(".")
    try:
        parts = [int(p) for p in digits[:3]]
    except ValueError:
        return 0
    parts += [0] * (3 - len(parts))
    return parts[0] * 1_000_000 + parts[1] * 1_000 + parts[2]


async def serve(config: AdapterConfig, stop: asyncio.Event | None = None) -> None:
    """Serve the adapter on ``config.host:config.port`` until ``stop`` is set (or cancelled)."""
    adapter = MLServerAdapter(config)
    await adapter.start()
    server = grpc.aio.server()
    pb_grpc.add_ModelRuntimeServicer_to_server(adapter, server)
    inv_grpc.add_RuntimeInventoryServicer_to_server(adapter, server)
    bound = server.add_insecure_port(f"{config.host}:{config.port}")
    if bound == 0:
        raise OSError(f"cannot listen on {config.host}:{config.port}")
    await server.start()
    log.info("MLServer adapter on %s:%d for %s (models in %s, capacity %d bytes)", config.host, bound,
             config.mlserver_rest_url, adapter.models_dir, config.capacity())
    try:
        if stop is None:
            await server.wait_for_termination()
        else:
            await stop.wait()
    finally:
        await server.stop(grace=2)
        await adapter.close()


def _env_int(name: str, default: int | None) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else default


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="msm adapter",
                                description="msm's mmesh.ModelRuntime adapter for one MLServer")
    p.add_argument("--port", type=int, default=_env_int("ADAPTER_PORT", 8085),
                   help="gRPC port (grpcEndpoint)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (0.0.0.0 in a pod)")
    p.add_argument("--mlserver-rest-url", required=True, help="e.g. http://127.0.0.1:8002")
    p.add_argument("--mlserver-grpc-address", default=None,
                   help="MLServer's gRPC host:port; loads then go over gRPC, which carries MLServer's "
                        "error text even for unexpected load failures")
    p.add_argument("--models-dir", required=True, type=Path, help="MLServer's model repository folder")
    p.add_argument("--capacity-bytes", type=int, default=_env_int("CAPACITY_IN_BYTES", None))
    p.add_argument("--container-mem-req-bytes", type=int, default=_env_int("CONTAINER_MEM_REQ_BYTES", None),
                   help="with --mem-buffer-bytes: capacity = request - buffer (if no --capacity-bytes)")
    p.add_argument("--mem-buffer-bytes", type=int, default=_env_int("MEM_BUFFER_BYTES", 0))
    p.add_argument("--max-loading-concurrency", type=int, default=_env_int("LOADING_CONCURRENCY", 1))
    p.add_argument("--model-loading-timeout-ms", type=int, default=_env_int("LOADTIME_TIMEOUT", 90_000))
    p.add_argument("--default-model-size-bytes", type=int,
                   default=_env_int("DEFAULT_MODELSIZE", 1_000_000))
    p.add_argument("--model-size-multiplier", type=float,
                   default=float(os.environ.get("MODELSIZE_MULTIPLIER") or 1.25))
    p.add_argument("--limit-model-concurrency", type=int, default=_env_int("LIMIT_PER_MODEL_CONCURRENCY", 0),
                   help="report this maxConcurrency per model (0: no limit)")
    p.add_argument("--implementation", action="append", default=[], metavar="FORMAT=MODULE.CLASS",
                   help="MLServer implementation of a model format (repeatable)")
    p.add_argument("--mlserver-log", type=Path, default=None,
                   help="MLServer's log file (local mesh): load errors then quote its exception line")
    p.add_argument("--pvc-mount-root", type=Path, default=None,
                   help="in a pod: where the PVCs are mounted (<root>/<pvc name>); model paths must then "
                        "be pvc://<pvc>/<path> and stay inside their PVC")
    p.add_argument("--mlserver-metrics-url", default=None,
                   help="MLServer's Prometheus endpoint, e.g. http://127.0.0.1:8082/metrics")
    p.add_argument("--measure-model-size", action="store_true",
                   help="account each model by what MLServer's resident memory grew by while it loaded "
                        "(needs --mlserver-metrics-url and no parallel workers); never less than the "
                        "estimate from disk")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def config_from_args(args: argparse.Namespace) -> AdapterConfig:
    impls = {}
    for item in args.implementation:
        fmt, sep, impl = item.partition("=")
        if not sep or not fmt or not impl:
            raise SystemExit(f"--implementation wants FORMAT=MODULE.CLASS, not {item!r}")
        impls[fmt.strip().lower()] = impl.strip()
    if args.measure_model_size and not args.mlserver_metrics_url:
        raise SystemExit("--measure-model-size needs --mlserver-metrics-url (MLServer's /metrics)")
    return AdapterConfig(
        mlserver_rest_url=args.mlserver_rest_url, models_dir=args.models_dir, port=args.port, host=args.host,
        mlserver_grpc_address=args.mlserver_grpc_address, capacity_bytes=args.capacity_bytes,
        container_mem_req_bytes=args.container_mem_req_bytes, mem_buffer_bytes=args.mem_buffer_bytes,
        max_loading_concurrency=args.max_loading_concurrency,
        model_loading_timeout_ms=args.model_loading_timeout_ms,
        default_model_size_bytes=args.default_model_size_bytes,
        model_size_multiplier=args.model_size_multiplier,
        limit_model_concurrency=args.limit_model_concurrency, implementations=impls,
        mlserver_log=args.mlserver_log, pvc_mount_root=args.pvc_mount_root,
        mlserver_metrics_url=args.mlserver_metrics_url, measure_model_size=args.measure_model_size)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    config = config_from_args(args)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
