"""What an instance reports it holds repairs the engine's view: lost copies are placed again,
unknown ones adopted, and a copy that became ready while the report was on its way is kept."""

from __future__ import annotations

from placement_harness import MB, Harness, model


def test_a_copy_lost_behind_msms_back_leaves_the_view_and_loads_again() -> None:
    h = Harness()
    h.up("i0")
    h.up("i1")
    h.engine.set_desired([model("m", min_copies=1)])
    h.settle()
    ((rev, [where]),) = h.ready("m").items()
    before = h.engine.copies_on(where)
    assert set(before) == {rev}
    lost, found = h.engine.inventory(where, {}, before)  # someone unloaded it on the runtime
    assert (lost, found) == ([rev], [])
    assert h.ready("m") == {rev: []}  # no route to the copy that is gone
    assert h.loads(h.tick()) and h.engine.model_status("m").loading_copies == 1
    h.settle()
    assert len(h.ready("m")[rev]) == 1


def test_a_copy_that_became_ready_after_the_question_is_not_taken_for_lost() -> None:
    h = Harness()
    h.up("i0")
    h.engine.set_desired([model("m", min_copies=1)])
    h.tick()  # the load is under way
    before = h.engine.copies_on("i0")  # asked now: nothing ready yet
    h.succeed("i0", "m__isvc-a")  # ... the load returns before the answer does
    assert h.engine.inventory("i0", {}, before) == ([], [])
    assert h.ready("m") == {"m__isvc-a": ["i0"]}


def test_an_unknown_copy_is_adopted_and_an_orphan_unloaded() -> None:
    h = Harness()
    h.up("i0")
    h.engine.set_desired([model("m")])  # min_copies 0: nothing placed yet
    h.settle()
    lost, found = h.engine.inventory("i0", {"m__isvc-a": 5 * MB, "stray__isvc-x": MB}, {})
    assert (lost, found) == ([], ["m__isvc-a", "stray__isvc-x"])
    assert h.ready("m") == {"m__isvc-a": ["i0"]}
    assert h.unloads(h.tick()) == [("i0", "stray__isvc-x")]


def test_a_failed_model_is_tried_again_when_its_file_changes() -> None:
    from dataclasses import replace

    h = Harness()
    h.up("i0")
    spec = replace(model("m", min_copies=1), storage_stamp=(1, 100))
    h.engine.set_desired([spec])
    h.tick()
    h.fail("i0", "m__isvc-a", "not a pickle")
    h.tick()
    assert h.engine.model_status("m").failed
    h.engine.set_desired([spec])  # same file: still failed, nothing loads
    assert h.engine.model_status("m").failed and not h.loads(h.tick())
    h.engine.set_desired([replace(spec, storage_stamp=(2, 120))])  # the file was replaced
    assert not h.engine.model_status("m").failed
    assert h.loads(h.tick()) == [("i0", "m__isvc-a")]


def test_a_copy_unloaded_while_the_answer_was_on_its_way_is_not_adopted_again() -> None:
    h = Harness()
    h.up("i0")
    h.engine.set_desired([model("m", min_copies=1)])
    h.settle()
    before = h.engine.copies_on("i0")  # asked now: m is ready here
    h.engine.set_desired([])  # ... m leaves the desired set and its copy is unloaded meanwhile
    h.tick()
    h.finish_unloads()
    assert h.engine.inventory("i0", {"m__isvc-a": MB}, before) == ([], [])  # the answer is old news
    assert h.engine.copies_on("i0") == {}


def test_failures_on_an_instance_that_went_away_are_forgotten() -> None:
    h = Harness()
    h.up("i0")
    h.up("i1")
    h.engine.set_desired([model("m", min_copies=1)])
    for _ in range(2):  # loads sent to runtimes that were dying fail on both instances
        h.tick()
        for iid, rev in list(h.loading):
            h.fail(iid, rev, "UNAVAILABLE: connection refused")
    assert h.engine.model_status("m").failed
    h.engine.instance_down("i0")  # the restarts: fresh instances, nothing against the model
    h.up("i0")
    assert not h.engine.model_status("m").failed
    assert [f.instance for f in h.engine.model_status("m").failures] == ["i1"]
    assert h.loads(h.tick()) == [("i0", "m__isvc-a")]


def test_a_freshly_loaded_copy_is_not_evicted_before_its_requests_are_served() -> None:
    h = Harness()
    h.up("i0", capacity_mb=200)
    h.engine.set_desired([model("a"), model("b"), model("c")])
    for n in "ab":
        h.engine.request_for_cold_model(n)
        h.settle()
    h.engine.request_for_cold_model("c")  # no room, and both copies are fresh: c waits
    assert h.tick() == [] and h.ready("a") == {"a__isvc-a": ["i0"]}
    h.clock.advance(h.engine.config.min_cache_s)
    assert h.unloads(h.tick()) == [("i0", "a__isvc-a")]  # now the LRU one makes room


def test_a_copy_on_an_instance_of_another_runtime_counts_for_a_rollout_at_once() -> None:
    h = Harness()
    h.up("i0")
    h.engine.set_desired([model("m", "a", min_copies=1)])
    h.settle()
    h.engine.set_desired([model("m", "b", min_copies=1)])
    assert h.loads(h.tick()) == [("i0", "m__isvc-b")]
    assert h.engine.model_status("m").active_revision == "m__isvc-a"
    # an instance of the runtime the model used before turns up holding the new revision
    h.up("x", runtime="before", loaded={"m__isvc-b": 100 * MB})
    h.tick()  # same instant: no scale tick looks at every model
    assert h.engine.model_status("m").active_revision == "m__isvc-b"
    assert h.ready("m")["m__isvc-b"] == ["x"]


def test_a_copy_on_an_instance_of_another_runtime_is_placed_again_at_once_when_it_goes() -> None:
    h = Harness()
    h.up("i0")
    h.engine.set_desired([model("m")])
    h.up("x", runtime="before", loaded={"m__isvc-a": 100 * MB})  # adopted: one copy wanted
    assert h.tick() == []
    assert h.ready("m") == {"m__isvc-a": ["x"]}
    h.engine.instance_down("x")
    assert h.loads(h.tick()) == [("i0", "m__isvc-a")]  # same instant: no scale tick
