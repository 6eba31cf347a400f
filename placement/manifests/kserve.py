"""KServe manifests -> desired state: parsing, runtime selection, storage, revision ids.

Reads ``serving.kserve.io/v1beta1 InferenceService`` and ``serving.kserve.io/v1alpha1
ServingRuntime`` / ``ClusterServingRuntime`` exactly as KServe ModelMesh users write them
(multi-document YAML). Documents of other kinds (a PVC, a Pod) are ignored. Everything here is
pure except that, in local mode, model files are looked up on disk for their existence and size.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from placement.manifests.desired_state import (
    DEFAULT_LOAD_TIMEOUT_MS,
    DEFAULT_RUNTIME_REPLICAS,
    DEFAULT_SIZE_ESTIMATE_BYTES,
    DISK_TO_MEMORY_FACTOR,
    DesiredState,
    ResolvedModel,
    RuntimeSpec,
    SupportedFormat,
    runtime_pool,
)
from placement.manifests.local_config import (
    DEFAULT_NAMESPACE,
    LOCAL_CONFIG_NAME,
    LocalConfig,
    load_local_config,
)
from placement.manifests.rollout_annotations import rollout_spec
from placement.manifests.safe_yaml import one_line, shown, size_problem, structure_problem
from placement.manifests.storage import StorageError, resolve_storage
from placement.manifests.validation import (
    API_VERSIONS,
    DEPLOYMENT_MODE_ANNOTATION,
    GROUP,
    LEGACY_PREDICTORS,
    MAX_LOADING_ANNOTATION,
    MODEL_SIZE_ANNOTATION,
    describe,
    parse_endpoint_port,
    parse_quantity,
    validate_document,
)
from placement.manifests.virtualservice import GROUP as VS_GROUP
from placement.manifests.virtualservice import (
    Claim,
    VirtualService,
    VirtualServiceError,
    parse_virtual_service,
    resolve_traffic,
)
from placement.manifests.virtualservice import document_problems as virtual_service_problems

log = logging.getLogger("msm.manifests")

MANIFEST_SUFFIXES = (".yaml", ".yml")
KSERVE_KINDS = tuple(API_VERSIONS)


# ---------------------------------------------------------------------------------------------
# Documents
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Document:
    """One manifest document: of a file (``index`` counts from 1), or an object read from the
    Kubernetes API (``index`` 0, ``source`` names the object, ``created`` its creationTimestamp)."""

    source: str  # file, as shown in messages (relative to the manifest directory), or the object
    index: int
    body: Any
    created: str = ""  # of an API object: the oldest claim on a model name wins

    @property
    def origin(self) -> str:
        """``file doc N``, or the object's name: where a message says the document came from."""
        return f"{self.source} doc {self.index}" if self.index else self.source

    @property
    def kind(self) -> str | None:
        k = self.body.get("kind") if isinstance(self.body, dict) else None
        return k if isinstance(k, str) else None

    @property
    def name(self) -> str | None:
        meta = self.body.get("metadata") if isinstance(self.body, dict) else None
        n = meta.get("name") if isinstance(meta, dict) else None
        return n if isinstance(n, str) else None

    @property
    def namespace(self) -> str | None:
        meta = self.body.get("metadata") if isinstance(self.body, dict) else None
        n = meta.get("namespace") if isinstance(meta, dict) else None
        return n if isinstance(n, str) else None

    @property
    def where(self) -> str:
        """``file doc N Kind/name``: the prefix of this document's messages."""
        return describe(self.origin, self.kind, self.name)

    @property
    def identity(self) -> tuple[str | None, str | None, str | None]:
        return (self.kind, self.namespace, self.name)

    @property
    def is_kserve(self) -> bool:
        """A document msm reads (any kind of the serving.kserve.io group)."""
        if not isinstance(self.body, dict):
            return True  # not even a mapping: report it
        api = self.body.get("apiVersion")
        return self.kind in KSERVE_KINDS or (isinstance(api, str) and api.startswith(GROUP + "/"))

    @property
    def is_virtual_service(self) -> bool:
        """An Istio VirtualService (traffic policy between models)."""
        api = self.body.get("apiVersion") if isinstance(self.body, dict) else None
        return self.kind == "VirtualService" and isinstance(api, str) and api.startswith(VS_GROUP + "/")

    @functools.cached_property
    def problems(self) -> tuple[str, ...]:
        """Validation messages (empty when valid, or when the document is not one msm reads), each
        one line of bounded length."""
        return tuple(one_line(p) for p in self._problems())

    def _problems(self) -> tuple[str, ...]:
        if not isinstance(self.body, dict):
            return (f"{self.origin}: expected a mapping (a Kubernetes object), "
                    f"got {type(self.body).__name__}",)
        if self.is_virtual_service:
            return tuple(virtual_service_problems(self.body, self.where))
        if not self.is_kserve:
            return ()
        if self.kind not in KSERVE_KINDS:
            return (f"{self.where}: kind {self.kind!r} is not supported by msm "
                    f"(it reads {', '.join(KSERVE_KINDS)})",)
        return tuple(validate_document(self.body, self.where))


