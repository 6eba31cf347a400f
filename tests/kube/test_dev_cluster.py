"""The article on the dev cluster: `msm dev-cluster up` (real etcd, kube-apiserver,
kube-controller-manager, kube-scheduler; deploy/ applied with kubectl; msm with its
ServiceAccount's RBAC; Envoy; the pod runner), then the article's requests with the real kubectl.

One cluster for the module; each test leaves no InferenceService behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
import yaml
from kube_env import (
    NS,
    Cluster,
    Traffic,
    dev_cluster,
    infer,
    pid_of,
    promote_under_traffic,
    rolling_isvc,
    until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(400)]
ROOT = Path(__file__).resolve().parents[2]
ARTICLE_ISVC = ROOT / "examples" / "quickstart" / "sklearn-mnist.yaml"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from dev_cluster(tmp_path_factory)


@pytest_asyncio.fixture(loop_scope="module")
async def article(cluster: Cluster) -> AsyncIterator[dict]:
    doc = yaml.safe_load(ARTICLE_ISVC.read_text())
    cluster.kubectl("apply", "-f", str(ARTICLE_ISVC))
    yield doc
    cluster.kubectl("delete", "isvc", "--all", "-n", NS, "--wait=true")


async def test_the_articles_inferenceservice_serves_rolls_and_goes(cluster: Cluster, article: dict) -> None:
    # the article, as written: kubectl apply, kubectl wait, curl
    cluster.kubectl("wait", "--for=condition=Ready", "isvc/sklearn-mnist", "-n", NS, "--timeout=120s")
    status, body = await infer(cluster.infer_url("sklearn-mnist"))
    assert status == 200, body
    assert json.loads(body)["outputs"][0]["contents"]["int64Contents"] == ["8"]
    await until(lambda: cluster.isvc("sklearn-mnist")["status"]["modelStatus"]["states"]["activeModelState"]
                == "Loaded", what="status Loaded")
    st = cluster.isvc("sklearn-mnist")["status"]
    assert st["modelStatus"]["copies"]["totalCopies"] >= 1
    assert st["modelStatus"]["transitionStatus"] == "UpToDate"
    get = cluster.kubectl("get", "isvc", "-n", NS).stdout
    assert "sklearn-mnist" in get and "True" in get  # READY, as the article shows it
    # the runtime ran as ModelMesh runs it: a Deployment of pods with the adapter sidecar
    pods = json.loads(cluster.kubectl("get", "pods", "-n", NS, "-l", "serving.msm.io/runtime=mlserver-1.x",
                                      "-o", "json").stdout)["items"]
    assert len(pods) == 2
    assert all({c["name"] for c in p["spec"]["containers"]} == {"mlserver", "msm-adapter"} for p in pods)

    # a new path is a new revision: it rolls under traffic, no request fails, status follows
    first_revision = (await cluster.status())["models"]["sklearn-mnist"]["active_revision"]
    rolled = yaml.safe_load(ARTICLE_ISVC.read_text())
    rolled["spec"]["predictor"]["model"]["storage"]["path"] = "mnist-logreg.joblib"
    async with Traffic(cluster.infer_url("sklearn-mnist")) as traffic:
        await asyncio.sleep(1)
        cluster.apply(rolled)

        def rolled_out() -> bool:
            s = cluster.isvc("sklearn-mnist")["status"]
            return s.get("observedGeneration") == 2 and s["modelStatus"]["transitionStatus"] == "UpToDate"

        await until(rolled_out, what="the new revision rolled out")
        await asyncio.sleep(2)
    assert traffic.failed == [] and traffic.ok > 20, (traffic.ok, traffic.failed[:5])
    model = (await cluster.status())["models"]["sklearn-mnist"]
    assert model["active_revision"] != first_revision and model["ready_copies"] >= 1
    serving = model["active_revision"]

    # a revision that cannot load: status shows the blocked transition and why; the one that
    # serves keeps serving, no request fails
    broken = yaml.safe_load(ARTICLE_ISVC.read_text())
    broken["spec"]["predictor"]["model"]["storage"]["path"] = "no-such-model.joblib"
    async with Traffic(cluster.infer_url("sklearn-mnist")) as traffic:
        cluster.apply(broken)

        def blocked() -> bool:
            s = cluster.isvc("sklearn-mnist")["status"]
            return (s.get("observedGeneration") == 3
                    and s["modelStatus"]["transitionStatus"] == "BlockedByFailedLoad")

        await until(blocked, what="BlockedByFailedLoad")
        await asyncio.sleep(1)
    assert traffic.failed == [] and traffic.ok > 10, (traffic.ok, traffic.failed[:5])
    st = cluster.isvc("sklearn-mnist")["status"]
    assert st["modelStatus"]["states"] == {"activeModelState": "Loaded", "targetModelState": "FailedToLoad"}
    assert "no-such-model.joblib" in st["modelStatus"]["lastFailureInfo"]["message"]
    assert {c["type"]: c["status"] for c in st["conditions"]}["Ready"] == "True"  # it still serves
    assert (await cluster.status())["models"]["sklearn-mnist"]["active_revision"] == serving

    # deleted: routes gone, model unloaded from every runtime pod
    cluster.kubectl("delete", "isvc", "sklearn-mnist", "-n", NS)

    async def gone() -> bool:
        st = await cluster.status()
        held = [m for inst in st["instances"].values() for m in inst.get("loaded", {})]
        return "sklearn-mnist" not in st["models"] and not held

    deadline = time.monotonic() + 60
    while not await gone():
        assert time.monotonic() < deadline, await cluster.status()
        await asyncio.sleep(0.5)
    status, _ = await infer(cluster.infer_url("sklearn-mnist"))
    assert status == 404

    def replicas() -> int:
        dep = json.loads(cluster.kubectl("get", "deployment", "modelmesh-serving-mlserver-1.x", "-n", NS,
                                         "-o", "json").stdout)
        return dep["spec"]["replicas"]

    await until(lambda: replicas() == 0, timeout=30, what="the runtime scaled to zero")  # no model uses it


async def test_a_runtime_pod_deleted_under_traffic(cluster: Cluster) -> None:
    two = yaml.safe_load(ARTICLE_ISVC.read_text())
    two["metadata"]["name"] = "mnist-two"
    two["spec"]["predictor"]["minReplicas"] = 2
    one = yaml.safe_load(ARTICLE_ISVC.read_text())
    one["metadata"]["name"] = "mnist-one"
    one["spec"]["predictor"]["minReplicas"] = 1
    one["spec"]["predictor"]["model"]["storage"]["path"] = "mnist-forest.joblib"
    cluster.apply(two)
    cluster.apply(one)
    try:
        def copies(name: str) -> int:
            s = cluster.isvc(name).get("status") or {}
            return (s.get("modelStatus") or {}).get("copies", {}).get("totalCopies", 0)

        await until(lambda: copies("mnist-two") == 2 and copies("mnist-one") == 1, what="2 + 1 copies")
        where = (await cluster.status())["models"]["mnist-one"]["revisions"]
        [pod_of_one] = [i for phases in where.values() for i, ph in phases.items() if ph == "ready"]
        victim = pod_of_one.rsplit(".", 1)[0]
        # the single copy's requests too: those the gateway sends to the dying pod go on to the
        # leader's activator (the fallback clusters) and wait there for the reload elsewhere
        async with Traffic(cluster.infer_url("mnist-two")) as traffic, \
                Traffic(cluster.infer_url("mnist-one")) as single:
            await asyncio.sleep(1)
            cluster.kubectl("delete", "pod", victim, "-n", NS, "--wait=false")
            # copies drop, then recover: the single copy reloads on the other pod, the Deployment
            # makes a new pod, placement fills it
            await until(lambda: copies("mnist-two") < 2, timeout=30, what="copies drop")
            await until(lambda: copies("mnist-two") == 2 and copies("mnist-one") == 1, what="copies recover")
        assert traffic.failed == [] and traffic.ok > 20, (traffic.ok, traffic.failed[:5])
        assert single.failed == [] and single.ok > 20, (single.ok, single.failed[:5])
        status, body = await infer(cluster.infer_url("mnist-one"))
        assert status == 200, body
        now = (await cluster.status())["models"]["mnist-one"]["revisions"]
        assert pod_of_one not in {i for phases in now.values() for i in phases}
    finally:
        cluster.kubectl("delete", "isvc", "mnist-two", "mnist-one", "-n", NS, "--wait=true")


async def test_a_rollout_by_steps_is_decided_by_the_leader_on_the_gateways_reports(cluster: Cluster) -> None:
    """kubectl: an InferenceService that rolls out by steps; the gateway (whichever replica its xDS
    stream is on) reports to the leader, which steps the new revision through and promotes it; the
    InferenceService says so in its RolloutProgressing condition."""
    doc = rolling_isvc()
    cluster.apply(doc)
    try:
        cluster.kubectl("wait", "--for=condition=Ready", "isvc/rolling", "-n", NS, "--timeout=120s")
        rollout = await promote_under_traffic(cluster, doc, "the rollout promoted")
        assert rollout["status"] == "False" and rollout["message"].startswith("promoted after 1 steps")
        st = await cluster.status()
        assert st["rollouts"]["rolling"]["phase"] == "promoted"
        assert st["models"]["rolling"]["active_revision"] == st["rollouts"]["rolling"]["to"]
    finally:
        cluster.kubectl("delete", "isvc", "rolling", "-n", NS, "--wait=true")


async def test_the_leader_killed_under_traffic(cluster: Cluster) -> None:
    cluster.kubectl("apply", "-f", str(ARTICLE_ISVC))
    try:
        def loaded() -> bool:
            s = cluster.isvc("sklearn-mnist").get("status") or {}
            return (s.get("modelStatus") or {}).get("states", {}).get("activeModelState") == "Loaded"

        cluster.kubectl("wait", "--for=condition=Ready", "isvc/sklearn-mnist", "-n", NS, "--timeout=60s")
        status, body = await infer(cluster.infer_url("sklearn-mnist"))
        assert status == 200, body
        await until(loaded, what="Loaded")

        old = cluster.lease_holder()
        assert old.startswith("msm-controller-")
        async with Traffic(cluster.infer_url("sklearn-mnist")) as traffic:
            await asyncio.sleep(1)
            os.kill(pid_of(old.encode(), cluster.state_dir), signal.SIGKILL)
            killed = time.monotonic()
            await until(lambda: cluster.lease_holder() not in ("", old), timeout=40, what="a new leader")
            took = time.monotonic() - killed
            await asyncio.sleep(2)
        # the lease (15 s) since the last renewal as the follower saw it, plus its retry period (2 s)
        # and the test's own polling of kubectl
        assert took < 15 + 2 * 2 + 3, took
        assert traffic.failed == [] and traffic.ok > 20, (traffic.ok, traffic.failed[:5])
        new = cluster.lease_holder()
        st = await cluster.status()
        assert st["leader"]["this"] == new
        roles = {}
        for port in cluster.admin_ports():
            with contextlib.suppress(aiohttp.ClientError):
                async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
                    roles[port] = re.search(r"^msm_leader (\S+)$", await r.text(), re.M).group(1)
        assert sorted(roles.values()) == ["0.0", "1.0"]  # one leads, the other follows
        assert st["counters"]["loads"] == 0  # it adopted the copy: nothing reloaded
        assert st["models"]["sklearn-mnist"]["ready_copies"] >= 1
    finally:
        cluster.kubectl("delete", "isvc", "sklearn-mnist", "-n", NS, "--wait=true")

