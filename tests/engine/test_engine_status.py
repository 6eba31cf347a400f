"""What ``msm status`` shows of the engine: every field of ``Engine.status()``, in one state that
has a ready, a loading and a failed model, a measured size, two runtimes and an idle instance."""

from __future__ import annotations

from placement_harness import MB, Harness, model

from placement.engine.model_types import EngineConfig, InstanceInfo, ModelStatus
from xds_server.mesh_view import ActivatorEndpoint, Copy


def test_status_reports_models_instances_and_counters_field_for_field() -> None:
    h = Harness(EngineConfig(rate_window_s=70.0))  # 30 requests in the window: 25.714… a minute
    h.up("i0", capacity_mb=260)
    h.up("i1", capacity_mb=150, runtime="rt2")
    h.engine.set_desired([model("0old", size_mb=10)])
    h.engine.request_for_cold_model("0old")
    assert h.loads(h.tick()) == [("i0", "0old__isvc-a")]
    h.succeed("i0", "0old__isvc-a", 10 * MB)
    # 0old is removed (its copy is still being unloaded when status is asked: no longer a model)
    h.engine.set_desired([model("a"), model("b", canary_percent=25), model("x", runtime="rt2")])
    assert h.unloads(h.tick()) == [("i0", "0old__isvc-a")]
    h.engine.request_for_cold_model("a")
    assert h.loads(h.tick()) == [("i0", "a__isvc-a")]
    h.succeed("i0", "a__isvc-a", 120 * MB)  # the runtime measured more than the 100 MB estimate
    h.clock.advance(5)
    h.engine.record_requests("a", 30, "i0")
    h.clock.advance(2)
    h.engine.request_for_cold_model("x")
    assert h.loads(h.tick()) == [("i1", "x__isvc-a")]
    h.fail("i1", "x__isvc-a", "boom")  # its runtime's only instance: failed, nowhere else to try
    h.clock.advance(2)
    h.engine.request_for_cold_model("b")
    assert h.loads(h.tick()) == [("i0", "b__isvc-a")]  # 130 MB left on i0 (0old's 10 MB drain beside)
    h.clock.advance(12.37)  # now = 21.37 s

    assert h.engine.status() == {
        "models": {
            "a": {"ready": True, "ready_copies": 1, "loading_copies": 0,
                  "active_revision": "a__isvc-a", "target_revision": "a__isvc-a",
                  "revisions": {"a__isvc-a": {"i0": "ready"}},
                  "failed": False, "failure": None, "waiting": None, "failures": [],
                  "requests_per_min": 25.7, "canary_percent": None},
            "b": {"ready": False, "ready_copies": 0, "loading_copies": 1,
                  "active_revision": "b__isvc-a", "target_revision": "b__isvc-a",
                  "revisions": {"b__isvc-a": {"i0": "loading"}},
                  "failed": False, "failure": None, "waiting": None, "failures": [],
                  "requests_per_min": 0.0, "canary_percent": 25},
            "x": {"ready": False, "ready_copies": 0, "loading_copies": 0,
                  "active_revision": "x__isvc-a", "target_revision": "x__isvc-a",
                  "revisions": {"x__isvc-a": {}},
                  "failed": True, "failure": "boom", "waiting": None,
                  "failures": [{"instance": "i1", "error": "boom", "age_s": 14.4}],  # failed at 7 s
                  "requests_per_min": 0.0, "canary_percent": None},
        },
        "instances": {
            "i0": {"runtime": "rt", "address": "127.0.0.1", "capacity_bytes": 260 * MB,
                   "used_bytes": 230 * MB, "committed_bytes": 220 * MB,  # 0old's 10 MB still used
                   "cache_age_s": 16.4,  # a, its only ready copy, was last used at 5 s
                   "requests_per_min": 25.7,
                   "loaded": {
                       "0old__isvc-a": {"phase": "unloading", "size_bytes": 10 * MB, "measured": True,
                                        "model": "0old", "idle_s": 21.4},
                       "a__isvc-a": {"phase": "ready", "size_bytes": 120 * MB, "measured": True,
                                     "model": "a", "idle_s": 16.4},
                       "b__isvc-a": {"phase": "loading", "size_bytes": 100 * MB, "measured": False,
                                     "model": "b", "idle_s": 12.4}}},  # placed at 9 s
            "i1": {"runtime": "rt2", "address": "127.0.0.1", "capacity_bytes": 150 * MB,
                   "used_bytes": 0, "committed_bytes": 0, "cache_age_s": None,
                   "requests_per_min": 0.0, "loaded": {}},
        },
        "counters": {"loads": 4, "unloads": 1, "evictions": 0, "load_failures": 1, "timeouts": 0},
    }


