"""Every validation message, in full: one manifest per check, hitting that check and nothing else.

The messages are what a user reads to fix a manifest (docs/manifests.md, "Validation and errors"),
so each is asserted whole: its file/doc/object prefix, the field path, and the explanation. A
check that stops firing, fires on the wrong field or loses its hint fails here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from _manifests_helpers import isvc, local_dir, runtime, write

from placement.manifests.kserve import (
    load_manifest_dir,
    parse_documents,
    parse_manifest_text,
    read_manifest_file,
    resolve,
)
from placement.manifests.validation import SCHEMAS_ENV, structural_problems, validate_document

ISVC = yaml.safe_load(isvc("m"))  # PVC storage, format sklearn, namespace modelmesh-serving
RT = yaml.safe_load(runtime("rt"))  # one container (mlserver), builtInAdapter, sklearn autoSelect
IS = "m.yaml doc 1 InferenceService/m: "
SR = "m.yaml doc 1 ServingRuntime/rt: "


def problems(body: Any) -> list[str]:
    """Every message msm gives for a one-document file ``m.yaml`` holding ``body``."""
    return list(parse_manifest_text(yaml.safe_dump(body, sort_keys=False), "m.yaml").errors)


def edited(base: dict, edit: Callable[[dict], Any]) -> dict:
    body = copy.deepcopy(base)
    edit(body)
    return body


def model(b: dict) -> dict:
    return b["spec"]["predictor"]["model"]


def container(b: dict) -> dict:
    return b["spec"]["containers"][0]


def test_the_unedited_manifests_are_valid() -> None:
    assert problems(ISVC) == [] and problems(RT) == []


INFERENCE_SERVICE_CASES = [
    # _Checker.mapping: required, and of the wrong type
    ("mapping-required", lambda b: b.pop("spec"), [IS + "spec is required"]),
    ("mapping-type", lambda b: b["spec"].update(predictor="sklearn"),
     [IS + "spec.predictor must be a mapping, got string"]),
    # _Checker.string: required (missing, or blank), and of the wrong type without the quoting hint
    ("string-required", lambda b: model(b)["modelFormat"].pop("name"),
     [IS + "spec.predictor.model.modelFormat.name is required"]),
    ("string-blank", lambda b: model(b)["modelFormat"].update(name="  "),
     [IS + "spec.predictor.model.modelFormat.name must not be empty"]),
    ("string-type", lambda b: b["metadata"].update(namespace=["a"]),
     [IS + "metadata.namespace must be a string, got list"]),
    # _Checker.integer: not an integer, out of a range (a lower bound only: modelLoadingTimeoutMillis)
    ("integer-type", lambda b: b["spec"]["predictor"].update(canaryTrafficPercent="50"),
     [IS + "spec.predictor.canaryTrafficPercent must be an integer, got string '50'"]),
    ("integer-range", lambda b: b["spec"]["predictor"].update(canaryTrafficPercent=150),
     [IS + "spec.predictor.canaryTrafficPercent must be between 0 and 100, got 150"]),
    # _Checker.string_map: a value that is not a string
    ("string-map", lambda b: b["metadata"]["annotations"].update(team=7),
     [IS + "metadata.annotations.team must be a string, got integer"]),
    # the predictor's model
    ("model-required", lambda b: b["spec"].update(predictor={"minReplicas": 1}),
     [IS + "spec.predictor.model is required (modelFormat and storage of the model)"]),
    ("two-frameworks", lambda b: b["spec"].update(predictor={"sklearn": {"storageUri": "s3://b/m"},
                                                             "xgboost": {"storageUri": "s3://b/m"}}),
     [IS + "spec.predictor names more than one framework (sklearn, xgboost); use one"]),
    # storage
    ("pvc-name", lambda b: model(b)["storage"]["parameters"].pop("name"),
     [IS + "spec.predictor.model.storage.parameters.name is required when parameters.type is pvc "
           "(the PVC's name)"]),
    ("path-required", lambda b: model(b)["storage"].pop("path"),
     [IS + "spec.predictor.model.storage.path is required (the model's path inside the storage)"]),
    ("path-blank", lambda b: model(b)["storage"].update(path=" "),
     [IS + "spec.predictor.model.storage.path must not be empty"]),
    ("storage-and-uri", lambda b: model(b).update(storageUri="s3://b/m"),
     [IS + "spec.predictor.model.storageUri cannot be used together with storage; use one of them"]),
    ("storage-required", lambda b: model(b).pop("storage"),
     [IS + "spec.predictor.model.storage is required: set storage (key/parameters and path) or storageUri"]),
    ("not-a-uri", lambda b: (model(b).pop("storage"), model(b).update(storageUri="models/m.joblib")),
     [IS + "spec.predictor.model.storageUri 'models/m.joblib' is not a URI "
           "(e.g. pvc://my-models-pvc/model.joblib, s3://bucket/path)"]),
    ("api-version", lambda b: b.update(apiVersion="serving.kserve.io/v1alpha1"),
     [IS + "apiVersion must be serving.kserve.io/v1beta1 for InferenceService, "
           "got 'serving.kserve.io/v1alpha1'"]),
    # the KServe CRD schema, where msm has no check of its own
    ("schema-unknown-fields", lambda b: b["spec"]["predictor"].update(minReplica=1, maxReplica=2),
     [IS + "spec.predictor unknown fields 'maxReplica', 'minReplica' (KServe CRD schema)"]),
    ("schema-quantity", lambda b: model(b).update(resources={"limits": {"memory": "5GB"}}),
     [IS + "spec.predictor.model.resources.limits.memory '5GB' is not a Kubernetes quantity "
           "(e.g. 512Mi, 5Gi) (KServe CRD schema)"]),
]


@pytest.mark.parametrize(("edit", "expected"), [c[1:] for c in INFERENCE_SERVICE_CASES],
                         ids=[c[0] for c in INFERENCE_SERVICE_CASES])
def test_inference_service_messages(edit, expected: list[str]) -> None:
    assert problems(edited(ISVC, edit)) == expected


SERVING_RUNTIME_CASES = [
    ("boolean", lambda b: b["spec"].update(multiModel="yes"),
     [SR + "spec.multiModel must be true or false, got string 'yes'"]),
    # _Checker.sequence: required, and of the wrong type
    ("sequence-required", lambda b: b["spec"].pop("containers"), [SR + "spec.containers is required"]),
    ("sequence-type", lambda b: b["spec"].update(supportedModelFormats="sklearn"),
     [SR + "spec.supportedModelFormats must be a list, got string"]),
    ("format-not-mapping", lambda b: b["spec"].update(supportedModelFormats=["sklearn"]),
     [SR + "spec.supportedModelFormats[0] must be a mapping with name (and version, autoSelect, priority), "
           "got string"]),
    ("endpoint", lambda b: b["spec"].update(grpcDataEndpoint="8001"),
     [SR + "spec.grpcDataEndpoint '8001' is not an endpoint (expected port:NNNN or unix:/path)"]),
    ("port-range", lambda b: b["spec"].update(grpcDataEndpoint="port:70000"),
     [SR + "spec.grpcDataEndpoint port 70000 is out of range 1-65535"]),
    ("no-containers", lambda b: b["spec"].update(containers=[]),
     [SR + "spec.containers must list at least one container (the model server)"]),
    ("container-not-mapping", lambda b: b["spec"].update(containers=["mlserver"]),
     [SR + "spec.containers[0] must be a mapping, got string"]),
    ("env-not-mapping", lambda b: container(b).update(env=["A=1"]),
     [SR + "spec.containers[0].env[0] must be a mapping with name and value, got string"]),
    ("quantity", lambda b: container(b).update(resources={"limits": {"memory": "5GB"}}),
     [SR + "spec.containers[0].resources.limits.memory '5GB' is not a Kubernetes quantity "
           "(e.g. 512Mi, 5Gi)"]),
    ("quantity-type", lambda b: container(b).update(resources={"limits": {"memory": True}}),
     [SR + "spec.containers[0].resources.limits.memory True is not a Kubernetes quantity (e.g. 512Mi, 5Gi)"]),
    ("timeout-min", lambda b: b["spec"]["builtInAdapter"].update(modelLoadingTimeoutMillis=0),
     [SR + "spec.builtInAdapter.modelLoadingTimeoutMillis must be >= 1, got 0"]),
    ("schema-type", lambda b: container(b).update(ports=[{"containerPort": "http"}]),
     [SR + "spec.containers[0].ports[0].containerPort must be of type integer, got string 'http' "
           "(KServe CRD schema)"]),
    ("schema-required", lambda b: container(b).update(ports=[{"name": "http"}]),
     [SR + "spec.containers[0].ports[0].containerPort is required (KServe CRD schema)"]),
]


@pytest.mark.parametrize(("edit", "expected"), [c[1:] for c in SERVING_RUNTIME_CASES],
                         ids=[c[0] for c in SERVING_RUNTIME_CASES])
def test_serving_runtime_messages(edit, expected: list[str]) -> None:
    assert problems(edited(RT, edit)) == expected


def test_names_follow_the_rule_of_their_kind() -> None:
    """An InferenceService name is a DNS-1035 label (63), a runtime's a DNS-1123 subdomain (253)."""
    assert problems(edited(ISVC, lambda b: b["metadata"].update(name="my.model"))) == [
        "m.yaml doc 1 InferenceService/my.model: metadata.name 'my.model' is not a valid name "
        "(lowercase letters, digits and '-', starting with a letter, at most 63 characters)"]
    long = "m" * 64
    assert problems(edited(ISVC, lambda b: b["metadata"].update(name=long))) == [
        f"m.yaml doc 1 InferenceService/{long}: metadata.name '{long}' is not a valid name "
        "(lowercase letters, digits and '-', starting with a letter, at most 63 characters)"]
    assert problems(edited(RT, lambda b: b["metadata"].update(name="my.runtime-1.x"))) == []
    assert problems(edited(RT, lambda b: b["metadata"].update(name="My_Runtime"))) == [
        "m.yaml doc 1 ServingRuntime/My_Runtime: metadata.name 'My_Runtime' is not a valid name "
        "(lowercase letters, digits, '-' and '.', at most 253 characters)"]


