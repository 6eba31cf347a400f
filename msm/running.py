"""How a long-running msm program runs: start, serve until SIGINT/SIGTERM, then stop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp


async def run_until_signalled(start: Callable[[], Awaitable[None]],
                              stop: Callable[[], Awaitable[None]]) -> int:
    """Run ``start``, wait for SIGINT or SIGTERM, and always run ``stop`` (also when start fails)."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await start()
        await stopping.wait()
    finally:
        await stop()
    return 0


async def wait_healthy(proc: asyncio.subprocess.Process, admin_port: int, what: str, log_path: Path,
                       timeout: float = 60.0) -> None:
    """Until the control plane ``proc`` answers /healthz on ``admin_port``; RuntimeError if it
    exits first, TimeoutError after ``timeout`` (both name ``what`` and its log)."""
    url = f"http://127.0.0.1:{admin_port}/healthz"
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise RuntimeError(f"{what} exited ({proc.returncode}); see {log_path}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with s.get(url, timeout=aiohttp.ClientTimeout(total=1)) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{what} did not become healthy within {timeout:.0f}s; see {log_path}")


async def wait_for_listeners(admin_url: str, ports: tuple[int, ...], timeout: float, failure: str) -> None:
    """Until the Envoy whose admin is ``admin_url`` listens on ``ports`` (its admin may not answer
    yet); TimeoutError(``failure``) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{admin_url}/listeners?format=json",
                                       timeout=aiohttp.ClientTimeout(total=2)) as r:
                    listeners = await r.text()
                if all(str(p) in listeners for p in ports):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(failure)
            await asyncio.sleep(0.2)
