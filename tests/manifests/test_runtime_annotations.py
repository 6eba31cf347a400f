"""ModelMesh's ServingRuntime annotation maxLoadingConcurrency: read, checked, carried."""

from __future__ import annotations

import pytest
import yaml
from _manifests_helpers import runtime

from placement.manifests.kserve import parse_manifest_text, runtime_from_document


def with_annotation(value: object, key: str = "maxLoadingConcurrency") -> str:
    doc = yaml.safe_load(runtime("rt"))
    doc["metadata"]["annotations"] = {key: value}
    return yaml.safe_dump(doc)


def test_the_annotation_sets_the_runtime_loading_concurrency() -> None:
    (doc,) = parse_manifest_text(with_annotation("2"), "rt.yaml").documents
    assert not doc.problems
    assert runtime_from_document(doc).max_loading_concurrency == 2
    (plain,) = parse_manifest_text(runtime("rt"), "rt.yaml").documents
    assert runtime_from_document(plain).max_loading_concurrency is None


@pytest.mark.parametrize("value", ["0", "65", "-1", "two", "1e3", "9" * 5000])
def test_a_bad_value_is_refused_with_a_clear_message(value: object) -> None:
    mf = parse_manifest_text(with_annotation(value), "rt.yaml")
    shown = repr(value) if not isinstance(value, str) or len(value) < 100 else None
    problems = [p for p in mf.errors if "maxLoadingConcurrency" in p]
    assert len(problems) == 1, mf.errors
    prefix = "rt.yaml doc 1 ServingRuntime/rt: metadata.annotations.maxLoadingConcurrency "
    assert problems[0].startswith(prefix)
    assert "must be a whole number from 1 to 64 (a string), got " in problems[0]
    assert len(problems[0]) < 500  # a long value is cut, never printed whole
    if shown:
        assert problems[0].endswith(f"got {shown}")


def test_a_number_instead_of_a_string_is_reported_once() -> None:
    mf = parse_manifest_text(with_annotation(2), "rt.yaml")
    assert [p for p in mf.errors if "maxLoadingConcurrency" in p] == [
        "rt.yaml doc 1 ServingRuntime/rt: metadata.annotations.maxLoadingConcurrency must be a string, "
        "got integer"]


def _model_size(value: object) -> str:
    return with_annotation(value, "serving.msm.io/model-size")


def test_model_size_annotation_turns_measuring_on() -> None:
    (measured,) = parse_manifest_text(_model_size("measured"), "rt.yaml").documents
    (estimated,) = parse_manifest_text(_model_size("estimated"), "rt.yaml").documents
    (plain,) = parse_manifest_text(runtime("rt"), "rt.yaml").documents
    assert not measured.problems and not estimated.problems
    assert runtime_from_document(measured).measure_model_size is True
    assert runtime_from_document(estimated).measure_model_size is False
    assert runtime_from_document(plain).measure_model_size is False


@pytest.mark.parametrize("value", ["Measured", "true", 1])
def test_model_size_annotation_refuses_other_values(value: object) -> None:
    mf = parse_manifest_text(_model_size(value), "rt.yaml")
    problems = [p for p in mf.errors if "model-size" in p]
    assert problems[-1] == ("rt.yaml doc 1 ServingRuntime/rt: metadata.annotations.serving.msm.io/model-size "
                            f"must be one of estimated, measured, got {value!r}"), mf.errors
