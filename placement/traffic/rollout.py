"""Canary rollouts that decide by themselves: a model's new revision takes traffic in steps, each
step judged against the old revision on the gateway's own measurements; the rollout advances,
or rolls back by itself while the old revision is still loaded (a rollback costs no load).

A state machine that does no I/O (as python-hyper/h2 is): the controller hands it the time, the
new revision's readiness and the gateway's measurements, and asks it for the new revision's
share. What it does is Flagger's canary analysis, per model: every ``interval`` the step's
window is checked (enough requests to the new revision, its error rate and p99 latency against
the old revision's over the same window); a passing check moves to the next step, a failing one
counts, and ``threshold`` failed checks roll back. After the last step passes, the new revision
is promoted (it takes all traffic and the old one drains).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from placement.engine.model_types import DesiredModel


@dataclass(frozen=True, slots=True)
class RolloutSpec:
    """How a rollout proceeds (an InferenceService's ``serving.msm.io/rollout-*`` annotations)."""

    steps: tuple[int, ...]  # the new revision's share at each step, percent, increasing, 1..99
    interval_s: float = 30.0  # how long each check's window is
    min_requests: int = 20  # the new revision's requests a window needs before it is judged
    max_error_rate_increase: float = 1.0  # percentage points over the old revision's error rate
    max_latency_ratio: float = 1.5  # the new revision's p99 over the old one's
    # ... and slower by more than this too: a few milliseconds between small windows' p99s (their
    # slowest request) is noise, not a regression
    latency_slack_s: float = 0.025
    threshold: int = 1  # failed checks that roll back

    def problems(self) -> list[str]:
        out = []
        increasing = list(self.steps) == sorted(set(self.steps))
        if not self.steps or any(not 1 <= s <= 99 for s in self.steps) or not increasing:
            out.append("steps must be increasing percentages from 1 to 99 (promotion follows the last)")
        if not self.interval_s > 0:
            out.append("the interval must be positive")
        if self.min_requests < 1:
            out.append("min requests must be at least 1")
        if not 0 <= self.max_error_rate_increase <= 100:
            out.append("the error rate increase is percentage points, 0 to 100")
        if not self.max_latency_ratio >= 1:
            out.append("the latency ratio must be at least 1")
        if self.threshold < 1:
            out.append("the threshold of failed checks must be at least 1")
        return out


class Phase(enum.Enum):
    WAITING = "waiting"  # for the new revision's first ready copy
    STEPPING = "stepping"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled back"


@dataclass(slots=True)
class Window:
    """One revision's requests over a check's window."""

    requests: int = 0
    failures: int = 0
    latencies: list[float] = field(default_factory=list)

    MAX_SAMPLES = 20_000  # latencies kept per window; beyond it requests are counted, not timed

    def add(self, failed: bool, latency_s: float) -> None:
        self.requests += 1
        self.failures += failed
        if len(self.latencies) < self.MAX_SAMPLES:
            self.latencies.append(latency_s)

    def error_rate(self) -> float:
        """Percent of requests that failed."""
        return 100.0 * self.failures / self.requests if self.requests else 0.0

    def p99(self) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]

    def summary(self) -> dict[str, float | int | None]:
        p99 = self.p99()
        return {"requests": self.requests, "error_rate": round(self.error_rate(), 2),
                "p99_ms": None if p99 is None else round(p99 * 1000, 1)}


@dataclass(frozen=True, slots=True)
class Check:
    """One check of a step's window: passed, failed, or not enough requests to say (``None``)."""

    passed: bool | None
    reason: str


@dataclass(frozen=True, slots=True)
class Event:
    """What a tick changed, for the log, events and metrics."""

    kind: str  # "started", "advanced", "held", "failed-check", "promoted", "rolled-back"
    message: str


def judge(spec: RolloutSpec, new: Window, old: Window) -> Check:
    if new.requests < spec.min_requests:
        return Check(None, f"{new.requests} of {spec.min_requests} requests to the new revision so far")
    new_rate, old_rate = new.error_rate(), old.error_rate()
    if new_rate > old_rate + spec.max_error_rate_increase:
        return Check(False, f"error rate {new_rate:.1f}% against {old_rate:.1f}% for the old revision "
                            f"(allowed: +{spec.max_error_rate_increase:g} points)")
    new_p99, old_p99 = new.p99(), old.p99()
    if new_p99 is not None and old_p99 is not None:
        bound = max(old_p99 * spec.max_latency_ratio, old_p99 + spec.latency_slack_s)
        if new_p99 > bound:
            return Check(False, f"p99 latency {new_p99 * 1000:.0f} ms against {old_p99 * 1000:.0f} ms "
                                f"for the old revision (allowed: x{spec.max_latency_ratio:g}, "
                                f"and +{spec.latency_slack_s * 1000:.0f} ms)")
    return Check(True, f"error rate {new_rate:.1f}% (old {old_rate:.1f}%), "
                       f"p99 {_ms(new_p99)} (old {_ms(old_p99)}) over {new.requests} requests")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


