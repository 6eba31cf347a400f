"""The Istio ingress gateway routes by model, on the dev cluster with Istio's own programs:
`msm dev-cluster up --istio` installs Istio with the real istioctl (istio/model-gateway.yaml),
runs the real istiod as the mesh's CA, and the gateway pod is the real pilot-agent in router mode
(its Deployment's env, args, volumes and proxy config) running upstream Envoy, configured by msm
over delta ADS through the agent, on msm's TLS port with the pod's ServiceAccount token.

One cluster for the module; each test leaves no InferenceService behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc as grpcclient
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

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(500)]
ROOT = Path(__file__).resolve().parents[2]
ARTICLE_ISVC = ROOT / "examples" / "quickstart" / "sklearn-mnist.yaml"
DIGIT_8_V2 = json.loads((ROOT / "examples" / "quickstart" / "digit-8-v2.json").read_text())
ISTIO_ADMIN = "http://127.0.0.1:15000"
GATEWAY_SA = "system:serviceaccount:istio-system:msm-model-gateway-service-account"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from dev_cluster(tmp_path_factory, "--istio", ready_s=300)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def article(cluster: Cluster) -> AsyncIterator[None]:
    """The article's InferenceService, applied once for the module: the tests kill processes under
    traffic to a model that serves, not to one being deleted and made again between tests."""
    cluster.kubectl("apply", "-f", str(ARTICLE_ISVC))
    cluster.kubectl("wait", "--for=condition=Ready", "isvc/sklearn-mnist", "-n", NS, "--timeout=120s")
    yield
    cluster.kubectl("delete", "isvc", "--all", "-n", NS, "--wait=true")


async def admin(path: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"{ISTIO_ADMIN}{path}",
                                                   timeout=aiohttp.ClientTimeout(total=10)) as r:
        return await r.text()


def grpc_infer(port: int) -> list:
    body = DIGIT_8_V2["inputs"][0]
    x = np.asarray(body["data"], dtype=np.float32).reshape(body["shape"])
    inp = grpcclient.InferInput(body["name"], list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        r = client.infer("sklearn-mnist", [inp], headers={"mm-vmodel-id": "sklearn-mnist"}, client_timeout=60)
        return r.as_numpy("predict").ravel().tolist()
    finally:
        client.close()


async def test_the_gateway_is_istios_own_configured_by_msm(cluster: Cluster, article: None) -> None:
    # the article's requests, on the Istio gateway's listeners
    status, body = await infer(cluster.infer_url("sklearn-mnist"))
    assert status == 200, body
    assert json.loads(body)["outputs"][0]["contents"]["int64Contents"] == ["8"]
    assert await asyncio.to_thread(grpc_infer, cluster.grpc_port) == [8]

    # the gateway is the pod of istioctl's Deployment, run by the real pilot-agent
    pods = json.loads(cluster.kubectl("get", "pods", "-n", "istio-system", "-l", "app=msm-model-gateway",
                                      "-o", "json").stdout)["items"]
    assert len(pods) == 1
    [c] = pods[0]["spec"]["containers"]
    assert c["name"] == "istio-proxy" and c["args"][:2] == ["proxy", "router"]
    assert all(s["ready"] for s in pods[0]["status"]["containerStatuses"])

    # its Envoy is upstream Envoy, its node an Istio router's, its listeners msm's
    info = json.loads(await admin("/server_info"))
    node = info["node"]
    assert node["id"].startswith("router~") and "ISTIO_VERSION" in node["metadata"]
    dump = json.loads(await admin("/config_dump"))
    boot = next(c for c in dump["configs"] if c["@type"].endswith("BootstrapConfigDump"))["bootstrap"]
    assert {c["name"] for c in boot["static_resources"]["clusters"]} >= {"sds-grpc", "xds-grpc"}
    listeners = next(c for c in dump["configs"] if c["@type"].endswith("ListenersConfigDump"))
    active = {ln["name"]: ln["active_state"]["listener"] for ln in listeners.get("dynamic_listeners", [])
              if "active_state" in ln}
    ports = {ln["address"]["socket_address"]["port_value"] for ln in active.values() if "address" in ln}
    assert {cluster.rest_port, cluster.grpc_port} <= ports
    assert "internal_listener" in active["msm_mirror"]  # mirrors: Istio's bootstrap has the extension

    # msm (the replica it dialled: leader or follower) knows it as an Istio gateway that proved its
    # ServiceAccount with a reviewed token
    clients = [c for st in await cluster.statuses() for c in st["gateway"]["clients"]]
    [gw] = [c for c in clients if c["kind"] == "istio-gateway"]
    assert gw["authenticated"] == f"token of {GATEWAY_SA}"
    assert gw["variant"] == "delta"


def runtime_pods(cluster: Cluster) -> list[dict]:
    return json.loads(cluster.kubectl("get", "pods", "-n", NS, "-l", "serving.msm.io/runtime=mlserver-1.x",
                                      "-o", "json").stdout)["items"]


def client_context(cert: tuple[bytes, bytes] | None, root: bytes) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=root.decode())
    ctx.check_hostname = False  # Istio checks the SPIFFE identity, not a host name
    if cert is not None:
        with tempfile.TemporaryDirectory() as d:
            Path(d, "c.pem").write_bytes(cert[0])
            Path(d, "k.pem").write_bytes(cert[1])
            ctx.load_cert_chain(Path(d, "c.pem"), Path(d, "k.pem"))
    return ctx


async def tls_probe(ip: str, port: int, cert: tuple[bytes, bytes] | None, root: bytes) -> str:
    """What a client gets from a runtime pod's inference port: "served", or how it was refused."""
    ctx = await asyncio.to_thread(client_context, cert, root)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(ip, port, ssl=ctx), 10)
        writer.write(f"GET /v2/health/ready HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return "served" if data.startswith(b"HTTP/1.1 200") else f"closed ({len(data)} bytes)"
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError) as e:
        return f"refused: {type(e).__name__}"


