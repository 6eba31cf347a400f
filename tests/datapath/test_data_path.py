"""The gateway's inference data path in a real Envoy in front of a real MLServer.

Both REST bodies on one port (the article's ``contents`` body is transcoded to gRPC, the standard
``data`` body goes to the REST port), gRPC with ``mm-vmodel-id``, and the model-name rewrite
to revision ids longer and shorter than the client's name.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dp_harness as h

from xds_server.translate import data_path

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

SHORT_TARGET_NAME = "digits-with-a-rather-long-client-name"
SHORT_TARGET = "s1"
LONG_TARGET_NAME = "d"
LONG_TARGET = "d__isvc-" + "0123456789abcdef" * 10  # 168 bytes: a two-byte length varint
NAMES = {"sklearn-mnist": h.REVISION, SHORT_TARGET_NAME: SHORT_TARGET, LONG_TARGET_NAME: LONG_TARGET}
VERSION = "1"


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    with h.mesh(tmp_path_factory.mktemp("datapath"), NAMES, versions={h.REVISION: VERSION}) as (_, gateway):
        yield gateway


@pytest.fixture(scope="module")
def digits():
    from sklearn import datasets

    return datasets.load_digits().data.astype(np.float32)


def data_body(rows: list[list[float]], **extra) -> str:
    flat = [v for r in rows for v in r]
    return json.dumps({**extra, "inputs": [
        {"name": "predict", "shape": [len(rows), 64], "datatype": "FP32", "data": flat}]})


def contents_body(rows: list[list[float]], **input_extra) -> str:
    flat = [v for r in rows for v in r]
    return json.dumps({"inputs": [{"name": "predict", **input_extra, "shape": [len(rows), 64],
                                   "datatype": "FP32", "contents": {"fp32_contents": flat}}]})


def infer_url(gw: h.Gateway, name: str = "sklearn-mnist") -> str:
    return f"{gw.rest_url}/v2/models/{name}/infer"


def assert_article_response(body: bytes, model_id: str) -> None:
    got = json.loads(body)
    assert got["modelName"] == model_id
    out = got["outputs"][0]
    assert (out["name"], out["datatype"], out["shape"]) == ("predict", "INT64", ["1", "1"])
    assert out["contents"]["int64Contents"] == ["8"]


# ---- 1. the article's curl ---------------------------------------------------------------------

def test_article_body_without_content_type_is_transcoded_and_answers_8(gw):
    status, headers, body = h.post(infer_url(gw), h.ARTICLE_BODY)
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    assert_article_response(body, h.REVISION)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_article_curl_verbatim(gw):
    """The article's command as written (curl -d adds its form content-type)."""
    out = subprocess.run(["curl", "-s", "-X", "POST", "-k", infer_url(gw), "-d", h.ARTICLE_BODY],
                         capture_output=True, timeout=30, check=True).stdout
    assert_article_response(out, h.REVISION)


def test_json_sent_as_grpc_on_the_rest_port_is_refused_not_answered_empty(gw):
    """gRPC framing on a REST path gets a gRPC error that says where gRPC goes (it used to reach the
    runtime as garbage and come back as an empty 200 with no error)."""
    status, headers, body = h.post(infer_url(gw), h.ARTICLE_BODY, {"content-type": "application/grpc"})
    assert (status, body) == (200, b"")  # a gRPC answer: the status is in the grpc-* headers
    assert headers["grpc-status"] == "3"  # INVALID_ARGUMENT
    assert "send JSON here, or gRPC" in headers["grpc-message"]


def test_article_body_on_the_versioned_path(gw):
    url = f"{gw.rest_url}/v2/models/sklearn-mnist/versions/{VERSION}/infer"
    status, _, body = h.post(url, h.ARTICLE_BODY)
    assert status == 200, body
    assert_article_response(body, h.REVISION)
    assert json.loads(body)["modelVersion"] == VERSION


# ---- 2. the standard V2 REST body on the same port and path --------------------------------------

@pytest.mark.parametrize("headers", [{}, {"content-type": "application/json"}], ids=["no-ct", "json"])
def test_standard_data_body_goes_to_the_rest_port(gw, headers):
    status, resp_headers, body = h.post(infer_url(gw), data_body([h.ARTICLE_PIXELS]), headers)
    assert status == 200, body
    got = json.loads(body)
    assert got["model_name"] == h.REVISION  # REST answer (snake_case), not the transcoder's
    assert got["outputs"][0]["data"] == [8]
    assert "grpc-status" not in resp_headers


def test_standard_data_body_on_the_versioned_path(gw):
    url = f"{gw.rest_url}/v2/models/sklearn-mnist/versions/{VERSION}/infer"
    status, _, body = h.post(url, data_body([h.ARTICLE_PIXELS]), {"content-type": "application/json"})
    assert status == 200, body
    assert json.loads(body)["outputs"][0]["data"] == [8]


def test_a_client_marker_header_does_not_override_the_classifier(gw):
    """A contents body with a stray x-msm-body header is still transcoded (the classifier drops it)."""
    status, _, body = h.post(infer_url(gw), h.ARTICLE_BODY, {data_path.REST_BODY_HEADER: "nonsense"})
    assert status == 200, body
    assert_article_response(body, h.REVISION)


def test_non_infer_calls_go_to_the_rest_port_untranscoded(gw):
    assert h.http_status(f"{gw.rest_url}/v2/models/sklearn-mnist/ready") == 200
    with h.urllib.request.urlopen(f"{gw.rest_url}/v2/models/sklearn-mnist", timeout=10) as r:
        meta = json.loads(r.read())
    assert meta["name"] == h.REVISION  # MLServer's REST metadata (the transcoder would say "name" too,
    assert "platform" in meta and "versions" in meta  # but only REST answers with both keys present)


