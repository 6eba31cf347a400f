"""The placement behaviours on a live local mesh: real MLServer processes, a real Envoy gateway.

Each test starts its own ``msm up`` on free ports (see conftest.make_mesh) and stops it.
"""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest
from mesh_harness import DIGIT_8_V2, Traffic, isvc_yaml, prediction, runtime_yaml

pytestmark = pytest.mark.e2e

SVM = "mnist-svm.joblib"
LOGREG = "mnist-logreg.joblib"
FOREST = "mnist-forest.joblib"


def ready_on(st: dict, model: str) -> list[str]:
    """Instances with a ready copy of the revision that takes ``model``'s traffic."""
    m = st["models"][model]
    rev = m["active_revision"]
    return [i for i, phase in m["revisions"].get(rev, {}).items() if phase == "ready"]


def loaded(st: dict, instance: str) -> set[str]:
    """Models with a ready copy on ``instance``."""
    return {c["model"] for c in st["instances"][instance]["loaded"].values() if c["phase"] == "ready"}


def idle(st: dict, instance: str, model: str) -> float:
    """Seconds since ``model``'s copy on ``instance`` was last used, as the engine knows it."""
    return next(c["idle_s"] for c in st["instances"][instance]["loaded"].values() if c["model"] == model)


def test_more_models_than_fit_evicts_the_least_recently_used_and_reloads_on_demand(make_mesh) -> None:
    # One instance with room for two copies of the SVM (each ~0.67 MB estimated), three models.
    mesh = make_mesh({f"m{i}.yaml": isvc_yaml(f"m{i}", SVM) for i in (1, 2, 3)}, replicas=1,
                     runtime=runtime_yaml(memory="1700000", mem_buffer=0))
    inst = mesh.instances()[0]["id"]
    with httpx.Client(timeout=120) as c:
        for model in ("m1", "m2"):
            assert prediction(mesh.infer(c, model)) == 8
        assert loaded(mesh.status(), inst) == {"m1", "m2"}
        time.sleep(1.5)  # m1 used again well after m2: m2 becomes the least recently used
        assert prediction(mesh.infer(c, "m1")) == 8
        mesh.wait_status(lambda s: idle(s, inst, "m1") < idle(s, inst, "m2"),
                         what="the gateway's request count for m1 to reach the engine")
        assert prediction(mesh.infer(c, "m3")) == 8  # no room: evicts m2, not m1
        st = mesh.wait_status(lambda s: loaded(s, inst) == {"m1", "m3"}, what="m2 evicted")
        assert st["counters"]["evictions"] >= 1
        assert prediction(mesh.infer(c, "m2")) == 8  # reloads on demand (evicts m1 now)
        st = mesh.wait_status(lambda s: "m2" in loaded(s, inst), what="m2 reloaded")
        assert len(loaded(st, inst)) == 2
        assert st["instances"][inst]["used_bytes"] <= st["instances"][inst]["capacity_bytes"]
        # every model still answers, whatever is loaded at the moment
        for model in ("m1", "m2", "m3", "m1"):
            assert prediction(mesh.infer(c, model)) == 8


def test_instance_killed_mid_traffic_fails_over_and_reloads_elsewhere(make_mesh) -> None:
    mesh = make_mesh({"a.yaml": isvc_yaml("two-copies", SVM, min_replicas=2),
                      "b.yaml": isvc_yaml("one-copy", LOGREG)}, replicas=2)
    st = mesh.wait_status(lambda s: len(ready_on(s, "two-copies")) == 2, what="two copies (minReplicas 2)")
    with httpx.Client(timeout=120) as c:
        assert prediction(mesh.infer(c, "one-copy")) == 8
    st = mesh.status()
    victim = ready_on(st, "one-copy")[0]
    pids = next(i for i in mesh.instances() if i["id"] == victim)
    with Traffic(lambda c: mesh.infer(c, "two-copies"), threads=2) as traffic:
        time.sleep(1.0)
        for pid in (pids["mlserver_pid"], pids["adapter_pid"]):  # the pod dies
            os.kill(pid, signal.SIGKILL)
        mesh.wait_output(f"runtime replica {victim} died")
        mesh.wait_output(f"runtime replica {victim} back", timeout=60)  # msm up restarts the pod
        time.sleep(1.0)
    assert len(traffic.results) > 20
    assert traffic.failures() == [], traffic.failures()[:5]
    # the single-copy model loads again on its next request, wherever there is room
    with httpx.Client(timeout=120) as c:
        assert prediction(mesh.infer(c, "one-copy")) == 8
    st = mesh.wait_status(lambda s: s["instances"][victim]["up"] and len(ready_on(s, "two-copies")) == 2,
                          what="the restarted instance back in placement with a copy (minReplicas 2)")
    assert ready_on(st, "one-copy")
    restarted = next(i for i in mesh.instances() if i["id"] == victim)
    assert {restarted["mlserver_pid"], restarted["adapter_pid"]}.isdisjoint(
        {pids["mlserver_pid"], pids["adapter_pid"]})


