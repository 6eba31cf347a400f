"""Helpers of the Kubernetes-mode tests: the real etcd + kube-apiserver built by `make tools`.

Without the binaries these tests skip and say why; in CI (MSM_STRICT_SKIPS=1) that is a failure,
since `make test` builds them first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import yaml
from kubernetes import client, config

from placement.local.apiserver import ApiServer, default_tools_dir, missing_tools
from placement.local.ports import free_port
from placement.local.samples import ensure_sample_models

CRDS = Path(__file__).resolve().parents[2] / "placement" / "manifests" / "crds"


def require_tools() -> Path:
    bin_dir = default_tools_dir()
    missing = missing_tools(bin_dir)
    if missing:
        pytest.skip(f"Kubernetes tests need {', '.join(missing)} in {bin_dir}: `make tools` builds them "
                    "(needs Go and the Go module proxy)")
    return bin_dir


def api_client(server: ApiServer, token: str | None = None) -> client.ApiClient:
    path = server.state_dir / f"kubeconfig-{token or 'admin'}"
    path.write_text(server.kubeconfig(token))
    return config.new_client_from_config(str(path))


def install_kserve_crds(api: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api)
    for f in sorted(CRDS.glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                ext.create_custom_resource_definition(doc)
    import time

    deadline = time.monotonic() + 60
    names = {"inferenceservices", "servingruntimes", "clusterservingruntimes"}
    while True:
        crds = ext.list_custom_resource_definition().items
        established = {c.spec.names.plural for c in crds
                       if any(cond.type == "Established" and cond.status == "True"
                              for cond in (c.status.conditions or []))}
        if names <= established:
            return
        assert time.monotonic() < deadline, f"CRDs not established: {names - established}"
        time.sleep(0.1)


# -- the dev cluster, as the tests drive it ------------------------------------------------------
ROOT = Path(__file__).resolve().parents[2]
NS = "modelmesh-serving"
DIGIT_8 = (ROOT / "examples" / "quickstart" / "digit-8.json").read_bytes()


@dataclass
class Cluster:
    state_dir: Path
    rest_port: int
    admin_port: int
    kubectl_bin: Path
    proc: subprocess.Popen | None = None
    grpc_port: int = 0

    def kubectl(self, *argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        r = subprocess.run([str(self.kubectl_bin), f"--kubeconfig={self.state_dir / 'kubeconfig'}", *argv],
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode:
            raise AssertionError(f"kubectl {' '.join(argv)}: {r.stdout}{r.stderr}")
        return r

    def apply(self, doc: dict) -> None:
        r = subprocess.run([str(self.kubectl_bin), f"--kubeconfig={self.state_dir / 'kubeconfig'}", "apply",
                            "-f", "-"], input=yaml.safe_dump(doc), capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr

    def isvc(self, name: str) -> dict:
        return json.loads(self.kubectl("get", "isvc", name, "-n", NS, "-o", "json").stdout)

    def lease_holder(self) -> str:
        """Who holds msm's leader Lease ("" when nobody does)."""
        out = self.kubectl("get", "lease", "msm-controller-leader", "-n", NS, "-o", "json").stdout
        lease = json.loads(out)
        return lease["spec"].get("holderIdentity") or ""

    def infer_url(self, model: str) -> str:
        return f"http://127.0.0.1:{self.rest_port}/v2/models/{model}/infer"

    def admin_ports(self) -> list[int]:
        """Every control-plane replica's admin port, as `msm dev-cluster up` printed them."""
        text = (self.state_dir.parent / f"{self.state_dir.name}.log").read_text()
        return sorted({int(m) for m in re.findall(r"status http://127\.0\.0\.1:(\d+)/status", text)})

    async def statuses(self) -> list[dict]:
        """The /status of every control-plane replica that answers."""
        out = []
        for port in self.admin_ports():
            with contextlib.suppress(aiohttp.ClientError):
                async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/status") as r:
                    out.append(await r.json())
        return out

    async def status(self) -> dict:
        """The leading replica's /status (placement lives there)."""
        for st in await self.statuses():
            if st.get("role") == "leader":
                return st
        raise AssertionError("no control-plane replica leads")


