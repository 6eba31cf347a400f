"""Inputs the controller may send at any time: ids the engine does not know, results for copies in
another phase, zero counts and sizes; and the counters and sizes ``msm status`` then shows."""

from __future__ import annotations

from placement_harness import MB, Harness, model

from placement.engine.clock import FakeClock
from placement.engine.engine import Engine
from placement.engine.model_types import EngineConfig, InstanceInfo


def loaded_entry(h: Harness, iid: str, rev: str) -> dict:
    return h.engine.status()["instances"][iid]["loaded"][rev]


def test_events_for_unknown_instances_models_and_copies_change_nothing() -> None:
    h = Harness()
    h.up("i0")
    h.engine.set_desired([model("m", min_copies=1)])
    assert h.loads(h.tick()) == [("i0", "m__isvc-a")]
    before = h.engine.status()
    assert h.engine.copies_on("nope") == {}
    h.engine.instance_down("nope")
    h.engine.load_started("nope", "m__isvc-a")
    h.engine.load_failed("nope", "m__isvc-a", "boom")
    h.engine.load_failed("i0", "other__isvc-a", "boom")  # a known instance, an unknown copy
    h.engine.unload_done("nope", "m__isvc-a")
    h.engine.unload_done("i0", "other__isvc-a")
    h.engine.unload_done("i0", "m__isvc-a")  # loading, not unloading: not gone
    h.engine.record_requests("nope", 5)
    h.engine.request_for_cold_model("nope")
    assert h.engine.status() == before
    assert h.tick() == []
    h.succeed("i0", "m__isvc-a")
    h.engine.load_failed("i0", "m__isvc-a", "late")  # ready: a failure for it is stale
    assert h.ready("m") == {"m__isvc-a": ["i0"]} and h.engine.model_status("m").failures == ()


def test_zero_requests_are_no_use() -> None:
    h = Harness()
    h.up("i0")
    h.engine.set_desired([model("m")])
    h.engine.request_for_cold_model("m")
    h.settle()
    h.clock.advance(30)
    h.engine.record_requests("m", 0)
    h.engine.record_requests("m", 0, "i0")
    st = h.engine.status()
    assert st["instances"]["i0"]["loaded"]["m__isvc-a"]["idle_s"] == 30.0
    assert st["models"]["m"]["requests_per_min"] == 0.0 and st["instances"]["i0"]["requests_per_min"] == 0.0


def test_requests_without_an_instance_are_shared_among_the_ready_copies() -> None:
    h = Harness()
    h.up("i0")
    h.up("i1")
    h.engine.set_desired([model("m", min_copies=2)])
    h.settle()
    h.engine.record_requests("m", 60)
    st = h.engine.status()
    assert st["models"]["m"]["requests_per_min"] == 60.0
    assert [st["instances"][i]["requests_per_min"] for i in ("i0", "i1")] == [30.0, 30.0]


def test_a_load_without_a_size_keeps_the_estimate_and_a_late_one_keeps_its_own_size() -> None:
    h = Harness()
    h.up("i0")
    h.engine.set_desired([model("m"), model("n")])
    h.engine.request_for_cold_model("m")
    h.tick()
    h.succeed("i0", "m__isvc-a", 0)  # the runtime did not say
    entry = loaded_entry(h, "i0", "m__isvc-a")
    assert (entry["size_bytes"], entry["measured"]) == (100 * MB, False)
    h.up("i1")
    h.engine.instance_down("i0")
    h.engine.request_for_cold_model("m")
    h.tick()
    assert loaded_entry(h, "i1", "m__isvc-a")["measured"] is False  # nothing was measured
    # a result for a copy the engine never asked for: unloaded, with the size reported
    h.engine.load_succeeded("i1", "n__isvc-a", 10 * MB)
    entry = loaded_entry(h, "i1", "n__isvc-a")
    assert (entry["phase"], entry["size_bytes"], entry["measured"]) == ("unloading", 10 * MB, True)


def test_a_revision_measured_once_is_reported_with_that_size_when_a_late_result_has_another() -> None:
    h = Harness()
    h.up("i0")
    h.engine.set_desired([model("m")])
    h.engine.request_for_cold_model("m")
    h.tick()
    h.succeed("i0", "m__isvc-a", 40 * MB)
    h.up("i1")
    h.engine.load_succeeded("i1", "m__isvc-a", 30 * MB)  # never asked of i1: unloaded at once
    assert loaded_entry(h, "i1", "m__isvc-a")["size_bytes"] == 30 * MB