# ---- 3. gRPC with mm-vmodel-id -------------------------------------------------------------------

def _triton(gw: h.Gateway):
    import tritonclient.grpc as tg

    return tg, tg.InferenceServerClient(url=f"127.0.0.1:{gw.grpc_port}")


def _grpc_predict(gw: h.Gateway, name: str, rows: np.ndarray, **kw) -> tuple[np.ndarray, str]:
    tg, client = _triton(gw)
    try:
        inp = tg.InferInput("predict", list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows)
        res = client.infer(model_name=name, inputs=[inp], headers={h.MODEL_HEADER: name}, **kw)
        return res.as_numpy("predict"), res.get_response().model_name
    finally:
        client.close()


def test_grpc_model_infer_with_vmodel_header_answers_8(gw):
    pred, model = _grpc_predict(gw, "sklearn-mnist", np.array([h.ARTICLE_PIXELS], dtype=np.float32))
    assert pred.ravel().tolist() == [8]
    assert model == h.REVISION


def test_grpc_model_ready_and_metadata_are_rewritten(gw):
    _, client = _triton(gw)
    try:
        hdr = {h.MODEL_HEADER: "sklearn-mnist"}
        assert client.is_model_ready("sklearn-mnist", headers=hdr)
        assert client.get_model_metadata("sklearn-mnist", headers=hdr).name == h.REVISION
    finally:
        client.close()


def test_grpc_compressed_request_is_refused_clearly(gw):
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="compressed"):
        _grpc_predict(gw, "sklearn-mnist", np.array([h.ARTICLE_PIXELS], dtype=np.float32),
                      compression_algorithm="gzip")


# ---- 4. large bodies, tricky bodies, bodies with neither -----------------------------------------

def test_large_data_body_is_classified_and_predicted(gw, digits):
    rows = np.concatenate([digits, digits[::-1]])  # 3594 rows, ~1.2 MB of JSON: past 1 MiB
    body = data_body(rows.tolist())
    assert len(body) > 1024 * 1024
    status, _, resp = h.post(infer_url(gw), body, {"content-type": "application/json"})
    assert status == 200, resp[:300]
    got = json.loads(resp)["outputs"][0]
    assert got["shape"] == [len(rows), 1]
    from sklearn import datasets, svm

    d = datasets.load_digits()
    expected = svm.SVC(gamma=0.001).fit(d.data, d.target).predict(rows)
    assert got["data"] == expected.tolist()


def test_data_key_after_a_large_prefix_is_still_found(gw):
    """The classifier reads a 64 KiB prefix first, then the whole body if that did not decide."""
    # (not a long "id": MLServer echoes it in a response header, past Envoy's 60 KiB limit)
    body = data_body([h.ARTICLE_PIXELS], parameters={"note": "x" * 100_000})
    status, _, resp = h.post(infer_url(gw), body)
    assert status == 200, resp[:300]
    assert json.loads(resp)["outputs"][0]["data"] == [8]


def test_large_contents_body_is_transcoded(gw, digits):
    rows = np.concatenate([digits, digits[::-1]])
    status, _, resp = h.post(infer_url(gw), contents_body(rows.tolist()))
    assert status == 200, resp[:300]
    out = json.loads(resp)["outputs"][0]
    assert out["shape"] == [str(len(rows)), "1"] and len(out["contents"]["int64Contents"]) == len(rows)


def test_nested_or_quoted_data_keys_do_not_fool_the_classifier(gw):
    """`data` inside an input's parameters or inside a string is not `inputs[].data`."""
    body = contents_body([h.ARTICLE_PIXELS], parameters={"data": {"string_param": '"data": [1]'}})
    status, _, resp = h.post(infer_url(gw), body)
    assert status == 200, resp[:300]
    assert_article_response(resp, h.REVISION)


def test_body_with_neither_data_nor_contents_is_transcoded_and_fails_as_json(gw):
    """What a client sees: the runtime's gRPC error, as HTTP 500 with a google.rpc.Status JSON."""
    body = json.dumps({"inputs": [{"name": "predict", "shape": [1, 64], "datatype": "FP32"}]})
    status, headers, resp = h.post(infer_url(gw), body)
    assert status == 500
    assert headers["content-type"] == "application/json"
    err = json.loads(resp)
    assert err["code"] == 13 and "reshape" in err["message"]  # INTERNAL, MLServer's message


def test_body_that_is_not_json_is_a_400(gw):
    status, _, resp = h.post(infer_url(gw), "this is not json")
    assert status == 400, resp


# ---- 5. the rewrite with targets longer and shorter than the client's name ------------------------

@pytest.mark.parametrize("name,target", [(SHORT_TARGET_NAME, SHORT_TARGET), (LONG_TARGET_NAME, LONG_TARGET)],
                         ids=["shorter-target", "longer-target-2-byte-varint"])
def test_rewrite_to_targets_of_other_lengths(gw, name, target):
    assert len(target.encode()) != len(name.encode())
    status, _, body = h.post(infer_url(gw, name), h.ARTICLE_BODY)
    assert status == 200, body
    assert_article_response(body, target)
    pred, model = _grpc_predict(gw, name, np.array([h.ARTICLE_PIXELS] * 3, dtype=np.float32))
    assert pred.ravel().tolist() == [8, 8, 8]
    assert model == target
    status, _, body = h.post(infer_url(gw, name), data_body([h.ARTICLE_PIXELS]))
    assert status == 200 and json.loads(body)["model_name"] == target


def test_unknown_model_is_not_routed(gw):
    status, _, _ = h.post(infer_url(gw, "no-such-model"), h.ARTICLE_BODY)
    assert status == 404
