"""What a user reads of a rollout, in full: the rollout settings' refusals (the InferenceService's
errors), each check's verdict, and ``Rollout.status`` (``msm status``, the InferenceService's
condition): every field, in every phase, word for word."""

from __future__ import annotations

import pytest
from test_rollout import SPEC, desired, feed

from placement.engine.model_types import DesiredModel
from placement.traffic.rollout import (
    Phase,
    Rollout,
    Rollouts,
    RolloutSpec,
    Window,
    judge,
    measured_revisions,
)

STEPS = "steps must be increasing percentages from 1 to 99 (promotion follows the last)"
INTERVAL = "the interval must be positive"
MIN_REQUESTS = "min requests must be at least 1"
ERROR_RATE = "the error rate increase is percentage points, 0 to 100"
RATIO = "the latency ratio must be at least 1"
THRESHOLD = "the threshold of failed checks must be at least 1"


@pytest.mark.parametrize(("spec", "expected"), [
    (RolloutSpec(steps=()), [STEPS]),
    (RolloutSpec(steps=(0, 50)), [STEPS]),
    (RolloutSpec(steps=(50, 100)), [STEPS]),
    (RolloutSpec(steps=(50, 25)), [STEPS]),
    (RolloutSpec(steps=(25, 25)), [STEPS]),
    (RolloutSpec(steps=(5,), interval_s=0.0), [INTERVAL]),
    (RolloutSpec(steps=(5,), interval_s=-1.0), [INTERVAL]),
    (RolloutSpec(steps=(5,), min_requests=0), [MIN_REQUESTS]),
    (RolloutSpec(steps=(5,), max_error_rate_increase=-0.5), [ERROR_RATE]),
    (RolloutSpec(steps=(5,), max_error_rate_increase=100.5), [ERROR_RATE]),
    (RolloutSpec(steps=(5,), max_latency_ratio=0.99), [RATIO]),
    (RolloutSpec(steps=(5,), threshold=0), [THRESHOLD]),
    (RolloutSpec(steps=(100,), interval_s=0.0, min_requests=0, max_error_rate_increase=101.0,
                 max_latency_ratio=0.5, threshold=0),
     [STEPS, INTERVAL, MIN_REQUESTS, ERROR_RATE, RATIO, THRESHOLD]),
])
def test_each_bad_setting_is_said(spec: RolloutSpec, expected: list[str]) -> None:
    assert spec.problems() == expected


def test_settings_at_their_bounds_are_accepted() -> None:
    assert RolloutSpec(steps=(1, 99), interval_s=0.001, min_requests=1, max_error_rate_increase=0.0,
                       max_latency_ratio=1.0, threshold=1).problems() == []
    assert RolloutSpec(steps=(50,), max_error_rate_increase=100.0).problems() == []


def test_the_defaults_are_flaggers() -> None:
    spec = RolloutSpec(steps=(10,))
    assert (spec.interval_s, spec.min_requests, spec.max_error_rate_increase, spec.max_latency_ratio,
            spec.latency_slack_s, spec.threshold) == (30.0, 20, 1.0, 1.5, 0.025, 1)


def window(n: int, failed: int = 0, latency_s: float = 0.01) -> Window:
    w = Window()
    for i in range(n):
        w.add(i < failed, latency_s)
    return w


@pytest.mark.parametrize(("new", "old", "passed", "reason"), [
    (window(19), window(100), None, "19 of 20 requests to the new revision so far"),
    (window(40, failed=8), window(400, failed=2), False,
     "error rate 20.0% against 0.5% for the old revision (allowed: +1 points)"),
    (window(20, latency_s=0.160), window(100, latency_s=0.100), False,
     "p99 latency 160 ms against 100 ms for the old revision (allowed: x1.5, and +25 ms)"),
    (window(20, failed=1, latency_s=0.0123), window(100, failed=5, latency_s=0.011), True,
     "error rate 5.0% (old 5.0%), p99 12 ms (old 11 ms) over 20 requests"),
    # the old revision had no request in the window: nothing to compare the latency with
    (window(20), Window(), True, "error rate 0.0% (old 0.0%), p99 10 ms (old -) over 20 requests"),
])
def test_each_verdict_and_its_reason(new: Window, old: Window, passed: bool | None, reason: str) -> None:
    check = judge(SPEC, new, old)
    assert (check.passed, check.reason) == (passed, reason)


