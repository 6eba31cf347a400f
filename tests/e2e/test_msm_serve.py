"""``msm serve`` as a user runs it: a placement file, a real Envoy, edits, a bad file, a restart.

The control plane is the real CLI in a subprocess; Envoy is bootstrapped by ``msm envoy-bootstrap``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backends import CopyBackend, free_port

from xds_server.envoy_process import EnvoyProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
DATA = {"x-msm-body": "data"}


def placement(copy_of_m: str, revision: str) -> str:
    return f"""
instances:
  a: {{address: 127.0.0.1, rest_port: {{a_rest}}, grpc_port: {{a_grpc}}}}
  b: {{address: 127.0.0.1, rest_port: {{b_rest}}, grpc_port: {{b_grpc}}}}
models:
  - name: m
    revisions:
      - id: {revision}
        copies: [{copy_of_m}]
"""


class ServeProcess:
    def __init__(self, path: Path, log: Path, xds_port: int, admin_port: int, rest: int, grpc: int) -> None:
        self.cmd = [sys.executable, "-m", "msm.cli", "serve", str(path), "--xds-port", str(xds_port),
                    "--admin-port", str(admin_port), "--rest-port", str(rest), "--grpc-port", str(grpc)]
        self.log = log
        self.admin = f"http://127.0.0.1:{admin_port}"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, session: aiohttp.ClientSession) -> None:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(*self.cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.returncode is None, self.log.read_text()
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{self.admin}/healthz") as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise TimeoutError(self.log.read_text())

    async def status(self, session: aiohttp.ClientSession) -> dict:
        async with session.get(f"{self.admin}/status") as r:
            return await r.json()

    async def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode


async def until(check, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await check():
                return
        except (aiohttp.ClientError, KeyError):
            pass
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.1)


async def test_msm_serve_follows_its_file_keeps_the_last_good_one_and_survives_a_restart(tmp_path):
    a, b = await CopyBackend("a").start(), await CopyBackend("b").start()
    ports = {"a_rest": a.rest.port, "a_grpc": a.grpc.port, "b_rest": b.rest.port, "b_grpc": b.grpc.port}
    path = tmp_path / "placement.yaml"

    def write(text: str) -> None:
        for k, v in ports.items():
            text = text.replace("{" + k + "}", str(v))
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    write(placement("a", "m__1"))
    xds_port, admin_port, rest, grpc_port, envoy_admin = (free_port() for _ in range(5))
    serve = ServeProcess(path, tmp_path / "serve.log", xds_port, admin_port, rest, grpc_port)
    boot = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "msm.cli", "envoy-bootstrap", "--xds-port", str(xds_port),
        "--envoy-admin-port", str(envoy_admin), "--node-id", "gw-test", stdout=subprocess.PIPE)
    out, _ = await boot.communicate()
    assert boot.returncode == 0
    (tmp_path / "bootstrap.yaml").write_bytes(out)
    envoy = EnvoyProcess(tmp_path / "bootstrap.yaml", envoy_admin, tmp_path / "envoy.log")
    url = f"http://127.0.0.1:{rest}/v2/models/m/infer"
    statuses: Counter = Counter()
    stop = asyncio.Event()

    async def served_by(s: aiohttp.ClientSession, copy: str) -> bool:
        async with s.post(url, data=b"{}", headers=DATA) as r:
            return r.status == 200 and (await r.json())["copy"] == copy

    try:
        async with aiohttp.ClientSession() as s:
            await serve.start(s)
            await envoy.start()
            await until(lambda: served_by(s, "a"))

            async def traffic() -> None:
                while not stop.is_set():
                    async with s.post(url, data=b"{}", headers=DATA) as r:
                        statuses[r.status] += 1
                    await asyncio.sleep(0.005)

            worker = asyncio.create_task(traffic())
            # an edit moves traffic; both copies stay up, so no request may fail
            write(placement("b", "m__2"))
            await until(lambda: served_by(s, "b"))
            # a broken file is reported and changes nothing
            path.write_text("models: [this is not: valid")
            await until(lambda: _has_error(serve, s))
            assert await served_by(s, "b")
            # the control plane goes away: Envoy keeps routing by what it has
            assert await serve.stop() == 0
            await asyncio.sleep(0.5)
            assert await served_by(s, "b")
            # it comes back on the same port; Envoy reconnects, resumes, and follows the next edit
            write(placement("b", "m__2"))
            await serve.start(s)
            await until(lambda: _clients(serve, s))
            status = await serve.status(s)
            assert [c["node_id"] for c in status["clients"]] == ["gw-test"]
            assert status["clients"][0]["variant"] == "delta"
            write(placement("a", "m__3"))
            await until(lambda: served_by(s, "a"))
            async with s.get(f"{serve.admin}/metrics") as r:
                metrics = await r.text()
            assert 'msm_xds_connected_clients{variant="delta"} 1.0' in metrics
            stop.set()
            await worker
        assert set(statuses) == {200} and statuses[200] > 50, statuses
    finally:
        stop.set()
        await envoy.stop()
        await serve.stop()
        await a.stop()
        await b.stop()


async def _has_error(serve: ServeProcess, s: aiohttp.ClientSession) -> bool:
    return bool((await serve.status(s))["last_error"])


async def _clients(serve: ServeProcess, s: aiohttp.ClientSession) -> bool:
    status = await serve.status(s)
    return bool(status["clients"]) and status["clients"][0]["types"].get("rds", {}).get("pending") is None


async def test_msm_serve_over_mtls_serves_the_gateway_with_its_certificate_only(tmp_path):
    from tlsutil import CA

    ca = CA(tmp_path / "pki")
    server = ca.issue("xds", dns=("localhost",), ips=("127.0.0.1",), server=True)
    gw = ca.issue("gateway", uris=("spiffe://cluster.local/ns/msm/sa/msm-models-gateway",))
    a = await CopyBackend("a").start()
    path = tmp_path / "placement.yaml"
    path.write_text(placement("a", "m__1").replace("{a_rest}", str(a.rest.port))
                    .replace("{a_grpc}", str(a.grpc.port)).replace("{b_rest}", "1").replace("{b_grpc}", "2"))
    xds_port, admin_port, rest, grpc_port, envoy_admin = (free_port() for _ in range(5))
    serve = ServeProcess(path, tmp_path / "serve.log", xds_port, admin_port, rest, grpc_port)
    serve.cmd += ["--tls-cert", str(server.cert), "--tls-key", str(server.key),
                  "--tls-client-ca", str(ca.pem.cert)]
    boot = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "msm.cli", "envoy-bootstrap", "--xds-port", str(xds_port),
        "--envoy-admin-port", str(envoy_admin), "--node-id", "gw-tls", "--xds-ca", str(ca.pem.cert),
        "--xds-cert", str(gw.cert), "--xds-key", str(gw.key), stdout=subprocess.PIPE)
    out, _ = await boot.communicate()
    assert boot.returncode == 0
    (tmp_path / "bootstrap.yaml").write_bytes(out)
    envoy = EnvoyProcess(tmp_path / "bootstrap.yaml", envoy_admin, tmp_path / "envoy.log")
    try:
        async with aiohttp.ClientSession() as s:
            await serve.start(s)
            await envoy.start()

            async def served() -> bool:
                url = f"http://127.0.0.1:{rest}/v2/models/m/infer"
                async with s.post(url, data=b"{}", headers=DATA) as r:
                    return r.status == 200 and (await r.json())["copy"] == "a"

            await until(served)
            status = await serve.status(s)
            assert [(c["node_id"], c["authenticated"]) for c in status["clients"]] == [
                ("gw-tls", "mTLS spiffe://cluster.local/ns/msm/sa/msm-models-gateway")]
        assert "over mTLS" in (tmp_path / "serve.log").read_text()
    finally:
        await envoy.stop()
        await serve.stop()
        await a.stop()