async def test_the_gateway_reaches_runtime_pods_over_istio_mtls(cluster: Cluster, article: None) -> None:
    from placement.local.mesh_sidecar import fetch_certificate

    status, body = await infer(cluster.infer_url("sklearn-mnist"))  # a copy loaded: its runtime is routed
    assert status == 200, body
    # the gateway's runtime clusters: TLS with the agent's SDS secrets, for the namespace's identities
    dump = json.loads(await admin("/config_dump?resource=dynamic_active_clusters"))
    runtime = [c["cluster"] for c in dump["configs"] if c["cluster"]["name"].startswith("rt_")]
    assert runtime
    for c in runtime:
        # Istio's auto mTLS: the socket is chosen per endpoint, by the mark of a pod with a sidecar
        assert "transport_socket" not in c
        istio, disabled = c["transport_socket_matches"]
        assert istio["match"] == {"tlsMode": "istio"} and disabled["name"] == "tlsMode-disabled"
        ctx = istio["transport_socket"]["typed_config"]["common_tls_context"]
        assert [s["name"] for s in ctx["tls_certificate_sds_secret_configs"]] == ["default"]
        combined = ctx["combined_validation_context"]
        assert combined["validation_context_sds_secret_config"]["name"] == "ROOTCA"
        assert combined["default_validation_context"]["match_typed_subject_alt_names"][0]["matcher"] == {
            "prefix": f"spiffe://cluster.local/ns/{NS}/sa/"}
    secrets = json.loads(await admin("/config_dump?resource=dynamic_active_secrets"))
    # served by the agent, from istiod
    assert {s["name"] for s in secrets["configs"]} == {"default", "ROOTCA"}

    eds = json.loads(await admin("/config_dump?include_eds&resource=dynamic_endpoint_configs"))
    marks = [ep["metadata"]["filter_metadata"]["envoy.transport_socket_match"]
             for cfg in eds["configs"] if cfg["endpoint_config"]["cluster_name"].startswith("rt_")
             for loc in cfg["endpoint_config"]["endpoints"] for ep in loc["lb_endpoints"]]
    assert marks and all(m == {"tlsMode": "istio"} for m in marks)

    # and the runtime pods require it: plaintext is refused, so is a mesh certificate of another identity
    pod = runtime_pods(cluster)[0]
    assert pod["metadata"]["labels"]["security.istio.io/tlsMode"] == "istio"
    facts = json.loads(pod["metadata"]["annotations"]["serving.msm.io/runtime-instance"])
    ip, port = pod["status"]["podIP"], facts["restPort"]
    root = cluster.kubectl("get", "configmap", "istio-ca-root-cert", "-n", NS,
                           "-o", "jsonpath={.data.root-cert\\.pem}").stdout.encode()
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientError):
            await s.get(f"http://{ip}:{port}/v2/health/ready", timeout=aiohttp.ClientTimeout(total=10))
    assert (await tls_probe(ip, port, None, root)).startswith(("refused", "closed"))
    token = cluster.kubectl("create", "token", "default", "-n", NS, "--audience", "istio-ca").stdout.strip()
    other = await fetch_certificate("127.0.9.1:15012", root, token, f"spiffe://cluster.local/ns/{NS}/sa/default",
                                    server_name="istiod.istio-system.svc")
    assert (await tls_probe(ip, port, other[:2], root)).startswith(("refused", "closed"))


