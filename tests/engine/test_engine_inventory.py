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
    before = h.engine.ready_revisions(where)
    assert before == {rev}
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
    before = h.engine.ready_revisions("i0")  # asked now: nothing ready yet
    h.succeed("i0", "m__isvc-a")  # ... the load returns before the answer does
    assert h.engine.inventory("i0", {}, before) == ([], [])
    assert h.ready("m") == {"m__isvc-a": ["i0"]}


def test_an_unknown_copy_is_adopted_and_an_orphan_unloaded() -> None:
    h = Harness()
    h.up("i0")
    h.engine.set_desired([model("m")])  # min_copies 0: nothing placed yet
    h.settle()
    lost, found = h.engine.inventory("i0", {"m__isvc-a": 5 * MB, "stray__isvc-x": MB}, set())
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