def pid_of(needle: bytes, state_dir: Path) -> int:
    """The process of the dev cluster in ``state_dir`` whose command line has ``needle``."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if needle in argv and str(state_dir).encode() in argv:
                return int(proc.name)
    raise AssertionError(f"no process {needle!r} of {state_dir}")


def _wait_ready(proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "Ctrl-C stops everything." in text:
            return
        if proc.poll() is not None:
            raise AssertionError(f"msm dev-cluster up exited {proc.returncode}:\n{text}")
        time.sleep(0.2)
    raise AssertionError(f"msm dev-cluster up not ready within {timeout}s:\n{log.read_text()}")


class Traffic:
    """Steady requests to one model (every ``period`` s) counting failures, until stopped."""

    def __init__(self, url: str, period: float = 0.05) -> None:
        self.url, self.period = url, period
        self.ok = 0
        self.failed: list[str] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as s:
            while True:
                try:
                    async with s.post(self.url, data=DIGIT_8, timeout=aiohttp.ClientTimeout(total=30)) as r:
                        body = await r.text()
                        if r.status == 200 and '"8"' in body:
                            self.ok += 1
                        else:
                            self.failed.append(f"{r.status} {body[:200]}")
                except (aiohttp.ClientError, TimeoutError) as e:
                    self.failed.append(repr(e))
                await asyncio.sleep(self.period)

    async def __aenter__(self) -> Traffic:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def until(pred, timeout: float = 90, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(pred):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


ROLLING = "rolling"


def rolling_isvc() -> dict:
    """The article's InferenceService as ``rolling``, asking for a rollout of one 30 % step whose
    2 s window needs 5 requests."""
    doc = yaml.safe_load((ROOT / "examples" / "quickstart" / "sklearn-mnist.yaml").read_text())
    doc["metadata"]["name"] = ROLLING
    doc["metadata"]["annotations"].update({"serving.msm.io/rollout-steps": "30",
                                           "serving.msm.io/rollout-interval": "2s",
                                           "serving.msm.io/rollout-min-requests": "5"})
    return doc


async def promote_under_traffic(cluster: Cluster, doc: dict, what: str) -> dict:
    """Give ``doc`` (applied and Ready) a new revision under traffic, wait until its rollout is
    promoted, check no request failed; the RolloutProgressing condition then."""
    def rollout() -> dict:
        conds = (cluster.isvc(ROLLING).get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == "RolloutProgressing"), {})

    async with Traffic(cluster.infer_url(ROLLING)) as traffic:
        doc["spec"]["predictor"]["model"]["storage"]["path"] = "mnist-logreg.joblib"
        cluster.apply(doc)
        await until(lambda: rollout().get("reason") == "Promoted", timeout=120, what=what)
        # a quick promotion (its 2 s window) can come before 20 requests did: the traffic goes on
        # until it has, so the promoted revision serves some of them too
        await until(lambda: traffic.ok > 20 or bool(traffic.failed), timeout=30, what="20 requests answered")
    assert traffic.failed == [] and traffic.ok > 20, (traffic.ok, traffic.failed[:5])
    return rollout()


async def infer(url: str) -> tuple[int, str]:
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession() as s, s.post(url, data=DIGIT_8, timeout=timeout) as r:
        return r.status, await r.text()


def dev_cluster(tmp_path_factory: pytest.TempPathFactory, *extra: str,
                ready_s: float = 120) -> Iterator[Cluster]:
    """`msm dev-cluster up` (with ``extra`` flags) on free ports, a PVC of sample models; stopped after."""
    bin_dir = require_tools()
    models = tmp_path_factory.mktemp("pvc")
    ensure_sample_models(models, with_xgboost=False)
    state = tmp_path_factory.mktemp("dev-cluster")
    c = Cluster(state, free_port(), free_port(), bin_dir / "kubectl", grpc_port=free_port())
    cmd = [sys.executable, "-m", "msm.cli", "dev-cluster", "up", "--state-dir", str(state),
           "--pvc", f"my-models-pvc={models}", "--rest-port", str(c.rest_port),
           "--grpc-port", str(c.grpc_port), "--xds-port", str(free_port()), "--admin-port", str(c.admin_port),
           *extra]
    log = state.parent / f"{state.name}.log"
    with open(log, "wb") as out:
        c.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    try:
        _wait_ready(c.proc, log, ready_s)
        yield c
    finally:
        os.killpg(c.proc.pid, signal.SIGINT)
        try:
            c.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(c.proc.pid, signal.SIGKILL)
            c.proc.wait()