def test_the_mesh_view_skips_removed_models_orders_revisions_and_splits_only_canaries() -> None:
    h = Harness()
    h.up("i0")
    h.engine.set_desired([model("0old"), model("m", "v1", min_copies=1), model("p")])
    h.settle()
    h.engine.request_for_cold_model("0old")
    assert h.loads(h.tick()) == [("i0", "0old__isvc-a")]
    # 0old is removed while it loads (it sorts first, and stays until its load returns), m rolls
    # to v2, p stays plain
    h.engine.set_desired([model("m", "v2", min_copies=1), model("p")])
    h.tick()  # v2 waits for the load slot; v1 still routed
    assert h.engine.copies_on("i0")["0old__isvc-a"].value == "loading"
    act = ActivatorEndpoint("127.0.0.1", 7001, 7002)
    view = h.engine.mesh_view(act)
    assert view.activator == act
    assert sorted(view.models) == ["m", "p"]
    assert sorted(h.engine.status()["models"]) == ["m", "p"]  # 0old, still loading, is no model
    assert [r.id for r in view.models["m"].revisions] == ["m__isvc-v1"]  # v2 has no ready copy yet
    assert view.models["m"].rules == () and view.models["p"].rules == ()  # one destination: no rule
    h.settle()  # v2 ready and routed; v1 drains for rollout_drain_s, still listed with its copy
    view = h.engine.mesh_view()
    assert [(r.id, [c.instance for c in r.copies]) for r in view.models["m"].revisions] == [
        ("m__isvc-v2", ["i0"]), ("m__isvc-v1", ["i0"])]
    assert view.models["m"].rules == () and view.activator is None


def test_the_view_carries_each_ready_copys_address_ports_and_mesh_tls_in_instance_order() -> None:
    h = Harness()
    h.engine.instance_up(InstanceInfo("i1", "rt", "10.0.0.1", 8001, 9001, 1000 * MB))
    h.engine.set_desired([model("m", min_copies=2)])
    h.tick()  # one load (one instance): no copy in the view yet
    assert h.engine.mesh_view().models["m"].revisions[0].copies == ()
    h.settle()
    h.engine.instance_up(InstanceInfo("i0", "rt", "10.0.0.2", 8002, 9002, 1000 * MB, mesh_tls=True))
    h.settle()  # the second copy, placed after the first, on i0
    assert h.engine.mesh_view().models["m"].revisions[0].copies == (
        Copy("i0", "10.0.0.2", 8002, 9002, True), Copy("i1", "10.0.0.1", 8001, 9001, False))


def test_why_a_model_waits_in_words() -> None:
    h = Harness()
    h.engine.set_desired([model("m", runtime="gpu"), model("exact", size_mb=100), model("huge", size_mb=101)])
    st = h.engine.model_status("m")
    assert (st.waiting, st.cannot_fit) == ("no instance of runtime 'gpu' is up", False)
    h.up("i0", capacity_mb=100)
    assert h.engine.model_status("exact").waiting is None  # exactly the capacity: it fits
    assert not h.engine.model_status("exact").cannot_fit
    st = h.engine.model_status("huge")
    assert st.cannot_fit
    assert st.waiting == f"needs {101 * MB} bytes, more than any instance of runtime 'rt' holds"
    assert h.engine.model_status("nope") == ModelStatus("nope", known=False)