def test_the_error_rate_allowance_is_said_as_set() -> None:
    spec = RolloutSpec(steps=(5,), min_requests=1, max_error_rate_increase=2.5, max_latency_ratio=3.0,
                       latency_slack_s=0.1)
    assert judge(spec, window(10, failed=5), window(10)).reason == \
        "error rate 50.0% against 0.0% for the old revision (allowed: +2.5 points)"
    assert judge(spec, window(10, latency_s=1.0), window(10, latency_s=0.2)).reason == \
        "p99 latency 1000 ms against 200 ms for the old revision (allowed: x3, and +100 ms)"
    slow = RolloutSpec(steps=(5,), min_requests=1, max_latency_ratio=2.0, latency_slack_s=1.0)
    assert judge(slow, window(10, latency_s=3.0), window(10, latency_s=1.0)).reason == \
        "p99 latency 3000 ms against 1000 ms for the old revision (allowed: x2, and +1000 ms)"
    assert judge(slow, window(10, latency_s=2.0), window(10, latency_s=1.0)).reason == \
        "error rate 0.0% (old 0.0%), p99 2000 ms (old 1000 ms) over 10 requests"


def test_the_latency_bound_is_the_larger_of_the_ratio_and_the_slack() -> None:
    spec = RolloutSpec(steps=(5,), min_requests=1, max_latency_ratio=2.0, latency_slack_s=0.050)
    # 100 ms old: the ratio's bound (200 ms) is the larger
    assert judge(spec, window(5, latency_s=0.200), window(5, latency_s=0.100)).passed is True
    assert judge(spec, window(5, latency_s=0.201), window(5, latency_s=0.100)).passed is False
    # 10 ms old: the slack's bound (60 ms) is the larger
    assert judge(spec, window(5, latency_s=0.060), window(5, latency_s=0.010)).passed is True
    assert judge(spec, window(5, latency_s=0.061), window(5, latency_s=0.010)).passed is False


def test_a_window_keeps_a_bounded_number_of_latencies_and_counts_every_request() -> None:
    w = Window()
    for i in range(Window.MAX_SAMPLES + 5):
        w.add(i % 2 == 0, 1.0 if i >= Window.MAX_SAMPLES else 0.001)
    assert Window.MAX_SAMPLES == 20_000
    assert (w.requests, w.failures, len(w.latencies)) == (20_005, 10_003, 20_000)
    assert w.p99() == 0.001  # the requests past the bound were counted, not timed


def test_a_windows_summary_is_rounded_for_people() -> None:
    w = window(3, failed=1, latency_s=0.01234)
    assert w.summary() == {"requests": 3, "error_rate": 33.33, "p99_ms": 12.3}
    assert Window().summary() == {"requests": 0, "error_rate": 0.0, "p99_ms": None}


def stepping(spec: RolloutSpec = SPEC) -> Rollout:
    r = Rollout("m", "m__1", "m__2", spec, 0.0)
    r.tick(2.0, new_ready=True)
    return r


def test_status_while_waiting_for_the_new_revision() -> None:
    r = Rollout("m", "m__1", "m__2", SPEC, 0.0)
    assert r.tick(5.0, new_ready=False) is None
    assert r.status(5.0) == {"from": "m__1", "to": "m__2", "phase": "waiting", "weight": 0, "step": 1,
                             "steps": [5, 25, 50], "failed_checks": 0}


def test_status_of_a_step_and_its_window() -> None:
    r = stepping()
    feed(r, "m__1", 100, failed=1, latency_s=0.02)
    feed(r, "m__2", 7, latency_s=0.03)
    assert r.tick(12.0, True).kind == "held"
    assert r.status(12.46) == {
        "from": "m__1", "to": "m__2", "phase": "stepping", "weight": 5, "step": 1, "steps": [5, 25, 50],
        "failed_checks": 0, "window_s": 10.5, "interval_s": 10.0,
        "new": {"requests": 7, "error_rate": 0.0, "p99_ms": 30.0},
        "old": {"requests": 100, "error_rate": 1.0, "p99_ms": 20.0},
        "last_check": "7 of 20 requests to the new revision so far"}


def test_a_passed_check_starts_the_next_steps_window() -> None:
    r = stepping()
    feed(r, "m__1", 100)
    feed(r, "m__2", 20)
    assert r.tick(12.0, True).kind == "advanced"
    st = r.status(13.0)
    assert (st["weight"], st["step"], st["window_s"]) == (25, 2, 1.0)
    assert st["new"] == st["old"] == {"requests": 0, "error_rate": 0.0, "p99_ms": None}
    assert st["last_check"] == "error rate 0.0% (old 0.0%), p99 10 ms (old 10 ms) over 20 requests"
    assert "outcome" not in st
    assert r.tick(21.9, True) is None  # the new window is 10 s from the check, not from the start
    assert r.tick(22.0, True).kind == "held"


