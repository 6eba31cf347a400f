"""InferenceService status in KServe ModelMesh's shape, where KServe users look.

:func:`isvc_status` is pure: from what placement knows of a model (or why its manifest was
refused) to the ``status`` object of the CRD (``conditions`` Ready and PredictorReady,
``modelStatus.states`` / ``transitionStatus`` / ``copies`` / ``lastFailureInfo``, ``url``,
``address``, ``observedGeneration``). :class:`StatusWriter` writes it to the status subresource,
only when it changed, keeping each condition's ``lastTransitionTime`` until its status flips.

States, as ModelMesh uses them: ``Loaded`` (a copy serves), ``Loading``, ``Standby`` (no copy, and
nothing wrong: the first request loads it; the model is Ready, as it can serve), ``FailedToLoad``;
``transitionStatus`` ``InProgress`` while a new revision rolls out, ``BlockedByFailedLoad`` when
it cannot load, ``InvalidSpec`` when the manifest is refused (with ``msm validate``'s message).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from placement.engine.model_types import ModelStatus
from placement.manifests.validation import GROUP

log = logging.getLogger("msm.kube.status")

@dataclass(frozen=True)
class Gateway:
    """Where clients reach the models (for ``url`` and ``address``)."""

    host: str
    rest_port: int = 8008
    grpc_port: int = 8033


def _reason_of_problem(problem: str) -> str:
    """lastFailureInfo.reason (the CRD's enum) of a refused manifest, by what its message says."""
    if "no runtime with autoSelect" in problem or "no ServingRuntime or ClusterServingRuntime" in problem:
        return "NoSupportingRuntime"
    if "runtime" in problem and "not found" in problem:
        return "RuntimeNotRecognized"
    if "runtime" in problem and "disabled" in problem:
        return "RuntimeDisabled"
    return "InvalidPredictorSpec"


#: msm's condition on an InferenceService that rolls out by steps (docs/traffic.md)
ROLLOUT_CONDITION = "RolloutProgressing"
_ROLLOUT_REASON = {"waiting": "WaitingForNewRevision", "stepping": "Stepping", "promoted": "Promoted",
                   "rolled back": "RolledBack"}


def rollout_condition(rollout: dict[str, Any], ts: str) -> dict[str, Any]:
    """The rollout's progress or outcome as a condition: True while it runs, False once over."""
    phase = str(rollout.get("phase"))
    if phase == "stepping":
        message = (f"step {rollout.get('step')} of {len(rollout.get('steps') or [])}: "
                   f"{rollout.get('weight')}% to {rollout.get('to')}")
    else:
        message = str(rollout.get("outcome") or f"{rollout.get('to')} is loading")
    return {"type": ROLLOUT_CONDITION, "status": "True" if phase in ("waiting", "stepping") else "False",
            "reason": _ROLLOUT_REASON.get(phase, "Unknown"), "message": message[:1000],
            "lastTransitionTime": ts}


def isvc_status(name: str, *, generation: int | None, model: ModelStatus | None, problem: str | None,
                gateway: Gateway, now: datetime.datetime,
                rollout: dict[str, Any] | None = None) -> dict[str, Any]:
    """The status subresource of InferenceService ``name``.

    ``problem``: why its manifest was refused (then ``model`` is ignored). ``model``: its placement
    status; None before placement has heard of it (Pending). ``rollout``: its rollout by steps, if
    one runs or ran (``Rollout.status``), as the condition ``RolloutProgressing``.
    """
    ts = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    failure: dict[str, Any] | None = None
    if problem is not None:
        active, target, transition, copies = "FailedToLoad", "", "InvalidSpec", (0, 0)
        failure = {"reason": _reason_of_problem(problem), "message": problem[:4000], "time": ts}
        ready, why = False, "InvalidSpec"
    elif model is None or not model.known:
        active, target, transition, copies = "Pending", "", "InProgress", (0, 0)
        ready, why = False, "Pending"
    else:
        failed_on = {f.instance for f in model.failures}
        copies = (model.ready_copies, len(failed_on))
        if model.ready_copies:
            active = "Loaded"
        elif model.failed:
            active = "FailedToLoad"
        elif model.loading_copies:
            active = "Loading"
        else:
            active = "Standby"
        rolling = model.target_revision not in (None, model.active_revision)
        target = ("FailedToLoad" if model.failed else "Loading") if rolling else ""
        transition = "BlockedByFailedLoad" if model.failed else "InProgress" if rolling else "UpToDate"
        if model.failures:
            last = model.failures[-1]
            failure = {"reason": "ModelLoadFailed", "message": last.error[:4000], "location": last.instance,
                       "modelRevisionName": model.target_revision or "", "time": ts}
        ready = active in ("Loaded", "Standby")
        why = active
    status = "True" if ready else "False"
    conditions = [{"type": t, "status": status, "reason": why, "lastTransitionTime": ts,
                   **({"message": failure["message"][:1000]} if failure and not ready else {})}
                  for t in ("PredictorReady", "Ready")]
    if rollout is not None and problem is None:
        conditions.append(rollout_condition(rollout, ts))
    out: dict[str, Any] = {
        "conditions": conditions,
        "modelStatus": {"states": {"activeModelState": active, "targetModelState": target},
                        "transitionStatus": transition,
                        "copies": {"totalCopies": copies[0], "failedCopies": copies[1]}},
        "url": f"grpc://{gateway.host}:{gateway.grpc_port}",
        "address": {"url": f"http://{gateway.host}:{gateway.rest_port}/v2/models/{name}/infer"},
    }
    if failure is not None:
        out["modelStatus"]["lastFailureInfo"] = failure
    if generation is not None:
        out["observedGeneration"] = generation
    return out


#: msm's condition on a VirtualService bound to its model gateway: whether it routes
VS_CONDITION = "ModelRoutesAccepted"


def virtual_service_status(*, generation: int | None, hosts: list[str], problem: str | None, in_use: bool,
                           others: list[dict[str, Any]], now: datetime.datetime) -> dict[str, Any]:
    """The status msm writes on a VirtualService of its model gateway: the condition
    ``ModelRoutesAccepted`` (True: it routes ``hosts``; False: ``problem``, msm validate's message;
    True with ``problem`` when a version of it is still ``in_use``), beside the conditions others
    (istiod) keep there (``others``)."""
    ts = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    if problem is None:
        ours = {"type": VS_CONDITION, "status": "True", "reason": "Accepted",
                "message": f"routes {', '.join(sorted(hosts))} on the model gateway"[:1000]}
    else:
        ours = {"type": VS_CONDITION, "status": "True" if in_use else "False",
                "reason": "PreviousVersionInUse" if in_use else "Refused", "message": problem[:1000]}
    out: dict[str, Any] = {"conditions": [*(c for c in others if c.get("type") != VS_CONDITION),
                                          {**ours, "lastTransitionTime": ts}]}
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def _same_apart_from_times(a: dict[str, Any] | None, b: dict[str, Any]) -> bool:
    def strip(s: dict[str, Any]) -> Any:
        s = dict(s)
        s["conditions"] = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in s["conditions"]]
        if "modelStatus" in s:
            ms = dict(s["modelStatus"])
            if "lastFailureInfo" in ms:
                ms["lastFailureInfo"] = {k: v for k, v in ms["lastFailureInfo"].items() if k != "time"}
            s["modelStatus"] = ms
        return s

    return a is not None and strip(a) == strip(b)


