"""How a long-running msm program runs: start, serve until SIGINT/SIGTERM, then stop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable


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
