"""Rolling updates and canaries: routes move only to ready copies; the old revision drains."""

from __future__ import annotations

import dataclasses

from placement_harness import Harness, model


def _serving(h: Harness, copies: int) -> None:
    for i in range(4):
        h.up(f"i{i}")
    h.engine.set_desired([model("m", "v1", min_copies=copies)])
    h.settle()
    assert len(h.ready("m")["m__isvc-v1"]) == copies


def test_rolling_update_sequence(h: Harness) -> None:
    _serving(h, 2)
    h.engine.set_desired([model("m", "v2")])  # new revision, min_copies 0: still as many as v1 has
    loads = h.loads(h.tick())
    assert sorted(r for _, r in loads) == ["m__isvc-v2", "m__isvc-v2"]
    assert h.routed("m") == [("m__isvc-v1", 100)]
    h.succeed(*loads[0])
    assert h.routed("m") == [("m__isvc-v1", 100)]  # one of two ready: not yet
    assert h.ready("m")["m__isvc-v2"] == [loads[0][0]]  # listed (its cluster warms up), not routed
    h.succeed(*loads[1])
    assert h.routed("m") == [("m__isvc-v2", 100)]  # switched once as many copies are ready
    assert len(h.ready("m")["m__isvc-v1"]) == 2  # old copies stay for in-flight requests
    assert h.unloads(h.tick()) == []
    h.clock.advance(10)  # rollout_drain_s
    assert sorted(r for _, r in h.unloads(h.tick())) == ["m__isvc-v1", "m__isvc-v1"]
    assert "m__isvc-v1" not in h.ready("m")
    h.finish_unloads()
    h.tick()
    assert h.engine.model_status("m").revisions.keys() == {"m__isvc-v2"}


def test_rollout_of_model_without_copies_switches_at_once(h: Harness) -> None:
    h.up("i0")
    h.engine.set_desired([model("m", "v1")])
    h.engine.set_desired([model("m", "v2")])
    assert h.routed("m") == [("m__isvc-v2", 100)]
    assert h.tick() == []  # still nothing to load until a request comes


def test_failed_rollout_keeps_old_revision_serving(h: Harness) -> None:
    _serving(h, 1)
    h.engine.set_desired([model("m", "v2")])
    for _ in range(3):
        (load,) = h.loads(h.tick())
        h.fail(*load, error="ModuleNotFoundError: xgboost")
    assert h.tick() == []
    st = h.engine.model_status("m")
    assert st.failed and st.failure == "ModuleNotFoundError: xgboost" and st.ready
    assert h.routed("m") == [("m__isvc-v1", 100)]


def test_rollback_during_rollout_keeps_v1(h: Harness) -> None:
    _serving(h, 1)
    h.engine.set_desired([model("m", "v2")])
    h.tick()
    h.engine.set_desired([model("m", "v1", min_copies=1)])
    assert h.routed("m") == [("m__isvc-v1", 100)]
    h.settle()
    assert h.engine.model_status("m").revisions.keys() == {"m__isvc-v1"}


def test_canary_split_then_promote(h: Harness) -> None:
    _serving(h, 2)
    canary = model("m", "v2", canary_percent=20)
    h.engine.set_desired([canary])
    (load,) = h.loads(h.tick())  # a canary needs one copy
    assert h.routed("m") == [("m__isvc-v1", 100)]  # until it is ready
    h.succeed(*load)
    assert h.routed("m") == [("m__isvc-v1", 80), ("m__isvc-v2", 20)]
    h.clock.advance(60)
    assert h.unloads(h.tick()) == []  # both kept
    h.engine.set_desired([dataclasses.replace(canary, canary_percent=None)])  # promote
    assert h.routed("m") == [("m__isvc-v1", 100)]  # v2 needs as many copies as v1 first
    (load2,) = h.loads(h.tick())
    h.succeed(*load2)
    assert h.routed("m") == [("m__isvc-v2", 100)]


def test_canary_superseded_by_new_revision_drops_the_canary(h: Harness) -> None:
    _serving(h, 1)
    h.engine.set_desired([model("m", "v2", canary_percent=10)])
    h.settle()
    assert h.routed("m") == [("m__isvc-v1", 90), ("m__isvc-v2", 10)]
    h.engine.set_desired([model("m", "v3", canary_percent=10)])
    assert h.routed("m") == [("m__isvc-v1", 100)]  # v1 stays stable, v2 retires
    h.clock.advance(10)
    h.settle()
    assert h.routed("m") == [("m__isvc-v1", 90), ("m__isvc-v3", 10)]
    assert "m__isvc-v2" not in h.engine.model_status("m").revisions


def test_canary_on_first_deploy_routes_everything_to_it(h: Harness) -> None:
    h.up("i0")
    h.engine.set_desired([model("m", "v1", canary_percent=10, min_copies=1)])
    h.settle()
    assert h.routed("m") == [("m__isvc-v1", 100)]


def test_mesh_view_passes_the_translation_checks(h: Harness) -> None:
    from xds_server.mesh_view import check_model

    _serving(h, 2)
    h.engine.set_desired([model("m", "v2", canary_percent=30)])
    h.settle()
    view = h.engine.mesh_view()
    assert all(check_model(m) == [] for m in view.models.values())


def test_a_superseded_canary_drains_before_it_unloads(h: Harness) -> None:
    """Routes leave the old canary at once, but its copies serve the requests already sent there
    for rollout_drain_s before they unload (the gateway may not have applied the new routes yet)."""
    _serving(h, 1)
    h.engine.set_desired([model("m", "v2", canary_percent=10)])
    h.settle()
    (canary_at,) = h.ready("m")["m__isvc-v2"]
    h.engine.set_desired([model("m", "v3", canary_percent=10)])
    assert h.routed("m") == [("m__isvc-v1", 100)]  # no traffic to v2 any more ...
    assert h.ready("m")["m__isvc-v2"] == [canary_at]  # ... but its copy stays listed, and loaded
    drain = h.engine.config.rollout_drain_s
    h.clock.advance(drain - 0.5)
    actions = h.tick()
    assert [r for _, r in h.loads(actions)] == ["m__isvc-v3"] and h.unloads(actions) == []
    assert h.ready("m")["m__isvc-v2"] == [canary_at]
    h.clock.advance(0.5)
    assert h.unloads(h.tick()) == [(canary_at, "m__isvc-v2")]
    assert "m__isvc-v2" not in h.ready("m")
