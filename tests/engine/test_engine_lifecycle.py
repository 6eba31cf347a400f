"""Failures and retries, timeouts, instance death, adoption, removal."""

from __future__ import annotations

from placement_harness import MB, Harness, model


def test_failed_load_is_retried_on_another_instance_then_gives_up(h: Harness) -> None:
    for i in range(5):
        h.up(f"i{i}")
    h.engine.set_desired([model("m")])
    h.engine.request_for_cold_model("m")
    tried = []
    for n in range(3):
        (load,) = h.loads(h.tick())
        assert load[0] not in tried  # never the same instance twice
        tried.append(load[0])
        h.fail(*load, error=f"ValueError: bad pickle ({n})")
        h.clock.advance(1)
    assert h.tick() == []  # 3 distinct failures: stop
    st = h.engine.model_status("m")
    assert st.failed and st.failure == "ValueError: bad pickle (2)"
    assert [f.instance for f in st.failures] == tried
    h.engine.request_for_cold_model("m")
    assert h.tick() == []  # still failed: requests get the error, no load storm
    h.clock.advance(15 * 60)  # failure records expire
    assert not h.engine.model_status("m").failed
    h.engine.request_for_cold_model("m")
    assert len(h.loads(h.tick())) == 1


def test_failed_everywhere_available_with_fewer_instances_than_retries(h: Harness) -> None:
    h.up("i0")
    h.engine.set_desired([model("m")])
    h.engine.request_for_cold_model("m")
    h.fail(*h.loads(h.tick())[0], error="no such file")
    assert h.tick() == []
    assert h.engine.model_status("m").failure == "no such file"


def test_load_timeout_fails_over_and_cleans_up(h: Harness) -> None:
    h.up("i0")
    h.up("i1")
    h.engine.set_desired([model("m", load_timeout_s=30)])
    h.engine.request_for_cold_model("m")
    (first,) = h.loads(h.tick())
    h.clock.advance(29)
    assert h.tick() == []
    h.clock.advance(1)
    actions = h.tick()
    assert h.unloads(actions) == [first]  # whatever the runtime half-loaded goes
    (second,) = h.loads(actions)
    assert second[0] != first[0] and actions[-1].urgent
    assert "timed out" in h.engine.model_status("m").failures[0].error
    # the late success of the timed-out load changes nothing
    h.engine.load_succeeded(*first, 100 * MB)
    assert h.ready("m") == {"m__isvc-a": []}
    h.succeed(*second)
    assert h.ready("m") == {"m__isvc-a": [second[0]]}


def test_late_success_of_unknown_load_is_unloaded(h: Harness) -> None:
    h.up("i0")
    h.engine.set_desired([model("m")])
    h.engine.load_succeeded("i0", "ghost__isvc-x", 10 * MB)
    assert h.unloads(h.tick()) == [("i0", "ghost__isvc-x")]


def test_instance_death_reloads_its_copies_elsewhere(h: Harness) -> None:
    for i in range(3):
        h.up(f"i{i}", concurrency=2)
    h.engine.set_desired([model("pinned", min_copies=2), model("lazy")])
    h.engine.request_for_cold_model("lazy")
    h.settle()
    victim = h.ready("lazy")["lazy__isvc-a"][0]
    lost = [n for n in ("pinned", "lazy") if victim in h.ready(n)[f"{n}__isvc-a"]]
    h.engine.instance_down(victim)
    assert all(victim not in h.ready(n)[f"{n}__isvc-a"] for n in ("pinned", "lazy"))
    actions = h.tick()
    assert sorted(r for _, r in h.loads(actions)) == sorted(f"{n}__isvc-a" for n in lost)
    assert all(i != victim for i, _ in h.loads(actions))
    h.settle()
    assert len(h.ready("pinned")["pinned__isvc-a"]) == 2 and len(h.ready("lazy")["lazy__isvc-a"]) == 1


def test_load_result_from_dead_instance_is_ignored(h: Harness) -> None:
    h.up("i0")
    h.up("i1")
    h.engine.set_desired([model("m")])
    h.engine.request_for_cold_model("m")
    (load,) = h.loads(h.tick())
    h.engine.instance_down(load[0])
    h.engine.load_succeeded(load[0], load[1], 100 * MB)
    assert h.ready("m") == {"m__isvc-a": []}
    (again,) = h.loads(h.tick())
    assert again[0] != load[0]


