"""Hypothesis strategies: manifest folders a user, a careless user or a hostile one could write.

Three families, all plain data (:class:`Folder`, :class:`ValidFolder`) that the tests write to
disk, so hypothesis prints a failing example as the files it wrote:

- :func:`any_folder`: one to three files of multi-document YAML mixing ServingRuntime,
  ClusterServingRuntime and InferenceService documents, other kinds, scalars and garbage. A
  document is clean, *targeted* (clean but for one hostile field) or *sloppy* (3-40% of its
  fields wrong): wrong types, missing fields, odd names (unicode, long, dots, uppercase), huge or
  negative numbers, NaN and infinities, quantities ("5Gi", "1e400", "-1", "100m"), storage that
  leaves its root (``..``, absolute paths, symlinks), unknown fields, non-string keys. The YAML
  text is then sometimes edited (tabs, duplicated or deleted lines, truncation, inserted
  characters, BOM, CRLF) or mixed with YAML edge cases (anchors, merge keys, aliases, recursive
  aliases, alias bombs, tags, deep nesting, 5000-digit integers); a file may also be non-UTF-8,
  over 2 MiB, a symlink out of the folder or a directory named like a manifest.
- :func:`targeted_folder`: a working folder plus many targeted documents, so that every field msm
  reads meets its hostile values often, in documents that otherwise resolve.
- :func:`valid_folder`: runtimes and InferenceServices built to resolve (runtime selection,
  every storage style, canary and minReplicas), with an optional second version of the
  manifests that rolls some models to a new storage path.

The 13 product bugs this suite found are fixed, and their inputs are generated like any other;
:func:`tame` still lists each with what it triggered, and can keep a new known bug's inputs out
(``MSM_PROPERTIES_KNOWN_BUGS=none`` or a list of numbers to include, ``=2,7``) until it is fixed.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st
from hypothesis.strategies import DrawFn, SearchStrategy

#: ``all`` or a comma-separated list of bug numbers (see :func:`tame`): generate the inputs of
#: those known product bugs too (the suite then fails until they are fixed). Empty by default, so
#: that CI stays green while they are open.
KNOWN_BUGS_ENV = "MSM_PROPERTIES_KNOWN_BUGS"
ALL_KNOWN_BUGS = frozenset(range(1, 14))
_env = os.environ.get(KNOWN_BUGS_ENV, "").strip()
# all 13 are fixed: their inputs are generated unless a list (or "none") says otherwise
KNOWN_BUGS = (ALL_KNOWN_BUGS if _env in ("", "all") else frozenset() if _env == "none"
              else frozenset(int(n) for n in _env.split(",") if n.strip()))


def tamed(bug: int) -> bool:
    """Whether the inputs of known product bug ``bug`` are kept out of the generated folders."""
    return bug not in KNOWN_BUGS


DIR_PLACEHOLDER = "@MANIFEST_DIR@"  # replaced by the manifest folder's path when written
ISVC_API = "serving.kserve.io/v1beta1"
RT_API = "serving.kserve.io/v1alpha1"
DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
PVC = "my-models-pvc"


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()  # a field drawn as absent

# ---------------------------------------------------------------------------------------------
# The storage the folders point at
# ---------------------------------------------------------------------------------------------


def write_storage(root: Path) -> Path:
    """``root/manifests`` with ./models (PVC), ./minio (storage key) and traps around them."""
    manifests = root / "manifests"
    models = manifests / "models"
    (models / "model-dir").mkdir(parents=True)
    (manifests / "minio").mkdir()
    (root / "secret").mkdir()
    (root / "secret" / "secret.joblib").write_bytes(b"secret")
    for p in (models / "mnist-svm.joblib", models / "v2.joblib", models / "ünï côde.joblib",
              manifests / "minio" / "mnist-svm.joblib", manifests / "outside.joblib"):
        p.write_bytes(b"\0" * 1000)
    (models / "model-dir" / "model.json").write_text("{}")
    (models / "model-dir" / "weights.bin").write_bytes(b"\1" * 3000)
    (models / "inner-link").symlink_to("mnist-svm.joblib")
    (models / "escape-link").symlink_to(root / "secret")
    (models / "dir-with-escape").mkdir()
    (models / "dir-with-escape" / "link").symlink_to(root / "secret" / "secret.joblib")
    (root / "outside.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    return manifests


LOCAL_CONFIGS = (
    f"pvcs:\n  {PVC}: ./models\nstorageKeys:\n  localMinIO: ./minio\n",
    f"pvcs:\n  {PVC}: ./models\n  other-pvc: ./minio\nstorageKeys:\n  localMinIO: ./minio\n"
    "  default: ./models\ndefaultNamespace: modelmesh-serving\nruntimeReplicas:\n  mlserver: 1\n",
    f"pvcs: {{{PVC}: ./models}}\ndefaultNamespace: team-a\n",
)

# ---------------------------------------------------------------------------------------------
# Values: each field has plausible values (well formed, possibly refused: a missing file, an
# unknown runtime) and wrong ones (types, ranges, odd strings)
# ---------------------------------------------------------------------------------------------

NAME_POOL = ("m", "sklearn-mnist", "model-a", "m2")  # small: collisions and takeovers happen
NAMESPACES = ("modelmesh-serving", "default", "team-a")
RUNTIME_POOL = ("mlserver", "mlserver-1.x", "triton.2", "rt", "catch-all")
FORMATS = ("sklearn", "SKLearn", "xgboost", "onnx", "lightgbm", "pytorch")
VERSIONS = ("0", "1", "1.2", "1.3", "2")
LONG_STRINGS = ("a" * 63, "a" * 64, "a" * 253, "a" * 254, "a" * 5000, "é" * 3000)

ODD_NAMES = st.one_of(
    st.sampled_from(["", " ", "M", "Model-A", "a.b", "a_b", "-a", "a-", "1abc", "a/b", "a b", "ünïcode",
                     "名前", "a..b", ".", "..", "a\nb", "null", "~", "a\tb", "m__isvc-0000000000",
                     "x" * 63 + ".y"]),
    st.sampled_from(LONG_STRINGS),
    st.text(max_size=30),
)
NAMES = st.one_of(st.sampled_from(NAME_POOL),
                  st.from_regex(r"[a-z]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True))
DNS1123 = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?){0,2}",
                        fullmatch=True)
RUNTIME_NAMES = st.one_of(st.sampled_from(RUNTIME_POOL), DNS1123)

#: A value of any type, for a field that expects something else.
JUNK: SearchStrategy[Any] = st.one_of(
    st.sampled_from([None, True, False, 0, -1, 2**63, 2**64, -(2**63), math.nan, math.inf, -math.inf, 1.5, "",
                     " ", "50", "yes", "null", "a\nb", [], {}, [1, "a"], {1: "a", "b": 2}, {"k" * 2000: 1}]),
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([-1, 0, 1, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63), 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "yes", "no", "true", "50", "1e400", "-1", "null", "5Gi", "~"]),
    st.text(max_size=20),
    st.lists(st.one_of(st.integers(), st.text(max_size=5)), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.dictionaries(st.one_of(st.integers(), st.booleans(), st.none()), st.text(max_size=3), max_size=2),
    st.dictionaries(st.sampled_from(["a\nb", "k" * 2000, "x"]), st.integers(), min_size=1, max_size=2),
)
GOOD_QUANTITIES = st.sampled_from(["5Gi", "512Mi", "1Gi", "1e9", "2Gi", "1Ki", 1073741824, "500m", "0.5",
                                   "3Pi"])
BAD_QUANTITIES: SearchStrategy[Any] = st.one_of(
    st.sampled_from(["100m", "0", "-1", "1e400", "5GB", "1.5Gi", " 5Gi ", "+1Ki", ".5Mi",
                     "9223372036854775807", "9223372036854775808", "1e-3", "1E3", "12e", "Ki", "0.1", "1Ei",
                     "100Ei", "1e18", "-0", "1e-999999999", "1e999999999", "Infinity", "NaN",
                     "1" + "0" * 400 + "Ki"]),
    st.from_regex(r"[+-]?[0-9]{1,22}(\.[0-9]{0,3})?(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]{1,4})?",
                  fullmatch=True),
    st.integers(min_value=-(2**65), max_value=2**65),
    st.floats(allow_nan=True, allow_infinity=True),
)
RESOURCE_NAMES = st.sampled_from(["memory", "cpu", "nvidia.com/gpu", "ephemeral-storage"])
GOOD_ENDPOINTS = st.sampled_from(["port:8001", "port:8085", "port:65535", "unix:/tmp/x.sock"])
BAD_ENDPOINTS = st.one_of(st.sampled_from(["port:0", "port:65536", "port:99999", "unix:", "8001", "port:",
                                           "tcp:1", "port:08001", "port:-1", "port:8001 "]),
                          st.text(max_size=12))

#: Model files and folders inside the PVC folder ./models (and ./minio for the storage key).
MODEL_PATHS = ("mnist-svm.joblib", "model-dir", "model-dir/", "inner-link", "./mnist-svm.joblib",
               "model-dir/../mnist-svm.joblib", "v2.joblib", "ünï côde.joblib", "model-dir/weights.bin")
#: Paths that must be refused: missing, or leading outside the storage root.
BAD_PATHS = ("nope.joblib", "../outside.joblib", "../../secret/secret.joblib", "/etc/passwd", "/",
             "escape-link", "escape-link/secret.joblib", "dir-with-escape", ".", "./", "..",
             "a//b", "model-dir/../../secret/secret.joblib", "~/x", "mnist-svm.joblib/", "*")
#: Storage paths nobody should write: NUL, overlong components and paths, encodings, whitespace.
ODD_PATHS = st.one_of(
    st.sampled_from(["", "a\0b", "x" * 300, "/".join(["x" * 200] * 30), "../" * 3000 + "etc",
                     "model-dir/" + "x" * 256, "%2e%2e/secret", "..\\..\\secret", "mnist-svm.joblib\n",
                     " mnist-svm.joblib", "p" * 6000]),
    st.text(max_size=40),
)
STORAGE_URIS = st.one_of(
    st.sampled_from(MODEL_PATHS).map(lambda p: f"pvc://{PVC}/{p}"),
    st.sampled_from([f"pvc://{PVC}/mnist-svm.joblib", f"pvc://{PVC}/../outside.joblib", "pvc://unknown/x",
                     f"pvc://{PVC}", "pvc:///x", "s3://bucket/m", "gs://b/m", "https://example.com/m",
                     "file:///etc/passwd", "file:///", f"pvc://{PVC}/model-dir",
                     f"file://{DIR_PLACEHOLDER}/models/mnist-svm.joblib", f"file://{DIR_PLACEHOLDER}/outside.joblib",
                     f"file://{DIR_PLACEHOLDER}/../secret/secret.joblib", "pvc://other-pvc/mnist-svm.joblib",
                     f"PVC://{PVC}/mnist-svm.joblib", f"pvc://{PVC}/escape-link/secret.joblib"]),
    st.sampled_from(BAD_PATHS).map(lambda p: f"pvc://{PVC}/{p}"),
)
ODD_URIS = st.one_of(
    st.sampled_from(["", "mnist-svm.joblib", "file:mnist-svm.joblib", "/abs/x", "pvc://[abc/x", "http://[::1",
                     f"pvc://{PVC}/a\0b", "pvc://" + "p" * 6000 + "/x", f"pvc://{PVC}/" + "x" * 300,
                     "s3://" + "b" * 6000, f"pvc://{PVC}:80/mnist-svm.joblib", f"pvc://user@{PVC}/mnist-svm.joblib",
                     f"pvc://{PVC}/mnist-svm.joblib?x=1#f", "://", "pvc:",
                     f"file://{DIR_PLACEHOLDER}/models/" + "x" * 300]),
    st.sampled_from(["pvc://", "file://", "s3://", "pvc:///"]).flatmap(
        lambda s: st.text(max_size=30).map(s.__add__)),
    st.text(max_size=30),
)


@dataclass(frozen=True)
class Ctx:
    """How sloppy the document being drawn is: the percentage of its fields that are wrong."""

    wrong_pct: int


def pick(draw: DrawFn, ctx: Ctx, valid: SearchStrategy[Any], wrong: SearchStrategy[Any] | None = None,
         missing: bool = True) -> Any:
    """A plausible value, or (as often as the document is sloppy) a wrong one, JUNK, or MISSING.

    Shrinks towards the plausible value, so a failing example keeps only the fields that matter.
    """
    roll = draw(st.integers(0, 99))
    if roll >= 100 - ctx.wrong_pct:
        options = [wrong if wrong is not None else JUNK, JUNK]
        if missing:
            options.append(st.just(MISSING))
        return draw(st.one_of(*options))
    return draw(valid)


def optional(draw: DrawFn, ctx: Ctx, valid: SearchStrategy[Any],
             wrong: SearchStrategy[Any] | None = None) -> Any:
    """A field that may be absent (absent shrinks first)."""
    if not draw(st.booleans()):
        return MISSING
    return pick(draw, ctx, valid, wrong)


def obj(**fields: Any) -> dict:
    return {k: v for k, v in fields.items() if v is not MISSING}


def strip_missing(doc: Any) -> Any:
    """``doc`` without the fields drawn as MISSING, at any depth."""
    if isinstance(doc, dict):
        return {k: strip_missing(v) for k, v in doc.items() if v is not MISSING}
    if isinstance(doc, list):
        return [strip_missing(v) for v in doc if v is not MISSING]
    return doc


def with_unknown_field(draw: DrawFn, ctx: Ctx, d: Any, names: tuple[Any, ...]) -> Any:
    """Sometimes a typo'd or foreign field (including non-string keys) on a mapping."""
    if isinstance(d, dict) and pick(draw, ctx, st.just(False), st.just(True), missing=False) is True:
        d = {**d, draw(st.sampled_from(names)): draw(JUNK)}
    return d


