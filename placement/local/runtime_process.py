"""One local runtime replica: an MLServer process plus msm's MLServer adapter beside it.

This is what a runtime pod is in Kubernetes (MLServer container + adapter sidecar), made of two
local processes on loopback. Ports are free ones picked by msm (the manifest's ports are
container ports, meaningless on one machine); the ServingRuntime's other ``MLSERVER_*`` and
ordinary environment variables are passed on to MLServer, the model server container, and to
nothing else: the adapter is msm's own code and runs in msm's own environment, so a manifest's
``PYTHONPATH`` or ``LD_PRELOAD`` never runs code in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp

from placement.control.runtime_client import RuntimeClient
from placement.engine.model_types import InstanceInfo
from placement.local.ports import free_port
from placement.local.processes import stop_process_group

DEFAULT_CAPACITY_BYTES = 1 << 30
OWNED_ENV = ("MLSERVER_HTTP_PORT", "MLSERVER_GRPC_PORT", "MLSERVER_METRICS_PORT", "MLSERVER_HOST",
             "MLSERVER_MODELS_DIR", "MLSERVER_LOAD_MODELS_AT_STARTUP")
"""Set by msm for every replica, whatever the manifest says."""
#: The folder that holds the ``placement`` package (on the adapter's PYTHONPATH).
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


#: Variables that change how Python or the dynamic loader start a process: from a manifest they
#: reach MLServer only, and the local mesh says so.
STARTUP_ENV_PREFIXES = ("PYTHON", "LD_", "DYLD_")


def local_mesh_notes(rt: Any) -> list[str]:
    """What the local mesh does differently from a pod for this ServingRuntime (to print)."""
    name = _attr(rt, ("name",), "?")
    notes = []
    ignored = [f for f, v in (("image", _attr(rt, ("image",))), ("command", _attr(rt, ("command",))),
                              ("args", _attr(rt, ("args",)))) if v]
    if ignored:
        notes.append(f"runtime {name}: {', '.join(ignored)} of its container ignored: the local mesh runs "
                     "MLServer from msm's own Python environment")
    startup = sorted(k for k in _env_dict(_attr(rt, ("env",))) if k.startswith(STARTUP_ENV_PREFIXES))
    if startup:
        notes.append(f"runtime {name}: env {', '.join(startup)} changes how MLServer's Python starts; "
                     "it is passed to MLServer only, never to msm's adapter")
    return notes


def _attr(obj: Any, names: tuple[str, ...], default: Any = None) -> Any:
    for n in names:
        value = obj.get(n) if isinstance(obj, Mapping) else getattr(obj, n, None)
        if value is not None:
            return value
    return default


def _env_dict(env: Any) -> dict[str, str]:
    """A manifest's env (``[{name, value}]``) or a mapping, as ``{name: value}``."""
    if not env:
        return {}
    if isinstance(env, Mapping):
        return {str(k): str(v) for k, v in env.items() if v is not None}
    out = {}
    for item in env:
        name = _attr(item, ("name",))
        value = _attr(item, ("value",))
        if name and value is not None:  # valueFrom (secrets, fields) has no meaning locally
            out[str(name)] = str(value)
    return out


class ReplicaStartError(RuntimeError):
    """A replica did not come up; the message ends with the tail of the log that says why."""


