"""InferenceService status in KServe ModelMesh's shape: valid per the CRD, and what `kubectl get
isvc` and `kubectl wait --for=condition=Ready` read from a real API server."""

from __future__ import annotations

import asyncio
import datetime
import subprocess
from pathlib import Path

import pytest
import yaml
from kube_env import CRDS, api_client
from kubernetes import client

from placement.engine.model_types import LoadFailure, ModelStatus
from placement.kube.status import Gateway, StatusWriter, isvc_status
from placement.local.apiserver import ApiServer
from placement.manifests.validation import crd_schema_to_jsonschema

FIXTURES = Path(__file__).resolve().parents[1] / "manifests" / "fixtures"
NOW = datetime.datetime(2026, 11, 30, 12, 0, 0)
GW = Gateway("msm-gateway.msm-system", 8008, 8033)


def status_schema():
    from jsonschema import Draft4Validator

    text = (CRDS / "serving.kserve.io_inferenceservices.yaml").read_text()
    crd = next(d for d in yaml.safe_load_all(text) if d)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")
    schema = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    return Draft4Validator(crd_schema_to_jsonschema(schema))


REV = {"active_revision": "m__isvc-1", "target_revision": "m__isvc-1"}
TWO_FAILURES = (LoadFailure("rt-0", "bad pickle", 1.0), LoadFailure("rt-1", "bad pickle", 2.0))
CASES = {
    "loaded": (ModelStatus("m", True, ready_copies=2, **REV), None, ("Loaded", "", "UpToDate", "True")),
    "standby": (ModelStatus("m", True, **REV), None, ("Standby", "", "UpToDate", "True")),
    "loading": (ModelStatus("m", True, loading_copies=1, **REV), None, ("Loading", "", "UpToDate", "False")),
    "rolling": (ModelStatus("m", True, ready_copies=1, loading_copies=1, active_revision="m__isvc-1",
                            target_revision="m__isvc-2"), None, ("Loaded", "Loading", "InProgress", "True")),
    "failed": (ModelStatus("m", True, failed=True, failure="bad pickle", failures=TWO_FAILURES, **REV),
               None, ("FailedToLoad", "", "BlockedByFailedLoad", "False")),
    "invalid": (None, "m.yaml: no runtime with autoSelect supports modelFormat onnx",
                ("FailedToLoad", "", "InvalidSpec", "False")),
    "pending": (None, None, ("Pending", "", "InProgress", "False")),
}


@pytest.mark.parametrize("phase, status, reason, says", [
    ("stepping", "True", "Stepping", "step 2 of 3: 25% to m__isvc-2"),
    ("rolled back", "False", "RolledBack", "rolled back at 25%: error rate 20.0% against 0.0%"),
    ("promoted", "False", "Promoted", "promoted after 3 steps"),
])
def test_a_rollout_by_steps_is_a_condition_of_its_own(phase, status, reason, says) -> None:
    from placement.traffic.rollout import Rollout, RolloutSpec

    spec = RolloutSpec(steps=(5, 25, 50), interval_s=1, min_requests=1)
    r = Rollout("m", "m__isvc-1", "m__isvc-2", spec, 0)
    r.tick(0.0, True)
    r.observe("m__isvc-2", False, 0.01)
    r.tick(1.0, True)  # step 2
    if phase == "rolled back":
        r.observe("m__isvc-2", True, 0.01)
        for _ in range(4):
            r.observe("m__isvc-2", False, 0.01)
        r.tick(2.0, True)
    elif phase == "promoted":
        for t in (2.0, 3.0):
            r.observe("m__isvc-2", False, 0.01)
            r.tick(t, True)
    assert r.phase.value == phase
    model = CASES["rolling"][0]
    st = isvc_status("m", generation=1, model=model, problem=None, gateway=GW, now=NOW, rollout=r.status(3.0))
    assert [e.message for e in status_schema().iter_errors(st)] == []
    cond = {c["type"]: c for c in st["conditions"]}["RolloutProgressing"]
    assert (cond["status"], cond["reason"]) == (status, reason) and cond["message"].startswith(says)
    assert {c["type"]: c["status"] for c in st["conditions"]}["Ready"] == "True"  # it serves meanwhile