# ---------------------------------------------------------------------------------------------
# Documents
# ---------------------------------------------------------------------------------------------


@st.composite
def storage_block(draw: DrawFn, ctx: Ctx) -> dict:
    pvc = {"type": "pvc", "name": PVC}
    odd_params = st.one_of(
        st.sampled_from([{"type": "pvc", "name": PVC, 1: "x"}, {"type": "pvc", "name": PVC, None: "x"},
                         {"type": "pvc", "name": "p" * 6000}, {"type": "pvc"}, {"type": "pvc", "name": ""}]),
        st.fixed_dictionaries({"type": st.sampled_from(["pvc", "s3", "PVC", ""])},
                              optional={"name": st.sampled_from([PVC, "other-pvc", "unknown", ""])}),
    )
    by_key = draw(st.sampled_from([False, False, False, True]))
    return obj(
        key=(optional(draw, ctx, st.sampled_from(["localMinIO", "default", "nope"]),
                      st.one_of(ODD_NAMES, JUNK)) if by_key else MISSING),
        parameters=MISSING if by_key else pick(draw, ctx, st.just(pvc), odd_params),
        path=pick(draw, ctx, st.one_of(st.sampled_from(MODEL_PATHS), st.sampled_from(BAD_PATHS)), ODD_PATHS),
        schemaPath=optional(draw, ctx, st.just("schema.json"), st.text(max_size=10)),
    )


@st.composite
def isvc_doc(draw: DrawFn, ctx: Ctx) -> dict:
    model_format = obj(
        name=pick(draw, ctx, st.sampled_from(FORMATS), ODD_NAMES),
        version=optional(draw, ctx, st.sampled_from(VERSIONS), ODD_NAMES),
    )
    storage_style = pick(draw, ctx, st.sampled_from(["storage", "uri"]), st.sampled_from(["both", "neither"]),
                         missing=False)
    if storage_style not in ("storage", "uri", "both"):
        storage_style = "neither"
    model = obj(
        modelFormat=pick(draw, ctx, st.just(model_format)),
        runtime=pick(draw, ctx, st.sampled_from([MISSING] * 4 + ["catch-all", "mlserver"]), ODD_NAMES),
        storage=(pick(draw, ctx, storage_block(ctx)) if storage_style in ("storage", "both") else MISSING),
        storageUri=pick(draw, ctx, STORAGE_URIS, ODD_URIS) if storage_style in ("uri", "both") else MISSING,
        protocolVersion=optional(draw, ctx, st.sampled_from(["grpc-v2", "v2"]), ODD_NAMES),
    )
    model = with_unknown_field(draw, ctx, model, ("storageuri", "Runtime", "storagePath", 1, True, None))
    style = pick(draw, ctx, st.sampled_from(["model", "model", "model", "legacy"]),
                 st.sampled_from(["both", "none"]), missing=False)
    predictor: dict = {}
    if style in ("model", "both"):
        predictor["model"] = pick(draw, ctx, st.just(model))
    if style in ("legacy", "both"):
        key = draw(st.sampled_from(["sklearn", "xgboost", "onnx", "triton"]))
        predictor[key] = obj(storageUri=pick(draw, ctx, STORAGE_URIS, ODD_URIS),
                             runtime=MISSING if not ctx.wrong_pct else optional(draw, ctx, RUNTIME_NAMES))
        if style == "both" and draw(st.booleans()):
            predictor["lightgbm"] = {"storageUri": f"pvc://{PVC}/mnist-svm.joblib"}
    out_of_range = st.one_of(st.integers(-(2**40), 2**40), st.sampled_from([-1, 101, 1001, 2**63, 2**64]))
    predictor.update(obj(
        canaryTrafficPercent=optional(draw, ctx, st.one_of(st.integers(0, 100), st.sampled_from([0, 100])),
                                      out_of_range),
        minReplicas=optional(draw, ctx, st.one_of(st.integers(0, 3), st.just(1000)), out_of_range),
        maxReplicas=optional(draw, ctx, st.integers(0, 5), out_of_range),
    ))
    predictor = with_unknown_field(draw, ctx, predictor, ("minReplica", "canarytrafficpercent", 7, False))
    mode = optional(draw, ctx, st.just("ModelMesh"),
                    st.one_of(st.sampled_from(["Serverless", "RawDeployment", "modelmesh", ""]), ODD_NAMES))
    annotations = obj(**{DEPLOYMENT_MODE: mode, "team": optional(draw, ctx, st.just("a"))})
    metadata = obj(
        name=pick(draw, ctx, NAMES, ODD_NAMES),
        namespace=optional(draw, ctx, st.sampled_from(NAMESPACES), ODD_NAMES),
        annotations=pick(draw, ctx, st.just(annotations)) if annotations else MISSING,
        labels=optional(draw, ctx, st.just({"team": "a"})),
    )
    metadata = with_unknown_field(draw, ctx, metadata, ("generation", 5))
    doc = obj(
        apiVersion=pick(draw, ctx, st.just(ISVC_API),
                        st.sampled_from([RT_API, "serving.kserve.io/v1", "v1", ""])),
        kind="InferenceService",
        metadata=pick(draw, ctx, st.just(metadata)),
        spec=pick(draw, ctx, st.just({"predictor": pick(draw, ctx, st.just(predictor))})),
    )
    return with_unknown_field(draw, ctx, doc, ("status", "Spec"))


