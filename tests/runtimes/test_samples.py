"""The quickstart's sample models: trained here, deterministic, never retrained for nothing."""

from __future__ import annotations

from pathlib import Path

import joblib

from placement.local.samples import DIGIT_8, MNIST_FOREST, MNIST_LOGREG, MNIST_SVM, ensure_sample_models


def test_sample_models_answer_8_and_are_kept(tmp_path: Path) -> None:
    made = ensure_sample_models(tmp_path / "models", with_xgboost=False)
    assert {p.name for p in made} == {MNIST_SVM, MNIST_LOGREG, MNIST_FOREST}
    for p in made:
        assert joblib.load(p).predict([DIGIT_8]).tolist() == [8], p.name
    svm = joblib.load(tmp_path / "models" / MNIST_SVM)
    assert type(svm).__name__ == "SVC" and svm.gamma == 0.001  # the article's model
    mtime = (tmp_path / "models" / MNIST_SVM).stat().st_mtime_ns
    assert ensure_sample_models(tmp_path / "models", with_xgboost=False) == []
    assert (tmp_path / "models" / MNIST_SVM).stat().st_mtime_ns == mtime


def test_training_is_deterministic(tmp_path: Path) -> None:
    a = ensure_sample_models(tmp_path / "a", with_xgboost=False)
    b = ensure_sample_models(tmp_path / "b", with_xgboost=False)
    for pa, pb in zip(sorted(a), sorted(b), strict=True):
        ma, mb = joblib.load(pa), joblib.load(pb)
        if hasattr(ma, "support_vectors_"):
            assert (ma.support_vectors_ == mb.support_vectors_).all()
        if hasattr(ma, "coef_"):
            assert (ma.coef_ == mb.coef_).all()