class Rollout:
    """One model's rollout from revision ``old`` to revision ``new``."""

    def __init__(self, model: str, old: str, new: str, spec: RolloutSpec, now: float) -> None:
        self.model, self.old, self.new, self.spec = model, old, new, spec
        self.phase = Phase.WAITING
        self.step = 0
        self.started_at = now
        self.window_started = now
        self.failed_checks = 0
        self.windows = {old: Window(), new: Window()}
        self.last_check: Check | None = None
        self.outcome = ""  # why it was promoted or rolled back

    @property
    def done(self) -> bool:
        return self.phase in (Phase.PROMOTED, Phase.ROLLED_BACK)

    def weight(self) -> int:
        """The new revision's share now, percent (100 once promoted, 0 while waiting or rolled back)."""
        if self.phase is Phase.STEPPING:
            return self.spec.steps[self.step]
        return 100 if self.phase is Phase.PROMOTED else 0

    def observe(self, revision: str, failed: bool, latency_s: float) -> None:
        """A request the gateway measured (ignored outside a step: a window starts with its step)."""
        w = self.windows.get(revision)
        if w is not None and self.phase is Phase.STEPPING:
            w.add(failed, latency_s)

    def _reset(self, now: float) -> None:
        self.window_started = now
        self.windows = {self.old: Window(), self.new: Window()}

    def tick(self, now: float, new_ready: bool) -> Event | None:
        if self.phase is Phase.WAITING:
            if not new_ready:
                return None
            self.phase = Phase.STEPPING
            self._reset(now)
            return Event("started", f"{self.new} is ready: step 1 of {len(self.spec.steps)}, "
                                    f"{self.weight()}% of the traffic")
        if self.phase is not Phase.STEPPING or now - self.window_started < self.spec.interval_s:
            return None
        check = judge(self.spec, self.windows[self.new], self.windows[self.old])
        self.last_check = check
        if check.passed is None:  # not enough requests yet: the window goes on
            return Event("held", f"step {self.step + 1} ({self.weight()}%) waits: {check.reason}")
        self._reset(now)
        if check.passed:
            self.failed_checks = 0
            if self.step + 1 == len(self.spec.steps):
                self.phase = Phase.PROMOTED
                self.outcome = f"promoted after {len(self.spec.steps)} steps; last check: {check.reason}"
                return Event("promoted", f"{self.new} takes all the traffic: {check.reason}")
            self.step += 1
            return Event("advanced", f"step {self.step + 1} of {len(self.spec.steps)}: {self.weight()}% "
                                     f"of the traffic ({check.reason})")
        self.failed_checks += 1
        if self.failed_checks >= self.spec.threshold:
            weight = self.weight()
            self.phase = Phase.ROLLED_BACK
            self.outcome = f"rolled back at {weight}%: {check.reason}"
            return Event("rolled-back", f"{self.old} takes all the traffic again: {check.reason}")
        return Event("failed-check", f"check {self.failed_checks} of {self.spec.threshold} failed at "
                                     f"{self.weight()}%: {check.reason}")

    def saved(self) -> dict[str, Any]:
        """What a new decider needs to carry on (JSON-ready); its window starts again."""
        return {"old": self.old, "new": self.new, "spec": asdict(self.spec), "phase": self.phase.value,
                "step": self.step, "failed_checks": self.failed_checks, "outcome": self.outcome}

    @classmethod
    def from_saved(cls, model: str, d: Mapping[str, Any], now: float) -> Rollout:
        spec = RolloutSpec(**{**d["spec"], "steps": tuple(d["spec"]["steps"])})
        r = cls(model, str(d["old"]), str(d["new"]), spec, now)
        r.phase = Phase(d["phase"])
        r.step = int(d["step"])
        r.failed_checks = int(d["failed_checks"])
        r.outcome = str(d.get("outcome") or "")
        if not 0 <= r.step < len(r.spec.steps) or r.phase is Phase.PROMOTED:
            raise ValueError(f"step {r.step} of {len(r.spec.steps)} in phase {r.phase.value}")
        return r

    def status(self, now: float) -> dict[str, object]:
        out: dict[str, object] = {
            "from": self.old, "to": self.new, "phase": self.phase.value, "weight": self.weight(),
            "step": self.step + 1, "steps": list(self.spec.steps), "failed_checks": self.failed_checks}
        if self.phase is Phase.STEPPING:
            out["window_s"] = round(now - self.window_started, 1)
            out["interval_s"] = self.spec.interval_s
            out["new"] = self.windows[self.new].summary()
            out["old"] = self.windows[self.old].summary()
        if self.last_check is not None:
            out["last_check"] = self.last_check.reason
        if self.outcome:
            out["outcome"] = self.outcome
        return out