@st.composite
def runtime_doc(draw: DrawFn, ctx: Ctx) -> dict:
    kind = draw(st.sampled_from(["ServingRuntime", "ServingRuntime", "ClusterServingRuntime"]))

    @st.composite
    def fmt(draw: DrawFn) -> dict:
        return obj(name=pick(draw, ctx, st.sampled_from(FORMATS), ODD_NAMES),
                   version=optional(draw, ctx, st.sampled_from(VERSIONS)),
                   autoSelect=optional(draw, ctx, st.sampled_from([True, True, False])),
                   priority=optional(draw, ctx, st.integers(1, 10), st.integers(-(2**64), 0)))

    @st.composite
    def quantities(draw: DrawFn) -> dict:
        names = draw(st.lists(RESOURCE_NAMES, max_size=3, unique=True))
        return {n: pick(draw, ctx, GOOD_QUANTITIES, BAD_QUANTITIES) for n in names}

    @st.composite
    def container(draw: DrawFn) -> dict:
        env = st.lists(st.builds(obj, name=st.sampled_from(["A", "B"]), value=st.text(max_size=5)),
                       max_size=2)
        resources = st.builds(obj, requests=st.one_of(st.just(MISSING), quantities()),
                              limits=st.one_of(st.just(MISSING), quantities()))
        return with_unknown_field(draw, ctx, obj(
            name=pick(draw, ctx, st.sampled_from(["mlserver", "triton", "c"])),
            image=optional(draw, ctx, st.just("seldonio/mlserver:1.7.1")),
            env=optional(draw, ctx, env),
            resources=optional(draw, ctx, resources),
            command=optional(draw, ctx, st.just(["mlserver", "start"])),
            args=optional(draw, ctx, st.just(["--x"])),
        ), ("ports", "Name"))

    adapter = obj(
        serverType=optional(draw, ctx, st.sampled_from(["mlserver", "triton", "ovms"])),
        runtimeManagementPort=optional(draw, ctx, st.integers(1, 65535), st.integers(-5, 70000)),
        memBufferBytes=optional(draw, ctx, st.integers(0, 2**31), st.integers(-(2**64), 2**64)),
        modelLoadingTimeoutMillis=optional(draw, ctx, st.integers(1, 10**6), st.integers(-(2**64), 2**64)),
    )
    spec = obj(
        supportedModelFormats=pick(draw, ctx, st.lists(fmt(), max_size=3)),
        multiModel=pick(draw, ctx, st.sampled_from([True, True, True, False])),
        disabled=optional(draw, ctx, st.sampled_from([False, False, True])),
        grpcDataEndpoint=optional(draw, ctx, GOOD_ENDPOINTS, BAD_ENDPOINTS),
        grpcEndpoint=optional(draw, ctx, GOOD_ENDPOINTS, BAD_ENDPOINTS),
        httpDataEndpoint=optional(draw, ctx, GOOD_ENDPOINTS, BAD_ENDPOINTS),
        replicas=optional(draw, ctx, st.integers(0, 5), st.integers(-(2**64), 2**64)),
        builtInAdapter=pick(draw, ctx, st.just(adapter)),
        containers=pick(draw, ctx, st.lists(container(), min_size=1, max_size=2), st.just([])),
        protocolVersions=optional(draw, ctx, st.just(["grpc-v2"])),
    )
    spec = with_unknown_field(draw, ctx, spec, ("multimodel", "replica", 3, None))
    annotations = optional(
        draw, ctx, st.fixed_dictionaries({"maxLoadingConcurrency": st.sampled_from(["1", "2", "64"])}),
        st.fixed_dictionaries({"maxLoadingConcurrency": st.one_of(
            st.sampled_from(["65", "0", "-1", "abc", "007", "1000", "", " 1"]), JUNK)}))
    metadata = obj(
        name=pick(draw, ctx, RUNTIME_NAMES, ODD_NAMES),
        namespace=(optional(draw, ctx, st.sampled_from(NAMESPACES), ODD_NAMES) if kind == "ServingRuntime"
                   else MISSING),
        annotations=annotations,
    )
    return obj(apiVersion=pick(draw, ctx, st.just(RT_API), st.sampled_from([ISVC_API, "v1"])), kind=kind,
               metadata=pick(draw, ctx, st.just(metadata)), spec=pick(draw, ctx, st.just(spec)))


OTHER_DOCS: SearchStrategy[Any] = st.one_of(
    st.sampled_from([
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": PVC},
         "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
         "spec": {"containers": [{"name": "c", "image": "busybox"}]}},
        {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "InferenceGraph", "metadata": {"name": "g"}},
        {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "TrainedModel", "metadata": {"name": "t"}},
        {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "Predictor", "metadata": {"name": "p"}},
        {"apiVersion": "serving.kserve.io/v1beta1"},
        {"kind": "InferenceService"},
        {"kind": "ServingRuntime", "apiVersion": RT_API},
        {"kind": "ClusterServingRuntime", "apiVersion": RT_API, "metadata": {"name": "x"}, "spec": {}},
        {},
    ]),
    st.text(max_size=20), st.integers(), st.lists(st.integers(), max_size=3), st.floats(),
)


# ---------------------------------------------------------------------------------------------
# One hostile value in one field of an otherwise clean document: every field msm reads, and
# for each a catalogue of values chosen to hurt, plus a generic strategy
# ---------------------------------------------------------------------------------------------

MODEL = ("spec", "predictor", "model")
STORAGE = (*MODEL, "storage")
CONTAINER = ("spec", "containers", 0)
GENERIC: Any = object()  # in a case: draw the value from the target's generic strategy
OUT_OF_RANGE = st.one_of(st.integers(-(2**40), 2**40), st.sampled_from([-1, 101, 1001, 2**63, 2**64]), JUNK)

NASTY_TEXT = ("", " ", "a\nb", "a" * 5000, "é" * 3000, "UPPER", "a.b", "a/b", "名前", "x" * 300, "-a", "null")
NASTY_SCALARS = (None, True, 0, -1, 2**64, math.nan, math.inf, 1.5, "50", [], {}, [1, "a"], {1: "a", "b": 2})
NASTY_INTS = (-1, 101, 1001, 2**63, 2**64, -(2**63), 1.5, math.nan, math.inf, -math.inf, True, "50", None)
NASTY_QUANTITIES = (math.nan, math.inf, -math.inf, "1e400", "-1", "100m", "0", "1Ei", "1E", "5GB", " 5Gi",
                    "1e-999999999", "1e999999999", "9223372036854775808", True, [], "1" + "0" * 400 + "Ki",
                    "1" + "0" * 1_000_000 + "Ki")
NASTY_PATHS = ("", "a\0b", "x" * 300, "/".join(["x" * 200] * 30), "../" * 3000 + "etc",
               "model-dir/" + "x" * 256, "..", "/", "/etc/passwd", "escape-link/secret.joblib",
               "dir-with-escape", "../../secret/secret.joblib", "p" * 6000, "mnist-svm.joblib\n",
               "%2e%2e/secret", 5, None)
