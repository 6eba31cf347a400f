"""Validation of KServe manifests: msm's own structural checks, plus the KServe CRD schema.

Every message names where the problem is: ``<file> doc <n> <Kind>/<name>: <field path> <what>``.
The structural checks always run; the CRD ``openAPIV3Schema`` check runs when the CRD files are
found ($MSM_KSERVE_SCHEMAS, else ``<repo>/../shared/schemas/kserve``). The schema is made
acceptable to jsonschema (``x-kubernetes-int-or-string``) and strict the way ``kubectl apply``
is by default (an unknown field is an error, except under ``x-kubernetes-preserve-unknown-fields``).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from decimal import Context, Decimal, InvalidOperation, Overflow, localcontext
from pathlib import Path
from typing import Any

import yaml

from placement.manifests.safe_yaml import shown

log = logging.getLogger("msm.manifests")

GROUP = "serving.kserve.io"
API_VERSIONS = {
    "InferenceService": f"{GROUP}/v1beta1",
    "ServingRuntime": f"{GROUP}/v1alpha1",
    "ClusterServingRuntime": f"{GROUP}/v1alpha1",
}
CRD_FILES = {
    "InferenceService": "serving.kserve.io_inferenceservices.yaml",
    "ServingRuntime": "serving.kserve.io_servingruntimes.yaml",
    "ClusterServingRuntime": "serving.kserve.io_clusterservingruntimes.yaml",
    "VirtualService": "istio/networking.istio.io_virtualservices.yaml",  # always the packaged one
}
#: A folder of other KServe CRD files to validate against (e.g. of a newer KServe release).
SCHEMAS_ENV = "MSM_KSERVE_SCHEMAS"
#: The KServe CRD files shipped inside the package (see crds/README.md).
PACKAGED_CRDS = Path(__file__).resolve().parent / "crds"
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
#: ModelMesh's ServingRuntime annotation: loads one runtime instance runs at once.
MAX_LOADING_ANNOTATION = "maxLoadingConcurrency"
MAX_LOADING_LIMIT = 64
#: msm's ServingRuntime annotation: how the adapter accounts a model's bytes, ``estimated``
#: (ModelMesh's size on disk x 1.25, the default) or ``measured`` (what the model server's memory
#: grew by while the model loaded, never less than the estimate).
MODEL_SIZE_ANNOTATION = "serving.msm.io/model-size"
MODEL_SIZE_MODES = ("estimated", "measured")
#: Replicas (of a runtime, or a model's copies) msm accepts; more is a typo, not a plan.
MAX_REPLICAS = 1000
MAX_QUANTITY = 2**63 - 1
#: The pre-``model`` predictor style (``predictor.sklearn: {storageUri: ...}``): key -> format.
LEGACY_PREDICTORS = ("sklearn", "xgboost", "lightgbm", "onnx", "pytorch", "tensorflow", "triton",
                     "paddle", "pmml", "huggingface")

# DNS-1123 subdomain
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # DNS-1123 label
_ISVC_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # KServe: DNS-1035 label
_ENDPOINT_RE = re.compile(r"^(port:(\d{1,5})|unix:/.+)$")
_QUANTITY_RE = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?$")
_EXPONENT_RE = re.compile(r"[eE][+-]?\d+")
_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
           "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": 1,
           "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}


def parse_quantity(value: Any) -> Decimal:
    """A Kubernetes resource quantity ("5Gi", "512Mi", "500m", "1e9", 42) as a number.

    Raises ValueError with a readable message when ``value`` is not a quantity.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{shown(value)} is not a Kubernetes quantity (e.g. 512Mi, 5Gi)")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{shown(value)} is not a Kubernetes quantity (a finite number, e.g. 512Mi)")
    if isinstance(value, (int, float)):
        return Decimal(str(value))
    m = _QUANTITY_RE.match(value.strip())
    if not m:
        raise ValueError(f"{shown(value)} is not a Kubernetes quantity (e.g. 512Mi, 5Gi)")
    number, suffix = m.group(1), m.group(2) or ""
    try:
        with localcontext(Context(prec=60, Emax=10**6, Emin=-(10**6), traps=[InvalidOperation, Overflow])):
            if _EXPONENT_RE.fullmatch(suffix):  # 1e9; but "E" (exa) and "Ei" (exbi) are suffixes
                return Decimal(number + suffix)
            return Decimal(number) * Decimal(_SUFFIX[suffix])
    except ArithmeticError as e:  # a number too large to hold
        raise ValueError(f"{shown(value)} is larger than any Kubernetes quantity") from e