def test_a_document_without_metadata_is_named_by_its_kind() -> None:
    assert problems(edited(ISVC, lambda b: b.pop("metadata"))) == [
        "m.yaml doc 1 InferenceService: metadata is required"]


def test_documents_that_are_not_kserve_objects() -> None:
    assert list(parse_manifest_text("- a\n- b\n", "m.yaml").errors) == [
        "m.yaml doc 1: expected a mapping (a Kubernetes object), got list"]
    trained = ("apiVersion: serving.kserve.io/v1alpha1\nkind: TrainedModel\nmetadata:\n  name: t\n"
               "spec: {}\n")
    assert list(parse_manifest_text(trained, "m.yaml").errors) == [
        "m.yaml doc 1 TrainedModel/t: kind 'TrainedModel' is not supported by msm "
        "(it reads InferenceService, ServingRuntime, ClusterServingRuntime)"]
    # validate_document on its own (it is also called without the Document wrapper)
    assert structural_problems({"kind": "Pod"}) == [("kind", "'Pod' is not a kind msm reads")]
    assert validate_document({"kind": "Pod"}, "x.yaml doc 1 Pod/p") == [
        "x.yaml doc 1 Pod/p: kind 'Pod' is not a kind msm reads"]


def test_a_file_that_cannot_be_read(tmp_path: Path) -> None:
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00")
    mf = read_manifest_file(tmp_path / "bin.yaml", "bin.yaml")
    assert mf.documents is None
    assert mf.errors == ("bin.yaml: cannot read: 'utf-8' codec can't decode byte 0xff in position 0: "
                         "invalid start byte",)