def test_an_adopted_copy_without_a_size_is_not_taken_for_measured() -> None:
    h = Harness()
    h.engine.set_desired([model("m")])
    h.up("i0", loaded={"m__isvc-a": 0, "stray__isvc-x": 0})
    stray = loaded_entry(h, "i0", "stray__isvc-x")
    assert (stray["size_bytes"], stray["measured"], stray["model"]) == (0, False, None)
    h.up("i1")
    h.engine.instance_down("i0")
    h.engine.request_for_cold_model("m")
    assert h.loads(h.tick()) == [("i1", "m__isvc-a")]
    entry = loaded_entry(h, "i1", "m__isvc-a")
    assert (entry["size_bytes"], entry["measured"]) == (100 * MB, False)


def test_a_one_byte_adopted_size_is_the_revisions_measured_size() -> None:
    h = Harness()
    h.engine.set_desired([model("a")])
    h.up("i0", loaded={"a__isvc-a": 1})
    h.up("i1", loaded={"a__isvc-a": 0})
    assert loaded_entry(h, "i1", "a__isvc-a")["size_bytes"] == 1
    h.engine.load_succeeded("i1", "late__isvc-z", 1)
    assert loaded_entry(h, "i1", "late__isvc-z")["size_bytes"] == 1


def test_counters_count_every_event() -> None:
    h = Harness()
    for i in range(3):
        h.up(f"i{i}", capacity_mb=100)
    h.engine.set_desired([model("bad")])
    h.engine.request_for_cold_model("bad")
    for _ in range(3):
        (load,) = h.loads(h.tick())
        h.fail(*load)
    assert h.engine.counters["load_failures"] == 3
    h.engine.set_desired([model(n) for n in "abcdef"])
    for n in "abc":
        h.engine.request_for_cold_model(n)
    h.settle()
    h.clock.advance(h.engine.config.min_cache_s)
    for n in "def":
        h.engine.request_for_cold_model(n)
    h.tick()
    assert h.engine.counters["evictions"] == 3 and h.engine.counters["unloads"] == 3
    assert h.engine.counters["loads"] == 6


def test_instance_down_forgets_its_failures_at_once() -> None:
    h = Harness()
    h.up("i0")
    h.up("i1")
    h.engine.set_desired([model("m", min_copies=1)])
    for _ in range(2):
        h.tick()
        for iid, rev in list(h.loading):
            h.fail(iid, rev, "UNAVAILABLE")
    h.engine.instance_down("i0")
    assert [f.instance for f in h.engine.model_status("m").failures] == ["i1"]


def test_an_instance_going_down_with_an_orphan_and_a_copy_unloading() -> None:
    h = Harness()
    h.up("i0", capacity_mb=200, loaded={"stray__isvc-x": MB})
    h.engine.set_desired([model("a"), model("b"), model("c")])
    h.up("i1", capacity_mb=50)  # too small for anything: i0 is the only place
    for n in "ab":
        h.engine.request_for_cold_model(n)
        h.settle()
    h.clock.advance(h.engine.config.min_cache_s)
    h.engine.request_for_cold_model("c")
    assert h.unloads(h.tick()) == [("i0", "a__isvc-a")]  # a unloads, c waits for the room
    h.engine.instance_down("i0")
    assert h.engine.copies_on("i0") == {} and h.ready("b") == {"b__isvc-a": []}


def test_copies_held_before_the_desired_set_take_its_estimate_unless_measured() -> None:
    h = Harness()
    h.up("i0", loaded={"m__isvc-a": 0, "n__isvc-a": 30 * MB})  # before the desired state is read
    h.engine.set_desired([model("m"), model("n")])
    m, n = loaded_entry(h, "i0", "m__isvc-a"), loaded_entry(h, "i0", "n__isvc-a")
    assert (m["size_bytes"], m["measured"], m["model"]) == (100 * MB, False, "m")
    assert (n["size_bytes"], n["measured"], n["model"]) == (30 * MB, True, "n")


def test_a_copy_found_by_an_inventory_is_used_as_of_then() -> None:
    h = Harness()
    h.up("i0")
    h.engine.set_desired([model("m")])
    h.clock.advance(5)
    h.engine.inventory("i0", {"m__isvc-a": MB}, {})
    h.clock.advance(2)
    assert loaded_entry(h, "i0", "m__isvc-a")["idle_s"] == 2.0