def resource_problem(name: str, value: Any) -> str | None:
    """What is wrong with a container resource quantity, or None.

    Kubernetes accepts any quantity up to 2^63 in the syntax; a resource is never negative, and
    memory is a positive whole number of bytes (``100m`` would be a tenth of a byte).
    """
    try:
        q = parse_quantity(value)
    except ValueError as e:
        return str(e)
    if q < 0:
        return f"{shown(value)} is negative"
    if q > MAX_QUANTITY:
        return f"{shown(value)} is larger than Kubernetes allows (2^63 - 1)"
    if name == "memory":
        if q == 0:
            return f"{shown(value)} leaves no memory (e.g. 512Mi, 5Gi)"
        if q != q.to_integral_value():
            return f"{shown(value)} is not a whole number of bytes (memory is in bytes: e.g. 512Mi, 5Gi)"
    return None


def parse_endpoint_port(value: str) -> int | None:
    """``"port:8001"`` -> 8001; ``"unix:/path"`` -> None."""
    m = _ENDPOINT_RE.match(value)
    if not m:
        raise ValueError(f"{shown(value)} is not an endpoint (expected port:NNNN or unix:/path)")
    return int(m.group(2)) if m.group(2) else None


def describe(source: str, kind: str | None, name: str | None) -> str:
    """``models/x.yaml doc 2 InferenceService/foo`` (the prefix of every message)."""
    if name is not None and len(name) > 253:  # longer than any valid name: cut, the check reports it
        name = name[:120] + f"…({len(name)} characters)"
    if kind is not None and len(kind) > 63:
        kind = kind[:60] + "…"
    what = f"{kind or 'document'}/{name}" if name else (kind or "document")
    return f"{source} {what}"


# ---------------------------------------------------------------------------------------------
# Structural checks (msm's own)
# ---------------------------------------------------------------------------------------------