def test_adopts_loaded_models_after_restart_instances_first() -> None:
    h = Harness()
    h.up("i0", loaded={"m__isvc-a": 120 * MB, "stale__isvc-z": 10 * MB})
    h.up("i1", loaded={"m__isvc-a": 120 * MB})
    assert h.tick() == []  # desired state not read yet: unload nothing
    h.engine.set_desired([model("m", min_copies=1)])
    actions = h.tick()
    assert actions == [a for a in actions if a.revision == "stale__isvc-z"]  # nothing reloaded
    assert h.unloads(actions) == [("i0", "stale__isvc-z")]  # not desired by anyone: unloaded
    assert h.ready("m") == {"m__isvc-a": ["i0", "i1"]}
    assert h.engine.status()["instances"]["i0"]["loaded"]["m__isvc-a"]["size_bytes"] == 120 * MB


def test_adopts_loaded_models_desired_first() -> None:
    h = Harness()
    h.engine.set_desired([model("m")])
    h.up("i0", loaded={"m__isvc-a": 0})
    assert h.tick() == []
    assert h.ready("m") == {"m__isvc-a": ["i0"]}


def test_removed_model_leaves_view_and_unloads(h: Harness) -> None:
    h.up("i0")
    h.engine.set_desired([model("a", min_copies=1), model("b", min_copies=1)])
    h.settle()
    h.engine.set_desired([model("b", min_copies=1)])
    assert "a" not in h.engine.mesh_view().models and not h.engine.has_model("a")
    assert h.unloads(h.tick()) == [("i0", "a__isvc-a")]
    h.finish_unloads()
    status = h.engine.status()
    assert "a" not in status["models"] and status["instances"]["i0"]["loaded"].keys() == {"b__isvc-a"}


def test_wrong_runtime_instances_are_not_used(h: Harness) -> None:
    h.up("other", runtime="triton")
    h.engine.set_desired([model("m")])
    h.engine.request_for_cold_model("m")
    assert h.tick() == []
    assert "no instance of runtime 'rt'" in (h.engine.model_status("m").waiting or "")
    h.up("mine")
    assert h.loads(h.tick()) == [("mine", "m__isvc-a")]


def test_a_revision_still_draining_does_not_hold_up_another_models_retirement(h: Harness) -> None:
    for i in range(2):
        h.up(f"i{i}")
    h.engine.set_desired([model("a", "v1", min_copies=1), model("b", min_copies=1)])
    h.settle()
    h.engine.set_desired([model("a", "v2", min_copies=1), model("b", min_copies=1)])
    h.settle()  # a's v1 drains for rollout_drain_s
    (b_on,) = h.ready("b")["b__isvc-a"]
    h.engine.set_desired([model("a", "v2", min_copies=1)])  # b goes now
    assert h.unloads(h.tick()) == [(b_on, "b__isvc-a")]


def test_a_model_removed_mid_rollout_unloads_both_revisions_the_old_one_drained(h: Harness) -> None:
    for i in range(2):
        h.up(f"i{i}")
    h.engine.set_desired([model("m", "v1", min_copies=1)])
    h.settle()
    h.engine.set_desired([model("m", "v2", min_copies=1)])
    h.settle()  # v2 routed, v1 draining: both have a ready copy
    assert set(h.ready("m")) == {"m__isvc-v1", "m__isvc-v2"}
    h.engine.set_desired([])
    assert [r for _, r in h.unloads(h.tick())] == ["m__isvc-v2"]  # v1 drains on
    h.clock.advance(h.engine.config.rollout_drain_s)
    assert [r for _, r in h.unloads(h.tick())] == ["m__isvc-v1"]


def test_a_model_removed_and_added_again_starts_afresh(h: Harness) -> None:
    h.up("i0")
    h.engine.set_desired([model("m")])
    h.engine.request_for_cold_model("m")
    h.settle()
    h.engine.record_requests("m", 60)
    h.engine.set_desired([])
    h.settle()
    h.engine.set_desired([model("m")])
    assert h.engine.status()["models"]["m"]["requests_per_min"] == 0.0