#: (group, version, plural) of the objects whose status msm writes
INFERENCE_SERVICES = (GROUP, "v1beta1", "inferenceservices")
VIRTUAL_SERVICES = ("networking.istio.io", "v1", "virtualservices")


class StatusWriter:
    """Writes InferenceService (and VirtualService) status, a merge patch of the status subresource,
    when it changed."""

    def __init__(self, api: client.ApiClient) -> None:
        self.custom = client.CustomObjectsApi(api)
        self._written: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.writes = 0

    async def write(self, namespace: str, name: str, status: dict[str, Any],
                    resource: tuple[str, str, str] = INFERENCE_SERVICES) -> bool:
        """True when something was written; a condition keeps its time while its status holds."""
        key = (resource[2], namespace, name)
        before = self._written.get(key)
        if _same_apart_from_times(before, status):
            return False
        if before is not None:
            old = {c["type"]: c for c in before["conditions"]}
            status = {**status, "conditions": [
                {**c, "lastTransitionTime": old[c["type"]]["lastTransitionTime"]}
                if c["type"] in old and old[c["type"]]["status"] == c["status"] else c
                for c in status["conditions"]]}
        try:
            await asyncio.to_thread(self.custom.patch_namespaced_custom_object_status, resource[0],
                                    resource[1], namespace, resource[2], name, {"status": status})
        except ApiException as e:
            if e.status == 404:  # deleted meanwhile
                self._written.pop(key, None)
                return False
            raise
        self._written[key] = status
        self.writes += 1
        return True

    def forget(self, namespace: str, name: str, resource: tuple[str, str, str] = INFERENCE_SERVICES) -> None:
        self._written.pop((resource[2], namespace, name), None)

    def forget_all(self) -> None:
        """Write every status again (a new leader does not trust what it wrote before)."""
        self._written.clear()
