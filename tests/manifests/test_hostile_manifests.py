"""Manifests built to hurt: alias bombs, huge files, deep nesting, huge numbers, huge values.

Each is refused with a message of bounded size, quickly, and the other files keep working.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import pytest
from _manifests_helpers import isvc, local_dir, runtime, write

from placement.manifests import safe_yaml
from placement.manifests.kserve import load_manifest_dir, parse_manifest_text
from placement.sources import LocalDirSource

ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(9))


def test_an_alias_bomb_is_refused_before_it_expands() -> None:
    assert len(ALIAS_BOMB) < 1500  # 10^10 nodes once expanded
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    mf = parse_manifest_text(ALIAS_BOMB, "bomb.yaml")
    assert time.monotonic() - started < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB
    assert mf.errors == ("bomb.yaml expands to more than 200,000 YAML nodes (aliases counted where they "
                         "are used); not read",)


def test_aliases_within_bounds_are_fine() -> None:
    text = isvc("m").replace("metadata:", "metadata: &meta", 1)
    assert parse_manifest_text(text, "m.yaml").errors == ()


def test_deep_nesting_and_huge_integers_are_refused_not_raised() -> None:
    deep = "a: " + "[" * 100 + "]" * 100 + "\n"
    assert parse_manifest_text(deep, "deep.yaml").errors == (
        f"deep.yaml nests more than {safe_yaml.MAX_DEPTH} levels deep; not read",)
    deeper = "a: " + "[" * 5000 + "]" * 5000 + "\n"  # past the YAML parser's own limit
    (err,) = parse_manifest_text(deeper, "deeper.yaml").errors
    assert err.startswith("deeper.yaml: not valid YAML at line 1") and len(err) < 1000
    huge = isvc("m").replace("spec:\n", "spec:\n  replicas: " + "9" * 5000 + "\n", 1)
    (err,) = parse_manifest_text(huge, "huge.yaml").errors
    assert err.startswith("huge.yaml: cannot be loaded: ") and len(err) < 400


def test_values_in_messages_are_cut() -> None:
    long_name = "m" * 100_000
    text = isvc("m").replace("name: m\n", f"name: {long_name}\n", 1)
    (err, *_) = parse_manifest_text(text, "n.yaml").errors
    assert len(err) < 1000 and "100000 characters" in err
    big_value = isvc("m").replace("minReplicas", "x").replace(
        "spec:\n", "spec:\n  predictor2: [" + ", ".join(["aaaa"] * 50_000) + "]\n", 1)
    errors = parse_manifest_text(big_value, "v.yaml").errors
    assert errors and all(len(e) < 2000 for e in errors), [len(e) for e in errors]


def test_a_file_too_large_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = local_dir(tmp_path)
    write(d / "rt.yaml", runtime("mlserver"))
    write(d / "m.yaml", isvc("m"))
    write(d / "big.yaml", isvc("big") + "#" * 5000 + "\n")
    monkeypatch.setattr(safe_yaml, "MAX_MANIFEST_BYTES", 4000)
    state = load_manifest_dir(d)
    assert set(state.models) == {"m"}
    assert state.errors["big.yaml"].startswith("big.yaml is ") and "more than the 4,000 msm reads" in \
        state.errors["big.yaml"]


async def test_one_hostile_file_does_not_keep_the_watcher_from_the_others(tmp_path: Path) -> None:
    d = local_dir(tmp_path)
    write(d / "rt.yaml", runtime("mlserver"))
    write(d / "a-bomb.yaml", ALIAS_BOMB)
    write(d / "b-huge-int.yaml", "x: " + "9" * 5000 + "\n")
    write(d / "m.yaml", isvc("m"))
    source = LocalDirSource(d, poll_interval=3600)
    try:
        state = await source.start()
        assert set(state.models) == {"m"}
        assert "not read" in state.errors["a-bomb.yaml"]
        assert "cannot be loaded" in state.errors["b-huge-int.yaml"]
    finally:
        await source.stop()


@pytest.mark.parametrize(("memory", "problem"), [
    ("1e400", "'1e400' is larger than Kubernetes allows (2^63 - 1)"),
    ("-1Gi", "'-1Gi' is negative"),
    ("0", "'0' leaves no memory (e.g. 512Mi, 5Gi)"),
    ("100m", "'100m' is not a whole number of bytes (memory is in bytes: e.g. 512Mi, 5Gi)"),
])
def test_memory_that_cannot_be_meant_is_refused(memory: str, problem: str) -> None:
    text = runtime("rt").replace("      image: seldonio/mlserver:1.7.1\n",
                                 "      image: seldonio/mlserver:1.7.1\n      resources:\n"
                                 f"        limits: {{memory: '{memory}', cpu: '500m'}}\n")
    assert parse_manifest_text(text, "rt.yaml").errors == (
        f"rt.yaml doc 1 ServingRuntime/rt: spec.containers[0].resources.limits.memory {problem}",)


def test_replica_counts_past_any_plan_are_refused() -> None:
    text = isvc("m").replace("  predictor:\n", "  predictor:\n    minReplicas: 99999999999999999999999\n", 1)
    assert parse_manifest_text(text, "m.yaml").errors == (
        "m.yaml doc 1 InferenceService/m: spec.predictor.minReplicas must be between 0 and 1000, "
        "got 99999999999999999999999",)
    rt = runtime("rt").replace("  multiModel: true\n", "  multiModel: true\n  replicas: 5000\n")
    assert parse_manifest_text(rt, "rt.yaml").errors == (
        "rt.yaml doc 1 ServingRuntime/rt: spec.replicas must be between 0 and 1000, got 5000",)


def test_a_resolver_bug_costs_one_model_not_the_folder(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from placement.manifests import kserve

    d = local_dir(tmp_path)
    write(d / "rt.yaml", runtime("mlserver"))
    write(d / "m.yaml", isvc("good") + "---\n" + isvc("cursed"))
    real = kserve.resolve_model

    def buggy(doc, *a, **kw):
        if doc.name == "cursed":
            raise ZeroDivisionError("a bug")
        return real(doc, *a, **kw)

    monkeypatch.setattr(kserve, "resolve_model", buggy)
    state = load_manifest_dir(d)
    assert set(state.models) == {"good"}
    assert state.errors["modelmesh-serving/cursed"].endswith(
        "could not be resolved (ZeroDivisionError; msm's log has the details)")
