"""Stopping the local processes msm starts (runtimes, pods' containers, Kubernetes' programs).

Each is started as the leader of its own process group (``start_new_session``), so one signal
reaches it and whatever it started (MLServer's workers, say).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal


async def stop_process_group(proc: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM the process's group, SIGKILL it after ``grace`` seconds (at once when ``grace`` is
    0); then SIGKILL whatever of the group outlived its leader."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM if grace > 0 else signal.SIGKILL)
        try:
            await asyncio.wait_for(proc.wait(), max(grace, 1.0))
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
