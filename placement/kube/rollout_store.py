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
from kubernetes.client.rest import ApiException

from placement.manifests.kube_names import FIELD_MANAGER, LABEL_MANAGED_BY, ROLLOUTS_CONFIGMAP, ROLLOUTS_KEY


class ConfigMapRolloutStore:
    def __init__(self, api: client.ApiClient, namespace: str, name: str = ROLLOUTS_CONFIGMAP) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.name = name

    async def load(self) -> Mapping[str, Any]:
        return await asyncio.to_thread(self._load)

    def _load(self) -> Mapping[str, Any]:
        try:
            cm = self.core.read_namespaced_config_map(self.name, self.namespace)
        except ApiException as e:
            if e.status == 404:
                return {}
            raise
        text = (cm.data or {}).get(ROLLOUTS_KEY)
        state = json.loads(text) if text else {}
        if not isinstance(state, dict):
            raise ValueError(f"ConfigMap {self.namespace}/{self.name}: {ROLLOUTS_KEY} is not an object")
        return state

    async def save(self, state: Mapping[str, Any]) -> None:
        await asyncio.to_thread(self._save, json.dumps(state, sort_keys=True))

    def _save(self, text: str) -> None:
        body: dict[str, Any] = {"metadata": {"name": self.name, "labels": {LABEL_MANAGED_BY: FIELD_MANAGER}},
                                "data": {ROLLOUTS_KEY: text}}
        for attempt in range(3):
            try:
                try:
                    self.core.replace_namespaced_config_map(self.name, self.namespace, body)
                except ApiException as e:
                    if e.status != 404:
                        raise
                    self.core.create_namespaced_config_map(self.namespace, body)
                return
            except ApiException as e:
                if e.status != 409 or attempt == 2:  # 409: made meanwhile; replace it
                    raise
