"""What the engine is told of a resolved predictor: every field, from its own source field."""

from __future__ import annotations

from placement.engine.model_types import DesiredModel
from placement.manifests.desired_state import DesiredState, ResolvedModel


def test_a_resolved_predictor_becomes_the_engines_desired_model_field_for_field() -> None:
    m = ResolvedModel(name="digits", namespace="team-a", revision_id="digits__isvc-0123456789",
                      runtime="team-a/mlserver-1.x", model_type="sklearn", storage_path="/models/d.joblib",
                      canary_percent=25, min_copies=2, load_timeout_s=45.0, size_estimate_bytes=12345,
                      storage_stamp=(111, 222))
    assert m.desired() == DesiredModel(
        name="digits", revision="digits__isvc-0123456789", runtime="team-a/mlserver-1.x",
        model_type="sklearn", model_path="/models/d.joblib", size_estimate_bytes=12345, min_copies=2,
        canary_percent=25, load_timeout_s=45.0, storage_stamp=(111, 222))
    assert DesiredState(models={"digits": m}).desired_models() == [m.desired()]
