"""``msm up examples/quickstart`` as a user runs it, answering the article's three requests."""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from mesh_harness import DIGIT_8, DIGIT_8_V2, QUICKSTART, LocalMeshProcess, prediction

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory):
    """A copy of examples/quickstart without trained models: ``msm up`` must train them itself."""
    d = tmp_path_factory.mktemp("quickstart") / "quickstart"
    shutil.copytree(QUICKSTART, d, ignore=shutil.ignore_patterns("*.joblib", "*.json.model", ".msm"))
    (d / "models").mkdir(exist_ok=True)
    mesh = LocalMeshProcess(d, d.parent / "state").start()
    try:
        yield mesh
    finally:
        mesh.stop()


def test_up_trains_the_sample_models_and_says_where_everything_listens(quickstart: LocalMeshProcess) -> None:
    out = "".join(quickstart.lines)
    assert "made sample models" in out and (quickstart.dir / "models" / "mnist-svm.joblib").is_file()
    assert f"http://127.0.0.1:{quickstart.rest_port}/v2/models/<model>/infer" in out
    assert f"127.0.0.1:{quickstart.grpc_port}" in out


def test_article_curl_answers_8_in_the_article_shape(quickstart: LocalMeshProcess) -> None:
    # the article's exact request: its body, no content-type header
    with httpx.Client(timeout=120) as c:
        r = c.post(f"{quickstart.rest}/v2/models/sklearn-mnist/infer", content=DIGIT_8,
                   headers={"content-type": ""})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["modelName"].startswith("sklearn-mnist__isvc-")
    assert body["outputs"][0]["contents"]["int64Contents"] == ["8"]


