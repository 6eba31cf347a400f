"""``msm dev-cluster up``: the article's Kubernetes setup on one machine, in the foreground.

Real Kubernetes parts (built by ``make tools``): etcd, kube-apiserver (RBAC on),
kube-controller-manager and kube-scheduler. Then ``deploy/`` is applied with the real
``kubectl``; msm runs in Kubernetes mode as local processes (``--controllers``, 2: one leads) with
its ServiceAccount's token, so it has exactly the RBAC of ``deploy/``; the Envoy gateway listens
on 8008 (REST) and 8033 (gRPC); and the pod runner (placement.local.pod_runner) stands in for the
kubelet, running runtime pods as local processes on addresses of their own. Ctrl-C stops it all.

``--pvc [NAMESPACE/]NAME=PATH`` makes a PersistentVolumeClaim (namespace ``modelmesh-serving``
unless given) bound to a hostPath PersistentVolume of that folder.

``--istio``: the gateway is Istio's instead (docs/istio.md). ``istioctl install -f
istio/model-gateway.yaml`` installs Istio; istiod (pilot-discovery, real) runs as a process with
its Deployment's env and args and its ServiceAccount's token, on an address of its own; msm is
installed with ``deploy/istio`` and serves the gateway's agent on its TLS port; the gateway's
Deployment is then scaled to one pod, which the pod runner runs: the real pilot-agent in router
mode with the env, args, volumes and proxy config of the rendered Deployment, and upstream Envoy.
Service names the agent dials (istiod's, msm's xDS) resolve through the pod's /etc/hosts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import sys
import time
from pathlib import Path

import aiohttp
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from msm.running import wait_for_listeners, wait_healthy
from msm.xds_stack import write_gateway_token
from placement.local.apiserver import ApiServer, default_tools_dir, missing_tools
from placement.local.pod_runner import MeshStandIn, PodRunner
from placement.local.pod_volumes import resource_field
from placement.local.ports import free_port, port_in_use
from placement.local.processes import stop_process_group
from placement.manifests.kube_names import MODELMESH_SERVICE
from xds_server.bootstrap import render_bootstrap
from xds_server.envoy_process import EnvoyProcess

NAMESPACE = MODELMESH_SERVICE
SERVICE_ACCOUNT = "msm-controller"
DEPLOY_DIR = Path(__file__).resolve().parents[1] / "deploy"
ISTIO_OVERLAY = Path(__file__).resolve().parents[1] / "istio" / "model-gateway.yaml"
ISTIO_NS = "istio-system"
GATEWAY = "msm-model-gateway"
GATEWAY_SA = f"{ISTIO_NS}/{GATEWAY}-service-account"
#: istiod's address here (its ports are Istio's own), and msm's replicas' in Istio mode (TLS xDS
#: on 15012, as the gateway dials it): the pods' /etc/hosts names them.
ISTIOD_IP = "127.0.9.1"
ISTIO_XDS_IPS = tuple(f"127.0.9.{i}" for i in range(2, 10))
#: What Istio's programs bind at fixed ports here: the gateway's agent and Envoy (admin, status,
#: health, Prometheus; 0.0.0.0 or loopback) and istiod's listeners on its own address.
ISTIO_FIXED_PORTS = (("127.0.0.1", 15000), ("0.0.0.0", 15020), ("0.0.0.0", 15021), ("0.0.0.0", 15090),
                     *((ISTIOD_IP, p) for p in (8080, 15010, 15012, 15014, 15017)))
#: Istio's Envoy admin port (ProxyConfig proxyAdminPort): msm reads the gateway's request counts there.
ISTIO_ENVOY_ADMIN = "http://127.0.0.1:15000"


def _say(msg: str) -> None:
    print(f"msm dev-cluster: {msg}", flush=True)


def parse_pvc(flag: str) -> tuple[str, str, Path]:
    """``[NAMESPACE/]NAME=PATH`` → (namespace, name, folder)."""
    target, sep, path = flag.partition("=")
    if not sep or not target or not path:
        raise ValueError(f"--pvc wants [NAMESPACE/]NAME=PATH, not {flag!r}")
    ns, _, name = target.rpartition("/")
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise ValueError(f"--pvc {flag}: {folder} is not a folder")
    return ns or NAMESPACE, name, folder


class DevCluster:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.state_dir = Path(args.state_dir).resolve()
        self.deploy_dir = Path(args.deploy).resolve() if args.deploy else DEPLOY_DIR
        self.api = ApiServer(self.state_dir / "apiserver", default_tools_dir())
        self.kubeconfig = self.state_dir / "kubeconfig"
        self.envoy: EnvoyProcess | None = None
        self.envoy_admin_port = free_port()
        self.control_planes: list[ControlPlaneProcess] = []
        self.runner: PodRunner | None = None
        self.istiod: IstiodProcess | None = None
        self.istio = bool(getattr(args, "istio", False))
        self.client: client.ApiClient | None = None
        self._stopping = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stopping.set)
        try:
            if not await self._start():
                return 1
            await self._supervise()
            return 0
        except (OSError, RuntimeError, TimeoutError, ValueError, ApiException) as e:
            _say(f"failed: {e}")
            return 1
        finally:
            await self._stop()

    # -- start -----------------------------------------------------------------------------------
    async def _start(self) -> bool:
        a = self.args
        missing = missing_tools(self.api.bin_dir)
        if missing:
            _say(f"{', '.join(missing)} not in {self.api.bin_dir}: run `make tools` first (it builds "
                 "them from their Go modules, once)")
            return False
        for port, what in ((a.rest_port, "REST"), (a.grpc_port, "gRPC"), (a.xds_port, "xDS"),
                           (a.admin_port, "admin")):
            if port_in_use(port):
                _say(f"port {port} ({what}) is already in use on 127.0.0.1")
                return False
        if self.istio:  # Istio's own fixed ports, on the addresses they take here
            taken = [f"{h}:{p}" for h, p in ISTIO_FIXED_PORTS if port_in_use(p, h)]
            if taken:
                _say(f"{', '.join(taken)} already in use (another Istio dev cluster or gateway?): "
                     "Istio's gateway and istiod need them")
                return False
        pvcs = [parse_pvc(f) for f in a.pvc]
        if not (self.deploy_dir / "base" / "kustomization.yaml").is_file():
            _say(f"{self.deploy_dir} has no base/kustomization.yaml: pass --deploy DIR (msm's deploy/)")
            return False
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for old in ("apiserver", "node"):  # each run is a fresh cluster; logs of the last one go
            await asyncio.to_thread(shutil.rmtree, self.state_dir / old, True)
        started = time.monotonic()
        _say(f"starting etcd and kube-apiserver ({self.api.bin_dir})")
        await self.api.start()
        _say("starting kube-controller-manager and kube-scheduler")
        await self.api.start_controllers()
        self.kubeconfig.write_text(self.api.kubeconfig())
        self.kubeconfig.chmod(0o600)
        self.client = config.new_client_from_config(str(self.kubeconfig))
        if self.istio:
            await self._install_istio()
        _say(f"applying {self.deploy_dir} with kubectl")
        await self._apply_deploy()
        await asyncio.to_thread(self._make_pvcs, pvcs)
        token = await asyncio.to_thread(self._service_account_token)
        await self._start_control_planes(token)
        if not self.istio:
            await self._start_envoy()
        hosts = {}
        if self.istio:
            for svc, ips in ((f"istiod.{ISTIO_NS}", [ISTIOD_IP]),
                             (f"msm-xds.{NAMESPACE}", [cp.xds_host for cp in self.control_planes])):
                hosts[f"{svc}.svc"] = hosts[f"{svc}.svc.cluster.local"] = ips
        # runtime pods require Istio mTLS from the gateway: a sidecar stand-in in front of each
        mesh = MeshStandIn(frozenset(), (f"spiffe://cluster.local/ns/{ISTIO_NS}/sa/{GATEWAY}-service-account",)
                           ) if self.istio else None
        self.runner = PodRunner(self.client, self.state_dir / "node", hosts=hosts,
                                tools_dir=self.api.bin_dir, mesh=mesh)
        await self.runner.start()
        _say(f"pod runner up (node {self.runner.node}; pods get addresses from 127.0.10.1)")
        if self.istio:
            await self._start_istio_gateway()
        _say(f"ready in {time.monotonic() - started:.0f}s.")
        print(f"  export KUBECONFIG={self.kubeconfig}", flush=True)
        print(f"  REST   http://127.0.0.1:{a.rest_port}/v2/models/<model>/infer")
        print(f"  gRPC   127.0.0.1:{a.grpc_port}")
        print(f"  status http://127.0.0.1:{a.admin_port}/status; logs in {self.state_dir}")
        print("  try    kubectl apply -f examples/quickstart/sklearn-mnist.yaml", flush=True)
        print("  Ctrl-C stops everything.", flush=True)
        return True

    async def kubectl(self, *argv: str, timeout: float = 120.0) -> str:
        kubectl = self.api.bin_dir / "kubectl"
        proc = await asyncio.create_subprocess_exec(
            str(kubectl), f"--kubeconfig={self.kubeconfig}", *argv, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        if proc.returncode:
            raise RuntimeError(f"kubectl {' '.join(argv)} failed:\n{out.decode(errors='replace')}")
        return out.decode(errors="replace")

    async def _apply_deploy(self) -> None:
        await self.kubectl("apply", "--server-side", "-k", str(self.deploy_dir / "crds"))
        deadline = time.monotonic() + 60
        while True:  # a CRD just created may have no conditions yet: kubectl wait then errs at once
            try:
                await self.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd", "--all")
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        flavour = "istio" if self.istio else "base"
        await self.kubectl("apply", "--server-side", "-k", str(self.deploy_dir / flavour))
        # msm runs as a process here (its image is not built on this machine), not as these pods
        await self.kubectl("scale", "deployment/msm-controller", "-n", NAMESPACE, "--replicas=0")

    def _make_pvcs(self, pvcs: list[tuple[str, str, Path]]) -> None:
        assert self.client is not None
        core = client.CoreV1Api(self.client)
        for ns, name, folder in pvcs:
            pv = f"msm-dev-{ns}-{name}"
            with contextlib.suppress(ApiException):
                core.create_namespace({"metadata": {"name": ns}})
            core.create_persistent_volume({
                "metadata": {"name": pv},
                "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadOnlyMany", "ReadWriteMany"],
                         "storageClassName": "", "hostPath": {"path": str(folder)},
                         "persistentVolumeReclaimPolicy": "Retain",
                         "claimRef": {"namespace": ns, "name": name}}})
            core.create_namespaced_persistent_volume_claim(ns, {
                "metadata": {"name": name},
                "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "", "volumeName": pv,
                         "resources": {"requests": {"storage": "1Gi"}}}})
            _say(f"PVC {ns}/{name} is {folder}")

    def _service_account_token(self) -> str:
        """A token of msm's ServiceAccount (TokenRequest): msm gets exactly the RBAC of deploy/."""
        assert self.client is not None
        core = client.CoreV1Api(self.client)
        req = core.create_namespaced_service_account_token(
            SERVICE_ACCOUNT, NAMESPACE, {"spec": {"audiences": [], "expirationSeconds": 7 * 24 * 3600}})
        return req.status.token

    async def _start_control_planes(self, token: str) -> None:
        a = self.args
        kubeconfig = self.state_dir / "kubeconfig-msm"
        kubeconfig.write_text(self.api.kubeconfig(token, user=SERVICE_ACCOUNT))
        kubeconfig.chmod(0o600)
        self.token_file = self.state_dir / "gateway-token"
        self.gateway_token = write_gateway_token(self.token_file)
        if self.istio and a.controllers > len(ISTIO_XDS_IPS):
            raise ValueError(f"--istio runs at most {len(ISTIO_XDS_IPS)} control planes")
        for i in range(a.controllers):
            xds, admin = (a.xds_port, a.admin_port) if i == 0 else (free_port(), free_port())
            host = ISTIO_XDS_IPS[i] if self.istio else "127.0.0.1"
            cmd = [sys.executable, "-m", "msm.cli", "kube-control-plane", "--kubeconfig", str(kubeconfig),
                   "--xds-host", host, "--xds-port", str(xds), "--admin-port", str(admin),
                   "--rest-port", str(a.rest_port), "--grpc-port", str(a.grpc_port),
                   "--lease-namespace", NAMESPACE]
            if self.istio:  # the Istio gateway is the gateway: its listeners on the dev cluster's ports
                cmd += ["--istio-gateway", GATEWAY_SA, "--istio-rest-port", str(a.rest_port),
                        "--istio-grpc-port", str(a.grpc_port), "--envoy-admin-url", ISTIO_ENVOY_ADMIN]
            else:
                cmd += ["--gateway-token-file", str(self.token_file),
                        "--envoy-admin-url", f"http://127.0.0.1:{self.envoy_admin_port}"]
            if a.runtime_replicas is not None:
                cmd += ["--runtime-replicas", str(a.runtime_replicas)]
            self.control_planes.append(ControlPlaneProcess(f"msm-controller-{i}", cmd, xds, admin,
                                                           self.state_dir / f"msm-controller-{i}.log",
                                                           xds_host=host))
        await asyncio.gather(*(cp.start() for cp in self.control_planes))
        for cp in self.control_planes:
            tls = f", TLS xDS {cp.xds_host}:15012 for the Istio gateway" if self.istio else ""
            _say(f"{cp.name}: msm in Kubernetes mode (ServiceAccount {NAMESPACE}/{SERVICE_ACCOUNT}), "
                 f"xDS {cp.xds_host}:{cp.xds_port}{tls}, status http://127.0.0.1:{cp.admin_port}/status")

    async def _start_envoy(self) -> None:
        a = self.args
        bootstrap = self.state_dir / "envoy-bootstrap.yaml"
        bootstrap.touch(mode=0o600)
        bootstrap.chmod(0o600)
        bootstrap.write_text(render_bootstrap(
            node_id="msm-dev-gateway", xds_host="127.0.0.1", xds_port=a.xds_port,
            admin_port=self.envoy_admin_port, gateway_token=self.gateway_token,
            more_xds=tuple(("127.0.0.1", cp.xds_port) for cp in self.control_planes[1:])))
        self.envoy = EnvoyProcess(bootstrap, self.envoy_admin_port, self.state_dir / "envoy.log")
        await self.envoy.start()
        await wait_for_listeners(self.envoy.admin_url, (a.rest_port, a.grpc_port), 60,
                                 "the gateway did not receive its listeners from msm")
        _say(f"envoy gateway live: REST {a.rest_port}, gRPC {a.grpc_port}")

    # -- Istio ---------------------------------------------------------------------------------------
    async def _install_istio(self) -> None:
        """``istioctl install`` with both Deployments at zero replicas: istiod runs as a process here
        (its Deployment's env and args), the gateway's pod comes once msm serves it."""
        istioctl = self.api.bin_dir / "istioctl"
        _say(f"istioctl install -f {ISTIO_OVERLAY} (istiod and the gateway at 0 replicas for now)")
        proc = await asyncio.create_subprocess_exec(
            str(istioctl), "install", "-y", "-f", str(ISTIO_OVERLAY), f"--kubeconfig={self.kubeconfig}",
            "--set", "values.pilot.autoscaleEnabled=false", "--set", "components.pilot.k8s.replicaCount=0",
            "--set", "values.gateways.istio-ingressgateway.autoscaleEnabled=false",
            "--set", "components.ingressGateways[0].k8s.replicaCount=0",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL)
        out, _ = await asyncio.wait_for(proc.communicate(), 300)
        (self.state_dir / "istioctl-install.log").write_bytes(out)
        if proc.returncode:
            raise RuntimeError(f"istioctl install failed:\n{out.decode(errors='replace')[-2000:]}")
        assert self.client is not None
        self.istiod = IstiodProcess(self.api, self.client, self.state_dir / "istiod", ISTIOD_IP)
        await self.istiod.start()
        _say(f"istiod up on {ISTIOD_IP} (CA on :15012), log {self.istiod.log_path}")

    async def _start_istio_gateway(self) -> None:
        await self.kubectl("scale", f"deployment/{GATEWAY}", "-n", ISTIO_NS, "--replicas=1")
        a = self.args
        await wait_for_listeners(ISTIO_ENVOY_ADMIN, (a.rest_port, a.grpc_port), 120,
                                 "the Istio gateway did not get its listeners from msm; see the pod's "
                                 f"log under {self.state_dir / 'node' / 'pods'}")
        _say(f"Istio gateway {ISTIO_NS}/{GATEWAY} live (pilot-agent + Envoy): REST {a.rest_port}, "
             f"gRPC {a.grpc_port}")

    # -- run and stop ----------------------------------------------------------------------------
    async def _supervise(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 1.0)
            if self._stopping.is_set():
                return
            for cp in self.control_planes:  # as its Deployment would: a replica that dies comes back
                if cp.proc is not None and cp.proc.returncode is not None:
                    _say(f"{cp.name} exited ({cp.proc.returncode}); restarting it (see {cp.log_path})")
                    try:
                        await cp.start()
                    except (RuntimeError, TimeoutError) as e:
                        _say(f"{cp.name} did not come back: {e}")
            if self.istiod is not None and self.istiod.exited():
                _say(f"istiod exited; restarting it (see {self.istiod.log_path})")
                await self.istiod.start()
            if self.envoy is not None and self.envoy.exited():
                _say("the envoy gateway exited; restarting it")
                await self.envoy.stop()
                await self.envoy.start()

    async def _stop(self) -> None:
        _say("stopping")
        if self.runner is not None:
            await self.runner.stop()
        if self.envoy is not None:
            await self.envoy.stop()
        await asyncio.gather(*(cp.stop() for cp in self.control_planes))
        if self.istiod is not None:
            await self.istiod.stop()
        if self.client is not None:
            self.client.close()
        await self.api.stop()
        _say("stopped")


