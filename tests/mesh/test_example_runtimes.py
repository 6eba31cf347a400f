"""The article's custom runtime and LLM (sections 2 and 3), served by a real local mesh.

One ``msm up`` runs four runtimes side by side: the quickstart's scikit-learn MLServer, the
custom-runtime example's MLServer with its own model class, the LLM example's
``peft-model-server`` (its manifests as shipped), and a copy of it with too little memory for
the LLM. Requests go through the real Envoy gateway, REST and gRPC.
"""

from __future__ import annotations

import base64
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from mesh_harness import DIGIT_8, QUICKSTART, REPO, LocalMeshProcess

from placement.local.samples import ensure_complaints_model, ensure_sample_models
from placement.local.samples_llm import ensure_peft_model

pytestmark = pytest.mark.e2e

LLM = REPO / "examples" / "llm"
CUSTOM = REPO / "examples" / "custom-runtime"
ARTICLE_INPUT = (LLM / "input.json").read_bytes()
# The article's base64 decodes to its own spelling, typos included.
ARTICLE_TEXT = "Every day is a new binning, filled with optionpiening and hope"


def _too_small(runtime_yaml: str) -> str:
    """The LLM runtime renamed, with memory for about 384 MiB of models: the LLM does not fit."""
    out = runtime_yaml.replace("name: peft-model-server", "name: peft-small")
    out = out.replace("memory: 4Gi", "memory: 512Mi").replace("memory: 5Gi", "memory: 512Mi")
    assert out.count("512Mi") == 2 and "peft-small" in out
    return out


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMeshProcess]:
    root = tmp_path_factory.mktemp("examples")
    pvc, minio, manifests = root / "pvc", root / "minio", root / "manifests"
    ensure_sample_models(pvc, with_xgboost=False)
    ensure_complaints_model(pvc)
    ensure_peft_model(minio)
    manifests.mkdir()
    shutil.copy(QUICKSTART / "mlserver-runtime.yaml", manifests / "quickstart-runtime.yaml")
    shutil.copy(QUICKSTART / "sklearn-mnist.yaml", manifests / "sklearn-mnist.yaml")
    for src, prefix in ((CUSTOM, "custom"), (LLM, "llm")):
        for name in ("servingruntime.yaml", "inferenceservice.yaml"):
            shutil.copy(src / name, manifests / f"{prefix}-{name}")
    # the model classes, where the runtimes' relative PYTHONPATH "." finds them
    shutil.copy(CUSTOM / "complaint_classifier.py", manifests)
    shutil.copy(LLM / "peft_model_server.py", manifests)
    (manifests / "small-runtime.yaml").write_text(_too_small((LLM / "servingruntime.yaml").read_text()))
    big = (LLM / "inferenceservice.yaml").read_text()
    (manifests / "too-big.yaml").write_text(
        big.replace("name: peft-demo", "name: peft-too-big").replace("runtime: peft-model-server",
                                                                     "runtime: peft-small"))
    (manifests / "msm-local.yaml").write_text(
        f"pvcs:\n  my-models-pvc: {pvc}\nstorageKeys:\n  localMinIO: {minio}\n"
        "runtimeReplicas:\n  mlserver-1.x: 1\n  complaints-runtime: 1\n  peft-model-server: 1\n"
        "  peft-small: 1\ndefaultNamespace: modelmesh-serving\n")
    m = LocalMeshProcess(manifests, root / "state").start()
    try:
        yield m
    finally:
        m.stop()


def _texts(output: dict) -> list[str]:
    return [base64.b64decode(b).decode() for b in output["contents"]["bytesContents"]]


def _grpc_strings(mesh: LocalMeshProcess, model: str, texts: list[str]) -> tuple[str, list[str]]:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{mesh.grpc_port}")
    try:
        inp = grpcclient.InferInput("content", [len(texts)], "BYTES")
        inp.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
        result = client.infer(model, [inp], headers={"mm-vmodel-id": model}, client_timeout=120)
        out = result.as_numpy("output-0").reshape(-1)
        return result.get_response().model_name, [x.decode() for x in out]
    finally:
        client.close()


def test_llm_answers_the_articles_request_while_sklearn_keeps_answering(mesh: LocalMeshProcess) -> None:
    sklearn_codes: list[int] = []
    llm_done = threading.Event()

    def sklearn_traffic() -> None:  # the quickstart model, while the LLM's runtime loads it cold
        with httpx.Client(timeout=60) as c:
            while not llm_done.is_set() and len(sklearn_codes) < 200:
                r = mesh.infer(c, "sklearn-mnist", DIGIT_8, **{"content-type": ""})
                sklearn_codes.append(r.status_code)

    with httpx.Client(timeout=60) as c:  # warm sklearn first: the traffic during the LLM's load is warm
        assert mesh.infer(c, "sklearn-mnist", DIGIT_8, **{"content-type": ""}).status_code == 200
    thread = threading.Thread(target=sklearn_traffic)
    thread.start()
    try:
        # the article's curl: its input.json, no content-type header
        with httpx.Client(timeout=120) as c:
            r = c.post(f"{mesh.rest}/v2/models/peft-demo/infer", content=ARTICLE_INPUT,
                       headers={"content-type": ""})
    finally:
        llm_done.set()
        thread.join(60)
    assert r.status_code == 200, r.text + mesh.logs()
    body = r.json()
    assert body["modelName"].startswith("peft-demo__isvc-")
    out = body["outputs"][0]
    assert (out["name"], out["datatype"], out["shape"]) == ("output-0", "BYTES", ["1", "1"])
    assert out["parameters"] == {"content_type": {"stringParam": "str"}}
    [text] = _texts(out)
    # the article's prompt template around the decoded input, then what the model generated
    assert text.startswith(f"Tweet text : {ARTICLE_TEXT} Label :"), text
    assert sklearn_codes and set(sklearn_codes) == {200}, sklearn_codes