class _Checker:
    """Collects ``<path> <problem>`` messages while walking a document."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def add(self, path: str, problem: str) -> None:
        self.problems.append((path, problem))

    def mapping(self, obj: Mapping[str, Any], key: str, path: str, required: bool = False) -> dict | None:
        v = obj.get(key)
        if v is None:
            if required:
                self.add(f"{path}{key}", "is required")
            return None
        if not isinstance(v, dict):
            self.add(f"{path}{key}", f"must be a mapping, got {_type(v)}")
            return None
        return v

    def string(self, obj: Mapping[str, Any], key: str, path: str, required: bool = False) -> str | None:
        v = obj.get(key)
        if v is None:
            if required:
                self.add(f"{path}{key}", "is required")
            return None
        if not isinstance(v, str):
            hint = f' (quote it: "{v}")' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
            self.add(f"{path}{key}", f"must be a string, got {_type(v)}{hint}")
            return None
        if required and not v.strip():
            self.add(f"{path}{key}", "must not be empty")
            return None
        return v

    def boolean(self, obj: Mapping[str, Any], key: str, path: str) -> None:
        v = obj.get(key)
        if v is not None and not isinstance(v, bool):
            self.add(f"{path}{key}", f"must be true or false, got {_type(v)} {shown(v)}")

    def integer(self, obj: Mapping[str, Any], key: str, path: str, lo: int | None = None,
                hi: int | None = None) -> None:
        v = obj.get(key)
        if v is None:
            return
        if isinstance(v, bool) or not isinstance(v, int):
            self.add(f"{path}{key}", f"must be an integer, got {_type(v)} {shown(v)}")
        elif (lo is not None and v < lo) or (hi is not None and v > hi):
            bounds = f"between {lo} and {hi}" if lo is not None and hi is not None else (
                f">= {lo}" if lo is not None else f"<= {hi}")
            self.add(f"{path}{key}", f"must be {bounds}, got {v}")

    def string_map(self, obj: Mapping[str, Any], key: str, path: str) -> dict | None:
        m = self.mapping(obj, key, path)
        if m is None:
            return None
        for k, v in m.items():
            if not isinstance(k, str):
                self.add(f"{path}{key}", f"keys must be strings, got {_type(k)} {shown(k)}")
            elif not isinstance(v, str):
                self.add(f"{path}{key}.{k}", f"must be a string, got {_type(v)}")
        return m

    def sequence(self, obj: Mapping[str, Any], key: str, path: str, required: bool = False) -> list | None:
        v = obj.get(key)
        if v is None:
            if required:
                self.add(f"{path}{key}", "is required")
            return None
        if not isinstance(v, list):
            self.add(f"{path}{key}", f"must be a list, got {_type(v)}")
            return None
        return v


def _type(v: Any) -> str:
    if v is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
            dict: "mapping"}.get(type(v), type(v).__name__)


def _check_metadata(c: _Checker, doc: Mapping[str, Any], name_re: re.Pattern[str], rule: str,
                    max_len: int = 63) -> None:
    meta = c.mapping(doc, "metadata", "", required=True)
    if meta is None:
        return
    name = c.string(meta, "name", "metadata.", required=True)
    if name and (len(name) > max_len or not name_re.match(name)):
        c.add("metadata.name", f"{shown(name)} is not a valid name ({rule}, at most {max_len} characters)")
    namespace = c.string(meta, "namespace", "metadata.")
    if namespace is not None and (len(namespace) > 63 or not _NAMESPACE_RE.match(namespace)):
        c.add("metadata.namespace", f"{shown(namespace)} is not a valid namespace (lowercase letters, digits "
              "and '-', at most 63 characters)")
    c.string_map(meta, "annotations", "metadata.")
    c.string_map(meta, "labels", "metadata.")


def _check_isvc(c: _Checker, doc: Mapping[str, Any]) -> None:
    _check_metadata(c, doc, _ISVC_NAME_RE, "lowercase letters, digits and '-', starting with a letter")
    spec = c.mapping(doc, "spec", "", required=True)
    if spec is None:
        return
    pred = c.mapping(spec, "predictor", "spec.", required=True)
    if pred is None:
        return
    p = "spec.predictor."
    c.integer(pred, "canaryTrafficPercent", p, 0, 100)
    c.integer(pred, "minReplicas", p, 0, MAX_REPLICAS)
    c.integer(pred, "maxReplicas", p, 0, MAX_REPLICAS)
    c.string_map(pred, "annotations", p)
    model = c.mapping(pred, "model", p)
    mp = p + "model."
    if model is None:
        legacy = [k for k in LEGACY_PREDICTORS if isinstance(pred.get(k), dict)]
        if "model" in pred or not legacy:
            if "model" not in pred:
                c.add("spec.predictor.model", "is required (modelFormat and storage of the model)")
            return
        if len(legacy) > 1:
            c.add("spec.predictor", f"names more than one framework ({', '.join(legacy)}); use one")
            return
        model, mp = pred[legacy[0]], f"{p}{legacy[0]}."
    else:
        fmt = c.mapping(model, "modelFormat", mp, required=True)
        if fmt is not None:
            c.string(fmt, "name", mp + "modelFormat.", required=True)
            c.string(fmt, "version", mp + "modelFormat.")
    c.string(model, "runtime", mp)
    c.string(model, "protocolVersion", mp)
    uri = c.string(model, "storageUri", mp)
    storage = c.mapping(model, "storage", mp)
    if storage is not None:
        sp = mp + "storage."
        c.string(storage, "key", sp)
        path = c.string(storage, "path", sp)
        c.string(storage, "schemaPath", sp)
        params = c.string_map(storage, "parameters", sp) or {}
        if params.get("type") == "pvc" and not params.get("name"):
            c.add(sp + "parameters.name", "is required when parameters.type is pvc (the PVC's name)")
        if "path" not in storage:
            c.add(sp + "path", "is required (the model's path inside the storage)")
        elif path is not None and not path.strip():
            c.add(sp + "path", "must not be empty")
        if uri is not None:
            c.add(mp + "storageUri", "cannot be used together with storage; use one of them")
    elif "storageUri" not in model and "storage" not in model:
        c.add(mp + "storage", "is required: set storage (key/parameters and path) or storageUri")
    elif uri is not None and "://" not in uri and not uri.startswith("/"):
        c.add(mp + "storageUri", f"{shown(uri)} is not a URI (e.g. pvc://my-models-pvc/model.joblib, s3://bucket/path)")


def _check_runtime(c: _Checker, doc: Mapping[str, Any]) -> None:
    _check_metadata(c, doc, _NAME_RE, "lowercase letters, digits, '-' and '.'", 253)
    meta = doc.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, dict) else None
    if isinstance(annotations, dict) and isinstance(annotations.get(MAX_LOADING_ANNOTATION), str):
        v = annotations[MAX_LOADING_ANNOTATION]  # not a string: reported by the annotations check
        if not (v.isdigit() and len(v) <= 3 and 1 <= int(v) <= MAX_LOADING_LIMIT):
            c.add(f"metadata.annotations.{MAX_LOADING_ANNOTATION}",
                  f"must be a whole number from 1 to {MAX_LOADING_LIMIT} (a string), got {shown(v)}")
    if isinstance(annotations, dict) and MODEL_SIZE_ANNOTATION in annotations:
        v = annotations[MODEL_SIZE_ANNOTATION]
        if v not in MODEL_SIZE_MODES:
            c.add(f"metadata.annotations.{MODEL_SIZE_ANNOTATION}",
                  f"must be one of {', '.join(MODEL_SIZE_MODES)}, got {shown(v)}")
    spec = c.mapping(doc, "spec", "", required=True)
    if spec is None:
        return
    p = "spec."
    formats = c.sequence(spec, "supportedModelFormats", p)
    for i, f in enumerate(formats or ()):
        fp = f"{p}supportedModelFormats[{i}]"
        if not isinstance(f, dict):
            c.add(fp, f"must be a mapping with name (and version, autoSelect, priority), got {_type(f)}")
            continue
        c.string(f, "name", fp + ".", required=True)
        c.string(f, "version", fp + ".")
        c.boolean(f, "autoSelect", fp + ".")
        c.integer(f, "priority", fp + ".", 1)
    for key in ("multiModel", "disabled"):
        c.boolean(spec, key, p)
    for key in ("grpcDataEndpoint", "grpcEndpoint", "httpDataEndpoint"):
        v = c.string(spec, key, p)
        if v is not None:
            try:
                port = parse_endpoint_port(v)
            except ValueError as e:
                c.add(p + key, str(e))
            else:
                if port is not None and not 0 < port < 65536:
                    c.add(p + key, f"port {port} is out of range 1-65535")
    c.integer(spec, "replicas", p, 0, MAX_REPLICAS)
    adapter = c.mapping(spec, "builtInAdapter", p)
    if adapter is not None:
        ap = p + "builtInAdapter."
        c.string(adapter, "serverType", ap)
        c.integer(adapter, "runtimeManagementPort", ap, 1, 65535)
        c.integer(adapter, "memBufferBytes", ap, 0)
        c.integer(adapter, "modelLoadingTimeoutMillis", ap, 1)
    containers = c.sequence(spec, "containers", p, required=True)
    if containers is not None and not containers:
        c.add(p + "containers", "must list at least one container (the model server)")
    for i, ct in enumerate(containers or ()):
        cp = f"{p}containers[{i}]"
        if not isinstance(ct, dict):
            c.add(cp, f"must be a mapping, got {_type(ct)}")
            continue
        c.string(ct, "name", cp + ".", required=True)
        c.string(ct, "image", cp + ".")
        for j, env in enumerate(c.sequence(ct, "env", cp + ".") or ()):
            ep = f"{cp}.env[{j}]"
            if not isinstance(env, dict):
                c.add(ep, f"must be a mapping with name and value, got {_type(env)}")
                continue
            c.string(env, "name", ep + ".", required=True)
            c.string(env, "value", ep + ".")
        res = c.mapping(ct, "resources", cp + ".")
        for section in ("requests", "limits"):
            quantities = c.mapping(res, section, f"{cp}.resources.") if res is not None else None
            for rname, q in (quantities or {}).items():
                problem = resource_problem(str(rname), q)
                if problem is not None:
                    c.add(f"{cp}.resources.{section}.{rname}", problem)


_STRUCTURAL: dict[str, Callable[[_Checker, Mapping[str, Any]], None]] = {
    "InferenceService": _check_isvc,
    "ServingRuntime": _check_runtime,
    "ClusterServingRuntime": _check_runtime,
}


def structural_problems(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    """msm's own checks of a KServe document: a list of (field path, problem)."""
    c = _Checker()
    kind = doc.get("kind")
    want = API_VERSIONS.get(kind) if isinstance(kind, str) else None
    if want is None:
        return [("kind", f"{shown(kind)} is not a kind msm reads")]
    if doc.get("apiVersion") != want:
        c.add("apiVersion", f"must be {want} for {kind}, got {shown(doc.get('apiVersion'))}")
    _STRUCTURAL[kind](c, doc)
    return c.problems


