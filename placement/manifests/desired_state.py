"""The resolved desired state: what the manifests ask for, after runtime selection and storage
resolution, and the traffic policy of the VirtualServices. Plain frozen data: sources produce it
(:func:`placement.manifests.kserve.resolve`), and the engine consumes its models as
:class:`placement.engine.model_types.DesiredModel` (:meth:`DesiredState.desired_models`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from placement.engine.model_types import DesiredModel
from placement.manifests.virtualservice import VirtualService
from placement.traffic.policy import HostPolicy
from placement.traffic.rollout import RolloutSpec

#: Size assumed for a model whose files are not local (ModelMesh: until measured).
DEFAULT_SIZE_ESTIMATE_BYTES = 64 * 1024 * 1024
#: Factor applied to the size on disk to estimate the size in memory (as ModelMesh does).
DISK_TO_MEMORY_FACTOR = 1.25
#: Load timeout when the runtime sets no ``builtInAdapter.modelLoadingTimeoutMillis``.
DEFAULT_LOAD_TIMEOUT_MS = 90_000
#: Replicas of a runtime when neither ``spec.replicas`` nor the local config says (ModelMesh's
#: ``podsPerRuntime`` default).
DEFAULT_RUNTIME_REPLICAS = 2


@dataclass(frozen=True)
class SupportedFormat:
    """One entry of a runtime's ``supportedModelFormats``."""

    name: str
    version: str | None = None
    auto_select: bool = False
    priority: int | None = None


@dataclass(frozen=True)
class RuntimeSpec:
    """A ServingRuntime or ClusterServingRuntime, as msm uses it."""

    name: str
    namespace: str | None  # None for a ClusterServingRuntime
    formats: tuple[str, ...]
    multi_model: bool
    server_type: str | None  # builtInAdapter.serverType (mlserver, triton, ovms, torchserve)
    grpc_data_port: int | None  # from grpcDataEndpoint "port:8001"
    grpc_port: int | None  # from grpcEndpoint "port:8085" (the mmesh.ModelRuntime SPI)
    mem_buffer_bytes: int | None
    load_timeout_ms: int
    env: Mapping[str, str]
    memory_limit_bytes: int | None  # the model server container's limits.memory
    replicas: int
    supported_formats: tuple[SupportedFormat, ...] = ()
    cluster_scoped: bool = False
    disabled: bool = False
    runtime_management_port: int | None = None
    http_data_port: int | None = None
    image: str | None = None
    memory_request_bytes: int | None = None
    max_loading_concurrency: int | None = None  # annotation maxLoadingConcurrency
    measure_model_size: bool = False  # annotation serving.msm.io/model-size: measured
    command: tuple[str, ...] = ()  # the model server container's command and args (a pod's;
    args: tuple[str, ...] = ()  # the local mesh runs MLServer from msm's environment instead)
    source: str = ""  # "file doc N" it came from

    @property
    def kind(self) -> str:
        return "ClusterServingRuntime" if self.cluster_scoped else "ServingRuntime"

    @property
    def capacity_bytes(self) -> int | None:
        """Memory for models: the container's memory request (else its limit) less
        ``memBufferBytes``, as ModelMesh's adapters count it (``CONTAINER_MEM_REQ_BYTES``)."""
        memory = self.memory_request_bytes
        if memory is None:
            memory = self.memory_limit_bytes
        if memory is None:
            return None
        return max(0, memory - (self.mem_buffer_bytes or 0))


def runtime_pool(namespace: str, runtime: str) -> str:
    """Kubernetes mode: the instances of ``runtime`` in ``namespace`` (models of one namespace
    go to the runtime pods of that namespace): ``<namespace>/<runtime>``."""
    return f"{namespace}/{runtime}"


@dataclass(frozen=True)
class ResolvedModel:
    """An InferenceService predictor, bound to a runtime and a storage location."""

    name: str
    namespace: str
    revision_id: str  # "<name>__isvc-<10 hex>", changes when format, runtime or storage change
    runtime: str
    model_type: str  # modelFormat.name
    storage_path: str  # a local path in local mode, else a URI (pvc://, s3://, ...)
    canary_percent: int | None
    min_copies: int
    load_timeout_s: float
    size_estimate_bytes: int
    model_format_version: str | None = None
    storage_key: str | None = None
    storage_parameters: Mapping[str, str] = field(default_factory=dict)
    storage_stamp: tuple[int, int] | None = None  # local mode: (mtime_ns, size) of the model's path
    source: str = ""  # "file doc N" it came from
    rollout: RolloutSpec | None = None  # serving.msm.io/rollout-* annotations: rolls out by steps

    def desired(self) -> DesiredModel:
        """This predictor as the placement engine wants it."""
        return DesiredModel(
            name=self.name, revision=self.revision_id, runtime=self.runtime, model_type=self.model_type,
            model_path=self.storage_path, size_estimate_bytes=self.size_estimate_bytes,
            min_copies=self.min_copies, canary_percent=self.canary_percent,
            load_timeout_s=self.load_timeout_s, storage_stamp=self.storage_stamp)


@dataclass(frozen=True)
class DesiredState:
    """Models and runtimes by name, and the problems found (keyed by model name or file)."""

    models: dict[str, ResolvedModel] = field(default_factory=dict)
    runtimes: dict[str, RuntimeSpec] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    virtual_services: dict[str, VirtualService] = field(default_factory=dict)  # accepted, by namespace/name
    traffic: dict[str, HostPolicy] = field(default_factory=dict)  # the routing of each host they hold

    def desired_models(self) -> list[DesiredModel]:
        return [m.desired() for m in self.models.values()]

    def rollouts(self) -> dict[str, RolloutSpec]:
        """The models that roll out by steps, and how."""
        return {m.name: m.rollout for m in self.models.values() if m.rollout is not None}