def parse_documents(text: str, source: str) -> tuple[list[Document], list[str]]:
    """Split a multi-document YAML text; on a YAML error: ([], [message with line and column]).

    Text that is too large, or whose aliases expand too far, is refused before it is loaded
    (:mod:`placement.manifests.safe_yaml`).
    """
    refused = size_problem(len(text.encode("utf-8", "replace"))) or structure_problem(text)
    if refused is not None:
        return [], [f"{source} {refused}"]
    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        bodies = list(yaml.load_all(text, Loader=loader))
    except (ValueError, RecursionError) as e:  # e.g. an integer of more than 4300 digits
        return [], [f"{source}: cannot be loaded: {shown(str(e))}"]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        context = getattr(e, "context", None)
        detail = f"{context}; {problem}" if context else problem
        if mark is not None:
            lines = text.splitlines()
            if 0 <= mark.line < len(lines):
                detail += f": {shown(lines[mark.line].rstrip())}"
                if mark.line > 0 and "mapping values" in problem:
                    detail += (f" (check its indentation against line {mark.line}: "
                               f"{shown(lines[mark.line - 1].rstrip())})")
        return [], [one_line(f"{source}: not valid YAML{at}: {detail}")]
    docs = [Document(source, i, b) for i, b in enumerate(bodies, start=1) if b is not None]
    return docs, []


@dataclass(frozen=True)
class ManifestFile:
    """A manifest file as read: its documents (None when it is not valid YAML) and problems."""

    source: str
    documents: tuple[Document, ...] | None
    errors: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.errors


def read_manifest_file(path: Path, source: str | None = None) -> ManifestFile:
    """Read, parse and validate one manifest file (blocking; small files)."""
    source = source or str(path)
    try:
        too_big = size_problem(path.stat().st_size)
        if too_big is not None:
            return ManifestFile(source, None, (f"{source} {too_big}",))
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        return ManifestFile(source, None, (f"{source}: cannot read: {e}",))
    return parse_manifest_text(text, source)


def parse_manifest_text(text: str, source: str) -> ManifestFile:
    """Parse and validate the text of one manifest file."""
    docs, errors = parse_documents(text, source)
    if errors:
        return ManifestFile(source, None, tuple(errors))
    problems = [p for d in docs for p in d.problems]
    return ManifestFile(source, tuple(docs), tuple(problems))


def link_outside(path: Path, directory: Path) -> str | None:
    """Why a manifest file is refused when it is a symlink that leads outside ``directory``."""
    if not path.is_symlink():
        return None
    target = path.resolve()
    root = directory.resolve()
    if target.parent == root:
        return None
    return (f"{path.name}: a symlink to {target}, outside the manifest folder {root}; not read "
            "(copy the file into the folder instead)")


def manifest_files(directory: Path) -> list[Path]:
    """The manifest files of ``directory`` (top level, sorted; not msm-local.yaml nor hidden)."""
    return sorted(p for p in directory.iterdir()
                  if p.suffix in MANIFEST_SUFFIXES and p.name != LOCAL_CONFIG_NAME
                  and not p.name.startswith(".") and p.is_file())


def load_manifest_dir(directory: str | Path, local_config: LocalConfig | None = None) -> DesiredState:
    """Read every manifest of ``directory`` and resolve them (blocking; for CLI and start-up)."""
    directory = Path(directory).resolve()
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory")
    if local_config is None:
        local_config = load_local_config(directory)
    documents: list[Document] = []
    file_errors: dict[str, str] = {}
    for p in manifest_files(directory):
        refused = link_outside(p, directory)
        if refused is not None:
            file_errors[p.name] = refused
            continue
        mf = read_manifest_file(p, p.name)
        if mf.documents is None:
            file_errors[mf.source] = "\n".join(mf.errors)
        else:
            documents.extend(mf.documents)
    state = resolve(documents, local_config)
    return replace(state, errors={**file_errors, **state.errors})