NASTY_URIS = ("", "mnist-svm.joblib", "file:mnist-svm.joblib", "pvc://[abc/x", "http://[::1", f"pvc://{PVC}/a\0b",
              "pvc://" + "p" * 6000 + "/x", f"pvc://{PVC}/" + "x" * 300, "s3://" + "b" * 6000, f"pvc://{PVC}:80/x",
              f"pvc://{PVC}/../outside.joblib", f"pvc://{PVC}/escape-link", "file:///", "file:///etc/passwd",
              f"file://{DIR_PLACEHOLDER}/../secret/secret.joblib", "pvc:///x", "://", 7)
NASTY_PARAMS = ({"type": "pvc", "name": PVC, 1: "x"}, {"type": "pvc", "name": PVC, None: "x", "z": "y"},
                {"type": "pvc", "name": "p" * 6000}, {"type": "pvc"}, {"type": "pvc", "name": ""},
                {"type": "pvc", "name": "other-pvc"}, {"type": "s3", "name": PVC}, {"type": 1},
                {"type": "pvc", "name": 5}, "pvc", None)
#: Keys nobody should write next to the known ones: typos, non-strings, newlines, thousands of characters.
NASTY_KEYS = ({1: "x", "zz": "y"}, {None: 1, "a": 2}, {2.5: 1, "x": 1}, {True: 1}, {"a\nb": 1},
              {"k" * 2000: 1}, {"k" * 6000: 1}, {"minReplica": 1}, {"": None})
ODD_KEYS = st.dictionaries(st.one_of(st.text(max_size=8), st.integers(), st.none()), JUNK, min_size=1,
                           max_size=3)


def set_in(doc: dict, path: tuple[Any, ...], value: Any) -> dict:
    """A copy of ``doc`` with ``value`` at ``path`` (mappings and first list items made on the way)."""
    doc = dict(doc)
    if len(path) == 1:
        doc[path[0]] = value
        return doc
    head, index, rest = path[0], None, path[1:]
    if isinstance(rest[0], int):
        index, rest = rest[0], rest[1:]
    child = doc.get(head)
    if index is not None:
        items = list(child) if isinstance(child, list) else []
        while len(items) <= index:
            items.append({})
        item = items[index] if isinstance(items[index], dict) else {}
        items[index] = set_in(item, rest, value) if rest else value
        doc[head] = items
    else:
        doc[head] = set_in(child if isinstance(child, dict) else {}, rest, value)
    return doc


