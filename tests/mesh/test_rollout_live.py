"""Canary rollouts that decide by themselves, on a live local mesh (real MLServer, real Envoy):
a healthy revision steps through and is promoted; a revision that answers errors is rolled back
by the control plane, the old revision still loaded, and no request fails outside the bad step."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import joblib
import numpy as np
import pytest
import yaml
from mesh_harness import Traffic, isvc_yaml, prediction, rewrite
from sklearn.linear_model import LogisticRegression

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ROLLOUT = {"serving.msm.io/rollout-steps": "20,50", "serving.msm.io/rollout-interval": "2s",
           "serving.msm.io/rollout-min-requests": "10"}


def isvc(path: str, **rollout: str) -> str:
    doc = yaml.safe_load(isvc_yaml("m", path))
    doc["metadata"]["annotations"].update({**ROLLOUT, **rollout})
    return yaml.safe_dump(doc, sort_keys=False)


def restart_control_plane(mesh) -> dict:
    """Kill the control plane (msm up starts another); the new one's status once it syncs the gateway."""
    old_pid = mesh.control_plane_pid()
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)

    def synced(s: dict) -> bool:
        clients = s["gateway"]["clients"]
        return mesh.control_plane_pid() not in (None, old_pid) and bool(clients) and all(
            x["in_sync"] for x in clients)

    return mesh.wait_status(synced, what="the restarted control plane to sync the gateway")


def revision(st: dict) -> str:
    return st["models"]["m"]["active_revision"]


def rollout(st: dict) -> dict:
    return st.get("rollouts", {}).get("m", {})


def test_a_healthy_revision_steps_through_and_is_promoted(make_mesh) -> None:
    mesh = make_mesh({"m.yaml": isvc("mnist-svm.joblib")}, replicas=2)
    with httpx.Client(timeout=60) as c:
        assert prediction(mesh.infer(c, "m")) == 8
    old = revision(mesh.status())
    seen_weights = set()
    with Traffic(lambda c: mesh.infer(c, "m")) as traffic:
        rewrite(mesh.dir / "m.yaml", isvc("mnist-logreg.joblib"))
        deadline = time.monotonic() + 90
        while rollout(st := mesh.status()).get("phase") != "promoted":
            assert time.monotonic() < deadline, st.get("rollouts")
            if rollout(st).get("phase") == "stepping":
                seen_weights.add(rollout(st)["weight"])
            time.sleep(0.2)
        mesh.wait_status(lambda s: revision(s) != old, what="the new revision active")
    assert traffic.failures() == []
    assert seen_weights <= {20, 50} and seen_weights, seen_weights  # it went by the steps
    names = {name.split("__")[1] for _, _, name in traffic.results}
    assert len(names) == 2  # both revisions answered while it rolled
    r = rollout(mesh.status())
    assert r["outcome"].startswith("promoted after 2 steps") and r["to"] == revision(mesh.status())
    metrics = httpx.get(f"http://127.0.0.1:{mesh.admin_port}/metrics").text
    assert 'msm_rollout_events_total{kind="promoted",model="m"} 1.0' in metrics
    assert "rollout of m:" in mesh.logs()


@pytest.fixture
def broken_model(models_dir: Path) -> str:
    """A model that loads but answers every request with an error: it was trained on 10 features
    and the article's request has 64."""
    rng = np.random.default_rng(0)
    x = rng.random((40, 10))
    clf = LogisticRegression().fit(x, (x[:, 0] > 0.5).astype(int))
    joblib.dump(clf, models_dir / "mnist-broken.joblib")
    return "mnist-broken.joblib"


def test_a_revision_that_answers_errors_is_rolled_back_by_itself(make_mesh, broken_model) -> None:
    mesh = make_mesh({"m.yaml": isvc("mnist-svm.joblib")}, replicas=2)
    with httpx.Client(timeout=60) as c:
        assert prediction(mesh.infer(c, "m")) == 8
    old = revision(mesh.status())
    with Traffic(lambda c: mesh.infer(c, "m")) as traffic:
        changed = rewrite(mesh.dir / "m.yaml", isvc(broken_model))
        st = mesh.wait_status(lambda s: rollout(s).get("phase") == "rolled back", timeout=90,
                              what="the rollout rolled back")
        rolled_back = time.monotonic()
        mesh.wait_status(lambda s: all(c.get("in_sync") for c in s["gateway"]["clients"]),
                         what="the gateway on the rolled-back routes")
        synced = time.monotonic()
        time.sleep(1.0)
    r = rollout(st)
    assert r["outcome"].startswith("rolled back at 20%: error rate") and revision(st) == old
    failures = traffic.failures()
    assert failures, "the bad step never reached the broken revision"
    assert all(changed <= t <= synced for t, _, _ in failures)  # none outside the bad step
    during = [res for res in traffic.results if changed <= res[0] <= rolled_back]
    assert len(failures) <= 0.5 * len(during)  # a share of the traffic, not all of it
    with httpx.Client(timeout=60) as c:  # the old revision, still loaded, answers everything
        assert all(prediction(mesh.infer(c, "m")) == 8 for _ in range(30))
    # the broken revision leaves the runtimes
    mesh.wait_status(lambda s: not any(r["to"] in inst["loaded"] for inst in s["instances"].values()),
                     what="the broken revision unloaded")
    assert "rollout of m:" in mesh.logs() and "takes all the traffic again" in mesh.logs()
    # a restarted control plane keeps the rollback: the manifest still names the broken revision,
    # but the model stays on the old one
    st = restart_control_plane(mesh)
    assert rollout(st)["phase"] == "rolled back" and revision(st) == old, st.get("rollouts")
    with httpx.Client(timeout=60) as c:
        assert all(prediction(mesh.infer(c, "m")) == 8 for _ in range(20))


def test_a_rollout_carries_on_from_its_step_after_a_control_plane_restart(make_mesh) -> None:
    mesh = make_mesh({"m.yaml": isvc("mnist-svm.joblib")}, replicas=2)
    with httpx.Client(timeout=60) as c:
        assert prediction(mesh.infer(c, "m")) == 8
    old = revision(mesh.status())
    # a window that never has enough requests: the rollout holds at its first step
    held = {"serving.msm.io/rollout-min-requests": "100000"}
    rewrite(mesh.dir / "m.yaml", isvc("mnist-logreg.joblib", **held))
    st = mesh.wait_status(lambda s: rollout(s).get("phase") == "stepping", timeout=60, what="stepping")
    new = rollout(st)["to"]
    st = restart_control_plane(mesh)
    r = rollout(st)
    assert (r["phase"], r["weight"], r["from"], r["to"]) == ("stepping", 20, old, new), st.get("rollouts")
    assert revision(st) == old  # not a plain rolling update to the new revision
    assert "rollout of m carries on" in (mesh.state_dir / "control-plane.log").read_text()
