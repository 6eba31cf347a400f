"""What ``msm status`` shows of the engine: every field of ``Engine.status()``, in one state that
has a ready, a loading and a failed model, a measured size, two runtimes and an idle instance."""

from __future__ import annotations

from placement_harness import MB, Harness, model


def test_status_reports_models_instances_and_counters_field_for_field() -> None:
    h = Harness()
    h.up("i0", capacity_mb=250)
    h.up("i1", capacity_mb=150, runtime="rt2")
    h.engine.set_desired([model("a"), model("b", canary_percent=25), model("x", runtime="rt2")])
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
    assert h.loads(h.tick()) == [("i0", "b__isvc-a")]  # 130 MB left on i0: b loads, a stays
    h.clock.advance(12.37)  # now = 21.37 s

    assert h.engine.status() == {
        "models": {
            "a": {"ready": True, "ready_copies": 1, "loading_copies": 0,
                  "active_revision": "a__isvc-a", "target_revision": "a__isvc-a",
                  "revisions": {"a__isvc-a": {"i0": "ready"}},
                  "failed": False, "failure": None, "waiting": None, "failures": [],
                  "requests_per_min": 30.0, "canary_percent": None},
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
            "i0": {"runtime": "rt", "address": "127.0.0.1", "capacity_bytes": 250 * MB,
                   "used_bytes": 220 * MB, "committed_bytes": 220 * MB,
                   "cache_age_s": 16.4,  # a, its only ready copy, was last used at 5 s
                   "requests_per_min": 30.0,
                   "loaded": {
                       "a__isvc-a": {"phase": "ready", "size_bytes": 120 * MB, "measured": True,
                                     "model": "a", "idle_s": 16.4},
                       "b__isvc-a": {"phase": "loading", "size_bytes": 100 * MB, "measured": False,
                                     "model": "b", "idle_s": 12.4}}},  # placed at 9 s
            "i1": {"runtime": "rt2", "address": "127.0.0.1", "capacity_bytes": 150 * MB,
                   "used_bytes": 0, "committed_bytes": 0, "cache_age_s": None,
                   "requests_per_min": 0.0, "loaded": {}},
        },
        "counters": {"loads": 3, "unloads": 0, "evictions": 0, "load_failures": 1, "timeouts": 0},
    }
