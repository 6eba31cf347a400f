"""KServe objects in a real kube-apiserver become msm's desired state: listed, then watched;
edits roll, deletes remove, a compacted watch lists again and misses nothing."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.request
from pathlib import Path

import pytest
import yaml
from kube_env import api_client, install_kserve_crds, require_tools
from kubernetes import client

from placement.local.apiserver import ApiServer
from placement.manifests.desired_state import DesiredState
from placement.sources.kube import KINDS, KubeSource

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]
FIXTURES = Path(__file__).resolve().parents[1] / "manifests" / "fixtures"
NS = "modelmesh-serving"
GROUP = "serving.kserve.io"


def fixture(name: str) -> dict:
    return yaml.safe_load((FIXTURES / name).read_text())


class States:
    def __init__(self) -> None:
        self.seen: list[DesiredState] = []
        self.changed = asyncio.Event()

    async def __call__(self, state: DesiredState) -> None:
        self.seen.append(state)
        self.changed.set()

    async def until(self, pred, timeout: float = 30) -> DesiredState:
        async def wait() -> DesiredState:
            while not (self.seen and pred(self.seen[-1])):
                self.changed.clear()
                await self.changed.wait()
            return self.seen[-1]

        return await asyncio.wait_for(wait(), timeout)


def setup_namespace(api: client.ApiClient, ns: str) -> client.CustomObjectsApi:
    client.CoreV1Api(api).create_namespace({"metadata": {"name": ns}})
    custom = client.CustomObjectsApi(api)
    rt = fixture("mlserver-runtime.yaml")
    rt["metadata"]["namespace"] = ns
    custom.create_namespaced_custom_object(GROUP, "v1alpha1", ns, "servingruntimes", rt)
    return custom


async def test_the_article_objects_become_desired_state_and_follow_edits(apiserver: ApiServer) -> None:
    with api_client(apiserver) as api:
        custom = setup_namespace(api, NS)
        isvc = fixture("article-sklearn-mnist.yaml")
        custom.create_namespaced_custom_object(GROUP, "v1beta1", NS, "inferenceservices", isvc)
        states = States()
        source = KubeSource(api, states, watch_timeout_s=5)
        try:
            first = await source.start()
            m = first.models["sklearn-mnist"]
            assert (m.namespace, m.runtime) == (NS, f"{NS}/mlserver-1.x")  # a pool per namespace
            assert m.storage_path == "pvc://my-models-pvc/mnist-svm.joblib"
            assert m.source == f"InferenceService {NS}/sklearn-mnist" and not first.errors
            # an edit of the storage path: a new revision
            patch = {"spec": {"predictor": {"model": {"storage": {"path": "mnist-svm-v2.joblib"}}}}}
            custom.patch_namespaced_custom_object(GROUP, "v1beta1", NS, "inferenceservices", "sklearn-mnist",
                                                  patch)
            st = await states.until(lambda s: s.models["sklearn-mnist"].revision_id != m.revision_id)
            assert st.models["sklearn-mnist"].storage_path == "pvc://my-models-pvc/mnist-svm-v2.joblib"
            # a model no runtime supports: refused with the clear message, the rest unchanged
            bad = fixture("article-sklearn-mnist.yaml")
            bad["metadata"]["name"] = "onnx-model"
            bad["spec"]["predictor"]["model"]["modelFormat"]["name"] = "onnx"
            custom.create_namespaced_custom_object(GROUP, "v1beta1", NS, "inferenceservices", bad)
            st = await states.until(lambda s: f"{NS}/onnx-model" in s.errors)
            assert "no runtime with autoSelect supports modelFormat onnx" in st.errors[f"{NS}/onnx-model"]
            assert set(st.models) == {"sklearn-mnist"}
            # delete: gone
            custom.delete_namespaced_custom_object(GROUP, "v1beta1", NS, "inferenceservices", "sklearn-mnist")
            st = await states.until(lambda s: "sklearn-mnist" not in s.models)
            assert st.models == {}
        finally:
            await source.stop()


async def test_the_oldest_inference_service_keeps_a_contested_name(apiserver: ApiServer) -> None:
    with api_client(apiserver) as api:
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        rt = fixture("mlserver-runtime.yaml")  # one runtime both teams see
        rt["kind"], rt["metadata"] = "ClusterServingRuntime", {"name": "shared-mlserver"}
        custom.create_cluster_custom_object(GROUP, "v1alpha1", "clusterservingruntimes", rt)
        isvc = fixture("article-sklearn-mnist.yaml")
        isvc["metadata"]["name"] = "shared-name"
        for ns in ("team-b", "team-a"):  # team-a sorts first but comes second
            core.create_namespace({"metadata": {"name": ns}})
            isvc["metadata"]["namespace"] = ns
            isvc["spec"]["predictor"]["model"]["runtime"] = "shared-mlserver"
            custom.create_namespaced_custom_object(GROUP, "v1beta1", ns, "inferenceservices", isvc)
            await asyncio.sleep(1.1)  # creationTimestamp has one-second resolution
        source = KubeSource(api)  # a fresh control plane: no incumbent known, age decides
        try:
            st = await source.start()
            assert st.models["shared-name"].namespace == "team-b"
            err = st.errors["InferenceService team-a/shared-name"]
            assert "already claimed by namespace team-b" in err
        finally:
            await source.stop()


def _etcd(server: ApiServer, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"{server.etcd_url}{path}", data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


class ResumingSource(KubeSource):
    """Starts from a list taken earlier, as a control plane that was away and resumes would."""

    def __init__(self, api: client.ApiClient, stale: dict, **kw) -> None:
        super().__init__(api, **kw)
        self._stale = dict(stale)

    def _list(self, kind):
        if kind.kind in self._stale:
            return self._stale.pop(kind.kind)
        return super()._list(kind)


async def test_a_watch_of_a_compacted_version_lists_again_and_misses_nothing(tmp_path: Path) -> None:
    # without the API server's watch cache a watch is served by etcd, so a compaction expires it
    server = ApiServer(tmp_path / "nocache", require_tools(), extra_args=("--watch-cache=false",))
    await server.start()
    try:
        with api_client(server) as api:
            install_kserve_crds(api)
            custom = setup_namespace(api, NS)
            ghost = fixture("article-sklearn-mnist.yaml")
            ghost["metadata"]["name"] = "ghost"
            custom.create_namespaced_custom_object(GROUP, "v1beta1", NS, "inferenceservices", ghost)
            kind = next(k for k in KINDS if k.kind == "InferenceService")
            stale = KubeSource(api)._list(kind)  # what a control plane saw before it went away
            # meanwhile: ghost deleted, a new model created, and etcd compacts the history away
            custom.delete_namespaced_custom_object(GROUP, "v1beta1", NS, "inferenceservices", "ghost")
            custom.create_namespaced_custom_object(GROUP, "v1beta1", NS, "inferenceservices",
                                                   fixture("article-sklearn-mnist.yaml"))
            key = base64.b64encode(b"/registry").decode()
            revision = int(_etcd(server, "/v3/kv/range", {"key": key, "limit": 1})["header"]["revision"])
            _etcd(server, "/v3/kv/compaction", {"revision": revision, "physical": True})
            states = States()
            source = ResumingSource(api, {"InferenceService": stale}, on_change=states, watch_timeout_s=5)
            try:
                first = await source.start()
                assert set(first.models) == {"ghost"}  # the stale view, until the watch says otherwise
                st = await states.until(lambda s: set(s.models) == {"sklearn-mnist"})
                assert source.relists["InferenceService"] == 1  # the watch got 410 Gone and listed again
                assert "ghost" not in st.models  # a DELETE the watch never saw is not missed
            finally:
                await source.stop()
    finally:
        await server.stop()


ISTIO_CRD = Path(__file__).resolve().parents[2] / "placement" / "manifests" / "crds" / "istio" / \
    "networking.istio.io_virtualservices.yaml"


def virtual_service(name: str, ns: str, hosts: list[str], gateways: list[str],
                    route: list[tuple[str, int]]) -> dict:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"hosts": hosts, "gateways": gateways,
                     "http": [{"route": [{"destination": {"host": h}, "weight": w} for h, w in route]}]}}


async def test_virtual_services_bound_to_the_model_gateway_are_watched_once_istio_crds_exist(
        apiserver: ApiServer) -> None:
    ns = "traffic"
    with api_client(apiserver) as api:
        custom = setup_namespace(api, ns)
        for name in ("a", "b"):
            isvc = fixture("article-sklearn-mnist.yaml")
            isvc["metadata"].update(name=name, namespace=ns)
            custom.create_namespaced_custom_object(GROUP, "v1beta1", ns, "inferenceservices", isvc)
        ext = client.ApiextensionsV1Api(api)
        states = States()
        source = KubeSource(api, states, watch_timeout_s=5, crd_poll_s=0.2)
        crd = yaml.safe_load_all(ISTIO_CRD.read_text())
        crd = next(d for d in crd if isinstance(d, dict))
        try:
            first = await source.start()
            assert not source.virtual_services_watched and first.traffic == {}  # no Istio: said, not failed
            ext.create_custom_resource_definition(crd)
            vs = "networking.istio.io", "v1", ns, "virtualservices"
            ours = virtual_service("ab", ns, ["ab"], ["istio-system/msm-model-gateway"],
                                   [("a", 70), ("b", 30)])
            # another gateway's: hosts msm would refuse, left alone and unreported
            theirs = virtual_service("web", ns, ["*.example.com"], ["web-gateway"], [("a", 100)])
            for obj in (ours, theirs):
                for _ in range(100):  # the CRD's REST endpoint follows its Established condition
                    try:
                        custom.create_namespaced_custom_object(*vs, obj)
                        break
                    except client.ApiException as e:
                        if e.status != 404:
                            raise
                        await asyncio.sleep(0.1)
            st = await states.until(lambda s: "ab" in s.traffic)  # the source asks every crd_poll_s
            assert source.virtual_services_watched
            assert st.traffic["ab"].source == f"VirtualService {ns}/ab"
            assert [(d.host, d.weight) for d in st.traffic["ab"].rules[0].route] == [("a", 70), ("b", 30)]
            assert not [k for k in st.errors if "web" in k or "example" in st.errors[k]]
            # a bad edit: said under the object, the last good routing stays
            custom.patch_namespaced_custom_object(*vs, "ab", {"spec": {"http": [{"route": [
                {"destination": {"host": "gone"}}]}]}})
            st = await states.until(lambda s: f"VirtualService {ns}/ab" in s.errors)
            problem = st.errors[f"VirtualService {ns}/ab"]
            assert "destination gone is not an InferenceService msm serves" in problem
            assert [(d.host, d.weight) for d in st.traffic["ab"].rules[0].route] == [("a", 70), ("b", 30)]
            # unbound from msm's gateway: no longer msm's
            custom.patch_namespaced_custom_object(*vs, "ab", {"spec": {"gateways": ["web-gateway"]}})
            await states.until(lambda s: "ab" not in s.traffic and f"VirtualService {ns}/ab" not in s.errors)
        finally:
            await source.stop()
            ext.delete_custom_resource_definition(crd["metadata"]["name"])