def virtual_service(name: str, hosts: list[str], gateways: list[str], route: list[dict]) -> dict:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"hosts": hosts, "gateways": gateways, "http": [{"route": route}]}}


async def test_a_virtualservice_bound_to_the_model_gateway_routes_a_virtual_name(
        cluster: Cluster, article: None) -> None:
    """``kubectl apply`` of an Istio VirtualService: Istio's own gateway, configured by msm, routes
    the virtual model name; a VirtualService of another gateway is left alone."""
    cluster.apply(virtual_service("digits", ["digits"], ["istio-system/msm-model-gateway"],
                                  [{"destination": {"host": "sklearn-mnist"}}]))
    cluster.apply(virtual_service("web", ["*.example.com"], ["web-gateway"],
                                  [{"destination": {"host": "web.default.svc.cluster.local"}}]))

    async def answers() -> tuple[int, str]:
        return await infer(cluster.infer_url("digits"))

    deadline = asyncio.get_running_loop().time() + 90
    while (got := await answers())[0] != 200:
        assert asyncio.get_running_loop().time() < deadline, got
        await asyncio.sleep(0.5)
    assert json.loads(got[1])["modelName"].startswith("sklearn-mnist__isvc-")
    st = await cluster.status()
    assert st["traffic"] == {"digits": f"VirtualService {NS}/digits"}
    assert not [k for k in st["manifest_errors"] if "web" in k]  # another gateway's: not msm's business

    def routes_condition(name: str) -> dict:
        obj = json.loads(cluster.kubectl("get", "virtualservice", name, "-n", NS, "-o", "json").stdout)
        conds = (obj.get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == "ModelRoutesAccepted"), {})

    # the VirtualService's own status says it routes (kubectl get … -o yaml, where users look)
    await until(lambda: routes_condition("digits").get("reason") == "Accepted", what="the Accepted condition")
    # once Accepted, it says what it routes (never Accepted before msm has resolved it)
    assert routes_condition("digits")["message"] == "routes digits on the model gateway"
    assert routes_condition("web") == {}  # another gateway's: msm writes nothing on it

    # a bad edit is reported under the object, and the routing in force stays
    cluster.apply(virtual_service("digits", ["digits"], ["istio-system/msm-model-gateway"],
                                  [{"destination": {"host": "no-such-model"}}]))
    await until(lambda: "no-such-model" in json.dumps(asyncio.run(cluster.status())["manifest_errors"]),
                what="the problem reported")
    await until(lambda: routes_condition("digits").get("reason") == "PreviousVersionInUse",
                what="the problem in the VirtualService's status")
    assert "no-such-model" in routes_condition("digits")["message"]
    assert (await answers())[0] == 200
    cluster.kubectl("delete", "virtualservice", "digits", "web", "-n", NS)
    deadline = asyncio.get_running_loop().time() + 60
    while (got := await answers())[0] != 404:
        assert asyncio.get_running_loop().time() < deadline, got
        await asyncio.sleep(0.5)


