"""The controller's client of one runtime's model-runtime SPI (``mmesh.ModelRuntime``).

Any runtime that ModelMesh can drive works here: msm's MLServer adapter, ModelMesh's own
adapters, custom runtimes. ``list_models`` uses msm's optional ``msm.RuntimeInventory`` service and
returns None when the runtime does not serve it.

Every call has a deadline; every failure is a :class:`RuntimeCallError` whose text names the call,
the runtime and the runtime's own message (e.g. MLServer's load error), so it can be shown to a
user as it is.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import grpc

from placement.protos import model_runtime_pb2 as pb
from placement.protos import model_runtime_pb2_grpc as pb_grpc
from placement.protos import runtime_inventory_pb2 as inv_pb
from placement.protos import runtime_inventory_pb2_grpc as inv_grpc

DEFAULT_TIMEOUT = 10.0
"""Seconds for the quick calls (status, sizes, unload); loads take the model's load timeout."""
DEFAULT_LOAD_TIMEOUT = 90.0


class RuntimeCallError(Exception):
    """A failed SPI call: ``method``, ``address``, gRPC ``code`` and the runtime's ``details``."""

    def __init__(self, method: str, address: str, code: grpc.StatusCode, details: str) -> None:
        self.method = method
        self.address = address
        self.code = code
        self.details = details
        super().__init__(f"{method} on {address} failed ({code.name}): {details}")

    @property
    def attempted(self) -> bool:
        """False when the runtime says it made no attempt (nothing of the model is held)."""
        return self.code not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                                 grpc.StatusCode.UNAVAILABLE)


class RuntimeTimeout(RuntimeCallError):
    """The call did not finish within its deadline."""


class RuntimeUnavailable(RuntimeCallError):
    """The runtime could not be reached."""