# ---------------------------------------------------------------------------------------------
# Resolution
# ---------------------------------------------------------------------------------------------


class ResolveError(Exception):
    """A problem that keeps one model (or runtime) out of the desired state."""


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _int_text(v: Any) -> int | None:
    """An integer written as a string (annotations), or None."""
    return int(v) if isinstance(v, str) and v.isdigit() and len(v) <= 6 else None


def _port(endpoint: Any) -> int | None:
    if not isinstance(endpoint, str):
        return None
    try:
        return parse_endpoint_port(endpoint)
    except ValueError:
        return None


def _bytes(q: Any) -> int | None:
    if q is None:
        return None
    try:
        return int(parse_quantity(q))
    except ValueError:
        return None


def runtime_from_document(doc: Document, local_config: LocalConfig | None = None) -> RuntimeSpec:
    """A validated ServingRuntime / ClusterServingRuntime document as a :class:`RuntimeSpec`."""
    body = doc.body
    spec = body.get("spec") or {}
    cluster = doc.kind == "ClusterServingRuntime"
    default_ns = local_config.default_namespace if local_config else DEFAULT_NAMESPACE
    formats = tuple(
        SupportedFormat(name=f["name"], version=f.get("version"),
                        auto_select=bool(f.get("autoSelect", False)), priority=_int(f.get("priority")))
        for f in spec.get("supportedModelFormats") or ())
    adapter = spec.get("builtInAdapter") or {}
    containers = spec.get("containers") or []
    server = _server_container(containers, adapter.get("serverType"))
    resources = server.get("resources") or {}
    env = {e["name"]: str(e.get("value", "")) for e in server.get("env") or () if isinstance(e, dict)}
    replicas = _int(spec.get("replicas"))
    if replicas is None:
        replicas = DEFAULT_RUNTIME_REPLICAS
    if local_config is not None:
        replicas = local_config.replicas_for(doc.name or "", replicas)
    return RuntimeSpec(
        name=doc.name or "",
        namespace=None if cluster else (doc.namespace or default_ns),
        formats=tuple(f.name for f in formats),
        multi_model=bool(spec.get("multiModel", False)),
        server_type=adapter.get("serverType"),
        grpc_data_port=_port(spec.get("grpcDataEndpoint")),
        grpc_port=_port(spec.get("grpcEndpoint")),
        mem_buffer_bytes=_int(adapter.get("memBufferBytes")),
        load_timeout_ms=_int(adapter.get("modelLoadingTimeoutMillis")) or DEFAULT_LOAD_TIMEOUT_MS,
        env=env,
        memory_limit_bytes=_bytes((resources.get("limits") or {}).get("memory")),
        replicas=replicas,
        supported_formats=formats,
        cluster_scoped=cluster,
        disabled=bool(spec.get("disabled", False)),
        runtime_management_port=_int(adapter.get("runtimeManagementPort")),
        http_data_port=_port(spec.get("httpDataEndpoint")),
        image=server.get("image"),
        memory_request_bytes=_bytes((resources.get("requests") or {}).get("memory")),
        max_loading_concurrency=_int_text(((body.get("metadata") or {}).get("annotations") or {})
                                          .get(MAX_LOADING_ANNOTATION)),
        measure_model_size=((body.get("metadata") or {}).get("annotations") or {})
        .get(MODEL_SIZE_ANNOTATION) == "measured",
        command=tuple(str(x) for x in server.get("command") or ()),
        args=tuple(str(x) for x in server.get("args") or ()),
        source=doc.origin,
    )


def _server_container(containers: Sequence[Any], server_type: Any) -> dict:
    """The model server container: the one named like the server type, else the first."""
    named = [c for c in containers if isinstance(c, dict)]
    for c in named:
        if server_type and c.get("name") == server_type:
            return c
    return named[0] if named else {}


def version_matches(wanted: str | None, offered: str | None) -> bool:
    """A model's format version against a runtime's: unset matches anything; else the shorter
    dotted version must be a prefix of the longer ("1" matches "1.2", "2" does not)."""
    if not wanted or not offered:
        return True
    a, b = wanted.split("."), offered.split(".")
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def _supported(rt: RuntimeSpec, fmt: str, version: str | None, auto: bool) -> SupportedFormat | None:
    for f in rt.supported_formats:
        if f.name.lower() != fmt.lower() or not version_matches(version, f.version):
            continue
        if f.auto_select or not auto:
            return f
    return None


