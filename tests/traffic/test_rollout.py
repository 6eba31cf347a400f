"""Canary rollouts as a state machine: no clock, no processes; time and measurements are handed in."""

from __future__ import annotations

import pytest

from placement.engine.model_types import DesiredModel
from placement.traffic.rollout import Phase, Rollout, Rollouts, RolloutSpec, Window, judge

SPEC = RolloutSpec(steps=(5, 25, 50), interval_s=10.0, min_requests=20)


def feed(r: Rollout | Rollouts, revision: str, n: int, failed: int = 0, latency_s: float = 0.01) -> None:
    for i in range(n):
        r.observe(revision, i < failed, latency_s)


def desired(rev: str, **kw) -> DesiredModel:
    return DesiredModel("m", rev, "rt", "sklearn", f"/m/{rev}", 1000, **kw)


def test_a_healthy_revision_steps_through_and_is_promoted() -> None:
    r = Rollout("m", "m__1", "m__2", SPEC, now=0.0)
    assert r.tick(1.0, new_ready=False) is None and r.weight() == 0  # loading: no traffic yet
    assert r.tick(2.0, new_ready=True).kind == "started" and r.weight() == 5
    weights = []
    now = 2.0
    for _ in range(3):
        feed(r, "m__1", 200)
        feed(r, "m__2", 30)
        assert r.tick(now + 9.9, True) is None  # the window is not over
        now += 10.0
        event = r.tick(now, True)
        weights.append((event.kind, r.weight()))
    assert weights == [("advanced", 25), ("advanced", 50), ("promoted", 100)]
    assert r.phase is Phase.PROMOTED and r.done and "promoted after 3 steps" in r.outcome


def test_errors_roll_back_at_the_step_they_appear() -> None:
    r = Rollout("m", "m__1", "m__2", SPEC, now=0.0)
    r.tick(0.0, True)
    feed(r, "m__1", 400, failed=2)  # 0.5 %
    feed(r, "m__2", 40, failed=8)  # 20 %
    event = r.tick(10.0, True)
    assert event.kind == "rolled-back" and r.phase is Phase.ROLLED_BACK and r.weight() == 0
    assert "error rate 20.0% against 0.5%" in event.message and r.outcome.startswith("rolled back at 5%")


@pytest.mark.parametrize("old_s, new_s, kind", [
    (0.100, 0.160, "rolled-back"),  # x1.6 and 60 ms slower
    (0.100, 0.140, "promoted"),  # within x1.5
    (0.005, 0.010, "promoted"),  # x2, but 5 ms: small windows' noise, not a regression
    (0.005, 0.040, "rolled-back"),  # x8 and 35 ms slower
])
def test_slower_by_more_than_the_ratio_and_the_slack_rolls_back(old_s, new_s, kind) -> None:
    spec = RolloutSpec(steps=(10,), interval_s=1.0, min_requests=10, max_latency_ratio=1.5)
    r = Rollout("m", "a", "b", spec, 0.0)
    r.tick(0.0, True)
    feed(r, "a", 100, latency_s=old_s)
    feed(r, "b", 20, latency_s=new_s)
    assert r.tick(1.0, True).kind == kind
    if kind == "rolled-back":
        assert f"p99 latency {new_s * 1000:.0f} ms against {old_s * 1000:.0f} ms" in r.outcome


def test_too_few_requests_holds_the_step_and_the_window_goes_on() -> None:
    r = Rollout("m", "m__1", "m__2", SPEC, now=0.0)
    r.tick(0.0, True)
    feed(r, "m__2", 5)
    event = r.tick(10.0, True)
    assert event.kind == "held" and "5 of 20 requests" in event.message and r.weight() == 5
    feed(r, "m__2", 15)  # the same window: 20 now
    assert r.tick(10.5, True).kind == "advanced"


def test_a_threshold_of_two_tolerates_one_failed_check() -> None:
    spec = RolloutSpec(steps=(5, 50), interval_s=1.0, min_requests=10, threshold=2)
    r = Rollout("m", "a", "b", spec, 0.0)
    r.tick(0.0, True)
    feed(r, "b", 10, failed=5)
    assert r.tick(1.0, True).kind == "failed-check" and r.weight() == 5  # the step is tried again
    feed(r, "b", 10)
    assert r.tick(2.0, True).kind == "advanced" and r.failed_checks == 0
    feed(r, "b", 10, failed=5)
    r.tick(3.0, True)
    feed(r, "b", 10, failed=5)
    assert r.tick(4.0, True).kind == "rolled-back"


def test_measurements_outside_a_step_do_not_count() -> None:
    r = Rollout("m", "a", "b", SPEC, 0.0)
    feed(r, "b", 100, failed=100)  # while loading: no window yet
    r.tick(1.0, True)
    feed(r, "b", 20)
    assert r.tick(11.0, True).kind == "advanced"


@pytest.mark.parametrize("spec, says", [
    (RolloutSpec(steps=()), "increasing percentages"),
    (RolloutSpec(steps=(50, 25)), "increasing percentages"),
    (RolloutSpec(steps=(5, 100)), "1 to 99"),
    (RolloutSpec(steps=(5,), interval_s=0), "interval"),
    (RolloutSpec(steps=(5,), max_latency_ratio=0.5), "latency ratio"),
    (RolloutSpec(steps=(5,), threshold=0), "threshold"),
])
def test_bad_specs_are_said(spec, says) -> None:
    assert any(says in p for p in spec.problems())