def test_llm_answers_a_second_prompt_over_grpc(mesh: LocalMeshProcess) -> None:
    prompt = "My parcel arrived late and broken"
    name, [text] = _grpc_strings(mesh, "peft-demo", [prompt])
    assert name.startswith("peft-demo__isvc-")
    assert text.startswith(f"Tweet text : {prompt} Label :"), text


def test_the_llm_is_accounted_by_what_it_took_once_loaded(mesh: LocalMeshProcess) -> None:
    with httpx.Client(timeout=120) as c:
        assert c.post(f"{mesh.rest}/v2/models/peft-demo/infer", content=ARTICLE_INPUT).status_code == 200
    st = mesh.status()
    [copy] = [m for i in st["instances"].values() for m in i["loaded"].values() if m["model"] == "peft-demo"]
    folder = mesh.dir.parent / "minio" / "peft-demo"
    on_disk = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    # ModelMesh's estimate would be on_disk x 1.25; torch, its weights and the imports took far more
    assert copy["size_bytes"] > 4 * on_disk, (copy, on_disk)
    runtime = st["instances"]["peft-model-server-0"]
    assert runtime["capacity_bytes"] == 4 * 2**30 - 134217728  # requests.memory less memBufferBytes


def test_a_model_bigger_than_its_runtime_once_loaded_is_refused_clearly(mesh: LocalMeshProcess) -> None:
    with httpx.Client(timeout=120) as c:
        r = c.post(f"{mesh.rest}/v2/models/peft-too-big/infer", content=ARTICLE_INPUT)
        assert r.status_code == 503, r.text
        assert "once loaded" in r.text and "capacity" in r.text, r.text
        st = mesh.wait_status(lambda s: s["models"]["peft-too-big"]["failed"], what="peft-too-big failed")
        assert "RESOURCE_EXHAUSTED" in json.dumps(st["models"]["peft-too-big"]), st["models"]["peft-too-big"]
        # nothing of it stays loaded, and the other LLM still answers
        assert not st["instances"]["peft-small-0"]["loaded"]
        assert c.post(f"{mesh.rest}/v2/models/peft-demo/infer", content=ARTICLE_INPUT).status_code == 200


def test_the_custom_runtime_answers_rest_and_grpc(mesh: LocalMeshProcess) -> None:
    with httpx.Client(timeout=120) as c:
        r = c.post(f"{mesh.rest}/v2/models/complaints/infer", content=(CUSTOM / "input.json").read_bytes())
    assert r.status_code == 200, r.text
    assert r.json()["modelName"].startswith("complaints__isvc-")
    assert _texts(r.json()["outputs"][0]) == ["complaint", "no complaint"]
    lines = ["Still waiting for my refund!!", "Great work, thank you"]
    name, labels = _grpc_strings(mesh, "complaints", lines)
    assert name.startswith("complaints__isvc-") and labels == ["complaint", "no complaint"]


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(x.decode(errors="replace").split("=", 1) for x in raw if b"=" in x)


def test_each_runtime_gets_its_own_env_and_the_adapters_none(mesh: LocalMeshProcess) -> None:
    by_runtime = {i["runtime"]: i for i in mesh.instances()}
    llm = _environ(by_runtime["peft-model-server"]["mlserver_pid"])
    assert llm["MLSERVER_MODEL_IMPLEMENTATION"] == "peft_model_server.PeftModelServer"
    assert llm["HF_HUB_OFFLINE"] == "1"
    assert llm["PYTHONPATH"].split(":")[0] == str(mesh.dir)  # "." of the manifest, resolved
    sklearn = _environ(by_runtime["mlserver-1.x"]["mlserver_pid"])
    assert "MLSERVER_MODEL_IMPLEMENTATION" not in sklearn and "HF_HUB_OFFLINE" not in sklearn
    assert str(mesh.dir) not in sklearn.get("PYTHONPATH", "")
    adapter = _environ(by_runtime["peft-model-server"]["adapter_pid"])
    assert "MLSERVER_MODEL_IMPLEMENTATION" not in adapter and str(mesh.dir) not in adapter["PYTHONPATH"]