# ---------------------------------------------------------------------------------------------
# The KServe CRD schema
# ---------------------------------------------------------------------------------------------


def schema_dir() -> Path | None:
    """Where the KServe CRD files are: $MSM_KSERVE_SCHEMAS if it holds them, else the packaged ones."""
    env = os.environ.get(SCHEMAS_ENV)
    candidates = [Path(env)] if env else []
    candidates.append(PACKAGED_CRDS)
    for c in candidates:
        if c.is_dir() and any((c / f).is_file() for f in CRD_FILES.values()):
            return c
    return None


def crd_schema_to_jsonschema(node: Any) -> Any:
    """An openAPIV3Schema as a JSON Schema (draft 4) that validates like ``kubectl --validate=strict``.

    - ``x-kubernetes-int-or-string`` without a type becomes ``anyOf: [integer, string]``;
    - an object with ``properties`` rejects unknown fields (``additionalProperties: false``),
      unless it carries ``x-kubernetes-preserve-unknown-fields`` (then anything goes);
    - the other ``x-kubernetes-*`` markers are dropped.
    """
    if isinstance(node, list):
        return [crd_schema_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: crd_schema_to_jsonschema(v) for k, v in node.items()
           if not k.startswith("x-kubernetes-") and k != "properties"}
    if node.get("x-kubernetes-int-or-string") and "type" not in node and "anyOf" not in node:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("x-kubernetes-preserve-unknown-fields"):
        out.pop("additionalProperties", None)
    elif "properties" in node and "additionalProperties" not in node:
        out["additionalProperties"] = False
    # properties are names, not schemas: convert their values but never treat a name as a keyword
    if "properties" in node:
        out["properties"] = {k: crd_schema_to_jsonschema(v) for k, v in node["properties"].items()}
    return out