def get_in(doc: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        if isinstance(k, int):
            doc = doc[k] if isinstance(doc, list) and len(doc) > k else None
        else:
            doc = doc.get(k) if isinstance(doc, dict) else None
    return doc


def without(doc: dict, path: tuple[str, ...]) -> dict:
    parent = get_in(doc, path[:-1])
    if not isinstance(parent, dict) or path[-1] not in parent:
        return doc
    return set_in(doc, path[:-1], {k: v for k, v in parent.items() if k != path[-1]})


@dataclass(frozen=True)
class Target:
    """A field msm reads, the values that hurt it, and how to put one in a clean document."""

    kind: str  # isvc | runtime
    name: str
    nasty: tuple[Any, ...]
    generic: SearchStrategy[Any]
    apply: Callable[[dict, Any], dict]

    def __repr__(self) -> str:
        return f"<{self.kind} {self.name}>"


def at(kind: str, path: tuple[Any, ...], nasty: tuple[Any, ...],
       generic: SearchStrategy[Any] = JUNK) -> Target:
    return Target(kind, ".".join(map(str, path)), nasty, generic, lambda doc, v: set_in(doc, path, v))


def extra_keys(kind: str, path: tuple[Any, ...]) -> Target:
    def apply(doc: dict, keys: Any) -> dict:
        parent = get_in(doc, path) if path else doc
        return set_in(doc, path, {**(parent if isinstance(parent, dict) else {}), **keys}) if path else {
            **doc, **keys}
    return Target(kind, ".".join(map(str, path)) + ".<extra keys>", NASTY_KEYS, ODD_KEYS, apply)


def on_storage(key: str, nasty: tuple[Any, ...], generic: SearchStrategy[Any] = JUNK) -> Target:
    """A storage field, in a storage block that otherwise resolves (PVC, existing file)."""
    def apply(doc: dict, v: Any) -> dict:
        doc = without(doc, (*MODEL, "storageUri"))
        storage = {"parameters": {"type": "pvc", "name": PVC}, "path": "mnist-svm.joblib"}
        if key == "key":
            storage = {"path": "mnist-svm.joblib"}
        return set_in(doc, STORAGE, {**storage, key: v})
    return Target("isvc", f"storage.{key}", nasty, generic, apply)


def storage_uri() -> Target:
    return Target("isvc", "storageUri", NASTY_URIS, st.one_of(ODD_URIS, STORAGE_URIS),
                  lambda doc, v: set_in(without(doc, STORAGE), (*MODEL, "storageUri"), v))


def legacy_predictor() -> Target:
    def apply(doc: dict, v: Any) -> dict:
        pred = get_in(doc, ("spec", "predictor"))
        pred = {k: x for k, x in (pred if isinstance(pred, dict) else {}).items() if k != "model"}
        return set_in(doc, ("spec", "predictor"), {**pred, "sklearn": {"storageUri": v}})
    return Target("isvc", "predictor.sklearn.storageUri", NASTY_URIS, ODD_URIS, apply)


PRED = ("spec", "predictor")
TARGETS: tuple[Target, ...] = (
    at("isvc", ("apiVersion",), NASTY_TEXT),
    at("isvc", ("metadata",), NASTY_SCALARS),
    at("isvc", ("metadata", "name"), NASTY_TEXT + NASTY_SCALARS, ODD_NAMES),
    at("isvc", ("metadata", "namespace"), NASTY_TEXT + NASTY_SCALARS, ODD_NAMES),
    at("isvc", ("metadata", "annotations"), NASTY_SCALARS),
    at("isvc", ("metadata", "annotations", DEPLOYMENT_MODE), ("Serverless", "RawDeployment", *NASTY_TEXT, 5),
       ODD_NAMES),
    extra_keys("isvc", ("metadata", "annotations")),
    extra_keys("isvc", ("metadata", "labels")),
    at("isvc", ("spec",), NASTY_SCALARS),
    at("isvc", PRED, NASTY_SCALARS),
    at("isvc", MODEL, NASTY_SCALARS),
    at("isvc", (*MODEL, "modelFormat"), NASTY_SCALARS),
    at("isvc", (*MODEL, "modelFormat", "name"), NASTY_TEXT + NASTY_SCALARS, ODD_NAMES),
    at("isvc", (*MODEL, "modelFormat", "version"), NASTY_TEXT + NASTY_SCALARS, ODD_NAMES),
    at("isvc", (*MODEL, "runtime"), NASTY_TEXT + NASTY_SCALARS, ODD_NAMES),
    at("isvc", (*MODEL, "protocolVersion"), NASTY_TEXT),
    on_storage("path", NASTY_PATHS, st.one_of(ODD_PATHS, st.sampled_from(BAD_PATHS))),
    on_storage("parameters", NASTY_PARAMS),
    on_storage("key", ("nope", "", "default", "a\nb", "k" * 5000, 5, None), ODD_NAMES),
    on_storage("schemaPath", ("a\0b", "x" * 5000, 5)),
    storage_uri(),
    legacy_predictor(),
    at("isvc", (*PRED, "canaryTrafficPercent"), NASTY_INTS, OUT_OF_RANGE),
    at("isvc", (*PRED, "minReplicas"), NASTY_INTS, OUT_OF_RANGE),
    at("isvc", (*PRED, "maxReplicas"), NASTY_INTS, OUT_OF_RANGE),
    extra_keys("isvc", PRED),
    extra_keys("isvc", MODEL),
    extra_keys("isvc", ()),
    at("runtime", ("apiVersion",), NASTY_TEXT),
    at("runtime", ("metadata",), NASTY_SCALARS),
    at("runtime", ("metadata", "name"), NASTY_TEXT + NASTY_SCALARS, ODD_NAMES),
    at("runtime", ("metadata", "namespace"), NASTY_TEXT + NASTY_SCALARS, ODD_NAMES),
    at("runtime", ("metadata", "annotations", "maxLoadingConcurrency"),
       ("65", "0", "-1", "abc", "007", "1000", "", " 1", "1" * 5000, 2, None)),
    extra_keys("runtime", ("metadata", "annotations")),
    at("runtime", ("spec",), NASTY_SCALARS),
    at("runtime", ("spec", "supportedModelFormats"), NASTY_SCALARS),
    at("runtime", ("spec", "supportedModelFormats", 0), NASTY_SCALARS),
    at("runtime", ("spec", "supportedModelFormats", 0, "name"), NASTY_TEXT + NASTY_SCALARS, ODD_NAMES),
    at("runtime", ("spec", "supportedModelFormats", 0, "version"), NASTY_TEXT + NASTY_SCALARS),
    at("runtime", ("spec", "supportedModelFormats", 0, "priority"), NASTY_INTS, OUT_OF_RANGE),
    at("runtime", ("spec", "multiModel"), NASTY_SCALARS),
    at("runtime", ("spec", "disabled"), NASTY_SCALARS),
    at("runtime", ("spec", "replicas"), NASTY_INTS, OUT_OF_RANGE),
    at("runtime", ("spec", "grpcDataEndpoint"), ("port:0", "port:65536", "port:99999999999", "unix:", "port:",
                                                 "port:8001\n", "unix:/" + "x" * 5000, 8001), BAD_ENDPOINTS),
    at("runtime", ("spec", "httpDataEndpoint"), ("port:0", "tcp:1", 5), BAD_ENDPOINTS),
    at("runtime", ("spec", "builtInAdapter"), NASTY_SCALARS),
    at("runtime", ("spec", "builtInAdapter", "serverType"), NASTY_TEXT + NASTY_SCALARS),
    at("runtime", ("spec", "builtInAdapter", "memBufferBytes"), NASTY_INTS, OUT_OF_RANGE),
    at("runtime", ("spec", "builtInAdapter", "modelLoadingTimeoutMillis"), NASTY_INTS, OUT_OF_RANGE),
    at("runtime", ("spec", "containers"), NASTY_SCALARS),
    at("runtime", CONTAINER, NASTY_SCALARS),
    at("runtime", (*CONTAINER, "name"), NASTY_TEXT + NASTY_SCALARS),
    at("runtime", (*CONTAINER, "env"), (*NASTY_SCALARS, [None], [{"name": 5}], [{"value": "x"}])),
    at("runtime", (*CONTAINER, "resources"), NASTY_SCALARS),
    at("runtime", (*CONTAINER, "resources", "limits", "memory"), NASTY_QUANTITIES, BAD_QUANTITIES),
    at("runtime", (*CONTAINER, "resources", "requests", "memory"), NASTY_QUANTITIES, BAD_QUANTITIES),
    at("runtime", (*CONTAINER, "resources", "limits", "cpu"), NASTY_QUANTITIES, BAD_QUANTITIES),
    extra_keys("runtime", (*CONTAINER, "resources", "limits")),
    at("runtime", (*CONTAINER, "command"), NASTY_SCALARS),
    extra_keys("runtime", ("spec",)),
    extra_keys("runtime", CONTAINER),
)
#: Every (target, value) pair, and (target, GENERIC) once per target: drawn uniformly.
CASES: tuple[tuple[Target, Any], ...] = tuple(
    (t, v) for t in TARGETS for v in (*t.nasty, GENERIC))

#: Clean documents the cases start from: each resolves (with CATCH_ALL) when left alone.
BASE_ISVCS = (
    {"storage": {"parameters": {"type": "pvc", "name": PVC}, "path": "mnist-svm.joblib"}},
    {"storageUri": f"pvc://{PVC}/model-dir"},
    {"storageUri": f"file://{DIR_PLACEHOLDER}/models/inner-link", "runtime": "catch-all"},
    {"storage": {"key": "localMinIO", "path": "mnist-svm.joblib"},
     "modelFormat": {"name": "SKLearn", "version": "1"}},
    {"storage": {"path": "v2.joblib"}, "modelFormat": {"name": "xgboost"}},
)
BASE_RUNTIME_SPECS = (
    {"containers": [{"name": "mlserver", "resources": {"limits": {"memory": "2Gi", "cpu": "1"},
                                                      "requests": {"memory": "1Gi"}}}]},
    {"containers": [{"name": "c", "env": [{"name": "A", "value": "1"}]}, {"name": "mlserver"}],
     "builtInAdapter": {"serverType": "mlserver", "memBufferBytes": 1000, "modelLoadingTimeoutMillis": 5000},
     "grpcDataEndpoint": "port:8001", "replicas": 1},
)


def base_doc(kind: str, i: int, variant: int, cluster: bool) -> dict:
    """The ``variant``-th clean document of ``kind``, named after its position ``i``."""
    if kind == "isvc":
        extra = BASE_ISVCS[variant % len(BASE_ISVCS)]
        model = {"modelFormat": extra.get("modelFormat", {"name": "sklearn"}),
                 **{k: v for k, v in extra.items() if k != "modelFormat"}}
        return {"apiVersion": ISVC_API, "kind": "InferenceService",
                "metadata": {"name": f"m{i}", "namespace": "modelmesh-serving",
                             "annotations": {DEPLOYMENT_MODE: "ModelMesh"}},
                "spec": {"predictor": {"model": model, "minReplicas": i % 2}}}
    spec = {"supportedModelFormats": [{"name": "sklearn", "version": "1", "autoSelect": True, "priority": 2}],
            "multiModel": True, **BASE_RUNTIME_SPECS[variant % len(BASE_RUNTIME_SPECS)]}
    meta = {"name": f"rt-{i}"} if cluster else {"name": f"rt-{i}", "namespace": "modelmesh-serving"}
    return {"apiVersion": RT_API, "kind": "ClusterServingRuntime" if cluster else "ServingRuntime",
            "metadata": meta, "spec": spec}


@st.composite
def targeted_doc(draw: DrawFn, i: int = 0, kind: str | None = None) -> Any:
    """A clean document with one hostile value in one of the fields msm reads."""
    target, value = draw(st.sampled_from([c for c in CASES if kind is None or c[0].kind == kind]))
    if value is GENERIC:
        value = draw(target.generic)
    doc = base_doc(target.kind, i, draw(st.integers(0, 4)), draw(st.booleans()))
    return target.apply(doc, value)


@st.composite
def any_doc(draw: DrawFn) -> Any:
    kind = draw(st.sampled_from(["isvc", "isvc", "isvc", "runtime", "runtime", "other"]))
    if kind == "other":
        return draw(OTHER_DOCS)
    mode = draw(st.sampled_from(["clean", "targeted", "targeted", "sloppy"]))
    if mode == "targeted":
        return draw(targeted_doc(draw(st.integers(0, 3)), kind))
    ctx = Ctx(0) if mode == "clean" else Ctx(draw(st.sampled_from([3, 10, 40])))
    return strip_missing(draw((isvc_doc if kind == "isvc" else runtime_doc)(ctx)))


# ---------------------------------------------------------------------------------------------
# Known product bugs: kept out of the inputs unless MSM_PROPERTIES_KNOWN_BUGS lists them
# ---------------------------------------------------------------------------------------------

#: Free text msm quotes whole in its messages (bug 7) is cut to this many characters.
FREE_TEXT_LIMIT = 300
_FREE_TEXT = {"runtime", "name", "version", DEPLOYMENT_MODE, "namespace", "path", "storageUri", "key"}


def tame(doc: Any, path: tuple[Any, ...] = ()) -> Any:
    """``doc`` without the inputs of the known product bugs that KNOWN_BUGS does not list.

    1. NaN as a container resource quantity: decimal.InvalidOperation (validation.resource_problem).
    2. NUL in a storage path or storageUri: ValueError "embedded null byte" (storage._local).
    3. '[' or ']' in a storageUri's authority: ValueError "Invalid IPv6 URL" (storage.resolve_storage).
    4. A non-string key in storage.parameters: TypeError from json.dumps(sort_keys) (kserve.revision_id).
    5. Unknown fields whose keys are of mixed types: TypeError from sorted() (validation._schema_message).
    6. A storage path with a component over 255 bytes (or over 4095 in all): OSError ENAMETOOLONG
       (storage._local, Path.exists()).
    7. Free text quoted raw and whole in messages (runtime, format name and version, deploymentMode,
       namespace, storage path, key, PVC name): a long one makes a message of unbounded length, one
       with a newline a second line that names no file.
    8. (in :func:`dump`) A character YAML does not take raw (C0/C1 controls): the message is two
       lines, the second ``  in "<unicode string>", position N`` (kserve.parse_documents).
    9. A ServingRuntime whose metadata is a scalar or a list: AttributeError (validation._check_runtime).
    10. A mapping key with a newline or of thousands of characters (annotations, labels, resources,
        unknown fields): the field path in the message carries it raw (a second line that names no
        file, or a message of unbounded length).
    11. A metadata.name with a newline: every message of the document starts ``file doc N Kind/a``
        and goes on, on a second line, ``b: metadata.name 'a\\nb' is not a valid name`` (validation.describe).
    12. (in :func:`memory_quantities`) The suffixes ``E`` (10^18) and ``Ei`` (2^60) are refused as
        "not a Kubernetes quantity": the quantity regex takes them for an exponent
        (validation.parse_quantity).
    13. A quantity of a million digits with a binary suffix ("1000…0Ki", 1 MB, under the 2 MiB file
        limit): decimal.Overflow (validation.parse_quantity multiplies in the default context).
    """
    if isinstance(doc, dict):
        if (tamed(9) and not path and doc.get("kind") in ("ServingRuntime", "ClusterServingRuntime")
                and doc.get("metadata") and not isinstance(doc.get("metadata"), dict)):
            doc = {**doc, "metadata": None}
        out = {}
        for k, v in doc.items():
            if not isinstance(k, str) and tamed(4 if path[-1:] == ("parameters",) else 5):
                k = str(k)
            if isinstance(k, str) and tamed(10):
                k = k.replace("\n", " ")[:200]
            out[k] = tame(v, (*path, k))
        return out
    if isinstance(doc, list):
        return [tame(v, (*path, i)) for i, v in enumerate(doc)]
    if tamed(1) and isinstance(doc, float) and math.isnan(doc) and "resources" in path:
        return 1.0
    if isinstance(doc, str) and path:
        if tamed(13) and "resources" in path:
            doc = doc[:1000]
        if path[-1] in ("path", "storageUri", "key", "schemaPath") or "parameters" in path:
            if tamed(2):
                doc = doc.replace("\0", "")
            if tamed(3) and path[-1] == "storageUri":
                doc = doc.replace("[", "").replace("]", "")
            if tamed(6):
                doc = "/".join(part[:100] for part in doc.split("/"))[:1000]
        if tamed(11) and path[-2:] == ("metadata", "name"):
            doc = doc.replace("\n", " ")
        if tamed(7) and (path[-1] in _FREE_TEXT or "parameters" in path) and path[:2] != ("metadata", "name"):
            doc = doc.replace("\n", " ")[:FREE_TEXT_LIMIT]
    return doc


def needs_taming(text: str) -> bool:
    """Whether YAML ``text`` (edited by hand, say) holds an input of a known bug not asked for."""
    if not ALL_KNOWN_BUGS - KNOWN_BUGS:
        return False
    if re.search(r"\*[^\s,\]}]", text):
        return True  # aliases: repr() could expand a bomb; keep the text as it was before the edit
    try:
        docs = list(yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
        return any(repr(tame(d)) != repr(d) for d in docs)
    except RecursionError:  # a recursive alias: no known bug needs one
        return False
    except (yaml.YAMLError, ValueError):  # not loaded: msm refuses the whole file first
        return False


# ---------------------------------------------------------------------------------------------
# YAML text
# ---------------------------------------------------------------------------------------------

#: What a YAML reader refuses as a raw character (yaml.reader.Reader.NON_PRINTABLE).
_NOT_PRINTABLE = re.compile(r"[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def dump(doc: Any, style: str, sort_keys: bool = False, unicode: bool = True, width: int = 4096) -> str:
    if style == "json":
        text = json.dumps(doc, ensure_ascii=not unicode)
        if tamed(8):  # escape what YAML does not take raw
            text = _NOT_PRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
        return text + "\n"
    flow = {"block": False, "flow": True, "mixed": None}[style]
    try:
        return yaml.safe_dump(doc, default_flow_style=flow, sort_keys=sort_keys, allow_unicode=unicode,
                              width=width)
    except TypeError:  # keys of mixed types cannot be sorted
        return yaml.safe_dump(doc, default_flow_style=flow, sort_keys=False, allow_unicode=unicode,
                              width=width)


ANCHORED = f"""\
apiVersion: {ISVC_API}
kind: InferenceService
metadata: &meta
  name: anchored
  namespace: modelmesh-serving
  annotations: {{{DEPLOYMENT_MODE}: ModelMesh}}
spec:
  predictor:
    model:
      modelFormat: &fmt {{name: sklearn}}
      storage: &st {{parameters: {{type: pvc, name: {PVC}}}, path: mnist-svm.joblib}}
    sklearn: {{<<: *st}}
"""
MERGED_RUNTIME = f"""\
apiVersion: {RT_API}
kind: ServingRuntime
metadata:
  <<: &base {{namespace: modelmesh-serving}}
  name: merged
spec:
  supportedModelFormats: &formats
    - {{name: sklearn, autoSelect: true}}
  multiModel: true
  containers:
    - &c {{name: mlserver, image: seldonio/mlserver:1.7.1, resources: {{limits: {{memory: 1Gi}}}}}}
  builtInAdapter: {{serverType: mlserver}}
"""


def alias_bomb(levels: int, width: int) -> str:
    lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


SPECIAL_TEXTS: SearchStrategy[str] = st.one_of(
    st.sampled_from([
        ANCHORED, MERGED_RUNTIME,
        "a: *nope\n",
        "a: &a [*a]\n",
        f"apiVersion: {ISVC_API}\nkind: InferenceService\nmetadata: &m {{name: rec, x: *m}}\n"
        "spec: {predictor: &p {model: {modelFormat: {name: sklearn}, storageUri: 'pvc://x/y'}, extra: *p}}\n",
        f"apiVersion: {ISVC_API}\nkind: InferenceService\nmetadata:\n  name: dup\n  name: dup2\n"
        "spec: {predictor: {model: {modelFormat: {name: sklearn}, storageUri: pvc://my-models-pvc/v2.joblib}}}\n",
        f"apiVersion: {ISVC_API}\nkind: InferenceService\nmetadata:\n\tname: tab\n",
        "%YAML 1.2\n---\na: 1\n", "%TAG ! tag:example.com,2000:\n--- !foo\na: 1\n",
        "a: !!python/object/apply:os.system ['true']\n", "a: !!binary aGVsbG8=\n", "a: !!set {x, y}\n",
        "a: !!omap [{x: 1}]\n", "a: 2001-12-14t21:59:43.10-05:00\n", "? [a, b]\n: c\n", "? {a: 1}\n: c\n",
        "a: !custom x\n", "a: " + "[" * 70 + "]" * 70 + "\n", "a: " + "[" * 3000 + "]" * 3000 + "\n",
        "replicas: " + "9" * 5000 + "\n", "...\n---\n...\n", "--- |\n  text\n", "- - - -\n", "'unclosed\n",
        "a: b: c\n", "{\n", "\ufeffa: 1\n", "key: \"\\x00\\uFFFF\"\n", "&a a: 1\n", "!!str\n",
        "---\n---\n---\n",
    ]),
    st.builds(alias_bomb, st.integers(2, 9), st.integers(2, 12)),
    st.text(alphabet=st.sampled_from([*"ab:-{}[]&*!|>'\"#%@` \n\t?,.0123456789~", "\u00e9", "\u2028"]),
            max_size=120),
)

_INSERTED = st.sampled_from(list("x:-{}&*!|>'\"#%` \t?,~\\") + ([] if tamed(3) else ["[", "]"]))


@st.composite
def mutate(draw: DrawFn, text: str) -> str:
    """One or two edits of the kind a hand or a bad merge makes."""
    for _ in range(draw(st.integers(1, 2))):
        lines = text.split("\n")
        i = draw(st.integers(0, max(0, len(lines) - 1)))
        edit = draw(st.sampled_from(["tab", "dup", "delete", "truncate", "insert", "indent", "crlf", "bom"]))
        if edit == "tab":
            lines[i] = "\t" + lines[i].lstrip(" ")
        elif edit == "dup":
            lines.insert(i, lines[i])
        elif edit == "delete":
            del lines[i]
        elif edit == "indent":
            lines[i] = " " + lines[i]
        text = "\n".join(lines)
        if edit == "truncate":
            text = text[: draw(st.integers(0, len(text)))]
        elif edit == "insert":
            at = draw(st.integers(0, len(text)))
            text = text[:at] + draw(st.text(alphabet=_INSERTED, min_size=1, max_size=3)) + text[at:]
        elif edit == "crlf":
            text = text.replace("\n", "\r\n")
        elif edit == "bom":
            text = "\ufeff" + text
    return text


@st.composite
def manifest_text(draw: DrawFn) -> str:
    docs = [tame(d) for d in draw(st.lists(any_doc(), max_size=5))]
    style = draw(st.sampled_from(["block", "block", "flow", "mixed", "json"]))
    parts = [dump(d, style, draw(st.booleans()), draw(st.booleans()), draw(st.sampled_from([80, 4096])))
             for d in docs]
    if draw(st.sampled_from([False] * 9 + [True])):
        parts.insert(draw(st.integers(0, len(parts))), draw(SPECIAL_TEXTS))
    sep = draw(st.sampled_from(["---\n", "--- \n", "...\n---\n", "\n---\n"]))
    text = ("---\n" if draw(st.booleans()) else "") + sep.join(parts)
    if draw(st.sampled_from([False] * 7 + [True])):
        edited = draw(mutate(text))
        if not needs_taming(edited):
            text = edited
    return text


#: What a file of the folder is: YAML text, or one of these.
NOT_UTF8 = b"apiVersion: v1\nkind: \xff\xfe\n"
SYMLINK_OUT = "<a symlink to ../outside.yaml>"
DIRECTORY = "<a directory>"
OVERSIZE = "<a valid manifest padded past 2 MiB>"
FILE_NAMES = ("a.yaml", "b.yml", "models.yaml", "rt.yaml", "ünï côde.yaml", "x" * 200 + ".yaml",
              ".hidden.yaml", "notes.txt", "UPPER.YAML", "z.yaml")


@st.composite
def file_content(draw: DrawFn) -> str | bytes:
    roll = draw(st.integers(0, 39))
    if roll == 39:
        return draw(st.sampled_from([NOT_UTF8, SYMLINK_OUT, DIRECTORY, OVERSIZE]))
    if roll >= 36:
        return draw(SPECIAL_TEXTS)
    return draw(manifest_text())


@dataclass(frozen=True)
class Folder:
    """A manifest folder as plain data: file name -> content, and its msm-local.yaml."""

    files: dict[str, str | bytes]
    local_config: str

    def write(self, root: Path) -> Path:
        """Write the folder (with its storage) under ``root``; returns the manifest folder."""
        d = write_storage(root)
        (d / "msm-local.yaml").write_text(self.local_config)
        for name, content in self.files.items():
            p = d / name
            if content == SYMLINK_OUT:
                p.symlink_to(root / "outside.yaml")
            elif content == DIRECTORY:
                p.mkdir()
            elif content == OVERSIZE:
                p.write_text(f"apiVersion: {ISVC_API}\nkind: InferenceService\n" + "#" * 2**21 + "\n")
            elif isinstance(content, bytes):
                p.write_bytes(content)
            else:
                p.write_bytes(content.replace(DIR_PLACEHOLDER, str(d)).encode("utf-8"))
        return d


#: A runtime every model of a folder can resolve to, so that most documents reach their storage.
CATCH_ALL = {"apiVersion": RT_API, "kind": "ClusterServingRuntime", "metadata": {"name": "catch-all"},
             "spec": {"supportedModelFormats": [
                 {"name": f, "autoSelect": True}
                 for f in ("sklearn", "xgboost", "onnx", "lightgbm", "pytorch", "triton")],
                 "multiModel": True, "builtInAdapter": {"serverType": "mlserver"},
                 "containers": [{"name": "mlserver", "resources": {"limits": {"memory": "1Gi"}}}]}}


@st.composite
def any_folder(draw: DrawFn) -> Folder:
    names = draw(st.lists(st.sampled_from(FILE_NAMES), min_size=1, max_size=3, unique=True))
    files = {n: draw(file_content()) for n in names}
    if draw(st.sampled_from([True, True, True, False])):
        files["0-catch-all.yaml"] = dump(CATCH_ALL, "block")
    return Folder(files, draw(st.sampled_from(LOCAL_CONFIGS)))


@st.composite
def targeted_folder(draw: DrawFn) -> Folder:
    """The catch-all runtime and 6 to 10 targeted documents (each in a document that would
    resolve without it, under its own name) over three files."""
    files: dict[str, str | bytes] = {"0-catch-all.yaml": dump(CATCH_ALL, "block")}
    for i in range(draw(st.integers(6, 10))):
        doc = tame(draw(targeted_doc(i)))
        name = f"t{i % 3}.yaml"
        style = draw(st.sampled_from(["block", "block", "json"]))
        files[name] = str(files.get(name, "")) + "---\n" + dump(doc, style)
    return Folder(files, LOCAL_CONFIGS[1])


def case_label(target: Target, value: Any) -> str:
    text = repr(value)
    return f"{target.kind} {target.name} = {text[:60] + f'…({len(text)} chars)' if len(text) > 70 else text}"


def catalogue(batch: int = 25) -> list[tuple[Folder, list[tuple[str, Folder]]]]:
    """Every (field, hostile value) case of the catalogue, once, in folders of ``batch`` documents.

    Each folder comes with one folder per case (the case alone), to tell which case broke it.
    """
    cases = [(case_label(t, v), tame(t.apply(base_doc(t.kind, i, i, i % 2 == 1), v)))
             for i, (t, v) in enumerate(c for c in CASES if c[1] is not GENERIC)]
    out = []
    for start in range(0, len(cases), batch):
        files: dict[str, str | bytes] = {"0-catch-all.yaml": dump(CATCH_ALL, "block")}
        singles = []
        for j, (label, doc) in enumerate(cases[start:start + batch]):
            text = dump(doc, "block")
            files[f"t{j % 3}.yaml"] = str(files.get(f"t{j % 3}.yaml", "")) + "---\n" + text
            singles.append((label, Folder({"0-catch-all.yaml": dump(CATCH_ALL, "block"), "t.yaml": text},
                                          LOCAL_CONFIGS[1])))
        out.append((Folder(files, LOCAL_CONFIGS[1]), singles))
    return out


# ---------------------------------------------------------------------------------------------
# Valid folders (they must resolve, every model and runtime)
# ---------------------------------------------------------------------------------------------

VALID_LOCAL_CONFIG = (f"pvcs:\n  {PVC}: ./models\nstorageKeys:\n  localMinIO: ./minio\n  default: ./models\n"
                      "defaultNamespace: modelmesh-serving\n")
VALID_MODEL_PATHS = ("mnist-svm.joblib", "model-dir", "inner-link", "v2.joblib", "ünï côde.joblib",
                     "model-dir/weights.bin", "./mnist-svm.joblib")
LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
LEGACY_STYLE = ("sklearn", "xgboost", "lightgbm", "onnx")


@dataclass(frozen=True)
class FormatEntry:
    name: str
    version: str | None
    auto_select: bool
    priority: int | None


@dataclass(frozen=True)
class ValidRuntime:
    name: str
    cluster: bool
    formats: tuple[FormatEntry, ...]
    memory: str | None
    mem_buffer: int | None
    load_timeout_ms: int | None
    replicas: int | None

    def doc(self) -> dict:
        fmts = [obj(name=f.name, version=f.version or MISSING, autoSelect=f.auto_select,
                    priority=f.priority if f.priority is not None else MISSING) for f in self.formats]
        container = obj(name="mlserver", image="seldonio/mlserver:1.7.1",
                        resources={"limits": {"memory": self.memory}} if self.memory else MISSING)
        adapter = obj(serverType="mlserver",
                      memBufferBytes=self.mem_buffer if self.mem_buffer is not None else MISSING,
                      modelLoadingTimeoutMillis=self.load_timeout_ms or MISSING)
        meta = obj(name=self.name, namespace=MISSING if self.cluster else "modelmesh-serving")
        return {"apiVersion": RT_API, "kind": "ClusterServingRuntime" if self.cluster else "ServingRuntime",
                "metadata": meta,
                "spec": obj(supportedModelFormats=fmts, multiModel=True, grpcDataEndpoint="port:8001",
                            grpcEndpoint="port:8085", containers=[container], builtInAdapter=adapter,
                            replicas=self.replicas if self.replicas is not None else MISSING)}


@dataclass(frozen=True)
class ValidModel:
    name: str
    namespace: str | None
    fmt: str
    version: str | None
    runtime: str | None  # explicit spec.predictor.model.runtime
    storage: str  # pvc-params | pvc-uri | key | default-key | file-uri | legacy
    path: str
    path_v2: str | None  # a second version of the manifests rolls the model to this path
    canary: int | None
    min_replicas: int | None

    def doc(self, version: int = 1) -> dict:
        path = self.path_v2 if version == 2 and self.path_v2 else self.path
        where: dict = {
            "pvc-params": {"storage": {"parameters": {"type": "pvc", "name": PVC}, "path": path}},
            "pvc-uri": {"storageUri": f"pvc://{PVC}/{path}"},
            "key": {"storage": {"key": "localMinIO", "path": "mnist-svm.joblib"}},
            "default-key": {"storage": {"path": path}},
            "file-uri": {"storageUri": f"file://{DIR_PLACEHOLDER}/models/{path}"},
            "legacy": {"storageUri": f"pvc://{PVC}/{path}"},
        }[self.storage]
        if self.storage == "key" and version == 2 and self.path_v2:
            # the storage key's folder holds one model: version 2 moves it to the PVC
            where = {"storage": {"parameters": {"type": "pvc", "name": PVC}, "path": self.path_v2}}
        pred: dict = obj(canaryTrafficPercent=self.canary if self.canary is not None else MISSING,
                         minReplicas=self.min_replicas if self.min_replicas is not None else MISSING)
        if self.storage == "legacy":
            pred[self.fmt] = obj(runtime=self.runtime or MISSING, **where)
        else:
            pred["model"] = obj(modelFormat=obj(name=self.fmt, version=self.version or MISSING),
                                runtime=self.runtime or MISSING, **where)
        meta = obj(name=self.name, namespace=self.namespace or MISSING,
                   annotations={DEPLOYMENT_MODE: "ModelMesh"})
        return {"apiVersion": ISVC_API, "kind": "InferenceService", "metadata": meta,
                "spec": {"predictor": pred}}


@dataclass(frozen=True)
class ValidFolder:
    runtimes: tuple[ValidRuntime, ...]
    models: tuple[ValidModel, ...]
    layout: tuple[int, ...]  # how many documents go in each file
    style: str

    @property
    def rolls(self) -> bool:
        return any(m.path_v2 for m in self.models)

    def write(self, d: Path, version: int = 1) -> None:
        (d / "msm-local.yaml").write_text(VALID_LOCAL_CONFIG)
        for old in d.glob("*.yaml"):
            if old.name != "msm-local.yaml":
                old.unlink()
        docs = [r.doc() for r in self.runtimes] + [m.doc(version) for m in self.models]
        i = 0
        for n, count in enumerate(self.layout):
            part = docs[i:i + count]
            i += count
            text = "---\n".join(dump(x, self.style, False, True, 4096) for x in part)
            (d / f"f{n}.yaml").write_text(text.replace(DIR_PLACEHOLDER, str(d)))


def _dns1123_subdomain(max_len: int) -> SearchStrategy[str]:
    return st.lists(st.from_regex(LABEL, fullmatch=True), min_size=1, max_size=4).map(".".join).filter(
        lambda s: len(s) <= max_len)


@st.composite
def valid_runtime(draw: DrawFn, name: str) -> ValidRuntime:
    names = draw(st.lists(st.sampled_from(["sklearn", "xgboost", "lightgbm", "onnx"]), min_size=1, max_size=3,
                          unique=True))
    formats = tuple(FormatEntry(n, draw(st.sampled_from([None, "0", "1", "1.2"])), draw(st.booleans()),
                                draw(st.one_of(st.none(), st.integers(1, 10)))) for n in names)
    mem_buffer = draw(st.sampled_from([None, 0, 134217728]))
    memory = draw(st.sampled_from([None, "1Gi", "512Mi", "8Gi", "2e9"]))
    return ValidRuntime(name, draw(st.booleans()), formats, memory, mem_buffer,
                        draw(st.sampled_from([None, 1000, 90000])), draw(st.sampled_from([None, 1, 2])))


@st.composite
def valid_model(draw: DrawFn, name: str, runtimes: tuple[ValidRuntime, ...]) -> ValidModel:
    rt = draw(st.sampled_from(runtimes))
    entry = draw(st.sampled_from(rt.formats))
    explicit = not entry.auto_select or draw(st.booleans())
    version = None
    if entry.version and draw(st.booleans()):
        version = draw(st.sampled_from([entry.version, entry.version + ".5"]))
    elif not entry.version:
        version = draw(st.sampled_from([None, "3"]))
    # the legacy style (predictor.sklearn) has no version, and the CRD gives it no runtime field
    legacy = ["legacy"] if version is None and not explicit and entry.name in LEGACY_STYLE else []
    storage = draw(st.sampled_from(["pvc-params", "pvc-uri", "key", "default-key", "file-uri", *legacy]))
    fmt = entry.name if storage == "legacy" else draw(st.sampled_from([entry.name, entry.name.upper()]))
    namespace = (draw(st.sampled_from([None, "modelmesh-serving", "team-a"])) if rt.cluster
                 else draw(st.sampled_from([None, "modelmesh-serving"])))
    path = draw(st.sampled_from(VALID_MODEL_PATHS))
    path_v2 = draw(st.one_of(st.none(), st.sampled_from([p for p in VALID_MODEL_PATHS if p != path])))
    return ValidModel(name, namespace, fmt, version, rt.name if explicit else None, storage, path, path_v2,
                      draw(st.one_of(st.none(), st.integers(0, 100), st.sampled_from([0, 50, 100]))),
                      draw(st.one_of(st.none(), st.integers(0, 3), st.just(1000))))


@st.composite
def valid_folder(draw: DrawFn) -> ValidFolder:
    rt_names = draw(st.lists(st.one_of(st.sampled_from(RUNTIME_POOL), _dns1123_subdomain(253)), min_size=1,
                             max_size=2, unique=True))
    runtimes = tuple(draw(valid_runtime(n)) for n in rt_names)
    dns1035 = st.from_regex(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True)
    names = draw(st.lists(st.one_of(st.sampled_from(NAME_POOL), dns1035), min_size=1, max_size=6,
                          unique=True))
    models = tuple(draw(valid_model(n, runtimes)) for n in names)
    total = len(runtimes) + len(models)
    layout: list[int] = []
    while sum(layout) < total:
        layout.append(draw(st.integers(1, total - sum(layout))))
    return ValidFolder(runtimes, models, tuple(layout), draw(st.sampled_from(["block", "flow", "json"])))


# ---------------------------------------------------------------------------------------------
# Kubernetes quantities, with the value Kubernetes gives them
# ---------------------------------------------------------------------------------------------

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"": 1, "m": Fraction(1, 1000), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
            "E": 10**18}


@st.composite
def memory_quantities(draw: DrawFn) -> tuple[str, Fraction]:
    """A quantity in Kubernetes' grammar (``<signedNumber><suffix>``) and its exact value."""
    whole = draw(st.one_of(st.integers(0, 9999), st.integers(0, 10**20)))
    frac = draw(st.one_of(st.none(), st.text("0123456789", max_size=4)))
    number = ("" if whole == 0 and frac and draw(st.booleans()) else str(whole)) + (
        "" if frac is None else "." + frac)
    if number in ("", "."):
        number = "0"
    sign = draw(st.sampled_from(["", "", "+", "-"]))
    kind = draw(st.sampled_from(["binary", "decimal", "exponent"]))
    if kind == "exponent":
        exp = draw(st.integers(-20, 25))
        suffix, factor = f"{draw(st.sampled_from('eE'))}{exp}", Fraction(10) ** exp
    else:
        table = _BINARY if kind == "binary" else _DECIMAL
        names = [s for s in table if tamed(12) is False or s not in ("E", "Ei")]
        suffix = draw(st.sampled_from(names))
        factor = Fraction(table[suffix])
    value = Fraction(number if not number.startswith(".") else "0" + number) * factor
    return sign + number + suffix, -value if sign == "-" else value


# ---------------------------------------------------------------------------------------------
# Gateway options, within their valid ranges
# ---------------------------------------------------------------------------------------------


def gateway_options(tls: Callable[..., Any]) -> SearchStrategy[dict]:
    """``GatewayOptions`` keyword sets (all but the cluster layout, which the test varies itself)."""
    seconds = st.floats(min_value=0.001, max_value=3600, allow_nan=False, allow_infinity=False)
    ports = st.lists(st.integers(1, 65535), min_size=2, max_size=2, unique=True)
    return st.builds(
        lambda p, **kw: kw | {"rest_port": p[0], "grpc_port": p[1]},
        ports,
        listen_address=st.sampled_from(["127.0.0.1", "0.0.0.0", "::", "::1"]),
        subset_shards=st.one_of(st.integers(1, 8), st.integers(1, 256)),
        route_layout=st.sampled_from(["scoped", "flat"]),
        timeout_s=st.one_of(st.just(0.0), seconds),
        retries=st.one_of(st.integers(0, 5), st.integers(0, 1000)),
        per_try_timeout_s=st.one_of(st.none(), seconds),
        connect_timeout_s=st.floats(min_value=0.001, max_value=60),
        outlier_consecutive_gateway_failure=st.integers(1, 100),
        outlier_interval_s=st.floats(min_value=0.001, max_value=600),
        outlier_base_ejection_s=st.floats(min_value=0.001, max_value=3600),
        outlier_max_ejection_percent=st.integers(0, 100),
        route_stats=st.booleans(),
        max_request_bytes=st.one_of(st.integers(1, 2**32 - 1), st.just(64 * 1024 * 1024), st.just(2**40)),
        upstream_tls=st.one_of(st.none(), st.builds(tls, sni=st.sampled_from([None, "runtime.example"]),
                                                    alpn_h2=st.booleans())),
        ads=st.booleans(),
    )


__all__ = [
    "DIRECTORY", "KNOWN_BUGS", "KNOWN_BUGS_ENV", "NOT_UTF8", "OVERSIZE", "SYMLINK_OUT", "Folder",
    "ValidFolder", "any_folder", "catalogue", "gateway_options", "memory_quantities", "targeted_folder",
    "valid_folder", "write_storage",
]
