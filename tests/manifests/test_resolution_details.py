"""Resolution field for field: what a runtime document becomes, which runtime a model gets and
the exact words when it gets none, what a model carries on, and which document keeps a name
when several claim it.

The runtime selection messages are what a user reads in ``msm status`` / ``kubectl`` when a
model does not come up; each names every runtime considered and why it was passed over.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from _manifests_helpers import isvc, local_dir, runtime, write

from placement.manifests import kserve
from placement.manifests.desired_state import DEFAULT_RUNTIME_REPLICAS, ResolvedModel
from placement.manifests.kserve import Document, load_manifest_dir, parse_documents, resolve, resolve_model
from placement.manifests.local_config import LocalConfig

NS = "modelmesh-serving"


def rt_text(name: str, spec: dict[str, Any], *, kind: str = "ServingRuntime", namespace: str | None = NS,
            annotations: dict[str, str] | None = None) -> str:
    """A runtime document with exactly ``spec`` (a container is added when ``spec`` has none)."""
    meta: dict[str, Any] = {"name": name}
    if namespace and kind == "ServingRuntime":
        meta["namespace"] = namespace
    if annotations:
        meta["annotations"] = annotations
    spec = {"containers": [{"name": "mlserver", "image": "seldonio/mlserver:1.7.1"}], **spec}
    return yaml.safe_dump({"apiVersion": "serving.kserve.io/v1alpha1", "kind": kind, "metadata": meta,
                           "spec": spec}, sort_keys=False)


def docs(*texts: str, names: tuple[str, ...] = ()) -> list[Document]:
    """The documents of files ``f1.yaml``, ``f2.yaml``... (or ``names``), one text each."""
    out: list[Document] = []
    for i, t in enumerate(texts):
        found, errors = parse_documents(t, names[i] if names else f"f{i + 1}.yaml")
        assert errors == []
        out += found
    return out


def auto(*fmts: str, **extra: Any) -> dict[str, Any]:
    """A multi-model runtime spec offering ``fmts`` with autoSelect."""
    return {"supportedModelFormats": [{"name": f, "autoSelect": True} for f in fmts], "multiModel": True,
            **extra}


def error_of(state, name: str = "m", namespace: str = NS) -> str:
    assert name not in state.models
    return state.errors[f"{namespace}/{name}"]


# ---------------------------------------------------------------------------------------------
# A runtime document as msm uses it
# ---------------------------------------------------------------------------------------------


def test_a_runtime_takes_the_container_named_like_its_server_type_and_every_setting(tmp_path: Path) -> None:
    spec = auto("sklearn", replicas=3, httpDataEndpoint="port:8008")
    spec["containers"] = [
        {"name": "sidecar", "image": "proxy:1", "env": [{"name": "SIDE", "value": "1"}],
         "command": ["proxy"], "args": ["--side"]},
        {"name": "mlserver", "image": "seldonio/mlserver:1.7.1",
         "env": [{"name": "A", "value": "1"}, {"name": "EMPTY"}],
         "command": ["mlserver", "start"], "args": ["--port", "8080"]}]
    spec["builtInAdapter"] = {"serverType": "mlserver", "runtimeManagementPort": 8888,
                              "modelLoadingTimeoutMillis": 5000}
    # a local config that does not name the runtime: its own replicas; no namespace: the config's
    config = LocalConfig(base_dir=tmp_path, default_namespace="team-x")
    state = resolve(docs(rt_text("rt", spec, namespace=None)), config)
    rt = state.runtimes["rt"]
    assert (rt.name, rt.namespace, rt.replicas, rt.server_type) == ("rt", "team-x", 3, "mlserver")
    assert (rt.image, dict(rt.env)) == ("seldonio/mlserver:1.7.1", {"A": "1", "EMPTY": ""})
    assert (rt.command, rt.args) == (("mlserver", "start"), ("--port", "8080"))
    assert (rt.runtime_management_port, rt.http_data_port, rt.load_timeout_ms) == (8888, 8008, 5000)
    assert (rt.grpc_port, rt.grpc_data_port, rt.mem_buffer_bytes) == (None, None, None)
    assert rt.multi_model and not rt.disabled and rt.source == "f1.yaml doc 1"
    # nothing set: the defaults, the first container, no command of its own
    bare = resolve(docs(rt_text("bare", {}))).runtimes["bare"]
    assert (bare.namespace, bare.replicas, bare.load_timeout_ms) == (NS, DEFAULT_RUNTIME_REPLICAS, 90_000)
    assert (bare.image, bare.command, bare.args, dict(bare.env)) == ("seldonio/mlserver:1.7.1", (), (), {})
    assert (bare.multi_model, bare.formats, bare.runtime_management_port, bare.http_data_port) == (
        False, (), None, None)


@pytest.mark.parametrize("server_type", ["triton", None], ids=["no-container-of-that-name", "no-server-type"])
def test_without_a_container_named_like_the_server_type_the_first_one_is_the_server(server_type) -> None:
    spec = auto("sklearn", containers=[{"name": "a", "image": "first:1"}, {"name": "b", "image": "second:1"}])
    if server_type:
        spec["builtInAdapter"] = {"serverType": server_type}
    assert resolve(docs(rt_text("rt", spec))).runtimes["rt"].image == "first:1"


def test_a_runtime_without_multi_model_is_not_used_by_modelmesh() -> None:
    state = resolve(docs(isvc("m"), rt_text("rt", {"supportedModelFormats": [{"name": "sklearn",
                                                                               "autoSelect": True}]})))
    assert error_of(state).endswith("(considered: rt (ServingRuntime in modelmesh-serving): not multiModel)")


def test_the_env_of_a_runtime_is_its_server_containers_alone() -> None:
    """The local mesh starts the server with its container's env: a sidecar's is not mixed in."""
    spec = auto("sklearn", containers=[{"name": "sidecar", "env": [{"name": "X", "value": "side"}]},
                                       {"name": "mlserver", "env": [{"name": "Y", "value": "server"}]}],
                builtInAdapter={"serverType": "mlserver"})
    assert dict(resolve(docs(rt_text("rt", spec))).runtimes["rt"].env) == {"Y": "server"}


# ---------------------------------------------------------------------------------------------
# Runtime selection and its messages
# ---------------------------------------------------------------------------------------------


def test_an_explicit_runtime_not_found_lists_the_runtimes_the_model_could_name() -> None:
    sk = auto("sklearn")
    state = resolve(docs(isvc("m", runtime="rt"), rt_text("b", sk), rt_text("a", sk),
                         rt_text("c", auto("sklearn"), kind="ClusterServingRuntime"),
                         rt_text("x", auto("sklearn"), namespace="team-b")))
    assert error_of(state) == (
        "f1.yaml doc 1 InferenceService/m: runtime 'rt' not found in namespace modelmesh-serving nor as a "
        "ClusterServingRuntime; known runtimes: a (ServingRuntime in modelmesh-serving), "
        "b (ServingRuntime in modelmesh-serving), c (ClusterServingRuntime)")
    alone = resolve(docs(isvc("m", runtime="rt")))
    assert error_of(alone) == (
        "f1.yaml doc 1 InferenceService/m: runtime 'rt' not found in namespace modelmesh-serving nor as a "
        "ClusterServingRuntime; known runtimes: none")


def test_an_explicit_runtime_that_cannot_serve_the_model_says_why() -> None:
    single = rt_text("rt", {"supportedModelFormats": [{"name": "sklearn"}], "multiModel": False})
    assert error_of(resolve(docs(isvc("m", runtime="rt"), single))) == (
        "f1.yaml doc 1 InferenceService/m: runtime rt (ServingRuntime in modelmesh-serving) is not "
        "multiModel; ModelMesh needs spec.multiModel: true")
    offered = [{"name": "sklearn", "version": "1"}, {"name": "xgboost"}]
    versions = rt_text("rt", {"supportedModelFormats": offered, "multiModel": True},
                       kind="ClusterServingRuntime")
    assert error_of(resolve(docs(isvc("m", runtime="rt", version="2"), versions))) == (
        "f1.yaml doc 1 InferenceService/m: runtime rt (ClusterServingRuntime) does not support modelFormat "
        "sklearn version 2 (it supports: sklearn version 1, xgboost)")
    # the version counts for a runtime named explicitly too; a matching one is fine without autoSelect
    state = resolve(docs(isvc("m", runtime="rt", version="1.3"), versions))
    assert state.models["m"].runtime == "rt" and state.models["m"].model_format_version == "1.3"
    assert error_of(resolve(docs(isvc("m", runtime="rt"), rt_text("rt", {"multiModel": True})))).endswith(
        "runtime rt (ServingRuntime in modelmesh-serving) does not support modelFormat sklearn "
        "(it supports: none)")


def test_no_runtime_for_a_model_names_every_runtime_considered_and_why_in_order() -> None:
    state = resolve(docs(
        isvc("m"),
        rt_text("e-none", {"multiModel": True}),
        rt_text("d-other", {"supportedModelFormats": [{"name": "xgboost", "version": "1", "autoSelect": True},
                                                      {"name": "onnx"}], "multiModel": True}),
        rt_text("c-manual", {"supportedModelFormats": [{"name": "sklearn"}], "multiModel": True}),
        rt_text("b-single", auto("sklearn", multiModel=False)),
        rt_text("a-off", auto("sklearn", disabled=True)),
        rt_text("z-cluster-off", auto("sklearn", disabled=True), kind="ClusterServingRuntime"),
    ))
    assert error_of(state) == (
        "f1.yaml doc 1 InferenceService/m: no runtime with autoSelect supports modelFormat sklearn "
        "(considered: a-off (ServingRuntime in modelmesh-serving): disabled; "
        "b-single (ServingRuntime in modelmesh-serving): not multiModel; "
        "c-manual (ServingRuntime in modelmesh-serving): supports sklearn without autoSelect "
        "(name it in spec.predictor.model.runtime); "
        "d-other (ServingRuntime in modelmesh-serving): supports xgboost version 1, onnx (no autoSelect); "
        "e-none (ServingRuntime in modelmesh-serving): supports no formats; "
        "z-cluster-off (ClusterServingRuntime): disabled)")
    assert error_of(resolve(docs(isvc("m", version="2")))) == (
        "f1.yaml doc 1 InferenceService/m: no runtime with autoSelect supports modelFormat sklearn version 2 "
        "(considered: no ServingRuntime or ClusterServingRuntime is defined)")


def test_a_runtime_with_a_priority_goes_before_one_without() -> None:
    unset = rt_text("a-unset", auto("sklearn"))
    one = rt_text("b-one", {"supportedModelFormats": [{"name": "sklearn", "autoSelect": True, "priority": 1}],
                            "multiModel": True})
    assert resolve(docs(isvc("m"), unset, one)).models["m"].runtime == "b-one"


def test_a_disabled_runtime_is_passed_over_and_the_next_one_is_run() -> None:
    state = resolve(docs(isvc("m"), rt_text("a-off", auto("sklearn", disabled=True)),
                         rt_text("b-on", auto("sklearn"))))
    assert set(state.runtimes) == {"b-on"} and state.models["m"].runtime == "b-on"


def test_a_runtime_named_explicitly_is_the_namespaces_own_before_the_cluster_one() -> None:
    """Kubernetes mode: a ServingRuntime and a ClusterServingRuntime may share a name; a model
    naming it gets its namespace's (here told apart by their load timeouts)."""
    cluster = rt_text("rt", auto("sklearn", builtInAdapter={"modelLoadingTimeoutMillis": 1000}),
                      kind="ClusterServingRuntime")
    own = rt_text("rt", auto("sklearn", builtInAdapter={"modelLoadingTimeoutMillis": 2000}))
    state = resolve(docs(cluster, own, isvc("m", runtime="rt")), namespaced_runtimes=True)
    assert state.errors == {}
    m = state.models["m"]
    assert (m.runtime, m.load_timeout_s) == (f"{NS}/rt", 2.0)
    assert set(state.runtimes) == {"rt", f"{NS}/rt"}