def _runtime_label(rt: RuntimeSpec) -> str:
    where = "ClusterServingRuntime" if rt.cluster_scoped else f"ServingRuntime in {rt.namespace}"
    return f"{rt.name} ({where})"


def _fmt_label(fmt: str, version: str | None) -> str:
    return f"{fmt} version {version}" if version else fmt


def select_runtime(runtimes: Sequence[RuntimeSpec], namespace: str, fmt: str, version: str | None,
                   explicit: str | None) -> RuntimeSpec:
    """KServe's runtime selection for a ModelMesh predictor; raises ResolveError with the reasons.

    Explicit ``runtime``: the ServingRuntime of that name in the model's namespace, else the
    ClusterServingRuntime; it must be enabled, multiModel and support the format (autoSelect not
    needed). Otherwise: enabled multiModel runtimes with an ``autoSelect`` entry for the format (and
    version), highest ``priority`` first (unset = lowest), a ServingRuntime before a
    ClusterServingRuntime, then by name.
    """
    visible = [rt for rt in runtimes if rt.cluster_scoped or rt.namespace == namespace]
    if explicit:
        named = sorted((rt for rt in visible if rt.name == explicit), key=lambda r: r.cluster_scoped)
        if not named:
            known = ", ".join(sorted({_runtime_label(r) for r in visible})) or "none"
            elsewhere = [r for r in runtimes if r.name == explicit]
            hint = f" (there is one in namespace {elsewhere[0].namespace})" if elsewhere else ""
            raise ResolveError(f"runtime {explicit!r} not found in namespace {namespace} nor as a "
                               f"ClusterServingRuntime{hint}; known runtimes: {known}")
        rt = named[0]
        if rt.disabled:
            raise ResolveError(f"runtime {_runtime_label(rt)} is disabled")
        if not rt.multi_model:
            raise ResolveError(f"runtime {_runtime_label(rt)} is not multiModel; ModelMesh needs "
                               "spec.multiModel: true")
        if _supported(rt, fmt, version, auto=False) is None:
            offered = ", ".join(_fmt_label(f.name, f.version) for f in rt.supported_formats) or "none"
            raise ResolveError(f"runtime {_runtime_label(rt)} does not support modelFormat "
                               f"{_fmt_label(fmt, version)} (it supports: {offered})")
        return rt
    ranked: list[tuple[tuple[int, bool, str], RuntimeSpec]] = []
    rejected: list[str] = []
    for rt in sorted(visible, key=lambda r: (r.cluster_scoped, r.name)):
        f = _supported(rt, fmt, version, auto=True)
        if rt.disabled:
            rejected.append(f"{_runtime_label(rt)}: disabled")
        elif not rt.multi_model:
            rejected.append(f"{_runtime_label(rt)}: not multiModel")
        elif f is None:
            manual = _supported(rt, fmt, version, auto=False)
            offered = ", ".join(_fmt_label(x.name, x.version) + ("" if x.auto_select else " (no autoSelect)")
                                for x in rt.supported_formats) or "no formats"
            rejected.append(f"{_runtime_label(rt)}: " + (
                f"supports {fmt} without autoSelect (name it in spec.predictor.model.runtime)"
                if manual else f"supports {offered}"))
        else:
            ranked.append(((-(f.priority or 0), rt.cluster_scoped, rt.name), rt))
    if ranked:
        return min(ranked, key=lambda x: x[0])[1]
    considered = "; ".join(rejected) if rejected else "no ServingRuntime or ClusterServingRuntime is defined"
    raise ResolveError(f"no runtime with autoSelect supports modelFormat {_fmt_label(fmt, version)} "
                       f"(considered: {considered})")


def _predictor_model(body: Mapping[str, Any]) -> tuple[dict, str | None, str | None]:
    """The predictor's model block, its format name and version (legacy ``predictor.sklearn`` too)."""
    pred = body["spec"]["predictor"]
    model = pred.get("model")
    if isinstance(model, dict):
        fmt = model["modelFormat"]
        return model, fmt["name"], fmt.get("version")
    key = next(k for k in LEGACY_PREDICTORS if isinstance(pred.get(k), dict))
    return pred[key], key, None


def revision_id(name: str, fmt: str, version: str | None, runtime: str, storage_spec: Mapping[str, Any],
                location: str) -> str:
    """``<name>__isvc-<10 hex>``: a hash of what loading depends on (format, runtime, storage)."""
    material = json.dumps({"format": fmt, "version": version, "runtime": runtime,
                           "storage": storage_spec, "location": location}, sort_keys=True)
    return f"{name}__isvc-{hashlib.sha256(material.encode()).hexdigest()[:10]}"