class RuntimeReplica:
    """An MLServer + adapter pair on loopback, started and stopped together.

    ``address`` is the adapter's ``mmesh.ModelRuntime`` endpoint (the pod's grpcEndpoint);
    ``data_address`` MLServer's gRPC inference port (grpcDataEndpoint); ``rest_url`` its REST.
    """

    def __init__(self, instance_id: str, work_dir: Path | str, *, runtime_name: str = "mlserver",
                 env: Mapping[str, str] | None = None, capacity_bytes: int = DEFAULT_CAPACITY_BYTES,
                 model_loading_timeout_ms: int = 90_000, max_loading_concurrency: int = 1,
                 unload_headroom_bytes: int = 0, implementations: Mapping[str, str] | None = None,
                 measure_model_size: bool = False, base_dir: Path | str | None = None,
                 host: str = "127.0.0.1",
                 start_timeout: float = 90.0, python: str = sys.executable) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", instance_id):
            raise ValueError(f"instance id {instance_id!r}: letters, digits, '.', '_' and '-' only")
        self.instance_id = instance_id
        self.runtime_name = runtime_name
        self.work_dir = Path(work_dir).resolve()
        self.models_dir = self.work_dir / "models"
        self.mlserver_log = self.work_dir / "mlserver.log"
        self.adapter_log = self.work_dir / "adapter.log"
        self.env = dict(env or {})
        self.capacity_bytes = capacity_bytes
        self.model_loading_timeout_ms = model_loading_timeout_ms
        self.max_loading_concurrency = max_loading_concurrency
        self.unload_headroom_bytes = unload_headroom_bytes  # memBufferBytes: see InstanceInfo
        self.implementations = dict(implementations or {})
        self.measure_model_size = measure_model_size
        # what a relative PYTHONPATH of the manifest is relative to (the manifests folder; in a
        # pod it would be the image's working directory)
        self.base_dir = Path(base_dir).resolve() if base_dir is not None else None
        self.host = host
        self.start_timeout = start_timeout
        self.python = python
        self.rest_port = self.grpc_port = self.metrics_port = self.adapter_port = 0
        self._mlserver: asyncio.subprocess.Process | None = None
        self._adapter: asyncio.subprocess.Process | None = None
        self._logs: list[BinaryIO] = []

    @classmethod
    def for_runtime(cls, rt: Any, index: int, state_dir: Path | str, **kwargs: Any) -> RuntimeReplica:
        """Replica ``index`` of a resolved ServingRuntime (attributes or mapping keys, all optional:
        ``name``, ``env``, ``capacity_bytes`` or ``memory_request_bytes`` - ``mem_buffer_bytes``,
        ``load_timeout_ms``, ``max_loading_concurrency``)."""
        name = str(_attr(rt, ("name",), "mlserver"))
        capacity = _attr(rt, ("capacity_bytes",))
        if capacity is None:
            mem = _attr(rt, ("memory_request_bytes", "container_mem_req_bytes"))
            if mem is not None:
                capacity = max(0, int(mem) - int(_attr(rt, ("mem_buffer_bytes",), 0)))
        kwargs.setdefault("capacity_bytes", int(capacity) if capacity else DEFAULT_CAPACITY_BYTES)
        kwargs.setdefault("unload_headroom_bytes", int(_attr(rt, ("mem_buffer_bytes",), 0) or 0))
        timeout = _attr(rt, ("load_timeout_ms", "model_loading_timeout_ms"))
        if timeout is not None:
            kwargs.setdefault("model_loading_timeout_ms", int(timeout))
        conc = _attr(rt, ("max_loading_concurrency",))
        if conc is not None:
            kwargs.setdefault("max_loading_concurrency", int(conc))
        kwargs.setdefault("measure_model_size", bool(_attr(rt, ("measure_model_size",), False)))
        kwargs.setdefault("env", _env_dict(_attr(rt, ("env",))))
        instance_id = f"{name}-{index}"
        return cls(instance_id, Path(state_dir) / instance_id, runtime_name=name, **kwargs)

    # -- addresses ---------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"{self.host}:{self.adapter_port}"

    @property
    def data_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.rest_port}"

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in (self._mlserver, self._adapter) if p is not None]

    def running(self) -> bool:
        """Both processes are alive."""
        return all(p is not None and p.returncode is None for p in (self._mlserver, self._adapter))

    def client(self, **kwargs: Any) -> RuntimeClient:
        """A new SPI client of this replica (the caller closes it)."""
        kwargs.setdefault("load_timeout", self.model_loading_timeout_ms / 1000.0)
        return RuntimeClient(self.address, **kwargs)

    def describe(self) -> dict[str, Any]:
        """JSON-ready facts of this replica (``instances.json`` of the local mesh)."""
        return {
            "id": self.instance_id, "runtime": self.runtime_name, "host": self.host,
            "address": self.address, "adapter_port": self.adapter_port,
            "data_address": self.data_address, "grpc_port": self.grpc_port,
            "rest_url": self.rest_url, "rest_port": self.rest_port, "metrics_port": self.metrics_port,
            "capacity_bytes": self.capacity_bytes, "model_loading_timeout_ms": self.model_loading_timeout_ms,
            "max_loading_concurrency": self.max_loading_concurrency,
            "unload_headroom_bytes": self.unload_headroom_bytes, "models_dir": str(self.models_dir),
            "measure_model_size": self.measure_model_size,
            "mlserver_pid": self._mlserver.pid if self._mlserver else None,
            "adapter_pid": self._adapter.pid if self._adapter else None,
            "mlserver_log": str(self.mlserver_log), "adapter_log": str(self.adapter_log),
        }

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Start MLServer, wait until it is ready, start the adapter, wait until it is READY."""
        if self._mlserver is not None:
            raise RuntimeError(f"{self.instance_id} already started")
        await asyncio.to_thread(self._prepare_dirs)
        try:
            for attempt in range(3):  # a picked port can be taken before MLServer binds it
                if attempt or not self.rest_port:  # a restart tries its old ports first
                    self.rest_port, self.grpc_port, self.metrics_port = (
                        free_port(self.host) for _ in range(3))
                await self._start_mlserver()
                try:
                    await self._wait_mlserver()
                    break
                except ReplicaStartError:
                    if self._mlserver is None or self._mlserver.returncode is None or attempt == 2:
                        raise
                    self._mlserver = None
            for attempt in range(3):
                if attempt or not self.adapter_port:
                    self.adapter_port = free_port(self.host)
                await self._start_adapter()
                try:
                    await self._wait_adapter()
                    break
                except ReplicaStartError:
                    if self._adapter is None or self._adapter.returncode is None or attempt == 2:
                        raise
                    self._adapter = None
        except BaseException:
            await self.stop()
            raise

    def _prepare_dirs(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        # A fresh MLServer holds nothing: leftover model settings from an earlier run would only
        # show as stale entries in its repository index.
        shutil.rmtree(self.models_dir, ignore_errors=True)
        self.models_dir.mkdir(parents=True)
        settings = {"debug": False, "load_models_at_startup": False,
                    "parallel_workers": int(self.env.get("MLSERVER_PARALLEL_WORKERS", 0))}
        (self.models_dir / "settings.json").write_text(json.dumps(settings, indent=2))

    def _msm_env(self) -> dict[str, str]:
        """msm's own environment, with msm's packages importable: the adapter's, whole."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _mlserver_env(self) -> dict[str, str]:
        """msm's environment plus the manifest's env (but the ports and folders msm owns)."""
        env = self._msm_env()
        for k, v in self.env.items():
            if k in OWNED_ENV:
                continue
            if k == "PYTHONPATH":  # the manifest's first (a custom runtime's modules), then msm's
                env[k] = os.pathsep.join(p for p in (*self._manifest_paths(v), env.get(k, "")) if p)
            else:
                env[k] = v
        return env

    def _manifest_paths(self, value: str) -> list[str]:
        """A manifest's PYTHONPATH entries, the relative ones made relative to ``base_dir``."""
        out = []
        for entry in value.split(os.pathsep):
            if entry and self.base_dir is not None and not os.path.isabs(entry):
                entry = str((self.base_dir / entry).resolve())
            out.append(entry)
        return out

    async def _open_log(self, path: Path) -> BinaryIO:
        f = await asyncio.to_thread(open, path, "ab")
        self._logs.append(f)
        return f

    async def _start_mlserver(self) -> None:
        env = self._mlserver_env()
        env.update({"MLSERVER_HOST": self.host, "MLSERVER_HTTP_PORT": str(self.rest_port),
                    "MLSERVER_GRPC_PORT": str(self.grpc_port),
                    "MLSERVER_METRICS_PORT": str(self.metrics_port),
                    "MLSERVER_MODELS_DIR": str(self.models_dir),
                    "MLSERVER_LOAD_MODELS_AT_STARTUP": "false"})
        log = await self._open_log(self.mlserver_log)
        mlserver = shutil.which("mlserver", path=str(Path(self.python).parent)) or shutil.which("mlserver")
        cmd = [mlserver, "start", str(self.models_dir)] if mlserver else \
            [self.python, "-m", "mlserver.cli.main", "start", str(self.models_dir)]
        self._mlserver = await asyncio.create_subprocess_exec(
            *cmd, env=env, cwd=self.work_dir, stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True)

    async def _start_adapter(self) -> None:
        cmd = [self.python, "-m", "placement.adapters.mlserver", "--port", str(self.adapter_port),
               "--host", self.host, "--mlserver-rest-url", self.rest_url,
               "--mlserver-grpc-address", self.data_address, "--models-dir", str(self.models_dir),
               "--capacity-bytes", str(self.capacity_bytes),
               "--model-loading-timeout-ms", str(self.model_loading_timeout_ms),
               "--max-loading-concurrency", str(self.max_loading_concurrency),
               "--mlserver-log", str(self.mlserver_log)]
        for fmt, impl in sorted(self.implementations.items()):
            cmd += ["--implementation", f"{fmt}={impl}"]
        if self.measure_model_size:
            cmd += ["--mlserver-metrics-url", f"http://{self.host}:{self.metrics_port}/metrics",
                    "--measure-model-size"]
        log = await self._open_log(self.adapter_log)
        self._adapter = await asyncio.create_subprocess_exec(
            *cmd, env=self._msm_env(), cwd=self.work_dir, stdout=log, stderr=log,
            stdin=asyncio.subprocess.DEVNULL, start_new_session=True)

    def _deadline(self) -> float:
        return time.monotonic() + self.start_timeout

    async def _wait_mlserver(self) -> None:
        assert self._mlserver is not None
        deadline = self._deadline()
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                if self._mlserver.returncode is not None:
                    raise ReplicaStartError(
                        self._failure("MLServer", self._mlserver.returncode, self.mlserver_log))
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with s.get(self.rest_url + "/v2/health/ready",
                                     timeout=aiohttp.ClientTimeout(total=1)) as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.2)
        raise ReplicaStartError(f"{self.instance_id}: MLServer not ready within {self.start_timeout:.0f}s; "
                                f"see {self.mlserver_log}")

    async def _wait_adapter(self) -> None:
        assert self._adapter is not None
        deadline = self._deadline()
        async with RuntimeClient(self.address, default_timeout=1.0) as c:
            while time.monotonic() < deadline:
                if self._adapter.returncode is not None:
                    raise ReplicaStartError(
                        self._failure("adapter", self._adapter.returncode, self.adapter_log))
                with contextlib.suppress(Exception):
                    if (await c.runtime_status(timeout=1.0)).ready:
                        return
                await asyncio.sleep(0.1)
        raise ReplicaStartError(f"{self.instance_id}: adapter not READY within {self.start_timeout:.0f}s; "
                                f"see {self.adapter_log}")

    def _failure(self, what: str, rc: int, log_path: Path) -> str:
        try:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
        except OSError:
            tail = []
        head = f"{self.instance_id}: {what} exited with code {rc} while starting; {log_path}:\n"
        return head + "\n".join(tail)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop the adapter, then MLServer (SIGTERM to each process group, SIGKILL after ``timeout``)."""
        for proc in (self._adapter, self._mlserver):
            if proc is not None:
                await stop_process_group(proc, timeout)
        self._adapter = self._mlserver = None
        for f in self._logs:
            f.close()
        self._logs.clear()

    def exit_codes(self) -> dict[str, int | None]:
        """Each process's exit code (None: still running)."""
        return {"mlserver": self._mlserver.returncode if self._mlserver else None,
                "adapter": self._adapter.returncode if self._adapter else None}

    async def restart(self) -> bool:
        """Stop what is left of the pair (a lingering adapter or MLServer) and start both again,
        on the same ports if they are still free. Returns whether the ports are the same."""
        before = (self.rest_port, self.grpc_port, self.adapter_port)
        await self.stop()
        await self.start()
        return before == (self.rest_port, self.grpc_port, self.adapter_port)

    async def __aenter__(self) -> RuntimeReplica:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# ---------------------------------------------------------------------------------------------
# instances.json: how ``msm up`` tells the control plane which replicas it started
# ---------------------------------------------------------------------------------------------

def write_instances_file(path: Path, replicas: list[RuntimeReplica]) -> None:
    path.write_text(json.dumps([r.describe() for r in replicas], indent=2))


def read_instances_file(path: Path) -> list[tuple[InstanceInfo, str, float]]:
    """``instances.json`` → (instance, SPI address, load timeout in seconds) per replica."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the runtime instances file {path}: {e}") from e
    out = []
    for r in raw:
        info = InstanceInfo(id=r["id"], runtime=r["runtime"], address=r["host"],
                            rest_port=int(r["rest_port"]), grpc_port=int(r["grpc_port"]),
                            capacity_bytes=int(r["capacity_bytes"]),
                            max_concurrent_loads=int(r.get("max_loading_concurrency") or 1),
                            unload_headroom_bytes=int(r.get("unload_headroom_bytes") or 0))
        out.append((info, r["address"], int(r.get("model_loading_timeout_ms") or 90_000) / 1000.0))
    return out
