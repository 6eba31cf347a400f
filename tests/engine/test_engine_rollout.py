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


def test_a_100_percent_canary_is_a_plain_rollout(h: Harness) -> None:
    _serving(h, 1)
    h.engine.set_desired([model("m", "v2", canary_percent=100)])
    h.settle()
    assert h.routed("m") == [("m__isvc-v2", 100)]
    st = h.engine.model_status("m")
    assert (st.active_revision, st.target_revision) == ("m__isvc-v2", "m__isvc-v2")
    h.clock.advance(h.engine.config.rollout_drain_s)
    h.settle()
    assert "m__isvc-v1" not in h.ready("m")


def test_a_99_percent_canary_counts_and_revives_its_one_percent_stable_revision(h: Harness) -> None:
    for i in range(3):
        h.up(f"i{i}", capacity_mb=100)  # one copy each: the revisions are on different instances
    h.engine.set_desired([model("m", "v1", min_copies=1)])
    h.settle()
    h.engine.set_desired([model("m", "v2", min_copies=1, canary_percent=99)])
    h.settle()
    (v1_on,) = h.ready("m")["m__isvc-v1"]
    (v2_on,) = h.ready("m")["m__isvc-v2"]
    assert h.routed("m") == [("m__isvc-v2", 99), ("m__isvc-v1", 1)]
    assert h.engine.model_status("m").ready_copies == 2
    assert h.engine.routable_copies("m") == [("m__isvc-v2", v2_on, 99), ("m__isvc-v1", v1_on, 1)]
    h.engine.instance_down(v1_on)  # the stable revision, with its 1 %, loses its copy
    h.engine.request_for_cold_model("m")  # a request routed to it waits
    actions = h.tick()
    assert [(a.revision, a.urgent) for a in actions] == [("m__isvc-v1", True)]


def test_a_rollout_waits_for_the_new_revisions_min_copies(h: Harness) -> None:
    _serving(h, 1)
    h.engine.set_desired([model("m", "v2", min_copies=2)])
    loads = h.loads(h.tick())
    assert len(loads) == 2
    h.succeed(*loads[0])
    assert h.routed("m") == [("m__isvc-v1", 100)]  # one ready, two wanted
    h.succeed(*loads[1])
    assert h.routed("m") == [("m__isvc-v2", 100)]
    assert h.engine.model_status("m").active_revision == "m__isvc-v2"


def test_a_rollout_needs_no_more_copies_than_instances_it_may_still_use() -> None:
    h = Harness()
    h.up("i0")
    h.up("i1")
    h.engine.set_desired([model("m", "v1", min_copies=2)])
    h.settle()
    h.engine.set_desired([model("m", "v2")])  # two copies wanted, like v1
    loads = sorted(h.loads(h.tick()))
    assert loads == [("i0", "m__isvc-v2"), ("i1", "m__isvc-v2")]
    h.fail(*loads[0])  # i0 cannot load it: one instance is left to try
    h.succeed(*loads[1])
    assert h.routed("m") == [("m__isvc-v2", 100)]


def test_a_retry_on_an_instance_exactly_as_large_as_the_model() -> None:
    h = Harness()
    h.up("exact", capacity_mb=100)
    h.up("big", capacity_mb=1000)
    h.engine.set_desired([model("m")])
    h.engine.request_for_cold_model("m")
    assert h.loads(h.tick()) == [("big", "m__isvc-a")]  # more room
    h.fail("big", "m__isvc-a")
    assert not h.engine.model_status("m").failed
    assert h.loads(h.tick()) == [("exact", "m__isvc-a")]


def test_a_rollout_never_evicts_its_own_serving_revision() -> None:
    h = Harness()
    h.up("i0", capacity_mb=100)  # room for one copy
    h.engine.set_desired([model("m", "v1")])
    h.engine.request_for_cold_model("m")
    h.settle()
    h.clock.advance(60)
    h.engine.set_desired([model("m", "v2")])
    assert h.tick() == []  # v2 waits for room rather than take v1's
    assert h.routed("m") == [("m__isvc-v1", 100)] and h.ready("m")["m__isvc-v1"] == ["i0"]


def test_a_rollout_evicts_other_models_copies_for_its_new_revision() -> None:
    h = Harness()
    h.up("i0", capacity_mb=200)
    h.engine.set_desired([model("m", "v1"), model("other")])
    for n in ("m", "other"):
        h.engine.request_for_cold_model(n)
        h.settle()
    h.clock.advance(60)
    h.engine.record_requests("other", 1)  # used after m: LRU alone would keep it
    h.engine.set_desired([model("m", "v2"), model("other")])
    actions = h.tick()
    assert h.unloads(actions) == [("i0", "other__isvc-a")]
    h.settle()
    assert h.routed("m") == [("m__isvc-v2", 100)]


def test_warming_revisions_are_listed_target_first_after_the_routed_ones() -> None:
    h = Harness()
    for i in range(6):
        h.up(f"i{i}")
    h.engine.set_desired([model("m", "v1", min_copies=2)])
    h.settle()
    h.engine.set_desired([model("m", "v3")])  # wants two copies before it takes over
    first = h.loads(h.tick())[0]
    h.succeed(*first)
    h.loading.clear()
    h.engine.set_desired([model("m", "v2")])  # superseded: v3 drains with its one ready copy
    second = h.loads(h.tick())[0]
    h.succeed(*second)
    view = h.engine.mesh_view().models["m"]
    assert [r.id for r in view.revisions] == ["m__isvc-v1", "m__isvc-v2", "m__isvc-v3"]
    assert [r.runtime for r in view.revisions] == ["rt", "rt", "rt"]
    h.engine.set_desired([model("m", "v4")])
    third = h.loads(h.tick())[0]
    h.succeed(*third)
    view = h.engine.mesh_view().models["m"]  # v4 before v2 and v3, which drain
    assert [r.id for r in view.revisions] == ["m__isvc-v1", "m__isvc-v4", "m__isvc-v2", "m__isvc-v3"]


def test_a_revision_revived_by_a_rollback_is_placed_again_when_its_copy_is_lost() -> None:
    h = Harness()
    h.up("i0")
    h.up("i1")
    h.engine.set_desired([model("m", "v1", min_copies=1)])
    h.settle()
    h.engine.set_desired([model("m", "v2", min_copies=1)])
    h.settle()  # v2 ready and routed: v1 drains
    h.engine.set_desired([model("m", "v1", min_copies=1)])  # rolled back within the drain
    h.settle()
    (v1_on,) = h.ready("m")["m__isvc-v1"]
    h.engine.instance_down(v1_on)
    h.settle()
    assert len(h.ready("m")["m__isvc-v1"]) == 1 and h.routed("m") == [("m__isvc-v1", 100)]


def test_a_request_during_a_rollout_whose_new_revision_failed_once() -> None:
    h = Harness()
    h.up("i0")
    h.up("i1")
    h.engine.set_desired([model("m", "v1", min_copies=1)])
    h.settle()
    h.engine.set_desired([model("m", "v2")])
    (load,) = h.loads(h.tick())
    h.fail(*load)
    h.engine.request_for_cold_model("m")  # v1 serves it: nothing to load for the request
    assert h.routed("m") == [("m__isvc-v1", 100)]
    assert [a.urgent for a in h.tick()] == [False]  # v2 tried again elsewhere, not urgently
