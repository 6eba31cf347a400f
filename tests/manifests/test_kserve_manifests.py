"""KServe manifests -> desired state: the article's YAML, runtime selection, storage, revision ids."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from _manifests_helpers import FIXTURES, copy_fixtures, isvc, local_dir, runtime, write

from placement.manifests.desired_state import DEFAULT_SIZE_ESTIMATE_BYTES
from placement.manifests.kserve import (
    load_manifest_dir,
    parse_documents,
    read_manifest_file,
    resolve,
    version_matches,
)
from placement.manifests.local_config import load_local_config

REVISION = re.compile(r"^[a-z0-9-]+__isvc-[0-9a-f]{10}$")


def docs_of(*texts: str, source: str = "m.yaml"):
    out = []
    for i, t in enumerate(texts):
        docs, errors = parse_documents(t, f"{i}-{source}")
        assert not errors
        out.extend(docs)
    return out


def test_article_sklearn_mnist_resolves_to_the_autoselected_mlserver_runtime(tmp_path: Path) -> None:
    local_dir(tmp_path, model_bytes=344817)  # the article's mnist-svm.joblib size
    copy_fixtures(tmp_path, "article-sklearn-mnist.yaml", "mlserver-runtime.yaml")
    state = load_manifest_dir(tmp_path)
    assert state.errors == {}
    m = state.models["sklearn-mnist"]
    assert REVISION.match(m.revision_id) and m.revision_id.startswith("sklearn-mnist__isvc-")
    assert (m.namespace, m.runtime, m.model_type) == ("modelmesh-serving", "mlserver-1.x", "sklearn")
    assert m.storage_path == str(tmp_path / "models" / "mnist-svm.joblib")
    assert m.size_estimate_bytes == int(344817 * 1.25)
    assert m.load_timeout_s == 90.0
    assert (m.canary_percent, m.min_copies) == (None, 0)
    rt = state.runtimes["mlserver-1.x"]
    assert rt.formats == ("sklearn", "xgboost", "lightgbm")
    assert (rt.grpc_data_port, rt.grpc_port, rt.server_type) == (8001, 8085, "mlserver")
    assert (rt.mem_buffer_bytes, rt.load_timeout_ms, rt.memory_limit_bytes) == (134217728, 90000, 2**30)
    assert rt.capacity_bytes == 2**30 - 134217728
    assert rt.multi_model and not rt.cluster_scoped and rt.env["MLSERVER_GRPC_PORT"] == "8001"


def test_article_peft_runtime_and_model_with_storage_key(tmp_path: Path) -> None:
    local_dir(tmp_path)
    write(tmp_path / "minio" / "sklearn" / "mnist-svm.joblib", "x" * 400)
    write(tmp_path / "msm-local.yaml", "pvcs: {my-models-pvc: ./models}\nstorageKeys: {localMinIO: ./minio}\n"
          "runtimeReplicas: {peft-model-server: 3}\n")
    copy_fixtures(tmp_path, "article-peft-runtime.yaml", "article-peft-demo.yaml")
    state = load_manifest_dir(tmp_path)
    assert state.errors == {}
    m = state.models["peft-demo"]
    assert (m.runtime, m.model_type, m.storage_key) == ("peft-model-server", "peft-model", "localMinIO")
    assert m.storage_path == str((tmp_path / "minio" / "sklearn" / "mnist-svm.joblib").resolve())
    assert m.size_estimate_bytes == 500
    rt = state.runtimes["peft-model-server"]
    assert rt.memory_limit_bytes == 5 * 2**30 and rt.memory_request_bytes == 4 * 2**30
    # ModelMesh's capacity: the request less memBufferBytes (CONTAINER_MEM_REQ_BYTES is the request)
    assert rt.capacity_bytes == 4 * 2**30 - 134217728
    assert rt.supported_formats[0].version == "1" and rt.supported_formats[0].auto_select
    assert rt.env["PEFT_MODEL_ID"] == "aipipeline/bloomz-560m_PROMPT_TUNING_CAUSAL_LM"
    assert rt.image == "registry.cn-beijing.aliyuncs.com/test/peft-model-server:latest"
    assert rt.replicas == 3  # runtimeReplicas of msm-local.yaml


def test_article_runtime_verbatim_reports_its_indentation_slip() -> None:
    """The article prints ` name:` one space short; kubectl rejects that too. Say where and why."""
    mf = read_manifest_file(FIXTURES / "article-peft-runtime-verbatim.yaml", "peft.yaml")
    assert mf.documents is None
    (msg,) = mf.errors
    assert msg.startswith("peft.yaml: not valid YAML at line 5, column 12: mapping values are not allowed")
    assert "namespace: modelmesh-serving" in msg and "indentation against line 4" in msg


def test_kubernetes_mode_keeps_storage_as_uris() -> None:
    docs = [d for f in ("article-sklearn-mnist.yaml", "mlserver-runtime.yaml", "article-peft-runtime.yaml",
                        "article-peft-demo.yaml") for d in read_manifest_file(FIXTURES / f, f).documents]
    state = resolve(docs, None)
    assert state.errors == {}
    assert state.models["sklearn-mnist"].storage_path == "pvc://my-models-pvc/mnist-svm.joblib"
    assert state.models["sklearn-mnist"].size_estimate_bytes == DEFAULT_SIZE_ESTIMATE_BYTES
    peft = state.models["peft-demo"]
    assert (peft.storage_path, peft.storage_key) == ("sklearn/mnist-svm.joblib", "localMinIO")
    # stable across processes: nothing machine-specific goes into the hash in Kubernetes mode
    assert state.models["sklearn-mnist"].revision_id == "sklearn-mnist__isvc-e013669702"


def test_article_file_with_pvc_and_pod_documents_ignores_them(tmp_path: Path) -> None:
    local_dir(tmp_path)
    pvc = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: my-models-pvc\nspec: {}\n"
    text = pvc + "---\n" + (FIXTURES / "article-sklearn-mnist.yaml").read_text()
    write(tmp_path / "all.yaml", text)
    write(tmp_path / "rt.yaml", runtime("mlserver"))
    state = load_manifest_dir(tmp_path)
    assert state.errors == {} and set(state.models) == {"sklearn-mnist"}


@pytest.fixture
def mdir(tmp_path: Path) -> Path:
    return local_dir(tmp_path, files=("mnist-svm.joblib", "other.joblib"))


def test_explicit_runtime_is_used_even_without_autoselect(mdir: Path) -> None:
    write(mdir / "rt.yaml", runtime("a", "- {name: sklearn, autoSelect: true, priority: 5}") + "---\n"
          + runtime("b", "- {name: sklearn}"))
    write(mdir / "m.yaml", isvc("m1", runtime="b") + "---\n" + isvc("m2"))
    state = load_manifest_dir(mdir)
    assert state.errors == {}
    assert (state.models["m1"].runtime, state.models["m2"].runtime) == ("b", "a")


@pytest.mark.parametrize(("rt_text", "expected"), [
    (runtime("other"),
     "runtime 'rt' not found in namespace modelmesh-serving nor as a ClusterServingRuntime"),
    (runtime("rt", extra="  disabled: true\n"),
     "runtime rt (ServingRuntime in modelmesh-serving) is disabled"),
    (runtime("rt").replace("multiModel: true", "multiModel: false"), "is not multiModel"),
    (runtime("rt", "- {name: xgboost, autoSelect: true}"),
     "does not support modelFormat sklearn (it supports: xgboost)"),
    (runtime("rt", namespace="elsewhere"), "(there is one in namespace elsewhere)"),
])
def test_explicit_runtime_problems_are_reported_per_model(mdir: Path, rt_text: str, expected: str) -> None:
    write(mdir / "rt.yaml", rt_text + "---\n" + runtime("good"))
    write(mdir / "m.yaml", isvc("m1", runtime="rt") + "---\n" + isvc("m2", path="other.joblib"))
    state = load_manifest_dir(mdir)
    assert set(state.models) == {"m2"} and state.models["m2"].runtime == "good"
    assert expected in state.errors["modelmesh-serving/m1"]
    assert state.errors["modelmesh-serving/m1"].startswith("m.yaml doc 1 InferenceService/m1: ")


def test_autoselect_priority_then_namespace_before_cluster_then_name() -> None:
    base = [isvc("m")]
    cluster_hi = runtime("c-hi", "- {name: sklearn, autoSelect: true, priority: 9}",
                         kind="ClusterServingRuntime")
    ns_lo = runtime("n-lo", "- {name: sklearn, autoSelect: true, priority: 1}")
    ns_same = runtime("z-ns", "- {name: sklearn, autoSelect: true, priority: 9}")
    ns_same2 = runtime("y-ns", "- {name: sklearn, autoSelect: true, priority: 9}")
    assert resolve(docs_of(*base, cluster_hi, ns_lo)).models["m"].runtime == "c-hi"
    assert resolve(docs_of(*base, cluster_hi, ns_lo, ns_same)).models["m"].runtime == "z-ns"
    assert resolve(docs_of(*base, ns_same, ns_same2, cluster_hi)).models["m"].runtime == "y-ns"
    # a runtime of another namespace is not visible; a cluster runtime is
    other_ns = runtime("x", "- {name: sklearn, autoSelect: true, priority: 50}", namespace="team-b")
    assert resolve(docs_of(*base, other_ns, ns_lo)).models["m"].runtime == "n-lo"


def test_format_version_must_match() -> None:
    mlserver = (FIXTURES / "mlserver-runtime.yaml").read_text()  # sklearn "0", xgboost "1"
    state = resolve(docs_of(isvc("ok", "xgboost", version="1"), isvc("old", "sklearn", version="0.24"),
                            isvc("bad", "sklearn", version="1"), mlserver))
    assert set(state.models) == {"ok", "old"}
    err = state.errors["modelmesh-serving/bad"]
    assert "no runtime with autoSelect supports modelFormat sklearn version 1" in err
    assert "mlserver-1.x (ServingRuntime in modelmesh-serving): supports sklearn version 0" in err
    assert version_matches("1", "1.2") and version_matches("1.2.3", "1") and not version_matches("1.2", "1.3")


def test_no_usable_runtime_names_what_was_considered_and_leaves_others_alone() -> None:
    state = resolve(docs_of(
        isvc("onnx-model", "onnx"), isvc("fine"),
        runtime("mlserver"),
        runtime("manual", "- {name: onnx}"),
        runtime("rt-off", "- {name: onnx, autoSelect: true}", extra="  disabled: true\n"),
    ))
    assert set(state.models) == {"fine"}
    err = state.errors["modelmesh-serving/onnx-model"]
    assert "no runtime with autoSelect supports modelFormat onnx" in err
    assert "manual (ServingRuntime in modelmesh-serving): supports onnx without autoSelect" in err
    assert "rt-off (ServingRuntime in modelmesh-serving): disabled" in err
    assert "mlserver (ServingRuntime in modelmesh-serving): supports sklearn" in err
    assert "rt-off" not in state.runtimes  # a disabled runtime is not run


def test_no_runtime_at_all() -> None:
    state = resolve(docs_of(isvc("m")))
    assert "no ServingRuntime or ClusterServingRuntime is defined" in state.errors["modelmesh-serving/m"]


def test_missing_model_file_and_unmapped_pvc_are_per_model_errors(mdir: Path) -> None:
    text = isvc("good") + "---\n" + isvc("gone", path="nope.joblib") + "---\n" + isvc("unmapped").replace(
        "name: my-models-pvc", "name: other-pvc")
    write(mdir / "m.yaml", text)
    write(mdir / "rt.yaml", runtime("mlserver"))
    state = load_manifest_dir(mdir)
    assert set(state.models) == {"good"}
    missing = mdir / "models" / "nope.joblib"
    assert f"model file {missing} not found (PVC my-models-pvc -> " in state.errors["modelmesh-serving/gone"]
    unmapped = state.errors["modelmesh-serving/unmapped"]
    assert "PVC other-pvc is not mapped to a folder in local mode" in unmapped
    assert "--pvc other-pvc=PATH" in unmapped
    # the --pvc flag maps it
    (mdir / "elsewhere").mkdir()
    (mdir / "elsewhere" / "mnist-svm.joblib").write_bytes(b"12345678")
    cfg = load_local_config(mdir, [f"other-pvc={mdir / 'elsewhere'}"])
    state = load_manifest_dir(mdir, cfg)
    assert state.models["unmapped"].storage_path == str(mdir / "elsewhere" / "mnist-svm.joblib")
    assert state.models["unmapped"].size_estimate_bytes == 10


def test_storage_uri_forms(mdir: Path) -> None:
    def with_uri(name: str, uri: str) -> str:
        return isvc(name).replace(
            "      storage:\n        parameters:\n          type: pvc\n          name: my-models-pvc\n"
            "        path: mnist-svm.joblib\n", f"      storageUri: {uri}\n")

    write(mdir / "m.yaml", "---\n".join([
        with_uri("by-pvc-uri", "pvc://my-models-pvc/mnist-svm.joblib"),
        with_uri("by-file-uri", f"file://{mdir}/models/other.joblib"),
        with_uri("by-s3", "s3://bucket/models/mnist"),
    ]))
    write(mdir / "rt.yaml", runtime("mlserver"))
    state = load_manifest_dir(mdir)
    assert state.models["by-pvc-uri"].storage_path == str(mdir / "models" / "mnist-svm.joblib")
    assert state.models["by-file-uri"].storage_path == str(mdir / "models" / "other.joblib")
    assert "s3:// storage cannot be fetched by the local mesh" in state.errors["modelmesh-serving/by-s3"]
    k8s = resolve([d for p in sorted(mdir.glob("*.yaml")) if p.name != "msm-local.yaml"
                   for d in read_manifest_file(p, p.name).documents], None)
    assert k8s.models["by-s3"].storage_path == "s3://bucket/models/mnist"


def test_legacy_framework_predictor_and_canary_min_replicas() -> None:
    legacy = ("apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata:\n  name: legacy\n"
              "  namespace: modelmesh-serving\nspec:\n  predictor:\n    minReplicas: 2\n"
              "    canaryTrafficPercent: 25\n    sklearn:\n      storageUri: s3://b/m\n")
    state = resolve(docs_of(legacy, runtime("mlserver")))
    m = state.models["legacy"]
    assert (m.model_type, m.runtime, m.min_copies, m.canary_percent) == ("sklearn", "mlserver", 2, 25)


def test_non_modelmesh_deployment_mode_is_refused() -> None:
    text = isvc("serverless").replace("deploymentMode: ModelMesh", "deploymentMode: Serverless")
    state = resolve(docs_of(text, runtime("mlserver")))
    assert "deploymentMode: Serverless is not served by msm" in state.errors["modelmesh-serving/serverless"]


def test_duplicates_are_reported_and_the_first_wins() -> None:
    state = resolve(docs_of(isvc("m", path="a"), isvc("m", path="b"), runtime("mlserver")))
    assert state.models["m"].storage_path == "pvc://my-models-pvc/a"
    assert "is already defined in 0-m.yaml doc 1, which stays in use; this one is ignored" in \
        state.errors["1-m.yaml"]


def test_revision_id_is_stable_and_follows_what_loading_depends_on(mdir: Path) -> None:
    write(mdir / "rt.yaml", runtime("mlserver", "- {name: sklearn, autoSelect: true}\n"
                                               "- {name: xgboost, autoSelect: true}"))
    write(mdir / "m.yaml", isvc("m"))
    first = load_manifest_dir(mdir).models["m"].revision_id
    assert load_manifest_dir(mdir).models["m"].revision_id == first  # as after a restart
    # what does not change loading does not change the revision
    write(mdir / "m.yaml", isvc("m", predictor={"canaryTrafficPercent": 10, "minReplicas": 1}))
    assert load_manifest_dir(mdir).models["m"].revision_id == first
    write(mdir / "m.yaml", isvc("m", path="other.joblib"))
    by_path = load_manifest_dir(mdir).models["m"].revision_id
    write(mdir / "m.yaml", isvc("m", fmt="xgboost"))
    by_format = load_manifest_dir(mdir).models["m"].revision_id
    assert len({first, by_path, by_format}) == 3
    assert all(REVISION.match(r) for r in (first, by_path, by_format))


def test_local_config_placement_settings_are_checked_against_the_engine_config(tmp_path: Path) -> None:
    (tmp_path / "msm-local.yaml").write_text(
        "placement:\n  scale_up_rpm_per_copy: 30\n  scale_interval_s: 2\n"
        "  idle_scale_down: false\n  max_load_failures: 2\n")
    assert dict(load_local_config(tmp_path).placement) == {
        "scale_up_rpm_per_copy": 30, "scale_interval_s": 2, "idle_scale_down": False, "max_load_failures": 2}
    for bad, why in (("no_such_knob: 1", "not an engine setting"),
                     ("max_load_failures: 2.5", "must be like 3"),
                     ("idle_scale_down: 1", "must be like True"),
                     ("scale_interval_s: -1", "must be like 10.0")):
        (tmp_path / "msm-local.yaml").write_text(f"placement:\n  {bad}\n")
        with pytest.raises(ValueError, match=why):
            load_local_config(tmp_path)


def test_revision_id_follows_the_model_format_version(mdir: Path) -> None:
    """A runtime may load another version of a format differently: a new version is a new revision."""
    rt = runtime("mlserver")  # sklearn, any version
    ids = {v: resolve(docs_of(isvc("m", version=v), rt)).models["m"].revision_id for v in (None, "1", "1.2")}
    assert len(set(ids.values())) == 3
    assert resolve(docs_of(isvc("m", version="1"), rt)).models["m"].revision_id == ids["1"]  # stable
    # in a watched folder: changing only modelFormat.version rolls the model to a new revision
    write(mdir / "rt.yaml", rt)
    write(mdir / "m.yaml", isvc("m", version="1"))
    (before,) = load_manifest_dir(mdir).desired_models()
    write(mdir / "m.yaml", isvc("m", version="2"))
    (after,) = load_manifest_dir(mdir).desired_models()
    assert before.name == after.name == "m" and REVISION.match(after.revision)
    assert after.revision != before.revision
    assert dataclasses.replace(after, revision=before.revision) == before  # nothing else changed