@functools.lru_cache(maxsize=8)
def _validator_for(path: str, mtime: float, version: str) -> Any:
    from jsonschema import Draft4Validator

    with open(path, encoding="utf-8") as f:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        docs = [d for d in yaml.load_all(f, Loader=loader) if isinstance(d, dict)]
    for crd in docs:
        for v in crd.get("spec", {}).get("versions", []):
            if v.get("name") == version:
                schema = crd_schema_to_jsonschema(v["schema"]["openAPIV3Schema"])
                # the API server knows these of every object; some CRDs (Istio's) do not list them
                props = schema.setdefault("properties", {})
                for key, typ in (("apiVersion", "string"), ("kind", "string"), ("metadata", "object")):
                    props.setdefault(key, {"type": typ})
                return Draft4Validator(schema)
    return None


def crd_validator(kind: str, api_version: str) -> Any:
    """A jsonschema validator for ``kind`` at ``api_version`` from the CRD files, or None."""
    d = schema_dir()
    name = CRD_FILES.get(kind)
    if name is None:
        return None
    if d is None or not (d / name).is_file():
        d = PACKAGED_CRDS
        if not (d / name).is_file():
            return None
    p = d / name
    return _validator_for(str(p), p.stat().st_mtime, api_version.rpartition("/")[2])


def _schema_message(err: Any) -> str:
    if err.validator == "additionalProperties" and err.validator_value is False:
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})), key=str)
        return f"unknown field{'s' if len(extra) > 1 else ''} {', '.join(map(shown, extra))}"
    if err.validator == "pattern":
        if "KMGTPE" in str(err.validator_value):
            return f"{shown(err.instance)} is not a Kubernetes quantity (e.g. 512Mi, 5Gi)"
        return f"{shown(err.instance)} does not match the pattern {err.validator_value}"
    if err.validator == "type":
        return f"must be of type {err.validator_value}, got {_type(err.instance)} {shown(err.instance)}"
    if err.validator == "required":
        return err.message.replace("is a required property", "is required")
    return err.message


def _json_path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def schema_problems(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Problems the KServe CRD schema finds in ``doc`` (empty when no schema is available)."""
    kind, api = doc.get("kind"), doc.get("apiVersion")
    if not isinstance(kind, str) or not isinstance(api, str):
        return []
    validator = crd_validator(kind, api)
    if validator is None:
        return []
    out = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path]):
        parts = list(err.absolute_path)
        if err.validator == "required":
            missing = err.message.split("'")[1] if "'" in err.message else ""
            parts.append(missing)
            out.append((_json_path(parts), "is required"))
        else:
            out.append((_json_path(parts), _schema_message(err)))
    return out


def validate_document(doc: Mapping[str, Any], where: str) -> list[str]:
    """All problems of one KServe document as full messages, ``where`` prefixed.

    Schema problems at a field that msm's checks already reported are not repeated; the others
    are marked ``(KServe CRD schema)``.
    """
    own = structural_problems(doc)
    messages = [f"{where}: {path} {problem}" for path, problem in own]
    if own and own[0][0] == "kind":
        return messages
    seen = {path for path, _ in own}
    for path, problem in schema_problems(doc):
        if any(path == s or path.startswith(s + ".") or path.startswith(s + "[") for s in seen):
            continue
        messages.append(f"{where}: {path} {problem} (KServe CRD schema)")
    return messages
