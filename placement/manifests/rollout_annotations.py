"""An InferenceService asks for an automated canary rollout with annotations (docs/traffic.md).

KServe has ``canaryTrafficPercent`` (one fixed share, promoted by hand); msm's rollout moves the
new revision's share through steps on its own, judged on the gateway's measurements. The
settings are annotations, so ``kubectl annotate`` and any KServe tooling keep working:

- ``serving.msm.io/rollout-steps: "5,25,50"`` turns it on (the new revision's share per step; it
  is promoted after the last);
- ``serving.msm.io/rollout-interval: "30s"``, ``-min-requests: "20"``,
  ``-max-error-rate-increase: "1"`` (percentage points over the old revision),
  ``-max-latency-ratio: "1.5"`` (p99 over the old revision's), ``-threshold: "1"`` (failed checks
  that roll back) tune it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from placement.manifests.virtualservice import duration_s
from placement.traffic.rollout import RolloutSpec

PREFIX = "serving.msm.io/rollout-"
STEPS = PREFIX + "steps"
_NUMBERS = {  # annotation suffix -> (RolloutSpec field, type)
    "min-requests": ("min_requests", int),
    "max-error-rate-increase": ("max_error_rate_increase", float),
    "max-latency-ratio": ("max_latency_ratio", float),
    "threshold": ("threshold", int),
}
KNOWN = {STEPS, PREFIX + "interval", *(PREFIX + k for k in _NUMBERS)}


def rollout_spec(annotations: Mapping[str, Any] | None, canary_percent: int | None) -> RolloutSpec | None:
    """The rollout an InferenceService's annotations ask for (None: none); ValueError saying what
    is wrong, every problem at once."""
    ann = {k: v for k, v in (annotations or {}).items() if isinstance(k, str) and k.startswith(PREFIX)}
    if not ann:
        return None
    problems = [f"annotation {k}: unknown (msm reads {', '.join(sorted(KNOWN))})" for k in sorted(ann)
                if k not in KNOWN]
    if STEPS not in ann:
        problems.append(f"annotation {STEPS} is required to roll out by steps")
    fields: dict[str, Any] = {}
    raw = ann.get(STEPS)
    if raw is not None:
        try:
            fields["steps"] = tuple(int(s) for s in str(raw).split(","))
        except ValueError:
            problems.append(f"annotation {STEPS}: {raw!r} is not a list of percentages like \"5,25,50\"")
    if PREFIX + "interval" in ann:
        try:
            fields["interval_s"] = duration_s(ann[PREFIX + "interval"])
        except ValueError as e:
            problems.append(f"annotation {PREFIX}interval: {e}")
    for suffix, (name, kind) in _NUMBERS.items():
        if PREFIX + suffix in ann:
            try:
                fields[name] = kind(str(ann[PREFIX + suffix]))
            except ValueError:
                problems.append(f"annotation {PREFIX}{suffix}: {ann[PREFIX + suffix]!r} is not a number")
    if canary_percent is not None:
        problems.append("canaryTrafficPercent and a rollout by steps both set: choose one "
                        "(the rollout moves the share itself)")
    if not problems and "steps" in fields:
        spec = RolloutSpec(**fields)
        problems = [f"rollout: {p}" for p in spec.problems()]
        if not problems:
            return spec
    raise ValueError("; ".join(problems))