# ---------------------------------------------------------------------------------------------
# What a model carries on
# ---------------------------------------------------------------------------------------------


def test_a_model_in_local_mode_carries_its_format_version_storage_and_stamp(tmp_path: Path) -> None:
    d = local_dir(tmp_path, model_bytes=1)
    write(d / "rt.yaml", runtime("mlserver", "- {name: sklearn, version: '1', autoSelect: true}"))
    write(d / "m.yaml", isvc("m", version="1"))
    m = load_manifest_dir(d).models["m"]
    st = (d / "models" / "mnist-svm.joblib").stat()
    assert m.model_format_version == "1"
    assert dict(m.storage_parameters) == {"type": "pvc", "name": "my-models-pvc"}
    assert (m.storage_stamp, m.size_estimate_bytes) == ((st.st_mtime_ns, 1), 1)  # never less than a byte
    assert m.desired().storage_stamp == (st.st_mtime_ns, 1)


def test_a_model_without_a_namespace_is_in_the_configured_default_one(tmp_path: Path) -> None:
    d = local_dir(tmp_path)
    config = LocalConfig(base_dir=d, pvcs={"my-models-pvc": d / "models"}, default_namespace="team-x")
    no_ns = yaml.safe_load(isvc("m"))
    del no_ns["metadata"]["namespace"]
    broken = yaml.safe_load(isvc("broken"))
    del broken["metadata"]["namespace"]
    broken["spec"]["predictor"]["canaryTrafficPercent"] = 500
    state = resolve(docs(yaml.safe_dump(no_ns), yaml.safe_dump(broken), runtime("rt", namespace="team-x")),
                    config)
    assert (state.models["m"].namespace, state.models["m"].runtime) == ("team-x", "rt")
    assert list(state.errors) == ["team-x/broken"]