def test_every_timeout_is_counted() -> None:
    h = Harness()
    h.up("i0")
    h.up("i1")
    h.engine.set_desired([model("m", load_timeout_s=30)])
    h.engine.request_for_cold_model("m")
    for _ in range(2):
        assert len(h.loads(h.tick())) == 1
        h.clock.advance(30)
    h.tick()
    assert h.engine.counters["timeouts"] == 2


def test_failures_are_kept_for_failure_expiry_s_and_reported_only_once_failed() -> None:
    h = Harness()
    h.up("i0")
    h.up("i1")
    h.engine.set_desired([model("m")])
    h.engine.request_for_cold_model("m")
    (load,) = h.loads(h.tick())
    h.fail(*load, error="boom")
    st = h.engine.model_status("m")
    assert st.name == "m" and not st.failed and st.failure is None and len(st.failures) == 1
    (other,) = h.loads(h.tick())
    h.fail(*other, error="boom")
    assert h.engine.model_status("m").failed  # both instances tried
    assert h.tick() == []
    h.clock.advance(h.engine.config.failure_expiry_s)  # the first failure's age: exactly the expiry
    st = h.engine.model_status("m")
    assert not st.failed and st.failures == ()
    h.engine.request_for_cold_model("m")
    assert len(h.loads(h.tick())) == 1


def test_a_serving_models_failure_is_reported_until_failure_expiry_s() -> None:
    h = Harness()
    h.up("i0")
    h.up("i1")
    h.engine.set_desired([model("m")])
    h.engine.request_for_cold_model("m")
    (load,) = h.loads(h.tick())
    h.fail(*load, error="boom")
    (other,) = h.loads(h.tick())
    h.succeed(*other)  # served from the other instance
    h.clock.advance(h.engine.config.failure_expiry_s - 1)
    assert [f.error for f in h.engine.model_status("m").failures] == ["boom"]
    h.clock.advance(1)
    assert h.engine.model_status("m").failures == ()


def test_an_engine_without_an_rng_decides_the_same_every_run() -> None:
    def picks() -> list[str]:
        engine = Engine(FakeClock())
        for i in range(8):
            engine.instance_up(InstanceInfo(f"i{i}", "rt", "127.0.0.1", 9000 + i, 9100 + i, 1000 * MB, 8))
        engine.set_desired([model(f"m{n}", min_copies=1) for n in range(8)])
        return [a.instance for a in engine.tick()]

    first = picks()
    assert len(set(first)) > 1 and all(picks() == first for _ in range(5))


def test_request_rates_are_kept_in_buckets_of_rate_bucket_s() -> None:
    h = Harness(EngineConfig(rate_window_s=60.0, rate_bucket_s=30.0))
    h.up("i0")
    h.engine.set_desired([model("m")])
    h.engine.request_for_cold_model("m")
    h.settle()
    h.clock.advance(5)
    h.engine.record_requests("m", 6, "i0")  # in the bucket [0 s, 30 s)
    h.clock.advance(70)  # 75 s: the window starts at 15 s
    st = h.engine.status()
    assert st["models"]["m"]["requests_per_min"] == 6.0  # [0, 30) still reaches into [15, 75]
    assert st["instances"]["i0"]["requests_per_min"] == 6.0


def test_the_view_lists_each_runtimes_instances_only_for_an_activator_with_a_replay_token() -> None:
    from xds_server.mesh_view import ActivatorEndpoint, Copy

    h = Harness()
    h.up("i1", runtime="rt")
    h.up("i0", runtime="rt")
    h.up("t0", runtime="triton")
    listed = h.engine.mesh_view(ActivatorEndpoint("127.0.0.1", 1, 2, replay_token="tok")).runtime_instances
    assert {r: [c.instance for c in cs] for r, cs in listed.items()} == {"rt": ["i0", "i1"], "triton": ["t0"]}
    info = h.engine.instances["i0"].info
    assert listed["rt"][0] == Copy("i0", info.address, info.rest_port, info.grpc_port, info.mesh_tls)
    assert h.engine.mesh_view(ActivatorEndpoint("127.0.0.1", 1, 2)).runtime_instances == {}
    assert h.engine.mesh_view(None).runtime_instances == {}
    h.engine.instance_down("i1")
    listed = h.engine.mesh_view(ActivatorEndpoint("127.0.0.1", 1, 2, replay_token="tok")).runtime_instances
    assert [c.instance for c in listed["rt"]] == ["i0"]