@pytest.mark.parametrize("case", list(CASES))
def test_each_state_is_valid_per_the_crd_and_says_what_modelmesh_says(case: str) -> None:
    model, problem, (active, target, transition, ready) = CASES[case]
    st = isvc_status("m", generation=3, model=model, problem=problem, gateway=GW, now=NOW)
    errors = [e.message for e in status_schema().iter_errors(st)]
    assert errors == []
    assert st["modelStatus"]["states"] == {"activeModelState": active, "targetModelState": target}
    assert st["modelStatus"]["transitionStatus"] == transition
    assert {c["type"]: c["status"] for c in st["conditions"]} == {"Ready": ready, "PredictorReady": ready}
    assert st["observedGeneration"] == 3 and st["url"] == "grpc://msm-gateway.msm-system:8033"
    if case == "failed":
        assert st["modelStatus"]["copies"] == {"totalCopies": 0, "failedCopies": 2}
        assert st["modelStatus"]["lastFailureInfo"]["reason"] == "ModelLoadFailed"
        assert st["modelStatus"]["lastFailureInfo"]["location"] == "rt-1"
    if case == "invalid":
        assert st["modelStatus"]["lastFailureInfo"]["reason"] == "NoSupportingRuntime"




@pytest.mark.e2e
@pytest.mark.asyncio(loop_scope="session")
async def test_kubectl_sees_ready_and_url_and_waits_for_ready(apiserver: ApiServer) -> None:
    ns = "status-test"
    base = [str(apiserver.bin_dir / "kubectl"), "--kubeconfig", str(apiserver.state_dir / "kubeconfig")]

    async def kubectl(*args: str) -> subprocess.CompletedProcess[str]:  # the real client, as a user runs it
        return await asyncio.to_thread(subprocess.run, [*base, *args], capture_output=True, text=True,
                                       timeout=60)

    with api_client(apiserver) as api:
        client.CoreV1Api(api).create_namespace({"metadata": {"name": ns}})
        isvc = yaml.safe_load((FIXTURES / "article-sklearn-mnist.yaml").read_text())
        isvc["metadata"]["namespace"] = ns
        client.CustomObjectsApi(api).create_namespaced_custom_object("serving.kserve.io", "v1beta1", ns,
                                                                     "inferenceservices", isvc)
        writer = StatusWriter(api)
        model, _, _ = CASES["loaded"]
        st = isvc_status("sklearn-mnist", generation=1, model=model, problem=None, gateway=GW, now=NOW)
        assert await writer.write(ns, "sklearn-mnist", st)
        later = isvc_status("sklearn-mnist", generation=1, model=model, problem=None, gateway=GW,
                            now=NOW + datetime.timedelta(minutes=5))
        assert not await writer.write(ns, "sklearn-mnist", later)  # nothing changed: nothing written
        out = await kubectl("get", "isvc", "-n", ns)
        assert out.returncode == 0, out.stderr
        header, row = out.stdout.splitlines()[:2]
        assert header.split()[:3] == ["NAME", "URL", "READY"]
        assert row.split()[:3] == ["sklearn-mnist", "grpc://msm-gateway.msm-system:8033", "True"]
        wait = await kubectl("wait", "-n", ns, "--for=condition=Ready", "isvc/sklearn-mnist", "--timeout=20s")
        assert wait.returncode == 0, wait.stderr
        # it fails to load: Ready goes False, the failure is where kubectl shows it
        failed, _, _ = CASES["failed"]
        assert await writer.write(ns, "sklearn-mnist", isvc_status(
            "sklearn-mnist", generation=1, model=failed, problem=None, gateway=GW, now=NOW))
        reason = await kubectl("get", "isvc", "-n", ns, "sklearn-mnist", "-o",
                               "jsonpath={.status.modelStatus.transitionStatus} "
                               "{.status.modelStatus.lastFailureInfo.message}")
        assert reason.stdout == "BlockedByFailedLoad bad pickle"
        assert writer.writes == 2


@pytest.mark.e2e
@pytest.mark.asyncio(loop_scope="session")
async def test_the_rollouts_state_round_trips_through_its_configmap(apiserver: ApiServer) -> None:
    """The leader's rollouts in the ConfigMap msm-rollouts: absent is empty, written, replaced."""
    from placement.kube.rollout_store import ConfigMapRolloutStore

    ns = "rollout-store-test"
    with api_client(apiserver) as api:
        client.CoreV1Api(api).create_namespace({"metadata": {"name": ns}})
        store = ConfigMapRolloutStore(api, ns)
        assert await store.load() == {}
        first = {"m": {"stable": {"name": "m", "revision": "m__1"},
                       "rollout": {"phase": "stepping", "step": 0}}}
        await store.save(first)
        assert await store.load() == first
        second = {"m": {**first["m"], "rollout": {"phase": "rolled back", "step": 1}}}
        await ConfigMapRolloutStore(api, ns).save(second)  # another leader, the same object
        assert await store.load() == second
        cm = client.CoreV1Api(api).read_namespaced_config_map("msm-rollouts", ns)
        assert cm.metadata.labels == {"app.kubernetes.io/managed-by": "msm"}