def test_resolve_model_on_its_own_names_the_runtime_by_its_name() -> None:
    rts = list(resolve(docs(runtime("rt"))).runtimes.values())
    (doc,) = docs(isvc("m"))
    assert resolve_model(doc, rts).runtime == "rt"
    assert resolve_model(doc, rts, namespaced_runtimes=True).runtime == f"{NS}/rt"


def test_a_deployment_mode_other_than_modelmesh_is_refused_in_full() -> None:
    text = isvc("m").replace("deploymentMode: ModelMesh", "deploymentMode: RawDeployment")
    assert error_of(resolve(docs(text, runtime("rt")))) == (
        "f1.yaml doc 1 InferenceService/m: annotation serving.kserve.io/deploymentMode: RawDeployment is not "
        "served by msm, which serves ModelMesh (multi-model) deployments only")


def test_a_rollout_by_steps_and_a_canary_share_together_are_refused() -> None:
    body = yaml.safe_load(isvc("m", predictor={"canaryTrafficPercent": 10}))
    body["metadata"]["annotations"]["serving.msm.io/rollout-steps"] = "5,50"
    state = resolve(docs(yaml.safe_dump(body), runtime("rt")))
    assert "canaryTrafficPercent and a rollout by steps both set: choose one" in error_of(state)
    del body["spec"]["predictor"]["canaryTrafficPercent"]
    state = resolve(docs(yaml.safe_dump(body), runtime("rt")))
    assert state.models["m"].rollout is not None and state.models["m"].rollout.steps == (5, 50)


