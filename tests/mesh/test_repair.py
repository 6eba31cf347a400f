"""msm notices when a runtime's content differs from its own view, and repairs it.

A model unloaded on a runtime behind msm's back (an operator, a crash of the model alone, a
runtime API reached some other way) must not stay routed and failing while msm status says it
is ready: within a few seconds it leaves the routes and is loaded again.
"""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest
from mesh_harness import isvc_yaml, prediction, runtime_yaml

pytestmark = pytest.mark.e2e


def ready_on(st: dict, model: str) -> list[str]:
    m = st["models"][model]
    return [i for i, phase in m["revisions"].get(m["active_revision"], {}).items() if phase == "ready"]


def test_a_model_unloaded_behind_msms_back_is_loaded_again(make_mesh) -> None:
    mesh = make_mesh({"m.yaml": isvc_yaml("m", "mnist-svm.joblib", min_replicas=1)}, replicas=1,
                     runtime=runtime_yaml())
    st = mesh.wait_status(lambda s: ready_on(s, "m"), what="m ready")
    revision = st["models"]["m"]["active_revision"]
    runtime = mesh.instances()[0]
    with httpx.Client(timeout=120) as c:
        assert prediction(mesh.infer(c, "m")) == 8
        # straight to the runtime (MLServer's own repository API), not through msm or the gateway
        r = c.post(f"{runtime['rest_url']}/v2/repository/models/{revision}/unload")
        assert r.status_code == 200, r.text
        assert c.get(f"{runtime['rest_url']}/v2/models/{revision}/ready").status_code != 200
        log = mesh.state_dir / "control-plane.log"
        deadline = time.monotonic() + 30
        while f"no longer holds {revision}" not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, "the control plane never noticed the unload"
            time.sleep(0.2)
        st = mesh.wait_status(lambda s: s["counters"]["loads"] >= 2 and ready_on(s, "m"),
                              what="m loaded again", timeout=60)
        assert c.get(f"{runtime['rest_url']}/v2/models/{revision}/ready").status_code == 200
        assert prediction(mesh.infer(c, "m")) == 8


def test_a_killed_gateway_is_restarted_and_serves_again(make_mesh) -> None:
    mesh = make_mesh({"m.yaml": isvc_yaml("m", "mnist-svm.joblib", min_replicas=1)}, replicas=1,
                     runtime=runtime_yaml())
    mesh.wait_status(lambda s: ready_on(s, "m"), what="m ready")
    (envoy,) = mesh.envoy_pids()
    os.kill(envoy, signal.SIGKILL)
    mesh.wait_output("envoy gateway exited (-9); restarting it")
    mesh.wait_output("envoy gateway back", timeout=60)
    (again,) = mesh.envoy_pids()
    assert again != envoy
    with httpx.Client(timeout=120) as c:  # the new Envoy got the whole current config over xDS
        assert prediction(mesh.infer(c, "m")) == 8
    mesh.wait_status(lambda s: [c["in_sync"] for c in s["gateway"]["clients"]] == [True],
                     what="the new gateway in sync")


def test_a_model_that_failed_to_load_loads_once_its_file_is_fixed(make_mesh, models_dir) -> None:
    broken = models_dir / "fixed-later.joblib"
    broken.write_bytes(b"not a model at all")
    mesh = make_mesh({"m.yaml": isvc_yaml("m", broken.name)}, replicas=1, runtime=runtime_yaml())
    try:
        with httpx.Client(timeout=120) as c:
            r = mesh.infer(c, "m")
            assert r.status_code == 503, r.text  # the load fails: the runtime's reason, at once
            mesh.wait_status(lambda s: s["models"]["m"]["failed"], what="m failed")
            broken.write_bytes((models_dir / "mnist-svm.joblib").read_bytes())  # fixed in place
            mesh.wait_status(lambda s: not s["models"]["m"]["failed"], what="the failure cleared", timeout=30)
            assert prediction(mesh.infer(c, "m")) == 8
    finally:
        broken.unlink(missing_ok=True)