def resolve_model(doc: Document, runtimes: Sequence[RuntimeSpec],
                  local_config: LocalConfig | None = None, *,
                  namespaced_runtimes: bool = False) -> ResolvedModel:
    """One validated InferenceService document -> :class:`ResolvedModel`; raises ResolveError."""
    body = doc.body
    meta = body["metadata"]
    mode = (meta.get("annotations") or {}).get(DEPLOYMENT_MODE_ANNOTATION)
    if mode is not None and mode != "ModelMesh":
        raise ResolveError(f"annotation {DEPLOYMENT_MODE_ANNOTATION}: {mode} is not served by msm, "
                           "which serves ModelMesh (multi-model) deployments only")
    default_ns = local_config.default_namespace if local_config else DEFAULT_NAMESPACE
    namespace = meta.get("namespace") or default_ns
    model, fmt, version = _predictor_model(body)
    assert fmt is not None
    rt = select_runtime(runtimes, namespace, fmt, version, model.get("runtime"))
    storage = resolve_storage(model, local_config)
    pred = body["spec"]["predictor"]
    try:
        rollout = rollout_spec(meta.get("annotations"), _int(pred.get("canaryTrafficPercent")))
    except ValueError as e:
        raise ResolveError(str(e)) from None
    size = DEFAULT_SIZE_ESTIMATE_BYTES
    if storage.disk_bytes is not None:
        size = max(1, int(storage.disk_bytes * DISK_TO_MEMORY_FACTOR))
    return ResolvedModel(
        name=meta["name"],
        namespace=namespace,
        revision_id=revision_id(meta["name"], fmt, version, rt.name, storage.spec, storage.location),
        runtime=runtime_pool(namespace, rt.name) if namespaced_runtimes else rt.name,
        model_type=fmt,
        storage_path=storage.location,
        canary_percent=_int(pred.get("canaryTrafficPercent")),
        min_copies=_int(pred.get("minReplicas")) or 0,
        load_timeout_s=rt.load_timeout_ms / 1000.0,
        size_estimate_bytes=size,
        model_format_version=version,
        storage_key=storage.key,
        storage_parameters=storage.parameters,
        storage_stamp=storage.stamp,
        source=doc.origin,
        rollout=rollout,
    )


def _add_error(errors: dict[str, str], key: str, message: str) -> None:
    message = one_line(message)
    errors[key] = f"{errors[key]}\n{message}" if key in errors else message


def model_key(namespace: str, name: str) -> str:
    """How a model's problems are keyed in ``DesiredState.errors`` (and shown): ``namespace/name``."""
    return f"{namespace}/{name}"