def test_a_failed_check_below_the_threshold_tries_the_step_again_in_a_new_window() -> None:
    r = stepping(RolloutSpec(steps=(5, 50), interval_s=10.0, min_requests=10, threshold=3))
    feed(r, "m__2", 10, failed=10)
    assert r.tick(12.0, True).kind == "failed-check"
    feed(r, "m__2", 10, failed=10)
    assert r.tick(22.0, True).kind == "failed-check"
    st = r.status(22.0)
    assert (st["phase"], st["weight"], st["step"], st["failed_checks"], st["window_s"]) == \
        ("stepping", 5, 1, 2, 0.0)
    assert st["new"] == {"requests": 0, "error_rate": 0.0, "p99_ms": None}
    assert st["last_check"] == "error rate 100.0% against 0.0% for the old revision (allowed: +1 points)"
    feed(r, "m__2", 10, failed=10)
    assert r.tick(32.0, True).kind == "rolled-back"
    assert r.outcome == ("rolled back at 5%: error rate 100.0% against 0.0% for the old revision "
                         "(allowed: +1 points)")


def test_status_once_promoted() -> None:
    r = stepping(RolloutSpec(steps=(5, 50), interval_s=10.0, min_requests=1))
    for now in (12.0, 22.0):
        feed(r, "m__1", 10)
        feed(r, "m__2", 10)
        r.tick(now, True)
    reason = "error rate 0.0% (old 0.0%), p99 10 ms (old 10 ms) over 10 requests"
    assert r.status(30.0) == {
        "from": "m__1", "to": "m__2", "phase": "promoted", "weight": 100, "step": 2, "steps": [5, 50],
        "failed_checks": 0, "last_check": reason, "outcome": f"promoted after 2 steps; last check: {reason}"}


def test_status_once_rolled_back() -> None:
    r = stepping()
    feed(r, "m__1", 100)
    feed(r, "m__2", 20, latency_s=0.5)
    assert r.tick(12.0, True).kind == "rolled-back"
    reason = "p99 latency 500 ms against 10 ms for the old revision (allowed: x1.5, and +25 ms)"
    assert r.status(20.0) == {
        "from": "m__1", "to": "m__2", "phase": "rolled back", "weight": 0, "step": 1, "steps": [5, 25, 50],
        "failed_checks": 1, "last_check": reason, "outcome": f"rolled back at 5%: {reason}"}
    assert r.tick(100.0, True) is None and r.done  # over: no more checks


def test_measurements_count_for_their_own_revision_only() -> None:
    r = stepping()
    r.observe("m__3", True, 1.0)  # another revision of the model, not in this rollout
    r.observe("m__2", True, 0.5)
    r.observe("m__1", False, 0.25)
    new, old = r.windows["m__2"], r.windows["m__1"]
    assert (new.requests, new.failures, new.latencies) == (1, 1, [0.5])
    assert (old.requests, old.failures, old.latencies) == (1, 0, [0.25])
    assert set(r.windows) == {"m__1", "m__2"}


def test_the_revisions_measured_are_both_sides_of_the_rollouts_not_over() -> None:
    waiting = Rollout("a", "a__1", "a__2", SPEC, 0.0)
    going = stepping()
    over = stepping()
    over.phase = Phase.PROMOTED
    assert measured_revisions([waiting, going, over]) == {"a__1", "a__2", "m__1", "m__2"}
    assert measured_revisions([]) == frozenset()


def test_observations_reach_the_rollouts_of_their_revision_only() -> None:
    ro = Rollouts()
    ro.desired([desired("m__1")], {"m": SPEC}, 0.0)
    ro.desired([desired("m__2")], {"m": SPEC}, 0.0)
    ro.tick(1.0, lambda m, rev: True)
    ro.observe("other__1", True, 1.0)
    ro.observe("m__2", False, 0.1)
    r = ro.active["m"]
    assert r.windows["m__2"].requests == 1 and r.windows["m__1"].requests == 0


def test_status_lists_finished_and_active_rollouts_by_model() -> None:
    ro = Rollouts()
    spec = RolloutSpec(steps=(50,), interval_s=1.0, min_requests=1)
    models = [desired("m__1"), DesiredModel("k", "k__1", "rt", "sklearn", "/k", 1000)]
    ro.desired(models, {"m": spec, "k": spec}, 0.0)
    new = [desired("m__2"), DesiredModel("k", "k__2", "rt", "sklearn", "/k2", 1000)]
    ro.desired(new, {"m": spec, "k": spec}, 0.0)
    assert ro.active["k"].model == "k" and ro.active["m"].model == "m"
    ro.tick(0.0, lambda m, rev: m == "k")  # only k's new revision is ready
    feed(ro, "k__2", 1, failed=1)
    assert [(m, e.kind) for m, e in ro.tick(1.0, lambda m, rev: m == "k")] == [("k", "rolled-back")]
    ro.desired(new, {"m": spec, "k": spec}, 1.0)
    # a rolled-back rollout is over: later ticks leave it alone, and still tick the others after it
    assert [(m, e.kind) for m, e in ro.tick(2.0, lambda m, rev: True)] == [("m", "started")]
    st = ro.status(2.0)
    assert (set(st), st["m"]["phase"], st["k"]["phase"]) == ({"m", "k"}, "stepping", "rolled back")
    assert ro.measured() == {"m__1", "m__2"}


