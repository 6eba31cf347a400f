"""Validation: msm's own messages, the KServe CRD schema, and the local config."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from _manifests_helpers import FIXTURES, isvc, local_dir, runtime, write

from placement.manifests.kserve import load_manifest_dir, read_manifest_file
from placement.manifests.local_config import load_local_config, parse_pvc_flag
from placement.manifests.validation import (
    SCHEMAS_ENV,
    crd_schema_to_jsonschema,
    parse_quantity,
    schema_dir,
    schema_problems,
    validate_document,
)


@pytest.fixture
def mdir(tmp_path: Path) -> Path:
    local_dir(tmp_path)
    write(tmp_path / "rt.yaml", runtime("mlserver"))
    write(tmp_path / "good.yaml", isvc("good"))
    return tmp_path


def test_missing_format_name_message_names_file_doc_kind_and_field(mdir: Path) -> None:
    (mdir / "models").mkdir(exist_ok=True)
    bad = isvc("foo").replace("        name: sklearn\n", "        version: '1'\n")
    write(mdir / "models" / "bad.yaml", bad)  # not scanned: only the top level is
    write(mdir / "bad.yaml", "# comment\n---\n" + bad)
    state = load_manifest_dir(mdir)
    assert state.errors == {
        "modelmesh-serving/foo": "bad.yaml doc 1 InferenceService/foo: spec.predictor.model.modelFormat.name "
                                 "is required"}
    assert set(state.models) == {"good"}


def test_malformed_yaml_is_reported_with_its_line_and_changes_nothing_else(mdir: Path) -> None:
    write(mdir / "broken.yaml", "apiVersion: serving.kserve.io/v1beta1\nkind: [InferenceService\n")
    state = load_manifest_dir(mdir)
    assert set(state.models) == {"good"} and set(state.runtimes) == {"mlserver"}
    assert state.errors["broken.yaml"].startswith("broken.yaml: not valid YAML at line 3")


@pytest.mark.parametrize(("change", "expected"), [
    (lambda t: t.replace("version: '1'", "version: 1"),
     "spec.predictor.model.modelFormat.version must be a string, got integer (quote it: \"1\")"),
    (lambda t: t.replace("  predictor:\n", "  predictor:\n    canaryTrafficPercent: '50'\n"),
     "spec.predictor.canaryTrafficPercent must be an integer, got string '50'"),
    (lambda t: t.replace("  predictor:\n", "  predictor:\n    canaryTrafficPercent: 150\n"),
     "spec.predictor.canaryTrafficPercent must be between 0 and 100, got 150"),
    (lambda t: t.replace("  name: typed", "  name: Typed_Model"),
     "metadata.name 'Typed_Model' is not a valid name"),
    (lambda t: t.replace("      storage:", "      storageUri: s3://b/m\n      storage:"),
     "spec.predictor.model.storageUri cannot be used together with storage"),
    (lambda t: t.replace("          name: my-models-pvc\n", ""),
     "spec.predictor.model.storage.parameters.name is required when parameters.type is pvc"),
    (lambda t: t.replace("serving.kserve.io/v1beta1", "serving.kserve.io/v1alpha1"),
     "apiVersion must be serving.kserve.io/v1beta1 for InferenceService, got 'serving.kserve.io/v1alpha1'"),
])
def test_wrong_types_and_values_in_an_inference_service(mdir: Path, change, expected: str) -> None:
    write(mdir / "typed.yaml", change(isvc("typed", version="1")))
    state = load_manifest_dir(mdir)
    assert set(state.models) == {"good"}
    (msg,) = [v for k, v in state.errors.items()]
    assert msg.startswith("typed.yaml doc 1 InferenceService/") and expected in msg
    assert "(KServe CRD schema)" not in msg  # the schema agrees; msm's message is the one shown


@pytest.mark.parametrize(("change", "expected"), [
    (lambda t: t.replace("port:8001", "'8001'"),
     "spec.grpcDataEndpoint '8001' is not an endpoint (expected port:NNNN or unix:/path)"),
    (lambda t: t.replace("multiModel: true", "multiModel: 'yes'"), "spec.multiModel must be true or false"),
    (lambda t: t.replace("serverType: mlserver", "serverType: mlserver\n    memBufferBytes: 1Gi"),
     "spec.builtInAdapter.memBufferBytes must be an integer, got string '1Gi'"),
    (lambda t: t.replace("image: seldonio/mlserver:1.7.1",
                         "image: x\n      resources: {limits: {memory: 5GB}}"),
     "spec.containers[0].resources.limits.memory '5GB' is not a Kubernetes quantity"),
    (lambda t: t.replace("- {name: sklearn, autoSelect: true}", "- {autoSelect: true}"),
     "spec.supportedModelFormats[0].name is required"),
])
def test_wrong_types_and_values_in_a_serving_runtime(mdir: Path, change, expected: str) -> None:
    write(mdir / "rt2.yaml", change(runtime("second")))
    state = load_manifest_dir(mdir)
    assert set(state.runtimes) == {"mlserver"} and set(state.models) == {"good"}
    assert state.errors["rt2.yaml"].startswith("rt2.yaml doc 1 ServingRuntime/second: ")
    assert expected in state.errors["rt2.yaml"]


def test_crd_schema_catches_what_msm_does_not_check(mdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo'd field (kubectl --validate=strict refuses it) and a wrongly typed container port."""
    typo = isvc("typo").replace("  predictor:\n", "  predictor:\n    minReplica: 1\n")
    port = runtime("ports").replace("image: seldonio/mlserver:1.7.1",
                                    "image: x\n      ports: [{containerPort: http}]")
    write(mdir / "typo.yaml", typo + "---\n" + port)
    state = load_manifest_dir(mdir)
    assert state.errors["modelmesh-serving/typo"] == (
        "typo.yaml doc 1 InferenceService/typo: spec.predictor unknown field 'minReplica' "
        "(KServe CRD schema)")
    assert state.errors["typo.yaml"] == (
        "typo.yaml doc 2 ServingRuntime/ports: spec.containers[0].ports[0].containerPort must be of type "
        "integer, got string 'http' (KServe CRD schema)")
    assert set(state.models) == {"good"} and "ports" not in state.runtimes
    # without the CRD files only msm's own checks run, and they let both through
    monkeypatch.setenv(SCHEMAS_ENV, str(mdir / "no-such-dir"))
    monkeypatch.setattr("placement.manifests.validation.PACKAGED_CRDS", mdir / "no-such-dir-either")
    assert schema_dir() is None
    state = load_manifest_dir(mdir)
    assert state.errors == {} and {"typo", "good"} <= set(state.models) and "ports" in state.runtimes