def _docs(*texts: str) -> list:
    out = []
    for i, t in enumerate(texts, start=1):
        docs, errors = parse_documents(t, f"f{i}.yaml")
        assert errors == []
        out += docs
    return out


def test_duplicates_and_names_that_must_be_unique() -> None:
    state = resolve(_docs(isvc("m", namespace="a"), isvc("m", namespace="a", path="other"),
                          isvc("m", namespace="b"), runtime("rt", namespace="a"),
                          runtime("rt", kind="ClusterServingRuntime"),
                          runtime("crt", kind="ClusterServingRuntime")))
    assert set(state.models) == {"m"} and state.models["m"].namespace == "a"
    assert state.errors == {
        # the same object twice: the first one wins, the other is reported under its own file
        "f2.yaml": "f2.yaml doc 1 InferenceService/m: InferenceService a/m is already defined in f1.yaml "
                   "doc 1, which stays in use; this one is ignored",
        # a model name is what clients call: one namespace at a time has it
        "f3.yaml": "f3.yaml doc 1 InferenceService/m: clients call models by name alone, and m is already "
                   "claimed by namespace a (f1.yaml doc 1), which stays in use; this one (namespace b) is "
                   "ignored while that one exists",
        # a runtime name is a cluster name in the gateway: unique across namespaces and kinds
        "f5.yaml": "f5.yaml doc 1 ClusterServingRuntime/rt: a runtime named rt is already defined "
                   "(f4.yaml doc 1); msm needs runtime names to be unique; ignored",
    }