def test_status_shows_a_models_new_rollout_over_its_finished_one() -> None:
    ro = Rollouts()
    spec = RolloutSpec(steps=(50,), interval_s=1.0, min_requests=1)
    ro.desired([desired("m__1")], {"m": spec}, 0.0)
    ro.desired([desired("m__2")], {"m": spec}, 0.0)
    ro.tick(0.0, lambda m, rev: True)
    feed(ro, "m__2", 1)
    assert [e.kind for _, e in ro.tick(1.0, lambda m, rev: True)] == ["promoted"]
    ro.desired([desired("m__2")], {"m": spec}, 1.0)
    assert ro.status(1.0)["m"]["phase"] == "promoted" and "m" in ro.finished
    ro.desired([desired("m__3")], {"m": spec}, 2.0)
    st = ro.status(2.0)["m"]
    assert (st["phase"], st["from"], st["to"]) == ("waiting", "m__2", "m__3")


def test_the_rollout_ends_when_its_settings_change() -> None:
    ro = Rollouts()
    ro.desired([desired("m__1")], {"m": SPEC}, 0.0)
    ro.desired([desired("m__2")], {"m": SPEC}, 0.0)
    ro.tick(1.0, lambda m, rev: True)
    assert ro.desired([desired("m__2")], {"m": SPEC}, 1.0)[0].canary_percent == 5
    other = RolloutSpec(steps=(20, 40))
    (d,) = ro.desired([desired("m__2")], {"m": other}, 2.0)
    assert d.canary_percent == 0 and ro.active["m"].spec == other and ro.active["m"].phase is Phase.WAITING
    # no settings any more: the revision is taken at once and becomes the stable one
    assert ro.desired([desired("m__2")], {}, 3.0) == [desired("m__2")]
    assert not ro.active and ro.stable["m"] == desired("m__2")


def test_a_saved_rollout_that_cannot_go_on_is_refused() -> None:
    """(Why is only logged: the control plane carries on without that rollout.)"""
    saved = stepping().saved()
    assert saved == {"old": "m__1", "new": "m__2", "spec": {
        "steps": (5, 25, 50), "interval_s": 10.0, "min_requests": 20, "max_error_rate_increase": 1.0,
        "max_latency_ratio": 1.5, "latency_slack_s": 0.025, "threshold": 1},
        "phase": "stepping", "step": 0, "failed_checks": 0, "outcome": ""}
    with pytest.raises(ValueError):
        Rollout.from_saved("m", {**saved, "step": 3}, 0.0)
    with pytest.raises(ValueError):
        Rollout.from_saved("m", {**saved, "step": -1}, 0.0)
    with pytest.raises(ValueError):
        Rollout.from_saved("m", {**saved, "phase": "promoted"}, 0.0)
    last = Rollout.from_saved("m", {**saved, "step": 2, "failed_checks": 1, "outcome": None}, 7.0)
    assert (last.step, last.weight(), last.failed_checks, last.outcome) == (2, 50, 1, "")
    assert (last.model, last.started_at, last.phase) == ("m", 7.0, Phase.STEPPING)


def test_every_event_says_what_happened_and_why() -> None:
    """Events go to the log and, by kind, to metrics: each carries a message, with the check's
    reason when a check decided it (the wording itself is for people and not pinned here)."""
    r = Rollout("m", "m__1", "m__2", RolloutSpec(steps=(5, 50), interval_s=1.0, min_requests=2, threshold=2),
                0.0)
    started = r.tick(0.0, True)
    assert started is not None and isinstance(started.message, str) and "m__2" in started.message
    seen = []
    for now, ok, failed in ((1.0, 1, 0), (2.0, 2, 0), (3.0, 2, 2), (4.0, 2, 0)):
        feed(r, "m__2", ok, failed=failed)
        event = r.tick(now, True)
        assert event is not None and r.last_check is not None
        assert isinstance(event.message, str) and r.last_check.reason in event.message
        seen.append(event.kind)
    assert seen == ["held", "advanced", "failed-check", "promoted"]


def test_a_promoted_revision_reaches_the_engine_without_a_canary_share() -> None:
    ro = Rollouts()
    spec = RolloutSpec(steps=(50,), interval_s=1.0, min_requests=1)
    ro.desired([desired("m__1")], {"m": spec}, 0.0)
    ro.desired([desired("m__2", canary_percent=30)], {"m": spec}, 0.0)
    ro.tick(0.0, lambda m, rev: True)
    feed(ro, "m__2", 1)
    ro.tick(1.0, lambda m, rev: True)
    assert ro.desired([desired("m__2", canary_percent=30)], {"m": spec}, 1.0) == [desired("m__2")]