async def test_a_rollout_by_steps_through_istios_gateway(cluster: Cluster, article: None) -> None:
    """A rollout decided on what Istio's own gateway measured: its Envoy reports each request of
    the revisions in the rollout to the leader's measure port over mutual TLS, with the workload
    certificate istiod issued it (no token: its agent has one, its Envoy not)."""
    doc = rolling_isvc()
    cluster.apply(doc)
    try:
        cluster.kubectl("wait", "--for=condition=Ready", "isvc/rolling", "-n", NS, "--timeout=120s")
        st = await cluster.status()
        assert st["istio"]["measure_port"] == 15013 and st["istio"]["measure_problem"] is None, st["istio"]
        rollout = await promote_under_traffic(cluster, doc, "a promotion on the Istio gateway's reports")
        assert rollout["message"].startswith("promoted after 1 steps"), rollout
        dump = json.loads(await admin("/config_dump?resource=dynamic_active_clusters"))
        [measure] = [c["cluster"] for c in dump["configs"] if c["cluster"]["name"] == "msm_measure"]
        tls = measure["transport_socket"]["typed_config"]
        assert tls["sni"] == f"msm-xds.{NS}.svc"
        certs = tls["common_tls_context"]["tls_certificate_sds_secret_configs"]
        assert [c["name"] for c in certs] == ["default"]
    finally:
        cluster.kubectl("delete", "isvc", "rolling", "-n", NS, "--wait=true")


async def test_istiod_restarted_under_traffic(cluster: Cluster, article: None) -> None:
    status, body = await infer(cluster.infer_url("sklearn-mnist"))  # loaded (a cold start is no test here)
    assert status == 200, body
    async with Traffic(cluster.infer_url("sklearn-mnist")) as traffic:
        await asyncio.sleep(1)
        old = pid_of(b"pilot-discovery", cluster.state_dir)
        os.kill(old, signal.SIGKILL)
        await until(lambda: _alive_other(b"pilot-discovery", cluster.state_dir, old), timeout=60,
                    what="istiod back")
        await asyncio.sleep(2)
    # the gateway routes by msm's configuration and holds its certificate (istiod issued it, the
    # agent serves it): istiod's absence costs it nothing
    assert traffic.failed == [] and traffic.ok > 20, (traffic.ok, traffic.failed[:5])


def _holder_alive(cluster: Cluster) -> bool:
    holder = cluster.lease_holder()
    try:
        return bool(holder) and pid_of(holder.encode(), cluster.state_dir) > 0
    except AssertionError:
        return False


def _alive_other(needle: bytes, state_dir: Path, old: int) -> bool:
    try:
        return pid_of(needle, state_dir) != old
    except AssertionError:
        return False


async def gateway_replica(cluster: Cluster) -> str | None:
    """The identity of the msm replica the Istio gateway's agent is connected to."""
    for st in await cluster.statuses():
        if any(c["kind"] == "istio-gateway" for c in st["gateway"]["clients"]):
            return st["leader"]["this"]
    return None


async def test_the_msm_replica_serving_the_gateway_killed_under_traffic(cluster: Cluster,
                                                                         article: None) -> None:
    status, body = await infer(cluster.infer_url("sklearn-mnist"))
    assert status == 200, body
    served_by = await gateway_replica(cluster)
    assert served_by is not None
    async with Traffic(cluster.infer_url("sklearn-mnist")) as traffic:
        await asyncio.sleep(1)
        os.kill(pid_of(served_by.encode(), cluster.state_dir), signal.SIGKILL)
        # the agent redials msm-xds: the Service's other replica, while Envoy routes as it did
        await until(lambda: asyncio.run(gateway_replica(cluster)) not in (None, served_by), timeout=60,
                    what="the gateway served by the other replica")
        await asyncio.sleep(2)
    assert traffic.failed == [] and traffic.ok > 20, (traffic.ok, traffic.failed[:5])
    status, body = await infer(cluster.infer_url("sklearn-mnist"))
    assert status == 200, body


async def test_msms_leader_killed_under_traffic(cluster: Cluster, article: None) -> None:
    status, body = await infer(cluster.infer_url("sklearn-mnist"))
    assert status == 200, body

    # a live leader: a replica killed by the test before may still hold the Lease until it expires
    await until(lambda: _holder_alive(cluster), timeout=60, what="a live leader")
    old = cluster.lease_holder()
    assert old.startswith("msm-controller-")
    async with Traffic(cluster.infer_url("sklearn-mnist")) as traffic:
        await asyncio.sleep(1)
        os.kill(pid_of(old.encode(), cluster.state_dir), signal.SIGKILL)
        await until(lambda: cluster.lease_holder() not in ("", old), timeout=40, what="a new leader")
        await asyncio.sleep(2)
    assert traffic.failed == [] and traffic.ok > 20, (traffic.ok, traffic.failed[:5])
    assert (await cluster.status())["counters"]["loads"] == 0  # the new leader adopted the copy
