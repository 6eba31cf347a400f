"""A real etcd and kube-apiserver on loopback: the control plane of the dev cluster (and of tests).

The binaries are Kubernetes' and etcd's own, built from their Go modules at pinned versions by
``make tools`` (see scripts/tools/). Nothing here imitates them: msm and ``kubectl`` talk to a
real API server, with RBAC on. Authentication is by static tokens (one admin token for the user
and one token per ServiceAccount-like identity a caller asks for); the serving certificate is
the API server's own self-signed one, which the kubeconfig trusts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from placement.local.ports import free_port
from placement.local.processes import stop_process_group

#: Where `make tools` puts the binaries unless MSM_TOOLS_DIR says otherwise.
TOOLS_ENV = "MSM_TOOLS_DIR"


def default_tools_dir() -> Path:
    """$MSM_TOOLS_DIR, else the newest build of ``make tools`` ($MSM_TOOLS_CACHE or ~/.cache/msm-tools)."""
    if os.environ.get(TOOLS_ENV):
        return Path(os.environ[TOOLS_ENV])
    cache = Path(os.environ.get("MSM_TOOLS_CACHE") or Path.home() / ".cache" / "msm-tools")
    return cache / "current" / "bin"


TOOLS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
#: Istio's programs, from scripts/tools-istio (built by the same `make tools`).
ISTIO_TOOLS = ("istioctl", "pilot-discovery", "pilot-agent")


def missing_tools(bin_dir: Path, names: tuple[str, ...] = TOOLS) -> list[str]:
    return [n for n in names if not os.access(bin_dir / n, os.X_OK)]


@dataclass
class ApiServer:
    """etcd + kube-apiserver in ``state_dir``; ``await start()``, ``await stop()``."""

    state_dir: Path
    bin_dir: Path = field(default_factory=default_tools_dir)
    host: str = "127.0.0.1"
    start_timeout: float = 90.0
    tokens: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # token -> user, uid, groups
    extra_args: tuple[str, ...] = ()  # more kube-apiserver flags
    port: int = 0
    etcd_port: int = 0
    admin_token: str = ""
    _procs: list[asyncio.subprocess.Process] = field(default_factory=list)
    _logs: list = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.state_dir / "certs" / "apiserver.crt"  # the API server's self-signed cert

    @property
    def etcd_url(self) -> str:
        return f"http://{self.host}:{self.etcd_port}"

    def add_token(self, user: str, groups: tuple[str, ...] = ()) -> str:
        """A bearer token for ``user`` (before start): how msm authenticates as its ServiceAccount."""
        token = secrets.token_hex(16)
        self.tokens[token] = (user, f"{user}-uid", ",".join(groups))
        return token

    def kubeconfig(self, token: str | None = None, user: str = "admin") -> str:
        return (f"apiVersion: v1\nkind: Config\nclusters:\n- name: msm-dev\n  cluster:\n"
                f"    server: {self.url}\n    certificate-authority: {self.ca_file}\n"
                f"users:\n- name: {user}\n  user:\n    token: {token or self.admin_token}\n"
                f"contexts:\n- name: msm-dev\n  context: {{cluster: msm-dev, user: {user}}}\n"
                "current-context: msm-dev\n")

    async def start(self) -> None:
        missing = missing_tools(self.bin_dir, ("etcd", "kube-apiserver"))
        if missing:
            raise FileNotFoundError(f"{', '.join(missing)} not in {self.bin_dir}: run `make tools` "
                                    f"(or set {TOOLS_ENV} to the folder of the binaries)")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._write_files)
        self.etcd_port, peer, self.port = free_port(self.host), free_port(self.host), free_port(self.host)
        try:
            await self._spawn("etcd", [
                str(self.bin_dir / "etcd"), "--name=msm-dev", f"--data-dir={self.state_dir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}", f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://{self.host}:{peer}",
                f"--initial-advertise-peer-urls=http://{self.host}:{peer}",
                f"--initial-cluster=msm-dev=http://{self.host}:{peer}", "--log-level=warn"])
            await self._wait("etcd", f"{self.etcd_url}/health", ssl_ctx=None)
            await self._spawn("kube-apiserver", [
                str(self.bin_dir / "kube-apiserver"), f"--etcd-servers={self.etcd_url}",
                f"--bind-address={self.host}", f"--advertise-address={self.host}",
                f"--secure-port={self.port}", f"--cert-dir={self.state_dir / 'certs'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={self.state_dir / 'sa.pub'}",
                f"--service-account-signing-key-file={self.state_dir / 'sa.key'}",
                f"--token-auth-file={self.state_dir / 'tokens.csv'}",
                "--authorization-mode=RBAC", "--service-cluster-ip-range=10.96.0.0/24",
                "--endpoint-reconciler-type=none", *self.extra_args])
            await self._wait("kube-apiserver", f"{self.url}/readyz", ssl_ctx=False)
        except BaseException:
            await self.stop()
            raise
        (self.state_dir / "kubeconfig").write_text(self.kubeconfig())
        (self.state_dir / "kubeconfig").chmod(0o600)

    def _write_files(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (self.state_dir / "sa.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        (self.state_dir / "sa.pub").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        self.admin_token = secrets.token_hex(16)
        lines = [f"{self.admin_token},admin,admin-uid,system:masters"]
        lines += [f'{t},{u},{uid},"{g}"' if g else f"{t},{u},{uid}" for t, (u, uid, g) in self.tokens.items()]
        tokens = self.state_dir / "tokens.csv"
        tokens.write_text("\n".join(lines) + "\n")
        tokens.chmod(0o600)

    async def _spawn(self, name: str, cmd: list[str]) -> None:
        log = await asyncio.to_thread(open, self.state_dir / f"{name}.log", "ab")
        self._logs.append(log)
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=log, stderr=log, start_new_session=True,
                                                    stdin=asyncio.subprocess.DEVNULL)
        self._procs.append(proc)

    async def _wait(self, name: str, url: str, ssl_ctx: ssl.SSLContext | bool | None) -> None:
        proc = self._procs[-1]
        deadline = time.monotonic() + self.start_timeout
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                if proc.returncode is not None:
                    tail = (self.state_dir / f"{name}.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{name} exited ({proc.returncode}):\n{tail}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with s.get(url, ssl=ssl_ctx, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=2)) as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise TimeoutError(f"{name} not ready within {self.start_timeout:.0f}s; "
                           f"see {self.state_dir}/{name}.log")

    async def start_controllers(self) -> None:
        """kube-controller-manager and kube-scheduler (Deployments, ReplicaSets, scheduling, garbage
        collection, EndpointSlices, PV binding): what a cluster runs beside its API server."""
        missing = missing_tools(self.bin_dir, ("kube-controller-manager", "kube-scheduler"))
        if missing:
            raise FileNotFoundError(f"{', '.join(missing)} not in {self.bin_dir}: run `make tools`")
        kubeconfig = self.state_dir / "kubeconfig"
        try:
            port = free_port(self.host)
            await self._spawn("kube-controller-manager", [
                str(self.bin_dir / "kube-controller-manager"), f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
                "--authentication-skip-lookup",
                f"--bind-address={self.host}", f"--secure-port={port}", "--leader-elect=false",
                f"--service-account-private-key-file={self.state_dir / 'sa.key'}",
                f"--root-ca-file={self.ca_file}", f"--cert-dir={self.state_dir / 'certs-kcm'}",
                "--controllers=*,-nodeipam,-service-lb-controller,-cloud-node-lifecycle-controller"])
            await self._wait("kube-controller-manager", f"https://{self.host}:{port}/healthz", ssl_ctx=False)
            port = free_port(self.host)
            await self._spawn("kube-scheduler", [
                str(self.bin_dir / "kube-scheduler"), f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
                "--authentication-skip-lookup",
                f"--bind-address={self.host}", f"--secure-port={port}", "--leader-elect=false",
                f"--cert-dir={self.state_dir / 'certs-scheduler'}"])
            await self._wait("kube-scheduler", f"https://{self.host}:{port}/healthz", ssl_ctx=False)
        except BaseException:
            await self.stop()
            raise

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    async def stop(self) -> None:
        """The API server first (it talks to etcd on its way out), then etcd."""
        for proc in reversed(self._procs):
            await stop_process_group(proc, 15.0)
        self._procs.clear()
        for f in self._logs:
            f.close()
        self._logs.clear()