def test_a_cluster_runtime_defined_twice_is_named_without_a_namespace() -> None:
    """A ClusterServingRuntime has no namespace: the message names it alone (it once said
    ``None/crt``); a ServingRuntime defined twice keeps its ``namespace/name``."""
    crt = runtime("crt", kind="ClusterServingRuntime", namespace=None)
    state = resolve(_docs(crt, crt, runtime("rt"), runtime("rt")))
    assert state.errors == {
        "f2.yaml": "f2.yaml doc 1 ClusterServingRuntime/crt: ClusterServingRuntime crt is already defined in "
                   "f1.yaml doc 1, which stays in use; this one is ignored",
        "f4.yaml": "f4.yaml doc 1 ServingRuntime/rt: ServingRuntime modelmesh-serving/rt is already defined "
                   "in f3.yaml doc 1, which stays in use; this one is ignored",
    }
    assert set(state.runtimes) == {"crt", "rt"}


def test_storage_keys_not_mapped_in_local_mode(tmp_path: Path) -> None:
    local_dir(tmp_path)
    write(tmp_path / "rt.yaml", runtime("mlserver"))
    pvc = "        parameters:\n          type: pvc\n          name: my-models-pvc\n"
    by_key = isvc("keyed").replace(pvc, "        key: otherMinIO\n")
    no_key = isvc("unkeyed").replace(pvc, "")
    write(tmp_path / "m.yaml", by_key + "---\n" + no_key)
    state = load_manifest_dir(tmp_path)
    assert state.models == {}
    assert state.errors == {
        "modelmesh-serving/keyed":
            "m.yaml doc 1 InferenceService/keyed: storage.key otherMinIO is not mapped to a folder in "
            "local mode: add `storageKeys: {otherMinIO: ./folder}` to msm-local.yaml",
        "modelmesh-serving/unkeyed":
            "m.yaml doc 2 InferenceService/unkeyed: storage with no key (ModelMesh's default "
            "storage) is not mapped to a folder in local mode: add `storageKeys: {default: ./folder}` "
            "to msm-local.yaml",
    }


def test_schema_messages_of_other_crd_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$MSM_KSERVE_SCHEMAS may hold newer CRDs, with checks the shipped ones lack: a pattern that
    is not a quantity, and any other JSON Schema keyword (reported in jsonschema's words)."""
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "spec": {"versions": [{"name": "v1beta1", "schema": {"openAPIV3Schema": {
               "type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {
                   "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {
                       "predictor": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                                     "properties": {
                                         "serviceAccountName": {"type": "string", "pattern": "^[a-z-]+$"},
                                         "logger": {"type": "string", "enum": ["all", "request"]}}}}}}}}}]}}
    write(tmp_path / "serving.kserve.io_inferenceservices.yaml", yaml.safe_dump(crd))
    monkeypatch.setenv(SCHEMAS_ENV, str(tmp_path))

    def pred(**fields):
        return problems(edited(ISVC, lambda b: b["spec"]["predictor"].update(fields)))

    assert pred(serviceAccountName="SA_1") == [
        IS + "spec.predictor.serviceAccountName 'SA_1' does not match the pattern ^[a-z-]+$ "
             "(KServe CRD schema)"]
    assert pred(logger="none") == [
        IS + "spec.predictor.logger 'none' is not one of ['all', 'request'] (KServe CRD schema)"]
