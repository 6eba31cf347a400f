"""VirtualServices on a live local mesh: real MLServer runtimes behind a real Envoy gateway.

One mesh, three models of the quickstart (all answer 8 to the article's body, each under its own
revision id), and a VirtualService in the manifests folder that is edited while traffic flows.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml
from mesh_harness import DIGIT_8, DIGIT_8_V2, LocalMeshProcess, isvc_yaml, rewrite

from xds_server.translate.routes import sticky_bucket

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

MODELS = {"svm": "mnist-svm.joblib", "logreg": "mnist-logreg.joblib", "forest": "mnist-forest.joblib",
          "shadow": "mnist-svm.joblib"}  # called by no client: only the mirror sends it requests


def virtual_service(rules: list[dict]) -> str:
    meta = {"name": "digits", "namespace": "modelmesh-serving",
            "annotations": {"serving.msm.io/sticky-header": "x-user"}}  # splits keyed on x-user
    return yaml.safe_dump({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                           "metadata": meta, "spec": {"hosts": ["digits"], "http": rules}}, sort_keys=False)


def dest(host: str, weight: int | None = None) -> dict:
    return {"destination": {"host": host}, **({"weight": weight} if weight is not None else {})}


SPLIT = {"route": [dest("svm", 90), dest("logreg", 10)]}
TESTER = {"match": [{"headers": {"x-tester": {"exact": "yes"}}}], "route": [dest("forest")],
          "headers": {"response": {"set": {"x-served-by": "forest"}}}}
MIRROR = {"match": [{"headers": {"x-shadow": {"exact": "on"}}}], "route": [dest("logreg")],
          "mirror": {"host": "shadow"}}
FAULT = {"match": [{"headers": {"x-fault": {"exact": "abort"}}}], "route": [dest("svm")],
         "fault": {"abort": {"httpStatus": 418, "percentage": {"value": 100}}}}


def served_by(r: httpx.Response) -> str:
    """The model that answered: the runtime names the revision, ``<model>__isvc-<hash>``."""
    assert r.status_code == 200, r.text
    return r.json()["modelName"].split("__")[0]


def ask(mesh: LocalMeshProcess, c: httpx.Client, headers: dict | None = None) -> httpx.Response:
    return c.post(f"{mesh.rest}/v2/models/digits/infer", content=DIGIT_8, headers=headers or {})


@pytest.fixture
def mesh(make_mesh) -> LocalMeshProcess:
    files = {f"{m}.yaml": isvc_yaml(m, path) for m, path in MODELS.items()}
    files["digits.yaml"] = virtual_service([MIRROR, FAULT, TESTER, SPLIT])
    return make_mesh(files, replicas=2)


def test_a_virtual_model_splits_matches_injects_and_keeps_its_last_good_routing(mesh) -> None:
    with httpx.Client(timeout=120) as c:
        # cold: both sides of the split load on demand, and each cold request is answered by the
        # side it was routed to (the activator's replay does not throw the dice again)
        first = [served_by(ask(mesh, c)) for _ in range(3)]
        assert set(first) <= {"svm", "logreg"}
        n = 300
        got = Counter(served_by(ask(mesh, c)) for _ in range(n))
        assert set(got) <= {"svm", "logreg"}
        sd = math.sqrt(n * 0.1 * 0.9)
        assert abs(got["logreg"] - n * 0.1) <= 5 * sd, got  # 90/10 within five standard deviations

        # sticky: one user, one side, as the documented hash says
        for user in ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"):
            side = "svm" if sticky_bucket(user) < 9000 else "logreg"
            assert {served_by(ask(mesh, c, {"x-user": user})) for _ in range(3)} == {side}, user

        r = ask(mesh, c, {"x-tester": "yes"})
        assert served_by(r) == "forest" and r.headers["x-served-by"] == "forest"
        assert "x-served-by" not in ask(mesh, c).headers  # the header change is the rule's own

        r = ask(mesh, c, {"x-fault": "abort"})
        assert r.status_code == 418  # injected by the gateway: no runtime saw it

        # a mirror: the client gets the primary's answer; the shadow model is loaded for the
        # mirror's sake and receives copies of the requests (the gateway counts them for it)
        assert {served_by(ask(mesh, c, {"x-shadow": "on"})) for _ in range(5)} == {"logreg"}
        mesh.wait_status(lambda s: s["models"]["shadow"]["ready_copies"] >= 1, what="the shadow model loaded")
        deadline = time.monotonic() + 30
        while not mesh.status()["models"]["shadow"].get("requests_per_min"):
            assert time.monotonic() < deadline, "the shadow model never received the mirrored requests"
            assert served_by(ask(mesh, c, {"x-shadow": "on"})) == "logreg"
            time.sleep(0.2)

        # the standard V2 body takes the REST port of the runtime, same routing
        r = c.post(f"{mesh.rest}/v2/models/digits/infer", content=DIGIT_8_V2, headers={"x-tester": "yes"})
        assert r.status_code == 200 and r.json()["model_name"].startswith("forest__"), r.text

        # a bad edit: reported where the user looks, the routing in force stays
        rewrite(mesh.dir / "digits.yaml", virtual_service([{"route": [dest("svm", 50), dest("nope", 50)]}]))
        st = mesh.wait_status(lambda s: "digits.yaml" in s["manifest_errors"], what="the problem reported")
        problem = st["manifest_errors"]["digits.yaml"]
        assert "destination nope is not an InferenceService msm serves" in problem
        assert st["traffic"] == {"digits": "VirtualService modelmesh-serving/digits"}
        assert served_by(ask(mesh, c, {"x-tester": "yes"})) == "forest"
        assert "previous version stays in use" in mesh.status_cli().stdout

        # a good edit takes over: everything to logreg
        rewrite(mesh.dir / "digits.yaml", virtual_service([{"route": [dest("logreg")]}]))
        mesh.wait_status(lambda s: not s["manifest_errors"], what="the problem gone")
        deadline = time.monotonic() + 30
        while served_by(ask(mesh, c, {"x-tester": "yes"})) != "logreg":
            assert time.monotonic() < deadline, "the gateway never took the new routing"
            time.sleep(0.1)
        assert {served_by(ask(mesh, c)) for _ in range(20)} == {"logreg"}

    # gRPC: the virtual name in mm-vmodel-id, as ModelMesh's vModels are called
    body = json.loads(DIGIT_8_V2)["inputs"][0]
    inp = grpcclient.InferInput(body["name"], body["shape"], "FP32")
    inp.set_data_from_numpy(np.asarray(body["data"], dtype=np.float32).reshape(body["shape"]))
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{mesh.grpc_port}")
    try:
        r = client.infer("digits", [inp], headers={"mm-vmodel-id": "digits"}, client_timeout=60)
    finally:
        client.close()
    assert r.get_response().model_name.startswith("logreg__")
    assert r.as_numpy("predict").ravel().tolist() == [8]
