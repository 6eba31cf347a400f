"""The rollouts' state in a ConfigMap of msm's namespace, so that a new leader carries on.

The leader writes it when a rollout starts, steps, or ends (``Controller``); a replica that
becomes the leader reads it before it places anything. A rollout then goes on from its step with
a fresh window, and a model that was rolled back keeps its old revision, instead of both
jumping to the new revision as a plain rolling update would.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from kubernetes import client

from placement.kube import config_maps
from placement.manifests.kube_names import ROLLOUTS_CONFIGMAP, ROLLOUTS_KEY


class ConfigMapRolloutStore:
    def __init__(self, api: client.ApiClient, namespace: str, name: str = ROLLOUTS_CONFIGMAP) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.name = name

    async def load(self) -> Mapping[str, Any]:
        return await asyncio.to_thread(self._load)

    def _load(self) -> Mapping[str, Any]:
        text = config_maps.read_key(self.core, self.namespace, self.name, ROLLOUTS_KEY)
        state = json.loads(text) if text else {}
        if not isinstance(state, dict):
            raise ValueError(f"ConfigMap {self.namespace}/{self.name}: {ROLLOUTS_KEY} is not an object")
        return state

    async def save(self, state: Mapping[str, Any]) -> None:
        await asyncio.to_thread(config_maps.put, self.core, self.namespace, self.name,
                                {ROLLOUTS_KEY: json.dumps(state, sort_keys=True)})