def measured_revisions(rollouts: Iterable[Rollout]) -> frozenset[str]:
    """The revisions whose requests the gateway must report: both sides of every rollout stepping
    (and of one about to step)."""
    return frozenset(r for ro in rollouts if not ro.done for r in (ro.old, ro.new))


class Rollouts:
    """Every model's rollout, and the desired models the engine gets while they run.

    A model whose InferenceService asks for a rollout (a :class:`RolloutSpec`) and changes revision
    does not roll at once: the engine gets the new revision as a canary of the rollout's share
    (0 % while it loads), then the promoted revision, or, after a rollback, the old revision as it
    was, until the InferenceService (or its rollout settings) changes again. Other models pass
    through unchanged. The first revision msm sees of a model is its stable one: a rollout in
    progress when the control plane restarts finishes as a plain rolling update.
    """

    def __init__(self) -> None:
        self.active: dict[str, Rollout] = {}
        self.finished: dict[str, Rollout] = {}  # the last one of each model, for status
        self.stable: dict[str, DesiredModel] = {}  # each model's revision before its rollout

    def desired(self, models: Iterable[DesiredModel], specs: Mapping[str, RolloutSpec],
                now: float) -> list[DesiredModel]:
        out = []
        names = set()
        for m in models:
            names.add(m.name)
            spec = specs.get(m.name)
            r = self.active.get(m.name)
            if r is not None and (m.revision != r.new or spec != r.spec):
                del self.active[m.name]  # changed again: that rollout is over, whatever its state
                r = None
            stable = self.stable.get(m.name)
            if r is None and spec is not None and stable is not None and stable.revision != m.revision:
                r = self.active[m.name] = Rollout(m.name, stable.revision, m.revision, spec, now)
            if r is None:
                self.stable[m.name] = m
                out.append(m)
            elif r.phase is Phase.PROMOTED:
                del self.active[m.name]
                self.finished[m.name] = r
                self.stable[m.name] = m
                out.append(replace(m, canary_percent=None))
            elif r.phase is Phase.ROLLED_BACK:
                self.finished[m.name] = r
                out.append(stable if stable is not None else m)
            else:
                out.append(replace(m, canary_percent=r.weight()))
        for table in (self.active, self.finished, self.stable):
            for name in [n for n in table if n not in names]:
                del table[name]
        return out

    def tick(self, now: float, ready: Callable[[str, str], bool]) -> list[tuple[str, Event]]:
        """Advance every rollout; ``ready(model, revision)``: that revision has a ready copy."""
        events = []
        for name, r in sorted(self.active.items()):
            if r.done:
                continue
            event = r.tick(now, ready(name, r.new))
            if event is not None:
                events.append((name, event))
        return events

    def observe(self, revision: str, failed: bool, latency_s: float) -> None:
        for r in self.active.values():
            if revision in (r.old, r.new):
                r.observe(revision, failed, latency_s)

    def measured(self) -> frozenset[str]:
        return measured_revisions(self.active.values())

    def status(self, now: float) -> dict[str, dict[str, object]]:
        out = {name: r.status(now) for name, r in sorted(self.finished.items())}
        out.update({name: r.status(now) for name, r in sorted(self.active.items())})
        return out

    def export(self) -> dict[str, Any]:
        """The state a control plane that takes over needs (JSON-ready): for each model in a
        rollout, or rolled back, its stable revision and the rollout. Models that roll nowhere are
        not in it: their stable revision is what the manifests say."""
        return {name: {"stable": _model_dict(self.stable[name]), "rollout": r.saved()}
                for name, r in sorted(self.active.items()) if name in self.stable}

    def restore(self, state: Mapping[str, Any], now: float) -> list[str]:
        """Carry on from :meth:`export`'s state (before the first :meth:`desired`); a rollout goes
        on from its step with a new window, a rolled-back one keeps serving its stable revision.
        Returns the problems of entries that could not be read (they are skipped)."""
        problems = []
        for name, entry in state.items():
            try:
                stable = _model_of(entry["stable"])
                r = Rollout.from_saved(name, entry["rollout"], now)
            except (KeyError, TypeError, ValueError) as e:
                problems.append(f"rollout of {name}: saved state not usable ({type(e).__name__}: {e})")
                continue
            self.stable[name] = stable
            self.active[name] = r
            if r.phase is Phase.ROLLED_BACK:
                self.finished[name] = r
        return problems


def _model_dict(m: DesiredModel) -> dict[str, Any]:
    return asdict(m)


def _model_of(d: Mapping[str, Any]) -> DesiredModel:
    names = {f.name for f in fields(DesiredModel)}
    values = {k: v for k, v in d.items() if k in names}
    if values.get("storage_stamp") is not None:
        values["storage_stamp"] = tuple(values["storage_stamp"])
    return DesiredModel(**values)