def test_the_judgement_compares_against_the_old_revision_over_the_same_window() -> None:
    old, new = Window(), Window()
    for i in range(100):
        old.add(i < 10, 0.01)  # the old revision fails 10 % too: the new one is no worse
    for i in range(20):
        new.add(i < 2, 0.01)
    assert judge(RolloutSpec(steps=(5,)), new, old).passed is True
    assert new.summary() == {"requests": 20, "error_rate": 10.0, "p99_ms": 10.0}


def test_the_engine_gets_the_canary_share_then_the_promoted_or_the_old_revision() -> None:
    ro = Rollouts()
    specs = {"m": SPEC}
    assert ro.desired([desired("m__1")], specs, 0.0) == [desired("m__1")]  # the first revision: stable
    (d,) = ro.desired([desired("m__2")], specs, 1.0)
    assert (d.revision, d.canary_percent) == ("m__2", 0)  # loads, takes nothing yet
    assert ro.measured() == {"m__1", "m__2"}
    assert [e.kind for _, e in ro.tick(2.0, lambda m, rev: True)] == ["started"]
    (d,) = ro.desired([desired("m__2")], specs, 2.0)
    assert d.canary_percent == 5
    feed(ro, "m__1", 100)
    feed(ro, "m__2", 20, failed=20)
    assert [e.kind for _, e in ro.tick(12.0, lambda m, rev: True)] == ["rolled-back"]
    (d,) = ro.desired([desired("m__2")], specs, 12.0)
    assert d == desired("m__1")  # the old revision as it was: it is still loaded
    assert ro.measured() == frozenset()
    assert ro.status(12.0)["m"]["phase"] == "rolled back"
    # the same revision stays rolled back; new rollout settings try it again
    assert ro.desired([desired("m__2")], specs, 13.0) == [desired("m__1")]
    (d,) = ro.desired([desired("m__2")], {"m": RolloutSpec(steps=(10,), interval_s=1.0)}, 14.0)
    assert (d.revision, d.canary_percent) == ("m__2", 0)


def test_a_promoted_revision_becomes_the_stable_one() -> None:
    ro = Rollouts()
    spec = RolloutSpec(steps=(50,), interval_s=1.0, min_requests=1)
    ro.desired([desired("m__1")], {"m": spec}, 0.0)
    ro.desired([desired("m__2")], {"m": spec}, 0.0)
    ro.tick(0.0, lambda m, rev: True)
    feed(ro, "m__2", 5)
    assert [e.kind for _, e in ro.tick(1.0, lambda m, rev: True)] == ["promoted"]
    assert ro.desired([desired("m__2")], {"m": spec}, 1.0) == [desired("m__2")]
    assert ro.stable["m"].revision == "m__2" and not ro.active
    # without a rollout spec a change rolls as before, at once
    assert ro.desired([desired("m__3")], {}, 2.0) == [desired("m__3")]


def test_a_model_that_goes_away_takes_its_rollout_with_it() -> None:
    ro = Rollouts()
    ro.desired([desired("m__1")], {"m": SPEC}, 0.0)
    ro.desired([desired("m__2")], {"m": SPEC}, 0.0)
    assert ro.active
    assert ro.desired([], {}, 1.0) == []
    assert not ro.active and not ro.stable and ro.status(1.0) == {}


def test_p99_is_the_nearest_rank_of_the_window() -> None:
    w = Window()
    assert w.p99() is None
    w.add(False, 0.5)
    assert w.p99() == 0.5  # one request: itself
    w.add(False, 0.1)
    assert w.p99() == 0.5  # two: the slower
    hundred = Window()
    for i in range(1, 101):
        hundred.add(False, i / 1000)
    assert hundred.p99() == pytest.approx(0.099)
    assert Window().error_rate() == 0.0


def test_exactly_at_a_bound_passes() -> None:
    spec = RolloutSpec(steps=(5,), min_requests=100, max_error_rate_increase=1.0, max_latency_ratio=2.0,
                       latency_slack_s=0.010)
    old, new = Window(), Window()
    for _ in range(100):
        old.add(False, 0.040)
    for i in range(100):
        new.add(i < 1, 0.080)  # 1 % errors (0 + 1 point), p99 80 ms (x2 of 40 ms)
    assert judge(spec, new, old).passed is True
    new.add(True, 0.080)  # 101 requests, 2 failed: 1.98 %
    assert judge(spec, new, old).passed is False


def test_every_rollout_ticks_and_each_is_asked_about_its_own_revision() -> None:
    ro = Rollouts()
    specs = {"a": RolloutSpec(steps=(10,), interval_s=1.0, min_requests=1),
             "b": RolloutSpec(steps=(10,), interval_s=1.0, min_requests=1)}
    a1, b1 = (DesiredModel(n, f"{n}__1", "rt", "sklearn", f"/{n}1", 1000) for n in "ab")
    a2, b2 = (DesiredModel(n, f"{n}__2", "rt", "sklearn", f"/{n}2", 1000) for n in "ab")
    ro.desired([a1, b1], specs, 0.0)
    ro.desired([a2, b2], specs, 0.0)
    asked = []
    ro.tick(0.0, lambda model, rev: asked.append((model, rev)) or True)
    assert asked == [("a", "a__2"), ("b", "b__2")]
    ro.observe("a__2", True, 0.01)  # a fails its check and is done; b must still be judged
    ro.observe("b__2", False, 0.01)
    events = ro.tick(1.0, lambda model, rev: True)
    assert [(m, e.kind) for m, e in events] == [("a", "rolled-back"), ("b", "promoted")]
    assert [d.revision for d in ro.desired([a2, b2], specs, 1.0)] == ["a__1", "b__2"]
    st = ro.status(1.0)
    assert (st["a"]["phase"], st["b"]["phase"]) == ("rolled back", "promoted")