class IstiodProcess:
    """istiod (pilot-discovery) as a process: the env and args of the Deployment ``istioctl
    install`` made, its ServiceAccount's token, and its listeners on an address of its own (Istio's
    own ports). Its files (the mesh config it falls back to, certificates it writes) are relative
    to its folder, as in its image."""

    def __init__(self, api: ApiServer, client_: client.ApiClient, folder: Path, ip: str) -> None:
        self.api, self.client, self.folder, self.ip = api, client_, folder, ip
        self.log_path = folder / "istiod.log"
        self.proc: asyncio.subprocess.Process | None = None

    def _command(self) -> tuple[list[str], dict[str, str]]:
        apps, core = client.AppsV1Api(self.client), client.CoreV1Api(self.client)
        dep = self.client.sanitize_for_serialization(apps.read_namespaced_deployment("istiod", ISTIO_NS))
        pod = dep["spec"]["template"]["spec"]
        [c] = [c for c in pod["containers"] if c["name"] == "discovery"]
        sa = pod.get("serviceAccountName") or "istiod"
        token = core.create_namespaced_service_account_token(
            sa, ISTIO_NS, {"spec": {"audiences": [], "expirationSeconds": 7 * 24 * 3600}}).status.token
        kubeconfig = self.folder / "kubeconfig"
        kubeconfig.write_text(self.api.kubeconfig(token, user=sa))
        kubeconfig.chmod(0o600)
        name = f"istiod-{secrets.token_hex(3)}"
        fields = {"metadata.name": name, "metadata.namespace": ISTIO_NS, "spec.serviceAccountName": sa,
                  "status.podIP": self.ip, "status.hostIP": "127.0.0.1", "spec.nodeName": "msm-dev-node"}
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
        for e in c.get("env") or ():
            ref = e.get("valueFrom") or {}
            if "value" in e:
                env[e["name"]] = str(e["value"])
            elif "fieldRef" in ref:
                env[e["name"]] = fields.get(ref["fieldRef"].get("fieldPath", ""), "")
            elif "resourceFieldRef" in ref:
                env[e["name"]] = resource_field(c, ref["resourceFieldRef"])
        env["KUBECONFIG"] = str(kubeconfig)
        ip = self.ip
        # after the Deployment's own args, so these win: loopback addresses of its own, Istio's ports
        cmd = [str(self.api.bin_dir / "pilot-discovery"), *[str(x) for x in c.get("args") or ()],
               f"--kubeconfig={kubeconfig}", f"--httpAddr={ip}:8080", f"--grpcAddr={ip}:15010",
               f"--secureGRPCAddr={ip}:15012", f"--httpsAddr={ip}:15017", f"--monitoringAddr={ip}:15014",
               f"--ctrlz_address={ip}", "--ctrlz_port=9876"]
        return cmd, env

    async def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        cmd, env = await asyncio.to_thread(self._command)
        log = await asyncio.to_thread(open, self.log_path, "ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *cmd, env=env, cwd=self.folder, stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as session:
            while True:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"istiod exited ({self.proc.returncode}); see {self.log_path}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"http://{self.ip}:8080/ready",
                                           timeout=aiohttp.ClientTimeout(total=2)) as r:
                        if r.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"istiod not ready in 60 s; see {self.log_path}")
                await asyncio.sleep(0.2)

    def exited(self) -> bool:
        return self.proc is not None and self.proc.returncode is not None

    async def stop(self) -> None:
        if self.proc is not None:
            await stop_process_group(self.proc, 10.0)


class ControlPlaneProcess:
    """One replica of msm's control plane, as a process (its Deployment's pod, here)."""

    def __init__(self, name: str, cmd: list[str], xds_port: int, admin_port: int, log_path: Path,
                 xds_host: str = "127.0.0.1") -> None:
        self.name, self.cmd, self.log_path = name, cmd, log_path
        self.xds_port, self.admin_port, self.xds_host = xds_port, admin_port, xds_host
        self.proc: asyncio.subprocess.Process | None = None
        self.identity = name

    async def start(self) -> None:
        # a new identity each start, as a Deployment's new pod has a new name: a restarted replica
        # is a new candidate, it does not resume the Lease of the one that died
        self.identity = f"{self.name}-{secrets.token_hex(3)}"
        log = await asyncio.to_thread(open, self.log_path, "ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.cmd, "--identity", self.identity, stdout=log, stderr=log,
                stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()  # the child has its own copy
        await wait_healthy(self.proc, self.admin_port, self.name, self.log_path)

    async def stop(self) -> None:
        if self.proc is not None:
            await stop_process_group(self.proc, 10.0)


def run_dev_cluster(args: argparse.Namespace) -> int:
    return asyncio.run(DevCluster(args).run())