def test_a_single_copy_model_whose_instance_is_killed_fails_no_request(make_mesh) -> None:
    """The one copy's MLServer is killed under steady traffic (the article's body, which the
    gateway transcodes to gRPC, and a V2 body, which goes as REST). Requests routed to it fail
    at the connection; the gateway's retries go on to the activator, which has the instance
    checked at once and holds them until the model is loaded on the other instance: no request
    fails (before the fallback, those sent until two health checks a second apart noticed did)."""
    mesh = make_mesh({"b.yaml": isvc_yaml("one-copy", LOGREG)}, replicas=2)
    with httpx.Client(timeout=120) as c:
        assert prediction(mesh.infer(c, "one-copy")) == 8
    victim = ready_on(mesh.status(), "one-copy")[0]
    pid = next(i for i in mesh.instances() if i["id"] == victim)["mlserver_pid"]
    with Traffic(lambda c: mesh.infer(c, "one-copy"), threads=2) as article, \
            Traffic(lambda c: mesh.infer(c, "one-copy", DIGIT_8_V2), threads=1) as v2:
        time.sleep(1.0)
        os.kill(pid, signal.SIGKILL)
        mesh.wait_output(f"runtime replica {victim} died")
        mesh.wait_status(lambda s: any(i != victim for i in ready_on(s, "one-copy")),
                         what="the model loaded on the other instance")
        time.sleep(1.0)
    assert len(article.results) > 20 and len(v2.results) > 10
    assert article.failures() == [] and v2.failures() == [], (article.failures()[:5], v2.failures()[:5])
    metrics = httpx.get(f"http://127.0.0.1:{mesh.admin_port}/metrics", timeout=5).text
    rerouted = next(line for line in metrics.splitlines()
                    if line.startswith('msm_request_failovers_total{outcome="rerouted"}'))
    assert float(rerouted.split()[-1]) >= 1, "no request went the fallback's way"


def test_rolling_update_under_traffic_fails_no_request(make_mesh) -> None:
    mesh = make_mesh({"m.yaml": isvc_yaml("rolling", SVM)}, replicas=2)
    with httpx.Client(timeout=120) as c:
        first = mesh.infer(c, "rolling").json()["modelName"]
    old = mesh.status()["models"]["rolling"]["active_revision"]
    assert first == old
    with Traffic(lambda c: mesh.infer(c, "rolling"), threads=2) as traffic:
        time.sleep(1.0)
        (mesh.dir / "m.yaml").write_text(isvc_yaml("rolling", LOGREG))  # new storage path: a new revision
        def moved(s: dict) -> bool:
            m = s["models"]["rolling"]
            return m["active_revision"] != old and m["target_revision"] == m["active_revision"]

        st = mesh.wait_status(moved, what="the new revision to take the traffic")
        new = st["models"]["rolling"]["active_revision"]
        st = mesh.wait_status(lambda s: all(old not in i["loaded"] for i in s["instances"].values()),
                              timeout=60, what="the old revision to be unloaded from every instance")
        time.sleep(0.5)
    assert traffic.failures() == [], traffic.failures()[:5]
    served = [name for _, _, name in traffic.results]
    assert served[0] == old and served[-1] == new
    assert set(served) == {old, new}
    held = {rev for inst in st["instances"].values() for rev in inst["loaded"]}
    assert old not in held and new in held


