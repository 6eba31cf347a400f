"""An instance registering again, copies adopted with or without a size, load results that come
late or for copies already settled, and the engine's own answer to "where can this request go"."""

from __future__ import annotations

from placement_harness import MB, Harness, model

from placement.engine.model_types import EngineConfig, InstanceInfo


def loaded_entry(h: Harness, iid: str, rev: str) -> dict | None:
    return h.engine.status()["instances"][iid]["loaded"].get(rev)


def test_an_instance_registering_again_keeps_what_it_holds_and_loses_what_it_does_not() -> None:
    h = Harness()
    h.up("i0", capacity_mb=1000)
    h.engine.set_desired([model(n, min_copies=1) for n in "abc"] + [model("d")])
    h.settle()
    assert {n: h.ready(n)[f"{n}__isvc-a"] for n in "abc"} == {n: ["i0"] for n in "abc"}
    h.engine.request_for_cold_model("d")
    assert h.loads(h.tick()) == [("i0", "d__isvc-a")]  # d is loading when the runtime restarts
    # same id, new address and capacity; it says it holds a (re-measured), d (its load finished)
    # and a stray model; b and c are gone with the restart
    info = InstanceInfo("i0", "rt", "127.0.0.9", 9100, 9200, 900 * MB, 1)
    h.engine.instance_up(info, {"a__isvc-a": 50 * MB, "d__isvc-a": 70 * MB, "stray__isvc-x": MB})
    h.loading.clear()
    st = h.engine.status()["instances"]["i0"]
    assert (st["address"], st["capacity_bytes"]) == ("127.0.0.9", 900 * MB)
    assert st["loaded"]["a__isvc-a"] | {"idle_s": 0} == {
        "phase": "ready", "size_bytes": 50 * MB, "measured": True, "model": "a", "idle_s": 0}
    d = st["loaded"]["d__isvc-a"]
    assert (d["phase"], d["size_bytes"]) == ("ready", 70 * MB)
    assert st["loaded"]["stray__isvc-x"]["model"] is None
    assert "b__isvc-a" not in st["loaded"] and "c__isvc-a" not in st["loaded"]
    view = h.engine.mesh_view().models
    assert [c.address for c in view["a"].revisions[0].copies] == ["127.0.0.9"]  # the new address
    assert view["b"].revisions[0].copies == () and view["d"].revisions[0].copies[0].instance == "i0"
    # b, then c (min_copies 1; one load at a time) load again; the stray copy goes
    actions = h.tick()
    assert h.loads(actions) == [("i0", "b__isvc-a")]
    assert h.unloads(actions) == [("i0", "stray__isvc-x")]
    h.settle()
    assert h.ready("c") == {"c__isvc-a": ["i0"]}


def test_a_copy_registered_again_without_a_size_keeps_the_size_it_had() -> None:
    h = Harness()
    h.up("i0")
    h.engine.set_desired([model("a", min_copies=1)])
    h.settle(sizes=lambda a: 80 * MB)
    h.engine.instance_up(h.engine.instances["i0"].info, {"a__isvc-a": 0})
    assert loaded_entry(h, "i0", "a__isvc-a")["size_bytes"] == 80 * MB


def test_failures_are_forgotten_when_an_instance_comes_back_as_a_new_incarnation() -> None:
    h = Harness()
    h.up("i0")
    h.engine.set_desired([model("x")])
    h.engine.request_for_cold_model("x")
    h.tick()
    h.fail("i0", "x__isvc-a")
    assert h.engine.model_status("x").failed  # no other instance to try
    h.engine.instance_up(h.engine.instances["i0"].info)  # registering again is not a new incarnation
    assert h.engine.model_status("x").failed
    h.engine.instance_down("i0")
    h.up("i0")
    assert not h.engine.model_status("x").failed and h.engine.model_status("x").failures == ()
    h.engine.request_for_cold_model("x")
    assert h.loads(h.tick()) == [("i0", "x__isvc-a")]


