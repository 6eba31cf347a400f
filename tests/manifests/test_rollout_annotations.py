"""An InferenceService asks for a rollout by steps with serving.msm.io/rollout-* annotations."""

from __future__ import annotations

import pytest
import yaml
from _manifests_helpers import isvc, local_dir, runtime, write

from placement.manifests.kserve import load_manifest_dir
from placement.manifests.rollout_annotations import rollout_spec
from placement.traffic.rollout import RolloutSpec


def test_the_annotations_are_the_spec_and_the_defaults_fill_the_rest() -> None:
    assert rollout_spec({"other": "x"}, None) is None
    assert rollout_spec({"serving.msm.io/rollout-steps": "5,25,50"}, None) == RolloutSpec(steps=(5, 25, 50))
    spec = rollout_spec({"serving.msm.io/rollout-steps": "10", "serving.msm.io/rollout-interval": "1m",
                         "serving.msm.io/rollout-min-requests": "100",
                         "serving.msm.io/rollout-max-error-rate-increase": "0.5",
                         "serving.msm.io/rollout-max-latency-ratio": "2",
                         "serving.msm.io/rollout-threshold": "3"},
                        None)
    assert spec == RolloutSpec(steps=(10,), interval_s=60.0, min_requests=100, max_error_rate_increase=0.5,
                               max_latency_ratio=2.0, threshold=3)


@pytest.mark.parametrize("annotations, canary, says", [
    ({"serving.msm.io/rollout-interval": "30s"}, None, "rollout-steps is required"),
    ({"serving.msm.io/rollout-steps": "5,x"}, None, "is not a list of percentages"),
    ({"serving.msm.io/rollout-steps": "50,5"}, None, "increasing percentages"),
    ({"serving.msm.io/rollout-steps": "5,100"}, None, "1 to 99 (promotion follows the last)"),
    ({"serving.msm.io/rollout-steps": "5", "serving.msm.io/rollout-interval": "soon"}, None,
     "not a duration"),
    ({"serving.msm.io/rollout-steps": "5", "serving.msm.io/rollout-treshold": "2"}, None,
     "rollout-treshold: unknown"),
    ({"serving.msm.io/rollout-steps": "5", "serving.msm.io/rollout-threshold": "two"}, None, "not a number"),
    ({"serving.msm.io/rollout-steps": "5"}, 10, "canaryTrafficPercent and a rollout by steps both set"),
])
def test_bad_annotations_are_refused_saying_which(annotations, canary, says) -> None:
    with pytest.raises(ValueError) as e:
        rollout_spec(annotations, canary)
    assert says in str(e.value), str(e.value)


def test_a_refused_rollout_is_the_models_problem_where_the_user_looks(tmp_path) -> None:
    local_dir(tmp_path)
    write(tmp_path / "rt.yaml", runtime("mlserver"))
    doc = yaml.safe_load(isvc("m"))
    doc["metadata"]["annotations"]["serving.msm.io/rollout-steps"] = "50,5"
    write(tmp_path / "m.yaml", yaml.safe_dump(doc))
    good = yaml.safe_load(isvc("g"))
    good["metadata"]["annotations"]["serving.msm.io/rollout-steps"] = "5,50"
    write(tmp_path / "g.yaml", yaml.safe_dump(good))
    state = load_manifest_dir(tmp_path)
    assert "m" not in state.models and "increasing percentages" in state.errors["modelmesh-serving/m"]
    assert state.rollouts() == {"g": RolloutSpec(steps=(5, 50))}