def test_every_problem_of_a_document_is_reported_one_a_line() -> None:
    body = yaml.safe_load(isvc("m", predictor={"canaryTrafficPercent": 500, "minReplicas": -1}))
    assert resolve(docs(yaml.safe_dump(body, sort_keys=False))).errors == {f"{NS}/m": (
        "f1.yaml doc 1 InferenceService/m: spec.predictor.canaryTrafficPercent must be between 0 and 100, "
        "got 500\n"
        "f1.yaml doc 1 InferenceService/m: spec.predictor.minReplicas must be between 0 and 1000, got -1")}


# ---------------------------------------------------------------------------------------------
# Who keeps a name
# ---------------------------------------------------------------------------------------------


def test_a_model_and_a_runtime_may_share_a_name() -> None:
    state = resolve(docs(isvc("mlserver"), runtime("mlserver")))
    assert state.errors == {} and state.models["mlserver"].runtime == "mlserver"


def test_runtimes_of_one_name_in_two_namespaces_the_first_namespace_keeps_it() -> None:
    """Without per-namespace runtimes the name must be unique: the namespace that sorts first
    keeps it (not the file), and the other is reported under its file, named with spaces and all."""
    state = resolve(docs(runtime("rt", namespace="team-b"), runtime("rt", namespace="team-a"),
                         runtime("after", namespace="team-c"),
                         names=("my runtimes.yaml", "other.yaml", "z.yaml")))
    assert state.runtimes["rt"].namespace == "team-a"
    assert "after" in state.runtimes  # the runtimes after the duplicate are still read
    assert state.errors == {"my runtimes.yaml": (
        "my runtimes.yaml doc 1 ServingRuntime/rt: a runtime named rt is already defined (other.yaml doc 1); "
        "msm needs runtime names to be unique; ignored")}


def test_models_after_a_refused_or_failed_one_are_still_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    real = kserve.resolve_model

    def buggy(doc, *a, **kw):
        if doc.name == "a-cursed":
            raise ZeroDivisionError("a bug")
        return real(doc, *a, **kw)

    monkeypatch.setattr(kserve, "resolve_model", buggy)
    state = resolve(docs(isvc("a-cursed"), isvc("m", namespace="team-a"), isvc("m", namespace="team-b"),
                         isvc("z"), runtime("rt", kind="ClusterServingRuntime", namespace=None)))
    assert set(state.models) == {"m", "z"} and state.models["m"].namespace == "team-a"
    assert set(state.errors) == {f"{NS}/a-cursed", "f3.yaml"}


def _serving(name: str, namespace: str, source: str) -> ResolvedModel:
    return ResolvedModel(name=name, namespace=namespace, revision_id=f"{name}__isvc-0000000000", runtime="rt",
                         model_type="sklearn", storage_path="p", canary_percent=None, min_copies=0,
                         load_timeout_s=1.0, size_estimate_bytes=1, source=source)