def test_schemas_are_packaged_and_env_points_elsewhere(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SCHEMAS_ENV, raising=False)
    packaged = schema_dir()
    assert packaged is not None and packaged.parent.name == "manifests"  # inside the package
    other = tmp_path / "kserve-crds"
    other.mkdir()
    for f in packaged.glob("*.yaml"):
        (other / f.name).write_bytes(f.read_bytes())
    monkeypatch.setenv(SCHEMAS_ENV, str(other))
    assert schema_dir() == other


@pytest.mark.parametrize("name", ["article-sklearn-mnist.yaml", "article-peft-runtime.yaml",
                                  "article-peft-demo.yaml", "mlserver-runtime.yaml"])
def test_the_article_manifests_satisfy_the_crd_schema(name: str) -> None:
    (doc,) = read_manifest_file(FIXTURES / name, name).documents
    assert schema_problems(doc.body) == []
    assert validate_document(doc.body, name) == []


def test_crd_schema_conversion() -> None:
    crd = {"type": "object", "properties": {
        "port": {"x-kubernetes-int-or-string": True},
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                 "properties": {"a": {"type": "string"}}},
        "properties": {"type": "object", "properties": {"x": {"type": "integer"}}},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    }}
    s = crd_schema_to_jsonschema(crd)
    assert s["properties"]["port"] == {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert "additionalProperties" not in s["properties"]["free"]
    assert s["additionalProperties"] is False
    assert s["properties"]["properties"]["additionalProperties"] is False  # a field named "properties"
    assert s["properties"]["labels"]["additionalProperties"] == {"type": "string"}
    from jsonschema import Draft4Validator

    v = Draft4Validator(s)
    assert v.is_valid({"port": 8080, "free": {"anything": 1}, "labels": {"a": "b"}})
    assert v.is_valid({"port": "http"})
    assert not v.is_valid({"port": 1.5}) and not v.is_valid({"typo": 1})


def test_parse_quantity() -> None:
    assert parse_quantity("5Gi") == 5 * 2**30
    assert parse_quantity("512Mi") == 512 * 2**20
    assert parse_quantity("1G") == 10**9 and parse_quantity("1e3") == 1000
    assert parse_quantity("500m") == Decimal("0.5") and parse_quantity(42) == 42
    for bad in ("5GB", "Gi", "", True):
        with pytest.raises(ValueError, match="is not a Kubernetes quantity"):
            parse_quantity(bad)


def test_local_config_file_and_flags(tmp_path: Path) -> None:
    write(tmp_path / "msm-local.yaml",
          "pvcs: {my-models-pvc: ./models}\nstorageKeys: {localMinIO: /data/minio}\n"
          "runtimeReplicas: {mlserver-1.x: 3}\ndefaultNamespace: modelmesh-serving\nsampleModels: ./models\n")
    cfg = load_local_config(tmp_path)
    assert cfg.pvc_dir("my-models-pvc") == (tmp_path / "models").resolve()
    assert cfg.storage_key_dir("localMinIO") == Path("/data/minio")
    assert cfg.replicas_for("mlserver-1.x", 1) == 3 and cfg.replicas_for("other", 1) == 1
    assert cfg.default_namespace == "modelmesh-serving"
    assert cfg.sample_models_dir == (tmp_path / "models").resolve()
    over = load_local_config(tmp_path, ["my-models-pvc=/srv/models"])
    assert over.pvc_dir("my-models-pvc") == Path("/srv/models")
    assert parse_pvc_flag("p=rel", cwd=Path("/x")) == ("p", Path("/x/rel"))
    for bad in ("nameonly", "=path", "name="):
        with pytest.raises(ValueError, match="--pvc expects NAME=PATH"):
            parse_pvc_flag(bad)
    write(tmp_path / "msm-local.yaml", "pvc: {a: b}\n")
    with pytest.raises(ValueError, match=r"msm-local.yaml: unknown key\(s\) pvc"):
        load_local_config(tmp_path)
    write(tmp_path / "msm-local.yaml", "runtimeReplicas: {a: two}\n")
    with pytest.raises(ValueError, match=r"runtimeReplicas\.a must be a non-negative integer"):
        load_local_config(tmp_path)
    (tmp_path / "msm-local.yaml").unlink()
    assert load_local_config(tmp_path).pvcs == {}  # no config file: nothing mapped


def test_local_config_sample_set(tmp_path: Path) -> None:
    write(tmp_path / "msm-local.yaml", "sampleModels: ./models\nsampleSet: peft-demo\n")
    assert load_local_config(tmp_path).sample_set == "peft-demo"
    write(tmp_path / "msm-local.yaml", "sampleModels: ./models\n")
    assert load_local_config(tmp_path).sample_set == "digits"
    write(tmp_path / "msm-local.yaml", "sampleSet: llama\n")
    with pytest.raises(ValueError, match=r"sampleSet must be one of digits, complaints, peft-demo, got 'l"):
        load_local_config(tmp_path)