def test_standard_v2_body_answers_8_on_the_same_port(quickstart: LocalMeshProcess) -> None:
    with httpx.Client(timeout=120) as c:
        r = c.post(f"{quickstart.rest}/v2/models/sklearn-mnist/infer", content=DIGIT_8_V2,
                   headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [8]


def test_tritonclient_grpc_with_mm_vmodel_id_answers_8(quickstart: LocalMeshProcess) -> None:
    body = json.loads(DIGIT_8_V2)["inputs"][0]
    x = np.asarray(body["data"], dtype=np.float32).reshape(body["shape"])
    inp = grpcclient.InferInput(body["name"], list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{quickstart.grpc_port}")
    try:
        r = client.infer("sklearn-mnist", [inp], headers={"mm-vmodel-id": "sklearn-mnist"},
                         client_timeout=120)
    finally:
        client.close()
    assert r.as_numpy("predict").ravel().tolist() == [8]


def test_other_packed_models_load_on_first_request(quickstart: LocalMeshProcess) -> None:
    with httpx.Client(timeout=120) as c:
        for model in ("sklearn-mnist-logreg", "sklearn-mnist-forest"):
            r = quickstart.infer(c, model)
            assert prediction(r) == 8, r.text
    st = quickstart.status()
    assert all(st["models"][m]["ready"] for m in ("sklearn-mnist-logreg", "sklearn-mnist-forest"))


def test_unknown_model_is_a_404_json_error(quickstart: LocalMeshProcess) -> None:
    r = httpx.post(f"{quickstart.rest}/v2/models/no-such-model/infer", content=DIGIT_8, timeout=30)
    assert r.status_code == 404
    assert "not found" in r.json()["error"]
    assert r.json()["path"] == "/v2/models/no-such-model/infer"  # the client's path, not the transcoded one


def test_msm_status_shows_models_instances_and_gateway(quickstart: LocalMeshProcess) -> None:
    out = quickstart.status_cli()
    assert out.returncode == 0, out.stderr
    assert "sklearn-mnist: ready" in out.stdout
    for i in (0, 1):
        assert f"mlserver-1.x-{i} [mlserver-1.x] up" in out.stdout
    assert "in sync" in out.stdout
    assert "envoy msm-local-gateway (gateway token, delta): in sync" in out.stdout


def test_only_the_gateway_msm_started_is_served_by_the_xds_server(quickstart: LocalMeshProcess) -> None:
    """Another xDS client on the machine (it may even claim the gateway's node id) is refused, so it
    can neither read the mesh's configuration nor hold up a cold start by never acknowledging."""
    import grpc
    from envoy.service.discovery.v3 import ads_pb2_grpc

    async def intrude() -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{quickstart.xds_port}") as ch:
            # it may claim the gateway's node id: refused when the call starts, before it could
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch).DeltaAggregatedResources(
                metadata=(("x-node-id-claim", "msm-local-gateway"),))
            return await asyncio.wait_for(call.code(), 10)

    assert asyncio.run(intrude()) == grpc.StatusCode.UNAUTHENTICATED
    clients = quickstart.status()["gateway"]["clients"]
    assert [(c["node_id"], c["authenticated"]) for c in clients] == [("msm-local-gateway", "gateway token")]
    token_file = quickstart.state_dir / "gateway-token"
    assert token_file.stat().st_mode & 0o077 == 0  # readable by its owner only
    with httpx.Client(timeout=120) as c:  # a cold model still loads and answers
        assert prediction(quickstart.infer(c, "sklearn-mnist-logreg")) == 8


def test_a_bad_manifest_is_reported_and_changes_nothing_else(quickstart: LocalMeshProcess) -> None:
    bad = quickstart.dir / "zz-broken.yaml"
    bad.write_text("apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata:\n"
                   "  name: broken\nspec:\n  predictor:\n    model:\n      modelFormat: {}\n")
    try:
        st = quickstart.wait_status(lambda s: "zz-broken.yaml" in s["manifest_errors"]
                                    or "broken" in s["manifest_errors"], what="the manifest error")
        assert "broken" not in st["models"]
        quickstart.wait_output("problem: manifest zz-broken.yaml")  # msm up's own output says so
        with httpx.Client(timeout=60) as c:
            assert prediction(quickstart.infer(c, "sklearn-mnist")) == 8
    finally:
        bad.unlink()
    quickstart.wait_status(lambda s: not s["manifest_errors"], what="the error to clear")
    quickstart.wait_output("resolved: manifest zz-broken.yaml")


def test_the_gateway_serves_inference_only(quickstart: LocalMeshProcess) -> None:
    """The runtimes' repository API (list, load, unload models) is not reachable through the
    gateway, on gRPC or REST, however the path is spelled; inference still answers."""
    import grpc

    async def call(method: str) -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{quickstart.grpc_port}") as ch:
            rpc = ch.unary_unary(f"/inference.GRPCInferenceService/{method}")
            try:
                await rpc(b"\x0a\x0dsklearn-mnist", metadata=(("mm-vmodel-id", "sklearn-mnist"),), timeout=30)
            except grpc.aio.AioRpcError as e:
                return e.code()
            return grpc.StatusCode.OK

    for method in ("RepositoryIndex", "RepositoryModelUnload", "RepositoryModelLoad"):
        assert asyncio.run(call(method)) == grpc.StatusCode.PERMISSION_DENIED, method
    runtime = quickstart.instances()[0]
    with httpx.Client(timeout=60) as c:
        # the runtime itself has that API: the gateway is what keeps it out of reach
        assert c.post(f"{runtime['rest_url']}/v2/repository/index", json={}).status_code == 200
        assert prediction(quickstart.infer(c, "sklearn-mnist")) == 8

    def post_verbatim(path: str) -> tuple[int, bytes]:  # the path exactly as written, no client cleanup
        conn = http.client.HTTPConnection("127.0.0.1", quickstart.rest_port, timeout=30)
        try:
            conn.request("POST", path, body=b"{}", headers={"content-type": "application/json"})
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    for path in ("/v2/repository/index", "/v2/models/sklearn-mnist/../../repository/index",
                 "/v2/models/sklearn-mnist//..//..//repository/index",
                 "/v2/models/sklearn-mnist/./../../repository/models/x/unload",
                 "/v2/repository/models/sklearn-mnist/unload"):
        status, body = post_verbatim(path)
        assert status == 403, (path, status, body)
        assert json.loads(body)["error"].startswith("only inference is served here")
    status, _ = post_verbatim("/v2/models/sklearn-mnist%2F..%2F..%2Frepository/index")
    assert status == 400
    with httpx.Client(timeout=60) as c:
        assert prediction(quickstart.infer(c, "sklearn-mnist")) == 8
