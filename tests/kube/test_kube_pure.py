"""The pure parts of Kubernetes mode: runtime workloads from a ServingRuntime, instances from
runtime pods, the PVC rule of a runtime pod, and how the dev cluster's pod runner runs a container."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from placement.adapters.mlserver import pvc_model_path
from placement.kube.workloads import desired_workloads, pvcs_of, runtime_workloads
from placement.local.pod_runner import how_to_run, private_mounts, rewrite
from placement.local.pod_volumes import VolumeWriter, field_value, quantity, resource_field
from placement.manifests.kserve import Document, resolve
from placement.manifests.kube_names import ANNOTATION_INSTANCE, LABEL_RUNTIME
from placement.sources.kube import KINDS, document_of
from placement.sources.pods import instance_of_pod

FIXTURES = Path(__file__).resolve().parents[1] / "manifests" / "fixtures"
NS = "modelmesh-serving"


def objects() -> tuple[dict, dict]:
    sr = yaml.safe_load((FIXTURES / "mlserver-runtime.yaml").read_text())
    sr["metadata"].update(namespace=NS, uid="uid-sr-1")
    isvc = yaml.safe_load((FIXTURES / "article-sklearn-mnist.yaml").read_text())
    return sr, isvc


def state(*objs: dict):
    """The desired state of API objects, as the Kubernetes source resolves them."""
    kinds = {k.kind: k for k in KINDS}
    docs: list[Document] = [document_of(kinds[o["kind"]], o) for o in objs]
    return resolve(docs, None, namespaced_runtimes=True)


def test_a_runtime_in_use_is_a_deployment_with_the_adapter_and_its_pvcs_and_a_service() -> None:
    sr, isvc = objects()
    st = state(sr, isvc)
    assert not st.errors, st.errors
    dep, svc = desired_workloads(st.models, st.runtimes, {(NS, "mlserver-1.x"): sr}, adapter_image="msm:test")
    assert dep["metadata"]["name"] == "modelmesh-serving-mlserver-1.x"
    assert svc["metadata"]["name"] == "modelmesh-serving-mlserver-1-x"  # a Service name has no dots
    assert dep["spec"]["replicas"] == st.runtimes[f"{NS}/mlserver-1.x"].replicas
    for obj in (dep, svc):
        [owner] = obj["metadata"]["ownerReferences"]
        assert owner["uid"] == "uid-sr-1" and owner["kind"] == "ServingRuntime" and owner["controller"]
    pod = dep["spec"]["template"]
    assert pod["metadata"]["labels"][LABEL_RUNTIME] == "mlserver-1.x"
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    mlserver, adapter = pod["spec"]["containers"]
    assert mlserver["image"] == "seldonio/mlserver:1.7.1" and adapter["image"] == "msm:test"
    env = {e["name"]: e["value"] for e in mlserver["env"]}
    assert env["MLSERVER_HOST"] == "0.0.0.0"  # the gateway reaches MLServer directly
    assert env["MLSERVER_HTTP_PORT"] == "8002" and env["MLSERVER_GRPC_PORT"] == "8001"
    assert [e["name"] for e in mlserver["env"]].count("MLSERVER_HOST") == 1
    mounts = {m["mountPath"]: m for m in adapter["volumeMounts"]}
    assert mounts["/pvc_mounts/my-models-pvc"]["readOnly"] is True
    assert {m["mountPath"] for m in mlserver["volumeMounts"]} == set(mounts)
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["pvc-my-models-pvc"]["persistentVolumeClaim"] == {"claimName": "my-models-pvc",
                                                                  "readOnly": True}
    args = adapter["args"]
    assert args[args.index("--pvc-mount-root") + 1] == "/pvc_mounts"
    assert args[args.index("--mlserver-rest-url") + 1] == "http://127.0.0.1:8002"
    facts = json.loads(pod["metadata"]["annotations"][ANNOTATION_INSTANCE])
    assert facts["restPort"] == 8002 and facts["grpcPort"] == 8001 and facts["adapterPort"] == 8085
    assert facts["memBufferBytes"] == 134217728
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_a_runtime_no_model_uses_scales_to_zero_and_replicas_can_be_set() -> None:
    sr, isvc = objects()
    st = state(sr)
    dep, _ = desired_workloads(st.models, st.runtimes, {(NS, "mlserver-1.x"): sr}, adapter_image="m")
    assert dep["spec"]["replicas"] == 0
    st = state(sr, isvc)
    dep, _ = desired_workloads(st.models, st.runtimes, {(NS, "mlserver-1.x"): sr}, adapter_image="m",
                               replicas=3)
    assert dep["spec"]["replicas"] == 3


def test_pvcs_of_models() -> None:
    sr, isvc = objects()
    uri = json.loads(json.dumps(isvc))
    uri["metadata"]["name"] = "by-uri"
    uri["spec"]["predictor"]["model"].pop("storage")
    uri["spec"]["predictor"]["model"]["storageUri"] = "pvc://other-pvc/m.joblib"
    st = state(sr, isvc, uri)
    assert pvcs_of(st.models.values()) == ["my-models-pvc", "other-pvc"]
    dep, _ = runtime_workloads(sr, st.runtimes[f"{NS}/mlserver-1.x"], namespace=NS, replicas=1,
                               pvcs=pvcs_of(st.models.values()), adapter_image="m")
    claims = [v["persistentVolumeClaim"]["claimName"] for v in dep["spec"]["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v]
    assert claims == ["my-models-pvc", "other-pvc"]


def pod(ready: bool = True, **facts) -> dict:
    base = {"restPort": 8002, "grpcPort": 8001, "adapterPort": 8085, "capacityBytes": 1000,
            "memBufferBytes": 10, "loadTimeoutMs": 5000, "maxLoadingConcurrency": 2}
    return {"metadata": {"name": "rt-abc", "namespace": NS, "labels": {LABEL_RUNTIME: "mlserver-1.x"},
                         "annotations": {ANNOTATION_INSTANCE: json.dumps({**base, **facts})}},
            "status": {"phase": "Running", "podIP": "10.0.0.7",
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def test_a_ready_runtime_pod_is_an_instance_with_its_facts() -> None:
    inst = instance_of_pod(pod())
    assert inst is not None
    assert inst.info.id == f"rt-abc.{NS}" and inst.info.runtime == f"{NS}/mlserver-1.x"
    assert (inst.info.address, inst.info.rest_port, inst.info.grpc_port) == ("10.0.0.7", 8002, 8001)
    assert inst.info.capacity_bytes == 1000 and inst.info.unload_headroom_bytes == 10
    assert inst.info.max_concurrent_loads == 2
    assert inst.spi_address == "10.0.0.7:8085" and inst.load_timeout_s == 5.0
    assert not inst.info.mesh_tls
    meshed = pod()
    meshed["metadata"]["labels"]["security.istio.io/tlsMode"] = "istio"  # as Istio's injector labels it
    assert instance_of_pod(meshed).info.mesh_tls
    meshed["metadata"]["labels"]["security.istio.io/tlsMode"] = "disabled"
    assert not instance_of_pod(meshed).info.mesh_tls


def test_a_pod_that_is_not_ready_or_going_is_no_instance() -> None:
    assert instance_of_pod(pod(ready=False)) is None
    going = pod()
    going["metadata"]["deletionTimestamp"] = "2026-11-30T00:00:00Z"
    assert instance_of_pod(going) is None
    pending = pod()
    pending["status"]["phase"] = "Pending"
    assert instance_of_pod(pending) is None


@pytest.mark.parametrize("facts", [{"restPort": "8002"}, {"grpcPort": 70000}, {"capacityBytes": -1},
                                   {"adapterPort": True}])
def test_a_pod_whose_facts_are_wrong_is_refused_with_why(facts: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(facts))):
        instance_of_pod(pod(**facts))


def test_a_pod_with_a_bad_address_or_no_annotation_is_refused() -> None:
    bad = pod()
    bad["status"]["podIP"] = "10.0.0.7; rm -rf /"
    with pytest.raises(ValueError):
        instance_of_pod(bad)
    bare = pod()
    bare["metadata"]["annotations"] = {}
    with pytest.raises(ValueError, match=ANNOTATION_INSTANCE):
        instance_of_pod(bare)


def test_the_pvc_rule_of_a_runtime_pod(tmp_path: Path) -> None:
    root = tmp_path / "pvc_mounts"
    (root / "models" / "sub").mkdir(parents=True)
    (root / "models" / "m.joblib").write_bytes(b"x")
    (root / "other").mkdir()
    (root / "other" / "secret").write_text("s")
    assert pvc_model_path("pvc://models/m.joblib", root) == (root / "models" / "m.joblib").resolve()
    assert pvc_model_path("pvc://models/sub/", root) == (root / "models" / "sub").resolve()
    for bad, why in [("pvc://models/../other/secret", "'..'"), ("pvc://models/", "must name"),
                     ("s3://bucket/m", "PVCs only"), ("/etc/passwd", "PVCs only"),
                     ("pvc://Bad_Name/m", "not a PVC name")]:
        with pytest.raises(ValueError, match=why):
            pvc_model_path(bad, root)
    (root / "models" / "link").symlink_to(root / "other" / "secret")
    with pytest.raises(ValueError, match="outside the PVC models"):
        pvc_model_path("pvc://models/link", root)
    (root / "models" / "sub" / "escape").symlink_to(tmp_path)
    with pytest.raises(ValueError, match="outside the PVC models"):
        pvc_model_path("pvc://models/sub", root)


def test_the_pod_runner_runs_mlserver_msm_and_istio_proxy_images_only(tmp_path: Path) -> None:
    mlserver = how_to_run({"image": "seldonio/mlserver:1.7.1"}, "/venv/bin/python")
    assert isinstance(mlserver, list) and mlserver[-2:] == ["start", "$(MLSERVER_MODELS_DIR)"]
    msm = how_to_run({"image": "registry.example/msm:0.1.0", "command": ["msm", "adapter"], "args": ["--x"]},
                     "/venv/bin/python")
    assert msm == ["/venv/bin/python", "-m", "msm.cli", "adapter", "--x"]
    assert "`msm ...` command only" in how_to_run({"image": "msm:1", "command": ["sh", "-c", "x"]})
    assert "MLServer, msm and Istio proxy" in how_to_run({"image": "nvcr.io/nvidia/tritonserver:23.05"})
    # Istio's proxy image: its entrypoint, pilot-agent, as `make tools` built it, with the pod's args
    gateway = {"image": "docker.io/istio/proxyv2:1.31-dev", "args": ["proxy", "router", "--domain", "x"]}
    assert "none in" in how_to_run(gateway, tools_dir=tmp_path)
    agent = tmp_path / "pilot-agent"
    agent.write_text("#!/bin/sh\n")
    agent.chmod(0o755)
    assert how_to_run(gateway, tools_dir=tmp_path) == [str(agent), "proxy", "router", "--domain", "x"]
    assert "args only" in how_to_run({**gateway, "command": ["/bin/sh"]}, tools_dir=tmp_path)


def test_private_mounts_keep_the_command_and_give_it_the_pods_hosts(tmp_path: Path) -> None:
    cmd = private_mounts(tmp_path / "hosts", None, ["pilot-agent", "proxy", "a b"])
    assert cmd[:3] == ["unshare", "-m", "--"] and cmd[-3:] == ["pilot-agent", "proxy", "a b"]
    assert cmd[cmd.index("sh", 4) + 1:cmd.index("sh", 4) + 3] == [str(tmp_path / "hosts"), ""]
    with_bin = private_mounts(tmp_path / "hosts", tmp_path / "bin", ["x"])
    assert str(tmp_path / "bin") in with_bin


@pytest.mark.parametrize(("value", "number"), [("2", 2), ("500m", 0.5), ("1Gi", 2**30), ("3k", 3000),
                                               (4, 4)])
def test_quantities(value, number) -> None:
    assert quantity(value) == pytest.approx(number)


def test_resource_field_refs_round_up_in_divisor_units_and_default_to_the_node() -> None:
    c = {"resources": {"limits": {"cpu": "1500m", "memory": "1Gi"}}}
    assert resource_field(c, {"resource": "limits.cpu"}) == "2"
    assert resource_field(c, {"resource": "limits.memory", "divisor": "1Mi"}) == "1024"
    assert resource_field({}, {"resource": "limits.cpu"}) == str(os.cpu_count())
    with pytest.raises(ValueError, match="not known"):
        resource_field(c, {"resource": "limits.gpu"})


def test_downward_fields_as_a_kubelet_writes_them() -> None:
    meta = {"labels": {"b": "2", "a": 'say "hi"'}, "annotations": {"proxy.istio.io/config": "x: 1\n"}}
    assert field_value(meta, {}, "metadata.labels") == 'a="say \\"hi\\""\nb="2"'
    assert field_value(meta, {}, "metadata.annotations") == 'proxy.istio.io/config="x: 1\\n"'
    assert field_value(meta, {}, "metadata.labels['b']") == "2"
    assert field_value(meta, {"metadata.name": "p"}, "metadata.name") == "p"
    with pytest.raises(ValueError, match="not known"):
        field_value(meta, {}, "status.phase")


def test_volume_items_stay_inside_their_volume(tmp_path: Path) -> None:
    writer = VolumeWriter.__new__(VolumeWriter)  # no API needed for a downwardAPI volume
    pod = {"metadata": {"name": "p", "namespace": "n", "labels": {"a": "1"}}, "spec": {"containers": []}}
    vol = {"name": "podinfo", "downwardAPI": {"items": [{"path": "labels",
                                                          "fieldRef": {"fieldPath": "metadata.labels"}}]}}
    writer.write(vol, tmp_path / "v", pod, {})
    assert (tmp_path / "v" / "labels").read_text() == 'a="1"'
    for bad in ("../escape", "/etc/x", ""):
        vol["downwardAPI"]["items"][0]["path"] = bad
        with pytest.raises(ValueError, match="leaves the volume"):
            writer.write(vol, tmp_path / "v", pod, {})
    assert not (tmp_path / "escape").exists()


def test_the_pod_runner_rewrites_addresses_and_mount_paths(tmp_path: Path) -> None:
    roots = {"models", "pvc_mounts"}
    assert rewrite("http://127.0.0.1:8002", "127.0.10.3", tmp_path, roots) == "http://127.0.10.3:8002"
    assert rewrite("0.0.0.0", "127.0.10.3", tmp_path, roots) == "127.0.10.3"
    assert rewrite("localhost:8001", "127.0.10.3", tmp_path, roots) == "127.0.10.3:8001"
    assert rewrite("/models/_m/", "ip", tmp_path, roots) == f"{tmp_path}/models/_m/"
    assert rewrite("/etc/passwd", "ip", tmp_path, roots) == "/etc/passwd"  # not a mount: left alone
    assert rewrite("relative/models", "ip", tmp_path, roots) == "relative/models"


def test_a_cluster_runtime_runs_in_each_namespace_that_has_its_models() -> None:
    sr, isvc = objects()
    csr = json.loads(json.dumps(sr))
    csr["kind"] = "ClusterServingRuntime"
    csr["metadata"] = {"name": "mlserver-1.x", "uid": "uid-csr"}
    other = json.loads(json.dumps(isvc))
    other["metadata"].update(name="team-b-model", namespace="team-b")
    kinds = {k.kind: k for k in KINDS}
    st = resolve([document_of(kinds["ClusterServingRuntime"], csr),
                  document_of(kinds["InferenceService"], isvc),
                  document_of(kinds["InferenceService"], other)], None, namespaced_runtimes=True)
    assert not st.errors, st.errors
    objs = desired_workloads(st.models, st.runtimes, {("", "mlserver-1.x"): csr}, adapter_image="m")
    deployments = {o["metadata"]["namespace"]: o for o in objs if o["kind"] == "Deployment"}
    assert set(deployments) == {NS, "team-b"}
    for dep in deployments.values():
        [owner] = dep["metadata"]["ownerReferences"]
        assert owner["kind"] == "ClusterServingRuntime" and owner["uid"] == "uid-csr"
        assert dep["spec"]["replicas"] > 0


def test_two_namespaces_each_have_their_own_runtime_of_the_same_name() -> None:
    sr_a, isvc_a = objects()
    sr_b = json.loads(json.dumps(sr_a))
    sr_b["metadata"].update(namespace="team-b", uid="uid-sr-b")
    isvc_b = json.loads(json.dumps(isvc_a))
    isvc_b["metadata"].update(name="b-model", namespace="team-b")
    st = state(sr_a, isvc_a, sr_b, isvc_b)
    assert not st.errors, st.errors  # the same runtime name in two namespaces is fine
    assert st.models["sklearn-mnist"].runtime == f"{NS}/mlserver-1.x"
    assert st.models["b-model"].runtime == "team-b/mlserver-1.x"
    objects_by_key = {(NS, "mlserver-1.x"): sr_a, ("team-b", "mlserver-1.x"): sr_b}
    objs = desired_workloads(st.models, st.runtimes, objects_by_key, adapter_image="m")
    deps = {o["metadata"]["namespace"]: o for o in objs if o["kind"] == "Deployment"}
    assert set(deps) == {NS, "team-b"} and all(d["spec"]["replicas"] > 0 for d in deps.values())
    assert deps["team-b"]["metadata"]["ownerReferences"][0]["uid"] == "uid-sr-b"
    # the pods of each namespace are a pool of their own: models never go to another's pods
    b_pod = pod()
    b_pod["metadata"]["namespace"] = "team-b"
    assert instance_of_pod(b_pod).info.runtime == st.models["b-model"].runtime


class _Api:
    """The few CoreV1Api reads and the TokenRequest VolumeWriter makes (the real API server runs
    them in tests/istio); records the token requests."""

    def __init__(self) -> None:
        from types import SimpleNamespace as NS_

        self.ns = NS_
        self.config_maps = {("n", "cm"): {"data": {"a": "1", "b": "2"}, "binary_data": {"bin": "AAE="}}}
        self.secrets = {("n", "sec"): {"data": {"tls.crt": "Y2VydA=="}}}
        self.tokens: list[tuple[str, str, dict]] = []

    def read_namespaced_config_map(self, name, ns):
        from kubernetes.client.rest import ApiException

        if (ns, name) not in self.config_maps:
            raise ApiException(status=404, reason="Not Found")
        return self.ns(**self.config_maps[(ns, name)])

    def read_namespaced_secret(self, name, ns):
        from kubernetes.client.rest import ApiException

        if (ns, name) not in self.secrets:
            raise ApiException(status=404, reason="Not Found")
        return self.ns(**self.secrets[(ns, name)])

    def create_namespaced_service_account_token(self, sa, ns, body):
        self.tokens.append((sa, ns, body))
        return self.ns(status=self.ns(token=f"token-of-{sa}"))


def _writer() -> tuple[VolumeWriter, _Api]:
    w = VolumeWriter.__new__(VolumeWriter)
    w.core = _Api()
    return w, w.core


POD = {"metadata": {"name": "p", "namespace": "n", "uid": "u-1", "labels": {"app": "x"}},
       "spec": {"serviceAccountName": "gw", "containers": [
           {"name": "c", "resources": {"limits": {"cpu": "2"}}}]}}


def test_config_map_and_secret_volumes_as_a_kubelet_writes_them(tmp_path: Path) -> None:
    w, _ = _writer()
    w.write({"name": "v", "configMap": {"name": "cm"}}, tmp_path / "all", POD, {})
    assert {p.name: p.read_bytes() for p in (tmp_path / "all").iterdir()} == {
        "a": b"1", "b": b"2", "bin": b"\x00\x01"}
    w.write({"name": "v", "configMap": {"name": "cm", "items": [{"key": "b", "path": "sub/bee"}]}},
            tmp_path / "some", POD, {})
    some = tmp_path / "some"
    assert [p.relative_to(some).as_posix() for p in some.rglob("*") if p.is_file()] == ["sub/bee"]
    w.write({"name": "v", "secret": {"secretName": "sec"}}, tmp_path / "sec", POD, {})
    assert (tmp_path / "sec" / "tls.crt").read_bytes() == b"cert"
    # missing: an empty volume when optional, else a clear error naming it
    w.write({"name": "v", "configMap": {"name": "nope", "optional": True}}, tmp_path / "opt", POD, {})
    assert list((tmp_path / "opt").iterdir()) == []
    with pytest.raises(ValueError, match="ConfigMap n/nope"):
        w.write({"name": "v", "configMap": {"name": "nope"}}, tmp_path / "req", POD, {})
    with pytest.raises(ValueError, match="Secret n/nope"):
        w.write({"name": "v", "secret": {"secretName": "nope"}}, tmp_path / "req", POD, {})
    with pytest.raises(ValueError, match="no key zz"):
        w.write({"name": "v", "configMap": {"name": "cm", "items": [{"key": "zz", "path": "z"}]}},
                tmp_path / "req", POD, {})
    # an optional source skips a missing key
    w.write({"name": "v", "configMap": {"name": "cm", "optional": True,
                                        "items": [{"key": "zz", "path": "z"}, {"key": "a", "path": "a"}]}},
            tmp_path / "skip", POD, {})
    assert [p.name for p in (tmp_path / "skip").iterdir()] == ["a"]


def test_projected_volumes_with_a_token_bound_to_the_pod(tmp_path: Path) -> None:
    w, api = _writer()
    vol = {"name": "istio-token", "projected": {"sources": [
        {"serviceAccountToken": {"audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}},
        {"configMap": {"name": "cm", "items": [{"key": "a", "path": "a.txt"}]}},
        {"downwardAPI": {"items": [{"path": "cpu", "resourceFieldRef": {"containerName": "c",
                                                                       "resource": "limits.cpu"}}]}}]}}
    w.write(vol, tmp_path / "v", POD, {})
    assert (tmp_path / "v" / "istio-token").read_text() == "token-of-gw"
    assert (tmp_path / "v" / "a.txt").read_text() == "1"
    assert (tmp_path / "v" / "cpu").read_text() == "2"
    [(sa, ns, body)] = api.tokens
    assert (sa, ns) == ("gw", "n")
    assert body["spec"]["audiences"] == ["istio-ca"] and body["spec"]["expirationSeconds"] == 43200
    assert body["spec"]["boundObjectRef"] == {"kind": "Pod", "apiVersion": "v1", "name": "p", "uid": "u-1"}
    # a short expiry is raised to the API's minimum; no audience is the API's default one
    short = {"serviceAccountToken": {"path": "t", "expirationSeconds": 60}}
    w.write({"name": "t", "projected": {"sources": [short]}}, tmp_path / "t", POD, {})
    spec = api.tokens[-1][2]["spec"]
    assert spec["expirationSeconds"] == 600 and spec["audiences"] == []
    with pytest.raises(ValueError, match="clusterTrustBundle"):
        w.write({"name": "x", "projected": {"sources": [{"clusterTrustBundle": {}}]}}, tmp_path / "x",
                POD, {})


def test_a_measuring_runtime_gives_its_adapter_mlservers_metrics() -> None:
    sr, isvc = objects()
    plain_dep, _ = runtime_workloads(sr, state(sr, isvc).runtimes[f"{NS}/mlserver-1.x"], namespace=NS,
                                     replicas=1, pvcs=[], adapter_image="m")
    sr["metadata"].setdefault("annotations", {})["serving.msm.io/model-size"] = "measured"
    dep, _ = runtime_workloads(sr, state(sr, isvc).runtimes[f"{NS}/mlserver-1.x"], namespace=NS, replicas=1,
                               pvcs=[], adapter_image="m")

    def adapter_args(d: dict) -> list[str]:
        [a] = [c for c in d["spec"]["template"]["spec"]["containers"] if c["name"] == "msm-adapter"]
        return a["args"]

    assert "--measure-model-size" not in adapter_args(plain_dep)
    args = adapter_args(dep)
    assert args[args.index("--mlserver-metrics-url") + 1] == "http://127.0.0.1:8082/metrics"
    assert "--measure-model-size" in args


def test_virtual_service_status_says_what_it_routes_or_why_not_and_keeps_istiods_conditions() -> None:
    import datetime

    from placement.kube.status import VS_CONDITION, virtual_service_status

    now = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.UTC)
    istiod = {"type": "Reconciled", "status": "True", "lastTransitionTime": "2026-11-30T11:00:00Z"}
    ok = virtual_service_status(generation=3, hosts=["digits", "beta"], problem=None, in_use=True,
                                others=[istiod, {"type": VS_CONDITION, "status": "False"}], now=now)
    assert ok == {"observedGeneration": 3, "conditions": [
        istiod, {"type": VS_CONDITION, "status": "True", "reason": "Accepted",
                 "message": "routes beta, digits on the model gateway",
                 "lastTransitionTime": "2026-11-30T12:00:00Z"}]}
    bad = virtual_service_status(generation=4, hosts=[], problem="VirtualService ns/digits: http[0]: "
                                 "destination nope is not an InferenceService msm serves", in_use=False,
                                 others=[], now=now)
    [c] = bad["conditions"]
    assert (c["status"], c["reason"]) == ("False", "Refused") and "destination nope" in c["message"]
    kept = virtual_service_status(generation=5, hosts=["digits"], others=[], now=now, in_use=True,
                                  problem="…; its previous version stays in use")
    [c] = kept["conditions"]
    assert (c["status"], c["reason"]) == ("True", "PreviousVersionInUse")
    long = virtual_service_status(generation=None, hosts=[], problem="x" * 5000, in_use=False, others=[],
                                  now=now)
    assert len(long["conditions"][0]["message"]) == 1000 and "observedGeneration" not in long