def test_adopted_copies_take_the_reported_size_else_the_last_measured_else_the_estimate() -> None:
    h = Harness()
    h.engine.set_desired([model("a"), model("b")])
    h.up("i0")
    h.engine.request_for_cold_model("a")
    h.tick()
    h.succeed("i0", "a__isvc-a", 80 * MB)  # measured once on i0
    h.up("i1", loaded={"a__isvc-a": 0, "b__isvc-a": 0})  # sizes unknown
    h.up("i2", loaded={"b__isvc-a": 30 * MB})
    assert loaded_entry(h, "i1", "a__isvc-a") | {"idle_s": 0} == {
        "phase": "ready", "size_bytes": 80 * MB, "measured": False, "model": "a", "idle_s": 0}
    assert loaded_entry(h, "i1", "b__isvc-a")["size_bytes"] == 100 * MB  # the estimate
    assert loaded_entry(h, "i2", "b__isvc-a") | {"idle_s": 0} == {
        "phase": "ready", "size_bytes": 30 * MB, "measured": True, "model": "b", "idle_s": 0}
    assert h.ready("a") == {"a__isvc-a": ["i0", "i1"]} and h.ready("b") == {"b__isvc-a": ["i1", "i2"]}
    assert h.tick() == []  # adopted copies are wanted: nothing unloaded, nothing loaded
    # a later copy without a size of its own is accounted by what was measured last (30 MB)
    h.up("i3", loaded={"b__isvc-a": 0})
    assert loaded_entry(h, "i3", "b__isvc-a")["size_bytes"] == 30 * MB


def test_a_late_load_result_for_a_forgotten_copy_is_unloaded_with_its_size() -> None:
    h = Harness()
    h.up("i0")
    h.engine.set_desired([model("m")])
    h.engine.request_for_cold_model("m")
    h.tick()
    h.succeed("i0", "m__isvc-a", 40 * MB)
    h.engine.load_succeeded("i0", "ghost__isvc-x", 0)  # unknown, no size: none measured either
    h.engine.load_succeeded("i0", "m__isvc-a", 99 * MB)  # a duplicate result: already ready
    assert loaded_entry(h, "i0", "ghost__isvc-x") | {"idle_s": 0} == {
        "phase": "unloading", "size_bytes": 0, "measured": False, "model": None, "idle_s": 0}
    assert loaded_entry(h, "i0", "m__isvc-a")["size_bytes"] == 40 * MB
    assert h.unloads(h.tick()) == [("i0", "ghost__isvc-x")]
    h.engine.unload_done("i0", "ghost__isvc-x")
    h.engine.instance_down("i0")
    h.up("i0")
    h.engine.request_for_cold_model("m")
    h.tick()
    h.engine.instance_down("i0")  # the load was forgotten with its instance ...
    h.up("i0")
    h.engine.load_succeeded("i0", "m__isvc-a", 0)  # ... and its result comes with no size
    assert loaded_entry(h, "i0", "m__isvc-a") | {"idle_s": 0} == {
        "phase": "unloading", "size_bytes": 40 * MB, "measured": False, "model": None, "idle_s": 0}
    assert h.engine.counters["unloads"] == 2
    assert h.unloads(h.tick()) == [("i0", "m__isvc-a")]


def test_a_load_measured_over_the_capacity_evicts_others_but_never_itself_or_a_minimum() -> None:
    h = Harness()
    h.up("i0", capacity_mb=300)
    h.engine.set_desired([model("keep", min_copies=1), model("old"), model("new")])
    h.settle()
    h.engine.request_for_cold_model("old")
    h.settle()
    h.clock.advance(10)
    h.engine.record_requests("old", 1)
    h.engine.request_for_cold_model("new")
    assert h.loads(h.tick()) == [("i0", "new__isvc-a")]  # 100 MB free: fits by its estimate
    h.clock.advance(10)
    h.succeed("i0", "new__isvc-a", 150 * MB)  # 350 MB committed: 50 over
    assert h.unloads(h.tick()) == [("i0", "old__isvc-a")]  # not keep (its minimum), not new
    assert h.ready("new") == {"new__isvc-a": ["i0"]} and h.ready("keep") == {"keep__isvc-a": ["i0"]}


def test_a_load_that_ends_exactly_when_its_revision_retires_is_unloaded_at_once() -> None:
    h = Harness()
    h.up("i0")
    h.engine.set_desired([model("m", rev="a")])
    h.engine.request_for_cold_model("m")
    assert h.loads(h.tick()) == [("i0", "m__isvc-a")]
    h.engine.set_desired([model("m", rev="b")])  # revision a had no ready copy: it retires now
    h.succeed("i0", "m__isvc-a")
    assert h.ready("m").get("m__isvc-a", []) == []
    assert loaded_entry(h, "i0", "m__isvc-a")["phase"] == "unloading"


