"""The peer of bench/ray_multiplex.py: Ray Serve's model multiplexing, as a Ray user would write it.

Runs in a virtualenv of its own (Ray's dependencies are not msm's): ``bench/ray_multiplex.py
--setup-ray`` makes ``.venv-ray`` with ``ray[serve]``, scikit-learn and joblib from PyPI. One
deployment, ``--replicas`` replicas, each an LRU of at most ``--models-per-replica`` models
(``@serve.multiplexed``); a request names its model in the header ``serve_multiplexed_model_id``
and carries ``{"x": [64 floats]}``; the model is ``<models-dir>/<id>.joblib``. Every load appends
a line to ``<stats-dir>/loads-<pid>``, so the benchmark counts loads across replicas; every answer
names the replica (its pid), so the benchmark can tell which replica held which model when.

Prints ``READY <port>`` once Serve answers, and runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models-dir", required=True)
    p.add_argument("--stats-dir", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--models-per-replica", type=int, required=True)
    p.add_argument("--temp-dir", required=True, help="Ray's session folder (a short path)")
    args = p.parse_args()

    import joblib
    import numpy as np
    import ray
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    models_dir, stats_dir = Path(args.models_dir), Path(args.stats_dir)

    @serve.deployment(num_replicas=args.replicas, ray_actor_options={"num_cpus": 0},
                      max_ongoing_requests=100)
    class Models:
        @serve.multiplexed(max_num_models_per_replica=args.models_per_replica)
        async def get_model(self, model_id: str):
            # blocking, as Ray's own multiplexing examples load: the peer as a user writes it
            model = joblib.load(models_dir / f"{model_id}.joblib")
            with open(stats_dir / f"loads-{os.getpid()}", "a") as f:  # noqa: ASYNC230
                f.write(model_id + "\n")
            return model

        async def __call__(self, request: Request) -> JSONResponse:
            model = await self.get_model(serve.get_multiplexed_model_id())
            x = np.asarray((await request.json())["x"], dtype=np.float32).reshape(1, -1)
            return JSONResponse({"predict": model.predict(x).tolist(), "replica": os.getpid()})

    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=args.temp_dir, object_store_memory=128 << 20,
             log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(Models.bind(), route_prefix="/", name="models")
    print(f"READY {args.port}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        time.sleep(0.2)
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
