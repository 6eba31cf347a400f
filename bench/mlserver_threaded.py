"""An MLServer scikit-learn runtime that loads off the event loop (``bench/mlserver_load.py
--threaded``): an experiment, not what msm runs. MLServer's own loads with ``joblib.load`` on its
event loop, which holds up every request to the replica while a load runs."""

from __future__ import annotations

import asyncio

import joblib
from mlserver.utils import get_model_uri
from mlserver_sklearn import SKLearnModel
from mlserver_sklearn.sklearn import WELLKNOWN_MODEL_FILENAMES


class ThreadedSKLearnModel(SKLearnModel):
    async def load(self) -> bool:
        uri = await get_model_uri(self._settings, wellknown_filenames=WELLKNOWN_MODEL_FILENAMES)
        self._model = await asyncio.to_thread(joblib.load, uri)
        return True