def test_routable_copies_lists_ready_copies_of_the_revisions_taking_traffic() -> None:
    h = Harness(EngineConfig())
    h.up("i0")
    h.up("i1")
    h.engine.set_desired([model("m", rev="a", min_copies=2)])
    h.settle()
    assert h.engine.routable_copies("m") == [("m__isvc-a", "i0", 100), ("m__isvc-a", "i1", 100)]
    h.engine.set_desired([model("m", rev="b", min_copies=1, canary_percent=20)])
    h.settle()
    (b_on,) = h.ready("m")["m__isvc-b"]
    assert h.engine.routable_copies("m") == [
        ("m__isvc-a", "i0", 80), ("m__isvc-a", "i1", 80), ("m__isvc-b", b_on, 20)]
    h.engine.set_desired([model("m", rev="b", min_copies=1, canary_percent=0)])
    h.tick()
    assert [(r, w) for r, _, w in h.engine.routable_copies("m")] == [("m__isvc-a", 100), ("m__isvc-a", 100)]
    assert h.engine.routable_copies("nope") == []


def test_a_preemptive_copy_is_as_recently_used_as_its_model_and_an_urgent_one_is_used_now() -> None:
    h = Harness()
    h.up("i0")
    h.up("i1")
    h.up("i2")
    h.engine.set_desired([model("m")])
    h.engine.request_for_cold_model("m")
    (first,) = h.loads(h.tick())
    h.clock.advance(5)
    h.succeed(*first)  # urgent: used now (5 s)
    h.engine.record_requests("m", 5000)  # at 5 s: scale up
    h.clock.advance(h.engine.config.scale_interval_s)
    (second,) = h.loads(h.tick())  # pre-emptive
    h.clock.advance(3)
    h.succeed(*second)  # at 18 s
    h.clock.advance(2)
    assert loaded_entry(h, second[0], second[1])["idle_s"] == 15.0  # the model's last use, 5 s
    assert loaded_entry(h, first[0], first[1])["idle_s"] == 15.0  # touched by the requests at 5 s
    h.engine.set_desired([model("m"), model("n", min_copies=1)])
    (third,) = h.loads(h.tick())
    h.clock.advance(1)
    h.succeed(*third)  # never used: as of its load
    assert loaded_entry(h, third[0], third[1])["idle_s"] == 0.0


def test_an_over_capacity_load_evicts_by_the_same_lrfu_order() -> None:
    h = Harness(EngineConfig(frequency_half_life_s=60.0))
    h.up("i0", capacity_mb=300)
    h.engine.set_desired([model(n) for n in "afn"])
    for n in "af":
        h.engine.request_for_cold_model(n)
        h.settle()
    h.engine.record_requests("f", 20)  # f: used often, a minute ago
    h.clock.advance(60)
    h.engine.record_requests("a", 1)  # a: used once, just now
    h.clock.advance(5)
    h.engine.request_for_cold_model("n")
    assert h.loads(h.tick()) == [("i0", "n__isvc-a")]  # fits by its estimate
    h.succeed("i0", "n__isvc-a", 150 * MB)  # 350 MB: one must go, and LRU would take f
    assert h.unloads(h.tick()) == [("i0", "a__isvc-a")]


def test_one_byte_is_a_size() -> None:
    h = Harness()
    h.engine.set_desired([model("a"), model("b")])
    h.up("i0", loaded={"a__isvc-a": 1})
    assert loaded_entry(h, "i0", "a__isvc-a")["size_bytes"] == 1
    assert loaded_entry(h, "i0", "a__isvc-a")["measured"] is True
    h.engine.request_for_cold_model("b")
    h.tick()
    h.succeed("i0", "b__isvc-a", 1)
    b = loaded_entry(h, "i0", "b__isvc-a")
    assert (b["size_bytes"], b["measured"]) == (1, True)
    h.engine.load_succeeded("i0", "late__isvc-z", 1)
    assert loaded_entry(h, "i0", "late__isvc-z")["measured"] is True


def test_registering_again_keeps_a_load_in_flight_and_a_ready_copys_last_use() -> None:
    h = Harness()
    h.up("i0")
    h.engine.set_desired([model("a"), model("b")])
    h.engine.request_for_cold_model("a")
    h.settle(sizes=lambda a: 80 * MB)
    h.clock.advance(30)
    h.engine.request_for_cold_model("b")
    assert h.loads(h.tick()) == [("i0", "b__isvc-a")]
    h.clock.advance(5)
    # it says it holds a (with one byte more than measured), not b, which is still loading
    h.engine.instance_up(h.engine.instances["i0"].info, {"a__isvc-a": 1})
    a, b = loaded_entry(h, "i0", "a__isvc-a"), loaded_entry(h, "i0", "b__isvc-a")
    assert (a["phase"], a["size_bytes"], a["idle_s"]) == ("ready", 1, 35.0)  # used when it loaded
    assert b["phase"] == "loading"
    h.succeed("i0", "b__isvc-a")
    assert h.ready("b") == {"b__isvc-a": ["i0"]}