def test_a_model_that_fails_to_load_on_one_instance_loads_on_another(make_mesh, models_dir) -> None:
    # Room for the forest or the SVM on an instance, not both: once the forest is loaded on one
    # instance, the SVM fits only on the other, so that is where placement tries first.
    forest, svm = (int(1.25 * (models_dir / f).stat().st_size) for f in (FOREST, SVM))
    mesh = make_mesh({"warm.yaml": isvc_yaml("warm", FOREST), "target.yaml": isvc_yaml("target", SVM)},
                     replicas=2, runtime=runtime_yaml(memory=str(forest + svm // 2), mem_buffer=0))
    with httpx.Client(timeout=120) as c:
        assert prediction(mesh.infer(c, "warm")) == 8
    st = mesh.status()
    busy = ready_on(st, "warm")[0]
    empty = next(i for i in st["instances"] if i != busy)
    revision = st["models"]["target"]["target_revision"]
    # A broken disk on that instance: the adapter cannot write the model's settings there.
    models_dir_of_empty = next(i for i in mesh.instances() if i["id"] == empty)["models_dir"]
    os.makedirs(models_dir_of_empty, exist_ok=True)
    with open(os.path.join(models_dir_of_empty, revision), "w") as f:
        f.write("not a directory\n")
    with httpx.Client(timeout=120) as c:
        r = mesh.infer(c, "target")  # fails on the empty instance, loads on the other (evicting warm)
    assert prediction(r) == 8, r.text
    st = mesh.status()
    failures = st["models"]["target"]["failures"]
    assert [f["instance"] for f in failures] == [empty], failures
    assert "cannot write MLServer settings" in failures[0]["error"]
    assert ready_on(st, "target") == [busy]
    assert st["models"]["target"]["failed"] is False


def test_control_plane_restart_adopts_what_runtimes_hold(make_mesh) -> None:
    mesh = make_mesh({"m.yaml": isvc_yaml("kept", SVM)}, replicas=2)
    with httpx.Client(timeout=120) as c:
        assert prediction(mesh.infer(c, "kept")) == 8
    before = mesh.status()
    holder = ready_on(before, "kept")
    assert before["counters"]["loads"] == 1
    old_pid = mesh.control_plane_pid()
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    with httpx.Client(timeout=30) as c:  # the gateway keeps its last configuration meanwhile
        assert prediction(mesh.infer(c, "kept")) == 8
    st = mesh.wait_status(lambda s: bool(s["gateway"]["clients"])
                          and all(x["in_sync"] for x in s["gateway"]["clients"]),
                          what="the restarted control plane to sync the gateway")
    assert mesh.control_plane_pid() not in (None, old_pid)
    assert ready_on(st, "kept") == holder  # adopted where it was
    # the activator is where the gateway's routes already point (a cold model works at once)
    was, now = before["gateway"]["activator"], st["gateway"]["activator"]
    assert (now["rest_port"], now["grpc_port"]) == (was["rest_port"], was["grpc_port"])
    assert st["counters"]["loads"] == 0 and st["counters"]["unloads"] == 0  # nothing reloaded
    with httpx.Client(timeout=30) as c:
        assert prediction(mesh.infer(c, "kept")) == 8
    assert "control plane exited" in "".join(mesh.lines)



def test_copies_scale_up_with_load_and_back_down_when_idle(make_mesh) -> None:
    # ModelMesh's thresholds scaled down so that a test can cross them in seconds
    mesh = make_mesh({"m.yaml": isvc_yaml("busy", SVM)}, replicas=3, placement={
        "scale_interval_s": 1, "scale_up_rpm_per_copy": 60, "rate_window_s": 6, "rate_bucket_s": 1,
        "scale_down_delay_s": 2, "idle_s": 3})
    with httpx.Client(timeout=120) as c:
        assert prediction(mesh.infer(c, "busy")) == 8
    assert len(ready_on(mesh.status(), "busy")) == 1
    with Traffic(lambda c: mesh.infer(c, "busy"), threads=2) as traffic:
        st = mesh.wait_status(lambda s: len(ready_on(s, "busy")) == 2, timeout=30,
                              what="a second copy under load")
    assert traffic.failures() == [], traffic.failures()[:5]
    assert st["models"]["busy"]["requests_per_min"] > 60
    assert len(set(ready_on(st, "busy"))) == 2  # on two different instances
    mesh.wait_status(lambda s: len(ready_on(s, "busy")) == 1
                     and all(len(i["loaded"]) <= 1 for i in s["instances"].values()), timeout=30,
                     what="the extra copy to go once the model is idle")
    with httpx.Client(timeout=120) as c:  # the remaining copy still answers
        assert prediction(mesh.infer(c, "busy")) == 8
