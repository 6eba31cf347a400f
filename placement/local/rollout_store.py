"""The rollouts' state in a file of the local mesh's state folder, so that a restarted control
plane carries on (the local twin of placement/kube/rollout_store.py)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class FileRolloutStore:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    async def load(self) -> Mapping[str, Any]:
        return await asyncio.to_thread(self._load)

    def _load(self) -> Mapping[str, Any]:
        try:
            state = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        if not isinstance(state, dict):
            raise ValueError(f"{self.path} is not a JSON object")
        return state

    async def save(self, state: Mapping[str, Any]) -> None:
        await asyncio.to_thread(self._save, json.dumps(state, indent=1, sort_keys=True))

    def _save(self, text: str) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)  # a crash mid-write never leaves half a file