def test_the_serving_models_file_keeps_its_name_even_with_doc_in_the_files_name() -> None:
    crt = runtime("rt", kind="ClusterServingRuntime", namespace=None)
    found = docs(isvc("m", path="new"), isvc("m", path="old"), crt,
                 names=("a.yaml", "old doc v2.yaml", "rt.yaml"))
    state = resolve(found, incumbents={"m": _serving("m", NS, "old doc v2.yaml doc 1")})
    assert state.models["m"].storage_path == "pvc://my-models-pvc/old"
    assert list(state.errors) == ["a.yaml"]


def test_when_the_serving_models_file_is_gone_its_namespace_keeps_the_name() -> None:
    crt = runtime("rt", kind="ClusterServingRuntime", namespace=None)
    found = docs(isvc("m", namespace="team-a"), isvc("m", namespace="team-b"), crt,
                 names=("a.yaml", "b.yaml", "rt.yaml"))
    state = resolve(found, incumbents={"m": _serving("m", "team-b", "gone.yaml doc 1")})
    assert state.models["m"].namespace == "team-b" and list(state.errors) == ["a.yaml"]
    assert resolve(found).models["m"].namespace == "team-a"  # without it, the file that sorts first


def test_the_serving_api_object_keeps_its_name_against_an_older_one() -> None:
    """Kubernetes mode: documents are API objects (index 0), older first; the serving one wins."""
    def api_object(text: str, created: str) -> Document:
        body = yaml.safe_load(text)
        meta = body["metadata"]
        return Document(f"InferenceService {meta['namespace']}/{meta['name']}", 0, body, created=created)

    old = api_object(isvc("m", namespace="team-a"), "2024-01-01T00:00:00Z")
    serving = api_object(isvc("m", namespace="team-b"), "2025-01-01T00:00:00Z")
    crt = docs(runtime("rt", kind="ClusterServingRuntime", namespace=None))
    incumbent = _serving("m", "team-b", "InferenceService team-b/m")
    state = resolve([old, serving, *crt], incumbents={"m": incumbent})
    assert state.models["m"].namespace == "team-b"
    assert list(state.errors) == ["InferenceService team-a/m"]
    assert resolve([old, serving, *crt]).models["m"].namespace == "team-a"  # without it, the oldest


def test_a_runtime_named_like_the_serving_model_has_no_claim_on_anything() -> None:
    """Only InferenceServices hold model names: a runtime of the serving model's name, in the
    serving model's file, is a runtime like any other (the file that sorts first keeps it)."""
    found = docs(runtime("m"), runtime("m") + "---\n" + isvc("m"), names=("a.yaml", "z.yaml"))
    state = resolve(found, incumbents={"m": _serving("m", NS, "z.yaml doc 2")})
    assert state.runtimes["m"].source == "a.yaml doc 1"
    assert list(state.errors) == ["z.yaml"]


# ---------------------------------------------------------------------------------------------
# VirtualServices among the manifests
# ---------------------------------------------------------------------------------------------


def _vs(name: str, hosts: list[str], dest: str, *, namespace: str | None = None) -> str:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return yaml.safe_dump({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": meta,
                           "spec": {"hosts": hosts, "http": [{"route": [{"destination": {"host": dest}}]}]}})


def test_a_virtualservice_without_a_namespace_is_in_the_default_one(tmp_path: Path) -> None:
    d = local_dir(tmp_path)
    config = LocalConfig(base_dir=d, pvcs={"my-models-pvc": d / "models"}, default_namespace="team-x")
    state = resolve(docs(isvc("m", namespace="team-x"), runtime("rt", namespace="team-x"),
                         _vs("alias", ["a"], "m")), config)
    assert state.errors == {}
    assert set(state.virtual_services) == {"team-x/alias"}
    assert state.traffic["a"].source == "VirtualService team-x/alias"
    # and without a local config, in Kubernetes' default namespace
    state = resolve(docs(isvc("m", namespace="default"), runtime("rt", namespace="default"),
                         _vs("alias", ["a"], "m")))
    assert state.errors == {} and set(state.virtual_services) == {"default/alias"}


def test_virtualservice_problems_name_their_document() -> None:
    state = resolve(docs(isvc("m"), runtime("rt"), _vs("alias", ["a"], "gone", namespace=NS),
                         _vs("bad", [], "m", namespace=NS)))
    assert state.errors["f3.yaml"].startswith(
        "f3.yaml doc 1 VirtualService modelmesh-serving/alias: http[0]: destination gone is not an "
        "InferenceService")
    assert state.errors["f4.yaml"].startswith("f4.yaml doc 1 VirtualService/bad: spec.hosts")
