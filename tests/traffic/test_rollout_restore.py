"""A rollout outlives the process that decides it: export, JSON, restore in a new Rollouts, and
the model goes on from the same step (or stays rolled back) instead of jumping to the new revision."""

from __future__ import annotations

import json

from test_rollout import SPEC, desired, feed

from placement.traffic.rollout import Phase, Rollouts


def roll_to_step_two() -> Rollouts:
    ro = Rollouts()
    ro.desired([desired("m__1", storage_stamp=(5, 7))], {"m": SPEC}, 0.0)
    ro.desired([desired("m__2")], {"m": SPEC}, 1.0)
    ro.tick(2.0, lambda m, r: True)  # started: 5 %
    feed(ro, "m__1", 200)
    feed(ro, "m__2", 30)
    ro.tick(12.0, lambda m, r: True)  # advanced: 25 %
    return ro


def test_a_new_decider_goes_on_from_the_same_step() -> None:
    old = roll_to_step_two()
    state = json.loads(json.dumps(old.export()))  # what the store keeps
    new = Rollouts()
    assert new.restore(state, 100.0) == []
    [m] = new.desired([desired("m__2")], {"m": SPEC}, 100.0)
    assert m.revision == "m__2" and m.canary_percent == 25  # not 100: it still rolls out
    r = new.active["m"]
    assert (r.phase, r.step, r.old) == (Phase.STEPPING, 1, "m__1")
    assert new.stable["m"] == desired("m__1", storage_stamp=(5, 7))  # the old revision, whole
    feed(new, "m__1", 200)
    feed(new, "m__2", 30)
    assert [e.kind for _, e in new.tick(110.0, lambda m, r: True)] == ["advanced"]  # a new window
    assert new.active["m"].weight() == 50


def test_a_rolled_back_model_stays_on_its_old_revision_after_a_restart() -> None:
    ro = roll_to_step_two()
    feed(ro, "m__1", 400)
    feed(ro, "m__2", 40, failed=20)
    assert [e.kind for _, e in ro.tick(22.0, lambda m, r: True)] == ["rolled-back"]
    new = Rollouts()
    assert new.restore(json.loads(json.dumps(ro.export())), 50.0) == []
    assert new.status(50.0)["m"]["phase"] == "rolled back"  # shown before the manifests are read again
    [m] = new.desired([desired("m__2")], {"m": SPEC}, 50.0)
    assert m.revision == "m__1" and m.canary_percent is None  # the old revision, as before the restart
    st = new.status(50.0)["m"]
    assert st["phase"] == "rolled back" and st["outcome"] == ro.status(22.0)["m"]["outcome"]
    assert st["outcome"].startswith("rolled back at 25%: error rate")
    assert new.active["m"].model == "m"
    # a new change of the InferenceService starts over from the stable revision
    [m] = new.desired([desired("m__3")], {"m": SPEC}, 60.0)
    assert (m.revision, m.canary_percent) == ("m__3", 0) and new.active["m"].old == "m__1"


def test_a_changed_manifest_since_the_export_ends_the_restored_rollout() -> None:
    new = Rollouts()
    new.restore(roll_to_step_two().export(), 0.0)
    [m] = new.desired([desired("m__3")], {"m": SPEC}, 0.0)  # changed while no one decided
    assert (m.revision, m.canary_percent) == ("m__3", 0) and new.active["m"].old == "m__1"


def test_a_restored_rollout_whose_settings_went_away_is_over() -> None:
    new = Rollouts()
    new.restore(roll_to_step_two().export(), 0.0)
    assert new.status(0.0)["m"]["phase"] == "stepping"
    assert new.desired([desired("m__2")], {}, 1.0) == [desired("m__2")]  # taken at once, as without a rollout
    assert new.status(1.0) == {} and not new.active and new.stable["m"] == desired("m__2")


def test_models_that_roll_nowhere_are_not_exported_and_bad_entries_are_skipped() -> None:
    ro = Rollouts()
    ro.desired([desired("m__1")], {}, 0.0)
    assert ro.export() == {}
    good = roll_to_step_two().export()
    bad = {"x": {"stable": {"name": "x"}, "rollout": good["m"]["rollout"]},
           "y": {"stable": good["m"]["stable"], "rollout": {**good["m"]["rollout"], "step": 3}},
           "z": {"stable": good["m"]["stable"], "rollout": {**good["m"]["rollout"], "phase": "promoted"}}}
    new = Rollouts()
    problems = new.restore({**bad, **good}, 0.0)
    assert [p.split(":")[0] for p in problems] == ["rollout of x", "rollout of y", "rollout of z"]
    assert list(new.active) == ["m"]