@dataclass(frozen=True)
class RuntimeStatus:
    """``runtimeStatus``, as plain values."""

    ready: bool
    status: str  # STARTING, READY or FAILING
    capacity_bytes: int
    max_loading_concurrency: int
    model_loading_timeout_ms: int
    default_model_size_bytes: int
    runtime_version: str
    limit_model_concurrency: bool
    allow_any_method: bool
    method_infos: dict[str, list[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class RuntimeModel:
    """One model that a runtime holds (``msm.RuntimeInventory/listModels``)."""

    model_id: str
    state: str  # READY, LOADING, FAILED, UNAVAILABLE, UNKNOWN
    size_bytes: int
    model_type: str = ""
    model_path: str = ""
    reason: str = ""


class RuntimeClient:
    """Async client of one runtime's SPI endpoint (``host:port``, the ServingRuntime's grpcEndpoint).

    Use ``async with RuntimeClient(addr) as c`` or call :meth:`close`. The channel is created
    lazily on the running loop.
    """

    def __init__(self, address: str, *, default_timeout: float = DEFAULT_TIMEOUT,
                 load_timeout: float = DEFAULT_LOAD_TIMEOUT) -> None:
        self.address = address
        self.default_timeout = default_timeout
        self.load_timeout = load_timeout
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.ModelRuntimeStub | None = None
        self._inventory: inv_grpc.RuntimeInventoryStub | None = None

    def __repr__(self) -> str:
        return f"RuntimeClient({self.address!r})"

    async def __aenter__(self) -> RuntimeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            self._stub = self._inventory = None
            await channel.close()

    def _stubs(self) -> tuple[pb_grpc.ModelRuntimeStub, inv_grpc.RuntimeInventoryStub]:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.address)
            self._stub = pb_grpc.ModelRuntimeStub(self._channel)
            self._inventory = inv_grpc.RuntimeInventoryStub(self._channel)
        assert self._stub is not None and self._inventory is not None
        return self._stub, self._inventory

    async def _call(self, method: str, rpc, request, timeout: float | None):  # type: ignore[no-untyped-def]
        try:
            return await rpc(request, timeout=timeout)
        except grpc.aio.AioRpcError as e:
            code, details = e.code(), e.details() or ""
            cls = {grpc.StatusCode.DEADLINE_EXCEEDED: RuntimeTimeout,
                   grpc.StatusCode.UNAVAILABLE: RuntimeUnavailable}.get(code, RuntimeCallError)
            if code == grpc.StatusCode.DEADLINE_EXCEEDED and not details.lower().startswith("no answer"):
                details = f"no answer within {timeout:.1f}s" + (f" ({details})" if details else "")
            raise cls(method, self.address, code, details) from None

    async def _call_optional(self, method: str, rpc, request, timeout: float | None):  # type: ignore[no-untyped-def]
        """``_call`` for an optional SPI method: None when the runtime does not implement it."""
        try:
            return await self._call(method, rpc, request, timeout)
        except RuntimeCallError as e:
            if e.code == grpc.StatusCode.UNIMPLEMENTED:
                return None
            raise

    # -- the SPI ---------------------------------------------------------------------------------
    async def load_model(self, model_id: str, model_type: str, model_path: str, model_key: str = "",
                         timeout: float | None = None) -> int:
        """Load a model; return its size in bytes (0: unknown, ask :meth:`model_size`)."""
        stub, _ = self._stubs()
        req = pb.LoadModelRequest(modelId=model_id, modelType=model_type, modelPath=model_path,
                                  modelKey=model_key)
        resp = await self._call("loadModel", stub.loadModel, req, timeout or self.load_timeout)
        return int(resp.sizeInBytes)

    async def unload_model(self, model_id: str, timeout: float | None = None) -> None:
        """Unload a model; a model that the runtime does not hold is not an error."""
        stub, _ = self._stubs()
        await self._call("unloadModel", stub.unloadModel, pb.UnloadModelRequest(modelId=model_id),
                         timeout or max(self.default_timeout, self.load_timeout))

    async def predict_model_size(self, model_id: str, model_type: str, model_path: str, model_key: str = "",
                                 timeout: float | None = None) -> int | None:
        """The runtime's size estimate of a model not loaded yet; None if it does not implement it."""
        stub, _ = self._stubs()
        req = pb.PredictModelSizeRequest(modelId=model_id, modelType=model_type, modelPath=model_path,
                                         modelKey=model_key)
        resp = await self._call_optional("predictModelSize", stub.predictModelSize, req,
                                         timeout or self.default_timeout)
        return None if resp is None else int(resp.sizeInBytes)

    async def model_size(self, model_id: str, timeout: float | None = None) -> int | None:
        """The size of a loaded model; None if the runtime does not implement it."""
        stub, _ = self._stubs()
        resp = await self._call_optional("modelSize", stub.modelSize, pb.ModelSizeRequest(modelId=model_id),
                                         timeout or self.default_timeout)
        return None if resp is None else int(resp.sizeInBytes)

    async def runtime_status(self, timeout: float | None = None) -> RuntimeStatus:
        stub, _ = self._stubs()
        r = await self._call("runtimeStatus", stub.runtimeStatus, pb.RuntimeStatusRequest(),
                             timeout or self.default_timeout)
        return RuntimeStatus(
            ready=r.status == pb.RuntimeStatusResponse.READY,
            status=pb.RuntimeStatusResponse.Status.Name(r.status),
            capacity_bytes=int(r.capacityInBytes),
            max_loading_concurrency=int(r.maxLoadingConcurrency),
            model_loading_timeout_ms=int(r.modelLoadingTimeoutMs),
            default_model_size_bytes=int(r.defaultModelSizeInBytes),
            runtime_version=r.runtimeVersion,
            limit_model_concurrency=r.limitModelConcurrency,
            allow_any_method=r.allowAnyMethod,
            method_infos={k: list(v.idInjectionPath) for k, v in r.methodInfos.items()},
        )

    async def wait_ready(self, timeout: float = 60.0, interval: float = 0.2) -> RuntimeStatus:
        """Poll runtimeStatus until READY; raise :class:`RuntimeTimeout` with the last reason."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            try:
                status = await self.runtime_status(timeout=min(self.default_timeout, max(0.5, timeout)))
                if status.ready:
                    return status
                last = f"status {status.status}"
            except RuntimeCallError as e:
                last = e.details
            if time.monotonic() + interval > deadline:
                raise RuntimeTimeout("runtimeStatus", self.address, grpc.StatusCode.DEADLINE_EXCEEDED,
                                     f"not READY within {timeout:.0f}s (last: {last})")
            await asyncio.sleep(interval)

    # -- msm's inventory extension -----------------------------------------------------------------
    async def list_models(self, ready_only: bool = False,
                          timeout: float | None = None) -> list[RuntimeModel] | None:
        """What the runtime holds; None if it does not serve ``msm.RuntimeInventory``."""
        _, inventory = self._stubs()
        try:
            resp = await self._call("listModels", inventory.listModels,
                                    inv_pb.ListModelsRequest(readyOnly=ready_only),
                                    timeout or self.default_timeout)
        except RuntimeCallError as e:
            if e.code == grpc.StatusCode.UNIMPLEMENTED:
                return None
            raise
        return [RuntimeModel(model_id=m.modelId, state=inv_pb.RuntimeModel.State.Name(m.state),
                             size_bytes=int(m.sizeInBytes), model_type=m.modelType, model_path=m.modelPath,
                             reason=m.reason) for m in resp.models]

    async def loaded_models(self, timeout: float | None = None) -> dict[str, int] | None:
        """``{model id: size}`` of the ready models (for adoption); None if not supported."""
        models = await self.list_models(ready_only=True, timeout=timeout)
        if models is None:
            return None
        return {m.model_id: m.size_bytes for m in models}
