"""A custom MLServer model class: the logic a user writes when no built-in runtime fits.

``ComplaintClassifier`` takes raw text (a KServe V2 BYTES input named ``content``), cleans it
(lower case, URLs, @mentions and punctuation out), runs a scikit-learn pipeline trained at set-up
(``python -m placement.local.samples --set complaints``) and answers one label per line,
``complaint`` or ``no complaint``, as BYTES. MLServer finds it through the ServingRuntime's
``MLSERVER_MODEL_IMPLEMENTATION`` and ``PYTHONPATH`` (``servingruntime.yaml``).
"""

import os
import re
from typing import List

import joblib
from mlserver import MLModel
from mlserver.codecs import decode_args

_URL = re.compile(r"https?://\S+")
_MENTION = re.compile(r"[@#]\w+")
_NOT_WORD = re.compile(r"[^a-z0-9' ]+")


def clean(text: str) -> str:
    """What the pipeline was trained on: lower case words, no links, mentions or punctuation."""
    text = _MENTION.sub(" ", _URL.sub(" ", text.lower()))
    return " ".join(_NOT_WORD.sub(" ", text).split())


class ComplaintClassifier(MLModel):
    async def load(self) -> bool:
        folder = self.settings.parameters.uri
        self._pipeline = joblib.load(os.path.join(folder, "pipeline.joblib"))
        self.ready = True
        return self.ready

    @decode_args
    async def predict(self, content: List[str]) -> List[str]:
        if not content:
            return []
        return [str(label) for label in self._pipeline.predict([clean(t) for t in content])]