def resolve(documents: Iterable[Document], local_config: LocalConfig | None = None,
            incumbents: Mapping[str, ResolvedModel] | None = None, *,
            namespaced_runtimes: bool = False,
            traffic_incumbents: Mapping[str, VirtualService] | None = None) -> DesiredState:
    """Documents -> :class:`DesiredState` (pure but for local model file look-ups).

    Invalid documents, duplicates and models with no usable runtime or storage are left out and
    reported in ``errors``; they change nothing else. A model's own problems are keyed
    ``namespace/name``; a document refused because another one already has its model's name is
    keyed by its file, so nothing appears under a model that is fine. ``local_config`` None
    means Kubernetes mode (storage stays a URI).

    Clients call a model by its name alone, so a name is served by one InferenceService at a
    time. ``incumbents`` (the models of the previous desired state, by name) keep theirs: a new
    document that claims a serving model's name (another file, another namespace) is refused
    with a message naming both, and the serving model is untouched. Without an incumbent, the
    file that sorts first wins.

    VirtualServices (``networking.istio.io``) become the routing of their hosts
    (:func:`placement.manifests.virtualservice.resolve_traffic`; ``traffic_incumbents`` are the
    ones accepted last time, by namespace/name).

    ``namespaced_runtimes`` (Kubernetes mode): runtimes are per namespace, as ModelMesh runs them:
    a model's runtime is the pool ``<its namespace>/<runtime name>`` (a ClusterServingRuntime too:
    its pods run in each namespace with models), so two namespaces may each have their own
    ``mlserver-1.x``. Without it (the local mesh) runtime names are unique.
    """
    errors: dict[str, str] = {}
    seen: dict[tuple[str, str | None, str], Document] = {}
    isvcs: list[Document] = []
    runtime_docs: list[Document] = []
    virtual_services: list[Document] = []
    default_ns = local_config.default_namespace if local_config else DEFAULT_NAMESPACE
    incumbents = incumbents or {}

    def claim(doc: Document) -> int:
        """0: the serving model's own document; 1: its namespace; 2: anything else."""
        inc = incumbents.get(doc.name or "") if doc.kind == "InferenceService" else None
        if inc is None or inc.namespace != (doc.namespace or default_ns):
            return 2
        same = inc.source.rsplit(" doc ", 1)[0] == doc.source if doc.index else inc.source == doc.source
        return 0 if same else 1  # the same file (wherever in it), or the same API object

    for doc in sorted(documents, key=lambda d: (claim(d), d.created, d.source, d.index)):
        if doc.problems:
            is_model = doc.kind == "InferenceService" and doc.name
            key = model_key(doc.namespace or default_ns, doc.name or "") if is_model else doc.source
            for p in doc.problems:
                _add_error(errors, key, p)
            continue
        if doc.is_virtual_service:
            virtual_services.append(doc)
            continue
        if not doc.is_kserve:
            log.debug("%s doc %d: %s ignored (not a KServe kind)", doc.source, doc.index, doc.kind)
            continue
        ns = None if doc.kind == "ClusterServingRuntime" else (doc.namespace or default_ns)
        ident = (doc.kind or "", ns, doc.name or "")
        if ident in seen:
            first = seen[ident]
            named = f"{ns}/{doc.name}" if ns else doc.name  # a ClusterServingRuntime has no namespace
            _add_error(errors, doc.source, f"{doc.where}: {first.kind} {named} is already defined "
                       f"in {first.origin}, which stays in use; this one is ignored")
            continue
        seen[ident] = doc
        (isvcs if doc.kind == "InferenceService" else runtime_docs).append(doc)

    all_runtimes = [runtime_from_document(d, local_config) for d in runtime_docs]
    runtimes: dict[str, RuntimeSpec] = {}
    for rt in sorted(all_runtimes, key=lambda r: (r.cluster_scoped, r.namespace or "", r.name)):
        if rt.disabled:
            continue
        key = runtime_pool(rt.namespace, rt.name) if namespaced_runtimes and rt.namespace else rt.name
        if key in runtimes:
            other = runtimes[key]
            _add_error(errors, rt.source.split(" doc ")[0],
                       f"{rt.source} {rt.kind}/{rt.name}: a runtime named {rt.name} is already defined "
                       f"({other.source}); msm needs runtime names to be unique; ignored")
            all_runtimes.remove(rt)
            continue
        runtimes[key] = rt

    models: dict[str, ResolvedModel] = {}
    claimed: dict[str, Document] = {}  # model name -> the document that has it (even if it fails)
    for doc in isvcs:
        ns = doc.namespace or default_ns
        first = claimed.setdefault(doc.name or "", doc)
        if first is not doc:
            _add_error(errors, doc.source,
                       f"{doc.where}: clients call models by name alone, and {doc.name} is already claimed "
                       f"by namespace {first.namespace or default_ns} ({first.origin}), "
                       f"which stays in use; this one (namespace {ns}) is ignored while that one exists")
            continue
        try:
            m = resolve_model(doc, all_runtimes, local_config, namespaced_runtimes=namespaced_runtimes)
        except (ResolveError, StorageError) as e:
            _add_error(errors, model_key(ns, doc.name or ""), f"{doc.where}: {e}")
            continue
        except Exception as e:  # a bug must cost this one model, not every other one
            log.exception("resolving %s failed", doc.where)
            _add_error(errors, model_key(ns, doc.name or ""),
                       f"{doc.where}: could not be resolved ({type(e).__name__}; msm's log has the details)")
            continue
        models[m.name] = m
    claims = []
    for doc in virtual_services:
        try:
            vs = parse_virtual_service(doc.body, default_ns)
        except VirtualServiceError:  # reported with the document's problems
            continue
        claims.append(Claim(vs, doc.origin, doc.source, (doc.created, doc.source, doc.index)))
    traffic, traffic_errors = resolve_traffic(claims, {m.name: m.namespace for m in models.values()},
                                              traffic_incumbents)
    for key, message in traffic_errors.items():
        _add_error(errors, key, message)
    return DesiredState(models=models, runtimes=runtimes, errors=errors,
                        virtual_services=traffic.services, traffic=traffic.policies)
