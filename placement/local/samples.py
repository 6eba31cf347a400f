"""The sample models of the quickstart, trained here from scikit-learn's bundled data.

Nothing is downloaded. Training is deterministic (fixed data, fixed seeds), so every machine gets
the same predictions; files that already exist are left alone.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from placement.manifests.local_config import SAMPLE_SETS

log = logging.getLogger("msm.samples")

MNIST_SVM = "mnist-svm.joblib"
"""The article's model: an SVM over 8x8 digits (64 features); it predicts 8 for DIGIT_8."""
MNIST_LOGREG = "mnist-logreg.joblib"
"""A second sklearn model over the same 64 features, for multi-model packing."""
MNIST_FOREST = "mnist-forest.joblib"
"""A bigger sklearn model (a random forest), so that models of different sizes share a runtime."""
MNIST_XGB = "mnist-xgboost.json"
"""An XGBoost model (format xgboost); only trained when xgboost is installed."""

DIGIT_8 = [0, 0, 1, 11, 14, 15, 3, 0, 0, 1, 13, 16, 12, 16, 8, 0, 0, 8, 16, 4, 6, 16, 5, 0, 0, 5, 15, 11,
           13, 14, 0, 0, 0, 0, 2, 12, 16, 13, 0, 0, 0, 0, 0, 13, 16, 16, 6, 0, 0, 0, 0, 16, 16, 16, 7, 0,
           0, 0, 0, 11, 13, 12, 1, 0]
"""The 64 pixels of the article's curl request; the sample models classify them as 8."""


COMPLAINTS = "complaints"
"""The custom-runtime example's model folder: a text classifier (``pipeline.joblib``)."""
COMPLAINTS_PIPELINE = "pipeline.joblib"
# Labelled lines in the style of the article's data set (tweets, complaint or not).
COMPLAINT_LINES = (
    ("my package arrived two weeks late and the box was crushed", "complaint"),
    ("i have been on hold for an hour and nobody answers", "complaint"),
    ("my flight was cancelled again and the refund never came", "complaint"),
    ("the charger stopped working after three days", "complaint"),
    ("i was charged twice for the same order please help", "complaint"),
    ("the internet has been down since yesterday evening", "complaint"),
    ("why does the train always arrive late", "complaint"),
    ("the app crashes every time i open it", "complaint"),
    ("still waiting for my refund after a month", "complaint"),
    ("the delivery driver left my parcel in the rain", "complaint"),
    ("thank you for the quick reply the problem is solved", "no complaint"),
    ("the new update made the app much faster great work", "no complaint"),
    ("what a lovely morning for a walk in the park", "no complaint"),
    ("customer service fixed my account in five minutes", "no complaint"),
    ("loving the new season of the show", "no complaint"),
    ("a big thank you to the team for the support", "no complaint"),
    ("every day is a new beginning filled with opportunities and hope", "no complaint"),
    ("the coffee here is great and the staff are friendly", "no complaint"),
    ("happy to see the parcel arrived early", "no complaint"),
    ("the weather is sunny and the beach is beautiful", "no complaint"),
)


def _train_complaints() -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    texts = [t for t, _ in COMPLAINT_LINES]
    labels = [label for _, label in COMPLAINT_LINES]
    return make_pipeline(TfidfVectorizer(ngram_range=(1, 2)), LogisticRegression(C=10.0, max_iter=1000)).fit(
        texts, labels)


def ensure_complaints_model(directory: Path | str) -> list[Path]:
    """Train the custom-runtime example's text classifier into ``<directory>/complaints/``."""
    folder = Path(directory) / COMPLAINTS
    path = folder / COMPLAINTS_PIPELINE
    if path.exists() and path.stat().st_size > 0:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    log.info("training the custom runtime's sample model %s", path)
    _write_atomically(path, lambda p: _save_joblib(_train_complaints(), p))
    return [path]


def ensure_sample_set(directory: Path | str, sample_set: str = "digits") -> list[Path]:
    """Make ``sample_set``'s models in ``directory`` unless they are there; return what was made."""
    if sample_set == "digits":
        return ensure_sample_models(directory)
    if sample_set == "complaints":
        return ensure_complaints_model(directory)
    if sample_set == "peft-demo":
        from placement.local.samples_llm import ensure_peft_model

        try:
            return ensure_peft_model(directory)
        except ImportError as e:
            raise RuntimeError(f"the LLM example's model needs msm's llm extra (torch, transformers, "
                               f"peft: pip install -e '.[llm]'): {e}") from e
    raise ValueError(f"unknown sample set {sample_set!r}: one of {', '.join(SAMPLE_SETS)}")


def _digits() -> tuple[Any, Any]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.data, digits.target


def _train_svm() -> Any:
    from sklearn.svm import SVC

    x, y = _digits()
    return SVC(gamma=0.001).fit(x, y)


def _train_logreg() -> Any:
    from sklearn.linear_model import LogisticRegression

    x, y = _digits()
    return LogisticRegression(max_iter=5000).fit(x, y)


def _train_forest() -> Any:
    from sklearn.ensemble import RandomForestClassifier

    x, y = _digits()
    return RandomForestClassifier(n_estimators=50, random_state=0).fit(x, y)


def _save_joblib(model: Any, path: Path) -> None:
    import joblib

    joblib.dump(model, path)


def _train_save_xgboost(path: Path) -> None:
    import xgboost  # optional

    x, y = _digits()
    model = xgboost.XGBClassifier(n_estimators=20, max_depth=4, random_state=0, n_jobs=1)
    model.fit(x, y)
    model.save_model(str(path))


def _xgboost_available() -> bool:
    try:
        import xgboost  # noqa: F401
    except ImportError:
        return False
    return True


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, so a half-written model never shows."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def ensure_sample_models(directory: Path | str, *, with_xgboost: bool | None = None) -> list[Path]:
    """Train the sample models into ``directory`` unless they are there; return the files made.

    Always: ``mnist-svm.joblib`` (the article's ``SVC(gamma=0.001)`` on the digits),
    ``mnist-logreg.joblib`` and ``mnist-forest.joblib`` (format sklearn). With ``with_xgboost``
    (default: when xgboost is installed) also ``mnist-xgboost.json`` (format xgboost).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if with_xgboost is None:
        with_xgboost = _xgboost_available()
    plan: list[tuple[str, Callable[[Path], None]]] = [
        (MNIST_SVM, lambda p: _save_joblib(_train_svm(), p)),
        (MNIST_LOGREG, lambda p: _save_joblib(_train_logreg(), p)),
        (MNIST_FOREST, lambda p: _save_joblib(_train_forest(), p)),
    ]
    if with_xgboost:
        plan.append((MNIST_XGB, _train_save_xgboost))
    made = []
    for name, write in plan:
        path = directory / name
        if path.exists() and path.stat().st_size > 0:
            continue
        log.info("training sample model %s", path)
        _write_atomically(path, write)
        made.append(path)
    return made


def main(argv: list[str] | None = None) -> int:
    """``python -m placement.local.samples DIR``: train the sample models into DIR."""
    parser = argparse.ArgumentParser(prog="python -m placement.local.samples", description=main.__doc__)
    parser.add_argument("dir", nargs="?", default="examples/quickstart/models")
    parser.add_argument("--set", default="digits", choices=SAMPLE_SETS, help="which sample models")
    args = parser.parse_args(argv)
    made = ensure_sample_set(Path(args.dir), args.set)
    for p in made:
        print(f"trained {p}")
    if not made:
        print(f"sample models already in {args.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
